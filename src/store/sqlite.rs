//! SQLite implementation of the store: one writer thread, group commit,
//! WAL journal.
//!
//! The thread keeps every room's committed `last_seq` in memory and checks
//! each append against it, so the table can never get a gap or a duplicate,
//! even when a shard retries after a failed commit.

use std::collections::HashMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::{Durability, RangeQuery, Reply, RoomState, StoreConfig, StoreError, StoredMessage};

/// How often an unavailable store retries a small write by itself, so that
/// `/ready` recovers even if the shards stop sending appends meanwhile.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The probe writes this much so that it needs fresh pages, like real
/// appends do; a tiny write could succeed on a still-full disk.
const PROBE_BYTES: i64 = 16 * 1024;
/// Rooms per retention transaction; small so appends never wait long.
const RETENTION_CHUNK: usize = 256;
/// Checkpoints run on their own thread, at most this often, so the writer
/// never stalls copying WAL pages into the database file; waiting lets one
/// checkpoint write a page once for many commits.
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(200);
/// Safety valve: if the WAL still grows past this many pages (the
/// checkpointer cannot keep up), the writer checkpoints by itself.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 32_768;
/// After a WAL reset the file is truncated to this size, so one burst does
/// not keep its disk space forever.
const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Schema migrations: `MIGRATIONS[i]` upgrades `user_version` i to i + 1.
/// Append new steps; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE messages(
        room   TEXT    NOT NULL,
        seq    INTEGER NOT NULL,
        ts     INTEGER NOT NULL,
        sender TEXT    NOT NULL,
        name   TEXT    NOT NULL,
        body   TEXT    NOT NULL,
        PRIMARY KEY (room, seq)
     ) WITHOUT ROWID;
     CREATE TABLE rooms(
        room     TEXT    NOT NULL PRIMARY KEY,
        epoch    TEXT    NOT NULL,
        last_seq INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE read_markers(
        user TEXT    NOT NULL,
        room TEXT    NOT NULL,
        seq  INTEGER NOT NULL,
        PRIMARY KEY (user, room)
     ) WITHOUT ROWID;
     CREATE TABLE meta(key TEXT NOT NULL PRIMARY KEY, value);",
    // v2: whether the room is in the user's `rooms` list (joined and not
    // left, or a DM), kept apart from the read position.
    "ALTER TABLE read_markers ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;",
];

const SQL_INSERT_MESSAGE: &str =
    "INSERT INTO messages(room, seq, ts, sender, name, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SQL_UPSERT_ROOM: &str = "INSERT INTO rooms(room, epoch, last_seq) VALUES (?1, ?2, ?3)
     ON CONFLICT(room) DO UPDATE SET last_seq = excluded.last_seq";
/// ?4 NULL keeps the listing as it is (a new row is listed).
const SQL_UPSERT_MARKER: &str = "INSERT INTO read_markers(user, room, seq, listed)
     VALUES (?1, ?2, ?3, coalesce(?4, 1))
     ON CONFLICT(user, room) DO UPDATE SET seq = max(seq, excluded.seq),
     listed = coalesce(?4, listed)";
const SQL_RANGE_UP: &str = "SELECT seq, ts, sender, name, body FROM messages
     WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4";
const SQL_RANGE_DOWN: &str = "SELECT seq, ts, sender, name, body FROM messages
     WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";
const SQL_DELETE_UPTO: &str = "DELETE FROM messages WHERE room = ?1 AND seq <= ?2";
const SQL_FIRST_YOUNG: &str = "SELECT seq FROM messages
     WHERE room = ?1 AND seq > ?2 AND ts >= ?3 ORDER BY seq ASC LIMIT 1";

/// State shared lock-free between the store thread and every handle.
struct Shared {
    available: AtomicBool,
    /// Messages queued but not yet answered.
    queued: AtomicUsize,
    /// Successful group commits (metric).
    commits: AtomicU64,
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
    shared: Arc<Shared>,
}

