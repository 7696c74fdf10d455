//! Chat semantics through real sockets: PROTOCOL.md sections 3 to 5 and the
//! HTTP API of section 7.
mod common;

use common::chat::*;
use common::*;
use corechat::auth::now_secs;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tungstenite::Message;

// ----------------------------------------------------------------------
// 5.2 ordering and fan-out

#[test]
fn members_on_every_shard_receive_every_message_in_order() {
    for shards in [2usize, 4] {
        let sh = shards.to_string();
        let mut flags = vec!["--shards", &sh];
        flags.extend(FAST);
        let srv = Server::start(&flags);
        let mut clients = spread_clients(&srv, "m", shards, shards * 2);
        let n = clients.len();
        for c in clients.iter_mut() {
            let j = join_with(c, "lobby", None);
            assert_eq!(j["seq"], 0);
            assert_eq!(j["recovered"], true);
            assert!(j["epoch"].is_string());
        }
        // Every member publishes some, without waiting: the home numbers them.
        let per = 5;
        for k in 0..per {
            for (p, c) in clients.iter_mut().enumerate() {
                c.send_json(json!({"type": "publish", "room": "lobby", "id": format!("{p}-{k}"), "body": {"p": p, "k": k}}));
            }
        }
        let total = n * per;
        let mut reference: Option<Vec<Value>> = None;
        let mut acked: BTreeMap<u64, String> = BTreeMap::new();
        for (p, c) in clients.iter_mut().enumerate() {
            let mut msgs = Vec::new();
            let mut acks = 0;
            while msgs.len() < total || acks < per {
                let v = c.recv_json();
                match v["type"].as_str() {
                    Some("message") => msgs.push(v),
                    Some("ack") => {
                        acks += 1;
                        let prev = acked.insert(
                            v["seq"].as_u64().unwrap(),
                            v["id"].as_str().unwrap().to_string(),
                        );
                        assert!(prev.is_none(), "seq acked twice: {v}");
                        assert!(v["id"].as_str().unwrap().starts_with(&format!("{p}-")));
                    }
                    Some("user_joined") => {}
                    _ => panic!("unexpected frame {v}"),
                }
            }
            assert_eq!(
                seqs(&msgs),
                (1..=total as u64).collect::<Vec<_>>(),
                "shards={shards} member {p}"
            );
            match &reference {
                None => reference = Some(msgs),
                Some(r) => assert_eq!(r, &msgs, "member {p} saw a different stream"),
            }
        }
        // Acks and messages agree: seq s is the message whose id was acked as s.
        let r = reference.unwrap();
        assert_eq!(acked.len(), total);
        for m in &r {
            let id = &acked[&m["seq"].as_u64().unwrap()];
            assert_eq!(format!("{}-{}", m["body"]["p"], m["body"]["k"]), *id);
            assert_eq!(m["from"], format!("m{}", m["body"]["p"]));
            assert_eq!(m["name"], format!("Name m{}", m["body"]["p"]));
            assert!(m["ts"].as_u64().is_some());
        }
    }
}

#[test]
fn concurrent_publishers_give_every_member_the_same_contiguous_sequence() {
    for shards in [2usize, 4] {
        let sh = shards.to_string();
        let mut flags = vec!["--shards", &sh];
        flags.extend(FAST);
        let srv = Server::start(&flags);
        let mut observers = spread_clients(&srv, "obs", shards, 3);
        for c in observers.iter_mut() {
            join_with(c, "busy", None);
        }
        let per = 150u64;
        let mut publishers = Vec::new();
        for p in 0..3 {
            let mut c = client(&srv, &format!("pub{p}"));
            join_with(&mut c, "busy", None);
            publishers.push(c);
        }
        let total = 3 * per;
        let handles: Vec<_> = publishers
            .into_iter()
            .enumerate()
            .map(|(p, mut c)| {
                thread::spawn(move || {
                    let tag = format!("pub{p}");
                    let (acks, mut msgs) = publish_n(&mut c, "busy", &tag, per, None);
                    while (msgs.len() as u64) < total {
                        msgs.push(next_message(&mut c, "busy"));
                    }
                    (tag, acks, msgs)
                })
            })
            .collect();
        let mut streams = Vec::new();
        for c in observers.iter_mut() {
            streams.push(messages(c, "busy", total as usize));
        }
        let mut all_acks = Vec::new();
        for h in handles {
            let (tag, acks, msgs) = h.join().expect("publisher thread");
            // A publisher's own messages carry the seqs it was acked with.
            for (i, &seq) in acks.iter().enumerate() {
                let m = &msgs[seq as usize - 1];
                assert_eq!(m["body"], json!({"p": tag, "i": i}), "seq {seq}");
                assert_eq!(m["from"], tag);
            }
            all_acks.extend(acks);
            streams.push(msgs);
        }
        all_acks.sort_unstable();
        assert_eq!(
            all_acks,
            (1..=total).collect::<Vec<_>>(),
            "acks are 1..N without gaps or repeats"
        );
        for (i, s) in streams.iter().enumerate() {
            assert_eq!(
                seqs(s),
                (1..=total).collect::<Vec<_>>(),
                "shards={shards} stream {i}"
            );
            assert_eq!(s, &streams[0], "stream {i} differs");
        }
    }
}

// ----------------------------------------------------------------------
// 5.3 resume

/// A member reads a room while a publisher publishes `total` messages; it
/// disconnects several times and rejoins with `since` once the publisher is
/// at least `gap` messages further. It must see exactly 1..total.
fn resume_while_publishing(flags: &[&str], gap: u64) {
    let srv = Server::start(flags);
    let total = 240u64;
    let (mut m, _) = connect(&srv, "member");
    let first = join_with(&mut m, "feed", None);
    let epoch = first["epoch"].clone();
    let progress = Arc::new(AtomicU64::new(0));
    let mut publisher = client(&srv, "publisher");
    join_with(&mut publisher, "feed", None);
    let prog = progress.clone();
    let handle = thread::spawn(move || publish_n(&mut publisher, "feed", "p", total, Some(&prog)));
    let mut seen: Vec<u64> = Vec::new();
    let mut rejoins = 0;
    let mut last = 0u64;
    while last < total {
        let v = next_message(&mut m, "feed");
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "gap or duplicate after {last}: {v}");
        assert_eq!(v["body"]["i"], seq - 1);
        seen.push(seq);
        last = seq;
        if seq.is_multiple_of(60) && seq < total {
            // Disconnect (alternately clean close and plain drop), wait for
            // the publisher to move on, then resume.
            if rejoins % 2 == 0 {
                m.close();
            } else {
                drop(m);
            }
            let want = (last + gap).min(total);
            wait_until("publisher progress", || {
                progress.load(Ordering::SeqCst) >= want
            });
            m = client(&srv, "member");
            let j = join_with(&mut m, "feed", Some(last));
            assert_eq!(j["recovered"], true, "{j}");
            assert_eq!(j["epoch"], epoch);
            assert!(j["seq"].as_u64().unwrap() >= want, "{j}");
            rejoins += 1;
        }
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    assert_eq!(rejoins, 3);
    let (acks, _) = handle.join().unwrap();
    assert_eq!(acks, (1..=total).collect::<Vec<_>>());
    // Nothing more after the last one (the publisher's user_left may come).
    quiet_except(&mut m, 300, &["user_left"]);
}

#[test]
fn resume_with_since_memory_store() {
    let mut flags = vec!["--shards", "2"];
    flags.extend(FAST);
    resume_while_publishing(&flags, 20);
}

#[test]
fn resume_with_since_sqlite_replays_from_disk() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut flags = vec![
        "--shards",
        "2",
        "--store",
        "sqlite",
        "--data-dir",
        &d,
        "--history-ring",
        "10",
    ];
    flags.extend(FAST);
    // The gap is larger than the ring, so the replay comes from the store.
    resume_while_publishing(&flags, 35);
}

#[test]
fn resume_reports_not_recovered_when_history_was_dropped() {
    let mut flags = vec!["--shards", "2", "--history-ring", "5"];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut p = client(&srv, "p");
    join_with(&mut p, "short", None);
    let (acks, _) = publish_n(&mut p, "short", "p", 20, None);
    assert_eq!(acks, (1..=20).collect::<Vec<_>>());

    let mut m = client(&srv, "m");
    let j = join_with(&mut m, "short", Some(1));
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["seq"], 20);
    // The replay starts at the oldest held message.
    assert_eq!(
        seqs(&messages(&mut m, "short", 5)),
        vec![16, 17, 18, 19, 20]
    );
    // Live messages follow without gap.
    p.send_json(json!({"type": "publish", "room": "short", "body": "live", "id": 99}));
    let live = next_message(&mut m, "short");
    assert_eq!(live["seq"], 21);
    assert_eq!(live["body"], "live");

    // A since the ring still covers is recovered.
    let mut m2 = client(&srv, "m2");
    let j = join_with(&mut m2, "short", Some(18));
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(seqs(&messages(&mut m2, "short", 3)), vec![19, 20, 21]);
    // A since at the head replays nothing.
    let mut m3 = client(&srv, "m3");
    let j = join_with(&mut m3, "short", Some(21));
    assert_eq!(j["recovered"], true, "{j}");
    p.send_json(json!({"type": "publish", "room": "short", "body": "next", "id": 100}));
    assert_eq!(next_message(&mut m3, "short")["seq"], 22);
}

