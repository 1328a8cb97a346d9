//! Secrets on eks (issue 19): a kubernetes reference is the kubelet's to
//! read, and what the sidecar uploads is redacted in the bucket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{FakeK8s, ctx, setup};
use runner_core::{ArtifactLocation, EnvVar, RunnerAdapter};

/// A `{secret: {kubernetes: {name, key}}}` reference is read by the
/// kubelet: the Job names the secret and key, the worker never sees a value
/// and makes no Secret of its own (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_reference_becomes_a_secret_key_ref_and_no_secret() {
    let s = setup().await;
    let ctx = ctx("k8s-ref");
    let handle = s.runner.provision(&ctx, &common::bench()).await.unwrap();
    let mut payload = common::payload(&[]);
    let reference: EnvVar = serde_json::from_value(serde_json::json!(
        {"secret": {"kubernetes": {"name": "db-credentials", "key": "password"}}}
    ))
    .unwrap();
    payload.env.insert("DB_PASSWORD".into(), reference);
    s.runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let job = s.fake.job(&handle.handle_id()[6..]).unwrap();
    let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    let var = env
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DB_PASSWORD")
        .unwrap();
    assert_eq!(var["valueFrom"]["secretKeyRef"]["name"], "db-credentials");
    assert_eq!(var["valueFrom"]["secretKeyRef"]["key"], "password");
    assert!(var.get("value").is_none(), "{var}");
    assert!(s.fake.secrets().is_empty(), "no Secret of the worker's own");
    s.runner.teardown(&ctx, &handle).await.unwrap();
}

/// The sidecar uploads what the test wrote, secrets included: collect
/// rewrites each object redacted before it becomes an artifact (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_sidecars_uploads_are_redacted_in_the_bucket() {
    let moto = test_emulators::Moto::start().unwrap();
    let s3 = test_emulators::aws::s3_client(&moto.endpoint()).await;
    s3.create_bucket().bucket("eks-art").send().await.unwrap();
    let fake = FakeK8s::start().await;
    let uploader_s3 = s3.clone();
    fake.set_uploader(Arc::new(move |uri: String, _n: u64| {
        let s3 = uploader_s3.clone();
        Box::pin(async move {
            let rest = uri.strip_prefix("s3://").unwrap();
            let (bucket, prefix) = rest.split_once('/').unwrap();
            s3.put_object()
                .bucket(bucket)
                .key(format!("{prefix}report.txt"))
                .body(b"token=hunter2-secret end".to_vec().into())
                .send()
                .await
                .unwrap();
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
    let ctx = ctx("s3-secret");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::with_secret(
        common::payload(&[("SIM_ARTIFACTS", "1")]),
        "API_TOKEN",
        "hunter2-secret",
    );
    runner.run_test(&ctx, &handle, &payload).await.unwrap();
    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let report = bundle.get("report.txt").unwrap();
    let ArtifactLocation::Uri(uri) = &report.location else {
        panic!("{report:?}");
    };
    let key = uri.strip_prefix("s3://eks-art/").unwrap();
    let body = s3
        .get_object()
        .bucket("eks-art")
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&body[..], b"token=*** end");
    assert_eq!(report.size, body.len() as u64);
    assert_eq!(report.sha256, runner_core::artifact::sha256_bytes(&body));
    runner.teardown(&ctx, &handle).await.unwrap();
}
