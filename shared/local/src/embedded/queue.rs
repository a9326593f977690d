//! A durable local queue with the SQS semantics the handlers rely on:
//! at-least-once delivery, a visibility timeout, a receive count, and a
//! dead-letter queue per queue after `max_receive_count` receives.

use super::db::{millis, to_json, Db, DbError, SqlContext};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hub_core::ports::{Clock, Job, JobQueue, QueueError, QueueName, SystemClock};
use rusqlite::{params, TransactionBehavior};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// `dead = 1` rows are the queue's DLQ. New messages get `visible_at = 0`
/// (visible at once, whatever clock the consumer passes as `now`). Visible
/// messages are delivered oldest first, so a retry is not starved by newer
/// work (SQS standard promises no order; this is one allowed order).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_messages_ready ON queue_messages (queue, dead, seq);
CREATE INDEX IF NOT EXISTS queue_messages_receipt ON queue_messages (receipt);
";

/// Per-queue settings, like an SQS queue's attributes and redrive policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// How long a received message stays invisible before it is delivered
    /// again. Zero is treated as one millisecond.
    pub visibility_timeout: Duration,
    /// Receives after which the next receive moves the message to the DLQ
    /// instead (SQS `maxReceiveCount`). Zero is treated as one.
    pub max_receive_count: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: 5,
        }
    }
}

/// One delivered message. `receipt_handle` is valid until the message is
/// received again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    pub receipt_handle: String,
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// The embedded `JobQueue` plus the consumer side used by the local event
/// source. Clones share one connection and one configuration.
#[derive(Clone)]
pub struct LocalQueue {
    db: Db,
    configs: Arc<RwLock<HashMap<QueueName, QueueConfig>>>,
    /// When a delayed job (`send_later`) falls due: the consumers' clock.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueue").finish_non_exhaustive()
    }
}

