//! Process groups: start a command in its own group, stop the whole group.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The variable every test process carries (and what it starts inherits):
/// its execution's directory. Processes that left the group (`setsid`, a
/// double fork) are found by it and killed at the end of the run and at
/// teardown.
pub(crate) const MARKER_VAR: &str = "ORCHESTRATOR_LOCAL_DIR";

/// SIGKILL every process whose environment carries `MARKER_VAR=dir`, in a
/// few passes (one may fork while the scan runs). Returns how many.
pub(crate) fn kill_marked(dir: &Path) -> usize {
    let needle = format!("{MARKER_VAR}={}", dir.display()).into_bytes();
    let me = std::process::id();
    let mut killed = 0;
    for _ in 0..3 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return killed;
        };
        let mut found = 0;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if u32::try_from(pid).is_ok_and(|p| p == me) {
                continue;
            }
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_slice())
                && nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
            {
                found += 1;
            }
        }
        killed += found;
        if found == 0 {
            break;
        }
    }
    killed
}

/// What teardown needs to find a group again, possibly from another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    /// The group id (the leader's pid).
    pub pgid: i32,
    /// The leader's start time in clock ticks since boot (from /proc), to
    /// tell a recycled pid from ours.
    pub start_ticks: Option<u64>,
}

impl GroupRecord {
    pub(crate) fn for_leader(pid: u32) -> Option<Self> {
        let pgid = i32::try_from(pid).ok()?;
        Some(Self {
            pgid,
            start_ticks: start_ticks(pgid),
        })
    }

    /// Whether the group may still be ours: the leader is gone (a pgid is
    /// not reused while its group has members) or it is the same process.
    pub(crate) fn still_ours(&self) -> bool {
        match (self.start_ticks, start_ticks(self.pgid)) {
            (Some(recorded), Some(now)) => recorded == now,
            _ => true,
        }
    }

    /// Send `signal` to the group; `false` when no process of it is left.
    pub(crate) fn signal(&self, signal: Signal) -> bool {
        killpg(Pid::from_raw(self.pgid), signal).is_ok()
    }

    /// SIGKILL the group if it is still ours.
    pub(crate) fn kill(&self) {
        if self.still_ours() {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// Kills the group when dropped unless disarmed: a run_test future dropped
/// by the worker's timeout still leaves no process behind.
pub(crate) struct GroupGuard {
    record: GroupRecord,
    armed: bool,
}

impl GroupGuard {
    pub(crate) fn new(record: GroupRecord) -> Self {
        Self {
            record,
            armed: true,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.record.kill();
        }
    }
}

fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); fields after the parenthesised command name.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Write the record where teardown in another process will find it.
pub(crate) fn save(record: &GroupRecord, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, path)
}

/// Read a saved record; `None` when no run was started.
pub(crate) fn load(path: &Path) -> Option<GroupRecord> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// SIGTERM, wait up to `grace` for the leader, then SIGKILL the group.
pub(crate) async fn terminate(
    record: &GroupRecord,
    child: &mut tokio::process::Child,
    grace: Duration,
) {
    record.signal(Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::debug!(pgid = record.pgid, "grace period over, sending SIGKILL");
    }
    record.signal(Signal::SIGKILL);
    let _ = child.wait().await;
}
