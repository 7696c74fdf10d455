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

mod appends;
mod faults;
mod persistence;
mod retention;
