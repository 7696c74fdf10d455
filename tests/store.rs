//! The durable store through real sockets: a full disk, a database another
//! process has locked, and retention, each driven by real clients against
//! the real SQLite file.
mod common;

use common::chat::*;
use common::*;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A private tmpfs, so a test can fill the disk without touching the host.
/// Needs root (CI and `scripts/test.sh` run as root); elsewhere the test
/// fails with the reason rather than passing without checking anything.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("corechat-tmpfs")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the server may still hold files while it is being killed.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem holding `dir` until a write fails with ENOSPC.
fn fill_disk(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = File::create(&path).expect("create filler");
    let chunk = vec![0u8; 16 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling the disk failed otherwise: {e}"),
        }
    }
    // Also the last partial page.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    path
}

fn libc_enospc() -> i32 {
    28
}

fn ready_status(srv: &Server) -> u16 {
    srv.http("GET", "/ready", &[], "").0
}

fn wait_ready(srv: &Server, want: u16) {
    wait_until(&format!("/ready {want}"), || ready_status(srv) == want);
}

/// One reply per publish: `Ok(seq)` for an ack, `Err(code)` for an error.
/// Messages of the room seen on the way are collected into `seen`.
fn publish_one(
    c: &mut Client,
    room: &str,
    id: u64,
    body: &Value,
    seen: &mut Vec<Value>,
) -> Result<u64, String> {
    c.send_json(json!({"type": "publish", "room": room, "id": id, "body": body}));
    loop {
        let v = c.recv_json();
        if v["type"] == "message" && v["room"] == room {
            seen.push(v);
            continue;
        }
        if v["id"] != id {
            continue;
        }
        return match v["type"].as_str() {
            Some("ack") => Ok(v["seq"].as_u64().expect("seq")),
            Some("error") => Err(v["code"].as_str().unwrap_or("?").to_string()),
            _ => panic!("unexpected reply {v}"),
        };
    }
}

fn sqlite_flags(dir: &str) -> Vec<String> {
    let mut flags: Vec<String> = ["--shards", "2", "--store", "sqlite", "--data-dir", dir]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(FAST.iter().map(|s| s.to_string()));
    flags
}

fn start(flags: &[String]) -> Server {
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// Checks that the stored history is exactly the acknowledged messages, with
/// their bodies, and that members saw exactly those too.
fn assert_history_is_exactly(srv: &Server, room: &str, acked: &[(u64, Value)], seen: &[Value]) {
    let (history, _) = full_history(srv, room);
    let stored: Vec<(u64, Value)> = history
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["body"].clone()))
        .collect();
    assert_eq!(
        stored, acked,
        "history must hold every acked message and nothing else"
    );
    let delivered: Vec<(u64, Value)> = seen
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["body"].clone()))
        .collect();
    assert_eq!(delivered, acked, "members see exactly the acked messages");
}

