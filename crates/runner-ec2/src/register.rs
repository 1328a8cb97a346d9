//! How a worker learns this backend: [`register`] adds the `ec2` runner
//! type to a registry, the same call for a built-in and a third-party backend.

use std::sync::Arc;

use runner_core::RunnerRegistry;

use crate::{Ec2Runner, RUNNER_TYPE};

/// Add the `ec2` runner type to `registry`: its constructor builds a
/// [`Ec2Runner`] from the runner config (`Ec2Runner::from_config`).
pub fn register(registry: &mut RunnerRegistry) {
    registry.register(RUNNER_TYPE, |config| {
        Ok(Arc::new(Ec2Runner::from_config(config)?))
    });
}
