//! A worker binary with the `echo` backend added; nothing in the worker crate changed.

use orchestrator_worker::engine::{EngineSettings, Execution};
use orchestrator_worker::{Engine, Metrics, RunnerFactory};
use runner_core::{BenchSpec, RunContext, RunnerConfig, TestPayload};

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut factory = RunnerFactory::with_builtins(Metrics::new());
    third_party_backend::register(&mut factory);
    println!("known runner types: {}", factory.known_types().join(", "));
    let adapter = factory
        .create(&RunnerConfig::new(third_party_backend::RUNNER_TYPE))
        .map_err(|e| e.to_string())?;
    let outcome = Engine::new(adapter, EngineSettings::default())
        .execute(Execution {
            ctx: RunContext::new("demo-1", "demo"),
            bench: &BenchSpec::default(),
            payload: &TestPayload {
                command: vec!["make".into(), "test".into()],
                ..TestPayload::default()
            },
            observer: None,
            hurry: None,
        })
        .await;
    println!("{outcome:#?}");
    Ok(())
}
