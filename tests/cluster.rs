//! Cluster mode end to end: a private `redis-server` on a free port and
//! several `corechat serve --redis` processes (all killed by PID on drop).

mod common;

use common::{Client, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use common::redis::Redis;

fn node(redis: &Redis, id: &str) -> Server {
    node_with(redis, id, &[])
}

fn node_with(redis: &Redis, id: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--node-id", id, "--shards", "2"];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    wait_ready(&s, true);
    s
}

fn ready(s: &Server) -> bool {
    s.http("GET", "/ready", &[], "").0 == 200
}

fn wait_ready(s: &Server, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(s) != want {
        assert!(Instant::now() < deadline, "/ready never became {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn join(c: &mut Client, room: &str, since: Option<u64>) -> Value {
    let mut req = json!({"type": "join", "room": room, "id": format!("j-{room}")});
    if let Some(s) = since {
        req["since"] = json!(s);
    }
    c.send_json(req);
    c.recv_type("joined")
}

/// Message seqs of `room` until `last` is seen (or the timeout).
fn messages_until(c: &mut Client, room: &str, last: u64, timeout: Duration) -> Vec<u64> {
    let (seqs, dropped) = read_seqs(c, room, Some(last), timeout);
    assert!(!dropped, "the connection dropped after {seqs:?}");
    seqs
}

/// Message seqs of `room` until the connection drops.
fn messages_until_dropped(c: &mut Client, room: &str, timeout: Duration) -> Vec<u64> {
    let (seqs, dropped) = read_seqs(c, room, None, timeout);
    assert!(dropped, "the connection never dropped");
    seqs
}

/// Reads `room`'s message seqs until `last` (if given), the timeout, or
/// the connection dropping (then true).
fn read_seqs(c: &mut Client, room: &str, last: Option<u64>, timeout: Duration) -> (Vec<u64>, bool) {
    let deadline = Instant::now() + timeout;
    let mut seqs = Vec::new();
    c.ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut dropped = false;
    while Instant::now() < deadline && (last.is_none() || seqs.last() != last.as_ref()) {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" && v["room"] == room {
                    seqs.push(v["seq"].as_u64().unwrap());
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                dropped = true;
                break;
            }
        }
    }
    if !dropped {
        c.ws.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    (seqs, dropped)
}

/// Publishes and waits for the ack or the error.
fn publish(c: &mut Client, room: &str, id: &str, body: Value) -> Value {
    c.send_json(json!({"type": "publish", "room": room, "id": id, "body": body}));
    loop {
        let v = c.recv_json();
        if (v["type"] == "ack" || v["type"] == "error") && v["id"] == id {
            return v;
        }
    }
}

fn history(c: &mut Client, room: &str) -> Vec<Value> {
    c.send_json(json!({"type": "history", "room": room, "id": "h", "limit": 100}));
    let v = c.recv_type("history");
    v["messages"].as_array().unwrap().clone()
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

#[test]
fn publishers_on_every_node_share_one_numbering() {
    let redis = Redis::start(true);
    let nodes: Vec<Server> = (1..=3).map(|k| node(&redis, &format!("n{k}"))).collect();
    let mut members: Vec<Client> = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        for j in 0..2 {
            let mut c = n.client(&format!("m{k}{j}"));
            join(&mut c, "lobby", None);
            members.push(c);
        }
    }
    const PER: u64 = 30;
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let mut p = n.client(&format!("p{k}"));
            join(&mut p, "lobby", None);
            std::thread::spawn(move || {
                for i in 0..PER {
                    p.send_json(json!({"type": "publish", "room": "lobby", "id": i, "body": {"k": k, "i": i}}));
                }
                let mut acks = 0;
                while acks < PER {
                    let v = p.recv_json();
                    assert_ne!(v["type"], "error", "{v}");
                    if v["type"] == "ack" {
                        acks += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = 3 * PER;
    for m in members.iter_mut() {
        let seqs = messages_until(m, "lobby", n, Duration::from_secs(15));
        assert_eq!(seqs, range(1, n), "every member gets 1..N exactly once");
    }
    let first = history(&mut members[0], "lobby");
    assert_eq!(first.len() as u64, n);
    for m in members.iter_mut().skip(1) {
        assert_eq!(
            history(m, "lobby"),
            first,
            "history is the same from every node"
        );
    }
}

#[test]
fn a_member_moving_to_another_node_resumes_with_since() {
    let redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "a1"), node(&redis, "a2"));
    let mut p = n2.client("pub");
    join(&mut p, "move", None);
    let mut m = n1.client("mover");
    join(&mut m, "move", None);
    for i in 0..10 {
        assert_eq!(
            publish(&mut p, "move", &format!("x{i}"), json!(i))["type"],
            "ack"
        );
    }
    assert_eq!(
        messages_until(&mut m, "move", 10, Duration::from_secs(10)),
        range(1, 10)
    );
    m.close();
    for i in 10..25 {
        assert_eq!(
            publish(&mut p, "move", &format!("y{i}"), json!(i))["type"],
            "ack"
        );
    }
    let mut m = n2.client("mover");
    let j = join(&mut m, "move", Some(10));
    assert_eq!(j["seq"], 25, "{j}");
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(publish(&mut p, "move", "z", json!("live"))["seq"], 26);
    assert_eq!(
        messages_until(&mut m, "move", 26, Duration::from_secs(10)),
        range(11, 26)
    );
}

#[test]
fn a_cut_subscription_loses_and_doubles_nothing() {
    let redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "c1"), node(&redis, "c2"));
    let mut m1 = n1.client("cm1");
    join(&mut m1, "cut", None);
    let mut m2 = n2.client("cm2");
    join(&mut m2, "cut", None);
    let mut p = n2.client("cp");
    join(&mut p, "cut", None);
    const N: u64 = 200;
    let mut con = redis.con();
    for i in 0..N {
        if i == N / 3 {
            // Every node's subscription at once ...
            redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        if i == 2 * N / 3 {
            // ... then only m1's node's, held for ten publishes: p's node
            // goes on publishing.
            assert_eq!(redis.cut_and_hold(&mut con, "corechat-sub-c1"), 1);
        }
        if i == 2 * N / 3 + 10 {
            redis.accept_clients(&mut con);
        }
        // While the subscriber link reconnects the node is unavailable:
        // retry until acked.
        let deadline = Instant::now() + Duration::from_secs(10);
        while publish(&mut p, "cut", &format!("c{i}"), json!(i))["type"] != "ack" {
            assert!(Instant::now() < deadline, "publishing never resumed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for m in [&mut m1, &mut m2] {
        assert_eq!(
            messages_until(m, "cut", N, Duration::from_secs(15)),
            range(1, N)
        );
    }
    assert!(
        n1.metric("corechat_broker_gap_frames_total", None) > 0.0,
        "the cut lost frames that c1 read back from the stream"
    );
}

#[test]
fn redis_down_then_back_with_its_data() {
    let mut redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "d1"), node(&redis, "d2"));
    let mut m = n1.client("dm1");
    join(&mut m, "down", None);
    let mut p = n2.client("dp");
    join(&mut p, "down", None);
    let mut acked = 0;
    for i in 0..20 {
        if publish(&mut p, "down", &format!("a{i}"), json!(i))["type"] == "ack" {
            acked += 1;
        }
    }
    assert_eq!(acked, 20);
    redis.kill();
    wait_ready(&n1, false);
    wait_ready(&n2, false);
    let v = publish(&mut p, "down", "while-down", json!("x"));
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "unavailable", "{v}");
    redis.restart(false);
    wait_ready(&n1, true);
    wait_ready(&n2, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 20;
    while Instant::now() < deadline && last < 30 {
        let v = publish(&mut p, "down", &format!("b{last}"), json!(last));
        if v["type"] == "ack" {
            last = v["seq"].as_u64().unwrap();
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(last >= 30, "publishing resumed");
    // Clients stayed connected; nothing acked was lost; no gap.
    assert_eq!(
        messages_until(&mut m, "down", last, Duration::from_secs(15)),
        range(1, last)
    );
}

#[test]
fn redis_restarted_empty_closes_members_with_1012() {
    let mut redis = Redis::start(true);
    let n1 = node(&redis, "e1");
    let mut m = n1.client("em");
    let j1 = join(&mut m, "empty", None);
    for i in 0..5 {
        assert_eq!(
            publish(&mut m, "empty", &format!("e{i}"), json!(i))["type"],
            "ack"
        );
    }
    redis.restart(true);
    assert_eq!(m.recv_close(), Some(1012));
    wait_ready(&n1, true);
    let mut m = n1.client("em");
    let j2 = join(&mut m, "empty", Some(5));
    assert_ne!(j2["epoch"], j1["epoch"], "{j1} {j2}");
    assert_eq!(j2["seq"], 0, "{j2}");
    assert_eq!(j2["recovered"], false, "since 5 > latest 0: from 0 {j2}");
    assert_eq!(publish(&mut m, "empty", "after", json!(1))["seq"], 1);
}

#[test]
fn presence_across_nodes_and_a_killed_node_leaves() {
    let redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "f1"), node(&redis, "f2"));
    let mut alice = n1.client("alice");
    join(&mut alice, "hall", None);
    let mut bob = n2.client("bob");
    join(&mut bob, "hall", None);
    let j = alice.recv_type("user_joined");
    assert_eq!(j["user"], "bob", "{j}");
    alice.send_json(json!({"type": "presence", "room": "hall", "id": "pr"}));
    let p = alice.recv_type("presence");
    let s = p.to_string();
    assert!(s.contains("alice") && s.contains("bob"), "{p}");
    n2.signal(9);
    let t0 = Instant::now();
    let l = alice.recv_type("user_left");
    assert_eq!(l["user"], "bob", "{l}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn dms_across_nodes() {
    let redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "g1"), node(&redis, "g2"));
    let mut alice = n1.client("alice");
    let mut bob = n2.client("bob");
    // The user channel is subscribed at connect; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    bob.send_json(json!({"type": "dm", "to": "alice", "body": "hi", "id": "d1"}));
    let m = alice.recv_type("message");
    assert_eq!(m["room"], "dm:alice:bob", "{m}");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["from"], "bob");
    alice.send_json(json!({"type": "dm", "to": "bob", "body": "hey", "id": "d2"}));
    let mut m = bob.recv_type("message");
    if m["seq"] == 1 {
        m = bob.recv_type("message"); // the sender's own copy of the first
    }
    assert_eq!(m["seq"], 2, "{m}");
    alice.send_json(json!({"type": "rooms", "id": "r"}));
    let r = alice.recv_type("rooms");
    assert!(r.to_string().contains("dm:alice:bob"), "{r}");
}

/// Sends a DM and waits for its ack or error.
fn dm(c: &mut Client, to: &str, id: &str, body: Value) -> Value {
    c.send_json(json!({"type": "dm", "to": to, "id": id, "body": body}));
    loop {
        let v = c.recv_json();
        if (v["type"] == "ack" || v["type"] == "error") && v["id"] == id {
            return v;
        }
    }
}

#[test]
fn dms_through_a_cut_subscription_lose_and_double_nothing() {
    let redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "h1"), node(&redis, "h2"));
    let mut alice = n1.client("alice");
    let mut bob = n2.client("bob");
    std::thread::sleep(Duration::from_millis(300));
    const N: u64 = 120;
    let mut con = redis.con();
    for i in 0..N {
        if i == N / 3 || i == 2 * N / 3 {
            // Cuts alice's node's subscription only, and keeps it cut for
            // ten DMs: those reach h1 through no channel.
            assert_eq!(redis.cut_and_hold(&mut con, "corechat-sub-h1"), 1);
        }
        if i == N / 3 + 10 || i == 2 * N / 3 + 10 {
            redis.accept_clients(&mut con);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while dm(&mut bob, "alice", &format!("d{i}"), json!(i))["type"] != "ack" {
            assert!(Instant::now() < deadline, "DMs never resumed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(
        messages_until(&mut alice, "dm:alice:bob", N, Duration::from_secs(15)),
        range(1, N)
    );
    assert!(
        n1.metric("corechat_broker_gap_frames_total", None) > 0.0,
        "the cut lost DMs that h1 read back from the stream"
    );
    // The sender's other connections get them too, in order.
    let mut bob2 = n1.client("bob");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dm(&mut alice, "bob", "back", json!("hi"))["seq"], N + 1);
    assert_eq!(
        messages_until(&mut bob2, "dm:alice:bob", N + 1, Duration::from_secs(15)),
        vec![N + 1]
    );
}

#[test]
fn joined_members_count_users_on_every_node() {
    let redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "k1"), node(&redis, "k2"));
    let mut a = n1.client("ann");
    assert_eq!(join(&mut a, "count", None)["members"], 1);
    let mut b = n2.client("ben");
    assert_eq!(join(&mut b, "count", None)["members"], 2);
    // A second connection of a user already present adds no one.
    let mut a2 = n2.client("ann");
    assert_eq!(join(&mut a2, "count", None)["members"], 2);
    let mut c = n1.client("cat");
    assert_eq!(join(&mut c, "count", None)["members"], 3);
}

