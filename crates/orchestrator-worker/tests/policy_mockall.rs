//! Every row of the outcome policy, with mockall doubles of the adapter:
//! what the engine calls, how often teardown runs, and what becomes of the task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use mockall::mock;
use orchestrator_worker::engine::{Execution, ExecutionOutcome};
use orchestrator_worker::policy::{Backoff, Disposition, decide};
use runner_core::{
    ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ErrorKind, ExecutionError,
    ListOwnedError, OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerHandle,
    TeardownError, TestPayload, TestResult, TestStatus,
};

mock! {
    pub Adapter {}
    #[runner_core::async_trait]
    impl RunnerAdapter for Adapter {
        fn runner_type(&self) -> &str;
        fn capabilities(&self) -> Capabilities;
        async fn provision(&self, ctx: &RunContext, bench: &BenchSpec) -> Result<RunnerHandle, ProvisionError>;
        async fn run_test(&self, ctx: &RunContext, handle: &RunnerHandle, payload: &TestPayload) -> Result<TestResult, ExecutionError>;
        async fn collect_artifacts(&self, ctx: &RunContext, handle: &RunnerHandle, payload: &TestPayload) -> Result<ArtifactBundle, ArtifactError>;
        async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError>;
        async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError>;
    }
}

impl std::fmt::Debug for MockAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockAdapter")
    }
}

const RETRIES: u32 = 2;

fn handle() -> RunnerHandle {
    RunnerHandle::new("double", "h-1", "e-1", &()).unwrap()
}

/// A double whose every phase succeeds unless the test overrides it.
fn double(idempotent: bool) -> MockAdapter {
    let mut a = MockAdapter::new();
    a.expect_runner_type().return_const("double".to_owned());
    a.expect_capabilities()
        .return_const(Capabilities::new().with_idempotent_teardown(idempotent));
    a
}

fn passes(a: &mut MockAdapter, status: TestStatus) {
    a.expect_provision().times(1).returning(|_, _| Ok(handle()));
    a.expect_run_test()
        .times(1)
        .returning(move |_, _, _| Ok(TestResult::new(status, Duration::from_millis(5))));
    a.expect_collect_artifacts()
        .times(1)
        .returning(|_, _, _| Ok(ArtifactBundle::default()));
}

async fn execute(adapter: MockAdapter, attempt: u32) -> (ExecutionOutcome, Disposition) {
    let engine = common::layered_engine(
        Arc::new(adapter),
        Duration::from_secs(5),
        Duration::from_millis(100),
        RETRIES,
        "test",
    );
    let outcome = engine
        .execute(Execution {
            ctx: RunContext::new("e-1", "c-1").with_attempt(attempt),
            bench: &BenchSpec::default(),
            payload: &TestPayload::default(),
            observer: None,
            hurry: None,
            journal_clear: false,
            journal_end_by_caller: false,
            lease_held_until: None,
        })
        .await;
    let disposition = decide(
        &outcome.ending(false),
        attempt,
        RETRIES + 1,
        &common::fast_backoff(),
    );
    (outcome, disposition)
}

#[tokio::test]
async fn passed_and_failed_results_are_acked_with_one_teardown() {
    for status in [
        TestStatus::Passed,
        TestStatus::Failed,
        TestStatus::TimedOut,
        TestStatus::Error,
    ] {
        let mut a = double(false);
        passes(&mut a, status);
        a.expect_teardown().times(1).returning(|_, _| Ok(()));
        let (outcome, disposition) = execute(a, 1).await;
        assert_eq!(disposition, Disposition::Ack, "{status:?}");
        assert_eq!(outcome.teardown_calls, 1);
    }
}

