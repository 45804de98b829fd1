//! The `vend` binary: the CLI over a live ops API, and `serve`'s start-up checks.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use vend::domain::StepError;
use vend::engine::Registry;

use crate::support::steps::{Calls, FailTimes, Succeed};
use crate::support::{OPS_TOKEN, TestApp, signup_body, spawn_app, workflow_toml};

pub(crate) async fn vend(app: &TestApp, args: &[&str]) -> Output {
    vend_with(
        args,
        &[
            ("VEND_URL", app.base.as_str()),
            ("VEND_OPS_TOKEN", OPS_TOKEN),
        ],
    )
    .await
}

async fn vend_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vend"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn cli_lists_shows_retries_requeues_and_watches() {
    let calls = Calls::default();
    let registry = Registry::new().with("ok", Succeed::default()).with(
        "once",
        FailTimes {
            times: 1,
            error: StepError::permanent("Quota", "raise the quota first"),
            calls: calls.clone(),
        },
    );
    let app = spawn_app(
        registry,
        &workflow_toml(&[("first", "ok"), ("second", "once")], ""),
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));

    // watch follows the tenant until it fails and exits non-zero.
    let o = vend(
        &app,
        &[
            "tenants",
            "watch",
            "acme",
            "--interval",
            "50ms",
            "--timeout",
            "20s",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("failed at second: raise the quota first"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("second"), "{}", stdout(&o));

    let o = vend(&app, &["tenants", "list"]).await;
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.starts_with("SLUG"), "{out}");
    assert!(out.contains("acme") && out.contains("failed"), "{out}");

    let o = vend(&app, &["tenants", "list", "--json", "--state", "failed"]).await;
    let page: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(page["tenants"][0]["slug"], "acme");

    let o = vend(&app, &["tenants", "show", "acme"]).await;
    assert!(
        stdout(&o).contains("raise the quota first"),
        "{}",
        stdout(&o)
    );
    let o = vend(&app, &["tenants", "show", "acme", "--json"]).await;
    let t: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t["steps"][1]["state"], "failed");

    let o = vend(&app, &["tenants", "retry", "acme"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = vend(
        &app,
        &[
            "tenants",
            "watch",
            "acme",
            "--interval",
            "50ms",
            "--timeout",
            "20s",
        ],
    )
    .await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("acme is active"));

    let o = vend(
        &app,
        &["tenants", "requeue", "acme", "--from", "second", "--json"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    app.wait_for_state("acme", &["active"], Duration::from_secs(20))
        .await;
    engine.stop().await;
    assert_eq!(calls.get("acme"), 3);

    let o = vend(&app, &["tenants", "history", "acme"]).await;
    let h = stdout(&o);
    assert!(
        h.contains("operator.retry") && h.contains("operator.requeue"),
        "{h}"
    );
}

#[tokio::test]
async fn cli_errors_exit_non_zero_with_the_apis_message() {
    let app = spawn_app(
        Registry::new().with("ok", Succeed::default()),
        &workflow_toml(&[("a", "ok")], ""),
    )
    .await;
    let o = vend(&app, &["tenants", "show", "nobody"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));

    let o = vend(&app, &["tenants", "requeue", "nobody", "--from", "a"]).await;
    assert!(!o.status.success());

    let o = vend_with(
        &["tenants", "list"],
        &[
            ("VEND_URL", &app.base),
            ("VEND_OPS_TOKEN", "wrong-token-0123456789"),
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("401") && stderr(&o).contains("VEND_OPS_TOKEN"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("wrong-token"),
        "the token must not be echoed"
    );

    let o = vend_with(&["tenants", "list"], &[("VEND_URL", "http://127.0.0.1:9")]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("VEND_OPS_TOKEN"));

    let o = vend_with(
        &["tenants", "list"],
        &[
            ("VEND_URL", "http://127.0.0.1:9"),
            ("VEND_OPS_TOKEN", OPS_TOKEN),
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
}

#[tokio::test]
async fn serve_refuses_to_start_with_missing_or_bad_configuration() {
    let o = vend_with(&["serve"], &[]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DATABASE_URL"), "{}", stderr(&o));

    let secret = "whsec_c2VjcmV0LXZhbHVlLW5vdC10by1sZWFr";
    let o = vend_with(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
            ("VEND_SIGNUP_SECRET", "plain-secret-value"),
            ("VEND_OPS_TOKEN", OPS_TOKEN),
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("VEND_SIGNUP_SECRET"));
    assert!(!stderr(&o).contains("plain-secret-value"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "name = \"bad\"\ntiers = [\"free\", \"pro\", \"enterprise\"]\n[[steps]]\nname = \"x\"\nkind = \"teleport\"\n").unwrap();
    let o = vend_with(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://x@127.0.0.1:9/x"),
            ("VEND_SIGNUP_SECRET", secret),
            ("VEND_OPS_TOKEN", OPS_TOKEN),
            ("VEND_WORKFLOWS_DIR", dir.path().to_str().unwrap()),
        ],
    )
    .await;
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("bad.toml") && e.contains("unknown step kind \"teleport\""),
        "{e}"
    );
}

/// `vend serve` as a process against moto, configured only by environment: a signup becomes an active
/// tenant, followed by `vend tenants watch`.
#[tokio::test]
async fn serve_vends_a_tenant_against_moto() {
    let moto = crate::support::moto::start().await;
    let sdk = crate::support::moto::sdk(&moto.url).await;
    crate::support::moto::prepare_management(&sdk).await;
    let (_pool, db_url) = crate::support::postgres::fresh_database().await;
    let port = crate::support::postgres::free_port();
    let listen = format!("127.0.0.1:{port}");
    let root = crate::support::postgres::repo_root();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vend"))
        .arg("serve")
        .current_dir(root)
        .env_clear()
        .env("DATABASE_URL", &db_url)
        .env("VEND_LISTEN", &listen)
        .env("VEND_SIGNUP_SECRET", crate::support::SIGNUP_SECRET)
        .env("VEND_OPS_TOKEN", OPS_TOKEN)
        .env("VEND_BASE_DOMAIN", crate::support::moto::BASE_DOMAIN)
        .env(
            "VEND_CERTIFICATE_ARN",
            crate::support::moto::CERTIFICATE_ARN,
        )
        .env("VEND_WORKFLOWS_DIR", root.join("workflows"))
        .env("VEND_POLL_INTERVAL", "100ms")
        .env("VEND_OFFBOARD_GRACE", "0s")
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_REGION", crate::support::moto::REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if tokio::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            child.start_kill().ok();
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "vend serve did not become ready: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = serde_json::to_vec(&signup_body("acme")).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let r = client
        .post(format!("{base}/v1/signup"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_serve")
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            crate::support::sign("msg_serve", ts, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The shipped workflow polls every 10 s: allow a few polls.
    let o = vend_with(
        &[
            "tenants",
            "watch",
            "acme",
            "--interval",
            "200ms",
            "--timeout",
            "120s",
        ],
        &[("VEND_URL", &base), ("VEND_OPS_TOKEN", OPS_TOKEN)],
    )
    .await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("acme is active at https://acme.tenants.example.test"),
        "{}",
        stdout(&o)
    );

    let ops = [("VEND_URL", base.as_str()), ("VEND_OPS_TOKEN", OPS_TOKEN)];
    // A fleet rollout from the CLI, driven by vend serve with the shipped rollout workflow.
    let o = vend_with(
        &["fleet", "rollout", "start", "--stack", "tenant", "--json"],
        &ops,
    )
    .await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let started: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let o = vend_with(&["fleet", "rollout", "status", &id], &ops).await;
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        if stdout(&o).contains("completed") {
            assert!(stdout(&o).contains("1 of 1 updated"), "{}", stdout(&o));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", stdout(&o));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Offboarded from the CLI with the shipped offboard workflow: watched until closed.
    let o = vend_with(
        &["tenants", "offboard", "acme", "--reason", "cli test"],
        &ops,
    )
    .await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("offboarding acme"), "{}", stdout(&o));
    let o = vend_with(
        &[
            "tenants",
            "watch",
            "acme",
            "--interval",
            "200ms",
            "--timeout",
            "120s",
        ],
        &ops,
    )
    .await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("acme is closed"), "{}", stdout(&o));
    let o = vend_with(&["tenants", "restore", "acme"], &ops).await;
    assert!(!o.status.success(), "restoring a closed tenant must fail");
    assert!(stderr(&o).contains("409"), "{}", stderr(&o));
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    for secret in [crate::support::SIGNUP_SECRET, OPS_TOKEN, "whsec_"] {
        assert!(!log.contains(secret), "the log contains a secret");
    }
}
