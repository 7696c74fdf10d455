//! A tiny single-threaded corechat-compatible server (welcome, JWT check, join/joined,
//! publish/ack/message, ping/pong) that batches every queued frame of a connection into one
//! write per flush. Used by the integration test and by `loadgen mock-server` to measure the
//! load generator's own ceiling; it is not a reference implementation.

use crate::jwt;
use crate::ws::{self, OpCode, Parse};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
/// Largest client frame the mock accepts.
const MAX_FRAME: usize = 1 << 24;

#[derive(Clone, Debug)]
pub struct MockOpts {
    pub listen: SocketAddr,
    /// Require `?token=` signed with this HS256 secret.
    pub secret: Option<String>,
    /// Flush queued frames at most this often (batching; 0 = after every poll).
    pub flush_ms: u64,
    /// Fan out no copy of a room's every Nth message (room seq a multiple of N), as a lossy
    /// server would: the publisher is still acked, the members see a seq gap. Tests the load
    /// generator's loss and gap accounting.
    pub drop_every: Option<u64>,
    /// Fan out each room's every Nth message twice (the same frame, so the members see its
    /// seq again), as a server replaying after a reconnect would. Tests duplicate accounting.
    pub dup_every: Option<u64>,
    /// Refuse every Kth upgrade request (the Kth, 2Kth, ... since start) with HTTP 429, as a
    /// server does past its per-IP connection cap. Tests the failure accounting.
    pub refuse_every: Option<u64>,
}

impl MockOpts {
    /// No auth, 1 ms flushes, nothing dropped or refused.
    pub fn new(listen: SocketAddr) -> MockOpts {
        MockOpts {
            listen,
            secret: None,
            flush_ms: 1,
            drop_every: None,
            dup_every: None,
            refuse_every: None,
        }
    }
}

struct MConn {
    stream: TcpStream,
    open: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    user: String,
    rooms: Vec<usize>,
    dirty: bool,
    closed: bool,
}

struct Room {
    name: String,
    seq: u64,
    members: Vec<usize>,
}

struct Server {
    opts: MockOpts,
    conns: slab_lite::Slab<MConn>,
    rooms: Vec<Room>,
    room_ix: HashMap<String, usize>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    msg: Vec<u8>,
    next_session: u64,
    /// Upgrade requests seen (for `refuse_every`).
    upgrades: u64,
}

/// A minimal slab (index reuse) to avoid a dependency.
mod slab_lite {
    pub struct Slab<T> {
        items: Vec<Option<T>>,
        free: Vec<usize>,
    }
    impl<T> Slab<T> {
        pub fn new() -> Self {
            Slab {
                items: Vec::new(),
                free: Vec::new(),
            }
        }
        pub fn next_key(&self) -> usize {
            self.free.last().copied().unwrap_or(self.items.len())
        }
        pub fn insert(&mut self, t: T) -> usize {
            if let Some(i) = self.free.pop() {
                self.items[i] = Some(t);
                i
            } else {
                self.items.push(Some(t));
                self.items.len() - 1
            }
        }
        pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
            self.items.get_mut(i).and_then(|x| x.as_mut())
        }
        pub fn remove(&mut self, i: usize) -> Option<T> {
            let t = self.items.get_mut(i)?.take();
            if t.is_some() {
                self.free.push(i);
            }
            t
        }
    }
}

/// Append one server (unmasked) text frame.
fn text(out: &mut Vec<u8>, payload: &[u8]) {
    ws::encode_frame(out, OpCode::Text, payload, None);
}

/// Answer an upgrade request with an HTTP error and close.
fn refuse(c: &mut MConn, status: &[u8], body: &[u8]) {
    c.out.extend_from_slice(b"HTTP/1.1 ");
    c.out.extend_from_slice(status);
    let _ = write!(
        c.out,
        "\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    c.out.extend_from_slice(body);
    c.closed = true;
    let _ = c.stream.write(&c.out);
}

fn json_str<'a>(p: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let k = format!("\"{key}\":\"");
    let i = memchr::memmem::find(p, k.as_bytes())? + k.len();
    let e = memchr::memchr(b'"', &p[i..])?;
    Some(&p[i..i + e])
}

fn json_num(p: &[u8], key: &str) -> Option<u64> {
    let k = format!("\"{key}\":");
    let i = memchr::memmem::find(p, k.as_bytes())? + k.len();
    crate::proto::parse_u64(&p[i..]).map(|(v, _)| v)
}

fn now_ms() -> u64 {
    crate::sys::unix_ms()
}

