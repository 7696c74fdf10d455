//! One shard: a `mio` event loop on its own (pinned) thread that owns its
//! listener, its connections and its share of the rooms.
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
//! frames this turn with one `writev` each.

use crate::bus::{BusMsg, ConnRef, ShardLink};
use crate::chat::ChatShard;
use crate::config::Config;
use crate::conn::{Conn, Phase};
use crate::http::{self, Request, Response};
use crate::limits::{IpLimiter, IpRefusal};
use crate::metrics::{self, DisconnectReason, ShardMetrics};
use crate::ws::{self, close_code, Assembled, Assembler, CloseError, OpCode, Parse};
use bytes::Bytes;
use crossbeam_channel::{Receiver, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Shared read buffer per shard; large so one syscall takes many frames.
const READ_BUF: usize = 256 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_EVENT: usize = 8;
/// Frames gathered into one `writev`.
const MAX_IOVECS: usize = 64;
/// How long a closing connection may take to answer our close frame.
const CLOSE_GRACE_MS: u64 = 2000;
/// Back-off after `accept` failed for lack of file descriptors.
const EMFILE_BACKOFF_MS: u64 = 100;

/// What the shard serves: the chat protocol, or a bare echo for Autobahn.
pub enum Mode {
    Chat,
    Echo,
}

/// Process-wide state every shard reads. Only atomics change after start.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub mode: Mode,
    pub ip_limiter: IpLimiter,
    pub metrics: Vec<Arc<ShardMetrics>>,
    pub links: Vec<ShardLink>,
    pub shutdown: AtomicBool,
    pub started: Instant,
    pub chat: Option<crate::chat::ChatShared>,
}

/// The part of a shard the app may use: connections, clock, bus.
pub struct Core {
    pub shard: usize,
    pub shared: Arc<Shared>,
    pub conns: Slab<Conn>,
    pub now_ms: u64,
    pub metrics: Arc<ShardMetrics>,
    registry: mio::Registry,
    dirty: Vec<usize>,
    outbox: Vec<Vec<BusMsg>>,
    /// Bus messages this shard sends to itself: handled in the same turn.
    pub local: VecDeque<BusMsg>,
    /// Connections whose reading must resume (an async HTTP reply arrived).
    reread: Vec<usize>,
    next_conn_id: u64,
}