enum Request {
    Append(AppendReq),
    Range(RangeReq),
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

/// What the next commit writes for one (user, room).
#[derive(Default, Clone, Copy)]
struct MarkerUpdate {
    seq: u64,
    /// None: leave the listing as it is.
    listed: Option<bool>,
}
type AppendResults = Vec<Result<(), StoreError>>;
type RangeResult = Result<(Vec<StoredMessage>, bool), StoreError>;
/// Per-request results and per-room state of a written (uncommitted) batch.
type Written = (Vec<AppendResults>, HashMap<String, Touched>);

fn stopped() -> StoreError {
    StoreError::Unavailable("store stopped".into())
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

struct RangeReq {
    room: String,
    q: RangeQuery,
    reply: Option<Reply<RangeResult>>,
}

impl RangeReq {
    fn finish(&mut self, result: RangeResult) {
        if let Some(reply) = self.reply.take() {
            call_reply(reply, result);
        }
    }
}

impl Drop for RangeReq {
    fn drop(&mut self) {
        self.finish(Err(stopped()));
    }
}

impl SqliteStore {
    /// Opens/creates the file (creating parent dirs), applies migrations,
    /// spawns the store thread.
    pub fn open(cfg: StoreConfig) -> Result<(SqliteStore, StoreHandle), StoreError> {
        if let Some(dir) = cfg.path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("create {}: {e}", dir.display()))
                })?;
            }
        }
        let mut conn = Connection::open(&cfg.path)
            .map_err(|e| StoreError::Unavailable(format!("open {}: {e}", cfg.path.display())))?;
        configure(&conn, cfg.durability)?;
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -65536;
             PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};
             PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
        ))?;
        conn.set_prepared_statement_cache_capacity(32);
        migrate(&mut conn)?;
        let rooms = load_room_map(&conn)?;
        let checkpointer = Checkpointer::start(&cfg)?;

        let shared = Arc::new(Shared {
            available: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
        });
        // A zero-capacity crossbeam channel is a rendezvous: every try_send
        // would fail, so keep at least one slot.
        let (tx, rx) = bounded(cfg.queue_capacity.max(1));
        let worker = Worker {
            conn,
            rx,
            shared: Arc::clone(&shared),
            rooms,
            batch_max: cfg.batch_max.max(1),
            batch_delay: cfg.batch_delay,
            retention: Retention {
                keep: cfg.retention_messages,
                age: cfg.retention_age,
                interval: cfg.retention_interval,
                next_at: Instant::now() + cfg.retention_interval,
                todo: Vec::new(),
                cutoff_ts: 0,
            },
            pending_reads: HashMap::new(),
            checkpointer: Some(checkpointer),
            stopping: false,
            failed_at: None,
            last_error: None,
        };
        let thread = std::thread::Builder::new()
            .name("corechat-store".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::Unavailable(format!("spawn store thread: {e}")))?;
        let handle = StoreHandle {
            tx: tx.clone(),
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
    /// listed).
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
            let err = if e.is_full() {
                StoreError::Busy
            } else {
                stopped()
            };
            if let Request::Append(mut req) = e.into_inner() {
                req.fail_all(err);
            }
        }
    }

    /// Range read for history/resume, answered on the store thread through
    /// `reply`. Sees committed messages only: appends still waiting for their
    /// group commit are not included. A full queue answers `Err(Busy)` at
    /// once on the caller's thread.
    pub fn range(
        &self,
        room: String,
        q: RangeQuery,
        reply: Reply<Result<(Vec<StoredMessage>, bool), StoreError>>,
    ) {
        let req = RangeReq {
            room,
            q,
            reply: Some(reply),
        };
        if let Err(e) = self.tx.try_send(Request::Range(req)) {
            let err = if e.is_full() {
                StoreError::Busy
            } else {
                stopped()
            };
            if let Request::Range(mut req) = e.into_inner() {
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

    /// Test/admin hook, blocking: sets `PRAGMA max_page_count` (SQLite never
    /// goes below the current size, so a small value freezes the file at its
    /// current size and the next growth fails with SQLITE_FULL, like a full
    /// disk). Returns the effective limit.
    pub fn set_max_page_count_for_test(&self, pages: u64) -> Result<u64, StoreError> {
        ask(&self.tx, |atx| Request::MaxPageCount(pages, atx))
    }

    /// Test/admin hook, blocking: runs a whole retention pass now. Returns
    /// the number of messages deleted.
    pub fn run_retention_for_test(&self) -> Result<u64, StoreError> {
        ask(&self.tx, Request::Retention)
    }
}

fn configure(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    // Only this process's store thread writes, but an operator's sqlite3
    // shell may briefly hold a lock.
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "cannot enable WAL (journal_mode is {mode})"
        )));
    }
    let sync = match durability {
        Durability::Sync => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    // The checkpointer must sync too: with synchronous=OFF it could let
    // the WAL be reset before the copied pages are on disk.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync};
         PRAGMA temp_store = MEMORY;"
    ))?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Schema(format!(
            "database schema version {version} is newer than this server's ({known})"
        )));
    }
    for step in version..known {
        migrate_step(conn, step)?;
    }
    Ok(())
}

