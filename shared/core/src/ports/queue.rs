//! Queues and schedules. Message bodies carry keys, never patient data.

use crate::domain::{CampaignId, ChunkId, OdsCode};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One queue per asynchronous step; each has a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    Notices,
    Extract,
    Send,
    Writeback,
    Letters,
    Purge,
}

impl QueueName {
    pub const ALL: [QueueName; 6] = [
        Self::Notices,
        Self::Extract,
        Self::Send,
        Self::Writeback,
        Self::Letters,
        Self::Purge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notices => "notices",
            Self::Extract => "extract",
            Self::Send => "send",
            Self::Writeback => "writeback",
            Self::Letters => "letters",
            Self::Purge => "purge",
        }
    }
}

/// A queue message body. Keys only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Job {
    Notice {
        campaign: CampaignId,
        ods: OdsCode,
    },
    Extract {
        campaign: CampaignId,
        ods: OdsCode,
    },
    Send {
        campaign: CampaignId,
        chunk: ChunkId,
    },
    Writeback {
        campaign: CampaignId,
        chunk: ChunkId,
    },
    Letters {
        campaign: CampaignId,
        chunk: ChunkId,
    },
    Purge {
        campaign: CampaignId,
    },
}

impl Job {
    pub fn queue(&self) -> QueueName {
        match self {
            Self::Notice { .. } => QueueName::Notices,
            Self::Extract { .. } => QueueName::Extract,
            Self::Send { .. } => QueueName::Send,
            Self::Writeback { .. } => QueueName::Writeback,
            Self::Letters { .. } => QueueName::Letters,
            Self::Purge { .. } => QueueName::Purge,
        }
    }

    pub fn campaign(&self) -> &CampaignId {
        match self {
            Self::Notice { campaign, .. }
            | Self::Extract { campaign, .. }
            | Self::Send { campaign, .. }
            | Self::Writeback { campaign, .. }
            | Self::Letters { campaign, .. }
            | Self::Purge { campaign } => campaign,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Sending side of the queues (SQS `SendMessageBatch`, 10 per call).
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Sends every job to its own queue; on error some may have been sent
    /// (callers are idempotent, so they simply retry).
    async fn send(&self, jobs: &[Job]) -> Result<(), QueueError>;
    /// Sends jobs that become visible only after `delay`, at most
    /// [`MAX_SEND_DELAY`] (SQS `DelaySeconds`): a paused send comes back
    /// later as a new message, never counting towards its dead-lettering.
    async fn send_later(&self, jobs: &[Job], delay: std::time::Duration) -> Result<(), QueueError>;
}

/// The longest delay SQS allows on a message.
pub const MAX_SEND_DELAY: std::time::Duration = std::time::Duration::from_secs(900);

/// What a one-time schedule does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ScheduledAction {
    /// Invoke the deadline function for the campaign.
    Deadline { campaign: CampaignId },
    /// Queue the purge of the campaign (end of the receipt window).
    Purge { campaign: CampaignId },
}

impl ScheduledAction {
    /// A deterministic schedule name, so scheduling twice is idempotent.
    pub fn name(&self) -> String {
        match self {
            Self::Deadline { campaign } => format!("hub-deadline-{campaign}"),
            Self::Purge { campaign } => format!("hub-purge-{campaign}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Throttling or a transient fault: retry later.
    #[error("scheduler unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// EventBridge Scheduler one-time `at()` schedules.
#[async_trait]
pub trait Scheduler: Send + Sync {
    /// Creates or replaces the schedule for this action.
    async fn schedule(
        &self,
        action: &ScheduledAction,
        at: DateTime<Utc>,
    ) -> Result<(), SchedulerError>;
    /// Deletes it if it exists.
    async fn cancel(&self, action: &ScheduledAction) -> Result<(), SchedulerError>;
}
