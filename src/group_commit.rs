//! Group commit for the hot paths: steps that succeeded (the engine) and signups (the intake) are
//! written many at a time.
//!
//! Each caller queues its item and waits. Whoever finds a free flush slot becomes the leader:
//! it takes everything queued (up to the batch limit), writes it with one statement and hands every
//! waiter its own result. Nothing waits for a timer: alone, an item flushes at once (no added latency);
//! under load, items queued while a flush runs share the next one, so the statements, round trips
//! and commits per item fall as the load rises.
//!
//! When a flush ends with items still queued, only the owner of the oldest one is woken to lead the
//! next: waking every waiter (hundreds under load) on every flush cost more CPU than the statements
//! they were waiting for. A queued item's owner is always still waiting, so the wake-up is never lost.
//!
//! Nothing is lost if a leader dies mid-flush (its task is aborted): its waiters' replies drop, they
//! see an error and retry, and the step's fence (engine) or the webhook-id (intake) makes the retry
//! safe whether or not the statement committed.
//!
//! The coordination is generic over the flush (the engine's is `db::steps::succeed_many`, the
//! intake's `db::tenants::insert_signups`), so it is tested here without a database.

use std::future::Future;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore, SemaphorePermit, oneshot};

type Reply<R, E> = oneshot::Sender<Result<R, Arc<E>>>;

/// A queued item, where its result goes, and how to wake its owner to lead a flush.
type Queued<T, R, E> = (T, Reply<R, E>, Arc<Notify>);

pub(crate) struct GroupCommit<T, R, E> {
    queue: Mutex<Vec<Queued<T, R, E>>>,
    flushes: Semaphore,
    max_batch: usize,
}

/// Why a submitted item got no result of its own.
#[derive(Debug)]
pub(crate) enum CommitError<E> {
    /// The flush carrying the item failed; every item in it gets the same error.
    Failed(Arc<E>),
    /// The task leading the flush was dropped mid-way: the items may or may not have been written.
    Abandoned,
}

/// Ends a flush however it ends (also when the leader's task is aborted): frees the flush slot, then
/// wakes the owner of the oldest queued item, if any, to lead the next flush. The slot is freed first:
/// an item queued after the check found the slot taken, so it was queued before the slot was freed and
/// the check sees it.
struct FlushEnd<'a, T, R, E> {
    commit: &'a GroupCommit<T, R, E>,
    permit: Option<SemaphorePermit<'a>>,
}

impl<T, R, E> Drop for FlushEnd<'_, T, R, E> {
    fn drop(&mut self) {
        self.permit.take();
        self.commit.wake_head(&self.commit.lock());
    }
}

