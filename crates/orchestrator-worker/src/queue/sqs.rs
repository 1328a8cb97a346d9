//! The task queue on Amazon SQS, for many workers on many machines.
//!
//! | trait operation | SQS |
//! |---|---|
//! | submit | SendMessage (FIFO: a message group per runner type or bench, dedup id from the body) |
//! | lease | ReceiveMessage, long polling, VisibilityTimeout = the lease; attempt = ApproximateReceiveCount |
//! | extend (heartbeat) | ChangeMessageVisibility |
//! | ack | DeleteMessage |
//! | requeue with delay | ChangeMessageVisibility(delay) |
//! | dead_letter | SendMessage of an envelope to the DLQ, then DeleteMessage |
//! | poison messages | the queue's redrive policy (maxReceiveCount) moves them to the DLQ |
//! | dlq list/show/replay | ReceiveMessage on the DLQ (peeking), SendMessage + DeleteMessage to replay |
//!
//! SQS messages cannot change, so the per-attempt history that the SQLite
//! queue keeps is not carried between deliveries: a dead letter holds the
//! final attempt's record, and the attempt number is the receive count
//! (a release at shutdown counts too).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AttemptRecord, DeadLetter, Lease, QueueDepth, QueueError, TaskQueue, now_ms};
use crate::task::Task;

pub use crate::config::{FifoGroup, SqsSection};

/// A dead letter as the worker writes it to the DLQ.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    orchestrator_dead_letter: u32,
    task_id: String,
    body: String,
    reason: String,
    history: Vec<AttemptRecord>,
    created_ms: u64,
}

/// The W3C trace context message attribute (see `crate::telemetry`).
pub const TRACEPARENT: &str = "traceparent";

/// The SQS queue.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    dlq_url: Option<String>,
    fifo: bool,
    group: FifoGroup,
    wait_seconds: i32,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue")
            .field("url", &self.url)
            .field("dlq_url", &self.dlq_url)
            .finish_non_exhaustive()
    }
}

fn store_err<E>(
    op: &str,
    err: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    QueueError::Store(runner_aws::classify(op, err).to_string())
}

/// Whether an SQS error says the receipt handle is no longer ours.
fn lease_lost<E>(
    err: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> bool
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    matches!(
        err.code(),
        Some(
            "ReceiptHandleIsInvalid"
                | "InvalidParameterValue"
                | "MessageNotInflight"
                | "AWS.SimpleQueueService.MessageNotInflight"
                | "AWS.SimpleQueueService.ReceiptHandleIsInvalid"
        )
    )
}

/// An error of a call made with a receipt handle: a lost lease when SQS no
/// longer honours the handle, else a store error.
fn lease_err<E>(
    op: &str,
    task_id: &str,
    err: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    if lease_lost(err) {
        QueueError::LeaseLost {
            task_id: task_id.to_string(),
        }
    } else {
        store_err(op, err)
    }
}

