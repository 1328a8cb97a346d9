//! The list of checks, running them by name, and the report of a run.

use std::fmt;
use std::time::{Duration, Instant};

use runner_core::RunnerAdapter;

use crate::checks::*;
use crate::durability::*;
use crate::fixture::Fixture;
use crate::support::{ContractFailure, Outcome, fail};

/// A check's name and whether it applies to an adapter with some capabilities.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The check's (and its function's) name.
    pub name: &'static str,
    /// What it shows.
    pub description: &'static str,
}

/// Every check, in the order [`run_all`] runs them.
pub const CHECKS: &[Check] = &[
    Check {
        name: "full_lifecycle",
        description: "provision, a passing run, logs collected, teardown, nothing left",
    },
    Check {
        name: "teardown_after_failed_run",
        description: "a failing test is a result; artifacts and teardown still work",
    },
    Check {
        name: "teardown_released_handle",
        description: "a second teardown succeeds (idempotent) or fails cleanly",
    },
    Check {
        name: "handle_survives_serialization",
        description: "a handle read back from JSON runs and tears down",
    },
    Check {
        name: "cancellation_ends_run",
        description: "cancelling mid-run ends the phase within the bound",
    },
    Check {
        name: "invalid_spec_is_permanent",
        description: "an invalid bench is a permanent invalid_spec error naming the field",
    },
    Check {
        name: "artifacts_are_safe_and_hashed",
        description: "artifact names stay inside; size and sha256 match the bytes",
    },
    Check {
        name: "errors_carry_ids",
        description: "every error carries the context's ids; foreign handles are errors",
    },
    Check {
        name: "artifacts_survive_teardown",
        description: "local artifacts are readable, with their sha256, after teardown",
    },
    Check {
        name: "provision_is_idempotent",
        description: "provisioning twice with one execution key returns the same handle",
    },
    Check {
        name: "collect_is_repeatable",
        description: "collecting twice gives the same bundle",
    },
    Check {
        name: "secret_across_chunks_is_redacted",
        description: "a secret across a chunk boundary is in no log line and no artifact",
    },
    Check {
        name: "memory_stays_bounded",
        description: "a huge line and a huge artifact keep peak RSS growth under a bound",
    },
];

/// Run one check by name.
pub async fn run_check(
    name: &str,
    adapter: &dyn RunnerAdapter,
    fixture: &Fixture,
) -> Option<Outcome> {
    Some(match name {
        "full_lifecycle" => full_lifecycle(adapter, fixture).await,
        "teardown_after_failed_run" => teardown_after_failed_run(adapter, fixture).await,
        "teardown_released_handle" => teardown_released_handle(adapter, fixture).await,
        "handle_survives_serialization" => handle_survives_serialization(adapter, fixture).await,
        "cancellation_ends_run" => cancellation_ends_run(adapter, fixture).await,
        "invalid_spec_is_permanent" => invalid_spec_is_permanent(adapter, fixture).await,
        "artifacts_are_safe_and_hashed" => artifacts_are_safe_and_hashed(adapter, fixture).await,
        "errors_carry_ids" => errors_carry_ids(adapter, fixture).await,
        "artifacts_survive_teardown" => artifacts_survive_teardown(adapter, fixture).await,
        "provision_is_idempotent" => provision_is_idempotent(adapter, fixture).await,
        "collect_is_repeatable" => collect_is_repeatable(adapter, fixture).await,
        "secret_across_chunks_is_redacted" => {
            secret_across_chunks_is_redacted(adapter, fixture).await
        }
        "memory_stays_bounded" => memory_stays_bounded(adapter, fixture).await,
        _ => return None,
    })
}

/// The outcome of every check on one adapter.
#[derive(Debug)]
pub struct Report {
    /// The adapter's runner type.
    pub runner_type: String,
    /// Each check's name, outcome and wall time.
    pub outcomes: Vec<(&'static str, Outcome, Duration)>,
}

impl Report {
    /// Whether every check held.
    pub fn is_ok(&self) -> bool {
        self.outcomes.iter().all(|(_, o, _)| o.is_ok())
    }

    /// The failures.
    pub fn failures(&self) -> Vec<&ContractFailure> {
        self.outcomes
            .iter()
            .filter_map(|(_, o, _)| o.as_ref().err())
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "contract suite on `{}`:", self.runner_type)?;
        for (name, outcome, took) in &self.outcomes {
            match outcome {
                Ok(()) => writeln!(f, "  ok    {name} ({} ms)", took.as_millis())?,
                Err(e) => writeln!(f, "  FAIL  {name}: {}", e.message)?,
            }
        }
        Ok(())
    }
}

/// Run every check in [`CHECKS`] against `adapter`.
pub async fn run_all(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Report {
    let mut outcomes = Vec::new();
    for check in CHECKS {
        let started = Instant::now();
        let outcome = run_check(check.name, adapter, fixture)
            .await
            .unwrap_or_else(|| Err(fail("run_all", format!("unknown check {}", check.name))));
        outcomes.push((check.name, outcome, started.elapsed()));
    }
    Report {
        runner_type: adapter.runner_type().to_owned(),
        outcomes,
    }
}