/// PROTOCOL.md 5.2: a `since` above the room's latest seq can only come
/// from an older epoch, so the server treats it as 0: the whole history is
/// replayed, with `recovered: false`.
#[test]
fn since_beyond_the_latest_seq_replays_everything() {
    for store in ["memory", "sqlite"] {
        let dir = tempdir();
        let d = dir.path().to_str().unwrap().to_string();
        let mut flags = vec!["--shards", "2", "--store", store, "--data-dir", &d];
        flags.extend(FAST);
        let srv = Server::start(&flags);
        let mut p = client(&srv, "p");
        join_with(&mut p, "renumbered", None);
        let (acks, _) = publish_n(&mut p, "renumbered", "p", 3, None);
        assert_eq!(acks, vec![1, 2, 3]);
        let mut m = client(&srv, "m");
        let j = join_with(&mut m, "renumbered", Some(50));
        assert_eq!(j["seq"], 3, "{store}: {j}");
        assert_eq!(j["recovered"], false, "{store}: {j}");
        assert_eq!(
            seqs(&messages(&mut m, "renumbered", 3)),
            vec![1, 2, 3],
            "{store}: the new epoch's history is replayed"
        );
    }
}

// ----------------------------------------------------------------------
// DMs

#[test]
fn dms_reach_both_users_everywhere_and_nobody_else() {
    const ROOM: &str = "dm:alice:bob";
    for shards in [2usize, 4] {
        let sh = shards.to_string();
        let srv = Server::start(&["--shards", &sh]);
        // Several connections per user so they land on different shards.
        let mut bobs: Vec<Client> = (0..3).map(|_| client(&srv, "bob")).collect();
        let mut alices: Vec<Client> = (0..3).map(|_| client(&srv, "alice")).collect();
        let mut carol = client(&srv, "carol");
        // The sender's message and its ack travel different paths: either
        // may come first.
        let (ack, m1) = reply_and_messages(
            &mut bobs[0],
            json!({"type": "dm", "to": "alice", "body": {"t": "hi alice"}}),
            "d1",
            ROOM,
            1,
        );
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["room"], ROOM);
        assert_eq!(ack["seq"], 1);
        let (ack2, m2) = reply_and_messages(
            &mut alices[1],
            json!({"type": "dm", "to": "bob", "body": "hi bob"}),
            "d2",
            ROOM,
            2,
        );
        assert_eq!(ack2["room"], ROOM);
        assert_eq!(ack2["seq"], 2);
        assert_eq!(seqs(&m1), vec![1]);
        assert_eq!(seqs(&m2), vec![1, 2]);
        bobs[0].send_json(json!({"type": "ping", "id": "sync"}));
        let mut streams: Vec<Vec<Value>> = Vec::new();
        for (i, c) in alices.iter_mut().chain(bobs.iter_mut()).enumerate() {
            let ms = match i {
                1 => m2.clone(),
                3 => {
                    let mut ms = m1.clone();
                    ms.extend(messages(c, ROOM, 1));
                    ms
                }
                _ => messages(c, ROOM, 2),
            };
            assert_eq!(seqs(&ms), vec![1, 2], "connection {i}");
            assert_eq!(ms[0]["from"], "bob");
            assert_eq!(ms[0]["name"], "Name bob");
            assert_eq!(ms[0]["body"], json!({"t": "hi alice"}));
            assert_eq!(ms[1]["from"], "alice");
            assert_eq!(ms[1]["body"], "hi bob");
            streams.push(ms);
        }
        // carol: no frame, cannot join, read or write the room.
        assert_quiet(&mut carol, 500);
        expect_error(
            &mut carol,
            json!({"type": "join", "room": ROOM}),
            "c1",
            "forbidden",
        );
        expect_error(
            &mut carol,
            json!({"type": "history", "room": ROOM}),
            "c2",
            "forbidden",
        );
        expect_error(
            &mut carol,
            json!({"type": "publish", "room": ROOM, "body": 1}),
            "c3",
            "not_joined",
        );
        // Participants may read and join it; a join with since replays.
        let h = request(
            &mut alices[0],
            json!({"type": "history", "room": ROOM}),
            "h",
        );
        assert_eq!(h["type"], "history", "{h}");
        assert_eq!(seqs(h["messages"].as_array().unwrap()), vec![1, 2]);
        let j = join_with(&mut bobs[2], ROOM, Some(0));
        assert_eq!(j["seq"], 2);
        assert_eq!(j["recovered"], true);
        assert_eq!(seqs(&messages(&mut bobs[2], ROOM, 2)), vec![1, 2]);
        // A later DM reaches every connection exactly once, the joined one too.
        let (ack3, mut m3) = reply_and_messages(
            &mut alices[0],
            json!({"type": "dm", "to": "bob", "body": 3}),
            "d3",
            ROOM,
            1,
        );
        assert_eq!(ack3["seq"], 3);
        assert_eq!(seqs(&m3), vec![3]);
        for (i, c) in alices.iter_mut().chain(bobs.iter_mut()).enumerate() {
            if i != 0 {
                m3 = vec![next_message(c, ROOM)];
            }
            assert_eq!(seqs(&m3), vec![3], "connection {i}");
        }
        for c in alices.iter_mut().chain(bobs.iter_mut()) {
            quiet_except(c, 200, &["user_joined", "pong"]);
        }
        assert_quiet(&mut carol, 200);
        // A new connection of alice receives later DMs without any join.
        let mut late = client(&srv, "alice");
        let (ack4, _) = reply_and_messages(
            &mut bobs[1],
            json!({"type": "dm", "to": "alice", "body": 4}),
            "d4",
            ROOM,
            0,
        );
        assert_eq!(ack4["seq"], 4);
        assert_eq!(next_message(&mut late, ROOM)["seq"], 4);
        // A DM to oneself or to an invalid id is refused.
        expect_error(
            &mut carol,
            json!({"type": "dm", "to": "carol", "body": 1}),
            "self",
            "bad_request",
        );
        expect_error(
            &mut carol,
            json!({"type": "dm", "to": "no body", "body": 1}),
            "inv",
            "bad_request",
        );
    }
}

// ----------------------------------------------------------------------
// Presence, typing, read

