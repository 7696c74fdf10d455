//! Per-connection chat state: who the client is, which rooms it joined, its
//! rate budget and its count of bad frames.

use super::{push_small, NameJson, RoomName, Seq};
use crate::auth::Identity;
use crate::limits::TokenBucket;
use bytes::Bytes;

/// Window over which unparsable frames are counted toward close 1008.
const BAD_FRAME_WINDOW_MS: u64 = 60_000;
/// Requests whose replies may be in preparation at once; past it the
/// reactor stops reading this connection until replies go out.
pub const MAX_INFLIGHT: u16 = 16;

/// Per-connection chat state, boxed on the connection.
pub struct Session {
    pub identity: Identity,
    pub name_json: NameJson,
    pub(super) rooms: Vec<Joined>,
    /// Over publish, dm, typing and read (PROTOCOL 5.4).
    pub(super) bucket: TokenBucket,
    /// Over what creates or churns state elsewhere: join, leave, a DM to a
    /// room this connection has not joined.
    pub(super) churn: TokenBucket,
    /// Requests sent to other roles whose replies have not come back.
    pub(super) inflight: u16,
    bad_frames: u32,
    bad_window_start: u64,
}

pub(super) struct Joined {
    pub room: RoomName,
    pub state: JoinState,
    /// DM rooms: highest seq delivered, to drop the second copy of a message
    /// that arrives both by replay and by the user's DM route.
    pub floor: Seq,
    /// DM frames that arrived while the join was pending.
    pub held: Vec<(Seq, Bytes)>,
    /// Presence of this room comes as `presence_diff` (extension). Set by
    /// the first join; a second join of the room keeps it, as the home
    /// counts the connection once.
    pub batched: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum JoinState {
    /// Waiting for the home shard's JoinDone.
    Pending,
    /// Joined; the replay goes on page by page, up to `upto` so far.
    /// `asked`: the next page has been requested.
    Replaying { upto: Seq, asked: bool },
    /// Live member at this index of the local member list.
    Member(u32),
    /// A joined DM room: live frames come by the user's route.
    Dm,
}

impl Session {
    pub fn new(identity: Identity, burst: u32, churn_burst: u32, now_ms: u64) -> Self {
        let name_json: NameJson = serde_json::to_string(&*identity.name)
            .unwrap_or_else(|_| "\"\"".into())
            .into();
        Session {
            identity,
            name_json,
            rooms: Vec::new(),
            bucket: TokenBucket::new(burst, now_ms),
            churn: TokenBucket::new(churn_burst, now_ms),
            inflight: 0,
            bad_frames: 0,
            bad_window_start: now_ms,
        }
    }

    pub(super) fn joined(&self, room: &str) -> Option<&Joined> {
        self.rooms.iter().find(|j| &*j.room == room)
    }

    pub(super) fn joined_mut(&mut self, room: &str) -> Option<&mut Joined> {
        self.rooms.iter_mut().find(|j| &*j.room == room)
    }

    /// Marks `room` as waiting for the home's answer.
    pub(super) fn set_pending(&mut self, room: &RoomName, batched: bool) {
        match self.joined_mut(room) {
            Some(j) => j.state = JoinState::Pending,
            None => push_small(
                &mut self.rooms,
                Joined {
                    room: room.clone(),
                    state: JoinState::Pending,
                    floor: 0,
                    held: Vec::new(),
                    batched,
                },
            ),
        }
    }

    pub(super) fn forget(&mut self, room: &str) {
        self.rooms.retain(|j| &*j.room != room);
    }

    /// Counts an unparsable frame; true when the connection must close.
    pub(super) fn count_bad_frame(&mut self, limit: u32, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.bad_window_start) > BAD_FRAME_WINDOW_MS {
            self.bad_window_start = now_ms;
            self.bad_frames = 0;
        }
        self.bad_frames += 1;
        self.bad_frames > limit
    }
}
