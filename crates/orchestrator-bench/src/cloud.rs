//! The cloud figures: artifact uploads to moto's S3
//! against `aws s3 cp --recursive`, and warm-pool provisioning on moto.

use std::time::{Duration, Instant};

use runner_core::{BenchSpec, RunContext, RunnerAdapter};

async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    test_emulators::aws::sdk_config(endpoint).await
}

/// 200 files, 256 MiB in all: 199 of 1 MiB and one of 57 MiB (multipart).
fn make_files(dir: &std::path::Path) -> Result<u64, String> {
    let mut total = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..200u32 {
        let size = if i == 199 {
            57 * 1024 * 1024
        } else {
            1024 * 1024
        };
        let mut bytes = Vec::with_capacity(size);
        while bytes.len() < size {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.extend_from_slice(&seed.to_le_bytes());
        }
        bytes.truncate(size);
        let sub = dir.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        std::fs::write(sub.join(format!("f{i:03}.bin")), &bytes).map_err(|e| e.to_string())?;
        total += size as u64;
    }
    Ok(total)
}

pub async fn artifacts() -> Result<(), String> {
    let moto = test_emulators::Moto::start()?;
    let bin = test_emulators::venv_bin()?;
    let s3 = runner_aws::s3_client(&sdk(&moto.endpoint()).await, true);
    s3.create_bucket()
        .bucket("bench")
        .send()
        .await
        .map_err(|e| format!("create bucket: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let total = make_files(dir.path())?;
    let store = runner_aws::ArtifactStore::new(s3, "bench");
    let mb = total as f64 / 1e6;

    let mut ours_best = Duration::MAX;
    let mut aws_best = Duration::MAX;
    // Alternate, twice each, and keep each side's best: moto is one Python
    // process, and the first pass of either warms it.
    for round in 0..2 {
        let started = Instant::now();
        let stored = store
            .put_dir(&format!("ours{round}/"), dir.path(), 8)
            .await
            .map_err(|e| e.to_string())?;
        let ours = started.elapsed();
        if stored.len() != 200 {
            return Err(format!("stored {} files, not 200", stored.len()));
        }
        ours_best = ours_best.min(ours);

        let started = Instant::now();
        let out = tokio::process::Command::new(bin.join("aws"))
            .args(["s3", "cp", "--recursive", "--quiet"])
            .arg(dir.path())
            .arg(format!("s3://bench/aws{round}/"))
            .envs(moto.env())
            .output()
            .await
            .map_err(|e| format!("aws s3 cp: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "aws s3 cp failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        aws_best = aws_best.min(started.elapsed());
    }
    println!(
        "artifacts    200 files, {mb:.0} MB to moto S3: ours {:.2} s ({:.0} MB/s, put_dir x8, sha256 metadata); aws s3 cp --recursive {:.2} s ({:.0} MB/s); ratio {:.2} (target <= 1.0)",
        ours_best.as_secs_f64(),
        mb / ours_best.as_secs_f64(),
        aws_best.as_secs_f64(),
        mb / aws_best.as_secs_f64(),
        ours_best.as_secs_f64() / aws_best.as_secs_f64()
    );
    Ok(())
}

pub async fn warmpool() -> Result<(), String> {
    let moto = test_emulators::Moto::start()?;
    let config = sdk(&moto.endpoint()).await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let s3 = runner_aws::s3_client(&config, true);
    s3.create_bucket()
        .bucket("pool")
        .send()
        .await
        .map_err(|e| format!("create bucket: {e}"))?;
    let image = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .map_err(|e| format!("describe images: {e}"))?
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .ok_or("moto lists no AMI")?;
    let sim = test_emulators::ssm::SsmSim::start(moto.env())
        .await
        .map_err(|e| e.to_string())?;
    let ssm = aws_sdk_ssm::Client::new(&sdk(&sim.endpoint()).await);
    let ec2_config: runner_ec2::Ec2Config = serde_json::from_value(serde_json::json!({
        "bucket": "pool", "image_id": image, "instance_type": "t3.micro", "owner": "bench",
        "force_path_style": true, "poll_initial_ms": 20, "poll_max_ms": 100,
        "pool": {"name": "bench", "min_ready": 1, "max_uses": 1000, "refill_interval_seconds": 0}
    }))
    .map_err(|e| e.to_string())?;
    let runner =
        runner_ec2::Ec2Runner::with_clients(ec2_config, ec2, ssm, s3).map_err(|e| e.to_string())?;
    let cold_bench = BenchSpec::new().with_backend(serde_json::json!({"pool": false}));
    let warm_bench = BenchSpec::default();
    const ROUNDS: usize = 10;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let (mut cold_calls, mut warm_calls) = (0, 0);
    runner.refill_pool().await.map_err(|e| e.to_string())?;
    for round in 0..ROUNDS {
        for (bench, times, calls, label) in [
            (&cold_bench, &mut cold, &mut cold_calls, "cold"),
            (&warm_bench, &mut warm, &mut warm_calls, "warm"),
        ] {
            let key = format!("{label}-{round}");
            let ctx = RunContext::new(format!("{key}.1"), "bench").with_execution_key(&key);
            let before = runner.run_instances_calls().await;
            let started = Instant::now();
            let handle = runner
                .provision(&ctx, bench)
                .await
                .map_err(|e| e.to_string())?;
            times.push(started.elapsed());
            *calls += runner.run_instances_calls().await - before;
            runner
                .teardown(&ctx, &handle)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    cold.sort();
    warm.sort();
    let (c, w) = (cold[ROUNDS / 2], warm[ROUNDS / 2]);
    println!(
        "warmpool     provision on moto, median of {ROUNDS}: cold {:.1} ms ({cold_calls} RunInstances), warm hit {:.1} ms ({warm_calls} RunInstances, target 0); ratio warm/cold {:.2}",
        c.as_secs_f64() * 1e3,
        w.as_secs_f64() * 1e3,
        w.as_secs_f64() / c.as_secs_f64()
    );
    Ok(())
}
