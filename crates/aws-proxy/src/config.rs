//! What the proxy injects and enforces.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A quota: sustained requests per second and burst, optionally per caller (access key ≈ account).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Quota {
    pub per_second: f64,
    pub burst: f64,
    pub per_account: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyConfig {
    pub upstream: String,
    /// Probability that any call is answered with a throttling error.
    pub throttle_rate: f64,
    /// Probability that any call is answered with a 5xx before reaching the emulator.
    pub error_rate: f64,
    /// Probability that a call reaches the emulator but its answer is replaced by a 5xx.
    pub lost_response_rate: f64,
    /// How long a `CreateAccount` request stays `IN_PROGRESS`.
    pub create_account_delay: Duration,
    /// `CreateAccount` requests allowed in progress at once (AWS: 5).
    pub create_account_cap: usize,
    /// `CloseAccount` requests allowed per `close_account_window`: past it AWS answers
    /// `ConstraintViolationException` with reason `CLOSE_ACCOUNT_QUOTA_EXCEEDED`. `None`: no limit
    /// (the real quota is 10 % of the member accounts per 30 days).
    #[serde(default)]
    pub close_account_quota: Option<usize>,
    #[serde(default = "thirty_days")]
    pub close_account_window: Duration,
    /// Quotas by `service` or `service.Operation`.
    pub quotas: BTreeMap<String, Quota>,
    /// Seed for the fault dice, for reproducible runs.
    pub seed: u64,
}

fn thirty_days() -> Duration {
    Duration::from_secs(30 * 86_400)
}

/// AWS's published figures (AWS-FACTS.md).
pub fn aws_quotas() -> BTreeMap<String, Quota> {
    let q = |per_second: f64, burst: f64, per_account: bool| Quota {
        per_second,
        burst,
        per_account,
    };
    BTreeMap::from([
        ("route53".to_owned(), q(5.0, 5.0, true)),
        ("apigateway".to_owned(), q(10.0, 40.0, true)),
        (
            "apigateway.CreateDomainName".to_owned(),
            q(1.0 / 30.0, 1.0, true),
        ),
        ("organizations".to_owned(), q(20.0, 20.0, false)),
        ("sts".to_owned(), q(50.0, 50.0, false)),
        ("events".to_owned(), q(100.0, 100.0, false)),
        ("cloudformation".to_owned(), q(20.0, 40.0, true)),
    ])
}

impl ProxyConfig {
    pub fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.trim_end_matches('/').to_owned(),
            throttle_rate: 0.0,
            error_rate: 0.0,
            lost_response_rate: 0.0,
            create_account_delay: Duration::ZERO,
            create_account_cap: 5,
            close_account_quota: None,
            close_account_window: thirty_days(),
            quotas: aws_quotas(),
            seed: 1,
        }
    }
}
