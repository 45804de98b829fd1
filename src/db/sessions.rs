//! Ops console sessions (see `http::console`).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A live console session. `operator` and `write` are filled from the ops token as configured now.
#[derive(Debug, Clone)]
pub struct Session {
    pub token_digest: Vec<u8>,
    pub csrf: String,
    pub operator: String,
    pub write: bool,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    id_digest: &[u8],
    token_digest: &[u8],
    csrf: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO console_sessions (id_digest, token_digest, csrf, expires_at) VALUES ($1, $2, $3, $4)",
        id_digest,
        token_digest,
        csrf,
        expires_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The session whose cookie hashes to `id_digest`, unless it has expired.
pub async fn find(
    db: impl PgExecutor<'_>,
    id_digest: &[u8],
) -> Result<Option<Session>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT token_digest, csrf FROM console_sessions WHERE id_digest = $1 AND expires_at > now()",
        id_digest
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Session {
        token_digest: r.token_digest,
        csrf: r.csrf,
        operator: String::new(),
        write: false,
    }))
}

pub async fn delete(db: impl PgExecutor<'_>, id_digest: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM console_sessions WHERE id_digest = $1",
        id_digest
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Removes expired sessions (the retention task calls it).
pub async fn purge_expired(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query!("DELETE FROM console_sessions WHERE expires_at <= now()")
            .execute(db)
            .await?
            .rows_affected(),
    )
}
