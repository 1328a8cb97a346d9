//! The worker loop: lease tasks, execute them, record and settle them by
//! the policy; beside it the heartbeat, the cancel watcher and the periodic
//! reaper.

mod background;
mod process;
mod settle;
mod slot;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner_core::{CancellationToken, RunnerAdapter, RunnerConfig};
use tokio::task::JoinSet;

use crate::backends::Backends;
use crate::config::WorkerConfig;
use crate::engine::{Engine, EngineSettings, pause};
use crate::factory::RunnerFactory;
use crate::metrics::Metrics;
use crate::queue::{AttemptRecord, Lease, TaskQueue};
use crate::recorder::Recorder;
use crate::store::{SqliteStore, Store, StoreError, WorkerBeat, now_ms};

/// How long a lease's read of the journal (`Lease::journal_clear`) is
/// trusted for a task that waited ahead for its slot.
const JOURNAL_READ_FRESH: Duration = Duration::from_millis(50);

/// A runner type the worker serves: its config and its engine.
#[derive(Debug, Clone)]
struct Served {
    config: RunnerConfig,
    engine: Engine,
}

/// Run tokens of the executions in flight, by execution key (the cancel
/// watcher fires them).
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// A worker: one queue, one store, the runners of its config.
#[derive(Clone)]
pub struct Worker {
    id: String,
    config: WorkerConfig,
    store: Arc<dyn Store>,
    queue: Arc<dyn TaskQueue>,
    served: Arc<BTreeMap<String, Served>>,
    metrics: Metrics,
    recorder: Recorder,
    running: Running,
    /// When this worker's last heartbeat that the store took was sent:
    /// others count it alive until `stale_after` past it.
    beat_at: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).finish()
    }
}

/// This machine's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// A fresh worker id: host, process and a random part.
pub fn new_worker_id(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}-{:06x}",
        hostname(),
        std::process::id(),
        fastrand::u32(..0xFF_FFFF)
    )
}

impl Worker {
    /// A worker over the SQLite file of `config` (one machine; tests).
    /// Must be called inside a Tokio runtime.
    pub fn new(config: WorkerConfig, factory: &RunnerFactory) -> Result<Self, String> {
        let store = SqliteStore::open(&config.queue.path).map_err(|e| e.to_string())?;
        let backends = Backends {
            queue: Arc::new(store.clone()),
            store: Arc::new(store),
        };
        Self::with_backends(config, factory, backends)
    }

    /// A worker over the queue and store `config` names (see [`crate::backends::open`]).
    pub async fn open(config: WorkerConfig, factory: &RunnerFactory) -> Result<Self, String> {
        let backends = crate::backends::open(&config)
            .await
            .map_err(|e| e.to_string())?;
        Self::with_backends(config, factory, backends)
    }

