//! Artifacts from a shared volume (`artifacts.volume`): the pod wrote them
//! under `/artifacts` (the execution's sub-directory of the claim); the
//! worker reads the same files at `worker_path/<sub-directory>` and copies
//! each into the artifacts directory through the kit's redacting copy.

use std::path::{Path, PathBuf};

use runner_core::kit::copy_file_redacted;
use runner_core::safe_path::safe_join;
use runner_core::{Artifact, ArtifactKind, Redactor};

/// Copy every regular file below `from` to `to/<relative name>`, redacted
/// and hashed, off the runtime threads. Symbolic links and names that are
/// not UTF-8 are refused (an error naming them): a pod must not point the
/// worker at files outside its directory.
pub(crate) async fn collect(
    from: PathBuf,
    to: PathBuf,
    redactor: Redactor,
) -> Result<Vec<Artifact>, String> {
    tokio::task::spawn_blocking(move || collect_blocking(&from, &to, &redactor))
        .await
        .map_err(|e| format!("the volume reader stopped: {e}"))?
}

fn collect_blocking(from: &Path, to: &Path, redactor: &Redactor) -> Result<Vec<Artifact>, String> {
    let mut out = Vec::new();
    if !from.exists() {
        return Ok(out);
    }
    let mut pending = vec![from.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("reading {}: {e}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let kind = std::fs::symlink_metadata(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .file_type();
            let relative = path
                .strip_prefix(from)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let Some(name) = relative.to_str() else {
                return Err(format!(
                    "artifact {} has a name that is not UTF-8",
                    relative.display()
                ));
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let target = safe_join(to, name).map_err(|e| e.to_string())?;
                let written = copy_file_redacted(&path, &target, redactor)
                    .map_err(|e| format!("copying artifact {name}: {e}"))?;
                out.push(written.artifact(name, ArtifactKind::File));
            } else {
                return Err(format!(
                    "artifact {name} on the volume is not a regular file (a link?); refused"
                ));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
