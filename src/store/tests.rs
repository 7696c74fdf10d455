//! Store tests against real SQLite files in temp dirs. No timing asserts:
//! waits have generous safety timeouts only so a bug fails instead of hangs.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;

const WAIT: Duration = Duration::from_secs(60);

fn config(path: &Path, durability: Durability) -> StoreConfig {
    StoreConfig {
        path: path.to_path_buf(),
        durability,
        batch_max: 64,
        batch_delay: Duration::from_millis(2),
        retention_messages: None,
        retention_age: None,
        // Tests trigger retention through the hook, never by timer.
        retention_interval: Duration::from_secs(3600),
        queue_capacity: 1024,
        read_queue_capacity: 1024,
    }
}

fn msg(room: &str, seq: u64, body: &str) -> StoredMessage {
    StoredMessage {
        room: room.to_owned(),
        seq,
        ts: 1_700_000_000_000 + seq,
        from: "alice".into(),
        name: "Alice".into(),
        body: body.to_owned(),
    }
}

fn epochs(rooms: &[&str]) -> Vec<(String, String)> {
    rooms
        .iter()
        .map(|r| (r.to_string(), format!("epoch-{r}")))
        .collect()
}

fn append(
    h: &StoreHandle,
    msgs: Vec<StoredMessage>,
    ep: Vec<(String, String)>,
) -> Vec<Result<(), StoreError>> {
    let (tx, rx) = mpsc::channel();
    h.append(
        msgs,
        ep,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(WAIT).expect("append reply")
}

fn append_ok(h: &StoreHandle, room: &str, seqs: std::ops::RangeInclusive<u64>) {
    let msgs = seqs
        .map(|s| msg(room, s, &format!("{{\"n\":{s}}}")))
        .collect();
    let res = append(h, msgs, epochs(&[room]));
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
}

fn range(
    h: &StoreHandle,
    room: &str,
    after: Option<u64>,
    before: Option<u64>,
    limit: usize,
) -> (Vec<u64>, bool) {
    let (msgs, more) = range_msgs(
        h,
        room,
        RangeQuery {
            after,
            before,
            limit,
        },
    );
    (msgs.iter().map(|m| m.seq).collect(), more)
}

fn range_msgs(h: &StoreHandle, room: &str, q: RangeQuery) -> (Vec<StoredMessage>, bool) {
    let (tx, rx) = mpsc::channel();
    h.range(
        room.to_owned(),
        q,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(WAIT)
        .expect("range reply")
        .expect("range ok")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn seqs(r: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    r.collect()
}

#[test]
fn append_and_range_all_modes() {
    for durability in [Durability::Sync, Durability::Relaxed] {
        let dir = tempfile::tempdir().unwrap();
        let (store, h) = SqliteStore::open(config(&dir.path().join("c.db"), durability)).unwrap();
        append_ok(&h, "r1", 1..=10);

        // after (+ before): ascending from the bottom
        assert_eq!(range(&h, "r1", Some(3), None, 4), (seqs(4..=7), true));
        assert_eq!(range(&h, "r1", Some(7), None, 4), (seqs(8..=10), false));
        assert_eq!(range(&h, "r1", Some(6), None, 4), (seqs(7..=10), false));
        assert_eq!(range(&h, "r1", Some(2), Some(6), 10), (seqs(3..=5), false));
        assert_eq!(range(&h, "r1", Some(2), Some(6), 2), (seqs(3..=4), true));
        assert_eq!(range(&h, "r1", Some(0), None, 100), (seqs(1..=10), false));
        assert_eq!(range(&h, "r1", Some(10), None, 5), (vec![], false));
        // only before: the latest below it
        assert_eq!(range(&h, "r1", None, Some(5), 2), (seqs(3..=4), true));
        assert_eq!(range(&h, "r1", None, Some(3), 5), (seqs(1..=2), false));
        assert_eq!(range(&h, "r1", None, Some(1), 5), (vec![], false));
        // neither: the latest
        assert_eq!(range(&h, "r1", None, None, 3), (seqs(8..=10), true));
        assert_eq!(range(&h, "r1", None, None, 10), (seqs(1..=10), false));
        assert_eq!(range(&h, "r1", None, None, 50), (seqs(1..=10), false));
        assert_eq!(range(&h, "r1", None, None, 0), (vec![], true));
        // huge bounds do not overflow
        assert_eq!(range(&h, "r1", Some(u64::MAX), None, 5), (vec![], false));
        assert_eq!(
            range(&h, "r1", None, Some(u64::MAX), 2),
            (seqs(9..=10), true)
        );
        // unknown room
        assert_eq!(range(&h, "nope", None, None, 5), (vec![], false));

        let (msgs, _) = range_msgs(
            &h,
            "r1",
            RangeQuery {
                after: Some(4),
                before: None,
                limit: 1,
            },
        );
        assert_eq!(msgs, vec![msg("r1", 5, "{\"n\":5}")]);
        assert!(h.is_available());
        assert_eq!(h.queued(), 0);
        store.shutdown().unwrap();
    }
}

#[test]
fn concurrent_appenders_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("c.db"), Durability::Sync);
    cfg.queue_capacity = 10_000;
    cfg.batch_max = 256;
    let (store, h) = SqliteStore::open(cfg).unwrap();
    const PER_ROOM: u64 = 150;
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let h = h.clone();
            thread::spawn(move || {
                // Like a shard: pipelined appends, one message each, to the
                // rooms this thread owns; replies collected afterwards.
                let (tx, rx) = mpsc::channel();
                let rooms = [format!("t{t}-a"), format!("t{t}-b")];
                for seq in 1..=PER_ROOM {
                    for room in &rooms {
                        let tx = tx.clone();
                        let m = msg(room, seq, &format!("{{\"t\":{t},\"s\":{seq}}}"));
                        h.append(
                            vec![m],
                            vec![(room.clone(), "e".into())],
                            Box::new(move |r| {
                                let _ = tx.send(r);
                            }),
                        );
                    }
                }
                drop(tx);
                let mut n = 0;
                while let Ok(r) = rx.recv_timeout(WAIT) {
                    assert_eq!(r.len(), 1);
                    assert!(r[0].is_ok(), "{r:?}");
                    n += 1;
                }
                assert_eq!(n, PER_ROOM * 2);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Group commit: 1,800 appends, pipelined by 6 threads, go through far
    // fewer transactions than one each (batches of up to `batch_max`, 256).
    let appends = 6 * PER_ROOM * 2;
    let commits = h.commits();
    assert!(commits > 0);
    assert!(
        commits * 10 <= appends,
        "{commits} commits for {appends} appends: appends are not grouped"
    );
    // A multi-room append in one request.
    let res = append(
        &h,
        vec![msg("x", 1, "1"), msg("y", 1, "2"), msg("x", 2, "3")],
        epochs(&["x", "y"]),
    );
    assert_eq!(res, vec![Ok(()), Ok(()), Ok(())]);

    for t in 0..6 {
        for room in [format!("t{t}-a"), format!("t{t}-b")] {
            let (msgs, more) = range_msgs(
                &h,
                &room,
                RangeQuery {
                    after: Some(0),
                    before: None,
                    limit: 1000,
                },
            );
            assert!(!more);
            assert_eq!(msgs.len() as u64, PER_ROOM);
            for (i, m) in msgs.iter().enumerate() {
                let seq = i as u64 + 1;
                assert_eq!(m, &msg(&room, seq, &format!("{{\"t\":{t},\"s\":{seq}}}")));
            }
        }
    }
    assert_eq!(range(&h, "x", None, None, 10), (vec![1, 2], false));
    assert!(h.commits() > commits, "the multi-room append committed");
    assert_eq!(h.queued(), 0);
    store.shutdown().unwrap();
}

#[test]
fn body_bytes_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let bodies = [
        r#"{"big":12345678901234567890,"neg":-98765432109876543210}"#,
        r#""héllo wörld 🌍 日本語 \u00e9""#,
        r#"{"q":"say \"hi\" \\ back\n","tab":"\t"}"#,
        "[1.0e10, -0.0, 0.1000000000000000055511151231257827]",
        "{ \"spaced\" :  true ,\n \"x\":null }",
        "12345678901234567890",
    ];
    let msgs: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| msg("bytes", i as u64 + 1, b))
        .collect();
    {
        let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
        assert!(append(&h, msgs.clone(), epochs(&["bytes"]))
            .iter()
            .all(|r| r.is_ok()));
        let (got, _) = range_msgs(
            &h,
            "bytes",
            RangeQuery {
                after: None,
                before: None,
                limit: 10,
            },
        );
        assert_eq!(got, msgs);
        store.shutdown().unwrap();
    }
    let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    let (got, _) = range_msgs(
        &h,
        "bytes",
        RangeQuery {
            after: Some(0),
            before: None,
            limit: 10,
        },
    );
    assert_eq!(got, msgs);
    for (m, b) in got.iter().zip(bodies) {
        assert_eq!(m.body.as_bytes(), b.as_bytes());
    }
    store.shutdown().unwrap();
}

#[test]
fn out_of_order_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h) =
        SqliteStore::open(config(&dir.path().join("c.db"), Durability::Relaxed)).unwrap();
    let ooo = |expected, got| {
        Err(StoreError::OutOfOrder {
            room: "r".into(),
            expected,
            got,
        })
    };

    // A new room must start at 1.
    assert_eq!(
        append(&h, vec![msg("r", 2, "0")], epochs(&["r"])),
        vec![ooo(1, 2)]
    );
    append_ok(&h, "r", 1..=1);
    assert_eq!(append(&h, vec![msg("r", 3, "0")], vec![]), vec![ooo(2, 3)]);
    assert_eq!(
        append(&h, vec![msg("r", 1, "dup")], vec![]),
        vec![ooo(2, 1)]
    );
    // Per message: the bad one is refused, the rest of the request written.
    assert_eq!(
        append(
            &h,
            vec![
                msg("r", 2, "0"),
                msg("r", 3, "0"),
                msg("r", 5, "0"),
                msg("r", 4, "0")
            ],
            vec![]
        ),
        vec![Ok(()), Ok(()), ooo(4, 5), Ok(())]
    );
    assert_eq!(range(&h, "r", None, None, 10), (seqs(1..=4), false));
    // Two requests in the same batch continue each other's numbering.
    let (tx, rx) = mpsc::channel();
    for s in 5..=8 {
        let tx = tx.clone();
        h.append(
            vec![msg("r", s, "0")],
            vec![],
            Box::new(move |r| tx.send((s, r)).unwrap()),
        );
    }
    for _ in 5..=8 {
        let (_, r) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(r, vec![Ok(())]);
    }
    // A new room without an epoch is refused.
    assert!(matches!(
        append(&h, vec![msg("fresh", 1, "0")], vec![])[0],
        Err(StoreError::InvalidInput(_))
    ));
    // Values SQLite cannot hold are refused, not wrapped.
    let mut bad = msg("r", 9, "0");
    bad.ts = u64::MAX;
    assert!(matches!(
        append(&h, vec![bad], vec![])[0],
        Err(StoreError::InvalidInput(_))
    ));
    append_ok(&h, "r", 9..=9);
    assert_eq!(range(&h, "r", None, None, 20), (seqs(1..=9), false));
    assert_eq!(append(&h, vec![], vec![]), vec![]);
    store.shutdown().unwrap();
}

