//! The [`Store`] on SQLite: journal, worker registry, locks, leak
//! sightings, and the record calls (in `records.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Cached, SqliteStore, now, records, store_err, to_u64};
use crate::store::{
    Claim, Created, ExecutionRecord, HistoryFilter, JournalEntry, JournalState, NewExecution,
    RecordUpdate, SettleOps, Store, StoreError, WorkerBeat, WorkerInfo, millis,
};
use runner_core::RunnerHandle;

type Result<T> = std::result::Result<T, StoreError>;

const ENTRY_COLUMNS: &str = "j.id, j.execution_key, j.handle, j.owner, j.state, j.reap_attempts,
     j.note, w.heartbeat_at";

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

type EntryRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
);

fn to_entry(row: EntryRow, now: i64, stale: i64) -> Result<JournalEntry> {
    let (id, key, handle, owner, state, reap_attempts, note, beat) = row;
    Ok(JournalEntry {
        id,
        execution_key: key,
        handle: RunnerHandle::from_json(&handle).map_err(store_err)?,
        owner,
        state: JournalState::parse(&state),
        owner_alive: beat.is_some_and(|b| now.saturating_sub(b) < stale),
        reap_attempts: u32::try_from(reap_attempts).unwrap_or(u32::MAX),
        note,
    })
}

fn claim(c: &mut Connection, key: &str, worker: &str, stale: i64) -> Result<Claim> {
    let tx = super::immediate(c)?;
    let now = now();
    let row = tx
        .query_row_cached(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM journal j LEFT JOIN workers w ON w.id = j.owner
                 WHERE j.execution_key = ?1 AND j.state = 'live'"
            ),
            params![key],
            entry_row,
        )
        .optional()
        .map_err(store_err)?;
    let Some(row) = row else {
        return Ok(Claim::Fresh);
    };
    let mut entry = to_entry(row, now, stale)?;
    if entry.owner != worker && entry.owner_alive {
        return Ok(Claim::HeldBy {
            worker: entry.owner,
        });
    }
    tx.exec_cached(
        "UPDATE journal SET owner = ?2, updated_at = ?3 WHERE id = ?1",
        params![entry.id, worker, now],
    )
    .map_err(store_err)?;
    tx.commit().map_err(store_err)?;
    entry.owner = worker.to_owned();
    entry.owner_alive = true;
    Ok(Claim::Reuse(Box::new(entry)))
}

fn sightings(
    c: &mut Connection,
    runner_type: &str,
    ids: &[String],
    record: bool,
) -> Result<BTreeMap<String, Duration>> {
    let tx = super::immediate(c)?;
    let now = now();
    let mut known: BTreeMap<String, i64> = BTreeMap::new();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT resource_id, first_seen FROM leak_sightings WHERE runner_type = ?1",
            )
            .map_err(store_err)?;
        let rows = stmt
            .query_map(params![runner_type], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(store_err)?;
        for row in rows {
            let (id, first) = row.map_err(store_err)?;
            known.insert(id, first);
        }
    }
    let mut out = BTreeMap::new();
    for id in ids {
        let first = match known.remove(id) {
            Some(first) => first,
            None if !record => continue,
            None => {
                tx.exec_cached(
                    "INSERT INTO leak_sightings (runner_type, resource_id, first_seen) VALUES (?1, ?2, ?3)",
                    params![runner_type, id, now],
                )
                .map_err(store_err)?;
                now
            }
        };
        out.insert(
            id.clone(),
            Duration::from_millis(to_u64(now.saturating_sub(first))),
        );
    }
    if !record {
        return Ok(out);
    }
    // What is no longer listed went away: forget it.
    for gone in known.keys() {
        tx.exec_cached(
            "DELETE FROM leak_sightings WHERE runner_type = ?1 AND resource_id = ?2",
            params![runner_type, gone],
        )
        .map_err(store_err)?;
    }
    tx.commit().map_err(store_err)?;
    Ok(out)
}

/// Mark journal entry `id` ended (released, or left for the reaper).
fn journal_end_in(c: &Connection, id: i64, state: JournalState, note: Option<&str>) -> Result<()> {
    c.exec_cached(
        "UPDATE journal SET state = ?2, note = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, state.as_str(), note, now()],
    )
    .map_err(store_err)?;
    Ok(())
}

