//! `cargo xtask outside`: build and test `examples/third-party-backend` as
//! a crate outside the workspace, the way docs/adapters/writing-a-backend.md
//! tells a backend author to set one up.
//!
//! The example is copied to a temporary directory; its manifest's
//! `workspace = true` entries become what the workspace says (path
//! dependencies made absolute, versions and features of the others), its
//! lints and the workspace's dev profile are written in, and the
//! workspace's `Cargo.lock` is copied next to it. Then:
//!
//! 1. `cargo tree` of the library alone (`--no-default-features`, normal
//!    dependencies) must name no project crate but runner-core;
//! 2. `cargo test` builds the library, the binary and the tests, and runs
//!    the contract suite on the bare and the wrapped adapter and the CLI
//!    tests;
//! 3. every package the build resolved must be in the workspace's lock at
//!    the same version: the copied lock is what pins an outside build to
//!    the versions CI tested.
//!
//! The workspace's target directory is reused (`CARGO_TARGET_DIR`), so a
//! second run rebuilds only the example.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, project_root, run};

/// The example, relative to the root.
const EXAMPLE: &str = "examples/third-party-backend";

/// Project crates the example's library may depend on (normal dependencies).
const LIBRARY_MAY_USE: &[&str] = &["runner-core"];

/// Build and test the example outside the workspace.
pub fn outside() -> Result<()> {
    let root = project_root();
    let dir = std::env::temp_dir().join(format!("third-party-backend-{}", std::process::id()));
    if dir.starts_with(&root) {
        return Err(format!(
            "the temporary directory {} is inside the workspace",
            dir.display()
        ));
    }
    let result = build_and_test(&root, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn build_and_test(root: &Path, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    copy_dir(&root.join(EXAMPLE), dir)?;
    let workspace = read(&root.join("Cargo.toml"))?;
    let member = read(&root.join(EXAMPLE).join("Cargo.toml"))?;
    let manifest = outside_manifest(&workspace, &member, root)?;
    write(&dir.join("Cargo.toml"), &manifest)?;
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))
        .map_err(|e| format!("cannot copy Cargo.lock: {e}"))?;
    println!("==> outside crate at {}", dir.display());

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = || {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(dir).env("CARGO_TARGET_DIR", &target);
        cmd
    };

    // Per-package profile overrides only for packages in the build (cargo
    // warns about the others).
    let all = packages_of(cargo().args(["tree", "--edges", "all"]))?;
    write(&dir.join("Cargo.toml"), &keep_profiles_of(&manifest, &all))?;

    let library = cargo()
        .args(["tree", "--no-default-features", "--edges", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .map_err(|e| format!("cannot run cargo tree: {e}"))?;
    if !library.status.success() {
        return Err(format!(
            "cargo tree of the outside crate failed: {}",
            String::from_utf8_lossy(&library.stderr)
        ));
    }
    let project_crates: BTreeSet<String> = String::from_utf8_lossy(&library.stdout)
        .lines()
        .filter(|l| l.contains(&format!("({}", root.display())))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|name| name != "third-party-backend")
        .collect();
    let extra: Vec<_> = project_crates
        .iter()
        .filter(|c| !LIBRARY_MAY_USE.contains(&c.as_str()))
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "the backend library (no default features) depends on {extra:?}; it may use only {LIBRARY_MAY_USE:?}"
        ));
    }
    println!("==> the library alone depends on the project crates {project_crates:?}");

    run(
        "outside crate: build and test (contract suite bare and wrapped, CLI)",
        cargo().args(["test"]),
    )?;

    let workspace_lock = lock_packages(&read(&root.join("Cargo.lock"))?);
    let outside_lock = lock_packages(&read(&dir.join("Cargo.lock"))?);
    let drifted: Vec<String> = outside_lock
        .iter()
        .filter(|(name, versions)| {
            workspace_lock
                .get(*name)
                .is_none_or(|known| !versions.is_subset(known))
        })
        .filter(|(name, _)| name.as_str() != "third-party-backend")
        .map(|(name, versions)| format!("{name} {versions:?}"))
        .collect();
    if drifted.is_empty() {
        println!(
            "==> all {} packages of the outside build are locked as in the workspace",
            outside_lock.len()
        );
        Ok(())
    } else {
        Err(format!(
            "the outside build resolved packages the workspace lock does not hold: {drifted:?}"
        ))
    }
}

