//! The subscriber thread: one pub/sub connection, the channels of rooms and
//! users with local members, reconnect with backoff and resubscribe.
//!
//! It reads with a short timeout and takes subscribe/unsubscribe requests
//! between reads (at most `POLL` late), so it needs no waker of its own.

use super::resp::{self, Resp};
use super::{BrokerError, BrokerEvent, ChannelFrame, ChannelKind, Incoming, Shared, SubCtl};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait between two looks at the control queue.
const POLL: Duration = Duration::from_millis(5);
/// A PING is sent when nothing arrived for this long...
const PING_AFTER: Duration = Duration::from_secs(1);
/// Channels per SUBSCRIBE command when resubscribing.
const CHUNK: usize = 256;

/// Where the subscriber connects (taken from the `redis` crate's URL parse).
pub(crate) struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
}

impl Target {
    pub(crate) fn from_client(client: &redis::Client) -> Result<Target, BrokerError> {
        let info = client.get_connection_info();
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            _ => {
                return Err(BrokerError::Invalid(
                    "only redis:// TCP URLs are supported".into(),
                ))
            }
        };
        let s = info.redis_settings();
        Ok(Target {
            host,
            port,
            username: s.username().map(str::to_string),
            password: s.password().map(str::to_string),
        })
    }

    fn addr(&self) -> std::io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))
    }
}

struct Sub {
    shared: Arc<Shared>,
    target: Target,
    /// Channel name -> (kind, room or user).
    wanted: HashMap<String, (ChannelKind, String)>,
    /// Subscribed and confirmed on the current connection.
    live: HashSet<String>,
    /// Confirmations that come after a reconnect (`resubscribed`).
    resubscribing: HashSet<String>,
    had_connection: bool,
}

