//! Percent-encoding of URL paths and query values, for the CLI's API client
//! and the dashboard's links alike (RFC 3986: everything but the unreserved
//! characters is encoded).

/// Percent-encode one URL path segment or query value (`/` too).
pub fn encode_component(text: &str) -> String {
    encode(text, false)
}

/// Percent-encode a URL path, keeping its `/`.
pub fn encode_path(text: &str) -> String {
    encode(text, true)
}

fn encode(segment: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(encode_component("a b/c?d=é~"), "a%20b%2Fc%3Fd%3D%C3%A9~");
        assert_eq!(encode_path("logs/a b.log"), "logs/a%20b.log");
    }
}
