//! Command line: one subcommand per scenario of BENCHMARKS.md (with its parameters as
//! defaults), plus `compare` and `plot`.

use crate::proto::Target;
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for corechat and its peers (BENCHMARKS.md scenarios)",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

const AFTER_HELP: &str = "\
Pin like the benchmarks, and give --server-pid the PID of the server you started, e.g. $! right
after starting it in the background (not a guess such as the newest process named corechat,
which may be someone else's):

  taskset -c 1 corechat serve --no-pin ... &
  taskset -c 0 loadgen fanout --server-pid $! --out DIR

Exit status: 0; 1 on an error (including no connection set up); 2 when the run finished but more
than --max-failed-pct of its connections failed (the figures are still printed and written).
See docs/BENCH.md.";

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// S1: C connections in R rooms (connection i joins room i mod R), one publisher per room,
    /// total M msg/s: deliveries/s, latency percentiles, loss
    Fanout(FanoutArgs),
    /// S1 stepping the rate up: highest deliveries/s with loss < 0.1% and p99 < 100 ms
    Ramp(RampArgs),
    /// S2: many small rooms, every connection publishes: p50/p99, server CPU seconds
    Rooms(RoomsArgs),
    /// S3: C idle connections joined to R rooms, held H s: server RSS per connection, connect rate
    Idle(IdleArgs),
    /// S4: one room of C members, M msg/s: deliveries/s, p99, loss
    Bigroom(BigroomArgs),
    /// S5: C clients connect, authenticate and join as fast as possible: handshakes/s, p99
    Connect(ConnectArgs),
    /// S6: one connection, ping/pong at R/s: round-trip p50/p99
    Rtt(RttArgs),
    /// Durable store cost (extension, corechat only): C connections publish into R rooms
    /// (connection i joins room i mod R), W publishes in flight each (closed loop, or capped by
    /// --rate): acks/s, publish->ack latency p50/p90/p99/p99.9/max, errors by code
    #[command(after_help = ACKS_HELP)]
    Acks(AcksArgs),
    /// Hostile-client shapes, one after another (extension, PROTOCOL.md 5.6): per shape the
    /// server's RSS (start/peak/end), a well-behaved member's publish->echo p50/p99 during the
    /// attack, and a verdict
    #[command(after_help = ABUSE_HELP)]
    Abuse(AbuseArgs),
    /// Run a tiny built-in corechat-compatible server (batched writes) to measure the load
    /// generator's own ceiling: `taskset -c 1 loadgen mock-server & taskset -c 0 loadgen fanout ...`
    MockServer {
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: std::net::SocketAddr,
        /// Require JWTs signed with this secret
        #[arg(long, env = "LOADGEN_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// Flush queued frames every N ms (bigger batches, fewer syscalls)
        #[arg(long, default_value_t = 1)]
        flush_ms: u64,
        /// Deliver no copy of each room's every Nth message (a lossy server, for testing loss
        /// and seq-gap accounting)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        drop_every: Option<u64>,
        /// Deliver each room's every Nth message twice (for testing duplicate accounting)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        dup_every: Option<u64>,
        /// Refuse every Kth upgrade with HTTP 429 (for testing failure accounting)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        refuse_every: Option<u64>,
    },
    /// Print the figures and percentiles of two result directories side by side with ratios;
    /// or, with --base/--new, repeated runs of each side: medians, noise and a verdict per figure
    Compare {
        /// Baseline result directory (with summary.json and *.hgrm)
        #[arg(required_unless_present = "base")]
        old: Option<PathBuf>,
        /// New result directory
        #[arg(required_unless_present = "base")]
        new_dir: Option<PathBuf>,
        /// Gate mode: result directories of repeated baseline runs of one scenario
        #[arg(long, num_args = 1.., requires = "new")]
        base: Vec<PathBuf>,
        /// Gate mode: result directories of repeated runs of the new build
        #[arg(long, num_args = 1..)]
        new: Vec<PathBuf>,
        /// Also write an SVG overlay of both sides' latency percentile curves
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Print the key figures of several result directories side by side, one table per scenario
    /// (row label: the name of each directory's parent)
    Table {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// GitHub-flavoured markdown
        #[arg(long)]
        markdown: bool,
    },
    /// A run's latency over time: one line per second of its interval log (.hlog), with how
    /// many of the run's worst 0.1% fell in each second (a spread-out tail or a few stalls)
    Timeline {
        /// A result directory (its latency .hlog) or an .hlog file
        path: PathBuf,
    },
    /// Draw latency-percentile curves of several runs on one SVG chart
    Plot {
        /// Result directories (or .hgrm files)
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Output SVG file
        #[arg(long)]
        svg: PathBuf,
        /// Histogram to draw (file stem, e.g. latency, rtt, handshake); default: the run's primary
        #[arg(long)]
        hist: Option<String>,
        /// Chart title
        #[arg(long)]
        title: Option<String>,
        /// Logarithmic latency axis
        #[arg(long)]
        log_y: bool,
    },
}

/// Options shared by every scenario.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket URL of the server, ws:// or wss:// (socketio: the path defaults to /socket.io/?EIO=4&transport=websocket)
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", env = "LOADGEN_URL")]
    pub url: String,
    /// wss://: trust the PEM certificate(s) in this file (the server's own, or its CA)
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// wss://: accept any server certificate (self-signed test certificates)
    #[arg(long)]
    pub tls_insecure: bool,
    /// Protocol dialect of the server
    #[arg(long, value_enum, default_value_t = Target::Corechat)]
    pub target: Target,
    /// HS256 secret: mint one JWT per connection (sub = lg-<n>), sent as ?token=
    #[arg(long, env = "LOADGEN_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Use this token for every connection (takes precedence over --jwt-secret)
    #[arg(long)]
    pub token: Option<String>,
    /// Lifetime (exp - iat) of minted tokens, seconds
    #[arg(long, default_value_t = 86_400)]
    pub jwt_ttl: u64,
    /// Event-loop threads (each pinned to one of the allowed cores)
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Spread sockets over these loopback source addresses, e.g. 127.0.0.2-127.0.0.50 (bound before connect)
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Connection i joins room i / ceil(C/R) instead of i mod R: a room's members connect one
    /// after another (as after a reconnect storm), so their joins fall close together
    #[arg(long)]
    pub room_blocks: bool,
    /// corechat: join with "presence":"batched" (presence as one presence_diff per room per
    /// window instead of a user_joined/user_left per change)
    #[arg(long)]
    pub presence_batched: bool,
    /// Connections being set up at once (TCP connect + upgrade + welcome + join)
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Give up on a connection that is not joined after this many seconds
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Server process id: sample its CPU time and RSS/HWM from /proc
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Server command line/flags, recorded in summary.json
    #[arg(long)]
    pub server_flags: Option<String>,
    /// Write summary.json, *.hgrm and an interval log here
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// After a measurement window, wait up to this many seconds for its deliveries
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Per-thread read buffer, bytes
    #[arg(long, default_value_t = 256 * 1024)]
    pub read_buf: usize,
    /// Do not pin worker threads to cores
    #[arg(long)]
    pub no_pin: bool,
    /// Offer permessage-deflate (no context takeover either way) and inflate compressed
    /// server frames; the client's own frames stay plain
    #[arg(long)]
    pub deflate: bool,
    /// No progress bars
    #[arg(long)]
    pub no_progress: bool,
    /// Flag the load generator as saturated above this CPU % of one of its threads
    #[arg(long, default_value_t = 90.0)]
    pub saturation_pct: f64,
    /// Fail the run (exit status 2) when more than this % of the connections could not be set
    /// up (HTTP status, refused, timeout, ...)
    #[arg(long, default_value_t = 1.0)]
    pub max_failed_pct: f64,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections (C)
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Rooms (R)
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Total publish rate (M), msg/s
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Body size (B), bytes of JSON
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    /// Measurement, seconds
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Warm-up before measuring, seconds
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
}

