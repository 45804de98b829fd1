//! A fault-injecting AWS proxy for tests and benchmarks (`vend dev aws-proxy`). It forwards every
//! request to an emulator (moto) and, in each service's own wire protocol, injects what real AWS does to
//! a fleet: token-bucket quotas, random throttles, random 5xx, lost responses (the call happened, the
//! answer did not arrive), and an asynchronous `CreateAccount` that stays `IN_PROGRESS` for a while with
//! at most 5 in flight and refuses a root e-mail that is already taken. It counts calls per operation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

/// Per-operation counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpStats {
    pub calls: u64,
    /// Throttles from a quota.
    pub quota_throttles: u64,
    /// Random throttles.
    pub injected_throttles: u64,
    pub injected_errors: u64,
    pub lost_responses: u64,
    /// Answered from a script instead of the emulator.
    #[serde(default)]
    pub scripted: u64,
}

/// An answer the proxy gives instead of the emulator's to one call of an operation (see
/// [`Proxy::script`]): how AWS behaves at times and an emulator never does, such as eventual
/// consistency right after a resource is created.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// The service's error, in its wire protocol.
    Error { status: u16, code: String },
    /// A success with this body (JSON-protocol services).
    Json(serde_json::Value),
    /// The call reaches the emulator and takes effect, but its answer is replaced by a 5xx: the
    /// caller cannot know whether it happened.
    LoseResponse,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyStats {
    pub operations: BTreeMap<String, OpStats>,
    pub create_account_max_in_flight: usize,
    /// CreateAccount calls made while the cap was already reached (must stay 0 for a polite client).
    pub create_account_over_cap: u64,
    pub create_account_started: u64,
    pub duplicate_emails_refused: u64,
    /// CloseAccount calls refused over the closure quota.
    #[serde(default)]
    pub close_account_refused: u64,
}

impl ProxyStats {
    pub fn total_calls(&self) -> u64 {
        self.operations.values().map(|o| o.calls).sum()
    }

    pub fn total_throttles(&self) -> u64 {
        self.operations
            .values()
            .map(|o| o.quota_throttles + o.injected_throttles)
            .sum()
    }

    pub fn calls(&self, op: &str) -> u64 {
        self.operations.get(op).map_or(0, |o| o.calls)
    }
}

#[derive(Debug, Clone)]
struct Creation {
    started: Instant,
    /// `Some` for requests the proxy failed itself (a duplicate e-mail).
    failed: Option<String>,
    account_name: String,
    account_id: Option<String>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Inner {
    /// Access key ids and session tokens callers used (tests check that none reaches a log).
    credentials: std::collections::BTreeSet<String>,
    throttle_rate: f64,
    error_rate: f64,
    lost_response_rate: f64,
    stats: ProxyStats,
    buckets: HashMap<String, Bucket>,
    creations: HashMap<String, Creation>,
    /// When each CloseAccount that passed was made (the quota's rolling window).
    closures: Vec<Instant>,
    emails: HashMap<String, String>,
    /// Scripted answers by `service.Operation`, next first.
    scripted: HashMap<String, std::collections::VecDeque<Scripted>>,
    rng: rand::rngs::StdRng,
}

pub struct Proxy {
    config: ProxyConfig,
    inner: Mutex<Inner>,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Json,
    Query,
    RestXml,
    RestJson,
}

fn protocol(service: &str) -> Option<Protocol> {
    match service {
        "organizations" | "events" | "acm" => Some(Protocol::Json),
        "sts" | "iam" | "cloudformation" => Some(Protocol::Query),
        "route53" => Some(Protocol::RestXml),
        "apigateway" => Some(Protocol::RestJson),
        _ => None,
    }
}

/// The SigV4 credential scope names the service; the access key stands for the calling account.
fn caller(headers: &HeaderMap) -> (String, String) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let cred = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split(',').next())
        .unwrap_or("");
    let parts: Vec<&str> = cred.split('/').collect();
    let key = parts.first().copied().unwrap_or("").to_owned();
    let service = parts.get(3).copied().unwrap_or("").to_owned();
    (service, key)
}

