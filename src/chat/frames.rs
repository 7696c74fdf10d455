//! Every frame the chat sends, encoded in one place. Room names and user ids
//! are validated to need no JSON escaping; display names travel as JSON
//! literals escaped once per session (`name_json`). Frames are text
//! WebSocket frames ready to queue (`Bytes`, shared by every recipient).

use super::{RoomName, Seq, UserId};
use crate::protocol::{self, MessageFields, ProtoError, ReqId};
use crate::store::StoredMessage;
use crate::ws;
use bytes::Bytes;
use std::io::Write as _;

/// A text frame from a JSON payload.
pub fn text(payload: &[u8]) -> Bytes {
    ws::frame(ws::OpCode::Text, payload)
}

/// `{"type":"<kind>","room":"<room>"` with the id first when there is one.
fn start(kind: &str, id: Option<&ReqId>, room: &str, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    let _ = write!(out, "{{\"type\":\"{kind}\",");
    if let Some(id) = id {
        protocol::write_id(&mut out, id);
    }
    out.extend_from_slice(b"\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    out.push(b'"');
    out
}

pub struct Welcome<'a> {
    pub user: &'a str,
    pub name_json: &'a str,
    pub session: &'a str,
    pub node: &'a str,
    pub heartbeat_ms: u64,
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
}

pub fn welcome(w: &Welcome<'_>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":\"welcome\",\"user\":\"");
    out.extend_from_slice(w.user.as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    out.extend_from_slice(w.name_json.as_bytes());
    let _ = write!(
        out,
        ",\"session\":\"{}\",\"node\":\"{}\",\"heartbeat_ms\":{},\"limits\":{{\"max_frame_bytes\":{},\"max_body_bytes\":{},\"rate_per_sec\":{},\"burst\":{}}}}}",
        w.session, w.node, w.heartbeat_ms, w.max_frame_bytes, w.max_body_bytes, w.rate_per_sec, w.burst
    );
    text(&out)
}

pub fn pong(id: &ReqId) -> Bytes {
    let mut out = b"{\"type\":\"pong\"".to_vec();
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.as_bytes());
    }
    out.push(b'}');
    text(&out)
}

pub fn error(id: &ReqId, e: &ProtoError) -> Bytes {
    text(&protocol::error_json(
        id,
        e.code,
        &e.message,
        e.retry_after_ms,
    ))
}

/// The HTTP API's error body.
pub fn http_error_body(e: &ProtoError) -> Bytes {
    Bytes::from(serde_json::json!({ "error": e.message, "code": e.code.as_str() }).to_string())
}

pub struct Joined<'a> {
    pub id: &'a ReqId,
    pub room: &'a str,
    pub seq: Seq,
    pub epoch: &'a str,
    pub members: usize,
    pub read: Seq,
    pub recovered: bool,
    /// Extension (`join` with `"reads": true`): other members' read markers.
    pub reads: Option<&'a [(UserId, Seq)]>,
}

pub fn joined(j: &Joined<'_>) -> Bytes {
    let mut out = b"{\"type\":\"joined\",".to_vec();
    protocol::write_id(&mut out, j.id);
    out.extend_from_slice(b"\"room\":\"");
    out.extend_from_slice(j.room.as_bytes());
    let _ = write!(
        out,
        "\",\"seq\":{},\"epoch\":\"{}\",\"members\":{},\"read\":{},\"recovered\":{}",
        j.seq, j.epoch, j.members, j.read, j.recovered
    );
    if let Some(reads) = j.reads {
        // User ids are validated names: no escaping needed.
        out.extend_from_slice(b",\"reads\":{");
        for (i, (user, seq)) in reads.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}\"{user}\":{seq}");
        }
        out.push(b'}');
    }
    out.push(b'}');
    text(&out)
}

pub fn left(id: &ReqId, room: &str) -> Bytes {
    let mut out = b"{\"type\":\"left\",".to_vec();
    protocol::write_id(&mut out, id);
    out.extend_from_slice(b"\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b"\"}");
    text(&out)
}

/// The `message` frame of a newly numbered message: built once per message,
/// whatever the room size. Returns the frame and its header length (where
/// the JSON starts, for history items cut from the same bytes).
pub fn message(fields: &MessageFields<'_>) -> (Bytes, usize) {
    let frame = ws::text_frame_with(128 + fields.body.len() + fields.name_json.len(), |out| {
        protocol::write_message(out, fields)
    });
    let hdr = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    (frame, hdr)
}

pub fn ws_ack(id: &ReqId, room: &str, seq: Seq, ts: u64) -> Bytes {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"ack\",");
    protocol::write_id(&mut out, id);
    out.extend_from_slice(b"\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    let _ = write!(out, "\",\"seq\":{seq},\"ts\":{ts}}}");
    text(&out)
}

/// `POST /api/publish`'s 200 body.
pub fn http_ack_body(room: &str, seq: Seq, ts: u64) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    let _ = write!(out, "\",\"seq\":{seq},\"ts\":{ts}}}");
    Bytes::from(out)
}

pub fn user_joined(room: &str, user: &str, name_json: &str) -> Bytes {
    let mut out = start("user_joined", None, room, 96);
    out.extend_from_slice(b",\"user\":\"");
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    out.extend_from_slice(name_json.as_bytes());
    out.push(b'}');
    text(&out)
}

