//! A fault-injecting AWS proxy for tests and benchmarks (the `vend-aws-proxy` binary, or in process). It forwards every
//! request to an emulator (moto) and, in each service's own wire protocol, injects what real AWS does to
//! a fleet: token-bucket quotas, random throttles, random 5xx, lost responses (the call happened, the
//! answer did not arrive), and an asynchronous `CreateAccount` that stays `IN_PROGRESS` for a while with
//! at most 5 in flight and refuses a root e-mail that is already taken. It counts calls per operation.

mod config;
mod organizations;
mod stats;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::RngExt;

pub use config::{ProxyConfig, Quota, aws_quotas};
pub use stats::{OpStats, ProxyStats};

use organizations::{Creation, in_flight};
use wire::{Protocol, aws_error, caller, operation, protocol, server_error, throttle};

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
                organizations::call(&p, &op, &method, &uri, &headers, body).await
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

#[cfg(test)]
mod tests {
    use super::*;

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
