//! End to end: short scenarios against the built-in mock server (JWT auth on), checking the
//! figures, the loss accounting and the files written with --out; and the `acks` scenario
//! against the real corechat binary with its SQLite store.

use clap::Parser;
use loadgen::cli::Cli;
use loadgen::mock::{serve, MockOpts};
use loadgen::scenarios::{self, Spec};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Mock {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Mock {
    fn start(secret: &str) -> Mock {
        Mock::with(secret, |_| {})
    }
    /// A mock with JWT auth and options set by `f` (dropping, refusing).
    fn with(secret: &str, f: impl FnOnce(&mut MockOpts)) -> Mock {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut opts = MockOpts {
            secret: Some(secret.to_string()),
            ..MockOpts::new("127.0.0.1:0".parse().unwrap())
        };
        f(&mut opts);
        let s = stop.clone();
        let handle = std::thread::spawn(move || serve(opts, s, Some(tx)).unwrap());
        let addr = rx.recv().unwrap();
        Mock {
            addr,
            stop,
            handle: Some(handle),
        }
    }
    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `loadgen <scenario> --url <url> --jwt-secret <secret> <extra>`, run in process.
fn run_at(
    scenario: &str,
    url: &str,
    secret: &str,
    extra: &[&str],
) -> anyhow::Result<scenarios::Outcome> {
    let mut v = vec![scenario, "--url", url, "--jwt-secret", secret];
    v.extend_from_slice(extra);
    run(&v)
}

fn run(args: &[&str]) -> anyhow::Result<scenarios::Outcome> {
    let mut v = vec!["loadgen"];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--no-progress", "--no-pin"]);
    let cli = Cli::parse_from(v);
    let (spec, common) = Spec::from_cmd(&cli.cmd).expect("scenario");
    scenarios::run(&spec, &common)
}

#[test]
fn fanout_against_mock_has_no_loss_and_writes_outputs() {
    let m = Mock::start("s3cret");
    let url = m.url();
    let o = run_at(
        "fanout",
        &url,
        "s3cret",
        &[
            "--conns",
            "200",
            "--rooms",
            "4",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--threads",
            "2",
        ],
    )
    .unwrap();
    let f = &o.summary["figures"];
    assert_eq!(f["connect"]["ready"], 200, "{}", o.summary);
    assert_eq!(f["connect"]["failed"], 0, "{}", o.summary);
    // 4 rooms of 50 members: every publish is owed to 50 connections, and the mock loses none
    let published = f["published"].as_u64().unwrap();
    let expected = f["expected"].as_u64().unwrap();
    let received = f["received"].as_u64().unwrap();
    assert!(published > 0, "{}", o.summary);
    assert_eq!(expected, published * 50, "{}", o.summary);
    assert_eq!(received, expected, "{}", o.summary);
    // the whole run (warm-up included) too
    let r = &o.summary["run"];
    let run_published = r["published"].as_u64().unwrap();
    assert!(run_published >= published);
    assert_eq!(
        r["expected_deliveries"].as_u64().unwrap(),
        run_published * 50
    );
    assert_eq!(r["deliveries"].as_u64().unwrap(), run_published * 50, "{r}");
    assert_eq!(r["lost_deliveries"], 0, "{r}");
    assert_eq!(r["seq_outside_windows"]["gaps"], 0, "{r}");
    assert_eq!(f["loss_pct"], 0.0);
    assert_eq!(f["seq_gaps"], 0);
    assert_eq!(f["seq_dups"], 0);
    assert!(f["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(o.summary["scenario"], "fanout");
    assert!(o.summary["command_line"].is_string());
    assert!(o.summary["host"]["kernel"].is_string());
    // The host counters were read around the run: its own loopback traffic is in them.
    let h = &o.summary["host_health"];
    assert!(h["tcp_out_segs"].as_u64().unwrap() > 50, "{h}");
    assert!(h["steal_pct"].is_number(), "{h}");
    assert!(
        o.text.contains("host: clean") || o.text.contains("the host was disturbed"),
        "{}",
        o.text
    );

    let dir = std::env::temp_dir().join(format!("loadgen-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    scenarios::write_out(&dir, &o).unwrap();
    for f in [
        "summary.json",
        "latency.hgrm",
        "handshake.hgrm",
        "latency.hlog",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let h =
        loadgen::stats::Hgrm::parse(&std::fs::read_to_string(dir.join("latency.hgrm")).unwrap())
            .unwrap();
    assert_eq!(h.total, Some(received));
    // compare a run with itself: ratios of 1
    let t = loadgen::report::compare_text(&dir, &dir).unwrap();
    assert!(t.contains("deliveries_per_sec"));
    assert!(t.contains("1.00x"));
    // the gate: a run against itself is the same on every row, and the overlay is drawn
    let svg = dir.join("overlay.svg");
    let runs = vec![dir.clone(), dir.clone()];
    let t = loadgen::gate::compare(&runs, &runs, Some(&svg)).unwrap();
    assert!(t.contains("| latency p99 ms |"), "{t}");
    assert!(t.contains("| deliveries/s |"), "{t}");
    assert!(!t.contains("| better |") && !t.contains("| worse |"), "{t}");
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("base run 1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn paced_fanout_reports_its_pacing_error_with_room_blocks() {
    let m = Mock::start("s3cret");
    let url = m.url();
    let o = run_at(
        "fanout",
        &url,
        "s3cret",
        &[
            "--conns",
            "40",
            "--rooms",
            "4",
            "--room-blocks",
            "--rate",
            "500",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    )
    .unwrap();
    let f = &o.summary["figures"];
    // rooms in blocks of 10 members, one publisher each: every publish owed to 10
    let published = f["published"].as_u64().unwrap();
    assert!(published > 300, "{}", o.summary);
    assert_eq!(f["expected"].as_u64().unwrap(), published * 10);
    assert_eq!(f["received"], f["expected"], "{}", o.summary);
    // one pacing error per publish of the window
    let pe = &f["pacing_error"];
    assert_eq!(pe["count"].as_u64().unwrap(), published, "{pe}");
    assert!(pe["p50_us"].as_f64().unwrap() >= 1.0, "{pe}");
    assert!(pe["kept_pace"].is_boolean(), "{pe}");
    assert!(o.text.contains("pacing error (send - due)"), "{}", o.text);
    assert!(o.summary["run"]["pacing_error"]["count"].as_u64().unwrap() >= published);
}

#[test]
fn rtt_and_connect_against_mock() {
    let m = Mock::start("k");
    let url = m.url();
    let o = run_at("rtt", &url, "k", &["--duration", "0.5", "--warmup", "0.1"]).unwrap();
    let f = &o.summary["figures"];
    // every ping of the window answered, once
    let pings = f["published"].as_u64().unwrap();
    assert!(pings > 0, "{}", o.summary);
    assert_eq!(f["expected"].as_u64().unwrap(), pings, "{}", o.summary);
    assert_eq!(f["received"].as_u64().unwrap(), pings, "{}", o.summary);
    assert!(f["rtt_ms"]["p50"].as_f64().unwrap() > 0.0);

    let o = run_at("connect", &url, "k", &["--conns", "300", "--rooms", "30"]).unwrap();
    let f = &o.summary["figures"];
    assert_eq!(f["connect"]["ready"], 300);
    assert_eq!(f["connect"]["failed"], 0);
    assert!(o.failed.is_none());
    assert!(f["handshakes_per_sec"].as_f64().unwrap() > 0.0);
    assert!(f["handshake_p99_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn fanout_counts_every_dropped_delivery_and_gap() {
    // The mock fans out no copy of every 7th message of the room: each of the 20 members loses
    // it, and sees a seq gap when the next message arrives.
    const N: u64 = 7;
    const M: u64 = 20;
    let m = Mock::with("d", |o| o.drop_every = Some(N));
    let url = m.url();
    let o = short_fanout(&url, "d", M);
    let f = &o.summary["figures"];
    let r = &o.summary["run"];
    assert_eq!(f["connect"]["ready"], M, "{}", o.summary);
    // one room, one publisher: the room's seqs are 1..=P, and seq s is dropped iff N divides s
    let p = r["published"].as_u64().unwrap();
    assert!(p > 2 * N, "too few publishes to drop any: {r}");
    assert_eq!(r["expected_deliveries"].as_u64().unwrap(), p * M, "{r}");
    assert_eq!(r["lost_deliveries"].as_u64().unwrap(), (p / N) * M, "{r}");
    assert_eq!(r["deliveries"].as_u64().unwrap(), (p - p / N) * M, "{r}");
    // a drop shows as a gap once a later seq arrives: every dropped seq but a last one (P)
    let gaps = f["seq_gaps"].as_u64().unwrap() + r["seq_outside_windows"]["gaps"].as_u64().unwrap();
    let missing =
        f["seq_missing"].as_u64().unwrap() + r["seq_outside_windows"]["missing"].as_u64().unwrap();
    assert_eq!(gaps, ((p - 1) / N) * M, "{}", o.summary);
    assert_eq!(missing, gaps, "{}", o.summary);
    assert_eq!(f["seq_dups"], 0);
    assert_eq!(r["seq_outside_windows"]["dups"], 0);
    // the measurement window lost whole messages (all M copies), and says so
    let (expected, received) = (
        f["expected"].as_u64().unwrap(),
        f["received"].as_u64().unwrap(),
    );
    let lost = expected - received;
    assert!(lost > 0 && lost % M == 0, "{}", o.summary);
    assert!(f["loss_pct"].as_f64().unwrap() > 0.0);
    assert!(
        o.text.contains(&format!(
            "({lost} of {expected} expected deliveries missing)"
        )),
        "{}",
        o.text
    );
    assert!(
        o.text
            .contains(&format!("whole run: {} of {} expected", (p / N) * M, p * M)),
        "{}",
        o.text
    );
}

/// One second of `fanout` into one room of `members` on two threads, against
/// a faulty mock (the drop and duplicate tests).
fn short_fanout(url: &str, tag: &str, members: u64) -> scenarios::Outcome {
    let conns = members.to_string();
    run_at(
        "fanout",
        url,
        tag,
        &[
            "--conns",
            &conns,
            "--rooms",
            "1",
            "--rate",
            "300",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--drain",
            "0.3",
            "--threads",
            "2",
        ],
    )
    .unwrap()
}

#[test]
fn fanout_counts_every_duplicate_delivery() {
    // The mock sends every 5th message of the room twice: each of the 12 members counts a
    // duplicate for it, and no gap or loss.
    const N: u64 = 5;
    const M: u64 = 12;
    let m = Mock::with("u", |o| o.dup_every = Some(N));
    let url = m.url();
    let o = short_fanout(&url, "u", M);
    let f = &o.summary["figures"];
    let r = &o.summary["run"];
    assert_eq!(f["connect"]["ready"], M, "{}", o.summary);
    let p = r["published"].as_u64().unwrap();
    assert!(p > 2 * N, "too few publishes to repeat any: {r}");
    let dups = f["seq_dups"].as_u64().unwrap() + r["seq_outside_windows"]["dups"].as_u64().unwrap();
    assert_eq!(dups, (p / N) * M, "{}", o.summary);
    assert_eq!(r["deliveries"].as_u64().unwrap(), (p + p / N) * M, "{r}");
    let gaps = f["seq_gaps"].as_u64().unwrap() + r["seq_outside_windows"]["gaps"].as_u64().unwrap();
    assert_eq!(gaps, 0, "{}", o.summary);
    assert_eq!(r["lost_deliveries"], 0, "{r}");
}

#[test]
fn refused_connections_are_counted_and_fail_the_run() {
    // Every 4th upgrade gets HTTP 429: 10 of each 40 connections fail (25%).
    let m = Mock::with("r", |o| o.refuse_every = Some(4));
    let url = m.url();
    let args = ["--conns", "40", "--rooms", "4"];
    let o = run_at("connect", &url, "r", &args).unwrap();
    let c = &o.summary["figures"]["connect"];
    assert_eq!(c["ready"], 30, "{}", o.summary);
    assert_eq!(c["failed"], 10, "{}", o.summary);
    assert_eq!(c["failed_pct"], 25.0);
    assert_eq!(c["failed_by_cause"], serde_json::json!({"http 429": 10}));
    assert!(
        o.text
            .contains("connection failures: 10 (http 429: 10) of 40 (25%)"),
        "{}",
        o.text
    );
    let why = o.failed.as_deref().expect("more than 1% failed");
    assert!(why.contains("10 of 40 connections failed"), "{why}");
    assert_eq!(o.summary["failed"], why);

    // Within a looser threshold the run passes, still counting the failures.
    let mut loose = args.to_vec();
    loose.extend(["--max-failed-pct", "25"]);
    let o = run_at("connect", &url, "r", &loose).unwrap();
    assert_eq!(o.summary["figures"]["connect"]["failed"], 10);
    assert!(o.failed.is_none(), "{:?}", o.failed);

    // The binary exits non-zero, after printing and writing the figures.
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-refused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["connect", "--url", &url, "--jwt-secret", "r"])
        .args(args)
        .args(["--no-progress", "--no-pin", "--out"])
        .arg(&dir)
        .output()
        .expect("run loadgen");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("connection failures: 10 (http 429: 10)"),
        "{stdout}"
    );
    assert!(stderr.contains("10 of 40 connections failed"), "{stderr}");
    let t = loadgen::report::table_text(std::slice::from_ref(&dir), false).unwrap();
    assert!(t.contains("failed conns"), "{t}");
    assert!(t.contains("10 (http 429: 10)"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that accepts and never answers (another program on the port, a wrong
/// `--target`): once a whole window of connections timed out with none through, the rest
/// are counted as not tried, so the run ends after one timeout instead of one per window.
#[test]
fn a_server_that_never_answers_ends_the_run_after_one_window() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let held = {
        let stop = stop.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let args = [
        "--conns",
        "60",
        "--max-in-flight",
        "4",
        "--connect-timeout",
        "0.5",
        "--threads",
        "1",
    ];
    let outcome = run_at("connect", &url, "s", &args);
    stop.store(true, Ordering::Relaxed);
    held.join().unwrap();
    let text = match outcome {
        Ok(o) => o.summary.to_string(),
        Err(e) => format!("{e:#}"),
    };
    // The first window timed out; the other 56 were never tried.
    assert!(
        text.contains("60 failed")
            && text.contains("\"not tried: the first 4 timed out, none answered\": 56")
            && text.contains("\"timeout: http upgrade\": 4"),
        "{text}"
    );
}

#[test]
fn bad_secret_is_refused_with_401() {
    let m = Mock::start("right");
    let url = m.url();
    let err = run_at("connect", &url, "wrong", &["--conns", "5"])
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains("http 401"), "{err:#}");
}

/// The workspace's corechat binary, built (if stale) with the profile of this test binary:
/// `CORECHAT_BIN` if set, else `cargo build -p corechat --bin corechat` into this test's target
/// directory (a no-op when it is up to date).
fn corechat_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CORECHAT_BIN") {
        return p.into();
    }
    // <target-dir>/<profile>/deps/e2e-<hash>
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile name");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-p", "corechat", "--bin", "corechat", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        p => {
            cmd.args(["--profile", p]);
        }
    }
    let st = cmd.status().expect("run cargo build -p corechat");
    assert!(st.success(), "cargo build -p corechat failed: {st}");
    profile_dir.join("corechat")
}

/// `corechat serve` on a free loopback port; killed (and its data dir removed) on drop.
struct Corechat {
    child: Child,
    addr: String,
    data_dir: PathBuf,
}

impl Corechat {
    fn start(secret: &str, extra: &[&str]) -> Corechat {
        let data_dir = std::env::temp_dir().join(format!(
            "loadgen-e2e-corechat-{}-{}",
            std::process::id(),
            loadgen::sys::mono_ns()
        ));
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut child = Command::new(corechat_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-pin",
                "--shards",
                "1",
            ])
            .args(["--jwt-secret", secret])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start corechat");
        // the first line of stdout names the address it listens on
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read listening line");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = reader.read_to_string(&mut sink);
        });
        Corechat {
            child,
            addr,
            data_dir,
        }
    }
    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Corechat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[test]
fn acks_against_corechat_sqlite() {
    let srv = Corechat::start(
        "acks-secret",
        &[
            "--store",
            "sqlite",
            "--rate-per-sec",
            "1000000",
            "--burst",
            "1000000",
        ],
    );
    let url = srv.url();
    let o = run_at(
        "acks",
        &url,
        "acks-secret",
        &[
            "--server-pid",
            &srv.child.id().to_string(),
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--conns",
            "4",
            "--rooms",
            "2",
        ],
    )
    .unwrap();
    let f = &o.summary["figures"];
    assert_eq!(o.summary["scenario"], "acks");
    assert_eq!(f["connect"]["ready"], 4, "{}", o.summary);
    let acks = f["acks"].as_u64().unwrap();
    assert!(acks > 0, "{}", o.summary);
    assert!(f["acks_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(f["errors"], 0, "{}", o.summary);
    assert_eq!(f["errors_in_window"], 0, "{}", o.summary);
    assert_eq!(f["unacked"], 0, "{}", o.summary);
    // closed loop with one publish in flight per connection: published = acked
    assert_eq!(f["published"].as_u64().unwrap(), acks);
    let l = &f["ack_ms"];
    assert_eq!(l["count"].as_u64().unwrap(), acks);
    let (p50, p99, max) = (
        l["p50"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{l}");
    // the publishers also got their rooms' messages, in sequence
    assert!(f["room_messages"].as_u64().unwrap() >= acks);
    assert_eq!(f["room_seq"]["gaps"], 0, "{}", o.summary);
    assert_eq!(f["room_seq"]["dups"], 0, "{}", o.summary);
    assert!(o.text.contains("acks/s"), "{}", o.text);

    let dir = std::env::temp_dir().join(format!("loadgen-e2e-acks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    scenarios::write_out(&dir, &o).unwrap();
    for name in ["summary.json", "ack.hgrm", "handshake.hgrm"] {
        assert!(dir.join(name).exists(), "{name} missing");
    }
    assert_eq!(o.summary["primary_histogram"], "ack");
    let h = loadgen::stats::Hgrm::parse(&std::fs::read_to_string(dir.join("ack.hgrm")).unwrap())
        .unwrap();
    assert_eq!(h.total, Some(acks));
    let t = loadgen::report::table_text(std::slice::from_ref(&dir), false).unwrap();
    assert!(t.contains("acks/s"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn acks_refuses_peers() {
    let err = run(&[
        "acks",
        "--url",
        "ws://127.0.0.1:9/ws",
        "--target",
        "uws",
        "--conns",
        "1",
    ])
    .err()
    .expect("must fail");
    assert!(format!("{err:#}").contains("--target corechat"), "{err:#}");
}

#[test]
fn abuse_against_corechat_reports_every_shape() {
    // small parameters: the run must finish well under 60 s against a debug build
    let srv = Corechat::start(
        "abuse-secret",
        &[
            "--store",
            "memory",
            "--rate-per-sec",
            "1000",
            "--burst",
            "1000",
            "--max-outbound-bytes",
            "65536",
        ],
    );
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-abuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shapes = ["read-spam", "pipelined-publish", "resume-backlog"];
    let t0 = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["abuse", "--url", &srv.url(), "--jwt-secret", "abuse-secret"])
        .args(["--server-pid", &srv.child.id().to_string()])
        .args(["--shapes", &shapes.join(",")])
        .args([
            "--duration",
            "3",
            "--settle",
            "0.3",
            "--setup-timeout",
            "10",
        ])
        .args(["--backlog", "60", "--pipeline", "16", "--read-spam", "50"])
        .args(["--no-progress", "--out"])
        .arg(&dir)
        .output()
        .expect("run loadgen abuse");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(t0.elapsed().as_secs() < 60, "took {:?}", t0.elapsed());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["scenario"], "abuse");
    let rows = s["figures"]["shapes"].as_array().expect("shapes rows");
    assert_eq!(rows.len(), shapes.len(), "{s}");
    for (row, shape) in rows.iter().zip(shapes) {
        assert_eq!(row["shape"], shape, "{row}");
        // memory: numbers (the server pid was given), peak at least start and end
        let (a, p, e) = (
            row["rss_start_mib"].as_f64(),
            row["rss_peak_mib"].as_f64(),
            row["rss_end_mib"].as_f64(),
        );
        let (a, p, e) = (
            a.expect("rss start"),
            p.expect("rss peak"),
            e.expect("rss end"),
        );
        assert!(a > 0.0 && p >= a && p >= e && e > 0.0, "{row}");
        // the verdict is there (whether the server passes is not this test's business)
        let v = row["verdict"].as_str().expect("verdict");
        assert!(!v.is_empty() && !v.starts_with("error:"), "{row}");
        assert!(row["pass"].is_boolean(), "{row}");
        assert!(row["normal_connected"].is_boolean(), "{row}");
        assert!(row["normal"]["sent"].is_u64(), "{row}");
        assert!(stdout.contains(shape), "{stdout}");
    }
    // `loadgen table` shows it
    let t = loadgen::report::table_text(std::slice::from_ref(&dir), false).unwrap();
    assert!(t.contains("resume-backlog") && t.contains("verdict"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /metrics` of a corechat server: the sum of one counter over its shards.
fn corechat_metric(addr: &str, name: &str) -> f64 {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn fanout_with_deflate_inflates_every_delivery_from_corechat() {
    let srv = Corechat::start(
        "zip-secret",
        &[
            "--store",
            "memory",
            "--rate-per-sec",
            "1000000",
            "--burst",
            "1000000",
        ],
    );
    let url = srv.url();
    let o = run_at(
        "fanout",
        &url,
        "zip-secret",
        &[
            "--deflate",
            "--conns",
            "20",
            "--rooms",
            "1",
            "--rate",
            "20",
            "--body",
            "600",
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
        ],
    )
    .unwrap();
    let f = &o.summary["figures"];
    assert_eq!(f["connect"]["ready"], 20, "{}", o.summary);
    let published = f["published"].as_u64().unwrap();
    assert!(published > 0, "{}", o.summary);
    assert_eq!(f["received"], f["expected"], "{}", o.summary);
    assert_eq!(f["seq_gaps"], 0);
    assert_eq!(f["seq_dups"], 0);
    // The messages came compressed (one compression per message, all 20 members
    // negotiated it), and the load generator read every one of them.
    let compressed = corechat_metric(&srv.addr, "corechat_frames_compressed_total");
    let publishes = corechat_metric(&srv.addr, "corechat_publishes_total");
    assert!(compressed >= published as f64, "{compressed} < {published}");
    assert_eq!(
        compressed, publishes,
        "one compression per published message"
    );
}

/// wss://: fanout and idle against corechat with `--tls-cert`, the
/// certificate checked with `--tls-ca` (and not checked with
/// `--tls-insecure`); a wss:// URL with neither is refused.
#[test]
fn fanout_and_idle_over_wss_against_corechat_tls() {
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let srv = Corechat::start(
        "tls-secret",
        &[
            "--store",
            "memory",
            "--rate-per-sec",
            "1000000",
            "--burst",
            "1000000",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = srv.addr.rsplit(':').next().unwrap();
    let url = format!("wss://localhost:{port}/ws");
    let ca = cert.to_str().unwrap();
    let o = run_at(
        "fanout",
        &url,
        "tls-secret",
        &[
            "--tls-ca",
            ca,
            "--conns",
            "50",
            "--rooms",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0.3",
        ],
    )
    .unwrap();
    let f = &o.summary["figures"];
    assert_eq!(f["connect"]["ready"], 50, "{}", o.summary);
    let published = f["published"].as_u64().unwrap();
    assert!(published > 0, "{}", o.summary);
    assert_eq!(f["received"], f["expected"], "{}", o.summary);
    assert_eq!(f["expected"].as_u64().unwrap(), published * 25);
    assert_eq!(f["seq_gaps"], 0);

    let ip_url = format!("wss://127.0.0.1:{port}/ws");
    let o = run_at(
        "idle",
        &ip_url,
        "tls-secret",
        &[
            "--tls-insecure",
            "--conns",
            "40",
            "--rooms",
            "4",
            "--hold",
            "0.5",
        ],
    )
    .unwrap();
    assert_eq!(
        o.summary["figures"]["connect"]["ready"], 40,
        "{}",
        o.summary
    );

    match run_at("idle", &url, "tls-secret", &["--conns", "1"]) {
        Err(err) => assert!(format!("{err:#}").contains("--tls-ca"), "{err:#}"),
        Ok(_) => panic!("wss:// without --tls-ca or --tls-insecure must be refused"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
