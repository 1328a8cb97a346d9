//! The task queue on SQLite: lease by an atomic `UPDATE ... RETURNING`,
//! fenced by a lease token; submit creates the execution record in the
//! same transaction.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Cached, SqliteStore, now, store_err, text_column, to_u64};
use crate::queue::{AttemptRecord, DeadLetter, Lease, QueueDepth, Submitted, TaskQueue};
use crate::store::{NewExecution, StoreError, millis};
use crate::task::Task;

type Result<T> = std::result::Result<T, StoreError>;

fn history_with(lease: &Lease, record: AttemptRecord) -> String {
    let mut history = lease.history.clone();
    history.push(record);
    serde_json::to_string(&history).unwrap_or_else(|_| "[]".into())
}

fn attributes_json() -> String {
    serde_json::to_string(&crate::telemetry::inject_current()).unwrap_or_else(|_| "{}".into())
}

/// The live task of `key`, if one is queued or leased.
fn live_task(c: &Connection, key: &str) -> Result<Option<i64>> {
    c.query_row_cached(
        "SELECT id FROM tasks WHERE execution_key = ?1 AND state IN ('ready', 'leased')",
        params![key],
        |r| r.get(0),
    )
    .optional()
    .map_err(store_err)
}

/// Insert the record and the task of one submission; `Some(existing)` when
/// the key was submitted before (nothing inserted).
fn insert_submission(
    c: &Connection,
    task: &Task,
    new: &NewExecution,
    attributes: &str,
) -> Result<Option<Submitted>> {
    let key = &task.execution_key;
    let known: bool = c
        .query_row_cached(
            "SELECT 1 FROM executions WHERE key = ?1",
            params![key],
            |_| Ok(true),
        )
        .optional()
        .map_err(store_err)?
        .unwrap_or(false);
    if known || live_task(c, key)?.is_some() {
        let task_id = live_task(c, key)?
            .map(|id| id.to_string())
            .unwrap_or_default();
        return Ok(Some(Submitted {
            task_id,
            existing: true,
        }));
    }
    let now = now();
    super::records::insert_record(c, new, now)?;
    c.exec_cached(
        "INSERT INTO tasks (body, execution_key, attributes, state, visible_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'ready', ?4, ?4, ?4)",
        params![task.to_json(), key, attributes, now],
    )
    .map_err(store_err)?;
    Ok(None)
}

/// Ready tasks whose delay passed, and leased ones whose lease expired,
/// oldest first, leased to `?2` with token `?3` until `?4`, at most `?5`.
/// One state at a time, each read in the order of the (state, visible_at)
/// index and stopped at the limit: with both states in one `IN`, SQLite
/// sorted every visible task on each lease (100,000 of them at the start
/// of a large drain) to keep a few.
const LEASE_ROWS: &str = "UPDATE tasks SET state = 'leased', lease_owner = ?2, lease_token = ?3,
        visible_at = ?4, attempts = attempts + 1, updated_at = ?1
 WHERE id IN (
     SELECT id FROM (
         SELECT id, visible_at FROM (
             SELECT id, visible_at FROM tasks WHERE state = 'ready' AND visible_at <= ?1
             ORDER BY visible_at, id LIMIT ?5)
         UNION ALL
         SELECT id, visible_at FROM (
             SELECT id, visible_at FROM tasks WHERE state = 'leased' AND visible_at <= ?1
             ORDER BY visible_at, id LIMIT ?5))
     ORDER BY visible_at, id LIMIT ?5)
 RETURNING id, body, attempts, history, attributes,
           NOT EXISTS (SELECT 1 FROM journal j
                       WHERE j.execution_key = tasks.execution_key AND j.state = 'live')";