#[test]
fn retention_applies_to_the_redis_stream() {
    let redis = Redis::start(true);
    let url = redis.url();
    let by_count = Server::start(&[
        "--redis",
        &url,
        "--node-id",
        "r1",
        "--retention-messages",
        "5",
    ]);
    wait_ready(&by_count, true);
    let mut m = by_count.client("ret");
    join(&mut m, "kept", None);
    for i in 0..40 {
        assert_eq!(
            publish(&mut m, "kept", &format!("k{i}"), json!(i))["type"],
            "ack"
        );
    }
    // `MAXLEN ~` trims whole stream nodes: about 5 kept, never all 40.
    let kept = history(&mut m, "kept").len();
    assert!((5..40).contains(&kept), "{kept} messages kept");
    let j = join(&mut by_count.client("ret2"), "kept", Some(0));
    assert_eq!(j["recovered"], false, "{j}");

    let by_age = Server::start(&["--redis", &url, "--node-id", "r2", "--retention-age", "1s"]);
    wait_ready(&by_age, true);
    let mut m = by_age.client("age");
    join(&mut m, "aged", None);
    for i in 0..3 {
        assert_eq!(
            publish(&mut m, "aged", &format!("a{i}"), json!(i))["type"],
            "ack"
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(publish(&mut m, "aged", "fresh", json!("new"))["seq"], 4);
    let h = history(&mut m, "aged");
    let seqs: Vec<u64> = h.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4], "older than the age were trimmed: {h:?}");
    let key_ttl = redis.cmd(&["PTTL", "cc:{aged}:log"]);
    assert!(
        matches!(key_ttl, Some(redis::Value::Int(ms)) if ms > 0 && ms <= 1000),
        "an idle room's log expires as a whole: {key_ttl:?}"
    );
}

