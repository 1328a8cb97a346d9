//! The per-call context: ids, attempt, deadline, cancellation and the live log sink.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::redact::Redactor;

/// Which stream a live log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// The test's standard output.
    Stdout,
    /// The test's standard error.
    Stderr,
    /// A message from the backend itself (queue position, pod phase, ...).
    System,
}

/// One line of live output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Where it came from.
    pub stream: LogStream,
    /// The text, without its line ending, at most [`LogSink::MAX_LINE_BYTES`] long.
    pub text: String,
}

/// Where a backend sends live log lines.
///
/// The channel behind it is bounded: when the consumer is slow, `send` waits,
/// so the producer slows down instead of memory growing. Lines longer than
/// [`LogSink::MAX_LINE_BYTES`] are cut. Secret values registered on the sink
/// are replaced by `***` before a line leaves it. A sink whose consumer went
/// away drops lines silently: live logs are best effort, the log artifacts are
/// the record.
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    tx: Option<mpsc::Sender<LogBatch>>,
    redactor: Redactor,
}

/// The consuming end of a [`LogSink`].
#[derive(Debug)]
pub struct LogReceiver {
    rx: mpsc::Receiver<LogBatch>,
    /// What is left of a batch `recv` has started on.
    pending: Option<(LogBatch, usize)>,
}

/// Lines gathered to cross the channel in one message: at most
/// [`LogSink::BATCH_LINES`] lines or about [`LogSink::BATCH_BYTES`] of text.
/// The text of every line lives in one buffer, so a fast producer pays one
/// allocation and one hand-off per batch, not per line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogBatch {
    text: String,
    /// Each line's stream and the end of its text in `text` (the start is
    /// the previous line's end).
    ends: Vec<(LogStream, usize)>,
}

impl LogBatch {
    /// Whether the batch reached [`LogSink::BATCH_LINES`] lines or
    /// [`LogSink::BATCH_BYTES`] bytes and should be sent.
    pub fn is_full(&self) -> bool {
        self.ends.len() >= LogSink::BATCH_LINES || self.text.len() >= LogSink::BATCH_BYTES
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// How many lines it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Its lines in order, borrowed: stream and text.
    pub fn iter(&self) -> impl Iterator<Item = (LogStream, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(stream, end)| {
            let text = self.text.get(start..end).unwrap_or_default();
            start = end;
            (stream, text)
        })
    }

    /// Line `index`, owned.
    fn line(&self, index: usize) -> Option<LogLine> {
        let &(stream, end) = self.ends.get(index)?;
        let start = index
            .checked_sub(1)
            .and_then(|i| self.ends.get(i))
            .map_or(0, |&(_, e)| e);
        Some(LogLine {
            stream,
            text: self.text.get(start..end).unwrap_or_default().to_owned(),
        })
    }

    fn push_prepared(&mut self, stream: LogStream, text: &str) {
        self.text.push_str(text);
        self.ends.push((stream, self.text.len()));
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }
}

impl LogSink {
    /// The longest line a sink passes on; longer lines are cut at a char boundary.
    pub const MAX_LINE_BYTES: usize = 16 * 1024;

    /// The most lines one batch carries. Producers also send a batch at the
    /// end of each read, so a batch holds at most one read's worth of output.
    pub const BATCH_LINES: usize = 1024;

    /// About the most text one batch carries (a batch reaching it is full;
    /// the line that crossed it may add up to [`LogSink::MAX_LINE_BYTES`]).
    pub const BATCH_BYTES: usize = 64 * 1024;

    /// Lines of channel capacity per batch slot: [`LogSink::channel`] of
    /// `capacity` holds `capacity / SLOT_LINES` batches, so producers that
    /// send single lines get as many slots as before batches grew.
    pub const SLOT_LINES: usize = 64;

    /// The fewest batches a channel holds, so a few single-line messages
    /// (a status line beside a batch of output) never block each other.
    pub const MIN_SLOTS: usize = 4;

