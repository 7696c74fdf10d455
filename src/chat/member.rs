//! The member role: a shard's own connections. It welcomes them, keeps each
//! room's local member list, and queues the one shared frame a home sends on
//! every local member (the fan-out's last step).

use super::frames;
use super::msg::{Delivery, HomeMsg, MemberMsg, ReplayPage, UserMsg};
use super::session::{JoinState, Session};
use super::{ChatApp, ChatPort, RoomName, Seq};
use crate::bus::ConnRef;
use crate::http::Response;
use crate::metrics::{self, DisconnectReason};
use crate::ws::{close_code, SharedFrame};
use bytes::Bytes;
use std::time::Instant;

/// DM frames kept for a connection while its join of that DM room replays.
const HELD_DM_FRAMES: usize = 1024;

/// A reply to one of `key`'s requests was queued: one less in preparation,
/// and reading may resume.
fn reply_arrived(port: &mut ChatPort, key: usize) {
    if let Some(s) = port.session_mut(key) {
        s.inflight = s.inflight.saturating_sub(1);
        if s.inflight < super::session::MAX_INFLIGHT {
            port.resume_input(key);
        }
    }
}

impl ChatApp {
    /// The WebSocket is open: say welcome, and tell the user's home.
    pub(super) fn member_open(&mut self, port: &mut ChatPort, key: usize) {
        let conn = port.conn_ref(key);
        let Some(session) = port.session(key) else {
            return;
        };
        let user = session.identity.user.clone();
        let node = &self.shared.node_id;
        let cfg = port.config();
        let welcome = frames::welcome(&frames::Welcome {
            user: &user,
            name_json: &session.name_json,
            session: &format!("{node}-{}-{}", self.shard, conn.id),
            node,
            heartbeat_ms: cfg.heartbeat_ms,
            max_frame_bytes: cfg.max_frame_bytes,
            max_body_bytes: cfg.max_body_bytes,
            rate_per_sec: cfg.rate_per_sec,
            burst: cfg.burst,
        });
        port.send(key, welcome);
        let keys = self.users_here.entry(user.clone()).or_default();
        keys.push(key);
        if keys.len() == 1 {
            let msg = UserMsg::Online {
                user: user.clone(),
                shard: self.shard as u32,
            };
            self.router.to_user_home(port, &user, msg);
        }
    }

