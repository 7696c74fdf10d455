//! Joins in cluster mode, at the room's home.
//!
//! A join reads the room's state from Redis (seq, epoch, the user's read
//! marker, the members on every node) before it takes effect. The first
//! local join of a room also subscribes its channel, and joins wait (up to
//! `DEFERRED_JOIN_WAIT_MS`) for the subscription to be confirmed, so a
//! client that got `joined` also gets every later frame. A join whose
//! state shows a seq this node has not delivered yet waits for it (same
//! bound), so `joined.seq` is never below a seq acked before the join.

use super::unavailable;
use super::{BrokerDone, JoinRequest};
use crate::broker::{BrokerError, GapTracker, RoomState, Step};
use crate::chat::frames;
use crate::chat::msg::MemberMsg;
use crate::chat::room::MAX_JOINED_READS;
use crate::chat::{ChatApp, ChatPort, RoomName, UserId};

/// Joins of one room that may wait for its subscription (or for a seq);
/// past it, a join goes ahead at once.
const DEFERRED_JOINS_MAX: usize = 4096;
/// How long a join waits for its room's subscription to be confirmed.
const DEFERRED_JOIN_WAIT_MS: u64 = 2000;

impl ChatApp {
    /// A join in cluster mode: read the room's state (seq, epoch, the
    /// user's marker) first; the first local join also subscribes the room.
    pub(in crate::chat) fn cluster_join(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        join: JoinRequest,
    ) {
        let shards = port.shards();
        let Some(c) = &self.cluster else {
            return;
        };
        let broker = c.broker.clone();
        let home = self.home_room(&room_name, shards);
        home.waiting.insert(join.conn, join.rejoin);
        if home.dm.is_none() && !home.cluster.subscribed {
            home.cluster.subscribed = true;
            broker.subscribe_room(&room_name);
        }
        // With the broker down the state read fails at once: `unavailable`.
        let wait = home.dm.is_none()
            && !home.cluster.live
            && broker.available()
            && home.cluster.deferred.len() < DEFERRED_JOINS_MAX;
        if wait {
            if home.cluster.deferred.is_empty() {
                home.cluster.deferred_since_ms = port.now_ms();
            }
            home.cluster.deferred.push(join);
            return;
        }
        self.request_state(port, room_name, join);
    }

    /// Joins still waiting for a subscription after `DEFERRED_JOIN_WAIT_MS`
    /// go ahead anyway (a confirmation lost in a reconnect must not leave a
    /// client without an answer).
    pub(in crate::chat) fn release_stale_joins(&mut self, port: &mut ChatPort) {
        if self.cluster.is_none() {
            return;
        }
        let now = port.now_ms();
        let mut stale = Vec::new();
        for (room, home) in &mut self.homes {
            let c = &mut home.cluster;
            if !c.deferred.is_empty()
                && now.saturating_sub(c.deferred_since_ms) >= DEFERRED_JOIN_WAIT_MS
            {
                stale.extend(
                    std::mem::take(&mut c.deferred)
                        .into_iter()
                        .map(|j| (room.clone(), j)),
                );
            }
        }
        for (room, join) in stale {
            self.request_state(port, room, join);
        }
        let overdue: Vec<RoomName> = self
            .homes
            .iter()
            .filter(|(_, h)| {
                let c = &h.cluster;
                !c.awaiting.is_empty()
                    && now.saturating_sub(c.awaiting_since_ms) >= DEFERRED_JOIN_WAIT_MS
            })
            .map(|(r, _)| r.clone())
            .collect();
        for room in overdue {
            self.release_awaiting(port, &room, true);
        }
    }

    /// Reads the room's seq, epoch and the user's marker for a join.
    pub(super) fn request_state(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        join: JoinRequest,
    ) {
        let Some(c) = &self.cluster else {
            return;
        };
        let user = join.user.clone();
        let reads = if join.reads { MAX_JOINED_READS } else { 0 };
        let room_key = room_name.clone();
        let cb = c.reply(port, move |result| BrokerDone::State {
            room: room_key,
            join,
            result,
        });
        c.broker.state_with_reads(&room_name, &user, reads, cb);
    }

