//! JUnit XML of execution results, for CI systems that read it.

use quick_xml::escape::escape;
use runner_core::TestStatus;

use crate::engine::ExecutionOutcome;

/// One test case for the report.
#[derive(Debug, Clone)]
pub struct Case<'a> {
    /// The test's name.
    pub name: &'a str,
    /// What happened.
    pub outcome: &'a ExecutionOutcome,
}

/// A `<testsuite>` with one `<testcase>` per execution.
pub fn render(suite: &str, cases: &[Case<'_>]) -> String {
    let mut failures = 0;
    let mut errors = 0;
    let mut skipped = 0;
    let mut body = String::new();
    let mut total_secs = 0.0;
    for case in cases {
        let secs = case
            .outcome
            .result
            .as_ref()
            .map_or(0.0, |r| r.duration.as_secs_f64());
        total_secs += secs;
        body.push_str(&format!(
            "  <testcase name=\"{}\" classname=\"{}\" time=\"{secs:.3}\">\n",
            escape(case.name),
            escape(suite)
        ));
        let diagnosis = case
            .outcome
            .result
            .as_ref()
            .and_then(|r| r.diagnosis.as_ref())
            .map(|d| format!("{}: {}", d.layer, d.message))
            .unwrap_or_default();
        match (&case.outcome.result, &case.outcome.failure) {
            (_, Some(f)) => {
                errors += 1;
                body.push_str(&format!(
                    "    <error type=\"{}\" message=\"{}\"/>\n",
                    escape(format!("{}:{}", f.phase, f.kind)),
                    escape(&f.message)
                ));
            }
            (Some(r), None) => match r.status {
                TestStatus::Passed => {}
                TestStatus::Failed | TestStatus::TimedOut => {
                    failures += 1;
                    body.push_str(&format!(
                        "    <failure type=\"{}\" message=\"{}\"/>\n",
                        r.status.as_str(),
                        escape(&diagnosis)
                    ));
                }
                TestStatus::Cancelled => {
                    skipped += 1;
                    body.push_str("    <skipped message=\"cancelled\"/>\n");
                }
                TestStatus::Error => {
                    errors += 1;
                    body.push_str(&format!(
                        "    <error type=\"error\" message=\"{}\"/>\n",
                        escape(&diagnosis)
                    ));
                }
            },
            (None, None) => {
                errors += 1;
                body.push_str("    <error type=\"unknown\" message=\"no result\"/>\n");
            }
        }
        body.push_str("  </testcase>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{total_secs:.3}\">\n{body}</testsuite>\n",
        escape(suite),
        cases.len()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use runner_core::TestResult;

    use super::*;

    #[test]
    fn escapes_names_and_counts_failures() {
        let failed = ExecutionOutcome {
            result: Some(TestResult::from_exit_code(2, Duration::from_millis(1500))),
            ..ExecutionOutcome::default()
        };
        let xml = render(
            "suite<&>",
            &[Case {
                name: "a \"b\"",
                outcome: &failed,
            }],
        );
        assert!(xml.contains("suite&lt;&amp;&gt;"), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("time=\"1.500\""), "{xml}");
        assert!(xml.contains("a &quot;b&quot;"), "{xml}");
    }
}
