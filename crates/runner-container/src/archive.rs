//! Unpacking the engine's tar stream of `/artifacts`, one entry at a time:
//! names that leave the directory and links that point out of it are
//! refused; each file is redacted, hashed and sized as it is written.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use runner_core::safe_path::{safe_join, validate_name};
use runner_core::{Artifact, ArtifactKind, ArtifactLocation, Redactor};
use sha2::{Digest, Sha256};

/// An entry turned down, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub name: String,
    pub reason: String,
}

/// What unpacking produced.
#[derive(Debug, Default)]
pub(crate) struct Unpacked {
    pub artifacts: Vec<Artifact>,
    pub refused: Vec<Refused>,
}

/// Compile the payload's artifact globs (relative to `/artifacts`).
pub(crate) fn compile(patterns: &[String]) -> Result<GlobSet, (String, String)> {
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

/// Normalise `path` lexically (no file system): `.` dropped, `..` pops;
/// `None` when it climbs above its start.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Strips the archive's root from entry names. Docker names the root entry
/// after the directory (`artifacts/`, then `artifacts/a.txt`); Podman 4
/// names it `/` (then `/a.txt`). The first entry says which.
#[derive(Debug, Default)]
struct Root {
    prefix: Option<String>,
}

impl Root {
    /// The entry's name below the root; `Ok(None)` for the root itself.
    fn relative(&mut self, raw: &str) -> Result<Option<String>, &'static str> {
        let trimmed = raw.trim_start_matches('/').trim_start_matches("./");
        let trimmed = trimmed.trim_end_matches('/');
        let Some(prefix) = &self.prefix else {
            // The first entry is the directory itself.
            if trimmed.contains('/') {
                return Err("the archive does not start with its directory");
            }
            self.prefix = Some(trimmed.to_owned());
            return Ok(None);
        };
        if prefix.is_empty() {
            return Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()));
        }
        if trimmed == prefix {
            return Ok(None);
        }
        match trimmed
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(rest) if !rest.is_empty() => Ok(Some(rest.to_owned())),
            _ => Err("lies outside the archived directory"),
        }
    }
}

/// A link inside the directory, resolved once every file is unpacked.
struct Link {
    name: String,
    target: String,
}

/// Unpack `reader` (a tar of `container_dir`) into `dest`: regular files
/// matching `globs` (all when empty), not already in `taken`. Links whose
/// target stays inside become copies of the target; others are refused,
/// as are devices, FIFOs and names that leave the directory.
pub(crate) fn unpack(
    reader: impl Read,
    container_dir: &str,
    dest: &Path,
    globs: &GlobSet,
    redactor: &Redactor,
    taken: &mut Vec<String>,
) -> std::io::Result<Unpacked> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Unpacked::default();
    let mut root = Root::default();
    let mut stored: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut links: Vec<Link> = Vec::new();
    let wanted = |name: &str| globs.is_empty() || globs.is_match(name);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |out: &mut Unpacked, name: &str, reason: &str| {
            out.refused.push(Refused {
                name: name.to_owned(),
                reason: reason.to_owned(),
            });
        };
        if std::str::from_utf8(&entry.path_bytes()).is_err() {
            refuse(&mut out, &raw, "name is not UTF-8");
            continue;
        }
        let name = match root.relative(&raw) {
            Ok(Some(name)) => name,
            Ok(None) => continue,
            Err(reason) => {
                refuse(&mut out, &raw, reason);
                continue;
            }
        };
        if let Err(e) = validate_name(&name) {
            refuse(&mut out, &name, e.reason);
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else {
                refuse(&mut out, &name, "link without a target");
                continue;
            };
            let target = String::from_utf8_lossy(&target).into_owned();
            let resolved = if kind.is_hard_link() {
                // Hard link targets are archive names.
                root.relative(&target).ok().flatten()
            } else if let Some(inside) = target
                .strip_prefix(container_dir)
                .and_then(|r| r.strip_prefix('/'))
            {
                normalise(Path::new(inside)).map(|p| p.to_string_lossy().into_owned())
            } else if target.starts_with('/') {
                None
            } else {
                let parent = Path::new(&name).parent().unwrap_or(Path::new(""));
                normalise(&parent.join(&target)).map(|p| p.to_string_lossy().into_owned())
            };
            match resolved {
                Some(target) if !target.is_empty() => {
                    if wanted(&name) {
                        links.push(Link { name, target });
                    }
                }
                _ => refuse(
                    &mut out,
                    &name,
                    &format!("link to {target:?} leads out of the artifacts directory"),
                ),
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            refuse(&mut out, &name, "not a regular file");
            continue;
        }
        if !wanted(&name) || taken.contains(&name) {
            continue;
        }
        let target = match safe_join(dest, &name) {
            Ok(t) => t,
            Err(e) => {
                refuse(&mut out, &name, e.reason);
                continue;
            }
        };
        let artifact = write_file(&mut entry, &name, &target, redactor)?;
        stored.insert(name.clone(), target);
        taken.push(name);
        out.artifacts.push(artifact);
    }
    // Links to files inside become copies of what was stored; a link to a
    // link, a directory or nothing is refused rather than followed.
    for link in links {
        if taken.contains(&link.name) {
            continue;
        }
        let Some(source) = stored.get(&link.target) else {
            out.refused.push(Refused {
                name: link.name,
                reason: format!(
                    "link to {:?}, which is not a regular file in the archive",
                    link.target
                ),
            });
            continue;
        };
        let target = match safe_join(dest, &link.name) {
            Ok(t) => t,
            Err(e) => {
                out.refused.push(Refused {
                    name: link.name,
                    reason: e.reason.to_owned(),
                });
                continue;
            }
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // The source is already redacted.
        std::fs::copy(source, &target)?;
        out.artifacts.push(Artifact::from_local_file(
            &link.name,
            ArtifactKind::File,
            &target,
        )?);
        taken.push(link.name);
    }
    Ok(out)
}

