//! Where values come from: environment variables, the config file, and
//! their precedence over defaults and under flags.

use super::*;

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
