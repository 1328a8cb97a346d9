//! Reading executions back: the paged history, one record, its event
//! stream, cancel, and an artifact's bytes.

use std::collections::HashMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::SharedState;
use crate::api::auth::Scope;
use crate::api::problem::{ApiResult, Problem};
use crate::store::{ExecState, ExecutionRecord, HistoryFilter, RecordedArtifact};

/// A page cursor: the creation time of the last record seen and how many
/// records of that very millisecond were seen (the store orders by time,
/// then key, so they are the first ones at that time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The creation time (ms).
    pub ms: u64,
    /// Records at `ms` already returned.
    pub n: usize,
}

impl Cursor {
    /// `MS-N`.
    pub fn encode(self) -> String {
        format!("{}-{}", self.ms, self.n)
    }

    /// Parse `MS-N`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, n) = text.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            n: n.parse().ok()?,
        })
    }
}

/// A page of records matching `filter` (and `keep`), after `cursor`.
pub async fn page(
    store: &dyn crate::store::Store,
    filter: &HistoryFilter,
    mut cursor: Option<Cursor>,
    limit: usize,
    keep: impl Fn(&ExecutionRecord) -> bool,
    filtered: bool,
) -> Result<(Vec<ExecutionRecord>, Option<Cursor>), crate::store::StoreError> {
    let mut out = Vec::new();
    for _round in 0..20 {
        let (before, skip) = match cursor {
            Some(c) => (Some(c.ms.saturating_add(1)), c.n),
            None => (None, 0),
        };
        let want = limit - out.len();
        let fetch = if filtered { want.max(200) } else { want } + skip;
        let got = store
            .executions(&HistoryFilter {
                before_ms: before,
                limit: fetch,
                ..filter.clone()
            })
            .await?;
        let exhausted = got.len() < fetch;
        for record in got.into_iter().skip(skip) {
            cursor = Some(match cursor {
                Some(c) if c.ms == record.created_ms => Cursor {
                    ms: c.ms,
                    n: c.n + 1,
                },
                _ => Cursor {
                    ms: record.created_ms,
                    n: 1,
                },
            });
            if keep(&record) {
                out.push(record);
                if out.len() == limit {
                    return Ok((out, if exhausted { None } else { cursor }));
                }
            }
        }
        if exhausted {
            return Ok((out, None));
        }
    }
    Ok((out, cursor))
}

/// The query of `GET /v1/executions`, checked (errors name the parameter).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// The store's filter.
    pub filter: HistoryFilter,
    /// Only this bench (filtered here; the store has no bench index).
    pub bench: Option<String>,
    /// Where to go on.
    pub cursor: Option<Cursor>,
    /// The page size.
    pub limit: usize,
}

