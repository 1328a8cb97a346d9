//! The worker loop: lease tasks, execute them, record and settle them by
//! the policy; beside it the heartbeat, the cancel watcher and the periodic
//! reaper.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_core::{CancellationToken, LogSink, Phase, RunContext, RunnerAdapter, RunnerConfig};
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::WorkerConfig;
use crate::engine::{Engine, EngineSettings, Execution, ExecutionOutcome, pause};
use crate::factory::RunnerFactory;
use crate::metrics::{BackendLabels, Metrics, QueueLabels};
use crate::policy::{Disposition, Ending, decide};
use crate::queue::{AttemptRecord, Lease, TaskQueue};
use crate::reaper::{ReapOptions, reap};
use crate::recorder::Recorder;
use crate::report::{attempt_detail, disposition_name, new_execution, settlement};
use crate::store::{
    Backends, ExecState, RecordUpdate, SqliteStore, Store, StoreError, WorkerBeat, now_ms,
};
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

    /// A worker over the queue and store `config` names (see [`crate::store::open`]).
    pub async fn open(config: WorkerConfig, factory: &RunnerFactory) -> Result<Self, String> {
        let backends = crate::store::open(&config)
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
            let engine = Engine::new(
                adapter,
                EngineSettings {
                    retries: runner.retries,
                    backoff: config.worker.backoff(),
                    worker_id: id.clone(),
                    stale_after: config.worker.stale_after(),
                    max_concurrency: runner.max_concurrency,
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
        self.store.worker_heartbeat(&self.beat()).await?;
        let background = [
            self.spawn_heartbeat(),
            self.spawn_cancel_watcher(),
            self.spawn_reaper(stop.clone()),
        ];
        let mut running: JoinSet<()> = JoinSet::new();
        let concurrency = self.config.worker.concurrency;
        let mut failures = 0u32;
        tracing::info!(worker = %self.id, runners = ?self.runner_types(), store = self.store.kind(), "serving");
        while !stop.is_cancelled() {
            while running.try_join_next().is_some() {}
            let free = concurrency.saturating_sub(running.len());
            if free == 0 {
                tokio::select! {
                    _ = running.join_next() => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            match self.queue.lease_many(&self.id, visibility, free).await {
                Ok(leases) if !leases.is_empty() => {
                    failures = 0;
                    for lease in leases {
                        let me = self.clone();
                        let (hard, hurry) = (hard.clone(), hurry.clone());
                        running.spawn(async move {
                            me.process_with(lease, hard, Some(hurry)).await;
                        });
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
        self.store.worker_gone(&self.id).await?;
        tracing::info!("stopped");
        Ok(())
    }

    fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let every = Duration::from_secs((me.config.worker.stale_after_seconds / 4).clamp(1, 15));
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.store.worker_heartbeat(&me.beat()).await {
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

    /// Every second, ask the store which running executions someone asked
    /// to cancel, and cancel their runs (collect and teardown still run).
    fn spawn_cancel_watcher(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let keys: Vec<String> = match me.running.lock() {
                    Ok(r) => r.keys().cloned().collect(),
                    Err(_) => continue,
                };
                if keys.is_empty() {
                    continue;
                }
                match me.store.cancel_requested(&keys).await {
                    Ok(cancel) => {
                        for key in cancel {
                            if let Ok(running) = me.running.lock()
                                && let Some(token) = running.get(&key)
                                && !token.is_cancelled()
                            {
                                tracing::info!(execution_key = %key, "cancel requested; cancelling the run");
                                token.cancel();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read cancel requests"),
                }
            }
        })
    }

    /// Every `reap_interval_seconds`, reap and prune, when this worker
    /// holds the store's reaper lock (one worker of a fleet at a time).
    fn spawn_reaper(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let interval = Duration::from_secs(me.config.worker.reap_interval_seconds);
        tokio::spawn(async move {
            if interval.is_zero() {
                return;
            }
            loop {
                // Spread the fleet's attempts over the interval.
                let jitter =
                    Duration::from_millis(fastrand::u64(..=interval.as_millis() as u64 / 4 + 1));
                pause(interval + jitter, &stop).await;
                if stop.is_cancelled() {
                    return;
                }
                me.maintain().await;
            }
        })
    }

    /// One reap and prune, if this worker gets the reaper lock.
    pub async fn maintain(&self) {
        let ttl = Duration::from_secs(self.config.worker.reap_interval_seconds.max(60) * 2);
        match self
            .store
            .try_lock(crate::reaper::LOCK, &self.id, ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the reaper lock");
                return;
            }
        }
        let report = reap(
            &*self.store,
            &self.adapters(),
            &self.metrics,
            ReapOptions::from_worker(&self.config.worker, &self.id, false),
        )
        .await;
        if !report.torn_down.is_empty() || !report.errors.is_empty() {
            tracing::info!(
                torn_down = report.torn_down.len(),
                errors = report.errors.len(),
                "reaped"
            );
        }
        let worker = &self.config.worker;
        if let Err(e) = self
            .store
            .prune_executions(Duration::from_secs(
                worker.retention_days.saturating_mul(86_400),
            ))
            .await
        {
            tracing::warn!(error = %e, "cannot prune old records");
        }
        if let Err(e) = self
            .store
            .prune_workers(Duration::from_secs(
                worker.worker_retention_hours.saturating_mul(3600),
            ))
            .await
        {
            tracing::warn!(error = %e, "cannot prune old workers");
        }
        let _ = self.store.unlock(crate::reaper::LOCK, &self.id).await;
    }

    /// Execute one leased task and settle it. `hard` cancels the run.
    pub async fn process(&self, lease: Lease, hard: CancellationToken) -> Disposition {
        self.process_with(lease, hard, None).await
    }

    /// [`Worker::process`], with `hurry` cutting artifact collection short.
    pub async fn process_with(
        &self,
        lease: Lease,
        hard: CancellationToken,
        hurry: Option<CancellationToken>,
    ) -> Disposition {
        if let Some(problem) = &lease.body_error {
            return self.settle_bad(&lease, None, "unknown", problem).await;
        }
        let task = match Task::parse(&lease.body) {
            Ok(task) => task,
            Err(bad) => {
                return self
                    .settle_bad(&lease, None, "unknown", &bad.to_string())
                    .await;
            }
        };
        let Some(served) = self.served.get(&task.runner) else {
            let reason = format!(
                "bad task: unknown runner type `{}`; this worker serves: {}",
                task.runner,
                self.runner_types().join(", ")
            );
            return self
                .settle_bad(&lease, Some(&task), &task.runner, &reason)
                .await;
        };
        let max_attempts = served.config.max_attempts();
        let max_deliveries = self.config.worker.max_deliveries.max(max_attempts);
        if lease.attempt > max_deliveries {
            // Delivered more often than allowed: its workers kept dying (a poison task).
            let reason = format!(
                "delivered {} times (worker.max_deliveries is {max_deliveries}); its leases kept expiring without a result",
                lease.attempt
            );
            self.release_abandoned(&task).await;
            return self
                .settle_bad(&lease, Some(&task), &task.runner, &reason)
                .await;
        }

        // The checks submit made, again: a task may come from anywhere.
        let check = crate::validate::ids(&task)
            .and_then(|_| crate::validate::runner_type(Some(&task.runner), &task.bench))
            .and_then(|_| {
                let ctx = RunContext::new(&task.execution_key, task.correlation())
                    .with_execution_key(&task.execution_key);
                crate::validate::task(&**served.engine.adapter(), &ctx, &task.bench, &task.payload)
                    .and_then(|_| {
                        crate::validate::allowed(&served.config, &task.bench, &task.payload, true)
                    })
            });
        if let Err(invalid) = check {
            let reason = format!("invalid_spec: {invalid}");
            return self
                .settle_bad(&lease, Some(&task), &task.runner, &reason)
                .await;
        }
        // Secret references resolve here, in this worker's memory only.
        let resolved = match crate::secrets::resolve(&task.payload).await {
            Ok(payload) => payload,
            Err(e) if e.kind == runner_core::ErrorKind::Transient && lease.failures < 5 => {
                // Throttled or timed out: the secret may well resolve later.
                let delay = self.config.worker.backoff().delay(lease.failures + 1);
                tracing::warn!(task = %lease.task_id, error = %e, ?delay, "a secret did not resolve; trying again later");
                let record = AttemptRecord {
                    attempt: lease.attempt,
                    worker: self.id.clone(),
                    phase: None,
                    kind: Some(e.kind),
                    message: e.to_string(),
                    at_ms: now_ms(),
                    counted: true,
                };
                if let Err(err) = self.queue.requeue(&lease, delay, record, true).await {
                    tracing::warn!(task = %lease.task_id, error = %err, "cannot requeue the task");
                }
                return Disposition::Requeue {
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                };
            }
            Err(e) => {
                let reason = format!("{}: {e}", e.kind);
                return self
                    .settle_bad(&lease, Some(&task), &task.runner, &reason)
                    .await;
            }
        };
        // A queue that cannot take a task back (SQS) may deliver one whose
        // cancel was asked for while it waited.
        if !self.queue.keeps_records() && self.cancel_was_requested(&task.execution_key).await {
            return self.settle_cancelled(&lease, &task).await;
        }
        // SQS delivers at least once: a message redelivered while its first
        // delivery ran (a visibility timeout passed under load) can come
        // back after that execution settled and its delete went to the old
        // receipt. The record says it is done: drop the copy, never run it twice.
        if !self.queue.keeps_records() && self.already_settled(&task.execution_key).await {
            tracing::info!(execution_key = %task.execution_key, "a duplicate delivery of a settled execution; dropping it");
            if let Err(e) = self.queue.ack(&lease, "{\"duplicate\":true}").await {
                tracing::warn!(error = %e, "cannot drop a duplicate delivery");
            }
            return Disposition::Ack;
        }
        let new = new_execution(&task);
        let backend = BackendLabels {
            backend: task.runner.clone(),
        };
        self.metrics.in_flight.get_or_create(&backend).inc();
        let run_token = hard.child_token();
        if let Ok(mut running) = self.running.lock() {
            running.insert(task.execution_key.clone(), run_token.clone());
        }
        self.recorder
            .push(RecordUpdate::State {
                new: new.clone(),
                state: ExecState::Leased,
                at_ms: now_ms(),
                attempt: Some(lease.attempt),
                worker: Some(self.id.clone()),
                message: format!("attempt {} leased by {}", lease.attempt, self.id),
            })
            .await;
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
            .with_worker(&self.id)
            .with_cancel(run_token.clone())
            .with_log_sink(sink.with_redactor(resolved.redactor()));
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
        let observer = {
            let (recorder, new, worker, attempt) = (
                self.recorder.clone(),
                new.clone(),
                self.id.clone(),
                lease.attempt,
            );
            let handle = tokio::runtime::Handle::current();
            Arc::new(move |phase: Phase| {
                let update = RecordUpdate::State {
                    new: new.clone(),
                    state: ExecState::of_phase(phase),
                    at_ms: now_ms(),
                    attempt: Some(attempt),
                    worker: Some(worker.clone()),
                    message: format!("{phase}"),
                };
                let recorder = recorder.clone();
                handle.spawn(async move { recorder.push(update).await });
            }) as crate::engine::PhaseObserver
        };
        let outcome = served
            .engine
            .execute(Execution {
                ctx,
                bench: &task.bench,
                payload: &resolved,
                observer: Some(observer),
                hurry,
            })
            .instrument(span)
            .await;
        let _ = logs.await;
        let cancelled_by_request = run_token.is_cancelled() && !hard.is_cancelled();
        if let Ok(mut running) = self.running.lock() {
            running.remove(&task.execution_key);
        }
        self.metrics.in_flight.get_or_create(&backend).dec();
        if outcome.teardown_error.is_some() {
            self.metrics.teardown_failures.get_or_create(&backend).inc();
        }

        let ending = outcome.ending(hard.is_cancelled());
        // Against the retries count the attempts that failed, not the
        // deliveries whose worker died.
        let attempt = lease.failures.saturating_add(1);
        let mut disposition = decide(
            &ending,
            attempt,
            max_attempts,
            &self.config.worker.backoff(),
        );
        if cancelled_by_request && self.cancel_was_requested(&task.execution_key).await {
            // Someone asked for this cancel: the execution is over.
            disposition = Disposition::Ack;
        }
        let record = attempt_record(&self.id, lease.attempt, &outcome, &ending);
        let detail = attempt_detail(lease.attempt, &self.id, &outcome, &disposition);
        let dead_reason = match (&disposition, &outcome.failure) {
            (Disposition::DeadLetter { reason }, Some(f)) => {
                Some(format!("{reason}: {}", f.message))
            }
            (Disposition::DeadLetter { reason }, None) => Some(reason.clone()),
            _ => None,
        };
        let suite = crate::report::suite_cases(outcome.artifacts.as_ref()).await;
        let mut update = match settlement(
            new.clone(),
            &outcome,
            detail.clone(),
            &disposition,
            dead_reason.as_deref(),
            suite,
        ) {
            Some(mut s) => {
                if cancelled_by_request && s.state != ExecState::DeadLettered {
                    s.state = ExecState::Cancelled;
                }
                RecordUpdate::Settled(Box::new(s))
            }
            None => RecordUpdate::AttemptEnded {
                key: task.execution_key.clone(),
                detail,
                state: ExecState::Queued,
            },
        };
        // Before and after the queue call: a worker killed in between leaves
        // "settling" without "settled" (the queue may or may not have it).
        tracing::debug!(
            task = %lease.task_id,
            execution_key = %task.execution_key,
            attempt = lease.attempt,
            disposition = disposition_name(&disposition),
            "settling"
        );
        // The record first: once the queue forgets the task (SQS deletes
        // the message) the record is the only place the outcome lives.
        if let Err(e) = self.commit_with_retry(&mut update).await {
            tracing::warn!(error = %e, "cannot record the outcome; settling the task anyway");
        }
        let settled = self
            .settle_with_retry(&lease, &task, &outcome, &disposition, &record, dead_reason)
            .await;
        keeper.abort();
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

    /// Tear down the live handle a poison task left (its workers died
    /// holding it), so dead-lettering it leaves nothing behind.
    async fn release_abandoned(&self, task: &Task) {
        if let Some(served) = self.served.get(&task.runner) {
            served.engine.release_journaled(&task.execution_key).await;
        }
    }

    async fn already_settled(&self, key: &str) -> bool {
        matches!(self.store.execution(key).await, Ok(Some(record)) if record.settled_ms.is_some())
    }

    async fn cancel_was_requested(&self, key: &str) -> bool {
        self.store
            .cancel_requested(&[key.to_owned()])
            .await
            .is_ok_and(|k| !k.is_empty())
    }

    async fn commit_with_retry(&self, update: &mut RecordUpdate) -> Result<(), StoreError> {
        let backoff = self.config.worker.backoff();
        let mut tries = 0;
        loop {
            tries += 1;
            match self.recorder.commit(update.clone()).await {
                Err(e) if e.is_retryable() && tries < 5 => {
                    tokio::time::sleep(backoff.delay(tries).min(Duration::from_secs(5))).await;
                }
                other => return other,
            }
        }
    }

    /// Ack, requeue or dead-letter, retried with backoff while the store
    /// fails and the lease is still ours: a result is never dropped because
    /// one store call failed.
    async fn settle_with_retry(
        &self,
        lease: &Lease,
        task: &Task,
        outcome: &ExecutionOutcome,
        disposition: &Disposition,
        record: &AttemptRecord,
        dead_reason: Option<String>,
    ) -> Result<(), StoreError> {
        let backoff = self.config.worker.backoff();
        let bound = self.config.worker.visibility();
        let started = std::time::Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let result = match disposition {
                Disposition::Ack => {
                    let json = serde_json::to_string(&AckRecord {
                        execution_key: &task.execution_key,
                        attempt: lease.attempt,
                        outcome,
                    })
                    .unwrap_or_default();
                    self.queue.ack(lease, &json).await
                }
                Disposition::Requeue { delay_ms } => {
                    self.queue
                        .requeue(
                            lease,
                            Duration::from_millis(*delay_ms),
                            record.clone(),
                            true,
                        )
                        .await
                }
                Disposition::Release => {
                    self.queue
                        .requeue(lease, Duration::ZERO, record.clone(), false)
                        .await
                }
                Disposition::Defer { delay_ms } => {
                    self.queue
                        .requeue(
                            lease,
                            Duration::from_millis(*delay_ms),
                            record.clone(),
                            false,
                        )
                        .await
                }
                Disposition::DeadLetter { reason } => {
                    let reason = dead_reason.clone().unwrap_or_else(|| reason.clone());
                    self.queue.dead_letter(lease, &reason, record.clone()).await
                }
            };
            match result {
                Err(StoreError::LeaseLost { task_id }) => {
                    return Err(StoreError::LeaseLost { task_id });
                }
                Err(e) if started.elapsed() < bound => {
                    let delay = backoff.delay(tries).min(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?delay, try_number = tries, "settling failed; trying again");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Ack a task whose cancel was asked for before it ran.
    async fn settle_cancelled(&self, lease: &Lease, task: &Task) -> Disposition {
        let update = RecordUpdate::Settled(Box::new(crate::store::Settlement {
            new: new_execution(task),
            state: ExecState::Cancelled,
            at_ms: now_ms(),
            attempt: None,
            result: None,
            artifacts: Vec::new(),
            cases: Vec::new(),
            error: Some("cancelled before it ran".into()),
        }));
        if let Err(e) = self.recorder.commit(update).await {
            tracing::warn!(error = %e, "cannot record a cancelled task");
        }
        if let Err(e) = self.queue.ack(lease, "{\"cancelled\":true}").await {
            tracing::warn!(error = %e, "cannot ack a cancelled task");
        }
        self.metrics.execution(&task.runner, "ack");
        Disposition::Ack
    }

    async fn settle_bad(
        &self,
        lease: &Lease,
        task: Option<&Task>,
        backend: &str,
        reason: &str,
    ) -> Disposition {
        tracing::warn!(task = %lease.task_id, reason, "dead-lettering a bad task");
        let record = AttemptRecord {
            attempt: lease.attempt,
            worker: self.id.clone(),
            phase: None,
            kind: Some(runner_core::ErrorKind::InvalidSpec),
            message: reason.to_owned(),
            at_ms: now_ms(),
            counted: true,
        };
        if let Some(task) = task {
            let update = RecordUpdate::Settled(Box::new(crate::store::Settlement {
                new: new_execution(task),
                state: ExecState::DeadLettered,
                at_ms: now_ms(),
                attempt: None,
                result: None,
                artifacts: Vec::new(),
                cases: Vec::new(),
                error: Some(reason.to_owned()),
            }));
            if let Err(e) = self.recorder.commit(update).await {
                tracing::warn!(error = %e, "cannot record a bad task");
            }
        }
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
                    Err(e @ StoreError::LeaseLost { .. }) => {
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
        counted: true,
    }
}
