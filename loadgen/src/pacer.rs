//! Even pacing of publishes: each publish has its own due time (`epoch + k * interval`), and the
//! event loop wakes for the next one through a periodic `timerfd` registered in its `mio` poll, so a
//! publish leaves at its due time instead of with whatever else became due during a long turn
//! of the loop (which would hand the server ready-made bursts). The error of every publish
//! (actual send time minus due time) is recorded so a run can say whether it kept pace.

use crate::stats::Pcts;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A run "kept pace" when the p99 of (send time - due time) is at most this (µs).
pub const PACE_LIMIT_US: f64 = 1000.0;

/// Shortest period of the pacing timer (ns): at higher per-thread rates one wake-up sends every
/// publish due by then (each still stamped with its own due time, so the error is reported).
pub const MIN_TICK_NS: u64 = 10_000;

/// The timer's period for a publish interval of `interval_ns`.
pub fn tick_of(interval_ns: u64) -> u64 {
    interval_ns.max(MIN_TICK_NS)
}

/// A non-blocking CLOCK_MONOTONIC timerfd that ticks on the publish schedule. Periodic, so a
/// paced publish costs no `timerfd_settime`, only the `read` of its tick (which the kernel
/// needs: it restarts a periodic timerfd when its count is read, not when it expires).
pub struct Timer {
    fd: OwnedFd,
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd })
    }

    /// Tick at `first_ns` (CLOCK_MONOTONIC ns, absolute) and every `period_ns` after it;
    /// `period_ns == 0` disarms.
    pub fn set_periodic(&mut self, first_ns: u64, period_ns: u64) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: ts(period_ns),
            // 0:0 would disarm: a tick that is already due fires at once
            it_value: if period_ns == 0 {
                ts(0)
            } else {
                ts(first_ns.max(1))
            },
        };
        // SAFETY: valid fd, pointer to a local itimerspec, null old value.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Expiries since the last call (0 if none); also re-arms a periodic timer that expired.
    pub fn take_ticks(&mut self) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer; EAGAIN leaves it zero.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        if n == 8 {
            u64::from_ne_bytes(b)
        } else {
            0
        }
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Let the calling thread's timers fire within 1 µs of their time (Linux's default slack is
/// 50 µs, which would show as pacing error).
pub fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

/// The pacing error figures of a histogram of (send - due) times in µs: p50/p99/p99.9/max
/// in µs, and whether the p99 stayed within [`PACE_LIMIT_US`].
pub fn pacing_json(h: &crate::stats::Hist) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    let p = Pcts::of(h);
    let us = |ms: f64| (ms * 1000.0).round();
    serde_json::json!({
        "count": p.count,
        "p50_us": us(p.p50),
        "p99_us": us(p.p99),
        "p99_9_us": us(p.p999),
        "max_us": us(p.max),
        "kept_pace": us(p.p99) <= PACE_LIMIT_US,
    })
}

/// One line for the text summary, with a warning when the p99 exceeds the limit.
pub fn pacing_text(h: &crate::stats::Hist) -> Option<String> {
    if h.is_empty() {
        return None;
    }
    let p = Pcts::of(h);
    let mut s = format!(
        "pacing error (send - due): p50 {:.0} us p99 {:.0} us p99.9 {:.0} us max {:.0} us",
        p.p50 * 1000.0,
        p.p99 * 1000.0,
        p.p999 * 1000.0,
        p.max * 1000.0
    );
    if p.p99 * 1000.0 > PACE_LIMIT_US {
        s.push_str(&format!(
            "\nwarning: the load generator could not keep pace (p99 pacing error above {PACE_LIMIT_US:.0} us): publishes left in bursts"
        ));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use std::time::Duration;

    fn mono() -> u64 {
        crate::sys::mono_ns()
    }

    #[test]
    fn periodic_timer_wakes_the_poll_on_every_tick_it_is_read_for() {
        let mut t = Timer::new().unwrap();
        let mut poll = Poll::new().unwrap();
        let fd = t.as_raw_fd();
        poll.registry()
            .register(&mut mio::unix::SourceFd(&fd), Token(1), Interest::READABLE)
            .unwrap();
        t.set_periodic(mono() + 1_000_000, 1_000_000).unwrap();
        let mut events = Events::with_capacity(4);
        // each tick wakes the (edge-triggered) poll again once the previous one was read
        for _ in 0..3 {
            loop {
                poll.poll(&mut events, Some(Duration::from_secs(5)))
                    .unwrap();
                if events.iter().any(|e| e.token() == Token(1)) {
                    break;
                }
            }
            assert!(t.take_ticks() >= 1);
        }
        // disarmed: nothing more to read, even after a few periods
        t.set_periodic(0, 0).unwrap();
        let _ = t.take_ticks();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.take_ticks(), 0);
    }

    #[test]
    fn the_tick_is_the_interval_down_to_the_minimum() {
        assert_eq!(tick_of(100_000), 100_000);
        assert_eq!(tick_of(MIN_TICK_NS), MIN_TICK_NS);
        assert_eq!(tick_of(1), MIN_TICK_NS);
    }
}
