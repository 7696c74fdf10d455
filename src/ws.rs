//! The server's side of the WebSocket codec: a thin layer over
//! [`corechat_wire`] (see its top comment for why the codec is written by
//! hand) that encodes server frames into shareable [`Bytes`] and derives the
//! handshake's accept key.

use bytes::{BufMut, Bytes, BytesMut};
use corechat_wire as wire;
use std::sync::{Arc, OnceLock};
use wire::deflate::Deflater;

pub use wire::{
    apply_mask, check_close_payload, close_code, parse_client_frame, Assembled, Assembler,
    CloseError, FrameHeader, OpCode, Parse,
};

/// Parses one client frame, with RSV1 allowed when the connection
/// negotiated permessage-deflate.
pub fn parse_client_frame_ext(
    buf: &mut [u8],
    max_payload: usize,
    rsv1_allowed: bool,
) -> Result<Parse, CloseError> {
    wire::parse_frame_ext(buf, max_payload, wire::Role::Client, rsv1_allowed)
}

/// Largest server (unmasked) frame header.
const MAX_SERVER_HEADER: usize = wire::header_len(usize::MAX, false);

/// Parses one server frame (unmasked) at the front of `buf`. Used by clients.
pub fn parse_server_frame(buf: &mut [u8], max_payload: usize) -> Result<Parse, CloseError> {
    wire::parse_server_frame(buf, max_payload)
}

/// Writes a server (unmasked) frame header for a payload of `len` bytes.
pub fn put_header(out: &mut BytesMut, opcode: OpCode, len: usize) {
    let mut hdr = [0u8; MAX_SERVER_HEADER];
    let n = wire::write_header(&mut hdr, true, opcode, len, None);
    out.put_slice(&hdr[..n]);
}

/// Size of the header [`put_header`] writes for `len` bytes of payload.
pub fn header_len(len: usize) -> usize {
    wire::header_len(len, false)
}

/// A complete, shareable server frame: encoded once, queued to many sockets.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    wire::encode_frame(&mut out, opcode, payload, None);
    Bytes::from(out)
}

/// A text frame built by `write` filling the payload after a reserved header,
/// so JSON is serialized straight into the frame without a second copy.
pub fn text_frame_with(capacity_hint: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    // Reserve the largest header, write the payload, then write the header
    // just in front of it and slice off the unused prefix.
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + capacity_hint);
    buf.resize(MAX_SERVER_HEADER, 0);
    write(&mut buf);
    let len = buf.len() - MAX_SERVER_HEADER;
    let start = MAX_SERVER_HEADER - header_len(len);
    wire::write_header(&mut buf[start..], true, OpCode::Text, len, None);
    Bytes::from(buf).slice(start..)
}

/// A close frame with a code and a short reason (cut to fit on a character
/// boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(wire::MAX_HEADER_LEN + 125);
    wire::encode_close(&mut out, code, reason, None);
    Bytes::from(out)
}

/// A complete frame compressed with permessage-deflate (RSV1 set), as one
/// message without context takeover. Sent even in the rare case it is a
/// few bytes larger than the plain one: `--compression-min-bytes` keeps
/// short frames (where that happens) plain.
pub fn compressed_frame(deflater: &mut Deflater, opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + payload.len() / 2 + 64);
    buf.resize(MAX_SERVER_HEADER, 0);
    deflater.compress(payload, &mut buf, true);
    let len = buf.len() - MAX_SERVER_HEADER;
    let start = MAX_SERVER_HEADER - header_len(len);
    wire::write_header_ext(&mut buf[start..], true, true, opcode, len, None);
    Bytes::from(buf).slice(start..)
}

/// A server frame queued to many connections (a room message), with its
/// compressed twin for those that negotiated permessage-deflate. The twin is
/// made at most once, by the first shard that has such a recipient, and
/// then shared like the plain frame: compress once, send to many.
#[derive(Clone)]
pub struct SharedFrame(Arc<SharedInner>);

struct SharedInner {
    plain: Bytes,
    opcode: OpCode,
    /// Where the payload starts in `plain`.
    payload_start: usize,
    compressed: OnceLock<Bytes>,
}

impl SharedFrame {
    /// Wraps an encoded, unfragmented server frame.
    pub fn new(plain: Bytes) -> SharedFrame {
        let (opcode, payload_start) = match wire::parse_server_frame(&plain, usize::MAX) {
            Ok(Parse::Frame(h)) => (h.opcode, h.payload_start),
            // Not a frame we made: never compressed (payload_start = len).
            _ => (OpCode::Binary, plain.len()),
        };
        SharedFrame(Arc::new(SharedInner {
            plain,
            opcode,
            payload_start,
            compressed: OnceLock::new(),
        }))
    }

    pub fn plain(&self) -> &Bytes {
        &self.0.plain
    }