/// Parse the query of `GET /v1/executions`.
pub fn list_query(q: &HashMap<String, String>, max: usize) -> Result<ListQuery, Problem> {
    let mut out = ListQuery {
        limit: 50.min(max),
        ..ListQuery::default()
    };
    let bad = |name: &str, msg: String| Problem::invalid(name, msg).with_field(name);
    for (name, value) in q {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "correlation_id" => out.filter.correlation_id = Some(value.to_owned()),
            "runner" => out.filter.runner = Some(value.to_owned()),
            "bench" => out.bench = Some(value.to_owned()),
            "state" => {
                out.filter.state = Some(ExecState::parse(value).ok_or_else(|| {
                    let known: Vec<&str> = ExecState::ALL.iter().map(|s| s.as_str()).collect();
                    bad(
                        "state",
                        format!("unknown state `{value}`; known: {}", known.join(", ")),
                    )
                })?)
            }
            "since_ms" => {
                out.filter.since_ms =
                    Some(value.parse().map_err(|_| {
                        bad("since_ms", "must be milliseconds since the epoch".into())
                    })?)
            }
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad("limit", "must be a number".into()))?;
                if n == 0 || n > max {
                    return Err(bad("limit", format!("must be 1..={max}")));
                }
                out.limit = n;
            }
            "cursor" => {
                out.cursor = Some(
                    Cursor::parse(value)
                        .ok_or_else(|| bad("cursor", "not a cursor this server gave".into()))?,
                )
            }
            other => {
                return Err(bad(
                    other,
                    format!(
                        "unknown parameter `{other}` (correlation_id, runner, bench, state, since_ms, limit, cursor)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

pub(super) async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let query = list_query(&q, state.section.max_page_size)?;
    let bench = query.bench.clone();
    let (records, next) = page(
        &*state.backends.store,
        &query.filter,
        query.cursor,
        query.limit,
        |r| bench.as_ref().is_none_or(|b| &r.new.bench == b),
        bench.is_some(),
    )
    .await?;
    Ok(Json(json!({
        "version": 1,
        "executions": records,
        "next_cursor": next.map(Cursor::encode),
    }))
    .into_response())
}

/// The record of `key`, or 404.
pub async fn record_of(
    state: &crate::api::ApiState,
    key: &str,
) -> Result<ExecutionRecord, Problem> {
    state
        .backends
        .store
        .execution(key)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no execution with key `{key}`")))
}

pub(super) async fn one(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let record = record_of(&state, &key).await?;
    Ok(Json(json!({"version": 1, "execution": record})).into_response())
}

// ---- cancel ------------------------------------------------------------

pub(super) async fn cancel(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    let caller = state.authorize(&headers, Scope::Submit)?;
    let record = record_of(&state, &key).await?;
    if !caller.admin && record.new.submitted_by != caller.submitter() {
        return Err(Problem::forbidden(format!(
            "execution `{key}` was submitted by `{}`; cancelling another's needs the `admin` scope",
            record.new.submitted_by
        )));
    }
    let outcome = crate::results::cancel(&state.backends, &key, &caller.submitter()).await?;
    tracing::info!(token = %caller.id, %key, ?outcome, "cancel");
    Ok(Json(json!({"version": 1, "key": key, "outcome": outcome})).into_response())
}

// ---- artifacts ---------------------------------------------------------

/// Stream `artifact`: its bytes with its recorded sha256 as `x-sha256`.
pub async fn artifact_response(artifact: &RecordedArtifact) -> Result<Response, Problem> {
    let (path, cleanup) = if let Some(path) = artifact.uri.strip_prefix("file://") {
        (std::path::PathBuf::from(path), None)
    } else if artifact.uri.starts_with("s3://") {
        // Through a temporary file, checked against its sha256 on the way.
        let dir = std::env::temp_dir().join(format!(
            "orchestrator-api-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let path = crate::results::fetch_artifact(artifact, &dir)
            .await
            .map_err(|e| Problem::new(StatusCode::BAD_GATEWAY, "artifact-unavailable", e))?;
        (path, Some(dir))
    } else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "not-downloadable",
            format!(
                "artifact `{}` is at {}, which this server cannot read",
                artifact.name, artifact.uri
            ),
        ));
    };
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        Problem::new(
            StatusCode::GONE,
            "artifact-gone",
            format!("artifact `{}` cannot be read: {e}", artifact.name),
        )
    })?;
    if let Some(dir) = cleanup {
        // Unlinked now; the open file stays readable until it is closed.
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    let kind = if artifact.kind == "log" {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(artifact.size));
    if let Ok(v) = HeaderValue::from_str(&artifact.sha256) {
        h.insert("x-sha256", v);
    }
    let file_name: String = artifact
        .name
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

pub(super) async fn artifact(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path((key, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let record = record_of(&state, &key).await?;
    let artifact = record
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            Problem::not_found(format!("execution `{key}` has no artifact `{name}`"))
                .with_field("name")
        })?;
    artifact_response(artifact).await
}

/// `GET /v1/executions/{key}/events`: the execution's state changes as
/// Server-Sent Events ([`crate::api::sse::stream`]), from the entry after
/// `Last-Event-ID` on.
pub(super) async fn events(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    // 404 before the stream starts.
    record_of(&state, &key).await?;
    let sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(0, |id| id + 1);
    Ok(crate::api::sse::stream(state, key, sent).into_response())
}
