//! The embedded default: one SQLite file (WAL) holding the queue, the
//! dead-letter table, the journal, worker heartbeats, locks and execution
//! records. One machine: the file is the truth for every worker that opens
//! it, and for no other machine.

mod queue;
mod records;
mod state;
mod writer;

use writer::Pending;
pub(super) use writer::immediate;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// WAL pages between checkpoints (SQLite's default: 1,000). Short tests
/// rewrite the same few pages, copied once per checkpoint however often
/// they changed; its fsyncs, which stall the writer on a disk, come a
/// quarter as often. The WAL grows to about 16 MiB.
const WAL_CHECKPOINT_PAGES: i64 = 4_000;

/// Numbered migrations; `PRAGMA user_version` holds how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema (files made before migrations were numbered
    // already have it; IF NOT EXISTS keeps them).
    r#"
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
    state         TEXT    NOT NULL,
    provisions    INTEGER NOT NULL DEFAULT 0,
    note          TEXT,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id           TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
"#,
    // 2: unique live execution keys, a journal entry per provision (a
    // failed teardown is never overwritten), the worker registry, store
    // locks, leak sightings and execution records.
    r#"
ALTER TABLE tasks ADD COLUMN execution_key TEXT;
ALTER TABLE tasks ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}';
UPDATE tasks SET execution_key = CASE WHEN json_valid(body) THEN json_extract(body, '$.execution_key') END
 WHERE state IN ('ready', 'leased');
UPDATE tasks SET execution_key = NULL
 WHERE execution_key IS NOT NULL AND id NOT IN
   (SELECT MIN(id) FROM tasks WHERE execution_key IS NOT NULL AND state IN ('ready', 'leased') GROUP BY execution_key);
CREATE UNIQUE INDEX tasks_live_key ON tasks(execution_key)
 WHERE execution_key IS NOT NULL AND state IN ('ready', 'leased');

CREATE TABLE journal_v2 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_key TEXT    NOT NULL,
    handle_id     TEXT    NOT NULL,
    runner_type   TEXT    NOT NULL,
    handle        TEXT    NOT NULL,
    owner         TEXT    NOT NULL,
    state         TEXT    NOT NULL,          -- live | released | teardown_failed
    reap_attempts INTEGER NOT NULL DEFAULT 0,
    note          TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
INSERT INTO journal_v2 (execution_key, handle_id, runner_type, handle, owner, state, note, created_at, updated_at)
 SELECT execution_key,
        COALESCE(CASE WHEN json_valid(handle) THEN json_extract(handle, '$.handle_id') END, ''),
        runner_type, handle, owner, state, note, updated_at, updated_at
   FROM journal;
DROP TABLE journal;
ALTER TABLE journal_v2 RENAME TO journal;
CREATE UNIQUE INDEX journal_live_key ON journal(execution_key) WHERE state = 'live';
CREATE INDEX journal_open ON journal(state) WHERE state <> 'released';

ALTER TABLE workers ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN runners TEXT NOT NULL DEFAULT '[]';
ALTER TABLE workers ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN started_at INTEGER NOT NULL DEFAULT 0;

CREATE TABLE locks (
    name       TEXT PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE leak_sightings (
    runner_type TEXT    NOT NULL,
    resource_id TEXT    NOT NULL,
    first_seen  INTEGER NOT NULL,
    PRIMARY KEY (runner_type, resource_id)
);
CREATE TABLE executions (
    key              TEXT PRIMARY KEY,
    runner           TEXT    NOT NULL,
    bench            TEXT    NOT NULL DEFAULT '',
    payload          TEXT    NOT NULL DEFAULT '',
    correlation_id   TEXT    NOT NULL,
    labels           TEXT    NOT NULL DEFAULT '{}',
    submitted_by     TEXT    NOT NULL DEFAULT '',
    state            TEXT    NOT NULL,
    settled          INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    settled_at       INTEGER,
    attempts         TEXT    NOT NULL DEFAULT '[]',
    result           TEXT,
    artifacts        TEXT    NOT NULL DEFAULT '[]',
    cases            TEXT    NOT NULL DEFAULT '[]',
    error            TEXT
);
CREATE INDEX executions_created ON executions(created_at);
CREATE INDEX executions_correlation ON executions(correlation_id, created_at);
CREATE INDEX executions_cancel ON executions(cancel_requested) WHERE cancel_requested = 1 AND settled = 0;
CREATE TABLE execution_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    state   TEXT    NOT NULL,
    attempt INTEGER,
    worker  TEXT,
    message TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX execution_events_key ON execution_events(key, id);
"#,
];

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