    /// The opcode and payload of the plain frame.
    pub fn parts(&self) -> (OpCode, &[u8]) {
        (self.0.opcode, &self.0.plain[self.0.payload_start..])
    }

    /// The compressed frame for a connection that negotiated compression:
    /// `None` for a payload under `min_bytes` (or empty). `on_compress` runs
    /// only for the one compression made.
    pub fn compressed(
        &self,
        min_bytes: usize,
        deflater: &mut Deflater,
        on_compress: impl FnOnce(),
    ) -> Option<&Bytes> {
        let (opcode, payload) = self.parts();
        if payload.is_empty() || payload.len() < min_bytes || opcode.is_control() {
            return None;
        }
        Some(self.0.compressed.get_or_init(|| {
            on_compress();
            compressed_frame(deflater, opcode, payload)
        }))
    }
}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFrame")
            .field("len", &self.0.plain.len())
            .field("compressed", &self.0.compressed.get().map(Bytes::len))
            .finish()
    }
}

/// Encodes a masked client frame (tests).
pub fn client_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire::header_len(payload.len(), true) + payload.len());
    wire::encode_frame(&mut out, opcode, payload, Some(mask));
    out
}

/// Computes `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(key)
}

#[cfg(test)]
mod tests {
    //! The codec's own tests live in `wire/`; these cover the `Bytes` layer.
    use super::*;

    fn parse(f: &Bytes) -> FrameHeader {
        let mut copy = f.to_vec();
        let Ok(Parse::Frame(h)) = parse_server_frame(&mut copy, 1 << 20) else {
            panic!("frame")
        };
        assert_eq!(h.total_len(), f.len());
        h
    }

    #[test]
    fn frame_and_put_header_agree() {
        for len in [0usize, 125, 126, 65535, 65536, 100_000] {
            let payload = vec![b'x'; len];
            let f = frame(OpCode::Binary, &payload);
            assert_eq!(f.len(), header_len(len) + len);
            let mut hdr = BytesMut::new();
            put_header(&mut hdr, OpCode::Binary, len);
            assert_eq!(&f[..hdr.len()], &hdr[..]);
            let h = parse(&f);
            assert_eq!((h.opcode, h.payload_len), (OpCode::Binary, len));
        }
    }

    #[test]
    fn text_frame_with_writes_header_in_place() {
        for len in [5usize, 200, 70_000] {
            let f = text_frame_with(16, |b| b.extend(std::iter::repeat_n(b'z', len)));
            let h = parse(&f);
            assert_eq!((h.opcode, h.payload_len), (OpCode::Text, len));
        }
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        let f = close_frame(1013, "slow consumer");
        assert_eq!(&f[2..4], &1013u16.to_be_bytes());
        let h = parse(&f);
        assert_eq!(h.opcode, OpCode::Close);
        assert_eq!(&f[h.payload_start + 2..], b"slow consumer");
        let f = close_frame(close_code::GOING_AWAY, "bye");
        let h = parse(&f);
        assert_eq!(check_close_payload(&f[h.payload_start..]).unwrap(), 1001);
    }

    #[test]
    fn client_frames_parse_on_the_server() {
        let mut raw = client_frame(OpCode::Text, b"hello", [1, 2, 3, 4]);
        let Ok(Parse::Frame(h)) = parse_client_frame(&mut raw, 100) else {
            panic!("frame")
        };
        assert_eq!(&raw[h.payload_start..h.total_len()], b"hello");
    }

    #[test]
    fn shared_frame_compresses_once_and_inflates_back() {
        let json = format!("{{\"type\":\"message\",\"body\":\"{}\"}}", "ab".repeat(300));
        let shared = SharedFrame::new(frame(OpCode::Text, json.as_bytes()));
        let mut deflater = Deflater::new(15);
        let mut made = 0;
        let first = shared
            .compressed(256, &mut deflater, || made += 1)
            .cloned()
            .unwrap();
        let again = shared
            .compressed(256, &mut deflater, || made += 1)
            .cloned()
            .unwrap();
        assert_eq!(made, 1);
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same buffer is shared");
        let Ok(Parse::Frame(h)) = wire::parse_header_ext(&first, 1 << 20, wire::Role::Server, true)
        else {
            panic!("frame")
        };
        assert!(h.rsv1 && h.fin && h.opcode == OpCode::Text);
        let mut out = Vec::new();
        wire::deflate::Inflater::new()
            .inflate(h.payload(&first), &mut out, 1 << 20, true)
            .unwrap();
        assert_eq!(out, json.as_bytes());
        // Short frames stay plain and are never compressed.
        let short = SharedFrame::new(frame(OpCode::Text, b"{}"));
        assert!(short.compressed(256, &mut deflater, || made += 1).is_none());
        assert_eq!(made, 1);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
