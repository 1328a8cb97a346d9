//! Tidy checks over the workspace sources, run as tests of xtask.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The most lines a source file may have: past it a file holds more than
    /// one concern, and a newcomer cannot find a thing by its file name.
    const MAX_LINES: usize = 600;

    /// A line in a file's top doc comment that says why it is one room
    /// although it is longer than [`MAX_LINES`]: `//! Size: <the reason>`.
    const SIZE_MARKER: &str = "//! Size:";

    /// TEMPORARY: files over [`MAX_LINES`] that are split in the kit branch
    /// (issue 18), listed so this branch's check passes meanwhile. Empty this
    /// list when the kit branch merges.
    const SPLIT_IN_THE_KIT_BRANCH: &[&str] = &[
        "crates/bench-sim/src/server.rs",
        "crates/runner-contract/src/checks.rs",
        "crates/runner-ec2/src/lib.rs",
        "crates/runner-local/src/adapter.rs",
    ];

    /// Whether `path` (relative to the root, `/`-separated) with `text` may be
    /// longer than [`MAX_LINES`]: a fake or an emulator under a `tests/`
    /// directory, generated code, a file whose top doc comment has a
    /// [`SIZE_MARKER`] line, or one of [`SPLIT_IN_THE_KIT_BRANCH`].
    fn may_be_long(path: &str, text: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        let test_double = (path.starts_with("tests/") || path.contains("/tests/"))
            && (name.contains("fake") || name.contains("emulator"));
        let generated = text.lines().take(5).any(|l| l.contains("@generated"));
        let says_why = text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
            .any(|l| l.starts_with(SIZE_MARKER) && l.len() > SIZE_MARKER.len() + 10);
        test_double || generated || says_why || SPLIT_IN_THE_KIT_BRANCH.contains(&path)
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn sources() -> Vec<PathBuf> {
        let root = super::super::project_root();
        let mut files = Vec::new();
        for dir in ["crates", "xtask", "tests", "examples"] {
            rust_files(&root.join(dir), &mut files);
        }
        files
    }

    #[test]
    fn every_source_file_starts_with_docs() {
        let mut missing = Vec::new();
        for file in sources() {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if !(first.starts_with("//!") || first.starts_with("#![doc")) {
                missing.push(file.display().to_string());
            }
        }
        assert!(
            missing.is_empty(),
            "files without module docs: {missing:#?}"
        );
    }

    /// No source file over `MAX_LINES` unless `may_be_long` says why.
    #[test]
    fn no_file_over_the_size_limit() {
        let root = super::super::project_root();
        let mut long = Vec::new();
        for file in sources() {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines = text.lines().count();
            let rel = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            if lines > MAX_LINES && !may_be_long(&rel, &text) {
                long.push(format!("{rel}: {lines} lines"));
            }
        }
        assert!(
            long.is_empty(),
            "files over {} lines (split them by concern, or say why in a `{}` line \
             of the top doc comment): {long:#?}",
            MAX_LINES,
            SIZE_MARKER
        );
    }

    #[test]
    fn the_size_rule_exempts_only_what_it_says() {
        let plain = "//! A module.\n\nfn f() {}\n";
        assert!(!may_be_long("crates/a/src/lib.rs", plain));
        assert!(may_be_long("crates/a/tests/common/fake_k8s.rs", plain));
        assert!(!may_be_long("crates/a/src/fake.rs", plain));
        assert!(may_be_long(
            "crates/a/src/lib.rs",
            "//! A module.\n//! Size: one state machine, its states read top to bottom.\n"
        ));
        // The marker counts in the top doc comment only, and with a reason.
        assert!(!may_be_long(
            "crates/a/src/lib.rs",
            "//! A module.\n\nfn f() {}\n//! Size: later\n"
        ));
        assert!(!may_be_long("crates/a/src/lib.rs", "//! Size:\n"));
        assert!(may_be_long(
            "crates/a/src/gen.rs",
            "// @generated by a tool\n"
        ));
    }

    #[test]
    fn no_stray_debug_output_in_library_code() {
        let mut found = Vec::new();
        // Spelled in two parts so this file does not match itself.
        let dbg_call = format!("{}!(", "dbg");
        for file in sources() {
            let path = file.display().to_string();
            let library = path.contains("/src/")
                && !path.contains("/src/bin/")
                && !path.ends_with("/main.rs")
                && !path.contains("/xtask/")
                // Test set-up says what it installs (a minute, once) to the
                // person running the tests; it is never linked into a product.
                && !path.contains("/test-emulators/")
                // The benchmark binary's modules print its figures.
                && !path.contains("/orchestrator-bench/")
                && !path.contains("/cli");
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                if code.contains(&dbg_call)
                    || (library && (code.contains("println!(") || code.contains("eprintln!(")))
                {
                    found.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        assert!(found.is_empty(), "debug output in library code: {found:#?}");
    }

    /// Every file, directory, type and function ARCHITECTURE.md names in
    /// backticks exists: paths (from the root, the worker crate or its
    /// `src/`), `a::b` paths (their last segment is defined somewhere) and
    /// CamelCase names (a struct, enum, trait or type of that name).
    #[test]
    fn architecture_names_what_exists() {
        let root = super::super::project_root();
        let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap_or_default();
        assert!(!text.is_empty(), "ARCHITECTURE.md is missing");
        let mut all = String::new();
        for file in sources() {
            all.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
        }
        let defined = |name: &str| {
            [
                "fn ",
                "struct ",
                "enum ",
                "trait ",
                "type ",
                "mod ",
                "macro_rules! ",
            ]
            .iter()
            .any(|kw| {
                let needle = format!("{kw}{name}");
                all.match_indices(&needle).any(|(i, _)| {
                    all[i + needle.len()..]
                        .chars()
                        .next()
                        .is_some_and(|c| !c.is_alphanumeric() && c != '_')
                })
            })
        };
        let mut stale = Vec::new();
        let mut in_code_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code_block = !in_code_block;
                continue;
            }
            if in_code_block {
                continue;
            }
            for (i, token) in line.split('`').enumerate() {
                if i % 2 == 0 || token.is_empty() || token.contains(' ') {
                    continue;
                }
                let looks_like_path = token.contains('/')
                    && (token.ends_with('/')
                        || token.rsplit('/').next().is_some_and(|f| f.contains('.')));
                if looks_like_path {
                    let rel = token.trim_end_matches('/');
                    let exists = [
                        root.clone(),
                        root.join("crates/orchestrator-worker"),
                        root.join("crates/orchestrator-worker/src"),
                    ]
                    .iter()
                    .any(|base| base.join(rel).exists());
                    if !exists {
                        stale.push(format!("path `{token}`"));
                    }
                } else if token.contains("::") {
                    let last = token
                        .rsplit("::")
                        .next()
                        .unwrap_or(token)
                        .trim_end_matches("()");
                    let is_ident =
                        !last.is_empty() && last.chars().all(|c| c.is_alphanumeric() || c == '_');
                    if is_ident && !defined(last) {
                        stale.push(format!("`{token}`"));
                    }
                } else if token.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && token.chars().any(|c| c.is_ascii_lowercase())
                    && token.chars().all(|c| c.is_alphanumeric())
                    && !defined(token)
                {
                    stale.push(format!("`{token}`"));
                }
            }
        }
        assert!(
            stale.is_empty(),
            "ARCHITECTURE.md names what does not exist: {stale:#?}"
        );
    }
}
