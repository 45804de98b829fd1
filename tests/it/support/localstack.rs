//! LocalStack (community, without Docker) per test, through `localstack/localstack`: on a free loopback
//! port, its state in a temporary directory, stopped when the test ends or the test process dies.

use std::process::Command;
use std::time::Duration;

use super::postgres::{free_port, on_exit, repo_root};

pub struct LocalStack {
    pub url: String,
    dir: tempfile::TempDir,
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("localstack/localstack"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

pub async fn start() -> LocalStack {
    let dir = tempfile::Builder::new()
        .prefix("vend-localstack-")
        .tempdir()
        .unwrap();
    let port = free_port();
    let script = repo_root().join("localstack/localstack");
    let out = tokio::process::Command::new(&script)
        .args(["start", &port.to_string(), dir.path().to_str().unwrap()])
        .output()
        .await
        .expect("running localstack/localstack");
    assert!(
        out.status.success(),
        "LocalStack did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    on_exit(&format!(
        "{} stop {}",
        script.display(),
        dir.path().display()
    ));
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Services start lazily on first use; give the gateway a moment to settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    LocalStack { url, dir }
}
