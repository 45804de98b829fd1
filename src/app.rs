//! `vend serve`: wires configuration, database, workflows, engine, dispatcher and HTTP together.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::aws::accounts::Accounts;
use crate::aws::eventbridge::EventBridge;
use crate::aws::organizations::{Organizations, SdkOrganizations};
use crate::aws::route53::Route53;
use crate::aws::{self, Aws};
use crate::config::{AwsSettings, Config};
use crate::db;
use crate::domain::Workflows;
use crate::engine::dispatcher::{Dispatcher, DispatcherConfig};
use crate::engine::{Engine, EngineConfig, Registry};
use crate::http::{self, AppState};
use crate::readiness::Readiness;
use crate::reconcile::{self, Reconciler};
use crate::steps;
use crate::steps::{Silo, Templates};
use crate::telemetry::Metrics;

/// Which parts of `serve` run in this process, so API and workers can scale apart.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub api: bool,
    pub workers: bool,
    pub dispatcher: bool,
}

/// Step kinds this build knows, whether or not it can run them here.
pub fn known_kinds(registry: &Registry) -> BTreeSet<String> {
    let mut k = registry.kinds();
    k.extend(steps::SILO_KINDS.iter().map(|s| s.to_string()));
    k.extend(steps::OFFBOARD_KINDS.iter().map(|s| s.to_string()));
    k.extend(steps::ROLLOUT_KINDS.iter().map(|s| s.to_string()));
    k.extend(steps::POOL_KINDS.iter().map(|s| s.to_string()));
    k.extend(steps::TIER_KINDS.iter().map(|s| s.to_string()));
    k
}

/// The AWS side of a running vend: the silo steps' shared context, the bus, the reconciler.
pub struct AwsRuntime {
    pub silo: Arc<Silo>,
    pub bus: Arc<EventBridge>,
    pub reconciler: Arc<Reconciler>,
}

impl AwsRuntime {
    /// Validates the SCP files and templates, then prepares the management account. `orgs` replaces
    /// the Organizations adapter (tests interpose on it); `None` uses the SDK.
    pub async fn start(
        settings: AwsSettings,
        sdk: aws_config::SdkConfig,
        pool: sqlx::PgPool,
        metrics: Arc<Metrics>,
        orgs: Option<Arc<dyn Organizations>>,
    ) -> anyhow::Result<Self> {
        let readiness = Readiness::starting("preparing the management account");
        Self::prepare(settings, sdk, pool, metrics, orgs)?
            .until_ready(&readiness)
            .await
    }

    /// Everything that needs no AWS call: the local files (a broken guardrail or template stops
    /// start-up before any call) and the adapters.
    pub fn prepare(
        settings: AwsSettings,
        sdk: aws_config::SdkConfig,
        pool: sqlx::PgPool,
        metrics: Arc<Metrics>,
        orgs: Option<Arc<dyn Organizations>>,
    ) -> anyhow::Result<Unprepared> {
        let vars = reconcile::ScpVars {
            access_role: settings.access_role.clone(),
            region: sdk
                .region()
                .map(|r| r.to_string())
                .ok_or_else(|| anyhow::anyhow!("AWS_REGION: is required"))?,
            tenant_regions: settings.tenant_regions.clone(),
        };
        let scps = reconcile::load_scps(&settings.scp_dir, &vars)?;
        let templates = Templates::load(&settings.templates_dir).map_err(anyhow::Error::msg)?;
        let limiter = Arc::new(aws::Limiter::new(settings.budgets.clone()));
        let aws = Aws::with_limiter(sdk, metrics, limiter);
        let orgs_override = orgs;
        let orgs = orgs_override
            .clone()
            .unwrap_or_else(|| Arc::new(SdkOrganizations::new(aws.clone())));
        let accounts = Arc::new(Accounts::new(aws.clone(), &settings.access_role));
        let route53 = Arc::new(Route53::new(aws.clone()));
        let bus = Arc::new(EventBridge::new(aws.clone(), &settings.event_bus));
        // The reconciler's own adapters, patient per call (see `aws::patient`); same rate budgets.
        let patient = Aws::with_limiter(
            aws::patient(&aws.sdk),
            aws.metrics().clone(),
            aws.limiter().clone(),
        );
        let reconciler = Arc::new(Reconciler {
            orgs: match &orgs_override {
                Some(o) => o.clone(),
                None => Arc::new(SdkOrganizations::new(patient.clone())),
            },
            accounts: Arc::new(Accounts::new(patient.clone(), &settings.access_role)),
            route53: Arc::new(Route53::new(patient.clone())),
            bus: Arc::new(EventBridge::new(patient, &settings.event_bus)),
            settings: settings.clone(),
            scps,
            pool: pool.clone(),
        });
        Ok(Unprepared {
            aws,
            orgs,
            accounts,
            route53,
            bus,
            reconciler,
            settings,
            templates,
            pool,
        })
    }
}

