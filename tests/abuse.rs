//! Hostile clients against the real binary: one test per attack, each
//! measuring the server's resident memory (VmRSS from `/proc/<pid>/status`)
//! before the attack and, sampled every few milliseconds, during it, and
//! asserting the growth stays under a stated bound. Every test also checks
//! that a well-behaved client is still served and that what was acked is
//! found again.
//!
//! The tests run one at a time (a lock in this file): several servers
//! fighting for two cores would only make the timing bounds noisy, and the
//! numbers each test prints (run with `--nocapture`) harder to read.

mod common;
use common::chat::*;
use common::raw::{Raw, MASK};
use common::*;
use corechat::ws::{self, OpCode};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Samples a process's RSS every 5 ms on a thread and keeps the peak.
struct Sampler {
    pid: u32,
    start: u64,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let start = rss(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(start));
        let handle = {
            let (stop, peak) = (stop.clone(), peak.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                        if let Some(kib) = s
                            .lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|v| v.parse::<u64>().ok())
                        {
                            peak.fetch_max(kib * 1024, Ordering::Relaxed);
                        }
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Sampler {
            pid,
            start,
            stop,
            peak,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns (start, peak).
    fn finish(mut self) -> (u64, u64) {
        self.peak.fetch_max(rss(self.pid), Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (self.start, self.peak.load(Ordering::Relaxed))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Prints the measured numbers and checks the growth bound.
fn check_growth(test: &str, start: u64, peak: u64, end: u64, bound_mib: u64) {
    let growth = peak.saturating_sub(start);
    eprintln!(
        "RSS {test}: start {:.1} MiB, peak {:.1} MiB (+{:.1}), end {:.1} MiB; bound +{bound_mib} MiB",
        mib(start),
        mib(peak),
        mib(growth),
        mib(end)
    );
    assert!(
        growth < bound_mib * MIB,
        "{test}: RSS grew by {:.1} MiB (start {:.1}, peak {:.1}), bound {bound_mib} MiB",
        mib(growth),
        mib(start),
        mib(peak)
    );
}

/// Writes as much of `data[*off..]` as the socket takes now (non-blocking
/// socket); returns false once the peer is gone.
fn write_some(s: &mut TcpStream, data: &[u8], off: &mut usize) -> bool {
    while *off < data.len() {
        match s.write(&data[*off..]) {
            Ok(0) => return false,
            Ok(n) => *off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

/// Keeps writing `data` to non-reading sockets for `dur`, never reading.
/// Returns the bytes each socket took.
fn push_for(socks: &mut [(TcpStream, usize)], data: &[u8], dur: Duration) {
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        let mut all = true;
        for (s, off) in socks.iter_mut() {
            if *off < data.len() && write_some(s, data, off) {
                all &= *off >= data.len();
            }
        }
        if all {
            // Everything is written; keep the sockets open (and unread)
            // until the deadline, so the sampler sees the server's answer.
            thread::sleep(Duration::from_millis(20));
        } else {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A well-behaved client, served within a few seconds: ping/pong, then a
/// publish whose ack is followed by finding the message with `history`.
/// Returns how long the round trips took.
fn assert_served(srv: &Server, user: &str, room: &str) -> Duration {
    let t0 = Instant::now();
    let (mut c, _) = connect(srv, user);
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_alive(&mut c);
    join_with(&mut c, room, None);
    let tag = format!("probe-{}", t0.elapsed().as_nanos());
    let ack = request(
        &mut c,
        json!({"type": "publish", "room": room, "body": {"probe": tag}}),
        "probe",
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    let seq = ack["seq"].as_u64().unwrap();
    let h = request(
        &mut c,
        json!({"type": "history", "room": room, "after": seq - 1, "limit": 1}),
        "probe-h",
    );
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["messages"][0]["seq"], seq, "{h}");
    assert_eq!(
        h["messages"][0]["body"]["probe"],
        tag.as_str(),
        "acked but lost: {h}"
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "a well-behaved client waited {took:?}"
    );
    c.close();
    took
}

/// Publishes `n` messages of about `size` bytes to `room` (already joined)
/// with up to 16 in flight; returns the acked seqs in order of `i`.
fn publish_big(c: &mut Client, room: &str, n: usize, size: usize) -> Vec<u64> {
    let pad = "x".repeat(size);
    let mut acks = vec![0u64; n];
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < n {
        while sent < n && sent - acked < 16 {
            c.send_json(json!({
                "type": "publish", "room": room, "id": sent,
                "body": {"i": sent, "pad": pad},
            }));
            sent += 1;
        }
        let v = c.recv_json();
        match v["type"].as_str() {
            Some("ack") => {
                let i = v["id"].as_u64().unwrap() as usize;
                acks[i] = v["seq"].as_u64().unwrap();
                acked += 1;
            }
            Some("error") => panic!("publish failed: {v}"),
            _ => {}
        }
    }
    acks
}

/// Attack 1: Pipelined HTTP from clients that never read.
#[test]
fn pipelined_http_from_non_readers() {
    let _g = serial();
    let srv = Server::start(&[]);
    let pid = srv.pid();
    let (status, body) = srv.http("GET", "/corechat.js", &[], "");
    assert_eq!(status, 200);
    assert!(body.len() > 1000);
    thread::sleep(Duration::from_millis(300));
    let sampler = Sampler::start(pid);
    let one = "GET /corechat.js HTTP/1.1\r\nHost: x\r\n\r\n";
    let data = one.repeat(6000).into_bytes();
    let mut socks: Vec<(TcpStream, usize)> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(&srv.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, 0)
        })
        .collect();
    push_for(&mut socks, &data, Duration::from_millis(1500));
    let during = assert_served(&srv, "good", "calm");
    push_for(&mut socks, &data, Duration::from_millis(1500));
    let (start, peak) = sampler.finish();
    let written: Vec<usize> = socks.iter().map(|(_, o)| *o / one.len()).collect();
    eprintln!("pipelined http: requests written per connection {written:?}; good client served in {during:?}");
    drop(socks);
    thread::sleep(Duration::from_millis(500));
    let after = assert_served(&srv, "good2", "calm");
    let end = rss(pid);
    eprintln!("pipelined http: good client after the attack served in {after:?}");
    // Before the fix: 13 MB -> 630 MB (every reply of 18,000 requests, 42 KB
    // each, queued). One request at a time with the reads paused while a
    // reply is owed leaves at most one reply (~42 KB) and the socket buffers
    // per connection: a few MB; 50 MB is far above that and far below the bug.
    check_growth("pipelined http", start, peak, end, 50);
}

/// A raw client joined to a room full of 15 KB messages writes 4,000
/// requests in one go and never reads.
fn request_flood(what: &str, req: impl Fn(usize) -> Value) {
    let _g = serial();
    let srv = Server::start(&["--rate-per-sec", "1000", "--burst", "1000"]);
    let pid = srv.pid();
    let (mut p, _) = connect(&srv, "publisher");
    join_with(&mut p, "big", None);
    let acks = publish_big(&mut p, "big", 100, 15_000);
    assert_eq!(acks, (1..=100).collect::<Vec<u64>>());
    let mut raw = Raw::open(&srv.addr, &token("flooder"));
    assert_eq!(raw.json()["type"], "welcome");
    raw.join("big");
    let mut data = Vec::new();
    for i in 0..4000 {
        let mut r = req(i);
        r["id"] = json!(i);
        data.extend(ws::client_frame(
            OpCode::Text,
            r.to_string().as_bytes(),
            MASK,
        ));
    }
    thread::sleep(Duration::from_millis(300));
    let sampler = Sampler::start(pid);
    raw.s.set_nonblocking(true).unwrap();
    let mut socks = vec![(raw.s.try_clone().unwrap(), 0usize)];
    push_for(&mut socks, &data, Duration::from_millis(1500));
    let during = assert_served(&srv, "good", "calm");
    // The publisher of the flooded room is served too, and its ack holds.
    let ack = request(
        &mut p,
        json!({"type": "publish", "room": "big", "body": "after"}),
        "after",
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 101);
    push_for(&mut socks, &data, Duration::from_millis(1500));
    let (start, peak) = sampler.finish();
    eprintln!(
        "{what} flood: {} of {} request bytes written; good client served in {during:?}",
        socks[0].1,
        data.len()
    );
    drop(socks);
    drop(raw);
    thread::sleep(Duration::from_millis(500));
    assert_served(&srv, "good2", "calm");
    let (all, _) = full_history(&srv, "big");
    assert_eq!(all.len(), 101, "acked messages lost");
    let end = rss(pid);
    // Before the fix a history flood took +866 MiB (every 1.5 MB reply
    // prepared and queued). With reads paused while replies are owed, the
    // server holds at most a few replies for this connection (16 being
    // prepared at most, each <= 1.5 MB) plus socket buffers: tens of MB at
    // worst, under 100 MB.
    check_growth(&format!("{what} flood"), start, peak, end, 100);
}

/// Attack 2a: `history` (limit 100 of 15 KB messages) flood from a non-reader.
#[test]
fn history_flood_from_non_reader() {
    request_flood(
        "history",
        |_| json!({"type": "history", "room": "big", "limit": 100}),
    );
}

/// Attack 2b: `presence` flood from a non-reader.
#[test]
fn presence_flood_from_non_reader() {
    request_flood("presence", |_| json!({"type": "presence", "room": "big"}));
}

/// Attack 2c: `rooms` flood from a non-reader.
#[test]
fn rooms_flood_from_non_reader() {
    request_flood("rooms", |_| json!({"type": "rooms"}));
}

/// Attack 3: A backlog many times `max_outbound_bytes` is replayed to a reader in
/// full, in order, then continues live, with no 1013.
fn resume_big_backlog(test: &str, extra: &[&str]) {
    let _g = serial();
    let mut flags = vec!["--max-outbound-bytes", "262144"];
    flags.extend(FAST);
    flags.extend(extra);
    let srv = Server::start(&flags);
    let pid = srv.pid();
    let (mut p, _) = connect(&srv, "publisher");
    join_with(&mut p, "backlog", None);
    // 600 x 15 KB = 9 MB, 34 times the limit.
    let acks = publish_big(&mut p, "backlog", 600, 15_000);
    assert_eq!(acks, (1..=600).collect::<Vec<u64>>());
    thread::sleep(Duration::from_millis(300));
    let sampler = Sampler::start(pid);
    let t0 = Instant::now();
    let (mut r, _) = connect(&srv, "reader");
    let j = join_with(&mut r, "backlog", Some(0));
    assert_eq!(j["seq"], 600, "{j}");
    assert_eq!(j["recovered"], true, "{j}");
    for want in 1..=600u64 {
        let m = next_message(&mut r, "backlog");
        assert_eq!(m["seq"], want, "gap or disorder in the replay");
        assert_eq!(m["body"]["i"], want - 1);
    }
    let replay = t0.elapsed();
    let ack = request(
        &mut p,
        json!({"type": "publish", "room": "backlog", "body": {"i": 600, "live": true}}),
        "live",
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 601);
    let live = next_message(&mut r, "backlog");
    assert_eq!(live["seq"], 601, "{live}");
    assert_eq!(live["body"]["live"], true);
    assert_alive(&mut r);
    let (start, peak) = sampler.finish();
    assert_eq!(disconnects(&srv, "slow_consumer"), 0.0);
    assert_served(&srv, "good", "calm");
    let end = rss(pid);
    eprintln!("{test}: 600 x 15 KB replayed in {replay:?}");
    // The replay is paced by pages as the reader drains: the server holds one
    // page (at most 100 x 15 KB = 1.5 MB) and up to the 256 KiB outbound
    // limit for it at a time, not the 9 MB backlog. 40 MB leaves room for
    // allocator slack of a debug build and is below 4 copies of the backlog.
    check_growth(test, start, peak, end, 40);
}

#[test]
fn resume_big_backlog_from_ring() {
    resume_big_backlog("resume from memory", &[]);
}

#[test]
fn resume_big_backlog_from_sqlite() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    resume_big_backlog(
        "resume from sqlite",
        &[
            "--store",
            "sqlite",
            "--data-dir",
            &d,
            "--history-ring",
            "50",
        ],
    );
}

/// Attack 4: 64 publishes of 8 KB in one write under a 64 KiB outbound limit: the
/// client's own echoes never make it a slow consumer.
#[test]
fn pipelined_publishes_under_small_limit() {
    let _g = serial();
    let mut flags = vec!["--max-outbound-bytes", "65536"];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let pid = srv.pid();
    let mut raw = Raw::open(&srv.addr, &token("piper"));
    assert_eq!(raw.json()["type"], "welcome");
    raw.join("pipe");
    let pad = "y".repeat(8000);
    let mut data = Vec::new();
    for i in 0..64 {
        let req = json!({"type": "publish", "room": "pipe", "id": i, "body": {"i": i, "pad": pad}});
        data.extend(ws::client_frame(
            OpCode::Text,
            req.to_string().as_bytes(),
            MASK,
        ));
    }
    thread::sleep(Duration::from_millis(300));
    let sampler = Sampler::start(pid);
    let mut w = raw.s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&data));
    let (mut acks, mut msgs) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while acks.len() < 64 || msgs.len() < 64 {
        assert!(
            Instant::now() < deadline,
            "acks {} msgs {}",
            acks.len(),
            msgs.len()
        );
        let v: Value = match raw.frame() {
            Some((OpCode::Text, p)) => serde_json::from_slice(&p).unwrap(),
            Some((OpCode::Close, p)) => panic!(
                "closed {} {:?} after {} acks and {} messages",
                u16::from_be_bytes([p[0], p[1]]),
                String::from_utf8_lossy(&p[2..]),
                acks.len(),
                msgs.len()
            ),
            Some(_) => continue,
            None => panic!("EOF after {} acks and {} messages", acks.len(), msgs.len()),
        };
        match v["type"].as_str() {
            Some("ack") => acks.push(v["seq"].as_u64().unwrap()),
            Some("message") => {
                assert_eq!(v["body"]["i"], msgs.len() as u64);
                msgs.push(v["seq"].as_u64().unwrap());
            }
            Some("user_joined") => {}
            _ => panic!("unexpected frame: {v}"),
        }
    }
    writer.join().unwrap().expect("the pipelined write");
    acks.sort_unstable();
    assert_eq!(acks, (1..=64).collect::<Vec<u64>>());
    assert_eq!(msgs, (1..=64).collect::<Vec<u64>>());
    raw.send_json(json!({"type": "ping", "id": "end"}));
    assert_eq!(raw.json(), json!({"type": "pong", "id": "end"}));
    let (start, peak) = sampler.finish();
    assert_eq!(disconnects(&srv, "slow_consumer"), 0.0);
    let (all, _) = full_history(&srv, "pipe");
    assert_eq!(all.len(), 64);
    assert_served(&srv, "good", "calm");
    let end = rss(pid);
    // 64 x 8 KB in, 64 x 8 KB echoed: 1 MB of traffic in all; 20 MB is
    // generous allocator slack, and far below what buffering many copies
    // of it would take.
    check_growth("pipelined publishes", start, peak, end, 20);
}

/// Attack 5: 300 `read`s of the same seq reach the other member at most once.
#[test]
fn read_spam_is_forwarded_once() {
    let _g = serial();
    let srv = Server::start(&FAST);
    let pid = srv.pid();
    let (mut a, _) = connect(&srv, "amy");
    let (mut b, _) = connect(&srv, "ben");
    join_with(&mut a, "r", None);
    join_with(&mut b, "r", None);
    let ack = request(
        &mut a,
        json!({"type": "publish", "room": "r", "body": "m"}),
        "p1",
    );
    assert_eq!(ack["seq"], 1);
    assert_eq!(next_message(&mut b, "r")["seq"], 1);
    thread::sleep(Duration::from_millis(200));
    let sampler = Sampler::start(pid);
    for _ in 0..300 {
        a.ws.write(tungstenite::Message::text(
            json!({"type": "read", "room": "r", "seq": 1}).to_string(),
        ))
        .unwrap();
    }
    a.ws.flush().unwrap();
    // A marker behind the reads on the same path (connection -> room home):
    // when B has this message, every `read` the home sent B is in front of it.
    a.send_json(json!({"type": "publish", "room": "r", "id": "p2", "body": "marker"}));
    let mut a_errors = Vec::new();
    loop {
        let v = a.recv_json();
        if v["type"] == "error" {
            a_errors.push(v.clone());
        }
        if v["id"] == "p2" {
            assert_eq!(v["type"], "ack", "{v}");
            break;
        }
    }
    assert!(a_errors.is_empty(), "errors to A: {a_errors:?}");
    let mut reads = Vec::new();
    loop {
        let v = b.recv_json();
        if v["type"] == "read" {
            reads.push(v.clone());
        }
        if v["type"] == "message" && v["body"] == "marker" {
            break;
        }
    }
    // And a ping sentinel on B: anything queued for B before it is read.
    b.send_json(json!({"type": "ping", "id": "sentinel"}));
    loop {
        let v = b.recv_json();
        if v["type"] == "read" {
            reads.push(v.clone());
        }
        if v["type"] == "pong" {
            break;
        }
    }
    let (start, peak) = sampler.finish();
    eprintln!("read spam: B got {} read frames: {reads:?}", reads.len());
    assert!(
        reads.len() <= 1,
        "B got {} read frames: {reads:?}",
        reads.len()
    );
    assert_eq!(reads.len(), 1, "the first read changed the marker");
    assert_eq!(reads[0]["from"], "amy");
    assert_eq!(reads[0]["seq"], 1);
    let r = request(&mut b, json!({"type": "rooms"}), "rooms");
    assert_eq!(r["type"], "rooms");
    assert_served(&srv, "good", "calm");
    let end = rss(pid);
    // 300 small frames: nothing should be kept per read; 10 MB is slack.
    check_growth("read spam", start, peak, end, 10);
}

/// A small xorshift generator for made-up names.
struct Names(u64);

impl Names {
    fn next(&mut self, prefix: &str) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        format!("{prefix}{:016x}", self.0)
    }
}

/// Sends `reqs` (with ids) in one batch and reads until every id is
/// answered; returns the replies.
fn batch(c: &mut Client, reqs: Vec<Value>) -> Vec<Value> {
    let mut pending = std::collections::HashSet::new();
    for r in &reqs {
        pending.insert(r["id"].as_str().unwrap().to_string());
        c.ws.write(tungstenite::Message::text(r.to_string()))
            .unwrap();
    }
    c.ws.flush().unwrap();
    let mut replies = Vec::new();
    while !pending.is_empty() {
        let v = c.recv_json();
        if let Some(id) = v["id"].as_str() {
            if pending.remove(id) {
                assert_ne!(v["type"], "error", "{v}");
                replies.push(v);
            }
        }
    }
    replies
}

/// One churning connection: `hist` histories of made-up rooms, `pairs`
/// join+leave of made-up rooms, `dms` DMs to made-up users. Stays within
/// its churn burst (2 x pairs + dms <= max_rooms_per_conn + 20).
fn churn(
    srv: &Server,
    user: &str,
    seed: u64,
    hist: usize,
    pairs: usize,
    dms: usize,
) -> (usize, Vec<String>) {
    let (mut c, _) = connect(srv, user);
    let mut names = Names(seed);
    let mut n = 0;
    let mut dm_rooms = Vec::new();
    for chunk in 0..hist / 50 {
        let reqs = (0..50)
            .map(|i| {
                json!({"type": "history", "room": names.next("ghost-"), "limit": 100,
                       "id": format!("h{chunk}-{i}")})
            })
            .collect();
        for v in batch(&mut c, reqs) {
            assert_eq!(v["type"], "history", "{v}");
            assert_eq!(v["messages"].as_array().map(Vec::len), Some(0), "{v}");
            n += 1;
        }
    }
    for chunk in 0..pairs / 50 {
        let rooms: Vec<String> = (0..50).map(|_| names.next("void-")).collect();
        let joins = rooms
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"type": "join", "room": r, "id": format!("j{chunk}-{i}")}))
            .collect();
        n += batch(&mut c, joins).len();
        let leaves = rooms
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"type": "leave", "room": r, "id": format!("l{chunk}-{i}")}))
            .collect();
        n += batch(&mut c, leaves).len();
    }
    for chunk in 0..dms / 50 {
        let reqs = (0..50)
            .map(|i| {
                json!({"type": "dm", "to": names.next("nobody-"), "body": "hi",
                       "id": format!("d{chunk}-{i}")})
            })
            .collect();
        for v in batch(&mut c, reqs) {
            assert_eq!(v["type"], "ack", "{v}");
            dm_rooms.push(v["room"].as_str().unwrap().to_string());
            n += 1;
        }
    }
    assert_alive(&mut c);
    c.close();
    (n, dm_rooms)
}

