//! Process-group, output, artifact and secret behaviour of the local runner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use runner_core::{
    ArtifactLocation, EnvVar, ErrorKind, LogSink, RunContext, RunnerAdapter, TestPayload,
    TestStatus,
};

fn ctx(name: &str) -> RunContext {
    RunContext::new(format!("{name}-{}", std::process::id()), "corr")
}

#[tokio::test]
async fn payload_timeout_kills_the_whole_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let marker = format!("TREE_MARKER={}", std::process::id());
    let ctx = ctx("tree");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    // A child that starts grandchildren, all of them sleeping far past the limit.
    let mut payload = common::sh(
        "(sleep 300 & sleep 300 & wait) & (sh -c 'sleep 300' &) ; echo spawned; sleep 300",
    );
    payload.env.insert(
        "TREE_MARKER".into(),
        EnvVar::Plain(std::process::id().to_string()),
    );
    payload.timeout_seconds = Some(1);
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::TimedOut, "{result:?}");
    // The group was SIGKILLed before run_test returned; allow the kernel to reap.
    let mut left = common::processes_with_marker(&marker);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = common::processes_with_marker(&marker);
    }
    assert!(left.is_empty(), "processes survived the timeout: {left:?}");
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test]
async fn cancellation_mid_run_stops_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let runner = std::sync::Arc::new(common::runner(dir.path()));
    let (sink, mut rx) = LogSink::channel(256);
    let ctx = ctx("cancel").with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let run = {
        let (runner, ctx, handle) = (runner.clone(), ctx.clone(), handle.clone());
        tokio::spawn(async move {
            runner
                .run_test(
                    &ctx,
                    &handle,
                    &common::sh("echo up; trap '' TERM; sleep 600"),
                )
                .await
        })
    };
    let first = rx.recv().await.unwrap();
    assert_eq!(first.text, "up");
    ctx.cancel_token().cancel();
    // The test ignores SIGTERM; SIGKILL after the 500 ms grace ends it.
    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run_test must end after cancellation")
        .unwrap()
        .unwrap();
    assert_eq!(result.status, TestStatus::Cancelled);
    assert!(std::path::Path::new(handle.handle_id()).exists());
    runner.teardown(&ctx, &handle).await.unwrap();
    assert!(
        !std::path::Path::new(handle.handle_id()).exists(),
        "teardown removes the working directory"
    );
}

#[tokio::test]
async fn missing_command_is_an_invalid_spec_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = ctx("missing");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = TestPayload::new(["definitely-not-a-command-xyz", "--flag"]);
    let err = runner.run_test(&ctx, &handle, &payload).await.unwrap_err();
    // The test's own input is at fault: never retried, the field named.
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert_eq!(err.field(), Some("payload.command[0]"));
    assert!(
        err.to_string().contains("definitely-not-a-command-xyz"),
        "{err}"
    );
    let empty = runner
        .run_test(&ctx, &handle, &TestPayload::default())
        .await
        .unwrap_err();
    assert_eq!(empty.kind(), ErrorKind::InvalidSpec);
    assert_eq!(empty.field(), Some("payload.command"));
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test]
async fn artifact_traversal_and_outward_symlinks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside data").unwrap();
    let runner = common::runner(dir.path());
    let ctx = ctx("traversal");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let script = format!(
        "mkdir -p out && echo ok > out/report.txt && ln -s {} out/leak.txt && ln -s report.txt out/alias.txt",
        outside.path().join("secret.txt").display()
    );
    let mut payload = common::sh(&script);
    payload.artifacts = vec!["out/*.txt".into()];
    runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let names: Vec<_> = bundle.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"out/report.txt"), "{names:?}");
    assert!(
        names.contains(&"out/alias.txt"),
        "inward symlink kept: {names:?}"
    );
    assert!(
        !names.contains(&"out/leak.txt"),
        "outward symlink collected: {names:?}"
    );
    assert!(names.contains(&"logs/stdout.log") && names.contains(&"logs/stderr.log"));
    for artifact in &bundle.artifacts {
        let ArtifactLocation::Local(path) = &artifact.location else {
            panic!()
        };
        assert!(path.starts_with(dir.path().join("artifacts")), "{path:?}");
    }

    payload.artifacts = vec!["../../*".into()];
    let err = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert_eq!(err.field(), Some("payload.artifacts[0]"));
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test]
async fn secret_env_reaches_the_process_but_no_log_or_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let (sink, mut rx) = LogSink::channel(256);
    let ctx = ctx("secret").with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let secret = "pa55-w0rd-zz9";
    let mut payload = common::sh(
        "echo token=$API_TOKEN; echo err $API_TOKEN >&2; echo $API_TOKEN > report.txt; \
         case $API_TOKEN in pa55-*-zz9) ;; *) exit 1 ;; esac",
    );
    payload.env.insert(
        "API_TOKEN".into(),
        EnvVar::Detailed {
            value: secret.into(),
            secret: true,
        },
    );
    payload.artifacts = vec!["report.txt".into()];
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(
        result.status,
        TestStatus::Passed,
        "the process must see the real value"
    );
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let lines: Vec<_> = rx.drain_now().into_iter().map(|l| l.text).collect();
    assert!(lines.contains(&"token=***".to_owned()), "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains(secret)));
    assert_eq!(bundle.artifacts.len(), 3);
    for artifact in &bundle.artifacts {
        let ArtifactLocation::Local(path) = &artifact.location else {
            panic!()
        };
        let bytes = std::fs::read(path).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{} holds the secret",
            artifact.name
        );
    }
    assert!(!format!("{payload:?}").contains(secret));
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test]
async fn a_later_attempt_leaves_an_earlier_attempts_collected_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let first = RunContext::new("relog.1", "corr").with_execution_key("relog");
    let handle = runner.provision(&first, &common::bench()).await.unwrap();
    let payload = common::sh("echo first attempt");
    runner.run_test(&first, &handle, &payload).await.unwrap();
    let kept = runner
        .collect_artifacts(&first, &handle, &payload)
        .await
        .unwrap();
    // The redelivery adopts the directory and runs again.
    let second = RunContext::new("relog.2", "corr")
        .with_execution_key("relog")
        .with_attempt(2);
    let again = runner.provision(&second, &common::bench()).await.unwrap();
    assert_eq!(again.handle_id(), handle.handle_id());
    runner
        .run_test(&second, &again, &common::sh("echo second"))
        .await
        .unwrap();
    let newer = runner
        .collect_artifacts(&second, &again, &payload)
        .await
        .unwrap();
    runner.teardown(&second, &again).await.unwrap();
    let read = |bundle: &runner_core::ArtifactBundle| {
        let log = bundle.get("logs/stdout.log").unwrap();
        let ArtifactLocation::Local(path) = &log.location else {
            panic!("local")
        };
        std::fs::read_to_string(path).unwrap()
    };
    // Both survive teardown, each with its own attempt's output.
    assert_eq!(read(&kept), "first attempt\n");
    assert_eq!(read(&newer), "second\n");
}

