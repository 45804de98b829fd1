//! The test harness: a real Postgres per test, the real HTTP router on a loopback socket, real engines.

pub mod browser;
pub mod localstack;
pub mod moto;
pub mod postgres;
pub mod serve;
pub mod steps;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use vend::config::OpsTokens;
use vend::domain::{Workflow, Workflows};
use vend::engine::dispatcher::{Dispatcher, DispatcherConfig, WebhookEndpoint};
use vend::engine::{Engine, EngineConfig, Registry};
use vend::http::{self, AppState};
use vend::standard_webhooks::Secret;
use vend::telemetry::Metrics;

pub const OPS_TOKEN: &str = "test-ops-token-0123456789";
/// Named `alice`, with read and write.
pub const ALICE_TOKEN: &str = "test-alice-token-0123456789";
/// Named `reader`, read only.
pub const READ_TOKEN: &str = "test-read-token-0123456789";
/// Named `prometheus`, metrics only.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";

/// The ops tokens every test app accepts: `OPS_TOKEN` as `VEND_OPS_TOKEN` gives it, and named ones.
pub fn ops_tokens() -> OpsTokens {
    use vend::config::{OpsToken, Scope};
    OpsTokens::from_tokens(vec![
        OpsToken::new("ops", OPS_TOKEN, &Scope::ALL),
        OpsToken::new("alice", ALICE_TOKEN, &[Scope::Read, Scope::Write]),
        OpsToken::new("reader", READ_TOKEN, &[Scope::Read]),
        OpsToken::new("prometheus", METRICS_TOKEN, &[Scope::Metrics]),
    ])
}
pub const SIGNUP_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A workflow of test step kinds; `steps` are `(name, kind)` pairs, policies fast for tests.
pub fn workflow_toml(steps: &[(&str, &str)], extra: &str) -> String {
    let mut s = String::from(
        r#"name = "test"
tiers = ["free", "pro", "enterprise"]
[defaults]
poll_interval = "50ms"
[defaults.retry]
initial_interval = "20ms"
backoff_coefficient = 2.0
maximum_interval = "100ms"
maximum_attempts = 4
jitter = "none"
"#,
    );
    for (name, kind) in steps {
        s.push_str(&format!(
            "[[steps]]\nname = \"{name}\"\nkind = \"{kind}\"\n"
        ));
    }
    s.push_str(extra);
    s
}

pub fn workflows(toml: &str, registry: &Registry) -> Arc<Workflows> {
    workflows_with_kinds(toml, &registry.kinds())
}

fn workflows_with_kinds(toml: &str, kinds: &BTreeSet<String>) -> Arc<Workflows> {
    workflows_with_pool_edit(toml, kinds, &|pool| pool)
}

fn workflows_with_pool_edit(
    toml: &str,
    kinds: &BTreeSet<String>,
    pool_edit: &dyn Fn(String) -> String,
) -> Arc<Workflows> {
    let kinds = kinds.clone();
    let main = Workflow::parse(toml, &kinds).expect("test workflow parses");
    let pooled = !main.tiers.contains(&vend::domain::Tier::Free);
    let mut all = vec![main];
    if pooled {
        for name in ["pool", "plan", "upgrade", "downgrade"] {
            let text = fast_shipped(name);
            let text = if name == "pool" {
                pool_edit(text)
            } else {
                text
            };
            if let Ok(w) = Workflow::parse(&text, &kinds) {
                all.push(w);
            }
        }
    }
    if kinds.contains("grace_period") {
        all.push(Workflow::parse(&fast_offboard_toml(), &kinds).expect("offboard workflow parses"));
    }
    if kinds.contains("update_stack") {
        all.push(Workflow::parse(&fast_rollout_toml(), &kinds).expect("rollout workflow parses"));
    }
    Arc::new(Workflows::new(all).unwrap())
}

