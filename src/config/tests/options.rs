//! One declaration per option: each has a flag, an env var and a file key,
//! each layer overrides the one below, and bad values say what was expected.

use super::*;

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