#[tokio::test]
async fn teardown_from_another_runner_instance_kills_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("ORPHAN_MARKER={}", std::process::id());
    let first = std::sync::Arc::new(common::runner(dir.path()));
    let ctx = ctx("orphan");
    let handle = first.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::sh("echo up; sleep 600");
    payload.env.insert(
        "ORPHAN_MARKER".into(),
        EnvVar::Plain(std::process::id().to_string()),
    );
    let (sink, mut rx) = LogSink::channel(256);
    let run_ctx = ctx.clone().with_log_sink(sink);
    let running = {
        let (first, handle) = (first.clone(), handle.clone());
        tokio::spawn(async move { first.run_test(&run_ctx, &handle, &payload).await })
    };
    rx.recv().await.unwrap();
    // A second instance (as the reaper in another process would) sees and ends it.
    let second = common::runner(dir.path());
    let owned = second.list_owned(&ctx).await.unwrap();
    assert_eq!(owned.len(), 1);
    let json = owned[0].handle.to_json();
    let handle_back = runner_core::RunnerHandle::from_json(&json).unwrap();
    second.teardown(&ctx, &handle_back).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        result.status,
        TestStatus::Failed,
        "killed by SIGKILL: {result:?}"
    );
    assert!(common::processes_with_marker(&marker).is_empty());
    assert!(second.list_owned(&ctx).await.unwrap().is_empty());
    second.teardown(&ctx, &handle_back).await.unwrap();
}