impl<T, R, E> GroupCommit<T, R, E> {
    pub(crate) fn new(max_batch: usize, parallel_flushes: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            flushes: Semaphore::new(parallel_flushes.max(1)),
            max_batch: max_batch.max(1),
        }
    }

    /// Queues `item`, leads flushes while a slot is free and items wait, and returns this item's result.
    /// `flush` gets a batch in queue order and must return one result per item, in the same order.
    pub(crate) async fn submit<F, Fut>(&self, item: T, flush: F) -> Result<R, CommitError<E>>
    where
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = Result<Vec<R>, E>>,
    {
        let (tx, mut rx) = oneshot::channel();
        let wake = Arc::new(Notify::new());
        self.lock().push((item, tx, wake.clone()));
        loop {
            if let Ok(permit) = self.flushes.try_acquire() {
                let end = FlushEnd {
                    commit: self,
                    permit: Some(permit),
                };
                let batch = self.take();
                if !batch.is_empty() {
                    let (items, replies): (Vec<_>, Vec<_>) = batch
                        .into_iter()
                        .map(|(item, reply, _)| (item, reply))
                        .unzip();
                    match flush(items).await {
                        Ok(results) => {
                            debug_assert_eq!(results.len(), replies.len());
                            for (reply, result) in replies.into_iter().zip(results) {
                                let _ = reply.send(Ok(result));
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
                drop(end);
            }
            match rx.try_recv() {
                Ok(r) => return r.map_err(CommitError::Failed),
                Err(oneshot::error::TryRecvError::Closed) => return Err(CommitError::Abandoned),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // A wake-up sent while this task was busy is kept (notify_one stores it), so none is lost.
            tokio::select! {
                r = &mut rx => return match r {
                    Ok(r) => r.map_err(CommitError::Failed),
                    Err(_) => Err(CommitError::Abandoned),
                },
                () = wake.notified() => {}
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Queued<T, R, E>>> {
        self.queue.lock().expect("group commit queue poisoned")
    }

    fn wake_head(&self, queue: &[Queued<T, R, E>]) {
        if let Some((_, _, wake)) = queue.first() {
            wake.notify_one();
        }
    }

    /// The next batch. If items are left behind it, their oldest owner is woken: another flush slot
    /// may be free for it.
    fn take(&self) -> Vec<Queued<T, R, E>> {
        let mut queue = self.lock();
        if queue.len() <= self.max_batch {
            mem::take(&mut *queue)
        } else {
            let rest = queue.split_off(self.max_batch);
            let batch = mem::replace(&mut *queue, rest);
            self.wake_head(&queue);
            batch
        }
    }
}

impl CommitError<sqlx::Error> {
    /// For callers that handle any database error alike (the engine retries, the intake answers 503).
    pub(crate) fn into_sqlx(self) -> sqlx::Error {
        match self {
            Self::Failed(e) => {
                Arc::try_unwrap(e).unwrap_or_else(|e| sqlx::Error::Protocol(e.to_string()))
            }
            Self::Abandoned => {
                sqlx::Error::Protocol("the group commit carrying this item was abandoned".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    type Commit = GroupCommit<u32, u32, String>;

    /// A flush that records its batches and answers each item with item * 10, after `gate` opens.
    #[derive(Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Arc<Notify>,
        started: Arc<Notify>,
        gated: Arc<AtomicUsize>,
    }

    impl Recorder {
        /// The next `n` flushes wait for `gate`.
        fn hold(&self, n: usize) {
            self.gated.store(n, Ordering::SeqCst);
        }

        async fn flush(&self, items: Vec<u32>) -> Result<Vec<u32>, String> {
            self.batches.lock().unwrap().push(items.clone());
            if self
                .gated
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                self.started.notify_one();
                self.gate.notified().await;
            }
            if items.contains(&666) {
                return Err("the database said no".into());
            }
            Ok(items.iter().map(|i| i * 10).collect())
        }

        fn batches(&self) -> Vec<Vec<u32>> {
            self.batches.lock().unwrap().clone()
        }
    }

    fn spawn(
        commit: &Arc<Commit>,
        rec: &Recorder,
        item: u32,
    ) -> tokio::task::JoinHandle<Result<u32, CommitError<String>>> {
        let (commit, rec) = (commit.clone(), rec.clone());
        tokio::spawn(async move { commit.submit(item, |b| rec.flush(b)).await })
    }

    /// A task's result, or a failure (not a hung test) if coordination strands it.
    async fn within<T>(h: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("an item was stranded")
            .unwrap()
    }

    /// Starts item 1's flush and holds it; queues `items` behind it, then lets the held flush end.
    async fn behind_a_held_flush(
        commit: &Arc<Commit>,
        rec: &Recorder,
        items: impl IntoIterator<Item = u32>,
    ) -> (
        tokio::task::JoinHandle<Result<u32, CommitError<String>>>,
        Vec<tokio::task::JoinHandle<Result<u32, CommitError<String>>>>,
    ) {
        rec.hold(1);
        let first = spawn(commit, rec, 1);
        rec.started.notified().await;
        let rest = items.into_iter().map(|i| spawn(commit, rec, i)).collect();
        settle().await;
        rec.gate.notify_one();
        (first, rest)
    }

    /// Lets spawned tasks run until they are all parked (the current-thread runtime runs them in turn).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_lone_item_is_flushed_at_once_and_gets_its_own_result() {
        let commit = Arc::new(Commit::new(500, 2));
        let rec = Recorder::default();
        assert_eq!(commit.submit(7, |b| rec.flush(b)).await.unwrap(), 70);
        assert_eq!(rec.batches(), [vec![7]]);
    }

    #[tokio::test]
    async fn items_arriving_during_a_flush_share_the_next_one_in_order() {
        let commit = Arc::new(Commit::new(500, 1));
        let rec = Recorder::default();
        let (first, rest) = behind_a_held_flush(&commit, &rec, 2..=6).await;
        assert_eq!(within(first).await.unwrap(), 10);
        for (i, h) in (2..=6).zip(rest) {
            assert_eq!(
                within(h).await.unwrap(),
                i * 10,
                "item {i} got another's result"
            );
        }
        assert_eq!(rec.batches(), [vec![1], vec![2, 3, 4, 5, 6]]);
    }

    #[tokio::test]
    async fn a_batch_never_exceeds_the_limit() {
        let commit = Arc::new(Commit::new(2, 1));
        let rec = Recorder::default();
        let (first, rest) = behind_a_held_flush(&commit, &rec, 2..=6).await;
        within(first).await.unwrap();
        for h in rest {
            within(h).await.unwrap();
        }
        assert_eq!(rec.batches(), [vec![1], vec![2, 3], vec![4, 5], vec![6]]);
    }

    #[tokio::test]
    async fn items_left_behind_a_full_batch_use_a_free_slot_while_that_batch_is_written() {
        let commit = Arc::new(Commit::new(2, 2));
        let rec = Recorder::default();
        // One slot is held outside, so items 2..=5 queue behind the flush of item 1.
        let outside = commit.flushes.try_acquire().unwrap();
        rec.hold(2);
        let first = spawn(&commit, &rec, 1);
        rec.started.notified().await;
        let queued: Vec<_> = (2..=5).map(|i| spawn(&commit, &rec, i)).collect();
        settle().await;
        // Freeing a slot this way wakes nobody; only the end of a flush does.
        drop(outside);
        rec.gate.notify_one();
        within(first).await.unwrap();
        rec.started.notified().await;
        // [2, 3] is being written and held; 4 and 5 do not wait for it.
        let mut queued = queued.into_iter();
        let held: Vec<_> = queued.by_ref().take(2).collect();
        for (i, h) in (4..=5).zip(queued) {
            assert_eq!(within(h).await.unwrap(), i * 10);
        }
        assert!(held.iter().all(|h| !h.is_finished()));
        rec.gate.notify_one();
        for h in held {
            within(h).await.unwrap();
        }
        assert_eq!(rec.batches(), [vec![1], vec![2, 3], vec![4, 5]]);
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_item_in_it_and_the_next_flush_works() {
        let commit = Arc::new(Commit::new(500, 1));
        let rec = Recorder::default();
        let (first, rest) = behind_a_held_flush(&commit, &rec, [666, 2]).await;
        assert_eq!(within(first).await.unwrap(), 10);
        for h in rest {
            match within(h).await {
                Err(CommitError::Failed(e)) => assert_eq!(*e, "the database said no"),
                other => panic!("expected the flush's error, got {other:?}"),
            }
        }
        assert_eq!(commit.submit(3, |b| rec.flush(b)).await.unwrap(), 30);
    }

    #[tokio::test]
    async fn a_leader_dying_mid_flush_abandons_its_batch_and_strands_nobody() {
        let commit = Arc::new(Commit::new(500, 1));
        let rec = Recorder::default();
        rec.hold(1);
        // The leader's flush hangs; its batch is [1]. Items 2 and 3 queue behind it.
        let leader = spawn(&commit, &rec, 1);
        rec.started.notified().await;
        let queued: Vec<_> = (2..=3).map(|i| spawn(&commit, &rec, i)).collect();
        settle().await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        // The queued items find a new leader among themselves, without anyone submitting again.
        for (i, h) in (2..=3).zip(queued) {
            let r = tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .expect("a queued item was stranded when its leader died");
            assert_eq!(r.unwrap().unwrap(), i * 10);
        }
        assert_eq!(rec.batches(), [vec![1], vec![2, 3]]);
    }

    #[tokio::test]
    async fn a_waiter_whose_leader_dies_mid_flush_is_told_it_was_abandoned() {
        let commit = Arc::new(Commit::new(500, 1));
        let rec = Recorder::default();
        // With the only flush slot taken, item 2 queues and waits for a leader.
        let slot = commit.flushes.try_acquire().unwrap();
        let waiter = spawn(&commit, &rec, 2);
        settle().await;
        drop(slot);
        // Item 1 finds the slot free and leads a flush carrying both; the flush hangs and the leader
        // is dropped mid-way (its task killed).
        rec.hold(1);
        let mut leader = Box::pin(commit.submit(1, |b| rec.flush(b)));
        assert!(futures::poll!(leader.as_mut()).is_pending());
        assert_eq!(rec.batches(), [vec![2, 1]]);
        drop(leader);
        // Whether the statement committed is unknown: the waiter must hear so (the engine retries
        // and the fence sorts it out), not wait forever.
        let r = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter of a dead leader waited forever");
        assert!(matches!(r.unwrap(), Err(CommitError::Abandoned)));
    }
}
