//! Writes execution-record updates to the store in batches: the state
//! changes of many executions share one transaction, so a busy worker does
//! not pay a store round trip per phase. A settlement is committed in order
//! after everything queued before it, and its caller waits for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{RecordUpdate, SettleOps, Store, StoreError};

/// Updates in flight before `push` waits (bounded memory).
const CAPACITY: usize = 4096;
/// Most updates in one transaction.
const BATCH: usize = 512;
/// How long state changes wait for more before they are written: the
/// phases of a short test and its settlement then share one transaction
/// (a test of a few milliseconds made five or six, each a commit of its
/// own). A settlement is written at once, with everything queued before it.
const LINGER: Duration = Duration::from_millis(5);

enum Item {
    Update(RecordUpdate),
    Commit(RecordUpdate, oneshot::Sender<Result<(), StoreError>>),
    /// A settlement with the writes that settle it (see
    /// [`Recorder::commit_settling`]); answered whether they were made.
    Settle(
        RecordUpdate,
        Box<SettleOps>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    /// Answered once everything queued before it is stored.
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// A handle to the writer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Item>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Update(u) => write!(f, "Update({})", u.key()),
            Item::Commit(u, _) => write!(f, "Commit({})", u.key()),
            Item::Settle(u, _, _) => write!(f, "Settle({})", u.key()),
            Item::Flush(_) => write!(f, "Flush"),
        }
    }
}

impl Recorder {
    /// Start the writer task over `store`.
    pub fn spawn(store: Arc<dyn Store>) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Item>(CAPACITY);
        tokio::spawn(async move {
            let mut items = Vec::with_capacity(BATCH);
            while gather(&mut rx, &mut items, LINGER).await > 0 {
                let mut updates = Vec::with_capacity(items.len());
                let mut waiting = Vec::new();
                let (mut ops, mut settling) = (Vec::new(), Vec::new());
                for item in items.drain(..) {
                    match item {
                        Item::Update(u) => updates.push(u),
                        Item::Commit(u, done) => {
                            updates.push(u);
                            waiting.push(done);
                        }
                        Item::Settle(u, op, done) => {
                            updates.push(u);
                            ops.push(*op);
                            settling.push(done);
                        }
                        Item::Flush(done) => waiting.push(done),
                    }
                }
                // The settlements' journal ends and acks in the batch's
                // transaction where the store can; else (or when one of
                // them fails: a lost lease undoes the batch) the records
                // alone, and each settler writes its own.
                let folded = !ops.is_empty()
                    && match store.record_settling(&updates, &ops).await {
                        Ok(done) => done,
                        Err(e) => {
                            tracing::debug!(error = %e, "settling in the records' transaction failed; writing them apart");
                            false
                        }
                    };
                let result = if updates.is_empty() || folded {
                    Ok(())
                } else {
                    write(&*store, &updates).await
                };
                if let Err(e) = &result {
                    tracing::warn!(error = %e, updates = updates.len(), "cannot record execution updates");
                }
                for done in waiting {
                    let _ = done.send(result.clone());
                }
                for done in settling {
                    let _ = done.send(result.clone().map(|()| folded));
                }
            }
        });
        Recorder { tx }
    }

    /// Queue an update (a state change); written soon, with others.
    pub async fn push(&self, update: RecordUpdate) {
        let _ = self.tx.send(Item::Update(update)).await;
    }

    /// Queue an update from synchronous code without waiting: in order
    /// when the writer keeps up; when it is behind, a task on `runtime`
    /// sends it (no order then, as before this existed).
    pub fn push_now(&self, update: RecordUpdate, runtime: &tokio::runtime::Handle) {
        match self.tx.try_send(Item::Update(update)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                let tx = self.tx.clone();
                runtime.spawn(async move {
                    let _ = tx.send(item).await;
                });
            }
        }
    }

    /// Wait until everything queued before this call is stored: state
    /// changes still waiting for their batch are written now.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.send_and_wait(Item::Flush).await
    }

    /// Write `update` after everything queued before it, and wait until it
    /// is stored.
    pub async fn commit(&self, update: RecordUpdate) -> Result<(), StoreError> {
        self.send_and_wait(|done| Item::Commit(update, done)).await
    }

    /// [`Recorder::commit`], with `ops` in the same transaction where the
    /// store can ([`Store::record_settling`]): `Ok(true)` when they were
    /// made, `Ok(false)` when only the records were and the caller still
    /// has to end the journal entry and ack.
    pub async fn commit_settling(
        &self,
        update: RecordUpdate,
        ops: SettleOps,
    ) -> Result<bool, StoreError> {
        self.send_and_wait(|done| Item::Settle(update, Box::new(ops), done))
            .await
    }

    /// Queue the item `make` builds around a reply channel; wait for the
    /// reply.
    async fn send_and_wait<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Item,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Store("the record writer stopped".into());
        let (done, wait) = oneshot::channel();
        self.tx.send(make(done)).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

