//! DMs in cluster mode: no gap, no duplicate, on every node.
//!
//! A DM reaches a node on the user channels of its two users, and pub/sub
//! is at-most-once. So the home of each user with local connections keeps,
//! per DM room, the last seq it delivered (a [`GapTracker`], as a room's
//! home does for a room) and fills any gap from the room's stream.
//!
//! The starting point is the user's DM rooms and their seqs, read from
//! Redis (`rooms_of`) as the user's first local connection opens and
//! subscribes the user channel: every DM numbered after that read (or seen
//! live on the channel) reaches each local connection in order; older ones
//! are history (`rooms` + `history`). A DM room missing from that list is
//! newer than it, so it is tracked from seq 0. Once the subscription is
//! confirmed, and after every resubscription (`CatchUp` naming the user),
//! the list is read again and every room that moved past what was delivered
//! is read from its stream: a DM published while the subscription was
//! being set up or was cut arrives late, never not.

use super::{BrokerDone, Cluster};
use crate::broker::{BrokerError, GapTracker, RangePage, RangeQuery, RoomListEntry, Step};
use crate::chat::frames;
use crate::chat::msg::MemberMsg;
use crate::chat::{ChatApp, ChatPort, RoomName, Seq, UserId};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// DM rooms tracked per user; past it a new conversation's frames are
/// delivered as they come (untracked) and a warning is logged.
const DM_ROOMS_MAX: usize = 4096;
/// Frames held per user while its starting list is being read.
const EARLY_MAX: usize = 1024;

/// One user's DM tracking at its home (cluster mode only).
#[derive(Default)]
pub(in crate::chat) struct DmTrack {
    /// Per DM room; None until the starting list has been read.
    rooms: Option<HashMap<RoomName, GapTracker>>,
    /// Numbered frames that came before the starting list.
    early: Vec<(RoomName, Seq, Bytes)>,
    /// Early frames were dropped: read the list again once it is in.
    early_lost: bool,
}

fn is_dm(room: &str) -> bool {
    room.starts_with("dm:")
}

impl Cluster {
    /// The user's last local connection closed.
    pub(in crate::chat) fn dm_offline(&mut self, user: &UserId) {
        self.dms.remove(user);
    }

    fn list_dms(&self, port: &ChatPort, user: &UserId) {
        let u = user.clone();
        let cb = self.reply(port, move |result| BrokerDone::DmRooms { user: u, result });
        self.broker.rooms_of(user, cb);
    }
}

