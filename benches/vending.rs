//! The vending benchmark: N tenants through real `vend serve` processes, against moto behind the
//! fault-injecting proxy with AWS's quotas and an asynchronous CreateAccount that takes D and allows 5 in
//! flight. The lower bound on the makespan is ceil(N/5)·D; vend should stay close to it.
//!
//!   cargo bench --bench vending -- --tenants 100 --delay 4 --replicas 1 [--keep-default-vpcs]
//!
//! vend runs with the shipped `workflows/` and its defaults (no poll interval tuned to D: the waits
//! learn it), Postgres at its default durability.
//!
//! Prints makespan, bound, ratio, CreateAccount slot utilization, AWS calls per tenant, throttles and
//! the peak RSS of each vend process. Not a test: it asserts nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::main]
async fn main() {
    let n: usize = arg("--tenants", 500);
    let delay = Duration::from_secs_f64(arg("--delay", 10.0));
    let replicas: usize = arg("--replicas", 1);
    let throttle_rate: f64 = arg("--throttle-rate", 0.0);
    let error_rate: f64 = arg("--error-rate", 0.0);
    let cap = 5usize;
    // A documented setting users choose, not a tuning: the default VPC sweep is ~190 EC2 calls per
    // account, which AWS spreads over accounts and regions but moto serves from one process.
    let keep_default_vpcs = std::env::args().any(|a| a == "--keep-default-vpcs");

    let tmp = tempfile::Builder::new()
        .prefix("vend-bench-")
        .tempdir()
        .unwrap();
    let pg = Pg::start(&tmp.path().join("pg"));
    let db = pg.database("vend");
    let (_moto, proxy, aws_url) = aws_behind_proxy(|c| {
        c.create_account_delay = delay;
        c.create_account_cap = cap;
        c.throttle_rate = throttle_rate;
        c.error_rate = error_rate;
    })
    .await;

    // The shipped workflows/ and defaults: nothing tuned to the delay the bench knows.
    let mut env = vend_env(&db, &aws_url);
    if keep_default_vpcs {
        env.push(("VEND_DEFAULT_VPCS", "keep".into()));
    }
    let mut procs = Vec::new();
    for i in 0..replicas {
        let mut env = env.clone();
        env.push(("VEND_WORKER_ID", format!("replica-{i}")));
        let (p, url) = vend_serve(&env, &tmp.path().join(format!("vend-{i}.log")));
        wait_http(&format!("{url}/readyz")).await;
        procs.push((p, url));
    }
    proxy.reset_stats();
    eprintln!(
        "vending {n} tenants, CreateAccount {delay:?} with {cap} in flight, {replicas} replica(s)"
    );

    let http = reqwest::Client::new();
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let urls: Vec<String> = procs.iter().map(|(_, u)| u.clone()).collect();
    // Signups go in 32 at a time, as a frontend's webhook sender would; a burst of hundreds at once
    // would be shed with 503 by the API's in-flight limit.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sends = tokio::task::JoinSet::new();
    for w in 0..32 {
        let http = http.clone();
        let urls = urls.clone();
        let accepted = accepted.clone();
        sends.spawn(async move {
            for i in (w..n).step_by(32) {
                if signup(&http, &urls[i % urls.len()], &format!("bench-{i:05}"))
                    .await
                    .as_u16()
                    == 202
                {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while sends.join_next().await.is_some() {}
    let accepted = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(accepted, n, "every signup accepted");

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let bound = delay * n.div_ceil(cap) as u32;
    let mut last_report = Instant::now();
    let (active, failed) = loop {
        let (active, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE state = 'failed') FROM tenants",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if (active + failed) as usize >= n
            || started.elapsed() > bound * 3 + Duration::from_secs(120)
        {
            break (active, failed);
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "  {:>5.0}s: {active} active, {failed} failed",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let finished: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(updated_at) FROM tenants WHERE state = 'active'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let makespan = (finished - started_at).to_std().unwrap_or_default();
    let stats = proxy.stats();
    let creations: (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8, count(*)::float8 FROM account_creations",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let utilization = creations.1 * delay.as_secs_f64() / (cap as f64 * creations.0.max(0.001));
    // Where a slot's time goes: held from taking it to seeing the account (D plus the detection lag),
    // and idle between one release and the next take.
    let held: f64 = sqlx::query_scalar(
        "SELECT avg(extract(epoch FROM finished_at - started_at))::float8 FROM account_creations",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // The phases of the makespan: signups until the first slot is taken, the creation phase, and the
    // tail after the last account is seen (the remaining steps of the last tenants).
    let (first_take, last_seen): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT min(started_at), max(finished_at) FROM account_creations")
            .fetch_one(&pool)
            .await
            .unwrap();
    let lead = (first_take - started_at).to_std().unwrap_or_default();
    let tail = (finished - last_seen).to_std().unwrap_or_default();
    let idle =
        (creations.0 * cap as f64 - held * creations.1) / (creations.1 - cap as f64).max(1.0);
    let learned: Option<f64> = sqlx::query_scalar(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) FROM wait_durations WHERE kind = 'create_account'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    println!("tenants                       {n} ({active} active, {failed} failed)");
    println!("replicas                      {replicas}");
    println!(
        "CreateAccount delay D         {:.1} s, {cap} in flight",
        delay.as_secs_f64()
    );
    println!(
        "makespan                      {:.1} s",
        makespan.as_secs_f64()
    );
    println!("lower bound ceil(N/5)*D       {:.1} s", bound.as_secs_f64());
    println!(
        "ratio                         {:.3}",
        makespan.as_secs_f64() / bound.as_secs_f64()
    );
    println!(
        "CreateAccount slot use        {:.1} % (during the creation phase)",
        utilization * 100.0
    );
    println!(
        "slot held per account         {held:.2} s (learned duration {:.2} s)",
        learned.unwrap_or(0.0)
    );
    println!(
        "phases                        {:.2} s to the first slot, {:.2} s creating, {:.2} s tail",
        lead.as_secs_f64(),
        creations.0,
        tail.as_secs_f64()
    );
    println!("slot idle between accounts    {idle:.3} s");
    let spread: (f64, f64, f64, f64, f64) = sqlx::query_as(
        r#"WITH gaps AS (
               SELECT extract(epoch FROM c.started_at - (SELECT max(p.finished_at) FROM account_creations p
                                                   WHERE p.finished_at <= c.started_at))::float8 AS gap
               FROM account_creations c)
           SELECT (SELECT percentile_cont(0.1) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) FROM account_creations)::float8,
                  (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) FROM account_creations)::float8,
                  (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) FROM account_creations)::float8,
                  (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) FROM gaps WHERE gap IS NOT NULL)::float8,
                  (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY gap) FROM gaps WHERE gap IS NOT NULL)::float8"#,
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    println!(
        "slot held p10/p50/p90         {:.3} / {:.3} / {:.3} s; release to next take p50 {:.3}, p90 {:.3} s",
        spread.0, spread.1, spread.2, spread.3, spread.4
    );
    println!(
        "CreateAccount max in flight   {} (over cap: {})",
        stats.create_account_max_in_flight, stats.create_account_over_cap
    );
    let ec2 = stats.service_calls("ec2");
    println!(
        "AWS calls                     {} ({:.1} per tenant, of which EC2's default VPC sweep {:.1})",
        stats.total_calls(),
        stats.total_calls() as f64 / n as f64,
        ec2 as f64 / n as f64
    );
    println!("throttles received            {}", stats.total_throttles());
    let describes = stats
        .operations
        .get("organizations.DescribeCreateAccountStatus")
        .map_or(0, |o| o.calls);
    println!(
        "DescribeCreateAccountStatus   {:.1} per account",
        describes as f64 / n as f64
    );
    for (i, (p, _)) in procs.iter().enumerate() {
        println!(
            "peak RSS of vend replica {i}     {:.1} MiB",
            p.peak_rss_kib().unwrap_or(0) as f64 / 1024.0
        );
    }
    // One tenant in the steady state, attempt by attempt (start, end, outcome): where a slot's time
    // goes between taking it and handing it on.
    let slug = format!("bench-{:05}", n / 2);
    let rows: Vec<(String, Option<f64>, f64, String)> = sqlx::query_as(
        r#"SELECT coalesce(h.step, h.kind),
                  extract(epoch FROM h.started_at - c.started_at)::float8,
                  extract(epoch FROM h.at - c.started_at)::float8,
                  left(h.message, 60)
           FROM history h JOIN tenants t ON t.id = h.tenant_id
           JOIN account_creations c ON c.tenant_id = t.id
           WHERE t.slug = $1 ORDER BY h.id"#,
    )
    .bind(&slug)
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    if std::env::var_os("VEND_BENCH_HOLDS").is_some() {
        let holds: Vec<(String, f64, f64)> = sqlx::query_as(
            r#"SELECT t.slug, extract(epoch FROM c.started_at - $1)::float8,
                      extract(epoch FROM c.finished_at - c.started_at)::float8
               FROM account_creations c JOIN tenants t ON t.id = c.tenant_id ORDER BY c.started_at"#,
        )
        .bind(started_at)
        .fetch_all(&pool)
        .await
        .unwrap();
        for (slug, at, held) in holds {
            println!("  hold {slug} from {at:>7.3} for {held:.3}");
        }
    }
    println!("attempts of {slug}, seconds from taking its slot:");
    for (step, start, end, msg) in rows {
        println!(
            "  {step:<18} {:>8} {end:>8.3}  {msg}",
            start.map_or("-".into(), |s| format!("{s:.3}"))
        );
    }
    print_busiest(&stats);
}
