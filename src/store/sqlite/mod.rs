//! SQLite implementation of the store, WAL journal, in lanes:
//!
//! - [`writer`]: the store thread, the only writer: appends with group
//!   commit, read markers, retention ([`retention`]), failure and recovery;
//! - [`reader`]: range reads on their own thread, read-only connection and
//!   bounded queue, so a flood of history requests cannot delay an ack;
//! - [`checkpoint`]: WAL checkpoints off the writer's path;
//! - [`schema`]: opening, pragmas, migrations.
//!
//! This file holds the handles and the requests they queue.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Sender, TrySendError};

use super::{RangeQuery, Reply, RoomState, StoreConfig, StoreError, StoredMessage};

mod checkpoint;
mod reader;
mod retention;
mod schema;
mod writer;

use checkpoint::Checkpointer;
use reader::{RangeReq, ReadRequest, Reader};
use writer::Worker;

/// State shared lock-free between the store thread and every handle.
struct Shared {
    available: AtomicBool,
    /// Messages queued but not yet answered.
    queued: AtomicUsize,
    /// Successful group commits (metric).
    commits: AtomicU64,
    /// Unix time (ms) of the last successful group commit; 0: none yet.
    last_commit_ms: AtomicU64,
}

/// Owns the store thread. Keep it in `main` and call [`SqliteStore::shutdown`]
/// on SIGTERM. If it is dropped instead, the thread keeps serving the
/// remaining handles and exits (after flushing) when the last one is dropped.
pub struct SqliteStore {
    tx: Sender<Request>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), StoreError>>>,
}

/// Cheap to clone; every shard holds one. No method blocks except the
/// `*_for_test` hooks.
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Request>,
    /// The read lane: range reads never wait behind appends.
    read_tx: Sender<ReadRequest>,
    shared: Arc<Shared>,
}

enum Request {
    Append(AppendReq),
    SetRead {
        user: String,
        room: String,
        seq: u64,
    },
    SetListed {
        user: String,
        room: String,
        listed: bool,
    },
    LoadRooms(Sender<Result<Vec<RoomState>, StoreError>>),
    LoadReadMarkers(Sender<Result<Vec<ReadMarker>, StoreError>>),
    MaxPageCount(u64, Sender<Result<u64, StoreError>>),
    Retention(Sender<Result<u64, StoreError>>),
    Shutdown,
}

/// (user, room, seq, listed)
pub type ReadMarker = (String, String, u64, bool);

type AppendResults = Vec<Result<(), StoreError>>;

fn stopped() -> StoreError {
    StoreError::Unavailable("store stopped".into())
}

/// Why a queue refused a request: full (`Busy`) or its thread is gone.
fn refused<T>(e: &TrySendError<T>) -> StoreError {
    if e.is_full() {
        StoreError::Busy
    } else {
        stopped()
    }
}

/// Runs a reply without letting a panicking callback kill the store thread.
fn call_reply<T>(reply: Reply<T>, value: T) {
    if catch_unwind(AssertUnwindSafe(move || reply(value))).is_err() {
        tracing::error!("store reply callback panicked");
    }
}

/// An append in flight. Dropping it unanswered (queue torn down, thread
/// died) still answers `Unavailable`, so no shard waits forever.
struct AppendReq {
    msgs: Vec<StoredMessage>,
    epochs: Vec<(String, String)>,
    reply: Option<Reply<AppendResults>>,
    shared: Arc<Shared>,
}

impl AppendReq {
    fn finish(&mut self, results: AppendResults) {
        if let Some(reply) = self.reply.take() {
            self.shared
                .queued
                .fetch_sub(self.msgs.len(), Ordering::Relaxed);
            call_reply(reply, results);
        }
    }

    fn fail_all(&mut self, err: StoreError) {
        let n = self.msgs.len();
        self.finish(vec![Err(err); n]);
    }

    fn epoch_for(&self, room: &str) -> Option<&str> {
        self.epochs
            .iter()
            .find(|(r, _)| r == room)
            .map(|(_, e)| e.as_str())
    }
}

impl Drop for AppendReq {
    fn drop(&mut self) {
        if self.reply.is_some() {
            self.fail_all(stopped());
        }
    }
}

impl SqliteStore {
    /// Opens/creates the file (creating parent dirs), applies migrations,
    /// spawns the store thread.
    pub fn open(cfg: StoreConfig) -> Result<(SqliteStore, StoreHandle), StoreError> {
        let conn = schema::open_writer(&cfg)?;
        let checkpointer = Checkpointer::start(&cfg)?;
        let shared = Arc::new(Shared {
            available: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            last_commit_ms: AtomicU64::new(0),
        });
        // A zero-capacity crossbeam channel is a rendezvous: every try_send
        // would fail, so keep at least one slot.
        let (tx, rx) = bounded(cfg.queue_capacity.max(1));
        let (reader, read_tx) = Reader::start(&cfg)?;
        let worker = Worker::new(&cfg, conn, rx, Arc::clone(&shared), checkpointer, reader)?;
        let thread = std::thread::Builder::new()
            .name("corechat-store".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::Unavailable(format!("spawn store thread: {e}")))?;
        let handle = StoreHandle {
            tx: tx.clone(),
            read_tx,
            shared: Arc::clone(&shared),
        };
        Ok((
            SqliteStore {
                tx,
                shared,
                thread: Some(thread),
            },
            handle,
        ))
    }

    /// Synchronous, at start-up only: every room's epoch and last seq.
    pub fn load_rooms(&self) -> Result<Vec<RoomState>, StoreError> {
        self.ask(Request::LoadRooms)
    }

