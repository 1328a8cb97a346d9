//! Reuse of clean execution directories and the logs of silent tests:
//! what one test leaves never reaches the next, and a quiet test makes no
//! directory of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use runner_core::{
    ArtifactBundle, ArtifactError, ArtifactLocation, LogSink, LogStream, RunContext, RunnerAdapter,
    TestPayload, TestStatus,
};
use runner_local::LocalProcessRunner;

fn ctx(name: &str) -> RunContext {
    RunContext::new(format!("{name}-{}", std::process::id()), "corr")
}

/// The inode number of `path`.
fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().ino()
}

/// A test that writes nothing and one that writes a line.
fn silent_and_talkative() -> [(&'static str, TestPayload); 2] {
    [
        ("silent", TestPayload::new(["true"])),
        ("talkative", common::sh("echo hello")),
    ]
}

/// Provision, run `payload`, collect, tear down: what collection gave.
async fn run_and_collect(
    runner: &LocalProcessRunner,
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<ArtifactBundle, ArtifactError> {
    let handle = runner.provision(ctx, &common::bench()).await.unwrap();
    runner.run_test(ctx, &handle, payload).await.unwrap();
    let collected = runner.collect_artifacts(ctx, &handle, payload).await;
    runner.teardown(ctx, &handle).await.unwrap();
    collected
}

#[tokio::test]
async fn a_clean_directory_is_reused_and_a_touched_one_never_reaches_the_next_test() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let listing = "echo parent:; ls -A ..; echo work:; ls -A .";

    // A test that leaves nothing: its directory serves the next one.
    let first = ctx("reuse-a");
    let handle = runner.provision(&first, &common::bench()).await.unwrap();
    let before = inode(std::path::Path::new(handle.handle_id()));
    let result = runner
        .run_test(&first, &handle, &TestPayload::new(["true"]))
        .await
        .unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    runner.teardown(&first, &handle).await.unwrap();
    assert!(!std::path::Path::new(handle.handle_id()).exists());
    let spares = std::fs::read_dir(dir.path().join("work/.spare"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with(&format!("{}.", std::process::id()))
        })
        .unwrap();
    assert_eq!(std::fs::read_dir(&spares).unwrap().count(), 1);

    let second = ctx("reuse-b");
    let handle = runner.provision(&second, &common::bench()).await.unwrap();
    assert_eq!(
        inode(std::path::Path::new(handle.handle_id())),
        before,
        "the clean directory was not reused"
    );
    assert_eq!(std::fs::read_dir(&spares).unwrap().count(), 0);
    // Its record names this execution, and the listing reports it.
    let owned = runner.list_owned(&second).await.unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert_eq!(
        owned[0].execution_key.as_deref(),
        Some(second.execution_key())
    );
    // What the test sees: an empty `work/` and the runner's records only.
    let (sink, mut rx) = LogSink::channel(64);
    let seen = second.clone().with_log_sink(sink);
    runner
        .run_test(&seen, &handle, &common::sh(listing))
        .await
        .unwrap();
    drop(seen);
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        if line.stream == LogStream::Stdout {
            lines.push(line.text);
        }
    }
    let work_at = lines.iter().position(|l| l == "work:").unwrap();
    assert_eq!(lines.len(), work_at + 1, "work/ is not empty: {lines:?}");
    for entry in &lines[1..work_at] {
        assert!(
            ["group.json", "handle.json", "stdout.log", "work"].contains(&entry.as_str()),
            "{entry} beside work/: {lines:?}"
        );
    }

    // A test that leaves a file beside `work/` and one in it: its
    // directory is removed, never handed on.
    let third_run = common::sh("echo x > ../left-behind; echo y > left-behind");
    runner.teardown(&second, &handle).await.unwrap();
    let third = ctx("reuse-c");
    let handle = runner.provision(&third, &common::bench()).await.unwrap();
    runner.run_test(&third, &handle, &third_run).await.unwrap();
    runner.teardown(&third, &handle).await.unwrap();
    assert_eq!(
        std::fs::read_dir(&spares).unwrap().count(),
        0,
        "a touched directory was kept"
    );
    let fourth = ctx("reuse-d");
    let handle = runner.provision(&fourth, &common::bench()).await.unwrap();
    let work = std::path::Path::new(handle.handle_id()).join("work");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    assert!(
        !std::path::Path::new(handle.handle_id())
            .join("left-behind")
            .exists()
    );
    runner.teardown(&fourth, &handle).await.unwrap();
}

#[tokio::test]
async fn a_silent_test_makes_no_artifact_directory() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    for (name, payload) in silent_and_talkative() {
        let ctx = ctx(name);
        let bundle = run_and_collect(&runner, &ctx, &payload).await.unwrap();
        let own = dir.path().join("artifacts").join(ctx.execution_id());
        let stdout = bundle
            .artifacts
            .iter()
            .find(|a| a.name == "logs/stdout.log")
            .unwrap();
        let ArtifactLocation::Local(path) = &stdout.location else {
            panic!("{stdout:?}");
        };
        if name == "silent" {
            assert!(!own.exists(), "a directory was made for a silent test");
            assert_eq!(stdout.size, 0);
            assert_eq!(std::fs::read(path).unwrap(), b"");
            assert_eq!(bundle.artifacts.len(), 2);
        } else {
            assert!(path.starts_with(&own), "{path:?}");
            assert_eq!(std::fs::read(path).unwrap(), b"hello\n");
        }
    }
}

