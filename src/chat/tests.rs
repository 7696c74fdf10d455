//! The chat's roles driven in process, with no sockets: a fake `Port` per
//! shard records what each connection was sent, and a harness carries bus
//! messages between shards in the order they were posted (the real bus is
//! FIFO per pair of shards; one global FIFO is a valid ordering of that).

use super::msg::ChatMsg;
use super::{ChatApp, ChatShared, Session};
use crate::app::{App, Port};
use crate::auth::{Authenticator, Identity};
use crate::bus::ConnRef;
use crate::config::Config;
use crate::http::Response;
use crate::metrics::{DisconnectReason, ShardMetrics};
use crate::ws::OpCode;
use bytes::Bytes;
use serde_json::Value;
use slab::Slab;
use std::collections::VecDeque;
use std::sync::Arc;

struct TestConn {
    id: u64,
    session: Option<Box<Session>>,
    sent: Vec<Bytes>,
}

struct TestPort {
    shard: usize,
    shards: usize,
    cfg: Config,
    metrics: ShardMetrics,
    conns: Slab<TestConn>,
    next_id: u64,
    posted: Vec<(usize, ChatMsg)>,
    /// Connections that asked to hear when their queue drains.
    drain_asks: Vec<usize>,
    waker: Arc<mio::Waker>,
    _poll: mio::Poll,
}

impl Port<ChatMsg, Session> for TestPort {
    fn shard(&self) -> usize {
        self.shard
    }
    fn shards(&self) -> usize {
        self.shards
    }
    fn now_ms(&self) -> u64 {
        1
    }
    fn config(&self) -> &Config {
        &self.cfg
    }
    fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }
    fn peer_ip(&self, _: usize) -> Option<std::net::IpAddr> {
        Some(std::net::Ipv4Addr::LOCALHOST.into())
    }
    fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            shard: self.shard as u32,
            key: key as u32,
            id: self.conns[key].id,
        }
    }
    fn resolve(&self, r: ConnRef) -> Option<usize> {
        let c = self.conns.get(r.key as usize)?;
        (c.id == r.id).then_some(r.key as usize)
    }
    fn session(&self, key: usize) -> Option<&Session> {
        self.conns.get(key)?.session.as_deref()
    }
    fn session_mut(&mut self, key: usize) -> Option<&mut Session> {
        self.conns.get_mut(key)?.session.as_deref_mut()
    }
    fn send(&mut self, key: usize, frame: Bytes) {
        if let Some(c) = self.conns.get_mut(key) {
            c.sent.push(frame);
        }
    }
    fn close(&mut self, _: usize, code: u16, reason: &str, _: DisconnectReason) {
        panic!("unexpected close {code} {reason}");
    }
    fn respond_http(&mut self, _: usize, _: Response) {}
    fn bus(&mut self, dest: usize, msg: ChatMsg) {
        self.posted.push((dest, msg));
    }
    fn waker(&self) -> Arc<mio::Waker> {
        self.waker.clone()
    }
    fn resume_input(&mut self, _: usize) {}
    fn notify_drained(&mut self, key: usize) {
        self.drain_asks.push(key);
    }
}

/// A client: its shard and connection key.
#[derive(Clone, Copy)]
struct Client {
    shard: usize,
    key: usize,
}

struct Harness {
    apps: Vec<ChatApp>,
    ports: Vec<TestPort>,
    queue: VecDeque<(usize, ChatMsg)>,
}

impl Harness {
    /// `shards` chat shards with no store (history in the ring only).
    fn new(shards: usize) -> Self {
        Self::with_ring(shards, 1000)
    }

