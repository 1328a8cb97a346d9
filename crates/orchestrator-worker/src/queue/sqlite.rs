//! The embedded default: one SQLite file (WAL) holding the queue, the
//! dead-letter table, the handle journal and worker heartbeats.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_core::RunnerHandle;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{AttemptRecord, DeadLetter, Lease, QueueDepth, QueueError, TaskQueue, now_ms};

/// Statements through the connection's prepared-statement cache: the
/// store runs the same few statements for every task, and preparing one
/// costs about as much as running it.
trait Cached {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    body        TEXT    NOT NULL,
    state       TEXT    NOT NULL,            -- ready | leased | done | dead
    attempts    INTEGER NOT NULL DEFAULT 0,
    visible_at  INTEGER NOT NULL,            -- ms; for leased: lease expiry
    lease_owner TEXT,
    lease_token TEXT,
    history     TEXT    NOT NULL DEFAULT '[]',
    outcome     TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_visible ON tasks(state, visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    history    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    replayed   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS journal (
    execution_key TEXT PRIMARY KEY,
    runner_type   TEXT    NOT NULL,
    handle        TEXT    NOT NULL,
    owner         TEXT    NOT NULL,
    state         TEXT    NOT NULL,          -- live | released | teardown_failed
    provisions    INTEGER NOT NULL DEFAULT 0,
    note          TEXT,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id           TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
"#;

/// The state of a journaled handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalState {
    /// Provisioned and not yet released.
    Live,
    /// Torn down.
    Released,
    /// Teardown failed; the reaper will retry.
    TeardownFailed,
}

impl JournalState {
    fn as_str(self) -> &'static str {
        match self {
            JournalState::Live => "live",
            JournalState::Released => "released",
            JournalState::TeardownFailed => "teardown_failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "released" => JournalState::Released,
            "teardown_failed" => JournalState::TeardownFailed,
            _ => JournalState::Live,
        }
    }
}

/// One journaled handle.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The execution key it belongs to.
    pub execution_key: String,
    /// The handle.
    pub handle: RunnerHandle,
    /// The worker that holds it.
    pub owner: String,
    /// Live, released or teardown failed.
    pub state: JournalState,
    /// How many times this key was provisioned (1 unless something went wrong).
    pub provisions: u32,
    /// The owner's last heartbeat (ms), if it ever beat.
    pub owner_heartbeat_ms: Option<u64>,
}

/// The SQLite-backed queue and journal. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteStore({})", self.path)
    }
}

