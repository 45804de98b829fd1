//! What the console's fleet page counts: signups and activations per hour, CreateAccount slots, and
//! AWS throttles per service and minute.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::EventType;

/// Events of `types` per hour since `since`, as `(hour, type, count)`, oldest first.
///
/// Event ids are UUIDv7, whose leading 48 bits are the creation time in Unix milliseconds, so the
/// primary key orders them by time: the window is a range scan of the key, with no index on time that
/// every signup would have to maintain.
pub async fn events_per_hour(
    db: impl PgExecutor<'_>,
    since: DateTime<Utc>,
    types: &[EventType],
) -> Result<Vec<(DateTime<Utc>, String, i64)>, sqlx::Error> {
    let lowest = Uuid::from_u128((since.timestamp_millis().max(0) as u128) << 80);
    let types: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    let rows = sqlx::query!(
        r#"SELECT date_trunc('hour', created_at) AS "hour!", type AS "kind!", count(*) AS "n!"
           FROM events WHERE id >= $1 AND type = ANY($2)
           GROUP BY 1, 2 ORDER BY 1"#,
        lowest,
        &types as &[&str],
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.hour, r.kind, r.n)).collect())
}

/// Tenants waiting in line for a CreateAccount slot now.
pub async fn slot_queue(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    // The partial index steps_slot_waiters holds exactly these rows.
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM steps WHERE wait_reason = 'slot'"#)
        .fetch_one(db)
        .await
}

/// Adds `counts` (throttles per service) to the current minute's record.
pub async fn record_throttles(
    db: impl PgExecutor<'_>,
    counts: &[(String, i64)],
) -> Result<(), sqlx::Error> {
    let (services, n): (Vec<&str>, Vec<i64>) = counts.iter().map(|(s, n)| (s.as_str(), *n)).unzip();
    sqlx::query!(
        r#"INSERT INTO aws_throttles (minute, service, throttles)
           SELECT date_trunc('minute', now()), s, n FROM unnest($1::text[], $2::bigint[]) AS c(s, n)
           ON CONFLICT (minute, service) DO UPDATE SET throttles = aws_throttles.throttles + excluded.throttles"#,
        &services as &[&str],
        &n,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Throttles per service and minute since `since`, as `(minute, service, count)`, oldest first.
pub async fn throttles_since(
    db: impl PgExecutor<'_>,
    since: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT minute, service, throttles FROM aws_throttles WHERE minute >= $1
           ORDER BY minute, service"#,
        since
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.minute, r.service, r.throttles))
        .collect())
}

/// The place in the line for a CreateAccount slot of a step waiting there since `started_at` (1:
/// next). Slots go to the longest-waiting step first (`db::slots`), which is this order.
pub async fn slot_place(
    db: impl PgExecutor<'_>,
    started_at: Option<DateTime<Utc>>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) + 1 AS "n!" FROM steps WHERE wait_reason = 'slot' AND started_at < $1"#,
        started_at.unwrap_or_else(Utc::now)
    )
    .fetch_one(db)
    .await
}
