//! The worker loop: lease tasks, execute them, settle them by the policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runner_core::{CancellationToken, LogSink, RunContext, RunnerAdapter, RunnerConfig};
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::WorkerConfig;
use crate::engine::{Engine, EngineSettings, Execution, ExecutionOutcome, pause};
use crate::factory::RunnerFactory;
use crate::metrics::{BackendLabels, Metrics, QueueLabels};
use crate::policy::{Disposition, Ending, decide};
use crate::queue::{AttemptRecord, Lease, QueueError, SqliteStore, TaskQueue, now_ms};
use crate::task::Task;

/// A runner type the worker serves: its config and its engine.
#[derive(Debug, Clone)]
struct Served {
    config: RunnerConfig,
    engine: Engine,
}

/// What is stored with an acked task.
#[derive(Debug, Serialize)]
struct AckRecord<'a> {
    execution_key: &'a str,
    attempt: u32,
    outcome: &'a ExecutionOutcome,
}

/// A worker: one queue, the runners of its config.
#[derive(Clone)]
pub struct Worker {
    id: String,
    config: WorkerConfig,
    store: SqliteStore,
    queue: Arc<dyn TaskQueue>,
    served: Arc<BTreeMap<String, Served>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).finish()
    }
}

impl Worker {
    /// A worker over the SQLite store of `config`, with adapters from `factory`.
    pub fn new(config: WorkerConfig, factory: &RunnerFactory) -> Result<Self, String> {
        let store = SqliteStore::open(&config.queue.path).map_err(|e| e.to_string())?;
        let queue: Arc<dyn TaskQueue> = Arc::new(store.clone());
        Self::with_queue(config, factory, store, queue)
    }

    /// A worker taking tasks from `queue` (SQS, say); `store` keeps the
    /// journal and worker heartbeats on this machine.
    pub fn with_queue(
        config: WorkerConfig,
        factory: &RunnerFactory,
        store: SqliteStore,
        queue: Arc<dyn TaskQueue>,
    ) -> Result<Self, String> {
        let id = format!(
            "{}-{}-{:06x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..0xFF_FFFF)
        );
        let mut served = BTreeMap::new();
        for runner in &config.runners {
            let adapter = factory.create(runner).map_err(|e| e.to_string())?;
            let engine = Engine::new(
                adapter,
                EngineSettings {
                    retries: runner.retries,
                    backoff: config.worker.backoff(),
                    worker_id: id.clone(),
                },
            )
            .with_journal(store.clone());
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
            queue,
            store,
            served: Arc::new(served),
            config,
            metrics: factory.metrics().clone(),
        })
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The store (queue, journal).
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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

