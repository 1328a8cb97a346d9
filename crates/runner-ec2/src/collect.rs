//! Collecting artifacts: the files the script uploaded, and the output log,
//! each redacted in place by streaming it through the kit's writer (never
//! whole in memory) when the payload has secrets.

use std::time::Duration;

use runner_core::{
    ArtifactBundle, ArtifactError, ArtifactKind, RunContext, RunnerHandle, TestPayload,
};

use crate::{Ec2Runner, Ec2State, RUNNER_TYPE};

/// The longest a download of the output log may stall between two chunks.
const IDLE: Duration = Duration::from_secs(60);

impl Ec2Runner {
    pub(crate) async fn collect_impl(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let _state: Ec2State = handle.decode_in(ctx, RUNNER_TYPE)?;
        let clients = self.clients().await;
        let store = &clients.store;
        let prefix = self.inner.config.execution_prefix(ctx.execution_id());
        let mut bundle = store
            .collect(&format!("{prefix}artifacts/"), |_| ArtifactKind::File)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        let output_key = format!("{prefix}output.log");
        let redactor = payload.redactor();
        // The instance uploads raw output and raw artifacts; with secrets
        // to hide, each object is streamed down redacted and put back in
        // place before it becomes an artifact (a second collect finds
        // nothing left to redact: same bytes). Memory stays at a chunk.
        store
            .redact_artifacts(&mut bundle.artifacts, &redactor, IDLE)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        let described = if redactor.is_empty() {
            match store
                .list(&output_key)
                .await
                .map_err(|e| e.into_runner(ctx))?
                .into_iter()
                .find(|o| o.key == output_key)
            {
                None => None,
                Some(object) => Some((
                    object.size,
                    store
                        .sha256_of(&output_key)
                        .await
                        .map_err(|e| e.into_runner(ctx))?,
                )),
            }
        } else {
            store
                .redact_in_place(&output_key, redactor, IDLE)
                .await
                .map_err(|e| e.into_runner(ctx))?
        };
        if let Some((size, sha256)) = described {
            let mut name = "logs/output.log".to_string();
            if bundle.artifacts.iter().any(|a| a.name == name) {
                name = "logs/ssm-output.log".to_string();
            }
            bundle.artifacts.insert(
                0,
                runner_core::Artifact::new(
                    name,
                    ArtifactKind::Log,
                    runner_core::ArtifactLocation::Uri(store.uri(&output_key).to_string()),
                    size,
                    sha256,
                ),
            );
        }
        Ok(bundle)
    }
}
