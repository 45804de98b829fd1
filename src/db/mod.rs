//! The only place with SQL. Functions take an executor or a connection so callers own the transaction;
//! writes that may be retried are idempotent or fenced by a lease token.

pub mod closures;
pub mod drift;
pub mod durations;
pub mod fleet;
pub mod history;
pub mod org;
pub mod outbox;
pub mod pool;
pub mod replicas;
pub mod retention;
pub mod rollouts;
pub mod sessions;
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

/// How long a pooled connection may have been idle and still be used without a check.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A pool that cannot get a connection quickly is an outage: fail the request (503) rather than
        // queue behind it.
        .acquire_timeout(Duration::from_secs(5))
        // A connection is checked with a round trip before use only when it has been idle a while:
        // one busy a moment ago is alive, and the check on every acquire cost each signup a round
        // trip (and Postgres a wake-up). A connection that broke in between (the server restarted
        // under load) fails its request once and is replaced.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
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

/// Wakes the listeners of some channels after a commit rather than inside it. A NOTIFY in a
/// transaction takes a database-wide lock at commit and holds it across the WAL flush, so every
/// notifying commit waits for the one before it to reach the disk: with durability on, that
/// serializes the signup webhook. Sent on its own, a notification still commits (Postgres gives the
/// notifying transaction an id), so nudges are few: every channel in one statement, and under load at
/// most one per `MIN_GAP` (the first after a quiet spell goes at once, so an idle system wakes its
/// workers without delay). Only a hint: a lost one is covered by the workers' and dispatcher's
/// polling.
pub struct Nudge {
    pool: PgPool,
    channels: Vec<String>,
    pending: std::sync::atomic::AtomicBool,
    /// Milliseconds since `epoch` when the last nudge went out.
    last_sent: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Nudge {
    /// The shortest time between two nudges under load.
    pub const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(5);

    pub fn new(pool: PgPool, channels: &[&str]) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            pool,
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            pending: std::sync::atomic::AtomicBool::new(false),
            last_sent: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        })
    }

    pub fn nudge(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let gap = Self::MIN_GAP.as_millis() as u64;
            let now = me.epoch.elapsed().as_millis() as u64;
            let last = me.last_sent.load(Ordering::Acquire);
            if last != 0 && now < last + gap {
                tokio::time::sleep(std::time::Duration::from_millis(last + gap - now)).await;
            }
            // Cleared before sending: a commit after this point gets a nudge of its own.
            me.pending.store(false, Ordering::Release);
            me.last_sent
                .store(me.epoch.elapsed().as_millis() as u64 + 1, Ordering::Release);
            if let Err(e) = sqlx::query("SELECT pg_notify(c, '') FROM unnest($1::text[]) AS c")
                .bind(&me.channels)
                .execute(&me.pool)
                .await
            {
                tracing::debug!(error = %e, "notification not sent; pollers will see the work");
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
