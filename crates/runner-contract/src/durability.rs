//! Checks of what the backend kit guarantees: artifacts that outlive the
//! environment, provision and collect that repeat without duplicating,
//! secrets redacted across chunk boundaries, and memory that does not grow
//! with the size of a line or an artifact.

use runner_core::{ArtifactBundle, ArtifactLocation, LogSink, RunnerAdapter};

use crate::fixture::Fixture;
use crate::support::*;

/// Every local artifact is readable after teardown, with the size and
/// sha256 the bundle reported (a log inside the torn-down environment fails).
pub async fn artifacts_survive_teardown(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "artifacts_survive_teardown";
    let ctx = context(CHECK);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    let body = run_and_collect(CHECK, adapter, &ctx, &handle, &fixture.passing).await;
    let bundle = match body {
        Ok(bundle) => bundle,
        Err(e) => {
            cleanup(adapter, &ctx, &handle).await;
            return Err(e);
        }
    };
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await?;
    for artifact in &bundle.artifacts {
        let ArtifactLocation::Local(path) = &artifact.location else {
            continue;
        };
        verify_local(CHECK, artifact, path, " after teardown")?;
    }
    Ok(())
}

/// Provisioning twice with one execution key returns the same handle (a
/// redelivered task adopts, never duplicates).
pub async fn provision_is_idempotent(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "provision_is_idempotent";
    let ctx = context(CHECK);
    let first = provision(CHECK, adapter, &ctx, fixture).await?;
    let second = match adapter.provision(&ctx, &fixture.bench).await {
        Ok(h) => h,
        Err(e) => {
            cleanup(adapter, &ctx, &first).await;
            return Err(fail(CHECK, format!("the second provision failed: {e}")));
        }
    };
    if second.handle_id() != first.handle_id() {
        cleanup(adapter, &ctx, &first).await;
        cleanup(adapter, &ctx, &second).await;
        return Err(fail(
            CHECK,
            format!(
                "one execution key gave two resources: {} and {}",
                first.handle_id(),
                second.handle_id()
            ),
        ));
    }
    teardown_and_check_gone(CHECK, adapter, &ctx, &first).await
}

/// Collecting twice gives the same bundle (names, locations, sizes, hashes).
pub async fn collect_is_repeatable(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "collect_is_repeatable";
    let ctx = context(CHECK);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    let body = async {
        let once = run_and_collect(CHECK, adapter, &ctx, &handle, &fixture.passing).await?;
        let twice = collect(CHECK, adapter, &ctx, &handle, fixture).await?;
        if once != twice {
            return Err(fail(
                CHECK,
                format!("two collects differ:\n first  {once:?}\n second {twice:?}"),
            ));
        }
        Ok(())
    }
    .await;
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await
}

async fn collect(
    check: &'static str,
    adapter: &dyn RunnerAdapter,
    ctx: &runner_core::RunContext,
    handle: &runner_core::RunnerHandle,
    fixture: &Fixture,
) -> Result<ArtifactBundle, ContractFailure> {
    adapter
        .collect_artifacts(ctx, handle, &fixture.passing)
        .await
        .map_err(|e| fail(check, format!("collect_artifacts failed: {e}")))
}

