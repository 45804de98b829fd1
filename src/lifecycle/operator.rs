//! Operator actions on a tenant's current run (the offboard run of an offboarding tenant): retry
//! and requeue, which lock the tenant row and the run's step rows, so they serialize with claims
//! (which skip locked rows) and with each other; and redelivery of one of its events.

use serde_json::json;
use sqlx::PgPool;

use crate::db;
use crate::db::history::NewEntry;
use crate::domain::{HistoryKind, Purpose, RunState, StepState, Workflows};

/// How a retry ended.
#[derive(Debug)]
pub enum Retried {
    /// The step (failed: with a fresh attempt budget; waiting: its wait ended) is due now.
    Done {
        step: String,
    },
    NotFound,
    NoRun,
    /// No step is failed or waiting.
    Nothing,
}

/// How a requeue ended.
#[derive(Debug)]
pub enum Requeued {
    Done,
    NotFound,
    NoRun,
    UnknownWorkflow(String),
    UnknownStep {
        workflow: String,
        steps: Vec<String>,
    },
    /// A step holds a live lease.
    StepRunning(String),
    /// A step before the one asked for has not succeeded.
    EarlierStepNotDone(String),
}

fn purpose_of(workflows: &Workflows, workflow: &str) -> Purpose {
    workflows
        .get(workflow)
        .map_or(Purpose::Provision, |w| w.purpose)
}

/// Runs the tenant's failed step again with a fresh attempt budget, or ends its step's wait now.
/// What a bulk retry found and did.
#[derive(Debug, Clone, Default)]
pub struct BulkRetry {
    /// Tenants whose current step has failed and matches the filter, with that step.
    pub matched: Vec<FailedStep>,
    /// Of those, the ones retried (none on a dry run).
    pub retried: Vec<String>,
}

/// A tenant whose current step has failed: what a bulk retry acts on.
#[derive(Debug, Clone)]
pub struct FailedStep {
    pub slug: String,
    pub step: String,
    pub error_code: Option<String>,
}

/// The most tenants one bulk retry acts on; ops repeat it for more.
pub const BULK_LIMIT: i64 = 1000;

/// Retries every tenant whose current run has a failed step (only `step`, only `error_code`, when
/// given), each in its own transaction as [`retry`] does; with `dry_run`, only says which.
pub async fn retry_failed(
    pool: &PgPool,
    workflows: &Workflows,
    step: Option<&str>,
    error_code: Option<&str>,
    dry_run: bool,
    actor: &str,
) -> Result<BulkRetry, sqlx::Error> {
    let filter = db::tenants::ListFilter {
        step: step.map(str::to_owned),
        error_code: error_code.map(str::to_owned),
        step_failed: true,
        ..Default::default()
    };
    let matched: Vec<FailedStep> = db::tenants::list(pool, &filter, None, BULK_LIMIT)
        .await?
        .into_iter()
        .filter_map(|l| {
            let step = l.current?;
            Some(FailedStep {
                slug: l.tenant.slug,
                step: step.name,
                error_code: step.error_code,
            })
        })
        .collect();
    let mut retried = Vec::new();
    if !dry_run {
        for t in &matched {
            // A tenant retried or changed meanwhile has nothing failed any more: skipped.
            if let Retried::Done { .. } = retry(pool, workflows, &t.slug, actor).await? {
                retried.push(t.slug.clone());
            }
        }
    }
    Ok(BulkRetry { matched, retried })
}

pub async fn retry(
    pool: &PgPool,
    workflows: &Workflows,
    slug: &str,
    actor: &str,
) -> Result<Retried, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(tenant) = db::tenants::lock_by_slug(&mut tx, slug).await? else {
        return Ok(Retried::NotFound);
    };
    let Some(run) = db::tenants::current_run(&mut *tx, tenant.id).await? else {
        return Ok(Retried::NoRun);
    };
    let steps = db::steps::lock_for_run(&mut tx, run.id).await?;
    let running = purpose_of(workflows, &run.workflow).running_state();
    let (step, message) = if let Some(s) = steps.iter().find(|s| s.state == StepState::Failed) {
        db::steps::reset_failed(&mut tx, run.id, s.position).await?;
        db::tenants::set_run_state(&mut tx, run.id, RunState::Running).await?;
        db::tenants::set_state(&mut tx, tenant.id, running).await?;
        (
            s,
            format!(
                "retry of failed step {} requested; tenant {} → {}",
                s.name,
                tenant.state.as_str(),
                running.as_str()
            ),
        )
    } else if let Some(s) = steps.iter().find(|s| s.state == StepState::Waiting) {
        db::steps::due_now(&mut tx, run.id, s.position).await?;
        (s, format!("waiting step {} made due now", s.name))
    } else {
        return Ok(Retried::Nothing);
    };
    db::history::append(
        &mut *tx,
        tenant.id,
        &NewEntry {
            step: Some(&step.name),
            actor: Some(actor),
            ..NewEntry::new(HistoryKind::OperatorRetry, &message)
        },
    )
    .await?;
    db::notify(&mut tx, db::STEPS_CHANNEL).await?;
    tx.commit().await?;
    Ok(Retried::Done {
        step: step.name.clone(),
    })
}