#[tokio::test]
async fn a_process_that_escaped_the_sweep_is_left_in_a_removed_directory() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let first = ctx("escape-a");
    let handle = runner.provision(&first, &common::bench()).await.unwrap();
    // Out of the group and with a cleared environment: neither the group
    // kill nor the sweep for the marker finds it.
    let pid_file = dir.path().join("daemon.pid");
    // The test waits for it to be on its own before it ends.
    let script = format!(
        "setsid env -i sh -c 'echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 30' </dev/null >/dev/null 2>&1 & \
         for i in $(seq 100); do [ -s {0} ] && break; sleep 0.05; done",
        pid_file.display()
    );
    runner
        .run_test(&first, &handle, &common::sh(&script))
        .await
        .unwrap();
    let mut pid = None;
    for _ in 0..100 {
        pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = pid.expect("the daemon wrote its pid");
    let cwd = format!("/proc/{pid}/cwd");
    let outer = inode(std::path::Path::new(handle.handle_id()));
    runner.teardown(&first, &handle).await.unwrap();

    let second = ctx("escape-b");
    let next = runner.provision(&second, &common::bench()).await.unwrap();
    let work = std::path::Path::new(next.handle_id()).join("work");
    let reused = inode(std::path::Path::new(next.handle_id())) == outer;
    let daemon_in = std::fs::metadata(&cwd).unwrap().ino();
    let kept = std::fs::read_link(&cwd).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        reused,
        "the directory was not reused, so this shows nothing"
    );
    assert_ne!(
        daemon_in,
        std::fs::metadata(&work).unwrap().ino(),
        "the escaped process is in the next test's work/"
    );
    assert!(
        kept.to_string_lossy().ends_with("(deleted)"),
        "{}",
        kept.display()
    );
    runner.teardown(&second, &next).await.unwrap();
}

/// An execution id that cannot name an artifact directory is refused by
/// collection whether or not the test wrote anything, and nothing is made
/// for it (a silent test makes no directory, but checks the id alike).
#[tokio::test]
async fn an_unusable_execution_id_is_refused_by_silent_and_talkative_tests_alike() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    for (name, payload) in silent_and_talkative() {
        let ctx = RunContext::new(format!("../{name}-{}", std::process::id()), "corr")
            .with_execution_key(format!("{name}-key-{}", std::process::id()));
        let err = run_and_collect(&runner, &ctx, &payload).await.unwrap_err();
        assert_eq!(
            err.kind(),
            runner_core::ErrorKind::Permanent,
            "{name}: {err}"
        );
        assert!(err.to_string().contains(".."), "{name}: {err}");
    }
    assert!(
        !dir.path()
            .join(format!("silent-{}", std::process::id()))
            .exists()
    );
}

/// After a run whose sweep found no process it may have started alive (a
/// quiet sweep), the reused directory keeps its `work/` too: no new inode
/// at all. Other tests of this binary start processes meanwhile, and a
/// grandchild of theirs alive in the run's pid range makes the sweep not
/// quiet, so a few tries are allowed.
#[tokio::test]
async fn after_a_quiet_run_the_reused_directory_keeps_its_work_directory() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let mut kept = false;
    for attempt in 0..10 {
        let first = ctx(&format!("quiet-{attempt}-a"));
        let handle = runner.provision(&first, &common::bench()).await.unwrap();
        let work = std::path::Path::new(handle.handle_id()).join("work");
        // Held open: a new `work/` cannot get its inode number back.
        let _held = std::fs::File::open(&work).unwrap();
        let before = std::fs::metadata(&work).unwrap().ino();
        let result = runner
            .run_test(&first, &handle, &TestPayload::new(["true"]))
            .await
            .unwrap();
        assert_eq!(result.status, TestStatus::Passed);
        runner.teardown(&first, &handle).await.unwrap();
        let second = ctx(&format!("quiet-{attempt}-b"));
        let next = runner.provision(&second, &common::bench()).await.unwrap();
        let after = std::path::Path::new(next.handle_id()).join("work");
        kept = std::fs::metadata(&after).unwrap().ino() == before;
        runner.teardown(&second, &next).await.unwrap();
        if kept {
            break;
        }
        // Spread the tries: another test's processes come and go.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(kept, "work/ was made anew after every one of 10 quiet runs");
}

/// An `artifacts_dir` that is a file: collection fails with an error that
/// names the directory it could not make, silent test or not.
#[tokio::test]
async fn an_artifacts_dir_that_is_a_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("artifacts"), b"not a directory").unwrap();
    let runner = common::runner(dir.path());
    for (name, payload) in silent_and_talkative() {
        let ctx = ctx(&format!("artfile-{name}"));
        let err = run_and_collect(&runner, &ctx, &payload).await.unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains(&dir.path().join("artifacts").display().to_string())
                && shown.contains("Not a directory"),
            "{name}: {shown}"
        );
    }
}
