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

/// A loopback port for a server a test starts as a separate process (Postgres, moto, `vend serve`).
///
/// Taken from below the kernel's ephemeral range (32768-60999 on Linux), never twice in one test
/// process: a port from `bind(0)` is an ephemeral one, and between releasing it here and the child
/// binding it, another test's in-process listener or outgoing connection could be given the same
/// port - CI once saw moto's readiness check answered by a vend server of another test.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start at a random place so that test binaries run one after another do not reuse a port a
    // lingering child of the previous one may still hold.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        uuid::Uuid::new_v4().as_u128() as u32 % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
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