    /// A worker taking tasks from `backends.queue`, keeping its state in
    /// `backends.store`. Must be called inside a Tokio runtime.
    pub fn with_backends(
        config: WorkerConfig,
        factory: &RunnerFactory,
        backends: Backends,
    ) -> Result<Self, String> {
        let id = new_worker_id("");
        let mut served = BTreeMap::new();
        for runner in &config.runners {
            let adapter = factory.create(runner).map_err(|e| e.to_string())?;
            let engine = Engine::for_runner(
                adapter,
                runner,
                EngineSettings {
                    backoff: config.worker.backoff(),
                    worker_id: id.clone(),
                    stale_after: config.worker.stale_after(),
                    ..EngineSettings::default()
                },
            )
            .with_journal(Arc::clone(&backends.store));
            served.insert(
                runner.runner_type.clone(),
                Served {
                    config: runner.clone(),
                    engine,
                },
            );
        }
        Ok(Self {
            id,
            recorder: Recorder::spawn(Arc::clone(&backends.store)),
            queue: backends.queue,
            store: backends.store,
            served: Arc::new(served),
            config,
            metrics: factory.metrics().clone(),
            running: Arc::default(),
            beat_at: Arc::default(),
        })
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The store (journal, workers, records).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn TaskQueue> {
        &self.queue
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the queue is the store's own opened database (the SQLite
    /// file, or PostgreSQL; never SQS): one statement can then read or
    /// write both.
    fn queue_in_store(&self) -> bool {
        self.queue.database_id().is_some() && self.queue.database_id() == self.store.database_id()
    }

    /// The runner types this worker serves.
    pub fn runner_types(&self) -> Vec<String> {
        self.served.keys().cloned().collect()
    }

    /// The layered adapters, by runner type (for the reaper).
    pub fn adapters(&self) -> BTreeMap<String, Arc<dyn RunnerAdapter>> {
        self.served
            .iter()
            .map(|(k, s)| (k.clone(), Arc::clone(s.engine.adapter())))
            .collect()
    }

    fn beat(&self) -> WorkerBeat {
        WorkerBeat {
            id: self.id.clone(),
            host: hostname(),
            pid: std::process::id(),
            runners: self.runner_types(),
            in_flight: u32::try_from(self.running.lock().map(|r| r.len()).unwrap_or(0))
                .unwrap_or(u32::MAX),
        }
    }

    /// Serve until `stop` fires; then stop leasing, give running executions
    /// the drain grace, cancel what is left (it is torn down and released
    /// back to the queue), and return.
    pub async fn serve(&self, stop: CancellationToken) -> Result<(), StoreError> {
        let hard = CancellationToken::new();
        let hurry = CancellationToken::new();
        let visibility = self.config.worker.visibility();
        let poll = Duration::from_millis(self.config.worker.poll_ms);
        // Register before leasing: a lease of an unregistered worker looks
        // dead to the reaper.
        let sent = Instant::now();
        self.store.worker_heartbeat(&self.beat()).await?;
        self.beat_taken(sent);
        let background = [
            self.spawn_heartbeat(),
            self.spawn_cancel_watcher(),
            self.spawn_reaper(stop.clone()),
        ];
        let mut running: JoinSet<()> = JoinSet::new();
        let concurrency = self.config.worker.concurrency;
        // A slot is a test holding runner resources: it is given back once
        // the execution is over (torn down, its journal entry closed),
        // before its settlement (record, ack) is written, so the next test
        // need not wait for the store. Settlements finish in the
        // background, at most `concurrency` behind the tests.
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let in_tasks = concurrency.saturating_mul(2);
        // A slot whose test is collecting and tearing down gets its next
        // task leased now (one per such slot), started when the slot frees:
        // the lease is then not in that test's path. Nothing is leased
        // ahead for a slot still running its test, so a long test never
        // holds a queued task from the rest of the fleet.
        let ending = Arc::new(slot::Ending::default());
        let mut ahead: VecDeque<(Lease, Instant)> = VecDeque::new();
        let mut failures = 0u32;
        tracing::info!(worker = %self.id, runners = ?self.runner_types(), store = self.store.kind(), "serving");
        while !stop.is_cancelled() {
            while running.try_join_next().is_some() {}
            let room = in_tasks.saturating_sub(running.len());
            if room == 0 {
                // Settlements are behind: wait for one.
                tokio::select! {
                    _ = running.join_next() => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            self.keep_ahead(&mut ahead, visibility).await;
            if !ahead.is_empty()
                && let Ok(permit) = Arc::clone(&slots).try_acquire_owned()
                && let Some((lease, arrived)) = ahead.pop_front()
            {
                let slot = slot::Slot::new(permit, &ending);
                self.start(&mut running, lease, arrived, slot, &hard, &hurry);
                continue;
            }
            let free = slots.available_permits().min(room);
            // Only with none waiting ahead: a lease, a wait for work or a
            // pause could otherwise hold a waiting task back from a slot
            // that frees meanwhile (an SQS receive long-polls).
            let want = if ahead.is_empty() {
                free.saturating_add(ending.count()).min(room)
            } else {
                0
            };
            if want == 0 {
                tokio::select! {
                    _ = running.join_next() => {}
                    _ = slots.acquire(), if free == 0 => {}
                    _ = ending.entered() => {}
                    // The leases of tasks waiting ahead are kept alive.
                    _ = tokio::time::sleep(visibility / 3), if !ahead.is_empty() => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            match self.queue.lease_many(&self.id, visibility, want).await {
                Ok(leases) if !leases.is_empty() => {
                    failures = 0;
                    let arrived = Instant::now();
                    for lease in leases {
                        match Arc::clone(&slots).try_acquire_owned() {
                            Ok(permit) if ahead.is_empty() => {
                                let slot = slot::Slot::new(permit, &ending);
                                self.start(&mut running, lease, arrived, slot, &hard, &hurry);
                            }
                            // In order: the ones leased ahead first.
                            _ => ahead.push_back((lease, arrived)),
                        }
                    }
                }
                Ok(_) => {
                    failures = 0;
                    tokio::select! {
                        _ = self.queue.wait_for_work(poll) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = self.config.worker.backoff().delay(failures).min(poll * 50);
                    tracing::error!(error = %e, ?delay, "cannot lease");
                    pause(delay, &stop).await;
                }
            }
        }
        // Leased ahead and never started: back to the queue at once, the
        // attempt given back.
        for (lease, _) in ahead.drain(..) {
            self.give_back_unstarted(&lease).await;
        }
        let grace = Duration::from_secs(self.config.worker.drain_grace_seconds);
        tracing::info!(running = running.len(), ?grace, "draining");
        let drained = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Cancel the runs; collection and teardown get
            // `drain_cleanup_seconds` in all (collection at most half of
            // it), so the drain ends before a pod's termination grace.
            let cleanup = Duration::from_secs(self.config.worker.drain_cleanup_seconds);
            tracing::warn!(
                running = running.len(),
                ?cleanup,
                "drain grace over; cancelling the rest"
            );
            hard.cancel();
            let hurry_later = {
                let hurry = hurry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(cleanup / 2).await;
                    hurry.cancel();
                })
            };
            let cleaned = tokio::time::timeout(cleanup, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            hurry_later.abort();
            if cleaned.is_err() {
                tracing::warn!(
                    running = running.len(),
                    "drain cleanup time over; leaving the rest to the reaper (their leases lapse, their handles are journaled)"
                );
                running.abort_all();
                while running.join_next().await.is_some() {}
            }
        }
        for task in background {
            task.abort();
        }
        // State changes still waiting for their batch (those of executions
        // the drain cut off) are written before the worker goes.
        match tokio::time::timeout(Duration::from_secs(5), self.recorder.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the last state changes"),
            Err(_) => tracing::warn!("the last state changes were not written within 5 s"),
        }
        self.store.worker_gone(&self.id).await?;
        tracing::info!("stopped");
        Ok(())
    }

    /// A heartbeat sent at `sent` was stored.
    fn beat_taken(&self, sent: Instant) {
        if let Ok(mut at) = self.beat_at.lock() {
            *at = Some(sent);
        }
    }

    /// Until when no other worker can take over this worker's journal
    /// entries for a lease that arrived at `arrived`: the lease must lapse
    /// first (no other worker is given the task before), and this worker
    /// must look dead (the reaper takes the entries of a worker whose
    /// heartbeat is `stale_after` old). Half of each, for clocks that
    /// differ between hosts. `None` before the first heartbeat.
    pub(super) fn surely_owned_until(&self, arrived: Instant) -> Option<Instant> {
        let beat = self.beat_at.lock().ok().and_then(|at| *at)?;
        let lease = arrived + self.config.worker.visibility() / 2;
        Some(lease.min(beat + self.config.worker.stale_after() / 2))
    }

    /// Run `lease` in `slot` as a task of `running`.
    fn start(
        &self,
        running: &mut JoinSet<()>,
        mut lease: Lease,
        arrived: Instant,
        slot: slot::Slot,
        hard: &CancellationToken,
        hurry: &CancellationToken,
    ) {
        // What the lease read of the journal (no live entry for the key)
        // may be out of date once the task waited ahead through a long
        // teardown: a previous holder whose lease lapsed could have
        // journaled a handle since. Claim as usual then.
        if arrived.elapsed() > JOURNAL_READ_FRESH {
            lease.journal_clear = false;
        }
        let me = self.clone();
        let (hard, hurry) = (hard.clone(), hurry.clone());
        running.spawn(async move {
            me.process_slot(lease, hard, Some(hurry), Some(slot), arrived)
                .await;
        });
    }

    /// Extend the lease of each task waiting ahead for a third of the
    /// visibility (a slot whose teardown takes long); one found lost is
    /// dropped, another worker has it now.
    async fn keep_ahead(&self, ahead: &mut VecDeque<(Lease, Instant)>, visibility: Duration) {
        let mut kept = VecDeque::with_capacity(ahead.len());
        for (lease, arrived) in ahead.drain(..) {
            if arrived.elapsed() < visibility / 3 {
                kept.push_back((lease, arrived));
                continue;
            }
            let renewed = Instant::now();
            match self.queue.extend(&lease, visibility).await {
                Ok(()) => kept.push_back((lease, renewed)),
                Err(e @ StoreError::LeaseLost { .. }) => {
                    tracing::warn!(task = %lease.task_id, error = %e, "a task leased ahead was lost while it waited for a slot; not running it");
                }
                // A busy store: the next pass tries again; until then its
                // old arrival makes the run read the journal's owner.
                Err(e) => {
                    tracing::warn!(task = %lease.task_id, error = %e, "cannot extend a task leased ahead");
                    kept.push_back((lease, arrived));
                }
            }
        }
        *ahead = kept;
    }

    /// A task leased ahead that never started: visible again at once, its
    /// attempt given back.
    async fn give_back_unstarted(&self, lease: &Lease) {
        let record = AttemptRecord {
            attempt: lease.attempt,
            worker: self.id.clone(),
            phase: None,
            kind: None,
            message: "leased ahead and given back unstarted: the worker stopped".into(),
            at_ms: now_ms(),
            counted: false,
        };
        if let Err(e) = self
            .queue
            .requeue(lease, Duration::ZERO, record, false)
            .await
        {
            tracing::warn!(task = %lease.task_id, error = %e, "cannot give back a task leased ahead; it is redelivered when its lease lapses");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal read before teardown is skipped only while both the
    /// lease and this worker's last heartbeat are surely current: a
    /// `stale_after` shorter than the visibility bounds it.
    #[tokio::test]
    async fn the_owner_read_is_skipped_only_within_half_the_lease_and_half_the_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let config = WorkerConfig::from_yaml_str(&format!(
            "queue: {{path: '{}'}}\nworker: {{visibility_seconds: 300, stale_after_seconds: 10}}\nrunners:\n  - {{type: local_mock}}\n",
            dir.path().join("q.sqlite3").display()
        ))
        .unwrap();
        let worker = Worker::new(config, &RunnerFactory::with_builtins(Metrics::new())).unwrap();
        let arrived = Instant::now();
        assert_eq!(worker.surely_owned_until(arrived), None, "no heartbeat yet");
        let beat = arrived - Duration::from_secs(1);
        worker.beat_taken(beat);
        assert_eq!(
            worker.surely_owned_until(arrived),
            Some(beat + Duration::from_secs(5))
        );
        worker.beat_taken(arrived + Duration::from_secs(400));
        assert_eq!(
            worker.surely_owned_until(arrived),
            Some(arrived + Duration::from_secs(150))
        );
    }
}
