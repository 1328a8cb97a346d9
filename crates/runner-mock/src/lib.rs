#![doc = include_str!("../README.md")]

pub mod fault;
pub mod fixtures;
mod register;
mod runner;

pub use fault::{Fault, FaultPlan, FaultRule};
pub use register::register;
pub use runner::{
    ArtifactMode, LocalMockRunner, MAX_DURATION_MS, MAX_LOG_LINES, MockConfig, MockPayload,
    RECORDED_CALLS_FROM_CONFIG, RecordedCall,
};

/// The runner type name this crate registers.
pub const RUNNER_TYPE: &str = "local_mock";
