//! Fleet rollouts: a template rolled out to every active silo tenant in waves (a canary wave first),
//! each tenant's update a run of the rollout workflow. `advance` is the driver: it reads each running
//! tenant's outcome from its run, halts the rollout past `max_failures`, completes it when no tenant
//! is left, and starts the next wave when the current one is done.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db;
use crate::db::history::NewEntry;
use crate::db::rollouts::{Counts, Rollout};
use crate::domain::{
    HistoryKind, Purpose, RolloutState, RolloutTenantState, RunState, TenantState, Workflows,
};

const ROLLOUT_ID: &str = crate::domain::Resource::RolloutId.key();

/// What a new rollout is asked to do.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// `tenant` or `baseline`.
    pub stack: String,
    pub template: String,
    pub canary: i32,
    pub wave_size: WaveSize,
    pub max_failures: i32,
}

/// How many tenants a wave after the canary takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Tenants(i32),
    /// A share of the tenants after the canary, rounded up: `10%` of 95 is 10 a wave.
    Percent(i32),
}

impl WaveSize {
    /// `N` (1 to 100000) or `P%` (1% to 100%).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "wave_size must be a whole number from 1 to 100000 or a percentage from 1% to 100%, not {text:?}"
            )
        };
        match text.strip_suffix('%') {
            Some(p) => match p.trim().parse::<i32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveSize::Percent(p)),
                _ => Err(bad()),
            },
            None => match text.parse::<i32>() {
                Ok(n) if (1..=100_000).contains(&n) => Ok(WaveSize::Tenants(n)),
                _ => Err(bad()),
            },
        }
    }

    /// Tenants per wave for a rollout over `eligible` tenants whose first `canary` go alone.
    pub fn resolve(self, eligible: usize, canary: i32) -> i32 {
        match self {
            WaveSize::Tenants(n) => n,
            WaveSize::Percent(p) => {
                let rest = (eligible as i64 - i64::from(canary.max(0))).max(0);
                ((rest * i64::from(p) + 99) / 100).clamp(1, 100_000) as i32
            }
        }
    }
}

/// A template's version: the first 12 hex digits of its SHA-256.
pub fn version(template: &str) -> String {
    let d = Sha256::digest(template.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug)]
pub enum Started {
    Done(Rollout, Counts),
    /// No rollout workflow is loaded (`workflows/rollout.toml`).
    Unavailable,
}

/// Starts a rollout to every active tenant of a provisioning workflow that deploys the stack.
pub async fn start(
    pool: &PgPool,
    workflows: &Workflows,
    r: &NewRollout,
    actor: &str,
) -> Result<Started, sqlx::Error> {
    if workflows.update().is_none() {
        return Ok(Started::Unavailable);
    }
    let silo: Vec<String> = workflows
        .all()
        .filter(|w| {
            w.purpose == Purpose::Provision && w.steps.iter().any(|s| s.kind == "deploy_stack")
        })
        .map(|w| w.name.clone())
        .collect();
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let tenants = db::rollouts::eligible_tenants(&mut *tx, &silo).await?;
    db::rollouts::create(
        &mut tx,
        id,
        &r.stack,
        &r.template,
        &version(&r.template),
        r.canary,
        r.wave_size.resolve(tenants.len(), r.canary),
        r.max_failures,
        actor,
        &tenants,
    )
    .await?;
    if tenants.is_empty() {
        db::rollouts::set_state(&mut tx, id, RolloutState::Completed).await?;
    }
    tx.commit().await?;
    let rollout = db::rollouts::get(pool, id).await?.expect("just created");
    let counts = db::rollouts::counts(pool, id).await?;
    Ok(Started::Done(rollout, counts))
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

#[derive(Debug)]
pub enum Controlled {
    Done(Rollout, Counts),
    NotFound,
    /// Not allowed in the rollout's state.
    Refused(String),
}

pub async fn control(pool: &PgPool, id: Uuid, action: Control) -> Result<Controlled, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(r) = db::rollouts::lock(&mut tx, id).await? else {
        return Ok(Controlled::NotFound);
    };
    use RolloutState::*;
    let to = match (action, r.state) {
        (Control::Pause, Running) => Paused,
        (Control::Resume, Paused) => Running,
        // Ops fixed what failed: the failed tenants are tried again first (their wave is the
        // earliest unfinished one), then the rollout goes on.
        (Control::Resume, Halted) => {
            db::rollouts::retry_failed(&mut tx, id).await?;
            Running
        }
        (Control::Abort, Running | Paused | Halted) => Aborted,
        (_, s) => return Ok(Controlled::Refused(s.as_str().to_owned())),
    };
    db::rollouts::set_state(&mut tx, id, to).await?;
    tx.commit().await?;
    let r = db::rollouts::get(pool, id).await?.expect("exists");
    let c = db::rollouts::counts(pool, id).await?;
    Ok(Controlled::Done(r, c))
}