#[test]
fn reopen_restores_rooms_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/c.db");
    {
        let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
        append_ok(&h, "a", 1..=5);
        append_ok(&h, "b", 1..=2);
        store.shutdown().unwrap();
    }
    let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    let mut rooms = store.load_rooms().unwrap();
    rooms.sort_by(|x, y| x.room.cmp(&y.room));
    assert_eq!(
        rooms,
        vec![
            RoomState {
                room: "a".into(),
                epoch: "epoch-a".into(),
                last_seq: 5
            },
            RoomState {
                room: "b".into(),
                epoch: "epoch-b".into(),
                last_seq: 2
            },
        ]
    );
    // Numbering continues; an epoch passed for an existing room is ignored.
    assert_eq!(
        append(
            &h,
            vec![msg("a", 6, "6")],
            vec![("a".into(), "other".into())]
        ),
        vec![Ok(())]
    );
    assert_eq!(
        append(&h, vec![msg("b", 1, "again")], vec![]),
        vec![Err(StoreError::OutOfOrder {
            room: "b".into(),
            expected: 3,
            got: 1
        })]
    );
    assert_eq!(range(&h, "a", None, None, 10), (seqs(1..=6), false));
    let a = store
        .load_rooms()
        .unwrap()
        .into_iter()
        .find(|r| r.room == "a")
        .unwrap();
    assert_eq!((a.epoch.as_str(), a.last_seq), ("epoch-a", 6));
    store.shutdown().unwrap();
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let (store, _h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    store.shutdown().unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    assert!(matches!(
        SqliteStore::open(config(&path, Durability::Sync)),
        Err(StoreError::Schema(_))
    ));
}

