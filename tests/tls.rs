//! TLS (`--tls-cert`/`--tls-key`) through real sockets: a rustls +
//! tungstenite client chats over wss://, curl gets /health over https://,
//! SIGHUP swaps the certificate under an open connection, and a client that
//! does not speak TLS is closed while the server carries on. Clients that
//! cut their records and segments up, stop in the middle of a record, or
//! read a large backlog slowly drive the server's record handling (rustls's
//! unbuffered API over the shard's read buffer) over TLS 1.2 and 1.3.

mod common;

use common::tls::{
    client_config, https_get, https_metric, peer_cert, start_tls, tls_connect, tls_over, Pair,
    Shape, Valve, WssClient,
};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIGHUP: i32 = 1;

#[test]
fn wss_clients_chat_and_negotiate_http_1_1() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_tls(dir.path(), &pair, &[]);
    let cfg = client_config(&[&pair.der], &[b"h2", b"http/1.1"]);

    let mut alice = WssClient::connect(&srv.addr, &cfg, "alice");
    let mut bob = WssClient::connect(&srv.addr, &cfg, "bob");
    // Offered h2 and http/1.1: the server picks the one it speaks.
    assert_eq!(alice.stream().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(alice.stream()), pair.der);

    alice.join("lobby");
    bob.join("lobby");
    let ack = alice.publish("lobby", "hello over tls", "p1");
    assert_eq!(ack["room"], "lobby");
    let msg = bob.recv_type("message");
    assert_eq!(msg["body"], "hello over tls");
    assert_eq!(msg["seq"], ack["seq"]);

    // A message larger than one TLS record (16 KiB) arrives whole.
    let big = "x".repeat(15_000);
    alice.publish("lobby", &big, "p2");
    assert_eq!(bob.recv_type("message")["body"], big.as_str());

    let handshakes = https_metric(&srv.addr, &cfg, "corechat_tls_handshakes_total", "");
    assert!(handshakes >= 3.0, "tls handshakes counted: {handshakes}");
}

#[test]
fn curl_gets_health_over_https() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_tls(dir.path(), &pair, &[]);
    let port = srv.addr.rsplit(':').next().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20", "--resolve"])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("https://localhost:{port}/health"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON health");
    assert_eq!(body["status"], "ok");

    // Verified against the certificate itself (no -k) it works too.
    let ca = dir.path().join("tls.crt");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("https://localhost:{port}/ready"))
        .output()
        .expect("run curl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ready"),
        "curl --cacert: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = common::chat::tempdir();
    let old = Pair::generate();
    let srv = start_tls(dir.path(), &old, &[]);
    let new = Pair::generate();
    let both = client_config(&[&old.der, &new.der], &[b"http/1.1"]);

    let mut alice = WssClient::connect(&srv.addr, &both, "alice");
    alice.join("lobby");
    assert_eq!(peer_cert(alice.stream()), old.der);

    new.write(dir.path());
    srv.signal(SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = tls_connect(&srv.addr, &both).expect("connect after reload");
        if peer_cert(&s) == new.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections never saw the new certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client that trusts only the new certificate gets in.
    let only_new = client_config(&[&new.der], &[b"http/1.1"]);
    let mut bob = WssClient::connect(&srv.addr, &only_new, "bob");
    bob.join("lobby");

    // The connection opened under the old certificate still chats.
    let ack = alice.publish("lobby", "after reload", "p1");
    assert_eq!(bob.recv_type("message")["seq"], ack["seq"]);
    assert_eq!(peer_cert(alice.stream()), old.der);

    // A broken file on the next SIGHUP keeps the certificate in service.
    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    srv.signal(SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let s = tls_connect(&srv.addr, &only_new).expect("connect after a bad reload");
    assert_eq!(peer_cert(&s), new.der);
    bob.publish("lobby", "still here", "p2");
    assert_eq!(alice.recv_type("message")["body"], "still here");
}

#[test]
fn a_client_that_does_not_speak_tls_is_closed_and_the_server_carries_on() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_tls(dir.path(), &pair, &[]);
    let cfg = client_config(&[&pair.der], &[b"http/1.1"]);

    // Plain HTTP on the TLS port: an alert at most, then the end.
    let mut plain = TcpStream::connect(&srv.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let end = plain.read_to_end(&mut got);
    assert!(end.is_ok(), "the server must close the socket: {end:?}");
    assert!(!got.starts_with(b"HTTP/"), "no plaintext answer");
    if !got.is_empty() {
        assert_eq!(got[0], 0x15, "a TLS alert record: {got:?}");
    }

    // Garbage that looks like a TLS record header, then nothing more.
    let mut junk = TcpStream::connect(&srv.addr).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let mut rest = Vec::new();
    assert!(junk.read_to_end(&mut rest).is_ok());

    let (status, body) = https_get(&srv.addr, &cfg, "/health");
    assert_eq!(status, 200, "{body}");
    let errors = https_metric(
        &srv.addr,
        &cfg,
        "corechat_disconnects_total",
        "reason=\"tls_error\"",
    );
    assert!(errors >= 2.0, "tls errors counted: {errors}");
}

#[test]
fn a_stalled_tls_handshake_obeys_the_handshake_timeout() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_tls(dir.path(), &pair, &["--handshake-timeout-ms", "300"]);
    let cfg = client_config(&[&pair.der], &[b"http/1.1"]);

    // Half a ClientHello record header, then silence.
    let mut stalled = TcpStream::connect(&srv.addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stalled.write_all(&[0x16, 0x03]).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    assert!(
        stalled.read_to_end(&mut rest).is_ok(),
        "closed by the server"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    let timeouts = https_metric(
        &srv.addr,
        &cfg,
        "corechat_disconnects_total",
        "reason=\"handshake_timeout\"",
    );
    assert!(timeouts >= 1.0, "handshake timeouts counted: {timeouts}");
}

#[test]
fn unusable_tls_options_are_refused_at_start_with_a_clear_error() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let (cert, key) = pair.write(dir.path());
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_corechat"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
            .args(["--jwt-secret", common::SECRET])
            .args(args)
            .output()
            .expect("run corechat");
        assert!(!out.status.success(), "{args:?} must be refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--tls-cert", cert.to_str().unwrap()]);
    assert!(err.contains("--tls-key"), "{err}");
    let missing = dir.path().join("missing.key");
    let err = run(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains("missing.key"), "{err}");
    let other = Pair::generate();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let err = run(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        other_key.to_str().unwrap(),
    ]);
    assert!(err.contains("does not fit"), "{err}");
    let _ = key;
}

