//! A lean WebSocket (RFC 6455) client codec: masked client frames out, unmasked server frames
//! parsed in place from a caller-owned buffer (no allocation per received frame), plus the HTTP
//! upgrade request/response.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A frame header parsed from the front of a buffer; the payload is
/// `buf[header_len .. header_len + payload_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
}

impl Frame {
    #[inline]
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
    #[inline]
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.header_len..self.header_len + self.payload_len]
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Frame(Frame),
    /// Not enough bytes yet; `need` is the total frame length if the header is complete.
    Incomplete {
        need: Option<usize>,
    },
    Error(&'static str),
}

/// Parse one server-to-client frame header at the start of `buf`.
#[inline]
pub fn parse_frame(buf: &[u8]) -> Parsed {
    if buf.len() < 2 {
        return Parsed::Incomplete { need: None };
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Parsed::Error("reserved bits set");
    }
    if b1 & 0x80 != 0 {
        return Parsed::Error("masked server frame");
    }
    let opcode = b0 & 0x0f;
    let fin = b0 & 0x80 != 0;
    let (payload_len, header_len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Parsed::Incomplete { need: None };
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Parsed::Incomplete { need: None };
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n > (1 << 40) {
                return Parsed::Error("frame too large");
            }
            (n as usize, 10)
        }
        n => (n as usize, 2),
    };
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || payload_len > 125 {
                return Parsed::Error("bad control frame");
            }
        }
        _ => return Parsed::Error("reserved opcode"),
    }
    let f = Frame {
        fin,
        opcode,
        header_len,
        payload_len,
    };
    if buf.len() < f.total_len() {
        return Parsed::Incomplete {
            need: Some(f.total_len()),
        };
    }
    Parsed::Frame(f)
}

/// XOR `buf` with the 4-byte masking key (in place), 8 bytes at a time.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_ne_bytes(w) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Append one complete, masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let n = payload.len();
    out.reserve(n + 14);
    out.push(0x80 | (opcode & 0x0f));
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Build the HTTP/1.1 upgrade request.
pub fn upgrade_request(out: &mut Vec<u8>, path_and_query: &str, host: &str, key_b64: &str) {
    use std::io::Write;
    let _ = write!(
        out,
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key_b64}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: corechat-loadgen\r\n\r\n"
    );
}

/// Result of looking for the end of the HTTP upgrade response.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Need more bytes.
    Incomplete,
    /// Headers complete: HTTP status and the header length (bytes after it are WebSocket frames).
    Done {
        status: u16,
        header_len: usize,
    },
    Error(&'static str),
}

