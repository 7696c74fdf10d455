//! Where things live and how frames get there: the one place that maps a
//! room or a user to its home shard and carries a ready-made frame to the
//! shards with members. Everything else in `chat` asks the router instead of
//! hashing names itself.
//!
//! `LocalRouter` is the single-process router (FNV-1a of the name over the
//! shards). A cluster plugs in here: a second implementation whose homes are
//! still local shards, and whose fan-out also reaches other nodes through
//! the broker.

use super::msg::{ChatMsg, Delivery, HomeMsg, MemberMsg, UserMsg};
use super::{ChatPort, RoomName, Seq, UserId};
use crate::bus::{home_of, ConnRef};
use crate::ws::SharedFrame;
use bytes::Bytes;
use std::time::Instant;

pub trait Router {
    /// The shard that numbers `room`'s messages and knows its members.
    fn room_home(&self, room: &str) -> usize;
    /// The shard that knows where `user`'s connections are.
    fn user_home(&self, user: &str) -> usize;

    /// Hands one encoded frame to every shard with local members of a room
    /// (`shard_members[s]`: member connections on shard `s`). The shards
    /// share it, and share its compressed twin, made once on first need.
    #[allow(clippy::too_many_arguments)]
    fn fan_out(
        &self,
        port: &mut ChatPort,
        room: &RoomName,
        shard_members: &[u32],
        frame: Bytes,
        except_user: Option<UserId>,
        received: Option<Instant>,
        class: Delivery,
    ) {
        let frame = SharedFrame::new(frame);
        for (shard, &n) in shard_members.iter().enumerate() {
            if n > 0 {
                port.bus(
                    shard,
                    ChatMsg::Member(MemberMsg::RoomFrame {
                        room: room.clone(),
                        frame: frame.clone(),
                        except_user: except_user.clone(),
                        received,
                        class,
                    }),
                );
            }
        }
    }

    /// Sends a DM room's frame to a participant's user home, which passes it
    /// to every shard where that user is connected.
    fn to_user(
        &self,
        port: &mut ChatPort,
        user: &UserId,
        room: &RoomName,
        seq: Seq,
        frame: Bytes,
        received: Instant,
    ) {
        port.bus(
            self.user_home(user),
            ChatMsg::User(UserMsg::Dm {
                user: user.clone(),
                room: room.clone(),
                seq,
                frame,
                received,
            }),
        );
    }

    fn to_room_home(&self, port: &mut ChatPort, room: &str, msg: HomeMsg) {
        port.bus(self.room_home(room), ChatMsg::Home(msg));
    }

    fn to_user_home(&self, port: &mut ChatPort, user: &str, msg: UserMsg) {
        port.bus(self.user_home(user), ChatMsg::User(msg));
    }

    /// To the shard of a connection (replies, join results).
    fn to_conn_shard(&self, port: &mut ChatPort, conn: ConnRef, msg: MemberMsg) {
        port.bus(conn.shard as usize, ChatMsg::Member(msg));
    }
}

/// One process: homes spread over its shards by name hash.
pub struct LocalRouter {
    shards: usize,
}

impl LocalRouter {
    pub fn new(shards: usize) -> Self {
        LocalRouter {
            shards: shards.max(1),
        }
    }
}

impl Router for LocalRouter {
    fn room_home(&self, room: &str) -> usize {
        home_of(room, self.shards)
    }

    fn user_home(&self, user: &str) -> usize {
        home_of(user, self.shards)
    }
}
