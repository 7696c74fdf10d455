//! RFC 6455 frame codec, written by hand for the hot path, shared by the
//! corechat server (`corechat::ws`) and its load generator (`loadgen::ws`,
//! `loadgen::mock`).
//!
//! Why by hand: tungstenite keeps a 128 KiB read buffer and a write buffer per
//! connection (the reason the axum peer costs ~136 KiB per idle connection).
//! The server's reactor instead reads into one shared buffer per shard and
//! parses frames in place, so an idle connection holds no buffer at all; the
//! load generator parses server frames in place from a caller-owned buffer,
//! with no allocation per received frame. tungstenite is still used by the
//! server for the handshake key derivation and as the client in its tests.
//!
//! This crate is the one copy of the framing rules: opcodes, close codes,
//! header parsing for either sender (client frames must be masked, server
//! frames must not be), header and frame encoding, masking, close-payload
//! validation and fragment reassembly. The framing has no dependencies and
//! no unsafe code; `Bytes`-returning encoders live in the server's `ws`
//! module on top of [`write_header`]. permessage-deflate (RFC 7692) is here
//! too: its negotiation in [`extension`], its payload codec in `deflate`
//! (feature `deflate`, flate2), and RSV1 in [`parse_header_ext`].

#![forbid(unsafe_code)]

#[cfg(feature = "deflate")]
pub mod deflate;
pub mod extension;

use std::fmt;

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// All opcodes RFC 6455 defines.
    pub const ALL: [OpCode; 6] = [
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ];

    /// The opcode for the low nibble `v`; `None` for reserved values.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    #[inline]
    pub const fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0,
            OpCode::Text => 1,
            OpCode::Binary => 2,
            OpCode::Close => 8,
            OpCode::Ping => 9,
            OpCode::Pong => 10,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes of payload.
    #[inline]
    pub const fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Close codes (RFC 6455 section 7.4; corechat's use in PROTOCOL.md 5.5).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    /// Reported locally for a close frame without a code; never sent.
    pub const NO_STATUS: u16 = 1005;
    pub const INVALID_UTF8: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const OVERLOAD: u16 = 1013;
}

/// A violation that ends the connection with the given close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseError {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseError {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        CloseError { code, reason }
    }
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket close {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for CloseError {}

/// The end that sent a frame: a client must mask its frames, a server must not
/// (RFC 6455 5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    /// Whether frames sent by this end carry a masking key.
    #[inline]
    pub const fn masks(self) -> bool {
        matches!(self, Role::Client)
    }
}

/// Header of one frame parsed from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: the message is compressed (permessage-deflate, RFC 7692). Only
    /// ever set by [`parse_header_ext`] with `rsv1_allowed`.
    pub rsv1: bool,
    pub opcode: OpCode,
    /// Offset of the payload inside the buffer.
    pub payload_start: usize,
    pub payload_len: usize,
}

impl FrameHeader {
    /// Bytes this frame occupies in the buffer (header and payload).
    #[inline]
    pub fn total_len(&self) -> usize {
        self.payload_start + self.payload_len
    }

    /// The payload inside the buffer the header was parsed from.
    #[inline]
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_start..self.total_len()]
    }
}

/// Outcome of trying to parse one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// A whole frame is present (by [`parse_frame`]: its payload unmasked).
    Frame(FrameHeader),
    /// More bytes are needed; `needed` is the total size of the frame when
    /// known (so the caller can reserve exactly), else 0.
    Incomplete { needed: usize },
}

/// Validates the header of one frame sent by `sender` at the front of `buf`
/// and reports where its payload is, without touching the payload (a masked
/// payload stays masked; its key is the 4 bytes before `payload_start`).
/// `max_payload` bounds a single frame ([`Assembler`] bounds a message).
#[inline]
pub fn parse_header(buf: &[u8], max_payload: usize, sender: Role) -> Result<Parse, CloseError> {
    parse_header_ext(buf, max_payload, sender, false)
}

