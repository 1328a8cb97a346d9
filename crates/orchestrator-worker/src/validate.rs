//! One validation pass before anything is made: the runner type (from
//! `--runner` or the bench's `runner`), the payload's common fields, and the
//! backend's own check of its sections. `run`, `submit`, `validate` and the
//! worker taking a task all go through it, so a typo is an error at submit,
//! never a dead letter an hour later.

use runner_core::{BenchSpec, RunContext, RunnerAdapter, TestPayload};

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct Invalid {
    /// The dotted path of the field (`bench.runner`, `payload.artifacts[0]`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The runner type a task runs on: `asked` (a `--runner` flag) or the
/// bench's `runner`, which must agree when both are given.
pub fn runner_type(asked: Option<&str>, bench: &BenchSpec) -> Result<String, Invalid> {
    let asked = asked.map(str::trim).filter(|r| !r.is_empty());
    let named = bench.runner.as_deref().map(str::trim);
    match (asked, named) {
        (Some(a), Some(b)) if a != b => Err(Invalid::new(
            "bench.runner",
            format!("the bench needs runner type `{b}`, but `{a}` was asked for"),
        )),
        (Some(a), _) => Ok(a.to_owned()),
        (None, Some(b)) if !b.is_empty() => Ok(b.to_owned()),
        (None, Some(_)) => Err(Invalid::new("bench.runner", "must not be empty")),
        (None, None) => Err(Invalid::new(
            "runner",
            "no runner type: give --runner, or `runner:` in the bench",
        )),
    }
}

/// The payload fields every backend reads the same way.
pub fn payload_common(payload: &TestPayload) -> Result<(), Invalid> {
    if payload.timeout_seconds == Some(0) {
        return Err(Invalid::new(
            "payload.timeout_seconds",
            "must be at least 1 (leave it out for no limit of its own)",
        ));
    }
    for (i, pattern) in payload.artifacts.iter().enumerate() {
        let field = format!("payload.artifacts[{i}]");
        runner_core::safe_path::validate_name(pattern)
            .map_err(|e| Invalid::new(&field, e.to_string()))?;
        if pattern.contains('\\') {
            return Err(Invalid::new(
                &field,
                format!("{pattern:?}: a backslash is not a path separator here; use `/`"),
            ));
        }
        globset::Glob::new(pattern)
            .map_err(|e| Invalid::new(&field, format!("{pattern:?} is not a glob: {e}")))?;
    }
    Ok(())
}

/// Everything a task must pass before it is queued or provisioned:
/// common payload fields, then `adapter`'s own check of its sections.
pub fn task(
    adapter: &dyn RunnerAdapter,
    ctx: &RunContext,
    bench: &BenchSpec,
    payload: &TestPayload,
) -> Result<(), Invalid> {
    payload_common(payload)?;
    adapter.validate(ctx, bench, payload).map_err(|e| {
        let field = e.field().unwrap_or("bench").to_owned();
        // An invalid_spec message already names the field; say it once.
        let detail = e.detail();
        let message = detail
            .strip_prefix(&format!("invalid field `{field}`: "))
            .map(str::to_owned)
            .unwrap_or(detail);
        Invalid { field, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_type_comes_from_the_flag_or_the_bench_and_they_agree() {
        let mut bench = BenchSpec::default();
        assert_eq!(runner_type(Some("local"), &bench).unwrap(), "local");
        assert_eq!(runner_type(None, &bench).unwrap_err().field, "runner");
        bench.runner = Some("onprem".into());
        assert_eq!(runner_type(None, &bench).unwrap(), "onprem");
        assert_eq!(runner_type(Some("onprem"), &bench).unwrap(), "onprem");
        let err = runner_type(Some("local"), &bench).unwrap_err();
        assert_eq!(err.field, "bench.runner");
        assert!(err.message.contains("onprem") && err.message.contains("local"));
    }

    /// The factory's layers pass `validate` through to the backend (the
    /// trait's default would accept everything).
    #[cfg(feature = "container")]
    #[test]
    fn a_backends_own_check_reaches_through_the_layers_and_names_the_field_once() {
        let factory = crate::factory::RunnerFactory::with_builtins(crate::Metrics::new());
        let config = runner_core::RunnerConfig::from_yaml_str(
            "type: container\nbackend: {image: example/tests:1}\n",
        )
        .unwrap();
        let adapter = factory.create(&config).unwrap();
        let ctx = RunContext::new("e", "c");
        let payload = TestPayload {
            command: vec!["true".into()],
            ..TestPayload::default()
        };
        let bench = BenchSpec {
            backend: serde_json::json!({"memory_mb": 1}),
            ..BenchSpec::default()
        };
        let err = task(adapter.as_ref(), &ctx, &bench, &payload).unwrap_err();
        assert_eq!(err.field, "bench.backend.memory_mb");
        assert!(err.message.starts_with("must be between"), "{err}");
        assert!(task(adapter.as_ref(), &ctx, &BenchSpec::default(), &payload).is_ok());
    }

    #[test]
    fn globs_that_leave_the_work_dir_are_refused_before_anything_runs() {
        for (pattern, ok) in [
            ("reports/*.xml", true),
            ("**/junit-*.xml", true),
            ("../*", false),
            ("/etc/passwd", false),
            ("a/../../x", false),
            ("..\\x", false),
            ("[unclosed", false),
            ("", false),
        ] {
            let payload = TestPayload {
                artifacts: vec![pattern.into()],
                ..TestPayload::default()
            };
            let result = payload_common(&payload);
            assert_eq!(result.is_ok(), ok, "{pattern:?}: {result:?}");
            if let Err(e) = result {
                assert_eq!(e.field, "payload.artifacts[0]");
            }
        }
        let zero = TestPayload {
            timeout_seconds: Some(0),
            ..TestPayload::default()
        };
        assert_eq!(
            payload_common(&zero).unwrap_err().field,
            "payload.timeout_seconds"
        );
    }
}
