//! One shard: a `mio` event loop on its own (pinned) thread that owns its
//! listener and its connections, and runs an [`App`] for them.
//!
//! Sockets are spread over shards by the kernel: every shard has its own
//! `SO_REUSEPORT` listener on the same address, and Linux hashes each new
//! connection's 4-tuple to one of them. That needs no acceptor thread and no
//! hand-off between threads, and it keeps accepting even when one shard is
//! busy with a broadcast.
//!
//! Per loop turn: handle socket events, drain the inter-shard inbox, run the
//! app's end-of-turn work, send the batched bus messages (one channel send
//! and one wake per destination shard), then flush every connection that got
//! frames this turn with one `writev` each. Deferred frames (presence) do
//! not make a connection flush: they go with its next write, or when their
//! deadline comes up in `deferred`. The reactor knows nothing of
//! chat: it calls the app's hooks and the app answers through `app::Port`.

mod conn;
mod core;
mod deferred;
mod deflate;
mod io;
mod tls_stream;
mod transport;

use self::conn::{Conn, Phase};
use self::core::Core;
use self::transport::Transport;
use crate::app::{App, Port};
use crate::bus::ShardLink;
use crate::config::Config;
use crate::limits::IpLimiter;
use crate::metrics::{self, DisconnectReason, ShardMetrics};
use crate::ws::{self, close_code, OpCode};
use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io as stdio;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
/// Token of each shard's waker (`server` creates the wakers with it).
pub const WAKER: Token = Token(usize::MAX - 2);
/// Back-off after `accept` failed for lack of file descriptors.
const EMFILE_BACKOFF_MS: u64 = 100;
/// Back-off after `accept` failed otherwise (no buffers, no memory).
const OTHER_ACCEPT_BACKOFF_MS: u64 = 10;

/// Process-wide transport state every shard reads. Only atomics change
/// after start.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub ip_limiter: IpLimiter,
    pub metrics: Vec<Arc<ShardMetrics>>,
    pub shutdown: AtomicBool,
    pub started: Instant,
    /// With `--tls-cert`: every connection speaks TLS (https://, wss://).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct Shard<A: App> {
    core: Core<A::Msg, A::Session>,
    app: A,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<Vec<A::Msg>>,
    read_buf: Vec<u8>,
    accept_paused_until: u64,
    next_tick_ms: u64,
    tick_ms: u64,
    /// The connection sweep walks `1 / SWEEP_SLICES` of the slab per tick
    /// (one tick every `tick_ms / SWEEP_SLICES`), so a shard with tens of
    /// thousands of connections never stalls its loop for a whole walk.
    sweep_cursor: usize,
    next_app_tick_ms: u64,
    drain_deadline: Option<u64>,
    last_emfile_log: u64,
}

impl<A: App> Shard<A> {
    pub fn new(
        shard: usize,
        shared: Arc<Shared>,
        links: Arc<[ShardLink<A::Msg>]>,
        app: A,
        poll: Poll,
        listener: TcpListener,
        inbox: Receiver<Vec<A::Msg>>,
    ) -> stdio::Result<Self> {
        let registry = poll.registry().try_clone()?;
        let mut listener = listener;
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        let cfg = &shared.cfg;
        // Timers are checked by a sweep; its period follows the shortest
        // configured timeout so small test timeouts stay accurate.
        let shortest = cfg
            .handshake_timeout_ms
            .min(cfg.heartbeat_ms)
            .min(cfg.heartbeat_timeout_ms);
        let tick_ms = (shortest / 4).clamp(5, 250);
        let n = links.len();
        let metrics = shared.metrics[shard].clone();
        let cfg = shared.cfg.clone();
        Ok(Shard {
            core: Core {
                shard,
                shared,
                links,
                conns: Slab::with_capacity(1024),
                now_ms: 0,
                metrics,
                registry,
                dirty: Vec::with_capacity(1024),
                outbox: (0..n).map(|_| Vec::new()).collect(),
                local: VecDeque::new(),
                reread: Vec::new(),
                next_conn_id: 1,
                pause_bytes: (cfg.max_outbound_bytes / 4).clamp(16 << 10, 256 << 10),
                held_input: 0,
                drained: Vec::new(),
                last_refusal_log_ms: 0,
                refusals_unlogged: 0,
                frames_queued: 0,
                deflate: deflate::ShardDeflate::new(cfg.compression_min_bytes),
                deferred: Default::default(),
                app_wake_ms: 0,
            },
            app,
            poll,
            listener: Some(listener),
            inbox,
            read_buf: vec![0; io::READ_BUF],
            accept_paused_until: 0,
            next_tick_ms: 0,
            tick_ms,
            sweep_cursor: 0,
            next_app_tick_ms: 0,
            drain_deadline: None,
            last_emfile_log: 0,
        })
    }

