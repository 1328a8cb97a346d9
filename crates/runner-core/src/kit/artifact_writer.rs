//! Streaming an artifact to disk: chunks in, redacted bytes out, sha256 and
//! size computed as it goes, memory bounded by the chunk size whatever the
//! artifact's size.
//!
//! [`RedactingFile`] is the synchronous core. [`ArtifactWriter`] runs one on
//! a blocking thread and takes chunks from async code (an S3 object body, an
//! HTTP body, a tar entry) through a bounded channel, so no disk write runs
//! on a runtime thread and a slow disk slows the download instead of
//! growing memory.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::artifact::{Artifact, ArtifactKind, ArtifactLocation};
use crate::redact::Redactor;

/// The chunk size the kit reads and writes in.
pub const CHUNK: usize = 64 * 1024;

/// Chunks in flight between an [`ArtifactWriter`] and its thread.
const IN_FLIGHT: usize = 4;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Where.
    pub path: PathBuf,
    /// Bytes written (after redaction).
    pub size: u64,
    /// Lower-case hex sha256 of the bytes written.
    pub sha256: String,
    /// Bytes that came in (before redaction).
    pub received: u64,
    /// Lower-case hex sha256 of the bytes that came in (to check a
    /// download against its source's hash; equal to `sha256` when nothing
    /// was redacted).
    pub received_sha256: String,
}

impl Written {
    /// This file as a bundle entry.
    pub fn artifact(&self, name: impl Into<String>, kind: ArtifactKind) -> Artifact {
        Artifact {
            name: name.into(),
            kind,
            location: ArtifactLocation::Local(self.path.clone()),
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }
}

/// A file being written with secrets replaced and its hash kept.
///
/// A tail as long as the longest secret less one byte is held back between
/// chunks, so a secret split across two chunks is still found: any secret
/// that starts before the tail ends inside the bytes already scanned.
pub struct RedactingFile {
    out: BufWriter<File>,
    path: PathBuf,
    redactor: Redactor,
    tail: Vec<u8>,
    hasher: Sha256,
    /// The input's hash, kept apart only when redaction may change bytes.
    raw: Option<Sha256>,
    size: u64,
    received: u64,
}

impl std::fmt::Debug for RedactingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactingFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish()
    }
}

impl RedactingFile {
    /// Create `path` (and its parent directories).
    pub fn create(path: &Path, redactor: Redactor) -> std::io::Result<RedactingFile> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let raw = (!redactor.is_empty()).then(Sha256::new);
        Ok(RedactingFile {
            out: BufWriter::with_capacity(CHUNK, File::create(path)?),
            path: path.to_path_buf(),
            redactor,
            tail: Vec::new(),
            hasher: Sha256::new(),
            raw,
            size: 0,
            received: 0,
        })
    }

    /// Append a chunk.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.received += chunk.len() as u64;
        if let Some(raw) = &mut self.raw {
            raw.update(chunk);
        }
        if self.redactor.is_empty() {
            return self.emit(chunk);
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        let replaced = self.redactor.redact_bytes(&window);
        let keep = self.redactor.longest().saturating_sub(1);
        let cut = replaced.len().saturating_sub(keep);
        self.emit(&replaced[..cut])?;
        self.tail = replaced[cut..].to_vec();
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Flush, sync and describe the file.
    pub fn finish(mut self) -> std::io::Result<Written> {
        let tail = std::mem::take(&mut self.tail);
        self.emit(&tail)?;
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        let sha256 = hex::encode(self.hasher.finalize());
        Ok(Written {
            path: self.path,
            size: self.size,
            received_sha256: self
                .raw
                .map_or_else(|| sha256.clone(), |raw| hex::encode(raw.finalize())),
            sha256,
            received: self.received,
        })
    }
}

