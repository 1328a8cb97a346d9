//! Scrubbing of secret values from text before it reaches a log or artifact.

use std::borrow::Cow;
use std::sync::Arc;

/// Replaces every occurrence of a set of secret values with `***`.
///
/// Cheap to clone; an empty redactor returns its input untouched.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Arc<Vec<String>>,
}

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

impl Redactor {
    /// A redactor for these values. Empty values are ignored (they would match everywhere).
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .flat_map(|s| forms(&s))
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            secrets: Arc::new(secrets),
        }
    }

    /// Whether there is anything to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The length in bytes of the longest secret (0 when empty).
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, String::len)
    }

    /// `bytes` with every secret replaced, for binary-safe file copies.
    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for secret in self.secrets.iter() {
            let needle = secret.as_bytes();
            if needle.len() > out.len() {
                continue;
            }
            let mut result = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(needle) {
                    result.extend_from_slice(REDACTED.as_bytes());
                    i += needle.len();
                } else {
                    result.push(out[i]);
                    i += 1;
                }
            }
            out = result;
        }
        out
    }

    /// `text` with every secret replaced.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
        out
    }
}

/// The shortest line of a multi-line secret that is masked on its own
/// (shorter ones, like a PEM's last line, would mask ordinary text).
const MIN_LINE: usize = 8;

/// A secret and the forms it is commonly printed in: each line of a
/// multi-line secret (logs are read line by line, and a line may be cut),
/// base64 (standard, unpadded and URL-safe) and URL-encoded.
fn forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut out = vec![secret.to_owned()];
    if secret.contains('\n') {
        out.extend(
            secret
                .lines()
                .map(|l| l.trim_end_matches('\r').trim())
                .filter(|l| l.len() >= MIN_LINE)
                .map(str::to_owned),
        );
    }
    let bytes = secret.as_bytes();
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        out.push(engine.encode(bytes));
    }
    let encoded = percent_encode(secret);
    if encoded != secret {
        out.push(encoded);
    }
    out
}

/// `text` URL-encoded: every byte but the unreserved ones as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_longest_secret_first() {
        let r = Redactor::new(["abc", "abcdef", ""]);
        assert_eq!(r.redact("x abcdef y abc"), "x *** y ***");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn multi_line_and_encoded_forms_are_masked() {
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF\nAASCBKcwggSjAgEAAoIBAQC7\n-----END KEY-----";
        let r = Redactor::new([pem, "p@ss word/1"]);
        // Line by line, as a log shows it.
        for line in pem.lines() {
            assert!(!r.redact(line).contains("MIIEvQ"), "{line}");
        }
        assert_eq!(r.redact("AASCBKcwggSjAgEAAoIBAQC7"), "***");
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("p@ss word/1");
        assert_eq!(r.redact(&format!("auth {b64}")), "auth ***");
        assert_eq!(r.redact("u=p%40ss%20word%2F1&x"), "u=***&x");
    }
}