/// The AWS side before the management account is reconciled.
pub struct Unprepared {
    aws: Aws,
    orgs: Arc<dyn Organizations>,
    accounts: Arc<Accounts>,
    route53: Arc<Route53>,
    bus: Arc<EventBridge>,
    reconciler: Arc<Reconciler>,
    settings: AwsSettings,
    templates: Templates,
    pool: sqlx::PgPool,
}

impl Unprepared {
    /// The rate budgets every AWS call of this process goes through.
    pub fn limiter(&self) -> Arc<aws::Limiter> {
        self.aws.limiter().clone()
    }

    /// Reconciles the management account and indexes the organization's accounts, retrying whatever
    /// AWS answers (throttles, outages, and also a missing zone or permission, which ops can fix
    /// while vend waits) until both are done. `readiness` says what it is waiting for meanwhile.
    pub async fn until_ready(self, readiness: &Readiness) -> anyhow::Result<AwsRuntime> {
        let r = &self.reconciler;
        let management = retry_until_done(readiness, "reconciling the management account", || {
            r.reconcile()
        })
        .await;
        info!(
            organization = %management.organization_id,
            tenant_ou = %management.tenant_ou_id,
            zone = %management.hosted_zone_id,
            "management account reconciled"
        );
        retry_until_done(
            readiness,
            "indexing the organization's accounts",
            || async {
                if db::org::claim_periodic(
                    &self.pool,
                    "sync-accounts",
                    self.settings.account_sync_interval,
                )
                .await?
                {
                    let n = r.sync_accounts().await?;
                    info!(accounts = n, "organization account index refreshed");
                }
                Ok::<_, reconcile::ReconcileError>(())
            },
        )
        .await;
        let silo = Arc::new(Silo {
            aws: self.aws,
            orgs: self.orgs,
            accounts: self.accounts,
            route53: self.route53,
            settings: self.settings,
            management,
            templates: self.templates,
            pool: self.pool,
        });
        readiness.set_ready();
        Ok(AwsRuntime {
            silo,
            bus: self.bus,
            reconciler: self.reconciler,
        })
    }
}

/// How start-up retries: the classified backoff of steps, without an attempt limit (a process that
/// gave up would be restarted straight into the same storm). Throttles and outages retry within
/// seconds; a permanent answer (a missing zone, a denied permission) waits for ops at up to a minute.
fn startup_delay(e: &reconcile::ReconcileError, n: u32) -> std::time::Duration {
    use crate::domain::{ErrorClass, RetryPolicy};
    use std::time::Duration;
    let (class, floor) = match e {
        reconcile::ReconcileError::Aws(a) => (a.class, a.retry_after),
        reconcile::ReconcileError::Db(_) => (ErrorClass::Transient, None),
        _ => (ErrorClass::Permanent, None),
    };
    let policy = RetryPolicy {
        initial_interval: Duration::from_millis(500),
        maximum_interval: match class {
            ErrorClass::Permanent => Duration::from_secs(60),
            _ => Duration::from_secs(20),
        },
        ..RetryPolicy::default()
    };
    let floor = floor.unwrap_or_default().max(Duration::from_millis(200));
    policy.delay(n, Some(floor), rand::random::<f64>())
}

