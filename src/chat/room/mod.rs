//! The home role of a room: the one place that numbers its messages.
//!
//! A publish reads top to bottom here: `publish` numbers the message (next
//! `seq`), stamps `ts`, encodes the `message` frame once and queues it for
//! the store; when the store has committed it, `commit` puts the frame in
//! the ring, hands the same buffer to the router for fan-out to every shard
//! with members, and acks the publisher. Without a store, commit is at once.

mod batch;
mod history;
mod join;
mod presence;

use super::frames;
use super::msg::{Delivery, HomeMsg, MemberMsg, PublishReq};
use super::{now_unix_ms, ChatApp, ChatPort, NameJson, RoomName, Seq, UserId};
use crate::bus::{ConnRef, ReplyTo};
use crate::metrics;
use crate::protocol::{self, ErrorCode, MessageFields, ProtoError, ReqId};
use crate::store::{RangeQuery, StoreError, StoredMessage};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

pub(super) use self::batch::PresenceEvent;
pub(super) use self::join::{page_bytes, JoinRequest, MAX_JOINED_READS};

/// A message frame kept in a room's ring.
struct RingEntry {
    seq: Seq,
    /// Server time of the message (ms), for age retention.
    ts: u64,
    frame: Bytes,
    /// Length of the WebSocket header in `frame`.
    hdr: usize,
}

/// A message numbered by its home but not yet committed by the store.
struct Pending {
    entry: RingEntry,
    reply: ReplyTo,
    id: ReqId,
    received: Instant,
}

pub(super) struct Presence {
    pub(super) name_json: NameJson,
    conns: u32,
}

/// A store range read in flight and what it is for.
pub(super) enum StoreOp {
    FirstPage(join::FirstPage),
    NextPage(join::NextPage),
    History {
        room: RoomName,
        reply: ReplyTo,
        id: ReqId,
    },
}

/// A room as its home shard sees it.
pub(super) struct HomeRoom {
    pub(super) epoch: Arc<str>,
    pub(super) next_seq: Seq,
    pub(super) committed: Seq,
    ring: VecDeque<RingEntry>,
    /// Member connections per shard (non-DM rooms: where to fan out).
    pub(super) shard_members: Vec<u32>,
    /// Of those, the ones with batched presence (`presence_diff`).
    pub(super) shard_batched: Vec<u32>,
    /// Presence changes since the last `presence_diff` (batched members).
    diff: Option<Box<batch::PendingDiff>>,
    pub(super) users: HashMap<UserId, Presence>,
    pub(super) read: HashMap<UserId, Seq>,
    pending: VecDeque<Pending>,
    /// Joins waiting for a store replay (value: the connection is already
    /// counted as a member, a second join); a leave cancels one.
    pub(super) waiting: HashMap<ConnRef, bool>,
    /// The two participants of a DM room.
    pub(super) dm: Option<(UserId, UserId)>,
    /// Cluster mode: the room's tracker and subscription.
    pub(super) cluster: super::cluster::ClusterRoom,
    /// Shard clock (ms) of the last publish, join or leave (idle sweep).
    last_active_ms: u64,
    /// Committed messages per second, for the operator's page.
    pub(super) rate: super::admin::stats::RateWindow,
}

impl HomeRoom {
    /// Appends a committed frame to the ring, keeping at most `cap`.
    pub(super) fn push_ring(&mut self, seq: Seq, ts: u64, frame: Bytes, hdr: usize, cap: usize) {
        self.ring.push_back(RingEntry {
            seq,
            ts,
            frame,
            hdr,
        });
        while self.ring.len() > cap {
            self.ring.pop_front();
        }
    }

    fn first_in_ring(&self) -> Seq {
        self.ring.front().map_or(self.committed + 1, |e| e.seq)
    }

    /// Forgets ring entries older than `cutoff_ts`: what age retention
    /// deletes from the store must not live on in memory (nor be replayed).
    fn expire_ring(&mut self, cutoff_ts: u64) {
        while self.ring.front().is_some_and(|e| e.ts < cutoff_ts) {
            self.ring.pop_front();
        }
    }
}

/// How long a room without members keeps its ring (with a store).
const IDLE_RING_MS: u64 = 60_000;

