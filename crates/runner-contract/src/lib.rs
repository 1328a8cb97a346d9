#![doc = include_str!("../README.md")]
// Public API: every public item documented (`cargo xtask ci` runs rustdoc
// with `-D warnings`, as well as clippy).
#![warn(missing_docs)]

mod checks;
mod durability;
mod fixture;
mod report;
pub mod scripts;
mod support;

pub use checks::{
    artifacts_are_safe_and_hashed, cancellation_ends_run, errors_carry_ids, full_lifecycle,
    handle_survives_serialization, invalid_spec_is_permanent, teardown_after_failed_run,
    teardown_released_handle,
};
pub use durability::{
    MemoryFigures, artifacts_survive_teardown, collect_is_repeatable, measure_memory,
    memory_stays_bounded, peak_rss_kib, provision_is_idempotent, secret_across_chunks_is_redacted,
};
pub use fixture::{BigCase, Fixture, SecretCase, with_secret_env};
pub use report::{CHECKS, Check, Report, run_all, run_check};
pub use support::{ContractFailure, Outcome};

/// Generate one `#[tokio::test]` per contract check for an adapter.
///
/// `adapter` is an expression evaluated afresh for each test; `fixture` too.
/// Backends that need per-test services use `setup = <future>` instead of
/// `adapter`: the future yields `(adapter, guard)` and the guard lives until
/// the test ends (an emulator it started, say).
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
/// dev-dependency.
#[macro_export]
macro_rules! contract_tests {
    (adapter = $adapter:expr, fixture = $fixture:expr $(,)?) => {
        $crate::contract_tests!(setup = async { ($adapter, ()) }, fixture = $fixture);
    };
    (setup = $setup:expr, fixture = $fixture:expr $(,)?) => {
        $crate::contract_tests!(@each $setup, $fixture;
            full_lifecycle,
            teardown_after_failed_run,
            teardown_released_handle,
            handle_survives_serialization,
            cancellation_ends_run,
            invalid_spec_is_permanent,
            artifacts_are_safe_and_hashed,
            errors_carry_ids,
            artifacts_survive_teardown,
            provision_is_idempotent,
            collect_is_repeatable,
            secret_across_chunks_is_redacted,
            memory_stays_bounded,
        );
    };
    (@each $setup:expr, $fixture:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                // The guard keeps per-test services (emulators) alive.
                let (adapter, _guard) = $setup.await;
                let fixture = $fixture;
                if let Err(failure) = $crate::$check(&adapter, &fixture).await {
                    panic!("{failure}");
                }
            }
        )*
    };
}
