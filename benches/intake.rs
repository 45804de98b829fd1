//! Intake latency: the signup webhook under wrk at fixed rates, every request distinct and signed.
//!
//!   cargo bench --bench intake -- --rates 200,1000 --duration 30
//!
//! Runs `vend serve --no-workers --no-dispatcher` (the API tier alone) on a throwaway Postgres, pre-signs
//! rate × duration × 1.2 distinct signups, and drives them with wrk (Debian package `wrk`) through
//! benches/wrk/signup.lua, which paces the connections to the rate. Prints p50/p99/max and errors.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

fn main() {
    let rates: String = arg("--rates", "200,1000".to_owned());
    let duration: u64 = arg("--duration", 30);
    let connections: u32 = arg("--connections", 50);
    let threads: u32 = 2;
    assert!(
        std::process::Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok(),
        "wrk is not installed (apt-get install wrk)"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("vend-bench-intake-")
        .tempdir()
        .unwrap();
    let pg = Pg::start(&tmp.path().join("pg"));
    let db = pg.database("vend");
    // The API tier alone: no workers, no dispatcher, so no AWS configuration either.
    let env = vec![("DATABASE_URL", db.clone())];
    let (vend, url) = vend_serve_with(
        &["--no-workers", "--no-dispatcher"],
        &env,
        &tmp.path().join("vend.log"),
    );
    rt.block_on(wait_http(&format!("{url}/readyz")));
    let secret = vend::standard_webhooks::Secret::parse(SIGNUP_SECRET).unwrap();
    for (round, rate) in rates
        .split(',')
        .map(|r| r.trim().parse::<u64>().unwrap())
        .enumerate()
    {
        let count = (rate * duration) as usize * 6 / 5 + 100;
        let file = tmp.path().join(format!("requests-{rate}.tsv"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let ts = chrono::Utc::now().timestamp();
        for i in 0..count {
            let slug = format!("r{round}-{i:07}");
            let body = format!(
                r#"{{"slug":"{slug}","name":"{slug} Corp","owner_email":"ops@{slug}.example","tier":"enterprise"}}"#
            );
            let id = format!("msg_{round}_{i}");
            writeln!(
                f,
                "{id}\t{ts}\t{}\t{body}",
                secret.sign(&id, ts, body.as_bytes())
            )
            .unwrap();
        }
        f.flush().unwrap();
        drop(f);
        let before = rt.block_on(wal_and_tenants(&db));
        let vend_pid = vend.0.id().to_string();
        let cpu_before = (process_cpu_seconds(&vend_pid), pg.cpu_seconds());
        let out = std::process::Command::new("wrk")
            .args([
                &format!("-t{threads}"),
                &format!("-c{connections}"),
                &format!("-d{duration}s"),
                "--latency",
                "-s",
                repo().join("benches/wrk/signup.lua").to_str().unwrap(),
                &url,
                "--",
                file.to_str().unwrap(),
                &rate.to_string(),
                &threads.to_string(),
                &connections.to_string(),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        // Backends report their commits to the statistics at most once a second.
        std::thread::sleep(Duration::from_millis(1500));
        let cpu_after = (process_cpu_seconds(&vend_pid), pg.cpu_seconds());
        let after = rt.block_on(wal_and_tenants(&db));
        let signups = (after.1 - before.1).max(1);
        match json {
            Some(v) => {
                let achieved =
                    v["requests"].as_f64().unwrap_or(0.0) / v["duration_s"].as_f64().unwrap_or(1.0);
                println!(
                    "rate {rate:>5}/s  achieved {achieved:>7.1}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  errors {} (non-2xx {}, socket {})",
                    v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    v["max_ms"].as_f64().unwrap_or(f64::NAN),
                    v["non_2xx"].as_u64().unwrap_or(0) + v["socket_errors"].as_u64().unwrap_or(0),
                    v["non_2xx"],
                    v["socket_errors"],
                );
                let per = |a: f64, b: f64| (b - a) / signups as f64 * 1e6;
                println!(
                    "            {signups} signups stored; per signup: commits {:.2}, WAL {:.2} kB, CPU vend {:.0} us, Postgres {:.0} us (autovacuum included)",
                    (after.2 - before.2) as f64 / signups as f64,
                    (after.0 - before.0) as f64 / signups as f64 / 1024.0,
                    per(cpu_before.0, cpu_after.0),
                    per(cpu_before.1, cpu_after.1),
                );
            }
            None => println!(
                "rate {rate}: wrk failed: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(pg);
}

/// The WAL position in bytes, the number of tenants stored and the database's commits so far: what
/// the round wrote per signup.
async fn wal_and_tenants(url: &str) -> (i64, i64, i64) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let row: (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, (SELECT count(*) FROM tenants),
                (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.ok();
    row
}
