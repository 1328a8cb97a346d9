//! Execution directories kept for reuse: a test that left nothing behind
//! hands its directory (and `work/`, and the record files) to the next
//! provision of this process instead of removing it.
//!
//! On ext4 making an inode is most of a short test's cost (0.2–0.8 ms for
//! each `mkdir` or new file on this project's machines, against 0.01 ms
//! for a `rename`; `orchestrator-bench local`), and a test's directory
//! took four: the directory, `work/`, the handle record and the
//! process-group record. A reused directory takes two renames, two writes
//! in place and a new `work/` (none after a quiet run, see below).
//!
//! A directory is kept only when nothing in it came from the test: its
//! entries are `work/` and the two records, `work/` is an empty directory,
//! and both directories still have the mode and owner a fresh one gets.
//! Anything else is removed as before. Its `work/` is removed when it is
//! kept and made anew when it is taken (one inode per test): a process of
//! the test that escaped the sweep keeps its working directory in the old,
//! removed one, where nothing can be made and `..` leads nowhere. Only
//! when the run's sweep was quiet (no process the run may have started is
//! alive: none can be in `work/`) is `work/` kept too. Spares live under
//! `<root>/.spare/<pid>.<n>/`, one directory per runner, so two runners
//! (or processes) sharing a root never take the same spare; a process finds the spare
//! directories of processes that are gone and removes them the first time
//! it keeps one, and its own when the runner is dropped (a process that
//! ends normally leaves none). `list_owned` never reports a spare: it
//! reads only the root's own entries, and `.spare` has no handle record.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::state::{GROUP_FILE, HANDLE_FILE};

/// The directory under the root that holds every process's spares.
pub(crate) const SPARE_DIR: &str = ".spare";

/// Spares kept at most by one process; beyond, a clean directory is
/// removed as before.
const MAX_SPARES: usize = 16;

/// What a fresh directory looks like (mode bits, owner, group): taken from
/// the first `work/` this process made, so the umask is respected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fresh {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Fresh {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Spare directories this process made and nobody took yet, and
    /// whether each still has its `work/`.
    kept: Vec<(PathBuf, bool)>,
    /// Set once this process's spare directory exists and the spares of
    /// processes that are gone were removed.
    ready: bool,
    /// What a fresh directory looks like, once known.
    fresh: Option<Fresh>,
    /// Names handed out, for unique spare names.
    made: u64,
}

