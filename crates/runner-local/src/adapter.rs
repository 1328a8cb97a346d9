//! The `RunnerAdapter` implementation for local processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use runner_core::phase::PhaseMarker;
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, BenchSpec, Capabilities, ConfigError,
    ExecutionError, ListOwnedError, LogStream, OwnedResource, ProvisionError, RunContext,
    RunnerAdapter, RunnerConfig, RunnerError, RunnerHandle, TeardownError, TestPayload, TestResult,
    TestStatus, decode_spec,
};
use serde::{Deserialize, Serialize};

use crate::config::{LocalBench, LocalConfig};
use crate::process::{self, GroupGuard, GroupRecord};
use crate::{RUNNER_TYPE, artifacts, output};

/// Runs payloads as local processes; see the crate docs.
#[derive(Debug, Clone)]
pub struct LocalProcessRunner {
    config: LocalConfig,
}

/// What the handle carries: enough for teardown from another process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalState {
    dir: PathBuf,
    execution_key: String,
    /// The worker that provisioned it (empty outside a worker).
    #[serde(default)]
    worker: String,
}

impl LocalState {
    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    fn meta(&self) -> PathBuf {
        self.dir.join("meta")
    }
    fn group_file(&self) -> PathBuf {
        self.meta().join("group.json")
    }
    fn log(&self, stream: &str) -> PathBuf {
        self.meta().join(format!("{stream}.log"))
    }
}

const HANDLE_FILE: &str = "handle.json";

impl LocalProcessRunner {
    /// A runner with `config`.
    pub fn new(config: LocalConfig) -> Self {
        Self { config }
    }

    /// A runner from a runner config (`backend` section and `artifacts_dir`).
    pub fn from_config(config: &RunnerConfig) -> Result<Self, ConfigError> {
        LocalConfig::from_runner_config(config).map(Self::new)
    }

    /// The settings in force.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    fn dir_name(prefix: Option<&str>, key: &str) -> String {
        let clean: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let clean = clean.trim_start_matches('.');
        let mut name = match prefix {
            Some(p) => format!("{p}-{clean}"),
            None => format!("exec-{clean}"),
        };
        if clean != key {
            // Keys that needed cleaning keep a hash so two keys never collide.
            let hash = runner_core::artifact::sha256_bytes(key.as_bytes());
            name.push('-');
            name.push_str(&hash[..12]);
        }
        name
    }
}

/// The program to start: a bare name is looked up in the child's `PATH`
/// here, so the standard library can start it with `posix_spawn` (it falls
/// back to `fork`, which copies this whole process's page tables, whenever
/// it must search a `PATH` of the child's own). Names with a `/` and
/// children without a `PATH` are left as they are.
fn resolve_program(program: &str, path: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
    match path {
        Some(path) if !program.contains('/') => which::which_in(program, Some(path), cwd)
            .map_err(|_| format!("`{program}` was not found in the test's PATH ({path})")),
        _ => Ok(PathBuf::from(program)),
    }
}