fn new_epoch() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

fn store_unavailable() -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        "the message store is unavailable; retry later",
    )
}

impl ChatApp {
    pub(super) fn on_home_msg(&mut self, port: &mut ChatPort, msg: HomeMsg) {
        match msg {
            HomeMsg::Join {
                room,
                who,
                since,
                id,
                rejoin,
                reads,
                batched,
            } => {
                let join = JoinRequest {
                    conn: who.conn,
                    user: who.user,
                    name_json: who.name_json,
                    since: since.unwrap_or(u64::MAX),
                    id,
                    rejoin,
                    cluster_members: None,
                    reads,
                    batched,
                };
                if self.cluster.is_some() {
                    self.cluster_join(port, room, join);
                } else {
                    self.home_join(port, room, join);
                }
            }
            HomeMsg::Leave {
                room,
                conn,
                user,
                explicit,
                batched,
            } => self.home_leave(port, &room, conn, &user, explicit, batched),
            HomeMsg::Publish(req) if self.cluster.is_some() => self.cluster_publish(port, *req),
            HomeMsg::Publish(req) => self.publish(port, *req),
            HomeMsg::History {
                room,
                reply,
                before,
                after,
                limit,
                id,
            } => {
                let q = RangeQuery {
                    after,
                    before,
                    limit,
                };
                self.home_history(port, room, reply, q, id);
            }
            HomeMsg::ReplayMore { room, conn, after } => self.replay_more(port, room, conn, after),
            HomeMsg::Presence { room, conn, id } if self.cluster.is_some() => {
                self.cluster_presence(port, &room, conn, &id)
            }
            HomeMsg::Presence { room, conn, id } => self.home_presence(port, &room, conn, &id),
            HomeMsg::Typing { room, user } if self.cluster.is_some() => {
                self.cluster_typing(&room, &user)
            }
            HomeMsg::Read { room, user, seq } if self.cluster.is_some() => {
                self.cluster_read(port, room, user, seq)
            }
            HomeMsg::Typing { room, user } => {
                let frame = frames::typing(&room, &user);
                self.broadcast(port, &room, frame, Some(user), Delivery::Deferred);
            }
            HomeMsg::Read { room, user, seq } => self.home_read(port, room, user, seq),
            HomeMsg::RoomInfo {
                gather,
                reply_shard,
                user,
                rooms,
            } => self.room_info(port, gather, reply_shard, &user, rooms),
        }
    }

    pub(super) fn new_home_room(&mut self, name: RoomName, epoch: Arc<str>) -> &mut HomeRoom {
        let dm = protocol::dm_participants(&name).map(|(x, y)| (Arc::from(x), Arc::from(y)));
        self.homes.entry(name).or_insert_with(|| HomeRoom {
            epoch,
            next_seq: 1,
            committed: 0,
            ring: VecDeque::new(),
            shard_members: Vec::new(),
            shard_batched: Vec::new(),
            diff: None,
            users: HashMap::new(),
            read: HashMap::new(),
            pending: VecDeque::new(),
            waiting: HashMap::new(),
            dm,
            cluster: Default::default(),
            last_active_ms: 0,
            rate: Default::default(),
        })
    }

    /// Forgets a room nobody uses that never had a message: joining or
    /// reading a made-up name leaves nothing behind.
    pub(super) fn evict_if_unused(&mut self, room: &RoomName) {
        if let Some(c) = &self.cluster {
            // Cluster mode: a room without local members is forgotten (its
            // channel unsubscribed); the next join reads its state again.
            let unused = self
                .homes
                .get(room)
                .is_some_and(|h| h.users.is_empty() && h.waiting.is_empty());
            if unused {
                if let Some(h) = self.homes.remove(room) {
                    if h.cluster.subscribed {
                        c.broker.unsubscribe_room(room);
                    }
                }
            }
            return;
        }
        let unused = self.homes.get(room).is_some_and(|h| {
            h.committed == 0
                && h.next_seq == 1
                && h.users.is_empty()
                && h.pending.is_empty()
                && h.waiting.is_empty()
        });
        if unused {
            self.homes.remove(room);
        }
    }

