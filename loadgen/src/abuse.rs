//! `loadgen abuse`: hostile-client shapes run one after another against a server speaking
//! PROTOCOL.md. For each shape: the server's VmRSS (sampled every 100 ms: start, peak, end after
//! a settle time), the publish->echo latency of a well-behaved member publishing every 50 ms to
//! its own room during the attack (and whether it stayed connected), and a shape-specific
//! verdict. Every shape is bounded in time and in count and stops by itself.
//!
//! The clients here are plain blocking sockets (one thread per role, a few sockets polled
//! without blocking for `partial-frames`): the point is the shape of the traffic, not its rate.

use crate::cli::{parse_source_ips, AbuseArgs, WsUrl};
use crate::jwt::Minter;
use crate::scenarios::{command_line, Outcome};
use crate::sys;
use crate::ws::{self, OpCode, Parse};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Every shape, in the order they run.
pub const SHAPES: &[&str] = &[
    "http-pipeline",
    "history-flood",
    "presence-flood",
    "rooms-flood",
    "resume-backlog",
    "pipelined-publish",
    "read-spam",
    "room-churn",
    "partial-frames",
];

/// Where and how to connect.
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    minter: Option<Minter>,
    token: Option<String>,
    ttl: u64,
    source_ips: Vec<IpAddr>,
    next_ip: AtomicUsize,
    /// Distinguishes this run's users and rooms from earlier runs against the same server.
    pub nonce: String,
}

impl Target {
    fn from_args(a: &AbuseArgs) -> anyhow::Result<Target> {
        let c = &a.common;
        let url = WsUrl::parse(&c.url)?;
        anyhow::ensure!(
            !url.tls,
            "abuse speaks plain ws:// only (its shapes are TCP-level)"
        );
        let addr = url.resolve()?;
        let source_ips = match &c.source_ips {
            Some(s) => parse_source_ips(s)?,
            None => Vec::new(),
        };
        if c.token.is_none() && c.jwt_secret.is_none() {
            eprintln!("note: no --jwt-secret/--token: connecting without a token");
        }
        Ok(Target {
            addr,
            host: url.host_header(),
            path: url.path.clone(),
            minter: c.jwt_secret.as_ref().map(|s| Minter::new(s.as_bytes())),
            token: c.token.clone(),
            ttl: c.jwt_ttl,
            source_ips,
            next_ip: AtomicUsize::new(0),
            nonce: format!("{:x}", sys::mono_ns() % 0xff_ffff),
        })
    }

    /// Whether distinct roles are distinct users (not so with one `--token` for all).
    fn distinct_users(&self) -> bool {
        self.token.is_none() && self.minter.is_some()
    }

    fn user(&self, role: &str) -> String {
        format!("lg-abuse-{}-{role}", self.nonce)
    }

    fn room(&self, name: &str) -> String {
        format!("abuse-{}-{name}", self.nonce)
    }

