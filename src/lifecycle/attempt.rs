//! An attempt's outcome, written: the step's new state, the tenant's, history and events, in one
//! fenced transaction (waits, failures, and a success in a stopping process), or as the success row of
//! the engine's group commit. The runner decides when and how often to write; what is written is
//! decided here.

use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::db;
use crate::db::history::NewEntry;
use crate::db::steps::{Claim, StepUpdate};
use crate::domain::events::{self, EventStep, EventTenant};
use crate::domain::{
    Decision, EventType, FailReason, HistoryKind, Purpose, RunState, StepError, TenantState,
    WaitReason,
};

/// One attempt of a claimed step, as its outcome is written.
pub struct Attempt<'a> {
    pub claim: &'a Claim,
    /// The worker that ran it (history's actor).
    pub worker: &'a str,
    /// What the claim's run does to its tenant.
    pub purpose: Purpose,
    /// The tenant's resources after the attempt.
    pub resources: &'a Map<String, Value>,
    /// The name of the workflow's step after this one; `None` after the last (or when the workflow
    /// is no longer loaded).
    pub next_step: Option<&'a str>,
}

impl Attempt<'_> {
    /// Writes `decision` with the attempt's resource `patch` in one transaction; `false` if the lease
    /// was lost (nothing written).
    pub async fn record(
        &self,
        pool: &PgPool,
        decision: &Decision,
        patch: &Map<String, Value>,
    ) -> Result<bool, sqlx::Error> {
        let claim = self.claim;
        let resources = self.resources;
        let mut tx = pool.begin().await?;
        let lease = claim.lease();
        if !db::steps::fence(&mut tx, lease).await? {
            return Ok(false);
        }
        if !patch.is_empty() {
            db::tenants::merge_resources(&mut tx, claim.tenant_id, &Value::Object(patch.clone()))
                .await?;
        }
        let worker = self.worker;
        let entry = |kind, message, detail| step_entry(claim, worker, kind, message, detail);
        let mut notify_outbox = false;
        match decision {
            Decision::Succeed => {
                db::steps::update_after_attempt(&mut tx, lease, &StepUpdate::Succeeded).await?;
                db::history::append(
                    &mut *tx,
                    claim.tenant_id,
                    &entry(HistoryKind::StepSucceeded, "step succeeded", None),
                )
                .await?;
                // Only a stopping process gets here with a success (a running one sends successes
                // through the group commit, which also claims the next step): the tenant has a next
                // step, and it is left due for the other workers.
                let payload = event_payload(
                    claim,
                    resources,
                    self.purpose.running_state(),
                    "succeeded",
                    None,
                );
                db::outbox::insert_event(
                    &mut tx,
                    claim.tenant_id,
                    EventType::StepSucceeded,
                    &payload,
                )
                .await?;
                if let Some(next) = self.next_step {
                    db::steps::make_due(&mut tx, claim.run_id, claim.position + 1, next).await?;
                }
                db::notify(&mut tx, db::STEPS_CHANNEL).await?;
                notify_outbox = true;
            }
            Decision::Wait {
                after,
                reason,
                error,
                note,
            } => {
                let update = StepUpdate::Waiting {
                    reason: *reason,
                    after: *after,
                    error_code: error.as_ref().map(|e| e.code.as_str()),
                    error: error.as_ref().map(|e| e.message.as_str()),
                };
                db::steps::update_after_attempt(&mut tx, lease, &update).await?;
                let kind = match reason {
                    WaitReason::Poll => HistoryKind::StepWaiting,
                    WaitReason::Slot => HistoryKind::StepQueued,
                    WaitReason::Backoff => HistoryKind::StepBackoff,
                    WaitReason::Throttle => HistoryKind::StepThrottled,
                };
                let detail = error.as_ref().map(
                    |e| json!({"error": error_detail(e), "retry_in_ms": after.as_millis() as u64}),
                );
                let detail =
                    detail.or_else(|| Some(json!({"retry_in_ms": after.as_millis() as u64})));
                let message = match error {
                    Some(e) => format!("{note}: {}", e.display()),
                    None => note.clone(),
                };
                let e = entry(kind, &message, detail);
                match reason {
                    // Polls, throttles and queueing repeat for as long as AWS takes: one entry each.
                    WaitReason::Poll | WaitReason::Throttle | WaitReason::Slot => {
                        db::history::append_folded(&mut tx, claim.tenant_id, &e).await?
                    }
                    WaitReason::Backoff => {
                        db::history::append(&mut *tx, claim.tenant_id, &e).await?
                    }
                }
            }
            Decision::Fail { error, reason } => {
                let update = StepUpdate::Failed {
                    error_code: &error.code,
                    error: &error.message,
                };
                db::steps::update_after_attempt(&mut tx, lease, &update).await?;
                let why = match reason {
                    FailReason::NonRetryable => "step failed",
                    FailReason::AttemptsExhausted => "step failed: attempts exhausted",
                    FailReason::TimedOut => "step failed: timed out",
                };
                let message = format!("{why}: {}", error.display());
                let detail = json!({"error": error_detail(error)});
                db::history::append(
                    &mut *tx,
                    claim.tenant_id,
                    &entry(HistoryKind::StepFailed, &message, Some(detail)),
                )
                .await?;
                db::tenants::set_run_state(&mut tx, claim.run_id, RunState::Failed).await?;
                let purpose = self.purpose;
                let (from, to) = (purpose.running_state(), purpose.failed_state());
                if from != to {
                    db::tenants::set_state(&mut tx, claim.tenant_id, to).await?;
                    db::history::append(
                        &mut *tx,
                        claim.tenant_id,
                        &NewEntry::new(
                            HistoryKind::TenantState,
                            &format!("{} → {}", from.as_str(), to.as_str()),
                        ),
                    )
                    .await?;
                }
                let payload = event_payload(claim, resources, to, "failed", Some(error));
                db::outbox::insert_event(&mut tx, claim.tenant_id, EventType::StepFailed, &payload)
                    .await?;
                if to == TenantState::Failed {
                    db::outbox::insert_event(
                        &mut tx,
                        claim.tenant_id,
                        EventType::TenantFailed,
                        &payload,
                    )
                    .await?;
                }
                notify_outbox = true;
            }
        }
        if notify_outbox {
            db::notify(&mut tx, db::OUTBOX_CHANNEL).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The success of the attempt as the group commit writes it, with the claim of the next step (or,
    /// after the last step, the tenant's done state and event).
    pub fn success(&self, patch: &Map<String, Value>) -> db::steps::Success {
        let claim = self.claim;
        let last = self.next_step.is_none();
        let tenant_state = if last {
            self.purpose.done_state()
        } else {
            self.purpose.running_state()
        };
        db::steps::Success {
            lease: claim.lease(),
            tenant_id: claim.tenant_id,
            step: claim.step.clone(),
            attempt: claim.attempts,
            patch: Value::Object(patch.clone()),
            event_id: uuid::Uuid::now_v7(),
            payload: event_payload(claim, self.resources, tenant_state, "succeeded", None),
            next_step: self.next_step.map(str::to_owned),
            purpose: self.purpose,
            // Only the last step's commit writes the run's done event (`tenant.active`, ...).
            done_event: if last {
                uuid::Uuid::now_v7()
            } else {
                uuid::Uuid::nil()
            },
        }
    }
}

/// An attempt's error as its history entry keeps it; AWS's request id only when there is one.
fn error_detail(e: &StepError) -> Value {
    let mut d = json!({"class": e.class.as_str(), "code": e.code, "message": e.message});
    if let Some(id) = &e.request_id {
        d["aws_request_id"] = json!(id);
    }
    d
}

fn step_entry<'a>(
    claim: &'a Claim,
    worker: &'a str,
    kind: HistoryKind,
    message: &'a str,
    detail: Option<Value>,
) -> NewEntry<'a> {
    NewEntry {
        kind,
        step: Some(&claim.step),
        attempt: Some(claim.attempts),
        lease_token: Some(claim.lease_token),
        actor: Some(worker),
        message,
        detail,
        // The claim set the attempt's start to the same transaction time.
        started_at: Some(claim.claimed_at),
    }
}

/// The body of a progress event: the tenant as it is after the transition, and the step.
fn event_payload(
    claim: &Claim,
    resources: &Map<String, Value>,
    tenant_state: TenantState,
    step_state: &'static str,
    error: Option<&StepError>,
) -> Value {
    let tenant = EventTenant {
        slug: &claim.slug,
        name: &claim.name,
        owner_email: &claim.owner_email,
        tier: claim.tier,
        state: tenant_state,
        account_id: None,
        endpoint: None,
        region: None,
    }
    .with_resources(resources);
    let step = EventStep {
        name: &claim.step,
        state: step_state,
        attempts: claim.attempts,
        error: error.map(Into::into),
    };
    events::payload(&tenant, Some(&step), Value::Null)
}
