//! The `reads` extension of `join` through real sockets: `joined` carries
//! the other members' read markers when asked (and only then), never the
//! joiner's own, and they survive a restart with the SQLite store.

mod common;

use common::chat::{connect, request, tempdir, wait_until};
use common::Server;
use serde_json::{json, Value};

fn join_reads(c: &mut common::Client, room: &str) -> Value {
    let j = request(
        c,
        json!({"type": "join", "room": room, "reads": true}),
        "jr",
    );
    assert_eq!(j["type"], "joined", "{j}");
    j
}

fn sqlite_server(data: &str) -> Server {
    Server::start(&["--store", "sqlite", "--data-dir", data])
}

#[test]
fn joined_carries_other_members_read_markers_on_request() {
    let dir = tempdir();
    let data = dir.path().display().to_string();
    let srv = sqlite_server(&data);
    let (mut alice, _) = connect(&srv, "alice");
    let (mut bob, _) = connect(&srv, "bob");
    alice.join("r");
    bob.join("r");
    for n in 1..=3 {
        let ack = request(
            &mut alice,
            json!({"type": "publish", "room": "r", "body": n}),
            &format!("p{n}"),
        );
        assert_eq!(ack["seq"], n);
    }
    bob.send_json(json!({"type": "read", "room": "r", "seq": 2}));
    alice.send_json(json!({"type": "read", "room": "r", "seq": 3}));
    // alice sees bob's marker: both markers are at the home now
    let r = alice.recv_type("read");
    assert_eq!(
        (r["from"].clone(), r["seq"].clone()),
        (json!("bob"), json!(2))
    );

    let (mut carol, _) = connect(&srv, "carol");
    // without the flag, `joined` is the default frame
    let plain = carol.join("r");
    assert!(plain.get("reads").is_none(), "{plain}");
    let j = join_reads(&mut carol, "r");
    assert_eq!(j["reads"], json!({"alice": 3, "bob": 2}), "{j}");

    // bob's own marker is his `read`, never one of `reads`
    let (mut bob2, _) = connect(&srv, "bob");
    let j = join_reads(&mut bob2, "r");
    assert_eq!(j["read"], 2, "{j}");
    assert_eq!(j["reads"], json!({"alice": 3}), "{j}");

    // a bad flag is a bad request
    let e = request(
        &mut carol,
        json!({"type": "join", "room": "r", "reads": "yes"}),
        "bad",
    );
    assert_eq!(e["code"], "bad_request", "{e}");

    // markers are stored: a restarted server still has them
    drop((alice, bob, bob2, carol));
    let mut srv = srv;
    srv.signal(15);
    assert!(srv.wait_exit(std::time::Duration::from_secs(30)).is_some());
    let srv = sqlite_server(&data);
    let (mut dave, _) = connect(&srv, "dave");
    let mut j = Value::Null;
    wait_until("the restarted server has the markers", || {
        j = join_reads(&mut dave, "r");
        j["reads"] == json!({"alice": 3, "bob": 2})
    });
    assert_eq!(j["seq"], 3);
}
