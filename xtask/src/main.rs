//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask ci`: format check, clippy with `-D warnings`, every test,
//!   rustdoc with `-D warnings`, the contract suite of every backend, and
//!   the README's main command.
//! - `cargo xtask contract [--backend NAME]`: the contract suite of one or all backends.
//! - `cargo xtask outside`: examples/third-party-backend built and tested
//!   as a crate outside the workspace (part of `ci`).

mod outside;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

type Result<T> = std::result::Result<T, String>;

/// Backends with a contract test target: (runner type, package, test target).
const BACKENDS: &[(&str, &str, &str)] = &[
    ("local_mock", "runner-mock", "contract"),
    ("local", "runner-local", "contract"),
    ("ec2", "runner-ec2", "contract"),
    ("eks", "runner-eks", "contract"),
    ("onprem", "runner-onprem", "contract"),
    ("container", "runner-container", "contract"),
];

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("contract") => contract(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("outside") => outside::outside(),
        Some("clippy") => run(
            "clippy",
            cargo()
                .args(["clippy", "--workspace", "--all-targets"])
                .args(["--", "-D", "warnings"]),
        ),
        Some("help") | Some("--help") | Some("-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`; run `cargo xtask help`")),
    }
}

fn print_help() {
    println!(
        "cargo xtask <task>\n\n\
         tasks:\n  \
         ci                          fmt check, clippy -D warnings, all tests, rustdoc -D warnings, contract suites, outside crate, README main command\n  \
         clippy                      cargo clippy --workspace --all-targets -D warnings (ci lints while it builds)\n  \
         contract [--backend NAME]   the contract suite of one backend (known: {})\n  \
         outside                     examples/third-party-backend copied out of the workspace, built and tested\n  \
         bench [NAME]                release-mode benchmarks with same-run baselines (known: {})\n",
        BACKENDS.iter().map(|b| b.0).collect::<Vec<_>>().join(", "),
        BENCHES.join(", ")
    );
}

