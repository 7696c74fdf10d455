//! The part of a shard an app may touch, through `app::Port`: its
//! connections' send queues, the clock, and the outgoing bus batches.

use super::conn::{Conn, Phase};
use super::deflate::ShardDeflate;
use super::Shared;
use crate::app::Port;
use crate::bus::{ConnRef, ShardLink};
use crate::config::Config;
use crate::http::Response;
use crate::metrics::{self, DisconnectReason, ShardMetrics};
use crate::ws::{self, close_code, SharedFrame};
use bytes::Bytes;
use crossbeam_channel::TrySendError;
use mio::Waker;
use slab::Slab;
use std::collections::VecDeque;
use std::sync::Arc;

/// How long a closing connection may take to answer our close frame.
pub(super) const CLOSE_GRACE_MS: u64 = 2000;
/// Bytes a shard may hold for connections' unprocessed input (partial
/// frames, requests read before reading paused); past it, the connection
/// that would grow it is closed as overload.
pub(super) const HELD_INPUT_MAX: usize = 64 << 20;

pub struct Core<M, S> {
    pub(super) shard: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) links: Arc<[ShardLink<M>]>,
    pub(super) conns: Slab<Conn<S>>,
    pub(super) now_ms: u64,
    pub(super) metrics: Arc<ShardMetrics>,
    pub(super) registry: mio::Registry,
    pub(super) dirty: Vec<usize>,
    pub(super) outbox: Vec<Vec<M>>,
    /// Bus messages this shard sends to itself: handled in the same turn.
    pub(super) local: VecDeque<M>,
    /// Connections whose reading must resume (an async HTTP reply arrived).
    pub(super) reread: Vec<usize>,
    pub(super) next_conn_id: u64,
    /// Unsent bytes over which a connection's requests are not read.
    pub(super) pause_bytes: usize,
    /// Sum of the connections' input buffer capacities.
    pub(super) held_input: usize,
    /// Connections whose queue drained after `notify_drained`.
    pub(super) drained: Vec<usize>,
    /// Rejected upgrades are logged at most once a second per shard.
    pub(super) last_refusal_log_ms: u64,
    pub(super) refusals_unlogged: u64,
    /// permessage-deflate state shared by the shard's connections.
    pub(super) deflate: ShardDeflate,
    /// Frames queued this turn, added to `frames_out` once per turn: an
    /// atomic add per delivery is a measurable share of a 1,000-member
    /// fan-out.
    pub(super) frames_queued: u64,
    /// Connections holding deferred frames, by deadline (`--presence-flush-ms`).
    pub(super) deferred: super::deferred::DeferredQueue,
    /// The app asked to run again by this shard clock (ms); 0: no ask.
    /// Reset every turn.
    pub(super) app_wake_ms: u64,
}

/// Shortest interval between two logged upgrade refusals on a shard.
const REFUSAL_LOG_INTERVAL_MS: u64 = 1000;

impl<M, S> Core<M, S> {
    /// Logs a refused upgrade (status, reason, address; never the token),
    /// at most once a second, with how many were not logged since.
    pub(super) fn log_refusal(&mut self, key: usize, resp: &Response) {
        if self.now_ms < self.last_refusal_log_ms + REFUSAL_LOG_INTERVAL_MS
            && self.last_refusal_log_ms > 0
        {
            self.refusals_unlogged += 1;
            return;
        }
        self.last_refusal_log_ms = self.now_ms.max(1);
        let ip = self.conns.get(key).map(|c| c.ip);
        let reason = String::from_utf8_lossy(&resp.body);
        tracing::info!(
            shard = self.shard,
            ip = ?ip,
            status = resp.status,
            reason = %reason,
            not_logged_since = self.refusals_unlogged,
            "upgrade refused"
        );
        self.refusals_unlogged = 0;
    }