    fn ws_path(&self, role: &str) -> String {
        let token = match (&self.token, &self.minter) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(m)) => {
                let iat = sys::unix_ms() / 1000;
                Some(m.mint(&self.user(role), iat, Some(iat + self.ttl)))
            }
            (None, None) => None,
        };
        match token {
            None => self.path.clone(),
            Some(t) => {
                let sep = if self.path.contains('?') { '&' } else { '?' };
                format!("{}{sep}token={t}", self.path)
            }
        }
    }

    /// A TCP connection, bound to the next `--source-ips` address when there are some.
    fn tcp(&self) -> io::Result<TcpStream> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(
            Domain::for_address(self.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        if !self.source_ips.is_empty() {
            let i = self.next_ip.fetch_add(1, Ordering::Relaxed);
            let ip = self.source_ips[i % self.source_ips.len()];
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        sock.connect_timeout(&self.addr.into(), Duration::from_secs(5))?;
        let s: TcpStream = sock.into();
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// What a blocking read produced.
#[derive(Debug)]
pub enum Ev {
    Text(String),
    /// A close frame from the server (its code; 1005 without one).
    Close(u16),
    /// The connection ended without a close frame (EOF or an error).
    Eof(String),
    Timeout,
}

/// A blocking WebSocket client.
pub struct Client {
    pub s: TcpStream,
    rbuf: Vec<u8>,
    frag: Option<Vec<u8>>,
    /// How the connection ended, once it has.
    pub ended: Option<String>,
    pub close_code: Option<u16>,
    mask: u32,
}

fn mask_of(x: u32) -> [u8; 4] {
    x.to_le_bytes()
}

/// A masked client text frame.
pub fn text_frame(out: &mut Vec<u8>, payload: &str, mask: u32) {
    ws::encode_frame(
        out,
        OpCode::Text,
        payload.as_bytes(),
        Some(mask_of(mask | 1)),
    );
}

impl Client {
    /// TCP connect, upgrade as `role`, and read `welcome` (returned).
    pub fn connect(t: &Target, role: &str) -> anyhow::Result<(Client, Value)> {
        let mut c = Client::upgrade(t, role)?;
        match c.read(Duration::from_secs(10)) {
            Ev::Text(s) => {
                let v: Value = serde_json::from_str(&s)?;
                anyhow::ensure!(v["type"] == "welcome", "first frame is not welcome: {s}");
                Ok((c, v))
            }
            other => anyhow::bail!("no welcome: {other:?}"),
        }
    }

    /// TCP connect and upgrade as `role` (the welcome is left unread).
    pub fn upgrade(t: &Target, role: &str) -> anyhow::Result<Client> {
        let mut s = t.tcp()?;
        let mut req = Vec::new();
        ws::upgrade_request(
            &mut req,
            &t.ws_path(role),
            &t.host,
            "dGhlIHNhbXBsZSBub25jZQ==",
        );
        s.write_all(&req)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = match s.read(&mut tmp) {
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    anyhow::bail!("no upgrade response within 10 s")
                }
                Err(e) => return Err(e.into()),
            };
            anyhow::ensure!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&tmp[..n]);
            match ws::parse_upgrade_response(&buf) {
                ws::Upgrade::Incomplete => continue,
                ws::Upgrade::Error(e) => anyhow::bail!("{e}"),
                ws::Upgrade::Done {
                    status, header_len, ..
                } => {
                    anyhow::ensure!(status == 101, "http {status}");
                    buf.drain(..header_len);
                    break;
                }
            }
        }
        Ok(Client {
            s,
            rbuf: buf,
            frag: None,
            ended: None,
            close_code: None,
            mask: (sys::mono_ns() as u32) | 1,
        })
    }

    fn next_mask(&mut self) -> u32 {
        // xorshift32
        let mut x = self.mask;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask = x;
        x
    }

    /// Encode one text frame into `out` with this client's masks.
    pub fn frame(&mut self, out: &mut Vec<u8>, payload: &str) {
        let m = self.next_mask();
        text_frame(out, payload, m);
    }

    /// Send one text frame (blocking).
    pub fn send(&mut self, payload: &str) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        self.frame(&mut out, payload);
        self.s.set_write_timeout(Some(Duration::from_secs(10)))?;
        self.s.write_all(&out)
    }

    /// Write `bytes` until done or `deadline`; returns how many were written.
    pub fn write_until(&mut self, bytes: &[u8], deadline: Instant) -> usize {
        write_until(&mut self.s, bytes, deadline)
    }

    /// The next text frame, close or end, waiting at most `timeout`. Pings are answered.
    pub fn read(&mut self, timeout: Duration) -> Ev {
        if let Some(e) = &self.ended {
            return Ev::Eof(e.clone());
        }
        let deadline = Instant::now() + timeout;
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            match ws::parse_server_frame(&self.rbuf, ws::MAX_SERVER_FRAME) {
                Err(e) => {
                    self.ended = Some(format!("bad frame: {e}"));
                    return Ev::Eof(format!("bad frame: {e}"));
                }
                Ok(Parse::Frame(h)) => {
                    let payload = h.payload(&self.rbuf).to_vec();
                    self.rbuf.drain(..h.total_len());
                    match h.opcode {
                        OpCode::Ping => {
                            let m = self.next_mask();
                            let mut out = Vec::new();
                            ws::encode_frame(&mut out, OpCode::Pong, &payload, Some(mask_of(m)));
                            let _ = self.s.write_all(&out);
                        }
                        OpCode::Pong => {}
                        OpCode::Close => {
                            let code = if payload.len() >= 2 {
                                u16::from_be_bytes([payload[0], payload[1]])
                            } else {
                                1005
                            };
                            self.close_code = Some(code);
                            self.ended = Some(format!("close {code}"));
                            return Ev::Close(code);
                        }
                        OpCode::Text | OpCode::Binary => {
                            if h.fin {
                                return Ev::Text(String::from_utf8_lossy(&payload).into_owned());
                            }
                            self.frag = Some(payload);
                        }
                        OpCode::Continuation => {
                            let mut f = self.frag.take().unwrap_or_default();
                            f.extend_from_slice(&payload);
                            if h.fin {
                                return Ev::Text(String::from_utf8_lossy(&f).into_owned());
                            }
                            self.frag = Some(f);
                        }
                    }
                    continue;
                }
                Ok(Parse::Incomplete { .. }) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ev::Timeout;
            }
            let _ = self
                .s
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
            match self.s.read(&mut tmp) {
                Ok(0) => {
                    self.ended = Some("eof".into());
                    return Ev::Eof("eof".into());
                }
                Ok(n) => self.rbuf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Ev::Timeout
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.ended = Some(e.to_string());
                    return Ev::Eof(e.to_string());
                }
            }
        }
    }

    /// Read frames until `deadline`, handing each parsed one to `f`; stops early when `f`
    /// returns false or the connection ends.
    pub fn read_until(&mut self, deadline: Instant, mut f: impl FnMut(&Value) -> bool) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.read(deadline - now) {
                Ev::Text(s) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&s) {
                        if !f(&v) {
                            return;
                        }
                    }
                }
                Ev::Timeout => {}
                Ev::Close(_) | Ev::Eof(_) => return,
            }
        }
    }

    /// Send `join` and wait for `joined` (or an error).
    pub fn join(&mut self, room: &str, since: Option<u64>, id: u64) -> anyhow::Result<Value> {
        let req = match since {
            Some(s) => json!({"type":"join","room":room,"since":s,"id":id}),
            None => json!({"type":"join","room":room,"id":id}),
        };
        self.send(&req.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = None;
        self.read_until(deadline, |v| {
            if v["id"] == id && (v["type"] == "joined" || v["type"] == "error") {
                got = Some(v.clone());
                false
            } else {
                true
            }
        });
        match got {
            Some(v) if v["type"] == "joined" => Ok(v),
            Some(v) => anyhow::bail!("join {room}: {v}"),
            None => anyhow::bail!(
                "join {room}: no reply ({})",
                self.ended.as_deref().unwrap_or("timeout")
            ),
        }
    }
}

