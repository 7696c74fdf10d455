//! Cluster mode (`--redis`): the chat's side of the broker.
//!
//! - [`sinks`] builds the broker's [`Sink`]: room frames go to the room's
//!   home shard, user (DM) frames to the user's home shard, events to every
//!   shard, each through one unbounded channel per shard and its waker.
//! - The room home does not number: `publish` asks Redis, which numbers,
//!   stores and publishes; the frames come back on the room's channel, go
//!   through the room's [`GapTracker`] (gaps filled from the stream), into
//!   the ring and out to the local member shards exactly as on one node.
//! - Broker answers (publish, state, gap reads, presence, read, rooms) come
//!   back as [`BrokerDone`] on the shard that asked, taken in `end_of_turn`.

mod dm;
mod join;

use super::frames::{self, RoomEntry};
use super::msg::{Delivery, MemberMsg, PublishReq};
use super::room::{JoinRequest, PresenceEvent};
use super::{now_unix_ms, ChatApp, ChatPort, RoomName, Seq, UserId};
use crate::broker::{
    BrokerError, BrokerEvent, BrokerHandle, ChannelFrame, ChannelKind, GapTracker, Incoming,
    MessageParts, Published, RangePage, RangeQuery, RoomListEntry, RoomState, Sink, Step,
    StreamEntry,
};
use crate::bus::{home_of, ConnRef, ReplyTo};
use crate::protocol::{ErrorCode, MessageFields, ProtoError, ReqId};
use crate::store::StoredMessage;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Frames held per room while its first state read is in flight.
const EARLY_MAX: usize = 10_000;

/// One shard's end of the broker: what the sink sends it, and its waker
/// (registered by the shard at its first turn).
pub struct ShardFeed {
    rx: Receiver<Incoming>,
    waker: Arc<OnceLock<Arc<Waker>>>,
}

/// The sink for `Broker::start` and one feed per shard.
pub fn sinks(shards: usize) -> (Sink, Vec<ShardFeed>) {
    let shards = shards.max(1);
    let mut txs: Vec<Sender<Incoming>> = Vec::with_capacity(shards);
    let mut wakers = Vec::with_capacity(shards);
    let mut feeds = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = crossbeam_channel::unbounded();
        let waker: Arc<OnceLock<Arc<Waker>>> = Arc::new(OnceLock::new());
        txs.push(tx);
        wakers.push(waker.clone());
        feeds.push(ShardFeed { rx, waker });
    }
    let send = move |shard: usize, item: Incoming| {
        if txs[shard].send(item).is_ok() {
            if let Some(w) = wakers[shard].get() {
                let _ = w.wake();
            }
        }
    };
    let sink: Sink = Arc::new(move |item: Incoming| match item {
        Incoming::Frame(f) => {
            let shard = match f.kind {
                ChannelKind::Room => home_of(&f.room, shards),
                ChannelKind::User => home_of(&f.target, shards),
            };
            send(shard, Incoming::Frame(f));
        }
        Incoming::Event(e) => {
            for shard in 0..shards {
                send(shard, Incoming::Event(e.clone()));
            }
        }
    });
    (sink, feeds)
}

/// A broker answer, delivered on the shard that asked.
pub(super) enum BrokerDone {
    Published {
        room: RoomName,
        reply: ReplyTo,
        id: ReqId,
        ts: u64,
        result: Result<Published, BrokerError>,
    },
    State {
        room: RoomName,
        join: JoinRequest,
        result: Result<RoomState, BrokerError>,
    },
    Gap {
        room: RoomName,
        result: Result<RangePage, BrokerError>,
    },
    Presence {
        room: RoomName,
        conn: ConnRef,
        id: ReqId,
        result: Result<Vec<(String, String)>, BrokerError>,
    },
    Read {
        room: RoomName,
        user: UserId,
        result: Result<Option<u64>, BrokerError>,
    },
    Rooms {
        conn: ConnRef,
        id: ReqId,
        result: Result<Vec<RoomListEntry>, BrokerError>,
    },
    DmRooms {
        user: UserId,
        result: Result<Vec<RoomListEntry>, BrokerError>,
    },
    DmGap {
        user: UserId,
        room: RoomName,
        result: Result<RangePage, BrokerError>,
    },
}

/// A shard's cluster state.
pub(super) struct Cluster {
    pub(super) broker: BrokerHandle,
    feed: ShardFeed,
    done_tx: Sender<BrokerDone>,
    done_rx: Receiver<BrokerDone>,
    /// DM tracking of the users homed here with local connections.
    dms: std::collections::HashMap<UserId, dm::DmTrack>,
}

