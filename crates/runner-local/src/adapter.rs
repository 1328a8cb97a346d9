//! The `RunnerAdapter` implementation for local processes.

use std::path::Path;

use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, ArtifactLocation, BenchSpec,
    Capabilities, ConfigError, ExecutionError, ListOwnedError, LogStream, OwnedResource,
    ProvisionError, RunContext, RunnerAdapter, RunnerConfig, RunnerHandle, TeardownError,
    TestPayload, TestResult, decode_spec,
};

use crate::config::{LocalBench, LocalConfig};
use crate::io::{fs_work, io_error};
use crate::spare::Spares;
use crate::state::{HANDLE_FILE, LocalState, dir_name, list_dirs, read_handle_file};
use crate::{RUNNER_TYPE, artifacts, process, run};

/// Runs payloads as local processes; see the crate docs.
#[derive(Debug, Clone)]
pub struct LocalProcessRunner {
    config: LocalConfig,
    swept: process::Swept,
    spares: Spares,
}

impl LocalProcessRunner {
    /// A runner with `config`.
    pub fn new(config: LocalConfig) -> Self {
        Self {
            spares: Spares::new(&config.root),
            config,
            swept: process::Swept::default(),
        }
    }

    /// A runner from a runner config (`backend` section and `artifacts_dir`).
    pub fn from_config(config: &RunnerConfig) -> Result<Self, ConfigError> {
        LocalConfig::from_runner_config(config).map(Self::new)
    }

    /// The settings in force.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }
}

#[runner_core::async_trait]
impl RunnerAdapter for LocalProcessRunner {
    fn runner_type(&self) -> &str {
        RUNNER_TYPE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_live_logs(true)
            .with_idempotent_teardown(true)
            .with_leak_listing(true)
    }

