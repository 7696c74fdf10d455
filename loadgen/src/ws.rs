//! The load generator's WebSocket client: the RFC 6455 codec of [`corechat_wire`] (masked client
//! frames out, unmasked server frames parsed in place from a caller-owned buffer, no allocation
//! per received frame), plus the HTTP upgrade request/response.

pub use corechat_wire::{
    close_code, encode_frame, parse_client_frame, parse_server_frame, OpCode, Parse,
};

/// The permessage-deflate offer of `--deflate`: neither end keeps a context, so a
/// connection holds no window between messages.
pub const DEFLATE_OFFER: &str = corechat_wire::extension::OFFER_NO_CONTEXT;

/// Parses one server frame, with RSV1 (a compressed message) allowed when the connection
/// negotiated permessage-deflate.
pub fn parse_server_frame_ext(
    buf: &[u8],
    max_payload: usize,
    rsv1_allowed: bool,
) -> Result<Parse, corechat_wire::CloseError> {
    corechat_wire::parse_header_ext(buf, max_payload, corechat_wire::Role::Server, rsv1_allowed)
}

/// The header of the frame every room message arrives in (final, uncompressed text, unmasked,
/// payload under 64 KiB), decoded inline: `(payload start, payload length)`. `None` for any
/// other frame, or too few bytes to tell: those go through [`parse_server_frame_ext`], which
/// accepts and rejects exactly as before (this shape is always valid for it).
#[inline(always)]
pub fn fin_text_header(buf: &[u8]) -> Option<(usize, usize)> {
    match buf {
        // 0x81: FIN + text, no RSV bits; a second byte below 126 has no mask bit
        [0x81, n, ..] if *n < 126 => Some((2, *n as usize)),
        [0x81, 126, hi, lo, ..] => Some((4, u16::from_be_bytes([*hi, *lo]) as usize)),
        _ => None,
    }
}

/// Largest server frame the client accepts.
pub const MAX_SERVER_FRAME: usize = 1 << 40;

/// Build the HTTP/1.1 upgrade request.
pub fn upgrade_request(out: &mut Vec<u8>, path_and_query: &str, host: &str, key_b64: &str) {
    upgrade_request_with(out, path_and_query, host, key_b64, None)
}

/// Build the HTTP/1.1 upgrade request, with a `Sec-WebSocket-Extensions` offer if given.
pub fn upgrade_request_with(
    out: &mut Vec<u8>,
    path_and_query: &str,
    host: &str,
    key_b64: &str,
    extensions: Option<&str>,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key_b64}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: corechat-loadgen\r\n"
    );
    if let Some(e) = extensions {
        let _ = write!(out, "Sec-WebSocket-Extensions: {e}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Result of looking for the end of the HTTP upgrade response.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Need more bytes.
    Incomplete,
    /// Headers complete: HTTP status and the header length (bytes after it are WebSocket
    /// frames); `deflate`: the server accepted permessage-deflate.
    Done {
        status: u16,
        header_len: usize,
        deflate: bool,
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
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut deflate = false;
    for line in head.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-extensions") {
                if corechat_wire::extension::parse_response(value.trim()).is_none() {
                    return Upgrade::Error("invalid sec-websocket-extensions");
                }
                deflate = true;
            }
        }
    }
    Upgrade::Done {
        status,
        header_len: end + 4,
        deflate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fin_text_header_agrees_with_the_full_parser() {
        // every first and second byte, with 16-bit lengths of several sizes: where the fast
        // decode answers, the full parser accepts the same frame at the same offsets
        let mut fast = 0;
        let mut buf = vec![b'x'; 4 + 70_000];
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                for ext in [[0u8, 0], [0, 126], [1, 0], [0xff, 0xff]] {
                    buf[..4].copy_from_slice(&[b0, b1, ext[0], ext[1]]);
                    let Some((start, len)) = fin_text_header(&buf) else {
                        continue;
                    };
                    fast += 1;
                    match parse_server_frame_ext(&buf, MAX_SERVER_FRAME, true) {
                        Ok(Parse::Frame(f)) => {
                            assert!(f.fin && !f.rsv1 && f.opcode == OpCode::Text, "{b0} {b1}");
                            assert_eq!((f.payload_start, f.payload_len), (start, len));
                        }
                        other => panic!("{b0:#x} {b1:#x}: {other:?}"),
                    }
                }
            }
        }
        assert_eq!(fast, 127 * 4); // 0x81 with lengths 0..=125 and 126 (16-bit)
                                   // too few bytes to know the length: left to the full parser (which waits)
        assert_eq!(fin_text_header(&[0x81]), None);
        assert_eq!(fin_text_header(&[0x81, 126, 1]), None);
        assert_eq!(fin_text_header(&[0x81, 127, 0, 0, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(fin_text_header(&[0x01, 5]), None); // not final
        assert_eq!(fin_text_header(&[0xc1, 5]), None); // compressed
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
            Upgrade::Done {
                status, header_len, ..
            } => {
                assert_eq!(status, 101);
                assert_eq!(&resp[header_len..], b"\x81\x02hi");
            }
            other => panic!("{other:?}"),
        }
        let zipped = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n";
        assert!(matches!(
            parse_upgrade_response(zipped),
            Upgrade::Done { deflate: true, .. }
        ));
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: x-foo\r\n\r\n";
        assert!(matches!(parse_upgrade_response(bad), Upgrade::Error(_)));
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