#[tokio::test]
async fn package_directory_is_staged_and_working_dir_is_confined() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = tempfile::tempdir().unwrap();
    std::fs::create_dir(pkg.path().join("suite")).unwrap();
    std::fs::write(pkg.path().join("suite/check.sh"), "echo staged-ok\n").unwrap();
    let runner = common::runner(dir.path());
    let (sink, mut rx) = LogSink::channel(256);
    let ctx = ctx("stage").with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::sh("sh check.sh");
    payload.package = Some(pkg.path().display().to_string());
    payload.working_dir = Some("suite".into());
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert!(result.passed(), "{result:?}");
    assert!(rx.drain_now().iter().any(|l| l.text == "staged-ok"));
    payload.working_dir = Some("../..".into());
    let err = runner.run_test(&ctx, &handle, &payload).await.unwrap_err();
    assert_eq!(err.field(), Some("payload.working_dir"));
    payload.package = Some("/nonexistent/package.zip".into());
    let fresh = ctx.clone().with_execution_key("other-key");
    let h2 = runner.provision(&fresh, &common::bench()).await.unwrap();
    let err = runner.run_test(&fresh, &h2, &payload).await.unwrap_err();
    assert_eq!(err.field(), Some("payload.package"));
    runner.teardown(&ctx, &handle).await.unwrap();
    runner.teardown(&fresh, &h2).await.unwrap();
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 1 GiB of output through the pumps: memory stays bounded. The high-water
/// mark is process-wide, so the bound is on its growth during this test
/// (other tests running beside it only make the check stricter).
#[tokio::test]
async fn one_gib_of_output_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner_config = runner_local::LocalConfig {
        root: dir.path().join("work"),
        artifacts_dir: dir.path().join("artifacts"),
        ..runner_local::LocalConfig::default()
    };
    // The log file keeps 8 MiB; the rest still flows through the pipe and the sink.
    runner_config.max_log_bytes = 8 * 1024 * 1024;
    let runner = runner_local::LocalProcessRunner::new(runner_config);
    let (sink, mut rx) = LogSink::channel(1024);
    let ctx = ctx("gib").with_log_sink(sink);
    let consumer = tokio::spawn(async move {
        let mut lines = 0u64;
        while rx.recv().await.is_some() {
            lines += 1;
        }
        lines
    });
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let before = peak_rss_kib();
    // 1 GiB: 16 Mi lines of 63 characters plus newline.
    let payload = common::sh(
        "yes 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' | head -c 1073741824",
    );
    let started = std::time::Instant::now();
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let took = started.elapsed();
    assert!(result.passed(), "{result:?}");
    runner.teardown(&ctx, &handle).await.unwrap();
    drop(ctx);
    let lines = consumer.await.unwrap();
    let after = peak_rss_kib();
    println!(
        "1 GiB of output: {lines} lines in {took:.2?}, peak RSS {before} KiB before, {after} KiB after"
    );
    assert_eq!(
        lines,
        16 * 1024 * 1024 + 1,
        "every line reached the sink (plus the end line)"
    );
    assert!(
        after < 64 * 1024 + before,
        "peak RSS grew from {before} to {after} KiB"
    );
}

/// The pid in `file`, once the test wrote it.
fn pid_in(file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Whether `pid` stops running within a second (50 looks, 20 ms apart):
/// a SIGKILLed process takes a moment to go.
async fn gone_within_a_second(pid: i32) -> bool {
    for _ in 0..50 {
        if !running(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !running(pid)
}

/// Whether `pid` runs (a zombie does not count).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_daemon_holding_stdout_neither_hangs_the_run_nor_outlives_it() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let (sink, mut rx) = LogSink::channel(256);
    let ctx = ctx("setsid").with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let payload = common::sh(&format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 20' & sleep 0.5; echo hi",
        pidfile.display()
    ));
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        runner.run_test(&ctx, &handle, &payload),
    )
    .await
    .expect("the run must not wait for the daemon")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(result.status, TestStatus::Passed, "{result:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let lines: Vec<String> = rx.drain_now().into_iter().map(|l| l.text).collect();
    assert!(lines.iter().any(|l| l == "hi"), "{lines:?}");
    let pid = pid_in(&pidfile).expect("the daemon wrote its pid");
    assert!(
        !running(pid),
        "the escaped daemon was killed at the end of the run"
    );
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test]
async fn a_double_forked_daemon_with_closed_pipes_is_gone_after_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = ctx("double");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let pidfile = dir.path().join("double.pid");
    let payload = common::sh(&format!(
        "(setsid sh -c 'echo $$ > {}; exec >/dev/null 2>&1 </dev/null; exec sleep 40' &) ; sleep 0.5; echo started",
        pidfile.display()
    ));
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::Passed, "{result:?}");
    let pid = pid_in(&pidfile).expect("the daemon wrote its pid");
    runner.teardown(&ctx, &handle).await.unwrap();
    assert!(
        gone_within_a_second(pid).await,
        "pid {pid} outlived teardown"
    );
}

#[tokio::test]
async fn a_daemon_of_a_dropped_run_is_found_by_a_teardown_in_another_process() {
    // The run's own sweep of the pids after its leader never happens (its
    // future is dropped, as the worker's timeout does); a runner that did
    // not run it (another worker's reaper) must still find the escaped
    // daemon by scanning every process.
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = ctx("dropped");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let pidfile = dir.path().join("dropped.pid");
    let payload = common::sh(&format!(
        "(setsid sh -c 'echo $$ > {}; exec >/dev/null 2>&1 </dev/null; exec sleep 40' &) ; sleep 30",
        pidfile.display()
    ));
    let mut pid = None;
    {
        let run = runner.run_test(&ctx, &handle, &payload);
        tokio::pin!(run);
        for _ in 0..100 {
            tokio::select! {
                _ = &mut run => panic!("the run ended early"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            pid = pid_in(&pidfile);
            if pid.is_some() {
                break;
            }
        }
    }
    let pid = pid.expect("the daemon wrote its pid");
    assert!(running(pid), "the daemon outlives the dropped run");
    let elsewhere = common::runner(dir.path());
    elsewhere.teardown(&ctx, &handle).await.unwrap();
    assert!(
        gone_within_a_second(pid).await,
        "pid {pid} outlived a teardown from another runner"
    );
}
