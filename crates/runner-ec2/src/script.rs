//! The bash script SSM runs on the instance for one test.
//!
//! It makes a fresh work directory, fetches the environment file and the
//! package from S3, runs the test in its own session with a watchdog for
//! the test's timeout, uploads the growing output every few seconds (the
//! adapter follows it for live logs), then the final output, the
//! artifacts (each with its sha256 as metadata) and `result.json`. A
//! TERM (CancelCommand) kills the test's whole session and still uploads
//! the output. The work directory is removed on exit.
//!
//! Everything the payload supplies is single-quoted; environment values
//! travel in an S3 object, never in the SSM command (whose parameters are
//! kept in the command history).

use base64::Engine;

/// Quote for bash: `'...'` with embedded quotes closed and escaped.
pub fn sq(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// What the script needs to know.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    /// `s3://bucket/prefix/execution/` (ends in `/`).
    pub base: String,
    /// The AWS CLI program.
    pub aws_cli: String,
    /// Fetch and source `env.sh` from `base`.
    pub has_env: bool,
    /// The package URI and its file name.
    pub package: Option<(String, String)>,
    /// Working directory below the package root.
    pub working_dir: Option<String>,
    /// The command line to run (already a shell command).
    pub command: String,
    /// The test's own time limit.
    pub timeout_seconds: u64,
    /// Live output upload interval.
    pub live_interval_seconds: u64,
    /// Artifact globs, relative to the working directory.
    pub artifacts: Vec<String>,
}

/// The command line for a payload: joined through the shell, or argv quoted.
pub fn command_line(command: &[String], shell: bool) -> String {
    if shell {
        command.join(" ")
    } else {
        let quoted: Vec<String> = command.iter().map(|a| sq(a)).collect();
        format!("exec {}", quoted.join(" "))
    }
}

/// The script text.
pub fn render(spec: &ScriptSpec) -> String {
    let mut s = String::new();
    let line = |s: &mut String, text: &str| {
        s.push_str(text);
        s.push('\n');
    };
    line(&mut s, "set -u");
    line(&mut s, &format!("ORCH_S3={}", sq(&spec.base)));
    line(&mut s, &format!("ORCH_AWS={}", sq(&spec.aws_cli)));
    line(&mut s, &format!("ORCH_TIMEOUT={}", spec.timeout_seconds));
    line(
        &mut s,
        &format!("ORCH_INTERVAL={}", spec.live_interval_seconds),
    );
    s.push_str(
        r#"ORCH_HOME=$(mktemp -d "${TMPDIR:-/tmp}/orch-XXXXXX") || exit 70
ORCH_LOG="$ORCH_HOME/output.log"
: > "$ORCH_LOG"
ORCH_PID=
orch_up() { "$ORCH_AWS" s3 cp --quiet --only-show-errors "$@"; }
orch_result() {
  printf '%s\n' "$1" > "$ORCH_HOME/result.json"
  orch_up "$ORCH_HOME/result.json" "${ORCH_S3}result.json"
}
orch_fail() {
  echo "orchestrator: $1" >> "$ORCH_LOG"
  orch_up "$ORCH_LOG" "${ORCH_S3}output.log"
  orch_result "{\"error\": \"$1\"}"
  exit 70
}
orch_stop() {
  if [ -n "$ORCH_PID" ]; then
    kill -TERM -- "-$ORCH_PID" 2>/dev/null
    sleep 2
    kill -KILL -- "-$ORCH_PID" 2>/dev/null
  fi
  orch_up "$ORCH_LOG" "${ORCH_S3}output.log"
  exit 143
}
trap orch_stop TERM INT HUP
trap 'rm -rf "$ORCH_HOME"' EXIT
mkdir -p "$ORCH_HOME/work" && cd "$ORCH_HOME/work" || orch_fail "cannot make the work directory"
"#,
    );
    if spec.has_env {
        s.push_str(
            r#"orch_up "${ORCH_S3}env.sh" "$ORCH_HOME/env.sh" || orch_fail "cannot fetch the environment"
set -a
. "$ORCH_HOME/env.sh" || orch_fail "cannot read the environment"
set +a
rm -f "$ORCH_HOME/env.sh"
"$ORCH_AWS" s3 rm --quiet --only-show-errors "${ORCH_S3}env.sh" >/dev/null 2>&1 || true
"#,
        );
    }
    if let Some((uri, name)) = &spec.package {
        line(&mut s, &format!("ORCH_PKG=\"$ORCH_HOME/\"{}", sq(name)));
        line(
            &mut s,
            &format!(
                "orch_up {} \"$ORCH_PKG\" || orch_fail \"cannot fetch the package\"",
                sq(uri)
            ),
        );
        s.push_str(
            r#"case "$ORCH_PKG" in
  *.tar.gz|*.tgz) tar -xzf "$ORCH_PKG" || orch_fail "cannot unpack the package" ;;
  *.tar) tar -xf "$ORCH_PKG" || orch_fail "cannot unpack the package" ;;
  *) cp "$ORCH_PKG" . || orch_fail "cannot place the package" ;;
