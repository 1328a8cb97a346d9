//! EC2 and SSM calls on instances: describe by tag, launch, wait until
//! running and online, tag, terminate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::{
    Filter, HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataOptionsRequest,
    InstanceStateName, InstanceType, LaunchTemplateSpecification, ResourceType, ShutdownBehavior,
    Tag, TagSpecification,
};
use runner_aws::{AwsError, classify};
use runner_core::CancellationToken as Cancel;
use runner_core::ErrorKind;
use tokio::time::Instant;

use crate::config::{BenchBackend, Ec2Config};

/// Tag keys. Every instance the runner launches carries `managed-by`; an
/// execution's instance carries the execution tags; a pool instance the
/// pool tags.
pub mod tags {
    /// Which orchestrator owns the instance (the config's `owner`).
    pub const MANAGED_BY: &str = "orchestrator:managed-by";
    /// The execution key holding the instance.
    pub const EXECUTION_KEY: &str = "orchestrator:execution-key";
    /// The execution id (key and attempt) holding the instance.
    pub const EXECUTION_ID: &str = "orchestrator:execution-id";
    /// The correlation id of that execution.
    pub const CORRELATION_ID: &str = "orchestrator:correlation-id";
    /// The worker that launched or claimed the instance.
    pub const WORKER: &str = "orchestrator:worker";
    /// The warm pool the instance belongs to.
    pub const POOL: &str = "orchestrator:pool";
    /// `ready` (claimable) or `busy` (held by an execution).
    pub const POOL_STATE: &str = "orchestrator:pool-state";
    /// Tests run on the instance so far.
    pub const USES: &str = "orchestrator:uses";
    /// Unix seconds since the instance became ready or was claimed.
    pub const SINCE: &str = "orchestrator:since";
}

/// Instance states that still hold (or will hold) a machine.
pub const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// A described instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-...`.
    pub id: String,
    /// `pending`, `running`, `terminated`, ...
    pub state: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Launch time, Unix seconds.
    pub launched: Option<i64>,
}

impl Instance {
    /// A tag's value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Whether the instance is gone or going.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state.as_str(), "shutting-down" | "terminated")
    }
}

