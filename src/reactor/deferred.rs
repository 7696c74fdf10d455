//! The shard's queue of connections holding deferred frames (presence):
//! one entry per deferral, in deadline order. The delay is one constant
//! (`--presence-flush-ms`), so deadlines arrive sorted and a FIFO is the
//! timer wheel: pushing and popping are O(1), and no turn walks every
//! connection.

use std::collections::VecDeque;

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

    pub(super) fn push(&mut self, at: u64, key: usize, id: u64) {
        self.q.push_back((at, key, id));
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
}
