//! The shared pool's one row: what vend knows of the pool account and stack, and the lease that lets
//! one tenant's `prepare_pool` step at a time change it.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct PoolRow {
    pub state: Value,
    /// The configuration digest the pool was last made ready for.
    pub version: Option<String>,
}

pub async fn get(db: impl PgExecutor<'_>) -> Result<PoolRow, sqlx::Error> {
    let r = sqlx::query!("SELECT state, version FROM pool WHERE id = 'pool'")
        .fetch_one(db)
        .await?;
    Ok(PoolRow {
        state: r.state,
        version: r.version,
    })
}

/// Takes the lease for `lease` for the tenant `holder` if nobody else holds it (a lease of the same
/// tenant's earlier attempt, which crashed, is taken over). `false`: another tenant's step is
/// preparing the pool.
pub async fn claim(
    db: impl PgExecutor<'_>,
    holder: Uuid,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let secs = lease.as_secs_f64();
    let n = sqlx::query!(
        "UPDATE pool SET lease_until = now() + make_interval(secs => $1), holder = $2
         WHERE id = 'pool' AND (lease_until < now() OR holder = $2)",
        secs,
        holder
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub async fn release(db: impl PgExecutor<'_>, holder: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE pool SET lease_until = '-infinity', holder = NULL WHERE id = 'pool' AND holder = $1",
        holder
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Merges `patch` into the state (a `null` removes the key). Committed at once: an id learnt from
/// AWS must survive a crash right after.
pub async fn merge(db: impl PgExecutor<'_>, patch: &Value) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE pool SET state = jsonb_strip_nulls(state || $1), updated_at = now() WHERE id = 'pool'",
        patch
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The pool is ready for the configuration `version`.
pub async fn set_version(
    db: impl PgExecutor<'_>,
    version: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE pool SET version = $1, updated_at = now() WHERE id = 'pool'",
        version
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Active tenants served by `workflow` (the pool's), newest first, at most `limit`.
pub async fn active_tenants(
    db: impl PgExecutor<'_>,
    workflow: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT slug FROM tenants WHERE workflow = $1 AND state = 'active' ORDER BY id DESC LIMIT $2",
        workflow,
        limit
    )
    .fetch_all(db)
    .await
}