esac
"#,
        );
    }
    if let Some(dir) = &spec.working_dir {
        line(
            &mut s,
            &format!("cd {} || orch_fail \"no working directory\"", sq(dir)),
        );
    }
    line(&mut s, &format!("ORCH_COMMAND={}", sq(&spec.command)));
    s.push_str(
        r#"setsid bash -c "$ORCH_COMMAND" > "$ORCH_LOG" 2>&1 < /dev/null &
ORCH_PID=$!
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$ORCH_TIMEOUT" & s=$!
  wait "$s"
  if kill -0 "$ORCH_PID" 2>/dev/null; then
    touch "$ORCH_HOME/timed-out"
    kill -TERM -- "-$ORCH_PID" 2>/dev/null
    sleep 10
    kill -KILL -- "-$ORCH_PID" 2>/dev/null
  fi ) > /dev/null 2>&1 &
ORCH_WATCHDOG=$!
( n=0; while kill -0 "$ORCH_PID" 2>/dev/null; do sleep 1; n=$((n+1)); if [ "$n" -ge "$ORCH_INTERVAL" ]; then n=0; orch_up "$ORCH_LOG" "${ORCH_S3}output.log"; fi; done ) > /dev/null 2>&1 &
ORCH_UPLOADER=$!
wait "$ORCH_PID"
ORCH_RC=$?
ORCH_PID=
kill "$ORCH_WATCHDOG" 2>/dev/null
# The uploader ends by itself within a second; waiting (not killing) it
# means no older snapshot can land after the final upload below.
wait "$ORCH_UPLOADER" 2>/dev/null
orch_up "$ORCH_LOG" "${ORCH_S3}output.log"
ORCH_TIMED_OUT=false
[ -e "$ORCH_HOME/timed-out" ] && ORCH_TIMED_OUT=true
shopt -s globstar nullglob dotglob
"#,
    );
    if !spec.artifacts.is_empty() {
        let globs: Vec<String> = spec.artifacts.iter().map(|g| glob_word(g)).collect();
        line(&mut s, &format!("for ORCH_F in {}; do", globs.join(" ")));
        s.push_str(
            r#"  if [ -f "$ORCH_F" ] && [ ! -L "$ORCH_F" ]; then
    ORCH_SHA=$(sha256sum "$ORCH_F" | cut -d' ' -f1)
    orch_up "$ORCH_F" "${ORCH_S3}artifacts/${ORCH_F#./}" --metadata "sha256=$ORCH_SHA" || echo "orchestrator: could not upload $ORCH_F" >&2
  fi
done
"#,
        );
    }
    s.push_str(
        r#"orch_result "{\"exit_code\": $ORCH_RC, \"timed_out\": $ORCH_TIMED_OUT}"
exit "$ORCH_RC"
"#,
    );
    s
}

/// A glob as a bash word: literal parts quoted, `*`, `?` and `**` left to
/// expand.
fn glob_word(glob: &str) -> String {
    let mut out = String::new();
    let mut literal = String::new();
    for c in glob.chars() {
        if c == '*' || c == '?' {
            if !literal.is_empty() {
                out.push_str(&sq(&literal));
                literal.clear();
            }
            out.push(c);
        } else {
            literal.push(c);
        }
    }
    if !literal.is_empty() {
        out.push_str(&sq(&literal));
    }
    out
}

/// The SSM `commands` parameter: the script travels base64-encoded (no
/// quoting problems) and is written to a temporary file and run by bash.
pub fn ssm_commands(script: &str) -> Vec<String> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
    vec![
        "ORCH_SCRIPT=$(mktemp \"${TMPDIR:-/tmp}/orch-script-XXXXXX\")".to_string(),
        format!("echo '{encoded}' | base64 -d > \"$ORCH_SCRIPT\""),
        "bash \"$ORCH_SCRIPT\"".to_string(),
        "ORCH_RC=$?".to_string(),
        "rm -f \"$ORCH_SCRIPT\"".to_string(),
        "exit $ORCH_RC".to_string(),
    ]
}

/// An `env.sh` body: `export NAME='value'` per variable. Names must be
/// shell identifiers; the error names the bad one.
pub fn env_file<'a>(vars: impl Iterator<Item = (&'a str, &'a str)>) -> Result<String, String> {
    let mut body = String::new();
    for (name, value) in vars {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{name:?} is not a valid environment variable name"));
        }
        body.push_str(&format!("{name}={}\n", sq(value)));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sq("it's"), r"'it'\''s'");
        assert_eq!(
            command_line(&["echo".into(), "a b".into()], false),
            "exec 'echo' 'a b'"
        );
        assert_eq!(command_line(&["echo".into(), "$X".into()], true), "echo $X");
    }

    #[test]
    fn globs_keep_wildcards_and_quote_the_rest() {
        assert_eq!(glob_word("reports/*.xml"), "'reports/'*'.xml'");
        assert_eq!(glob_word("**/a b.log"), "**'/a b.log'");
    }

    #[test]
    fn env_names_are_checked() {
        assert!(env_file([("OK_1", "v")].into_iter()).is_ok());
        assert!(
            env_file([("1BAD", "v")].into_iter())
                .unwrap_err()
                .contains("1BAD")
        );
        assert!(env_file([("A-B", "v")].into_iter()).is_err());
        assert_eq!(
            env_file([("A", "x'y")].into_iter()).unwrap(),
            "A='x'\\''y'\n"
        );
    }
}
