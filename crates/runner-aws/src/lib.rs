#![doc = include_str!("../README.md")]

mod errors;
mod redact;
#[cfg(feature = "secrets")]
mod secrets;
mod store;

pub use errors::{AwsError, classify, classify_code};
#[cfg(feature = "secrets")]
pub use secrets::SecretClients;
pub use store::{
    ArtifactStore, MULTIPART_PART_SIZE, MULTIPART_THRESHOLD, ObjectInfo, S3Uri, Uploaded,
};

pub use runner_core::ErrorKind;

/// Connect, read and operation timeouts for every AWS client: no call can
/// hang a worker's loop. The read timeout stays above SQS's 20 s long poll.
pub fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .read_timeout(std::time::Duration::from_secs(30))
        .operation_timeout(std::time::Duration::from_secs(120))
        .build()
}

/// The shared SDK configuration: default credential chain, region and
/// endpoint settings, with `region` overriding the chain's region when set,
/// and [`timeouts`].
pub async fn load_sdk_config(region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    loader.load().await
}

/// An S3 client from the shared configuration; `force_path_style` for
/// emulators and S3-compatible stores that have no virtual-host addressing.
pub fn s3_client(sdk: &aws_config::SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
