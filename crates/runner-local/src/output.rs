//! Pumping a child's output into the log sink and a log file, in bounded memory.

use std::fs::File;
use std::io::{BufWriter, Read, Write};

use runner_core::{LogBatch, LogSink, LogStream, Redactor};

const CHUNK: usize = 64 * 1024;

/// A log file that stops growing at a limit and says so once.
struct CappedLog {
    out: BufWriter<File>,
    written: u64,
    limit: u64,
    capped: bool,
}

impl CappedLog {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.capped {
            return Ok(());
        }
        let len = line.len() as u64 + 1;
        if self.written + len > self.limit {
            self.capped = true;
            return writeln!(self.out, "[log truncated at {} bytes]", self.written);
        }
        self.written += len;
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")
    }
}

/// What a pump saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PumpStats {
    pub bytes: u64,
    pub lines: u64,
}

/// Where each line goes: the log file and, in batches, the sink.
struct Emitter<'a> {
    log: CappedLog,
    batch: LogBatch,
    sink: &'a LogSink,
    redactor: &'a Redactor,
    stream: LogStream,
}

impl Emitter<'_> {
    fn line(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // Overlong lines become several lines of at most MAX_LINE_BYTES.
        for piece in bytes.chunks(LogSink::MAX_LINE_BYTES) {
            // Valid UTF-8 (nearly all output) is borrowed as is; only
            // invalid bytes pay for the lossy copy.
            let text = match std::str::from_utf8(piece) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(piece),
            };
            let text = self.redactor.redact(&text);
            let text = text.trim_end_matches('\r');
            self.log.write_line(text)?;
            self.sink.push(&mut self.batch, self.stream, text);
            if self.batch.is_full() {
                self.sink.blocking_send_batch(&mut self.batch);
            }
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.sink.blocking_send_batch(&mut self.batch);
    }
}

/// Read `reader` to its end, splitting lines (cut at [`LogSink::MAX_LINE_BYTES`]),
/// redacting them, appending them to `log_file` and sending them to `sink`.
///
/// Memory stays bounded by one read chunk, one line and one batch whatever
/// the output size; a slow sink slows the reader, and through the pipe the test.
pub(crate) fn pump(
    mut reader: impl Read,
    stream: LogStream,
    sink: &LogSink,
    redactor: &Redactor,
    log_file: File,
    log_limit: u64,
) -> std::io::Result<PumpStats> {
    let mut out = Emitter {
        log: CappedLog {
            out: BufWriter::with_capacity(CHUNK, log_file),
            written: 0,
            limit: log_limit,
            capped: false,
        },
        batch: LogBatch::default(),
        sink,
        redactor,
        stream,
    };
    let mut stats = PumpStats::default();
    let mut buf = vec![0u8; CHUNK];
    let mut partial: Vec<u8> = Vec::with_capacity(1024);
    let max = LogSink::MAX_LINE_BYTES;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stats.bytes += n as u64;
        let mut rest = &buf[..n];
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            stats.lines += 1;
            if partial.is_empty() {
                out.line(&rest[..pos])?;
            } else {
                partial.extend_from_slice(&rest[..pos]);
                out.line(&partial)?;
                partial.clear();
            }
            rest = &rest[pos + 1..];
        }
        partial.extend_from_slice(rest);
        while partial.len() >= max {
            out.line(&partial[..max])?;
            partial.drain(..max);
        }
        // What one read produced goes out now, so live output stays live.
        out.flush();
    }
    if !partial.is_empty() {
        stats.lines += 1;
        out.line(&partial)?;
    }
    out.flush();
    out.log.out.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_cuts_long_ones_and_redacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let (sink, mut rx) = LogSink::channel(1024);
        let long = "x".repeat(LogSink::MAX_LINE_BYTES + 10);
        let input = format!("a\r\ntoken=s3cret\n{long}\nlast");
        let stats = pump(
            input.as_bytes(),
            LogStream::Stdout,
            &sink,
            &Redactor::new(["s3cret"]),
            File::create(&path).unwrap(),
            u64::MAX,
        )
        .unwrap();
        let lines: Vec<_> = rx.drain_now().into_iter().map(|l| l.text).collect();
        assert_eq!(lines[0], "a");
        assert_eq!(lines[1], "token=***");
        assert_eq!(lines[2].len(), LogSink::MAX_LINE_BYTES);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "last");
        assert_eq!(stats.bytes, input.len() as u64);
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(!file.contains("s3cret"));
    }

    #[test]
    fn log_file_is_capped_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let input = "0123456789\n".repeat(100);
        pump(
            input.as_bytes(),
            LogStream::Stdout,
            &LogSink::discard(),
            &Redactor::default(),
            File::create(&path).unwrap(),
            55,
        )
        .unwrap();
        let file = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            file,
            "0123456789\n".repeat(5) + "[log truncated at 55 bytes]\n"
        );
    }
}
