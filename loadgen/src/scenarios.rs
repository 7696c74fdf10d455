//! The scenarios of BENCHMARKS.md on top of the driver, their figures, and their output.

use crate::cli::{self, Common, WsUrl};
use crate::driver::{human, ConnectSummary, Driver, WindowResult};
use crate::engine::{Auth, Config, FinalReport, Mode};
use crate::hosthealth::{self, HostHealth};
use crate::jwt::Minter;
use crate::proto::Target;
use crate::stats::{hgrm, round3, Hist, Pcts};
use crate::sys;
use crate::tls::TlsClient;
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fanout,
    Ramp,
    Rooms,
    Idle,
    Bigroom,
    Connect,
    Rtt,
    Acks,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fanout => "fanout",
            Kind::Ramp => "ramp",
            Kind::Rooms => "rooms",
            Kind::Idle => "idle",
            Kind::Bigroom => "bigroom",
            Kind::Connect => "connect",
            Kind::Rtt => "rtt",
            Kind::Acks => "acks",
        }
    }
}

/// A scenario with all its parameters resolved.
#[derive(Debug, Clone)]
pub struct Spec {
    pub kind: Kind,
    pub conns: usize,
    pub rooms: usize,
    pub rate: f64,
    pub body: usize,
    pub warmup: f64,
    pub duration: f64,
    pub hold: f64,
    pub rates: Vec<f64>,
    pub step_secs: f64,
    pub max_p99_ms: f64,
    pub max_loss_pct: f64,
    pub all_steps: bool,
    pub ws_ping: bool,
    /// Acks: publishes in flight per connection.
    pub window: usize,
}

impl Spec {
    fn base(kind: Kind, conns: usize, rooms: usize) -> Spec {
        Spec {
            kind,
            conns,
            rooms,
            rate: 0.0,
            body: 64,
            warmup: 0.0,
            duration: 0.0,
            hold: 0.0,
            rates: Vec::new(),
            step_secs: 0.0,
            max_p99_ms: 100.0,
            max_loss_pct: 0.1,
            all_steps: false,
            ws_ping: false,
            window: 1,
        }
    }

    pub fn from_cmd(cmd: &cli::Cmd) -> Option<(Spec, Common)> {
        use cli::Cmd::*;
        Some(match cmd {
            Fanout(a) => (
                Spec {
                    rate: a.rate,
                    body: a.body,
                    warmup: a.warmup,
                    duration: a.duration,
                    ..Spec::base(Kind::Fanout, a.conns, a.rooms)
                },
                a.common.clone(),
            ),
            Ramp(a) => (
                Spec {
                    body: a.body,
                    warmup: a.warmup,
                    rates: a.rates.clone(),
                    step_secs: a.step_secs,
                    max_p99_ms: a.max_p99_ms,
                    max_loss_pct: a.max_loss_pct,
                    all_steps: a.all_steps,
                    rate: a.rates.first().copied().unwrap_or(200.0),
                    ..Spec::base(Kind::Ramp, a.conns, a.rooms)
                },
                a.common.clone(),
            ),
            Rooms(a) => (
                Spec {
                    rate: a.rate,
                    body: a.body,
                    warmup: a.warmup,
                    duration: a.duration,
                    ..Spec::base(Kind::Rooms, a.conns, a.rooms)
                },
                a.common.clone(),
            ),
            Idle(a) => (
                Spec {
                    hold: a.hold,
                    ..Spec::base(Kind::Idle, a.conns, a.rooms)
                },
                a.common.clone(),
            ),
            Bigroom(a) => (
                Spec {
                    rate: a.rate,
                    body: a.body,
                    warmup: a.warmup,
                    duration: a.duration,
                    ..Spec::base(Kind::Bigroom, a.conns, a.rooms)
                },
                a.common.clone(),
            ),
            Connect(a) => (
                Spec::base(Kind::Connect, a.conns, a.rooms),
                a.common.clone(),
            ),
            Rtt(a) => (
                Spec {
                    rate: a.rate,
                    warmup: a.warmup,
                    duration: a.duration,
                    ws_ping: a.ws_ping,
                    ..Spec::base(Kind::Rtt, a.conns, 1)
                },
                a.common.clone(),
            ),
            Acks(a) => (
                Spec {
                    rate: a.rate,
                    body: a.body,
                    warmup: a.warmup,
                    duration: a.duration,
                    window: a.window,
                    ..Spec::base(Kind::Acks, a.conns, a.rooms)
                },
                a.common.clone(),
            ),
            Compare { .. }
            | Plot { .. }
            | Timeline { .. }
            | MockServer { .. }
            | Table { .. }
            | Abuse(_) => return None,
        })
    }

