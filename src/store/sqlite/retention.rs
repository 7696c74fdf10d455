//! Retention: trims old messages in small transactions between batches.

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

pub(super) struct Retention {
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
    pub(super) fn new(cfg: &StoreConfig) -> Retention {
        Retention {
            keep: cfg.retention_messages,
            age: cfg.retention_age,
            interval: cfg.retention_interval,
            next_at: Instant::now() + cfg.retention_interval,
            todo: Vec::new(),
            cutoff_ts: 0,
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.keep.is_some() || self.age.is_some()
    }

    /// True while a pass has work left (it runs in the gaps between batches).
    pub(super) fn in_pass(&self) -> bool {
        !self.todo.is_empty()
    }

    /// When the next pass is due, if passes run at all.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        self.enabled().then_some(self.next_at)
    }
}

impl Worker {
    /// Timer work between batches: starts a pass when due, and runs one
    /// chunk of the pass in progress.
    pub(super) fn retention_tick(&mut self, now: Instant) {
        if self.retention.enabled() && !self.retention.in_pass() && now >= self.retention.next_at {
            self.start_retention_pass();
            self.retention.next_at = now + self.retention.interval;
        }
        if self.retention.in_pass() {
            if let Err(e) = self.retention_chunk() {
                tracing::warn!(error = %e, "retention step failed");
            }
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

    pub(super) fn retention_full_pass(&mut self) -> Result<u64, StoreError> {
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
}
