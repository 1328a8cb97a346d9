//! The Job (and Secret) a test runs as: names, labels and manifests.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use runner_core::TestPayload;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{EksConfig, Resources, is_label_value};

/// `app.kubernetes.io/managed-by`: on every object the runner makes.
pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "test-orchestrator";
/// The runner's owner (a label; leak listing selects on it).
pub const OWNER: &str = "orchestrator.dev/owner";
/// The execution id (label, made label-safe; raw in the annotation).
pub const EXECUTION_ID: &str = "orchestrator.dev/execution-id";
/// The correlation id (label, made label-safe; raw in the annotation).
pub const CORRELATION_ID: &str = "orchestrator.dev/correlation-id";
/// The Job's name, on its pods (the runner selects pods by it).
pub const JOB_LABEL: &str = "orchestrator.dev/job";
/// The execution key (annotation).
pub const EXECUTION_KEY: &str = "orchestrator.dev/execution-key";
/// The attempt that created the Job (annotation).
pub const ATTEMPT: &str = "orchestrator.dev/attempt";
/// Annotation: the worker that created the Job (empty outside a worker).
pub const WORKER: &str = "orchestrator.dev/worker";
/// The test's container.
pub const TEST_CONTAINER: &str = "test";
/// The artifact uploader's container (a native sidecar).
pub const UPLOADER_CONTAINER: &str = "uploader";
/// Where the test writes artifacts (`$ARTIFACTS_DIR`).
pub const ARTIFACTS_MOUNT: &str = "/artifacts";

/// The Job's name: derived from owner and execution key, so a redelivered
/// task finds its Job instead of making a second one.
pub fn job_name(owner: &str, execution_key: &str) -> String {
    let digest = Sha256::digest(format!("{owner}\0{execution_key}").as_bytes());
    format!("orch-{}", &hex::encode(digest)[..20])
}

/// The Secret holding the payload's secret environment values.
pub fn secret_name(job: &str) -> String {
    format!("{job}-env")
}

/// `raw` as a label value: itself when valid, else a digest of it.
pub fn label_value(raw: &str) -> String {
    if is_label_value(raw) {
        raw.to_string()
    } else {
        let digest = Sha256::digest(raw.as_bytes());
        format!("h-{}", &hex::encode(digest)[..40])
    }
}

/// The ids a Job carries.
#[derive(Debug, Clone)]
pub struct Ids<'a> {
    /// Execution id.
    pub execution_id: &'a str,
    /// Correlation id.
    pub correlation_id: &'a str,
    /// Execution key.
    pub execution_key: &'a str,
    /// Attempt.
    pub attempt: u32,
    /// The worker creating the Job.
    pub worker: &'a str,
}

/// Labels on the Job, its pods and its Secret.
pub fn labels(config: &EksConfig, ids: &Ids<'_>, job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_KEY.to_string(), MANAGED_BY.to_string()),
        (OWNER.to_string(), config.owner.clone()),
        (EXECUTION_ID.to_string(), label_value(ids.execution_id)),
        (CORRELATION_ID.to_string(), label_value(ids.correlation_id)),
        (JOB_LABEL.to_string(), job.to_string()),
    ])
}

/// Annotations with the raw ids.
pub fn annotations(ids: &Ids<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (EXECUTION_ID.to_string(), ids.execution_id.to_string()),
        (CORRELATION_ID.to_string(), ids.correlation_id.to_string()),
        (EXECUTION_KEY.to_string(), ids.execution_key.to_string()),
        (ATTEMPT.to_string(), ids.attempt.to_string()),
        (WORKER.to_string(), ids.worker.to_string()),
    ])
}

/// What one Job is made of.
#[derive(Debug)]
pub struct JobSpec<'a> {
    /// Runner settings.
    pub config: &'a EksConfig,
    /// The Job's name.
    pub name: &'a str,
    /// Ids for labels and annotations.
    pub ids: Ids<'a>,
    /// The test image.
    pub image: &'a str,
    /// Extra node labels (the bench's).
    pub node_selector: &'a BTreeMap<String, String>,
    /// The test container's resources.
    pub resources: &'a Resources,
    /// What to run.
    pub payload: &'a TestPayload,
    /// `activeDeadlineSeconds`.
    pub deadline_seconds: Option<i64>,
    /// The Secret with the secret env values, when there are any.
    pub secret: Option<&'a str>,
    /// `s3://bucket/prefix/` for artifacts, when configured.
    pub artifacts_uri: Option<&'a str>,
    /// With `artifacts.volume`: the claim and the execution's sub-directory
    /// on it, mounted at `/artifacts`.
    pub artifacts_volume: Option<(&'a str, &'a str)>,
}

