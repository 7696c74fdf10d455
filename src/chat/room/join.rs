//! Joins, paced replays and leaves at a room's home.
//!
//! A join with `since` replays what the client missed, one page at a time:
//! the first page comes with `joined` (from the ring when it still holds
//! `since + 1`, else read from the store first); each next page is asked
//! for by the member shard once the client has drained the last, so the
//! home never holds a whole backlog for one client, and a backlog of any
//! size reaches a client that reads. The page that reaches the latest seq
//! is marked done; live frames follow it on the same FIFO channel, so
//! nothing is missed or doubled.

use super::super::frames;
use super::super::msg::{MemberMsg, ReplayPage, UserMsg};
use super::super::{ChatApp, ChatPort, NameJson, RoomName, Seq, UserId};
use super::{store_unavailable, HomeRoom, Presence, PresenceEvent, StoreOp};
use crate::bus::ConnRef;
use crate::protocol::ReqId;
use crate::store::{RangeQuery, StoreError, StoredMessage};
use bytes::Bytes;

/// Messages per replay page read from the store (then cut to the page's
/// byte budget).
const STORE_PAGE: usize = 100;
/// Messages per replay page taken from the ring.
const RING_PAGE: usize = 1000;

/// A replay page's byte budget: a quarter of what a connection may have
/// unsent, so a page plus what is still queued when the next is asked for
/// stays well under the slow-consumer limit. At least one message.
pub(in crate::chat) fn page_bytes(max_outbound_bytes: usize) -> usize {
    (max_outbound_bytes / 4).clamp(1, 256 << 10)
}

pub(in crate::chat) struct JoinRequest {
    pub conn: ConnRef,
    pub user: UserId,
    pub name_json: NameJson,
    /// Last seq the client has (`u64::MAX`: no `since`, no replay).
    pub since: Seq,
    pub id: ReqId,
    pub rejoin: bool,
    /// Cluster mode: users present on any node, as Redis counted them when
    /// the join's state was read (`joined.members` spans the cluster).
    pub cluster_members: Option<u64>,
    /// `joined` carries the members' read markers (extension).
    pub reads: bool,
    /// Presence as `presence_diff` frames (extension).
    pub batched: bool,
}

/// A join whose first replay page is being read from the store.
pub(in crate::chat) struct FirstPage {
    room: RoomName,
    join: JoinRequest,
    /// `since` was beyond the latest seq: replayed from 0, not recovered.
    reset: bool,
}

/// A later replay page being read from the store.
pub(in crate::chat) struct NextPage {
    room: RoomName,
    conn: ConnRef,
    after: Seq,
}

impl ChatApp {
    pub(in crate::chat) fn home_join(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        mut join: JoinRequest,
    ) {
        let page_bytes = self.page_bytes;
        let has_store = self.store.enabled();
        let room = self.home_room_to_read(&room_name, port.shards());
        // A `since` beyond the latest seq comes from an older epoch: the
        // client gets the whole new history (PROTOCOL 5.2).
        let reset = join.since != u64::MAX && join.since > room.committed;
        if reset {
            join.since = 0;
        }
        let since = join.since;
        let in_ring = since >= room.committed || since.saturating_add(1) >= room.first_in_ring();
        if in_ring || !has_store {
            let (page, upto) = ring_page(room, since, page_bytes);
            self.join_take_effect(port, &room_name, join, page, upto, in_ring && !reset);
            return;
        }
        // Older than the ring: the first page comes from the store.
        room.waiting.insert(join.conn, join.rejoin);
        let q = RangeQuery {
            after: Some(since),
            before: Some(room.first_in_ring()),
            limit: STORE_PAGE,
        };
        let first = FirstPage {
            room: room_name.clone(),
            join,
            reset,
        };
        self.store
            .start_range(port, &room_name, q, StoreOp::FirstPage(first));
    }

