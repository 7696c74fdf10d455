//! TLS (`--tls-cert`/`--tls-key`) through real sockets: a rustls +
//! tungstenite client chats over wss://, curl gets /health over https://,
//! SIGHUP swaps the certificate under an open connection, and a client that
//! does not speak TLS is closed while the server carries on.

mod common;

use common::tls::{
    client_config, https_get, https_metric, peer_cert, start_tls, tls_connect, Pair, WssClient,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
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

#[test]
fn a_reader_that_falls_behind_gets_every_frame_in_order_over_tls() {
    let dir = common::chat::tempdir();
    let pair = Pair::generate();
    let srv = start_tls(
        dir.path(),
        &pair,
        &[
            "--rate-per-sec",
            "100000",
            "--burst",
            "100000",
            "--max-outbound-bytes",
            "33554432",
        ],
    );
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