/// The shipped rollout workflow at test speed.
pub fn fast_rollout_toml() -> String {
    std::fs::read_to_string(postgres::repo_root().join("workflows/rollout.toml"))
        .unwrap()
        .replace("poll_interval = \"10s\"", "poll_interval = \"50ms\"")
        .replace("initial_interval = \"2s\"", "initial_interval = \"20ms\"")
        .replace("maximum_interval = \"5m\"", "maximum_interval = \"100ms\"")
}

/// A shipped workflow (`workflows/<name>.toml`) at test speed.
pub fn fast_shipped(name: &str) -> String {
    std::fs::read_to_string(postgres::repo_root().join(format!("workflows/{name}.toml")))
        .unwrap()
        .replace("poll_interval = \"10s\"", "poll_interval = \"50ms\"")
        .replace("initial_interval = \"2s\"", "initial_interval = \"20ms\"")
        .replace("initial_interval = \"5s\"", "initial_interval = \"20ms\"")
        .replace("initial_interval = \"30s\"", "initial_interval = \"20ms\"")
        .replace("maximum_interval = \"5m\"", "maximum_interval = \"100ms\"")
        .replace("maximum_interval = \"2m\"", "maximum_interval = \"100ms\"")
}

/// The workflows a test app with `toml` runs, as the steps' registry needs them (every step kind
/// this build has).
pub fn workflows_for(toml: &str) -> Arc<Workflows> {
    let mut kinds = vend::app::known_kinds(&Registry::new());
    kinds.extend(["grace_period", "update_stack"].map(String::from));
    workflows_with_kinds(toml, &kinds)
}

/// As [`workflows_for`], with the shipped pool workflow's text passed through `pool_edit`.
pub fn workflows_with_pool(toml: &str, pool_edit: impl Fn(String) -> String) -> Arc<Workflows> {
    let mut kinds = vend::app::known_kinds(&Registry::new());
    kinds.extend(["grace_period", "update_stack"].map(String::from));
    workflows_with_pool_edit(toml, &kinds, &pool_edit)
}

/// The silo workflow at test speed serving enterprise only: free and pro go to the pool.
pub fn fast_enterprise_toml() -> String {
    fast_silo_toml().replace(
        "tiers = [\"free\", \"pro\", \"enterprise\"]",
        "tiers = [\"enterprise\"]",
    )
}

/// The shipped offboard workflow at test speed (moto finishes everything at once).
pub fn fast_offboard_toml() -> String {
    std::fs::read_to_string(postgres::repo_root().join("workflows/offboard.toml"))
        .unwrap()
        .replace("poll_interval = \"10s\"", "poll_interval = \"50ms\"")
        .replace("initial_interval = \"2s\"", "initial_interval = \"20ms\"")
        .replace("maximum_interval = \"5m\"", "maximum_interval = \"100ms\"")
}

