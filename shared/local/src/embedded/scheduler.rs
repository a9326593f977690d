//! One-time schedules, durable in SQLite, like EventBridge Scheduler `at()`
//! schedules with `ActionAfterCompletion: DELETE`. The local stack polls
//! [`LocalScheduler::due`] and runs what it returns.

use super::db::{from_json, from_millis, millis, to_json, Db, DbError, SqlContext};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hub_core::ports::{ScheduledAction, Scheduler, SchedulerError};
use rusqlite::{params, TransactionBehavior};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS scheduler_schedules (
    name TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scheduler_schedules_by_time ON scheduler_schedules (at, name);
";

/// The embedded `Scheduler`. Clones share one connection.
#[derive(Debug, Clone)]
pub struct LocalScheduler {
    db: Db,
}

impl LocalScheduler {
    /// Opens (or creates) the schedule database file; may be the store's file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::open(path, SCHEMA)?,
        })
    }

    pub fn in_memory() -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::in_memory(SCHEMA)?,
        })
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

    /// Removes and returns the schedules whose time is at or before `now`,
    /// earliest first. Removal is the completion: a caller that fails to run
    /// an action should schedule it again.
    pub async fn due(&self, now: DateTime<Utc>) -> Result<Vec<ScheduledAction>, SchedulerError> {
        let now = millis(now);
        self.db
            .call(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .op("due schedules: begin")?;
                let actions: Vec<String> = tx
                    .prepare_cached(
                        "SELECT action FROM scheduler_schedules WHERE at <= ?1 ORDER BY at, name",
                    )
                    .and_then(|mut s| s.query_map([now], |row| row.get(0))?.collect())
                    .op("due schedules")?;
                tx.prepare_cached("DELETE FROM scheduler_schedules WHERE at <= ?1")
                    .and_then(|mut s| s.execute([now]))
                    .op("due schedules")?;
                let actions = actions
                    .iter()
                    .map(|a| from_json("scheduled action", a))
                    .collect::<Result<Vec<_>, DbError>>()?;
                tx.commit().op("due schedules: commit")?;
                Ok(actions)
            })
            .await
    }

    /// Every schedule not yet due, earliest first.
    pub async fn pending(&self) -> Result<Vec<(ScheduledAction, DateTime<Utc>)>, SchedulerError> {
        self.db
            .call(|conn| {
                let rows: Vec<(String, i64)> = conn
                    .prepare_cached("SELECT action, at FROM scheduler_schedules ORDER BY at, name")
                    .and_then(|mut s| {
                        s.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                            .collect()
                    })
                    .op("pending schedules")?;
                let pending = rows
                    .iter()
                    .map(|(action, at)| {
                        Ok((from_json("scheduled action", action)?, from_millis(*at)?))
                    })
                    .collect::<Result<Vec<_>, DbError>>()?;
                Ok(pending)
            })
            .await
    }
}

#[async_trait]
impl Scheduler for LocalScheduler {
    async fn schedule(
        &self,
        action: &ScheduledAction,
        at: DateTime<Utc>,
    ) -> Result<(), SchedulerError> {
        let name = action.name();
        let data = to_json("scheduled action", action)?;
        let at = millis(at);
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO scheduler_schedules (name, action, at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET action = excluded.action, at = excluded.at",
                )
                .and_then(|mut s| s.execute(params![name, data, at]))
                .op("schedule")?;
                Ok(())
            })
            .await
    }

    async fn cancel(&self, action: &ScheduledAction) -> Result<(), SchedulerError> {
        let name = action.name();
        self.db
            .call(move |conn| {
                conn.prepare_cached("DELETE FROM scheduler_schedules WHERE name = ?1")
                    .and_then(|mut s| s.execute([name]))
                    .op("cancel schedule")?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::domain::CampaignId;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000 + seconds, 0).unwrap()
    }

    #[tokio::test]
    async fn scheduling_again_replaces_the_schedule() {
        let s = LocalScheduler::in_memory().unwrap();
        let deadline = ScheduledAction::Deadline {
            campaign: CampaignId::new(),
        };
        s.schedule(&deadline, t(100)).await.unwrap();
        s.schedule(&deadline, t(50)).await.unwrap();
        assert_eq!(s.pending().await.unwrap(), vec![(deadline.clone(), t(50))]);
        assert!(s.due(t(49)).await.unwrap().is_empty());
        assert_eq!(s.due(t(50)).await.unwrap(), vec![deadline]);
    }

    #[tokio::test]
    async fn cancel_deletes_only_that_schedule() {
        let s = LocalScheduler::in_memory().unwrap();
        let campaign = CampaignId::new();
        let deadline = ScheduledAction::Deadline {
            campaign: campaign.clone(),
        };
        let purge = ScheduledAction::Purge { campaign };
        s.schedule(&deadline, t(10)).await.unwrap();
        s.schedule(&purge, t(20)).await.unwrap();
        s.cancel(&deadline).await.unwrap();
        s.cancel(&deadline).await.unwrap(); // absent: fine
        assert_eq!(s.pending().await.unwrap(), vec![(purge.clone(), t(20))]);
        assert_eq!(s.due(t(100)).await.unwrap(), vec![purge]);
    }

    #[tokio::test]
    async fn due_returns_in_time_order_and_removes() {
        let s = LocalScheduler::in_memory().unwrap();
        let actions: Vec<_> = (0..3)
            .map(|_| ScheduledAction::Deadline {
                campaign: CampaignId::new(),
            })
            .collect();
        s.schedule(&actions[0], t(30)).await.unwrap();
        s.schedule(&actions[1], t(10)).await.unwrap();
        s.schedule(&actions[2], t(60)).await.unwrap();
        assert_eq!(
            s.due(t(30)).await.unwrap(),
            vec![actions[1].clone(), actions[0].clone()]
        );
        assert!(s.due(t(30)).await.unwrap().is_empty(), "fired once");
        assert_eq!(
            s.pending().await.unwrap(),
            vec![(actions[2].clone(), t(60))]
        );
    }

    #[tokio::test]
    async fn schedules_survive_reopening_and_share_a_file_with_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let deadline = ScheduledAction::Deadline {
            campaign: CampaignId::new(),
        };
        {
            let s = LocalScheduler::open(&path).unwrap();
            s.schedule(&deadline, t(5)).await.unwrap();
        }
        // Same file as the queue and the store: separate tables.
        let _queue = crate::embedded::LocalQueue::open(&path).unwrap();
        let _store = crate::embedded::SqliteStore::open(&path).unwrap();
        let s = LocalScheduler::open(&path).unwrap();
        assert_eq!(s.pending().await.unwrap(), vec![(deadline.clone(), t(5))]);
        assert_eq!(s.due(t(5)).await.unwrap(), vec![deadline]);
    }
}