fn lease_rows(
    c: &Connection,
    worker: &str,
    token: &str,
    visibility: Duration,
    max: usize,
) -> Result<Vec<Lease>> {
    let now = now();
    let until = now.saturating_add(millis(visibility));
    let limit = i64::try_from(max.max(1)).unwrap_or(1);
    let mut stmt = c.prepare_cached(LEASE_ROWS).map_err(store_err)?;
    let rows = stmt
        .query_map(params![now, worker, token, until, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                text_column(r, 1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })
        .map_err(store_err)?;
    let mut leases = Vec::new();
    for row in rows {
        let (id, body, attempts, history, attributes, journal_clear) = row.map_err(store_err)?;
        let (body, body_error) = match body {
            Ok(body) => (body, None),
            Err(problem) => (String::new(), Some(format!("the task body {problem}"))),
        };
        let history: Vec<AttemptRecord> = serde_json::from_str(&history).unwrap_or_default();
        leases.push(Lease {
            task_id: id.to_string(),
            body,
            body_error,
            attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
            failures: u32::try_from(history.iter().filter(|r| r.counted).count())
                .unwrap_or(u32::MAX),
            token: token.to_owned(),
            history,
            attributes: attributes
                .and_then(|a| serde_json::from_str(&a).ok())
                .unwrap_or_default(),
            journal_clear,
        });
    }
    leases.sort_by_key(|l| l.task_id.parse::<i64>().unwrap_or(i64::MAX));
    Ok(leases)
}

/// The ack of a leased task (its lease token proves it is still ours).
pub(super) const ACK_SQL: &str =
    "UPDATE tasks SET state = 'done', outcome = ?3, lease_token = NULL, updated_at = ?4
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'";

impl SqliteStore {
    pub(super) fn settle(
        c: &Connection,
        lease: &Lease,
        sql: &str,
        extra: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        let id = Self::parse_id(&lease.task_id, "task")?;
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&id, &lease.token];
        args.extend_from_slice(extra);
        let changed = c.exec_cached(sql, args.as_slice()).map_err(store_err)?;
        if changed == 0 {
            return Err(StoreError::LeaseLost {
                task_id: lease.task_id.clone(),
            });
        }
        Ok(())
    }
}

#[runner_core::async_trait]
impl TaskQueue for SqliteStore {
    fn keeps_records(&self) -> bool {
        true
    }

    fn database_id(&self) -> Option<usize> {
        Some(self.database())
    }

    async fn submit(&self, task: &Task, new: &NewExecution) -> Result<Submitted> {
        let (task, new) = (task.clone(), new.clone());
        let attributes = attributes_json();
        self.write(move |c| {
            let tx = super::immediate(c)?;
            if let Some(existing) = insert_submission(&tx, &task, &new, &attributes)? {
                return Ok(existing);
            }
            let id = tx.last_insert_rowid();
            tx.commit().map_err(store_err)?;
            Ok(Submitted {
                task_id: id.to_string(),
                existing: false,
            })
        })
        .await
    }

    async fn submit_batch(&self, tasks: &[(Task, NewExecution)]) -> Result<Vec<String>> {
        let tasks = tasks.to_vec();
        let attributes = attributes_json();
        self.write(move |c| {
            let tx = super::immediate(c)?;
            let mut ids = Vec::with_capacity(tasks.len());
            let mut existing = Vec::new();
            for (task, new) in &tasks {
                match insert_submission(&tx, task, new, &attributes)? {
                    Some(_) => existing.push(task.execution_key.clone()),
                    None => ids.push(tx.last_insert_rowid().to_string()),
                }
            }
            if !existing.is_empty() {
                return Err(StoreError::Exists { keys: existing });
            }
            tx.commit().map_err(store_err)?;
            Ok(ids)
        })
        .await
    }

    async fn submit_raw(&self, body: &str) -> Result<String> {
        let body = body.to_owned();
        let attributes = attributes_json();
        self.with(move |c| {
            let now = now();
            c.exec_cached(
                "INSERT INTO tasks (body, attributes, state, visible_at, created_at, updated_at)
                 VALUES (?1, ?2, 'ready', ?3, ?3, ?3)",
                params![body, attributes, now],
            )
            .map_err(store_err)?;
            Ok(c.last_insert_rowid().to_string())
        })
        .await
    }

