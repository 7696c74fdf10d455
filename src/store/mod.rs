//! Durable message store.
//!
//! One dedicated thread owns the SQLite write connection; range reads have
//! a lane of their own (a reader thread with a read-only connection and its
//! own bounded queue), so a flood of history requests cannot delay appends.
//! Reactor shards never touch the disk: they queue requests through a cheap
//! [`StoreHandle`] and get completions back through callbacks ([`Reply`])
//! run on the store's threads, so a slow fsync can never stall an event
//! loop.

use std::path::PathBuf;
use std::time::Duration;

pub mod sqlite;

#[cfg(test)]
mod tests;

pub use sqlite::{SqliteStore, StoreHandle};

/// Completion callback. Runs on a store thread (or, for an immediate
/// rejection such as [`StoreError::Busy`], on the caller's thread), so it
/// must be quick: typically it pushes onto a shard's channel and wakes it.
pub type Reply<T> = Box<dyn FnOnce(T) + Send + 'static>;

/// One chat message as stored and replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub room: String,
    pub seq: u64,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
    pub from: String,
    pub name: String,
    /// Raw JSON text, stored and returned byte-exact (never re-serialized,
    /// so big integers keep full precision).
    pub body: String,
}

/// A room's numbering state as persisted in the `rooms` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomState {
    pub room: String,
    pub epoch: String,
    pub last_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit is reported only after the WAL is fsynced.
    Sync,
    /// `synchronous=NORMAL`: survives a process crash, may lose the last
    /// commits on power loss.
    Relaxed,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The SQLite file; parent directories are created.
    pub path: PathBuf,
    pub durability: Durability,
    /// Soft cap on messages per group commit (whole requests are never split).
    pub batch_max: usize,
    /// Longest wait for more requests once a batch has started. Zero still
    /// groups whatever queued up during the previous commit.
    pub batch_delay: Duration,
    /// Keep at most this many newest messages per room.
    pub retention_messages: Option<u64>,
    /// Drop messages whose `ts` is older than this.
    pub retention_age: Option<Duration>,
    /// How often the retention pass starts.
    pub retention_interval: Duration,
    /// Capacity of the writer's request queue (requests, not messages).
    pub queue_capacity: usize,
    /// Capacity of the read lane's queue (range reads). When it is full a
    /// read answers `Busy` at once; appends are not affected.
    pub read_queue_capacity: usize,
}

impl StoreConfig {
    /// Defaults suited to a server: durable, groups up to 4096 messages,
    /// no retention.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            durability: Durability::Sync,
            batch_max: 4096,
            batch_delay: Duration::from_millis(1),
            retention_messages: None,
            retention_age: None,
            retention_interval: Duration::from_secs(60),
            queue_capacity: 65_536,
            read_queue_capacity: 1024,
        }
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database could not be opened or written (disk full, read-only,
    /// I/O error), or the store thread has stopped. Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("out of order append for room {room}: expected seq {expected}, got {got}")]
    OutOfOrder {
        room: String,
        expected: u64,
        got: u64,
    },
    /// The request queue (the writer's, or the read lane's for a range
    /// read) is full; nothing was queued.
    #[error("store queue full")]
    Busy,
    /// The request itself is unusable (e.g. a new room without an epoch,
    /// a value that does not fit SQLite's signed 64-bit integers).
    #[error("invalid store request: {0}")]
    InvalidInput(String),
    /// The file was written by a newer schema than this binary knows.
    #[error("store schema: {0}")]
    Schema(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(format!("sqlite: {e}"))
    }
}

/// Range read over one room's stored messages. Results are always in
/// ascending `seq` order.
///
/// - `after` set (optionally with `before`): the first `limit` messages with
///   `after < seq < before`; `has_more` = more exist above them.
/// - only `before`: the latest `limit` messages with `seq < before`;
///   `has_more` = older ones exist.
/// - neither: the latest `limit` messages; `has_more` = older ones exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub after: Option<u64>,
    pub before: Option<u64>,
    pub limit: usize,
}
