//! The append-only history of each tenant.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::HistoryKind;

#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub kind: HistoryKind,
    pub step: Option<&'a str>,
    pub attempt: Option<i32>,
    pub lease_token: Option<i64>,
    pub actor: Option<&'a str>,
    pub message: &'a str,
    pub detail: Option<Value>,
    /// For the row that ends an attempt: when the attempt started.
    pub started_at: Option<DateTime<Utc>>,
}

impl<'a> NewEntry<'a> {
    /// An entry of `kind` saying `message`, with nothing else (fill the rest with struct update).
    pub fn new(kind: HistoryKind, message: &'a str) -> Self {
        Self {
            kind,
            step: None,
            attempt: None,
            lease_token: None,
            actor: None,
            message,
            detail: None,
            started_at: None,
        }
    }
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
        e.kind.as_str(),
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

/// Appends `e`, or, when the tenant's latest entry is the same kind for the same step and attempt
/// (a poll after a poll, a throttle after a throttle), folds it into that entry: its time, message and
/// detail become the new ones and `detail.count` says how many it stands for. A tenant waiting for a
/// week keeps one entry, not ten thousand.
pub async fn append_folded(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    e: &NewEntry<'_>,
) -> Result<(), sqlx::Error> {
    let folded = sqlx::query_scalar!(
        r#"UPDATE history h SET at = clock_timestamp(), message = $5,
               detail = coalesce($6, '{}'::jsonb)
                   || jsonb_build_object('count', coalesce((h.detail->>'count')::int, 1) + 1)
           WHERE h.tenant_id = $1
             AND h.id = (SELECT max(id) FROM history WHERE tenant_id = $1)
             AND h.kind = $2 AND h.step IS NOT DISTINCT FROM $3 AND h.attempt IS NOT DISTINCT FROM $4
           RETURNING h.id"#,
        tenant_id,
        e.kind.as_str(),
        e.step,
        e.attempt,
        e.message,
        e.detail,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if folded.is_none() {
        append(&mut *conn, tenant_id, e).await?;
    }
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

/// The tenant's entries newest first, older than entry `before` (all with `None`), at most `limit`:
/// the console shows what happened last and pages back.
pub async fn newest(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as!(
        Entry,
        r#"SELECT id, at, kind, step, attempt, lease_token, actor, message, detail, started_at
           FROM history WHERE tenant_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"#,
        tenant_id,
        before.unwrap_or(i64::MAX),
        limit
    )
    .fetch_all(db)
    .await
}

/// At most `limit` entries after the entry `after` (0: from the start), oldest first.
pub async fn page(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as!(
        Entry,
        r#"SELECT id, at, kind, step, attempt, lease_token, actor, message, detail, started_at
           FROM history WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"#,
        tenant_id,
        after,
        limit
    )
    .fetch_all(db)
    .await
}
