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
    k
}

/// The AWS side of a running vend: the silo steps' shared context, the bus, the reconciler.
pub struct AwsRuntime {
    pub silo: Arc<Silo>,
    pub bus: Arc<EventBridge>,
    pub reconciler: Arc<Reconciler>,
}

impl AwsRuntime {
    /// Validates the SCP files and templates, then reconciles the management account. `orgs` replaces
    /// the Organizations adapter (tests interpose on it); `None` uses the SDK.
    pub async fn start(
        settings: AwsSettings,
        sdk: aws_config::SdkConfig,
        pool: sqlx::PgPool,
        metrics: Arc<Metrics>,
        orgs: Option<Arc<dyn Organizations>>,
    ) -> anyhow::Result<Self> {
        // Local files first: a broken guardrail must stop start-up before any AWS call.
        let scps = reconcile::load_scps(&settings.scp_dir)?;
        let templates = Templates::load(&settings.templates_dir).map_err(anyhow::Error::msg)?;
        let limiter = Arc::new(aws::Limiter::new(settings.budgets.clone()));
        let aws = Aws::with_limiter(sdk, metrics, limiter);
        let orgs = orgs.unwrap_or_else(|| Arc::new(SdkOrganizations::new(aws.clone())));
        let accounts = Arc::new(Accounts::new(aws.clone(), &settings.access_role));
        let route53 = Arc::new(Route53::new(aws.clone()));
        let bus = Arc::new(EventBridge::new(aws.clone(), &settings.event_bus));
        let reconciler = Arc::new(Reconciler {
            orgs: orgs.clone(),
            accounts: accounts.clone(),
            route53: route53.clone(),
            bus: bus.clone(),
            settings: settings.clone(),
            scps,
            pool: pool.clone(),
        });
        let management = reconcile_with_retries(&reconciler)
            .await
            .context("cannot prepare the management account")?;
        info!(
            organization = %management.organization_id,
            tenant_ou = %management.tenant_ou_id,
            zone = %management.hosted_zone_id,
            "management account reconciled"
        );
        if db::org::claim_periodic(&pool, "sync-accounts", settings.account_sync_interval).await? {
            let n = reconciler
                .sync_accounts()
                .await
                .context("cannot index the organization's accounts")?;
            info!(accounts = n, "organization account index refreshed");
        }
        let silo = Arc::new(Silo {
            aws,
            orgs,
            accounts,
            route53,
            settings,
            management,
            templates,
            pool,
        });
        Ok(Self {
            silo,
            bus,
            reconciler,
        })
    }
}

/// The start-up reconcile, retried while AWS throttles or fails transiently (a process that exits on
/// the first throttle at boot would restart straight into the same storm).
async fn reconcile_with_retries(
    r: &Reconciler,
) -> Result<crate::steps::Management, reconcile::ReconcileError> {
    let mut delay = std::time::Duration::from_millis(500);
    let mut tries = 0;
    loop {
        match r.reconcile().await {
            Err(reconcile::ReconcileError::Aws(e))
                if e.class != crate::domain::ErrorClass::Permanent && tries < 8 =>
            {
                tries += 1;
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "management reconcile failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
            other => return other,
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

    let aws_runtime = if parts.workers || parts.dispatcher {
        let settings = config.aws.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "VEND_BASE_DOMAIN: is required to run workers or the dispatcher (with VEND_CERTIFICATE_ARN, or VEND_TENANT_CERTIFICATES=per-account)"
            )
        })?;
        let sdk = aws::load_sdk_config().await.map_err(anyhow::Error::msg)?;
        Some(AwsRuntime::start(settings, sdk, pool.clone(), metrics.clone(), None).await?)
    } else {
        None
    };
    let registry = match &aws_runtime {
        Some(rt) => crate::steps::registry(rt.silo.clone()),
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
            lease: config.webhook_timeout * 2,
            poll_interval: config.poll_interval,
            batch: 100,
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
    }
    if parts.workers {
        let engine = Engine::new(
            pool.clone(),
            workflows.clone(),
            registry,
            EngineConfig {
                worker_id: config
                    .worker_id
                    .clone()
                    .unwrap_or_else(crate::engine::default_worker_id),
                concurrency: config.worker_concurrency,
                lease: config.lease,
                poll_interval: config.poll_interval,
                ..EngineConfig::default()
            },
            metrics.clone(),
        );
        tasks.spawn(engine.run(shutdown.clone()));
    }
    if parts.dispatcher {
        tasks.spawn(dispatcher.run(shutdown.clone()));
    }
    if parts.api {
        let state = AppState {
            pool: pool.clone(),
            workflows: workflows.clone(),
            signup_secret: config.signup_secret.clone(),
            ops_tokens: config.ops_tokens.clone(),
            metrics: metrics.clone(),
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
    while tasks.join_next().await.is_some() {}
    pool.close().await;
    info!("stopped");
    Ok(())
}
