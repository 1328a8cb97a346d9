//! Beside the serve loop: the heartbeat, the cancel watcher, and the
//! periodic reaper (`Worker::maintain`).

use std::time::Duration;

use runner_core::CancellationToken;

use crate::engine::pause;
use crate::metrics::QueueLabels;
use crate::reaper::{ReapOptions, reap};

use super::Worker;

impl Worker {
    pub(super) fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let every = Duration::from_secs((me.config.worker.stale_after_seconds / 4).clamp(1, 15));
        tokio::spawn(async move {
            loop {
                let sent = std::time::Instant::now();
                match me.store.worker_heartbeat(&me.beat()).await {
                    Ok(()) => me.beat_taken(sent),
                    Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
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
    pub(super) fn spawn_cancel_watcher(&self) -> tokio::task::JoinHandle<()> {
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
    pub(super) fn spawn_reaper(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
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
}