pub fn user_left(room: &str, user: &str) -> Bytes {
    let mut out = start("user_left", None, room, 80);
    out.extend_from_slice(b",\"user\":\"");
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(b"\"}");
    text(&out)
}

/// `presence_diff` (extension): who joined (user id, display name as a
/// JSON literal) and who left since the room's previous diff.
pub fn presence_diff<'a>(
    room: &str,
    joined: impl Iterator<Item = (&'a str, &'a str)>,
    left: impl Iterator<Item = &'a str>,
) -> Bytes {
    let mut out = start("presence_diff", None, room, 256);
    out.extend_from_slice(b",\"joined\":[");
    write_users(&mut out, joined);
    out.extend_from_slice(b"],\"left\":[");
    for (i, user) in left.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(user.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"]}");
    text(&out)
}

pub fn typing(room: &str, from: &str) -> Bytes {
    let mut out = start("typing", None, room, 80);
    out.extend_from_slice(b",\"from\":\"");
    out.extend_from_slice(from.as_bytes());
    out.extend_from_slice(b"\"}");
    text(&out)
}

pub fn read(room: &str, from: &str, seq: Seq) -> Bytes {
    let mut out = start("read", None, room, 96);
    out.extend_from_slice(b",\"from\":\"");
    out.extend_from_slice(from.as_bytes());
    let _ = write!(out, "\",\"seq\":{seq}}}");
    text(&out)
}

/// `presence`: `users` as (user id, display name as a JSON literal).
pub fn presence<'a>(
    id: &ReqId,
    room: &str,
    users: impl Iterator<Item = (&'a str, &'a str)>,
) -> Bytes {
    let mut out = b"{\"type\":\"presence\",".to_vec();
    protocol::write_id(&mut out, id);
    out.extend_from_slice(b"\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b"\",\"users\":[");
    write_users(&mut out, users);
    out.extend_from_slice(b"]}");
    text(&out)
}

/// `{"user":..,"name":..}` objects, comma-separated (user id, display name
/// as a JSON literal).
fn write_users<'a>(out: &mut Vec<u8>, users: impl Iterator<Item = (&'a str, &'a str)>) {
    for (i, (user, name_json)) in users.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"user\":\"");
        out.extend_from_slice(user.as_bytes());
        out.extend_from_slice(b"\",\"name\":");
        out.extend_from_slice(name_json.as_bytes());
        out.push(b'}');
    }
}

/// One row of a `rooms` reply.
pub struct RoomEntry {
    pub room: RoomName,
    pub seq: Seq,
    pub read: Seq,
}

pub fn rooms(id: &ReqId, entries: &[RoomEntry]) -> Bytes {
    let mut out = b"{\"type\":\"rooms\",".to_vec();
    protocol::write_id(&mut out, id);
    out.extend_from_slice(b"\"rooms\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(
            out,
            "{{\"room\":\"{}\",\"seq\":{},\"read\":{}}}",
            e.room, e.seq, e.read
        );
    }
    out.extend_from_slice(b"]}");
    text(&out)
}

/// The `history` reply: a WebSocket frame (`ws`), or the HTTP API's body.
pub fn history(ws: bool, id: &ReqId, room: &str, items: &[Vec<u8>], has_more: bool) -> Bytes {
    let size: usize = items.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(size + 128);
    if ws {
        out.extend_from_slice(b"{\"type\":\"history\",");
        protocol::write_id(&mut out, id);
        out.extend_from_slice(b"\"room\":\"");
        out.extend_from_slice(room.as_bytes());
        out.extend_from_slice(b"\",\"messages\":[");
    } else {
        out.extend_from_slice(b"{\"messages\":[");
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    let _ = write!(out, "],\"has_more\":{has_more}}}");
    if ws {
        text(&out)
    } else {
        Bytes::from(out)
    }
}

/// A message frame's JSON without `"type":"message",`: a history item.
pub fn history_item_of_frame(frame: &[u8], hdr: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len());
    out.push(b'{');
    out.extend_from_slice(&frame[hdr + protocol::MESSAGE_PREFIX_LEN..]);
    out
}

fn stored_message_json(m: &StoredMessage) -> Vec<u8> {
    let name_json = serde_json::to_string(&m.name).unwrap_or_else(|_| "\"\"".into());
    let mut out = Vec::with_capacity(128 + m.body.len());
    protocol::write_message(
        &mut out,
        &MessageFields {
            room: &m.room,
            seq: m.seq,
            from: &m.from,
            name_json: &name_json,
            ts: m.ts,
            body: &m.body,
        },
    );
    out
}

/// A stored message as a `message` frame (replay from the store).
pub fn stored_message(m: &StoredMessage) -> Bytes {
    text(&stored_message_json(m))
}

/// A stored message as a history item.
pub fn stored_history_item(m: &StoredMessage) -> Vec<u8> {
    let full = stored_message_json(m);
    let mut out = Vec::with_capacity(full.len());
    out.push(b'{');
    out.extend_from_slice(&full[protocol::MESSAGE_PREFIX_LEN..]);
    out
}
