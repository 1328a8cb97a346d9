//! What a test leaves on disk: the execution directory's layout (records
//! beside `work/`, and directories made in the earlier `meta/` layout
//! still listed, adopted and torn down), and the files a silent test's
//! logs cost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use runner_core::{
    ArtifactBundle, ArtifactLocation, RunContext, RunnerAdapter, RunnerHandle, TestPayload,
    TestStatus,
};

fn log_path(bundle: &ArtifactBundle, name: &str) -> PathBuf {
    let ArtifactLocation::Local(path) = &bundle.get(name).unwrap().location else {
        panic!("{name} is not a local file");
    };
    path.clone()
}

/// Two tests that print nothing: their four empty logs are one inode (a
/// link each to the shared empty file), still read as empty logs, and a
/// test that prints gets a file of its own.
#[tokio::test]
async fn silent_streams_share_one_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let mut empties = Vec::new();
    for name in ["quiet-1", "quiet-2"] {
        let ctx = RunContext::new(name, "corr").with_execution_key(name);
        let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
        let payload = TestPayload::new(["true"]);
        let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
        assert_eq!(result.status, TestStatus::Passed);
        let bundle = runner
            .collect_artifacts(&ctx, &handle, &payload)
            .await
            .unwrap();
        runner.teardown(&ctx, &handle).await.unwrap();
        for log in ["logs/stdout.log", "logs/stderr.log"] {
            let path = log_path(&bundle, log);
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.len(), 0, "{}", path.display());
            assert_eq!(bundle.get(log).unwrap().size, 0);
            empties.push(meta.ino());
        }
    }
    empties.dedup();
    assert_eq!(
        empties.len(),
        1,
        "one inode for every empty log: {empties:?}"
    );

    let ctx = RunContext::new("loud", "corr").with_execution_key("loud");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::sh("echo hello");
    runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    runner.teardown(&ctx, &handle).await.unwrap();
    let out = log_path(&bundle, "logs/stdout.log");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    assert_ne!(std::fs::metadata(&out).unwrap().ino(), empties[0]);
}

/// A directory made by a runner of the earlier layout (records in `meta/`,
/// a handle without `flat`) after a worker crash: the leak listing finds
/// it, a redelivery adopts it and runs in it, teardown removes it.
#[tokio::test]
async fn a_directory_of_the_earlier_layout_is_listed_adopted_and_torn_down() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = RunContext::new("old.1", "corr").with_execution_key("old");
    let made = runner.provision(&ctx, &common::bench()).await.unwrap();
    let root = PathBuf::from(made.handle_id());
    // Records beside work/ in the new layout.
    assert!(root.join("handle.json").is_file());
    assert!(root.join("work").is_dir());
    assert!(!root.join("meta").exists());

    // Rewrite it as the earlier layout left it.
    let mut json: serde_json::Value = serde_json::from_str(&made.to_json()).unwrap();
    let state = json
        .as_object_mut()
        .and_then(|o| o.values_mut().find(|v| v.get("execution_key").is_some()))
        .expect("the handle carries the runner's state");
    state.as_object_mut().unwrap().remove("flat");
    let legacy = RunnerHandle::from_json(&json.to_string()).unwrap();
    std::fs::remove_file(root.join("handle.json")).unwrap();
    std::fs::create_dir(root.join("meta")).unwrap();
    std::fs::write(root.join("meta/handle.json"), legacy.to_json()).unwrap();

    let listed = runner.list_owned(&ctx).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].handle.handle_id(), made.handle_id());

    let again = RunContext::new("old.2", "corr")
        .with_execution_key("old")
        .with_attempt(2);
    let adopted = runner.provision(&again, &common::bench()).await.unwrap();
    assert_eq!(adopted.to_json(), legacy.to_json(), "adopted as it was");
    let payload = common::sh("echo still here");
    let result = runner.run_test(&again, &adopted, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    assert!(
        root.join("meta/group.json").is_file(),
        "records stay in meta/"
    );
    let bundle = runner
        .collect_artifacts(&again, &adopted, &payload)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(log_path(&bundle, "logs/stdout.log")).unwrap(),
        "still here\n"
    );
    runner.teardown(&again, &adopted).await.unwrap();
    assert!(!root.exists());
    assert!(runner.list_owned(&again).await.unwrap().is_empty());
}

/// Teardown removes the execution directory whether the test left `work/`
/// empty (removed in place) or left a tree in it (removed on the blocking
/// pool), and a second teardown of either is a no-op.
#[tokio::test]
async fn teardown_removes_an_empty_and_a_filled_work_directory() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    for (name, script) in [
        ("empty", "true"),
        ("filled", "mkdir -p a/b/c && echo x > a/b/c/f && echo y > g"),
    ] {
        let ctx = RunContext::new(name, "corr").with_execution_key(name);
        let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
        let exec_dir = PathBuf::from(handle.handle_id());
        let result = runner
            .run_test(&ctx, &handle, &common::sh(script))
            .await
            .unwrap();
        assert_eq!(result.status, TestStatus::Passed, "{name}");
        assert_eq!(
            exec_dir.join("work").read_dir().unwrap().next().is_some(),
            name == "filled"
        );
        runner.teardown(&ctx, &handle).await.unwrap();
        assert!(!exec_dir.exists(), "{name}: {} is left", exec_dir.display());
        runner.teardown(&ctx, &handle).await.unwrap();
    }
}

/// A teardown cut short by a crash can leave the records without `work/`
/// (CI's fifty-SIGKILL test once found such a directory adopted and its
/// test dead-lettered as "working directory is gone"). Provisioning the
/// key again finishes the removal and makes a whole directory: the test
/// runs.
#[tokio::test]
async fn records_left_without_work_are_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(dir.path());
    let ctx = RunContext::new("cut", "corr").with_execution_key("cut");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let exec_dir = PathBuf::from(handle.handle_id());
    std::fs::remove_dir(exec_dir.join("work")).unwrap();
    assert!(exec_dir.join("handle.json").is_file());

    let again = runner.provision(&ctx, &common::bench()).await.unwrap();
    assert!(exec_dir.join("work").is_dir());
    let result = runner
        .run_test(&ctx, &again, &TestPayload::new(["true"]))
        .await
        .unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    runner.teardown(&ctx, &again).await.unwrap();
    assert!(!exec_dir.exists());
}
