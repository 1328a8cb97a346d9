//! Process groups: start a command in its own group, stop the whole group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The variable every test process carries (and what it starts inherits):
/// its execution's directory. Processes that left the group (`setsid`, a
/// double fork) are found by it and killed at the end of the run and at
/// teardown.
pub(crate) const MARKER_VAR: &str = "ORCHESTRATOR_LOCAL_DIR";

/// What a sweep of `/proc` for an execution's marked processes did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sweep {
    /// Processes killed.
    pub killed: usize,
    /// Whether the last pass found none left: no marked process existed
    /// then, and none can appear later (only a marked process starts one).
    pub clean: bool,
    /// Clean, and no process the run could have started is alive either,
    /// marked or not: every pid allocated since its leader is gone, a
    /// zombie, a child or a thread of this process (see [`stranger`]). A
    /// process that cleared its environment and left the group would be
    /// one of those pids, so the run's working directory has no process
    /// of the test in it.
    pub quiet: bool,
}

/// The test leaders this process started and has not reaped, each with
/// its start time: the only live processes of others in a run's pid range
/// that [`stranger`] lets pass. (Their parent being this process is not
/// enough: a test can give a process of its own that parent with
/// `clone(CLONE_PARENT)`, and one running as pid 1 adopts every orphan.)
static LEADERS: Mutex<Vec<(i32, u64)>> = Mutex::new(Vec::new());

/// A leader in [`LEADERS`] until dropped.
pub(crate) struct LiveLeader(Option<(i32, u64)>);

impl LiveLeader {
    pub(crate) fn new(record: &GroupRecord) -> Self {
        let entry = record.start_ticks.map(|ticks| (record.pgid, ticks));
        if let (Some(entry), Ok(mut leaders)) = (entry, LEADERS.lock()) {
            leaders.push(entry);
        }
        Self(entry)
    }
}

impl Drop for LiveLeader {
    fn drop(&mut self) {
        if let (Some(entry), Ok(mut leaders)) = (self.0, LEADERS.lock()) {
            leaders.retain(|e| *e != entry);
        }
    }
}

/// Whether `/proc` shows this process's own pid namespace: quiet sweeps
/// rely on it (a `/proc` of another namespace, or one hiding pids, would
/// make live processes look gone).
fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OURS.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
            == Some(std::process::id())
    })
}

/// Whether `pid` (allocated since a run's leader) is alive and neither a
/// zombie, another test's leader this process started ([`LEADERS`]) nor a
/// thread of this process (`me`): a process that run may have started.
fn stranger(pid: i32, me: i32) -> bool {
    // Gone: nothing left to be in the directory.
    let Some(stat) = Stat::of(pid) else {
        return false;
    };
    if matches!(stat.state.as_str(), "Z" | "X") {
        return false;
    }
    let leader = stat.ppid == Some(me)
        && stat.start_ticks.is_some_and(|ticks| {
            LEADERS
                .lock()
                .is_ok_and(|leaders| leaders.contains(&(pid, ticks)))
        });
    if leader {
        return false;
    }
    // A thread of this process has a pid of its own (tokio's pool grows).
    !Path::new(&format!("/proc/self/task/{pid}")).exists()
}

/// Which processes a run may have started: those whose pid was allocated
/// after its leader's. Pids are handed out in increasing order (wrapping at
/// `pid_max`), so a short run's candidates are the few pids between its
/// leader and the namespace's last pid, read from
/// `/proc/sys/kernel/ns_last_pid`, instead of every process on the machine
/// (a scan of ~80 processes cost more than starting the test).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Since {
    /// The run's leader pid.
    pub leader: i32,
    /// When the leader was started.
    pub at: std::time::Instant,
}

/// Runs longer than this are swept by a full scan: pids could have wrapped
/// all the way round since (32,768 on this kind of machine).
const RANGE_FOR_AT_MOST: Duration = Duration::from_secs(2);
/// Beyond this many candidate pids a full scan is as cheap.
const RANGE_MAX: usize = 1_024;

