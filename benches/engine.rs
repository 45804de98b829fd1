//! Engine throughput and latency, side by side with two peers on the same Postgres in the same run:
//! graphile_worker (a queue: the reference for cost per unit of work) and DBOS Transact (a durable
//! workflow engine that checkpoints every step, as vend does).
//!
//!   cargo bench --bench engine -- --tenants 20000 --steps 3 --concurrency 500 --peer-concurrency 32
//!
//! --concurrency is how many steps vend runs at once (the steps finishing together share commits);
//! --peer-concurrency is graphile_worker's worker count (its performance test runs tens, with a local
//! queue of 500 jobs). --commit-batch and --commit-flushes tune vend's group commit.
//!
//! vend: N tenants signed up through the real HTTP router (the production transaction), then the real
//! engine drains them: real claims, leases, fenced commits, history and outbox rows; only the step
//! bodies do nothing. Reports steps/s, the time from a step starting to its successor starting under
//! that load (the step's commit, the successor's claim and the hand-off), and add→start latency of
//! single signups on an idle engine.
//! Peers: benches/peer (graphile_worker) queues N×steps jobs, drains them, and samples add→start latency
//! the same way; benches/peer/dbos_peer.py (PyPI dbos, installed into .venv-dbos on first use) runs N
//! workflows of `steps` no-op steps, and samples enqueue→start on a DBOS queue. Pass --no-peer to skip
//! both, --no-dbos to skip DBOS, --statements to print where
//! Postgres spent its time during vend's drain (pg_stat_statements), --rounds N to alternate the two N
//! times on the same cluster and print the medians and the per-round ratio.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use common::*;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tower::ServiceExt;
use vend::domain::{StepOutcome, Workflow, Workflows};
use vend::engine::{Engine, EngineConfig, Registry, Step, StepContext};

struct Noop {
    sampled: mpsc::UnboundedSender<Instant>,
    /// Name of the workflow's last step and how many times it ran: the drain is nearly over when
    /// every tenant has run it, and only then does the bench ask the database.
    last: String,
    lasts: Arc<std::sync::atomic::AtomicUsize>,
    /// When each step body of the drained tenants started: (tenant number, step number, instant).
    starts: Arc<std::sync::Mutex<Vec<(u32, u8, Instant)>>>,
}

#[async_trait]
impl Step for Noop {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        let now = Instant::now();
        if let (Some(t), Some(step)) = (
            ctx.tenant
                .slug
                .strip_prefix('t')
                .and_then(|t| t.parse().ok()),
            ctx.step.strip_prefix('s').and_then(|s| s.parse().ok()),
        ) {
            self.starts.lock().unwrap().push((t, step, now));
        }
        // A sample is timed to the start of its first step.
        if ctx.tenant.slug.starts_with("sample-") && ctx.step == "s0" {
            let _ = self.sampled.send(now);
        }
        if ctx.step == self.last {
            self.lasts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        StepOutcome::Succeeded
    }
}

/// Where Postgres spent its time (pg_stat_statements), then resets the counts.
async fn print_statements(pool: &sqlx::PgPool, phase: &str, tmp: &tempfile::TempDir) {
    let top: Vec<(f64, f64, i64, i64, String)> = sqlx::query_as(
        "SELECT total_exec_time, total_plan_time, calls, rows,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 100)
         FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 10",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    println!("== Postgres time during {phase} (pg_stat_statements) ==");
    for (ms, plan_ms, calls, rows, query) in top {
        println!(
            "{ms:>7.0} ms {plan_ms:>5.0} ms planning {calls:>6} calls {rows:>6} rows  {query}"
        );
    }
    // A sequential scan of a table the hot path reaches by key is a plan gone wrong (the planner
    // takes a batch to be large, or a table to be small).
    let scans: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, seq_scan, seq_tup_read, coalesce(idx_scan, 0)
         FROM pg_stat_user_tables WHERE seq_scan + coalesce(idx_scan, 0) > 0 ORDER BY seq_tup_read DESC",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (table, seq, read, idx) in scans {
        println!("{table:>16}: {seq:>6} seq scans ({read} rows read), {idx} index scans");
    }
    let log = std::env::temp_dir().join("vend-bench-engine-server.log");
    let _ = std::fs::copy(tmp.path().join("pg/server.log"), &log);
    println!("(plans of statements over 20 ms: {})", log.display());
    sqlx::query("SELECT pg_stat_statements_reset(), pg_stat_reset()")
        .execute(pool)
        .await
        .unwrap();
}

