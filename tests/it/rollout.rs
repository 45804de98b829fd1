//! Fleet rollouts against moto: a changed tenant-stack template reaches every active tenant in waves,
//! each stack ends up running the template as it was when the rollout started, and the rollout can be
//! paused, resumed and aborted.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::moto;
use crate::support::{TestApp, signup_body, spawn_silo};

const WITHIN: Duration = Duration::from_secs(60);

async fn rollout(app: &TestApp, id: &str) -> Value {
    let r = app
        .ops(Method::GET, &format!("/v1/rollouts/{id}"), None)
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn wait_rollout(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let r = rollout(app, id).await;
        if r["state"] == state {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout never {state}: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rollout_updates_every_tenant_in_waves_to_the_template_as_it_was_at_the_start() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo(&moto.url, |_| {}, None).await;
    let slugs = ["acme", "globex", "initech"];
    for s in slugs {
        app.signup(&signup_body(s)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for s in slugs {
        app.wait_for_state(s, &["active"], WITHIN).await;
    }
    let stop = CancellationToken::new();
    tokio::spawn(vend::lifecycle::rollout::drive(
        app.pool.clone(),
        app.workflows.clone(),
        Duration::from_millis(100),
        stop.clone(),
    ));

    // A new version of the tenant stack: one more output.
    let file = app.templates.path().join("tenant-stack.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    let changed = format!(
        "{}\n  RolloutMarker:\n    Value: version-two\n",
        original.trim_end()
    );
    assert!(original.contains("\nOutputs:"), "the template has outputs");
    std::fs::write(&file, &changed).unwrap();

    let bad = app
        .ops(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"stack": "database"})),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let r = app
        .ops(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"stack": "tenant", "canary": 1, "wave_size": 1, "max_failures": 0})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let started: Value = r.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["tenants"]["total"], 3);
    // The file changes again after the start: the rollout keeps the version it started with.
    std::fs::write(
        &file,
        format!("{changed}  Later:\n    Value: not-this-one\n"),
    )
    .unwrap();

    let done = wait_rollout(&app, &id, "completed").await;
    assert_eq!(
        done["tenants"],
        json!({"total": 3, "updated": 3, "failed": 0, "pending": 0}),
        "{done:#}"
    );
    let version = done["version"].as_str().unwrap();
    for s in slugs {
        let t = app.tenant(s).await;
        assert_eq!(t["state"], "active", "{s} stayed active");
        assert_eq!(t["stack_version"], version, "{s}: {t:#}");
        let account = t["account_id"].as_str().unwrap();
        let body = moto::stack_template(&sdk, account, "vend-tenant").await;
        assert!(
            body.contains("version-two"),
            "{s}: the stack runs the old template"
        );
        assert!(
            !body.contains("not-this-one"),
            "{s}: the stack runs a later edit"
        );
    }
    // Waves: the canary finished before the next tenant started.
    let starts: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT t.slug, h.at FROM history h JOIN tenants t ON t.id = h.tenant_id
         WHERE h.kind = 'rollout.started' ORDER BY h.at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(starts.len(), 3);
    let updated_at: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT rt.updated_at FROM rollout_tenants rt JOIN tenants t ON t.id = rt.tenant_id
         WHERE t.slug = $1",
    )
    .bind(&starts[0].0)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        updated_at[0] <= starts[1].1,
        "wave 2 started before the canary finished"
    );

    // A tenant provisioned after the rollout joins the fleet at its version: not the file this
    // process read at start, nor the edit made after the rollout started.
    app.signup(&signup_body("hooli")).await;
    app.wait_for_state("hooli", &["active"], WITHIN).await;
    let t = app.tenant("hooli").await;
    assert_eq!(t["stack_version"], version, "{t:#}");
    let body = moto::stack_template(&sdk, t["account_id"].as_str().unwrap(), "vend-tenant").await;
    assert!(body.contains("version-two") && !body.contains("not-this-one"));

    // Listing, pausing, resuming, aborting.
    let list: Value = app
        .ops(Method::GET, "/v1/rollouts", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["rollouts"][0]["id"], id.as_str());
    let r = app
        .ops(Method::POST, &format!("/v1/rollouts/{id}/pause"), None)
        .await;
    assert_eq!(r.status(), 409, "a completed rollout cannot be paused");
    // With the driver stopped, a new rollout stays where control puts it.
    stop.cancel();
    let rollouts = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rollouts")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let before = rollouts().await;
    for bad in [
        json!("0%"),
        json!("150%"),
        json!("ten"),
        json!(0),
        json!(-3),
    ] {
        let r = app
            .ops(
                Method::POST,
                "/v1/rollouts",
                Some(json!({"stack": "baseline", "wave_size": bad})),
            )
            .await;
        assert_eq!(r.status(), 400, "wave_size {bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("percentage"),
            "{body}"
        );
    }
    assert_eq!(
        rollouts().await,
        before,
        "a refused request changes nothing"
    );
    // A share of the tenants after the canary.
    let second: Value = app
        .ops(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"stack": "baseline", "wave_size": "50%"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let id2 = second["id"].as_str().unwrap();
    assert_eq!(second["state"], "running");
    assert_eq!(second["wave_size"], 2, "{second:#}");
    let waves: Vec<i32> = sqlx::query_scalar(
        "SELECT wave FROM rollout_tenants WHERE rollout_id = $1::uuid ORDER BY wave",
    )
    .bind(id2)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // Four tenants: the canary, then 50 % of three (two, rounded up) a wave.
    assert_eq!(waves, vec![0, 1, 1, 2]);
    for (action, state) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("abort", "aborted"),
    ] {
        let r = app
            .ops(Method::POST, &format!("/v1/rollouts/{id2}/{action}"), None)
            .await;
        assert_eq!(r.status(), 200, "{action}");
        assert_eq!(r.json::<Value>().await.unwrap()["state"], state);
    }
    let r = app
        .ops(Method::POST, &format!("/v1/rollouts/{id2}/resume"), None)
        .await;
    assert_eq!(r.status(), 409);
    let r = app
        .ops(
            Method::GET,
            "/v1/rollouts/00000000-0000-0000-0000-000000000000",
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
    engine.stop().await;
}

