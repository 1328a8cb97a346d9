//! The error taxonomy shared by every phase: one kind enum, one error shape.

use std::error::Error as StdError;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::context::RunContext;
use crate::phase::{
    CollectArtifactsPhase, ListOwnedPhase, Phase, PhaseMarker, ProvisionPhase, RunTestPhase,
    TeardownPhase,
};

/// How a failure should be treated. The backend classifies; the worker decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// A passing fault (network, 5xx, throttling): retrying may succeed.
    Transient,
    /// Retrying the same request will fail the same way (auth, bad request).
    Permanent,
    /// The phase ran out of time. Retryable by default.
    Timeout,
    /// The phase was cancelled (shutdown, user request). Not retried by the adapter.
    Cancelled,
    /// No capacity or quota right now. Retryable, usually after a longer delay.
    Capacity,
    /// The bench spec, payload or config is invalid. Never retryable.
    InvalidSpec,
}

impl ErrorKind {
    /// All kinds, for matrices and docs.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Transient,
        ErrorKind::Permanent,
        ErrorKind::Timeout,
        ErrorKind::Cancelled,
        ErrorKind::Capacity,
        ErrorKind::InvalidSpec,
    ];

    /// Whether an error of this kind may succeed on a later attempt.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Transient | ErrorKind::Timeout | ErrorKind::Capacity
        )
    }

    /// The snake_case name used in metrics and the dead-letter queue.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Capacity => "capacity",
            ErrorKind::InvalidSpec => "invalid_spec",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A failure of one lifecycle phase `P`.
///
/// The message must be safe to log and safe to show on a retry: backends put
/// no credentials, tokens or secret environment values in it. The ids come
/// from the [`RunContext`] the phase was called with, so every error can be
/// traced back to its execution.
pub struct RunnerError<P: PhaseMarker> {
    // Boxed so `Result<T, RunnerError<_>>` stays one pointer wide on the error side.
    inner: Box<Inner>,
    _phase: PhantomData<P>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    field: Option<String>,
    correlation_id: String,
    execution_id: String,
    backend: Option<String>,
    retry_after: Option<Duration>,
    handle_gone: bool,
    handle: Option<crate::handle::RunnerHandle>,
    source: Option<BoxError>,
}

/// Failure to acquire an execution environment.
pub type ProvisionError = RunnerError<ProvisionPhase>;
/// Failure of the infrastructure while running a test (not a failing test).
pub type ExecutionError = RunnerError<RunTestPhase>;
/// Failure to collect the run's artifacts.
pub type ArtifactError = RunnerError<CollectArtifactsPhase>;
/// Failure to release an environment.
pub type TeardownError = RunnerError<TeardownPhase>;
/// Failure to list the resources a backend holds
/// ([`crate::RunnerAdapter::list_owned`]): the same kind, retryability and
/// ids as the phase errors, named `list_owned` in messages.
pub type ListOwnedError = RunnerError<ListOwnedPhase>;

impl<P: PhaseMarker> RunnerError<P> {
    /// A new error of `kind`, carrying the ids of `ctx`.
    pub fn new(kind: ErrorKind, ctx: &RunContext, message: impl Into<String>) -> Self {
        Self::from_ids(kind, ctx.correlation_id(), ctx.execution_id(), message)
    }