/// Read `reader` to its end in [`CHUNK`]-sized reads (retrying
/// interrupted ones), handing each to `each` (blocking).
pub fn read_chunks(
    mut reader: impl Read,
    each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Copy everything `reader` gives to `to`, redacted and hashed, in chunks
/// (blocking; call from a blocking thread).
pub fn copy_redacted(
    reader: impl Read,
    to: &Path,
    redactor: &Redactor,
) -> std::io::Result<Written> {
    let mut out = RedactingFile::create(to, redactor.clone())?;
    read_chunks(reader, &mut |chunk| out.write_chunk(chunk))?;
    out.finish()
}

/// Copy the file `from` to `to`, redacted and hashed (blocking).
pub fn copy_file_redacted(from: &Path, to: &Path, redactor: &Redactor) -> std::io::Result<Written> {
    copy_redacted(File::open(from)?, to, redactor)
}

/// Describe a local file (size and sha256) off the runtime threads.
pub async fn describe_file(
    name: impl Into<String>,
    kind: ArtifactKind,
    path: &Path,
) -> std::io::Result<Artifact> {
    let name = name.into();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || Artifact::from_local_file(name, kind, &path))
        .await
        .map_err(std::io::Error::other)?
}

enum Msg {
    Chunk(Vec<u8>),
    Finish(oneshot::Sender<std::io::Result<Written>>),
}

/// A [`RedactingFile`] on a blocking thread, fed from async code.
///
/// Memory: at most a few chunks in flight plus the writer's buffer. Dropping
/// it without [`ArtifactWriter::finish`] leaves a partial file (the caller
/// decides whether to remove it; [`ArtifactWriter::abort`] does).
#[derive(Debug)]
pub struct ArtifactWriter {
    tx: mpsc::Sender<Msg>,
    path: PathBuf,
    failed: Option<std::io::Error>,
}

impl ArtifactWriter {
    /// Start writing `path` (its parent directories are made).
    pub async fn create(path: &Path, redactor: Redactor) -> std::io::Result<ArtifactWriter> {
        let owned = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || RedactingFile::create(&owned, redactor))
            .await
            .map_err(std::io::Error::other)??;
        let (tx, mut rx) = mpsc::channel::<Msg>(IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            let mut file = Some(file);
            let mut error: Option<std::io::Error> = None;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Chunk(chunk) => {
                        if error.is_none()
                            && let Some(f) = file.as_mut()
                            && let Err(e) = f.write_chunk(&chunk)
                        {
                            error = Some(e);
                        }
                    }
                    Msg::Finish(reply) => {
                        let result = match (error.take(), file.take()) {
                            (Some(e), _) => Err(e),
                            (None, Some(f)) => f.finish(),
                            (None, None) => Err(std::io::Error::other("finished twice")),
                        };
                        let _ = reply.send(result);
                        return;
                    }
                }
            }
        });
        Ok(ArtifactWriter {
            tx,
            path: path.to_path_buf(),
            failed: None,
        })
    }

    /// Where it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append a chunk; waits while the disk is behind.
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        // Large chunks (a whole body handed over at once) are split, so the
        // writer thread never holds more than a chunk's worth per message.
        for piece in chunk.chunks(CHUNK) {
            if self.tx.send(Msg::Chunk(piece.to_vec())).await.is_err() {
                return Err(self.gone());
            }
        }
        Ok(())
    }

    /// Flush and describe the file; the first write error, if any, instead.
    pub async fn finish(mut self) -> std::io::Result<Written> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Msg::Finish(reply)).await.is_err() {
            return Err(self.gone());
        }
        answer.await.map_err(|_| self.gone())?
    }

    /// Stop and remove the partial file.
    pub async fn abort(self) {
        let path = self.path.clone();
        drop(self);
        let _ = tokio::fs::remove_file(path).await;
    }

    fn gone(&mut self) -> std::io::Error {
        self.failed
            .take()
            .unwrap_or_else(|| std::io::Error::other("the artifact writer thread stopped"))
    }
}

/// Why a streamed download did not complete.
#[derive(Debug)]
pub enum StreamError<E> {
    /// No chunk arrived within the idle timeout: the download was cut (transient).
    Idle(Duration),
    /// The source failed mid-stream (the caller classifies it).
    Source(E),
    /// Writing to disk failed.
    Io(std::io::Error),
}

impl<E: std::fmt::Display> std::fmt::Display for StreamError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Idle(d) => {
                write!(f, "no data for {} s: the download was cut", d.as_secs())
            }
            StreamError::Source(e) => write!(f, "{e}"),
            StreamError::Io(e) => write!(f, "writing the artifact: {e}"),
        }
    }
}

