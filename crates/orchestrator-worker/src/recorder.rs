//! Writes execution-record updates to the store in batches: the state
//! changes of many executions share one transaction, so a busy worker does
//! not pay a store round trip per phase. A settlement is committed in order
//! after everything queued before it, and its caller waits for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{RecordUpdate, Store, StoreError};

/// Updates in flight before `push` waits (bounded memory).
const CAPACITY: usize = 4096;
/// Most updates in one transaction.
const BATCH: usize = 512;

enum Item {
    Update(RecordUpdate),
    Commit(RecordUpdate, oneshot::Sender<Result<(), StoreError>>),
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
        }
    }
}

impl Recorder {
    /// Start the writer task over `store`.
    pub fn spawn(store: Arc<dyn Store>) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Item>(CAPACITY);
        tokio::spawn(async move {
            let mut items = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut items, BATCH).await > 0 {
                let mut updates = Vec::with_capacity(items.len());
                let mut waiting = Vec::new();
                for item in items.drain(..) {
                    match item {
                        Item::Update(u) => updates.push(u),
                        Item::Commit(u, done) => {
                            updates.push(u);
                            waiting.push(done);
                        }
                    }
                }
                let result = write(&*store, &updates).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, updates = updates.len(), "cannot record execution updates");
                }
                for done in waiting {
                    let _ = done.send(result.clone());
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

    /// Write `update` after everything queued before it, and wait until it
    /// is stored.
    pub async fn commit(&self, update: RecordUpdate) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Item::Commit(update, done))
            .await
            .map_err(|_| StoreError::Store("the record writer stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Store("the record writer stopped".into()))?
    }
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