fn rest_operation(service: &str, method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let m = method.as_str();
    let name = match (service, m, segs.as_slice()) {
        ("route53", "GET", [_, "hostedzonesbyname"]) => "ListHostedZonesByName",
        ("route53", "POST", [_, "hostedzone"]) => "CreateHostedZone",
        ("route53", "POST", [_, "hostedzone", _, "rrset"]) => "ChangeResourceRecordSets",
        ("route53", "GET", [_, "hostedzone", _, "rrset"]) => "ListResourceRecordSets",
        ("route53", "GET", [_, "change", _]) => "GetChange",
        ("apigateway", "POST", ["domainnames"]) => "CreateDomainName",
        ("apigateway", "GET", ["domainnames"]) => "GetDomainNames",
        ("apigateway", "GET", ["domainnames", _]) => "GetDomainName",
        ("apigateway", "POST", ["domainnames", _, "basepathmappings"]) => "CreateBasePathMapping",
        ("apigateway", "GET", ["domainnames", _, "basepathmappings"]) => "GetBasePathMappings",
        ("apigateway", "GET", ["domainnames", _, "basepathmappings", _]) => "GetBasePathMapping",
        ("apigateway", "PATCH", ["domainnames", _, "basepathmappings", _]) => {
            "UpdateBasePathMapping"
        }
        ("apigateway", _, ["restapis", ..]) => return format!("{m}RestApis"),
        _ => {
            return format!(
                "{m}{}",
                segs.first().map(|s| format!("/{s}")).unwrap_or_default()
            );
        }
    };
    name.to_owned()
}

fn operation(
    service: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> String {
    if let Some(t) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return t.rsplit('.').next().unwrap_or(t).to_owned();
    }
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if form {
        for (k, v) in url::form_urlencoded::parse(body) {
            if k == "Action" {
                return v.into_owned();
            }
        }
    }
    rest_operation(service, method, uri.path())
}

/// An error in the service's own wire protocol.
fn aws_error(
    proto: Protocol,
    service: &str,
    status: u16,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = match proto {
        Protocol::Json => (
            status,
            [("content-type", "application/x-amz-json-1.1")],
            json!({"__type": code, "Message": message}).to_string(),
        )
            .into_response(),
        Protocol::Query | Protocol::RestXml => {
            let ns = match service {
                "route53" => "https://route53.amazonaws.com/doc/2013-04-01/",
                "sts" => "https://sts.amazonaws.com/doc/2011-06-15/",
                "iam" => "https://iam.amazonaws.com/doc/2010-05-08/",
                _ => "http://cloudformation.amazonaws.com/doc/2010-05-15/",
            };
            let kind = if status.is_server_error() {
                "Receiver"
            } else {
                "Sender"
            };
            let body = format!(
                "<ErrorResponse xmlns=\"{ns}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            );
            (status, [("content-type", "text/xml")], body).into_response()
        }
        Protocol::RestJson => (
            status,
            [("content-type", "application/json")],
            json!({"message": message}).to_string(),
        )
            .into_response(),
    };
    let h = resp.headers_mut();
    h.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&request_id).expect("uuid header"),
    );
    if proto == Protocol::RestJson {
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_str(code).expect("code header"),
        );
    }
    if let Some(s) = retry_after {
        h.insert("retry-after", HeaderValue::from(s));
    }
    resp
}