/// The next batch into `items`: what is queued, and when that is only state
/// changes, whatever else comes within `linger` of them, until a
/// settlement or a flush comes or the batch is full. 0 once the channel is closed
/// and empty.
async fn gather(rx: &mut mpsc::Receiver<Item>, items: &mut Vec<Item>, linger: Duration) -> usize {
    let mut checked = 0;
    if rx.recv_many(items, BATCH).await == 0 {
        return 0;
    }
    let until = tokio::time::Instant::now() + linger;
    loop {
        let settles = items[checked..]
            .iter()
            .any(|item| matches!(item, Item::Commit(..) | Item::Settle(..) | Item::Flush(_)));
        checked = items.len();
        if settles || items.len() >= BATCH {
            break;
        }
        match tokio::time::timeout_at(until, rx.recv_many(items, BATCH - items.len())).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    items.len()
}

/// Write one batch, trying again a few times while the store is unavailable.
async fn write(store: &dyn Store, updates: &[RecordUpdate]) -> Result<(), StoreError> {
    let backoff = runner_core::Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    let mut tries = 0;
    loop {
        tries += 1;
        match store.record(updates).await {
            Err(e) if e.is_retryable() && tries < 5 => {
                tokio::time::sleep(backoff.delay(tries)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ExecState;

    fn update(key: &str) -> RecordUpdate {
        RecordUpdate::State {
            new: crate::report::new_execution(&crate::task::Task::new(
                key,
                "local_mock",
                runner_core::BenchSpec::default(),
                runner_core::TestPayload::new(["true"]),
            )),
            state: ExecState::Running,
            at_ms: 0,
            attempt: Some(1),
            worker: None,
            message: String::new(),
        }
    }

    /// A state change taken alone waits for the settlement that follows
    /// it, and both go in one batch (one transaction).
    #[tokio::test]
    async fn state_changes_wait_for_the_settlement_and_share_its_batch() {
        let (tx, mut rx) = mpsc::channel(CAPACITY);
        let gathering = tokio::spawn(async move {
            let mut items = Vec::new();
            // Far longer than the test: only the settlement ends it.
            gather(&mut rx, &mut items, Duration::from_secs(600)).await;
            items
        });
        tx.send(Item::Update(update("a"))).await.unwrap();
        // Once the state change is taken, send the settlement.
        let started = std::time::Instant::now();
        while tx.capacity() < CAPACITY {
            assert!(started.elapsed() < Duration::from_secs(20), "never taken");
            tokio::task::yield_now().await;
        }
        let (done, _wait) = oneshot::channel();
        tx.send(Item::Commit(update("a"), done)).await.unwrap();
        let items = tokio::time::timeout(Duration::from_secs(20), gathering)
            .await
            .expect("the settlement ends the batch")
            .unwrap();
        assert_eq!(format!("{items:?}"), "[Update(a), Commit(a)]", "one batch");
    }

    /// State changes with nothing after them are written once the linger
    /// is over; a closed, empty channel ends the writer.
    #[tokio::test]
    async fn state_changes_alone_are_written_after_the_linger() {
        let (tx, mut rx) = mpsc::channel(CAPACITY);
        tx.send(Item::Update(update("a"))).await.unwrap();
        tx.send(Item::Update(update("b"))).await.unwrap();
        let mut items = Vec::new();
        let n = tokio::time::timeout(
            Duration::from_secs(20),
            gather(&mut rx, &mut items, Duration::from_millis(1)),
        )
        .await
        .expect("written after the linger");
        assert_eq!(n, 2);
        drop(tx);
        items.clear();
        assert_eq!(gather(&mut rx, &mut items, LINGER).await, 0);
    }

    /// A flush returns once the state changes queued before it are
    /// stored, without waiting for a settlement (the end of `serve`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_stores_the_state_changes_queued_before_it() {
        use crate::queue::TaskQueue;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        let task = crate::task::Task::new(
            "a",
            "local_mock",
            runner_core::BenchSpec::default(),
            runner_core::TestPayload::new(["true"]),
        );
        store
            .submit(&task, &crate::report::new_execution(&task))
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let recorder = Recorder::spawn(Arc::clone(&store));
        recorder.push(update("a")).await;
        recorder.flush().await.unwrap();
        let record = store.execution("a").await.unwrap().unwrap();
        assert_eq!(record.state, ExecState::Running);
    }
}
