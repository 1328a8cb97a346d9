//! The one log follower every backend feeds: raw output bytes in, bounded,
//! redacted, valid UTF-8 lines out.
//!
//! Memory is bounded by [`LineAssembler::max_line`] plus the longest secret,
//! whatever the output looks like:
//! - a line longer than the maximum is cut there, marked with
//!   [`CUT_MARK`], and the rest of it (up to its newline) is dropped and counted;
//! - a lone `\r` (a progress bar redrawing itself) starts the line again, as a
//!   terminal shows it: an hour of progress frames is one line, the last frame;
//! - invalid UTF-8 is replaced with U+FFFD, per line, so a character split
//!   across two reads is never broken;
//! - secrets are redacted before a line is cut, so a secret across the cut
//!   never leaks a prefix.

use crate::context::{LogBatch, LogSink, LogStream};
use crate::redact::Redactor;

/// Appended to a line that was cut at the maximum length.
pub const CUT_MARK: &str = " [line cut: longer than the maximum line length]";

/// What an assembler has seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineStats {
    /// Bytes fed.
    pub bytes: u64,
    /// Lines emitted.
    pub lines: u64,
    /// Lines cut at the maximum length.
    pub cut: u64,
    /// Bytes dropped from cut lines.
    pub dropped: u64,
}

/// Splits a byte stream into lines; see the module docs.
#[derive(Debug, Clone)]
pub struct LineAssembler {
    max: usize,
    redactor: Redactor,
    partial: Vec<u8>,
    /// Dropping the rest of a cut line until its newline.
    skipping: bool,
    /// The last byte fed was a `\r`: a `\n` next ends the line, anything else redraws it.
    pending_cr: bool,
    stats: LineStats,
}

impl LineAssembler {
    /// An assembler cutting lines at [`LogSink::MAX_LINE_BYTES`].
    pub fn new(redactor: Redactor) -> LineAssembler {
        LineAssembler::with_max_line(redactor, LogSink::MAX_LINE_BYTES)
    }

    /// An assembler emitting lines of at most `max` bytes, a cut line's
    /// mark included (`max` is at least the mark's length and 16).
    pub fn with_max_line(redactor: Redactor, max: usize) -> LineAssembler {
        LineAssembler {
            max: max.max(CUT_MARK.len() + 16),
            redactor,
            partial: Vec::new(),
            skipping: false,
            pending_cr: false,
            stats: LineStats::default(),
        }
    }

    /// The longest line emitted, a cut line's mark included.
    pub fn max_line(&self) -> usize {
        self.max
    }

    /// What it has seen so far.
    pub fn stats(&self) -> LineStats {
        self.stats
    }

