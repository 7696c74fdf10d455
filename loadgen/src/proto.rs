//! Protocol dialects: corechat (full PROTOCOL.md) and the peers' subsets (node-ws, uws,
//! rust-axum, Socket.IO over Engine.IO). Builds outgoing payloads and classifies incoming
//! text frames without allocating: fields are found by substring search (safe here because
//! an unescaped `"key":` can only occur at a structural position in JSON, and the only nested
//! object in a `message` is the body this load generator wrote itself).

use memchr::memmem::Finder;
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// corechat: welcome, JWT auth, join/joined(seq), publish/ack/message, ping/pong
    Corechat,
    /// Node `ws` peer: welcome, join/joined, publish/message/ack
    NodeWs,
    /// uWebSockets.js peer: no welcome, join/joined, publish/message/ack
    Uws,
    /// axum + tokio peer: welcome, body must be a JSON string, publisher must be joined
    RustAxum,
    /// Socket.IO 4 peer: Engine.IO/Socket.IO framing over the websocket transport
    Socketio,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Corechat => "corechat",
            Target::NodeWs => "node-ws",
            Target::Uws => "uws",
            Target::RustAxum => "rust-axum",
            Target::Socketio => "socketio",
        }
    }

    /// The request path for the upgrade (before the token is appended).
    pub fn path(self, url_path: &str) -> String {
        if self == Target::Socketio && (url_path == "/ws" || url_path == "/") {
            "/socket.io/?EIO=4&transport=websocket".to_string()
        } else {
            url_path.to_string()
        }
    }

    /// What the client waits for right after the HTTP 101.
    pub fn first_stage(self) -> Stage {
        match self {
            Target::Corechat | Target::NodeWs | Target::RustAxum => Stage::Welcome,
            Target::Uws => Stage::Join,
            Target::Socketio => Stage::EioOpen,
        }
    }

    /// Whether the server answers `{"type":"ping"}` with `pong` (else RTT uses WebSocket
    /// ping/pong control frames).
    pub fn has_json_ping(self) -> bool {
        self == Target::Corechat
    }

    /// Bodies are JSON strings (`"<t>:<w>:xxx"`) for servers that only accept strings.
    pub fn string_body(self) -> bool {
        self == Target::RustAxum
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Welcome,
    Join,
    EioOpen,
}

/// Room names used by the load generator.
pub fn room_name(out: &mut Vec<u8>, room: u32) {
    let _ = write!(out, "lg-room-{room}");
}

/// A join; `batched` (corechat only) asks for presence as `presence_diff`.
pub fn join_payload(out: &mut Vec<u8>, target: Target, room: u32, id: u64, batched: bool) {
    if target == Target::Socketio {
        out.extend_from_slice(b"42[\"join\",\"");
        room_name(out, room);
        out.extend_from_slice(b"\"]");
    } else {
        out.extend_from_slice(b"{\"type\":\"join\",\"room\":\"");
        room_name(out, room);
        if batched && target == Target::Corechat {
            out.extend_from_slice(b"\",\"presence\":\"batched");
        }
        let _ = write!(out, "\",\"id\":{id}}}");
    }
}

/// Count decimal digits.
#[inline]
fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Append a body carrying send time `t` (ns) and window `w`, padded so that its JSON
/// serialization is `body_len` bytes (or as short as possible if `body_len` is smaller).
pub fn body(out: &mut Vec<u8>, string_body: bool, t: u64, w: u32, body_len: usize) {
    let fixed = digits(t) + digits(w as u64);
    if string_body {
        // "<t>:<w>:xxxx"
        let pad = body_len.saturating_sub(fixed + 4);
        let _ = write!(out, "\"{t}:{w}:");
        out.resize(out.len() + pad, b'x');
        out.push(b'"');
    } else {
        // {"t":<t>,"w":<w>,"p":"xxxx"}
        let pad = body_len.saturating_sub(fixed + 18);
        let _ = write!(out, "{{\"t\":{t},\"w\":{w},\"p\":\"");
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\"}");
    }
}

pub fn publish_payload(
    out: &mut Vec<u8>,
    target: Target,
    room: u32,
    id: u64,
    t: u64,
    w: u32,
    body_len: usize,
) {
    if target == Target::Socketio {
        out.extend_from_slice(b"42[\"publish\",{\"room\":\"");
        room_name(out, room);
        let _ = write!(out, "\",\"id\":{id},\"body\":");
        body(out, false, t, w, body_len);
        out.extend_from_slice(b"}]");
    } else {
        out.extend_from_slice(b"{\"type\":\"publish\",\"room\":\"");
        room_name(out, room);
        let _ = write!(out, "\",\"id\":{id},\"body\":");
        body(out, target.string_body(), t, w, body_len);
        out.push(b'}');
    }
}