/// The workspace root: the parent of this crate's directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    println!("==> {step}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: cannot start {cmd:?}: {e}"))?;
    println!(
        "<== {step}: {status} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

/// A cargo command that lints workspace crates with clippy (`-D warnings`)
/// while it builds them: clippy-driver as the workspace wrapper, the way
/// `cargo clippy` itself runs it. Dependencies are compiled once, for the
/// tests, instead of once checked for clippy and once built for the tests:
/// with the AWS SDK that saves about ten minutes on a fresh two-core machine.
/// (`cargo xtask clippy` runs plain `cargo clippy` for day-to-day use.)
fn linted_cargo() -> Command {
    let mut cmd = cargo();
    let driver = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .map(|cargo| cargo.with_file_name("clippy-driver"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("clippy-driver"));
    cmd.env("RUSTC_WORKSPACE_WRAPPER", driver).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    );
    cmd
}

/// The crates whose rustdoc CI builds with `-D warnings`: the API a
/// backend author and a library user read.
const DOCUMENTED: &[&str] = &["runner-core", "runner-contract", "orchestrator-worker"];

fn ci() -> Result<()> {
    let started = Instant::now();
    run("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(
        "clippy -D warnings, while building every target",
        linted_cargo().args(["test", "--workspace", "--all-targets", "--no-run"]),
    )?;
    run(
        "test",
        linted_cargo().args(["test", "--workspace", "--all-targets"]),
    )?;
    run(
        "doctest",
        linted_cargo().args(["test", "--workspace", "--doc"]),
    )?;
    // Rustdoc's own lints (broken intra-doc links and the like; missing
    // docs are clippy's, above, with every feature) on the public API's
    // crates; libraries only, no dependency documented. Rustdoc needs its
    // dependencies checked (metadata), which the test build does not
    // make: with the worker's default features that is 305 crates and
    // about 4 minutes on two cores, most of it the AWS SDK, kube and
    // bollard, so the worker is documented without the cloud backends
    // (239 crates in the graph instead of 333).
    run(
        "rustdoc -D warnings",
        cargo()
            .args(["doc", "--no-deps", "--lib", "--no-default-features"])
            .args(DOCUMENTED.iter().flat_map(|p| ["-p", p]))
            .args([
                "--features",
                "orchestrator-worker/local,orchestrator-worker/mock",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // Every package's `contract` target in one workspace build: the same
    // feature resolution as the test step above, so nothing recompiles.
    run(
        "contract suites (all backends)",
        linted_cargo().args(["test", "--workspace", "--test", "contract"]),
    )?;
    // The backend author's path: the example as a crate outside the
    // workspace, on the workspace's lock file and target directory.
    outside::outside()?;
    readme_main_command()?;
    println!("ci passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn contract(args: &[String]) -> Result<()> {
    let selected: Vec<&(&str, &str, &str)> = match args {
        [] => BACKENDS.iter().collect(),
        [flag, name] if flag == "--backend" => {
            let found = BACKENDS
                .iter()
                .find(|b| b.0 == name.as_str())
                .ok_or_else(|| {
                    format!(
                        "unknown backend `{name}`; known: {}",
                        BACKENDS.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                    )
                })?;
            vec![found]
        }
        _ => return Err("usage: cargo xtask contract [--backend NAME]".into()),
    };
    for (name, package, target) in selected {
        if !project_root()
            .join("crates")
            .join(package)
            .join("tests")
            .join(format!("{target}.rs"))
            .exists()
        {
            println!("==> contract {name}: skipped, crate {package} has no contract test yet");
            continue;
        }
        run(
            &format!("contract {name}"),
            cargo().args(["test", "-p", package, "--test", target]),
        )?;
        if *name == "eks" {
            // The scripted API server above; a real cluster when there is one.
            match std::env::var_os("KUBECONFIG") {
                Some(kubeconfig) => run(
                    "contract eks (real cluster from KUBECONFIG)",
                    cargo()
                        .args(["test", "-p", package, "--test", target])
                        .env("EKS_CONTRACT_KUBECONFIG", kubeconfig),
                )?,
                None => println!(
                    "==> contract eks on a real cluster: skipped, KUBECONFIG is not set \
                     (set it, and optionally EKS_CONTRACT_NAMESPACE and EKS_CONTRACT_IMAGE, to run the suite there)"
                ),
            }
        }
    }
    Ok(())
}

/// Benchmarks, each run in its own process so peak-RSS figures do not mix.
const BENCHES: &[&str] = &[
    "engine",
    "queue",
    "serve",
    "local",
    "logs",
    "artifacts",
    "warmpool",
    "pg-queue",
];

fn bench(args: &[String]) -> Result<()> {
    let selected: Vec<&str> = match args {
        [] => BENCHES.to_vec(),
        [name] if BENCHES.contains(&name.as_str()) => vec![name.as_str()],
        [name] => {
            return Err(format!(
                "unknown benchmark `{name}`; known: {}",
                BENCHES.join(", ")
            ));
        }
        _ => return Err("usage: cargo xtask bench [NAME]".into()),
    };
    run(
        "build (release)",
        // `serve` drives the real `orchestrator` binary, built beside it.
        cargo().args([
            "build",
            "--release",
            "-p",
            "orchestrator-bench",
            "-p",
            "orchestrator-worker",
            "--bin",
            "orchestrator-bench",
            "--bin",
            "orchestrator",
        ]),
    )?;
    // Where cargo put it: `CARGO_TARGET_DIR` when set, else `target/`.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    let binary = target_dir.join("release/orchestrator-bench");
    let mut report = String::new();
    for name in selected {
        let output = Command::new(&binary)
            .arg(name)
            .current_dir(project_root())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        print!("{text}");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(format!("benchmark {name} failed ({})", output.status));
        }
        report.push_str(&text);
    }
    let dir = project_root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("last-run.txt");
    let stamp = Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    std::fs::write(&path, format!("# cargo xtask bench, {stamp}\n{report}"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("figures written to {}", path.display());
    Ok(())
}

/// The README's main command, so a broken quick start fails CI.
fn readme_main_command() -> Result<()> {
    let readme = std::fs::read_to_string(project_root().join("README.md"))
        .map_err(|e| format!("cannot read README.md: {e}"))?;
    let Some(line) = readme
        .lines()
        .find(|l| l.trim_start().starts_with("cargo run") && l.contains(" run --bench"))
    else {
        println!("==> README main command: none yet");
        return Ok(());
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    // `cargo run -p PACKAGE -- ARGS`: the package must have exactly one
    // binary (so `cargo run -p` picks it), and that binary, as the test
    // step built it, runs ARGS from the root. Running `cargo run` itself
    // here would build the binary a second time: without the
    // dev-dependencies, features of shared crates (time, nix, syn) differ,
    // and that rebuilt the AWS SDK, 5 to 15 minutes of CI.
    let (package, args) = match words.as_slice() {
        ["cargo", "run", "-p", package, "--", args @ ..] => (*package, args),
        _ => {
            return Err(format!(
                "the README's main command is not `cargo run -p PACKAGE -- ARGS`: {line}"
            ));
        }
    };
    let manifest = project_root()
        .join("crates")
        .join(package)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let bins: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "[[bin]]")
        .filter_map(|l| l.trim().strip_prefix("name = "))
        .map(|n| n.trim_matches('"'))
        .collect();
    let [bin] = bins.as_slice() else {
        return Err(format!(
            "{} must declare exactly one [[bin]] for `cargo run -p {package}`; it declares {bins:?}",
            manifest.display()
        ));
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    let binary = target.join("debug").join(bin);
    let mut cmd = Command::new(&binary);
    cmd.args(args).current_dir(project_root());
    run("README main command (the test step's binary)", &mut cmd)
}