fn signup_request(slug: &str) -> axum::http::Request<Body> {
    let body = serde_json::json!({"slug": slug, "name": slug, "owner_email": format!("ops@{slug}.example"), "tier": "pro"}).to_string();
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let ts = chrono::Utc::now().timestamp();
    let sig = vend::standard_webhooks::Secret::parse(SIGNUP_SECRET)
        .unwrap()
        .sign(&id, ts, body.as_bytes());
    axum::http::Request::post("/v1/signup")
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(Body::from(body))
        .unwrap()
}

/// The bench's options (see the module documentation).
struct Opts {
    n: usize,
    steps: usize,
    concurrency: usize,
    peer_concurrency: usize,
    commit_batch: usize,
    commit_flushes: usize,
    samples: usize,
    statements: bool,
    setup_sql: String,
}

/// What one round measured of vend, and of the peer.
struct VendRound {
    steps_per_s: f64,
    pg_cpu: f64,
    client_cpu: f64,
    idle_p99: f64,
}

struct PeerRound {
    name: &'static str,
    jobs_per_s: f64,
    pg_cpu: f64,
    client_cpu: f64,
    idle_p99: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[tokio::main]
async fn main() {
    let defaults = EngineConfig::default();
    let o = Opts {
        n: arg("--tenants", 20_000),
        steps: arg("--steps", 3),
        concurrency: arg("--concurrency", 500),
        peer_concurrency: arg("--peer-concurrency", 32),
        commit_batch: arg("--commit-batch", defaults.commit_batch),
        commit_flushes: arg("--commit-flushes", defaults.commit_flushes),
        samples: arg("--samples", 1_000),
        statements: std::env::args().any(|a| a == "--statements"),
        // What-if experiments on the schema (drop an index, change a fillfactor) without a migration:
        // `--setup-sql 'DROP INDEX history_tenant'` runs after the migrations, before anything else.
        setup_sql: arg("--setup-sql", String::new()),
    };
    let peer = !std::env::args().any(|a| a == "--no-peer");
    // On a shared machine two runs of one binary differ by up to 20 %: rounds alternate vend and the
    // peer on the same cluster, and the ratio of each round is what compares them.
    let rounds: usize = arg("--rounds", 1);

    let tmp = tempfile::Builder::new()
        .prefix("vend-bench-engine-")
        .tempdir()
        .unwrap();
    let pg = if o.statements {
        Pg::start_with(
            &tmp.path().join("pg"),
            "-c shared_preload_libraries=pg_stat_statements,auto_explain \
             -c auto_explain.log_min_duration=20ms -c auto_explain.log_analyze=on \
             -c pg_stat_statements.track_planning=on",
        )
    } else {
        Pg::start(&tmp.path().join("pg"))
    };
    let peer_binary = if peer { Some(build_peer().await) } else { None };
    let dbos = if peer && !std::env::args().any(|a| a == "--no-dbos") {
        Some(dbos_python())
    } else {
        None
    };
    let mut results = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            println!("-- round {round} of {rounds} --");
        }
        let v = vend_round(&pg, &o, &format!("vend_engine_{round}"), &tmp).await;
        let mut peers = Vec::new();
        if let Some(binary) = &peer_binary {
            let args = vec![
                (o.n * o.steps).to_string(),
                o.peer_concurrency.to_string(),
                o.samples.to_string(),
            ];
            let cmd = (binary.clone(), args);
            peers.extend(peer_round(&pg, GRAPHILE, &cmd, &o, &format!("peer_{round}")).await);
        }
        if let Some(python) = &dbos {
            // DBOS's queue polls once a second by default: a sample takes half a second on average.
            let args = vec![
                repo()
                    .join("benches/peer/dbos_peer.py")
                    .display()
                    .to_string(),
                o.n.to_string(),
                o.steps.to_string(),
                o.peer_concurrency.to_string(),
                o.samples.min(100).to_string(),
            ];
            let cmd = (python.clone(), args);
            peers.extend(peer_round(&pg, DBOS, &cmd, &o, &format!("dbos_{round}")).await);
        }
        results.push((v, peers));
    }
    if rounds > 1 {
        summarize(&results);
    }
}