/// Upgrades from `from` to `from + 1` atomically, version bump included.
fn migrate_step(conn: &mut Connection, from: i64) -> Result<(), StoreError> {
    let sql = usize::try_from(from)
        .ok()
        .and_then(|i| MIGRATIONS.get(i))
        .ok_or_else(|| StoreError::Schema(format!("no migration from version {from}")))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(sql)
        .map_err(|e| StoreError::Schema(format!("migration {from} -> {}: {e}", from + 1)))?;
    tx.pragma_update(None, "user_version", from + 1)?;
    tx.commit()?;
    tracing::info!(version = from + 1, "store schema migrated");
    Ok(())
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

struct RoomInfo {
    epoch: String,
    last_seq: u64,
    /// Every message with seq <= this is known to be deleted by retention
    /// (0 = unknown); lets retention skip rooms with nothing left to trim.
    low_water: u64,
}

fn load_room_map(conn: &Connection) -> Result<HashMap<String, RoomInfo>, StoreError> {
    let mut stmt = conn.prepare("SELECT room, epoch, last_seq FROM rooms")?;
    let mut rows = stmt.query([])?;
    let mut map = HashMap::new();
    while let Some(row) = rows.next()? {
        let room: String = row.get(0)?;
        let info = RoomInfo {
            epoch: row.get(1)?,
            last_seq: from_i64(row.get(2)?, "last_seq")?,
            low_water: 0,
        };
        map.insert(room, info);
    }
    Ok(map)
}

struct Retention {
    keep: Option<u64>,
    age: Option<Duration>,
    interval: Duration,
    next_at: Instant,
    /// Rooms still to visit in the current pass.
    todo: Vec<String>,
    /// `ts` below which messages expire, fixed for the whole pass.
    cutoff_ts: u64,
}

impl Retention {
    fn enabled(&self) -> bool {
        self.keep.is_some() || self.age.is_some()
    }
}

/// Requests collected for one group commit.
#[derive(Default)]
struct Batch {
    appends: Vec<AppendReq>,
    msgs: usize,
}

/// Per-room state of a batch being written, not yet committed.
struct Touched {
    last_seq: u64,
    /// Set when the batch creates the room.
    new_epoch: Option<String>,
}

struct Worker {
    conn: Connection,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    /// Committed state only; a failed batch leaves it untouched so shards
    /// can renumber and retry.
    rooms: HashMap<String, RoomInfo>,
    batch_max: usize,
    batch_delay: Duration,
    retention: Retention,
    /// Read markers not yet committed; kept across a failed commit.
    pending_reads: HashMap<(String, String), MarkerUpdate>,
    checkpointer: Option<Checkpointer>,
    stopping: bool,
    /// When the store last turned unavailable (drives the probe).
    failed_at: Option<Instant>,
    last_error: Option<StoreError>,
}

/// Background WAL checkpointer with its own connection. A PASSIVE
/// checkpoint never blocks the writer, so commits do not pay for copying
/// pages into the main file.
struct Checkpointer {
    nudge: Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    fn start(cfg: &StoreConfig) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(&cfg.path)
            .map_err(|e| StoreError::Unavailable(format!("open {}: {e}", cfg.path.display())))?;
        configure(&conn, cfg.durability)?;
        // One slot: nudges coalesce while a checkpoint runs.
        let (nudge, rx) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("corechat-store-ckpt".into())
            .spawn(move || checkpoint_loop(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("spawn checkpointer: {e}")))?;
        Ok(Checkpointer { nudge, thread })
    }

    /// Called after each commit; never blocks.
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    fn stop(self) {
        drop(self.nudge);
        if self.thread.join().is_err() {
            tracing::error!("store checkpointer panicked");
        }
    }
}

