//! The mock backend itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use runner_core::artifact::sha256_bytes;
use runner_core::kit::{ArtifactWriter, LineAssembler, LogFollower};
use runner_core::safe_path::safe_join;
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, ArtifactLocation, BenchSpec,
    Capabilities, ConfigError, ExecutionError, ListOwnedError, LogStream, OwnedResource, Phase,
    ProvisionError, Redactor, RunContext, RunnerAdapter, RunnerConfig, RunnerHandle, TeardownError,
    TestCounts, TestPayload, TestResult, TestStatus, decode_spec,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RUNNER_TYPE;
use crate::fault::{FaultPlan, FaultRule, inject};

/// Where the mock puts the artifacts it "collects".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactMode {
    /// Real files under `artifacts_dir/<execution_id>/`.
    #[default]
    Files,
    /// Nothing written; `mock://` locations with the hash of the in-memory bytes.
    Memory,
}

/// The `backend` section of a `local_mock` runner config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockConfig {
    /// Where files go in [`ArtifactMode::Files`].
    #[serde(skip)]
    pub artifacts_dir: PathBuf,
    /// Files or memory.
    #[serde(default)]
    pub artifacts: ArtifactMode,
    /// Log lines a run produces when the payload does not say.
    #[serde(default = "default_lines")]
    pub log_lines: u32,
    /// Faults to inject.
    #[serde(default)]
    pub faults: Vec<FaultRule>,
}

fn default_lines() -> u32 {
    8
}

/// The `backend` section of a payload for `local_mock`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockPayload {
    /// `pass` (default), `fail` or `error`.
    #[serde(default)]
    pub outcome: MockOutcome,
    /// Log lines to produce.
    #[serde(default)]
    pub log_lines: Option<u32>,
    /// Simulated run time; the run really waits this long (cancellable).
    #[serde(default)]
    pub duration_ms: u64,
}

/// The most log lines one run may ask for (about 4 MiB of log).
pub const MAX_LOG_LINES: u32 = 100_000;

/// The longest simulated run: 7 days.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

impl MockPayload {
    /// Check the ranges; returns the bad field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.log_lines.is_some_and(|n| n > MAX_LOG_LINES) {
            return Err((
                "payload.backend.log_lines",
                format!("is more than the maximum of {MAX_LOG_LINES}"),
            ));
        }
        if self.duration_ms > MAX_DURATION_MS {
            return Err((
                "payload.backend.duration_ms",
                format!("is more than the maximum of {MAX_DURATION_MS} (7 days)"),
            ));
        }
        Ok(())
    }
}

/// The outcome a mock payload asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MockOutcome {
    /// Exit 0.
    #[default]
    Pass,
    /// Exit 1.
    Fail,
    /// The harness breaks: status error.
    Error,
}

/// The `backend` section of a bench for `local_mock`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MockBench {
    /// Mixed into the generated values, so two benches differ.
    #[serde(default)]
    seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MockState {
    execution_key: String,
    seed: u64,
    /// The worker that provisioned it (empty outside a worker).
    #[serde(default)]
    worker: String,
}

/// One call the mock received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// The phase called.
    pub phase: Phase,
    /// The context's execution id.
    pub execution_id: String,
    /// The context's attempt.
    pub attempt: u32,
    /// The handle passed, for phases that take one.
    pub handle_id: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    live: BTreeMap<String, RunnerHandle>,
    by_key: BTreeMap<String, String>,
    runs: BTreeMap<String, Vec<u8>>,
    calls: std::collections::VecDeque<RecordedCall>,
    /// Calls dropped from the front once `keep_calls` was reached.
    dropped_calls: u64,
}

/// How many calls a mock built from a runner config keeps (the newest):
/// under `serve` it runs for ever, and an unbounded recorder grew by about
/// half a kilobyte per task.
pub const RECORDED_CALLS_FROM_CONFIG: usize = 4_096;

/// A fake backend: deterministic output, scripted faults, recorded calls.
#[derive(Debug)]
pub struct LocalMockRunner {
    config: MockConfig,
    faults: FaultPlan,
    inner: Mutex<Inner>,
    /// Keep at most this many calls (the newest); `None`: all of them.
    keep_calls: Option<usize>,
}

impl LocalMockRunner {
    /// A mock with `config` and the faults it lists.
    pub fn new(config: MockConfig) -> Self {
        let faults = FaultPlan::new(config.faults.clone());
        Self {
            config,
            faults,
            inner: Mutex::new(Inner::default()),
            keep_calls: None,
        }
    }

    /// Keep only the newest `calls` recorded calls (memory stays flat for a
    /// mock that serves for ever).
    pub fn with_recorded_calls(mut self, calls: usize) -> Self {
        self.keep_calls = Some(calls);
        self
    }

    /// Calls the bounded recorder has dropped.
    pub fn dropped_calls(&self) -> u64 {
        self.lock().dropped_calls
    }

