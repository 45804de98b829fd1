//! Durations of asynchronous AWS operations as vend observed them (see `domain::waits`).

use std::time::Duration;

use sqlx::PgExecutor;

/// Observations kept per kind: enough for a steady median, few enough to follow a change in AWS.
pub const KEEP: i64 = 25;

pub async fn record(
    db: impl PgExecutor<'_>,
    kind: &str,
    took: Duration,
) -> Result<(), sqlx::Error> {
    // Older observations beyond KEEP are dropped in the same statement, so the table stays small.
    sqlx::query!(
        r#"WITH added AS (
               INSERT INTO wait_durations (kind, seconds) VALUES ($1, $2) RETURNING id
           )
           DELETE FROM wait_durations WHERE kind = $1 AND id < (
               SELECT min(id) FROM (
                   SELECT id FROM wait_durations WHERE kind = $1 ORDER BY id DESC LIMIT $3
               ) recent
           )"#,
        kind,
        took.as_secs_f64(),
        KEEP
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The most recent observations of `kind`, newest first.
pub async fn recent(db: impl PgExecutor<'_>, kind: &str) -> Result<Vec<f64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT seconds FROM wait_durations WHERE kind = $1 ORDER BY id DESC LIMIT $2",
        kind,
        KEEP
    )
    .fetch_all(db)
    .await
}
