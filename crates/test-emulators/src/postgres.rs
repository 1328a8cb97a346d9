//! A real PostgreSQL server for tests: Debian's package (installed when
//! absent), a cluster made by `initdb` in a short temp dir, `postgres`
//! listening on 127.0.0.1 at a free port and on a unix socket in that dir,
//! stopped on drop and when the test process dies (even by SIGKILL).
//!
//! Facts measured on these machines: initdb takes under a second, the
//! server answers within 0.2 s; `initdb` refuses to run as root, so as root
//! the cluster belongs to a system user made for it; a unix socket path
//! must stay under 107 bytes, hence the short dir under /tmp; port 0 is not
//! supported, so a free port is picked and a failed start retried.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The system user that owns test clusters when tests run as root.
const CLUSTER_USER: &str = "orch-pg";
/// The database role tests connect as (a superuser of the test cluster).
pub const ROLE: &str = "orchestrator";
/// How long the server may take to accept connections.
const START_BOUND: Duration = Duration::from_secs(30);

/// A running PostgreSQL server; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

/// The newest PostgreSQL `bin` directory Debian installed.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// Install the server when absent; returns its `bin` directory.
pub fn ensure_installed() -> Result<PathBuf, String> {
    if let Some(bin) = bin_dir() {
        return Ok(bin);
    }
    // The probe is any version's postgres; `postgresql` pulls the current one.
    crate::debian::ensure_packages(Path::new("/usr/bin/pg_config"), &["postgresql"])
        .or_else(|e| bin_dir().map(|_| ()).ok_or(e))?;
    bin_dir()
        .ok_or_else(|| "postgresql installed, but no /usr/lib/postgresql/*/bin/postgres".into())
}

/// `(uid, gid)` of the cluster user, made if missing; `None` when not root.
fn cluster_owner() -> Result<Option<(u32, u32)>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, CLUSTER_USER])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        // A concurrent test binary may win the race; only the result counts.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                CLUSTER_USER,
            ])
            .output();
    }
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
        _ => Err(format!(
            "cannot create the system user `{CLUSTER_USER}` that owns test clusters (initdb refuses root)"
        )),
    }
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Postgres {
    /// Install (if needed), initialise and start a server.
    pub fn start() -> Result<Postgres, String> {
        let bin = ensure_installed()?;
        let owner = cluster_owner()?;
        sweep_stale_dirs();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/opg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let mut pg = Postgres {
            child: None,
            stdin: None,
            dir,
            port: 0,
            bin,
            owner,
        };
        crate::run(
            as_owner(
                Command::new(pg.bin.join("initdb"))
                    .arg("-D")
                    .arg(pg.data())
                    .args(["-U", ROLE, "--auth=trust", "--no-sync", "-E", "UTF8"])
                    .env("LC_ALL", "C"),
                owner,
            ),
            "initdb",
        )?;
        let mut last = String::new();
        for _ in 0..3 {
            pg.port = crate::free_port()?;
            match pg.launch() {
                Ok(()) => return Ok(pg),
                Err(e) => last = e,
            }
        }
        Err(format!("PostgreSQL did not start: {last}"))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Start the server on `self.port` and wait until it accepts connections.
    fn launch(&mut self) -> Result<(), String> {
        // The server stops (fast shutdown) when its stdin, a pipe from this
        // process, closes: on drop, or when this process dies. A watcher
        // reads the pipe through fd 3 (an asynchronous list's own stdin is
        // /dev/null) and signals the server, which the shell became by
        // `exec` (a background job would ignore SIGINT).
        let script = format!(
            "exec 3<&0; (cat <&3 >/dev/null; kill -INT $$) & \
             exec \"$0\" -D \"$1\" -k \"$2\" -p {port} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 2>\"$2/server.log\" 3<&-",
            port = self.port
        );
        let child = as_owner(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(self.bin.join("postgres"))
                .arg(self.data())
                .arg(&self.dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            self.owner,
        )
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
        self.stdin = None;
        let mut child = child;
        self.stdin = child.stdin.take();
        let started = crate::wait_ready(&mut child, START_BOUND, || self.ready());
        self.child = Some(child);
        match started {
            crate::Started::Ready => Ok(()),
            crate::Started::Exited(status) => {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                self.child = None;
                Err(format!("postgres exited ({status}): {log}"))
            }
            crate::Started::TimedOut => {
                self.shutdown();
                Err(format!(
                    "no answer on 127.0.0.1:{} within {START_BOUND:?}",
                    self.port
                ))
            }
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A `postgres://` URL for database `db` over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// Run one SQL statement with psql as the superuser, in database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE])
            .args(["-d", db, "-c", sql])
            .output()
            .map_err(|e| format!("psql: cannot start: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql `{sql}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A fresh, empty database; returns its URL. Each test takes its own.
    pub fn fresh_database(&self) -> Result<String, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}_{:04x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            fastrand_u16()
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Stop the server (fast shutdown), keeping its data: for tests of a
    /// lost connection. [`Postgres::restart`] starts it again on the same port.
    pub fn stop(&mut self) {
        self.shutdown();
    }

    /// Start a stopped server again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.shutdown();
        self.launch()
    }

    fn shutdown(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Remove the dirs of servers whose test process is gone (a server held in
/// a `static` is never dropped; it stops when its process exits, its dir
/// stays behind).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("opg-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A little randomness without another dependency.
fn fastrand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