/// The SDK clients and the calls the runner makes with them.
#[derive(Debug)]
pub struct Ops {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// SSM.
    pub ssm: aws_sdk_ssm::Client,
    /// Settings.
    pub config: Arc<Ec2Config>,
    run_instances: AtomicUsize,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Ops {
    /// Wrap clients.
    pub fn new(ec2: aws_sdk_ec2::Client, ssm: aws_sdk_ssm::Client, config: Arc<Ec2Config>) -> Ops {
        Ops {
            ec2,
            ssm,
            config,
            run_instances: AtomicUsize::new(0),
        }
    }

    /// RunInstances calls made by this process (for tests and benchmarks).
    pub fn run_instances_calls(&self) -> usize {
        self.run_instances.load(Ordering::Relaxed)
    }

    /// This owner's instances with all of `tags` set as given, in `states`.
    pub async fn describe_tagged(
        &self,
        tag_filters: &[(&str, &str)],
        states: &[&str],
    ) -> Result<Vec<Instance>, AwsError> {
        let mut filters = vec![
            Filter::builder()
                .name(format!("tag:{}", tags::MANAGED_BY))
                .values(&self.config.owner)
                .build(),
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(states.iter().map(|s| s.to_string()).collect()))
                .build(),
        ];
        for (key, value) in tag_filters {
            filters.push(
                Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(*value)
                    .build(),
            );
        }
        let mut pages = self
            .ec2
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ec2:DescribeInstances", &e))?;
            for reservation in page.reservations() {
                for instance in reservation.instances() {
                    found.push(convert(instance));
                }
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// One instance by id; `None` when EC2 no longer knows it.
    pub async fn describe(&self, id: &str) -> Result<Option<Instance>, AwsError> {
        let answer = self.ec2.describe_instances().instance_ids(id).send().await;
        match answer {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(id))
                .map(convert)),
            Err(e) => {
                let err = classify("ec2:DescribeInstances", &e);
                if err
                    .code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("InvalidInstanceID"))
                {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// RunInstances, one instance, with `token` as the client token (a
    /// retried call with the same token cannot launch a second one) and
    /// `tags` on the instance and its volumes.
    pub async fn launch(
        &self,
        bench: &BenchBackend,
        token: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let config = &self.config;
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let mut request = self
            .ec2
            .run_instances()
            .min_count(1)
            .max_count(1)
            .client_token(token)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags.clone()))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(tags))
                    .build(),
            );
        if let Some(lt) = &config.launch_template {
            request = request.launch_template(
                LaunchTemplateSpecification::builder()
                    .set_launch_template_id(lt.id.clone())
                    .set_launch_template_name(lt.name.clone())
                    .set_version(lt.version.clone())
                    .build(),
            );
        }
        if let Some(image) = bench.image_id.as_ref().or(config.image_id.as_ref()) {
            request = request.image_id(image);
        }
        if let Some(kind) = bench
            .instance_type
            .as_ref()
            .or(config.instance_type.as_ref())
        {
            request = request.instance_type(InstanceType::from(kind.as_str()));
        }
        if let Some(subnet) = &config.subnet_id {
            request = request.subnet_id(subnet);
        }
        for group in &config.security_group_ids {
            request = request.security_group_ids(group);
        }
        if let Some(profile) = &config.instance_profile {
            let spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder()
                    .arn(profile)
                    .build()
            } else {
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build()
            };
            request = request.iam_instance_profile(spec);
        }
        self.run_instances.fetch_add(1, Ordering::Relaxed);
        let out = request
            .send()
            .await
            .map_err(|e| classify("ec2:RunInstances", &e))?;
        out.instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_string)
            .ok_or_else(|| {
                AwsError::new(
                    ErrorKind::Transient,
                    "ec2:RunInstances answered without an instance id",
                )
            })
    }

    /// Wait until the instance runs and (if configured) its SSM agent is
    /// online. Polls with backoff; ends at `deadline` (a timeout error) or
    /// on `cancel` (a cancelled error).
    pub async fn wait_ready(
        &self,
        id: &str,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<(), AwsError> {
        let mut backoff = Backoff::new(&self.config);
        loop {
            // A passing describe failure (throttling, a 5xx) is one more
            // poll, not a failed provision: the deadline bounds the wait.
            let described = match self.describe(id).await {
                Ok(described) => described,
                Err(e) if e.kind == ErrorKind::Transient => {
                    tracing::debug!(instance = id, error = %e, "describe failed while waiting; polling on");
                    backoff
                        .sleep(
                            deadline,
                            cancel,
                            &format!("instance {id} to run (last error: {e})"),
                        )
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match described {
                Some(i) if i.state == "running" => break,
                Some(i) if i.state == "pending" => {}
                Some(i) => {
                    return Err(AwsError::new(
                        ErrorKind::Transient,
                        format!("instance {id} went {} while starting", i.state),
                    ));
                }
                None => {
                    // Eventual consistency: a just-launched id may not be visible yet.
                }
            }
            backoff
                .sleep(deadline, cancel, &format!("instance {id} to run"))
                .await?;
        }
        if !self.config.wait_for_ssm {
            return Ok(());
        }
        loop {
            let info = self
                .ssm
                .describe_instance_information()
                .instance_information_filter_list(
                    aws_sdk_ssm::types::InstanceInformationFilter::builder()
                        .key(aws_sdk_ssm::types::InstanceInformationFilterKey::InstanceIds)
                        .value_set(id)
                        .build()
                        .map_err(|e| {
                            AwsError::new(ErrorKind::Permanent, format!("ssm filter: {e}"))
                        })?,
                )
                .send()
                .await
                .map_err(|e| classify("ssm:DescribeInstanceInformation", &e));
            let info = match info {
                Ok(info) => info,
                Err(e) if e.kind == ErrorKind::Transient => {
                    tracing::debug!(instance = id, error = %e, "SSM describe failed while waiting; polling on");
                    backoff
                        .sleep(
                            deadline,
                            cancel,
                            &format!("the SSM agent on {id} (last error: {e})"),
                        )
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let online = info.instance_information_list().iter().any(|i| {
                i.instance_id() == Some(id)
                    && i.ping_status() == Some(&aws_sdk_ssm::types::PingStatus::Online)
            });
            if online {
                return Ok(());
            }
            backoff
                .sleep(
                    deadline,
                    cancel,
                    &format!("the SSM agent on {id} to come online"),
                )
                .await?;
        }
    }

    /// Set tags.
    pub async fn set_tags(&self, id: &str, tags: &[(&str, String)]) -> Result<(), AwsError> {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(v).build())
            .collect();
        self.ec2
            .create_tags()
            .resources(id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| classify("ec2:CreateTags", &e))?;
        Ok(())
    }

    /// Remove tags.
    pub async fn delete_tags(&self, id: &str, keys: &[&str]) -> Result<(), AwsError> {
        let tags: Vec<Tag> = keys
            .iter()
            .map(|k| Tag::builder().key(*k).build())
            .collect();
        self.ec2
            .delete_tags()
            .resources(id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| classify("ec2:DeleteTags", &e))?;
        Ok(())
    }

    /// Terminate; an instance EC2 no longer knows is already gone.
    pub async fn terminate(&self, id: &str) -> Result<(), AwsError> {
        match self.ec2.terminate_instances().instance_ids(id).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("ec2:TerminateInstances", &e);
                if err
                    .code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("InvalidInstanceID"))
                {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

fn convert(instance: &aws_sdk_ec2::types::Instance) -> Instance {
    Instance {
        id: instance.instance_id().unwrap_or_default().to_string(),
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(InstanceStateName::as_str)
            .unwrap_or("unknown")
            .to_string(),
        tags: instance
            .tags()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        launched: instance.launch_time().map(|t| t.secs()),
    }
}

/// Exponential polling between the config's bounds.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Start at `poll_initial_ms`.
    pub fn new(config: &Ec2Config) -> Backoff {
        Backoff {
            next: Duration::from_millis(config.poll_initial_ms),
            max: Duration::from_millis(config.poll_max_ms),
        }
    }

    /// The next interval (and grow).
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 3 / 2).min(self.max);
        now
    }

    /// Sleep one interval, or fail at the deadline or on cancel.
    pub async fn sleep(
        &mut self,
        deadline: Instant,
        cancel: &Cancel,
        waiting_for: &str,
    ) -> Result<(), AwsError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(AwsError::new(
                ErrorKind::Timeout,
                format!("timed out waiting for {waiting_for}"),
            ));
        }
        let pause = self.step().min(deadline - now);
        tokio::select! {
            _ = tokio::time::sleep(pause) => Ok(()),
            _ = cancel.cancelled() => Err(AwsError::new(ErrorKind::Cancelled, format!("cancelled while waiting for {waiting_for}"))),
        }
    }
}
