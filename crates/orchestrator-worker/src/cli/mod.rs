//! The `orchestrator` command line as a library: a binary that registers
//! its own backends gets every command with one call,
//!
//! ```no_run
//! use orchestrator_worker::RunnerFactory;
//! fn main() -> std::process::ExitCode {
//!     orchestrator_worker::cli::main(|metrics| {
//!         let factory = RunnerFactory::with_builtins(metrics);
//!         // my_backend::register(factory.registry_mut());
//!         factory
//!     })
//! }
//! ```
//!
//! Exit codes, the same for every command: 0 passed (or done), 1 failed or
//! timed out, 2 infrastructure (an unreachable queue or store included),
//! 3 cancelled, 4 bad input (command line, config, bench, payload).

mod admin;
mod api_cmd;
mod dlq;
mod remote;
mod results_cmds;
mod run;
mod serve;
mod submit_cmd;
mod summary;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::WorkerConfig;
use crate::factory::RunnerFactory;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

/// Exit code: the test passed, or the command did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: the test failed (or timed out).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the infrastructure failed (or the test could not be judged).
pub const EXIT_INFRA: u8 = 2;
/// Exit code: the run was cancelled.
pub const EXIT_CANCELLED: u8 = 3;
/// Exit code: bad command line, config or input file.
pub const EXIT_USAGE: u8 = 4;

/// Builds the factory every command uses (built-ins plus your own).
pub type MakeFactory = Arc<dyn Fn(Metrics) -> RunnerFactory + Send + Sync>;

/// A command that failed: its exit code and what to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The exit code.
    pub code: u8,
    /// The message (printed after `error: `).
    pub message: String,
}

impl CliError {
    /// Bad input: exit 4.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// The infrastructure failed: exit 2.
    pub fn infra(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_INFRA,
            message: message.into(),
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound { .. } | StoreError::Exists { .. } | StoreError::Config(_) => {
                Self::usage(e.to_string())
            }
            other => Self::infra(other.to_string()),
        }
    }
}

type CliResult = Result<u8, CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "orchestrator",
    version,
    about = "Run tests on any backend through one lifecycle"
)]
struct Cli {
    /// Log as JSON lines (to stderr). Filter with RUST_LOG.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one bench + payload now, with live logs and a summary.
    /// Exit code: 0 passed, 1 failed, 2 infrastructure error, 3 cancelled, 4 bad input.
    Run(run::RunArgs),
    /// Consume the queue until SIGTERM or SIGINT, then drain.
    Serve(serve::ServeArgs),
    /// Validate and queue a task (or a batch); with --wait, follow it to its
    /// result and exit with run's codes.
    Submit(submit_cmd::SubmitArgs),
    /// One execution: its state timeline, attempts and result.
    Status(results_cmds::StatusArgs),
    /// Executions, newest first, filtered.
    History(results_cmds::HistoryArgs),
    /// The collected log of an execution.
    Logs(results_cmds::LogsArgs),
    /// The artifacts of an execution (--download DIR verifies sha256).
    Artifacts(results_cmds::ArtifactsArgs),
    /// Cancel an execution (or a correlation id's): removed when queued,
    /// stopped within seconds when running; collect and teardown still run.
    Cancel(results_cmds::CancelArgs),
    /// Check configs, a bench and a payload as submit and provision would,
    /// before anything is queued.
    Validate(results_cmds::ValidateArgs),
    /// Inspect or replay the dead-letter queue.
    Dlq(dlq::DlqArgs),
    /// Tear down handles whose worker died, and leaks backends report.
    Reap(admin::ReapArgs),
    /// Apply the store's schema migrations (serve and submit do it too).
    Migrate(admin::StoreArgs),
    /// The workers the store knows, with their heartbeat age.
    Workers(admin::StoreArgs),
    /// List the runner types this build knows, with their capabilities.
    Backends,
    /// Serve the HTTP API and the web dashboard over the store; `api token
    /// add` makes a token.
    Api(api_cmd::ApiArgs),
}

/// The names of every subcommand [`main`] offers (`run`, `serve`,
/// `submit`...): what a binary built on it must answer to.
pub fn command_names() -> Vec<String> {
    <Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect()
}

