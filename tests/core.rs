//! Core server behaviour through real sockets: upgrade and auth, close
//! codes, heartbeats, timeouts, shutdown, metrics, shards.

mod common;
use common::raw::{Raw, MASK};
use common::*;
use corechat::ws::{self, OpCode};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn welcome_carries_the_session_facts() {
    let srv = Server::start(&[
        "--shards",
        "2",
        "--node-id",
        "node-a",
        "--heartbeat-ms",
        "25000",
    ]);
    let mut c = Client::connect(&srv.ws_url(&token("alice")));
    let w = c.recv_json();
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["user"], "alice");
    assert_eq!(w["name"], "Name alice");
    assert_eq!(w["node"], "node-a");
    assert_eq!(w["heartbeat_ms"], 25000);
    assert!(w["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(
        w["limits"],
        json!({"max_frame_bytes": 65536, "max_body_bytes": 16384, "rate_per_sec": 20, "burst": 40})
    );
    c.send_json(json!({"type": "ping", "id": "p1"}));
    assert_eq!(c.recv_json(), json!({"type": "pong", "id": "p1"}));
}

#[test]
fn bearer_header_is_accepted() {
    let srv = Server::start(&[]);
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
        token("bob")
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
}

#[test]
fn auth_failures_are_401_with_json() {
    let srv = Server::start(&[]);
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let (status, body) = srv.http("GET", "/ws", &upgrade, "");
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "missing token"
    );
    let (status, body) = srv.http("GET", "/ws?token=garbage", &upgrade, "");
    assert_eq!(status, 401);
    assert!(body.contains("error"));
    let wrong = corechat::auth::Authenticator::new(Some(b"another-secret"), None, 0).unwrap();
    let bad_sig = wrong
        .mint(
            "eve",
            None,
            Some(60),
            None,
            false,
            corechat::auth::now_secs(),
        )
        .unwrap();
    let (status, body) = srv.http("GET", &format!("/ws?token={bad_sig}"), &upgrade, "");
    assert_eq!(status, 401, "{body}");
    let expired = authenticator()
        .mint(
            "old",
            None,
            Some(1),
            None,
            false,
            corechat::auth::now_secs() - 100,
        )
        .unwrap();
    let (status, body) = srv.http("GET", &format!("/ws?token={expired}"), &upgrade, "");
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    assert!(srv.metric("corechat_auth_failures_total", None) >= 4.0);
}

#[test]
fn origin_and_per_ip_caps() {
    let srv = Server::start(&[
        "--allowed-origin",
        "https://chat.example",
        "--max-conns-per-ip",
        "2",
    ]);
    let t = token("carol");
    let base = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let mut with_origin = base.to_vec();
    with_origin.push(("Origin", "https://evil.example"));
    let (status, _) = srv.http("GET", &format!("/ws?token={t}"), &with_origin, "");
    assert_eq!(status, 403);
    let (status, _) = srv.http("GET", &format!("/ws?token={t}"), &base, "");
    assert_eq!(
        status, 403,
        "a missing Origin is refused when origins are configured"
    );
    // Two allowed connections, the third from the same IP is refused.
    let url = srv.ws_url(&t);
    let req = |url: &str| {
        let mut r = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        r.headers_mut()
            .insert("Origin", "https://chat.example".parse().unwrap());
        r
    };
    let s1 = TcpStream::connect(&srv.addr).unwrap();
    let _c1 = tungstenite::client(req(&url), s1).expect("first");
    let s2 = TcpStream::connect(&srv.addr).unwrap();
    let _c2 = tungstenite::client(req(&url), s2).expect("second");
    let s3 = TcpStream::connect(&srv.addr).unwrap();
    match tungstenite::client(req(&url), s3) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn per_ip_cap_frees_a_slot_when_a_connection_closes() {
    let srv = Server::start(&["--max-conns-per-ip", "2"]);
    let url = srv.ws_url(&token("ivy"));
    let status_of =
        |r: Result<(tungstenite::WebSocket<TcpStream>, u16), tungstenite::Error>| match r {
            Ok(_) => 101,
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
        };
    let first = srv.client("ivy");
    let _second = srv.client("ivy");
    assert_eq!(
        status_of(Client::try_connect(&url)),
        429,
        "a third is over the cap"
    );
    first.close();
    // The close takes a moment to reach the server: retry for a while, and
    // only a 429 may come before the success.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut third = loop {
        match Client::try_connect(&url) {
            Ok((ws, _)) => break Client { ws },
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 429);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the closed connection never gave its slot back"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(third.recv_json()["type"], "welcome");
    // And the cap still holds with the new one.
    assert_eq!(status_of(Client::try_connect(&url)), 429);
}

#[test]
fn web_assets_served_are_the_files_in_web() {
    let srv = Server::start(&[]);
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let mut paths: Vec<(String, std::path::PathBuf)> = vec![("/".into(), web.join("index.html"))];
    for entry in std::fs::read_dir(&web).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name == "README.md" {
            continue;
        }
        paths.push((format!("/{name}"), path));
    }
    assert!(paths.len() >= 6, "{paths:?}");
    for (url, file) in paths {
        let (status, headers, body) = http_bytes(&srv.addr, &url);
        assert_eq!(status, 200, "GET {url}");
        let want = std::fs::read(&file).unwrap();
        assert!(
            body == want,
            "GET {url}: {} bytes served, {} is {} bytes and differs",
            body.len(),
            file.display(),
            want.len()
        );
        let lower = headers.to_ascii_lowercase();
        let ext = file.extension().unwrap().to_str().unwrap();
        let ctype = match ext {
            "html" => "text/html",
            "js" => "text/javascript",
            "css" => "text/css",
            "svg" => "image/svg+xml",
            other => panic!("a web asset of an unknown kind: {other}"),
        };
        assert!(
            lower.contains(&format!("content-type: {ctype}")),
            "GET {url}: {headers}"
        );
    }
}

