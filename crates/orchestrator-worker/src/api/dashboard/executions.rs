//! The executions list and one execution's page: timeline, phase bars,
//! logs, live events and artifact downloads.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, PreEscaped, html};

use super::{caller, error_page, page, seconds, size, state_badge, when};
use crate::api::SharedState;
use crate::api::auth::{Scope, authorize};
use crate::api::problem::Problem;
use crate::store::{ExecState, ExecutionRecord, now_ms};

pub(super) async fn executions(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut query_map = q.clone();
    if query_map.get("limit").is_none_or(|l| l.is_empty()) {
        query_map.insert("limit".into(), "50".into());
    }
    let since_hours = query_map.remove("since_hours");
    let query = match crate::api::routes::list_query(&query_map, state.section.max_page_size) {
        Ok(mut query) => {
            if let Some(h) = since_hours.as_deref().and_then(|h| h.parse::<u64>().ok()) {
                query.filter.since_ms = Some(now_ms().saturating_sub(h * 3_600_000));
            }
            query
        }
        Err(p) => return error_page(Some(&who), &p),
    };
    let bench = query.bench.clone();
    let result = crate::api::routes::page(
        &*state.backends.store,
        &query.filter,
        query.cursor,
        query.limit,
        |r| bench.as_ref().is_none_or(|b| &r.new.bench == b),
        bench.is_some(),
    )
    .await;
    let (records, next) = match result {
        Ok(pair) => pair,
        Err(e) => return error_page(Some(&who), &e.into()),
    };
    let value = |k: &str| q.get(k).cloned().unwrap_or_default();
    let next_link = next.map(|c| {
        let mut params: Vec<String> = q
            .iter()
            .filter(|(k, v)| k.as_str() != "cursor" && !v.is_empty())
            .map(|(k, v)| format!("{k}={}", crate::percent::encode_component(v)))
            .collect();
        params.push(format!("cursor={}", c.encode()));
        format!("/?{}", params.join("&"))
    });
    let body = html! {
        form class="filters" method="get" action="/" {
            input name="runner" placeholder="runner" value=(value("runner"));
            input name="bench" placeholder="bench" value=(value("bench"));
            select name="state" {
                option value="" { "any state" }
                @for s in ExecState::ALL {
                    option value=(s.as_str()) selected[value("state") == s.as_str()] { (s.as_str()) }
                }
            }
            input name="correlation_id" placeholder="correlation id" value=(value("correlation_id"));
            input name="since_hours" placeholder="within hours" size="8" value=(value("since_hours"));
            button type="submit" { "Filter" }
        }
        table id="executions" {
            thead { tr { th { "execution" } th { "state" } th { "runner" } th { "bench" } th { "correlation" } th { "submitted" } th { "duration" } } }
            tbody {
                @for r in &records {
                    tr class=(r.state.as_str()) {
                        td { a href={ "/executions/" (crate::percent::encode_component(&r.new.key)) } { (r.new.key) } }
                        td { (state_badge(r.state)) }
                        td { (r.new.runner) }
                        td { (r.new.bench) }
                        td { (r.new.correlation_id) }
                        td { (when(r.created_ms)) }
                        td { @if let Some(res) = &r.result { (seconds(res.duration_ms)) } @else { "–" } }
                    }
                }
            }
        }
        @if records.is_empty() { p { "No executions match." } }
        @if let Some(link) = next_link { p { a id="next-page" href=(link) { "Older →" } } }
    };
    Html(page("Executions", Some(&who), body).into_string()).into_response()
}

/// The text of an execution's logs (each at most 256 KiB, the end kept).
async fn log_text(record: &ExecutionRecord) -> Vec<(String, String)> {
    const MAX: u64 = 256 * 1024;
    let mut out = Vec::new();
    for a in record.artifacts.iter().filter(|a| a.kind == "log") {
        let bytes = if let Some(path) = a.uri.strip_prefix("file://") {
            read_tail(std::path::Path::new(path), MAX).await
        } else {
            crate::results::read_artifact(a).await.map(|b| {
                let start = b.len().saturating_sub(MAX as usize);
                b[start..].to_vec()
            })
        };
        let text = match bytes {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("(cannot read the log: {e})"),
        };
        out.push((a.name.clone(), text));
    }
    out
}

async fn read_tail(path: &std::path::Path, max: u64) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len > max {
        f.seek(std::io::SeekFrom::Start(len - max))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut buf = Vec::new();
    f.take(max)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

const PHASE_COLOURS: [(&str, &str); 4] = [
    ("provision", "#5c6bc0"),
    ("run_test", "#26a69a"),
    ("collect_artifacts", "#ffa726"),
    ("teardown", "#8d6e63"),
];

fn phase_name(phase: runner_core::Phase) -> String {
    serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| phase.to_string())
}

/// The segments of an attempt's bar: (x, width, phase, colour, ms).
fn segments(
    a: &crate::store::AttemptDetail,
    width: f64,
    longest: f64,
) -> Vec<(f64, f64, String, &'static str, u64)> {
    let mut x = 0.0;
    a.phases
        .iter()
        .map(|p| {
            let w = (width * p.ms as f64 / longest).max(1.0);
            let name = phase_name(p.phase);
            let colour = PHASE_COLOURS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("#999", |(_, c)| c);
            let seg = (x, w, name, colour, p.ms);
            x += w;
            seg
        })
        .collect()
}

