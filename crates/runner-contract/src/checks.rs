//! The contract checks, one public async function per behaviour.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runner_core::artifact::sha256_file;
use runner_core::safe_path::{is_within, validate_name};
use runner_core::{
    ArtifactLocation, ErrorKind, LogSink, RunContext, RunnerAdapter, RunnerError, RunnerHandle,
    TestStatus,
};

use crate::fixture::Fixture;

/// A check that did not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractFailure {
    /// The check's name.
    pub check: &'static str,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ContractFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "contract check `{}` failed: {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for ContractFailure {}

/// The result of one check.
pub type Outcome = Result<(), ContractFailure>;

/// A check's name and whether it applies to an adapter with some capabilities.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The check's (and its function's) name.
    pub name: &'static str,
    /// What it shows.
    pub description: &'static str,
}

/// Every check, in the order [`run_all`] runs them.
pub const CHECKS: &[Check] = &[
    Check {
        name: "full_lifecycle",
        description: "provision, a passing run, logs collected, teardown, nothing left",
    },
    Check {
        name: "teardown_after_failed_run",
        description: "a failing test is a result; artifacts and teardown still work",
    },
    Check {
        name: "teardown_released_handle",
        description: "a second teardown succeeds (idempotent) or fails cleanly",
    },
    Check {
        name: "handle_survives_serialization",
        description: "a handle read back from JSON runs and tears down",
    },
    Check {
        name: "cancellation_ends_run",
        description: "cancelling mid-run ends the phase within the bound",
    },
    Check {
        name: "invalid_spec_is_permanent",
        description: "an invalid bench is a permanent invalid_spec error naming the field",
    },
    Check {
        name: "artifacts_are_safe_and_hashed",
        description: "artifact names stay inside; size and sha256 match the bytes",
    },
    Check {
        name: "errors_carry_ids",
        description: "every error carries the context's ids; foreign handles are errors",
    },
];