impl LocalQueue {
    /// Opens (or creates) the queue database file; may be the store's file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self::with_db(Db::open(path, SCHEMA)?))
    }

    pub fn in_memory() -> anyhow::Result<Self> {
        Ok(Self::with_db(Db::in_memory(SCHEMA)?))
    }

    fn with_db(db: Db) -> Self {
        Self {
            db,
            configs: Arc::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Delayed jobs fall due on `clock`, the one consumers pass to
    /// [`LocalQueue::receive`] (a scenario's virtual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A throwaway database: commits never wait for the disk.
    pub fn without_fsync(mut self) -> anyhow::Result<Self> {
        self.db = self.db.without_fsync()?;
        Ok(self)
    }

    /// Runs its SQLite calls on the calling thread (virtual time).
    pub fn with_inline_calls(mut self) -> Self {
        self.db = self.db.inline();
        self
    }

    /// Sets a queue's configuration (not persisted: set it at start-up).
    pub fn set_config(&self, queue: QueueName, config: QueueConfig) {
        // A poisoned lock only means a writer panicked between two plain
        // field writes; the map is still valid.
        self.configs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue, config);
    }

    /// A queue's configuration (the default unless set).
    pub fn config(&self, queue: QueueName) -> QueueConfig {
        self.configs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&queue)
            .copied()
            .unwrap_or_default()
    }

    /// Sends one raw body to a queue (the `JobQueue` port sends `Job`s).
    pub async fn send_body(&self, queue: QueueName, body: String) -> Result<(), QueueError> {
        self.insert(vec![(queue, body)], 0).await
    }

    /// Inserts messages visible from `visible_at` (ms since the epoch).
    async fn insert(
        &self,
        messages: Vec<(QueueName, String)>,
        visible_at: i64,
    ) -> Result<(), QueueError> {
        self.db
            .call(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .op("queue send: begin")?;
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO queue_messages (queue, message_id, body, visible_at)
                             VALUES (?1, ?2, ?3, ?4)",
                        )
                        .op("queue send")?;
                    for (queue, body) in &messages {
                        let id = uuid::Uuid::new_v4().to_string();
                        insert
                            .execute(params![queue.as_str(), id, body, visible_at])
                            .op("queue send")?;
                    }
                }
                tx.commit().op("queue send: commit")?;
                Ok(())
            })
            .await
    }

    /// Receives up to `max_messages` visible messages, hiding each until
    /// `now + visibility_timeout`. A message already received
    /// `max_receive_count` times goes to the DLQ instead of being delivered.
    pub async fn receive(
        &self,
        queue: QueueName,
        max_messages: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let config = self.config(queue);
        let now_ms = millis(now);
        // At least 1 ms, so a received message never matches `visible_at <= now`
        // again in the same call.
        let hidden_until = now_ms.saturating_add(
            i64::try_from(config.visibility_timeout.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
        );
        let max_receives = config.max_receive_count.max(1);
        self.db
            .call(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .op("receive: begin")?;
                let mut delivered = Vec::new();
                {
                    let mut select = tx
                        .prepare_cached(
                            "SELECT seq, message_id, body, receive_count FROM queue_messages
                             WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2
                             ORDER BY seq LIMIT ?3",
                        )
                        .op("receive")?;
                    let mut to_dlq = tx
                        .prepare_cached(
                            "UPDATE queue_messages SET dead = 1, receipt = NULL WHERE seq = ?1",
                        )
                        .op("receive")?;
                    let mut hide = tx
                        .prepare_cached(
                            "UPDATE queue_messages
                             SET receive_count = ?1, receipt = ?2, visible_at = ?3
                             WHERE seq = ?4",
                        )
                        .op("receive")?;
                    // Every row a pass selects leaves the selection (dead or
                    // hidden), so passes continue only to refill after
                    // dead-lettering, and always end.
                    while delivered.len() < max_messages {
                        let wanted =
                            i64::try_from(max_messages - delivered.len()).unwrap_or(i64::MAX);
                        let batch: Vec<(i64, String, String, u32)> = select
                            .query_map(params![queue.as_str(), now_ms, wanted], |row| {
                                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                            })
                            .and_then(|rows| rows.collect())
                            .op("receive")?;
                        if batch.is_empty() {
                            break;
                        }
                        for (seq, id, body, receive_count) in batch {
                            if receive_count >= max_receives {
                                to_dlq.execute([seq]).op("receive: dead-letter")?;
                                tracing::warn!(
                                    queue = queue.as_str(),
                                    message_id = %id,
                                    receive_count,
                                    "message moved to the dead-letter queue"
                                );
                                continue;
                            }
                            let receipt = uuid::Uuid::new_v4().to_string();
                            let receive_count = receive_count + 1;
                            hide.execute(params![receive_count, receipt, hidden_until, seq])
                                .op("receive")?;
                            delivered.push(ReceivedMessage {
                                id,
                                receipt_handle: receipt,
                                body,
                                receive_count,
                            });
                        }
                    }
                }
                tx.commit().op("receive: commit")?;
                Ok(delivered)
            })
            .await
    }

    /// Deletes a received message. A receipt handle from an earlier receive
    /// (the message was received again since) deletes nothing. Returns
    /// whether a message was deleted.
    pub async fn delete(&self, queue: QueueName, receipt_handle: &str) -> Result<bool, QueueError> {
        let receipt = receipt_handle.to_string();
        self.db
            .call(move |conn| {
                let deleted = conn
                    .prepare_cached(
                        "DELETE FROM queue_messages WHERE receipt = ?1 AND queue = ?2 AND dead = 0",
                    )
                    .and_then(|mut s| s.execute(params![receipt, queue.as_str()]))
                    .op("delete message")?;
                Ok(deleted > 0)
            })
            .await
    }

    /// Makes a received message visible again at `at` (a retry delay, or
    /// `now` to release it at once). Returns whether the handle was current.
    pub async fn change_visibility(
        &self,
        queue: QueueName,
        receipt_handle: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, QueueError> {
        let receipt = receipt_handle.to_string();
        let at = millis(at);
        self.db
            .call(move |conn| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE queue_messages SET visible_at = ?1
                         WHERE receipt = ?2 AND queue = ?3 AND dead = 0",
                    )
                    .and_then(|mut s| s.execute(params![at, receipt, queue.as_str()]))
                    .op("change visibility")?;
                Ok(changed > 0)
            })
            .await
    }

    /// Bodies in the queue's dead-letter queue, oldest first.
    pub async fn dead_letters(&self, queue: QueueName) -> Result<Vec<String>, QueueError> {
        self.db
            .call(move |conn| {
                let bodies = conn
                    .prepare_cached(
                        "SELECT body FROM queue_messages WHERE queue = ?1 AND dead = 1
                         ORDER BY seq",
                    )
                    .and_then(|mut s| {
                        s.query_map([queue.as_str()], |row| row.get(0))?
                            .collect::<rusqlite::Result<Vec<String>>>()
                    })
                    .op("dead letters")?;
                Ok(bodies)
            })
            .await
    }

    /// Moves the queue's dead letters back onto it with a fresh receive
    /// count (an operator's redrive). Returns how many.
    pub async fn redrive_dead_letters(&self, queue: QueueName) -> Result<u64, QueueError> {
        self.db
            .call(move |conn| {
                let moved = conn
                    .prepare_cached(
                        "UPDATE queue_messages
                         SET dead = 0, receive_count = 0, receipt = NULL, visible_at = 0
                         WHERE queue = ?1 AND dead = 1",
                    )
                    .and_then(|mut s| s.execute([queue.as_str()]))
                    .op("redrive")?;
                Ok(moved as u64)
            })
            .await
    }

    /// `(visible, in_flight)` messages of the queue (DLQ excluded) at the
    /// wall-clock time.
    pub async fn depth(&self, queue: QueueName) -> Result<(u64, u64), QueueError> {
        self.depth_at(queue, Utc::now()).await
    }

    /// `(visible, in_flight)` as seen at `now` (for a simulated clock).
    pub async fn depth_at(
        &self,
        queue: QueueName,
        now: DateTime<Utc>,
    ) -> Result<(u64, u64), QueueError> {
        let now = millis(now);
        self.db
            .call(move |conn| {
                let counts = conn
                    .prepare_cached(
                        "SELECT coalesce(sum(visible_at <= ?2), 0), coalesce(sum(visible_at > ?2), 0)
                         FROM queue_messages WHERE queue = ?1 AND dead = 0",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![queue.as_str(), now], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                    })
                    .op("queue depth")?;
                Ok(counts)
            })
            .await
    }

    /// No message is visible or in flight in any queue (dead letters aside):
    /// the local stack has nothing left to do.
    pub async fn is_idle(&self) -> Result<bool, QueueError> {
        self.db
            .call(|conn| {
                let busy: bool = conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM queue_messages WHERE dead = 0)")
                    .and_then(|mut s| s.query_row([], |row| row.get(0)))
                    .op("queue idle")?;
                Ok(!busy)
            })
            .await
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn send(&self, jobs: &[Job]) -> Result<(), QueueError> {
        let messages = jobs
            .iter()
            .map(|job| Ok((job.queue(), to_json("job", job)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        self.insert(messages, 0).await
    }

    async fn send_later(&self, jobs: &[Job], delay: std::time::Duration) -> Result<(), QueueError> {
        let messages = jobs
            .iter()
            .map(|job| Ok((job.queue(), to_json("job", job)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        let delay = chrono::Duration::from_std(delay.min(hub_core::ports::MAX_SEND_DELAY))
            .unwrap_or_default();
        self.insert(messages, millis(self.clock.now() + delay))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::domain::{CampaignId, ChunkId, OdsCode};

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000 + seconds, 0).unwrap()
    }

    fn send_job(n: u32) -> Job {
        Job::Send {
            campaign: CampaignId::parse("abcdef012345").unwrap(),
            chunk: ChunkId::new(&OdsCode::parse("G85001").unwrap(), n),
        }
    }

    fn queue(visibility_secs: u64, max_receive_count: u32) -> LocalQueue {
        let q = LocalQueue::in_memory().unwrap();
        q.set_config(
            QueueName::Send,
            QueueConfig {
                visibility_timeout: Duration::from_secs(visibility_secs),
                max_receive_count,
            },
        );
        q
    }

    #[tokio::test]
    async fn jobs_are_routed_to_their_queue_as_json() {
        let q = LocalQueue::in_memory().unwrap();
        let campaign = CampaignId::new();
        let jobs = [
            send_job(1),
            Job::Purge {
                campaign: campaign.clone(),
            },
            send_job(2),
        ];
        q.send(&jobs).await.unwrap();
        assert_eq!(q.depth_at(QueueName::Send, t(0)).await.unwrap(), (2, 0));
        assert_eq!(q.depth_at(QueueName::Purge, t(0)).await.unwrap(), (1, 0));
        assert_eq!(q.depth_at(QueueName::Extract, t(0)).await.unwrap(), (0, 0));
        let got = q.receive(QueueName::Send, 10, t(0)).await.unwrap();
        let bodies: Vec<Job> = got
            .iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect();
        assert_eq!(bodies, vec![send_job(1), send_job(2)]);
        assert!(got.iter().all(|m| m.receive_count == 1));
        assert_ne!(got[0].id, got[1].id);
        let purge = q.receive(QueueName::Purge, 10, t(0)).await.unwrap();
        assert_eq!(
            serde_json::from_str::<Job>(&purge[0].body).unwrap(),
            Job::Purge { campaign }
        );
    }

    #[tokio::test]
    async fn an_undeleted_message_comes_back_after_the_visibility_timeout() {
        let q = queue(30, 5);
        q.send(&[send_job(1)]).await.unwrap();
        let first = q.receive(QueueName::Send, 10, t(0)).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(q.depth_at(QueueName::Send, t(1)).await.unwrap(), (0, 1));
        assert!(q
            .receive(QueueName::Send, 10, t(29))
            .await
            .unwrap()
            .is_empty());
        assert!(!q.is_idle().await.unwrap(), "in flight is not idle");

        let second = q.receive(QueueName::Send, 10, t(30)).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(second[0].body, first[0].body);
        assert_eq!(second[0].receive_count, 2);
        assert_ne!(second[0].receipt_handle, first[0].receipt_handle);
    }

    #[tokio::test]
    async fn a_stale_receipt_handle_deletes_nothing() {
        let q = queue(30, 5);
        q.send(&[send_job(1)]).await.unwrap();
        let first = q.receive(QueueName::Send, 1, t(0)).await.unwrap();
        let second = q.receive(QueueName::Send, 1, t(31)).await.unwrap();
        assert!(!q
            .delete(QueueName::Send, &first[0].receipt_handle)
            .await
            .unwrap());
        assert!(!q
            .change_visibility(QueueName::Send, &first[0].receipt_handle, t(31))
            .await
            .unwrap());
        assert_eq!(q.depth_at(QueueName::Send, t(32)).await.unwrap(), (0, 1));
        // The handle is also bound to its queue.
        assert!(!q
            .delete(QueueName::Extract, &second[0].receipt_handle)
            .await
            .unwrap());
        assert!(q
            .delete(QueueName::Send, &second[0].receipt_handle)
            .await
            .unwrap());
        assert_eq!(q.depth_at(QueueName::Send, t(32)).await.unwrap(), (0, 0));
        assert!(q.is_idle().await.unwrap());
    }

    #[tokio::test]
    async fn change_visibility_releases_or_delays_a_message() {
        let q = queue(30, 5);
        q.send(&[send_job(1)]).await.unwrap();
        let got = q.receive(QueueName::Send, 1, t(0)).await.unwrap();
        // Released at once (a failed batch item).
        assert!(q
            .change_visibility(QueueName::Send, &got[0].receipt_handle, t(1))
            .await
            .unwrap());
        let again = q.receive(QueueName::Send, 1, t(1)).await.unwrap();
        assert_eq!(again[0].receive_count, 2);
        // Delayed beyond the timeout (backoff).
        q.change_visibility(QueueName::Send, &again[0].receipt_handle, t(100))
            .await
            .unwrap();
        assert!(q
            .receive(QueueName::Send, 1, t(99))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            q.receive(QueueName::Send, 1, t(100)).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn a_message_goes_to_the_dlq_after_max_receives() {
        let q = queue(10, 3);
        q.send(&[send_job(1), send_job(2)]).await.unwrap();
        for (round, now) in [t(0), t(10), t(20)].into_iter().enumerate() {
            let got = q.receive(QueueName::Send, 1, now).await.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].receive_count, round as u32 + 1);
            assert_eq!(got[0].body, serde_json::to_string(&send_job(1)).unwrap());
        }
        // The fourth receive dead-letters job 1 and delivers job 2 instead.
        let got = q.receive(QueueName::Send, 1, t(30)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, serde_json::to_string(&send_job(2)).unwrap());
        assert_eq!(
            q.dead_letters(QueueName::Send).await.unwrap(),
            vec![serde_json::to_string(&send_job(1)).unwrap()]
        );
        assert!(q.dead_letters(QueueName::Extract).await.unwrap().is_empty());
        q.delete(QueueName::Send, &got[0].receipt_handle)
            .await
            .unwrap();
        assert_eq!(q.depth_at(QueueName::Send, t(31)).await.unwrap(), (0, 0));
        assert!(
            q.is_idle().await.unwrap(),
            "dead letters do not keep it busy"
        );

        // An operator's redrive puts it back with a fresh count.
        assert_eq!(q.redrive_dead_letters(QueueName::Send).await.unwrap(), 1);
        let got = q.receive(QueueName::Send, 10, t(40)).await.unwrap();
        assert_eq!(got[0].receive_count, 1);
        assert!(q.dead_letters(QueueName::Send).await.unwrap().is_empty());
    }

    /// A clock standing at one instant.
    struct StoppedClock(DateTime<Utc>);

    impl Clock for StoppedClock {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    /// `send_later` counts its delay on the queue's clock (a scenario's
    /// virtual clock), the one consumers receive by.
    #[tokio::test]
    async fn a_delayed_job_falls_due_on_the_queue_clock() {
        let q = queue(30, 5).with_clock(Arc::new(StoppedClock(t(0))));
        q.send_later(&[send_job(1)], Duration::from_secs(60))
            .await
            .unwrap();
        q.send(&[send_job(2)]).await.unwrap();
        let now = q.receive(QueueName::Send, 10, t(59)).await.unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].body, serde_json::to_string(&send_job(2)).unwrap());
        assert_eq!(q.depth_at(QueueName::Send, t(59)).await.unwrap(), (0, 2));
        let later = q.receive(QueueName::Send, 10, t(60)).await.unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].body, serde_json::to_string(&send_job(1)).unwrap());
    }

    #[tokio::test]
    async fn receive_respects_max_messages() {
        let q = queue(30, 5);
        let jobs: Vec<_> = (0..25).map(send_job).collect();
        q.send(&jobs).await.unwrap();
        assert_eq!(
            q.receive(QueueName::Send, 10, t(0)).await.unwrap().len(),
            10
        );
        assert_eq!(
            q.receive(QueueName::Send, 10, t(0)).await.unwrap().len(),
            10
        );
        assert_eq!(q.receive(QueueName::Send, 10, t(0)).await.unwrap().len(), 5);
        assert_eq!(q.depth_at(QueueName::Send, t(0)).await.unwrap(), (0, 25));
        assert_eq!(q.depth_at(QueueName::Send, t(30)).await.unwrap(), (25, 0));
    }

    #[tokio::test]
    async fn a_file_queue_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let in_flight;
        {
            let q = LocalQueue::open(&path).unwrap();
            q.send(&[send_job(1), send_job(2)]).await.unwrap();
            in_flight = q.receive(QueueName::Send, 1, t(0)).await.unwrap();
        }
        let q = LocalQueue::open(&path).unwrap();
        // Job 2 is waiting; job 1 is still in flight with its receive count.
        assert_eq!(q.depth_at(QueueName::Send, t(1)).await.unwrap(), (1, 1));
        let got = q.receive(QueueName::Send, 10, t(31)).await.unwrap();
        assert_eq!(got.len(), 2);
        let redelivered = got.iter().find(|m| m.id == in_flight[0].id).unwrap();
        assert_eq!(redelivered.receive_count, 2);
        for m in &got {
            assert!(q.delete(QueueName::Send, &m.receipt_handle).await.unwrap());
        }
        drop(q);
        assert!(LocalQueue::open(&path).unwrap().is_idle().await.unwrap());
    }

    #[test]
    fn config_defaults_and_setter() {
        let q = LocalQueue::in_memory().unwrap();
        assert_eq!(q.config(QueueName::Extract), QueueConfig::default());
        let custom = QueueConfig {
            visibility_timeout: Duration::from_secs(900),
            max_receive_count: 2,
        };
        q.set_config(QueueName::Extract, custom);
        assert_eq!(q.clone().config(QueueName::Extract), custom);
        assert_eq!(q.config(QueueName::Send), QueueConfig::default());
    }
}