    /// Idle rooms give their ring back when the store holds their history:
    /// replay and history then read the store. Rooms with members, pending
    /// messages or recent traffic keep it.
    pub(super) fn sweep_idle_rooms(&mut self, now_ms: u64) {
        if !self.store.enabled() {
            return;
        }
        for room in self.homes.values_mut() {
            let idle = now_ms.saturating_sub(room.last_active_ms) >= IDLE_RING_MS;
            if idle && room.users.is_empty() && room.pending.is_empty() && !room.ring.is_empty() {
                room.ring = VecDeque::new();
            }
        }
    }

    pub(super) fn home_room(&mut self, room: &RoomName, shards: usize) -> &mut HomeRoom {
        if !self.homes.contains_key(room) {
            self.new_home_room(room.clone(), new_epoch());
        }
        let home = self.homes.get_mut(room).expect("inserted above");
        if home.shard_members.len() != shards {
            home.shard_members.resize(shards, 0);
            home.shard_batched.resize(shards, 0);
        }
        home
    }

    /// The home room about to be read (join replay, history): its ring first
    /// forgets what age retention dropped. Only readers pay for the clock.
    fn home_room_to_read(&mut self, room: &RoomName, shards: usize) -> &mut HomeRoom {
        let cutoff = self
            .retention_age_ms
            .map(|age| now_unix_ms().saturating_sub(age));
        let home = self.home_room(room, shards);
        if let Some(cutoff) = cutoff {
            home.expire_ring(cutoff);
        }
        home
    }

    /// Numbers a message and encodes its frame once; it is committed when
    /// the store has it (at once without a store).
    fn publish(&mut self, port: &mut ChatPort, req: PublishReq) {
        let ts = now_unix_ms();
        let stored = self.store.enabled();
        let room = self.home_room(&req.room, port.shards());
        room.last_active_ms = port.now_ms();
        let seq = room.next_seq;
        room.next_seq += 1;
        let (frame, hdr) = frames::message(&MessageFields {
            room: &req.room,
            seq,
            from: &req.user,
            name_json: &req.name_json,
            ts,
            body: &req.body,
        });
        let pending = Pending {
            entry: RingEntry {
                seq,
                ts,
                frame,
                hdr,
            },
            reply: req.reply,
            id: req.id,
            received: req.received,
        };
        if !stored {
            self.commit(port, &req.room, pending);
            return;
        }
        let epoch = room.epoch.clone();
        room.pending.push_back(pending);
        let stored = StoredMessage {
            room: req.room.to_string(),
            seq,
            ts,
            from: req.user.to_string(),
            name: serde_json::from_str::<String>(&req.name_json).unwrap_or_default(),
            body: req.body.into(),
        };
        self.store.queue_append(stored, &req.room, &epoch);
    }

    /// The message is stored: it becomes part of the room, is fanned out
    /// once, and the publisher gets its ack.
    fn commit(&mut self, port: &mut ChatPort, room_name: &RoomName, p: Pending) {
        let ring_cap = self.ring_cap;
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        let (seq, ts, frame) = (p.entry.seq, p.entry.ts, p.entry.frame.clone());
        room.committed = seq;
        room.rate.add(port.now_ms());
        room.ring.push_back(p.entry);
        while room.ring.len() > ring_cap {
            room.ring.pop_front();
        }
        metrics::inc(&port.metrics().publishes);
        match room.dm.clone() {
            Some((x, y)) => {
                for u in [x, y] {
                    self.ensure_member_listing(port, room_name, &u);
                    self.router
                        .to_user(port, &u, room_name, seq, frame.clone(), p.received);
                }
            }
            None => {
                let members = &room.shard_members;
                self.router.fan_out(
                    port,
                    room_name,
                    members,
                    frame,
                    None,
                    Some(p.received),
                    Delivery::Now,
                );
            }
        }
        self.send_ack(port, room_name, p.reply, &p.id, seq, ts);
    }

