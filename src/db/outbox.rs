//! The transactional outbox: events written with the state change that caused them, and their
//! deliveries to each endpoint, claimed under a lease like steps.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{DeliveryState, EventType};

/// Records an event and a pending delivery to every enabled endpoint, in the caller's transaction.
pub async fn insert_event(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    event_type: EventType,
    payload: &Value,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query!(
        r#"WITH e AS (
               INSERT INTO events (id, tenant_id, type, payload) VALUES ($1, $2, $3, $4) RETURNING id
           )
           INSERT INTO deliveries (event_id, endpoint_id, state, due_at)
           SELECT e.id, ep.id, $5, now() FROM e, endpoints ep WHERE ep.disabled_at IS NULL"#,
        id,
        tenant_id,
        event_type.as_str(),
        payload,
        DeliveryState::Pending.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(id)
}

/// An event on its own (not part of a state change's transaction), committed and announced.
pub async fn report(
    pool: &sqlx::PgPool,
    tenant_id: Uuid,
    event_type: EventType,
    payload: &Value,
) -> Result<Uuid, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = insert_event(&mut tx, tenant_id, event_type, payload).await?;
    super::notify(&mut tx, super::OUTBOX_CHANNEL).await?;
    tx.commit().await?;
    Ok(id)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub id: String,
    pub kind: &'static str,
    pub target: String,
}

