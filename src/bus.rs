//! The inter-shard bus: how shards reach each other.
//!
//! Each shard owns a bounded `crossbeam-channel` inbox and a `mio::Waker`.
//! A shard batches everything it sends to one destination during a loop turn
//! into one `Vec` (one channel send, one wake). What travels is the app's
//! message type (for the chat, `chat::msg::ChatMsg`): room messages go as
//! pre-encoded WebSocket frames (`Bytes`, reference-counted), so the home
//! shard encodes a message once and every member shard queues that buffer.

use crossbeam_channel::Sender;
use mio::Waker;
use std::sync::Arc;

/// Batches in flight per inbox before senders hold back (they keep the batch
/// and retry on their next turn; nothing is dropped).
pub const INBOX_CAPACITY: usize = 4096;

/// How to reach a shard.
pub struct ShardLink<M> {
    pub tx: Sender<Vec<M>>,
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