impl ChatApp {
    /// The user's first local connection (its channel is being subscribed).
    pub(in crate::chat) fn dm_online(&mut self, port: &mut ChatPort, user: &UserId) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        c.dms.entry(user.clone()).or_default();
        c.list_dms(port, user);
    }

    /// The user channels of `users` are subscribed (again): check each
    /// user's DM rooms for what the cut may have lost.
    pub(super) fn dm_catch_up(&mut self, port: &mut ChatPort, users: Vec<String>) {
        let Some(c) = &self.cluster else {
            return;
        };
        for u in users {
            let user: UserId = Arc::from(u.as_str());
            if c.dms.contains_key(&user) {
                c.list_dms(port, &user);
            }
        }
    }

    /// A numbered DM frame from a user channel.
    pub(super) fn dm_frame(
        &mut self,
        port: &mut ChatPort,
        user: UserId,
        room: RoomName,
        seq: Seq,
        json: Bytes,
    ) {
        let Some(track) = self.cluster.as_mut().and_then(|c| c.dms.get_mut(&user)) else {
            return; // offline meanwhile
        };
        let Some(rooms) = &mut track.rooms else {
            if track.early.len() < EARLY_MAX {
                track.early.push((room, seq, json));
            } else {
                track.early_lost = true;
            }
            return;
        };
        let step = match tracker_for(rooms, &room) {
            Some(t) => t.offer(seq, json),
            None => Step {
                deliver: vec![(seq, json)],
                ..Step::default()
            },
        };
        self.dm_apply(port, &user, &room, step);
    }

    /// The user's DM rooms and their seqs: the starting list, or a check
    /// after a (re)subscription.
    pub(super) fn dm_rooms_read(
        &mut self,
        port: &mut ChatPort,
        user: UserId,
        result: Result<Vec<RoomListEntry>, BrokerError>,
    ) {
        let Ok(list) = result else {
            return; // broker down: its return brings a CatchUp, and a new read
        };
        let Some(c) = &mut self.cluster else {
            return;
        };
        let Some(track) = c.dms.get_mut(&user) else {
            return;
        };
        let dms = list.into_iter().filter(|e| is_dm(&e.room));
        let mut steps: Vec<(RoomName, Step)> = Vec::new();
        match &mut track.rooms {
            None => {
                let mut rooms = HashMap::new();
                for e in dms.take(DM_ROOMS_MAX) {
                    rooms.insert(RoomName::from(e.room.as_str()), GapTracker::new(e.seq));
                }
                // A frame that came on the channel was published after the
                // subscription, so after the connection opened: it and all
                // later ones are delivered, even if the list (read a moment
                // later) counts them already. Channel order is publish
                // order, so a room's first early frame is its first live one.
                let mut seen: Vec<RoomName> = Vec::new();
                for (room, seq, json) in std::mem::take(&mut track.early) {
                    if !seen.contains(&room) {
                        seen.push(room.clone());
                        if let Some(t) = rooms.get_mut(&room) {
                            if t.delivered() >= seq {
                                *t = GapTracker::new(seq - 1);
                            }
                        }
                    }
                    if let Some(t) = tracker_for(&mut rooms, &room) {
                        steps.push((room, t.offer(seq, json)));
                    }
                }
                track.rooms = Some(rooms);
                if std::mem::take(&mut track.early_lost) {
                    c.list_dms(port, &user);
                }
            }
            Some(rooms) => {
                for e in dms {
                    let room = RoomName::from(e.room.as_str());
                    let Some(t) = tracker_for(rooms, &room) else {
                        continue;
                    };
                    if e.seq > t.delivered() {
                        if let Some(after) = t.catch_up() {
                            let step = Step {
                                read_after: Some(after),
                                ..Step::default()
                            };
                            steps.push((room, step));
                        }
                    }
                }
            }
        }
        for (room, step) in steps {
            self.dm_apply(port, &user, &room, step);
        }
    }

    /// The answer of a gap read of one DM room for one user.
    pub(super) fn dm_gap_read(
        &mut self,
        port: &mut ChatPort,
        user: UserId,
        room: RoomName,
        result: Result<RangePage, BrokerError>,
    ) {
        let Some(t) = self
            .cluster
            .as_mut()
            .and_then(|c| c.dms.get_mut(&user))
            .and_then(|track| track.rooms.as_mut())
            .and_then(|rooms| rooms.get_mut(&room))
        else {
            return;
        };
        match result {
            Ok(page) => {
                super::count_gap_frames(port, t, &page);
                let step = t.fill(page.entries, page.has_more);
                self.dm_apply(port, &user, &room, step);
            }
            Err(e) => {
                tracing::debug!("dm gap read failed: {e}");
                t.fill_failed();
            }
        }
    }

    /// Delivers what a tracker released to the user's shards and starts
    /// the read it asks for.
    fn dm_apply(&mut self, port: &mut ChatPort, user: &UserId, room: &RoomName, step: Step) {
        if step.skipped > 0 {
            tracing::warn!(room = %room, skipped = step.skipped, "DMs trimmed from the stream were skipped");
        }
        if let Some(home) = self.user_homes.get(user) {
            let received = Instant::now();
            for (seq, json) in step.deliver {
                let frame = frames::text(&json);
                for &(shard, _) in home.shard_counts() {
                    let msg = MemberMsg::UserFrame {
                        user: user.clone(),
                        room: room.clone(),
                        seq,
                        frame: frame.clone(),
                        received,
                    };
                    port.bus(shard as usize, msg.into());
                }
            }
        }
        let (Some(after), Some(c)) = (step.read_after, &self.cluster) else {
            return;
        };
        let (u, r) = (user.clone(), room.clone());
        let cb = c.reply(port, move |result| BrokerDone::DmGap {
            user: u,
            room: r,
            result,
        });
        let q = RangeQuery {
            after: Some(after),
            before: None,
            limit: crate::broker::tracker::FILL_PAGE,
        };
        c.broker.range(room, q, cb);
    }
}

/// The room's tracker; a room not tracked yet is newer than the starting
/// list, so it starts at 0. None past [`DM_ROOMS_MAX`].
fn tracker_for<'a>(
    rooms: &'a mut HashMap<RoomName, GapTracker>,
    room: &RoomName,
) -> Option<&'a mut GapTracker> {
    if !rooms.contains_key(room) {
        if rooms.len() >= DM_ROOMS_MAX {
            tracing::warn!(room = %room, "too many DM rooms tracked for one user; delivering untracked");
            return None;
        }
        rooms.insert(room.clone(), GapTracker::new(0));
    }
    rooms.get_mut(room)
}

impl ChatApp {
    /// Redis lost its data: DM numbering starts again at 1 in every room,
    /// so every local user's DM rooms are tracked from 0, and what was
    /// numbered anew before this event is read from the streams.
    pub(super) fn dm_history_lost(&mut self, port: &mut ChatPort) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        for track in c.dms.values_mut() {
            track.rooms = Some(HashMap::new());
            track.early.clear();
            track.early_lost = false;
        }
        let users: Vec<UserId> = c.dms.keys().cloned().collect();
        for user in users {
            c.list_dms(port, &user);
        }
    }
}
