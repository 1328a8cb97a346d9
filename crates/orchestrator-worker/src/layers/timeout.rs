//! Per-phase time limits that cancel the backend before giving up on it.

use std::future::Future;
use std::time::Duration;

use runner_core::{CancellationToken, PhaseMarker, RunContext, RunnerError};

/// Run `fut` for at most `limit` (or until the context's deadline, if
/// earlier). On expiry, fire `token` so the backend stops its work, wait up
/// to `grace` for it to return, then end with a `timeout` error either way.
pub async fn with_timeout<P: PhaseMarker, T>(
    limit: Duration,
    grace: Duration,
    ctx: &RunContext,
    token: CancellationToken,
    fut: impl Future<Output = Result<T, RunnerError<P>>>,
) -> Result<T, RunnerError<P>> {
    let limit = ctx.remaining().map_or(limit, |left| left.min(limit));
    tokio::pin!(fut);
    match tokio::time::timeout(limit, &mut fut).await {
        Ok(result) => result,
        Err(_) => {
            token.cancel();
            // The backend's own cleanup (killing processes, cancelling remote
            // commands) runs in this grace; its result no longer counts.
            let _ = tokio::time::timeout(grace, &mut fut).await;
            Err(RunnerError::timeout(
                ctx,
                format!("{} exceeded its limit of {:.1?}", P::PHASE, limit),
            ))
        }
    }
}
