//! The web dashboard: server-rendered HTML (maud), no build step. The
//! token is asked once: the login form sets it as an HttpOnly session
//! cookie (gone when the browser session ends) and, with JavaScript, keeps
//! it in `sessionStorage` to log in again by itself. Everything works
//! without JavaScript except the live updates of a running execution
//! (an `EventSource` on its events). Logs are shown as collected, that
//! is with secrets already masked by the worker; dead letters show their
//! task with secret values masked.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::SharedState;
use super::auth::{COOKIE, Caller, Scope, authorize};
use super::problem::Problem;
use crate::store::{ExecState, ExecutionRecord, HistoryFilter, now_ms};

/// The dashboard's routes.
pub fn router() -> axum::Router<SharedState> {
    axum::Router::new()
        .route("/", get(executions))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/executions/{key}", get(execution))
        .route("/executions/{key}/events", get(events))
        .route("/executions/{key}/artifacts/{*name}", get(artifact))
        .route("/dlq", get(dlq))
        .route("/dlq/{id}/replay", post(replay))
        .route("/workers", get(workers))
        .route("/leaks", get(leaks))
        .route("/charts", get(charts))
}

const CSS: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
nav{background:#263238;padding:8px 16px}nav a{color:#eceff1;margin-right:16px;text-decoration:none}
nav form{display:inline;float:right}main{padding:16px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;font-size:14px}
tr.passed td:first-child{border-left:6px solid #2e7d32}tr.failed td:first-child,tr.timed_out td:first-child{border-left:6px solid #c62828}
tr.error td:first-child,tr.dead_lettered td:first-child{border-left:6px solid #6a1b9a}tr.cancelled td:first-child{border-left:6px solid #757575}
tr.running td:first-child,tr.queued td:first-child,tr.leased td:first-child,tr.provisioning td:first-child,tr.collecting td:first-child,tr.tearing_down td:first-child{border-left:6px solid #1565c0}
.state{padding:2px 6px;border-radius:4px;color:#fff;font-size:13px}
.s-passed{background:#2e7d32}.s-failed,.s-timed_out{background:#c62828}.s-error,.s-dead_lettered{background:#6a1b9a}.s-cancelled{background:#757575}
.s-queued,.s-leased,.s-provisioning,.s-running,.s-collecting,.s-tearing_down{background:#1565c0}
pre.log{background:#111;color:#ddd;padding:8px;max-height:480px;overflow:auto;font-size:12px}
form.filters input,form.filters select{margin-right:8px}.err{color:#c62828}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
";

fn page(title: &str, caller: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · orchestrator" }
                style { (PreEscaped(CSS)) }
            }
            body {
                nav {
                    a href="/" { "Executions" }
                    a href="/dlq" { "DLQ" }
                    a href="/workers" { "Workers" }
                    a href="/leaks" { "Leaks" }
                    a href="/charts" { "Charts" }
                    @if let Some(c) = caller {
                        form method="post" action="/logout" {
                            span style="color:#b0bec5;margin-right:8px" { (c.name) }
                            button id="logout" type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// Local-ish time of `ms` (UTC), `YYYY-MM-DD HH:MM:SS`.
pub fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn seconds(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn state_badge(state: ExecState) -> Markup {
    html! { span class={ "state s-" (state.as_str()) } { (state.as_str()) } }
}

/// A page's caller, or the answer to give instead (the login form on 401).
fn caller(state: &SharedState, headers: &HeaderMap, need: Scope) -> Result<Caller, Box<Response>> {
    authorize(&state.tokens, &state.limiter, headers, need, true).map_err(|p| {
        Box::new(if p.status == 401 {
            let login = Html(login_markup(None).into_string());
            (StatusCode::UNAUTHORIZED, login).into_response()
        } else {
            error_page(None, &p)
        })
    })
}

fn error_page(caller: Option<&Caller>, p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = page(
        status.canonical_reason().unwrap_or("Error"),
        caller,
        html! { p class="err" { (p.detail) } },
    );
    (status, Html(body.into_string())).into_response()
}

fn login_markup(error: Option<&str>) -> Markup {
    page(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p class="err" { (e) } }
            form id="login" method="post" action="/login" {
                label { "API token " input id="token" type="password" name="token" size="60" autocomplete="off"; }
                " "
                button id="login-button" type="submit" { "Log in" }
            }
            p { "The token is kept for this browser session only." }
            script { (PreEscaped(r#"
(function(){
  var f=document.getElementById('login'), t=document.getElementById('token');
  f.addEventListener('submit',function(){ try{sessionStorage.setItem('orchToken',t.value);}catch(e){} });
  var kept=null; try{kept=sessionStorage.getItem('orchToken');}catch(e){}
  if(kept && !document.querySelector('.err')){ t.value=kept; f.submit(); }
})();"#)) }
        },
    )
}

async fn login_page() -> Html<String> {
    Html(login_markup(None).into_string())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

fn secure(state: &SharedState) -> &'static str {
    if state.section.tls.is_some() {
        "; Secure"
    } else {
        ""
    }
}

async fn login(State(state): State<SharedState>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    match state.tokens.check(token) {
        Some(entry) if entry.allows(Scope::Read) && !token.contains(';') => {
            tracing::info!(token = %entry.id, "dashboard login");
            let cookie = format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
                secure(&state)
            );
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        _ => {
            let body = login_markup(Some("That token is not valid.")).into_string();
            let mut r = (StatusCode::UNAUTHORIZED, Html(body)).into_response();
            // A stale token in sessionStorage must not log in again and again.
            r.headers_mut()
                .insert("clear-site-data", HeaderValue::from_static("\"storage\""));
            r
        }
    }
}

async fn logout(State(state): State<SharedState>) -> Response {
    let cookie = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(&state)
    );
    let body = page(
        "Logged out",
        None,
        html! {
            p { a href="/login" { "Log in again" } }
            script { (PreEscaped("try{sessionStorage.removeItem('orchToken');}catch(e){}")) }
        },
    );
    let mut r = Html(body.into_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ---- executions ----------------------------------------------------------

async fn executions(
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
    let query = match super::routes::list_query(&query_map, state.section.max_page_size) {
        Ok(mut query) => {
            if let Some(h) = since_hours.as_deref().and_then(|h| h.parse::<u64>().ok()) {
                query.filter.since_ms = Some(now_ms().saturating_sub(h * 3_600_000));
            }
            query
        }
        Err(p) => return error_page(Some(&who), &p),
    };
    let bench = query.bench.clone();
    let result = super::routes::page(
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
            .map(|(k, v)| format!("{k}={}", crate::cli::encode_component(v)))
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
                        td { a href={ "/executions/" (crate::cli::encode_component(&r.new.key)) } { (r.new.key) } }
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

async fn execution(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let r = match super::routes::record_of(&state, &key).await {
        Ok(r) => r,
        Err(p) => return error_page(Some(&who), &p),
    };
    let logs = log_text(&r).await;
    let enc = crate::cli::encode_component(&r.new.key);
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
                li { a href={ "/executions/" (enc) "/artifacts/" (crate::cli::encode_path(&a.name)) } { (a.name) } " (" (size(a.size)) ", " (a.kind) ")" }
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

async fn events(
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
    super::sse::stream(state, key, sent).into_response()
}

async fn artifact(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path((key, name)): Path<(String, String)>,
) -> Response {
    if let Err(p) = authorize(&state.tokens, &state.limiter, &headers, Scope::Read, true) {
        return p.into_response();
    }
    let record = match super::routes::record_of(&state, &key).await {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    match record.artifacts.iter().find(|a| a.name == name) {
        Some(a) => match super::routes::artifact_response(a).await {
            Ok(r) => r,
            Err(p) => p.into_response(),
        },
        None => Problem::not_found(format!("no artifact `{name}`")).into_response(),
    }
}

// ---- DLQ, workers, leaks, charts -------------------------------------------

async fn dlq(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let letters = match state.backends.queue.dlq_list(200).await {
        Ok(l) => l,
        Err(e) => return error_page(Some(&who), &e.into()),
    };
    let body = html! {
        @if letters.is_empty() { p { "The dead-letter queue is empty." } }
        table id="dlq" {
            thead { tr { th { "id" } th { "execution" } th { "reason" } th { "history" } th { "dead since" } th { "" } } }
            tbody {
                @for l in letters.into_iter().map(super::routes::masked) {
                    @let key = crate::task::Task::parse(&l.body).ok().map(|t| t.execution_key);
                    tr class="dead_lettered" {
                        td { (l.id) }
                        td { @if let Some(k) = &key { a href={ "/executions/" (crate::cli::encode_component(k)) } { (k) } } @else { "(unreadable task)" } }
                        td { (l.reason) }
                        td { ul { @for h in &l.history { li { "#" (h.attempt) " " (when(h.at_ms)) " on " (h.worker) ": " (h.message) } } } }
                        td { (when(l.created_ms)) }
                        td {
                            @if who.admin {
                                form method="post" action={ "/dlq/" (crate::cli::encode_component(&l.id)) "/replay" } {
                                    button class="replay" data-id=(l.id) type="submit" { "Replay" }
                                }
                            } @else { span title="needs an admin token" { "—" } }
                        }
                    }
                }
            }
        }
    };
    Html(page("Dead-letter queue", Some(&who), body).into_string()).into_response()
}

async fn replay(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match caller(&state, &headers, Scope::Admin) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match super::routes::replay(&state, &id).await {
        Ok((task_id, key)) => {
            tracing::info!(token = %who.id, %id, %task_id, "dead letter replayed from the dashboard");
            match key {
                Some(k) => {
                    Redirect::to(&format!("/executions/{}", crate::cli::encode_component(&k)))
                        .into_response()
                }
                None => Redirect::to("/dlq").into_response(),
            }
        }
        Err(p) => error_page(Some(&who), &p),
    }
}

async fn workers(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let workers = match state
        .backends
        .store
        .workers(state.config.worker.stale_after())
        .await
    {
        Ok(w) => w,
        Err(e) => return error_page(Some(&who), &e.into()),
    };
    let body = html! {
        table id="workers" {
            thead { tr { th { "worker" } th { "host" } th { "pid" } th { "runners" } th { "in flight" } th { "heartbeat age" } th { "state" } } }
            tbody {
                @for w in &workers {
                    tr class=(if w.alive { "passed" } else { "cancelled" }) {
                        td { (w.beat.id) } td { (w.beat.host) } td { (w.beat.pid) } td { (w.beat.runners.join(", ")) }
                        td { (w.beat.in_flight) } td { (seconds(w.heartbeat_age_ms)) } td { (if w.alive { "alive" } else { "silent" }) }
                    }
                }
            }
        }
        @if workers.is_empty() { p { "No worker has registered." } }
    };
    Html(page("Workers", Some(&who), body).into_string()).into_response()
}

async fn leaks(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let report = super::routes::dry_reap(&state).await;
    let list = |title: &str, items: &[String]| {
        html! {
            h2 { (title) " (" (items.len()) ")" }
            @if !items.is_empty() { ul { @for i in items { li { (i) } } } }
        }
    };
    let runners: Vec<&str> = state.adapters.keys().map(String::as_str).collect();
    let body = html! {
        p { "A dry-run reap (nothing is changed) with this server's runner configs: "
            @if runners.is_empty() { "none, so only the journal is read." } @else { (runners.join(", ")) } }
        (list("Orphaned handles (their worker is gone)", &report.orphans))
        (list("Failed teardowns", &report.failed_teardowns))
        (list("Leaked resources", &report.leaks))
        (list("Left for an operator", &report.left))
        (list("Errors", &report.errors))
    };
    Html(page("Leaks", Some(&who), body).into_string()).into_response()
}

async fn charts(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let now = now_ms();
    let since = now.saturating_sub(super::charts::DAYS * 86_400_000);
    // At most 50,000 records are read; older ones of a busier store are left out.
    let mut records = Vec::new();
    let mut cursor = None;
    for _ in 0..25 {
        let filter = HistoryFilter {
            since_ms: Some(since),
            ..HistoryFilter::default()
        };
        match super::routes::page(
            &*state.backends.store,
            &filter,
            cursor,
            2000,
            |_| true,
            false,
        )
        .await
        {
            Ok((page, next)) => {
                records.extend(page);
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            Err(e) => return error_page(Some(&who), &e.into()),
        }
    }
    let daily = super::charts::daily(&records, now);
    let body = html! {
        p { "Per runner, per day (UTC) for the last " (super::charts::DAYS) " days: the share of settled executions that passed, and the p50 and p95 test duration." }
        @if daily.is_empty() { p { "Nothing settled in that time." } }
        @for (runner, days) in &daily {
            section class="runner-charts" {
                h2 { (runner) }
                (PreEscaped(super::charts::pass_rate_svg(runner, days)))
                (PreEscaped(super::charts::duration_svg(runner, days)))
            }
        }
    };
    Html(page("Charts", Some(&who), body).into_string()).into_response()
}