#[test]
fn version_1_file_is_migrated_and_keeps_its_markers_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let (store, _h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    store.shutdown().unwrap();
    {
        // Turn the file back into what version 1 wrote.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE read_markers DROP COLUMN listed;
             INSERT INTO read_markers(user, room, seq) VALUES ('u', 'r', 3);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let (store, _h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    assert_eq!(
        store.load_read_markers().unwrap(),
        vec![("u".to_string(), "r".to_string(), 3, true)]
    );
    store.shutdown().unwrap();
}

#[test]
fn read_markers_keep_max_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
        h.set_read("u".into(), "r".into(), 5);
        h.set_read("u".into(), "r".into(), 3);
        h.set_read("u".into(), "r2".into(), 7);
        h.set_read("v".into(), "r".into(), 1);
        // An append round-trip commits the markers queued before it.
        append_ok(&h, "r", 1..=1);
        assert_eq!(store.load_read_markers().unwrap().len(), 3);
        // Lower value in a later batch must not win.
        h.set_read("u".into(), "r2".into(), 2);
        store.shutdown().unwrap();
    }
    let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    let mut marks = store.load_read_markers().unwrap();
    marks.sort();
    assert_eq!(
        marks,
        vec![
            ("u".to_string(), "r".to_string(), 5, true),
            ("u".to_string(), "r2".to_string(), 7, true),
            ("v".to_string(), "r".to_string(), 1, true),
        ]
    );
    h.set_read("v".into(), "r".into(), 9);
    store.shutdown().unwrap();
    let (store, _h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    assert!(store.load_read_markers().unwrap().contains(&(
        "v".to_string(),
        "r".to_string(),
        9,
        true
    )));
    store.shutdown().unwrap();
}

#[test]
fn room_listing_survives_reopen_and_keeps_the_read_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    {
        let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
        h.set_listed("u".into(), "joined".into(), true);
        h.set_read("u".into(), "left".into(), 4);
        h.set_listed("u".into(), "left".into(), false);
        // Listing again later, in another batch, must not lower the seq.
        append_ok(&h, "x", 1..=1);
        h.set_listed("u".into(), "left2".into(), true);
        h.set_read("u".into(), "left2".into(), 6);
        append_ok(&h, "x", 2..=2);
        h.set_listed("u".into(), "left2".into(), false);
        store.shutdown().unwrap();
    }
    let (store, _h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    let mut marks = store.load_read_markers().unwrap();
    marks.sort();
    assert_eq!(
        marks,
        vec![
            ("u".to_string(), "joined".to_string(), 0, true),
            ("u".to_string(), "left".to_string(), 4, false),
            ("u".to_string(), "left2".to_string(), 6, false),
        ]
    );
    store.shutdown().unwrap();
}

fn sorted_markers(store: &SqliteStore) -> Vec<(String, String, u64, bool)> {
    let mut marks = store.load_read_markers().unwrap();
    marks.sort();
    marks
}

fn marker(user: &str, room: &str, seq: u64, listed: bool) -> (String, String, u64, bool) {
    (user.to_owned(), room.to_owned(), seq, listed)
}

#[test]
fn retention_sweeps_unlisted_markers_of_rooms_without_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("m.db"), Durability::Relaxed);
    cfg.queue_capacity = 10_000;
    cfg.retention_messages = Some(1);
    let (store, h) = SqliteStore::open(cfg.clone()).unwrap();
    append_ok(&h, "talk", 1..=3);
    // Joined and left 2,500 rooms nobody ever posted in: more rows than
    // one sweep transaction visits.
    for i in 0..2500 {
        h.set_listed("spam".into(), format!("empty-{i:04}"), false);
    }
    // Listed, room without messages: the user's rooms list, kept.
    h.set_listed("u".into(), "quiet".into(), true);
    // Left a room that has history: the read position is kept.
    h.set_read("u".into(), "talk".into(), 2);
    h.set_listed("u".into(), "talk".into(), false);
    h.set_listed("v".into(), "talk".into(), true);
    h.set_listed("w".into(), "nothing".into(), false);
    // The append's round trip commits every marker queued before it.
    append_ok(&h, "talk", 4..=4);
    assert_eq!(store.load_read_markers().unwrap().len(), 2500 + 4);

    // The pass trims "talk" down to its last message, then the markers.
    assert_eq!(h.run_retention_for_test().unwrap(), 3);
    let kept = vec![
        marker("u", "quiet", 0, true),
        marker("u", "talk", 2, false),
        marker("v", "talk", 0, true),
    ];
    assert_eq!(sorted_markers(&store), kept);
    assert_eq!(h.run_retention_for_test().unwrap(), 0);
    assert_eq!(sorted_markers(&store), kept);
    // Still a working marker table: positions keep growing, listing again.
    h.set_read("u".into(), "talk".into(), 4);
    h.set_listed("u".into(), "talk".into(), true);
    append_ok(&h, "talk", 5..=5);
    store.shutdown().unwrap();

    // Without message retention the periodic pass still sweeps markers.
    cfg.retention_messages = None;
    let (store, h) = SqliteStore::open(cfg).unwrap();
    let kept = vec![
        marker("u", "quiet", 0, true),
        marker("u", "talk", 4, true),
        marker("v", "talk", 0, true),
    ];
    assert_eq!(sorted_markers(&store), kept);
    h.set_listed("u".into(), "quiet".into(), false);
    append_ok(&h, "talk", 6..=6);
    assert_eq!(h.run_retention_for_test().unwrap(), 0);
    assert_eq!(sorted_markers(&store), kept[1..].to_vec());
    assert_eq!(range(&h, "talk", Some(0), None, 10), (seqs(4..=6), false));
    store.shutdown().unwrap();
}

