//! The queue and store a worker config names, opened together: the one
//! place that knows every store and queue kind (so `store/mod.rs`, the
//! store's types and trait, imports neither the config nor the queues,
//! and they can use its types).

use std::sync::Arc;

use crate::config::WorkerConfig;
use crate::queue::TaskQueue;
use crate::store::{PgStore, SqliteStore, Store, StoreError};

/// The queue and store a worker config names.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Where tasks come from.
    pub queue: Arc<dyn TaskQueue>,
    /// Where state lives.
    pub store: Arc<dyn Store>,
}

/// Open the queue and store of `config`:
///
/// | config | queue | store |
/// |---|---|---|
/// | nothing (default) | SQLite `queue.path` | the same file |
/// | `queue.postgres` (or `ORCHESTRATOR_DATABASE_URL`) | PostgreSQL | the same database |
/// | `queue.sqs` + `queue.postgres` | SQS | PostgreSQL |
/// | `queue.sqs` alone | refused, unless `queue.single_worker: true` | SQLite `queue.path` |
pub async fn open(config: &WorkerConfig) -> Result<Backends, StoreError> {
    let postgres = config.queue.postgres_section();
    // Refused before anything is made.
    if config.queue.sqs.is_some() && postgres.is_none() && !config.queue.single_worker {
        return Err(StoreError::Config(format!(
            "queue.sqs is a queue shared by a fleet, but the store (journal, heartbeats, results) \
             would be the machine-local SQLite file {}: the reaper of one machine could not see \
             another's handles and results would stay on one machine. Configure a shared store \
             with `queue.postgres.url` (or ORCHESTRATOR_DATABASE_URL), or, if exactly one worker \
             uses this queue, set `queue.single_worker: true`",
            config.queue.path.display()
        )));
    }
    let (store, sql_queue): (Arc<dyn Store>, Arc<dyn TaskQueue>) = match &postgres {
        Some(section) => {
            let pg = PgStore::connect(section).await?;
            (Arc::new(pg.clone()), Arc::new(pg))
        }
        None => {
            let lite = SqliteStore::open(&config.queue.path)?;
            (Arc::new(lite.clone()), Arc::new(lite))
        }
    };
    let Some(section) = &config.queue.sqs else {
        return Ok(Backends {
            queue: sql_queue,
            store,
        });
    };
    #[cfg(feature = "sqs")]
    {
        let sdk = runner_aws::load_sdk_config(section.region.as_deref()).await;
        let client = aws_sdk_sqs::Client::new(&sdk);
        let queue = crate::queue::sqs::SqsQueue::open(client, section).await?;
        Ok(Backends {
            queue: Arc::new(queue),
            store,
        })
    }
    #[cfg(not(feature = "sqs"))]
    {
        let _ = section;
        Err(StoreError::Config(
            "queue.sqs is set, but this build has no SQS support (cargo feature `sqs`)".into(),
        ))
    }
}