    fn with_ring(shards: usize, history_ring: usize) -> Self {
        let cfg = Config {
            shards,
            history_ring,
            rate_per_sec: 1_000_000,
            burst: 1_000_000,
            ..Config::default()
        };
        let auth = Authenticator::new(Some(b"test-secret"), None, 0).expect("hs256 key");
        let shared = Arc::new(ChatShared::new(auth, None, &cfg));
        let apps = (0..shards)
            .map(|i| ChatApp::new(i, shards, shared.clone(), &cfg))
            .collect();
        let ports = (0..shards)
            .map(|shard| {
                let poll = mio::Poll::new().expect("poll");
                let waker =
                    Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
                TestPort {
                    shard,
                    shards,
                    cfg: cfg.clone(),
                    metrics: ShardMetrics::default(),
                    conns: Slab::new(),
                    next_id: 1,
                    posted: Vec::new(),
                    drain_asks: Vec::new(),
                    waker,
                    _poll: poll,
                }
            })
            .collect();
        Harness {
            apps,
            ports,
            queue: VecDeque::new(),
        }
    }

    /// Carries bus messages until every shard is quiet. Clients read
    /// everything at once: every drain notice is answered when the bus is
    /// quiet.
    fn settle(&mut self) {
        loop {
            for (i, port) in self.ports.iter_mut().enumerate() {
                self.apps[i].end_of_turn(port);
                self.queue.extend(port.posted.drain(..));
            }
            if let Some((dest, msg)) = self.queue.pop_front() {
                self.apps[dest].on_bus(&mut self.ports[dest], msg);
                continue;
            }
            let mut drained = false;
            for (i, port) in self.ports.iter_mut().enumerate() {
                for key in std::mem::take(&mut port.drain_asks) {
                    if port.conns.contains(key) {
                        self.apps[i].on_drained(port, key);
                        drained = true;
                    }
                }
            }
            if !drained {
                return;
            }
        }
    }

    fn connect(&mut self, shard: usize, user: &str) -> Client {
        let port = &mut self.ports[shard];
        let id = port.next_id;
        port.next_id += 1;
        let identity = Identity {
            user: user.into(),
            name: user.to_uppercase().into(),
            exp: None,
            rooms: None,
            admin: false,
            guest: false,
        };
        let key = port.conns.insert(TestConn {
            id,
            session: Some(Box::new(Session::new(identity, 1_000_000, 1_000, 1))),
            sent: Vec::new(),
        });
        self.apps[shard].on_open(port, key);
        self.settle();
        Client { shard, key }
    }

    fn disconnect(&mut self, c: Client) {
        let port = &mut self.ports[c.shard];
        let conn = port.conn_ref(c.key);
        let tc = port.conns.remove(c.key);
        let session = tc.session.expect("open connection");
        self.apps[c.shard].on_disconnect(port, c.key, conn, session);
        self.settle();
    }

    fn say(&mut self, c: Client, json: &str) {
        self.apps[c.shard].on_message(
            &mut self.ports[c.shard],
            c.key,
            OpCode::Text,
            json.as_bytes(),
        );
        self.settle();
    }

    /// Everything sent to a client since the last call, as JSON.
    fn take(&mut self, c: Client) -> Vec<Value> {
        let sent = std::mem::take(&mut self.ports[c.shard].conns[c.key].sent);
        sent.iter().map(|f| decode(f)).collect()
    }
}

/// A server text frame's JSON.
fn decode(frame: &[u8]) -> Value {
    assert_eq!(frame[0], 0x81, "a final text frame");
    let hdr = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[hdr..]).expect("valid JSON")
}

fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    of_type(frames, "message")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[test]
fn join_replays_from_since_then_goes_live_with_no_gap_on_every_shard() {
    let mut h = Harness::new(3);
    let alice = h.connect(0, "alice");
    h.say(alice, r#"{"type":"join","room":"lobby","id":1}"#);
    for i in 0..5 {
        h.say(
            alice,
            &format!(r#"{{"type":"publish","room":"lobby","body":{i}}}"#),
        );
    }
    assert_eq!(seqs(&h.take(alice)), vec![1, 2, 3, 4, 5]);
    // Bob, on each other shard, resumes after seq 2.
    for shard in [1, 2] {
        let bob = h.connect(shard, &format!("bob{shard}"));
        h.say(bob, r#"{"type":"join","room":"lobby","since":2,"id":7}"#);
        let got = h.take(bob);
        let joined = of_type(&got, "joined");
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0]["recovered"], true);
        assert_eq!(joined[0]["id"], 7);
        let before = joined[0]["seq"].as_u64().expect("seq");
        h.say(alice, r#"{"type":"publish","room":"lobby","body":"live"}"#);
        let mut all = seqs(&got);
        all.extend(seqs(&h.take(bob)));
        let want: Vec<u64> = (3..=before + 1).collect();
        assert_eq!(all, want, "replay then live, contiguous, on shard {shard}");
    }
}

#[test]
fn dms_reach_every_connection_of_both_users_and_nobody_else() {
    let mut h = Harness::new(3);
    let alice = h.connect(0, "alice");
    let bob1 = h.connect(1, "bob");
    let bob2 = h.connect(2, "bob");
    let carol = h.connect(2, "carol");
    for c in [alice, bob1, bob2, carol] {
        h.take(c);
    }
    h.say(alice, r#"{"type":"dm","to":"bob","body":"psst","id":"x"}"#);
    let mine = h.take(alice);
    assert_eq!(of_type(&mine, "ack").len(), 1);
    assert_eq!(of_type(&mine, "ack")[0]["room"], "dm:alice:bob");
    assert_eq!(seqs(&mine), vec![1]);
    for bob in [bob1, bob2] {
        let got = h.take(bob);
        assert_eq!(seqs(&got), vec![1]);
        assert_eq!(of_type(&got, "message")[0]["body"], "psst");
    }
    assert!(h.take(carol).is_empty(), "carol sees nothing");
    // The DM room is listed for both users.
    h.say(bob2, r#"{"type":"rooms","id":3}"#);
    let rooms = h.take(bob2);
    assert_eq!(rooms[0]["rooms"][0]["room"], "dm:alice:bob");
    assert_eq!(rooms[0]["rooms"][0]["seq"], 1);
}

#[test]
fn presence_counts_users_not_connections() {
    let mut h = Harness::new(2);
    let alice1 = h.connect(0, "alice");
    let alice2 = h.connect(1, "alice");
    let bob = h.connect(1, "bob");
    h.say(bob, r#"{"type":"join","room":"r","id":1}"#);
    h.take(bob);
    h.say(alice1, r#"{"type":"join","room":"r","id":1}"#);
    h.say(alice2, r#"{"type":"join","room":"r","id":1}"#);
    let joined = h.take(alice2);
    assert_eq!(of_type(&joined, "joined")[0]["members"], 2);
    // Bob heard alice arrive once, not once per connection.
    let heard = h.take(bob);
    assert_eq!(of_type(&heard, "user_joined").len(), 1);
    h.say(bob, r#"{"type":"presence","room":"r","id":2}"#);
    let p = h.take(bob);
    let mut users: Vec<&str> = p[0]["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["user"].as_str().expect("user"))
        .collect();
    users.sort_unstable();
    assert_eq!(users, vec!["alice", "bob"]);
    // One of alice's connections closing is not a departure; the last is.
    h.disconnect(alice1);
    assert!(of_type(&h.take(bob), "user_left").is_empty());
    h.say(alice2, r#"{"type":"leave","room":"r","id":3}"#);
    let left = h.take(bob);
    assert_eq!(of_type(&left, "user_left").len(), 1);
    assert_eq!(of_type(&left, "user_left")[0]["user"], "alice");
}

#[test]
fn typing_and_read_skip_the_sender() {
    let mut h = Harness::new(2);
    let a = h.connect(0, "a");
    let b = h.connect(1, "b");
    for c in [a, b] {
        h.say(c, r#"{"type":"join","room":"r"}"#);
    }
    h.say(a, r#"{"type":"publish","room":"r","body":1}"#);
    h.take(a);
    h.take(b);
    h.say(a, r#"{"type":"typing","room":"r"}"#);
    h.say(a, r#"{"type":"read","room":"r","seq":1}"#);
    assert!(h.take(a).is_empty(), "nothing back to the sender");
    let got = h.take(b);
    assert_eq!(of_type(&got, "typing")[0]["from"], "a");
    assert_eq!(of_type(&got, "read")[0]["seq"], 1);
}

#[test]
fn a_backlog_larger_than_a_page_is_replayed_in_pages_then_live() {
    let mut h = Harness::with_ring(2, 5000);
    let alice = h.connect(0, "alice");
    h.say(alice, r#"{"type":"join","room":"big"}"#);
    let body = "x".repeat(1000);
    for _ in 0..2500 {
        h.say(
            alice,
            &format!(r#"{{"type":"publish","room":"big","body":"{body}"}}"#),
        );
    }
    h.take(alice);
    let bob = h.connect(1, "bob");
    // The harness reads as it goes: each drain asks for the next page.
    h.say(bob, r#"{"type":"join","room":"big","since":0}"#);
    h.say(alice, r#"{"type":"publish","room":"big","body":"live"}"#);
    let got = h.take(bob);
    assert_eq!(of_type(&got, "joined")[0]["recovered"], true);
    assert_eq!(seqs(&got), (1..=2501).collect::<Vec<u64>>());
}

#[test]
fn a_since_beyond_the_latest_seq_replays_everything_unrecovered() {
    let mut h = Harness::new(1);
    let a = h.connect(0, "a");
    h.say(a, r#"{"type":"join","room":"r"}"#);
    for _ in 0..3 {
        h.say(a, r#"{"type":"publish","room":"r","body":1}"#);
    }
    let b = h.connect(0, "b");
    h.say(b, r#"{"type":"join","room":"r","since":50}"#);
    let got = h.take(b);
    assert_eq!(of_type(&got, "joined")[0]["recovered"], false);
    assert_eq!(seqs(&got), vec![1, 2, 3]);
}

#[test]
fn a_read_that_changes_nothing_tells_nobody() {
    let mut h = Harness::new(2);
    let a = h.connect(0, "a");
    let b = h.connect(1, "b");
    for c in [a, b] {
        h.say(c, r#"{"type":"join","room":"r"}"#);
    }
    h.say(a, r#"{"type":"publish","room":"r","body":1}"#);
    h.take(b);
    for _ in 0..5 {
        h.say(a, r#"{"type":"read","room":"r","seq":1}"#);
    }
    assert_eq!(of_type(&h.take(b), "read").len(), 1);
}

#[test]
fn reading_or_leaving_made_up_rooms_leaves_no_home_behind() {
    let mut h = Harness::new(1);
    let a = h.connect(0, "a");
    for i in 0..50 {
        h.say(a, &format!(r#"{{"type":"history","room":"nope-{i}"}}"#));
        h.say(a, &format!(r#"{{"type":"join","room":"tmp-{i}"}}"#));
        h.say(a, &format!(r#"{{"type":"leave","room":"tmp-{i}"}}"#));
    }
    let replies = h.take(a);
    assert_eq!(of_type(&replies, "history").len(), 50);
    assert_eq!(of_type(&replies, "left").len(), 50);
    let left: Vec<String> = h.apps[0]
        .homes
        .iter()
        .map(|(k, v)| format!("{k}: committed {} next {}", v.committed, v.next_seq))
        .collect();
    assert!(left.is_empty(), "homes left: {left:?}");
}

#[test]
fn joins_past_max_rooms_per_conn_are_forbidden() {
    let mut h = Harness::new(1);
    h.ports[0].cfg.max_rooms_per_conn = 3;
    let a = h.connect(0, "a");
    for i in 0..4 {
        h.say(a, &format!(r#"{{"type":"join","room":"r{i}","id":{i}}}"#));
    }
    let got = h.take(a);
    assert_eq!(of_type(&got, "joined").len(), 3);
    let errors = of_type(&got, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "forbidden");
    assert_eq!(errors[0]["id"], 3);
}
