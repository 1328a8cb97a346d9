//! The [`Store`] on PostgreSQL: journal, worker registry, locks, leak
//! sightings and the record calls. Liveness by the server's clock.

use std::collections::BTreeMap;
use std::time::Duration;

use runner_core::RunnerHandle;

use super::{PgStore, exec, pg_err, query_opt, records};
use crate::store::{
    Claim, Created, ExecutionRecord, HistoryFilter, JournalEntry, JournalState, NewExecution,
    RecordUpdate, Store, StoreError, WorkerBeat, WorkerInfo, millis,
};

type Result<T> = std::result::Result<T, StoreError>;

/// Columns of a journal entry; `$stale` is the liveness bound in ms.
const ENTRY_SELECT: &str =
    "SELECT j.id, j.execution_key, j.handle, j.owner, j.state, j.reap_attempts,
        j.note, COALESCE(orch_now_ms() - w.heartbeat_at < $1, false)
   FROM journal j LEFT JOIN workers w ON w.id = j.owner";

fn to_entry(r: &tokio_postgres::Row) -> Result<JournalEntry> {
    let handle: String = r.get(2);
    let state: String = r.get(4);
    Ok(JournalEntry {
        id: r.get(0),
        execution_key: r.get(1),
        handle: RunnerHandle::from_json(&handle).map_err(|e| StoreError::Store(e.to_string()))?,
        owner: r.get(3),
        state: JournalState::parse(&state),
        reap_attempts: u32::try_from(r.get::<_, i64>(5)).unwrap_or(u32::MAX),
        note: r.get(6),
        owner_alive: r.get(7),
    })
}