fn throttle(proto: Protocol, service: &str, operation: &str) -> Response {
    match (proto, service) {
        (Protocol::Json, "events") => aws_error(
            proto,
            service,
            400,
            "ThrottlingException",
            "Rate exceeded",
            None,
        ),
        (Protocol::Json, _) => aws_error(
            proto,
            service,
            400,
            "TooManyRequestsException",
            "AWS Organizations can't complete your request because another request is already in progress or the rate is exceeded.",
            None,
        ),
        (Protocol::RestXml, _) if operation == "ChangeResourceRecordSets" => aws_error(
            proto,
            service,
            400,
            "PriorRequestNotComplete",
            "The request was rejected because Route 53 was still processing a prior request.",
            None,
        ),
        (Protocol::Query | Protocol::RestXml, _) => {
            aws_error(proto, service, 400, "Throttling", "Rate exceeded", None)
        }
        (Protocol::RestJson, _) => aws_error(
            proto,
            service,
            429,
            "TooManyRequestsException",
            "Too Many Requests",
            Some(1),
        ),
    }
}

fn server_error(proto: Protocol, service: &str) -> Response {
    match proto {
        Protocol::Json if service == "organizations" => aws_error(
            proto,
            service,
            500,
            "ServiceException",
            "AWS Organizations can't complete your request because of an internal service error.",
            None,
        ),
        Protocol::Json => aws_error(
            proto,
            service,
            500,
            "InternalException",
            "Internal error",
            None,
        ),
        Protocol::Query => aws_error(
            proto,
            service,
            500,
            "InternalFailure",
            "Internal failure",
            None,
        ),
        Protocol::RestXml => aws_error(
            proto,
            service,
            503,
            "ServiceUnavailable",
            "Service unavailable",
            None,
        ),
        Protocol::RestJson => aws_error(
            proto,
            service,
            503,
            "ServiceUnavailableException",
            "Service Unavailable",
            None,
        ),
    }
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Arc<Self> {
        use rand::SeedableRng;
        let rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let (throttle_rate, error_rate, lost_response_rate) = (
            config.throttle_rate,
            config.error_rate,
            config.lost_response_rate,
        );
        Arc::new(Self {
            config,
            inner: Mutex::new(Inner {
                credentials: Default::default(),
                throttle_rate,
                error_rate,
                lost_response_rate,
                stats: ProxyStats::default(),
                buckets: HashMap::new(),
                creations: HashMap::new(),
                closures: Vec::new(),
                emails: HashMap::new(),
                scripted: HashMap::new(),
                rng,
            }),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("an HTTP client"),
        })
    }

    /// Changes the fault rates of a running proxy.
    pub fn set_faults(&self, throttle_rate: f64, error_rate: f64, lost_response_rate: f64) {
        let mut inner = self.inner.lock().expect("proxy lock");
        inner.throttle_rate = throttle_rate;
        inner.error_rate = error_rate;
        inner.lost_response_rate = lost_response_rate;
    }

    /// The next calls of `operation` (`service.Operation`, e.g. `acm.DescribeCertificate`) get these
    /// answers, one each, before quotas and faults apply; later calls go on as usual.
    pub fn script(&self, operation: &str, answers: impl IntoIterator<Item = Scripted>) {
        self.inner
            .lock()
            .expect("proxy lock")
            .scripted
            .entry(operation.to_owned())
            .or_default()
            .extend(answers);
    }

    /// Every access key id and session token a caller has used.
    pub fn seen_credentials(&self) -> Vec<String> {
        self.inner
            .lock()
            .expect("proxy lock")
            .credentials
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets the counters (not the state of CreateAccount requests).
    pub fn reset_stats(&self) {
        self.inner.lock().expect("proxy lock").stats = ProxyStats::default();
    }

    pub fn stats(&self) -> ProxyStats {
        let mut inner = self.inner.lock().expect("proxy lock");
        let now = Instant::now();
        let delay = self.config.create_account_delay;
        inner.stats.create_account_max_in_flight = inner
            .stats
            .create_account_max_in_flight
            .max(in_flight(&inner.creations, now, delay));
        inner.stats.clone()
    }

    /// Serves on `addr` until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let app = axum::Router::new()
            .route("/_proxy/stats", axum::routing::get(stats_handler))
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024))
            .with_state(self);
        axum::serve(listener, app).await
    }

    /// Starts on a free loopback port; returns the address.
    pub async fn spawn(self: &Arc<Self>) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(self.clone().serve(listener));
        Ok(addr)
    }

    /// What becomes of a call before it reaches the emulator: a fault injected, a quota exhausted, or
    /// forwarded (perhaps to have its answer lost). Counts it.
    fn admit(
        &self,
        proto: Protocol,
        service: &str,
        op: &str,
        caller_key: &str,
        headers: &HeaderMap,
    ) -> Verdict {
        let name = format!("{service}.{op}");
        let mut inner = self.inner.lock().expect("proxy lock");
        let inner = &mut *inner;
        if let Some(answer) = inner.scripted.get_mut(&name).and_then(|q| q.pop_front()) {
            let counters = inner.stats.operations.entry(name).or_default();
            counters.calls += 1;
            counters.scripted += 1;
            return Verdict::Answer(match answer {
                Scripted::LoseResponse => {
                    counters.lost_responses += 1;
                    return Verdict::Forward {
                        lose_response: true,
                    };
                }
                Scripted::Error { status, code } => {
                    aws_error(proto, service, status, &code, "scripted by the test", None)
                }
                Scripted::Json(body) => {
                    let content_type = match proto {
                        Protocol::Json => "application/x-amz-json-1.1",
                        _ => "application/json",
                    };
                    (
                        StatusCode::OK,
                        [("content-type", content_type)],
                        body.to_string(),
                    )
                        .into_response()
                }
            });
        }
        if !caller_key.is_empty() {
            inner.credentials.insert(caller_key.to_owned());
        }
        if let Some(t) = headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
        {
            inner.credentials.insert(t.to_owned());
        }
        let (t, e, l) = (
            inner.throttle_rate.clamp(0.0, 1.0),
            inner.error_rate.clamp(0.0, 1.0),
            inner.lost_response_rate.clamp(0.0, 1.0),
        );
        let (throttled, errored, lost) = (
            inner.rng.random_bool(t),
            inner.rng.random_bool(e),
            inner.rng.random_bool(l),
        );
        // A throttled request is turned away before AWS admits it, so it spends none of the quota; a
        // request that fails inside AWS (or whose answer is lost) was admitted and spends it.
        let quota_ok =
            throttled || Proxy::take_token(inner, &self.config.quotas, service, op, caller_key);
        let counters = inner.stats.operations.entry(name).or_default();
        counters.calls += 1;
        if throttled {
            counters.injected_throttles += 1;
            Verdict::Answer(throttle(proto, service, op))
        } else if !quota_ok {
            counters.quota_throttles += 1;
            Verdict::Answer(throttle(proto, service, op))
        } else if errored {
            counters.injected_errors += 1;
            Verdict::Answer(server_error(proto, service))
        } else {
            Verdict::Forward {
                lose_response: lost,
            }
        }
    }

    /// Takes a token for the most specific quota of the call; `false` when the quota is exhausted.
    fn take_token(
        inner: &mut Inner,
        quotas: &BTreeMap<String, Quota>,
        service: &str,
        op: &str,
        caller: &str,
    ) -> bool {
        let full = format!("{service}.{op}");
        let (name, q) = match quotas.get(&full) {
            Some(q) => (full, *q),
            None => match quotas.get(service) {
                Some(q) => (service.to_owned(), *q),
                None => return true,
            },
        };
        let key = if q.per_account {
            format!("{name}@{caller}")
        } else {
            name
        };
        let now = Instant::now();
        let b = inner.buckets.entry(key).or_insert(Bucket {
            tokens: q.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * q.per_second).min(q.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn in_flight(creations: &HashMap<String, Creation>, now: Instant, delay: Duration) -> usize {
    creations
        .values()
        .filter(|c| c.failed.is_none() && now.duration_since(c.started) < delay)
        .count()
}

async fn stats_handler(State(p): State<Arc<Proxy>>) -> axum::Json<ProxyStats> {
    axum::Json(p.stats())
}

enum Verdict {
    Forward { lose_response: bool },
    Answer(Response),
}

async fn handle(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (service, caller_key) = caller(&headers);
    let proto = protocol(&service);
    let op = operation(&service, &method, &uri, &headers, &body);
    let Some(proto) = proto else {
        return forward(&p, &method, &uri, &headers, body).await;
    };
    let name = format!("{service}.{op}");
    let verdict = p.admit(proto, &service, &op, &caller_key, &headers);
    let lose_response = match verdict {
        Verdict::Answer(r) => return r,
        Verdict::Forward { lose_response } => lose_response,
    };
    // AWS finishes a request it has received whatever becomes of the caller's connection, and so does
    // the emulator's bookkeeping: a caller killed mid-call has still started its CreateAccount.
    let resp = {
        let (p, service, op) = (p.clone(), service.clone(), op.clone());
        tokio::spawn(async move {
            if service == "organizations" {
                organizations(&p, &op, &method, &uri, &headers, body).await
            } else {
                forward(&p, &method, &uri, &headers, body).await
            }
        })
        .await
        .unwrap_or_else(|e| {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("proxy: {e}")).into_response()
        })
    };
    if lose_response {
        let mut inner = p.inner.lock().expect("proxy lock");
        inner
            .stats
            .operations
            .get_mut(&name)
            .expect("counted")
            .lost_responses += 1;
        return server_error(proto, &service);
    }
    resp
}

async fn forward(
    p: &Proxy,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    match forward_raw(p, method, uri, headers, body).await {
        Ok((status, h, b)) => rebuild(status, &h, b),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    }
}

async fn forward_raw(
    p: &Proxy,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), reqwest::Error> {
    let url = format!(
        "{}{}",
        p.config.upstream,
        uri.path_and_query().map(|x| x.as_str()).unwrap_or("/")
    );
    let mut req = p.http.request(method.clone(), url).body(body);
    for (k, v) in headers {
        if !matches!(
            k.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            req = req.header(k, v);
        }
    }
    let resp = req.send().await?;
    let status = resp.status();
    let h = resp.headers().clone();
    let b = resp.bytes().await?;
    Ok((status, h, b))
}

fn rebuild(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    for (k, v) in headers {
        if !matches!(
            k.as_str(),
            "content-length" | "connection" | "transfer-encoding" | "date" | "server"
        ) {
            resp.headers_mut().insert(k, v.clone());
        }
    }
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        v.to_string(),
    )
        .into_response()
}

/// Organizations, with the asynchronous, capped, e-mail-unique `CreateAccount` of real AWS: some calls
/// are answered before reaching the emulator, the rest are forwarded and their answers rewritten.
async fn organizations(
    p: &Proxy,
    op: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let delay = p.config.create_account_delay;
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(answer) = answer_locally(p, op, &req) {
        return answer;
    }
    let (status, h, b) = match forward_raw(p, method, uri, headers, body).await {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&b) else {
        return rebuild(status, &h, b);
    };
    let mut inner = p.inner.lock().expect("proxy lock");
    let now = Instant::now();
    let in_progress_id = |inner: &Inner, id: Option<&str>| {
        id.and_then(|id| inner.creations.get(id))
            .is_some_and(|c| now.duration_since(c.started) < delay)
    };
    match op {
        "CreateAccount" => {
            let Some(id) = v["CreateAccountStatus"]["Id"].as_str().map(str::to_owned) else {
                return rebuild(status, &h, b);
            };
            inner.creations.insert(
                id,
                Creation {
                    started: now,
                    failed: None,
                    account_name: req["AccountName"].as_str().unwrap_or("").to_owned(),
                    account_id: v["CreateAccountStatus"]["AccountId"]
                        .as_str()
                        .map(str::to_owned),
                },
            );
            let email = req["Email"].as_str().unwrap_or("").to_ascii_lowercase();
            inner.emails.insert(email, String::new());
            inner.stats.create_account_started += 1;
            let flying = in_flight(&inner.creations, now, delay);
            inner.stats.create_account_max_in_flight =
                inner.stats.create_account_max_in_flight.max(flying);
            if !delay.is_zero() {
                in_progress(&mut v["CreateAccountStatus"]);
            }
        }
        "DescribeCreateAccountStatus" => {
            if in_progress_id(&inner, req["CreateAccountRequestId"].as_str()) {
                in_progress(&mut v["CreateAccountStatus"]);
            } else if !delay.is_zero() {
                // As AWS reports it: completed when the delay was over, not when the emulator acted.
                let s = &mut v["CreateAccountStatus"];
                if let Some(requested) = s["RequestedTimestamp"].as_f64() {
                    s["CompletedTimestamp"] = json!(requested + delay.as_secs_f64());
                }
            }
        }
        "ListCreateAccountStatus" => {
            for s in v["CreateAccountStatuses"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if in_progress_id(&inner, s["Id"].as_str()) {
                    in_progress(s);
                }
            }
        }
        "ListAccounts" => {
            // An account appears in the organization only once its creation succeeded.
            let hidden: Vec<String> = inner
                .creations
                .values()
                .filter(|c| now.duration_since(c.started) < delay)
                .filter_map(|c| c.account_id.clone())
                .collect();
            if let Some(list) = v["Accounts"].as_array_mut() {
                list.retain(|a| {
                    !a["Id"]
                        .as_str()
                        .is_some_and(|id| hidden.iter().any(|h| h == id))
                });
            }
        }
        _ => return rebuild(status, &h, b),
    }
    json_response(status, &v)
}

/// What AWS answers without the emulator: a sixth CreateAccount in progress, a root e-mail already
/// taken (accepted, then failed asynchronously), and the status of such a failed request.
fn answer_locally(p: &Proxy, op: &str, req: &Value) -> Option<Response> {
    let mut inner = p.inner.lock().expect("proxy lock");
    let now = Instant::now();
    match op {
        "CreateAccount" => {
            if in_flight(&inner.creations, now, p.config.create_account_delay)
                >= p.config.create_account_cap
            {
                inner.stats.create_account_over_cap += 1;
                return Some(aws_error(
                    Protocol::Json,
                    "organizations",
                    400,
                    "TooManyRequestsException",
                    "AWS Organizations can't complete your request because another request is already in progress.",
                    None,
                ));
            }
            let email = req["Email"].as_str().unwrap_or("").to_ascii_lowercase();
            if !inner.emails.contains_key(&email) {
                return None;
            }
            inner.stats.duplicate_emails_refused += 1;
            let name = req["AccountName"].as_str().unwrap_or("").to_owned();
            let id = format!("car-{}", uuid::Uuid::new_v4().simple());
            inner.creations.insert(
                id.clone(),
                Creation {
                    started: now,
                    failed: Some("EMAIL_ALREADY_EXISTS".into()),
                    account_name: name.clone(),
                    account_id: None,
                },
            );
            Some(json_response(
                StatusCode::OK,
                &json!({"CreateAccountStatus": {
                "Id": id, "AccountName": name, "State": "IN_PROGRESS", "RequestedTimestamp": epoch_now()}}),
            ))
        }
        "CloseAccount" => {
            let quota = p.config.close_account_quota?;
            let window = p.config.close_account_window;
            inner.closures.retain(|t| now.duration_since(*t) < window);
            if inner.closures.len() < quota {
                inner.closures.push(now);
                return None;
            }
            inner.stats.close_account_refused += 1;
            Some(
                (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/x-amz-json-1.1")],
                    json!({"__type": "ConstraintViolationException",
                           "Message": "You have exceeded close account quota for the past 30 days.",
                           "Reason": "CLOSE_ACCOUNT_QUOTA_EXCEEDED"})
                    .to_string(),
                )
                    .into_response(),
            )
        }
        "DescribeCreateAccountStatus" => {
            let id = req["CreateAccountRequestId"].as_str().unwrap_or("");
            let c = inner.creations.get(id)?;
            let reason = c.failed.as_ref()?;
            Some(json_response(
                StatusCode::OK,
                &json!({"CreateAccountStatus": {
                "Id": id, "AccountName": c.account_name, "State": "FAILED", "FailureReason": reason,
                "RequestedTimestamp": epoch_now(), "CompletedTimestamp": epoch_now()}}),
            ))
        }
        _ => None,
    }
}

fn in_progress(status: &mut Value) {
    if let Some(o) = status.as_object_mut() {
        o.insert("State".into(), json!("IN_PROGRESS"));
        o.remove("AccountId");
        o.remove("CompletedTimestamp");
    }
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_named_per_protocol() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-target",
            "AWSOrganizationsV20161128.CreateAccount".parse().unwrap(),
        );
        assert_eq!(
            operation(
                "organizations",
                &Method::POST,
                &"/".parse().unwrap(),
                &h,
                b""
            ),
            "CreateAccount"
        );
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            operation(
                "sts",
                &Method::POST,
                &"/".parse().unwrap(),
                &h,
                b"Action=AssumeRole&Version=2011-06-15"
            ),
            "AssumeRole"
        );
        let h = HeaderMap::new();
        assert_eq!(
            operation(
                "route53",
                &Method::POST,
                &"/2013-04-01/hostedzone/Z1/rrset/".parse().unwrap(),
                &h,
                b""
            ),
            "ChangeResourceRecordSets"
        );
        assert_eq!(
            operation(
                "apigateway",
                &Method::GET,
                &"/domainnames/a.example/basepathmappings/%28none%29"
                    .parse()
                    .unwrap(),
                &h,
                b""
            ),
            "GetBasePathMapping"
        );
    }

    #[test]
    fn the_caller_comes_from_the_credential_scope() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261123/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=x"
                .parse()
                .unwrap(),
        );
        assert_eq!(caller(&h), ("route53".into(), "AKIDEXAMPLE".into()));
    }

    #[test]
    fn an_injected_throttle_spends_no_quota_but_an_injected_error_does() {
        let p = Proxy::new(ProxyConfig::new("http://127.0.0.1:9"));
        let h = HeaderMap::new();
        let create = |p: &Proxy| {
            p.admit(
                Protocol::RestJson,
                "apigateway",
                "CreateDomainName",
                "AK1",
                &h,
            )
        };
        let forwarded = |v: Verdict| matches!(v, Verdict::Forward { .. });
        // CreateDomainName: one per 30 s per account. Throttled by the fault, the token stays.
        p.set_faults(1.0, 0.0, 0.0);
        assert!(!forwarded(create(&p)));
        p.set_faults(0.0, 0.0, 0.0);
        assert!(
            forwarded(create(&p)),
            "the quota was spent by a throttled call"
        );
        assert!(!forwarded(create(&p)), "a second creation within 30 s");
        // Another account has its own quota; an injected server error was admitted and spends it.
        p.set_faults(0.0, 1.0, 0.0);
        let other = |p: &Proxy| {
            p.admit(
                Protocol::RestJson,
                "apigateway",
                "CreateDomainName",
                "AK2",
                &h,
            )
        };
        assert!(!forwarded(other(&p)));
        p.set_faults(0.0, 0.0, 0.0);
        assert!(
            !forwarded(other(&p)),
            "the failed call did not spend the quota"
        );
        let s = &p.stats().operations["apigateway.CreateDomainName"];
        assert_eq!(
            (
                s.calls,
                s.injected_throttles,
                s.injected_errors,
                s.quota_throttles
            ),
            (5, 1, 1, 2)
        );
    }
}
