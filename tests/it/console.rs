//! The ops console over HTTP as a browser speaks it: the login form, the session cookie's flags, the
//! tenant pages, and actions that need the session, its CSRF token and the write scope.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use vend::engine::Registry;

use crate::support::steps::{Calls, Succeed};
use crate::support::{ALICE_TOKEN, READ_TOKEN, TestApp, signup_body, spawn_app, workflow_toml};

const WITHIN: Duration = Duration::from_secs(30);

/// An `application/x-www-form-urlencoded` body, as a browser posts a form.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the session cookie (`name=value`) and the raw Set-Cookie header.
pub(crate) async fn sign_in(app: &TestApp, token: &str) -> (String, String) {
    let r = client()
        .post(format!("{}/ui/login", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let pair = set.split(';').next().unwrap().trim().to_owned();
    (pair, set)
}

pub(crate) async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut req = client().get(format!("{}{path}", app.base));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

pub(crate) async fn post(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> StatusCode {
    let mut req = client()
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(fields));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap().status()
}

/// The CSRF token in a page's forms.
pub(crate) fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    html[at + 19..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_console_logs_in_shows_tenants_and_retries_only_with_session_and_csrf() {
    let calls = Calls::default();
    let registry = crate::support::steps::ok_and_fails_once(calls.clone());
    let app = spawn_app(
        registry,
        &workflow_toml(&[("first", "ok"), ("second", "once")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["failed"], WITHIN).await;

    // Without a session: the login form, and nothing else.
    let (status, html) = get(&app, "/ui", None).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("name=\"token\"") && !html.contains("acme"),
        "{html}"
    );
    let (status, _) = get(&app, "/ui/tenants/acme", None).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "no session: back to the login"
    );
    let bad = client()
        .post(format!("{}/ui/login", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", "not-a-token-at-all")]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().get("set-cookie").is_none());

    let (cookie, set) = sign_in(&app, ALICE_TOKEN).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
    assert!(
        !set.contains("Secure"),
        "plain http in tests: no Secure flag"
    );
    let (status, html) = get(&app, "/ui", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("/ui/tenants/acme") && html.contains("failed"),
        "{html}"
    );
    let (_, filtered) = get(&app, "/ui?state=active", Some(&cookie)).await;
    assert!(!filtered.contains("/ui/tenants/acme"), "{filtered}");

    // The tenant page: every step with its state and attempts, and why it stopped.
    let (status, page) = get(&app, "/ui/tenants/acme", Some(&cookie)).await;
    assert_eq!(status, 200);
    for want in [
        "first",
        "second",
        "succeeded",
        "failed",
        "QuotaExceeded",
        "raise the quota first",
    ] {
        assert!(page.contains(want), "the tenant page lacks {want:?}");
    }
    // The attempt timeline: a bar for each ended attempt, in its step's lane, saying how it ended.
    assert_eq!(page.matches("<rect class=\"span\"").count(), 2, "{page}");
    for want in [
        "<title>first · attempt 1 · step.succeeded · step succeeded</title>",
        "<title>second · attempt 1 · step.failed · step failed: QuotaExceeded: raise the quota first</title>",
    ] {
        assert!(page.contains(want), "the timeline lacks {want:?}: {page}");
    }
    let csrf = csrf_in(&page);

    // Actions need the session and its CSRF token: 403 and nothing done without either.
    assert_eq!(
        post(&app, "/ui/tenants/acme/retry", None, &[("csrf", &csrf)]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&app, "/ui/tenants/acme/retry", Some(&cookie), &[]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(
            &app,
            "/ui/tenants/acme/retry",
            Some(&cookie),
            &[("csrf", "0000")]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.tenant("acme").await["state"], "failed");

    // A read-only token sees no actions, and its session may not act.
    let (reader, _) = sign_in(&app, READ_TOKEN).await;
    let (_, read_page) = get(&app, "/ui/tenants/acme", Some(&reader)).await;
    assert!(!read_page.contains("/ui/tenants/acme/retry"), "{read_page}");
    let read_csrf = csrf_in(&read_page);
    assert_eq!(
        post(
            &app,
            "/ui/tenants/acme/retry",
            Some(&reader),
            &[("csrf", &read_csrf)]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.tenant("acme").await["state"], "failed");

    // With both: the retry goes through, by alice, and the tenant becomes active.
    assert_eq!(
        post(
            &app,
            "/ui/tenants/acme/retry",
            Some(&cookie),
            &[("csrf", &csrf)]
        )
        .await,
        StatusCode::SEE_OTHER
    );
    app.wait_for_state("acme", &["active"], WITHIN).await;
    let history = app.history("acme").await;
    assert!(
        history
            .iter()
            .any(|e| e["kind"] == "operator.retry" && e["actor"] == "alice"),
        "{history:#?}"
    );

    // Signing out ends the session.
    assert_eq!(
        post(&app, "/ui/logout", Some(&cookie), &[("csrf", &csrf)]).await,
        StatusCode::SEE_OTHER
    );
    let (_, html) = get(&app, "/ui", Some(&cookie)).await;
    assert!(html.contains("name=\"token\""), "{html}");
    engine.stop().await;
}

#[tokio::test]
async fn a_bulk_retry_in_the_console_shows_the_count_first_and_needs_session_csrf_and_write() {
    let calls = Calls::default();
    let registry = crate::support::steps::ok_and_fails_once(calls.clone());
    let app = spawn_app(
        registry,
        &workflow_toml(&[("first", "ok"), ("second", "once")], ""),
    )
    .await;
    for s in ["acme", "globex"] {
        app.signup(&signup_body(s)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for s in ["acme", "globex"] {
        app.wait_for_state(s, &["failed"], WITHIN).await;
    }
    let (cookie, _) = sign_in(&app, ALICE_TOKEN).await;
    let (_, list) = get(&app, "/ui?state=failed", Some(&cookie)).await;
    assert!(list.contains("href=\"/ui/retries\""), "{list}");

    // The dry run: the count and the tenants, nothing changed.
    let (status, dry) = get(&app, "/ui/retries?step=second", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(dry.contains("2 failed tenants match"), "{dry}");
    assert!(dry.contains("acme") && dry.contains("globex") && dry.contains("QuotaExceeded"));
    let (_, none) = get(&app, "/ui/retries?error_code=Other", Some(&cookie)).await;
    assert!(none.contains("0 failed tenants match"), "{none}");
    let csrf = csrf_in(&dry);
    assert_eq!(app.tenant("acme").await["state"], "failed");

    // Without the CSRF token, or with a read-only session: 403, nothing retried.
    assert_eq!(
        post(&app, "/ui/retries", Some(&cookie), &[("step", "second")]).await,
        StatusCode::FORBIDDEN
    );
    let (reader, _) = sign_in(&app, READ_TOKEN).await;
    let (_, read_dry) = get(&app, "/ui/retries", Some(&reader)).await;
    assert!(read_dry.contains("2 failed tenants match"), "{read_dry}");
    assert!(
        !read_dry.contains("method=\"post\" action=\"/ui/retries\""),
        "{read_dry}"
    );
    let read_csrf = csrf_in(&read_dry);
    assert_eq!(
        post(&app, "/ui/retries", Some(&reader), &[("csrf", &read_csrf)]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(calls.get("acme"), 1);
    assert_eq!(app.tenant("globex").await["state"], "failed");

    // Confirmed: both are retried, by alice, and become active.
    assert_eq!(
        post(
            &app,
            "/ui/retries",
            Some(&cookie),
            &[("csrf", &csrf), ("step", "second"), ("error_code", "")]
        )
        .await,
        StatusCode::OK
    );
    for s in ["acme", "globex"] {
        app.wait_for_state(s, &["active"], WITHIN).await;
        let h = app.history(s).await;
        assert!(
            h.iter()
                .any(|e| e["kind"] == "operator.retry" && e["actor"] == "alice"),
            "{s}"
        );
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_tenants_history_shows_the_newest_entries_first_and_pages_back() {
    let registry = Registry::new().with("ok", Succeed::default());
    let app = spawn_app(registry, &workflow_toml(&[("first", "ok")], "")).await;
    app.signup(&signup_body("acme")).await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'acme'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    for i in 0..150 {
        let message = format!("operator note {i:03}");
        vend::db::history::append(
            &app.pool,
            id,
            &vend::db::history::NewEntry::new(vend::domain::HistoryKind::OperatorRetry, &message),
        )
        .await
        .unwrap();
    }
    let (cookie, _) = sign_in(&app, ALICE_TOKEN).await;
    let (status, first) = get(&app, "/ui/tenants/acme", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(
        first.contains("operator note 149"),
        "the newest entry is on the first page"
    );
    assert!(first.contains("operator note 050") && !first.contains("operator note 049"));
    assert!(
        first.find("note 149").unwrap() < first.find("note 148").unwrap(),
        "newest first"
    );
    let at = first
        .find("?history_before=")
        .expect("a link to older entries");
    let before: String = first[at + 16..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let (_, older) = get(
        &app,
        &format!("/ui/tenants/acme?history_before={before}"),
        Some(&cookie),
    )
    .await;
    assert!(older.contains("operator note 049") && older.contains("operator note 000"));
    assert!(!older.contains("operator note 050"), "no entry twice");
    assert!(
        older.contains("signup accepted"),
        "the oldest entry on the last page"
    );
    assert!(
        !older.contains("?history_before="),
        "the last page has no older link"
    );
}

#[tokio::test]
async fn the_fleet_page_charts_this_hours_signups_and_activations() {
    let registry = crate::support::steps::ok_and_fails_once(Calls::default());
    let app = spawn_app(registry, &workflow_toml(&[("first", "ok")], "")).await;
    for slug in ["acme", "beta", "gamma"] {
        app.signup(&signup_body(slug)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in ["acme", "beta", "gamma"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    engine.stop().await;
    app.signup(&signup_body("delta")).await;

    let (status, _) = get(&app, "/ui/fleet", None).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "no session: back to the login"
    );
    let (cookie, _) = sign_in(&app, READ_TOKEN).await;
    let (status, html) = get(&app, "/ui/fleet", Some(&cookie)).await;
    assert_eq!(status, 200);
    let hour = chrono::Utc::now().format("%H:00").to_string();
    // Signed up this hour: four; active: three (the hour may just have turned: then the bars are in
    // the previous one, and the totals say the same).
    assert!(
        html.contains("<strong>4</strong> signups")
            && html.contains("<strong>3</strong> activations"),
        "{html}"
    );
    assert!(
        html.contains(&format!("{hour} · signups: 4"))
            || !html.contains(&format!("{hour} · signups")),
        "{html}"
    );
    assert!(html.contains("<svg"), "{html}");
    assert!(
        html.contains(r#"id="slots-in-use">0<"#) && html.contains(r#"id="slots-waiting">0<"#),
        "{html}"
    );
    assert!(html.contains("None in the last hour."), "{html}");

    // Two replicas add the throttles they saw: the page shows their sum per service.
    vend::db::fleet::record_throttles(&app.pool, &[("organizations".into(), 3)])
        .await
        .unwrap();
    vend::db::fleet::record_throttles(
        &app.pool,
        &[("organizations".into(), 2), ("cloudformation".into(), 1)],
    )
    .await
    .unwrap();
    let (_, html) = get(&app, "/ui/fleet", Some(&cookie)).await;
    assert!(
        html.contains("organizations: <strong>5</strong>")
            && html.contains("cloudformation: <strong>1</strong>"),
        "{html}"
    );
}

#[tokio::test]
async fn a_tenant_queued_for_a_create_account_slot_shows_its_place_in_line() {
    let registry = Registry::new().with("ok", Succeed::default());
    let app = spawn_app(registry, &workflow_toml(&[("first", "ok")], "")).await;
    for slug in ["acme", "beta", "gamma"] {
        app.signup(&signup_body(slug)).await;
    }
    // The three wait for a slot, in signup order (as create_account leaves them when all are taken).
    sqlx::query(
        "UPDATE steps s SET state = 'waiting', wait_reason = 'slot', due_at = now() + interval '1 hour',
                started_at = t.created_at
         FROM runs r JOIN tenants t ON t.id = r.tenant_id WHERE s.run_id = r.id",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (cookie, _) = sign_in(&app, READ_TOKEN).await;
    for (slug, place) in [("acme", "1st"), ("beta", "2nd"), ("gamma", "3rd")] {
        let (status, html) = get(&app, &format!("/ui/tenants/{slug}"), Some(&cookie)).await;
        assert_eq!(status, 200);
        assert!(
            html.contains(&format!(
                "queued for a CreateAccount slot (AWS allows 5 in flight), {place} in line"
            )),
            "{slug}: {html}"
        );
    }
    let (_, html) = get(&app, "/ui/fleet", Some(&cookie)).await;
    assert!(html.contains(r#"id="slots-waiting">3<"#), "{html}");
}
