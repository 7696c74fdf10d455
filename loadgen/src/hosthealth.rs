//! Host disturbance around a run: TCP retransmits and timeouts, loopback packet drops, and
//! CPU steal, read from /proc before and after.
//!
//! Why: on loopback nothing should be retransmitted or dropped. When the host is overloaded
//! (a small `net.core.netdev_max_backlog`, a starved VM) the kernel drops packets or its
//! timers fire before the ACK arrives; every connect and delivery then waits for a
//! retransmit, and a run reports a tenth of the server's rate without saying why. These
//! counters are host-wide (other processes' traffic counts too), which is what we want: they
//! tell whether the host was fit to measure on, not who disturbed it.

use serde_json::{json, Value};
use std::fs;

/// Counters read from /proc at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostCounters {
    pub tcp_out_segs: u64,
    pub tcp_retrans_segs: u64,
    pub tcp_timeouts: u64,
    pub softnet_dropped: u64,
    pub steal_jiffies: u64,
    pub total_jiffies: u64,
}

/// What changed between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostHealth {
    pub tcp_out_segs: u64,
    pub tcp_retrans_segs: u64,
    pub tcp_timeouts: u64,
    pub loopback_drops: u64,
    pub steal_pct: f64,
}

/// A run counts as disturbed above these.
const MAX_RETRANS_FRACTION: f64 = 0.001;
const MAX_STEAL_PCT: f64 = 5.0;