impl Server {
    fn accept(&mut self, poll: &Poll, l: &TcpListener) {
        loop {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nodelay(true);
                    let idx = self.conns.next_key();
                    if poll
                        .registry()
                        .register(&mut s, Token(idx), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let got = self.conns.insert(MConn {
                        stream: s,
                        open: false,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        user: String::new(),
                        rooms: Vec::new(),
                        dirty: false,
                        closed: false,
                    });
                    debug_assert_eq!(got, idx);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }

    fn mark(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    fn readable(&mut self, idx: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(64 * 1024, 0);
        while let Some(c) = self.conns.get_mut(idx) {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.closed = true;
                    break;
                }
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.closed = true;
                    break;
                }
            }
        }
        self.scratch = buf;
        self.process(idx);
        if self.conns.get_mut(idx).is_some_and(|c| c.closed) {
            self.drop_conn(idx);
        }
    }

    fn process(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let mut data = std::mem::take(&mut c.inbuf);
        let mut pos = 0;
        if !c.open {
            let Some(end) = memchr::memmem::find(&data, b"\r\n\r\n") else {
                c.inbuf = data;
                return;
            };
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            pos = end + 4;
            self.upgrades += 1;
            if self
                .opts
                .refuse_every
                .is_some_and(|k| self.upgrades.is_multiple_of(k))
            {
                refuse(
                    c,
                    b"429 Too Many Requests",
                    br#"{"error":"too many conns"}"#,
                );
                return;
            }
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let token = path
                .split_once("token=")
                .map(|(_, t)| t.split('&').next().unwrap_or(""))
                .unwrap_or("");
            let user = match &self.opts.secret {
                None => Some(format!("anon-{}", self.next_session)),
                Some(sec) => jwt::verify(sec.as_bytes(), token).and_then(|claims| {
                    json_str(claims.as_bytes(), "sub")
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                }),
            };
            let Some(user) = user else {
                refuse(c, b"401 Unauthorized", br#"{"error":"invalid token"}"#);
                return;
            };
            self.next_session += 1;
            c.open = true;
            c.out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: mock\r\n\r\n");
            let welcome = format!(
                r#"{{"type":"welcome","user":"{user}","name":"{user}","session":"s{}","node":"mock","heartbeat_ms":30000,"limits":{{"max_frame_bytes":65536,"max_body_bytes":16384,"rate_per_sec":1000000,"burst":1000000}}}}"#,
                self.next_session
            );
            text(&mut c.out, welcome.as_bytes());
            c.user = user;
            self.mark(idx);
        }
        while pos < data.len() {
            let h = match ws::parse_client_frame(&mut data[pos..], MAX_FRAME) {
                Ok(Parse::Frame(h)) => h,
                Ok(Parse::Incomplete { .. }) => break,
                Err(_) => {
                    if let Some(c) = self.conns.get_mut(idx) {
                        c.closed = true;
                    }
                    break;
                }
            };
            let payload = &data[pos + h.payload_start..pos + h.total_len()];
            pos += h.total_len();
            match h.opcode {
                OpCode::Text => self.on_text(idx, payload),
                OpCode::Ping => {
                    if let Some(c) = self.conns.get_mut(idx) {
                        ws::encode_frame(&mut c.out, OpCode::Pong, payload, None);
                    }
                    self.mark(idx);
                }
                OpCode::Close => {
                    if let Some(c) = self.conns.get_mut(idx) {
                        c.closed = true;
                    }
                    break;
                }
                _ => {}
            }
        }
        data.drain(..pos);
        if let Some(c) = self.conns.get_mut(idx) {
            c.inbuf = data;
        }
    }

    fn on_text(&mut self, idx: usize, p: &[u8]) {
        let ty = json_str(p, "type").unwrap_or(b"");
        let id = json_num(p, "id");
        let id_s = id.map_or(String::new(), |i| format!(",\"id\":{i}"));
        match ty {
            b"join" => {
                let room = String::from_utf8_lossy(json_str(p, "room").unwrap_or(b"")).into_owned();
                let ri = match self.room_ix.get(&room) {
                    Some(&i) => i,
                    None => {
                        self.rooms.push(Room {
                            name: room.clone(),
                            seq: 0,
                            members: Vec::new(),
                        });
                        self.room_ix.insert(room.clone(), self.rooms.len() - 1);
                        self.rooms.len() - 1
                    }
                };
                let r = &mut self.rooms[ri];
                if !r.members.contains(&idx) {
                    r.members.push(idx);
                }
                let reply = format!(
                    r#"{{"type":"joined"{id_s},"room":"{room}","seq":{},"epoch":"mock","members":{},"read":0,"recovered":true}}"#,
                    r.seq,
                    r.members.len()
                );
                if let Some(c) = self.conns.get_mut(idx) {
                    c.rooms.push(ri);
                    text(&mut c.out, reply.as_bytes());
                }
                self.mark(idx);
            }
            b"publish" => {
                let room = json_str(p, "room").unwrap_or(b"");
                let Some(&ri) = self.room_ix.get(std::str::from_utf8(room).unwrap_or("")) else {
                    return;
                };
                let body = memchr::memmem::find(p, b"\"body\":")
                    .map(|i| &p[i + 7..p.len() - 1])
                    .unwrap_or(b"null");
                let ts = now_ms();
                let user = self
                    .conns
                    .get_mut(idx)
                    .map(|c| c.user.clone())
                    .unwrap_or_default();
                let r = &mut self.rooms[ri];
                r.seq += 1;
                let seq = r.seq;
                let mut m = std::mem::take(&mut self.msg);
                m.clear();
                let _ = write!(
                    m,
                    r#"{{"type":"message","room":"{}","seq":{seq},"from":"{user}","name":"{user}","ts":{ts},"body":"#,
                    r.name
                );
                m.extend_from_slice(body);
                m.push(b'}');
                let mut f = Vec::with_capacity(m.len() + 4);
                text(&mut f, &m);
                let members = std::mem::take(&mut self.rooms[ri].members);
                let dropped = self.opts.drop_every.is_some_and(|n| seq.is_multiple_of(n));
                let twice = self.opts.dup_every.is_some_and(|n| seq.is_multiple_of(n));
                for &mi in members.iter().filter(|_| !dropped) {
                    if let Some(c) = self.conns.get_mut(mi) {
                        c.out.extend_from_slice(&f);
                        if twice {
                            c.out.extend_from_slice(&f);
                        }
                    }
                    self.mark(mi);
                }
                let name = self.rooms[ri].name.clone();
                self.rooms[ri].members = members;
                let ack =
                    format!(r#"{{"type":"ack"{id_s},"room":"{name}","seq":{seq},"ts":{ts}}}"#);
                if let Some(c) = self.conns.get_mut(idx) {
                    text(&mut c.out, ack.as_bytes());
                }
                self.mark(idx);
                self.msg = m;
            }
            b"ping" => {
                let reply = format!(r#"{{"type":"pong"{id_s}}}"#);
                if let Some(c) = self.conns.get_mut(idx) {
                    text(&mut c.out, reply.as_bytes());
                }
                self.mark(idx);
            }
            _ => {
                let reply =
                    format!(r#"{{"type":"error"{id_s},"code":"unknown_type","message":"mock"}}"#);
                if let Some(c) = self.conns.get_mut(idx) {
                    text(&mut c.out, reply.as_bytes());
                }
                self.mark(idx);
            }
        }
    }

    fn flush_one(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let mut off = 0;
        while off < c.out.len() {
            match c.stream.write(&c.out[off..]) {
                Ok(0) => break,
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.closed = true;
                    break;
                }
            }
        }
        c.out.drain(..off);
    }

    fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            if let Some(c) = self.conns.get_mut(i) {
                c.dirty = false;
            }
            self.flush_one(i);
            if self.conns.get_mut(i).is_some_and(|c| c.closed) {
                self.drop_conn(i);
            }
        }
        let mut d = dirty;
        d.clear();
        if self.dirty.is_empty() {
            self.dirty = d;
        }
    }

    fn drop_conn(&mut self, idx: usize) {
        if let Some(c) = self.conns.remove(idx) {
            for ri in c.rooms {
                self.rooms[ri].members.retain(|&m| m != idx);
            }
        }
    }
}

/// Run the mock server until `stop` is set. Sends the bound address on `ready`.
pub fn serve(
    opts: MockOpts,
    stop: Arc<AtomicBool>,
    ready: Option<std::sync::mpsc::Sender<SocketAddr>>,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut l = TcpListener::bind(opts.listen)?;
    poll.registry()
        .register(&mut l, LISTENER, Interest::READABLE)?;
    if let Some(r) = ready {
        let _ = r.send(l.local_addr()?);
    }
    let flush_every = Duration::from_millis(opts.flush_ms);
    let mut srv = Server {
        opts,
        conns: slab_lite::Slab::new(),
        rooms: Vec::new(),
        room_ix: HashMap::new(),
        dirty: Vec::new(),
        scratch: Vec::new(),
        msg: Vec::new(),
        next_session: 0,
        upgrades: 0,
    };
    let mut events = Events::with_capacity(1024);
    let mut last_flush = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let timeout = if srv.dirty.is_empty() {
            Duration::from_millis(50)
        } else {
            flush_every.saturating_sub(last_flush.elapsed())
        };
        poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                srv.accept(&poll, &l);
                continue;
            }
            let idx = ev.token().0;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                srv.readable(idx);
            }
            if ev.is_writable() && srv.conns.get_mut(idx).is_some_and(|c| !c.out.is_empty()) {
                srv.mark(idx);
            }
        }
        if last_flush.elapsed() >= flush_every {
            srv.flush();
            last_flush = Instant::now();
        }
    }
    Ok(())
}
