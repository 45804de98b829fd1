//! The engine: workers that claim due steps under leases and run them, and the outbox dispatcher.
//! Workers coordinate only through Postgres (row locks, leases, fencing tokens), so any number of
//! `vend serve` processes can share one database.

pub mod dispatcher;
mod runner;
pub mod step;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::db;
use crate::domain::Workflows;
use crate::telemetry::Metrics;

pub use runner::Finished;
pub use step::{NamedStep, Registry, Step, StepContext, TenantInfo};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this process in leases and history.
    pub worker_id: String,
    /// Step attempts run at once by this process.
    pub concurrency: usize,
    /// How long a claim is valid without a heartbeat; a crashed worker's steps resume after this.
    pub lease: Duration,
    /// The longest a due step waits for a worker when no notification arrives.
    pub poll_interval: Duration,
    /// How long in-flight attempts may finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// The most successful steps written by one group-commit statement.
    pub commit_batch: usize,
    /// Group-commit statements in flight at once: while one runs, the next batch gathers.
    pub commit_flushes: usize,
}

/// The defaults here are the only ones: `Config` reads `VEND_WORKER_CONCURRENCY`, `VEND_LEASE` and
/// `VEND_POLL_INTERVAL` over them.
impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            concurrency: 64,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            commit_batch: 500,
            commit_flushes: 2,
        }
    }
}

/// `host-pid-random`: unique per process, readable in history.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "vend".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

pub struct Engine {
    /// Set once shutdown starts: finished steps then leave their successor due for other workers
    /// instead of going straight on with it.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// When this process last woke the outbox dispatchers (ms since `epoch`).
    pub(crate) last_outbox_notify: std::sync::atomic::AtomicU64,
    pub(crate) epoch: std::time::Instant,
    /// Rung when an attempt of this process commits a wait shorter than the poll interval: the claim
    /// loop, napping until the earliest due step it saw, looks again (the new timer may come first).
    pub(crate) timers: Notify,
    pub(crate) pool: PgPool,
    pub(crate) workflows: Arc<Workflows>,
    pub(crate) registry: Registry,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) commits: crate::group_commit::GroupCommit<
        db::steps::Success,
        (db::steps::SuccessResult, i64),
        sqlx::Error,
    >,
}

impl Engine {
    pub fn new(
        pool: PgPool,
        workflows: Arc<Workflows>,
        registry: Registry,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            stopping: std::sync::atomic::AtomicBool::new(false),
            last_outbox_notify: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            timers: Notify::new(),
            pool,
            workflows,
            registry,
            commits: crate::group_commit::GroupCommit::new(
                config.commit_batch,
                config.commit_flushes,
            ),
            config,
            metrics,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Claims and runs due steps until `shutdown`. Dropping the returned future aborts every attempt in
    /// flight (their leases expire and other workers resume them), which is how tests simulate a crash.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            self.pool.clone(),
            db::STEPS_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        let _abort_listener = AbortOnDrop(listener);
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut tasks = JoinSet::new();
        let mut db_backoff = Duration::from_millis(100);
        info!(worker = %self.config.worker_id, concurrency = self.config.concurrency, "workers started");
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            let claims = match db::steps::claim(
                &self.pool,
                &self.config.worker_id,
                free as i64,
                self.config.lease,
            )
            .await
            {
                Ok(c) => {
                    db_backoff = Duration::from_millis(100);
                    c
                }
                Err(e) => {
                    // The database is down or overloaded: back off instead of spinning.
                    warn!(error = %e, retry_in_ms = db_backoff.as_millis() as u64, "could not claim steps");
                    tokio::select! {
                        () = tokio::time::sleep(db_backoff) => {}
                        () = shutdown.cancelled() => break,
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let claimed = claims.len();
            for claim in claims {
                let permit = slots
                    .clone()
                    .try_acquire_owned()
                    .expect("claimed no more than the free slots");
                let engine = self.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    engine.run_claim(claim).await
                });
            }
            if claimed == free {
                // There may be more due work: claim again as soon as a slot frees.
                continue;
            }
            // Sleep until the earliest timer fires, a notification arrives, or the poll interval
            // passes, whichever comes first: durable waits end on time without anyone polling fast.
            let nap = match db::steps::next_due(&self.pool).await {
                // A step already due but not claimable is locked by another worker's claim: look
                // again shortly rather than spin.
                Ok(Some(at)) => (at - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .clamp(
                        Duration::from_millis(10),
                        self.config.poll_interval.max(Duration::from_millis(10)),
                    ),
                _ => self.config.poll_interval,
            };
            debug!(
                claimed,
                nap_ms = nap.as_millis() as u64,
                "no more due steps; waiting"
            );
            tokio::select! {
                () = wake.notified() => {}
                () = self.timers.notified() => {}
                () = tokio::time::sleep(nap) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        info!(in_flight = tasks.len(), "workers stopping");
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, drain)
            .await
            .is_err()
        {
            warn!(
                "attempts still running after the shutdown grace period; their leases will expire"
            );
            tasks.abort_all();
        }
    }

    /// Claims and runs whatever is due now, once, and waits for it: for tests and tools that want to
    /// step the engine by hand.
    pub async fn run_due_once(self: &Arc<Self>) -> Result<Vec<Finished>, sqlx::Error> {
        let claims = db::steps::claim(
            &self.pool,
            &self.config.worker_id,
            self.config.concurrency as i64,
            self.config.lease,
        )
        .await?;
        let mut set = JoinSet::new();
        for c in claims {
            set.spawn(self.clone().run_claim(c));
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.expect("step task panicked outside the step body"));
        }
        Ok(out)
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns Postgres notifications on `channel` into wake-ups. Only a hint: a lost notification delays
/// work by at most one poll interval, so errors just reconnect after a pause.
pub(crate) async fn listen(
    pool: PgPool,
    channel: &'static str,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "cannot connect the notification listener");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(channel).await {
            debug!(error = %e, "cannot LISTEN");
            tokio::time::sleep(pause).await;
            continue;
        }
        pause = Duration::from_millis(200);
        loop {
            tokio::select! {
                r = listener.try_recv() => match r {
                    Ok(Some(_)) => wake.notify_one(),
                    // The connection dropped; whatever was notified meanwhile is picked up by polling.
                    Ok(None) => wake.notify_one(),
                    Err(e) => {
                        debug!(error = %e, "notification listener failed");
                        break;
                    }
                },
                () = shutdown.cancelled() => return,
            }
        }
        tokio::time::sleep(pause).await;
    }
}