impl SqsQueue {
    /// A queue over `client`; the DLQ comes from `section.dlq_url` or the
    /// queue's redrive policy.
    pub async fn open(
        client: aws_sdk_sqs::Client,
        section: &SqsSection,
    ) -> Result<SqsQueue, QueueError> {
        let attrs = client
            .get_queue_attributes()
            .queue_url(&section.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .attribute_names(QueueAttributeName::FifoQueue)
            .send()
            .await
            .map_err(|e| store_err(&format!("sqs:GetQueueAttributes {}", section.url), &e))?;
        let attributes = attrs.attributes().cloned().unwrap_or_default();
        let fifo = attributes
            .get(&QueueAttributeName::FifoQueue)
            .is_some_and(|v| v == "true")
            || section.url.ends_with(".fifo");
        let mut dlq_url = section.dlq_url.clone();
        if dlq_url.is_none()
            && let Some(policy) = attributes.get(&QueueAttributeName::RedrivePolicy)
        {
            let arn = serde_json::from_str::<serde_json::Value>(policy)
                .ok()
                .and_then(|p| p["deadLetterTargetArn"].as_str().map(str::to_string));
            if let Some(name) = arn.as_deref().and_then(|a| a.rsplit(':').next()) {
                let found = client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| store_err(&format!("sqs:GetQueueUrl {name}"), &e))?;
                dlq_url = found.queue_url().map(str::to_string);
            }
        }
        Ok(SqsQueue {
            client,
            url: section.url.clone(),
            dlq_url,
            fifo,
            group: section.fifo_group,
            wait_seconds: section.wait_seconds,
        })
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The dead-letter queue's URL, if there is one.
    pub fn dlq_url(&self) -> Option<&str> {
        self.dlq_url.as_deref()
    }

    fn dlq(&self) -> Result<&str, QueueError> {
        self.dlq_url.as_deref().ok_or_else(|| {
            QueueError::Store(format!(
                "queue {} has no dead-letter queue: set queue.sqs.dlq_url or give it a redrive policy",
                self.url
            ))
        })
    }

    /// Send `body` with message attributes (trace context).
    pub async fn send_with_attributes(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String, QueueError> {
        let mut send = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body);
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| QueueError::Store(format!("message attribute {name}: {e}")))?;
            send = send.message_attributes(name, value);
        }
        if self.fifo {
            let task = Task::parse(body).ok();
            let group = match (self.group, &task) {
                (FifoGroup::Runner, Some(t)) => t.runner.clone(),
                (FifoGroup::Bench, Some(t)) if !t.bench.name.is_empty() => t.bench.name.clone(),
                (FifoGroup::Bench, Some(t)) => t.runner.clone(),
                _ => hex::encode(&Sha256::digest(body.as_bytes())[..8]),
            };
            let dedup = match &task {
                Some(t) => t.execution_key.clone(),
                None => hex::encode(Sha256::digest(body.as_bytes())),
            };
            send = send
                .message_group_id(sanitize_group(&group))
                .message_deduplication_id(sanitize_group(&dedup));
        }
        let out = send
            .send()
            .await
            .map_err(|e| store_err(&format!("sqs:SendMessage {}", self.url), &e))?;
        Ok(out.message_id().unwrap_or_default().to_string())
    }

    /// One ReceiveMessage with the receive count and every message attribute.
    async fn receive(
        &self,
        url: &str,
        max: i32,
        visibility: i32,
        wait: i32,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max)
            .visibility_timeout(visibility)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| store_err(&format!("sqs:ReceiveMessage {url}"), &e))?;
        Ok(out.messages().to_vec())
    }

    /// DeleteMessage; a receipt handle SQS no longer honours is a lost lease.
    async fn delete(&self, url: &str, receipt: &str, task_id: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| lease_err(&format!("sqs:DeleteMessage {url}"), task_id, &e))
    }

    /// Peek at up to `limit` dead letters with their receipt handles.
    /// `hold_seconds` 0 leaves them visible (list, show); replay holds the
    /// one it takes. SQS returns a sample per receive, so a DLQ of many
    /// thousands is listed in part.
    async fn peek_dlq(
        &self,
        limit: usize,
        hold_seconds: i32,
    ) -> Result<Vec<(DeadLetter, String)>, QueueError> {
        let dlq = self.dlq()?.to_string();
        let mut found: Vec<(DeadLetter, String)> = Vec::new();
        let mut stale_rounds = 0;
        // Bounded: at most limit/10 + 5 receives, and two rounds in a row
        // with nothing new end it.
        for _ in 0..(limit / 10 + 5) {
            if found.len() >= limit || stale_rounds >= 2 {
                break;
            }
            let messages = self.receive(&dlq, 10, hold_seconds, 0).await?;
            let before = found.len();
            for m in messages {
                let id = m.message_id().unwrap_or_default().to_string();
                if found.iter().any(|(d, _)| d.id == id) {
                    continue;
                }
                let receipt = m.receipt_handle().unwrap_or_default().to_string();
                found.push((dead_letter_of(&m, id), receipt));
            }
            stale_rounds = if found.len() == before {
                stale_rounds + 1
            } else {
                0
            };
        }
        found.truncate(limit);
        Ok(found)
    }
}

fn dead_letter_of(m: &aws_sdk_sqs::types::Message, id: String) -> DeadLetter {
    let body = m.body().unwrap_or_default();
    match serde_json::from_str::<Envelope>(body) {
        Ok(env) => DeadLetter {
            id,
            task_id: env.task_id,
            body: env.body,
            reason: env.reason,
            history: env.history,
            created_ms: env.created_ms,
        },
        // Moved by the redrive policy: the raw task, received too often.
        Err(_) => DeadLetter {
            id: id.clone(),
            task_id: id,
            body: body.to_string(),
            reason: format!(
                "redriven by SQS after {} receives without a result (maxReceiveCount)",
                receive_count(m)
            ),
            history: Vec::new(),
            created_ms: 0,
        },
    }
}