pub struct TestApp {
    pub pool: PgPool,
    pub base: String,
    pub http: reqwest::Client,
    pub workflows: Arc<Workflows>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// A copy of templates/ the app's rollouts read (a test may change it).
    pub templates: Arc<tempfile::TempDir>,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The API over a fresh database, with `registry` and the workflow `toml` (no engine running yet).
pub async fn spawn_app(registry: Registry, toml: &str) -> TestApp {
    let (pool, _) = postgres::fresh_database().await;
    spawn_app_on(pool, registry, toml).await
}

/// The silo workflow with test-speed polling and backoff (moto finishes everything at once).
pub fn fast_silo_toml() -> String {
    let steps: Vec<(&str, &str)> = vend::steps::SILO_KINDS.iter().map(|k| (*k, *k)).collect();
    workflow_toml(&steps, "").replace("maximum_attempts = 4", "maximum_attempts = 10")
}

/// A test app whose registry has the real silo steps against a fresh moto: the management account is
/// prepared (organization, hosted zone) and reconciled as `vend serve` would at start.
pub async fn spawn_silo(
    moto_url: &str,
    tune: impl FnOnce(&mut vend::config::AwsSettings),
    orgs: Option<Arc<dyn vend::aws::organizations::Organizations>>,
) -> (TestApp, vend::app::AwsRuntime) {
    let sdk = moto::sdk(moto_url).await;
    spawn_silo_with(sdk, orgs, tune, &fast_silo_toml()).await
}

/// As [`spawn_silo`], with any SDK configuration and workflow.
pub async fn spawn_silo_with(
    sdk: aws_config::SdkConfig,
    orgs: Option<Arc<dyn vend::aws::organizations::Organizations>>,
    tune: impl FnOnce(&mut vend::config::AwsSettings),
    toml: &str,
) -> (TestApp, vend::app::AwsRuntime) {
    let (pool, _) = postgres::fresh_database().await;
    let mut settings = silo_settings();
    tune(&mut settings);
    let metrics = Metrics::new();
    let rt = vend::app::AwsRuntime::start(settings, sdk, pool.clone(), metrics, orgs)
        .await
        .expect("the management account reconciles");
    let registry = vend::steps::registry(rt.silo.clone(), workflows_for(toml));
    let app = spawn_app_on(pool, registry, toml).await;
    (app, rt)
}

pub fn silo_settings() -> vend::config::AwsSettings {
    let root = postgres::repo_root();
    let mut s = vend::config::AwsSettings::new(moto::BASE_DOMAIN, moto::CERTIFICATE_ARN);
    s.scp_dir = root.join("scp-policies");
    s.templates_dir = root.join("templates");
    s.tenant_regions = vec![moto::OTHER_REGION.into()];
    s
}

async fn spawn_app_on(pool: PgPool, registry: Registry, toml: &str) -> TestApp {
    spawn_app_with_limits(pool, registry, toml, Default::default(), Default::default()).await
}

/// As [`spawn_silo`], with offboarded tenants restorable for `grace` (`VEND_OFFBOARD_GRACE`).
pub async fn spawn_silo_graced(
    moto_url: &str,
    tune: impl FnOnce(&mut vend::config::AwsSettings),
    grace: Duration,
) -> (TestApp, vend::app::AwsRuntime) {
    spawn_silo_graced_with(moto_url, tune, grace, &fast_silo_toml()).await
}

/// As [`spawn_silo_graced`], with the workflow `toml`.
pub async fn spawn_silo_graced_with(
    moto_url: &str,
    tune: impl FnOnce(&mut vend::config::AwsSettings),
    grace: Duration,
    toml: &str,
) -> (TestApp, vend::app::AwsRuntime) {
    let sdk = moto::sdk(moto_url).await;
    let (pool, _) = postgres::fresh_database().await;
    let mut settings = silo_settings();
    tune(&mut settings);
    let rt = vend::app::AwsRuntime::start(settings, sdk, pool.clone(), Metrics::new(), None)
        .await
        .expect("the management account reconciles");
    let registry = vend::steps::registry(rt.silo.clone(), workflows_for(toml));
    let app = spawn_app_full(
        pool,
        registry,
        toml,
        Default::default(),
        Default::default(),
        grace,
    )
    .await;
    (app, rt)
}

/// The app served as `vend serve` serves it, with the given connection and request limits.
pub async fn spawn_app_with_limits(
    pool: PgPool,
    registry: Registry,
    toml: &str,
    limits: vend::http::server::Limits,
    request_limits: vend::http::RequestLimits,
) -> TestApp {
    spawn_app_full(pool, registry, toml, limits, request_limits, Duration::ZERO).await
}

async fn spawn_app_full(
    pool: PgPool,
    registry: Registry,
    toml: &str,
    limits: vend::http::server::Limits,
    request_limits: vend::http::RequestLimits,
    offboard_grace: Duration,
) -> TestApp {
    let workflows = workflows(toml, &registry);
    let templates = Arc::new(tempfile::tempdir().unwrap());
    for f in ["baseline.yaml", "tenant-stack.yaml", "pool-stack.yaml"] {
        std::fs::copy(
            postgres::repo_root().join("templates").join(f),
            templates.path().join(f),
        )
        .unwrap();
    }
    let metrics = Metrics::new();
    let state = AppState {
        pool: pool.clone(),
        intake: vend::lifecycle::signup::Intake::new(pool.clone()),
        workflows: workflows.clone(),
        signup_secret: Secret::parse(SIGNUP_SECRET).unwrap(),
        ops_tokens: ops_tokens(),
        slug_rules: Arc::new(vend::domain::SlugRules::new(
            &["globex-reserved".to_owned()],
            Some(silo_settings().naming()),
        )),
        metrics: metrics.clone(),
        readiness: vend::readiness::Readiness::ready(),
        nudges: vend::http::Nudges::new(&pool),
        offboard_grace,
        regions: vend::domain::Regions {
            allowed: vec![moto::REGION.into(), moto::OTHER_REGION.into()],
            default: Some(moto::REGION.into()),
        },
        templates_dir: templates.path().to_owned(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(http::server::serve(
        listener,
        http::router_with(state, request_limits),
        limits,
        stop,
        Duration::from_secs(1),
    ));
    TestApp {
        pool,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        workflows,
        registry,
        metrics,
        templates,
        shutdown,
    }
}

pub fn signup_body(slug: &str) -> Value {
    json!({"slug": slug, "name": format!("{slug} Corp"), "owner_email": format!("ops@{slug}.example"), "tier": "enterprise"})
}

pub fn sign(id: &str, ts: i64, body: &[u8]) -> String {
    Secret::parse(SIGNUP_SECRET).unwrap().sign(id, ts, body)
}

impl TestApp {
    pub fn engine_config(&self, worker: &str) -> EngineConfig {
        EngineConfig {
            worker_id: worker.into(),
            concurrency: 16,
            lease: Duration::from_secs(5),
            poll_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(5),
            ..EngineConfig::default()
        }
    }

    pub fn engine(&self, config: EngineConfig) -> Arc<Engine> {
        Engine::new(
            self.pool.clone(),
            self.workflows.clone(),
            self.registry.clone(),
            config,
            self.metrics.clone(),
        )
    }

    /// An engine of a vend restarted with other workflows (and so other steps).
    pub fn start_engine_with(
        &self,
        workflows: Arc<Workflows>,
        registry: Registry,
        config: EngineConfig,
    ) -> EngineHandle {
        let engine = Engine::new(
            self.pool.clone(),
            workflows,
            registry,
            config,
            self.metrics.clone(),
        );
        let token = CancellationToken::new();
        let task = tokio::spawn(engine.run(token.clone()));
        EngineHandle { token, task }
    }

    /// Runs an engine in the background until the returned guard is dropped (which aborts it, like a
    /// crash) or cancelled.
    pub fn start_engine(&self, config: EngineConfig) -> EngineHandle {
        let engine = self.engine(config);
        let token = CancellationToken::new();
        let task = tokio::spawn(engine.run(token.clone()));
        EngineHandle { token, task }
    }

    pub fn dispatcher(
        &self,
        webhooks: Vec<WebhookEndpoint>,
        schedule: Vec<Duration>,
    ) -> Arc<Dispatcher> {
        self.dispatcher_with_bus(webhooks, schedule, None)
    }

    pub fn dispatcher_with_bus(
        &self,
        webhooks: Vec<WebhookEndpoint>,
        schedule: Vec<Duration>,
        bus: Option<Arc<dyn vend::engine::dispatcher::EventBus>>,
    ) -> Arc<Dispatcher> {
        Dispatcher::new(
            self.pool.clone(),
            DispatcherConfig {
                webhooks,
                bus,
                retry_schedule: schedule,
                timeout: Duration::from_secs(5),
                lease: Duration::from_secs(10),
                poll_interval: Duration::from_millis(50),
                batch: 50,
                allow_loopback: true,
                include_owner_email: false,
            },
            self.metrics.clone(),
        )
    }

    /// Posts a correctly signed signup with a fresh webhook-id.
    pub async fn signup(&self, body: &Value) -> reqwest::Response {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        self.signup_with_id(&id, body).await
    }

    pub async fn signup_with_id(&self, id: &str, body: &Value) -> reqwest::Response {
        self.signed_post("/v1/signup", id, body).await
    }

    /// Posts `body` to the signed webhook at `path` (signup, offboard) with the webhook-id `id`.
    pub async fn signed_post(&self, path: &str, id: &str, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        let ts = chrono::Utc::now().timestamp();
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(id, ts, &raw))
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    pub async fn ops(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(OPS_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// `GET /v1/tenants?{query}`: the page's slugs and its next cursor.
    pub async fn tenants_page(&self, query: &str) -> (Vec<String>, Option<String>) {
        let r = self
            .ops(reqwest::Method::GET, &format!("/v1/tenants?{query}"), None)
            .await;
        assert_eq!(r.status(), 200, "{query}");
        let v: Value = r.json().await.unwrap();
        let slugs = v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["slug"].as_str().unwrap().to_owned())
            .collect();
        (slugs, v["next_cursor"].as_str().map(str::to_owned))
    }

    pub async fn tenant(&self, slug: &str) -> Value {
        let r = self
            .ops(reqwest::Method::GET, &format!("/v1/tenants/{slug}"), None)
            .await;
        assert_eq!(r.status(), 200, "GET tenant {slug}");
        r.json().await.unwrap()
    }

    pub async fn history(&self, slug: &str) -> Vec<Value> {
        let r = self
            .ops(
                reqwest::Method::GET,
                &format!("/v1/tenants/{slug}/history"),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["history"].as_array().unwrap().clone()
    }

    /// Requeues `slug` from `step` through the ops API and waits until it is active or failed again.
    pub async fn requeue_and_settle(&self, slug: &str, step: &str, within: Duration) -> Value {
        let r = self
            .ops(
                reqwest::Method::POST,
                &format!("/v1/tenants/{slug}/requeue"),
                Some(json!({"from_step": step})),
            )
            .await;
        assert_eq!(r.status(), 200, "requeue {slug} from {step}");
        self.wait_for_state(slug, &["active", "failed"], within)
            .await
    }

    /// Waits until the tenant is in one of `states`; panics with its detail after `within`.
    pub async fn wait_for_state(&self, slug: &str, states: &[&str], within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let t = self.tenant(slug).await;
            if states.contains(&t["state"].as_str().unwrap_or("")) {
                return t;
            }
            if tokio::time::Instant::now() > deadline {
                let h: Vec<String> = self
                    .history(slug)
                    .await
                    .iter()
                    .map(|e| format!("{} {} {} {}", e["at"], e["kind"], e["step"], e["message"]))
                    .collect();
                let all: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
                    "SELECT t.slug, t.state, s.name, s.state, s.last_error FROM tenants t JOIN runs r ON r.tenant_id = t.id
                     JOIN steps s ON s.run_id = r.id WHERE s.state NOT IN ('succeeded') AND s.started_at IS NOT NULL ORDER BY t.slug",
                )
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
                let slots: Vec<(String, bool)> = sqlx::query_as(
                    "SELECT t.slug, c.finished_at IS NOT NULL FROM account_creations c JOIN tenants t ON t.id = c.tenant_id",
                )
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
                panic!(
                    "tenant {slug} did not reach {states:?} within {within:?}: {t:#}\nhistory:\n{}\nunfinished steps: {all:#?}\nslots: {slots:?}",
                    h.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Row counts of every table a signup writes, to prove an error stored nothing.
    pub async fn footprint(&self) -> Vec<i64> {
        let mut v = Vec::new();
        for t in [
            "tenants",
            "runs",
            "steps",
            "history",
            "events",
            "deliveries",
            "signup_requests",
        ] {
            v.push(self.count(t).await);
        }
        v
    }
}

pub struct EngineHandle {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl EngineHandle {
    /// Graceful stop: in-flight attempts finish.
    pub async fn stop(mut self) {
        self.token.cancel();
        let _ = (&mut self.task).await;
    }

    /// Crash: every attempt in flight is dropped where it stands.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
