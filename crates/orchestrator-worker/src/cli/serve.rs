//! `orchestrator serve`: consume the queue until SIGTERM or SIGINT, then drain.

use std::path::PathBuf;

use runner_core::CancellationToken;

use super::{CliError, CliResult, MakeFactory, load_worker_config, open_backends};
use crate::metrics::Metrics;
use crate::serve::Worker;

/// Arguments of `serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The worker config (YAML).
    #[arg(long)]
    config: PathBuf,
    /// Serve Prometheus metrics at this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Override `worker.concurrency`.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: Option<u32>,
    /// Take tasks from this SQS queue (overrides `queue.sqs.url`).
    #[arg(long, env = "ORCHESTRATOR_QUEUE_URL")]
    queue_url: Option<String>,
}

pub(super) async fn serve(args: ServeArgs, make: MakeFactory) -> CliResult {
    // Signals first: a SIGTERM during start-up drains (nothing) instead of
    // killing the process.
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            }
            stop.cancel();
        });
    }
    let mut config = load_worker_config(&args.config, args.queue_url)?;
    if let Some(n) = args.concurrency {
        config.worker.concurrency = usize::try_from(n).unwrap_or(1);
    }
    let factory = make(Metrics::new());
    let backends = open_backends(&config).await?;
    let worker = Worker::with_backends(config, &factory, backends).map_err(CliError::usage)?;
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::infra(format!("cannot listen on {addr}: {e}")))?;
        let metrics = worker.metrics().clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.encode(),
                    )
                }
            }),
        );
        tracing::info!(%addr, "metrics at /metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    worker.serve(stop).await?;
    Ok(0)
}