#[test]
fn presence_counts_users_not_connections() {
    let srv = Server::start(&["--shards", "2"]);
    let mut obs = client(&srv, "obs");
    join_with(&mut obs, "hall", None);
    let mut u1 = client(&srv, "u");
    let mut u2 = client(&srv, "u");

    let j = join_with(&mut u1, "hall", None);
    assert_eq!(j["members"], 2);
    let uj = obs.recv_json();
    assert_eq!(
        uj,
        json!({"type": "user_joined", "room": "hall", "user": "u", "name": "Name u"})
    );

    let j = join_with(&mut u2, "hall", None);
    assert_eq!(
        j["members"], 2,
        "a second connection is not a second member"
    );
    // No second user_joined: the next frame obs sees is u2's message (the
    // join and the publish travel the same path, in order).
    u2.send_json(json!({"type": "publish", "room": "hall", "body": "from u2"}));
    let next = obs.recv_json();
    assert_eq!(
        next["type"], "message",
        "no second user_joined expected: {next}"
    );

    let p = request(&mut obs, json!({"type": "presence", "room": "hall"}), "pr");
    assert_eq!(p["type"], "presence");
    let mut users: Vec<String> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, vec!["obs", "u"]);
    assert!(p["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "Name u"));

    // u1 leaves, then rejoins and publishes: no user_left, no user_joined.
    let left = request(&mut u1, json!({"type": "leave", "room": "hall"}), "lv");
    assert_eq!(left, json!({"type": "left", "id": "lv", "room": "hall"}));
    join_with(&mut u1, "hall", None);
    u1.send_json(json!({"type": "publish", "room": "hall", "body": "from u1"}));
    let next = obs.recv_json();
    assert_eq!(next["type"], "message", "u still has a connection: {next}");
    assert_eq!(next["body"], "from u1");

    // u1 disconnects: u is still present through u2.
    let open = srv.metric("corechat_connections_open", None);
    drop(u1);
    wait_until("u1 closed", || {
        srv.metric("corechat_connections_open", None) < open
    });
    let p = request(&mut obs, json!({"type": "presence", "room": "hall"}), "pr2");
    assert_eq!(p["users"].as_array().unwrap().len(), 2, "{p}");
    // u2, the last connection, leaves: now user_left.
    request(&mut u2, json!({"type": "leave", "room": "hall"}), "lv2");
    let ul = obs.recv_json();
    assert_eq!(
        ul,
        json!({"type": "user_left", "room": "hall", "user": "u"})
    );
    let p = request(&mut obs, json!({"type": "presence", "room": "hall"}), "pr3");
    assert_eq!(p["users"], json!([{"user": "obs", "name": "Name obs"}]));

    // Same with the last connection disconnecting instead of leaving.
    let mut v1 = client(&srv, "v");
    let mut v2 = client(&srv, "v");
    join_with(&mut v1, "hall", None);
    assert_eq!(obs.recv_json()["type"], "user_joined");
    join_with(&mut v2, "hall", None);
    v1.close();
    v2.send_json(json!({"type": "publish", "room": "hall", "body": "v2 here"}));
    assert_eq!(obs.recv_json()["type"], "message");
    drop(v2);
    let ul = obs.recv_json();
    assert_eq!(
        ul,
        json!({"type": "user_left", "room": "hall", "user": "v"})
    );
}

#[test]
fn typing_and_read_reach_other_members_only() {
    for shards in [2usize, 4] {
        let sh = shards.to_string();
        let srv = Server::start(&["--shards", &sh]);
        let mut a = client(&srv, "a");
        let mut a2 = client(&srv, "a");
        let mut others = spread_clients(&srv, "o", shards, 3);
        join_with(&mut a, "team", None);
        join_with(&mut a2, "team", None);
        for o in others.iter_mut() {
            join_with(o, "team", None);
        }
        let (acks, _) = publish_n(&mut a, "team", "a", 3, None);
        assert_eq!(acks, vec![1, 2, 3]);

        a.send_json(json!({"type": "typing", "room": "team", "id": "t"}));
        a.send_json(json!({"type": "read", "room": "team", "seq": 2, "id": "r"}));
        // A marker message from a: typing and read were sent before it on
        // the same path, so they arrive before it where they arrive at all.
        a.send_json(json!({"type": "publish", "room": "team", "body": "marker", "id": "m"}));
        for o in others.iter_mut() {
            let mut frames = Vec::new();
            loop {
                let v = o.recv_json();
                if v["type"] == "message" && v["body"] == "marker" {
                    break;
                }
                if v["type"] == "message" || v["type"] == "user_joined" {
                    continue;
                }
                frames.push(v);
            }
            assert_eq!(
                frames,
                vec![
                    json!({"type": "typing", "room": "team", "from": "a"}),
                    json!({"type": "read", "room": "team", "from": "a", "seq": 2})
                ]
            );
        }
        // Neither the sender nor the sender's other connection gets them.
        for c in [&mut a, &mut a2] {
            loop {
                let v = c.recv_json();
                assert_ne!(v["type"], "typing", "{v}");
                assert_ne!(v["type"], "read", "{v}");
                assert_ne!(v["type"], "error", "{v}");
                if v["type"] == "message" && v["body"] == "marker" {
                    break;
                }
            }
        }
        // The marker comes back on join and in rooms.
        let mut a3 = client(&srv, "a");
        let j = join_with(&mut a3, "team", None);
        assert_eq!(j["read"], 2);
        let j = join_with(&mut others[0], "team", None);
        assert_eq!(j["read"], 0);
        let r = request(&mut a3, json!({"type": "rooms"}), "rooms");
        assert_eq!(r["rooms"], json!([{"room": "team", "seq": 4, "read": 2}]));
        // A marker never goes backwards.
        a.send_json(json!({"type": "read", "room": "team", "seq": 1}));
        a.send_json(json!({"type": "read", "room": "team", "seq": 4}));
        loop {
            let v = others[1].recv_json();
            if v["type"] == "read" && v["seq"] == 4 {
                break;
            }
        }
        let r = request(&mut a3, json!({"type": "rooms"}), "rooms2");
        assert_eq!(r["rooms"], json!([{"room": "team", "seq": 4, "read": 4}]));
    }
}

// ----------------------------------------------------------------------
// history and rooms

fn check_history_paging(flags: &[&str]) {
    let srv = Server::start(flags);
    let mut c = client(&srv, "h");
    join_with(&mut c, "hist", None);
    let (acks, _) = publish_n(&mut c, "hist", "h", 30, None);
    assert_eq!(acks, (1..=30).collect::<Vec<_>>());
    let mut other = client(&srv, "reader");
    let mut hist = |req: Value| -> (Vec<u64>, bool) {
        let mut r = req;
        r["type"] = json!("history");
        r["room"] = json!("hist");
        let v = request(&mut other, r, "h");
        assert_eq!(v["type"], "history", "{v}");
        assert_eq!(v["room"], "hist");
        let msgs = v["messages"].as_array().unwrap();
        for m in msgs {
            assert!(m.get("type").is_none(), "history items have no type: {m}");
            assert_eq!(m["room"], "hist");
            assert_eq!(m["from"], "h");
            assert_eq!(m["name"], "Name h");
            assert_eq!(
                m["body"],
                json!({"p": "h", "i": m["seq"].as_u64().unwrap() - 1})
            );
        }
        (seqs(msgs), v["has_more"].as_bool().unwrap())
    };
    let range = |a: u64, b: u64| (a..=b).collect::<Vec<u64>>();
    assert_eq!(hist(json!({})), (range(1, 30), false));
    assert_eq!(hist(json!({"limit": 10})), (range(21, 30), true));
    assert_eq!(
        hist(json!({"before": 21, "limit": 10})),
        (range(11, 20), true)
    );
    assert_eq!(
        hist(json!({"before": 11, "limit": 10})),
        (range(1, 10), false)
    );
    assert_eq!(hist(json!({"before": 11})), (range(1, 10), false));
    assert_eq!(hist(json!({"before": 1})), (vec![], false));
    assert_eq!(hist(json!({"after": 25})), (range(26, 30), false));
    assert_eq!(
        hist(json!({"after": 25, "limit": 2})),
        (range(26, 27), true)
    );
    assert_eq!(
        hist(json!({"after": 0, "limit": 100})),
        (range(1, 30), false)
    );
    assert_eq!(hist(json!({"after": 5, "limit": 5})), (range(6, 10), true));
    assert_eq!(hist(json!({"after": 5, "before": 9})), (range(6, 8), false));
    assert_eq!(hist(json!({"after": 30})), (vec![], false));
    assert_eq!(hist(json!({"limit": 1})), (vec![30], true));
    // A room that never had a message.
    let v = request(&mut other, json!({"type": "history", "room": "empty"}), "e");
    assert_eq!(v["messages"], json!([]));
    assert_eq!(v["has_more"], false);
}

#[test]
fn history_paging_memory_store() {
    let mut flags = vec!["--shards", "2"];
    flags.extend(FAST);
    check_history_paging(&flags);
}

#[test]
fn history_paging_sqlite_store() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut flags = vec![
        "--shards",
        "2",
        "--store",
        "sqlite",
        "--data-dir",
        &d,
        "--history-ring",
        "10",
    ];
    flags.extend(FAST);
    check_history_paging(&flags);
}

