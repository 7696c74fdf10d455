//! Retention: trims old messages, then sweeps stale read-marker rows, in
//! small transactions between batches.

use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::writer::Worker;
use super::{bound, from_i64, now_ms};
use crate::store::{StoreConfig, StoreError};

/// Rooms per retention transaction; small so appends never wait long.
const RETENTION_CHUNK: usize = 256;
const SQL_DELETE_UPTO: &str = "DELETE FROM messages WHERE room = ?1 AND seq <= ?2";
const SQL_FIRST_YOUNG: &str = "SELECT seq FROM messages
     WHERE room = ?1 AND seq > ?2 AND ts >= ?3 ORDER BY seq ASC LIMIT 1";
/// Read-marker rows visited per sweep transaction.
const MARKER_CHUNK: i64 = 1024;
/// The next `?1` marker rows in key order, each with whether it is stale:
/// unlisted, and its room has no row (see [`Worker::sweep_markers_chunk`]).
const SQL_MARKERS_FROM: &str = "SELECT m.user, m.room,
       m.listed = 0 AND NOT EXISTS (SELECT 1 FROM rooms r WHERE r.room = m.room)
     FROM read_markers m";
const SQL_MARKERS_ORDER: &str = "ORDER BY m.user, m.room LIMIT ?1";
const SQL_DELETE_MARKER: &str = "DELETE FROM read_markers WHERE user = ?1 AND room = ?2";

/// Where the read-marker sweep of the current pass stands.
#[derive(Clone, PartialEq, Eq)]
enum MarkerSweep {
    Idle,
    Start,
    /// Resume after this (user, room) key.
    After(String, String),
}

pub(super) struct Retention {
    keep: Option<u64>,
    age: Option<Duration>,
    interval: Duration,
    next_at: Instant,
    /// Rooms still to visit in the current pass.
    todo: Vec<String>,
    /// `ts` below which messages expire, fixed for the whole pass.
    cutoff_ts: u64,
    /// The marker sweep runs after the pass's rooms are done.
    markers: MarkerSweep,
}

impl Retention {
    pub(super) fn new(cfg: &StoreConfig) -> Retention {
        Retention {
            keep: cfg.retention_messages,
            age: cfg.retention_age,
            interval: cfg.retention_interval,
            next_at: Instant::now() + cfg.retention_interval,
            todo: Vec::new(),
            cutoff_ts: 0,
            markers: MarkerSweep::Idle,
        }
    }

    /// Whether passes trim messages (the marker sweep always runs).
    fn trims_messages(&self) -> bool {
        self.keep.is_some() || self.age.is_some()
    }

    /// True while a pass has work left (it runs in the gaps between batches).
    pub(super) fn in_pass(&self) -> bool {
        !self.todo.is_empty() || self.markers != MarkerSweep::Idle
    }

    /// When the next pass is due.
    pub(super) fn wake_at(&self) -> Instant {
        self.next_at
    }
}

impl Worker {
    /// Timer work between batches: starts a pass when due, and runs one
    /// chunk of the pass in progress.
    pub(super) fn retention_tick(&mut self, now: Instant) {
        if !self.retention.in_pass() && now >= self.retention.next_at {
            self.start_retention_pass();
            self.retention.next_at = now + self.retention.interval;
        }
        if self.retention.in_pass() {
            if let Err(e) = self.retention_step() {
                tracing::warn!(error = %e, "retention step failed");
            }
        }
    }

    /// One transaction of the pass in progress: a chunk of rooms, or once
    /// they are done, a chunk of the marker sweep. Returns the messages
    /// deleted.
    fn retention_step(&mut self) -> Result<u64, StoreError> {
        if !self.retention.todo.is_empty() {
            return self.retention_chunk();
        }
        if let Err(e) = self.sweep_markers_chunk() {
            // Not retried in a loop: the next pass starts over.
            self.retention.markers = MarkerSweep::Idle;
            return Err(e);
        }
        Ok(0)
    }

    fn start_retention_pass(&mut self) {
        let age_ms = self
            .retention
            .age
            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
        self.retention.cutoff_ts = age_ms.map_or(0, |a| now_ms().saturating_sub(a));
        if self.retention.trims_messages() {
            self.retention.todo = self
                .rooms
                .iter()
                .filter(|(_, i)| i.low_water < i.last_seq)
                .map(|(r, _)| r.clone())
                .collect();
        }
        self.retention.markers = MarkerSweep::Start;
    }

    /// A whole pass now (test/admin hook). Returns the messages deleted.
    pub(super) fn retention_full_pass(&mut self) -> Result<u64, StoreError> {
        self.start_retention_pass();
        let mut deleted = 0;
        while self.retention.in_pass() {
            deleted += self.retention_step()?;
        }
        Ok(deleted)
    }

    /// Visits up to MARKER_CHUNK read-marker rows in one transaction and
    /// deletes the stale ones: unlisted (the user left the room) and whose
    /// room has no row, i.e. it never had a committed message (room rows
    /// are never deleted; a room row appears with the first message, and a
    /// marker's seq is only ever set to a committed message's). Such a row
    /// says nothing that its absence does not. Listed rows stay even then:
    /// they are the user's `rooms` list, which must survive a restart for a
    /// room nobody has posted in yet.
    ///
    /// This is what bounds the marker preload at start-up
    /// ([`super::SqliteStore::load_read_markers`]): it holds the listed
    /// rows (each user's rooms list) and the read positions in rooms that
    /// have history, not every room name a user ever joined and left.
    fn sweep_markers_chunk(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut visited = 0;
        let mut last = None;
        let mut stale = Vec::new();
        {
            let mut stmt;
            let mut rows = match &self.retention.markers {
                MarkerSweep::Idle => return Ok(()),
                MarkerSweep::Start => {
                    stmt = tx.prepare_cached(&format!("{SQL_MARKERS_FROM} {SQL_MARKERS_ORDER}"))?;
                    stmt.query(params![MARKER_CHUNK])?
                }
                MarkerSweep::After(user, room) => {
                    stmt = tx.prepare_cached(&format!(
                        "{SQL_MARKERS_FROM} WHERE (m.user, m.room) > (?2, ?3) {SQL_MARKERS_ORDER}"
                    ))?;
                    stmt.query(params![MARKER_CHUNK, user, room])?
                }
            };
            while let Some(row) = rows.next()? {
                let key: (String, String) = (row.get(0)?, row.get(1)?);
                if row.get::<_, bool>(2)? {
                    stale.push(key.clone());
                }
                last = Some(key);
                visited += 1;
            }
        }
        {
            let mut delete = tx.prepare_cached(SQL_DELETE_MARKER)?;
            for (user, room) in &stale {
                delete.execute(params![user, room])?;
            }
        }
        tx.commit()?;
        self.retention.markers = match last {
            Some((user, room)) if visited >= MARKER_CHUNK => MarkerSweep::After(user, room),
            _ => MarkerSweep::Idle,
        };
        if !stale.is_empty() {
            self.nudge_checkpointer();
            tracing::debug!(
                deleted = stale.len(),
                "retention removed stale read markers"
            );
        }
        Ok(())
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
}