async fn retry_until_done<T, F, Fut>(readiness: &Readiness, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, reconcile::ReconcileError>>,
{
    let mut n = 0;
    loop {
        readiness.set_waiting(what.to_owned());
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                n += 1;
                let delay = startup_delay(&e, n);
                tracing::warn!(error = %e, attempt = n, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                readiness.set_waiting(format!("{what}: {e} (attempt {n}, retrying in {delay:?})"));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

pub async fn serve(
    config: Config,
    parts: Parts,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Workflows first: a bad file stops the process before it touches anything.
    let workflows = Arc::new(
        Workflows::load_dir(&config.workflows_dir, &known_kinds(&Registry::new()))
            .context("invalid workflows")?,
    );
    let pool = db::connect(&config.database_url, config.db_max_connections)
        .await
        .context("cannot connect to the database (DATABASE_URL)")?;
    db::migrate(&pool)
        .await
        .context("cannot apply migrations")?;
    let metrics = Metrics::new();

    // The AWS side is prepared in the background: the API (signups need only Postgres) serves at
    // once, `/readyz` says what start-up waits for, and workers and the dispatcher start once it is
    // done. Only local problems (files, configuration) stop the process here.
    let unprepared = if parts.workers || parts.dispatcher {
        let mut settings = config.aws.clone().ok_or_else(|| {
            anyhow::anyhow!("VEND_BASE_DOMAIN: is required to run workers or the dispatcher")
        })?;
        settings.tenant_regions = config.regions.allowed.clone();
        let sdk = aws::load_sdk_config().await.map_err(anyhow::Error::msg)?;
        Some(AwsRuntime::prepare(
            settings,
            sdk,
            pool.clone(),
            metrics.clone(),
            None,
        )?)
    } else {
        None
    };
    let readiness = match &unprepared {
        Some(_) => Readiness::starting("preparing the management account"),
        None => Readiness::ready(),
    };

    let worker_id = config
        .worker_id
        .clone()
        .unwrap_or_else(crate::engine::default_worker_id);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(u) = &unprepared {
        // Before the first AWS call, so even start-up's calls are within this replica's share.
        let limiter = u.limiter();
        share_budgets(&pool, &worker_id, &limiter).await;
        tasks.spawn(keep_sharing_budgets(
            pool.clone(),
            worker_id.clone(),
            limiter,
            shutdown.clone(),
        ));
    }
    if parts.api {
        let state = AppState {
            pool: pool.clone(),
            intake: crate::lifecycle::signup::Intake::new(pool.clone()),
            workflows: workflows.clone(),
            signup_secret: config.signup_secret.clone(),
            ops_tokens: config.ops_tokens.clone(),
            slug_rules: Arc::new(crate::domain::SlugRules::new(
                &config.reserved_slugs,
                config.aws.as_ref().map(AwsSettings::naming),
            )),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            nudges: http::Nudges::new(&pool),
            offboard_grace: config.offboard_grace,
            regions: config.regions.clone(),
            templates_dir: config
                .aws
                .as_ref()
                .map(|a| a.templates_dir.clone())
                .or_else(|| std::env::var_os("VEND_TEMPLATES_DIR").map(Into::into))
                .unwrap_or_else(|| "templates".into()),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (VEND_LISTEN)", config.listen))?;
        info!(listen = %listener.local_addr()?, "HTTP API listening");
        let app = http::router_with(state, config.request_limits);
        let stop = shutdown.clone();
        let limits = config.http_limits;
        tasks.spawn(async move {
            if let Err(e) = http::server::serve(
                listener,
                app,
                limits,
                stop,
                std::time::Duration::from_secs(10),
            )
            .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }

    tasks.spawn(keep_within_retention(
        pool.clone(),
        config.retention,
        shutdown.clone(),
    ));
    tasks.spawn(keep_recording_throttles(
        pool.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(keep_folding_counts(pool.clone(), shutdown.clone()));
    let background = run_background(
        config,
        worker_id,
        parts,
        pool.clone(),
        workflows,
        metrics,
        unprepared,
        readiness,
        shutdown.clone(),
    );
    tasks.spawn(async move {
        if let Err(e) = background.await {
            tracing::error!(error = %e, "workers stopped");
        }
    });
    while tasks.join_next().await.is_some() {}
    pool.close().await;
    info!("stopped");
    Ok(())
}

/// Every few seconds, and once more at shutdown, adds the AWS throttles this replica saw to the
/// fleet's per-minute record (the console's fleet page). A failed write keeps them for the next.
async fn keep_recording_throttles(
    pool: sqlx::PgPool,
    metrics: Arc<crate::telemetry::Metrics>,
    shutdown: CancellationToken,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(EVERY) => false,
            () = shutdown.cancelled() => true,
        };
        let counts = metrics.take_throttles();
        if !counts.is_empty()
            && let Err(e) = db::fleet::record_throttles(&pool, &counts).await
        {
            tracing::debug!(error = %e, "throttle counts not written; kept for the next write");
            metrics.return_throttles(counts);
        }
        if stopping {
            return;
        }
    }
}

/// Every second, folds the tenant count deltas (see `db::tenants::fold_counts`): reading the counts
/// then sums a few rows however many tenants there are. Nothing is lost if a fold fails or is skipped.
async fn keep_folding_counts(pool: sqlx::PgPool, shutdown: CancellationToken) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = db::tenants::fold_counts(&pool).await {
            tracing::debug!(error = %e, "tenant counts not folded; the next fold takes them");
        }
    }
}

/// Once an hour, one replica removes what is past `VEND_RETENTION` (see `db::retention`).
async fn keep_within_retention(
    pool: sqlx::PgPool,
    keep: std::time::Duration,
    shutdown: CancellationToken,
) {
    const BATCH: i64 = 5000;
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
            () = shutdown.cancelled() => return,
        }
        match db::org::claim_periodic(&pool, "retention", std::time::Duration::from_secs(3600))
            .await
        {
            Ok(true) => loop {
                match db::retention::purge(&pool, keep, BATCH).await {
                    Ok(p) => {
                        if p.signup_answers + p.events > 0 {
                            info!(
                                signup_answers = p.signup_answers,
                                events = p.events,
                                "removed what is past retention"
                            );
                        }
                        if p.signup_answers < BATCH as u64 && p.events < BATCH as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "retention pass failed; will try again");
                        break;
                    }
                }
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot schedule the retention pass"),
        }
    }
}

/// How often a replica says it is alive, and how long one that stopped saying so still counts.
const REPLICA_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);
const REPLICA_ALIVE_FOR: std::time::Duration = std::time::Duration::from_secs(7);

async fn share_budgets(pool: &sqlx::PgPool, worker_id: &str, limiter: &aws::Limiter) {
    match db::replicas::heartbeat(pool, worker_id, REPLICA_ALIVE_FOR).await {
        Ok(n) => {
            if n as usize != limiter.replicas() {
                info!(replicas = n, "rate budgets split between the live replicas");
            }
            limiter.set_replicas(n as usize);
        }
        // Keep the last share: an outage of Postgres stops the engine anyway.
        Err(e) => tracing::warn!(error = %e, "cannot record this replica's heartbeat"),
    }
}

/// Keeps this replica's share of the management account's rate budgets right as replicas come and
/// go (see `aws::Limiter::set_replicas`).
async fn keep_sharing_budgets(
    pool: sqlx::PgPool,
    worker_id: String,
    limiter: Arc<aws::Limiter>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(REPLICA_HEARTBEAT) => {}
            () = shutdown.cancelled() => break,
        }
        share_budgets(&pool, &worker_id, &limiter).await;
    }
    if let Err(e) = db::replicas::leave(&pool, &worker_id).await {
        tracing::warn!(error = %e, "cannot record this replica's departure");
    }
}

