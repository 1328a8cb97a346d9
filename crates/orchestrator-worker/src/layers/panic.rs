//! A panic inside a backend becomes a permanent error of its phase.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use runner_core::{PhaseMarker, RunContext, RunnerError};

use super::Around;

/// The message prefix of an error made from a panic; the engine looks for it.
pub const PANIC_PREFIX: &str = "the backend panicked";

/// Turns a panic in the backend into a permanent error.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicGuard;

impl Around for PanicGuard {
    fn around<P, T, F, Fut>(
        &self,
        ctx: &RunContext,
        call: F,
    ) -> impl Future<Output = Result<T, RunnerError<P>>> + Send
    where
        P: PhaseMarker,
        T: Send + 'static,
        F: FnOnce(RunContext) -> Fut + Send,
        Fut: Future<Output = Result<T, RunnerError<P>>> + Send,
    {
        let ctx = ctx.clone();
        async move {
            match AssertUnwindSafe(call(ctx.clone())).catch_unwind().await {
                Ok(result) => result,
                Err(payload) => {
                    let detail = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    Err(RunnerError::permanent(
                        &ctx,
                        format!("{PANIC_PREFIX} in {}: {detail}", P::NAME),
                    ))
                }
            }
        }
    }
}

/// Whether an error was made from a panic.
pub fn is_panic<P: PhaseMarker>(err: &RunnerError<P>) -> bool {
    err.message().starts_with(PANIC_PREFIX)
}
