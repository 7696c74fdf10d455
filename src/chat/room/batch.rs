//! Batched presence (extension) at a room's home: members that joined
//! with `"presence":"batched"` get, instead of one `user_joined` or
//! `user_left` per change, one `presence_diff` per window
//! (`--presence-batch-ms`), netted against the room's previous diff and
//! encoded once for every such member on every shard. Plain members still
//! get the individual frames. Works alike on one node and in a cluster
//! (there the events come back from the broker to the room's home on each
//! node, and each node batches for its own members).

use super::super::frames;
use super::super::msg::Delivery;
use super::super::{ChatApp, ChatPort, NameJson, RoomName, UserId};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// Changes a pending diff may hold; past it the diff is sent early, so a
/// connect storm into one room never holds more than this per room.
pub(in crate::chat) const DIFF_MAX: usize = 1000;

/// A user's presence in a room changed (cluster-wide in cluster mode).
pub(in crate::chat) enum PresenceEvent {
    Joined { user: UserId, name_json: NameJson },
    Left { user: UserId },
}

impl PresenceEvent {
    fn user(&self) -> &UserId {
        match self {
            PresenceEvent::Joined { user, .. } | PresenceEvent::Left { user } => user,
        }
    }
}

/// Changes since a room's last diff, already netted: a user who joined and
/// left (or left and came back) within the window is in neither set.
#[derive(Default)]
pub(in crate::chat) struct PendingDiff {
    joined: HashMap<UserId, NameJson>,
    left: HashSet<UserId>,
    /// The room is on the home's due queue.
    queued: bool,
}

impl PendingDiff {
    fn add(&mut self, ev: PresenceEvent) {
        match ev {
            PresenceEvent::Joined { user, name_json } => {
                if !self.left.remove(&user) {
                    self.joined.insert(user, name_json);
                }
            }
            PresenceEvent::Left { user } => {
                if self.joined.remove(&user).is_none() {
                    self.left.insert(user);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.joined.len() + self.left.len()
    }

    /// The `presence_diff` frame, users sorted (a stable answer); `None`
    /// when everything netted out.
    fn take_frame(&mut self, room: &str) -> Option<Bytes> {
        if self.len() == 0 {
            return None;
        }
        let mut joined: Vec<_> = self.joined.drain().collect();
        joined.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut left: Vec<_> = self.left.drain().collect();
        left.sort_unstable();
        Some(frames::presence_diff(
            room,
            joined.iter().map(|(u, n)| (&**u, &**n)),
            left.iter().map(|u| &**u),
        ))
    }
}

impl ChatApp {
    /// Announces a presence change to the room's members: the individual
    /// frame to the plain ones, the pending diff for the batched ones.
    pub(in crate::chat) fn presence_event(
        &mut self,
        port: &mut ChatPort,
        room_name: &RoomName,
        ev: PresenceEvent,
        frame: Bytes,
    ) {
        let now = port.now_ms();
        let window = port.config().presence_batch_ms;
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        let except = Some(ev.user().clone());
        let batched: u32 = room.shard_batched.iter().sum();
        if room.dm.is_some() || batched == 0 {
            room.diff = None;
            self.broadcast(port, room_name, frame, except, Delivery::Presence);
            return;
        }
        let plain: Vec<u32> = room
            .shard_members
            .iter()
            .zip(&room.shard_batched)
            .map(|(m, b)| m.saturating_sub(*b))
            .collect();
        if plain.iter().any(|&n| n > 0) {
            self.router.fan_out(
                port,
                room_name,
                &plain,
                frame,
                except,
                None,
                Delivery::Presence,
            );
        }
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        let diff = room.diff.get_or_insert_with(Default::default);
        diff.add(ev);
        if diff.len() >= DIFF_MAX {
            self.send_diff(port, room_name);
        } else if !diff.queued {
            diff.queued = true;
            self.presence_due
                .push_back((now + window, room_name.clone()));
        }
    }

    /// Sends a room's pending diff to the shards with batched members.
    fn send_diff(&mut self, port: &mut ChatPort, room_name: &RoomName) {
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        let Some(frame) = room.diff.as_mut().and_then(|d| d.take_frame(room_name)) else {
            return;
        };
        self.router.fan_out(
            port,
            room_name,
            &room.shard_batched,
            frame,
            None,
            None,
            Delivery::Diff,
        );
    }

    /// End of turn: the diffs whose window is over go out; the shard is
    /// asked to wake for the next one.
    pub(in crate::chat) fn presence_turn(&mut self, port: &mut ChatPort) {
        let now = port.now_ms();
        while let Some((at, room)) = self.presence_due.front() {
            if *at > now {
                port.wake_at(*at);
                break;
            }
            let room = room.clone();
            self.presence_due.pop_front();
            if let Some(d) = self.homes.get_mut(&room).and_then(|h| h.diff.as_mut()) {
                d.queued = false;
            }
            self.send_diff(port, &room);
        }
        if self.presence_due.is_empty() && self.presence_due.capacity() > 1024 {
            self.presence_due = Default::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn joined(u: &str) -> PresenceEvent {
        PresenceEvent::Joined {
            user: Arc::from(u),
            name_json: Arc::from(format!("\"{u}\"").as_str()),
        }
    }

    fn left(u: &str) -> PresenceEvent {
        PresenceEvent::Left { user: Arc::from(u) }
    }

    fn json(f: Bytes) -> serde_json::Value {
        serde_json::from_slice(&f[2..]).unwrap()
    }

    #[test]
    fn changes_net_out_within_a_window() {
        let mut d = PendingDiff::default();
        d.add(joined("a"));
        d.add(left("a")); // joined and left: nothing
        d.add(left("b"));
        d.add(joined("b")); // left and came back: nothing
        d.add(joined("c"));
        d.add(left("d"));
        let v = json(d.take_frame("r").unwrap());
        assert_eq!(v["type"], "presence_diff");
        assert_eq!(v["room"], "r");
        assert_eq!(v["joined"], serde_json::json!([{"user":"c","name":"c"}]));
        assert_eq!(v["left"], serde_json::json!(["d"]));
        assert!(d.take_frame("r").is_none(), "taken: empty again");
        d.add(joined("e"));
        d.add(left("e"));
        assert!(d.take_frame("r").is_none(), "all netted out: no frame");
    }
}
