//! Secret references in a payload's env, resolved by the worker where the
//! test runs and never stored: `{secret: {env: NAME}}` (the worker's
//! environment), `{secret: {file: PATH}}`, `{secret: {aws_secretsmanager:
//! ID, key: K}}` and `{secret: {aws_ssm_parameter: NAME}}` (read with the
//! worker's AWS credentials, the SDK's standard chain) here; `{secret:
//! {kubernetes: {name, key}}}` is left for the eks backend, which hands it
//! to the kubelet as a `secretKeyRef`. A queued task must not carry a
//! literal secret value ([`refuse_literals`]).

use runner_core::{EnvVar, ErrorKind, TestPayload};

use crate::invalid::Invalid;

/// The largest secret file read.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A reference that did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret for `payload.env.{var}` ({source_desc}): {message}")]
pub struct SecretError {
    /// The variable.
    pub var: String,
    /// The source, as `env NAME` or `file PATH`.
    pub source_desc: String,
    /// What went wrong.
    pub message: String,
    /// Permanent (not found, access denied) or transient (a timeout).
    pub kind: ErrorKind,
}

/// Refuse literal secret values in a task that will be stored (queued,
/// batched, replayed): show how to reference them instead.
pub fn refuse_literals(payload: &TestPayload) -> Result<(), Invalid> {
    for (name, value) in &payload.env {
        if value.is_literal_secret() {
            return Err(Invalid {
                field: format!("payload.env.{name}"),
                message: format!(
                    "a literal secret would be stored in the queue; reference it instead, \
                     e.g. `{name}: {{secret: {{env: {name}}}}}` (read from the worker's environment) \
                     or `{name}: {{secret: {{file: /run/secrets/{}}}}}`",
                    name.to_ascii_lowercase()
                ),
            });
        }
        if let Some(reference) = value.reference() {
            reference.check().map_err(|message| Invalid {
                field: format!("payload.env.{name}.secret"),
                message,
            })?;
        }
    }
    Ok(())
}

/// Check the references' shape (exactly one source), for `run` too.
pub fn check_references(payload: &TestPayload, runner_type: &str) -> Result<(), Invalid> {
    for (name, value) in &payload.env {
        let Some(reference) = value.reference() else {
            continue;
        };
        let field = format!("payload.env.{name}.secret");
        reference.check().map_err(|message| Invalid {
            field: field.clone(),
            message,
        })?;
        if reference.kubernetes.is_some() && runner_type != "eks" {
            return Err(Invalid {
                field,
                message: "kubernetes secrets are read by the eks backend only".into(),
            });
        }
        if !cfg!(feature = "aws-secrets")
            && (reference.aws_secretsmanager.is_some() || reference.aws_ssm_parameter.is_some())
        {
            return Err(Invalid {
                field,
                message: "this worker was built without the `aws-secrets` feature; \
                          use an env or file reference"
                    .into(),
            });
        }
    }
    Ok(())
}

/// The payload with every env and file reference replaced by its value,
/// marked secret (so every redactor built from it masks it). Kubernetes
/// references stay for the eks backend. AWS references are read with one
/// set of clients built on first use from the SDK's standard settings.
pub async fn resolve(payload: &TestPayload) -> Result<TestPayload, SecretError> {
    let mut resolved = payload.clone();
    for (name, value) in resolved.env.iter_mut() {
        let Some(reference) = value.reference().cloned() else {
            continue;
        };
        let fail = |message: String, kind: ErrorKind| SecretError {
            var: name.clone(),
            source_desc: reference.describe(),
            message,
            kind,
        };
        let secret = if let Some(var) = &reference.env {
            match std::env::var(var) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(fail(
                        "not set in the worker's environment".into(),
                        ErrorKind::Permanent,
                    ));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(fail("not valid UTF-8".into(), ErrorKind::Permanent));
                }
            }
        } else if let Some(path) = &reference.file {
            read_file(path).map_err(|(m, k)| fail(m, k))?
        } else if reference.aws_secretsmanager.is_some() || reference.aws_ssm_parameter.is_some() {
            aws::resolve(&reference)
                .await
                .map_err(|(m, k)| fail(m, k))?
        } else {
            continue;
        };
        if secret.contains('\0') {
            return Err(fail("contains a NUL byte".into(), ErrorKind::Permanent));
        }
        *value = EnvVar::Detailed {
            value: secret,
            secret: true,
        };
    }
    Ok(resolved)
}

