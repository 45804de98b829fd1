//! Rollout at fleet scale: N active tenants (each its own AWS account in moto, behind the fault proxy
//! with AWS's published quotas) get a new version of the tenant stack through `POST /v1/rollouts`
//! (a canary of 1, then waves of `--wave-size`, 10 tenants by default as for an operator). Prints the makespan, the AWS calls it made by
//! operation, and the bound the quotas allow: for each quota shared by the organization (STS,
//! Organizations, ...) its calls over its rate, and for each per-account quota one tenant's calls over
//! its rate, since the accounts' quotas are separate.
//!
//!   cargo bench --bench rollout -- --tenants 1000 --wave-size 10%
//!
//! vend runs with the shipped `workflows/` and defaults, Postgres at its default durability. Not a
//! test: it asserts only that every tenant was vended and the rollout completed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let n: usize = arg("--tenants", 1000);
    let wave_size: String = arg("--wave-size", "10".to_owned());

    let tmp = tempfile::Builder::new()
        .prefix("vend-bench-rollout-")
        .tempdir()
        .unwrap();
    let pg = Pg::start(&tmp.path().join("pg"));
    let db = pg.database("vend");
    let (_moto, proxy, aws_url) = aws_behind_proxy(|_| {}).await;
    // The templates a rollout reads when it starts: a copy of the shipped ones, changed before it.
    let templates = tmp.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    for f in ["baseline.yaml", "tenant-stack.yaml"] {
        std::fs::copy(repo().join("templates").join(f), templates.join(f)).unwrap();
    }
    let mut env = vend_env(&db, &aws_url);
    env.push(("VEND_TEMPLATES_DIR", templates.display().to_string()));
    // An organization that runs a thousand tenants has had its account quota raised.
    env.push((
        "VEND_ACCOUNT_CREATION_BUDGET",
        format!("{}/24h", n.max(100)),
    ));
    let (_vend, url) = vend_serve(&env, &tmp.path().join("vend.log"));
    wait_http(&format!("{url}/readyz")).await;

    eprintln!("vending {n} tenants");
    let http = reqwest::Client::new();
    let vending = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for w in 0..32 {
        let http = http.clone();
        let url = url.clone();
        sends.spawn(async move {
            for i in (w..n).step_by(32) {
                assert_eq!(
                    signup(&http, &url, &format!("roll-{i:05}")).await.as_u16(),
                    202
                );
            }
        });
    }
    while sends.join_next().await.is_some() {}
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    loop {
        let (active, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE state = 'failed') FROM tenants",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(failed, 0, "a tenant failed to vend; see vend.log");
        if active as usize >= n {
            break;
        }
        eprintln!(
            "  {:>5.0}s: {active} active",
            vending.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    eprintln!(
        "{n} tenants active after {:.0} s; rolling out",
        vending.elapsed().as_secs_f64()
    );

    // A new version of the tenant stack: one more output.
    let path = templates.join("tenant-stack.yaml");
    let mut template = std::fs::read_to_string(&path).unwrap();
    template.push_str("  RolloutBench:\n    Value: \"2\"\n");
    std::fs::write(&path, template).unwrap();
    proxy.reset_stats();
    let started = Instant::now();
    let ops = |req: reqwest::RequestBuilder| async move {
        req.bearer_auth(OPS_TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let r = ops(http
        .post(format!("{url}/v1/rollouts"))
        .json(&json!({"stack": "tenant", "wave_size": wave_size})))
    .await;
    let id = r["id"].as_str().expect("a rollout").to_owned();
    let done = loop {
        let r = ops(http.get(format!("{url}/v1/rollouts/{id}"))).await;
        if r["state"] != "running" {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let makespan = started.elapsed();
    assert_eq!(done["state"], "completed", "{done}");
    let stats = proxy.stats();

    let quotas = vend_aws_proxy::aws_quotas();
    let mut bound = Duration::ZERO;
    let mut lines = Vec::new();
    for (service, q) in &quotas {
        let calls: u64 = stats
            .operations
            .iter()
            .filter(|(op, _)| {
                *op == service
                    || (op.starts_with(&format!("{service}.")) && !quotas.contains_key(op.as_str()))
            })
            .map(|(_, o)| o.calls)
            .sum();
        if calls == 0 {
            continue;
        }
        // A per-account quota binds one tenant's calls; a shared one, all of them.
        let binding = if q.per_account {
            calls as f64 / n as f64
        } else {
            calls as f64
        };
        let secs = ((binding - q.burst).max(0.0) / q.per_second).max(0.0);
        bound = bound.max(Duration::from_secs_f64(secs));
        lines.push(format!(
            "  {service:<28} {calls:>7} calls  {:>6.1}/s{}  -> {secs:>6.1} s",
            q.per_second,
            if q.per_account { " per account" } else { "" }
        ));
    }
    println!("tenants                       {n}");
    println!(
        "rollout                       canary {}, waves of {}",
        done["canary"], done["wave_size"]
    );
    let waves = 1 + (n - 1).div_ceil(done["wave_size"].as_u64().unwrap_or(1).max(1) as usize);
    println!(
        "makespan                      {:.1} s ({waves} waves, {:.2} s a wave)",
        makespan.as_secs_f64(),
        makespan.as_secs_f64() / waves as f64
    );
    println!(
        "bound from the quotas         {:.1} s (the slowest quota below)",
        bound.as_secs_f64()
    );
    for l in lines {
        println!("{l}");
    }
    println!(
        "AWS calls                     {} ({:.1} per tenant), {} throttled",
        stats.total_calls(),
        stats.total_calls() as f64 / n as f64,
        stats.total_throttles()
    );
    print_busiest(&stats);
}