pub fn ping_payload(out: &mut Vec<u8>, id: u64) {
    let _ = write!(out, "{{\"type\":\"ping\",\"id\":{id}}}");
}

/// A classified incoming text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum In<'a> {
    /// A room message: its seq, and the (send time ns, window) from the body if present.
    Message {
        seq: Option<u64>,
        tw: Option<(u64, u32)>,
    },
    Welcome,
    Joined {
        seq: Option<u64>,
    },
    /// `ack` of a publish, with the request's id if numeric.
    Ack {
        id: Option<u64>,
    },
    Pong {
        id: Option<u64>,
    },
    /// `error`, with its code and the request's id if numeric.
    Error {
        code: &'a [u8],
        id: Option<u64>,
    },
    /// Engine.IO open packet (`0{...}`).
    EioOpen,
    /// Engine.IO ping (`2`): answer `3`.
    EioPing,
    /// Socket.IO namespace connected (`40{...}`).
    SioConnect,
    /// Socket.IO connect error (`44{...}`) or disconnect (`41`).
    SioRefused,
    /// Any other frame; the type (or event name) if found.
    Other(&'a [u8]),
}

/// Holds the substring finders (built once per worker thread).
pub struct Classifier {
    target: Target,
    f_type: Finder<'static>,
    f_seq: Finder<'static>,
    f_t: Finder<'static>,
    f_body_str: Finder<'static>,
    f_id: Finder<'static>,
    f_code: Finder<'static>,
}

/// The leading decimal digits of 8 bytes loaded little-endian: (their value, how many, 0..=8).
/// One subtract, one mask and a multiply-combine instead of a loop per digit: a byte-wise
/// borrow or carry can only run from the first non-digit upwards, into the bytes discarded.
#[inline(always)]
pub(crate) fn digit_prefix(chunk: u64) -> (u64, usize) {
    let v = chunk.wrapping_sub(0x3030_3030_3030_3030);
    // high bit set in every byte that is not b'0'..=b'9' (below: wrapped; above: +0x76 >= 0x80)
    let non_digit = (v | v.wrapping_add(0x7676_7676_7676_7676)) & 0x8080_8080_8080_8080;
    let n = (non_digit.trailing_zeros() / 8) as usize;
    if n == 0 {
        return (0, 0);
    }
    // keep the n digits, moved to the top: the bytes below become leading zeros
    let mut v = v << (8 * (8 - n));
    v = v.wrapping_mul(10).wrapping_add(v >> 8);
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064; // 100 + (1_000_000 << 32)
    const MUL2: u64 = 0x0000_2710_0000_0001; // 1 + (10_000 << 32)
    let d = (v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2))
        >> 32;
    (d, n)
}

pub(crate) const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Parse an unsigned decimal integer at the start of `b` (after optional spaces); returns
/// the value and the index after its last digit. At most 19 digits.
#[inline]
pub fn parse_u64(b: &[u8]) -> Option<(u64, usize)> {
    // fast path: 1..=15 digits right at the start, 16 bytes readable (every number of a
    // room message: seq, send time, window): two loads, no loop
    if let Some(c) = b.get(..16) {
        let lo = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
        let (d, n) = digit_prefix(lo);
        if n != 0 {
            if n < 8 {
                return Some((d, n));
            }
            let hi = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            let (d2, n2) = digit_prefix(hi);
            if n2 < 8 {
                return Some((d * POW10[n2] + d2, 8 + n2));
            }
        }
    }
    parse_u64_slow(b)
}

