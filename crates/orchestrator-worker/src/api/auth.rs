//! Bearer tokens with scopes, kept as salted SHA-256 hashes in a file, and
//! a rate limit per token.
//!
//! The file has one token a line, `ID NAME SCOPES SALT HASH` (`#` starts a
//! comment): `SCOPES` a comma list of `read`, `submit`, `admin`; `SALT` 16
//! random bytes in hex; `HASH` the hex SHA-256 of the salt's bytes followed
//! by the secret. A token is `orch_ID_SECRET`: the id finds the line, the
//! hash proves the secret. `orchestrator api token add` appends a line and
//! prints the token once. The file is read again when it changes, so a
//! token is added or revoked without a restart. Tokens are never logged;
//! only their id and name are.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::problem::Problem;

/// What a token may do. `admin` includes `submit`, which includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read executions, the DLQ, workers, leaks, artifacts.
    Read,
    /// Submit executions and cancel its own.
    Submit,
    /// Replay dead letters, cancel anyone's executions.
    Admin,
}

impl Scope {
    /// The name in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }

    /// Parse a name.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "read" => Some(Scope::Read),
            "submit" => Some(Scope::Submit),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// One line of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The public id (in the token, in logs).
    pub id: String,
    /// Who or what holds it (`ci`, `alice`): submissions are recorded as
    /// `api:NAME`.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl TokenEntry {
    /// Whether it may do what `need` allows.
    pub fn allows(&self, need: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= need)
    }
}

/// A caller whose token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id.
    pub id: String,
    /// The token's name.
    pub name: String,
    /// Whether it has `admin`.
    pub admin: bool,
}

impl Caller {
    /// Who submits, as execution records show it.
    pub fn submitter(&self) -> String {
        format!("api:{}", self.name)
    }
}

fn hash(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` bytes from the kernel's random source.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf)
}

/// Parse the tokens file's text; errors name the line.
pub fn parse_tokens(text: &str, origin: &str) -> Result<HashMap<String, TokenEntry>, String> {
    let mut entries = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{origin} line {}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [id, name, scopes, salt, digest] = fields[..] else {
            return Err(format!("{at}: expected `ID NAME SCOPES SALT HASH`"));
        };
        let scopes = scopes
            .split(',')
            .map(|s| {
                Scope::parse(s)
                    .ok_or_else(|| format!("{at}: unknown scope `{s}` (read, submit, admin)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let salt = hex::decode(salt).map_err(|e| format!("{at}: SALT is not hex: {e}"))?;
        let hash: [u8; 32] = hex::decode(digest)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("{at}: HASH is not 64 hex digits"))?;
        if entries
            .insert(
                id.to_owned(),
                TokenEntry {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    scopes,
                    salt,
                    hash,
                },
            )
            .is_some()
        {
            return Err(format!("{at}: token id `{id}` appears twice"));
        }
    }
    Ok(entries)
}

/// Make a new token: the line for the file and the token (shown once).
pub fn new_token(name: &str, scopes: &[Scope]) -> Result<(String, String), String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("token name {name:?} must be one word without `#`"));
    }
    if scopes.is_empty() {
        return Err("a token needs at least one scope (read, submit, admin)".into());
    }
    let id = hex::encode(random_bytes(4)?);
    let secret = hex::encode(random_bytes(24)?);
    let salt = random_bytes(16)?;
    let digest = hash(&salt, &secret);
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let line = format!(
        "{id} {name} {} {} {}",
        scopes.join(","),
        hex::encode(&salt),
        hex::encode(digest)
    );
    Ok((line, format!("orch_{id}_{secret}")))
}

/// The tokens file, read again when it changes.
#[derive(Debug)]
pub struct Tokens {
    path: Option<PathBuf>,
    state: Mutex<(Option<SystemTime>, HashMap<String, TokenEntry>)>,
}

impl Tokens {
    /// Read `path` now (an error names the file and line); `None`: no
    /// tokens at all (every authenticated route answers 401).
    pub fn open(path: Option<&Path>) -> Result<Self, String> {
        let tokens = Self {
            path: path.map(Path::to_path_buf),
            state: Mutex::new((None, HashMap::new())),
        };
        tokens.refresh()?;
        Ok(tokens)
    }