/// [`parse_header`] on a connection that may have negotiated
/// permessage-deflate: with `rsv1_allowed`, RSV1 is accepted on the first
/// frame of a data message (reported in [`FrameHeader::rsv1`]); it is still
/// a protocol error on control and continuation frames (RFC 7692 6.1).
#[inline]
pub fn parse_header_ext(
    buf: &[u8],
    max_payload: usize,
    sender: Role,
    rsv1_allowed: bool,
) -> Result<Parse, CloseError> {
    if buf.len() < 2 {
        return Ok(Parse::Incomplete { needed: 0 });
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !rsv1_allowed) {
        return Err(CloseError::new(close_code::PROTOCOL, "reserved bits set"));
    }
    let opcode = OpCode::from_u8(b0 & 0x0f)
        .ok_or(CloseError::new(close_code::PROTOCOL, "reserved opcode"))?;
    if rsv1 && (opcode.is_control() || opcode == OpCode::Continuation) {
        return Err(CloseError::new(
            close_code::PROTOCOL,
            "compressed control or continuation frame",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    if masked != sender.masks() {
        return Err(CloseError::new(
            close_code::PROTOCOL,
            match sender {
                Role::Client => "client frame not masked",
                Role::Server => "server frame masked",
            },
        ));
    }
    let len7 = (b1 & 0x7f) as usize;
    if opcode.is_control() && (!fin || len7 > 125) {
        return Err(CloseError::new(
            close_code::PROTOCOL,
            "fragmented or oversized control frame",
        ));
    }
    let (payload_len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(Parse::Incomplete { needed: 0 });
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Parse::Incomplete { needed: 0 });
            }
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(raw);
            if len >> 63 != 0 {
                return Err(CloseError::new(close_code::PROTOCOL, "invalid length"));
            }
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        n => (n, 2),
    };
    if payload_len > max_payload {
        return Err(CloseError::new(close_code::TOO_BIG, "message too big"));
    }
    if masked {
        pos += 4;
        if buf.len() < pos {
            return Ok(Parse::Incomplete { needed: 0 });
        }
    }
    let Some(total) = pos.checked_add(payload_len) else {
        return Err(CloseError::new(close_code::TOO_BIG, "message too big"));
    };
    if buf.len() < total {
        return Ok(Parse::Incomplete { needed: total });
    }
    Ok(Parse::Frame(FrameHeader {
        fin,
        rsv1,
        opcode,
        payload_start: pos,
        payload_len,
    }))
}

/// Parses one frame sent by `sender` at the front of `buf`, as
/// [`parse_header`], and unmasks a masked payload in place.
#[inline]
pub fn parse_frame(buf: &mut [u8], max_payload: usize, sender: Role) -> Result<Parse, CloseError> {
    parse_frame_ext(buf, max_payload, sender, false)
}

/// [`parse_frame`] with RSV1 allowed as by [`parse_header_ext`].
#[inline]
pub fn parse_frame_ext(
    buf: &mut [u8],
    max_payload: usize,
    sender: Role,
    rsv1_allowed: bool,
) -> Result<Parse, CloseError> {
    let parsed = parse_header_ext(buf, max_payload, sender, rsv1_allowed)?;
    if let Parse::Frame(h) = &parsed {
        if sender.masks() {
            let k = h.payload_start - 4;
            let mask = [buf[k], buf[k + 1], buf[k + 2], buf[k + 3]];
            apply_mask(&mut buf[h.payload_start..h.total_len()], mask);
        }
    }
    Ok(parsed)
}

/// Parses one client frame at the front of `buf` and unmasks its payload in
/// place (the server's side). Client frames must be masked.
#[inline]
pub fn parse_client_frame(buf: &mut [u8], max_payload: usize) -> Result<Parse, CloseError> {
    parse_frame(buf, max_payload, Role::Client)
}

/// Parses one server frame at the front of `buf` (the client's side). Server
/// frames are unmasked, so the buffer is only read.
#[inline]
pub fn parse_server_frame(buf: &[u8], max_payload: usize) -> Result<Parse, CloseError> {
    parse_header(buf, max_payload, Role::Server)
}

/// XORs `data` with the 4-byte mask, eight bytes at a time. The mask lines up
/// with the start of `data` (masking is its own inverse).
#[inline]
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let mask64 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(word) ^ mask64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The largest header: 2 bytes, an 8-byte length and a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Size of the header [`write_header`] writes for `payload_len` bytes of
/// payload (with the masking key when `masked`).
#[inline]
pub const fn header_len(payload_len: usize, masked: bool) -> usize {
    let base = if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as usize {
        4
    } else {
        10
    };
    if masked {
        base + 4
    } else {
        base
    }
}

/// Writes a frame header (and the masking key, if any) to the front of `out`
/// and returns its length, [`header_len`]. Panics if `out` is shorter.
#[inline]
pub fn write_header(
    out: &mut [u8],
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    write_header_ext(out, fin, false, opcode, payload_len, mask)
}

/// [`write_header`] with the RSV1 bit (a compressed message's first frame).
#[inline]
pub fn write_header_ext(
    out: &mut [u8],
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out[0] = if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | opcode.as_u8();
    let mut pos = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[pos..pos + 4].copy_from_slice(&m);
        pos += 4;
    }
    pos
}

