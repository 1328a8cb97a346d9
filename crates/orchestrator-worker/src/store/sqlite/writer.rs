//! Group commit: the writes of the hot path share one transaction each
//! time the writer runs, every write in a savepoint of its own, and a
//! write transaction ([`Tx`]) that nests as a savepoint inside the group.

use rusqlite::Connection;

use super::{SqliteStore, store_err};
use crate::store::StoreError;

/// A write transaction: `BEGIN IMMEDIATE` at the top level (so it never
/// fails on a read-to-write upgrade while another process writes), a
/// savepoint inside the writer's group transaction.
pub(crate) enum Tx<'c> {
    Top(rusqlite::Transaction<'c>),
    Nested(Nested<'c>),
}

/// Run `sql` (one statement, no rows) through the statement cache: the
/// writer's `BEGIN`, `COMMIT`, `SAVEPOINT` and `RELEASE` run several times
/// per task, and parsing them each time was a measurable share of a
/// task's store work.
fn run_cached(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A savepoint by cached statements (rusqlite's parses its SQL each
/// time); rolled back when dropped without [`Nested::commit`].
pub(crate) struct Nested<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Nested<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        run_cached(conn, "SAVEPOINT nested")?;
        Ok(Self { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.open = false;
        run_cached(self.conn, "RELEASE nested")
    }
}

impl Drop for Nested<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO nested; RELEASE nested");
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Tx::Top(t) => t,
            Tx::Nested(s) => s.conn,
        }
    }
}

impl Tx<'_> {
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Top(t) => t.commit(),
            Tx::Nested(s) => s.commit(),
        }
        .map_err(store_err)
    }
}

/// Begin a write transaction (see [`Tx`]).
pub(crate) fn immediate(c: &mut Connection) -> Result<Tx<'_>, StoreError> {
    if c.is_autocommit() {
        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map(Tx::Top)
            .map_err(store_err)
    } else {
        Nested::begin(c).map(Tx::Nested).map_err(store_err)
    }
}

/// At most this many writes share one transaction.
const GROUP_MAX: usize = 256;

/// One write waiting for the group transaction.
pub(super) trait WriteJob: Send {
    /// Run inside the group transaction (in its own savepoint).
    fn run(self: Box<Self>, c: &mut Connection) -> Box<dyn WriteDone>;
    /// The group transaction could not begin.
    fn fail(self: Box<Self>, error: &str);
}

/// A write that ran, waiting for the commit.
pub(super) trait WriteDone: Send {
    fn finish(self: Box<Self>, commit_error: Option<&str>);
}

type WriteFn<T> = Box<dyn FnOnce(&mut Connection) -> Result<T, StoreError> + Send>;

struct Job<T> {
    f: WriteFn<T>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

struct Ran<T> {
    result: Result<T, StoreError>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> WriteJob for Job<T> {
    fn run(self: Box<Self>, c: &mut Connection) -> Box<dyn WriteDone> {
        let Job { f, reply } = *self;
        let result = in_savepoint(c, f);
        Box::new(Ran { result, reply })
    }

    fn fail(self: Box<Self>, error: &str) {
        let _ = self.reply.send(Err(store_err(error)));
    }
}

impl<T: Send + 'static> WriteDone for Ran<T> {
    fn finish(self: Box<Self>, commit_error: Option<&str>) {
        let result = match commit_error {
            None => self.result,
            Some(e) => self
                .result
                .and(Err(store_err(format!("commit failed: {e}")))),
        };
        let _ = self.reply.send(result);
    }
}

/// `f` in a savepoint of its own: its failure (or panic) undoes its own
/// writes only, never the others' in the group.
fn in_savepoint<T>(c: &mut Connection, f: WriteFn<T>) -> Result<T, StoreError> {
    run_cached(c, "SAVEPOINT job").map_err(store_err)?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(c)))
        .unwrap_or_else(|_| Err(store_err("a store write panicked")));
    if result.is_ok() {
        run_cached(c, "RELEASE job").map_err(store_err)?;
    } else {
        c.execute_batch("ROLLBACK TO job; RELEASE job")
            .map_err(store_err)?;
    }
    result
}

/// Writes waiting for the writer, and whether a writer is running.
#[derive(Default)]
pub(super) struct Pending {
    /// Writes a test waits for before it can start (journaling its
    /// handle): committed in a group of their own, ahead of the rest.
    pub(super) urgent: Vec<Box<dyn WriteJob>>,
    pub(super) jobs: Vec<Box<dyn WriteJob>>,
    pub(super) writing: bool,
}

