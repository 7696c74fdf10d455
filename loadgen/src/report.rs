//! `loadgen compare OLD NEW` and `loadgen plot DIR... --svg FILE`.

use crate::stats::Hgrm;
use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Flatten the numeric leaves of a JSON value into `a.b.c -> number` (arrays of numbers are
/// indexed `a[0]`; arrays of objects such as ramp steps use their `rate` when present).
pub fn flatten_numbers(v: &Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.insert(prefix.to_string(), f);
            }
        }
        Value::Bool(b) => {
            out.insert(prefix.to_string(), if *b { 1.0 } else { 0.0 });
        }
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_numbers(v, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let key = match v.get("rate").and_then(Value::as_f64) {
                    Some(r) => format!("{prefix}[{r}]"),
                    None => format!("{prefix}[{i}]"),
                };
                flatten_numbers(v, &key, out);
            }
        }
        _ => {}
    }
}

fn load_summary(dir: &Path) -> anyhow::Result<Value> {
    let p = dir.join("summary.json");
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parse {}", p.display()))
}

fn hgrm_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".hgrm"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(old: f64, new: f64) -> String {
    if old == 0.0 {
        if new == 0.0 {
            "=".into()
        } else {
            "-".into()
        }
    } else {
        format!("{:.2}x", new / old)
    }
}

/// Keys that are not worth comparing (run bookkeeping, per-core noise).
fn skip_key(k: &str) -> bool {
    k.contains("core_busy_pct") || k.ends_with(".count") || k.contains("thread_cpu_pct")
}

/// Render the comparison of two result directories as text.
pub fn compare_text(old_dir: &Path, new_dir: &Path) -> anyhow::Result<String> {
    let a = load_summary(old_dir)?;
    let b = load_summary(new_dir)?;
    let mut s = String::new();
    let desc = |v: &Value| {
        format!(
            "{} {} commit {} {}",
            v["scenario"].as_str().unwrap_or("?"),
            v["target"].as_str().unwrap_or("?"),
            v["git_commit"]
                .as_str()
                .map(|c| &c[..c.len().min(10)])
                .unwrap_or("-"),
            if v["loadgen_saturated"].as_bool() == Some(true) {
                "(LOADGEN SATURATED)"
            } else {
                ""
            }
        ) + crate::hosthealth::disturbed_in(v)
            .map(|why| format!(" (HOST DISTURBED: {why})"))
            .as_deref()
            .unwrap_or("")
    };
    let _ = writeln!(s, "OLD {}: {}", old_dir.display(), desc(&a));
    let _ = writeln!(s, "NEW {}: {}", new_dir.display(), desc(&b));
    if a["scenario"] != b["scenario"] {
        let _ = writeln!(s, "note: different scenarios");
    }
    let mut fa = BTreeMap::new();
    let mut fb = BTreeMap::new();
    flatten_numbers(&a["figures"], "", &mut fa);
    flatten_numbers(&b["figures"], "", &mut fb);
    let keys: Vec<&String> = fa
        .keys()
        .filter(|k| fb.contains_key(*k) && !skip_key(k))
        .collect();
    let w = keys.iter().map(|k| k.len()).max().unwrap_or(6).max(6);
    let _ = writeln!(
        s,
        "\n{:<w$} {:>14} {:>14} {:>9}",
        "figure", "old", "new", "new/old"
    );
    for k in keys {
        let (x, y) = (fa[k], fb[k]);
        let _ = writeln!(
            s,
            "{:<w$} {:>14} {:>14} {:>9}",
            k,
            fmt_num(x),
            fmt_num(y),
            ratio(x, y)
        );
    }
    let hb = hgrm_files(new_dir);
    for name in hgrm_files(old_dir).into_iter().filter(|n| hb.contains(n)) {
        let ha = Hgrm::parse(&std::fs::read_to_string(old_dir.join(&name))?)?;
        let hbb = Hgrm::parse(&std::fs::read_to_string(new_dir.join(&name))?)?;
        if ha.rows.is_empty() && hbb.rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "\n{name} (ms; {} vs {} samples)",
            ha.total.unwrap_or(0),
            hbb.total.unwrap_or(0)
        );
        let _ = writeln!(
            s,
            "{:<10} {:>12} {:>12} {:>9}",
            "percentile", "old", "new", "new/old"
        );
        for (label, q) in [
            ("p50", 0.5),
            ("p90", 0.9),
            ("p99", 0.99),
            ("p99.9", 0.999),
            ("p99.99", 0.9999),
            ("max", 1.0),
        ] {
            let (x, y) = (ha.value_at(q), hbb.value_at(q));
            let _ = writeln!(
                s,
                "{:<10} {:>12} {:>12} {:>9}",
                label,
                x.map_or("-".into(), |v| format!("{v:.3}")),
                y.map_or("-".into(), |v| format!("{v:.3}")),
                match (x, y) {
                    (Some(x), Some(y)) => ratio(x, y),
                    _ => "-".into(),
                }
            );
        }
    }
    Ok(s)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn f1(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

fn f2(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}"))
}