#[derive(Args, Debug, Clone)]
pub struct RampArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publish rates to step through, msg/s
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "200,400,800,1600,3200,6400,12800"
    )]
    pub rates: Vec<f64>,
    /// Seconds per step
    #[arg(long, default_value_t = 8.0)]
    pub step_secs: f64,
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    /// Warm-up at the first rate, seconds
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// A step passes with p99 below this (ms)
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// ... and loss below this (%)
    #[arg(long, default_value_t = 0.1)]
    pub max_loss_pct: f64,
    /// Keep stepping after a failed step
    #[arg(long)]
    pub all_steps: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 5000)]
    pub conns: usize,
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// Total publish rate over all connections, msg/s
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 19000)]
    pub conns: usize,
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// Hold the connections this many seconds before sampling the server
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
}

#[derive(Args, Debug, Clone)]
pub struct BigroomArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 19000)]
    pub conns: usize,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10000)]
    pub conns: usize,
    /// Rooms joined (connection i joins room i mod R)
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
}

#[derive(Args, Debug, Clone)]
pub struct RttArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Pings per second (over all connections)
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Use WebSocket ping/pong control frames instead of {"type":"ping"} (always so for peers)
    #[arg(long)]
    pub ws_ping: bool,
}

const ACKS_HELP: &str = "\
corechat acks a publish only after the message is stored (PROTOCOL.md 5.3), so the ack latency
includes the store's group commit (and fsync with --durability sync). The server's per-connection
rate limit (default 20/s) must be lifted, e.g.:

  taskset -c 1 corechat serve --shards 1 --no-pin --jwt-secret S --store sqlite \\
      --data-dir $(mktemp -d) --durability sync --rate-per-sec 1000000 --burst 1000000 &
  taskset -c 0 loadgen acks --jwt-secret S --rooms 1 --server-pid $! --out /tmp/acks

