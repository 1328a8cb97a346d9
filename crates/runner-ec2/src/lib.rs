#![doc = include_str!("../README.md")]

pub mod command;
pub mod config;
pub mod instances;
pub mod pool;
mod register;
pub mod script;

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use runner_aws::{ArtifactStore, AwsError, S3Uri};
use runner_core::{
    ArtifactBundle, ArtifactError, ArtifactKind, BenchSpec, Capabilities, ConfigError,
    ExecutionError, OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerConfig,
    RunnerHandle, TeardownError, TestPayload, TestResult, async_trait, decode_spec,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

pub use config::{BenchBackend, Ec2Config, LaunchTemplate, PoolConfig};
use instances::{LIVE_STATES, Ops, now_secs, tags};
pub use pool::Refill;
pub use register::register;

/// The payload's `backend:` section: this backend has none, so any key in
/// it is refused instead of being ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSection {}

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

/// The runner type in configs and handles.
pub const RUNNER_TYPE: &str = "ec2";

/// What a handle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2State {
    /// The instance.
    pub instance_id: String,
    /// The execution key it was tagged with.
    pub execution_key: String,
    /// The pool it belongs to, if any: teardown returns it there.
    #[serde(default)]
    pub pool: Option<String>,
}

struct Clients {
    ops: Ops,
    store: ArtifactStore,
}

struct Inner {
    config: Arc<Ec2Config>,
    clients: OnceCell<Arc<Clients>>,
    claim_lock: Mutex<()>,
    refill_started: std::sync::atomic::AtomicBool,
}

/// The EC2 backend. Cheap to construct: the AWS configuration is loaded
/// on first use.
#[derive(Clone)]
pub struct Ec2Runner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ec2Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Runner")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn client_token(owner: &str, execution_key: &str, attempt: u32) -> String {
    let digest = Sha256::digest(format!("{owner}\n{execution_key}\n{attempt}").as_bytes());
    // 64 ASCII characters at most; 5 + 40.
    format!("orch-{}", &hex::encode(digest)[..40])
}

impl Ec2Runner {
    /// A runner over validated settings; clients come from the default
    /// chain on first use.
    pub fn new(config: Ec2Config) -> Result<Ec2Runner, ConfigError> {
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        Ok(Ec2Runner {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                clients: OnceCell::new(),
                claim_lock: Mutex::new(()),
                refill_started: Default::default(),
            }),
        })
    }

    /// From a runner config's `backend:` section.
    pub fn from_config(config: &RunnerConfig) -> Result<Ec2Runner, ConfigError> {
        Ec2Runner::new(config.backend_section::<Ec2Config>()?)
    }

    /// A runner over given clients (tests, or callers with their own SDK set-up).
    pub fn with_clients(
        config: Ec2Config,
        ec2: aws_sdk_ec2::Client,
        ssm: aws_sdk_ssm::Client,
        s3: aws_sdk_s3::Client,
    ) -> Result<Ec2Runner, ConfigError> {
        let runner = Ec2Runner::new(config)?;
        let clients = Arc::new(Clients {
            ops: Ops::new(ec2, ssm, runner.inner.config.clone()),
            store: ArtifactStore::new(s3, runner.inner.config.bucket.clone()),
        });
        let _ = runner.inner.clients.set(clients);
        Ok(runner)
    }

    /// The settings.
    pub fn config(&self) -> &Ec2Config {
        &self.inner.config
    }

    async fn clients(&self) -> Arc<Clients> {
        let clients = self
            .inner
            .clients
            .get_or_init(|| async {
                let config = &self.inner.config;
                let sdk = runner_aws::load_sdk_config(config.region.as_deref()).await;
                Arc::new(Clients {
                    ops: Ops::new(
                        aws_sdk_ec2::Client::new(&sdk),
                        aws_sdk_ssm::Client::new(&sdk),
                        config.clone(),
                    ),
                    store: ArtifactStore::new(
                        runner_aws::s3_client(&sdk, config.force_path_style),
                        config.bucket.clone(),
                    ),
                })
            })
            .await
            .clone();
        self.start_refill();
        clients
    }

    /// RunInstances calls this runner made (tests and benchmarks).
    pub async fn run_instances_calls(&self) -> usize {
        self.clients().await.ops.run_instances_calls()
    }

    /// Retire stale pool instances and launch up to `min_ready`; what the
    /// background refill does every `refill_interval_seconds`.
    pub async fn refill_pool(&self) -> Result<Refill, AwsError> {
        let Some(pool) = &self.inner.config.pool else {
            return Ok(Refill::default());
        };
        let clients = self.clients().await;
        let _claims = self.inner.claim_lock.lock().await;
        pool::refill(&clients.ops, pool).await
    }

    fn start_refill(&self) {
        let Some(pool) = &self.inner.config.pool else {
            return;
        };
        if pool.refill_interval_seconds == 0
            || self
                .inner
                .refill_started
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = Duration::from_secs(pool.refill_interval_seconds);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let runner = Ec2Runner { inner };
                match runner.refill_pool().await {
                    Ok(r) if r.launched + r.retired > 0 => tracing::info!(
                        launched = r.launched,
                        retired = r.retired,
                        ready = r.ready,
                        "warm pool refilled"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "warm pool refill failed"),
                }
            }
        });
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
}

