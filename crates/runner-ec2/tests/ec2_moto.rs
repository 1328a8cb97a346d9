//! Ec2Runner against moto (EC2, S3) and the SSM agent emulator: warm pool,
//! leak listing, provision retries, secrets, packages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use runner_core::{
    ArtifactLocation, EnvVar, ErrorKind, LogSink, RunContext, RunnerAdapter, TestStatus,
};
use runner_ec2::{Ec2State, PoolConfig};

fn pool(min_ready: u32, max_uses: u32) -> PoolConfig {
    PoolConfig {
        name: "p".into(),
        min_ready,
        max_idle_seconds: 3_600,
        max_uses,
        refill_interval_seconds: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_hit_makes_no_run_instances_call() {
    let env = common::env("warm").await;
    let mut config = env.config.clone();
    config.pool = Some(pool(1, 10));
    let runner = env.runner_with(config);
    let refill = runner.refill_pool().await.unwrap();
    assert_eq!(refill.launched, 1);
    assert_eq!(runner.run_instances_calls().await, 1);
    let warm = env.live_instances().await;
    assert_eq!(warm.len(), 1);

    let ctx = common::ctx("warm-1");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    assert_eq!(
        runner.run_instances_calls().await,
        1,
        "the claim must not launch"
    );
    assert_eq!(handle.handle_id(), warm[0]);
    let tags = env.tags_of(&warm[0]).await;
    assert_eq!(tags["orchestrator:pool-state"], "busy");
    assert_eq!(tags["orchestrator:execution-key"], "warm-1");

    runner.teardown(&ctx, &handle).await.unwrap();
    let tags = env.tags_of(&warm[0]).await;
    assert_eq!(tags["orchestrator:pool-state"], "ready");
    assert_eq!(tags["orchestrator:uses"], "1");
    assert!(!tags.contains_key("orchestrator:execution-key"));
    assert_eq!(env.state_of(&warm[0]).await, "running");
    // Idempotent: a second teardown of the same handle changes nothing.
    runner.teardown(&ctx, &handle).await.unwrap();
    assert_eq!(env.tags_of(&warm[0]).await["orchestrator:uses"], "1");

    // A restarted worker (a new runner) finds the pool by its tags.
    let restarted = env.runner_with(runner.config().clone());
    let ctx2 = common::ctx("warm-2");
    let again = restarted.provision(&ctx2, &common::bench()).await.unwrap();
    assert_eq!(again.handle_id(), warm[0]);
    assert_eq!(restarted.run_instances_calls().await, 0);
    restarted.teardown(&ctx2, &again).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_use_count_retires_an_instance() {
    let env = common::env("maxuse").await;
    let mut config = env.config.clone();
    config.pool = Some(pool(1, 2));
    let runner = env.runner_with(config);
    runner.refill_pool().await.unwrap();
    let id = env.live_instances().await[0].clone();
    for round in 1..=2 {
        let ctx = common::ctx(&format!("use-{round}"));
        let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
        assert_eq!(
            handle.handle_id(),
            id,
            "round {round} claims the pool instance"
        );
        runner.teardown(&ctx, &handle).await.unwrap();
    }
    assert_eq!(
        env.state_of(&id).await,
        "terminated",
        "the second use reached max_uses"
    );
    assert_eq!(runner.run_instances_calls().await, 1);
    // The next provision launches (the pool is empty) and refill tops it up.
    let ctx = common::ctx("use-3");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    assert_ne!(handle.handle_id(), id);
    assert_eq!(runner.run_instances_calls().await, 2);
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_listing_finds_a_dead_workers_instance_and_teardown_removes_it() {
    let env = common::env("leak").await;
    let ctx = common::ctx("leaky");
    {
        // A worker provisions and dies: nothing of it survives but EC2's tags.
        let worker = env.runner();
        worker.provision(&ctx, &common::bench()).await.unwrap();
    }
    let sweeper = env.runner();
    let owned = sweeper.list_owned(&ctx).await.unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    let leak = &owned[0];
    assert_eq!(leak.execution_key.as_deref(), Some("leaky"));
    assert_eq!(leak.execution_id.as_deref(), Some("leaky.1"));
    assert!(leak.age_seconds.is_some());
    sweeper.teardown(&ctx, &leak.handle).await.unwrap();
    assert_eq!(env.state_of(&leak.resource_id).await, "terminated");
    assert!(sweeper.list_owned(&ctx).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_retry_never_leaves_two_instances() {
    let env = common::env("retry").await;
    let runner = env.runner();

    // Attempt 1 times out waiting for SSM: its instance is terminated
    // before the error returns.
    env.sim.set_all_offline(true);
    let first = RunContext::new("retry-key.1", "corr")
        .with_execution_key("retry-key")
        .with_attempt(1)
        .with_timeout(Duration::from_secs(2));
    let err = runner
        .provision(&first, &common::bench())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
    assert!(env.live_instances_for("retry-key").await.is_empty());

    // Attempt 2 dies mid-provision (the future is dropped, as by SIGKILL):
    // its instance stays, tagged.
    let second = RunContext::new("retry-key.2", "corr")
        .with_execution_key("retry-key")
        .with_attempt(2);
    let dropped = tokio::time::timeout(
        Duration::from_millis(1500),
        runner.provision(&second, &common::bench()),
    )
    .await;
    assert!(
        dropped.is_err(),
        "provision should still be waiting for SSM"
    );
    let left = env.live_instances_for("retry-key").await;
    assert_eq!(left.len(), 1);
    let launches = runner.run_instances_calls().await;

    // Attempt 3 adopts it instead of launching.
    env.sim.set_all_offline(false);
    let third = RunContext::new("retry-key.3", "corr")
        .with_execution_key("retry-key")
        .with_attempt(3);
    let handle = runner.provision(&third, &common::bench()).await.unwrap();
    assert_eq!(handle.handle_id(), left[0]);
    assert_eq!(
        runner.run_instances_calls().await,
        launches,
        "adoption must not launch"
    );
    assert_eq!(env.live_instances_for("retry-key").await, left);
    assert_eq!(
        env.tags_of(&left[0]).await["orchestrator:execution-id"],
        "retry-key.3"
    );
    runner.teardown(&third, &handle).await.unwrap();
    assert!(env.live_instances_for("retry-key").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_and_the_environment_file_goes_at_teardown() {
    let env = common::env("secret").await;
    let runner = env.runner();
    let ctx = common::ctx("secret-run");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::sh("echo token=$API_TOKEN; echo plain=$PLAIN");
    payload.env.insert(
        "API_TOKEN".into(),
        EnvVar::Detailed {
            value: "hunter2-secret".into(),
            secret: true,
        },
    );
    payload
        .env
        .insert("PLAIN".into(), EnvVar::Plain("visible".into()));
    let (sink, mut rx) = LogSink::channel(64);
    let drain = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line.text);
        }
        lines
    });
    let run_ctx = ctx.child().with_log_sink(sink);
    let result = runner.run_test(&run_ctx, &handle, &payload).await.unwrap();
    drop(run_ctx);
    assert_eq!(result.status, TestStatus::Passed, "{result:?}");
    let lines = drain.await.unwrap();
    assert!(lines.contains(&"plain=visible".to_string()), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("token=") && !l.contains("hunter2")),
        "{lines:?}"
    );

    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let log = bundle
        .artifacts
        .iter()
        .find(|a| a.name == "logs/output.log")
        .unwrap();
    let ArtifactLocation::Uri(uri) = &log.location else {
        panic!("{log:?}")
    };
    let key = uri
        .split_once(&format!("{}/", env.config.bucket))
        .unwrap()
        .1;
    let stored = env
        .s3
        .get_object()
        .bucket(&env.config.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(stored.body.collect().await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains("plain=visible") && !text.contains("hunter2"),
        "{text}"
    );
    assert_eq!(
        runner_core::artifact::sha256_bytes(text.as_bytes()),
        log.sha256
    );

    // The instance deleted the environment file as soon as it read it;
    // teardown deletes any copy again (a crashed attempt's).
    let env_key = format!("{}env.sh", env.config.execution_prefix(ctx.execution_id()));
    assert!(
        env.s3
            .head_object()
            .bucket(&env.config.bucket)
            .key(&env_key)
            .send()
            .await
            .is_err(),
        "the instance deletes env.sh once it has read it"
    );
    runner.teardown(&ctx, &handle).await.unwrap();
    assert!(
        env.s3
            .head_object()
            .bucket(&env.config.bucket)
            .key(&env_key)
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_package_is_uploaded_fetched_and_unpacked() {
    let env = common::env("package").await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("suite")).unwrap();
    std::fs::write(
        src.join("suite/run.sh"),
        "echo suite ran; mkdir -p reports; echo '<testsuite/>' > reports/junit.xml; exit 4\n",
    )
    .unwrap();
    let tar = dir.path().join("pkg.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("suite")
        .status()
        .unwrap();
    assert!(status.success());
    let runner = env.runner();
    let ctx = common::ctx("pkg-run");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::sh("sh run.sh");
    payload.package = Some(tar.display().to_string());
    payload.working_dir = Some("suite".into());
    payload.artifacts = vec!["reports/*.xml".into()];
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(
        (result.status, result.exit_code),
        (TestStatus::Failed, Some(4)),
        "{result:?}"
    );
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let names: Vec<&str> = bundle.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["logs/output.log", "reports/junit.xml"]);
    let junit = &bundle.artifacts[1];
    assert_eq!(junit.size, 13);
    assert_eq!(
        junit.sha256,
        runner_core::artifact::sha256_bytes(b"<testsuite/>\n")
    );
    runner.teardown(&ctx, &handle).await.unwrap();

    // A directory is refused with the field named, and nothing is sent.
    let ctx = common::ctx("pkg-dir");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    payload.package = Some(src.display().to_string());
    let sent_before = env.sim.calls("SendCommand");
    let err = runner.run_test(&ctx, &handle, &payload).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidSpec, Some("payload.package")),
        "{err}"
    );
    assert_eq!(env.sim.calls("SendCommand"), sent_before);
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_artifact_key_is_a_clear_error() {
    let env = common::env("unsafe").await;
    let runner = env.runner();
    let ctx = common::ctx("unsafe-run");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let prefix = env.config.execution_prefix(ctx.execution_id());
    // A backslash name would be a path separator on a Windows consumer.
    let key = format!("{prefix}artifacts/..\\escape.txt");
    env.s3
        .put_object()
        .bucket(&env.config.bucket)
        .key(&key)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let err = runner
        .collect_artifacts(&ctx, &handle, &common::sh("true"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.message().contains("escape.txt"), "{err}");
    runner.teardown(&ctx, &handle).await.unwrap();
    let state: Ec2State = handle.decode(runner_ec2::RUNNER_TYPE).unwrap();
    assert_eq!(env.state_of(&state.instance_id).await, "terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_past_its_timeout_is_timed_out_with_its_output_kept() {
    let env = common::env("timeout").await;
    let runner = env.runner();
    let ctx = common::ctx("timeout-run");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::sh("echo before the hang; exec sleep 120");
    payload.timeout_seconds = Some(2);
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::TimedOut, "{result:?}");
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let log = &bundle.artifacts[0];
    assert_eq!(log.name, "logs/output.log");
    assert_eq!(log.size, "before the hang\n".len() as u64);
    runner.teardown(&ctx, &handle).await.unwrap();
}
