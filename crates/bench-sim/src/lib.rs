//! `bench-sim`: a runnable simulator of the bench-platform API
//! (docs/adapters/onprem-api.yaml), for the on-prem runner's tests and for
//! trying the runner without hardware.
//!
//! Benches come from YAML. Everything is in memory. Time moves state on:
//! every request first settles the world (leases expire, queued
//! reservations are allocated, runs finish), so the simulation needs no
//! background task and is deterministic given the request times.
//!
//! A run follows from its request: `SIM_EXIT` (exit code, default 0),
//! `SIM_LINES` (log lines, default 3), `SIM_DURATION_MS` (default 200) and
//! `SIM_ARTIFACTS` (comma-separated names, default `report.xml`) and
//! `SIM_ERROR` (the run ends in state `error` with this message) in its
//! environment; the log lines and artifact bytes are derived from the
//! request's hash.
//!
//! Faults, set in the YAML or at runtime through [`SimHandle`] (or the
//! `/sim/...` admin endpoints): 503 bursts, 429 with Retry-After, slow
//! allocation, a bench going offline mid-run, health checks that fail at
//! allocation (the bench is marked `bad` and skipped), lease expiry (stop
//! heartbeating), and malformed answers (bad JSON, a missing field).

mod model;
mod server;

pub use model::{BenchConfig, Health, Malformed, SimConfig};
pub use server::{SimHandle, router, serve};
