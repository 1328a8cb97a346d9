//! Execution records on SQLite: one row per execution key, its timeline
//! in `execution_events`. Lists are JSON text columns, appended with
//! SQLite's JSON functions.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Cached, store_err, to_i64, to_u64};
use crate::store::{
    ExecState, ExecutionRecord, HistoryFilter, NewExecution, RecordUpdate, StoreError,
    TimelineEvent,
};

type Result<T> = std::result::Result<T, StoreError>;

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Insert the record of a new execution (state queued) and its first event.
pub(super) fn insert_record(c: &Connection, new: &NewExecution, at: i64) -> Result<()> {
    c.exec_cached(
        "INSERT INTO executions (key, runner, bench, payload, correlation_id, labels, submitted_by,
                                 state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?8)",
        params![
            new.key,
            new.runner,
            new.bench,
            new.payload,
            correlation(new),
            json(&new.labels),
            new.submitted_by,
            at
        ],
    )
    .map_err(store_err)?;
    event(
        c,
        &new.key,
        at,
        ExecState::Queued,
        None,
        None,
        &submitted_message(new),
    )
}

fn correlation(new: &NewExecution) -> &str {
    if new.correlation_id.is_empty() {
        &new.key
    } else {
        &new.correlation_id
    }
}

fn submitted_message(new: &NewExecution) -> String {
    if new.submitted_by.is_empty() {
        "submitted".into()
    } else {
        format!("submitted by {}", new.submitted_by)
    }
}

/// A minimal record for an execution queued without one.
fn ensure_record(c: &Connection, new: &NewExecution, at: i64) -> Result<()> {
    c.exec_cached(
        "INSERT INTO executions (key, runner, bench, payload, correlation_id, labels, submitted_by,
                                 state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?8)
         ON CONFLICT(key) DO NOTHING",
        params![
            new.key,
            new.runner,
            new.bench,
            new.payload,
            correlation(new),
            json(&new.labels),
            new.submitted_by,
            at
        ],
    )
    .map_err(store_err)?;
    Ok(())
}

fn event(
    c: &Connection,
    key: &str,
    at: i64,
    state: ExecState,
    attempt: Option<u32>,
    worker: Option<&str>,
    message: &str,
) -> Result<()> {
    c.exec_cached(
        "INSERT INTO execution_events (key, at, state, attempt, worker, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![key, at, state.as_str(), attempt, worker, message],
    )
    .map_err(store_err)?;
    Ok(())
}

/// Put a settled execution back on the way (a dead letter replayed).
pub(super) fn reopen(c: &Connection, key: &str, at: i64, message: &str) -> Result<()> {
    c.exec_cached(
        "UPDATE executions SET state = 'queued', settled = 0, settled_at = NULL,
                cancel_requested = 0, updated_at = ?2 WHERE key = ?1",
        params![key, at],
    )
    .map_err(store_err)?;
    event(c, key, at, ExecState::Queued, None, None, message)
}

/// Apply `updates` in order inside the caller's transaction, sharing what
/// a batch can share: a key's record is ensured once per batch, and the
/// state changes of one key set its `state` once (the last of them, before
/// any other update of that key), each still adding its timeline event.
/// A busy worker sends six state changes per execution; at thousands a
/// second these statements were the store's largest cost.
pub(super) fn apply_all(c: &Connection, updates: &[RecordUpdate]) -> Result<()> {
    let mut ensured: HashSet<&str> = HashSet::new();
    let mut pending: HashMap<&str, (ExecState, i64)> = HashMap::new();
    for update in updates {
        match update {
            RecordUpdate::State {
                new,
                state,
                at_ms,
                attempt,
                worker,
                message,
            } => {
                let at = to_i64(*at_ms);
                if ensured.insert(&new.key) {
                    ensure_record(c, new, at)?;
                }
                pending.insert(&new.key, (*state, at));
                event(
                    c,
                    &new.key,
                    at,
                    *state,
                    *attempt,
                    worker.as_deref(),
                    message,
                )?;
            }
            other => {
                if let Some((state, at)) = pending.remove(other.key()) {
                    set_state(c, other.key(), state, at)?;
                }
                apply(c, other)?;
            }
        }
    }
    for (key, (state, at)) in pending {
        set_state(c, key, state, at)?;
    }
    Ok(())
}

/// A state change of a record; a settled record keeps its final state (a
/// late event of an attempt does not reopen it).
fn set_state(c: &Connection, key: &str, state: ExecState, at: i64) -> Result<()> {
    c.exec_cached(
        "UPDATE executions SET state = ?2, updated_at = ?3 WHERE key = ?1 AND settled = 0",
        params![key, state.as_str(), at],
    )
    .map_err(store_err)?;
    Ok(())
}

