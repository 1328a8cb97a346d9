//! Bad input is refused before anything runs: a table of malformed runner
//! configs, worker configs, benches, payloads, batch files, environment
//! variables and command lines, each through the real binary. For every
//! case: the exit code, that the message names the field (or file, or
//! variable), no panic or abort, nothing left behind (no work dir, no
//! process in the case's directory), and an answer in under 2 s.

#![cfg(all(
    feature = "mock",
    feature = "local",
    feature = "onprem",
    feature = "ec2",
    feature = "eks"
))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// One bad input. Files not given take the defaults below; `{dir}` in a
/// file or an argument is the case's own directory.
struct Case {
    name: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    /// Arguments; empty means `run --config runner.yaml --bench bench.yaml
    /// --payload payload.yaml`.
    args: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
    code: i32,
    /// Text the output must contain (the field, file or variable).
    needle: &'static str,
    /// Text the output must not contain (a doubled key, a repeated prefix).
    not: Option<&'static str>,
}

fn case(name: &'static str, code: i32, needle: &'static str) -> Case {
    Case {
        name,
        files: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        code,
        needle,
        not: None,
    }
}

impl Case {
    fn file(mut self, name: &'static str, text: impl Into<Vec<u8>>) -> Self {
        self.files.push((name, text.into()));
        self
    }
    fn runner(self, text: &str) -> Self {
        let text = format!("{text}\nartifacts_dir: '{{dir}}/art'\n");
        self.file("runner.yaml", text)
    }
    fn payload(self, text: &str) -> Self {
        self.file("payload.yaml", text.to_owned())
    }
    fn bench(self, text: &str) -> Self {
        self.file("bench.yaml", text.to_owned())
    }
    fn args(mut self, args: &[&'static str]) -> Self {
        self.args = args.to_vec();
        self
    }
    fn env(mut self, name: &'static str, value: &'static str) -> Self {
        self.env.push((name, value));
        self
    }
    fn not(mut self, text: &'static str) -> Self {
        self.not = Some(text);
        self
    }
}

const LOCAL: &str = "type: local\nbackend: {root: '{dir}/work', kill_grace_ms: 200}";
const MOCK: &str = "type: local_mock";
const ONPREM: &str = "type: onprem\nbackend: {base_url: 'http://127.0.0.1:9'}";
const EC2: &str = "type: ec2\nbackend: {region: us-east-1, image_id: ami-12345678, instance_type: t3.micro, bucket: b}";
const EKS: &str = "type: eks\nbackend: {namespace: tests, image: busybox}";
const WORKER: &str = "queue: {path: '{dir}/q.sqlite3'}\nrunners:\n  - {type: local, artifacts_dir: '{dir}/art', backend: {root: '{dir}/work'}}\n  - {type: local_mock}\n";

fn submit() -> Vec<&'static str> {
    vec![
        "submit",
        "--config",
        "worker.yaml",
        "--runner",
        "local",
        "--bench",
        "bench.yaml",
        "--payload",
        "payload.yaml",
    ]
}

fn deep(n: usize) -> String {
    format!("type: local\nbackend: {}{}\n", "[".repeat(n), "]".repeat(n))
}

