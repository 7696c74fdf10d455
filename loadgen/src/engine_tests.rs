//! The receive path of a worker without sockets: frames handed to `process` in two pieces,
//! split at every byte position, must be counted, timed and seq-checked exactly as when
//! they arrive whole.

use super::*;
use std::sync::mpsc::channel;

const NOW: u64 = 10_000_000_000;

fn worker() -> Worker {
    let cfg = Config {
        target: Target::Corechat,
        addr: "127.0.0.1:9".parse().unwrap(),
        tls: None,
        host: "127.0.0.1".into(),
        path: "/ws".into(),
        auth: Auth::None,
        conns: 1,
        rooms: 1,
        threads: 1,
        source_ips: Vec::new(),
        max_in_flight: 1,
        connect_timeout: Duration::from_secs(1),
        mode: Mode::Traffic { all_publish: false },
        body: 64,
        read_buf: 4096,
        pin: false,
        ws_ping: false,
        window: 1,
        deflate: false,
        room_blocks: false,
        presence_batched: false,
    };
    let (tx, _rx) = channel();
    let mut w = Worker::new(0, Arc::new(cfg), Arc::new(Shared::new(1)), tx).unwrap();
    reset(&mut w);
    w
}

/// A joined connection at room seq 0, nothing counted yet.
fn reset(w: &mut Worker) {
    w.conns[0].st = St::Ready;
    w.conns[0].seq = SeqTracker::from_joined(Some(0));
    w.conns[0].seq_hint = 0;
    w.t_hint = 0;
    w.fin = FinalReport::default();
    w.windows[1] = WinStats::new();
    w.tick_hists[1] = None;
    w.now = NOW;
}

/// A server frame with the given first byte, length encoded in `len_bytes` (1, 2 or 8).
fn frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], len_bytes: usize) {
    out.push(b0);
    match len_bytes {
        1 => {
            assert!(payload.len() < 126, "{}", payload.len());
            out.push(payload.len() as u8)
        }
        2 => {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A room message as corechat sends it, sent `age_us` before NOW in window 1.
fn message(seq: u64, age_us: u64, body_len: usize) -> Vec<u8> {
    let mut m =
        format!(r#"{{"type":"message","room":"lg-room-0","seq":{seq},"from":"u","ts":1,"body":"#)
            .into_bytes();
    proto::body(&mut m, false, NOW - age_us * 1000, 1, body_len);
    m.push(b'}');
    m
}

/// Eight messages in every frame shape: 7-, 16- and 64-bit lengths, fields in another order
/// with spaces, fragmented, with a server ping between them; seq 4 missing, seq 5 twice.
fn stream() -> (Vec<u8>, Vec<u64>) {
    let mut d = Vec::new();
    frame(&mut d, 0x81, &message(1, 100, 0), 1);
    frame(&mut d, 0x81, &message(2, 200, 200), 2);
    frame(&mut d, 0x89, b"ping", 1);
    let mut m3 = br#"{"body":{"t":"#.to_vec();
    m3.extend_from_slice(format!("{},\"w\":1,\"p\":\"\"}},\"seq\": 3,", NOW - 300_000).as_bytes());
    m3.extend_from_slice(br#""room":"lg-room-0","type":"message"}"#);
    frame(&mut d, 0x81, &m3, 1);
    frame(&mut d, 0x81, &message(5, 500, 0), 1);
    frame(&mut d, 0x81, &message(5, 500, 64), 2);
    frame(&mut d, 0x81, &message(6, 600, 300), 8);
    let m7 = message(7, 700, 0);
    frame(&mut d, 0x01, &m7[..10], 1);
    frame(&mut d, 0x80, &m7[10..], 1);
    frame(&mut d, 0x81, &message(8, 800, 0), 1);
    (d, vec![100, 200, 300, 500, 500, 600, 700, 800])
}

fn check(w: &mut Worker, ages_us: &[u64], what: &str) {
    assert_eq!(w.fin.deliveries, ages_us.len() as u64, "{what}");
    assert_eq!(w.fin.untimed, 0, "{what}");
    let ws = &w.windows[1];
    assert_eq!(ws.received, ages_us.len() as u64, "{what}");
    assert_eq!(
        ws.seq,
        SeqStats {
            gaps: 1,
            missing: 1,
            dups: 1
        },
        "{what}"
    );
    let h = w.tick_hists[1]
        .as_mut()
        .expect("latencies recorded")
        .take_hist();
    let mut want = new_hist();
    for &us in ages_us {
        record_ns(&mut want, us * 1000);
    }
    let got: Vec<_> = h
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let exp: Vec<_> = want
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    assert_eq!(got, exp, "{what}");
}

#[test]
fn every_frame_shape_is_counted_timed_and_seq_checked() {
    let (d, ages) = stream();
    let mut w = worker();
    assert_eq!(w.process(0, &d).unwrap(), d.len());
    check(&mut w, &ages, "whole");
}

#[test]
fn frames_split_at_every_byte_position_are_read_the_same() {
    let (d, ages) = stream();
    let mut w = worker();
    for k in 0..=d.len() {
        reset(&mut w);
        // the first read ends at byte k: only its complete frames are consumed, and the rest
        // (kept as the connection's pending bytes) is completed by the second read
        let used = w.process(0, &d[..k]).unwrap();
        assert!(used <= k, "split {k}");
        let used2 = w.process(0, &d[used..]).unwrap();
        assert_eq!(used + used2, d.len(), "split {k}");
        check(&mut w, &ages, &format!("split at {k}"));
    }
}
