//! Collecting files by glob into the artifacts directory, safely.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use runner_core::safe_path::{is_within, safe_join, validate_name};
use runner_core::{Artifact, ArtifactKind, Redactor};

/// Why a pattern is refused: (field, message).
pub(crate) type PatternError = (String, String);

/// Compile the payload's artifact globs; patterns that could reach outside
/// the working directory are refused.
pub(crate) fn compile(patterns: &[String]) -> Result<GlobSet, PatternError> {
    let mut set = GlobSetBuilder::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let field = format!("payload.artifacts[{i}]");
        validate_name(pattern).map_err(|e| (field.clone(), e.to_string()))?;
        let glob = GlobBuilder::new(pattern.trim_start_matches("./"))
            .literal_separator(true)
            .build()
            .map_err(|e| (field, e.to_string()))?;
        set.add(glob);
    }
    set.build()
        .map_err(|e| ("payload.artifacts".to_owned(), e.to_string()))
}

/// A file the walk turned down, and why.
#[derive(Debug)]
pub(crate) struct Refused {
    pub name: String,
    pub reason: String,
}

/// Copy every file under `work` matching `globs` to `dest/<relative name>`,
/// redacting secrets, and describe the copies. Symlinks are followed only
/// when they resolve to a regular file inside `work`.
pub(crate) fn collect(
    work: &Path,
    dest: &Path,
    globs: &GlobSet,
    redactor: &Redactor,
    taken: &mut Vec<String>,
) -> std::io::Result<(Vec<Artifact>, Vec<Refused>)> {
    let mut artifacts = Vec::new();
    let mut refused = Vec::new();
    if globs.is_empty() || !work.exists() {
        return Ok((artifacts, refused));
    }
    for entry in walkdir::WalkDir::new(work)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(std::io::Error::other)?;
        let Ok(relative) = entry.path().strip_prefix(work) else {
            continue;
        };
        let Some(name) = relative.to_str().map(str::to_owned) else {
            refused.push(Refused {
                name: relative.display().to_string(),
                reason: "name is not UTF-8".into(),
            });
            continue;
        };
        if name.is_empty() || !globs.is_match(relative) {
            continue;
        }
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        if file_type.is_symlink() && !is_within(work, entry.path()) {
            refused.push(Refused {
                name,
                reason: "symlink leads out of the working directory".into(),
            });
            continue;
        }
        if !entry.path().is_file() {
            refused.push(Refused {
                name,
                reason: "not a regular file".into(),
            });
            continue;
        }
        if taken.contains(&name) {
            continue;
        }
        let target = match safe_join(dest, &name) {
            Ok(t) => t,
            Err(e) => {
                refused.push(Refused {
                    name,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        // Hashed as it is copied: one read of the file, not two.
        let written = runner_core::kit::copy_file_redacted(entry.path(), &target, redactor)?;
        artifacts.push(written.artifact(&name, ArtifactKind::File));
        taken.push(name);
    }
    Ok((artifacts, refused))
}

/// The destination directory of one execution's artifacts.
pub(crate) fn destination(artifacts_dir: &Path, execution_id: &str) -> Result<PathBuf, String> {
    safe_join(artifacts_dir, execution_id).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_that_climb_out_are_refused() {
        assert!(compile(&["../x".into()]).is_err());
        assert!(compile(&["/etc/*".into()]).is_err());
        let (field, _) = compile(&["ok/*.xml".into(), "a/../../b".into()]).unwrap_err();
        assert_eq!(field, "payload.artifacts[1]");
        assert!(compile(&["**/*.xml".into(), "./report.txt".into()]).is_ok());
    }

    #[test]
    fn redacting_copy_finds_secrets_across_chunk_edges() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("in");
        let to = dir.path().join("sub/out");
        let mut data = vec![b'a'; 64 * 1024 - 3];
        data.extend_from_slice(b"TOPSECRET tail");
        std::fs::write(&from, &data).unwrap();
        runner_core::kit::copy_file_redacted(&from, &to, &Redactor::new(["TOPSECRET"])).unwrap();
        let out = std::fs::read(&to).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("TOPSECRET"));
        assert!(text.ends_with("*** tail"));
    }
}