    fn clock(&self) -> u64 {
        self.core.shared.started.elapsed().as_millis() as u64
    }

    /// Runs until shutdown has drained every connection.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.next_tick_ms.saturating_sub(self.core.now_ms);
            if self.accept_paused_until > 0 {
                timeout = timeout.min(self.accept_paused_until.saturating_sub(self.core.now_ms));
            }
            // Deferred frames and the app's timers (presence batches).
            for at in [
                self.core.deferred.next_deadline(),
                Some(self.core.app_wake_ms),
            ]
            .into_iter()
            .flatten()
            .filter(|&at| at > 0)
            {
                timeout = timeout.min(at.saturating_sub(self.core.now_ms));
            }
            if !self.core.local.is_empty()
                || !self.core.reread.is_empty()
                || !self.core.drained.is_empty()
                || self.core.outbox.iter().any(|b| !b.is_empty())
            {
                timeout = 0;
            }
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(timeout)))
            {
                if e.kind() != stdio::ErrorKind::Interrupted {
                    tracing::error!(shard = self.core.shard, "poll failed: {e}");
                    return;
                }
            }
            self.core.now_ms = self.clock();
            self.core.app_wake_ms = 0;
            let turn_started = Instant::now();
            let mut since_flush = turn_started;
            for event in events.iter() {
                // A burst of ready sockets (hundreds of requests at once)
                // is written in parts: each part's replies and deliveries
                // leave once it took `MAX_UNFLUSHED_WORK`, instead of the
                // first one waiting for the whole burst.
                if since_flush.elapsed() >= MAX_UNFLUSHED_WORK {
                    self.run_local();
                    self.app.end_of_turn(&mut self.core);
                    self.core.flush_outbox();
                    self.flush_dirty();
                    since_flush = Instant::now();
                }
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key);
                        }
                        // Written at the end of the turn, after the bus:
                        // a reply must never overtake the bus messages the
                        // same turn produced (a `welcome` seen by the client
                        // before its user home knows the connection would
                        // let a DM sent right after miss it).
                        if event.is_writable() {
                            self.core.mark_dirty(key);
                        }
                    }
                }
            }
            self.drain_inbox();
            self.run_local();
            for key in std::mem::take(&mut self.core.reread) {
                self.process_leftover(key);
                self.on_readable(key);
            }
            self.run_local();
            // Bus messages to itself that this produces wait for the next
            // turn, which then starts at once (the poll timeout is 0).
            self.app.end_of_turn(&mut self.core);
            self.core.flush_outbox();
            self.core.deferred_due();
            self.flush_dirty();
            self.core.deferred.shrink();
            for key in std::mem::take(&mut self.core.drained) {
                if self.core.conns.contains(key) {
                    self.app.on_drained(&mut self.core, key);
                }
            }
            if self.accept_paused_until > 0 && self.core.now_ms >= self.accept_paused_until {
                self.accept_paused_until = 0;
                self.accept();
            }
            if self.core.now_ms >= self.next_tick_ms {
                self.tick();
                self.next_tick_ms = self.core.now_ms + (self.tick_ms / SWEEP_SLICES as u64).max(1);
            }
            self.core
                .metrics
                .record_turn(turn_started.elapsed().as_micros() as u64);
            if self.core.shared.shutdown.load(Ordering::Relaxed) && self.drain() {
                return;
            }
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(batch) = self.inbox.try_recv() {
            for msg in batch {
                self.app.on_bus(&mut self.core, msg);
            }
            self.run_local();
        }
    }

    fn run_local(&mut self) {
        while let Some(msg) = self.core.local.pop_front() {
            self.app.on_bus(&mut self.core, msg);
        }
    }

    /// Shutdown: stop accepting, close every connection with 1001, and
    /// report true once all are gone or the drain deadline passed.
    fn drain(&mut self) -> bool {
        let now = self.core.now_ms;
        let deadline = match self.drain_deadline {
            Some(d) => d,
            None => {
                let d = now + self.core.shared.cfg.drain_timeout_ms;
                self.drain_deadline = Some(d);
                if let Some(mut l) = self.listener.take() {
                    let _ = self.core.registry.deregister(&mut l);
                }
                let keys: Vec<usize> = self.core.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    match self.core.conns[key].phase {
                        Phase::Ws => self.core.close_ws(
                            key,
                            close_code::GOING_AWAY,
                            "server shutdown",
                            DisconnectReason::Shutdown,
                        ),
                        Phase::Http if !self.core.conns[key].awaiting_reply => {
                            self.remove(key, DisconnectReason::Shutdown)
                        }
                        _ => {}
                    }
                }
                self.flush_dirty();
                d
            }
        };
        self.core.conns.is_empty() || now >= deadline
    }

    fn accept(&mut self) {
        if self.accept_paused_until > 0 {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((sock, addr)) => self.add_conn(sock, addr.ip()),
                Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    // Out of descriptors: leave the rest in the backlog and
                    // retry shortly instead of spinning on a readable listener.
                    metrics::inc(&self.core.metrics.accept_errors);
                    self.accept_paused_until = self.core.now_ms + EMFILE_BACKOFF_MS;
                    if self.core.now_ms >= self.last_emfile_log + 5000 {
                        self.last_emfile_log = self.core.now_ms;
                        tracing::warn!(shard = self.core.shard, "accept: {e}; backing off");
                    }
                    return;
                }
                // The peer gave up before we accepted: only that one is lost.
                Err(e) if e.kind() == stdio::ErrorKind::ConnectionAborted => {
                    metrics::inc(&self.core.metrics.accept_errors);
                }
                Err(e) if e.kind() == stdio::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of buffers or memory: retrying at once would spin.
                    metrics::inc(&self.core.metrics.accept_errors);
                    self.accept_paused_until = self.core.now_ms + OTHER_ACCEPT_BACKOFF_MS;
                    if self.core.now_ms >= self.last_emfile_log + 5000 {
                        self.last_emfile_log = self.core.now_ms;
                        tracing::warn!(shard = self.core.shard, "accept: {e}; backing off");
                    }
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, sock: TcpStream, ip: IpAddr) {
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!("set_nodelay: {e}");
        }
        let mut io = match &self.core.shared.tls {
            None => Transport::Plain(sock),
            Some(config) => match Transport::tls(sock, config) {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!("tls: {e}");
                    return;
                }
            },
        };
        let id = self.core.next_conn_id;
        self.core.next_conn_id += 1;
        let entry = self.core.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.core.registry.register(
            io.socket(),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::debug!("register: {e}");
            return;
        }
        entry.insert(Conn::new(io, id, ip, self.core.now_ms));
        metrics::inc(&self.core.metrics.connections_total);
        metrics::inc(&self.core.metrics.connections_open);
    }

    /// Drops a connection and releases everything it held.
    fn remove(&mut self, key: usize, reason: DisconnectReason) {
        if !self.core.conns.contains(key) {
            return;
        }
        let conn_ref = self.core.conn_ref(key);
        let mut conn = self.core.conns.remove(key);
        self.core.held_input -= conn.inbuf.capacity();
        conn.io.close_notify();
        // No deregister: `conn` holds the socket's only descriptor, and its
        // close at the end of this call takes it out of the epoll set (an
        // EPOLL_CTL_DEL first would be one more syscall per disconnect).
        if conn.ip_counted {
            self.core
                .shared
                .ip_limiter
                .release(conn.ip, self.core.shared.started.elapsed().as_secs());
        }
        // Reasons of server-initiated closes were counted when sent.
        if !conn.close_sent {
            self.core.metrics.disconnect(reason);
        }
        self.core
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(session) = conn.session.take() {
            self.app
                .on_disconnect(&mut self.core, key, conn_ref, session);
        }
    }

    /// Periodic sweep: handshake timeouts, heartbeats, token expiry, close
    /// deadlines (a slice of the connections per call, every one within
    /// `tick_ms`), and every `tick_ms` the app's housekeeping.
    fn tick(&mut self) {
        let now = self.core.now_ms;
        let cfg = self.core.shared.cfg.clone();
        let now_secs = crate::auth::now_secs();
        let mut actions: Vec<(usize, TickAction)> = Vec::new();
        let slots = self.core.conns.capacity();
        let start = self.sweep_cursor.min(slots);
        let end = (start + slots.div_ceil(SWEEP_SLICES).max(64)).min(slots);
        self.sweep_cursor = if end >= slots { 0 } else { end };
        for key in start..end {
            let Some(conn) = self.core.conns.get_mut(key) else {
                continue;
            };
            if conn.out.is_empty() && conn.out.capacity() > 0 {
                // A busy connection's big queue buffer, kept between writes
                // (`io::KEEP_QUEUE_SLOTS`): given back here, so a connection
                // that went quiet holds none.
                conn.out = VecDeque::new();
            }
            let action = match conn.phase {
                // Counted from the last progress (a request, response bytes
                // written), so a keep-alive connection is not cut mid-response.
                Phase::Http if !conn.awaiting_reply => (now.saturating_sub(conn.progress_ms)
                    >= cfg.handshake_timeout_ms)
                    .then_some(TickAction::Drop(DisconnectReason::HandshakeTimeout)),
                Phase::Ws
                    if conn.partial_since_ms > 0
                        && now.saturating_sub(conn.partial_since_ms)
                            >= cfg.handshake_timeout_ms =>
                {
                    Some(TickAction::Incomplete)
                }
                Phase::Ws => {
                    let quiet_for = now.saturating_sub(conn.last_recv_ms);
                    let expired = conn
                        .session
                        .as_deref()
                        .and_then(A::expires_at)
                        .is_some_and(|exp| now_secs >= exp);
                    // Silent for the whole period, and a ping has waited a
                    // full timeout for its answer: when the loop ran late
                    // (a stalled host), the ping goes out first.
                    let ping_waited = conn.unanswered_ping_ms > 0
                        && now.saturating_sub(conn.unanswered_ping_ms) >= cfg.heartbeat_timeout_ms;
                    if ping_waited && quiet_for >= cfg.heartbeat_ms + cfg.heartbeat_timeout_ms {
                        Some(TickAction::Drop(DisconnectReason::HeartbeatTimeout))
                    } else if expired {
                        Some(TickAction::Expire)
                    } else if now.saturating_sub(conn.last_ping_ms) >= cfg.heartbeat_ms {
                        Some(TickAction::Ping)
                    } else {
                        None
                    }
                }
                Phase::Closing | Phase::Draining => {
                    (now >= conn.deadline_ms).then_some(TickAction::Drop(DisconnectReason::Policy))
                }
                Phase::Http => None,
            };
            if let Some(a) = action {
                actions.push((key, a));
            }
        }
        for (key, action) in actions {
            match action {
                TickAction::Drop(reason) => self.remove(key, reason),
                TickAction::Incomplete => self.core.close_ws(
                    key,
                    close_code::POLICY,
                    "frame not completed in time",
                    DisconnectReason::Policy,
                ),
                TickAction::Expire => self.core.close_ws(
                    key,
                    close_code::POLICY,
                    "token expired",
                    DisconnectReason::TokenExpired,
                ),
                TickAction::Ping => {
                    let conn = &mut self.core.conns[key];
                    conn.last_ping_ms = now;
                    if conn.unanswered_ping_ms == 0 {
                        conn.unanswered_ping_ms = now.max(1);
                    }
                    self.core.send_frame(key, ws::frame(OpCode::Ping, b""));
                }
            }
        }
        if now < self.next_app_tick_ms {
            return;
        }
        self.next_app_tick_ms = now + self.tick_ms;
        // Per-address entries nobody uses any more are freed (the first
        // shard to sweep in a second does the work).
        self.core
            .shared
            .ip_limiter
            .sweep(self.core.shared.started.elapsed().as_secs());
        self.app.on_tick(&mut self.core);
    }
}

/// Work a turn does on ready sockets before it writes what it has so far
/// (see `Shard::run`).
const MAX_UNFLUSHED_WORK: Duration = Duration::from_millis(1);

/// Parts the connection sweep is cut into (see `Shard::sweep_cursor`).
const SWEEP_SLICES: usize = 16;

enum TickAction {
    Drop(DisconnectReason),
    /// A started frame or fragmented message was not completed in time.
    Incomplete,
    Expire,
    Ping,
}