pub(crate) fn run(shared: Arc<Shared>, target: Target, ctl: Receiver<SubCtl>) {
    let mut s = Sub {
        shared,
        target,
        wanted: HashMap::new(),
        live: HashSet::new(),
        resubscribing: HashSet::new(),
        had_connection: false,
    };
    let mut backoff = s.shared.cfg.backoff_min;
    while !s.shared.stop.load(Ordering::Acquire) {
        match s.connect() {
            Ok(stream) => {
                backoff = s.shared.cfg.backoff_min;
                s.shared.set_link(false, true, "");
                let e = s.serve(stream, &ctl);
                s.live.clear();
                if s.shared.stop.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!("broker: subscriber link lost: {e}");
                s.shared
                    .set_link(false, false, &format!("redis pub/sub: {e}"));
            }
            Err(e) => {
                tracing::debug!("broker: subscriber connect failed: {e}");
                s.shared
                    .set_link(false, false, &format!("redis pub/sub: {e}"));
            }
        }
        // Wait before the next attempt (no hot loop against a Redis that
        // keeps closing us), still taking subscription changes.
        let until = Instant::now() + backoff;
        backoff = (backoff * 2).min(s.shared.cfg.backoff_max);
        while !s.shared.stop.load(Ordering::Acquire) {
            match ctl.recv_deadline(until.min(Instant::now() + Duration::from_millis(50))) {
                Ok(c) => {
                    s.change(c);
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() >= until => break,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

fn channel_name(prefix: &str, kind: ChannelKind, name: &str) -> String {
    match kind {
        ChannelKind::Room => format!("{prefix}room:{name}"),
        ChannelKind::User => format!("{prefix}user:{name}"),
    }
}

impl Sub {
    /// Records a change of the wanted set; returns the command to send.
    fn change(&mut self, c: SubCtl) -> Option<(bool, String)> {
        match c {
            SubCtl::Subscribe(kind, name) => {
                let ch = channel_name(&self.shared.cfg.prefix, kind, &name);
                self.wanted
                    .insert(ch.clone(), (kind, name))
                    .is_none()
                    .then_some((true, ch))
            }
            SubCtl::Unsubscribe(kind, name) => {
                let ch = channel_name(&self.shared.cfg.prefix, kind, &name);
                self.wanted.remove(&ch).map(|_| (false, ch))
            }
        }
    }

    fn connect(&mut self) -> std::io::Result<TcpStream> {
        let t = self.shared.cfg.io_timeout;
        let mut stream = TcpStream::connect_timeout(&self.target.addr()?, t)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(t))?;
        if let Some(pw) = &self.target.password {
            let mut out = Vec::new();
            match &self.target.username {
                Some(u) => resp::encode(&mut out, &[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => resp::encode(&mut out, &[b"AUTH", pw.as_bytes()]),
            }
            stream.write_all(&out)?;
            stream.set_read_timeout(Some(t))?;
            let mut buf = Vec::new();
            let reply = read_one(&mut stream, &mut buf)?;
            if let Resp::Error(e) = reply {
                return Err(std::io::Error::other(format!("AUTH: {e}")));
            }
        }
        // Named, so an operator (or a test) can tell the links apart in
        // `CLIENT LIST`; up only once Redis answers (not while loading).
        let name = format!("corechat-sub-{}", self.shared.cfg.node_id);
        let mut out = Vec::new();
        resp::encode(&mut out, &[b"CLIENT", b"SETNAME", name.as_bytes()]);
        resp::encode(&mut out, &[b"PING"]);
        stream.write_all(&out)?;
        stream.set_read_timeout(Some(t))?;
        let mut buf = Vec::new();
        for what in ["CLIENT SETNAME", "PING"] {
            if let Resp::Error(e) = read_one(&mut stream, &mut buf)? {
                return Err(std::io::Error::other(format!("{what}: {e}")));
            }
        }
        stream.set_read_timeout(Some(POLL))?;
        Ok(stream)
    }

    /// Runs one connection until it fails (or the broker stops).
    fn serve(&mut self, mut stream: TcpStream, ctl: &Receiver<SubCtl>) -> std::io::Error {
        self.resubscribing = if self.had_connection {
            self.wanted.keys().cloned().collect()
        } else {
            HashSet::new()
        };
        self.had_connection = true;
        let all: Vec<String> = self.wanted.keys().cloned().collect();
        let mut out = Vec::new();
        for chunk in all.chunks(CHUNK) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(chunk.iter().map(|c| c.as_bytes()));
            resp::encode(&mut out, &args);
        }
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut last_rx = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return std::io::Error::other("stopped");
            }
            while let Ok(c) = ctl.try_recv() {
                if let Some((sub, ch)) = self.change(c) {
                    let verb: &[u8] = if sub { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
                    if !sub {
                        self.live.remove(&ch);
                        self.resubscribing.remove(&ch);
                    }
                    resp::encode(&mut out, &[verb, ch.as_bytes()]);
                }
            }
            let now = Instant::now();
            if ping_sent.is_none() && now.duration_since(last_rx) >= PING_AFTER {
                resp::encode(&mut out, &[b"PING"]);
                ping_sent = Some(now);
            }
            if ping_sent.is_some_and(|t| now.duration_since(t) >= self.shared.cfg.io_timeout) {
                return std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to PING");
            }
            if !out.is_empty() {
                if let Err(e) = stream.write_all(&out) {
                    return e;
                }
                out.clear();
            }
            match stream.read(&mut chunk) {
                Ok(0) => return std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    last_rx = Instant::now();
                    ping_sent = None;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return e,
            }
            let mut pos = 0;
            let mut confirmed = Vec::new();
            loop {
                match resp::parse(&buf[pos..]) {
                    Ok(Some((v, used))) => {
                        pos += used;
                        if let Err(e) = self.on_reply(v, &mut confirmed) {
                            return std::io::Error::other(format!("redis: {e}"));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return std::io::Error::other("bad reply from redis"),
                }
            }
            buf.drain(..pos);
            self.report_confirmed(confirmed);
        }
    }

    fn on_reply(&mut self, v: Resp, confirmed: &mut Vec<String>) -> Result<(), String> {
        let items = match v {
            Resp::Array(Some(items)) => items,
            // A refused SUBSCRIBE would leave a channel silently unheard.
            Resp::Error(e) => return Err(e),
            _ => return Ok(()),
        };
        match items.first().and_then(Resp::as_str) {
            Some("message") => {
                let (Some(ch), Some(Resp::Bulk(Some(payload)))) =
                    (items.get(1).and_then(Resp::as_str), items.get(2))
                else {
                    return Ok(());
                };
                let Some(&(kind, ref target)) = self.wanted.get(ch) else {
                    return Ok(()); // unsubscribed meanwhile
                };
                if let Some(f) = parse_payload(kind, target, payload) {
                    (self.shared.sink)(Incoming::Frame(f));
                }
            }
            Some("subscribe") => {
                if let Some(ch) = items.get(1).and_then(Resp::as_str) {
                    if self.wanted.contains_key(ch) && self.live.insert(ch.to_string()) {
                        confirmed.push(ch.to_string());
                    }
                }
            }
            _ => {} // unsubscribe, pong
        }
        Ok(())
    }

    /// New live subscriptions: the chat catches up from the stream.
    fn report_confirmed(&mut self, confirmed: Vec<String>) {
        if confirmed.is_empty() {
            return;
        }
        let mut fresh = (Vec::new(), Vec::new());
        let mut again = (Vec::new(), Vec::new());
        for ch in confirmed {
            let Some((kind, name)) = self.wanted.get(&ch) else {
                continue;
            };
            let set = if self.resubscribing.remove(&ch) {
                &mut again
            } else {
                &mut fresh
            };
            match kind {
                ChannelKind::Room => set.0.push(name.clone()),
                ChannelKind::User => set.1.push(name.clone()),
            }
        }
        for ((rooms, users), resubscribed) in [(again, true), (fresh, false)] {
            if !rooms.is_empty() || !users.is_empty() {
                self.shared.emit(BrokerEvent::CatchUp {
                    rooms,
                    users,
                    resubscribed,
                });
            }
        }
    }
}

/// `<seq> <epoch> <origin> <except> <room>\n<json>`
pub(crate) fn parse_payload(kind: ChannelKind, target: &str, p: &Bytes) -> Option<ChannelFrame> {
    let nl = p.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&p[..nl]).ok()?;
    let mut f = head.split(' ');
    let seq = f.next()?.parse().ok()?;
    let opt = |s: &str| (s != "-").then(|| s.to_string());
    let epoch = opt(f.next()?);
    let origin = f.next()?.to_string();
    let except_user = opt(f.next()?);
    let room = f.next()?.to_string();
    Some(ChannelFrame {
        kind,
        target: target.to_string(),
        room,
        seq,
        epoch,
        origin,
        except_user,
        json: p.slice(nl + 1..),
    })
}

/// Reads one complete reply (blocking, with the stream's timeout).
fn read_one(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Resp> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((v, used)) =
            resp::parse(buf).map_err(|_| std::io::Error::other("bad reply from redis"))?
        {
            buf.drain(..used);
            return Ok(v);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_header() {
        let p = Bytes::from_static(b"42 9f1c a - lobby\n{\"x\":\n1}");
        let f = parse_payload(ChannelKind::Room, "lobby", &p).unwrap();
        assert_eq!(f.seq, 42);
        assert_eq!(f.epoch.as_deref(), Some("9f1c"));
        assert_eq!(f.origin, "a");
        assert_eq!(f.except_user, None);
        assert_eq!(f.room, "lobby");
        assert_eq!(&f.json[..], b"{\"x\":\n1}");
        let p = Bytes::from_static(b"0 - n bob dm:alice:bob\n{}");
        let f = parse_payload(ChannelKind::User, "alice", &p).unwrap();
        assert_eq!((f.seq, f.except_user.as_deref()), (0, Some("bob")));
        assert!(parse_payload(ChannelKind::Room, "r", &Bytes::from_static(b"x")).is_none());
    }
}
