//! permessage-deflate (RFC 7692) through real sockets against the real
//! binary: negotiation, room frames compressed once and shared, plain
//! frames for plain clients in the same room, compressed client messages,
//! and the decompression bomb (close 1009, memory bounded).

mod common;
use common::raw::{Raw, MASK};
use common::*;
use corechat::ws::{self, OpCode};
use corechat_wire::deflate::{Deflater, Inflater};
use corechat_wire::extension::{self, OFFER_NO_CONTEXT};
use corechat_wire::{parse_header_ext, Parse, Role};
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A raw client that may have negotiated permessage-deflate; it decodes
/// what the server sends and remembers whether each frame was compressed.
struct Deflating {
    raw: Raw,
    /// The server's answer, when it accepted an offer.
    params: Option<extension::Params>,
    inflater: Inflater,
}

/// One frame from the server, decompressed.
struct Got {
    opcode: OpCode,
    compressed: bool,
    payload: Vec<u8>,
}

impl Deflating {
    fn open(srv: &Server, user: &str, offer: Option<&str>) -> (Deflating, Value) {
        let header = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let (raw, head) = Raw::open_with(&srv.addr, &token(user), &header);
        let answer = head
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-extensions: "));
        let params = answer.map(|a| extension::parse_response(a).expect("valid response"));
        let mut c = Deflating {
            raw,
            params,
            inflater: Inflater::new(),
        };
        let welcome = c.json();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (c, welcome)
    }

    /// The shard a connection landed on, from its welcome's session id.
    fn shard(welcome: &Value) -> usize {
        let session = welcome["session"].as_str().unwrap();
        session.rsplit('-').nth(1).unwrap().parse().unwrap()
    }