Every publisher is a member of its room, so it also receives the room's messages: with
--rooms 1 each publish is delivered to all --conns connections. Errors (rate_limited,
unavailable, ...) free the in-flight slot and are counted by code. Peers are refused: they
have no store to measure.";

#[derive(Args, Debug, Clone)]
pub struct AcksArgs {
    #[command(flatten)]
    pub common: Common,
    /// Publishing connections (C)
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    /// Rooms (R): connection i joins and publishes to room i mod R
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishes in flight per connection (W); 1 = wait for each ack before the next publish
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Cap on the total publish rate, msg/s (0 = no cap: closed loop)
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Body size (B), bytes of JSON
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    /// Measurement, seconds
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up before measuring, seconds
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

const ABUSE_HELP: &str = "\
Shapes (--shapes a,b,c; default all, in this order):
  http-pipeline      N conns each write K pipelined `GET /corechat.js` in one write, never read
  history-flood      fill a room with 100 x 15 KB messages (paced by welcome.limits), then 4,000
                     `history` (limit 100) in one write, read nothing
  presence-flood     the same with `presence`
  rooms-flood        the same with `rooms` (the member is in --flood-rooms rooms)
  resume-backlog     publish M x 15 KB, a fresh member joins with since 0 and reads: all M in
                     order, then a live one, no gap (1013 = fail)
  pipelined-publish  P publishes of 8 KB in one write, then read: all acked and echoed, no 1013
  read-spam          a member sends `read` of the same seq 300 times; another counts `read` frames
  room-churn         join/leave random rooms, history of random rooms, dm random users
  partial-frames     1,000 upgraded conns send half a frame and trickle 1 byte/s

Example:
  corechat serve --store memory --listen 127.0.0.1:8080 --shards 1 --jwt-secret S \\
      --rate-per-sec 1000 --burst 1000 --max-outbound-bytes 65536 &
  loadgen abuse --jwt-secret S --server-pid $! --out /tmp/abuse

Use --source-ips 127.0.0.2-127.0.0.20 for partial-frames against per-IP caps.";

#[derive(Args, Debug, Clone)]
pub struct AbuseArgs {
    #[command(flatten)]
    pub common: Common,
    /// Shapes to run, comma-separated (default: all)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http-pipeline,history-flood,presence-flood,rooms-flood,resume-backlog,pipelined-publish,read-spam,room-churn,partial-frames"
    )]
    pub shapes: Vec<String>,
    /// Attack time per shape, seconds (setup such as filling a room is bounded by --setup-timeout)
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// After a shape's attack stops, wait this long before the "end" RSS sample, seconds
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Bound on a shape's setup (filling rooms at the server's rate limit, connecting), seconds
    #[arg(long, default_value_t = 60.0)]
    pub setup_timeout: f64,
    /// http-pipeline: connections (N)
    #[arg(long, default_value_t = 3)]
    pub http_conns: usize,
    /// http-pipeline: requests per connection (K)
    #[arg(long, default_value_t = 6000)]
    pub http_requests: usize,
    /// history-flood: messages that fill the room
    #[arg(long, default_value_t = 100)]
    pub flood_messages: usize,
    /// *-flood: requests written at once
    #[arg(long, default_value_t = 4000)]
    pub flood_requests: usize,
    /// rooms-flood: extra rooms the flooding member joins first
    #[arg(long, default_value_t = 100)]
    pub flood_rooms: usize,
    /// history-flood, resume-backlog: body size, bytes (capped below welcome.limits.max_body_bytes)
    #[arg(long, default_value_t = 15_000)]
    pub big_body: usize,
    /// resume-backlog: messages in the backlog (M)
    #[arg(long, default_value_t = 600)]
    pub backlog: usize,
    /// pipelined-publish: publishes in one write (P)
    #[arg(long, default_value_t = 64)]
    pub pipeline: usize,
    /// pipelined-publish: body size, bytes
    #[arg(long, default_value_t = 8192)]
    pub pipeline_body: usize,
    /// read-spam: `read` requests of the same seq
    #[arg(long, default_value_t = 300)]
    pub read_spam: usize,
    /// room-churn: at most this many requests
    #[arg(long, default_value_t = 20_000)]
    pub churn_ops: usize,
    /// partial-frames: connections
    #[arg(long, default_value_t = 1000)]
    pub partial_conns: usize,
    /// The well-behaved member publishes every this many ms
    #[arg(long, default_value_t = 50)]
    pub normal_interval_ms: u64,
}

