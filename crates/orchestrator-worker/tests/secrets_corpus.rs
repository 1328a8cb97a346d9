//! A corpus of secrets through every backend that runs a real program on
//! its emulator (issue 19): local, container (Podman) and ec2 (moto + the
//! SSM agent emulator). The test prints each secret in the forms it leaks
//! in: a single line, a multi-line PEM, split across the 16 KiB line cut,
//! base64 and URL-encoded, on stdout and stderr, and writes it into
//! artifacts at the edges of the common chunk sizes (4 KiB to 1 MiB).
//! Afterwards no value may appear in the command's output (the live log),
//! any file the run left (store, logs, artifacts, JUnit), any span the
//! worker exported over OTLP, or (ec2) any object in the bucket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "ec2")]
mod ec2_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// Unreserved characters and `/+=`, so its URL-encoded form differs.
const SINGLE: &str = "c0rpus-Secret/Value+1=2x";
const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDu\n-----END PRIVATE KEY-----";

/// Every form that must never show.
fn forms() -> Vec<String> {
    let mut out = vec![
        SINGLE.to_owned(),
        // What follows the 16 KiB cut: the test puts the secret's first
        // four bytes before it.
        SINGLE[4..].to_owned(),
        base64::engine::general_purpose::STANDARD.encode(SINGLE),
        SINGLE
            .replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D"),
    ];
    // The PEM's key lines (its markers are not secret on their own).
    out.extend(
        PEM.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned),
    );
    out
}

/// The test: `dir` is where its artifacts go (relative to the working
/// directory, or the container's /artifacts).
fn script(dir: &str) -> String {
    format!(
        r#"D={dir}; mkdir -p "$D"
echo "single: $S"
printf '%s\n' "$P"
head -c 16380 /dev/zero | tr '\0' x; printf '%s\n' "$S"
printf '%s' "$S" | base64
printf '%s' "$S" | sed 's|/|%2F|g; s|+|%2B|g; s|=|%3D|g'; echo
echo "stderr: $S" >&2
for n in 4096 8192 16384 32768 65536 131072 1048576; do {{ head -c $((n-5)) /dev/zero | tr '\0' y; printf '%s' "$S"; }} > "$D/at-$n.bin"; done
{{ echo pem:; printf '%s\n' "$P"; printf '%s' "$S" | base64; }} > "$D/report.txt"
echo done
"#
    )
}

fn payload(dir: &str, glob: &str) -> String {
    let yaml_env = |name: &str, value: &str| {
        format!(
            "  {name}: {{value: {}, secret: true}}\n",
            serde_json::to_string(value).unwrap()
        )
    };
    format!(
        "name: corpus\ncommand: [sh, -c, {}]\ntimeout_seconds: 120\nenv:\n{}{}artifacts: [{}]\n",
        serde_json::to_string(&script(dir)).unwrap(),
        yaml_env("S", SINGLE),
        yaml_env("P", PEM),
        serde_json::to_string(glob).unwrap(),
    )
}

type Posts = Arc<Mutex<Vec<Vec<u8>>>>;

/// An OTLP/HTTP collector keeping every body posted.
async fn collector() -> (SocketAddr, Posts) {
    let posts: Posts = Arc::default();
    let kept = posts.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, posts)
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

/// Where a value showed, if anywhere.
fn leaks(what: &str, bytes: &[u8]) -> Vec<String> {
    forms()
        .iter()
        .filter_map(|f| {
            let at = bytes.windows(f.len()).position(|w| w == f.as_bytes())?;
            let context = String::from_utf8_lossy(&bytes[at.saturating_sub(160)..at]);
            Some(format!("{what} holds {f:?} after {context:?}"))
        })
        .collect()
}

