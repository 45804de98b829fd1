//! Logging (tracing; JSON with `LOG_FORMAT=json`) and the Prometheus metrics vend keeps in process.
//! Gauges that describe the whole fleet (steps by state, queue depth) are read from Postgres at scrape
//! time, so every replica reports the same truth.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The AWS SDK's own logging below `warn` carries request details (access key ids, signing material),
/// so it is capped whatever `RUST_LOG` asks for.
const AWS_SDK_TARGETS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sigv4",
    "aws_runtime",
    "aws_config",
    "aws_credential_types",
];

/// The log filter: `RUST_LOG` (default `info`), minus anything it says about the AWS SDK's targets,
/// which stay at `warn`.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let user: Vec<&str> = rust_log
        .unwrap_or("info,sqlx=warn")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.starts_with("aws_"))
        .collect();
    let mut filter = EnvFilter::try_new(user.join(",")).unwrap_or_else(|_| EnvFilter::new("info"));
    for target in AWS_SDK_TARGETS {
        filter = filter.add_directive(format!("{target}=warn").parse().expect("a valid directive"));
    }
    filter
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` for JSON lines.
pub fn init() {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsLabels {
    pub operation: String,
}

/// Counters and histograms updated by this process, plus the gauges filled at scrape time.
pub struct Metrics {
    registry: Registry,
    pub step_attempts: Family<StepLabels, Counter>,
    pub step_throttles: Family<StepLabels, Counter>,
    pub claim_latency: Histogram,
    pub step_duration: Histogram,
    pub lease_lost: Counter,
    pub deliveries: Family<StepLabels, Counter>,
    pub aws_calls: Family<AwsLabels, Counter>,
    pub aws_throttles: Family<AwsLabels, Counter>,
    pub steps_by_state: Family<StateLabels, Gauge>,
    pub tenants_by_state: Family<StateLabels, Gauge>,
    pub deliveries_by_state: Family<StateLabels, Gauge>,
    pub queue_depth: Gauge,
    pub creation_budget_waits: Counter,
    /// Throttles per AWS service since the last [`Metrics::take_throttles`]: what this replica adds
    /// to the fleet's per-minute record in Postgres.
    throttle_tally: std::sync::Mutex<std::collections::BTreeMap<String, i64>>,
}

impl Metrics {
    /// AWS throttled a call of `operation` (`service.Operation`).
    pub fn throttled(&self, operation: &str) {
        self.aws_throttles
            .get_or_create(&AwsLabels {
                operation: operation.to_owned(),
            })
            .inc();
        let service = operation.split('.').next().unwrap_or(operation);
        let mut tally = self
            .throttle_tally
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *tally.entry(service.to_owned()).or_default() += 1;
    }

    /// The throttles per service counted since the last call, counted from zero again.
    pub fn take_throttles(&self) -> Vec<(String, i64)> {
        let mut tally = self
            .throttle_tally
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *tally).into_iter().collect()
    }

    /// Gives back throttles that could not be written, to go with the next write.
    pub fn return_throttles(&self, counts: Vec<(String, i64)>) {
        let mut tally = self
            .throttle_tally
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (service, n) in counts {
            *tally.entry(service).or_default() += n;
        }
    }

    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("vend");
        let m = Metrics {
            step_attempts: Family::default(),
            step_throttles: Family::default(),
            claim_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            step_duration: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            lease_lost: Counter::default(),
            deliveries: Family::default(),
            aws_calls: Family::default(),
            aws_throttles: Family::default(),
            steps_by_state: Family::default(),
            tenants_by_state: Family::default(),
            deliveries_by_state: Family::default(),
            queue_depth: Gauge::default(),
            creation_budget_waits: Counter::default(),
            throttle_tally: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "step_attempts",
            "Step attempts that ended, by step and outcome (succeeded, waiting, backoff, throttled, failed)",
            m.step_attempts.clone(),
        );
        registry.register(
            "step_throttles",
            "Step attempts that ended throttled by AWS",
            m.step_throttles.clone(),
        );
        registry.register(
            "claim_latency_seconds",
            "Delay from a step becoming due to a worker claiming it",
            m.claim_latency.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Wall time of one step attempt",
            m.step_duration.clone(),
        );
        registry.register(
            "lease_lost",
            "Step attempts abandoned because another worker took over the lease",
            m.lease_lost.clone(),
        );
        registry.register(
            "deliveries",
            "Progress event delivery attempts, by endpoint kind and outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls by operation",
            m.aws_calls.clone(),
        );
        registry.register(
            "aws_throttles",
            "AWS API calls answered with throttling, by operation",
            m.aws_throttles.clone(),
        );
        registry.register(
            "steps",
            "Steps in the database by state (all replicas)",
            m.steps_by_state.clone(),
        );
        registry.register(
            "tenants",
            "Tenants in the database by state",
            m.tenants_by_state.clone(),
        );
        registry.register(
            "deliveries_by_state",
            "Progress event deliveries in the database by state",
            m.deliveries_by_state.clone(),
        );
        registry.register(
            "queue_depth",
            "Steps due now and not yet claimed",
            m.queue_depth.clone(),
        );
        registry.register(
            "account_creation_budget_waits",
            "CreateAccount requests held back because VEND_ACCOUNT_CREATION_BUDGET was spent",
            m.creation_budget_waits.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn step(&self, step: &str, outcome: &str) {
        self.step_attempts
            .get_or_create(&StepLabels {
                step: step.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_stays_at_warn_whatever_rust_log_says() {
        for rust_log in [
            "trace",
            "debug,aws_smithy_runtime=trace",
            "aws_sigv4=trace,vend=debug",
        ] {
            let f = filter(Some(rust_log)).to_string();
            assert!(
                f.contains("aws_smithy_runtime=warn") && f.contains("aws_sigv4=warn"),
                "{f}"
            );
            assert!(
                !f.contains("=trace,aws") && !f.contains("aws_sigv4=trace"),
                "{f}"
            );
        }
    }
}
