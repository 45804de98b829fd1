//! The ops API: auth, listing, detail, history, retry, requeue, metrics, OpenAPI.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use vend::domain::StepError;
use vend::engine::Registry;

use crate::support::steps::{Calls, FailTimes, Succeed};
use crate::support::{TestApp, signup_body, spawn_app, workflow_toml};

const WITHIN: Duration = Duration::from_secs(20);

async fn plain_app() -> TestApp {
    let registry = Registry::new().with("ok", Succeed::default());
    spawn_app(
        registry,
        &workflow_toml(&[("a", "ok"), ("b", "ok"), ("c", "ok")], ""),
    )
    .await
}

#[tokio::test]
async fn every_ops_route_needs_the_token() {
    let app = plain_app().await;
    app.signup(&signup_body("acme")).await;
    let paths = vend::http::protected_paths();
    assert!(paths.len() >= 8, "{paths:?}");
    for (path, methods) in paths {
        let path = path.replace("{slug}", "acme");
        for m in methods {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            for auth in [
                None,
                Some("Bearer wrong-token-0123456789"),
                Some("Basic dXNlcjpwYXNz"),
            ] {
                let mut req = app
                    .http
                    .request(method.clone(), format!("{}{path}", app.base));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let r = req.json(&json!({"from_step": "a"})).send().await.unwrap();
                assert_eq!(r.status(), 401, "{m} {path} with {auth:?}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "unauthorized");
            }
        }
    }
    // The probes stay open.
    for p in ["/healthz", "/readyz"] {
        assert_eq!(
            app.http
                .get(format!("{}{p}", app.base))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{p}"
        );
    }
}

#[tokio::test]
async fn a_token_without_the_scope_a_route_needs_gets_403() {
    use crate::support::{METRICS_TOKEN, READ_TOKEN};
    let app = plain_app().await;
    app.signup(&signup_body("acme")).await;
    let paths = vend::http::protected_paths();
    for (path, methods) in paths {
        let path = path.replace("{slug}", "acme").replace("{id}", "0");
        for m in methods {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            let needs = if path == "/metrics" {
                "metrics"
            } else if m == "GET" {
                "read"
            } else {
                "write"
            };
            for (token, has) in [(READ_TOKEN, "read"), (METRICS_TOKEN, "metrics")] {
                let r = app
                    .http
                    .request(method.clone(), format!("{}{path}", app.base))
                    .bearer_auth(token)
                    .json(&json!({"from_step": "a"}))
                    .send()
                    .await
                    .unwrap();
                if has == needs {
                    assert!(
                        ![401, 403].contains(&r.status().as_u16()),
                        "{m} {path} with the {has} token: {}",
                        r.status()
                    );
                } else {
                    assert_eq!(r.status(), 403, "{m} {path} with the {has} token");
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "forbidden");
                }
            }
        }
    }
    // A refused write changed nothing.
    let h = app.history("acme").await;
    assert!(
        h.iter()
            .all(|e| !e["kind"].as_str().unwrap().starts_with("operator.")),
        "{h:?}"
    );
}

