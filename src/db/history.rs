//! The append-only history of each tenant.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, Default)]
pub struct NewEntry<'a> {
    pub kind: &'a str,
    pub step: Option<&'a str>,
    pub attempt: Option<i32>,
    pub lease_token: Option<i64>,
    pub actor: Option<&'a str>,
    pub message: &'a str,
    pub detail: Option<Value>,
    /// For the row that ends an attempt: when the attempt started.
    pub started_at: Option<DateTime<Utc>>,
}

pub async fn append(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    e: &NewEntry<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO history (tenant_id, kind, step, attempt, lease_token, actor, message, detail,
                                   started_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        tenant_id,
        e.kind,
        e.step,
        e.attempt,
        e.lease_token,
        e.actor,
        e.message,
        e.detail,
        e.started_at,
    )
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub lease_token: Option<i64>,
    pub actor: Option<String>,
    pub message: String,
    pub detail: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
}

/// The tenant's history, oldest first.
pub async fn for_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as!(
        Entry,
        r#"SELECT id, at, kind, step, attempt, lease_token, actor, message, detail, started_at
           FROM history WHERE tenant_id = $1 ORDER BY id"#,
        tenant_id
    )
    .fetch_all(db)
    .await
}