    async fn lease(&self, worker: &str, visibility: Duration) -> Result<Option<Lease>> {
        Ok(self.lease_many(worker, visibility, 1).await?.pop())
    }

    async fn lease_many(
        &self,
        worker: &str,
        visibility: Duration,
        max: usize,
    ) -> Result<Vec<Lease>> {
        let worker = worker.to_owned();
        let token = format!("{:016x}", fastrand::u64(..));
        self.write_urgent(move |c| lease_rows(c, &worker, &token, visibility, max))
            .await
    }

    async fn remove_queued(&self, execution_key: &str) -> Result<bool> {
        let key = execution_key.to_owned();
        self.with(move |c| {
            let removed = c
                .exec_cached(
                    "DELETE FROM tasks WHERE execution_key = ?1
                       AND (state = 'ready' OR (state = 'leased' AND visible_at <= ?2))",
                    params![key, now()],
                )
                .map_err(store_err)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<()> {
        let lease = lease.clone();
        self.write(move |c| {
            let until = now().saturating_add(millis(visibility));
            Self::settle(
                c,
                &lease,
                "UPDATE tasks SET visible_at = ?3 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'",
                &[&until],
            )
        })
        .await
    }

    async fn ack(&self, lease: &Lease, outcome: &str) -> Result<()> {
        let (lease, outcome) = (lease.clone(), outcome.to_owned());
        self.write(move |c| Self::settle(c, &lease, ACK_SQL, &[&outcome, &now()]))
            .await
    }

    async fn requeue(
        &self,
        lease: &Lease,
        delay: Duration,
        record: AttemptRecord,
        count_attempt: bool,
    ) -> Result<()> {
        let lease = lease.clone();
        let history = history_with(
            &lease,
            AttemptRecord {
                counted: count_attempt,
                ..record
            },
        );
        self.write(move |c| {
            let now = now();
            let at = now.saturating_add(millis(delay));
            let give_back: i64 = if count_attempt { 0 } else { 1 };
            Self::settle(
                c,
                &lease,
                "UPDATE tasks SET state = 'ready', visible_at = ?3, lease_owner = NULL, lease_token = NULL,
                        history = ?4, attempts = attempts - ?5, updated_at = ?6
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'",
                &[&at, &history, &give_back, &now],
            )
        })
        .await
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str, record: AttemptRecord) -> Result<()> {
        let (lease, reason) = (lease.clone(), reason.to_owned());
        let history = history_with(&lease, record);
        self.write(move |c| {
            let tx = super::immediate(c)?;
            let now = now();
            Self::settle(
                &tx,
                &lease,
                "UPDATE tasks SET state = 'dead', lease_token = NULL, history = ?3, updated_at = ?4
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'",
                &[&history, &now],
            )?;
            let body = match &lease.body_error {
                Some(problem) => format!("<unreadable: {problem}>"),
                None => lease.body.clone(),
            };
            tx.exec_cached(
                "INSERT INTO dead_letters (task_id, body, reason, history, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![Self::parse_id(&lease.task_id, "task")?, body, reason, history, now],
            )
            .map_err(store_err)?;
            tx.commit().map_err(store_err)
        })
        .await
    }

    async fn depth(&self) -> Result<QueueDepth> {
        self.with(|c| {
            let now = now();
            let mut depth = QueueDepth::default();
            // Grouped by state alone, the (state, visible_at) index gives
            // the groups in order: grouping by the visibility too made
            // SQLite sort every task in a temporary B-tree on each call
            // (the heartbeat's, every 15 s), and the sorter's memory was
            // most of a serving worker's RSS growth over 100,000 tasks.
            let mut stmt = c
                .prepare_cached(
                    "SELECT state, COALESCE(SUM(visible_at <= ?1), 0), COUNT(*) FROM tasks GROUP BY state",
                )
                .map_err(store_err)?;
            let rows = stmt
                .query_map(params![now], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(store_err)?;
            for row in rows {
                let (state, visible, n) = row.map_err(store_err)?;
                let visible = to_u64(visible);
                depth.add(&state, true, visible);
                depth.add(&state, false, to_u64(n).saturating_sub(visible));
            }
            Ok(depth)
        })
        .await
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, task_id, body, reason, history, created_at FROM dead_letters
                     WHERE replayed = 0 ORDER BY id DESC LIMIT ?1",
                )
                .map_err(store_err)?;
            let rows = stmt
                .query_map(params![limit], dead_letter_row)
                .map_err(store_err)?;
            rows.map(|r| r.map_err(store_err)).collect()
        })
        .await
    }

    async fn dlq_show(&self, id: &str) -> Result<DeadLetter> {
        let key = Self::parse_id(id, "dead letter")?;
        let id = id.to_owned();
        self.with(move |c| {
            c.query_row_cached(
                "SELECT id, task_id, body, reason, history, created_at FROM dead_letters WHERE id = ?1",
                params![key],
                dead_letter_row,
            )
            .optional()
            .map_err(store_err)?
            .ok_or(StoreError::NotFound {
                what: "dead letter",
                id,
            })
        })
        .await
    }

    async fn dlq_replay(&self, id: &str) -> Result<String> {
        let key = Self::parse_id(id, "dead letter")?;
        let id = id.to_owned();
        self.with(move |c| {
            let tx = super::immediate(c)?;
            let body: Option<String> = tx
                .query_row_cached(
                    "SELECT body FROM dead_letters WHERE id = ?1 AND replayed = 0",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_err)?;
            let Some(body) = body else {
                return Err(StoreError::NotFound {
                    what: "dead letter (not yet replayed)",
                    id,
                });
            };
            let execution_key = Task::parse(&body).ok().map(|t| t.execution_key);
            if let Some(k) = &execution_key
                && let Some(live) = live_task(&tx, k)?
            {
                return Err(StoreError::Store(format!(
                    "execution key `{k}` is queued again already (task {live})"
                )));
            }
            let now = now();
            tx.exec_cached(
                "INSERT INTO tasks (body, execution_key, state, visible_at, created_at, updated_at)
                 VALUES (?1, ?2, 'ready', ?3, ?3, ?3)",
                params![body, execution_key, now],
            )
            .map_err(store_err)?;
            let task_id = tx.last_insert_rowid();
            tx.exec_cached(
                "UPDATE dead_letters SET replayed = 1 WHERE id = ?1",
                params![key],
            )
            .map_err(store_err)?;
            if let Some(k) = &execution_key {
                super::records::reopen(&tx, k, now, "replayed from the dead-letter queue")?;
            }
            tx.commit().map_err(store_err)?;
            Ok(task_id.to_string())
        })
        .await
    }
}

fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get::<_, i64>(0)?.to_string(),
        task_id: r.get::<_, i64>(1)?.to_string(),
        body: r.get(2)?,
        reason: r.get(3)?,
        history: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        created_ms: to_u64(r.get(5)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease statement is planned once: leases of different sizes
    /// bind `LIMIT ?5` anew each time, and with plans allowed to depend on
    /// bound values SQLite parsed and planned the statement again on every
    /// one of them.
    #[tokio::test]
    async fn the_lease_statement_is_not_planned_again_for_each_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
        for key in ["a", "b", "c", "d", "e"] {
            let task = Task::new(
                key,
                "local_mock",
                runner_core::BenchSpec::default(),
                runner_core::TestPayload::new(["true"]),
            );
            store.enqueue(&task).await.unwrap();
        }
        let mut leased = 0;
        for max in [1, 2, 1, 3] {
            leased += store
                .lease_many("w", Duration::from_secs(30), max)
                .await
                .unwrap()
                .len();
        }
        assert_eq!(leased, 5);
        let replanned = store
            .with(|c| {
                let stmt = c.prepare_cached(LEASE_ROWS).map_err(store_err)?;
                Ok(stmt.get_status(rusqlite::StatementStatus::RePrepare))
            })
            .await
            .unwrap();
        assert_eq!(replanned, 0, "the lease statement was planned again");
    }
}
