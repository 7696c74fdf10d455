//! Flags: the clap definition, defaults, every flag parsed, and validation
//! errors that name the option.

use super::*;

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
    // The flattened serve flags must not replace the program's own help text.
    let about = Cli::command().get_about().map(|a| a.to_string());
    assert_eq!(
        about.as_deref(),
        Some("Thread-per-core real-time chat server")
    );
    assert!(Cli::command().get_long_about().is_none());
}

#[test]
fn no_subcommand_means_serve_with_defaults() {
    let cfg = resolve(&[]).unwrap();
    let d = Config::default();
    // No secret: development mode listens on loopback only.
    assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(d.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(cfg.shards, d.shards);
    assert!(cfg.shards >= 1);
    assert!(cfg.pin);
    assert_eq!(cfg.data_dir, PathBuf::from("./data"));
    assert_eq!(cfg.store, StoreKind::Sqlite);
    assert_eq!(cfg.durability, Durability::Sync);
    assert_eq!(cfg.jwt_public_key, None);
    assert_eq!(cfg.redis, None);
    assert!(cfg.allowed_origins.is_empty());
    assert_eq!(cfg.max_frame_bytes, 65536);
    assert_eq!(cfg.max_body_bytes, 16384);
    assert_eq!((cfg.rate_per_sec, cfg.burst), (20, 40));
    assert_eq!(cfg.heartbeat_ms, 30_000);
    assert_eq!(cfg.heartbeat_timeout_ms, 10_000);
    assert_eq!(cfg.handshake_timeout_ms, 5_000);
    assert_eq!(cfg.max_outbound_bytes, 4_194_304);
    assert_eq!(cfg.max_conns_per_ip, 1000);
    assert_eq!(cfg.max_upgrades_per_ip_per_sec, 200);
    assert_eq!(cfg.drain_timeout_ms, 10_000);
    assert_eq!(cfg.log_level, "info");
    assert_eq!(cfg.backlog, 4096);
    assert_eq!(cfg.history_ring, 1000);
    assert_eq!(cfg.max_parse_errors, 10);
    assert_eq!(cfg.max_rooms_per_conn, 200);
    assert_eq!(cfg.jwt_leeway_s, 30);
    assert_eq!(cfg.log_format, LogFormat::Text);
    assert_eq!(cfg.max_guests_per_ip_per_min, 30);
    assert_eq!(cfg.retention_interval, Duration::from_secs(60));
    assert_eq!((cfg.batch_max, cfg.batch_delay_us), (4096, 500));
    assert_eq!(cfg.retention_messages, None);
    assert_eq!(cfg.retention_age, None);
    assert!(valid_node_id(&cfg.node_id));
    // Everything but the generated parts matches Default.
    let same = Config {
        listen: d.listen,
        node_id: d.node_id.clone(),
        jwt_secret: None,
        guest: false,
        random_secret: false,
        ..cfg.clone()
    };
    assert_eq!(same, d);
}

#[test]
fn default_node_id_shape() {
    let a = Config::default().node_id;
    assert_eq!(a.len(), 8);
    assert!(a.starts_with("n-"));
    assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    let ids: std::collections::HashSet<String> =
        (0..50).map(|_| Config::default().node_id).collect();
    assert!(ids.len() > 1, "node ids are random");
}

#[test]
fn random_secret_when_no_key() {
    let a = resolve(&[]).unwrap();
    assert!(a.random_secret);
    assert!(a.guest, "guest login is on with a random secret");
    let secret = a.jwt_secret.clone().unwrap();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    let b = resolve(&[]).unwrap();
    assert_ne!(a.jwt_secret, b.jwt_secret);
    // Even an explicit --guest=false cannot leave the server with no way in.
    assert!(resolve(&["--guest=false"]).unwrap().guest);
}

#[test]
fn configured_secret_keeps_guest_off() {
    let cfg = resolve(&["--jwt-secret", "s3cret"]).unwrap();
    assert_eq!(cfg.jwt_secret.as_deref(), Some("s3cret"));
    assert!(!cfg.random_secret);
    assert!(!cfg.guest);
    let cfg = resolve(&["--jwt-secret", "s3cret", "--guest"]).unwrap();
    assert!(cfg.guest);
    assert!(err(&["--jwt-secret", ""]).contains("--jwt-secret"));
}

#[test]
fn public_key_must_be_readable() {
    let key = TempFile::new("-----BEGIN PUBLIC KEY-----\n");
    let cfg = resolve(&["--jwt-public-key", key.0.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.jwt_public_key.as_deref(), Some(key.0.as_path()));
    assert!(!cfg.random_secret);
    assert_eq!(cfg.jwt_secret, None);
    assert!(!cfg.guest);
    let e = err(&["--jwt-public-key", "/nonexistent/corechat/key.pem"]);
    assert!(
        e.starts_with("invalid --jwt-public-key: cannot read /nonexistent/corechat/key.pem"),
        "{e}"
    );
}

#[test]
fn top_level_and_serve_flags() {
    let top = resolve(&["--listen", "127.0.0.1:9000", "--no-pin"]).unwrap();
    assert_eq!(top.listen, "127.0.0.1:9000".parse().unwrap());
    assert!(!top.pin);
    let sub = resolve(&["serve", "--listen", "127.0.0.1:9000", "--no-pin"]).unwrap();
    assert_eq!(sub.listen, top.listen);
    assert!(!sub.pin);
    let _g = env_lock();
    // Mixing top-level options with a subcommand is refused.
    assert!(parse(&["--listen", "127.0.0.1:9000", "serve"]).is_err());
    assert!(parse(&["--shards", "2", "echo"]).is_err());
}

#[test]
fn all_flags_parse() {
    let cfg = resolve(&[
        "--listen=[::1]:7000",
        "--shards=3",
        "--no-pin=false",
        "--data-dir=/var/lib/cc",
        "--store=memory",
        "--durability=relaxed",
        "--jwt-secret=k",
        "--guest",
        "--node-id=node_1.a-b",
        "--allowed-origin=https://a.example",
        "--allowed-origin=http://b.example:8080,https://c.example",
        "--max-frame-bytes=1000",
        "--max-body-bytes=1000",
        "--rate-per-sec=5",
        "--burst=6",
        "--heartbeat-ms=7",
        "--heartbeat-timeout-ms=8",
        "--handshake-timeout-ms=9",
        "--max-outbound-bytes=10",
        "--max-conns-per-ip=11",
        "--max-upgrades-per-ip-per-sec=12",
        "--drain-timeout-ms=0",
        "--log-level=corechat=debug",
        "--backlog=13",
        "--history-ring=14",
        "--max-parse-errors=0",
        "--batch-max=15",
        "--batch-delay-us=0",
        "--retention-messages=16",
        "--retention-age=12h",
    ])
    .unwrap();
    assert_eq!(cfg.listen, "[::1]:7000".parse().unwrap());
    assert_eq!(cfg.shards, 3);
    assert!(cfg.pin);
    assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/cc"));
    assert_eq!(cfg.store, StoreKind::Memory);
    assert_eq!(cfg.durability, Durability::Relaxed);
    assert!(cfg.guest);
    assert_eq!(cfg.node_id, "node_1.a-b");
    assert_eq!(
        cfg.allowed_origins,
        [
            "https://a.example",
            "http://b.example:8080",
            "https://c.example"
        ]
    );
    assert_eq!((cfg.max_frame_bytes, cfg.max_body_bytes), (1000, 1000));
    assert_eq!((cfg.rate_per_sec, cfg.burst), (5, 6));
    assert_eq!(
        (
            cfg.heartbeat_ms,
            cfg.heartbeat_timeout_ms,
            cfg.handshake_timeout_ms
        ),
        (7, 8, 9)
    );
    assert_eq!(cfg.max_outbound_bytes, 10);
    assert_eq!(
        (cfg.max_conns_per_ip, cfg.max_upgrades_per_ip_per_sec),
        (11, 12)
    );
    assert_eq!(cfg.drain_timeout_ms, 0);
    assert_eq!(cfg.log_level, "corechat=debug");
    assert_eq!(cfg.backlog, 13);
    assert_eq!(cfg.history_ring, 14);
    assert_eq!(cfg.max_parse_errors, 0);
    assert_eq!((cfg.batch_max, cfg.batch_delay_us), (15, 0));
    assert_eq!(cfg.retention_messages, Some(16));
    assert_eq!(cfg.retention_age, Some(Duration::from_secs(12 * 3600)));
}

#[test]
fn bad_flag_values_are_clap_errors() {
    let _g = env_lock();
    for args in [
        &["--listen", "nope"][..],
        &["--shards", "-1"],
        &["--store", "postgres"],
        &["--durability", "maybe"],
        &["--retention-age", "7w"],
        &["--no-pin=perhaps"],
        &["--max-frame-bytes", "1e6"],
    ] {
        assert!(parse(args).is_err(), "{args:?}");
    }
}

#[test]
fn validation_errors_name_the_option() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--shards", "0"],
            "invalid --shards: must be between 1 and 1024",
        ),
        (
            &["--shards", "1025"],
            "invalid --shards: must be between 1 and 1024",
        ),
        (
            &["--max-frame-bytes", "0"],
            "invalid --max-frame-bytes: must be greater than zero",
        ),
        (
            &["--max-body-bytes", "0"],
            "invalid --max-body-bytes: must be greater than zero",
        ),
        (
            &["--max-body-bytes", "70000"],
            "invalid --max-body-bytes: must not exceed --max-frame-bytes (65536)",
        ),
        (
            &["--rate-per-sec", "0"],
            "invalid --rate-per-sec: must be greater than zero",
        ),
        (&["--burst", "0"], "invalid --burst: must be greater than zero"),
        (
            &["--heartbeat-ms", "0"],
            "invalid --heartbeat-ms: must be greater than zero",
        ),
        (
            &["--heartbeat-timeout-ms", "0"],
            "invalid --heartbeat-timeout-ms: must be greater than zero",
        ),
        (
            &["--handshake-timeout-ms", "0"],
            "invalid --handshake-timeout-ms: must be greater than zero",
        ),
        (
            &["--max-outbound-bytes", "0"],
            "invalid --max-outbound-bytes: must be greater than zero",
        ),
        (
            &["--max-conns-per-ip", "0"],
            "invalid --max-conns-per-ip: must be greater than zero",
        ),
        (
            &["--max-upgrades-per-ip-per-sec", "0"],
            "invalid --max-upgrades-per-ip-per-sec: must be greater than zero",
        ),
        (
            &["--history-ring", "0"],
            "invalid --history-ring: must be greater than zero",
        ),
        (
            &["--batch-max", "0"],
            "invalid --batch-max: must be greater than zero",
        ),
        (
            &["--backlog=-5"],
            "invalid --backlog: must be greater than zero",
        ),
        (
            &["--retention-messages", "0"],
            "invalid --retention-messages: must be greater than zero",
        ),
        (&["--log-level= "], "invalid --log-level: must not be empty"),
        (
            &["--node-id", "bad id"],
            "invalid --node-id: must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
        ),
        (
            &["--allowed-origin", "https://a.example/"],
            "invalid --allowed-origin: \"https://a.example/\" is not an origin like https://chat.example.com",
        ),
    ];
    for (args, want) in cases {
        let got = err(args);
        assert_eq!(&got, want, "{args:?}");
        assert!(!got.contains('\n'));
    }
    // clap refuses an empty path itself; the file can still supply one.
    let f = TempFile::new("data_dir = \"\"\n");
    assert_eq!(
        err(&["--config", f.0.to_str().unwrap()]),
        "invalid --data-dir: must not be empty"
    );
    {
        let _g = env_lock();
        assert!(parse(&["--data-dir="]).is_err());
    }
    let long_id = "x".repeat(65);
    assert!(err(&["--node-id", &long_id]).starts_with("invalid --node-id"));
    assert!(err(&["--allowed-origin", "a.example"]).starts_with("invalid --allowed-origin"));
    assert!(resolve(&["--node-id", &"x".repeat(64)]).is_ok());
}
