//! Pumping a child's output into the log sink and log files, in bounded
//! memory: both pipes by one thread, a log file made only once its stream
//! says something.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use runner_core::kit::{LineAssembler, LogFollower};
use runner_core::{LogSink, LogStream, Redactor};

const CHUNK: usize = 64 * 1024;

/// A log file that is created at its first line, stops growing at a limit
/// and says so once. A silent stream leaves no file (collection writes an
/// empty one where the artifacts go).
struct LazyLog {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
    limit: u64,
    capped: bool,
    failed: Option<std::io::Error>,
}

impl LazyLog {
    fn new(path: PathBuf, limit: u64) -> Self {
        Self {
            path,
            out: None,
            written: 0,
            limit,
            capped: false,
            failed: None,
        }
    }

    fn line(&mut self, line: &str) {
        if self.capped || self.failed.is_some() {
            return;
        }
        if let Err(e) = self.write_line(line) {
            self.failed = Some(e);
        }
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let out = match &mut self.out {
            Some(out) => out,
            None => self
                .out
                .insert(BufWriter::with_capacity(CHUNK, File::create(&self.path)?)),
        };
        let len = line.len() as u64 + 1;
        if self.written + len > self.limit {
            self.capped = true;
            return writeln!(out, "[log truncated at {} bytes]", self.written);
        }
        self.written += len;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    }

    fn finish(self) -> std::io::Result<()> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.out {
            Some(mut out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// What a pump saw: the kit's line statistics.
pub(crate) type PumpStats = runner_core::kit::LineStats;

/// One stream's lines: through the kit's [`LogFollower`] (lines cut at
/// [`LogSink::MAX_LINE_BYTES`] and marked, progress redraws folded,
/// invalid UTF-8 replaced, secrets redacted) to the sink and its log file.
struct StreamPump {
    follower: LogFollower,
    log: LazyLog,
}

impl StreamPump {
    fn new(stream: LogStream, sink: &LogSink, redactor: &Redactor, log: LazyLog) -> Self {
        Self {
            follower: LogFollower::with_assembler(
                sink.clone(),
                stream,
                LineAssembler::new(redactor.clone()),
            ),
            log,
        }
    }

    /// What one read produced goes out now, so live output stays live.
    fn feed(&mut self, chunk: &[u8]) {
        let log = &mut self.log;
        self.follower
            .blocking_feed_with(chunk, &mut |line: &str| log.line(line));
    }

    fn finish(mut self) -> std::io::Result<PumpStats> {
        let log = &mut self.log;
        self.follower
            .blocking_finish_with(&mut |line: &str| log.line(line));
        let stats = self.follower.stats();
        self.log.finish()?;
        Ok(stats)
    }
}

/// A child's output pipe to pump, its stream and its log file.
pub(crate) struct Pipe {
    /// The read end.
    pub fd: OwnedFd,
    /// Which stream it carries.
    pub stream: LogStream,
    /// The log file to write, created at the first line.
    pub log: PathBuf,
}

/// Read every pipe to its end on this (blocking) thread, `poll` saying
/// which has data: one thread for both of a test's streams instead of one
/// each. Memory stays bounded by one read chunk, one line and one batch per
/// stream whatever the output size; a slow sink slows the reader, and
/// through the pipe the test.
pub(crate) fn pump_pipes(
    pipes: Vec<Pipe>,
    sink: &LogSink,
    redactor: &Redactor,
    log_limit: u64,
) -> std::io::Result<Vec<PumpStats>> {
    let mut open: Vec<(File, StreamPump)> = pipes
        .into_iter()
        .map(|p| {
            let pump = StreamPump::new(p.stream, sink, redactor, LazyLog::new(p.log, log_limit));
            (File::from(p.fd), pump)
        })
        .collect();
    let mut done = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    while !open.is_empty() {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = open
                .iter()
                .map(|(file, _)| PollFd::new(file.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut index = 0;
        let mut ready = ready.into_iter();
        while index < open.len() {
            if !ready.next().unwrap_or(false) {
                index += 1;
                continue;
            }
            let (file, pump) = &mut open[index];
            match file.read(&mut buf) {
                Ok(0) => {
                    let (_, pump) = open.remove(index);
                    done.push(pump.finish()?);
                    continue;
                }
                Ok(n) => pump.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            index += 1;
        }
    }
    Ok(done)
}

/// One reader pumped to its end (what [`pump_pipes`] does for each pipe).
#[cfg(test)]
fn pump(
    reader: impl Read,
    stream: LogStream,
    sink: &LogSink,
    redactor: &Redactor,
    log: PathBuf,
    log_limit: u64,
) -> std::io::Result<PumpStats> {
    let mut pump = StreamPump::new(stream, sink, redactor, LazyLog::new(log, log_limit));
    runner_core::kit::read_chunks(reader, &mut |chunk| {
        pump.feed(chunk);
        Ok(())
    })?;
    pump.finish()
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
            path.clone(),
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
            path.clone(),
            55,
        )
        .unwrap();
        let file = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            file,
            "0123456789\n".repeat(5) + "[log truncated at 55 bytes]\n"
        );
    }

    #[test]
    fn one_thread_pumps_both_pipes_and_a_silent_one_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (out_r, mut out_w) = std::io::pipe().unwrap();
        let (err_r, err_w) = std::io::pipe().unwrap();
        // Room for every line: nothing drains the sink during the pump.
        let (sink, mut rx) = LogSink::channel(100_000);
        let pipes = vec![
            Pipe {
                fd: out_r.into(),
                stream: LogStream::Stdout,
                log: dir.path().join("stdout.log"),
            },
            Pipe {
                fd: err_r.into(),
                stream: LogStream::Stderr,
                log: dir.path().join("stderr.log"),
            },
        ];
        // More than a pipe holds, so the writer blocks until the pump
        // reads: a pump that waited on the silent stream first would hang.
        let writer = std::thread::spawn(move || {
            // Buffered: few large reads, so the batches fit the sink.
            let mut out = std::io::BufWriter::with_capacity(CHUNK, &mut out_w);
            for i in 0..20_000 {
                writeln!(out, "line {i} token=s3cret").unwrap();
            }
            out.flush().unwrap();
            drop(out);
            drop(out_w);
            drop(err_w);
        });
        let stats = pump_pipes(pipes, &sink, &Redactor::new(["s3cret"]), u64::MAX).unwrap();
        writer.join().unwrap();
        assert_eq!(stats.len(), 2);
        let lines: Vec<_> = rx.drain_now().into_iter().map(|l| l.text).collect();
        assert_eq!(lines.len(), 20_000);
        assert_eq!(lines[19_999], "line 19999 token=***");
        let file = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
        assert_eq!(file.lines().count(), 20_000);
        assert!(!file.contains("s3cret"));
        assert!(
            !dir.path().join("stderr.log").exists(),
            "a silent stream makes no log file"
        );
    }
}
