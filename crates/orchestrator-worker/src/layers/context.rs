//! Attach the backend's name to every error, once.

use std::future::Future;

use runner_core::{PhaseMarker, RunnerError};

/// Run `fut`, naming `backend` on its error.
pub async fn with_backend<P: PhaseMarker, T>(
    backend: &str,
    fut: impl Future<Output = Result<T, RunnerError<P>>>,
) -> Result<T, RunnerError<P>> {
    fut.await.map_err(|e| match e.backend() {
        Some(_) => e,
        None => e.with_backend(backend),
    })
}
