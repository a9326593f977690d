//! The store and queue contracts (`hub-testkit`) on the embedded adapters:
//! `SqliteStore` (on a temporary file) and `LocalQueue`.

use async_trait::async_trait;
use chrono::Utc;
use hub_core::domain::{CampaignId, ChunkId};
use hub_core::ports::{Job, QueueName};
use hub_local::embedded::{LocalQueue, SqliteStore};
use hub_testkit::queue::{QueueProbe, Queues};
use hub_testkit::store::{Stores, Tamper};
use std::path::PathBuf;
use std::sync::Arc;

/// A store on a file of its own, so a second connection can tamper with it.
async fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("hub.db");
    let store = Arc::new(SqliteStore::open(&path).expect("file store"));
    Stores {
        hub: store.clone(),
        patients: store,
        tamper: Arc::new(SqliteTamper { path, _dir: dir }),
    }
}

struct SqliteTamper {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl Tamper for SqliteTamper {
    async fn set_stored_nhs_number(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        value: &str,
    ) -> anyhow::Result<()> {
        let conn = rusqlite::Connection::open(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let changed = conn.execute(
            "UPDATE patient_recipients SET data = json_set(data, '$.nhs_number', ?1)
             WHERE campaign = ?2 AND chunk = ?3 AND idx = ?4",
            rusqlite::params![value, campaign.as_str(), chunk.as_str(), index],
        )?;
        anyhow::ensure!(changed == 1, "no such recipient");
        Ok(())
    }
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