/// Write `bytes` to a blocking socket until done or `deadline` (short write timeouts, so a
/// server that stops reading cannot hold us); returns how many bytes went out.
fn write_until(s: &mut TcpStream, bytes: &[u8], deadline: Instant) -> usize {
    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
    let mut done = 0;
    while done < bytes.len() && Instant::now() < deadline {
        match s.write(&bytes[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    done
}

/// The server's rate limit as `welcome.limits` announces it, paced a little below.
struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    pub max_body: usize,
}

impl Pacer {
    fn from_welcome(w: &Value) -> Pacer {
        let l = &w["limits"];
        let rate = l["rate_per_sec"].as_f64().unwrap_or(20.0).max(0.1);
        let burst = l["burst"].as_f64().unwrap_or(rate).max(1.0);
        Pacer {
            rate: rate * 0.9,
            burst: (burst - 1.0).max(1.0),
            tokens: (burst - 1.0).max(1.0),
            at: Instant::now(),
            max_body: l["max_body_bytes"].as_u64().unwrap_or(16384) as usize,
        }
    }
    /// Take a token if there is one; else how long until there is.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
    fn penalize(&mut self, retry_after_ms: u64) {
        self.tokens = 0.0;
        self.at = Instant::now() + Duration::from_millis(retry_after_ms);
    }
}

/// A JSON body of about `size` bytes (serialized), tagged with `k`.
fn big_body(size: usize, k: usize) -> String {
    let pad = size.saturating_sub(24).max(1);
    format!(r#"{{"k":{k},"p":"{}"}}"#, "x".repeat(pad))
}

/// Publish `n` bodies of `size` bytes into `room` (joined by `c`), paced by the server's
/// announced limit, a few in flight, retrying `rate_limited`; returns the acked seqs.
fn publish_paced(
    c: &mut Client,
    pacer: &mut Pacer,
    room: &str,
    n: usize,
    size: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<u64>> {
    let size = size.min(pacer.max_body.saturating_sub(32)).max(8);
    let mut queue: std::collections::VecDeque<usize> = (0..n).collect();
    let mut in_flight = 0usize;
    let mut seqs = vec![0u64; n];
    let mut acked = 0usize;
    let mut rate_limited = 0u64;
    while acked < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "setup timed out: {acked}/{n} published ({rate_limited} rate_limited)"
        );
        if let Some(e) = &c.ended {
            anyhow::bail!("publisher disconnected ({e}) after {acked}/{n}");
        }
        let mut wait = Duration::from_millis(20);
        // few bytes in flight: the echoes of our own publishes must not pile up on a server
        // with a small --max-outbound-bytes (this is setup, not the attack)
        if in_flight < (32 * 1024 / size).clamp(1, 8) {
            if let Some(&k) = queue.front() {
                match pacer.take() {
                    Ok(()) => {
                        queue.pop_front();
                        let body = big_body(size, k);
                        let req = format!(
                            r#"{{"type":"publish","room":{},"id":{k},"body":{body}}}"#,
                            Value::from(room)
                        );
                        c.send(&req)?;
                        in_flight += 1;
                        continue;
                    }
                    Err(d) => wait = wait.min(d),
                }
            }
        }
        match c.read(wait) {
            Ev::Text(s) => {
                if !(s.starts_with(r#"{"type":"ack""#) || s.starts_with(r#"{"type":"error""#)) {
                    // our own echoes and other room traffic
                    if !s.contains(r#""type":"ack""#) && !s.contains(r#""type":"error""#) {
                        continue;
                    }
                }
                let v: Value = serde_json::from_str(&s)?;
                let Some(k) = v["id"].as_u64().map(|k| k as usize) else {
                    continue;
                };
                if k >= n {
                    continue;
                }
                in_flight = in_flight.saturating_sub(1);
                if v["type"] == "ack" {
                    seqs[k] = v["seq"].as_u64().unwrap_or(0);
                    acked += 1;
                } else if v["code"] == "rate_limited" {
                    rate_limited += 1;
                    pacer.penalize(v["retry_after_ms"].as_u64().unwrap_or(100));
                    queue.push_front(k);
                } else {
                    anyhow::bail!("publish refused: {s}");
                }
            }
            Ev::Timeout => {}
            Ev::Close(code) => anyhow::bail!("publisher closed with {code} after {acked}/{n}"),
            Ev::Eof(e) => anyhow::bail!("publisher disconnected ({e}) after {acked}/{n}"),
        }
    }
    Ok(seqs)
}

// ---------------------------------------------------------------------------------------------
// Measurement: server memory and the well-behaved client

/// Samples the server's VmRSS every 100 ms on a thread.
struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: Option<u32>, t0: Instant) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let handle = pid.map(|pid| {
            let (stop, samples) = (stop.clone(), samples.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(s) = sys::sample_proc(pid) {
                        samples
                            .lock()
                            .unwrap()
                            .push((t0.elapsed().as_secs_f64(), s.rss_kib));
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        });
        RssSampler {
            stop,
            samples,
            handle,
        }
    }
    fn finish(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// What the well-behaved member saw.
#[derive(Debug, Default)]
pub struct Normal {
    pub lat_ms: Vec<f64>,
    pub sent: u64,
    pub echoed: u64,
    pub rate_limited: u64,
    pub connected: bool,
    pub error: Option<String>,
}

impl Normal {
    fn pct(&self, q: f64) -> Option<f64> {
        if self.lat_ms.is_empty() {
            return None;
        }
        let mut v = self.lat_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i])
    }
}

/// A member of its own room publishing every `interval` and timing its own echo, until `stop`.
fn normal_client(
    t: Arc<Target>,
    room: String,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Normal {
    let mut r = Normal::default();
    let (mut c, _w) = match Client::connect(&t, "normal") {
        Ok(x) => x,
        Err(e) => {
            r.error = Some(format!("connect: {e:#}"));
            return r;
        }
    };
    if let Err(e) = c.join(&room, None, 0) {
        r.error = Some(format!("{e:#}"));
        return r;
    }
    r.connected = true;
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut next = Instant::now();
    let mut k = 0u64;
    let mut stop_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if stop_at.is_none() && stop.load(Ordering::Relaxed) {
            // give the last echoes a moment
            stop_at = Some(now + Duration::from_millis(500));
        }
        if let Some(s) = stop_at {
            if now >= s || sent_at.is_empty() {
                break;
            }
        } else if now >= next {
            k += 1;
            let req = format!(
                r#"{{"type":"publish","room":{},"id":{k},"body":{{"n":{k}}}}}"#,
                Value::from(room.as_str())
            );
            if let Err(e) = c.send(&req) {
                r.connected = false;
                r.error = Some(format!("send: {e}"));
                break;
            }
            sent_at.insert(k, Instant::now());
            r.sent += 1;
            next += interval;
            if next < now {
                next = now + interval;
            }
            continue;
        }
        let wait = if stop_at.is_some() {
            Duration::from_millis(20)
        } else {
            next.saturating_duration_since(now)
                .max(Duration::from_millis(1))
        };
        match c.read(wait) {
            Ev::Text(s) => {
                let Ok(v) = serde_json::from_str::<Value>(&s) else {
                    continue;
                };
                if v["type"] == "message" && v["room"] == room.as_str() {
                    if let Some(n) = v["body"]["n"].as_u64() {
                        if let Some(at) = sent_at.remove(&n) {
                            r.lat_ms.push(at.elapsed().as_secs_f64() * 1000.0);
                            r.echoed += 1;
                        }
                    }
                } else if v["type"] == "error" && v["code"] == "rate_limited" {
                    r.rate_limited += 1;
                    if let Some(n) = v["id"].as_u64() {
                        sent_at.remove(&n);
                    }
                }
            }
            Ev::Timeout => {}
            Ev::Close(code) => {
                r.connected = false;
                r.error = Some(format!("closed with {code}"));
                break;
            }
            Ev::Eof(e) => {
                r.connected = false;
                r.error = Some(format!("disconnected: {e}"));
                break;
            }
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The shapes

/// A shape's result: a one-line verdict, `pass` where the shape has a clear expectation, and
/// details for summary.json.
pub struct Verdict {
    pub text: String,
    pub pass: Option<bool>,
    pub details: Value,
}

impl Verdict {
    fn err(e: anyhow::Error) -> Verdict {
        Verdict {
            text: format!("error: {e:#}"),
            pass: None,
            details: json!({"error": format!("{e:#}")}),
        }
    }
}

struct Ctx<'a> {
    t: &'a Arc<Target>,
    a: &'a AbuseArgs,
    duration: Duration,
    setup: Duration,
}

fn http_pipeline(x: &Ctx) -> anyhow::Result<Verdict> {
    let n = x.a.http_conns.max(1);
    let k = x.a.http_requests;
    let req = format!("GET /corechat.js HTTP/1.1\r\nHost: {}\r\n\r\n", x.t.host);
    let bytes = req.repeat(k).into_bytes();
    let deadline = Instant::now() + x.duration;
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(x.t.tcp()?);
    }
    // one write each (a blocking write of the whole batch, cut short at the deadline)
    let mut written = Vec::new();
    let t0 = Instant::now();
    for s in &mut conns {
        written.push(write_until(s, &bytes, deadline));
    }
    let write_secs = t0.elapsed().as_secs_f64();
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    let closed = conns.iter_mut().map(peer_closed).filter(|c| *c).count();
    let total: usize = written.iter().sum();
    let full = written.iter().filter(|w| **w == bytes.len()).count();
    Ok(Verdict {
        text: format!(
            "{n} conns x {k} reqs: {} of {} KiB written ({full}/{n} complete, {write_secs:.1} s), never read; {closed}/{n} closed by server",
            total / 1024,
            n * bytes.len() / 1024
        ),
        pass: None,
        details: json!({"conns": n, "requests_per_conn": k, "bytes_per_conn": bytes.len(), "bytes_written": written, "write_secs": write_secs, "closed_by_server": closed}),
    })
}

/// Whether the server has closed `s` (without consuming more than what is buffered).
fn peer_closed(s: &mut TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 1];
    let r = match s.peek(&mut buf) {
        Ok(0) => true,
        Ok(_) => {
            // data pending: drain what is there to see whether a FIN follows
            let mut big = vec![0u8; 1 << 20];
            loop {
                match s.read(&mut big) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    let _ = s.set_nonblocking(false);
    r
}

fn request_flood(x: &Ctx, kind: &str) -> anyhow::Result<Verdict> {
    let (mut c, w) = Client::connect(x.t, &format!("flood-{kind}"))?;
    let mut pacer = Pacer::from_welcome(&w);
    let room = x.t.room(&format!("{kind}-flood"));
    c.join(&room, None, 1_000_000)?;
    let mut setup = String::new();
    match kind {
        "history" => {
            let deadline = Instant::now() + x.setup;
            let seqs = publish_paced(
                &mut c,
                &mut pacer,
                &room,
                x.a.flood_messages,
                x.a.big_body,
                deadline,
            )?;
            setup = format!("room filled with {} msgs; ", seqs.len());
        }
        "rooms" => {
            // a longer `rooms` reply: this member is in many rooms
            for i in 0..x.a.flood_rooms {
                c.join(
                    &x.t.room(&format!("rooms-flood-{i}")),
                    None,
                    2_000_000 + i as u64,
                )?;
            }
            setup = format!("joined {} rooms; ", x.a.flood_rooms + 1);
        }
        _ => {}
    }
    let n = x.a.flood_requests;
    let mut out = Vec::new();
    for i in 0..n {
        let req = match kind {
            "history" => json!({"type":"history","room":room,"limit":100,"id":i}),
            "presence" => json!({"type":"presence","room":room,"id":i}),
            _ => json!({"type":"rooms","id":i}),
        };
        c.frame(&mut out, &req.to_string());
    }
    let deadline = Instant::now() + x.duration;
    let t0 = Instant::now();
    let wrote = c.write_until(&out, deadline);
    let write_secs = t0.elapsed().as_secs_f64();
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    let closed = peer_closed(&mut c.s);
    let sent_reqs = if wrote == out.len() {
        n
    } else {
        (wrote as f64 / out.len() as f64 * n as f64) as usize
    };
    Ok(Verdict {
        text: format!(
            "{setup}{}/{n} {kind} reqs written ({} of {} KiB, {write_secs:.1} s), never read; {}",
            sent_reqs,
            wrote / 1024,
            out.len() / 1024,
            if closed {
                "closed by server"
            } else {
                "still open"
            }
        ),
        pass: None,
        details: json!({"requests": n, "bytes": out.len(), "bytes_written": wrote, "write_secs": write_secs, "closed_by_server": closed}),
    })
}

fn resume_backlog(x: &Ctx) -> anyhow::Result<Verdict> {
    let m = x.a.backlog;
    let (mut p, w) = Client::connect(x.t, "backlog-pub")?;
    let mut pacer = Pacer::from_welcome(&w);
    let room = x.t.room("backlog");
    p.join(&room, None, 1_000_000)?;
    let seqs = publish_paced(
        &mut p,
        &mut pacer,
        &room,
        m,
        x.a.big_body,
        Instant::now() + x.setup,
    )?;
    let last = seqs.iter().copied().max().unwrap_or(0);
    let first = last + 1 - m as u64;
    // the fresh reader
    let (mut r, _) = Client::connect(x.t, "backlog-reader")?;
    let t0 = Instant::now();
    let deadline = t0 + x.duration;
    r.send(&json!({"type":"join","room":room,"since":0,"id":1}).to_string())?;
    let mut got = 0u64;
    let mut prev = 0u64;
    let mut problem: Option<String> = None;
    let mut replay_secs = None;
    let mut live_sent = false;
    let mut live_ok = false;
    let mut recovered = Value::Null;
    while Instant::now() < deadline && problem.is_none() && !live_ok {
        match r.read(deadline.saturating_duration_since(Instant::now())) {
            Ev::Text(s) => {
                let v: Value = match serde_json::from_str(&s) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if v["type"] == "joined" {
                    recovered = v["recovered"].clone();
                } else if v["type"] == "error" && v["id"] == 1 {
                    problem = Some(format!("join refused: {}", v["code"]));
                } else if v["type"] == "message" && v["room"] == room.as_str() {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    if seq != prev + 1 {
                        problem = Some(format!("seq {seq} after {prev}"));
                        break;
                    }
                    prev = seq;
                    if seq >= first && seq <= last {
                        got += 1;
                    }
                    if seq == last && !live_sent {
                        replay_secs = Some(t0.elapsed().as_secs_f64());
                        live_sent = true;
                        p.send(
                            &json!({"type":"publish","room":room,"id":"live","body":{"live":true}})
                                .to_string(),
                        )?;
                    } else if seq == last + 1 && v["body"]["live"] == true {
                        live_ok = true;
                    }
                }
            }
            Ev::Timeout => {}
            Ev::Close(code) => problem = Some(format!("{code} at {got}/{m}")),
            Ev::Eof(e) => problem = Some(format!("disconnected ({e}) at {got}/{m}")),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let pass = problem.is_none() && got == m as u64 && live_ok;
    let text = match &problem {
        Some(p) if p.starts_with("10") => p.clone(),
        Some(p) => format!("{p} ({got}/{m} delivered)"),
        None if pass => format!(
            "delivered {got}/{m} in order + live, no gap, in {:.2} s",
            replay_secs.unwrap_or(secs)
        ),
        None if got == m as u64 => format!("delivered {got}/{m} in order, live message missing"),
        None => format!("timeout at {got}/{m} after {secs:.1} s"),
    };
    Ok(Verdict {
        text,
        pass: Some(pass),
        details: json!({"backlog": m, "first_seq": first, "last_seq": last, "delivered": got, "live": live_ok, "replay_secs": replay_secs, "secs": secs, "recovered": recovered, "problem": problem, "close_code": r.close_code}),
    })
}

fn pipelined_publish(x: &Ctx) -> anyhow::Result<Verdict> {
    let n = x.a.pipeline;
    let (mut c, w) = Client::connect(x.t, "pipeline")?;
    let pacer = Pacer::from_welcome(&w);
    let room = x.t.room("pipeline");
    c.join(&room, None, 1_000_000)?;
    let size = x.a.pipeline_body.min(pacer.max_body.saturating_sub(32));
    let mut out = Vec::new();
    for k in 0..n {
        let req = format!(
            r#"{{"type":"publish","room":{},"id":{k},"body":{}}}"#,
            Value::from(room.as_str()),
            big_body(size, k)
        );
        c.frame(&mut out, &req);
    }
    let t0 = Instant::now();
    let deadline = t0 + x.duration;
    let wrote = c.write_until(&out, deadline);
    let (mut acked, mut echoed) = (0usize, 0usize);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    c.read_until(deadline, |v| {
        match v["type"].as_str() {
            Some("ack") => acked += 1,
            Some("message") if v["room"] == room.as_str() => echoed += 1,
            Some("error") => {
                *errors
                    .entry(v["code"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1
            }
            _ => {}
        }
        (acked + errors.values().sum::<u64>() as usize) < n || echoed < acked
    });
    let secs = t0.elapsed().as_secs_f64();
    let code = c.close_code;
    let pass = acked == n && echoed == n && code.is_none() && c.ended.is_none();
    let text = match (&code, &c.ended) {
        (Some(code), _) => format!("{code} after {acked}/{n} acks, {echoed} echoes"),
        (None, Some(e)) => format!("disconnected ({e}) after {acked}/{n} acks"),
        _ => format!(
            "{acked}/{n} acked, {echoed}/{n} echoed in {secs:.2} s{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(", errors {errors:?}")
            }
        ),
    };
    Ok(Verdict {
        text,
        pass: Some(pass),
        details: json!({"publishes": n, "body": size, "bytes_written": wrote, "acked": acked, "echoed": echoed, "errors": errors, "close_code": code, "secs": secs}),
    })
}

fn read_spam(x: &Ctx) -> anyhow::Result<Verdict> {
    let n = x.a.read_spam;
    let room = x.t.room("read-spam");
    let (mut a, w) = Client::connect(x.t, "read-sender")?;
    let mut pacer = Pacer::from_welcome(&w);
    let (mut b, _) = Client::connect(x.t, "read-watcher")?;
    a.join(&room, None, 1_000_000)?;
    b.join(&room, None, 1_000_000)?;
    let seqs = publish_paced(&mut a, &mut pacer, &room, 1, 64, Instant::now() + x.setup)?;
    let seq = seqs[0];
    let mut out = Vec::new();
    for i in 0..n {
        a.frame(
            &mut out,
            &json!({"type":"read","room":room,"seq":seq,"id":i}).to_string(),
        );
    }
    let t0 = Instant::now();
    let deadline = t0 + x.duration;
    a.write_until(&out, deadline);
    // the watcher counts `read` frames; the sender its errors, on a second thread
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let sender = thread::spawn(move || {
        let mut errs: BTreeMap<String, u64> = BTreeMap::new();
        let dl = deadline;
        while !st.load(Ordering::Relaxed) && Instant::now() < dl {
            a.read_until((Instant::now() + Duration::from_millis(100)).min(dl), |v| {
                if v["type"] == "error" {
                    *errs
                        .entry(v["code"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
                }
                true
            });
            if a.ended.is_some() {
                break;
            }
        }
        (errs, a.close_code, a.ended.clone())
    });
    let mut reads = 0u64;
    b.read_until(deadline, |v| {
        if v["type"] == "read" && v["room"] == room.as_str() {
            reads += 1;
        }
        true
    });
    stop.store(true, Ordering::Relaxed);
    let (errs, a_close, a_ended) = sender.join().unwrap_or_default();
    let rl = errs.get("rate_limited").copied().unwrap_or(0);
    let distinct = x.t.distinct_users();
    let pass = distinct.then_some(reads <= 1);
    Ok(Verdict {
        text: format!(
            "{reads} read frames to the other member for {n} reads of seq {seq} (want <= 1); sender: {rl} rate_limited{}{}",
            match (a_close, &a_ended) {
                (Some(c), _) => format!(", closed {c}"),
                (None, Some(e)) => format!(", disconnected ({e})"),
                _ => String::new(),
            },
            if distinct { "" } else { " (one user for both: --token; inconclusive)" }
        ),
        pass,
        details: json!({"reads_sent": n, "seq": seq, "read_frames_received": reads, "sender_errors": errs, "sender_close_code": a_close}),
    })
}

/// xorshift64* for random names.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn room_churn(x: &Ctx) -> anyhow::Result<Verdict> {
    let (mut c, _) = Client::connect(x.t, "churn")?;
    let mut rng = Rng(sys::mono_ns() | 1);
    let max_ops = x.a.churn_ops;
    let t0 = Instant::now();
    let deadline = t0 + x.duration;
    let mut ops = 0usize;
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    let mut id = 0u64;
    let mut unanswered = 0u64;
    // each batch: join 25 new rooms, leave the previous batch's rooms, 25 history of random
    // rooms, 25 dm to random users; then read the replies (at most 1 s per batch)
    let mut joined_prev: Vec<String> = Vec::new();
    loop {
        let last = ops >= max_ops || Instant::now() >= deadline || c.ended.is_some();
        if last && joined_prev.is_empty() {
            break;
        }
        let mut out = Vec::new();
        let first_id = id;
        let mut next_rooms = Vec::new();
        for r in joined_prev.drain(..) {
            c.frame(
                &mut out,
                &json!({"type":"leave","room":r,"id":id}).to_string(),
            );
            id += 1;
        }
        if !last {
            for _ in 0..25 {
                let r = format!("churn-{:x}", rng.next());
                let reqs = [
                    json!({"type":"join","room":r,"id":id}),
                    json!({"type":"history","room":format!("churn-{:x}", rng.next()),"limit":10,"id":id + 1}),
                    json!({"type":"dm","to":format!("u-{:x}", rng.next() % 0xffff_ffff),"body":"hi","id":id + 2}),
                ];
                for v in reqs {
                    c.frame(&mut out, &v.to_string());
                }
                id += 3;
                next_rooms.push(r);
            }
        }
        let batch_deadline =
            (Instant::now() + Duration::from_secs(1)).min(deadline + Duration::from_secs(1));
        c.write_until(&out, batch_deadline);
        ops += (id - first_id) as usize;
        // every request is answered (dm with ack or an error): wait for the batch
        let want = (id - first_id) as usize;
        let mut seen = 0usize;
        c.read_until(batch_deadline, |v| {
            if let Some(i) = v["id"].as_u64() {
                if i >= first_id && i < id {
                    seen += 1;
                    let key = if v["type"] == "error" {
                        format!("error {}", v["code"].as_str().unwrap_or("?"))
                    } else {
                        v["type"].as_str().unwrap_or("?").to_string()
                    };
                    *replies.entry(key).or_default() += 1;
                }
            }
            seen < want
        });
        unanswered += (want - seen.min(want)) as u64;
        joined_prev = next_rooms;
        if c.ended.is_some() {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let rl = replies.get("error rate_limited").copied().unwrap_or(0);
    let ended = c.ended.clone();
    Ok(Verdict {
        text: format!(
            "{ops} ops in {secs:.1} s ({} joined, {} left, {} history, {} dm acked, {rl} rate_limited{}){}",
            replies.get("joined").unwrap_or(&0),
            replies.get("left").unwrap_or(&0),
            replies.get("history").unwrap_or(&0),
            replies.get("ack").unwrap_or(&0),
            {
                let other: u64 = replies
                    .iter()
                    .filter(|(k, _)| k.starts_with("error") && k.as_str() != "error rate_limited")
                    .map(|(_, v)| v)
                    .sum();
                if other > 0 {
                    format!(", {other} other errors")
                } else {
                    String::new()
                }
            },
            ended.as_ref().map_or(String::new(), |e| format!("; ended: {e}"))
        ) + &if unanswered > 0 { format!("; {unanswered} unanswered") } else { String::new() },
        pass: None,
        details: json!({"ops": ops, "secs": secs, "replies": replies, "unanswered": unanswered, "ended": ended}),
    })
}

fn partial_frames(x: &Ctx) -> anyhow::Result<Verdict> {
    let n = x.a.partial_conns;
    // a 200-byte text frame: send its first half (header, mask, part of the payload)
    let payload = format!(r#"{{"type":"ping","id":1,"p":"{}"}}"#, "x".repeat(170));
    let mut frame = Vec::new();
    text_frame(&mut frame, &payload, 0x1234_5678);
    let half = frame.len() / 2;
    let connect_deadline = Instant::now() + x.setup;
    let mut conns: Vec<(Client, Instant, Option<f64>, usize)> = Vec::new();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    while conns.len() < n && Instant::now() < connect_deadline {
        match Client::upgrade(x.t, "partial") {
            Ok(mut c) => {
                let _ = c.s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = c.s.write_all(&frame[..half]);
                let _ = c.s.set_nonblocking(true);
                conns.push((c, Instant::now(), None, half));
            }
            Err(e) => {
                let why = format!("{e:#}");
                *refused.entry(why.clone()).or_default() += 1;
                if why.contains("429") {
                    thread::sleep(Duration::from_millis(200));
                } else if refused.values().sum::<u64>() > n as u64 {
                    break;
                }
            }
        }
    }
    let opened = conns.len();
    let t0 = Instant::now();
    let deadline = t0 + x.duration;
    let mut next_trickle = t0 + Duration::from_secs(1);
    let mut tmp = vec![0u8; 16 * 1024];
    while Instant::now() < deadline && conns.iter().any(|c| c.2.is_none()) {
        let trickle = Instant::now() >= next_trickle;
        if trickle {
            next_trickle += Duration::from_secs(1);
        }
        for (c, at, closed, pos) in conns.iter_mut() {
            if closed.is_some() {
                continue;
            }
            // read what the server sent (welcome, close): EOF, a reset or a close frame ends it
            let gone = loop {
                match c.s.read(&mut tmp) {
                    Ok(0) => break true,
                    Ok(k) => {
                        c.rbuf.extend_from_slice(&tmp[..k]);
                        let mut any_close = false;
                        while let Ok(Parse::Frame(h)) =
                            ws::parse_server_frame(&c.rbuf, ws::MAX_SERVER_FRAME)
                        {
                            if h.opcode == OpCode::Close {
                                any_close = true;
                            }
                            c.rbuf.drain(..h.total_len());
                        }
                        if any_close {
                            break true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            };
            if gone {
                *closed = Some(at.elapsed().as_secs_f64());
                continue;
            }
            if trickle && *pos < frame.len() {
                match c.s.write(&frame[*pos..*pos + 1]) {
                    Ok(1) => *pos += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => *closed = Some(at.elapsed().as_secs_f64()),
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut times: Vec<f64> = conns.iter().filter_map(|c| c.2).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let closed = times.len();
    let when = if times.is_empty() {
        String::new()
    } else {
        format!(
            " after {:.1}/{:.1}/{:.1} s (first/median/last)",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        )
    };
    let refused_n: u64 = refused.values().sum();
    drop(conns);
    Ok(Verdict {
        text: format!(
            "{closed}/{opened} closed by server within {:.0} s{when}{}",
            x.duration.as_secs_f64(),
            if refused_n > 0 {
                format!("; {refused_n} connect failures {refused:?}")
            } else {
                String::new()
            }
        ),
        pass: Some(opened > 0 && closed == opened),
        details: json!({"wanted": n, "opened": opened, "closed": closed, "close_secs": times, "connect_failures": refused}),
    })
}

// ---------------------------------------------------------------------------------------------

/// One shape's row.
pub struct Row {
    pub shape: String,
    pub rss_kib: Option<(u64, u64, u64)>,
    pub normal: Normal,
    pub verdict: Verdict,
    pub secs: f64,
}

fn mib(k: u64) -> f64 {
    (k as f64 / 1024.0 * 10.0).round() / 10.0
}

impl Row {
    fn json(&self) -> Value {
        let (s, p, e) = match self.rss_kib {
            Some((s, p, e)) => (json!(mib(s)), json!(mib(p)), json!(mib(e))),
            None => (Value::Null, Value::Null, Value::Null),
        };
        let r3 = |x: Option<f64>| x.map(|v| (v * 1000.0).round() / 1000.0);
        json!({
            "shape": self.shape,
            "rss_start_mib": s,
            "rss_peak_mib": p,
            "rss_end_mib": e,
            "normal_p50_ms": r3(self.normal.pct(0.5)),
            "normal_p99_ms": r3(self.normal.pct(0.99)),
            "normal_connected": self.normal.connected,
            "normal": {
                "sent": self.normal.sent,
                "echoed": self.normal.echoed,
                "rate_limited": self.normal.rate_limited,
                "max_ms": r3(self.normal.lat_ms.iter().copied().reduce(f64::max)),
                "error": self.normal.error,
            },
            "verdict": self.verdict.text,
            "pass": self.verdict.pass,
            "details": self.verdict.details,
            "secs": (self.secs * 1000.0).round() / 1000.0,
        })
    }
}

fn run_shape(x: &Ctx, shape: &str, pid: Option<u32>, settle: Duration) -> Row {
    let t0 = Instant::now();
    let start = pid.and_then(sys::sample_proc).map(|s| s.rss_kib);
    let sampler = RssSampler::start(pid, t0);
    let stop = Arc::new(AtomicBool::new(false));
    let normal = {
        let (t, stop) = (x.t.clone(), stop.clone());
        let room = x.t.room(&format!("normal-{shape}"));
        let iv = Duration::from_millis(x.a.normal_interval_ms.max(1));
        thread::spawn(move || normal_client(t, room, iv, stop))
    };
    // let the normal member settle in before the attack
    thread::sleep(Duration::from_millis(300));
    let v = match shape {
        "http-pipeline" => http_pipeline(x),
        "history-flood" => request_flood(x, "history"),
        "presence-flood" => request_flood(x, "presence"),
        "rooms-flood" => request_flood(x, "rooms"),
        "resume-backlog" => resume_backlog(x),
        "pipelined-publish" => pipelined_publish(x),
        "read-spam" => read_spam(x),
        "room-churn" => room_churn(x),
        "partial-frames" => partial_frames(x),
        other => Err(anyhow::anyhow!("unknown shape {other}")),
    };
    // the attack's sockets are closed by now (dropped inside the shape)
    stop.store(true, Ordering::Relaxed);
    let normal = normal.join().unwrap_or_default();
    thread::sleep(settle);
    let end = pid.and_then(sys::sample_proc).map(|s| s.rss_kib);
    let samples = sampler.finish();
    let rss_kib = match (start, end) {
        (Some(s), Some(e)) => {
            let peak = samples.iter().map(|x| x.1).chain([s, e]).max().unwrap_or(e);
            Some((s, peak, e))
        }
        _ => None,
    };
    Row {
        shape: shape.to_string(),
        rss_kib,
        normal,
        verdict: v.unwrap_or_else(Verdict::err),
        secs: t0.elapsed().as_secs_f64(),
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.prec$}"))
}

/// The printed table of an abuse run's rows (from summary.json's `figures.shapes`).
pub fn table(rows: &[Value], markdown: bool) -> String {
    let header = [
        "shape",
        "RSS start MiB",
        "peak MiB",
        "end MiB",
        "normal p50 ms",
        "p99 ms",
        "connected",
        "echoes",
        "verdict",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        lines.push(vec![
            r["shape"].as_str().unwrap_or("?").to_string(),
            fmt_opt(r["rss_start_mib"].as_f64(), 1),
            fmt_opt(r["rss_peak_mib"].as_f64(), 1),
            fmt_opt(r["rss_end_mib"].as_f64(), 1),
            fmt_opt(r["normal_p50_ms"].as_f64(), 2),
            fmt_opt(r["normal_p99_ms"].as_f64(), 2),
            if r["normal_connected"].as_bool() == Some(true) {
                "y".into()
            } else {
                "n".into()
            },
            match (r["normal"]["echoed"].as_u64(), r["normal"]["sent"].as_u64()) {
                (Some(e), Some(s)) => format!("{e}/{s}"),
                _ => "-".into(),
            },
            format!(
                "{}{}",
                match r["pass"].as_bool() {
                    Some(true) => "PASS: ",
                    Some(false) => "FAIL: ",
                    None => "",
                },
                r["verdict"].as_str().unwrap_or("")
            ),
        ]);
    }
    let mut out = String::new();
    if markdown {
        for (i, l) in lines.iter().enumerate() {
            let _ = writeln!(out, "| {} |", l.join(" | "));
            if i == 0 {
                let _ = writeln!(out, "|{}", " --- |".repeat(l.len()));
            }
        }
    } else {
        let n = header.len();
        let widths: Vec<usize> = (0..n)
            .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
            .collect();
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i + 1 == n {
                        c.clone()
                    } else if i == 0 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
    }
    out
}

/// Run the selected shapes one after another.
pub fn run(a: &AbuseArgs) -> anyhow::Result<Outcome> {
    sys::raise_nofile();
    let shapes: Vec<String> = a
        .shapes
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &shapes {
        anyhow::ensure!(
            SHAPES.contains(&s.as_str()),
            "unknown shape {s:?}; known: {}",
            SHAPES.join(",")
        );
    }
    anyhow::ensure!(a.duration > 0.0, "--duration must be > 0");
    let t = Arc::new(Target::from_args(a)?);
    let x = Ctx {
        t: &t,
        a,
        duration: Duration::from_secs_f64(a.duration),
        setup: Duration::from_secs_f64(a.setup_timeout.max(1.0)),
    };
    let settle = Duration::from_secs_f64(a.settle.max(0.0));
    let pid = a.common.server_pid;
    if let Some(p) = pid {
        anyhow::ensure!(
            sys::sample_proc(p).is_some(),
            "--server-pid {p}: no such process (or /proc/{p} unreadable)"
        );
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    for s in &shapes {
        if !a.common.no_progress {
            eprintln!("abuse: {s} ...");
        }
        let r = run_shape(&x, s, pid, settle);
        if !a.common.no_progress {
            eprintln!("abuse: {s}: {} ({:.1} s)", r.verdict.text, r.secs);
        }
        rows.push(r.json());
    }
    let mut text = table(&rows, false);
    if pid.is_none() {
        text.push_str("(no --server-pid: memory columns n/a)\n");
    }
    let wall = started.elapsed().as_secs_f64();
    let summary = json!({
        "scenario": "abuse",
        "target": a.common.target.name(),
        "url": a.common.url,
        "params": {
            "shapes": shapes,
            "duration": a.duration,
            "settle": a.settle,
            "setup_timeout": a.setup_timeout,
            "http_conns": a.http_conns,
            "http_requests": a.http_requests,
            "flood_messages": a.flood_messages,
            "flood_requests": a.flood_requests,
            "flood_rooms": a.flood_rooms,
            "big_body": a.big_body,
            "backlog": a.backlog,
            "pipeline": a.pipeline,
            "pipeline_body": a.pipeline_body,
            "read_spam": a.read_spam,
            "churn_ops": a.churn_ops,
            "partial_conns": a.partial_conns,
            "normal_interval_ms": a.normal_interval_ms,
        },
        "figures": { "shapes": rows },
        "run": {},
        "loadgen_saturated": false,
        "failed": Value::Null,
        "server_pid": pid,
        "server_flags": a.common.server_flags,
        "command_line": command_line(),
        "git_commit": sys::git_commit(),
        "host": sys::host_facts(),
        "started_unix_ms": sys::unix_ms().saturating_sub((wall * 1000.0) as u64),
        "wall_secs": (wall * 1000.0).round() / 1000.0,
        "loadgen_version": env!("CARGO_PKG_VERSION"),
    });
    Ok(Outcome {
        summary,
        hists: Vec::new(),
        interval_log: None,
        text,
        failed: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_bodies_have_the_asked_size_and_parse() {
        let b = big_body(15_000, 7);
        assert!((14_990..=15_010).contains(&b.len()), "{}", b.len());
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["k"], 7);
    }

    #[test]
    fn pacer_follows_the_welcome_limits() {
        let w = json!({"limits":{"rate_per_sec":10,"burst":3,"max_body_bytes":100}});
        let mut p = Pacer::from_welcome(&w);
        assert_eq!(p.max_body, 100);
        assert!(p.take().is_ok());
        assert!(p.take().is_ok());
        let d = p.take().unwrap_err();
        assert!(
            d > Duration::ZERO && d < Duration::from_millis(200),
            "{d:?}"
        );
    }

    #[test]
    fn percentiles_and_table() {
        let n = Normal {
            lat_ms: (1..=100).map(f64::from).collect(),
            connected: true,
            ..Normal::default()
        };
        assert_eq!(n.pct(0.5), Some(50.0));
        assert_eq!(n.pct(0.99), Some(99.0));
        assert_eq!(Normal::default().pct(0.5), None);
        let rows = vec![
            json!({"shape":"read-spam","rss_start_mib":null,"normal_p50_ms":1.5,"normal_connected":true,"verdict":"ok","pass":true}),
        ];
        let t = table(&rows, false);
        assert!(t.contains("read-spam"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        assert!(t.contains("PASS: ok"), "{t}");
        assert!(table(&rows, true).starts_with("| shape |"));
    }
}
