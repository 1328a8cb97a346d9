//! A real container engine for tests: Podman from Debian (installed when
//! absent) serving the Docker-compatible API on a unix socket in a short
//! temp dir, with a test image built locally from `busybox-static`.
//!
//! Facts measured on these machines (cgroup v1 hybrid, kernel 6.x, Debian
//! 12, Podman 4.3):
//! - crun does not work here; runc does, with `cgroup_manager = "cgroupfs"`
//!   and `events_logger = "file"` (no systemd, no journald).
//! - No image registry is reachable, so the test image is a root file
//!   system of busybox-static (applet links, `/etc/passwd` and `/etc/group`
//!   with a non-root user `tester`, uid 1000), `tar` + `podman import`:
//!   about 0.2 s.
//! - The API ignores containers.conf's `netns = "none"`; runners must send
//!   `HostConfig.NetworkMode` themselves.
//! - Podman runs as root here (the tests run as root; rootless needs a
//!   user with subuids and a login session), with its own vfs storage,
//!   state and temp dirs under the instance's dir, so instances never share
//!   anything with each other or with a system Podman.
//!
//! The service stops when its stdin, a pipe from the test process, closes:
//! on drop, or when the test process dies (even by SIGKILL). Dirs of dead
//! test processes are swept (their containers removed, mounts released) by
//! the next start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The test image's name.
pub const IMAGE: &str = "localhost/orch-test:busybox";
/// The non-root user in the test image (`tester`).
pub const TEST_UID: u32 = 1000;
/// How long the service may take to answer after it starts.
const START_BOUND: Duration = Duration::from_secs(30);
/// The dir prefix under /tmp (unix socket paths must stay under 107 bytes).
const DIR_PREFIX: &str = "opm-";

const PACKAGES: &[&str] = &[
    "podman",
    "runc",
    "uidmap",
    "slirp4netns",
    "fuse-overlayfs",
    "busybox-static",
];

/// A running Podman API service; stopped (its containers removed, its
/// files deleted) on drop.
#[derive(Debug)]
pub struct Podman {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
}

