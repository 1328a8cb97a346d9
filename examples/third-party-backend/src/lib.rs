//! An example third-party backend, `echo`: synchronous code plugged in through
//! the blocking shim and registered from outside the worker crate, the way
//! the built-in backends register (`register(&mut RunnerRegistry)`). It
//! "runs" a payload by echoing its command into a log. This library needs
//! only runner-core; the worker is a dependency of the binary (`main.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner_core::artifact::sha256_bytes;
use runner_core::blocking::{Blocking, BlockingRunnerAdapter};
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, ArtifactLocation, BenchSpec,
    Capabilities, ExecutionError, ListOwnedError, OwnedResource, ProvisionError, RunContext,
    RunnerHandle, RunnerRegistry, TeardownError, TestPayload, TestResult, TestStatus, decode_spec,
};
use serde::{Deserialize, Serialize};

/// The runner type this crate registers.
pub const RUNNER_TYPE: &str = "echo";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoBench {
    #[serde(default)]
    greeting: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EchoState {
    greeting: String,
}

/// A synchronous backend; every environment is an entry in a map.
#[derive(Debug, Default)]
pub struct EchoRunner {
    live: Mutex<BTreeMap<String, Vec<String>>>,
}

impl EchoRunner {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockingRunnerAdapter for EchoRunner {
    fn runner_type(&self) -> &str {
        RUNNER_TYPE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_idempotent_teardown(true)
            .with_leak_listing(true)
    }

    fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        let spec: EchoBench = decode_spec(ctx, &bench.backend, "bench.backend")?;
        let id = format!("echo-{}", ctx.execution_key());
        let state = EchoState {
            greeting: spec.greeting.unwrap_or_else(|| "hello".into()),
        };
        let handle = RunnerHandle::new(RUNNER_TYPE, &id, ctx.execution_id(), &state)
            .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))?;
        self.lock().entry(id).or_default();
        Ok(handle)
    }

    fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        let state: EchoState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let line = format!("{}: {}", state.greeting, payload.command.join(" "));
        ctx.logs()
            .blocking_send(runner_core::LogStream::Stdout, &line);
        let mut live = self.lock();
        let Some(log) = live.get_mut(handle.handle_id()) else {
            return Err(ExecutionError::permanent(
                ctx,
                "environment already released",
            ));
        };
        log.push(line);
        drop(live);
        let started = Instant::now();
        let status = match payload.command.as_slice() {
            [first, ..] if first == "false" => TestStatus::Failed,
            // `sleep SECONDS`: wait, but stop as soon as the run is
            // cancelled (blocking code checks the token in its loops).
            [first, seconds] if first == "sleep" => {
                let seconds: u64 = seconds.parse().map_err(|_| {
                    ExecutionError::invalid_spec(
                        ctx,
                        "payload.command[1]",
                        "not a number of seconds",
                    )
                })?;
                let until = started + Duration::from_secs(seconds);
                while !ctx.is_cancelled() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if ctx.is_cancelled() {
                    TestStatus::Cancelled
                } else {
                    TestStatus::Passed
                }
            }
            _ => TestStatus::Passed,
        };
        Ok(TestResult::new(status, started.elapsed()))
    }

    fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        _payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        handle
            .decode_in::<EchoState, runner_core::phase::CollectArtifactsPhase>(ctx, RUNNER_TYPE)?;
        let text = self
            .lock()
            .get(handle.handle_id())
            .map(|l| l.join("\n"))
            .unwrap_or_default();
        Ok(ArtifactBundle::new(vec![Artifact::new(
            "echo.log",
            ArtifactKind::Log,
            ArtifactLocation::Uri(format!("echo://{}", handle.handle_id())),
            text.len() as u64,
            sha256_bytes(text.as_bytes()),
        )]))
    }

    fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        handle.decode_in::<EchoState, runner_core::phase::TeardownPhase>(ctx, RUNNER_TYPE)?;
        self.lock().remove(handle.handle_id());
        Ok(())
    }

    fn list_owned(&self, _ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        let live = self.lock();
        Ok(live
            .keys()
            .filter_map(|id| {
                let handle = RunnerHandle::new(
                    RUNNER_TYPE,
                    id,
                    "",
                    &EchoState {
                        greeting: String::new(),
                    },
                )
                .ok()?;
                let resource = OwnedResource::new(id, handle);
                Some(match id.strip_prefix("echo-") {
                    Some(key) => resource.with_execution_key(key),
                    None => resource,
                })
            })
            .collect())
    }
}

/// Add `echo` to a registry: the one call a third-party binary makes, the
/// same every built-in backend's crate exports.
pub fn register(registry: &mut RunnerRegistry) {
    registry.register(RUNNER_TYPE, |_config| {
        Ok(Arc::new(Blocking::new(EchoRunner::default())))
    });
}