    /// Asks for the connection's queue to be written at the end of the turn.
    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Queues raw bytes regardless of phase (HTTP responses, close frames).
    pub(super) fn push_raw(&mut self, key: usize, bytes: Bytes) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out_bytes += bytes.len();
        conn.out.push_back(bytes);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Queues a frame on a WebSocket. Whether the peer is a slow consumer is
    /// decided after the end-of-turn write (`io::flush`): only bytes the
    /// socket did not take count (PROTOCOL 5.4).
    pub(super) fn send_frame(&mut self, key: usize, frame: Bytes) {
        let Some(conn) = self.queue_ws(key, frame) else {
            return;
        };
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Appends a frame to an open WebSocket's queue (nothing for another
    /// phase or a gone connection), counted as queued and unsent.
    fn queue_ws(&mut self, key: usize, frame: Bytes) -> Option<&mut Conn<S>> {
        let conn = self.conns.get_mut(key)?;
        if conn.phase != Phase::Ws {
            return None;
        }
        conn.out_bytes += frame.len();
        conn.out.push_back(frame);
        self.frames_queued += 1;
        Some(conn)
    }

    /// Queues a frame that need not leave this turn (presence): it goes
    /// with the connection's next write, or by the deferral deadline (see
    /// `deferred`: longer in a storm). Order is kept (one queue); the bytes
    /// count as unsent like any other.
    pub(super) fn send_frame_deferred(&mut self, key: usize, frame: Bytes) {
        use super::deferred::{cap, delay_ms, MAX_DEFERRED_FRAMES};
        let now = self.now_ms;
        let cfg = &self.shared.cfg;
        if cfg.presence_flush_ms == 0 {
            return self.send_frame(key, frame);
        }
        let waiting = self.deferred.len();
        let delay = delay_ms(cfg.presence_flush_ms, cfg.presence_flush_max_ms, waiting);
        let room = waiting < cap(self.conns.len());
        let pause_bytes = self.pause_bytes;
        let Some(conn) = self.queue_ws(key, frame) else {
            return;
        };
        if conn.dirty {
            return; // leaves this turn
        }
        // Too much held for one connection, or the queue of waiting
        // connections is full: write now, as without deferral.
        let too_much = conn.out_bytes > pause_bytes || conn.out.len() >= MAX_DEFERRED_FRAMES;
        if too_much || !room {
            conn.dirty = true;
            self.dirty.push(key);
            return;
        }
        if conn.deferred_until != 0 {
            return; // already waits for its deadline
        }
        let id = conn.id;
        let at = self.deferred.push(now + delay, key, id);
        self.conns[key].deferred_until = at;
    }

    /// Connections whose deferred frames are due are flushed this turn.
    pub(super) fn deferred_due(&mut self) {
        let now = self.now_ms;
        while let Some((key, id)) = self.deferred.pop_due(now) {
            if let Some(conn) = self.conns.get_mut(key) {
                // Stale entries (flushed meanwhile, or a reused slot) pass.
                if conn.id == id && conn.deferred_until != 0 && conn.deferred_until <= now {
                    conn.deferred_until = 0;
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(key);
                    }
                }
            }
        }
    }

