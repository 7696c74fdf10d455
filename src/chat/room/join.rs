//! Joins and leaves at a room's home. A join with `since` replays what the
//! client missed: from the ring when it still holds `since + 1`, else from
//! the store first, page by page, until the replay reaches the ring. The
//! join takes effect (member counted, `joined` + replay sent on the same
//! FIFO channel as live frames) only then, so nothing is missed or doubled.

use super::super::frames;
use super::super::msg::{MemberMsg, UserMsg};
use super::super::{ChatApp, ChatPort, NameJson, RoomName, Seq, UserId};
use super::{store_unavailable, Presence, StoreOp};
use crate::bus::ConnRef;
use crate::protocol::ReqId;
use crate::store::{RangeQuery, StoreError, StoredMessage};
use bytes::Bytes;

/// Messages fetched from the store per replay page.
const REPLAY_PAGE: usize = 1000;

pub(in crate::chat) struct JoinRequest {
    pub conn: ConnRef,
    pub user: UserId,
    pub name_json: NameJson,
    /// Last seq the client has (`u64::MAX`: no `since`, no replay).
    pub since: Seq,
    pub id: ReqId,
    pub rejoin: bool,
}

/// A replay being read from the store.
pub(in crate::chat) struct ReplayProgress {
    room: RoomName,
    join: JoinRequest,
    /// Replay gathered so far, in seq order.
    got: Vec<Bytes>,
    /// Highest seq covered so far (the replay starts after `since`).
    upto: Seq,
    recovered: Option<bool>,
}

impl ChatApp {
    pub(super) fn home_join(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        join: JoinRequest,
    ) {
        let has_store = self.store.enabled();
        let room = self.home_room_to_read(&room_name, port.shards());
        let since = join.since;
        let recovered = since >= room.committed || since.saturating_add(1) >= room.first_in_ring();
        if recovered || !has_store {
            let replay: Vec<Bytes> = room
                .ring
                .iter()
                .filter(|e| e.seq > since)
                .map(|e| e.frame.clone())
                .collect();
            self.join_take_effect(port, &room_name, join, replay, recovered);
            return;
        }
        // Older than the ring: read the store first; the join takes effect
        // when the replay has caught up with the ring.
        room.waiting.insert(join.conn, join.rejoin);
        let before = room.first_in_ring();
        let progress = ReplayProgress {
            room: room_name.clone(),
            upto: since,
            got: Vec::new(),
            recovered: None,
            join,
        };
        let q = RangeQuery {
            after: Some(since),
            before: Some(before),
            limit: REPLAY_PAGE,
        };
        self.store
            .start_range(port, &room_name, q, StoreOp::JoinReplay(progress));
    }

    /// One page of a join's replay came from the store.
    pub(super) fn replay_read(
        &mut self,
        port: &mut ChatPort,
        mut p: ReplayProgress,
        result: Result<(Vec<StoredMessage>, bool), StoreError>,
    ) {
        let Some(home) = self.homes.get_mut(&p.room) else {
            return;
        };
        if !home.waiting.contains_key(&p.join.conn) {
            return; // left meanwhile
        }
        let (msgs, has_more) = match result {
            Ok(r) => r,
            Err(e) => {
                home.waiting.remove(&p.join.conn);
                tracing::warn!("replay read failed: {e}");
                let msg = MemberMsg::JoinDone {
                    room: p.room,
                    conn: p.join.conn,
                    frames: vec![frames::error(&p.join.id, &store_unavailable())],
                    last_seq: 0,
                    accepted: false,
                };
                self.router.to_conn_shard(port, p.join.conn, msg);
                return;
            }
        };
        if p.recovered.is_none() {
            p.recovered = Some(msgs.first().is_some_and(|m| m.seq == p.upto + 1));
        }
        for m in &msgs {
            p.got.push(frames::stored_message(m));
            p.upto = m.seq;
        }
        let ring_first = home.first_in_ring();
        if has_more || p.upto + 1 < ring_first {
            if msgs.is_empty() && !has_more {
                // The store has nothing more below the ring: what is missing
                // was dropped by retention.
                p.recovered = Some(false);
                p.upto = ring_first - 1;
            } else {
                let q = RangeQuery {
                    after: Some(p.upto),
                    before: Some(ring_first),
                    limit: REPLAY_PAGE,
                };
                let room = p.room.clone();
                self.store
                    .start_range(port, &room, q, StoreOp::JoinReplay(p));
                return;
            }
        }
        home.waiting.remove(&p.join.conn);
        let upto = p.upto;
        p.got.extend(
            home.ring
                .iter()
                .filter(|e| e.seq > upto)
                .map(|e| e.frame.clone()),
        );
        let recovered = p.recovered.unwrap_or(false);
        self.join_take_effect(port, &p.room, p.join, p.got, recovered);
    }

    /// The join counts from now: register the member, announce the user,
    /// and send `joined` + replay on the same channel the live frames use.
    fn join_take_effect(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        join: JoinRequest,
        replay: Vec<Bytes>,
        recovered: bool,
    ) {
        let room = self.home_room(room_name, port.shards());
        let mut announce = None;
        if !join.rejoin {
            if room.dm.is_none() {
                room.shard_members[join.conn.shard as usize] += 1;
            }
            let p = room.users.entry(join.user.clone()).or_insert(Presence {
                name_json: join.name_json.clone(),
                conns: 0,
            });
            p.conns += 1;
            if p.conns == 1 {
                announce = Some(frames::user_joined(room_name, &join.user, &join.name_json));
            }
        }
        let read = room.read.get(&join.user).copied();
        if read.is_none() {
            room.read.insert(join.user.clone(), 0);
        }
        let joined = frames::joined(&frames::Joined {
            id: &join.id,
            room: room_name,
            seq: room.committed,
            epoch: &room.epoch,
            members: room.users.len(),
            read: read.unwrap_or(0),
            recovered,
        });
        let last_seq = room.committed;
        let mut out = Vec::with_capacity(1 + replay.len());
        out.push(joined);
        out.extend(replay);
        let msg = MemberMsg::JoinDone {
            room: room_name.clone(),
            conn: join.conn,
            frames: out,
            last_seq,
            accepted: true,
        };
        self.router.to_conn_shard(port, join.conn, msg);
        let listing = UserMsg::Listing {
            user: join.user.clone(),
            room: room_name.clone(),
            member: true,
        };
        self.router.to_user_home(port, &join.user, listing);
        if let Some(frame) = announce {
            self.broadcast(port, room_name, frame, Some(join.user));
        }
    }

    pub(super) fn home_leave(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        conn: ConnRef,
        user: &UserId,
        explicit: bool,
    ) {
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        // Some(false): the join never took effect and the connection was not
        // counted. Some(true): a second join was pending; the first counts.
        if let Some(false) = room.waiting.remove(&conn) {
            return;
        }
        if room.dm.is_none() {
            if let Some(n) = room.shard_members.get_mut(conn.shard as usize) {
                *n = n.saturating_sub(1);
            }
        }
        let Some(p) = room.users.get_mut(user) else {
            return;
        };
        p.conns -= 1;
        if p.conns > 0 {
            return;
        }
        room.users.remove(user);
        // A DM room stays listed under `rooms` for its participants.
        let unlist = explicit && room.dm.is_none();
        self.broadcast(
            port,
            room_name,
            frames::user_left(room_name, user),
            Some(user.clone()),
        );
        if unlist {
            let msg = UserMsg::Listing {
                user: user.clone(),
                room: room_name.clone(),
                member: false,
            };
            self.router.to_user_home(port, user, msg);
        }
    }
}