fn check_payload<P: runner_core::PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), runner_core::RunnerError<P>> {
    if payload.command.is_empty() || payload.command[0].is_empty() {
        return Err(runner_core::RunnerError::invalid_spec(
            ctx,
            "payload.command",
            "must name a program",
        ));
    }
    if let Some(dir) = &payload.working_dir {
        runner_core::safe_path::validate_name(dir).map_err(|e| {
            runner_core::RunnerError::invalid_spec(ctx, "payload.working_dir", e.to_string())
        })?;
    }
    for (i, glob) in payload.artifacts.iter().enumerate() {
        let bad =
            glob.is_empty() || glob.starts_with('/') || glob.split('/').any(|part| part == "..");
        if bad {
            return Err(runner_core::RunnerError::invalid_spec(
                ctx,
                format!("payload.artifacts[{i}]"),
                format!("{glob:?} must be a relative pattern without `..`"),
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl RunnerAdapter for Ec2Runner {
    fn runner_type(&self) -> &str {
        RUNNER_TYPE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            warm_pool: self.inner.config.pool.is_some(),
            live_logs: true,
            idempotent_teardown: true,
            leak_listing: true,
            max_concurrency: None,
        }
    }

    fn validate(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        payload: &TestPayload,
    ) -> Result<(), ProvisionError> {
        let wanted: BenchBackend = decode_spec(ctx, &bench.backend, "bench.backend")?;
        wanted
            .validate()
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        let _: NoSection = decode_spec(ctx, &payload.backend, "payload.backend")?;
        if payload.command.first().is_none_or(|p| p.is_empty()) {
            return Err(ProvisionError::invalid_spec(
                ctx,
                "payload.command",
                "must name a program",
            ));
        }
        Ok(())
    }

    async fn provision(
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
        let token = client_token(&config.owner, ctx.execution_key(), ctx.attempt());
        let id = ops
            .launch(&wanted, &token, &launch_tags)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        tracing::info!(instance = %id, "launched");
        self.ready_or_terminate(ops, ctx, &id).await?;
        self.handle(ctx, &id, pool.map(|p| p.name.clone()))
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        let state: Ec2State = handle.decode_in(ctx, RUNNER_TYPE)?;
        check_payload(ctx, payload)?;
        let clients = self.clients().await;
        let config = &self.inner.config;
        let prefix = config.execution_prefix(ctx.execution_id());
        let store = &clients.store;

        let env = script::env_file(payload.env.iter().map(|(k, v)| (k.as_str(), v.value())))
            .map_err(|message| ExecutionError::invalid_spec(ctx, "payload.env", message))?;
        if !payload.env.is_empty() {
            store
                .put_bytes(&format!("{prefix}env.sh"), env.into_bytes())
                .await
                .map_err(|e| e.into_runner(ctx))?;
        }
        let package = match &payload.package {
            None => None,
            Some(uri) if uri.starts_with("s3://") => {
                let parsed = S3Uri::parse(uri)
                    .map_err(|m| ExecutionError::invalid_spec(ctx, "payload.package", m))?;
                let name = parsed
                    .key
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                if name.is_empty() {
                    return Err(ExecutionError::invalid_spec(
                        ctx,
                        "payload.package",
                        format!("{uri} names no object"),
                    ));
                }
                Some((uri.clone(), name))
            }
            Some(local) => {
                let path = Path::new(local);
                if !path.is_file() {
                    return Err(ExecutionError::invalid_spec(
                        ctx,
                        "payload.package",
                        format!(
                            "{local} is not a file; the ec2 backend takes an archive (.tar, .tar.gz) or an s3:// URI"
                        ),
                    ));
                }
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| "package".to_string());
                let uploaded = store
                    .put_file(&format!("{prefix}package/{name}"), path)
                    .await
                    .map_err(|e| e.into_runner(ctx))?;
                Some((uploaded.uri.to_string(), name))
            }
        };
        let timeout = payload
            .timeout_seconds
            .or_else(|| ctx.remaining().map(|d| d.as_secs().max(1)))
            .unwrap_or(3_600);
        let spec = script::ScriptSpec {
            base: format!("s3://{}/{prefix}", store.bucket()),
            aws_cli: config.aws_cli.clone(),
            has_env: !payload.env.is_empty(),
            package,
            working_dir: payload.working_dir.clone(),
            command: script::command_line(&payload.command, payload.shell),
            timeout_seconds: timeout,
            live_interval_seconds: config.live_log_interval_seconds,
            artifacts: payload.artifacts.clone(),
        };
        let commands = script::ssm_commands(&script::render(&spec));
        let sink = ctx.logs().clone().with_redactor(payload.redactor());
        command::run(
            &clients.ops,
            store,
            command::CommandSpec {
                instance_id: &state.instance_id,
                execution_id: ctx.execution_id(),
                prefix: &prefix,
                commands,
                execution_timeout: timeout + config.upload_margin_seconds,
            },
            &sink,
            ctx.cancel_token(),
            ctx.deadline().map(Instant::from_std),
        )
        .await
        .map_err(|e| e.into_runner(ctx))
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let _state: Ec2State = handle.decode_in(ctx, RUNNER_TYPE)?;
        let clients = self.clients().await;
        let store = &clients.store;
        let prefix = self.inner.config.execution_prefix(ctx.execution_id());
        let mut bundle = store
            .collect(&format!("{prefix}artifacts/"), |_| ArtifactKind::File)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        let output_key = format!("{prefix}output.log");
        if let Some(bytes) = store
            .read_from(&output_key, 0)
            .await
            .map_err(|e| e.into_runner(ctx))?
        {
            // The instance uploads raw output; secrets are redacted here, in
            // place, before the log becomes an artifact.
            let redactor = payload.redactor();
            let bytes = if redactor.is_empty() {
                bytes
            } else {
                let redacted = redactor.redact_bytes(&bytes);
                store
                    .put_bytes(&output_key, redacted.clone())
                    .await
                    .map_err(|e| e.into_runner(ctx))?;
                redacted
            };
            let mut name = "logs/output.log".to_string();
            if bundle.artifacts.iter().any(|a| a.name == name) {
                name = "logs/ssm-output.log".to_string();
            }
            bundle.artifacts.insert(
                0,
                runner_core::Artifact {
                    name,
                    kind: ArtifactKind::Log,
                    location: runner_core::ArtifactLocation::Uri(
                        store.uri(&output_key).to_string(),
                    ),
                    size: bytes.len() as u64,
                    sha256: runner_core::artifact::sha256_bytes(&bytes),
                },
            );
        }
        Ok(bundle)
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
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

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, TeardownError> {
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
            .map_err(|e| TeardownError::permanent(ctx, e.to_string()))?;
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

    use super::*;

    #[test]
    fn client_tokens_fit_and_follow_key_and_attempt() {
        let a = client_token("o", "k", 1);
        assert!(a.len() <= 64 && a.is_ascii());
        assert_eq!(a, client_token("o", "k", 1));
        assert_ne!(a, client_token("o", "k", 2));
        assert_ne!(a, client_token("o", "k2", 1));
        assert_ne!(a, client_token("o2", "k", 1));
    }
}
