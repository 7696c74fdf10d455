//! The member role: a shard's own connections. It welcomes them, keeps each
//! room's local member list, and queues the one shared frame a home sends on
//! every local member (the fan-out's last step).

use super::frames;
use super::msg::{HomeMsg, MemberMsg, UserMsg};
use super::session::{JoinState, Session};
use super::{ChatApp, ChatPort, RoomName, Seq};
use crate::bus::ConnRef;
use crate::http::Response;
use crate::metrics;
use bytes::Bytes;
use std::time::Instant;

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
                self.remove_member(port, &joined.room, pos);
            }
            let msg = HomeMsg::Leave {
                room: joined.room.clone(),
                conn,
                user: user.clone(),
                explicit: false,
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
    pub(super) fn remove_member(&mut self, port: &mut ChatPort, room: &RoomName, pos: u32) {
        let Some(members) = self.local.get_mut(room) else {
            return;
        };
        let pos = pos as usize;
        if pos >= members.len() {
            return;
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
            } => self.join_done(port, room, conn, frames, last_seq, accepted),
            MemberMsg::RoomFrame {
                room,
                frame,
                except_user,
                received,
            } => self.room_frame(port, &room, frame, except_user.as_deref(), received),
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
                }
            }
            MemberMsg::HttpReply { conn, status, body } => {
                if let Some(key) = port.resolve(conn) {
                    port.respond_http(key, Response::json(status, body));
                }
            }
        }
    }

    fn join_done(
        &mut self,
        port: &mut ChatPort,
        room: RoomName,
        conn: ConnRef,
        frames: Vec<Bytes>,
        last_seq: Seq,
        accepted: bool,
    ) {
        let Some(key) = port.resolve(conn) else {
            return; // its disconnect already told the home
        };
        let is_dm = room.starts_with("dm:");
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
        let held = std::mem::take(&mut joined.held);
        if is_dm {
            joined.state = JoinState::Dm;
        } else {
            let members = self.local.entry(room.clone()).or_default();
            joined.state = JoinState::Member(members.len() as u32);
            members.push(key);
        }
        for f in frames {
            port.send(key, f);
        }
        // DM frames that came by the user route while the join was pending:
        // only those the replay did not already carry.
        let mut floor = last_seq;
        for (seq, f) in held {
            if seq == 0 || seq > floor {
                floor = floor.max(seq);
                port.send(key, f);
            }
        }
        if let Some(j) = port.session_mut(key).and_then(|s| s.joined_mut(&room)) {
            j.floor = floor;
        }
    }

    fn room_frame(
        &mut self,
        port: &mut ChatPort,
        room: &str,
        frame: Bytes,
        except_user: Option<&str>,
        received: Option<Instant>,
    ) {
        let Some(members) = self.local.get(room) else {
            return;
        };
        let delivered = match except_user {
            None => {
                port.send_many(members, &frame);
                members.len()
            }
            Some(except) => {
                let mut n = 0;
                for &key in members {
                    let same = port
                        .session(key)
                        .is_some_and(|s| &*s.identity.user == except);
                    if !same {
                        port.send(key, frame.clone());
                        n += 1;
                    }
                }
                n
            }
        };
        metrics::add(&port.metrics().deliveries, delivered as u64);
        if let Some(t0) = received {
            let _ = self.latency.record(t0.elapsed().as_micros().max(1) as u64);
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
                    JoinState::Pending => {
                        j.held.push((seq, frame.clone()));
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
            let _ = self
                .latency
                .record(received.elapsed().as_micros().max(1) as u64);
        }
    }
}
