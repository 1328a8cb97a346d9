//! Submitting tasks: the execution record and the queued task together,
//! idempotent by execution key (submitting a key twice returns the existing
//! execution instead of running it twice).

use crate::backends::Backends;
use crate::report::new_execution;
use crate::store::{Created, StoreError};
use crate::task::Task;

/// What a submit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Queued as a new execution.
    Queued {
        /// The task's id in its queue.
        task_id: String,
    },
    /// The key was submitted before: nothing new was queued.
    Existing {
        /// The live task's id, when it is still queued or running.
        task_id: Option<String>,
    },
}

/// Queue `task` with its record. A queue that is its own store (SQLite,
/// PostgreSQL) does both in one transaction; with SQS the record is made
/// first in the shared store and removed again when the send fails.
pub async fn submit(backends: &Backends, task: &Task) -> Result<SubmitOutcome, StoreError> {
    let new = new_execution(task);
    if backends.queue.keeps_records() {
        let submitted = backends.queue.submit(task, &new).await?;
        return Ok(if submitted.existing {
            SubmitOutcome::Existing {
                task_id: Some(submitted.task_id).filter(|id| !id.is_empty()),
            }
        } else {
            SubmitOutcome::Queued {
                task_id: submitted.task_id,
            }
        });
    }
    if let Created::Existing(_) = backends.store.create_execution(&new).await? {
        return Ok(SubmitOutcome::Existing { task_id: None });
    }
    match backends.queue.submit(task, &new).await {
        Ok(submitted) => Ok(SubmitOutcome::Queued {
            task_id: submitted.task_id,
        }),
        Err(e) => {
            if let Err(undo) = backends.store.delete_execution(&task.execution_key).await {
                tracing::warn!(error = %undo, "cannot remove the record of a task that was not queued");
            }
            Err(e)
        }
    }
}

/// Queue many tasks. On SQLite and PostgreSQL: one transaction, all or
/// nothing (a key submitted before fails the whole batch, naming it). With
/// SQS: the records in one transaction first, then the messages; records of
/// messages that could not be sent are removed again.
pub async fn submit_batch(backends: &Backends, tasks: &[Task]) -> Result<Vec<String>, StoreError> {
    let mut keys = std::collections::BTreeSet::new();
    let duplicates: Vec<String> = tasks
        .iter()
        .filter(|t| !keys.insert(t.execution_key.as_str()))
        .map(|t| t.execution_key.clone())
        .collect();
    if !duplicates.is_empty() {
        return Err(StoreError::Config(format!(
            "the batch names execution key(s) twice: {}",
            duplicates.join(", ")
        )));
    }
    let pairs: Vec<_> = tasks
        .iter()
        .map(|t| (t.clone(), new_execution(t)))
        .collect();
    if backends.queue.keeps_records() {
        return backends.queue.submit_batch(&pairs).await;
    }
    let news: Vec<_> = pairs.iter().map(|(_, n)| n.clone()).collect();
    backends.store.create_executions(&news).await?;
    let mut ids = Vec::with_capacity(pairs.len());
    for (i, (task, new)) in pairs.iter().enumerate() {
        match backends.queue.submit(task, new).await {
            Ok(s) => ids.push(s.task_id),
            Err(e) => {
                for (task, _) in &pairs[i..] {
                    let _ = backends.store.delete_execution(&task.execution_key).await;
                }
                return Err(StoreError::Store(format!(
                    "{} of {} tasks were queued before this failure: {e}",
                    ids.len(),
                    pairs.len()
                )));
            }
        }
    }
    Ok(ids)
}
