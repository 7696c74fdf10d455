//! Latency histograms (microseconds, 1 us .. 60 s, 3 significant digits), the HdrHistogram
//! percentile-distribution text format (`.hgrm`), its parser, and interval logs.

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

pub type Hist = Histogram<u64>;

/// Highest trackable latency in microseconds (60 s).
pub const HIGH_US: u64 = 60_000_000;

pub fn new_hist() -> Hist {
    Histogram::new_with_bounds(1, HIGH_US, 3).expect("valid histogram bounds")
}

/// Record a latency given in nanoseconds (clamped into range).
#[inline]
pub fn record_ns(h: &mut Hist, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// Sub-buckets per bucket of `new_hist()` (3 significant digits: 2 x 10^3 rounded up to a
/// power of two), and its log2.
const SUB_BUCKETS_LOG2: u32 = 11;
const HALF_LOG2: u32 = SUB_BUCKETS_LOG2 - 1;
/// Slots of a [`FastHist`]: as many as `new_hist()` has counts (whole buckets, so up to the
/// top of the bucket holding [`HIGH_US`]).
const FAST_SLOTS: usize = fast_index(TOP_US) + 1;

/// The highest value a [`FastHist`] (and `new_hist()`) holds without clamping.
const TOP_US: u64 = top_of_buckets(HIGH_US);

/// The highest value of the last bucket HdrHistogram allocates to track `high`.
const fn top_of_buckets(high: u64) -> u64 {
    let mut untrackable = 1u64 << SUB_BUCKETS_LOG2;
    while untrackable <= high {
        untrackable <<= 1;
    }
    untrackable - 1
}

/// The slot of value `v` (µs, >= 1): HdrHistogram's own index for `new_hist()`'s layout
/// (lowest value 1, so unit magnitude 0).
#[inline(always)]
const fn fast_index(v: u64) -> usize {
    let bucket = (64 - SUB_BUCKETS_LOG2) - (v | ((1 << SUB_BUCKETS_LOG2) - 1)).leading_zeros();
    let sub = v >> bucket;
    (((bucket + 1) << HALF_LOG2) as u64 + sub - (1 << HALF_LOG2)) as usize
}

/// The lowest value that falls in slot `i` (the inverse of [`fast_index`]).
const fn fast_value(i: usize) -> u64 {
    let half = 1usize << HALF_LOG2;
    let bucket = (i >> HALF_LOG2) as i64 - 1;
    let sub = (i & (half - 1)) + half;
    if bucket < 0 {
        (sub - half) as u64
    } else {
        (sub as u64) << bucket
    }
}

/// The hot-path latency recorder: counts per slot of `new_hist()`'s layout in a flat array,
/// one increment per delivery (no min/max/total bookkeeping, no range checks beyond a clamp).
/// [`FastHist::drain_into`] moves the counts into a [`Hist`], each at its slot's lowest value:
/// the same slot, so counts, percentiles, min and max come out exactly as if every value had
/// been recorded there directly.
pub struct FastHist {
    counts: Box<[u64]>,
    len: u64,
}

impl Default for FastHist {
    fn default() -> Self {
        Self::new()
    }
}

impl FastHist {
    pub fn new() -> FastHist {
        FastHist {
            counts: vec![0; FAST_SLOTS].into_boxed_slice(),
            len: 0,
        }
    }

    /// Record a latency given in nanoseconds, clamped as [`record_ns`] clamps: below 1 µs to
    /// 1 µs, beyond the last slot to [`HIGH_US`].
    #[inline(always)]
    pub fn record_ns(&mut self, ns: u64) {
        let v = (ns / 1000).max(1);
        let i = if v <= TOP_US {
            fast_index(v)
        } else {
            fast_index(HIGH_US)
        };
        // always in range; the check only keeps it panic-free
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add every count to `h` and reset to empty.
    pub fn drain_into(&mut self, h: &mut Hist) {
        if self.len == 0 {
            return;
        }
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c != 0 {
                h.saturating_record_n(fast_value(i), *c);
                *c = 0;
            }
        }
        self.len = 0;
    }

    /// The counts as a new [`Hist`] (and this one emptied).
    pub fn take_hist(&mut self) -> Hist {
        let mut h = new_hist();
        self.drain_into(&mut h);
        h
    }
}

/// The standard percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pcts {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Pcts {
    pub fn of(h: &Hist) -> Pcts {
        if h.is_empty() {
            return Pcts::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Pcts {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            p9999: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "p99_9": round3(self.p999),
            "p99_99": round3(self.p9999),
            "max": round3(self.max),
            "mean": round3(self.mean),
        })
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Write the HdrHistogram percentile distribution (the text format of Java's
/// `outputPercentileDistribution(out, 5, 1000.0)`): values in milliseconds.
pub fn hgrm(h: &Hist) -> String {
    let scale = 1000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                    value,
                    q,
                    total,
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{:>12.3} {:>2.12} {:>10}", value, q, total);
            }
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        if h.is_empty() { 0.0 } else { h.mean() / scale },
        if h.is_empty() { 0.0 } else { h.stdev() / scale }
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

/// A parsed `.hgrm` file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hgrm {
    /// (value, quantile 0..=1, total count up to value), ascending.
    pub rows: Vec<(f64, f64, u64)>,
    pub mean: Option<f64>,
    pub max: Option<f64>,
    pub total: Option<u64>,
}

impl Hgrm {
    pub fn parse(text: &str) -> anyhow::Result<Hgrm> {
        let mut h = Hgrm::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("Value") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("#[") {
                let rest = rest.trim_end_matches(']');
                for part in rest.split(',') {
                    let Some((k, v)) = part.split_once('=') else {
                        continue;
                    };
                    let (k, v) = (k.trim(), v.trim());
                    match k {
                        "Mean" => h.mean = v.parse().ok(),
                        "Max" => h.max = v.parse().ok(),
                        "Total count" => h.total = v.parse().ok(),
                        _ => {}
                    }
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let mut it = line.split_whitespace();
            let (Some(v), Some(q), Some(c)) = (it.next(), it.next(), it.next()) else {
                anyhow::bail!("bad .hgrm line: {line}");
            };
            h.rows.push((v.parse()?, q.parse()?, c.parse()?));
        }
        Ok(h)
    }

    /// The value at quantile `q` (0..=1): the first row at or above it.
    pub fn value_at(&self, q: f64) -> Option<f64> {
        if q >= 1.0 {
            return self.max.or_else(|| self.rows.last().map(|r| r.0));
        }
        self.rows
            .iter()
            .find(|r| r.1 >= q - 1e-12)
            .or(self.rows.last())
            .map(|r| r.0)
    }
}

/// Builds an HdrHistogram interval log (V2 compressed histograms, one line per interval and
/// tag), values in microseconds with max values shown in milliseconds.
pub struct IntervalLog {
    buf: Vec<u8>,
    base: SystemTime,
    entries: Vec<(String, Duration, Duration, Hist)>,
}

impl IntervalLog {
    pub fn new(base: SystemTime) -> IntervalLog {
        IntervalLog {
            buf: Vec::new(),
            base,
            entries: Vec::new(),
        }
    }

    /// Add one interval (`start` relative to the base time).
    pub fn push(&mut self, tag: &str, start: Duration, len: Duration, h: Hist) {
        self.entries.push((tag.to_string(), start, len, h));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn render(mut self, comment: &str) -> anyhow::Result<Vec<u8>> {
        let mut ser = V2DeflateSerializer::new();
        {
            let mut w = IntervalLogWriterBuilder::new()
                .add_comment(comment)
                .add_comment("values in microseconds; MaxValueDivisor 1000 shows max in ms")
                .with_start_time(self.base)
                .with_base_time(self.base)
                .with_max_value_divisor(1000.0)
                .begin_log_with(&mut self.buf, &mut ser)?;
            for (tag, start, len, h) in &self.entries {
                w.write_histogram(h, *start, *len, Tag::new(tag))
                    .map_err(|e| anyhow::anyhow!("interval log: {e:?}"))?;
            }
        }
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_hist_drains_into_exactly_the_histogram_of_direct_records() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut direct = new_hist();
        let mut fast = FastHist::new();
        let mut values = vec![0, 1, 999, 1_000, 1_999, 2_047_999, 2_048_000, u64::MAX];
        values.extend([HIGH_US * 1000, HIGH_US * 1000 + 1, (HIGH_US + 5) * 1000]);
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // ns over every magnitude from 1 ns to ~100 s
            values.push(x % 10u64.pow((x % 12) as u32 + 1));
        }
        for &ns in &values {
            record_ns(&mut direct, ns);
            fast.record_ns(ns);
        }
        assert!(!fast.is_empty());
        let got = fast.take_hist();
        assert!(fast.is_empty());
        assert_eq!(got.len(), direct.len());
        assert_eq!(got.min(), direct.min());
        assert_eq!(got.max(), direct.max());
        assert_eq!(got.mean(), direct.mean());
        let a: Vec<_> = got
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        let b: Vec<_> = direct
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        assert_eq!(a, b);
        for q in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(got.value_at_quantile(q), direct.value_at_quantile(q), "{q}");
        }
        // every slot maps back to itself through HdrHistogram's own index
        for i in 0..FAST_SLOTS {
            assert_eq!(fast_index(fast_value(i).max(1)), i.max(1), "{i}");
        }
        // draining into a histogram that already holds counts adds to them
        let mut sum = sample();
        fast.record_ns(5_000_000);
        fast.drain_into(&mut sum);
        assert_eq!(sum.len(), sample().len() + 1);
    }
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    fn sample() -> Hist {
        let mut h = new_hist();
        for us in 1..=10_000u64 {
            h.record(us * 10).unwrap(); // 10 us .. 100 ms
        }
        h
    }

    #[test]
    fn hgrm_roundtrip_matches_histogram() {
        let h = sample();
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        assert!(text.contains("#[Max     ="));
        let p = Hgrm::parse(&text).unwrap();
        assert_eq!(p.total, Some(10_000));
        assert_eq!(p.rows.last().unwrap().2, 10_000);
        assert!((p.rows.last().unwrap().1 - 1.0).abs() < 1e-12);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let want = h.value_at_quantile(q) as f64 / 1000.0;
            let got = p.value_at(q).unwrap();
            // the .hgrm rows are at ticks, not exact quantiles: within 5% of the true value
            assert!(
                (got - want).abs() / want < 0.05,
                "q={q} got={got} want={want}"
            );
        }
        assert!((p.max.unwrap() - h.max() as f64 / 1000.0).abs() < 0.001);
        // ascending
        assert!(p
            .rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn hgrm_line_format_is_javas() {
        let mut h = new_hist();
        h.record(1500).unwrap();
        let text = hgrm(&h);
        let lines: Vec<&str> = text.lines().collect();
        // value (ms, 3 decimals) right-aligned in 12, quantile with 12 decimals, count in 10
        assert_eq!(
            lines[2],
            "       1.500 0.000000000000          1           1.00"
        );
        assert_eq!(lines[3], "       1.500 1.000000000000          1");
    }

    #[test]
    fn empty_histogram_output_parses() {
        let text = hgrm(&new_hist());
        let p = Hgrm::parse(&text).unwrap();
        assert!(p.rows.is_empty());
        assert_eq!(p.total, Some(0));
    }

    #[test]
    fn pcts_and_record_ns() {
        let mut h = new_hist();
        record_ns(&mut h, 500); // below 1 us -> 1 us
        record_ns(&mut h, 2_000_000); // 2 ms
        record_ns(&mut h, 3_600_000_000_000); // 1 h -> clamped to 60 s
        let p = Pcts::of(&h);
        assert_eq!(p.count, 3);
        assert!((p.p50 - 2.0).abs() < 0.01);
        assert!(p.max >= 59_000.0 && p.max <= 61_000.0);
    }

    #[test]
    fn interval_log_roundtrip() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = IntervalLog::new(base);
        log.push(
            "latency",
            Duration::from_secs(0),
            Duration::from_secs(1),
            sample(),
        );
        log.push(
            "latency",
            Duration::from_secs(1),
            Duration::from_secs(1),
            new_hist(),
        );
        let bytes = log.render("test").unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("#[StartTime: 1700000000.000"));
        let mut n = 0;
        for e in IntervalLogIterator::new(&bytes) {
            if let LogEntry::Interval(ih) = e.unwrap() {
                assert_eq!(ih.tag().unwrap().as_str(), "latency");
                let raw = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    ih.encoded_histogram(),
                )
                .unwrap();
                let h: Hist = Deserializer::new()
                    .deserialize(&mut std::io::Cursor::new(raw))
                    .unwrap();
                if n == 0 {
                    assert_eq!(h.len(), 10_000);
                }
                n += 1;
            }
        }
        assert_eq!(n, 2);
    }
}
