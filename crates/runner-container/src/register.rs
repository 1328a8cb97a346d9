//! How a worker learns this backend: [`register`] adds the `container` runner
//! type to a registry, the same call for a built-in and a third-party backend.

use std::sync::Arc;

use runner_core::RunnerRegistry;

use crate::{ContainerRunner, RUNNER_TYPE};

/// Add the `container` runner type to `registry`: its constructor builds a
/// [`ContainerRunner`] from the runner config (`ContainerRunner::from_config`).
pub fn register(registry: &mut RunnerRegistry) {
    registry.register(RUNNER_TYPE, |config| {
        Ok(Arc::new(ContainerRunner::from_config(config)?))
    });
}