#[test]
fn periodic_pass_sweeps_markers_without_message_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("p.db"), Durability::Relaxed);
    cfg.retention_interval = Duration::from_millis(20);
    let (store, h) = SqliteStore::open(cfg).unwrap();
    h.set_listed("u".into(), "empty".into(), false);
    h.set_listed("u".into(), "kept".into(), true);
    append_ok(&h, "r", 1..=1);
    let mut waited = Duration::ZERO;
    while sorted_markers(&store) != vec![marker("u", "kept", 0, true)] {
        assert!(waited < WAIT, "the timer-driven pass never swept");
        thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    assert_eq!(range(&h, "r", None, None, 10), (vec![1], false));
    store.shutdown().unwrap();
}

#[test]
fn retention_by_count_keeps_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut cfg = config(&path, Durability::Relaxed);
    cfg.retention_messages = Some(3);
    let (store, h) = SqliteStore::open(cfg.clone()).unwrap();
    append_ok(&h, "big", 1..=10);
    append_ok(&h, "small", 1..=2);
    assert_eq!(h.run_retention_for_test().unwrap(), 7);
    assert_eq!(range(&h, "big", None, None, 100), (seqs(8..=10), false));
    assert_eq!(range(&h, "big", Some(0), None, 100), (seqs(8..=10), false));
    assert_eq!(range(&h, "small", None, None, 100), (seqs(1..=2), false));
    // Nothing left to trim: a second pass deletes nothing.
    assert_eq!(h.run_retention_for_test().unwrap(), 0);
    append_ok(&h, "big", 11..=12);
    assert_eq!(h.run_retention_for_test().unwrap(), 2);
    assert_eq!(range(&h, "big", None, None, 100), (seqs(10..=12), false));
    store.shutdown().unwrap();

    let (store, h) = SqliteStore::open(cfg).unwrap();
    let big = store
        .load_rooms()
        .unwrap()
        .into_iter()
        .find(|r| r.room == "big")
        .unwrap();
    assert_eq!(big.last_seq, 12);
    append_ok(&h, "big", 13..=13);
    assert_eq!(range(&h, "big", None, None, 100), (seqs(10..=13), false));
    store.shutdown().unwrap();
}

