//! A panic inside a backend becomes a permanent error of its phase.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use runner_core::{PhaseMarker, RunContext, RunnerError};

/// The message prefix of an error made from a panic; the engine looks for it.
pub const PANIC_PREFIX: &str = "the backend panicked";

/// Run `fut`, turning a panic into a permanent error.
pub async fn catch_panic<P, T>(
    ctx: &RunContext,
    fut: impl Future<Output = Result<T, RunnerError<P>>>,
) -> Result<T, RunnerError<P>>
where
    P: PhaseMarker,
{
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(RunnerError::permanent(
                ctx,
                format!("{PANIC_PREFIX} in {}: {detail}", P::PHASE),
            ))
        }
    }
}

/// Whether an error was made from a panic.
pub fn is_panic<P: PhaseMarker>(err: &RunnerError<P>) -> bool {
    err.message().starts_with(PANIC_PREFIX)
}