/// The member manifest `member` made standalone: `workspace = true`
/// entries replaced by what `workspace` (the root manifest) says, path
/// dependencies absolute below `root`, the workspace's lints and profiles
/// written in, and an empty `[workspace]` so no parent directory's
/// workspace claims it.
fn outside_manifest(workspace: &str, member: &str, root: &Path) -> Result<String> {
    let package = section_entries(workspace, "[workspace.package]");
    let deps = section_entries(workspace, "[workspace.dependencies]");
    let mut out = String::new();
    let mut section = String::new();
    for line in member.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.to_owned();
            if section == "[lints]" {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if section == "[lints]" {
            // `workspace = true`: the workspace's lint tables, below.
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if section == "[package]" {
            if let Some(field) = key.strip_suffix(".workspace") {
                let inherited = package
                    .get(field)
                    .ok_or_else(|| format!("[workspace.package] has no `{field}`"))?;
                out.push_str(&format!("{field} = {inherited}\n"));
                continue;
            }
        } else if section.ends_with("dependencies]") {
            let (name, extra) = if let Some(name) = key.strip_suffix(".workspace") {
                (name, String::new())
            } else if value.starts_with('{') && value.contains("workspace = true") {
                let inner = value.trim_start_matches('{').trim_end_matches('}');
                let extra: Vec<&str> = inner
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && *p != "workspace = true")
                    .collect();
                (key, extra.join(", "))
            } else {
                out.push_str(line);
                out.push('\n');
                continue;
            };
            let spec = deps
                .get(name)
                .ok_or_else(|| format!("[workspace.dependencies] has no `{name}`"))?;
            let mut fields = if spec.starts_with('{') {
                spec.trim_start_matches('{')
                    .trim_end_matches('}')
                    .trim()
                    .to_owned()
            } else {
                format!("version = {spec}")
            };
            if let Some(start) = fields.find("path = \"") {
                let at = start + "path = \"".len();
                fields.insert_str(at, &format!("{}/", root.display()));
            }
            if !extra.is_empty() {
                fields.push_str(", ");
                fields.push_str(&extra);
            }
            out.push_str(&format!("{name} = {{ {fields} }}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (table, copied) in [
        ("[workspace.lints.rust]", "[lints.rust]"),
        ("[workspace.lints.clippy]", "[lints.clippy]"),
    ] {
        out.push_str(&format!("\n{copied}\n"));
        for (key, value) in section_entries(workspace, table) {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    // The dev profile of the workspace, so shared dependencies are built
    // as the workspace builds them (and reused from its target directory).
    let mut in_profile = false;
    for line in workspace.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_profile = trimmed.starts_with("[profile.");
            if in_profile {
                out.push('\n');
            }
        }
        if in_profile && !trimmed.starts_with('#') && !trimmed.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("\n[workspace]\n");
    Ok(out)
}

/// The package names `cmd` (a `cargo tree`) lists.
fn packages_of(cmd: &mut Command) -> Result<BTreeSet<String>> {
    let out = cmd
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .map_err(|e| format!("cannot run cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree of the outside crate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// `manifest` without the `[profile.*.package.NAME]` tables of packages
/// not in `packages`.
fn keep_profiles_of(manifest: &str, packages: &BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut keep = true;
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            keep = match trimmed
                .strip_prefix("[profile.")
                .and_then(|rest| rest.split_once(".package."))
            {
                Some((_, name)) => {
                    let name = name.trim_end_matches(']').trim_matches('"');
                    name == "*" || packages.contains(name)
                }
                None => true,
            };
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `key = value` lines of `table` in `text` (one-line entries only).
fn section_entries(text: &str, table: &str) -> BTreeMap<String, String> {
    text.lines()
        .skip_while(|l| l.trim() != table)
        .skip(1)
        .take_while(|l| !l.trim().starts_with('['))
        .filter(|l| !l.trim().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The package names of a lock file, with their versions.
fn lock_packages(lock: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut packages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            packages
                .entry(n)
                .or_default()
                .insert(v.trim_matches('"').to_owned());
        }
    }
    packages
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            if entry.file_name() != "target" {
                copy_dir(&path, &target)?;
            }
        } else {
            std::fs::copy(&path, &target)
                .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_manifest_becomes_standalone() {
        let workspace = "[workspace]\nmembers = []\n\n[workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
            [workspace.dependencies]\nrunner-core = { path = \"crates/runner-core\" }\nserde = { version = \"1\", features = [\"derive\"] }\nfastrand = \"2\"\n\
            worker = { path = \"crates/worker\", default-features = false }\n\n\
            [workspace.lints.rust]\nunsafe_code = \"forbid\"\n\n[workspace.lints.clippy]\nunwrap_used = \"warn\"\n\n\
            [profile.dev]\ndebug = false\n";
        let member = "[package]\nname = \"x\"\nversion.workspace = true\nedition.workspace = true\n\n\
            [dependencies]\nrunner-core.workspace = true\nfastrand.workspace = true\nworker = { workspace = true, optional = true }\n\
            serde.workspace = true\n\n[lints]\nworkspace = true\n";
        let out = outside_manifest(workspace, member, Path::new("/ws")).unwrap();
        assert!(
            out.contains("version = \"0.1.0\"\nedition = \"2024\"\n"),
            "{out}"
        );
        assert!(
            out.contains("runner-core = { path = \"/ws/crates/runner-core\" }"),
            "{out}"
        );
        assert!(out.contains("fastrand = { version = \"2\" }"), "{out}");
        assert!(
            out.contains("worker = { path = \"/ws/crates/worker\", default-features = false, optional = true }"),
            "{out}"
        );
        assert!(
            out.contains("serde = { version = \"1\", features = [\"derive\"] }"),
            "{out}"
        );
        assert!(
            out.contains("[lints.rust]\nunsafe_code = \"forbid\""),
            "{out}"
        );
        assert!(
            out.contains("[lints.clippy]\nunwrap_used = \"warn\""),
            "{out}"
        );
        assert!(out.contains("[profile.dev]\ndebug = false"), "{out}");
        assert!(!out.contains("workspace = true"), "{out}");
        assert!(out.trim_end().ends_with("[workspace]"), "{out}");
    }

    #[test]
    fn profiles_of_absent_packages_are_dropped() {
        let manifest = "[package]\nname = \"x\"\n\n[profile.dev.package.\"*\"]\ndebug = false\n\
            [profile.dev.package.tokio]\nopt-level = 2\n[profile.dev.package.runner-local]\nopt-level = 2\n\n[workspace]\n";
        let packages = BTreeSet::from(["tokio".to_owned(), "x".to_owned()]);
        let out = keep_profiles_of(manifest, &packages);
        assert!(
            out.contains("[profile.dev.package.\"*\"]\ndebug = false"),
            "{out}"
        );
        assert!(
            out.contains("[profile.dev.package.tokio]\nopt-level = 2"),
            "{out}"
        );
        assert!(!out.contains("runner-local"), "{out}");
        assert!(out.trim_end().ends_with("[workspace]"), "{out}");
    }

    #[test]
    fn lock_packages_pairs_names_and_versions() {
        let lock = "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\n\n[[package]]\nname = \"a\"\nversion = \"2.0.0\"\nsource = \"x\"\n";
        let packages = lock_packages(lock);
        assert_eq!(packages["a"].len(), 2);
    }
}