fn io_error<P: PhaseMarker>(ctx: &RunContext, what: &str, err: std::io::Error) -> RunnerError<P> {
    let message = format!("{what}: {err}");
    match err.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            RunnerError::permanent(ctx, message)
        }
        _ => RunnerError::transient(ctx, message),
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
        let name = Self::dir_name(spec.workdir_prefix.as_deref(), ctx.execution_key());
        let state = LocalState {
            dir: self.config.root.join(name),
            execution_key: ctx.execution_key().to_owned(),
            worker: ctx.worker_id().to_owned(),
        };
        let handle_path = state.meta().join(HANDLE_FILE);
        let handle = RunnerHandle::new(
            RUNNER_TYPE,
            state.dir.display().to_string(),
            ctx.execution_id(),
            &state,
        )
        .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))?;
        // All file work in one blocking hop: a hop per call cost more than
        // the calls on a busy two-core machine.
        let dir = state.dir.clone();
        let dirs = [state.work(), state.meta()];
        let json = handle.to_json();
        let made = tokio::task::spawn_blocking(move || -> std::io::Result<Option<RunnerHandle>> {
            if let Ok(text) = std::fs::read_to_string(&handle_path)
                && let Ok(existing) = RunnerHandle::from_json(&text)
            {
                // A redelivered or retried execution adopts its directory.
                return Ok(Some(existing));
            }
            let made = (|| {
                for d in &dirs {
                    std::fs::create_dir_all(d)?;
                }
                let tmp = handle_path.with_extension("tmp");
                std::fs::write(&tmp, json)?;
                std::fs::rename(&tmp, &handle_path)
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
            Err(join) => {
                return Err(ProvisionError::permanent(
                    ctx,
                    format!("provisioning panicked: {join}"),
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
        let state: LocalState = handle.decode_in(ctx, RUNNER_TYPE)?;
        if payload.command.is_empty() || payload.command[0].is_empty() {
            return Err(ExecutionError::invalid_spec(
                ctx,
                "payload.command",
                "must name a program",
            ));
        }
        if !state.work().is_dir() {
            return Err(ExecutionError::handle_gone(
                ctx,
                format!(
                    "working directory {} is gone (torn down?)",
                    state.work().display()
                ),
            ));
        }
        // A redelivered execution may find the process group of an attempt
        // whose worker died; it must not run beside the new one.
        if let Some(previous) = process::load(&state.group_file()) {
            previous.kill();
        }
        stage_package(ctx, &state, payload).await?;
        let cwd = match &payload.working_dir {
            Some(sub) => runner_core::safe_path::safe_join(&state.work(), sub).map_err(|e| {
                ExecutionError::invalid_spec(ctx, "payload.working_dir", e.to_string())
            })?,
            None => state.work(),
        };

        let redactor = payload.redactor();
        let program = if payload.shell {
            "sh"
        } else {
            payload.command[0].as_str()
        };
        let child_path = payload
            .env
            .get("PATH")
            .map(|v| v.value().to_owned())
            .or_else(|| {
                self.config
                    .env_passthrough
                    .iter()
                    .any(|k| k == "PATH")
                    .then(|| std::env::var("PATH").ok())
                    .flatten()
            });
        // What the test's own input got wrong is `invalid_spec` naming the
        // field, never something a retry could fix.
        if !cwd.is_dir() {
            return Err(ExecutionError::invalid_spec(
                ctx,
                "payload.working_dir",
                format!(
                    "{:?} is not a directory of the package",
                    payload.working_dir.as_deref().unwrap_or(".")
                ),
            ));
        }
        let program_field = if payload.shell {
            "payload.shell"
        } else {
            "payload.command[0]"
        };
        let shown = program.escape_debug().to_string();
        let resolved = resolve_program(program, child_path.as_deref(), &cwd).map_err(|e| {
            ExecutionError::invalid_spec(
                ctx,
                program_field,
                format!("cannot start `{shown}`: {}", redactor.redact(&e)),
            )
        })?;
        let mut command = tokio::process::Command::new(&resolved);
        command.arg0(program);
        if payload.shell {
            command.arg("-c").arg(payload.command.join(" "));
        } else {
            command.args(&payload.command[1..]);
        }
        command
            .current_dir(&cwd)
            .env_clear()
            .envs(
                self.config
                    .env_passthrough
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))),
            )
            .envs(payload.env.iter().map(|(k, v)| (k, v.value())))
            .env("RUNNER_EXECUTION_ID", ctx.execution_id())
            .env("RUNNER_CORRELATION_ID", ctx.correlation_id())
            .env("RUNNER_ATTEMPT", ctx.attempt().to_string())
            .env(process::MARKER_VAR, &state.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);

        let started = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                let message = format!("cannot start `{shown}`: {err}");
                return Err(match err.kind() {
                    std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidInput => {
                        ExecutionError::invalid_spec(ctx, program_field, message)
                    }
                    _ => ExecutionError::transient(ctx, message),
                });
            }
        };
        let Some(record) = child.id().and_then(GroupRecord::for_leader) else {
            return Err(ExecutionError::transient(
                ctx,
                "the test process ended before it could be tracked",
            ));
        };
        let mut guard = GroupGuard::new(record);
        if let Err(err) = process::save(&record, &state.group_file()) {
            return Err(io_error(ctx, "cannot record the process group", err));
        }
        tracing::debug!(pgid = record.pgid, "test process started");

        let pumps = [
            (
                LogStream::Stdout,
                "stdout",
                child.stdout.take().map(|s| s.into_owned_fd()),
            ),
            (
                LogStream::Stderr,
                "stderr",
                child.stderr.take().map(|s| s.into_owned_fd()),
            ),
        ]
        .map(|(stream, name, fd)| {
            let sink = ctx.logs().clone();
            let redactor = redactor.clone();
            let path = state.log(name);
            let limit = self.config.max_log_bytes;
            tokio::task::spawn_blocking(move || -> std::io::Result<output::PumpStats> {
                // A new file for each run, never a truncated old one: an
                // earlier attempt's collected log may be a link to it.
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                let file = std::fs::File::create(&path)?;
                match fd {
                    Some(Ok(fd)) => output::pump(
                        std::fs::File::from(fd),
                        stream,
                        &sink,
                        &redactor,
                        file,
                        limit,
                    ),
                    Some(Err(e)) => Err(e),
                    None => Ok(output::PumpStats::default()),
                }
            })
        });

        let test_limit = payload.timeout_seconds.map(Duration::from_secs);
        let grace = Duration::from_millis(self.config.kill_grace_ms);
        enum End {
            Exited(std::io::Result<std::process::ExitStatus>),
            Cancelled,
            TimedOut,
        }
        let end = tokio::select! {
            status = child.wait() => End::Exited(status),
            _ = ctx.cancel_token().cancelled() => End::Cancelled,
            _ = sleep_opt(test_limit) => End::TimedOut,
        };
        let end = match end {
            End::Exited(status) => {
                // The test is over; nothing it started may outlive it.
                record.kill();
                End::Exited(status)
            }
            other => {
                process::terminate(&record, &mut child, grace).await;
                other
            }
        };
        guard.disarm();
        let duration = started.elapsed();
        // What escaped the group (setsid, a double fork) goes too: it could
        // hold the pipes open and outlive the test.
        let dir = state.dir.clone();
        let escaped = tokio::task::spawn_blocking(move || process::kill_marked(&dir))
            .await
            .unwrap_or(0);
        if escaped > 0 {
            tracing::debug!(escaped, "killed processes that left the test's group");
        }
        // Output still in the pipes is read for a bounded time: a process
        // that cleared its environment could still hold them.
        let output_grace = Duration::from_millis(self.config.output_grace_ms);
        let until = tokio::time::Instant::now() + output_grace;
        for pump in pumps {
            match tokio::time::timeout_at(until, pump).await {
                Ok(Ok(Ok(_stats))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "log pump failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "log pump panicked"),
                Err(_) => tracing::warn!(
                    grace_ms = self.config.output_grace_ms,
                    "output pipe still open after the test ended; not waiting longer"
                ),
            }
        }
        let result = match end {
            End::Cancelled => TestResult::new(TestStatus::Cancelled, duration)
                .with_diagnosis("runner", "cancelled; the process group was stopped"),
            End::TimedOut => TestResult::new(TestStatus::TimedOut, duration).with_diagnosis(
                "timeout",
                format!(
                    "test exceeded its limit of {} s; the process group was stopped",
                    test_limit.map_or(0, |d| d.as_secs())
                ),
            ),
            End::Exited(Ok(status)) => exit_result(status, duration),
            End::Exited(Err(err)) => {
                return Err(io_error(ctx, "waiting for the test process", err));
            }
        };
        ctx.logs()
            .send(
                LogStream::System,
                &format!("test ended: {} in {:.2?}", result.status.as_str(), duration),
            )
            .await;
        Ok(result)
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
        let dest = artifacts::destination(&self.config.artifacts_dir, ctx.execution_id())
            .map_err(|message| ArtifactError::permanent(ctx, message))?;
        let redactor = payload.redactor();
        let outcome = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            std::fs::create_dir_all(&dest)?;
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
                    std::fs::write(&target, b"")?;
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
            Err(join) => {
                return Err(ArtifactError::permanent(
                    ctx,
                    format!("artifact collection panicked: {join}"),
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
        let _ = tokio::task::spawn_blocking(move || process::kill_marked(&dir)).await;
        match tokio::fs::remove_dir_all(&state.dir).await {
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
        let listed = tokio::task::spawn_blocking(move || list_dirs(&root)).await;
        match listed {
            Ok(Ok(list)) => Ok(list),
            Ok(Err(e)) => Err(io_error(ctx, "listing working directories", e)),
            Err(join) => Err(ListOwnedError::permanent(
                ctx,
                format!("listing panicked: {join}"),
            )),
        }
    }
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

async fn sleep_opt(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn exit_result(status: std::process::ExitStatus, duration: Duration) -> TestResult {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(127), _) => TestResult::from_exit_code(127, duration).with_diagnosis(
            "test",
            "exit code 127: a command inside the test was not found",
        ),
        (Some(code), _) => TestResult::from_exit_code(code, duration),
        (None, Some(signal)) => TestResult::new(TestStatus::Failed, duration)
            .with_diagnosis("test", format!("test process killed by signal {signal}")),
        (None, None) => TestResult::new(TestStatus::Error, duration)
            .with_diagnosis("runner", "test process ended without an exit status"),
    }
}

/// Put the payload's package into the working directory, once.
async fn stage_package(
    ctx: &RunContext,
    state: &LocalState,
    payload: &TestPayload,
) -> Result<(), ExecutionError> {
    let Some(package) = &payload.package else {
        return Ok(());
    };
    let marker = state.meta().join("staged");
    if marker.exists() {
        return Ok(());
    }
    let source = PathBuf::from(package);
    let meta = tokio::fs::metadata(&source).await.map_err(|e| {
        ExecutionError::invalid_spec(ctx, "payload.package", format!("{package}: {e}"))
    })?;
    ctx.logs()
        .send(LogStream::System, &format!("staging package {package}"))
        .await;
    if meta.is_dir() {
        let (from, to) = (source.clone(), state.work());
        tokio::task::spawn_blocking(move || copy_tree(&from, &to))
            .await
            .map_err(|e| ExecutionError::permanent(ctx, format!("staging panicked: {e}")))?
            .map_err(|e| io_error(ctx, &format!("staging {package}"), e))?;
    } else if is_tar(package) {
        let status = tokio::process::Command::new("tar")
            .arg("-xf")
            .arg(&source)
            .arg("-C")
            .arg(state.work())
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| io_error(ctx, "cannot run tar", e))?;
        if !status.success() {
            return Err(ExecutionError::invalid_spec(
                ctx,
                "payload.package",
                format!("{package} does not unpack with tar ({status})"),
            ));
        }
    } else {
        return Err(ExecutionError::invalid_spec(
            ctx,
            "payload.package",
            format!("{package} is neither a directory nor a .tar, .tar.gz or .tgz archive"),
        ));
    }
    tokio::fs::write(&marker, b"")
        .await
        .map_err(|e| io_error(ctx, "cannot mark the package staged", e))
}

fn is_tar(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        let Ok(relative) = entry.path().strip_prefix(from) else {
            continue;
        };
        let target = to.join(relative);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn list_dirs(root: &Path) -> std::io::Result<Vec<OwnedResource>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut owned = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("meta").join(HANDLE_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(handle) = RunnerHandle::from_json(&text) else {
            tracing::warn!(path = %path.display(), "unreadable handle file in the local root");
            continue;
        };
        let state = handle.decode::<LocalState>(RUNNER_TYPE).ok();
        let age_seconds = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs());
        let mut resource = OwnedResource::new(handle.handle_id(), handle.clone())
            .with_execution_id(handle.execution_id());
        if let Some(state) = state {
            resource = resource
                .with_execution_key(state.execution_key)
                .with_worker(state.worker);
        }
        if let Some(age) = age_seconds {
            resource = resource.with_age_seconds(age);
        }
        owned.push(resource);
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_programs_are_found_in_the_childs_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let not_exec = bin.join("data");
        std::fs::write(&not_exec, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(
            resolve_program("tool", Some(&path), dir.path()).unwrap(),
            tool
        );
        // Not executable, or absent: an error naming the program and the PATH.
        for missing in ["data", "absent"] {
            let err = resolve_program(missing, Some(&path), dir.path()).unwrap_err();
            assert!(
                err.contains(missing) && err.contains("/nonexistent"),
                "{err}"
            );
        }
        // A path, or no PATH at all: left to the spawn.
        assert_eq!(
            resolve_program("./tool", Some(&path), dir.path()).unwrap(),
            PathBuf::from("./tool")
        );
        assert_eq!(
            resolve_program("tool", None, dir.path()).unwrap(),
            PathBuf::from("tool")
        );
    }
}
