//! Documents from input (configs, benches, payloads, task bodies) are
//! checked before a parser sees them: a size limit, a leading UTF-8
//! byte-order mark skipped, invalid UTF-8 refused with its byte offset, and
//! YAML nesting bounded, so a hostile document is refused in milliseconds.
//! Alias expansion ("billion laughs") is bounded by the YAML parser itself.

use std::io::Read;
use std::path::Path;

/// The default limit on a document's size: 1 MiB.
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;

/// The environment variable that raises (or lowers) [`DEFAULT_MAX_BYTES`].
pub const MAX_BYTES_ENV: &str = "ORCHESTRATOR_MAX_DOCUMENT_BYTES";

/// The deepest nesting of mappings and sequences a document may have. The
/// YAML deserializer refuses more than 128 too, but only after reading the
/// whole document, which takes seconds for a deep one.
pub const MAX_DEPTH: usize = 64;

/// A document refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// It could not be read.
    #[error("cannot read {origin}: {message}")]
    Io {
        /// The file.
        origin: String,
        /// The OS error.
        message: String,
    },
    /// It is larger than the limit.
    #[error(
        "{origin} is larger than the limit of {limit} bytes (set {MAX_BYTES_ENV} to change the limit)"
    )]
    TooLarge {
        /// The file or body.
        origin: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// It is not UTF-8.
    #[error("{origin} is not valid UTF-8 at byte {offset}")]
    Encoding {
        /// The file or body.
        origin: String,
        /// The offset of the first bad byte (after a byte-order mark).
        offset: usize,
    },
    /// It nests too deeply.
    #[error("{origin} is nested more than {limit} levels deep at line {line}")]
    TooDeep {
        /// The file or body.
        origin: String,
        /// The line where the limit was passed.
        line: usize,
        /// The limit.
        limit: usize,
    },
}

/// The size limit in force: [`MAX_BYTES_ENV`] when set to a number, else
/// [`DEFAULT_MAX_BYTES`].
pub fn max_bytes() -> usize {
    std::env::var(MAX_BYTES_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_BYTES)
}

/// Read a YAML (or JSON) file: size, encoding and nesting checked.
pub fn read_yaml(path: &Path) -> Result<String, DocError> {
    let origin = path.display().to_string();
    let limit = max_bytes();
    let file = std::fs::File::open(path).map_err(|e| DocError::Io {
        origin: origin.clone(),
        message: e.to_string(),
    })?;
    let mut bytes = Vec::new();
    // One byte past the limit tells "too large" without reading a huge file.
    file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| DocError::Io {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
    let text = decode(&bytes, &origin, limit)?;
    check_yaml(text, &origin)?;
    Ok(text.to_owned())
}

/// Check a document's bytes: the size limit, a leading byte-order mark
/// skipped, and UTF-8 with the offset of the first bad byte.
pub fn decode<'a>(bytes: &'a [u8], origin: &str, limit: usize) -> Result<&'a str, DocError> {
    if bytes.len() > limit {
        return Err(DocError::TooLarge {
            origin: origin.to_owned(),
            limit,
        });
    }
    let (bom, bytes) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (3, rest),
        None => (0, bytes),
    };
    std::str::from_utf8(bytes).map_err(|e| DocError::Encoding {
        origin: origin.to_owned(),
        offset: bom + e.valid_up_to(),
    })
}