    fn mode(&self) -> Mode {
        match self.kind {
            Kind::Fanout | Kind::Ramp | Kind::Bigroom => Mode::Traffic { all_publish: false },
            Kind::Rooms => Mode::Traffic { all_publish: true },
            Kind::Idle | Kind::Connect => Mode::Idle,
            Kind::Rtt => Mode::Ping,
            Kind::Acks => Mode::Acks,
        }
    }

    pub fn params_json(&self) -> Value {
        let mut v = json!({ "conns": self.conns, "rooms": self.rooms });
        let m = v.as_object_mut().expect("object");
        match self.kind {
            Kind::Fanout | Kind::Rooms | Kind::Bigroom => {
                m.insert("rate".into(), json!(self.rate));
                m.insert("body".into(), json!(self.body));
                m.insert("warmup".into(), json!(self.warmup));
                m.insert("duration".into(), json!(self.duration));
            }
            Kind::Ramp => {
                m.insert("rates".into(), json!(self.rates));
                m.insert("step_secs".into(), json!(self.step_secs));
                m.insert("body".into(), json!(self.body));
                m.insert("warmup".into(), json!(self.warmup));
                m.insert("max_p99_ms".into(), json!(self.max_p99_ms));
                m.insert("max_loss_pct".into(), json!(self.max_loss_pct));
            }
            Kind::Idle => {
                m.insert("hold".into(), json!(self.hold));
            }
            Kind::Connect => {}
            Kind::Rtt => {
                m.insert("rate".into(), json!(self.rate));
                m.insert("warmup".into(), json!(self.warmup));
                m.insert("duration".into(), json!(self.duration));
                m.insert("ws_ping".into(), json!(self.ws_ping));
            }
            Kind::Acks => {
                m.insert("window".into(), json!(self.window));
                m.insert("rate".into(), json!(self.rate));
                m.insert("body".into(), json!(self.body));
                m.insert("warmup".into(), json!(self.warmup));
                m.insert("duration".into(), json!(self.duration));
            }
        }
        v
    }
}

pub fn build_config(spec: &Spec, c: &Common) -> anyhow::Result<Config> {
    let url = WsUrl::parse(&c.url)?;
    let addr = url.resolve()?;
    let auth = if let Some(t) = &c.token {
        Auth::Token(t.clone())
    } else if let Some(s) = &c.jwt_secret {
        Auth::Secret {
            minter: Minter::new(s.as_bytes()),
            ttl_secs: c.jwt_ttl,
        }
    } else {
        if c.target == Target::Corechat {
            eprintln!("note: no --jwt-secret/--token: connecting to corechat without a token");
        }
        Auth::None
    };
    let source_ips = match &c.source_ips {
        Some(s) => cli::parse_source_ips(s)?,
        None => Vec::new(),
    };
    anyhow::ensure!(c.threads >= 1, "--threads must be >= 1");
    anyhow::ensure!(spec.conns >= 1, "--conns must be >= 1");
    anyhow::ensure!(spec.rooms >= 1, "--rooms must be >= 1");
    if spec.kind == Kind::Acks {
        anyhow::ensure!(
            c.target == Target::Corechat,
            "the acks scenario needs --target corechat: it measures publish->ack through corechat's \
             durable store, and the {} peer has no store (it does not ack after storing)",
            c.target.name()
        );
        anyhow::ensure!(spec.window >= 1, "--window must be >= 1");
        anyhow::ensure!(
            spec.rate >= 0.0 && spec.rate.is_finite(),
            "--rate must be >= 0 (0 = no cap)"
        );
    }
    let tls = match url.tls {
        true => Some(TlsClient::new(
            &url.host,
            c.tls_ca.as_deref(),
            c.tls_insecure,
        )?),
        false => None,
    };
    Ok(Config {
        target: c.target,
        addr,
        tls,
        host: url.host_header(),
        path: c.target.path(&url.path),
        auth,
        conns: spec.conns,
        rooms: spec.rooms,
        threads: c.threads.min(spec.conns),
        source_ips,
        max_in_flight: c.max_in_flight.max(1),
        connect_timeout: Duration::from_secs_f64(c.connect_timeout),
        mode: spec.mode(),
        body: spec.body,
        read_buf: c.read_buf,
        pin: !c.no_pin,
        ws_ping: spec.ws_ping,
        window: spec.window,
        deflate: c.deflate,
        room_blocks: c.room_blocks,
        presence_batched: c.presence_batched,
    })
}

