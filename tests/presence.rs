//! Presence delivery through real sockets: deferred flush of presence
//! frames (`--presence-flush-ms`) and batched presence (`"presence":
//! "batched"`, `presence_diff`), on one shard, two shards and a cluster.

mod common;

use common::chat::*;
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn join_batched(c: &mut Client, room: &str) -> Value {
    let id = format!("jb-{room}");
    let j = request(
        c,
        json!({"type": "join", "room": room, "presence": "batched"}),
        &id,
    );
    assert_eq!(j["type"], "joined", "{j}");
    j
}

/// The next `presence_diff` of `room`; fails on an individual presence
/// frame of that room (a batched member must never get one).
fn next_diff(c: &mut Client, room: &str) -> Value {
    loop {
        let v = c.recv_json();
        if v["room"] != room {
            continue;
        }
        assert!(
            v["type"] != "user_joined" && v["type"] != "user_left",
            "a batched member got an individual presence frame: {v}"
        );
        if v["type"] == "presence_diff" {
            return v;
        }
    }
}

fn users_joined(diff: &Value) -> BTreeSet<String> {
    diff["joined"]
        .as_array()
        .expect("joined array")
        .iter()
        .map(|e| {
            assert!(e["name"].is_string(), "{diff}");
            e["user"].as_str().expect("user").to_string()
        })
        .collect()
}

fn users_left(diff: &Value) -> BTreeSet<String> {
    diff["left"]
        .as_array()
        .expect("left array")
        .iter()
        .map(|e| e.as_str().expect("user id").to_string())
        .collect()
}

fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| u.to_string()).collect()
}

// ----------------------------------------------------------------------
// deferred flush

