//! A shard's socket work: reading and parsing (HTTP requests, the upgrade,
//! WebSocket frames) and writing queued frames with `writev`.

use super::conn::Phase;
use super::core::{Core, CLOSE_GRACE_MS, HELD_INPUT_MAX};
use super::deflate;
use super::transport::TlsEvents;
use super::Shard;
use crate::app::{App, Port};
use crate::http::{self, Request, Response};
use crate::limits::IpRefusal;
use crate::metrics::{self, DisconnectReason};
use crate::ws::{self, close_code, Assembled, Assembler, CloseError, OpCode, Parse};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;

/// Shared read buffer per shard; large so one syscall takes many frames.
pub(super) const READ_BUF: usize = 256 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_EVENT: usize = 8;
/// Frames gathered into one `writev`: Linux's `IOV_MAX`. A deep queue (a
/// busy room's member) leaves in as few calls as the kernel allows; the
/// slices live inline up to `INLINE_IOVECS`, so shallow queues (most
/// flushes) allocate nothing.
const MAX_IOVECS: usize = 1024;

/// Send-queue slots up to which an emptied queue frees its buffer at once.
pub(super) const KEEP_QUEUE_SLOTS: usize = 16;
const INLINE_IOVECS: usize = 64;

enum Step {
    Consumed(usize),
    /// The rest is an incomplete frame or request.
    Need,
    /// Stop reading for now; what is left waits in the connection's buffer.
    Pause,
    /// Nothing more is read from this connection.
    Stop,
}