fn store_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Store(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| store_err(format!("cannot create {}: {e}", parent.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| store_err(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(store_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(store_err)?;
        // WAL with NORMAL is durable against process crashes (what workers
        // face); only an OS crash may lose the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(store_err)?;
        conn.execute_batch(SCHEMA).map_err(store_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.display().to_string(),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| store_err(format!("store task failed: {e}")))?
    }

    fn parse_id(id: &str, what: &'static str) -> Result<i64, QueueError> {
        id.parse().map_err(|_| QueueError::NotFound {
            what,
            id: id.to_owned(),
        })
    }

    // ---- journal -------------------------------------------------------

    /// Take over the live handle journaled for `key`, if any (a redelivery).
    pub async fn journal_claim(
        &self,
        key: &str,
        worker: &str,
    ) -> Result<Option<RunnerHandle>, QueueError> {
        let (key, worker) = (key.to_owned(), worker.to_owned());
        self.with(move |c| {
            let tx = c.transaction().map_err(store_err)?;
            let handle: Option<String> = tx
                .query_row_cached(
                    "SELECT handle FROM journal WHERE execution_key = ?1 AND state = 'live'",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_err)?;
            if handle.is_some() {
                tx.exec_cached(
                    "UPDATE journal SET owner = ?2, updated_at = ?3 WHERE execution_key = ?1",
                    params![key, worker, to_i64(now_ms())],
                )
                .map_err(store_err)?;
            }
            tx.commit().map_err(store_err)?;
            handle
                .map(|h| RunnerHandle::from_json(&h).map_err(store_err))
                .transpose()
        })
        .await
    }

    /// The worker that holds the handle journaled for `key`, if any.
    pub async fn journal_owner(&self, key: &str) -> Result<Option<String>, QueueError> {
        let key = key.to_owned();
        self.with(move |c| {
            c.query_row_cached(
                "SELECT owner FROM journal WHERE execution_key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(store_err)
        })
        .await
    }

    /// Record a freshly provisioned handle, before it is used.
    pub async fn journal_provisioned(
        &self,
        key: &str,
        handle: &RunnerHandle,
        worker: &str,
    ) -> Result<(), QueueError> {
        let (key, worker) = (key.to_owned(), worker.to_owned());
        let (runner_type, json) = (handle.runner_type().to_owned(), handle.to_json());
        self.with(move |c| {
            c.exec_cached(
                "INSERT INTO journal (execution_key, runner_type, handle, owner, state, provisions, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'live', 1, ?5)
                 ON CONFLICT(execution_key) DO UPDATE SET
                   runner_type = excluded.runner_type, handle = excluded.handle, owner = excluded.owner,
                   state = 'live', provisions = journal.provisions + 1, updated_at = excluded.updated_at",
                params![key, runner_type, json, worker, to_i64(now_ms())],
            )
            .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    /// Record the end of a handle: released, or teardown failed with `note`.
    pub async fn journal_end(
        &self,
        key: &str,
        state: JournalState,
        note: Option<&str>,
    ) -> Result<(), QueueError> {
        let key = key.to_owned();
        let note = note.map(str::to_owned);
        self.with(move |c| {
            c.exec_cached(
                "UPDATE journal SET state = ?2, note = ?3, updated_at = ?4 WHERE execution_key = ?1",
                params![key, state.as_str(), note, to_i64(now_ms())],
            )
            .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    /// Every journal entry, with its owner's last heartbeat.
    pub async fn journal_entries(&self) -> Result<Vec<JournalEntry>, QueueError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT j.execution_key, j.handle, j.owner, j.state, j.provisions, w.heartbeat_at
                     FROM journal j LEFT JOIN workers w ON w.id = j.owner ORDER BY j.execution_key",
                )
                .map_err(store_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                })
                .map_err(store_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (key, handle, owner, state, provisions, beat) = row.map_err(store_err)?;
                let handle = RunnerHandle::from_json(&handle).map_err(store_err)?;
                out.push(JournalEntry {
                    execution_key: key,
                    handle,
                    owner,
                    state: JournalState::parse(&state),
                    provisions: u32::try_from(provisions).unwrap_or(u32::MAX),
                    owner_heartbeat_ms: beat.map(to_u64),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Record that `worker` (process `pid`) is alive now.
    pub async fn worker_heartbeat(&self, worker: &str, pid: u32) -> Result<(), QueueError> {
        let worker = worker.to_owned();
        self.with(move |c| {
            c.exec_cached(
                "INSERT INTO workers (id, pid, heartbeat_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                params![worker, i64::from(pid), to_i64(now_ms())],
            )
            .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    /// Remove a worker that stopped cleanly.
    pub async fn worker_gone(&self, worker: &str) -> Result<(), QueueError> {
        let worker = worker.to_owned();
        self.with(move |c| {
            c.exec_cached("DELETE FROM workers WHERE id = ?1", params![worker])
                .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    /// Tasks currently leased (for tests and `serve`'s drain check).
    pub async fn leased_count(&self) -> Result<u64, QueueError> {
        self.with(|c| {
            c.query_row_cached(
                "SELECT COUNT(*) FROM tasks WHERE state = 'leased'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(to_u64)
            .map_err(store_err)
        })
        .await
    }

    /// The stored outcomes (JSON) of acked tasks.
    pub async fn outcomes(&self) -> Result<Vec<String>, QueueError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT outcome FROM tasks WHERE state = 'done' ORDER BY id")
                .map_err(store_err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, Option<String>>(0))
                .map_err(store_err)?;
            rows.map(|r| r.map(Option::unwrap_or_default).map_err(store_err))
                .collect()
        })
        .await
    }

    fn settle(
        c: &Connection,
        lease: &Lease,
        sql: &str,
        extra: &[&dyn rusqlite::ToSql],
    ) -> Result<(), QueueError> {
        let id = Self::parse_id(&lease.task_id, "task")?;
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&id, &lease.token];
        args.extend_from_slice(extra);
        let changed = c.exec_cached(sql, args.as_slice()).map_err(store_err)?;
        if changed == 0 {
            return Err(QueueError::LeaseLost {
                task_id: lease.task_id.clone(),
            });
        }
        Ok(())
    }
}

fn history_with(lease: &Lease, record: AttemptRecord) -> String {
    let mut history = lease.history.clone();
    history.push(record);
    serde_json::to_string(&history).unwrap_or_else(|_| "[]".into())
}

#[runner_core::async_trait]
impl TaskQueue for SqliteStore {
    async fn submit_raw(&self, body: &str) -> Result<String, QueueError> {
        let body = body.to_owned();
        self.with(move |c| {
            let now = to_i64(now_ms());
            c.exec_cached(
                "INSERT INTO tasks (body, state, visible_at, created_at, updated_at) VALUES (?1, 'ready', ?2, ?2, ?2)",
                params![body, now],
            )
            .map_err(store_err)?;
            Ok(c.last_insert_rowid().to_string())
        })
        .await
    }

    async fn lease(&self, worker: &str, visibility: Duration) -> Result<Option<Lease>, QueueError> {
        let worker = worker.to_owned();
        let token = format!("{:016x}", fastrand::u64(..));
        self.with(move |c| {
            let now = to_i64(now_ms());
            let until = now.saturating_add(i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX));
            // Ready tasks whose delay passed, and leased ones whose lease expired.
            let row = c
                .query_row_cached(
                    "UPDATE tasks SET state = 'leased', lease_owner = ?2, lease_token = ?3,
                            visible_at = ?4, attempts = attempts + 1, updated_at = ?1
                     WHERE id = (SELECT id FROM tasks WHERE state IN ('ready', 'leased') AND visible_at <= ?1
                                 ORDER BY visible_at, id LIMIT 1)
                     RETURNING id, body, attempts, history",
                    params![now, worker, token, until],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    },
                )
                .optional()
                .map_err(store_err)?;
            Ok(row.map(|(id, body, attempts, history)| Lease {
                task_id: id.to_string(),
                body,
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                token: token.clone(),
                history: serde_json::from_str(&history).unwrap_or_default(),
                attributes: Default::default(),
            }))
        })
        .await
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<(), QueueError> {
        let lease = lease.clone();
        self.with(move |c| {
            let until = to_i64(now_ms()).saturating_add(i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX));
            Self::settle(
                c,
                &lease,
                "UPDATE tasks SET visible_at = ?3 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'",
                &[&until],
            )
        })
        .await
    }

    async fn ack(&self, lease: &Lease, outcome: &str) -> Result<(), QueueError> {
        let (lease, outcome) = (lease.clone(), outcome.to_owned());
        self.with(move |c| {
            Self::settle(
                c,
                &lease,
                "UPDATE tasks SET state = 'done', outcome = ?3, lease_token = NULL, updated_at = ?4
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'",
                &[&outcome, &to_i64(now_ms())],
            )
        })
        .await
    }

    async fn requeue(
        &self,
        lease: &Lease,
        delay: Duration,
        record: AttemptRecord,
        count_attempt: bool,
    ) -> Result<(), QueueError> {
        let lease = lease.clone();
        let history = history_with(&lease, record);
        self.with(move |c| {
            let now = to_i64(now_ms());
            let at = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
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

    async fn dead_letter(
        &self,
        lease: &Lease,
        reason: &str,
        record: AttemptRecord,
    ) -> Result<(), QueueError> {
        let (lease, reason) = (lease.clone(), reason.to_owned());
        let history = history_with(&lease, record);
        self.with(move |c| {
            let tx = c.transaction().map_err(store_err)?;
            let now = to_i64(now_ms());
            Self::settle(
                &tx,
                &lease,
                "UPDATE tasks SET state = 'dead', lease_token = NULL, history = ?3, updated_at = ?4
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'",
                &[&history, &now],
            )?;
            tx.exec_cached(
                "INSERT INTO dead_letters (task_id, body, reason, history, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![Self::parse_id(&lease.task_id, "task")?, lease.body, reason, history, now],
            )
            .map_err(store_err)?;
            tx.commit().map_err(store_err)
        })
        .await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.with(|c| {
            let now = to_i64(now_ms());
            let mut depth = QueueDepth::default();
            let mut stmt = c
                .prepare(
                    "SELECT state, visible_at <= ?1, COUNT(*) FROM tasks GROUP BY state, visible_at <= ?1",
                )
                .map_err(store_err)?;
            let rows = stmt
                .query_map(params![now], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(store_err)?;
            for row in rows {
                let (state, visible, n) = row.map_err(store_err)?;
                let n = to_u64(n);
                match (state.as_str(), visible) {
                    ("ready", true) => depth.ready += n,
                    ("ready", false) => depth.delayed += n,
                    // An expired lease is as good as ready.
                    ("leased", true) => depth.ready += n,
                    ("leased", false) => depth.leased += n,
                    ("done", _) => depth.done += n,
                    ("dead", _) => depth.dead += n,
                    _ => {}
                }
            }
            Ok(depth)
        })
        .await
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |c| {
            let mut stmt = c
                .prepare(
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

    async fn dlq_show(&self, id: &str) -> Result<DeadLetter, QueueError> {
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
            .ok_or(QueueError::NotFound {
                what: "dead letter",
                id,
            })
        })
        .await
    }

    async fn dlq_replay(&self, id: &str) -> Result<String, QueueError> {
        let key = Self::parse_id(id, "dead letter")?;
        let id = id.to_owned();
        self.with(move |c| {
            let tx = c.transaction().map_err(store_err)?;
            let body: Option<String> = tx
                .query_row_cached(
                    "SELECT body FROM dead_letters WHERE id = ?1 AND replayed = 0",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_err)?;
            let Some(body) = body else {
                return Err(QueueError::NotFound {
                    what: "dead letter (not yet replayed)",
                    id,
                });
            };
            let now = to_i64(now_ms());
            tx.exec_cached(
                "INSERT INTO tasks (body, state, visible_at, created_at, updated_at) VALUES (?1, 'ready', ?2, ?2, ?2)",
                params![body, now],
            )
            .map_err(store_err)?;
            let task_id = tx.last_insert_rowid();
            tx.exec_cached("UPDATE dead_letters SET replayed = 1 WHERE id = ?1", params![key])
                .map_err(store_err)?;
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

    fn record(attempt: u32) -> AttemptRecord {
        AttemptRecord {
            attempt,
            worker: "w".into(),
            phase: None,
            kind: None,
            message: "m".into(),
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn lease_ack_requeue_dead_letter_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
        let id = q.submit_raw("{\"x\":1}").await.unwrap();
        let lease = q
            .lease("w1", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((lease.task_id.as_str(), lease.attempt), (id.as_str(), 1));
        assert!(
            q.lease("w2", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
        q.requeue(&lease, Duration::ZERO, record(1), true)
            .await
            .unwrap();
        // The old lease is settled: using it again is refused.
        assert!(matches!(
            q.ack(&lease, "{}").await,
            Err(QueueError::LeaseLost { .. })
        ));
        let again = q
            .lease("w2", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.attempt, 2);
        assert_eq!(again.history.len(), 1);
        q.dead_letter(&again, "gave up", record(2)).await.unwrap();
        let dead = q.dlq_list(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].history.len(), 2);
        assert_eq!(q.depth().await.unwrap().dead, 1);
        let new_id = q.dlq_replay(&dead[0].id).await.unwrap();
        assert_ne!(new_id, id);
        assert!(q.dlq_list(10).await.unwrap().is_empty());
        let fresh = q
            .lease("w3", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fresh.attempt, 1);
        q.ack(&fresh, "{\"ok\":true}").await.unwrap();
        assert_eq!(q.depth().await.unwrap().done, 1);
        assert!(matches!(
            q.dlq_show("999").await,
            Err(QueueError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn expired_lease_is_redelivered_and_uncounted_requeue_gives_the_attempt_back() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
        q.submit_raw("{}").await.unwrap();
        let first = q
            .lease("dead-worker", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let second = q
            .lease("w2", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.task_id, first.task_id);
        assert_eq!(second.attempt, 2);
        assert!(matches!(
            q.extend(&first, Duration::from_secs(5)).await,
            Err(QueueError::LeaseLost { .. })
        ));
        q.requeue(&second, Duration::ZERO, record(2), false)
            .await
            .unwrap();
        let third = q
            .lease("w3", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.attempt, 2);
    }
}
