//! The user-home role: for each user homed on this shard, the shards where
//! the user has connections (DMs are routed through here) and the rooms the
//! user belongs to (the `rooms` list, gathered from the rooms' homes).

use super::frames::{self, RoomEntry};
use super::msg::{HomeMsg, MemberMsg, UserMsg};
use super::{reserve_small, ChatApp, ChatPort, RoomName, UserId};
use crate::bus::ConnRef;
use crate::protocol::ReqId;
use smallvec::SmallVec;
use std::collections::HashMap;

#[derive(Default)]
pub(super) struct UserHome {
    /// Connections of the user per shard: (shard, count).
    shards: SmallVec<[(u32, u32); 1]>,
    /// The user's `rooms` list, sorted. A sorted Vec, not a BTreeSet: a
    /// B-tree leaf costs ~200 bytes even for one room, for every user.
    rooms: Vec<RoomName>,
}

impl UserHome {
    /// Adds a room; false if it was listed already.
    pub(super) fn list(&mut self, room: RoomName) -> bool {
        match self.rooms.binary_search(&room) {
            Ok(_) => false,
            Err(i) => {
                reserve_small(&mut self.rooms);
                self.rooms.insert(i, room);
                true
            }
        }
    }

    /// (shard, connections) where the user is connected.
    pub(super) fn shard_counts(&self) -> &[(u32, u32)] {
        &self.shards
    }

    /// The user's `rooms` list, sorted.
    pub(super) fn rooms(&self) -> &[RoomName] {
        &self.rooms
    }

    /// Removes a room; false if it was not listed.
    fn unlist(&mut self, room: &RoomName) -> bool {
        match self.rooms.binary_search(room) {
            Ok(i) => {
                self.rooms.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

/// A `rooms` request waiting for the rooms' homes to answer.
pub(super) struct Gather {
    conn: ConnRef,
    id: ReqId,
    remaining: usize,
    entries: Vec<RoomEntry>,
}

impl ChatApp {
    pub(super) fn on_user_msg(&mut self, port: &mut ChatPort, msg: UserMsg) {
        match msg {
            UserMsg::Online { user, shard } => {
                let home = self.user_homes.entry(user.clone()).or_default();
                let first = home.shards.is_empty();
                match home.shards.iter_mut().find(|(s, _)| *s == shard) {
                    Some((_, n)) => *n += 1,
                    None => home.shards.push((shard, 1)),
                }
                if first {
                    if let Some(c) = &self.cluster {
                        c.broker.subscribe_user(&user);
                    }
                    self.dm_online(port, &user);
                }
            }
            UserMsg::Offline { user, shard } => {
                if let Some(home) = self.user_homes.get_mut(&user) {
                    if let Some(i) = home.shards.iter().position(|(s, _)| *s == shard) {
                        home.shards[i].1 -= 1;
                        if home.shards[i].1 == 0 {
                            home.shards.swap_remove(i);
                        }
                    }
                    if home.shards.is_empty() {
                        if let Some(c) = &mut self.cluster {
                            c.broker.unsubscribe_user(&user);
                            c.dm_offline(&user);
                        }
                    }
                    if home.shards.is_empty() && home.rooms.is_empty() {
                        self.user_homes.remove(&user);
                    }
                }
            }
            UserMsg::Dm {
                user,
                room,
                seq,
                frame,
                received,
            } => {
                let Some(home) = self.user_homes.get(&user) else {
                    return;
                };
                for &(shard, _) in &home.shards {
                    port.bus(
                        shard as usize,
                        MemberMsg::UserFrame {
                            user: user.clone(),
                            room: room.clone(),
                            seq,
                            frame: frame.clone(),
                            received,
                        }
                        .into(),
                    );
                }
            }
            UserMsg::Listing { user, room, member } => self.listing(port, user, room, member),
            UserMsg::RoomsRequest { user, conn, id } if self.cluster.is_some() => {
                self.cluster_rooms(port, &user, conn, id)
            }
            UserMsg::RoomsRequest { user, conn, id } => self.rooms_request(port, user, conn, id),
            UserMsg::RoomInfoReply { gather, entries } => {
                let Some(g) = self.gathers.get_mut(&gather) else {
                    return;
                };
                g.entries.extend(entries);
                g.remaining -= 1;
                if g.remaining == 0 {
                    if let Some(g) = self.gathers.remove(&gather) {
                        self.send_rooms(port, g);
                    }
                }
            }
        }
    }

    fn listing(&mut self, _port: &mut ChatPort, user: UserId, room: RoomName, member: bool) {
        let home = self.user_homes.entry(user.clone()).or_default();
        let changed = if member {
            home.list(room.clone())
        } else {
            home.unlist(&room)
        };
        // The user home is the one place that decides the list, so it alone
        // persists it: only changes reach the store.
        if changed {
            self.store.set_listed(&user, &room, member);
        }
    }

    /// `rooms`: scatter to the homes of the user's rooms, gather here.
    fn rooms_request(&mut self, port: &mut ChatPort, user: UserId, conn: ConnRef, id: ReqId) {
        let rooms: Vec<RoomName> = self
            .user_homes
            .get(&user)
            .map(|h| h.rooms.to_vec())
            .unwrap_or_default();
        let mut by_home: HashMap<usize, Vec<RoomName>> = HashMap::new();
        for r in rooms {
            by_home
                .entry(self.router.room_home(&r))
                .or_default()
                .push(r);
        }
        let g = Gather {
            conn,
            id,
            remaining: by_home.len(),
            entries: Vec::new(),
        };
        if by_home.is_empty() {
            self.send_rooms(port, g);
            return;
        }
        let gather = self.next_gather;
        self.next_gather += 1;
        self.gathers.insert(gather, g);
        for (home, rooms) in by_home {
            port.bus(
                home,
                HomeMsg::RoomInfo {
                    gather,
                    reply_shard: self.shard as u32,
                    user: user.clone(),
                    rooms,
                }
                .into(),
            );
        }
    }

    fn send_rooms(&mut self, port: &mut ChatPort, mut g: Gather) {
        g.entries.sort_by(|a, b| a.room.cmp(&b.room));
        let frame = frames::rooms(&g.id, &g.entries);
        self.router.to_conn_shard(
            port,
            g.conn,
            MemberMsg::ToConn {
                conn: g.conn,
                frame,
            },
        );
    }
}
