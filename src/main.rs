use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use corechat::auth::{now_secs, Authenticator};
use corechat::config::{self, Cli, Command, Config, DevSecret, LogFormat, SecretFile};
use corechat::server::Mode;

/// Logs go to stderr (stdout carries the "listening on" line that scripts
/// read), coloured only when stderr is a terminal.
fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Invalid configuration: one clear line and exit code 2.
fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("corechat: {e}");
    ExitCode::from(2)
}

/// Development mode (no secret configured): says where the secret lives
/// and what is reachable from where.
fn log_dev_mode(cfg: &Config, secret: &DevSecret) {
    match secret {
        DevSecret::NotNeeded => return,
        DevSecret::Kept(SecretFile::Read(path)) => {
            tracing::info!(path = %path.display(), "development JWT secret read from {}", path.display());
        }
        DevSecret::Kept(SecretFile::Created(path)) => {
            tracing::info!(path = %path.display(), "development JWT secret written to {}", path.display());
        }
        DevSecret::Kept(SecretFile::Replaced { path, reason }) => {
            tracing::warn!(path = %path.display(), "development JWT secret in {} was unusable ({reason}): wrote a new one; earlier guest tokens are no longer valid", path.display());
        }
        DevSecret::Random { dir, reason } => {
            tracing::warn!(dir = %dir.display(), "cannot keep the development JWT secret in {}: {reason}; using a random secret (guest tokens end with this process)", dir.display());
        }
    }
    if cfg.listen_explicit {
        tracing::warn!(listen = %cfg.listen, "no --jwt-secret or --jwt-public-key: development mode, guest login is ON");
    } else {
        tracing::warn!(listen = %cfg.listen, "no --jwt-secret or --jwt-public-key: development mode, guest login is ON, listening on loopback {} only (set --listen to serve other hosts)", cfg.listen);
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match config::clap_error_line(&e) {
            Some(line) => return config_error(line),
            None => e.exit(),
        },
    };
    let (mut cfg, mode) = match cli.into_command() {
        Command::Token(args) => {
            let secret = match args.secret() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let auth = match Authenticator::new(Some(secret.as_bytes()), None, 0) {
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
    init_logging(&cfg.log_level, cfg.log_format);
    if matches!(mode, Mode::Chat) {
        match cfg.keep_dev_secret() {
            Ok(secret) => log_dev_mode(&cfg, &secret),
            Err(e) => {
                eprintln!("corechat: {e}");
                return ExitCode::from(1);
            }
        }
    }
    match corechat::server::run(cfg, mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corechat: {e}");
            ExitCode::from(1)
        }
    }
}