/// Run the command line with the factory `make_factory` builds; returns the
/// process exit code.
pub fn main<F>(make_factory: F) -> ExitCode
where
    F: Fn(Metrics) -> RunnerFactory + Send + Sync + 'static,
{
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    let telemetry = init_tracing(cli.json_logs, matches!(cli.command, Command::Run(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    let make: MakeFactory = Arc::new(make_factory);
    let outcome = runtime.block_on(dispatch(cli.command, make));
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    // Background tasks (a LISTEN connection, writers) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Logs to stderr (JSON on request); spans to OTLP when the standard
/// `OTEL_EXPORTER_OTLP_*` variables ask for it (the guard flushes them).
fn init_tracing(json: bool, quiet_default: bool) -> Option<Telemetry> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if quiet_default { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let quiet = quiet_clients(&asked);
    let (telemetry, otel_error) = match Telemetry::from_env() {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e)),
    };
    let otel = telemetry.as_ref().map(|t| t.layer());
    let plain = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let structured = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(quiet)
        .with(otel)
        .with(plain)
        .with(structured)
        .init();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "spans are not exported");
    }
    telemetry
}

/// Client libraries whose debug events print request bodies (bollard logs
/// a container's whole create body, its `Env` with the resolved secrets
/// in it): their debug and trace events are dropped unless `RUST_LOG`
/// names them itself, so `RUST_LOG=debug` never writes a secret to a log
/// or a span.
const BODY_LOGGERS: &[&str] = &[
    "bollard",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "kube_client",
    "aws_smithy_runtime",
    "aws_smithy_http_client",
];

fn quiet_clients(
    asked: &str,
) -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool + use<>> {
    let quiet: Vec<&'static str> = BODY_LOGGERS
        .iter()
        .copied()
        .filter(|target| !asked.contains(target))
        .collect();
    tracing_subscriber::filter::filter_fn(move |meta| {
        *meta.level() <= tracing::Level::INFO
            || !quiet.iter().any(|target| {
                meta.target()
                    .strip_prefix(target)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
    })
}

async fn dispatch(command: Command, make: MakeFactory) -> CliResult {
    match command {
        Command::Run(args) => run::run(args, make).await,
        Command::Serve(args) => serve::serve(args, make).await,
        Command::Submit(args) => submit_cmd::run(args, make).await,
        Command::Status(args) => results_cmds::status(args).await,
        Command::History(args) => results_cmds::history(args).await,
        Command::Logs(args) => results_cmds::logs(args).await,
        Command::Artifacts(args) => results_cmds::artifacts(args).await,
        Command::Cancel(args) => results_cmds::cancel_cmd(args).await,
        Command::Validate(args) => results_cmds::validate(args, make).await,
        Command::Dlq(args) => dlq::dlq(args).await,
        Command::Reap(args) => admin::reap(args, make).await,
        Command::Migrate(args) => admin::migrate(args).await,
        Command::Workers(args) => admin::workers(args).await,
        Command::Backends => admin::backends(make),
        Command::Api(args) => api_cmd::api(args, make).await,
    }
}

/// Read a YAML file into `T`; errors name the file and the key (exit 4).
pub(crate) fn load_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CliError> {
    runner_core::spec::from_yaml_file(path).map_err(|e| CliError::usage(e.to_string()))
}

/// The worker config, with `--queue-url` (or `ORCHESTRATOR_QUEUE_URL`)
/// selecting an SQS queue.
pub(crate) fn load_worker_config(
    path: &Path,
    queue_url: Option<String>,
) -> Result<WorkerConfig, CliError> {
    let mut config = WorkerConfig::from_file(path).map_err(|e| CliError::usage(e.to_string()))?;
    if let Some(url) = queue_url.filter(|u| !u.is_empty()) {
        let mut section = config
            .queue
            .sqs
            .take()
            .unwrap_or_else(|| crate::config::SqsSection {
                url: String::new(),
                dlq_url: None,
                wait_seconds: 5,
                fifo_group: Default::default(),
                region: None,
            });
        section.url = url;
        section
            .validate()
            .map_err(|(key, message)| CliError::usage(format!("--queue-url ({key}): {message}")))?;
        config.queue.sqs = Some(section);
    }
    Ok(config)
}

/// Open the queue and store of a worker config; a config mistake is exit
/// 4, an unreachable store exit 2.
pub(crate) async fn open_backends(
    config: &WorkerConfig,
) -> Result<crate::backends::Backends, CliError> {
    Ok(crate::backends::open(config).await?)
}
