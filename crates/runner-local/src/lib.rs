#![doc = include_str!("../README.md")]

mod adapter;
mod artifacts;
pub mod config;
mod output;
mod process;

pub use adapter::LocalProcessRunner;
pub use config::{LocalBench, LocalConfig};

/// The runner type name this crate registers.
pub const RUNNER_TYPE: &str = "local";
