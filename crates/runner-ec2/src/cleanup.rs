//! Teardown (the environment files first, then the instance or its return
//! to the pool) and leak listing by tag.

use runner_core::{ListOwnedError, OwnedResource, RunContext, RunnerHandle, TeardownError};

use crate::instances::{LIVE_STATES, now_secs, tags};
use crate::{Ec2Runner, Ec2State, RUNNER_TYPE, pool};

/// Where the attempts of `execution_key` keep their files: execution ids
/// are `KEY.ATTEMPT`, so this is `PREFIX/KEY.`.
fn attempts_prefix(prefix: &str, execution_key: &str) -> String {
    let base = prefix.trim_matches('/');
    if base.is_empty() {
        format!("{execution_key}.")
    } else {
        format!("{base}/{execution_key}.")
    }
}

/// Whether `key` is the `env.sh` of one attempt under `attempts` (the
/// attempt number, then the file: another key that merely starts the
/// same, `KEY.other/...`, is not).
fn is_attempt_env_file(attempts: &str, key: &str) -> bool {
    key.strip_prefix(attempts)
        .and_then(|rest| rest.strip_suffix("/env.sh"))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

impl Ec2Runner {
    pub(crate) async fn teardown_impl(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
    ) -> Result<(), TeardownError> {
        let state: Ec2State = handle.decode_in(ctx, RUNNER_TYPE)?;
        let clients = self.clients().await;
        let ops = &clients.ops;
        // The environment file may hold secrets; it goes first: the
        // handle's execution's (a reaper tears down with its own context)
        // and the context's (a later attempt on an adopted instance).
        let mut env_keys = vec![handle.execution_id()];
        if ctx.execution_id() != handle.execution_id() {
            env_keys.push(ctx.execution_id());
        }
        let mut env_keys: Vec<String> = env_keys
            .into_iter()
            .map(|id| format!("{}env.sh", self.inner.config.execution_prefix(id)))
            .collect();
        // And every other attempt's of this execution key: an attempt whose
        // worker died after writing its file never tore down.
        let key_prefix = attempts_prefix(&self.inner.config.prefix, &state.execution_key);
        match clients.store.list(&key_prefix).await {
            Ok(objects) => env_keys.extend(
                objects
                    .into_iter()
                    .map(|o| o.key)
                    .filter(|k| is_attempt_env_file(&key_prefix, k)),
            ),
            Err(e) => {
                tracing::warn!(prefix = %key_prefix, error = %e, "could not list the execution's environment files");
            }
        }
        env_keys.sort();
        env_keys.dedup();
        for env_key in env_keys {
            let deleted = clients
                .store
                .client()
                .delete_object()
                .bucket(clients.store.bucket())
                .key(&env_key)
                .send()
                .await;
            if let Err(e) = deleted {
                tracing::warn!(key = %env_key, error = %runner_aws::classify("s3:DeleteObject", &e), "could not delete the environment file");
            }
        }
        if state.pool.is_some() {
            let _claims = self.inner.claim_lock.lock().await;
            return pool::release(
                ops,
                self.inner.config.pool.as_ref(),
                &state.instance_id,
                &state.execution_key,
            )
            .await
            .map_err(|e| e.into_runner(ctx));
        }
        match ops
            .describe(&state.instance_id)
            .await
            .map_err(|e| e.into_runner(ctx))?
        {
            None => Ok(()),
            Some(instance) if instance.is_terminated() => Ok(()),
            Some(instance)
                if instance
                    .tag(tags::EXECUTION_KEY)
                    .is_some_and(|k| k != state.execution_key) =>
            {
                tracing::warn!(instance = %instance.id, "not terminating: the instance is tagged with another execution");
                Ok(())
            }
            Some(instance) => ops
                .terminate(&instance.id)
                .await
                .map_err(|e| e.into_runner(ctx)),
        }
    }

    pub(crate) async fn list_owned_impl(
        &self,
        ctx: &RunContext,
    ) -> Result<Vec<OwnedResource>, ListOwnedError> {
        let clients = self.clients().await;
        let instances = clients
            .ops
            .describe_tagged(&[], LIVE_STATES)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        let now = now_secs();
        let mut owned = Vec::new();
        for instance in instances {
            let Some(key) = instance.tag(tags::EXECUTION_KEY) else {
                continue;
            };
            let execution_id = instance.tag(tags::EXECUTION_ID).unwrap_or(key).to_string();
            let since = instance
                .tag(tags::SINCE)
                .and_then(|s| s.parse::<i64>().ok())
                .or(instance.launched);
            let handle = RunnerHandle::new(
                RUNNER_TYPE,
                &instance.id,
                &execution_id,
                &Ec2State {
                    instance_id: instance.id.clone(),
                    execution_key: key.to_string(),
                    pool: instance.tag(tags::POOL).map(str::to_string),
                },
            )
            .map_err(|e| ListOwnedError::permanent(ctx, e.to_string()))?;
            let mut resource = OwnedResource::new(&instance.id, handle)
                .with_execution_id(execution_id)
                .with_execution_key(key)
                .with_worker(instance.tag(tags::WORKER).unwrap_or_default());
            if let Some(since) = since {
                resource = resource.with_age_seconds(now.saturating_sub(since).max(0) as u64);
            }
            owned.push(resource);
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_attempts_environment_file_and_no_other_keys() {
        let attempts = super::attempts_prefix("/runs/", "k");
        assert_eq!(attempts, "runs/k.");
        assert!(super::is_attempt_env_file(&attempts, "runs/k.1/env.sh"));
        assert!(super::is_attempt_env_file(&attempts, "runs/k.12/env.sh"));
        assert!(!super::is_attempt_env_file(
            &attempts,
            "runs/k.other.1/env.sh"
        ));
        assert!(!super::is_attempt_env_file(
            &attempts,
            "runs/k.1/output.log"
        ));
        assert!(!super::is_attempt_env_file(&attempts, "runs/k./env.sh"));
        assert_eq!(super::attempts_prefix("", "k"), "k.");
    }
}
