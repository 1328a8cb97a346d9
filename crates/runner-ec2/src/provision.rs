//! Provisioning: adopt what this execution key already made, claim from
//! the warm pool, or launch; then wait until the instance is ready.

use std::time::Duration;

use runner_core::{BenchSpec, ProvisionError, RunContext, RunnerHandle, decode_spec};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::BenchBackend;
use crate::instances::{LIVE_STATES, Ops, now_secs, tags};
use crate::{Ec2Runner, Ec2State, RUNNER_TYPE, pool};

/// The RunInstances client token of launch `try_number` (0 first) of an
/// attempt: the same for the SDK's own retries of one call, new for each
/// launch this worker makes.
pub(crate) fn client_token(
    owner: &str,
    execution_key: &str,
    attempt: u32,
    try_number: u32,
) -> String {
    let seed = if try_number == 0 {
        format!("{owner}\n{execution_key}\n{attempt}")
    } else {
        format!("{owner}\n{execution_key}\n{attempt}\n{try_number}")
    };
    let digest = Sha256::digest(seed.as_bytes());
    // 64 ASCII characters at most; 5 + 40.
    format!("orch-{}", &hex::encode(digest)[..40])
}

/// Launches remembered per execution before the table is emptied (a
/// forgotten count only makes a token repeat, which adoption by tag covers).
const LAUNCHES_KEPT: usize = 4096;

impl Ec2Runner {
    /// The number of this launch of `execution_id` by this runner (0 first).
    fn next_launch(&self, execution_id: &str) -> u32 {
        let mut launches = self
            .inner
            .launches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if launches.len() >= LAUNCHES_KEPT && !launches.contains_key(execution_id) {
            launches.clear();
        }
        let n = launches.entry(execution_id.to_string()).or_insert(0);
        let this = *n;
        *n += 1;
        this
    }

    fn handle(
        &self,
        ctx: &RunContext,
        instance_id: &str,
        pool: Option<String>,
    ) -> Result<RunnerHandle, ProvisionError> {
        RunnerHandle::new(
            RUNNER_TYPE,
            instance_id,
            ctx.execution_id(),
            &Ec2State {
                instance_id: instance_id.to_string(),
                execution_key: ctx.execution_key().to_string(),
                pool,
            },
        )
        .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))
    }

    fn deadline(&self, ctx: &RunContext) -> Instant {
        ctx.deadline().map(Instant::from_std).unwrap_or_else(|| {
            Instant::now() + Duration::from_secs(self.inner.config.provision_wait_seconds)
        })
    }

    /// Wait for an instance; terminate it when it does not get there.
    async fn ready_or_terminate(
        &self,
        ops: &Ops,
        ctx: &RunContext,
        id: &str,
    ) -> Result<(), ProvisionError> {
        match ops
            .wait_ready(id, self.deadline(ctx), ctx.cancel_token())
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(instance = id, error = %e, "instance not ready; terminating it before the error returns");
                if let Err(t) = ops.terminate(id).await {
                    tracing::warn!(instance = id, error = %t, "could not terminate the half-made instance; leak listing will find it");
                }
                Err(e.into_runner(ctx))
            }
        }
    }

    fn execution_tags(&self, ctx: &RunContext) -> Vec<(String, String)> {
        vec![
            (
                tags::MANAGED_BY.to_string(),
                self.inner.config.owner.clone(),
            ),
            (
                tags::EXECUTION_KEY.to_string(),
                ctx.execution_key().to_string(),
            ),
            (
                tags::EXECUTION_ID.to_string(),
                ctx.execution_id().to_string(),
            ),
            (
                tags::CORRELATION_ID.to_string(),
                ctx.correlation_id().to_string(),
            ),
            ("Name".to_string(), format!("orch-{}", ctx.execution_id())),
        ]
        .into_iter()
        .chain(
            (!ctx.worker_id().is_empty())
                .then(|| (tags::WORKER.to_string(), ctx.worker_id().to_string())),
        )
        .collect()
    }

    pub(crate) async fn provision_impl(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        let wanted: BenchBackend = decode_spec(ctx, &bench.backend, "bench.backend")?;
        wanted
            .validate()
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        let clients = self.clients().await;
        let ops = &clients.ops;
        let config = &self.inner.config;

        // 1. An instance already made for this execution (an earlier attempt,
        //    or a worker that died mid-provision): adopt one, end the rest.
        let mine = ops
            .describe_tagged(&[(tags::EXECUTION_KEY, ctx.execution_key())], LIVE_STATES)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        let mut adopted = None;
        for instance in mine {
            if adopted.is_none() && matches!(instance.state.as_str(), "pending" | "running") {
                adopted = Some(instance);
            } else {
                tracing::info!(instance = %instance.id, state = %instance.state, "terminating a second or stopped instance of this execution");
                ops.terminate(&instance.id)
                    .await
                    .map_err(|e| e.into_runner(ctx))?;
            }
        }
        if let Some(instance) = adopted {
            tracing::info!(instance = %instance.id, "adopting the instance already tagged with this execution key");
            ops.set_tags(
                &instance.id,
                &[
                    (tags::EXECUTION_ID, ctx.execution_id().to_string()),
                    (tags::CORRELATION_ID, ctx.correlation_id().to_string()),
                ],
            )
            .await
            .map_err(|e| e.into_runner(ctx))?;
            self.ready_or_terminate(ops, ctx, &instance.id).await?;
            return self.handle(
                ctx,
                &instance.id,
                instance.tag(tags::POOL).map(str::to_string),
            );
        }

        // 2. The warm pool.
        let pool = config.pool.as_ref().filter(|_| wanted.uses_pool());
        if let Some(pool) = pool {
            let claimed = {
                let _claims = self.inner.claim_lock.lock().await;
                pool::claim(ops, pool, ctx)
                    .await
                    .map_err(|e| e.into_runner(ctx))?
            };
            if let Some(instance) = claimed {
                self.ready_or_terminate(ops, ctx, &instance.id).await?;
                return self.handle(ctx, &instance.id, Some(pool.name.clone()));
            }
        }

        // 3. Launch.
        let mut launch_tags = self.execution_tags(ctx);
        if let Some(pool) = pool {
            launch_tags.extend([
                (tags::POOL.to_string(), pool.name.clone()),
                (tags::POOL_STATE.to_string(), "busy".to_string()),
                (tags::USES.to_string(), "0".to_string()),
                (tags::SINCE.to_string(), now_secs().to_string()),
            ]);
        }
        // A fresh token per launch of this worker: an in-place retry after
        // a launch that was terminated (not ready in time) must not get
        // that terminated instance back from RunInstances' idempotency.
        // A crash-redelivery adopts by tag above, before any launch.
        let try_number = self.next_launch(ctx.execution_id());
        let token = client_token(
            &config.owner,
            ctx.execution_key(),
            ctx.attempt(),
            try_number,
        );
        let id = ops
            .launch(&wanted, &token, &launch_tags)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        tracing::info!(instance = %id, "launched");
        self.ready_or_terminate(ops, ctx, &id).await?;
        self.handle(ctx, &id, pool.map(|p| p.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_and_follow_key_attempt_and_try() {
        let a = client_token("o", "k", 1, 0);
        assert!(a.len() <= 64 && a.is_ascii());
        assert_eq!(a, client_token("o", "k", 1, 0));
        assert_ne!(a, client_token("o", "k", 2, 0));
        assert_ne!(a, client_token("o", "k2", 1, 0));
        assert_ne!(a, client_token("o2", "k", 1, 0));
        assert_ne!(a, client_token("o", "k", 1, 1));
    }
}
