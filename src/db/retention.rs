//! Retention: what vend keeps only for a while. Tenants and their history stay (they are the audit
//! trail); stored signup answers (replayed to a repeated webhook-id) and events whose every delivery has
//! ended go once they are older than the retention period.

use std::time::Duration;

use sqlx::PgPool;

/// Rows removed by one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub signup_answers: u64,
    pub events: u64,
}

/// Removes what is older than `keep`, at most `batch` rows of each kind (a pass repeats until done).
pub async fn purge(pool: &PgPool, keep: Duration, batch: i64) -> Result<Purged, sqlx::Error> {
    let secs = keep.as_secs_f64();
    let signup_answers = sqlx::query!(
        r#"DELETE FROM signup_requests WHERE webhook_id IN (
               SELECT webhook_id FROM signup_requests
               WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)"#,
        secs,
        batch
    )
    .execute(pool)
    .await?
    .rows_affected();
    let mut tx = pool.begin().await?;
    let old: Vec<uuid::Uuid> = sqlx::query_scalar!(
        r#"SELECT e.id FROM events e
           WHERE e.created_at < now() - make_interval(secs => $1)
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state = $3)
           LIMIT $2
           FOR UPDATE SKIP LOCKED"#,
        secs,
        batch,
        crate::domain::DeliveryState::Pending.as_str(),
    )
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM deliveries WHERE event_id = ANY($1)", &old)
        .execute(&mut *tx)
        .await?;
    let events = sqlx::query!("DELETE FROM events WHERE id = ANY($1)", &old)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    super::sessions::purge_expired(pool).await?;
    // The fleet page shows the last hour; a week is kept for a look back.
    sqlx::query!("DELETE FROM aws_throttles WHERE minute < now() - interval '7 days'")
        .execute(pool)
        .await?;
    Ok(Purged {
        signup_answers,
        events,
    })
}
