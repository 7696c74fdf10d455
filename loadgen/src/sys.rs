//! Clocks, resource limits, and /proc sampling (server CPU and memory, host facts).

use std::fs;
use std::path::Path;

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns: the send-time stamp in bodies (same clock in every process on the
/// host, so several load generator processes agree).
#[inline]
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread in ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// user+system CPU time of this process in ns (getrusage).
pub fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns (soft, hard) after.
pub fn raise_nofile() -> (u64, u64) {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return (0, 0);
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        (rl.rlim_cur, rl.rlim_max)
    }
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// One sample of a process's CPU time and memory from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub at_ns: u64,
    pub cpu_ns: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
}

/// Parse utime+stime (ns) from the text of /proc/PID/stat.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // fields after the last ')' : state(3) ppid(4) ... utime(14) stime(15)
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / clk_tck())
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn sample_proc(pid: u32) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        at_ns: mono_ns(),
        cpu_ns: parse_stat_cpu(&stat)?,
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
        threads: status_kib(&status, "Threads:"),
    })
}

/// Per-core (busy, total) jiffies from /proc/stat.
pub fn core_times() -> Vec<(u64, u64)> {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Busy % of each core between two `core_times()` samples.
pub fn core_busy_pct(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dt = y.1.saturating_sub(x.1);
            if dt == 0 {
                0.0
            } else {
                (y.0.saturating_sub(x.0)) as f64 * 100.0 / dt as f64
            }
        })
        .collect()
}

pub fn host_facts() -> serde_json::Value {
    // SAFETY: sysconf has no preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
    let allowed = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let online = fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .map(|s| status_kib(&s, "MemTotal:"))
        .unwrap_or(0);
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let sysctl = |p: &str| {
        fs::read_to_string(Path::new("/proc/sys").join(p))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let (soft, hard) = raise_nofile();
    serde_json::json!({
        "nproc": nproc,
        "cpus_online": online,
        "loadgen_cpus_allowed": allowed,
        "kernel": kernel,
        "cpu_model": cpu,
        "mem_total_kib": mem_kib,
        "hostname": hostname,
        "nofile_soft": soft,
        "nofile_hard": hard,
        "sysctl": {
            "net.core.somaxconn": sysctl("net/core/somaxconn"),
            "net.ipv4.ip_local_port_range": sysctl("net/ipv4/ip_local_port_range"),
            "net.ipv4.tcp_max_syn_backlog": sysctl("net/ipv4/tcp_max_syn_backlog"),
        },
    })
}

/// `git rev-parse HEAD` in the current directory (None outside a repo or without commits).
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_spaces_in_comm() {
        let tck = clk_tck();
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu(line), Some(300 * 1_000_000_000 / tck));
    }

    #[test]
    fn self_sampling_works() {
        let s = sample_proc(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
        let (soft, hard) = raise_nofile();
        assert_eq!(soft, hard);
        assert!(!core_times().is_empty());
    }
}
