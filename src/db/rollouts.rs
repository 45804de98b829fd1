//! Fleet rollouts and their tenants (see `lifecycle::rollout`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{RolloutState, RolloutTenantState, TenantState};

use super::decode;

#[derive(Debug, Clone)]
pub struct Rollout {
    pub id: Uuid,
    pub stack: String,
    pub version: String,
    pub canary: i32,
    pub wave_size: i32,
    pub max_failures: i32,
    pub state: RolloutState,
    pub actor: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A `rollouts` row as sqlx reads it; [`Rollout`] is its typed view.
struct RolloutRecord {
    id: Uuid,
    stack: String,
    version: String,
    canary: i32,
    wave_size: i32,
    max_failures: i32,
    state: String,
    actor: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<RolloutRecord> for Rollout {
    type Error = sqlx::Error;

    fn try_from(r: RolloutRecord) -> Result<Self, sqlx::Error> {
        Ok(Rollout {
            state: decode("rollouts.state", &r.state, RolloutState::parse)?,
            id: r.id,
            stack: r.stack,
            version: r.version,
            canary: r.canary,
            wave_size: r.wave_size,
            max_failures: r.max_failures,
            actor: r.actor,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Tenants of a rollout by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub updated: i64,
    pub failed: i64,
    pub pending: i64,
    pub running: i64,
}

/// Creates the rollout with every tenant of `tenants` (in order) in its wave: the first `canary`
/// in wave 0, then `wave_size` a wave.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    conn: &mut PgConnection,
    id: Uuid,
    stack: &str,
    template: &str,
    version: &str,
    canary: i32,
    wave_size: i32,
    max_failures: i32,
    actor: &str,
    tenants: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO rollouts (id, stack, template, version, canary, wave_size, max_failures, state, actor)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $8)"#,
        id,
        stack,
        template,
        version,
        canary,
        wave_size,
        max_failures,
        actor,
        RolloutState::Running.as_str(),
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"INSERT INTO rollout_tenants (rollout_id, tenant_id, wave, state)
           SELECT $1, t.id,
                  CASE WHEN t.ord <= $3 THEN 0 ELSE 1 + (t.ord - $3 - 1) / $4 END,
                  $5
           FROM unnest($2::uuid[]) WITH ORDINALITY AS t(id, ord)"#,
        id,
        tenants,
        canary as i64,
        wave_size as i64,
        RolloutTenantState::Pending.as_str(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Rollout>, sqlx::Error> {
    sqlx::query_as!(
        RolloutRecord,
        r#"SELECT id, stack, version, canary, wave_size, max_failures, state, actor, created_at, updated_at
           FROM rollouts WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?
    .map(Rollout::try_from)
    .transpose()
}

pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Rollout>, sqlx::Error> {
    sqlx::query_as!(
        RolloutRecord,
        r#"SELECT id, stack, version, canary, wave_size, max_failures, state, actor, created_at, updated_at
           FROM rollouts WHERE id = $1 FOR UPDATE"#,
        id
    )
    .fetch_optional(conn)
    .await?
    .map(Rollout::try_from)
    .transpose()
}

pub async fn list(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Rollout>, sqlx::Error> {
    sqlx::query_as!(
        RolloutRecord,
        r#"SELECT id, stack, version, canary, wave_size, max_failures, state, actor, created_at, updated_at
           FROM rollouts ORDER BY created_at DESC, id DESC LIMIT $1"#,
        limit
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Rollout::try_from)
    .collect()
}

/// Rollouts the driver moves on.
pub async fn running(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT id FROM rollouts WHERE state IN ($1, $2) ORDER BY created_at"#,
        RolloutState::Running.as_str(),
        RolloutState::Paused.as_str(),
    )
    .fetch_all(db)
    .await
}

/// The template (and its version) of the newest rollout of `stack` that was not aborted or halted:
/// what a tenant provisioned now must get, so that it joins the fleet at the version the fleet is
/// moving to rather than the file its process read at start.
pub async fn current_template(
    db: impl PgExecutor<'_>,
    stack: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    Ok(sqlx::query!(
        r#"SELECT template, version FROM rollouts
           WHERE stack = $1 AND state IN ($2, $3, $4)
           ORDER BY created_at DESC, id DESC LIMIT 1"#,
        stack,
        RolloutState::Running.as_str(),
        RolloutState::Paused.as_str(),
        RolloutState::Completed.as_str(),
    )
    .fetch_optional(db)
    .await?
    .map(|r| (r.template, r.version)))
}

pub async fn template(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<(String, String, String)>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT stack, template, version FROM rollouts WHERE id = $1",
        id
    )
    .fetch_optional(db)
    .await?
    .map(|r| (r.stack, r.template, r.version)))
}

pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: RolloutState,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE rollouts SET state = $2, updated_at = now() WHERE id = $1",
        id,
        state.as_str()
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn counts(db: impl PgExecutor<'_>, id: Uuid) -> Result<Counts, sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE state <> $2) AS "total!",
                  count(*) FILTER (WHERE state = $3) AS "updated!",
                  count(*) FILTER (WHERE state = $4) AS "failed!",
                  count(*) FILTER (WHERE state = $5) AS "pending!",
                  count(*) FILTER (WHERE state = $6) AS "running!"
           FROM rollout_tenants WHERE rollout_id = $1"#,
        id,
        RolloutTenantState::Skipped.as_str(),
        RolloutTenantState::Updated.as_str(),
        RolloutTenantState::Failed.as_str(),
        RolloutTenantState::Pending.as_str(),
        RolloutTenantState::Running.as_str(),
    )
    .fetch_one(db)
    .await?;
    Ok(Counts {
        total: r.total,
        updated: r.updated,
        failed: r.failed,
        pending: r.pending,
        running: r.running,
    })
}

/// A tenant of a rollout that is running: its update's run, and that run's state now.
#[derive(Debug, Clone)]
pub struct Running {
    pub tenant_id: Uuid,
    pub run_state: Option<String>,
}

/// The rollout's running tenants with the state of their update runs.
pub async fn running_tenants(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Vec<Running>, sqlx::Error> {
    sqlx::query_as!(
        Running,
        r#"SELECT rt.tenant_id, r.state AS "run_state?"
           FROM rollout_tenants rt LEFT JOIN runs r ON r.id = rt.run_id
           WHERE rt.rollout_id = $1 AND rt.state = $2"#,
        id,
        RolloutTenantState::Running.as_str(),
    )
    .fetch_all(db)
    .await
}

/// The pending tenants of the rollout's first wave that still has pending or running tenants, and
/// whether that wave has running ones.
pub async fn next_wave(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<(Vec<Uuid>, bool), sqlx::Error> {
    // The literals are `rollout_tenants_open`'s predicate: a parameter would not let the planner use it.
    let rows = sqlx::query!(
        r#"WITH w AS (
               SELECT min(wave) AS wave FROM rollout_tenants
               WHERE rollout_id = $1 AND state IN ('pending', 'running')
           )
           SELECT rt.tenant_id, rt.state FROM rollout_tenants rt, w
           WHERE rt.rollout_id = $1 AND rt.wave = w.wave AND rt.state IN ('pending', 'running')"#,
        id
    )
    .fetch_all(db)
    .await?;
    let running = rows
        .iter()
        .any(|r| r.state == RolloutTenantState::Running.as_str());
    Ok((
        rows.into_iter()
            .filter(|r| r.state == RolloutTenantState::Pending.as_str())
            .map(|r| r.tenant_id)
            .collect(),
        running,
    ))
}

/// The rollout's failed tenants back to pending in their waves.
pub async fn retry_failed(conn: &mut PgConnection, id: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        r#"UPDATE rollout_tenants SET state = $2, updated_at = now()
           WHERE rollout_id = $1 AND state = $3"#,
        id,
        RolloutTenantState::Pending.as_str(),
        RolloutTenantState::Failed.as_str(),
    )
    .execute(conn)
    .await?
    .rows_affected())
}

pub async fn set_tenant(
    conn: &mut PgConnection,
    id: Uuid,
    tenant_id: Uuid,
    state: RolloutTenantState,
    run_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE rollout_tenants SET state = $3, run_id = coalesce($4, run_id), updated_at = now()
           WHERE rollout_id = $1 AND tenant_id = $2"#,
        id,
        tenant_id,
        state.as_str(),
        run_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Active tenants whose workflow is one of `workflows`, oldest first (the canary is the oldest).
pub async fn eligible_tenants(
    db: impl PgExecutor<'_>,
    workflows: &[String],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT id FROM tenants WHERE state = $2 AND workflow = ANY($1) ORDER BY id"#,
        workflows,
        TenantState::Active.as_str(),
    )
    .fetch_all(db)
    .await
}
