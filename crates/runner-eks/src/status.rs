//! Reading a test pod's state: still starting, running, or ended (and how).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Waiting reasons that mean the image will not come.
const PULL_FAILURES: &[&str] = &["ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

/// Where a test pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Not yet running; the reason and message when the kubelet gave one
    /// (`ContainerCreating`, `Unschedulable: 0/3 nodes ...`).
    Starting(Option<String>),
    /// The test container runs.
    Running,
    /// The image cannot be pulled: permanent, unless the registry's message
    /// says rate limit or server error ([`pull_failure_kind`]).
    PullFailed(String),
    /// The pod was evicted (node pressure, preemption): transient.
    Evicted(String),
    /// The test container ended.
    Ended(Ended),
}

/// How the test container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code.
    pub exit_code: i32,
    /// The kubelet's reason (`Completed`, `Error`, `OOMKilled`, `DeadlineExceeded`).
    pub reason: Option<String>,
    /// The kubelet's message.
    pub message: Option<String>,
}

impl Ended {
    /// Whether the kernel killed it over its memory limit.
    pub fn oom_killed(&self) -> bool {
        self.reason.as_deref() == Some("OOMKilled")
    }
}

/// How to treat an image that cannot be pulled, from the kubelet's message:
/// a registry's 429 or 5xx passes (transient), a quota is capacity, a
/// missing image or a refused pull secret is permanent.
pub fn pull_failure_kind(message: &str) -> runner_core::ErrorKind {
    runner_core::kit::classify::message(message).unwrap_or(runner_core::ErrorKind::Permanent)
}

fn test_container<'a>(statuses: &'a [ContainerStatus], name: &str) -> Option<&'a ContainerStatus> {
    statuses.iter().find(|s| s.name == name)
}

/// The state of pod `pod`'s container `container`.
pub fn pod_state(pod: &Pod, container: &str) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Starting(None);
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if status.reason.as_deref() == Some("Evicted") {
        return PodState::Evicted(format!(
            "the pod was evicted: {}",
            status.message.as_deref().unwrap_or("no message")
        ));
    }
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    if let Some(cs) = test_container(statuses, container)
        && let Some(state) = &cs.state
    {
        if let Some(t) = &state.terminated {
            return PodState::Ended(Ended {
                exit_code: t.exit_code,
                reason: t.reason.clone(),
                message: t.message.clone(),
            });
        }
        if state.running.is_some() {
            return PodState::Running;
        }
        if let Some(w) = &state.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            let message = w.message.clone().unwrap_or_default();
            if PULL_FAILURES.contains(&reason.as_str()) {
                let image = if cs.image.is_empty() { "?" } else { &cs.image };
                return PodState::PullFailed(format!(
                    "image {image} cannot be pulled: {reason}: {message}"
                ));
            }
            return PodState::Starting(Some(format!("{reason}: {message}")));
        }
    }
    match phase {
        // Failed with no container status: the pod never ran its test
        // (deleted by a deadline, or a node lost).
        "Failed" => PodState::Evicted(format!(
            "the pod failed before its test container ran: {}: {}",
            status.reason.as_deref().unwrap_or("no reason"),
            status.message.as_deref().unwrap_or("no message")
        )),
        _ => {
            let unschedulable = status
                .conditions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            PodState::Starting(unschedulable.map(|c| {
                format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or("Unschedulable"),
                    c.message.as_deref().unwrap_or("")
                )
            }))
        }
    }
}

/// Whether the Job failed for its `activeDeadlineSeconds`, with the message.
pub fn deadline_exceeded(job: &Job) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "Failed"
                && c.status == "True"
                && c.reason.as_deref() == Some("DeadlineExceeded")
        })
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| "Job was active longer than specified deadline".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn pull_failures_are_classified_by_their_message() {
        use runner_core::ErrorKind;
        assert_eq!(
            pull_failure_kind(
                "image x:1 cannot be pulled: ImagePullBackOff: Back-off pulling image \"x:1\": ErrImagePull: failed to pull and unpack image: unexpected status from HEAD request: 429 Too Many Requests"
            ),
            ErrorKind::Transient
        );
        assert_eq!(
            pull_failure_kind(
                "ImagePullBackOff: ... failed to resolve reference: 503 Service Unavailable"
            ),
            ErrorKind::Transient
        );
        assert_eq!(
            pull_failure_kind("ImagePullBackOff: ... x:1: not found"),
            ErrorKind::Permanent
        );
        assert_eq!(
            pull_failure_kind("InvalidImageName: couldn't parse image reference"),
            ErrorKind::Permanent
        );
    }

    #[test]
    fn reads_each_state() {
        assert_eq!(
            pod_state(&pod(json!({"phase": "Pending"})), "test"),
            PodState::Starting(None)
        );
        let waiting = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "test", "image": "x:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}));
        assert!(
            matches!(pod_state(&waiting, "test"), PodState::PullFailed(m) if m.contains("x:1"))
        );
        let oom = pod(json!({"phase": "Failed", "containerStatuses": [{
            "name": "test", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}));
        assert!(
            matches!(pod_state(&oom, "test"), PodState::Ended(e) if e.oom_killed() && e.exit_code == 137)
        );
        let evicted = pod(
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
        );
        assert!(
            matches!(pod_state(&evicted, "test"), PodState::Evicted(m) if m.contains("low on resource"))
        );
        let unschedulable = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}),
        );
        assert!(
            matches!(pod_state(&unschedulable, "test"), PodState::Starting(Some(m)) if m.contains("0/3"))
        );
    }
}