    fn validate(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        payload: &TestPayload,
    ) -> Result<(), ProvisionError> {
        let spec: LocalBench = decode_spec(ctx, &bench.backend, "bench.backend")?;
        spec.validate()
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        let _: crate::config::LocalPayload = decode_spec(ctx, &payload.backend, "payload.backend")?;
        if payload.command.first().is_none_or(|p| p.is_empty()) {
            return Err(ProvisionError::invalid_spec(
                ctx,
                "payload.command",
                "must name a program",
            ));
        }
        if let Some(package) = payload.package.as_deref()
            && !package.contains("://")
            && std::fs::symlink_metadata(package).is_err()
        {
            return Err(ProvisionError::invalid_spec(
                ctx,
                "payload.package",
                format!("{package}: no such file or directory"),
            ));
        }
        Ok(())
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        let spec: LocalBench = decode_spec(ctx, &bench.backend, "bench.backend")?;
        spec.validate()
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        let name = dir_name(spec.workdir_prefix.as_deref(), ctx.execution_key());
        let state = LocalState {
            dir: self.config.root.join(name),
            execution_key: ctx.execution_key().to_owned(),
            worker: ctx.worker_id().to_owned(),
            flat: true,
        };
        let handle_path = state.meta().join(HANDLE_FILE);
        let handle = RunnerHandle::new(
            RUNNER_TYPE,
            state.dir.display().to_string(),
            ctx.execution_id(),
            &state,
        )
        .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))?;
        // A few metadata calls on the execution's own directory: small
        // work, done in place (see `fs_work`).
        let dir = state.dir.clone();
        // The records go in the directory itself, made with `work/`.
        let work = state.work();
        let json = handle.to_json();
        let spares = self.spares.clone();
        let made = fs_work(true, move || -> std::io::Result<Option<RunnerHandle>> {
            if let Some((_, text)) = read_handle_file(&dir)
                && let Ok(existing) = RunnerHandle::from_json(&text)
            {
                // A redelivered or retried execution adopts its directory
                // (in the layout it was made with), if it is whole. Records
                // without `work/` are what a teardown cut short by a crash
                // leaves: finish removing them and start afresh.
                if work.is_dir() {
                    return Ok(Some(existing));
                }
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            let made = (|| {
                // A clean directory an earlier test of this process left,
                // with this handle written in before it moves here.
                if std::fs::symlink_metadata(&dir).is_err()
                    && spares.take_into(&dir, json.as_bytes())
                {
                    return Ok(());
                }
                let made_now = !work.exists();
                std::fs::create_dir_all(&work)?;
                if made_now {
                    spares.saw_fresh(&work);
                }
                // One small write in place, no temporary file and rename
                // (a metadata operation fewer per test): a torn file reads
                // as no handle, and the next provision writes it again.
                std::fs::write(&handle_path, json)
            })();
            if let Err(err) = made {
                // Leave nothing half-made behind.
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err);
            }
            Ok(None)
        })
        .await;
        match made {
            Ok(Ok(Some(existing))) => return Ok(existing),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => {
                return Err(io_error(
                    ctx,
                    &format!("cannot create {}", state.dir.display()),
                    err,
                ));
            }
            Err(panic) => {
                return Err(ProvisionError::permanent(
                    ctx,
                    format!("provisioning panicked: {panic}"),
                ));
            }
        }
        Ok(handle)
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        run::run_test(&self.config, &self.swept, ctx, handle, payload).await
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let state: LocalState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let globs = artifacts::compile(&payload.artifacts)
            .map_err(|(field, message)| ArtifactError::invalid_spec(ctx, field, message))?;
        // The id names the execution's artifact directory (made below
        // unless the test was silent): refused alike either way.
        runner_core::safe_path::validate_name(ctx.execution_id())
            .map_err(|e| ArtifactError::permanent(ctx, e.to_string()))?;
        let empty = self.config.artifacts_dir.join(EMPTY_LOG);
        // A silent test with no artifact patterns: two entries naming the
        // shared empty log, small work. Logs with content are hashed (and
        // copied where no link can be made), patterns walk the test's
        // tree: on the pool.
        let small = payload.artifacts.is_empty() && !state.logs().iter().any(|log| log.exists());
        if small {
            // Nothing to keep but two empty logs: both name the shared
            // empty file, and no directory is made for the execution
            // (unless the shared file is not there as it should be: then
            // as below).
            let empty = empty.clone();
            if let Ok(Some(bundle)) = fs_work(true, move || silent_logs(&empty)).await {
                return Ok(bundle);
            }
        }
        let dest = artifacts::destination(&self.config.artifacts_dir, ctx.execution_id())
            .map_err(|message| ArtifactError::permanent(ctx, message))?;
        let redactor = payload.redactor();
        let outcome = fs_work(small, move || -> std::io::Result<_> {
            // Named in the error: a misconfigured `artifacts_dir` (a file,
            // no permission) is found from the message alone.
            std::fs::create_dir_all(&dest).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dest.display()))
            })?;
            let mut bundle = ArtifactBundle::default();
            let mut taken = Vec::new();
            for stream in ["stdout", "stderr"] {
                let name = format!("logs/{stream}.log");
                let target = dest.join(&name);
                let source = state.log(stream);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if source.exists() {
                    // Already redacted as it was written.
                    link_or_copy(&source, &target)?;
                } else {
                    link_empty(&empty, &target)?;
                }
                bundle.artifacts.push(Artifact::from_local_file(
                    &name,
                    ArtifactKind::Log,
                    &target,
                )?);
                taken.push(name);
            }
            let (files, refused) =
                artifacts::collect(&state.work(), &dest, &globs, &redactor, &mut taken)?;
            bundle.artifacts.extend(files);
            Ok((bundle, refused))
        })
        .await;
        let (bundle, refused) = match outcome {
            Ok(Ok(done)) => done,
            Ok(Err(err)) => return Err(io_error(ctx, "collecting artifacts", err)),
            Err(panic) => {
                return Err(ArtifactError::permanent(
                    ctx,
                    format!("artifact collection panicked: {panic}"),
                ));
            }
        };
        for r in refused {
            tracing::warn!(name = %r.name, reason = %r.reason, "artifact refused");
            ctx.logs()
                .send(
                    LogStream::System,
                    &format!("artifact {:?} refused: {}", r.name, r.reason),
                )
                .await;
        }
        Ok(bundle)
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        let state: LocalState = handle.decode_in(ctx, RUNNER_TYPE)?;
        if let Some(record) = process::load(&state.group_file()) {
            record.kill();
        }
        let dir = state.dir.clone();
        // Whether no process of the test is left to write in the
        // directory; and whether none is left in it at all, even one that
        // escaped the sweep (then `work/` may serve the next test too).
        let (clean, quiet) = match self.swept.take(&dir) {
            Some(quiet) => (true, quiet),
            None => (
                fs_work(false, move || process::kill_marked(&dir, None).clean)
                    .await
                    .unwrap_or(false),
                false,
            ),
        };
        let dir = state.dir.clone();
        let work = state.work();
        let logs = state.logs();
        let (flat, spares) = (state.flat, self.spares.clone());
        let removed = fs_work(true, move || {
            // An empty `work/` and no logs leave only the small records:
            // done here (the directory kept for the next test where
            // nothing in it came from this one). A tree the test left, or
            // its logs (up to `max_log_bytes` each), go to the pool.
            if logs.iter().any(|log| log.exists()) {
                return None;
            }
            if clean && flat && spares.keep(&dir, quiet) {
                return Some(Ok(()));
            }
            match std::fs::remove_dir(&work) {
                Ok(()) => Some(std::fs::remove_dir_all(&dir)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(std::fs::remove_dir_all(&dir))
                }
                Err(_) => None,
            }
        })
        .await;
        let removed = match removed {
            Ok(Some(done)) => done,
            _ => {
                let dir = state.dir.clone();
                fs_work(false, move || std::fs::remove_dir_all(&dir))
                    .await
                    .unwrap_or_else(|panic| Err(std::io::Error::other(panic)))
            }
        };
        match removed {
            Ok(()) => Ok(()),
            // Already released: teardown is idempotent.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(
                ctx,
                &format!("cannot remove {}", state.dir.display()),
                e,
            )),
        }
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        let root = self.config.root.clone();
        let listed = fs_work(false, move || list_dirs(&root)).await;
        match listed {
            Ok(Ok(list)) => Ok(list),
            Ok(Err(e)) => Err(io_error(ctx, "listing working directories", e)),
            Err(panic) => Err(ListOwnedError::permanent(
                ctx,
                format!("listing panicked: {panic}"),
            )),
        }
    }
}