/// The SQLite-backed queue and store. Cheap to clone.
///
/// Reads run one at a time on the blocking pool. The writes of the hot
/// path (lease, journal, settle, records) are grouped: while one group
/// transaction commits, the writes that arrive wait and then share the
/// next one, each in its own savepoint. Under load a worker's concurrent
/// tasks commit together instead of one transaction (and one blocking-pool
/// hop) each.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    pending: Arc<Mutex<Pending>>,
    path: String,
}

impl SqliteStore {
    /// The identity of this opened file, shared by its clones.
    fn database(&self) -> usize {
        Arc::as_ptr(&self.conn).addr()
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteStore({})", self.path)
    }
}

fn store_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Store(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn now() -> i64 {
    to_i64(super::now_ms())
}

/// A text column that may hold bytes that are not UTF-8 (written by
/// something else): the text, or what is wrong with it.
fn text_column(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Result<String, String>> {
    use rusqlite::types::ValueRef;
    let bytes = match row.get_ref(idx)? {
        ValueRef::Text(b) | ValueRef::Blob(b) => b,
        ValueRef::Null => return Ok(Ok(String::new())),
        other => return Ok(Err(format!("is a {:?}, not text", other.data_type()))),
    };
    Ok(String::from_utf8(bytes.to_vec()).map_err(|e| {
        format!(
            "is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    }))
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path`, applying migrations.
    /// The file (and its WAL and shared-memory files) is readable by its
    /// owner only.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Store(format!("{what} {shown}: {e}"))
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Store(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        // Create the file 0600 before SQLite does (it would follow the
        // umask); SQLite gives its WAL and shared-memory files the same mode.
        create_private(path).map_err(|e| fail("cannot create", &e))?;
        let conn = Connection::open(path).map_err(|e| fail("cannot open", &e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| fail("cannot configure", &e))?;
        // Switching to WAL takes an exclusive lock and does not wait on the
        // busy handler: while another process opens (and migrates) the same
        // new file it fails at once with "database is locked", so retry.
        let started = std::time::Instant::now();
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(
                        f.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && started.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(fail("cannot open (is it an SQLite database?)", &e)),
            }
        }
        // WAL with NORMAL is durable against process crashes (what workers
        // face); only an OS crash may lose the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| fail("cannot configure", &e))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(|e| fail("cannot configure", &e))?;
        // A file made by an older version (or by hand) may be readable by
        // others: tighten it and its companions, now that it is a database.
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{shown}{suffix}"));
            tighten(&file).map_err(|e| fail("cannot restrict the mode of", &e))?;
        }
        migrate(&conn).map_err(|e| match e {
            StoreError::Store(m) => StoreError::Store(format!("{shown}: {m}")),
            other => other,
        })?;
        conn.set_prepared_statement_cache_capacity(64);
        // Plans that never depend on bound values. Without this SQLite
        // (3.47 and later) reads a bound `LIMIT ?` while planning and marks
        // the statement to be planned again whenever that parameter is
        // bound anew: the lease statement was parsed and planned on every
        // lease, most of its cost and a tenth of the worker's CPU for
        // short tests. (The store keeps no `ANALYZE` statistics, the other
        // thing plans could take from bound values.)
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(|e| fail("cannot configure", &e))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            pending: Arc::default(),
            path: shown,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| store_err(format!("store task failed: {e}")))?
    }

    fn parse_id(id: &str, what: &'static str) -> Result<i64, StoreError> {
        id.parse().map_err(|_| StoreError::NotFound {
            what,
            id: id.to_owned(),
        })
    }

    /// Tasks currently leased (for tests and `serve`'s drain check).
    pub async fn leased_count(&self) -> Result<u64, StoreError> {
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

    /// Every journal entry, released ones included, oldest first (tests and
    /// audits).
    pub async fn journal_all(&self) -> Result<Vec<super::JournalEntry>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT id, execution_key, handle, owner, state, reap_attempts, note FROM journal ORDER BY id",
                )
                .map_err(store_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                })
                .map_err(store_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, key, handle, owner, state, reap, note) = row.map_err(store_err)?;
                out.push(super::JournalEntry {
                    id,
                    execution_key: key,
                    handle: runner_core::RunnerHandle::from_json(&handle).map_err(store_err)?,
                    owner,
                    state: super::JournalState::parse(&state),
                    owner_alive: false,
                    reap_attempts: u32::try_from(reap).unwrap_or(u32::MAX),
                    note,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The stored outcomes (JSON) of acked tasks.
    pub async fn outcomes(&self) -> Result<Vec<String>, StoreError> {
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
}

/// Create `path` with mode 0600 if it does not exist.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove group and other permissions from `path`, if it exists.
fn tighten(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Apply the migrations the file lacks, all under one write lock so two
/// processes opening a new file at once (a `serve` and a `submit`) do not
/// both run them; refuse a file from a newer program.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let version = |conn: &Connection| -> Result<i64, StoreError> {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(store_err)
    };
    let found = version(conn)?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    if found == known {
        return Ok(());
    }
    // The version is read again once the lock is held: another process may
    // have migrated between the first look and the lock.
    conn.execute_batch("BEGIN IMMEDIATE").map_err(store_err)?;
    let result = (|| {
        let found = version(conn)?;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            let version = i + 1;
            conn.execute_batch(&format!("{sql}\nPRAGMA user_version = {version};"))
                .map_err(|e| store_err(format!("migration {version} failed: {e}")))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(store_err),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_is_checkpointed_every_wal_checkpoint_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        let conn = store.conn.lock().unwrap();
        let pages = conn.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0));
        assert_eq!(pages, Ok(WAL_CHECKPOINT_PAGES));
    }

    #[test]
    fn a_file_from_before_migrations_is_upgraded_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(
                "INSERT INTO journal (execution_key, runner_type, handle, owner, state, updated_at)
                 VALUES ('k', 'local_mock', '{\"handle_id\":\"h1\"}', 'w', 'live', 1)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO tasks (body, state, visible_at, created_at, updated_at)
                 VALUES ('{\"execution_key\":\"a\"}', 'ready', 0, 0, 0),
                        ('{\"execution_key\":\"a\"}', 'ready', 0, 0, 0),
                        ('not json', 'ready', 0, 0, 0)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let conn = store.conn.lock().unwrap();
        let (key, handle_id): (String, String) = conn
            .query_row("SELECT execution_key, handle_id FROM journal", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((key.as_str(), handle_id.as_str()), ("k", "h1"));
        let keyed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE execution_key = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(keyed, 1, "duplicate live keys keep one owner of the key");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA user_version = 99;").unwrap();
        }
        let err = SqliteStore::open(&path).unwrap_err();
        assert_eq!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                known: MIGRATIONS.len() as i64
            }
        );
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 99, "never downgraded");
    }

    #[test]
    fn the_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite3");
        let _store = SqliteStore::open(&path).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("q.sqlite3{suffix}"));
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
    }

    #[test]
    fn a_text_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            "hello, this is not a database, just some text\n".repeat(100),
        )
        .unwrap();
        let err = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("notes.txt"), "{err}");
    }
}
