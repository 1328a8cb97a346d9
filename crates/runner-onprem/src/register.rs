//! How a worker learns this backend: [`register`] adds the `onprem` runner
//! type to a registry, the same call for a built-in and a third-party backend.

use std::sync::Arc;

use runner_core::RunnerRegistry;

use crate::{OnPremBenchRunner, RUNNER_TYPE};

/// Add the `onprem` runner type to `registry`: its constructor builds a
/// [`OnPremBenchRunner`] from the runner config (`OnPremBenchRunner::from_config`).
pub fn register(registry: &mut RunnerRegistry) {
    registry.register(RUNNER_TYPE, |config| {
        Ok(Arc::new(OnPremBenchRunner::from_config(config)?))
    });
}
