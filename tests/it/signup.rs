//! The signup webhook, as CONTRACT.md specifies it.

use serde_json::{Value, json};
use vend::engine::Registry;

use crate::support::steps::Succeed;
use crate::support::{TestApp, sign, signup_body, spawn_app, workflow_toml};

async fn app() -> TestApp {
    let registry = Registry::new().with("ok", Succeed::default());
    spawn_app(
        registry,
        &workflow_toml(&[("one", "ok"), ("two", "ok")], ""),
    )
    .await
}

#[tokio::test]
async fn a_signed_signup_is_accepted_and_stored_in_one_piece() {
    let app = app().await;
    let r = app.signup(&signup_body("acme")).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status_url"], "/v1/tenants/acme");
    assert_eq!(body["tenant"]["slug"], "acme");
    assert_eq!(body["tenant"]["state"], "pending");
    assert_eq!(body["tenant"]["tier"], "enterprise");
    assert_eq!(body["tenant"]["account_id"], Value::Null);

    // Tenant, run, its first step (due now; the second gets its row when the run reaches it),
    // history, outbox event and the idempotency record.
    assert_eq!(app.footprint().await, vec![1, 1, 1, 1, 1, 0, 1]);
    let due: Vec<(String, bool)> =
        sqlx::query_as("SELECT name, due_at IS NOT NULL FROM steps ORDER BY position")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(due, vec![("one".into(), true)]);
    // The status API shows every step of the workflow all the same.
    let t = app.tenant("acme").await;
    let steps: Vec<(&str, &str)> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, vec![("one", "pending"), ("two", "pending")]);
}