/// Appends a frame header (and the masking key, if any) to `out`.
#[inline]
pub fn put_header(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = write_header(&mut hdr, fin, opcode, payload_len, mask);
    out.extend_from_slice(&hdr[..n]);
}

/// Appends one complete frame (FIN set) to `out`: masked with `mask` when
/// given (a client's frame), else plain (a server's).
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    out.reserve(header_len(payload.len(), mask.is_some()) + payload.len());
    put_header(out, true, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
}

/// Appends a close frame with `code` and `reason`, the reason cut to fit a
/// control frame (123 bytes) on a character boundary.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let reason = truncate_utf8(reason, 123);
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode_frame(out, OpCode::Close, &payload[..2 + reason.len()], mask);
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Close codes a peer may send (RFC 6455 7.4).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Validates a received close payload; returns the code to echo back.
pub fn check_close_payload(payload: &[u8]) -> Result<u16, CloseError> {
    match payload.len() {
        0 => Ok(close_code::NORMAL),
        1 => Err(CloseError::new(close_code::PROTOCOL, "bad close payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                return Err(CloseError::new(close_code::PROTOCOL, "bad close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(CloseError::new(
                    close_code::INVALID_UTF8,
                    "bad close reason",
                ));
            }
            Ok(code)
        }
    }
}

/// Reassembles fragmented messages. Lives boxed on the connection only while
/// a fragmented message is in flight, so idle connections pay nothing.
#[derive(Debug)]
pub struct Assembler {
    opcode: OpCode,
    buf: Vec<u8>,
    /// Prefix of `buf` already known to be valid UTF-8 (text only), so a bad
    /// sequence fails as soon as its fragment arrives, not at the end.
    utf8_valid: usize,
}

/// What a data frame contributed to message assembly.
pub enum Assembled<'a> {
    /// The message is not complete yet.
    Pending,
    /// A complete message: text (valid UTF-8) or binary.
    Message { opcode: OpCode, payload: &'a [u8] },
}

impl Assembler {
    pub fn start(opcode: OpCode, payload: &[u8], max_message: usize) -> Result<Self, CloseError> {
        let mut asm = Assembler {
            opcode,
            buf: Vec::with_capacity(payload.len().max(256)),
            utf8_valid: 0,
        };
        asm.extend(payload, max_message)?;
        Ok(asm)
    }

