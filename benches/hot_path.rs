//! Hot-path micro-benchmarks: request parsing (serde_json with borrowed
//! RawValues, what the server uses, against simd-json), message frame
//! encoding, fan-out of one shared frame to 10,000 queued members, and the
//! SQLite store's batch append (one group commit of 256 messages).

use bytes::Bytes;
use corechat::protocol::{self, MessageFields};
use corechat::store::{Durability, SqliteStore, StoreConfig, StoredMessage};
use corechat::ws;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::mpsc;

const PUBLISH: &str = r#"{"type":"publish","room":"lobby","id":42,"body":{"t":1795430000123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct SimdPublish<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    room: &'a str,
    id: u64,
    body: simd_json::OwnedValue,
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_publish");
    g.throughput(Throughput::Bytes(PUBLISH.len() as u64));
    g.bench_function("serde_json_rawvalue (server)", |b| {
        b.iter(|| {
            let (id, req) = protocol::parse_request(black_box(PUBLISH), 16384);
            black_box((id, req.is_ok()))
        })
    });
    g.bench_function("simd_json_to_struct", |b| {
        b.iter_batched(
            || PUBLISH.as_bytes().to_vec(),
            |mut buf| {
                let v: SimdPublish<'_> = simd_json::from_slice(&mut buf).expect("valid");
                // The body must then be written back out to be forwarded.
                let body = simd_json::to_string(&v.body).expect("serializable");
                black_box((v.room.len(), body.len()))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let fields = MessageFields {
        room: "lobby",
        seq: 123_456,
        from: "alice",
        name_json: "\"Alice\"",
        ts: 1_795_430_000_000,
        body: r#"{"t":1795430000123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    };
    c.bench_function("encode_message_frame", |b| {
        b.iter(|| ws::text_frame_with(256, |out| protocol::write_message(out, black_box(&fields))))
    });
}

fn fan_out(c: &mut Criterion) {
    // What a member shard does per delivery: clone the shared frame (a
    // reference count) onto each member's queue.
    let frame = ws::frame(ws::OpCode::Text, &[b'x'; 160]);
    let mut g = c.benchmark_group("fan_out_10k");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("queue_shared_frame", |b| {
        b.iter_batched(
            || {
                (0..10_000)
                    .map(|_| VecDeque::<Bytes>::new())
                    .collect::<Vec<_>>()
            },
            |mut queues| {
                for q in queues.iter_mut() {
                    q.push_back(frame.clone());
                }
                black_box(queues)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn store_append(c: &mut Criterion) {
    // One group commit as the shards hand it over: 256 messages over 16
    // rooms, appended and waited for. `relaxed` measures SQLite's own cost;
    // `sync` adds the fsync of the disk under $TMPDIR.
    const BATCH: u64 = 256;
    let mut g = c.benchmark_group("store_append_256");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    for (label, durability) in [("relaxed", Durability::Relaxed), ("sync", Durability::Sync)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = StoreConfig::new(dir.path().join("bench.db"));
        cfg.durability = durability;
        let (store, handle) = SqliteStore::open(cfg).expect("open store");
        let mut next_seq = [1u64; 16];
        g.bench_function(label, |b| {
            b.iter(|| {
                let msgs: Vec<StoredMessage> = (0..BATCH)
                    .map(|i| {
                        let r = (i % 16) as usize;
                        let seq = next_seq[r];
                        next_seq[r] += 1;
                        StoredMessage {
                            room: format!("room-{r}"),
                            seq,
                            ts: 1_795_000_000_000 + seq,
                            from: "alice".into(),
                            name: "Alice".into(),
                            body: r#"{"t":"hello there","n":12345}"#.into(),
                        }
                    })
                    .collect();
                let epochs = (0..16)
                    .map(|r| (format!("room-{r}"), "e1".to_string()))
                    .collect();
                let (tx, rx) = mpsc::channel();
                handle.append(
                    msgs,
                    epochs,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
                let results = rx.recv().expect("append reply");
                assert!(results.iter().all(|r| r.is_ok()));
            })
        });
        store.shutdown().expect("shutdown");
    }
    g.finish();
}

criterion_group!(benches, parse, encode, fan_out, store_append);
criterion_main!(benches);
