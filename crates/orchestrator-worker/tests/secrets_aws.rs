//! Secret references to AWS (issue 19), on moto: Secrets Manager secrets
//! (a string, one key of a JSON value) and an SSM SecureString parameter
//! resolve with the worker's credentials for a real run, reach the test
//! and never its output; a missing one is an error naming the variable and
//! the source. And an EC2 attempt whose worker is killed while its command
//! runs leaves no secret object in S3 once the reaper has run.

#![cfg(all(feature = "ec2", feature = "aws-secrets"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ec2_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sha256_hex(text: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The orchestrator with moto as its AWS, and no other AWS settings.
fn orchestrator(moto: &test_emulators::Moto, dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", dir.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
        .envs(moto.env())
        .kill_on_drop(true);
    cmd
}

async fn output(cmd: &mut tokio::process::Command) -> (i32, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the command ends within two minutes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const SM_TOKEN: &str = "sm-Token-Value-4c1d+/=";
const SM_USER: &str = "db-user-Value-77e2";
const SSM_PARAM: &str = "ssm-Param-Value-9b03";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_references_resolve_with_the_workers_credentials() {
    let moto = test_emulators::Moto::start().unwrap();
    let sdk = test_emulators::aws::sdk_config(&moto.endpoint()).await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    sm.create_secret()
        .name("ci/token")
        .secret_string(SM_TOKEN)
        .send()
        .await
        .unwrap();
    sm.create_secret()
        .name("ci/db")
        .secret_string(format!(r#"{{"username": "{SM_USER}", "port": 5432}}"#))
        .send()
        .await
        .unwrap();
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name("/ci/param")
        .value(SSM_PARAM)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("runner.yaml"),
        format!(
            "type: local\nartifacts_dir: {}\nbackend:\n  root: {}\n",
            d.join("artifacts").display(),
            d.join("work").display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("bench.yaml"), "name: here\nbackend: {}\n").unwrap();
    // The test hashes what it got (so no value is in the payload) and
    // prints the values, which the log must show masked.
    let script = r#"printf %s "$A" | sha256sum > a.sha; printf %s "$B" | sha256sum > b.sha; printf %s "$C" | sha256sum > c.sha; echo "a=$A b=$B c=$C port=$D""#;
    std::fs::write(
        d.join("payload.yaml"),
        format!(
            "name: aws-refs\ncommand: [sh, -c, '{script}']\nenv:\n  A: {{secret: {{aws_secretsmanager: ci/token}}}}\n  B: {{secret: {{aws_secretsmanager: ci/db, key: username}}}}\n  C: {{secret: {{aws_ssm_parameter: /ci/param}}}}\n  D: {{secret: {{aws_secretsmanager: ci/db, key: port}}}}\nartifacts: ['*.sha']\n"
        ),
    )
    .unwrap();
    let (code, text) = output(
        orchestrator(&moto, d)
            .arg("run")
            .arg("--bench")
            .arg(d.join("bench.yaml"))
            .arg("--payload")
            .arg(d.join("payload.yaml"))
            .arg("--config")
            .arg(d.join("runner.yaml"))
            .arg("--store")
            .arg(d.join("runs.sqlite3")),
    )
    .await;
    assert_eq!(code, 0, "{text}");
    for value in [SM_TOKEN, SM_USER, SSM_PARAM] {
        assert!(!text.contains(value), "a value shows: {text}");
    }
    assert!(text.contains("a=*** b=*** c=***"), "{text}");
    // A non-string JSON value arrives as its text.
    assert!(text.contains("port=***"), "{text}");
    let mut hashes = Vec::new();
    for entry in walk(&d.join("artifacts")) {
        if entry.extension().is_some_and(|e| e == "sha") {
            let name = entry.file_name().unwrap().to_string_lossy().to_string();
            hashes.push((name, std::fs::read_to_string(&entry).unwrap()));
        }
    }
    hashes.sort();
    let want = [
        ("a.sha", SM_TOKEN),
        ("b.sha", SM_USER),
        ("c.sha", SSM_PARAM),
    ];
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    for ((name, got), (want_name, value)) in hashes.iter().zip(want) {
        assert_eq!(name, want_name);
        assert!(got.starts_with(&sha256_hex(value)), "{name}: {got}");
    }
    // Nothing on disk holds a value: the store, the logs, the artifacts.
    for file in walk(d) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let body = String::from_utf8_lossy(&bytes);
        for value in [SM_TOKEN, SM_USER, SSM_PARAM] {
            assert!(!body.contains(value), "{} holds a value", file.display());
        }
    }

    // A missing secret and a missing key: permanent, named, exit 4.
    for (reference, source) in [
        (
            "{aws_secretsmanager: ci/missing}",
            "aws_secretsmanager ci/missing",
        ),
        (
            "{aws_ssm_parameter: /ci/missing}",
            "aws_ssm_parameter /ci/missing",
        ),
        ("{aws_secretsmanager: ci/db, key: nokey}", "ci/db"),
    ] {
        std::fs::write(
            d.join("missing.yaml"),
            format!("name: missing\ncommand: ['true']\nenv:\n  GONE: {{secret: {reference}}}\n"),
        )
        .unwrap();
        let (code, text) = output(
            orchestrator(&moto, d)
                .arg("run")
                .arg("--bench")
                .arg(d.join("bench.yaml"))
                .arg("--payload")
                .arg(d.join("missing.yaml"))
                .arg("--config")
                .arg(d.join("runner.yaml"))
                .arg("--store")
                .arg(d.join("runs.sqlite3")),
        )
        .await;
        assert_eq!(code, 4, "{reference}: {text}");
        assert!(text.contains("payload.env.GONE"), "{text}");
        assert!(text.contains(source), "{text}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

const CRASH_TOKEN: &str = "crash-Token-Value-0f3a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_ec2_attempt_leaves_no_secret_in_s3_after_the_reaper() {
    let emu = ec2_common::start("crash").await;
    let (moto, sim, ec2, image) = (&emu.moto, &emu.sim, &emu.ec2, &emu.image);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut runner = std::fs::read_to_string(root().join("examples/ec2/runner.yaml")).unwrap();
    runner = runner
        .replace("bucket: my-test-artifacts", "bucket: crash")
        .replace("image_id: ami-0123456789abcdef0", &format!("image_id: {image}"))
        .replace("owner: my-ci-farm", "owner: crash-test\n  force_path_style: true\n  poll_initial_ms: 50\n  poll_max_ms: 250\n  live_log_interval_seconds: 1");
    std::fs::write(d.join("runner.yaml"), runner).unwrap();
    std::fs::write(d.join("bench.yaml"), "name: an-instance\nbackend: {}\n").unwrap();
    std::fs::write(
        d.join("payload.yaml"),
        "name: long\ncommand: [sh, -c, 'echo started; sleep 60']\nenv:\n  TOKEN: {secret: {env: CRASH_TOKEN_SOURCE}}\n",
    )
    .unwrap();
    let store = d.join("runs.sqlite3");
    let mut run = orchestrator(moto, d);
    run.arg("run")
        .arg("--bench")
        .arg(d.join("bench.yaml"))
        .arg("--payload")
        .arg(d.join("payload.yaml"))
        .arg("--config")
        .arg(d.join("runner.yaml"))
        .arg("--store")
        .arg(&store)
        .env("AWS_ENDPOINT_URL_SSM", sim.endpoint())
        .env("CRASH_TOKEN_SOURCE", CRASH_TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = run.spawn().unwrap();

    // The command has started once its live output reached S3.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let listed = emu.keys("crash").await;
        if listed.iter().any(|k| k.ends_with("output.log")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the command never started: {listed:?}"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The worker dies: no teardown of its own.
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // The reaper tears down what the dead run left.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, text) = output(
            orchestrator(moto, d)
                .arg("reap")
                .arg("--store")
                .arg(&store)
                .arg("--runner-config")
                .arg(d.join("runner.yaml"))
                .arg("--stale-after")
                .arg("1")
                .arg("--leak-grace")
                .arg("0"),
        )
        .await;
        assert!(code == 0, "{text}");
        let states: Vec<String> = ec2
            .describe_instances()
            .send()
            .await
            .unwrap()
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
            })
            .collect();
        if states
            .iter()
            .all(|s| s == "terminated" || s == "shutting-down")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reaper never tore the instance down: {states:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = emu.keys("crash").await;
    assert!(
        !listed.iter().any(|k| k.ends_with("env.sh")),
        "a secret object is left: {listed:?}"
    );
    for key in &listed {
        let body = emu.body("crash", key).await;
        assert!(
            !String::from_utf8_lossy(&body).contains(CRASH_TOKEN),
            "{key} holds the secret"
        );
    }
    // The store holds no value either.
    let bytes = std::fs::read(&store).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains(CRASH_TOKEN));
}
