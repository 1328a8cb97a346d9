//! The task queue on PostgreSQL: leases by `FOR UPDATE SKIP LOCKED` (many
//! at once), fenced by a lease token; a `NOTIFY` on every submit.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::{PgStore, TASKS_CHANNEL, pg_err};
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

fn task_id(lease: &Lease) -> Result<i64> {
    lease.task_id.parse().map_err(|_| StoreError::NotFound {
        what: "task",
        id: lease.task_id.clone(),
    })
}

async fn live_task<C: GenericClient>(c: &C, key: &str) -> Result<Option<i64>> {
    let row = c
        .query_opt(
            "SELECT id FROM tasks WHERE execution_key = $1 AND state IN ('ready', 'leased')",
            &[&key],
        )
        .await
        .map_err(pg_err)?;
    Ok(row.map(|r| r.get(0)))
}

async fn notify<C: GenericClient>(c: &C) -> Result<()> {
    c.execute("SELECT pg_notify($1, '')", &[&TASKS_CHANNEL])
        .await
        .map_err(pg_err)?;
    Ok(())
}

/// Insert one submission's record and task; `Some(existing)` when the key
/// was submitted before (nothing inserted).
async fn insert_submission<C: GenericClient>(
    c: &C,
    task: &Task,
    new: &NewExecution,
    attributes: &str,
) -> Result<std::result::Result<i64, Submitted>> {
    let key = task.execution_key.as_str();
    let known = c
        .query_opt("SELECT 1 FROM executions WHERE key = $1", &[&key])
        .await
        .map_err(pg_err)?
        .is_some();
    if known || live_task(c, key).await?.is_some() {
        let task_id = live_task(c, key)
            .await?
            .map(|id| id.to_string())
            .unwrap_or_default();
        return Ok(Err(Submitted {
            task_id,
            existing: true,
        }));
    }
    super::records::insert_record(c, new).await?;
    let row = c
        .query_one(
            "INSERT INTO tasks (body, execution_key, attributes, state, visible_at, created_at, updated_at)
             VALUES ($1, $2, $3, 'ready', orch_now_ms(), orch_now_ms(), orch_now_ms()) RETURNING id",
            &[&task.to_json(), &key, &attributes],
        )
        .await
        .map_err(pg_err)?;
    Ok(Ok(row.get(0)))
}

impl PgStore {
    async fn settle(
        &self,
        lease: &Lease,
        sql: &str,
        extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        let id = task_id(lease)?;
        let client = self.client().await?;
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id, &lease.token];
        args.extend_from_slice(extra);
        let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
        let changed = client.execute(&stmt, &args).await.map_err(pg_err)?;
        if changed == 0 {
            return Err(StoreError::LeaseLost {
                task_id: lease.task_id.clone(),
            });
        }
        Ok(())
    }
}

#[runner_core::async_trait]
impl TaskQueue for PgStore {
    fn keeps_records(&self) -> bool {
        true
    }

    fn database_id(&self) -> Option<usize> {
        Some(self.database())
    }