/// Copy `input` to `target`, replacing secrets with `***`, hashing and
/// counting the bytes written; memory stays at one buffer plus the longest
/// secret whatever the size.
fn write_file(
    input: &mut impl Read,
    name: &str,
    target: &Path,
    redactor: &Redactor,
) -> std::io::Result<Artifact> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut output = HashingWriter {
        inner: BufWriter::with_capacity(64 * 1024, File::create(target)?),
        hasher: Sha256::new(),
        size: 0,
    };
    let mut buf = vec![0u8; 64 * 1024];
    if redactor.is_empty() {
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            output.write_all(&buf[..n])?;
        }
    } else {
        // Keep a tail as long as the longest secret, so a secret split
        // across two reads is still found.
        let keep = redactor.longest().saturating_sub(1);
        let mut window: Vec<u8> = Vec::new();
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            window.extend_from_slice(&buf[..n]);
            let replaced = redactor.redact_bytes(&window);
            let cut = replaced.len().saturating_sub(keep);
            output.write_all(&replaced[..cut])?;
            window = replaced[cut..].to_vec();
        }
        output.write_all(&window)?;
    }
    output.inner.flush()?;
    Ok(Artifact::new(
        name,
        ArtifactKind::File,
        ArtifactLocation::Local(target.to_path_buf()),
        output.size,
        hex::encode(output.hasher.finalize()),
    ))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Raw names: the builder's own checks would refuse the bad ones.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if let Some(link) = link {
                let l = link.as_bytes();
                header.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn docker_and_podman_roots_unpack_alike_and_escapes_are_refused() {
        use tar::EntryType as T;
        for root in ["artifacts/", "/"] {
            let name = |n: &str| {
                if root == "/" {
                    format!("/{n}")
                } else {
                    format!("artifacts/{n}")
                }
            };
            let (a, d, b, up, abs, inl, outl, fifo) = (
                name("a.txt"),
                name("d"),
                name("d/b.txt"),
                name("../up.txt"),
                "/etc/passwd".to_string(),
                name("d/in"),
                name("d/out"),
                name("fifo"),
            );
            let data = tar_of(&[
                (root, T::Directory, b"", None),
                (&a, T::Regular, b"token=s3cret", None),
                (&d, T::Directory, b"", None),
                (&b, T::Regular, b"bee", None),
                (&up, T::Regular, b"x", None),
                (&inl, T::Symlink, b"", Some("../a.txt")),
                (&outl, T::Symlink, b"", Some("/etc/shadow")),
                (&fifo, T::Fifo, b"", None),
            ]);
            let dir = tempfile::tempdir().unwrap();
            let mut taken = Vec::new();
            let out = unpack(
                &data[..],
                "/artifacts",
                dir.path(),
                &GlobSet::empty(),
                &Redactor::new(["s3cret"]),
                &mut taken,
            )
            .unwrap();
            let names: Vec<_> = out.artifacts.iter().map(|a| a.name.as_str()).collect();
            assert_eq!(names, ["a.txt", "d/b.txt", "d/in"], "root {root}");
            assert_eq!(
                std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
                "token=***"
            );
            assert_eq!(out.artifacts[0].size, 9);
            let refused: Vec<_> = out.refused.iter().map(|r| r.name.as_str()).collect();
            assert!(refused.iter().any(|n| n.contains("up.txt")), "{refused:?}");
            assert!(refused.contains(&"d/out"), "{refused:?}");
            assert!(refused.contains(&"fifo"), "{refused:?}");
            if root == "/" {
                assert!(!refused.contains(&abs.as_str()));
            }
            assert!(!dir.path().parent().unwrap().join("up.txt").exists());
        }
    }

    #[test]
    fn globs_select_below_the_directory() {
        use tar::EntryType as T;
        let data = tar_of(&[
            ("artifacts/", T::Directory, b"", None),
            ("artifacts/keep.xml", T::Regular, b"<a/>", None),
            ("artifacts/drop.bin", T::Regular, b"zz", None),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let globs = compile(&["*.xml".into()]).unwrap();
        let out = unpack(
            &data[..],
            "/artifacts",
            dir.path(),
            &globs,
            &Redactor::default(),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(out.artifacts.len(), 1);
        assert_eq!(out.artifacts[0].name, "keep.xml");
        assert_eq!(
            out.artifacts[0].sha256,
            runner_core::artifact::sha256_bytes(b"<a/>")
        );
        assert!(compile(&["../x".into()]).is_err());
    }
}