/// This process's spare execution directories under one root; removed
/// when the last clone is dropped (a one-shot `orchestrator run` leaves
/// nothing behind).
#[derive(Debug, Clone)]
pub(crate) struct Spares(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// `<root>/.spare/<pid>.<n>`.
    dir: PathBuf,
    inner: Mutex<Inner>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            // Those of killed processes, and `.spare` itself unless a live
            // process keeps spares there.
            remove_gone(parent);
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl Spares {
    pub(crate) fn new(root: &Path) -> Self {
        // One directory per runner: two runners of one process sharing a
        // root never hand each other a spare.
        static RUNNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let runner = RUNNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(Arc::new(Shared {
            dir: root
                .join(SPARE_DIR)
                .join(format!("{}.{runner}", std::process::id())),
            inner: Mutex::default(),
        }))
    }

    /// Note what a fresh directory looks like, from `work`, just made.
    pub(crate) fn saw_fresh(&self, work: &Path) {
        let Ok(mut inner) = self.0.inner.lock() else {
            return;
        };
        if inner.fresh.is_none()
            && let Ok(meta) = std::fs::symlink_metadata(work)
        {
            inner.fresh = Some(Fresh::of(&meta));
        }
    }

    /// Move a spare to `dir` with the handle record `handle` in it, written
    /// before the move: the directory never appears under the root without
    /// its own record. `false` when there is no spare or it could not be
    /// used (then it is removed, and the caller makes a directory anew);
    /// `dir` must not exist.
    pub(crate) fn take_into(&self, dir: &Path, handle: &[u8]) -> bool {
        let Some((spare, has_work)) = self.0.inner.lock().ok().and_then(|mut i| i.kept.pop())
        else {
            return false;
        };
        // A new `work/` unless the last test's sweep was quiet: a process
        // of it that escaped the sweep (one that cleared its environment)
        // keeps its working directory in the old one, removed, where
        // nothing can be made.
        let used = write_in_place(&spare.join(HANDLE_FILE), handle)
            .and_then(|()| {
                if has_work {
                    Ok(())
                } else {
                    std::fs::create_dir(spare.join("work"))
                }
            })
            .and_then(|()| std::fs::rename(&spare, dir));
        if used.is_err() {
            let _ = std::fs::remove_dir_all(&spare);
        }
        used.is_ok()
    }

    /// Keep the execution directory `dir` (flat layout) as a spare when
    /// nothing in it came from the test; whether it was kept (when not, the
    /// caller removes it). Its process-group record is blanked first. Its
    /// empty `work/` is kept with it when `quiet` (no process the test may
    /// have started is alive: [`crate::process::Sweep::quiet`]), else
    /// removed.
    pub(crate) fn keep(&self, dir: &Path, quiet: bool) -> bool {
        let (fresh, name) = {
            let Ok(mut inner) = self.0.inner.lock() else {
                return false;
            };
            if inner.kept.len() >= MAX_SPARES {
                return false;
            }
            let Some(fresh) = inner.fresh else {
                return false;
            };
            if !inner.ready {
                if prepare(&self.0.dir).is_err() {
                    return false;
                }
                inner.ready = true;
            }
            inner.made += 1;
            (fresh, self.0.dir.join(inner.made.to_string()))
        };
        if !untouched(dir, fresh) || (!quiet && std::fs::remove_dir(dir.join("work")).is_err()) {
            return false;
        }
        let group = dir.join(GROUP_FILE);
        if group.exists() && write_in_place(&group, b"null").is_err() {
            return false;
        }
        if std::fs::rename(dir, &name).is_err() {
            return false;
        }
        if let Ok(mut inner) = self.0.inner.lock() {
            inner.kept.push((name, quiet));
        }
        true
    }
}

/// Whether `dir` holds only what the runner made, as it made it: `work/`
/// (an empty directory) and the two records, both directories with the
/// mode and owner of a fresh one.
fn untouched(dir: &Path, fresh: Fresh) -> bool {
    let same = |path: &Path| {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && Fresh::of(&m) == fresh)
    };
    let work = dir.join("work");
    if !same(dir) || !same(&work) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        let name = entry.file_name();
        // A record is a plain file of the runner's own, never a link the
        // test made to another file (which its rewrite would change).
        let known = name == "work"
            || ((name == HANDLE_FILE || name == GROUP_FILE)
                && std::fs::symlink_metadata(entry.path())
                    .is_ok_and(|m| m.is_file() && m.nlink() == 1 && m.uid() == fresh.uid));
        if !known {
            return false;
        }
    }
    std::fs::read_dir(&work).is_ok_and(|mut e| e.next().is_none())
}

/// Make this runner's spare directory; remove those of processes that
/// are gone.
fn prepare(own: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(own)?;
    if let Some(parent) = own.parent() {
        remove_gone(parent);
    }
    Ok(())
}