fn resources_json(r: &Resources) -> Value {
    json!({ "requests": r.requests, "limits": r.limits })
}

/// The uploader sidecar's script: wait; on TERM (sent when the test
/// container has ended) copy the artifacts directory to S3.
const UPLOADER_SCRIPT: &str = r#"upload() { aws s3 cp --recursive --only-show-errors /artifacts "$ARTIFACTS_S3_URI"; exit 0; }
trap upload TERM INT
while true; do sleep 1 & wait $!; done"#;

/// The batch/v1 Job manifest.
pub fn job_manifest(spec: &JobSpec<'_>) -> Result<Job, serde_json::Error> {
    let config = spec.config;
    let payload = spec.payload;
    let command: Vec<String> = if payload.shell {
        vec!["sh".into(), "-c".into(), payload.command.join(" ")]
    } else {
        payload.command.clone()
    };
    let mut env = vec![json!({"name": "ARTIFACTS_DIR", "value": ARTIFACTS_MOUNT})];
    if let Some(uri) = spec.artifacts_uri {
        env.push(json!({"name": "ARTIFACTS_S3_URI", "value": uri}));
    }
    for (name, value) in &payload.env {
        if let Some(k) = value.reference().and_then(|r| r.kubernetes.as_ref()) {
            // The kubelet reads it: the value never passes the worker.
            env.push(json!({
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": k.name, "key": k.key}},
            }));
        } else if value.is_secret() {
            env.push(json!({
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": spec.secret, "key": name}},
            }));
        } else {
            env.push(json!({"name": name, "value": value.value()}));
        }
    }
    let mut node_selector = config.node_selector.clone();
    node_selector.extend(spec.node_selector.clone());
    let container_security = json!({
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
    });
    let mut test = json!({
        "name": TEST_CONTAINER,
        "image": spec.image,
        "command": command,
        "env": env,
        "resources": resources_json(spec.resources),
        "securityContext": container_security,
        "volumeMounts": [{"name": "artifacts", "mountPath": ARTIFACTS_MOUNT}],
    });
    let mut artifacts_volume = json!({"name": "artifacts", "emptyDir": {}});
    if let Some((claim, sub_path)) = spec.artifacts_volume {
        test["volumeMounts"][0]["subPath"] = json!(sub_path.trim_end_matches('/'));
        artifacts_volume =
            json!({"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}});
    }
    if let Some(dir) = &payload.working_dir {
        test["workingDir"] = json!(dir);
    }
    let mut init_containers = Vec::new();
    if let (Some(uri), Some(image)) = (
        spec.artifacts_uri,
        config
            .artifacts
            .as_ref()
            .and_then(|a| a.uploader_image.as_ref()),
    ) {
        init_containers.push(json!({
            "name": UPLOADER_CONTAINER,
            "image": image,
            // A native sidecar: starts first, runs beside the test, gets
            // TERM once the test container has ended.
            "restartPolicy": "Always",
            "command": ["sh", "-c", UPLOADER_SCRIPT],
            "env": [{"name": "ARTIFACTS_S3_URI", "value": uri}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "securityContext": container_security,
            "volumeMounts": [{"name": "artifacts", "mountPath": ARTIFACTS_MOUNT, "readOnly": true}],
        }));
    }
    let init_containers_empty = init_containers.is_empty();
    let labels = labels(config, &spec.ids, spec.name);
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [test],
        "initContainers": init_containers,
        "volumes": [artifacts_volume],
        "nodeSelector": node_selector,
        "tolerations": config.tolerations,
        "imagePullSecrets": config.image_pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
    });
    if let Some(account) = &config.service_account {
        pod_spec["serviceAccountName"] = json!(account);
    }
    if let Some(artifacts) = config.artifacts.as_ref().filter(|_| !init_containers_empty) {
        // The sidecar uploads after TERM; the kubelet kills it after this.
        pod_spec["terminationGracePeriodSeconds"] = json!(artifacts.upload_timeout_seconds);
    }
    let mut job_spec = json!({
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
        "template": {
            "metadata": {"labels": labels, "annotations": annotations(&spec.ids)},
            "spec": pod_spec,
        },
    });
    if let Some(seconds) = spec.deadline_seconds {
        job_spec["activeDeadlineSeconds"] = json!(seconds.max(1));
    }
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.name,
            "namespace": config.namespace,
            "labels": labels,
            "annotations": annotations(&spec.ids),
        },
        "spec": job_spec,
    }))
}