/// Attack 6: History and join/leave of made-up rooms leave nothing behind; DMs to
/// made-up users are stored (they are acked) and cost only their storage.
#[test]
fn random_rooms_and_dm_churn() {
    let _g = serial();
    let mut flags = vec!["--max-rooms-per-conn", "1000"];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let pid = srv.pid();
    // Warm up the paths once (allocator arenas, lazily built state).
    churn(&srv, "warm", 0x9e37_79b9_7f4a_7c15, 50, 50, 0);
    thread::sleep(Duration::from_millis(500));
    let sampler = Sampler::start(pid);
    let t0 = Instant::now();
    let mut done = 0;
    // 2 connections x (1,000 histories + 400 join/leave pairs): 2,000
    // histories and 800 made-up rooms joined and left, each connection
    // within its burst of 1,020.
    for k in 0..2u64 {
        done += churn(&srv, &format!("churner{k}"), 0x1234_5678 + k, 1000, 400, 0).0;
    }
    let (start, peak_rooms) = sampler.finish();
    let after_rooms = rss(pid);
    thread::sleep(Duration::from_secs(2));
    let settled_rooms = rss(pid);
    eprintln!(
        "churn: {done} requests in {:?}; rooms phase: start {:.1} MiB, peak {:.1}, after {:.1}, settled {:.1}",
        t0.elapsed(),
        mib(start),
        mib(peak_rooms),
        mib(after_rooms),
        mib(settled_rooms)
    );
    // DMs to 400 made-up users (2 connections x 200): 400 new DM rooms,
    // each holding one stored message.
    let sampler = Sampler::start(pid);
    let mut dm_rooms = Vec::new();
    for k in 0..2u64 {
        dm_rooms.extend(churn(&srv, &format!("dmer{k}"), 0xdead_beef + k, 0, 0, 200).1);
    }
    let dms = dm_rooms.len();
    let (_, peak_dms) = sampler.finish();
    thread::sleep(Duration::from_secs(2));
    let settled = rss(pid);
    eprintln!(
        "churn: {dms} DMs; peak {:.1} MiB, settled {:.1} MiB",
        mib(peak_dms),
        mib(settled)
    );
    assert_served(&srv, "good", "calm");
    // The DM rooms of made-up users hold what was acked.
    assert_eq!(dms, 400);
    for room in [&dm_rooms[0], &dm_rooms[199], &dm_rooms[399]] {
        let (all, _) = full_history(&srv, room);
        assert_eq!(all.len(), 1, "{room}: {all:?}");
        assert_eq!(all[0]["body"], "hi");
    }
    // History and join/leave of made-up rooms keep nothing: after the churn
    // and a settle, RSS is within 4 MB of the start (allocator slack of a
    // debug build; a room kept per name would be thousands of rings).
    check_growth(
        "churn: made-up rooms (settled)",
        start,
        settled_rooms,
        settled_rooms,
        4,
    );
    // 400 stored DMs of a few hundred bytes plus their rooms: well under
    // 8 MB more, also at the peak of the whole churn.
    check_growth(
        "churn: whole (peak)",
        start,
        peak_rooms.max(peak_dms),
        settled,
        8,
    );
}

