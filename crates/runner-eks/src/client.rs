//! Setting up: the runner from its config, the Kubernetes client (from a
//! kubeconfig, a context or the cluster it runs in), the S3 store, and the
//! typed API handles a phase uses.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use runner_aws::ArtifactStore;
use runner_core::{ConfigError, PhaseMarker, RunContext, RunnerConfig, RunnerError};
use tokio::sync::OnceCell;

use crate::api::K8sError;
use crate::config::EksConfig;
use crate::run::config_error;
use crate::{EksRunner, Inner};

impl EksRunner {
    /// A runner over validated settings; the client comes from the
    /// kubeconfig (or the in-cluster account) on first use.
    pub fn new(config: EksConfig, artifacts_dir: PathBuf) -> Result<EksRunner, ConfigError> {
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        Ok(EksRunner {
            inner: Arc::new(Inner {
                config,
                artifacts_dir,
                client: OnceCell::new(),
                store: OnceCell::new(),
            }),
        })
    }

    /// From a runner config's `backend:` section.
    pub fn from_config(config: &RunnerConfig) -> Result<EksRunner, ConfigError> {
        EksRunner::new(
            config.backend_section::<EksConfig>()?,
            config.artifacts_dir.clone(),
        )
    }

    /// A runner over a given client (and S3 client when artifacts are
    /// configured): tests, or callers with their own set-up. Build the
    /// client with `default_retry = false`: kube's own retry of 429/503
    /// backs off for up to 1000 s; the runner retries, bounded, itself.
    pub fn with_clients(
        config: EksConfig,
        artifacts_dir: PathBuf,
        client: kube::Client,
        s3: Option<aws_sdk_s3::Client>,
    ) -> Result<EksRunner, ConfigError> {
        let runner = EksRunner::new(config, artifacts_dir)?;
        let _ = runner.inner.client.set(client);
        let store = match (s3, &runner.inner.config.artifacts) {
            (Some(s3), Some(a)) => Some(ArtifactStore::new(s3, a.bucket.clone())),
            _ => None,
        };
        if store.is_some() {
            let _ = runner.inner.store.set(store);
        }
        Ok(runner)
    }

    /// The settings.
    pub fn config(&self) -> &EksConfig {
        &self.inner.config
    }

    pub(crate) async fn client(&self) -> Result<kube::Client, K8sError> {
        let config = &self.inner.config;
        self.inner
            .client
            .get_or_try_init(|| async {
                let options = KubeConfigOptions {
                    context: config.context.clone(),
                    ..Default::default()
                };
                let kube_config = match &config.kubeconfig {
                    Some(path) => {
                        let file = Kubeconfig::read_from(path).map_err(|e| {
                            config_error(format!("kubeconfig {}: {e}", path.display()))
                        })?;
                        kube::Config::from_custom_kubeconfig(file, &options)
                            .await
                            .map_err(|e| {
                                config_error(format!("kubeconfig {}: {e}", path.display()))
                            })?
                    }
                    None if config.context.is_some() => kube::Config::from_kubeconfig(&options)
                        .await
                        .map_err(|e| config_error(format!("kubeconfig: {e}")))?,
                    None => kube::Config::infer().await.map_err(|e| {
                        config_error(format!("no kubeconfig and not in a cluster: {e}"))
                    })?,
                };
                // kube's own retry of 429/503/504 backs off up to 1000 s, 15
                // times; the runner's bounded retry ([`api::retry`]) is used instead.
                let mut kube_config = kube_config;
                kube_config.default_retry = false;
                kube::Client::try_from(kube_config)
                    .map_err(|e| config_error(format!("kubernetes client: {e}")))
            })
            .await
            .cloned()
    }

    pub(crate) async fn store(&self) -> Option<ArtifactStore> {
        let artifacts = self.inner.config.artifacts.clone();
        self.inner
            .store
            .get_or_init(|| async move {
                let a = artifacts.filter(|a| a.volume.is_none())?;
                let sdk = runner_aws::load_sdk_config(a.region.as_deref()).await;
                Some(ArtifactStore::new(
                    runner_aws::s3_client(&sdk, a.force_path_style),
                    a.bucket,
                ))
            })
            .await
            .clone()
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.inner.config.attempts
    }

    pub(crate) fn local_log_path(&self, execution_id: &str) -> Result<PathBuf, String> {
        let dir = runner_core::safe_path::safe_join(&self.inner.artifacts_dir, execution_id)
            .map_err(|e| e.to_string())?;
        Ok(dir.join("logs").join("output.log"))
    }

    pub(crate) async fn apis<P: PhaseMarker>(
        &self,
        ctx: &RunContext,
        namespace: &str,
    ) -> Result<(Api<Job>, Api<Pod>, Api<Secret>), RunnerError<P>> {
        let client = self.client().await.map_err(|e| e.into_runner(ctx))?;
        Ok((
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client, namespace),
        ))
    }
}
