//! The outbox dispatcher against a real HTTP receiver on loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use reqwest::Method;
use serde_json::Value;
use vend::engine::Registry;
use vend::engine::dispatcher::WebhookEndpoint;
use vend::standard_webhooks::Secret;

use crate::support::steps::Succeed;
use crate::support::{signup_body, spawn_app, workflow_toml};

const RECEIVER_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A status code and an optional Retry-After value.
type Reply = (u16, Option<&'static str>);

#[derive(Clone, Debug)]
struct Received {
    id: String,
    at: Instant,
    body: Vec<u8>,
    signature_ok: bool,
}

/// A webhook receiver that answers from a script of status codes (then 200), verifying signatures.
#[derive(Clone)]
struct Receiver {
    script: Arc<Mutex<Vec<Reply>>>,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let ok = Secret::parse(RECEIVER_SECRET)
        .unwrap()
        .verify(
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
            &body,
            chrono::Utc::now().timestamp(),
        )
        .is_ok();
    r.got.lock().unwrap().push(Received {
        id: h("webhook-id").unwrap_or("").to_owned(),
        at: Instant::now(),
        body: body.to_vec(),
        signature_ok: ok,
    });
    let next = {
        let mut s = r.script.lock().unwrap();
        if s.is_empty() {
            (200, None)
        } else {
            s.remove(0)
        }
    };
    let mut resp = StatusCode::from_u16(next.0).unwrap().into_response();
    if let Some(ra) = next.1 {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    resp
}

async fn start_receiver(script: Vec<Reply>) -> (Receiver, String) {
    let r = Receiver {
        script: Arc::new(Mutex::new(script)),
        got: Arc::new(Mutex::new(Vec::new())),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

fn endpoint(url: &str) -> WebhookEndpoint {
    WebhookEndpoint {
        url: url.to_owned(),
        secret: Secret::parse(RECEIVER_SECRET).unwrap(),
        name: None,
    }
}

/// Runs dispatch passes until `done` (asked after each) holds, at most 200 of them 15 ms apart.
async fn dispatch_until<F, Fut>(dispatcher: &vend::engine::dispatcher::Dispatcher, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        dispatcher.dispatch_once().await.unwrap();
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn events_are_delivered_signed_and_retried_with_a_stable_id() {
    let (receiver, url) = start_receiver(vec![(500, None), (500, None)]).await;
    let app = spawn_app(
        Registry::new().with("ok", Succeed::default()),
        &workflow_toml(&[("a", "ok")], ""),
    )
    .await;
    let named = WebhookEndpoint {
        name: Some("receiver".into()),
        ..endpoint(&url)
    };
    let dispatcher = app.dispatcher(vec![named], vec![Duration::from_millis(50); 5]);
    dispatcher.sync_endpoints().await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(dispatcher.clone().run(token.clone()));
    // tenant.created is refused twice, then accepted.
    app.signup(&signup_body("acme")).await;
    let got = receiver.got.clone();
    wait_until("tenant.created delivered", || {
        got.lock().unwrap().len() >= 3
    })
    .await;
    // Then the workflow runs: tenant.step.succeeded and tenant.active follow.
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["active"], Duration::from_secs(20))
        .await;
    engine.stop().await;
    wait_until("all deliveries", || got.lock().unwrap().len() >= 5).await;
    token.cancel();
    task.await.unwrap();

    let got = receiver.got.lock().unwrap().clone();
    assert!(
        got.iter().all(|r| r.signature_ok),
        "every request is signed with the endpoint secret"
    );
    assert_eq!(got.len(), 5, "3 events, one of them tried 3 times");
    // The refused event kept its webhook-id and its exact body across retries.
    assert_eq!(got[0].id, got[1].id);
    assert_eq!(got[1].id, got[2].id);
    assert_eq!(got[0].body, got[2].body);
    let types: Vec<String> = got
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut later = types[3..].to_vec();
    later.sort();
    assert_eq!(
        later,
        ["tenant.active".to_string(), "tenant.step.succeeded".into()]
    );
    assert_eq!(types[0], "tenant.created");
    // No personal data in events unless configured: the owner's e-mail stays in vend.
    for r in &got {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("owner_email") && !body.contains("ops@"),
            "{body}"
        );
    }

    let d: Value = app
        .ops(Method::GET, "/v1/deliveries?tenant=acme", None)
        .await
        .json()
        .await
        .unwrap();
    let d = d["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|x| x["state"] == "delivered"));
    let created = d
        .iter()
        .find(|x| x["event_type"] == "tenant.created")
        .unwrap();
    assert_eq!(created["attempts"], 3);
    // Endpoints are named, never shown by URL (a URL may carry a token).
    assert!(
        d.iter().all(|x| x["endpoint"] == "webhook:receiver"),
        "{d:?}"
    );
    assert_eq!(created["webhook_id"], got[0].id.as_str());
}

#[tokio::test]
async fn retry_after_is_honoured_and_gone_disables_the_endpoint() {
    let (slow, slow_url) = start_receiver(vec![(429, Some("1"))]).await;
    let (gone, gone_url) = start_receiver(vec![(410, None)]).await;
    let app = spawn_app(
        Registry::new().with("ok", Succeed::default()),
        &workflow_toml(&[("a", "ok")], ""),
    )
    .await;
    let dispatcher = app.dispatcher(
        vec![endpoint(&slow_url), endpoint(&gone_url)],
        vec![Duration::from_millis(10); 5],
    );
    dispatcher.sync_endpoints().await.unwrap();
    app.signup(&signup_body("acme")).await;
    // One round: the slow endpoint asks to wait a second, the gone one answers 410.
    assert_eq!(dispatcher.dispatch_once().await.unwrap(), 2);
    // Events after that are not even queued for the disabled endpoint.
    app.signup(&signup_body("beta")).await;
    let beta_deliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id JOIN tenants t ON t.id = e.tenant_id WHERE t.slug = 'beta'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(beta_deliveries, 1);
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(dispatcher.clone().run(token.clone()));
    let got = slow.got.clone();
    wait_until("the 429 retried", || got.lock().unwrap().len() >= 3).await;
    token.cancel();
    task.await.unwrap();

    let s = slow.got.lock().unwrap().clone();
    let first = &s[0];
    let retry = s.iter().skip(1).find(|r| r.id == first.id).unwrap();
    assert!(
        retry.at.duration_since(first.at) >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({:?})",
        retry.at.duration_since(first.at)
    );
    // 410 on the first delivery: the endpoint is disabled and gets nothing more.
    assert_eq!(gone.got.lock().unwrap().len(), 1);
    let d: Value = app
        .ops(Method::GET, "/v1/deliveries?state=disabled", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["deliveries"].as_array().unwrap().len(), 1);
    let disabled: Option<String> =
        sqlx::query_scalar("SELECT disabled_reason FROM endpoints WHERE id = $1")
            .bind(endpoint(&gone_url).endpoint_id())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(disabled.as_deref(), Some("410 Gone"));
}

#[tokio::test]
async fn an_endpoint_that_never_accepts_is_given_up_after_the_schedule() {
    let (receiver, url) = start_receiver(vec![(503, None); 10]).await;
    let app = spawn_app(
        Registry::new().with("ok", Succeed::default()),
        &workflow_toml(&[("a", "ok")], ""),
    )
    .await;
    let dispatcher = app.dispatcher(vec![endpoint(&url)], vec![Duration::from_millis(10); 2]);
    dispatcher.sync_endpoints().await.unwrap();
    app.signup(&signup_body("acme")).await;
    dispatch_until(&dispatcher, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE state = 'failed'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    assert_eq!(
        receiver.got.lock().unwrap().len(),
        3,
        "one attempt plus two retries"
    );
    let d: Value = app
        .ops(Method::GET, "/v1/deliveries", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["deliveries"][0]["state"], "failed");
    assert_eq!(d["deliveries"][0]["last_status"], 503);
}

#[tokio::test]
async fn a_webhook_host_that_resolves_to_a_non_global_address_is_never_sent_to() {
    let (receiver, url) = start_receiver(vec![]).await;
    let app = spawn_app(
        Registry::new().with("ok", Succeed::default()),
        &workflow_toml(&[("a", "ok")], ""),
    )
    .await;
    // `localhost` resolves to loopback: refused unless development allows loopback.
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let by_name = WebhookEndpoint {
        url: format!("http://localhost:{port}/hook"),
        secret: Secret::parse(RECEIVER_SECRET).unwrap(),
        name: Some("internal".into()),
    };
    let dispatcher = vend::engine::dispatcher::Dispatcher::new(
        app.pool.clone(),
        vend::engine::dispatcher::DispatcherConfig {
            webhooks: vec![by_name],
            bus: None,
            retry_schedule: vec![Duration::from_secs(60)],
            timeout: Duration::from_secs(5),
            lease: Duration::from_secs(15),
            poll_interval: Duration::from_millis(50),
            batch: 10,
            allow_loopback: false,
            include_owner_email: false,
        },
        vend::telemetry::Metrics::new(),
    );
    dispatcher.sync_endpoints().await.unwrap();
    app.signup(&signup_body("acme")).await;
    assert_eq!(dispatcher.dispatch_once().await.unwrap(), 1);
    assert!(
        receiver.got.lock().unwrap().is_empty(),
        "sent to a loopback address"
    );
    let d: Value = app
        .ops(Method::GET, "/v1/deliveries?tenant=acme", None)
        .await
        .json()
        .await
        .unwrap();
    let d = &d["deliveries"][0];
    assert_eq!(d["endpoint"], "webhook:internal");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("resolves only"),
        "{d}"
    );
}

#[tokio::test]
async fn past_retention_signup_answers_and_finished_events_go_and_the_audit_trail_stays() {
    let (_receiver, url) = start_receiver(vec![]).await;
    let app = spawn_app(
        Registry::new().with("ok", Succeed::default()),
        &workflow_toml(&[("a", "ok")], ""),
    )
    .await;
    let dispatcher = app.dispatcher(vec![endpoint(&url)], vec![Duration::from_secs(60)]);
    dispatcher.sync_endpoints().await.unwrap();
    app.signup(&signup_body("done")).await;
    app.signup(&signup_body("waiting")).await;
    sqlx::query(
        "UPDATE deliveries SET state = 'delivered', due_at = NULL WHERE event_id IN
         (SELECT e.id FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.slug = 'done')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let history_before = count("SELECT count(*) FROM history").await;

    // Nothing is old enough yet.
    let keep = Duration::from_secs(30 * 86_400);
    let p = vend::db::retention::purge(&app.pool, keep, 100)
        .await
        .unwrap();
    assert_eq!((p.signup_answers, p.events), (0, 0));

    for sql in [
        "UPDATE signup_requests SET created_at = now() - interval '40 days'",
        "UPDATE events SET created_at = now() - interval '40 days'",
        "UPDATE deliveries SET created_at = now() - interval '40 days'",
    ] {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
    let p = vend::db::retention::purge(&app.pool, keep, 100)
        .await
        .unwrap();
    assert_eq!((p.signup_answers, p.events), (2, 1), "{p:?}");
    assert_eq!(count("SELECT count(*) FROM signup_requests").await, 0);
    // The event still being delivered stays until its delivery ends.
    assert_eq!(count("SELECT count(*) FROM events").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM deliveries WHERE state = 'pending'").await,
        1
    );
    assert_eq!(count("SELECT count(*) FROM tenants").await, 2);
    assert_eq!(count("SELECT count(*) FROM history").await, history_before);
}

#[tokio::test]
async fn an_operator_redelivers_a_failed_event_from_the_console_with_the_same_id() {
    use crate::console::{csrf_in, get, post, sign_in};
    use crate::support::{ALICE_TOKEN, READ_TOKEN};
    let (receiver, url) = start_receiver(vec![(503, None); 3]).await;
    let app = spawn_app(
        Registry::new().with("ok", Succeed::default()),
        &workflow_toml(&[("a", "ok")], ""),
    )
    .await;
    let dispatcher = app.dispatcher(vec![endpoint(&url)], vec![Duration::from_millis(10); 2]);
    dispatcher.sync_endpoints().await.unwrap();
    app.signup(&signup_body("acme")).await;
    let state = |slug: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT d.event_id::text, d.endpoint_id, d.state FROM deliveries d
                 JOIN events e ON e.id = d.event_id JOIN tenants t ON t.id = e.tenant_id
                 WHERE t.slug = $1",
            )
            .bind(slug)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // acme's tenant.created fails three times (the schedule's end); other's then goes through.
    dispatch_until(&dispatcher, || async { state("acme").await.2 == "failed" }).await;
    app.signup(&signup_body("other")).await;
    dispatch_until(&dispatcher, || async {
        state("other").await.2 == "delivered"
    })
    .await;
    let (event_id, endpoint_id, s) = state("acme").await;
    assert_eq!(s, "failed");
    let first_id = receiver.got.lock().unwrap()[0].id.clone();

    // A read-only operator sees the delivery but no button; one who may write redelivers it.
    let (reader, _) = sign_in(&app, READ_TOKEN).await;
    let (_, page) = get(&app, "/ui/tenants/acme", Some(&reader)).await;
    assert!(
        page.contains("id=\"deliveries\"") && page.contains("tenant.created"),
        "{page}"
    );
    assert!(!page.contains("Redeliver"), "{page}");
    let (cookie, _) = sign_in(&app, ALICE_TOKEN).await;
    let (_, page) = get(&app, "/ui/tenants/acme", Some(&cookie)).await;
    assert!(
        page.contains("Redeliver") && page.contains(&event_id),
        "{page}"
    );
    let csrf = csrf_in(&page);
    // Another tenant's event through acme's page, or no CSRF token: refused, nothing changes.
    let (other_event, _, _) = state("other").await;
    assert_eq!(
        post(
            &app,
            "/ui/tenants/acme/redeliver",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("event_id", &other_event),
                ("endpoint", &endpoint_id)
            ]
        )
        .await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        post(
            &app,
            "/ui/tenants/acme/redeliver",
            Some(&cookie),
            &[("event_id", &event_id), ("endpoint", &endpoint_id)]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(state("other").await.2, "delivered");
    assert_eq!(state("acme").await.2, "failed");

    assert_eq!(
        post(
            &app,
            "/ui/tenants/acme/redeliver",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("event_id", &event_id),
                ("endpoint", &endpoint_id)
            ]
        )
        .await,
        StatusCode::SEE_OTHER
    );
    dispatch_until(&dispatcher, || async {
        state("acme").await.2 == "delivered"
    })
    .await;
    assert_eq!(state("acme").await.2, "delivered");
    // Sent again under the same webhook-id, so a receiver that saw it before can tell.
    let got = receiver.got.lock().unwrap().clone();
    let acme: Vec<_> = got.iter().filter(|r| r.id == first_id).collect();
    assert_eq!(acme.len(), 4, "three failed attempts and the redelivery");
    let history: Value = app
        .ops(Method::GET, "/v1/tenants/acme/history", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        history.to_string().contains("operator.redeliver"),
        "{history}"
    );
}
