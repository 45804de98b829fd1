//! The outbox dispatcher: delivers progress events at least once to each endpoint (signed Standard
//! Webhooks, and an EventBridge bus), with a stable `webhook-id` across retries. Deliveries are rows
//! claimed under a lease, so several replicas share the work and a crash loses nothing.

pub use crate::domain::events::{BUS_BATCH, BusEvent, EventBus};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::db;
use crate::db::outbox::{ClaimedDelivery, DeliveryResult, EndpointSpec};
use crate::standard_webhooks::Secret;
use crate::telemetry::{Metrics, StepLabels};

/// A progress webhook receiver.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub url: String,
    pub secret: Secret,
    /// What logs, history and `/v1/deliveries` call it; URLs can carry tokens, so they never show.
    pub name: Option<String>,
}

impl WebhookEndpoint {
    /// `webhook:<name>`, or `webhook:<first 12 hex digits of the URL's SHA-256>` without a name:
    /// stable across restarts, and never the URL itself.
    pub fn endpoint_id(&self) -> String {
        match &self.name {
            Some(n) => format!("webhook:{n}"),
            None => {
                use sha2::{Digest, Sha256};
                let h = Sha256::digest(self.url.as_bytes());
                format!("webhook:{}", &crate::steps::hex(&h)[..12])
            }
        }
    }
}

/// Webhook deliveries of one batch in flight at once.
pub const PARALLEL_DELIVERIES: usize = 16;

/// The largest batch that is surely sent within `lease` when every delivery takes its whole `timeout`:
/// whole rounds of [`PARALLEL_DELIVERIES`], one round of margin kept for recording and the bus.
pub fn batch_within_lease(lease: Duration, timeout: Duration) -> usize {
    let rounds = (lease.as_secs_f64() / timeout.as_secs_f64().max(0.001)).floor() as usize;
    PARALLEL_DELIVERIES * rounds.saturating_sub(1).max(1)
}

pub struct DispatcherConfig {
    pub webhooks: Vec<WebhookEndpoint>,
    pub bus: Option<Arc<dyn EventBus>>,
    /// Delay after each failed attempt; the number of attempts is one more than its length.
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub batch: usize,
    /// Development only (`VEND_ALLOW_HTTP_WEBHOOKS`): loopback receivers are allowed.
    pub allow_loopback: bool,
    /// `VEND_EVENTS_INCLUDE_OWNER_EMAIL`: events leave vend with the tenant's owner e-mail.
    pub include_owner_email: bool,
}