/// A parsed ws:// or wss:// URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// wss:// (or https://): TLS.
    pub tls: bool,
}

impl WsUrl {
    pub fn parse(url: &str) -> anyhow::Result<WsUrl> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("ws://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (r, true)
        } else if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            (url, false)
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("bad IPv6 host in {url}"))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        let default_port = if tls { 443 } else { 80 };
        let port = if port.is_empty() {
            default_port
        } else {
            port.parse()?
        };
        anyhow::ensure!(!host.is_empty(), "no host in {url}");
        Ok(WsUrl {
            host,
            port,
            path: path.to_string(),
            tls,
        })
    }

    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", self.host))
    }
}

/// Parse `127.0.0.2-127.0.0.50,127.0.1.1` into a list of addresses.
pub fn parse_source_ips(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse()?;
            let b: Ipv4Addr = b.trim().parse()?;
            let (a, b) = (u32::from(a), u32::from(b));
            anyhow::ensure!(a <= b, "empty range {part}");
            anyhow::ensure!(b - a < 1 << 20, "range too large: {part}");
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(part.parse()?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn scenario_defaults_match_benchmarks_md() {
        let c = Cli::parse_from(["loadgen", "fanout"]);
        let Cmd::Fanout(a) = c.cmd else { panic!() };
        assert_eq!((a.conns, a.rooms, a.rate, a.body), (1000, 1, 100.0, 64));
        assert_eq!((a.duration, a.warmup), (15.0, 3.0));
        assert_eq!(a.common.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(a.common.threads, 1);
        let Cmd::Rooms(a) = Cli::parse_from(["loadgen", "rooms"]).cmd else {
            panic!()
        };
        assert_eq!((a.conns, a.rooms, a.rate), (5000, 500, 5000.0));
        let Cmd::Idle(a) = Cli::parse_from(["loadgen", "idle"]).cmd else {
            panic!()
        };
        assert_eq!((a.conns, a.rooms, a.hold), (19000, 1000, 5.0));
        let Cmd::Bigroom(a) = Cli::parse_from(["loadgen", "bigroom"]).cmd else {
            panic!()
        };
        assert_eq!((a.conns, a.rate), (19000, 20.0));
        let Cmd::Connect(a) = Cli::parse_from(["loadgen", "connect"]).cmd else {
            panic!()
        };
        assert_eq!(a.conns, 10000);
        let Cmd::Rtt(a) = Cli::parse_from(["loadgen", "rtt"]).cmd else {
            panic!()
        };
        assert_eq!((a.conns, a.rate, a.duration), (1, 1000.0, 10.0));
        let Cmd::Ramp(a) = Cli::parse_from(["loadgen", "ramp", "--rates", "200,400"]).cmd else {
            panic!()
        };
        assert_eq!(a.rates, vec![200.0, 400.0]);
        assert_eq!(a.step_secs, 8.0);
    }

    #[test]
    fn acks_defaults_and_flags() {
        let Cmd::Acks(a) = Cli::parse_from(["loadgen", "acks"]).cmd else {
            panic!()
        };
        assert_eq!((a.conns, a.rooms, a.window, a.body), (50, 1, 1, 64));
        assert_eq!((a.rate, a.duration, a.warmup), (0.0, 10.0, 2.0));
        assert_eq!(a.common.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(a.common.target, Target::Corechat);
        assert_eq!(a.common.threads, 1);
        let Cmd::Acks(a) = Cli::parse_from([
            "loadgen",
            "acks",
            "--conns",
            "4",
            "--rooms",
            "1000",
            "--window",
            "8",
            "--rate",
            "5000",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--body",
            "200",
        ])
        .cmd
        else {
            panic!()
        };
        assert_eq!((a.conns, a.rooms, a.window, a.body), (4, 1000, 8, 200));
        assert_eq!((a.rate, a.duration, a.warmup), (5000.0, 2.0, 0.5));
    }

    #[test]
    fn abuse_defaults() {
        let Cmd::Abuse(a) = Cli::parse_from(["loadgen", "abuse"]).cmd else {
            panic!()
        };
        assert_eq!(a.shapes.len(), crate::abuse::SHAPES.len());
        assert_eq!(a.shapes, crate::abuse::SHAPES);
        assert_eq!((a.duration, a.http_conns, a.http_requests), (10.0, 3, 6000));
        assert_eq!((a.backlog, a.pipeline, a.read_spam), (600, 64, 300));
        assert_eq!(a.partial_conns, 1000);
        let Cmd::Abuse(a) =
            Cli::parse_from(["loadgen", "abuse", "--shapes", "read-spam,room-churn"]).cmd
        else {
            panic!()
        };
        assert_eq!(a.shapes, ["read-spam", "room-churn"]);
    }

    #[test]
    fn urls() {
        let u = WsUrl::parse("ws://127.0.0.1:9101/ws").unwrap();
        assert_eq!(
            u,
            WsUrl {
                host: "127.0.0.1".into(),
                port: 9101,
                path: "/ws".into(),
                tls: false,
            }
        );
        assert_eq!(u.host_header(), "127.0.0.1:9101");
        let u = WsUrl::parse("ws://localhost:8080/ws?x=1").unwrap();
        assert_eq!(u.path, "/ws?x=1");
        let u = WsUrl::parse("ws://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/ws")
        );
        assert_eq!(u.host_header(), "[::1]:8080");
        let u = WsUrl::parse("wss://localhost/ws").unwrap();
        assert_eq!((u.port, u.tls), (443, true));
        let u = WsUrl::parse("wss://127.0.0.1:9443/ws").unwrap();
        assert_eq!((u.port, u.tls, u.path.as_str()), (9443, true, "/ws"));
    }

    #[test]
    fn source_ip_ranges() {
        let v = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        assert_eq!(
            v,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]
                .iter()
                .map(|s| s.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        );
        assert_eq!(parse_source_ips("127.0.0.255-127.0.1.1").unwrap().len(), 3);
        assert!(parse_source_ips("127.0.0.5-127.0.0.4").is_err());
    }
}
