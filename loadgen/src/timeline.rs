//! `loadgen timeline`: a run's latency over time, one line per interval of
//! its `.hlog` (one histogram per second), to tell a tail that is spread
//! over the whole run (every second is a bit slow) from one made by a few
//! stalls (a handful of seconds hold most of the worst samples).

use crate::stats::Hist;
use anyhow::{bail, Context};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One interval of the log.
pub struct Interval {
    pub start_s: f64,
    pub hist: Hist,
}

/// The `.hlog` of a result directory (its only one, or `latency.hlog`), or
/// `path` itself when it is a file.
pub fn find_log(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let mut logs: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hlog"))
        .collect();
    logs.sort();
    match logs.len() {
        0 => bail!("no .hlog in {}", path.display()),
        1 => Ok(logs.remove(0)),
        _ => Ok(logs
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s == "latency"))
            .unwrap_or(&logs[0])
            .clone()),
    }
}

/// The intervals of an interval log, in the order written.
pub fn read(bytes: &[u8]) -> anyhow::Result<Vec<Interval>> {
    let mut out = Vec::new();
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| anyhow::anyhow!("interval log: {e:?}"))?;
        if let LogEntry::Interval(ih) = entry {
            let raw = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                ih.encoded_histogram(),
            )?;
            let hist: Hist = de
                .deserialize(&mut std::io::Cursor::new(raw))
                .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
            out.push(Interval {
                start_s: ih.start_timestamp().as_secs_f64(),
                hist,
            });
        }
    }
    Ok(out)
}

/// The table: per interval count, p50/p99/p99.9/max (ms) and how many of
/// the whole run's samples above its p99.9 fell in that interval.
pub fn render(intervals: &[Interval]) -> String {
    let mut all = crate::stats::new_hist();
    for i in intervals {
        let _ = all.add(&i.hist);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let tail_from = all.value_at_quantile(0.999);
    let tail_total = all.count_between(all.highest_equivalent(tail_from) + 1, u64::MAX);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "start s", "count", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "over p99.9"
    );
    for i in intervals {
        let h = &i.hist;
        let over = h.count_between(all.highest_equivalent(tail_from) + 1, u64::MAX);
        let _ = writeln!(
            s,
            "{:>8.1} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12}",
            i.start_s,
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            over
        );
    }
    // How concentrated the tail is: the fewest intervals that hold half of it.
    let mut overs: Vec<u64> = intervals
        .iter()
        .map(|i| {
            i.hist
                .count_between(all.highest_equivalent(tail_from) + 1, u64::MAX)
        })
        .collect();
    overs.sort_unstable_by(|a, b| b.cmp(a));
    let mut held = 0;
    let half = overs
        .iter()
        .take_while(|&&n| {
            let before = held;
            held += n;
            before * 2 < tail_total
        })
        .count();
    let _ = writeln!(
        s,
        "whole run: {} samples, p99.9 {:.2} ms; {} samples above it, half of them in {} of {} intervals",
        all.len(),
        ms(tail_from),
        tail_total,
        half,
        intervals.len()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_hist, IntervalLog};
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_stall_shows_up_in_its_interval() {
        let mut log = IntervalLog::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        for sec in 0..10u64 {
            let mut h = new_hist();
            for k in 0..1000u64 {
                h.record(100 + k % 50).unwrap();
            }
            if sec == 7 {
                // A 20 ms stall: 5 samples (under 0.1% of the run) far
                // above everything else.
                for _ in 0..5 {
                    h.record(20_000).unwrap();
                }
            }
            log.push(
                "latency",
                Duration::from_secs(sec),
                Duration::from_secs(1),
                h,
            );
        }
        let bytes = log.render("test").unwrap();
        let intervals = read(&bytes).unwrap();
        assert_eq!(intervals.len(), 10);
        let text = render(&intervals);
        let line7 = text.lines().nth(8).unwrap();
        assert!(line7.trim_start().starts_with("7.0"), "{text}");
        assert!(line7.trim_end().ends_with(" 5"), "{text}");
        assert!(
            text.contains("5 samples above it, half of them in 1 of 10 intervals"),
            "{text}"
        );
    }
}