    /// A mock that writes artifacts under `artifacts_dir` and injects no fault.
    pub fn with_artifacts_dir(artifacts_dir: impl Into<PathBuf>) -> Self {
        Self::new(MockConfig {
            artifacts_dir: artifacts_dir.into(),
            log_lines: default_lines(),
            ..MockConfig::default()
        })
    }

    /// A mock that keeps artifacts in memory.
    pub fn in_memory() -> Self {
        Self::new(MockConfig {
            artifacts: ArtifactMode::Memory,
            log_lines: default_lines(),
            ..MockConfig::default()
        })
    }

    /// Replace the fault plan.
    pub fn with_faults(mut self, faults: FaultPlan) -> Self {
        self.faults = faults;
        self
    }

    /// Build from a runner config; the `backend` section is a [`MockConfig`].
    pub fn from_config(config: &RunnerConfig) -> Result<Self, ConfigError> {
        let mut mock: MockConfig = config.backend_section()?;
        if mock.log_lines > MAX_LOG_LINES {
            return Err(ConfigError::Invalid {
                key: "backend.log_lines".into(),
                message: format!("is more than the maximum of {MAX_LOG_LINES}"),
            });
        }
        mock.artifacts_dir = config.artifacts_dir.clone();
        Ok(Self::new(mock).with_recorded_calls(RECORDED_CALLS_FROM_CONFIG))
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.iter().cloned().collect()
    }

    /// How many calls of `phase` were received.
    pub fn call_count(&self, phase: Phase) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.phase == phase)
            .count()
    }

    /// Ids of handles provisioned and not yet torn down.
    pub fn live_handles(&self) -> Vec<String> {
        self.lock().live.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic injected in a phase never holds this lock, but stay usable regardless.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, phase: Phase, ctx: &RunContext, handle: Option<&RunnerHandle>) {
        let call = RecordedCall {
            phase,
            execution_id: ctx.execution_id().to_owned(),
            attempt: ctx.attempt(),
            handle_id: handle.map(|h| h.handle_id().to_owned()),
        };
        let mut inner = self.lock();
        if let Some(keep) = self.keep_calls {
            while inner.calls.len() >= keep.max(1) {
                inner.calls.pop_front();
                inner.dropped_calls += 1;
            }
        }
        inner.calls.push_back(call);
    }
}

/// A small deterministic generator (splitmix64) seeded from the execution.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn seed_for(execution_id: &str, bench_seed: u64, payload: &TestPayload) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(execution_id.as_bytes());
    hasher.update(bench_seed.to_le_bytes());
    hasher.update(serde_json::to_vec(payload).unwrap_or_default());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

/// The log a run of `payload` produces for `execution_id`: the same inputs
/// always give the same bytes.
pub(crate) fn generate_log(
    execution_id: &str,
    bench_seed: u64,
    payload: &TestPayload,
    lines: u32,
) -> Vec<String> {
    let mut rng = SplitMix(seed_for(execution_id, bench_seed, payload));
    let mut out = Vec::with_capacity(lines as usize + 2);
    out.push(format!("[mock] starting {}", payload.name));
    for i in 0..lines {
        out.push(format!("[mock] step {i:04} value={:016x}", rng.next()));
    }
    out
}