fn laughs() -> String {
    let mut text = String::from("type: local\na: &a [x,x,x,x,x,x,x,x,x]\n");
    for i in 1u8..9 {
        let (name, prev) = ((b'a' + i) as char, (b'a' + i - 1) as char);
        text += &format!(
            "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        );
    }
    text
}

fn cases() -> Vec<Case> {
    let submit_args = |extra: &[&'static str]| {
        let mut a = submit();
        a.extend_from_slice(extra);
        a
    };
    vec![
        // ---- runner config: common keys ----
        case("runner timeout 0", 4, "timeout_seconds").runner("type: local\ntimeout_seconds: 0"),
        case("runner timeout negative", 4, "timeout_seconds").runner("type: local\ntimeout_seconds: -5"),
        case("runner timeout above the cap", 4, "timeout_seconds").runner("type: local\ntimeout_seconds: 99999999999"),
        case("runner retries above the cap", 4, "retries").runner("type: local\nretries: 1000"),
        case("runner misspelt key once", 4, "`retires`").runner("type: local\nretires: 2").not("retires.retires"),
        case("runner phase misspelt", 4, "phase_timeouts.provison").runner("type: local\nphase_timeouts: {provison: 5}"),
        case("runner phase 0", 4, "phase_timeouts.run_test").runner("type: local\nphase_timeouts: {run_test: 0}"),
        case("runner phase above the cap", 4, "phase_timeouts.teardown").runner("type: local\nphase_timeouts: {teardown: 99999999999}"),
        case("runner type empty", 4, "type").runner("type: ''"),
        case("runner type unknown", 4, "nope").runner("type: nope"),
        case("runner max_concurrency 0", 4, "max_concurrency").runner("type: local\nmax_concurrency: 0"),
        case("runner max_concurrency above the cap", 4, "max_concurrency").runner("type: local\nmax_concurrency: 99999999"),
        case("runner artifacts_dir empty", 4, "artifacts_dir").file("runner.yaml", "type: local\nartifacts_dir: ''\n"),
        case("runner is a list", 4, "runner.yaml").file("runner.yaml", "- type: local\n"),
        case("runner syntax", 4, "line").file("runner.yaml", "type: [local\n"),
        case("runner missing file", 4, "runner.yaml").args(&["run", "--config", "{dir}/runner.yaml", "--bench", "bench.yaml", "--payload", "payload.yaml"]).file("runner.yaml", "").file("gone", ""),
        case("runner is a directory", 4, "adir").args(&["run", "--config", "adir", "--bench", "bench.yaml", "--payload", "payload.yaml"]),
        case("runner invalid utf-8", 4, "byte 13").file("runner.yaml", b"type: local\n#\xff\xfe\n".to_vec()),
        case("runner nested 100,000 deep", 4, "nested").file("runner.yaml", deep(100_000)),
        case("runner larger than the limit", 4, "limit").file("runner.yaml", format!("type: local\n#{}\n", "x".repeat(1_100_000))),
        case("runner billion laughs", 4, "runner.yaml").file("runner.yaml", laughs()),
        case("runner two documents", 4, "runner.yaml").file("runner.yaml", "type: local\n---\ntype: local\n"),
        // ---- local backend ----
        case("local backend is a list", 4, "backend").runner("type: local\nbackend: [a, b]"),
        case("local backend unknown key", 4, "backend.rooot").runner("type: local\nbackend: {rooot: /tmp}"),
        case("local kill_grace_ms huge", 4, "backend.kill_grace_ms").runner("type: local\nbackend: {kill_grace_ms: 18446744073709551615}"),
        case("local payload backend unknown key", 4, "payload.backend").runner(LOCAL).payload("name: p\ncommand: ['true']\nbackend: {bogus: 1}\n"),
        case("local bench backend unknown key", 4, "bench.backend").runner(LOCAL).bench("name: b\nbackend: {bogus: 1}\n"),
        // ---- bench ----
        case("bench unknown key", 4, "bench.yaml").runner(LOCAL).bench("name: b\nlables: {}\n"),
        case("bench runner disagrees", 4, "bench.runner").runner(LOCAL).bench("name: b\nrunner: ec2\n"),
        case("bench labels not a map", 4, "labels").runner(LOCAL).bench("name: b\nlabels: [a]\n"),
        case("bench nested deep", 4, "nested").runner(LOCAL).bench(&format!("name: b\nlabels: {}{}\n", "[".repeat(200_000), "]".repeat(200_000))),
        case("bench missing", 4, "nobench.yaml").runner(LOCAL).args(&["run", "--config", "runner.yaml", "--bench", "nobench.yaml", "--payload", "payload.yaml"]),
        // ---- payload: common fields ----
        case("payload timeout 0", 4, "payload.timeout_seconds").runner(LOCAL).payload("name: p\ncommand: ['true']\ntimeout_seconds: 0\n"),
        case("payload timeout above the cap", 4, "payload.timeout_seconds").runner(LOCAL).payload("name: p\ncommand: ['true']\ntimeout_seconds: 99999999999\n"),
        case("artifact parent", 4, "payload.artifacts[0]").runner(LOCAL).payload("name: p\ncommand: ['true']\nartifacts: ['../*']\n"),
        case("artifact absolute", 4, "payload.artifacts[0]").runner(LOCAL).payload("name: p\ncommand: ['true']\nartifacts: [/etc/passwd]\n"),
        case("artifact climbs out", 4, "payload.artifacts[1]").runner(LOCAL).payload("name: p\ncommand: ['true']\nartifacts: [ok.txt, a/../../x]\n"),
        case("artifact backslash", 4, "payload.artifacts[0]").runner(LOCAL).payload("name: p\ncommand: ['true']\nartifacts: ['..\\x']\n"),
        case("artifact unclosed class", 4, "payload.artifacts[0]").runner(LOCAL).payload("name: p\ncommand: ['true']\nartifacts: ['[abc']\n"),
        case("artifact empty", 4, "payload.artifacts[0]").runner(LOCAL).payload("name: p\ncommand: ['true']\nartifacts: ['']\n"),
        case("command empty", 4, "payload.command").runner(LOCAL).payload("name: p\ncommand: []\n"),
        case("command with NUL", 4, "payload.command[1]").runner(LOCAL).payload("name: p\ncommand: [echo, \"a\\0b\"]\n").not("transient"),
        case("program with NUL", 4, "payload.command[0]").runner(LOCAL).payload("name: p\ncommand: [\"ec\\0ho\"]\n"),
        case("env name with NUL", 4, "payload.env").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {\"A\\0B\": x}\n"),
        case("env value with NUL", 4, "payload.env.A").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {A: \"x\\0y\"}\n"),
        case("env name with =", 4, "payload.env").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {\"A=B\": x}\n"),
        case("env name empty", 4, "payload.env").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {\"\": x}\n"),
        case("working_dir missing", 4, "payload.working_dir").runner(LOCAL).payload("name: p\ncommand: ['true']\nworking_dir: nowhere\n").not("command[0]"),
        case("working_dir escapes", 4, "payload.working_dir").runner(LOCAL).payload("name: p\ncommand: ['true']\nworking_dir: ../..\n"),
        case("program missing", 4, "payload.command[0]").runner(LOCAL).payload("name: p\ncommand: [no-such-program-xyz]\n"),
        case("program not executable", 4, "payload.command[0]").runner(LOCAL).payload("name: p\ncommand: ['{dir}/plain.txt']\n").file("plain.txt", "hello\n"),
        case("payload misspelt key", 4, "comand").runner(LOCAL).payload("name: p\ncomand: ['true']\n"),
        case("payload shell not a bool", 4, "shell").runner(LOCAL).payload("name: p\ncommand: ['true']\nshell: maybe\n"),
        case("payload is a scalar", 4, "payload.yaml").runner(LOCAL).payload("just a string\n"),
        case("payload package missing", 4, "payload.package").runner(LOCAL).payload("name: p\ncommand: ['true']\npackage: '{dir}/no-such-package'\n"),
        case("payload invalid utf-8", 4, "byte").runner(LOCAL).file("payload.yaml", b"name: \xc3\x28\ncommand: ['true']\n".to_vec()),
        // ---- mock ----
        case("mock log_lines huge", 4, "payload.backend.log_lines").runner(MOCK).payload("name: p\nbackend: {log_lines: 4294967295}\n"),
        case("mock payload unknown key", 4, "payload.backend").runner(MOCK).payload("name: p\nbackend: {bogus: 1}\n"),
        case("mock config unknown key", 4, "backend.bogus").runner("type: local_mock\nbackend: {bogus: 1}"),
        // ---- onprem ----
        case("onprem base_url broken", 4, "backend.base_url").runner("type: onprem\nbackend: {base_url: 'http://[::1'}").env("BENCH_API_TOKEN", "t"),
        case("onprem provision wait huge", 4, "backend.provision_wait_seconds").runner("type: onprem\nbackend: {base_url: 'http://127.0.0.1:9', provision_wait_seconds: 18446744073709551615}").env("BENCH_API_TOKEN", "t"),
        case("onprem unknown key", 4, "backend.bogus").runner("type: onprem\nbackend: {base_url: 'http://127.0.0.1:9', bogus: 1}").env("BENCH_API_TOKEN", "t"),
        case("onprem bench unknown key", 4, "bench.backend").runner(ONPREM).bench("name: b\nbackend: {bogus: 1}\n").env("BENCH_API_TOKEN", "t"),
        // ---- ec2 ----
        case("ec2 unknown key", 4, "backend.bogus").runner("type: ec2\nbackend: {region: us-east-1, bogus: 1}"),
        case("ec2 payload backend unknown key", 4, "payload.backend").runner(EC2).payload("name: p\ncommand: ['true']\nbackend: {bogus: 1}\n"),
        case("ec2 bench backend unknown key", 4, "bench.backend").runner(EC2).bench("name: b\nbackend: {bogus: 1}\n"),
        // ---- eks ----
        case("eks unknown key", 4, "backend.bogus").runner("type: eks\nbackend: {namespace: tests, bogus: 1}"),
        case("eks payload backend unknown key", 4, "payload.backend").runner(EKS).payload("name: p\ncommand: ['true']\nbackend: {bogus: 1}\n"),
        case("eks bench backend unknown key", 4, "bench.backend").runner(EKS).bench("name: b\nbackend: {bogus: 1}\n"),
        // ---- environment ----
        case("env misspelt backend key", 4, "ORCHESTRATOR_RUNNER_BACKEND__ROOOT")
            .args(&["run", "--bench", "bench.yaml", "--payload", "payload.yaml"])
            .env("ORCHESTRATOR_RUNNER_TYPE", "local")
            .env("ORCHESTRATOR_RUNNER_BACKEND__ROOOT", "/tmp"),
        case("env unknown key once", 4, "ORCHESTRATOR_RUNNER_BOGUS")
            .args(&["run", "--bench", "bench.yaml", "--payload", "payload.yaml"])
            .env("ORCHESTRATOR_RUNNER_TYPE", "local")
            .env("ORCHESTRATOR_RUNNER_BOGUS", "1")
            .not("bogus.bogus"),
        // ---- submit and the worker config ----
        case("submit empty runner", 4, "runner").file("worker.yaml", WORKER).args(&["submit", "--config", "worker.yaml", "--runner", "", "--bench", "bench.yaml", "--payload", "payload.yaml"]),
        case("submit empty key", 4, "key").file("worker.yaml", WORKER).args(submit_args(&["--key", ""]).leak()),
        case("submit key with a newline", 4, "key").file("worker.yaml", WORKER).args(submit_args(&["--key", "a\nb"]).leak()),
        case("submit escaping artifact", 4, "payload.artifacts[0]").file("worker.yaml", WORKER).payload("name: p\ncommand: ['true']\nartifacts: ['../*']\n").args(submit().leak()),
        case("submit unknown runner", 4, "nope").file("worker.yaml", WORKER).args(&["submit", "--config", "worker.yaml", "--runner", "nope", "--bench", "bench.yaml", "--payload", "payload.yaml"]),
        case("submit label without =", 4, "label").file("worker.yaml", WORKER).args(submit_args(&["--label", "novalue"]).leak()),
        case("worker config is a list", 4, "worker.yaml").file("worker.yaml", "- a\n").args(submit().leak()),
        case("worker config nested deep", 4, "nested").file("worker.yaml", format!("queue: {}{}\n", "{a: ".repeat(50_000), "}".repeat(50_000))).args(submit().leak()),
        case("worker config BOM and misspelt key", 4, "queeu").file("worker.yaml", "\u{feff}queeu: {}\n").args(submit().leak()),
        case("queue path is a text file", 2, "notadb.txt").file("worker.yaml", "queue: {path: '{dir}/notadb.txt'}\nrunners: [{type: local}]\n").file("notadb.txt", "just some text, long enough to not be a database header at all\n".repeat(20)).args(submit().leak()),
        case("batch entry bad", 4, "entry 2").file("worker.yaml", WORKER).file("batch.yaml", "- {runner: local, bench: bench.yaml, payload: payload.yaml}\n- {runner: local, bench: bench.yaml, payload: {name: p, command: ['true'], timeout_seconds: 0}}\n").args(&["submit", "--config", "worker.yaml", "--batch", "batch.yaml"]),
        case("batch line without bench", 4, "batch.jsonl line 2: missing field `bench`").file("worker.yaml", WORKER).file("batch.jsonl", "{\"runner\": \"local\", \"bench\": \"bench.yaml\", \"payload\": \"payload.yaml\"}\n{\"runner\": \"local\", \"payload\": \"payload.yaml\"}\n").args(&["submit", "--config", "worker.yaml", "--batch", "batch.jsonl"]).not("`.`"),
        case("batch entry without bench", 4, "missing field `bench`").file("worker.yaml", WORKER).file("batch.yaml", "- {runner: local, payload: payload.yaml}\n").args(&["submit", "--config", "worker.yaml", "--batch", "batch.yaml"]).not("`.`"),
        // ---- secrets and the trust boundary ----
        case("submit literal secret", 4, "payload.env.TOK").file("worker.yaml", WORKER).payload("name: p\ncommand: ['true']\nenv: {TOK: {value: hunter2-literal, secret: true}}\n").args(submit().leak()).not("hunter2-literal"),
        case("secret reference with two sources", 4, "payload.env.T.secret").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {T: {secret: {env: A, file: /b}}}\n"),
        case("secret reference not set", 4, "NO_SUCH_SECRET_VAR").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {T: {secret: {env: NO_SUCH_SECRET_VAR}}}\n"),
        case("empty ssm parameter name", 4, "`aws_ssm_parameter` is empty").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {T: {secret: {aws_ssm_parameter: ''}}}\n"),
        case("key on an ssm parameter", 4, "aws_secretsmanager only").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {T: {secret: {aws_ssm_parameter: /x, key: k}}}\n"),
        case("kubernetes secret on local", 4, "payload.env.T.secret").runner(LOCAL).payload("name: p\ncommand: ['true']\nenv: {T: {secret: {kubernetes: {name: s, key: k}}}}\n"),
        case("command not allowed", 4, "allowed.commands").runner("type: local\nbackend: {root: '{dir}/work'}\nallowed: {commands: [pytest]}").payload("name: p\ncommand: [rm, -rf, /]\n"),
        case("env not allowed", 4, "allowed.env").runner("type: local\nbackend: {root: '{dir}/work'}\nallowed: {env: ['TEST_*']}").payload("name: p\ncommand: ['true']\nenv: {LD_PRELOAD: /x.so}\n"),
        case("package outside the roots", 4, "allowed.package_roots").runner("type: local\nbackend: {root: '{dir}/work'}\nallowed: {package_roots: [/srv/packages]}").payload("name: p\ncommand: ['true']\npackage: /etc\n"),
        case("submit package from the worker's disk", 4, "allowed.package_roots").file("worker.yaml", WORKER).payload("name: p\ncommand: ['true']\npackage: /etc\n").args(submit().leak()),
        case("allowed misspelt", 4, "allowed.comands").runner("type: local\nallowed: {comands: [x]}"),
        // ---- command line ----
        case("missing required flag", 4, "--payload").args(&["run", "--bench", "bench.yaml"]),
        case("unknown flag", 4, "--bogus").args(&["run", "--bogus"]),
        case("negative concurrency", 4, "concurrency").file("worker.yaml", WORKER).args(&["serve", "--config", "worker.yaml", "--concurrency", "-1"]),
        case("bad wait timeout", 4, "timeout").file("worker.yaml", WORKER).args(submit_args(&["--wait", "--timeout", "soon"]).leak()),
    ]
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let work = dir.join("work");
    if let Ok(entries) = std::fs::read_dir(&work) {
        for e in entries.flatten() {
            found.push(format!("work dir {}", e.path().display()));
        }
    }
    let needle = dir.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if name.to_str().is_none_or(|s| s.parse::<u32>().is_err()) {
            continue;
        }
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cwd.starts_with(dir) || String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(format!("process {:?}", String::from_utf8_lossy(&cmdline)));
        }
    }
    found
}

