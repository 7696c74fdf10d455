//! `history` at a room's home: from the ring when it holds the range, else
//! from the store. The same reply serves the WebSocket and the HTTP API.

use super::super::frames;
use super::super::msg::MemberMsg;
use super::super::{ChatApp, ChatPort, RoomName};
use super::{store_unavailable, RingEntry, StoreOp};
use crate::bus::ReplyTo;
use crate::protocol::ReqId;
use crate::store::{RangeQuery, StoreError, StoredMessage};

impl ChatApp {
    pub(super) fn home_history(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        reply: ReplyTo,
        q: RangeQuery,
        id: ReqId,
    ) {
        let has_store = self.store.enabled();
        if self.cluster.is_some() {
            // Cluster mode: the room's stream in Redis holds its history.
            self.history_from_store(port, room_name, reply, q, id);
            return;
        }
        if !self.homes.contains_key(&room_name) {
            // Every room with messages has a home (loaded at start, made by
            // its first publish): an unknown name has none. Reading it
            // creates nothing.
            self.send_history(port, &room_name, reply, &id, &[], false);
            return;
        }
        let room = self.home_room_to_read(&room_name, port.shards());
        let first = room.first_in_ring();
        let committed = room.committed;
        // Range the query wants, as [lo, hi] inclusive, and which end to keep.
        let hi = q
            .before
            .map_or(committed, |b| b.saturating_sub(1).min(committed));
        let from_start = q.after.is_some();
        let lo_needed = match q.after {
            Some(a) => a.saturating_add(1),
            None => hi.saturating_sub(q.limit as u64 - 1).max(1),
        };
        if has_store && lo_needed < first && hi >= lo_needed {
            self.history_from_store(port, room_name, reply, q, id);
            return;
        }
        let mut items: Vec<&RingEntry> = room
            .ring
            .iter()
            .filter(|e| e.seq <= hi && q.after.is_none_or(|a| e.seq > a))
            .collect();
        let has_more = if from_start {
            let more = items.len() > q.limit;
            items.truncate(q.limit);
            more
        } else {
            let more =
                items.len() > q.limit || items.first().is_some_and(|e| e.seq > 1 && has_store);
            let skip = items.len().saturating_sub(q.limit);
            items.drain(..skip);
            more || (skip > 0)
        };
        let encoded: Vec<Vec<u8>> = items
            .iter()
            .map(|e| frames::history_item_of_frame(&e.frame, e.hdr))
            .collect();
        self.send_history(port, &room_name, reply, &id, &encoded, has_more);
    }

    /// Asks the store (or, in cluster mode, Redis) for the range; the
    /// answer comes to `history_read`.
    fn history_from_store(
        &mut self,
        port: &mut ChatPort,
        room_name: RoomName,
        reply: ReplyTo,
        q: RangeQuery,
        id: ReqId,
    ) {
        let op = StoreOp::History {
            room: room_name.clone(),
            reply,
            id,
        };
        self.store.start_range(port, &room_name, q, op);
    }

    /// A history range came from the store.
    pub(super) fn history_read(
        &mut self,
        port: &mut ChatPort,
        room: &str,
        reply: ReplyTo,
        id: &ReqId,
        result: Result<(Vec<StoredMessage>, bool), StoreError>,
    ) {
        match result {
            Ok((msgs, has_more)) => {
                let items: Vec<Vec<u8>> = msgs.iter().map(frames::stored_history_item).collect();
                self.send_history(port, room, reply, id, &items, has_more);
            }
            Err(e) => {
                tracing::warn!("history read failed: {e}");
                self.reply_request_error(port, reply, id, &store_unavailable());
            }
        }
    }

    fn send_history(
        &mut self,
        port: &mut ChatPort,
        room: &str,
        reply: ReplyTo,
        id: &ReqId,
        items: &[Vec<u8>],
        has_more: bool,
    ) {
        let msg = match reply {
            ReplyTo::Ws(conn) => MemberMsg::ToConn {
                conn,
                frame: frames::history(true, id, room, items, has_more),
            },
            ReplyTo::Http(conn) => MemberMsg::HttpReply {
                conn,
                status: 200,
                body: frames::history(false, id, room, items, has_more),
            },
        };
        self.router.to_conn_shard(port, reply.conn(), msg);
    }
}