#[test]
fn full_disk_answers_unavailable_never_acks_and_recovers() {
    let fs = Tmpfs::mount("6m");
    let data = fs.path().join("data");
    let flags = sqlite_flags(data.to_str().unwrap());
    let srv = start(&flags);
    let mut p = client(&srv, "pub");
    let mut m = client(&srv, "member");
    join_with(&mut p, "disk", None);
    join_with(&mut m, "disk", None);
    assert_eq!(ready_status(&srv), 200);

    let mut acked: Vec<(u64, Value)> = Vec::new();
    let mut seen = Vec::new();
    for i in 0..10 {
        let body = json!({"i": i});
        let seq =
            publish_one(&mut p, "disk", i, &body, &mut seen).expect("ack before the disk fills");
        acked.push((seq, body));
    }
    let filler = fill_disk(fs.path());

    // Large bodies need fresh pages: sooner or later SQLite hits ENOSPC.
    let big = "x".repeat(12 * 1024);
    let mut refused = 0;
    let mut id = 100;
    while refused < 3 {
        assert!(id < 2_000, "the store never reported the full disk");
        let body = json!({"i": id, "pad": big});
        match publish_one(&mut p, "disk", id, &body, &mut seen) {
            Ok(seq) => acked.push((seq, body)),
            Err(code) => {
                assert_eq!(code, "unavailable");
                refused += 1;
            }
        }
        id += 1;
    }
    assert_eq!(ready_status(&srv), 503, "/ready reports the broken store");
    // The connection and the server keep working meanwhile.
    assert_eq!(
        request(&mut p, json!({"type": "ping"}), "alive")["type"],
        "pong"
    );

    // Space comes back: the store recovers by itself, numbering goes on
    // without a gap.
    fs::remove_file(&filler).unwrap();
    wait_ready(&srv, 200);
    let last = acked.last().unwrap().0;
    let body = json!({"after": "recovery"});
    let seq = publish_one(&mut p, "disk", 9_999, &body, &mut seen).expect("ack after recovery");
    assert_eq!(seq, last + 1, "no gap after refused publishes");
    acked.push((seq, body));

    // Collect the member's copy of everything that was acknowledged.
    let mut member_seen = Vec::new();
    while member_seen.len() < acked.len() {
        member_seen.push(next_message(&mut m, "disk"));
    }
    assert_history_is_exactly(&srv, "disk", &acked, &member_seen);
    let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn locked_database_answers_unavailable_then_recovers() {
    let dir = tempdir();
    let data = dir.path().to_str().unwrap().to_string();
    let srv = start(&sqlite_flags(&data));
    let mut p = client(&srv, "pub");
    join_with(&mut p, "lock", None);
    let mut seen = Vec::new();
    let mut acked = Vec::new();
    for i in 0..5 {
        let body = json!(i);
        acked.push((
            publish_one(&mut p, "lock", i, &body, &mut seen).unwrap(),
            body,
        ));
    }

    // Another process (a backup tool, an operator's sqlite3 shell) takes
    // the write lock and keeps it past the server's busy timeout.
    let db = rusqlite::Connection::open(dir.path().join("corechat.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t0 = Instant::now();
    let r = publish_one(&mut p, "lock", 50, &json!("blocked"), &mut seen);
    assert_eq!(
        r,
        Err("unavailable".to_string()),
        "no false ack while locked"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "it waited for the lock first"
    );
    assert_eq!(ready_status(&srv), 503);
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);

    wait_ready(&srv, 200);
    let body = json!("after");
    let seq = publish_one(&mut p, "lock", 51, &body, &mut seen).unwrap();
    assert_eq!(seq, 6);
    acked.push((seq, body));
    while seen.len() < acked.len() {
        seen.push(next_message(&mut p, "lock"));
    }
    assert_history_is_exactly(&srv, "lock", &acked, &seen);
}

#[test]
fn retention_by_count_drops_old_messages_and_resume_says_not_recovered() {
    let dir = tempdir();
    let data = dir.path().to_str().unwrap().to_string();
    let mut flags = sqlite_flags(&data);
    for f in [
        "--retention-messages",
        "10",
        "--retention-interval",
        "1s",
        "--history-ring",
        "5",
    ] {
        flags.push(f.into());
    }
    let mut srv = start(&flags);
    let mut p = client(&srv, "pub");
    join_with(&mut p, "kept", None);
    let (acks, _) = publish_n(&mut p, "kept", "p", 30, None);
    assert_eq!(acks, (1..=30).collect::<Vec<_>>());
    let epoch = join_with(&mut client(&srv, "e"), "kept", None)["epoch"].clone();

    wait_until("retention trims the room to 10 messages", || {
        let (h, _) = full_history(&srv, "kept");
        h.first().and_then(|m| m["seq"].as_u64()) == Some(21)
    });
    let (h, _) = full_history(&srv, "kept");
    assert_eq!(seqs(&h), (21..=30).collect::<Vec<_>>());

    // Restart: the ring is empty, everything comes from the file.
    drop(p);
    srv.signal(15);
    assert!(srv.wait_exit(Duration::from_secs(30)).is_some());
    srv = start(&flags);

    let mut old = client(&srv, "old");
    let j = join_with(&mut old, "kept", Some(3));
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["seq"], 30);
    assert_eq!(j["epoch"], epoch, "retention is not history loss");
    assert_eq!(
        seqs(&messages(&mut old, "kept", 10)),
        (21..=30).collect::<Vec<_>>()
    );

    let mut recent = client(&srv, "recent");
    let j = join_with(&mut recent, "kept", Some(22));
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(
        seqs(&messages(&mut recent, "kept", 8)),
        (23..=30).collect::<Vec<_>>()
    );

    // Numbering continues after the restart, live after the replay.
    let mut p = client(&srv, "pub");
    join_with(&mut p, "kept", None);
    let ack = request(
        &mut p,
        json!({"type": "publish", "room": "kept", "body": "31"}),
        "a",
    );
    assert_eq!(ack["seq"], 31, "{ack}");
    assert_eq!(next_message(&mut old, "kept")["seq"], 31);
    assert_eq!(next_message(&mut recent, "kept")["seq"], 31);
}

#[test]
fn retention_by_age_empties_a_quiet_room_but_keeps_its_numbering() {
    let dir = tempdir();
    let data = dir.path().to_str().unwrap().to_string();
    let mut flags = sqlite_flags(&data);
    for f in ["--retention-age", "1s", "--retention-interval", "1s"] {
        flags.push(f.into());
    }
    let srv = start(&flags);
    let mut p = client(&srv, "pub");
    join_with(&mut p, "aged", None);
    publish_n(&mut p, "aged", "p", 5, None);
    wait_until("retention by age empties the room", || {
        full_history(&srv, "aged").0.is_empty()
    });
    // The in-memory ring forgot them too: a resume from 0 replays nothing.
    let mut fresh = client(&srv, "fresh");
    let j = join_with(&mut fresh, "aged", Some(0));
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["seq"], 5);
    quiet_except(&mut fresh, 300, &["user_joined"]);
    // And after a restart, from the file alone.
    drop(p);
    drop(srv);
    let srv = start(&flags);
    let mut c = client(&srv, "late");
    let j = join_with(&mut c, "aged", Some(0));
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["seq"], 5);
    // The ack and the message travel separately: either may come first.
    let (ack, msgs) = reply_and_messages(
        &mut c,
        json!({"type": "publish", "room": "aged", "body": 6}),
        "a",
        "aged",
        1,
    );
    assert_eq!(ack["seq"], 6, "{ack}");
    assert_eq!(seqs(&msgs), vec![6]);
}

