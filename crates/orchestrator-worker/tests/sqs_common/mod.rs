//! Shared set-up of the worker's SQS tests: one moto server per test
//! binary, a fresh queue (and dead-letter queue) per test, mock tasks.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use aws_sdk_sqs::types::QueueAttributeName;
use orchestrator_worker::Task;
use orchestrator_worker::config::SqsSection;
use orchestrator_worker::queue::sqs::SqsQueue;
use test_emulators::Moto;

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The binary's moto server (started, and installed if needed, on first use).
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(|| Moto::start().expect("moto's server must start (see test-emulators)"))
}

/// The URL of queue `name`.
pub async fn queue_url(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string()
}

/// A queue `name` (`name.fifo` when `fifo`) with a dead-letter queue and a
/// redrive policy of `max_receive` receives; unique per process.
pub async fn sqs_queue(
    moto: &Moto,
    name: &str,
    max_receive: u32,
    fifo: bool,
) -> (SqsQueue, aws_sdk_sqs::Client) {
    let client = test_emulators::aws::sqs_client(&moto.endpoint()).await;
    let suffix = if fifo { ".fifo" } else { "" };
    let dlq_name = format!("{name}-dlq{suffix}");
    let mut dlq = client.create_queue().queue_name(&dlq_name);
    if fifo {
        dlq = dlq.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let dlq_url = dlq.send().await.unwrap().queue_url().unwrap().to_string();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive.to_string()});
    let mut create = client
        .create_queue()
        .queue_name(format!("{name}{suffix}"))
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
    if fifo {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let url = create
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let section = SqsSection {
        url,
        dlq_url: None,
        wait_seconds: 1,
        fifo_group: Default::default(),
        region: None,
    };
    let queue = SqsQueue::open(client.clone(), &section).await.unwrap();
    assert_eq!(
        queue.dlq_url(),
        Some(dlq_url.as_str()),
        "the DLQ is found from the redrive policy"
    );
    (queue, client)
}

/// A local_mock task that passes after `duration_ms`.
pub fn mock_task(key: &str, duration_ms: u64) -> Task {
    let mut task = Task::new(
        key,
        "local_mock",
        Default::default(),
        runner_core::TestPayload::new(["mock"])
            .with_name(key)
            .with_backend(serde_json::json!({"duration_ms": duration_ms})),
    );
    task.correlation_id = Some(format!("corr-{key}"));
    task
}
