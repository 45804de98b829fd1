//! graphile_worker, measured like vend's engine: queue N no-op jobs, drain them with a concurrency of
//! tens and report jobs/s; then add→start latency of 1,000 jobs added one at a time on an idle worker.
//!
//!   vend-bench-peer DATABASE_URL [JOBS] [CONCURRENCY] [SAMPLES]
//!
//! Prints `draining` when the drain starts, `drained` when it ends, then one JSON line:
//! {"jobs": .., "drain_s": .., "jobs_per_s": .., "latency_ms": {"p50": .., "p99": .., "max": ..}}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use graphile_worker::{
    IntoTaskHandlerResult, JobSpec, LocalQueueConfig, RefetchDelayConfig, TaskHandler, WorkerContext,
    WorkerOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

static DONE: AtomicU64 = AtomicU64::new(0);
static STARTED: OnceLock<mpsc::UnboundedSender<Instant>> = OnceLock::new();

#[derive(Clone, Serialize, Deserialize)]
struct Noop {
    sample: bool,
}

impl TaskHandler for Noop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(self, _ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        if self.sample {
            if let Some(tx) = STARTED.get() {
                let _ = tx.send(Instant::now());
            }
        }
        DONE.fetch_add(1, Ordering::Relaxed);
        Ok::<(), String>(())
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("DATABASE_URL").clone();
    let jobs: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(32);
    let samples: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1_000);

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32 + 4)
        .connect(&url)
        .await
        .expect("connect");
    let (tx, mut rx) = mpsc::unbounded_channel();
    STARTED.set(tx).ok();
    let worker = Arc::new(
        WorkerOptions::default()
            .concurrency(concurrency)
            .schema("graphile_worker")
            .poll_interval(Duration::from_secs(1))
            // Configured as its own performance tests run it: a local queue of 500 jobs refetched
            // after 10 ms, completions not delayed for batching.
            .local_queue(
                LocalQueueConfig::default().with_size(500).with_refetch_delay(
                    RefetchDelayConfig::default().with_duration(Duration::from_millis(10)),
                ),
            )
            .complete_job_batch_delay(Duration::ZERO)
            .pg_pool(pool.clone())
            .define_job::<Noop>()
            .init()
            .await
            .expect("graphile_worker init"),
    );
    let utils = worker.create_utils();

    // Queue every job first (as its perf test does), then time the drain.
    let spec = JobSpec::default();
    let mut queued = 0;
    while queued < jobs {
        let n = (jobs - queued).min(5_000);
        let batch: Vec<(Noop, &JobSpec)> = (0..n).map(|_| (Noop { sample: false }, &spec)).collect();
        utils.add_jobs::<Noop>(&batch).await.expect("add_jobs");
        queued += n;
    }
    // Markers for the caller, which measures the CPU Postgres and this process spend on the drain.
    println!("draining");
    let started = Instant::now();
    let runner = worker.clone();
    let handle = tokio::spawn(async move { runner.run().await });
    while DONE.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = started.elapsed();
    println!("drained");

    // Latency: one job at a time on the now idle worker.
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let before = Instant::now();
        utils
            .add_job(Noop { sample: true }, JobSpec::default())
            .await
            .expect("add_job");
        let at = rx.recv().await.expect("job started");
        lat.push(at.duration_since(before).as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{}",
        serde_json::json!({
            "jobs": jobs,
            "concurrency": concurrency,
            "drain_s": drain.as_secs_f64(),
            "jobs_per_s": jobs as f64 / drain.as_secs_f64(),
            "latency_ms": {"p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99), "max": lat[lat.len() - 1]},
        })
    );
    handle.abort();
}
