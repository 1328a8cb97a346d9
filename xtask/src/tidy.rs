//! Tidy checks over the workspace sources, run as tests of xtask.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

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
}
