//! `orchestrator`: run one test now, serve a queue of them, and everything
//! around it. The commands live in [`orchestrator_worker::cli`], so a binary
//! with its own backends offers them all the same way.

use orchestrator_worker::RunnerFactory;

fn main() -> std::process::ExitCode {
    orchestrator_worker::cli::main(RunnerFactory::with_builtins)
}