pub fn parse_upgrade_response(buf: &[u8]) -> Upgrade {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 16384 {
            return Upgrade::Error("upgrade response headers too long");
        }
        return Upgrade::Incomplete;
    };
    // "HTTP/1.1 101 Switching Protocols"
    let line_end = memchr::memchr(b'\r', buf).unwrap_or(end);
    let line = &buf[..line_end];
    if !line.starts_with(b"HTTP/1.") || line.len() < 12 {
        return Upgrade::Error("not an HTTP response");
    }
    let code = &line[9..12];
    if !code.iter().all(|c| c.is_ascii_digit()) {
        return Upgrade::Error("bad HTTP status");
    }
    let status = code.iter().fold(0u16, |a, &c| a * 10 + (c - b'0') as u16);
    Upgrade::Done {
        status,
        header_len: end + 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(n as u8);
        } else if n <= 0xffff {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn encode_masks_and_roundtrips() {
        for n in [
            0usize, 1, 5, 8, 13, 125, 126, 127, 1000, 65535, 65536, 70000,
        ] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let mask = [0x37, 0xfa, 0x21, 0x3d];
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload, mask);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0, "client frames are masked");
            let (len, hl) = match out[1] & 0x7f {
                126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                l => (l as usize, 2),
            };
            assert_eq!(len, n);
            assert_eq!(&out[hl..hl + 4], &mask);
            let mut body = out[hl + 4..].to_vec();
            assert_eq!(body.len(), n);
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn rfc6455_masked_hello_example() {
        // RFC 6455 5.7: a single-frame masked text message "Hello"
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn parse_many_frames_in_one_buffer() {
        let mut buf = Vec::new();
        buf.extend(server_frame(OP_TEXT, true, b"{\"a\":1}"));
        buf.extend(server_frame(OP_TEXT, true, &[b'x'; 300]));
        buf.extend(server_frame(OP_PING, true, b"hi"));
        buf.extend(server_frame(OP_BINARY, true, &vec![1u8; 70000]));
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Parsed::Frame(f) = parse_frame(&buf[pos..]) {
            seen.push((f.opcode, f.payload_len));
            pos += f.total_len();
        }
        assert_eq!(pos, buf.len());
        assert_eq!(
            seen,
            vec![
                (OP_TEXT, 7),
                (OP_TEXT, 300),
                (OP_PING, 2),
                (OP_BINARY, 70000)
            ]
        );
        let f = match parse_frame(&buf) {
            Parsed::Frame(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(f.payload(&buf), b"{\"a\":1}");
    }

    #[test]
    fn parse_incomplete_at_every_split() {
        let frame = server_frame(OP_TEXT, true, &[b'y'; 200]);
        for cut in 0..frame.len() {
            match parse_frame(&frame[..cut]) {
                Parsed::Incomplete { need } => {
                    if cut >= 4 {
                        assert_eq!(need, Some(frame.len()));
                    }
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert!(matches!(parse_frame(&frame), Parsed::Frame(_)));
    }

    #[test]
    fn parse_rejects_bad_frames() {
        assert_eq!(
            parse_frame(&[0x81 | 0x40, 0x00]),
            Parsed::Error("reserved bits set")
        );
        assert_eq!(
            parse_frame(&[0x81, 0x80, 0, 0, 0, 0]),
            Parsed::Error("masked server frame")
        );
        assert_eq!(parse_frame(&[0x83, 0x00]), Parsed::Error("reserved opcode"));
        assert_eq!(
            parse_frame(&[0x09, 0x00]),
            Parsed::Error("bad control frame")
        );
        let mut big_ping = vec![0x89, 126, 0, 200];
        big_ping.extend(vec![0; 200]);
        assert_eq!(parse_frame(&big_ping), Parsed::Error("bad control frame"));
    }

    #[test]
    fn fragmented_frames_parse_with_fin_flag() {
        let mut buf = server_frame(OP_TEXT, false, b"hel");
        buf.extend(server_frame(OP_CONT, true, b"lo"));
        let Parsed::Frame(a) = parse_frame(&buf) else {
            panic!()
        };
        assert!(!a.fin);
        assert_eq!(a.opcode, OP_TEXT);
        let Parsed::Frame(b) = parse_frame(&buf[a.total_len()..]) else {
            panic!()
        };
        assert!(b.fin);
        assert_eq!(b.opcode, OP_CONT);
    }

    #[test]
    fn upgrade_request_and_response() {
        let mut out = Vec::new();
        upgrade_request(
            &mut out,
            "/ws?token=abc",
            "127.0.0.1:8080",
            "dGhlIHNhbXBsZSBub25jZQ==",
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("GET /ws?token=abc HTTP/1.1\r\n"));
        assert!(s.contains("Upgrade: websocket\r\n"));
        assert!(s.ends_with("\r\n\r\n"));

        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
        assert_eq!(parse_upgrade_response(&resp[..20]), Upgrade::Incomplete);
        match parse_upgrade_response(resp) {
            Upgrade::Done { status, header_len } => {
                assert_eq!(status, 101);
                assert_eq!(&resp[header_len..], b"\x81\x02hi");
            }
            other => panic!("{other:?}"),
        }
        let denied = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}";
        assert!(matches!(
            parse_upgrade_response(denied),
            Upgrade::Done { status: 401, .. }
        ));
        assert!(matches!(
            parse_upgrade_response(b"garbage\r\n\r\n"),
            Upgrade::Error(_)
        ));
    }
}
