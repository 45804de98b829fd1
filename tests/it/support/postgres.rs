//! A throwaway PostgreSQL cluster for the whole test binary, on a free loopback port, and a fresh
//! database per test cloned from a migrated template.
//!
//! The cluster is started through `scripts/pg` (the same script the README uses). A detached watchdog
//! stops it and removes its directory once this test process exits, however it exits.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Mutex, OnceCell};

pub struct Cluster {
    /// `postgres://postgres@127.0.0.1:PORT`, without a database name.
    pub base_url: String,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static TEMPLATE: OnceCell<()> = OnceCell::const_new();
static CREATE_LOCK: Mutex<()> = Mutex::const_new(());

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns a detached process that runs `cleanup` (a shell command) once this process is gone.
pub fn on_exit(cleanup: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {cleanup}",
        pid = std::process::id()
    );
    Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("spawning the cleanup watchdog (setsid -f returns at once)");
}

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("vend-test-pg-{}", uuid::Uuid::new_v4().simple()));
        let script = repo_root().join("scripts/pg");
        let port = free_port();
        let out = Command::new(&script)
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            // A throwaway cluster: tests check behaviour, not durability figures, so they run fast.
            .env("VEND_PG_UNSAFE_FAST", "1")
            .output()
            .expect("running scripts/pg");
        assert!(
            out.status.success(),
            "could not start PostgreSQL for the tests:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        on_exit(&format!(
            "{} stop {d}; rm -rf {d} {d}.initdb.log",
            script.display(),
            d = dir.display()
        ));
        Cluster {
            base_url: format!("postgres://postgres@127.0.0.1:{port}"),
        }
    })
}

/// A new, migrated, empty database for one test.
pub async fn fresh_database() -> (PgPool, String) {
    let c = cluster();
    TEMPLATE
        .get_or_init(|| async {
            let mut admin = PgConnection::connect(&format!("{}/postgres", c.base_url))
                .await
                .expect("connecting to the test cluster");
            sqlx::query("CREATE DATABASE vend_template")
                .execute(&mut admin)
                .await
                .unwrap();
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&format!("{}/vend_template", c.base_url))
                .await
                .unwrap();
            vend::db::migrate(&pool).await.expect("migrations apply");
            pool.close().await;
        })
        .await;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    {
        // Cloning a template needs it to have no other user, so clones are made one at a time.
        let _g = CREATE_LOCK.lock().await;
        let mut admin = PgConnection::connect(&format!("{}/postgres", c.base_url))
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE vend_template"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.ok();
    }
    let url = format!("{}/{name}", c.base_url);
    let pool = PgPoolOptions::new()
        .max_connections(30)
        .connect(&url)
        .await
        .unwrap();
    (pool, url)
}
