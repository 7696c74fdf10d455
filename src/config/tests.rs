use super::*;
use clap::CommandFactory;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Tests that parse with clap read `CORECHAT_*` from the process
/// environment, so they hold this lock; env tests set variables under it.
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets env vars for the guard's lifetime (the caller holds ENV_LOCK).
struct EnvVars(Vec<&'static str>);
impl EnvVars {
    fn set(vars: &[(&'static str, &str)]) -> Self {
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        EnvVars(vars.iter().map(|(k, _)| *k).collect())
    }
}
impl Drop for EnvVars {
    fn drop(&mut self) {
        for k in &self.0 {
            std::env::remove_var(k);
        }
    }
}

/// A temp file removed on drop.
struct TempFile(PathBuf);
impl TempFile {
    fn new(contents: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "corechat-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    let argv = std::iter::once("corechat").chain(args.iter().copied());
    Cli::try_parse_from(argv).map(Cli::into_command)
}

fn serve_args(args: &[&str]) -> ServeArgs {
    match parse(args).unwrap() {
        Command::Serve(s) => s,
        other => panic!("expected serve, got {other:?}"),
    }
}

fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
    let _g = env_lock();
    Config::resolve(&serve_args(args))
}

fn err(args: &[&str]) -> String {
    resolve(args).unwrap_err().to_string()
}

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

#[test]
fn env_vars_apply() {
    let _g = env_lock();
    let _env = EnvVars::set(&[
        ("CORECHAT_LISTEN", "127.0.0.1:7777"),
        ("CORECHAT_SHARDS", "2"),
        ("CORECHAT_NO_PIN", "1"),
        ("CORECHAT_STORE", "memory"),
        ("CORECHAT_JWT_SECRET", "from-env"),
        ("CORECHAT_GUEST", "yes"),
        (
            "CORECHAT_ALLOWED_ORIGIN",
            "https://a.example, https://b.example",
        ),
        ("CORECHAT_RETENTION_AGE", "30m"),
        ("CORECHAT_MAX_PARSE_ERRORS", "3"),
    ]);
    let cfg = Config::resolve(&serve_args(&[])).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:7777".parse().unwrap());
    assert_eq!(cfg.shards, 2);
    assert!(!cfg.pin);
    assert_eq!(cfg.store, StoreKind::Memory);
    assert_eq!(cfg.jwt_secret.as_deref(), Some("from-env"));
    assert!(!cfg.random_secret);
    assert!(cfg.guest);
    assert_eq!(
        cfg.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(cfg.retention_age, Some(Duration::from_secs(1800)));
    assert_eq!(cfg.max_parse_errors, 3);

    // Flags beat env, including turning a boolean back off.
    let cfg = Config::resolve(&serve_args(&[
        "--listen",
        "127.0.0.1:1",
        "--no-pin=false",
        "--guest=no",
    ]))
    .unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:1".parse().unwrap());
    assert!(cfg.pin);
    assert!(!cfg.guest);

    // The env is also honoured under the explicit `serve` subcommand,
    // and does not count as a top-level flag conflicting with it.
    let cfg = Config::resolve(&serve_args(&["serve"])).unwrap();
    assert_eq!(cfg.shards, 2);
    assert!(matches!(parse(&["echo"]).unwrap(), Command::Echo(_)));
    assert!(matches!(
        parse(&["token", "--user", "u"]).unwrap(),
        Command::Token(_)
    ));
}

#[test]
fn env_bool_false() {
    let _g = env_lock();
    let _env = EnvVars::set(&[("CORECHAT_NO_PIN", "false"), ("CORECHAT_JWT_SECRET", "x")]);
    let cfg = Config::resolve(&serve_args(&[])).unwrap();
    assert!(cfg.pin);
    assert!(!cfg.guest);
}

const FULL_FILE: &str = r#"
listen = "127.0.0.2:8081"
shards = 4
no_pin = true
data_dir = "/srv/chat"
store = "memory"
durability = "relaxed"
jwt_secret = "file-secret"
guest = true
node_id = "n-file"
allowed_origins = ["https://a.example", "https://b.example"]
max_frame_bytes = 100000
max_body_bytes = 50000
rate_per_sec = 1
burst = 2
heartbeat_ms = 3
heartbeat_timeout_ms = 4
handshake_timeout_ms = 5
max_outbound_bytes = 6
max_conns_per_ip = 7
max_upgrades_per_ip_per_sec = 8
drain_timeout_ms = 9
log_level = "debug"
backlog = 10
history_ring = 11
max_parse_errors = 12
batch_max = 13
batch_delay_us = 14
retention_messages = 15
retention_age = "7d"
"#;

#[test]
fn config_file_sets_everything() {
    let f = TempFile::new(FULL_FILE);
    let path = f.0.to_str().unwrap();
    let cfg = resolve(&["--config", path]).unwrap();
    assert_eq!(cfg.listen, "127.0.0.2:8081".parse().unwrap());
    assert_eq!(cfg.shards, 4);
    assert!(!cfg.pin);
    assert_eq!(cfg.data_dir, PathBuf::from("/srv/chat"));
    assert_eq!(cfg.store, StoreKind::Memory);
    assert_eq!(cfg.durability, Durability::Relaxed);
    assert_eq!(cfg.jwt_secret.as_deref(), Some("file-secret"));
    assert!(!cfg.random_secret);
    assert!(cfg.guest);
    assert_eq!(cfg.node_id, "n-file");
    assert_eq!(
        cfg.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!((cfg.max_frame_bytes, cfg.max_body_bytes), (100_000, 50_000));
    assert_eq!((cfg.rate_per_sec, cfg.burst), (1, 2));
    assert_eq!(
        (
            cfg.heartbeat_ms,
            cfg.heartbeat_timeout_ms,
            cfg.handshake_timeout_ms
        ),
        (3, 4, 5)
    );
    assert_eq!(cfg.max_outbound_bytes, 6);
    assert_eq!(
        (cfg.max_conns_per_ip, cfg.max_upgrades_per_ip_per_sec),
        (7, 8)
    );
    assert_eq!(cfg.drain_timeout_ms, 9);
    assert_eq!(cfg.log_level, "debug");
    assert_eq!(cfg.backlog, 10);
    assert_eq!(cfg.history_ring, 11);
    assert_eq!(cfg.max_parse_errors, 12);
    assert_eq!((cfg.batch_max, cfg.batch_delay_us), (13, 14));
    assert_eq!(cfg.retention_messages, Some(15));
    assert_eq!(cfg.retention_age, Some(Duration::from_secs(7 * 86_400)));
}

#[test]
fn precedence_flag_env_file_default() {
    let f = TempFile::new(
        "listen = \"127.0.0.1:1001\"\nshards = 3\nburst = 9\nno_pin = true\n\
         allowed_origins = [\"https://file.example\"]\n",
    );
    let _g = env_lock();
    let _env = EnvVars::set(&[
        ("CORECHAT_CONFIG", f.0.to_str().unwrap()),
        ("CORECHAT_LISTEN", "127.0.0.1:1002"),
        ("CORECHAT_SHARDS", "5"),
    ]);
    let cfg = Config::resolve(&serve_args(&["--listen", "127.0.0.1:1003"])).unwrap();
    assert_eq!(
        cfg.listen,
        "127.0.0.1:1003".parse().unwrap(),
        "flag beats env"
    );
    assert_eq!(cfg.shards, 5, "env beats file");
    assert_eq!(cfg.burst, 9, "file beats default");
    assert!(!cfg.pin, "file boolean applies");
    assert_eq!(cfg.allowed_origins, ["https://file.example"]);
    assert_eq!(cfg.rate_per_sec, 20, "default when nobody sets it");
    // Flags override the file's list and booleans.
    let cfg = Config::resolve(&serve_args(&[
        "--allowed-origin",
        "https://flag.example",
        "--no-pin=false",
    ]))
    .unwrap();
    assert_eq!(cfg.allowed_origins, ["https://flag.example"]);
    assert!(cfg.pin);
}

#[test]
fn config_file_errors() {
    let f = TempFile::new("listen = \"0.0.0.0:1\"\nlisten_addr = \"x\"\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(e.starts_with("invalid config file "), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains("listen_addr"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let f = TempFile::new("shards = \"four\"\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(e.contains("line 1"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let f = TempFile::new("\n\nstore = \"postgres\"\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(e.contains("line 3") && e.contains("postgres"), "{e}");

    let f = TempFile::new("retention_age = \"7 weeks\"\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(e.contains("retention_age"), "{e}");

    let f = TempFile::new("listen = \"nope\"\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(e.contains("line 1"), "{e}");

    let f = TempFile::new("this is not toml");
    assert!(err(&["--config", f.0.to_str().unwrap()]).starts_with("invalid config file"));

    let f = TempFile::new("shards = 0\n");
    assert_eq!(
        err(&["--config", f.0.to_str().unwrap()]),
        "invalid --shards: must be between 1 and 1024"
    );

    let f = TempFile::new("redis = \"redis://x\"\n");
    let cfg = resolve(&["--config", f.0.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.redis.as_deref(), Some("redis://x"));

    let e = err(&["--config", "/nonexistent/corechat.toml"]);
    assert!(
        e.starts_with("cannot read config file /nonexistent/corechat.toml: "),
        "{e}"
    );
}

#[test]
fn empty_config_file_is_fine() {
    let f = TempFile::new("# nothing\n");
    let cfg = resolve(&["--config", f.0.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(cfg.random_secret);
}

#[test]
fn cluster_mode_is_accepted() {
    let cfg = Config {
        redis: Some("redis://localhost".into()),
        ..Config::default()
    };
    assert!(refuse_unlanded(&cfg).is_ok());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
    assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
    assert_eq!(parse_duration(" 1d "), Ok(Duration::from_secs(86_400)));
    for bad in [
        "", "7", "d", "7w", "7 d", "-7d", "1.5h", "7dd", "7D", "0s", "0d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert!(parse_duration("99999999999999999999d").is_err());
    assert_eq!(
        parse_duration("999999999999999999d"),
        Err("duration is too large".to_string())
    );
}

#[test]
fn debug_redacts_secrets() {
    let cfg = Config {
        jwt_secret: Some("top-secret-value".into()),
        redis: Some("redis://:pw@host".into()),
        ..Config::default()
    };
    let s = format!("{cfg:?}");
    assert!(!s.contains("top-secret-value"), "{s}");
    assert!(!s.contains("pw@host"), "{s}");
    assert!(s.contains("<redacted>"));
    assert!(s.contains("max_frame_bytes: 65536"));
}

#[test]
fn echo_defaults_and_config() {
    let _g = env_lock();
    let Command::Echo(args) = parse(&["echo"]).unwrap() else {
        panic!("expected echo")
    };
    assert_eq!(args.listen, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(args.max_frame_bytes, 16 * 1024 * 1024);
    assert!(!args.no_pin);
    assert_eq!(args.shards, None);
    let cfg = args.to_config().unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(cfg.max_frame_bytes, 16 * 1024 * 1024);
    assert!(cfg.max_outbound_bytes >= 2 * cfg.max_frame_bytes);
    assert!(cfg.pin);
    assert_eq!(cfg.shards, Config::default().shards);
    assert_eq!(cfg.jwt_secret, None);
    assert!(!cfg.random_secret && !cfg.guest);
    let d = EchoArgs::default();
    assert_eq!(
        (d.listen, d.max_frame_bytes, d.no_pin, d.shards),
        (args.listen, args.max_frame_bytes, args.no_pin, args.shards)
    );

    let Command::Echo(args) = parse(&[
        "echo",
        "--listen",
        "0.0.0.0:9100",
        "--shards",
        "2",
        "--no-pin",
        "--max-frame-bytes",
        "1024",
    ])
    .unwrap() else {
        panic!("expected echo")
    };
    let cfg = args.to_config().unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:9100".parse().unwrap());
    assert_eq!((cfg.shards, cfg.pin, cfg.max_frame_bytes), (2, false, 1024));
    assert_eq!(cfg.max_body_bytes, 1024);
    assert_eq!(cfg.max_outbound_bytes, 4 * 1024 * 1024);

    let bad = EchoArgs {
        shards: Some(0),
        ..EchoArgs::default()
    };
    assert_eq!(
        bad.to_config().unwrap_err().to_string(),
        "invalid --shards: must be between 1 and 1024"
    );
    let bad = EchoArgs {
        max_frame_bytes: 0,
        ..EchoArgs::default()
    };
    assert!(bad.to_config().is_err());
}

fn token_args(args: &[&str]) -> TokenArgs {
    let argv: Vec<&str> = std::iter::once("token")
        .chain(args.iter().copied())
        .collect();
    match parse(&argv).unwrap() {
        Command::Token(t) => t,
        other => panic!("expected token, got {other:?}"),
    }
}

#[test]
fn token_args_parse() {
    let _g = env_lock();
    let t = token_args(&[
        "--user",
        "alice",
        "--name",
        "Alice",
        "--ttl",
        "60",
        "--rooms",
        "general, team-*,,",
        "--admin",
        "--jwt-secret",
        "k",
    ]);
    assert_eq!(t.user, "alice");
    assert_eq!(t.name.as_deref(), Some("Alice"));
    assert_eq!(t.ttl_secs(), Some(60));
    assert_eq!(
        t.room_patterns(),
        Some(vec!["general".to_string(), "team-*".to_string()])
    );
    assert!(t.admin);
    assert_eq!(t.secret().unwrap(), "k");

    let t = token_args(&["--user", "bob", "--jwt-secret", "k"]);
    assert_eq!(t.ttl, 86_400);
    assert_eq!(t.ttl_secs(), Some(86_400));
    assert_eq!(t.room_patterns(), None);
    assert!(!t.admin);
    assert_eq!(t.name, None);

    let t = token_args(&["--user", "bob", "--ttl", "0"]);
    assert_eq!(t.ttl_secs(), None);
    assert!(matches!(t.secret(), Err(ConfigError::MissingSecret)));
    assert!(t.secret().unwrap_err().to_string().contains("--jwt-secret"));

    // --user is required.
    assert!(parse(&["token"]).is_err());
}

#[test]
fn token_secret_sources() {
    let f = TempFile::new("jwt_secret = \"from-file\"\nlisten = \"0.0.0.0:1\"\n");
    let path = f.0.to_str().unwrap();
    let _g = env_lock();
    let t = token_args(&["--user", "u", "--config", path]);
    assert_eq!(t.secret().unwrap(), "from-file");
    let t = token_args(&["--user", "u", "--config", path, "--jwt-secret", "flag"]);
    assert_eq!(t.secret().unwrap(), "flag");
    {
        let _env = EnvVars::set(&[("CORECHAT_JWT_SECRET", "env")]);
        let t = token_args(&["--user", "u", "--config", path]);
        assert_eq!(t.secret().unwrap(), "env");
    }
    let empty = TempFile::new("listen = \"0.0.0.0:1\"\n");
    let t = token_args(&["--user", "u", "--config", empty.0.to_str().unwrap()]);
    assert!(matches!(t.secret(), Err(ConfigError::MissingSecret)));
    let bad = TempFile::new("nope = 1\n");
    let t = token_args(&["--user", "u", "--config", bad.0.to_str().unwrap()]);
    assert!(matches!(t.secret(), Err(ConfigError::ParseFile { .. })));
}

// ---------------------------------------------------------------------------
// One declaration per option

#[test]
fn every_option_has_a_flag_an_env_var_and_a_file_key() {
    let _g = env_lock();
    let help = Cli::command().render_long_help().to_string();
    let serve_help = Cli::command()
        .find_subcommand_mut("serve")
        .unwrap()
        .render_long_help()
        .to_string();
    let fields: Vec<&str> = options().iter().map(|o| o.field).collect();
    assert!(fields.len() >= 36, "{fields:?}");
    let debug = format!("{:?}", Config::default());
    for o in options() {
        // --help (top level and `serve`) shows the flag, its env var and its help.
        for h in [&help, &serve_help] {
            assert!(
                h.contains(&format!("--{} ", o.flag)) || h.contains(&format!("--{}[", o.flag)),
                "--{} missing from help",
                o.flag
            );
            assert!(
                h.contains(&format!("[env: {}", o.env)),
                "{} missing from help",
                o.env
            );
            assert!(
                h.contains(o.help.split(" [default").next().unwrap()),
                "{}",
                o.help
            );
        }
        assert_eq!(
            o.env,
            format!("CORECHAT_{}", o.flag.replace('-', "_").to_uppercase())
        );
        // Debug shows every field.
        assert!(
            debug.contains(&format!("{}: ", o.field)),
            "{} missing from Debug",
            o.field
        );

        // The file knows the key: a value of the wrong kind is a value
        // error naming the key, never "unknown option".
        let f = TempFile::new(&format!("{} = {{ nested = 1 }}\n", o.file_key));
        let e = Config::resolve(&serve_args(&["--config", f.0.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("line 1: {}: expected", o.file_key)),
            "{e}"
        );
        assert!(!e.contains("unknown option"), "{e}");

        // The env var reaches the option: given, or refused naming the flag.
        let _env = EnvVars::set(&[(leak(&o.env), "\u{1}")]);
        match parse(&[]) {
            Ok(Command::Serve(args)) => assert!(args.is_given(o.field), "{}", o.env),
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                let line = clap_error_line(&e).unwrap_or_else(|| e.to_string());
                assert!(
                    line.starts_with(&format!("invalid --{}: ", o.flag)),
                    "{line}"
                );
            }
        }
    }
    // Unknown keys are still refused.
    let f = TempFile::new("max_frame_byte = 1\n");
    let e = Config::resolve(&serve_args(&["--config", f.0.to_str().unwrap()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown option \"max_frame_byte\""), "{e}");
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// For option `flag`: the default, then a file value, then env over the
/// file, then a flag over both; `get` shows the resolved value.
fn check_layers(
    flag: &str,
    get: fn(&Config) -> String,
    [default, file, env, cli]: [&str; 4],
    [file_toml, env_text, flag_text]: [&str; 3],
) {
    let info = options().iter().find(|o| o.flag == flag).unwrap();
    let key = &info.file_key;
    let env_name = leak(&info.env);
    let f = TempFile::new(&format!("{key} = {file_toml}\njwt_secret = \"k\"\n"));
    let path = f.0.to_str().unwrap();
    let _g = env_lock();
    let base = Config::resolve(&serve_args(&["--jwt-secret", "k"])).unwrap();
    assert_eq!(get(&base), default, "{flag}: default");
    let c = Config::resolve(&serve_args(&["--config", path])).unwrap();
    assert_eq!(get(&c), file, "{flag}: file beats default");
    let _env = EnvVars::set(&[(env_name, env_text)]);
    let c = Config::resolve(&serve_args(&["--config", path])).unwrap();
    assert_eq!(get(&c), env, "{flag}: env beats file");
    let arg = format!("--{flag}={flag_text}");
    let c = Config::resolve(&serve_args(&["--config", path, &arg])).unwrap();
    assert_eq!(get(&c), cli, "{flag}: flag beats env");
}

#[test]
fn precedence_for_each_type() {
    // usize
    check_layers(
        "max-rooms-per-conn",
        |c| c.max_rooms_per_conn.to_string(),
        ["200", "5", "6", "7"],
        ["5", "6", "7"],
    );
    // u32
    check_layers(
        "max-guests-per-ip-per-min",
        |c| c.max_guests_per_ip_per_min.to_string(),
        ["30", "1", "2", "3"],
        ["1", "2", "3"],
    );
    // u64, zero allowed
    check_layers(
        "jwt-leeway-s",
        |c| c.jwt_leeway_s.to_string(),
        ["30", "0", "60", "5"],
        ["0", "60", "5"],
    );
    // i32
    check_layers(
        "backlog",
        |c| c.backlog.to_string(),
        ["4096", "1", "2", "3"],
        ["1", "2", "3"],
    );
    // enum
    check_layers(
        "log-format",
        |c| format!("{:?}", c.log_format),
        ["Text", "Json", "Text", "Json"],
        ["\"json\"", "text", "json"],
    );
    // bool, negated into `pin`
    check_layers(
        "no-pin",
        |c| c.pin.to_string(),
        ["true", "false", "true", "false"],
        ["true", "false", "true"],
    );
    // bool
    check_layers(
        "guest",
        |c| c.guest.to_string(),
        ["false", "true", "false", "true"],
        ["true", "no", "yes"],
    );
    // SocketAddr
    check_layers(
        "listen",
        |c| c.listen.to_string(),
        ["0.0.0.0:8080", "127.0.0.1:1", "127.0.0.1:2", "[::1]:3"],
        ["\"127.0.0.1:1\"", "127.0.0.1:2", "[::1]:3"],
    );
    // String
    check_layers(
        "log-level",
        |c| c.log_level.clone(),
        ["info", "debug", "warn", "corechat=trace"],
        ["\"debug\"", "warn", "corechat=trace"],
    );
    // PathBuf
    check_layers(
        "data-dir",
        |c| c.data_dir.display().to_string(),
        ["./data", "/f", "/e", "/c"],
        ["\"/f\"", "/e", "/c"],
    );
    // Duration
    check_layers(
        "retention-interval",
        |c| format!("{:?}", c.retention_interval),
        ["60s", "600s", "7200s", "86400s"],
        ["\"10m\"", "2h", "1d"],
    );
    // Option<u64>
    check_layers(
        "retention-messages",
        |c| format!("{:?}", c.retention_messages),
        ["None", "Some(1)", "Some(2)", "Some(3)"],
        ["1", "2", "3"],
    );
    // Option<Duration>
    check_layers(
        "retention-age",
        |c| format!("{:?}", c.retention_age),
        ["None", "Some(60s)", "Some(120s)", "Some(180s)"],
        ["\"1m\"", "2m", "3m"],
    );
    // list
    check_layers(
        "allowed-origin",
        |c| c.allowed_origins.join(" "),
        [
            "",
            "https://f.example",
            "https://e.example https://e2.example",
            "https://c.example",
        ],
        [
            "[\"https://f.example\"]",
            "https://e.example, https://e2.example",
            "https://c.example",
        ],
    );
}

#[test]
fn new_options_parse_and_check() {
    let cfg = resolve(&[
        "--max-rooms-per-conn=3",
        "--jwt-leeway-s=0",
        "--log-format=json",
        "--max-guests-per-ip-per-min=4",
    ])
    .unwrap();
    assert_eq!(cfg.max_rooms_per_conn, 3);
    assert_eq!(cfg.jwt_leeway_s, 0);
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(cfg.max_guests_per_ip_per_min, 4);
    assert_eq!(
        err(&["--max-rooms-per-conn=0"]),
        "invalid --max-rooms-per-conn: must be greater than zero"
    );
    assert_eq!(
        err(&["--max-guests-per-ip-per-min=0"]),
        "invalid --max-guests-per-ip-per-min: must be greater than zero"
    );
}

/// The one line main prints for a bad flag or env value.
fn parse_error_line(args: &[&str]) -> String {
    let _g = env_lock();
    let e = parse(args).unwrap_err();
    clap_error_line(&e).unwrap_or_else(|| panic!("not a value error: {e}"))
}

#[test]
fn value_errors_say_what_was_expected() {
    assert_eq!(
        parse_error_line(&["--shards", "four"]),
        "invalid --shards: expected a whole number, got \"four\""
    );
    assert_eq!(
        parse_error_line(&["--max-frame-bytes", "1e6"]),
        "invalid --max-frame-bytes: expected a whole number, got \"1e6\""
    );
    assert_eq!(
        parse_error_line(&["--rate-per-sec=-1"]),
        "invalid --rate-per-sec: expected a whole number from 0 to 4294967295, got -1"
    );
    assert_eq!(
        parse_error_line(&["--log-format", "xml"]),
        "invalid --log-format: expected text or json, got \"xml\""
    );
    assert_eq!(
        parse_error_line(&["--no-pin=perhaps"]),
        "invalid --no-pin: expected true or false, got \"perhaps\""
    );
    assert_eq!(
        parse_error_line(&["serve", "--store", "postgres"]),
        "invalid --store: expected sqlite or memory, got \"postgres\""
    );
    assert!(parse_error_line(&["--listen", "nope"])
        .starts_with("invalid --listen: expected an address and port like 0.0.0.0:8080"));
    assert!(parse_error_line(&["--retention-age", "7w"])
        .starts_with("invalid --retention-age: expected a number followed by s, m, h or d"));
    {
        let _g = env_lock();
        let _env = EnvVars::set(&[("CORECHAT_BURST", "lots")]);
        let e = parse(&[]).unwrap_err();
        assert_eq!(
            clap_error_line(&e).unwrap(),
            "invalid --burst: expected a whole number, got \"lots\""
        );
    }
    // Unknown flags are clap's own (multi-line, with a suggestion).
    {
        let _g = env_lock();
        assert_eq!(
            clap_error_line(&parse(&["--shard", "2"]).unwrap_err()),
            None
        );
    }
    // The file says the same things, with the key and line.
    let f = TempFile::new("burst = 1\nshards = \"four\"\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(
        e.ends_with("line 2: shards: expected a whole number, got the text \"four\""),
        "{e}"
    );
    let f = TempFile::new("no_pin = \"yes\"\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(
        e.ends_with("line 1: no_pin: expected true or false, got the text \"yes\""),
        "{e}"
    );
    let f = TempFile::new("history_ring = -3\n");
    let e = err(&["--config", f.0.to_str().unwrap()]);
    assert!(
        e.ends_with(
            "line 1: history_ring: expected a whole number from 0 to 18446744073709551615, got -3"
        ),
        "{e}"
    );
}

#[test]
fn help_shows_defaults() {
    let by_flag = |flag: &str| {
        options()
            .iter()
            .find(|o| o.flag == flag)
            .unwrap()
            .help
            .clone()
    };
    assert_eq!(
        by_flag("max-frame-bytes"),
        "Largest WebSocket message accepted [default: 65536]"
    );
    assert!(by_flag("shards").ends_with("[default: number of CPUs]"));
    assert!(by_flag("store").ends_with("[default: sqlite]"));
    assert!(by_flag("retention-interval").ends_with("[default: 60s]"));
    assert!(by_flag("log-format").ends_with("[default: text]"));
    assert!(by_flag("listen").contains("127.0.0.1:8080 without --jwt-secret"));
    assert!(!by_flag("no-pin").contains("[default"));
    let _g = env_lock();
    let _env = EnvVars::set(&[("CORECHAT_JWT_SECRET", "hunter2-hunter2")]);
    let help = Cli::command().render_long_help().to_string();
    assert!(!help.contains("hunter2"), "secrets stay out of --help");
}

// ---------------------------------------------------------------------------
// Development mode: loopback and the kept secret

#[test]
fn development_mode_listens_on_loopback_unless_told() {
    let cfg = resolve(&[]).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(!cfg.listen_explicit && cfg.random_secret);
    // A secret or a public key: the documented default.
    let cfg = resolve(&["--jwt-secret", "k"]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
    let key = TempFile::new("-----BEGIN PUBLIC KEY-----\n");
    let cfg = resolve(&["--jwt-public-key", key.0.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
    // An explicit listen address is kept, from any source.
    let cfg = resolve(&["--listen", "0.0.0.0:9000"]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:9000".parse().unwrap());
    assert!(cfg.listen_explicit && cfg.random_secret);
    let f = TempFile::new("listen = \"0.0.0.0:8080\"\n");
    let cfg = resolve(&["--config", f.0.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
    assert!(cfg.listen_explicit);
    let _g = env_lock();
    let _env = EnvVars::set(&[("CORECHAT_LISTEN", "0.0.0.0:8080")]);
    let cfg = Config::resolve(&serve_args(&[])).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
}

#[test]
fn dev_secret_is_kept_in_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let dir_arg = dir.to_str().unwrap();
    let mut first = resolve(&["--data-dir", dir_arg]).unwrap();
    let per_process = first.jwt_secret.clone();
    let path = dir.join(secret::FILE_NAME);
    assert_eq!(
        first.keep_dev_secret().unwrap(),
        DevSecret::Kept(SecretFile::Created(path.clone()))
    );
    assert_ne!(first.jwt_secret, per_process);
    assert!(first.random_secret && first.guest);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The next start reads the same secret.
    let mut second = resolve(&["--data-dir", dir_arg, "--store", "memory"]).unwrap();
    assert_eq!(
        second.keep_dev_secret().unwrap(),
        DevSecret::Kept(SecretFile::Read(path.clone()))
    );
    assert_eq!(second.jwt_secret, first.jwt_secret);
    // An empty file is replaced, and says so.
    fs::write(&path, "").unwrap();
    let mut third = resolve(&["--data-dir", dir_arg]).unwrap();
    match third.keep_dev_secret().unwrap() {
        DevSecret::Kept(SecretFile::Replaced { reason, .. }) => assert_eq!(reason, "it was empty"),
        other => panic!("{other:?}"),
    }
    assert_ne!(third.jwt_secret, first.jwt_secret);
    assert_eq!(third.jwt_secret.as_ref().unwrap().len(), 64);
    // A configured secret leaves the file alone.
    let mut cfg = resolve(&["--data-dir", dir_arg, "--jwt-secret", "mine"]).unwrap();
    assert_eq!(cfg.keep_dev_secret().unwrap(), DevSecret::NotNeeded);
    assert_eq!(cfg.jwt_secret.as_deref(), Some("mine"));
}

#[test]
fn unusable_data_dir_falls_back_only_for_the_memory_store() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    fs::write(&blocker, "x").unwrap();
    let dir = blocker.join("data");
    let dir_arg = dir.to_str().unwrap();
    let mut cfg = resolve(&["--data-dir", dir_arg, "--store", "memory"]).unwrap();
    let random = cfg.jwt_secret.clone();
    match cfg.keep_dev_secret().unwrap() {
        DevSecret::Random { dir: d, reason } => {
            assert_eq!(d, dir);
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cfg.jwt_secret, random, "the per-process secret stays");
    let mut cfg = resolve(&["--data-dir", dir_arg]).unwrap();
    let e = cfg.keep_dev_secret().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "cannot keep the development JWT secret in {dir_arg}: "
        )),
        "{e}"
    );
    assert!(!e.contains('\n'));
}