#[tokio::test]
async fn retryable_provision_error_is_retried_then_requeued_then_dead_lettered() {
    for attempt in [1, RETRIES + 1] {
        let mut a = double(false);
        a.expect_provision()
            .times(RETRIES as usize + 1)
            .returning(|ctx, _| Err(ProvisionError::capacity(ctx, "no capacity")));
        a.expect_teardown().times(0);
        let (outcome, disposition) = execute(a, attempt).await;
        assert_eq!(outcome.provision_calls, RETRIES + 1);
        if attempt == 1 {
            assert!(
                matches!(disposition, Disposition::Requeue { .. }),
                "{disposition:?}"
            );
        } else {
            match disposition {
                Disposition::DeadLetter { reason } => {
                    assert!(reason.contains("exhausted"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn permanent_provision_error_dead_letters_at_once_without_retry() {
    let mut a = double(false);
    a.expect_provision()
        .times(1)
        .returning(|ctx, _| Err(ProvisionError::invalid_spec(ctx, "bench.backend.x", "bad")));
    a.expect_teardown().times(0);
    let (outcome, disposition) = execute(a, 1).await;
    assert_eq!(outcome.failure.unwrap().kind, ErrorKind::InvalidSpec);
    assert!(matches!(disposition, Disposition::DeadLetter { .. }));
}

#[tokio::test]
async fn run_errors_still_collect_and_tear_down_once() {
    for (kind, requeued) in [(ErrorKind::Transient, true), (ErrorKind::Permanent, false)] {
        let mut a = double(false);
        a.expect_provision().times(1).returning(|_, _| Ok(handle()));
        a.expect_run_test()
            .times(1)
            .returning(move |ctx, _, _| Err(ExecutionError::new(kind, ctx, "boom")));
        a.expect_collect_artifacts()
            .times(1)
            .returning(|_, _, _| Ok(ArtifactBundle::default()));
        a.expect_teardown().times(1).returning(|_, _| Ok(()));
        let (outcome, disposition) = execute(a, 1).await;
        assert_eq!(outcome.teardown_calls, 1);
        assert_eq!(
            matches!(disposition, Disposition::Requeue { .. }),
            requeued,
            "{kind}"
        );
        assert_eq!(
            matches!(disposition, Disposition::DeadLetter { .. }),
            !requeued,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn failing_teardown_is_called_once_and_leaves_the_result_alone() {
    let mut a = double(false);
    passes(&mut a, TestStatus::Passed);
    a.expect_teardown()
        .times(1)
        .returning(|ctx, _| Err(TeardownError::transient(ctx, "api flaked")));
    let (outcome, disposition) = execute(a, 1).await;
    assert_eq!(disposition, Disposition::Ack);
    assert_eq!(outcome.teardown_calls, 1);
    assert!(outcome.teardown_error.is_some());
    assert_eq!(outcome.result.unwrap().status, TestStatus::Passed);
}

#[tokio::test]
async fn idempotent_teardown_is_retried() {
    let mut a = double(true);
    passes(&mut a, TestStatus::Passed);
    let mut calls = 0;
    a.expect_teardown().times(2).returning(move |ctx, _| {
        calls += 1;
        if calls == 1 {
            Err(TeardownError::transient(ctx, "api flaked"))
        } else {
            Ok(())
        }
    });
    let (outcome, disposition) = execute(a, 1).await;
    assert_eq!(disposition, Disposition::Ack);
    assert_eq!(outcome.teardown_calls, 2);
    assert!(outcome.teardown_error.is_none());
}

#[tokio::test]
async fn artifact_failure_is_retried_and_recorded_beside_the_result() {
    let mut a = double(false);
    a.expect_provision().times(1).returning(|_, _| Ok(handle()));
    a.expect_run_test()
        .times(1)
        .returning(|_, _, _| Ok(TestResult::new(TestStatus::Failed, Duration::ZERO)));
    a.expect_collect_artifacts()
        .times(RETRIES as usize + 1)
        .returning(|ctx, _, _| Err(ArtifactError::transient(ctx, "bucket unreachable")));
    a.expect_teardown().times(1).returning(|_, _| Ok(()));
    let (outcome, disposition) = execute(a, 1).await;
    assert_eq!(disposition, Disposition::Ack);
    assert!(outcome.artifact_error.is_some());
}

#[tokio::test]
async fn a_panic_in_run_test_is_a_permanent_error_and_teardown_still_runs() {
    let mut a = double(false);
    a.expect_provision().times(1).returning(|_, _| Ok(handle()));
    a.expect_run_test()
        .times(1)
        .returning(|_, _, _| panic!("backend bug"));
    a.expect_collect_artifacts()
        .times(1)
        .returning(|_, _, _| Ok(ArtifactBundle::default()));
    a.expect_teardown().times(1).returning(|_, _| Ok(()));
    let (outcome, disposition) = execute(a, 1).await;
    let failure = outcome.failure.unwrap();
    assert!(
        failure.panicked && failure.kind == ErrorKind::Permanent,
        "{failure:?}"
    );
    assert!(failure.message.contains("backend bug"));
    assert!(
        matches!(disposition, Disposition::DeadLetter { reason } if reason.contains("panicked"))
    );
}

#[tokio::test]
async fn cancelled_by_shutdown_is_released_without_counting() {
    let mut a = double(false);
    passes(&mut a, TestStatus::Cancelled);
    a.expect_teardown().times(1).returning(|_, _| Ok(()));
    let (outcome, _) = execute(a, 3).await;
    let backoff = Backoff::default();
    assert_eq!(
        decide(&outcome.ending(true), 3, 3, &backoff),
        Disposition::Release
    );
}