/// Joins, retrying while the node answers `unavailable` (it may not have
/// noticed yet that Redis came back empty).
fn join_retrying(c: &mut Client, room: &str, since: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.send_json(json!({"type": "join", "room": room, "id": "jr", "since": since}));
        let v = loop {
            let v = c.recv_json();
            if v["type"] == "joined" || (v["type"] == "error" && v["id"] == "jr") {
                break v;
            }
        };
        if v["type"] == "joined" {
            return v;
        }
        assert_eq!(v["code"], "unavailable", "{v}");
        assert!(Instant::now() < deadline, "join never succeeded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_restarted_empty_two_nodes_agree_on_the_new_history() {
    let mut redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "x1"), node(&redis, "x2"));
    let mut m1 = n1.client("xm1");
    let old = join(&mut m1, "again", None);
    let mut m2 = n2.client("xm2");
    join(&mut m2, "again", None);
    for i in 0..5 {
        assert_eq!(
            publish(&mut m1, "again", &format!("x{i}"), json!(i))["type"],
            "ack"
        );
    }
    redis.restart(true);
    assert_eq!(m1.recv_close(), Some(1012));
    assert_eq!(m2.recv_close(), Some(1012));
    // Each moves to the other node at once and resumes from what it had.
    let mut m1 = n2.client("xm1");
    let j1 = join_retrying(&mut m1, "again", 5);
    let mut m2 = n1.client("xm2");
    let j2 = join_retrying(&mut m2, "again", 5);
    assert_ne!(j1["epoch"], old["epoch"], "{old} {j1}");
    assert_eq!(j1["epoch"], j2["epoch"], "{j1} {j2}");
    for j in [&j1, &j2] {
        assert_eq!(j["recovered"], false, "{j}");
    }
    let ack = publish(&mut m1, "again", "new", json!("first of the new history"));
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(
        messages_until(&mut m2, "again", 1, Duration::from_secs(10)),
        vec![1]
    );
}

