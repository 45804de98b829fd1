//! A small client of the ops API for the CLI.

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct OpsClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl OpsClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base).with_context(|| format!("VEND_URL {base:?} is not a URL"))?;
        Ok(Self {
            base,
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the API's own message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the vend API at {}: {}",
                self.base,
                e.without_url()
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let hint = if status == StatusCode::UNAUTHORIZED {
                " (check VEND_OPS_TOKEN)"
            } else {
                ""
            };
            return Err(anyhow!("{} {}{hint}", status.as_u16(), detail));
        }
        serde_json::from_str(&text)
            .context("the API answered something that is not the expected JSON")
    }
}

/// How the ops commands reach the API: shared by `vend tenants` and `vend fleet`.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the vend API.
    #[arg(
        long,
        env = "VEND_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Ops bearer token.
    #[arg(long, env = "VEND_OPS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ApiArgs {
    pub fn client(&self) -> anyhow::Result<OpsClient> {
        let token = self
            .token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("VEND_OPS_TOKEN: is required (or pass --token)"))?;
        OpsClient::new(&self.url, &token)
    }
}
