//! The stream behind `GET /v1/executions/{key}/events` (the route is
//! `routes::executions::events`): Server-Sent Events of an execution's
//! state changes until it settles. Each timeline entry is one `state`
//! event (its `id` the entry's index, so a client that reconnects with
//! `Last-Event-ID` gets only what it missed); the end is one `settled`
//! event with the whole record, after which the stream closes. The store
//! is polled (every 300 ms): any replica can serve any client.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};

use super::SharedState;

/// How often the store is read while a client listens.
const POLL: Duration = Duration::from_millis(300);
/// A stream ends after this long even if the execution has not settled;
/// the client reconnects with `Last-Event-ID`.
const MAX_STREAM: Duration = Duration::from_secs(3600);

struct Follow {
    state: SharedState,
    key: String,
    sent: usize,
    done: bool,
    started: std::time::Instant,
    pending: std::collections::VecDeque<Event>,
}

/// The event stream of `key`, from timeline entry `sent` on.
pub fn stream(
    state: SharedState,
    key: String,
    sent: usize,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let follow = Follow {
        state,
        key,
        sent,
        done: false,
        started: std::time::Instant::now(),
        pending: Default::default(),
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(event) = f.pending.pop_front() {
                return Some((Ok(event), f));
            }
            if f.done || f.started.elapsed() > MAX_STREAM {
                return None;
            }
            match f.state.backends.store.execution(&f.key).await {
                Ok(Some(record)) => {
                    for (i, entry) in record.timeline.iter().enumerate().skip(f.sent) {
                        let data = serde_json::to_string(entry).unwrap_or_default();
                        f.pending.push_back(
                            Event::default().event("state").id(i.to_string()).data(data),
                        );
                    }
                    f.sent = f.sent.max(record.timeline.len());
                    if record.state.is_settled() {
                        let data = serde_json::to_string(&serde_json::json!({
                            "version": 1, "execution": record
                        }))
                        .unwrap_or_default();
                        f.pending
                            .push_back(Event::default().event("settled").data(data));
                        f.done = true;
                        continue;
                    }
                }
                Ok(None) => {
                    f.pending.push_back(
                        Event::default()
                            .event("gone")
                            .data(format!("{{\"key\": {:?}}}", f.key)),
                    );
                    f.done = true;
                    continue;
                }
                // A store briefly away: keep the client, try again.
                Err(e) => tracing::debug!(error = %e, "events: store read failed"),
            }
            if !f.pending.is_empty() {
                continue;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
