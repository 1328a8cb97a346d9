//! How a worker learns this backend: [`register`] adds the `eks` runner
//! type to a registry, the same call for a built-in and a third-party backend.

use std::sync::Arc;

use runner_core::RunnerRegistry;

use crate::{EksRunner, RUNNER_TYPE};

/// Add the `eks` runner type to `registry`: its constructor builds a
/// [`EksRunner`] from the runner config (`EksRunner::from_config`).
pub fn register(registry: &mut RunnerRegistry) {
    registry.register(RUNNER_TYPE, |config| {
        Ok(Arc::new(EksRunner::from_config(config)?))
    });
}