/// The shared empty file under `artifacts_dir` that the log of a silent
/// stream names (a silent test with no patterns) or links to.
const EMPTY_LOG: &str = ".empty.log";

/// An empty log at `target` as a hard link to the one shared, read-only
/// empty file `shared` (see [`shared_empty`]): no new inode for each
/// execution whose stream stayed silent, and on ext4 allocating inodes is
/// most of a short test's file-system cost. A fresh empty file where no
/// link can be made (the file system's link limit, a `shared` that is not
/// empty).
fn link_empty(shared: &Path, target: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if shared_empty(shared) && std::fs::hard_link(shared, target).is_ok() {
        return Ok(());
    }
    std::fs::write(target, b"")
}

/// The sha256 of no bytes.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A silent test's two logs, both naming the shared empty file `shared`
/// (its size and hash are those of no bytes: nothing to read); `None`
/// when that file is not a regular empty file this process can open.
fn silent_logs(shared: &Path) -> Option<ArtifactBundle> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(shared)
    };
    let file = match open() {
        Ok(file) => file,
        // The first silent test: made now.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && shared_empty(shared) => {
            open().ok()?
        }
        Err(_) => return None,
    };
    if !file.metadata().is_ok_and(|m| m.is_file() && m.len() == 0) {
        return None;
    }
    let mut bundle = ArtifactBundle::default();
    bundle.artifacts = ["stdout", "stderr"]
        .iter()
        .map(|stream| {
            Artifact::new(
                format!("logs/{stream}.log"),
                ArtifactKind::Log,
                ArtifactLocation::Local(shared.to_path_buf()),
                0,
                EMPTY_SHA256,
            )
        })
        .collect();
    Some(bundle)
}

/// Whether the shared, read-only empty file `shared` is there (made here
/// the first time) and still empty.
fn shared_empty(shared: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let empty = |m: std::fs::Metadata| m.is_file() && m.len() == 0;
    // There already (all but the first test): one `lstat`.
    if let Ok(meta) = std::fs::symlink_metadata(shared) {
        return empty(meta);
    }
    let make = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(shared)
    };
    let made = match make() {
        // `artifacts_dir` itself is not there yet (the first test).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            shared.parent().map_or(Err(e), |dir| {
                std::fs::create_dir_all(dir).and_then(|()| make())
            })
        }
        other => other,
    };
    match made {
        // Made now, or by an earlier execution (or another worker).
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return false,
    }
    std::fs::symlink_metadata(shared).is_ok_and(empty)
}

/// Put the finished log `source` at `target`: a hard link (no copy, no
/// new inode) where both are on one file system, else a copy.
fn link_or_copy(source: &Path, target: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if std::fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(source, target).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_tests_logs_name_the_shared_empty_file_with_the_hash_of_no_bytes() {
        assert_eq!(EMPTY_SHA256, runner_core::artifact::sha256_bytes(b""));
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("art").join(EMPTY_LOG);
        // Made the first time (with its directory), named by both logs.
        let bundle = silent_logs(&shared).unwrap();
        assert_eq!(bundle.artifacts.len(), 2);
        for (artifact, stream) in bundle.artifacts.iter().zip(["stdout", "stderr"]) {
            assert_eq!(artifact.name, format!("logs/{stream}.log"));
            let (size, sha) = runner_core::artifact::sha256_file(&shared).unwrap();
            assert_eq!(
                (artifact.size, artifact.sha256.as_str()),
                (size, sha.as_str())
            );
        }
        // Not empty any more, a link to an empty file, a directory: not
        // named (the test then gets a log directory of its own).
        std::fs::remove_file(&shared).unwrap();
        std::fs::write(&shared, b"x").unwrap();
        assert!(silent_logs(&shared).is_none());
        std::fs::remove_file(&shared).unwrap();
        let elsewhere = dir.path().join("empty");
        std::fs::write(&elsewhere, b"").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &shared).unwrap();
        assert!(silent_logs(&shared).is_none());
        std::fs::remove_file(&shared).unwrap();
        std::fs::create_dir(&shared).unwrap();
        assert!(silent_logs(&shared).is_none());
    }
}
