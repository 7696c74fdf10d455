//! What survives a restart: rooms and their numbering, the schema version
//! and its migration, read markers and room listings.

use super::*;

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
