//! Retention: by count and by age, always keeping each room's last seq, and
//! the sweep of markers whose room has no row left.

use super::*;

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
