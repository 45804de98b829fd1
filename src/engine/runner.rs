//! Runs one claimed step attempt: the step body under a heartbeat, then [`decide`], then the outcome
//! written by [`lifecycle::attempt`] (one fenced transaction, or the group commit for a success), with
//! retries of database errors while the lease lasts.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::{Map, Value};
use tracing::{Instrument, info, info_span, warn};

use crate::db;
use crate::db::steps::Claim;
use crate::domain::{
    Decision, FailReason, Purpose, StepDef, StepError, StepOutcome, StepProgress, WaitReason,
    Workflow, decide,
};
use crate::lifecycle;

use super::Engine;
use super::step::{StepContext, TenantInfo};

/// How one attempt ended from the engine's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    Committed(Decision),
    /// Another worker holds the step now; nothing was written.
    LeaseLost,
    /// The outcome could not be written; the lease will expire and the step run again.
    NotCommitted,
}

impl Engine {
    /// Runs a claimed step and, while it succeeds and the process is not stopping, the steps of the
    /// same tenant after it (each claimed in the transaction that committed its predecessor).
    pub(crate) async fn run_claim(self: Arc<Self>, claim: Claim) -> Finished {
        let mut claim = claim;
        loop {
            match self.run_one(claim).await {
                (finished, Some(next)) => {
                    debug_assert!(matches!(finished, Finished::Committed(Decision::Succeed)));
                    claim = next;
                }
                (finished, None) => return finished,
            }
        }
    }

    async fn run_one(&self, claim: Claim) -> (Finished, Option<Claim>) {
        let span = info_span!(
            "step",
            tenant.slug = %claim.slug,
            step = %claim.step,
            attempt = claim.attempts,
            lease = claim.lease_token,
        );
        async move {
            let latency = (claim.claimed_at - claim.was_due)
                .to_std()
                .unwrap_or_default();
            self.metrics.claim_latency.observe(latency.as_secs_f64());
            if let Some(prev) = &claim.took_over_from {
                warn!(previous_owner = %prev, "took over a step whose lease expired");
            }
            let found = self
                .workflows
                .get(&claim.workflow)
                .and_then(|w| w.step(&claim.step).map(|(_, def)| (w, def)));
            let Some((workflow, def)) = found else {
                // A workflow file changed under a running tenant: stop it visibly, ops requeue.
                let error = StepError::permanent(
                    "UnknownStep",
                    format!(
                        "step {:?} is not in workflow {:?} any more",
                        claim.step, claim.workflow
                    ),
                );
                let d = Decision::Fail {
                    error,
                    reason: FailReason::NonRetryable,
                };
                return self.commit(&claim, None, &d, Map::new(), &Map::new()).await;
            };
            let started = Instant::now();
            let (outcome, patch, resources) = match self.execute(&claim, def).await {
                Ok(done) => done,
                Err(finished) => return (finished, None),
            };
            self.metrics
                .step_duration
                .observe(started.elapsed().as_secs_f64());
            let progress = StepProgress {
                attempts: claim.attempts.max(1) as u32,
                throttles: claim.throttles.max(0) as u32,
                elapsed: (claim.claimed_at - claim.started_at)
                    .to_std()
                    .unwrap_or_default(),
            };
            let decision = decide(&def.rules, progress, outcome, rand::random::<f64>());
            self.commit(&claim, Some(workflow), &decision, patch, &resources)
                .await
        }
        .instrument(span)
        .await
    }