/// Apply one update inside the caller's transaction.
pub(super) fn apply(c: &Connection, update: &RecordUpdate) -> Result<()> {
    match update {
        // One path for state changes: the batch's (see `apply_all`).
        RecordUpdate::State { .. } => apply_all(c, std::slice::from_ref(update)),
        RecordUpdate::AttemptEnded { key, detail, state } => {
            let at = to_i64(detail.ended_ms);
            c.exec_cached(
                "UPDATE executions SET attempts = json_insert(attempts, '$[#]', json(?2)),
                        state = CASE WHEN settled = 0 THEN ?3 ELSE state END, updated_at = ?4
                 WHERE key = ?1",
                params![key, json(detail), state.as_str(), at],
            )
            .map_err(store_err)?;
            let message = match &detail.error {
                Some(e) => format!(
                    "attempt {} ended: {} error in {}: {}; {}",
                    detail.attempt, e.kind, e.phase, e.message, detail.disposition
                ),
                None => format!("attempt {} ended; {}", detail.attempt, detail.disposition),
            };
            event(
                c,
                key,
                at,
                *state,
                Some(detail.attempt),
                Some(&detail.worker),
                &message,
            )
        }
        RecordUpdate::Settled(s) => {
            let at = to_i64(s.at_ms);
            ensure_record(c, &s.new, at)?;
            let attempt_json = s.attempt.as_ref().map(json);
            c.exec_cached(
                "UPDATE executions SET state = ?2, settled = 1, settled_at = ?3, updated_at = ?3,
                        attempts = CASE WHEN ?4 IS NULL THEN attempts
                                        ELSE json_insert(attempts, '$[#]', json(?4)) END,
                        result = ?5, artifacts = ?6, cases = ?7, error = ?8
                 WHERE key = ?1",
                params![
                    s.new.key,
                    s.state.as_str(),
                    at,
                    attempt_json,
                    s.result.as_ref().map(json),
                    json(&s.artifacts),
                    json(&s.cases),
                    s.error
                ],
            )
            .map_err(store_err)?;
            let message = match (&s.result, &s.error) {
                (Some(r), _) => format!("settled: {}", r.status),
                (None, Some(e)) => format!("settled: {e}"),
                (None, None) => "settled".to_owned(),
            };
            event(
                c,
                &s.new.key,
                at,
                s.state,
                s.attempt.as_ref().map(|a| a.attempt),
                s.attempt.as_ref().map(|a| a.worker.as_str()),
                &message,
            )
        }
        RecordUpdate::Reopened { key, message } => reopen(c, key, super::now(), message),
        RecordUpdate::CancelRequested { key, at_ms, by } => {
            let at = to_i64(*at_ms);
            let changed = c
                .exec_cached(
                    "UPDATE executions SET cancel_requested = 1, updated_at = ?2
                     WHERE key = ?1 AND settled = 0",
                    params![key, at],
                )
                .map_err(store_err)?;
            if changed > 0 {
                let state: String = c
                    .query_row_cached(
                        "SELECT state FROM executions WHERE key = ?1",
                        params![key],
                        |r| r.get(0),
                    )
                    .map_err(store_err)?;
                let state = ExecState::parse(&state).unwrap_or(ExecState::Queued);
                event(
                    c,
                    key,
                    at,
                    state,
                    None,
                    None,
                    &format!("cancel requested by {by}"),
                )?;
            }
            Ok(())
        }
    }
}

const RECORD_COLUMNS: &str = "key, runner, bench, payload, correlation_id, labels, submitted_by,
     state, created_at, updated_at, settled_at, cancel_requested, attempts, result, artifacts,
     cases, error";

fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRecord> {
    let parse = |i: usize| -> rusqlite::Result<String> { r.get::<_, String>(i) };
    let state: String = r.get(7)?;
    Ok(ExecutionRecord {
        new: NewExecution {
            key: r.get(0)?,
            runner: r.get(1)?,
            bench: r.get(2)?,
            payload: r.get(3)?,
            correlation_id: r.get(4)?,
            labels: serde_json::from_str(&parse(5)?).unwrap_or_default(),
            submitted_by: r.get(6)?,
        },
        state: ExecState::parse(&state).unwrap_or(ExecState::Error),
        created_ms: to_u64(r.get(8)?),
        updated_ms: to_u64(r.get(9)?),
        settled_ms: r.get::<_, Option<i64>>(10)?.map(to_u64),
        cancel_requested: r.get::<_, i64>(11)? != 0,
        attempts: serde_json::from_str(&parse(12)?).unwrap_or_default(),
        result: r
            .get::<_, Option<String>>(13)?
            .and_then(|t| serde_json::from_str(&t).ok()),
        artifacts: serde_json::from_str(&parse(14)?).unwrap_or_default(),
        cases: serde_json::from_str(&parse(15)?).unwrap_or_default(),
        error: r.get(16)?,
        timeline: Vec::new(),
    })
}

