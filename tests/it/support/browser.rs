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

    /// Clicks the element `css`, finding it again if the page replaced it before the click landed.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let last = match self.try_find(css).await {
                Some(e) => {
                    let v = self
                        .call(
                            reqwest::Method::POST,
                            &format!("/element/{e}/click"),
                            Some(json!({})),
                        )
                        .await;
                    if v.get("error").is_none() {
                        return;
                    }
                    v.to_string()
                }
                None => "no such element".to_owned(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "could not click {css:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the element `css`, waiting a moment for it: a click may have started a navigation
    /// the driver did not wait for, or the live region may be in the middle of being replaced.
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css, Duration::from_secs(10), |_| true).await
    }

    /// The element's text now, or `None` when there is no such element or it went stale between
    /// being found and being read (the page replaced it).
    async fn try_text(&self, css: &str) -> Option<String> {
        let e = self.try_find(css).await?;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .map(str::to_owned)
    }

    /// Accepts the `confirm()` an action asks before it posts.
    pub async fn accept_dialog(&self) {
        self.post("/alert/accept", json!({})).await;
    }

    /// Waits until the element `css` (found again each time: the page may replace it) shows `needle`.
    pub async fn wait_for_text(&self, css: &str, needle: &str, within: Duration) -> String {
        self.wait_for(css, within, |t| t.contains(needle)).await
    }

    /// Waits until the text of the element `css` (found again each time) satisfies `done`, and
    /// returns it. Waiting on what the *next* page must show, not on something the page before it
    /// showed too, is what keeps a test from reading the old page.
    pub async fn wait_for(
        &self,
        css: &str,
        within: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let text = self.try_text(css).await;
            if let Some(t) = &text
                && done(t)
            {
                return t.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never showed what was waited for; last: {text:?}"
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
