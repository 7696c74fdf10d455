//! Per-connection, per-room sequence checking: gaps (missing seqs) and duplicates/reorders.

/// Tracks the last `seq` seen on one connection for one room.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqTracker {
    /// Last seq seen (or the room's seq at join time); 0 = nothing known yet.
    last: u64,
}

/// What one observed `seq` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next seq (or the first one seen when the base is unknown).
    Ok,
    /// `missing` seqs were skipped before this one.
    Gap { missing: u64 },
    /// A seq at or below the last one: a duplicate or a reordering.
    Dup,
}

impl SeqTracker {
    /// Start from the room's seq reported in `joined` (messages start at `seq + 1`);
    /// `None` when the server does not report it (the first message then sets the base).
    pub fn from_joined(seq: Option<u64>) -> SeqTracker {
        SeqTracker {
            last: seq.unwrap_or(0),
        }
    }

    #[inline]
    pub fn last(&self) -> u64 {
        self.last
    }

    #[inline]
    pub fn check(&mut self, seq: u64) -> SeqCheck {
        let last = self.last;
        if seq == last.wrapping_add(1) || last == 0 {
            self.last = seq;
            SeqCheck::Ok
        } else if seq > last {
            self.last = seq;
            SeqCheck::Gap {
                missing: seq - last - 1,
            }
        } else {
            SeqCheck::Dup
        }
    }
}

/// Running totals over many trackers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqStats {
    pub gaps: u64,
    pub missing: u64,
    pub dups: u64,
}

impl SeqStats {
    #[inline]
    pub fn add(&mut self, c: SeqCheck) {
        match c {
            SeqCheck::Ok => {}
            SeqCheck::Gap { missing } => {
                self.gaps += 1;
                self.missing += missing;
            }
            SeqCheck::Dup => self.dups += 1,
        }
    }
    pub fn merge(&mut self, o: &SeqStats) {
        self.gaps += o.gaps;
        self.missing += o.missing;
        self.dups += o.dups;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_clean() {
        let mut t = SeqTracker::default();
        let mut s = SeqStats::default();
        for q in 5..100 {
            s.add(t.check(q));
        }
        assert_eq!(s, SeqStats::default());
        assert_eq!(t.last(), 99);
    }

    #[test]
    fn gaps_and_dups() {
        let mut t = SeqTracker::from_joined(Some(10));
        let mut s = SeqStats::default();
        assert_eq!(t.check(11), SeqCheck::Ok);
        assert_eq!(t.check(12), SeqCheck::Ok);
        assert_eq!(t.check(15), SeqCheck::Gap { missing: 2 });
        assert_eq!(t.check(15), SeqCheck::Dup);
        assert_eq!(t.check(13), SeqCheck::Dup);
        assert_eq!(t.check(16), SeqCheck::Ok);
        for c in [
            SeqCheck::Ok,
            SeqCheck::Gap { missing: 2 },
            SeqCheck::Dup,
            SeqCheck::Gap { missing: 7 },
        ] {
            s.add(c);
        }
        assert_eq!(
            s,
            SeqStats {
                gaps: 2,
                missing: 9,
                dups: 1
            }
        );
    }

    #[test]
    fn joined_base_detects_missing_first_message() {
        let mut t = SeqTracker::from_joined(Some(0));
        // base 0 means unknown: first message is accepted as is
        assert_eq!(t.check(1), SeqCheck::Ok);
        let mut t = SeqTracker::from_joined(Some(3));
        assert_eq!(t.check(5), SeqCheck::Gap { missing: 1 });
        let mut t = SeqTracker::from_joined(None);
        assert_eq!(t.check(42), SeqCheck::Ok);
        assert_eq!(t.check(42), SeqCheck::Dup);
    }
}