    /// The connection is gone: leave its rooms, tell the user's home.
    pub(super) fn member_close(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        conn: ConnRef,
        session: Session,
    ) {
        let user = session.identity.user.clone();
        for joined in &session.rooms {
            if let JoinState::Member(pos) = joined.state {
                self.remove_member(port, &joined.room, pos, joined.batched);
            }
            let msg = HomeMsg::Leave {
                room: joined.room.clone(),
                conn,
                user: user.clone(),
                explicit: false,
                batched: joined.batched,
            };
            self.router.to_room_home(port, &joined.room, msg);
        }
        if let Some(keys) = self.users_here.get_mut(&user) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.users_here.remove(&user);
                let msg = UserMsg::Offline {
                    user: user.clone(),
                    shard: self.shard as u32,
                };
                self.router.to_user_home(port, &user, msg);
            }
        }
    }

    /// Removes the member at `pos` of a local room list; the member moved
    /// into its place gets its index updated.
    pub(super) fn remove_member(
        &mut self,
        port: &mut ChatPort,
        room: &RoomName,
        pos: u32,
        batched: bool,
    ) {
        let Some(members) = self.local.get_mut(room) else {
            return;
        };
        let pos = pos as usize;
        if pos >= members.len() {
            return;
        }
        if batched {
            if let Some(n) = self.local_batched.get_mut(room) {
                *n -= 1;
                if *n == 0 {
                    self.local_batched.remove(room);
                }
            }
        }
        members.swap_remove(pos);
        if let Some(&moved) = members.get(pos) {
            if let Some(j) = port.session_mut(moved).and_then(|s| s.joined_mut(room)) {
                j.state = JoinState::Member(pos as u32);
            }
        }
        if members.is_empty() {
            self.local.remove(room);
        }
    }

    pub(super) fn on_member_msg(&mut self, port: &mut ChatPort, msg: MemberMsg) {
        match msg {
            MemberMsg::JoinDone {
                room,
                conn,
                frames,
                last_seq,
                accepted,
                more,
            } => {
                if let Some(key) = port.resolve(conn) {
                    reply_arrived(port, key);
                    self.join_done(port, key, room, frames, last_seq, accepted, more);
                }
            }
            MemberMsg::ReplayPage(page) => {
                if let Some(key) = port.resolve(page.conn) {
                    self.replay_page(port, key, page);
                }
            }
            MemberMsg::RoomFrame {
                room,
                frame,
                except_user,
                received,
                class,
            } => self.room_frame(port, &room, frame, except_user.as_deref(), received, class),
            MemberMsg::UserFrame {
                user,
                room,
                seq,
                frame,
                received,
            } => self.user_frame(port, &user, &room, seq, frame, received),
            MemberMsg::ToConn { conn, frame } => {
                if let Some(key) = port.resolve(conn) {
                    port.send(key, frame);
                    reply_arrived(port, key);
                }
            }
            MemberMsg::HttpReply { conn, status, body } => {
                if let Some(key) = port.resolve(conn) {
                    port.respond_http(key, Response::json(status, body));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join_done(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        room: RoomName,
        frames: Vec<Bytes>,
        last_seq: Seq,
        accepted: bool,
        more: bool,
    ) {
        let Some(session) = port.session_mut(key) else {
            return;
        };
        let Some(joined) = session.joined_mut(&room) else {
            return; // left meanwhile; the leave told the home
        };
        if joined.state != JoinState::Pending {
            return;
        }
        if !accepted {
            session.forget(&room);
            for f in frames {
                port.send(key, f);
            }
            return;
        }
        for f in frames {
            port.send(key, f);
        }
        if more {
            self.set_replaying(port, key, &room, last_seq);
        } else {
            self.go_live(port, key, &room, last_seq);
        }
    }

    /// The replay continues: the next page is asked for once the client
    /// has drained this one (`on_drained`).
    fn set_replaying(&mut self, port: &mut ChatPort, key: usize, room: &str, upto: Seq) {
        if let Some(j) = port.session_mut(key).and_then(|s| s.joined_mut(room)) {
            j.state = JoinState::Replaying { upto, asked: false };
            j.held.retain(|(seq, _)| *seq > upto);
        }
        port.notify_drained(key);
    }

    /// The replay has caught up (`upto`): the connection becomes a live
    /// member; live frames follow on the channel the replay came by.
    fn go_live(&mut self, port: &mut ChatPort, key: usize, room: &RoomName, upto: Seq) {
        let is_dm = room.starts_with("dm:");
        let Some(joined) = port.session_mut(key).and_then(|s| s.joined_mut(room)) else {
            return;
        };
        let held = std::mem::take(&mut joined.held);
        if is_dm {
            joined.state = JoinState::Dm;
        } else {
            let members = self.local.entry(room.clone()).or_default();
            joined.state = JoinState::Member(members.len() as u32);
            members.push(key);
            if joined.batched {
                *self.local_batched.entry(room.clone()).or_default() += 1;
            }
        }
        // DM frames that came by the user route during the join: only those
        // the replay did not already carry.
        let mut floor = upto;
        for (seq, f) in held {
            if seq == 0 || seq > floor {
                floor = floor.max(seq);
                port.send(key, f);
            }
        }
        if let Some(j) = port.session_mut(key).and_then(|s| s.joined_mut(room)) {
            j.floor = floor;
        }
    }

    /// The client drained its queue: ask the homes for the next replay pages.
    pub(super) fn replay_next_pages(&mut self, port: &mut ChatPort, key: usize) {
        let conn = port.conn_ref(key);
        let Some(session) = port.session_mut(key) else {
            return;
        };
        let mut asks = Vec::new();
        for j in &mut session.rooms {
            if let JoinState::Replaying { upto, asked: false } = j.state {
                j.state = JoinState::Replaying { upto, asked: true };
                asks.push((j.room.clone(), upto));
            }
        }
        for (room, after) in asks {
            let msg = HomeMsg::ReplayMore {
                room: room.clone(),
                conn,
                after,
            };
            self.router.to_room_home(port, &room, msg);
        }
    }

    fn replay_page(&mut self, port: &mut ChatPort, key: usize, page: ReplayPage) {
        let room = &page.room;
        let expected = port
            .session(key)
            .and_then(|s| s.joined(room))
            .is_some_and(|j| {
                j.state
                    == JoinState::Replaying {
                        upto: page.after,
                        asked: true,
                    }
            });
        if !expected {
            return; // left, or a page of an earlier join
        }
        if page.failed {
            port.close(
                key,
                close_code::OVERLOAD,
                "history unavailable; resume later",
                DisconnectReason::SlowConsumer,
            );
            return;
        }
        for f in page.frames {
            port.send(key, f);
        }
        if page.done {
            self.go_live(port, key, room, page.upto);
        } else {
            self.set_replaying(port, key, room, page.upto);
        }
    }

    fn room_frame(
        &mut self,
        port: &mut ChatPort,
        room: &str,
        frame: SharedFrame,
        except_user: Option<&str>,
        received: Option<Instant>,
        class: Delivery,
    ) {
        let Some(members) = self.local.get(room) else {
            return;
        };
        let batched_here = self.local_batched.get(room).copied().unwrap_or(0);
        // Some(b): only members whose presence mode is batched == b.
        let only = match class {
            Delivery::Diff if batched_here == 0 => return,
            Delivery::Diff => Some(true),
            Delivery::Presence if batched_here > 0 => Some(false),
            _ => None,
        };
        let deferred = class != Delivery::Now;
        let delivered = match (except_user, only, deferred) {
            (None, None, false) => {
                port.send_many_shared(members, &frame);
                members.len()
            }
            _ => {
                let mut n = 0;
                for &key in members {
                    let Some(s) = port.session(key) else {
                        continue;
                    };
                    if except_user.is_some_and(|e| *s.identity.user == *e) {
                        continue;
                    }
                    if let Some(want) = only {
                        if s.joined(room).is_some_and(|j| j.batched) != want {
                            continue;
                        }
                    }
                    if deferred {
                        port.send_shared_deferred(key, &frame);
                    } else {
                        port.send_shared(key, &frame);
                    }
                    n += 1;
                }
                n
            }
        };
        metrics::add(&port.metrics().deliveries, delivered as u64);
        if let Some(t0) = received {
            self.record_latency(t0.elapsed().as_micros().max(1) as u64);
        }
    }

    fn user_frame(
        &mut self,
        port: &mut ChatPort,
        user: &str,
        room: &str,
        seq: Seq,
        frame: Bytes,
        received: Instant,
    ) {
        let Some(keys) = self.users_here.get(user) else {
            return;
        };
        let mut delivered = 0u64;
        for &key in keys {
            let Some(session) = port.session_mut(key) else {
                continue;
            };
            if let Some(j) = session.joined_mut(room) {
                match j.state {
                    JoinState::Pending | JoinState::Replaying { .. } => {
                        // Bounded: past the cap, a message is left to the
                        // replay, which reads every committed one.
                        if j.held.len() < HELD_DM_FRAMES {
                            j.held.push((seq, frame.clone()));
                        }
                        continue;
                    }
                    _ if seq > 0 && seq <= j.floor => continue,
                    _ => j.floor = j.floor.max(seq),
                }
            }
            port.send(key, frame.clone());
            delivered += 1;
        }
        metrics::add(&port.metrics().deliveries, delivered);
        if seq > 0 {
            self.record_latency(received.elapsed().as_micros().max(1) as u64);
        }
    }
}
