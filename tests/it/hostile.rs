//! Hostile clients get bounded resources and JSON errors, and no secret reaches a log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use vend::engine::Registry;
use vend::http::RequestLimits;
use vend::http::server::Limits;

use crate::support::steps::Succeed;
use crate::support::{OPS_TOKEN, TestApp, postgres, spawn_app_with_limits, workflow_toml};

async fn app(limits: Limits, request_limits: RequestLimits) -> TestApp {
    let (pool, _) = postgres::fresh_database().await;
    let registry = Registry::new().with("ok", Succeed::default());
    spawn_app_with_limits(
        pool,
        registry,
        &workflow_toml(&[("a", "ok")], ""),
        limits,
        request_limits,
    )
    .await
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

async fn healthy(app: &TestApp) {
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the server is still serving");
}

#[tokio::test]
async fn oversized_headers_are_refused_without_harm() {
    let app = app(Limits::default(), RequestLimits::default()).await;
    let a = addr(&app);
    let status = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let big = "x".repeat(200 * 1024);
        let _ = write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
        );
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    })
    .await
    .unwrap();
    assert!(
        !status.contains(" 200 "),
        "a 200 KiB header was accepted: {status:?}"
    );
    healthy(&app).await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let app = app(limits, RequestLimits::default()).await;
    let a = addr(&app);
    let held = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let start = Instant::now();
        let _ = s.write_all(b"POST /v1/signup HTTP/1.1\r\nHost: x\r\n");
        // One header byte every 200 ms, forever: slowloris.
        loop {
            if s.write_all(b"a").is_err() {
                break;
            }
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => break,
                Err(_) => {}
            }
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        start.elapsed()
    })
    .await
    .unwrap();
    assert!(
        held < Duration::from_secs(5),
        "a slowloris connection was held for {held:?}"
    );
    healthy(&app).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_a_preface_is_closed_at_the_header_deadline() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let app = app(limits, RequestLimits::default()).await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let a = addr(&app);
        let opening = opening.to_vec();
        let held = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(a).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let start = Instant::now();
            s.write_all(&opening).unwrap();
            let mut b = [0u8; 64];
            // Closed by the server: read returns 0 (or an error), long before our own timeout.
            let _ = s.read(&mut b);
            start.elapsed()
        })
        .await
        .unwrap();
        assert!(
            held < Duration::from_secs(4),
            "a silent or half-opened connection was held for {held:?}"
        );
    }
    // A whole preface is HTTP/2 with prior knowledge: the server answers with its SETTINGS frame.
    let a = addr(&app);
    let frame_type = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // an empty SETTINGS frame
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        head[3]
    })
    .await
    .unwrap();
    assert_eq!(frame_type, 4, "no SETTINGS frame from the server");
    healthy(&app).await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_when_it_reaches_its_age() {
    let limits = Limits {
        max_connection_age: Duration::from_secs(1),
        ..Limits::default()
    };
    let app = app(limits, RequestLimits::default()).await;
    let a = addr(&app);
    let (held, goaway) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let start = Instant::now();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        // Read frames (and answer nothing) until the server says GOAWAY or closes.
        let mut goaway = false;
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).is_err() {
                break;
            }
            if head[3] == 7 {
                goaway = true;
                break;
            }
        }
        (start.elapsed(), goaway)
    })
    .await
    .unwrap();
    assert!(goaway, "no GOAWAY from the server");
    assert!(
        held < Duration::from_secs(5),
        "an idle HTTP/2 connection was held for {held:?}"
    );
}

#[tokio::test]
async fn a_body_that_trickles_in_times_out_with_a_json_408() {
    let app = app(
        Limits::default(),
        RequestLimits {
            timeout: Duration::from_secs(1),
            ..RequestLimits::default()
        },
    )
    .await;
    let a = addr(&app);
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"POST /v1/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.lines().next().unwrap_or("").to_owned();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    })
    .await
    .unwrap();
    assert!(status.contains(" 408 "), "{status}");
    assert!(body.contains("\"code\":\"timeout\""), "{body}");
    assert_eq!(app.count("tenants").await, 0);
}

