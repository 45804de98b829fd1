//! The ops console in a real browser (headless Chromium over WebDriver): sign in with a token, filter
//! the tenants, open a failed one, retry it through the confirmation, and watch the page update itself
//! until the tenant is active; then the fleet page.
//!
//! With `VEND_SCREENSHOTS=DIR` it also saves the pages it visits as PNGs (docs/screenshots is made so).

use std::path::PathBuf;
use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::steps::{Calls, WaitTimes};
use crate::support::{ALICE_TOKEN, signup_body, spawn_app, workflow_toml};

const WITHIN: Duration = Duration::from_secs(30);

fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("VEND_SCREENSHOTS").map(PathBuf::from)
}

#[tokio::test]
async fn an_operator_retries_a_failed_tenant_in_the_browser_and_sees_it_become_active() {
    let registry = crate::support::steps::ok_and_fails_once(Calls::default())
        // After the retry, a few polls: the page must follow the tenant while it moves, by itself.
        .with(
            "slow",
            WaitTimes {
                times: 3,
                after: Duration::from_millis(700),
                calls: Calls::default(),
            },
        );
    let app = spawn_app(
        registry,
        &workflow_toml(
            &[("first", "ok"), ("second", "once"), ("third", "slow")],
            "",
        ),
    )
    .await;
    // Two failed tenants, and one still pending (signed up with no worker running) that the filter
    // must leave out.
    app.signup(&signup_body("acme")).await;
    app.signup(&signup_body("zeta")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["failed"], WITHIN).await;
    app.wait_for_state("zeta", &["failed"], WITHIN).await;
    engine.stop().await;
    app.signup(&signup_body("beta")).await;

    let shots = screenshot_dir();
    let b = Browser::start().await;
    b.goto(&format!("{}/ui", app.base)).await;
    b.type_into("input[name=token]", ALICE_TOKEN).await;
    b.click("form[action='/ui/login'] button").await;
    b.wait_for_text("h1", "Tenants", WITHIN).await;

    // Filter: only failed tenants.
    b.click("select[name=state] option[value=failed]").await;
    b.click("form[action='/ui'] button").await;
    // The page before showed all three; the filtered one shows the failed two and not beta.
    b.wait_for("main table", WITHIN, |t| {
        t.contains("acme") && t.contains("zeta") && !t.contains("beta")
    })
    .await;
    // And by slug.
    b.type_into("input[name=slug]", "zeta").await;
    b.click("form[action='/ui'] button").await;
    b.wait_for("main table", WITHIN, |t| {
        t.contains("zeta") && !t.contains("acme")
    })
    .await;
    if let Some(d) = &shots {
        b.goto(&format!("{}/ui", app.base)).await;
        b.screenshot(&d.join("console-tenants.png")).await;
    }

    // The failed tenant: which step failed and why.
    b.goto(&format!("{}/ui?state=failed", app.base)).await;
    b.click("a[href='/ui/tenants/acme']").await;
    b.wait_for_text("h1", "failed", WITHIN).await;
    let steps = b.text("#live table").await;
    assert!(
        steps.contains("second") && steps.contains("QuotaExceeded"),
        "{steps}"
    );
    if let Some(d) = &shots {
        b.screenshot(&d.join("console-tenant-failed.png")).await;
    }

    // Retry, through its confirmation; the page then follows the tenant on its own to active.
    let engine = app.start_engine(app.engine_config("w1"));
    b.click("form[action='/ui/tenants/acme/retry'] button")
        .await;
    b.accept_dialog().await;
    b.wait_for_text("h1", "provisioning", WITHIN).await;
    if let Some(d) = &shots {
        b.screenshot(&d.join("console-tenant-provisioning.png"))
            .await;
    }
    b.wait_for_text("h1", "active", WITHIN).await;
    let steps = b.text("#live table").await;
    assert_eq!(
        steps.matches("succeeded").count(),
        3,
        "every step succeeded: {steps}"
    );
    // The timeline followed too: the failed attempt, the retried one, the waits and the last.
    assert!(
        b.try_find("svg.timeline rect.span[fill='#b91c1c']")
            .await
            .is_some()
    );
    assert!(
        b.try_find("svg.timeline rect.span[fill='#d97706']")
            .await
            .is_some()
    );
    if let Some(d) = &shots {
        b.screenshot(&d.join("console-tenant-active.png")).await;
    }
    engine.stop().await;
    assert_eq!(app.tenant("acme").await["state"], "active");

    // The fleet page, from the header: this hour's signups and activations drawn as bars.
    b.click("header nav a[href='/ui/fleet']").await;
    b.wait_for_text("h1", "Fleet", WITHIN).await;
    assert!(b.try_find("svg.chart rect.bar").await.is_some());
    if let Some(d) = &shots {
        b.screenshot(&d.join("console-fleet.png")).await;
    }
}
