//! A headless Chromium driven over W3C WebDriver, for the console's browser test: Debian's `chromium`
//! and `chromium-driver` (scripts/test installs them), a chromedriver per test on a free loopback port,
//! killed when the test ends or the test process dies.
//!
//! The few commands the test needs are spoken directly over HTTP (the protocol is JSON over REST);
//! a WebDriver crate would have brought some 300 lines of lockfile for eight endpoints.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::postgres::{free_port, on_exit};

/// The key W3C WebDriver gives an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the driver ends the browser it started.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn binary(name: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| (*p).to_owned())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run scripts/test (it installs chromium and chromium-driver)")
        })
}

impl Browser {
    pub async fn start() -> Browser {
        let driver_bin = binary("chromedriver", &["/usr/bin/chromedriver"]);
        // Debian's /usr/bin/chromium is a wrapper script; the driver needs the browser itself.
        let chrome = binary(
            "chromium",
            &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
        );
        let port = free_port();
        let driver = Command::new(driver_bin)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        on_exit(&format!(
            "pkill -P {0} 2>/dev/null; kill {0} 2>/dev/null",
            driver.id()
        ));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::Builder::new()
            .prefix("vend-chromium-")
            .tempdir()
            .unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", format!("--user-data-dir={}", profile.path().display())],
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"));
        Browser {
            session: format!("{base}/session/{id}"),
            http,
            driver,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let v = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(v.get("error").is_none(), "WebDriver {path}: {v}");
        v
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The first element matching `css`, if there is one now.
    pub async fn try_find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    pub async fn find(&self, css: &str) -> String {
        self.try_find(css)
            .await
            .unwrap_or_else(|| panic!("no element {css:?} on the page"))
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.post(&format!("/element/{e}/value"), json!({"text": text}))
            .await;
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.post(&format!("/element/{e}/click"), json!({})).await;
    }

    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Accepts the `confirm()` an action asks before it posts.
    pub async fn accept_dialog(&self) {
        self.post("/alert/accept", json!({})).await;
    }

    /// Waits until the element `css` (found again each time: the page may replace it) shows `needle`.
    pub async fn wait_for_text(&self, css: &str, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let text = match self.try_find(css).await {
                Some(_) => self.text(css).await,
                None => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never showed {needle:?}; last: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current page as a PNG at `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a screenshot"))
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}
