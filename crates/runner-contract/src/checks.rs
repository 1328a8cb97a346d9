//! The lifecycle checks, one public async function per behaviour.

use std::time::{Duration, Instant};

use runner_core::safe_path::{is_within, validate_name};
use runner_core::{
    ArtifactLocation, ErrorKind, LogSink, RunContext, RunnerAdapter, RunnerError, RunnerHandle,
    TestStatus,
};

use crate::fixture::Fixture;
use crate::support::*;

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
                return Err(fail(
                    CHECK,
                    format!("artifact name {:?} appears twice", artifact.name),
                ));
            }
            let hex_ok = artifact.sha256.len() == 64
                && artifact
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(fail(
                    CHECK,
                    format!(
                        "artifact {:?} has a malformed sha256 {:?}",
                        artifact.name, artifact.sha256
                    ),
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
                verify_local(CHECK, artifact, path, "")?;
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
