//! Crashes, replicas and database outages, with real `vend serve` processes against moto behind the
//! fault proxy (CreateAccount takes a while, so kills land in every phase).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use serde_json::Value;
use vend_aws_proxy::{Proxy, ProxyConfig};

use crate::support::moto::{self, assert_exactly_one_of_everything};
use crate::support::serve::{self, Receiver, Served};
use crate::support::{OPS_TOKEN, postgres, sign, signup_body};

const WITHIN: Duration = Duration::from_secs(240);

struct World {
    _moto: moto::Moto,
    moto_sdk: aws_config::SdkConfig,
    proxy: Arc<Proxy>,
    proxy_url: String,
    workflows: tempfile::TempDir,
    logs: tempfile::TempDir,
}

async fn world(create_delay: Duration) -> World {
    let moto = moto::start().await;
    let moto_sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&moto_sdk).await;
    let mut config = ProxyConfig::new(&moto.url);
    config.create_account_delay = create_delay;
    let proxy = Proxy::new(config);
    let addr = proxy.spawn().await.unwrap();
    World {
        _moto: moto,
        moto_sdk,
        proxy,
        proxy_url: format!("http://{addr}"),
        workflows: serve::fast_workflows(),
        logs: tempfile::tempdir().unwrap(),
    }
}

async fn post_signup(base: &str, slug: &str) -> u16 {
    let body = serde_json::to_vec(&signup_body(slug)).unwrap();
    let id = format!("msg_{slug}");
    let ts = chrono::Utc::now().timestamp();
    reqwest::Client::new()
        .post(format!("{base}/v1/signup"))
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sign(&id, ts, &body))
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn states(pool: &sqlx::PgPool) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>("SELECT slug, state FROM tenants")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

async fn wait_all_active(pool: &sqlx::PgPool, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = states(pool).await;
        if s.len() == n && s.values().all(|v| v == "active") {
            return;
        }
        assert!(!s.values().any(|v| v == "failed"), "a tenant failed: {s:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all active in time: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every event in the outbox reached the receiver, signed, with the stable `msg_<event id>`; a
/// redelivered event carried the same bytes.
async fn assert_every_event_delivered(pool: &sqlx::PgPool, receiver: &Receiver) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let events: Vec<uuid::Uuid> = loop {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM events")
            .fetch_all(pool)
            .await
            .unwrap();
        let got: BTreeSet<String> = receiver
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.webhook_id.clone())
            .collect();
        let missing = ids
            .iter()
            .filter(|id| !got.contains(&vend::engine::dispatcher::webhook_id(**id)))
            .count();
        if missing == 0 {
            break ids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} events never delivered",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = receiver.got.lock().unwrap().clone();
    let known: BTreeSet<String> = events
        .iter()
        .map(|id| vend::engine::dispatcher::webhook_id(*id))
        .collect();
    let mut bodies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for d in &got {
        assert!(
            d.signature_ok,
            "a delivery was not signed with the endpoint's secret"
        );
        assert!(
            known.contains(&d.webhook_id),
            "a webhook-id that is no event: {}",
            d.webhook_id
        );
        if let Some(first) = bodies.get(&d.webhook_id) {
            assert_eq!(
                first, &d.body,
                "a redelivery of {} changed its body",
                d.webhook_id
            );
        } else {
            bodies.insert(d.webhook_id.clone(), d.body.clone());
        }
    }
}

#[tokio::test]
async fn killing_vend_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let w = world(Duration::from_millis(1500)).await;
    let receiver = serve::receiver(3).await;
    let (pool, db_url) = postgres::fresh_database().await;
    let env = serve::env(
        &db_url,
        &w.proxy_url,
        w.workflows.path(),
        Some(&receiver.url),
    );
    let listen = Served::free_listen();
    let log = w.logs.path().join("vend.log");
    let mut vend = Served::start(&env, &listen, &log).await;

    let slugs: Vec<String> = (0..6).map(|i| format!("crash-{i}")).collect();
    for s in &slugs {
        assert_eq!(post_signup(&vend.url, s).await, 202);
    }
    let seed: u64 = rand::random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        vend.kill().await;
        vend = Served::start(&env, &listen, &log).await;
    }
    wait_all_active(&pool, slugs.len(), WITHIN).await;
    assert_exactly_one_of_everything(&w.moto_sdk, &slugs).await;
    assert_every_event_delivered(&pool, &receiver).await;
    let stats = w.proxy.stats();
    assert_eq!(
        stats.create_account_started,
        slugs.len() as u64,
        "one CreateAccount per tenant"
    );
    assert_eq!(stats.create_account_over_cap, 0);
    vend.kill().await;
}