/// One record with its timeline.
pub(super) fn get(c: &Connection, key: &str) -> Result<Option<ExecutionRecord>> {
    let Some(mut record) = c
        .query_row_cached(
            &format!("SELECT {RECORD_COLUMNS} FROM executions WHERE key = ?1"),
            params![key],
            record_row,
        )
        .optional()
        .map_err(store_err)?
    else {
        return Ok(None);
    };
    let mut stmt = c
        .prepare_cached(
            "SELECT at, state, attempt, worker, message FROM execution_events
             WHERE key = ?1 ORDER BY id",
        )
        .map_err(store_err)?;
    let rows = stmt
        .query_map(params![key], |r| {
            let state: String = r.get(1)?;
            Ok(TimelineEvent {
                at_ms: to_u64(r.get(0)?),
                state: ExecState::parse(&state).unwrap_or(ExecState::Error),
                attempt: r
                    .get::<_, Option<i64>>(2)?
                    .and_then(|a| u32::try_from(a).ok()),
                worker: r.get(3)?,
                message: r.get(4)?,
            })
        })
        .map_err(store_err)?;
    for row in rows {
        record.timeline.push(row.map_err(store_err)?);
    }
    Ok(Some(record))
}

/// Records matching `filter`, newest first.
pub(super) fn list(c: &Connection, filter: &HistoryFilter) -> Result<Vec<ExecutionRecord>> {
    let mut sql = format!("SELECT {RECORD_COLUMNS} FROM executions WHERE 1 = 1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    if let Some(c) = &filter.correlation_id {
        args.push(Box::new(c.clone()));
        sql.push_str(&format!(" AND correlation_id = ?{}", args.len()));
    }
    if let Some(r) = &filter.runner {
        args.push(Box::new(r.clone()));
        sql.push_str(&format!(" AND runner = ?{}", args.len()));
    }
    if let Some(s) = filter.state {
        args.push(Box::new(s.as_str()));
        sql.push_str(&format!(" AND state = ?{}", args.len()));
    }
    if let Some(since) = filter.since_ms {
        args.push(Box::new(to_i64(since)));
        sql.push_str(&format!(" AND created_at >= ?{}", args.len()));
    }
    if let Some(before) = filter.before_ms {
        args.push(Box::new(to_i64(before)));
        sql.push_str(&format!(" AND created_at < ?{}", args.len()));
    }
    args.push(Box::new(
        i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX),
    ));
    sql.push_str(&format!(
        " ORDER BY created_at DESC, key DESC LIMIT ?{}",
        args.len()
    ));
    let mut stmt = c.prepare_cached(&sql).map_err(store_err)?;
    let refs: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let rows = stmt
        .query_map(refs.as_slice(), record_row)
        .map_err(store_err)?;
    rows.map(|r| r.map_err(store_err)).collect()
}

/// Of `keys`, those with a cancel asked for and not settled.
pub(super) fn cancel_requested(c: &Connection, keys: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for key in keys {
        let asked: Option<i64> = c
            .query_row_cached(
                "SELECT 1 FROM executions WHERE key = ?1 AND cancel_requested = 1 AND settled = 0",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(store_err)?;
        if asked.is_some() {
            out.push(key.clone());
        }
    }
    Ok(out)
}

/// Delete settled records, their events and done or dead tasks older than
/// `cutoff` (ms).
pub(super) fn prune(c: &mut Connection, cutoff: i64) -> Result<u64> {
    let tx = super::immediate(c)?;
    tx.exec_cached(
        "DELETE FROM execution_events WHERE key IN
           (SELECT key FROM executions WHERE settled = 1 AND settled_at < ?1)",
        params![cutoff],
    )
    .map_err(store_err)?;
    let records = tx
        .exec_cached(
            "DELETE FROM executions WHERE settled = 1 AND settled_at < ?1",
            params![cutoff],
        )
        .map_err(store_err)?;
    tx.exec_cached(
        "DELETE FROM tasks WHERE state IN ('done', 'dead') AND updated_at < ?1",
        params![cutoff],
    )
    .map_err(store_err)?;
    tx.exec_cached(
        "DELETE FROM journal WHERE state = 'released' AND updated_at < ?1",
        params![cutoff],
    )
    .map_err(store_err)?;
    tx.commit().map_err(store_err)?;
    Ok(u64::try_from(records).unwrap_or(0))
}
