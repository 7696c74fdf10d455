//! Faults and back-pressure: a full disk, an unavailable file, shutdown with
//! appends pending, full queues, read floods, panicking callers.

use super::*;

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
