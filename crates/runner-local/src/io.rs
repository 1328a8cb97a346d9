//! I/O errors as runner errors, for every phase.

use runner_core::phase::PhaseMarker;
use runner_core::{RunContext, RunnerError};

/// An I/O error as a runner error: a permission problem is permanent,
/// anything else may pass.
pub(crate) fn io_error<P: PhaseMarker>(
    ctx: &RunContext,
    what: &str,
    err: std::io::Error,
) -> RunnerError<P> {
    let message = format!("{what}: {err}");
    match err.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            RunnerError::permanent(ctx, message)
        }
        _ => RunnerError::transient(ctx, message),
    }
}
