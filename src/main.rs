use clap::Parser;
use corechat::auth::{now_secs, Authenticator};
use corechat::config::{Cli, Command, Config};
use corechat::server::Mode;
use std::process::ExitCode;

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Invalid configuration: one clear line and exit code 2.
fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("corechat: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let command = Cli::parse().into_command();
    let (cfg, mode) = match command {
        Command::Token(args) => {
            let secret = match args.secret() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let auth = match Authenticator::new(Some(secret.as_bytes()), None) {
                Ok(a) => a,
                Err(e) => return config_error(e),
            };
            let rooms = args.room_patterns();
            return match auth.mint(
                &args.user,
                args.name.as_deref(),
                args.ttl_secs(),
                rooms.as_deref(),
                args.admin,
                now_secs(),
            ) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => config_error(e),
            };
        }
        Command::Echo(args) => match args.to_config() {
            Ok(cfg) => (cfg, Mode::Echo),
            Err(e) => return config_error(e),
        },
        Command::Serve(args) => match Config::resolve(&args) {
            Ok(cfg) => (cfg, Mode::Chat),
            Err(e) => return config_error(e),
        },
    };
    init_logging(&cfg.log_level);
    if cfg.random_secret && matches!(mode, Mode::Chat) {
        tracing::warn!("no --jwt-secret configured: using a random secret (tokens end with this process); guest login is ON");
    }
    match corechat::server::run(cfg, mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corechat: {e}");
            ExitCode::from(1)
        }
    }
}