    /// The first replay page of a join came from the store.
    pub(super) fn first_page_read(
        &mut self,
        port: &mut ChatPort,
        p: FirstPage,
        result: Result<(Vec<StoredMessage>, bool), StoreError>,
    ) {
        let page_bytes = self.page_bytes;
        let Some(home) = self.homes.get_mut(&p.room) else {
            return;
        };
        if !home.waiting.contains_key(&p.join.conn) {
            return; // left meanwhile
        }
        home.waiting.remove(&p.join.conn);
        let msgs = match result {
            Ok((msgs, _)) => msgs,
            Err(e) => {
                tracing::warn!("replay read failed: {e}");
                let msg = MemberMsg::JoinDone {
                    room: p.room.clone(),
                    conn: p.join.conn,
                    frames: vec![frames::error(&p.join.id, &store_unavailable())],
                    last_seq: 0,
                    accepted: false,
                    more: false,
                };
                self.router.to_conn_shard(port, p.join.conn, msg);
                self.evict_if_unused(&p.room);
                return;
            }
        };
        let since = p.join.since;
        let recovered = !p.reset && msgs.first().is_some_and(|m| m.seq == since + 1);
        let (page, upto) = store_page(home, since, &msgs, page_bytes);
        self.join_take_effect(port, &p.room, p.join, page, upto, recovered);
    }

    /// The member shard asks for the next page of a paced replay.
    pub(super) fn replay_more(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        conn: ConnRef,
        after: Seq,
    ) {
        let page_bytes = self.page_bytes;
        let has_store = self.store.enabled();
        let shards = port.shards();
        if !self.homes.contains_key(&room_name) {
            return; // gone: the member has left
        }
        let room = self.home_room_to_read(&room_name, shards);
        if after >= room.committed || after.saturating_add(1) >= room.first_in_ring() || !has_store
        {
            let (frames, upto) = ring_page(room, after, page_bytes);
            let done = upto >= room.committed;
            let msg = replay_page(room_name, conn, after, frames, upto, done);
            self.router.to_conn_shard(port, conn, msg);
            return;
        }
        let q = RangeQuery {
            after: Some(after),
            before: Some(room.first_in_ring()),
            limit: STORE_PAGE,
        };
        let next = NextPage {
            room: room_name.clone(),
            conn,
            after,
        };
        self.store
            .start_range(port, &room_name, q, StoreOp::NextPage(next));
    }

    /// A later replay page came from the store.
    pub(super) fn next_page_read(
        &mut self,
        port: &mut ChatPort,
        p: NextPage,
        result: Result<(Vec<StoredMessage>, bool), StoreError>,
    ) {
        let page_bytes = self.page_bytes;
        let Some(home) = self.homes.get(&p.room) else {
            return;
        };
        let msg = match result {
            Ok((msgs, _)) => {
                let (frames, upto) = store_page(home, p.after, &msgs, page_bytes);
                let done = upto >= home.committed;
                replay_page(p.room, p.conn, p.after, frames, upto, done)
            }
            Err(e) => {
                tracing::warn!("replay read failed: {e}");
                MemberMsg::ReplayPage(ReplayPage {
                    room: p.room,
                    conn: p.conn,
                    after: p.after,
                    frames: Vec::new(),
                    upto: p.after,
                    done: false,
                    failed: true,
                })
            }
        };
        self.router.to_conn_shard(port, p.conn, msg);
    }