/// Run the corpus with `runner_yaml` in `dir`; return every leak found in
/// the output, the files under `dir` and the exported spans, after
/// checking the run passed and kept its artifacts.
async fn run_corpus(
    inputs: &Path,
    dir: &Path,
    runner_yaml: &str,
    artifacts_in: &str,
    glob: &str,
    env: Vec<(String, String)>,
    remote_artifacts: bool,
) -> Vec<String> {
    // The inputs hold the literal values; everything under `dir` is output.
    std::fs::write(inputs.join("runner.yaml"), runner_yaml).unwrap();
    std::fs::write(
        inputs.join("bench.yaml"),
        "name: corpus-bench\nbackend: {}\n",
    )
    .unwrap();
    std::fs::write(inputs.join("payload.yaml"), payload(artifacts_in, glob)).unwrap();
    let (otlp, posts) = collector().await;
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .arg("--bench")
        .arg(inputs.join("bench.yaml"))
        .arg("--payload")
        .arg(inputs.join("payload.yaml"))
        .arg("--config")
        .arg(inputs.join("runner.yaml"))
        .arg("--store")
        .arg(dir.join("runs.sqlite3"))
        .arg("--junit")
        .arg(dir.join("junit.xml"))
        .env("RUST_LOG", "debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env_remove("OTEL_SDK_DISABLED")
        .envs(env)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("the run ends within four minutes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("done"), "the test ran to its end: {text}");
    assert!(text.contains("single: ***"), "{text}");
    let mut found = leaks("the run's output", text.as_bytes());
    let files = walk(dir);
    let kept: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("corpus"))
        .collect();
    if !remote_artifacts {
        assert!(
            kept.iter().any(|p| p.ends_with("at-1048576.bin")),
            "the artifacts were collected: {files:?}"
        );
    }
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        found.extend(leaks(&file.display().to_string(), &bytes));
    }
    for (i, body) in posts.lock().unwrap().iter().enumerate() {
        found.extend(leaks(&format!("OTLP export {i}"), body));
    }
    found
}

#[cfg(feature = "local")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_leaks_nowhere_on_local() {
    let inputs = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runner = format!(
        "type: local\nartifacts_dir: {}\nbackend:\n  root: {}\n",
        d.join("artifacts").display(),
        d.join("work").display()
    );
    let found = run_corpus(
        inputs.path(),
        d,
        &runner,
        "corpus",
        "corpus/*",
        Vec::new(),
        false,
    )
    .await;
    assert!(found.is_empty(), "{found:#?}");
}

#[cfg(feature = "container")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_leaks_nowhere_in_a_container() {
    let podman = test_emulators::podman::Podman::shared().unwrap();
    let inputs = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runner = format!(
        "type: container\nartifacts_dir: {}\nbackend:\n  endpoint: {}\n  image: {}\n  pull: never\n  user: \"1000:1000\"\n  network: none\n",
        d.join("artifacts").display(),
        podman.endpoint(),
        podman.image(),
    );
    let found = run_corpus(
        inputs.path(),
        d,
        &runner,
        "/artifacts/corpus",
        "corpus/*",
        Vec::new(),
        false,
    )
    .await;
    assert!(found.is_empty(), "{found:#?}");
}

#[cfg(feature = "ec2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_leaks_nowhere_on_ec2_and_in_its_bucket() {
    let emu = ec2_common::start("corpus").await;
    let (moto, sim, image) = (&emu.moto, &emu.sim, &emu.image);
    let inputs = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runner = format!(
        "type: ec2\nartifacts_dir: {}\nbackend:\n  bucket: corpus\n  image_id: {image}\n  instance_type: t3.small\n  owner: corpus\n  force_path_style: true\n  poll_initial_ms: 50\n  poll_max_ms: 250\n  live_log_interval_seconds: 1\n",
        d.join("artifacts").display()
    );
    let mut env = moto.env();
    env.extend([
        ("AWS_ENDPOINT_URL_SSM".to_owned(), sim.endpoint()),
        (
            "AWS_CONFIG_FILE".to_owned(),
            d.join("none").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_owned(),
            d.join("none").display().to_string(),
        ),
    ]);
    let mut found = run_corpus(inputs.path(), d, &runner, "corpus", "corpus/*", env, true).await;
    let keys = emu.keys("corpus").await;
    assert!(
        keys.iter().any(|k| k.ends_with("corpus/at-1048576.bin")),
        "{keys:?}"
    );
    for key in &keys {
        let body = emu.body("corpus", key).await;
        found.extend(leaks(&format!("s3://corpus/{key}"), &body));
    }
    assert!(found.is_empty(), "{found:#?}");
}
