//! Presence, read markers and the `rooms` scatter step at a room's home.

use super::super::frames::{self, RoomEntry};
use super::super::msg::{Delivery, MemberMsg, UserMsg};
use super::super::{ChatApp, ChatPort, RoomName, Seq, UserId};
use crate::bus::ConnRef;
use crate::protocol::ReqId;

impl ChatApp {
    pub(super) fn home_presence(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        conn: ConnRef,
        id: &ReqId,
    ) {
        let frame = match self.homes.get(room_name) {
            Some(room) => frames::presence(
                id,
                room_name,
                room.users.iter().map(|(u, p)| (&**u, &*p.name_json)),
            ),
            None => frames::presence(id, room_name, std::iter::empty()),
        };
        self.router
            .to_conn_shard(port, conn, MemberMsg::ToConn { conn, frame });
    }

    pub(super) fn home_read(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        user: UserId,
        seq: Seq,
    ) {
        let Some(room) = self.homes.get_mut(&room_name) else {
            return;
        };
        let seq = seq.min(room.committed);
        let marker = room.read.entry(user.clone()).or_insert(0);
        if seq <= *marker {
            return; // changes nothing: tells nobody (PROTOCOL 4)
        }
        *marker = seq;
        self.store.set_read(&user, &room_name, seq);
        let frame = frames::read(&room_name, &user, seq);
        self.broadcast(port, &room_name, frame, Some(user), Delivery::Now);
    }

    /// `rooms` scatter step: this home's seq and read marker of each room.
    pub(super) fn room_info(
        &mut self,
        port: &mut ChatPort,
        gather: u64,
        reply_shard: u32,
        user: &UserId,
        rooms: Vec<RoomName>,
    ) {
        let entries = rooms
            .into_iter()
            .map(|room| {
                let (seq, read) = self.homes.get(&room).map_or((0, 0), |h| {
                    (h.committed, h.read.get(user).copied().unwrap_or(0))
                });
                RoomEntry { room, seq, read }
            })
            .collect();
        port.bus(
            reply_shard as usize,
            UserMsg::RoomInfoReply { gather, entries }.into(),
        );
    }
}
