//! The only place with SQL. Functions take an executor or a connection so callers own the transaction;
//! writes that may be retried are idempotent or fenced by a lease token.

pub mod closures;
pub mod durations;
pub mod history;
pub mod org;
pub mod outbox;
pub mod replicas;
pub mod retention;
pub mod slots;
pub mod steps;
pub mod tenants;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub use sqlx::PgConnection;

/// Channel that wakes workers when a step becomes due now. Only a hint: polling is the fallback.
pub const STEPS_CHANNEL: &str = "vend_steps";
/// Channel that wakes the outbox dispatcher.
pub const OUTBOX_CHANNEL: &str = "vend_outbox";

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A pool that cannot get a connection quickly is an outage: fail the request (503) rather than
        // queue behind it.
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

pub async fn notify(conn: &mut PgConnection, channel: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Wakes the listeners of a channel after a commit rather than inside it. A NOTIFY in a transaction
/// takes a database-wide lock at commit and holds it across the WAL flush, so every notifying commit
/// waits for the one before it to reach the disk: with durability on, that serializes the signup
/// webhook. Sent on its own, a notification writes no WAL and holds the lock for a moment. Coalesced:
/// while one is on its way, further nudges add nothing (listeners look at everything due anyway).
/// Only a hint: a lost one is covered by the workers' and dispatcher's polling.
pub struct Nudge {
    pool: PgPool,
    channel: &'static str,
    pending: std::sync::atomic::AtomicBool,
}

impl Nudge {
    pub fn new(pool: PgPool, channel: &'static str) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            pool,
            channel,
            pending: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn nudge(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.pending.store(false, Ordering::Release);
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(me.channel)
                .execute(&me.pool)
                .await
            {
                tracing::debug!(error = %e, channel = me.channel, "notification not sent; pollers will see the work");
            }
        });
    }
}

/// Parses a state column into its enum; an unknown value means the schema and code disagree.
pub(crate) fn decode<T>(
    column: &str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, sqlx::Error> {
    parse(value).ok_or_else(|| {
        sqlx::Error::Decode(format!("unexpected value {value:?} in column {column}").into())
    })
}