#[runner_core::async_trait]
impl Store for SqliteStore {
    fn database_id(&self) -> Option<usize> {
        Some(self.database())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn journal_claim(&self, key: &str, worker: &str, stale_after: Duration) -> Result<Claim> {
        let (key, worker) = (key.to_owned(), worker.to_owned());
        self.write_urgent(move |c| claim(c, &key, &worker, millis(stale_after)))
            .await
    }

    async fn journal_provisioned(
        &self,
        key: &str,
        handle: &RunnerHandle,
        worker: &str,
    ) -> Result<i64> {
        let (key, worker) = (key.to_owned(), worker.to_owned());
        let (runner_type, handle_id, json) = (
            handle.runner_type().to_owned(),
            handle.handle_id().to_owned(),
            handle.to_json(),
        );
        self.write_urgent(move |c| {
            let now = now();
            c.exec_cached(
                "INSERT INTO journal (execution_key, handle_id, runner_type, handle, owner, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'live', ?6, ?6)",
                params![key, handle_id, runner_type, json, worker, now],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    StoreError::Exists { keys: vec![key.clone()] }
                }
                other => store_err(other),
            })?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn journal_end(&self, id: i64, state: JournalState, note: Option<&str>) -> Result<()> {
        let note = note.map(str::to_owned);
        self.write(move |c| journal_end_in(c, id, state, note.as_deref()))
            .await
    }

    async fn journal_take(&self, id: i64, from: &str, to: &str) -> Result<bool> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.with(move |c| {
            let changed = c
                .exec_cached(
                    "UPDATE journal SET owner = ?3, updated_at = ?4
                     WHERE id = ?1 AND owner = ?2 AND state <> 'released'",
                    params![id, from, to, now()],
                )
                .map_err(store_err)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn journal_reap_failed(&self, id: i64, note: &str) -> Result<()> {
        let note = note.to_owned();
        self.with(move |c| {
            c.exec_cached(
                "UPDATE journal SET state = 'teardown_failed', reap_attempts = reap_attempts + 1,
                        note = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, note, now()],
            )
            .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    async fn journal_get(&self, id: i64, stale_after: Duration) -> Result<Option<JournalEntry>> {
        self.with(move |c| {
            let row = c
                .query_row_cached(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM journal j LEFT JOIN workers w ON w.id = j.owner
                         WHERE j.id = ?1"
                    ),
                    params![id],
                    entry_row,
                )
                .optional()
                .map_err(store_err)?;
            row.map(|r| to_entry(r, now(), millis(stale_after)))
                .transpose()
        })
        .await
    }

    async fn journal_open_entries(&self, stale_after: Duration) -> Result<Vec<JournalEntry>> {
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM journal j LEFT JOIN workers w ON w.id = j.owner
                     WHERE j.state <> 'released' ORDER BY j.id"
                ))
                .map_err(store_err)?;
            let rows = stmt.query_map([], entry_row).map_err(store_err)?;
            let (now, stale) = (now(), millis(stale_after));
            let mut out = Vec::new();
            for row in rows {
                out.push(to_entry(row.map_err(store_err)?, now, stale)?);
            }
            Ok(out)
        })
        .await
    }

    async fn worker_heartbeat(&self, beat: &WorkerBeat) -> Result<()> {
        let beat = beat.clone();
        self.with(move |c| {
            let now = now();
            c.exec_cached(
                "INSERT INTO workers (id, pid, host, runners, in_flight, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                    in_flight = excluded.in_flight, runners = excluded.runners",
                params![
                    beat.id,
                    i64::from(beat.pid),
                    beat.host,
                    serde_json::to_string(&beat.runners).unwrap_or_else(|_| "[]".into()),
                    i64::from(beat.in_flight),
                    now
                ],
            )
            .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    async fn worker_gone(&self, worker: &str) -> Result<()> {
        let worker = worker.to_owned();
        self.with(move |c| {
            c.exec_cached("DELETE FROM workers WHERE id = ?1", params![worker])
                .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    async fn workers(&self, stale_after: Duration) -> Result<Vec<WorkerInfo>> {
        self.with(move |c| {
            let now = now();
            let stale = millis(stale_after);
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, pid, host, runners, in_flight, started_at, heartbeat_at FROM workers
                     ORDER BY heartbeat_at DESC, id",
                )
                .map_err(store_err)?;
            let rows = stmt
                .query_map([], |r| {
                    let beat: i64 = r.get(6)?;
                    Ok(WorkerInfo {
                        beat: WorkerBeat {
                            id: r.get(0)?,
                            pid: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                            host: r.get(2)?,
                            runners: serde_json::from_str(&r.get::<_, String>(3)?)
                                .unwrap_or_default(),
                            in_flight: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                        },
                        started_ms: to_u64(r.get(5)?),
                        heartbeat_ms: to_u64(beat),
                        heartbeat_age_ms: to_u64(now.saturating_sub(beat)),
                        alive: now.saturating_sub(beat) < stale,
                    })
                })
                .map_err(store_err)?;
            rows.map(|r| r.map_err(store_err)).collect()
        })
        .await
    }

    async fn prune_workers(&self, older_than: Duration) -> Result<u64> {
        self.with(move |c| {
            let cutoff = now().saturating_sub(millis(older_than));
            let n = c
                .exec_cached(
                    "DELETE FROM workers WHERE heartbeat_at < ?1
                       AND id NOT IN (SELECT owner FROM journal WHERE state <> 'released')",
                    params![cutoff],
                )
                .map_err(store_err)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            let now = now();
            let changed = c
                .exec_cached(
                    "INSERT INTO locks (name, holder, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE locks.holder = excluded.holder OR locks.expires_at <= ?4",
                    params![name, holder, now.saturating_add(millis(ttl)), now],
                )
                .map_err(store_err)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            c.exec_cached(
                "DELETE FROM locks WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    async fn leak_sightings(
        &self,
        runner_type: &str,
        ids: &[String],
        record: bool,
    ) -> Result<BTreeMap<String, Duration>> {
        let (runner_type, ids) = (runner_type.to_owned(), ids.to_vec());
        self.with(move |c| sightings(c, &runner_type, &ids, record))
            .await
    }

    async fn create_execution(&self, new: &NewExecution) -> Result<Created> {
        let new = new.clone();
        self.write(move |c| {
            let tx = super::immediate(c)?;
            if let Some(existing) = records::get(&tx, &new.key)? {
                return Ok(Created::Existing(Box::new(existing)));
            }
            records::insert_record(&tx, &new, now())?;
            tx.commit().map_err(store_err)?;
            Ok(Created::New)
        })
        .await
    }

    async fn create_executions(&self, batch: &[NewExecution]) -> Result<()> {
        let batch = batch.to_vec();
        self.write(move |c| {
            let tx = super::immediate(c)?;
            let now = now();
            let mut existing = Vec::new();
            for new in &batch {
                let known: Option<i64> = tx
                    .query_row_cached(
                        "SELECT 1 FROM executions WHERE key = ?1",
                        params![new.key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(store_err)?;
                if known.is_some() {
                    existing.push(new.key.clone());
                } else {
                    records::insert_record(&tx, new, now)?;
                }
            }
            if !existing.is_empty() {
                return Err(StoreError::Exists { keys: existing });
            }
            tx.commit().map_err(store_err)
        })
        .await
    }

    async fn delete_execution(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.with(move |c| {
            c.exec_cached("DELETE FROM execution_events WHERE key = ?1", params![key])
                .map_err(store_err)?;
            c.exec_cached("DELETE FROM executions WHERE key = ?1", params![key])
                .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    fn settles_with_records(&self) -> bool {
        true
    }

    async fn record_settling(&self, updates: &[RecordUpdate], ops: &[SettleOps]) -> Result<bool> {
        let (updates, ops) = (updates.to_vec(), ops.to_vec());
        self.write(move |c| {
            let tx = super::immediate(c)?;
            records::apply_all(&tx, &updates)?;
            for op in &ops {
                if let Some(end) = &op.journal_end {
                    journal_end_in(&tx, end.entry, end.state, end.note.as_deref())?;
                }
                if let Some((lease, outcome)) = &op.ack {
                    SqliteStore::settle(&tx, lease, super::queue::ACK_SQL, &[outcome, &now()])?;
                }
            }
            tx.commit().map(|()| true)
        })
        .await
    }

    async fn record(&self, updates: &[RecordUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let updates = updates.to_vec();
        self.write(move |c| {
            let tx = super::immediate(c)?;
            records::apply_all(&tx, &updates)?;
            tx.commit().map_err(store_err)
        })
        .await
    }

    async fn execution(&self, key: &str) -> Result<Option<ExecutionRecord>> {
        let key = key.to_owned();
        self.with(move |c| records::get(c, &key)).await
    }

    async fn executions(&self, filter: &HistoryFilter) -> Result<Vec<ExecutionRecord>> {
        let filter = filter.clone();
        self.with(move |c| records::list(c, &filter)).await
    }

    async fn cancel_requested(&self, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.to_vec();
        self.with(move |c| records::cancel_requested(c, &keys))
            .await
    }

    async fn prune_executions(&self, older_than: Duration) -> Result<u64> {
        self.with(move |c| records::prune(c, now().saturating_sub(millis(older_than))))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.with(|c| {
            c.query_row_cached("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(store_err)?;
            Ok(())
        })
        .await
    }
}