#[test]
fn every_bad_input_is_refused_naming_the_field() {
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let defaults: [(&str, String); 3] = [
            (
                "runner.yaml",
                format!("{}\nartifacts_dir: '{d}/art'\n", LOCAL),
            ),
            ("bench.yaml", "name: b\n".into()),
            ("payload.yaml", "name: p\ncommand: ['true']\n".into()),
        ];
        for (name, text) in &defaults {
            std::fs::write(dir.path().join(name), text.replace("{dir}", &d)).unwrap();
        }
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        for (name, bytes) in &case.files {
            let bytes = match std::str::from_utf8(bytes) {
                Ok(text) => text.replace("{dir}", &d).into_bytes(),
                Err(_) => bytes.clone(),
            };
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        if case.files.iter().any(|(n, _)| *n == "gone") {
            std::fs::remove_file(dir.path().join("runner.yaml")).unwrap();
        }
        let args: Vec<String> = if case.args.is_empty() {
            [
                "run",
                "--config",
                "runner.yaml",
                "--bench",
                "bench.yaml",
                "--payload",
                "payload.yaml",
            ]
            .map(String::from)
            .to_vec()
        } else {
            case.args.iter().map(|a| a.replace("{dir}", &d)).collect()
        };
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars() {
            if k.starts_with("ORCHESTRATOR_") || k.starts_with("RUNNER_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &case.env {
            cmd.env(k, v.replace("{dir}", &d));
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        let took = started.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut wrong = Vec::new();
        if out.status.code() != Some(case.code) {
            wrong.push(format!(
                "exit {:?}, expected {}",
                out.status.code(),
                case.code
            ));
        }
        if !text.contains(case.needle) {
            wrong.push(format!("does not name `{}`", case.needle));
        }
        if let Some(not) = case.not
            && text.contains(not)
        {
            wrong.push(format!("contains `{not}`"));
        }
        if text.contains("panicked") {
            wrong.push("panicked".into());
        }
        if took > Duration::from_secs(2) {
            wrong.push(format!("took {took:?}"));
        }
        let left = leftovers(dir.path());
        if !left.is_empty() {
            wrong.push(format!("left {left:?}"));
        }
        if !wrong.is_empty() {
            let shown: String = text.chars().take(400).collect();
            failures.push(format!(
                "{}: {}\n    output: {shown}",
                case.name,
                wrong.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
