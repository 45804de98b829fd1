//! Drift checks and their findings (see `drift`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::tenants::Tenant;
use crate::domain::TenantState;

/// Takes up to `limit` active tenants not checked within `interval`, longest-unchecked first, and
/// marks them checked now (so replicas share the sweep and a crash delays a check by one interval).
/// A tenant never checked counts from its last change: provisioning has just verified everything a
/// check would, and a sweep of every fresh tenant would spend the Organizations budget that the
/// tenants still being vended need.
pub async fn claim_due(
    pool: &PgPool,
    interval: Duration,
    limit: i64,
) -> Result<Vec<Tenant>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar!(
        r#"WITH due AS (
               SELECT t.id FROM tenants t LEFT JOIN drift_checks d ON d.tenant_id = t.id
               WHERE t.state = $1
                 AND coalesce(d.checked_at, t.updated_at) < now() - make_interval(secs => $2)
               ORDER BY coalesce(d.checked_at, t.updated_at)
               LIMIT $3
               FOR UPDATE OF t SKIP LOCKED
           )
           INSERT INTO drift_checks (tenant_id, checked_at)
           SELECT id, now() FROM due
           ON CONFLICT (tenant_id) DO UPDATE SET checked_at = now()
           RETURNING tenant_id"#,
        TenantState::Active.as_str(),
        interval.as_secs_f64(),
        limit
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let mut conn = pool.acquire().await?;
        out.push(super::tenants::by_id_locked(&mut conn, id).await?);
    }
    Ok(out)
}

/// The tenant is checked again at the next sweep (after a repair).
pub async fn recheck_soon(db: impl PgExecutor<'_>, tenant_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM drift_checks WHERE tenant_id = $1", tenant_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Records one check's result: findings not open yet are opened, open ones it did not see are
/// resolved. `repaired` are the resources a repair was started for. Returns the resources whose
/// findings were opened now.
pub async fn record(
    pool: &PgPool,
    tenant_id: Uuid,
    found: &[(String, String)],
    repaired: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let resources: Vec<String> = found.iter().map(|(r, _)| r.clone()).collect();
    let details: Vec<String> = found.iter().map(|(_, d)| d.clone()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query!(
        r#"UPDATE drift_findings SET resolved_at = now()
           WHERE tenant_id = $1 AND resolved_at IS NULL AND NOT (resource = ANY($2))"#,
        tenant_id,
        &resources
    )
    .execute(&mut *tx)
    .await?;
    // xmax = 0 tells a row this statement inserted from one it updated.
    let opened: Vec<String> = sqlx::query!(
        r#"INSERT INTO drift_findings (tenant_id, resource, detail)
           SELECT $1, r, d FROM unnest($2::text[], $3::text[]) AS f(r, d)
           ON CONFLICT (tenant_id, resource) WHERE resolved_at IS NULL
           DO UPDATE SET detail = EXCLUDED.detail
           RETURNING resource AS "resource!", (xmax = 0) AS "inserted!""#,
        tenant_id,
        &resources,
        &details
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .filter(|r| r.inserted)
    .map(|r| r.resource)
    .collect();
    sqlx::query!(
        r#"UPDATE drift_findings SET repaired_at = now()
           WHERE tenant_id = $1 AND resolved_at IS NULL AND resource = ANY($2)"#,
        tenant_id,
        repaired
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(opened)
}

/// An open finding.
#[derive(Debug, Clone)]
pub struct OpenFinding {
    pub slug: String,
    pub resource: String,
    pub detail: String,
    pub detected_at: DateTime<Utc>,
    pub repaired_at: Option<DateTime<Utc>>,
}

/// Open findings, newest first, of one tenant or all.
pub async fn open(
    db: impl PgExecutor<'_>,
    slug: Option<&str>,
) -> Result<Vec<OpenFinding>, sqlx::Error> {
    sqlx::query_as!(
        OpenFinding,
        r#"SELECT t.slug, f.resource, f.detail, f.detected_at, f.repaired_at
           FROM drift_findings f JOIN tenants t ON t.id = f.tenant_id
           WHERE f.resolved_at IS NULL AND ($1::text IS NULL OR t.slug = $1)
           ORDER BY f.detected_at DESC, f.id DESC
           LIMIT 10000"#,
        slug
    )
    .fetch_all(db)
    .await
}
