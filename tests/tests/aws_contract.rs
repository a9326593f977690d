//! The store and queue contracts (`hub-testkit`) on the AWS adapters over
//! the wire: `DynamoHubStore`, `DynamoPatientStore` and `SqsJobQueue`
//! against the AWS API emulator (moto), each test on fresh tables and
//! queues created from `template.yaml`.
//!
//! Run: `cargo nextest run -p hub-tests --features aws -E 'binary(aws_contract)'`
//! (see `tests/src/aws/mod.rs` for how the emulator is found or started).

#[path = "../src/aws/mod.rs"]
#[allow(dead_code)]
mod aws;

use async_trait::async_trait;
use aws::harness::queue_id;
use aws::Stack;
use hub_core::ports::{Job, QueueName};
use hub_testkit::queue::{QueueProbe, Queues};
use hub_testkit::store::Stores;
use std::sync::Arc;

async fn stack() -> Stack {
    Stack::create()
        .await
        .expect("emulator stack from template.yaml")
}

async fn stores() -> Stores {
    let stack = stack().await;
    Stores {
        hub: Arc::new(stack.hub_store().expect("hub store")),
        patients: Arc::new(stack.patient_store().expect("patient store")),
    }
}

/// Reads a queue of the stack the way a test does: receive and delete.
struct SqsProbe(Stack);

#[async_trait]
impl QueueProbe for SqsProbe {
    async fn drain(&self, queue: QueueName) -> anyhow::Result<Vec<Job>> {
        self.0
            .drain(queue_id(queue))
            .await?
            .iter()
            .map(|body| Ok(serde_json::from_str(body)?))
            .collect()
    }
}

async fn queues() -> Queues {
    let stack = stack().await;
    Queues {
        queue: Arc::new(stack.job_queue().expect("job queue")),
        probe: Arc::new(SqsProbe(stack)),
    }
}

mod store {
    hub_testkit::store_contract!(super::stores);
}

mod queue {
    hub_testkit::queue_contract!(super::queues);
}