fn rate_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| {
        if x >= 1e6 {
            format!("{:.2}M", x / 1e6)
        } else if x >= 1e4 {
            format!("{:.1}k", x / 1e3)
        } else {
            format!("{x:.0}")
        }
    })
}

/// The label of a result directory: its parent directory's name (e.g. `uws` in
/// `peers-2026-11-23/uws/s1-fanout`), or the target from summary.json.
fn label_of(dir: &Path, s: &Value) -> String {
    dir.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| s["target"].as_str().unwrap_or("?").to_string())
}

/// Formats the cells of one row from a summary.json.
type RowFn = Box<dyn Fn(&Value) -> Vec<String>>;

/// Side-by-side tables (one per scenario) of several result directories.
pub fn table_text(dirs: &[PathBuf], markdown: bool) -> anyhow::Result<String> {
    let mut by_scn: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for d in dirs {
        let Ok(s) = load_summary(d) else {
            continue;
        };
        let scn = s["scenario"].as_str().unwrap_or("?").to_string();
        if !order.contains(&scn) {
            order.push(scn.clone());
        }
        by_scn.entry(scn).or_default().push((label_of(d, &s), s));
    }
    let mut out = String::new();
    for scn in order {
        let rows = &by_scn[&scn];
        let first = &rows[0].1;
        if scn == "abuse" {
            // one table per directory, a row per shape
            for (label, s) in rows {
                let _ = writeln!(
                    out,
                    "{}abuse: {label}\n",
                    if markdown { "### " } else { "== " }
                );
                let shapes = s["figures"]["shapes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                out.push_str(&crate::abuse::table(&shapes, markdown));
                out.push('\n');
            }
            continue;
        }
        let (header, f): (Vec<&str>, RowFn) = match scn.as_str() {
            "fanout" | "rooms" | "bigroom" => (
                vec![
                    "server",
                    "deliveries/s",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "max ms",
                    "loss %",
                    "seq gaps",
                    "server CPU s",
                    "server CPU %",
                    "loadgen CPU %",
                ],
                Box::new(|s: &Value| {
                    let f = &s["figures"];
                    let l = &f["latency_ms"];
                    vec![
                        rate_s(num(&f["deliveries_per_sec"])),
                        f2(num(&l["p50"])),
                        f2(num(&l["p90"])),
                        f2(num(&l["p99"])),
                        f2(num(&l["p99_9"])),
                        f2(num(&l["max"])),
                        format!("{:.3}", num(&f["loss_pct"]).unwrap_or(0.0)),
                        f["seq_gaps"].to_string(),
                        f2(num(&f["server_cpu_secs"])),
                        f1(num(&f["server_cpu_pct"])),
                        f["loadgen_thread_cpu_pct"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| x.to_string())
                                    .collect::<Vec<_>>()
                                    .join("/")
                            })
                            .unwrap_or_default(),
                    ]
                }),
            ),
            "ramp" => (
                vec![
                    "server",
                    "saturation deliveries/s",
                    "at msg/s",
                    "steps (rate: deliveries/s, p99 ms, loss %, pass)",
                ],
                Box::new(|s: &Value| {
                    let f = &s["figures"];
                    let steps = f["steps"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|st| {
                                    format!(
                                        "{}: {}, {}, {:.3}, {}{}",
                                        st["rate"],
                                        rate_s(num(&st["deliveries_per_sec"])),
                                        f1(num(&st["latency_ms"]["p99"])),
                                        num(&st["loss_pct"]).unwrap_or(0.0),
                                        if st["pass"].as_bool() == Some(true) {
                                            "PASS"
                                        } else {
                                            "FAIL"
                                        },
                                        if st["loadgen_saturated"].as_bool() == Some(true) {
                                            " (loadgen-bound)"
                                        } else {
                                            ""
                                        }
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                        .unwrap_or_default();
                    vec![
                        rate_s(num(&f["saturation"]["deliveries_per_sec"])),
                        f["saturation"]["rate"]
                            .as_f64()
                            .map_or("-".into(), |r| format!("{r}")),
                        steps,
                    ]
                }),
            ),
            "idle" => (
                vec![
                    "server",
                    "joined",
                    "KiB per connection",
                    "RSS before MiB",
                    "RSS after MiB",
                    "connect rate conn/s",
                    "server CPU s",
                ],
                Box::new(|s: &Value| {
                    let f = &s["figures"];
                    vec![
                        format!("{}/{}", f["connect"]["ready"], s["params"]["conns"]),
                        f2(num(&f["kib_per_conn"])),
                        f1(num(&f["server_rss_before_kib"]).map(|k| k / 1024.0)),
                        f1(num(&f["server_rss_after_kib"]).map(|k| k / 1024.0)),
                        rate_s(num(&f["conn_per_sec"])),
                        f2(num(&f["server_cpu_secs"])),
                    ]
                }),
            ),
            "connect" => (
                vec![
                    "server",
                    "joined",
                    "handshakes/s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                ],
                Box::new(|s: &Value| {
                    let f = &s["figures"];
                    vec![
                        format!("{}/{}", f["connect"]["ready"], s["params"]["conns"]),
                        rate_s(num(&f["handshakes_per_sec"])),
                        f2(num(&f["connect"]["handshake_ms"]["p50"])),
                        f2(num(&f["connect"]["handshake_ms"]["p99"])),
                        f2(num(&f["connect"]["handshake_ms"]["max"])),
                    ]
                }),
            ),
            "rtt" => (
                vec![
                    "server", "pings", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "lost",
                ],
                Box::new(|s: &Value| {
                    let f = &s["figures"];
                    let l = &f["rtt_ms"];
                    vec![
                        f["published"].to_string(),
                        f2(num(&l["p50"])),
                        f2(num(&l["p90"])),
                        f2(num(&l["p99"])),
                        f2(num(&l["p99_9"])),
                        f2(num(&l["max"])),
                        (num(&f["expected"]).unwrap_or(0.0) - num(&f["received"]).unwrap_or(0.0))
                            .to_string(),
                    ]
                }),
            ),
            "acks" => (
                vec![
                    "server",
                    "acks/s",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "max ms",
                    "errors",
                    "unacked",
                    "server CPU %",
                ],
                Box::new(|s: &Value| {
                    let f = &s["figures"];
                    let l = &f["ack_ms"];
                    vec![
                        rate_s(num(&f["acks_per_sec"])),
                        f2(num(&l["p50"])),
                        f2(num(&l["p90"])),
                        f2(num(&l["p99"])),
                        f2(num(&l["p99_9"])),
                        f2(num(&l["max"])),
                        f["errors"].to_string(),
                        f["unacked"].to_string(),
                        f1(num(&f["server_cpu_pct"])),
                    ]
                }),
            ),
            _ => continue,
        };
        let _ = writeln!(
            out,
            "{}{} {}\n",
            if markdown { "### " } else { "== " },
            scn,
            first["params"]
        );
        let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        lines[0].push("failed conns".into());
        for (label, s) in rows {
            let mut row = vec![format!(
                "{label}{}{}",
                if s["loadgen_saturated"].as_bool() == Some(true) {
                    " (loadgen saturated)"
                } else {
                    ""
                },
                if crate::hosthealth::disturbed_in(s).is_some() {
                    " (host disturbed)"
                } else {
                    ""
                }
            )];
            row.extend(f(s));
            row.push(failed_cell(s));
            lines.push(row);
        }
        if markdown {
            for (i, l) in lines.iter().enumerate() {
                let _ = writeln!(out, "| {} |", l.join(" | "));
                if i == 0 {
                    let _ = writeln!(out, "|{}", " --- |".repeat(l.len()));
                }
            }
        } else {
            let n = lines[0].len();
            let widths: Vec<usize> = (0..n)
                .map(|c| {
                    lines
                        .iter()
                        .map(|l| l.get(c).map_or(0, |x| x.len()))
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for l in &lines {
                let cells: Vec<String> = l
                    .iter()
                    .enumerate()
                    .map(|(c, x)| format!("{:<w$}", x, w = widths[c]))
                    .collect();
                let _ = writeln!(out, "{}", cells.join("  ").trim_end());
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// The connections of a run that could not be set up, by cause (`800 (http 429: 800)`).
fn failed_cell(s: &Value) -> String {
    let c = &s["figures"]["connect"];
    let failed = c["failed"].as_u64().unwrap_or(0);
    // summaries from before `failed_by_cause` have the raw reasons only
    let by = c["failed_by_cause"]
        .as_object()
        .or(c["failures"].as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    crate::scenarios::fmt_failures(failed, &by)
}

/// One curve: label and (nines, ms) points.
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// x coordinate on the "nines" axis: 0 = 0%, 1 = 90%, 2 = 99%, 3 = 99.9%, ...
pub fn nines(q: f64) -> f64 {
    -(1.0 - q.min(0.999_999_999)).log10()
}

pub fn nines_label(x: f64) -> String {
    if x <= 0.0 {
        return "0%".into();
    }
    let p = (1.0 - 10f64.powf(-x)) * 100.0;
    let digits = (x.round() as i64 - 2).max(0) as usize;
    format!("{p:.digits$}%")
}

pub fn curve_for(path: &Path, hist: Option<&str>) -> anyhow::Result<Curve> {
    let (file, label) = if path.is_file() {
        (path.to_path_buf(), path.display().to_string())
    } else {
        let summary = load_summary(path).ok();
        let name = hist
            .map(str::to_string)
            .or_else(|| {
                summary
                    .as_ref()
                    .and_then(|s| s["primary_histogram"].as_str().map(str::to_string))
            })
            .unwrap_or_else(|| "latency".into());
        let mut label = path
            .components()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if let Some(s) = &summary {
            label = format!(
                "{label} ({} {}, {name})",
                s["target"].as_str().unwrap_or("?"),
                s["scenario"].as_str().unwrap_or("?")
            );
        }
        (path.join(format!("{name}.hgrm")), label)
    };
    let h = Hgrm::parse(
        &std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?,
    )?;
    let mut points: Vec<(f64, f64)> = h
        .rows
        .iter()
        .filter(|r| r.1 < 1.0)
        .map(|r| (nines(r.1), r.0))
        .collect();
    if let (Some(max), Some(last)) = (h.max, points.last().copied()) {
        points.push((last.0 + 0.25, max));
    }
    Ok(Curve { label, points })
}

/// Draw the percentile curves of several runs into an SVG file.
pub fn plot(
    dirs: &[PathBuf],
    svg: &Path,
    hist: Option<&str>,
    title: Option<&str>,
    log_y: bool,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let curves = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| Ok((curve_for(d, hist)?, Palette99::pick(i).to_rgba())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    draw_curves(
        &curves,
        svg,
        title.unwrap_or("latency by percentile"),
        log_y,
    )
}

/// Draw percentile curves, each in its color, into an SVG file.
pub fn draw_curves(
    curves: &[(Curve, plotters::style::RGBAColor)],
    svg: &Path,
    title: &str,
    log_y: bool,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let xmax = curves
        .iter()
        .flat_map(|(c, _)| c.points.iter().map(|p| p.0))
        .fold(2.0f64, f64::max)
        .ceil();
    let ymax = curves
        .iter()
        .flat_map(|(c, _)| c.points.iter().map(|p| p.1))
        .fold(0.001f64, f64::max)
        * 1.05;
    let ymin = curves
        .iter()
        .flat_map(|(c, _)| c.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(ymax / 10.0)
        .max(0.001);
    let root = SVGBackend::new(svg, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 22))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels((xmax as usize) + 1)
                .x_label_formatter(&|x| nines_label(*x))
                .x_desc("percentile")
                .y_desc("latency (ms)")
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for (c, col) in curves.iter() {
                let col = *col;
                chart
                    .draw_series(LineSeries::new(
                        c.points.iter().map(|p| (p.0, p.1.max(ymin))),
                        col.stroke_width(2),
                    ))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .label(c.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }};
    }
    if log_y {
        draw!(b
            .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())
            .map_err(|e| anyhow::anyhow!("{e:?}"))?);
    } else {
        draw!(b
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{hgrm, new_hist};

    fn write_run(dir: &Path, scale: u64, dps: f64) {
        std::fs::create_dir_all(dir).unwrap();
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * scale).unwrap();
        }
        std::fs::write(dir.join("latency.hgrm"), hgrm(&h)).unwrap();
        let summary = serde_json::json!({
            "scenario": "fanout", "target": "uws", "git_commit": "0123456789abcdef",
            "loadgen_saturated": false, "primary_histogram": "latency",
            "figures": {
                "deliveries_per_sec": dps, "loss_pct": 0.0,
                "latency_ms": {"p50": 0.5 * scale as f64, "p99": 0.99 * scale as f64, "count": 1000},
                "steps": [{"rate": 200.0, "pass": true}, {"rate": 400.0, "pass": false}],
            }
        });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn flatten_picks_numbers_and_step_rates() {
        let v = serde_json::json!({"a": 1, "b": {"c": 2.5, "d": "x"}, "s": [{"rate": 200, "p": 3}], "arr": [4, 5], "ok": true});
        let mut m = BTreeMap::new();
        flatten_numbers(&v, "", &mut m);
        assert_eq!(m["a"], 1.0);
        assert_eq!(m["b.c"], 2.5);
        assert_eq!(m["s[200].p"], 3.0);
        assert_eq!(m["arr[1]"], 5.0);
        assert_eq!(m["ok"], 1.0);
        assert!(!m.contains_key("b.d"));
    }

    #[test]
    fn compare_prints_side_by_side_with_ratios() {
        let base = tmpdir("cmp");
        let (old, new) = (base.join("old"), base.join("new"));
        write_run(&old, 100, 1_000_000.0);
        write_run(&new, 50, 2_000_000.0);
        let t = compare_text(&old, &new).unwrap();
        assert!(t.contains("deliveries_per_sec"), "{t}");
        let line = t
            .lines()
            .find(|l| l.starts_with("deliveries_per_sec"))
            .unwrap();
        assert!(
            line.contains("1.000M") && line.contains("2.000M") && line.ends_with("2.00x"),
            "{line}"
        );
        let line = t
            .lines()
            .find(|l| l.starts_with("latency_ms.p99 "))
            .unwrap();
        assert!(line.ends_with("0.50x"), "{line}");
        assert!(t.contains("latency.hgrm"));
        let p50 = t.lines().find(|l| l.starts_with("p50 ")).unwrap();
        assert!(p50.ends_with("0.50x"), "{p50}");
        assert!(!t.contains("latency_ms.count"));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn table_groups_by_scenario() {
        let base = tmpdir("table");
        let (a, b) = (
            base.join("uws").join("s1"),
            base.join("corechat").join("s1"),
        );
        write_run(&a, 100, 1_000_000.0);
        write_run(&b, 50, 2_500_000.0);
        // b lost 800 of its connections to the server's per-IP cap
        let path = b.join("summary.json");
        let mut sb: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        sb["figures"]["connect"] = serde_json::json!({
            "ready": 200, "failed": 800,
            "failed_by_cause": {"http 429": 790, "timeout": 10},
        });
        std::fs::write(&path, sb.to_string()).unwrap();
        let t = table_text(&[a, b], true).unwrap();
        assert!(t.contains("### fanout"), "{t}");
        assert!(t.contains(" | failed conns |\n"), "{t}");
        assert!(t.contains("| uws | 1.00M |"), "{t}");
        assert!(t.contains("| corechat | 2.50M |"), "{t}");
        let uws = t.lines().find(|l| l.starts_with("| uws ")).unwrap();
        assert!(uws.ends_with(" | 0 |"), "{uws}");
        let cc = t.lines().find(|l| l.starts_with("| corechat ")).unwrap();
        assert!(
            cc.ends_with(" | 800 (http 429: 790, timeout: 10) |"),
            "{cc}"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn nines_axis() {
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(5.0), "99.999%");
    }

    #[test]
    fn plot_writes_svg() {
        let base = tmpdir("plot");
        let (a, b) = (base.join("a"), base.join("b"));
        write_run(&a, 100, 1.0);
        write_run(&b, 30, 1.0);
        let svg = base.join("out.svg");
        plot(&[a.clone(), b.clone()], &svg, None, Some("test"), false).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"));
        assert!(text.contains("99.9%"));
        assert!(text.contains("polyline") || text.contains("path"));
        plot(&[a, b], &svg, Some("latency"), None, true).unwrap();
        let _ = std::fs::remove_dir_all(&base);
    }
}