/// [`parse_u64`] for leading spaces, long numbers, or short buffers.
#[inline(never)]
fn parse_u64_slow(b: &[u8]) -> Option<(u64, usize)> {
    let mut i = 0;
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    let mut ended = false;
    // 8 bytes at a time while 8 are left
    while let Some(chunk) = b.get(i..i + 8) {
        let (d, n) = digit_prefix(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        v = v.wrapping_mul(POW10[n]).wrapping_add(d);
        i += n;
        if n < 8 || i - start > 19 {
            ended = true;
            break;
        }
    }
    if !ended {
        while i < b.len() {
            let c = b[i].wrapping_sub(b'0');
            if c > 9 {
                break;
            }
            v = v.wrapping_mul(10).wrapping_add(c as u64);
            i += 1;
        }
    }
    if i == start || i - start > 19 {
        None
    } else {
        Some((v, i))
    }
}

/// `p[i..i + N] == needle`, compiled to inline word compares (no memcmp call).
#[inline(always)]
pub fn has_at<const N: usize>(p: &[u8], i: usize, needle: &[u8; N]) -> bool {
    match p.get(i..i.wrapping_add(N)) {
        Some(s) => {
            let a: &[u8; N] = s.try_into().expect("length N");
            a == needle
        }
        None => false,
    }
}

/// The string value starting right after an opening quote, up to the closing quote.
#[inline]
fn str_until_quote(b: &[u8]) -> &[u8] {
    match memchr::memchr(b'"', b) {
        Some(e) => &b[..e],
        None => b,
    }
}

impl Classifier {
    pub fn new(target: Target) -> Classifier {
        Classifier {
            target,
            f_type: Finder::new(b"\"type\":"),
            f_seq: Finder::new(b"\"seq\":"),
            f_t: Finder::new(b"\"t\":"),
            f_body_str: Finder::new(b"\"body\":\""),
            f_id: Finder::new(b"\"id\":"),
            f_code: Finder::new(b"\"code\":"),
        }
    }

    /// The value of a top-level string field (found by key), without quotes.
    fn string_field<'a>(&self, finder: &Finder, p: &'a [u8]) -> Option<&'a [u8]> {
        let i = finder.find(p)? + finder.needle().len();
        let rest = &p[i..];
        let q = memchr::memchr(b'"', rest)?;
        Some(str_until_quote(&rest[q + 1..]))
    }

    #[inline]
    fn u64_field(&self, finder: &Finder, p: &[u8]) -> Option<u64> {
        let i = finder.find(p)? + finder.needle().len();
        parse_u64(&p[i..]).map(|(v, _)| v)
    }

    /// Send time and window from a message body written by `body()`. `hint` caches the
    /// position of the body's first field counted from the end of the frame (constant while
    /// the body size is), verified before use.
    #[inline]
    fn body_tw(&self, p: &[u8], from: usize, hint: &mut u32) -> Option<(u64, u32)> {
        let string_body = self.target.string_body();
        let (needle_len, finder) = if string_body {
            (8, &self.f_body_str)
        } else {
            (4, &self.f_t)
        };
        let h = *hint as usize;
        let cached = h != 0
            && h <= p.len()
            && if string_body {
                has_at(p, p.len() - h, b"\"body\":\"")
            } else {
                has_at(p, p.len() - h, b"\"t\":")
            };
        let i = if cached {
            p.len() - h
        } else {
            let i = match finder.find(&p[from.min(p.len())..]) {
                Some(i) => from + i,
                None => finder.find(p)?,
            };
            *hint = (p.len() - i) as u32;
            i
        } + needle_len;
        let (t, n) = parse_u64(&p[i..])?;
        let rest = &p[i + n..];
        let w = if self.target.string_body() {
            match rest.first() {
                Some(b':') => parse_u64(&rest[1..]).map(|(w, _)| w as u32).unwrap_or(0),
                _ => 0,
            }
        } else if has_at(rest, 0, b",\"w\":") {
            parse_u64(&rest[5..]).map(|(w, _)| w as u32).unwrap_or(0)
        } else {
            0
        };
        Some((t, w))
    }

    /// Parse a `message` frame. `seq_hint` caches the offset of the seq value (constant per
    /// room and server), `t_hint` the body position from the end; both verified before use.
    #[inline]
    pub fn message(&self, p: &[u8], seq_hint: &mut u16, t_hint: &mut u32) -> In<'static> {
        let h = *seq_hint as usize;
        if !self.target.string_body() {
            if let Some((seq, t, w)) = crate::msgfast::at_hints(p, h, *t_hint as usize) {
                return In::Message {
                    seq: Some(seq),
                    tw: Some((t, w)),
                };
            }
        }
        let j = if h >= 6 && has_at(p, h - 6, b"\"seq\":") {
            Some(h)
        } else {
            self.f_seq.find(p).map(|i| {
                let j = i + 6;
                if j <= u16::MAX as usize {
                    *seq_hint = j as u16;
                }
                j
            })
        };
        let (seq, from) = match j.and_then(|j| parse_u64(&p[j..]).map(|(v, n)| (v, j + n))) {
            Some((v, end)) => (Some(v), end),
            None => (None, 0),
        };
        In::Message {
            seq,
            tw: self.body_tw(p, from, t_hint),
        }
    }

    /// Classify a frame, using (and updating) the position caches for `message` frames.
    #[inline]
    pub fn classify_hinted<'a>(&self, p: &'a [u8], seq_hint: &mut u16, t_hint: &mut u32) -> In<'a> {
        let fast = if self.target == Target::Socketio {
            has_at(p, 0, b"42[\"message\",")
        } else {
            has_at(p, 0, b"{\"type\":\"message\"")
        };
        if fast {
            return self.message(p, seq_hint, t_hint);
        }
        self.classify(p)
    }

    /// Classify one text frame payload.
    #[inline]
    pub fn classify<'a>(&self, p: &'a [u8]) -> In<'a> {
        if self.target == Target::Socketio {
            return self.classify_sio(p);
        }
        const FAST: &[u8] = b"{\"type\":\"message\"";
        if p.starts_with(FAST) {
            return self.message(p, &mut 0, &mut 0);
        }
        let ty = match self.f_type.find(p) {
            Some(i) => {
                let rest = &p[i + 7..];
                match memchr::memchr(b'"', rest) {
                    Some(q) => str_until_quote(&rest[q + 1..]),
                    None => return In::Other(b""),
                }
            }
            None => return In::Other(b""),
        };
        self.by_type(ty, p)
    }

    fn by_type<'a>(&self, ty: &'a [u8], p: &'a [u8]) -> In<'a> {
        match ty {
            b"message" => self.message(p, &mut 0, &mut 0),
            b"welcome" => In::Welcome,
            b"joined" => In::Joined {
                seq: self.u64_field(&self.f_seq, p),
            },
            b"ack" => In::Ack {
                id: self.u64_field(&self.f_id, p),
            },
            b"pong" => In::Pong {
                id: self.u64_field(&self.f_id, p),
            },
            b"error" => In::Error {
                code: self.string_field(&self.f_code, p).unwrap_or(b"?"),
                id: self.u64_field(&self.f_id, p),
            },
            _ => In::Other(ty),
        }
    }

    fn classify_sio<'a>(&self, p: &'a [u8]) -> In<'a> {
        const MSG: &[u8] = b"42[\"message\",";
        if p.starts_with(MSG) {
            return self.message(p, &mut 0, &mut 0);
        }
        match p {
            [b'0', ..] => In::EioOpen,
            [b'2'] | [b'2', b'p', ..] => In::EioPing,
            [b'4', b'0', ..] => In::SioConnect,
            [b'4', b'4', ..] | [b'4', b'1', ..] | [b'1', ..] => In::SioRefused,
            [b'4', b'2', b'[', b'"', rest @ ..] => {
                let ev = str_until_quote(rest);
                match ev {
                    b"joined" => In::Joined { seq: None },
                    b"ack" => In::Ack {
                        id: self.u64_field(&self.f_id, p),
                    },
                    b"error" => In::Error {
                        code: self.string_field(&self.f_code, p).unwrap_or(b"?"),
                        id: self.u64_field(&self.f_id, p),
                    },
                    _ => In::Other(ev),
                }
            }
            _ => In::Other(b""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_padded_to_size_and_parses_back() {
        for &(sb, len) in &[(false, 64usize), (false, 200), (true, 64), (true, 10)] {
            let mut out = Vec::new();
            body(&mut out, sb, 123_456_789_012, 3, len);
            if len >= 64 {
                assert_eq!(out.len(), len, "{}", String::from_utf8_lossy(&out));
            }
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            if sb {
                assert!(v.as_str().unwrap().starts_with("123456789012:3:"));
            } else {
                assert_eq!(v["t"], 123_456_789_012u64);
                assert_eq!(v["w"], 3);
            }
        }
    }

    #[test]
    fn publish_and_join_payloads_are_valid_json() {
        for target in [Target::Corechat, Target::RustAxum] {
            let mut out = Vec::new();
            publish_payload(&mut out, target, 7, 99, 5_000_000, 1, 64);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["type"], "publish");
            assert_eq!(v["room"], "lg-room-7");
            assert_eq!(v["id"], 99);
            let mut out = Vec::new();
            join_payload(&mut out, target, 7, 1, false);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["type"], "join");
            assert!(v.get("presence").is_none());
        }
        let mut out = Vec::new();
        join_payload(&mut out, Target::Corechat, 7, 1, true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["presence"], "batched");
        assert_eq!(v["room"], "lg-room-7");
        assert_eq!(v["id"], 1);
        let mut out = Vec::new();
        publish_payload(&mut out, Target::Socketio, 2, 5, 77, 0, 64);
        assert!(out.starts_with(b"42[\"publish\","));
        let v: serde_json::Value = serde_json::from_slice(&out[2..]).unwrap();
        assert_eq!(v[1]["room"], "lg-room-2");
        let mut out = Vec::new();
        join_payload(&mut out, Target::Socketio, 2, 5, false);
        assert_eq!(out, b"42[\"join\",\"lg-room-2\"]");
    }

    #[test]
    fn classify_messages_of_every_dialect() {
        let c = Classifier::new(Target::Corechat);
        let m = br#"{"type":"message","room":"lg-room-0","seq":42,"from":"lg-1","name":"lg-1","ts":1700000000000,"body":{"t":987654321,"w":2,"p":"xxxx"}}"#;
        assert_eq!(
            c.classify(m),
            In::Message {
                seq: Some(42),
                tw: Some((987654321, 2))
            }
        );
        // different key order, spaces, body before seq
        let m = br#"{"room":"r","body":{"t":5,"w":0,"p":""},"ts":1,"type":"message","seq": 7}"#;
        assert_eq!(
            c.classify(m),
            In::Message {
                seq: Some(7),
                tw: Some((5, 0))
            }
        );
        let a = Classifier::new(Target::RustAxum);
        let m = br#"{"type":"message","room":"lg-room-0","seq":3,"from":"u1","ts":17,"body":"1234:1:xxxx"}"#;
        assert_eq!(
            a.classify(m),
            In::Message {
                seq: Some(3),
                tw: Some((1234, 1))
            }
        );
        // serde_json::json! sorts keys: type comes last
        assert_eq!(
            a.classify(br#"{"id":1,"members":3,"room":"lg-room-0","type":"joined"}"#),
            In::Joined { seq: None }
        );
        let s = Classifier::new(Target::Socketio);
        let m = br#"42["message",{"type":"message","room":"lg-room-0","seq":9,"from":3,"ts":1,"body":{"t":11,"w":1,"p":"x"}}]"#;
        assert_eq!(
            s.classify(m),
            In::Message {
                seq: Some(9),
                tw: Some((11, 1))
            }
        );
    }

    #[test]
    fn classify_control_frames() {
        let c = Classifier::new(Target::Corechat);
        assert_eq!(
            c.classify(br#"{"type":"welcome","user":"lg-1","name":"lg-1","session":"s","node":"n","heartbeat_ms":30000,"limits":{"max_frame_bytes":65536}}"#),
            In::Welcome
        );
        assert_eq!(
            c.classify(br#"{"type":"joined","id":1,"room":"lg-room-0","seq":17,"epoch":"e","members":2,"read":0,"recovered":true}"#),
            In::Joined { seq: Some(17) }
        );
        assert_eq!(
            c.classify(br#"{"type":"pong","id":123}"#),
            In::Pong { id: Some(123) }
        );
        assert_eq!(
            c.classify(br#"{"type":"error","id":4,"code":"rate_limited","message":"slow down","retry_after_ms":50}"#),
            In::Error {
                code: b"rate_limited",
                id: Some(4)
            }
        );
        assert_eq!(
            c.classify(br#"{"type":"ack","id":4,"room":"r","seq":1,"ts":2}"#),
            In::Ack { id: Some(4) }
        );
        // key order of other servers, string ids
        assert_eq!(
            c.classify(br#"{"id":17,"room":"r","seq":1,"ts":2,"type":"ack"}"#),
            In::Ack { id: Some(17) }
        );
        assert_eq!(
            c.classify(br#"{"type":"ack","id":"x","room":"r","seq":1,"ts":2}"#),
            In::Ack { id: None }
        );
        assert_eq!(
            c.classify(br#"{"type":"error","code":"unavailable","message":"store down"}"#),
            In::Error {
                code: b"unavailable",
                id: None
            }
        );
        assert_eq!(
            c.classify(br#"{"type":"user_joined","room":"r","user":"u","name":"u"}"#),
            In::Other(b"user_joined")
        );
        assert_eq!(
            c.classify(br#"{"type":"presence_diff","room":"r","joined":[{"user":"u","name":"u"}],"left":["v"]}"#),
            In::Other(b"presence_diff")
        );
        assert_eq!(c.classify(b"not json"), In::Other(b""));
        let s = Classifier::new(Target::Socketio);
        assert_eq!(
            s.classify(br#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#),
            In::EioOpen
        );
        assert_eq!(s.classify(b"2"), In::EioPing);
        assert_eq!(s.classify(br#"40{"sid":"x"}"#), In::SioConnect);
        assert_eq!(
            s.classify(br#"42["joined",{"type":"joined","room":"r"}]"#),
            In::Joined { seq: None }
        );
        assert_eq!(
            s.classify(br#"42["ack",{"type":"ack","id":1,"seq":1}]"#),
            In::Ack { id: Some(1) }
        );
        assert_eq!(s.classify(br#"44{"message":"no"}"#), In::SioRefused);
    }

    #[test]
    fn hinted_parse_matches_and_survives_shape_changes() {
        let c = Classifier::new(Target::Corechat);
        let (mut sh, mut th) = (0u16, 0u32);
        let mk = |room: &str, seq: u64, from: &str, t: u64, w: u32| {
            let mut b = Vec::new();
            body(&mut b, false, t, w, 64);
            let mut v = format!(
                r#"{{"type":"message","room":"{room}","seq":{seq},"from":"{from}","name":"{from}","ts":1,"body":"#
            )
            .into_bytes();
            v.extend_from_slice(&b);
            v.push(b'}');
            v
        };
        let cases = [
            mk("lg-room-1", 5, "lg-1", 1000, 1),
            mk("lg-room-1", 6, "lg-1", 1001, 1),
            mk("lg-room-10", 77, "lg-10", 99_999_999, 12),
            mk("r", 1234567, "x", 5, 0),
            mk("lg-room-1", 8, "lg-1", 1_000_000_000_000, 3),
        ];
        let want = [
            (5, 1000, 1),
            (6, 1001, 1),
            (77, 99_999_999, 12),
            (1234567, 5, 0),
            (8, 1_000_000_000_000, 3),
        ];
        for (m, (seq, t, w)) in cases.iter().zip(want) {
            assert_eq!(
                c.classify_hinted(m, &mut sh, &mut th),
                In::Message {
                    seq: Some(seq),
                    tw: Some((t, w))
                },
                "{}",
                String::from_utf8_lossy(m)
            );
        }
        // a stale hint pointing elsewhere is not trusted
        let (mut sh, mut th) = (40u16, 10u32);
        assert_eq!(
            c.classify_hinted(&cases[0], &mut sh, &mut th),
            In::Message {
                seq: Some(5),
                tw: Some((1000, 1))
            }
        );
        let a = Classifier::new(Target::RustAxum);
        let (mut sh, mut th) = (0u16, 0u32);
        for k in 0..3u64 {
            let m = format!(
                r#"{{"type":"message","room":"lg-room-0","seq":{},"from":"u1","ts":17,"body":"{}:2:xxxx"}}"#,
                k + 1,
                10 + k
            );
            assert_eq!(
                a.classify_hinted(m.as_bytes(), &mut sh, &mut th),
                In::Message {
                    seq: Some(k + 1),
                    tw: Some((10 + k, 2))
                }
            );
        }
    }

    #[test]
    fn parse_u64_matches_std_for_all_lengths() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 19) as u32 + 1;
            let v = x % 10u64.pow(digits);
            for tail in ["", ",", "}", ":x", " "] {
                let s = format!("{v}{tail}");
                assert_eq!(
                    parse_u64(s.as_bytes()),
                    Some((v, v.to_string().len())),
                    "{s}"
                );
            }
            // leading zeros
            if digits <= 17 {
                let s = format!("00{v}");
                assert_eq!(parse_u64(s.as_bytes()).map(|r| r.0), Some(v));
            }
        }
        assert_eq!(parse_u64(b"1234567/90123456"), Some((1234567, 7)));
        assert_eq!(parse_u64(b"12345678:0123456"), Some((12345678, 8)));
        assert_eq!(
            parse_u64(b"9999999999999999999"),
            Some((9_999_999_999_999_999_999, 19))
        );
        assert_eq!(parse_u64(b"1234567890123456789012"), None);
    }

    #[test]
    fn parse_u64_edges() {
        assert_eq!(parse_u64(b"123,"), Some((123, 3)));
        assert_eq!(parse_u64(b" 9}"), Some((9, 2)));
        assert_eq!(parse_u64(b"x"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"18446744073709551615"), None); // 20 digits: refused
    }
}
