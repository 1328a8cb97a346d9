//! Resuming a pod's log stream without losing or repeating a line.
//!
//! The runner asks the API server for timestamped lines
//! (`timestamps=true`). When a stream drops, it reconnects with
//! `sinceTime` = the last line's timestamp, so the new stream starts with
//! lines it has already seen (the one at that timestamp; more if the
//! server truncates the time to seconds). [`Resume`] drops those: lines older than the last one
//! emitted, and, among lines with exactly the last timestamp, as many as
//! were already emitted.

use jiff::Timestamp;

/// One line of a `timestamps=true` log stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampedLine<'a> {
    /// The kubelet's timestamp, when the line carries one.
    pub at: Option<Timestamp>,
    /// The text after the timestamp.
    pub text: &'a str,
}

/// Split `2026-11-29T22:00:00.123456789Z text` into its timestamp and text.
pub fn parse_line(line: &str) -> StampedLine<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some((stamp, text)) = line.split_once(' ')
        && let Ok(at) = stamp.parse::<Timestamp>()
    {
        return StampedLine { at: Some(at), text };
    }
    match line.parse::<Timestamp>() {
        // An empty line: the timestamp alone.
        Ok(at) => StampedLine {
            at: Some(at),
            text: "",
        },
        Err(_) => StampedLine {
            at: None,
            text: line,
        },
    }
}

/// Where a log stream left off.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    last: Option<Timestamp>,
    /// Lines emitted with timestamp `last`.
    emitted_at_last: usize,
    /// Lines with timestamp `last` seen on the current connection.
    seen_at_last: usize,
    emitted: u64,
    connections: u32,
}

impl Resume {
    /// A stream not yet started.
    pub fn new() -> Resume {
        Resume::default()
    }

    /// Call before reading a new connection.
    pub fn new_connection(&mut self) {
        self.seen_at_last = 0;
        self.connections += 1;
    }

    /// The `sinceTime` for the next connection: the last line's timestamp.
    /// The new stream starts with that line (and any sharing its stamp),
    /// which [`Resume::offer`] drops.
    pub fn since(&self) -> Option<Timestamp> {
        self.last
    }

    /// Whether to emit a line with this timestamp; records it if so.
    pub fn offer(&mut self, at: Option<Timestamp>) -> bool {
        let Some(at) = at else {
            // No timestamp: nothing to compare; emit.
            self.emitted += 1;
            return true;
        };
        let emit = match self.last {
            Some(last) if at < last => false,
            Some(last) if at == last => {
                self.seen_at_last += 1;
                if self.seen_at_last > self.emitted_at_last {
                    self.emitted_at_last += 1;
                    true
                } else {
                    false
                }
            }
            _ => {
                self.last = Some(at);
                self.emitted_at_last = 1;
                self.seen_at_last = 1;
                true
            }
        };
        if emit {
            self.emitted += 1;
        }
        emit
    }

    /// Lines emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Connections opened so far.
    pub fn connections(&self) -> u32 {
        self.connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn parses_kubelet_lines() {
        let l = parse_line("2026-11-29T22:00:00.123456789Z hello world");
        assert_eq!(l.text, "hello world");
        assert_eq!(l.at, ts("2026-11-29T22:00:00.123456789Z"));
        assert_eq!(parse_line("2026-11-29T22:00:00Z").text, "");
        assert_eq!(parse_line("no stamp").at, None);
        assert_eq!(
            parse_line("2026-11-29T22:00:00Z  two spaces").text,
            " two spaces"
        );
    }

    #[test]
    fn a_reconnect_repeats_nothing_and_loses_nothing() {
        // Lines a1 a2 (same timestamp) b c; the first connection drops after b.
        let (a, b, c) = (
            ts("2026-11-29T22:00:00.5Z"),
            ts("2026-11-29T22:00:00.7Z"),
            ts("2026-11-29T22:00:01.2Z"),
        );
        let mut r = Resume::new();
        r.new_connection();
        assert!(r.offer(a));
        assert!(r.offer(a));
        assert!(r.offer(b));
        assert_eq!(r.since(), b);
        // A server that truncates to the second resends everything from 22:00:00.
        r.new_connection();
        let fresh: Vec<bool> = [a, a, b, c].into_iter().map(|t| r.offer(t)).collect();
        assert_eq!(fresh, [false, false, false, true]);
        assert_eq!(r.emitted(), 4);
    }

    #[test]
    fn identical_timestamps_across_a_drop() {
        let a = ts("2026-11-29T22:00:00.5Z");
        let mut r = Resume::new();
        r.new_connection();
        assert!(r.offer(a));
        assert!(r.offer(a));
        r.new_connection();
        let again: Vec<bool> = [a, a, a, a].into_iter().map(|t| r.offer(t)).collect();
        assert_eq!(again, [false, false, true, true]);
        assert_eq!(r.emitted(), 4);
    }
}