/// The whole of a small file (a `/proc` entry, a record of this crate):
/// reads into one growing buffer, without the size query `std::fs::read`
/// makes first (`/proc` files report size 0, so that query only costs a
/// system call, and the reads then start at 32 bytes).
pub(crate) fn read_small(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut out = vec![0u8; 1024];
    let mut len = 0;
    loop {
        if len == out.len() {
            out.resize(len * 2, 0);
        }
        match file.read(&mut out[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.truncate(len);
    Ok(out)
}

fn read_i32(path: &str) -> Option<i32> {
    std::str::from_utf8(&read_small(path).ok()?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The pids to look at, or `None` for every process in `/proc`.
fn candidates(since: Option<&Since>) -> Option<Vec<i32>> {
    static PID_MAX: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    let since = since?;
    if since.at.elapsed() > RANGE_FOR_AT_MOST {
        return None;
    }
    let max = (*PID_MAX.get_or_init(|| read_i32("/proc/sys/kernel/pid_max")))?;
    let last = read_i32("/proc/sys/kernel/ns_last_pid")?;
    let leader = since.leader;
    let pids: Vec<i32> = if last >= leader {
        (leader..=last).take(RANGE_MAX + 1).collect()
    } else {
        // Wrapped since the leader started.
        (leader..max).chain(1..=last).take(RANGE_MAX + 1).collect()
    };
    (pids.len() <= RANGE_MAX).then_some(pids)
}

/// At most this many candidate pids are swept in place (see `fs_work`).
const FEW: usize = 32;

/// The pids the sweep after the run `since` looks at first, and whether
/// they are few: small work (one read of `/proc/N/environ` each). Read
/// once, for [`kill_marked_from`].
pub(crate) fn first_candidates(since: &Since) -> (Option<Vec<i32>>, bool) {
    let pids = candidates(Some(since));
    let few = pids.as_ref().is_some_and(|pids| pids.len() <= FEW);
    (pids, few)
}

/// Whether none of `pids` (a run's range, see [`candidates`]) is a
/// [`stranger`], nor any pid allocated while they were looked at: the
/// range is read again until it stops growing (three times at most), so a
/// process that forked and exited between the reads cannot hide a child
/// past the end of it.
fn quiet_since(pids: Vec<i32>, since: Option<&Since>, me: i32) -> bool {
    let mut unchecked = pids;
    let mut last = None;
    for _ in 0..3 {
        if unchecked.iter().any(|pid| *pid != me && stranger(*pid, me)) {
            return false;
        }
        if let Some(end) = unchecked.last() {
            last = Some(*end);
        }
        let Some(now) = candidates(since) else {
            return false;
        };
        if now.last().copied() == last {
            return true;
        }
        unchecked = match last {
            Some(end) => now
                .into_iter()
                .skip_while(|pid| *pid != end)
                .skip(1)
                .collect(),
            None => now,
        };
    }
    false
}

/// SIGKILL `pid` if its environment holds `needle`; whether it did.
fn kill_if_marked(pid: i32, needle: &[u8]) -> bool {
    let Ok(env) = read_small(format!("/proc/{pid}/environ")) else {
        return false;
    };
    env.split(|b| *b == 0).any(|kv| kv == needle)
        && nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

/// SIGKILL every process whose environment carries `MARKER_VAR=dir`, in a
/// few passes (one may fork while the scan runs). With `since`, only the
/// pids allocated after the run's leader are looked at (see [`Since`]);
/// without, every process in `/proc`.
pub(crate) fn kill_marked(dir: &Path, since: Option<&Since>) -> Sweep {
    kill_marked_from(dir, since, None)
}

/// [`kill_marked`], its first pass over `first` when given (read earlier
/// by [`first_candidates`]: a marked process that forks after that read
/// is found in it, and its child by the next pass).
pub(crate) fn kill_marked_from(
    dir: &Path,
    since: Option<&Since>,
    mut first: Option<Vec<i32>>,
) -> Sweep {
    let needle = format!("{MARKER_VAR}={}", dir.display()).into_bytes();
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let mut killed = 0;
    for _ in 0..3 {
        let (pids, ranged) = match first.take().or_else(|| candidates(since)) {
            Some(pids) => (pids, true),
            None => {
                let Ok(entries) = std::fs::read_dir("/proc") else {
                    return Sweep {
                        killed,
                        clean: false,
                        quiet: false,
                    };
                };
                let all = entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                    .collect();
                (all, false)
            }
        };
        let found = pids
            .iter()
            .filter(|pid| **pid != me && kill_if_marked(**pid, &needle))
            .count();
        killed += found;
        if found == 0 {
            // Only a sweep of the run's own pid range can tell.
            let quiet = ranged && proc_is_ours() && quiet_since(pids, since, me);
            return Sweep {
                killed,
                clean: true,
                quiet,
            };
        }
    }
    Sweep {
        killed,
        clean: false,
        quiet: false,
    }
}

/// Execution directories whose run ended with a clean [`Sweep`] in this
/// process: their teardown here skips a second scan of `/proc` (one per
/// test instead of two: the scan reads every process's environment).
/// A teardown in another process, or after a run that did not end with a
/// clean sweep (a dropped future, a fork storm), scans as before.
#[derive(Debug, Clone, Default)]
pub(crate) struct Swept(Arc<Mutex<HashMap<PathBuf, bool>>>);

impl Swept {
    /// Entries kept at most; beyond, the set starts over (a missed skip
    /// only costs a scan).
    const MAX: usize = 4_096;

    /// `dir`'s run ended with a clean sweep, `quiet` or not
    /// ([`Sweep::quiet`]).
    pub(crate) fn insert(&self, dir: &Path, quiet: bool) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= Self::MAX {
                set.clear();
            }
            set.insert(dir.to_path_buf(), quiet);
        }
    }

    /// Forget `dir`; whether its last run ended with a clean sweep
    /// (`Some`), and whether that sweep was quiet.
    pub(crate) fn take(&self, dir: &Path) -> Option<bool> {
        self.0.lock().ok().and_then(|mut set| set.remove(dir))
    }
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

/// What this crate reads of `/proc/<pid>/stat`. A field that does not
/// parse is empty or `None`, which callers take as the unknown (never
/// as "ours" or "dead").
struct Stat {
    /// The state letter (`R`, `S`, `Z`, ...).
    state: String,
    /// The parent's pid.
    ppid: Option<i32>,
    /// Field 22: when it started, in clock ticks since boot.
    start_ticks: Option<u64>,
}

impl Stat {
    /// `None` when the process is gone.
    fn of(pid: i32) -> Option<Self> {
        let bytes = read_small(format!("/proc/{pid}/stat")).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        // The fields after the command name, which is in parentheses and
        // may hold spaces and `)` itself.
        let after = text.rsplit_once(')').map_or("", |(_, after)| after);
        let fields: Vec<&str> = after.split_whitespace().collect();
        Some(Self {
            state: fields.first().copied().unwrap_or_default().to_owned(),
            ppid: fields.get(1).and_then(|p| p.parse().ok()),
            start_ticks: fields.get(19).and_then(|t| t.parse().ok()),
        })
    }
}

fn start_ticks(pid: i32) -> Option<u64> {
    Stat::of(pid)?.start_ticks
}

/// Write the record where teardown in another process will find it: in
/// place, one small write (no temporary file and rename: a torn record
/// reads as none, and teardown's scan for marked processes still finds the
/// group's members).
pub(crate) fn save(record: &GroupRecord, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    // Over the old record where one is (a reused directory): no new inode.
    crate::spare::write_in_place(path, &json)
}

/// Read a saved record; `None` when no run was started.
pub(crate) fn load(path: &Path) -> Option<GroupRecord> {
    let bytes = read_small(path).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_reads_return_the_whole_file_past_the_first_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_small(&path).unwrap(), data);
        std::fs::write(&path, b"").unwrap();
        assert!(read_small(&path).unwrap().is_empty());
        // A /proc file (size 0 to stat) reads whole too.
        let stat = read_small("/proc/self/stat").unwrap();
        let pid = format!("{} (", std::process::id());
        assert!(stat.starts_with(pid.as_bytes()) && stat.ends_with(b"\n"));
        assert!(read_small(dir.path().join("absent")).is_err());
    }

    /// A live process whose parent is this one is no leader of ours
    /// unless this runner started it as one (a test can make its own
    /// process a child of the worker's with `clone(CLONE_PARENT)`).
    #[test]
    fn only_registered_leaders_and_the_dead_pass_the_quiet_check() {
        let me = i32::try_from(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(stranger(pid, me), "a child of ours that is no leader");
        let record = GroupRecord::for_leader(child.id()).unwrap();
        let leader = LiveLeader::new(&record);
        assert!(!stranger(pid, me), "a leader this process started");
        drop(leader);
        assert!(stranger(pid, me), "no longer a leader");
        child.kill().unwrap();
        // Killed, not yet reaped: a zombie, which can do nothing.
        let mut zombie = false;
        for _ in 0..200 {
            if Stat::of(pid).unwrap().state == "Z" {
                zombie = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(zombie, "the killed child became a zombie");
        assert!(!stranger(pid, me));
        child.wait().unwrap();
        assert!(!stranger(pid, me), "gone");
        assert!(proc_is_ours());
    }
}
