#![doc = include_str!("../README.md")]

mod cleanup;
mod collect;
pub mod command;
pub mod config;
pub mod instances;
pub mod pool;
mod provision;
mod register;
pub mod script;

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use runner_aws::{ArtifactStore, AwsError, S3Uri};
use runner_core::{
    ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ConfigError, ExecutionError,
    ListOwnedError, OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerConfig,
    RunnerHandle, TeardownError, TestPayload, TestResult, async_trait, decode_spec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

pub use config::{BenchBackend, Ec2Config, LaunchTemplate, PoolConfig};
use instances::Ops;
pub use pool::Refill;
pub use register::register;

/// The payload's `backend:` section: this backend has none, so any key in
/// it is refused instead of being ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSection {}

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
    /// Launches per execution id by this runner: each gets its own client token.
    launches: std::sync::Mutex<std::collections::HashMap<String, u32>>,
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
                launches: Default::default(),
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
}

fn check_payload<P: runner_core::PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), runner_core::RunnerError<P>> {
    use runner_core::kit::checks;
    checks::command(ctx, payload)?;
    checks::relative_working_dir(ctx, payload)?;
    checks::artifact_patterns(ctx, payload)
}

#[async_trait]
impl RunnerAdapter for Ec2Runner {
    fn runner_type(&self) -> &str {
        RUNNER_TYPE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_warm_pool(self.inner.config.pool.is_some())
            .with_live_logs(true)
            .with_idempotent_teardown(true)
            .with_leak_listing(true)
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
        runner_core::kit::checks::command(ctx, payload)
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        self.provision_impl(ctx, bench).await
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
        self.collect_impl(ctx, handle, payload).await
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        self.teardown_impl(ctx, handle).await
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        self.list_owned_impl(ctx).await
    }
}
