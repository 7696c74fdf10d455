//! The driver thread: starts the workers, steps them through the phases of a scenario
//! (connect, warm-up, measurement windows, drain), samples the server and the load generator's
//! own CPU, and gathers the reports.

use crate::engine::{self, Config, ConnectReport, FinalReport, Report, Shared, WinStats};
use crate::stats::{new_hist, Hist, IntervalLog};
use crate::sys::{self, core_times, mono_ns, sample_proc, ProcSample};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::*;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Connect-phase results merged over threads.
pub struct ConnectSummary {
    pub ready: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub per_room: Vec<u32>,
    pub publishers: Vec<usize>,
    pub hs_total: Hist,
    pub hs_tcp: Hist,
    pub hs_upgrade: Hist,
    /// Seconds from the first connect() to the last `joined`.
    pub secs: f64,
    /// CPU seconds of each worker thread until it finished connecting.
    pub thread_cpu_secs: Vec<f64>,
}

impl ConnectSummary {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ready as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Failed connections by cause: `http <status>`, `refused`, `timeout` or `other` (the
    /// exact reasons are in `failures`).
    pub fn failures_by_cause(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (reason, n) in &self.failures {
            *m.entry(failure_cause(reason)).or_default() += n;
        }
        m
    }
}

/// The cause of a connection that could not be set up, from its reason.
pub fn failure_cause(reason: &str) -> String {
    if reason.starts_with("http ") {
        reason.to_string()
    } else if reason == "connection refused" {
        "refused".into()
    } else if reason.starts_with("timeout") || reason == "tcp timeout" {
        "timeout".into()
    } else {
        "other".into()
    }
}

/// A measurement window's results with the CPU figures around it.
/// State captured when a window opens: id, time, thread CPU, server sample, core times.
pub struct OpenWindow {
    w: u32,
    t0: u64,
    cpu0: Vec<u64>,
    srv0: Option<ProcSample>,
    cores0: Vec<(u64, u64)>,
    del0: u64,
}

pub struct WindowResult {
    pub stats: WinStats,
    pub secs: f64,
    /// Per worker thread CPU utilisation during the window (0..1).
    pub thread_util: Vec<f64>,
    pub server: Option<(ProcSample, ProcSample)>,
    pub core_busy: Vec<f64>,
    pub drained: bool,
    /// Deliveries that arrived while the window was open (whatever their send time), per second.
    pub arrivals_per_sec: f64,
}

impl WindowResult {
    pub fn loss_pct(&self) -> f64 {
        if self.stats.expected == 0 {
            0.0
        } else {
            (self.stats.expected.saturating_sub(self.stats.received)) as f64 * 100.0
                / self.stats.expected as f64
        }
    }
    pub fn deliveries_per_sec(&self) -> f64 {
        self.stats.received as f64 / self.secs.max(1e-9)
    }
    pub fn max_util(&self) -> f64 {
        self.thread_util.iter().copied().fold(0.0, f64::max)
    }
    pub fn server_cpu_secs(&self) -> Option<f64> {
        self.server
            .map(|(a, b)| (b.cpu_ns.saturating_sub(a.cpu_ns)) as f64 / 1e9)
    }
    pub fn server_cpu_pct(&self) -> Option<f64> {
        self.server_cpu_secs()
            .map(|s| s * 100.0 / self.secs.max(1e-9))
    }
}

pub struct Driver {
    pub cfg: Arc<Config>,
    pub sh: Arc<Shared>,
    rx: Receiver<Report>,
    handles: Vec<JoinHandle<()>>,
    pub server_pid: Option<u32>,
    pub server_samples: Vec<ProcSample>,
    pub progress: bool,
    pub connect: Option<ConnectSummary>,
    windows: BTreeMap<u32, (usize, WinStats)>,
    next_window: u32,
    finals: Vec<FinalReport>,
    // ticks / interval log
    base_wall: SystemTime,
    base_mono: u64,
    tick: u64,
    tick_times: Vec<u64>,
    /// Interval latency histograms by tick (all windows), for the interval log.
    intervals: BTreeMap<u64, Hist>,
    /// Latencies of each window received with ticks so far.
    win_hists: BTreeMap<u32, Hist>,
    stop_mono: u64,
    pub interval_tag: &'static str,
    // live rates
    last_live: (u64, u64, Vec<u64>, Option<ProcSample>),
    pub start_cpu_ns: u64,
    pub start_mono: u64,
    first_start: Option<u64>,
    last_ready: u64,
}

fn bar(progress: bool, len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if progress {
            ProgressDrawTarget::stderr_with_hz(5)
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

impl Driver {
    pub fn start(cfg: Config, server_pid: Option<u32>, progress: bool) -> Driver {
        let cfg = Arc::new(cfg);
        let sh = Arc::new(Shared::new(cfg.threads));
        let (tx, rx) = channel();
        let cores = if cfg.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let handles = (0..cfg.threads)
            .map(|i| {
                let core = if cores.is_empty() {
                    None
                } else {
                    Some(cores[i % cores.len()])
                };
                engine::spawn(i, cfg.clone(), sh.clone(), tx.clone(), core)
            })
            .collect();
        let now = mono_ns();
        Driver {
            cfg,
            sh,
            rx,
            handles,
            server_pid,
            server_samples: Vec::new(),
            progress,
            connect: None,
            windows: BTreeMap::new(),
            next_window: 1,
            finals: Vec::new(),
            base_wall: SystemTime::now(),
            base_mono: now,
            tick: 0,
            tick_times: vec![now],
            intervals: BTreeMap::new(),
            win_hists: BTreeMap::new(),
            stop_mono: 0,
            interval_tag: "latency",
            last_live: (now, 0, Vec::new(), None),
            start_cpu_ns: sys::self_cpu_ns(),
            start_mono: now,
            first_start: None,
            last_ready: 0,
        }
    }

    /// A worker thread that died (it printed its panic) would otherwise
    /// leave the driver waiting for its reports forever: stop loudly.
    fn check_workers(&self) {
        if self.handles.iter().any(|h| h.is_finished())
            && self.sh.phase.load(std::sync::atomic::Ordering::Acquire) != engine::PHASE_STOP
        {
            panic!("a load generator thread died (its panic message is above); the run is invalid");
        }
    }

    pub fn sample_server(&mut self) -> Option<ProcSample> {
        let s = sample_proc(self.server_pid?)?;
        self.server_samples.push(s);
        Some(s)
    }

    pub fn server_peak_rss_kib(&self) -> u64 {
        self.server_samples
            .iter()
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
    }

    fn thread_cpu(&self) -> Vec<u64> {
        self.sh
            .threads
            .iter()
            .map(|t| t.cpu_ns.load(Relaxed))
            .collect()
    }

    fn handle(&mut self, r: Report) {
        match r {
            Report::Connected(c) => self.on_connected(*c),
            Report::Tick {
                tick, window, hist, ..
            } => {
                let _ = self
                    .intervals
                    .entry(tick)
                    .or_insert_with(new_hist)
                    .add(&*hist);
                if window > 0 {
                    let _ = self
                        .win_hists
                        .entry(window)
                        .or_insert_with(new_hist)
                        .add(&*hist);
                }
            }
            Report::Window { window, stats, .. } => {
                let e = self
                    .windows
                    .entry(window)
                    .or_insert_with(|| (0, WinStats::new()));
                e.0 += 1;
                e.1.merge(&stats);
                // the part recorded since the last tick belongs to the next interval
                let _ = self
                    .intervals
                    .entry(self.tick + 1)
                    .or_insert_with(new_hist)
                    .add(&stats.hist);
            }
            Report::Final(f) => self.finals.push(*f),
        }
    }

    fn on_connected(&mut self, c: ConnectReport) {
        let rooms = self.cfg.rooms.max(1);
        let threads = self.cfg.threads;
        let s = self.connect.get_or_insert_with(|| ConnectSummary {
            ready: 0,
            failed: 0,
            failures: BTreeMap::new(),
            per_room: vec![0; rooms],
            publishers: vec![0; threads],
            hs_total: new_hist(),
            hs_tcp: new_hist(),
            hs_upgrade: new_hist(),
            secs: 0.0,
            thread_cpu_secs: vec![0.0; threads],
        });
        s.thread_cpu_secs[c.thread] = c.cpu_ns as f64 / 1e9;
        s.ready += c.ready;
        s.failed += c.failed;
        for (k, v) in c.failures {
            *s.failures.entry(k).or_default() += v;
        }
        for (a, b) in s.per_room.iter_mut().zip(&c.per_room) {
            *a += b;
        }
        s.publishers[c.thread] = c.publishers;
        let _ = s.hs_total.add(&c.hs_total);
        let _ = s.hs_tcp.add(&c.hs_tcp);
        let _ = s.hs_upgrade.add(&c.hs_upgrade);
        if c.last_ready_ns > 0 && c.first_start_ns > 0 {
            // secs = max(last_ready) - min(first_start) over threads
            let first = self
                .first_start
                .map_or(c.first_start_ns, |f| f.min(c.first_start_ns));
            let last = self.last_ready.max(c.last_ready_ns);
            self.first_start = Some(first);
            self.last_ready = last;
            s.secs = (last - first) as f64 / 1e9;
        }
    }

    /// The interval log of latencies (one histogram per second, all windows together).
    pub fn interval_log(&self, tag: &str) -> IntervalLog {
        let mut log = IntervalLog::new(self.base_wall);
        for (&tick, h) in &self.intervals {
            let t = tick as usize;
            if t == 0 || t > self.tick_times.len() || h.is_empty() {
                continue;
            }
            let start = self.tick_times[t - 1];
            let end = self
                .tick_times
                .get(t)
                .copied()
                .unwrap_or(self.stop_mono.max(start));
            log.push(
                tag,
                Duration::from_nanos(start - self.base_mono),
                Duration::from_nanos(end - start),
                h.clone(),
            );
        }
        log
    }

    /// Advance the tick (interval log boundary) and refresh the progress message.
    fn do_tick(&mut self) {
        self.tick += 1;
        self.tick_times.push(mono_ns());
        self.sh.tick.store(self.tick, Release);
        self.sample_server();
    }

    /// A one-line live status: deliveries/s, loadgen CPU, server CPU.
    fn live(&mut self) -> String {
        let now = mono_ns();
        let del = self.sh.sum(|t| &t.deliveries);
        let cpu = self.thread_cpu();
        let srv = self.server_pid.and_then(sample_proc);
        let (t0, d0, c0, s0) = std::mem::replace(&mut self.last_live, (now, del, cpu.clone(), srv));
        let dt = (now - t0) as f64 / 1e9;
        if dt <= 0.0 {
            return String::new();
        }
        let rate = (del - d0) as f64 / dt;
        let util = cpu
            .iter()
            .zip(c0.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b) as f64 / 1e9 / dt * 100.0)
            .fold(0.0, f64::max);
        let mut s = format!("{} deliv/s, loadgen {:.0}% cpu", human(rate), util);
        if let (Some(a), Some(b)) = (s0, srv) {
            let pct = b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e9 / dt * 100.0;
            s += &format!(", server {:.0}% cpu {} MiB", pct, b.rss_kib / 1024);
        }
        s
    }

    /// Run the connect phase: wait until every worker has finished connecting.
    pub fn connect_phase(&mut self) -> &ConnectSummary {
        let total = self.cfg.conns as u64;
        let pb = bar(
            self.progress,
            total,
            "connect [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
        );
        let started = mono_ns();
        let mut reports = 0;
        let mut last_tick = mono_ns();
        while reports < self.cfg.threads {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Report::Connected(c)) => {
                    self.on_connected(*c);
                    reports += 1;
                }
                Ok(r) => self.handle(r),
                Err(RecvTimeoutError::Timeout) => self.check_workers(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let ready = self.sh.sum(|t| &t.ready);
            let failed = self.sh.sum(|t| &t.failed);
            let el = (mono_ns() - started) as f64 / 1e9;
            pb.set_position(ready + failed);
            pb.set_message(format!(
                "{:.0} conn/s, {} failed",
                ready as f64 / el.max(1e-3),
                failed
            ));
            if mono_ns() - last_tick > 1_000_000_000 {
                last_tick = mono_ns();
                self.sample_server();
            }
        }
        pb.finish_and_clear();
        let c = self.connect.as_mut().expect("connect summary");
        let members = c.per_room.clone();
        let _ = self.sh.members.set(members);
        self.sh.phase.store(engine::PHASE_RUN, Release);
        // interval log and ticks start now
        self.base_wall = SystemTime::now();
        self.base_mono = mono_ns();
        self.tick_times = vec![self.base_mono];
        self.intervals.clear();
        self.connect.as_ref().expect("connect summary")
    }

    pub fn publishers(&self) -> Vec<usize> {
        self.connect
            .as_ref()
            .map(|c| c.publishers.clone())
            .unwrap_or_default()
    }

    pub fn set_rate(&self, total: f64) {
        self.sh.set_rate(total, &self.publishers());
    }

    /// Let time pass (with progress and ticks), handling reports.
    pub fn run_for(&mut self, secs: f64, label: &str) {
        let ms = (secs * 1000.0) as u64;
        let pb = bar(
            self.progress,
            ms.max(1),
            &format!("{label:>8} [{{elapsed_precise}}] {{bar:40}} {{msg}}"),
        );
        let start = mono_ns();
        let end = start + ms * 1_000_000;
        let mut next_tick = self.tick_times.last().copied().unwrap_or(start) + 1_000_000_000;
        loop {
            let now = mono_ns();
            if now >= end {
                break;
            }
            if now >= next_tick {
                self.do_tick();
                next_tick += 1_000_000_000;
                if next_tick < now {
                    next_tick = now + 1_000_000_000;
                }
                let m = self.live();
                pb.set_message(m);
            }
            pb.set_position((now - start) / 1_000_000);
            let wait = (end.min(next_tick) - now).min(100_000_000);
            match self.rx.recv_timeout(Duration::from_nanos(wait)) {
                Ok(r) => self.handle(r),
                Err(RecvTimeoutError::Timeout) => self.check_workers(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        pb.finish_and_clear();
    }

    /// Open a measurement window: messages published from now on carry its number.
    pub fn open_window(&mut self) -> OpenWindow {
        let w = self.next_window;
        self.next_window += 1;
        let cpu = self.thread_cpu();
        let srv = self.sample_server();
        let cores = core_times();
        let del0 = self.sh.sum(|t| &t.deliveries);
        let t = mono_ns();
        self.sh.window.store(w, Release);
        OpenWindow {
            w,
            t0: t,
            cpu0: cpu,
            srv0: srv,
            cores0: cores,
            del0,
        }
    }

    /// Close the window (stop counting new publishes into it), stop publishing, wait until
    /// every expected delivery arrived (or `drain` passes), and collect the merged stats.
    pub fn close_window(
        &mut self,
        open: OpenWindow,
        drain: f64,
        stop_publishing: bool,
    ) -> WindowResult {
        let OpenWindow {
            w,
            t0,
            cpu0,
            srv0,
            cores0,
            del0,
        } = open;
        self.sh.window.store(0, Release);
        if stop_publishing {
            self.set_rate(0.0);
        }
        let t1 = mono_ns();
        let del1 = self.sh.sum(|t| &t.deliveries);
        let cpu1 = self.thread_cpu();
        let srv1 = self.sample_server();
        let cores1 = core_times();
        let secs = (t1 - t0) as f64 / 1e9;
        // the workers publish their cpu counters every 50 ms: use the window length as is
        let thread_util = cpu1
            .iter()
            .zip(&cpu0)
            .map(|(b, a)| (b.saturating_sub(*a) as f64 / 1e9 / secs).min(1.5))
            .collect();
        // drain
        let wi = w as usize;
        let deadline = mono_ns() + (drain * 1e9) as u64;
        let mut drained = false;
        // give in-flight publishes time to be counted
        std::thread::sleep(Duration::from_millis(60));
        loop {
            let exp: u64 = self.sh.sum(|t| &t.expected[wi]);
            let rcv: u64 = self.sh.sum(|t| &t.received[wi]);
            if exp > 0 && rcv >= exp {
                drained = true;
                break;
            }
            if exp == 0 && mono_ns() > t1 + 200_000_000 {
                drained = true;
                break;
            }
            if mono_ns() >= deadline {
                break;
            }
            match self.rx.recv_timeout(Duration::from_millis(10)) {
                Ok(r) => self.handle(r),
                Err(RecvTimeoutError::Timeout) => self.check_workers(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // collect
        self.sh.collect_upto.store(w, Release);
        let stats = loop {
            if let Some((n, _)) = self.windows.get(&w) {
                if *n == self.cfg.threads {
                    let mut st = self.windows.remove(&w).expect("present").1;
                    if let Some(h) = self.win_hists.remove(&w) {
                        let _ = st.hist.add(&h);
                    }
                    break st;
                }
            }
            match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(r) => self.handle(r),
                Err(_) => {
                    let mut st = self.windows.remove(&w).map(|x| x.1).unwrap_or_default();
                    if let Some(h) = self.win_hists.remove(&w) {
                        let _ = st.hist.add(&h);
                    }
                    break st;
                }
            }
        };
        WindowResult {
            stats,
            secs,
            thread_util,
            server: srv0.zip(srv1),
            core_busy: sys::core_busy_pct(&cores0, &cores1),
            drained,
            arrivals_per_sec: del1.saturating_sub(del0) as f64 / secs.max(1e-9),
        }
    }

    /// Stop the workers and return their final reports merged.
    pub fn stop(mut self) -> (FinalReport, Vec<u64>, Driver) {
        self.sh.phase.store(engine::PHASE_STOP, Release);
        let n = self.cfg.threads;
        while self.finals.len() < n {
            match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(r) => self.handle(r),
                Err(_) => break,
            }
        }
        for h in std::mem::take(&mut self.handles) {
            let _ = h.join();
        }
        while let Ok(r) = self.rx.try_recv() {
            self.handle(r);
        }
        self.stop_mono = mono_ns();
        let mut total = FinalReport::default();
        let mut cpu = Vec::new();
        for f in std::mem::take(&mut self.finals) {
            total.deliveries += f.deliveries;
            total.published += f.published;
            total.expected_deliveries += f.expected_deliveries;
            total.acks += f.acks;
            total.pongs += f.pongs;
            total.room_messages += f.room_messages;
            total.unmatched += f.unmatched;
            total.late += f.late;
            total.untimed += f.untimed;
            total.publish_skipped += f.publish_skipped;
            if let Some(h) = &f.pacing {
                let _ = total
                    .pacing
                    .get_or_insert_with(crate::stats::new_hist)
                    .add(h);
            }
            total.seq_other.merge(&f.seq_other);
            total.other_frames += f.other_frames;
            for (k, v) in f.errors {
                *total.errors.entry(k).or_default() += v;
            }
            for (k, v) in f.disconnects {
                *total.disconnects.entry(k).or_default() += v;
            }
            cpu.push(f.cpu_ns);
        }
        self.sample_server();
        (total, cpu, self)
    }
}

/// Format a rate with k/M suffixes.
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