impl SqliteStore {
    /// A write, grouped with the others waiting into one transaction.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_in(false, f).await
    }

    /// A write a test waits for before it starts: in the next group, with
    /// only the other such writes (records and settlements wait for the
    /// group after).
    pub(super) async fn write_urgent<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_in(true, f).await
    }

    async fn write_in<T: Send + 'static>(
        &self,
        urgent: bool,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let job: Box<dyn WriteJob> = Box::new(Job {
                f: Box::new(f),
                reply,
            });
            if urgent {
                pending.urgent.push(job);
            } else {
                pending.jobs.push(job);
            }
            !std::mem::replace(&mut pending.writing, true)
        };
        if start {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.write_groups());
        }
        answer
            .await
            .map_err(|_| store_err("the store's writer stopped"))?
    }

    /// Commit groups until no write waits.
    fn write_groups(&self) {
        loop {
            let jobs: Vec<Box<dyn WriteJob>> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let queue = if pending.urgent.is_empty() {
                    &mut pending.jobs
                } else {
                    &mut pending.urgent
                };
                if queue.is_empty() {
                    pending.writing = false;
                    return;
                }
                let take = queue.len().min(GROUP_MAX);
                queue.drain(..take).collect()
            };
            let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = run_cached(&conn, "BEGIN IMMEDIATE") {
                let error = format!("cannot begin a write: {e}");
                for job in jobs {
                    job.fail(&error);
                }
                continue;
            }
            let ran: Vec<Box<dyn WriteDone>> =
                jobs.into_iter().map(|job| job.run(&mut conn)).collect();
            let commit_error = run_cached(&conn, "COMMIT").err().map(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                e.to_string()
            });
            drop(conn);
            for done in ran {
                done.finish(commit_error.as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent writes share groups; one that fails undoes its own rows
    /// only, and every caller gets its own answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_in_a_group_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
                    .map_err(store_err)
            })
            .await
            .unwrap();
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..60i64 {
            let store = store.clone();
            writes.spawn(async move {
                let result = store
                    .write(move |c| {
                        c.execute("INSERT INTO t VALUES (?1)", [i])
                            .map_err(store_err)?;
                        if i % 10 == 0 {
                            return Err(store_err("refused"));
                        }
                        Ok(i)
                    })
                    .await;
                (i, result)
            });
        }
        let mut failed = Vec::new();
        while let Some(joined) = writes.join_next().await {
            let (i, result) = joined.unwrap();
            match result {
                Ok(got) => assert_eq!(got, i),
                Err(_) => failed.push(i),
            }
        }
        failed.sort();
        assert_eq!(failed, [0, 10, 20, 30, 40, 50]);
        let rows: i64 = store
            .with(|c| {
                c.query_row("SELECT COUNT(*) FROM t WHERE k % 10 <> 0", [], |r| r.get(0))
                    .map_err(store_err)
            })
            .await
            .unwrap();
        let refused: i64 = store
            .with(|c| {
                c.query_row("SELECT COUNT(*) FROM t WHERE k % 10 = 0", [], |r| r.get(0))
                    .map_err(store_err)
            })
            .await
            .unwrap();
        assert_eq!((rows, refused), (54, 0));
    }

    /// A write transaction inside a group nests as a savepoint of cached
    /// statements: dropped uncommitted it undoes its rows, committed it
    /// keeps them, and nested twice the inner one undoes only its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nested_write_undoes_its_rows_when_dropped_uncommitted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
                    .map_err(store_err)
            })
            .await
            .unwrap();
        store
            .write(|c| {
                {
                    let dropped = immediate(c)?;
                    dropped
                        .execute("INSERT INTO t VALUES (1)", [])
                        .map_err(store_err)?;
                }
                let kept = immediate(c)?;
                kept.execute("INSERT INTO t VALUES (2)", [])
                    .map_err(store_err)?;
                kept.commit()?;
                let outer = immediate(c)?;
                outer
                    .execute("INSERT INTO t VALUES (3)", [])
                    .map_err(store_err)?;
                {
                    let inner = Nested::begin(&outer).map_err(store_err)?;
                    inner
                        .conn
                        .execute("INSERT INTO t VALUES (4)", [])
                        .map_err(store_err)?;
                }
                outer.commit()
            })
            .await
            .unwrap();
        let keys: Vec<i64> = store
            .with(|c| {
                let mut stmt = c.prepare("SELECT k FROM t ORDER BY k").map_err(store_err)?;
                let rows = stmt.query_map([], |r| r.get(0)).map_err(store_err)?;
                rows.collect::<Result<_, _>>().map_err(store_err)
            })
            .await
            .unwrap();
        assert_eq!(keys, [2, 3]);
    }

    /// While a group is being written, background writes queue up, then an
    /// urgent one: the urgent one commits in the next group, ahead of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_urgent_write_commits_ahead_of_the_writes_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT)")
                    .map_err(store_err)
            })
            .await
            .unwrap();
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (inside, entered) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |_| {
                        let _ = inside.send(());
                        let _ = held.recv_timeout(std::time::Duration::from_secs(10));
                        Ok(())
                    })
                    .await
            }
        });
        let pending = |store: &SqliteStore| {
            let p = store.pending.lock().unwrap();
            p.jobs.len() + p.urgent.len()
        };
        // The writer is inside the first group.
        let started = std::time::Instant::now();
        while entered.try_recv().is_err() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            tokio::task::yield_now().await;
        }
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..5 {
            let store = store.clone();
            writes.spawn(async move {
                store
                    .write(move |c| {
                        c.execute(
                            "INSERT INTO t (who) VALUES (?1)",
                            [format!("background {i}")],
                        )
                        .map_err(store_err)
                    })
                    .await
            });
        }
        while pending(&store) < 5 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            tokio::task::yield_now().await;
        }
        let urgent = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write_urgent(|c| {
                        c.execute("INSERT INTO t (who) VALUES ('urgent')", [])
                            .map_err(store_err)
                    })
                    .await
            }
        });
        while pending(&store) < 6 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            tokio::task::yield_now().await;
        }
        hold.send(()).unwrap();
        busy.await.unwrap().unwrap();
        urgent.await.unwrap().unwrap();
        while let Some(done) = writes.join_next().await {
            done.unwrap().unwrap();
        }
        let order: Vec<String> = store
            .with(|c| {
                let mut stmt = c
                    .prepare("SELECT who FROM t ORDER BY seq")
                    .map_err(store_err)?;
                let rows = stmt.query_map([], |r| r.get(0)).map_err(store_err)?;
                rows.collect::<Result<_, _>>().map_err(store_err)
            })
            .await
            .unwrap();
        assert_eq!(order.len(), 6);
        assert_eq!(order[0], "urgent", "{order:?}");
    }
}
