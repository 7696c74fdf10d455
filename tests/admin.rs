//! The operator's API (`/api/admin/*`) through real sockets: tokens, stats
//! that match the connections the test opened, user lookup, and a
//! disconnect that closes the user's real WebSockets on every shard.

mod common;

use common::chat::{connect, http_json, request, wait_until, FAST};
use common::{admin_token, token, Server};
use serde_json::{json, Value};
use tungstenite::Message;

fn stats(srv: &Server) -> Value {
    let (status, v) = http_json(srv, "GET", "/api/admin/stats", Some(&admin_token("op")), "");
    assert_eq!(status, 200, "{v}");
    v
}

fn lookup(srv: &Server, user: &str) -> Value {
    let path = format!("/api/admin/users/{user}");
    let (status, v) = http_json(srv, "GET", &path, Some(&admin_token("op")), "");
    assert_eq!(status, 200, "{v}");
    v
}

/// Reads until the server's close frame; returns its code and reason.
fn close_frame(c: &mut common::Client) -> (u16, String) {
    loop {
        match c.ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn admin_endpoints_need_an_admin_token() {
    let srv = Server::start(&[]);
    let user = token("alice");
    let admin = admin_token("op");
    for (method, path, body) in [
        ("GET", "/api/admin/stats", ""),
        ("GET", "/api/admin/users/alice", ""),
        ("POST", "/api/admin/disconnect", r#"{"user":"alice"}"#),
    ] {
        let (status, v) = http_json(&srv, method, path, None, body);
        assert_eq!(status, 401, "{method} {path} without a token: {v}");
        let (status, v) = http_json(&srv, method, path, Some("not-a-jwt"), body);
        assert_eq!(status, 401, "{method} {path} with a bad token: {v}");
        let (status, v) = http_json(&srv, method, path, Some(&user), body);
        assert_eq!(status, 403, "{method} {path} with a user token: {v}");
        assert_eq!(v["error"], "admin token required");
    }
    // bounded and checked input
    for (method, path, body, want) in [
        ("GET", "/api/admin/stats?top=0", "", 400),
        ("GET", "/api/admin/stats?top=51", "", 400),
        ("GET", "/api/admin/stats?top=x", "", 400),
        ("POST", "/api/admin/stats", "", 405),
        ("GET", "/api/admin/disconnect", "", 405),
        ("POST", "/api/admin/disconnect", r#"{"who":"alice"}"#, 400),
        (
            "POST",
            "/api/admin/disconnect",
            r#"{"user":"no spaces"}"#,
            400,
        ),
        ("GET", "/api/admin/nothing", "", 404),
    ] {
        let (status, v) = http_json(&srv, method, path, Some(&admin), body);
        assert_eq!(status, want, "{method} {path} {body}: {v}");
    }
}

#[test]
fn stats_reflect_real_connections_rooms_and_deliveries() {
    let mut args = vec!["--shards", "2"];
    args.extend(FAST);
    let srv = Server::start(&args);
    // an idle server: no sessions, no rooms
    let v = stats(&srv);
    assert_eq!(v["shards"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["totals"]["sessions"], 0, "{v}");
    assert_eq!(v["rooms"], json!([]));
    assert_eq!(v["store"]["kind"], "memory");
    assert_eq!(v["store"]["ready"], true);

    let mut per_shard = [0u64; 2];
    let mut clients = Vec::new();
    for i in 0..5 {
        let (c, shard) = connect(&srv, &format!("u{i}"));
        per_shard[shard] += 1;
        clients.push(c);
    }
    for c in clients.iter_mut().take(3) {
        assert_eq!(c.join("busy")["type"], "joined");
    }
    assert_eq!(clients[3].join("quiet")["type"], "joined");
    for n in 0..4 {
        let ack = request(
            &mut clients[0],
            json!({"type": "publish", "room": "busy", "body": {"n": n}}),
            &format!("p{n}"),
        );
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for c in clients.iter_mut().take(3).skip(1) {
        for _ in 0..4 {
            c.recv_type("message");
        }
    }

    let v = stats(&srv);
    for shard in 0..2 {
        let s = &v["shards"][shard];
        assert_eq!(s["shard"], shard);
        assert_eq!(s["sessions"], per_shard[shard], "shard {shard}: {v}");
        // open connections include this stats request's own HTTP connection
        let open = s["connections"].as_u64().unwrap();
        assert!(open >= per_shard[shard], "shard {shard}: {v}");
    }
    assert_eq!(v["totals"]["sessions"], 5, "{v}");
    let rooms = v["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 2, "{v}");
    assert_eq!(rooms[0]["room"], "busy", "busiest first: {v}");
    assert_eq!(rooms[0]["members"], 3);
    assert_eq!(rooms[0]["connections"], 3);
    assert_eq!(rooms[0]["seq"], 4);
    assert!(rooms[0]["msgs_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(rooms[1]["room"], "quiet");
    assert_eq!(rooms[1]["members"], 1);
    assert_eq!(rooms[1]["msgs_per_sec"], 0.0);
    // 4 messages to 3 members, and the user_joined frames of the second
    // and third join (1 + 2): 15 deliveries, as /metrics counts them
    let delivered: u64 = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["deliveries_total"].as_u64().unwrap())
        .sum();
    assert_eq!(delivered, 15, "{v}");
    assert_eq!(srv.metric("corechat_deliveries_total", None), 15.0);

    // the live windows: keep publishing until a one-second window has both
    // deliveries and latency samples
    let mut n = 100;
    wait_until(
        "the last second shows deliveries and fan-out latency",
        || {
            n += 1;
            let ack = request(
                &mut clients[0],
                json!({"type": "publish", "room": "busy", "body": {"n": n}}),
                &format!("p{n}"),
            );
            assert_eq!(ack["type"], "ack");
            let v = stats(&srv);
            let shards = v["shards"].as_array().unwrap();
            let per_sec: u64 = shards
                .iter()
                .map(|s| s["deliveries_per_sec"].as_u64().unwrap())
                .sum();
            let samples: u64 = shards
                .iter()
                .map(|s| s["latency_us"]["count"].as_u64().unwrap())
                .sum();
            let ordered = shards.iter().all(|s| {
                let l = &s["latency_us"];
                l["p50"].as_u64() <= l["p99"].as_u64() && l["p99"].as_u64() <= l["max"].as_u64()
            });
            assert!(ordered, "{v}");
            per_sec > 0 && samples > 0 && v["totals"]["deliveries_per_sec"] == per_sec
        },
    );
    // `top` bounds the list
    let (status, v) = http_json(
        &srv,
        "GET",
        "/api/admin/stats?top=1",
        Some(&admin_token("op")),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(v["rooms"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn stats_show_the_sqlite_store() {
    let dir = common::chat::tempdir();
    let data = dir.path().display().to_string();
    let srv = Server::start(&["--store", "sqlite", "--data-dir", &data]);
    let (mut c, _) = connect(&srv, "alice");
    c.join("lobby");
    let ack = request(
        &mut c,
        json!({"type": "publish", "room": "lobby", "body": "hi"}),
        "p1",
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    let v = stats(&srv);
    let store = &v["store"];
    assert_eq!(store["kind"], "sqlite", "{v}");
    assert_eq!(store["ready"], true);
    assert_eq!(store["queue_depth"], 0);
    assert!(store["commits"].as_u64().unwrap() >= 1, "{v}");
    let last = store["last_commit_ms"].as_u64().expect("a commit time");
    let now = v["ts"].as_u64().unwrap();
    assert!(last <= now && last + 60_000 > now, "{v}");
}

#[test]
fn lookup_and_disconnect_close_every_socket_of_the_user() {
    let srv = Server::start(&["--shards", "2"]);
    let mut bobs = Vec::new();
    let mut bob_shards = Vec::new();
    // connect bob until he has sockets on both shards (at most a few tries)
    while !(bob_shards.contains(&0) && bob_shards.contains(&1)) {
        assert!(bobs.len() < 40, "connections never spread: {bob_shards:?}");
        let (mut c, shard) = connect(&srv, "bob");
        c.join("lobby");
        bobs.push(c);
        bob_shards.push(shard);
    }
    let (mut alice, _) = connect(&srv, "alice");
    alice.join("lobby");

    let n = bobs.len() as u64;
    wait_until("bob's home knows all his connections", || {
        lookup(&srv, "bob")["connections"] == n
    });
    let v = lookup(&srv, "bob");
    assert_eq!(v["online"], true);
    assert_eq!(v["rooms"], json!(["lobby"]));
    assert_eq!(v["shards"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(lookup(&srv, "nobody")["online"], false);

    let (status, v) = http_json(
        &srv,
        "POST",
        "/api/admin/disconnect",
        Some(&admin_token("op")),
        r#"{"user":"bob"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["disconnected"], n, "{v}");
    for c in &mut bobs {
        assert_eq!(close_frame(c), (1008, "disconnected by admin".to_string()));
    }
    // alice is untouched and sees bob leave the room
    let left = alice.recv_type("user_left");
    assert_eq!(left["user"], "bob");
    common::chat::assert_alive(&mut alice);
    wait_until("bob is offline", || lookup(&srv, "bob")["connections"] == 0);
    assert!(common::chat::disconnects(&srv, "policy") >= n as f64);
}
