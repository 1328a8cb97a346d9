#![doc = include_str!("../README.md")]

mod adapter;
mod archive;
pub mod client;
pub mod config;
mod logs;

pub use adapter::ContainerRunner;
pub use config::{ContainerBench, ContainerConfig, PullPolicy, Sandbox};

/// The runner type name this crate registers.
pub const RUNNER_TYPE: &str = "container";
