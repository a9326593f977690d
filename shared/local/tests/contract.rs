//! The store and queue contracts (`hub-testkit`) on the embedded adapters:
//! `SqliteStore` (in memory) and `LocalQueue`.

use async_trait::async_trait;
use chrono::Utc;
use hub_core::ports::{Job, QueueName};
use hub_local::embedded::{LocalQueue, SqliteStore};
use hub_testkit::queue::{QueueProbe, Queues};
use hub_testkit::store::Stores;
use std::sync::Arc;

async fn stores() -> Stores {
    Stores::both(SqliteStore::in_memory().expect("in-memory store"))
}

struct LocalProbe(LocalQueue);

#[async_trait]
impl QueueProbe for LocalProbe {
    async fn drain(&self, queue: QueueName) -> anyhow::Result<Vec<Job>> {
        let mut jobs = Vec::new();
        loop {
            let messages = self.0.receive(queue, 10, Utc::now()).await?;
            if messages.is_empty() {
                return Ok(jobs);
            }
            for message in messages {
                jobs.push(serde_json::from_str(&message.body)?);
                self.0.delete(queue, &message.receipt_handle).await?;
            }
        }
    }
}

async fn queues() -> Queues {
    let queue = LocalQueue::in_memory().expect("in-memory queue");
    Queues {
        queue: Arc::new(queue.clone()),
        probe: Arc::new(LocalProbe(queue)),
    }
}

mod store {
    hub_testkit::store_contract!(super::stores);
}

mod queue {
    hub_testkit::queue_contract!(super::queues);
}
