//! The queue contract: what `JobQueue` promises, checked the same way on
//! every adapter (the local queue, SQS). The port promises only that every
//! job reaches its own queue; order, batching and redelivery are the
//! adapters' own business and tested with them.

use crate::fixtures::ods;
use async_trait::async_trait;
use hub_core::domain::{CampaignId, ChunkId};
use hub_core::ports::{Job, JobQueue, QueueName};
use std::sync::Arc;

/// The consuming side of a backend's queues, as a test reads them.
#[async_trait]
pub trait QueueProbe: Send + Sync {
    /// Receives and deletes every message waiting on `queue`, parsed as jobs.
    async fn drain(&self, queue: QueueName) -> anyhow::Result<Vec<Job>>;
}

/// A fresh, empty set of queues of one backend.
#[derive(Clone)]
pub struct Queues {
    pub queue: Arc<dyn JobQueue>,
    pub probe: Arc<dyn QueueProbe>,
}

fn sorted(jobs: impl IntoIterator<Item = Job>) -> Vec<String> {
    let mut bodies: Vec<String> = jobs
        .into_iter()
        .map(|j| serde_json::to_string(&j).expect("a job serialises"))
        .collect();
    bodies.sort();
    bodies
}

/// Each job arrives, once, on its own queue and on no other; more jobs
/// than one SQS batch (10) holds, for several queues in one call.
pub async fn jobs_reach_their_own_queue(q: &Queues) {
    let c = CampaignId::new();
    // 23 send jobs (3 batches), 12 extract jobs (2 batches), one of each other.
    let mut jobs: Vec<Job> = (0..23)
        .map(|s| Job::Send {
            campaign: c.clone(),
            chunk: ChunkId::new(&ods(1), s),
        })
        .collect();
    jobs.extend((0..12).map(|n| Job::Extract {
        campaign: c.clone(),
        ods: ods(n),
    }));
    jobs.push(Job::Purge {
        campaign: c.clone(),
    });
    jobs.push(Job::Notice {
        campaign: c.clone(),
        ods: ods(3),
    });
    jobs.push(Job::Letters {
        campaign: c.clone(),
        chunk: ChunkId::new(&ods(2), 0),
    });
    q.queue.send(&jobs).await.unwrap();

    for name in QueueName::ALL {
        let got = q.probe.drain(name).await.unwrap();
        let expected = jobs.iter().filter(|j| j.queue() == name).cloned();
        assert_eq!(sorted(got), sorted(expected), "{name:?}");
    }
    for name in QueueName::ALL {
        assert!(q.probe.drain(name).await.unwrap().is_empty(), "{name:?}");
    }
}

pub async fn sending_no_jobs_sends_nothing(q: &Queues) {
    q.queue.send(&[]).await.unwrap();
    for name in QueueName::ALL {
        assert!(q.probe.drain(name).await.unwrap().is_empty(), "{name:?}");
    }
}

/// A delayed job is not there at once, and is there, once, after its delay.
pub async fn delayed_jobs_arrive_after_their_delay(q: &Queues) {
    let job = Job::Send {
        campaign: CampaignId::new(),
        chunk: ChunkId::new(&ods(1), 0),
    };
    q.queue
        .send_later(
            std::slice::from_ref(&job),
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(q.probe.drain(QueueName::Send).await.unwrap().is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let got = q.probe.drain(QueueName::Send).await.unwrap();
    assert_eq!(sorted(got), sorted([job]));
}
