//! The store thread: group commit, read-marker batching, failure and
//! recovery.
//!
//! The thread keeps every room's committed `last_seq` in memory and checks
//! each append against it, so the table can never get a gap or a duplicate,
//! even when a shard retries after a failed commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};

use super::checkpoint::Checkpointer;
use super::reader::{read_markers, Reader};
use super::retention::Retention;
use super::{bound, from_i64, to_i64, AppendReq, AppendResults, Request, Shared};
use crate::store::{RoomState, StoreConfig, StoreError};

/// How often an unavailable store retries a small write by itself, so that
/// `/ready` recovers even if the shards stop sending appends meanwhile.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The probe writes this much so that it needs fresh pages, like real
/// appends do; a tiny write could succeed on a still-full disk.
const PROBE_BYTES: i64 = 16 * 1024;

const SQL_INSERT_MESSAGE: &str =
    "INSERT INTO messages(room, seq, ts, sender, name, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SQL_UPSERT_ROOM: &str = "INSERT INTO rooms(room, epoch, last_seq) VALUES (?1, ?2, ?3)
     ON CONFLICT(room) DO UPDATE SET last_seq = excluded.last_seq";
/// ?4 NULL keeps the listing as it is (a new row is listed).
const SQL_UPSERT_MARKER: &str = "INSERT INTO read_markers(user, room, seq, listed)
     VALUES (?1, ?2, ?3, coalesce(?4, 1))
     ON CONFLICT(user, room) DO UPDATE SET seq = max(seq, excluded.seq),
     listed = coalesce(?4, listed)";

/// What the next commit writes for one (user, room).
#[derive(Default, Clone, Copy)]
struct MarkerUpdate {
    seq: u64,
    /// None: leave the listing as it is.
    listed: Option<bool>,
}
/// Per-request results and per-room state of a written (uncommitted) batch.
type Written = (Vec<AppendResults>, HashMap<String, Touched>);

pub(super) struct RoomInfo {
    epoch: String,
    pub(super) last_seq: u64,
    /// Every message with seq <= this is known to be deleted by retention
    /// (0 = unknown); lets retention skip rooms with nothing left to trim.
    pub(super) low_water: u64,
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

pub(super) struct Worker {
    pub(super) conn: Connection,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    /// Committed state only; a failed batch leaves it untouched so shards
    /// can renumber and retry.
    pub(super) rooms: HashMap<String, RoomInfo>,
    batch_max: usize,
    batch_delay: Duration,
    pub(super) retention: Retention,
    /// Read markers not yet committed; kept across a failed commit.
    pending_reads: HashMap<(String, String), MarkerUpdate>,
    checkpointer: Option<Checkpointer>,
    /// Stopped before this thread's connection closes (see [`Reader`]).
    reader: Option<Reader>,
    stopping: bool,
    /// When the store last turned unavailable (drives the probe).
    failed_at: Option<Instant>,
    last_error: Option<StoreError>,
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
    pub(super) fn new(
        cfg: &StoreConfig,
        conn: Connection,
        rx: Receiver<Request>,
        shared: Arc<Shared>,
        checkpointer: Checkpointer,
        reader: Reader,
    ) -> Result<Worker, StoreError> {
        let rooms = load_room_map(&conn)?;
        Ok(Worker {
            conn,
            rx,
            shared,
            rooms,
            batch_max: cfg.batch_max.max(1),
            batch_delay: cfg.batch_delay,
            retention: Retention::new(cfg),
            pending_reads: HashMap::new(),
            checkpointer: Some(checkpointer),
            reader: Some(reader),
            stopping: false,
            failed_at: None,
            last_error: None,
        })
    }

    pub(super) fn run(mut self) -> Result<(), StoreError> {
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
    /// retention pass has work left (it runs in the gaps).
    fn next_request(&mut self) -> Next {
        if self.retention.in_pass() {
            return match self.rx.try_recv() {
                Ok(req) => Next::Request(req),
                Err(TryRecvError::Empty) => Next::Idle,
                Err(TryRecvError::Disconnected) => Next::Closed,
            };
        }
        let mut wake = self.retention.wake_at();
        if let Some(failed) = self.failed_at {
            wake = wake.min(failed + PROBE_INTERVAL);
        }
        match self.rx.recv_deadline(wake) {
            Ok(req) => Next::Request(req),
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    /// Group commit: starting from `first`, keeps collecting until
    /// `batch_max` messages or `batch_delay`, taking read markers and
    /// control requests on the way, then writes everything in one
    /// transaction.
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
                let _ = atx.send(read_markers(&self.conn));
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
                self.shared
                    .last_commit_ms
                    .store(unix_ms_now(), Ordering::Relaxed);
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

    pub(super) fn nudge_checkpointer(&self) {
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
        self.retention_tick(now);
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
        if let Some(r) = self.reader.take() {
            r.stop();
        }
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

/// Wall-clock Unix time in ms (the store's "last commit" for operators).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
