"""The DBOS Transact peer of benches/engine.rs: N durable workflows of K no-op steps on the same Postgres.

    dbos_peer.py DATABASE_URL WORKFLOWS STEPS CONCURRENCY SAMPLES

DBOS (PyPI package `dbos`, the Python client: the Rust crate is a pre-production release) checkpoints
every step of a workflow in Postgres as vend does. The drain starts the workflows directly
(`DBOS.start_workflow`, at most CONCURRENCY in flight), DBOS's fastest path: each workflow writes its
status row, one checkpoint per step and its result. The idle samples enqueue one workflow at a time on a
DBOS queue (a durable hand-off to a worker, like a signup to vend's engine) with the library's default
polling, and time enqueue -> first step start.

Protocol (as benches/peer/src/main.rs): prints `draining` and `drained` around the drain, then one JSON
line with drain_s, jobs_per_s (steps per second) and latency_ms {p50, p99, max}.
"""

import json
import sys
import threading
import time

from dbos import DBOS, DBOSConfig

url, workflows, steps, concurrency, samples = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
)
# SQLAlchemy wants its driver named.
if url.startswith("postgres://"):
    url = "postgresql://" + url[len("postgres://"):]

config: DBOSConfig = {
    "name": "vend-bench-peer",
    "system_database_url": url,
    "sys_db_pool_size": concurrency + 4,
    "log_level": "WARNING",
}
DBOS(config=config)

first_step_started = {}
started_lock = threading.Lock()


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.step()
def mark(tag: str) -> None:
    with started_lock:
        first_step_started.setdefault(tag, time.monotonic())


@DBOS.workflow()
def drained_workflow(k: int) -> int:
    for i in range(k):
        noop(i)
    return k


@DBOS.workflow()
def sampled_workflow(tag: str) -> None:
    mark(tag)


DBOS.launch()
# Registered after launch (it persists its configuration in the system database); default polling.
queue = DBOS.register_queue("samples")

slots = threading.BoundedSemaphore(concurrency)
done = threading.Event()
finished = 0
finished_lock = threading.Lock()


def wait_for(handle) -> None:
    global finished
    handle.get_result()
    slots.release()
    with finished_lock:
        finished += 1
        if finished == workflows:
            done.set()


print("draining", flush=True)
start = time.monotonic()
waiters = []
for _ in range(workflows):
    slots.acquire()
    h = DBOS.start_workflow(drained_workflow, steps)
    t = threading.Thread(target=wait_for, args=(h,), daemon=True)
    t.start()
    waiters.append(t)
done.wait()
drain_s = time.monotonic() - start
print("drained", flush=True)

latencies = []
for i in range(samples):
    tag = f"sample-{i}"
    t0 = time.monotonic()
    queue.enqueue(sampled_workflow, tag).get_result()
    latencies.append((first_step_started[tag] - t0) * 1000.0)
latencies.sort()


def pct(p: float) -> float:
    return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")


print(
    json.dumps(
        {
            "drain_s": drain_s,
            "jobs_per_s": workflows * steps / drain_s,
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": latencies[-1] if latencies else None},
        }
    ),
    flush=True,
)
DBOS.destroy()
