//! Offboarding against moto: the endpoint goes dark, a restore within the grace period brings the
//! tenant back, after it everything vend made is removed and the account closed, never past the
//! CloseAccount quota. AWS is checked afterwards with plain SDK calls, as CONTRACT.md states it.

use std::time::Duration;

use aws_config::SdkConfig;
use reqwest::Method;
use serde_json::{Value, json};

use vend_aws_proxy::{Proxy, ProxyConfig};

use crate::aws::assert_contract_holds;
use crate::support::moto::{self, BASE_DOMAIN};
use crate::support::{TestApp, signup_body, spawn_silo_graced, spawn_silo_with};

const WITHIN: Duration = Duration::from_secs(60);

/// What AWS holds for a tenant's endpoint and account.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Remains {
    pub record: bool,
    pub domain: bool,
    pub mapping: bool,
    pub stack: bool,
    pub account_status: String,
}

pub(crate) async fn remains(sdk: &SdkConfig, slug: &str, account: &str) -> Remains {
    let domain = format!("{slug}.{BASE_DOMAIN}");
    let record = !moto::records_named(sdk, &domain).await.is_empty();
    let inside = moto::sdk_in(sdk, account).await;
    let has_domain = aws_sdk_apigateway::Client::new(&inside)
        .get_domain_name()
        .domain_name(&domain)
        .send()
        .await
        .is_ok();
    let mapping = !moto::mapped_apis(&inside, &domain).await.is_empty();
    let stack = moto::stack_status(&inside, "vend-tenant")
        .await
        .is_some_and(|s| s != "DELETE_COMPLETE");
    let account_status = moto::account_status(sdk, account).await;
    Remains {
        record,
        domain: has_domain,
        mapping,
        stack,
        account_status,
    }
}