    /// The bytes held for the line not yet ended (bounded by the maximum
    /// line plus the longest secret).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// The redactor applied to every line.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Feed bytes; `emit` gets every line they complete, without its ending.
    pub fn push(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&str)) {
        self.stats.bytes += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                if rest[0] == b'\n' {
                    self.end_line(emit);
                    rest = &rest[1..];
                    continue;
                }
                self.redraw();
            }
            let Some(pos) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                self.extend(rest, emit);
                break;
            };
            self.extend(&rest[..pos], emit);
            if rest[pos] == b'\n' {
                self.end_line(emit);
            } else {
                self.pending_cr = true;
            }
            rest = &rest[pos + 1..];
        }
    }

    /// The end of the stream: emit what is left of the last line.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        self.pending_cr = false;
        if !self.partial.is_empty() {
            self.end_line(emit);
        }
        self.skipping = false;
    }

    fn redraw(&mut self) {
        self.partial.clear();
        self.skipping = false;
    }

    fn extend(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&str)) {
        if self.skipping {
            self.stats.dropped += bytes.len() as u64;
            return;
        }
        // Room for the longest secret past the cut, so it is redacted whole.
        let cap = self.max + self.redactor.longest();
        let room = cap.saturating_sub(self.partial.len());
        if bytes.len() <= room {
            self.partial.extend_from_slice(bytes);
            return;
        }
        self.partial.extend_from_slice(&bytes[..room]);
        self.stats.dropped += (bytes.len() - room) as u64;
        self.cut(emit);
    }

    /// Emit the held bytes cut at the maximum and marked; drop the rest of the line.
    fn cut(&mut self, emit: &mut dyn FnMut(&str)) {
        let text = String::from_utf8_lossy(&self.partial);
        let redacted = self.redactor.redact(&text);
        let kept = truncate_at_char_boundary(&redacted, self.max - CUT_MARK.len());
        self.stats.dropped += (self.partial.len().saturating_sub(kept.len())) as u64;
        let mut line = String::with_capacity(kept.len() + CUT_MARK.len());
        line.push_str(kept);
        line.push_str(CUT_MARK);
        emit(&line);
        self.stats.lines += 1;
        self.stats.cut += 1;
        self.partial.clear();
        self.skipping = true;
    }

    fn end_line(&mut self, emit: &mut dyn FnMut(&str)) {
        if self.skipping {
            // The cut line already went out.
            self.skipping = false;
            return;
        }
        if self.partial.len() > self.max {
            self.cut(emit);
            self.skipping = false;
            return;
        }
        let text = String::from_utf8_lossy(&self.partial);
        let redacted = self.redactor.redact(&text);
        emit(&redacted);
        self.stats.lines += 1;
        self.partial.clear();
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

/// A [`LineAssembler`] feeding a [`LogSink`] (and optionally a callback per
/// line, for a log file): what async log followers use. Lines go out in
/// batches as each chunk is fed, so live output stays live.
#[derive(Debug)]
pub struct LogFollower {
    lines: LineAssembler,
    sink: LogSink,
    stream: LogStream,
}

impl LogFollower {
    /// A follower of one stream into `sink`, redacting with the sink's redactor.
    pub fn new(sink: LogSink, stream: LogStream) -> LogFollower {
        let lines = LineAssembler::new(sink.redactor().clone());
        LogFollower {
            lines,
            sink,
            stream,
        }
    }

    /// The same, with its own assembler (a smaller maximum, another redactor).
    pub fn with_assembler(sink: LogSink, stream: LogStream, lines: LineAssembler) -> LogFollower {
        LogFollower {
            lines,
            sink,
            stream,
        }
    }

    /// The sink lines go to.
    pub fn sink(&self) -> &LogSink {
        &self.sink
    }

    /// What the assembler has seen.
    pub fn stats(&self) -> LineStats {
        self.lines.stats()
    }

    /// Feed a chunk and send the lines it completed; `also` sees each line first.
    pub async fn feed_with(&mut self, bytes: &[u8], also: &mut (dyn FnMut(&str) + Send)) {
        let batches = self.assemble(bytes, false, also);
        for mut batch in batches {
            self.sink.send_batch(&mut batch).await;
        }
    }

    /// Feed a chunk and send the lines it completed.
    pub async fn feed(&mut self, bytes: &[u8]) {
        self.feed_with(bytes, &mut |_| {}).await;
    }

    /// The end of the stream: send the last, unterminated line.
    pub async fn finish_with(&mut self, also: &mut (dyn FnMut(&str) + Send)) {
        let batches = self.assemble(&[], true, also);
        for mut batch in batches {
            self.sink.send_batch(&mut batch).await;
        }
    }

    /// The end of the stream, without a callback.
    pub async fn finish(&mut self) {
        self.finish_with(&mut |_| {}).await;
    }

    /// [`LogFollower::feed_with`] from a blocking thread (never from async code).
    pub fn blocking_feed_with(&mut self, bytes: &[u8], also: &mut dyn FnMut(&str)) {
        for mut batch in self.assemble(bytes, false, also) {
            self.sink.blocking_send_batch(&mut batch);
        }
    }

    /// [`LogFollower::finish_with`] from a blocking thread.
    pub fn blocking_finish_with(&mut self, also: &mut dyn FnMut(&str)) {
        for mut batch in self.assemble(&[], true, also) {
            self.sink.blocking_send_batch(&mut batch);
        }
    }

    fn assemble(&mut self, bytes: &[u8], last: bool, also: &mut dyn FnMut(&str)) -> Vec<LogBatch> {
        let mut full = Vec::new();
        let mut batch = LogBatch::default();
        let (sink, stream) = (&self.sink, self.stream);
        let mut emit = |line: &str| {
            also(line);
            sink.push(&mut batch, stream, line);
            if batch.is_full() {
                full.push(std::mem::take(&mut batch));
            }
        };
        if last {
            self.lines.finish(&mut emit);
        } else {
            self.lines.push(bytes, &mut emit);
        }
        if !batch.is_empty() {
            full.push(batch);
        }
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(a: &mut LineAssembler, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in chunks {
            a.push(chunk, &mut |l| out.push(l.to_owned()));
        }
        a.finish(&mut |l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn lines_crlf_and_the_last_unterminated_line() {
        let mut a = LineAssembler::new(Redactor::default());
        let out = run(&mut a, &[b"a\r\nb\n\nc", b"d\r", b"\ne"]);
        assert_eq!(out, ["a", "b", "", "cd", "e"]);
        assert_eq!(a.stats().lines, 5);
    }

    #[test]
    fn progress_redraws_keep_the_last_frame_in_bounded_memory() {
        let mut a = LineAssembler::with_max_line(Redactor::default(), 80);
        let mut out = Vec::new();
        for i in 0..100_000 {
            a.push(format!("progress {i}%\r").as_bytes(), &mut |l| {
                out.push(l.to_owned())
            });
            assert!(a.buffered() <= 80);
        }
        a.push(b"done\n", &mut |l| out.push(l.to_owned()));
        assert_eq!(out, ["done"]);
        let mut a = LineAssembler::new(Redactor::default());
        assert_eq!(run(&mut a, &[b"10%\r50%\r100%"]), ["100%"]);
    }

    #[test]
    fn a_long_line_is_cut_marked_and_the_rest_dropped() {
        let mut a = LineAssembler::with_max_line(Redactor::default(), 100);
        let kept = 100 - CUT_MARK.len();
        let long = vec![b'x'; 10_000];
        let mut out = Vec::new();
        for chunk in long.chunks(7) {
            a.push(chunk, &mut |l| out.push(l.to_owned()));
            assert!(a.buffered() <= 100);
        }
        a.push(b"\nnext\n", &mut |l| out.push(l.to_owned()));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], format!("{}{CUT_MARK}", "x".repeat(kept)));
        assert_eq!(out[0].len(), 100);
        assert_eq!(out[1], "next");
        assert_eq!(a.stats().cut, 1);
        assert_eq!(a.stats().dropped, 10_000 - kept as u64);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_split_characters_survive() {
        let mut a = LineAssembler::new(Redactor::default());
        let e = "é".as_bytes();
        let out = run(&mut a, &[&[b'a', e[0]], &[e[1], b'\n', 0xff, b'b', b'\n']]);
        assert_eq!(out, ["aé", "\u{fffd}b"]);
    }

    #[test]
    fn secrets_are_redacted_across_reads_and_across_the_cut() {
        let mut a = LineAssembler::with_max_line(Redactor::new(["hunter22"]), CUT_MARK.len() + 16);
        let long = format!("{}hunter22{}\n", "a".repeat(14), "b".repeat(60));
        let out = run(&mut a, &[b"pw=hun", b"ter22 ok\n", long.as_bytes()]);
        assert_eq!(out[0], "pw=*** ok");
        assert_eq!(out[1], format!("{}**{CUT_MARK}", "a".repeat(14)));
        assert!(out[1].ends_with(CUT_MARK));
    }

    #[tokio::test]
    async fn follower_sends_batches_to_the_sink() {
        let (sink, mut rx) = LogSink::channel(1024);
        let sink = sink.with_redactor(Redactor::new(["s3cret"]));
        let mut f = LogFollower::new(sink, LogStream::Stdout);
        let mut file = Vec::new();
        f.feed_with(b"one s3c", &mut |l| file.push(l.to_owned()))
            .await;
        f.feed_with(b"ret\ntwo", &mut |l| file.push(l.to_owned()))
            .await;
        f.finish_with(&mut |l| file.push(l.to_owned())).await;
        let lines: Vec<_> = rx.drain_now().into_iter().map(|l| l.text).collect();
        assert_eq!(lines, ["one ***", "two"]);
        assert_eq!(file, lines);
    }
}
