//! Debian packages a test needs, installed on first use.
//!
//! The machines this project is tested on start without some servers
//! (PostgreSQL, Podman, Chromium); the test set-up installs them with
//! `apt-get` when a probe file is missing. Idempotent and quick when
//! present: only the probe is checked. A file lock serialises concurrent
//! test binaries.

use std::fs::File;
use std::path::Path;
use std::process::Command;

/// Make sure `packages` are installed; `probe` is a file that exists once
/// they are (the program a test runs).
pub fn ensure_packages(probe: &Path, packages: &[&str]) -> Result<(), String> {
    if probe.exists() {
        return Ok(());
    }
    let dir = crate::emulators_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock_path = dir.join(".apt.lock");
    let lock =
        File::create(&lock_path).map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if probe.exists() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "{} is missing and installing {} needs root: run `sudo apt-get install -y {}`",
            probe.display(),
            packages.join(" "),
            packages.join(" ")
        ));
    }
    eprintln!(
        "test-emulators: apt-get install {} (once; {} is missing)",
        packages.join(" "),
        probe.display()
    );
    let install = |update: bool| -> Result<(), String> {
        if update {
            crate::run(
                Command::new("apt-get")
                    .args(["-q", "update"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "apt-get update",
            )?;
        }
        crate::run(
            Command::new("apt-get")
                .args(["-q", "-y", "--no-install-recommends", "install"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install",
        )
    };
    // A stale package index is the usual reason an install fails on a
    // fresh machine; update only then, it takes a while.
    if install(false).is_err() {
        install(true)?;
    }
    if probe.exists() {
        Ok(())
    } else {
        Err(format!(
            "installed {} but {} is still missing",
            packages.join(" "),
            probe.display()
        ))
    }
}