    /// Starts the closing handshake with `code`; the connection is dropped
    /// when the peer answers or after a grace period.
    pub(super) fn close_ws(&mut self, key: usize, code: u16, reason: &str, why: DisconnectReason) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase != Phase::Ws {
            return;
        }
        let mut grace = CLOSE_GRACE_MS;
        if code == close_code::OVERLOAD {
            // The peer is not reading: drop what is queued, except a frame
            // already partly written (the stream must stay well-framed).
            let keep = usize::from(conn.out_off > 0);
            while conn.out.len() > keep {
                if let Some(f) = conn.out.pop_back() {
                    conn.out_bytes -= f.len();
                }
            }
            // Its socket is full: give a late reader time to find the close
            // frame behind what it has not read yet.
            grace = grace.max(self.shared.cfg.heartbeat_timeout_ms);
        }
        conn.phase = Phase::Closing;
        conn.close_sent = true;
        conn.deadline_ms = now + grace;
        self.metrics.disconnect(why);
        self.push_raw(key, ws::close_frame(code, reason));
    }

    /// Answers an HTTP request on a plain connection.
    pub(super) fn reply_http(&mut self, key: usize, resp: Response) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let keep_alive = conn.keep_alive && conn.phase == Phase::Http;
        if conn.awaiting_reply {
            conn.awaiting_reply = false;
            conn.reads_paused = false;
            self.reread.push(key);
        }
        if !keep_alive {
            conn.phase = Phase::Draining;
            conn.deadline_ms = self.now_ms + CLOSE_GRACE_MS;
        }
        // Head and body go as two buffers: a static asset's body is shared,
        // never copied per request. HEAD gets the head alone.
        let method = if conn.head_request { "HEAD" } else { "GET" };
        let (head, body) = resp.encode_parts_for(method, keep_alive);
        self.push_raw(key, head);
        if let Some(body) = body {
            self.push_raw(key, body);
        }
    }

    /// Sends each destination its batch of this turn: one channel send and
    /// one wake per shard. True if a batch had to wait (inbox full).
    pub(super) fn flush_outbox(&mut self) -> bool {
        let mut pending = false;
        for dest in 0..self.outbox.len() {
            if self.outbox[dest].is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut self.outbox[dest]);
            let link = &self.links[dest];
            match link.tx.try_send(batch) {
                Ok(()) => {
                    metrics::inc(&self.metrics.bus_batches_out);
                    if let Err(e) = link.waker.wake() {
                        tracing::warn!(shard = self.shard, dest, "wake failed: {e}");
                    }
                }
                // The destination is behind: keep the batch and retry next
                // turn, so nothing is lost and this shard never blocks.
                Err(TrySendError::Full(batch)) => {
                    self.outbox[dest] = batch;
                    pending = true;
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        pending
    }
}

impl<M, S> Port<M, S> for Core<M, S> {
    fn shard(&self) -> usize {
        self.shard
    }

    fn shards(&self) -> usize {
        self.links.len()
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn config(&self) -> &Config {
        &self.shared.cfg
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    fn peer_ip(&self, key: usize) -> Option<std::net::IpAddr> {
        self.conns.get(key).map(|c| c.ip)
    }

    fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            shard: self.shard as u32,
            key: key as u32,
            id: self.conns.get(key).map_or(0, |c| c.id),
        }
    }

    fn resolve(&self, r: ConnRef) -> Option<usize> {
        let key = r.key as usize;
        match self.conns.get(key) {
            Some(c) if c.id == r.id && r.shard as usize == self.shard => Some(key),
            _ => None,
        }
    }

    fn session(&self, key: usize) -> Option<&S> {
        self.conns.get(key).and_then(|c| c.session.as_deref())
    }

    fn session_mut(&mut self, key: usize) -> Option<&mut S> {
        self.conns
            .get_mut(key)
            .and_then(|c| c.session.as_deref_mut())
    }

    fn send(&mut self, key: usize, frame: Bytes) {
        self.send_frame(key, frame);
    }

    fn send_many(&mut self, keys: &[usize], frame: &Bytes) {
        for &key in keys {
            self.send_frame(key, frame.clone());
        }
    }

    fn send_shared(&mut self, key: usize, frame: &SharedFrame) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let bytes = self
            .deflate
            .frame_for(conn.deflate.as_deref(), frame, &self.metrics);
        self.send_frame(key, bytes);
    }

    /// The hot loop of a room fan-out (a 1,000-member room at 8,000 msg/s
    /// runs it 8M times a second): one slab lookup per member, the plain
    /// frame without a call into the deflate state for members that did not
    /// negotiate it.
    fn send_many_shared(&mut self, keys: &[usize], frame: &SharedFrame) {
        let mut queued = 0;
        for &key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.phase != Phase::Ws {
                continue;
            }
            let bytes = match conn.deflate.as_deref() {
                None => frame.plain().clone(),
                zipped => self.deflate.frame_for(zipped, frame, &self.metrics),
            };
            conn.out_bytes += bytes.len();
            conn.out.push_back(bytes);
            queued += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        self.frames_queued += queued;
    }

    fn send_shared_deferred(&mut self, key: usize, frame: &SharedFrame) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let bytes = self
            .deflate
            .frame_for(conn.deflate.as_deref(), frame, &self.metrics);
        self.send_frame_deferred(key, bytes);
    }

    fn wake_at(&mut self, at_ms: u64) {
        if self.app_wake_ms == 0 || at_ms < self.app_wake_ms {
            self.app_wake_ms = at_ms.max(1);
        }
    }

    fn close(&mut self, key: usize, code: u16, reason: &str, why: DisconnectReason) {
        self.close_ws(key, code, reason, why);
    }

    fn respond_http(&mut self, key: usize, resp: Response) {
        self.reply_http(key, resp);
    }

    fn bus(&mut self, dest: usize, msg: M) {
        if dest == self.shard {
            self.local.push_back(msg);
        } else {
            self.outbox[dest].push(msg);
        }
    }

    fn waker(&self) -> Arc<Waker> {
        self.links[self.shard].waker.clone()
    }

    fn resume_input(&mut self, key: usize) {
        let pause_bytes = self.pause_bytes;
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.reads_paused && conn.out_bytes <= pause_bytes {
                conn.reads_paused = false;
                self.reread.push(key);
            }
        }
    }

    fn notify_drained(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.drain_notice = true;
            // Nothing queued: it is drained already.
            if conn.out.is_empty() {
                self.mark_dirty(key);
            }
        }
    }
}
