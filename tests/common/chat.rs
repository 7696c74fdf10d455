//! Helpers for chat-level tests: connect, join, request/reply, publish in
//! bulk, read history over HTTP.

use super::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Generous read timeout: the machine is shared and noisy.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Flags that take the rate limit out of the way of bulk tests.
pub const FAST: [&str; 4] = ["--rate-per-sec", "100000", "--burst", "100000"];

pub fn with_timeout(mut c: Client) -> Client {
    c.ws.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c
}

/// Connects with a given token; returns the client and its `welcome`.
pub fn connect_token(srv: &Server, tok: &str) -> (Client, Value) {
    let mut c = with_timeout(Client::connect(&srv.ws_url(tok)));
    let w = c.recv_json();
    assert_eq!(w["type"], "welcome", "{w}");
    (c, w)
}

/// Connects `user`; returns the client and the shard serving it (from the
/// welcome's `session`, `<node>-<shard>-<conn>`).
pub fn connect(srv: &Server, user: &str) -> (Client, usize) {
    let (c, w) = connect_token(srv, &token(user));
    assert_eq!(w["user"], user);
    let session = w["session"].as_str().expect("session").to_string();
    let mut parts = session.rsplitn(3, '-');
    let _conn = parts.next();
    let shard = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("session {session:?} names no shard"));
    (c, shard)
}

pub fn client(srv: &Server, user: &str) -> Client {
    connect(srv, user).0
}

/// Connects clients (users `<prefix><i>`) until every one of `shards` shards
/// serves at least one, and checks that with the per-shard metric.
pub fn spread_clients(srv: &Server, prefix: &str, shards: usize, min_total: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    let mut per_shard = vec![0usize; shards];
    let mut i = 0;
    while per_shard.contains(&0) || clients.len() < min_total {
        assert!(
            i < 400,
            "the kernel never spread connections over all shards: {per_shard:?}"
        );
        let (c, shard) = connect(srv, &format!("{prefix}{i}"));
        per_shard[shard] += 1;
        clients.push(c);
        i += 1;
    }
    for (shard, &n) in per_shard.iter().enumerate() {
        let open = srv.metric("corechat_connections_open", Some(shard));
        assert!(
            open >= n as f64,
            "shard {shard}: metric says {open} open, welcome says {n}"
        );
        assert!(open >= 1.0, "shard {shard} has no connection");
    }
    clients
}

pub fn join_with(c: &mut Client, room: &str, since: Option<u64>) -> Value {
    let mut req = json!({"type": "join", "room": room, "id": format!("j-{room}")});
    if let Some(s) = since {
        req["since"] = json!(s);
    }
    c.send_json(req);
    // Frames that were already on their way (messages, presence) may come
    // first; an error answering the join may not.
    let j = loop {
        let v = c.recv_json();
        if v["type"] == "joined" || v["id"] == format!("j-{room}") {
            break v;
        }
    };
    assert_eq!(j["type"], "joined", "join {room}: {j}");
    assert_eq!(j["room"], room);
    assert_eq!(j["id"], format!("j-{room}"));
    j
}

/// The next `message` of `room`, skipping every other frame.
pub fn next_message(c: &mut Client, room: &str) -> Value {
    loop {
        let v = c.recv_json();
        if v["type"] == "message" && v["room"] == room {
            return v;
        }
        assert_ne!(v["type"], "error", "unexpected error: {v}");
    }
}

pub fn messages(c: &mut Client, room: &str, n: usize) -> Vec<Value> {
    (0..n).map(|_| next_message(c, room)).collect()
}

pub fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// Asserts nothing arrives for a while (a frame that should not exist would
/// normally show up long before this), then proves it with a sentinel.
pub fn assert_quiet(c: &mut Client, ms: u64) {
    quiet_except(c, ms, &[]);
}

/// Like `assert_quiet`, but frames of the given types are allowed.
///
/// A quiet spell alone proves nothing on a loaded machine (the frame may
/// just be late), so the check ends with a sentinel: a `ping` with a fresh
/// id, read up to its `pong`. The server answers requests in order, so every
/// frame it had queued for this connection before the ping arrives before
/// the pong, and is checked.
pub fn quiet_except(c: &mut Client, ms: u64, allowed: &[&str]) {
    static SENTINEL: AtomicU64 = AtomicU64::new(0);
    let check = |t: &str| {
        let v: Value = serde_json::from_str(t).expect("JSON");
        assert!(
            allowed.iter().any(|a| v["type"] == *a),
            "unexpected frame: {t}"
        );
    };
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(ms)))
        .unwrap();
    loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => check(&t),
            Ok(Message::Close(f)) => panic!("unexpected close: {f:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
    c.ws.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let id = format!("quiet-{}", SENTINEL.fetch_add(1, Ordering::Relaxed));
    c.send_json(json!({"type": "ping", "id": id}));
    loop {
        let t = c.recv_text();
        let v: Value = serde_json::from_str(&t).expect("JSON");
        if v["type"] == "pong" && v["id"] == id.as_str() {
            return;
        }
        check(&t);
    }
}

