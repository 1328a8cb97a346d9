//! The engine's multiplexed log stream as lines: live into the sink, and
//! into capped log files at collection, in bounded memory. Lines come from
//! the kit's [`LineAssembler`] (cut and marked past 16 KiB, `\r` redraws
//! folded, secrets redacted before the cut).

use std::path::Path;

use bollard::container::LogOutput;
use futures::StreamExt;
use runner_core::kit::LineAssembler;
use runner_core::{LogBatch, LogSink, LogStream, Redactor};
use tokio::io::{AsyncWriteExt, BufWriter};

/// Follows a log stream into the sink, each stream with its own lines.
#[derive(Debug)]
pub(crate) struct LiveLogs {
    stdout: LineAssembler,
    stderr: LineAssembler,
    batch: LogBatch,
    sink: LogSink,
    /// Lines seen on stdout and stderr.
    pub(crate) lines: u64,
}

impl LiveLogs {
    pub(crate) fn new(sink: LogSink, redactor: Redactor) -> Self {
        Self {
            stdout: LineAssembler::new(redactor.clone()),
            stderr: LineAssembler::new(redactor),
            batch: LogBatch::default(),
            sink,
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
        let (sink, batch, count) = (&self.sink, &mut self.batch, &mut self.lines);
        let mut full = Vec::new();
        lines.push(bytes, &mut |line| {
            *count += 1;
            sink.push(batch, stream, line);
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
        let (sink, batch) = (&self.sink, &mut self.batch);
        self.stdout.finish(&mut |line| {
            sink.push(batch, LogStream::Stdout, line);
        });
        self.stderr.finish(&mut |line| {
            sink.push(batch, LogStream::Stderr, line);
        });
        self.sink.send_batch(&mut self.batch).await;
    }
}

/// A log file that stops growing at a limit and says so once.
struct CappedLog {
    out: BufWriter<tokio::fs::File>,
    lines: LineAssembler,
    written: u64,
    limit: u64,
    capped: bool,
}

impl CappedLog {
    async fn create(path: &Path, limit: u64, redactor: &Redactor) -> std::io::Result<Self> {
        // A new file, never a truncated old one: a reader may hold the old.
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, tokio::fs::File::create(path).await?),
            lines: LineAssembler::new(redactor.clone()),
            written: 0,
            limit,
            capped: false,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut pending: Vec<String> = Vec::new();
        self.lines
            .push(bytes, &mut |line| pending.push(line.to_owned()));
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

    async fn finish(mut self) -> std::io::Result<()> {
        let mut last = None;
        self.lines.finish(&mut |line| last = Some(line.to_owned()));
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
    let mut out = CappedLog::create(stdout, limit, redactor)
        .await
        .map_err(LogFileError::Io)?;
    let mut err = CappedLog::create(stderr, limit, redactor)
        .await
        .map_err(LogFileError::Io)?;
    while let Some(frame) = stream.next().await {
        match frame.map_err(LogFileError::Engine)? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                out.write(&message).await.map_err(LogFileError::Io)?;
            }
            LogOutput::StdErr { message } => {
                err.write(&message).await.map_err(LogFileError::Io)?;
            }
            LogOutput::StdIn { .. } => {}
        }
    }
    out.finish().await.map_err(LogFileError::Io)?;
    err.finish().await.map_err(LogFileError::Io)
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

    #[tokio::test]
    async fn a_secret_cut_by_the_line_limit_is_masked_whole() {
        let (sink, mut rx) = LogSink::channel(256);
        let secret = "c0rpus-Secret/Value+1=2x";
        let mut live = LiveLogs::new(sink, Redactor::new([secret]));
        let mut line = "x".repeat(LogSink::MAX_LINE_BYTES - 4);
        line.push_str(secret);
        line.push('\n');
        live.frame(LogOutput::StdOut {
            message: line.into_bytes().into(),
        })
        .await;
        live.finish().await;
        let text: String = rx.drain_now().into_iter().map(|l| l.text).collect();
        assert!(!text.contains(&secret[4..]), "{text}");
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
