//! RFC 6455 frame codec, written by hand for the hot path.
//!
//! tungstenite keeps a 128 KiB read buffer and a write buffer per connection
//! (the reason the axum peer costs ~136 KiB per idle connection). Here the
//! reactor reads into one shared buffer per shard and parses frames in place,
//! so an idle connection holds no buffer at all. tungstenite is still used for
//! the handshake key derivation and as the client in tests.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<OpCode> {
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

    fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0,
            OpCode::Text => 1,
            OpCode::Binary => 2,
            OpCode::Close => 8,
            OpCode::Ping => 9,
            OpCode::Pong => 10,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Close codes used by the server (PROTOCOL.md section 5.5).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_UTF8: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const OVERLOAD: u16 = 1013;
}

/// A violation that ends the connection with the given close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("websocket close {code}: {reason}")]
pub struct CloseError {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseError {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        CloseError { code, reason }
    }
}

/// Header of one frame parsed from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    /// Offset of the payload inside the buffer.
    pub payload_start: usize,
    pub payload_len: usize,
}

impl FrameHeader {
    /// Bytes this frame occupies in the buffer (header and payload).
    pub fn total_len(&self) -> usize {
        self.payload_start + self.payload_len
    }
}

/// Outcome of trying to parse one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// A whole frame is present; its payload has been unmasked in place.
    Frame(FrameHeader),
    /// More bytes are needed; `needed` is the total size of the frame when
    /// known (so the caller can reserve exactly), else 0.
    Incomplete { needed: usize },
}

/// Parses one client frame at the front of `buf` and unmasks its payload in
/// place. `max_payload` bounds a single frame (the message bound is enforced
/// by [`Assembler`]). Client frames must be masked (RFC 6455 5.1).
pub fn parse_client_frame(buf: &mut [u8], max_payload: usize) -> Result<Parse, CloseError> {
    parse_frame(buf, max_payload, true)
}

/// Parses one server frame (unmasked) at the front of `buf`. Used by clients.
pub fn parse_server_frame(buf: &mut [u8], max_payload: usize) -> Result<Parse, CloseError> {
    parse_frame(buf, max_payload, false)
}

fn parse_frame(buf: &mut [u8], max_payload: usize, expect_mask: bool) -> Result<Parse, CloseError> {
    if buf.len() < 2 {
        return Ok(Parse::Incomplete { needed: 0 });
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(CloseError::new(close_code::PROTOCOL, "reserved bits set"));
    }
    let opcode = OpCode::from_u8(b0 & 0x0f)
        .ok_or(CloseError::new(close_code::PROTOCOL, "reserved opcode"))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    if masked != expect_mask {
        return Err(CloseError::new(
            close_code::PROTOCOL,
            if expect_mask {
                "client frame not masked"
            } else {
                "server frame masked"
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
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(Parse::Incomplete { needed: 0 });
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    let total = pos + payload_len;
    if buf.len() < total {
        return Ok(Parse::Incomplete { needed: total });
    }
    if let Some(mask) = mask {
        apply_mask(&mut buf[pos..total], mask);
    }
    Ok(Parse::Frame(FrameHeader {
        fin,
        opcode,
        payload_start: pos,
        payload_len,
    }))
}

/// XORs `data` with the 4-byte mask, eight bytes at a time.
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

/// Writes a server (unmasked) frame header for a payload of `len` bytes.
pub fn put_header(out: &mut BytesMut, opcode: OpCode, len: usize) {
    out.put_u8(0x80 | opcode.as_u8());
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Size of the header [`put_header`] writes for `len` bytes of payload.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// A complete, shareable server frame: encoded once, queued to many sockets.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A text frame built by `write` filling the payload after a reserved header,
/// so JSON is serialized straight into the frame without a second copy.
pub fn text_frame_with(capacity_hint: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    // Reserve the largest header, write the payload, then move the header
    // in front of it by slicing off the unused prefix.
    let mut buf = Vec::with_capacity(10 + capacity_hint);
    buf.resize(10, 0);
    write(&mut buf);
    let len = buf.len() - 10;
    let hlen = header_len(len);
    let start = 10 - hlen;
    let mut hdr = BytesMut::with_capacity(hlen);
    put_header(&mut hdr, OpCode::Text, len);
    buf[start..10].copy_from_slice(&hdr);
    Bytes::from(buf).slice(start..)
}

/// A close frame with a code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = truncate_utf8(reason, 123);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame(OpCode::Close, &payload)
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

/// Encodes a masked client frame (load generator and tests).
pub fn client_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(14 + payload.len());
    put_header(&mut out, opcode, payload.len());
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
    out.to_vec()
}

/// Close codes a peer may send (RFC 6455 7.4).
fn valid_close_code(code: u16) -> bool {
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

/// Computes `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(&buf[h.payload_start..h.total_len()], b"hello world, masked");
        assert_eq!(h.total_len(), raw.len());
    }

    #[test]
    fn extended_lengths() {
        for len in [125usize, 126, 65535, 65536, 100_000] {
            let payload = vec![b'x'; len];
            let raw = client_frame(OpCode::Binary, &payload, [9, 8, 7, 6]);
            let (p, buf) = parse_one(&raw);
            let Parse::Frame(h) = p else {
                panic!("expected frame for {len}")
            };
            assert_eq!(h.payload_len, len);
            assert!(buf[h.payload_start..h.total_len()]
                .iter()
                .all(|&b| b == b'x'));
            let server = frame(OpCode::Binary, &payload);
            assert_eq!(server.len(), header_len(len) + len);
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
    }

    #[test]
    fn protocol_violations() {
        // Unmasked client frame.
        let mut unmasked = frame(OpCode::Text, b"hi").to_vec();
        assert_eq!(
            parse_client_frame(&mut unmasked, 100).unwrap_err().code,
            close_code::PROTOCOL
        );
        // RSV bit.
        let mut rsv = client_frame(OpCode::Text, b"hi", [0; 4]);
        rsv[0] |= 0x40;
        assert_eq!(parse_client_frame(&mut rsv, 100).unwrap_err().code, 1002);
        // Reserved opcode 3.
        let mut op = client_frame(OpCode::Text, b"hi", [0; 4]);
        op[0] = 0x83;
        assert_eq!(parse_client_frame(&mut op, 100).unwrap_err().code, 1002);
        // Fragmented ping.
        let mut ping = client_frame(OpCode::Ping, b"hi", [0; 4]);
        ping[0] &= 0x7f;
        assert_eq!(parse_client_frame(&mut ping, 100).unwrap_err().code, 1002);
        // Too big.
        let mut big = client_frame(OpCode::Text, &[b'a'; 200], [0; 4]);
        assert_eq!(parse_client_frame(&mut big, 100).unwrap_err().code, 1009);
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
        let f = close_frame(1013, "slow consumer");
        assert_eq!(&f[2..4], &1013u16.to_be_bytes());
    }

    #[test]
    fn text_frame_with_writes_header_in_place() {
        for len in [5usize, 200, 70_000] {
            let f = text_frame_with(16, |b| b.extend(std::iter::repeat_n(b'z', len)));
            let mut copy = f.to_vec();
            let Parse::Frame(h) = parse_server_frame(&mut copy, 1 << 20).unwrap() else {
                panic!("frame")
            };
            assert_eq!(h.payload_len, len);
            assert_eq!(h.total_len(), f.len());
        }
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
}
