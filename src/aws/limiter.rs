//! Rate budgets for AWS calls: a token bucket per key, whose rate adapts AIMD-style — halved when AWS
//! throttles, grown back a little with every success — so a fleet of workers converges on what AWS
//! allows instead of storming it. Keys are the most specific configured of `service.Operation` and
//! `service`, scoped to the account where AWS's limit is per account.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A budget: sustained requests per second and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub per_second: f64,
    pub burst: f64,
    /// Whether the limit is per account (each tenant account has its own bucket).
    pub per_account: bool,
}

impl Budget {
    pub const fn new(per_second: f64, burst: f64, per_account: bool) -> Self {
        Self {
            per_second,
            burst,
            per_account,
        }
    }
}

/// Defaults from AWS's published quotas (AWS-FACTS.md), with headroom for the console and other tools
/// sharing them. Unlisted services get [`FALLBACK`].
pub fn default_budgets() -> HashMap<String, Budget> {
    let mut m = HashMap::new();
    // Organizations publishes no numbers; it throttles bursts of control-plane calls. 10/s org-wide.
    m.insert("organizations".into(), Budget::new(10.0, 10.0, false));
    // Route53: 5 requests/s per account, shared with the console.
    m.insert("route53".into(), Budget::new(4.0, 4.0, false));
    // API Gateway: 10/s (burst 40) per account for the control plane; CreateDomainName 1 per 30 s.
    m.insert("apigateway".into(), Budget::new(8.0, 30.0, true));
    m.insert(
        "apigateway.CreateDomainName".into(),
        Budget::new(1.0 / 30.0, 1.0, true),
    );
    m.insert("cloudformation".into(), Budget::new(8.0, 16.0, true));
    m.insert("sts".into(), Budget::new(20.0, 20.0, false));
    m.insert("eventbridge".into(), Budget::new(40.0, 40.0, false));
    // ACM: 5 RequestCertificate/s per account (Describe and List allow more); one certificate per tenant.
    m.insert("acm".into(), Budget::new(5.0, 5.0, true));
    // EC2 buckets per account and region (describes refill at 20/s); vend's calls in a tenant
    // account share one budget across its regions, which stays under any one region's.
    m.insert("ec2".into(), Budget::new(20.0, 40.0, true));
    // DynamoDB item writes (the pool's tenant table) are data plane: thousands a second per table.
    m.insert("dynamodb".into(), Budget::new(100.0, 200.0, true));
    // Service Quotas allows a few requests a second per account.
    m.insert("service-quotas".into(), Budget::new(5.0, 5.0, true));
    m
}

pub const FALLBACK: Budget = Budget::new(10.0, 10.0, false);

#[derive(Debug)]
struct Bucket {
    max_rate: f64,
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    last_decrease: Option<Instant>,
}

/// Without throttles, a reduced rate climbs back to the full budget over this long, so a bucket that is
/// rarely used (one per tenant account) does not stay collapsed for want of successes.
const RECOVERY: Duration = Duration::from_secs(20);

impl Bucket {
    fn new(b: Budget, now: Instant) -> Self {
        Self {
            max_rate: b.per_second,
            rate: b.per_second,
            burst: b.burst.max(1.0),
            tokens: b.burst.max(1.0),
            refilled: now,
            last_decrease: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.rate < self.max_rate {
            self.rate =
                (self.rate + self.max_rate * dt / RECOVERY.as_secs_f64()).min(self.max_rate);
        }
        self.refilled = now;
    }

    /// How long until a token is free (zero if one is).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// How long until a token is free above a reserve of `floor` tokens (zero if one is).
    fn wait_above(&mut self, now: Instant, floor: f64) -> Duration {
        self.refill(now);
        let floor = floor.min(self.burst - 1.0).max(0.0);
        if self.tokens >= floor + 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((floor + 1.0 - self.tokens) / self.rate)
        }
    }

    /// Takes a token, going into debt if none is left; returns how long the caller must wait for it.
    fn reserve(&mut self, now: Instant) -> Duration {
        let wait = self.wait(now);
        self.tokens -= 1.0;
        wait
    }
}

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `f` as background work (drift checks, reconciliation sweeps): its calls spend only the spare
/// part of each budget, never the half of the burst kept for the tenants being vended, and wait for it
/// as long as it takes rather than fail. A sweep over thousands of tenants thus never delays a
/// `DescribeCreateAccountStatus` that holds one of the five CreateAccount slots.
pub async fn in_background<F: Future>(f: F) -> F::Output {
    BACKGROUND.scope((), f).await
}