    /// Runs the step body while heartbeating its lease. `Err` means the lease was lost: the body was
    /// dropped mid-flight and nothing may be written.
    async fn execute(
        &self,
        claim: &Claim,
        def: &StepDef,
    ) -> Result<(StepOutcome, Map<String, Value>, Map<String, Value>), Finished> {
        let Some(step) = self.registry.get(&def.kind) else {
            let e = StepError::permanent(
                "NotImplemented",
                format!(
                    "no implementation of step kind {:?} in this build",
                    def.kind
                ),
            );
            return Ok((StepOutcome::Failed(e), Map::new(), Map::new()));
        };
        let mut ctx = StepContext::new(
            TenantInfo {
                id: claim.tenant_id,
                slug: claim.slug.clone(),
                name: claim.name.clone(),
                owner_email: claim.owner_email.clone(),
                tier: claim.tier,
            },
            claim.step.clone(),
            claim.attempts.max(1) as u32,
            def.poll_interval,
            claim.resources.clone(),
            self.pool.clone(),
            claim.lease(),
        );
        let body = AssertUnwindSafe(step.run(&mut ctx)).catch_unwind();
        let outcome = tokio::select! {
            r = body => r.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                StepOutcome::Failed(StepError::transient("StepPanicked", format!("the step panicked: {what}")))
            }),
            () = self.hold_lease(claim) => {
                self.metrics.lease_lost.inc();
                warn!("lease lost during the attempt; abandoning it");
                return Err(Finished::LeaseLost);
            }
        };
        let patch = ctx.take_patch();
        Ok((outcome, patch, ctx.resources().clone()))
    }

    /// Heartbeats until the lease is lost (returns) or forever. Database errors do not count as a lost
    /// lease: the lease may still be ours, and the commit's fence decides.
    async fn hold_lease(&self, claim: &Claim) {
        let every = self.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match db::steps::heartbeat(&self.pool, claim.lease(), self.config.lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    /// Writes the decision, retrying database errors for as long as the lease would still be ours.
    /// Returns the tenant's next step when this worker claimed it in the same transaction.
    async fn commit(
        &self,
        claim: &Claim,
        workflow: Option<&Workflow>,
        decision: &Decision,
        patch: Map<String, Value>,
        resources: &Map<String, Value>,
    ) -> (Finished, Option<Claim>) {
        let deadline = Instant::now() + self.config.lease;
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .try_commit(claim, workflow, decision, &patch, resources)
                .await
            {
                Ok(Some(next)) => {
                    self.record_metrics(claim, decision);
                    log_decision(decision);
                    return (Finished::Committed(decision.clone()), next);
                }
                Ok(None) => {
                    self.metrics.lease_lost.inc();
                    warn!(
                        "lease lost before the outcome was written; another worker owns the step"
                    );
                    return (Finished::LeaseLost, None);
                }
                Err(e) if Instant::now() + delay < deadline => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not write the step outcome");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    warn!(error = %e, "giving up writing the step outcome; the step will run again when its lease expires");
                    return (Finished::NotCommitted, None);
                }
            }
        }
    }

    fn record_metrics(&self, claim: &Claim, decision: &Decision) {
        let outcome = match decision {
            Decision::Succeed => "succeeded",
            Decision::Wait {
                reason: WaitReason::Poll,
                ..
            } => "waiting",
            Decision::Wait {
                reason: WaitReason::Slot,
                ..
            } => "queued",
            Decision::Wait {
                reason: WaitReason::Backoff,
                ..
            } => "backoff",
            Decision::Wait {
                reason: WaitReason::Throttle,
                ..
            } => {
                self.metrics
                    .step_throttles
                    .get_or_create(&crate::telemetry::StepLabels {
                        step: claim.step.clone(),
                        outcome: "throttled".into(),
                    })
                    .inc();
                "throttled"
            }
            Decision::Fail { .. } => "failed",
        };
        self.metrics.step(&claim.step, outcome);
    }

    /// One transaction; `Ok(None)` if the lease was lost (nothing written), else the next step if this
    /// worker claimed it.
    async fn try_commit(
        &self,
        claim: &Claim,
        workflow: Option<&Workflow>,
        decision: &Decision,
        patch: &Map<String, Value>,
        resources: &Map<String, Value>,
    ) -> Result<Option<Option<Claim>>, sqlx::Error> {
        if let (Decision::Succeed, Some(w)) = (decision, workflow) {
            let last = claim.position as usize + 1 >= w.steps.len();
            if last || !self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return self.succeed_grouped(claim, patch, resources).await;
            }
        }
        if !self
            .attempt(claim, resources)
            .record(&self.pool, decision, patch)
            .await?
        {
            return Ok(None);
        }
        if let Decision::Wait { after, .. } = decision
            && *after < self.config.poll_interval
        {
            self.timers.notify_one();
        }
        Ok(Some(None))
    }
}