/// A room's cluster state at its home.
#[derive(Default)]
pub(super) struct ClusterRoom {
    /// Orders the room's numbered frames (None until the first state read).
    pub(super) tracker: Option<GapTracker>,
    /// Numbered frames that arrived before the tracker existed.
    early: Vec<(Seq, Bytes)>,
    /// The room's channel is subscribed.
    pub(super) subscribed: bool,
    /// The subscription is confirmed (a `CatchUp` named the room): frames
    /// published from now on reach this node.
    live: bool,
    /// Joins waiting for the subscription to be live, so that a client that
    /// got `joined` also gets every later `user_joined`, `typing`, `read`.
    deferred: Vec<JoinRequest>,
    /// Shard clock (ms) when the first deferred join arrived.
    deferred_since_ms: u64,
    /// Joins whose state read saw a seq this node has not delivered yet
    /// (its frames are on their way): they take effect once it has, so
    /// `joined.seq` is never below a seq acked before the join, and a
    /// `since` from another node is never taken for an older epoch's.
    awaiting: Vec<(Seq, JoinRequest)>,
    /// Shard clock (ms) when the first awaiting join arrived.
    awaiting_since_ms: u64,
}

impl Cluster {
    pub(super) fn new(broker: BrokerHandle, feed: ShardFeed) -> Self {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Cluster {
            broker,
            feed,
            done_tx,
            done_rx,
            dms: std::collections::HashMap::new(),
        }
    }

    /// A reply callback that pushes `f(result)` to this shard and wakes it.
    fn reply<T: Send + 'static>(
        &self,
        port: &ChatPort,
        f: impl FnOnce(T) -> BrokerDone + Send + 'static,
    ) -> crate::broker::Reply<T> {
        let tx = self.done_tx.clone();
        let waker = port.waker();
        Box::new(move |v| {
            if tx.send(f(v)).is_ok() {
                let _ = waker.wake();
            }
        })
    }
}

pub(super) fn unavailable() -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        "the message broker is unavailable; retry later",
    )
}

/// The JSON inside a server frame (unmasked, as `frames::text` builds).
pub(super) fn payload(frame: &Bytes) -> Bytes {
    let hdr = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(hdr.min(frame.len())..)
}

/// The presence change a broker frame announces (`user_joined` and
/// `user_left` as the presence scripts write them), if it is one.
fn presence_of(json: &[u8]) -> Option<PresenceEvent> {
    #[derive(serde::Deserialize)]
    struct P<'a> {
        user: String,
        #[serde(borrow)]
        name: Option<&'a serde_json::value::RawValue>,
    }
    let joined = json.starts_with(br#"{"type":"user_joined""#);
    if !joined && !json.starts_with(br#"{"type":"user_left""#) {
        return None;
    }
    let p: P<'_> = serde_json::from_slice(json).ok()?;
    let user = UserId::from(p.user.as_str());
    Some(match (joined, p.name) {
        (true, Some(name)) => PresenceEvent::Joined {
            user,
            name_json: name.get().into(),
        },
        (true, None) => return None,
        (false, _) => PresenceEvent::Left { user },
    })
}

/// A stream entry as a stored message (replay and history pages).
pub(super) fn stored_of_entry(room: &str, e: &StreamEntry) -> Option<StoredMessage> {
    #[derive(serde::Deserialize)]
    struct M<'a> {
        from: String,
        #[serde(default)]
        name: String,
        ts: u64,
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    let m: M<'_> = serde_json::from_slice(&e.json).ok()?;
    Some(StoredMessage {
        room: room.to_string(),
        seq: e.seq,
        ts: m.ts,
        from: m.from,
        name: m.name,
        body: m.body.get().to_string(),
    })
}

impl ChatApp {
    pub fn attach_cluster(&mut self, broker: BrokerHandle, feed: ShardFeed) {
        self.store.use_broker(broker.clone());
        self.cluster = Some(Cluster::new(broker, feed));
    }

    pub(super) fn broker(&self) -> Option<&BrokerHandle> {
        self.cluster.as_ref().map(|c| &c.broker)
    }

