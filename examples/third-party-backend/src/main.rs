//! A worker binary with the `echo` backend added: every `orchestrator`
//! command (`run`, `serve`, `submit --wait`, `status`, ...) through the
//! library CLI; nothing in the worker crate changed. The backend registers
//! the way the built-ins do (`orchestrator_worker::factory::BUILTINS`).

fn main() -> std::process::ExitCode {
    orchestrator_worker::cli::main(|metrics| {
        let mut factory = orchestrator_worker::RunnerFactory::with_builtins(metrics);
        third_party_backend::register(factory.registry_mut());
        factory
    })
}