/// One bar per attempt, each phase a segment drawn to one scale.
fn attempt_bars(record: &ExecutionRecord) -> Markup {
    let longest = record
        .attempts
        .iter()
        .map(|a| a.phases.iter().map(|p| p.ms).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let width = 600.0;
    html! {
        @for a in &record.attempts {
            div class="attempt" {
                p { "Attempt " (a.attempt) " on " (a.worker) ": " (a.disposition)
                    @if let Some(e) = &a.error { " — " span class="err" { (phase_name(e.phase)) " failed (" (e.kind) "): " (e.message) } } }
                svg xmlns="http://www.w3.org/2000/svg" width=(width + 10.0) height="28" class="phases" {
                    @for (x, w, name, colour, ms) in segments(a, width, longest) {
                        rect class={ "phase phase-" (name) } x=(format!("{x:.1}")) y="2" width=(format!("{w:.1}")) height="22" fill=(colour) {
                            title { (name) " " (ms) " ms" }
                        }
                        @if w > 60.0 {
                            text x=(format!("{:.1}", x + 4.0)) y="17" font-size="11" fill="#fff" { (name) " " (ms) " ms" }
                        }
                    }
                }
                p style="font-size:12px" {
                    @for p in &a.phases { span { (phase_name(p.phase)) " " (p.ms) " ms · " } }
                }
            }
        }
    }
}

pub(super) async fn execution(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let r = match crate::api::routes::record_of(&state, &key).await {
        Ok(r) => r,
        Err(p) => return error_page(Some(&who), &p),
    };
    let logs = log_text(&r).await;
    let enc = crate::percent::encode_component(&r.new.key);
    let body = html! {
        dl {
            dt { "state" } dd id="state" { (state_badge(r.state)) }
            dt { "runner" } dd { (r.new.runner) }
            dt { "bench" } dd { (r.new.bench) }
            dt { "payload" } dd { (r.new.payload) }
            dt { "correlation" } dd { (r.new.correlation_id) }
            dt { "submitted" } dd { (when(r.created_ms)) " by " (r.new.submitted_by) }
            @if let Some(s) = r.settled_ms { dt { "settled" } dd { (when(s)) } }
        }
        @if let Some(res) = &r.result {
            h2 { "Result" }
            p id="result" { (res.status) " · exit code " (res.exit_code.map_or_else(|| "–".to_owned(), |c| c.to_string())) " · " (seconds(res.duration_ms))
                @if let Some(c) = res.counts { " · tests " (c.passed) " passed, " (c.failed) " failed, " (c.skipped) " skipped" } }
            @if let Some(d) = &res.diagnosis { p { "Diagnosis: " (d) } }
        }
        @if let Some(e) = &r.error { p id="error" class="err" { (e) } }
        h2 { "Attempts" }
        div id="attempts" { (attempt_bars(&r)) }
        h2 { "Timeline" }
        table id="timeline" {
            thead { tr { th { "time" } th { "state" } th { "attempt" } th { "worker" } th { "message" } } }
            tbody id="timeline-body" {
                @for e in &r.timeline {
                    tr class=(e.state.as_str()) { td { (when(e.at_ms)) } td { (state_badge(e.state)) } td { (e.attempt.map(|a| a.to_string()).unwrap_or_default()) } td { (e.worker.clone().unwrap_or_default()) } td { (e.message) } }
                }
            }
        }
        h2 { "Artifacts" }
        ul id="artifacts" {
            @for a in &r.artifacts {
                li { a href={ "/executions/" (enc) "/artifacts/" (crate::percent::encode_path(&a.name)) } { (a.name) } " (" (size(a.size)) ", " (a.kind) ")" }
            }
        }
        @if !r.cases.is_empty() {
            h2 { "Test cases" }
            table { tbody { @for c in &r.cases { tr class=(c.status) { td { (c.suite) } td { (c.name) } td { (c.status) } td { (c.message.clone().unwrap_or_default()) } } } } }
        }
        h2 { "Log" }
        @for (name, text) in &logs {
            p { (name) }
            pre class="log" id="log" { (text) }
        }
        @if logs.is_empty() { p { "No log collected (yet)." } }
        @if !r.state.is_settled() {
            script { (PreEscaped(format!(r#"
(function(){{
  if(!window.EventSource) return;
  var es=new EventSource('/executions/{enc}/events');
  var seen={seen};
  es.addEventListener('state',function(ev){{
    if(parseInt(ev.lastEventId,10)<seen) return;
    var e=JSON.parse(ev.data), tr=document.createElement('tr'), td=function(t){{var c=document.createElement('td');c.textContent=t;tr.appendChild(c);}};
    td(new Date(e.at_ms).toISOString().replace('T',' ').slice(0,19)); td(e.state); td(e.attempt||''); td(e.worker||''); td(e.message);
    document.getElementById('timeline-body').appendChild(tr);
    document.getElementById('state').textContent=e.state;
  }});
  es.addEventListener('settled',function(){{ es.close(); location.reload(); }});
}})();"#, seen = r.timeline.len()))) }
        }
    };
    Html(page(&format!("Execution {}", r.new.key), Some(&who), body).into_string()).into_response()
}

pub(super) async fn events(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    if let Err(p) = authorize(&state.tokens, &state.limiter, &headers, Scope::Read, true) {
        return p.into_response();
    }
    let sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(0, |id| id + 1);
    crate::api::sse::stream(state, key, sent).into_response()
}

pub(super) async fn artifact(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path((key, name)): Path<(String, String)>,
) -> Response {
    if let Err(p) = authorize(&state.tokens, &state.limiter, &headers, Scope::Read, true) {
        return p.into_response();
    }
    let record = match crate::api::routes::record_of(&state, &key).await {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    match record.artifacts.iter().find(|a| a.name == name) {
        Some(a) => match crate::api::routes::artifact_response(a).await {
            Ok(r) => r,
            Err(p) => p.into_response(),
        },
        None => Problem::not_found(format!("no artifact `{name}`")).into_response(),
    }
}
