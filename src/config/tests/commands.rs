//! The other subcommands: `echo` and `token`.

use super::*;

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
