//! Admission limits: per-IP connection and upgrade caps shared by all shards,
//! and the per-connection token bucket.
//!
//! The IP table is touched once per upgrade and once per close, never per
//! message, so a lock striped over 16 maps is cheap enough here.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

const STRIPES: usize = 16;

#[derive(Default)]
struct IpEntry {
    conns: u32,
    window_sec: u64,
    upgrades_in_window: u32,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    TooManyConnections,
    TooManyUpgrades,
}

pub struct IpLimiter {
    max_conns: u32,
    max_upgrades_per_sec: u32,
    hasher: RandomState,
    stripes: Vec<Mutex<HashMap<IpAddr, IpEntry>>>,
}

impl IpLimiter {
    pub fn new(max_conns: u32, max_upgrades_per_sec: u32) -> Self {
        IpLimiter {
            max_conns,
            max_upgrades_per_sec,
            hasher: RandomState::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn stripe(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, IpEntry>> {
        &self.stripes[(self.hasher.hash_one(ip) as usize) % STRIPES]
    }

    /// Admits one more upgrade from `ip` at second `now_sec`, counting it.
    pub fn try_admit(&self, ip: IpAddr, now_sec: u64) -> Result<(), IpRefusal> {
        let mut map = self.stripe(&ip).lock();
        let entry = map.entry(ip).or_default();
        if entry.window_sec != now_sec {
            entry.window_sec = now_sec;
            entry.upgrades_in_window = 0;
        }
        if entry.conns >= self.max_conns {
            return Err(IpRefusal::TooManyConnections);
        }
        if entry.upgrades_in_window >= self.max_upgrades_per_sec {
            return Err(IpRefusal::TooManyUpgrades);
        }
        entry.upgrades_in_window += 1;
        entry.conns += 1;
        Ok(())
    }

    /// Releases a connection admitted by `try_admit`. The entry is kept
    /// while its upgrade window is current, so that closing connections
    /// quickly does not reset the upgrade count.
    pub fn release(&self, ip: IpAddr, now_sec: u64) {
        let mut map = self.stripe(&ip).lock();
        if let Some(entry) = map.get_mut(&ip) {
            entry.conns = entry.conns.saturating_sub(1);
            if entry.conns == 0 && entry.window_sec != now_sec {
                map.remove(&ip);
            }
        }
    }
}

/// Token bucket over publish, dm and typing (PROTOCOL.md 5.4).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: u64,
    /// Requests refused in the current one-second window, to spot abuse.
    refused_in_window: u32,
    window_start_ms: u64,
}

/// The bucket's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Refused; retry after this many ms.
    No {
        retry_after_ms: u64,
    },
    /// Refused, and the client keeps sending at several times its rate after
    /// being told: close with 1008.
    Abuse,
}

/// How many times its rate a told client may keep sending before it is
/// treated as abuse.
const ABUSE_FACTOR: f64 = 3.0;

impl TokenBucket {
    pub fn new(burst: u32, now_ms: u64) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            last_ms: now_ms,
            refused_in_window: 0,
            window_start_ms: now_ms,
        }
    }

    pub fn admit(&mut self, rate_per_sec: u32, burst: u32, now_ms: u64) -> Admit {
        let rate = f64::from(rate_per_sec.max(1));
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Yes;
        }
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if f64::from(self.refused_in_window) > ABUSE_FACTOR * rate + f64::from(burst) {
            return Admit::Abuse;
        }
        let retry_after_ms = (((1.0 - self.tokens) / rate) * 1000.0).ceil() as u64;
        Admit::No {
            retry_after_ms: retry_after_ms.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_caps_connections_and_upgrades() {
        let lim = IpLimiter::new(2, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(lim.try_admit(ip, 1).is_ok());
        assert!(lim.try_admit(ip, 1).is_ok());
        assert_eq!(lim.try_admit(ip, 1), Err(IpRefusal::TooManyConnections));
        lim.release(ip, 1);
        assert!(lim.try_admit(ip, 1).is_ok());
        lim.release(ip, 1);
        lim.release(ip, 1);
        // Three upgrades already in second 1.
        assert_eq!(lim.try_admit(ip, 1), Err(IpRefusal::TooManyUpgrades));
        assert!(lim.try_admit(ip, 2).is_ok());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(lim.try_admit(other, 2).is_ok());
    }

    #[test]
    fn bucket_refills_and_flags_abuse() {
        let mut b = TokenBucket::new(2, 0);
        assert_eq!(b.admit(10, 2, 0), Admit::Yes);
        assert_eq!(b.admit(10, 2, 0), Admit::Yes);
        match b.admit(10, 2, 0) {
            Admit::No { retry_after_ms } => assert_eq!(retry_after_ms, 100),
            other => panic!("expected refusal, got {other:?}"),
        }
        // 100 ms later one token is back.
        assert_eq!(b.admit(10, 2, 100), Admit::Yes);
        // Hammering far above the rate turns into abuse.
        let mut last = Admit::Yes;
        for _ in 0..100 {
            last = b.admit(10, 2, 100);
        }
        assert_eq!(last, Admit::Abuse);
    }
}