/// Medians over the rounds, and the per-round ratios of vend to the peer.
fn summarize(results: &[(VendRound, Vec<PeerRound>)]) {
    let of = |f: &dyn Fn(&VendRound) -> f64| median(results.iter().map(|(v, _)| f(v)).collect());
    println!("== {} rounds, medians ==", results.len());
    println!(
        "vend                         {:.0} steps/s, CPU per step postgres {:.1} us, vend {:.1} us, idle add->start p99 {:.2} ms",
        of(&|v| v.steps_per_s),
        of(&|v| v.pg_cpu),
        of(&|v| v.client_cpu),
        of(&|v| v.idle_p99)
    );
    for name in [GRAPHILE, DBOS] {
        let paired: Vec<(&VendRound, &PeerRound)> = results
            .iter()
            .flat_map(|(v, ps)| ps.iter().filter(|p| p.name == name).map(move |p| (v, p)))
            .collect();
        if paired.is_empty() {
            continue;
        }
        let pof =
            |f: &dyn Fn(&PeerRound) -> f64| median(paired.iter().map(|(_, p)| f(p)).collect());
        println!(
            "{name:<28} {:.0} units/s, CPU per unit postgres {:.1} us, client {:.1} us, idle add->start p99 {:.2} ms",
            pof(&|p| p.jobs_per_s),
            pof(&|p| p.pg_cpu),
            pof(&|p| p.client_cpu),
            pof(&|p| p.idle_p99)
        );
        let ratios: Vec<f64> = paired
            .iter()
            .map(|(v, p)| v.steps_per_s / p.jobs_per_s)
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        println!(
            "  vend steps/s / {name} units/s  median {:.2}x (rounds {:.2}x to {:.2}x)",
            median(ratios.clone()),
            lo,
            hi
        );
        let cpu: Vec<f64> = paired
            .iter()
            .map(|(v, p)| (v.pg_cpu + v.client_cpu) / (p.pg_cpu + p.client_cpu))
            .collect();
        println!(
            "  vend CPU per step / {name} CPU per unit  median {:.2}",
            median(cpu)
        );
        let p99s: Vec<f64> = paired
            .iter()
            .map(|(v, p)| v.idle_p99 / p.idle_p99)
            .collect();
        println!("  idle p99 vend / {name}  median {:.2}x", median(p99s));
    }
}

