//! The contract suite on EksRunner against the scripted API server over
//! real HTTP on 127.0.0.1; with `EKS_CONTRACT_KUBECONFIG` set (what
//! `cargo xtask contract --backend eks` does when `KUBECONFIG` is set),
//! against that cluster instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use runner_contract::Fixture;
use runner_core::TestPayload;

fn artifacts_root() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("runner-eks-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A real cluster, when asked for: namespace from `EKS_CONTRACT_NAMESPACE`
/// (default `default`), image `EKS_CONTRACT_IMAGE` (default busybox).
fn real_cluster() -> Option<std::path::PathBuf> {
    std::env::var_os("EKS_CONTRACT_KUBECONFIG").map(Into::into)
}

fn shell(script: &str) -> TestPayload {
    TestPayload::new([script]).with_name("sh").with_shell(true)
}

fn fixture() -> Fixture {
    let (passing, failing, long) = if real_cluster().is_some() {
        (
            shell("for i in 1 2 3; do echo line $i; done"),
            shell("echo failing; exit 3"),
            shell("i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 1; done"),
        )
    } else {
        (
            common::payload(&[("SIM_LINES", "5")]),
            common::payload(&[("SIM_EXIT", "3")]),
            common::payload(&[("SIM_LINES", "100000"), ("SIM_LINE_MS", "10")]),
        )
    };
    Fixture::new(
        common::bench().with_backend(serde_json::json!({})),
        common::invalid_bench(),
        "bench.backend.resources.limits.memory",
        passing,
        failing,
        long,
    )
    .with_artifacts_root(artifacts_root())
}

async fn setup() -> (runner_eks::EksRunner, Option<common::FakeK8s>) {
    if let Some(kubeconfig) = real_cluster() {
        let namespace =
            std::env::var("EKS_CONTRACT_NAMESPACE").unwrap_or_else(|_| "default".into());
        let image = std::env::var("EKS_CONTRACT_IMAGE").unwrap_or_else(|_| "busybox:1.36".into());
        let config = common::config(serde_json::json!({
            "kubeconfig": kubeconfig,
            "namespace": namespace,
            "image": image,
            "pod_start_timeout_seconds": 300,
        }));
        let runner = runner_eks::EksRunner::new(config, artifacts_root()).unwrap();
        return (runner, None);
    }
    let fake = common::FakeK8s::start().await;
    (common::runner(&fake, &artifacts_root()), Some(fake))
}

runner_contract::contract_tests!(setup = setup(), fixture = fixture());
