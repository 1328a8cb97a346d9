//! One run of a test: the process group, its output, its end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use runner_core::{
    ExecutionError, LogStream, RunContext, RunnerHandle, TestPayload, TestResult, TestStatus,
};

use crate::config::LocalConfig;
use crate::io::{fs_work, io_error};
use crate::process::{self, GroupGuard, GroupRecord, Swept};
use crate::stage::stage_package;
use crate::state::LocalState;
use crate::{RUNNER_TYPE, output};

/// Run `payload` in the execution `handle` names; see
/// [`RunnerAdapter::run_test`](runner_core::RunnerAdapter::run_test).
pub(crate) async fn run_test(
    config: &LocalConfig,
    swept: &Swept,
    ctx: &RunContext,
    handle: &RunnerHandle,
    payload: &TestPayload,
) -> Result<TestResult, ExecutionError> {
    let state: LocalState = handle.decode_in(ctx, RUNNER_TYPE)?;
    // What an earlier run here found is not this run's: forgotten first,
    // whatever this one comes to.
    swept.take(&state.dir);
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
        Some(sub) => runner_core::safe_path::safe_join(&state.work(), sub)
            .map_err(|e| ExecutionError::invalid_spec(ctx, "payload.working_dir", e.to_string()))?,
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
            config
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
            config
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
    let _leader = process::LiveLeader::new(&record);
    if let Err(err) = process::save(&record, &state.group_file()) {
        return Err(io_error(ctx, "cannot record the process group", err));
    }
    tracing::debug!(pgid = record.pgid, "test process started");

    let mut pipes = Vec::with_capacity(2);
    for (stream, name, fd) in [
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
    ] {
        match fd {
            Some(Ok(fd)) => pipes.push(output::Pipe {
                fd,
                stream,
                log: state.log(name),
            }),
            Some(Err(err)) => return Err(io_error(ctx, "cannot read the test's output", err)),
            None => {}
        }
    }
    let pumps = {
        let sink = ctx.logs().clone();
        let redactor = redactor.clone();
        let limit = config.max_log_bytes;
        let stale = state.logs();
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<output::PumpStats>> {
            // A new file for each run, never a truncated old one: an
            // earlier attempt's collected log may be a link to it. (What
            // the test writes meanwhile waits in the pipe.)
            for path in &stale {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            output::pump_pipes(pipes, &sink, &redactor, limit)
        })
    };

    let test_limit = payload.timeout_seconds.map(Duration::from_secs);
    let grace = Duration::from_millis(config.kill_grace_ms);
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
    let since = process::Since {
        leader: record.pgid,
        at: started,
    };
    // A short run's few new pids are read in place; a long run or one
    // that started many processes is scanned on the pool.
    let (first, small) = process::first_candidates(&since);
    // A list read here serves a sweep done here; on the pool the sweep
    // reads its own, later.
    let first = first.filter(|_| small);
    let sweep = fs_work(small, move || {
        process::kill_marked_from(&dir, Some(&since), first)
    })
    .await
    .unwrap_or_default();
    if sweep.killed > 0 {
        tracing::debug!(
            escaped = sweep.killed,
            "killed processes that left the test's group"
        );
    }
    if sweep.clean {
        swept.insert(&state.dir, sweep.quiet);
    }
    // Output still in the pipes is read for a bounded time: a process
    // that cleared its environment could still hold them.
    let output_grace = Duration::from_millis(config.output_grace_ms);
    let until = tokio::time::Instant::now() + output_grace;
    match tokio::time::timeout_at(until, pumps).await {
        Ok(Ok(Ok(_stats))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "log pump failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "log pump panicked"),
        Err(_) => tracing::warn!(
            grace_ms = config.output_grace_ms,
            "output pipe still open after the test ended; not waiting longer"
        ),
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
