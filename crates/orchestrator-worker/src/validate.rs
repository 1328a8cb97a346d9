//! One validation pass before anything is made: the runner type (from
//! `--runner` or the bench's `runner`), the payload's common fields, and the
//! backend's own check of its sections. `run`, `submit`, `validate` and the
//! worker taking a task all go through it, so a typo is an error at submit,
//! never a dead letter an hour later.

use runner_core::{BenchSpec, RunContext, RunnerAdapter, TestPayload};

pub use crate::invalid::Invalid;

/// The longest payload name accepted.
pub const MAX_NAME_BYTES: usize = 1024;

/// `text` for a message: control characters escaped, so a name cannot
/// move the cursor or recolour the terminal that shows the error.
pub fn shown(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string()
    } else {
        text.to_owned()
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
    if let Some(n) = payload
        .timeout_seconds
        .filter(|n| *n > runner_core::config::MAX_TIMEOUT_SECONDS)
    {
        return Err(Invalid::new(
            "payload.timeout_seconds",
            format!(
                "{n} is more than the maximum of {} (7 days)",
                runner_core::config::MAX_TIMEOUT_SECONDS
            ),
        ));
    }
    if payload.name.len() > MAX_NAME_BYTES {
        return Err(Invalid::new(
            "payload.name",
            format!("is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    // No process can be given a NUL in its argv or environment: these are
    // input errors, never something a retry could fix.
    for (i, arg) in payload.command.iter().enumerate() {
        if arg.contains('\0') {
            return Err(Invalid::new(
                format!("payload.command[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    for (name, value) in &payload.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Invalid::new(
                "payload.env",
                format!(
                    "{} is not a valid variable name (it must be non-empty, without `=` or NUL)",
                    shown(name)
                ),
            ));
        }
        if value.value().contains('\0') {
            return Err(Invalid::new(
                format!("payload.env.{}", shown(name)),
                "the value contains a NUL byte",
            ));
        }
    }
    if let Some(dir) = &payload.working_dir {
        runner_core::safe_path::validate_name(dir)
            .map_err(|e| Invalid::new("payload.working_dir", e.to_string()))?;
    }
    if payload.package.as_deref().is_some_and(|p| p.contains('\0')) {
        return Err(Invalid::new("payload.package", "contains a NUL byte"));
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

/// The longest execution key, correlation id or label accepted.
pub const MAX_ID_BYTES: usize = 256;

/// The names a task carries: an execution key and a correlation id that
/// are non-empty, at most [`MAX_ID_BYTES`] and free of control characters
/// (they end up in file names, tags, logs and terminals), and labels alike.
pub fn ids(task: &crate::task::Task) -> Result<(), Invalid> {
    let check = |field: &str, value: &str| -> Result<(), Invalid> {
        if value.trim().is_empty() {
            return Err(Invalid::new(field, "must not be empty"));
        }
        if value.len() > MAX_ID_BYTES {
            return Err(Invalid::new(
                field,
                format!("is longer than {MAX_ID_BYTES} bytes"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(Invalid::new(
                field,
                format!("{} contains a control character", shown(value)),
            ));
        }
        Ok(())
    };
    check("key", &task.execution_key)?;
    check("runner", &task.runner)?;
    if let Some(id) = &task.correlation_id {
        check("correlation_id", id)?;
    }
    for (name, value) in &task.labels {
        check("label", name)?;
        if value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
            return Err(Invalid::new(
                format!("label.{}", shown(name)),
                "the value is too long or contains a control character",
            ));
        }
    }
    Ok(())
}

/// The runner config's trust boundary (`allowed:`). `queued` is true for
/// a task from a queue or a submit: a package from the worker's own disk
/// then needs `allowed.package_roots` to name its directory.
pub fn allowed(
    config: &runner_core::RunnerConfig,
    bench: &BenchSpec,
    payload: &TestPayload,
    queued: bool,
) -> Result<(), Invalid> {
    let rules = &config.allowed;
    let matches = |patterns: &[String], value: &str| {
        patterns.iter().any(|p| {
            p == value
                || globset::Glob::new(p)
                    .map(|g| g.compile_matcher().is_match(value))
                    .unwrap_or(false)
        })
    };
    if let Some(commands) = &rules.commands {
        let program = if payload.shell {
            "sh"
        } else {
            payload.command.first().map(String::as_str).unwrap_or("")
        };
        if !matches(commands, program) {
            return Err(Invalid::new(
                if payload.shell {
                    "payload.shell"
                } else {
                    "payload.command[0]"
                },
                format!(
                    "`{}` is not in this runner's allowed.commands",
                    shown(program)
                ),
            ));
        }
    }
    if let Some(names) = &rules.env {
        for name in payload.env.keys() {
            if !matches(names, name) {
                return Err(Invalid::new(
                    format!("payload.env.{}", shown(name)),
                    "not in this runner's allowed.env",
                ));
            }
        }
    }
    if let Some(images) = &rules.images {
        for (field, section) in [
            ("bench.backend.image", &bench.backend),
            ("payload.backend.image", &payload.backend),
        ] {
            if let Some(image) = section.get("image").and_then(|v| v.as_str())
                && !matches(images, image)
            {
                return Err(Invalid::new(
                    field,
                    format!("`{}` is not in this runner's allowed.images", shown(image)),
                ));
            }
        }
    }
    if let Some(package) = payload.package.as_deref().filter(|p| !p.contains("://")) {
        let path = std::path::Path::new(package);
        let inside = |roots: &[std::path::PathBuf]| {
            path.is_absolute()
                && !path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                && roots.iter().any(|r| path.starts_with(r))
        };
        match &rules.package_roots {
            Some(roots) if !inside(roots) => {
                return Err(Invalid::new(
                    "payload.package",
                    "is not an absolute path under one of this runner's allowed.package_roots",
                ));
            }
            None if queued => {
                return Err(Invalid::new(
                    "payload.package",
                    "a queued task may not name a path on the worker's disk unless the runner \
                     config lists its directory in allowed.package_roots",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a task must pass to be stored (submit, batch): [`ids`], and no
/// literal secret value (it would sit in the queue and the DLQ).
pub fn queued(task: &crate::task::Task) -> Result<(), Invalid> {
    ids(task)?;
    crate::secrets::refuse_literals(&task.payload)
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
    crate::secrets::check_references(payload, adapter.runner_type())?;
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
        let payload = TestPayload::new(["true"]);
        let bench = BenchSpec::new().with_backend(serde_json::json!({"memory_mb": 1}));
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
            let payload = TestPayload::default().with_artifacts([pattern]);
            let result = payload_common(&payload);
            assert_eq!(result.is_ok(), ok, "{pattern:?}: {result:?}");
            if let Err(e) = result {
                assert_eq!(e.field, "payload.artifacts[0]");
            }
        }
        let zero = TestPayload::default().with_timeout_seconds(0);
        assert_eq!(
            payload_common(&zero).unwrap_err().field,
            "payload.timeout_seconds"
        );
    }
}
