//! The factory: a [`RunnerRegistry`] of backends, and the cross-cutting
//! layers every adapter it builds is wrapped in once.

use std::sync::Arc;

use runner_core::{ConfigError, Register, RunnerAdapter, RunnerConfig, RunnerRegistry};

use crate::layers::{PhaseLimits, stack};
use crate::metrics::Metrics;

/// Builds a backend from its config.
pub use runner_core::Constructor;

/// The built-in backends of this build: each crate's own `register`, the
/// same call a third-party binary makes for its backend (cargo features
/// `local`, `mock`, `ec2`, `eks`, `onprem` and `container`, all on by
/// default).
pub const BUILTINS: &[Register] = &[
    #[cfg(feature = "local")]
    runner_local::register,
    #[cfg(feature = "ec2")]
    runner_ec2::register,
    #[cfg(feature = "eks")]
    runner_eks::register,
    #[cfg(feature = "onprem")]
    runner_onprem::register,
    #[cfg(feature = "container")]
    runner_container::register,
    #[cfg(feature = "mock")]
    runner_mock::register,
];

/// Runner type → constructor (a [`RunnerRegistry`]). Every adapter it
/// creates is wrapped once in the cross-cutting layers
/// ([`crate::layers::stack`]); backends never apply those concerns
/// themselves.
#[derive(Clone)]
pub struct RunnerFactory {
    registry: RunnerRegistry,
    metrics: Metrics,
}

impl std::fmt::Debug for RunnerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerFactory")
            .field("types", &self.known_types())
            .finish()
    }
}

impl RunnerFactory {
    /// An empty factory.
    pub fn empty(metrics: Metrics) -> Self {
        Self::from_registry(RunnerRegistry::new(), metrics)
    }

    /// A factory over the backends of `registry`.
    pub fn from_registry(registry: RunnerRegistry, metrics: Metrics) -> Self {
        Self { registry, metrics }
    }

    /// A factory with every built-in backend this build has ([`BUILTINS`]).
    pub fn with_builtins(metrics: Metrics) -> Self {
        Self::from_registry(RunnerRegistry::with(BUILTINS), metrics)
    }

    /// The registry, for a backend crate's `register`: a third-party
    /// binary adds its backend the way the built-ins are added,
    /// `my_backend::register(factory.registry_mut())`.
    pub fn registry_mut(&mut self) -> &mut RunnerRegistry {
        &mut self.registry
    }

    /// Register (or replace) the constructor of `runner_type` (see
    /// [`RunnerRegistry::register`]).
    pub fn register<F>(&mut self, runner_type: &str, constructor: F) -> &mut Self
    where
        F: Fn(&RunnerConfig) -> Result<Arc<dyn RunnerAdapter>, ConfigError> + Send + Sync + 'static,
    {
        self.registry.register(runner_type, constructor);
        self
    }

    /// The registered types, sorted.
    pub fn known_types(&self) -> Vec<String> {
        self.registry.known_types()
    }

    /// The metrics shared by every adapter made here.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Build the backend `config.runner_type` names, wrapped in every layer.
    pub fn create(&self, config: &RunnerConfig) -> Result<Arc<dyn RunnerAdapter>, ConfigError> {
        let inner = self.registry.create(config)?;
        Ok(stack(
            inner,
            PhaseLimits::from_config(config),
            self.metrics.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_lists_the_known_ones() {
        let factory = RunnerFactory::with_builtins(Metrics::new());
        let err = factory
            .create(&RunnerConfig::new("kubernetes-ish"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes-ish"), "{err}");
        assert!(err.contains("local") && err.contains("local_mock"), "{err}");
    }

    #[test]
    fn bad_backend_section_names_the_key() {
        let factory = RunnerFactory::with_builtins(Metrics::new());
        let config = RunnerConfig::from_yaml_str("type: local\nbackend: {rooot: /tmp}\n").unwrap();
        let err = factory.create(&config).unwrap_err().to_string();
        assert!(err.contains("rooot"), "{err}");
    }
}
