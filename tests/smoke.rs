mod common;
use common::*;
use serde_json::json;

#[test]
fn welcome_and_pong() {
    let srv = Server::start(&["--shards", "2"]);
    let mut c = srv.client("alice");
    c.send_json(json!({"type": "ping", "id": 7}));
    let pong = c.recv_json();
    assert_eq!(pong, json!({"type": "pong", "id": 7}));
}

#[test]
fn publish_reaches_members_across_shards() {
    let srv = Server::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..6).map(|i| srv.client(&format!("u{i}"))).collect();
    for c in clients.iter_mut() {
        let j = c.join("lobby");
        assert_eq!(j["room"], "lobby");
    }
    clients[0].send_text(
        r#"{"type":"publish","room":"lobby","body":{"n":12345678901234567890123},"id":1}"#,
    );
    for c in clients.iter_mut() {
        let m = c.recv_type("message");
        assert_eq!(m["seq"], 1);
        assert_eq!(m["from"], "u0");
    }
    // The body is forwarded verbatim: the 23-digit integer is intact.
    let mut c = srv.client("late");
    c.send_json(json!({"type": "join", "room": "lobby", "since": 0}));
    let _ = c.recv_type("joined");
    let raw = c.recv_text();
    assert!(
        raw.contains(r#""body":{"n":12345678901234567890123}"#),
        "{raw}"
    );
    let ack = clients[0].recv_type("ack");
    assert_eq!(ack["seq"], 1);
}
