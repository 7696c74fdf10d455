//! Admission limits: per-IP connection and upgrade caps shared by all shards,
//! the per-connection token bucket, and a bounded per-key rate limiter.
//!
//! The IP table is touched once per upgrade and once per close, never per
//! message, so a lock striped over 16 maps is cheap enough here.
//!
//! Addresses are grouped before they are counted ([`ip_group`]): an IPv6
//! client usually owns a whole /64, so the caps apply per /64, and an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 peer) counts as its IPv4 address.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

const STRIPES: usize = 16;

/// The key an address is limited under: IPv4 as is, an IPv4-mapped IPv6
/// address as its IPv4, any other IPv6 address as its /64 prefix.
pub fn ip_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Default)]
struct IpEntry {
    conns: u32,
    window_sec: u64,
    upgrades_in_window: u32,
}

impl IpEntry {
    /// Holds nothing worth keeping: no connection open, and its upgrade
    /// window (one second) is over, so a fresh entry would behave the same.
    fn idle(&self, now_sec: u64) -> bool {
        self.conns == 0 && self.window_sec < now_sec
    }
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    TooManyConnections,
    TooManyUpgrades,
}

/// Per-address caps on open connections and upgrades per second, keyed by
/// [`ip_group`]. An entry lives while its address has a connection open or
/// upgraded during the current second; `release` and `sweep` drop the rest,
/// so the table holds about (open connections + upgrades of the last second)
/// entries, not one per address ever seen.
pub struct IpLimiter {
    max_conns: u32,
    max_upgrades_per_sec: u32,
    hasher: RandomState,
    stripes: Vec<Mutex<HashMap<IpAddr, IpEntry>>>,
    /// The second of the last full sweep, so that several shards calling
    /// `sweep` from their tick sweep once per second between them.
    last_sweep_sec: AtomicU64,
}

impl IpLimiter {
    pub fn new(max_conns: u32, max_upgrades_per_sec: u32) -> Self {
        IpLimiter {
            max_conns,
            max_upgrades_per_sec,
            hasher: RandomState::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            last_sweep_sec: AtomicU64::new(0),
        }
    }

