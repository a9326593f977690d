//! The SQLite plumbing shared by the embedded store, queue and scheduler:
//! opening a connection, running work off the async runtime, and turning
//! errors into port errors without leaking record contents.

use chrono::{DateTime, Utc};
use hub_core::ports::{QueueError, SchedulerError, StoreError};
use rusqlite::{Connection, ErrorCode};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a writer waits for another connection's lock before the call
/// fails with `Unavailable` (the caller then retries the whole message).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Enough for every distinct statement of one adapter, so none is re-prepared.
const STATEMENT_CACHE: usize = 64;

/// An error from the database layer, before it becomes a port error.
#[derive(Debug)]
pub(super) enum DbError {
    /// SQLITE_BUSY / SQLITE_LOCKED: transient, retry.
    Busy(&'static str),
    Other(anyhow::Error),
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Busy(op) => StoreError::unavailable(format!("{op}: database busy")),
            DbError::Other(e) => StoreError::Unexpected(e),
        }
    }
}

impl From<DbError> for SchedulerError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Busy(op) => SchedulerError::Unavailable(format!("{op}: database busy")),
            DbError::Other(e) => SchedulerError::Unexpected(e),
        }
    }
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Busy(op) => QueueError::Unavailable(format!("{op}: database busy")),
            DbError::Other(e) => QueueError::Unexpected(e),
        }
    }
}

/// Attaches the operation name to a rusqlite error and classifies it.
/// rusqlite's messages name tables and columns, never bound values.
pub(super) trait SqlContext<T> {
    fn op(self, op: &'static str) -> Result<T, DbError>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn op(self, op: &'static str) -> Result<T, DbError> {
        self.map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => DbError::Busy(op),
            _ => DbError::Other(anyhow::Error::new(e).context(op)),
        })
    }
}

/// Serialises a record for a JSON column.
pub(super) fn to_json<T: Serialize>(kind: &'static str, value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| {
        // serde messages can quote values; keep only where it failed.
        DbError::Other(anyhow::anyhow!(
            "could not encode {kind} record ({:?})",
            e.classify()
        ))
    })
}

/// Parses a record from a JSON column.
pub(super) fn from_json<T: DeserializeOwned>(kind: &'static str, text: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| {
        // serde messages can quote the offending value (patient data): report
        // only the position.
        DbError::Other(anyhow::anyhow!(
            "stored {kind} record is not valid ({:?} at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

pub(super) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(super) fn from_millis(ms: i64) -> Result<DateTime<Utc>, DbError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| DbError::Other(anyhow::anyhow!("stored timestamp {ms} is out of range")))
}

/// One SQLite connection shared by the clones of an adapter.
#[derive(Clone)]
pub(super) struct Db {
    conn: Arc<Mutex<Connection>>,
    /// Calls run on the caller's thread instead of the blocking pool.
    inline: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (or creates) a database file: WAL so readers never block the
    /// writer, `synchronous=NORMAL` (durable at each checkpoint, safe against
    /// corruption), and a busy timeout so several connections can share it.
    pub(super) fn open(path: &Path, schema: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let conn = Connection::open(path)
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "SQLite database {} refused WAL mode ({mode})",
            path.display()
        );
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn, schema)
    }

    pub(super) fn in_memory(schema: &str) -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?, schema)
    }

    fn init(conn: Connection, schema: &str) -> anyhow::Result<Self> {
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // 32 MiB page cache: the 2M-patient demo keeps its indexes hot.
        conn.pragma_update(None, "cache_size", -32_768)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(schema)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            inline: false,
        })
    }

    /// Never waits for the disk (`synchronous=OFF`): for a throwaway
    /// database (a demo's or benchmark's temporary file), which a crash of
    /// the process or the machine may leave corrupt. In WAL mode even
    /// `NORMAL` syncs at every checkpoint, and millions of small
    /// transactions checkpoint often.
    pub(super) fn without_fsync(self) -> anyhow::Result<Self> {
        lock(&self.conn).pragma_update(None, "synchronous", "OFF")?;
        Ok(self)
    }

    /// Runs every call inline on the calling thread. For a current-thread
    /// runtime with paused time (the virtual-time scenario): while a call
    /// runs the runtime is busy, so tokio cannot move the clock on, and no
    /// thread hop is paid per call. Never holds the connection across an
    /// await, so tasks on one thread cannot deadlock on it.
    pub(super) fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Runs `work` on the blocking pool with the connection locked, so the
    /// async runtime never waits on SQLite (or inline, see [`Db::inline`]).
    pub(super) async fn call<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        if self.inline {
            // As the blocking pool would: a panic becomes an error, never
            // with its payload (it may quote a record).
            let conn = &self.conn;
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                work(&mut lock(conn))
            }))
            .unwrap_or_else(|_| {
                Err(E::from(DbError::Other(anyhow::anyhow!(
                    "database task panicked"
                ))))
            });
        }
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || work(&mut lock(&conn)))
            .await
            .map_err(|e| {
                // The JoinError's message may carry a panic payload; say only what happened.
                let what = if e.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                };
                E::from(DbError::Other(anyhow::anyhow!("database task {what}")))
            })?
    }
}

/// Locks the connection. A poisoned mutex is recovered rather than
/// propagated: a panic inside a call unwinds through rusqlite's
/// `Transaction`, whose drop rolls back, so the connection is consistent.
fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}
