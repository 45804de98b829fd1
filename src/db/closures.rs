//! The CloseAccount quota, shared by every replica: the closures vend asked for within the window.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// Serializes closure decisions across replicas for the length of one transaction.
const CLOSURE_LOCK: i64 = 0x7665_6e64_636c_6f01; // "vend" "clo" + 1

/// What [`reserve`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closure {
    /// The tenant may call CloseAccount (it holds a reservation, new or from an earlier attempt).
    Granted,
    /// `quota` closures were asked for within the window; the oldest leaves it after this long.
    Full { used: i64, frees_in: Duration },
}

/// Reserves one of `quota` closures per `window` for the tenant's account. Idempotent per tenant.
pub async fn reserve(
    pool: &PgPool,
    tenant_id: Uuid,
    account_id: &str,
    quota: i64,
    window: Duration,
) -> Result<Closure, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", CLOSURE_LOCK)
        .execute(&mut *tx)
        .await?;
    let held = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM account_closures WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if held > 0 {
        return Ok(Closure::Granted);
    }
    let spent = sqlx::query!(
        r#"SELECT count(*) AS "n!",
                  extract(epoch FROM min(requested_at) + make_interval(secs => $1) - now())::float8
                      AS "frees_in"
           FROM account_closures WHERE requested_at > now() - make_interval(secs => $1)"#,
        window.as_secs_f64()
    )
    .fetch_one(&mut *tx)
    .await?;
    if spent.n >= quota {
        let frees_in = spent.frees_in.unwrap_or(0.0).max(1.0);
        return Ok(Closure::Full {
            used: spent.n,
            frees_in: Duration::from_secs_f64(frees_in),
        });
    }
    sqlx::query!(
        "INSERT INTO account_closures (tenant_id, account_id) VALUES ($1, $2)",
        tenant_id,
        account_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Closure::Granted)
}

/// Drops the tenant's reservation: AWS refused the closure (its own count, which includes closures
/// made outside vend, is full), so this one did not happen.
pub async fn forget(pool: &PgPool, tenant_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM account_closures WHERE tenant_id = $1",
        tenant_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Member accounts in the organization index that are not closed: what AWS's quota is a share of.
pub async fn member_accounts(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM org_accounts WHERE status = 'ACTIVE'"#)
        .fetch_one(pool)
        .await
}
