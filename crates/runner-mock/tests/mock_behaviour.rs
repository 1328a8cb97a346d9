//! Determinism, faults and the recorder of LocalMockRunner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use runner_core::{
    ErrorKind, LogSink, Phase, RunContext, RunnerAdapter, RunnerConfig, TestPayload, TestStatus,
};
use runner_mock::{Fault, FaultPlan, LocalMockRunner, fixtures};

async fn run_once(
    dir: &std::path::Path,
    exec: &str,
    payload: &TestPayload,
) -> (Vec<String>, Vec<u8>, String) {
    let mock = LocalMockRunner::with_artifacts_dir(dir);
    let (sink, mut rx) = LogSink::channel(1024);
    let ctx = RunContext::new(exec, "corr").with_log_sink(sink);
    let handle = mock.provision(&ctx, &fixtures::bench()).await.unwrap();
    let result = mock.run_test(&ctx, &handle, payload).await.unwrap();
    let bundle = mock
        .collect_artifacts(&ctx, &handle, payload)
        .await
        .unwrap();
    mock.teardown(&ctx, &handle).await.unwrap();
    let lines = rx.drain_now().into_iter().map(|l| l.text).collect();
    let log = match &bundle.artifacts[0].location {
        runner_core::ArtifactLocation::Local(p) => std::fs::read(p).unwrap(),
        other => panic!("unexpected location {other:?}"),
    };
    (lines, log, serde_json::to_string(&result).unwrap())
}

#[tokio::test]
async fn same_execution_gives_byte_identical_logs_and_result() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = run_once(a.path(), "exec-42", &fixtures::passing()).await;
    let second = run_once(b.path(), "exec-42", &fixtures::passing()).await;
    assert_eq!(first, second);
    assert!(first.0.len() > 2);
    let other = run_once(a.path(), "exec-43", &fixtures::passing()).await;
    assert_ne!(
        first.1, other.1,
        "another execution id must give other logs"
    );
}

#[tokio::test]
async fn fault_plan_from_config_injects_then_recovers() {
    let config = RunnerConfig::from_yaml_str(
        "type: local_mock\nbackend:\n  artifacts: memory\n  faults:\n    - {phase: provision, fault: {kind: transient}, times: 1}\n",
    )
    .unwrap();
    let mock = LocalMockRunner::from_config(&config).unwrap();
    let ctx = RunContext::new("e", "c");
    let err = mock.provision(&ctx, &fixtures::bench()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(mock.provision(&ctx, &fixtures::bench()).await.is_ok());
    assert_eq!(mock.call_count(Phase::Provision), 2);
    assert_eq!(mock.live_handles().len(), 1);
}

#[tokio::test]
async fn bad_fault_in_config_names_the_key() {
    let config = RunnerConfig::from_yaml_str(
        "type: local_mock\nbackend:\n  faults:\n    - {phase: provision, fault: {kind: explode}}\n",
    )
    .unwrap();
    let err = LocalMockRunner::from_config(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("backend.faults[0].fault"), "{err}");
}

#[tokio::test]
async fn hang_waits_for_cancellation_and_panic_panics() {
    let mock = LocalMockRunner::in_memory().with_faults(
        FaultPlan::none()
            .always(Phase::RunTest, Fault::Hang)
            .always(Phase::Teardown, Fault::Panic),
    );
    let mock = std::sync::Arc::new(mock);
    let ctx = RunContext::new("e", "c");
    let handle = mock.provision(&ctx, &fixtures::bench()).await.unwrap();
    let run = {
        let (mock, ctx, handle) = (mock.clone(), ctx.clone(), handle.clone());
        tokio::spawn(async move { mock.run_test(&ctx, &handle, &fixtures::passing()).await })
    };
    ctx.cancel_token().cancel();
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let teardown = {
        let (mock, handle) = (mock.clone(), handle.clone());
        tokio::spawn(async move { mock.teardown(&RunContext::new("e", "c"), &handle).await })
    };
    assert!(teardown.await.unwrap_err().is_panic());
}

#[tokio::test]
async fn provision_is_idempotent_per_execution_key() {
    let mock = LocalMockRunner::in_memory();
    let ctx = RunContext::new("e1", "c").with_execution_key("key-1");
    let first = mock.provision(&ctx, &fixtures::bench()).await.unwrap();
    let retry = RunContext::new("e1", "c")
        .with_execution_key("key-1")
        .with_attempt(2);
    let second = mock.provision(&retry, &fixtures::bench()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(mock.live_handles().len(), 1);
    let failed = mock
        .run_test(&ctx, &first, &fixtures::failing())
        .await
        .unwrap();
    assert_eq!(failed.status, TestStatus::Failed);
}

#[tokio::test]
async fn a_mock_built_from_config_keeps_a_bounded_recorder() {
    let config = RunnerConfig::from_yaml_str("type: local_mock\n").unwrap();
    let mock = LocalMockRunner::from_config(&config).unwrap();
    let tasks = runner_mock::RECORDED_CALLS_FROM_CONFIG + 500;
    for i in 0..tasks {
        let ctx = RunContext::new(format!("exec-{i}"), "corr");
        let handle = mock.provision(&ctx, &fixtures::bench()).await.unwrap();
        mock.teardown(&ctx, &handle).await.unwrap();
    }
    let calls = mock.calls();
    assert_eq!(calls.len(), runner_mock::RECORDED_CALLS_FROM_CONFIG);
    assert_eq!(mock.dropped_calls(), (2 * tasks - calls.len()) as u64);
    // The newest are kept.
    let last = calls.last().unwrap();
    assert_eq!(last.phase, Phase::Teardown);
    assert_eq!(last.execution_id, format!("exec-{}", tasks - 1));
    assert!(mock.live_handles().is_empty());
}