#[runner_core::async_trait]
impl RunnerAdapter for LocalMockRunner {
    fn runner_type(&self) -> &str {
        RUNNER_TYPE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
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
        let _: MockBench = decode_spec(ctx, &bench.backend, "bench.backend")?;
        let spec: MockPayload = decode_spec(ctx, &payload.backend, "payload.backend")?;
        spec.check()
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        self.record(Phase::Provision, ctx, None);
        let spec: MockBench = decode_spec(ctx, &bench.backend, "bench.backend")?;
        inject::<runner_core::phase::ProvisionPhase>(self.faults.next(Phase::Provision), ctx)
            .await?;
        let mut inner = self.lock();
        if let Some(existing) = inner
            .by_key
            .get(ctx.execution_key())
            .and_then(|id| inner.live.get(id))
        {
            // Idempotent per execution key: a retry adopts what the first attempt made.
            return Ok(existing.clone());
        }
        inner.next_id += 1;
        let id = format!("mock-{}-{}", ctx.execution_key(), inner.next_id);
        let state = MockState {
            execution_key: ctx.execution_key().to_owned(),
            seed: spec.seed,
            worker: ctx.worker_id().to_owned(),
        };
        let handle = RunnerHandle::new(RUNNER_TYPE, &id, ctx.execution_id(), &state)
            .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))?;
        inner.live.insert(id.clone(), handle.clone());
        inner.by_key.insert(state.execution_key, id);
        Ok(handle)
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        self.record(Phase::RunTest, ctx, Some(handle));
        let state: MockState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let spec: MockPayload = decode_spec(ctx, &payload.backend, "payload.backend")?;
        spec.check()
            .map_err(|(field, message)| ExecutionError::invalid_spec(ctx, field, message))?;
        inject::<runner_core::phase::RunTestPhase>(self.faults.next(Phase::RunTest), ctx).await?;
        if !self.lock().live.contains_key(handle.handle_id()) {
            return Err(ExecutionError::handle_gone(
                ctx,
                format!("handle {} was already torn down", handle.handle_id()),
            ));
        }
        let lines = generate_log(
            ctx.execution_id(),
            state.seed,
            payload,
            spec.log_lines.unwrap_or(self.config.log_lines),
        );
        // The generated output goes through the kit's follower like any
        // backend's: cut, redacted, and kept as it was sent.
        let mut log = Vec::new();
        let mut follower = LogFollower::with_assembler(
            ctx.logs().clone(),
            LogStream::Stdout,
            LineAssembler::new(payload.redactor()),
        );
        let mut keep = |line: &str| {
            log.extend_from_slice(line.as_bytes());
            log.push(b'\n');
        };
        for line in &lines {
            follower.feed_with(line.as_bytes(), &mut keep).await;
            follower.feed_with(b"\n", &mut keep).await;
        }
        follower.finish_with(&mut keep).await;
        let duration = Duration::from_millis(spec.duration_ms);
        if spec.duration_ms > 0 {
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(duration) => false,
                _ = ctx.cancel_token().cancelled() => true,
            };
            if cancelled {
                self.lock().runs.insert(handle.handle_id().to_owned(), log);
                return Ok(TestResult::new(TestStatus::Cancelled, duration)
                    .with_diagnosis("runner", "run cancelled"));
            }
        }
        let mut result = match spec.outcome {
            MockOutcome::Pass => TestResult::from_exit_code(0, duration),
            MockOutcome::Fail => TestResult::from_exit_code(1, duration),
            MockOutcome::Error => TestResult::new(TestStatus::Error, duration)
                .with_diagnosis("test", "mock harness error"),
        };
        result.counts = Some(TestCounts::new(
            u32::from(spec.outcome == MockOutcome::Pass),
            u32::from(spec.outcome != MockOutcome::Pass),
            0,
        ));
        self.lock().runs.insert(handle.handle_id().to_owned(), log);
        Ok(result)
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        _payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        self.record(Phase::CollectArtifacts, ctx, Some(handle));
        handle.decode_in::<MockState, _>(ctx, RUNNER_TYPE)?;
        inject::<runner_core::phase::CollectArtifactsPhase>(
            self.faults.next(Phase::CollectArtifacts),
            ctx,
        )
        .await?;
        let Some(log) = self.lock().runs.get(handle.handle_id()).cloned() else {
            return Ok(ArtifactBundle::default());
        };
        let name = "stdout.log";
        let artifact = match self.config.artifacts {
            ArtifactMode::Memory => Artifact::new(
                name,
                ArtifactKind::Log,
                ArtifactLocation::Uri(format!("mock://{}/{name}", ctx.execution_id())),
                log.len() as u64,
                sha256_bytes(&log),
            ),
            ArtifactMode::Files => {
                let dir = safe_join(&self.config.artifacts_dir, ctx.execution_id())
                    .map_err(|e| ArtifactError::permanent(ctx, e.to_string()))?;
                let path = dir.join(name);
                let io = |e: std::io::Error| {
                    ArtifactError::transient(ctx, format!("cannot write {}: {e}", path.display()))
                };
                let mut writer = ArtifactWriter::create(&path, Redactor::default())
                    .await
                    .map_err(io)?;
                writer.write(&log).await.map_err(io)?;
                writer
                    .finish()
                    .await
                    .map_err(io)?
                    .artifact(name, ArtifactKind::Log)
            }
        };
        Ok(ArtifactBundle::new(vec![artifact]))
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        self.record(Phase::Teardown, ctx, Some(handle));
        let state: MockState = handle.decode_in(ctx, RUNNER_TYPE)?;
        inject::<runner_core::phase::TeardownPhase>(self.faults.next(Phase::Teardown), ctx).await?;
        let mut inner = self.lock();
        // Already released: success, teardown is idempotent.
        if inner.live.remove(handle.handle_id()).is_some() {
            inner.by_key.remove(&state.execution_key);
            inner.runs.remove(handle.handle_id());
        }
        Ok(())
    }

    async fn list_owned(&self, _ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        let inner = self.lock();
        Ok(inner
            .live
            .values()
            .map(|h| {
                let owned = OwnedResource::new(h.handle_id(), h.clone())
                    .with_execution_id(h.execution_id());
                match h.decode::<MockState>(RUNNER_TYPE) {
                    Ok(state) => owned
                        .with_execution_key(state.execution_key)
                        .with_worker(state.worker),
                    Err(_) => owned,
                }
            })
            .collect())
    }
}
