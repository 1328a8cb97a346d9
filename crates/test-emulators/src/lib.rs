#![doc = include_str!("../README.md")]

pub mod aws;
pub mod chromium;
pub mod debian;
pub mod podman;
pub mod postgres;
pub mod ssm;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The pinned requirements installed into the venv.
const REQUIREMENTS: &str = include_str!("../requirements.txt");

/// How long moto's server may take to answer after it starts.
const START_BOUND: Duration = Duration::from_secs(60);

/// The region every emulator-backed test uses.
pub const REGION: &str = "us-east-1";

/// The directory the emulators live in: `$ORCH_EMULATORS_DIR`, or
/// `target/emulators` under the workspace root.
pub fn emulators_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORCH_EMULATORS_DIR") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    root.join("target").join("emulators")
}

/// Make sure the venv exists with the pinned packages; returns its root.
///
/// Idempotent and quick when already done: a stamp file holding the
/// requirements' text says what was installed. A file lock serialises
/// concurrent test binaries.
pub fn ensure_venv() -> Result<PathBuf, String> {
    let dir = emulators_dir();
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let venv = dir.join("venv");
    let stamp = venv.join(".orchestrator-requirements");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENTS) {
        return Ok(venv);
    }
    let lock_path = dir.join(".install.lock");
    let lock =
        File::create(&lock_path).map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    // Another process may have finished while this one waited.
    if fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENTS) {
        return Ok(venv);
    }
    let python = std::env::var("ORCH_PYTHON").unwrap_or_else(|_| "python3".to_string());
    if !venv.join("bin").join("python").exists() {
        eprintln!("test-emulators: creating a venv at {}", venv.display());
        run(
            Command::new(&python).arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )?;
    }
    let req = dir.join("requirements.txt");
    fs::write(&req, REQUIREMENTS).map_err(|e| format!("writing {}: {e}", req.display()))?;
    eprintln!(
        "test-emulators: pip install -r {} (once; about a minute)",
        req.display()
    );
    run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&req),
        "pip install",
    )?;
    fs::write(&stamp, REQUIREMENTS).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    Ok(venv)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The venv's `bin` directory (where `aws` and `moto_server` live).
pub fn venv_bin() -> Result<PathBuf, String> {
    Ok(ensure_venv()?.join("bin"))
}

/// Credentials and region for anything that talks to an emulator. They are
/// dummies: moto accepts any.
pub fn dummy_credentials() -> [(&'static str, &'static str); 4] {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_REGION", REGION),
    ]
}

/// A running moto server; stopped on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

/// The server, with one change to moto: its SQS ReceiveMessage checks a
/// message's visibility and marks it received without a lock, so two
/// concurrent receivers can both get the same message (seen with three
/// workers on one queue). Each scan runs under a lock here, and the long
/// poll waits between scans outside it, as SQS itself behaves.
const SERVER_SCRIPT: &str = r#"
import sys, threading, time
from moto.sqs import models as sqs_models
_receive_lock = threading.Lock()
_receive = sqs_models.SQSBackend.receive_message
def _atomic_receive(self, queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names=None):
    end = time.time() + (wait_seconds_timeout or 0)
    while True:
        with _receive_lock:
            result = _receive(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        if result or time.time() >= end:
            return result
        time.sleep(0.05)
sqs_models.SQSBackend.receive_message = _atomic_receive
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"#;

impl Moto {
    /// Install (if needed) and start moto's server on a free loopback port.
    pub fn start() -> Result<Moto, String> {
        let bin = venv_bin()?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            match Self::start_on(&bin, port) {
                Ok(moto) => return Ok(moto),
                Err(e) => last = e,
            }
        }
        Err(format!("moto's server did not start: {last}"))
    }

    fn start_on(bin: &Path, port: u16) -> Result<Moto, String> {
        let mut child = Command::new(bin.join("python"))
            .arg("-c")
            .arg(SERVER_SCRIPT)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting moto: {e}"))?;
        let stdin = child.stdin.take();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let moto = Moto { child, stdin, addr };
        let started = Instant::now();
        loop {
            if http_get(addr, "/moto-api/").is_ok() {
                return Ok(moto);
            }
            if started.elapsed() > START_BOUND {
                return Err(format!("no answer on {addr} within {START_BOUND:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Environment for a subprocess (aws cli, the orchestrator binary) that
    /// should talk to this server through the standard variables.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = dummy_credentials()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("AWS_ENDPOINT_URL".to_string(), self.endpoint()));
        env
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released; a retry covers the race).
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading the bound port: {e}"))
}

/// A minimal HTTP GET; returns the status line.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    if text.starts_with("HTTP/") {
        Ok(text.lines().next().unwrap_or_default().to_string())
    } else {
        Err(format!("not an HTTP answer: {text:?}"))
    }
}

/// How a server this crate just started came up.
pub(crate) enum Started {
    /// It answers.
    Ready,
    /// Its process exited first, with this status.
    Exited(std::process::ExitStatus),
    /// It neither answered nor exited within the bound.
    TimedOut,
}

/// Poll `ready` every 50 ms until it answers, `child` exits, or `bound`
/// passes: the start-up wait every server here shares.
pub(crate) fn wait_ready(
    child: &mut std::process::Child,
    bound: Duration,
    mut ready: impl FnMut() -> bool,
) -> Started {
    let started = std::time::Instant::now();
    loop {
        if ready() {
            return Started::Ready;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Started::Exited(status);
        }
        if started.elapsed() > bound {
            return Started::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
