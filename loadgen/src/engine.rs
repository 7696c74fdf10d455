//! The load generator's event loops: one `mio` poll per worker thread (pinned to a core), each
//! owning its share of the connections (connection `i` belongs to thread `i % threads`).
//!
//! Hot path: one large per-thread read buffer; every readable event reads as much as the socket
//! holds, parses every complete frame in place, and keeps only a trailing partial frame in the
//! connection. A room message costs an inline header decode, a one-pass parse at cached field
//! positions ([`crate::msgfast`]), a seq check and one counter increment ([`FastHist`]); nothing
//! is allocated per frame.
//!
//! Coordination with the driver thread is through atomics in [`Shared`] (phase, per-thread
//! publish rate, current measurement window, collect/tick requests) and a channel of
//! [`Report`]s going back.

use crate::jwt::Minter;
use crate::pacer::{self, Timer};
use crate::proto::{self, Classifier, In, Stage, Target};
use crate::seq::{SeqCheck, SeqStats, SeqTracker};
use crate::stats::{new_hist, record_ns, FastHist, Hist};
use crate::sys::{mono_ns, thread_cpu_ns, unix_ms};
use crate::tls::{self, TlsClient};
use crate::ws::{self, OpCode, Parse, Upgrade};
use base64::Engine as _;
use corechat_wire::deflate::Inflater;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const PHASE_CONNECT: u8 = 0;
pub const PHASE_RUN: u8 = 1;
pub const PHASE_STOP: u8 = 2;

/// Measurement windows are numbered 1..MAX_WINDOWS; 0 means "not measured" (warm-up).
pub const MAX_WINDOWS: usize = 64;

/// Largest message a compressed server frame may expand to.
const MAX_INFLATED: usize = 16 << 20;

/// Publishing falls behind by more than this many messages: skip them instead of bursting.
const MAX_BACKLOG: u64 = 10_000;

/// `ThreadShared::rate_milli` value for "no rate cap" (acks: closed loop, bounded by the window).
pub const RATE_UNLIMITED: u64 = u64::MAX;

/// The poll token of the pacing timer (connections use their slot index).
const TIMER: Token = Token(usize::MAX - 1);