    fn frame(&mut self) -> Option<Got> {
        loop {
            let rsv1_ok = self.params.is_some();
            match parse_header_ext(&self.raw.buf, 1 << 26, Role::Server, rsv1_ok) {
                Ok(Parse::Frame(h)) => {
                    let body = h.payload(&self.raw.buf).to_vec();
                    self.raw.buf.drain(..h.total_len());
                    let payload = if h.rsv1 {
                        let reset = self.params.unwrap().server_no_context_takeover;
                        let mut out = Vec::new();
                        self.inflater
                            .inflate(&body, &mut out, 1 << 26, reset)
                            .expect("server frame inflates");
                        out
                    } else {
                        body
                    };
                    return Some(Got {
                        opcode: h.opcode,
                        compressed: h.rsv1,
                        payload,
                    });
                }
                Ok(Parse::Incomplete { .. }) => {}
                Err(e) => panic!("bad server frame: {e}"),
            }
            let mut chunk = [0u8; 65536];
            match self.raw.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.raw.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn got_json(&mut self) -> (Value, bool) {
        loop {
            let g = self.frame().expect("connection ended");
            match g.opcode {
                OpCode::Text => return (serde_json::from_slice(&g.payload).unwrap(), g.compressed),
                OpCode::Close => panic!("unexpected close: {:?}", g.payload),
                _ => {}
            }
        }
    }

    fn json(&mut self) -> Value {
        self.got_json().0
    }

    /// Sends a request, compressed when `compressor` is given.
    fn send(&mut self, v: &Value, compressor: Option<(&mut Deflater, bool)>) {
        let text = v.to_string();
        let frame = match compressor {
            None => ws::client_frame(OpCode::Text, text.as_bytes(), MASK),
            Some((d, reset)) => compressed_client_frame(d, text.as_bytes(), reset),
        };
        self.raw.send(&frame);
    }

    fn join(&mut self, room: &str) {
        self.send(&json!({"type": "join", "room": room, "id": "j"}), None);
        loop {
            let v = self.json();
            if v["id"] == "j" {
                assert_eq!(v["type"], "joined", "{v}");
                return;
            }
        }
    }

    /// The next `message` of `room`, and whether it came compressed.
    fn message(&mut self, room: &str) -> (Value, bool) {
        loop {
            let (v, compressed) = self.got_json();
            if v["type"] == "message" && v["room"] == room {
                return (v, compressed);
            }
        }
    }

    fn close_code(&mut self) -> Option<u16> {
        while let Some(g) = self.frame() {
            if g.opcode == OpCode::Close {
                return Some(u16::from_be_bytes([g.payload[0], g.payload[1]]));
            }
        }
        None
    }
}

/// A masked text frame with RSV1 and a compressed payload.
fn compressed_client_frame(d: &mut Deflater, payload: &[u8], reset: bool) -> Vec<u8> {
    let mut z = Vec::new();
    d.compress(payload, &mut z, reset);
    raw_compressed_frame(&z, true)
}

/// A masked frame with RSV1 set around an already compressed payload.
fn raw_compressed_frame(z: &[u8], fin: bool) -> Vec<u8> {
    let mut out = vec![0u8; corechat_wire::MAX_HEADER_LEN];
    let n = corechat_wire::write_header_ext(&mut out, fin, true, OpCode::Text, z.len(), Some(MASK));
    out.truncate(n);
    let start = out.len();
    out.extend_from_slice(z);
    ws::apply_mask(&mut out[start..], MASK);
    out
}

fn publish(c: &mut Deflating, room: &str, body: &str, id: &str) {
    c.send(
        &json!({"type": "publish", "room": room, "body": body, "id": id}),
        None,
    );
}

#[test]
fn deflate_and_plain_members_share_one_compression_per_message() {
    let srv = Server::start(&["--shards", "2"]);
    let room = "zipped";
    // Compressing members on both shards, and plain members next to them.
    let mut zipped = Vec::new();
    let mut shards_seen = [false; 2];
    let mut i = 0;
    while !(shards_seen[0] && shards_seen[1]) || zipped.len() < 4 {
        assert!(i < 200, "connections never reached both shards");
        let (mut c, welcome) = Deflating::open(&srv, &format!("z{i}"), Some("permessage-deflate"));
        let p = c.params.expect("server accepted the offer");
        // By default the server requires both sides to drop their context.
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        shards_seen[Deflating::shard(&welcome)] = true;
        c.join(room);
        zipped.push(c);
        i += 1;
    }
    let mut plain: Vec<Deflating> = (0..3)
        .map(|i| {
            let (mut c, _) = Deflating::open(&srv, &format!("p{i}"), None);
            assert!(c.params.is_none());
            c.join(room);
            c
        })
        .collect();
    let (mut publisher, _) = Deflating::open(&srv, "pub", None);
    publisher.join(room);
    let before = srv.metric("corechat_frames_compressed_total", None);

    const N: usize = 5;
    for k in 0..N {
        let body = format!("message {k}: {}", "the quick brown fox jumps ".repeat(30));
        publish(&mut publisher, room, &body, &format!("m{k}"));
        let mut plain_json = None;
        for c in &mut plain {
            let (v, compressed) = c.message(room);
            assert!(!compressed, "a plain client got a compressed frame");
            assert_eq!(v["body"], body);
            plain_json = Some(v);
        }
        for c in &mut zipped {
            let (v, compressed) = c.message(room);
            assert!(compressed, "a {}-byte message went plain", body.len());
            // The same JSON as the plain frame, byte for byte once inflated.
            assert_eq!(Some(&v), plain_json.as_ref());
        }
    }
    // Short messages (under --compression-min-bytes) are never compressed.
    publish(&mut publisher, room, "short", "s");
    for c in &mut zipped {
        let (v, compressed) = c.message(room);
        assert!(!compressed);
        assert_eq!(v["body"], "short");
    }
    let made = srv.metric("corechat_frames_compressed_total", None) - before;
    assert_eq!(
        made,
        N as f64,
        "one compression per room message, for {} compressing members on 2 shards",
        zipped.len()
    );
}

#[test]
fn compressed_client_messages_are_inflated_with_and_without_context() {
    // By default a bare offer is answered `client_no_context_takeover`;
    // with --compression-client-context on the client keeps its window.
    for keep_context in [false, true] {
        let flag = if keep_context {
            "--compression-client-context=on"
        } else {
            "--compression-client-context=off"
        };
        let srv = Server::start(&[flag]);
        inflate_with_and_without_context(&srv, keep_context);
    }
}

fn inflate_with_and_without_context(srv: &Server, keep_context: bool) {
    let room = "inbound";
    let (mut reader, _) = Deflating::open(srv, "reader", None);
    reader.join(room);
    // Without context takeover: the shard's shared decoder.
    let (mut a, _) = Deflating::open(srv, "a", Some(OFFER_NO_CONTEXT));
    assert!(a.params.unwrap().client_no_context_takeover);
    // A bare offer: the connection keeps its own window only if allowed.
    let (mut b, _) = Deflating::open(srv, "b", Some("permessage-deflate"));
    let b_resets = b.params.unwrap().client_no_context_takeover;
    assert_eq!(b_resets, !keep_context);
    a.join(room);
    b.join(room);
    let mut da = Deflater::new(15);
    let mut db = Deflater::new(15);
    for k in 0..4 {
        for (c, d, reset, who) in [
            (&mut a, &mut da, true, "a"),
            (&mut b, &mut db, b_resets, "b"),
        ] {
            let body = format!("{who} says hello hello hello {k}");
            let req = json!({"type": "publish", "room": room, "body": body, "id": "p"});
            c.send(&req, Some((d, reset)));
            let (v, _) = reader.message(room);
            assert_eq!(v["body"], body);
        }
    }
    // RSV1 on a connection that did not negotiate: protocol error.
    let mut plain = Raw::open(&srv.addr, &token("plain"));
    let _welcome = plain.json();
    plain.send(&compressed_client_frame(
        &mut Deflater::new(15),
        b"{}",
        true,
    ));
    assert_eq!(plain.close_code(), Some(1002));
    // A compressed payload that is not DEFLATE: 1007.
    let (mut bad, _) = Deflating::open(srv, "bad", Some("permessage-deflate"));
    bad.raw
        .send(&raw_compressed_frame(&[0xff, 0xff, 0xff, 0xff], true));
    assert_eq!(bad.close_code(), Some(1007));
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
fn decompression_bomb_closes_1009_and_memory_stays_bounded() {
    // Clients that keep their context too (each gets a window of its own).
    let srv = Server::start(&["--shards", "2", "--compression-client-context=on"]);
    // 60 KiB of compressed zeros expand to ~60 MiB: a thousand times the
    // 64 KiB --max-frame-bytes.
    let mut bomb = Vec::new();
    Deflater::new(15).compress(&vec![0u8; 60 << 20], &mut bomb, true);
    assert!(bomb.len() < 65_536, "{}", bomb.len());
    let pid = srv.pid();
    let start = rss(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(start));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // Whole frames and fragmented messages, with and without context
    // takeover, several at once.
    let attackers: Vec<_> = (0..8)
        .map(|i| {
            let addr_bomb = bomb.clone();
            let tok = token(&format!("bomber{i}"));
            let addr = srv.addr.clone();
            thread::spawn(move || {
                for round in 0..5 {
                    let offer = if i % 2 == 0 {
                        OFFER_NO_CONTEXT
                    } else {
                        "permessage-deflate"
                    };
                    let header = format!("Sec-WebSocket-Extensions: {offer}\r\n");
                    let (mut raw, head) = Raw::open_with(&addr, &tok, &header);
                    assert!(head.contains("permessage-deflate"), "{head}");
                    if round % 2 == 0 {
                        raw.send(&raw_compressed_frame(&addr_bomb, true));
                    } else {
                        // The same bomb in two fragments.
                        let (x, y) = addr_bomb.split_at(addr_bomb.len() / 2);
                        raw.send(&raw_compressed_frame(x, false));
                        let mut cont = ws::client_frame(OpCode::Continuation, y, MASK);
                        cont[0] |= 0x80;
                        raw.send(&cont);
                    }
                    assert_eq!(raw.close_code(), Some(1009), "bomber {i} round {round}");
                }
            })
        })
        .collect();
    for a in attackers {
        a.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(start);
    println!(
        "bomb: RSS {:.1} MiB before, peak growth {:.1} MiB over 40 bombs of {} bytes",
        start as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        bomb.len()
    );
    // Each inflate stops at 64 KiB + 1; what grows is per-connection input
    // buffers and decoder state, far under one bomb's 60 MiB.
    assert!(growth < 16 << 20, "RSS grew {growth} bytes");
    let made = srv.metric("corechat_disconnects_total", None);
    assert!(made > 0.0);
    // The server still serves.
    let (mut ok, _) = Deflating::open(&srv, "after", Some("permessage-deflate"));
    ok.join("still-here");
}

#[test]
fn malformed_or_declined_offers_leave_a_plain_working_connection() {
    let srv = Server::start(&[]);
    for offer in [
        "permessage-deflate; server_max_window_bits=99",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; no_such_param",
        "permessage-deflate; server_no_context_takeover=yes",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        ";;;,,,=",
        "x-webkit-deflate-frame",
        "\"permessage-deflate\"",
    ] {
        let (mut c, _) = Deflating::open(&srv, "odd", Some(offer));
        assert!(c.params.is_none(), "{offer:?} was accepted");
        c.join("plain-room");
    }
    // A bad offer followed by a good one: the good one is taken.
    let (c, _) = Deflating::open(
        &srv,
        "two",
        Some("permessage-deflate; bogus, permessage-deflate; client_no_context_takeover"),
    );
    assert!(c.params.unwrap().client_no_context_takeover);
    // A window limit the client asks of the server is honoured and echoed.
    let (mut w, _) = Deflating::open(
        &srv,
        "window",
        Some("permessage-deflate; server_max_window_bits=10"),
    );
    assert_eq!(w.params.unwrap().server_max_window_bits, 10);
    w.join("windowed");
    let (mut p, _) = Deflating::open(&srv, "wpub", None);
    p.join("windowed");
    let body = "windowed ".repeat(100);
    publish(&mut p, "windowed", &body, "w");
    let (v, compressed) = w.message("windowed");
    assert!(compressed);
    assert_eq!(v["body"], body);

    // --compression off: offers are ignored.
    let off = Server::start(&["--compression=off"]);
    let (mut c, _) = Deflating::open(&off, "offer", Some("permessage-deflate"));
    assert!(c.params.is_none());
    c.join("r");
}

/// Server RSS growth per connection for `n` clients that offer a bare
/// `permessage-deflate` (what browsers send), each send one compressed
/// message and then idle.
fn idle_growth_per_conn(extra: &[&str], n: usize) -> f64 {
    let srv = Server::start(extra);
    // Warm the shard (buffers, the shared decoder) before the baseline.
    let (mut first, _) = Deflating::open(&srv, "warm", Some("permessage-deflate"));
    first.join("warm");
    thread::sleep(Duration::from_millis(200));
    let before = rss(srv.pid());
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let (mut c, _) = Deflating::open(&srv, &format!("idle{i}"), Some("permessage-deflate"));
        let reset = c.params.unwrap().client_no_context_takeover;
        let join = json!({"type": "join", "room": format!("r{}", i % 20), "id": "j"});
        // Compressed below --compression-min-bytes is fine: the client
        // chooses what it compresses.
        c.send(&join, Some((&mut Deflater::new(15), reset)));
        conns.push(c);
    }
    for c in &mut conns {
        let v = c.json();
        assert_eq!(v["type"], "joined", "{v}");
    }
    thread::sleep(Duration::from_millis(200));
    let after = rss(srv.pid());
    after.saturating_sub(before) as f64 / n as f64
}

#[test]
fn browser_offers_cost_no_inflate_window_per_idle_connection() {
    const N: usize = 400;
    let open = ["--max-upgrades-per-ip-per-sec", "100000"];
    let told_to_reset = idle_growth_per_conn(&open, N);
    let keeping = idle_growth_per_conn(
        &[&open[..], &["--compression-client-context=on"]].concat(),
        N,
    );
    println!(
        "idle RSS per connection after one compressed message: {:.2} KiB default, {:.2} KiB with client context",
        told_to_reset / 1024.0,
        keeping / 1024.0
    );
    // A kept window is 32 KiB of inflate state; the default holds none.
    assert!(
        told_to_reset < 8.0 * 1024.0,
        "{told_to_reset} bytes per connection"
    );
    assert!(
        keeping > told_to_reset + 8.0 * 1024.0,
        "{keeping} vs {told_to_reset}"
    );
}
