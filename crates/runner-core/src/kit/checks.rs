//! Payload checks the backends share, each naming the field it refuses.

use crate::context::RunContext;
use crate::error::RunnerError;
use crate::phase::PhaseMarker;
use crate::spec::TestPayload;

/// The command names a program.
pub fn command<P: PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), RunnerError<P>> {
    if payload.command.first().is_none_or(|p| p.is_empty()) {
        return Err(RunnerError::invalid_spec(
            ctx,
            "payload.command",
            "must name a program",
        ));
    }
    Ok(())
}

/// The working directory, if any, is relative and stays inside the run's directory.
pub fn relative_working_dir<P: PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), RunnerError<P>> {
    if let Some(dir) = &payload.working_dir {
        crate::safe_path::validate_name(dir)
            .map_err(|e| RunnerError::invalid_spec(ctx, "payload.working_dir", e.to_string()))?;
    }
    Ok(())
}

/// Every artifact pattern is relative and never climbs out with `..`.
pub fn artifact_patterns<P: PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), RunnerError<P>> {
    for (i, glob) in payload.artifacts.iter().enumerate() {
        let bad =
            glob.is_empty() || glob.starts_with('/') || glob.split('/').any(|part| part == "..");
        if bad {
            return Err(RunnerError::invalid_spec(
                ctx,
                format!("payload.artifacts[{i}]"),
                format!("{glob:?} must be a relative pattern without `..`"),
            ));
        }
    }
    Ok(())
}

/// Every environment name is a shell variable name.
pub fn env_names<P: PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), RunnerError<P>> {
    for name in payload.env.keys() {
        let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(RunnerError::invalid_spec(
                ctx,
                format!("payload.env.{name}"),
                "must be a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
    }
    Ok(())
}
