#![doc = include_str!("../README.md")]
// Public API: every public item documented (`cargo xtask ci` runs rustdoc
// with `-D warnings`, as well as clippy).
#![warn(missing_docs)]

pub mod api;
pub mod backends;
pub mod cli;
pub mod config;
pub mod engine;
pub mod factory;
mod invalid;
pub mod junit;
pub mod layers;
pub mod metrics;
pub mod percent;
pub mod policy;
pub mod queue;
pub mod reaper;
pub mod recorder;
pub mod report;
pub mod results;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod submit;
pub mod task;
pub mod telemetry;
pub mod validate;

pub use engine::{Engine, EngineSettings, Execution, ExecutionOutcome};
pub use factory::RunnerFactory;
pub use metrics::Metrics;
pub use policy::Disposition;
pub use task::Task;
