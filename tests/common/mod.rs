//! Test harness: runs the real `corechat` binary on a free port and talks to
//! it over real sockets with a tungstenite client.
#![allow(dead_code)]

pub mod chat;
pub mod raw;
pub mod redis;
pub mod tls;

use corechat::auth::{now_secs, Authenticator};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret-0123456789";

/// A running server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub args: Vec<String>,
}

impl Server {
    /// Starts `corechat serve` with a fixed secret and the given extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--jwt-secret".into(),
            SECRET.into(),
            "--no-pin".into(),
        ];
        if !extra.contains(&"--store") {
            args.push("--store".into());
            args.push("memory".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(args)
    }

    pub fn spawn(args: Vec<String>) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corechat"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start corechat");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read listening line");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = reader.read_to_string(&mut sink);
        });
        Server { child, addr, args }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        unsafe_free_kill(self.pid(), sig);
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects a client for `user` and reads its `welcome`.
    pub fn client(&self, user: &str) -> Client {
        let mut c = Client::connect(&self.ws_url(&token(user)));
        let w = c.recv_json();
        assert_eq!(w["type"], "welcome", "first frame must be welcome: {w}");
        c
    }

    /// A raw HTTP/1.1 request; returns (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        http_request(&self.addr, method, path, headers, body)
    }

    /// Sum of the lines of metric `name` whose labels contain `labels`.
    pub fn metric_with(&self, name: &str, labels: &str) -> f64 {
        let (_, text) = self.http("GET", "/metrics", &[], "");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The value of one metric line (summed over shards when `shard` is None).
    pub fn metric(&self, name: &str, shard: Option<usize>) -> f64 {
        let (_, text) = self.http("GET", "/metrics", &[], "");
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| {
                let rest = &l[name.len()..];
                rest.starts_with('{') || rest.starts_with(' ')
            })
            .filter(|l| shard.is_none_or(|s| l.contains(&format!("shard=\"{s}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_free_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn authenticator() -> Authenticator {
    Authenticator::new(Some(SECRET.as_bytes()), None, 0).expect("authenticator")
}

/// A token for `user` signed with the test secret.
pub fn token(user: &str) -> String {
    authenticator()
        .mint(
            user,
            Some(&format!("Name {user}")),
            Some(3600),
            None,
            false,
            now_secs(),
        )
        .expect("mint")
}

pub fn admin_token(user: &str) -> String {
    authenticator()
        .mint(user, None, Some(3600), None, true, now_secs())
        .expect("mint")
}

pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    parse_response(&resp)
}

/// The status and body of a whole HTTP/1.1 response (0: unparsable).
pub fn parse_response(resp: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A blocking WebSocket client with a read timeout.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(url: &str) -> Client {
        let (ws, _) = Self::try_connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client { ws }
    }

    pub fn try_connect(url: &str) -> Result<(WebSocket<TcpStream>, u16), tungstenite::Error> {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let stream = TcpStream::connect(&addr).map_err(tungstenite::Error::Io)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let (ws, resp) = tungstenite::client(url, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })?;
        Ok((ws, resp.status().as_u16()))
    }

    pub fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_string())).expect("send");
    }

    /// Next text frame as JSON (pings are answered by tungstenite).
    pub fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv_text()).expect("server sent JSON")
    }

    /// Next text frame, raw.
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return t.to_string(),
                Ok(Message::Close(c)) => panic!("unexpected close: {c:?}"),
                Ok(_) => continue,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Next frame of the given type, skipping others.
    pub fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv_json();
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => return Some(u16::from(frame.code)),
                Ok(Message::Close(None)) => return Some(1005),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return None,
                Err(tungstenite::Error::Io(_)) => return None,
                Err(tungstenite::Error::Protocol(_)) => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Joins a room and returns the `joined` frame.
    pub fn join(&mut self, room: &str) -> Value {
        self.send_json(
            serde_json::json!({"type": "join", "room": room, "id": format!("j-{room}")}),
        );
        self.recv_type("joined")
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
    }
}