/// Rewinds the tenant's current run to `from_step`: it and every later step start over, that one
/// due now. Refused while a step holds a live lease or when an earlier step has not succeeded.
pub async fn requeue(
    pool: &PgPool,
    workflows: &Workflows,
    slug: &str,
    from_step: &str,
    actor: &str,
) -> Result<Requeued, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(tenant) = db::tenants::lock_by_slug(&mut tx, slug).await? else {
        return Ok(Requeued::NotFound);
    };
    let Some(run) = db::tenants::current_run(&mut *tx, tenant.id).await? else {
        return Ok(Requeued::NoRun);
    };
    let Some(workflow) = workflows.get(&run.workflow) else {
        return Ok(Requeued::UnknownWorkflow(run.workflow));
    };
    let Some((position, _)) = workflow.step(from_step) else {
        return Ok(Requeued::UnknownStep {
            workflow: workflow.name.clone(),
            steps: workflow.steps.iter().map(|s| s.name.clone()).collect(),
        });
    };
    let steps = db::steps::with_unreached(
        db::steps::lock_for_run(&mut tx, run.id).await?,
        Some(workflow),
    );
    let now = chrono::Utc::now();
    if let Some(s) = steps
        .iter()
        .find(|s| s.state == StepState::Running && s.due_at.is_some_and(|d| d > now))
    {
        return Ok(Requeued::StepRunning(s.name.clone()));
    }
    if let Some(s) = steps
        .iter()
        .find(|s| (s.position as usize) < position && s.state != StepState::Succeeded)
    {
        return Ok(Requeued::EarlierStepNotDone(s.name.clone()));
    }
    // A step still marked running here lost its worker (a live lease was refused above): the rewind
    // ends that attempt, which no one else will record.
    for s in steps
        .iter()
        .filter(|s| s.state == StepState::Running && s.position as usize >= position)
    {
        let message = format!(
            "attempt {} abandoned: the lease of {} had expired; requeued by {actor}",
            s.attempts,
            s.lease_owner.as_deref().unwrap_or("?")
        );
        db::history::append(
            &mut *tx,
            tenant.id,
            &NewEntry {
                step: Some(&s.name),
                attempt: Some(s.attempts),
                lease_token: s.lease_token,
                actor: s.lease_owner.as_deref(),
                started_at: s.attempt_started_at,
                ..NewEntry::new(HistoryKind::StepAbandoned, &message)
            },
        )
        .await?;
    }
    db::steps::rewind(&mut tx, run.id, position as i32).await?;
    db::tenants::set_run_state(&mut tx, run.id, RunState::Running).await?;
    db::tenants::set_state(&mut tx, tenant.id, workflow.purpose.running_state()).await?;
    db::history::append(
        &mut *tx,
        tenant.id,
        &NewEntry {
            step: Some(from_step),
            actor: Some(actor),
            detail: Some(json!({"from_step": from_step})),
            ..NewEntry::new(
                HistoryKind::OperatorRequeue,
                &format!("requeued from {from_step} (was {})", tenant.state.as_str()),
            )
        },
    )
    .await?;
    db::notify(&mut tx, db::STEPS_CHANNEL).await?;
    tx.commit().await?;
    Ok(Requeued::Done)
}

/// How a redelivery ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Redelivered {
    Done,
    NotFound,
    /// No delivery of that event to that endpoint has ended (it may still be pending), or the
    /// endpoint is disabled.
    Nothing,
}

/// Sends one of the tenant's events to `endpoint` again: its delivery (delivered or failed) is due now
/// with a fresh attempt budget, and the tenant's history says who asked.
pub async fn redeliver(
    pool: &PgPool,
    slug: &str,
    event_id: uuid::Uuid,
    endpoint: &str,
    actor: &str,
) -> Result<Redelivered, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(tenant) = db::tenants::lock_by_slug(&mut tx, slug).await? else {
        return Ok(Redelivered::NotFound);
    };
    if !db::outbox::redeliver(&mut tx, tenant.id, event_id, endpoint).await? {
        return Ok(Redelivered::Nothing);
    }
    db::history::append(
        &mut *tx,
        tenant.id,
        &NewEntry {
            actor: Some(actor),
            detail: Some(json!({"event_id": event_id, "endpoint": endpoint})),
            ..NewEntry::new(
                HistoryKind::OperatorRedeliver,
                &format!("event {event_id} to be sent to {endpoint} again"),
            )
        },
    )
    .await?;
    db::notify(&mut tx, db::OUTBOX_CHANNEL).await?;
    tx.commit().await?;
    Ok(Redelivered::Done)
}
