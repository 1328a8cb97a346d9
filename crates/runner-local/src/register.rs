//! How a worker learns this backend: [`register`] adds the `local` runner
//! type to a registry, the same call for a built-in and a third-party backend.

use std::sync::Arc;

use runner_core::RunnerRegistry;

use crate::{LocalProcessRunner, RUNNER_TYPE};

/// Add the `local` runner type to `registry`: its constructor builds a
/// [`LocalProcessRunner`] from the runner config (`LocalProcessRunner::from_config`).
pub fn register(registry: &mut RunnerRegistry) {
    registry.register(RUNNER_TYPE, |config| {
        Ok(Arc::new(LocalProcessRunner::from_config(config)?))
    });
}