/// One pass of the driver over every running or paused rollout; returns how many it looked at.
pub async fn advance(pool: &PgPool, workflows: &Workflows) -> Result<usize, sqlx::Error> {
    let ids = db::rollouts::running(pool).await?;
    for id in &ids {
        advance_one(pool, workflows, *id).await?;
    }
    Ok(ids.len())
}

async fn advance_one(pool: &PgPool, workflows: &Workflows, id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(r) = db::rollouts::lock(&mut tx, id).await? else {
        return Ok(());
    };
    for t in db::rollouts::running_tenants(&mut *tx, id).await? {
        let to = match t.run_state.as_deref().and_then(RunState::parse) {
            Some(RunState::Succeeded) => RolloutTenantState::Updated,
            Some(RunState::Failed) => RolloutTenantState::Failed,
            // Offboarded meanwhile (its update run cancelled).
            Some(RunState::Cancelled) => RolloutTenantState::Skipped,
            _ => continue,
        };
        db::rollouts::set_tenant(&mut tx, id, t.tenant_id, to, None).await?;
    }
    let c = db::rollouts::counts(&mut *tx, id).await?;
    if c.failed > i64::from(r.max_failures) {
        db::rollouts::set_state(&mut tx, id, RolloutState::Halted).await?;
        return tx.commit().await;
    }
    if c.pending == 0 && c.running == 0 {
        db::rollouts::set_state(&mut tx, id, RolloutState::Completed).await?;
        return tx.commit().await;
    }
    if r.state == RolloutState::Running {
        let (pending, wave_running) = db::rollouts::next_wave(&mut *tx, id).await?;
        if !wave_running {
            for tenant in pending {
                start_tenant(&mut tx, workflows, &r, tenant).await?;
            }
        }
    }
    tx.commit().await
}

/// Starts the tenant's update run, unless it is busy (left pending for the next pass) or no longer
/// active (skipped).
async fn start_tenant(
    conn: &mut PgConnection,
    workflows: &Workflows,
    r: &Rollout,
    tenant_id: Uuid,
) -> Result<(), sqlx::Error> {
    let Some(workflow) = workflows.update() else {
        return Ok(());
    };
    let tenant = db::tenants::by_id_locked(conn, tenant_id).await?;
    if tenant.state != TenantState::Active {
        return db::rollouts::set_tenant(conn, r.id, tenant_id, RolloutTenantState::Skipped, None)
            .await;
    }
    if let Some(run) = db::tenants::current_run(&mut *conn, tenant_id).await?
        && run.state == RunState::Running
    {
        return Ok(());
    }
    let run_id = Uuid::now_v7();
    db::tenants::insert_run(conn, run_id, tenant_id, workflow).await?;
    db::tenants::merge_resources(
        conn,
        tenant_id,
        &serde_json::json!({ ROLLOUT_ID: r.id.to_string() }),
    )
    .await?;
    db::history::append(
        &mut *conn,
        tenant_id,
        &NewEntry {
            actor: Some(&r.actor),
            detail: Some(
                serde_json::json!({"rollout": r.id, "stack": r.stack, "version": r.version}),
            ),
            ..NewEntry::new(
                HistoryKind::RolloutStarted,
                &format!(
                    "rollout {} of the {} stack (version {})",
                    r.id, r.stack, r.version
                ),
            )
        },
    )
    .await?;
    db::rollouts::set_tenant(
        conn,
        r.id,
        tenant_id,
        RolloutTenantState::Running,
        Some(run_id),
    )
    .await?;
    db::notify(conn, db::STEPS_CHANNEL).await
}

/// Drives rollouts until shutdown: a pass every `every`.
pub async fn drive(
    pool: PgPool,
    workflows: std::sync::Arc<Workflows>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(e) = advance(&pool, &workflows).await {
            tracing::warn!(error = %e, "rollout pass failed; will try again");
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_size_is_a_count_or_a_share_of_the_tenants_after_the_canary() {
        assert_eq!(WaveSize::parse("25"), Ok(WaveSize::Tenants(25)));
        assert_eq!(WaveSize::parse(" 10% "), Ok(WaveSize::Percent(10)));
        for bad in ["0", "0%", "101%", "-5", "ten", "%", "1.5", "100001", ""] {
            assert!(WaveSize::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(WaveSize::Tenants(7).resolve(1000, 1), 7);
        assert_eq!(
            WaveSize::Percent(10).resolve(96, 1),
            10,
            "10% of 95, rounded up"
        );
        assert_eq!(WaveSize::Percent(50).resolve(3, 1), 1);
        assert_eq!(WaveSize::Percent(100).resolve(51, 1), 50);
        assert_eq!(WaveSize::Percent(1).resolve(2, 1), 1, "never an empty wave");
        assert_eq!(WaveSize::Percent(30).resolve(0, 1), 1);
    }
}
