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
    pub const fn as_str(self) -> &'static str {
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
    /// The phase this marker stands for: whose time limit and budget the
    /// call shares.
    const PHASE: Phase;
    /// The name of the call in messages (`teardown failed ...`); the
    /// phase's name unless the call is not a phase of its own
    /// ([`ListOwnedPhase`]).
    const NAME: &'static str = Self::PHASE.as_str();
}

macro_rules! marker {
    ($(#[$doc:meta])* $name:ident => $phase:expr $(, $call:literal)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name;
        impl PhaseMarker for $name {
            const PHASE: Phase = $phase;
            $(const NAME: &'static str = $call;)?
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
marker!(
    /// Marker for `list_owned`: not a lifecycle phase, but bounded by the
    /// teardown limit, so its [`PhaseMarker::PHASE`] is
    /// [`Phase::Teardown`]; its errors are named `list_owned`.
    ListOwnedPhase => Phase::Teardown, "list_owned"
);