    fn stripe(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, IpEntry>> {
        &self.stripes[(self.hasher.hash_one(key) as usize) % STRIPES]
    }

    /// Admits one more upgrade from `ip` at second `now_sec`, counting it.
    pub fn try_admit(&self, ip: IpAddr, now_sec: u64) -> Result<(), IpRefusal> {
        let key = ip_group(ip);
        let mut map = self.stripe(&key).lock();
        let entry = map.entry(key).or_default();
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
    /// quickly does not reset the upgrade count; `sweep` drops it later.
    pub fn release(&self, ip: IpAddr, now_sec: u64) {
        let key = ip_group(ip);
        let mut map = self.stripe(&key).lock();
        if let Some(entry) = map.get_mut(&key) {
            entry.conns = entry.conns.saturating_sub(1);
            if entry.idle(now_sec) {
                map.remove(&key);
            }
        }
    }

    /// Drops every entry with no open connection whose upgrade window has
    /// passed. Meant for each shard's tick: the first call in a second does
    /// the work, later calls in the same second return at once. Returns how
    /// many entries were dropped.
    pub fn sweep(&self, now_sec: u64) -> usize {
        let last = self.last_sweep_sec.load(Ordering::Relaxed);
        if last >= now_sec
            || self
                .last_sweep_sec
                .compare_exchange(last, now_sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return 0;
        }
        let mut dropped = 0;
        for stripe in &self.stripes {
            let mut map = stripe.lock();
            let before = map.len();
            map.retain(|_, e| !e.idle(now_sec));
            dropped += before - map.len();
            let len = map.len();
            if map.capacity() > 64 && map.capacity() > 4 * len {
                map.shrink_to(2 * len);
            }
        }
        dropped
    }

    /// Entries in the table (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().len()).sum()
    }
}

/// A per-key rate limit of `limit` events per `window_ms`, bursts of up to
/// `limit` allowed, over at most `capacity` keys: e.g. `POST /api/guest`
/// per address group (`--max-guests-per-ip-per-min`), or DMs to users never
/// seen before, per sender.
///
/// Each key holds one number (GCRA: the time at which its allowance is
/// full again), so a key whose time has passed carries no information and
/// is dropped. When the table is full even after that, the keys not used
/// during the last generation are forgotten (they come back with a full
/// allowance): memory stays bounded whatever the number of keys.
///
/// Not synchronized: a limit shared by shards goes in a `Mutex`.
pub struct KeyedRate<K> {
    /// Cost of one event, in ms of allowance.
    cost_ms: u64,
    window_ms: u64,
    capacity: usize,
    current: HashMap<K, u64>,
    previous: HashMap<K, u64>,
}

impl<K: Hash + Eq> KeyedRate<K> {
    /// `limit` events per `window_ms` per key, at most `capacity` keys.
    pub fn new(limit: u32, window_ms: u64, capacity: usize) -> Self {
        let window_ms = window_ms.max(1);
        KeyedRate {
            cost_ms: (window_ms / u64::from(limit.max(1))).max(1),
            window_ms,
            capacity: capacity.max(2),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// `limit` events per minute per key.
    pub fn per_minute(limit: u32, capacity: usize) -> Self {
        Self::new(limit, 60_000, capacity)
    }

    /// Counts one event for `key` at `now_ms`. `Err(retry_after_ms)` when
    /// the key is over its limit (the refused event is not counted).
    pub fn check(&mut self, key: K, now_ms: u64) -> Result<(), u64> {
        let stored = match self.current.get(&key) {
            Some(&t) => Some(t),
            None => self.previous.remove(&key),
        };
        let tat = stored.unwrap_or(0).max(now_ms);
        let next = tat + self.cost_ms;
        if next - now_ms > self.window_ms {
            if let Some(t) = stored {
                self.current.insert(key, t);
            }
            return Err(next - now_ms - self.window_ms);
        }
        if !self.current.contains_key(&key) && self.current.len() >= self.capacity / 2 {
            self.make_room(now_ms);
        }
        self.current.insert(key, next);
        Ok(())
    }

    /// Frees room for one key: drops spent keys, and if that is not
    /// enough, forgets the previous generation.
    fn make_room(&mut self, now_ms: u64) {
        self.sweep(now_ms);
        if self.current.len() >= self.capacity / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
    }

    /// Drops the keys whose allowance is full again (they would behave as
    /// new keys anyway).
    pub fn sweep(&mut self, now_ms: u64) {
        self.current.retain(|_, t| *t > now_ms);
        self.previous.retain(|_, t| *t > now_ms);
    }

    /// Keys in the table (for tests and metrics); never above `capacity`.
    pub fn tracked(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Token bucket over publish, dm, typing and read (PROTOCOL.md 5.4).
///
/// 16 bytes: every connection carries two. Times are the shard clock cut to
/// 32 bits and compared with wrapping arithmetic, which is exact for gaps
/// under 49 days (a longer silence refills the bucket less; harmless).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    last_ms: u32,
    /// Requests refused in the current one-second window, to spot abuse.
    refused_in_window: u32,
    window_start_ms: u32,
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
            tokens: burst as f32,
            last_ms: now_ms as u32,
            refused_in_window: 0,
            window_start_ms: now_ms as u32,
        }
    }

    pub fn admit(&mut self, rate_per_sec: u32, burst: u32, now_ms: u64) -> Admit {
        let rate = f64::from(rate_per_sec.max(1));
        let now_ms = now_ms as u32;
        let elapsed = f64::from(now_ms.wrapping_sub(self.last_ms)) / 1000.0;
        let tokens = (f64::from(self.tokens) + elapsed * rate).min(f64::from(burst));
        self.last_ms = now_ms;
        if tokens >= 1.0 {
            self.tokens = (tokens - 1.0) as f32;
            return Admit::Yes;
        }
        self.tokens = tokens as f32;
        if now_ms.wrapping_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if f64::from(self.refused_in_window) > ABUSE_FACTOR * rate + f64::from(burst) {
            return Admit::Abuse;
        }
        let retry_after_ms = (((1.0 - tokens) / rate) * 1000.0).ceil() as u64;
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

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_grouped_by_64_and_mapped_v4_as_v4() {
        assert_eq!(ip_group(v4("10.0.0.1")), v4("10.0.0.1"));
        assert_eq!(ip_group(v4("2001:db8:1:2:3:4:5:6")), v4("2001:db8:1:2::"));
        assert_eq!(ip_group(v4("::ffff:10.0.0.1")), v4("10.0.0.1"));
        assert_eq!(ip_group(v4("::1")), v4("::"));
        let lim = IpLimiter::new(2, 100);
        // Two addresses of one /64 share the cap.
        assert!(lim.try_admit(v4("2001:db8::1"), 1).is_ok());
        assert!(lim.try_admit(v4("2001:db8::ffff:2"), 1).is_ok());
        assert_eq!(
            lim.try_admit(v4("2001:db8:0:0:1:2:3:4"), 1),
            Err(IpRefusal::TooManyConnections)
        );
        // The next /64 is another client.
        assert!(lim.try_admit(v4("2001:db8:0:1::1"), 1).is_ok());
        // A mapped address and the plain IPv4 are one client.
        assert!(lim.try_admit(v4("::ffff:192.0.2.7"), 1).is_ok());
        assert!(lim.try_admit(v4("192.0.2.7"), 1).is_ok());
        assert_eq!(
            lim.try_admit(v4("::ffff:192.0.2.7"), 1),
            Err(IpRefusal::TooManyConnections)
        );
        assert_eq!(lim.tracked(), 3);
        // Release through another address of the same group.
        lim.release(v4("192.0.2.7"), 2);
        lim.release(v4("::ffff:192.0.2.7"), 2);
        lim.release(v4("2001:db8::1"), 2);
        lim.release(v4("2001:db8::2"), 2);
        lim.release(v4("2001:db8:0:1::9"), 2);
        assert_eq!(lim.tracked(), 0);
    }

    #[test]
    fn idle_entries_are_evicted() {
        let lim = IpLimiter::new(4, 4);
        let ip = v4("10.0.0.1");
        // Released in the same second: kept (the upgrade count matters).
        assert!(lim.try_admit(ip, 5).is_ok());
        lim.release(ip, 5);
        assert_eq!(lim.tracked(), 1);
        assert_eq!(lim.sweep(5), 0, "window still current");
        assert_eq!(lim.tracked(), 1);
        assert_eq!(lim.sweep(6), 1);
        assert_eq!(lim.tracked(), 0);
        // Released in a later second: dropped at once.
        assert!(lim.try_admit(ip, 7).is_ok());
        lim.release(ip, 8);
        assert_eq!(lim.tracked(), 0);
        // A refused upgrade leaves an entry with no connection: swept.
        let tight = IpLimiter::new(4, 0);
        assert_eq!(tight.try_admit(ip, 9), Err(IpRefusal::TooManyUpgrades));
        assert_eq!(tight.tracked(), 1);
        tight.sweep(10);
        assert_eq!(tight.tracked(), 0);
        // Open connections are never swept.
        assert!(lim.try_admit(ip, 11).is_ok());
        lim.sweep(20);
        assert_eq!(lim.tracked(), 1);
        assert_eq!(lim.try_admit(ip, 20), Ok(()));
        // Several shards ticking in the same second sweep once.
        lim.release(ip, 20);
        lim.release(ip, 20);
        assert_eq!(lim.sweep(21), 1);
        assert_eq!(lim.sweep(21), 0);
    }

    #[test]
    fn ip_table_stays_bounded() {
        let lim = IpLimiter::new(8, 8);
        // 100,000 distinct addresses, 1,000 per second, each connecting
        // and closing within its second; the shard tick sweeps each second.
        for i in 0u32..100_000 {
            let sec = 1 + u64::from(i / 1000);
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            lim.sweep(sec);
            assert!(lim.try_admit(ip, sec).is_ok());
            lim.release(ip, sec);
            assert!(lim.tracked() <= 1000, "{} at {i}", lim.tracked());
        }
        lim.sweep(1000);
        assert_eq!(lim.tracked(), 0);
        // 100,000 IPv6 addresses of one /64: one entry.
        for i in 0u64..100_000 {
            let ip = IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i)));
            let _ = lim.try_admit(ip, 2000);
        }
        assert_eq!(lim.tracked(), 1);
    }