/// The Secret with the payload's secret values (none: no Secret).
pub fn secret_manifest(
    config: &EksConfig,
    ids: &Ids<'_>,
    job: &str,
    payload: &TestPayload,
) -> Option<Secret> {
    let data: BTreeMap<String, String> = payload
        .env
        .iter()
        .filter(|(_, v)| v.is_secret() && v.reference().is_none_or(|r| r.kubernetes.is_none()))
        .map(|(k, v)| (k.clone(), v.value().to_string()))
        .collect();
    if data.is_empty() {
        return None;
    }
    let mut secret = Secret::default();
    secret.metadata.name = Some(secret_name(job));
    secret.metadata.namespace = Some(config.namespace.clone());
    secret.metadata.labels = Some(labels(config, ids, job));
    // The raw ids, for leak listing when its Job never came to be.
    secret.metadata.annotations = Some(annotations(ids));
    secret.string_data = Some(data);
    secret.type_ = Some("Opaque".into());
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_core::EnvVar;

    fn config() -> EksConfig {
        serde_json::from_value(json!({
            "image": "busybox",
            "artifacts": {"bucket": "b", "uploader_image": "amazon/aws-cli"},
        }))
        .unwrap()
    }

    #[test]
    fn names_follow_the_key_and_fit() {
        let a = job_name("o", "k");
        assert_eq!(a, job_name("o", "k"));
        assert_ne!(a, job_name("o", "k2"));
        assert!(crate::config::is_dns_label(&a) && a.len() <= 63);
        assert!(crate::config::is_dns_label(&secret_name(&a)));
        assert_eq!(label_value("exec-1"), "exec-1");
        let odd = label_value("exec/1 with spaces");
        assert!(is_label_value(&odd) && odd.starts_with("h-"));
    }

    #[test]
    fn the_job_is_locked_down_and_keeps_secrets_out() {
        let config = config();
        let payload = TestPayload::new(["echo", "hi"]).with_env_vars(BTreeMap::from([
            ("PLAIN".to_string(), EnvVar::Plain("p".into())),
            (
                "TOKEN".to_string(),
                EnvVar::Detailed {
                    value: "s3cret".into(),
                    secret: true,
                },
            ),
        ]));
        let ids = Ids {
            execution_id: "e1",
            correlation_id: "c1",
            execution_key: "k1",
            attempt: 2,
            worker: "w1",
        };
        let spec = JobSpec {
            config: &config,
            name: "orch-x",
            ids: ids.clone(),
            image: "busybox",
            node_selector: &BTreeMap::new(),
            resources: &config.resources,
            payload: &payload,
            deadline_seconds: Some(30),
            secret: Some("orch-x-env"),
            artifacts_uri: Some("s3://b/orchestrator/e1/artifacts/"),
            artifacts_volume: None,
        };
        let job = serde_json::to_value(job_manifest(&spec).unwrap()).unwrap();
        let text = job.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 30);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let test = &pod["containers"][0];
        assert_eq!(test["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(test["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
        assert_eq!(pod["terminationGracePeriodSeconds"], 300);
        assert_eq!(job["metadata"]["labels"][EXECUTION_ID], "e1");
        assert_eq!(job["metadata"]["annotations"][ATTEMPT], "2");
        let secret = secret_manifest(&config, &ids, "orch-x", &payload).unwrap();
        assert_eq!(secret.string_data.unwrap()["TOKEN"], "s3cret");
    }
}
