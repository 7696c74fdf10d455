//! The seam between the transport and what it serves.
//!
//! The reactor (`crate::reactor`) owns sockets, framing, HTTP parsing,
//! timers and the inter-shard bus; it knows nothing of chat. It calls an
//! [`App`] at each event, and the app answers only through a [`Port`]: send a
//! frame to a connection, close it, answer HTTP, post to another shard. The
//! chat (`crate::chat`) and the Autobahn echo server (`crate::echo`) are the
//! two apps; tests drive the chat through a fake port with no sockets.

use crate::bus::ConnRef;
use crate::config::Config;
use crate::http::{Request, Response};
use crate::metrics::{DisconnectReason, ShardMetrics};
use crate::ws::{OpCode, SharedFrame};
use bytes::Bytes;
use mio::Waker;
use std::sync::Arc;

/// What an app may do to the shard it runs on. `M` is the app's bus message,
/// `S` its per-connection session.
pub trait Port<M, S> {
    /// This shard's index, and how many shards the process has.
    fn shard(&self) -> usize;
    fn shards(&self) -> usize;
    /// The shard's coarse clock (ms since start), updated once per turn.
    fn now_ms(&self) -> u64;
    fn config(&self) -> &Config;
    fn metrics(&self) -> &ShardMetrics;
    /// The peer's address (admission and per-address limits).
    fn peer_ip(&self, key: usize) -> Option<std::net::IpAddr>;
    /// A reference to a local connection that other shards can hold.
    fn conn_ref(&self, key: usize) -> ConnRef;
    /// The local key of a connection, if `r` still names a live one.
    fn resolve(&self, r: ConnRef) -> Option<usize>;
    fn session(&self, key: usize) -> Option<&S>;
    fn session_mut(&mut self, key: usize) -> Option<&mut S>;
    /// Queues a ready-made frame on an open WebSocket.
    fn send(&mut self, key: usize, frame: Bytes);
    /// Queues the same frame on many connections (the fan-out loop).
    fn send_many(&mut self, keys: &[usize], frame: &Bytes) {
        for &key in keys {
            self.send(key, frame.clone());
        }
    }
    /// Queues a shared frame: compressed for a connection that negotiated
    /// permessage-deflate (made once for all of them), else plain.
    fn send_shared(&mut self, key: usize, frame: &SharedFrame) {
        self.send(key, frame.plain().clone());
    }
    /// [`Port::send_shared`] to many connections (a room's fan-out).
    fn send_many_shared(&mut self, keys: &[usize], frame: &SharedFrame) {
        for &key in keys {
            self.send_shared(key, frame);
        }
    }
    /// [`Port::send_shared`] for a frame that need not leave this turn
    /// (presence): it goes with the connection's next write, or within
    /// `--presence-flush-ms`. Order on the connection is kept.
    fn send_shared_deferred(&mut self, key: usize, frame: &SharedFrame) {
        self.send_shared(key, frame);
    }
    /// Asks for a turn (and so `App::end_of_turn`) by this clock (ms); asked
    /// again each turn while still needed.
    fn wake_at(&mut self, _at_ms: u64) {}
    /// Starts the closing handshake; `why` labels the disconnect metric.
    fn close(&mut self, key: usize, code: u16, reason: &str, why: DisconnectReason);
    /// Answers an HTTP request that `App::on_http` deferred (or any other).
    fn respond_http(&mut self, key: usize, resp: Response);
    /// Posts a message to a shard (this one included: handled this turn).
    fn bus(&mut self, dest: usize, msg: M);
    /// Wakes this shard from another thread (store completions).
    fn waker(&self) -> Arc<Waker>;
    /// The app can take requests from `key` again (see `App::accepts_input`):
    /// reading resumes if nothing else holds it back.
    fn resume_input(&mut self, key: usize);
    /// Calls `App::on_drained` once `key`'s send queue has drained (the
    /// pacing of long replies: the next part is made when the last is gone).
    fn notify_drained(&mut self, key: usize);
}

/// The port as an app's hooks receive it.
pub type AppPort<A> = dyn Port<<A as App>::Msg, <A as App>::Session>;

/// A refused WebSocket upgrade: HTTP status and the `error` text.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

/// The hooks the reactor calls. Every hook runs on the shard's own thread.
pub trait App {
    /// What shards of this app say to each other.
    type Msg: Send + 'static;
    /// Per-connection state once the WebSocket is open.
    type Session: Send + 'static;

    /// Whether this request asks for the WebSocket (checked before routing).
    fn is_upgrade(&self, req: &Request) -> bool;
    /// Whether admission control (Origin list, per-IP caps) applies.
    fn admission(&self) -> bool;
    /// Decides an upgrade: the new session, or why not.
    fn authenticate(
        &mut self,
        port: &mut AppPort<Self>,
        req: &Request,
    ) -> Result<Box<Self::Session>, Refusal>;
    /// The WebSocket `key` is open (its session installed).
    fn on_open(&mut self, port: &mut AppPort<Self>, key: usize);
    /// A complete text or binary message (UTF-8 already checked for text).
    fn on_message(&mut self, port: &mut AppPort<Self>, key: usize, opcode: OpCode, payload: &[u8]);
    fn on_bus(&mut self, port: &mut AppPort<Self>, msg: Self::Msg);
    /// An HTTP request the transport does not serve itself; `None`: the app
    /// answers later with `Port::respond_http` (reading pauses until then).
    fn on_http(&mut self, port: &mut AppPort<Self>, key: usize, req: Request) -> Option<Response>;
    /// The connection is gone; its session is handed back.
    fn on_disconnect(
        &mut self,
        port: &mut AppPort<Self>,
        key: usize,
        conn: ConnRef,
        session: Box<Self::Session>,
    );
    /// After the turn's events and bus messages, before the bus is flushed.
    fn end_of_turn(&mut self, port: &mut AppPort<Self>);
    /// Periodic housekeeping (every few ms to 250 ms).
    fn on_tick(&mut self, port: &mut AppPort<Self>);
    /// `None` when the backends behind `/ready` are up, else which is down.
    fn unready_backend(&self) -> Option<&'static str>;
    /// Unix time (s) at which the session's credentials expire.
    fn expires_at(session: &Self::Session) -> Option<u64>;
    /// False while the app is still preparing too many replies for this
    /// session: the reactor then stops reading its requests (back-pressure),
    /// until `Port::resume_input`.
    fn accepts_input(session: &Self::Session) -> bool;
    /// The send queue drained after `Port::notify_drained`.
    fn on_drained(&mut self, port: &mut AppPort<Self>, key: usize);
}
