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

use anyhow::Context;
use async_trait::async_trait;
use aws::harness::queue_id;
use aws::Stack;
use aws_sdk_dynamodb::types::AttributeValue;
use hub_core::domain::{CampaignId, ChunkId};
use hub_core::ports::{Job, QueueName};
use hub_testkit::queue::{QueueProbe, Queues};
use hub_testkit::store::{Stores, Tamper};
use std::sync::Arc;

async fn stack() -> Stack {
    Stack::create()
        .await
        .expect("emulator stack from template.yaml")
}

async fn stores() -> Stores {
    let stack = stack().await;
    let patients = stack.patient_store().expect("patient store");
    Stores {
        hub: Arc::new(stack.hub_store().expect("hub store")),
        tamper: Arc::new(DynamoTamper {
            client: stack.clients.dynamodb.clone(),
            table: patients.table_name().to_string(),
        }),
        patients: Arc::new(patients),
    }
}

/// Rewrites items of the patient-data table with the plain client.
struct DynamoTamper {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

#[async_trait]
impl Tamper for DynamoTamper {
    async fn set_stored_nhs_number(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        value: &str,
    ) -> anyhow::Result<()> {
        let key = [
            (
                "pk",
                AttributeValue::S(format!("CAMPAIGN#{campaign}#R#{chunk}")),
            ),
            ("sk", AttributeValue::S(format!("{index:010}"))),
        ];
        let mut get = self.client.get_item().table_name(&self.table);
        for (name, value) in key.clone() {
            get = get.key(name, value);
        }
        let item = get.send().await?.item.context("no such recipient")?;
        let data = item
            .get("data")
            .and_then(|d| d.as_s().ok())
            .context("a data attribute")?;
        let mut record: serde_json::Value = serde_json::from_str(data)?;
        record["nhs_number"] = serde_json::Value::String(value.to_string());
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .update_expression("SET #data = :data")
            .expression_attribute_names("#data", "data")
            .expression_attribute_values(":data", AttributeValue::S(record.to_string()));
        for (name, value) in key {
            update = update.key(name, value);
        }
        update.send().await?;
        Ok(())
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