/// The value of `key` in a /proc/net/snmp or /proc/net/netstat table: each table is a header
/// line (`Tcp: RtoAlgorithm ... RetransSegs ...`) followed by a value line with the same prefix.
pub fn proc_net_value(text: &str, table: &str, key: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let Some(head) = lines.next() {
        let Some(names) = head.strip_prefix(table) else {
            continue;
        };
        let values = lines.next()?.strip_prefix(table)?;
        let i = names.split_whitespace().position(|n| n == key)?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// Packets dropped by the per-CPU backlog (second column of /proc/net/softnet_stat, hex),
/// summed over CPUs. Loopback traffic goes through that backlog.
pub fn softnet_dropped(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum()
}

/// (steal, total) jiffies of the aggregate `cpu` line of /proc/stat.
pub fn cpu_steal(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total = v.iter().take(8).sum();
    Some((v.get(7).copied().unwrap_or(0), total))
}

pub fn sample() -> HostCounters {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let snmp = read("/proc/net/snmp");
    let netstat = read("/proc/net/netstat");
    let (steal, total) = cpu_steal(&read("/proc/stat")).unwrap_or((0, 0));
    HostCounters {
        tcp_out_segs: proc_net_value(&snmp, "Tcp:", "OutSegs").unwrap_or(0),
        tcp_retrans_segs: proc_net_value(&snmp, "Tcp:", "RetransSegs").unwrap_or(0),
        tcp_timeouts: proc_net_value(&netstat, "TcpExt:", "TCPTimeouts").unwrap_or(0),
        softnet_dropped: softnet_dropped(&read("/proc/net/softnet_stat")),
        steal_jiffies: steal,
        total_jiffies: total,
    }
}

impl HostHealth {
    pub fn between(a: &HostCounters, b: &HostCounters) -> HostHealth {
        let total = b.total_jiffies.saturating_sub(a.total_jiffies);
        let steal = b.steal_jiffies.saturating_sub(a.steal_jiffies);
        HostHealth {
            tcp_out_segs: b.tcp_out_segs.saturating_sub(a.tcp_out_segs),
            tcp_retrans_segs: b.tcp_retrans_segs.saturating_sub(a.tcp_retrans_segs),
            tcp_timeouts: b.tcp_timeouts.saturating_sub(a.tcp_timeouts),
            loopback_drops: b.softnet_dropped.saturating_sub(a.softnet_dropped),
            steal_pct: if total == 0 {
                0.0
            } else {
                steal as f64 * 100.0 / total as f64
            },
        }
    }

    pub fn retrans_fraction(&self) -> f64 {
        self.tcp_retrans_segs as f64 / self.tcp_out_segs.max(1) as f64
    }

    /// Why the host was unfit to measure on, or None when it was fit.
    pub fn disturbed(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.loopback_drops > 0 {
            why.push(format!(
                "{} packets dropped by the kernel's backlog (raise net.core.netdev_max_backlog: scripts/tune-host.sh)",
                self.loopback_drops
            ));
        }
        if self.retrans_fraction() > MAX_RETRANS_FRACTION {
            why.push(format!(
                "{} TCP segments retransmitted ({:.2}% of {}), {} retransmit timeouts",
                self.tcp_retrans_segs,
                self.retrans_fraction() * 100.0,
                self.tcp_out_segs,
                self.tcp_timeouts
            ));
        }
        if self.steal_pct > MAX_STEAL_PCT {
            why.push(format!(
                "{:.1}% of CPU time stolen by the hypervisor",
                self.steal_pct
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// One line for the run's text report.
    pub fn line(&self) -> String {
        match self.disturbed() {
            Some(why) => format!(
                "WARNING: the host was disturbed during the run: {why}. Figures are bounded by the host, not comparable with a clean run"
            ),
            None => format!(
                "host: clean ({} retransmits of {} segments, {} drops, steal {:.1}%)",
                self.tcp_retrans_segs, self.tcp_out_segs, self.loopback_drops, self.steal_pct
            ),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tcp_out_segs": self.tcp_out_segs,
            "tcp_retrans_segs": self.tcp_retrans_segs,
            "tcp_timeouts": self.tcp_timeouts,
            "loopback_drops": self.loopback_drops,
            "steal_pct": (self.steal_pct * 10.0).round() / 10.0,
            "disturbed": self.disturbed(),
        })
    }
}

/// The reason a result folder's summary gives for a disturbed host, if any.
pub fn disturbed_in(summary: &Value) -> Option<&str> {
    summary["host_health"]["disturbed"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
Tcp: 1 200 120000 -1 19000 19000 0 0 4 449633 437896 11737 0 12 0\n\
Udp: InDatagrams NoPorts\nUdp: 5 0\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\nTcpExt: 0 726 11011\n\
IpExt: InNoRoutes\nIpExt: 0\n";

    #[test]
    fn reads_tables_by_header_name() {
        assert_eq!(proc_net_value(SNMP, "Tcp:", "OutSegs"), Some(437896));
        assert_eq!(proc_net_value(SNMP, "Tcp:", "RetransSegs"), Some(11737));
        assert_eq!(proc_net_value(NETSTAT, "TcpExt:", "TCPTimeouts"), Some(726));
        assert_eq!(proc_net_value(SNMP, "Tcp:", "NoSuchKey"), None);
        assert_eq!(proc_net_value(SNMP, "Nope:", "OutSegs"), None);
    }

    #[test]
    fn sums_softnet_drops_in_hex_and_reads_steal() {
        let softnet = "000c4c5e 000090b3 00000023\n00125eb3 00005d49 00000078\n";
        assert_eq!(softnet_dropped(softnet), 0x90b3 + 0x5d49);
        let stat = "cpu  100 0 50 800 0 0 10 40 0 0\ncpu0 50 0 25 400 0 0 5 20 0 0\n";
        assert_eq!(cpu_steal(stat), Some((40, 1000)));
    }

    #[test]
    fn flags_drops_retransmits_and_steal_but_not_a_clean_run() {
        let a = HostCounters {
            tcp_out_segs: 1000,
            total_jiffies: 1000,
            ..Default::default()
        };
        let clean = HostCounters {
            tcp_out_segs: 101_000,
            tcp_retrans_segs: 50,
            total_jiffies: 2000,
            steal_jiffies: 10,
            ..Default::default()
        };
        let h = HostHealth::between(&a, &clean);
        assert_eq!(h.disturbed(), None, "{h:?}");
        assert!(h.line().starts_with("host: clean"));

        let bad = HostCounters {
            tcp_retrans_segs: 5000,
            softnet_dropped: 7,
            steal_jiffies: 200,
            ..clean
        };
        let h = HostHealth::between(&a, &bad);
        let why = h.disturbed().expect("disturbed");
        assert!(why.contains("7 packets dropped"), "{why}");
        assert!(why.contains("5000 TCP segments retransmitted"), "{why}");
        assert!(why.contains("20.0% of CPU time stolen"), "{why}");
        assert_eq!(
            disturbed_in(&json!({ "host_health": h.to_json() })),
            Some(why.as_str())
        );
    }

    #[test]
    fn this_host_can_be_sampled() {
        let s = sample();
        assert!(s.total_jiffies > 0, "{s:?}");
        let later = sample();
        assert!(later.tcp_out_segs >= s.tcp_out_segs);
    }
}
