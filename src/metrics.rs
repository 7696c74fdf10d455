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
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 15] = [
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
    disconnects: [AtomicU64; 15],
    /// Cumulative bucket counts (Prometheus `le` semantics), then +Inf.
    latency_buckets: [AtomicU64; 17],
    latency_sum_us: AtomicU64,
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
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let us = (bound * 1e6) as u64;
            let count: u64 = hist
                .iter_recorded()
                .filter(|v| v.value_iterated_to() <= us)
                .map(|v| v.count_at_value())
                .sum();
            self.latency_buckets[i].store(count, Relaxed);
        }
        self.latency_buckets[LATENCY_BUCKETS.len()].store(hist.len(), Relaxed);
        let sum = (hist.mean() * hist.len() as f64) as u64;
        self.latency_sum_us.store(sum, Relaxed);
    }
}

/// Renders every shard's counters, plus process-wide gauges given by the caller.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>], extra: &[(&str, &str, f64)]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    type Getter = fn(&ShardMetrics) -> &AtomicU64;
    let counters: [(&str, &str, Getter); 15] = [
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
    ];
    for (name, kind, get) in counters {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (shard, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(m).load(Relaxed));
        }
    }
    let _ = writeln!(out, "# TYPE corechat_disconnects_total counter");
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
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (shard, m) in shards.iter().enumerate() {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"{bound}\"}} {}",
                m.latency_buckets[i].load(Relaxed)
            );
        }
        let total = m.latency_buckets[LATENCY_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {total}"
        );
        let sum = m.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {total}");
    }
    for (name, kind, value) in extra {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
        assert!(text.contains("corechat_up 1"));
    }
}