/// Skip a leading byte-order mark of a text already decoded.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Refuse YAML that nests deeper than [`MAX_DEPTH`]: flow collections
/// (`[`, `{`), block sequence entries on one line (`- - -`), and indented
/// blocks. A conservative scan: quoted scalars, comments and block scalars
/// (`|`, `>`) are skipped; it only refuses what the parser would refuse
/// anyway, but in one linear pass.
pub fn check_yaml(text: &str, origin: &str) -> Result<(), DocError> {
    let too_deep = |line: usize| DocError::TooDeep {
        origin: origin.to_owned(),
        line,
        limit: MAX_DEPTH,
    };
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    // Inside a block scalar: lines indented deeper than this are its text.
    let mut block_scalar: Option<usize> = None;
    let mut quote: Option<char> = None;
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let indent = line.len() - line.trim_start_matches(' ').len();
        let body = &line[indent..];
        if let Some(parent) = block_scalar {
            if body.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut depth_here = 0usize;
        if quote.is_none() && flow == 0 && !body.is_empty() && !body.starts_with('#') {
            while indents.last().is_some_and(|top| *top > indent) {
                indents.pop();
            }
            if indents.last().is_none_or(|top| *top < indent) {
                indents.push(indent);
            }
            // `- - - x`: each dash opens a sequence on this line.
            let mut rest = body;
            while let Some(r) = rest
                .strip_prefix("- ")
                .or_else(|| rest.strip_prefix("? "))
                .or_else(|| (rest == "-").then_some(""))
            {
                depth_here += 1;
                rest = r.trim_start_matches(' ');
            }
            if indents.len() + depth_here > MAX_DEPTH {
                return Err(too_deep(line_no));
            }
        }
        let mut chars = body.chars().peekable();
        let mut prev = ' ';
        while let Some(c) = chars.next() {
            match quote {
                Some('"') => match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => quote = None,
                    _ => {}
                },
                Some(q) => {
                    if c == q {
                        if chars.peek() == Some(&q) {
                            chars.next();
                        } else {
                            quote = None;
                        }
                    }
                }
                None => match c {
                    '#' if prev == ' ' || prev == '\t' => break,
                    '"' | '\'' if matches!(prev, ' ' | '\t' | '[' | '{' | ',' | ':' | '-') => {
                        quote = Some(c)
                    }
                    '[' | '{' => {
                        flow += 1;
                        if flow + indents.len() + depth_here > MAX_DEPTH {
                            return Err(too_deep(line_no));
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
        if quote.is_none() && flow == 0 {
            let trimmed = body.split(" #").next().unwrap_or(body).trim_end();
            let last = trimmed.rsplit([' ', '\t']).next().unwrap_or("");
            if (last.starts_with('|') || last.starts_with('>'))
                && last[1..]
                    .chars()
                    .all(|c| matches!(c, '-' | '+' | '0'..='9'))
                && trimmed.len() > last.len()
            {
                block_scalar = Some(indent);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_and_block_nesting_are_refused_fast() {
        let started = std::time::Instant::now();
        let flow = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            check_yaml(&flow, "f"),
            Err(DocError::TooDeep { line: 1, .. })
        ));
        let dashes = "- ".repeat(300_000);
        assert!(matches!(
            check_yaml(&dashes, "f"),
            Err(DocError::TooDeep { .. })
        ));
        let mut indented = String::new();
        for i in 0..100 {
            indented += &format!("{}k{i}:\n", " ".repeat(i));
        }
        assert!(matches!(
            check_yaml(&indented, "f"),
            Err(DocError::TooDeep { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn ordinary_documents_pass() {
        for text in [
            "type: local\nbackend: {root: /tmp, list: [1, [2, 3]]}\n",
            "a:\n  b:\n    - c\n    - d: [\"[[[[\", '{{{{']\n",
            "script: |\n  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nnext: 1\n",
            "# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nx: 1\n",
            "- - - a\n- b\n",
        ] {
            check_yaml(text, "t").unwrap();
        }
    }

    #[test]
    fn bom_is_skipped_and_bad_utf8_has_its_offset() {
        assert_eq!(decode(b"\xEF\xBB\xBFtype: x", "f", 100).unwrap(), "type: x");
        let err = decode(b"ab\xffcd", "f", 100).unwrap_err();
        assert_eq!(err.to_string(), "f is not valid UTF-8 at byte 2");
        assert!(matches!(
            decode(b"abcdef", "f", 3),
            Err(DocError::TooLarge { .. })
        ));
    }
}
