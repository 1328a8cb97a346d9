//! JUnit XML: the reports a test suite writes are read into its execution
//! record (its own cases and counts), and reports of executions are written
//! for CI systems, with the suite's own cases where it had them.
//!
//! Text that XML 1.0 cannot carry (NUL, most C0 controls, lone surrogates)
//! is written as `\u{..}`, so the report stays well-formed whatever a name
//! holds.

use std::borrow::Cow;
use std::io::BufRead;
use std::path::Path;

use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use runner_core::TestCounts;

use crate::store::{ExecState, ExecutionRecord, RecordedCase};

/// A report larger than this is not read (it is still an artifact).
pub const MAX_REPORT_BYTES: u64 = 32 * 1024 * 1024;
/// At most this many cases are kept from one execution's reports.
pub const MAX_CASES: usize = 20_000;

/// `text` escaped for XML, with characters XML 1.0 cannot hold spelled out.
pub fn xml_text(text: &str) -> Cow<'_, str> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r')
            || ('\u{20}'..='\u{D7FF}').contains(&c)
            || ('\u{E000}'..='\u{FFFD}').contains(&c)
            || c >= '\u{10000}'
    };
    if text.chars().all(allowed) {
        return escape(text);
    }
    let cleaned: String = text
        .chars()
        .map(|c| {
            if allowed(c) {
                c.to_string()
            } else {
                format!("\\u{{{:x}}}", c as u32)
            }
        })
        .collect();
    Cow::Owned(escape(&cleaned).into_owned())
}

fn attr(tag: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    tag.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// The test cases of a JUnit report at `path` (a `<testsuites>` or
/// `<testsuite>` document), with their counts. Not JUnit: an error.
pub fn parse_report(path: &Path) -> Result<(Vec<RecordedCase>, TestCounts), String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if size > MAX_REPORT_BYTES {
        return Err(format!(
            "{} is {size} bytes, more than the {MAX_REPORT_BYTES} read for test cases",
            path.display()
        ));
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`parse_report`] on any reader.
pub fn parse<R: BufRead>(input: R) -> Result<(Vec<RecordedCase>, TestCounts), String> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut suites: Vec<String> = Vec::new();
    let mut cases = Vec::new();
    let mut current: Option<RecordedCase> = None;
    let mut saw_root = false;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("not well-formed XML: {e}"))?;
        let (start, empty) = match &event {
            Event::Start(tag) => (Some(tag.clone().into_owned()), false),
            Event::Empty(tag) => (Some(tag.clone().into_owned()), true),
            _ => (None, false),
        };
        if let Some(tag) = start {
            match tag.name().as_ref() {
                b"testsuites" => saw_root = true,
                b"testsuite" => {
                    saw_root = true;
                    if !empty {
                        suites.push(attr(&tag, b"name").unwrap_or_default());
                    }
                }
                b"testcase" => {
                    let case = RecordedCase {
                        suite: suites.last().cloned().unwrap_or_default(),
                        classname: attr(&tag, b"classname").unwrap_or_default(),
                        name: attr(&tag, b"name").unwrap_or_default(),
                        status: "passed".into(),
                        time_s: attr(&tag, b"time")
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0.0),
                        message: None,
                    };
                    if empty {
                        cases.push(case);
                    } else {
                        current = Some(case);
                    }
                }
                kind @ (b"failure" | b"error" | b"skipped") => {
                    if let Some(case) = current.as_mut() {
                        case.status = match kind {
                            b"failure" => "failed",
                            b"error" => "error",
                            _ => "skipped",
                        }
                        .into();
                        case.message = attr(&tag, b"message");
                    }
                }
                _ => {}
            }
        }
        match event {
            Event::End(tag) if tag.name().as_ref() == b"testcase" => {
                if let Some(case) = current.take() {
                    cases.push(case);
                }
            }
            Event::End(tag) if tag.name().as_ref() == b"testsuite" => {
                suites.pop();
            }
            Event::Eof => break,
            _ => {}
        }
        if cases.len() > MAX_CASES {
            return Err(format!("more than {MAX_CASES} test cases"));
        }
        buf.clear();
    }
    if !saw_root {
        return Err("no <testsuite> or <testsuites> element: not a JUnit report".into());
    }
    let mut counts = TestCounts::default();
    for case in &cases {
        match case.status.as_str() {
            "passed" => counts.passed += 1,
            "skipped" => counts.skipped += 1,
            _ => counts.failed += 1,
        }
    }
    Ok((cases, counts))
}

