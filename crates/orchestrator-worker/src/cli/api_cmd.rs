//! `orchestrator api`: serve the HTTP API and dashboard; `api token add`
//! makes a token.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use runner_core::{CancellationToken, RunnerAdapter};

use super::{CliError, CliResult, MakeFactory, load_worker_config, open_backends};
use crate::api::auth::{Scope, new_token};
use crate::api::{ApiSection, ApiState};
use crate::metrics::Metrics;

/// Arguments of `api`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ApiArgs {
    /// The worker config (YAML): the store, the `api` section, and the
    /// runners submissions are checked against (none: any runner type).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The address to listen on (`127.0.0.1:8080`, `0.0.0.0:8443`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(subcommand)]
    action: Option<ApiAction>,
}

#[derive(Subcommand, Debug)]
enum ApiAction {
    /// Tokens of the API.
    #[command(subcommand)]
    Token(TokenAction),
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Make a token: its salted hash is appended to the tokens file and
    /// the token printed once (keep it; it cannot be shown again).
    Add {
        /// The tokens file (default: the config's `api.tokens_file`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The worker config naming the tokens file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Who holds it (one word): submissions record `api:NAME`.
        #[arg(long)]
        name: String,
        /// Comma list of read, submit, admin.
        #[arg(long, default_value = "read")]
        scopes: String,
    },
}

fn section_of(path: &std::path::Path, config: &crate::config::WorkerConfig) -> ApiSection {
    let base = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    config.api.clone().unwrap_or_default().resolved(base)
}

pub(super) async fn api(args: ApiArgs, make: MakeFactory) -> CliResult {
    match args.action {
        Some(ApiAction::Token(TokenAction::Add {
            file,
            config,
            name,
            scopes,
        })) => token_add(file, config, &name, &scopes),
        None => {
            let config = args
                .config
                .ok_or_else(|| CliError::usage("api needs --config WORKER.yaml"))?;
            serve(&config, &args.listen, make).await
        }
    }
}

fn token_add(
    file: Option<PathBuf>,
    config: Option<PathBuf>,
    name: &str,
    scopes: &str,
) -> CliResult {
    let file = match (file, config) {
        (Some(f), _) => f,
        (None, Some(c)) => {
            let worker = load_worker_config(&c, None)?;
            section_of(&c, &worker).tokens_file.ok_or_else(|| {
                CliError::usage(format!("{}: api.tokens_file is not set", c.display()))
            })?
        }
        (None, None) => return Err(CliError::usage("give --file or --config")),
    };
    let scopes = scopes
        .split(',')
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                CliError::usage(format!(
                    "--scopes: unknown scope `{s}` (read, submit, admin)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (line, token) = new_token(name, &scopes).map_err(CliError::usage)?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| CliError::usage(format!("cannot write {}: {e}", file.display())))?;
    writeln!(f, "{line}")
        .map_err(|e| CliError::infra(format!("cannot write {}: {e}", file.display())))?;
    eprintln!(
        "» token `{}` for {name} added to {} (shown once)",
        line.split(' ').next().unwrap_or(""),
        file.display()
    );
    println!("{token}");
    Ok(0)
}

async fn serve(path: &std::path::Path, listen: &str, make: MakeFactory) -> CliResult {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop.cancel();
        });
    }
    let config = load_worker_config(path, None)?;
    let section = section_of(path, &config);
    let metrics = Metrics::new();
    let factory = make(metrics.clone());
    let mut adapters: BTreeMap<String, Arc<dyn RunnerAdapter>> = BTreeMap::new();
    for runner in &config.runners {
        let adapter = factory
            .create(runner)
            .map_err(|e| CliError::usage(format!("runner `{}`: {e}", runner.runner_type)))?;
        adapters.insert(runner.runner_type.clone(), adapter);
    }
    if let Some(tls) = &section.tls {
        crate::api::tls::server_config(tls).map_err(CliError::usage)?;
    }
    let backends = open_backends(&config).await?;
    let state =
        ApiState::new(backends, config, section, adapters, metrics).map_err(CliError::usage)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::infra(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::infra(format!("listener address: {e}")))?;
    let scheme = if state.section.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, "API and dashboard listening");
    eprintln!("» listening on {scheme}://{addr}");
    crate::api::serve(Arc::new(state), listener, stop)
        .await
        .map_err(CliError::infra)?;
    Ok(0)
}