/// Attack 7: 1,000 connections each start a frame announcing 60 KB and trickle it
/// one byte a second: all closed around the handshake timeout, and the
/// server holds only the bytes that arrived.
#[test]
fn trickling_partial_frames() {
    let _g = serial();
    let srv = Server::start(&[
        "--handshake-timeout-ms",
        "2000",
        "--max-conns-per-ip",
        "5000",
        "--max-upgrades-per-ip-per-sec",
        "100000",
    ]);
    let pid = srv.pid();
    let before_conns = rss(pid);
    let tok = token("trickler");
    let t_open = Instant::now();
    let mut conns: Vec<Raw> = (0..1000)
        .map(|_| {
            let mut r = Raw::open(&srv.addr, &tok);
            let (op, _) = r.frame().expect("welcome");
            assert_eq!(op, OpCode::Text);
            r
        })
        .collect();
    eprintln!("trickle: 1000 connections open in {:?}", t_open.elapsed());
    // A text frame, 16-bit length 60,000, masked: the whole 8-byte header,
    // so the server knows the announced size.
    let mut header = vec![0x81u8, 0xfe];
    header.extend_from_slice(&60_000u16.to_be_bytes());
    header.extend_from_slice(&MASK);
    thread::sleep(Duration::from_millis(300));
    let sampler = Sampler::start(pid);
    for r in conns.iter_mut() {
        r.s.set_nonblocking(true).unwrap();
        r.s.write_all(&header[..2]).unwrap();
    }
    for r in conns.iter_mut() {
        r.s.write_all(&header[2..]).unwrap();
    }
    let t0 = Instant::now();
    let mut closed_at: Vec<Option<Duration>> = vec![None; conns.len()];
    let mut last_byte = Instant::now();
    let mut served_during = None;
    let deadline = t0 + Duration::from_secs(8);
    while closed_at.iter().any(Option::is_none) && Instant::now() < deadline {
        let trickle = last_byte.elapsed() >= Duration::from_secs(1);
        if trickle {
            last_byte = Instant::now();
        }
        for (i, r) in conns.iter_mut().enumerate() {
            if closed_at[i].is_some() {
                continue;
            }
            let mut gone = false;
            if trickle {
                match r.s.write(b"z") {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => gone = true,
                }
            }
            let mut chunk = [0u8; 1024];
            loop {
                match r.s.read(&mut chunk) {
                    Ok(0) => {
                        gone = true;
                        break;
                    }
                    Ok(n) => r.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            while let Some((op, _)) = r.buffered_frame() {
                if op == OpCode::Close {
                    gone = true;
                }
            }
            if gone {
                closed_at[i] = Some(t0.elapsed());
            }
        }
        if served_during.is_none() && t0.elapsed() > Duration::from_millis(700) {
            served_during = Some(assert_served(&srv, "good", "calm"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let (start, peak) = sampler.finish();
    let open = closed_at.iter().filter(|c| c.is_none()).count();
    let last = closed_at.iter().flatten().max().copied();
    let first = closed_at.iter().flatten().min().copied();
    eprintln!(
        "trickle: {} closed, {open} still open; first close at {first:?}, last at {last:?}; good client served in {served_during:?}",
        conns.len() - open
    );
    assert_eq!(
        open, 0,
        "connections with a partial frame were never closed"
    );
    let last = last.unwrap();
    assert!(
        last <= Duration::from_secs(5),
        "the last partial frame was closed after {last:?} (handshake timeout 2 s)"
    );
    drop(conns);
    thread::sleep(Duration::from_millis(500));
    assert_served(&srv, "good2", "calm");
    let end = rss(pid);
    eprintln!(
        "trickle: RSS before the 1000 connections {:.1} MiB",
        mib(before_conns)
    );
    // Reserving the announced 60 KB per connection would be 60 MB; holding
    // only the bytes that arrived is a few KB per connection. 30 MB.
    check_growth("trickle", start, peak, end, 30);
}
