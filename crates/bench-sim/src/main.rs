//! `bench-sim --config benches.yaml [--listen 127.0.0.1:8080]`: serve the
//! bench-platform API until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A simulator of the bench-platform API.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Benches, tokens and faults (YAML; see examples/onprem/benches.yaml).
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on (loopback by default; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench-sim: cannot read {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let config = match bench_sim::SimConfig::from_yaml(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let benches = config.benches.len();
    let handle = match bench_sim::serve(config, args.listen).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("bench-sim: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    println!(
        "bench-sim: {benches} benches, listening on {}",
        handle.base_url()
    );
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
