#![doc = include_str!("../README.md")]

mod adapter;
mod artifacts;
pub mod config;
mod io;
mod output;
mod process;
mod register;
mod run;
mod spare;
mod stage;
mod state;

pub use adapter::LocalProcessRunner;
pub use config::{LocalBench, LocalConfig};
pub use register::register;

/// The runner type name this crate registers.
pub const RUNNER_TYPE: &str = "local";