impl<A: App> Shard<A> {
    pub(super) fn on_readable(&mut self, key: usize) {
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.core.conns.get_mut(key) else {
                return;
            };
            if conn.awaiting_reply || conn.reads_paused || conn.phase == Phase::Draining {
                return;
            }
            let mut tls = TlsEvents::default();
            let result = conn.io.read(&mut self.read_buf, &mut tls);
            if tls != TlsEvents::default() {
                self.on_tls_events(key, tls);
            }
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
                    record_received(&mut self.core, key, n);
                    let conn = &mut self.core.conns[key];
                    if conn.inbuf.is_empty() {
                        let mut buf = std::mem::take(&mut self.read_buf);
                        self.process(key, &mut buf[..n]);
                        self.read_buf = buf;
                    } else {
                        // Behind a partial frame: keep exactly what arrived
                        // (the buffer never holds more than the peer sent).
                        let before = conn.inbuf.capacity();
                        conn.inbuf.reserve_exact(n);
                        conn.inbuf.extend_from_slice(&self.read_buf[..n]);
                        self.core.held_input += conn.inbuf.capacity() - before;
                        self.process_leftover(key);
                    }
                    if n < READ_BUF / 2 {
                        // A short read means the socket is drained.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    let reason = if tls.failed {
                        DisconnectReason::TlsError
                    } else {
                        DisconnectReason::IoError
                    };
                    self.remove(key, reason);
                    return;
                }
            }
        }
        // Budget used up with data possibly left: come back next turn.
        if self.core.conns.contains(key) {
            self.core.reread.push(key);
        }
    }

    /// Counts TLS handshakes; sends out what the handshake left to send.
    fn on_tls_events(&mut self, key: usize, tls: TlsEvents) {
        if tls.handshake_done {
            metrics::inc(&self.core.metrics.tls_handshakes);
        }
        if self.core.conns[key].io.wants_write() {
            self.core.mark_dirty(key);
        }
    }

    /// Processes bytes held in the connection's own buffer.
    pub(super) fn process_leftover(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.inbuf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut conn.inbuf);
        self.core.held_input -= buf.capacity();
        self.process(key, &mut buf);
    }

    /// Whether `key`'s requests must wait: a reply is still owed (HTTP: one
    /// request at a time), too many bytes are queued for it, or the app is
    /// still preparing too many replies for it.
    fn input_saturated(&self, key: usize) -> bool {
        let conn = &self.core.conns[key];
        match conn.phase {
            Phase::Http => conn.awaiting_reply || conn.out_bytes > 0,
            Phase::Ws => {
                conn.out_bytes > self.core.pause_bytes
                    || conn
                        .session
                        .as_deref()
                        .is_some_and(|s| !A::accepts_input(s))
            }
            Phase::Closing | Phase::Draining => false,
        }
    }

    /// Consumes complete requests/frames from `buf`; what is left (a partial
    /// frame, or requests that must wait) is kept in the connection's own
    /// buffer, allocated only then.
    fn process(&mut self, key: usize, buf: &mut [u8]) {
        let mut pos = 0;
        let mut partial = false;
        let mut stopped = false;
        while pos < buf.len() {
            let Some(conn) = self.core.conns.get(key) else {
                return;
            };
            let step = if self.input_saturated(key) {
                Step::Pause
            } else {
                match conn.phase {
                    Phase::Http => self.process_http(key, &buf[pos..]),
                    Phase::Ws | Phase::Closing => self.process_frame(key, &mut buf[pos..]),
                    Phase::Draining => Step::Stop,
                }
            };
            match step {
                Step::Consumed(n) => pos += n,
                Step::Need => {
                    partial = true;
                    break;
                }
                Step::Pause => {
                    self.core.conns[key].reads_paused = true;
                    break;
                }
                Step::Stop => {
                    stopped = true;
                    break;
                }
            }
        }
        self.keep_rest(key, &buf[pos..], partial, stopped);
    }

    /// Stores unprocessed input, bounded per shard, and times partial frames.
    fn keep_rest(&mut self, key: usize, rest: &[u8], partial: bool, stopped: bool) {
        let now = self.core.now_ms;
        let over_budget = self.core.held_input + rest.len() > HELD_INPUT_MAX;
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        let incomplete = (partial && !rest.is_empty()) || conn.asm.is_some();
        conn.partial_since_ms = match (incomplete, conn.partial_since_ms) {
            (false, _) => 0,
            (true, 0) => now,
            (true, since) => since,
        };
        if rest.is_empty() || stopped {
            // Release the buffer: idle connections hold none.
            conn.inbuf = Vec::new();
            return;
        }
        if over_budget {
            conn.inbuf = Vec::new();
            self.overloaded(key);
            return;
        }
        let mut keep = Vec::with_capacity(rest.len());
        keep.extend_from_slice(rest);
        self.core.held_input += keep.capacity();
        conn.inbuf = keep;
    }

    /// The shard holds too much input: shed this connection.
    fn overloaded(&mut self, key: usize) {
        match self.core.conns[key].phase {
            Phase::Ws => self.core.close_ws(
                key,
                close_code::OVERLOAD,
                "server overloaded",
                DisconnectReason::SlowConsumer,
            ),
            _ => self.remove(key, DisconnectReason::Policy),
        }
    }

    fn process_http(&mut self, key: usize, buf: &[u8]) -> Step {
        match http::parse_request(buf) {
            Ok(None) => Step::Need,
            Ok(Some((req, used))) => {
                metrics::inc(&self.core.metrics.http_requests);
                let now = self.core.now_ms;
                let conn = &mut self.core.conns[key];
                conn.keep_alive = req.keep_alive;
                conn.head_request = req.is_head();
                conn.progress_ms = now;
                self.handle_http(key, req);
                Step::Consumed(used)
            }
            Err(e) => {
                self.core.conns[key].keep_alive = false;
                self.core
                    .reply_http(key, Response::error(e.status(), &e.to_string()));
                Step::Stop
            }
        }
    }

    fn handle_http(&mut self, key: usize, req: Request) {
        if self.app.is_upgrade(&req) {
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
                Some(if shutting_down {
                    Response::json(503, r#"{"status":"draining"}"#)
                } else if let Some(backend) = self.app.unready_backend() {
                    let body = serde_json::json!({ "status": "unavailable", backend: "down" });
                    Response::json(503, body.to_string())
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
            _ => self.app.on_http(&mut self.core, key, req),
        };
        match resp {
            Some(resp) => self.core.reply_http(key, resp),
            None => self.core.conns[key].awaiting_reply = true,
        }
    }

    /// `GET /ws`: validate, admit, authenticate, then switch protocols.
    fn upgrade(&mut self, key: usize, req: Request) {
        let cfg = self.core.shared.cfg.clone();
        let refuse = |core: &mut Core<A::Msg, A::Session>, resp: Response| {
            metrics::inc(&core.metrics.rejected_upgrades);
            core.log_refusal(key, &resp);
            core.conns[key].keep_alive = false;
            core.reply_http(key, resp);
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
        if !req.ws_key_valid() {
            return refuse(&mut self.core, Response::error(400, http::INVALID_WS_KEY));
        }
        let admission = self.app.admission();
        if admission && !cfg.allowed_origins.is_empty() {
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
        if admission {
            if let Err(refusal) = self.core.shared.ip_limiter.try_admit(ip, now_sec) {
                let msg = match refusal {
                    IpRefusal::TooManyConnections => "too many connections from this address",
                    IpRefusal::TooManyUpgrades => "too many upgrades from this address",
                };
                return refuse(&mut self.core, Response::error(429, msg));
            }
            self.core.conns[key].ip_counted = true;
        }
        let session = match self.app.authenticate(&mut self.core, &req) {
            Ok(session) => session,
            Err(refusal) => {
                metrics::inc(&self.core.metrics.auth_failures);
                let conn = &mut self.core.conns[key];
                if conn.ip_counted {
                    conn.ip_counted = false;
                    self.core.shared.ip_limiter.release(ip, now_sec);
                }
                return refuse(
                    &mut self.core,
                    Response::error(refusal.status, &refusal.message),
                );
            }
        };
        let accept = ws::accept_key(ws_key.as_bytes());
        let (deflate, extensions) = deflate::negotiate(&cfg, req.ws_extensions.as_deref()).unzip();
        let head = http::switching_protocols_with(&accept, extensions.as_deref());
        self.core.push_raw(key, head);
        let now = self.core.now_ms;
        let conn = &mut self.core.conns[key];
        conn.deflate = deflate;
        conn.phase = Phase::Ws;
        conn.last_recv_ms = now;
        conn.last_ping_ms = now;
        conn.session = Some(session);
        self.app.on_open(&mut self.core, key);
    }

    fn process_frame(&mut self, key: usize, buf: &mut [u8]) -> Step {
        let max = self.core.shared.cfg.max_frame_bytes;
        let compression = self.core.conns[key].deflate.is_some();
        let header = match ws::parse_client_frame_ext(buf, max, compression) {
            Ok(Parse::Frame(h)) => h,
            Ok(Parse::Incomplete { .. }) => return Step::Need,
            Err(e) => {
                self.fail(key, e);
                return Step::Stop;
            }
        };
        metrics::inc(&self.core.metrics.frames_in);
        let total = header.total_len();
        let payload = &buf[header.payload_start..total];
        let closing = self.core.conns[key].phase == Phase::Closing;
        let delivered = match header.opcode {
            OpCode::Ping => {
                if !closing {
                    self.core.send_frame(key, ws::frame(OpCode::Pong, payload));
                }
                Ok(())
            }
            OpCode::Pong => Ok(()),
            OpCode::Close => {
                self.on_close_frame(key, payload);
                return Step::Stop;
            }
            OpCode::Continuation => self.continue_message(key, header.fin, payload, closing),
            OpCode::Text | OpCode::Binary => self.start_message(key, header, payload, closing),
        };
        match delivered {
            Ok(()) => Step::Consumed(total),
            Err(e) => {
                self.fail(key, e);
                Step::Stop
            }
        }
    }

    /// The first frame of a data message: delivered whole, or the start of
    /// a fragmented one (a compressed one is assembled still compressed).
    fn start_message(
        &mut self,
        key: usize,
        header: ws::FrameHeader,
        payload: &[u8],
        closing: bool,
    ) -> Result<(), CloseError> {
        let opcode = header.opcode;
        let max = self.core.shared.cfg.max_frame_bytes;
        let conn = &mut self.core.conns[key];
        if conn.asm.is_some() {
            return Err(CloseError::new(
                close_code::PROTOCOL,
                "expected continuation",
            ));
        }
        if !header.fin {
            // Compressed fragments are checked for UTF-8 once inflated.
            let as_opcode = if header.rsv1 { OpCode::Binary } else { opcode };
            conn.asm = Some(Box::new(Assembler::start(as_opcode, payload, max)?));
            if let (true, Some(d)) = (header.rsv1, conn.deflate.as_mut()) {
                d.assembling = Some(opcode);
            }
            return Ok(());
        }
        if header.rsv1 {
            return self.deliver_compressed(key, opcode, payload, closing);
        }
        if opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
            return Err(CloseError::new(close_code::INVALID_UTF8, "invalid utf-8"));
        }
        if !closing {
            self.app.on_message(&mut self.core, key, opcode, payload);
        }
        Ok(())
    }

    /// A continuation frame; the last one delivers the message.
    fn continue_message(
        &mut self,
        key: usize,
        fin: bool,
        payload: &[u8],
        closing: bool,
    ) -> Result<(), CloseError> {
        let max = self.core.shared.cfg.max_frame_bytes;
        let conn = &mut self.core.conns[key];
        let Some(asm) = conn.asm.as_mut() else {
            return Err(CloseError::new(
                close_code::PROTOCOL,
                "unexpected continuation",
            ));
        };
        asm.extend(payload, max)?;
        if !fin {
            return Ok(());
        }
        let asm = conn.asm.take().expect("checked above");
        let compressed = conn.deflate.as_mut().and_then(|d| d.assembling.take());
        let Assembled::Message { opcode, payload } = asm.finish()? else {
            return Ok(());
        };
        match compressed {
            Some(opcode) => self.deliver_compressed(key, opcode, payload, closing),
            None => {
                if !closing {
                    self.app.on_message(&mut self.core, key, opcode, payload);
                }
                Ok(())
            }
        }
    }

    /// Inflates a compressed message (bounded by `--max-frame-bytes`) and
    /// hands it to the app.
    fn deliver_compressed(
        &mut self,
        key: usize,
        opcode: OpCode,
        compressed: &[u8],
        closing: bool,
    ) -> Result<(), CloseError> {
        let max = self.core.shared.cfg.max_frame_bytes;
        let core = &mut self.core;
        let Some(conn) = core.conns[key].deflate.as_deref_mut() else {
            return Err(CloseError::new(close_code::PROTOCOL, "reserved bits set"));
        };
        core.deflate.inflate(conn, opcode, compressed, max)?;
        if !closing {
            let message = std::mem::take(&mut self.core.deflate.out);
            self.app.on_message(&mut self.core, key, opcode, &message);
            self.core.deflate.out = message;
        }
        Ok(())
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
        self.core.close_ws(
            key,
            e.code,
            e.reason,
            DisconnectReason::from_close_code(e.code),
        );
        if let Some(conn) = self.core.conns.get_mut(key) {
            // Nothing more will be read from a violating peer.
            conn.asm = None;
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let queued = std::mem::take(&mut self.core.frames_queued);
        metrics::add(&self.core.metrics.frames_out, queued);
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
        // Deferred frames leave with this write.
        conn.deferred_until = 0;
        // TLS records left from the handshake or an earlier turn go first.
        let mut failed = conn.io.wants_write() && conn.io.flush_records().is_err();
        while !failed && !conn.out.is_empty() {
            let slices: SmallVec<[IoSlice<'_>; INLINE_IOVECS]> = conn
                .out
                .iter()
                .take(MAX_IOVECS)
                .enumerate()
                .map(|(i, frame)| {
                    let start = if i == 0 { conn.out_off } else { 0 };
                    IoSlice::new(&frame[start..])
                })
                .collect();
            let result = conn.io.write_vectored(&slices, &mut self.read_buf);
            drop(slices);
            match result {
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
        if written_total > 0 {
            conn.progress_ms = self.core.now_ms;
        }
        if conn.out.is_empty() && conn.out.capacity() <= KEEP_QUEUE_SLOTS {
            // An empty small queue holds no memory: idle connections are
            // most connections (S3), and a connect storm's few frames per
            // connection never pile up in the heap. A bigger one (a busy
            // member of a busy room) is kept for the next turn instead of
            // being grown again, and freed by the sweep (`Shard::tick`).
            conn.out = VecDeque::new();
        }
        let drained = conn.out.is_empty() && !conn.io.wants_write();
        let phase = conn.phase;
        let slow = phase == Phase::Ws && conn.out_bytes > self.core.shared.cfg.max_outbound_bytes;
        if !failed && !slow {
            if conn.drain_notice && conn.out_bytes <= self.core.pause_bytes {
                conn.drain_notice = false;
                self.core.drained.push(key);
            }
            if conn.reads_paused && !self.input_saturated(key) {
                self.core.conns[key].reads_paused = false;
                self.core.reread.push(key);
            }
        }
        if failed {
            self.remove(key, DisconnectReason::IoError);
        } else if slow {
            // Still unsent after the socket took what it could: the peer
            // reads slower than its rooms talk.
            self.core.close_ws(
                key,
                close_code::OVERLOAD,
                "slow consumer",
                DisconnectReason::SlowConsumer,
            );
        } else if drained && phase == Phase::Draining {
            // `remove` counts the connection closed before dropping the
            // socket sends the FIN, so a client that saw the end of the
            // response never finds it still counted in /metrics.
            self.remove(key, DisconnectReason::HttpDone);
        }
    }
}

/// Notes that bytes arrived: the heartbeat clock restarts.
fn record_received<M, S>(core: &mut Core<M, S>, key: usize, n: usize) {
    let conn = &mut core.conns[key];
    conn.last_recv_ms = core.now_ms;
    conn.unanswered_ping_ms = 0;
    metrics::add(&core.metrics.bytes_in, n as u64);
}
