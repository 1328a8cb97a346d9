//! How a worker learns this backend: [`register`] adds the `local_mock` runner
//! type to a registry, the same call for a built-in and a third-party backend.

use std::sync::Arc;

use runner_core::RunnerRegistry;

use crate::{LocalMockRunner, RUNNER_TYPE};

/// Add the `local_mock` runner type to `registry`: its constructor builds a
/// [`LocalMockRunner`] from the runner config (`LocalMockRunner::from_config`).
pub fn register(registry: &mut RunnerRegistry) {
    registry.register(RUNNER_TYPE, |config| {
        Ok(Arc::new(LocalMockRunner::from_config(config)?))
    });
}
