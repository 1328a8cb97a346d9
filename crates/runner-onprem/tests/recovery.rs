//! Recovery after a dead worker and the kit's artifacts: a redelivered
//! attempt cancels the run its dead attempt left on the adopted bench,
//! collects only its own run, a dropped provision frees its bench, and the
//! run's log is kept, redacted, as an artifact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use reqwest::Method;
use runner_core::{ArtifactLocation, EnvVar, RunnerAdapter, TestStatus};
use runner_onprem::{Api, RetryPolicy, Token};

const ONE_BENCH: &str = "
tokens: [sim-token-5b0e]
benches:
  - {id: only, type: rig, labels: {fw: '2'}}
";

fn api(sim: &bench_sim::SimHandle) -> Api {
    let retry = RetryPolicy {
        attempts: 1,
        base: Duration::from_millis(10),
        max: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(1),
    };
    Api::new(
        &sim.base_url(),
        Token::new(common::TOKEN),
        Duration::from_secs(5),
        retry,
    )
    .unwrap()
}

/// (idempotency key, state) of every run on a reservation.
async fn runs(sim: &bench_sim::SimHandle, reservation: &str) -> Vec<(String, String)> {
    let answer: serde_json::Value = api(sim)
        .json(
            Method::GET,
            &format!("/v1/reservations/{reservation}/runs"),
            None,
            None,
        )
        .await
        .unwrap();
    answer["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["idempotency_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_attempt_cancels_the_stale_run_and_starts_anew() {
    let sim = common::sim(ONE_BENCH).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = common::runner(&sim, dir.path());
    let first = common::ctx("redeliver", 1);
    let handle = dead.provision(&first, &common::bench()).await.unwrap();
    // The first worker starts a long run and dies with it in flight.
    let long = common::payload(&[("SIM_DURATION_MS", "60000")]);
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        dead.run_test(&first, &handle, &long),
    )
    .await;
    let state: runner_onprem::OnPremState = handle.decode(runner_onprem::RUNNER_TYPE).unwrap();
    assert_eq!(
        runs(&sim, &state.reservation_id).await,
        [("redeliver.1".to_string(), "running".to_string())]
    );

    // The redelivery, on another worker, adopts the reservation and runs.
    let worker = common::runner(&sim, dir.path());
    let second = common::ctx("redeliver", 2);
    let adopted = worker.provision(&second, &common::bench()).await.unwrap();
    assert_eq!(
        adopted.handle_id(),
        handle.handle_id(),
        "adopted, not a second bench"
    );
    let result = worker
        .run_test(&second, &adopted, &common::payload(&[]))
        .await
        .expect("the stale run is cancelled, not a permanent bench_busy");
    assert_eq!(result.status, TestStatus::Passed);
    let now = runs(&sim, &state.reservation_id).await;
    assert!(
        now.contains(&("redeliver.1".to_string(), "cancelled".to_string())),
        "{now:?}"
    );
    worker.teardown(&second, &adopted).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_takes_only_its_own_attempts_run() {
    let sim = common::sim(ONE_BENCH).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let first = common::ctx("own", 1);
    let handle = runner.provision(&first, &common::bench()).await.unwrap();
    let payload = common::payload(&[("SIM_ARTIFACTS", "first.txt")]);
    runner.run_test(&first, &handle, &payload).await.unwrap();
    // Attempt 2 adopted the reservation and never started its run.
    let second = common::ctx("own", 2);
    let bundle = runner
        .collect_artifacts(&second, &handle, &payload)
        .await
        .unwrap();
    assert!(
        bundle.get("first.txt").is_none(),
        "attempt 2 collected attempt 1's files: {bundle:?}"
    );
    runner.teardown(&second, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_provision_stops_its_heartbeat_and_releases() {
    let sim = common::sim(ONE_BENCH).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let first = common::ctx("holder", 1);
    let held = runner.provision(&first, &common::bench()).await.unwrap();
    assert_eq!(sim.live_reservations(), 1);
    // The second provision queues behind the first; its caller gives up.
    let queued = tokio::time::timeout(
        Duration::from_millis(400),
        runner.provision(&common::ctx("dropped", 1), &common::bench()),
    )
    .await;
    assert!(queued.is_err(), "it was still queued");
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while sim.live_reservations() > 1 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sim.live_reservations(),
        1,
        "the dropped provision's reservation was released"
    );
    let state: runner_onprem::OnPremState = held.decode(runner_onprem::RUNNER_TYPE).unwrap();
    assert!(runner.is_heartbeating(&state.reservation_id));
    let listed: serde_json::Value = api(&sim)
        .json(Method::GET, "/v1/reservations?owner=tests", None, None)
        .await
        .unwrap();
    for r in listed["reservations"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        if id != state.reservation_id {
            assert!(!runner.is_heartbeating(id), "{id} is still heartbeating");
        }
    }
    runner.teardown(&first, &held).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_log_is_kept_redacted_and_collect_twice_is_the_same() {
    let sim = common::sim(ONE_BENCH).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = common::runner(&sim, dir.path());
    let ctx = common::ctx("runlog", 1);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::payload(&[("SIM_LINES", "50")]);
    payload.env.insert(
        "FLASH_KEY".into(),
        EnvVar::Detailed {
            value: "flash-secret-91".into(),
            secret: true,
        },
    );
    runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let log = &bundle.artifacts[0];
    assert_eq!(log.name, "logs/run.log");
    let ArtifactLocation::Local(path) = &log.location else {
        panic!("{log:?}")
    };
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("env FLASH_KEY=***"), "{text}");
    assert!(!text.contains("flash-secret-91"));
    assert!(text.contains("line 50 of 50"));
    let (size, sha) = runner_core::artifact::sha256_file(path).unwrap();
    assert_eq!((size, sha.as_str()), (log.size, log.sha256.as_str()));
    let again = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    assert_eq!(again, bundle);
    runner.teardown(&ctx, &handle).await.unwrap();
}