    /// Synchronous, at start-up only: all read markers (user, room, seq,
    /// listed). What bounds it: the retention pass deletes the rows that
    /// carry nothing (unlisted, in a room that never had a message), so it
    /// holds each user's rooms list plus read positions in rooms with
    /// history, not every room name ever joined and left.
    pub fn load_read_markers(&self) -> Result<Vec<ReadMarker>, StoreError> {
        self.ask(Request::LoadReadMarkers)
    }

    /// Same as [`StoreHandle::is_available`].
    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Relaxed)
    }

    /// Flushes every pending batch, then stops and joins the thread. Every
    /// queued append is answered before this returns. Err if the final
    /// flush failed (those appends were answered with Err, never Ok).
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Blocking send is fine here: the thread is draining the queue.
        let _ = self.tx.send(Request::Shutdown);
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable("store thread panicked".into())),
        }
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        ask(&self.tx, make)
    }
}

/// Sends a request and blocks for its answer (start-up and test paths only).
fn ask<T>(
    tx: &Sender<Request>,
    make: impl FnOnce(Sender<Result<T, StoreError>>) -> Request,
) -> Result<T, StoreError> {
    let (atx, arx) = bounded(1);
    tx.send(make(atx)).map_err(|_| stopped())?;
    arx.recv().map_err(|_| stopped())?
}

impl StoreHandle {
    /// Queues an append of messages (in seq order per room). `epochs` gives
    /// the epoch of each room appearing, used only to create the room row on
    /// its first write. Never blocks: a full queue answers `Err(Busy)` for
    /// every message at once, on the caller's thread. Otherwise `reply` runs
    /// on the store thread after the group commit containing these messages
    /// committed (Ok) or failed (Err(Unavailable)); results are aligned with
    /// `msgs`. A message whose seq is not the room's last committed seq + 1
    /// gets `OutOfOrder` (the rest of the request is still written).
    pub fn append(
        &self,
        msgs: Vec<StoredMessage>,
        epochs: Vec<(String, String)>,
        reply: Reply<Vec<Result<(), StoreError>>>,
    ) {
        if msgs.is_empty() {
            reply(Vec::new());
            return;
        }
        self.shared.queued.fetch_add(msgs.len(), Ordering::Relaxed);
        let req = AppendReq {
            msgs,
            epochs,
            reply: Some(reply),
            shared: Arc::clone(&self.shared),
        };
        if let Err(e) = self.tx.try_send(Request::Append(req)) {
            let err = refused(&e);
            if let Request::Append(mut req) = e.into_inner() {
                req.fail_all(err);
            }
        }
    }

    /// Range read for history/resume, answered through `reply` on the
    /// store's reader thread, which has its own connection and its own
    /// bounded queue, so reads never delay appends (nor appends reads).
    /// Sees committed messages only: appends still waiting for their group
    /// commit are not included. A full read queue answers `Err(Busy)` at
    /// once on the caller's thread.
    pub fn range(
        &self,
        room: String,
        q: RangeQuery,
        reply: Reply<Result<(Vec<StoredMessage>, bool), StoreError>>,
    ) {
        let req = RangeReq::new(room, q, reply);
        if let Err(e) = self.read_tx.try_send(ReadRequest::Range(req)) {
            let err = refused(&e);
            if let ReadRequest::Range(mut req) = e.into_inner() {
                req.finish(Err(err));
            }
        }
    }

    /// Fire-and-forget read marker upsert (user, room) -> seq, written with
    /// the next batch; the stored value only ever grows. Dropped when the
    /// queue is full (markers are advisory).
    pub fn set_read(&self, user: String, room: String, seq: u64) {
        self.send_advisory(Request::SetRead { user, room, seq }, "read marker");
    }

    /// Fire-and-forget: (user, room) joins (`true`) or leaves (`false`) the
    /// user's `rooms` list, so the list survives a restart. Written with the
    /// next batch; dropped like a read marker when the queue is full.
    pub fn set_listed(&self, user: String, room: String, listed: bool) {
        self.send_advisory(Request::SetListed { user, room, listed }, "room listing");
    }

    /// Queues a write that may be lost without harm; never blocks.
    fn send_advisory(&self, req: Request, what: &str) {
        if self.tx.try_send(req).is_err() {
            tracing::debug!("store queue full or stopped, {what} dropped");
        }
    }

    /// True while writes succeed; false after a failed commit until a later
    /// write or the periodic probe succeeds, and after the thread stopped.
    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Relaxed)
    }

    /// Messages queued for append but not yet answered (metric).
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Successful group commits since open (metric).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Unix time (ms) of the last successful group commit, if any.
    pub fn last_commit_unix_ms(&self) -> Option<u64> {
        let ms = self.shared.last_commit_ms.load(Ordering::Relaxed);
        (ms > 0).then_some(ms)
    }

    /// Test/admin hook, blocking: sets `PRAGMA max_page_count` (SQLite never
    /// goes below the current size, so a small value freezes the file at its
    /// current size and the next growth fails with SQLITE_FULL, like a full
    /// disk). Returns the effective limit.
    pub fn set_max_page_count_for_test(&self, pages: u64) -> Result<u64, StoreError> {
        ask(&self.tx, |atx| Request::MaxPageCount(pages, atx))
    }

    /// Test/admin hook, blocking: runs a whole retention pass now, the
    /// read-marker sweep included. Returns the number of messages deleted.
    pub fn run_retention_for_test(&self) -> Result<u64, StoreError> {
        ask(&self.tx, Request::Retention)
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::InvalidInput(format!("{what} {v} out of range")))
}

fn from_i64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Unavailable(format!("corrupt store: negative {what}")))
}

/// Saturating conversion for query bounds: anything past i64::MAX behaves
/// like "no bound", which is what u64 bounds that large mean.
fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