/// Signs up `o.n` tenants into a fresh database `db`, drains them with the engine, samples idle
/// add→start latency, and prints what it measured.
async fn vend_round(pg: &Pg, o: &Opts, db: &str, tmp: &tempfile::TempDir) -> VendRound {
    let (n, steps, concurrency) = (o.n, o.steps, o.concurrency);
    let (commit_batch, commit_flushes, samples, statements) =
        (o.commit_batch, o.commit_flushes, o.samples, o.statements);
    let url = pg.database(db);
    let pool = vend::db::connect(&url, (concurrency as u32 + 8).min(100))
        .await
        .unwrap();
    vend::db::migrate(&pool).await.unwrap();
    if !o.setup_sql.is_empty() {
        println!("setup SQL: {}", o.setup_sql);
        sqlx::raw_sql(sqlx::AssertSqlSafe(o.setup_sql.clone()))
            .execute(&pool)
            .await
            .unwrap();
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let lasts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let starts = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n * steps)));
    let registry = Registry::new().with(
        "noop",
        Noop {
            sampled: tx,
            last: format!("s{}", steps - 1),
            lasts: lasts.clone(),
            starts: starts.clone(),
        },
    );
    let mut toml = String::from("name = \"bench\"\ntiers = [\"free\", \"pro\", \"enterprise\"]\n");
    for i in 0..steps {
        toml.push_str(&format!("[[steps]]\nname = \"s{i}\"\nkind = \"noop\"\n"));
    }
    let workflows =
        Arc::new(Workflows::new(vec![Workflow::parse(&toml, &registry.kinds()).unwrap()]).unwrap());
    let metrics = vend::telemetry::Metrics::new();
    let router = vend::http::router(vend::http::AppState {
        pool: pool.clone(),
        intake: vend::lifecycle::signup::Intake::new(pool.clone()),
        workflows: workflows.clone(),
        signup_secret: vend::standard_webhooks::Secret::parse(SIGNUP_SECRET).unwrap(),
        ops_tokens: vend::config::OpsTokens::new(vec![OPS_TOKEN.into()]),
        slug_rules: Default::default(),
        metrics: metrics.clone(),
        readiness: vend::readiness::Readiness::ready(),
        nudges: vend::http::Nudges::new(&pool),
        offboard_grace: std::time::Duration::ZERO,
        regions: Default::default(),
        templates_dir: repo().join("templates"),
    });

    eprintln!(
        "enqueueing {n} tenants ({} steps) through the signup path",
        n * steps
    );
    let enqueue = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(8)) {
        let router = router.clone();
        let chunk = chunk.to_vec();
        set.spawn(async move {
            for i in chunk {
                let r = router
                    .clone()
                    .oneshot(signup_request(&format!("t{i:06}")))
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let enqueue = enqueue.elapsed();

    let engine = Engine::new(
        pool.clone(),
        workflows,
        registry,
        EngineConfig {
            worker_id: "bench".into(),
            concurrency,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            commit_batch,
            commit_flushes,
        },
        metrics,
    );
    if statements {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("SELECT pg_stat_statements_reset(), pg_stat_reset()")
            .execute(&pool)
            .await
            .unwrap();
    }
    eprintln!("draining");
    let token = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let cpu_before = (pg.cpu_seconds(), own_cpu_seconds());
    let running = tokio::spawn(engine.run(token.clone()));
    loop {
        // Polling the database during the drain would compete with the engine for it.
        if lasts.load(std::sync::atomic::Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenants WHERE state IN ('pending', 'provisioning')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = started.elapsed();
    let total_steps = (n * steps) as f64;
    let cpu_per_step = |now: f64, before: f64| (now - before) / total_steps * 1e6;
    let (pg_cpu, vend_cpu) = (
        cpu_per_step(pg.cpu_seconds(), cpu_before.0),
        cpu_per_step(own_cpu_seconds(), cpu_before.1),
    );
    if statements {
        print_statements(&pool, "the drain", tmp).await;
    }

    // Step → next step under load: from a step's body starting to its successor's starting, which
    // takes the step's commit (with the successor's claim) and the hand-off. No-op bodies take no time.
    let mut due: Vec<f64> = {
        let mut starts = starts.lock().unwrap();
        starts.sort_unstable_by_key(|&(t, s, _)| (t, s));
        starts
            .windows(2)
            .filter(|w| w[0].0 == w[1].0 && w[0].1 + 1 == w[1].1)
            .map(|w| w[1].2.duration_since(w[0].2).as_secs_f64() * 1000.0)
            .collect()
    };
    due.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // Add → start on the idle engine, one signup at a time.
    while rx.try_recv().is_ok() {}
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let req = signup_request(&format!("sample-{i:05}"));
        let before = Instant::now();
        let r = router.clone().oneshot(req).await.unwrap();
        assert_eq!(r.status(), 202);
        let at = rx.recv().await.unwrap();
        lat.push(at.duration_since(before).as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if statements {
        print_statements(&pool, "the idle samples", tmp).await;
    }
    token.cancel();
    running.await.unwrap();

    println!(
        "== vend engine ({} tenants x {steps} no-op steps, concurrency {concurrency}, group commit {commit_batch} x {commit_flushes}) ==",
        n
    );
    println!(
        "enqueue (signup path)        {:.1} s ({:.0} signups/s)",
        enqueue.as_secs_f64(),
        n as f64 / enqueue.as_secs_f64()
    );
    println!("drain                        {:.1} s", drain.as_secs_f64());
    println!(
        "steps/s                      {:.0}",
        total_steps / drain.as_secs_f64()
    );
    println!("CPU per step (us)            postgres {pg_cpu:.1}  vend {vend_cpu:.1}");
    println!(
        "step->next step, load (ms)   p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(&due, 0.5),
        pct(&due, 0.99),
        pct(&due, 1.0)
    );
    println!(
        "add->start idle (ms)         p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );

    pool.close().await;
    VendRound {
        steps_per_s: total_steps / drain.as_secs_f64(),
        pg_cpu,
        client_cpu: vend_cpu,
        idle_p99: pct(&lat, 0.99),
    }
}

const GRAPHILE: &str = "graphile_worker";
const DBOS: &str = "DBOS Transact (Python)";

/// A Python with the DBOS Transact package, in `.venv-dbos` (made on first use, version pinned).
fn dbos_python() -> String {
    let venv = repo().join(".venv-dbos");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("installing DBOS Transact (PyPI dbos==3.4.0) into .venv-dbos");
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "dbos==3.4.0"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "could not install dbos into .venv-dbos");
    }
    python.display().to_string()
}

/// Builds benches/peer and returns its executable.
async fn build_peer() -> String {
    let manifest = repo().join("benches/peer/Cargo.toml");
    eprintln!("building the peer (graphile_worker)");
    let build = tokio::process::Command::new("cargo")
        .args([
            "build",
            "--quiet",
            "--release",
            "--message-format=json",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    // The executable's path, from cargo's JSON messages (the target directory may be anywhere).
    String::from_utf8_lossy(&build.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m["executable"].as_str().map(str::to_owned))
        .expect("the peer did not build")
}

/// Runs a peer (`program args`, speaking benches/peer's protocol) on a fresh database `db` the same
/// way: `n × steps` units drained, then the idle samples; prints what it measured.
async fn peer_round(
    pg: &Pg,
    name: &'static str,
    (program, args): &(String, Vec<String>),
    o: &Opts,
    db: &str,
) -> Option<PeerRound> {
    let peer_url = pg.database(db);
    let jobs = o.n * o.steps;
    let cpu_per_job = |now: f64, before: f64| (now - before) / jobs as f64 * 1e6;
    // The program's own arguments, with the database URL inserted after a script's path.
    let mut argv: Vec<String> = args.clone();
    let at = usize::from(argv.first().is_some_and(|a| a.ends_with(".py")));
    argv.insert(at, peer_url.clone());
    let mut child = tokio::process::Command::new(program)
        .args(&argv)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut before, mut cpu, mut last) = ((0.0, 0.0), None, String::new());
    while let Some(line) = lines.next_line().await.unwrap() {
        match line.as_str() {
            "draining" => before = (pg.cpu_seconds(), process_cpu_seconds(&pid)),
            "drained" => {
                cpu = Some((
                    cpu_per_job(pg.cpu_seconds(), before.0),
                    cpu_per_job(process_cpu_seconds(&pid), before.1),
                ))
            }
            _ => last = line,
        }
    }
    child.wait().await.unwrap();
    let Some(v) = serde_json::from_str::<serde_json::Value>(&last).ok() else {
        println!("peer failed (its errors are above)");
        return None;
    };
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    println!(
        "== peer: {name} ({jobs} no-op units, concurrency {}) ==",
        o.peer_concurrency
    );
    println!("drain                        {:.1} s", num(&v["drain_s"]));
    println!("jobs/s                       {:.0}", num(&v["jobs_per_s"]));
    let (pg_cpu, client_cpu) = cpu.unwrap_or((f64::NAN, f64::NAN));
    println!("CPU per unit (us)            postgres {pg_cpu:.1}  {name} {client_cpu:.1}");
    println!(
        "add->start idle (ms)         p50 {:.2}  p99 {:.2}  max {:.2}",
        num(&v["latency_ms"]["p50"]),
        num(&v["latency_ms"]["p99"]),
        num(&v["latency_ms"]["max"])
    );
    Some(PeerRound {
        name,
        jobs_per_s: num(&v["jobs_per_s"]),
        pg_cpu,
        client_cpu,
        idle_p99: num(&v["latency_ms"]["p99"]),
    })
}
