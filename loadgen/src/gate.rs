//! `loadgen compare --base DIR... --new DIR...`: the build-against-build gate. Repeated runs of
//! one scenario on each side (taken alternately, base new, new base, ..., by `scripts/bench-compare.sh`) are
//! reduced to medians; the run-to-run spread of each side defines the noise, and each key
//! figure gets a verdict: better or worse when the medians differ by more than the noise and
//! the two sides' ranges do not overlap, else same (within noise). An SVG overlays the latency
//! percentile curves of every run of both sides.

use crate::report::{self, Curve};
use crate::stats::Hgrm;
use anyhow::Context;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The smallest noise band: two runs that agree closely are still not called different for
/// less than this relative difference.
pub const NOISE_FLOOR: f64 = 0.03;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Better,
    Same,
    Worse,
    /// A side has no value for this figure.
    Missing,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Same => "same (within noise)",
            Verdict::Worse => "worse",
            Verdict::Missing => "-",
        }
    }
}

/// One compared figure.
#[derive(Debug)]
pub struct Row {
    pub figure: String,
    pub base: Vec<f64>,
    pub new: Vec<f64>,
    pub better: Better,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Relative spread of repeated runs: (max - min) / median (0 for one run).
pub fn rel_spread(v: &[f64]) -> f64 {
    let Some(m) = median(v) else { return 0.0 };
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.abs() < f64::EPSILON {
        return 0.0;
    }
    (hi - lo) / m.abs()
}

impl Row {
    /// The noise band: the larger relative spread of the two sides, at least [`NOISE_FLOOR`].
    pub fn noise(&self) -> f64 {
        rel_spread(&self.base)
            .max(rel_spread(&self.new))
            .max(NOISE_FLOOR)
    }

    /// Some run of one side lies within the range of the other side's runs.
    pub fn ranges_overlap(&self) -> bool {
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        let ((a0, a1), (b0, b1)) = (range(&self.base), range(&self.new));
        a0 <= b1 && b0 <= a1
    }

    pub fn ratio(&self) -> Option<f64> {
        let (a, b) = (median(&self.base)?, median(&self.new)?);
        if a == 0.0 {
            return if b == 0.0 { Some(1.0) } else { None };
        }
        Some(b / a)
    }

