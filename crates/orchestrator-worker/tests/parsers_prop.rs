//! Random YAML and JSON documents fed to every parser the CLI and the
//! worker use: runner configs (YAML, pairs, environment), worker configs,
//! benches, payloads, batch entries' sections and queue task bodies. None
//! may panic or abort, and each answers in bounded time.

#![cfg(all(feature = "local", feature = "mock"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::task::Task;
use proptest::prelude::*;
use runner_core::{BenchSpec, RunnerConfig, TestPayload};

/// Every parser, on one text. Results are ignored: only panics, aborts and
/// time matter here.
fn parse_everything(text: &str) {
    let started = Instant::now();
    let _ = runner_core::doc::check_yaml(text, "t");
    let _ = runner_core::doc::decode(text.as_bytes(), "t", 1 << 20);
    let _ = RunnerConfig::from_yaml_str(text);
    let _ = WorkerConfig::from_yaml_str(text);
    let _ = BenchSpec::from_yaml(text);
    let _ = TestPayload::from_yaml(text);
    let _ = Task::parse(text);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = runner_core::decode_section::<runner_local::LocalBench>(&value, "bench.backend");
        let _ = runner_core::decode_section::<runner_mock::MockPayload>(&value, "payload.backend");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?} for {text:?}");
}

/// YAML-looking text: structure characters, keys the parsers know, numbers
/// at the edges of their types, anchors and aliases, tags, quotes.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just("- ".to_owned()),
        Just(": ".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just(", ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("!!str ".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("# c".to_owned()),
        Just("|\n".to_owned()),
        Just("---\n".to_owned()),
        Just("\u{feff}".to_owned()),
        Just("\0".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        prop::sample::select(vec![
            "type",
            "backend",
            "retries",
            "timeout_seconds",
            "phase_timeouts",
            "queue",
            "runners",
            "worker",
            "name",
            "command",
            "env",
            "artifacts",
            "payload",
            "bench",
            "runner",
            "execution_key",
            "secret",
            "value",
            "labels",
            "local",
            "log_lines",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9_./]{0,8}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(token, 0..80).prop_map(|t| t.concat())
}

/// Arbitrary JSON values, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "type",
                    "backend",
                    "execution_key",
                    "runner",
                    "payload",
                    "bench",
                    "command",
                    "env",
                    "name",
                    "artifacts",
                    "timeout_seconds",
                    "log_lines",
                    "root",
                    "x",
                ]),
                inner,
                0..6,
            )
            .prop_map(|m| {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_yaml_never_panics(text in yamlish()) {
        parse_everything(&text);
    }

    #[test]
    fn random_json_never_panics(value in json()) {
        parse_everything(&value.to_string());
        // As a task body's shape too.
        let body = serde_json::json!({"execution_key": "k", "runner": "local", "payload": value});
        parse_everything(&body.to_string());
    }

    #[test]
    fn random_pairs_and_environment_never_panic(
        pairs in prop::collection::vec(("[a-z_.]{0,12}", ".{0,12}"), 0..8),
    ) {
        let _ = RunnerConfig::from_pairs(pairs.clone());
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (format!("ORCHESTRATOR_RUNNER_{}", k.to_ascii_uppercase().replace('.', "__")), v));
        let _ = RunnerConfig::from_env_vars(vars);
    }
}

#[test]
fn hostile_documents_are_refused_in_milliseconds() {
    let laughs = {
        let mut t = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
        for i in 1u8..9 {
            let (n, p) = ((b'a' + i) as char, (b'a' + i - 1) as char);
            t += &format!("{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n");
        }
        t
    };
    for text in [
        format!("{}{}", "[".repeat(500_000), "]".repeat(500_000)),
        "- ".repeat(500_000),
        format!("a: {}", "{b: ".repeat(200_000)),
        laughs,
    ] {
        let started = Instant::now();
        assert!(RunnerConfig::from_yaml_str(&text).is_err());
        assert!(TestPayload::from_yaml(&text).is_err());
        assert!(WorkerConfig::from_yaml_str(&text).is_err());
        // The bound is what separates linear from blow-up (a 100,000-deep
        // document took 70 s before the pre-scan), not a speed target: on
        // a loaded two-core machine a debug build has taken 0.5 s here.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