    /// Adds a continuation payload; checks size and UTF-8 incrementally.
    pub fn extend(&mut self, payload: &[u8], max_message: usize) -> Result<(), CloseError> {
        if self.buf.len() + payload.len() > max_message {
            return Err(CloseError::new(close_code::TOO_BIG, "message too big"));
        }
        self.buf.extend_from_slice(payload);
        if self.opcode == OpCode::Text {
            match std::str::from_utf8(&self.buf[self.utf8_valid..]) {
                Ok(_) => self.utf8_valid = self.buf.len(),
                // error_len None: an incomplete sequence at the end, which
                // the next fragment may complete.
                Err(e) if e.error_len().is_none() => self.utf8_valid += e.valid_up_to(),
                Err(_) => return Err(CloseError::new(close_code::INVALID_UTF8, "invalid utf-8")),
            }
        }
        Ok(())
    }

    /// Finishes the message; a text message must end on a character boundary.
    pub fn finish(&self) -> Result<Assembled<'_>, CloseError> {
        if self.opcode == OpCode::Text && self.utf8_valid != self.buf.len() {
            return Err(CloseError::new(close_code::INVALID_UTF8, "invalid utf-8"));
        }
        Ok(Assembled::Message {
            opcode: self.opcode,
            payload: &self.buf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as the load generator sends it.
    fn client_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload, Some(mask));
        out
    }