    /// Better/worse when the medians differ by more than the noise band.
    pub fn verdict(&self) -> Verdict {
        let Some(r) = self.ratio() else {
            return Verdict::Missing;
        };
        if (r - 1.0).abs() <= self.noise() || self.ranges_overlap() {
            return Verdict::Same;
        }
        match (r < 1.0, self.better) {
            (true, Better::Lower) | (false, Better::Higher) => Verdict::Better,
            _ => Verdict::Worse,
        }
    }
}

fn load(dir: &Path) -> anyhow::Result<Value> {
    let p = dir.join("summary.json");
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parse {}", p.display()))
}

/// The histogram whose percentiles are compared: ramp's first (lowest-rate) step, so both
/// sides are compared at the same offered load; otherwise the run's primary histogram.
pub fn compared_hist(dir: &Path, summary: &Value) -> Option<String> {
    if summary["scenario"] == "ramp" {
        let mut steps: Vec<String> = summary["histograms"]
            .as_array()?
            .iter()
            .filter_map(|h| h.as_str())
            .filter(|h| h.starts_with("step-"))
            .map(|h| h.trim_end_matches(".hgrm").to_string())
            .collect();
        steps.sort();
        return steps.into_iter().next();
    }
    let name = summary["primary_histogram"].as_str()?.to_string();
    dir.join(format!("{name}.hgrm")).exists().then_some(name)
}

/// Key figures of a scenario's summary: (name, value, which way is better).
fn figures(summary: &Value) -> Vec<(String, f64, Better)> {
    let f = &summary["figures"];
    let mut out = Vec::new();
    let mut add = |name: &str, v: &Value, b: Better| {
        if let Some(x) = v.as_f64() {
            out.push((name.to_string(), x, b));
        }
    };
    add(
        "saturation deliveries/s",
        &f["saturation_deliveries_per_sec"],
        Better::Higher,
    );
    if summary["scenario"] != "ramp" {
        add("deliveries/s", &f["deliveries_per_sec"], Better::Higher);
    }
    add("handshakes/s", &f["handshakes_per_sec"], Better::Higher);
    add("server CPU s", &f["server_cpu_secs"], Better::Lower);
    add("server KiB/conn", &f["kib_per_conn"], Better::Lower);
    add("loss %", &f["loss_pct"], Better::Lower);
    out
}

/// Build the rows for repeated runs of one scenario on each side.
pub fn rows(base: &[PathBuf], new: &[PathBuf]) -> anyhow::Result<(Vec<Row>, Option<String>)> {
    let sb = base
        .iter()
        .map(|d| load(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sn = new
        .iter()
        .map(|d| load(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hist = sb
        .first()
        .zip(base.first())
        .and_then(|(s, d)| compared_hist(d, s));
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |figure: String, side_new: bool, v: f64, better: Better| {
        let row = match rows.iter_mut().find(|r| r.figure == figure) {
            Some(r) => r,
            None => {
                rows.push(Row {
                    figure,
                    base: Vec::new(),
                    new: Vec::new(),
                    better,
                });
                rows.last_mut().expect("just pushed")
            }
        };
        if side_new {
            row.new.push(v);
        } else {
            row.base.push(v);
        }
    };
    for (side_new, dirs, sums) in [(false, base, &sb), (true, new, &sn)] {
        for (d, s) in dirs.iter().zip(sums.iter()) {
            if let Some(h) = &hist {
                let path = d.join(format!("{h}.hgrm"));
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let g = Hgrm::parse(&text)?;
                    for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
                        if let Some(v) = g.value_at(q) {
                            push(format!("{h} {label} ms"), side_new, v, Better::Lower);
                        }
                    }
                }
            }
            for (name, v, b) in figures(s) {
                push(name, side_new, v, b);
            }
        }
    }
    Ok((rows, hist))
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1e6 => format!("{:.3}M", v / 1e6),
        Some(v) if v.abs() >= 1e4 => format!("{:.1}k", v / 1e3),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The verdict table (markdown) of one scenario.
pub fn table(title: &str, rows: &[Row]) -> String {
    let mut s = String::new();
    let n = rows.first().map_or((0, 0), |r| (r.base.len(), r.new.len()));
    let _ = writeln!(
        s,
        "### {title} (medians of {} base / {} new runs)\n",
        n.0, n.1
    );
    let _ = writeln!(
        s,
        "| figure | base | new | new/base | noise | verdict |\n| --- | --- | --- | --- | --- | --- |"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | ±{:.0}% | {} |",
            r.figure,
            fmt(median(&r.base)),
            fmt(median(&r.new)),
            r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
            r.noise() * 100.0,
            r.verdict().word()
        );
    }
    s
}

/// `loadgen compare --base ... --new ...`: print the table, and write the SVG overlay.
pub fn compare(base: &[PathBuf], new: &[PathBuf], svg: Option<&Path>) -> anyhow::Result<String> {
    anyhow::ensure!(
        !base.is_empty() && !new.is_empty(),
        "need at least one run on each side"
    );
    let (rows, hist) = rows(base, new)?;
    let scenario = load(&base[0])?["scenario"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let mut s = table(&scenario, &rows);
    for (side, dirs) in [("base", base), ("new", new)] {
        for (i, d) in dirs.iter().enumerate() {
            if let Some(why) = crate::hosthealth::disturbed_in(&load(d)?) {
                let _ = writeln!(
                    s,
                    "\nwarning: {side} run {} ran on a disturbed host ({why}): its figures are bounded by the host",
                    i + 1
                );
            }
        }
    }
    if let Some(svg) = svg {
        use plotters::style::{Color, BLUE, RED};
        let mut curves: Vec<(Curve, plotters::style::RGBAColor)> = Vec::new();
        for (side, dirs, color) in [("base", base, BLUE), ("new", new, RED)] {
            for (i, d) in dirs.iter().enumerate() {
                let mut c = report::curve_for(d, hist.as_deref())?;
                c.label = format!("{side} run {}", i + 1);
                // later runs of a side drawn lighter
                curves.push((c, color.mix(1.0 - 0.5 * i as f64 / dirs.len() as f64)));
            }
        }
        let title = format!(
            "{scenario} ({}): latency by percentile, base (blue) vs new (red)",
            hist.as_deref().unwrap_or("latency")
        );
        report::draw_curves(&curves, svg, &title, true)?;
        let _ = writeln!(s, "\nlatency overlay: {}", svg.display());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(base: &[f64], new: &[f64], better: Better) -> Row {
        Row {
            figure: "x".into(),
            base: base.to_vec(),
            new: new.to_vec(),
            better,
        }
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert!((rel_spread(&[90.0, 100.0, 110.0]) - 0.2).abs() < 1e-9);
        assert_eq!(rel_spread(&[5.0]), 0.0);
    }

    #[test]
    fn verdicts_follow_direction_and_noise() {
        // latency 20% lower, runs within 5% of each other: better
        let r = row(&[10.0, 10.5], &[8.0, 8.2], Better::Lower);
        assert_eq!(r.verdict(), Verdict::Better);
        // the same change, but the base runs spread by 40%: within noise
        let r = row(&[8.0, 12.0], &[8.0, 8.2], Better::Lower);
        assert_eq!(r.verdict(), Verdict::Same);
        // throughput down by a tenth with tight runs: worse
        let r = row(&[100.0, 101.0], &[90.0, 90.5], Better::Higher);
        assert_eq!(r.verdict(), Verdict::Worse);
        // medians far apart, but a new run lies inside the base runs' range
        let r = row(&[10.0, 10.4, 13.0], &[8.0, 8.1, 10.2], Better::Lower);
        assert!(r.ranges_overlap());
        assert_eq!(r.verdict(), Verdict::Same);
        // within the floor
        let r = row(&[100.0], &[102.0], Better::Higher);
        assert_eq!(r.verdict(), Verdict::Same);
        assert_eq!(row(&[], &[1.0], Better::Lower).verdict(), Verdict::Missing);
    }
}
