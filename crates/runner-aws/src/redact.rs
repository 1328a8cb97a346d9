//! Secrets out of the bucket: objects a test uploaded itself (the ec2
//! instance's artifacts, the eks sidecar's) rewritten redacted in place,
//! streamed through the kit's writer so memory stays at a chunk.

use crate::{ArtifactStore, AwsError, S3Uri};

impl ArtifactStore {
    /// Rewrite the object at `key` with `redactor`'s secrets masked:
    /// streamed down through the kit's writer to a temporary file, put back
    /// only when a secret was found. Its size and sha256 afterwards; `None`
    /// when there is no such object. A second call finds nothing to mask
    /// and changes nothing.
    pub async fn redact_in_place(
        &self,
        key: &str,
        redactor: runner_core::Redactor,
        idle: std::time::Duration,
    ) -> Result<Option<(u64, String)>, AwsError> {
        static TEMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let local = std::env::temp_dir().join(format!(
            "orch-redact-{}-{}",
            std::process::id(),
            TEMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let written = match self.download_to(key, &local, redactor, idle).await {
            Ok(written) => written,
            Err(e) => {
                let _ = tokio::fs::remove_file(&local).await;
                return Err(e);
            }
        };
        let result = match written {
            None => Ok(None),
            Some(w) if w.sha256 == w.received_sha256 => Ok(Some((w.size, w.sha256))),
            Some(w) => self
                .put_file(key, &w.path)
                .await
                .map(|up| Some((up.size, up.sha256))),
        };
        let _ = tokio::fs::remove_file(&local).await;
        result
    }

    /// [`Self::redact_in_place`] for every artifact of this store among
    /// `artifacts` (an `s3://` location), their size and sha256 updated.
    /// Nothing to do without secrets.
    pub async fn redact_artifacts(
        &self,
        artifacts: &mut [runner_core::Artifact],
        redactor: &runner_core::Redactor,
        idle: std::time::Duration,
    ) -> Result<(), AwsError> {
        if redactor.is_empty() {
            return Ok(());
        }
        for artifact in artifacts {
            let runner_core::ArtifactLocation::Uri(uri) = &artifact.location else {
                continue;
            };
            let Ok(parsed) = S3Uri::parse(uri) else {
                continue;
            };
            if parsed.bucket != self.bucket() {
                continue;
            }
            if let Some((size, sha256)) = self
                .redact_in_place(&parsed.key, redactor.clone(), idle)
                .await?
            {
                artifact.size = size;
                artifact.sha256 = sha256;
            }
        }
        Ok(())
    }
}