#[test]
fn rooms_lists_joined_and_dm_rooms() {
    let srv = Server::start(&["--shards", "2"]);
    let mut u = client(&srv, "u");
    let r = request(&mut u, json!({"type": "rooms"}), "r0");
    assert_eq!(r, json!({"type": "rooms", "id": "r0", "rooms": []}));
    join_with(&mut u, "alpha", None);
    join_with(&mut u, "beta", None);
    join_with(&mut u, "gamma", None);
    publish_n(&mut u, "beta", "u", 2, None);
    let ack = request(&mut u, json!({"type": "dm", "to": "w", "body": "x"}), "dm");
    assert_eq!(ack["room"], "dm:u:w");
    // read has no reply; the rooms below is answered after it.
    u.send_json(json!({"type": "read", "room": "beta", "seq": 1}));
    let r = request(&mut u, json!({"type": "rooms"}), "r1");
    assert_eq!(
        r["rooms"],
        json!([
            {"room": "alpha", "seq": 0, "read": 0},
            {"room": "beta", "seq": 2, "read": 1},
            {"room": "dm:u:w", "seq": 1, "read": 0},
            {"room": "gamma", "seq": 0, "read": 0},
        ])
    );
    // The other DM participant lists the DM too; leave drops a room.
    let mut w = client(&srv, "w");
    let r = request(&mut w, json!({"type": "rooms"}), "rw");
    assert_eq!(r["rooms"], json!([{"room": "dm:u:w", "seq": 1, "read": 0}]));
    request(&mut u, json!({"type": "leave", "room": "gamma"}), "lv");
    let r = request(&mut u, json!({"type": "rooms"}), "r2");
    let names: Vec<&str> = r["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["room"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["alpha", "beta", "dm:u:w"]);
}

// ----------------------------------------------------------------------
// Errors

#[test]
fn every_error_code_keeps_the_connection_and_the_id() {
    let srv = Server::start(&["--shards", "2", "--max-body-bytes", "100"]);
    let mut c = client(&srv, "e");
    // Not JSON, not an object: bad_request without an id to echo.
    for raw in ["nope", "[1,2]", "42", "\"str\"", "{\"type\":"] {
        c.send_text(raw);
        let v = c.recv_json();
        assert_eq!(v["type"], "error", "{raw}");
        assert_eq!(v["code"], "bad_request", "{raw}");
        assert!(v.get("id").is_none(), "{raw}: {v}");
    }
    assert_alive(&mut c);
    // bad_request with an id.
    let cases = [
        json!({"room": "r"}),
        json!({"type": 5}),
        json!({"type": "join"}),
        json!({"type": "join", "room": 5}),
        json!({"type": "join", "room": "r", "since": -1}),
        json!({"type": "join", "room": "r", "since": "3"}),
        json!({"type": "join", "room": "r", "since": 1.5}),
        json!({"type": "publish", "room": "r"}),
        json!({"type": "dm", "body": 1}),
        json!({"type": "dm", "to": 7, "body": 1}),
        json!({"type": "history", "room": "r", "limit": 0}),
        json!({"type": "history", "room": "r", "limit": 101}),
        json!({"type": "history", "room": "r", "before": "x"}),
        json!({"type": "read", "room": "r"}),
        json!({"type": "read", "room": "r", "seq": "1"}),
        json!({"type": "leave"}),
    ];
    for (i, req) in cases.iter().enumerate() {
        expect_error(&mut c, req.clone(), &format!("b{i}"), "bad_request");
    }
    // A numeric id is echoed as a number.
    c.send_json(json!({"type": "fly", "id": 12}));
    let v = c.recv_json();
    assert_eq!(v["id"], 12);
    assert_eq!(v["code"], "unknown_type");
    // Bad ids: bad_request (no id to echo).
    for id in [
        json!([1]),
        json!({"a": 1}),
        json!(true),
        json!("x".repeat(65)),
    ] {
        c.send_json(json!({"type": "ping", "id": id}));
        let v = c.recv_json();
        assert_eq!(v["type"], "error", "id {id}: {v}");
        assert_eq!(v["code"], "bad_request", "id {id}");
    }
    // An id of exactly 64 characters is fine.
    let id64 = "i".repeat(64);
    let v = request(&mut c, json!({"type": "ping"}), &id64);
    assert_eq!(v["type"], "pong");
    expect_error(&mut c, json!({"type": "fly"}), "u", "unknown_type");
    for room in ["-bad", "", "a b", "_x", &"r".repeat(129), "ümlaut"] {
        expect_error(
            &mut c,
            json!({"type": "join", "room": room}),
            "inv",
            "invalid_room",
        );
    }
    expect_error(
        &mut c,
        json!({"type": "history", "room": "bad room"}),
        "inv2",
        "invalid_room",
    );
    // not_joined
    for req in [
        json!({"type": "publish", "room": "r", "body": 1}),
        json!({"type": "typing", "room": "r"}),
        json!({"type": "read", "room": "r", "seq": 1}),
        json!({"type": "presence", "room": "r"}),
        json!({"type": "leave", "room": "r"}),
    ] {
        expect_error(&mut c, req, "nj", "not_joined");
    }
    // too_large: a body over --max-body-bytes 100.
    join_with(&mut c, "r", None);
    let big = "x".repeat(150);
    expect_error(
        &mut c,
        json!({"type": "publish", "room": "r", "body": big}),
        "tl",
        "too_large",
    );
    expect_error(
        &mut c,
        json!({"type": "dm", "to": "f", "body": big}),
        "tl2",
        "too_large",
    );
    // Exactly at the limit is accepted (serialized size 100).
    let fits = "y".repeat(98);
    let v = request(
        &mut c,
        json!({"type": "publish", "room": "r", "body": fits}),
        "fits",
    );
    assert_eq!(v["type"], "ack", "{v}");
    // publish into a dm room is not the way to write a DM.
    let ack = request(&mut c, json!({"type": "dm", "to": "f", "body": 1}), "dmok");
    assert_eq!(ack["room"], "dm:e:f");
    join_with(&mut c, "dm:e:f", None);
    let v = request(
        &mut c,
        json!({"type": "publish", "room": "dm:e:f", "body": 1}),
        "pdm",
    );
    assert_eq!(v["type"], "error", "{v}");
    assert_alive(&mut c);

    // forbidden: a token limited to team-* rooms.
    let tok = authenticator()
        .mint(
            "lim",
            None,
            Some(3600),
            Some(&["team-*".to_string()]),
            false,
            now_secs(),
        )
        .unwrap();
    let (mut l, _) = connect_token(&srv, &tok);
    expect_error(
        &mut l,
        json!({"type": "join", "room": "lobby"}),
        "f1",
        "forbidden",
    );
    expect_error(
        &mut l,
        json!({"type": "history", "room": "lobby"}),
        "f2",
        "forbidden",
    );
    expect_error(
        &mut l,
        json!({"type": "join", "room": "dm:a:b"}),
        "f3",
        "forbidden",
    );
    let j = join_with(&mut l, "team-blue", None);
    assert_eq!(j["seq"], 0);
    let v = request(
        &mut l,
        json!({"type": "publish", "room": "team-blue", "body": "ok"}),
        "ok",
    );
    assert_eq!(v["type"], "ack");
    assert_alive(&mut l);
    assert_alive(&mut c);
}

#[test]
fn rate_limit_answers_with_retry_after() {
    let srv = Server::start(&["--shards", "2", "--rate-per-sec", "2", "--burst", "2"]);
    let mut c = client(&srv, "r");
    join_with(&mut c, "rl", None);
    // Six at once: at 2/s with a burst of 2 some are refused (six would
    // need two seconds), fewer than the abuse threshold.
    for i in 0..6 {
        c.send_json(json!({"type": "publish", "room": "rl", "body": i, "id": i}));
    }
    let mut acks = 0;
    let mut limited = 0;
    let mut replies = 0;
    while replies < 6 {
        let v = c.recv_json();
        match v["type"].as_str() {
            Some("ack") => {
                acks += 1;
                replies += 1;
            }
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                assert!(v["id"].as_u64().is_some(), "error carries the id: {v}");
                let ms = v["retry_after_ms"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("retry_after_ms missing: {v}"));
                assert!((1..=1000).contains(&ms), "{v}");
                limited += 1;
                replies += 1;
            }
            _ => {}
        }
    }
    assert!(acks >= 2, "the burst is admitted");
    assert!(limited >= 1, "some were refused");
    assert_alive(&mut c);
    // dm and typing count too (a fresh connection: a fresh bucket).
    for kind in ["dm", "typing"] {
        let mut d = client(&srv, "r");
        join_with(&mut d, "rl", None);
        for i in 0..6 {
            let req = if kind == "dm" {
                json!({"type": "dm", "to": "z", "body": i, "id": i})
            } else {
                json!({"type": "typing", "room": "rl", "id": i})
            };
            d.send_json(req);
        }
        // typing has no reply when admitted: a ping after them bounds the wait.
        d.send_json(json!({"type": "ping", "id": "end"}));
        let mut limited = 0;
        loop {
            let v = d.recv_json();
            if v["type"] == "pong" {
                break;
            }
            if v["type"] == "error" {
                assert_eq!(v["code"], "rate_limited", "{v}");
                assert!(v["retry_after_ms"].as_u64().is_some(), "{v}");
                limited += 1;
            }
        }
        assert!(limited >= 1, "{kind} is rate limited");
    }
    assert!(srv.metric("corechat_rate_limited_total", None) >= 1.0);
}

#[test]
fn persistent_rate_abuse_closes_1008() {
    let srv = Server::start(&["--shards", "2", "--rate-per-sec", "2", "--burst", "2"]);
    let mut c = client(&srv, "abuser");
    join_with(&mut c, "rl", None);
    let abuse_before = disconnects(&srv, "abuse");
    for i in 0..200 {
        if c.ws
            .send(Message::text(
                json!({"type": "publish", "room": "rl", "body": i, "id": i}).to_string(),
            ))
            .is_err()
        {
            break;
        }
    }
    // What arrives: acks for the burst and `rate_limited` errors (the
    // client is told first), then close 1008, and nothing after it.
    let mut acks = 0;
    let mut limited = 0;
    let code = loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    // (a token that refilled meanwhile may admit one more)
                    Some("ack") => acks += 1,
                    Some("error") => {
                        assert_eq!(v["code"], "rate_limited", "{v}");
                        assert!(v["retry_after_ms"].as_u64().is_some(), "{v}");
                        limited += 1;
                    }
                    Some("message") => {}
                    _ => panic!("unexpected frame before the close: {v}"),
                }
            }
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => {}
            Err(e) => panic!("the stream ended without a close frame: {e}"),
        }
    };
    assert_eq!(code, 1008, "abuse closes with 1008");
    assert!(acks <= 5, "about the burst is admitted: {acks} acks");
    assert!(
        limited >= 1,
        "the client is told rate_limited before it is closed"
    );
    wait_until("the abuse disconnect is counted", || {
        disconnects(&srv, "abuse") >= abuse_before + 1.0
    });
    assert_eq!(
        srv.metric_with("corechat_disconnects_total", "reason=\"abuse\""),
        abuse_before + 1.0,
        "corechat_disconnects_total{{reason=\"abuse\"}} counts this one close"
    );
}