#[tokio::test]
async fn a_flood_is_shed_with_503_and_the_server_recovers() {
    let app = app(
        Limits::default(),
        RequestLimits {
            max_in_flight: 4,
            timeout: Duration::from_secs(3),
        },
    )
    .await;
    // Slow requests fill the four places; the rest of the flood must be refused, not queued.
    let a = addr(&app);
    let mut slow = Vec::new();
    for _ in 0..4 {
        let a = a.clone();
        slow.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(a).unwrap();
            let _ = s.write_all(b"POST /v1/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{");
            std::thread::sleep(Duration::from_millis(1500));
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut shed = 0;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let http = app.http.clone();
        let url = format!("{}/v1/tenants", app.base);
        set.spawn(async move {
            http.get(url)
                .bearer_auth(crate::support::OPS_TOKEN)
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Ok(503)) = r {
            shed += 1;
        }
    }
    assert!(shed > 0, "nothing was shed while all places were taken");
    let r = app
        .http
        .get(format!("{}/v1/tenants", app.base))
        .bearer_auth(crate::support::OPS_TOKEN)
        .send()
        .await
        .unwrap();
    if r.status() == 503 {
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
    }
    // The probes stay outside the limit: an orchestrator does not restart a busy vend.
    for probe in ["/healthz", "/readyz"] {
        let r = app
            .http
            .get(format!("{}{probe}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe} while every place is taken");
    }
    for t in slow {
        t.join().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    healthy(&app).await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let app = app(limits, RequestLimits::default()).await;
    let a = addr(&app);
    let closed = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&a).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(&a).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = Vec::new();
        let n = extra.read_to_end(&mut buf).unwrap_or(0);
        drop(held);
        n == 0
    })
    .await
    .unwrap();
    assert!(closed, "a connection over the cap was served");
    tokio::time::sleep(Duration::from_millis(200)).await;
    healthy(&app).await;
}

/// schemathesis (PyPI) explores every operation of /openapi.json with ops auth: no 5xx, and every
/// response of the documented content type.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_body() {
    let app = app(Limits::default(), RequestLimits::default()).await;
    app.signup(&crate::support::signup_body("acme")).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("openapi.json");
    let doc = app
        .ops(reqwest::Method::GET, "/openapi.json", None)
        .await
        .text()
        .await
        .unwrap();
    std::fs::write(&schema, doc).unwrap();
    let bin = postgres::repo_root().join(".venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis is not installed: run scripts/test"
    );
    let out = tokio::process::Command::new(bin)
        .current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .args([
            "run",
            schema.to_str().unwrap(),
            "--url",
            &app.base,
            "--header",
            &format!("Authorization: Bearer {OPS_TOKEN}"),
            "--checks",
            "not_a_server_error,content_type_conformance",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
}

/// A whole vending run with debug logging: the log holds none of the configured secrets nor any AWS
/// credential vend used, the assumed roles' session credentials included.
#[tokio::test]
async fn no_secret_or_credential_reaches_the_log() {
    use crate::support::moto;
    use crate::support::serve::{self, RECEIVER_SECRET, Served};
    use vend_aws_proxy::{Proxy, ProxyConfig};

    let m = moto::start().await;
    moto::prepare_management(&moto::sdk(&m.url).await).await;
    let proxy = Proxy::new(ProxyConfig::new(&m.url));
    let proxy_url = format!("http://{}", proxy.spawn().await.unwrap());
    let receiver = serve::receiver(0).await;
    let (pool, db_url) = postgres::fresh_database().await;
    let workflows = serve::fast_workflows();
    let mut env = serve::env(&db_url, &proxy_url, workflows.path(), Some(&receiver.url));
    env.push(("RUST_LOG".into(), "debug".into()));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("vend.log");
    let vend = Served::start(&env, &Served::free_listen(), &log).await;
    let body = serde_json::to_vec(&crate::support::signup_body("acme")).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/signup", vend.url))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_secret_test")
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            crate::support::sign("msg_secret_test", ts, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s: Option<String> = sqlx::query_scalar("SELECT state FROM tenants WHERE slug = 'acme'")
            .fetch_optional(&pool)
            .await
            .unwrap();
        if s.as_deref() == Some("active") {
            break;
        }
        assert!(Instant::now() < deadline, "acme did not become active");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the dispatcher deliver and log.
    tokio::time::sleep(Duration::from_secs(1)).await;
    vend.kill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 50,
        "debug logging produced too little to prove anything"
    );
    let mut secrets: Vec<String> = vec![
        crate::support::SIGNUP_SECRET.into(),
        crate::support::SIGNUP_SECRET
            .trim_start_matches("whsec_")
            .into(),
        OPS_TOKEN.into(),
        RECEIVER_SECRET.into(),
        RECEIVER_SECRET.trim_start_matches("whsec_").into(),
    ];
    let creds: Vec<String> = proxy
        .seen_credentials()
        .into_iter()
        .filter(|c| c != "testing")
        .collect();
    assert!(
        creds.len() >= 2,
        "the run assumed a role: its session credentials must be among these: {creds:?}"
    );
    secrets.extend(creds);
    for s in secrets {
        if let Some(line) = text.lines().find(|l| l.contains(&s)) {
            let target = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["target"].as_str().map(str::to_owned));
            panic!(
                "the log contains a secret or credential ({}...), logged by {target:?}",
                &s[..6.min(s.len())]
            );
        }
    }
}