#[test]
fn retention_by_age_keeps_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("c.db"), Durability::Relaxed);
    cfg.retention_age = Some(Duration::from_secs(600));
    let (store, h) = SqliteStore::open(cfg).unwrap();
    let now = now_ms();
    let hour = 3_600_000;
    let mut msgs: Vec<_> = (1..=10).map(|s| msg("r", s, "{}")).collect();
    for m in &mut msgs[..6] {
        m.ts = now - hour;
    }
    for m in &mut msgs[6..] {
        m.ts = now;
    }
    let mut old_only: Vec<_> = (1..=3).map(|s| msg("old", s, "{}")).collect();
    for m in &mut old_only {
        m.ts = now - 2 * hour;
    }
    msgs.extend(old_only);
    assert!(append(&h, msgs, epochs(&["r", "old"]))
        .iter()
        .all(|r| r.is_ok()));
    assert_eq!(h.run_retention_for_test().unwrap(), 9);
    assert_eq!(range(&h, "r", None, None, 100), (seqs(7..=10), false));
    assert_eq!(range(&h, "old", None, None, 100), (vec![], false));
    // Numbering continues in the emptied room.
    assert_eq!(
        append(&h, vec![msg("old", 1, "{}")], vec![]),
        vec![Err(StoreError::OutOfOrder {
            room: "old".into(),
            expected: 4,
            got: 1
        })]
    );
    append_ok(&h, "old", 4..=4);
    assert_eq!(h.run_retention_for_test().unwrap(), 1); // msg() ts is in 2023
    let mut rooms = store.load_rooms().unwrap();
    rooms.sort_by(|x, y| x.room.cmp(&y.room));
    assert_eq!((rooms[0].last_seq, rooms[1].last_seq), (4, 10));
    store.shutdown().unwrap();
}

