//! What chat shards say to each other, grouped by the role that receives
//! the message. Every variant travels over the bus, which is FIFO per pair of
//! shards: that order is what makes join + replay + live exact.

use super::admin::stats::ShardStats;
use super::frames::RoomEntry;
use super::{NameJson, RoomName, Seq, UserId};
use crate::bus::{ConnRef, ReplyTo};
use crate::protocol::ReqId;
use crate::ws::SharedFrame;
use bytes::Bytes;
use std::time::Instant;

pub enum ChatMsg {
    Home(HomeMsg),
    Member(MemberMsg),
    User(UserMsg),
    Admin(AdminMsg),
}

/// The operator's API (`/api/admin/*`, `chat/admin/`).
pub enum AdminMsg {
    /// To every shard: its part of a stats answer, sent to `reply_shard`.
    Stats {
        gather: u64,
        reply_shard: u32,
        top: usize,
    },
    /// One shard's part, back to the shard that serves the request.
    StatsPart { gather: u64, part: Box<ShardStats> },
    /// To a user's home: where the user is connected; with `disconnect`,
    /// also close every one of those connections.
    User {
        user: UserId,
        conn: ConnRef,
        disconnect: bool,
    },
    /// From the user's home to each shard where the user is connected:
    /// count (and with `disconnect`, close) the user's connections there.
    UserHere {
        gather: u64,
        reply_shard: u32,
        user: UserId,
        disconnect: bool,
    },
    /// A shard's answer to `UserHere`.
    UserHereReply {
        gather: u64,
        shard: u32,
        connections: u32,
    },
}

/// Who asks a room's home for something.
pub struct Requester {
    pub conn: ConnRef,
    pub user: UserId,
    pub name_json: NameJson,
}

/// To a room's home shard.
pub enum HomeMsg {
    Join {
        room: RoomName,
        who: Requester,
        since: Option<Seq>,
        id: ReqId,
        /// The connection is already counted as a member (a second join).
        rejoin: bool,
        /// `joined` carries the members' read markers (extension).
        reads: bool,
        /// Presence as `presence_diff` frames (extension).
        batched: bool,
    },
    /// A connection left the room (request or disconnect).
    Leave {
        room: RoomName,
        conn: ConnRef,
        user: UserId,
        explicit: bool,
        /// The connection joined with batched presence.
        batched: bool,
    },
    Publish(Box<PublishReq>),
    History {
        room: RoomName,
        reply: ReplyTo,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: usize,
        id: ReqId,
    },
    Presence {
        room: RoomName,
        conn: ConnRef,
        id: ReqId,
    },
    Typing {
        room: RoomName,
        user: UserId,
    },
    Read {
        room: RoomName,
        user: UserId,
        seq: Seq,
    },
    /// The next page of a paced replay: messages after `after`.
    ReplayMore {
        room: RoomName,
        conn: ConnRef,
        after: Seq,
    },
    /// `rooms` scatter step: seq and read marker of these rooms for `user`.
    RoomInfo {
        gather: u64,
        reply_shard: u32,
        user: UserId,
        rooms: Vec<RoomName>,
    },
}

/// A message to number, store and fan out.
pub struct PublishReq {
    pub room: RoomName,
    pub reply: ReplyTo,
    pub user: UserId,
    pub name_json: NameJson,
    pub body: Box<str>,
    pub id: ReqId,
    pub received: Instant,
}

/// To a shard where members of a room (or a user's connections) live.
pub enum MemberMsg {
    /// The join took effect: queue `frames` (joined, then replay) on the
    /// connection, then make it a live member; live frames follow on the
    /// same channel, so nothing is missed or doubled.
    JoinDone {
        room: RoomName,
        conn: ConnRef,
        frames: Vec<Bytes>,
        /// Highest seq the frames cover.
        last_seq: Seq,
        /// False when the join failed (frames then hold the error reply).
        accepted: bool,
        /// The replay goes on after `last_seq`: the member asks for each next
        /// page when the client has drained the last (`HomeMsg::ReplayMore`).
        more: bool,
    },
    /// A page of a paced replay, answering `ReplayMore { after }`.
    ReplayPage(ReplayPage),
    /// A frame for every local member of the room (except `except_user`),
    /// compressed at most once for those that negotiated compression.
    RoomFrame {
        room: RoomName,
        frame: SharedFrame,
        except_user: Option<UserId>,
        received: Option<Instant>,
        class: Delivery,
    },
    /// A DM-room frame for every local connection of `user` (`seq` 0: not a
    /// message, e.g. typing).
    UserFrame {
        user: UserId,
        room: RoomName,
        seq: Seq,
        frame: Bytes,
        received: Instant,
    },
    /// The reply to one of the connection's requests.
    ToConn { conn: ConnRef, frame: Bytes },
    /// An HTTP response for one connection.
    HttpReply {
        conn: ConnRef,
        status: u16,
        body: Bytes,
    },
}

/// Which members get a room frame, and whether it must leave this turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every member, written this turn (messages, read markers).
    Now,
    /// Every member, deferred (`--presence-flush-ms`): `typing`.
    Deferred,
    /// `user_joined`/`user_left`: deferred, to members without batched
    /// presence.
    Presence,
    /// `presence_diff`: deferred, to members with batched presence only.
    Diff,
}

/// A page of a paced replay.
pub struct ReplayPage {
    pub room: RoomName,
    pub conn: ConnRef,
    /// The `after` of the `ReplayMore` this answers.
    pub after: Seq,
    pub frames: Vec<Bytes>,
    /// Highest seq the frames cover.
    pub upto: Seq,
    /// The replay has reached the live stream: live frames follow on this
    /// same channel.
    pub done: bool,
    /// The store could not be read: the client must resume later.
    pub failed: bool,
}

/// To a user's home shard.
pub enum UserMsg {
    Online {
        user: UserId,
        shard: u32,
    },
    Offline {
        user: UserId,
        shard: u32,
    },
    /// A DM-room frame to route to every shard where `user` has connections.
    Dm {
        user: UserId,
        room: RoomName,
        seq: Seq,
        frame: Bytes,
        received: Instant,
    },
    /// The user is (or is no longer) a member of `room` (listed by `rooms`).
    Listing {
        user: UserId,
        room: RoomName,
        member: bool,
    },
    RoomsRequest {
        user: UserId,
        conn: ConnRef,
        id: ReqId,
    },
    /// `rooms` gather step: answers of one home shard.
    RoomInfoReply {
        gather: u64,
        entries: Vec<RoomEntry>,
    },
}

impl From<HomeMsg> for ChatMsg {
    fn from(m: HomeMsg) -> Self {
        ChatMsg::Home(m)
    }
}

impl From<MemberMsg> for ChatMsg {
    fn from(m: MemberMsg) -> Self {
        ChatMsg::Member(m)
    }
}

impl From<UserMsg> for ChatMsg {
    fn from(m: UserMsg) -> Self {
        ChatMsg::User(m)
    }
}
