//! EksRunner against scripted pod lifecycles: each pod failure's result
//! kind and diagnosis, a log stream that drops mid-way (every line exactly
//! once), idempotent delete with cascade, redelivery, secrets, API
//! outages, leak listing, kubeconfig loading and S3 artifacts (moto).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{FakeK8s, ctx, setup};
use runner_core::{
    ArtifactLocation, EnvVar, ErrorKind, LogSink, LogStream, RunContext, RunnerAdapter, TestStatus,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_is_a_failed_result_with_a_diagnosis() {
    let s = setup().await;
    let ctx = ctx("oom");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let result = s
        .runner
        .run_test(&ctx, &handle, &common::payload(&[("SIM_MODE", "oom")]))
        .await
        .unwrap();
    assert_eq!(result.status, TestStatus::Failed);
    assert_eq!(result.exit_code, Some(137));
    let diagnosis = result.diagnosis.unwrap();
    assert!(diagnosis.message.contains("OOMKilled"), "{diagnosis:?}");
    s.runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_permanent() {
    let s = setup().await;
    let ctx = ctx("pull");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let err = s
        .runner
        .run_test(
            &ctx,
            &handle,
            &common::payload(&[("SIM_MODE", "imagepull")]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(!err.is_retryable());
    assert!(err.message().contains("ImagePullBackOff"), "{err}");
    assert!(err.message().contains("registry.example/tests:1"), "{err}");
    assert_eq!(err.execution_id(), ctx.execution_id());
    s.runner.teardown(&ctx, &handle).await.unwrap();
    assert!(s.fake.jobs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_is_transient_with_the_reason() {
    let s = setup().await;
    let ctx = ctx("evict");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let err = s
        .runner
        .run_test(
            &ctx,
            &handle,
            &common::payload(&[("SIM_MODE", "evict"), ("SIM_LINES", "20")]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    assert!(err.message().contains("evicted"), "{err}");
    assert!(err.message().contains("low on resource: memory"), "{err}");
    s.runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_deadline_is_a_timed_out_result() {
    let s = setup().await;
    let ctx = ctx("deadline");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::payload(&[("SIM_LINES", "100000"), ("SIM_LINE_MS", "10")]);
    payload.timeout_seconds = Some(1);
    let result = s.runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::TimedOut, "{result:?}");
    let job = s.fake.job(&handle.handle_id()[6..]);
    // Either the Job's own deadline fired or the runner's, which deletes it.
    if let Some(job) = job {
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 1);
    }
    s.runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_log_stream_resumes_with_every_line_once() {
    let s = setup().await;
    let ctx0 = ctx("drops");
    let (sink, mut rx) = LogSink::channel(64);
    let ctx = ctx0.child().with_log_sink(sink);
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let lines = 600u64;
    // 600 lines, 1 ms apart, timestamps in 10 ms steps (ten lines share
    // each); every connection breaks after 37 lines.
    let payload = common::payload(&[
        ("SIM_LINES", &lines.to_string()),
        ("SIM_LINE_MS", "1"),
        ("SIM_STAMP_MS", "10"),
        ("SIM_LOG_DROP_AFTER", "37"),
    ]);
    let collector = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(line) = rx.recv().await {
            if line.stream != LogStream::System {
                got.push(line.text);
            }
        }
        got
    });
    let result = s.runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    let bundle = s
        .runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    drop(ctx);
    drop(ctx0);
    let got = collector.await.unwrap();
    let expected: Vec<String> = (0..lines).map(|i| format!("line {i}")).collect();
    assert_eq!(got.len(), expected.len(), "line count");
    assert_eq!(got, expected);
    assert!(
        s.fake.log_connections() >= lines / 37,
        "the stream should have dropped many times: {} connections",
        s.fake.log_connections()
    );
    // The log artifact holds the same lines.
    let log = bundle.get("logs/output.log").unwrap();
    let ArtifactLocation::Local(path) = &log.location else {
        panic!("the log is local")
    };
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text.lines().count() as u64, lines);
    s.runner.teardown(&handle_ctx(), &handle).await.unwrap();
}

fn handle_ctx() -> RunContext {
    ctx("teardown")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_cascades_and_is_idempotent() {
    let s = setup().await;
    let ctx = ctx("delete");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    s.runner
        .run_test(&ctx, &handle, &common::payload(&[]))
        .await
        .unwrap();
    assert_eq!(s.fake.jobs().len(), 1);
    assert_eq!(s.fake.pods().len(), 1);
    s.runner.teardown(&ctx, &handle).await.unwrap();
    s.runner.teardown(&ctx, &handle).await.unwrap();
    assert!(s.fake.jobs().is_empty());
    assert!(s.fake.pods().is_empty(), "the pod went with its Job");
    let deletes = s.fake.deletes();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].1, "Background");
    // The second teardown got a 404 and called it success.
    let job_deletes = s
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE /apis/batch/v1/namespaces/tests/jobs/"))
        .count();
    assert_eq!(job_deletes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_attempt_adopts_its_job_and_a_new_attempt_replaces_it() {
    let s = setup().await;
    let ctx1 = ctx("redeliver").with_execution_key("key-1").with_attempt(1);
    let handle = s.runner.provision(&ctx1, &common::bench()).await.unwrap();
    let payload = common::payload(&[("SIM_LINES", "4")]);
    s.runner.run_test(&ctx1, &handle, &payload).await.unwrap();
    let first = s.fake.job(&handle.handle_id()[6..]).unwrap();
    // The same attempt again (a worker died after creating the Job): no new Job.
    let again = s.runner.run_test(&ctx1, &handle, &payload).await.unwrap();
    assert_eq!(again.status, TestStatus::Passed);
    let same = s.fake.job(&handle.handle_id()[6..]).unwrap();
    assert_eq!(first["metadata"]["uid"], same["metadata"]["uid"]);
    // The next attempt: the old Job is deleted and a new one made.
    let ctx2 = ctx("redeliver").with_execution_key("key-1").with_attempt(2);
    s.runner.run_test(&ctx2, &handle, &payload).await.unwrap();
    let second = s.fake.job(&handle.handle_id()[6..]).unwrap();
    assert_ne!(first["metadata"]["uid"], second["metadata"]["uid"]);
    assert_eq!(
        second["metadata"]["annotations"]["orchestrator.dev/attempt"],
        "2"
    );
    assert_eq!(s.fake.jobs().len(), 1);
    s.runner.teardown(&ctx2, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_go_to_a_secret_and_never_into_the_job_or_log() {
    let s = setup().await;
    let ctx = ctx("secret");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::with_secret(common::payload(&[]), "API_TOKEN", "hunter2-secret");
    s.runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let job = s.fake.job(&handle.handle_id()[6..]).unwrap();
    assert!(!job.to_string().contains("hunter2-secret"));
    let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    let token = env
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "API_TOKEN")
        .unwrap();
    assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "API_TOKEN");
    let secrets = s.fake.secrets();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["stringData"]["API_TOKEN"], "hunter2-secret");
    // Owned by the Job, so the Job's TTL takes it along if teardown never runs.
    let owner = &secrets[0]["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Job");
    assert_eq!(owner["uid"], job["metadata"]["uid"]);
    s.runner.teardown(&ctx, &handle).await.unwrap();
    assert!(s.fake.secrets().is_empty(), "the Secret goes at teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_whose_job_never_came_is_listed_and_torn_down() {
    let s = setup().await;
    let ctx = ctx("orphan").with_execution_key("orphan-key");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::with_secret(common::payload(&[]), "API_TOKEN", "orphaned-secret");
    // The Secret is made, the Job is not; no teardown follows (a worker
    // that died there).
    s.fake.reject_jobs(true);
    let err = s
        .runner
        .run_test(&ctx, &handle, &payload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    s.fake.reject_jobs(false);
    assert_eq!(s.fake.secrets().len(), 1);
    let owned = s.runner.list_owned(&ctx).await.unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert_eq!(owned[0].resource_id, handle.handle_id());
    assert_eq!(owned[0].execution_key.as_deref(), Some("orphan-key"));
    assert_eq!(owned[0].execution_id.as_deref(), Some(ctx.execution_id()));
    // The reaper's path: teardown from the listed handle removes it.
    s.runner.teardown(&ctx, &owned[0].handle).await.unwrap();
    assert!(s.fake.secrets().is_empty());
    assert!(s.runner.list_owned(&ctx).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outages_are_retried_then_transient() {
    let s = setup().await;
    let ctx = ctx("outage");
    s.fake.fail_next(2);
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    s.fake.fail_next(50);
    let err = s
        .runner
        .provision(&ctx, &common::bench())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("503"), "{err}");
    assert_eq!(err.correlation_id(), ctx.correlation_id());
    s.fake.fail_next(0);
    s.runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_are_listed_by_label_until_torn_down() {
    let s = setup().await;
    let ctx = ctx("leak").with_execution_key("leak-key");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    s.runner
        .run_test(&ctx, &handle, &common::payload(&[]))
        .await
        .unwrap();
    let owned = s.runner.list_owned(&ctx).await.unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert_eq!(owned[0].resource_id, handle.handle_id());
    assert_eq!(owned[0].execution_id.as_deref(), Some(ctx.execution_id()));
    assert_eq!(owned[0].execution_key.as_deref(), Some("leak-key"));
    // The listed handle is enough to tear it down (the reaper's path).
    s.runner.teardown(&ctx, &owned[0].handle).await.unwrap();
    assert!(s.runner.list_owned(&ctx).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_namespace_is_permanent_and_names_it() {
    let fake = FakeK8s::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(serde_json::json!({"namespace": "nope"}));
    let runner = common::runner_with(&fake, config, dir.path());
    let ctx = ctx("nons");
    // Listing Jobs in a missing namespace answers an empty list, as the
    // real API server does; creating one is what fails.
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let err = runner
        .run_test(&ctx, &handle, &common::payload(&[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.message().contains("nope"), "{err}");
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_invalid_specs_naming_the_field() {
    let s = setup().await;
    let ctx = ctx("badpayload");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::payload(&[]);
    payload
        .env
        .insert("BAD-NAME".into(), EnvVar::Plain("x".into()));
    let err = s
        .runner
        .run_test(&ctx, &handle, &payload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert_eq!(err.field(), Some("payload.env.BAD-NAME"));
    let mut payload = common::payload(&[]);
    payload.backend = serde_json::json!({"imag": "x"});
    let err = s
        .runner
        .run_test(&ctx, &handle, &payload)
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("payload.backend.imag"), "{err}");
    assert!(s.fake.jobs().is_empty(), "nothing was created");
    s.runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_file_is_read() {
    let fake = FakeK8s::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let config = common::config(serde_json::json!({"kubeconfig": kubeconfig}));
    let runner = runner_eks::EksRunner::new(config, dir.path().to_path_buf()).unwrap();
    let ctx = ctx("kubeconfig");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let result = runner
        .run_test(&ctx, &handle, &common::payload(&[]))
        .await
        .unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    runner.teardown(&ctx, &handle).await.unwrap();
    // A missing file is a permanent error naming it.
    let config = common::config(serde_json::json!({"kubeconfig": dir.path().join("missing")}));
    let runner = runner_eks::EksRunner::new(config, dir.path().to_path_buf()).unwrap();
    let err = runner.provision(&ctx, &common::bench()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.message().contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_uploads_are_collected_from_s3() {
    let moto = test_emulators::Moto::start().unwrap();
    let s3 = test_emulators::aws::s3_client(&moto.endpoint()).await;
    s3.create_bucket().bucket("eks-art").send().await.unwrap();
    let fake = FakeK8s::start().await;
    let uploader_s3 = s3.clone();
    fake.set_uploader(Arc::new(move |uri: String, n: u64| {
        let s3 = uploader_s3.clone();
        Box::pin(async move {
            // A slow upload: the runner must wait for the pod, not the test container.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let rest = uri.strip_prefix("s3://").unwrap();
            let (bucket, prefix) = rest.split_once('/').unwrap();
            for i in 0..n {
                s3.put_object()
                    .bucket(bucket)
                    .key(format!("{prefix}reports/r{i}.txt"))
                    .body(format!("report {i}").into_bytes().into())
                    .send()
                    .await
                    .unwrap();
            }
        })
    }));
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(serde_json::json!({
        "artifacts": {"bucket": "eks-art", "uploader_image": "amazon/aws-cli:2", "force_path_style": true},
    }));
    let runner = runner_eks::EksRunner::with_clients(
        config,
        dir.path().to_path_buf(),
        fake.client(),
        Some(s3.clone()),
    )
    .unwrap();
    let ctx = ctx("s3");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::payload(&[("SIM_ARTIFACTS", "3")]);
    runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let job = fake.job(&handle.handle_id()[6..]).unwrap();
    let sidecar = &job["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], "amazon/aws-cli:2");
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let mut names: Vec<&str> = bundle.artifacts.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "logs/output.log",
            "reports/r0.txt",
            "reports/r1.txt",
            "reports/r2.txt"
        ]
    );
    let r1 = bundle.get("reports/r1.txt").unwrap();
    assert_eq!(r1.size, "report 1".len() as u64);
    assert_eq!(r1.sha256, runner_core::artifact::sha256_bytes(b"report 1"));
    assert!(
        matches!(&r1.location, ArtifactLocation::Uri(u) if u.starts_with("s3://eks-art/orchestrator/exec-s3/artifacts/"))
    );
    runner.teardown(&ctx, &handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploader_that_never_finishes_is_waited_for_only_its_timeout() {
    let fake = FakeK8s::start().await;
    // The sidecar never completes its upload: the pod stays Running.
    fake.set_uploader(Arc::new(|_uri: String, _n: u64| {
        Box::pin(futures::future::pending::<()>())
    }));
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(serde_json::json!({
        "artifacts": {"bucket": "eks-art", "uploader_image": "amazon/aws-cli:2", "upload_timeout_seconds": 1},
    }));
    let runner = common::runner_with(&fake, config, dir.path());
    let ctx0 = ctx("hung-upload");
    let (sink, mut rx) = LogSink::channel(64);
    let ctx = ctx0.child().with_log_sink(sink);
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::payload(&[("SIM_ARTIFACTS", "2")]);
    let collector = tokio::spawn(async move {
        let mut system = Vec::new();
        while let Some(line) = rx.recv().await {
            if line.stream == LogStream::System {
                system.push(line.text);
            }
        }
        system
    });
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    let job = fake.job(&handle.handle_id()[6..]).unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        1
    );
    runner.teardown(&ctx, &handle).await.unwrap();
    drop(ctx);
    drop(ctx0);
    let system = collector.await.unwrap();
    assert!(
        system
            .iter()
            .any(|l| l.contains("uploader") && l.contains("artifacts may be incomplete")),
        "{system:?}"
    );
}

#[test]
fn the_example_runner_config_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/eks/runner.yaml");
    let config = runner_core::RunnerConfig::from_yaml_file(&path).unwrap();
    assert_eq!(config.runner_type, "eks");
    let runner = runner_eks::EksRunner::from_config(&config).unwrap();
    assert_eq!(runner.config().namespace, "tests");
    // A bad key is named.
    let bad = runner_core::RunnerConfig::from_yaml_str("type: eks\nbackend:\n  namespace: Tests\n")
        .unwrap();
    let err = runner_eks::EksRunner::from_config(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("backend.namespace"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runners_deadline_reaches_the_job_without_a_payload_timeout() {
    let s = setup().await;
    // The worker's time limit layer sets the phase deadline on the context;
    // the payload sets no limit of its own.
    let ctx = ctx("phase-deadline")
        .with_deadline(std::time::Instant::now() + std::time::Duration::from_secs(120));
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::payload(&[("SIM_LINES", "1")]);
    assert_eq!(payload.timeout_seconds, None);
    let result = s.runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert_eq!(result.status, TestStatus::Passed, "{result:?}");
    let job = s
        .fake
        .job(&handle.handle_id()[6..])
        .expect("the Job is kept until teardown");
    let deadline = job["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .expect("activeDeadlineSeconds is set from the phase deadline");
    assert!((110..=120).contains(&deadline), "{deadline}");
    s.runner.teardown(&ctx, &handle).await.unwrap();
}
