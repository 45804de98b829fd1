//! The live replicas, for splitting rate budgets between them.

use std::time::Duration;

use sqlx::PgPool;

/// Records this replica as alive now and returns how many are (itself included).
pub async fn heartbeat(
    pool: &PgPool,
    worker_id: &str,
    alive_for: Duration,
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO replicas (worker_id) VALUES ($1)
         ON CONFLICT (worker_id) DO UPDATE SET seen_at = now()",
        worker_id
    )
    .execute(&mut *tx)
    .await?;
    let n = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM replicas WHERE seen_at > now() - make_interval(secs => $1)"#,
        alive_for.as_secs_f64()
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(n.max(1))
}

/// This replica stops (a clean shutdown): the others take its share at their next heartbeat.
pub async fn leave(pool: &PgPool, worker_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM replicas WHERE worker_id = $1", worker_id)
        .execute(pool)
        .await?;
    Ok(())
}