    pub(super) fn state_read(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        join: JoinRequest,
        result: Result<RoomState, BrokerError>,
    ) {
        let Some(home) = self.homes.get_mut(&room_name) else {
            // Forgotten meanwhile (history lost): the client asks again.
            self.refuse_join(port, &room_name, &join);
            return;
        };
        if !home.waiting.contains_key(&join.conn) {
            self.evict_if_unused(&room_name);
            return; // left meanwhile
        }
        let st = match result {
            Ok(st) => st,
            Err(e) => {
                tracing::warn!("room state read failed: {e}");
                home.waiting.remove(&join.conn);
                self.refuse_join(port, &room_name, &join);
                self.evict_if_unused(&room_name);
                return;
            }
        };
        home.epoch = st.epoch.as_str().into();
        home.read.insert(join.user.clone(), st.read);
        // Markers set on other nodes (asked only for `joined.reads`).
        for (user, seq) in st.reads {
            let mark = home.read.entry(UserId::from(user.as_str())).or_insert(0);
            *mark = (*mark).max(seq);
        }
        let join = JoinRequest {
            cluster_members: Some(st.members),
            ..join
        };
        let mut step = None;
        if home.dm.is_some() {
            home.committed = home.committed.max(st.seq);
        } else if home.cluster.tracker.is_none() {
            let mut t = GapTracker::new(st.seq);
            home.committed = st.seq;
            let mut s = Step::default();
            for (seq, json) in std::mem::take(&mut home.cluster.early) {
                let more = t.offer(seq, json);
                s.deliver.extend(more.deliver);
                s.read_after = s.read_after.or(more.read_after);
            }
            // Frames published between the state read and the subscription
            // going live: read them from the stream.
            if s.read_after.is_none() {
                s.read_after = t.catch_up();
            }
            home.cluster.tracker = Some(t);
            step = Some(s);
        } else if st.seq > home.committed && home.cluster.awaiting.len() < DEFERRED_JOINS_MAX {
            if home.cluster.awaiting.is_empty() {
                home.cluster.awaiting_since_ms = port.now_ms();
            }
            home.cluster.awaiting.push((st.seq, join));
            return;
        }
        if let Some(s) = step {
            self.apply_step(port, &room_name, s);
        }
        self.join_now(port, room_name, join);
    }

    /// Answers a join `unavailable`; it never took effect.
    pub(super) fn refuse_join(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        join: &JoinRequest,
    ) {
        let msg = MemberMsg::JoinDone {
            room: room_name.clone(),
            conn: join.conn,
            frames: vec![frames::error(&join.id, &unavailable())],
            last_seq: 0,
            accepted: false,
            more: false,
        };
        self.router.to_conn_shard(port, join.conn, msg);
    }

    /// The join takes effect (unless its connection left meanwhile).
    fn join_now(&mut self, port: &mut ChatPort, room_name: RoomName, join: JoinRequest) {
        let Some(home) = self.homes.get_mut(&room_name) else {
            return;
        };
        if home.waiting.remove(&join.conn).is_none() {
            self.evict_if_unused(&room_name);
            return;
        }
        self.home_join(port, room_name, join);
    }

    /// Awaiting joins whose seq has been delivered (or, past
    /// `DEFERRED_JOIN_WAIT_MS`, all of them: frames lost in a cut come with
    /// the next catch-up, and the member gets them live).
    pub(super) fn release_awaiting(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        all: bool,
    ) {
        let Some(home) = self.homes.get_mut(room_name) else {
            return;
        };
        let committed = home.committed;
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut home.cluster.awaiting)
            .into_iter()
            .partition(|(seq, _)| all || *seq <= committed);
        home.cluster.awaiting = rest;
        for (_, join) in ready {
            self.join_now(port, room_name.clone(), join);
        }
    }
}