async fn event_types(app: &TestApp, slug: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT e.type FROM events e JOIN tenants t ON t.id = e.tenant_id
         WHERE t.slug = $1 ORDER BY e.created_at, e.id",
    )
    .bind(slug)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn step_of(app: &TestApp, slug: &str, name: &str) -> Value {
    let t = app.tenant(slug).await;
    t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{slug} has no step {name} now: {t:#}"))
}

async fn wait_for_step(app: &TestApp, slug: &str, name: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let s = step_of(app, slug, name).await;
        if states.contains(&s["state"].as_str().unwrap_or("")) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{slug}: {name} never reached {states:?}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_offboarded_tenant_is_torn_down_and_its_account_closed() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo_graced(&moto.url, |_| {}, Duration::ZERO).await;
    app.signup(&signup_body("acme")).await;
    app.signup(&signup_body("globex")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let acme = app.wait_for_state("acme", &["active"], WITHIN).await;
    app.wait_for_state("globex", &["active"], WITHIN).await;
    let account = acme["account_id"].as_str().unwrap().to_owned();

    // The signed webhook: 202 with the tenant offboarding; the same webhook-id gets the same answer.
    let body = json!({"slug": "acme", "reason": "contract ended"});
    let first = app.signed_post("/v1/offboard", "msg_off_1", &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["tenant"]["state"], "offboarding", "{first:#}");
    let again = app.signed_post("/v1/offboard", "msg_off_1", &body).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    // Unknown slugs, bad bodies and bad signatures change nothing.
    let unknown = app
        .signed_post("/v1/offboard", "msg_off_2", &json!({"slug": "nobody"}))
        .await;
    assert_eq!(unknown.status(), 404);
    let bad = app
        .signed_post(
            "/v1/offboard",
            "msg_off_3",
            &json!({"slug": "acme", "x": 1}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let unsigned = app
        .http
        .post(format!("{}/v1/offboard", app.base))
        .header("content-type", "application/json")
        .body(r#"{"slug":"globex"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);

    let closed = app.wait_for_state("acme", &["closed"], WITHIN).await;
    assert!(closed["endpoint"].is_null(), "{closed:#}");
    let names: Vec<&str> = closed["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vend::steps::OFFBOARD_KINDS);
    assert_eq!(
        remains(&sdk, "acme", &account).await,
        Remains {
            record: false,
            domain: false,
            mapping: false,
            stack: false,
            account_status: "SUSPENDED".into(),
        }
    );
    // The other tenant is untouched.
    assert_contract_holds(&sdk, "globex").await;
    assert_eq!(app.tenant("globex").await["state"], "active");

    let events = event_types(&app, "acme").await;
    let at = |t: &str| events.iter().position(|e| e == t);
    assert!(
        at("tenant.active") < at("tenant.offboarding")
            && at("tenant.offboarding") < at("tenant.closed")
            && at("tenant.closed").is_some(),
        "{events:?}"
    );
    let history = app.history("acme").await;
    let offboarding = history
        .iter()
        .find(|e| e["kind"] == "tenant.offboarding")
        .unwrap();
    assert_eq!(offboarding["actor"], "webhook");
    assert!(
        offboarding["message"]
            .as_str()
            .unwrap()
            .contains("contract ended")
    );

    // A closed tenant: its slug cannot come back, it cannot be offboarded or restored again.
    let signup = app.signup(&signup_body("acme")).await;
    assert_eq!(signup.status(), 409);
    let again = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/offboard",
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(again.status(), 409);
    let restore = app
        .ops(Method::POST, "/v1/tenants/acme/restore", None)
        .await;
    assert_eq!(restore.status(), 409);

    // Every offboard step run again on the closed tenant changes nothing in AWS.
    for step in vend::steps::OFFBOARD_KINDS.iter().rev() {
        let r = app
            .ops(
                Method::POST,
                "/v1/tenants/acme/requeue",
                Some(json!({"from_step": step})),
            )
            .await;
        assert_eq!(r.status(), 200, "requeue from {step}");
        let t = app.wait_for_state("acme", &["closed"], WITHIN).await;
        assert_eq!(t["state"], "closed");
        assert_eq!(
            remains(&sdk, "acme", &account).await.account_status,
            "SUSPENDED"
        );
    }
    engine.stop().await;
    let closures: i64 = sqlx::query_scalar("SELECT count(*) FROM account_closures")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        closures, 1,
        "one CloseAccount for one tenant, reruns included"
    );
}

#[tokio::test]
async fn a_restore_within_the_grace_period_lights_the_endpoint_again_and_is_refused_after_it() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo_graced(&moto.url, |_| {}, Duration::from_secs(3600)).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    let account = t["account_id"].as_str().unwrap().to_owned();

    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/offboard",
            Some(json!({"reason": "unpaid"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "offboarding");
    // Dark, nothing deleted, waiting out the grace period.
    wait_for_step(&app, "acme", "grace_period", &["waiting"]).await;
    let dark = remains(&sdk, "acme", &account).await;
    assert_eq!(
        dark,
        Remains {
            record: false,
            domain: true,
            mapping: false,
            stack: true,
            account_status: "ACTIVE".into(),
        }
    );

    let r = app
        .ops(Method::POST, "/v1/tenants/acme/restore", None)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "active");
    // The endpoint is mapped again and the tenant is as the contract says an active one is.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !(remains(&sdk, "acme", &account).await.mapping
        && remains(&sdk, "acme", &account).await.record)
    {
        assert!(tokio::time::Instant::now() < deadline, "never re-mapped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    wait_for_step(&app, "acme", "map_domain", &["succeeded"]).await;
    assert_eq!(assert_contract_holds(&sdk, "acme").await, account);
    assert!(t["endpoint"].is_string(), "{t:#}");
    let events = event_types(&app, "acme").await;
    assert!(events.contains(&"tenant.restored".to_owned()), "{events:?}");
    // Not offboarding any more: nothing to restore.
    let r = app
        .ops(Method::POST, "/v1/tenants/acme/restore", None)
        .await;
    assert_eq!(r.status(), 409);

    // Offboarded again, and the grace period runs out (the clock moves on): too late to restore.
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/offboard",
            Some(json!({"reason": "unpaid, really"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    wait_for_step(&app, "acme", "grace_period", &["waiting"]).await;
    sqlx::query(
        "UPDATE tenants SET resources = resources || jsonb_build_object('offboard_after',
             to_jsonb(to_char((now() - interval '1 second') AT TIME ZONE 'UTC',
                              'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')))
         WHERE slug = 'acme'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app
        .ops(Method::POST, "/v1/tenants/acme/restore", None)
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "grace_period_over");
    // Retrying the waiting grace step ends it now; the teardown runs to the end.
    let r = app.ops(Method::POST, "/v1/tenants/acme/retry", None).await;
    assert_eq!(r.status(), 200);
    app.wait_for_state("acme", &["closed"], WITHIN).await;
    assert_eq!(
        remains(&sdk, "acme", &account).await.account_status,
        "SUSPENDED"
    );
    engine.stop().await;
}

#[tokio::test]
async fn closures_past_the_close_account_quota_wait_visibly_until_it_frees() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let window = Duration::from_secs(4);
    let (app, _rt) = spawn_silo_graced(
        &moto.url,
        |s| {
            s.close_account_quota = Some(1);
            s.close_account_window = window;
        },
        Duration::ZERO,
    )
    .await;
    for slug in ["acme", "globex"] {
        app.signup(&signup_body(slug)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in ["acme", "globex"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    for slug in ["acme", "globex"] {
        let r = app
            .ops(
                Method::POST,
                &format!("/v1/tenants/{slug}/offboard"),
                Some(json!({"reason": "test"})),
            )
            .await;
        assert_eq!(r.status(), 202);
    }
    // One closes; the other waits in close_account, saying why, while the quota is spent.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let waiting = loop {
        let mut waiting = None;
        let mut closed = 0;
        for slug in ["acme", "globex"] {
            let t = app.tenant(slug).await;
            if t["state"] == "closed" {
                closed += 1;
            }
            let s = step_of(&app, slug, "close_account").await;
            if s["state"] == "waiting"
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("CloseAccount quota"))
            {
                waiting = Some((slug, t));
            }
        }
        if let (1, Some(w)) = (closed, waiting) {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw one close and one wait"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(waiting.1["state"], "offboarding");
    // When the window frees the quota, the waiting one completes.
    app.wait_for_state(waiting.0, &["closed"], WITHIN).await;
    engine.stop().await;
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT requested_at FROM account_closures ORDER BY requested_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(times.len(), 2);
    assert!(
        (times[1] - times[0]).to_std().unwrap() >= window,
        "two closures within one window: {times:?}"
    );
    for slug in ["acme", "globex"] {
        let id = app.tenant(slug).await["account_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(remains(&sdk, slug, &id).await.account_status, "SUSPENDED");
    }
}

#[tokio::test]
async fn offboarding_a_tenant_mid_provisioning_cancels_it_and_closes_what_it_made() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo_graced(&moto.url, |_| {}, Duration::ZERO).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    // Offboard as soon as the account exists, while later steps are still to run.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.tenant("acme").await["account_id"].is_null() {
        assert!(tokio::time::Instant::now() < deadline, "no account");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/offboard",
            Some(json!({"reason": "changed their mind"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let t = app.wait_for_state("acme", &["closed"], WITHIN).await;
    let account = t["account_id"].as_str().unwrap().to_owned();
    engine.stop().await;
    let left = remains(&sdk, "acme", &account).await;
    assert!(!left.record && !left.domain && !left.stack, "{left:?}");
    assert_eq!(left.account_status, "SUSPENDED");
    let runs: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.workflow, r.state FROM runs r JOIN tenants t ON t.id = r.tenant_id
         WHERE t.slug = 'acme' ORDER BY r.created_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(runs[1], ("offboard".to_owned(), "succeeded".to_owned()));
    assert!(
        runs[0].1 == "cancelled" || runs[0].1 == "succeeded",
        "{runs:?}"
    );
    // Nothing of the silo run ran after the offboard: no step of it is due.
    let due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.due_at IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(due, 0);
}

#[tokio::test]
async fn a_tenant_that_never_got_an_account_is_closed_with_nothing_to_remove() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo_graced(&moto.url, |_| {}, Duration::ZERO).await;
    app.signup(&signup_body("acme")).await;
    // Offboarded before any worker ran: the silo run is cancelled with nothing started.
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/offboard",
            Some(json!({"reason": "test"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["closed"], WITHIN).await;
    engine.stop().await;
    assert!(t["account_id"].is_null(), "{t:#}");
    let org = aws_sdk_organizations::Client::new(&sdk);
    assert_eq!(
        org.list_accounts().send().await.unwrap().accounts().len(),
        1,
        "only the management account: none was created for acme"
    );
    let closures: i64 = sqlx::query_scalar("SELECT count(*) FROM account_closures")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(closures, 0);
    let events = event_types(&app, "acme").await;
    assert_eq!(
        events,
        ["tenant.created", "tenant.offboarding"]
            .into_iter()
            .chain(std::iter::repeat_n(
                "tenant.step.succeeded",
                vend::steps::OFFBOARD_KINDS.len(),
            ))
            .chain(["tenant.closed"])
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn aws_refusing_a_closure_over_its_quota_makes_the_tenant_wait_then_complete() {
    // AWS's count includes closures made outside vend: here the proxy allows one per 3 s while vend
    // believes it may close ten.
    let moto = moto::start().await;
    let moto_sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&moto_sdk).await;
    let window = Duration::from_secs(3);
    let mut config = ProxyConfig::new(&moto.url);
    config.close_account_quota = Some(1);
    config.close_account_window = window;
    let proxy = Proxy::new(config);
    let addr = proxy.spawn().await.unwrap();
    let sdk = moto::sdk(&format!("http://{addr}")).await;
    let (app, _rt) = spawn_silo_with(
        sdk,
        None,
        |s| s.close_account_window = window,
        &crate::support::fast_silo_toml(),
    )
    .await;
    for slug in ["acme", "globex"] {
        app.signup(&signup_body(slug)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in ["acme", "globex"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    for slug in ["acme", "globex"] {
        let r = app
            .ops(
                Method::POST,
                &format!("/v1/tenants/{slug}/offboard"),
                Some(json!({"reason": "test"})),
            )
            .await;
        assert_eq!(r.status(), 202);
    }
    for slug in ["acme", "globex"] {
        let t = app.wait_for_state(slug, &["closed"], WITHIN).await;
        let id = t["account_id"].as_str().unwrap().to_owned();
        assert_eq!(
            remains(&moto_sdk, slug, &id).await.account_status,
            "SUSPENDED"
        );
    }
    engine.stop().await;
    let stats = proxy.stats();
    assert!(
        stats.close_account_refused >= 1,
        "the second closure was never refused: {stats:?}"
    );
    // The refusal was a wait, not a failure: no step failed, and the waiting tenant said why.
    let mut saw_wait = false;
    for slug in ["acme", "globex"] {
        let h = app.history(slug).await;
        assert!(
            h.iter().all(|e| e["kind"] != "step.failed"),
            "{slug}: {h:#?}"
        );
        saw_wait |= h.iter().any(|e| {
            e["kind"] == "step.throttled"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("CLOSE_ACCOUNT_QUOTA_EXCEEDED"))
        });
    }
    assert!(saw_wait, "no tenant waited for the closure quota");
}