/// A secret the payload prints and writes across a chunk boundary appears
/// in no live log line and in no local artifact. Skipped without a
/// [`Fixture::with_secret_case`].
pub async fn secret_across_chunks_is_redacted(
    adapter: &dyn RunnerAdapter,
    fixture: &Fixture,
) -> Outcome {
    const CHECK: &str = "secret_across_chunks_is_redacted";
    let Some(case) = &fixture.secret_case else {
        return Ok(());
    };
    let (sink, mut rx) = LogSink::channel(1024);
    let secret = case.secret.clone();
    let watch = tokio::spawn(async move {
        let mut leaked = None;
        let mut lines = 0u64;
        while let Some(line) = rx.recv().await {
            lines += 1;
            if leaked.is_none() && line.text.contains(&secret) {
                leaked = Some(line.text.chars().take(200).collect::<String>());
            }
        }
        (lines, leaked)
    });
    let ctx = context(CHECK).with_log_sink(sink);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    let body = async {
        let bundle = run_and_collect(CHECK, adapter, &ctx, &handle, &case.payload).await?;
        for artifact in &bundle.artifacts {
            let ArtifactLocation::Local(path) = &artifact.location else {
                continue;
            };
            let bytes = std::fs::read(path).map_err(|e| {
                fail(
                    CHECK,
                    format!("artifact {:?} unreadable: {e}", artifact.name),
                )
            })?;
            let needle = case.secret.as_bytes();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Err(fail(
                    CHECK,
                    format!("artifact {:?} holds the secret", artifact.name),
                ));
            }
        }
        Ok(())
    }
    .await;
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await?;
    drop(ctx);
    let (lines, leaked) = watch
        .await
        .map_err(|e| fail(CHECK, format!("the log watcher failed: {e}")))?;
    if let Some(line) = leaked {
        return Err(fail(
            CHECK,
            format!("a live log line holds the secret: {line}"),
        ));
    }
    if lines == 0 {
        return Err(fail(
            CHECK,
            "the payload's output never reached the log sink",
        ));
    }
    Ok(())
}

/// The process's peak resident set (VmHWM) in KiB; 0 where unknown.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What [`measure_memory`] saw: the process's peak RSS before and after
/// running and collecting the big case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFigures {
    /// Peak RSS before, KiB.
    pub before_kib: u64,
    /// Peak RSS after, KiB.
    pub after_kib: u64,
}

impl MemoryFigures {
    /// How much the peak grew, KiB.
    pub fn grew_kib(&self) -> u64 {
        self.after_kib.saturating_sub(self.before_kib)
    }
}

/// Run and collect the big case, measuring peak RSS around it; `None`
/// without a [`Fixture::with_big_case`].
pub async fn measure_memory(
    adapter: &dyn RunnerAdapter,
    fixture: &Fixture,
) -> Result<Option<MemoryFigures>, ContractFailure> {
    const CHECK: &str = "memory_stays_bounded";
    let Some(case) = &fixture.big_case else {
        return Ok(None);
    };
    let (sink, mut rx) = LogSink::channel(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let ctx = context(CHECK).with_log_sink(sink);
    let handle = provision(CHECK, adapter, &ctx, fixture).await?;
    let before_kib = peak_rss_kib();
    let body = run_and_collect(CHECK, adapter, &ctx, &handle, &case.payload)
        .await
        .map(|_| ());
    let after_kib = peak_rss_kib();
    finish(adapter, &ctx, &handle, body).await?;
    teardown_and_check_gone(CHECK, adapter, &ctx, &handle).await?;
    drop(ctx);
    let _ = drain.await;
    Ok(Some(MemoryFigures {
        before_kib,
        after_kib,
    }))
}

/// Running and collecting the big case grows the process's peak RSS by
/// less than its bound. The high-water mark is process-wide, so checks
/// running beside it only make this stricter. Skipped without a
/// [`Fixture::with_big_case`].
pub async fn memory_stays_bounded(adapter: &dyn RunnerAdapter, fixture: &Fixture) -> Outcome {
    const CHECK: &str = "memory_stays_bounded";
    let Some(figures) = measure_memory(adapter, fixture).await? else {
        return Ok(());
    };
    let Some(case) = &fixture.big_case else {
        return Ok(());
    };
    if figures.grew_kib() > case.memory_bound_kib {
        return Err(fail(
            CHECK,
            format!(
                "{}: peak RSS grew by {} KiB ({} to {}), over the bound of {} KiB",
                case.describes,
                figures.grew_kib(),
                figures.before_kib,
                figures.after_kib,
                case.memory_bound_kib
            ),
        ));
    }
    Ok(())
}