#[tokio::test]
async fn a_replayed_webhook_id_gets_the_first_answer_and_changes_nothing() {
    let app = app().await;
    let first = app.signup_with_id("msg_replay", &signup_body("acme")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let before = app.footprint().await;

    // Same id, even with another body: the original answer, nothing new stored.
    for body in [signup_body("acme"), signup_body("other")] {
        let again = app.signup_with_id("msg_replay", &body).await;
        assert_eq!(again.status(), 202);
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    assert_eq!(app.footprint().await, before);
}

#[tokio::test]
async fn a_taken_slug_from_another_request_is_a_conflict_and_stores_nothing() {
    let app = app().await;
    assert_eq!(app.signup(&signup_body("acme")).await.status(), 202);
    let before = app.footprint().await;
    let r = app.signup(&signup_body("acme")).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "slug_taken");
    assert_eq!(app.footprint().await, before);
}

#[tokio::test]
async fn concurrent_duplicates_create_one_tenant() {
    let app = std::sync::Arc::new(app().await);
    // The same webhook delivered 16 times at once, plus 8 other requests racing for the same slug.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let id = if i < 16 {
                "msg_dup".to_string()
            } else {
                format!("msg_other_{i}")
            };
            let r = app.signup_with_id(&id, &signup_body("racy")).await;
            (i, r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(app.count("tenants").await, 1);
    assert_eq!(app.count("runs").await, 1);
    assert_eq!(app.count("steps").await, 1, "one run, at its first step");
    let winners: Vec<_> = answers.iter().filter(|(_, s, _)| *s == 202).collect();
    let same_id_202 = winners.iter().filter(|(i, _, _)| *i < 16).count();
    // Either the duplicated webhook won (all 16 copies get the same 202) or another request did.
    if same_id_202 > 0 {
        assert_eq!(same_id_202, 16);
        assert!(winners.iter().all(|(_, _, b)| *b == winners[0].2));
        assert_eq!(winners.len(), 16);
    } else {
        assert_eq!(winners.len(), 1);
    }
    for (_, s, b) in &answers {
        assert!(
            *s == 202 || (*s == 409 && b["error"]["code"] == "slug_taken"),
            "{s} {b}"
        );
    }
}

/// The group commit's statement, fed directly: fresh signups, a slug taken before, a slug twice in one
/// batch, and then a batch carrying a used webhook-id with another slug (the statement fails whole and
/// each signup is written alone). Each gets its own outcome; only the winners leave rows.
#[tokio::test]
async fn signups_written_in_one_statement_each_get_their_own_outcome() {
    use vend::db::tenants::{SignupInsert, StoredAnswer, insert_signups};
    let app = app().await;
    assert_eq!(
        app.signup_with_id("msg_old", &signup_body("taken"))
            .await
            .status(),
        202
    );
    let workflow = app.workflows.for_tier(vend::domain::Tier::Enterprise);
    let new = |slug: &str, id: &str| {
        let body = serde_json::to_vec(&signup_body(slug)).unwrap();
        let signup = vend::domain::Signup::parse(&body).unwrap();
        let tenant = vend::lifecycle::signup::new_tenant(&signup, workflow, None, id);
        let answer = StoredAnswer {
            status: 202,
            response: json!({"for": id}),
        };
        vend::lifecycle::signup::prepare(tenant, workflow, answer)
    };

    let batch = [
        new("fresh-one", "msg_1"),
        new("taken", "msg_2"),
        new("twice", "msg_3"),
        new("twice", "msg_4"),
        new("fresh-two", "msg_5"),
    ];
    let outcomes = insert_signups(&app.pool, &batch).await.unwrap();
    use SignupInsert::*;
    assert_eq!(
        outcomes,
        [Inserted, SlugTaken, Inserted, SlugTaken, Inserted]
    );
    // The old tenant plus three; each with its run, first step, history, event and answer.
    assert_eq!(app.footprint().await, vec![4, 4, 4, 4, 4, 0, 4]);
    let answers: Vec<(String, String)> = sqlx::query_as(
        "SELECT s.webhook_id, t.slug FROM signup_requests s JOIN tenants t ON t.id = s.tenant_id
         ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected = [
        ("msg_1", "fresh-one"),
        ("msg_3", "twice"),
        ("msg_5", "fresh-two"),
        ("msg_old", "taken"),
    ];
    assert_eq!(
        answers,
        expected.map(|(a, b)| (a.to_owned(), b.to_owned())),
        "each answer belongs to its own tenant"
    );

    let batch = [
        new("fresh-three", "msg_6"),
        new("another", "msg_1"),
        new("fresh-four", "msg_7"),
    ];
    let outcomes = insert_signups(&app.pool, &batch).await.unwrap();
    assert_eq!(outcomes, [Inserted, WebhookIdTaken, Inserted]);
    assert_eq!(app.footprint().await, vec![6, 6, 6, 6, 6, 0, 6]);
    for slug in ["fresh-one", "twice", "fresh-three", "fresh-four"] {
        assert_eq!(app.tenant(slug).await["state"], "pending", "{slug}");
    }
}

/// Many signups at once, as the group commit batches them: every distinct one accepted, every
/// replay answered with its original, every slug raced by another request refused, nothing lost.
#[tokio::test]
async fn a_burst_of_signups_is_stored_exactly_once_each() {
    let app = std::sync::Arc::new(app().await);
    let mut tasks = Vec::new();
    for i in 0..300 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            // 200 distinct signups; each of the first 50 also sent again with its id (a replay)
            // and raced by another id for its slug.
            let (id, slug) = match i {
                0..200 => (format!("msg_{i}"), format!("burst-{i}")),
                200..250 => (format!("msg_{}", i - 200), format!("burst-{}", i - 200)),
                _ => (format!("msg_rival_{i}"), format!("burst-{}", i - 250)),
            };
            let r = app.signup_with_id(&id, &signup_body(&slug)).await;
            (i, r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(app.footprint().await, vec![200, 200, 200, 200, 200, 0, 200]);
    for (i, status, body) in &answers {
        match i {
            0..200 => {
                // Only a rival can have won an original's slug, and then the original is refused.
                if *status == 409 {
                    assert!(*i < 50, "{i}");
                    assert_eq!(body["error"]["code"], "slug_taken");
                } else {
                    assert_eq!(*status, 202, "{i} {body}");
                    assert_eq!(body["tenant"]["slug"], format!("burst-{i}"));
                }
            }
            200..250 => {
                let original = &answers[i - 200];
                assert_eq!((*status, body), (original.1, &original.2), "replay {i}");
            }
            _ => {
                let original = &answers[i - 250];
                assert!(
                    (*status == 409) != (original.1 == 409),
                    "exactly one of the original and its rival wins: {i} {status} {body}"
                );
            }
        }
    }
}

/// Sends a raw request and checks status and error code, and that nothing was stored.
async fn expect_refused(app: &TestApp, req: reqwest::RequestBuilder, status: u16, code: &str) {
    let before = app.footprint().await;
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
    assert_eq!(
        r.headers().get("content-type").unwrap().to_str().unwrap(),
        "application/json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(
        app.footprint().await,
        before,
        "a refused signup stored something"
    );
}

fn signed(
    app: &TestApp,
    id: &str,
    ts: i64,
    body: Vec<u8>,
    sig: Option<String>,
) -> reqwest::RequestBuilder {
    let sig = sig.unwrap_or_else(|| sign(id, ts, &body));
    app.http
        .post(format!("{}/v1/signup", app.base))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
}

#[tokio::test]
async fn every_bad_request_gets_its_code_and_stores_nothing() {
    let app = app().await;
    let now = chrono::Utc::now().timestamp();
    let good = serde_json::to_vec(&signup_body("acme")).unwrap();

    // 400: bodies and fields.
    let mut bad_bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"[]".to_vec(),
        serde_json::to_vec(&json!({"slug": "acme"})).unwrap(),
    ];
    for (field, value) in [
        ("slug", json!("ab")),
        ("slug", json!("Acme")),
        ("slug", json!("acme-")),
        ("slug", json!("1acme")),
        ("slug", json!(7)),
        ("slug", json!("xn--acme")),
        ("slug", json!("ac--me")),
        // aws+<40 characters>@tenants.example.test is 65 characters: AWS takes at most 64.
        ("slug", json!("a".repeat(40))),
        ("name", json!("")),
        ("name", json!("x".repeat(201))),
        ("owner_email", json!("nobody")),
        ("tier", json!("platinum")),
    ] {
        let mut b = signup_body("acme");
        b[field] = value;
        bad_bodies.push(serde_json::to_vec(&b).unwrap());
    }
    let mut extra = signup_body("acme");
    extra["admin"] = json!(true);
    bad_bodies.push(serde_json::to_vec(&extra).unwrap());
    for body in bad_bodies {
        expect_refused(
            &app,
            signed(&app, "msg_1", now, body, None),
            400,
            "invalid_body",
        )
        .await;
    }

    // 400 reserved_slug: built in, and configured (VEND_RESERVED_SLUGS).
    for slug in [
        "www",
        "api",
        "admin",
        "status",
        "pool",
        "login",
        "globex-reserved",
    ] {
        expect_refused(
            &app,
            signed(
                &app,
                "msg_1",
                now,
                serde_json::to_vec(&signup_body(slug)).unwrap(),
                None,
            ),
            400,
            "reserved_slug",
        )
        .await;
    }

    // 401: signatures and timestamps.
    expect_refused(
        &app,
        signed(&app, "msg_1", now, good.clone(), Some("v1,".into())),
        401,
        "unauthorized",
    )
    .await;
    expect_refused(
        &app,
        signed(&app, "msg_1", now, good.clone(), Some("v1,AAAA".into())),
        401,
        "unauthorized",
    )
    .await;
    let wrong_body_sig = sign("msg_1", now, b"{}");
    expect_refused(
        &app,
        signed(&app, "msg_1", now, good.clone(), Some(wrong_body_sig)),
        401,
        "unauthorized",
    )
    .await;
    expect_refused(
        &app,
        signed(
            &app,
            "msg_1",
            chrono::Utc::now().timestamp() - 400,
            good.clone(),
            None,
        ),
        401,
        "unauthorized",
    )
    .await;
    expect_refused(
        &app,
        signed(
            &app,
            "msg_1",
            chrono::Utc::now().timestamp() + 400,
            good.clone(),
            None,
        ),
        401,
        "unauthorized",
    )
    .await;
    let unsigned = app
        .http
        .post(format!("{}/v1/signup", app.base))
        .header("content-type", "application/json")
        .body(good.clone());
    expect_refused(&app, unsigned, 401, "unauthorized").await;

    // 413: over 64 KiB, even when correctly signed.
    let mut big = signup_body("acme");
    big["name"] = json!("x".repeat(70 * 1024));
    let big = serde_json::to_vec(&big).unwrap();
    expect_refused(
        &app,
        signed(&app, "msg_1", now, big, None),
        413,
        "payload_too_large",
    )
    .await;

    // 415: not JSON.
    let form = app
        .http
        .post(format!("{}/v1/signup", app.base))
        .header("content-type", "text/plain")
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", sign("msg_1", now, &good))
        .body(good.clone());
    expect_refused(&app, form, 415, "unsupported_media_type").await;

    // And the same request, correct, is accepted afterwards: none of the refusals left a trace.
    assert_eq!(
        signed(&app, "msg_1", now, good, None)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
}