/// The Standard Webhooks retry schedule: after the first attempt, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub fn standard_retry_schedule() -> Vec<Duration> {
    [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

pub struct Dispatcher {
    pool: PgPool,
    config: DispatcherConfig,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(pool: PgPool, config: DispatcherConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let http = reqwest::Client::builder()
            // Never follow a redirect: a receiver must not be able to point vend at another address.
            .redirect(reqwest::redirect::Policy::none())
            // Names resolve to global addresses only (literal addresses are checked at start).
            .dns_resolver(Arc::new(crate::net::AllowedOnly {
                allow_loopback: config.allow_loopback,
            }))
            .timeout(config.timeout)
            .user_agent(concat!("vend/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        Arc::new(Self {
            pool,
            config,
            http,
            metrics,
        })
    }

    /// The endpoints table as the configuration says it should be.
    pub fn endpoint_specs(&self) -> Vec<EndpointSpec> {
        let mut specs: Vec<EndpointSpec> = self
            .config
            .webhooks
            .iter()
            .map(|w| EndpointSpec {
                id: w.endpoint_id(),
                kind: "webhook",
                // The table names the endpoint as everything else does: the URL stays in config.
                target: w.endpoint_id(),
            })
            .collect();
        if let Some(bus) = &self.config.bus {
            specs.push(EndpointSpec {
                id: format!("eventbridge:{}", bus.name()),
                kind: "eventbridge",
                target: bus.name().to_owned(),
            });
        }
        specs
    }

    pub async fn sync_endpoints(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        db::outbox::sync_endpoints(&mut tx, &self.endpoint_specs()).await?;
        tx.commit().await
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(super::listen(
            self.pool.clone(),
            db::OUTBOX_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        let _abort = super::AbortOnDrop(listener);
        let mut db_backoff = Duration::from_millis(100);
        info!("outbox dispatcher started");
        while !shutdown.is_cancelled() {
            match self.dispatch_once().await {
                Ok(n) if n >= self.config.batch => {
                    db_backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(_) => db_backoff = Duration::from_millis(100),
                Err(e) => {
                    warn!(error = %e, retry_in_ms = db_backoff.as_millis() as u64, "outbox dispatch failed");
                    tokio::select! {
                        () = tokio::time::sleep(db_backoff) => {}
                        () = shutdown.cancelled() => break,
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Claims one batch of due deliveries and sends them; returns how many were claimed.
    /// The batch must be sent before its lease ends (see [`batch_within_lease`]), or another
    /// dispatcher would claim and send it again.
    pub async fn dispatch_once(&self) -> Result<usize, sqlx::Error> {
        let claimed =
            db::outbox::claim(&self.pool, self.config.batch as i64, self.config.lease).await?;
        let n = claimed.len();
        if n == 0 {
            return Ok(0);
        }
        let (bus, hooks): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|d| d.endpoint_id.starts_with("eventbridge:"));

        let webhook_results = futures::stream::iter(hooks)
            .map(|d| async move {
                let r = self.send_webhook(&d).await;
                (d, r)
            })
            .buffer_unordered(PARALLEL_DELIVERIES)
            .collect::<Vec<_>>()
            .await;
        let mut results = webhook_results;
        results.extend(self.send_bus(bus).await);

        for (d, outcome) in results {
            self.record(&d, outcome).await?;
        }
        Ok(n)
    }

    async fn record(&self, d: &ClaimedDelivery, outcome: Attempt) -> Result<(), sqlx::Error> {
        let kind = d
            .endpoint_id
            .split(':')
            .next()
            .unwrap_or("unknown")
            .to_owned();
        let result = match outcome {
            Attempt::Delivered(status) => DeliveryResult::Delivered { status },
            Attempt::Gone => {
                warn!(endpoint = %d.endpoint_id, "endpoint answered 410 Gone; disabling it");
                let mut tx = self.pool.begin().await?;
                db::outbox::disable_endpoint(&mut tx, &d.endpoint_id, "410 Gone").await?;
                tx.commit().await?;
                self.count(kind, "disabled");
                return Ok(());
            }
            Attempt::Failed {
                status,
                error,
                retry_after,
            } => {
                let attempts = d.attempts.max(1) as usize;
                match self.config.retry_schedule.get(attempts - 1) {
                    Some(delay) => DeliveryResult::Retry {
                        after: retry_after.map_or(*delay, |r| r.max(*delay)),
                        status,
                        error,
                    },
                    None => DeliveryResult::Failed { status, error },
                }
            }
        };
        let outcome = match &result {
            DeliveryResult::Delivered { .. } => "delivered",
            DeliveryResult::Retry { .. } => "retry",
            DeliveryResult::Failed { .. } => "failed",
        };
        match &result {
            DeliveryResult::Failed { error, .. } => {
                warn!(endpoint = %d.endpoint_id, event = %d.event_id, error = %error, "giving up delivering an event")
            }
            DeliveryResult::Retry { error, after, .. } => {
                debug!(endpoint = %d.endpoint_id, event = %d.event_id, error = %error, retry_in_s = after.as_secs(), "delivery failed; will retry")
            }
            DeliveryResult::Delivered { .. } => {}
        }
        self.count(kind, outcome);
        if !db::outbox::record(
            &self.pool,
            d.event_id,
            &d.endpoint_id,
            d.lease_token,
            &result,
        )
        .await?
        {
            debug!(event = %d.event_id, "delivery lease lost; another dispatcher owns it");
        }
        Ok(())
    }

    fn count(&self, kind: String, outcome: &str) {
        self.metrics
            .deliveries
            .get_or_create(&StepLabels {
                step: kind,
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    async fn send_webhook(&self, d: &ClaimedDelivery) -> Attempt {
        let Some(endpoint) = self
            .config
            .webhooks
            .iter()
            .find(|w| w.endpoint_id() == d.endpoint_id)
        else {
            return Attempt::Failed {
                status: None,
                error: "endpoint is no longer configured".into(),
                retry_after: None,
            };
        };
        let body = webhook_body(d, self.config.include_owner_email).to_string();
        let msg_id = webhook_id(d.event_id);
        let ts = Utc::now().timestamp();
        let signature = endpoint.secret.sign(&msg_id, ts, body.as_bytes());
        let sent = self
            .http
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    Attempt::Delivered(Some(status as i32))
                } else if status == 410 {
                    Attempt::Gone
                } else {
                    let retry_after = if matches!(status, 429 | 502 | 503 | 504) {
                        resp.headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(crate::net::parse_retry_after)
                    } else {
                        None
                    };
                    Attempt::Failed {
                        status: Some(status as i32),
                        error: format!("HTTP {status}"),
                        retry_after,
                    }
                }
            }
            Err(e) => Attempt::Failed {
                status: None,
                error: describe_reqwest_error(&e),
                retry_after: None,
            },
        }
    }

    async fn send_bus(&self, deliveries: Vec<ClaimedDelivery>) -> Vec<(ClaimedDelivery, Attempt)> {
        let mut out = Vec::with_capacity(deliveries.len());
        let Some(bus) = &self.config.bus else {
            out.extend(deliveries.into_iter().map(|d| {
                (
                    d,
                    Attempt::Failed {
                        status: None,
                        error: "no event bus is configured".into(),
                        retry_after: None,
                    },
                )
            }));
            return out;
        };
        for chunk in deliveries.chunks(BUS_BATCH) {
            let events: Vec<BusEvent> = chunk
                .iter()
                .map(|d| BusEvent {
                    id: d.event_id,
                    detail_type: d.event_type.clone(),
                    detail: webhook_body(d, self.config.include_owner_email)["data"].to_string(),
                    time: d.created_at,
                })
                .collect();
            match bus.put(&events).await {
                Ok(results) => {
                    for (d, r) in chunk.iter().zip(
                        results
                            .into_iter()
                            .chain(std::iter::repeat(Err("no result for entry".into()))),
                    ) {
                        let a = match r {
                            Ok(()) => Attempt::Delivered(None),
                            Err(error) => Attempt::Failed {
                                status: None,
                                error,
                                retry_after: None,
                            },
                        };
                        out.push((d.clone(), a));
                    }
                }
                Err(error) => out.extend(chunk.iter().map(|d| {
                    (
                        d.clone(),
                        Attempt::Failed {
                            status: None,
                            error: error.clone(),
                            retry_after: None,
                        },
                    )
                })),
            }
        }
        out
    }
}

enum Attempt {
    Delivered(Option<i32>),
    Gone,
    Failed {
        status: Option<i32>,
        error: String,
        retry_after: Option<Duration>,
    },
}

/// The stable id receivers dedupe on: the same for every retry of an event to every endpoint.
pub fn webhook_id(event_id: Uuid) -> String {
    format!("msg_{}", event_id.simple())
}

/// The body is built from stored columns only, so every retry sends the same bytes. This is where
/// every event leaves vend, so personal data is removed here unless configured to go out.
fn webhook_body(d: &ClaimedDelivery, include_owner_email: bool) -> Value {
    let mut data = d.payload.clone();
    if !include_owner_email {
        crate::domain::events::strip_owner_email(&mut data);
    }
    json!({
        "type": d.event_type,
        "timestamp": d.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
}

/// A transport error without the URL (it may carry credentials in its query string).
fn describe_reqwest_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        // The resolver's refusal says why better than "could not connect".
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.to_string().contains(crate::net::REFUSED) {
                return crate::net::REFUSED.into();
            }
            source = s.source();
        }
        "could not connect".into()
    } else {
        e.without_url_ref().to_string()
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut s = self.to_string();
        if let Some(url) = self.url() {
            s = s.replace(url.as_str(), "<url>");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_e_mail_leaves_vend_only_when_configured_and_the_stored_event_is_unchanged() {
        let d = ClaimedDelivery {
            event_id: Uuid::now_v7(),
            endpoint_id: "e".into(),
            attempts: 1,
            lease_token: 1,
            event_type: "tenant.active".into(),
            payload: json!({"tenant": {"slug": "acme", "owner_email": "ops@acme.example"}, "step": null}),
            created_at: Utc::now(),
        };
        let out = webhook_body(&d, false);
        assert_eq!(out["data"]["tenant"], json!({"slug": "acme"}));
        assert_eq!(out["type"], "tenant.active");
        assert_eq!(
            webhook_body(&d, true)["data"]["tenant"]["owner_email"],
            "ops@acme.example"
        );
        assert_eq!(
            webhook_body(&d, false),
            out,
            "the same bytes on every retry"
        );
    }

    #[test]
    fn a_batch_is_sent_well_within_its_lease() {
        let t = Duration::from_secs(15);
        for lease in [t * 2, t * 3, t * 10] {
            let b = batch_within_lease(lease, t);
            let rounds = b.div_ceil(PARALLEL_DELIVERIES) as u32;
            assert!(t * (rounds + 1) <= lease, "{lease:?}: {b}");
        }
        assert_eq!(batch_within_lease(t * 3, t), 32);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(
            crate::net::parse_retry_after("120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            crate::net::parse_retry_after("999999"),
            Some(Duration::from_secs(86_400))
        );
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let d = crate::net::parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(crate::net::parse_retry_after("soon"), None);
    }

    #[test]
    fn standard_schedule_has_eight_attempts() {
        assert_eq!(standard_retry_schedule().len() + 1, 8);
    }
}
