//! Set-up shared by the worker's engine tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use orchestrator_worker::engine::EngineSettings;
use orchestrator_worker::layers::{PhaseLimits, stack};
use orchestrator_worker::policy::Backoff;
use orchestrator_worker::{Engine, Metrics};
use runner_core::RunnerAdapter;

/// Retry delays short enough for tests.
pub fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(2),
    }
}

/// An engine over `adapter` wrapped in every layer, with `limit` for each
/// phase, a `grace` to wind down, `retries` and the fast backoff.
pub fn layered_engine(
    adapter: Arc<dyn RunnerAdapter>,
    limit: Duration,
    grace: Duration,
    retries: u32,
    worker_id: &str,
) -> Engine {
    let layered = stack(adapter, PhaseLimits::uniform(limit, grace), Metrics::new());
    Engine::new(
        layered,
        EngineSettings {
            retries,
            backoff: fast_backoff(),
            worker_id: worker_id.into(),
            stale_after: Duration::from_secs(60),
            max_concurrency: None,
        },
    )
}