#[tokio::test]
async fn listing_pages_newest_first_with_a_cursor_and_filters_by_state() {
    let app = plain_app().await;
    for i in 0..7 {
        assert_eq!(
            app.signup(&signup_body(&format!("tenant-{i}")))
                .await
                .status(),
            202
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/tenants?limit=3&cursor={c}"),
            None => "/v1/tenants?limit=3".into(),
        };
        let page: Value = app.ops(Method::GET, &q, None).await.json().await.unwrap();
        for t in page["tenants"].as_array().unwrap() {
            seen.push(t["slug"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("tenant-{i}")).collect();
    assert_eq!(seen, expected);

    let pending: Value = app
        .ops(Method::GET, "/v1/tenants?state=pending", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["tenants"].as_array().unwrap().len(), 7);
    assert_eq!(pending["next_cursor"], Value::Null);
    let active: Value = app
        .ops(Method::GET, "/v1/tenants?state=active", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(active["tenants"].as_array().unwrap().len(), 0);

    for (q, code) in [
        ("state=bogus", "invalid_state"),
        ("limit=0", "invalid_limit"),
        ("limit=501", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("cursor=nope", "invalid_cursor"),
        ("colour=red", "invalid_query"),
    ] {
        let r = app
            .ops(Method::GET, &format!("/v1/tenants?{q}"), None)
            .await;
        assert_eq!(r.status(), 400, "{q}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            code,
            "{q}"
        );
    }
    let r = app.ops(Method::GET, "/v1/tenants/nobody", None).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn retry_resumes_a_failed_tenant_and_refuses_when_there_is_nothing_to_retry() {
    let calls = Calls::default();
    // Fails permanently once (think: a quota ops must raise), then works.
    let registry = Registry::new().with("ok", Succeed::default()).with(
        "quota",
        FailTimes {
            times: 1,
            error: StepError::permanent("ACCOUNT_LIMIT_EXCEEDED", "raise the quota"),
            calls: calls.clone(),
        },
    );
    let app = spawn_app(
        registry,
        &workflow_toml(&[("a", "ok"), ("b", "quota"), ("c", "ok")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["failed"], WITHIN).await;
    assert_eq!(t["steps"][1]["state"], "failed");

    let r = app
        .http
        .post(format!("{}/v1/tenants/acme/retry", app.base))
        .bearer_auth(crate::support::ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["state"], "provisioning");
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    engine.stop().await;
    assert_eq!(t["steps"][1]["state"], "succeeded");
    assert_eq!(calls.get("acme"), 2);
    let h = app.history("acme").await;
    let op = h.iter().find(|e| e["kind"] == "operator.retry").unwrap();
    assert_eq!(op["actor"], "alice");
    assert_eq!(op["step"], "b");

    let r = app.ops(Method::POST, "/v1/tenants/acme/retry", None).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "nothing_to_retry"
    );
}

#[tokio::test]
async fn a_bulk_retry_lists_first_on_a_dry_run_then_retries_every_matching_failed_tenant() {
    let calls = Calls::default();
    let registry = Registry::new().with("ok", Succeed::default()).with(
        "quota",
        FailTimes {
            times: 1,
            error: StepError::permanent("ACCOUNT_LIMIT_EXCEEDED", "raise the quota"),
            calls: calls.clone(),
        },
    );
    let app = spawn_app(
        registry,
        &workflow_toml(&[("a", "ok"), ("b", "quota"), ("c", "ok")], ""),
    )
    .await;
    let slugs = ["acme", "globex", "initech"];
    for s in slugs {
        app.signup(&signup_body(s)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for s in slugs {
        app.wait_for_state(s, &["failed"], WITHIN).await;
    }
    let bulk = |body: Value| {
        let app = &app;
        async move {
            let r = app.ops(Method::POST, "/v1/retries", Some(body)).await;
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // Bad input is refused and changes nothing.
    for bad in [
        json!({"step": ""}),
        json!({"dry_run": "yes"}),
        json!({"state": "failed"}),
    ] {
        let (status, body) = bulk(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, none) = bulk(json!({"error_code": "SomethingElse", "dry_run": true})).await;
    assert_eq!(status, 200);
    assert_eq!(none["matched"], 0);
    // A dry run shows the count and the tenants, and retries none.
    let (_, dry) = bulk(json!({"step": "b", "dry_run": true})).await;
    assert_eq!(dry["matched"], 3, "{dry:#}");
    assert_eq!(dry["retried"], json!([]));
    let mut listed: Vec<&str> = dry["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["step"], "b");
            assert_eq!(t["error_code"], "ACCOUNT_LIMIT_EXCEEDED");
            t["slug"].as_str().unwrap()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, slugs);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in slugs {
        assert_eq!(
            app.tenant(s).await["state"],
            "failed",
            "{s} after a dry run"
        );
        assert_eq!(calls.get(s), 1);
    }
    let (status, done) = bulk(json!({"error_code": "ACCOUNT_LIMIT_EXCEEDED"})).await;
    assert_eq!(status, 200);
    assert_eq!(done["matched"], 3);
    assert_eq!(done["retried"].as_array().unwrap().len(), 3, "{done:#}");
    for s in slugs {
        app.wait_for_state(s, &["active"], WITHIN).await;
        let h = app.history(s).await;
        assert!(h.iter().any(|e| e["kind"] == "operator.retry"), "{s}");
    }
    let (_, again) = bulk(json!({})).await;
    assert_eq!(again["matched"], 0, "nothing failed any more");
    engine.stop().await;
}

#[tokio::test]
async fn retry_ends_a_backoff_early() {
    let calls = Calls::default();
    let registry = Registry::new().with(
        "slow",
        FailTimes {
            times: 1,
            error: StepError::transient("ServiceException", "later"),
            calls: calls.clone(),
        },
    );
    // A one-hour backoff: only the operator's retry can make this finish within the test.
    let toml = workflow_toml(
        &[],
        "[[steps]]\nname = \"a\"\nkind = \"slow\"\n[steps.retry]\ninitial_interval = \"1h\"\nmaximum_interval = \"1h\"\n",
    );
    let app = spawn_app(registry, &toml).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    loop {
        let t = app.tenant("acme").await;
        if t["steps"][0]["state"] == "waiting" {
            assert_eq!(t["steps"][0]["wait_reason"], "backoff");
            assert!(t["steps"][0]["next_attempt_at"].is_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.ops(Method::POST, "/v1/tenants/acme/retry", None)
            .await
            .status(),
        200
    );
    app.wait_for_state("acme", &["active"], WITHIN).await;
    engine.stop().await;
}

#[tokio::test]
async fn requeue_rewinds_to_a_step_and_runs_from_there() {
    let calls = Calls::default();
    let registry = Registry::new().with("ok", Succeed(calls.clone()));
    let app = spawn_app(
        registry,
        &workflow_toml(&[("a", "ok"), ("b", "ok"), ("c", "ok")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["active"], WITHIN).await;
    assert_eq!(calls.get("acme"), 3);

    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/requeue",
            Some(json!({"from_step": "nope"})),
        )
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unknown_step");
    assert!(e["error"]["message"].as_str().unwrap().contains("a, b, c"));
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/requeue",
            Some(json!({"from": "b"})),
        )
        .await;
    assert_eq!(r.status(), 400);

    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/requeue",
            Some(json!({"from_step": "b"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    engine.stop().await;
    assert_eq!(calls.get("acme"), 5, "b and c ran again, a did not");
    assert_eq!(t["steps"][0]["attempts"], 1);
    assert!(
        app.history("acme")
            .await
            .iter()
            .any(|e| e["kind"] == "operator.requeue")
    );
}

#[tokio::test]
async fn requeue_refuses_to_skip_a_step_that_has_not_succeeded() {
    let registry = Registry::new().with("ok", Succeed::default()).with(
        "bad",
        FailTimes {
            times: 100,
            error: StepError::permanent("Broken", "broken"),
            calls: Calls::default(),
        },
    );
    let app = spawn_app(registry, &workflow_toml(&[("a", "bad"), ("b", "ok")], "")).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["failed"], WITHIN).await;
    engine.stop().await;
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/requeue",
            Some(json!({"from_step": "b"})),
        )
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "earlier_step_not_done"
    );
    assert_eq!(
        app.tenant("acme").await["state"],
        "failed",
        "nothing changed"
    );
}

#[tokio::test]
async fn metrics_and_openapi_describe_the_service() {
    let app = plain_app().await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["active"], WITHIN).await;
    engine.stop().await;
    let text = app
        .ops(Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    for needle in [
        "vend_steps{state=\"succeeded\"} 3",
        "vend_tenants{state=\"active\"} 1",
        "vend_queue_depth 0",
        "vend_step_attempts_total{step=\"a\",outcome=\"succeeded\"} 1",
        "vend_claim_latency_seconds_count",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    let doc: Value = app
        .ops(Method::GET, "/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    for p in [
        "/v1/signup",
        "/v1/tenants",
        "/v1/tenants/{slug}",
        "/v1/tenants/{slug}/history",
        "/v1/tenants/{slug}/retry",
        "/v1/tenants/{slug}/requeue",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    assert!(doc["components"]["schemas"]["TenantDetail"].is_object());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = plain_app().await;
    let r = app.ops(Method::GET, "/v2/nothing", None).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    let r = app
        .http
        .delete(format!("{}/v1/signup", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn tenants_are_filtered_by_tier_current_step_error_code_and_time_in_the_step() {
    let registry = crate::support::steps::ok_and_fails_once(Calls::default());
    let app = spawn_app(
        registry,
        &workflow_toml(&[("first", "ok"), ("second", "once")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["failed"], WITHIN).await;
    engine.stop().await;
    // Signed up with no worker running: at its first step, due now.
    let mut beta = signup_body("beta");
    beta["tier"] = json!("pro");
    app.signup(&beta).await;

    let slugs = |q: &'static str| {
        let app = &app;
        async move { app.tenants_page(q).await.0 }
    };
    assert_eq!(slugs("step=second").await, ["acme"]);
    assert_eq!(slugs("error_code=QuotaExceeded").await, ["acme"]);
    assert_eq!(slugs("step=first").await, ["beta"]);
    assert_eq!(slugs("tier=pro").await, ["beta"]);
    assert_eq!(slugs("tier=enterprise").await, ["acme"]);
    assert!(slugs("tier=enterprise&step=first").await.is_empty());
    assert!(slugs("state=failed&step=first").await.is_empty());
    assert!(slugs("in_step_longer_than=1h").await.is_empty());
    assert_eq!(slugs("in_step_longer_than=1ms&step=second").await, ["acme"]);
    for (q, code) in [
        ("tier=gold", "invalid_tier"),
        ("in_step_longer_than=soon", "invalid_duration"),
    ] {
        let r = app
            .ops(Method::GET, &format!("/v1/tenants?{q}"), None)
            .await;
        assert_eq!(r.status(), 400, "{q}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{q}");
    }
}

#[tokio::test]
async fn a_current_step_listing_pages_with_its_cursor_newest_run_first() {
    let registry = crate::support::steps::ok_and_fails_once(Calls::default());
    let app = spawn_app(registry, &workflow_toml(&[("first", "ok")], "")).await;
    // No worker: each waits at its first step, due now.
    for slug in ["alpha", "beta", "gamma"] {
        app.signup(&signup_body(slug)).await;
    }
    for filter in ["step=first", "in_step_longer_than=1ms"] {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (first, cursor) = app.tenants_page(&format!("{filter}&limit=2")).await;
        assert_eq!(first, ["gamma", "beta"], "{filter}");
        let cursor = cursor.expect("a second page");
        let (second, end) = app
            .tenants_page(&format!("{filter}&limit=2&cursor={cursor}"))
            .await;
        assert_eq!(second, ["alpha"], "{filter}");
        assert_eq!(end, None, "{filter}");
    }
}

#[tokio::test]
async fn tenant_counts_stay_exact_through_signups_state_changes_and_folds() {
    let registry = crate::support::steps::ok_and_fails_once(Calls::default());
    let app = spawn_app(
        registry,
        &workflow_toml(&[("first", "ok"), ("second", "once")], ""),
    )
    .await;
    let counts = |app: &TestApp| {
        let pool = app.pool.clone();
        async move {
            let mut c = vend::db::tenants::count_by_state(&pool).await.unwrap();
            c.retain(|(_, n)| *n != 0);
            c.sort();
            c
        }
    };
    let truth = |app: &TestApp| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT state, count(*) FROM tenants GROUP BY state ORDER BY state",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    for slug in ["acme-1", "acme-2", "acme-3"] {
        app.signup(&signup_body(slug)).await;
    }
    assert_eq!(counts(&app).await, truth(&app).await);
    assert_eq!(counts(&app).await, [("pending".to_owned(), 3)]);
    // Folded, the deltas are gone and the counts the same.
    assert_eq!(vend::db::tenants::fold_counts(&app.pool).await.unwrap(), 3);
    assert_eq!(app.count("tenant_count_deltas").await, 0);
    assert_eq!(counts(&app).await, [("pending".to_owned(), 3)]);
    // Run them to failure: each passes through provisioning; half folded, half not.
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in ["acme-1", "acme-2", "acme-3"] {
        app.wait_for_state(slug, &["failed"], WITHIN).await;
    }
    engine.stop().await;
    assert_eq!(counts(&app).await, [("failed".to_owned(), 3)]);
    vend::db::tenants::fold_counts(&app.pool).await.unwrap();
    app.signup(&signup_body("acme-4")).await;
    assert_eq!(counts(&app).await, truth(&app).await);
    assert_eq!(
        counts(&app).await,
        [("failed".to_owned(), 3), ("pending".to_owned(), 1)]
    );
}
