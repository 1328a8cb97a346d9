//! The registry from runner type to constructor.

use std::collections::BTreeMap;
use std::sync::Arc;

use runner_core::{ConfigError, RunnerAdapter, RunnerConfig};

use crate::layers::{PhaseLimits, stack};
use crate::metrics::Metrics;

/// Builds a backend from its config.
pub type Constructor =
    Arc<dyn Fn(&RunnerConfig) -> Result<Arc<dyn RunnerAdapter>, ConfigError> + Send + Sync>;

/// Runner type → constructor. Every adapter it creates is wrapped once in
/// the cross-cutting layers ([`crate::layers::stack`]); backends never
/// apply those concerns themselves.
#[derive(Clone)]
pub struct RunnerFactory {
    constructors: BTreeMap<String, Constructor>,
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
        Self {
            constructors: BTreeMap::new(),
            metrics,
        }
    }

    /// A factory with every built-in backend this build has (cargo features
    /// `local`, `mock`, `ec2`, `eks`, `onprem` and `container`, all on by
    /// default).
    pub fn with_builtins(metrics: Metrics) -> Self {
        #[allow(unused_mut)]
        let mut factory = Self::empty(metrics);
        #[cfg(feature = "local")]
        factory.register(runner_local::RUNNER_TYPE, |config| {
            Ok(Arc::new(runner_local::LocalProcessRunner::from_config(
                config,
            )?))
        });
        #[cfg(feature = "ec2")]
        factory.register(runner_ec2::RUNNER_TYPE, |config| {
            Ok(Arc::new(runner_ec2::Ec2Runner::from_config(config)?))
        });
        #[cfg(feature = "eks")]
        factory.register(runner_eks::RUNNER_TYPE, |config| {
            Ok(Arc::new(runner_eks::EksRunner::from_config(config)?))
        });
        #[cfg(feature = "onprem")]
        factory.register(runner_onprem::RUNNER_TYPE, |config| {
            Ok(Arc::new(runner_onprem::OnPremBenchRunner::from_config(
                config,
            )?))
        });
        #[cfg(feature = "container")]
        factory.register(runner_container::RUNNER_TYPE, |config| {
            Ok(Arc::new(runner_container::ContainerRunner::from_config(
                config,
            )?))
        });
        #[cfg(feature = "mock")]
        factory.register(runner_mock::RUNNER_TYPE, |config| {
            Ok(Arc::new(runner_mock::LocalMockRunner::from_config(config)?))
        });
        factory
    }

    /// Register (or replace) the constructor of `runner_type`. Third-party
    /// crates call this from their own binary; nothing here needs editing.
    pub fn register<F>(&mut self, runner_type: &str, constructor: F) -> &mut Self
    where
        F: Fn(&RunnerConfig) -> Result<Arc<dyn RunnerAdapter>, ConfigError> + Send + Sync + 'static,
    {
        self.constructors
            .insert(runner_type.to_owned(), Arc::new(constructor));
        self
    }

    /// The registered types, sorted.
    pub fn known_types(&self) -> Vec<String> {
        self.constructors.keys().cloned().collect()
    }

    /// The metrics shared by every adapter made here.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Build the backend `config.runner_type` names, wrapped in every layer.
    pub fn create(&self, config: &RunnerConfig) -> Result<Arc<dyn RunnerAdapter>, ConfigError> {
        let constructor = self.constructors.get(&config.runner_type).ok_or_else(|| {
            ConfigError::UnknownRunnerType {
                runner_type: config.runner_type.clone(),
                known: self.known_types(),
            }
        })?;
        let inner = constructor(config)?;
        if inner.runner_type() != config.runner_type {
            return Err(ConfigError::Invalid {
                key: "type".into(),
                message: format!(
                    "the constructor for `{}` built an adapter of type `{}`",
                    config.runner_type,
                    inner.runner_type()
                ),
            });
        }
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
