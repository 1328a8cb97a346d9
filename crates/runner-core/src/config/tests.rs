//! Loading and validation: every error names its key.

use super::*;

fn key_of(err: ConfigError) -> String {
    match err {
        ConfigError::Key { key, .. } | ConfigError::Invalid { key, .. } => key,
        other => panic!("not a key error: {other}"),
    }
}

#[test]
fn loads_yaml_with_defaults_and_phase_timeouts() {
    let c = RunnerConfig::from_yaml_str(
            "type: local\nretries: 3\ntimeout_seconds: 60\nphase_timeouts: {teardown: 5}\nbackend: {root: /tmp/w}\n",
        )
        .unwrap();
    assert_eq!(c.runner_type, "local");
    assert_eq!(c.max_attempts(), 4);
    assert_eq!(c.phase_timeout(Phase::Teardown), Duration::from_secs(5));
    assert_eq!(c.phase_timeout(Phase::Provision), Duration::from_secs(60));
    assert_eq!(c.backend["root"], "/tmp/w");
}

#[test]
fn unknown_key_is_named() {
    let err = RunnerConfig::from_yaml_str("type: local\ntimeout_secs: 5\n").unwrap_err();
    assert!(err.to_string().contains("timeout_secs"), "{err}");
    let err =
        RunnerConfig::from_yaml_str("type: local\nphase_timeouts: {provison: 5}\n").unwrap_err();
    assert_eq!(key_of(err), "phase_timeouts.provison");
}

#[test]
fn negative_and_zero_timeouts_name_the_key() {
    let err = RunnerConfig::from_yaml_str("type: local\ntimeout_seconds: -5\n").unwrap_err();
    let text = err.to_string();
    assert_eq!(key_of(err), "timeout_seconds", "{text}");
    assert!(text.contains("-5"), "{text}");
    let err = RunnerConfig::from_yaml_str("type: local\ntimeout_seconds: 0\n").unwrap_err();
    assert_eq!(key_of(err), "timeout_seconds");
    let err =
        RunnerConfig::from_yaml_str("type: local\nphase_timeouts: {run_test: 0}\n").unwrap_err();
    assert_eq!(key_of(err), "phase_timeouts.run_test");
}

#[test]
fn bad_yaml_is_a_syntax_error_with_a_position() {
    let err = RunnerConfig::from_yaml_str("type: [local\nretries: 2\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert!(err.to_string().contains("line"), "{err}");
}

#[test]
fn missing_type_is_named() {
    let err = RunnerConfig::from_yaml_str("retries: 1\n").unwrap_err();
    assert_eq!(key_of(err), "type");
}

#[test]
fn env_vars_nest_and_errors_name_the_variable() {
    let vars = [
        ("RUNNER_TYPE", "ec2"),
        ("RUNNER_RETRIES", "4"),
        ("RUNNER_BACKEND__REGION", "eu-west-1"),
        ("UNRELATED", "x"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let c = RunnerConfig::from_env_vars(vars).unwrap();
    assert_eq!(c.retries, 4);
    assert_eq!(c.backend["region"], "eu-west-1");

    let vars = [("RUNNER_TYPE", "ec2"), ("RUNNER_TIMEOUT_SECONDS", "-1")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let err = RunnerConfig::from_env_vars(vars).unwrap_err().to_string();
    assert!(err.contains("RUNNER_TIMEOUT_SECONDS"), "{err}");

    // Under the full prefix a misspelt key is an error naming the variable.
    let vars = [
        ("ORCHESTRATOR_RUNNER_TYPE", "ec2"),
        ("ORCHESTRATOR_RUNNER_RETRYS", "1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let err = RunnerConfig::from_env_vars(vars).unwrap_err().to_string();
    assert!(err.contains("ORCHESTRATOR_RUNNER_RETRYS"), "{err}");
    let vars = [
        ("ORCHESTRATOR_RUNNER_TYPE", "local"),
        ("ORCHESTRATOR_RUNNER_BACKEND__ROOT", "/w"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(
        RunnerConfig::from_env_vars(vars).unwrap().backend["root"],
        "/w"
    );
}

#[test]
fn a_ci_systems_runner_variables_do_not_break_the_alias() {
    // GitHub Actions sets these on every job.
    let vars = [
        ("RUNNER_TYPE", "local"),
        ("RUNNER_TEMP", "/home/runner/work/_temp"),
        ("RUNNER_OS", "Linux"),
        ("RUNNER_TOOL_CACHE", "/opt/hostedtoolcache"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let c = RunnerConfig::from_env_vars(vars).unwrap();
    assert_eq!(c.runner_type, "local");
    // With the full prefix present, the alias is not read at all.
    let vars = [
        ("ORCHESTRATOR_RUNNER_TYPE", "local_mock"),
        ("RUNNER_TYPE", "local"),
        ("RUNNER_RETRIES", "nope"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let c = RunnerConfig::from_env_vars(vars).unwrap();
    assert_eq!((c.runner_type.as_str(), c.retries), ("local_mock", 2));
}

#[test]
fn pairs_refuse_a_value_used_as_a_section() {
    let err = RunnerConfig::from_pairs([("type", "x"), ("retries", "1"), ("retries.x", "2")])
        .unwrap_err();
    assert!(err.to_string().contains("retries.x"), "{err}");
}