    /// End of a turn: what the broker sent and answered.
    pub(super) fn cluster_turn(&mut self, port: &mut ChatPort) {
        let Some(c) = &self.cluster else {
            return;
        };
        if c.feed.waker.get().is_none() {
            let _ = c.feed.waker.set(port.waker());
        }
        loop {
            let Some(c) = &self.cluster else {
                return;
            };
            if let Ok(item) = c.feed.rx.try_recv() {
                match item {
                    Incoming::Frame(f) => self.on_channel_frame(port, f),
                    Incoming::Event(e) => self.on_broker_event(port, e),
                }
                continue;
            }
            if let Ok(done) = c.done_rx.try_recv() {
                self.on_broker_done(port, done);
                continue;
            }
            return;
        }
    }

    // -- room home: publish

    pub(super) fn cluster_publish(&mut self, port: &mut ChatPort, req: PublishReq) {
        let Some(c) = &self.cluster else {
            return;
        };
        let ts = now_unix_ms();
        let parts = MessageParts::new(&MessageFields {
            room: &req.room,
            seq: 0,
            from: &req.user,
            name_json: &req.name_json,
            ts,
            body: &req.body,
        });
        let (room, reply, id) = (req.room.clone(), req.reply, req.id);
        let cb = c.reply(port, move |result| BrokerDone::Published {
            room,
            reply,
            id,
            ts,
            result,
        });
        c.broker.publish(
            crate::broker::PublishReq {
                room: req.room.to_string(),
                parts,
                ts,
            },
            cb,
        );
    }

    // -- room home: the room's channel

    fn on_channel_frame(&mut self, port: &mut ChatPort, f: ChannelFrame) {
        match f.kind {
            ChannelKind::Room => self.on_room_frame(port, f),
            ChannelKind::User => self.on_user_frame(port, f),
        }
    }

    fn on_room_frame(&mut self, port: &mut ChatPort, f: ChannelFrame) {
        let room_name: RoomName = Arc::from(f.room.as_str());
        let Some(home) = self.homes.get_mut(&room_name) else {
            return; // no local member (any more)
        };
        if f.seq == 0 {
            let frame = frames::text(&f.json);
            if let Some(ev) = presence_of(&f.json) {
                // Batched for this node's batched members, like on one node.
                self.presence_event(port, &room_name, ev, frame);
                return;
            }
            let except = f.except_user.map(|u| Arc::from(u.as_str()));
            let members = &home.shard_members;
            let class = if f.json.starts_with(br#"{"type":"typing""#) {
                Delivery::Deferred
            } else {
                Delivery::Now
            };
            self.router
                .fan_out(port, &room_name, members, frame, except, None, class);
            return;
        }
        if home.cluster.tracker.is_some() && f.epoch.as_deref().is_some_and(|e| *e != *home.epoch) {
            return; // another history (data lost): the HistoryLost event follows
        }
        let Some(t) = home.cluster.tracker.as_mut() else {
            if home.cluster.early.len() < EARLY_MAX {
                home.cluster.early.push((f.seq, f.json));
            }
            return;
        };
        let step = t.offer(f.seq, f.json);
        self.apply_step(port, &room_name, step);
    }

    /// Delivers what the tracker released (ring + fan-out) and starts the
    /// gap read it asks for.
    fn apply_step(&mut self, port: &mut ChatPort, room_name: &RoomName, step: Step) {
        let ring_cap = self.ring_cap;
        let Some(home) = self.homes.get_mut(room_name) else {
            return;
        };
        let ts = now_unix_ms();
        for (seq, json) in step.deliver {
            let frame = frames::text(&json);
            let hdr = frame.len() - json.len();
            home.committed = seq;
            home.rate.add(port.now_ms());
            home.push_ring(seq, ts, frame.clone(), hdr, ring_cap);
            let members = &home.shard_members;
            self.router
                .fan_out(port, room_name, members, frame, None, None, Delivery::Now);
        }
        if step.skipped > 0 {
            tracing::warn!(room = %room_name, skipped = step.skipped, "messages trimmed from the stream were skipped");
        }
        if let Some(after) = step.read_after {
            self.gap_read(port, room_name, after);
        }
        let awaiting = self.homes.get(room_name);
        if awaiting.is_some_and(|h| !h.cluster.awaiting.is_empty()) {
            self.release_awaiting(port, room_name, false);
        }
    }

    fn gap_read(&mut self, port: &mut ChatPort, room_name: &RoomName, after: Seq) {
        let Some(c) = &self.cluster else {
            return;
        };
        let room = room_name.clone();
        let cb = c.reply(port, move |result| BrokerDone::Gap { room, result });
        let q = RangeQuery {
            after: Some(after),
            before: None,
            limit: crate::broker::tracker::FILL_PAGE,
        };
        c.broker.range(room_name, q, cb);
    }