    /// A sink and its receiver, holding `capacity / SLOT_LINES` batches in
    /// between (at least [`LogSink::MIN_SLOTS`]); memory stays bounded by
    /// that many full batches.
    pub fn channel(capacity: usize) -> (LogSink, LogReceiver) {
        let batches = capacity.div_ceil(Self::SLOT_LINES).max(Self::MIN_SLOTS);
        let (tx, rx) = mpsc::channel(batches);
        (
            LogSink {
                tx: Some(tx),
                redactor: Redactor::default(),
            },
            LogReceiver { rx, pending: None },
        )
    }

    /// Add a line to `batch`, redacted and cut like a sent line.
    pub fn push(&self, batch: &mut LogBatch, stream: LogStream, text: &str) {
        if self.tx.is_some() {
            self.prepare_into(batch, stream, text);
        }
    }

    /// Send a batch, waiting while the consumer is behind.
    pub async fn send_batch(&self, batch: &mut LogBatch) {
        if let Some(tx) = &self.tx
            && !batch.is_empty()
        {
            let _ = tx.send(std::mem::take(batch)).await;
        }
        batch.clear();
    }

    /// Send a batch from a blocking thread (never from async code).
    pub fn blocking_send_batch(&self, batch: &mut LogBatch) {
        if let Some(tx) = &self.tx
            && !batch.is_empty()
        {
            let _ = tx.blocking_send(std::mem::take(batch));
        }
        batch.clear();
    }

    /// A sink that drops everything.
    pub fn discard() -> LogSink {
        LogSink::default()
    }

    /// This sink, also redacting the values `redactor` knows.
    pub fn with_redactor(mut self, redactor: Redactor) -> LogSink {
        self.redactor = redactor;
        self
    }

    /// The redactor this sink applies; backends use it for their log files too.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Send one line, waiting while the consumer is behind.
    pub async fn send(&self, stream: LogStream, text: &str) {
        if let Some(tx) = &self.tx {
            // A closed receiver means nobody is watching live; that is not an error.
            let _ = tx.send(self.single(stream, text)).await;
        }
    }

    /// Send one line from a thread outside the async runtime (a blocking
    /// reader), waiting while the consumer is behind. Must not be called
    /// from async code.
    pub fn blocking_send(&self, stream: LogStream, text: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.blocking_send(self.single(stream, text));
        }
    }

    /// Send one line without waiting; drops it when the buffer is full.
    /// Returns whether the line was queued.
    pub fn try_send(&self, stream: LogStream, text: &str) -> bool {
        match &self.tx {
            Some(tx) => tx.try_send(self.single(stream, text)).is_ok(),
            None => false,
        }
    }

    fn single(&self, stream: LogStream, text: &str) -> LogBatch {
        let mut batch = LogBatch::default();
        self.prepare_into(&mut batch, stream, text);
        batch
    }

    fn prepare_into(&self, batch: &mut LogBatch, stream: LogStream, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        let redacted = self.redactor.redact(text);
        let end = redacted.floor_char_boundary(Self::MAX_LINE_BYTES);
        batch.push_prepared(stream, &redacted[..end]);
    }
}

impl LogReceiver {
    /// The next line, or `None` once every sink is dropped.
    pub async fn recv(&mut self) -> Option<LogLine> {
        loop {
            if let Some((batch, next)) = &mut self.pending {
                if let Some(line) = batch.line(*next) {
                    *next += 1;
                    return Some(line);
                }
                self.pending = None;
            }
            self.pending = Some((self.rx.recv().await?, 0));
        }
    }

    /// The next batch of lines as the producer sent it (what is left of
    /// one `recv` has started on comes first), or `None` once every sink is
    /// dropped. Consumers of heavy output read batches: no allocation per
    /// line.
    pub async fn recv_batch(&mut self) -> Option<LogBatch> {
        if let Some(rest) = self.take_pending() {
            return Some(rest);
        }
        self.rx.recv().await
    }