/// Makes the endpoints table match the configuration: configured endpoints exist (a 410-disabled one
/// stays disabled), others are disabled as removed.
pub async fn sync_endpoints(
    conn: &mut PgConnection,
    specs: &[EndpointSpec],
) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let kinds: Vec<String> = specs.iter().map(|s| s.kind.to_owned()).collect();
    let targets: Vec<String> = specs.iter().map(|s| s.target.clone()).collect();
    sqlx::query!(
        r#"INSERT INTO endpoints (id, kind, target)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
           ON CONFLICT (id) DO UPDATE SET
               disabled_at = CASE WHEN endpoints.disabled_reason = 'removed from configuration'
                                  THEN NULL ELSE endpoints.disabled_at END,
               disabled_reason = CASE WHEN endpoints.disabled_reason = 'removed from configuration'
                                      THEN NULL ELSE endpoints.disabled_reason END"#,
        &ids,
        &kinds,
        &targets,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"UPDATE endpoints SET disabled_at = now(), disabled_reason = 'removed from configuration'
           WHERE disabled_at IS NULL AND NOT (id = ANY($1))"#,
        &ids
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"UPDATE deliveries SET state = $1, due_at = NULL
           WHERE state = $2
             AND endpoint_id IN (SELECT id FROM endpoints WHERE disabled_at IS NOT NULL)"#,
        DeliveryState::Disabled.as_str(),
        DeliveryState::Pending.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub event_id: Uuid,
    pub endpoint_id: String,
    pub attempts: i32,
    pub lease_token: i64,
    pub event_type: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` due deliveries, leasing each for `lease`; the attempt counter is bumped here so
/// a crash mid-send still counts the attempt.
pub async fn claim(
    db: impl PgExecutor<'_>,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    sqlx::query_as!(
        ClaimedDelivery,
        r#"WITH due AS (
               SELECT event_id, endpoint_id FROM deliveries
               WHERE due_at <= now() AND state = $3
               ORDER BY due_at LIMIT $1
               FOR UPDATE SKIP LOCKED
           ),
           claimed AS (
               UPDATE deliveries d SET due_at = now() + make_interval(secs => $2),
                      lease_token = nextval('lease_tokens'), attempts = d.attempts + 1
               FROM due WHERE d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id
               RETURNING d.event_id, d.endpoint_id, d.attempts, d.lease_token
           )
           SELECT c.event_id AS "event_id!", c.endpoint_id AS "endpoint_id!", c.attempts AS "attempts!",
                  c.lease_token AS "lease_token!", e.type AS "event_type!", e.payload AS "payload!",
                  e.created_at AS "created_at!"
           FROM claimed c JOIN events e ON e.id = c.event_id
           ORDER BY e.created_at"#,
        limit,
        lease.as_secs_f64(),
        DeliveryState::Pending.as_str(),
    )
    .fetch_all(db)
    .await
}

/// How one delivery attempt ended.
#[derive(Debug, Clone)]
pub enum DeliveryResult {
    Delivered {
        status: Option<i32>,
    },
    Retry {
        after: Duration,
        status: Option<i32>,
        error: String,
    },
    Failed {
        status: Option<i32>,
        error: String,
    },
}

/// Records an attempt's result if the lease still holds; `false` if it was lost.
pub async fn record(
    db: impl PgExecutor<'_>,
    event_id: Uuid,
    endpoint_id: &str,
    lease_token: i64,
    result: &DeliveryResult,
) -> Result<bool, sqlx::Error> {
    let (state, after, status, error) = match result {
        DeliveryResult::Delivered { status } => (DeliveryState::Delivered, None, *status, None),
        DeliveryResult::Retry {
            after,
            status,
            error,
        } => (
            DeliveryState::Pending,
            Some(after.as_secs_f64()),
            *status,
            Some(error.as_str()),
        ),
        DeliveryResult::Failed { status, error } => {
            (DeliveryState::Failed, None, *status, Some(error.as_str()))
        }
    };
    let r = sqlx::query!(
        r#"UPDATE deliveries SET state = $4,
               due_at = CASE WHEN $5::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $5) END,
               last_status = $6, last_error = $7,
               delivered_at = CASE WHEN $8 THEN now() END
           WHERE event_id = $1 AND endpoint_id = $2 AND lease_token = $3 AND state = $9"#,
        event_id,
        endpoint_id,
        lease_token,
        state.as_str(),
        after,
        status,
        error,
        state == DeliveryState::Delivered,
        DeliveryState::Pending.as_str(),
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// An endpoint answered 410 Gone: stop sending to it.
pub async fn disable_endpoint(
    conn: &mut PgConnection,
    endpoint_id: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE endpoints SET disabled_at = now(), disabled_reason = $2 WHERE id = $1",
        endpoint_id,
        reason
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"UPDATE deliveries SET state = $2, due_at = NULL
           WHERE endpoint_id = $1 AND state = $3"#,
        endpoint_id,
        DeliveryState::Disabled.as_str(),
        DeliveryState::Pending.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: Uuid,
    pub event_type: String,
    pub slug: String,
    pub endpoint_id: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Deliveries for ops, newest first, optionally by state and tenant.
pub async fn list_deliveries(
    db: impl PgExecutor<'_>,
    state: Option<&str>,
    slug: Option<&str>,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    sqlx::query_as!(
        Delivery,
        r#"SELECT d.event_id, e.type AS event_type, t.slug, d.endpoint_id, d.state, d.attempts,
                  CASE WHEN d.state = $4 THEN d.due_at END AS next_attempt_at,
                  d.last_status, d.last_error, d.delivered_at, d.created_at
           FROM deliveries d JOIN events e ON e.id = d.event_id JOIN tenants t ON t.id = e.tenant_id
           WHERE ($1::text IS NULL OR d.state = $1) AND ($2::text IS NULL OR t.slug = $2)
           ORDER BY d.created_at DESC, d.event_id DESC
           LIMIT $3"#,
        state,
        slug,
        limit,
        DeliveryState::Pending.as_str(),
    )
    .fetch_all(db)
    .await
}

/// Deliveries per state, for metrics.
pub async fn count_by_state(db: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(r#"SELECT state, count(*) AS "n!" FROM deliveries GROUP BY state"#)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.n)).collect())
}

/// Makes a delivery of one of `tenant_id`'s events that has ended (delivered or failed) due again
/// with a fresh attempt budget, unless its endpoint is disabled. `false` when there is no such
/// delivery (another tenant's, still pending, or its endpoint disabled): nothing changed.
pub async fn redeliver(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    event_id: Uuid,
    endpoint_id: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        r#"UPDATE deliveries d SET state = $4, due_at = now(), attempts = 0,
               last_status = NULL, last_error = NULL, delivered_at = NULL, lease_token = NULL
           FROM events e, endpoints ep
           WHERE d.event_id = $2 AND d.endpoint_id = $3 AND d.state IN ($5, $6)
             AND e.id = d.event_id AND e.tenant_id = $1
             AND ep.id = d.endpoint_id AND ep.disabled_at IS NULL"#,
        tenant_id,
        event_id,
        endpoint_id,
        DeliveryState::Pending.as_str(),
        DeliveryState::Delivered.as_str(),
        DeliveryState::Failed.as_str(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}
