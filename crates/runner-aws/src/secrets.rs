//! Secret references resolved with the caller's AWS credentials: a
//! Secrets Manager secret (optionally one key of its JSON value) and an
//! SSM parameter (decrypted). Errors name the source, never the value;
//! not found and access denied are permanent, throttling and timeouts
//! transient (through [`classify`](crate::classify)).

use runner_core::ErrorKind;

use crate::{AwsError, classify};

/// The clients secret references are read with, built once from one SDK
/// configuration (the worker's credentials and region).
#[derive(Clone, Debug)]
pub struct SecretClients {
    secretsmanager: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
}

impl SecretClients {
    /// Clients from the shared SDK configuration.
    pub fn new(sdk: &aws_config::SdkConfig) -> SecretClients {
        SecretClients {
            secretsmanager: aws_sdk_secretsmanager::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
        }
    }

    /// A Secrets Manager secret's string value, or with `key` that key of
    /// its JSON object (a string, or any other JSON value as its text).
    pub async fn secretsmanager(&self, id: &str, key: Option<&str>) -> Result<String, AwsError> {
        let out = self
            .secretsmanager
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| classify("GetSecretValue", &e))?;
        let Some(text) = out.secret_string() else {
            return Err(AwsError::new(
                ErrorKind::Permanent,
                "the secret has a binary value; only string secrets can go into an environment variable",
            ));
        };
        let Some(key) = key else {
            return Ok(text.to_string());
        };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            // serde_json's message quotes no input, only a position.
            AwsError::new(
                ErrorKind::Permanent,
                format!("`key: {key}` needs a JSON object value, and this one does not parse: {e}"),
            )
        })?;
        match json.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Ok(other.to_string()),
            None => Err(AwsError::new(
                ErrorKind::Permanent,
                format!("the secret's JSON value has no key `{key}`"),
            )),
        }
    }

    /// An SSM parameter's value, decrypted when it is a SecureString.
    pub async fn ssm_parameter(&self, name: &str) -> Result<String, AwsError> {
        let out = self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| classify("GetParameter", &e))?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .ok_or_else(|| AwsError::new(ErrorKind::Permanent, "the parameter has no value"))
    }
}
