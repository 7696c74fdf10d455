//! Appending and reading back: every durability mode, group commit, exact
//! body bytes, out-of-order seqs refused.

use super::*;

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
