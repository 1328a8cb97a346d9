//! [`ArtifactStore`]: one bucket, the operations the backends need.

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;
use runner_core::safe_path::validate_name;
use runner_core::{Artifact, ArtifactBundle, ArtifactKind, ArtifactLocation, ErrorKind};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::errors::{AwsError, classify};

/// Files at least this large go up in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// The size of each part (S3's minimum is 5 MiB).
pub const MULTIPART_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Parts in flight at once.
const PART_CONCURRENCY: usize = 4;
/// The user metadata key that carries an object's sha256 (lower-case hex).
pub const SHA256_METADATA: &str = "sha256";

/// `s3://bucket/key`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    /// The bucket.
    pub bucket: String,
    /// The key (may be empty for a whole bucket).
    pub key: String,
}

impl S3Uri {
    /// Parse `s3://bucket/key`; the error says what is wrong.
    pub fn parse(uri: &str) -> Result<S3Uri, String> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{uri:?} is not an s3:// URI"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{uri:?} has no bucket"));
        }
        Ok(S3Uri {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

impl std::fmt::Display for S3Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its full key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Where.
    pub uri: S3Uri,
    /// Bytes.
    pub size: u64,
    /// Lower-case hex sha256, also stored as the object's `sha256` metadata.
    pub sha256: String,
    /// How many parts (1 for a single PutObject).
    pub parts: usize,
}

/// A bucket and a client.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl ArtifactStore {
    /// A store over `bucket`.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> ArtifactStore {
        ArtifactStore {
            client,
            bucket: bucket.into(),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// `s3://bucket/key`.
    pub fn uri(&self, key: &str) -> S3Uri {
        S3Uri {
            bucket: self.bucket.clone(),
            key: key.to_string(),
        }
    }

    /// Store bytes under `key`, with their sha256 as metadata.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<Uploaded, AwsError> {
        let size = bytes.len() as u64;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .metadata(SHA256_METADATA, &sha256)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| classify("s3:PutObject", &e))?;
        Ok(Uploaded {
            uri: self.uri(key),
            size,
            sha256,
            parts: 1,
        })
    }

    /// Upload a file; files of [`MULTIPART_THRESHOLD`] or more go up in
    /// [`MULTIPART_PART_SIZE`] parts, a few at a time, and a failed
    /// multipart upload is aborted so no parts are left billed.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<Uploaded, AwsError> {
        let owned = path.to_path_buf();
        let (size, sha256) =
            tokio::task::spawn_blocking(move || runner_core::artifact::sha256_file(&owned))
                .await
                .map_err(|e| {
                    AwsError::new(
                        ErrorKind::Permanent,
                        format!("hashing {}: {e}", path.display()),
                    )
                })?
                .map_err(|e| {
                    AwsError::new(
                        ErrorKind::Permanent,
                        format!("reading {}: {e}", path.display()),
                    )
                })?;
        if size < MULTIPART_THRESHOLD {
            let body = ByteStream::from_path(path).await.map_err(|e| {
                AwsError::new(
                    ErrorKind::Permanent,
                    format!("reading {}: {e}", path.display()),
                )
            })?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .metadata(SHA256_METADATA, &sha256)
                .body(body)
                .send()
                .await
                .map_err(|e| classify("s3:PutObject", &e))?;
            return Ok(Uploaded {
                uri: self.uri(key),
                size,
                sha256,
                parts: 1,
            });
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .metadata(SHA256_METADATA, &sha256)
            .send()
            .await
            .map_err(|e| classify("s3:CreateMultipartUpload", &e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                AwsError::new(
                    ErrorKind::Transient,
                    "s3:CreateMultipartUpload answered without an upload id",
                )
            })?
            .to_string();
        match self.upload_parts(key, path, size, &upload_id).await {
            Ok(parts) => {
                let count = parts.len();
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| classify("s3:CompleteMultipartUpload", &e))?;
                Ok(Uploaded {
                    uri: self.uri(key),
                    size,
                    sha256,
                    parts: count,
                })
            }
            Err(e) => {
                let abort = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                if let Err(abort) = abort {
                    tracing::warn!(key, error = %classify("s3:AbortMultipartUpload", &abort), "could not abort a failed multipart upload");
                }
                Err(e)
            }
        }
    }

    /// Upload every regular file under `dir` to `prefix` + its relative
    /// path, `concurrency` files at a time (each large one multipart).
    /// Symlinks are not followed. Returns what was stored, sorted by key.
    pub async fn put_dir(
        &self,
        prefix: &str,
        dir: &Path,
        concurrency: usize,
    ) -> Result<Vec<Uploaded>, AwsError> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(current) = stack.pop() {
            let io = |e: std::io::Error| {
                AwsError::new(
                    ErrorKind::Permanent,
                    format!("reading {}: {e}", current.display()),
                )
            };
            let mut entries = tokio::fs::read_dir(&current).await.map_err(io)?;
            while let Some(entry) = entries.next_entry().await.map_err(io)? {
                let kind = entry.file_type().await.map_err(io)?;
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    files.push(entry.path());
                }
            }
        }
        let uploads = futures::stream::iter(files)
            .map(|path| async move {
                let relative = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                self.put_file(&format!("{prefix}{relative}"), &path).await
            })
            .buffer_unordered(concurrency.max(1));
        let mut uploads = std::pin::pin!(uploads);
        let mut stored = Vec::new();
        while let Some(done) = uploads.next().await {
            stored.push(done?);
        }
        stored.sort_by(|a, b| a.uri.key.cmp(&b.uri.key));
        Ok(stored)
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>, AwsError> {
        let count = size.div_ceil(MULTIPART_PART_SIZE);
        let uploads = futures::stream::iter(0..count)
            .map(|index| async move {
                let offset = index * MULTIPART_PART_SIZE;
                let len = MULTIPART_PART_SIZE.min(size - offset);
                let bytes = read_range(path, offset, len).await?;
                let number = i32::try_from(index + 1)
                    .map_err(|_| AwsError::new(ErrorKind::Permanent, "too many parts"))?;
                let answer = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map_err(|e| classify("s3:UploadPart", &e))?;
                Ok::<_, AwsError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(answer.e_tag().map(str::to_string))
                        .build(),
                )
            })
            .buffer_unordered(PART_CONCURRENCY);
        let mut parts: Vec<CompletedPart> = Vec::new();
        let mut uploads = std::pin::pin!(uploads);
        while let Some(part) = uploads.next().await {
            parts.push(part?);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    /// The bytes of `key` from `offset` on: `None` when the object does not
    /// exist (yet), empty when it has no bytes past `offset`.
    pub async fn read_from(&self, key: &str, offset: u64) -> Result<Option<Vec<u8>>, AwsError> {
        self.read_range(key, format!("bytes={offset}-")).await
    }

    /// GetObject, `None` when there is no such object; an empty range
    /// (past the end) is `Some(None)`.
    async fn get_object(
        &self,
        key: &str,
        range: Option<String>,
    ) -> Result<Option<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>>, AwsError> {
        let answer = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range)
            .send()
            .await;
        match answer {
            Ok(output) => Ok(Some(Some(output))),
            Err(e) => {
                let err = classify("s3:GetObject", &e);
                if err.is_code("NoSuchKey") || err.status == Some(404) {
                    Ok(None)
                } else if err.is_code("InvalidRange") || err.status == Some(416) {
                    Ok(Some(None))
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn read_range(&self, key: &str, range: String) -> Result<Option<Vec<u8>>, AwsError> {
        let output = match self.get_object(key, Some(range)).await? {
            None => return Ok(None),
            Some(None) => return Ok(Some(Vec::new())),
            Some(Some(output)) => output,
        };
        let bytes = output.body.collect().await.map_err(|e| {
            AwsError::new(
                ErrorKind::Transient,
                format!("s3:GetObject {key}: reading the body: {e}"),
            )
        })?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    /// At most `max` bytes of `key` from `offset` on (a log follower's
    /// bounded read): `None` when the object does not exist (yet), empty
    /// when it has no bytes past `offset`.
    pub async fn read_at(
        &self,
        key: &str,
        offset: u64,
        max: u64,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        let end = offset.saturating_add(max.max(1)) - 1;
        self.read_range(key, format!("bytes={offset}-{end}")).await
    }

    /// Stream `key` down to `path`, redacting `redactor`'s secrets and
    /// hashing as it goes, in bounded memory; a body that stalls for
    /// `idle` is a transient error. `None` when the object does not exist.
    pub async fn download_to(
        &self,
        key: &str,
        path: &Path,
        redactor: runner_core::Redactor,
        idle: std::time::Duration,
    ) -> Result<Option<runner_core::kit::Written>, AwsError> {
        let Some(Some(output)) = self.get_object(key, None).await? else {
            return Ok(None);
        };
        let mut body = Body(output.body);
        runner_core::kit::write_stream(&mut body, path, redactor, idle)
            .await
            .map(Some)
            .map_err(|e| {
                let kind = match e {
                    runner_core::kit::StreamError::Io(_) => ErrorKind::Permanent,
                    _ => ErrorKind::Transient,
                };
                AwsError::new(kind, format!("s3:GetObject {key}: {e}"))
            })
    }

    /// Every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, AwsError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("s3:ListObjectsV2", &e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                objects.push(ObjectInfo {
                    key: key.to_string(),
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                });
            }
        }
        Ok(objects)
    }

    /// The sha256 of an object: its `sha256` metadata when well-formed,
    /// otherwise hashed by streaming the object down.
    pub async fn sha256_of(&self, key: &str) -> Result<String, AwsError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("s3:HeadObject", &e))?;
        if let Some(sha) = head.metadata().and_then(|m| m.get(SHA256_METADATA))
            && is_sha256_hex(sha)
        {
            return Ok(sha.clone());
        }
        let mut object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("s3:GetObject", &e))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = object.body.try_next().await.map_err(|e| {
            AwsError::new(
                ErrorKind::Transient,
                format!("s3:GetObject {key}: reading the body: {e}"),
            )
        })? {
            hasher.update(&chunk);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Everything under `prefix` as artifacts named by their key below the
    /// prefix. A key whose name is unsafe (absolute, `..`, empty parts) is
    /// a permanent error that names the key; nothing is skipped silently.
    pub async fn collect(
        &self,
        prefix: &str,
        kind_of: impl Fn(&str) -> ArtifactKind,
    ) -> Result<ArtifactBundle, AwsError> {
        let mut bundle = ArtifactBundle::default();
        for object in self.list(prefix).await? {
            let name = object.key.strip_prefix(prefix).unwrap_or(&object.key);
            let name = name.trim_start_matches('/');
            if name.is_empty() {
                continue;
            }
            validate_name(name).map_err(|e| {
                AwsError::new(
                    ErrorKind::Permanent,
                    format!(
                        "artifact object s3://{}/{} has an unsafe name: {e}",
                        self.bucket, object.key
                    ),
                )
            })?;
            let sha256 = self.sha256_of(&object.key).await?;
            bundle.artifacts.push(Artifact::new(
                name,
                kind_of(name),
                ArtifactLocation::Uri(self.uri(&object.key).to_string()),
                object.size,
                sha256,
            ));
        }
        Ok(bundle)
    }

    /// Delete every object under `prefix`; returns how many went.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, AwsError> {
        let objects = self.list(prefix).await?;
        for object in &objects {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&object.key)
                .send()
                .await
                .map_err(|e| classify("s3:DeleteObject", &e))?;
        }
        Ok(objects.len())
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

async fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, AwsError> {
    let io = |e: std::io::Error| {
        AwsError::new(
            ErrorKind::Permanent,
            format!("reading {}: {e}", path.display()),
        )
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(io)?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut buf).await.map_err(io)?;
    Ok(buf)
}

/// An object body as the kit's chunk source.
struct Body(ByteStream);

#[runner_core::async_trait]
impl runner_core::kit::ChunkSource for Body {
    type Chunk = Vec<u8>;
    type Error = String;
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.0.try_next().await {
            Ok(chunk) => Ok(chunk.map(|b| b.to_vec())),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_parse() {
        let uri = S3Uri::parse("s3://bkt/a/b.txt").unwrap();
        assert_eq!((uri.bucket.as_str(), uri.key.as_str()), ("bkt", "a/b.txt"));
        assert_eq!(S3Uri::parse("s3://bkt").unwrap().key, "");
        assert!(
            S3Uri::parse("https://x/y")
                .unwrap_err()
                .contains("not an s3://")
        );
        assert!(S3Uri::parse("s3:///k").unwrap_err().contains("no bucket"));
    }
}
