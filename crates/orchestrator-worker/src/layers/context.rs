//! Attach the backend's name to every error, once.

use std::future::Future;

use runner_core::{PhaseMarker, RunContext, RunnerError};

use super::Around;

/// Names the backend on every error that does not name one yet.
#[derive(Debug, Clone)]
pub struct ErrorContext {
    backend: String,
}

impl ErrorContext {
    /// For `backend`.
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
        }
    }
}

impl Around for ErrorContext {
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
        let fut = call(ctx.clone());
        async move {
            fut.await.map_err(|e| match e.backend() {
                Some(_) => e,
                None => e.with_backend(&self.backend),
            })
        }
    }
}