/// Remove the spare directories under `parent` (named `<pid>.<runner>`) of
/// processes that are gone: a pid that no longer exists (a reused pid
/// keeps its spares until that process is gone too).
fn remove_gone(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let gone = entry
            .file_name()
            .to_str()
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<i32>().ok())
            .is_some_and(|pid| {
                matches!(
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                    Err(nix::errno::Errno::ESRCH)
                )
            });
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Replace the contents of the small file `path` with `bytes` in place:
/// no new inode (and on ext4 no new block while it fits in the one it
/// has). A torn write reads as a record that does not parse, as for the
/// records written at provision.
pub(crate) fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(root: &Path, name: &str, spares: &Spares) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("work")).unwrap();
        std::fs::write(dir.join(HANDLE_FILE), b"{\"old\":true}").unwrap();
        spares.saw_fresh(&dir.join("work"));
        dir
    }

    #[test]
    fn a_clean_directory_is_kept_and_taken_with_the_new_record() {
        let root = tempfile::tempdir().unwrap();
        let spares = Spares::new(root.path());
        let dir = made(root.path(), "exec-a", &spares);
        std::fs::write(dir.join(GROUP_FILE), b"{\"pgid\":12345}").unwrap();
        assert!(spares.keep(&dir, false));
        assert!(!dir.exists());

        let next = root.path().join("exec-b");
        assert!(spares.take_into(&next, b"{\"new\":1}"));
        assert_eq!(
            std::fs::read(next.join(HANDLE_FILE)).unwrap(),
            b"{\"new\":1}"
        );
        assert_eq!(std::fs::read(next.join(GROUP_FILE)).unwrap(), b"null");
        assert!(next.join("work").is_dir());
        // Nothing left to take.
        assert!(!spares.take_into(&root.path().join("exec-c"), b"{}"));
    }

    #[test]
    fn work_is_made_anew_unless_the_sweep_was_quiet() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let spares = Spares::new(root.path());
        for quiet in [false, true] {
            let dir = made(root.path(), "exec-a", &spares);
            let before = std::fs::metadata(dir.join("work")).unwrap().ino();
            // Something holds the old `work/` open meanwhile, so its inode
            // number cannot come back for a new directory.
            let _held = std::fs::File::open(dir.join("work")).unwrap();
            assert!(spares.keep(&dir, quiet));
            let next = root.path().join("exec-b");
            assert!(spares.take_into(&next, b"{}"));
            let after = std::fs::metadata(next.join("work")).unwrap().ino();
            assert_eq!(before == after, quiet, "quiet: {quiet}");
            std::fs::remove_dir_all(&next).unwrap();
        }
    }

    #[test]
    fn a_directory_the_test_touched_is_not_kept() {
        let root = tempfile::tempdir().unwrap();
        let spares = Spares::new(root.path());
        type Touch = fn(&Path);
        let touches: [(&str, Touch); 6] = [
            ("a file in work/", |d| {
                std::fs::write(d.join("work/out.txt"), b"x").unwrap()
            }),
            ("a file beside work/", |d| {
                std::fs::write(d.join("note"), b"x").unwrap()
            }),
            ("work/ replaced by a symlink", |d| {
                std::fs::remove_dir(d.join("work")).unwrap();
                std::os::unix::fs::symlink("/tmp", d.join("work")).unwrap();
            }),
            ("work/ made world-writable", |d| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(d.join("work"), std::fs::Permissions::from_mode(0o777))
                    .unwrap();
            }),
            ("a directory where a record goes", |d| {
                std::fs::create_dir(d.join(GROUP_FILE)).unwrap()
            }),
            ("a record hard-linked to another file", |d| {
                std::fs::write(d.join("../outside"), b"x").unwrap();
                std::fs::remove_file(d.join(HANDLE_FILE)).unwrap();
                std::fs::hard_link(d.join("../outside"), d.join(HANDLE_FILE)).unwrap();
            }),
        ];
        for (what, touch) in touches {
            let dir = made(root.path(), "exec-t", &spares);
            touch(&dir);
            assert!(!spares.keep(&dir, false), "kept although {what}");
            assert!(dir.exists(), "{what}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn spares_of_a_process_that_is_gone_are_removed() {
        let root = tempfile::tempdir().unwrap();
        // A pid above pid_max's largest value (4194304) is never alive.
        let gone = root.path().join(SPARE_DIR).join("99999999.0");
        std::fs::create_dir_all(gone.join("1/work")).unwrap();
        let spares = Spares::new(root.path());
        let dir = made(root.path(), "exec-a", &spares);
        assert!(spares.keep(&dir, false));
        assert!(!gone.exists());
    }

    #[test]
    fn spares_go_with_the_last_clone() {
        let root = tempfile::tempdir().unwrap();
        let spares = Spares::new(root.path());
        let dir = made(root.path(), "exec-a", &spares);
        assert!(spares.keep(&dir, false));
        let other = spares.clone();
        drop(spares);
        assert!(root.path().join(SPARE_DIR).exists());
        // A killed process's spares, left since this runner kept its first.
        std::fs::create_dir_all(root.path().join(SPARE_DIR).join("99999999.3/1/work")).unwrap();
        drop(other);
        assert!(!root.path().join(SPARE_DIR).exists());
    }

    #[test]
    fn at_most_max_spares_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let spares = Spares::new(root.path());
        for i in 0..MAX_SPARES {
            let dir = made(root.path(), &format!("exec-{i}"), &spares);
            assert!(spares.keep(&dir, false));
        }
        let dir = made(root.path(), "exec-more", &spares);
        assert!(!spares.keep(&dir, false));
    }
}
