//! Hot-path micro-benchmarks: request parsing (serde_json with borrowed
//! RawValues, what the server uses, against simd-json), message frame
//! encoding, fan-out of one message to 1,000 members over real loopback
//! sockets (encode once, queue, writev), and the SQLite store's batch append
//! (one group commit of 256 messages).

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

/// The real fan-out path of one message to 1,000 members: encode the
/// `message` frame once, queue the shared buffer on each member's send
/// queue, and write each queue to its own loopback TCP socket with
/// `writev`, as the reactor's flush does. Only that is timed; the readers'
/// side is drained between iterations.
fn fan_out(c: &mut Criterion) {
    use std::io::{IoSlice, Read, Write};
    use std::net::{TcpListener, TcpStream};
    const MEMBERS: usize = 1000;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut pairs: Vec<(TcpStream, TcpStream)> = (0..MEMBERS)
        .map(|_| {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            server.set_nodelay(true).expect("nodelay");
            client.set_nonblocking(true).expect("nonblocking");
            (server, client)
        })
        .collect();
    let body = r#"{"t":1795430000123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let mut sink = vec![0u8; 64 * 1024];
    let mut g = c.benchmark_group("fan_out_1k_sockets");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("encode_queue_writev", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut queues: Vec<VecDeque<Bytes>> = (0..MEMBERS).map(|_| VecDeque::new()).collect();
            for seq in 0..iters {
                let start = std::time::Instant::now();
                let fields = MessageFields {
                    room: "lobby",
                    seq,
                    from: "alice",
                    name_json: "\"Alice\"",
                    ts: 1_795_430_000_000,
                    body,
                };
                let frame = ws::text_frame_with(256, |out| protocol::write_message(out, &fields));
                for q in queues.iter_mut() {
                    q.push_back(frame.clone());
                }
                for (q, (server, _)) in queues.iter_mut().zip(pairs.iter_mut()) {
                    let slices: Vec<IoSlice<'_>> = q.iter().map(|f| IoSlice::new(f)).collect();
                    let n = server.write_vectored(&slices).expect("writev");
                    assert_eq!(n, frame.len(), "loopback takes a small frame whole");
                    q.clear();
                }
                total += start.elapsed();
                for (_, client) in pairs.iter_mut() {
                    while let Ok(n) = client.read(&mut sink) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
            total
        })
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

/// The once-a-second export of a shard's fan-out latency histogram into the
/// Prometheus buckets, which runs on the shard's loop: one walk of the
/// recorded values, against the walk per bucket it replaced.
fn latency_export(c: &mut Criterion) {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    // A spread like a busy shard's: 20 µs to 2 s.
    let mut v = 20u64;
    while v < 2_000_000 {
        h.record_n(v, 10).unwrap();
        v += v / 200 + 1;
    }
    let m = corechat::metrics::ShardMetrics::default();
    c.bench_function("latency export (one walk)", |b| {
        b.iter(|| m.export_latency(black_box(&h)))
    });
    c.bench_function("latency export (a walk per bucket, before)", |b| {
        b.iter(|| {
            let mut total = 0;
            for bound in corechat::metrics::LATENCY_BUCKETS {
                let us = (bound * 1e6) as u64;
                total += h
                    .iter_recorded()
                    .filter(|v| v.value_iterated_to() <= us)
                    .map(|v| v.count_at_value())
                    .sum::<u64>();
            }
            black_box(total)
        })
    });
}

criterion_group!(
    benches,
    parse,
    encode,
    fan_out,
    store_append,
    latency_export
);
criterion_main!(benches);
