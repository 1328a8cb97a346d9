//! The operator's pages: dead letters with replay, workers, leaks, and
//! the pass-rate charts.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{PreEscaped, html};

use super::{caller, error_page, page, seconds, when};
use crate::api::SharedState;
use crate::api::auth::Scope;
use crate::store::{HistoryFilter, now_ms};

pub(super) async fn dlq(State(state): State<SharedState>, headers: HeaderMap) -> Response {
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
                @for l in letters.into_iter().map(crate::api::routes::masked) {
                    @let key = crate::task::Task::parse(&l.body).ok().map(|t| t.execution_key);
                    tr class="dead_lettered" {
                        td { (l.id) }
                        td { @if let Some(k) = &key { a href={ "/executions/" (crate::percent::encode_component(k)) } { (k) } } @else { "(unreadable task)" } }
                        td { (l.reason) }
                        td { ul { @for h in &l.history { li { "#" (h.attempt) " " (when(h.at_ms)) " on " (h.worker) ": " (h.message) } } } }
                        td { (when(l.created_ms)) }
                        td {
                            @if who.admin {
                                form method="post" action={ "/dlq/" (crate::percent::encode_component(&l.id)) "/replay" } {
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

pub(super) async fn replay(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match caller(&state, &headers, Scope::Admin) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match crate::api::routes::replay(&state, &id).await {
        Ok((task_id, key)) => {
            tracing::info!(token = %who.id, %id, %task_id, "dead letter replayed from the dashboard");
            match key {
                Some(k) => Redirect::to(&format!(
                    "/executions/{}",
                    crate::percent::encode_component(&k)
                ))
                .into_response(),
                None => Redirect::to("/dlq").into_response(),
            }
        }
        Err(p) => error_page(Some(&who), &p),
    }
}

pub(super) async fn workers(State(state): State<SharedState>, headers: HeaderMap) -> Response {
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

pub(super) async fn leaks(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let report = crate::api::routes::dry_reap(&state).await;
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

pub(super) async fn charts(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers, Scope::Read) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let now = now_ms();
    let since = now.saturating_sub(crate::api::charts::DAYS * 86_400_000);
    // At most 50,000 records are read; older ones of a busier store are left out.
    let mut records = Vec::new();
    let mut cursor = None;
    for _ in 0..25 {
        let filter = HistoryFilter {
            since_ms: Some(since),
            ..HistoryFilter::default()
        };
        match crate::api::routes::page(
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
    let daily = crate::api::charts::daily(&records, now);
    let body = html! {
        p { "Per runner, per day (UTC) for the last " (crate::api::charts::DAYS) " days: the share of settled executions that passed, and the p50 and p95 test duration." }
        @if daily.is_empty() { p { "Nothing settled in that time." } }
        @for (runner, days) in &daily {
            section class="runner-charts" {
                h2 { (runner) }
                (PreEscaped(crate::api::charts::pass_rate_svg(runner, days)))
                (PreEscaped(crate::api::charts::duration_svg(runner, days)))
            }
        }
    };
    Html(page("Charts", Some(&who), body).into_string()).into_response()
}