/// A TLS server that lets one client publish as fast as it likes and holds
/// up to 32 MiB unsent for a reader (the backlog tests).
fn start_flood_server(dir: &std::path::Path, pair: &Pair) -> common::Server {
    start_tls(
        dir,
        pair,
        &[
            "--rate-per-sec",
            "100000",
            "--burst",
            "100000",
            "--max-outbound-bytes",
            "33554432",
        ],
    )
}

#[test]
fn a_reader_that_falls_behind_gets_every_frame_in_order_over_tls() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_flood_server(dir.path(), &pair);
    let cfg = client_config(&[&pair.der], &[b"http/1.1"]);
    let mut alice = WssClient::connect(&srv.addr, &cfg, "alice");
    let mut bob = WssClient::connect(&srv.addr, &cfg, "bob");
    alice.join("flood");
    bob.join("flood");
    // About 6.4 MB for bob while he reads nothing: far more than the socket
    // buffers take for a reader that does not read (its receive window
    // grows only as it reads) plus rustls's 64 KiB, so the server's writes
    // block and resume on writable events.
    let body = "y".repeat(8_000);
    let n = 800;
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        seqs.push(alice.publish("flood", &body, &format!("p{i}"))["seq"].clone());
    }
    for seq in seqs {
        let m = bob.recv_type("message");
        assert_eq!(m["seq"], seq);
        assert_eq!(m["body"].as_str().map(str::len), Some(body.len()));
    }
}

/// A client config trusting `trusted`, speaking only `version`, and cutting
/// what it sends into records of at most `fragment` bytes.
fn config_for(
    trusted: &CertificateDer<'static>,
    version: &'static SupportedProtocolVersion,
    fragment: Option<usize>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).expect("trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.max_fragment_size = fragment;
    Arc::new(cfg)
}

const VERSIONS: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS12, &rustls::version::TLS13];

