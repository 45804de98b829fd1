//! `vend serve`: wires configuration, database, workflows, engine, dispatcher and HTTP together.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::db;
use crate::domain::Workflows;
use crate::engine::dispatcher::{Dispatcher, DispatcherConfig};
use crate::engine::{Engine, EngineConfig, Registry};
use crate::http::{self, AppState};
use crate::steps;
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

pub async fn serve(
    config: Config,
    parts: Parts,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let workflows = Arc::new(
        Workflows::load_dir(&config.workflows_dir, &known_kinds(&registry))
            .context("invalid workflows")?,
    );
    let pool = db::connect(&config.database_url, config.db_max_connections)
        .await
        .context("cannot connect to the database (DATABASE_URL)")?;
    db::migrate(&pool)
        .await
        .context("cannot apply migrations")?;
    let metrics = Metrics::new();

    let dispatcher = Dispatcher::new(
        pool.clone(),
        DispatcherConfig {
            webhooks: config.progress_webhooks.clone(),
            bus: None,
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
        let app = http::router(state);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
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