fn connect_json(c: &ConnectSummary, conns: usize, max_failed_pct: f64) -> Value {
    json!({
        "ready": c.ready,
        "failed": c.failed,
        "failed_pct": failed_pct(c.failed, conns),
        "max_failed_pct": max_failed_pct,
        "failed_by_cause": c.failures_by_cause(),
        "failures": c.failures,
        "secs": round3(c.secs),
        "conn_per_sec": c.rate().round(),
        "handshake_ms": Pcts::of(&c.hs_total).to_json(),
        "tcp_connect_ms": Pcts::of(&c.hs_tcp).to_json(),
        "upgrade_ms": Pcts::of(&c.hs_upgrade).to_json(),
        "loadgen_thread_cpu_pct": c
            .thread_cpu_secs
            .iter()
            .map(|s| (s * 1000.0 / c.secs.max(1e-9)).round() / 10.0)
            .collect::<Vec<_>>(),
    })
}

fn window_json(w: &WindowResult, kind_latency: &str) -> Value {
    let p = Pcts::of(&w.stats.hist);
    let mut v = json!({
        "secs": round3(w.secs),
        "published": w.stats.published,
        "publish_rate": (w.stats.published as f64 / w.secs.max(1e-9)).round(),
        "expected": w.stats.expected,
        "received": w.stats.received,
        "deliveries_per_sec": w.deliveries_per_sec().round(),
        "arrivals_per_sec": w.arrivals_per_sec.round(),
        "loss_pct": (w.loss_pct() * 10000.0).round() / 10000.0,
        "seq_gaps": w.stats.seq.gaps,
        "seq_missing": w.stats.seq.missing,
        "seq_dups": w.stats.seq.dups,
        "drained": w.drained,
        "loadgen_thread_cpu_pct": w.thread_util.iter().map(|u| (u * 1000.0).round() / 10.0).collect::<Vec<_>>(),
        "core_busy_pct": w.core_busy.iter().map(|u| (u * 10.0).round() / 10.0).collect::<Vec<_>>(),
    });
    let m = v.as_object_mut().expect("object");
    m.insert(kind_latency.into(), p.to_json());
    m.insert(
        "pacing_error".into(),
        crate::pacer::pacing_json(&w.stats.pacing),
    );
    if let Some(s) = w.server_cpu_secs() {
        m.insert("server_cpu_secs".into(), json!(round3(s)));
        m.insert(
            "server_cpu_pct".into(),
            json!(w.server_cpu_pct().map(|x| (x * 10.0).round() / 10.0)),
        );
    }
    if let Some((_, b)) = w.server {
        m.insert("server_rss_kib".into(), json!(b.rss_kib));
        m.insert("server_hwm_kib".into(), json!(b.hwm_kib));
    }
    v
}

fn failed_pct(failed: u64, conns: usize) -> f64 {
    (failed as f64 * 100.0 / conns.max(1) as f64 * 1000.0).round() / 1000.0
}

/// `800 (http 429: 800)`, or `0`.
pub fn fmt_failures(failed: u64, by_cause: &BTreeMap<String, u64>) -> String {
    if failed == 0 {
        return "0".into();
    }
    let causes: Vec<String> = by_cause.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{failed} ({})", causes.join(", "))
}

fn run_json(f: &FinalReport, cpu: &[u64], secs: f64, traffic: bool) -> Value {
    let mut v = json!({
        "deliveries": f.deliveries,
        "published": f.published,
        "acks": f.acks,
        "pongs": f.pongs,
        "late_deliveries": f.late,
        "untimed_messages": f.untimed,
        "publish_skipped": f.publish_skipped,
        "pacing_error": f.pacing.as_ref().map(crate::pacer::pacing_json),
        "seq_outside_windows": { "gaps": f.seq_other.gaps, "missing": f.seq_other.missing, "dups": f.seq_other.dups },
        "server_errors": f.errors,
        "disconnects": f.disconnects,
        "other_frames": f.other_frames,
        "thread_cpu_secs": cpu.iter().map(|c| round3(*c as f64 / 1e9)).collect::<Vec<_>>(),
        "thread_cpu_pct_whole_run": cpu.iter().map(|c| ((*c as f64 / 1e9 / secs.max(1e-9)) * 1000.0).round() / 10.0).collect::<Vec<_>>(),
    });
    if traffic {
        let m = v.as_object_mut().expect("object");
        m.insert("expected_deliveries".into(), json!(f.expected_deliveries));
        m.insert(
            "lost_deliveries".into(),
            json!(f.expected_deliveries.saturating_sub(f.deliveries)),
        );
    }
    v
}

