//! Tier changes against moto: pro <-> free moves a key between usage plans; an upgrade builds the
//! tenant's account and switches its record to it in one change; a downgrade puts it back in the pool
//! and closes the account after the grace period. The tenant stays `active` and its name resolves to
//! a live target at every point, watched from outside while the change runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_config::SdkConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::pool::{record_target, table_item, tenant_keys};
use crate::support::moto::{self, BASE_DOMAIN};
use crate::support::{
    TestApp, fast_enterprise_toml, signup_body, spawn_silo_graced_with, spawn_silo_with,
};

const WITHIN: Duration = Duration::from_secs(120);

fn pooled(slug: &str, tier: &str) -> Value {
    let mut b = signup_body(slug);
    b["tier"] = json!(tier);
    b
}

async fn pool_account(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT state->>'account_id' FROM pool")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn pool_target(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT state->>'domain_target' FROM pool")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Waits until the tenant's tier reads `tier` and no change is under way (its run finished).
async fn settled_at(app: &TestApp, slug: &str, tier: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        // The run first, then the tenant: a run that ends in between is seen with its end state.
        let run_done: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM runs r JOIN tenants t ON t.id = r.tenant_id
             WHERE t.slug = $1 AND r.state = 'running')",
        )
        .bind(slug)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let t = app.tenant(slug).await;
        let failed: Option<String> = sqlx::query_scalar(
            "SELECT s.name FROM steps s JOIN runs r ON r.id = s.run_id JOIN tenants t ON t.id = r.tenant_id
             WHERE t.slug = $1 AND s.state = 'failed' AND r.state <> 'cancelled' LIMIT 1",
        )
        .bind(slug)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        assert!(
            failed.is_none(),
            "step {failed:?} failed: {t:#}\n{:#?}",
            app.history(slug).await
        );
        if t["tier"] == tier && run_done {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{slug} did not settle at {tier}: {t:#}\n{:#?}",
            app.history(slug).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches `slug` from outside until stopped: its state must read `active` and its record must
/// point somewhere at every look. Returns the distinct targets seen, in order.
fn watch(
    app: &TestApp,
    sdk: &SdkConfig,
    slug: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, sdk, slug) = (stop.clone(), sdk.clone(), slug.to_owned());
    let (http, base) = (app.http.clone(), app.base.clone());
    let handle = tokio::spawn(async move {
        let mut seen: Vec<String> = Vec::new();
        while !stop2.load(Ordering::SeqCst) {
            let t: Value = http
                .get(format!("{base}/v1/tenants/{slug}"))
                .bearer_auth(crate::support::OPS_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(t["state"], "active", "{t:#}");
            let target = record_target(&sdk, &slug)
                .await
                .unwrap_or_else(|| panic!("{slug} did not resolve while its tier changed"));
            if seen.last() != Some(&target) {
                seen.push(target);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    (stop, handle)
}

async fn change(app: &TestApp, slug: &str, tier: &str) -> reqwest::Response {
    app.ops(
        Method::POST,
        &format!("/v1/tenants/{slug}/tier"),
        Some(json!({"tier": tier})),
    )
    .await
}

async fn events_of(app: &TestApp, slug: &str, kind: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT e.payload FROM events e JOIN tenants t ON t.id = e.tenant_id
         WHERE t.slug = $1 AND e.type = $2 ORDER BY e.created_at",
    )
    .bind(slug)
    .bind(kind)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The usage plan names the key is on, in the pool account.
async fn plans_of_key(inside: &SdkConfig, key: &str) -> Vec<String> {
    let gw = aws_sdk_apigateway::Client::new(inside);
    let mut out = Vec::new();
    for p in gw.get_usage_plans().send().await.unwrap().items() {
        let keys = gw
            .get_usage_plan_keys()
            .usage_plan_id(p.id().unwrap())
            .send()
            .await
            .unwrap();
        if keys.items().iter().any(|k| k.id() == Some(key)) {
            out.push(p.name().unwrap().to_owned());
        }
    }
    out
}

#[tokio::test]
async fn a_pool_tenant_changes_plan_upgrades_and_downgrades_while_reachable() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) =
        spawn_silo_graced_with(&moto.url, |_| {}, Duration::ZERO, &fast_enterprise_toml()).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    app.signup(&pooled("pam", "pro")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("pam", &["active"], WITHIN).await;
    let inside = moto::sdk_in(&sdk, &pool_account(&app).await).await;
    let key = tenant_keys(&inside, "pam").await.remove(0);
    assert_eq!(plans_of_key(&inside, &key).await, ["vend-pool-pro"]);

    // Bad requests change nothing.
    let r = change(&app, "pam", "gold").await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_tier"
    );
    assert_eq!(change(&app, "nobody", "free").await.status(), 404);
    assert_eq!(
        change(&app, "pam", "pro").await.status(),
        200,
        "already pro"
    );

    // pro -> free: the same key, on the free plan only; no DNS change.
    let target = pool_target(&app).await;
    let (stop, seen) = watch(&app, &sdk, "pam");
    // From the CLI, as ops run it: a bad tier is refused with the API's reason, then the move.
    let o = crate::cli::vend(&app, &["tenants", "tier", "pam", "gold"]).await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("tier"), "{o:?}");
    let o = crate::cli::vend(&app, &["tenants", "tier", "pam", "free"]).await;
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("moving pam to free"),
        "{o:?}"
    );
    assert_eq!(change(&app, "pam", "free").await.status(), 200, "under way");
    assert_eq!(
        change(&app, "pam", "enterprise").await.status(),
        409,
        "another change under way"
    );
    let t = settled_at(&app, "pam", "free").await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(seen.await.unwrap(), std::slice::from_ref(&target));
    assert_eq!(t["account_id"], Value::Null);
    assert_eq!(
        tenant_keys(&inside, "pam").await,
        std::slice::from_ref(&key)
    );
    assert_eq!(plans_of_key(&inside, &key).await, ["vend-pool-free"]);
    assert_eq!(table_item(&inside, "pam").await.as_deref(), Some("free"));
    let changed = events_of(&app, "pam", "tenant.tier.changed").await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["tier"], json!({"from": "pro", "to": "free"}));
    assert_eq!(changed[0]["tenant"]["tier"], "free");

    // free -> enterprise: an account of its own; the record moves from the pool to it in one change.
    let accounts_before = org.list_accounts().send().await.unwrap().accounts().len();
    let (stop, seen) = watch(&app, &sdk, "pam");
    assert_eq!(change(&app, "pam", "enterprise").await.status(), 202);
    let t = settled_at(&app, "pam", "enterprise").await;
    stop.store(true, Ordering::SeqCst);
    let account = t["account_id"].as_str().expect("an account").to_owned();
    let own = moto::sdk_in(&sdk, &account).await;
    let silo_target = aws_sdk_apigateway::Client::new(&own)
        .get_domain_name()
        .domain_name(format!("pam.{BASE_DOMAIN}"))
        .send()
        .await
        .unwrap()
        .regional_domain_name()
        .unwrap()
        .to_owned();
    assert_eq!(seen.await.unwrap(), [target.clone(), silo_target.clone()]);
    assert_eq!(
        org.list_accounts().send().await.unwrap().accounts().len(),
        accounts_before + 1
    );
    assert!(
        tenant_keys(&inside, "pam").await.is_empty(),
        "its key left the pool"
    );
    assert_eq!(table_item(&inside, "pam").await, None);
    assert_eq!(t["endpoint"], format!("https://pam.{BASE_DOMAIN}"));
    let workflow: String = sqlx::query_scalar("SELECT workflow FROM tenants WHERE slug = 'pam'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Served by the silo workflow from now on (fleet rollouts and drift checks include it).
    assert_eq!(
        workflow,
        app.workflows.for_tier(vend::domain::Tier::Enterprise).name
    );

    // enterprise -> pro through the signed webhook: back in the pool, and the account it left is
    // closed (grace 0 here). A repeat of the message gets the first answer and changes nothing.
    let (stop, seen) = watch(&app, &sdk, "pam");
    let body = json!({"slug": "pam", "tier": "pro"});
    let first = app.signed_post("/v1/tier", "msg-down", &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["tenant"]["slug"], "pam");
    let again = app.signed_post("/v1/tier", "msg-down", &body).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let bad = app
        .signed_post(
            "/v1/tier",
            "msg-bad",
            &json!({"slug": "pam", "tier": "gold"}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let t = settled_at(&app, "pam", "pro").await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(seen.await.unwrap(), [silo_target, target.clone()]);
    assert_eq!(t["account_id"], Value::Null, "{t:#}");
    let status = moto::account_status(&sdk, &account).await;
    assert!(
        ["SUSPENDED", "PENDING_CLOSURE"].contains(&status.as_str()),
        "{status}"
    );
    let keys = tenant_keys(&inside, "pam").await;
    assert_eq!(keys.len(), 1);
    assert_eq!(plans_of_key(&inside, &keys[0]).await, ["vend-pool-pro"]);
    assert_eq!(table_item(&inside, "pam").await.as_deref(), Some("pro"));
    assert_eq!(events_of(&app, "pam", "tenant.tier.changed").await.len(), 3);
    assert_eq!(
        events_of(&app, "pam", "tenant.tier.completed").await.len(),
        3
    );
    let retired = &t["resources"]["retired_accounts"];
    assert_eq!(retired[0]["account_id"], account.as_str(), "{t:#}");

    // Its closed account keeps its e-mail at AWS for 90 days: no new account of its own until then.
    let r = change(&app, "pam", "enterprise").await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "account_retiring", "{e:#}");
    assert_eq!(app.tenant("pam").await["tier"], "pro");
    engine.stop().await;
}

#[tokio::test]
async fn a_failed_upgrade_leaves_the_tenant_in_the_pool_and_goes_on_when_retried() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    // An account someone made with the name and e-mail gus's own would get (not tagged for it).
    let settings = crate::support::silo_settings();
    let foreign = moto::create_account(
        &sdk,
        &settings.account_email("gus"),
        &settings.account_name("gus"),
    )
    .await;
    let (app, _rt) = spawn_silo_with(sdk.clone(), None, |_| {}, &fast_enterprise_toml()).await;
    app.signup(&pooled("gus", "free")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("gus", &["active"], WITHIN).await;
    let target = pool_target(&app).await;

    assert_eq!(change(&app, "gus", "enterprise").await.status(), 202);
    let deadline = tokio::time::Instant::now() + WITHIN;
    let t = loop {
        let t = app.tenant("gus").await;
        if t["steps"][0]["state"] == "failed" {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "{t:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Still the pool's, active and served there; the failure is visible and names the conflict.
    assert_eq!(t["state"], "active");
    assert_eq!(t["tier"], "free");
    assert_eq!(t["steps"][0]["name"], "create_account");
    assert!(t.to_string().contains("AccountConflict"), "{t:#}");
    assert_eq!(
        record_target(&sdk, "gus").await.as_deref(),
        Some(target.as_str())
    );
    let inside = moto::sdk_in(&sdk, &pool_account(&app).await).await;
    assert_eq!(tenant_keys(&inside, "gus").await.len(), 1);
    // The failed change is still the tenant's change: another one waits for it.
    assert_eq!(change(&app, "gus", "pro").await.status(), 409);

    // Ops resolve it (here: the account is gus's after all) and retry: the change goes on.
    org.tag_resource()
        .resource_id(&foreign)
        .tags(
            aws_sdk_organizations::types::Tag::builder()
                .key("vend:tenant")
                .value("gus")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let r = app.ops(Method::POST, "/v1/tenants/gus/retry", None).await;
    assert_eq!(r.status(), 200);
    let t = settled_at(&app, "gus", "enterprise").await;
    assert_eq!(t["account_id"], foreign.as_str());
    assert!(tenant_keys(&inside, "gus").await.is_empty());
    engine.stop().await;
}

#[tokio::test]
async fn an_offboarded_pool_tenant_can_be_restored_and_otherwise_leaves_the_pool() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo_graced_with(
        &moto.url,
        |_| {},
        Duration::from_secs(10),
        &fast_enterprise_toml(),
    )
    .await;
    app.signup(&pooled("olga", "free")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("olga", &["active"], WITHIN).await;
    let target = pool_target(&app).await;
    let inside = moto::sdk_in(&sdk, &pool_account(&app).await).await;
    let offboard = || async {
        let r = app
            .ops(Method::POST, "/v1/tenants/olga/offboard", Some(json!({})))
            .await;
        assert_eq!(r.status(), 202);
    };

    // Offboarded: its name stops resolving at once; restored within the grace period: back.
    offboard().await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while record_target(&sdk, "olga").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "olga's record stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While darken_endpoint's attempt still holds its lease, a restore is refused as busy: again.
    loop {
        let r = app
            .ops(Method::POST, "/v1/tenants/olga/restore", None)
            .await;
        if r.status() == 200 {
            break;
        }
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "step_running", "{e:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_for_state("olga", &["active"], WITHIN).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while record_target(&sdk, "olga").await.as_deref() != Some(target.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "olga's record was not relit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tenant_keys(&inside, "olga").await.len(), 1);

    // Offboarded for good: after the grace period its key and table item leave the pool.
    offboard().await;
    let t = app.wait_for_state("olga", &["closed"], WITHIN).await;
    assert_eq!(t["account_id"], Value::Null);
    assert!(tenant_keys(&inside, "olga").await.is_empty());
    assert_eq!(table_item(&inside, "olga").await, None);
    assert_eq!(record_target(&sdk, "olga").await, None);
    engine.stop().await;
}

#[tokio::test]
async fn a_crash_in_the_middle_of_an_upgrade_ends_with_one_account_and_the_tenant_served_throughout()
 {
    let crate::aws::CrashRig {
        moto: _moto,
        sdk,
        orgs,
        app,
        rt: _rt,
    } = crate::aws::CrashRig::start(false).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    app.signup(&pooled("fred", "free")).await;
    let mut config = app.engine_config("first");
    config.lease = Duration::from_secs(1);
    let first = app.start_engine(config.clone());
    app.wait_for_state("fred", &["active"], WITHIN).await;
    let before = org.list_accounts().send().await.unwrap().accounts().len();

    // The worker dies right after CreateAccount reached AWS, before vend recorded its answer.
    orgs.armed.store(true, Ordering::SeqCst);
    let (stop, seen) = watch(&app, &sdk, "fred");
    assert_eq!(change(&app, "fred", "enterprise").await.status(), 202);
    orgs.called.notified().await;
    first.kill().await;
    let t = app.tenant("fred").await;
    assert_eq!(t["tier"], "free", "still the pool's until the switch");
    assert_eq!(t["state"], "active");

    config.worker_id = "second".into();
    let second = app.start_engine(config);
    let t = settled_at(&app, "fred", "enterprise").await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(seen.await.unwrap().len(), 2, "pool, then its own account");
    second.stop().await;
    assert_eq!(
        org.list_accounts().send().await.unwrap().accounts().len(),
        before + 1
    );
    let tagged: Vec<(String, String)> = moto::tagged_accounts(&sdk)
        .await
        .into_iter()
        .filter(|(slug, _)| slug == "fred")
        .collect();
    assert_eq!(tagged.len(), 1, "one account for fred: {tagged:?}");
    assert_eq!(t["account_id"], tagged[0].1);
}

/// Runs workers that crash every few hundred milliseconds, wherever they are (six at most), until
/// `slug` has settled at `tier`; then one that is left alone finishes whatever is left.
async fn settle_through_crashes(app: &TestApp, slug: &str, tier: &str) -> Value {
    let mut config = app.engine_config("crashing");
    config.lease = Duration::from_millis(400);
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut crashes = 0;
    for i in 0u64.. {
        config.worker_id = format!("crashing-{i}");
        let engine = app.start_engine(config.clone());
        tokio::time::sleep(Duration::from_millis(120 + (i * 97) % 400)).await;
        engine.kill().await;
        crashes += 1;
        let t = app.tenant(slug).await;
        if (t["tier"] == tier && t["resources"].get("tier_to").is_none_or(Value::is_null))
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
        // An attempt cut off counts as one: fewer crashes than any step's attempt budget (8), so
        // a step is never failed by crashes alone.
        if crashes >= 6 {
            break;
        }
    }
    config.worker_id = "survivor".into();
    let survivor = app.start_engine(config);
    let t = settled_at(app, slug, tier).await;
    survivor.stop().await;
    t
}

#[tokio::test]
async fn every_tier_change_survives_workers_crashing_anywhere_in_it() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) =
        spawn_silo_graced_with(&moto.url, |_| {}, Duration::ZERO, &fast_enterprise_toml()).await;
    let accounts = || async {
        aws_sdk_organizations::Client::new(&sdk)
            .list_accounts()
            .send()
            .await
            .unwrap()
            .accounts()
            .len()
    };
    let before = accounts().await;
    app.signup(&pooled("cara", "free")).await;
    let t = settle_through_crashes(&app, "cara", "free").await;
    assert_eq!(t["state"], "active", "{t:#}");
    assert_eq!(accounts().await, before + 1, "the pool's account only");
    let inside = moto::sdk_in(&sdk, &pool_account(&app).await).await;
    let target = pool_target(&app).await;

    for (to, home) in [("pro", "pool"), ("enterprise", "own"), ("free", "pool")] {
        let (stop, seen) = watch(&app, &sdk, "cara");
        assert_eq!(change(&app, "cara", to).await.status(), 202, "to {to}");
        let t = settle_through_crashes(&app, "cara", to).await;
        stop.store(true, Ordering::SeqCst);
        let seen = seen.await.unwrap();
        assert!(seen.len() <= 2, "one switch at most: {seen:?}");
        let now = record_target(&sdk, "cara").await.unwrap();
        assert_eq!(seen.last(), Some(&now));
        let keys = tenant_keys(&inside, "cara").await;
        if home == "pool" {
            assert_eq!(now, target);
            assert_eq!(keys.len(), 1, "one key: {keys:?}");
            assert_eq!(
                plans_of_key(&inside, &keys[0]).await,
                [format!("vend-pool-{to}")]
            );
            assert_eq!(table_item(&inside, "cara").await.as_deref(), Some(to));
            assert_eq!(t["account_id"], Value::Null, "{t:#}");
        } else {
            assert_ne!(now, target);
            assert!(keys.is_empty(), "{keys:?}");
            assert_eq!(table_item(&inside, "cara").await, None);
            assert!(t["account_id"].is_string(), "{t:#}");
        }
    }
    // One account was made for cara, and it is closed; every switch was announced once.
    let tagged: Vec<(String, String)> = moto::tagged_accounts(&sdk)
        .await
        .into_iter()
        .filter(|(slug, _)| slug == "cara")
        .collect();
    assert_eq!(tagged.len(), 1, "{tagged:?}");
    assert_eq!(accounts().await, before + 2);
    let status = moto::account_status(&sdk, &tagged[0].1).await;
    assert!(
        ["SUSPENDED", "PENDING_CLOSURE"].contains(&status.as_str()),
        "{status}"
    );
    assert_eq!(
        events_of(&app, "cara", "tenant.tier.changed").await.len(),
        3
    );
}