#[test]
fn rooms_list_survives_a_restart_without_the_rooms_left() {
    let dir = tempdir();
    let data = dir.path().to_str().unwrap().to_string();
    let flags = sqlite_flags(&data);
    let mut srv = start(&flags);
    let mut u = client(&srv, "u");
    for room in ["stay", "go", "quiet"] {
        join_with(&mut u, room, None);
    }
    request(
        &mut u,
        json!({"type": "publish", "room": "stay", "body": 1}),
        "p1",
    );
    request(
        &mut u,
        json!({"type": "publish", "room": "go", "body": 1}),
        "p2",
    );
    u.send_json(json!({"type": "read", "room": "go", "seq": 1}));
    assert_eq!(
        request(&mut u, json!({"type": "leave", "room": "go"}), "l")["type"],
        "left"
    );
    // The list lives on the user's home shard, told by the room's home.
    let mut before = Value::Null;
    wait_until("the room left leaves the list", || {
        before = request(&mut u, json!({"type": "rooms"}), "rooms");
        before["rooms"].as_array().unwrap().len() == 2
    });
    // A publish round-trip after the leave commits what was queued before it.
    request(
        &mut u,
        json!({"type": "publish", "room": "stay", "body": 2}),
        "p3",
    );
    drop(u);
    srv.signal(15);
    assert!(srv.wait_exit(Duration::from_secs(30)).is_some());

    let srv = start(&flags);
    let mut u = client(&srv, "u");
    let after = request(&mut u, json!({"type": "rooms"}), "rooms");
    let names = |v: &Value| -> Vec<String> {
        v["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&before), vec!["quiet", "stay"], "{before}");
    assert_eq!(names(&after), names(&before), "{after}");
    // Rejoining the room left keeps its read position.
    let j = join_with(&mut u, "go", None);
    assert_eq!(j["read"], 1, "{j}");
}
