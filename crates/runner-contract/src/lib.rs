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
/// The adapter is either a concrete type implementing
/// [`RunnerAdapter`](runner_core::RunnerAdapter) (the bare backend) or any
/// pointer to one, `Arc<dyn RunnerAdapter>` included: what the worker's
/// factory hands out, with its time limits, panic guard and error context
/// around the backend. Test both (see `docs/adapters/writing-a-backend.md`).
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
                #[allow(unused_imports)]
                use $crate::__private::{ByPointer as _, ByValue as _};
                let subject = (&$crate::__private::Subject(&adapter)).adapter();
                if let Err(failure) = $crate::$check(subject, &fixture).await {
                    panic!("{failure}");
                }
            }
        )*
    };
}

/// What [`contract_tests!`] uses to take a concrete adapter and a pointer
/// to one alike (method resolution tries the pointer form first); not
/// part of the API.
#[doc(hidden)]
pub mod __private {
    use std::ops::Deref;

    use runner_core::RunnerAdapter;

    /// The adapter expression under test, borrowed.
    pub struct Subject<'a, T>(pub &'a T);

    /// A pointer to an adapter (`Arc<dyn RunnerAdapter>`, `Box<...>`, `&A`).
    pub trait ByPointer<'a> {
        /// The adapter it points at.
        fn adapter(self) -> &'a dyn RunnerAdapter;
    }

    impl<'a, P> ByPointer<'a> for &Subject<'a, P>
    where
        P: Deref,
        P::Target: AsDyn,
    {
        fn adapter(self) -> &'a dyn RunnerAdapter {
            let target: &'a P::Target = self.0;
            // Unsize a concrete target; a `dyn` target is already one.
            target.as_dyn()
        }
    }

    /// An adapter held by value.
    pub trait ByValue<'a> {
        /// The adapter itself.
        fn adapter(self) -> &'a dyn RunnerAdapter;
    }

    impl<'a, A: RunnerAdapter> ByValue<'a> for &&Subject<'a, A> {
        fn adapter(self) -> &'a dyn RunnerAdapter {
            self.0
        }
    }

    /// `&T` to `&dyn RunnerAdapter` for sized and unsized `T`.
    pub trait AsDyn {
        /// The trait object.
        fn as_dyn(&self) -> &dyn RunnerAdapter;
    }

    impl<A: RunnerAdapter> AsDyn for A {
        fn as_dyn(&self) -> &dyn RunnerAdapter {
            self
        }
    }

    impl AsDyn for dyn RunnerAdapter {
        fn as_dyn(&self) -> &dyn RunnerAdapter {
            self
        }
    }
}