/// How an execution ended, in JUnit's terms.
fn verdict(record: &ExecutionRecord) -> Option<(&'static str, String)> {
    let why = || {
        record
            .result
            .as_ref()
            .and_then(|r| r.diagnosis.clone())
            .or_else(|| record.error.clone())
            .unwrap_or_else(|| record.state.to_string())
    };
    match record.state {
        ExecState::Passed => None,
        ExecState::Failed | ExecState::TimedOut => Some(("failure", why())),
        ExecState::Cancelled => Some(("skipped", "cancelled".into())),
        ExecState::Error | ExecState::DeadLettered => Some(("error", why())),
        other => Some(("error", format!("not settled: {other}"))),
    }
}

/// One `<testsuites>` report of `records`: each execution a `<testsuite>`
/// holding the suite's own cases when it wrote JUnit, else one case.
pub fn render(records: &[ExecutionRecord]) -> String {
    let (mut tests, mut failures, mut errors, mut skipped) = (0usize, 0usize, 0usize, 0usize);
    let mut body = String::new();
    for record in records {
        let suite_name = if record.new.payload.is_empty() {
            record.new.key.as_str()
        } else {
            record.new.payload.as_str()
        };
        let mut suite = String::new();
        let (mut s_tests, mut s_fail, mut s_err, mut s_skip) = (0, 0, 0, 0);
        if record.cases.is_empty() {
            let secs = record
                .result
                .as_ref()
                .map_or(0.0, |r| r.duration_ms as f64 / 1000.0);
            s_tests += 1;
            suite.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{secs:.3}\">\n",
                xml_text(suite_name),
                xml_text(&record.new.runner)
            ));
            match verdict(record) {
                None => {}
                Some(("skipped", message)) => {
                    s_skip += 1;
                    suite.push_str(&format!(
                        "      <skipped message=\"{}\"/>\n",
                        xml_text(&message)
                    ));
                }
                Some((kind, message)) => {
                    if kind == "failure" {
                        s_fail += 1;
                    } else {
                        s_err += 1;
                    }
                    suite.push_str(&format!(
                        "      <{kind} type=\"{}\" message=\"{}\"/>\n",
                        record.state,
                        xml_text(&message)
                    ));
                }
            }
            suite.push_str("    </testcase>\n");
        } else {
            for case in &record.cases {
                s_tests += 1;
                suite.push_str(&format!(
                    "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">\n",
                    xml_text(&case.name),
                    xml_text(if case.classname.is_empty() {
                        &case.suite
                    } else {
                        &case.classname
                    }),
                    case.time_s
                ));
                let message = xml_text(case.message.as_deref().unwrap_or_default()).into_owned();
                match case.status.as_str() {
                    "failed" => {
                        s_fail += 1;
                        suite.push_str(&format!("      <failure message=\"{message}\"/>\n"));
                    }
                    "error" => {
                        s_err += 1;
                        suite.push_str(&format!("      <error message=\"{message}\"/>\n"));
                    }
                    "skipped" => {
                        s_skip += 1;
                        suite.push_str(&format!("      <skipped message=\"{message}\"/>\n"));
                    }
                    _ => {}
                }
                suite.push_str("    </testcase>\n");
            }
            // The suite passed its cases but the execution did not end well
            // (timed out, dead-lettered): say so as a case of its own.
            if let Some((kind, message)) = verdict(record).filter(|(k, _)| *k != "skipped")
                && s_fail + s_err == 0
            {
                s_tests += 1;
                if kind == "failure" {
                    s_fail += 1;
                } else {
                    s_err += 1;
                }
                suite.push_str(&format!(
                    "    <testcase name=\"{}\" classname=\"orchestrator\" time=\"0\">\n      <{kind} type=\"{}\" message=\"{}\"/>\n    </testcase>\n",
                    xml_text(suite_name),
                    record.state,
                    xml_text(&message)
                ));
            }
        }
        body.push_str(&format!(
            "  <testsuite name=\"{}\" id=\"{}\" tests=\"{s_tests}\" failures=\"{s_fail}\" errors=\"{s_err}\" skipped=\"{s_skip}\">\n{suite}  </testsuite>\n",
            xml_text(suite_name),
            xml_text(&record.new.key)
        ));
        tests += s_tests;
        failures += s_fail;
        errors += s_err;
        skipped += s_skip;
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\">\n{body}</testsuites>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewExecution, RecordedResult};

    fn record(key: &str, payload: &str, state: ExecState) -> ExecutionRecord {
        ExecutionRecord {
            new: NewExecution {
                key: key.into(),
                runner: "local".into(),
                payload: payload.into(),
                ..NewExecution::default()
            },
            state,
            created_ms: 0,
            updated_ms: 0,
            settled_ms: None,
            cancel_requested: false,
            attempts: vec![],
            result: Some(RecordedResult {
                status: state.to_string(),
                exit_code: Some(1),
                duration_ms: 1500,
                counts: None,
                diagnosis: Some("exit 1".into()),
            }),
            artifacts: vec![],
            cases: vec![],
            error: None,
            timeline: vec![],
        }
    }

    #[test]
    fn a_suites_report_is_read_into_cases_and_counts() {
        let xml = r#"<?xml version="1.0"?>
<testsuites><testsuite name="unit">
  <testcase classname="math" name="adds" time="0.01"/>
  <testcase classname="math" name="divides" time="0.2"><failure message="by zero">trace</failure></testcase>
  <testcase name="later"><skipped/></testcase>
</testsuite></testsuites>"#;
        let (cases, counts) = parse(xml.as_bytes()).unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!((counts.passed, counts.failed, counts.skipped), (1, 1, 1));
        assert_eq!(cases[1].suite, "unit");
        assert_eq!(cases[1].message.as_deref(), Some("by zero"));
        assert!(
            parse("<html/>".as_bytes())
                .unwrap_err()
                .contains("not a JUnit")
        );
        assert!(parse("<testsuite><testcase".as_bytes()).is_err());
    }

    #[test]
    fn control_characters_and_markup_stay_well_formed() {
        let name = "a\u{0}b\u{1b}[31mc\u{1}d\u{202e}<&>\"";
        let xml = render(&[record("k1", name, ExecState::Failed)]);
        let (cases, counts) = parse(xml.as_bytes()).expect("the report parses");
        assert_eq!(counts.failed, 1);
        assert!(
            cases[0].name.contains("\\u{0}") && cases[0].name.contains("<&>"),
            "{}",
            cases[0].name
        );
        assert!(!xml.contains('\u{0}') && !xml.contains('\u{1b}'));
    }

    #[test]
    fn a_batch_renders_every_case() {
        let mut with_cases = record("k2", "suite", ExecState::Passed);
        with_cases.cases = vec![RecordedCase {
            suite: "unit".into(),
            classname: "c".into(),
            name: "n".into(),
            status: "passed".into(),
            time_s: 0.5,
            message: None,
        }];
        let xml = render(&[
            with_cases,
            record("k3", "", ExecState::TimedOut),
            record("k4", "p", ExecState::Cancelled),
        ]);
        let (cases, counts) = parse(xml.as_bytes()).unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!((counts.passed, counts.failed, counts.skipped), (1, 1, 1));
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""),
            "{xml}"
        );
    }
}
