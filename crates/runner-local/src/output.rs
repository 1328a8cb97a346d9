//! Pumping a child's output into the log sink and a log file, in bounded memory.

use std::fs::File;
use std::io::{BufWriter, Read, Write};

use runner_core::kit::{LineAssembler, LogFollower};
use runner_core::{LogSink, LogStream, Redactor};

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

/// What a pump saw: the kit's line statistics.
pub(crate) type PumpStats = runner_core::kit::LineStats;

/// Read `reader` to its end through the kit's [`LogFollower`] (lines cut at
/// [`LogSink::MAX_LINE_BYTES`] and marked, progress redraws folded, invalid
/// UTF-8 replaced, secrets redacted), appending the lines to `log_file` and
/// sending them to `sink`.
///
/// Memory stays bounded by one read chunk, one line and one batch whatever
/// the output size; a slow sink slows the reader, and through the pipe the test.
pub(crate) fn pump(
    reader: impl Read,
    stream: LogStream,
    sink: &LogSink,
    redactor: &Redactor,
    log_file: File,
    log_limit: u64,
) -> std::io::Result<PumpStats> {
    let mut log = CappedLog {
        out: BufWriter::with_capacity(CHUNK, log_file),
        written: 0,
        limit: log_limit,
        capped: false,
    };
    let mut follower =
        LogFollower::with_assembler(sink.clone(), stream, LineAssembler::new(redactor.clone()));
    let mut failed: Option<std::io::Error> = None;
    let mut to_file = |line: &str| {
        if failed.is_none()
            && let Err(e) = log.write_line(line)
        {
            failed = Some(e);
        }
    };
    // What one read produced goes out now, so live output stays live.
    runner_core::kit::read_chunks(reader, &mut |chunk| {
        follower.blocking_feed_with(chunk, &mut to_file);
        Ok(())
    })?;
    follower.blocking_finish_with(&mut to_file);
    if let Some(e) = failed {
        return Err(e);
    }
    log.out.flush()?;
    Ok(follower.stats())
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
        assert!(lines[2].ends_with(runner_core::kit::lines::CUT_MARK));
        assert_eq!(lines[3], "last");
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
