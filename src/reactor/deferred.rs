//! The shard's queue of connections holding deferred frames (presence):
//! one entry per deferral, in deadline order. A deadline is never earlier
//! than the one pushed before it (`push` keeps them sorted), so a FIFO is
//! the timer wheel: pushing and popping are O(1), and no turn walks every
//! connection.
//!
//! The delay grows with the number of connections waiting: at
//! `--presence-flush-ms` (250) when few do, up to `--presence-flush-max-ms`
//! (1000) in a connect storm, where every join sends `user_joined` to the
//! room's members and each flush is a `writev` (on loopback also the
//! receiver's TCP input, in the server's time). A longer wait lets more of
//! them share one write; a member holding `MAX_DEFERRED_FRAMES` writes at
//! once, so the wait never grows a queue's memory past that.

use std::collections::VecDeque;

/// Frames a connection's queue may hold before a deferred one makes it
/// write at the end of the turn (eight `Bytes`: a 256-byte queue buffer).
pub(super) const MAX_DEFERRED_FRAMES: usize = 8;

/// Connections waiting at which the delay reaches its maximum.
const STORM_WAITING: usize = 4096;

/// The wait for a frame deferred now, with `waiting` entries queued: from
/// `base_ms` rising linearly to `max_ms` at `STORM_WAITING` (never below
/// `base_ms`, whatever `max_ms` says).
pub(super) fn delay_ms(base_ms: u64, max_ms: u64, waiting: usize) -> u64 {
    let span = max_ms.saturating_sub(base_ms);
    let load = waiting.min(STORM_WAITING) as u64;
    base_ms + span * load / STORM_WAITING as u64
}

/// Entries allowed: twice the shard's connections (each has at most one
/// live entry; the rest are stale ones of connections flushed early) plus
/// slack. Past it, a frame is written at once, as without deferral.
pub(super) fn cap(conns: usize) -> usize {
    conns.saturating_mul(2).saturating_add(1024)
}

#[derive(Default)]
pub struct DeferredQueue {
    /// (deadline ms, slab key, connection id).
    q: VecDeque<(u64, usize, u64)>,
}

impl DeferredQueue {
    pub(super) fn len(&self) -> usize {
        self.q.len()
    }

    /// Queues a deadline, raised to the last one's if earlier (the delay
    /// shrinks as a storm ends; order, and so O(1) popping, is kept).
    /// Returns the deadline queued.
    pub(super) fn push(&mut self, at: u64, key: usize, id: u64) -> u64 {
        let at = self.q.back().map_or(at, |last| at.max(last.0));
        self.q.push_back((at, key, id));
        at
    }

    /// The next entry due by `now`.
    pub(super) fn pop_due(&mut self, now: u64) -> Option<(usize, u64)> {
        match self.q.front() {
            Some(&(at, key, id)) if at <= now => {
                self.q.pop_front();
                Some((key, id))
            }
            _ => None,
        }
    }

    /// The earliest deadline, if any.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.q.front().map(|e| e.0)
    }

    /// An emptied queue gives its memory back.
    pub(super) fn shrink(&mut self) {
        if self.q.is_empty() && self.q.capacity() > 1024 {
            self.q = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_only_when_due() {
        let mut q = DeferredQueue::default();
        q.push(10, 1, 1);
        q.push(20, 2, 2);
        assert_eq!(q.pop_due(5), None);
        assert_eq!(q.next_deadline(), Some(10));
        assert_eq!(q.pop_due(15), Some((1, 1)));
        assert_eq!(q.pop_due(15), None);
        assert_eq!(q.pop_due(20), Some((2, 2)));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn an_earlier_deadline_waits_for_the_one_before_it() {
        let mut q = DeferredQueue::default();
        assert_eq!(q.push(100, 1, 1), 100);
        assert_eq!(q.push(40, 2, 2), 100);
        assert_eq!(q.pop_due(99), None);
        assert_eq!(q.pop_due(100), Some((1, 1)));
        assert_eq!(q.pop_due(100), Some((2, 2)));
    }

    #[test]
    fn delay_grows_with_the_waiting_connections() {
        assert_eq!(delay_ms(250, 1000, 0), 250);
        assert_eq!(delay_ms(250, 1000, STORM_WAITING / 2), 625);
        assert_eq!(delay_ms(250, 1000, STORM_WAITING), 1000);
        assert_eq!(delay_ms(250, 1000, STORM_WAITING * 10), 1000);
        // A maximum below the base is the base: no storm stretching.
        assert_eq!(delay_ms(250, 100, STORM_WAITING), 250);
    }
}
