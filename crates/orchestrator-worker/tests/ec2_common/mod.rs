//! Set-up shared by the worker's ec2 tests: moto (EC2, S3) with one
//! bucket, an AMI id it knows, and the SSM agent emulator running scripts
//! with the venv's AWS CLI pointed at moto.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub struct Ec2Emulators {
    pub moto: test_emulators::Moto,
    pub sim: test_emulators::ssm::SsmSim,
    pub sdk: aws_config::SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub ec2: aws_sdk_ec2::Client,
    /// An image id moto accepts.
    pub image: String,
}

/// Start moto and the SSM emulator; create `bucket`.
pub async fn start(bucket: &str) -> Ec2Emulators {
    let moto = test_emulators::Moto::start().unwrap();
    let sdk = test_emulators::aws::sdk_config(&moto.endpoint()).await;
    let s3 = runner_aws::s3_client(&sdk, true);
    s3.create_bucket().bucket(bucket).send().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let image = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap()
        .images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let bin = test_emulators::venv_bin().unwrap();
    let mut script_env = moto.env();
    script_env.push((
        "PATH".into(),
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    ));
    let sim = test_emulators::ssm::SsmSim::start(script_env)
        .await
        .unwrap();
    Ec2Emulators {
        moto,
        sim,
        sdk,
        s3,
        ec2,
        image,
    }
}

impl Ec2Emulators {
    /// Every key in `bucket`.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        self.s3
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// One object's bytes.
    pub async fn body(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec()
    }
}
