//! Headless Chromium for browser tests: Debian's `chromium` and
//! `chromium-driver` (installed when absent), chromedriver started on a
//! free loopback port and stopped on drop, and the browser arguments a
//! container needs (as root Chromium refuses to start without
//! `--no-sandbox`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The chromedriver binary Debian installs.
pub const DRIVER: &str = "/usr/bin/chromedriver";
/// The browser binary Debian installs.
pub const BROWSER: &str = "/usr/bin/chromium";

/// Make sure Chromium and its driver are installed.
pub fn ensure_installed() -> Result<(), String> {
    crate::debian::ensure_packages(Path::new(DRIVER), &["chromium", "chromium-driver"])?;
    if Path::new(BROWSER).exists() {
        Ok(())
    } else {
        Err(format!("{BROWSER} is missing after installing chromium"))
    }
}

/// The `goog:chromeOptions` arguments of a headless, quiet browser with a
/// fixed window size.
pub fn browser_args(width: u32, height: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(format!("--window-size={width},{height}"));
    if nix::unistd::geteuid().is_root() {
        args.push("--no-sandbox".into());
    }
    args
}

/// A running chromedriver on 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    /// Install when needed, start chromedriver on a free loopback port and
    /// wait (at most 30 s) until it answers.
    pub fn start() -> Result<Self, String> {
        ensure_installed()?;
        let port = crate::free_port()?;
        let child = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {DRIVER}: {e}"))?;
        let mut driver = Self { child, port };
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(driver);
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                return Err(format!("chromedriver exited at start: {status}"));
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "chromedriver did not listen on port {port} within 30 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its WebDriver URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
