//! The web dashboard: server-rendered HTML (maud), no build step. The
//! token is asked once: the login form sets it as an HttpOnly session
//! cookie (gone when the browser session ends) and, with JavaScript, keeps
//! it in `sessionStorage` to log in again by itself. Everything works
//! without JavaScript except the live updates of a running execution
//! (an `EventSource` on its events). Logs are shown as collected, that
//! is with secrets already masked by the worker; dead letters show their
//! task with secret values masked.

mod admin;
mod executions;
mod login;

use login::login_markup;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::SharedState;
use super::auth::{Caller, Scope, authorize};
use super::problem::Problem;
use crate::store::ExecState;

/// The dashboard's routes.
pub fn router() -> axum::Router<SharedState> {
    axum::Router::new()
        .route("/", get(executions::executions))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/executions/{key}", get(executions::execution))
        .route("/executions/{key}/events", get(executions::events))
        .route(
            "/executions/{key}/artifacts/{*name}",
            get(executions::artifact),
        )
        .route("/dlq", get(admin::dlq))
        .route("/dlq/{id}/replay", post(admin::replay))
        .route("/workers", get(admin::workers))
        .route("/leaks", get(admin::leaks))
        .route("/charts", get(admin::charts))
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
