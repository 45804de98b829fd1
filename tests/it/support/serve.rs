//! `vend serve` as real processes (to be killed with SIGKILL, restarted, run side by side), and a
//! webhook receiver that records every progress event it is sent.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::postgres::{free_port, on_exit, repo_root};
use super::{OPS_TOKEN, SIGNUP_SECRET};

pub const RECEIVER_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Everything a `vend serve` process of the tests is configured with, but the listen address.
pub fn env(
    db_url: &str,
    aws_url: &str,
    workflows: &Path,
    receiver: Option<&str>,
) -> Vec<(String, String)> {
    let root = repo_root();
    let mut v: Vec<(String, String)> = vec![
        ("DATABASE_URL", db_url.to_owned()),
        ("VEND_SIGNUP_SECRET", SIGNUP_SECRET.to_owned()),
        ("VEND_OPS_TOKEN", OPS_TOKEN.to_owned()),
        ("VEND_BASE_DOMAIN", super::moto::BASE_DOMAIN.to_owned()),
        (
            "VEND_CERTIFICATE_ARN",
            super::moto::CERTIFICATE_ARN.to_owned(),
        ),
        ("VEND_WORKFLOWS_DIR", workflows.display().to_string()),
        (
            "VEND_SCP_DIR",
            root.join("scp-policies").display().to_string(),
        ),
        (
            "VEND_TEMPLATES_DIR",
            root.join("templates").display().to_string(),
        ),
        ("VEND_POLL_INTERVAL", "100ms".to_owned()),
        // Short leases: a killed worker's steps resume within seconds.
        ("VEND_LEASE", "2s".to_owned()),
        (
            "VEND_WEBHOOK_RETRY_SCHEDULE",
            "100ms,200ms,400ms,800ms,1s,1s,1s,1s,1s,1s".to_owned(),
        ),
        ("AWS_ENDPOINT_URL", aws_url.to_owned()),
        ("AWS_REGION", super::moto::REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(url) = receiver {
        v.push((
            "VEND_PROGRESS_WEBHOOKS".into(),
            serde_json::json!([{"url": url, "secret": RECEIVER_SECRET}]).to_string(),
        ));
        v.push(("VEND_ALLOW_HTTP_WEBHOOKS".into(), "true".into()));
    }
    v
}

/// The silo, offboard and rollout workflows at test speed, in a directory of their own.
pub fn fast_workflows() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("silo.toml"), super::fast_silo_toml()).unwrap();
    std::fs::write(
        dir.path().join("offboard.toml"),
        super::fast_offboard_toml(),
    )
    .unwrap();
    std::fs::write(dir.path().join("rollout.toml"), super::fast_rollout_toml()).unwrap();
    dir
}

pub struct Served {
    pub url: String,
    child: Child,
}

impl Served {
    /// Starts `vend serve` listening on `listen` (a fixed address survives restarts) and waits until
    /// it is ready. The log is appended to `log`.
    pub async fn start(env: &[(String, String)], listen: &str, log: &Path) -> Served {
        Self::start_until(env, listen, log, "/readyz").await
    }

    /// As [`Served::start`], but waits only until `probe` answers 200 (`/healthz`: the process serves).
    pub async fn start_until(
        env: &[(String, String)],
        listen: &str,
        log: &Path,
        probe: &str,
    ) -> Served {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vend"));
        cmd.arg("serve")
            .current_dir(repo_root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("VEND_LISTEN", listen)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        on_exit(&format!("kill -9 {} 2>/dev/null", child.id().unwrap()));
        let url = format!("http://{listen}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if http
                .get(format!("{url}{probe}"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "vend serve exited with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "vend serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Served { url, child }
    }

    pub fn free_listen() -> String {
        format!("127.0.0.1:{}", free_port())
    }

    /// SIGKILL: no shutdown, no cleanup, whatever it was doing.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub webhook_id: String,
    pub body: Vec<u8>,
    pub signature_ok: bool,
}

/// A progress webhook receiver on loopback that answers 500 to the first `fail_first` requests.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Delivery>>>,
}

pub async fn receiver(fail_first: usize) -> Receiver {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let ok = vend::standard_webhooks::Secret::parse(RECEIVER_SECRET)
                        .unwrap()
                        .verify(
                            h("webhook-id").as_deref(),
                            h("webhook-timestamp").as_deref(),
                            h("webhook-signature").as_deref(),
                            &body,
                            chrono::Utc::now().timestamp(),
                        )
                        .is_ok();
                    let mut g = seen.lock().unwrap();
                    g.push(Delivery {
                        webhook_id: h("webhook-id").unwrap_or_default(),
                        body: body.to_vec(),
                        signature_ok: ok,
                    });
                    if g.len() <= fail_first {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, got }
}
