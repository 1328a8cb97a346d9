//! Reading results back: waiting for executions, cancelling them, fetching
//! their artifacts with their checksums verified. The CLI and the HTTP API
//! both use these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::backends::Backends;
use crate::store::{
    ExecState, ExecutionRecord, HistoryFilter, RecordUpdate, RecordedArtifact, Settlement,
    StoreError, now_ms,
};

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancelled {
    /// It was still queued: removed, and settled as cancelled.
    Removed,
    /// It runs (or is about to): its worker cancels it within seconds;
    /// collection and teardown still run.
    Requested,
    /// It had settled already; nothing changed.
    AlreadySettled,
}

/// Cancel execution `key` on behalf of `by`.
pub async fn cancel(backends: &Backends, key: &str, by: &str) -> Result<Cancelled, StoreError> {
    let record = backends
        .store
        .execution(key)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "execution",
            id: key.to_owned(),
        })?;
    if record.state.is_settled() {
        return Ok(Cancelled::AlreadySettled);
    }
    let at = now_ms();
    backends
        .store
        .record(&[RecordUpdate::CancelRequested {
            key: key.to_owned(),
            at_ms: at,
            by: by.to_owned(),
        }])
        .await?;
    if backends.queue.remove_queued(key).await? {
        backends
            .store
            .record(&[RecordUpdate::Settled(Box::new(Settlement {
                new: record.new.clone(),
                state: ExecState::Cancelled,
                at_ms: now_ms(),
                attempt: None,
                result: None,
                artifacts: Vec::new(),
                cases: Vec::new(),
                error: Some(format!("cancelled by {by} before it ran")),
            }))])
            .await?;
        return Ok(Cancelled::Removed);
    }
    Ok(Cancelled::Requested)
}

/// The keys of the executions of `correlation_id` that have not settled.
pub async fn unsettled_of(
    backends: &Backends,
    correlation_id: &str,
) -> Result<Vec<String>, StoreError> {
    let mut keys = Vec::new();
    let mut before = None;
    loop {
        let page = backends
            .store
            .executions(&HistoryFilter {
                correlation_id: Some(correlation_id.to_owned()),
                before_ms: before,
                limit: 500,
                ..HistoryFilter::default()
            })
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        before = Some(last.created_ms);
        let full = page.len() == 500;
        keys.extend(
            page.iter()
                .filter(|r| !r.state.is_settled())
                .map(|r| r.new.key.clone()),
        );
        if !full {
            break;
        }
    }
    Ok(keys)
}

/// The exit code of a set of settled executions: 2 if any hit an
/// infrastructure error (or did not settle), else 3 if any was cancelled,
/// else 1 if any failed or timed out, else 0.
pub fn exit_code(records: &[ExecutionRecord]) -> u8 {
    let code = |r: &ExecutionRecord| match r.state {
        ExecState::Passed => 0,
        ExecState::Failed | ExecState::TimedOut => 1,
        ExecState::Cancelled => 3,
        _ => 2,
    };
    let codes: Vec<u8> = records.iter().map(code).collect();
    if codes.contains(&2) {
        2
    } else if codes.contains(&3) {
        3
    } else if codes.contains(&1) {
        1
    } else {
        0
    }
}

/// Poll `keys` until all settled (or `limit` passed), calling `seen` with
/// each state change as it is noticed; returns the last records read.
pub async fn wait<F>(
    backends: &Backends,
    keys: &[String],
    limit: Option<Duration>,
    stop: &runner_core::CancellationToken,
    mut seen: F,
) -> Result<Vec<ExecutionRecord>, StoreError>
where
    F: FnMut(&ExecutionRecord, Option<ExecState>),
{
    let started = std::time::Instant::now();
    let mut last: Vec<Option<ExecState>> = vec![None; keys.len()];
    let mut records: Vec<Option<ExecutionRecord>> = vec![None; keys.len()];
    let mut failures = 0u32;
    loop {
        for (i, key) in keys.iter().enumerate() {
            if last[i].is_some_and(ExecState::is_settled) {
                continue;
            }
            match backends.store.execution(key).await {
                Ok(Some(record)) => {
                    failures = 0;
                    if last[i] != Some(record.state) {
                        seen(&record, last[i]);
                        last[i] = Some(record.state);
                    }
                    records[i] = Some(record);
                }
                Ok(None) => {}
                // A store that is briefly away does not end the wait.
                Err(e) if e.is_retryable() && failures < 30 => failures += 1,
                Err(e) => return Err(e),
            }
        }
        if last.iter().all(|s| s.is_some_and(ExecState::is_settled))
            || limit.is_some_and(|l| started.elapsed() >= l)
            || stop.is_cancelled()
        {
            return Ok(records.into_iter().flatten().collect());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Copy (or download) `artifact` to `dir`, verifying its sha256; returns
/// the file written.
pub async fn fetch_artifact(artifact: &RecordedArtifact, dir: &Path) -> Result<PathBuf, String> {
    let target = runner_core::safe_path::safe_join(dir, &artifact.name)
        .map_err(|e| format!("artifact name {:?}: {e}", artifact.name))?;
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let digest = if let Some(path) = artifact.uri.strip_prefix("file://") {
        let (from, to) = (PathBuf::from(path), target.clone());
        tokio::task::spawn_blocking(move || copy_hashing(&from, &to))
            .await
            .map_err(|e| e.to_string())??
    } else if artifact.uri.starts_with("s3://") {
        download_s3(&artifact.uri, &target).await?
    } else {
        return Err(format!("cannot fetch {}: unknown location", artifact.uri));
    };
    if digest != artifact.sha256 {
        let _ = tokio::fs::remove_file(&target).await;
        return Err(format!(
            "{}: sha256 {digest} does not match the recorded {}",
            artifact.name, artifact.sha256
        ));
    }
    Ok(target)
}

/// The text of `artifact` (a log), read whole; for `logs`.
pub async fn read_artifact(artifact: &RecordedArtifact) -> Result<Vec<u8>, String> {
    let dir = std::env::temp_dir().join(format!("orchestrator-logs-{}", std::process::id()));
    let path = fetch_artifact(artifact, &dir).await?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()));
    let _ = tokio::fs::remove_dir_all(&dir).await;
    bytes
}

fn copy_hashing(from: &Path, to: &Path) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut input =
        std::fs::File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let mut output =
        std::fs::File::create(to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(feature = "sqs")]
async fn download_s3(uri: &str, to: &Path) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let parsed = runner_aws::S3Uri::parse(uri)?;
    let sdk = runner_aws::load_sdk_config(None).await;
    let path_style = std::env::var_os("AWS_ENDPOINT_URL").is_some();
    let client = runner_aws::s3_client(&sdk, path_style);
    let object = client
        .get_object()
        .bucket(&parsed.bucket)
        .key(&parsed.key)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot download {uri}: {}",
                runner_aws::classify("GetObject", &e).message
            )
        })?;
    let mut body = object.body;
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| format!("download of {uri} cut: {e}"))?
    {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(not(feature = "sqs"))]
async fn download_s3(uri: &str, _to: &Path) -> Result<String, String> {
    Err(format!(
        "cannot fetch {uri}: this build has no AWS support (cargo feature `sqs`)"
    ))
}
