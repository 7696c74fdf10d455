//! A raw WebSocket connection: a hand-written upgrade and hand-built masked
//! frames, to send what a correct client never would, or to write without
//! reading.

use corechat::ws::{self, OpCode, Parse};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The mask of every frame `Raw` builds.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A raw WebSocket connection (hand-written upgrade, hand-built frames).
pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub fn open(addr: &str, token: &str) -> Raw {
        Raw::open_with(addr, token, "").0
    }

    /// Opens with extra request header lines (each ending in `\r\n`);
    /// returns the 101 response head too.
    pub fn open_with(addr: &str, token: &str, extra_headers: &str) -> (Raw, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let head = raw.read_until(b"\r\n\r\n");
        let text = String::from_utf8_lossy(&head).to_string();
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(
            text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key: {text}"
        );
        (raw, text)
    }

    pub fn read_until(&mut self, pat: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(pat.len()).position(|w| w == pat) {
                let rest = self.buf.split_off(i + pat.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before {pat:?}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    pub fn send_json(&mut self, v: Value) {
        self.send(&ws::client_frame(
            OpCode::Text,
            v.to_string().as_bytes(),
            MASK,
        ));
    }

    /// A complete frame already buffered, if any.
    pub fn buffered_frame(&mut self) -> Option<(OpCode, Vec<u8>)> {
        let mut copy = self.buf.clone();
        if let Ok(Parse::Frame(h)) = ws::parse_server_frame(&mut copy, 1 << 26) {
            let payload = copy[h.payload_start..h.total_len()].to_vec();
            self.buf.drain(..h.total_len());
            return Some((h.opcode, payload));
        }
        None
    }

    /// Next frame from the server: (opcode, payload); None at EOF or error.
    pub fn frame(&mut self) -> Option<(OpCode, Vec<u8>)> {
        loop {
            if let Some(f) = self.buffered_frame() {
                return Some(f);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Next text frame as JSON; panics on a close or EOF.
    pub fn json(&mut self) -> Value {
        loop {
            match self.frame() {
                Some((OpCode::Text, p)) => return serde_json::from_slice(&p).expect("JSON"),
                Some((OpCode::Close, p)) => panic!("unexpected close: {p:?}"),
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
    }

    /// Sends a join and reads up to its `joined`.
    pub fn join(&mut self, room: &str) {
        self.send_json(json!({"type": "join", "room": room, "id": "j"}));
        loop {
            let v = self.json();
            if v["id"] == "j" {
                assert_eq!(v["type"], "joined", "{v}");
                return;
            }
        }
    }

    /// Reads frames until a close; returns its code.
    pub fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.frame() {
            if op == OpCode::Close {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}
