#![doc = include_str!("../README.md")]

mod model;
mod server;

pub use model::{BenchConfig, Health, Malformed, SimConfig};
pub use server::{SimHandle, router, serve};