#[tokio::test]
async fn killing_vend_during_offboarding_closes_each_account_once_and_leaves_nothing() {
    let w = world(Duration::from_millis(300)).await;
    let (pool, db_url) = postgres::fresh_database().await;
    let mut env = serve::env(&db_url, &w.proxy_url, w.workflows.path(), None);
    env.push(("VEND_OFFBOARD_GRACE".into(), "0s".into()));
    let listen = Served::free_listen();
    let log = w.logs.path().join("vend.log");
    let mut vend = Served::start(&env, &listen, &log).await;
    let slugs: Vec<String> = (0..4).map(|i| format!("leave-{i}")).collect();
    for s in &slugs {
        assert_eq!(post_signup(&vend.url, s).await, 202);
    }
    wait_all_active(&pool, slugs.len(), WITHIN).await;
    let accounts: BTreeMap<String, String> =
        sqlx::query_as("SELECT slug, resources->>'account_id' FROM tenants ORDER BY slug")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let client = reqwest::Client::new();
    for s in &slugs {
        let r = client
            .post(format!("{}/v1/tenants/{s}/offboard", vend.url))
            .bearer_auth(OPS_TOKEN)
            .json(&serde_json::json!({"reason": "kill test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let seed: u64 = rand::random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..800))).await;
        vend.kill().await;
        vend = Served::start(&env, &listen, &log).await;
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let s = states(&pool).await;
        if s.values().all(|v| v == "closed") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all closed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (slug, account) in &accounts {
        let left = crate::offboard::remains(&w.moto_sdk, slug, account).await;
        assert!(
            !left.record && !left.domain && !left.stack && left.account_status == "SUSPENDED",
            "{slug}: {left:?}"
        );
    }
    let closures: i64 = sqlx::query_scalar("SELECT count(*) FROM account_closures")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(closures, slugs.len() as i64, "one closure per tenant");
    let calls = w.proxy.stats().operations["organizations.CloseAccount"].calls;
    assert!(
        (slugs.len() as u64..=2 * slugs.len() as u64).contains(&calls),
        "{calls} CloseAccount calls for {} tenants",
        slugs.len()
    );
    vend.kill().await;
}

#[tokio::test]
async fn killing_vend_during_a_rollout_updates_every_tenant_once_and_completes_it() {
    let w = world(Duration::from_millis(100)).await;
    let (pool, db_url) = postgres::fresh_database().await;
    let templates = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(postgres::repo_root().join("templates")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, templates.path().join(f.file_name().unwrap())).unwrap();
    }
    let mut env = serve::env(&db_url, &w.proxy_url, w.workflows.path(), None);
    env.retain(|(k, _)| k != "VEND_TEMPLATES_DIR");
    env.push((
        "VEND_TEMPLATES_DIR".into(),
        templates.path().display().to_string(),
    ));
    let listen = Served::free_listen();
    let log = w.logs.path().join("vend.log");
    let mut vend = Served::start(&env, &listen, &log).await;
    let slugs: Vec<String> = (0..6).map(|i| format!("roll-{i}")).collect();
    for s in &slugs {
        assert_eq!(post_signup(&vend.url, s).await, 202);
    }
    wait_all_active(&pool, slugs.len(), WITHIN).await;
    let file = templates.path().join("tenant-stack.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!(
            "{}\n  RolloutMarker:\n    Value: survives-kills\n",
            original.trim_end()
        ),
    )
    .unwrap();
    w.proxy.reset_stats();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/rollouts", vend.url))
        .bearer_auth(OPS_TOKEN)
        .json(&serde_json::json!({"stack": "tenant", "canary": 1, "wave_size": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let seed: u64 = rand::random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2500))).await;
        vend.kill().await;
        vend = Served::start(&env, &listen, &log).await;
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    let done = loop {
        let r: Value = reqwest::Client::new()
            .get(format!("{}/v1/rollouts/{id}", vend.url))
            .bearer_auth(OPS_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["state"] == "completed" {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        done["tenants"],
        serde_json::json!({"total": 6, "updated": 6, "failed": 0, "pending": 0}),
        "{done:#}"
    );
    // One update run per tenant, whatever the kills did to its attempts.
    let runs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t.slug, count(*) FROM runs r JOIN tenants t ON t.id = r.tenant_id
         WHERE r.workflow = 'rollout' GROUP BY t.slug ORDER BY t.slug",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), slugs.len());
    assert!(runs.iter().all(|(_, n)| *n == 1), "{runs:?}");
    let accounts: Vec<(String, String, String)> =
        sqlx::query_as("SELECT slug, state, resources->>'account_id' FROM tenants ORDER BY slug")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (slug, state, account) in &accounts {
        assert_eq!(state, "active", "{slug}");
        let body = moto::stack_template(&w.moto_sdk, account, "vend-tenant").await;
        assert!(
            body.contains("survives-kills"),
            "{slug} runs the old template"
        );
    }
    // Each update is a change set, executed; one asked for again after a kill finds it made or run
    // already: at most one more ExecuteChangeSet per tenant, never a second stack.
    let updates = w.proxy.stats().calls("cloudformation.ExecuteChangeSet");
    assert!(
        (slugs.len() as u64..=2 * slugs.len() as u64).contains(&updates),
        "{updates} ExecuteChangeSet calls for {} tenants",
        slugs.len()
    );
    assert_eq!(w.proxy.stats().calls("cloudformation.CreateStack"), 0);
    vend.kill().await;
}

/// tenant, fencing token, start and end of an attempt.
type Attempt = (
    uuid::Uuid,
    i64,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

/// Per tenant, the executions of its steps (one per lease token, stored when it ended with the time it
/// started; a crashed worker's by whoever took its step over) never overlap in time.
async fn assert_no_overlapping_attempts(pool: &sqlx::PgPool) {
    let rows: Vec<Attempt> = sqlx::query_as(
        "SELECT tenant_id, lease_token, started_at, at FROM history
         WHERE lease_token IS NOT NULL AND started_at IS NOT NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    type Span = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);
    let mut spans: BTreeMap<uuid::Uuid, BTreeMap<i64, Span>> = BTreeMap::new();
    for (tenant, token, started, ended) in rows {
        let previous = spans
            .entry(tenant)
            .or_default()
            .insert(token, (started, ended));
        assert!(previous.is_none(), "attempt {token} was stored twice");
    }
    let mut checked = 0;
    for (tenant, by_token) in spans {
        let mut list: Vec<Span> = by_token.into_values().collect();
        list.sort_by_key(|s| s.0);
        for pair in list.windows(2) {
            let (end, next) = (pair[0].1, pair[1].0);
            assert!(
                next >= end,
                "tenant {tenant}: an execution started at {next} before the previous ended at {end}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "too few executions to prove anything ({checked})"
    );
}

#[tokio::test]
async fn three_replicas_share_the_work_never_overlap_and_survive_losing_one() {
    let w = world(Duration::from_millis(800)).await;
    let (pool, db_url) = postgres::fresh_database().await;
    let env = serve::env(&db_url, &w.proxy_url, w.workflows.path(), None);
    let mut replicas = Vec::new();
    for i in 0..3 {
        let mut e = env.clone();
        e.push(("VEND_WORKER_ID".into(), format!("replica-{i}")));
        let log = w.logs.path().join(format!("replica-{i}.log"));
        replicas.push(Served::start(&e, &Served::free_listen(), &log).await);
    }
    let slugs: Vec<String> = (0..12).map(|i| format!("rep-{i}")).collect();
    for (i, s) in slugs.iter().enumerate() {
        assert_eq!(post_signup(&replicas[i % 3].url, s).await, 202);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = replicas.remove(1);
    victim.kill().await;
    wait_all_active(&pool, slugs.len(), WITHIN).await;
    assert_exactly_one_of_everything(&w.moto_sdk, &slugs).await;
    assert_no_overlapping_attempts(&pool).await;
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT actor FROM history WHERE started_at IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(actors.len() >= 2, "the work was not shared: {actors:?}");
    // The replicas split the management account's budgets: together they stayed within AWS's quotas.
    let over_quota: Vec<(String, u64)> = w
        .proxy
        .stats()
        .operations
        .iter()
        .filter(|(_, o)| o.quota_throttles > 0)
        .map(|(op, o)| (op.clone(), o.quota_throttles))
        .collect();
    assert!(over_quota.is_empty(), "AWS quotas exceeded: {over_quota:?}");
    for r in replicas {
        r.kill().await;
    }
}

#[tokio::test]
async fn a_database_outage_is_reported_waited_out_and_recovered_from() {
    let w = world(Duration::from_millis(1000)).await;
    // A cluster of its own: this test stops it.
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = dir.path().join("pg");
    let port = postgres::free_port();
    let script = postgres::repo_root().join("scripts/pg");
    let pg = |cmd: &'static str| {
        let script = script.clone();
        let pg_dir = pg_dir.clone();
        async move {
            let out = tokio::process::Command::new(&script)
                .args([cmd, pg_dir.to_str().unwrap(), &port.to_string()])
                .env("VEND_PG_UNSAFE_FAST", "1")
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "scripts/pg {cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    pg("start").await;
    postgres::on_exit(&format!("{} stop {}", script.display(), pg_dir.display()));
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE vend")
        .execute(&mut c)
        .await
        .unwrap();
    drop(c);
    let db_url = format!("postgres://postgres@127.0.0.1:{port}/vend");

    let env = serve::env(&db_url, &w.proxy_url, w.workflows.path(), None);
    let log = w.logs.path().join("vend.log");
    let mut vend = Served::start(&env, &Served::free_listen(), &log).await;
    let slugs: Vec<String> = (0..4).map(|i| format!("outage-{i}")).collect();
    for s in &slugs {
        assert_eq!(post_signup(&vend.url, s).await, 202);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    pg("stop").await;
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{}/readyz", vend.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable");
    let signup = post_signup(&vend.url, "during-outage").await;
    assert_eq!(
        signup, 503,
        "a signup during the outage is refused, retryably"
    );
    let warnings_before = count_claim_warnings(&log);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warnings = count_claim_warnings(&log) - warnings_before;
    // Backing off doubles up to 5 s: a spinning loop would log hundreds of times in 5 s.
    assert!(
        warnings <= 12,
        "{warnings} failed claims in 5 s: the workers spin"
    );
    assert!(vend.is_running(), "vend serve died with its database");
    pg("start").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{}/readyz", vend.url))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    wait_all_active(&pool, slugs.len(), WITHIN).await;
    assert_exactly_one_of_everything(&w.moto_sdk, &slugs).await;
    // Requests work again.
    let r = http
        .get(format!("{}/v1/tenants", vend.url))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    vend.kill().await;
}

fn count_claim_warnings(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("could not claim steps"))
        .count()
}

#[tokio::test]
async fn start_up_outlasts_an_aws_that_throttles_from_the_first_request() {
    let w = world(Duration::from_millis(300)).await;
    // Every AWS answer throttled before vend sends its first request.
    w.proxy.set_faults(1.0, 0.0, 0.0);
    let (pool, db_url) = postgres::fresh_database().await;
    let env = serve::env(&db_url, &w.proxy_url, w.workflows.path(), None);
    let listen = Served::free_listen();
    let log = w.logs.path().join("vend.log");
    let mut vend = Served::start_until(&env, &listen, &log, "/healthz").await;
    let http = reqwest::Client::new();

    // Not ready, and it says why; signups are taken all the same.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = http
        .get(format!("{}/readyz", vend.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "starting", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("management account"), "{message}");
    assert_eq!(post_signup(&vend.url, "early").await, 202);
    // Once a call has spent its retries, the reason names what AWS answered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let body: Value = http
            .get(format!("{}/readyz", vend.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if message.contains("TooManyRequests") || message.contains("Throttl") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{message}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(vend.is_running(), "vend serve exited on throttling");

    // AWS as a fleet sees it: 30 % throttled, 5 % failing. Start-up completes and the tenant is vended.
    w.proxy.set_faults(0.30, 0.05, 0.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while http
        .get(format!("{}/readyz", vend.url))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_all_active(&pool, 1, WITHIN).await;
    assert_exactly_one_of_everything(&w.moto_sdk, &["early".to_owned()]).await;
    // The throttles it absorbed are on record for the fleet page, by service (written every 5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let orgs: Option<i64> = sqlx::query_scalar(
            "SELECT sum(throttles)::bigint FROM aws_throttles WHERE service = 'organizations'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if orgs.unwrap_or(0) > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no organizations throttle recorded"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    vend.kill().await;
}