#[test]
fn a_message_cut_into_many_records_and_segments_arrives_whole_over_tls_1_2_and_1_3() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_tls(dir.path(), &pair, &[]);
    let cfg = client_config(&[&pair.der], &[b"http/1.1"]);
    let mut bob = WssClient::connect(&srv.addr, &cfg, "bob");
    bob.join("lobby");

    // Records of at most 300 bytes sent 97 bytes at a time (the handshake
    // too): nearly every read ends inside a record. Records of 32 bytes
    // sent whole: hundreds of records in one read.
    let shapes = [(Some(300), 97), (Some(32), usize::MAX)];
    let cases = VERSIONS.into_iter().flat_map(|v| shapes.map(|s| (v, s)));
    for (i, (version, (fragment, piece))) in cases.enumerate() {
        let shape = Shape {
            piece,
            ..Shape::default()
        };
        let (valve, _control) = Valve::connect(&srv.addr, shape);
        let stream = tls_over(valve, &config_for(&pair.der, version, fragment)).expect("tls");
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
        let mut alice = WssClient::over(stream, &format!("alice{i}"));
        alice.join("lobby");
        let big: String = (0..15_000)
            .map(|n| (b'a' + (n % 26) as u8) as char)
            .collect();
        let ack = alice.publish("lobby", &big, "big");
        let msg = bob.recv_type("message");
        assert_eq!(msg["seq"], ack["seq"]);
        assert_eq!(msg["body"], big.as_str(), "{version:?}");
        // And the answer to a small one after it.
        let ack = alice.publish("lobby", "small", "small");
        assert_eq!(bob.recv_type("message")["seq"], ack["seq"]);
        if version == &rustls::version::TLS13 {
            // A key update (a handshake message after the handshake, which
            // the server answers with its own) cut up the same way.
            alice
                .ws
                .get_mut()
                .conn
                .refresh_traffic_keys()
                .expect("key update");
            let ack = alice.publish("lobby", "new keys", "rekeyed");
            assert_eq!(bob.recv_type("message")["seq"], ack["seq"]);
            let ack = alice.publish("lobby", "still new keys", "rekeyed2");
            assert_eq!(bob.recv_type("message")["seq"], ack["seq"]);
        }
    }
}

#[test]
fn half_a_record_waits_for_its_rest_while_the_whole_one_before_it_is_answered() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_tls(dir.path(), &pair, &[]);

    for (i, version) in VERSIONS.into_iter().enumerate() {
        let (valve, mut control) = Valve::connect(&srv.addr, Shape::default());
        let stream = tls_over(valve, &config_for(&pair.der, version, None)).expect("tls");
        let mut alice = WssClient::over(stream, &format!("alice{i}"));
        alice.join("lobby");

        control.hold();
        alice.send_json(json!({"type": "publish", "room": "lobby", "body": "one", "id": "p1"}));
        let first = control.held();
        alice.send_json(json!({"type": "publish", "room": "lobby", "body": "two", "id": "p2"}));
        assert!(
            control.held() > first + 10,
            "the second publish is a record of its own"
        );
        // The first record and the header plus 5 bytes of the second, in
        // one segment: the first is answered, the rest of the second is
        // awaited.
        control.release(first + 10);
        assert_eq!(alice.recv_type("ack")["id"], "p1");
        // Then the rest of it, one byte, then everything.
        control.release(1);
        std::thread::sleep(Duration::from_millis(50));
        control.open();
        assert_eq!(alice.recv_type("ack")["id"], "p2", "{version:?}");
    }
}

#[test]
fn a_slow_reader_gets_a_backlog_far_over_the_encryption_batch_in_order() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_flood_server(dir.path(), &pair);
    for (i, version) in VERSIONS.into_iter().enumerate() {
        let room = format!("backlog{i}");
        let cfg = config_for(&pair.der, version, None);
        let mut alice = WssClient::connect(&srv.addr, &cfg, &format!("alice{i}"));
        // Bob reads 512 bytes per call through a small receive buffer: the
        // server's writes to him block and resume many times while alice
        // publishes.
        let shape = Shape {
            read_piece: 512,
            rcvbuf: 8 * 1024,
            ..Shape::default()
        };
        let (valve, _control) = Valve::connect(&srv.addr, shape);
        let mut bob = WssClient::over(tls_over(valve, &cfg).expect("tls"), &format!("bob{i}"));
        alice.join(&room);
        bob.join(&room);
        // Big and small frames mixed, about 8 MB: more than the server's
        // socket buffer (up to 4 MB on loopback) takes, so its writes block;
        // records gather several frames and frames straddle records.
        let bodies: Vec<String> = (0..1000)
            .map(|n| {
                let len = if n % 4 == 0 { 40 + n } else { 10_500 };
                char::from(b'a' + (n % 26) as u8).to_string().repeat(len)
            })
            .collect();
        // Bob starts reading once half is published, then reads while the
        // rest comes.
        let (half_tx, half_rx) = std::sync::mpsc::channel();
        let publisher = {
            let bodies = bodies.clone();
            let room = room.clone();
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for (n, body) in bodies.iter().enumerate() {
                    seqs.push(alice.publish(&room, body, &format!("p{n}"))["seq"].clone());
                    if n == bodies.len() / 2 {
                        half_tx.send(()).expect("signal");
                    }
                }
                seqs
            })
        };
        half_rx.recv().expect("half published");
        let mut got = Vec::new();
        for body in &bodies {
            let m = bob.recv_type("message");
            assert_eq!(m["body"].as_str(), Some(body.as_str()), "{version:?}");
            got.push(m["seq"].clone());
        }
        assert_eq!(got, publisher.join().expect("publisher"));
    }
}