/// Everything a scenario produced.
pub struct Outcome {
    pub summary: Value,
    pub hists: Vec<(String, Hist)>,
    pub interval_log: Option<(String, Vec<u8>)>,
    pub text: String,
    /// Why the run failed although it produced figures (too many connections failed).
    pub failed: Option<String>,
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

pub fn command_line() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run one scenario end to end (connect, measure, collect) and build its outcome.
pub fn run(spec: &Spec, c: &Common) -> anyhow::Result<Outcome> {
    let (soft, hard) = sys::raise_nofile();
    let cfg = build_config(spec, c)?;
    if spec.conns as u64 + 64 > soft {
        eprintln!(
            "warning: {} connections but RLIMIT_NOFILE is {soft} (hard {hard}): expect EMFILE failures",
            spec.conns
        );
    }
    if c.source_ips.is_none() && spec.conns > 4000 && cfg.addr.ip().is_loopback() {
        eprintln!(
            "hint: {} connections from one source address: the kernel's ephemeral port search slows connect() down \
             (and corechat caps connections per IP); spread them with --source-ips 127.0.0.2-127.0.0.250",
            spec.conns
        );
    }
    let progress = !c.no_progress;
    eprintln!(
        "{} -> {} ({}): {} conns, {} rooms{}, {} thread(s)",
        spec.kind.name(),
        c.url,
        c.target.name(),
        spec.conns,
        spec.rooms,
        match spec.kind {
            Kind::Ramp => format!(", rates {:?} msg/s", spec.rates),
            Kind::Fanout | Kind::Rooms | Kind::Bigroom | Kind::Rtt =>
                format!(", {} msg/s", spec.rate),
            Kind::Acks => format!(
                ", {} in flight per connection, {}",
                spec.window,
                if spec.rate > 0.0 {
                    format!("at most {} msg/s", spec.rate)
                } else {
                    "closed loop".into()
                }
            ),
            _ => String::new(),
        },
        cfg.threads
    );
    let sat = c.saturation_pct / 100.0;
    let mut d = Driver::start(cfg, c.server_pid, progress);
    match spec.kind {
        Kind::Rtt => d.interval_tag = "rtt",
        Kind::Acks => d.interval_tag = "ack",
        _ => {}
    }
    let srv_before = d.sample_server();
    let t_start = sys::mono_ns();
    let host_before = hosthealth::sample();
    d.connect_phase();
    let srv_connected = d.sample_server();
    let cs = d.connect.take().expect("connect summary");
    let conn_line = format!(
        "connected {}/{} in {:.2} s ({} conn/s), handshake p50 {:.2} ms p99 {:.2} ms{}",
        cs.ready,
        spec.conns,
        cs.secs,
        human(cs.rate()),
        Pcts::of(&cs.hs_total).p50,
        Pcts::of(&cs.hs_total).p99,
        if cs.failed > 0 {
            format!(", {} failed {:?}", cs.failed, cs.failures)
        } else {
            String::new()
        }
    );
    eprintln!("{conn_line}");
    d.connect = Some(cs);
    let ready = d.connect.as_ref().map_or(0, |c| c.ready);
    if ready == 0 {
        let (_, _, _d) = d.stop();
        anyhow::bail!("no connection could be set up ({conn_line})");
    }

    let mut figures = serde_json::Map::new();
    let mut hists: Vec<(String, Hist)> = Vec::new();
    let mut text = String::new();
    let mut saturated = false;
    let mut primary = "handshake".to_string();
    use std::fmt::Write as _;
    let mut failed = None;
    if let Some(cs) = &d.connect {
        if cs.failed > 0 {
            let pct = failed_pct(cs.failed, spec.conns);
            let _ = writeln!(
                text,
                "connection failures: {} of {} ({pct}%): {}",
                fmt_failures(cs.failed, &cs.failures_by_cause()),
                spec.conns,
                cs.failures
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if pct > c.max_failed_pct {
                let why = format!(
                    "{} of {} connections failed ({pct}%, more than --max-failed-pct {}%): the figures are not those of {} connections",
                    cs.failed, spec.conns, c.max_failed_pct, spec.conns
                );
                let _ = writeln!(text, "FAILED: {why}");
                failed = Some(why);
            }
        }
    }

    match spec.kind {
        Kind::Fanout | Kind::Rooms | Kind::Bigroom | Kind::Rtt => {
            let w = warm_up_and_measure(&mut d, spec, spec.rate, c.drain);
            saturated |= w.max_util() > sat;
            let p = Pcts::of(&w.stats.hist);
            let lat_key = if spec.kind == Kind::Rtt {
                "rtt_ms"
            } else {
                "latency_ms"
            };
            if let Value::Object(m) = window_json(&w, lat_key) {
                figures.extend(m);
            }
            if spec.kind == Kind::Rtt {
                let _ = writeln!(
                    text,
                    "rtt: {} pings at {:.0}/s, rtt p50 {:.3} ms p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms, lost {}",
                    w.stats.published,
                    w.stats.published as f64 / w.secs,
                    p.p50, p.p90, p.p99, p.p999, p.max,
                    w.stats.expected.saturating_sub(w.stats.received)
                );
                primary = "rtt".into();
            } else {
                let _ = writeln!(
                    text,
                    "{}: {} deliveries/s ({} msg/s published), latency p50 {:.2} ms p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
                    spec.kind.name(),
                    human(w.deliveries_per_sec()),
                    human(w.stats.published as f64 / w.secs),
                    p.p50, p.p90, p.p99, p.p999, p.max
                );
                if w.arrivals_per_sec < 0.95 * w.deliveries_per_sec() {
                    let _ = writeln!(
                        text,
                        "note: only {} deliveries/s arrived while the window was open: the server queued the rest (see latency)",
                        human(w.arrivals_per_sec)
                    );
                }
                let _ = writeln!(
                    text,
                    "loss {:.4}% ({} of {} expected deliveries missing), seq gaps {} (missing {}), dups {}{}",
                    w.loss_pct(),
                    w.stats.expected.saturating_sub(w.stats.received),
                    w.stats.expected,
                    w.stats.seq.gaps,
                    w.stats.seq.missing,
                    w.stats.seq.dups,
                    if w.drained { "" } else { " (drain timed out)" }
                );
                primary = "latency".into();
            }
            if let Some(s) = w.server_cpu_secs() {
                let _ = writeln!(
                    text,
                    "server CPU {:.2} s ({:.0}% of the window)",
                    s,
                    w.server_cpu_pct().unwrap_or(0.0)
                );
            }
            write_loadgen_cpu(&mut text, &w);
            hists.push((primary.clone(), w.stats.hist));
        }
        Kind::Acks => {
            // no cap: closed loop, each connection keeps `window` publishes in flight
            let rate = if spec.rate > 0.0 {
                spec.rate
            } else {
                f64::INFINITY
            };
            let w = warm_up_and_measure(&mut d, spec, rate, c.drain);
            saturated |= w.max_util() > sat;
            let p = Pcts::of(&w.stats.hist);
            let acks_per_sec = w.stats.received as f64 / w.secs.max(1e-9);
            let unacked = w.stats.expected.saturating_sub(w.stats.received);
            if let Value::Object(m) = window_json(&w, "ack_ms") {
                figures.extend(m);
            }
            figures.insert("acks".into(), json!(w.stats.received));
            figures.insert("acks_per_sec".into(), json!(acks_per_sec.round()));
            figures.insert("errors_in_window".into(), json!(w.stats.errors));
            figures.insert("unacked".into(), json!(unacked));
            let _ = writeln!(
                text,
                "acks: {} acks/s ({} publishes/s; {} conns x {} in flight, {} rooms), ack latency p50 {:.3} ms p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
                human(acks_per_sec),
                human(w.stats.published as f64 / w.secs.max(1e-9)),
                ready,
                spec.window,
                spec.rooms,
                p.p50, p.p90, p.p99, p.p999, p.max
            );
            let _ = writeln!(
                text,
                "{} acks, {} errors, {} unacked of {} publishes in the window{}",
                w.stats.received,
                w.stats.errors,
                unacked,
                w.stats.published,
                if w.drained { "" } else { " (drain timed out)" }
            );
            if let Some(s) = w.server_cpu_secs() {
                let _ = writeln!(
                    text,
                    "server CPU {:.2} s ({:.0}% of the window), {:.1} us per ack",
                    s,
                    w.server_cpu_pct().unwrap_or(0.0),
                    s * 1e6 / (w.stats.received.max(1) as f64)
                );
            }
            write_loadgen_cpu(&mut text, &w);
            primary = "ack".into();
            hists.push((primary.clone(), w.stats.hist));
        }
        Kind::Ramp => {
            d.set_rate(spec.rates[0]);
            if spec.warmup > 0.0 {
                d.run_for(spec.warmup, "warmup");
            }
            let mut steps = Vec::new();
            let mut best: Option<(f64, f64)> = None;
            for (i, &rate) in spec.rates.iter().enumerate() {
                if i > 0 {
                    d.set_rate(rate);
                }
                let o = d.open_window();
                d.run_for(spec.step_secs, &format!("{rate}/s"));
                let w = d.close_window(o, c.drain, true);
                let p = Pcts::of(&w.stats.hist);
                let loss = w.loss_pct();
                let pass =
                    w.stats.expected > 0 && loss < spec.max_loss_pct && p.p99 < spec.max_p99_ms;
                let lg_sat = w.max_util() > sat;
                saturated |= lg_sat && pass;
                let pace_p99_us = if w.stats.pacing.is_empty() {
                    0.0
                } else {
                    w.stats.pacing.value_at_quantile(0.99) as f64
                };
                let _ = writeln!(
                    text,
                    "step {:>6} msg/s: {:>9} deliveries/s, p50 {:>8.2} ms p99 {:>8.2} ms, loss {:.3}%, loadgen {} pace p99 {:.0} us server {}{}{}  {}",
                    rate,
                    human(w.deliveries_per_sec()),
                    p.p50,
                    p.p99,
                    loss,
                    fmt_pcts(&w.thread_util),
                    pace_p99_us,
                    w.server_cpu_pct().map_or("-".into(), |x| format!("{x:.0}%")),
                    if lg_sat { " (loadgen-bound)" } else { "" },
                    if pace_p99_us > crate::pacer::PACE_LIMIT_US {
                        " (could not keep pace)"
                    } else {
                        ""
                    },
                    if pass { "PASS" } else { "FAIL" }
                );
                let mut sj = window_json(&w, "latency_ms");
                if let Value::Object(m) = &mut sj {
                    m.insert("rate".into(), json!(rate));
                    m.insert("pass".into(), json!(pass));
                    m.insert("loadgen_saturated".into(), json!(lg_sat));
                }
                steps.push(sj);
                let name = format!("step-{:02}-{}", i + 1, rate);
                if pass {
                    let dps = w.deliveries_per_sec();
                    if best.is_none_or(|b| dps > b.1) {
                        best = Some((rate, dps));
                        primary = name.clone();
                    }
                }
                hists.push((name, w.stats.hist));
                if !pass && !spec.all_steps {
                    break;
                }
            }
            if primary == "handshake" {
                if let Some((n, _)) = hists.first() {
                    primary = n.clone();
                }
            }
            figures.insert("steps".into(), Value::Array(steps));
            figures.insert(
                "saturation".into(),
                match best {
                    Some((r, dps)) => json!({"rate": r, "deliveries_per_sec": dps.round()}),
                    None => Value::Null,
                },
            );
            figures.insert(
                "saturation_deliveries_per_sec".into(),
                json!(best.map(|b| b.1.round())),
            );
            let _ = writeln!(
                text,
                "saturation (loss < {}% and p99 < {} ms): {}",
                spec.max_loss_pct,
                spec.max_p99_ms,
                match best {
                    Some((r, dps)) => format!("{} deliveries/s at {} msg/s", human(dps), r),
                    None => "no step passed".into(),
                }
            );
        }
        Kind::Idle => {
            d.run_for(spec.hold, "hold");
            let after = d.sample_server();
            let peak = d.server_peak_rss_kib();
            if let (Some(b), Some(a)) = (srv_before, after) {
                let kib = (a.rss_kib as f64 - b.rss_kib as f64) / ready.max(1) as f64;
                figures.insert("server_rss_before_kib".into(), json!(b.rss_kib));
                figures.insert("server_rss_after_kib".into(), json!(a.rss_kib));
                figures.insert("server_rss_peak_kib".into(), json!(peak));
                figures.insert("server_hwm_kib".into(), json!(a.hwm_kib));
                figures.insert("kib_per_conn".into(), json!(round3(kib)));
                figures.insert(
                    "server_cpu_secs".into(),
                    json!(round3(a.cpu_ns.saturating_sub(b.cpu_ns) as f64 / 1e9)),
                );
                let _ = writeln!(
                    text,
                    "idle: {} connections held {} s: server RSS {:.1} -> {:.1} MiB (peak {:.1}) = {:.2} KiB per connection",
                    ready,
                    spec.hold,
                    b.rss_kib as f64 / 1024.0,
                    a.rss_kib as f64 / 1024.0,
                    peak as f64 / 1024.0,
                    kib
                );
            } else {
                let _ = writeln!(
                    text,
                    "idle: {ready} connections held {} s (no --server-pid: no memory figures)",
                    spec.hold
                );
            }
        }
        Kind::Connect => {
            if let (Some(b), Some(a)) = (srv_before, srv_connected) {
                figures.insert(
                    "server_cpu_secs".into(),
                    json!(round3(a.cpu_ns.saturating_sub(b.cpu_ns) as f64 / 1e9)),
                );
                figures.insert("server_rss_after_kib".into(), json!(a.rss_kib));
            }
        }
    }

    let cs = d.connect.take().expect("connect summary");
    figures.insert(
        "connect".into(),
        connect_json(&cs, spec.conns, c.max_failed_pct),
    );
    if matches!(spec.kind, Kind::Connect | Kind::Idle) {
        let util: Vec<f64> = cs
            .thread_cpu_secs
            .iter()
            .map(|s| s / cs.secs.max(1e-9))
            .collect();
        if util.iter().any(|u| *u > sat) {
            saturated = true;
        }
        let _ = writeln!(
            text,
            "loadgen CPU per thread while connecting: {}",
            fmt_pcts(&util)
        );
        figures.insert("handshakes_per_sec".into(), json!(cs.rate().round()));
        figures.insert("conn_per_sec".into(), json!(cs.rate().round()));
        let p = Pcts::of(&cs.hs_total);
        figures.insert("handshake_p50_ms".into(), json!(round3(p.p50)));
        figures.insert("handshake_p99_ms".into(), json!(round3(p.p99)));
        let _ = writeln!(
            text,
            "connect: {} of {} joined in {:.2} s = {} handshakes/s; handshake (tcp+upgrade+welcome+join) p50 {:.2} ms p99 {:.2} ms max {:.2} ms{}",
            cs.ready,
            spec.conns,
            cs.secs,
            human(cs.rate()),
            p.p50,
            p.p99,
            p.max,
            if cs.failed > 0 { format!("; {} failed", cs.failed) } else { String::new() }
        );
    }
    hists.push(("handshake".into(), cs.hs_total.clone()));
    hists.push(("handshake-tcp".into(), cs.hs_tcp.clone()));
    hists.push(("handshake-upgrade".into(), cs.hs_upgrade.clone()));

    let (fin, cpu, d) = d.stop();
    let total_secs = (sys::mono_ns() - t_start) as f64 / 1e9;
    let host_health = HostHealth::between(&host_before, &hosthealth::sample());
    let _ = writeln!(text, "{}", host_health.line());
    if !fin.errors.is_empty() {
        let _ = writeln!(text, "server errors: {:?}", fin.errors);
        if spec.kind == Kind::Acks && fin.errors.contains_key("rate_limited") {
            let _ = writeln!(
                text,
                "hint: lift corechat's per-connection limit: serve --rate-per-sec 1000000 --burst 1000000"
            );
        }
    }
    if spec.kind == Kind::Acks {
        let errors: u64 = fin.errors.values().sum();
        figures.insert("errors".into(), json!(errors));
        figures.insert("errors_by_code".into(), json!(fin.errors));
        figures.insert("room_messages".into(), json!(fin.room_messages));
        figures.insert(
            "room_seq".into(),
            json!({ "gaps": fin.seq_other.gaps, "missing": fin.seq_other.missing, "dups": fin.seq_other.dups }),
        );
        figures.insert("unmatched_replies".into(), json!(fin.unmatched));
        if fin.seq_other.gaps > 0 || fin.seq_other.dups > 0 {
            let _ = writeln!(
                text,
                "warning: room messages out of sequence: {} gaps ({} missing), {} dups",
                fin.seq_other.gaps, fin.seq_other.missing, fin.seq_other.dups
            );
        }
    }
    if matches!(spec.mode(), Mode::Traffic { .. }) {
        let lost = fin.expected_deliveries.saturating_sub(fin.deliveries);
        let o = fin.seq_other;
        if lost > 0 || o.gaps > 0 || o.dups > 0 {
            let _ = writeln!(
                text,
                "whole run: {lost} of {} expected deliveries missing; outside the windows seq gaps {} (missing {}), dups {}",
                fin.expected_deliveries, o.gaps, o.missing, o.dups
            );
        }
    }
    if !fin.disconnects.is_empty() {
        let _ = writeln!(text, "disconnects during the run: {:?}", fin.disconnects);
    }
    if fin.untimed > 0 {
        let _ = writeln!(
            text,
            "warning: {} messages without a send time in their body",
            fin.untimed
        );
    }
    if fin.publish_skipped > 0 {
        let _ = writeln!(
            text,
            "warning: the load generator fell behind and skipped {} publishes",
            fin.publish_skipped
        );
        saturated = true;
    }
    if saturated {
        let _ = writeln!(
            text,
            "WARNING: the load generator was saturated (a thread above {:.0}% CPU): figures are bounded by it; add --threads or cores",
            c.saturation_pct
        );
    }

    let log = d.interval_log(d.interval_tag);
    let interval_log = if log.is_empty() {
        None
    } else {
        let name = format!("{}.hlog", d.interval_tag);
        Some((
            name,
            log.render(&format!("loadgen {} {}", spec.kind.name(), command_line()))?,
        ))
    };

    let summary = json!({
        "scenario": spec.kind.name(),
        "target": c.target.name(),
        "url": c.url,
        "params": spec.params_json(),
        "threads": d.cfg.threads,
        "figures": Value::Object(figures),
        "run": run_json(&fin, &cpu, total_secs, matches!(spec.mode(), Mode::Traffic { .. })),
        "loadgen_saturated": saturated,
        "failed": failed,
        "primary_histogram": primary,
        "histograms": hists.iter().map(|(n, _)| format!("{n}.hgrm")).collect::<Vec<_>>(),
        "interval_log": interval_log.as_ref().map(|(n, _)| n.clone()),
        "server_pid": c.server_pid,
        "server_flags": c.server_flags,
        "server_samples": d.server_samples.iter().map(|s| json!({"t": round3((s.at_ns.saturating_sub(t_start)) as f64 / 1e9), "cpu_secs": round3(s.cpu_ns as f64 / 1e9), "rss_kib": s.rss_kib, "hwm_kib": s.hwm_kib})).collect::<Vec<_>>(),
        "command_line": command_line(),
        "git_commit": sys::git_commit(),
        "host": sys::host_facts(),
        "host_health": host_health.to_json(),
        "started_unix_ms": sys::unix_ms() - (total_secs * 1000.0) as u64,
        "wall_secs": round3(total_secs),
        "loadgen_version": env!("CARGO_PKG_VERSION"),
    });
    Ok(Outcome {
        summary,
        hists,
        interval_log,
        text,
        failed,
    })
}

/// Warm-up at `rate`, then one measurement window of `spec.duration`.
fn warm_up_and_measure(d: &mut Driver, spec: &Spec, rate: f64, drain: f64) -> WindowResult {
    d.set_rate(rate);
    if spec.warmup > 0.0 {
        d.run_for(spec.warmup, "warmup");
    }
    let o = d.open_window();
    d.run_for(spec.duration, "measure");
    d.close_window(o, drain, true)
}

fn write_loadgen_cpu(text: &mut String, w: &WindowResult) {
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "loadgen CPU per thread during the window: {}",
        fmt_pcts(&w.thread_util)
    );
    if let Some(line) = crate::pacer::pacing_text(&w.stats.pacing) {
        let _ = writeln!(text, "{line}");
    }
}

fn fmt_pcts(u: &[f64]) -> String {
    u.iter()
        .map(|x| format!("{:.0}%", x * 100.0))
        .collect::<Vec<_>>()
        .join("/")
}

/// Write summary.json, the .hgrm files and the interval log into `dir`.
pub fn write_out(dir: &Path, o: &Outcome) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&o.summary)? + "\n",
    )?;
    for (name, h) in &o.hists {
        std::fs::write(dir.join(format!("{name}.hgrm")), hgrm(h))?;
    }
    if let Some((name, bytes)) = &o.interval_log {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
