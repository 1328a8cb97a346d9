//! `artifacts.volume`: the Job mounts the claim's per-execution
//! sub-directory at /artifacts, and collect reads the files back from the
//! worker's mount of the same filesystem (a local directory here, standing
//! in for the shared EFS mount), redacted and hashed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use runner_core::{ArtifactLocation, RunContext, RunnerAdapter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_come_back_from_the_shared_volume() {
    let fake = common::FakeK8s::start().await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("efs");
    let config = common::config(serde_json::json!({
        "artifacts": {"prefix": "runs", "volume": {"claim_name": "test-artifacts", "worker_path": shared}},
    }));
    let runner = common::runner_with(&fake, config, &dir.path().join("artifacts"));
    let ctx = RunContext::new("vol.1", "corr-vol").with_execution_key("vol");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    let payload = common::with_secret(common::payload(&[]), "TOKEN", "volume-s3cret");
    let result = runner.run_test(&ctx, &handle, &payload).await.unwrap();
    assert!(result.passed(), "{result:?}");

    let job = fake.job(&fake.jobs()[0]).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "test-artifacts"
    );
    let mount = &pod["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/artifacts");
    assert_eq!(mount["subPath"], "runs/vol.1");

    // What the pod wrote to /artifacts, as the worker's mount shows it.
    let written = shared.join("runs/vol.1");
    std::fs::create_dir_all(written.join("reports")).unwrap();
    std::fs::write(written.join("reports/junit.xml"), "<testsuite/>").unwrap();
    let mut trace = vec![b'.'; 70_000];
    trace.extend_from_slice(b"token=volume-s3cret end");
    std::fs::write(written.join("trace.bin"), &trace).unwrap();

    let bundle = runner
        .collect_artifacts(&ctx, &handle, &payload)
        .await
        .unwrap();
    let names: Vec<&str> = bundle.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"reports/junit.xml"), "{names:?}");
    assert!(names.contains(&"trace.bin"), "{names:?}");
    for artifact in &bundle.artifacts {
        let ArtifactLocation::Local(path) = &artifact.location else {
            panic!("{artifact:?}")
        };
        assert!(
            path.starts_with(dir.path().join("artifacts")),
            "{}",
            path.display()
        );
        let (size, sha) = runner_core::artifact::sha256_file(path).unwrap();
        assert_eq!(
            (size, sha.as_str()),
            (artifact.size, artifact.sha256.as_str())
        );
        let bytes = std::fs::read(path).unwrap();
        assert!(!bytes.windows(13).any(|w| w == b"volume-s3cret"));
    }
    runner.teardown(&ctx, &handle).await.unwrap();
    // After teardown the copies remain readable.
    let trace = bundle.get("trace.bin").unwrap();
    let ArtifactLocation::Local(path) = &trace.location else {
        panic!()
    };
    assert!(path.exists());
}

#[test]
fn a_volume_goes_without_a_bucket_and_needs_an_absolute_worker_path() {
    let bad = |artifacts: serde_json::Value| {
        let config: runner_eks::EksConfig = serde_json::from_value(serde_json::json!({
            "namespace": "n", "owner": "o", "artifacts": artifacts,
        }))
        .unwrap();
        config.validate().unwrap_err().0
    };
    assert_eq!(
        bad(
            serde_json::json!({"bucket": "b", "volume": {"claim_name": "c", "worker_path": "/mnt"}})
        ),
        "backend.artifacts.volume"
    );
    assert_eq!(
        bad(serde_json::json!({"volume": {"claim_name": "c", "worker_path": "relative"}})),
        "backend.artifacts.volume.worker_path"
    );
    assert_eq!(
        bad(serde_json::json!({"volume": {"claim_name": "Not_A_Name", "worker_path": "/mnt"}})),
        "backend.artifacts.volume.claim_name"
    );
}