#[derive(Clone)]
pub enum Auth {
    None,
    Token(String),
    Secret { minter: Minter, ttl_secs: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Publish to rooms: connection `r` publishes for room `r` (`all_publish` = every
    /// connection publishes for its own room).
    Traffic { all_publish: bool },
    /// Round trips: `ping` requests (or WebSocket pings) from every connection.
    Ping,
    /// Round trips through the store: every connection publishes to its room and times each
    /// `publish` until its `ack`, with at most `Config::window` publishes in flight.
    Acks,
    /// Connect and join only.
    Idle,
}

#[derive(Clone)]
pub struct Config {
    pub target: Target,
    pub addr: SocketAddr,
    /// wss://: every connection speaks TLS.
    pub tls: Option<TlsClient>,
    pub host: String,
    pub path: String,
    pub auth: Auth,
    pub conns: usize,
    pub rooms: usize,
    pub threads: usize,
    pub source_ips: Vec<IpAddr>,
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    pub mode: Mode,
    pub body: usize,
    pub read_buf: usize,
    pub pin: bool,
    /// Use WebSocket ping/pong control frames for RTT even if the target has JSON ping.
    pub ws_ping: bool,
    /// Acks: publishes in flight per connection.
    pub window: usize,
    /// Offer permessage-deflate and inflate compressed server frames.
    pub deflate: bool,
    /// Rooms in consecutive blocks (connection i joins room i / ceil(C/R)): a room's
    /// members connect one after another, as after a reconnect storm. Default: i mod R.
    pub room_blocks: bool,
    /// corechat: joins ask for batched presence (`presence_diff`).
    pub presence_batched: bool,
}

impl Config {
    /// Room of connection `i`.
    pub fn room_of(&self, i: usize) -> u32 {
        let rooms = self.rooms.max(1);
        if self.room_blocks {
            (i / self.block()).min(rooms - 1) as u32
        } else {
            (i % rooms) as u32
        }
    }
    /// Connections per room with `room_blocks`.
    fn block(&self) -> usize {
        self.conns.div_ceil(self.rooms.max(1)).max(1)
    }
    pub fn is_publisher(&self, i: usize) -> bool {
        match self.mode {
            Mode::Traffic { all_publish: true } | Mode::Ping | Mode::Acks => true,
            Mode::Traffic { all_publish: false } if self.room_blocks => {
                i.is_multiple_of(self.block())
            }
            Mode::Traffic { all_publish: false } => i < self.rooms,
            Mode::Idle => false,
        }
    }
}

/// Per-thread live counters, readable by the driver at any time.
#[repr(align(128))]
pub struct ThreadShared {
    pub opened: AtomicU64,
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    pub disconnected: AtomicU64,
    pub deliveries: AtomicU64,
    pub published: AtomicU64,
    pub cpu_ns: AtomicU64,
    /// Publish rate for this thread in milli-messages per second; applied when `rate_gen` changes.
    pub rate_milli: AtomicU64,
    pub rate_gen: AtomicU64,
    pub expected: [AtomicU64; MAX_WINDOWS],
    pub received: [AtomicU64; MAX_WINDOWS],
}

impl Default for ThreadShared {
    fn default() -> Self {
        ThreadShared {
            opened: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            published: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            rate_milli: AtomicU64::new(0),
            rate_gen: AtomicU64::new(0),
            expected: std::array::from_fn(|_| AtomicU64::new(0)),
            received: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

pub struct Shared {
    pub phase: AtomicU8,
    pub window: AtomicU32,
    pub collect_upto: AtomicU32,
    pub tick: AtomicU64,
    pub members: OnceLock<Vec<u32>>,
    pub threads: Vec<ThreadShared>,
}

impl Shared {
    pub fn new(threads: usize) -> Shared {
        Shared {
            phase: AtomicU8::new(PHASE_CONNECT),
            window: AtomicU32::new(0),
            collect_upto: AtomicU32::new(0),
            tick: AtomicU64::new(0),
            members: OnceLock::new(),
            threads: (0..threads).map(|_| ThreadShared::default()).collect(),
        }
    }

    pub fn sum(&self, f: impl Fn(&ThreadShared) -> &AtomicU64) -> u64 {
        self.threads.iter().map(|t| f(t).load(Relaxed)).sum()
    }

    /// Set every thread's share of a total publish rate (msg/s), given each thread's number of
    /// publishing connections.
    pub fn set_rate(&self, total: f64, publishers: &[usize]) {
        let all: usize = publishers.iter().sum();
        for (t, ts) in self.threads.iter().enumerate() {
            let r = if all == 0 {
                0.0
            } else {
                total * publishers[t] as f64 / all as f64
            };
            let milli = if r.is_infinite() && publishers[t] > 0 {
                RATE_UNLIMITED
            } else {
                (r * 1000.0) as u64
            };
            ts.rate_milli.store(milli, Relaxed);
            ts.rate_gen.fetch_add(1, Release);
        }
    }
}

pub struct ConnectReport {
    pub thread: usize,
    pub per_room: Vec<u32>,
    pub publishers: usize,
    pub ready: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub hs_total: Hist,
    pub hs_tcp: Hist,
    pub hs_upgrade: Hist,
    pub first_start_ns: u64,
    pub last_ready_ns: u64,
    /// This thread's CPU time when it finished connecting (ns).
    pub cpu_ns: u64,
}

pub struct WinStats {
    pub hist: Hist,
    pub expected: u64,
    pub received: u64,
    pub published: u64,
    /// Acks: publishes of this window answered with an error (not counted in `expected`).
    pub errors: u64,
    pub seq: SeqStats,
    /// Publish pacing error (send time - due time), µs.
    pub pacing: Hist,
    collected: bool,
}

impl WinStats {
    pub fn new() -> WinStats {
        WinStats {
            hist: new_hist(),
            expected: 0,
            received: 0,
            published: 0,
            errors: 0,
            seq: SeqStats::default(),
            pacing: new_hist(),
            collected: false,
        }
    }
    pub fn merge(&mut self, o: &WinStats) {
        let _ = self.hist.add(&o.hist);
        self.expected += o.expected;
        self.received += o.received;
        self.published += o.published;
        self.errors += o.errors;
        self.seq.merge(&o.seq);
        let _ = self.pacing.add(&o.pacing);
    }
}

impl Default for WinStats {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
pub struct FinalReport {
    pub thread: usize,
    pub deliveries: u64,
    pub published: u64,
    /// Traffic: deliveries owed for every publish of the run (its room's members), in a
    /// window or not, so `expected_deliveries - deliveries` is the run's loss.
    pub expected_deliveries: u64,
    pub acks: u64,
    pub pongs: u64,
    /// Acks: room messages received by the publishers (their own and their room mates').
    pub room_messages: u64,
    /// Acks: acks and errors whose id matched no publish in flight on their connection.
    pub unmatched: u64,
    /// Deliveries of a window that arrived after it had been collected.
    pub late: u64,
    /// Messages whose body carried no send time.
    pub untimed: u64,
    pub publish_skipped: u64,
    pub seq_other: SeqStats,
    pub errors: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
    pub other_frames: u64,
    pub cpu_ns: u64,
    /// Publish pacing error over the whole run (warm-up included), µs.
    pub pacing: Option<Hist>,
}

pub enum Report {
    Connected(Box<ConnectReport>),
    /// Latencies recorded since the previous tick, for one window (0 = outside windows).
    Tick {
        thread: usize,
        tick: u64,
        window: u32,
        hist: Box<Hist>,
    },
    Window {
        thread: usize,
        window: u32,
        stats: Box<WinStats>,
    },
    Final(Box<FinalReport>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    New,
    Connecting,
    Upgrading,
    Welcome,
    EioOpen,
    SioConnect,
    Joining,
    Ready,
    Closed,
}

struct Conn {
    stream: Option<TcpStream>,
    /// wss://: the TLS session over `stream` (None on the plain path).
    tls: Option<Box<rustls::ClientConnection>>,
    st: St,
    room: u32,
    publisher: bool,
    seq: SeqTracker,
    /// Cached offset of the seq value in this connection's message frames.
    seq_hint: u16,
    t_start: u64,
    t_tcp: u64,
    t_up: u64,
    /// Bytes of an incomplete frame left over from the last read.
    pending: Vec<u8>,
    /// Bytes not yet accepted by the socket.
    out: Vec<u8>,
    /// Reassembly of a fragmented message (and whether it is compressed).
    frag: Option<Vec<u8>>,
    frag_compressed: bool,
    /// The server accepted permessage-deflate.
    deflate: bool,
    /// Acks: publishes awaiting their ack (id, send time ns, window), oldest first.
    inflight: VecDeque<(u64, u64, u32)>,
}

type Reason = Cow<'static, str>;

pub struct Worker {
    id: usize,
    cfg: Arc<Config>,
    sh: Arc<Shared>,
    tx: Sender<Report>,
    poll: Poll,
    cls: Classifier,
    t_hint: u32,
    conns: Vec<Conn>,
    rbuf: Vec<u8>,
    pbuf: Vec<u8>,
    fbuf: Vec<u8>,
    /// Decoder of compressed server frames (no context takeover: reset per message) and
    /// the message it expands.
    inflater: Inflater,
    zbuf: Vec<u8>,
    rng: u64,
    now: u64,
    iat: u64,
    // connect phase
    next_open: usize,
    in_flight: usize,
    in_flight_q: VecDeque<u32>,
    max_in_flight: usize,
    connect_reported: bool,
    ready: u64,
    /// Connections that timed out before joining (`give_up_if_nothing_answers`).
    timed_out: u64,
    failed: u64,
    per_room: Vec<u32>,
    failures: BTreeMap<String, u64>,
    hs_total: Hist,
    hs_tcp: Hist,
    hs_upgrade: Hist,
    first_start_ns: u64,
    last_ready_ns: u64,
    // run
    members: Option<Vec<u32>>,
    publishers: Vec<u32>,
    rr: usize,
    rate: f64,
    rate_gen: u64,
    rate_epoch: u64,
    rate_sent: u64,
    next_id: u64,
    cur_window: u32,
    max_window: u32,
    windows: Vec<WinStats>,
    collected_upto: u32,
    tick: u64,
    /// Latencies since the last tick, per window (each delivery is recorded once); kept
    /// allocated across ticks, dropped when the window is collected.
    tick_hists: Vec<Option<Box<FastHist>>>,
    ping_ring: Vec<(u64, u64, u32)>,
    /// Acks, no rate cap: connections that got a reply and may have room in their window.
    refill: Vec<u32>,
    last_cpu_sample: u64,
    /// Due time of the next paced publish (CLOCK_MONOTONIC ns); `u64::MAX` when not pacing.
    next_due: u64,
    /// `next_due` is on the timer's schedule (else, a retry: the poll timeout wakes for it).
    due_on_tick: bool,
    /// Nanoseconds between two paced publishes (`1e9 / rate`, rounded).
    interval_ns: u64,
    /// Ticks on the publish schedule (None if timerfd is unavailable: then the poll timeout).
    timer: Option<Timer>,
    fin: FinalReport,
}

/// Start worker `id` on its own thread.
pub fn spawn(
    id: usize,
    cfg: Arc<Config>,
    sh: Arc<Shared>,
    tx: Sender<Report>,
    core: Option<core_affinity::CoreId>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("loadgen-{id}"))
        .spawn(move || {
            if let Some(c) = core {
                core_affinity::set_for_current(c);
            }
            let w = Worker::new(id, cfg, sh, tx).expect("create worker poll");
            w.run();
        })
        .expect("spawn worker thread")
}

/// Write as much as the socket takes; returns bytes written and a fatal error if any.
fn write_some(s: &mut TcpStream, data: &[u8]) -> (usize, Option<Reason>) {
    let mut off = 0;
    while off < data.len() {
        match s.write(&data[off..]) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (off, Some(io_reason(&e))),
        }
    }
    (off, None)
}

/// `write_some` through TLS: plaintext rustls took (its buffer is bounded).
fn tls_write_some(
    tls: &mut rustls::ClientConnection,
    s: &mut TcpStream,
    data: &[u8],
) -> (usize, Option<Reason>) {
    if let Err(e) = tls::flush(tls, s) {
        return (0, Some(io_reason(&e)));
    }
    let mut off = 0;
    while off < data.len() {
        match tls::write(tls, s, &data[off..]) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return (off, Some(io_reason(&e))),
        }
        if tls.wants_write() {
            break; // the socket is full: the rest waits for writable
        }
    }
    (off, None)
}

fn io_reason(e: &io::Error) -> Reason {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::EPIPE) => "broken pipe".into(),
        Some(libc::ETIMEDOUT) => "tcp timeout".into(),
        Some(libc::EMFILE) => "EMFILE (too many open files)".into(),
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL (out of ports)".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        _ => format!("io: {e}").into(),
    }
}

impl Worker {
    fn new(id: usize, cfg: Arc<Config>, sh: Arc<Shared>, tx: Sender<Report>) -> io::Result<Worker> {
        let t = cfg.threads.max(1);
        let n_local = (cfg.conns + t - 1 - id.min(cfg.conns)) / t;
        let n_local = if id < cfg.conns { n_local } else { 0 };
        let conns = (0..n_local)
            .map(|j| {
                let i = id + j * t;
                Conn {
                    stream: None,
                    tls: None,
                    st: St::New,
                    room: cfg.room_of(i),
                    publisher: cfg.is_publisher(i),
                    seq: SeqTracker::default(),
                    seq_hint: 0,
                    t_start: 0,
                    t_tcp: 0,
                    t_up: 0,
                    pending: Vec::new(),
                    out: Vec::new(),
                    frag: None,
                    frag_compressed: false,
                    deflate: false,
                    inflight: VecDeque::new(),
                }
            })
            .collect();
        let max_in_flight = cfg.max_in_flight.div_ceil(t).max(1);
        Ok(Worker {
            id,
            poll: Poll::new()?,
            cls: Classifier::new(cfg.target),
            t_hint: 0,
            conns,
            rbuf: vec![0; cfg.read_buf.max(4096)],
            pbuf: Vec::with_capacity(1024),
            fbuf: Vec::with_capacity(1024),
            inflater: Inflater::new(),
            zbuf: Vec::new(),
            rng: mono_ns() ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            now: mono_ns(),
            iat: unix_ms() / 1000,
            next_open: 0,
            in_flight: 0,
            in_flight_q: VecDeque::new(),
            max_in_flight,
            connect_reported: false,
            ready: 0,
            timed_out: 0,
            failed: 0,
            per_room: vec![0; cfg.rooms.max(1)],
            failures: BTreeMap::new(),
            hs_total: new_hist(),
            hs_tcp: new_hist(),
            hs_upgrade: new_hist(),
            first_start_ns: 0,
            last_ready_ns: 0,
            members: None,
            publishers: Vec::new(),
            rr: 0,
            rate: 0.0,
            rate_gen: 0,
            rate_epoch: 0,
            rate_sent: 0,
            next_id: 1,
            cur_window: 0,
            max_window: 0,
            windows: (0..MAX_WINDOWS).map(|_| WinStats::new()).collect(),
            collected_upto: 0,
            tick: 0,
            tick_hists: (0..MAX_WINDOWS).map(|_| None).collect(),
            ping_ring: vec![(0, 0, 0); 4096],
            refill: Vec::new(),
            last_cpu_sample: 0,
            next_due: u64::MAX,
            due_on_tick: false,
            interval_ns: 0,
            timer: None,
            fin: FinalReport {
                thread: id,
                pacing: Some(new_hist()),
                ..Default::default()
            },
            cfg,
            sh,
            tx,
        })
    }

    #[inline]
    fn ts(&self) -> &ThreadShared {
        &self.sh.threads[self.id]
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        pacer::fine_timer_slack();
        if let Ok(t) = Timer::new() {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&t);
            let ok = self
                .poll
                .registry()
                .register(&mut mio::unix::SourceFd(&fd), TIMER, Interest::READABLE)
                .is_ok();
            if ok {
                self.timer = Some(t);
            }
        }
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("poll: {e}");
            }
            self.now = mono_ns();
            if self.now >= self.next_due {
                self.publish_due();
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    // the read re-arms a periodic timerfd (the kernel restarts it lazily)
                    if let Some(t) = self.timer.as_mut() {
                        t.take_ticks();
                    }
                } else {
                    let slot = ev.token().0;
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    self.on_event(slot, readable, ev.is_writable());
                }
                // a publish due during this turn leaves now, not after the whole turn
                if self.now >= self.next_due {
                    self.publish_due();
                }
            }
            if !self.control() {
                break;
            }
        }
        self.send_ticks(self.tick + 1);
        self.fin.cpu_ns = thread_cpu_ns();
        let fin = std::mem::take(&mut self.fin);
        let _ = self.tx.send(Report::Final(Box::new(fin)));
    }

    /// The poll's timeout: the timerfd wakes it for the next due publish; without a timer
    /// or for a retry off its schedule, the due time itself (rounded up to a millisecond by
    /// epoll).
    fn timeout(&self) -> Duration {
        let max = Duration::from_millis(5);
        if self.next_due == u64::MAX {
            return max;
        }
        let now = mono_ns();
        if self.next_due <= now {
            Duration::ZERO
        } else if self.timer.is_some() && self.due_on_tick {
            // the tick wakes the loop; the timeout is only a backstop should one be missed
            Duration::from_nanos(self.next_due - now + 1_000_000).min(max)
        } else {
            Duration::from_nanos(self.next_due - now).min(max)
        }
    }

    // ---------------------------------------------------------------- control

    fn control(&mut self) -> bool {
        let phase = self.sh.phase.load(Acquire);
        if phase == PHASE_STOP {
            return false;
        }
        if !self.connect_reported {
            self.open_more();
            self.check_timeouts();
            if self.next_open == self.conns.len() && self.in_flight == 0 {
                self.report_connected();
            }
        }
        if phase == PHASE_RUN && self.members.is_none() {
            self.members = self.sh.members.get().cloned();
        }
        let g = self.ts().rate_gen.load(Acquire);
        if g != self.rate_gen {
            self.rate_gen = g;
            let milli = self.ts().rate_milli.load(Relaxed);
            self.rate = if milli == RATE_UNLIMITED {
                f64::INFINITY
            } else {
                milli as f64 / 1000.0
            };
            self.rate_epoch = mono_ns();
            self.rate_sent = 0;
            self.next_due = u64::MAX;
            let paced = self.rate > 0.0 && self.rate.is_finite();
            self.interval_ns = if paced {
                ((1e9 / self.rate).round() as u64).max(1)
            } else {
                0
            };
            if let Some(t) = self.timer.as_mut() {
                // publish 0 is due at the epoch (sent below); the timer ticks from publish 1 on
                let tick = if paced {
                    pacer::tick_of(self.interval_ns)
                } else {
                    0
                };
                let _ = t.set_periodic(self.rate_epoch + tick, tick);
            }
            self.refill.clear();
            if self.rate.is_infinite() {
                // closed loop: fill every window now, then top up on each reply
                self.refill.extend_from_slice(&self.publishers);
            }
        }
        self.cur_window = self.sh.window.load(Acquire).min(MAX_WINDOWS as u32 - 1);
        self.max_window = self.max_window.max(self.cur_window);
        if phase == PHASE_RUN && self.members.is_some() {
            self.publish_due();
        }
        let cu = self
            .sh
            .collect_upto
            .load(Acquire)
            .min(MAX_WINDOWS as u32 - 1);
        while self.collected_upto < cu {
            self.collected_upto += 1;
            let w = self.collected_upto as usize;
            let mut st = std::mem::take(&mut self.windows[w]);
            if let Some(mut h) = self.tick_hists[w].take() {
                st.hist = h.take_hist();
            }
            st.collected = true;
            self.windows[w].collected = true;
            let _ = self.tx.send(Report::Window {
                thread: self.id,
                window: w as u32,
                stats: Box::new(st),
            });
        }
        let tk = self.sh.tick.load(Acquire);
        if tk != self.tick {
            self.tick = tk;
            self.send_ticks(tk);
        }
        // publish live counters
        let ts = &self.sh.threads[self.id];
        ts.deliveries.store(self.fin.deliveries, Relaxed);
        ts.published.store(self.fin.published, Relaxed);
        for w in (self.collected_upto as usize + 1)..=(self.max_window as usize) {
            ts.expected[w].store(self.windows[w].expected, Relaxed);
            ts.received[w].store(self.windows[w].received, Relaxed);
        }
        if self.now.saturating_sub(self.last_cpu_sample) > 50_000_000 {
            self.last_cpu_sample = self.now;
            ts.cpu_ns.store(thread_cpu_ns(), Relaxed);
            // also refresh counters of all uncollected windows (cheap, at most 64)
            for w in (self.collected_upto as usize + 1)..MAX_WINDOWS {
                ts.expected[w].store(self.windows[w].expected, Relaxed);
                ts.received[w].store(self.windows[w].received, Relaxed);
            }
        }
        true
    }

    fn send_ticks(&mut self, tick: u64) {
        for w in 0..MAX_WINDOWS {
            if let Some(h) = self.tick_hists[w].as_mut() {
                if !h.is_empty() {
                    let _ = self.tx.send(Report::Tick {
                        thread: self.id,
                        tick,
                        window: w as u32,
                        hist: Box::new(h.take_hist()),
                    });
                }
            }
        }
    }

    /// Record a latency (ns) for window `w` (0 = outside windows).
    #[inline]
    fn record(&mut self, w: usize, ns: u64) {
        let h = self.tick_hists[w].get_or_insert_with(|| Box::new(FastHist::new()));
        h.record_ns(ns);
    }

    fn report_connected(&mut self) {
        self.connect_reported = true;
        let publishers = self.publishers.len();
        let rep = ConnectReport {
            thread: self.id,
            per_room: std::mem::take(&mut self.per_room),
            publishers,
            ready: self.ready,
            failed: self.failed,
            failures: std::mem::take(&mut self.failures),
            hs_total: std::mem::replace(&mut self.hs_total, new_hist()),
            hs_tcp: std::mem::replace(&mut self.hs_tcp, new_hist()),
            hs_upgrade: std::mem::replace(&mut self.hs_upgrade, new_hist()),
            first_start_ns: self.first_start_ns,
            last_ready_ns: self.last_ready_ns,
            cpu_ns: thread_cpu_ns(),
        };
        let _ = self.tx.send(Report::Connected(Box::new(rep)));
    }

    // ---------------------------------------------------------------- connecting

    fn open_more(&mut self) {
        while self.next_open < self.conns.len() && self.in_flight < self.max_in_flight {
            let slot = self.next_open;
            self.next_open += 1;
            self.open(slot);
        }
    }

    fn check_timeouts(&mut self) {
        let limit = self.cfg.connect_timeout.as_nanos() as u64;
        while let Some(&slot) = self.in_flight_q.front() {
            let c = &self.conns[slot as usize];
            if matches!(c.st, St::Ready | St::Closed) {
                self.in_flight_q.pop_front();
                continue;
            }
            if self.now.saturating_sub(c.t_start) > limit {
                self.in_flight_q.pop_front();
                let why: Reason = match c.st {
                    St::Connecting => "timeout: tcp connect".into(),
                    St::Upgrading => "timeout: http upgrade".into(),
                    St::Welcome | St::EioOpen | St::SioConnect => "timeout: welcome".into(),
                    _ => "timeout: join".into(),
                };
                self.close(slot as usize, why);
                self.timed_out += 1;
                continue;
            }
            break;
        }
        self.give_up_if_nothing_answers();
    }

    /// A whole window of attempts timed out and none got through: the server does not
    /// answer this dialect (a wrong `--target`, another program on the port). The rest are
    /// counted as failed without trying, so the run ends after one timeout, not after one
    /// per window of connections (19,000 / 256 x 30 s is over half an hour).
    fn give_up_if_nothing_answers(&mut self) {
        let left = self.conns.len() - self.next_open;
        if self.ready > 0 || left == 0 || self.timed_out < self.max_in_flight as u64 {
            return;
        }
        let why = format!(
            "not tried: the first {} timed out, none answered",
            self.timed_out
        );
        for c in &mut self.conns[self.next_open..] {
            c.st = St::Closed;
        }
        self.next_open = self.conns.len();
        self.failed += left as u64;
        *self.failures.entry(why).or_default() += left as u64;
        self.sh.threads[self.id]
            .failed
            .fetch_add(left as u64, Relaxed);
    }

    fn global_index(&self, slot: usize) -> usize {
        self.id + slot * self.cfg.threads.max(1)
    }

    fn open(&mut self, slot: usize) {
        let i = self.global_index(slot);
        let now = mono_ns();
        if self.first_start_ns == 0 {
            self.first_start_ns = now;
        }
        self.conns[slot].t_start = now;
        self.conns[slot].st = St::Connecting;
        self.in_flight += 1;
        self.in_flight_q.push_back(slot as u32);
        self.sh.threads[self.id].opened.fetch_add(1, Relaxed);
        match self.connect_socket(i) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.close(slot, io_reason(&e));
                    return;
                }
                if let Some(client) = &self.cfg.tls {
                    match client.connection() {
                        Ok(c) => self.conns[slot].tls = Some(Box::new(c)),
                        Err(e) => {
                            self.close(slot, format!("tls: {e}").into());
                            return;
                        }
                    }
                }
                self.conns[slot].stream = Some(s);
            }
            Err(e) => self.close(slot, io_reason(&e)),
        }
    }

    fn connect_socket(&self, i: usize) -> io::Result<TcpStream> {
        use socket2::{Domain, Protocol, Socket, Type};
        let addr = self.cfg.addr;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        if !self.cfg.source_ips.is_empty() {
            let ip = self.cfg.source_ips[i % self.cfg.source_ips.len()];
            // let the kernel pick the port at connect() time, per (src, dst) 4-tuple
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a valid fd and an int option value.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(sock.into()))
    }

    fn on_connected(&mut self, slot: usize) -> bool {
        let s = self.conns[slot].stream.as_ref().expect("stream");
        match s.take_error() {
            Ok(Some(e)) | Err(e) => {
                self.close(slot, io_reason(&e));
                return false;
            }
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
            Err(e) => {
                self.close(slot, io_reason(&e));
                return false;
            }
        }
        let i = self.global_index(slot);
        let c = &mut self.conns[slot];
        c.t_tcp = mono_ns();
        c.st = St::Upgrading;
        let token: Option<Cow<str>> = match &self.cfg.auth {
            Auth::None => None,
            Auth::Token(t) => Some(Cow::Borrowed(t.as_str())),
            Auth::Secret { minter, ttl_secs } => Some(Cow::Owned(minter.mint(
                &format!("lg-{i}"),
                self.iat,
                Some(self.iat + ttl_secs),
            ))),
        };
        let path = match token {
            None => self.cfg.path.clone(),
            Some(t) => {
                let sep = if self.cfg.path.contains('?') {
                    '&'
                } else {
                    '?'
                };
                format!("{}{sep}token={t}", self.cfg.path)
            }
        };
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.rand().to_ne_bytes());
        key[8..].copy_from_slice(&self.rand().to_ne_bytes());
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let mut req = std::mem::take(&mut self.fbuf);
        req.clear();
        let offer = self.cfg.deflate.then_some(ws::DEFLATE_OFFER);
        ws::upgrade_request_with(&mut req, &path, &self.cfg.host, &key, offer);
        self.write_out(slot, &req);
        self.fbuf = req;
        true
    }

    fn on_joined(&mut self, slot: usize, seq: Option<u64>) {
        let now = self.now;
        let c = &mut self.conns[slot];
        c.st = St::Ready;
        c.seq = SeqTracker::from_joined(seq);
        let (t_start, t_tcp, t_up, room, publisher) =
            (c.t_start, c.t_tcp, c.t_up, c.room, c.publisher);
        self.in_flight -= 1;
        self.ready += 1;
        self.per_room[room as usize] += 1;
        record_ns(&mut self.hs_total, now - t_start);
        record_ns(&mut self.hs_tcp, t_tcp - t_start);
        record_ns(&mut self.hs_upgrade, t_up - t_start);
        self.last_ready_ns = now;
        self.sh.threads[self.id].ready.fetch_add(1, Relaxed);
        if publisher {
            self.publishers.push(slot as u32);
        }
    }

    // ---------------------------------------------------------------- I/O

    fn on_event(&mut self, slot: usize, readable: bool, writable: bool) {
        if slot >= self.conns.len() {
            return;
        }
        match self.conns[slot].st {
            St::New | St::Closed => return,
            St::Connecting => {
                if !self.on_connected(slot) {
                    return;
                }
            }
            _ => {
                let c = &self.conns[slot];
                if writable
                    && (!c.out.is_empty() || c.tls.as_ref().is_some_and(|t| t.wants_write()))
                {
                    self.flush(slot);
                }
            }
        }
        if readable {
            self.on_readable(slot);
        }
    }

    /// Write to the connection, queueing what the socket does not take.
    fn write_out(&mut self, slot: usize, data: &[u8]) {
        let c = &mut self.conns[slot];
        let Some(s) = c.stream.as_mut() else { return };
        if !c.out.is_empty() {
            c.out.extend_from_slice(data);
            return;
        }
        let (off, err) = match c.tls.as_deref_mut() {
            None => write_some(s, data),
            Some(t) => tls_write_some(t, s, data),
        };
        if let Some(e) = err {
            self.close(slot, e);
            return;
        }
        if off < data.len() {
            c.out.extend_from_slice(&data[off..]);
        }
    }

    fn flush(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        let Some(s) = c.stream.as_mut() else { return };
        let (off, err) = match c.tls.as_deref_mut() {
            None => write_some(s, &c.out),
            Some(t) => tls_write_some(t, s, &c.out),
        };
        if let Some(e) = err {
            self.close(slot, e);
            return;
        }
        c.out.drain(..off);
    }

    fn send_frame(&mut self, slot: usize, opcode: OpCode, payload: &[u8]) {
        let mask = (self.rand() as u32).to_ne_bytes();
        let mut f = std::mem::take(&mut self.fbuf);
        f.clear();
        ws::encode_frame(&mut f, opcode, payload, Some(mask));
        self.write_out(slot, &f);
        self.fbuf = f;
    }

    /// Send `self.pbuf` as a text frame.
    fn send_pbuf(&mut self, slot: usize) {
        let p = std::mem::take(&mut self.pbuf);
        self.send_frame(slot, OpCode::Text, &p);
        self.pbuf = p;
    }

    fn close(&mut self, slot: usize, why: Reason) {
        let c = &mut self.conns[slot];
        let prev = c.st;
        if prev == St::Closed {
            return;
        }
        c.st = St::Closed;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.tls = None;
        c.pending = Vec::new();
        c.out = Vec::new();
        c.frag = None;
        if prev == St::Ready {
            *self.fin.disconnects.entry(why.into_owned()).or_default() += 1;
            self.sh.threads[self.id].disconnected.fetch_add(1, Relaxed);
        } else {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.failed += 1;
            *self.failures.entry(why.into_owned()).or_default() += 1;
            self.sh.threads[self.id].failed.fetch_add(1, Relaxed);
        }
    }

    fn on_readable(&mut self, slot: usize) {
        let mut buf = std::mem::take(&mut self.rbuf);
        let mut filled = 0;
        {
            let c = &mut self.conns[slot];
            let n = c.pending.len();
            if n > 0 {
                if n >= buf.len() {
                    buf.resize((n + 1).next_power_of_two(), 0);
                }
                buf[..n].copy_from_slice(&c.pending);
                c.pending.clear();
                filled = n;
            }
        }
        let mut closed: Option<Reason> = None;
        loop {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let space = buf.len() - filled;
            let c = &mut self.conns[slot];
            let r = match (c.stream.as_mut(), c.tls.as_deref_mut()) {
                (Some(s), None) => s.read(&mut buf[filled..]),
                (Some(s), Some(t)) => tls::read(t, s, &mut buf[filled..]),
                (None, _) => break,
            };
            match r {
                Ok(0) => {
                    closed = Some("eof".into());
                    break;
                }
                Ok(n) => {
                    filled += n;
                    self.now = mono_ns();
                    match self.process(slot, &buf[..filled]) {
                        Ok(used) => {
                            buf.copy_within(used..filled, 0);
                            filled -= used;
                        }
                        Err(why) => {
                            closed = Some(why);
                            break;
                        }
                    }
                    if self.conns[slot].st == St::Closed {
                        break;
                    }
                    if n < space {
                        break; // short read: the socket is drained (TCP)
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    closed = Some(io_reason(&e));
                    break;
                }
            }
        }
        if let Some(why) = closed {
            self.close(slot, why);
        } else if filled > 0 && self.conns[slot].st != St::Closed {
            self.conns[slot].pending.extend_from_slice(&buf[..filled]);
        }
        if buf.len() > 4 * self.cfg.read_buf.max(4096) {
            buf.truncate(self.cfg.read_buf.max(4096));
            buf.shrink_to_fit();
        }
        self.rbuf = buf;
    }

    /// Handle every complete unit in `data`; returns the bytes consumed.
    fn process(&mut self, slot: usize, data: &[u8]) -> Result<usize, Reason> {
        let mut pos = 0;
        if self.conns[slot].st == St::Upgrading {
            match ws::parse_upgrade_response(data) {
                Upgrade::Incomplete => return Ok(0),
                Upgrade::Error(e) => return Err(e.into()),
                Upgrade::Done {
                    status,
                    header_len,
                    deflate,
                } => {
                    if status != 101 {
                        return Err(format!("http {status}").into());
                    }
                    pos = header_len;
                    let c = &mut self.conns[slot];
                    c.deflate = deflate && self.cfg.deflate;
                    c.t_up = mono_ns();
                    match self.cfg.target.first_stage() {
                        Stage::Welcome => c.st = St::Welcome,
                        Stage::EioOpen => c.st = St::EioOpen,
                        Stage::Join => self.send_join(slot),
                    }
                }
            }
        }
        while pos < data.len() {
            // fast path: the frame of every room message, without the general parser
            let rest = &data[pos..];
            if let Some((start, len)) = ws::fin_text_header(rest) {
                let end = start + len;
                if end > rest.len() {
                    break; // incomplete: kept for the next read
                }
                pos += end;
                self.on_text(slot, &rest[start..end]);
                if self.conns[slot].st == St::Closed {
                    return Ok(pos);
                }
                continue;
            }
            let rsv1_ok = self.conns[slot].deflate;
            let f = match ws::parse_server_frame_ext(&data[pos..], ws::MAX_SERVER_FRAME, rsv1_ok) {
                Ok(Parse::Frame(f)) => f,
                Ok(Parse::Incomplete { .. }) => break,
                Err(e) => return Err(format!("protocol: {}", e.reason).into()),
            };
            let payload = f.payload(&data[pos..]);
            pos += f.total_len();
            match f.opcode {
                OpCode::Text if f.fin && f.rsv1 => self.on_compressed_text(slot, payload)?,
                OpCode::Text if f.fin => self.on_text(slot, payload),
                OpCode::Binary if f.fin => self.fin.other_frames += 1,
                OpCode::Text | OpCode::Binary => {
                    let mut v = Vec::with_capacity(payload.len() * 2);
                    v.extend_from_slice(payload);
                    self.conns[slot].frag = Some(v);
                    self.conns[slot].frag_compressed = f.rsv1;
                }
                OpCode::Continuation => {
                    let Some(mut v) = self.conns[slot].frag.take() else {
                        return Err("protocol: continuation without start".into());
                    };
                    v.extend_from_slice(payload);
                    if !f.fin {
                        self.conns[slot].frag = Some(v);
                    } else if self.conns[slot].frag_compressed {
                        self.on_compressed_text(slot, &v)?;
                    } else {
                        self.on_text(slot, &v);
                    }
                }
                OpCode::Ping => self.send_frame(slot, OpCode::Pong, payload),
                OpCode::Pong if payload.len() == 8 => {
                    let id = u64::from_be_bytes(payload.try_into().expect("8 bytes"));
                    self.on_pong(Some(id));
                }
                OpCode::Close => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        ws::close_code::NO_STATUS
                    };
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]))
                        .chars()
                        .take(60)
                        .collect::<String>();
                    self.send_frame(slot, OpCode::Close, &payload[..payload.len().min(2)]);
                    return Err(if reason.is_empty() {
                        format!("close {code}").into()
                    } else {
                        format!("close {code} {reason}").into()
                    });
                }
                _ => {}
            }
            if self.conns[slot].st == St::Closed {
                return Ok(pos);
            }
        }
        Ok(pos)
    }

    /// A compressed text message: inflated (the server resets its context per message), then
    /// handled as any other.
    fn on_compressed_text(&mut self, slot: usize, compressed: &[u8]) -> Result<(), Reason> {
        let mut out = std::mem::take(&mut self.zbuf);
        out.clear();
        self.inflater
            .inflate(compressed, &mut out, MAX_INFLATED, true)
            .map_err(|e| format!("protocol: inflate {e:?}"))?;
        self.on_text(slot, &out);
        self.zbuf = out;
        Ok(())
    }

    fn send_join(&mut self, slot: usize) {
        let room = self.conns[slot].room;
        self.pbuf.clear();
        let id = self.next_id;
        self.next_id += 1;
        let batched = self.cfg.presence_batched;
        proto::join_payload(&mut self.pbuf, self.cfg.target, room, id, batched);
        self.conns[slot].st = St::Joining;
        self.send_pbuf(slot);
    }

    #[inline]
    fn on_text(&mut self, slot: usize, p: &[u8]) {
        let st = self.conns[slot].st;
        if st == St::Ready {
            let c = &mut self.conns[slot];
            match self
                .cls
                .classify_hinted(p, &mut c.seq_hint, &mut self.t_hint)
            {
                In::Message { seq, tw } => self.on_message(slot, seq, tw),
                In::Ack { id } => {
                    self.fin.acks += 1;
                    if self.cfg.mode == Mode::Acks {
                        self.on_ack(slot, id, true);
                    }
                }
                In::Pong { id } => self.on_pong(id),
                In::Error { code, id } => {
                    *self
                        .fin
                        .errors
                        .entry(String::from_utf8_lossy(code).into_owned())
                        .or_default() += 1;
                    if self.cfg.mode == Mode::Acks {
                        self.on_ack(slot, id, false);
                    }
                }
                In::EioPing => {
                    self.pbuf.clear();
                    self.pbuf.push(b'3');
                    self.send_pbuf(slot);
                }
                In::SioRefused => self.close(slot, "socket.io disconnect".into()),
                _ => self.fin.other_frames += 1,
            }
            return;
        }
        match (st, self.cls.classify(p)) {
            (_, In::Error { code, .. }) => {
                let why = format!("error {}", String::from_utf8_lossy(code));
                self.close(slot, why.into());
            }
            (_, In::EioPing) => {
                self.pbuf.clear();
                self.pbuf.push(b'3');
                self.send_pbuf(slot);
            }
            (_, In::SioRefused) => self.close(slot, "socket.io connect refused".into()),
            (St::Welcome, In::Welcome) => self.send_join(slot),
            (St::EioOpen, In::EioOpen) => {
                self.conns[slot].st = St::SioConnect;
                self.pbuf.clear();
                self.pbuf.extend_from_slice(b"40");
                self.send_pbuf(slot);
            }
            (St::SioConnect, In::SioConnect) => self.send_join(slot),
            (St::Joining, In::Joined { seq }) => self.on_joined(slot, seq),
            _ => {}
        }
    }

    #[inline]
    fn on_message(&mut self, slot: usize, seq: Option<u64>, tw: Option<(u64, u32)>) {
        let check = match seq {
            Some(s) => self.conns[slot].seq.check(s),
            None => SeqCheck::Ok,
        };
        if self.cfg.mode == Mode::Acks {
            // the publishers' copies of their room's messages: checked for seq, not timed
            // (the acks are what is measured, and they count as the deliveries)
            self.fin.room_messages += 1;
            self.fin.seq_other.add(check);
            return;
        }
        self.fin.deliveries += 1;
        let Some((t, w)) = tw else {
            self.fin.untimed += 1;
            self.fin.seq_other.add(check);
            return;
        };
        let lat = self.now.saturating_sub(t);
        let w = w as usize;
        if w == 0 || w >= MAX_WINDOWS {
            self.fin.seq_other.add(check);
            self.record(0, lat);
            return;
        }
        let ws = &mut self.windows[w];
        if ws.collected {
            self.fin.late += 1;
            self.fin.seq_other.add(check);
            self.record(0, lat);
        } else {
            ws.received += 1;
            ws.seq.add(check);
            self.record(w, lat);
        }
    }

    fn on_pong(&mut self, id: Option<u64>) {
        self.fin.pongs += 1;
        let Some(id) = id else { return };
        let e = self.ping_ring[(id as usize) % self.ping_ring.len()];
        if e.0 != id {
            return;
        }
        self.on_reply(e.1, e.2);
    }

    /// The reply (ack or error) to a publish of connection `slot` in Acks mode: free its
    /// place in the window and time it (an ack) or count it as failed (an error).
    fn on_ack(&mut self, slot: usize, id: Option<u64>, ok: bool) {
        let q = &mut self.conns[slot].inflight;
        let pos = match id {
            // replies come in order on one connection: the oldest is the likely one
            Some(id) => q.iter().position(|e| e.0 == id),
            None => (!q.is_empty()).then_some(0),
        };
        let Some((_, t, w)) = pos.and_then(|p| q.remove(p)) else {
            self.fin.unmatched += 1;
            return;
        };
        if self.rate.is_infinite() {
            self.refill.push(slot as u32);
        }
        if ok {
            self.on_reply(t, w);
            return;
        }
        let w = w as usize;
        if w > 0 && w < MAX_WINDOWS && !self.windows[w].collected {
            let ws = &mut self.windows[w];
            ws.errors += 1;
            ws.expected = ws.expected.saturating_sub(1);
        }
    }

    /// A reply to a request sent at `t` (ns) in window `w`: record its round trip.
    fn on_reply(&mut self, t: u64, w: u32) {
        let lat = self.now.saturating_sub(t);
        self.fin.deliveries += 1;
        let w = w as usize;
        if w > 0 && w < MAX_WINDOWS && !self.windows[w].collected {
            self.windows[w].received += 1;
            self.record(w, lat);
        } else {
            if w > 0 {
                self.fin.late += 1;
            }
            self.record(0, lat);
        }
    }

    // ---------------------------------------------------------------- publishing

    /// Due time of publish number `k` since the rate was set: evenly spaced, on the timer's
    /// schedule (an integer interval, so the two never drift apart).
    #[inline]
    fn due_of(&self, k: u64) -> u64 {
        self.rate_epoch + k * self.interval_ns
    }

    /// Send every publish whose due time has passed, each stamped with its own due time for
    /// the pacing error, and note the next due time (the loop arms the timer for it).
    fn publish_due(&mut self) {
        if self.rate <= 0.0 || self.publishers.is_empty() {
            self.refill.clear();
            self.next_due = u64::MAX;
            return;
        }
        if self.rate.is_infinite() {
            self.refill_windows();
            self.next_due = u64::MAX;
            return;
        }
        let mut now = mono_ns();
        let elapsed = now.saturating_sub(self.rate_epoch);
        let due_count = elapsed / self.interval_ns.max(1) + 1;
        let n = due_count.saturating_sub(self.rate_sent);
        if n > MAX_BACKLOG {
            // far behind (the load generator stalled): skip rather than burst
            self.fin.publish_skipped += n - MAX_BACKLOG;
            self.rate_sent += n - MAX_BACKLOG;
        }
        loop {
            let due = self.due_of(self.rate_sent);
            if due > now {
                self.next_due = due;
                self.due_on_tick = true;
                break;
            }
            if !self.publish_one(due) {
                if self.cfg.mode == Mode::Acks {
                    // every window is full: the rate is a cap, do not catch up later
                    self.rate_sent = due_count.max(self.rate_sent);
                    self.next_due = self.due_of(self.rate_sent);
                    self.due_on_tick = true;
                } else {
                    // no publisher can take it now (buffers full): retry shortly
                    self.next_due = now + 100_000;
                    self.due_on_tick = false;
                }
                break;
            }
            self.rate_sent += 1;
            now = self.now;
        }
    }

    /// Acks without a rate cap: top up the window of every connection that got a reply.
    fn refill_windows(&mut self) {
        let mut list = std::mem::take(&mut self.refill);
        let window = self.cfg.window.max(1);
        for &slot in &list {
            let slot = slot as usize;
            while self.conns[slot].st == St::Ready && self.conns[slot].inflight.len() < window {
                self.send_one(slot, None);
            }
        }
        list.clear();
        self.refill = list;
    }

    fn publish_one(&mut self, due: u64) -> bool {
        let np = self.publishers.len();
        for _ in 0..np {
            let slot = self.publishers[self.rr % np] as usize;
            self.rr = self.rr.wrapping_add(1);
            let c = &self.conns[slot];
            if c.st == St::Ready
                && c.out.len() < (1 << 20)
                && (self.cfg.mode != Mode::Acks || c.inflight.len() < self.cfg.window.max(1))
            {
                self.send_one(slot, Some(due));
                return true;
            }
        }
        false
    }

    /// Publish (or ping) from connection `slot`; `due` is its paced due time, if paced.
    fn send_one(&mut self, slot: usize, due: Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let w = self.cur_window;
        let t = mono_ns();
        self.now = t;
        if let Some(due) = due {
            let err = t.saturating_sub(due);
            if let Some(h) = self.fin.pacing.as_mut() {
                record_ns(h, err);
            }
            if w > 0 && !self.windows[w as usize].collected {
                record_ns(&mut self.windows[w as usize].pacing, err);
            }
        }
        self.pbuf.clear();
        let expected_add;
        if self.cfg.mode == Mode::Ping {
            let n = self.ping_ring.len();
            self.ping_ring[(id as usize) % n] = (id, t, w);
            expected_add = 1;
            if self.cfg.target.has_json_ping() && !self.cfg.ws_ping {
                proto::ping_payload(&mut self.pbuf, id);
                self.send_pbuf(slot);
            } else {
                self.send_frame(slot, OpCode::Ping, &id.to_be_bytes());
            }
        } else {
            let room = self.conns[slot].room;
            expected_add = if self.cfg.mode == Mode::Acks {
                self.conns[slot].inflight.push_back((id, t, w));
                1
            } else {
                self.members
                    .as_ref()
                    .map(|m| m[room as usize] as u64)
                    .unwrap_or(0)
            };
            proto::publish_payload(
                &mut self.pbuf,
                self.cfg.target,
                room,
                id,
                t,
                w,
                self.cfg.body,
            );
            self.send_pbuf(slot);
        }
        self.fin.published += 1;
        if matches!(self.cfg.mode, Mode::Traffic { .. }) {
            self.fin.expected_deliveries += expected_add;
        }
        if w > 0 {
            let ws = &mut self.windows[w as usize];
            ws.published += 1;
            ws.expected += expected_add;
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