    fn refresh(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        let mut state = self.state.lock().map_err(|_| "tokens lock poisoned")?;
        if state.0 == Some(modified) {
            return Ok(());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        state.1 = parse_tokens(&text, &path.display().to_string())?;
        state.0 = Some(modified);
        Ok(())
    }

    /// The entry `token` proves, if any.
    pub fn check(&self, token: &str) -> Option<TokenEntry> {
        if let Err(e) = self.refresh() {
            // Keep serving with the tokens read last.
            tracing::warn!(error = %e, "cannot re-read the tokens file");
        }
        let rest = token.strip_prefix("orch_")?;
        let (id, secret) = rest.split_once('_')?;
        let state = self.state.lock().ok()?;
        let entry = state.1.get(id)?;
        constant_time_eq(&hash(&entry.salt, secret), &entry.hash).then(|| entry.clone())
    }
}

/// A token bucket per token id.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_minute` requests a minute on average, `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `id`'s bucket; `Err(seconds)` to wait.
    pub fn take(&self, id: &str) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let (level, last) = buckets.entry(id.to_owned()).or_insert((self.burst, now));
        *level =
            (*level + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *level) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The name of the dashboard's session cookie.
pub const COOKIE: &str = "orch_token";

/// The bearer token of a request (the `Authorization` header, or with
/// `cookie` the dashboard's session cookie).
pub fn presented(headers: &HeaderMap, cookie: bool) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if !cookie {
        return None;
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Check a request's token for `need`: 401 without a valid token, 403
/// with one that lacks the scope, 429 over the rate.
pub fn authorize(
    tokens: &Tokens,
    limiter: &RateLimiter,
    headers: &HeaderMap,
    need: Scope,
    cookie: bool,
) -> Result<Caller, Problem> {
    let Some(token) = presented(headers, cookie) else {
        return Err(Problem::unauthorized(
            "send `Authorization: Bearer TOKEN` (see docs/adapters/api.md for making tokens)",
        ));
    };
    let Some(entry) = tokens.check(&token) else {
        return Err(Problem::unauthorized(
            "the token is not valid (unknown or revoked)",
        ));
    };
    if let Err(wait) = limiter.take(&entry.id) {
        let mut p = Problem::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!("token `{}` is over its rate; retry in {wait} s", entry.id),
        );
        p.retry_after = Some(wait);
        return Err(p);
    }
    if !entry.allows(need) {
        return Err(Problem::forbidden(format!(
            "token `{}` ({}) lacks the `{}` scope",
            entry.id,
            entry.name,
            need.as_str()
        )));
    }
    Ok(Caller {
        id: entry.id.clone(),
        name: entry.name.clone(),
        admin: entry.allows(Scope::Admin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_checks_out_and_a_changed_one_does_not() {
        let (line, token) = new_token("ci", &[Scope::Submit]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("# comment\n{line}\n")).unwrap();
        let tokens = Tokens::open(Some(&path)).unwrap();
        let entry = tokens.check(&token).unwrap();
        assert_eq!(entry.name, "ci");
        assert!(entry.allows(Scope::Read) && entry.allows(Scope::Submit));
        assert!(!entry.allows(Scope::Admin));
        let mut bad = token.clone();
        bad.pop();
        bad.push('x');
        assert!(tokens.check(&bad).is_none());
        assert!(tokens.check("orch_nope_x").is_none());
        assert!(
            !line.contains(token.rsplit('_').next().unwrap()),
            "the secret is not stored"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse_tokens("a b read\n", "t").unwrap_err();
        assert!(err.contains("t line 1"), "{err}");
        let err = parse_tokens("a b write 00 00\n", "t").unwrap_err();
        assert!(err.contains("unknown scope `write`"), "{err}");
    }

    #[test]
    fn the_bucket_empties_and_says_how_long_to_wait() {
        let limiter = RateLimiter::new(60, 2);
        assert!(limiter.take("a").is_ok());
        assert!(limiter.take("a").is_ok());
        assert_eq!(limiter.take("a"), Err(1));
        assert!(limiter.take("b").is_ok());
    }
}
