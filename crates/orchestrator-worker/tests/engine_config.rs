//! The engine takes its retries from the runner's config: a caller that
//! has a `RunnerConfig` copies nothing into `EngineSettings`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use orchestrator_worker::engine::{EngineSettings, Execution};
use orchestrator_worker::{Engine, Metrics, RunnerFactory};
use runner_core::{RunContext, RunnerConfig, TestStatus};
use runner_mock::fixtures;

mod common;

/// A mock runner whose first three provisions fail transiently, with
/// `retries` from its YAML config.
fn config(retries: u32) -> RunnerConfig {
    RunnerConfig::from_yaml_str(&format!(
        "type: local_mock\nretries: {retries}\nmax_concurrency: 3\n\
         backend: {{artifacts: memory, faults: [{{phase: provision, fault: {{kind: transient}}, times: 3}}]}}\n"
    ))
    .unwrap()
}

async fn run(config: &RunnerConfig) -> (Engine, Option<TestStatus>, u32) {
    let adapter = RunnerFactory::with_builtins(Metrics::new())
        .create(config)
        .unwrap();
    // Settings that say otherwise: the config's values win.
    let settings = EngineSettings {
        retries: 0,
        max_concurrency: None,
        backoff: common::fast_backoff(),
        ..EngineSettings::default()
    };
    let engine = Engine::for_runner(adapter, config, settings);
    let outcome = engine
        .execute(Execution {
            ctx: RunContext::new("e.1", "c").with_execution_key("e"),
            bench: &fixtures::bench(),
            payload: &fixtures::passing(),
            observer: None,
            hurry: None,
            journal_clear: false,
            journal_end_by_caller: false,
            lease_held_until: None,
        })
        .await;
    let status = outcome.result.as_ref().map(|r| r.status);
    (engine, status, outcome.provision_calls)
}

#[tokio::test]
async fn retries_come_from_the_runner_config() {
    let (engine, status, calls) = run(&config(3)).await;
    assert_eq!(engine.settings().retries, 3);
    assert_eq!(engine.settings().max_concurrency, Some(3));
    assert_eq!(
        status,
        Some(TestStatus::Passed),
        "three retries outlast three faults"
    );
    assert_eq!(calls, 4);

    let (engine, status, calls) = run(&config(2)).await;
    assert_eq!(engine.settings().retries, 2);
    assert_eq!(status, None, "two retries do not: provision fails");
    assert_eq!(calls, 3);
}