#[test]
fn a_node_killed_during_traffic_its_member_resumes_elsewhere_with_no_gap() {
    let redis = Redis::start(true);
    let fast = ["--rate-per-sec", "1000", "--burst", "1000"];
    let (n1, n2) = (
        node_with(&redis, "s1", &fast),
        node_with(&redis, "s2", &fast),
    );
    let mut m = n1.client("survivor");
    join(&mut m, "live", None);
    let mut p = n2.client("talker");
    join(&mut p, "live", None);
    const N: u64 = 300;
    let publisher = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..N {
            let v = publish(&mut p, "live", &format!("l{i}"), json!(i));
            assert_eq!(v["type"], "ack", "{v}");
            acked.push(v["seq"].as_u64().unwrap());
            std::thread::sleep(Duration::from_millis(2));
        }
        acked
    });
    // Let some traffic reach the member, then SIGKILL its node mid-stream.
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(m.recv_type("message")["seq"].as_u64().unwrap());
    }
    n1.signal(9);
    got.extend(messages_until_dropped(
        &mut m,
        "live",
        Duration::from_secs(10),
    ));
    let last = *got.last().unwrap();
    let mut m = n2.client("survivor");
    let j = join(&mut m, "live", Some(last));
    assert_eq!(j["recovered"], true, "{j}");
    let acked = publisher.join().unwrap();
    got.extend(messages_until(&mut m, "live", N, Duration::from_secs(15)));
    assert_eq!(acked, range(1, N));
    assert_eq!(
        got,
        range(1, N),
        "every acked message once, in order, across the move"
    );
}

#[test]
fn joined_reads_include_markers_set_on_other_nodes() {
    let redis = Redis::start(true);
    let (n1, n2) = (node(&redis, "q1"), node(&redis, "q2"));
    let mut bob = n2.client("bob");
    join(&mut bob, "seen", None);
    let mut alice = n1.client("alice");
    join(&mut alice, "seen", None);
    for i in 0..3 {
        assert_eq!(
            publish(&mut alice, "seen", &format!("s{i}"), json!(i))["type"],
            "ack"
        );
    }
    alice.send_json(json!({"type": "read", "room": "seen", "seq": 3}));
    let r = bob.recv_type("read");
    assert_eq!(
        (r["from"].as_str(), r["seq"].as_u64()),
        (Some("alice"), Some(3)),
        "{r}"
    );
    // Alice's marker was set through n1; carol joins on n2.
    let mut carol = n2.client("carol");
    carol.send_json(json!({"type": "join", "room": "seen", "id": "jc", "reads": true}));
    let j = carol.recv_type("joined");
    assert_eq!(j["reads"], json!({"alice": 3}), "{j}");
}
