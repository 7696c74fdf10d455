//! Even pacing of publishes: each publish has its own due time (`epoch + k / rate`), and the
//! event loop wakes for the next one through a `timerfd` registered in its `mio` poll, so a
//! publish leaves at its due time instead of with whatever else became due during a long turn
//! of the loop (which would hand the server ready-made bursts). The error of every publish
//! (actual send time minus due time) is recorded so a run can say whether it kept pace.

use crate::stats::Pcts;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A run "kept pace" when the p99 of (send time - due time) is at most this (µs).
pub const PACE_LIMIT_US: f64 = 1000.0;

/// A non-blocking CLOCK_MONOTONIC timerfd armed at absolute times.
pub struct Timer {
    fd: OwnedFd,
    armed_at: u64,
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
        Ok(Timer { fd, armed_at: 0 })
    }

    /// Fire at `mono_ns` (CLOCK_MONOTONIC ns, absolute); a no-op if already armed for it.
    pub fn arm_at(&mut self, mono_ns: u64) -> io::Result<()> {
        if mono_ns == self.armed_at {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (mono_ns / 1_000_000_000) as libc::time_t,
                // never 0:0, which would disarm
                tv_nsec: ((mono_ns % 1_000_000_000).max(1)) as libc::c_long,
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
        self.armed_at = mono_ns;
        Ok(())
    }

    /// Consume an expiry (so the next one wakes the poll again).
    pub fn clear(&mut self) {
        let mut b = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer; EAGAIN is fine.
        unsafe {
            libc::read(self.fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len());
        }
        self.armed_at = 0;
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