    /// The publisher's ack (WebSocket or HTTP).
    pub(super) fn send_ack(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        reply: ReplyTo,
        id: &ReqId,
        seq: Seq,
        ts: u64,
    ) {
        match reply {
            ReplyTo::Ws(conn) => {
                let frame = frames::ws_ack(id, room_name, seq, ts);
                self.router
                    .to_conn_shard(port, conn, MemberMsg::ToConn { conn, frame });
            }
            ReplyTo::Http(conn) => {
                let body = frames::http_ack_body(room_name, seq, ts);
                let msg = MemberMsg::HttpReply {
                    conn,
                    status: 200,
                    body,
                };
                self.router.to_conn_shard(port, conn, msg);
            }
        }
    }

    /// Lists a DM room under `rooms` for a participant the first time.
    fn ensure_member_listing(&mut self, port: &mut ChatPort, room_name: &RoomName, user: &UserId) {
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        if !room.read.contains_key(user) {
            room.read.insert(user.clone(), 0);
            let msg = super::msg::UserMsg::Listing {
                user: user.clone(),
                room: room_name.clone(),
                member: true,
            };
            self.router.to_user_home(port, user, msg);
        }
    }

    /// A non-message frame (presence, typing, read) to a room's members; DM
    /// rooms reach the participants by their user route.
    fn broadcast(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        frame: Bytes,
        except_user: Option<UserId>,
        class: Delivery,
    ) {
        let Some(room) = self.homes.get(room_name) else {
            return;
        };
        match &room.dm {
            Some((x, y)) => {
                for u in [x, y] {
                    if except_user.as_deref() != Some(&**u) {
                        self.router
                            .to_user(port, u, room_name, 0, frame.clone(), Instant::now());
                    }
                }
            }
            None => {
                self.router.fan_out(
                    port,
                    room_name,
                    &room.shard_members,
                    frame,
                    except_user,
                    None,
                    class,
                );
            }
        }
    }

    /// A group commit finished: commit what it stored, in order; a failure
    /// fails everything pending behind it and rolls the numbering back.
    pub(super) fn on_appended(
        &mut self,
        port: &mut ChatPort,
        batch: u64,
        results: Vec<Result<(), StoreError>>,
    ) {
        let Some(keys) = self.store.take_batch(batch) else {
            return;
        };
        for (i, (room_name, seq)) in keys.into_iter().enumerate() {
            let ok = results.get(i).is_some_and(|r| r.is_ok());
            let Some(room) = self.homes.get_mut(&room_name) else {
                continue;
            };
            // A room rolled back after an earlier failure no longer has this
            // message pending; its late result means nothing.
            if room.pending.front().map(|p| p.entry.seq) != Some(seq) {
                continue;
            }
            if ok {
                if let Some(p) = room.pending.pop_front() {
                    self.commit(port, &room_name, p);
                }
            } else {
                // Nothing after a failed message may be committed (no gaps):
                // fail every pending one and number again from `committed`.
                room.next_seq = room.committed + 1;
                let failed: Vec<Pending> = room.pending.drain(..).collect();
                for p in failed {
                    self.reply_request_error(port, p.reply, &p.id, &store_unavailable());
                }
            }
        }
    }

    /// A range read finished: a join's replay page or a history reply.
    pub(super) fn on_ranged(
        &mut self,
        port: &mut ChatPort,
        op: u64,
        result: Result<(Vec<StoredMessage>, bool), StoreError>,
    ) {
        match self.store.take_op(op) {
            Some(StoreOp::History { room, reply, id }) => {
                self.history_read(port, &room, reply, &id, result)
            }
            Some(StoreOp::FirstPage(p)) => self.first_page_read(port, p, result),
            Some(StoreOp::NextPage(p)) => self.next_page_read(port, p, result),
            None => {}
        }
    }

    pub(super) fn reply_request_error(
        &mut self,
        port: &mut ChatPort,
        reply: ReplyTo,
        id: &ReqId,
        e: &ProtoError,
    ) {
        let msg = match reply {
            ReplyTo::Ws(conn) => MemberMsg::ToConn {
                conn,
                frame: frames::error(id, e),
            },
            ReplyTo::Http(conn) => MemberMsg::HttpReply {
                conn,
                status: e.code.http_status(),
                body: frames::http_error_body(e),
            },
        };
        self.router.to_conn_shard(port, reply.conn(), msg);
    }
}
