//! I/O errors as runner errors, for every phase; where file work runs.

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

/// Run `f`, the runner's file-system work, and its result; a panic inside
/// is returned as its message. Work the caller knows is `small` (a few
/// metadata calls on its own records: tens of microseconds) runs right
/// here: a hop to tokio's blocking pool and back cost more than the calls
/// themselves on a busy two-core machine (`orchestrator-bench local`).
/// Anything that may walk a tree the test made, or scan `/proc`, goes to
/// the pool, so a big directory or a slow disk never stalls the runtime.
pub(crate) async fn fs_work<T: Send + 'static>(
    small: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    if small {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(panic_message);
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Ok(value),
        Err(join) if join.is_panic() => Err(panic_message(join.into_panic())),
        Err(join) => Err(join.to_string()),
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(text) => *text,
        Err(panic) => match panic.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "a panic".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn small_work_runs_in_place_and_other_work_on_the_pool() {
        let here = std::thread::current().id();
        let small = fs_work(true, std::thread::current).await.unwrap();
        assert_eq!(small.id(), here);
        let pooled = fs_work(false, std::thread::current).await.unwrap();
        assert_ne!(pooled.id(), here);
    }

    #[tokio::test]
    async fn a_panic_is_returned_as_its_message_either_way() {
        for small in [true, false] {
            let got = fs_work(small, || -> u8 { panic!("disk on fire") }).await;
            assert_eq!(got, Err("disk on fire".to_owned()), "small: {small}");
        }
    }
}