#[runner_core::async_trait]
impl Store for PgStore {
    fn database_id(&self) -> Option<usize> {
        Some(self.database())
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn journal_claim(&self, key: &str, worker: &str, stale_after: Duration) -> Result<Claim> {
        let mut client = self.client().await?;
        // Most executions have no live handle: one statement says so.
        let any = client
            .prepare_cached("SELECT 1 FROM journal WHERE execution_key = $1 AND state = 'live'")
            .await
            .map_err(pg_err)?;
        if client
            .query_opt(&any, &[&key])
            .await
            .map_err(pg_err)?
            .is_none()
        {
            return Ok(Claim::Fresh);
        }
        let tx = client.transaction().await.map_err(pg_err)?;
        let row = tx
            .query_opt(
                &format!(
                    "{ENTRY_SELECT} WHERE j.execution_key = $2 AND j.state = 'live' FOR UPDATE OF j"
                ),
                &[&millis(stale_after), &key],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else {
            return Ok(Claim::Fresh);
        };
        let mut entry = to_entry(&row)?;
        if entry.owner != worker && entry.owner_alive {
            return Ok(Claim::HeldBy {
                worker: entry.owner,
            });
        }
        tx.execute(
            "UPDATE journal SET owner = $2, updated_at = orch_now_ms() WHERE id = $1",
            &[&entry.id, &worker],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        entry.owner = worker.to_owned();
        entry.owner_alive = true;
        Ok(Claim::Reuse(Box::new(entry)))
    }

    async fn journal_provisioned(
        &self,
        key: &str,
        handle: &RunnerHandle,
        worker: &str,
    ) -> Result<i64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO journal (execution_key, handle_id, runner_type, handle, owner, state, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'live', orch_now_ms(), orch_now_ms()) RETURNING id",
            )
            .await
            .map_err(pg_err)?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &key,
                    &handle.handle_id(),
                    &handle.runner_type(),
                    &handle.to_json(),
                    &worker,
                ],
            )
            .await
            .map_err(|e| {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    StoreError::Exists {
                        keys: vec![key.to_owned()],
                    }
                } else {
                    pg_err(e)
                }
            })?;
        Ok(row.get(0))
    }

    async fn journal_end(&self, id: i64, state: JournalState, note: Option<&str>) -> Result<()> {
        let client = self.client().await?;
        exec(
            &client,
            "UPDATE journal SET state = $2, note = $3, updated_at = orch_now_ms() WHERE id = $1",
            &[&id, &state.as_str(), &note],
        )
        .await?;
        Ok(())
    }

    async fn journal_take(&self, id: i64, from: &str, to: &str) -> Result<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE journal SET owner = $3, updated_at = orch_now_ms()
                 WHERE id = $1 AND owner = $2 AND state <> 'released'",
                &[&id, &from, &to],
            )
            .await
            .map_err(pg_err)?;
        Ok(changed > 0)
    }

    async fn journal_reap_failed(&self, id: i64, note: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE journal SET state = 'teardown_failed', reap_attempts = reap_attempts + 1,
                        note = $2, updated_at = orch_now_ms() WHERE id = $1",
                &[&id, &note],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn journal_get(&self, id: i64, stale_after: Duration) -> Result<Option<JournalEntry>> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!("{ENTRY_SELECT} WHERE j.id = $2"),
            &[&millis(stale_after), &id],
        )
        .await?;
        row.as_ref().map(to_entry).transpose()
    }

    async fn journal_open_entries(&self, stale_after: Duration) -> Result<Vec<JournalEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("{ENTRY_SELECT} WHERE j.state <> 'released' ORDER BY j.id"),
                &[&millis(stale_after)],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(to_entry).collect()
    }

    async fn worker_heartbeat(&self, beat: &WorkerBeat) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO workers (id, pid, host, runners, in_flight, started_at, heartbeat_at)
                 VALUES ($1, $2, $3, $4, $5, orch_now_ms(), orch_now_ms())
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                    in_flight = excluded.in_flight, runners = excluded.runners",
            )
            .await
            .map_err(pg_err)?;
        client
            .execute(
                &stmt,
                &[
                    &beat.id,
                    &i64::from(beat.pid),
                    &beat.host,
                    &serde_json::to_string(&beat.runners).unwrap_or_else(|_| "[]".into()),
                    &i64::from(beat.in_flight),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn worker_gone(&self, worker: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM workers WHERE id = $1", &[&worker])
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn workers(&self, stale_after: Duration) -> Result<Vec<WorkerInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, pid, host, runners, in_flight, started_at, heartbeat_at,
                        GREATEST(orch_now_ms() - heartbeat_at, 0)
                   FROM workers ORDER BY heartbeat_at DESC, id",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let stale = u64::try_from(millis(stale_after)).unwrap_or(u64::MAX);
        Ok(rows
            .iter()
            .map(|r| {
                let runners: String = r.get(3);
                let age = u64::try_from(r.get::<_, i64>(7)).unwrap_or(0);
                WorkerInfo {
                    beat: WorkerBeat {
                        id: r.get(0),
                        pid: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                        host: r.get(2),
                        runners: serde_json::from_str(&runners).unwrap_or_default(),
                        in_flight: u32::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                    },
                    started_ms: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                    heartbeat_ms: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
                    heartbeat_age_ms: age,
                    alive: age < stale,
                }
            })
            .collect())
    }

    async fn prune_workers(&self, older_than: Duration) -> Result<u64> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM workers WHERE heartbeat_at < orch_now_ms() - $1
                   AND id NOT IN (SELECT owner FROM journal WHERE state <> 'released')",
                &[&millis(older_than)],
            )
            .await
            .map_err(pg_err)?;
        Ok(n)
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "INSERT INTO locks (name, holder, expires_at) VALUES ($1, $2, orch_now_ms() + $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE locks.holder = excluded.holder OR locks.expires_at <= orch_now_ms()",
                &[&name, &holder, &millis(ttl)],
            )
            .await
            .map_err(pg_err)?;
        Ok(changed > 0)
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM locks WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn leak_sightings(
        &self,
        runner_type: &str,
        ids: &[String],
        record: bool,
    ) -> Result<BTreeMap<String, Duration>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let ids: Vec<String> = ids.to_vec();
        if !record {
            let rows = tx
                .query(
                    "SELECT resource_id, GREATEST(orch_now_ms() - first_seen, 0) FROM leak_sightings
                     WHERE runner_type = $1 AND resource_id = ANY($2)",
                    &[&runner_type, &ids],
                )
                .await
                .map_err(pg_err)?;
            return Ok(rows
                .iter()
                .map(|r| {
                    let age = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
                    (r.get::<_, String>(0), Duration::from_millis(age))
                })
                .collect());
        }
        tx.execute(
            "DELETE FROM leak_sightings WHERE runner_type = $1 AND NOT (resource_id = ANY($2))",
            &[&runner_type, &ids],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO leak_sightings (runner_type, resource_id, first_seen)
             SELECT $1, unnest($2::text[]), orch_now_ms() ON CONFLICT DO NOTHING",
            &[&runner_type, &ids],
        )
        .await
        .map_err(pg_err)?;
        let rows = tx
            .query(
                "SELECT resource_id, GREATEST(orch_now_ms() - first_seen, 0) FROM leak_sightings
                 WHERE runner_type = $1 AND resource_id = ANY($2)",
                &[&runner_type, &ids],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| {
                let age = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
                (r.get::<_, String>(0), Duration::from_millis(age))
            })
            .collect())
    }

    async fn create_execution(&self, new: &NewExecution) -> Result<Created> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        if let Some(existing) = records::get(&tx, &new.key).await? {
            return Ok(Created::Existing(Box::new(existing)));
        }
        records::insert_record(&tx, new).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Created::New)
    }

    async fn create_executions(&self, batch: &[NewExecution]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let mut existing = Vec::new();
        for new in batch {
            let known = tx
                .query_opt("SELECT 1 FROM executions WHERE key = $1", &[&new.key])
                .await
                .map_err(pg_err)?
                .is_some();
            if known {
                existing.push(new.key.clone());
            } else {
                records::insert_record(&tx, new).await?;
            }
        }
        if !existing.is_empty() {
            return Err(StoreError::Exists { keys: existing });
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn delete_execution(&self, key: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("DELETE FROM execution_events WHERE key = $1", &[&key])
            .await
            .map_err(pg_err)?;
        tx.execute("DELETE FROM executions WHERE key = $1", &[&key])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    async fn record(&self, updates: &[RecordUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Polled together, the statements pipeline on the connection (sent
        // in order, one round trip for the lot).
        futures::future::try_join_all(updates.iter().map(|u| records::apply(&tx, u))).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn execution(&self, key: &str) -> Result<Option<ExecutionRecord>> {
        let client = self.client().await?;
        records::get(&client, key).await
    }

    async fn executions(&self, filter: &HistoryFilter) -> Result<Vec<ExecutionRecord>> {
        let client = self.client().await?;
        records::list(&client, filter).await
    }

    async fn cancel_requested(&self, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let keys: Vec<String> = keys.to_vec();
        let stmt = client
            .prepare_cached(
                "SELECT key FROM executions WHERE key = ANY($1) AND cancel_requested AND NOT settled",
            )
            .await
            .map_err(pg_err)?;
        let rows = client.query(&stmt, &[&keys]).await.map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn prune_executions(&self, older_than: Duration) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let cutoff = millis(older_than);
        tx.execute(
            "DELETE FROM execution_events WHERE key IN
               (SELECT key FROM executions WHERE settled AND settled_at < orch_now_ms() - $1)",
            &[&cutoff],
        )
        .await
        .map_err(pg_err)?;
        let records = tx
            .execute(
                "DELETE FROM executions WHERE settled AND settled_at < orch_now_ms() - $1",
                &[&cutoff],
            )
            .await
            .map_err(pg_err)?;
        tx.execute(
            "DELETE FROM tasks WHERE state IN ('done', 'dead') AND updated_at < orch_now_ms() - $1",
            &[&cutoff],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "DELETE FROM journal WHERE state = 'released' AND updated_at < orch_now_ms() - $1",
            &[&cutoff],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(records)
    }

    async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client.execute("SELECT 1", &[]).await.map_err(pg_err)?;
        Ok(())
    }
}