    // -- user home: DMs

    fn on_user_frame(&mut self, port: &mut ChatPort, f: ChannelFrame) {
        if f.except_user.as_deref() == Some(f.target.as_str()) {
            return;
        }
        let user: UserId = Arc::from(f.target.as_str());
        let room: RoomName = Arc::from(f.room.as_str());
        if f.seq > 0 {
            // A numbered DM: in order, gaps filled (dm.rs).
            self.dm_frame(port, user, room, f.seq, f.json);
            return;
        }
        let Some(home) = self.user_homes.get(&user) else {
            return;
        };
        let frame = frames::text(&f.json);
        let received = Instant::now();
        for &(shard, _) in home.shard_counts() {
            port.bus(
                shard as usize,
                MemberMsg::UserFrame {
                    user: user.clone(),
                    room: room.clone(),
                    seq: 0,
                    frame: frame.clone(),
                    received,
                }
                .into(),
            );
        }
    }

    // -- events

    fn on_broker_event(&mut self, port: &mut ChatPort, e: BrokerEvent) {
        match e {
            BrokerEvent::HistoryLost => {
                self.history_lost(port);
                self.dm_history_lost(port);
            }
            BrokerEvent::CatchUp { rooms, users, .. } => {
                self.dm_catch_up(port, users);
                for room in rooms {
                    let room_name: RoomName = Arc::from(room.as_str());
                    let deferred = match self.homes.get_mut(&room_name) {
                        Some(h) => {
                            h.cluster.live = true;
                            std::mem::take(&mut h.cluster.deferred)
                        }
                        None => Vec::new(),
                    };
                    for join in deferred {
                        self.request_state(port, room_name.clone(), join);
                    }
                    let after = self
                        .homes
                        .get_mut(&room_name)
                        .and_then(|h| h.cluster.tracker.as_mut())
                        .and_then(GapTracker::catch_up);
                    if let Some(after) = after {
                        self.gap_read(port, &room_name, after);
                    }
                }
            }
            BrokerEvent::PresenceReset => {
                let Some(c) = &self.cluster else {
                    return;
                };
                for (room, home) in &self.homes {
                    for (user, p) in &home.users {
                        c.broker.presence_add(room, user, &p.name_json, None);
                    }
                }
            }
            BrokerEvent::Down { .. }
            | BrokerEvent::Recovered
            | BrokerEvent::PresenceLeft { .. } => {}
        }
    }