    async fn submit(&self, task: &Task, new: &NewExecution) -> Result<Submitted> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        match insert_submission(&tx, task, new, &attributes_json()).await? {
            Err(existing) => Ok(existing),
            Ok(id) => {
                notify(&tx).await?;
                tx.commit().await.map_err(pg_err)?;
                Ok(Submitted {
                    task_id: id.to_string(),
                    existing: false,
                })
            }
        }
    }

    async fn submit_batch(&self, tasks: &[(Task, NewExecution)]) -> Result<Vec<String>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let attributes = attributes_json();
        let mut ids = Vec::with_capacity(tasks.len());
        let mut existing = Vec::new();
        for (task, new) in tasks {
            match insert_submission(&tx, task, new, &attributes).await? {
                Ok(id) => ids.push(id.to_string()),
                Err(_) => existing.push(task.execution_key.clone()),
            }
        }
        if !existing.is_empty() {
            return Err(StoreError::Exists { keys: existing });
        }
        notify(&tx).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(ids)
    }

    async fn submit_raw(&self, body: &str) -> Result<String> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "WITH t AS (INSERT INTO tasks (body, attributes, state, visible_at, created_at, updated_at)
                            VALUES ($1, $2, 'ready', orch_now_ms(), orch_now_ms(), orch_now_ms()) RETURNING id)
                 SELECT id, pg_notify($3, '') FROM t",
                &[&body, &attributes_json(), &TASKS_CHANNEL],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get::<_, i64>(0).to_string())
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
        let token = format!("{:016x}", fastrand::u64(..));
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE tasks t SET state = 'leased', lease_owner = $1, lease_token = $2,
                        visible_at = orch_now_ms() + $3, attempts = t.attempts + 1, updated_at = orch_now_ms()
                 FROM (SELECT id FROM tasks WHERE state IN ('ready', 'leased') AND visible_at <= orch_now_ms()
                       ORDER BY visible_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) pick
                 WHERE t.id = pick.id
                 RETURNING t.id, t.body, t.attempts, t.history, t.attributes,
                           NOT EXISTS (SELECT 1 FROM journal j
                                       WHERE j.execution_key = t.execution_key AND j.state = 'live')",
            )
            .await
            .map_err(pg_err)?;
        let limit = i64::try_from(max.max(1)).unwrap_or(1);
        let rows = client
            .query(&stmt, &[&worker, &token, &millis(visibility), &limit])
            .await
            .map_err(pg_err)?;
        let mut leases: Vec<Lease> = rows
            .iter()
            .map(|r| {
                let history: String = r.get(3);
                let history: Vec<AttemptRecord> =
                    serde_json::from_str(&history).unwrap_or_default();
                let attributes: String = r.get(4);
                Lease {
                    task_id: r.get::<_, i64>(0).to_string(),
                    body: r.get(1),
                    body_error: None,
                    attempt: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
                    failures: u32::try_from(history.iter().filter(|r| r.counted).count())
                        .unwrap_or(u32::MAX),
                    token: token.clone(),
                    history,
                    attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                    journal_clear: r.get(5),
                }
            })
            .collect();
        leases.sort_by_key(|l| l.task_id.parse::<i64>().unwrap_or(i64::MAX));
        Ok(leases)
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.wake.notified()).await;
    }

    async fn remove_queued(&self, execution_key: &str) -> Result<bool> {
        let client = self.client().await?;
        let removed = client
            .execute(
                "DELETE FROM tasks WHERE execution_key = $1
                   AND (state = 'ready' OR (state = 'leased' AND visible_at <= orch_now_ms()))",
                &[&execution_key],
            )
            .await
            .map_err(pg_err)?;
        Ok(removed > 0)
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<()> {
        self.settle(
            lease,
            "UPDATE tasks SET visible_at = orch_now_ms() + $3
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
            &[&millis(visibility)],
        )
        .await
    }

    async fn ack(&self, lease: &Lease, outcome: &str) -> Result<()> {
        self.settle(
            lease,
            "UPDATE tasks SET state = 'done', outcome = $3, lease_token = NULL, updated_at = orch_now_ms()
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
            &[&outcome],
        )
        .await
    }

    async fn requeue(
        &self,
        lease: &Lease,
        delay: Duration,
        record: AttemptRecord,
        count_attempt: bool,
    ) -> Result<()> {
        let history = history_with(
            lease,
            AttemptRecord {
                counted: count_attempt,
                ..record
            },
        );
        let give_back: i64 = if count_attempt { 0 } else { 1 };
        self.settle(
            lease,
            "UPDATE tasks SET state = 'ready', visible_at = orch_now_ms() + $3, lease_owner = NULL,
                    lease_token = NULL, history = $4, attempts = attempts - $5, updated_at = orch_now_ms()
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
            &[&millis(delay), &history, &give_back],
        )
        .await?;
        if delay.is_zero() {
            let client = self.client().await?;
            notify(&client).await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str, record: AttemptRecord) -> Result<()> {
        let id = task_id(lease)?;
        let history = history_with(lease, record);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let changed = tx
            .execute(
                "UPDATE tasks SET state = 'dead', lease_token = NULL, history = $3, updated_at = orch_now_ms()
                 WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
                &[&id, &lease.token, &history],
            )
            .await
            .map_err(pg_err)?;
        if changed == 0 {
            return Err(StoreError::LeaseLost {
                task_id: lease.task_id.clone(),
            });
        }
        let body = match &lease.body_error {
            Some(problem) => format!("<unreadable: {problem}>"),
            None => lease.body.clone(),
        };
        tx.execute(
            "INSERT INTO dead_letters (task_id, body, reason, history, created_at)
             VALUES ($1, $2, $3, $4, orch_now_ms())",
            &[&id, &body, &reason, &history],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT state, visible_at <= orch_now_ms(), COUNT(*) FROM tasks
                 GROUP BY state, visible_at <= orch_now_ms()",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let mut depth = QueueDepth::default();
        for row in rows {
            let state: String = row.get(0);
            let visible: bool = row.get(1);
            let n: i64 = row.get(2);
            depth.add(&state, visible, u64::try_from(n).unwrap_or(0));
        }
        Ok(depth)
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT id, task_id, body, reason, history, created_at FROM dead_letters
                 WHERE NOT replayed ORDER BY id DESC LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(dead_letter_row).collect())
    }

    async fn dlq_show(&self, id: &str) -> Result<DeadLetter> {
        let not_found = || StoreError::NotFound {
            what: "dead letter",
            id: id.to_owned(),
        };
        let key: i64 = id.parse().map_err(|_| not_found())?;
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, task_id, body, reason, history, created_at FROM dead_letters WHERE id = $1",
                &[&key],
            )
            .await
            .map_err(pg_err)?;
        row.as_ref().map(dead_letter_row).ok_or_else(not_found)
    }

    async fn dlq_replay(&self, id: &str) -> Result<String> {
        let not_found = || StoreError::NotFound {
            what: "dead letter (not yet replayed)",
            id: id.to_owned(),
        };
        let key: i64 = id.parse().map_err(|_| not_found())?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let body: String = tx
            .query_opt(
                "SELECT body FROM dead_letters WHERE id = $1 AND NOT replayed FOR UPDATE",
                &[&key],
            )
            .await
            .map_err(pg_err)?
            .ok_or_else(not_found)?
            .get(0);
        let execution_key = Task::parse(&body).ok().map(|t| t.execution_key);
        if let Some(k) = &execution_key
            && let Some(live) = live_task(&tx, k).await?
        {
            return Err(StoreError::Store(format!(
                "execution key `{k}` is queued again already (task {live})"
            )));
        }
        let task: i64 = tx
            .query_one(
                "INSERT INTO tasks (body, execution_key, state, visible_at, created_at, updated_at)
                 VALUES ($1, $2, 'ready', orch_now_ms(), orch_now_ms(), orch_now_ms()) RETURNING id",
                &[&body, &execution_key],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        tx.execute(
            "UPDATE dead_letters SET replayed = true WHERE id = $1",
            &[&key],
        )
        .await
        .map_err(pg_err)?;
        if let Some(k) = &execution_key {
            super::records::reopen(&tx, k, "replayed from the dead-letter queue").await?;
        }
        notify(&tx).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(task.to_string())
    }
}

fn dead_letter_row(r: &tokio_postgres::Row) -> DeadLetter {
    let history: String = r.get(4);
    DeadLetter {
        id: r.get::<_, i64>(0).to_string(),
        task_id: r.get::<_, i64>(1).to_string(),
        body: r.get(2),
        reason: r.get(3),
        history: serde_json::from_str(&history).unwrap_or_default(),
        created_ms: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
    }
}
