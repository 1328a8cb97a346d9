//! From what the engine saw to what the store records: attempt details,
//! results, artifacts and the settled state.

use runner_core::{ArtifactBundle, ArtifactLocation, TestResult, TestStatus};

use crate::engine::ExecutionOutcome;
use crate::policy::Disposition;
use crate::store::{
    AttemptDetail, AttemptError, ExecState, NewExecution, RecordedArtifact, RecordedCase,
    RecordedResult, Settlement,
};
use crate::task::Task;

/// The record-side description of a task.
pub fn new_execution(task: &Task) -> NewExecution {
    NewExecution {
        key: task.execution_key.clone(),
        runner: task.runner.clone(),
        bench: task.bench.name.clone(),
        payload: task.payload.name.clone(),
        correlation_id: task.correlation().to_owned(),
        labels: task.labels.clone(),
        submitted_by: task.submitted_by.clone().unwrap_or_default(),
    }
}

/// The name a disposition is recorded and logged under.
pub fn disposition_name(d: &Disposition) -> &'static str {
    match d {
        Disposition::Ack => "ack",
        Disposition::Requeue { .. } => "requeue",
        Disposition::Release => "release",
        Disposition::Defer { .. } => "defer",
        Disposition::DeadLetter { .. } => "dead_letter",
    }
}

/// One attempt as the record keeps it.
pub fn attempt_detail(
    attempt: u32,
    worker: &str,
    outcome: &ExecutionOutcome,
    disposition: &Disposition,
) -> AttemptDetail {
    AttemptDetail {
        attempt,
        worker: worker.to_owned(),
        started_ms: outcome.started_ms,
        ended_ms: outcome.ended_ms.max(outcome.started_ms),
        phases: outcome.phases.clone(),
        error: outcome
            .failure
            .as_ref()
            .or(outcome.artifact_error.as_ref())
            .or(outcome.teardown_error.as_ref())
            .map(|f| AttemptError {
                phase: f.phase,
                kind: f.kind,
                message: f.message.clone(),
            }),
        disposition: disposition_name(disposition).to_owned(),
    }
}

/// The state a result settles in.
pub fn state_of(status: TestStatus) -> ExecState {
    match status {
        TestStatus::Passed => ExecState::Passed,
        TestStatus::Failed => ExecState::Failed,
        TestStatus::TimedOut => ExecState::TimedOut,
        TestStatus::Cancelled => ExecState::Cancelled,
        TestStatus::Error => ExecState::Error,
    }
}

/// A result as the record keeps it.
pub fn recorded_result(result: &TestResult) -> RecordedResult {
    RecordedResult {
        status: result.status.as_str().to_owned(),
        exit_code: result.exit_code,
        duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
        counts: result.counts,
        diagnosis: result
            .diagnosis
            .as_ref()
            .map(|d| format!("[{}] {}", d.layer, d.message)),
    }
}

/// Artifacts as the record keeps them.
pub fn recorded_artifacts(bundle: Option<&ArtifactBundle>) -> Vec<RecordedArtifact> {
    bundle
        .map(|b| {
            b.artifacts
                .iter()
                .map(|a| RecordedArtifact {
                    name: a.name.clone(),
                    uri: match &a.location {
                        ArtifactLocation::Local(p) => format!("file://{}", p.display()),
                        ArtifactLocation::Uri(u) => u.clone(),
                    },
                    size: a.size,
                    sha256: a.sha256.clone(),
                    kind: format!("{:?}", a.kind).to_lowercase(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The suite's own test cases, from the JUnit reports among the collected
/// artifacts (local `.xml` files that parse as JUnit; others are skipped),
/// and their counts. Reads files off the runtime threads.
pub async fn suite_cases(
    bundle: Option<&ArtifactBundle>,
) -> (Vec<RecordedCase>, Option<runner_core::TestCounts>) {
    let paths: Vec<std::path::PathBuf> = bundle
        .map(|b| {
            b.artifacts
                .iter()
                .filter(|a| a.name.ends_with(".xml"))
                .filter_map(|a| match &a.location {
                    ArtifactLocation::Local(p) => Some(p.clone()),
                    ArtifactLocation::Uri(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if paths.is_empty() {
        return (Vec::new(), None);
    }
    tokio::task::spawn_blocking(move || {
        let mut cases = Vec::new();
        let mut counts: Option<runner_core::TestCounts> = None;
        for path in paths {
            match crate::junit::parse_report(&path) {
                Ok((found, c)) => {
                    let total = counts.get_or_insert_with(Default::default);
                    total.passed += c.passed;
                    total.failed += c.failed;
                    total.skipped += c.skipped;
                    cases.extend(found);
                    if cases.len() > crate::junit::MAX_CASES {
                        cases.truncate(crate::junit::MAX_CASES);
                        break;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "an .xml artifact is not a JUnit report"),
            }
        }
        (cases, counts)
    })
    .await
    .unwrap_or_default()
}

/// The settlement of an execution that ended with `disposition` (ack or
/// dead letter), or `None` when it goes back to the queue.
pub fn settlement(
    new: NewExecution,
    outcome: &ExecutionOutcome,
    detail: AttemptDetail,
    disposition: &Disposition,
    dead_letter_reason: Option<&str>,
    suite: (Vec<RecordedCase>, Option<runner_core::TestCounts>),
) -> Option<Settlement> {
    let (state, error) = match disposition {
        Disposition::Ack => match &outcome.result {
            Some(r) => (state_of(r.status), None),
            None => (
                ExecState::Error,
                outcome.failure.as_ref().map(|f| f.message.clone()),
            ),
        },
        Disposition::DeadLetter { reason } => (
            ExecState::DeadLettered,
            Some(dead_letter_reason.unwrap_or(reason).to_owned()),
        ),
        Disposition::Requeue { .. } | Disposition::Release | Disposition::Defer { .. } => {
            return None;
        }
    };
    let (cases, counts) = suite;
    let mut result = outcome.result.as_ref().map(recorded_result);
    if let Some(r) = result.as_mut()
        && counts.is_some()
    {
        // The suite's own counts, from its JUnit.
        r.counts = counts;
    }
    Some(Settlement {
        new,
        state,
        at_ms: crate::store::now_ms(),
        attempt: Some(detail),
        result,
        artifacts: recorded_artifacts(outcome.artifacts.as_ref()),
        cases,
        error,
    })
}