/// GET `path`; returns (status, header block, body bytes).
fn http_bytes(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = resp[split + 4..].to_vec();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    assert_eq!(
        body.len(),
        len,
        "GET {path}: body length and content-length"
    );
    (status, head, body)
}

#[test]
fn upgrades_per_ip_per_second_are_capped() {
    let srv = Server::start(&["--max-upgrades-per-ip-per-sec", "3"]);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        match Client::try_connect(&srv.ws_url(&token("dave"))) {
            Ok(_) => statuses.push(101),
            Err(tungstenite::Error::Http(resp)) => statuses.push(resp.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 101).count() >= 3,
        "{statuses:?}"
    );
}

#[test]
fn http_endpoints() {
    let srv = Server::start(&[]);
    let (status, body) = srv.http("GET", "/health", &[], "");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );
    let (status, _) = srv.http("GET", "/ready", &[], "");
    assert_eq!(status, 200);
    let (status, body) = srv.http("GET", "/no/such/path", &[], "");
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (status, body) = srv.http("GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));
    let (status, _) = srv.http("GET", "/ws", &[], "");
    assert_eq!(status, 426, "a plain GET /ws is not an upgrade");
}

#[test]
fn close_codes_for_protocol_violations() {
    let srv = Server::start(&["--max-frame-bytes", "1000", "--max-body-bytes", "500"]);
    let t = token("erin");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", ws::frame(OpCode::Text, b"{}").to_vec(), 1002),
        (
            "reserved opcode",
            {
                let mut f = ws::client_frame(OpCode::Text, b"{}", MASK);
                f[0] = 0x83;
                f
            },
            1002,
        ),
        (
            "rsv bit",
            {
                let mut f = ws::client_frame(OpCode::Text, b"{}", MASK);
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        (
            "binary",
            ws::client_frame(OpCode::Binary, b"\x01\x02", MASK),
            1003,
        ),
        (
            "invalid utf-8",
            ws::client_frame(OpCode::Text, b"\"\xff\xfe\"", MASK),
            1007,
        ),
        (
            "too big",
            ws::client_frame(OpCode::Text, &vec![b' '; 2000], MASK),
            1009,
        ),
        (
            "too big after reassembly",
            {
                let mut a = ws::client_frame(OpCode::Text, &vec![b' '; 600], MASK);
                a[0] &= 0x7f; // not final
                let b = ws::client_frame(OpCode::Continuation, &vec![b' '; 600], MASK);
                a.extend_from_slice(&b);
                a
            },
            1009,
        ),
        (
            "unexpected continuation",
            ws::client_frame(OpCode::Continuation, b"x", MASK),
            1002,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut raw = Raw::open(&srv.addr, &t);
        let (op, _) = raw.frame().expect("welcome");
        assert_eq!(op, OpCode::Text);
        raw.send(&bytes);
        assert_eq!(raw.close_code(), Some(code), "case {name}");
    }
    // A valid fragmented message is reassembled and answered.
    let mut raw = Raw::open(&srv.addr, &t);
    raw.frame().expect("welcome");
    let mut a = ws::client_frame(OpCode::Text, br#"{"type":"pi"#, MASK);
    a[0] &= 0x7f;
    raw.send(&a);
    raw.send(&ws::client_frame(OpCode::Ping, b"hb", MASK));
    raw.send(&ws::client_frame(
        OpCode::Continuation,
        br#"ng","id":3}"#,
        MASK,
    ));
    let (op, payload) = raw.frame().unwrap();
    assert_eq!((op, payload.as_slice()), (OpCode::Pong, &b"hb"[..]));
    let (op, payload) = raw.frame().unwrap();
    assert_eq!(op, OpCode::Text);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap(),
        json!({"type": "pong", "id": 3})
    );
    // A client close is echoed with its code.
    raw.send(&ws::client_frame(
        OpCode::Close,
        &1000u16.to_be_bytes(),
        MASK,
    ));
    assert_eq!(raw.close_code(), Some(1000));
    assert!(srv.metric("corechat_disconnects_total", None) >= 8.0);
}

#[test]
fn silent_client_is_dropped_after_heartbeat_timeout() {
    let srv = Server::start(&["--heartbeat-ms", "200", "--heartbeat-timeout-ms", "200"]);
    let mut raw = Raw::open(&srv.addr, &token("frank"));
    // The server pings; this client never answers, so it is dropped.
    let mut saw_ping = false;
    while let Some((op, _)) = raw.frame() {
        if op == OpCode::Ping {
            saw_ping = true;
        }
    }
    assert!(saw_ping, "server sends pings");
    assert!(srv.metric_with("corechat_disconnects_total", "reason=\"heartbeat_timeout\"") >= 1.0);
    // A host that stalls the server (a VM descheduled for longer than ping +
    // timeout) must not make it drop a client it never pinged: once running
    // again it pings first, then waits a whole timeout for the answer.
    let mut raw = Raw::open(&srv.addr, &token("frozen"));
    srv.signal(19); // SIGSTOP
    std::thread::sleep(Duration::from_millis(900));
    srv.signal(18); // SIGCONT
    let mut frames = Vec::new();
    while let Some((op, _)) = raw.frame() {
        frames.push(op);
    }
    assert!(
        frames.contains(&OpCode::Ping),
        "pinged before being dropped after a stall: {frames:?}"
    );
    assert!(srv.metric_with("corechat_disconnects_total", "reason=\"heartbeat_timeout\"") >= 2.0);
    drop(srv);
    // A client that answers pings (tungstenite does) stays connected. Same
    // 200 ms pings, but a 2 s timeout: on a loaded 2-core machine the test's
    // own reads may be late by a few hundred ms, which must not count as
    // silence. It is watched for 4 s, well past pings + timeout (2.2 s), so
    // a server that ignored the pongs would have dropped it.
    let srv = Server::start(&["--heartbeat-ms", "200", "--heartbeat-timeout-ms", "2000"]);
    let mut c = srv.client("grace");
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut pings = 0;
    let until = std::time::Instant::now() + Duration::from_millis(4000);
    while std::time::Instant::now() < until {
        // Reading lets tungstenite answer the server's pings.
        match c.ws.read() {
            Ok(tungstenite::Message::Ping(_)) => pings += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("dropped although answering pings: {e}"),
        }
    }
    assert!(pings >= 3, "the server kept pinging: {pings} pings in 4 s");
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.send_json(json!({"type": "ping", "id": 1}));
    assert_eq!(c.recv_type("pong")["id"], 1);
    assert_eq!(
        srv.metric_with("corechat_disconnects_total", "reason=\"heartbeat_timeout\""),
        0.0,
        "the answering client was never dropped"
    );
}

#[test]
fn slow_handshake_is_dropped() {
    let srv = Server::start(&["--handshake-timeout-ms", "300"]);
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "connection closed without a response");
    assert!(srv.metric_with("corechat_disconnects_total", "reason=\"handshake_timeout\"") >= 1.0);
}

#[test]
fn expired_token_closes_open_connection_with_1008() {
    let srv = Server::start(&["--heartbeat-ms", "100", "--jwt-leeway-s", "0"]);
    let iat = corechat::auth::now_secs();
    let ttl = 3;
    let exp_ms = (iat + ttl) * 1000;
    let t = authenticator()
        .mint("henry", None, Some(ttl), None, false, iat)
        .unwrap();
    let mut c = Client::connect(&srv.ws_url(&t));
    assert_eq!(c.recv_json()["type"], "welcome");
    // Before `exp` the connection works.
    c.send_json(json!({"type": "ping", "id": "before"}));
    assert_eq!(c.recv_type("pong")["id"], "before");
    let answered_ms = unix_ms();
    assert!(
        answered_ms < exp_ms,
        "the pong came {} ms after exp: the machine is too slow for this test",
        answered_ms - exp_ms
    );
    // Then the server closes it with 1008 "token expired", not before `exp`.
    let (code, reason) = loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => break (u16::from(f.code), f.reason),
            Ok(tungstenite::Message::Close(None)) => panic!("close without a code"),
            Ok(_) => {}
            Err(e) => panic!("the stream ended without a close frame: {e}"),
        }
    };
    let closed_ms = unix_ms();
    assert_eq!(code, 1008);
    assert_eq!(reason.as_str(), "token expired");
    assert!(
        closed_ms >= exp_ms,
        "closed {} ms before exp",
        exp_ms - closed_ms
    );
    assert!(
        closed_ms < exp_ms + 5000,
        "closed {} ms after exp",
        closed_ms - exp_ms
    );
    assert!(srv.metric_with("corechat_disconnects_total", "reason=\"token_expired\"") >= 1.0);
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn sigterm_closes_with_1001_and_exits() {
    let mut srv = Server::start(&["--shards", "2", "--drain-timeout-ms", "3000"]);
    let mut clients: Vec<Client> = (0..4).map(|i| srv.client(&format!("s{i}"))).collect();
    srv.signal(15);
    for c in clients.iter_mut() {
        assert_eq!(c.recv_close(), Some(1001));
    }
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// SIGTERM while a client never answers the close frame and publishes are
/// in flight: the drain timeout bounds the exit, new upgrades are refused
/// meanwhile, and every acknowledged publish is in the history after a
/// restart on the same data directory.
#[test]
fn sigterm_drain_is_bounded_refuses_upgrades_and_keeps_acked_publishes() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let drain_ms = 3000u64;
    let drain = drain_ms.to_string();
    let flags = [
        "--shards",
        "2",
        "--store",
        "sqlite",
        "--data-dir",
        &dir,
        "--drain-timeout-ms",
        &drain,
        "--rate-per-sec",
        "100000",
        "--burst",
        "100000",
    ];
    let mut srv = Server::start(&flags);
    // A client that reads nothing and never answers the close.
    let mut mute = Raw::open(&srv.addr, &token("mute"));
    let mut publisher = srv.client("publisher");
    publisher.send_json(json!({"type": "join", "room": "drain", "id": "j"}));
    publisher.recv_type("joined");
    let mut watcher = srv.client("watcher");

    // Publishes in flight when the signal comes: the first is acked (the
    // server is busy with them), the rest race the shutdown.
    let n = 200u64;
    for i in 0..n {
        publisher.send_json(json!({"type": "publish", "room": "drain", "body": {"i": i}, "id": i}));
    }
    publisher.recv_type("ack");
    let mut acked = vec![0u64];
    let signalled = std::time::Instant::now();
    srv.signal(15);

    // The publisher's answers until its close: each is an ack or
    // `unavailable`, never anything else.
    let mut unavailable = 0;
    let code = loop {
        match publisher.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("ack") => acked.push(v["id"].as_u64().unwrap()),
                    Some("error") => {
                        assert_eq!(v["code"], "unavailable", "{v}");
                        unavailable += 1;
                    }
                    Some("message") => {}
                    _ => panic!("unexpected frame during the drain: {v}"),
                }
            }
            Ok(tungstenite::Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("the publisher's stream ended without a close: {e}"),
        }
    };
    assert_eq!(code, Some(1001));
    assert_eq!(watcher.recv_close(), Some(1001));

    // The mute client keeps the drain going: the process is still there,
    // and it takes no new connection.
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "exited before the drain timeout although a client never answered the close"
    );
    // (A short read timeout: a connection left in a closed listener's
    // backlog must not hold the test past the drain.)
    if let Ok(stream) = TcpStream::connect(&srv.addr) {
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        match tungstenite::client(srv.ws_url(&token("late")), stream) {
            Ok(_) => panic!("an upgrade was accepted during the drain"),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                assert!(resp.status().as_u16() >= 400, "{}", resp.status())
            }
            Err(_) => {} // reset, closed or never answered: not upgraded
        }
    }
    let status = srv
        .wait_exit(Duration::from_millis(drain_ms + 5000))
        .expect("exits after SIGTERM");
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    // Slack for a loaded 2-core machine; the bound is what matters.
    assert!(
        took <= Duration::from_millis(drain_ms + 2000),
        "the drain took {took:?}, over drain_timeout ({drain_ms} ms) + 2 s"
    );
    // The mute client got close 1001 on the wire, then the end of the stream.
    assert_eq!(mute.close_code(), Some(1001));
    drop(srv);

    // Every acked publish survived, with its body, in order.
    let srv = Server::start(&flags);
    let (history, _) = common::chat::full_history(&srv, "drain");
    let bodies: std::collections::HashSet<u64> = history
        .iter()
        .map(|m| m["body"]["i"].as_u64().unwrap())
        .collect();
    for i in &acked {
        assert!(
            bodies.contains(i),
            "publish {i} was acked before the shutdown but is not in the history \
             ({} acked, {unavailable} unavailable, {} stored)",
            acked.len(),
            history.len()
        );
    }
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn connections_land_on_every_shard_and_metrics_move() {
    let srv = Server::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..24).map(|i| srv.client(&format!("m{i}"))).collect();
    for c in clients.iter_mut() {
        c.send_json(json!({"type": "ping"}));
        c.recv_type("pong");
    }
    let shard0 = srv.metric("corechat_connections_open", Some(0));
    let shard1 = srv.metric("corechat_connections_open", Some(1));
    // 24 WebSockets, plus the HTTP connection asking for the metrics.
    assert_eq!(srv.metric("corechat_connections_open", None), 25.0);
    assert!(
        shard0 >= 1.0 && shard1 >= 1.0,
        "both shards got connections: {shard0} / {shard1}"
    );
    assert!(srv.metric("corechat_frames_in_total", None) >= 24.0);
    assert!(srv.metric("corechat_frames_out_total", None) >= 48.0);
    assert!(srv.metric("corechat_bytes_in_total", None) > 0.0);
    assert!(srv.metric("corechat_bytes_out_total", None) > 0.0);
    assert!(srv.metric("corechat_connections_total", None) >= 24.0);
}

