//! Per-shard counters, rendered as Prometheus text.
//!
//! Each shard owns one `ShardMetrics` and is its only writer (relaxed atomic
//! adds, no lock); `/metrics` reads every shard's copy. The fan-out latency
//! is recorded into a shard-local `hdrhistogram` and exported into fixed
//! Prometheus buckets once per housekeeping tick, so the per-message path
//! never touches shared state for it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection ended; one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    ClientClose,
    PeerReset,
    Protocol,
    Binary,
    InvalidUtf8,
    TooBig,
    Policy,
    TokenExpired,
    Abuse,
    SlowConsumer,
    HeartbeatTimeout,
    HandshakeTimeout,
    Shutdown,
    HttpDone,
    IoError,
    /// Not TLS, a TLS alert, or a failed handshake (`--tls-cert` only).
    TlsError,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 16] = [
        DisconnectReason::ClientClose,
        DisconnectReason::PeerReset,
        DisconnectReason::Protocol,
        DisconnectReason::Binary,
        DisconnectReason::InvalidUtf8,
        DisconnectReason::TooBig,
        DisconnectReason::Policy,
        DisconnectReason::TokenExpired,
        DisconnectReason::Abuse,
        DisconnectReason::SlowConsumer,
        DisconnectReason::HeartbeatTimeout,
        DisconnectReason::HandshakeTimeout,
        DisconnectReason::Shutdown,
        DisconnectReason::HttpDone,
        DisconnectReason::IoError,
        DisconnectReason::TlsError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DisconnectReason::ClientClose => "client_close",
            DisconnectReason::PeerReset => "peer_reset",
            DisconnectReason::Protocol => "protocol_error",
            DisconnectReason::Binary => "binary_frame",
            DisconnectReason::InvalidUtf8 => "invalid_utf8",
            DisconnectReason::TooBig => "too_big",
            DisconnectReason::Policy => "policy",
            DisconnectReason::TokenExpired => "token_expired",
            DisconnectReason::Abuse => "abuse",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
            DisconnectReason::HandshakeTimeout => "handshake_timeout",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::HttpDone => "http_done",
            DisconnectReason::IoError => "io_error",
            DisconnectReason::TlsError => "tls_error",
        }
    }

    /// The reason a close code sent by the server stands for.
    pub fn from_close_code(code: u16) -> DisconnectReason {
        match code {
            1001 => DisconnectReason::Shutdown,
            1002 => DisconnectReason::Protocol,
            1003 => DisconnectReason::Binary,
            1007 => DisconnectReason::InvalidUtf8,
            1009 => DisconnectReason::TooBig,
            1013 => DisconnectReason::SlowConsumer,
            _ => DisconnectReason::Policy,
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Upper bounds (seconds) of the exported fan-out latency buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds (seconds) of the loop-turn histogram: how long a shard's
/// event loop works between two waits. A turn longer than a few ms delays
/// every connection of the shard by as much (a tail in everyone's p99.9).
pub const TURN_BUCKETS: [f64; 11] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Counters of one shard.
#[derive(Default)]
pub struct ShardMetrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub http_requests: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub publishes: AtomicU64,
    pub deliveries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rejected_upgrades: AtomicU64,
    pub accept_errors: AtomicU64,
    pub errors_sent: AtomicU64,
    pub bus_batches_out: AtomicU64,
    pub broker_gap_frames: AtomicU64,
    pub frames_compressed: AtomicU64,
    pub tls_handshakes: AtomicU64,
    disconnects: [AtomicU64; 16],
    /// Cumulative bucket counts (Prometheus `le` semantics), then +Inf.
    latency_buckets: [AtomicU64; 17],
    latency_sum_us: AtomicU64,
    /// Per-bucket (not cumulative) loop-turn counts, then the over-the-top one.
    turn_buckets: [AtomicU64; 12],
    turn_sum_us: AtomicU64,
}

impl ShardMetrics {
    /// One turn of the shard's loop took `us` microseconds of work.
    pub fn record_turn(&self, us: u64) {
        let i = TURN_BUCKETS
            .iter()
            .position(|b| us <= (b * 1e6) as u64)
            .unwrap_or(TURN_BUCKETS.len());
        inc(&self.turn_buckets[i]);
        add(&self.turn_sum_us, us);
    }
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl ShardMetrics {
    pub fn disconnect(&self, reason: DisconnectReason) {
        inc(&self.disconnects[reason.index()]);
    }

    pub fn disconnects(&self, reason: DisconnectReason) -> u64 {
        self.disconnects[reason.index()].load(Relaxed)
    }

    /// Publishes a snapshot of the shard's fan-out latency histogram (µs).
    pub fn export_latency(&self, hist: &hdrhistogram::Histogram<u64>) {
        // One walk of the recorded values, not one per bucket: this runs on
        // the shard's loop every second, and sixteen walks of a histogram
        // with tens of thousands of slots stalled it for milliseconds (a
        // step in everyone's p99.9).
        let mut counts = [0u64; LATENCY_BUCKETS.len()];
        let bounds_us = LATENCY_BUCKETS.map(|b| (b * 1e6) as u64);
        let mut first = 0;
        for v in hist.iter_recorded() {
            let at = v.value_iterated_to();
            while first < bounds_us.len() && at > bounds_us[first] {
                first += 1;
            }
            if first == bounds_us.len() {
                break;
            }
            counts[first] += v.count_at_value();
        }
        let mut cumulative = 0;
        for (slot, count) in self.latency_buckets.iter().zip(counts) {
            cumulative += count;
            slot.store(cumulative, Relaxed);
        }
        self.latency_buckets[LATENCY_BUCKETS.len()].store(hist.len(), Relaxed);
        let sum = (hist.mean() * hist.len() as f64) as u64;
        self.latency_sum_us.store(sum, Relaxed);
    }
}

/// One shard's series of a histogram family: `cumulative` holds a count
/// per bound of `bounds` and then the +Inf one; `sum_us` in microseconds.
fn write_histogram(
    out: &mut String,
    name: &str,
    shard: usize,
    bounds: &[f64],
    cumulative: impl Iterator<Item = u64>,
    sum_us: u64,
) {
    let mut total = 0;
    for (i, count) in cumulative.enumerate() {
        total = count;
        match bounds.get(i) {
            Some(bound) => {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{shard=\"{shard}\",le=\"{bound}\"}} {count}"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {count}"
                );
            }
        }
    }
    let sum = sum_us as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
    let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {total}");
}

/// One line of help per metric family (`# HELP`), by family name.
const HELP: &[(&str, &str)] = &[
    (
        "corechat_connections_open",
        "Connections open now (WebSocket and HTTP), per shard.",
    ),
    (
        "corechat_connections_total",
        "Connections accepted since start, per shard.",
    ),
    (
        "corechat_http_requests_total",
        "Plain HTTP requests served (API, assets, health, metrics), per shard.",
    ),
    (
        "corechat_frames_in_total",
        "WebSocket data frames received from clients, per shard.",
    ),
    (
        "corechat_frames_out_total",
        "WebSocket frames queued to clients, per shard.",
    ),
    (
        "corechat_bytes_in_total",
        "Bytes read from client sockets, per shard.",
    ),
    (
        "corechat_bytes_out_total",
        "Bytes written to client sockets, per shard.",
    ),
    (
        "corechat_publishes_total",
        "Messages published (publish, dm and the HTTP API) and numbered by their room's home shard.",
    ),
    (
        "corechat_broker_gap_frames_total",
        "Cluster mode: numbered frames (room messages, DMs) that pub/sub did not bring and were read from the Redis stream instead, per shard.",
    ),
    (
        "corechat_deliveries_total",
        "Message frames queued to member connections (fan-out), per shard.",
    ),
    (
        "corechat_rate_limited_total",
        "Requests refused with rate_limited, per shard.",
    ),
    (
        "corechat_auth_failures_total",
        "Tokens refused (missing, malformed, wrongly signed, expired) on upgrade or HTTP API, per shard.",
    ),
    (
        "corechat_rejected_upgrades_total",
        "WebSocket upgrades refused (bad request, origin, per-IP caps, draining), per shard.",
    ),
    (
        "corechat_accept_errors_total",
        "Errors from accept() on the listening socket, per shard.",
    ),
    (
        "corechat_errors_sent_total",
        "Error frames sent to clients, per shard.",
    ),
    (
        "corechat_bus_batches_out_total",
        "Batches of messages sent to other shards over the bus, per shard.",
    ),
    (
        "corechat_frames_compressed_total",
        "Server frames compressed (permessage-deflate): once per room message, shared by its members.",
    ),
    (
        "corechat_tls_handshakes_total",
        "TLS handshakes completed (--tls-cert), per shard.",
    ),
    (
        "corechat_disconnects_total",
        "Connections ended, by shard and reason.",
    ),
    (
        "corechat_fanout_latency_seconds",
        "Time from a message's arrival to its frame being queued on a member connection, per shard.",
    ),
    (
        "corechat_loop_turn_seconds",
        "Work of one event-loop turn (from the wake-up to the next wait), per shard: long turns delay every connection of the shard.",
    ),
    (
        "corechat_open_fds",
        "File descriptors open in the process.",
    ),
];

/// The help text of a family; a generic one for a name not listed.
pub fn help(name: &str) -> &'static str {
    HELP.iter()
        .find(|(n, _)| *n == name)
        .map_or("corechat metric.", |(_, h)| h)
}

/// `# HELP` and `# TYPE` lines of one family.
fn header(out: &mut String, name: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help(name));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every shard's counters, plus process-wide gauges given by the caller.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>], extra: &[(&str, &str, f64)]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    type Getter = fn(&ShardMetrics) -> &AtomicU64;
    let counters: [(&str, &str, Getter); 18] = [
        ("corechat_connections_open", "gauge", |m| {
            &m.connections_open
        }),
        ("corechat_connections_total", "counter", |m| {
            &m.connections_total
        }),
        ("corechat_http_requests_total", "counter", |m| {
            &m.http_requests
        }),
        ("corechat_frames_in_total", "counter", |m| &m.frames_in),
        ("corechat_frames_out_total", "counter", |m| &m.frames_out),
        ("corechat_bytes_in_total", "counter", |m| &m.bytes_in),
        ("corechat_bytes_out_total", "counter", |m| &m.bytes_out),
        ("corechat_publishes_total", "counter", |m| &m.publishes),
        ("corechat_deliveries_total", "counter", |m| &m.deliveries),
        ("corechat_broker_gap_frames_total", "counter", |m| {
            &m.broker_gap_frames
        }),
        ("corechat_rate_limited_total", "counter", |m| {
            &m.rate_limited
        }),
        ("corechat_auth_failures_total", "counter", |m| {
            &m.auth_failures
        }),
        ("corechat_rejected_upgrades_total", "counter", |m| {
            &m.rejected_upgrades
        }),
        ("corechat_accept_errors_total", "counter", |m| {
            &m.accept_errors
        }),
        ("corechat_errors_sent_total", "counter", |m| &m.errors_sent),
        ("corechat_bus_batches_out_total", "counter", |m| {
            &m.bus_batches_out
        }),
        ("corechat_frames_compressed_total", "counter", |m| {
            &m.frames_compressed
        }),
        ("corechat_tls_handshakes_total", "counter", |m| {
            &m.tls_handshakes
        }),
    ];
    for (name, kind, get) in counters {
        header(&mut out, name, kind);
        for (shard, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(m).load(Relaxed));
        }
    }
    header(&mut out, "corechat_disconnects_total", "counter");
    for (shard, m) in shards.iter().enumerate() {
        for reason in DisconnectReason::ALL {
            let _ = writeln!(
                out,
                "corechat_disconnects_total{{shard=\"{shard}\",reason=\"{}\"}} {}",
                reason.label(),
                m.disconnects(reason)
            );
        }
    }
    let name = "corechat_fanout_latency_seconds";
    header(&mut out, name, "histogram");
    for (shard, m) in shards.iter().enumerate() {
        // Already cumulative, +Inf last.
        let counts = m.latency_buckets.iter().map(|c| c.load(Relaxed));
        let sum = m.latency_sum_us.load(Relaxed);
        write_histogram(&mut out, name, shard, &LATENCY_BUCKETS, counts, sum);
    }
    let name = "corechat_loop_turn_seconds";
    header(&mut out, name, "histogram");
    for (shard, m) in shards.iter().enumerate() {
        let counts = m.turn_buckets.iter().scan(0, |total, c| {
            *total += c.load(Relaxed);
            Some(*total)
        });
        let sum = m.turn_sum_us.load(Relaxed);
        write_histogram(&mut out, name, shard, &TURN_BUCKETS, counts, sum);
    }
    for (name, kind, value) in extra {
        header(&mut out, name, kind);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn latency_buckets_match_a_walk_per_bucket() {
        let m = ShardMetrics::default();
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        // Values on, around and between the bounds, and past the last one.
        let mut v = 1u64;
        while v < 10_000_000 {
            for x in [v, v + 1, v.saturating_sub(1).max(1)] {
                h.record(x).unwrap();
            }
            v = v * 5 / 4 + 1;
        }
        for b in LATENCY_BUCKETS {
            h.record((b * 1e6) as u64).unwrap();
        }
        m.export_latency(&h);
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let us = (b * 1e6) as u64;
            let naive: u64 = h
                .iter_recorded()
                .filter(|x| x.value_iterated_to() <= us)
                .map(|x| x.count_at_value())
                .sum();
            assert_eq!(m.latency_buckets[i].load(Relaxed), naive, "le {b}");
        }
        assert_eq!(
            m.latency_buckets[LATENCY_BUCKETS.len()].load(Relaxed),
            h.len()
        );
    }

    #[test]
    fn renders_counters_and_histogram() {
        let m = Arc::new(ShardMetrics::default());
        inc(&m.connections_total);
        add(&m.bytes_in, 42);
        m.disconnect(DisconnectReason::SlowConsumer);
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        h.record(30).unwrap(); // 30 µs
        h.record(2_000).unwrap(); // 2 ms
        m.export_latency(&h);
        let text = render(
            &[m.clone(), Arc::new(ShardMetrics::default())],
            &[("corechat_up", "gauge", 1.0)],
        );
        assert!(text.contains("corechat_connections_total{shard=\"0\"} 1"));
        assert!(text.contains("corechat_connections_total{shard=\"1\"} 0"));
        assert!(text.contains("corechat_bytes_in_total{shard=\"0\"} 42"));
        assert!(text.contains("corechat_disconnects_total{shard=\"0\",reason=\"slow_consumer\"} 1"));
        assert!(
            text.contains("corechat_fanout_latency_seconds_bucket{shard=\"0\",le=\"0.000025\"} 0")
        );
        assert!(
            text.contains("corechat_fanout_latency_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1")
        );
        assert!(
            text.contains("corechat_fanout_latency_seconds_bucket{shard=\"0\",le=\"0.0025\"} 2")
        );
        assert!(text.contains("corechat_fanout_latency_seconds_count{shard=\"0\"} 2"));
        m.record_turn(30); // 30 µs
        m.record_turn(3_000); // 3 ms
        m.record_turn(500_000); // 0.5 s: past the last bound
        let text = render(std::slice::from_ref(&m), &[("corechat_up", "gauge", 1.0)]);
        assert!(text.contains("corechat_loop_turn_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1"));
        assert!(text.contains("corechat_loop_turn_seconds_bucket{shard=\"0\",le=\"0.0025\"} 1"));
        assert!(text.contains("corechat_loop_turn_seconds_bucket{shard=\"0\",le=\"0.005\"} 2"));
        assert!(text.contains("corechat_loop_turn_seconds_bucket{shard=\"0\",le=\"0.1\"} 2"));
        assert!(text.contains("corechat_loop_turn_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3"));
        assert!(text.contains("corechat_loop_turn_seconds_count{shard=\"0\"} 3"));
        assert!(text.contains("corechat_up 1"));
    }

    /// Every family has exactly one `# HELP` (with a real text) and one
    /// `# TYPE`, HELP first, and every sample belongs to a declared family.
    #[test]
    fn every_family_has_help_and_type() {
        let text = render(
            &[
                Arc::new(ShardMetrics::default()),
                Arc::new(ShardMetrics::default()),
            ],
            &[("corechat_open_fds", "gauge", 12.0)],
        );
        let mut helps: Vec<&str> = Vec::new();
        let mut types: Vec<(&str, &str)> = Vec::new();
        let mut last_help: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help_text) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help_text.trim().is_empty(), "{line}");
                assert_ne!(
                    help_text, "corechat metric.",
                    "{name} has no help of its own"
                );
                assert!(!helps.contains(&name), "HELP twice for {name}");
                helps.push(name);
                last_help = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert_eq!(
                    last_help,
                    Some(name),
                    "HELP must come right before TYPE of {name}"
                );
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    types.iter().all(|(n, _)| *n != name),
                    "TYPE twice for {name}"
                );
                types.push((name, kind));
                last_help = None;
            } else {
                let sample = line.split(['{', ' ']).next().unwrap();
                let family = types
                    .iter()
                    .find(|(n, kind)| {
                        sample == *n
                            || (*kind == "histogram"
                                && ["_bucket", "_sum", "_count"]
                                    .iter()
                                    .any(|s| sample.strip_suffix(s) == Some(n)))
                    })
                    .map(|(n, _)| *n);
                assert_eq!(
                    family,
                    types.last().map(|(n, _)| *n),
                    "sample {sample} outside its family"
                );
            }
        }
        assert_eq!(helps.len(), types.len());
        // the names and types stay as they were
        for (name, kind) in [
            ("corechat_connections_open", "gauge"),
            ("corechat_connections_total", "counter"),
            ("corechat_http_requests_total", "counter"),
            ("corechat_frames_in_total", "counter"),
            ("corechat_frames_out_total", "counter"),
            ("corechat_bytes_in_total", "counter"),
            ("corechat_bytes_out_total", "counter"),
            ("corechat_publishes_total", "counter"),
            ("corechat_deliveries_total", "counter"),
            ("corechat_broker_gap_frames_total", "counter"),
            ("corechat_rate_limited_total", "counter"),
            ("corechat_auth_failures_total", "counter"),
            ("corechat_rejected_upgrades_total", "counter"),
            ("corechat_accept_errors_total", "counter"),
            ("corechat_errors_sent_total", "counter"),
            ("corechat_bus_batches_out_total", "counter"),
            ("corechat_frames_compressed_total", "counter"),
            ("corechat_tls_handshakes_total", "counter"),
            ("corechat_disconnects_total", "counter"),
            ("corechat_fanout_latency_seconds", "histogram"),
            ("corechat_loop_turn_seconds", "histogram"),
            ("corechat_open_fds", "gauge"),
        ] {
            assert!(types.contains(&(name, kind)), "{name} {kind} missing");
        }
        assert_eq!(types.len(), 22);
    }
}
