//! The inter-shard bus: what shards say to each other.
//!
//! Each shard owns a bounded `crossbeam-channel` inbox and a `mio::Waker`.
//! A shard batches everything it sends to one destination during a loop turn
//! into one `Vec` (one channel send, one wake). Room messages travel as
//! pre-encoded WebSocket frames (`Bytes`, reference-counted): the home shard
//! encodes a message once and every member shard queues that same buffer.

use crate::protocol::ReqId;
use crate::store::StoredMessage;
use bytes::Bytes;
use crossbeam_channel::Sender;
use mio::Waker;
use std::sync::Arc;
use std::time::Instant;

/// Batches in flight per inbox before senders hold back (they keep the batch
/// and retry on their next turn; nothing is dropped).
pub const INBOX_CAPACITY: usize = 4096;

/// How to reach a shard.
pub struct ShardLink {
    pub tx: Sender<Vec<BusMsg>>,
    pub waker: Arc<Waker>,
}

/// A connection on some shard. `id` makes a stale reference harmless after
/// the slab slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u32,
    pub key: u32,
    pub id: u64,
}

/// Who receives the answer to a request routed to another shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// A WebSocket: the answer is a frame.
    Ws(ConnRef),
    /// An HTTP API request: the answer is a response.
    Http(ConnRef),
}

impl ReplyTo {
    pub fn conn(self) -> ConnRef {
        match self {
            ReplyTo::Ws(c) | ReplyTo::Http(c) => c,
        }
    }
}

/// Stable hash (FNV-1a) of a room or user name to its home shard.
pub fn home_of(name: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

pub enum BusMsg {
    // ---- to a room's home shard ----
    Join {
        room: Arc<str>,
        conn: ConnRef,
        user: Arc<str>,
        name_json: Arc<str>,
        since: Option<u64>,
        id: ReqId,
        /// The connection is already counted as a member (a second join).
        rejoin: bool,
    },
    /// A connection left the room (request or disconnect).
    Leave {
        room: Arc<str>,
        conn: ConnRef,
        user: Arc<str>,
        explicit: bool,
    },
    Publish {
        room: Arc<str>,
        reply: ReplyTo,
        user: Arc<str>,
        name_json: Arc<str>,
        body: Box<str>,
        id: ReqId,
        received: Instant,
    },
    History {
        room: Arc<str>,
        reply: ReplyTo,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        id: ReqId,
    },
    Presence {
        room: Arc<str>,
        conn: ConnRef,
        id: ReqId,
    },
    Typing {
        room: Arc<str>,
        user: Arc<str>,
    },
    Read {
        room: Arc<str>,
        user: Arc<str>,
        seq: u64,
    },
    /// `rooms` scatter step: seq and read marker of these rooms for `user`.
    RoomInfo {
        gather: u64,
        reply_shard: u32,
        user: Arc<str>,
        rooms: Vec<Arc<str>>,
    },
    /// Store completion of a group of appends from this shard.
    Appended {
        batch: u64,
        results: Vec<Result<(), crate::store::StoreError>>,
    },
    /// Store completion of a range read made for a join or a history.
    Ranged {
        op: u64,
        result: Result<(Vec<StoredMessage>, bool), crate::store::StoreError>,
    },

    // ---- to a member shard ----
    /// The join took effect: queue `frames` (joined, then replay) on the
    /// connection, then make it a live member; live frames follow on the
    /// same channel, so nothing is missed or doubled.
    JoinDone {
        room: Arc<str>,
        conn: ConnRef,
        frames: Vec<Bytes>,
        last_seq: u64,
        /// False when the join failed (frames then hold the error reply).
        accepted: bool,
    },
    /// A frame for every local member of the room (except `except_user`).
    RoomFrame {
        room: Arc<str>,
        frame: Bytes,
        except_user: Option<Arc<str>>,
        received: Option<Instant>,
    },
    /// A DM frame for every local connection of `user`.
    UserFrame {
        user: Arc<str>,
        room: Arc<str>,
        seq: u64,
        frame: Bytes,
        received: Instant,
    },
    /// A frame for one connection.
    ToConn {
        conn: ConnRef,
        frame: Bytes,
    },
    /// An HTTP response for one connection.
    HttpReply {
        conn: ConnRef,
        status: u16,
        body: Bytes,
    },

    // ---- to a user's home shard ----
    UserOnline {
        user: Arc<str>,
        shard: u32,
    },
    UserOffline {
        user: Arc<str>,
        shard: u32,
    },
    /// A DM to route to every shard where `user` has connections.
    Dm {
        user: Arc<str>,
        room: Arc<str>,
        seq: u64,
        frame: Bytes,
        received: Instant,
    },
    /// The user is now a member of `room` (listed by `rooms`).
    UserRoom {
        user: Arc<str>,
        room: Arc<str>,
        member: bool,
    },
    RoomsRequest {
        user: Arc<str>,
        conn: ConnRef,
        id: ReqId,
    },
    /// `rooms` gather step: answers of one home shard.
    RoomInfoReply {
        gather: u64,
        entries: Vec<(Arc<str>, u64, u64)>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_stable_and_spread() {
        assert_eq!(home_of("lobby", 4), home_of("lobby", 4));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[home_of(&format!("room-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "spread: {seen:?}");
        assert_eq!(home_of("x", 1), 0);
    }
}