/// Waits for the AWS side, then runs the reconciler, the workers and the dispatcher until shutdown.
#[allow(clippy::too_many_arguments)]
async fn run_background(
    config: Config,
    worker_id: String,
    parts: Parts,
    pool: sqlx::PgPool,
    workflows: Arc<Workflows>,
    metrics: Arc<Metrics>,
    unprepared: Option<Unprepared>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let aws_runtime = match unprepared {
        Some(u) => tokio::select! {
            r = u.until_ready(&readiness) => Some(r?),
            // Stopped while still waiting for AWS: nothing has started that needs draining.
            () = shutdown.cancelled() => return Ok(()),
        },
        None => None,
    };
    let registry = match &aws_runtime {
        Some(rt) => crate::steps::registry(rt.silo.clone(), workflows.clone()),
        None => Registry::new(),
    };
    let dispatcher = Dispatcher::new(
        pool.clone(),
        DispatcherConfig {
            webhooks: config.progress_webhooks.clone(),
            bus: aws_runtime
                .as_ref()
                .map(|rt| rt.bus.clone() as Arc<dyn crate::engine::dispatcher::EventBus>),
            retry_schedule: config.webhook_retry_schedule.clone(),
            timeout: config.webhook_timeout,
            lease: config.webhook_timeout * 3,
            poll_interval: config.poll_interval,
            allow_loopback: config.allow_http_webhooks,
            include_owner_email: config.events_include_owner_email,
            batch: crate::engine::dispatcher::batch_within_lease(
                config.webhook_timeout * 3,
                config.webhook_timeout,
            ),
        },
        metrics.clone(),
    );
    dispatcher
        .sync_endpoints()
        .await
        .context("cannot record the progress endpoints")?;

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(rt) = &aws_runtime {
        let ou = rt.silo.management.tenant_ou_id.clone();
        tasks.spawn(rt.reconciler.clone().run(ou, shutdown.clone()));
        if parts.workers {
            let drift = Arc::new(crate::drift::DriftChecker {
                silo: rt.silo.clone(),
                workflows: workflows.clone(),
                interval: rt.silo.settings.drift_interval,
                repair: rt.silo.settings.drift_repair,
            });
            tasks.spawn(drift.run(shutdown.clone()));
        }
    }
    if parts.workers {
        let engine = Engine::new(
            pool.clone(),
            workflows.clone(),
            registry,
            EngineConfig {
                worker_id,
                concurrency: config.worker_concurrency,
                lease: config.lease,
                poll_interval: config.poll_interval,
                ..EngineConfig::default()
            },
            metrics.clone(),
        );
        tasks.spawn(engine.run(shutdown.clone()));
        tasks.spawn(crate::lifecycle::rollout::drive(
            pool.clone(),
            workflows.clone(),
            std::time::Duration::from_secs(2),
            shutdown.clone(),
        ));
    }
    if parts.dispatcher {
        tasks.spawn(dispatcher.run(shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