/// The tenants of a rollout by wave and state, and whether each one's update run has finished.
async fn rollout_tenants(app: &TestApp, id: &str) -> Vec<(String, i32, String, Option<String>)> {
    sqlx::query_as(
        "SELECT t.slug, rt.wave, rt.state, r.state FROM rollout_tenants rt
         JOIN tenants t ON t.id = rt.tenant_id LEFT JOIN runs r ON r.id = rt.run_id
         WHERE rt.rollout_id = $1::uuid ORDER BY rt.wave, t.slug",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn runs_template(sdk: &aws_config::SdkConfig, account: &str) -> String {
    moto::stack_template(sdk, account, "vend-tenant").await
}

#[tokio::test]
async fn a_fault_in_the_second_wave_halts_the_rollout_with_the_rest_untouched_and_resume_completes_it()
 {
    use vend_aws_proxy::{Proxy, ProxyConfig, Scripted};
    let moto = moto::start().await;
    let direct = moto::sdk(&moto.url).await;
    moto::prepare_management(&direct).await;
    let proxy = Proxy::new(ProxyConfig::new(&moto.url));
    let addr = proxy.spawn().await.unwrap();
    let (app, _rt) = spawn_silo(&format!("http://{addr}"), |_| {}, None).await;
    let slugs: Vec<String> = (0..20).map(|i| format!("fleet{i:02}")).collect();
    for s in &slugs {
        app.signup(&signup_body(s)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for s in &slugs {
        app.wait_for_state(s, &["active"], Duration::from_secs(180))
            .await;
    }
    let file = app.templates.path().join("tenant-stack.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!(
            "{}\n  RolloutMarker:\n    Value: wave-test\n",
            original.trim_end()
        ),
    )
    .unwrap();
    // The test drives the rollout pass by pass, so it knows when the second wave starts.
    let r: Value = app
        .ops(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"stack": "tenant", "canary": 1, "wave_size": 5, "max_failures": 0})),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["tenants"]["total"], 20);
    let advance = || vend::lifecycle::rollout::advance(&app.pool, &app.workflows);
    advance().await.unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let ts = rollout_tenants(&app, &id).await;
        if ts[0].3.as_deref() == Some("succeeded") {
            assert!(ts[1..].iter().all(|t| t.2 == "pending"), "{ts:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The canary is done; the next update executed (a tenant of the second wave) fails for good.
    proxy.script(
        "cloudformation.ExecuteChangeSet",
        [Scripted::Error {
            status: 400,
            code: "InsufficientCapabilitiesException".into(),
        }],
    );
    let deadline = tokio::time::Instant::now() + WITHIN;
    while rollout(&app, &id).await["state"] != "halted" {
        advance().await.unwrap();
        assert!(tokio::time::Instant::now() < deadline, "never halted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ts = rollout_tenants(&app, &id).await;
    let failed: Vec<_> = ts.iter().filter(|t| t.2 == "failed").collect();
    assert_eq!(failed.len(), 1, "{ts:?}");
    assert_eq!(failed[0].1, 1, "the failure is in the second wave: {ts:?}");
    let later: Vec<_> = ts.iter().filter(|t| t.1 >= 2).collect();
    assert_eq!(later.len(), 14);
    assert!(
        later.iter().all(|t| t.2 == "pending" && t.3.is_none()),
        "{ts:?}"
    );
    // The rest are untouched in AWS, and every tenant is still active.
    for t in &later {
        let tenant = app.tenant(&t.0).await;
        assert_eq!(tenant["state"], "active");
        let body = runs_template(&direct, tenant["account_id"].as_str().unwrap()).await;
        assert!(!body.contains("wave-test"), "{} was updated", t.0);
    }
    // Halted stays halted: more passes start nothing.
    for _ in 0..5 {
        advance().await.unwrap();
    }
    assert_eq!(rollout(&app, &id).await["state"], "halted");
    assert!(
        rollout_tenants(&app, &id)
            .await
            .iter()
            .filter(|t| t.1 >= 2)
            .all(|t| t.2 == "pending")
    );

    // The cause is gone (the script is spent): resume retries the failed tenant, then goes on.
    let r = app
        .ops(Method::POST, &format!("/v1/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(r.status(), 200);
    let stop = CancellationToken::new();
    tokio::spawn(vend::lifecycle::rollout::drive(
        app.pool.clone(),
        app.workflows.clone(),
        Duration::from_millis(100),
        stop.clone(),
    ));
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let r = rollout(&app, &id).await;
            if r["state"] == "completed" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the resumed rollout completes");
    assert_eq!(
        done["tenants"],
        json!({"total": 20, "updated": 20, "failed": 0, "pending": 0}),
        "{done:#}"
    );
    for s in &slugs {
        let tenant = app.tenant(s).await;
        assert_eq!(tenant["state"], "active");
        assert_eq!(tenant["stack_version"], done["version"], "{s}");
        let body = runs_template(&direct, tenant["account_id"].as_str().unwrap()).await;
        assert!(body.contains("wave-test"), "{s} runs the old template");
    }
    stop.cancel();
    engine.stop().await;
}
