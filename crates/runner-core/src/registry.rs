//! `RunnerRegistry`: runner type → constructor, the one way a backend is
//! added, built-in or third-party.
//!
//! Each backend crate exports `register(&mut RunnerRegistry)`. The
//! worker's factory (`orchestrator_worker::RunnerFactory`) holds a registry
//! and wraps every adapter it builds in the cross-cutting layers; its
//! built-ins are a list of those `register` functions, and a third-party
//! binary calls its own `register` on the same registry
//! (`factory.registry_mut()`). The registry lives here, not in the worker,
//! so a backend crate registers itself with no dependency beyond this
//! crate: no store, HTTP server or telemetry.
//!
//! ```
//! use std::sync::Arc;
//!
//! use runner_core::blocking::{Blocking, BlockingRunnerAdapter};
//! use runner_core::{RunnerConfig, RunnerRegistry};
//! # use runner_core::*;
//! # #[derive(Debug)]
//! # struct Echo;
//! # impl BlockingRunnerAdapter for Echo {
//! #     fn runner_type(&self) -> &str { "echo" }
//! #     fn capabilities(&self) -> Capabilities { Capabilities::default() }
//! #     fn provision(&self, ctx: &RunContext, _: &BenchSpec) -> Result<RunnerHandle, ProvisionError> {
//! #         Err(ProvisionError::permanent(ctx, "a sketch"))
//! #     }
//! #     fn run_test(&self, ctx: &RunContext, _: &RunnerHandle, _: &TestPayload) -> Result<TestResult, ExecutionError> {
//! #         Err(ExecutionError::permanent(ctx, "a sketch"))
//! #     }
//! #     fn collect_artifacts(&self, _: &RunContext, _: &RunnerHandle, _: &TestPayload) -> Result<ArtifactBundle, ArtifactError> {
//! #         Ok(ArtifactBundle::default())
//! #     }
//! #     fn teardown(&self, _: &RunContext, _: &RunnerHandle) -> Result<(), TeardownError> { Ok(()) }
//! # }
//!
//! /// What a backend crate exports (in its `register.rs`).
//! pub fn register(registry: &mut RunnerRegistry) {
//!     registry.register("echo", |_config| Ok(Arc::new(Blocking::new(Echo))));
//! }
//!
//! let registry = RunnerRegistry::with(&[register]);
//! assert_eq!(registry.known_types(), ["echo"]);
//! assert!(registry.create(&RunnerConfig::new("echo")).is_ok());
//! let unknown = registry.create(&RunnerConfig::new("ech0")).unwrap_err();
//! assert!(unknown.to_string().contains("echo"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::adapter::RunnerAdapter;
use crate::config::{ConfigError, RunnerConfig};

/// Builds a backend from its config.
pub type Constructor =
    Arc<dyn Fn(&RunnerConfig) -> Result<Arc<dyn RunnerAdapter>, ConfigError> + Send + Sync>;

/// A backend crate's registration function: what it exports as `register`.
pub type Register = fn(&mut RunnerRegistry);

/// Runner type → constructor. It builds bare adapters; the worker's
/// factory adds the layers.
#[derive(Clone, Default)]
pub struct RunnerRegistry {
    constructors: BTreeMap<String, Constructor>,
}

impl std::fmt::Debug for RunnerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerRegistry")
            .field("types", &self.known_types())
            .finish()
    }
}

impl RunnerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry filled by each of `registers` in turn (a later one
    /// replaces an earlier one of the same type).
    pub fn with(registers: &[Register]) -> Self {
        let mut registry = Self::new();
        for register in registers {
            register(&mut registry);
        }
        registry
    }

    /// Register (or replace) the constructor of `runner_type`.
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

    /// Build the bare backend `config.runner_type` names. An unknown type
    /// is an error that lists the known ones; a constructor that builds an
    /// adapter of another type is refused.
    pub fn create(&self, config: &RunnerConfig) -> Result<Arc<dyn RunnerAdapter>, ConfigError> {
        let constructor = self.constructors.get(&config.runner_type).ok_or_else(|| {
            ConfigError::UnknownRunnerType {
                runner_type: config.runner_type.clone(),
                known: self.known_types(),
            }
        })?;
        let adapter = constructor(config)?;
        if adapter.runner_type() != config.runner_type {
            return Err(ConfigError::Invalid {
                key: "type".into(),
                message: format!(
                    "the constructor for `{}` built an adapter of type `{}`",
                    config.runner_type,
                    adapter.runner_type()
                ),
            });
        }
        Ok(adapter)
    }
}
