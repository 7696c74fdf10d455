//! End to end: short scenarios against the built-in mock server (JWT auth on), checking the
//! figures, the loss accounting and the files written with --out.

use clap::Parser;
use loadgen::cli::Cli;
use loadgen::mock::{serve, MockOpts};
use loadgen::scenarios::{self, Spec};
use std::net::SocketAddr;
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
#[ignore = "did not finish within 3 minutes in a debug build on the shared 2-core machine; passes with cargo test --release -p loadgen -- --ignored (see issue 5 note)"]
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
