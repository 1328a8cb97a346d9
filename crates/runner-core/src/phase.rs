//! The four lifecycle phases, as values and as type-level markers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One of the four phases of an execution's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Acquire an execution environment.
    Provision,
    /// Run the test payload in it.
    RunTest,
    /// Gather logs and files the run produced.
    CollectArtifacts,
    /// Release the environment.
    Teardown,
}

impl Phase {
    /// All phases, in lifecycle order.
    pub const ALL: [Phase; 4] = [
        Phase::Provision,
        Phase::RunTest,
        Phase::CollectArtifacts,
        Phase::Teardown,
    ];

    /// The snake_case name used in logs, metrics and span names.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provision => "provision",
            Phase::RunTest => "run_test",
            Phase::CollectArtifacts => "collect_artifacts",
            Phase::Teardown => "teardown",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Type-level marker that ties an error type to its phase.
pub trait PhaseMarker: Send + Sync + 'static {
    /// The phase this marker stands for.
    const PHASE: Phase;
}

macro_rules! marker {
    ($(#[$doc:meta])* $name:ident => $phase:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name;
        impl PhaseMarker for $name {
            const PHASE: Phase = $phase;
        }
    };
}

marker!(
    /// Marker for [`Phase::Provision`].
    ProvisionPhase => Phase::Provision
);
marker!(
    /// Marker for [`Phase::RunTest`].
    RunTestPhase => Phase::RunTest
);
marker!(
    /// Marker for [`Phase::CollectArtifacts`].
    CollectArtifactsPhase => Phase::CollectArtifacts
);
marker!(
    /// Marker for [`Phase::Teardown`].
    TeardownPhase => Phase::Teardown
);