    /// A new error from explicit ids, for code that has no context at hand.
    pub fn from_ids(
        kind: ErrorKind,
        correlation_id: impl Into<String>,
        execution_id: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                field: None,
                correlation_id: correlation_id.into(),
                execution_id: execution_id.into(),
                backend: None,
                retry_after: None,
                handle_gone: false,
                handle: None,
                source: None,
            }),
            _phase: PhantomData,
        }
    }

    /// A passing fault; retrying may succeed.
    pub fn transient(ctx: &RunContext, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, ctx, message)
    }

    /// A fault that retrying will not fix.
    pub fn permanent(ctx: &RunContext, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, ctx, message)
    }

    /// The phase ran out of time.
    pub fn timeout(ctx: &RunContext, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, ctx, message)
    }

    /// The phase was cancelled.
    pub fn cancelled(ctx: &RunContext, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, ctx, message)
    }

    /// No capacity or quota right now.
    pub fn capacity(ctx: &RunContext, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Capacity, ctx, message)
    }

    /// The environment behind the handle no longer exists (torn down,
    /// terminated, deleted). Permanent for this handle, but not for the
    /// task: a worker that adopted a journaled handle after a crash ends
    /// that journal entry and provisions afresh.
    pub fn handle_gone(ctx: &RunContext, message: impl Into<String>) -> Self {
        let mut err = Self::new(ErrorKind::Permanent, ctx, message);
        err.inner.handle_gone = true;
        err
    }

    /// An invalid spec; `field` is the dotted path of the offending field.
    pub fn invalid_spec(
        ctx: &RunContext,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let field = field.into();
        let message = format!("invalid field `{field}`: {}", message.into());
        let mut err = Self::new(ErrorKind::InvalidSpec, ctx, message);
        err.inner.field = Some(field);
        err
    }

    /// Attach the underlying cause. Its text must be as safe to log as the message.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Name the backend (set once by the worker's error-context wrapper).
    pub fn with_backend(mut self, backend: impl Into<String>) -> Self {
        self.inner.backend = Some(backend.into());
        self
    }

    /// A delay the remote side asked for before a retry (e.g. `Retry-After`).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.inner.retry_after = Some(delay);
        self
    }

    /// Re-tag this error as a failure of another phase, keeping everything else.
    pub fn into_phase<Q: PhaseMarker>(self) -> RunnerError<Q> {
        RunnerError {
            inner: self.inner,
            _phase: PhantomData,
        }
    }

    /// The phase that failed (for a [`ListOwnedError`], teardown: the
    /// phase whose limit bounds it).
    pub fn phase(&self) -> Phase {
        P::PHASE
    }

    /// The name of the call that failed: the phase's, or `list_owned`.
    pub fn call(&self) -> &'static str {
        P::NAME
    }

    /// The classification the backend gave.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    /// The log-safe message, without ids.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The message and its causes, each once, without the phase prefix or
    /// the ids: what a summary line or a span shows after naming the phase.
    pub fn detail(&self) -> String {
        let mut text = self.inner.message.clone();
        let mut source: Option<&(dyn StdError + 'static)> = self
            .inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static));
        while let Some(cause) = source {
            let part = cause.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            source = cause.source();
        }
        text
    }

    /// For [`ErrorKind::InvalidSpec`]: the dotted path of the bad field.
    pub fn field(&self) -> Option<&str> {
        self.inner.field.as_deref()
    }

    /// The correlation id of the execution that failed.
    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    /// The execution id of the execution that failed.
    pub fn execution_id(&self) -> &str {
        &self.inner.execution_id
    }

    /// The backend that failed, once the error-context wrapper has set it.
    pub fn backend(&self) -> Option<&str> {
        self.inner.backend.as_deref()
    }

    /// A delay the remote side asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Attach a handle to what was made before the failure (a provision
    /// that finished after its time limit, a half-made environment): the
    /// worker journals it and tears it down instead of losing it.
    pub fn with_handle(mut self, handle: crate::handle::RunnerHandle) -> Self {
        self.inner.handle = Some(handle);
        self
    }

    /// The handle of what was made before the failure, if any.
    pub fn handle(&self) -> Option<&crate::handle::RunnerHandle> {
        self.inner.handle.as_ref()
    }

    /// Whether the environment behind the handle is gone (see
    /// [`RunnerError::handle_gone`]).
    pub fn is_handle_gone(&self) -> bool {
        self.inner.handle_gone
    }
}

impl<P: PhaseMarker> fmt::Display for RunnerError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({}): {}",
            P::NAME,
            self.inner.kind,
            self.inner.message
        )?;
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        write!(f, " [")?;
        if let Some(backend) = &self.inner.backend {
            write!(f, "backend={backend} ")?;
        }
        write!(
            f,
            "execution_id={} correlation_id={}]",
            self.inner.execution_id, self.inner.correlation_id
        )
    }
}

impl<P: PhaseMarker> fmt::Debug for RunnerError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerError")
            .field("phase", &P::PHASE)
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("field", &self.inner.field)
            .field("correlation_id", &self.inner.correlation_id)
            .field("execution_id", &self.inner.execution_id)
            .field("backend", &self.inner.backend)
            .field("retry_after", &self.inner.retry_after)
            .field("handle_gone", &self.inner.handle_gone)
            .field("handle", &self.inner.handle.as_ref().map(|h| h.handle_id()))
            .field("source", &self.inner.source)
            .finish()
    }
}

impl<P: PhaseMarker> StdError for RunnerError<P> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_follow_the_taxonomy() {
        let retryable: Vec<_> = ErrorKind::ALL
            .iter()
            .filter(|k| k.is_retryable())
            .copied()
            .collect();
        assert_eq!(
            retryable,
            vec![
                ErrorKind::Transient,
                ErrorKind::Timeout,
                ErrorKind::Capacity
            ]
        );
    }

    #[test]
    fn display_names_phase_kind_and_ids() {
        let ctx = RunContext::new("exec-1", "corr-9");
        let err = ProvisionError::invalid_spec(&ctx, "bench.backend.image", "must not be empty")
            .with_backend("ec2");
        let text = err.to_string();
        assert!(text.contains("provision failed (invalid_spec)"), "{text}");
        assert!(text.contains("bench.backend.image"), "{text}");
        assert!(text.contains("exec-1") && text.contains("corr-9"), "{text}");
        assert_eq!(err.field(), Some("bench.backend.image"));
        let moved: TeardownError = err.into_phase();
        assert_eq!(moved.phase(), Phase::Teardown);
        assert_eq!(moved.backend(), Some("ec2"));
    }

    #[test]
    fn list_owned_errors_are_named_for_their_call() {
        let ctx = RunContext::new("exec-2", "corr-3");
        let err = ListOwnedError::capacity(&ctx, "throttled");
        assert!(err.is_retryable());
        assert_eq!(err.call(), "list_owned");
        let text = err.to_string();
        assert!(
            text.starts_with("list_owned failed (capacity): throttled"),
            "{text}"
        );
        assert!(text.contains("exec-2") && text.contains("corr-3"), "{text}");
        let teardown = TeardownError::permanent(&ctx, "gone");
        assert_eq!(teardown.call(), "teardown");
    }
}