impl Engine {
    fn attempt<'a>(
        &'a self,
        claim: &'a Claim,
        resources: &'a Map<String, Value>,
    ) -> lifecycle::attempt::Attempt<'a> {
        let workflow = self.workflows.get(&claim.workflow);
        lifecycle::attempt::Attempt {
            claim,
            worker: self.config.worker_id.as_str(),
            // A workflow no longer loaded counts as provisioning.
            purpose: workflow.map_or(Purpose::Provision, |w| w.purpose),
            resources,
            next_step: workflow
                .and_then(|w| w.steps.get(claim.position as usize + 1))
                .map(|s| s.name.as_str()),
        }
    }

    /// The hot path: a step succeeded. Its success, history and events, and the claim of the tenant's
    /// next step for this worker (or, after the last step, the tenant's activation), go through the
    /// group commit: one statement for every step that finished meanwhile.
    async fn succeed_grouped(
        &self,
        claim: &Claim,
        patch: &Map<String, Value>,
        resources: &Map<String, Value>,
    ) -> Result<Option<Option<Claim>>, sqlx::Error> {
        let success = self.attempt(claim, resources).success(patch);
        let last = success.next_step.is_none();
        let (pool, owner, lease) = (
            &self.pool,
            self.config.worker_id.as_str(),
            self.config.lease,
        );
        let (result, deliveries) = self
            .commits
            .submit(success, |batch| async move {
                let (results, deliveries) =
                    db::steps::succeed_many(pool, owner, lease, batch).await?;
                Ok(results.into_iter().map(|r| (r, deliveries)).collect())
            })
            .await
            .map_err(crate::group_commit::CommitError::into_sqlx)?;
        let next = match result {
            db::steps::SuccessResult::LeaseLost => return Ok(None),
            db::steps::SuccessResult::Written(next) => next,
        };
        if deliveries > 0 {
            self.wake_dispatcher().await;
        }
        let next = match next {
            Some(n) => Some(Claim {
                run_id: claim.run_id,
                position: n.position,
                step: n.name,
                attempts: n.attempts,
                throttles: n.throttles,
                lease_token: n.lease_token,
                started_at: n.started_at,
                was_due: n.claimed_at,
                took_over_from: None,
                tenant_id: claim.tenant_id,
                slug: claim.slug.clone(),
                name: claim.name.clone(),
                owner_email: claim.owner_email.clone(),
                tier: claim.tier,
                workflow: claim.workflow.clone(),
                resources: Value::Object(resources.clone()),
                claimed_at: n.claimed_at,
            }),
            None if last => None,
            None => {
                // Not pending (an operator rewound the tenant meanwhile): leave it to whoever is due.
                let mut conn = self.pool.acquire().await?;
                db::notify(&mut conn, db::STEPS_CHANNEL).await?;
                None
            }
        };
        Ok(Some(next))
    }

    /// Wakes the outbox dispatchers, at most every 50 ms per process: each NOTIFY serializes commits
    /// in Postgres, and the dispatcher takes every due delivery when it wakes.
    async fn wake_dispatcher(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self
            .last_outbox_notify
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) < 50 {
            return;
        }
        self.last_outbox_notify
            .store(now, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut conn) = self.pool.acquire().await {
            let _ = db::notify(&mut conn, db::OUTBOX_CHANNEL).await;
        }
    }
}

fn log_decision(decision: &Decision) {
    match decision {
        Decision::Succeed => info!("step succeeded"),
        Decision::Wait {
            after,
            reason: WaitReason::Poll | WaitReason::Slot,
            note,
            ..
        } => {
            info!(wait_ms = after.as_millis() as u64, note = %note, "step waiting")
        }
        Decision::Wait {
            after,
            reason,
            error,
            ..
        } => warn!(
            wait_ms = after.as_millis() as u64,
            reason = reason.as_str(),
            error.code = error.as_ref().map(|e| e.code.as_str()).unwrap_or(""),
            error.message = error.as_ref().map(|e| e.message.as_str()).unwrap_or(""),
            "step will retry"
        ),
        Decision::Fail { error, .. } => warn!(
            error.code = %error.code,
            error.message = %error.message,
            "step failed"
        ),
    }
}
