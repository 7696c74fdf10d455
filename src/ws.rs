//! The server's side of the WebSocket codec: a thin layer over
//! [`corechat_wire`] (see its top comment for why the codec is written by
//! hand) that encodes server frames into shareable [`Bytes`] and derives the
//! handshake's accept key.

use bytes::{BufMut, Bytes, BytesMut};
use corechat_wire as wire;

pub use wire::{
    apply_mask, check_close_payload, close_code, parse_client_frame, Assembled, Assembler,
    CloseError, FrameHeader, OpCode, Parse,
};

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
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
