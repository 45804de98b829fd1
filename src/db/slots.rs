//! Capacity slots shared by every replica: at most `cap` CreateAccount requests in flight.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// Serializes slot decisions across replicas for the length of one transaction.
const SLOT_LOCK: i64 = 0x7665_6e64_5f63_6101; // "vend_ca" + 1

/// What [`acquire`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Granted,
    /// `cap` requests are in flight.
    Full,
    /// The creation budget is spent; the oldest counted request leaves the window after this long.
    OverBudget(Duration),
}

/// Takes a slot for the tenant if fewer than `cap` are open (a tenant that holds one keeps it) and
/// fewer than `budget` requests started within `window`. Slots open for longer than `stale_after`
/// no longer count as in flight: AWS finishes or fails a request long before, and a lost release
/// must not shrink capacity forever.
pub async fn acquire(
    pool: &PgPool,
    tenant_id: Uuid,
    cap: i64,
    stale_after: Duration,
    budget: i64,
    window: Duration,
) -> Result<Slot, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", SLOT_LOCK)
        .execute(&mut *tx)
        .await?;
    let held = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM account_creations
           WHERE tenant_id = $1 AND finished_at IS NULL"#,
        tenant_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if held > 0 {
        return Ok(Slot::Granted);
    }
    let spent = sqlx::query!(
        r#"SELECT count(*) AS "n!",
                  extract(epoch FROM min(started_at) + make_interval(secs => $1) - now())::float8
                      AS "frees_in"
           FROM account_creations WHERE started_at > now() - make_interval(secs => $1)"#,
        window.as_secs_f64()
    )
    .fetch_one(&mut *tx)
    .await?;
    if spent.n >= budget {
        let frees_in = spent.frees_in.unwrap_or(0.0).max(1.0);
        return Ok(Slot::OverBudget(Duration::from_secs_f64(frees_in)));
    }
    let open = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM account_creations
           WHERE finished_at IS NULL AND started_at > now() - make_interval(secs => $1)"#,
        stale_after.as_secs_f64()
    )
    .fetch_one(&mut *tx)
    .await?;
    if open >= cap {
        return Ok(Slot::Full);
    }
    sqlx::query!(
        r#"INSERT INTO account_creations (tenant_id) VALUES ($1)
           ON CONFLICT (tenant_id) DO UPDATE SET started_at = now(), finished_at = NULL"#,
        tenant_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Slot::Granted)
}

/// Releases the tenant's slot, if it holds one, and wakes the step that has waited longest for one.
pub async fn release(pool: &PgPool, tenant_id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query!(
        "UPDATE account_creations SET finished_at = now() WHERE tenant_id = $1 AND finished_at IS NULL",
        tenant_id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if released > 0 {
        sqlx::query!(
            r#"UPDATE steps SET due_at = now()
               WHERE (run_id, position) IN (
                   SELECT run_id, position FROM steps
                   WHERE wait_reason = 'slot' AND state = 'waiting'
                   ORDER BY started_at LIMIT 1
                   FOR UPDATE SKIP LOCKED)"#
        )
        .execute(&mut *tx)
        .await?;
        super::notify(&mut tx, super::STEPS_CHANNEL).await?;
    }
    tx.commit().await
}

/// Slots open now (for metrics and tests).
pub async fn open(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM account_creations WHERE finished_at IS NULL"#
    )
    .fetch_one(pool)
    .await
}
