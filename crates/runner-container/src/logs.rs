//! The engine's multiplexed log stream as lines: live into the sink, and
//! into capped log files at collection, in bounded memory.

use std::path::Path;

use bollard::container::LogOutput;
use futures::StreamExt;
use runner_core::{LogBatch, LogSink, LogStream, Redactor};
use tokio::io::{AsyncWriteExt, BufWriter};

/// Cuts a byte stream into lines of at most [`LogSink::MAX_LINE_BYTES`],
/// holding at most one partial line.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Feed `bytes`; `emit` gets each complete (or overlong, cut) line
    /// without its newline.
    pub(crate) fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        let max = LogSink::MAX_LINE_BYTES;
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                emit_cut(&bytes[..pos], max, &mut emit);
            } else {
                self.partial.extend_from_slice(&bytes[..pos]);
                emit_cut(&self.partial, max, &mut emit);
                self.partial.clear();
            }
            bytes = &bytes[pos + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= max {
            emit(&self.partial[..max]);
            self.partial.drain(..max);
        }
    }

    /// The last line, when the stream ended without a newline.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

fn emit_cut(line: &[u8], max: usize, emit: &mut impl FnMut(&[u8])) {
    if line.is_empty() {
        emit(line);
    }
    for piece in line.chunks(max) {
        emit(piece);
    }
}

/// A line as text, redacted, without a trailing `\r`.
fn text<'a>(bytes: &'a [u8], redactor: &Redactor) -> std::borrow::Cow<'a, str> {
    let raw = String::from_utf8_lossy(bytes);
    let redacted = match redactor.redact(&raw) {
        std::borrow::Cow::Borrowed(_) => raw,
        std::borrow::Cow::Owned(owned) => std::borrow::Cow::Owned(owned),
    };
    match redacted {
        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.trim_end_matches('\r')),
        std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.trim_end_matches('\r').to_owned()),
    }
}

/// Follows a log stream into the sink, each stream with its own lines.
#[derive(Debug)]
pub(crate) struct LiveLogs {
    stdout: Lines,
    stderr: Lines,
    batch: LogBatch,
    sink: LogSink,
    redactor: Redactor,
    /// Lines seen on stdout and stderr.
    pub(crate) lines: u64,
}

impl LiveLogs {
    pub(crate) fn new(sink: LogSink, redactor: Redactor) -> Self {
        Self {
            stdout: Lines::default(),
            stderr: Lines::default(),
            batch: LogBatch::default(),
            sink,
            redactor,
            lines: 0,
        }
    }

    /// Take one frame of the stream and send what it completed now, so
    /// live output stays live.
    #[cfg(test)]
    pub(crate) async fn frame(&mut self, frame: LogOutput) {
        self.take(frame).await;
        self.flush().await;
    }

    /// Take one frame of the stream; its complete lines join the batch
    /// (a full batch is sent at once). Podman frames each line, so the
    /// caller takes every frame already there before it [`Self::flush`]es.
    pub(crate) async fn take(&mut self, frame: LogOutput) {
        let (lines, stream, bytes) = match &frame {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (&mut self.stdout, LogStream::Stdout, message)
            }
            LogOutput::StdErr { message } => (&mut self.stderr, LogStream::Stderr, message),
            LogOutput::StdIn { .. } => return,
        };
        let (sink, batch, redactor, count) =
            (&self.sink, &mut self.batch, &self.redactor, &mut self.lines);
        let mut full = Vec::new();
        lines.push(bytes, |line| {
            *count += 1;
            sink.push(batch, stream, &text(line, redactor));
            if batch.is_full() {
                full.push(std::mem::take(batch));
            }
        });
        for mut batch in full {
            self.sink.send_batch(&mut batch).await;
        }
    }

    /// Send the lines gathered so far.
    pub(crate) async fn flush(&mut self) {
        self.sink.send_batch(&mut self.batch).await;
    }

    /// Flush partial lines at the end of the stream.
    pub(crate) async fn finish(&mut self) {
        let (sink, batch, redactor) = (&self.sink, &mut self.batch, &self.redactor);
        self.stdout.finish(|line| {
            sink.push(batch, LogStream::Stdout, &text(line, redactor));
        });
        self.stderr.finish(|line| {
            sink.push(batch, LogStream::Stderr, &text(line, redactor));
        });
        self.sink.send_batch(&mut self.batch).await;
    }
}

/// A log file that stops growing at a limit and says so once.
struct CappedLog {
    out: BufWriter<tokio::fs::File>,
    lines: Lines,
    written: u64,
    limit: u64,
    capped: bool,
}