/// Install Podman and busybox-static when absent.
pub fn ensure_installed() -> Result<(), String> {
    crate::debian::ensure_packages(Path::new("/usr/bin/podman"), PACKAGES)?;
    crate::debian::ensure_packages(Path::new("/usr/bin/runc"), PACKAGES)?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() || !is_static(busybox) {
        // The dynamic `busybox` package may hold the path; the static one
        // replaces it.
        crate::run(
            Command::new("apt-get")
                .args([
                    "-q",
                    "-y",
                    "--no-install-recommends",
                    "install",
                    "busybox-static",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install busybox-static",
        )?;
    }
    if is_static(busybox) {
        Ok(())
    } else {
        Err(format!(
            "{} is not statically linked; install busybox-static",
            busybox.display()
        ))
    }
}

/// Whether an ELF file has no program interpreter (a static binary): the
/// interpreter's path sits in the first page of a dynamic one.
fn is_static(path: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(n) = file.read(&mut head) else {
        return false;
    };
    let head = &head[..n];
    head.starts_with(b"\x7fELF") && !head.windows(7).any(|w| w == b"ld-linu")
}

impl Podman {
    /// One service for the whole test binary, started on first use.
    pub fn shared() -> Result<&'static Podman, String> {
        static SHARED: OnceLock<Result<Podman, String>> = OnceLock::new();
        SHARED
            .get_or_init(Podman::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Install (if needed), configure, build the test image and start a service.
    pub fn start() -> Result<Podman, String> {
        ensure_installed()?;
        sweep_stale_dirs();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/{DIR_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut podman = Podman {
            child: None,
            stdin: None,
            dir,
        };
        podman.write_config()?;
        podman.build_image()?;
        podman.launch()?;
        Ok(podman)
    }

    fn write_config(&self) -> Result<(), String> {
        let d = self.dir.display();
        let containers_conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             netns = \"none\"\n\
             log_driver = \"k8s-file\"\n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\n\
             tmp_dir = \"{d}/tmp\"\n\
             volume_path = \"{d}/storage/volumes\"\n\
             static_dir = \"{d}/storage/libpod\"\n\
             [network]\n\
             network_config_dir = \"{d}/networks\"\n"
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n"
        );
        for (name, text) in [
            ("containers.conf", containers_conf),
            ("storage.conf", storage_conf),
        ] {
            let path = self.dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        for sub in ["tmp", "networks"] {
            let path = self.dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// The environment every podman command of this instance runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "CONTAINERS_CONF".into(),
                self.dir.join("containers.conf").display().to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.dir.join("storage.conf").display().to_string(),
            ),
            ("DOCKER_HOST".into(), self.endpoint()),
        ]
    }

    /// A `podman` CLI command for this instance's storage.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.envs(self.env()).stdin(Stdio::null());
        cmd
    }

    /// The root file system of the test image, tarred and imported.
    fn build_image(&self) -> Result<(), String> {
        let root = self.dir.join("rootfs");
        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))
        };
        for sub in ["bin", "etc", "tmp", "root", "home/tester"] {
            mkdir(&root.join(sub))?;
        }
        let bin = root.join("bin");
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .map_err(|e| format!("copying /bin/busybox: {e}"))?;
        let list = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .map_err(|e| format!("busybox --list: {e}"))?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            // `busybox` itself is in the list; a link to itself would
            // replace the binary.
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            std::os::unix::fs::symlink("busybox", bin.join(applet))
                .map_err(|e| format!("linking applet {applet}: {e}"))?;
        }
        let files = [
            (
                "etc/passwd",
                format!(
                    "root:x:0:0:root:/root:/bin/sh\n\
                     tester:x:{TEST_UID}:{TEST_UID}:tester:/home/tester:/bin/sh\n\
                     nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                ),
            ),
            (
                "etc/group",
                format!("root:x:0:\ntester:x:{TEST_UID}:\nnogroup:x:65534:\n"),
            ),
        ];
        for (name, text) in files {
            let path = root.join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod tmp: {e}"))?;
        std::os::unix::fs::chown(root.join("home/tester"), Some(TEST_UID), Some(TEST_UID))
            .map_err(|e| format!("chown home/tester: {e}"))?;
        let tarball = self.dir.join("rootfs.tar");
        crate::run(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
            "tar of the test image",
        )?;
        crate::run(
            self.cli()
                .args([
                    "import",
                    "--quiet",
                    "--change",
                    "CMD [\"/bin/sh\"]",
                    "--change",
                    "ENV PATH=/bin",
                ])
                .arg(&tarball)
                .arg(IMAGE),
            "podman import",
        )?;
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(&tarball);
        Ok(())
    }

    fn launch(&mut self) -> Result<(), String> {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        // The watcher reads the pipe through fd 3 and stops the service,
        // which the shell became by `exec`, when the pipe closes.
        let script = "exec 3<&0; (cat <&3 >/dev/null; kill -TERM $$) & \
                      exec podman system service --time=0 \"unix://$0\" 2>\"$1\" 3<&-";
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&socket)
            .arg(self.dir.join("service.log"))
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting podman system service: {e}"))?;
        let mut child = child;
        self.stdin = child.stdin.take();
        let started = crate::wait_ready(&mut child, START_BOUND, || ping(&socket));
        self.child = Some(child);
        match started {
            crate::Started::Ready => Ok(()),
            crate::Started::Exited(status) => {
                let log = std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default();
                self.child = None;
                Err(format!("podman system service exited ({status}): {log}"))
            }
            crate::Started::TimedOut => {
                self.shutdown();
                Err(format!(
                    "podman system service: no answer on {} within {START_BOUND:?}",
                    socket.display()
                ))
            }
        }
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// `unix:///tmp/opm-.../api.sock`, for `DOCKER_HOST` or a runner config.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The test image ([`IMAGE`]).
    pub fn image(&self) -> &'static str {
        IMAGE
    }

    /// The ids of this instance's containers whose labels include `label`
    /// (`key=value`), running or not.
    pub fn containers_with_label(&self, label: &str) -> Result<Vec<String>, String> {
        let out = self
            .cli()
            .args(["ps", "-a", "-q", "--no-trunc", "--filter"])
            .arg(format!("label={label}"))
            .output()
            .map_err(|e| format!("podman ps: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "podman ps failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect())
    }

    fn shutdown(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
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

/// One `GET /_ping` over the socket.
fn ping(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.0 200") || buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// Remove every container of the instance in `dir`, release mounts left
/// below it, and delete it.
fn clean_dir(dir: &Path) {
    let conf = dir.join("containers.conf");
    if conf.exists() {
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    // shm and other mounts of containers that were never removed.
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let prefix = format!("{}/", dir.display());
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount")
                .args(["-l", point])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Clean the dirs of instances whose test process is gone.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            clean_dir(&entry.path());
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.shutdown();
        clean_dir(&self.dir);
    }
}