/// Sends a request and returns the reply (the next frame that carries `id`).
pub fn request(c: &mut Client, mut req: Value, id: &str) -> Value {
    req["id"] = json!(id);
    c.send_json(req);
    loop {
        let v = c.recv_json();
        if v["id"] == id {
            return v;
        }
    }
}

/// Sends a request and reads until its reply and `n` messages of `room`.
pub fn reply_and_messages(
    c: &mut Client,
    mut req: Value,
    id: &str,
    room: &str,
    n: usize,
) -> (Value, Vec<Value>) {
    req["id"] = json!(id);
    c.send_json(req);
    let mut reply = None;
    let mut msgs = Vec::new();
    while reply.is_none() || msgs.len() < n {
        let v = c.recv_json();
        if v["id"] == id {
            assert!(reply.is_none(), "two replies: {v}");
            reply = Some(v);
        } else if v["type"] == "message" && v["room"] == room {
            msgs.push(v);
        }
    }
    (reply.unwrap(), msgs)
}

/// Expects an `error` with `code` and the request's `id`.
pub fn expect_error(c: &mut Client, req: Value, id: &str, code: &str) -> Value {
    let v = request(c, req.clone(), id);
    assert_eq!(v["type"], "error", "{req} -> {v}");
    assert_eq!(v["code"], code, "{req} -> {v}");
    assert!(v["message"].is_string(), "{v}");
    v
}

/// The connection is still open and answers.
pub fn assert_alive(c: &mut Client) {
    let v = request(c, json!({"type": "ping"}), "alive");
    assert_eq!(v["type"], "pong");
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes `n` messages `{"p": tag, "i": i}` with up to 16 unacknowledged;
/// returns the acked seq of each i and every message of `room` read meanwhile.
pub fn publish_n(
    c: &mut Client,
    room: &str,
    tag: &str,
    n: u64,
    progress: Option<&AtomicU64>,
) -> (Vec<u64>, Vec<Value>) {
    let mut acks: Vec<Option<u64>> = vec![None; n as usize];
    let mut acked = 0u64;
    let mut sent = 0u64;
    let mut msgs = Vec::new();
    while acked < n {
        while sent < n && sent - acked < 16 {
            c.send_json(
                json!({"type": "publish", "room": room, "id": sent, "body": {"p": tag, "i": sent}}),
            );
            sent += 1;
        }
        let v = c.recv_json();
        match v["type"].as_str() {
            Some("ack") => {
                let i = v["id"].as_u64().expect("ack id") as usize;
                assert_eq!(v["room"], room);
                assert!(v["ts"].as_u64().is_some(), "{v}");
                assert!(acks[i].is_none(), "second ack for {i}");
                acks[i] = Some(v["seq"].as_u64().expect("ack seq"));
                acked += 1;
                if let Some(p) = progress {
                    p.fetch_max(acks[i].unwrap(), Ordering::SeqCst);
                }
            }
            Some("message") if v["room"] == room => msgs.push(v),
            Some("error") => panic!("publish failed: {v}"),
            _ => {}
        }
    }
    (acks.into_iter().map(Option::unwrap).collect(), msgs)
}

pub fn disconnects(srv: &Server, reason: &str) -> f64 {
    let (_, text) = srv.http("GET", "/metrics", &[], "");
    text.lines()
        .filter(|l| {
            l.starts_with("corechat_disconnects_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn bearer(tok: &str) -> String {
    format!("Bearer {tok}")
}

pub fn http_json(
    srv: &Server,
    method: &str,
    path: &str,
    tok: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = tok.map(bearer);
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let (status, text) = srv.http(method, path, &headers, body);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {path}: {status} body is not JSON: {text:?}"));
    (status, v)
}

/// Every stored message of a room through the HTTP API, raw text per page.
pub fn full_history(srv: &Server, room: &str) -> (Vec<Value>, String) {
    let admin = admin_token("root");
    let mut after = 0u64;
    let mut all = Vec::new();
    let mut raw = String::new();
    loop {
        let auth = bearer(&admin);
        let (status, text) = srv.http(
            "GET",
            &format!("/api/rooms/{room}/history?after={after}&limit=100"),
            &[("Authorization", &auth)],
            "",
        );
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let msgs = v["messages"].as_array().unwrap().clone();
        raw.push_str(&text);
        if let Some(last) = msgs.last() {
            after = last["seq"].as_u64().unwrap();
        }
        let more = v["has_more"].as_bool().unwrap();
        all.extend(msgs);
        if !more {
            return (all, raw);
        }
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corechat-chat-test")
        .tempdir()
        .unwrap()
}