#[test]
fn repeated_unparsable_frames_close_1008() {
    let srv = Server::start(&["--shards", "2", "--max-parse-errors", "3"]);
    let mut c = client(&srv, "bad");
    for _ in 0..3 {
        c.send_text("not json");
        let v = c.recv_json();
        assert_eq!(v["code"], "bad_request");
    }
    // Valid requests in between still work.
    assert_alive(&mut c);
    c.send_text("still not json");
    assert_eq!(c.recv_close(), Some(1008));
    // Validation errors of well-formed JSON do not count.
    let mut d = client(&srv, "good");
    for i in 0..10 {
        expect_error(
            &mut d,
            json!({"type": "fly"}),
            &format!("{i}"),
            "unknown_type",
        );
    }
    assert_alive(&mut d);
}

// ----------------------------------------------------------------------
// 5.4 slow consumer

/// A client whose socket has a tiny receive buffer, so the server's queue
/// fills up quickly when it does not read.
fn slow_client(srv: &Server, user: &str) -> Client {
    let addr: std::net::SocketAddr = srv.addr.parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let (ws, _) = tungstenite::client(srv.ws_url(&token(user)), stream)
        .map_err(|e| format!("{e}"))
        .unwrap();
    let mut c = Client { ws };
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

#[test]
fn slow_consumer_is_closed_1013_while_fast_members_get_everything() {
    slow_consumer_flood(Duration::from_millis(500));
}

/// The slow client reads nothing for 3 s after it was cut off (longer than
/// the server's 2 s grace for a closing connection), then reads: the close
/// frame with 1013 must still be there.
#[test]
fn slow_consumer_that_reads_late_still_finds_the_1013_close_frame() {
    slow_consumer_flood(Duration::from_secs(3));
}

/// Floods a room with a member that does not read (`read_after` later it
/// starts reading), a fast member, and a publisher.
fn slow_consumer_flood(read_after: Duration) {
    let srv = Server::start(&[
        "--shards",
        "2",
        "--max-outbound-bytes",
        "65536",
        "--rate-per-sec",
        "100000",
        "--burst",
        "100000",
        "--max-body-bytes",
        "16000",
    ]);
    let mut slow = slow_client(&srv, "slow");
    join_with(&mut slow, "flood", None);
    let mut fast = client(&srv, "fast");
    join_with(&mut fast, "flood", None);
    let mut publisher = client(&srv, "pub");
    join_with(&mut publisher, "flood", None);
    let before = disconnects(&srv, "slow_consumer");
    // The server's memory while it floods a reader that does not read:
    // bounded by the outbound limit, not by what is published.
    let rss_before = vm_rss_kib(srv.pid());
    let mut rss_max = rss_before;

    let fast_seen = Arc::new(AtomicU64::new(0));
    let seen = fast_seen.clone();
    // Reads until the message whose body is "end".
    let reader = thread::spawn(move || {
        let mut last = 0u64;
        loop {
            let m = next_message(&mut fast, "flood");
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "the fast member missed a message");
            last = seq;
            if m["body"] == "end" {
                return last;
            }
            assert_eq!(m["body"]["pad"].as_str().unwrap().len(), 15_000);
            seen.store(seq, Ordering::SeqCst);
        }
    });
    let pad = "p".repeat(15_000);
    let mut published = 0u64;
    let mut acked = 0u64;
    let mut stop_at: Option<u64> = None;
    // Publish until the slow member is cut off, then 20 more.
    loop {
        let limit = stop_at.unwrap_or(5000);
        // Paced by the fast member (it must never fall 64 KiB behind): at
        // most two messages ahead of what it has read.
        while published < limit && published - acked < 2 {
            let reader_at = fast_seen.load(Ordering::SeqCst);
            if published > reader_at + 1 {
                assert!(!reader.is_finished(), "the fast member's reader stopped");
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            publisher.send_json(
                json!({"type": "publish", "room": "flood", "body": {"pad": pad}, "id": published}),
            );
            published += 1;
        }
        if acked == published {
            assert!(
                stop_at.is_some(),
                "the slow consumer was never disconnected"
            );
            break;
        }
        let v = publisher.recv_json();
        match v["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => panic!("{v}"),
            _ => continue,
        }
        if acked.is_multiple_of(5) {
            rss_max = rss_max.max(vm_rss_kib(srv.pid()));
        }
        if stop_at.is_none()
            && acked.is_multiple_of(25)
            && disconnects(&srv, "slow_consumer") > before
        {
            stop_at = Some(published + 20);
        }
    }
    let v = request(
        &mut publisher,
        json!({"type": "publish", "room": "flood", "body": "end"}),
        "end",
    );
    assert_eq!(v["seq"], published + 1);
    assert_eq!(reader.join().unwrap(), published + 1);
    assert!(disconnects(&srv, "slow_consumer") > before);
    // 64 KiB of outbound limit, 15 KB messages, a few hundred published:
    // the server may hold the limit a few times over (frames being written,
    // the fast member's queue, allocator slack), never the whole flood.
    let growth_kib = rss_max.saturating_sub(rss_before);
    let bound_kib = 4 * 65_536 / 1024 + 20 * 1024;
    assert!(
        growth_kib < bound_kib,
        "server RSS grew by {growth_kib} KiB while flooding a slow consumer \
         ({rss_before} -> {rss_max} KiB, {published} messages of 15 KB published); \
         bound {bound_kib} KiB"
    );
    // The slow client has read nothing all along. It waits a while longer,
    // then reads: everything the server handed to the kernel is there, and
    // the stream ends with a close frame whose code is 1013, on the wire.
    thread::sleep(read_after);
    let mut frames = 0u64;
    let code = loop {
        match slow.ws.read() {
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(Message::Close(None)) => panic!("close frame without a code after {frames} frames"),
            Ok(_) => frames += 1,
            Err(e) => panic!(
                "the slow consumer's stream ended without a close frame after {frames} frames: {e}"
            ),
        }
    };
    assert_eq!(code, 1013, "a slow consumer is closed with 1013");
}

/// The resident set size of a process, in KiB (`VmRSS` of /proc/PID/status).
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

// ----------------------------------------------------------------------
// Section 7: HTTP API

#[test]
fn http_publish() {
    let srv = Server::start(&["--shards", "2", "--max-body-bytes", "100"]);
    let mut members: Vec<Client> = (0..4).map(|i| client(&srv, &format!("m{i}"))).collect();
    for m in members.iter_mut() {
        join_with(m, "news", None);
    }
    let admin = admin_token("ops");
    let (status, v) = http_json(
        &srv,
        "POST",
        "/api/publish",
        Some(&admin),
        r#"{"room":"news","body":{"n":12345678901234567890123}}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["room"], "news");
    assert_eq!(v["seq"], 1);
    assert!(v["ts"].as_u64().is_some());
    for m in members.iter_mut() {
        let raw = loop {
            let t = m.recv_text();
            if t.contains("\"type\":\"message\"") {
                break t;
            }
        };
        assert!(
            raw.contains(r#""body":{"n":12345678901234567890123}"#),
            "{raw}"
        );
        let msg: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(msg["seq"], 1);
        assert_eq!(msg["from"], "ops");
    }
    let (status, v) = http_json(
        &srv,
        "POST",
        "/api/publish",
        Some(&admin),
        r#"{"room":"news","body":"two"}"#,
    );
    assert_eq!((status, v["seq"].clone()), (200, json!(2)));

    let (status, v) = http_json(
        &srv,
        "POST",
        "/api/publish",
        None,
        r#"{"room":"news","body":1}"#,
    );
    assert_eq!(status, 401);
    assert!(v["error"].is_string());
    let (status, _) = http_json(
        &srv,
        "POST",
        "/api/publish",
        Some("garbage.token.here"),
        r#"{"room":"news","body":1}"#,
    );
    assert_eq!(status, 401);
    let (status, v) = http_json(
        &srv,
        "POST",
        "/api/publish",
        Some(&token("user")),
        r#"{"room":"news","body":1}"#,
    );
    assert_eq!(status, 403);
    assert!(v["error"].is_string());
    for bad in [
        "not json",
        "{}",
        r#"{"room":"news"}"#,
        r#"{"body":1}"#,
        r#"{"room":"bad room","body":1}"#,
        r#"{"room":5,"body":1}"#,
        r#"[1]"#,
    ] {
        let (status, v) = http_json(&srv, "POST", "/api/publish", Some(&admin), bad);
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].is_string());
    }
    let (status, _) = http_json(
        &srv,
        "POST",
        "/api/publish",
        Some(&admin),
        &format!(r#"{{"room":"news","body":"{}"}}"#, "x".repeat(200)),
    );
    assert_eq!(status, 400, "an over-size body is bad input");
    // Nothing of that reached the members: the next message is seq 2.
    for m in members.iter_mut() {
        assert_eq!(next_message(m, "news")["seq"], 2);
    }
    let (status, _) = http_json(&srv, "GET", "/api/nope", Some(&admin), "");
    assert_eq!(status, 404);
}

#[test]
fn http_api_refuses_expired_and_wrongly_signed_tokens_with_401() {
    let srv = Server::start(&["--shards", "2"]);
    let admin = admin_token("ops");
    let (status, _) = http_json(
        &srv,
        "POST",
        "/api/publish",
        Some(&admin),
        r#"{"room":"guarded","body":"first"}"#,
    );
    assert_eq!(status, 200);
    // Admin tokens both, so only the expiry or the signature can be wrong.
    let expired = authenticator()
        .mint("ops", None, Some(1), None, true, now_secs() - 100)
        .unwrap();
    let other =
        corechat::auth::Authenticator::new(Some(b"not-the-server-secret"), None, 0).unwrap();
    let wrongly_signed = other
        .mint("ops", None, Some(3600), None, true, now_secs())
        .unwrap();
    for (what, tok) in [("expired", &expired), ("wrongly signed", &wrongly_signed)] {
        let (status, v) = http_json(
            &srv,
            "POST",
            "/api/publish",
            Some(tok),
            r#"{"room":"guarded","body":"forged"}"#,
        );
        assert_eq!(status, 401, "publish with an {what} token: {v}");
        assert!(v["error"].is_string(), "{v}");
        let (status, v) = http_json(&srv, "GET", "/api/rooms/guarded/history", Some(tok), "");
        assert_eq!(status, 401, "history with an {what} token: {v}");
        assert!(v["error"].is_string(), "{v}");
        assert!(v.get("messages").is_none(), "{v}");
    }
    // Nothing was published by the refused requests.
    let (status, v) = http_json(&srv, "GET", "/api/rooms/guarded/history", Some(&admin), "");
    assert_eq!(status, 200);
    assert_eq!(seqs(v["messages"].as_array().unwrap()), vec![1], "{v}");
    assert_eq!(v["messages"][0]["body"], "first");
    assert!(srv.metric("corechat_auth_failures_total", None) >= 4.0);
}

#[test]
fn http_history() {
    let srv = Server::start(&["--shards", "2"]);
    let admin = admin_token("ops");
    for i in 0..5 {
        let (status, _) = http_json(
            &srv,
            "POST",
            "/api/publish",
            Some(&admin),
            &format!(r#"{{"room":"team-x","body":{i}}}"#),
        );
        assert_eq!(status, 200);
    }
    let (status, v) = http_json(&srv, "GET", "/api/rooms/team-x/history", Some(&admin), "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(seqs(v["messages"].as_array().unwrap()), vec![1, 2, 3, 4, 5]);
    assert_eq!(v["has_more"], false);
    assert_eq!(v["messages"][2]["body"], 2);
    let (status, v) = http_json(
        &srv,
        "GET",
        "/api/rooms/team-x/history?before=5&limit=2",
        Some(&admin),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(seqs(v["messages"].as_array().unwrap()), vec![3, 4]);
    assert_eq!(v["has_more"], true);
    let (status, v) = http_json(
        &srv,
        "GET",
        "/api/rooms/team-x/history?after=3",
        Some(&admin),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(seqs(v["messages"].as_array().unwrap()), vec![4, 5]);
    // A user token that may read the room.
    let (status, v) = http_json(
        &srv,
        "GET",
        "/api/rooms/team-x/history?limit=1",
        Some(&token("anyone")),
        "",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(seqs(v["messages"].as_array().unwrap()), vec![5]);
    let limited = authenticator()
        .mint(
            "lim",
            None,
            Some(3600),
            Some(&["team-*".to_string()]),
            false,
            now_secs(),
        )
        .unwrap();
    let (status, _) = http_json(&srv, "GET", "/api/rooms/team-x/history", Some(&limited), "");
    assert_eq!(status, 200);
    let (status, v) = http_json(&srv, "GET", "/api/rooms/lobby/history", Some(&limited), "");
    assert_eq!(status, 403, "{v}");
    // DM rooms: participants only.
    let (status, _) = http_json(
        &srv,
        "GET",
        "/api/rooms/dm:a:b/history",
        Some(&token("c")),
        "",
    );
    assert_eq!(status, 403);
    let (status, _) = http_json(
        &srv,
        "GET",
        "/api/rooms/dm:a:b/history",
        Some(&token("a")),
        "",
    );
    assert_eq!(status, 200);
    // No token or a bad one: 401; bad input: 400.
    let (status, _) = http_json(&srv, "GET", "/api/rooms/team-x/history", None, "");
    assert_eq!(status, 401);
    let (status, _) = http_json(&srv, "GET", "/api/rooms/team-x/history", Some("x.y.z"), "");
    assert_eq!(status, 401);
    for q in ["limit=0", "limit=101", "before=x", "after=-1"] {
        let (status, v) = http_json(
            &srv,
            "GET",
            &format!("/api/rooms/team-x/history?{q}"),
            Some(&admin),
            "",
        );
        assert_eq!(status, 400, "{q}: {v}");
    }
    let (status, _) = http_json(
        &srv,
        "GET",
        "/api/rooms/bad%20room/history",
        Some(&admin),
        "",
    );
    assert_eq!(status, 400);
}

#[test]
fn http_guest_login() {
    let off = Server::start(&["--shards", "2"]);
    let (status, _) = http_json(&off, "POST", "/api/guest", None, r#"{"name":"alice"}"#);
    assert_eq!(status, 404);

    let srv = Server::start(&["--shards", "2", "--guest"]);
    let (status, v) = http_json(&srv, "POST", "/api/guest", None, r#"{"name":"alice"}"#);
    assert_eq!(status, 200, "{v}");
    let tok = v["token"].as_str().unwrap().to_string();
    let user = v["user"].as_str().unwrap().to_string();
    let (status2, v2) = http_json(&srv, "POST", "/api/guest", None, r#"{"name":"alice"}"#);
    assert_eq!(status2, 200);
    assert_ne!(v2["user"], v["user"], "each guest gets a fresh id");
    let (mut c, w) = connect_token(&srv, &tok);
    assert_eq!(w["user"], user);
    assert_eq!(w["name"], "alice");
    join_with(&mut c, "lobby", None);
    let v = request(
        &mut c,
        json!({"type": "publish", "room": "lobby", "body": "hello"}),
        "g",
    );
    assert_eq!(v["type"], "ack");
    let (status, _) = http_json(&srv, "POST", "/api/guest", None, "not json");
    assert_eq!(status, 400);
    // A guest is no admin.
    let (status, _) = http_json(
        &srv,
        "POST",
        "/api/publish",
        Some(&tok),
        r#"{"room":"lobby","body":1}"#,
    );
    assert_eq!(status, 403);
}

// ----------------------------------------------------------------------
// SQLite: restart and crash safety

#[test]
fn sqlite_restart_continues_seq_epoch_and_history() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut flags = vec!["--shards", "2", "--store", "sqlite", "--data-dir", &d];
    flags.extend(FAST);
    let mut srv = Server::start(&flags);
    let mut c = client(&srv, "keeper");
    let j = join_with(&mut c, "kept", None);
    let epoch = j["epoch"].clone();
    let (acks, _) = publish_n(&mut c, "kept", "k", 12, None);
    assert_eq!(acks, (1..=12).collect::<Vec<_>>());
    c.send_json(json!({"type": "read", "room": "kept", "seq": 7}));
    let ack = request(
        &mut c,
        json!({"type": "dm", "to": "other", "body": "dm body"}),
        "dm",
    );
    assert_eq!(ack["seq"], 1);
    // Make sure the read marker was handled before the restart.
    let r = request(&mut c, json!({"type": "rooms"}), "rooms");
    assert!(
        r["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["room"] == "kept" && e["read"] == 7),
        "{r}"
    );
    drop(c);
    srv.signal(15);
    assert!(
        srv.wait_exit(Duration::from_secs(30)).is_some(),
        "server did not exit on SIGTERM"
    );

    for round in 0..2 {
        let srv2 = Server::spawn(srv.args.clone());
        let mut c = client(&srv2, "keeper");
        let j = join_with(&mut c, "kept", Some(0));
        assert_eq!(j["epoch"], epoch, "round {round}: epoch changed");
        assert_eq!(j["seq"], 12 + round);
        assert_eq!(j["recovered"], true);
        assert_eq!(j["read"], 7, "the read marker survives");
        let replay = messages(&mut c, "kept", 12 + round as usize);
        assert_eq!(seqs(&replay), (1..=12 + round).collect::<Vec<_>>());
        assert_eq!(replay[4]["body"], json!({"p": "k", "i": 4}));
        let v = request(
            &mut c,
            json!({"type": "publish", "room": "kept", "body": "after restart"}),
            "p",
        );
        assert_eq!(v["seq"], 13 + round, "{v}");
        let h = request(
            &mut c,
            json!({"type": "history", "room": "kept", "limit": 3}),
            "h",
        );
        assert_eq!(
            seqs(h["messages"].as_array().unwrap()),
            vec![11 + round, 12 + round, 13 + round]
        );
        assert_eq!(h["has_more"], true);
        let r = request(&mut c, json!({"type": "rooms"}), "rooms");
        assert_eq!(
            r["rooms"],
            json!([{"room": "dm:keeper:other", "seq": 1 + round, "read": 0}, {"room": "kept", "seq": 13 + round, "read": 7}])
        );
        let ack = request(
            &mut c,
            json!({"type": "dm", "to": "other", "body": "again"}),
            "dm",
        );
        assert_eq!(ack["seq"], 2 + round);
        let mut srv2 = srv2;
        srv2.signal(15);
        assert!(srv2.wait_exit(Duration::from_secs(30)).is_some());
        // Round 1 sees round 0's dm as seq 2: read the DM room with since.
        if round == 1 {
            let srv3 = Server::spawn(srv.args.clone());
            let mut c = client(&srv3, "other");
            let j = join_with(&mut c, "dm:keeper:other", Some(0));
            assert_eq!(j["seq"], 3);
            let ms = messages(&mut c, "dm:keeper:other", 3);
            assert_eq!(ms[0]["body"], "dm body");
            assert_eq!(ms[2]["body"], "again");
        }
    }
}

/// Body text of the i-th message of the crash test: checked byte for byte.
fn crash_body(i: u64) -> String {
    format!(
        r#"{{"i":{i},"big":123456789012345678901234567890,"s":"h\u00e9llo \"q\" {i}","nested":[1,{{"x":null}}]}}"#
    )
}

#[test]
fn sqlite_crash_keeps_every_acked_message() {
    crash_keeps_every_acked_message("sync");
}

/// `relaxed` skips the fsync per commit: a power cut may lose the last
/// commits, but a process crash (the kernel keeps what was written) must
/// not lose an acked message either.
#[test]
fn sqlite_relaxed_crash_keeps_every_acked_message() {
    crash_keeps_every_acked_message("relaxed");
}

fn crash_keeps_every_acked_message(durability: &str) {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut flags = vec![
        "--shards",
        "2",
        "--store",
        "sqlite",
        "--data-dir",
        &d,
        "--durability",
        durability,
    ];
    flags.extend(FAST);
    let mut args: Option<Vec<String>> = None;
    let mut acked_all: BTreeMap<u64, u64> = BTreeMap::new(); // seq -> i
    let mut next_i = 0u64;
    for round in 0..3 {
        let mut srv = match &args {
            None => Server::start(&flags),
            Some(a) => Server::spawn(a.clone()),
        };
        args = Some(srv.args.clone());
        let acked = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
        let mut c = client(&srv, "writer");
        join_with(&mut c, "crash", None);
        let a = acked.clone();
        let start_i = next_i;
        let h = thread::spawn(move || {
            let mut i = start_i;
            let mut outstanding = 0;
            loop {
                while outstanding < 8 {
                    let text = format!(
                        r#"{{"type":"publish","room":"crash","id":{i},"body":{}}}"#,
                        crash_body(i)
                    );
                    if c.ws.send(Message::text(text)).is_err() {
                        return;
                    }
                    i += 1;
                    outstanding += 1;
                }
                match c.ws.read() {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "ack" {
                            a.lock()
                                .unwrap()
                                .push((v["seq"].as_u64().unwrap(), v["id"].as_u64().unwrap()));
                            outstanding -= 1;
                        } else if v["type"] == "error" {
                            panic!("publish failed: {v}");
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        wait_until("acks before the crash", || {
            acked.lock().unwrap().len() >= 40 + 20 * round
        });
        srv.signal(9);
        assert!(srv.wait_exit(Duration::from_secs(30)).is_some());
        h.join().unwrap();
        let got = acked.lock().unwrap().clone();
        for (seq, i) in got {
            assert!(acked_all.insert(seq, i).is_none(), "seq {seq} acked twice");
            next_i = next_i.max(i + 1);
        }
        next_i += 1000; // unacked ones of this round may or may not be stored
                        // Restart and check every acked message is there, intact.
        let srv = Server::spawn(args.clone().unwrap());
        let (msgs, raw) = full_history(&srv, "crash");
        let stored: BTreeMap<u64, u64> = msgs
            .iter()
            .map(|m| (m["seq"].as_u64().unwrap(), m["body"]["i"].as_u64().unwrap()))
            .collect();
        let stored_seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            stored_seqs,
            (1..=stored_seqs.len() as u64).collect::<Vec<_>>(),
            "round {round}: history has gaps"
        );
        for (seq, i) in &acked_all {
            assert_eq!(
                stored.get(seq),
                Some(i),
                "round {round}: acked seq {seq} (i={i}) lost or changed"
            );
            assert!(
                raw.contains(&crash_body(*i)),
                "round {round}: body of seq {seq} not intact"
            );
        }
        // Numbering continues after the last stored message.
        let mut c = client(&srv, "checker");
        join_with(&mut c, "crash", None);
        c.send_text(&format!(
            r#"{{"type":"publish","room":"crash","id":"after","body":{}}}"#,
            crash_body(next_i)
        ));
        let v = c.recv_type("ack");
        assert_eq!(v["seq"], stored_seqs.len() as u64 + 1, "{v}");
        acked_all.insert(v["seq"].as_u64().unwrap(), next_i);
        next_i += 1;
        drop(srv);
    }
}

// ----------------------------------------------------------------------
// Edge cases

#[test]
fn extreme_numbers_are_handled_without_harm() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    for store in ["memory", "sqlite"] {
        let srv = Server::start(&["--shards", "2", "--store", store, "--data-dir", &d]);
        let mut c = client(&srv, "x");
        join_with(&mut c, "big", None);
        publish_n(&mut c, "big", "x", 3, None);
        let max = u64::MAX;
        for q in [
            json!({"after": max}),
            json!({"before": max}),
            json!({"after": max, "before": max}),
            json!({"after": max - 1}),
        ] {
            let mut req = q.clone();
            req["type"] = json!("history");
            req["room"] = json!("big");
            let v = request(&mut c, req, "h");
            assert_eq!(v["type"], "history", "{store} {q}: {v}");
            let expect: Vec<u64> = if q.get("after").is_some() {
                vec![]
            } else {
                vec![1, 2, 3]
            };
            assert_eq!(
                seqs(v["messages"].as_array().unwrap()),
                expect,
                "{store} {q}"
            );
            assert_eq!(v["has_more"], false, "{store} {q}");
        }
        let admin = admin_token("root");
        let (status, v) = http_json(
            &srv,
            "GET",
            &format!("/api/rooms/big/history?after={max}"),
            Some(&admin),
            "",
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["messages"], json!([]));
        let mut other = client(&srv, "y");
        let j = join_with(&mut other, "big", Some(max));
        assert_eq!(j["seq"], 3);
        other.send_json(json!({"type": "read", "room": "big", "seq": max}));
        let r = request(&mut other, json!({"type": "rooms"}), "r");
        assert_eq!(r["rooms"], json!([{"room": "big", "seq": 3, "read": 3}]));
        // The room's home still works.
        let (acks, _) = publish_n(&mut c, "big", "x", 1, None);
        assert_eq!(acks, vec![4]);
        assert_eq!(next_message(&mut other, "big")["seq"], 4);
    }
}

#[test]
fn null_body_and_escaped_strings_are_ordinary_json() {
    let srv = Server::start(&["--shards", "2"]);
    let mut c = client(&srv, "n");
    join_with(&mut c, "nulls", None);
    // body null is a JSON value like any other.
    let (ack, msgs) = reply_and_messages(
        &mut c,
        json!({"type": "publish", "room": "nulls", "body": null}),
        "p",
        "nulls",
        1,
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(
        msgs[0].get("body").is_some_and(Value::is_null),
        "{}",
        msgs[0]
    );
    let ack = request(&mut c, json!({"type": "dm", "to": "m", "body": null}), "d");
    assert_eq!(ack["type"], "ack", "{ack}");
    // A missing body is still an error.
    expect_error(
        &mut c,
        json!({"type": "publish", "room": "nulls"}),
        "nb",
        "bad_request",
    );
    // Escapes in the type and the id mean the same characters.
    c.send_text(r#"{"type":"p\u0069ng","id":"\u0041"}"#);
    assert_eq!(c.recv_json(), json!({"type": "pong", "id": "A"}));
    let h = request(&mut c, json!({"type": "history", "room": "nulls"}), "h");
    assert_eq!(seqs(h["messages"].as_array().unwrap()), vec![1]);
}

#[test]
fn second_join_on_one_connection_replays_without_duplicates() {
    for store in ["memory", "sqlite"] {
        let dir = tempdir();
        let d = dir.path().to_str().unwrap().to_string();
        let mut flags = vec![
            "--shards",
            "2",
            "--store",
            store,
            "--data-dir",
            &d,
            "--history-ring",
            "10",
        ];
        flags.extend(FAST);
        let srv = Server::start(&flags);
        let mut m = client(&srv, "m");
        join_with(&mut m, "again", None);
        let mut p = client(&srv, "p");
        join_with(&mut p, "again", None);
        publish_n(&mut p, "again", "p", 30, None);
        assert_eq!(
            seqs(&messages(&mut m, "again", 30)),
            (1..=30).collect::<Vec<_>>()
        );
        // Join again with since: the replay, then live, each message once.
        let since = if store == "sqlite" { 3 } else { 25 };
        let j = join_with(&mut m, "again", Some(since));
        assert_eq!(j["recovered"], true, "{store}: {j}");
        assert_eq!(j["members"], 2, "{store}: still two users");
        publish_n(&mut p, "again", "p", 5, None);
        assert_eq!(
            seqs(&messages(&mut m, "again", (35 - since) as usize)),
            (since + 1..=35).collect::<Vec<_>>()
        );
        quiet_except(&mut m, 300, &[]);
        // Presence did not double count it; leaving once leaves.
        let pr = request(&mut p, json!({"type": "presence", "room": "again"}), "pr");
        assert_eq!(pr["users"].as_array().unwrap().len(), 2, "{pr}");
        request(&mut m, json!({"type": "leave", "room": "again"}), "lv");
        let ul = p.recv_type("user_left");
        assert_eq!(ul["user"], "m");
    }
}

#[test]
fn leave_while_a_replay_is_pending_does_not_leak_membership() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut flags = vec![
        "--shards",
        "2",
        "--store",
        "sqlite",
        "--data-dir",
        &d,
        "--history-ring",
        "10",
    ];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut obs = client(&srv, "obs");
    join_with(&mut obs, "pend", None);
    publish_n(&mut obs, "pend", "o", 30, None);
    for (k, user) in ["first", "again"].iter().enumerate() {
        let mut c = client(&srv, user);
        if k == 1 {
            // Already a member: the second join replays from the store.
            join_with(&mut c, "pend", None);
            assert_eq!(obs.recv_type("user_joined")["user"], *user);
        }
        // Join with a replay from disk and leave in the same write: the
        // leave reaches the home while it waits for the store.
        let join = json!({"type": "join", "room": "pend", "since": 0, "id": "j"}).to_string();
        let leave = json!({"type": "leave", "room": "pend", "id": "l"}).to_string();
        c.ws.write(Message::text(join)).unwrap();
        c.ws.write(Message::text(leave)).unwrap();
        c.ws.flush().unwrap();
        let left = c.recv_type("left");
        assert_eq!(left["id"], "l");
        if k == 1 {
            // The last connection of the user left: user_left.
            assert_eq!(obs.recv_type("user_left")["user"], *user);
        }
        let p = request(&mut obs, json!({"type": "presence", "room": "pend"}), "pr");
        assert_eq!(
            p["users"],
            json!([{"user": "obs", "name": "Name obs"}]),
            "{user}: {p}"
        );
        // No message reaches the connection that left.
        obs.send_json(json!({"type": "publish", "room": "pend", "body": "after"}));
        quiet_except(&mut c, 300, &["joined", "message"]);
    }
}

#[test]
fn dm_rooms_stay_listed_after_leaving_them() {
    let srv = Server::start(&["--shards", "2"]);
    let mut a = client(&srv, "a");
    let ack = request(&mut a, json!({"type": "dm", "to": "b", "body": 1}), "d");
    assert_eq!(ack["room"], "dm:a:b");
    join_with(&mut a, "dm:a:b", None);
    request(&mut a, json!({"type": "leave", "room": "dm:a:b"}), "l");
    let r = request(&mut a, json!({"type": "rooms"}), "r");
    assert_eq!(r["rooms"], json!([{"room": "dm:a:b", "seq": 1, "read": 0}]));
    // And DMs still arrive.
    let mut b = client(&srv, "b");
    request(&mut b, json!({"type": "dm", "to": "a", "body": 2}), "d2");
    assert_eq!(next_message(&mut a, "dm:a:b")["seq"], 2);
}

#[test]
fn long_replay_from_sqlite_spans_several_store_pages() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut flags = vec![
        "--shards",
        "2",
        "--store",
        "sqlite",
        "--data-dir",
        &d,
        "--history-ring",
        "10",
        "--durability",
        "relaxed",
    ];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut p = client(&srv, "p");
    join_with(&mut p, "long", None);
    let total = 2300u64;
    publish_n(&mut p, "long", "p", total, None);
    let mut m = client(&srv, "m");
    let j = join_with(&mut m, "long", Some(3));
    assert_eq!(j["recovered"], true);
    assert_eq!(j["seq"], total);
    p.send_json(json!({"type": "publish", "room": "long", "body": "live"}));
    let got = messages(&mut m, "long", (total - 2) as usize);
    assert_eq!(seqs(&got), (4..=total + 1).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap()["body"], "live");
    assert_eq!(got[0]["body"], json!({"p": "p", "i": 3}));
}

// ----------------------------------------------------------------------
// Property: resume against a model of seq numbering and the ring

/// One step: publish `count` messages; then either read them live, or drop
/// the member and resume with `since` = (last seq - `back`).
#[derive(Clone, Debug)]
struct Step {
    count: u64,
    reconnect: bool,
    back: u64,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    (0u64..7, any::<bool>(), 0u64..14).prop_map(|(count, reconnect, back)| Step {
        count,
        reconnect,
        back,
    })
}

fn run_resume_model(ring: u64, sqlite: bool, steps: &[Step]) {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let ring_s = ring.to_string();
    let store = if sqlite { "sqlite" } else { "memory" };
    let mut flags = vec![
        "--shards",
        "2",
        "--store",
        store,
        "--data-dir",
        &d,
        "--history-ring",
        &ring_s,
    ];
    flags.extend(FAST);
    let srv = Server::start(&flags);
    let mut p = client(&srv, "p");
    join_with(&mut p, "model", None);
    let mut m = client(&srv, "m");
    join_with(&mut m, "model", None);
    let mut n = 0u64; // committed
    for (k, s) in steps.iter().enumerate() {
        let (acks, _) = publish_n(&mut p, "model", &format!("s{k}"), s.count, None);
        assert_eq!(acks, (n + 1..=n + s.count).collect::<Vec<_>>());
        n += s.count;
        if s.reconnect {
            drop(m);
            m = client(&srv, "m");
            let since = n.saturating_sub(s.back);
            let j = join_with(&mut m, "model", Some(since));
            assert_eq!(j["seq"], n, "step {k}");
            // The model: the store keeps everything; memory only the ring.
            let first_held = if sqlite {
                1
            } else {
                n.saturating_sub(ring) + 1
            };
            let recovered = since >= n || since + 1 >= first_held;
            assert_eq!(
                j["recovered"], recovered,
                "step {k}: since {since}, n {n}, ring {ring}"
            );
            let from = (since + 1).max(first_held);
            let expect: Vec<u64> = (from..=n).collect();
            assert_eq!(
                seqs(&messages(&mut m, "model", expect.len())),
                expect,
                "step {k}"
            );
        } else {
            let got = messages(&mut m, "model", s.count as usize);
            assert_eq!(
                seqs(&got),
                (n - s.count + 1..=n).collect::<Vec<_>>(),
                "step {k}"
            );
        }
    }
    // Nothing extra is pending on the member.
    quiet_except(&mut m, 100, &["user_joined", "user_left"]);
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 24,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]
    #[test]
    fn resume_follows_the_seq_and_ring_model(
        ring in 1u64..8,
        sqlite in proptest::bool::ANY,
        steps in proptest::collection::vec(step(), 1..8),
    ) {
        run_resume_model(ring, sqlite, &steps);
    }
}
