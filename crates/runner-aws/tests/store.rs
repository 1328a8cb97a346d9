//! ArtifactStore against moto's S3: multipart uploads, ranged reads,
//! collection with checksums, unsafe names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use runner_aws::{ArtifactStore, MULTIPART_PART_SIZE, MULTIPART_THRESHOLD};
use runner_core::{ArtifactKind, ArtifactLocation};

async fn store(moto: &test_emulators::Moto, bucket: &str) -> ArtifactStore {
    let client = test_emulators::aws::s3_client(&moto.endpoint()).await;
    client.create_bucket().bucket(bucket).send().await.unwrap();
    ArtifactStore::new(client, bucket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_parts_and_come_back_whole() {
    let moto = test_emulators::Moto::start().unwrap();
    let store = store(&moto, "multipart").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let size = MULTIPART_THRESHOLD + MULTIPART_PART_SIZE + 12_345;
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut written = 0u64;
        let mut n = 0u32;
        while written < size {
            let chunk = format!("{n:08}\n");
            let take = chunk.len().min((size - written) as usize);
            file.write_all(&chunk.as_bytes()[..take]).unwrap();
            written += take as u64;
            n += 1;
        }
    }
    let (_, expected_sha) = runner_core::artifact::sha256_file(&path).unwrap();
    let uploaded = store
        .put_file("run/artifacts/big.bin", &path)
        .await
        .unwrap();
    assert_eq!(uploaded.size, size);
    assert_eq!(uploaded.parts as u64, size.div_ceil(MULTIPART_PART_SIZE));
    assert!(uploaded.parts > 1);
    assert_eq!(uploaded.sha256, expected_sha);
    // The object is whole: its streamed hash (not the metadata) matches.
    let back = store
        .read_from("run/artifacts/big.bin", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len() as u64, size);
    assert_eq!(runner_core::artifact::sha256_bytes(&back), expected_sha);
    // Small files go up in one request.
    std::fs::write(dir.path().join("small.txt"), b"small\n").unwrap();
    let small = store
        .put_file("run/artifacts/dir/small.txt", &dir.path().join("small.txt"))
        .await
        .unwrap();
    assert_eq!(small.parts, 1);

    let dir_upload = store.put_dir("copy/", dir.path(), 4).await.unwrap();
    let keys: Vec<&str> = dir_upload.iter().map(|u| u.uri.key.as_str()).collect();
    assert_eq!(keys, ["copy/big.bin", "copy/small.txt"]);

    let bundle = store
        .collect("run/artifacts/", |_| ArtifactKind::File)
        .await
        .unwrap();
    let names: Vec<&str> = bundle.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["big.bin", "dir/small.txt"]);
    assert_eq!(bundle.artifacts[0].sha256, expected_sha);
    assert_eq!(
        bundle.artifacts[1].location,
        ArtifactLocation::Uri("s3://multipart/run/artifacts/dir/small.txt".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_follow_a_growing_object() {
    let moto = test_emulators::Moto::start().unwrap();
    let store = store(&moto, "ranged").await;
    assert_eq!(
        store.read_from("log", 0).await.unwrap(),
        None,
        "missing is None, not an error"
    );
    store.put_bytes("log", b"one\n".to_vec()).await.unwrap();
    assert_eq!(store.read_from("log", 0).await.unwrap().unwrap(), b"one\n");
    store
        .put_bytes("log", b"one\ntwo\n".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read_from("log", 4).await.unwrap().unwrap(), b"two\n");
    assert_eq!(
        store.read_from("log", 8).await.unwrap().unwrap(),
        b"",
        "nothing new is empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_without_checksum_metadata_are_hashed_and_bad_metadata_ignored() {
    let moto = test_emulators::Moto::start().unwrap();
    let store = store(&moto, "hashing").await;
    let client = store.client();
    client
        .put_object()
        .bucket("hashing")
        .key("p/plain.txt")
        .body(b"abc".to_vec().into())
        .send()
        .await
        .unwrap();
    client
        .put_object()
        .bucket("hashing")
        .key("p/lying.txt")
        .metadata("sha256", "not-a-hash")
        .body(b"abc".to_vec().into())
        .send()
        .await
        .unwrap();
    let bundle = store.collect("p/", |_| ArtifactKind::File).await.unwrap();
    let abc = runner_core::artifact::sha256_bytes(b"abc");
    assert!(
        bundle
            .artifacts
            .iter()
            .all(|a| a.sha256 == abc && a.size == 3),
        "{bundle:?}"
    );
}