fn receive_count(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// FIFO group and dedup ids: 128 characters of `[A-Za-z0-9!-~]`.
fn sanitize_group(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    if clean.is_empty() {
        "tasks".into()
    } else {
        clean
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().min(43_200)).unwrap_or(43_200)
}

#[runner_core::async_trait]
impl TaskQueue for SqsQueue {
    async fn submit_raw(&self, body: &str) -> Result<String, QueueError> {
        self.send_with_attributes(body, &crate::telemetry::inject_current())
            .await
    }

    async fn lease(
        &self,
        _worker: &str,
        visibility: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        let messages = self
            .receive(&self.url, 1, secs(visibility).max(1), self.wait_seconds)
            .await?;
        let Some(m) = messages.into_iter().next() else {
            return Ok(None);
        };
        let attributes: BTreeMap<String, String> = m
            .message_attributes()
            .map(|attrs| {
                attrs
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Lease {
            body_error: None,
            task_id: m.message_id().unwrap_or_default().to_string(),
            body: m.body().unwrap_or_default().to_string(),
            attempt: receive_count(&m),
            failures: receive_count(&m).saturating_sub(1),
            token: m.receipt_handle().unwrap_or_default().to_string(),
            history: Vec::new(),
            attributes,
            journal_clear: false,
        }))
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&lease.token)
            .visibility_timeout(secs(visibility))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| lease_err("sqs:ChangeMessageVisibility", &lease.task_id, &e))
    }

    async fn ack(&self, lease: &Lease, outcome: &str) -> Result<(), QueueError> {
        tracing::debug!(task = %lease.task_id, outcome, "acking");
        self.delete(&self.url, &lease.token, &lease.task_id).await
    }

    async fn requeue(
        &self,
        lease: &Lease,
        delay: Duration,
        record: AttemptRecord,
        _count_attempt: bool,
    ) -> Result<(), QueueError> {
        tracing::info!(task = %lease.task_id, attempt = record.attempt, delay_ms = delay.as_millis() as u64, message = %record.message, "requeued");
        self.extend(lease, delay).await
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        reason: &str,
        record: AttemptRecord,
    ) -> Result<(), QueueError> {
        let dlq = self.dlq()?.to_string();
        let envelope = Envelope {
            orchestrator_dead_letter: 1,
            task_id: lease.task_id.clone(),
            body: lease.body.clone(),
            reason: reason.to_string(),
            history: lease.history.iter().cloned().chain([record]).collect(),
            created_ms: now_ms(),
        };
        let body = serde_json::to_string(&envelope)
            .map_err(|e| QueueError::Store(format!("dead letter: {e}")))?;
        let mut send = self
            .client
            .send_message()
            .queue_url(&dlq)
            .message_body(body);
        if dlq.ends_with(".fifo") {
            send = send
                .message_group_id("dead-letters")
                .message_deduplication_id(sanitize_group(&lease.task_id));
        }
        send.send()
            .await
            .map_err(|e| store_err(&format!("sqs:SendMessage {dlq}"), &e))?;
        // Sent first, deleted second: a crash between leaves a duplicate
        // (redelivered, dead-lettered again), never a lost task.
        self.delete(&self.url, &lease.token, &lease.task_id).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let get = |url: String| async move {
            let out = self
                .client
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .map_err(|e| store_err(&format!("sqs:GetQueueAttributes {url}"), &e))?;
            let attrs = out.attributes().cloned().unwrap_or_default();
            let n = |k: QueueAttributeName| {
                attrs
                    .get(&k)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Ok::<_, QueueError>((
                n(QueueAttributeName::ApproximateNumberOfMessages),
                n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
                n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            ))
        };
        let (ready, delayed, leased) = get(self.url.clone()).await?;
        let dead = match &self.dlq_url {
            Some(dlq) => {
                let (a, b, c) = get(dlq.clone()).await?;
                a + b + c
            }
            None => 0,
        };
        Ok(QueueDepth {
            ready,
            delayed,
            leased,
            done: 0,
            dead,
        })
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .peek_dlq(limit, 0)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    async fn dlq_show(&self, id: &str) -> Result<DeadLetter, QueueError> {
        self.peek_dlq(1000, 0)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .find(|d| d.id == id)
            .ok_or_else(|| QueueError::NotFound {
                what: "dead letter",
                id: id.to_string(),
            })
    }

    async fn dlq_replay(&self, id: &str) -> Result<String, QueueError> {
        // Receive with a 30 s hold (long enough to send and delete, and the
        // receipt handle is the newest, as DeleteMessage needs); the other
        // letters seen are made visible again at once.
        let dlq = self.dlq()?.to_string();
        let mut target = None;
        for (letter, receipt) in self.peek_dlq(1000, 30).await? {
            if letter.id == id {
                target = Some((letter, receipt));
                continue;
            }
            let released = self
                .client
                .change_message_visibility()
                .queue_url(&dlq)
                .receipt_handle(&receipt)
                .visibility_timeout(0)
                .send()
                .await;
            if let Err(e) = released {
                tracing::debug!(error = %store_err("sqs:ChangeMessageVisibility", &e), "a dead letter stays hidden for 30 s");
            }
        }
        let (letter, receipt) = target.ok_or_else(|| QueueError::NotFound {
            what: "dead letter",
            id: id.to_string(),
        })?;
        let new_id = self
            .send_with_attributes(&letter.body, &BTreeMap::new())
            .await?;
        self.delete(&dlq, &receipt, id).await?;
        Ok(new_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_clean() {
        assert_eq!(sanitize_group("ec2"), "ec2");
        assert_eq!(sanitize_group("rig a/b"), "riga/b");
        assert_eq!(sanitize_group(""), "tasks");
        assert_eq!(sanitize_group(&"x".repeat(300)).len(), 128);
    }
}
