//! Shared set-up for the ec2 runner's tests: one moto server per test
//! binary (EC2 and S3), one SSM agent emulator per test (it runs the
//! scripts on this machine against moto's S3), a fresh bucket and owner
//! per test so parallel tests never see each other's instances.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod scripted;

use std::sync::OnceLock;

use runner_core::{BenchSpec, TestPayload};
use runner_ec2::{Ec2Config, Ec2Runner};
use test_emulators::Moto;
use test_emulators::ssm::SsmSim;

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The binary's moto server (started, and installed if needed, on first use).
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(|| Moto::start().expect("moto's server must start (see test-emulators)"))
}

/// SDK settings pointed at `endpoint`, with dummy credentials.
pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    test_emulators::aws::sdk_config(endpoint).await
}

/// Everything one test needs; the SSM emulator stops when this drops.
pub struct Env {
    pub sim: SsmSim,
    pub config: Ec2Config,
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
}

impl Env {
    /// A runner over this environment's clients and `config`.
    pub fn runner_with(&self, config: Ec2Config) -> Ec2Runner {
        Ec2Runner::with_clients(config, self.ec2.clone(), self.ssm.clone(), self.s3.clone())
            .unwrap()
    }

    /// A runner over this environment's clients and config.
    pub fn runner(&self) -> Ec2Runner {
        self.runner_with(self.config.clone())
    }

    /// Instances of this test's owner with the given execution key, not terminated.
    pub async fn live_instances_for(&self, key: &str) -> Vec<String> {
        let out = self
            .ec2
            .describe_instances()
            .filters(filter("tag:orchestrator:managed-by", &self.config.owner))
            .filters(filter("tag:orchestrator:execution-key", key))
            .filters(filter("instance-state-name", "pending"))
            .filters(filter("instance-state-name", "running"))
            .send()
            .await
            .unwrap();
        live(out)
    }

    /// Every non-terminated instance of this test's owner.
    pub async fn live_instances(&self) -> Vec<String> {
        let out = self
            .ec2
            .describe_instances()
            .filters(filter("tag:orchestrator:managed-by", &self.config.owner))
            .send()
            .await
            .unwrap();
        live(out)
    }

    /// Tags of one instance.
    pub async fn tags_of(&self, id: &str) -> std::collections::BTreeMap<String, String> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.tags())
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// State name of one instance.
    pub async fn state_of(&self, id: &str) -> String {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
            })
            .next()
            .unwrap_or_default()
    }
}

fn filter(name: &str, value: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(name)
        .values(value)
        .build()
}

fn live(out: aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput) -> Vec<String> {
    let mut ids: Vec<String> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str())
                .unwrap_or("");
            !matches!(state, "terminated" | "shutting-down")
        })
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// A fresh environment: moto (shared), an SSM emulator, a new bucket, and
/// a config whose owner is unique to `name`.
pub async fn env(name: &str) -> Env {
    let moto = moto();
    let sdk = sdk(&moto.endpoint()).await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let s3 = runner_aws::s3_client(&sdk, true);
    let unique = format!("{name}-{:08x}", fastrand_u32());
    let bucket = format!("orch-{}", unique.replace('_', "-"));
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let image = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .expect("moto lists AMIs");
    let bin = test_emulators::venv_bin().unwrap();
    let mut script_env = moto.env();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    script_env.push(("PATH".to_string(), path));
    let sim = SsmSim::start(script_env).await.unwrap();
    let ssm_sdk = self::sdk(&sim.endpoint()).await;
    let ssm = aws_sdk_ssm::Client::new(&ssm_sdk);
    let config: Ec2Config = serde_json::from_value(serde_json::json!({
        "bucket": bucket,
        "image_id": image,
        "instance_type": "t3.micro",
        "owner": format!("orch-test-{unique}"),
        "force_path_style": true,
        "poll_initial_ms": 50,
        "poll_max_ms": 250,
        "live_log_interval_seconds": 1,
        "upload_margin_seconds": 60,
        "provision_wait_seconds": 60,
    }))
    .unwrap();
    Env {
        sim,
        config,
        ec2,
        s3,
        ssm,
    }
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

pub fn sh(script: &str) -> TestPayload {
    TestPayload::new(["sh", "-c", script]).with_name("sh")
}

pub fn bench() -> BenchSpec {
    BenchSpec::default()
}

pub fn invalid_bench() -> BenchSpec {
    BenchSpec::new().with_backend(serde_json::json!({"instance_type": "not a type"}))
}

pub fn ctx(key: &str) -> runner_core::RunContext {
    runner_core::RunContext::new(format!("{key}.1"), format!("corr-{key}")).with_execution_key(key)
}