/// A member sees `user_joined` before the message the new user publishes
/// right after joining (one queue: the message carries the deferred frame
/// with it), and a lone `user_joined` still arrives on its own.
fn order_and_lone_frames(flush_ms: &str) {
    let mut flags = vec!["--presence-flush-ms", flush_ms];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut obs = client(&srv, "obs");
    join_with(&mut obs, "r", None);
    let mut u = client(&srv, "u");
    join_with(&mut u, "r", None);
    let ack = request(
        &mut u,
        json!({"type": "publish", "room": "r", "body": "hi"}),
        "p1",
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    let first = obs.recv_json();
    assert_eq!(first["type"], "user_joined", "{first}");
    assert_eq!(first["user"], "u");
    let second = obs.recv_json();
    assert_eq!(second["type"], "message", "{second}");
    assert_eq!(second["body"], "hi");

    // Nothing else is written to obs: the frames leave by the deadline.
    let mut v = client(&srv, "v");
    join_with(&mut v, "r", None);
    assert_eq!(
        obs.recv_json(),
        json!({"type": "user_joined", "room": "r", "user": "v", "name": "Name v"})
    );
    v.close();
    let left = obs.recv_json();
    assert_eq!(left, json!({"type": "user_left", "room": "r", "user": "v"}));

    // typing is deferred too, and arrives.
    u.send_json(json!({"type": "typing", "room": "r"}));
    let t = obs.recv_json();
    assert_eq!(t["type"], "typing", "{t}");
    assert_eq!(t["from"], "u");
}

#[test]
fn deferred_presence_keeps_order_and_arrives() {
    order_and_lone_frames("300");
}

#[test]
fn presence_flush_zero_sends_at_once_as_before() {
    order_and_lone_frames("0");
}

/// However long the deferral (here a minute, never reached by the test), a
/// member holding eight deferred frames writes them at once: a storm's
/// longer wait never grows a queue past eight frames.
#[test]
fn eight_deferred_frames_leave_without_waiting_for_the_deadline() {
    let mut flags = vec![
        "--presence-flush-ms",
        "60000",
        "--presence-flush-max-ms",
        "60000",
        // No ping either: it would carry the frames with it.
        "--heartbeat-ms",
        "600000",
    ];
    flags.extend(FAST);
    let _joined = joins_reach_observer(&flags, "e", 8);
}

/// `n` users join room `r` one after another while `obs` is in it; `obs`
/// gets each one's `user_joined`, in order. The server and clients are
/// returned alive (a dropped client would send `user_left`).
fn joins_reach_observer(flags: &[&str], prefix: &str, n: usize) -> (Server, Client, Vec<Client>) {
    let srv = Server::start(flags);
    let mut obs = client(&srv, "obs");
    join_with(&mut obs, "r", None);
    let mut users = Vec::new();
    for i in 0..n {
        let mut c = client(&srv, &format!("{prefix}{i}"));
        join_with(&mut c, "r", None);
        users.push(c);
    }
    for i in 0..n {
        let v = obs.recv_json();
        assert_eq!(v["type"], "user_joined", "{v}");
        assert_eq!(v["user"], format!("{prefix}{i}"));
    }
    (srv, obs, users)
}

/// Many presence frames to one member, deferred: every one arrives, in
/// order, none lost or doubled.
#[test]
fn every_deferred_presence_frame_arrives() {
    let mut flags = vec!["--presence-flush-ms", "200"];
    flags.extend(FAST);
    let (_srv, mut obs, _users) = joins_reach_observer(&flags, "x", 30);
    assert_quiet(&mut obs, 100);
}

// ----------------------------------------------------------------------
// batched presence

#[test]
fn join_with_unknown_presence_mode_is_bad_request() {
    let srv = Server::start(&[]);
    let mut c = client(&srv, "a");
    for bad in [json!("Batched"), json!(true), json!(1)] {
        let req = json!({"type": "join", "room": "r", "presence": bad});
        expect_error(&mut c, req, "bad", "bad_request");
    }
    let j = request(
        &mut c,
        json!({"type": "join", "room": "r", "presence": "individual"}),
        "ok",
    );
    assert_eq!(j["type"], "joined", "{j}");
}

/// Joins that land in one window reach a batched member as one diff; a
/// plain member of the same room still gets one `user_joined` each.
#[test]
fn batched_member_gets_one_diff_plain_member_individual_frames() {
    let mut flags = vec!["--presence-batch-ms", "1500"];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut plain = client(&srv, "plain");
    join_with(&mut plain, "r", None);
    let mut b = client(&srv, "b");
    join_batched(&mut b, "r");
    let mut xs: Vec<Client> = (0..3).map(|i| client(&srv, &format!("x{i}"))).collect();
    // The three joins go out together, well inside one window.
    for (i, x) in xs.iter_mut().enumerate() {
        x.send_json(json!({"type": "join", "room": "r", "id": format!("j{i}")}));
    }
    for x in xs.iter_mut() {
        assert_eq!(x.recv_type("joined")["room"], "r");
    }
    let want = set(&["x0", "x1", "x2"]);
    // The first diff may be the one of b's own join (which lists b).
    let mut diff = next_diff(&mut b, "r");
    if users_joined(&diff) == set(&["b"]) {
        diff = next_diff(&mut b, "r");
    }
    let joined = users_joined(&diff);
    assert!(want.is_subset(&joined), "one diff with every join: {diff}");
    assert!(joined.is_subset(&set(&["b", "x0", "x1", "x2"])), "{diff}");
    assert!(users_left(&diff).is_empty(), "{diff}");
    let names: Vec<&Value> = diff["joined"].as_array().unwrap().iter().collect();
    assert!(names
        .iter()
        .any(|e| e["user"] == "x1" && e["name"] == "Name x1"));

    let mut seen = BTreeSet::new();
    while seen.len() < 4 {
        let v = plain.recv_json();
        assert_ne!(v["type"], "presence_diff", "a plain member got a diff: {v}");
        if v["type"] == "user_joined" {
            assert!(
                seen.insert(v["user"].as_str().unwrap().to_string()),
                "twice: {v}"
            );
        }
    }
    assert_eq!(seen, set(&["b", "x0", "x1", "x2"]));
    assert_quiet(&mut plain, 100);
}

/// A user who joins and leaves inside one window is in no diff; the diff
/// carries only what changed since the last one.
#[test]
fn join_and_leave_inside_a_window_net_out() {
    let mut flags = vec!["--presence-batch-ms", "1500"];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut b = client(&srv, "b");
    join_batched(&mut b, "r");
    let mut stay = client(&srv, "stay");
    join_with(&mut stay, "r", None);
    // b's first diff covers its own join and stay's.
    let mut seen = BTreeSet::new();
    while !seen.contains("stay") {
        let d = next_diff(&mut b, "r");
        assert!(users_left(&d).is_empty(), "{d}");
        seen.extend(users_joined(&d));
    }
    // A fresh window: ghost comes and goes, late comes, stay leaves.
    let mut ghost = client(&srv, "ghost");
    join_with(&mut ghost, "r", None);
    let left = request(&mut ghost, json!({"type": "leave", "room": "r"}), "l1");
    assert_eq!(left["type"], "left", "{left}");
    let mut late = client(&srv, "late");
    join_with(&mut late, "r", None);
    let left = request(&mut stay, json!({"type": "leave", "room": "r"}), "l2");
    assert_eq!(left["type"], "left", "{left}");
    let d = next_diff(&mut b, "r");
    assert_eq!(users_joined(&d), set(&["late"]), "{d}");
    assert_eq!(users_left(&d), set(&["stay"]), "{d}");
}

/// Batched members on both shards get the room's diff (encoded once at the
/// room's home, shared by every member shard).
#[test]
fn batched_members_on_two_shards_get_diffs() {
    let mut flags = vec!["--shards", "2", "--presence-batch-ms", "200"];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut members = spread_clients(&srv, "b", 2, 2);
    for c in members.iter_mut() {
        join_batched(c, "r");
    }
    let mut x = client(&srv, "newcomer");
    join_with(&mut x, "r", None);
    for c in members.iter_mut() {
        let mut seen = BTreeSet::new();
        while !seen.contains("newcomer") {
            seen.extend(users_joined(&next_diff(c, "r")));
        }
    }
    x.close();
    for c in members.iter_mut() {
        loop {
            let d = next_diff(c, "r");
            if users_left(&d).contains("newcomer") {
                break;
            }
        }
    }
}

// ----------------------------------------------------------------------
// cluster

fn cluster_node(redis: &Redis, id: &str) -> Server {
    let url = redis.url();
    let s = Server::start(&[
        "--redis",
        &url,
        "--node-id",
        id,
        "--shards",
        "2",
        "--presence-batch-ms",
        "300",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.http("GET", "/ready", &[], "").0 != 200 {
        assert!(Instant::now() < deadline, "/ready never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

/// In a cluster, presence changes on one node reach a batched member on
/// the other as diffs, and a plain member there as individual frames.
#[test]
fn cluster_batched_member_gets_diffs_of_other_nodes() {
    let redis = Redis::start(false);
    let (n1, n2) = (cluster_node(&redis, "p1"), cluster_node(&redis, "p2"));
    let mut b = with_timeout(n1.client("b"));
    join_batched(&mut b, "hall");
    let mut plain = with_timeout(n1.client("plain"));
    join_with(&mut plain, "hall", None);
    let mut far = with_timeout(n2.client("far"));
    join_with(&mut far, "hall", None);
    let mut seen = BTreeSet::new();
    while !seen.contains("far") {
        seen.extend(users_joined(&next_diff(&mut b, "hall")));
    }
    assert_eq!(plain.recv_type("user_joined")["user"], "far");
    far.close();
    loop {
        let d = next_diff(&mut b, "hall");
        if users_left(&d).contains("far") {
            break;
        }
    }
    assert_eq!(plain.recv_type("user_left")["user"], "far");
}