    /// Serve until `stop` fires; then stop leasing, give running executions
    /// the drain grace, cancel what is left (it is torn down and released
    /// back to the queue), and return.
    pub async fn serve(&self, stop: CancellationToken) -> Result<(), QueueError> {
        let hard = CancellationToken::new();
        let visibility = self.config.worker.visibility();
        let poll = Duration::from_millis(self.config.worker.poll_ms);
        let beat = self.spawn_heartbeat();
        let mut running: JoinSet<()> = JoinSet::new();
        tracing::info!(worker = %self.id, runners = ?self.runner_types(), "serving");
        while !stop.is_cancelled() {
            while running.try_join_next().is_some() {}
            if running.len() >= self.config.worker.concurrency {
                tokio::select! {
                    _ = running.join_next() => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            match self.queue.lease(&self.id, visibility).await {
                Ok(Some(lease)) => {
                    let me = self.clone();
                    let hard = hard.clone();
                    running.spawn(async move {
                        me.process(lease, hard).await;
                    });
                }
                Ok(None) => pause(poll, &stop).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot lease");
                    pause(poll * 10, &stop).await;
                }
            }
        }
        let grace = Duration::from_secs(self.config.worker.drain_grace_seconds);
        tracing::info!(running = running.len(), ?grace, "draining");
        let drained = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                running = running.len(),
                "drain grace over; cancelling the rest"
            );
            hard.cancel();
            while running.join_next().await.is_some() {}
        }
        beat.abort();
        self.store.worker_gone(&self.id).await?;
        tracing::info!("stopped");
        Ok(())
    }

    fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let every = Duration::from_secs((me.config.worker.stale_after_seconds / 4).clamp(1, 15));
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.store.worker_heartbeat(&me.id, std::process::id()).await {
                    tracing::warn!(error = %e, "worker heartbeat failed");
                }
                if let Ok(depth) = me.queue.depth().await {
                    for (state, n) in [
                        ("ready", depth.ready),
                        ("delayed", depth.delayed),
                        ("leased", depth.leased),
                        ("dead", depth.dead),
                    ] {
                        me.metrics
                            .queue_depth
                            .get_or_create(&QueueLabels {
                                state: state.into(),
                            })
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
                // Keep beating while draining, at the same pace: the reaper
                // must not take the handles of executions still finishing.
                // `serve` aborts this task when it returns.
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Execute one leased task and settle it. `hard` cancels the run.
    pub async fn process(&self, lease: Lease, hard: CancellationToken) -> Disposition {
        let task = match Task::parse(&lease.body) {
            Ok(task) => task,
            Err(bad) => return self.settle_bad(&lease, "unknown", &bad.to_string()).await,
        };
        let Some(served) = self.served.get(&task.runner) else {
            let reason = format!(
                "bad task: unknown runner type `{}`; this worker serves: {}",
                task.runner,
                self.runner_types().join(", ")
            );
            return self.settle_bad(&lease, &task.runner, &reason).await;
        };
        let max_attempts = served.config.max_attempts();
        if lease.attempt > max_attempts {
            // Delivered more often than allowed: its workers kept dying (a poison task).
            let reason = format!(
                "attempts exhausted ({} deliveries, at most {max_attempts}); the leases expired without a result",
                lease.attempt
            );
            return self.settle_bad(&lease, &task.runner, &reason).await;
        }

        let backend = BackendLabels {
            backend: task.runner.clone(),
        };
        self.metrics.in_flight.get_or_create(&backend).inc();
        let run_token = hard.child_token();
        let keeper = self.spawn_lease_keeper(&lease, run_token.clone());
        let execution_id = format!("{}.{}", task.execution_key, lease.attempt);
        let (sink, mut rx) = LogSink::channel(1024);
        let logs = tokio::spawn({
            let execution_id = execution_id.clone();
            async move {
                while let Some(batch) = rx.recv_batch().await {
                    for (stream, text) in batch.iter() {
                        tracing::debug!(target: "test_output", execution_id = %execution_id, stream = ?stream, "{}", text);
                    }
                }
            }
        });
        let ctx = RunContext::new(&execution_id, task.correlation())
            .with_execution_key(&task.execution_key)
            .with_attempt(lease.attempt)
            .with_cancel(run_token)
            .with_log_sink(sink.with_redactor(task.payload.redactor()));
        // One trace per execution: this span is the parent of the four
        // phase spans, and the child of the submitter's span when the task
        // carried a trace context.
        let span = tracing::info_span!(
            "execution",
            backend = %task.runner,
            execution_key = %task.execution_key,
            execution_id = %execution_id,
            correlation_id = %task.correlation(),
            attempt = lease.attempt,
        );
        crate::telemetry::continue_trace(&span, &lease.attributes);
        let outcome = served
            .engine
            .execute(Execution {
                ctx,
                bench: &task.bench,
                payload: &task.payload,
                observer: None,
            })
            .instrument(span)
            .await;
        let _ = logs.await;
        keeper.abort();
        self.metrics.in_flight.get_or_create(&backend).dec();
        if outcome.teardown_error.is_some() {
            self.metrics.teardown_failures.get_or_create(&backend).inc();
        }

        let ending = outcome.ending(hard.is_cancelled());
        let disposition = decide(
            &ending,
            lease.attempt,
            max_attempts,
            &self.config.worker.backoff(),
        );
        let record = attempt_record(&self.id, lease.attempt, &outcome, &ending);
        // Before and after the queue call: a worker killed in between leaves
        // "settling" without "settled" (the queue may or may not have it).
        tracing::debug!(
            task = %lease.task_id,
            execution_key = %task.execution_key,
            attempt = lease.attempt,
            disposition = disposition_name(&disposition),
            "settling"
        );
        let settled = match &disposition {
            Disposition::Ack => {
                let json = serde_json::to_string(&AckRecord {
                    execution_key: &task.execution_key,
                    attempt: lease.attempt,
                    outcome: &outcome,
                })
                .unwrap_or_default();
                self.queue.ack(&lease, &json).await
            }
            Disposition::Requeue { delay_ms } => {
                self.queue
                    .requeue(&lease, Duration::from_millis(*delay_ms), record, true)
                    .await
            }
            Disposition::Release => {
                self.queue
                    .requeue(&lease, Duration::ZERO, record, false)
                    .await
            }
            Disposition::DeadLetter { reason } => {
                let reason = match &outcome.failure {
                    Some(f) => format!("{reason}: {}", f.message),
                    None => reason.clone(),
                };
                self.queue.dead_letter(&lease, &reason, record).await
            }
        };
        match settled {
            Ok(()) => tracing::info!(
                task = %lease.task_id,
                execution_key = %task.execution_key,
                attempt = lease.attempt,
                disposition = disposition_name(&disposition),
                "settled"
            ),
            Err(e) => {
                tracing::warn!(error = %e, task = %lease.task_id, "cannot settle the task; it will be redelivered")
            }
        }
        self.metrics
            .execution(&task.runner, disposition_name(&disposition));
        disposition
    }

    async fn settle_bad(&self, lease: &Lease, backend: &str, reason: &str) -> Disposition {
        tracing::warn!(task = %lease.task_id, reason, "dead-lettering a bad task");
        let record = AttemptRecord {
            attempt: lease.attempt,
            worker: self.id.clone(),
            phase: None,
            kind: Some(runner_core::ErrorKind::InvalidSpec),
            message: reason.to_owned(),
            at_ms: now_ms(),
        };
        if let Err(e) = self.queue.dead_letter(lease, reason, record).await {
            tracing::warn!(error = %e, "cannot dead-letter a bad task");
        }
        self.metrics.execution(backend, "dead_letter");
        Disposition::DeadLetter {
            reason: reason.to_owned(),
        }
    }

    /// Extend the lease while the test runs. A lease found lost (expired and
    /// taken by another worker) cancels the run: the task belongs elsewhere now.
    fn spawn_lease_keeper(
        &self,
        lease: &Lease,
        run: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let queue = Arc::clone(&self.queue);
        let lease = lease.clone();
        let visibility = self.config.worker.visibility();
        tokio::spawn(async move {
            let every = (visibility / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                match queue.extend(&lease, visibility).await {
                    Ok(()) => {}
                    Err(e @ QueueError::LeaseLost { .. }) => {
                        tracing::warn!(error = %e, "lease lost; cancelling the run");
                        run.cancel();
                        return;
                    }
                    // A busy or failing store: try again next beat.
                    Err(e) => tracing::warn!(error = %e, "lease heartbeat failed"),
                }
            }
        })
    }
}

fn disposition_name(d: &Disposition) -> &'static str {
    match d {
        Disposition::Ack => "ack",
        Disposition::Requeue { .. } => "requeue",
        Disposition::Release => "release",
        Disposition::DeadLetter { .. } => "dead_letter",
    }
}

fn attempt_record(
    worker: &str,
    attempt: u32,
    outcome: &ExecutionOutcome,
    ending: &Ending,
) -> AttemptRecord {
    let (phase, kind, message) = match (&outcome.failure, &outcome.result) {
        (Some(f), _) => (Some(f.phase), Some(f.kind), f.message.clone()),
        (None, Some(r)) => (None, None, format!("test {}", r.status.as_str())),
        (None, None) => (None, None, format!("{ending:?}")),
    };
    AttemptRecord {
        attempt,
        worker: worker.to_owned(),
        phase,
        kind,
        message,
        at_ms: now_ms(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}