#[test]
fn invalid_configuration_exits_2_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corechat"))
        .args(["serve", "--shards", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shards"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corechat"))
        .args(["token", "--user", "u1", "--jwt-secret", SECRET])
        .output()
        .unwrap();
    assert!(out.status.success());
    let tok = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        &*authenticator()
            .verify(&tok, corechat::auth::now_secs())
            .unwrap()
            .user,
        "u1"
    );
}

#[test]
fn echo_mode_echoes_text_and_binary() {
    let srv = Server::spawn(vec![
        "echo".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--shards".into(),
        "2".into(),
        "--no-pin".into(),
    ]);
    let mut c = Client::connect(&format!("ws://{}/ws", srv.addr));
    c.ws.send(tungstenite::Message::text("hello")).unwrap();
    assert_eq!(c.recv_text(), "hello");
    c.ws.send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .unwrap();
    loop {
        match c.ws.read().unwrap() {
            tungstenite::Message::Binary(b) => {
                assert_eq!(&b[..], &[1, 2, 3]);
                break;
            }
            _ => continue,
        }
    }
}

/// Without a configured secret, guest tokens survive a restart: the
/// development secret is kept in `<data_dir>/jwt-secret`.
#[test]
fn guest_token_survives_a_restart_without_a_secret() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let args = |dir: &std::path::Path| -> Vec<String> {
        ["serve", "--listen", "127.0.0.1:0", "--no-pin", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.to_str().unwrap().to_string()])
            .collect()
    };
    let token = {
        let srv = Server::spawn(args(&dir));
        let (status, body) = srv.http("POST", "/api/guest", &[], r#"{"name":"Ann"}"#);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let path = dir.join("jwt-secret");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let srv = Server::spawn(args(&dir));
    let bearer = format!("Bearer {token}");
    let (status, body) = srv.http(
        "GET",
        "/api/rooms/x/history",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(
        status, 200,
        "the second run accepts the first run's token: {body}"
    );
    let mut c = Client::connect(&srv.ws_url(&token));
    assert_eq!(c.recv_json()["type"], "welcome");
    drop(srv);

    // Another data directory means another secret.
    let other = Server::spawn(args(&tmp.path().join("other")));
    let (status, _) = other.http(
        "GET",
        "/api/rooms/x/history",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 401);
}

#[test]
fn bad_option_values_are_one_line_saying_what_was_expected() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_corechat"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    assert_eq!(
        run(&["serve", "--shards", "four"], &[]),
        "corechat: invalid --shards: expected a whole number, got \"four\"\n"
    );
    assert_eq!(
        run(&["serve"], &[("CORECHAT_LOG_FORMAT", "xml")]),
        "corechat: invalid --log-format: expected text or json, got \"xml\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corechat.toml");
    std::fs::write(&file, "burst = 1\nmax_rooms_per_conn = \"many\"\n").unwrap();
    let err = run(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert!(
        err.ends_with(
            "line 2: max_rooms_per_conn: expected a whole number, got the text \"many\"\n"
        ),
        "{err}"
    );
}