/// AWS Secrets Manager and SSM parameters, with the worker's credentials.
#[cfg(feature = "aws-secrets")]
mod aws {
    use runner_aws::SecretClients;
    use runner_core::{ErrorKind, SecretRef};
    use tokio::sync::OnceCell;

    static CLIENTS: OnceCell<SecretClients> = OnceCell::const_new();

    pub(super) async fn resolve(reference: &SecretRef) -> Result<String, (String, ErrorKind)> {
        let clients = CLIENTS
            .get_or_init(|| async { SecretClients::new(&runner_aws::load_sdk_config(None).await) })
            .await;
        let got = if let Some(id) = &reference.aws_secretsmanager {
            clients.secretsmanager(id, reference.key.as_deref()).await
        } else if let Some(name) = &reference.aws_ssm_parameter {
            clients.ssm_parameter(name).await
        } else {
            return Err(("not an AWS reference".into(), ErrorKind::Permanent));
        };
        got.map_err(|e| {
            let hint = match e.kind {
                ErrorKind::Permanent => " (check the name and the worker's IAM permissions)",
                _ => "",
            };
            (format!("{}{hint}", e.message), e.kind)
        })
    }
}

#[cfg(not(feature = "aws-secrets"))]
mod aws {
    use runner_core::{ErrorKind, SecretRef};

    pub(super) async fn resolve(_: &SecretRef) -> Result<String, (String, ErrorKind)> {
        Err((
            "this worker was built without the `aws-secrets` feature".into(),
            ErrorKind::Permanent,
        ))
    }
}

fn read_file(path: &str) -> Result<String, (String, ErrorKind)> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                ErrorKind::Permanent
            }
            _ => ErrorKind::Transient,
        };
        (format!("cannot open: {e}"), kind)
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (format!("cannot read: {e}"), ErrorKind::Transient))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err((
            format!("larger than {MAX_SECRET_BYTES} bytes"),
            ErrorKind::Permanent,
        ));
    }
    let mut text = String::from_utf8(bytes)
        .map_err(|_| ("not valid UTF-8".to_owned(), ErrorKind::Permanent))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(yaml: &str) -> TestPayload {
        TestPayload::from_yaml(yaml).unwrap()
    }

    #[tokio::test]
    async fn references_resolve_and_are_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let p = payload(&format!(
            "command: [x]\nenv:\n  A: {{secret: {{file: '{}'}}}}\n  B: {{secret: {{env: PATH}}}}\n  C: plain\n",
            file.display()
        ));
        check_references(&p, "local").unwrap();
        refuse_literals(&p).unwrap();
        let r = resolve(&p).await.unwrap();
        assert_eq!(r.env["A"].value(), "from-a-file");
        assert!(r.env["A"].is_secret() && r.env["B"].is_secret());
        assert_eq!(r.env["B"].value(), std::env::var("PATH").unwrap());
        assert_eq!(r.redactor().redact("x from-a-file y"), "x *** y");
        // The stored form keeps the reference only.
        let stored = serde_json::to_string(&p).unwrap();
        assert!(!stored.contains("from-a-file"), "{stored}");
    }

    #[tokio::test]
    async fn a_missing_source_is_permanent_and_names_the_variable() {
        let p = payload("command: [x]\nenv: {T: {secret: {env: NO_SUCH_VARIABLE_XYZ}}}\n");
        let err = resolve(&p).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.to_string().contains("payload.env.T"), "{err}");
        assert!(err.to_string().contains("NO_SUCH_VARIABLE_XYZ"), "{err}");
        let p = payload("command: [x]\nenv: {T: {secret: {file: /no/such/file}}}\n");
        assert_eq!(resolve(&p).await.unwrap_err().kind, ErrorKind::Permanent);
    }

    #[test]
    fn literal_secrets_are_refused_for_the_queue_with_a_hint() {
        let p = payload("command: [x]\nenv: {TOK: {value: s3cr3t, secret: true}}\n");
        let err = refuse_literals(&p).unwrap_err();
        assert_eq!(err.field, "payload.env.TOK");
        assert!(
            err.message.contains("{secret: {env: TOK}}"),
            "{}",
            err.message
        );
        assert!(!err.to_string().contains("s3cr3t"));
        let two = payload("command: [x]\nenv: {T: {secret: {env: A, file: /b}}}\n");
        assert_eq!(
            refuse_literals(&two).unwrap_err().field,
            "payload.env.T.secret"
        );
        let k8s = payload("command: [x]\nenv: {T: {secret: {kubernetes: {name: s, key: k}}}}\n");
        assert!(check_references(&k8s, "local").is_err());
        check_references(&k8s, "eks").unwrap();
    }
}