impl CappedLog {
    async fn create(path: &Path, limit: u64) -> std::io::Result<Self> {
        // A new file, never a truncated old one: a reader may hold the old.
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, tokio::fs::File::create(path).await?),
            lines: Lines::default(),
            written: 0,
            limit,
            capped: false,
        })
    }

    async fn write(&mut self, bytes: &[u8], redactor: &Redactor) -> std::io::Result<()> {
        let mut pending: Vec<String> = Vec::new();
        self.lines.push(bytes, |line| {
            pending.push(text(line, redactor).into_owned());
        });
        for line in pending {
            self.line(&line).await?;
        }
        Ok(())
    }

    async fn line(&mut self, line: &str) -> std::io::Result<()> {
        if self.capped {
            return Ok(());
        }
        let len = line.len() as u64 + 1;
        if self.written + len > self.limit {
            self.capped = true;
            let marker = format!("[log truncated at {} bytes]\n", self.written);
            return self.out.write_all(marker.as_bytes()).await;
        }
        self.written += len;
        self.out.write_all(line.as_bytes()).await?;
        self.out.write_all(b"\n").await
    }

    async fn finish(mut self, redactor: &Redactor) -> std::io::Result<()> {
        let mut last = None;
        self.lines
            .finish(|line| last = Some(text(line, redactor).into_owned()));
        if let Some(line) = last {
            self.line(&line).await?;
        }
        self.out.flush().await
    }
}

/// Write a finished container's whole log to `stdout` and `stderr` files,
/// redacted, each capped at `limit` bytes.
pub(crate) async fn write_files<S>(
    mut stream: S,
    stdout: &Path,
    stderr: &Path,
    limit: u64,
    redactor: &Redactor,
) -> Result<(), LogFileError>
where
    S: futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
{
    let mut out = CappedLog::create(stdout, limit)
        .await
        .map_err(LogFileError::Io)?;
    let mut err = CappedLog::create(stderr, limit)
        .await
        .map_err(LogFileError::Io)?;
    while let Some(frame) = stream.next().await {
        match frame.map_err(LogFileError::Engine)? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                out.write(&message, redactor)
                    .await
                    .map_err(LogFileError::Io)?;
            }
            LogOutput::StdErr { message } => {
                err.write(&message, redactor)
                    .await
                    .map_err(LogFileError::Io)?;
            }
            LogOutput::StdIn { .. } => {}
        }
    }
    out.finish(redactor).await.map_err(LogFileError::Io)?;
    err.finish(redactor).await.map_err(LogFileError::Io)
}

/// Why the log files could not be written.
#[derive(Debug)]
pub(crate) enum LogFileError {
    /// The engine's stream failed.
    Engine(bollard::errors::Error),
    /// The local file did.
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_join_and_cut() {
        let mut lines = Lines::default();
        let mut out: Vec<Vec<u8>> = Vec::new();
        lines.push(b"a\nb", |l| out.push(l.to_vec()));
        lines.push(b"c\n\nd", |l| out.push(l.to_vec()));
        let long = vec![b'x'; LogSink::MAX_LINE_BYTES + 3];
        lines.push(b"\n", |l| out.push(l.to_vec()));
        lines.push(&long, |l| out.push(l.to_vec()));
        lines.finish(|l| out.push(l.to_vec()));
        assert_eq!(out[0], b"a");
        assert_eq!(out[1], b"bc");
        assert_eq!(out[2], b"");
        assert_eq!(out[3], b"d");
        assert_eq!(out[4].len(), LogSink::MAX_LINE_BYTES);
        assert_eq!(out[5], b"xxx");
    }

    #[tokio::test]
    async fn live_logs_keep_streams_apart_and_redact() {
        let (sink, mut rx) = LogSink::channel(256);
        let mut live = LiveLogs::new(sink, Redactor::new(["s3cret"]));
        live.frame(LogOutput::StdOut {
            message: "out 1\nout ".into(),
        })
        .await;
        live.frame(LogOutput::StdErr {
            message: "err s3cret\r\n".into(),
        })
        .await;
        live.frame(LogOutput::StdOut {
            message: "2\n".into(),
        })
        .await;
        live.finish().await;
        let lines: Vec<_> = rx
            .drain_now()
            .into_iter()
            .map(|l| (l.stream, l.text))
            .collect();
        assert_eq!(
            lines,
            [
                (LogStream::Stdout, "out 1".to_string()),
                (LogStream::Stderr, "err ***".to_string()),
                (LogStream::Stdout, "out 2".to_string()),
            ]
        );
    }
}
