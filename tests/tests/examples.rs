//! The shipped example files run end to end through the factory and engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use orchestrator_worker::engine::{EngineSettings, Execution};
use orchestrator_worker::{Engine, Metrics, RunnerFactory};
use runner_core::{
    ArtifactLocation, BenchSpec, LogSink, RunContext, RunnerConfig, TestPayload, TestStatus,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn run_example(
    payload_file: &str,
) -> (
    orchestrator_worker::ExecutionOutcome,
    Vec<String>,
    tempfile::TempDir,
) {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        RunnerConfig::from_yaml_file(&root.join("examples/local/runner.yaml")).unwrap();
    config.artifacts_dir = dir.path().join("artifacts");
    config.backend["root"] = serde_json_value(dir.path().join("work"));
    let bench: BenchSpec =
        runner_core::spec::from_yaml_file(&root.join("examples/local/bench.yaml")).unwrap();
    let mut payload: TestPayload =
        runner_core::spec::from_yaml_file(&root.join(payload_file)).unwrap();
    payload.package = Some(root.join(payload.package.unwrap()).display().to_string());
    let adapter = RunnerFactory::with_builtins(Metrics::new())
        .create(&config)
        .unwrap();
    let (sink, mut rx) = LogSink::channel(1024);
    let ctx =
        RunContext::new("example-1", "e2e").with_log_sink(sink.with_redactor(payload.redactor()));
    let outcome = Engine::new(adapter, EngineSettings::default())
        .execute(Execution {
            ctx,
            bench: &bench,
            payload: &payload,
            observer: None,
            hurry: None,
            journal_clear: false,
            journal_end_by_caller: false,
            lease_held_until: None,
        })
        .await;
    let lines = rx.drain_now().into_iter().map(|l| l.text).collect();
    (outcome, lines, dir)
}

fn serde_json_value(path: PathBuf) -> runner_core::spec::JsonValue {
    runner_core::spec::JsonValue::String(path.display().to_string())
}

#[tokio::test]
async fn the_readme_example_passes_with_its_junit_report_and_no_secret() {
    let (outcome, lines, dir) = run_example("examples/local/payload.yaml").await;
    let result = outcome.result.as_ref().unwrap();
    assert_eq!(
        result.status,
        TestStatus::Passed,
        "{outcome:#?}\n{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "5 passed, 0 failed"),
        "{lines:#?}"
    );
    let bundle = outcome.artifacts.as_ref().unwrap();
    let junit = bundle
        .get("reports/junit.xml")
        .expect("the suite's JUnit report is collected");
    let ArtifactLocation::Local(path) = &junit.location else {
        panic!()
    };
    assert!(
        std::fs::read_to_string(path)
            .unwrap()
            .contains("tests=\"5\"")
    );
    for artifact in &bundle.artifacts {
        let ArtifactLocation::Local(path) = &artifact.location else {
            panic!()
        };
        assert!(
            !std::fs::read_to_string(path)
                .unwrap()
                .contains("example-token-8c1f")
        );
    }
    assert!(lines.iter().all(|l| !l.contains("example-token-8c1f")));
    assert!(outcome.teardown_error.is_none());
    // Nothing but the runner's clean directories kept for reuse.
    assert_eq!(
        std::fs::read_dir(dir.path().join("work"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != ".spare")
            .count(),
        0
    );
}

#[tokio::test]
async fn the_failing_example_fails_with_a_diagnosis() {
    let (outcome, lines, _dir) = run_example("examples/local/payload-failing.yaml").await;
    let result = outcome.result.unwrap();
    assert_eq!(result.status, TestStatus::Failed);
    assert_eq!(result.exit_code, Some(1));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAIL deliberate_failure")),
        "{lines:#?}"
    );
}