impl Core {
    pub fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            shard: self.shard as u32,
            key: key as u32,
            id: self.conns[key].id,
        }
    }

    /// The slab key of a live connection, if `r` still names it.
    pub fn resolve(&self, r: ConnRef) -> Option<usize> {
        let key = r.key as usize;
        match self.conns.get(key) {
            Some(c) if c.id == r.id => Some(key),
            _ => None,
        }
    }

    /// Sends a bus message; to ourselves it is handled later this turn.
    pub fn bus(&mut self, dest: usize, msg: BusMsg) {
        if dest == self.shard {
            self.local.push_back(msg);
        } else {
            self.outbox[dest].push(msg);
        }
    }

    pub fn shards(&self) -> usize {
        self.shared.links.len()
    }

    /// Queues a frame on a WebSocket; a queue over the limit closes it 1013.
    pub fn send(&mut self, key: usize, frame: Bytes) {
        let limit = self.shared.cfg.max_outbound_bytes;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase != Phase::Ws {
            return;
        }
        if conn.out_bytes + frame.len() > limit {
            self.close_ws(key, close_code::OVERLOAD, "slow consumer");
            return;
        }
        conn.out_bytes += frame.len();
        conn.out.push_back(frame);
        metrics::inc(&self.metrics.frames_out);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Asks for the connection's queue to be written at the end of the turn.
    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Queues raw bytes regardless of phase (HTTP responses, close frames).
    fn push_raw(&mut self, key: usize, bytes: Bytes) {
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

    /// Starts the closing handshake with `code`; the connection is dropped
    /// when the peer answers or after a grace period.
    pub fn close_ws(&mut self, key: usize, code: u16, reason: &str) {
        self.close_ws_as(key, code, reason, DisconnectReason::from_close_code(code));
    }

    /// Like `close_ws`, counting the disconnect under `why`.
    pub fn close_ws_as(&mut self, key: usize, code: u16, reason: &str, why: DisconnectReason) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase != Phase::Ws {
            return;
        }
        if code == close_code::OVERLOAD {
            // The peer is not reading: drop what is queued, except a frame
            // already partly written (the stream must stay well-framed).
            let keep = usize::from(conn.out_off > 0);
            while conn.out.len() > keep {
                if let Some(f) = conn.out.pop_back() {
                    conn.out_bytes -= f.len();
                }
            }
        }
        conn.phase = Phase::Closing;
        conn.close_sent = true;
        conn.deadline_ms = now + CLOSE_GRACE_MS;
        self.metrics.disconnect(why);
        self.push_raw(key, ws::close_frame(code, reason));
    }

    /// Answers an HTTP request on a plain connection.
    pub fn respond_http(&mut self, key: usize, resp: Response) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let keep_alive = conn.keep_alive && conn.phase == Phase::Http;
        if conn.awaiting_reply {
            conn.awaiting_reply = false;
            self.reread.push(key);
        }
        if !keep_alive {
            conn.phase = Phase::Draining;
            conn.deadline_ms = self.now_ms + CLOSE_GRACE_MS;
        }
        self.push_raw(key, resp.encode(keep_alive));
    }

    fn flush_outbox(&mut self) -> bool {
        let mut pending = false;
        for dest in 0..self.outbox.len() {
            if self.outbox[dest].is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut self.outbox[dest]);
            let link = &self.shared.links[dest];
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

/// The application behind the transport.
enum App {
    Echo,
    Chat(Box<ChatShard>),
}

pub struct Shard {
    core: Core,
    app: App,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<Vec<BusMsg>>,
    read_buf: Vec<u8>,
    accept_paused_until: u64,
    next_tick_ms: u64,
    tick_ms: u64,
    drain_deadline: Option<u64>,
    last_emfile_log: u64,
}

impl Shard {
    pub fn new(
        shard: usize,
        shared: Arc<Shared>,
        poll: Poll,
        listener: TcpListener,
        inbox: Receiver<Vec<BusMsg>>,
    ) -> io::Result<Shard> {
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
        let app = match shared.mode {
            Mode::Echo => App::Echo,
            Mode::Chat => App::Chat(Box::new(ChatShard::new(shard, &shared))),
        };
        let n = shared.links.len();
        let metrics = shared.metrics[shard].clone();
        Ok(Shard {
            core: Core {
                shard,
                shared,
                conns: Slab::with_capacity(1024),
                now_ms: 0,
                metrics,
                registry,
                dirty: Vec::with_capacity(1024),
                outbox: (0..n).map(|_| Vec::new()).collect(),
                local: VecDeque::new(),
                reread: Vec::new(),
                next_conn_id: 1,
            },
            app,
            poll,
            listener: Some(listener),
            inbox,
            read_buf: vec![0; READ_BUF],
            accept_paused_until: 0,
            next_tick_ms: 0,
            tick_ms,
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
            if !self.core.local.is_empty()
                || !self.core.reread.is_empty()
                || self.core.outbox.iter().any(|b| !b.is_empty())
            {
                timeout = 0;
            }
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(timeout)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(shard = self.core.shard, "poll failed: {e}");
                    return;
                }
            }
            self.core.now_ms = self.clock();
            for event in events.iter() {
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
            if let App::Chat(chat) = &mut self.app {
                chat.end_of_turn(&mut self.core);
            }
            self.core.flush_outbox();
            self.flush_dirty();
            if self.accept_paused_until > 0 && self.core.now_ms >= self.accept_paused_until {
                self.accept_paused_until = 0;
                self.accept();
            }
            if self.core.now_ms >= self.next_tick_ms {
                self.tick();
                self.next_tick_ms = self.core.now_ms + self.tick_ms;
            }
            if self.core.shared.shutdown.load(Ordering::Relaxed) && self.drain() {
                return;
            }
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(batch) = self.inbox.try_recv() {
            for msg in batch {
                self.on_bus(msg);
            }
            self.run_local();
        }
    }

    fn run_local(&mut self) {
        while let Some(msg) = self.core.local.pop_front() {
            self.on_bus(msg);
        }
    }

    fn on_bus(&mut self, msg: BusMsg) {
        if let App::Chat(chat) = &mut self.app {
            chat.on_bus(&mut self.core, msg);
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
                        Phase::Ws => {
                            self.core
                                .close_ws(key, close_code::GOING_AWAY, "server shutdown")
                        }
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
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
                Err(e) => {
                    metrics::inc(&self.core.metrics.accept_errors);
                    tracing::debug!(shard = self.core.shard, "accept: {e}");
                }
            }
        }
    }

    fn add_conn(&mut self, mut sock: TcpStream, ip: IpAddr) {
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!("set_nodelay: {e}");
        }
        let id = self.core.next_conn_id;
        self.core.next_conn_id += 1;
        let entry = self.core.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.core.registry.register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::debug!("register: {e}");
            return;
        }
        entry.insert(Conn::new(sock, id, ip, self.core.now_ms));
        metrics::inc(&self.core.metrics.connections_total);
        metrics::inc(&self.core.metrics.connections_open);
    }

    /// Drops a connection and releases everything it held.
    fn remove(&mut self, key: usize, reason: DisconnectReason) {
        if !self.core.conns.contains(key) {
            return;
        }
        let mut conn = self.core.conns.remove(key);
        let _ = self.core.registry.deregister(&mut conn.sock);
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
        if let (Some(session), App::Chat(chat)) = (conn.session.take(), &mut self.app) {
            chat.on_disconnect(&mut self.core, key, conn.id, *session);
        }
    }

    fn on_readable(&mut self, key: usize) {
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.core.conns.get_mut(key) else {
                return;
            };
            if conn.awaiting_reply || conn.phase == Phase::Draining {
                return;
            }
            let from_scratch = conn.inbuf.is_empty();
            let result = if from_scratch {
                conn.sock.read(&mut self.read_buf)
            } else {
                // A partial frame is pending: read behind it.
                let len = conn.inbuf.len();
                let want = (conn.inbuf.capacity() - len).max(16 * 1024);
                conn.inbuf.resize(len + want, 0);
                let r = conn.sock.read(&mut conn.inbuf[len..]);
                let got = *r.as_ref().unwrap_or(&0);
                conn.inbuf.truncate(len + got);
                r
            };
            match result {
                Ok(0) => {
                    let reason = if self.core.conns[key].close_sent {
                        DisconnectReason::ClientClose
                    } else {
                        DisconnectReason::PeerReset
                    };
                    self.remove(key, reason);
                    return;
                }
                Ok(n) => {
                    conn_mut_touch(&mut self.core, key, n);
                    if from_scratch {
                        let mut buf = std::mem::take(&mut self.read_buf);
                        self.process(key, &mut buf[..n]);
                        self.read_buf = buf;
                    } else {
                        self.process_leftover(key);
                    }
                    if n < READ_BUF / 2 && from_scratch {
                        // A short read means the socket is drained.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.remove(key, DisconnectReason::IoError);
                    return;
                }
            }
        }
        // Budget used up with data possibly left: come back next turn.
        if self.core.conns.contains(key) {
            self.core.reread.push(key);
        }
    }

    /// Processes bytes held in the connection's own buffer.
    fn process_leftover(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.inbuf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut conn.inbuf);
        self.process(key, &mut buf);
    }

    /// Consumes complete requests/frames from `buf`; a partial one is kept in
    /// the connection's own buffer (allocated only then).
    fn process(&mut self, key: usize, buf: &mut [u8]) {
        let mut pos = 0;
        let mut needed = 0;
        while pos < buf.len() {
            let Some(conn) = self.core.conns.get(key) else {
                return;
            };
            let step = match conn.phase {
                Phase::Http if !conn.awaiting_reply => self.process_http(key, &buf[pos..]),
                Phase::Ws | Phase::Closing => self.process_frame(key, &mut buf[pos..]),
                _ => Step::Stop,
            };
            match step {
                Step::Consumed(n) => pos += n,
                Step::Need(n) => {
                    needed = n;
                    break;
                }
                Step::Stop => return,
            }
        }
        if let Some(conn) = self.core.conns.get_mut(key) {
            let rest = &buf[pos..];
            if rest.is_empty() {
                // Release the buffer: idle connections hold none.
                conn.inbuf = Vec::new();
            } else {
                let mut keep = Vec::with_capacity(needed.max(rest.len()).max(4096));
                keep.extend_from_slice(rest);
                conn.inbuf = keep;
            }
        }
    }

    fn process_http(&mut self, key: usize, buf: &[u8]) -> Step {
        match http::parse_request(buf) {
            Ok(None) => Step::Need(0),
            Ok(Some((req, used))) => {
                metrics::inc(&self.core.metrics.http_requests);
                self.core.conns[key].keep_alive = req.keep_alive;
                self.handle_http(key, req);
                Step::Consumed(used)
            }
            Err(e) => {
                self.core.conns[key].keep_alive = false;
                self.core
                    .respond_http(key, Response::error(e.status(), &e.to_string()));
                Step::Stop
            }
        }
    }

    fn handle_http(&mut self, key: usize, req: Request) {
        // The echo server (Autobahn) upgrades on any path.
        let echo = matches!(self.app, App::Echo);
        if req.path == "/ws" || (echo && req.upgrade_websocket) {
            self.upgrade(key, req);
            return;
        }
        let resp = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/health") => {
                let body = serde_json::json!({
                    "status": "ok",
                    "shards": self.core.shards(),
                    "uptime_ms": self.core.now_ms,
                });
                Some(Response::json(200, body.to_string()))
            }
            ("GET", "/ready") => {
                let shutting_down = self.core.shared.shutdown.load(Ordering::Relaxed);
                let store_ok = match &self.app {
                    App::Chat(chat) => chat.backends_ready(&self.core),
                    App::Echo => true,
                };
                Some(if shutting_down {
                    Response::json(503, r#"{"status":"draining"}"#)
                } else if !store_ok {
                    Response::json(503, r#"{"status":"unavailable","store":"down"}"#)
                } else {
                    Response::json(200, r#"{"status":"ready"}"#)
                })
            }
            ("GET", "/metrics") => {
                let open_fds = std::fs::read_dir("/proc/self/fd")
                    .map(|d| d.count())
                    .unwrap_or(0);
                let extra = [("corechat_open_fds", "gauge", open_fds as f64)];
                let text = metrics::render(&self.core.shared.metrics, &extra);
                Some(Response::text(200, "text/plain; version=0.0.4", text))
            }
            _ => match &mut self.app {
                App::Chat(chat) => chat.on_http(&mut self.core, key, req),
                App::Echo => Some(Response::error(404, "not found")),
            },
        };
        match resp {
            Some(resp) => self.core.respond_http(key, resp),
            None => self.core.conns[key].awaiting_reply = true,
        }
    }

    /// `GET /ws`: validate, admit, authenticate, then switch protocols.
    fn upgrade(&mut self, key: usize, req: Request) {
        let cfg = self.core.shared.cfg.clone();
        let refuse = |core: &mut Core, resp: Response| {
            metrics::inc(&core.metrics.rejected_upgrades);
            core.conns[key].keep_alive = false;
            core.respond_http(key, resp);
        };
        if req.method != "GET" {
            return refuse(&mut self.core, Response::error(405, "method not allowed"));
        }
        if !req.upgrade_websocket || !req.connection_upgrade {
            return refuse(
                &mut self.core,
                Response::error(426, "websocket upgrade required"),
            );
        }
        if req.ws_version.as_deref() != Some("13") {
            let resp = Response::error(426, "unsupported websocket version")
                .header("sec-websocket-version", "13");
            return refuse(&mut self.core, resp);
        }
        let Some(ws_key) = req.ws_key.clone() else {
            return refuse(
                &mut self.core,
                Response::error(400, "missing sec-websocket-key"),
            );
        };
        let chat_mode = matches!(self.app, App::Chat(_));
        if chat_mode && !cfg.allowed_origins.is_empty() {
            let ok = req
                .origin
                .as_ref()
                .is_some_and(|o| cfg.allowed_origins.iter().any(|a| a == o));
            if !ok {
                return refuse(&mut self.core, Response::error(403, "origin not allowed"));
            }
        }
        let ip = self.core.conns[key].ip;
        let now_sec = self.core.shared.started.elapsed().as_secs();
        if chat_mode {
            if let Err(refusal) = self.core.shared.ip_limiter.try_admit(ip, now_sec) {
                let msg = match refusal {
                    IpRefusal::TooManyConnections => "too many connections from this address",
                    IpRefusal::TooManyUpgrades => "too many upgrades from this address",
                };
                return refuse(&mut self.core, Response::error(429, msg));
            }
            self.core.conns[key].ip_counted = true;
        }
        let session = match &mut self.app {
            App::Chat(chat) => match chat.authenticate(&self.core, &req) {
                Ok(session) => Some(session),
                Err(msg) => {
                    metrics::inc(&self.core.metrics.auth_failures);
                    let conn = &mut self.core.conns[key];
                    conn.ip_counted = false;
                    self.core.shared.ip_limiter.release(ip, now_sec);
                    return refuse(&mut self.core, Response::error(401, &msg));
                }
            },
            App::Echo => None,
        };
        let accept = ws::accept_key(ws_key.as_bytes());
        self.core.push_raw(key, http::switching_protocols(&accept));
        let now = self.core.now_ms;
        let conn = &mut self.core.conns[key];
        conn.phase = Phase::Ws;
        conn.last_recv_ms = now;
        conn.last_ping_ms = now;
        conn.session = session;
        if let App::Chat(chat) = &mut self.app {
            chat.on_open(&mut self.core, key);
        }
    }

    fn process_frame(&mut self, key: usize, buf: &mut [u8]) -> Step {
        let max = self.core.shared.cfg.max_frame_bytes;
        let header = match ws::parse_client_frame(buf, max) {
            Ok(Parse::Frame(h)) => h,
            Ok(Parse::Incomplete { needed }) => return Step::Need(needed),
            Err(e) => {
                self.fail(key, e);
                return Step::Stop;
            }
        };
        metrics::inc(&self.core.metrics.frames_in);
        let total = header.total_len();
        let payload = &buf[header.payload_start..total];
        let closing = self.core.conns[key].phase == Phase::Closing;
        match header.opcode {
            OpCode::Ping => {
                if !closing {
                    self.core.send(key, ws::frame(OpCode::Pong, payload));
                }
            }
            OpCode::Pong => {}
            OpCode::Close => {
                self.on_close_frame(key, payload);
                return Step::Stop;
            }
            OpCode::Continuation => {
                let conn = &mut self.core.conns[key];
                let Some(asm) = conn.asm.as_mut() else {
                    self.fail(
                        key,
                        CloseError::new(close_code::PROTOCOL, "unexpected continuation"),
                    );
                    return Step::Stop;
                };
                if let Err(e) = asm.extend(payload, max) {
                    self.fail(key, e);
                    return Step::Stop;
                }
                if header.fin {
                    let asm = conn.asm.take().expect("checked above");
                    match asm.finish() {
                        Ok(Assembled::Message { opcode, payload }) => {
                            if !closing {
                                self.dispatch(key, opcode, payload);
                            }
                        }
                        Ok(Assembled::Pending) => {}
                        Err(e) => {
                            self.fail(key, e);
                            return Step::Stop;
                        }
                    }
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.core.conns[key].asm.is_some() {
                    self.fail(
                        key,
                        CloseError::new(close_code::PROTOCOL, "expected continuation"),
                    );
                    return Step::Stop;
                }
                if !header.fin {
                    match Assembler::start(header.opcode, payload, max) {
                        Ok(asm) => self.core.conns[key].asm = Some(Box::new(asm)),
                        Err(e) => {
                            self.fail(key, e);
                            return Step::Stop;
                        }
                    }
                } else if header.opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
                    self.fail(
                        key,
                        CloseError::new(close_code::INVALID_UTF8, "invalid utf-8"),
                    );
                    return Step::Stop;
                } else if !closing {
                    self.dispatch(key, header.opcode, payload);
                }
            }
        }
        Step::Consumed(total)
    }

    fn dispatch(&mut self, key: usize, opcode: OpCode, payload: &[u8]) {
        match &mut self.app {
            App::Echo => self.core.send(key, ws::frame(opcode, payload)),
            App::Chat(chat) => {
                if opcode == OpCode::Binary {
                    self.core.close_ws(
                        key,
                        close_code::UNSUPPORTED,
                        "binary frames are not supported",
                    );
                } else {
                    // UTF-8 was validated by the codec.
                    let text = unsafe_free_str(payload);
                    chat.on_text(&mut self.core, key, text);
                }
            }
        }
    }

    fn on_close_frame(&mut self, key: usize, payload: &[u8]) {
        let conn = &mut self.core.conns[key];
        if conn.close_sent {
            // Our close was answered: the handshake is complete.
            self.remove(key, DisconnectReason::ClientClose);
            return;
        }
        let (code, reason) = match ws::check_close_payload(payload) {
            Ok(code) => (code, ""),
            Err(e) => (e.code, e.reason),
        };
        // Echo the close, then drop once it is written.
        conn.phase = Phase::Draining;
        conn.close_sent = true;
        conn.deadline_ms = self.core.now_ms + CLOSE_GRACE_MS;
        let reason_label = if code == close_code::NORMAL || code == close_code::GOING_AWAY {
            DisconnectReason::ClientClose
        } else {
            DisconnectReason::Protocol
        };
        self.core.metrics.disconnect(reason_label);
        self.core.push_raw(key, ws::close_frame(code, reason));
    }

    /// A protocol violation: close with its code (or drop an HTTP socket).
    fn fail(&mut self, key: usize, e: CloseError) {
        self.core.close_ws(key, e.code, e.reason);
        if let Some(conn) = self.core.conns.get_mut(key) {
            // Nothing more will be read from a violating peer.
            conn.asm = None;
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        for &key in &dirty {
            if let Some(conn) = self.core.conns.get_mut(key) {
                conn.dirty = false;
            }
            self.flush(key);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.core.dirty.is_empty() {
            self.core.dirty = dirty;
        }
    }

    /// Writes as much of the queue as the socket takes, many frames per
    /// `writev`.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        let mut written_total = 0u64;
        let mut failed = false;
        while !conn.out.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, frame) in conn.out.iter().take(MAX_IOVECS).enumerate() {
                let start = if i == 0 { conn.out_off } else { 0 };
                slices[i] = IoSlice::new(&frame[start..]);
                n += 1;
            }
            match conn.sock.write_vectored(&slices[..n]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(mut written) => {
                    written_total += written as u64;
                    conn.out_bytes -= written;
                    while written > 0 {
                        let head_left = conn.out[0].len() - conn.out_off;
                        if written >= head_left {
                            written -= head_left;
                            conn.out.pop_front();
                            conn.out_off = 0;
                        } else {
                            conn.out_off += written;
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        metrics::add(&self.core.metrics.bytes_out, written_total);
        if conn.out.is_empty() && conn.out.capacity() > 0 {
            // An empty queue holds no memory: idle connections are most
            // connections (S3), and one allocation per busy turn is cheap
            // next to the writev it goes with.
            conn.out = VecDeque::new();
        }
        let drained = conn.out.is_empty();
        let phase = conn.phase;
        if failed {
            self.remove(key, DisconnectReason::IoError);
        } else if drained && phase == Phase::Draining {
            // `remove` counts the connection closed before dropping the
            // socket sends the FIN, so a client that saw the end of the
            // response never finds it still counted in /metrics.
            self.remove(key, DisconnectReason::HttpDone);
        }
    }

    /// Periodic sweep: handshake timeouts, heartbeats, token expiry, close
    /// deadlines, and the chat's housekeeping.
    fn tick(&mut self) {
        let now = self.core.now_ms;
        let cfg = self.core.shared.cfg.clone();
        let now_secs = crate::auth::now_secs();
        let mut actions: Vec<(usize, TickAction)> = Vec::new();
        for (key, conn) in self.core.conns.iter() {
            let action = match conn.phase {
                Phase::Http if !conn.awaiting_reply => (now.saturating_sub(conn.opened_ms)
                    >= cfg.handshake_timeout_ms)
                    .then_some(TickAction::Drop(DisconnectReason::HandshakeTimeout)),
                Phase::Ws => {
                    let silent = now.saturating_sub(conn.last_recv_ms);
                    let expired = conn
                        .session
                        .as_ref()
                        .and_then(|s| s.exp)
                        .is_some_and(|exp| now_secs >= exp);
                    if silent >= cfg.heartbeat_ms + cfg.heartbeat_timeout_ms {
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
                TickAction::Expire => self.core.close_ws_as(
                    key,
                    close_code::POLICY,
                    "token expired",
                    DisconnectReason::TokenExpired,
                ),
                TickAction::Ping => {
                    self.core.conns[key].last_ping_ms = now;
                    self.core.send(key, ws::frame(OpCode::Ping, b""));
                }
            }
        }
        if let App::Chat(chat) = &mut self.app {
            chat.on_tick(&mut self.core);
        }
    }
}

enum TickAction {
    Drop(DisconnectReason),
    Expire,
    Ping,
}

enum Step {
    Consumed(usize),
    Need(usize),
    Stop,
}

fn conn_mut_touch(core: &mut Core, key: usize, n: usize) {
    core.conns[key].last_recv_ms = core.now_ms;
    metrics::add(&core.metrics.bytes_in, n as u64);
}

/// `payload` was validated as UTF-8 by the codec before dispatch.
fn unsafe_free_str(payload: &[u8]) -> &str {
    // from_utf8 again costs a second pass; it is cheap next to JSON parsing
    // and keeps this module free of `unsafe`.
    std::str::from_utf8(payload).unwrap_or("")
}