#[test]
fn disk_full_fails_whole_batch_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h) = SqliteStore::open(config(&dir.path().join("c.db"), Durability::Sync)).unwrap();
    append_ok(&h, "r", 1..=3);
    let pages = h.set_max_page_count_for_test(1).unwrap();
    assert!(pages >= 1);

    let big = "x".repeat(4000);
    let batch = |from: u64| -> Vec<StoredMessage> {
        (from..from + 20)
            .map(|s| msg("r", s, &format!("\"{big}\"")))
            .collect()
    };
    let res = append(&h, batch(4), vec![]);
    assert_eq!(res.len(), 20);
    assert!(
        res.iter()
            .all(|r| matches!(r, Err(StoreError::Unavailable(_)))),
        "{res:?}"
    );
    assert!(!h.is_available());
    assert_eq!(h.queued(), 0);
    // Nothing of the failed batch is visible, and numbering did not advance.
    assert_eq!(range(&h, "r", None, None, 100), (seqs(1..=3), false));
    let res = append(&h, batch(4), vec![]);
    assert!(res
        .iter()
        .all(|r| matches!(r, Err(StoreError::Unavailable(_)))));
    assert!(!h.is_available());

    // "Free space": the same messages, same seqs, now succeed.
    h.set_max_page_count_for_test(1 << 30).unwrap();
    let res = append(&h, batch(4), vec![]);
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    assert!(h.is_available());
    assert_eq!(range(&h, "r", Some(0), None, 100), (seqs(1..=23), false));
    store.shutdown().unwrap();
}

#[test]
fn unavailable_store_recovers_by_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h) =
        SqliteStore::open(config(&dir.path().join("c.db"), Durability::Relaxed)).unwrap();
    append_ok(&h, "r", 1..=1);
    h.set_max_page_count_for_test(1).unwrap();
    let big = format!("\"{}\"", "y".repeat(20_000));
    let res = append(&h, vec![msg("r", 2, &big)], vec![]);
    assert!(matches!(res[0], Err(StoreError::Unavailable(_))));
    assert!(!h.is_available());
    h.set_max_page_count_for_test(1 << 30).unwrap();
    // No appends: the thread's own probe must bring it back.
    let mut waited = Duration::ZERO;
    while !h.is_available() {
        assert!(waited < WAIT, "store never recovered");
        thread::sleep(Duration::from_millis(50));
        waited += Duration::from_millis(50);
    }
    store.shutdown().unwrap();
}

