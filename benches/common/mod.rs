//! Shared by the benchmarks: a throwaway Postgres, moto, and `vend serve` processes, all on loopback.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `p` quantile (0..=1) of sorted samples; NaN if there are none.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/proc` times are in clock ticks, 100 a second on Linux.
const CLOCK_TICKS: f64 = 100.0;

/// The fields of a `/proc/PID/stat` line, numbered from 0 as in proc(5) minus one (the command name,
/// which may hold spaces, is skipped over).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (pid, rest) = stat.split_once(" (")?;
    let (_, rest) = rest.rsplit_once(") ")?;
    let mut f = vec![pid, ""];
    f.extend(rest.split_whitespace());
    Some(f)
}

/// CPU time this process has used so far, in seconds (every thread, live or gone).
pub fn own_cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// CPU time process `pid` has used so far, in seconds; 0 once it is gone.
pub fn process_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let f = stat_fields(&stat).unwrap();
    sum_ticks(&f[13..15]) as f64 / CLOCK_TICKS
}

fn sum_ticks(fields: &[&str]) -> u64 {
    fields.iter().map(|v| v.parse::<u64>().unwrap_or(0)).sum()
}

/// A PostgreSQL cluster under `dir` (via scripts/pg), stopped on drop.
pub struct Pg {
    pub url: String,
    dir: PathBuf,
}

impl Pg {
    pub fn start(dir: &Path) -> Pg {
        Self::start_with(dir, "")
    }

    /// Starts the cluster with extra server options (`-c name=value ...`), at PostgreSQL's default
    /// durability unless `VEND_PG_UNSAFE_FAST=1` (then every figure is marked as not a headline one).
    pub fn start_with(dir: &Path, options: &str) -> Pg {
        if std::env::var("VEND_PG_UNSAFE_FAST").as_deref() == Ok("1") {
            eprintln!(
                "WARNING: VEND_PG_UNSAFE_FAST=1: Postgres runs with fsync, synchronous_commit and \
                 full_page_writes off; these figures are what-ifs, not production ones"
            );
        } else {
            eprintln!(
                "Postgres at its default durability (fsync, synchronous_commit, full_page_writes on)"
            );
        }
        let out = Command::new(repo().join("scripts/pg"))
            .args(["start", dir.to_str().unwrap()])
            .env("PG_OPTS", options)
            .output()
            .expect("scripts/pg");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Pg {
            url,
            dir: dir.to_owned(),
        }
    }

    /// CPU time the cluster has used so far, in seconds: the postmaster, its live processes, and the
    /// ones that exited (autovacuum workers come and go). A rate is noisy on a shared machine; the CPU
    /// a piece of work costs is much less so.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = std::fs::read_to_string(self.dir.join("postmaster.pid")).expect("postmaster.pid");
        let pid: u32 = pid.lines().next().unwrap().trim().parse().unwrap();
        let mut ticks = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(f) = stat_fields(&stat) else {
                continue;
            };
            let (me, parent) = (f[0].parse::<u32>().ok(), f[3].parse::<u32>().ok());
            if me == Some(pid) {
                // utime, stime, cutime, cstime
                ticks += sum_ticks(&f[13..17]);
            } else if parent == Some(pid) {
                ticks += sum_ticks(&f[13..15]);
            }
        }
        ticks as f64 / CLOCK_TICKS
    }

    /// A URL for a new database `name`.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new("psql")
            .args([&self.url, "-q", "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/{name}", self.url.trim_end_matches("/postgres"))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/pg"))
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

pub async fn moto() -> (Proc, String) {
    let status = Command::new(repo().join("scripts/python-env"))
        .status()
        .unwrap();
    assert!(status.success());
    let port = free_port();
    let child = Command::new(repo().join(".venv/bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/moto-api/")).await;
    (Proc(child), url)
}

pub async fn wait_http(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

pub async fn sdk(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "bench",
        ))
        .load()
        .await
}

