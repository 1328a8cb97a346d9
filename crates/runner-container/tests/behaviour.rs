//! The container runner against a real Podman: exit codes, streams, limits,
//! deadlines, cancellation, artifacts, network isolation, teardown, leaks
//! and the errors of an engine that is not there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use runner_container::{ContainerConfig, ContainerRunner};
use runner_core::artifact::sha256_file;
use runner_core::{
    ArtifactLocation, BenchSpec, EnvVar, ErrorKind, LogLine, LogSink, LogStream, RunnerAdapter,
    TestStatus,
};

fn lines(rx: &mut runner_core::LogReceiver) -> Vec<LogLine> {
    rx.drain_now()
}

fn stored(bundle: &runner_core::ArtifactBundle, name: &str) -> std::path::PathBuf {
    match &bundle
        .get(name)
        .unwrap_or_else(|| panic!("no artifact {name}: {bundle:?}"))
        .location
    {
        ArtifactLocation::Local(path) => path.clone(),
        other => panic!("{name} is not local: {other:?}"),
    }
}

/// The ids of the containers made for `ctx` (by its execution key label).
fn containers_of(ctx: &runner_core::RunContext) -> Vec<String> {
    common::podman()
        .containers_with_label(&format!(
            "io.test-orchestrator.execution-key={}",
            ctx.execution_key()
        ))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_streams_apart_non_root_and_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let (sink, mut rx) = LogSink::channel(1024);
    let ctx = common::ctx("exit").with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();

    let mut payload = common::sh(
        "echo out-1; echo err-1 >&2; echo \"uid=$(id -u)\"; echo \"token=$TOKEN\"; echo token=$TOKEN > /artifacts/t.txt; exit 7",
    );
    payload.env.insert(
        "TOKEN".into(),
        EnvVar::Detailed {
            value: "s3cr3t-value".into(),
            secret: true,
        },
    );
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::Failed, "{result:?}");
    assert_eq!(result.exit_code, Some(7));
    let seen = lines(&mut rx);
    let on = |stream: LogStream| -> Vec<String> {
        seen.iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.clone())
            .collect()
    };
    assert_eq!(
        on(LogStream::Stdout),
        ["out-1", "uid=1000", "token=***"],
        "{seen:?}"
    );
    assert_eq!(on(LogStream::Stderr), ["err-1"], "{seen:?}");

    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(stored(&bundle, name)).unwrap();
    assert_eq!(read("logs/stdout.log"), "out-1\nuid=1000\ntoken=***\n");
    assert_eq!(read("logs/stderr.log"), "err-1\n");
    assert_eq!(read("t.txt"), "token=***\n");
    // A second collection gives the same bundle.
    let again = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    assert_eq!(again, bundle);

    // The same handle runs again (a retried run): a fresh container, exit 0.
    let result = runner
        .run_test(&ctx, &handle, &common::sh("exit 0"))
        .await
        .unwrap();
    assert!(result.passed(), "{result:?}");
    assert_eq!(containers_of(&ctx).len(), 1);
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_kills_the_test_with_a_diagnosis() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = common::ctx("oom");
    let bench = BenchSpec::new().with_backend(serde_json::json!({"memory_mb": 32}));
    let handle = runner.provision(&ctx, &bench).await.unwrap();
    // 100 MB in a shell variable: far over 32 MiB.
    let payload = common::sh("x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived");
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::Failed, "{result:?}");
    assert_eq!(result.exit_code, Some(137));
    let diagnosis = result.diagnosis.unwrap().message;
    assert!(
        diagnosis.contains("32 MiB") && diagnosis.contains("memory"),
        "{diagnosis}"
    );
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_limit_and_the_phase_deadline_time_out_and_stop_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    // The test ignores SIGTERM: the engine's SIGKILL after the grace ends it.
    let stubborn = "echo up; trap '' TERM; while true; do sleep 1; done";

    let ctx = common::ctx("limit");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::sh(stubborn);
    payload.timeout_seconds = Some(1);
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::TimedOut, "{result:?}");
    assert!(
        result.diagnosis.unwrap().message.contains("limit of 1 s"),
        "names the limit"
    );
    assert_eq!(running(&ctx), 0, "the container was stopped");
    runner.teardown(&ctx, &handle).await.unwrap();

    // No limit of its own: the context's deadline (the phase limit) applies.
    let ctx = common::ctx("deadline").with_timeout(Duration::from_secs(2));
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let result = runner
        .run_test(&ctx, &handle, &common::sh(stubborn))
        .await
        .unwrap();
    assert_eq!(result.status, TestStatus::TimedOut, "{result:?}");
    assert_eq!(running(&ctx), 0);
    runner.teardown(&ctx, &handle).await.unwrap();
}