    /// A plain server frame, fragmented or not.
    fn server_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, fin, opcode, payload.len(), None);
        out.extend_from_slice(payload);
        out
    }

    fn parse_one(bytes: &[u8]) -> (Parse, Vec<u8>) {
        let mut buf = bytes.to_vec();
        let p = parse_client_frame(&mut buf, 1 << 20).expect("valid frame");
        (p, buf)
    }

    #[test]
    fn masked_text_frame_round_trip() {
        let raw = client_frame(OpCode::Text, b"hello world, masked", [1, 2, 3, 4]);
        let (p, buf) = parse_one(&raw);
        let Parse::Frame(h) = p else {
            panic!("expected frame")
        };
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.payload(&buf), b"hello world, masked");
        assert_eq!(h.total_len(), raw.len());
    }

    #[test]
    fn rfc6455_masked_hello_example() {
        // RFC 6455 5.7: a single-frame masked text message "Hello".
        let raw = client_frame(OpCode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            raw,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        // And the unmasked one a server sends.
        assert_eq!(
            server_frame(OpCode::Text, true, b"Hello"),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn extended_lengths() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let raw = client_frame(OpCode::Binary, &payload, [9, 8, 7, 6]);
            assert_eq!(raw.len(), header_len(len, true) + len);
            let (p, buf) = parse_one(&raw);
            let Parse::Frame(h) = p else {
                panic!("expected frame for {len}")
            };
            assert_eq!(h.payload_len, len);
            assert_eq!(h.payload(&buf), &payload[..]);
            let server = server_frame(OpCode::Binary, true, &payload);
            assert_eq!(server.len(), header_len(len, false) + len);
            let Parse::Frame(h) = parse_server_frame(&server, 1 << 20).unwrap() else {
                panic!("expected server frame for {len}")
            };
            assert_eq!(h.payload(&server), &payload[..]);
        }
    }

    #[test]
    fn incomplete_reports_needed_size() {
        let raw = client_frame(OpCode::Text, &[b'a'; 300], [1, 1, 1, 1]);
        for cut in [0, 1, 3, 7] {
            let mut part = raw[..cut].to_vec();
            assert_eq!(
                parse_client_frame(&mut part, 1 << 20).unwrap(),
                Parse::Incomplete { needed: 0 }
            );
        }
        let mut part = raw[..100].to_vec();
        assert_eq!(
            parse_client_frame(&mut part, 1 << 20).unwrap(),
            Parse::Incomplete { needed: raw.len() }
        );
        // A server frame's size is known once its 4-byte header is in.
        let frame = server_frame(OpCode::Text, true, &[b'y'; 200]);
        for cut in 0..frame.len() {
            let needed = if cut >= 4 { frame.len() } else { 0 };
            assert_eq!(
                parse_server_frame(&frame[..cut], 1 << 20).unwrap(),
                Parse::Incomplete { needed },
                "cut {cut}"
            );
        }
    }

    #[test]
    fn parse_many_frames_in_one_buffer() {
        let mut buf = Vec::new();
        buf.extend(server_frame(OpCode::Text, true, b"{\"a\":1}"));
        buf.extend(server_frame(OpCode::Text, true, &[b'x'; 300]));
        buf.extend(server_frame(OpCode::Ping, true, b"hi"));
        buf.extend(server_frame(OpCode::Binary, true, &vec![1u8; 70000]));
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Ok(Parse::Frame(f)) = parse_server_frame(&buf[pos..], 1 << 20) {
            seen.push((f.opcode, f.payload_len));
            pos += f.total_len();
        }
        assert_eq!(pos, buf.len());
        assert_eq!(
            seen,
            vec![
                (OpCode::Text, 7),
                (OpCode::Text, 300),
                (OpCode::Ping, 2),
                (OpCode::Binary, 70000)
            ]
        );
    }

    #[test]
    fn fragmented_frames_parse_with_fin_flag() {
        let mut buf = server_frame(OpCode::Text, false, b"hel");
        buf.extend(server_frame(OpCode::Continuation, true, b"lo"));
        let Ok(Parse::Frame(a)) = parse_server_frame(&buf, 100) else {
            panic!()
        };
        assert!(!a.fin);
        assert_eq!(a.opcode, OpCode::Text);
        let Ok(Parse::Frame(b)) = parse_server_frame(&buf[a.total_len()..], 100) else {
            panic!()
        };
        assert!(b.fin);
        assert_eq!(b.opcode, OpCode::Continuation);
        assert_eq!(b.payload(&buf[a.total_len()..]), b"lo");
    }

    #[test]
    fn protocol_violations() {
        // Unmasked client frame, masked server frame.
        let mut unmasked = server_frame(OpCode::Text, true, b"hi");
        assert_eq!(
            parse_client_frame(&mut unmasked, 100).unwrap_err(),
            CloseError::new(close_code::PROTOCOL, "client frame not masked")
        );
        let masked = client_frame(OpCode::Text, b"hi", [1, 2, 3, 4]);
        assert_eq!(
            parse_server_frame(&masked, 100).unwrap_err(),
            CloseError::new(close_code::PROTOCOL, "server frame masked")
        );
        // RSV bit.
        let mut rsv = client_frame(OpCode::Text, b"hi", [0; 4]);
        rsv[0] |= 0x40;
        assert_eq!(parse_client_frame(&mut rsv, 100).unwrap_err().code, 1002);
        assert_eq!(
            parse_server_frame(&[0xc1, 0x00], 100).unwrap_err().code,
            1002
        );
        // Reserved opcode 3.
        let mut op = client_frame(OpCode::Text, b"hi", [0; 4]);
        op[0] = 0x83;
        assert_eq!(parse_client_frame(&mut op, 100).unwrap_err().code, 1002);
        assert_eq!(
            parse_server_frame(&[0x83, 0x00], 100).unwrap_err().code,
            1002
        );
        // Fragmented ping.
        let mut ping = client_frame(OpCode::Ping, b"hi", [0; 4]);
        ping[0] &= 0x7f;
        assert_eq!(parse_client_frame(&mut ping, 100).unwrap_err().code, 1002);
        // Oversized ping (200 bytes through the 16-bit length).
        let mut big_ping = vec![0x89, 126, 0, 200];
        big_ping.extend([0; 200]);
        assert_eq!(parse_server_frame(&big_ping, 1000).unwrap_err().code, 1002);
        // Length with the top bit set.
        let mut huge = vec![0x82, 127];
        huge.extend(u64::MAX.to_be_bytes());
        assert_eq!(
            parse_server_frame(&huge, usize::MAX).unwrap_err().code,
            1002
        );
        // Too big.
        let mut big = client_frame(OpCode::Text, &[b'a'; 200], [0; 4]);
        assert_eq!(parse_client_frame(&mut big, 100).unwrap_err().code, 1009);
    }

    #[test]
    fn write_header_into_caller_buffer() {
        for (len, mask) in [(5usize, None), (200, Some([1, 2, 3, 4])), (70_000, None)] {
            let mut hdr = [0u8; MAX_HEADER_LEN];
            let n = write_header(&mut hdr, false, OpCode::Binary, len, mask);
            assert_eq!(n, header_len(len, mask.is_some()));
            let mut v = Vec::new();
            put_header(&mut v, false, OpCode::Binary, len, mask);
            assert_eq!(&hdr[..n], &v[..]);
            assert_eq!(hdr[0], 0x02, "FIN clear, binary");
        }
    }

    #[test]
    fn assembler_checks_utf8_across_fragments() {
        let euro = "€".as_bytes(); // three bytes
        let mut asm = Assembler::start(OpCode::Text, &euro[..1], 100).unwrap();
        asm.extend(&euro[1..2], 100).unwrap();
        asm.extend(&euro[2..], 100).unwrap();
        match asm.finish().unwrap() {
            Assembled::Message { payload, .. } => assert_eq!(payload, euro),
            Assembled::Pending => panic!("complete"),
        }
        // Invalid byte fails as soon as it arrives.
        let mut bad = Assembler::start(OpCode::Text, b"ok", 100).unwrap();
        assert_eq!(bad.extend(&[0xff], 100).unwrap_err().code, 1007);
        // Truncated sequence at the end fails on finish.
        let trunc = Assembler::start(OpCode::Text, &euro[..2], 100).unwrap();
        assert!(trunc.finish().is_err());
        // Size bound over all fragments.
        let mut big = Assembler::start(OpCode::Binary, &[0; 60], 100).unwrap();
        assert_eq!(big.extend(&[0; 60], 100).unwrap_err().code, 1009);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(check_close_payload(&[]).unwrap(), 1000);
        assert!(check_close_payload(&[3]).is_err());
        assert_eq!(check_close_payload(&1001u16.to_be_bytes()).unwrap(), 1001);
        assert!(check_close_payload(&1005u16.to_be_bytes()).is_err());
        assert!(check_close_payload(&999u16.to_be_bytes()).is_err());
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(check_close_payload(&bad_reason).unwrap_err().code, 1007);
    }

    #[test]
    fn close_frame_reason_is_cut_on_a_char_boundary() {
        let mut f = Vec::new();
        encode_close(&mut f, 1013, "slow consumer", None);
        assert_eq!(&f[2..4], &1013u16.to_be_bytes());
        assert_eq!(&f[4..], b"slow consumer");
        let long = "é".repeat(100); // 200 bytes
        let mut f = Vec::new();
        encode_close(&mut f, 1000, &long, Some([5, 6, 7, 8]));
        let Parse::Frame(h) = parse_client_frame(&mut f, 125).unwrap() else {
            panic!("frame")
        };
        assert_eq!(h.payload_len, 2 + 122);
        assert_eq!(check_close_payload(h.payload(&f)).unwrap(), 1000);
    }

    #[test]
    fn mask_matches_bytewise_xor() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..=200u8).collect();
        let mut fast = data.clone();
        apply_mask(&mut fast, mask);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(fast, slow);
    }

    #[test]
    fn opcodes_round_trip() {
        for op in OpCode::ALL {
            assert_eq!(OpCode::from_u8(op.as_u8()), Some(op));
        }
        for v in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            assert_eq!(OpCode::from_u8(v), None);
        }
    }
}
