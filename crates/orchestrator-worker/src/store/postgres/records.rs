//! Execution records on PostgreSQL (the same shape as SQLite's).

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{exec, pg_err};
use crate::store::{
    ExecState, ExecutionRecord, HistoryFilter, NewExecution, RecordUpdate, StoreError,
    TimelineEvent,
};

type Result<T> = std::result::Result<T, StoreError>;

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn correlation(new: &NewExecution) -> &str {
    if new.correlation_id.is_empty() {
        &new.key
    } else {
        &new.correlation_id
    }
}

async fn event<C: GenericClient>(
    c: &C,
    key: &str,
    at: Option<i64>,
    state: ExecState,
    attempt: Option<u32>,
    worker: Option<&str>,
    message: &str,
) -> Result<()> {
    let attempt = attempt.map(i64::from);
    c.execute(
        "INSERT INTO execution_events (key, at, state, attempt, worker, message)
         VALUES ($1, COALESCE($2, orch_now_ms()), $3, $4, $5, $6)",
        &[&key, &at, &state.as_str(), &attempt, &worker, &message],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

const INSERT_RECORD: &str =
    "INSERT INTO executions (key, runner, bench, payload, correlation_id, labels,
        submitted_by, state, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', orch_now_ms(), orch_now_ms())";

/// Insert the record of a new execution (state queued) and its first event.
pub(super) async fn insert_record<C: GenericClient>(c: &C, new: &NewExecution) -> Result<()> {
    c.execute(
        INSERT_RECORD,
        &[
            &new.key,
            &new.runner,
            &new.bench,
            &new.payload,
            &correlation(new),
            &json(&new.labels),
            &new.submitted_by,
        ],
    )
    .await
    .map_err(pg_err)?;
    let message = if new.submitted_by.is_empty() {
        "submitted".to_owned()
    } else {
        format!("submitted by {}", new.submitted_by)
    };
    event(c, &new.key, None, ExecState::Queued, None, None, &message).await
}

/// Put a settled execution back on the way (a dead letter replayed).
pub(super) async fn reopen<C: GenericClient>(c: &C, key: &str, message: &str) -> Result<()> {
    c.execute(
        "UPDATE executions SET state = 'queued', settled = false, settled_at = NULL,
                cancel_requested = false, updated_at = orch_now_ms() WHERE key = $1",
        &[&key],
    )
    .await
    .map_err(pg_err)?;
    event(c, key, None, ExecState::Queued, None, None, message).await
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The event message of an attempt that ended without settling.
fn attempt_message(detail: &crate::store::AttemptDetail) -> String {
    match &detail.error {
        Some(e) => format!(
            "attempt {} ended: {} error in {}: {}; {}",
            detail.attempt, e.kind, e.phase, e.message, detail.disposition
        ),
        None => format!("attempt {} ended; {}", detail.attempt, detail.disposition),
    }
}

/// A state change: the record upserted (a settled record keeps its final
/// state) and the event inserted, in one statement.
const STATE_SQL: &str = "WITH up AS (
    INSERT INTO executions (key, runner, bench, payload, correlation_id, labels, submitted_by,
                            state, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
    ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
      WHERE NOT executions.settled)
  INSERT INTO execution_events (key, at, state, attempt, worker, message)
  VALUES ($1, $9, $8, $10, $11, $12)";

const ATTEMPT_SQL: &str = "WITH up AS (
    UPDATE executions SET attempts = attempts || jsonb_build_array($2::text::jsonb),
           state = CASE WHEN settled THEN state ELSE $3 END, updated_at = $4
     WHERE key = $1)
  INSERT INTO execution_events (key, at, state, attempt, worker, message)
  VALUES ($1, $4, $3, $5, $6, $7)";

const SETTLED_SQL: &str = "WITH ins AS (
    INSERT INTO executions (key, runner, bench, payload, correlation_id, labels, submitted_by,
                            state, created_at, updated_at)
    VALUES ($1, $9, $10, $11, $12, $13, $14, 'queued', $3, $3)
    ON CONFLICT (key) DO NOTHING),
  up AS (
    UPDATE executions SET state = $2, settled = true, settled_at = $3, updated_at = $3,
           attempts = CASE WHEN $4::text IS NULL THEN attempts
                           ELSE attempts || jsonb_build_array($4::text::jsonb) END,
           result = $5, artifacts = $6, cases = $7, error = $8
     WHERE key = $1)
  INSERT INTO execution_events (key, at, state, attempt, worker, message)
  VALUES ($1, $3, $2, $15, $16, $17)";

const CANCEL_SQL: &str = "WITH up AS (
    UPDATE executions SET cancel_requested = true, updated_at = $2
     WHERE key = $1 AND NOT settled RETURNING state)
  INSERT INTO execution_events (key, at, state, message)
  SELECT $1, $2, state, $3 FROM up";

