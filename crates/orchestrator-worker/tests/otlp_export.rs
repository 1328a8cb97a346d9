//! The `orchestrator` binary exports its spans over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and sends nothing when it is not.
//! The collector is an in-process HTTP server on 127.0.0.1 that keeps what
//! is posted to `/v1/traces`.

#![cfg(feature = "mock")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

type Posts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A collector that keeps `(content-type, body)` of each POST to /v1/traces.
async fn collector() -> (SocketAddr, Posts) {
    let posts: Posts = Arc::default();
    let kept = posts.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let kept = kept.clone();
            async move {
                let kind = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                kept.lock().unwrap().push((kind, body.to_vec()));
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

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn run_mock(dir: &std::path::Path, otel: Option<SocketAddr>) -> std::process::Output {
    std::fs::write(
        dir.join("runner.yaml"),
        format!(
            "type: local_mock\nartifacts_dir: {}\n",
            dir.join("art").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("bench.yaml"), "name: b\n").unwrap();
    std::fs::write(dir.join("payload.yaml"), "name: traced\ncommand: [mock]\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--bench",
        "bench.yaml",
        "--payload",
        "payload.yaml",
        "--config",
        "runner.yaml",
    ])
    .current_dir(dir)
    .env("RUST_LOG", "info")
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .env_remove("OTEL_SDK_DISABLED");
    if let Some(addr) = otel {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci-test");
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_only_when_the_endpoint_is_set() {
    let (addr, posts) = collector().await;
    let dir = tempfile::tempdir().unwrap();

    let quiet = run_mock(dir.path(), None);
    assert!(
        quiet.status.success(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert!(
        posts.lock().unwrap().is_empty(),
        "nothing is exported without the variables"
    );

    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || run_mock(&dir, Some(addr))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let posts = posts.lock().unwrap().clone();
    assert!(
        !posts.is_empty(),
        "the spans were posted before the process exited"
    );
    let body: Vec<u8> = posts.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(
        posts
            .iter()
            .all(|(kind, _)| kind == "application/x-protobuf"),
        "{:?}",
        posts.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    for name in [
        "orchestrator-worker",
        "deployment.environment",
        "runner.provision",
        "runner.run_test",
        "runner.collect_artifacts",
        "runner.teardown",
        "execution_id",
        "correlation_id",
    ] {
        assert!(contains(&body, name), "{name} is in the exported spans");
    }
}