/// Runs until the writer drops the nudge sender.
fn checkpoint_loop(conn: Connection, rx: Receiver<()>) {
    let mut failing = false;
    while rx.recv().is_ok() {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => failing = false,
            Err(e) => {
                // Disk trouble shows up in the writer's commits; log once.
                if !failing {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
                failing = true;
            }
        }
        let rest_until = Instant::now() + CHECKPOINT_PERIOD;
        loop {
            match rx.recv_deadline(rest_until) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Marks the store unavailable whenever the thread ends, even by panic.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.available.store(false, Ordering::Relaxed);
    }
}

enum Next {
    Request(Request),
    Idle,
    Closed,
}

impl Worker {
    fn run(mut self) -> Result<(), StoreError> {
        let _guard = ExitGuard(Arc::clone(&self.shared));
        while !self.stopping {
            match self.next_request() {
                Next::Request(req) => self.batch_from(req),
                Next::Idle => {}
                Next::Closed => self.stopping = true,
            }
            if !self.stopping {
                self.maintenance();
            }
        }
        self.finish()
    }

    /// Waits for work, but never past the next timer, and not at all while a
    /// retention pass has rooms left (it runs in the gaps).
    fn next_request(&mut self) -> Next {
        if !self.retention.todo.is_empty() {
            return match self.rx.try_recv() {
                Ok(req) => Next::Request(req),
                Err(TryRecvError::Empty) => Next::Idle,
                Err(TryRecvError::Disconnected) => Next::Closed,
            };
        }
        let mut wake = self.retention.enabled().then_some(self.retention.next_at);
        if let Some(failed) = self.failed_at {
            let probe = failed + PROBE_INTERVAL;
            wake = Some(wake.map_or(probe, |w| w.min(probe)));
        }
        let got = match wake {
            Some(at) => self.rx.recv_deadline(at),
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(req) => Next::Request(req),
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    /// Group commit: starting from `first`, keeps collecting until
    /// `batch_max` messages or `batch_delay`, serving reads on the way, then
    /// writes everything in one transaction.
    fn batch_from(&mut self, first: Request) {
        let mut batch = Batch::default();
        self.dispatch(first, &mut batch);
        if batch.msgs == 0 && self.pending_reads.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.batch_delay;
        while batch.msgs < self.batch_max && !self.stopping {
            match self.rx.recv_deadline(deadline) {
                Ok(req) => self.dispatch(req, &mut batch),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
        }
        self.commit(batch);
    }

    fn dispatch(&mut self, req: Request, batch: &mut Batch) {
        match req {
            Request::Append(a) => {
                batch.msgs += a.msgs.len();
                batch.appends.push(a);
            }
            Request::Range(mut r) => {
                let result = self.query_range(&r.room, r.q);
                r.finish(result);
            }
            Request::SetRead { user, room, seq } => {
                let slot = self.pending_reads.entry((user, room)).or_default();
                slot.seq = slot.seq.max(seq);
            }
            Request::SetListed { user, room, listed } => {
                self.pending_reads.entry((user, room)).or_default().listed = Some(listed);
            }
            Request::LoadRooms(atx) => {
                let _ = atx.send(Ok(self.room_states()));
            }
            Request::LoadReadMarkers(atx) => {
                let _ = atx.send(self.read_markers());
            }
            Request::MaxPageCount(pages, atx) => {
                let result = self.conn.query_row(
                    &format!("PRAGMA max_page_count = {}", bound(pages)),
                    [],
                    |r| r.get::<_, i64>(0),
                );
                let _ = atx.send(
                    result
                        .map_err(StoreError::from)
                        .and_then(|v| from_i64(v, "max_page_count")),
                );
            }
            Request::Retention(atx) => {
                // Commit what is collected first so the pass sees it.
                self.commit(std::mem::take(batch));
                let _ = atx.send(self.retention_full_pass());
            }
            Request::Shutdown => self.stopping = true,
        }
    }

    fn room_states(&self) -> Vec<RoomState> {
        self.rooms
            .iter()
            .map(|(room, info)| RoomState {
                room: room.clone(),
                epoch: info.epoch.clone(),
                last_seq: info.last_seq,
            })
            .collect()
    }

    fn read_markers(&self) -> Result<Vec<ReadMarker>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT user, room, seq, listed FROM read_markers")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push((
                row.get(0)?,
                row.get(1)?,
                from_i64(row.get(2)?, "seq")?,
                row.get::<_, i64>(3)? != 0,
            ));
        }
        Ok(out)
    }

    fn query_range(&self, room: &str, q: RangeQuery) -> RangeResult {
        if !self.rooms.contains_key(room) {
            return Ok((Vec::new(), false));
        }
        // One extra row tells whether more exist in the read direction.
        let fetch = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let before = q.before.map_or(i64::MAX, bound);
        let mut out = Vec::new();
        let ascending = q.after.is_some();
        {
            let mut stmt;
            let mut rows = match q.after {
                Some(after) => {
                    stmt = self.conn.prepare_cached(SQL_RANGE_UP)?;
                    stmt.query(params![room, bound(after), before, fetch])?
                }
                None => {
                    stmt = self.conn.prepare_cached(SQL_RANGE_DOWN)?;
                    stmt.query(params![room, before, fetch])?
                }
            };
            while let Some(row) = rows.next()? {
                out.push(StoredMessage {
                    room: room.to_owned(),
                    seq: from_i64(row.get(0)?, "seq")?,
                    ts: from_i64(row.get(1)?, "ts")?,
                    from: row.get(2)?,
                    name: row.get(3)?,
                    body: row.get(4)?,
                });
            }
        }
        let has_more = out.len() > q.limit;
        out.truncate(q.limit);
        if !ascending {
            out.reverse();
        }
        Ok((out, has_more))
    }

    fn commit(&mut self, batch: Batch) {
        if batch.appends.is_empty() && self.pending_reads.is_empty() {
            return;
        }
        let mut appends = batch.appends;
        match self.write_batch(&appends) {
            Ok((results, touched)) => {
                for (room, t) in touched {
                    match self.rooms.get_mut(&room) {
                        Some(info) => info.last_seq = t.last_seq,
                        None => {
                            let info = RoomInfo {
                                epoch: t.new_epoch.unwrap_or_default(),
                                last_seq: t.last_seq,
                                low_water: 0,
                            };
                            self.rooms.insert(room, info);
                        }
                    }
                }
                self.pending_reads.clear();
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.nudge_checkpointer();
                // Availability first, so a shard woken by the reply sees it.
                self.set_available();
                for (a, r) in appends.iter_mut().zip(results) {
                    a.finish(r);
                }
            }
            Err(e) => {
                self.set_unavailable(&e);
                for a in &mut appends {
                    a.fail_all(e.clone());
                }
            }
        }
    }

    /// Writes one batch in one transaction. The outer Err means the whole
    /// transaction failed (nothing written); per-message rejections are in
    /// the inner results.
    fn write_batch(&mut self, appends: &[AppendReq]) -> Result<Written, StoreError> {
        let rooms = &self.rooms;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut touched: HashMap<String, Touched> = HashMap::new();
        let mut results = Vec::with_capacity(appends.len());
        {
            let mut insert = tx.prepare_cached(SQL_INSERT_MESSAGE)?;
            for a in appends {
                let mut res = Vec::with_capacity(a.msgs.len());
                for m in &a.msgs {
                    let expected = match touched.get(&m.room) {
                        Some(t) => t.last_seq + 1,
                        None => rooms.get(&m.room).map_or(1, |i| i.last_seq + 1),
                    };
                    if m.seq != expected {
                        res.push(Err(StoreError::OutOfOrder {
                            room: m.room.clone(),
                            expected,
                            got: m.seq,
                        }));
                        continue;
                    }
                    let new_epoch = if rooms.contains_key(&m.room) || touched.contains_key(&m.room)
                    {
                        None
                    } else {
                        match a.epoch_for(&m.room) {
                            Some(e) => Some(e.to_owned()),
                            None => {
                                res.push(Err(StoreError::InvalidInput(format!(
                                    "no epoch given for new room {}",
                                    m.room
                                ))));
                                continue;
                            }
                        }
                    };
                    let (seq, ts) = match (to_i64(m.seq, "seq"), to_i64(m.ts, "ts")) {
                        (Ok(s), Ok(t)) => (s, t),
                        (Err(e), _) | (_, Err(e)) => {
                            res.push(Err(e));
                            continue;
                        }
                    };
                    match insert.execute(params![m.room, seq, ts, m.from, m.name, m.body]) {
                        Ok(_) => {
                            touched
                                .entry(m.room.clone())
                                .and_modify(|t| t.last_seq = m.seq)
                                .or_insert(Touched {
                                    last_seq: m.seq,
                                    new_epoch,
                                });
                            res.push(Ok(()));
                        }
                        // A row already there means rooms.last_seq lags the
                        // table (should not happen): refuse this message
                        // only, keep the batch.
                        Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                            res.push(Err(StoreError::InvalidInput(format!(
                                "message {}/{} already stored",
                                m.room, m.seq
                            ))));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                results.push(res);
            }
        }
        {
            let mut upsert = tx.prepare_cached(SQL_UPSERT_ROOM)?;
            for (room, t) in &touched {
                let epoch = match &t.new_epoch {
                    Some(e) => e.as_str(),
                    None => rooms.get(room).map_or("", |i| i.epoch.as_str()),
                };
                upsert.execute(params![room, epoch, to_i64(t.last_seq, "seq")?])?;
            }
        }
        if !self.pending_reads.is_empty() {
            let mut upsert = tx.prepare_cached(SQL_UPSERT_MARKER)?;
            for ((user, room), m) in &self.pending_reads {
                upsert.execute(params![user, room, bound(m.seq), m.listed])?;
            }
        }
        tx.commit()?;
        Ok((results, touched))
    }

    fn nudge_checkpointer(&self) {
        if let Some(c) = &self.checkpointer {
            c.nudge();
        }
    }

    fn set_available(&mut self) {
        if !self.shared.available.swap(true, Ordering::Relaxed) {
            tracing::info!("store writable again");
        }
        self.failed_at = None;
        self.last_error = None;
    }

    fn set_unavailable(&mut self, e: &StoreError) {
        if self.shared.available.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, "store commit failed, store unavailable");
        }
        self.failed_at = Some(Instant::now());
        self.last_error = Some(e.clone());
    }

    /// Timer work between batches: retention and the recovery probe.
    fn maintenance(&mut self) {
        let now = Instant::now();
        if self.retention.enabled()
            && self.retention.todo.is_empty()
            && now >= self.retention.next_at
        {
            self.start_retention_pass();
            self.retention.next_at = now + self.retention.interval;
        }
        if !self.retention.todo.is_empty() {
            if let Err(e) = self.retention_chunk() {
                tracing::warn!(error = %e, "retention step failed");
            }
        }
        if self
            .failed_at
            .is_some_and(|failed| now >= failed + PROBE_INTERVAL)
        {
            self.probe();
        }
    }

    /// An idle unavailable store checks by itself whether writes work again.
    fn probe(&mut self) {
        let result = (|| -> Result<(), StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('probe', zeroblob(?1))",
                [PROBE_BYTES],
            )?;
            tx.execute("DELETE FROM meta WHERE key = 'probe'", [])?;
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.set_available();
                // Read markers held back by the failure can go now.
                self.commit(Batch::default());
            }
            Err(e) => self.set_unavailable(&e),
        }
    }

    fn start_retention_pass(&mut self) {
        let age_ms = self
            .retention
            .age
            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
        self.retention.cutoff_ts = age_ms.map_or(0, |a| now_ms().saturating_sub(a));
        self.retention.todo = self
            .rooms
            .iter()
            .filter(|(_, i)| i.low_water < i.last_seq)
            .map(|(r, _)| r.clone())
            .collect();
    }

    fn retention_full_pass(&mut self) -> Result<u64, StoreError> {
        if !self.retention.enabled() {
            return Ok(0);
        }
        self.start_retention_pass();
        let mut deleted = 0;
        while !self.retention.todo.is_empty() {
            deleted += self.retention_chunk()?;
        }
        Ok(deleted)
    }

    /// Trims up to RETENTION_CHUNK rooms in one transaction. Rooms keep
    /// their `last_seq`, so numbering continues after everything expired.
    fn retention_chunk(&mut self) -> Result<u64, StoreError> {
        let take = self.retention.todo.len().min(RETENTION_CHUNK);
        let chunk: Vec<String> = self.retention.todo.drain(..take).collect();
        let rooms = &self.rooms;
        let keep = self.retention.keep;
        let cutoff_ts = bound(self.retention.cutoff_ts);
        let check_age = self.retention.age.is_some();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = 0u64;
        let mut lows = Vec::with_capacity(chunk.len());
        {
            let mut delete = tx.prepare_cached(SQL_DELETE_UPTO)?;
            let mut first_young = tx.prepare_cached(SQL_FIRST_YOUNG)?;
            for room in chunk {
                let Some(info) = rooms.get(&room) else {
                    continue;
                };
                let mut low = info.low_water;
                let mut upto = low;
                if let Some(keep) = keep {
                    upto = upto.max(info.last_seq.saturating_sub(keep));
                }
                if check_age {
                    // ts grows with seq within a room, so everything below
                    // the first young-enough message has expired. Scanning
                    // costs what is deleted, not the room's size.
                    let young: Option<i64> = first_young
                        .query_row(params![room, bound(upto), cutoff_ts], |r| r.get(0))
                        .optional()?;
                    upto = match young {
                        Some(s) => from_i64(s, "seq")?.saturating_sub(1).max(upto),
                        None => info.last_seq,
                    };
                }
                if upto > low {
                    deleted += delete.execute(params![room, bound(upto)])? as u64;
                    low = upto;
                }
                lows.push((room, low));
            }
        }
        tx.commit()?;
        self.nudge_checkpointer();
        for (room, low) in lows {
            if let Some(info) = self.rooms.get_mut(&room) {
                info.low_water = low;
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, "retention trimmed messages");
        }
        Ok(deleted)
    }

    /// Shutdown: commit everything still queued, answer every request, then
    /// checkpoint so the WAL does not have to be replayed at next start.
    fn finish(mut self) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        while let Ok(req) = self.rx.try_recv() {
            self.dispatch(req, &mut batch);
            if batch.msgs >= self.batch_max {
                self.commit(std::mem::take(&mut batch));
            }
        }
        self.commit(batch);
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "store checkpoint at shutdown failed");
        }
        match self.last_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
