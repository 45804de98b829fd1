//! Scale: vend's memory with 10,000 tenants in flight at once (durable waits), and the ops API's
//! `GET /v1/tenants` page latency with 100,000 tenants in the table.
//!
//!   cargo bench --bench scale -- --in-flight 10000 --table 100000 --samples 1000
//!
//! The tenants in flight are real: signed up through the API of a `vend serve` process whose workers
//! drive them against moto behind the proxy, where CreateAccount takes an hour, so 5 wait in
//! await_account and the rest wait, queued, for a CreateAccount slot. The table is then filled to
//! 100,000 tenants and pages are timed: the first page, a state filter, and pages deep in the cursor.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::main]
async fn main() {
    let in_flight: usize = arg("--in-flight", 10_000);
    let table: usize = arg("--table", 100_000);
    let samples: usize = arg("--samples", 1_000);

    let tmp = tempfile::Builder::new()
        .prefix("vend-bench-scale-")
        .tempdir()
        .unwrap();
    let pg = Pg::start(&tmp.path().join("pg"));
    let db = pg.database("vend");
    let (_moto, _proxy, aws_url) =
        aws_behind_proxy(|c| c.create_account_delay = Duration::from_secs(3600)).await;
    let env = vend_env(&db, &aws_url);
    let (vend, url) = vend_serve(&env, &tmp.path().join("vend.log"));
    wait_http(&format!("{url}/readyz")).await;

    eprintln!("signing up {in_flight} tenants");
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    let per = in_flight.div_ceil(32);
    for w in 0..32 {
        let http = http.clone();
        let url = url.clone();
        set.spawn(async move {
            for i in (w * per)..((w + 1) * per).min(in_flight) {
                assert_eq!(
                    signup(&http, &url, &format!("flight-{i:06}"))
                        .await
                        .as_u16(),
                    202
                );
            }
        });
    }
    while set.join_next().await.is_some() {}

    // Wait until every tenant is in flight: its first step has run and is now waiting durably.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let start = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM steps WHERE state = 'waiting' AND name IN ('create_account', 'await_account')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting as usize >= in_flight || start.elapsed() > Duration::from_secs(600) {
            eprintln!(
                "{waiting} tenants waiting durably after {:.0} s",
                start.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the engine keep them in flight for a while (slot fallbacks, polls) before reading the peak.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let rss_in_flight = vend.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
    let slots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_creations WHERE finished_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();

    // Fill the table to `table` tenants (bulk, in SQL: only the listing is measured here).
    let extra = table.saturating_sub(in_flight);
    sqlx::query(
        "INSERT INTO tenants (id, slug, name, owner_email, tier, workflow, state, signup_id, created_at, updated_at)
         SELECT gen_random_uuid(), 'bulk-' || g, 'Bulk ' || g, 'ops@bulk' || g || '.example',
                (ARRAY['free','pro','enterprise'])[1 + g % 3], 'silo',
                (ARRAY['active','active','active','failed','provisioning'])[1 + g % 5], 'bulk-' || g,
                now() - make_interval(secs => g), now()
         FROM generate_series(1, $1) g",
    )
    .bind(extra as i64)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE tenants").execute(&pool).await.unwrap();

    let time_pages = |query: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let mut lat = Vec::with_capacity(samples);
            for _ in 0..samples {
                let t = Instant::now();
                let r = http
                    .get(format!("{url}{query}"))
                    .bearer_auth(OPS_TOKEN)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                let _ = r.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            lat
        }
    };
    // A cursor deep in the table: the id of a tenant half-way down.
    let deep: String =
        sqlx::query_scalar("SELECT id::text FROM tenants ORDER BY id DESC OFFSET $1 LIMIT 1")
            .bind((table / 2) as i64)
            .fetch_one(&pool)
            .await
            .unwrap();
    let pages = [
        ("first page (50)", "/v1/tenants".to_owned()),
        ("first page (500)", "/v1/tenants?limit=500".to_owned()),
        ("state=failed", "/v1/tenants?state=failed".to_owned()),
        ("deep cursor", format!("/v1/tenants?cursor={deep}")),
        (
            "deep cursor + state",
            format!("/v1/tenants?state=active&cursor={deep}"),
        ),
    ];
    println!("tenants in flight             {in_flight} (CreateAccount slots open: {slots})");
    println!("peak RSS of vend serve        {rss_in_flight:.1} MiB");
    println!("GET /v1/tenants with {table} tenants ({samples} sequential requests each):");
    for (name, q) in pages {
        let lat = time_pages(q).await;
        println!(
            "  {name:<22} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
    }
    println!(
        "peak RSS of vend serve after  {:.1} MiB",
        vend.peak_rss_kib().unwrap_or(0) as f64 / 1024.0
    );
}
