//! Per-room gap tracking for the home shard of a room in cluster mode.
//!
//! Pub/sub is at-most-once: a cut subscription or a reconnect loses frames.
//! The home shard feeds every numbered frame of a room (from the channel,
//! and from its own publish acks if it wants) to a [`GapTracker`], which
//! hands back what may be delivered now, in seq order, with no duplicate;
//! when a frame arrives beyond the next expected seq, or after a
//! `CatchUp` event, it asks for one range read of the stream
//! ([`super::BrokerHandle::range`] with `after`), whose result goes to
//! [`GapTracker::fill`]. Frames that arrive while a read is in flight are
//! held (bounded by the caller's traffic, released by the fill).

use super::StreamEntry;
use bytes::Bytes;
use std::collections::BTreeMap;

/// What to do after feeding the tracker.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Frames to deliver now, in ascending seq.
    pub deliver: Vec<(u64, Bytes)>,
    /// Start a range read of the stream for seqs above this one, and pass
    /// its result to [`GapTracker::fill`].
    pub read_after: Option<u64>,
    /// Seqs that the stream no longer held (trimmed by `MAXLEN`): they are
    /// skipped for good.
    pub skipped: u64,
}

#[derive(Debug)]
pub struct GapTracker {
    /// The last seq delivered.
    delivered: u64,
    /// Frames ahead of `delivered + 1`, waiting for the gap to be filled.
    held: BTreeMap<u64, Bytes>,
    /// A range read is in flight.
    reading: bool,
}

/// Frames fetched per catch-up read.
pub const FILL_PAGE: usize = 100;

impl GapTracker {
    /// A tracker for a room whose messages up to `delivered` are known (the
    /// `seq` of the room state read when the room got its first member).
    pub fn new(delivered: u64) -> Self {
        GapTracker {
            delivered,
            held: BTreeMap::new(),
            reading: false,
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn reading(&self) -> bool {
        self.reading
    }

    /// A numbered frame from the channel (or a publish ack).
    pub fn offer(&mut self, seq: u64, frame: Bytes) -> Step {
        let mut step = Step::default();
        if seq <= self.delivered {
            return step;
        }
        if seq == self.delivered + 1 && !self.reading {
            self.delivered = seq;
            step.deliver.push((seq, frame));
            self.release(&mut step);
            return step;
        }
        self.held.insert(seq, frame);
        if !self.reading {
            self.reading = true;
            step.read_after = Some(self.delivered);
        }
        step
    }

    /// The subscription was (re)established, or something may have been
    /// missed: read what came after the last delivered seq. None if a read
    /// is already in flight (its result covers it... unless it was sent
    /// before the cut, so the caller may call this again after the fill).
    pub fn catch_up(&mut self) -> Option<u64> {
        if self.reading {
            return None;
        }
        self.reading = true;
        Some(self.delivered)
    }

    /// The result of the range read: `entries` (ascending, all with seq >
    /// the `read_after` asked) and whether the stream has more beyond them.
    pub fn fill(&mut self, entries: Vec<StreamEntry>, has_more: bool) -> Step {
        let mut step = Step::default();
        self.reading = false;
        for e in entries {
            if e.seq <= self.delivered {
                continue;
            }
            if e.seq > self.delivered + 1 {
                // Trimmed away: what the stream no longer has is gone.
                step.skipped += e.seq - self.delivered - 1;
            }
            self.held.remove(&e.seq);
            self.delivered = e.seq;
            step.deliver.push((e.seq, e.json));
            self.release(&mut step);
        }
        if has_more {
            self.reading = true;
            step.read_after = Some(self.delivered);
        } else if let Some((&first, _)) = self.held.first_key_value() {
            // The stream had nothing more, yet a later frame is held: it was
            // published after the read ran; what lies between is unknown
            // (lost from the stream?) unless it is the next one.
            if first == self.delivered + 1 {
                self.release(&mut step);
            } else {
                self.reading = true;
                step.read_after = Some(self.delivered);
            }
        }
        step
    }

    /// The read failed (broker down): forget it; the next frame or
    /// `CatchUp` starts another.
    pub fn fill_failed(&mut self) {
        self.reading = false;
    }

    fn release(&mut self, step: &mut Step) {
        while let Some(frame) = self.held.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            step.deliver.push((self.delivered, frame));
        }
        // Drop anything held at or below what was delivered.
        while let Some((&s, _)) = self.held.first_key_value() {
            if s > self.delivered {
                break;
            }
            self.held.remove(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: u64) -> Bytes {
        Bytes::from(format!("m{s}"))
    }
    fn entry(s: u64) -> StreamEntry {
        StreamEntry {
            seq: s,
            ts: 0,
            json: b(s),
        }
    }
    fn seqs(step: &Step) -> Vec<u64> {
        step.deliver.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn in_order_delivers_duplicates_dropped() {
        let mut t = GapTracker::new(0);
        assert_eq!(seqs(&t.offer(1, b(1))), vec![1]);
        assert_eq!(seqs(&t.offer(2, b(2))), vec![2]);
        assert!(t.offer(2, b(2)).deliver.is_empty());
        assert!(t.offer(1, b(1)).deliver.is_empty());
    }

    #[test]
    fn gap_is_filled_from_the_stream() {
        let mut t = GapTracker::new(3);
        let s = t.offer(7, b(7));
        assert!(s.deliver.is_empty());
        assert_eq!(s.read_after, Some(3));
        // more arrives while the read is in flight: held, no second read
        let s = t.offer(8, b(8));
        assert_eq!(s.read_after, None);
        let s = t.fill((4..=7).map(entry).collect(), false);
        assert_eq!(seqs(&s), vec![4, 5, 6, 7, 8]);
        assert_eq!(s.read_after, None);
        assert_eq!(t.delivered(), 8);
    }

    #[test]
    fn paged_fill_and_trimmed_stream() {
        let mut t = GapTracker::new(0);
        assert_eq!(t.catch_up(), Some(0));
        assert_eq!(t.catch_up(), None);
        let s = t.fill(vec![entry(5), entry(6)], true);
        assert_eq!(seqs(&s), vec![5, 6]);
        assert_eq!(s.skipped, 4);
        assert_eq!(s.read_after, Some(6));
        let s = t.fill(vec![entry(7)], false);
        assert_eq!(seqs(&s), vec![7]);
        assert_eq!(s.read_after, None);
    }

    #[test]
    fn held_frame_beyond_the_stream_asks_again() {
        let mut t = GapTracker::new(0);
        assert_eq!(t.offer(3, b(3)).read_after, Some(0));
        let s = t.fill(vec![entry(1)], false);
        assert_eq!(seqs(&s), vec![1]);
        assert_eq!(s.read_after, Some(1));
        let s = t.fill(vec![entry(2), entry(3)], false);
        assert_eq!(seqs(&s), vec![2, 3]);
    }
}
