//! Logs and files a run produced, each with its size and sha256.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// Captured output of the run.
    Log,
    /// A file the test wrote.
    File,
}

/// Where an artifact's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "scheme", content = "at")]
pub enum ArtifactLocation {
    /// A file on the worker's machine, under the artifacts directory.
    Local(PathBuf),
    /// A remote object (`s3://bucket/key`, `https://...`).
    Uri(String),
}

/// One collected artifact.
///
/// `#[non_exhaustive]`: built with [`Artifact::new`] or
/// [`Artifact::from_local_file`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Artifact {
    /// Relative name; never absolute, never containing `..` (see [`crate::safe_path`]).
    pub name: String,
    /// Log or file.
    pub kind: ArtifactKind,
    /// Where the bytes are.
    pub location: ArtifactLocation,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
}

/// Everything collected for one execution.
///
/// Built with [`ArtifactBundle::new`] (`#[non_exhaustive]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArtifactBundle {
    /// The artifacts, logs first.
    pub artifacts: Vec<Artifact>,
}

impl ArtifactBundle {
    /// A bundle of `artifacts`, logs first.
    pub fn new(artifacts: Vec<Artifact>) -> Self {
        Self { artifacts }
    }

    /// Total bytes.
    pub fn total_size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }

    /// The artifact called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }
}

impl Artifact {
    /// An artifact called `name` of `kind` at `location`, of `size` bytes
    /// whose lower-case hex sha256 is `sha256`.
    pub fn new(
        name: impl Into<String>,
        kind: ArtifactKind,
        location: ArtifactLocation,
        size: u64,
        sha256: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            location,
            size,
            sha256: sha256.into(),
        }
    }

    /// Describe a local file, hashing it.
    pub fn from_local_file(
        name: impl Into<String>,
        kind: ArtifactKind,
        path: &Path,
    ) -> std::io::Result<Self> {
        let (size, sha256) = sha256_file(path)?;
        Ok(Self {
            name: name.into(),
            kind,
            location: ArtifactLocation::Local(path.to_path_buf()),
            size,
            sha256,
        })
    }
}

/// Size and lower-case hex sha256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Lower-case hex sha256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
