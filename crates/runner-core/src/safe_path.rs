//! Artifact names never escape the artifacts directory.
//!
//! A backend reports names it got from a test, a bench or an API. Before any
//! of them becomes a path on the worker, it passes through here: `..`,
//! absolute paths, empty names, NUL bytes and symlinks that lead out of the
//! root are refused.

use std::path::{Component, Path, PathBuf};

/// A name refused as an artifact path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path {name:?}: {reason}")]
pub struct UnsafePath {
    /// The refused name.
    pub name: String,
    /// Why.
    pub reason: &'static str,
}

fn refuse(name: &str, reason: &'static str) -> UnsafePath {
    UnsafePath {
        name: name.to_owned(),
        reason,
    }
}

/// Check that `name` is a plain relative path that stays below its root.
pub fn validate_name(name: &str) -> Result<&Path, UnsafePath> {
    if name.is_empty() {
        return Err(refuse(name, "empty name"));
    }
    if name.contains('\0') {
        return Err(refuse(name, "contains a NUL byte"));
    }
    if name.contains('\\') {
        return Err(refuse(name, "contains a backslash"));
    }
    let path = Path::new(name);
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(refuse(name, "contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(name, "is an absolute path"));
            }
        }
    }
    Ok(path)
}

/// Join `name` under `root`, refusing names that leave it, also through a
/// symlink that already exists on the way.
pub fn safe_join(root: &Path, name: &str) -> Result<PathBuf, UnsafePath> {
    let relative = validate_name(name)?;
    let joined = root.join(relative);
    let Ok(canonical_root) = root.canonicalize() else {
        // The root does not exist yet, so nothing below it can be a symlink.
        return Ok(joined);
    };
    // Resolve the longest existing prefix; it must stay inside the root.
    let mut existing = joined.as_path();
    loop {
        if existing.symlink_metadata().is_ok() {
            break;
        }
        match existing.parent() {
            Some(parent) => existing = parent,
            None => return Ok(joined),
        }
    }
    match existing.canonicalize() {
        Ok(resolved) if resolved.starts_with(&canonical_root) => Ok(joined),
        Ok(_) => Err(refuse(
            name,
            "leads out of the artifacts directory through a symlink",
        )),
        Err(_) => Err(refuse(name, "is a dangling symlink")),
    }
}

/// Whether `path`, a file found under `root`, really lies inside it once
/// symlinks are resolved.
pub fn is_within(root: &Path, path: &Path) -> bool {
    match (root.canonicalize(), path.canonicalize()) {
        (Ok(root), Ok(path)) => path.starts_with(root),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_traversal_absolute_and_empty() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "", "a\0b", "a\\..\\b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b.txt", "./a", "logs/stdout.log"] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlink_out_of_root_and_allows_inside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::fs::create_dir(root.path().join("in")).unwrap();
        std::os::unix::fs::symlink(root.path().join("in"), root.path().join("alias")).unwrap();
        assert!(safe_join(root.path(), "out/file").is_err());
        assert!(safe_join(root.path(), "alias/file").is_ok());
        assert!(safe_join(root.path(), "new/dir/file").is_ok());
        assert!(!is_within(root.path(), &root.path().join("out")));
    }
}