    #[test]
    fn keyed_rate_limits_per_key() {
        let mut r = KeyedRate::per_minute(30, 1000);
        let a = v4("10.0.0.1");
        for _ in 0..30 {
            assert_eq!(r.check(a, 0), Ok(()));
        }
        // The 31st in the same minute waits for one event's worth (2 s).
        assert_eq!(r.check(a, 0), Err(2000));
        assert_eq!(r.check(a, 1500), Err(500));
        assert_eq!(r.check(a, 2000), Ok(()));
        assert!(r.check(a, 2000).is_err());
        // Other keys are not affected.
        assert_eq!(r.check(v4("10.0.0.2"), 2000), Ok(()));
        // After a full window the allowance is whole again.
        for _ in 0..30 {
            assert_eq!(r.check(a, 62_000), Ok(()));
        }
        assert!(r.check(a, 62_000).is_err());
        // Spent keys are dropped by sweep.
        r.sweep(200_000);
        assert_eq!(r.tracked(), 0);
        // A steady rate at the limit is always allowed.
        let mut r = KeyedRate::new(10, 1000, 16);
        for i in 0..1000 {
            assert_eq!(r.check("k", i * 100), Ok(()), "{i}");
        }
    }

    #[test]
    fn keyed_rate_stays_bounded() {
        let mut r = KeyedRate::per_minute(30, 4096);
        // 100,000 distinct addresses in one second: all allowed (each is
        // new), and the table never exceeds its capacity.
        for i in 0u32..100_000 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            assert_eq!(r.check(ip, 1000), Ok(()));
            assert!(r.tracked() <= 4096, "{} at {i}", r.tracked());
        }
        // A key busy in the current generation keeps its state through the
        // flood of others.
        let mut r = KeyedRate::per_minute(2, 100);
        let hot = 1_000_000u32;
        assert!(r.check(hot, 0).is_ok() && r.check(hot, 0).is_ok());
        for i in 0..60 {
            assert!(r.check(i, 0).is_ok());
        }
        assert!(r.check(hot, 0).is_err());
        // Spread over time, spent keys are dropped rather than kept.
        let mut r = KeyedRate::per_minute(30, 1 << 20);
        for i in 0u32..100_000 {
            assert!(r.check(i, u64::from(i) * 100).is_ok());
        }
        assert!(r.tracked() <= 100_000);
        r.sweep(100_000 * 100 + 2000);
        assert_eq!(r.tracked(), 0);
    }
}