    /// The join counts from now: register the member, announce the user,
    /// and send `joined` + the first replay page on the channel the live
    /// frames use.
    fn join_take_effect(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        join: JoinRequest,
        page: Vec<Bytes>,
        upto: Seq,
        recovered: bool,
    ) {
        let room = self.home_room(room_name, port.shards());
        room.last_active_ms = port.now_ms();
        let mut announce = None;
        if !join.rejoin {
            if room.dm.is_none() {
                room.shard_members[join.conn.shard as usize] += 1;
                if join.batched {
                    room.shard_batched[join.conn.shard as usize] += 1;
                }
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
        let reads = join.reads.then(|| members_reads(room, &join.user));
        let joined = frames::joined(&frames::Joined {
            id: &join.id,
            room: room_name,
            seq: room.committed,
            epoch: &room.epoch,
            members: join
                .cluster_members
                .map_or(room.users.len(), |n| room.users.len().max(n as usize)),
            read: read.unwrap_or(0),
            recovered,
            reads: reads.as_deref(),
        });
        let upto = upto.min(room.committed);
        let more = upto < room.committed;
        let mut out = Vec::with_capacity(1 + page.len());
        out.push(joined);
        out.extend(page);
        let msg = MemberMsg::JoinDone {
            room: room_name.clone(),
            conn: join.conn,
            frames: out,
            last_seq: if more { upto } else { room.committed },
            accepted: true,
            more,
        };
        self.router.to_conn_shard(port, join.conn, msg);
        let listing = UserMsg::Listing {
            user: join.user.clone(),
            room: room_name.clone(),
            member: true,
        };
        self.router.to_user_home(port, &join.user, listing);
        if let Some(frame) = announce {
            match self.broker() {
                // Redis announces it to every node (this one included).
                Some(b) => b.presence_add(room_name, &join.user, &join.name_json, None),
                None => {
                    let ev = PresenceEvent::Joined {
                        user: join.user,
                        name_json: join.name_json,
                    };
                    self.presence_event(port, room_name, ev, frame);
                }
            }
        }
    }

    pub(super) fn home_leave(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        conn: ConnRef,
        user: &UserId,
        explicit: bool,
        batched: bool,
    ) {
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        // Some(false): the join never took effect and the connection was not
        // counted. Some(true): a second join was pending; the first counts.
        if let Some(false) = room.waiting.remove(&conn) {
            self.evict_if_unused(room_name);
            return;
        }
        room.last_active_ms = port.now_ms();
        if room.dm.is_none() {
            if let Some(n) = room.shard_members.get_mut(conn.shard as usize) {
                *n = n.saturating_sub(1);
            }
            if let Some(n) = room.shard_batched.get_mut(conn.shard as usize) {
                *n = n.saturating_sub(u32::from(batched));
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
        match self.broker() {
            Some(b) => b.presence_remove(room_name, user, None),
            None => {
                let frame = frames::user_left(room_name, user);
                let ev = PresenceEvent::Left { user: user.clone() };
                self.presence_event(port, room_name, ev, frame);
            }
        }
        self.evict_if_unused(room_name);
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

/// Most read markers a `joined` carries: the highest ones, which are what
/// "seen by" shows.
pub(in crate::chat) const MAX_JOINED_READS: usize = 100;

/// Other users' read markers (above 0), highest first, at most
/// `MAX_JOINED_READS`; ties by user id so the answer is stable.
fn members_reads(room: &HomeRoom, me: &UserId) -> Vec<(UserId, Seq)> {
    let mut reads: Vec<(UserId, Seq)> = room
        .read
        .iter()
        .filter(|(u, &seq)| seq > 0 && *u != me)
        .map(|(u, &seq)| (u.clone(), seq))
        .collect();
    let by_seq_desc = |a: &(UserId, Seq), b: &(UserId, Seq)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if reads.len() > MAX_JOINED_READS {
        reads.select_nth_unstable_by(MAX_JOINED_READS - 1, by_seq_desc);
        reads.truncate(MAX_JOINED_READS);
    }
    reads.sort_unstable_by(by_seq_desc);
    reads
}

/// Frames after `after` from the ring, at most a page; and the seq reached.
fn ring_page(room: &HomeRoom, after: Seq, page_bytes: usize) -> (Vec<Bytes>, Seq) {
    let first = room.first_in_ring();
    let skip = usize::try_from(after.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
    let mut frames = Vec::new();
    let mut bytes = 0;
    let mut upto = after.max(first.saturating_sub(1));
    for e in room.ring.iter().skip(skip) {
        if frames.len() >= RING_PAGE || (bytes + e.frame.len() > page_bytes && !frames.is_empty()) {
            break;
        }
        bytes += e.frame.len();
        frames.push(e.frame.clone());
        upto = e.seq;
    }
    (frames, upto.max(after))
}

/// A page read from the store as frames, and the seq it reaches. Nothing
/// read below the ring means retention dropped it: the replay skips to the
/// ring.
fn store_page(
    room: &HomeRoom,
    after: Seq,
    msgs: &[StoredMessage],
    page_bytes: usize,
) -> (Vec<Bytes>, Seq) {
    if msgs.is_empty() {
        return (
            Vec::new(),
            room.first_in_ring().saturating_sub(1).max(after),
        );
    }
    let mut page = Vec::new();
    let mut bytes = 0;
    let mut upto = after;
    for m in msgs {
        let frame = frames::stored_message(m);
        if bytes + frame.len() > page_bytes && !page.is_empty() {
            break;
        }
        bytes += frame.len();
        upto = m.seq;
        page.push(frame);
    }
    (page, upto)
}

fn replay_page(
    room: RoomName,
    conn: ConnRef,
    after: Seq,
    frames: Vec<Bytes>,
    upto: Seq,
    done: bool,
) -> MemberMsg {
    MemberMsg::ReplayPage(ReplayPage {
        room,
        conn,
        after,
        frames,
        upto,
        done,
        failed: false,
    })
}