/// Where streamed chunks come from: an HTTP body, an S3 object body, a
/// tar entry. Backends wrap their client's body type in a newtype.
#[crate::async_trait]
pub trait ChunkSource: Send {
    /// A chunk of bytes.
    type Chunk: AsRef<[u8]> + Send;
    /// Why the source failed.
    type Error: Send;
    /// The next chunk; `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Self::Chunk>, Self::Error>;
}

/// Drain `source` into `path`, redacted and hashed, with an idle timeout
/// per chunk instead of one for the whole transfer (a large trace takes as
/// long as it takes while bytes keep coming). A failed or cut transfer
/// removes the partial file.
pub async fn write_stream<S: ChunkSource>(
    source: &mut S,
    path: &Path,
    redactor: Redactor,
    idle: Duration,
) -> Result<Written, StreamError<S::Error>> {
    let mut writer = ArtifactWriter::create(path, redactor)
        .await
        .map_err(StreamError::Io)?;
    loop {
        let item = match tokio::time::timeout(idle, source.next_chunk()).await {
            Err(_) => {
                writer.abort().await;
                return Err(StreamError::Idle(idle));
            }
            Ok(Err(e)) => {
                writer.abort().await;
                return Err(StreamError::Source(e));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(bytes))) => bytes,
        };
        if let Err(e) = writer.write(item.as_ref()).await {
            writer.abort().await;
            return Err(StreamError::Io(e));
        }
    }
    writer.finish().await.map_err(StreamError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_split_across_a_chunk_boundary_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.log");
        let mut f = RedactingFile::create(&path, Redactor::new(["TOPSECRET"])).unwrap();
        f.write_chunk(b"head TOP").unwrap();
        f.write_chunk(b"SEC").unwrap();
        f.write_chunk(b"RET tail TOPSECRET").unwrap();
        let written = f.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "head *** tail ***");
        assert_eq!(written.size, text.len() as u64);
        assert_eq!(
            written.sha256,
            crate::artifact::sha256_bytes(text.as_bytes())
        );
        assert_eq!(written.received, 29);
        assert_eq!(
            written.received_sha256,
            crate::artifact::sha256_bytes(b"head TOPSECRET tail TOPSECRET")
        );
    }

    #[test]
    fn copies_without_secrets_are_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("in");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&from, &data).unwrap();
        let w = copy_file_redacted(&from, &dir.path().join("out"), &Redactor::default()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), data);
        assert_eq!(w.sha256, crate::artifact::sha256_bytes(&data));
    }

    #[tokio::test]
    async fn the_async_writer_streams_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let mut w = ArtifactWriter::create(&path, Redactor::new(["s3cr3t-value"]))
            .await
            .unwrap();
        let mut expected = Vec::new();
        for _ in 0..64 {
            let mut chunk = vec![b'.'; CHUNK - 6];
            chunk.extend_from_slice(b"s3cr3t");
            w.write(&chunk).await.unwrap();
            w.write(b"-value").await.unwrap();
            expected.extend_from_slice(&chunk[..CHUNK - 6]);
            expected.extend_from_slice(b"***");
        }
        let written = w.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(written.size, expected.len() as u64);
    }

    struct Slow(Vec<Vec<u8>>, bool);

    #[crate::async_trait]
    impl ChunkSource for Slow {
        type Chunk = Vec<u8>;
        type Error = String;
        async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
            if self.0.is_empty() && self.1 {
                std::future::pending::<()>().await;
            }
            Ok(self.0.pop())
        }
    }

    #[tokio::test]
    async fn a_stalled_stream_is_cut_by_the_idle_timeout_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut ok = Slow(vec![b"b".to_vec(), b"a".to_vec()], false);
        let w = write_stream(&mut ok, &path, Redactor::default(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        assert_eq!(w.size, 2);
        let mut stalled = Slow(vec![b"a".to_vec()], true);
        let err = write_stream(
            &mut stalled,
            &path,
            Redactor::default(),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, StreamError::Idle(_)));
        assert!(!path.exists());
    }
}
