//! HTTP details through real sockets: HEAD without a body, keep-alive
//! pipelining answered in order, the `Sec-WebSocket-Key` check, and the
//! per-address guest login limit.

mod common;

use common::{http_request, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn raw(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp).to_string()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length")
}

#[test]
fn head_has_the_length_of_get_and_no_body() {
    let srv = Server::start(&[]);
    let get = raw(
        &srv.addr,
        "GET /corechat.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let head = raw(
        &srv.addr,
        "HEAD /corechat.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (get_head, get_body) = get.split_once("\r\n\r\n").expect("GET response");
    let (head_head, head_body) = head.split_once("\r\n\r\n").expect("HEAD response");
    assert!(head_head.starts_with("HTTP/1.1 200"), "{head_head}");
    assert_eq!(content_length(head_head), content_length(get_head));
    assert_eq!(content_length(get_head), get_body.len());
    assert!(
        head_body.is_empty(),
        "HEAD sent {} body bytes",
        head_body.len()
    );
}

#[test]
fn pipelined_requests_are_answered_one_by_one_in_order() {
    let srv = Server::start(&[]);
    let mut req = String::new();
    for _ in 0..20 {
        req.push_str(
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /corechat.js HTTP/1.1\r\nHost: x\r\n\r\n",
        );
    }
    req.push_str("GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let resp = raw(&srv.addr, &req);
    let statuses = resp.matches("HTTP/1.1 200").count();
    assert_eq!(statuses, 41, "every pipelined request answered");
    let last = resp.rfind("HTTP/1.1 200").expect("last response");
    assert!(
        resp[last..].contains("\"ready\""),
        "the last answer is /ready's"
    );
}

#[test]
fn a_sec_websocket_key_that_is_not_16_bytes_is_refused() {
    let srv = Server::start(&[]);
    let token = common::token("alice");
    let upgrade = |key: &str| {
        raw(
            &srv.addr,
            &format!(
                "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
            ),
        )
    };
    let bad = upgrade("c2hvcnQ=");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("sec-websocket-key"), "{bad}");
    let mut good = TcpStream::connect(&srv.addr).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    good.write_all(
        format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 12];
    good.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
}

#[test]
fn guest_logins_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::spawn(vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--store".into(),
        "memory".into(),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--guest".into(),
        "--max-guests-per-ip-per-min".into(),
        "3".into(),
        "--no-pin".into(),
    ]);
    let mut statuses = Vec::new();
    for i in 0..5 {
        let (status, body) = http_request(
            &srv.addr,
            "POST",
            "/api/guest",
            &[("content-type", "application/json")],
            &format!(r#"{{"name":"g{i}"}}"#),
        );
        if status == 429 {
            assert!(body.contains("retry_after_ms"), "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
}
