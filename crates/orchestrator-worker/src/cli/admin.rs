//! Operator commands: `reap`, `migrate`, `workers`, `backends`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runner_core::{RunnerAdapter, RunnerConfig};

use super::{CliError, CliResult, EXIT_INFRA, MakeFactory, load_worker_config, open_backends};
use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::reaper::{LOCK, ReapOptions, reap as reap_now};
use crate::serve::{hostname, new_worker_id};
use crate::store::{SqliteStore, Store, WorkerBeat};

/// Arguments of `reap`.
#[derive(clap::Args, Debug)]
pub struct ReapArgs {
    /// The worker config (YAML): its store, and its runners' configs.
    #[arg(long, required_unless_present = "store")]
    config: Option<PathBuf>,
    /// A local store instead (the one `orchestrator run` journals into).
    #[arg(long, conflicts_with = "config")]
    store: Option<PathBuf>,
    /// Runner configs to reap with (with `--store`; added to the worker
    /// config's runners otherwise).
    #[arg(long = "runner-config")]
    runner_configs: Vec<PathBuf>,
    /// List only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Override `worker.stale_after_seconds`.
    #[arg(long)]
    stale_after: Option<u64>,
    /// Override `worker.leak_grace_seconds`.
    #[arg(long)]
    leak_grace: Option<u64>,
}

pub(super) async fn reap(args: ReapArgs, make: MakeFactory) -> CliResult {
    let (config, store): (WorkerConfig, Arc<dyn Store>) = match (&args.config, &args.store) {
        (Some(path), _) => {
            let config = load_worker_config(path, None)?;
            let backends = open_backends(&config).await?;
            (config, backends.store)
        }
        (None, Some(path)) => (
            WorkerConfig::default(),
            Arc::new(SqliteStore::open(path)?) as Arc<dyn Store>,
        ),
        (None, None) => return Err(CliError::usage("reap needs --config or --store")),
    };
    let mut runners = config.runners.clone();
    for path in &args.runner_configs {
        runners
            .push(RunnerConfig::from_yaml_file(path).map_err(|e| CliError::usage(e.to_string()))?);
    }
    let factory = make(Metrics::new());
    let mut adapters: BTreeMap<String, Arc<dyn RunnerAdapter>> = BTreeMap::new();
    for runner in &runners {
        let adapter = factory
            .create(runner)
            .map_err(|e| CliError::usage(e.to_string()))?;
        adapters.insert(runner.runner_type.clone(), adapter);
    }
    let mut worker = config.worker.clone();
    if let Some(s) = args.stale_after {
        worker.stale_after_seconds = s.max(1);
    }
    if let Some(g) = args.leak_grace {
        worker.leak_grace_seconds = g;
    }
    let id = new_worker_id("reap-");
    let ttl = Duration::from_secs(600);
    if !args.dry_run {
        if !store.try_lock(LOCK, &id, ttl).await? {
            return Err(CliError::infra(
                "another reaper holds the store's reaper lock; try again later",
            ));
        }
        // Registered while it works: entries it takes over have a live owner.
        store
            .worker_heartbeat(&WorkerBeat {
                id: id.clone(),
                host: hostname(),
                pid: std::process::id(),
                runners: adapters.keys().cloned().collect(),
                in_flight: 0,
            })
            .await?;
    }
    let report = reap_now(
        &*store,
        &adapters,
        &Metrics::new(),
        ReapOptions::from_worker(&worker, &id, args.dry_run),
    )
    .await;
    if !args.dry_run {
        let _ = store.worker_gone(&id).await;
        let _ = store.unlock(LOCK, &id).await;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| CliError::infra(e.to_string()))?
    );
    Ok(if report.errors.is_empty() {
        0
    } else {
        EXIT_INFRA
    })
}

/// Arguments of commands that only need the store.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// The worker config (YAML) naming the store.
    #[arg(long)]
    config: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn migrate(args: StoreArgs) -> CliResult {
    let config = load_worker_config(&args.config, None)?;
    // Opening applies the migrations (and refuses a newer schema).
    let backends = open_backends(&config).await?;
    backends.store.ping().await?;
    println!("the {} store is up to date", backends.store.kind());
    Ok(0)
}

pub(super) async fn workers(args: StoreArgs) -> CliResult {
    let config = load_worker_config(&args.config, None)?;
    let backends = open_backends(&config).await?;
    let workers = backends.store.workers(config.worker.stale_after()).await?;
    if args.json {
        let doc = serde_json::json!({"version": 1, "workers": workers});
        println!("{doc}");
        return Ok(0);
    }
    println!(
        "{:<40} {:>8} {:>9} {:>6}  RUNNERS",
        "WORKER", "STATE", "BEAT AGO", "BUSY"
    );
    for w in workers {
        println!(
            "{:<40} {:>8} {:>8.1}s {:>6}  {}",
            w.beat.id,
            if w.alive { "alive" } else { "silent" },
            w.heartbeat_age_ms as f64 / 1000.0,
            w.beat.in_flight,
            w.beat.runners.join(",")
        );
    }
    Ok(0)
}

pub(super) fn backends(make: MakeFactory) -> CliResult {
    let factory = make(Metrics::new());
    println!(
        "{:<12} {:<9} {:<9} {:<11} {:<12} MAX CONCURRENCY",
        "TYPE", "WARM POOL", "LIVE LOGS", "IDEMPOTENT", "LEAK LISTING"
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for runner_type in factory.known_types() {
        match factory.create(&RunnerConfig::new(&runner_type)) {
            Ok(adapter) => {
                let c = adapter.capabilities();
                println!(
                    "{:<12} {:<9} {:<9} {:<11} {:<12} {}",
                    runner_type,
                    yes(c.warm_pool),
                    yes(c.live_logs),
                    yes(c.idempotent_teardown),
                    yes(c.leak_listing),
                    c.max_concurrency
                        .map_or_else(|| "-".to_owned(), |n| n.to_string())
                );
            }
            Err(e) => println!("{runner_type:<12} (needs config: {e})"),
        }
    }
    Ok(0)
}
