//! The warm pool: ready instances tagged `orchestrator:pool-state=ready`,
//! claimed by provision, returned (or retired) by teardown, refilled in
//! the background. All state is in EC2 tags, so a restarted worker finds
//! its pool where it left it.
//!
//! Claims inside one process are serialised; between processes a claim
//! writes its execution id into the tags and reads them back, and the
//! loser moves on to the next instance. Two workers writing within the
//! same instant can both read their own write on an eventually consistent
//! API: the pool trades that small window for not needing a lock service
//! (see docs/adapters/ec2.md).

use runner_aws::AwsError;
use runner_core::RunContext;

use crate::config::{BenchBackend, PoolConfig};
use crate::instances::{Instance, Ops, now_secs, tags};

fn tag_number<T: std::str::FromStr>(instance: &Instance, key: &str) -> Option<T> {
    instance.tag(key).and_then(|v| v.parse().ok())
}

fn too_old(pool: &PoolConfig, instance: &Instance) -> bool {
    let since = tag_number::<i64>(instance, tags::SINCE)
        .or(instance.launched)
        .unwrap_or(0);
    now_secs().saturating_sub(since) > pool.max_idle_seconds as i64
}

fn used_up(pool: &PoolConfig, instance: &Instance) -> bool {
    tag_number::<u32>(instance, tags::USES).unwrap_or(0) >= pool.max_uses
}

/// Claim a ready instance for this execution; `None` when none is free.
/// Instances idle too long or used up are terminated on the way.
pub async fn claim(
    ops: &Ops,
    pool: &PoolConfig,
    ctx: &RunContext,
) -> Result<Option<Instance>, AwsError> {
    let ready = ops
        .describe_tagged(
            &[(tags::POOL, &pool.name), (tags::POOL_STATE, "ready")],
            &["running"],
        )
        .await?;
    for candidate in ready {
        if too_old(pool, &candidate) || used_up(pool, &candidate) {
            tracing::info!(instance = %candidate.id, pool = %pool.name, "retiring a pool instance (idle too long or used up)");
            ops.terminate(&candidate.id).await?;
            continue;
        }
        ops.set_tags(
            &candidate.id,
            &[
                (tags::POOL_STATE, "busy".to_string()),
                (tags::EXECUTION_KEY, ctx.execution_key().to_string()),
                (tags::EXECUTION_ID, ctx.execution_id().to_string()),
                (tags::CORRELATION_ID, ctx.correlation_id().to_string()),
                (tags::WORKER, ctx.worker_id().to_string()),
                (tags::SINCE, now_secs().to_string()),
            ],
        )
        .await?;
        match ops.describe(&candidate.id).await? {
            Some(now)
                if now.tag(tags::EXECUTION_ID) == Some(ctx.execution_id())
                    && now.state == "running" =>
            {
                tracing::info!(instance = %now.id, pool = %pool.name, "claimed a warm instance");
                return Ok(Some(now));
            }
            _ => continue,
        }
    }
    Ok(None)
}

/// Give an instance back after a test: ready again, or terminated when it
/// reached `max_uses` or is not running. Does nothing when the instance is
/// no longer held by `execution_key` (already returned, or claimed since).
pub async fn release(
    ops: &Ops,
    pool: Option<&PoolConfig>,
    instance_id: &str,
    execution_key: &str,
) -> Result<(), AwsError> {
    let Some(instance) = ops.describe(instance_id).await? else {
        return Ok(());
    };
    if instance.is_terminated() || instance.tag(tags::EXECUTION_KEY) != Some(execution_key) {
        return Ok(());
    }
    let uses = tag_number::<u32>(&instance, tags::USES).unwrap_or(0) + 1;
    let keep = pool.is_some_and(|p| {
        instance.tag(tags::POOL) == Some(p.name.as_str())
            && uses < p.max_uses
            && instance.state == "running"
    });
    if !keep {
        tracing::info!(
            instance = instance_id,
            uses,
            "terminating a pool instance at teardown"
        );
        return ops.terminate(instance_id).await;
    }
    // Execution tags go first: an instance tagged ready must never still
    // carry the last execution's key (a new claim would lose its own).
    ops.delete_tags(
        instance_id,
        &[
            tags::EXECUTION_KEY,
            tags::EXECUTION_ID,
            tags::CORRELATION_ID,
            tags::WORKER,
        ],
    )
    .await?;
    ops.set_tags(
        instance_id,
        &[
            (tags::POOL_STATE, "ready".to_string()),
            (tags::USES, uses.to_string()),
            (tags::SINCE, now_secs().to_string()),
        ],
    )
    .await
}

/// What a refill did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refill {
    /// Instances launched to reach `min_ready`.
    pub launched: usize,
    /// Ready instances retired (idle too long, used up) and orphans
    /// (busy without an execution) terminated.
    pub retired: usize,
    /// Ready (or starting) instances after the refill.
    pub ready: usize,
}

/// Retire stale instances and launch enough to have `min_ready`.
pub async fn refill(ops: &Ops, pool: &PoolConfig) -> Result<Refill, AwsError> {
    let mut report = Refill::default();
    let members = ops
        .describe_tagged(&[(tags::POOL, &pool.name)], &["pending", "running"])
        .await?;
    let mut ready = 0usize;
    for member in members {
        let state = member.tag(tags::POOL_STATE).unwrap_or_default();
        let orphan =
            state == "busy" && member.tag(tags::EXECUTION_KEY).is_none() && too_old(pool, &member);
        let stale = state == "ready" && (too_old(pool, &member) || used_up(pool, &member));
        if orphan || stale {
            ops.terminate(&member.id).await?;
            report.retired += 1;
        } else if state == "ready" {
            ready += 1;
        }
    }
    while ready < pool.min_ready as usize {
        let token = format!(
            "orch-pool-{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        );
        let tags = vec![
            (tags::MANAGED_BY.to_string(), ops.config.owner.clone()),
            (tags::POOL.to_string(), pool.name.clone()),
            (tags::POOL_STATE.to_string(), "ready".to_string()),
            (tags::USES.to_string(), "0".to_string()),
            (tags::SINCE.to_string(), now_secs().to_string()),
            ("Name".to_string(), format!("orch-pool-{}", pool.name)),
        ];
        ops.launch(&BenchBackend::default(), &token, &tags).await?;
        report.launched += 1;
        ready += 1;
    }
    report.ready = ready;
    Ok(report)
}
