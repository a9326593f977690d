//! Embedded adapters: SQLite store, durable local queue, timer scheduler.
//! Simulators: GP estate and SMS/email/letter gateway.

mod db;
mod partitions;
mod queue;
mod scheduler;
mod sqlite;

pub use partitions::PartitionLimits;
pub use queue::{LocalQueue, QueueConfig, ReceivedMessage};
pub use scheduler::LocalScheduler;
pub use sqlite::SqliteStore;