#[test]
fn shutdown_flushes_pending_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut cfg = config(&path, Durability::Sync);
    cfg.queue_capacity = 20_000;
    // A long fill window: only shutdown can make these commit promptly.
    cfg.batch_delay = Duration::from_secs(30);
    cfg.batch_max = 1_000_000;
    let (store, h) = SqliteStore::open(cfg.clone()).unwrap();
    let (tx, rx) = mpsc::channel();
    const N: u64 = 5000;
    for s in 1..=N {
        let tx = tx.clone();
        h.append(
            vec![msg("r", s, "{}")],
            epochs(&["r"]),
            Box::new(move |r| tx.send(r).unwrap()),
        );
    }
    // Reads are served while the batch is still filling, not after it.
    let (seqs_now, _) = range(&h, "r", None, None, 10);
    assert!(seqs_now.is_empty());
    assert!(rx.try_recv().is_err(), "batch committed before shutdown");
    store.shutdown().unwrap();
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    assert_eq!(results.len() as u64, N);
    assert!(results.iter().all(|r| r == &vec![Ok(())]));
    assert!(!h.is_available());
    // After shutdown the handle answers at once instead of hanging.
    assert!(matches!(
        append(&h, vec![msg("r", N + 1, "{}")], vec![])[0],
        Err(StoreError::Unavailable(_))
    ));

    cfg.batch_delay = Duration::from_millis(1);
    let (store, h) = SqliteStore::open(cfg).unwrap();
    assert_eq!(store.load_rooms().unwrap()[0].last_seq, N);
    let (all, more) = range(&h, "r", Some(0), None, 10_000);
    assert!(!more);
    assert_eq!(all, seqs(1..=N));
    store.shutdown().unwrap();
}

#[test]
fn full_queue_answers_busy_immediately() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("c.db"), Durability::Relaxed);
    cfg.queue_capacity = 1;
    cfg.batch_delay = Duration::ZERO;
    let (store, h) = SqliteStore::open(cfg).unwrap();
    // Park the store thread inside a reply so the queue cannot drain.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    h.append(
        vec![msg("r", 1, "{}")],
        epochs(&["r"]),
        Box::new(move |_| {
            entered_tx.send(()).unwrap();
            let _ = release_rx.recv();
        }),
    );
    entered_rx.recv_timeout(WAIT).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    h.append(
        vec![msg("r", 2, "{}")],
        vec![],
        Box::new(move |r| tx.send(r).unwrap()),
    );
    h.append(
        vec![msg("r", 3, "{}")],
        vec![],
        Box::new(move |r| tx2.send(r).unwrap()),
    );
    // The second one found the single slot taken: answered on this thread.
    assert_eq!(rx.try_recv().unwrap(), vec![Err(StoreError::Busy)]);
    assert_eq!(h.queued(), 1);
    release_tx.send(()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), vec![Ok(())]);
    store.shutdown().unwrap();
}

/// A range reply that sends its result to `tx`.
fn range_to(
    h: &StoreHandle,
    room: &str,
    q: RangeQuery,
    tx: &mpsc::Sender<Result<(Vec<StoredMessage>, bool), StoreError>>,
) {
    let tx = tx.clone();
    h.range(
        room.to_owned(),
        q,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
}

/// A store whose read lane holds `capacity` reads, with messages 1..=`n`
/// in room "r".
fn open_with_read_lane(dir: &Path, capacity: usize, n: u64) -> (SqliteStore, StoreHandle) {
    let mut cfg = config(&dir.join("c.db"), Durability::Relaxed);
    cfg.read_queue_capacity = capacity;
    let (store, h) = SqliteStore::open(cfg).unwrap();
    append_ok(&h, "r", 1..=n);
    (store, h)
}

#[test]
fn read_flood_answers_busy_while_appends_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h) = open_with_read_lane(dir.path(), 8, 10);
    let first_ten = RangeQuery {
        after: Some(0),
        before: Some(11),
        limit: 100,
    };
    // Park the reader thread inside a reply so its lane cannot drain.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    h.range(
        "r".into(),
        first_ten,
        Box::new(move |r| {
            entered_tx.send(r).unwrap();
            let _ = release_rx.recv();
        }),
    );
    let (parked, _) = entered_rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(parked.len(), 10);

    // Flood the read lane until it answers Busy, at once, on this thread.
    let (tx, rx) = mpsc::channel();
    let mut queued = 0;
    loop {
        range_to(&h, "r", first_ten, &tx);
        match rx.try_recv() {
            Ok(r) => {
                assert_eq!(r, Err(StoreError::Busy));
                break;
            }
            Err(_) => queued += 1,
        }
    }
    assert_eq!(queued, 8, "the read lane holds read_queue_capacity reads");

    // With the read lane full and its thread stuck, appends still commit,
    // and every further read keeps answering Busy.
    let commits = h.commits();
    for batch in 0..20u64 {
        append_ok(&h, "r", 11 + batch * 10..=20 + batch * 10);
        range_to(&h, "r", first_ten, &tx);
        assert_eq!(rx.try_recv().unwrap(), Err(StoreError::Busy));
    }
    assert!(h.commits() >= commits + 20);
    assert!(h.is_available());
    assert_eq!(h.queued(), 0);

    // Released, the lane answers every queued read with the right rows.
    release_tx.send(()).unwrap();
    for _ in 0..queued {
        let (msgs, more) = rx.recv_timeout(WAIT).unwrap().unwrap();
        assert!(!more);
        assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs(1..=10));
        assert_eq!(msgs[3], msg("r", 4, "{\"n\":4}"));
    }
    // ...and a new read sees every committed append.
    assert_eq!(range(&h, "r", None, None, 5), (seqs(206..=210), true));
    assert_eq!(range(&h, "r", Some(0), None, 1000).0, seqs(1..=210));
    store.shutdown().unwrap();
    // The writer stopped the read lane with it.
    range_to(&h, "r", first_ten, &tx);
    assert!(matches!(
        rx.recv_timeout(WAIT).unwrap(),
        Err(StoreError::Unavailable(_))
    ));
}