    /// Redis lost its data: every local member is closed with 1012 and the
    /// rooms this shard homes are forgotten, so a rejoin sees the new epoch.
    fn history_lost(&mut self, port: &mut ChatPort) {
        tracing::warn!("broker history lost: closing room members with 1012");
        let mut keys: Vec<usize> = self.local.values().flatten().copied().collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            port.close(
                key,
                1012,
                "history lost; rejoin",
                crate::metrics::DisconnectReason::Shutdown,
            );
        }
        if let Some(c) = &self.cluster {
            for (room, home) in &self.homes {
                if home.cluster.subscribed {
                    c.broker.unsubscribe_room(room);
                }
            }
        }
        // Joins not yet answered get `unavailable` (their connections may
        // live on other shards and were not closed): the clients retry.
        let mut pending = Vec::new();
        for (room, home) in &mut self.homes {
            let c = &mut home.cluster;
            let awaiting = std::mem::take(&mut c.awaiting).into_iter().map(|(_, j)| j);
            for join in std::mem::take(&mut c.deferred).into_iter().chain(awaiting) {
                pending.push((room.clone(), join));
            }
        }
        for (room, join) in pending {
            self.refuse_join(port, &room, &join);
        }
        self.homes.clear();
    }

    // -- answers

    fn on_broker_done(&mut self, port: &mut ChatPort, done: BrokerDone) {
        match done {
            BrokerDone::Published {
                room,
                reply,
                id,
                ts,
                result,
            } => match result {
                Ok(p) => {
                    crate::metrics::inc(&port.metrics().publishes);
                    self.send_ack(port, &room, reply, &id, p.seq, ts);
                }
                Err(e) => {
                    tracing::debug!("publish failed: {e}");
                    self.reply_request_error(port, reply, &id, &unavailable());
                }
            },
            BrokerDone::State { room, join, result } => self.state_read(port, room, join, result),
            BrokerDone::Gap { room, result } => {
                let Some(t) = self
                    .homes
                    .get_mut(&room)
                    .and_then(|h| h.cluster.tracker.as_mut())
                else {
                    return;
                };
                match result {
                    Ok(page) => {
                        count_gap_frames(port, t, &page);
                        let step = t.fill(page.entries, page.has_more);
                        self.apply_step(port, &room, step);
                    }
                    Err(e) => {
                        tracing::debug!("gap read failed: {e}");
                        t.fill_failed();
                    }
                }
            }
            BrokerDone::Presence {
                room,
                conn,
                id,
                result,
            } => {
                let frame = match result {
                    Ok(users) => frames::presence(
                        &id,
                        &room,
                        users.iter().map(|(u, n)| (u.as_str(), n.as_str())),
                    ),
                    Err(_) => frames::error(&id, &unavailable()),
                };
                self.router
                    .to_conn_shard(port, conn, MemberMsg::ToConn { conn, frame });
            }
            BrokerDone::Read { room, user, result } => {
                if let Ok(Some(seq)) = result {
                    if let Some(h) = self.homes.get_mut(&room) {
                        h.read.insert(user.clone(), seq);
                    }
                    if let Some(b) = self.broker() {
                        let json = payload(&frames::read(&room, &user, seq));
                        b.publish_ephemeral(&room, to_string(&json), Some(&user));
                    }
                }
            }
            BrokerDone::DmRooms { user, result } => self.dm_rooms_read(port, user, result),
            BrokerDone::DmGap { user, room, result } => self.dm_gap_read(port, user, room, result),
            BrokerDone::Rooms { conn, id, result } => {
                let frame = match result {
                    Ok(list) => {
                        let mut entries: Vec<RoomEntry> = list
                            .into_iter()
                            .map(|e| RoomEntry {
                                room: Arc::from(e.room.as_str()),
                                seq: e.seq,
                                read: e.read,
                            })
                            .collect();
                        entries.sort_by(|a, b| a.room.cmp(&b.room));
                        frames::rooms(&id, &entries)
                    }
                    Err(_) => frames::error(&id, &unavailable()),
                };
                self.router
                    .to_conn_shard(port, conn, MemberMsg::ToConn { conn, frame });
            }
        }
    }

    // -- requests answered by the broker

    pub(super) fn cluster_presence(
        &mut self,
        port: &mut ChatPort,
        room: &RoomName,
        conn: ConnRef,
        id: &ReqId,
    ) {
        let Some(c) = &self.cluster else {
            return;
        };
        let (r, i) = (room.clone(), id.clone());
        let cb = c.reply(port, move |result| BrokerDone::Presence {
            room: r,
            conn,
            id: i,
            result,
        });
        c.broker.presence(room, cb);
    }

    pub(super) fn cluster_read(
        &mut self,
        port: &mut ChatPort,
        room: RoomName,
        user: UserId,
        seq: Seq,
    ) {
        let Some(c) = &self.cluster else {
            return;
        };
        let (r, u) = (room.clone(), user.clone());
        let cb = c.reply(port, move |result| BrokerDone::Read {
            room: r,
            user: u,
            result,
        });
        c.broker.set_read(&room, &user, seq, Some(cb));
    }

    pub(super) fn cluster_typing(&mut self, room: &RoomName, user: &UserId) {
        if let Some(b) = self.broker() {
            let json = payload(&frames::typing(room, user));
            b.publish_ephemeral(room, to_string(&json), Some(user));
        }
    }

    pub(super) fn cluster_rooms(
        &mut self,
        port: &mut ChatPort,
        user: &UserId,
        conn: ConnRef,
        id: ReqId,
    ) {
        let Some(c) = &self.cluster else {
            return;
        };
        let cb = c.reply(port, move |result| BrokerDone::Rooms { conn, id, result });
        c.broker.rooms_of(user, cb);
    }
}

/// Counts the frames a gap read brings that pub/sub had not delivered.
fn count_gap_frames(port: &ChatPort, t: &GapTracker, page: &RangePage) {
    let before = t.delivered();
    let n = page.entries.iter().filter(|e| e.seq > before).count();
    crate::metrics::add(&port.metrics().broker_gap_frames, n as u64);
}

fn to_string(json: &Bytes) -> String {
    String::from_utf8_lossy(json).into_owned()
}
