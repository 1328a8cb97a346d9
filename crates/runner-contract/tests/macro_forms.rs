//! `contract_tests!` takes a concrete adapter and a pointer to one alike:
//! `Arc<dyn RunnerAdapter>` (what the worker's factory hands out),
//! `Box<dyn RunnerAdapter>` and `Arc<A>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use runner_contract::Fixture;
use runner_core::RunnerAdapter;
use runner_mock::{LocalMockRunner, fixtures};

fn fixture() -> Fixture {
    Fixture::new(
        fixtures::bench(),
        fixtures::invalid_bench(),
        fixtures::INVALID_FIELD,
        fixtures::passing(),
        fixtures::failing(),
        fixtures::long_running(),
    )
}

mod arc_dyn {
    use super::*;

    runner_contract::contract_tests!(
        adapter = Arc::new(LocalMockRunner::in_memory()) as Arc<dyn RunnerAdapter>,
        fixture = fixture(),
    );
}

mod box_dyn {
    use super::*;

    runner_contract::contract_tests!(
        adapter = Box::new(LocalMockRunner::in_memory()) as Box<dyn RunnerAdapter>,
        fixture = fixture(),
    );
}

mod arc_concrete {
    use super::*;

    runner_contract::contract_tests!(
        adapter = Arc::new(LocalMockRunner::in_memory()),
        fixture = fixture(),
    );
}
