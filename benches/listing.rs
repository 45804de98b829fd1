//! Listing at fleet scale: the ops API's `GET /v1/tenants` and the console's tenants page, with every
//! filter they offer, over 1,000,000 tenants (a free tier in the pool makes that many plausible).
//!
//!   cargo bench --bench listing -- --tenants 1000000 --samples 1000
//!
//! The table is filled in SQL with the shape a long-lived fleet has: most tenants active (a finished
//! run of six steps), some closed (and their offboard run), 1 % provisioning (the current step
//! waiting on a durable timer), 0.5 % failed (the current step failed with one of a few AWS error
//! codes), 0.5 % offboarding. Then `vend serve --no-workers` answers sequential requests, each timed
//! from the client (so the figure includes HTTP on loopback on top of the server's time).

mod common;

use std::time::Instant;

use common::*;

const SILO: [&str; 6] = [
    "create_account",
    "await_account",
    "move_account",
    "bootstrap_baseline",
    "deploy_stack",
    "map_domain",
];
const OFFBOARD: [&str; 5] = [
    "darken_endpoint",
    "grace_period",
    "unmap_domain",
    "delete_stack",
    "close_account",
];

#[tokio::main]
async fn main() {
    let tenants: i64 = arg("--tenants", 1_000_000);
    let samples: usize = arg("--samples", 1_000);

    let tmp = tempfile::Builder::new()
        .prefix("vend-bench-listing-")
        .tempdir()
        .unwrap();
    let pg = Pg::start(&tmp.path().join("pg"));
    let db = pg.database("vend");
    let (_moto, moto_url) = moto().await;
    prepare_management(&sdk(&moto_url).await).await;
    let env = vend_env(&db, &moto_url);
    let (_vend, url) = vend_serve_with(&["--no-workers"], &env, &tmp.path().join("vend.log"));
    wait_http(&format!("{url}/readyz")).await;

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let t = Instant::now();
    fill(&pool, tenants).await;
    eprintln!(
        "{tenants} tenants written in {:.0} s",
        t.elapsed().as_secs_f64()
    );

    if std::env::var_os("VEND_BENCH_HOLD").is_some() {
        // For working on a query by hand: the filled database stays up until this is killed.
        println!("holding: DATABASE_URL={db}");
        tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{url}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={OPS_TOKEN}"))
        .send()
        .await
        .unwrap();
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();

    // A cursor half-way down the table, and a slug that exists.
    let deep: String =
        sqlx::query_scalar("SELECT id::text FROM tenants ORDER BY id DESC OFFSET $1 LIMIT 1")
            .bind(tenants / 2)
            .fetch_one(&pool)
            .await
            .unwrap();
    let slug = format!("tenant-{:07}", tenants / 3);
    let filters: Vec<(&str, String)> = vec![
        ("none", String::new()),
        ("state=failed", "state=failed".into()),
        ("state=provisioning", "state=provisioning".into()),
        ("state=active (deep cursor)", format!("state=active&cursor={deep}")),
        ("tier=enterprise", "tier=enterprise".into()),
        ("state=failed&tier=pro", "state=failed&tier=pro".into()),
        ("step=deploy_stack", "step=deploy_stack".into()),
        ("error_code=StackRollback", "error_code=StackRollback".into()),
        ("in_step_longer_than=1d", "in_step_longer_than=1d".into()),
        (
            "step+error+tier+time",
            "step=bootstrap_baseline&error_code=AccessDenied&tier=enterprise&in_step_longer_than=1h"
                .into(),
        ),
        ("deep cursor", format!("cursor={deep}")),
    ];

    println!(
        "{tenants} tenants, {samples} sequential requests per line, latency seen by the client:"
    );
    println!(
        "{:<34} {:>22} {:>22}",
        "filter", "GET /v1/tenants", "GET /ui (console)"
    );
    let mut worst: f64 = 0.0;
    for (name, q) in &filters {
        let api = time(&http, &format!("{url}/v1/tenants?{q}"), None, samples).await;
        let ui = time(&http, &format!("{url}/ui?{q}"), Some(&cookie), samples).await;
        worst = worst.max(pct(&api, 0.99)).max(pct(&ui, 0.99));
        println!(
            "{name:<34} p50 {:>5.2} p99 {:>5.2} ms  p50 {:>5.2} p99 {:>5.2} ms",
            pct(&api, 0.5),
            pct(&api, 0.99),
            pct(&ui, 0.5),
            pct(&ui, 0.99)
        );
    }
    let by_slug = time(
        &http,
        &format!("{url}/ui?slug={slug}"),
        Some(&cookie),
        samples,
    )
    .await;
    let one = time(&http, &format!("{url}/v1/tenants/{slug}"), None, samples).await;
    worst = worst.max(pct(&by_slug, 0.99)).max(pct(&one, 0.99));
    println!(
        "{:<34} p50 {:>5.2} p99 {:>5.2} ms  p50 {:>5.2} p99 {:>5.2} ms",
        "slug (GET /v1/tenants/{slug})",
        pct(&one, 0.5),
        pct(&one, 0.99),
        pct(&by_slug, 0.5),
        pct(&by_slug, 0.99)
    );
    // The bulk retry's dry run lists the failed tenants that match (at most 1,000) before anyone acts.
    for q in ["", "step=deploy_stack", "error_code=StackRollback"] {
        let lat = time(
            &http,
            &format!("{url}/ui/retries?{q}"),
            Some(&cookie),
            samples,
        )
        .await;
        println!(
            "{:<34} {:>22} p50 {:>5.2} p99 {:>5.2} ms",
            format!("bulk retry dry run {q}"),
            "",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    println!("worst p99 of the lists {worst:.2} ms (target <= 10 ms)");
}

/// `samples` sequential GETs; sorted latencies in ms. Every answer must be a 200.
async fn time(http: &reqwest::Client, url: &str, cookie: Option<&str>, samples: usize) -> Vec<f64> {
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut req = http.get(url);
        req = match cookie {
            Some(c) => req.header("cookie", c),
            None => req.bearer_auth(OPS_TOKEN),
        };
        let t = Instant::now();
        let r = req.send().await.unwrap();
        let status = r.status();
        let _ = r.bytes().await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{url}");
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat
}

/// Writes `n` tenants with their runs and steps, in a handful of set-based statements.
async fn fill(pool: &sqlx::PgPool, n: i64) {
    let statements = [
        // UUIDv7-shaped ids (a millisecond timestamp first), one signup every 30 s back from now.
        "CREATE TABLE bench_gen AS
         SELECT g,
                (lpad(to_hex(((extract(epoch FROM now()) - ($1 - g) * 30) * 1000)::bigint), 12, '0')
                 || '7' || substr(md5('t' || g), 1, 19))::uuid AS tid,
                (lpad(to_hex(((extract(epoch FROM now()) - ($1 - g) * 30) * 1000)::bigint), 12, '0')
                 || '7' || substr(md5('r' || g), 1, 19))::uuid AS rid,
                (lpad(to_hex(((extract(epoch FROM now()) - ($1 - g) * 30 + 1) * 1000)::bigint), 12, '0')
                 || '7' || substr(md5('o' || g), 1, 19))::uuid AS oid,
                now() - make_interval(secs => ($1 - g) * 30) AS at,
                CASE WHEN g % 1000 < 850 THEN 'active'
                     WHEN g % 1000 < 900 THEN 'closed'
                     WHEN g % 1000 < 910 THEN 'provisioning'
                     WHEN g % 1000 < 915 THEN 'failed'
                     WHEN g % 1000 < 920 THEN 'offboarding'
                     ELSE 'active' END AS st,
                CASE WHEN g % 10 < 7 THEN 'free' WHEN g % 10 < 9 THEN 'pro' ELSE 'enterprise' END AS tier
         FROM generate_series(1, $1::bigint) g",
        "INSERT INTO tenants (id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                              created_at, updated_at)
         SELECT tid, 'tenant-' || lpad(g::text, 7, '0'), 'Tenant ' || g, 'ops@tenant' || g || '.example',
                tier, 'silo', st,
                CASE WHEN st IN ('active', 'offboarding', 'closed')
                     THEN jsonb_build_object('account_id', lpad((100000000000 + g)::text, 12, '0'))
                     ELSE '{}'::jsonb END,
                'msg_' || g, at, at
         FROM bench_gen",
        "INSERT INTO runs (id, tenant_id, workflow, state, created_at, updated_at)
         SELECT rid, tid, 'silo',
                CASE st WHEN 'provisioning' THEN 'running' WHEN 'failed' THEN 'failed' ELSE 'succeeded' END,
                at, at
         FROM bench_gen",
        "INSERT INTO runs (id, tenant_id, workflow, state, created_at, updated_at)
         SELECT oid, tid, 'offboard', CASE st WHEN 'closed' THEN 'succeeded' ELSE 'running' END, at, at
         FROM bench_gen WHERE st IN ('closed', 'offboarding')",
    ];
    for s in statements {
        sqlx::query(s).bind(n).execute(pool).await.unwrap();
    }
    // The silo run's steps: all six done, or up to the current one (g % 6), which waits or failed.
    // The offboard run's: all five done, or up to grace_period, waiting.
    sqlx::query(
        "INSERT INTO steps (run_id, position, name, state, wait_reason, due_at, attempts, last_error,
                            last_error_code, started_at, finished_at, updated_at)
         SELECT b.rid, s.pos - 1, s.name,
                CASE WHEN s.pos - 1 < b.cur THEN 'succeeded'
                     WHEN b.st = 'provisioning' THEN 'waiting' ELSE 'failed' END,
                CASE WHEN s.pos - 1 = b.cur AND b.st = 'provisioning' THEN 'poll' END,
                CASE WHEN s.pos - 1 = b.cur AND b.st = 'provisioning'
                     THEN now() + make_interval(secs => 60 + b.g % 3600) END,
                1 + (b.g % 3) * (s.pos - 1 = b.cur)::int,
                CASE WHEN s.pos - 1 = b.cur AND b.st = 'failed' THEN 'the step failed (bench)' END,
                CASE WHEN s.pos - 1 = b.cur AND b.st = 'failed'
                     THEN (ARRAY['AccessDenied', 'LimitExceeded', 'ValidationError', 'StackRollback'])[1 + b.g % 4]
                END,
                CASE WHEN s.pos - 1 = b.cur THEN now() - make_interval(secs => b.g % 200000) ELSE b.at END,
                CASE WHEN s.pos - 1 < b.cur THEN b.at END,
                b.at
         FROM (SELECT *, CASE WHEN st IN ('provisioning', 'failed') THEN g % 6 ELSE 6 END AS cur
               FROM bench_gen) b
         CROSS JOIN LATERAL unnest($1::text[]) WITH ORDINALITY AS s(name, pos)
         WHERE s.pos - 1 <= b.cur",
    )
    .bind(&SILO[..])
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO steps (run_id, position, name, state, wait_reason, due_at, attempts, started_at,
                            finished_at, updated_at)
         SELECT b.oid, s.pos - 1, s.name,
                CASE WHEN b.st = 'closed' OR s.pos < 2 THEN 'succeeded' ELSE 'waiting' END,
                CASE WHEN b.st = 'offboarding' AND s.pos = 2 THEN 'poll' END,
                CASE WHEN b.st = 'offboarding' AND s.pos = 2 THEN now() + interval '7 days' END,
                1, b.at, CASE WHEN b.st = 'closed' OR s.pos < 2 THEN b.at END, b.at
         FROM bench_gen b
         CROSS JOIN LATERAL unnest($1::text[]) WITH ORDINALITY AS s(name, pos)
         WHERE b.st = 'closed' OR (b.st = 'offboarding' AND s.pos <= 2)",
    )
    .bind(&OFFBOARD[..])
    .execute(pool)
    .await
    .unwrap();
    // vend folds the count deltas the million inserts left (every second); then, as autovacuum
    // would, the emptied table is vacuumed before anything is timed.
    let t = Instant::now();
    while sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tenant_count_deltas)")
        .fetch_one(pool)
        .await
        .unwrap()
    {
        assert!(
            t.elapsed().as_secs() < 600,
            "vend did not fold the tenant counts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for s in [
        "VACUUM ANALYZE tenant_count_deltas",
        "DROP TABLE bench_gen",
        "VACUUM ANALYZE tenants",
        "VACUUM ANALYZE runs",
        "VACUUM ANALYZE steps",
    ] {
        sqlx::query(s).execute(pool).await.unwrap();
    }
}
