//! The read lane: range reads (history, resume) on their own thread with a
//! read-only connection and a bounded queue of their own. WAL lets this
//! connection read while the writer commits; each query is its own read
//! transaction, so it sees exactly what was committed when it started.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags};

use super::{bound, call_reply, from_i64, stopped, ReadMarker};
use crate::store::{RangeQuery, Reply, StoreConfig, StoreError, StoredMessage};

pub(super) type RangeResult = Result<(Vec<StoredMessage>, bool), StoreError>;

const SQL_RANGE_UP: &str = "SELECT seq, ts, sender, name, body FROM messages
     WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4";
const SQL_RANGE_DOWN: &str = "SELECT seq, ts, sender, name, body FROM messages
     WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";

/// Every read marker (user, room, seq, listed).
pub(super) fn read_markers(conn: &Connection) -> Result<Vec<ReadMarker>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT user, room, seq, listed FROM read_markers")?;
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

/// One range read (see [`RangeQuery`]); sees committed rows only.
pub(super) fn query_range(conn: &Connection, room: &str, q: RangeQuery) -> RangeResult {
    // One extra row tells whether more exist in the read direction.
    let fetch = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
    let before = q.before.map_or(i64::MAX, bound);
    let mut out = Vec::new();
    let ascending = q.after.is_some();
    {
        let mut stmt;
        let mut rows = match q.after {
            Some(after) => {
                stmt = conn.prepare_cached(SQL_RANGE_UP)?;
                stmt.query(params![room, bound(after), before, fetch])?
            }
            None => {
                stmt = conn.prepare_cached(SQL_RANGE_DOWN)?;
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

pub(super) enum ReadRequest {
    Range(RangeReq),
    /// Sent by the writer when it stops: answer what is queued, then exit.
    Stop,
}

/// A range read in flight. Dropping it unanswered still answers
/// `Unavailable`, so no shard waits forever.
pub(super) struct RangeReq {
    room: String,
    q: RangeQuery,
    reply: Option<Reply<RangeResult>>,
}

impl RangeReq {
    pub(super) fn new(room: String, q: RangeQuery, reply: Reply<RangeResult>) -> RangeReq {
        RangeReq {
            room,
            q,
            reply: Some(reply),
        }
    }

    pub(super) fn finish(&mut self, result: RangeResult) {
        if let Some(reply) = self.reply.take() {
            call_reply(reply, result);
        }
    }

    fn serve(mut self, conn: &Connection) {
        let result = query_range(conn, &self.room, self.q);
        self.finish(result);
    }
}

impl Drop for RangeReq {
    fn drop(&mut self) {
        self.finish(Err(stopped()));
    }
}

/// The reader thread, owned by the writer: the writer stops it before its
/// own last close, so the writer's connection is the last one and can
/// checkpoint and remove the WAL (a read-only connection cannot).
pub(super) struct Reader {
    tx: Sender<ReadRequest>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Opens the read-only connection (the file must exist and be migrated)
    /// and starts the thread. Returns the sender the handles use.
    pub(super) fn start(cfg: &StoreConfig) -> Result<(Reader, Sender<ReadRequest>), StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&cfg.path, flags)
            .map_err(|e| StoreError::Unavailable(format!("open {}: {e}", cfg.path.display())))?;
        // Readers wait only while the WAL index is rebuilt, or on an
        // operator's exclusive lock.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA cache_size = -16384;")?;
        // A zero-capacity channel would refuse every try_send.
        let (tx, rx) = bounded(cfg.read_queue_capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("corechat-store-read".into())
            .spawn(move || read_loop(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("spawn reader thread: {e}")))?;
        let reader = Reader {
            tx: tx.clone(),
            thread: Some(thread),
        };
        Ok((reader, tx))
    }

    /// Answers every queued read, then joins the thread.
    pub(super) fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Blocking is fine: the thread is draining the queue.
        let _ = self.tx.send(ReadRequest::Stop);
        if thread.join().is_err() {
            tracing::error!("store reader thread panicked");
        }
    }
}

impl Drop for Reader {
    /// Also on the writer's unwinding, so the reader never outlives it.
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Runs until the writer sends `Stop` (or every sender is gone).
fn read_loop(conn: Connection, rx: Receiver<ReadRequest>) {
    while let Ok(req) = rx.recv() {
        match req {
            ReadRequest::Range(r) => r.serve(&conn),
            ReadRequest::Stop => break,
        }
    }
    // Reads queued behind the stop still get their answer; any sent after
    // the receiver is gone get `Unavailable` from the handle.
    while let Ok(req) = rx.try_recv() {
        if let ReadRequest::Range(r) = req {
            r.serve(&conn);
        }
    }
}
