//! OnPremBenchRunner against bench-sim: queueing, leases, dead workers,
//! benches going offline or failing health checks, 503 bursts, 429,
//! bad tokens and malformed answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bench_sim::Health;
use bench_sim::Malformed;
use runner_core::{ErrorKind, LogSink, LogStream, RunnerAdapter, TestStatus};

const ONE_BENCH: &str = "
tokens: [sim-token-5b0e]
benches:
  - {id: only, type: rig}
";

/// Poll `check` every 50 ms for at most `bound`; true when it held.
async fn eventually(bound: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < end {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_queues_then_is_allocated() {
    let sim = common::sim(ONE_BENCH).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = std::sync::Arc::new(common::runner(&sim, dir.path()));
    let bench = serde_json::json!({"bench_type": "rig"});
    let spec = runner_core::BenchSpec::new().with_backend(bench);
    let first = common::ctx("first", 1);
    let held = runner.provision(&first, &spec).await.unwrap();

    let (sink, mut rx) = LogSink::channel(16);
    let waiting = {
        let runner = runner.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let ctx = common::ctx("second", 1).with_log_sink(sink);
            runner.provision(&ctx, &spec).await
        })
    };
    let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.stream, LogStream::System);
    assert!(line.text.contains("queued at position 1"), "{}", line.text);
    assert!(!waiting.is_finished());

    runner.teardown(&first, &held).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let state: runner_onprem::OnPremState = second.decode(runner_onprem::RUNNER_TYPE).unwrap();
    assert_eq!(state.bench_id, "only");
    runner
        .teardown(&common::ctx("second", 1), &second)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_heartbeats_the_lease_expires_and_frees_the_bench() {
    let sim = common::sim(ONE_BENCH).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&sim);
    config.lease_seconds = 3;
    let runner = common::runner_with(config, common::TOKEN, dir.path());
    let spec = runner_core::BenchSpec::new().with_backend(serde_json::json!({"bench_type": "rig"}));
    let ctx = common::ctx("lease", 1);
    let handle = runner.provision(&ctx, &spec).await.unwrap();
    let id = handle.handle_id().to_string();
    assert!(runner.is_heartbeating(&id));
    // With the heartbeat running, the lease outlives its 3 seconds.
    assert!(
        !eventually(Duration::from_secs(4), || sim
            .reservation_state(&id)
            .as_deref()
            != Some("allocated"))
        .await
    );
    runner.stop_heartbeat(&id);
    assert!(
        eventually(Duration::from_secs(10), || sim
            .reservation_state(&id)
            .as_deref()
            == Some("expired"))
        .await,
        "the lease must expire without heartbeats"
    );
    assert_eq!(sim.health("only"), Some(Health::Idle));
    // Teardown of an expired reservation is still success.
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_reservation_is_found_by_leak_listing() {
    let sim = common::sim(common::BENCHES).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = common::ctx("orphan", 1);
    {
        let worker = common::runner(&sim, dir.path());
        worker.provision(&ctx, &common::bench()).await.unwrap();
        // Dropped: its heartbeat stops, as when the process dies.
    }
    let sweeper = common::runner(&sim, dir.path());
    let owned = sweeper.list_owned(&ctx).await.unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert_eq!(owned[0].execution_key.as_deref(), Some("orphan"));
    sweeper.teardown(&ctx, &owned[0].handle).await.unwrap();
    assert!(sweeper.list_owned(&ctx).await.unwrap().is_empty());
    assert_eq!(sim.live_reservations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_going_offline_mid_run_is_transient_and_the_retry_gets_another() {
    let sim = common::sim(common::BENCHES).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = std::sync::Arc::new(common::runner(&sim, dir.path()));
    let ctx = common::ctx("offline", 1);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let state: runner_onprem::OnPremState = handle.decode(runner_onprem::RUNNER_TYPE).unwrap();
    let run = {
        let (runner, ctx, handle) = (runner.clone(), ctx.clone(), handle.clone());
        tokio::spawn(async move {
            runner
                .run_test(
                    &ctx,
                    &handle,
                    &common::payload(&[("SIM_DURATION_MS", "60000"), ("SIM_LINES", "60")]),
                )
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || sim
            .requests("POST /v1/reservations/{id}/runs")
            >= 1)
        .await
    );
    sim.set_health(&state.bench_id, Health::Offline);
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("bench_offline"), "{err}");
    runner.teardown(&ctx, &handle).await.unwrap();

    // The retry (same execution key, next attempt) lands on the other bench.
    let retry = common::ctx("offline", 2);
    let again = runner.provision(&retry, &common::bench()).await.unwrap();
    let again_state: runner_onprem::OnPremState = again.decode(runner_onprem::RUNNER_TYPE).unwrap();
    assert_ne!(again_state.bench_id, state.bench_id);
    let result = runner
        .run_test(&retry, &again, &common::payload(&[]))
        .await
        .unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    runner.teardown(&retry, &again).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_skips_a_bench_that_fails_its_health_check() {
    let sim = common::sim(
        "
tokens: [sim-token-5b0e]
benches:
  - {id: flaky, type: rig, health_check_fails: true}
  - {id: good, type: rig}
",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let spec = runner_core::BenchSpec::new().with_backend(serde_json::json!({"bench_type": "rig"}));
    let ctx = common::ctx("health", 1);
    let handle = runner.provision(&ctx, &spec).await.unwrap();
    let state: runner_onprem::OnPremState = handle.decode(runner_onprem::RUNNER_TYPE).unwrap();
    assert_eq!(state.bench_id, "good");
    assert_eq!(sim.health("flaky"), Some(Health::Bad));
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_burst_is_survived() {
    let sim = common::sim(common::BENCHES).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let ctx = common::ctx("burst", 1);
    sim.fail_next(3);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    assert_eq!(
        sim.requests("POST /v1/reservations"),
        4,
        "three 503s, then the answer"
    );
    assert_eq!(sim.live_reservations(), 1);
    runner.teardown(&ctx, &handle).await.unwrap();

    // A burst longer than the attempts is a transient error.
    sim.fail_next(50);
    let err = runner
        .provision(&common::ctx("burst2", 1), &common::bench())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("503"), "{err}");
    sim.fail_next(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let sim = common::sim(common::BENCHES).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let ctx = common::ctx("limited", 1);
    sim.rate_limit_next(1, 1);
    let started = std::time::Instant::now();
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    // A lower bound only: the client must have waited the second it was told.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.requests("POST /v1/reservations"), 2);
    runner.teardown(&ctx, &handle).await.unwrap();

    // A Retry-After longer than the runner waits is handed to the worker.
    sim.rate_limit_next(1, 600);
    let err = runner
        .provision(&common::ctx("limited2", 1), &common::bench())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_permanent_and_never_shown() {
    let sim = common::sim(common::BENCHES).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "wrong-token-d41d8cd98f";
    let runner = common::runner_with(common::config(&sim), secret, dir.path());
    let err = runner
        .provision(&common::ctx("auth", 1), &common::bench())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(!err.is_retryable());
    assert!(err.message().contains("401"), "{err}");
    for text in [err.to_string(), format!("{err:?}"), format!("{runner:?}")] {
        assert!(!text.contains(secret), "the token leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_clear_errors_and_the_retry_adopts_the_reservation() {
    let sim = common::sim(common::BENCHES).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let ctx = common::ctx("garbled", 1);

    sim.malformed_next(1, Malformed::BadJson);
    let err = runner.provision(&ctx, &common::bench()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(
        err.message().contains("not JSON") && err.message().contains("POST /v1/reservations"),
        "{err}"
    );

    sim.malformed_next(1, Malformed::MissingFields);
    let err = runner.provision(&ctx, &common::bench()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(
        err.message().contains("missing field `id`")
            || err.message().contains("missing field `state`"),
        "{err}"
    );

    // The server made the reservation both times; the idempotency key
    // means there is one, and a clean retry gets it.
    assert_eq!(sim.live_reservations(), 1);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    assert_eq!(sim.live_reservations(), 1);
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_by_offset_and_artifacts_are_verified_and_redacted() {
    let sim = common::sim(common::BENCHES).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let ctx = common::ctx("logs", 1);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::payload(&[
        ("SIM_LINES", "300"),
        ("SIM_DURATION_MS", "1500"),
        ("SIM_ARTIFACTS", "reports/junit.xml,can.log"),
    ]);
    payload.env.insert(
        "FLASH_KEY".into(),
        runner_core::EnvVar::Detailed {
            value: "flash-secret-91".into(),
            secret: true,
        },
    );
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
    assert_eq!(result.status, TestStatus::Passed);
    let lines = drain.await.unwrap();
    let numbered: Vec<&String> = lines.iter().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(numbered.len(), 300, "every line once, in order");
    for (i, line) in numbered.iter().enumerate() {
        assert!(
            line.starts_with(&format!("line {} of 300", i + 1)),
            "{line}"
        );
    }
    assert!(
        lines.contains(&"env FLASH_KEY=***".to_string()),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("flash-secret-91")));

    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let names: Vec<&str> = bundle.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["logs/run.log", "reports/junit.xml", "can.log"]);
    for artifact in &bundle.artifacts {
        let runner_core::ArtifactLocation::Local(path) = &artifact.location else {
            panic!()
        };
        assert!(path.starts_with(dir.path()));
        let (size, sha) = runner_core::artifact::sha256_file(path).unwrap();
        assert_eq!(
            (size, sha.as_str()),
            (artifact.size, artifact.sha256.as_str())
        );
    }
    runner.teardown(&ctx, &handle).await.unwrap();
}