pub const BASE_DOMAIN: &str = "tenants.example.test";
pub const SIGNUP_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const OPS_TOKEN: &str = "bench-ops-token-0123456789";

/// An organization and the base domain's zone, as vend expects them.
pub async fn prepare_management(sdk: &aws_config::SdkConfig) {
    aws_sdk_organizations::Client::new(sdk)
        .create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .unwrap();
    aws_sdk_route53::Client::new(sdk)
        .create_hosted_zone()
        .name(BASE_DOMAIN)
        .caller_reference("bench")
        .send()
        .await
        .unwrap();
}

/// What every bench's `vend serve` runs with: its database, the base domain and certificate, the
/// shipped workflows/, and AWS at `aws_url` with moto's credentials.
pub fn vend_env(db: &str, aws_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.to_owned()),
        ("VEND_BASE_DOMAIN", BASE_DOMAIN.to_owned()),
        (
            "VEND_CERTIFICATE_ARN",
            "arn:aws:acm:us-east-1:123456789012:certificate/bench".to_owned(),
        ),
        (
            "VEND_WORKFLOWS_DIR",
            repo().join("workflows").display().to_string(),
        ),
        ("AWS_ENDPOINT_URL", aws_url.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ]
}

/// Starts `vend serve` with the given environment on a free port; returns the process and its URL.
pub fn vend_serve(env: &[(&str, String)], log: &Path) -> (Proc, String) {
    vend_serve_with(&[], env, log)
}

/// As [`vend_serve`], with extra flags (e.g. `--no-workers`).
pub fn vend_serve_with(flags: &[&str], env: &[(&str, String)], log: &Path) -> (Proc, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vend"));
    cmd.arg("serve")
        .args(flags)
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("VEND_LISTEN", &listen)
        .env("VEND_SIGNUP_SECRET", SIGNUP_SECRET)
        .env("VEND_OPS_TOKEN", OPS_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (Proc(cmd.spawn().unwrap()), format!("http://{listen}"))
}

/// Sends a signed signup.
pub async fn signup(http: &reqwest::Client, base: &str, slug: &str) -> reqwest::StatusCode {
    let body = serde_json::json!({"slug": slug, "name": format!("{slug} Corp"),
        "owner_email": format!("ops@{slug}.example"), "tier": "enterprise"})
    .to_string();
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let ts = chrono::Utc::now().timestamp();
    let sig = vend::standard_webhooks::Secret::parse(SIGNUP_SECRET)
        .unwrap()
        .sign(&id, ts, body.as_bytes());
    http.post(format!("{base}/v1/signup"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(reqwest::StatusCode::SERVICE_UNAVAILABLE)
}

pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// moto, prepared as vend's management account, behind the fault proxy configured by `configure`.
/// Returns moto's process, the proxy, and the URL to point `AWS_ENDPOINT_URL` at.
pub async fn aws_behind_proxy(
    configure: impl FnOnce(&mut vend_aws_proxy::ProxyConfig),
) -> (Proc, std::sync::Arc<vend_aws_proxy::Proxy>, String) {
    let (moto, moto_url) = moto().await;
    prepare_management(&sdk(&moto_url).await).await;
    let mut config = vend_aws_proxy::ProxyConfig::new(&moto_url);
    configure(&mut config);
    let proxy = vend_aws_proxy::Proxy::new(config);
    let addr = proxy.spawn().await.unwrap();
    (moto, proxy, format!("http://{addr}"))
}

/// The eight AWS operations the proxy saw most, with their calls and throttles.
pub fn print_busiest(stats: &vend_aws_proxy::ProxyStats) {
    let mut top: Vec<_> = stats.operations.iter().collect();
    top.sort_by_key(|(_, o)| std::cmp::Reverse(o.calls));
    println!("busiest operations:");
    for (op, o) in top.iter().take(8) {
        println!(
            "  {op:<45} {:>7} calls {:>6} throttled",
            o.calls,
            o.quota_throttles + o.injected_throttles
        );
    }
}