fn fail(check: &'static str, message: impl Into<String>) -> ContractFailure {
    ContractFailure {
        check,
        message: message.into(),
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn context(check: &str) -> RunContext {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    RunContext::new(
        format!("contract-{check}-{pid}-{n}"),
        format!("corr-{check}-{pid}-{n}"),
    )
}

async fn provision(
    check: &'static str,
    adapter: &dyn RunnerAdapter,
    ctx: &RunContext,
    fixture: &Fixture,
) -> Result<RunnerHandle, ContractFailure> {
    adapter
        .provision(ctx, &fixture.bench)
        .await
        .map_err(|e| fail(check, format!("provision of the fixture bench failed: {e}")))
}

/// Best-effort release after a check failed half-way.
async fn cleanup(adapter: &dyn RunnerAdapter, ctx: &RunContext, handle: &RunnerHandle) {
    let _ = adapter.teardown(ctx, handle).await;
}

async fn finish(
    adapter: &dyn RunnerAdapter,
    ctx: &RunContext,
    handle: &RunnerHandle,
    body: Outcome,
) -> Outcome {
    if body.is_err() {
        cleanup(adapter, ctx, handle).await;
    }
    body
}

async fn teardown_and_check_gone(
    check: &'static str,
    adapter: &dyn RunnerAdapter,
    ctx: &RunContext,
    handle: &RunnerHandle,
) -> Outcome {
    adapter
        .teardown(ctx, handle)
        .await
        .map_err(|e| fail(check, format!("teardown failed: {e}")))?;
    assert_not_listed(check, adapter, ctx, handle).await
}

async fn assert_not_listed(
    check: &'static str,
    adapter: &dyn RunnerAdapter,
    ctx: &RunContext,
    handle: &RunnerHandle,
) -> Outcome {
    if !adapter.capabilities().leak_listing {
        return Ok(());
    }
    let owned = adapter
        .list_owned(ctx)
        .await
        .map_err(|e| fail(check, format!("list_owned failed: {e}")))?;
    if owned.iter().any(|r| r.resource_id == handle.handle_id()) {
        return Err(fail(
            check,
            format!(
                "resource {} is still listed as owned after teardown returned Ok (leak)",
                handle.handle_id()
            ),
        ));
    }
    Ok(())
}

fn check_ids<P: runner_core::PhaseMarker>(
    check: &'static str,
    what: &str,
    ctx: &RunContext,
    err: &RunnerError<P>,
) -> Outcome {
    if err.execution_id() != ctx.execution_id() || err.correlation_id() != ctx.correlation_id() {
        return Err(fail(
            check,
            format!(
                "{what}: error ids (execution {:?}, correlation {:?}) differ from the context's ({:?}, {:?})",
                err.execution_id(),
                err.correlation_id(),
                ctx.execution_id(),
                ctx.correlation_id()
            ),
        ));
    }
    Ok(())
}

/// Provision, run the passing payload, collect at least one artifact, tear
/// down; afterwards nothing is listed as owned.
pub async fn full_lifecycle(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "full_lifecycle";
    let ctx = context(CHECK);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    if handle.runner_type() != adapter.runner_type() {
        cleanup(adapter, &ctx, &handle).await;
        return Err(fail(
            CHECK,
            format!(
                "handle runner type {:?} differs from the adapter's {:?}",
                handle.runner_type(),
                adapter.runner_type()
            ),
        ));
    }
    let body = async {
        let result = adapter
            .run_test(&ctx, &handle, &fixture.passing)
            .await
            .map_err(|e| {
                fail(
                    CHECK,
                    format!("run_test of the passing payload failed: {e}"),
                )
            })?;
        if result.status != TestStatus::Passed {
            return Err(fail(
                CHECK,
                format!(
                    "the passing payload ended {:?}: {:?}",
                    result.status, result.diagnosis
                ),
            ));
        }
        let bundle = adapter
            .collect_artifacts(&ctx, &handle, &fixture.passing)
            .await
            .map_err(|e| fail(CHECK, format!("collect_artifacts failed: {e}")))?;
        if bundle.artifacts.is_empty() {
            return Err(fail(CHECK, "no artifact (not even a log) after a run"));
        }
        Ok(())
    }
    .await;
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await
}

/// A failing payload gives `Ok` with status failed; artifacts and teardown
/// still succeed and nothing is left.
pub async fn teardown_after_failed_run(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "teardown_after_failed_run";
    let ctx = context(CHECK);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    let body = async {
        match adapter.run_test(&ctx, &handle, &fixture.failing).await {
            Ok(result) if result.status == TestStatus::Failed => {}
            Ok(result) => {
                return Err(fail(
                    CHECK,
                    format!("the failing payload ended {:?}, not failed", result.status),
                ));
            }
            Err(e) => {
                return Err(fail(
                    CHECK,
                    format!("a failing test must be a result, not an error: {e}"),
                ));
            }
        }
        adapter
            .collect_artifacts(&ctx, &handle, &fixture.failing)
            .await
            .map_err(|e| fail(CHECK, format!("collect_artifacts after a failed run: {e}")))?;
        Ok(())
    }
    .await;
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await
}

/// Teardown of an already released handle: success when the backend
/// declares idempotent teardown, otherwise a non-retryable error.
pub async fn teardown_released_handle(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "teardown_released_handle";
    let ctx = context(CHECK);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await?;
    let again = adapter.teardown(&ctx, &handle).await;
    match (adapter.capabilities().idempotent_teardown, again) {
        (_, Ok(())) => Ok(()),
        (true, Err(e)) => Err(fail(
            CHECK,
            format!("idempotent teardown declared, but a second teardown failed: {e}"),
        )),
        (false, Err(e)) if e.is_retryable() => Err(fail(
            CHECK,
            format!("a second teardown must not fail with a retryable error: {e}"),
        )),
        (false, Err(e)) => check_ids(CHECK, "second teardown", &ctx, &e),
    }
}

/// A handle serialized to JSON and read back runs a test and tears down.
pub async fn handle_survives_serialization(
    adapter: &dyn RunnerAdapter,
    fixture: &Fixture,
) -> Outcome {
    const CHECK: &str = "handle_survives_serialization";
    let ctx = context(CHECK);
    let original = provision(CHECK, adapter, &ctx, fixture).await?;
    let json = original.to_json();
    let handle = match RunnerHandle::from_json(&json) {
        Ok(h) if h == original => h,
        Ok(_) => {
            cleanup(adapter, &ctx, &original).await;
            return Err(fail(CHECK, "the handle changed through JSON"));
        }
        Err(e) => {
            cleanup(adapter, &ctx, &original).await;
            return Err(fail(CHECK, format!("the handle does not read back: {e}")));
        }
    };
    let body = async {
        let result = adapter
            .run_test(&ctx, &handle, &fixture.passing)
            .await
            .map_err(|e| fail(CHECK, format!("run_test with a read-back handle: {e}")))?;
        if result.status != TestStatus::Passed {
            return Err(fail(CHECK, format!("run ended {:?}", result.status)));
        }
        Ok(())
    }
    .await;
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await
}

/// Cancelling the token mid-run ends `run_test` within the fixture's bound,
/// with status cancelled or a cancelled error.
pub async fn cancellation_ends_run(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "cancellation_ends_run";
    let ctx = context(CHECK);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    let body = async {
        let (sink, mut rx) = LogSink::channel(256);
        let run_ctx = ctx.child().with_log_sink(sink);
        let token = run_ctx.cancel_token().clone();
        let run = adapter.run_test(&run_ctx, &handle, &fixture.long_running);
        tokio::pin!(run);
        // Let the run get going: its first live line, or a short pause for
        // backends without live logs. The pause orders events; it asserts nothing.
        let warmup = if adapter.capabilities().live_logs {
            Duration::from_secs(60)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            line = rx.recv(), if adapter.capabilities().live_logs => {
                if line.is_none() {
                    return Err(fail(CHECK, "log sink closed before the run produced output"));
                }
            }
            ended = &mut run => {
                return Err(fail(CHECK, format!("the long-running payload ended before cancellation: {ended:?}")));
            }
            _ = tokio::time::sleep(warmup) => {
                if adapter.capabilities().live_logs {
                    return Err(fail(CHECK, "no live output within 60 s although live_logs is declared"));
                }
            }
        }
        // Keep the sink drained so backpressure cannot hold the run.
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        token.cancel();
        let started = Instant::now();
        let ended = tokio::time::timeout(fixture.cancel_bound, &mut run).await;
        drain.abort();
        match ended {
            Err(_) => Err(fail(
                CHECK,
                format!(
                    "run_test did not end within {:?} of cancellation",
                    fixture.cancel_bound
                ),
            )),
            Ok(Ok(result)) if result.status == TestStatus::Cancelled => Ok(()),
            Ok(Ok(result)) => Err(fail(
                CHECK,
                format!(
                    "after cancellation the run ended {:?} (after {:?}), not cancelled",
                    result.status,
                    started.elapsed()
                ),
            )),
            Ok(Err(e)) if e.kind() == ErrorKind::Cancelled => check_ids(CHECK, "cancel", &run_ctx, &e),
            Ok(Err(e)) => Err(fail(CHECK, format!("after cancellation: {e}, not cancelled"))),
        }
    }
    .await;
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await
}

/// An invalid bench is a permanent `invalid_spec` error that names the
/// field, and nothing is left behind.
pub async fn invalid_spec_is_permanent(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "invalid_spec_is_permanent";
    let ctx = context(CHECK);
    match adapter.provision(&ctx, &fixture.invalid_bench).await {
        Ok(handle) => {
            cleanup(adapter, &ctx, &handle).await;
            Err(fail(CHECK, "an invalid bench was provisioned"))
        }
        Err(e) => {
            if e.kind() != ErrorKind::InvalidSpec {
                return Err(fail(
                    CHECK,
                    format!("kind is {}, not invalid_spec: {e}", e.kind()),
                ));
            }
            if e.is_retryable() {
                return Err(fail(CHECK, "an invalid spec must not be retryable"));
            }
            let named = e.field() == Some(fixture.invalid_field.as_str())
                || e.message().contains(&fixture.invalid_field);
            if !named {
                return Err(fail(
                    CHECK,
                    format!("the error does not name `{}`: {e}", fixture.invalid_field),
                ));
            }
            check_ids(CHECK, "invalid provision", &ctx, &e)?;
            if adapter.capabilities().leak_listing {
                let owned = adapter
                    .list_owned(&ctx)
                    .await
                    .map_err(|e| fail(CHECK, format!("list_owned failed: {e}")))?;
                if owned
                    .iter()
                    .any(|r| r.execution_key.as_deref() == Some(ctx.execution_key()))
                {
                    return Err(fail(CHECK, "an invalid provision left a resource behind"));
                }
            }
            Ok(())
        }
    }
}

/// Every collected artifact has a safe relative name, a unique one, and,
/// when local, lies inside the artifacts root with matching size and sha256.
pub async fn artifacts_are_safe_and_hashed(
    adapter: &dyn RunnerAdapter,
    fixture: &Fixture,
) -> Outcome {
    const CHECK: &str = "artifacts_are_safe_and_hashed";
    let ctx = context(CHECK);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    let body = async {
        adapter
            .run_test(&ctx, &handle, &fixture.passing)
            .await
            .map_err(|e| fail(CHECK, format!("run_test failed: {e}")))?;
        let bundle = adapter
            .collect_artifacts(&ctx, &handle, &fixture.passing)
            .await
            .map_err(|e| fail(CHECK, format!("collect_artifacts failed: {e}")))?;
        let mut names = std::collections::BTreeSet::new();
        for artifact in &bundle.artifacts {
            validate_name(&artifact.name).map_err(|e| fail(CHECK, e.to_string()))?;
            if !names.insert(artifact.name.as_str()) {
                return Err(fail(CHECK, format!("artifact name {:?} appears twice", artifact.name)));
            }
            let hex_ok = artifact.sha256.len() == 64
                && artifact
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(fail(
                    CHECK,
                    format!("artifact {:?} has a malformed sha256 {:?}", artifact.name, artifact.sha256),
                ));
            }
            if let ArtifactLocation::Local(path) = &artifact.location {
                if let Some(root) = &fixture.artifacts_root
                    && !is_within(root, path)
                {
                    return Err(fail(
                        CHECK,
                        format!(
                            "artifact {:?} at {} lies outside {}",
                            artifact.name,
                            path.display(),
                            root.display()
                        ),
                    ));
                }
                let (size, sha) = sha256_file(path).map_err(|e| {
                    fail(CHECK, format!("artifact {:?} at {} is unreadable: {e}", artifact.name, path.display()))
                })?;
                if size != artifact.size || sha != artifact.sha256 {
                    return Err(fail(
                        CHECK,
                        format!(
                            "artifact {:?}: reported size {} sha256 {}, stored bytes have size {size} sha256 {sha}",
                            artifact.name, artifact.size, artifact.sha256
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await
}

/// Errors carry the context's ids; a handle of another runner type is a
/// non-retryable error in every phase, never a panic or a success.
pub async fn errors_carry_ids(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "errors_carry_ids";
    let ctx = context(CHECK);
    match adapter.provision(&ctx, &fixture.invalid_bench).await {
        Ok(handle) => {
            cleanup(adapter, &ctx, &handle).await;
            return Err(fail(CHECK, "an invalid bench was provisioned"));
        }
        Err(e) => check_ids(CHECK, "provision", &ctx, &e)?,
    }
    let foreign = RunnerHandle::new(
        "contract_foreign_type",
        "foreign-1",
        ctx.execution_id(),
        &foreign_state(),
    )
    .map_err(|e| fail(CHECK, e.to_string()))?;
    let run = adapter.run_test(&ctx, &foreign, &fixture.passing).await;
    expect_clean_error(
        CHECK,
        "run_test with a foreign handle",
        &ctx,
        run.map(|_| ()),
    )?;
    let collect = adapter
        .collect_artifacts(&ctx, &foreign, &fixture.passing)
        .await;
    expect_clean_error(
        CHECK,
        "collect_artifacts with a foreign handle",
        &ctx,
        collect.map(|_| ()),
    )?;
    let teardown = adapter.teardown(&ctx, &foreign).await;
    expect_clean_error(CHECK, "teardown with a foreign handle", &ctx, teardown)
}

fn foreign_state() -> std::collections::BTreeMap<&'static str, &'static str> {
    std::collections::BTreeMap::from([("unrelated", "state")])
}

fn expect_clean_error<P: runner_core::PhaseMarker>(
    check: &'static str,
    what: &str,
    ctx: &RunContext,
    result: Result<(), RunnerError<P>>,
) -> Outcome {
    match result {
        Ok(()) => Err(fail(
            check,
            format!("{what} succeeded; it must be an error"),
        )),
        Err(e) if e.is_retryable() => Err(fail(check, format!("{what} is retryable: {e}"))),
        Err(e) => check_ids(check, what, ctx, &e),
    }
}

/// Run one check by name.
pub async fn run_check(
    name: &str,
    adapter: &dyn RunnerAdapter,
    fixture: &Fixture,
) -> Option<Outcome> {
    Some(match name {
        "full_lifecycle" => full_lifecycle(adapter, fixture).await,
        "teardown_after_failed_run" => teardown_after_failed_run(adapter, fixture).await,
        "teardown_released_handle" => teardown_released_handle(adapter, fixture).await,
        "handle_survives_serialization" => handle_survives_serialization(adapter, fixture).await,
        "cancellation_ends_run" => cancellation_ends_run(adapter, fixture).await,
        "invalid_spec_is_permanent" => invalid_spec_is_permanent(adapter, fixture).await,
        "artifacts_are_safe_and_hashed" => artifacts_are_safe_and_hashed(adapter, fixture).await,
        "errors_carry_ids" => errors_carry_ids(adapter, fixture).await,
        _ => return None,
    })
}

/// The outcome of every check on one adapter.
#[derive(Debug)]
pub struct Report {
    /// The adapter's runner type.
    pub runner_type: String,
    /// Each check's name, outcome and wall time.
    pub outcomes: Vec<(&'static str, Outcome, Duration)>,
}

impl Report {
    /// Whether every check held.
    pub fn is_ok(&self) -> bool {
        self.outcomes.iter().all(|(_, o, _)| o.is_ok())
    }

    /// The failures.
    pub fn failures(&self) -> Vec<&ContractFailure> {
        self.outcomes
            .iter()
            .filter_map(|(_, o, _)| o.as_ref().err())
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "contract suite on `{}`:", self.runner_type)?;
        for (name, outcome, took) in &self.outcomes {
            match outcome {
                Ok(()) => writeln!(f, "  ok    {name} ({} ms)", took.as_millis())?,
                Err(e) => writeln!(f, "  FAIL  {name}: {}", e.message)?,
            }
        }
        Ok(())
    }
}

/// Run every check in [`CHECKS`] against `adapter`.
pub async fn run_all(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Report {
    let mut outcomes = Vec::new();
    for check in CHECKS {
        let started = Instant::now();
        let outcome = run_check(check.name, adapter, fixture)
            .await
            .unwrap_or_else(|| Err(fail("run_all", format!("unknown check {}", check.name))));
        outcomes.push((check.name, outcome, started.elapsed()));
    }
    Report {
        runner_type: adapter.runner_type().to_owned(),
        outcomes,
    }
}
