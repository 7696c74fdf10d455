//! Cluster mode: several corechat nodes sharing one Redis (`docs/PROTOCOL.md`
//! section 8). This module is the Redis side only; the chat plugs it in
//! through a cluster `Router` (see "Integration" below).
//!
//! # Threads and the reactor rule
//!
//! Reactors never block on Redis. [`Broker::start`] spawns two unpinned
//! threads, like the store thread:
//! - the **command thread** owns one command connection. Shards queue
//!   requests through a cheap [`BrokerHandle`] (bounded channel; a full queue
//!   answers [`BrokerError::Busy`] at once, on the caller's thread). Each
//!   loop turn it drains every queued request and sends them as one pipeline,
//!   one round trip for all of them, then runs each request's reply callback
//!   ([`Reply`], the store's type) on its own thread: the callback should
//!   push to the shard's channel and wake its `mio::Waker`, exactly like
//!   `chat/store_client.rs` does with the store. It also refreshes this
//!   node's heartbeat (every `heartbeat_interval`), sweeps dead nodes
//!   (every `sweep_interval`) and checks the `boot` key (data loss).
//! - the **subscriber thread** owns the pub/sub connection: one channel per
//!   room with local members (`<prefix>room:<room>`) and one per user with
//!   local connections (`<prefix>user:<user>`, DMs). Plain SUBSCRIBE, not a
//!   pattern: `PSUBSCRIBE room:*` would send every node every room's
//!   traffic; exact channels make Redis send a node only what its members
//!   need. Not sharded pub/sub either: on a single Redis `SSUBSCRIBE` is
//!   the same as `SUBSCRIBE`; the keys carry a `{room}` hash tag, so moving
//!   to a Redis Cluster with `SSUBSCRIBE` later changes no key.
//!
//! Everything that comes from Redis by itself (frames, events) goes to the
//! [`Sink`] given at start, called on the broker's threads: frames in the
//! order the subscription received them.
//!
//! # Publishing: one atomic script
//!
//! The node builds the `message` JSON around the seq it does not know yet:
//! [`MessageParts::new`] gives `{"type":"message","room":"r","seq":` and
//! `,"from":...,"ts":...,"body":...}`. The Lua script (`scripts::PUBLISH`,
//! EVALSHA, EVAL on NOSCRIPT) checks the boot id, `INCR`s the room's seq,
//! creates the room's epoch if missing, concatenates prefix + seq + suffix,
//! `XADD`s it to the room's stream under id `<seq>-0` (so a range by seq is
//! exact; `MAXLEN ~ stream_maxlen`), `PUBLISH`es it (DM rooms: on both
//! users' channels, and lists the DM room for both users) and returns
//! (seq, epoch). Every node sends those same bytes; nobody re-encodes. The
//! `ack` is sent by the chat only when the reply says `Ok`: a failed or
//! ambiguous round trip (Redis died mid-call) answers an error, never an
//! ack. (Such a message may still have been stored: "unavailable" then
//! means "not acknowledged", not "not stored".)
//!
//! A published payload is `<seq> <epoch> <origin> <except> <room>\n<json>`
//! (see `scripts.rs`); the subscriber hands it over as a [`ChannelFrame`]
//! with the JSON as `Bytes`. Unnumbered frames (`typing`, `read`,
//! `user_joined`, `user_left`) carry seq 0 and are not stored.
//!
//! # Redis keys (prefix `P`, default `cc:`)
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P{room}:seq` | string | last seq (INCR) |
//! | `P{room}:epoch` | string | the room's epoch, created by the first publish or state read |
//! | `P{room}:log` | stream | messages, id `<seq>-0`, fields `seq ts frame` |
//! | `P{room}:read` | hash | user -> read marker (only grows, never past seq) |
//! | `P{room}:pn` | hash | `user\|node` -> display name JSON (presence per node) |
//! | `P{room}:pu` | hash | user -> number of nodes where present |
//! | `Prooms:<user>` | set | the user's `rooms` list |
//! | `Pnodes` | set | registered nodes |
//! | `Phb:<node>` | string, TTL | heartbeat (TTL `heartbeat_ttl`, refreshed every `heartbeat_interval`) |
//! | `Pnp:<node>` | set | `room\|user` entries the node holds in presence |
//! | `Pboot` | string | random id written at first connect: gone or changed = data lost |
//!
//! # Faults
//!
//! - **Redis down**: every request fails fast with
//!   [`BrokerError::Unavailable`], [`BrokerHandle::available`] is false
//!   (`/ready` 503), both threads reconnect with backoff; when both links are
//!   back the sink gets [`BrokerEvent::Recovered`], and
//!   [`BrokerEvent::CatchUp`] (`resubscribed: true`) with every channel once
//!   it is live again (the two links recover independently: either order).
//! - **Data lost** (Redis restarted empty): the `boot` key vanished. Noticed
//!   by the next heartbeat (within `heartbeat_interval`) or by the publish
//!   script itself (which refuses to number anything under a lost boot id):
//!   the sink gets [`BrokerEvent::HistoryLost`] before any publish of the
//!   new history is answered. New numbering starts at 1 under a new epoch
//!   (the script creates the epoch key when missing).
//! - **Dead node**: its heartbeat key expires after `heartbeat_ttl` (5 s);
//!   within `sweep_interval` another node's sweep removes its presence,
//!   publishes `user_left` on the rooms' channels (so every node's members
//!   get it) and reports [`BrokerEvent::PresenceLeft`] on the sweeping node.
//!   A clean stop ([`Broker::shutdown`]) does the same for its own entries
//!   at once.
//!
//! # Integration (what the chat does)
//!
//! Start: `Broker::start(BrokerConfig::new(url, node_id), sink)` in `server`,
//! keep the `Broker` for shutdown, give each shard `broker.handle()`. The
//! sink routes by the local router: [`Incoming::Frame`] with
//! `ChannelKind::Room` to the room's home shard, `ChannelKind::User` to the
//! user's home shard, [`Incoming::Event`] to every shard; each through a
//! channel + waker (one unbounded channel per shard, fed only by the broker).
//!
//! - `join` (first local member of a room on this node): home calls
//!   `subscribe_room(room)` and `state(room, user)` (seq, epoch, read for
//!   `joined`), then `range` for the replay; a [`GapTracker`] per room
//!   starting at that seq orders the live frames; `CatchUp` for the room
//!   (the subscription is live) → `tracker.catch_up()` → `range`.
//!   Presence: `presence_add` when the user's first local connection joins,
//!   `presence_remove` when the last leaves; the `user_joined`/`user_left`
//!   frames come back through the channel to every node (the sender's
//!   excepted). Last local member gone: `unsubscribe_room`.
//! - `publish`: home calls `publish(PublishReq { room, parts, ts })`; on
//!   `Ok(Published { seq, .. })` ack the sender (its frame arrives on the
//!   channel like everyone's, or the home feeds `parts.frame(seq)` to its
//!   tracker at once); on `Err` answer `unavailable`.
//! - `typing`/`read` frames to other nodes: `publish_ephemeral`. Read
//!   markers: `set_read`. `rooms`: `rooms_of`; listing: `set_listed`.
//!   `presence`: `presence(room)`. `history`: `range` (same [`RangeQuery`]
//!   semantics as the store).
//! - DMs: the user home calls `subscribe_user(user)` while the user has
//!   local connections; DM messages arrive as `ChannelKind::User` frames,
//!   ordered per (user, DM room) by a [`GapTracker`] at the user home
//!   (`chat/cluster/dm.rs`).
//! - `HistoryLost`: close the members of every room with 1012 and drop the
//!   rooms' trackers. `Down`/`Recovered`: nothing to do but answer
//!   `unavailable`; `PresenceReset`: call `presence_add` again for every
//!   local (room, user).
//! - `unready_backend()`: `(!handle.available()).then_some("broker")`.

mod command;
mod resp;
mod scripts;
mod subscriber;
pub mod tracker;

pub use self::tracker::{GapTracker, Step};
pub use crate::store::{RangeQuery, Reply};

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender, TrySendError};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Broker settings; [`BrokerConfig::new`] gives a server's defaults.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// This node's id: unique in the cluster, no whitespace.
    pub node_id: String,
    /// Prepended to every key and channel.
    pub prefix: String,
    /// `XADD ... MAXLEN ~ N`: about this many messages kept per room.
    pub stream_maxlen: u64,
    /// Stored messages older than this (ms) are trimmed; 0 keeps them.
    pub retention_age_ms: u64,
    /// Capacity of the request queue.
    pub queue_capacity: usize,
    /// Requests sent in one pipeline at most.
    pub batch_max: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_ttl: Duration,
    pub sweep_interval: Duration,
    /// Connect, read and write timeout of one round trip.
    pub io_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl BrokerConfig {
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        BrokerConfig {
            url: url.into(),
            node_id: node_id.into(),
            prefix: "cc:".into(),
            stream_maxlen: 10_000,
            retention_age_ms: 0,
            queue_capacity: 65_536,
            batch_max: 4096,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            io_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// Redis cannot be reached (or the round trip failed): nothing was
    /// acknowledged. Retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request queue is full; nothing was queued.
    #[error("broker queue full")]
    Busy,
    /// Redis lost its data; the request was refused (see `HistoryLost`).
    #[error("broker data lost")]
    HistoryLost,
    /// Redis answered with an error (a bug, or a bad request).
    #[error("broker error: {0}")]
    Server(String),
    /// The broker was stopped.
    #[error("broker stopped")]
    Stopped,
    #[error("invalid broker request: {0}")]
    Invalid(String),
}

/// The `message` JSON of a message, cut around its seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageParts {
    /// `{"type":"message","room":"r","seq":`
    pub prefix: String,
    /// `,"from":"u","name":"U","ts":1,"body":...}`
    pub suffix: String,
}

impl MessageParts {
    /// The parts of the frame [`crate::protocol::write_message`] writes
    /// (its `seq` is ignored).
    pub fn new(fields: &crate::protocol::MessageFields<'_>) -> Self {
        let mut out = Vec::with_capacity(128 + fields.body.len());
        crate::protocol::write_message(
            &mut out,
            &crate::protocol::MessageFields { seq: 0, ..*fields },
        );
        let text = String::from_utf8(out).unwrap_or_default();
        // The room (no quotes in a valid name) precedes the first `"seq":`.
        let at = text.find("\"seq\":0").map_or(0, |i| i + 6);
        MessageParts {
            prefix: text[..at].to_string(),
            suffix: text[at + 1..].to_string(),
        }
    }

    /// The JSON with `seq` in place: the same bytes Redis stores.
    pub fn frame(&self, seq: u64) -> String {
        format!("{}{}{}", self.prefix, seq, self.suffix)
    }
}

/// A message to number, store and publish.
#[derive(Clone, Debug)]
pub struct PublishReq {
    pub room: String,
    pub parts: MessageParts,
    /// The `ts` written in `parts` (stored beside the frame).
    pub ts: u64,
}

/// The answer to a publish: the message is numbered and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub epoch: String,
}

/// A room's numbering state (`joined`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomState {
    pub seq: u64,
    pub epoch: String,
    /// The asking user's read marker.
    pub read: u64,
    /// Users present in the room on any node, the asking user included.
    pub members: u64,
    /// Other users' read markers, if asked (highest first).
    pub reads: Vec<(String, u64)>,
}

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    pub seq: u64,
    pub ts: u64,
    /// The `message` JSON, as published.
    pub json: Bytes,
}

/// A range read: entries in ascending seq, and whether more exist beyond
/// them (further for `after`, older otherwise), as `store::RangeQuery` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangePage {
    pub entries: Vec<StreamEntry>,
    pub has_more: bool,
}

/// One entry of a user's `rooms` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomListEntry {
    pub room: String,
    pub seq: u64,
    pub read: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// A room's channel: its messages and unnumbered frames.
    Room,
    /// A user's channel: the user's DM rooms.
    User,
}

/// A frame received from a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelFrame {
    pub kind: ChannelKind,
    /// The room (Room) or user (User) the channel belongs to.
    pub target: String,
    /// The room the frame is about (for DMs: the DM room).
    pub room: String,
    /// The message's seq; 0 for an unnumbered frame.
    pub seq: u64,
    /// The room's epoch (numbered frames only).
    pub epoch: Option<String>,
    /// The node that published it.
    pub origin: String,
    /// Not for this user's connections (typing, presence of the sender).
    pub except_user: Option<String>,
    /// The frame's JSON.
    pub json: Bytes,
}

/// What the broker reports by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerEvent {
    /// `available()` turned false (a link to Redis is down).
    Down { reason: String },
    /// Both links are back.
    Recovered,
    /// These channels are subscribed now (new, or again after a cut: then
    /// `resubscribed`); frames published before may have been missed:
    /// catch up from the stream (`range` after the last delivered seq).
    CatchUp {
        rooms: Vec<String>,
        users: Vec<String>,
        resubscribed: bool,
    },
    /// Redis lost its data: close every room's members with 1012; numbering
    /// starts over under new epochs.
    HistoryLost,
    /// This node's sweep removed dead nodes' users: (room, user) pairs that
    /// left presence (`user_left` was already published on their channels).
    PresenceLeft { pairs: Vec<(String, String)> },
    /// This node's own presence entries were removed (it was cut off longer
    /// than the heartbeat TTL): register local presence again.
    PresenceReset,
}

/// What the sink receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Frame(ChannelFrame),
    Event(BrokerEvent),
}

/// Called on the broker's threads (events may be reported while an
/// internal lock is held); must be quick and must not wait for the broker:
/// push to a channel and wake a shard.
pub type Sink = Arc<dyn Fn(Incoming) + Send + Sync>;

/// State shared between the threads and the handles.
pub(crate) struct Shared {
    cfg: BrokerConfig,
    sink: Sink,
    /// (command link up, subscriber link up, last reported availability)
    links: Mutex<(bool, bool, bool)>,
    available: AtomicBool,
    stop: AtomicBool,
    /// Pipelines sent (round trips) and requests they carried (metrics).
    round_trips: AtomicU64,
    requests: AtomicU64,
}

impl Shared {
    fn emit(&self, e: BrokerEvent) {
        (self.sink)(Incoming::Event(e));
    }

    /// Records a link's state and reports a change of availability.
    fn set_link(&self, command: bool, up: bool, reason: &str) {
        let mut l = self.links.lock();
        if command {
            l.0 = up;
        } else {
            l.1 = up;
        }
        let now = l.0 && l.1;
        self.available.store(now, Ordering::Release);
        if now != l.2 {
            l.2 = now;
            // Reported under the lock so Down/Recovered alternate.
            self.emit(if now {
                BrokerEvent::Recovered
            } else {
                BrokerEvent::Down {
                    reason: reason.to_string(),
                }
            });
        }
    }
}

pub(crate) enum Request {
    Publish(PublishReq, Reply<Result<Published, BrokerError>>),
    Ephemeral {
        room: String,
        json: String,
        except_user: Option<String>,
    },
    State {
        room: String,
        user: String,
        /// Return up to this many other users' read markers.
        reads: usize,
        reply: Reply<Result<RoomState, BrokerError>>,
    },
    Range {
        room: String,
        q: RangeQuery,
        reply: Reply<Result<RangePage, BrokerError>>,
    },
    SetRead {
        room: String,
        user: String,
        seq: u64,
        reply: Option<Reply<Result<Option<u64>, BrokerError>>>,
    },
    SetListed {
        user: String,
        room: String,
        listed: bool,
    },
    RoomsOf {
        user: String,
        reply: Reply<Result<Vec<RoomListEntry>, BrokerError>>,
    },
    PresenceAdd {
        room: String,
        user: String,
        name_json: String,
        reply: Option<Reply<Result<bool, BrokerError>>>,
    },
    PresenceRemove {
        room: String,
        user: String,
        reply: Option<Reply<Result<bool, BrokerError>>>,
    },
    Presence {
        room: String,
        reply: Reply<Result<Vec<(String, String)>, BrokerError>>,
    },
    /// Stop the command thread; `clean`: remove this node's entries first.
    Stop {
        clean: bool,
    },
}

impl Request {
    /// Answers the request with an error (its reply, if any).
    pub(crate) fn fail(self, e: BrokerError) {
        match self {
            Request::Publish(_, reply) => call_reply(reply, Err(e)),
            Request::State { reply, .. } => call_reply(reply, Err(e)),
            Request::Range { reply, .. } => call_reply(reply, Err(e)),
            Request::SetRead { reply, .. } => opt_reply(reply, Err(e)),
            Request::RoomsOf { reply, .. } => call_reply(reply, Err(e)),
            Request::PresenceAdd { reply, .. } => opt_reply(reply, Err(e)),
            Request::PresenceRemove { reply, .. } => opt_reply(reply, Err(e)),
            Request::Presence { reply, .. } => call_reply(reply, Err(e)),
            Request::Ephemeral { .. } | Request::SetListed { .. } | Request::Stop { .. } => {}
        }
    }
}

/// Runs a reply without letting a panicking callback kill a broker thread.
pub(crate) fn call_reply<T>(reply: Reply<T>, value: T) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || reply(value))).is_err() {
        tracing::error!("broker reply callback panicked");
    }
}

pub(crate) fn opt_reply<T>(reply: Option<Reply<T>>, value: T) {
    if let Some(r) = reply {
        call_reply(r, value);
    }
}

pub(crate) enum SubCtl {
    Subscribe(ChannelKind, String),
    Unsubscribe(ChannelKind, String),
}

/// Cheap to clone; every shard holds one. No method blocks.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: Sender<Request>,
    sub_tx: Sender<SubCtl>,
    shared: Arc<Shared>,
}

/// A name that can go into a channel header (no whitespace, not empty).
fn plain(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b.is_ascii_whitespace() || b == b'|')
}

impl BrokerHandle {
    /// Both links to Redis are up (`/ready`).
    pub fn available(&self) -> bool {
        self.shared.available.load(Ordering::Acquire)
    }

    /// (round trips, requests sent in them) so far: requests per round trip
    /// is how much pipelining saves (for `/metrics`).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.shared.round_trips.load(Ordering::Relaxed),
            self.shared.requests.load(Ordering::Relaxed),
        )
    }

    pub fn node_id(&self) -> &str {
        &self.shared.cfg.node_id
    }

    fn send(&self, req: Request) {
        match self.tx.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => r.fail(BrokerError::Busy),
            Err(TrySendError::Disconnected(r)) => r.fail(BrokerError::Stopped),
        }
    }

    /// Numbers, stores and publishes a message; `reply` gets (seq, epoch)
    /// once Redis has it, or an error (then: no ack).
    pub fn publish(&self, req: PublishReq, reply: Reply<Result<Published, BrokerError>>) {
        if !plain(&req.room) {
            return call_reply(reply, Err(BrokerError::Invalid("room".into())));
        }
        self.send(Request::Publish(req, reply));
    }

    /// Publishes an unnumbered frame (typing, read...) on the room's channel
    /// (a DM room's: both users' channels). Not stored; best effort.
    pub fn publish_ephemeral(&self, room: &str, json: String, except_user: Option<&str>) {
        if !plain(room) {
            return;
        }
        self.send(Request::Ephemeral {
            room: room.to_string(),
            json,
            except_user: except_user.map(str::to_string),
        });
    }

    /// The room's seq and epoch (created if new) and `user`'s read marker.
    pub fn state(&self, room: &str, user: &str, reply: Reply<Result<RoomState, BrokerError>>) {
        self.state_with_reads(room, user, 0, reply);
    }

    /// [`Self::state`] plus up to `reads` other users' read markers, the
    /// highest first (for `joined.reads`).
    pub fn state_with_reads(
        &self,
        room: &str,
        user: &str,
        reads: usize,
        reply: Reply<Result<RoomState, BrokerError>>,
    ) {
        self.send(Request::State {
            room: room.to_string(),
            user: user.to_string(),
            reads,
            reply,
        });
    }

    /// Stored messages of a room, as `store::RangeQuery` says.
    pub fn range(&self, room: &str, q: RangeQuery, reply: Reply<Result<RangePage, BrokerError>>) {
        self.send(Request::Range {
            room: room.to_string(),
            q,
            reply,
        });
    }

    /// Moves a read marker forward (never back, never past the room's seq);
    /// the reply says the new marker if it changed.
    pub fn set_read(
        &self,
        room: &str,
        user: &str,
        seq: u64,
        reply: Option<Reply<Result<Option<u64>, BrokerError>>>,
    ) {
        self.send(Request::SetRead {
            room: room.to_string(),
            user: user.to_string(),
            seq,
            reply,
        });
    }

    /// Adds or removes a room in the user's `rooms` list (fire and forget).
    pub fn set_listed(&self, user: &str, room: &str, listed: bool) {
        self.send(Request::SetListed {
            user: user.to_string(),
            room: room.to_string(),
            listed,
        });
    }

    /// The user's `rooms` list with each room's seq and the user's marker.
    pub fn rooms_of(&self, user: &str, reply: Reply<Result<Vec<RoomListEntry>, BrokerError>>) {
        self.send(Request::RoomsOf {
            user: user.to_string(),
            reply,
        });
    }

    /// The user is present in the room on this node (first local
    /// connection). `true`: first in the whole cluster; `user_joined` was
    /// published on the room's channel.
    pub fn presence_add(
        &self,
        room: &str,
        user: &str,
        name_json: &str,
        reply: Option<Reply<Result<bool, BrokerError>>>,
    ) {
        self.send(Request::PresenceAdd {
            room: room.to_string(),
            user: user.to_string(),
            name_json: name_json.to_string(),
            reply,
        });
    }

    /// The user's last local connection left the room. `true`: present on
    /// no node any more; `user_left` was published.
    pub fn presence_remove(
        &self,
        room: &str,
        user: &str,
        reply: Option<Reply<Result<bool, BrokerError>>>,
    ) {
        self.send(Request::PresenceRemove {
            room: room.to_string(),
            user: user.to_string(),
            reply,
        });
    }

    /// Users present in a room on any node: (user, name JSON), sorted.
    pub fn presence(&self, room: &str, reply: Reply<Result<Vec<(String, String)>, BrokerError>>) {
        self.send(Request::Presence {
            room: room.to_string(),
            reply,
        });
    }

    fn sub(&self, ctl: SubCtl) {
        // Unbounded: one entry per room/user change, bounded by the
        // chat's own state.
        let _ = self.sub_tx.send(ctl);
    }

    /// Receive the room's channel on this node (idempotent). A
    /// `CatchUp` event tells when the subscription is live.
    pub fn subscribe_room(&self, room: &str) {
        self.sub(SubCtl::Subscribe(ChannelKind::Room, room.to_string()));
    }

    pub fn unsubscribe_room(&self, room: &str) {
        self.sub(SubCtl::Unsubscribe(ChannelKind::Room, room.to_string()));
    }

    /// Receive the user's DMs on this node (idempotent).
    pub fn subscribe_user(&self, user: &str) {
        self.sub(SubCtl::Subscribe(ChannelKind::User, user.to_string()));
    }

    pub fn unsubscribe_user(&self, user: &str) {
        self.sub(SubCtl::Unsubscribe(ChannelKind::User, user.to_string()));
    }
}

/// Owns the broker threads. Keep it for shutdown.
pub struct Broker {
    handle: BrokerHandle,
    command: Option<JoinHandle<()>>,
    subscriber: Option<JoinHandle<()>>,
}

impl Broker {
    /// Starts the threads; never waits for Redis (it connects in the
    /// background; `available()` says when it is up).
    pub fn start(cfg: BrokerConfig, sink: Sink) -> Result<Broker, BrokerError> {
        if !plain(&cfg.node_id) {
            return Err(BrokerError::Invalid(
                "node id must be non-empty without whitespace or '|'".into(),
            ));
        }
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| BrokerError::Invalid(format!("redis url: {e}")))?;
        let target = subscriber::Target::from_client(&client)?;
        let (tx, rx) = bounded(cfg.queue_capacity.max(1));
        let (sub_tx, sub_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            cfg,
            sink,
            links: Mutex::new((false, false, false)),
            available: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            round_trips: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let s = shared.clone();
        let command = std::thread::Builder::new()
            .name("broker-cmd".into())
            .spawn(move || command::run(s, client, rx))
            .map_err(|e| BrokerError::Unavailable(format!("spawn: {e}")))?;
        let s = shared.clone();
        let subscriber = std::thread::Builder::new()
            .name("broker-sub".into())
            .spawn(move || subscriber::run(s, target, sub_rx))
            .map_err(|e| BrokerError::Unavailable(format!("spawn: {e}")))?;
        Ok(Broker {
            handle: BrokerHandle { tx, sub_tx, shared },
            command: Some(command),
            subscriber: Some(subscriber),
        })
    }

    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Clean stop: removes this node's presence (publishing `user_left`)
    /// and registration, then ends the threads. Requests still queued are
    /// answered first; later ones get `Stopped`.
    pub fn shutdown(mut self) {
        self.stop(true);
    }

    /// Test hook: ends the threads without touching Redis, as if the
    /// process died (its heartbeat simply stops).
    #[doc(hidden)]
    pub fn kill_for_test(mut self) {
        self.stop(false);
    }

    fn stop(&mut self, clean: bool) {
        // The stop request waits behind queued requests (never refused for
        // a full queue: blocking here is fine, this is not a reactor).
        let _ = self.handle.tx.send(Request::Stop { clean });
        if let Some(t) = self.command.take() {
            let _ = t.join();
        }
        self.handle.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.subscriber.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.command.is_some() || self.subscriber.is_some() {
            self.stop(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{write_message, MessageFields};

    #[test]
    fn message_parts_rebuild_the_frame() {
        let f = MessageFields {
            room: "lobby",
            seq: 0,
            from: "alice",
            name_json: "\"Al \\\"seq\\\":0\"",
            ts: 1_795_430_000_000,
            body: "{\"seq\":0,\"n\":12345678901234567890}",
        };
        let parts = MessageParts::new(&f);
        for seq in [1u64, 42, 9_007_199_254_740_991] {
            let mut want = Vec::new();
            write_message(&mut want, &MessageFields { seq, ..f });
            assert_eq!(parts.frame(seq).as_bytes(), &want[..]);
        }
        assert_eq!(
            parts.prefix,
            "{\"type\":\"message\",\"room\":\"lobby\",\"seq\":"
        );
    }

    #[test]
    fn plain_names() {
        assert!(plain("dm:a:b"));
        assert!(!plain("a b"));
        assert!(!plain(""));
        assert!(!plain("a|b"));
    }
}
