//! The contract suite must catch broken adapters, one property each.
//!
//! Each broken adapter wraps LocalMockRunner and spoils exactly one thing; the
//! test asserts that the matching check fails and that the others still pass,
//! so a check that cannot fail would show up here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use runner_contract::{Fixture, run_all};
use runner_core::{
    ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ExecutionError, ListOwnedError,
    OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerHandle, TeardownError,
    TestPayload, TestResult,
};
use runner_mock::{LocalMockRunner, fixtures};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breakage {
    LeakyTeardown,
    IgnoresCancel,
    UnsafeArtifactName,
    WrongSha256,
    DropsIds,
    /// Keeps its log inside the environment that teardown deletes.
    DeletesArtifactsAtTeardown,
    /// Ignores the execution key: every provision makes a new resource.
    ProvisionsTwice,
}

static FRESH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug)]
struct Broken {
    inner: LocalMockRunner,
    breakage: Breakage,
}

#[runner_core::async_trait]
impl RunnerAdapter for Broken {
    fn runner_type(&self) -> &str {
        self.inner.runner_type()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        if self.breakage == Breakage::ProvisionsTwice {
            let n = FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let fresh = ctx
                .clone()
                .with_execution_key(format!("{}-{n}", ctx.execution_key()));
            return self.inner.provision(&fresh, bench).await;
        }
        let result = self.inner.provision(ctx, bench).await;
        match (self.breakage, result) {
            (Breakage::DropsIds, Err(e)) => {
                Err(ProvisionError::from_ids(e.kind(), "", "", e.message()))
            }
            (_, other) => other,
        }
    }
    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        if self.breakage == Breakage::IgnoresCancel {
            // Runs on a context of its own, so the caller's token never reaches it.
            let deaf = RunContext::new(ctx.execution_id(), ctx.correlation_id())
                .with_log_sink(ctx.logs().clone());
            return self.inner.run_test(&deaf, handle, payload).await;
        }
        self.inner.run_test(ctx, handle, payload).await
    }
    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let mut bundle = self.inner.collect_artifacts(ctx, handle, payload).await?;
        for artifact in &mut bundle.artifacts {
            match self.breakage {
                Breakage::UnsafeArtifactName => artifact.name = format!("../{}", artifact.name),
                Breakage::WrongSha256 => artifact.sha256 = "0".repeat(64),
                _ => {}
            }
        }
        Ok(bundle)
    }
    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        if self.breakage == Breakage::LeakyTeardown {
            return Ok(());
        }
        if self.breakage == Breakage::DeletesArtifactsAtTeardown {
            let _ = std::fs::remove_dir_all(dir().join(ctx.execution_id()));
        }
        self.inner.teardown(ctx, handle).await
    }
    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        self.inner.list_owned(ctx).await
    }
}

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("runner-contract-broken-{}", std::process::id()))
}

fn fixture() -> Fixture {
    Fixture::new(
        fixtures::bench(),
        fixtures::invalid_bench(),
        fixtures::INVALID_FIELD,
        fixtures::passing(),
        fixtures::failing(),
        fixtures::long_running(),
    )
    .with_artifacts_root(dir())
    .with_cancel_bound(Duration::from_millis(500))
}

/// Run the suite on an adapter with `breakage`; return the names of the failed checks.
async fn failed_checks(breakage: Breakage) -> Vec<&'static str> {
    let adapter = Broken {
        inner: LocalMockRunner::with_artifacts_dir(dir()),
        breakage,
    };
    let report = run_all(&adapter, &fixture()).await;
    report.failures().iter().map(|f| f.check).collect()
}

#[tokio::test]
async fn catches_a_teardown_that_leaks() {
    let failed = failed_checks(Breakage::LeakyTeardown).await;
    assert!(failed.contains(&"full_lifecycle"), "{failed:?}");
    assert!(failed.contains(&"teardown_after_failed_run"), "{failed:?}");
    assert!(!failed.contains(&"invalid_spec_is_permanent"), "{failed:?}");
}

#[tokio::test]
async fn catches_an_adapter_that_ignores_cancellation() {
    let failed = failed_checks(Breakage::IgnoresCancel).await;
    assert_eq!(failed, vec!["cancellation_ends_run"]);
}

#[tokio::test]
async fn catches_unsafe_artifact_names() {
    let failed = failed_checks(Breakage::UnsafeArtifactName).await;
    assert_eq!(failed, vec!["artifacts_are_safe_and_hashed"]);
}

#[tokio::test]
async fn catches_a_wrong_sha256() {
    let failed = failed_checks(Breakage::WrongSha256).await;
    assert_eq!(
        failed,
        vec![
            "artifacts_are_safe_and_hashed",
            "artifacts_survive_teardown"
        ]
    );
}

#[tokio::test]
async fn catches_artifacts_that_teardown_deletes() {
    let failed = failed_checks(Breakage::DeletesArtifactsAtTeardown).await;
    assert_eq!(failed, vec!["artifacts_survive_teardown"]);
}

#[tokio::test]
async fn catches_a_provision_that_ignores_the_execution_key() {
    let failed = failed_checks(Breakage::ProvisionsTwice).await;
    assert_eq!(failed, vec!["provision_is_idempotent"]);
}

#[tokio::test]
async fn catches_errors_without_ids() {
    let failed = failed_checks(Breakage::DropsIds).await;
    assert!(failed.contains(&"errors_carry_ids"), "{failed:?}");
    assert!(failed.contains(&"invalid_spec_is_permanent"), "{failed:?}");
}
