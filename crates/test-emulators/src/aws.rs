//! AWS SDK settings pointed at an emulator: its endpoint, the emulators'
//! region and dummy credentials, so no real account or profile is read.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::Credentials;

/// SDK settings for `endpoint` (moto's, or any emulator's).
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(crate::REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "test-emulators",
        ))
        .load()
        .await
}

/// An S3 client for `endpoint` with path-style addressing (emulators do
/// not serve bucket subdomains on 127.0.0.1).
pub async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let sdk = sdk_config(endpoint).await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An SQS client for `endpoint`.
pub async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config(endpoint).await)
}