    fn take_pending(&mut self) -> Option<LogBatch> {
        let (batch, next) = self.pending.take()?;
        if next == 0 {
            return Some(batch);
        }
        let mut rest = LogBatch::default();
        for (stream, text) in batch.iter().skip(next) {
            rest.push_prepared(stream, text);
        }
        (!rest.is_empty()).then_some(rest)
    }

    /// Drain everything queued now, without waiting.
    pub fn drain_now(&mut self) -> Vec<LogLine> {
        let mut out = Vec::new();
        let mut take = |batch: &LogBatch| {
            out.extend(batch.iter().map(|(stream, text)| LogLine {
                stream,
                text: text.to_owned(),
            }));
        };
        if let Some(rest) = self.take_pending() {
            take(&rest);
        }
        while let Ok(batch) = self.rx.try_recv() {
            take(&batch);
        }
        out
    }
}

/// What every phase call receives: who is running, until when, and where logs go.
///
/// Cloning is cheap; clones share the cancellation token and the sink.
#[derive(Debug, Clone)]
pub struct RunContext {
    correlation_id: String,
    execution_id: String,
    execution_key: String,
    worker_id: String,
    attempt: u32,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    logs: LogSink,
}

impl RunContext {
    /// A context for attempt 1 of `execution_id`, with no deadline and a discarding sink.
    /// The execution key defaults to the execution id.
    pub fn new(execution_id: impl Into<String>, correlation_id: impl Into<String>) -> Self {
        let execution_id = execution_id.into();
        Self {
            correlation_id: correlation_id.into(),
            execution_key: execution_id.clone(),
            execution_id,
            worker_id: String::new(),
            attempt: 1,
            deadline: None,
            cancel: CancellationToken::new(),
            logs: LogSink::discard(),
        }
    }

    /// Set the execution key: the idempotency key that stays the same across
    /// redeliveries and retries of one task, so a backend never provisions twice.
    pub fn with_execution_key(mut self, key: impl Into<String>) -> Self {
        self.execution_key = key.into();
        self
    }

    /// Set the id of the worker running this execution. Backends tag every
    /// resource they make with it, so a fleet's reaper can tell a live
    /// worker's resources from a dead one's.
    pub fn with_worker(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = worker_id.into();
        self
    }

