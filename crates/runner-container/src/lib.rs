#![doc = include_str!("../README.md")]

mod adapter;
mod archive;
pub mod client;
pub mod config;
mod logs;
mod register;

pub use adapter::ContainerRunner;
pub use config::{ContainerBench, ContainerConfig, PullPolicy, Sandbox};
pub use register::register;

/// The runner type name this crate registers.
pub const RUNNER_TYPE: &str = "container";