#[test]
fn appends_commit_under_a_concurrent_read_flood() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h) = open_with_read_lane(dir.path(), 16, 5);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Like thousands of `history` requests: fire reads without waiting.
    let flood = {
        let h = h.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let (tx, rx) = mpsc::channel();
            let (mut sent, mut ok, mut busy) = (0u64, 0u64, 0u64);
            let mut check = |r: Result<(Vec<StoredMessage>, bool), StoreError>| match r {
                Ok((msgs, _)) => {
                    // The latest committed messages, contiguous.
                    let got: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
                    let last = *got.last().unwrap();
                    assert_eq!(got, seqs(last.saturating_sub(49).max(1)..=last));
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(e, StoreError::Busy);
                    busy += 1;
                }
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let q = RangeQuery {
                    after: None,
                    before: None,
                    limit: 50,
                };
                range_to(&h, "r", q, &tx);
                sent += 1;
                while let Ok(r) = rx.try_recv() {
                    check(r);
                }
            }
            drop(tx);
            while let Ok(r) = rx.recv_timeout(WAIT) {
                check(r);
            }
            assert_eq!(ok + busy, sent, "every read was answered");
            (ok, busy)
        })
    };
    for seq in 6..=305 {
        append_ok(&h, "r", seq..=seq);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, _busy) = flood.join().unwrap();
    assert!(ok > 0);
    assert!(h.is_available());
    assert_eq!(range(&h, "r", Some(0), None, 1000).0, seqs(1..=305));
    store.shutdown().unwrap();
}

#[test]
fn panicking_reply_does_not_kill_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h) =
        SqliteStore::open(config(&dir.path().join("c.db"), Durability::Relaxed)).unwrap();
    h.append(
        vec![msg("r", 1, "{}")],
        epochs(&["r"]),
        Box::new(|_| panic!("callback bug")),
    );
    append_ok(&h, "r", 2..=2);
    assert!(h.is_available());
    store.shutdown().unwrap();
}

#[test]
fn dropping_everything_stops_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let (store, h) = SqliteStore::open(config(&path, Durability::Sync)).unwrap();
    let (tx, rx) = mpsc::channel();
    h.append(
        vec![msg("r", 1, "{}")],
        epochs(&["r"]),
        Box::new(move |r| tx.send(r).unwrap()),
    );
    drop(store);
    drop(h);
    // The thread flushes what was queued, then exits.
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), vec![Ok(())]);
    // SQLite removes the WAL file when the last connection closes, which
    // shows the thread really ended.
    let wal = dir.path().join("c.db-wal");
    let mut waited = Duration::ZERO;
    while wal.exists() {
        assert!(waited < WAIT, "store thread still holds the database");
        thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
}