    /// Set the attempt number (1-based).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Set an absolute deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Set the deadline `timeout` from now, keeping an earlier existing deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        let new = Instant::now() + timeout;
        self.deadline = Some(match self.deadline {
            Some(old) if old < new => old,
            _ => new,
        });
        self
    }

    /// Use this cancellation token.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// A context whose token is a child of this one's: cancelling the child
    /// does not cancel the parent, cancelling the parent cancels the child.
    pub fn child(&self) -> Self {
        let mut child = self.clone();
        child.cancel = self.cancel.child_token();
        child
    }

    /// Use this log sink.
    pub fn with_log_sink(mut self, logs: LogSink) -> Self {
        self.logs = logs;
        self
    }

    /// The correlation id (ties an execution to a CI pipeline, a request...).
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The id of this execution attempt set.
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// The idempotency key of the task.
    pub fn execution_key(&self) -> &str {
        &self.execution_key
    }

    /// The worker running this execution; empty when not run by a worker
    /// (`orchestrator run` sets its own id, tests may leave it empty).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The attempt number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the current phase must end, if bounded.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline; `None` when unbounded.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The cancellation token; backends select on `cancelled()` in long waits.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The live log sink.
    pub fn logs(&self) -> &LogSink {
        &self.logs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_sink_applies_backpressure_and_bounds_memory() {
        // Four batch slots; single lines take one slot each.
        let (sink, mut rx) = LogSink::channel(LogSink::MIN_SLOTS * LogSink::SLOT_LINES);
        for i in 0..4 {
            assert!(sink.try_send(LogStream::Stdout, &format!("line {i}")));
        }
        // The fifth does not fit: a bounded buffer refuses instead of growing.
        assert!(!sink.try_send(LogStream::Stdout, "overflow"));
        let producer = tokio::spawn({
            let sink = sink.clone();
            async move { sink.send(LogStream::Stdout, "waits").await }
        });
        let first = rx.recv().await.map(|l| l.text);
        assert_eq!(first.as_deref(), Some("line 0"));
        producer.await.ok();
        let rest: Vec<_> = rx.drain_now().into_iter().map(|l| l.text).collect();
        assert_eq!(rest, vec!["line 1", "line 2", "line 3", "waits"]);
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_secrets_redacted() {
        let (sink, mut rx) = LogSink::channel(2 * LogSink::SLOT_LINES);
        let sink = sink.with_redactor(Redactor::new(["hunter2"]));
        sink.send(LogStream::Stderr, "password=hunter2\n").await;
        sink.send(LogStream::Stdout, &"é".repeat(LogSink::MAX_LINE_BYTES))
            .await;
        let lines = rx.drain_now();
        assert_eq!(lines[0].text, "password=***");
        assert!(lines[1].text.len() <= LogSink::MAX_LINE_BYTES);
    }

    #[tokio::test]
    async fn batches_arrive_as_lines_in_order() {
        let (sink, mut rx) = LogSink::channel(128);
        let mut batch = LogBatch::default();
        for i in 0..LogSink::BATCH_LINES {
            sink.push(&mut batch, LogStream::Stdout, &format!("{i}"));
        }
        assert!(batch.is_full());
        sink.send_batch(&mut batch).await;
        assert!(batch.is_empty());
        sink.send(LogStream::Stderr, "after").await;
        let lines = rx.drain_now();
        assert_eq!(lines.len(), LogSink::BATCH_LINES + 1);
        assert_eq!(lines[0].text, "0");
        assert_eq!(lines[LogSink::BATCH_LINES].text, "after");
    }

    #[tokio::test]
    async fn a_batch_is_full_by_bytes_and_reads_back_whole_or_by_line() {
        let (sink, mut rx) = LogSink::channel(LogSink::SLOT_LINES);
        let mut batch = LogBatch::default();
        let line = "y".repeat(1000);
        let mut pushed = 0;
        while !batch.is_full() {
            let stream = if pushed % 2 == 0 {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            };
            sink.push(&mut batch, stream, &format!("{pushed} {line}\r\n"));
            pushed += 1;
        }
        // Full by its text, long before the line count.
        assert!(batch.len() < LogSink::BATCH_LINES);
        assert_eq!(batch.len(), pushed);
        sink.send_batch(&mut batch).await;
        sink.send(LogStream::System, "next").await;
        // One line by `recv`, the rest of that batch by `recv_batch`.
        let first = rx.recv().await.unwrap();
        assert_eq!(first.stream, LogStream::Stdout);
        assert_eq!(first.text, format!("0 {line}"));
        let rest = rx.recv_batch().await.unwrap();
        assert_eq!(rest.len(), pushed - 1);
        let (stream, text) = rest.iter().next().unwrap();
        assert_eq!(stream, LogStream::Stderr);
        assert_eq!(text, format!("1 {line}"));
        assert!(rest.iter().all(|(_, t)| t.ends_with('y')));
        let next = rx.recv_batch().await.unwrap();
        assert_eq!(
            next.iter().collect::<Vec<_>>(),
            [(LogStream::System, "next")]
        );
        drop(sink);
        assert!(rx.recv_batch().await.is_none());
    }

    #[test]
    fn with_timeout_keeps_the_earlier_deadline() {
        let ctx = RunContext::new("e", "c").with_timeout(Duration::from_secs(1));
        let first = ctx.deadline();
        let ctx = ctx.with_timeout(Duration::from_secs(100));
        assert_eq!(ctx.deadline(), first);
    }

    #[test]
    fn child_cancellation_does_not_reach_parent() {
        let parent = RunContext::new("e", "c");
        let child = parent.child();
        child.cancel_token().cancel();
        assert!(child.is_cancelled());
        assert!(!parent.is_cancelled());
        parent.cancel_token().cancel();
        assert!(parent.child().is_cancelled());
    }
}
