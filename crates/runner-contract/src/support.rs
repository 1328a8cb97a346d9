//! What every check shares: the failure type, fresh contexts, and
//! provisioning and teardown that report failures by check name.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use runner_core::{RunContext, RunnerAdapter, RunnerError, RunnerHandle};

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

pub(crate) fn fail(check: &'static str, message: impl Into<String>) -> ContractFailure {
    ContractFailure {
        check,
        message: message.into(),
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn context(check: &str) -> RunContext {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    RunContext::new(
        format!("contract-{check}-{pid}-{n}"),
        format!("corr-{check}-{pid}-{n}"),
    )
}

pub(crate) async fn provision(
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
pub(crate) async fn cleanup(adapter: &dyn RunnerAdapter, ctx: &RunContext, handle: &RunnerHandle) {
    let _ = adapter.teardown(ctx, handle).await;
}

pub(crate) async fn finish(
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

pub(crate) async fn teardown_and_check_gone(
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

pub(crate) async fn assert_not_listed(
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

pub(crate) fn check_ids<P: runner_core::PhaseMarker>(
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

/// The bytes of a local artifact match its reported size and sha256;
/// `when` says at which point ("", "after teardown") for the message.
pub(crate) fn verify_local(
    check: &'static str,
    artifact: &runner_core::Artifact,
    path: &std::path::Path,
    when: &str,
) -> Outcome {
    let (size, sha) = runner_core::artifact::sha256_file(path).map_err(|e| {
        fail(
            check,
            format!(
                "artifact {:?} at {} is unreadable{when}: {e}",
                artifact.name,
                path.display()
            ),
        )
    })?;
    if size != artifact.size || sha != artifact.sha256 {
        return Err(fail(
            check,
            format!(
                "artifact {:?}{when}: reported size {} sha256 {}, stored bytes have size {size} sha256 {sha}",
                artifact.name, artifact.size, artifact.sha256
            ),
        ));
    }
    Ok(())
}

/// Run `payload` and collect its artifacts.
pub(crate) async fn run_and_collect(
    check: &'static str,
    adapter: &dyn RunnerAdapter,
    ctx: &RunContext,
    handle: &RunnerHandle,
    payload: &runner_core::TestPayload,
) -> Result<runner_core::ArtifactBundle, ContractFailure> {
    adapter
        .run_test(ctx, handle, payload)
        .await
        .map_err(|e| fail(check, format!("run_test failed: {e}")))?;
    adapter
        .collect_artifacts(ctx, handle, payload)
        .await
        .map_err(|e| fail(check, format!("collect_artifacts failed: {e}")))
}
