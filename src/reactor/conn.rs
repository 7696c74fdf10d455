//! Per-connection state. Kept small: an idle WebSocket connection holds no
//! read buffer, no assembly buffer and an empty (unallocated) send queue.

use super::deflate::ConnDeflate;
use super::transport::Transport;
use crate::ws::Assembler;
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::IpAddr;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Plain HTTP (keep-alive) until a request upgrades it.
    Http,
    /// An open WebSocket.
    Ws,
    /// Our close frame is queued or sent; waiting for the peer, then drop.
    Closing,
    /// A last response or close echo is queued; drop once it is written.
    Draining,
}

pub struct Conn<S> {
    /// The socket, plain or behind TLS.
    pub io: Transport,
    /// Unique on this shard (slab keys are reused, ids are not), so bus
    /// messages addressed to a closed connection cannot reach its successor.
    pub id: u64,
    pub ip: IpAddr,
    pub phase: Phase,
    /// Bytes of an incomplete frame or request left over from the last read.
    pub inbuf: Vec<u8>,
    /// A fragmented message being reassembled.
    pub asm: Option<Box<Assembler>>,
    /// Frames waiting to be written, shared with other connections.
    pub out: VecDeque<Bytes>,
    /// Bytes of `out[0]` already written.
    pub out_off: usize,
    /// Unsent bytes in `out`.
    pub out_bytes: usize,
    /// Coarse clock (ms) of the last byte received.
    pub last_recv_ms: u64,
    /// Coarse clock (ms) of the last ping we sent.
    pub last_ping_ms: u64,
    /// When the oldest ping the peer has not answered yet (by sending
    /// anything) went out; 0: none. The heartbeat timeout counts from it,
    /// so a late tick never drops a peer that had no ping to answer.
    pub unanswered_ping_ms: u64,
    /// HTTP: when the connection last made progress (opened, a request
    /// parsed, response bytes written); the handshake timeout counts from it.
    pub progress_ms: u64,
    /// When an incomplete frame or fragmented message started (0: none).
    pub partial_since_ms: u64,
    /// When a closing connection is dropped regardless of the peer.
    pub deadline_ms: u64,
    /// Already on the shard's list of connections to flush this turn.
    pub dirty: bool,
    /// Deferred frames (presence) are queued but not yet flushed: they
    /// leave with the next write, or at this shard clock (ms). 0: none.
    pub deferred_until: u64,
    /// Counted against the per-IP connection cap.
    pub ip_counted: bool,
    /// An HTTP request is being answered asynchronously; read no more.
    pub awaiting_reply: bool,
    pub keep_alive: bool,
    /// The request being answered is a HEAD: its response has no body.
    pub head_request: bool,
    /// We sent a close frame (the peer's close then ends the connection).
    pub close_sent: bool,
    /// Reading stopped: the server owes this connection too much (queued
    /// bytes, or replies the app is still preparing). Resumed on drain.
    pub reads_paused: bool,
    /// The app asked to hear when the send queue drains (paced replay).
    pub drain_notice: bool,
    /// The app's session once the WebSocket is open.
    pub session: Option<Box<S>>,
    /// permessage-deflate, when negotiated.
    pub deflate: Option<Box<ConnDeflate>>,
}

impl<S> Conn<S> {
    pub fn new(io: Transport, id: u64, ip: IpAddr, now_ms: u64) -> Self {
        Conn {
            io,
            id,
            ip,
            phase: Phase::Http,
            inbuf: Vec::new(),
            asm: None,
            out: VecDeque::new(),
            out_off: 0,
            out_bytes: 0,
            last_recv_ms: now_ms,
            last_ping_ms: now_ms,
            unanswered_ping_ms: 0,
            progress_ms: now_ms,
            partial_since_ms: 0,
            deadline_ms: 0,
            dirty: false,
            deferred_until: 0,
            ip_counted: false,
            awaiting_reply: false,
            keep_alive: true,
            head_request: false,
            close_sent: false,
            reads_paused: false,
            drain_notice: false,
            session: None,
            deflate: None,
        }
    }
}