/// Apply one update inside the caller's transaction: one statement, so a
/// batch of updates pipelines on one connection.
pub(super) async fn apply<C: GenericClient>(c: &C, update: &RecordUpdate) -> Result<()> {
    match update {
        RecordUpdate::State {
            new,
            state,
            at_ms,
            attempt,
            worker,
            message,
        } => {
            let attempt = attempt.map(i64::from);
            exec(
                c,
                STATE_SQL,
                &[
                    &new.key,
                    &new.runner,
                    &new.bench,
                    &new.payload,
                    &correlation(new),
                    &json(&new.labels),
                    &new.submitted_by,
                    &state.as_str(),
                    &ms(*at_ms),
                    &attempt,
                    worker,
                    message,
                ],
            )
            .await?;
            Ok(())
        }
        RecordUpdate::AttemptEnded { key, detail, state } => {
            exec(
                c,
                ATTEMPT_SQL,
                &[
                    key,
                    &json(detail),
                    &state.as_str(),
                    &ms(detail.ended_ms),
                    &i64::from(detail.attempt),
                    &detail.worker,
                    &attempt_message(detail),
                ],
            )
            .await?;
            Ok(())
        }
        RecordUpdate::Settled(s) => {
            let attempt = s.attempt.as_ref().map(json);
            let result = s.result.as_ref().map(json);
            let message = match (&s.result, &s.error) {
                (Some(r), _) => format!("settled: {}", r.status),
                (None, Some(e)) => format!("settled: {e}"),
                (None, None) => "settled".to_owned(),
            };
            let attempt_no = s.attempt.as_ref().map(|a| i64::from(a.attempt));
            let worker = s.attempt.as_ref().map(|a| a.worker.clone());
            exec(
                c,
                SETTLED_SQL,
                &[
                    &s.new.key,
                    &s.state.as_str(),
                    &ms(s.at_ms),
                    &attempt,
                    &result,
                    &json(&s.artifacts),
                    &json(&s.cases),
                    &s.error,
                    &s.new.runner,
                    &s.new.bench,
                    &s.new.payload,
                    &correlation(&s.new),
                    &json(&s.new.labels),
                    &s.new.submitted_by,
                    &attempt_no,
                    &worker,
                    &message,
                ],
            )
            .await?;
            Ok(())
        }
        RecordUpdate::Reopened { key, message } => reopen(c, key, message).await,
        RecordUpdate::CancelRequested { key, at_ms, by } => {
            exec(
                c,
                CANCEL_SQL,
                &[key, &ms(*at_ms), &format!("cancel requested by {by}")],
            )
            .await?;
            Ok(())
        }
    }
}

const RECORD_COLUMNS: &str = "key, runner, bench, payload, correlation_id, labels, submitted_by,
     state, created_at, updated_at, settled_at, cancel_requested, attempts::text, result, artifacts,
     cases, error";

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn record_row(r: &tokio_postgres::Row) -> ExecutionRecord {
    let text = |i: usize| -> String { r.get(i) };
    let state: String = r.get(7);
    ExecutionRecord {
        new: NewExecution {
            key: r.get(0),
            runner: r.get(1),
            bench: r.get(2),
            payload: r.get(3),
            correlation_id: r.get(4),
            labels: serde_json::from_str(&text(5)).unwrap_or_default(),
            submitted_by: r.get(6),
        },
        state: ExecState::parse(&state).unwrap_or(ExecState::Error),
        created_ms: to_u64(r.get(8)),
        updated_ms: to_u64(r.get(9)),
        settled_ms: r.get::<_, Option<i64>>(10).map(to_u64),
        cancel_requested: r.get(11),
        attempts: serde_json::from_str(&text(12)).unwrap_or_default(),
        result: r
            .get::<_, Option<String>>(13)
            .and_then(|t| serde_json::from_str(&t).ok()),
        artifacts: serde_json::from_str(&text(14)).unwrap_or_default(),
        cases: serde_json::from_str(&text(15)).unwrap_or_default(),
        error: r.get(16),
        timeline: Vec::new(),
    }
}

/// One record with its timeline.
pub(super) async fn get<C: GenericClient>(c: &C, key: &str) -> Result<Option<ExecutionRecord>> {
    let Some(row) = c
        .query_opt(
            &format!("SELECT {RECORD_COLUMNS} FROM executions WHERE key = $1"),
            &[&key],
        )
        .await
        .map_err(pg_err)?
    else {
        return Ok(None);
    };
    let mut record = record_row(&row);
    let events = c
        .query(
            "SELECT at, state, attempt, worker, message FROM execution_events
             WHERE key = $1 ORDER BY id",
            &[&key],
        )
        .await
        .map_err(pg_err)?;
    record.timeline = events
        .iter()
        .map(|r| {
            let state: String = r.get(1);
            TimelineEvent {
                at_ms: to_u64(r.get(0)),
                state: ExecState::parse(&state).unwrap_or(ExecState::Error),
                attempt: r
                    .get::<_, Option<i64>>(2)
                    .and_then(|a| u32::try_from(a).ok()),
                worker: r.get(3),
                message: r.get(4),
            }
        })
        .collect();
    Ok(Some(record))
}

/// Records matching `filter`, newest first.
pub(super) async fn list<C: GenericClient>(
    c: &C,
    filter: &HistoryFilter,
) -> Result<Vec<ExecutionRecord>> {
    let mut sql = format!("SELECT {RECORD_COLUMNS} FROM executions WHERE true");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if let Some(c) = &filter.correlation_id {
        args.push(Box::new(c.clone()));
        sql.push_str(&format!(" AND correlation_id = ${}", args.len()));
    }
    if let Some(r) = &filter.runner {
        args.push(Box::new(r.clone()));
        sql.push_str(&format!(" AND runner = ${}", args.len()));
    }
    if let Some(s) = filter.state {
        args.push(Box::new(s.as_str().to_owned()));
        sql.push_str(&format!(" AND state = ${}", args.len()));
    }
    if let Some(since) = filter.since_ms {
        args.push(Box::new(ms(since)));
        sql.push_str(&format!(" AND created_at >= ${}", args.len()));
    }
    if let Some(before) = filter.before_ms {
        args.push(Box::new(ms(before)));
        sql.push_str(&format!(" AND created_at < ${}", args.len()));
    }
    args.push(Box::new(
        i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX),
    ));
    sql.push_str(&format!(
        " ORDER BY created_at DESC, key DESC LIMIT ${}",
        args.len()
    ));
    let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
    let rows = c.query(&sql, &refs).await.map_err(pg_err)?;
    Ok(rows.iter().map(record_row).collect())
}