fn is_background() -> bool {
    BACKGROUND.try_with(|()| ()).is_ok()
}

/// The limiter of one vend process. Budgets that AWS counts organization- or account-wide for the
/// management account are split evenly between the live replicas ([`Limiter::set_replicas`]), so
/// any number of replicas together stays within one budget. Per-tenant-account budgets are not split:
/// a tenant has one step running at a time, so one replica at a time acts in its account.
#[derive(Debug)]
pub struct Limiter {
    budgets: HashMap<String, Budget>,
    buckets: Mutex<HashMap<String, Bucket>>,
    replicas: std::sync::atomic::AtomicUsize,
}

/// Shrink to this fraction of the budget at most: AWS throttling is bursty, never stop altogether.
const MIN_FRACTION: f64 = 0.05;
/// At most one decrease per this window, so a burst of throttles from one moment counts once.
const DECREASE_WINDOW: Duration = Duration::from_millis(500);

impl Limiter {
    pub fn new(budgets: HashMap<String, Budget>) -> Self {
        Self {
            budgets,
            buckets: Mutex::new(HashMap::new()),
            replicas: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// `n` replicas share the management account's budgets from now on: each gets `1/n` of the
    /// rate and of the burst (at least one call).
    pub fn set_replicas(&self, n: usize) {
        let n = n.max(1);
        let before = self.replicas.swap(n, std::sync::atomic::Ordering::Relaxed);
        if before == n {
            return;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        for (key, b) in buckets.iter_mut() {
            let budget = self.budget_of_key(key);
            if budget.per_account {
                continue;
            }
            b.refill(now);
            let fraction = b.rate / b.max_rate;
            b.max_rate = budget.per_second / n as f64;
            b.rate = b.max_rate * fraction;
            b.burst = (budget.burst / n as f64).max(1.0);
            b.tokens = b.tokens.min(b.burst);
        }
    }

    pub fn replicas(&self) -> usize {
        self.replicas.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn budget_of_key(&self, key: &str) -> Budget {
        let name = key.split('@').next().unwrap_or(key);
        self.budgets.get(name).copied().unwrap_or(FALLBACK)
    }

    /// The budget a new bucket of `budget` starts with in this process.
    fn share_of(&self, budget: Budget) -> Budget {
        if budget.per_account {
            return budget;
        }
        let n = self.replicas() as f64;
        Budget::new(budget.per_second / n, (budget.burst / n).max(1.0), false)
    }

    /// The bucket key and budget for an operation (`service.Operation`) in `account`.
    fn resolve(&self, operation: &str, account: Option<&str>) -> (String, Budget) {
        let service = operation.split('.').next().unwrap_or(operation);
        let (name, budget) = match self.budgets.get(operation) {
            Some(b) => (operation, *b),
            None => (
                service,
                self.budgets.get(service).copied().unwrap_or(FALLBACK),
            ),
        };
        let key = match (budget.per_account, account) {
            (true, Some(a)) => format!("{name}@{a}"),
            _ => name.to_owned(),
        };
        (key, budget)
    }

    /// Waits until the budget allows one more call, if that is at most `max_wait` away. A longer
    /// wait is not taken (and no token reserved): `Err` says how long, so the caller can give the
    /// wait to a durable timer instead of holding a worker.
    pub async fn acquire(
        &self,
        operation: &str,
        account: Option<&str>,
        max_wait: Duration,
    ) -> Result<(), Duration> {
        if is_background() {
            self.acquire_spare(operation, account).await;
            return Ok(());
        }
        let wait = self.with_bucket(operation, account, |bucket, now| {
            let wait = bucket.wait(now);
            if wait > max_wait {
                return Err(wait);
            }
            Ok(bucket.reserve(now))
        })?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Waits until a token is free above the half of the burst kept for foreground calls, then takes it
    /// (never going into debt, so foreground callers find the reserve intact).
    async fn acquire_spare(&self, operation: &str, account: Option<&str>) {
        loop {
            let wait = self.with_bucket(operation, account, |bucket, now| {
                let wait = bucket.wait_above(now, bucket.burst / 2.0);
                if wait.is_zero() {
                    bucket.tokens -= 1.0;
                }
                wait
            });
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs `f` on the bucket of this call's budget (made at its full burst the first time), under the
    /// limiter's lock.
    fn with_bucket<R>(
        &self,
        operation: &str,
        account: Option<&str>,
        f: impl FnOnce(&mut Bucket, Instant) -> R,
    ) -> R {
        let (key, budget) = self.resolve(operation, account);
        let budget = self.share_of(budget);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let bucket = buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(budget, now));
        f(bucket, now)
    }

    /// AWS throttled a call: halve the rate (multiplicative decrease).
    pub fn throttled(&self, operation: &str, account: Option<&str>) {
        let (key, budget) = self.resolve(operation, account);
        let budget = self.share_of(budget);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let b = buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(budget, now));
        if b.last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_WINDOW)
        {
            return;
        }
        b.refill(now);
        b.rate = (b.rate / 2.0).max(b.max_rate * MIN_FRACTION);
        b.tokens = b.tokens.min(0.0);
        b.last_decrease = Some(now);
    }

    /// A call went through: grow the rate back (additive increase, a twentieth of the budget).
    pub fn succeeded(&self, operation: &str, account: Option<&str>) {
        let (key, _) = self.resolve(operation, account);
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if let Some(b) = buckets.get_mut(&key)
            && b.rate < b.max_rate
        {
            b.rate = (b.rate + b.max_rate / 20.0).min(b.max_rate);
        }
    }

    /// The current rate of a key, for metrics and tests.
    pub fn current_rate(&self, operation: &str, account: Option<&str>) -> f64 {
        let (key, budget) = self.resolve(operation, account);
        let budget = self.share_of(budget);
        let buckets = self.buckets.lock().expect("limiter lock");
        buckets.get(&key).map_or(budget.per_second, |b| b.rate)
    }
}

/// Parses `VEND_AWS_RATE_LIMITS`: a JSON object of key → requests per second, or
/// `{"per_second": .., "burst": .., "per_account": ..}`; keys are `service` or `service.Operation`.
pub fn parse_overrides(json: &str, into: &mut HashMap<String, Budget>) -> Result<(), String> {
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|_| "must be a JSON object of budgets".to_string())?;
    for (k, spec) in v {
        let base = into
            .get(&k)
            .or_else(|| into.get(k.split('.').next().unwrap_or(&k)))
            .copied()
            .unwrap_or(FALLBACK);
        let b = match spec {
            serde_json::Value::Number(n) => {
                let r = n.as_f64().unwrap_or(0.0);
                Budget::new(r, r.max(1.0), base.per_account)
            }
            serde_json::Value::Object(o) => {
                let r = o
                    .get("per_second")
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(base.per_second);
                Budget::new(
                    r,
                    o.get("burst")
                        .and_then(serde_json::Value::as_f64)
                        .unwrap_or(r.max(1.0)),
                    o.get("per_account")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(base.per_account),
                )
            }
            _ => return Err(format!("{k}: a budget is a number or an object")),
        };
        if !(b.per_second > 0.0 && b.per_second.is_finite()) {
            return Err(format!(
                "{k}: the rate must be a positive number of requests per second"
            ));
        }
        into.insert(k, b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn limiter() -> Limiter {
        let mut b = default_budgets();
        b.insert("svc".into(), Budget::new(10.0, 2.0, false));
        b.insert("acct".into(), Budget::new(1.0, 1.0, true));
        Limiter::new(b)
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_split_the_management_budgets_but_not_the_tenant_accounts() {
        let l = limiter();
        l.acquire("svc.Op", None, Duration::ZERO).await.unwrap();
        l.acquire("acct.Op", Some("111"), Duration::ZERO)
            .await
            .unwrap();
        l.set_replicas(4);
        assert_eq!(l.current_rate("svc.Op", None), 2.5);
        assert_eq!(l.current_rate("other.Op", None), FALLBACK.per_second / 4.0);
        assert_eq!(l.current_rate("acct.Op", Some("111")), 1.0);
        // Four replicas, each within its share, make at most the whole budget's calls in a second
        // after the burst (one call each here).
        let mut calls = 0;
        let start = Instant::now();
        while Instant::now() - start < Duration::from_secs(10) {
            l.acquire("svc.Op", None, Duration::from_secs(5))
                .await
                .unwrap();
            calls += 1;
        }
        assert!((25..=27).contains(&calls), "{calls} calls in 10 s at 2.5/s");
        l.set_replicas(1);
        assert_eq!(l.current_rate("svc.Op", None), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn background_calls_leave_half_the_burst_to_foreground_calls() {
        let mut b = default_budgets();
        b.insert("svc".into(), Budget::new(10.0, 10.0, false));
        let l = Arc::new(Limiter::new(b));
        // A sweep that would take every token runs in the background for a second.
        let sweep = {
            let l = l.clone();
            tokio::spawn(in_background(async move {
                let mut calls = 0u32;
                let start = Instant::now();
                while Instant::now() - start < Duration::from_secs(1) {
                    l.acquire("svc.Op", None, Duration::ZERO).await.unwrap();
                    calls += 1;
                }
                calls
            }))
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Meanwhile a burst of foreground calls finds its reserve: five at once, with no wait.
        for _ in 0..5 {
            l.acquire("svc.Op", None, Duration::ZERO).await.unwrap();
        }
        let background = sweep.await.unwrap();
        // The sweep got the rest: its half of the burst plus the refill, less the foreground's share.
        assert!(
            (8..=12).contains(&background),
            "{background} background calls in 1 s"
        );
    }

    #[test]
    fn operation_budgets_win_over_service_budgets_and_accounts_get_their_own() {
        let l = limiter();
        assert_eq!(
            l.resolve("apigateway.CreateDomainName", Some("1")).0,
            "apigateway.CreateDomainName@1"
        );
        assert_eq!(
            l.resolve("apigateway.GetDomainName", Some("1")).0,
            "apigateway@1"
        );
        assert_eq!(
            l.resolve("route53.ChangeResourceRecordSets", Some("1")).0,
            "route53"
        );
        assert_eq!(l.resolve("unknown.Op", None).1, FALLBACK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_paces_at_its_rate() {
        let l = limiter();
        let start = tokio::time::Instant::now();
        for _ in 0..12 {
            l.acquire("svc.Op", None, Duration::from_secs(5))
                .await
                .unwrap();
        }
        // 2 at once, then 10 more at 10/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_allowed_is_refused_with_its_length() {
        let l = limiter();
        // acct: 1/s, burst 1, per account.
        l.acquire("acct.Op", Some("a"), Duration::ZERO)
            .await
            .unwrap();
        let e = l
            .acquire("acct.Op", Some("a"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            e > Duration::from_millis(900) && e <= Duration::from_secs(1),
            "{e:?}"
        );
        // Another account has its own bucket.
        l.acquire("acct.Op", Some("b"), Duration::ZERO)
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_rate_recovers_with_time_alone() {
        let l = limiter();
        l.acquire_now("svc.Op");
        l.throttled("svc.Op", None);
        assert_eq!(l.current_rate("svc.Op", None), 5.0);
        tokio::time::advance(RECOVERY).await;
        l.acquire("svc.Op", None, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(l.current_rate("svc.Op", None), 10.0);
    }

    #[test]
    fn throttling_halves_the_rate_once_per_window_and_success_restores_it() {
        let l = limiter();
        l.acquire_now("svc.Op");
        l.throttled("svc.Op", None);
        l.throttled("svc.Op", None); // same window: ignored
        assert_eq!(l.current_rate("svc.Op", None), 5.0);
        for _ in 0..10 {
            l.succeeded("svc.Op", None);
        }
        assert_eq!(l.current_rate("svc.Op", None), 10.0);
    }

    #[test]
    fn the_rate_never_drops_below_its_floor() {
        let l = limiter();
        l.acquire_now("svc.Op");
        for _ in 0..50 {
            // Step out of the decrease window each time.
            {
                let mut b = l.buckets.lock().unwrap();
                b.get_mut("svc").unwrap().last_decrease = None;
            }
            l.throttled("svc.Op", None);
        }
        assert_eq!(l.current_rate("svc.Op", None), 10.0 * MIN_FRACTION);
    }

    #[test]
    fn overrides_parse_numbers_and_objects() {
        let mut b = default_budgets();
        parse_overrides(
            r#"{"route53": 2, "apigateway.CreateDomainName": {"per_second": 0.1}}"#,
            &mut b,
        )
        .unwrap();
        assert_eq!(b["route53"].per_second, 2.0);
        assert!(b["apigateway.CreateDomainName"].per_account);
        assert!(parse_overrides(r#"{"route53": -1}"#, &mut b).is_err());
        assert!(parse_overrides("[]", &mut b).is_err());
    }

    impl Limiter {
        fn acquire_now(&self, op: &str) {
            let (key, budget) = self.resolve(op, None);
            let now = Instant::now();
            self.buckets
                .lock()
                .unwrap()
                .entry(key)
                .or_insert_with(|| Bucket::new(budget, now))
                .reserve(now);
        }
    }
}
