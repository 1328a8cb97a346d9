//! An execution's directory: what the handle carries, where its files
//! are, and the listing of every directory under the root (leak sweeping).

use std::path::{Path, PathBuf};

use runner_core::{OwnedResource, RunnerHandle};
use serde::{Deserialize, Serialize};

use crate::RUNNER_TYPE;

/// What the handle carries: enough for teardown from another process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LocalState {
    pub(crate) dir: PathBuf,
    pub(crate) execution_key: String,
    /// The worker that provisioned it (empty outside a worker).
    #[serde(default)]
    pub(crate) worker: String,
    /// The records (handle, process group, logs) lie in the directory
    /// itself, beside `work/`: one directory fewer to make and remove per
    /// test. Handles made before this field existed say `false` and keep
    /// them in `meta/`; both are read and torn down alike.
    #[serde(default)]
    pub(crate) flat: bool,
}

impl LocalState {
    pub(crate) fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub(crate) fn meta(&self) -> PathBuf {
        if self.flat {
            self.dir.clone()
        } else {
            self.dir.join(LEGACY_META)
        }
    }
    pub(crate) fn group_file(&self) -> PathBuf {
        self.meta().join(GROUP_FILE)
    }
    pub(crate) fn log(&self, stream: &str) -> PathBuf {
        self.meta().join(format!("{stream}.log"))
    }

    /// Both log files; a run makes one only when its stream wrote.
    pub(crate) fn logs(&self) -> [PathBuf; 2] {
        [self.log("stdout"), self.log("stderr")]
    }
}

pub(crate) const HANDLE_FILE: &str = "handle.json";
/// The process-group record of the last run.
pub(crate) const GROUP_FILE: &str = "group.json";

/// Where records lay before the flat layout (see [`LocalState::flat`]).
const LEGACY_META: &str = "meta";

/// The handle file of the execution directory `dir`, in either layout.
pub(crate) fn read_handle_file(dir: &Path) -> Option<(PathBuf, String)> {
    [
        dir.join(HANDLE_FILE),
        dir.join(LEGACY_META).join(HANDLE_FILE),
    ]
    .into_iter()
    .find_map(|path| std::fs::read_to_string(&path).ok().map(|text| (path, text)))
}

/// The directory name of execution `key` under the root: the key itself
/// where it is safe, cleaned and suffixed with a hash where it was not.
pub(crate) fn dir_name(prefix: Option<&str>, key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let clean = clean.trim_start_matches('.');
    let mut name = match prefix {
        Some(p) => format!("{p}-{clean}"),
        None => format!("exec-{clean}"),
    };
    if clean != key {
        // Keys that needed cleaning keep a hash so two keys never collide.
        let hash = runner_core::artifact::sha256_bytes(key.as_bytes());
        name.push('-');
        name.push_str(&hash[..12]);
    }
    name
}

/// Every execution directory under `root` that has a readable handle.
pub(crate) fn list_dirs(root: &Path) -> std::io::Result<Vec<OwnedResource>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut owned = Vec::new();
    for entry in entries.flatten() {
        let Some((path, text)) = read_handle_file(&entry.path()) else {
            continue;
        };
        let Ok(handle) = RunnerHandle::from_json(&text) else {
            tracing::warn!(path = %path.display(), "unreadable handle file in the local root");
            continue;
        };
        let state = handle.decode::<LocalState>(RUNNER_TYPE).ok();
        let age_seconds = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs());
        let mut resource = OwnedResource::new(handle.handle_id(), handle.clone())
            .with_execution_id(handle.execution_id());
        if let Some(state) = state {
            resource = resource
                .with_execution_key(state.execution_key)
                .with_worker(state.worker);
        }
        if let Some(age) = age_seconds {
            resource = resource.with_age_seconds(age);
        }
        owned.push(resource);
    }
    Ok(owned)
}
