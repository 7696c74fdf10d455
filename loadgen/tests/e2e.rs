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

struct Mock {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Mock {
    fn start(secret: &str) -> Mock {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let opts = MockOpts {
            listen: "127.0.0.1:0".parse().unwrap(),
            secret: Some(secret.to_string()),
            flush_ms: 1,
        };
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
    let o = run(&[
        "fanout",
        "--url",
        &url,
        "--jwt-secret",
        "s3cret",
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
    ])
    .unwrap();
    let f = &o.summary["figures"];
    assert_eq!(f["connect"]["ready"], 200, "{}", o.summary);
    let expected = f["expected"].as_u64().unwrap();
    let received = f["received"].as_u64().unwrap();
    // 200 msg/s over 4 rooms of 50 members for ~1 s
    assert!(expected > 5_000, "expected {expected}");
    assert_eq!(received, expected, "{}", o.summary);
    assert_eq!(f["loss_pct"], 0.0);
    assert_eq!(f["seq_gaps"], 0);
    assert_eq!(f["seq_dups"], 0);
    assert!(f["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(o.summary["scenario"], "fanout");
    assert!(o.summary["command_line"].is_string());
    assert!(o.summary["host"]["kernel"].is_string());

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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rtt_and_connect_against_mock() {
    let m = Mock::start("k");
    let url = m.url();
    let o = run(&[
        "rtt",
        "--url",
        &url,
        "--jwt-secret",
        "k",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
    ])
    .unwrap();
    let f = &o.summary["figures"];
    let got = f["received"].as_u64().unwrap();
    assert!(got >= 400, "{}", o.summary);
    assert_eq!(f["expected"].as_u64().unwrap(), got);
    assert!(f["rtt_ms"]["p50"].as_f64().unwrap() > 0.0);

    let o = run(&[
        "connect",
        "--url",
        &url,
        "--jwt-secret",
        "k",
        "--conns",
        "300",
        "--rooms",
        "30",
    ])
    .unwrap();
    let f = &o.summary["figures"];
    assert_eq!(f["connect"]["ready"], 300);
    assert!(f["handshakes_per_sec"].as_f64().unwrap() > 0.0);
    assert!(f["handshake_p99_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_secret_is_refused_with_401() {
    let m = Mock::start("right");
    let url = m.url();
    let err = run(&[
        "connect",
        "--url",
        &url,
        "--jwt-secret",
        "wrong",
        "--conns",
        "5",
    ])
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
    let o = run(&[
        "acks",
        "--url",
        &url,
        "--jwt-secret",
        "acks-secret",
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
    ])
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