/// How many of `ctx`'s containers run.
fn running(ctx: &runner_core::RunContext) -> usize {
    let out = common::podman()
        .cli()
        .args(["ps", "-q", "--filter"])
        .arg(format!(
            "label=io.test-orchestrator.execution-key={}",
            ctx.execution_key()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_mid_run_stops_the_container_after_live_output() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Arc::new(common::runner(dir.path()));
    let (sink, mut rx) = LogSink::channel(256);
    let ctx = common::ctx("cancel").with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let run = {
        let (runner, ctx, handle) = (runner.clone(), ctx.clone(), handle.clone());
        tokio::spawn(async move {
            runner
                .run_test(&ctx, &handle, &common::sh("echo up; sleep 600"))
                .await
        })
    };
    // Live: the first line arrives while the test still runs.
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a live line within 60 s")
        .unwrap();
    assert_eq!(
        (first.stream, first.text.as_str()),
        (LogStream::Stdout, "up")
    );
    assert!(!run.is_finished(), "the run waits for the container");
    ctx.cancel_token().cancel();
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("run_test must end after cancellation")
        .unwrap()
        .unwrap();
    assert_eq!(result.status, TestStatus::Cancelled, "{result:?}");
    assert_eq!(running(&ctx), 0);
    runner.teardown(&ctx, &handle).await.unwrap();
}

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_nested_large_and_escaping() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let (sink, mut rx) = LogSink::channel(1024);
    let ctx = common::ctx("artifacts").with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::sh(
        "set -e; cd /artifacts; mkdir -p nested/deeper; echo deep > nested/deeper/r.txt; \
         head -c 209715200 /dev/zero > big.bin; \
         ln -s /etc/passwd abs-leak; ln -s ../etc/passwd rel-leak; ln -s nested/deeper/r.txt alias; \
         mkfifo pipe; echo done",
    );
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert!(result.passed(), "{result:?}");
    let before = peak_rss_kib();
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let after = peak_rss_kib();
    let names: Vec<&str> = bundle.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"nested/deeper/r.txt"), "{names:?}");
    assert!(
        names.contains(&"alias"),
        "an inward link is kept: {names:?}"
    );
    for refused in ["abs-leak", "rel-leak", "pipe"] {
        assert!(!names.contains(&refused), "{refused} collected: {names:?}");
    }
    let refusals: Vec<String> = lines(&mut rx)
        .into_iter()
        .filter(|l| l.stream == LogStream::System && l.text.contains("refused"))
        .map(|l| l.text)
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    let big = bundle.get("big.bin").unwrap();
    assert_eq!(big.size, 200 * 1024 * 1024);
    let (size, sha) = sha256_file(&stored(&bundle, "big.bin")).unwrap();
    assert_eq!((size, sha.as_str()), (big.size, big.sha256.as_str()));
    assert_eq!(
        std::fs::read_to_string(stored(&bundle, "alias")).unwrap(),
        "deep\n"
    );
    // Nothing was written outside the execution's directory.
    let root = dir.path().join("artifacts").join(ctx.execution_id());
    for artifact in &bundle.artifacts {
        assert!(stored(&bundle, &artifact.name).starts_with(&root));
    }
    // 200 MiB went through; the process's peak grew by far less.
    eprintln!("collect of 200 MiB: peak RSS {before} KiB -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_has_no_route_and_read_only_root_keeps_artifacts_writable() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    // Room for every line: the sink is read after the run.
    let (sink, mut rx) = LogSink::channel(1024);
    let ctx = common::ctx("net").with_log_sink(sink);
    let bench = BenchSpec::new().with_backend(serde_json::json!({"read_only_rootfs": true}));
    let handle = runner.provision(&ctx, &bench).await.unwrap();
    let payload = common::sh(
        "echo links=$(ip -o link | grep -vc ' lo:'); \
         if ip route get 192.0.2.1 >/dev/null 2>&1; then echo route; else echo no-route; fi; \
         if touch /rootfs-write 2>/dev/null; then echo root-writable; else echo root-read-only; fi; \
         touch /tmp/ok /artifacts/ok && echo writable",
    );
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert!(result.passed(), "{result:?}");
    let out: Vec<String> = lines(&mut rx)
        .into_iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.text)
        .collect();
    assert_eq!(
        out,
        ["links=0", "no-route", "root-read-only", "writable"],
        "{out:?}"
    );
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_is_idempotent_by_key_and_teardown_twice_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = common::ctx("twice");
    let first = runner.provision(&ctx, &common::bench()).await.unwrap();
    let second = runner.provision(&ctx, &common::bench()).await.unwrap();
    assert_eq!(
        first, second,
        "a redelivered provision adopts the container"
    );
    assert_eq!(containers_of(&ctx).len(), 1);
    runner.teardown(&ctx, &first).await.unwrap();
    assert!(containers_of(&ctx).is_empty());
    runner.teardown(&ctx, &first).await.unwrap();
    // A torn-down handle is gone for a run, permanently.
    let err = runner
        .run_test(&ctx, &first, &common::sh("true"))
        .await
        .unwrap_err();
    assert!(err.is_handle_gone(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_container_is_listed_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Arc::new(common::runner(dir.path()));
    let (sink, mut rx) = LogSink::channel(256);
    let ctx = common::ctx("leak")
        .with_worker("dead-worker")
        .with_log_sink(sink);
    let handle = worker.provision(&ctx, &common::bench()).await.unwrap();
    let run = {
        let (worker, ctx, handle) = (worker.clone(), ctx.clone(), handle.clone());
        tokio::spawn(async move {
            worker
                .run_test(&ctx, &handle, &common::sh("echo up; sleep 600"))
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap()
        .unwrap();
    // The worker dies: its run is dropped mid-flight, nothing is torn down.
    run.abort();
    let _ = run.await;
    drop(worker);
    assert_eq!(running(&ctx), 1, "the container outlives its worker");

    // The reaper, elsewhere: list, then tear down from the listed handle.
    let reaper = common::runner(dir.path());
    let reaper_ctx = common::ctx("reaper").with_worker("reaper");
    let owned = reaper.list_owned(&reaper_ctx).await.unwrap();
    let leaked = owned
        .iter()
        .find(|r| r.execution_key.as_deref() == Some(ctx.execution_key()))
        .unwrap_or_else(|| panic!("not listed: {owned:?}"));
    assert_eq!(leaked.worker_id.as_deref(), Some("dead-worker"));
    assert_eq!(leaked.execution_id.as_deref(), Some(ctx.execution_id()));
    assert!(leaked.age_seconds.is_some());
    assert_eq!(leaked.resource_id, handle.handle_id());
    let back = runner_core::RunnerHandle::from_json(&leaked.handle.to_json()).unwrap();
    reaper.teardown(&reaper_ctx, &back).await.unwrap();
    assert!(containers_of(&ctx).is_empty());
    let owned = reaper.list_owned(&reaper_ctx).await.unwrap();
    assert!(
        owned.iter().all(|r| r.resource_id != handle.handle_id()),
        "{owned:?}"
    );
    reaper.teardown(&reaper_ctx, &back).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_transient_and_a_missing_image_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = common::ctx("errors");
    let gone = ContainerRunner::new(ContainerConfig {
        endpoint: Some(format!("unix://{}/no-engine.sock", dir.path().display())),
        ..common::config(dir.path())
    })
    .unwrap();
    let err = gone.provision(&ctx, &common::bench()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(
        err.message().contains("unreachable") && err.message().contains("no-engine.sock"),
        "{err}"
    );
    let port = test_emulators::free_port().unwrap();
    let closed = ContainerRunner::new(ContainerConfig {
        endpoint: Some(format!("tcp://127.0.0.1:{port}")),
        ..common::config(dir.path())
    })
    .unwrap();
    let err = closed.provision(&ctx, &common::bench()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("unreachable"), "{err}");

    let runner = common::runner(dir.path());
    let missing = BenchSpec::new().with_backend(
        serde_json::json!({"image": "localhost/orch-no-such-image:1", "pull": "never"}),
    );
    let err = runner.provision(&ctx, &missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(
        err.message().contains("localhost/orch-no-such-image:1"),
        "{err}"
    );
    assert!(containers_of(&ctx).is_empty(), "nothing was made");
}

#[tokio::test]
async fn validate_refuses_unknown_keys_and_out_of_range_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = common::ctx("validate");
    let payload = common::sh("true");
    for (backend, field) in [
        (serde_json::json!({"imagee": "x"}), "bench.backend"),
        (
            serde_json::json!({"memory_mb": 0}),
            "bench.backend.memory_mb",
        ),
        (serde_json::json!({"cpus": 5000.0}), "bench.backend.cpus"),
        (
            serde_json::json!({"pids_limit": -1}),
            "bench.backend.pids_limit",
        ),
        (serde_json::json!({"user": "root"}), "bench.backend.user"),
    ] {
        let bench = BenchSpec::new().with_backend(backend.clone());
        let err = runner.validate(&ctx, &bench, &payload).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{backend}");
        assert!(
            err.field().is_some_and(|f| f.starts_with(field)),
            "{backend}: {err}"
        );
    }
    let mut relative = payload.clone();
    relative.working_dir = Some("sub".into());
    let err = runner
        .validate(&ctx, &common::bench(), &relative)
        .unwrap_err();
    assert_eq!(err.field(), Some("payload.working_dir"));
    assert!(runner.validate(&ctx, &common::bench(), &payload).is_ok());
}
