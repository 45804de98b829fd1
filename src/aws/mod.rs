//! AWS adapters: one module per service, speaking in vend's terms rather than SDK types. Every call goes
//! through [`Aws::call`], which counts it and classifies its errors into the engine's throttled /
//! transient / permanent classes.
//!
//! The SDK gets a small retry budget (2 attempts: one quick retry of a dropped connection); every other
//! retry is durable, in the engine, under the step's policy. The two multiply, so keeping the SDK's part
//! small is what bounds the calls per step.

pub mod account;
pub mod accounts;
pub mod acm;
pub mod apigateway;
pub mod classify;
pub mod cloudformation;
pub mod dynamodb;
pub mod ec2;
pub mod eventbridge;
pub mod identity_center;
pub mod limiter;
pub mod organizations;
pub mod route53;
pub mod service_quotas;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::domain::{ErrorClass, StepError};
use crate::telemetry::{AwsLabels, Metrics};

pub use classify::AwsError;
pub use limiter::Limiter;

/// SDK attempts per call (the first included).
pub const SDK_MAX_ATTEMPTS: u32 = 2;
/// The longest an AWS call waits in process for its rate budget; longer waits become durable timers.
pub const MAX_BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Upper bound of one AWS call including the SDK's retry; shorter than a lease, so a worker that lost
/// its lease cannot still be inside a call long after another worker took over.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(40);

/// Loads the SDK configuration from the standard environment (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// credentials chain) with vend's retry and timeout budget.
pub async fn load_sdk_config() -> Result<SdkConfig, String> {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(SDK_MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(20))
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        return Err("AWS_REGION: is required (the region vend works in, e.g. us-east-1)".into());
    }
    if config.credentials_provider().is_none() {
        return Err("AWS credentials: none found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile or role)".into());
    }
    Ok(config)
}

/// SDK attempts per call of the management reconcile: nothing waits on it but readiness, and one failed
/// call would otherwise restart a pass of a dozen calls, which at a fleet's fault rates rarely all pass.
pub const RECONCILE_MAX_ATTEMPTS: u32 = 6;

/// `sdk` with the reconcile's retry budget: more attempts per call, backing off up to 10 s each (the
/// SDK's standard mode, whose client-side retry quota keeps a storm from multiplying).
pub fn patient(sdk: &SdkConfig) -> SdkConfig {
    sdk.to_builder()
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(RECONCILE_MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(500))
                .with_max_backoff(Duration::from_secs(10)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(20))
                .operation_timeout(Duration::from_secs(120))
                .build(),
        )
        .build()
}

/// A view of AWS shared by the adapters: the SDK configuration, the rate budgets, and the account the
/// calls are made in (`None` for the management account).
#[derive(Clone)]
pub struct Aws {
    pub sdk: SdkConfig,
    metrics: Arc<Metrics>,
    limiter: Arc<Limiter>,
    account: Option<Arc<str>>,
}

impl Aws {
    /// The management account's view, with the default budgets.
    pub fn new(sdk: SdkConfig, metrics: Arc<Metrics>) -> Self {
        Self::with_limiter(
            sdk,
            metrics,
            Arc::new(Limiter::new(limiter::default_budgets())),
        )
    }

    pub fn with_limiter(sdk: SdkConfig, metrics: Arc<Metrics>, limiter: Arc<Limiter>) -> Self {
        Self {
            sdk,
            metrics,
            limiter,
            account: None,
        }
    }

    /// The same budgets, acting inside `account` with `sdk` (credentials of an assumed role there).
    pub fn in_account(&self, account: &str, sdk: SdkConfig) -> Self {
        Self {
            sdk,
            metrics: self.metrics.clone(),
            limiter: self.limiter.clone(),
            account: Some(account.into()),
        }
    }

    /// The same principal and budgets, calling `region`'s endpoints (a tenant's data residency).
    pub fn in_region(&self, region: &str) -> Self {
        let sdk = self
            .sdk
            .to_builder()
            .region(aws_config::Region::new(region.to_owned()))
            .build();
        Self {
            sdk,
            ..self.clone()
        }
    }

    /// The same principal, account and budgets with the reconcile's patient retries: for a sweep of
    /// many calls that nothing waits on, where restarting the attempt would repeat them all.
    pub fn patient(&self) -> Self {
        Self {
            sdk: patient(&self.sdk),
            ..self.clone()
        }
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Runs one AWS operation within its rate budget: counts it, turns its error into an [`AwsError`],
    /// and feeds the outcome back to the budget (a throttle halves it, a success grows it back).
    pub async fn call<T, E, F>(&self, operation: &'static str, fut: F) -> Result<T, AwsError>
    where
        F: Future<Output = Result<T, E>>,
        E: Into<AwsError>,
    {
        let account = self.account.as_deref();
        if let Err(wait) = self
            .limiter
            .acquire(operation, account, MAX_BUDGET_WAIT)
            .await
        {
            // Over budget for longer than a worker should sit idle: give the wait to the engine's
            // durable timer (a throttle spends no attempt).
            let mut e = AwsError::new(
                ErrorClass::Throttled,
                "RateBudget",
                format!(
                    "{operation}: vend's rate budget allows the next call in {} ms",
                    wait.as_millis()
                ),
            );
            e.retry_after = Some(wait);
            e.operation = operation;
            return Err(e);
        }
        self.metrics
            .aws_calls
            .get_or_create(&AwsLabels {
                operation: operation.to_owned(),
            })
            .inc();
        match fut.await {
            Ok(v) => {
                self.limiter.succeeded(operation, account);
                Ok(v)
            }
            Err(e) => {
                let e: AwsError = e.into();
                let e = e.during(operation);
                if e.class == ErrorClass::Throttled {
                    self.limiter.throttled(operation, account);
                    self.metrics.throttled(operation);
                }
                tracing::debug!(aws.operation = operation, error.code = %e.code, error.class = e.class.as_str(), "AWS call failed");
                Err(e)
            }
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl From<AwsError> for StepError {
    fn from(e: AwsError) -> Self {
        let mut s = StepError::new(e.class, e.code, e.message);
        s.retry_after = e.retry_after;
        s.request_id = e.request_id;
        s
    }
}
