//! Group commit for the engine's hot path: steps that succeeded are written many at a time.
//!
//! Each finished step queues its success and waits. Whoever finds a free flush slot becomes the leader:
//! it takes everything queued (up to the batch limit), writes it with one statement and hands every
//! waiter its own result. Nothing waits for a timer: alone, a step flushes at once (no added latency);
//! under load, steps finishing while a flush runs share the next one, so the statements, round trips
//! and commits per step fall as the load rises.
//!
//! Nothing is lost if a leader dies mid-flush (its task is aborted): its waiters' replies drop, they
//! see an error and retry, and the fence makes the retry safe whether or not the statement committed.

use std::mem;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::db;
use crate::db::steps::{Success, SuccessResult};

type Reply = oneshot::Sender<Result<(SuccessResult, i64), Arc<sqlx::Error>>>;

pub(crate) struct GroupCommit {
    queue: Mutex<Vec<(Success, Reply)>>,
    flushes: Semaphore,
    flushed: Notify,
    max_batch: usize,
}

/// Ends a flush however it ends (also when the leader's task is aborted): frees the flush slot, then
/// wakes the waiters if there may be work for a new leader, so queued steps always find one. A leader
/// that found nothing to flush wakes nobody unless steps were queued meanwhile: waking on every empty
/// turn would let idle waiters hand the slot back and forth while a flush is in flight.
struct FlushEnd<'a, 'p> {
    commit: &'a GroupCommit,
    permit: Option<tokio::sync::SemaphorePermit<'p>>,
    flushed_any: bool,
}

impl Drop for FlushEnd<'_, '_> {
    fn drop(&mut self) {
        self.permit.take();
        if self.flushed_any || !self.commit.lock().is_empty() {
            self.commit.flushed.notify_waiters();
        }
    }
}

impl GroupCommit {
    pub(crate) fn new(max_batch: usize, parallel_flushes: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            flushes: Semaphore::new(parallel_flushes.max(1)),
            flushed: Notify::new(),
            max_batch: max_batch.max(1),
        }
    }

    /// Writes `success` with whatever else is queued. Returns this step's result and the number of
    /// outbox deliveries created by the statement that wrote it.
    pub(crate) async fn submit(
        &self,
        pool: &PgPool,
        owner: &str,
        next_lease: Duration,
        success: Success,
    ) -> Result<(SuccessResult, i64), sqlx::Error> {
        let (tx, mut rx) = oneshot::channel();
        self.lock().push((success, tx));
        loop {
            // Registered before looking for a flush slot, so a flush ending in between is not missed.
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if let Ok(permit) = self.flushes.try_acquire() {
                let mut end = FlushEnd {
                    commit: self,
                    permit: Some(permit),
                    flushed_any: false,
                };
                let batch = self.take();
                if !batch.is_empty() {
                    end.flushed_any = true;
                    flush(pool, owner, next_lease, batch).await;
                }
                drop(end);
            }
            match rx.try_recv() {
                Ok(r) => return r.map_err(unwrap_shared),
                Err(oneshot::error::TryRecvError::Closed) => return Err(abandoned()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            tokio::select! {
                r = &mut rx => return r.map_err(|_| abandoned())?.map_err(unwrap_shared),
                () = flushed => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Success, Reply)>> {
        self.queue.lock().expect("group commit queue poisoned")
    }

    fn take(&self) -> Vec<(Success, Reply)> {
        let mut queue = self.lock();
        if queue.len() <= self.max_batch {
            mem::take(&mut *queue)
        } else {
            let rest = queue.split_off(self.max_batch);
            mem::replace(&mut *queue, rest)
        }
    }
}

async fn flush(pool: &PgPool, owner: &str, next_lease: Duration, batch: Vec<(Success, Reply)>) {
    let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match db::steps::succeed_many(pool, owner, next_lease, &items).await {
        Ok((results, deliveries)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((result, deliveries)));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Every waiter of a failed flush gets the error; the engine's commit loop only logs and retries it.
fn unwrap_shared(e: Arc<sqlx::Error>) -> sqlx::Error {
    Arc::try_unwrap(e).unwrap_or_else(|e| sqlx::Error::Protocol(e.to_string()))
}

fn abandoned() -> sqlx::Error {
    sqlx::Error::Protocol("the group commit carrying this step was abandoned".into())
}
