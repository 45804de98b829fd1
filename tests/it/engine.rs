//! The engine against a real Postgres: retries, throttling, durable waits, crashes, lost leases and
//! racing workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use vend::domain::StepError;
use vend::engine::{Finished, Registry};

use crate::support::steps::{Calls, FailTimes, Gate, Hang, Probe, Succeed, WaitTimes};
use crate::support::{TestApp, signup_body, spawn_app, workflow_toml};

const WITHIN: Duration = Duration::from_secs(20);

fn kinds(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|h| h["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// The types of a tenant's outbox events, oldest first.
async fn event_types(pool: &sqlx::PgPool, slug: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT e.type FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.slug = $1 ORDER BY e.id",
    )
    .bind(slug)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_tenant_runs_every_step_and_becomes_active() {
    let calls = Calls::default();
    let registry = Registry::new().with("ok", Succeed(calls.clone()));
    let app = spawn_app(
        registry,
        &workflow_toml(&[("a", "ok"), ("b", "ok"), ("c", "ok")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));

    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    engine.stop().await;
    assert_eq!(calls.get("acme"), 3);
    for s in t["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "succeeded");
        assert_eq!(s["attempts"], 1);
        assert!(s["finished_at"].is_string());
        assert_eq!(s["next_attempt_at"], Value::Null);
    }
    // Resources set by steps were committed with their outcomes.
    assert_eq!(t["resources"]["a_done"], true);
    assert_eq!(t["resources"]["c_done"], true);
    let k = kinds(&app.history("acme").await);
    assert_eq!(k.iter().filter(|k| *k == "step.succeeded").count(), 3);
    assert_eq!(k.first().unwrap(), "signup.accepted");
    assert_eq!(k.last().unwrap(), "tenant.state");
    assert_eq!(
        event_types(&app.pool, "acme").await,
        [
            "tenant.created",
            "tenant.step.succeeded",
            "tenant.step.succeeded",
            "tenant.step.succeeded",
            "tenant.active"
        ]
    );
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_until_success() {
    let calls = Calls::default();
    let registry = Registry::new().with("ok", Succeed::default()).with(
        "flaky",
        FailTimes {
            times: 2,
            error: StepError::transient("ServiceException", "try again"),
            calls: calls.clone(),
        },
    );
    let app = spawn_app(registry, &workflow_toml(&[("a", "flaky"), ("b", "ok")], "")).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    engine.stop().await;
    assert_eq!(calls.get("acme"), 3);
    assert_eq!(t["steps"][0]["attempts"], 3);
    assert_eq!(
        t["steps"][0]["last_error"],
        Value::Null,
        "a success clears the error"
    );
    let h = app.history("acme").await;
    let backoffs: Vec<&Value> = h.iter().filter(|e| e["kind"] == "step.backoff").collect();
    assert_eq!(backoffs.len(), 2);
    assert_eq!(backoffs[0]["detail"]["error"]["code"], "ServiceException");
    assert_eq!(backoffs[0]["detail"]["error"]["class"], "transient");
    // The policy (initial 20ms, x2, no jitter) decided the delays.
    assert_eq!(backoffs[0]["detail"]["retry_in_ms"], 20);
    assert_eq!(backoffs[1]["detail"]["retry_in_ms"], 40);
}

#[tokio::test]
async fn a_step_that_keeps_failing_fails_the_tenant_with_a_clear_error() {
    let registry = Registry::new().with("ok", Succeed::default()).with(
        "broken",
        FailTimes {
            times: 100,
            error: StepError::transient("ServiceException", "still broken"),
            calls: Calls::default(),
        },
    );
    let app = spawn_app(
        registry,
        &workflow_toml(&[("a", "broken"), ("b", "ok")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["failed"], WITHIN).await;
    engine.stop().await;
    let a = &t["steps"][0];
    assert_eq!(a["state"], "failed");
    assert_eq!(a["attempts"], 4, "maximum_attempts of the test policy");
    assert_eq!(a["last_error_code"], "ServiceException");
    assert!(
        a["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 attempts"),
        "{a}"
    );
    assert_eq!(t["steps"][1]["state"], "pending");
    assert_eq!(
        event_types(&app.pool, "acme").await,
        ["tenant.created", "tenant.step.failed", "tenant.failed"]
    );
}

#[tokio::test]
async fn a_permanent_error_fails_at_once() {
    let calls = Calls::default();
    let registry = Registry::new().with(
        "bad",
        FailTimes {
            times: 100,
            error: StepError::permanent("INVALID_EMAIL", "the address is refused"),
            calls: calls.clone(),
        },
    );
    let app = spawn_app(registry, &workflow_toml(&[("a", "bad")], "")).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["failed"], WITHIN).await;
    engine.stop().await;
    assert_eq!(calls.get("acme"), 1);
    assert_eq!(t["steps"][0]["last_error"], "the address is refused");
}

#[tokio::test]
async fn throttling_does_not_spend_attempts() {
    let calls = Calls::default();
    // Six throttles against a budget of four attempts: still succeeds, in one attempt.
    let registry = Registry::new().with(
        "throttled",
        FailTimes {
            times: 6,
            error: StepError::throttled("TooManyRequestsException", "Rate exceeded"),
            calls: calls.clone(),
        },
    );
    let app = spawn_app(registry, &workflow_toml(&[("a", "throttled")], "")).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "active");
    assert_eq!(t["steps"][0]["attempts"], 1);
    assert_eq!(t["steps"][0]["throttles"], 6);
    assert_eq!(calls.get("acme"), 7);
}

#[tokio::test]
async fn a_durable_wait_holds_no_worker_and_resumes() {
    let calls = Calls::default();
    let registry = Registry::new().with(
        "poll",
        WaitTimes {
            times: 3,
            after: Duration::from_millis(30),
            calls: calls.clone(),
        },
    );
    let app = spawn_app(registry, &workflow_toml(&[("a", "poll")], "")).await;
    // Ten tenants waiting at once on an engine with a single worker slot: waits hold no slot.
    for i in 0..10 {
        app.signup(&signup_body(&format!("tenant-{i}"))).await;
    }
    let mut config = app.engine_config("w1");
    config.concurrency = 1;
    let engine = app.start_engine(config);
    for i in 0..10 {
        let t = app
            .wait_for_state(&format!("tenant-{i}"), &["active"], WITHIN)
            .await;
        assert_eq!(t["steps"][0]["attempts"], 1, "polls continue one attempt");
    }
    engine.stop().await;
    assert_eq!(calls.total(), 40);
    let polls: i64 = sqlx::query_scalar("SELECT sum(polls)::bigint FROM steps")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(polls, 30);
}

#[tokio::test]
async fn repeated_polls_are_one_history_entry_and_history_pages_with_a_cursor() {
    let calls = Calls::default();
    let registry = Registry::new()
        .with(
            "poll",
            WaitTimes {
                times: 25,
                after: Duration::from_millis(10),
                calls: calls.clone(),
            },
        )
        .with("ok", Succeed::default());
    let app = spawn_app(
        registry,
        &workflow_toml(&[("a", "ok"), ("b", "poll"), ("c", "ok")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["active"], WITHIN).await;
    engine.stop().await;

    let whole = app.history("acme").await;
    let waits: Vec<&Value> = whole
        .iter()
        .filter(|e| e["kind"] == "step.waiting")
        .collect();
    assert_eq!(waits.len(), 1, "25 polls fold into one entry: {whole:#?}");
    assert_eq!(waits[0]["detail"]["count"], 25);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM history")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        stored < 12,
        "{stored} history rows for 3 steps and 25 polls"
    );

    // Page by page, the same history.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/tenants/acme/history?limit=2".to_owned(),
            Some(c) => format!("/v1/tenants/acme/history?limit=2&cursor={c}"),
        };
        let page: Value = app
            .ops(Method::GET, &path, None)
            .await
            .json()
            .await
            .unwrap();
        paged.extend(page["history"].as_array().unwrap().iter().cloned());
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(paged, whole);
    for bad in ["limit=0", "limit=1001", "cursor=x", "other=1"] {
        let r = app
            .ops(
                Method::GET,
                &format!("/v1/tenants/acme/history?{bad}"),
                None,
            )
            .await;
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn a_step_timeout_fails_a_step_that_never_finishes_waiting() {
    let registry = Registry::new().with(
        "poll",
        WaitTimes {
            times: usize::MAX,
            after: Duration::from_millis(20),
            calls: Calls::default(),
        },
    );
    let toml = workflow_toml(
        &[],
        "[[steps]]\nname = \"a\"\nkind = \"poll\"\ntimeout = \"300ms\"\n",
    );
    let app = spawn_app(registry, &toml).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["failed"], WITHIN).await;
    engine.stop().await;
    assert_eq!(t["steps"][0]["last_error_code"], "StepTimedOut");
}

/// Tenant `acme` on workflow a (hangs on its first call), b; worker `doomed` (1 s lease) died in the
/// middle of a. Returns the app and an engine config with the same lease for whoever comes next.
async fn a_worker_crashed_mid_step() -> (TestApp, vend::engine::EngineConfig) {
    let hang = Hang::default();
    let registry = Registry::new()
        .with("hang", hang.clone())
        .with("ok", Succeed::default());
    let app = spawn_app(registry, &workflow_toml(&[("a", "hang"), ("b", "ok")], "")).await;
    app.signup(&signup_body("acme")).await;
    let mut config = app.engine_config("doomed");
    config.lease = Duration::from_secs(1);
    let doomed = app.start_engine(config.clone());
    hang.entered.notified().await;
    // The worker dies mid-step: no outcome is written, the step stays `running` under its lease.
    doomed.kill().await;
    (app, config)
}

#[tokio::test]
async fn a_crashed_worker_is_taken_over_when_its_lease_expires() {
    let (app, mut config) = a_worker_crashed_mid_step().await;
    let t = app.tenant("acme").await;
    assert_eq!(t["steps"][0]["state"], "running");
    assert_eq!(
        t["resources"]["hang_started"], true,
        "saved before the crash"
    );
    // Nothing is stored for an attempt until it ends; the history shows the one running now.
    let h = app.history("acme").await;
    let now = h.last().unwrap();
    assert_eq!(
        (&now["kind"], &now["step"], &now["actor"], &now["id"]),
        (
            &json!("step.started"),
            &json!("a"),
            &json!("doomed"),
            &Value::Null
        ),
        "{h:?}"
    );
    let doomed_token = now["lease_token"].clone();

    config.worker_id = "survivor".into();
    let survivor = app.start_engine(config);
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    survivor.stop().await;
    assert_eq!(
        t["steps"][0]["attempts"], 2,
        "the crash counts as an attempt"
    );
    // The takeover ended the crashed attempt in the history: its start, then why it ended, then the
    // survivor's attempt.
    let h = app.history("acme").await;
    let step_a: Vec<(&str, &str, i64)> = h
        .iter()
        .filter(|e| e["step"] == "a" && e["kind"].as_str().unwrap().starts_with("step."))
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        step_a,
        [
            ("step.started", "doomed", 1),
            ("step.abandoned", "doomed", 1),
            ("step.started", "survivor", 2),
            ("step.succeeded", "survivor", 2),
        ],
        "{h:?}"
    );
    let abandoned = h.iter().find(|e| e["kind"] == "step.abandoned").unwrap();
    assert_eq!(abandoned["lease_token"], doomed_token);
    let message = abandoned["message"].as_str().unwrap();
    assert!(
        message.contains("lease of doomed expired") && message.contains("survivor took"),
        "{message}"
    );
}

#[tokio::test]
async fn requeueing_past_a_crashed_attempt_records_the_attempt_it_ends() {
    let (app, mut config) = a_worker_crashed_mid_step().await;
    let requeue = || {
        app.ops(
            reqwest::Method::POST,
            "/v1/tenants/acme/requeue",
            Some(json!({"from_step": "a"})),
        )
    };
    // While the lease is live the worker may still be running it.
    assert_eq!(requeue().await.status(), 409);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(requeue().await.status(), 200);

    let h = app.history("acme").await;
    let tail: Vec<(&str, &str)> = h
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|e| (e["kind"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tail,
        [
            ("step.started", "doomed"),
            ("step.abandoned", "doomed"),
            ("operator.requeue", "ops")
        ],
        "{h:?}"
    );
    assert!(
        h[h.len() - 2]["message"]
            .as_str()
            .unwrap()
            .contains("requeued by ops")
    );
    // The rewound step runs afresh.
    config.worker_id = "w2".into();
    let w2 = app.start_engine(config);
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    w2.stop().await;
    assert_eq!(t["steps"][0]["attempts"], 1);
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_commit() {
    let hang = Hang::default();
    let registry = Registry::new()
        .with("hang", hang.clone())
        .with("ok", Succeed::default());
    let app = spawn_app(registry, &workflow_toml(&[("a", "hang"), ("b", "ok")], "")).await;
    app.signup(&signup_body("acme")).await;
    let mut config = app.engine_config("slow");
    // Long lease and heartbeat: the loss must be caught by the commit's fence, not the heartbeat.
    config.lease = Duration::from_secs(30);
    let slow = app.engine(config);
    let run = tokio::spawn({
        let slow = slow.clone();
        async move { slow.run_due_once().await.unwrap() }
    });
    hang.entered.notified().await;
    // Another worker takes the step over (as after an expired lease): a new fencing token.
    sqlx::query("UPDATE steps SET lease_owner = 'thief', lease_token = nextval('lease_tokens') WHERE state = 'running'")
        .execute(&app.pool)
        .await
        .unwrap();
    hang.release.notify_one();
    let finished = run.await.unwrap();
    assert_eq!(finished, vec![Finished::LeaseLost]);

    let t = app.tenant("acme").await;
    assert_eq!(
        t["steps"][0]["state"], "running",
        "the stale worker wrote nothing"
    );
    assert_eq!(t["steps"][1]["state"], "pending");
    assert!(!kinds(&app.history("acme").await).contains(&"step.succeeded".to_string()));
    assert_eq!(app.count("events").await, 1, "only tenant.created");
}

#[tokio::test]
async fn steps_finishing_together_share_a_commit_and_each_is_fenced_on_its_own() {
    const N: usize = 12;
    let gate = Gate::new(N);
    let registry = Registry::new()
        .with("gate", gate.clone())
        .with("ok", Succeed::default());
    let app = spawn_app(registry, &workflow_toml(&[("a", "gate"), ("b", "ok")], "")).await;
    for i in 0..N {
        app.signup(&signup_body(&format!("tenant-{i}"))).await;
    }
    let mut config = app.engine_config("w1");
    config.commit_flushes = 1;
    let engine = app.start_engine(config);
    gate.entered.wait().await;
    // While every step is in flight, another worker takes over tenant-0's (as after an expired
    // lease); its outcome now shares a batch with eleven others whose leases are sound.
    sqlx::query(
        "UPDATE steps SET lease_owner = 'thief', lease_token = nextval('lease_tokens'),
                          due_at = now() + interval '1 hour'
         WHERE state = 'running' AND run_id = (SELECT r.id FROM runs r JOIN tenants t ON t.id = r.tenant_id
                                               WHERE t.slug = 'tenant-0')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    gate.release.wait().await;
    for i in 1..N {
        app.wait_for_state(&format!("tenant-{i}"), &["active"], WITHIN)
            .await;
    }
    engine.stop().await;

    // Outcomes that finished together were written together: fewer transactions than steps.
    let (rows, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text) FROM history WHERE kind = 'step.succeeded' AND step = 'a'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, N as i64 - 1);
    assert!(
        transactions <= 3,
        "{rows} successes in {transactions} commits"
    );

    for i in 1..N {
        let slug = format!("tenant-{i}");
        let k = kinds(&app.history(&slug).await);
        let steps: Vec<&str> = k
            .iter()
            .map(String::as_str)
            .filter(|k| k.starts_with("step.") || *k == "tenant.state")
            .collect();
        assert_eq!(
            steps,
            [
                "step.started",
                "step.succeeded",
                "step.started",
                "step.succeeded",
                "tenant.state"
            ],
            "{slug}: {k:?}"
        );
        // One stored row per attempt, written when it ended.
        let stored: Vec<String> = sqlx::query_scalar(
            "SELECT h.kind FROM history h JOIN tenants t ON t.id = h.tenant_id
             WHERE t.slug = $1 AND h.step IS NOT NULL ORDER BY h.id",
        )
        .bind(&slug)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(stored, ["step.succeeded", "step.succeeded"], "{slug}");
        assert_eq!(
            event_types(&app.pool, &slug).await,
            [
                "tenant.created",
                "tenant.step.succeeded",
                "tenant.step.succeeded",
                "tenant.active"
            ],
            "{slug}"
        );
    }
    // The fenced-out step wrote nothing, and its neighbours in the batch were not held back by it.
    let victim = app.tenant("tenant-0").await;
    assert_eq!(victim["state"], "provisioning");
    assert_eq!(victim["steps"][0]["state"], "running");
    assert_eq!(victim["steps"][1]["state"], "pending");
    assert!(!kinds(&app.history("tenant-0").await).contains(&"step.succeeded".to_string()));
    let victim_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.slug = 'tenant-0'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(victim_events, 1, "only tenant.created");
}

#[tokio::test]
async fn racing_workers_never_run_a_step_twice_or_at_once() {
    let probe = Probe::default();
    let registry = Registry::new().with("probe", probe.clone());
    let app = spawn_app(
        registry,
        &workflow_toml(&[("a", "probe"), ("b", "probe"), ("c", "probe")], ""),
    )
    .await;
    for i in 0..30 {
        app.signup(&signup_body(&format!("tenant-{i}"))).await;
    }
    // Several engines start at the same instant and claim from the same rows.
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let mut handles = Vec::new();
    for w in 0..4 {
        let engine = app.engine(app.engine_config(&format!("w{w}")));
        let barrier = barrier.clone();
        let token = tokio_util::sync::CancellationToken::new();
        let t = token.clone();
        handles.push((
            token,
            tokio::spawn(async move {
                barrier.wait().await;
                engine.run(t).await
            }),
        ));
    }
    for i in 0..30 {
        app.wait_for_state(&format!("tenant-{i}"), &["active"], WITHIN)
            .await;
    }
    for (token, h) in handles {
        token.cancel();
        h.await.unwrap();
    }
    assert_eq!(
        probe.overlaps.load(Ordering::SeqCst),
        0,
        "two attempts overlapped on one tenant"
    );
    for i in 0..30 {
        for s in ["a", "b", "c"] {
            assert_eq!(
                probe.calls.get(&format!("tenant-{i}/{s}")),
                1,
                "tenant-{i}/{s} ran more than once"
            );
        }
    }
    // More than one worker took part.
    let actors: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT actor) FROM history WHERE kind = 'step.succeeded'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(actors >= 2, "only {actors} worker(s) claimed anything");
}

#[tokio::test]
async fn a_notification_wakes_an_idle_worker_without_waiting_for_a_poll() {
    let registry = Registry::new().with("ok", Succeed::default());
    let app = spawn_app(registry, &workflow_toml(&[("a", "ok")], "")).await;
    let mut config = app.engine_config("w1");
    // Polling alone would take an hour: only NOTIFY can make this tenant progress in the test's time.
    config.poll_interval = Duration::from_secs(3600);
    let engine = app.start_engine(config);
    // Let the engine go idle (claim nothing, start waiting) before the signup arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.signup(&signup_body("acme")).await;
    app.wait_for_state("acme", &["active"], Duration::from_secs(10))
        .await;
    engine.stop().await;
}

/// The group commit fences each step on its lease token *at the row's latest version*: a heartbeat
/// that commits while the commit waits for the row (same lease, new row version) must not read as a
/// lost lease, and a takeover that commits meanwhile (new token) must. Guards the statement's shape:
/// updating rows by an address looked up before the wait (`ctid`) skips the row in both cases.
#[tokio::test]
async fn group_commit_keeps_a_step_whose_heartbeat_it_waited_for_but_not_a_taken_one() {
    use vend::db::steps::{Success, SuccessResult, claim, heartbeat, succeed_many};
    let registry = Registry::new().with("ok", Succeed::default());
    let app = spawn_app(registry, &workflow_toml(&[("a", "ok"), ("b", "ok")], "")).await;
    app.signup(&signup_body("beats")).await;
    app.signup(&signup_body("taken")).await;
    let lease = Duration::from_secs(60);
    let mut claims = claim(&app.pool, "w1", 10, lease).await.unwrap();
    claims.sort_by(|a, b| a.slug.cmp(&b.slug));
    assert_eq!(claims.len(), 2);

    for (c, takeover) in [(&claims[0], false), (&claims[1], true)] {
        let mut holder = app.pool.begin().await.unwrap();
        if takeover {
            sqlx::query(
                "UPDATE steps SET lease_owner = 'w2', lease_token = nextval('lease_tokens')
                 WHERE run_id = $1 AND position = $2",
            )
            .bind(c.run_id)
            .bind(c.position)
            .execute(&mut *holder)
            .await
            .unwrap();
        } else {
            assert!(heartbeat(&mut *holder, c.lease(), lease).await.unwrap());
        }
        let success = Success {
            lease: c.lease(),
            tenant_id: c.tenant_id,
            step: c.step.clone(),
            attempt: c.attempts,
            patch: serde_json::json!({}),
            event_id: uuid::Uuid::now_v7(),
            payload: serde_json::json!({}),
            next_step: Some("b".into()),
            purpose: vend::domain::Purpose::Provision,
            done_event: uuid::Uuid::now_v7(),
        };
        let pool = app.pool.clone();
        let commit =
            tokio::spawn(async move { succeed_many(&pool, "w1", lease, vec![success]).await });
        // The commit has taken its snapshot and waits for the row the holder has changed.
        let waiting = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%WITH input AS%'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap()
        };
        let deadline = std::time::Instant::now() + WITHIN;
        while waiting().await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit never waited"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        holder.commit().await.unwrap();
        let (results, _) = commit.await.unwrap().unwrap();
        let state: String =
            sqlx::query_scalar("SELECT state FROM steps WHERE run_id = $1 AND position = $2")
                .bind(c.run_id)
                .bind(c.position)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        match (takeover, &results[..]) {
            (false, [SuccessResult::Written(Some(next))]) => {
                assert_eq!(state, "succeeded");
                assert_eq!(next.name, "b");
            }
            (true, [SuccessResult::LeaseLost]) => assert_eq!(state, "running"),
            (_, other) => panic!("takeover={takeover}: {other:?}"),
        }
    }
}
