//! Command line and configuration.
//!
//! Every `serve` option can come from a flag, a `CORECHAT_*` environment
//! variable or a TOML file (`--config`), in that order of precedence, then
//! the built-in default. `Config::resolve` merges and validates them once at
//! start, so the rest of the server only sees typed, checked values.

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rand::Rng;
use serde::{Deserialize, Deserializer};

/// Upper bound for `--shards`.
pub const MAX_SHARDS: usize = 1024;

/// A configuration error; `Display` is one line naming the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --{option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {}: {message}", path.display())]
    ParseFile { path: PathBuf, message: String },
    /// A feature that is recognised but not shipped in this build.
    #[error("{0}")]
    Unavailable(&'static str),
    #[error(
        "no JWT secret: pass --jwt-secret, set CORECHAT_JWT_SECRET or set jwt_secret in the --config file"
    )]
    MissingSecret,
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync before acknowledging a batch
    Sync,
    /// let the OS decide when to flush (faster, may lose the last writes on a crash)
    Relaxed,
}

#[derive(Debug, Parser)]
#[command(
    name = "corechat",
    version,
    about = "Thread-per-core real-time chat server",
    // `corechat --listen X` is `corechat serve --listen X`; mixing both is refused.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The command to run; no subcommand means `serve` with the top-level options.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

// Parsed once at start: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the chat server (the default)
    Serve(ServeArgs),
    /// Run a plain WebSocket echo server (Autobahn, benchmarks); no auth, no chat
    Echo(EchoArgs),
    /// Print an HS256 token signed with the configured secret
    Token(TokenArgs),
}

// Flags of `serve` (plain comments: clap would turn doc comments into help
// text). Each is `None` when not given, so that the config file can still
// supply it; `Config::resolve` applies the defaults. Boolean flags take an
// optional value (`--guest`, `--guest=false`) so that the command line and
// environment can also turn off what the file turns on.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file; keys are the option names in snake_case
    #[arg(long, env = "CORECHAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:8080]
    #[arg(long, env = "CORECHAT_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Reactor threads, one per core [default: number of CPUs]
    #[arg(long, env = "CORECHAT_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    /// Do not pin reactor threads to CPU cores
    #[arg(long, env = "CORECHAT_NO_PIN", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub no_pin: Option<bool>,
    /// Directory for the message store [default: ./data]
    #[arg(long, env = "CORECHAT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Message store [default: sqlite]
    #[arg(long, env = "CORECHAT_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Store durability [default: sync]
    #[arg(long, env = "CORECHAT_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// HS256 secret for tokens [default: random, and guest login on]
    #[arg(
        long,
        env = "CORECHAT_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA -> RS256, EC P-256 -> ES256) for tokens
    #[arg(long, env = "CORECHAT_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Enable guest login (POST /api/guest)
    #[arg(long, env = "CORECHAT_GUEST", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub guest: Option<bool>,
    /// Redis URL for cluster mode (not available yet)
    #[arg(
        long,
        env = "CORECHAT_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// Node id in a cluster [default: random, like n-3f9a1c]
    #[arg(long, env = "CORECHAT_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Allowed Origin for upgrades (repeatable or comma-separated) [default: any]
    #[arg(
        long = "allowed-origin",
        env = "CORECHAT_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message accepted [default: 65536]
    #[arg(long, env = "CORECHAT_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest chat message body [default: 16384]
    #[arg(long, env = "CORECHAT_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Messages per second per connection [default: 20]
    #[arg(long, env = "CORECHAT_RATE_PER_SEC", value_name = "N")]
    pub rate_per_sec: Option<u32>,
    /// Rate limiter burst [default: 40]
    #[arg(long, env = "CORECHAT_BURST", value_name = "N")]
    pub burst: Option<u32>,
    /// Ping interval [default: 30000]
    #[arg(long, env = "CORECHAT_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Close when no pong arrives within this time [default: 10000]
    #[arg(long, env = "CORECHAT_HEARTBEAT_TIMEOUT_MS", value_name = "MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Time allowed for the HTTP upgrade [default: 5000]
    #[arg(long, env = "CORECHAT_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Per-connection send buffer before it is closed as too slow [default: 4194304]
    #[arg(long, env = "CORECHAT_MAX_OUTBOUND_BYTES", value_name = "BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Open connections per client IP [default: 1000]
    #[arg(long, env = "CORECHAT_MAX_CONNS_PER_IP", value_name = "N")]
    pub max_conns_per_ip: Option<u32>,
    /// Upgrades per client IP per second [default: 200]
    #[arg(long, env = "CORECHAT_MAX_UPGRADES_PER_IP_PER_SEC", value_name = "N")]
    pub max_upgrades_per_ip_per_sec: Option<u32>,
    /// Time given to connections to close on shutdown [default: 10000]
    #[arg(long, env = "CORECHAT_DRAIN_TIMEOUT_MS", value_name = "MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Log filter, e.g. info or corechat=debug [default: info]
    #[arg(long, env = "CORECHAT_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// listen(2) backlog [default: 4096]
    #[arg(long, env = "CORECHAT_BACKLOG", value_name = "N")]
    pub backlog: Option<i32>,
    /// Recent messages per room kept in memory [default: 1000]
    #[arg(long, env = "CORECHAT_HISTORY_RING", value_name = "N")]
    pub history_ring: Option<usize>,
    /// Unparsable frames tolerated before close 1008 [default: 10]
    #[arg(long, env = "CORECHAT_MAX_PARSE_ERRORS", value_name = "N")]
    pub max_parse_errors: Option<u32>,
    /// Largest store group commit [default: 4096]
    #[arg(long, env = "CORECHAT_BATCH_MAX", value_name = "N")]
    pub batch_max: Option<usize>,
    /// Longest wait to fill a group commit [default: 500]
    #[arg(long, env = "CORECHAT_BATCH_DELAY_US", value_name = "US")]
    pub batch_delay_us: Option<u64>,
    /// Keep at most this many messages per room in the store [default: unlimited]
    #[arg(long, env = "CORECHAT_RETENTION_MESSAGES", value_name = "N")]
    pub retention_messages: Option<u64>,
    /// Drop stored messages older than this, e.g. 90s, 30m, 12h, 7d [default: never]
    #[arg(long, env = "CORECHAT_RETENTION_AGE", value_name = "DURATION",
          value_parser = parse_duration)]
    pub retention_age: Option<Duration>,
    /// How often the retention pass runs, e.g. 10s, 5m [default: 60s]
    #[arg(long, env = "CORECHAT_RETENTION_INTERVAL", value_name = "DURATION",
          value_parser = parse_duration)]
    pub retention_interval: Option<Duration>,
}

/// The `--config` file: same names as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    no_pin: Option<bool>,
    data_dir: Option<PathBuf>,
    store: Option<StoreKind>,
    durability: Option<Durability>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    guest: Option<bool>,
    redis: Option<String>,
    node_id: Option<String>,
    allowed_origins: Option<Vec<String>>,
    max_frame_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    rate_per_sec: Option<u32>,
    burst: Option<u32>,
    heartbeat_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    max_outbound_bytes: Option<usize>,
    max_conns_per_ip: Option<u32>,
    max_upgrades_per_ip_per_sec: Option<u32>,
    drain_timeout_ms: Option<u64>,
    log_level: Option<String>,
    backlog: Option<i32>,
    history_ring: Option<usize>,
    max_parse_errors: Option<u32>,
    batch_max: Option<usize>,
    batch_delay_us: Option<u64>,
    retention_messages: Option<u64>,
    #[serde(default, deserialize_with = "de_retention_age")]
    retention_age: Option<Duration>,
    #[serde(default, deserialize_with = "de_retention_interval")]
    retention_interval: Option<Duration>,
}

impl FileConfig {
    fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            // toml's Display is a multi-line snippet; keep errors to one line.
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = match line {
                Some(line) => format!("line {line}: {}", e.message().trim()),
                None => e.message().trim().to_owned(),
            };
            ConfigError::ParseFile {
                path: path.to_owned(),
                message: message.replace('\n', " "),
            }
        })
    }
}

fn de_duration_named<'de, D: Deserializer<'de>>(
    d: D,
    name: &str,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{name}: {e}")))
}

fn de_retention_age<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration_named(d, "retention_age")
}

fn de_retention_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration_named(d, "retention_interval")
}

/// Parses `90s`, `30m`, `12h`, `7d` (a positive integer and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a number followed by s, m, h or d (e.g. 90s, 30m, 12h, 7d)";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(HINT)?;
    let (number, unit) = s.split_at(split);
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(HINT.into()),
    };
    let n: u64 = number.parse().map_err(|_| HINT)?;
    let secs = n.checked_mul(scale).ok_or("duration is too large")?;
    if secs == 0 {
        return Err("duration must be greater than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Fully resolved server configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub shards: usize,
    pub pin: bool,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub durability: Durability,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub guest: bool,
    pub redis: Option<String>,
    pub node_id: String,
    /// Empty: any Origin is accepted.
    pub allowed_origins: Vec<String>,
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub heartbeat_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub max_outbound_bytes: usize,
    pub max_conns_per_ip: u32,
    pub max_upgrades_per_ip_per_sec: u32,
    pub drain_timeout_ms: u64,
    pub log_level: String,
    pub backlog: i32,
    pub history_ring: usize,
    pub max_parse_errors: u32,
    pub batch_max: usize,
    pub batch_delay_us: u64,
    pub retention_messages: Option<u64>,
    pub retention_age: Option<Duration>,
    pub retention_interval: Duration,
    /// No secret or public key was configured: `jwt_secret` was generated
    /// at start (tokens die with the process) and guest login is on.
    pub random_secret: bool,
}

impl Default for Config {
    /// The documented defaults. Note: no key at all; `resolve` is what
    /// generates a random secret when none is configured.
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)),
            shards: default_shards(),
            pin: true,
            data_dir: PathBuf::from("./data"),
            store: StoreKind::Sqlite,
            durability: Durability::Sync,
            jwt_secret: None,
            jwt_public_key: None,
            guest: false,
            redis: None,
            node_id: random_node_id(),
            allowed_origins: Vec::new(),
            max_frame_bytes: 65_536,
            max_body_bytes: 16_384,
            rate_per_sec: 20,
            burst: 40,
            heartbeat_ms: 30_000,
            heartbeat_timeout_ms: 10_000,
            handshake_timeout_ms: 5_000,
            max_outbound_bytes: 4 * 1024 * 1024,
            max_conns_per_ip: 1000,
            max_upgrades_per_ip_per_sec: 200,
            drain_timeout_ms: 10_000,
            log_level: "info".to_owned(),
            backlog: 4096,
            history_ring: 1000,
            max_parse_errors: 10,
            batch_max: 4096,
            batch_delay_us: 500,
            retention_messages: None,
            retention_age: None,
            retention_interval: Duration::from_secs(60),
            random_secret: false,
        }
    }
}

// Hand-written so that logging the config never prints the secret.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = self.jwt_secret.as_ref().map(|_| "<redacted>");
        let redis = self.redis.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("shards", &self.shards)
            .field("pin", &self.pin)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store)
            .field("durability", &self.durability)
            .field("jwt_secret", &secret)
            .field("jwt_public_key", &self.jwt_public_key)
            .field("guest", &self.guest)
            .field("redis", &redis)
            .field("node_id", &self.node_id)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("rate_per_sec", &self.rate_per_sec)
            .field("burst", &self.burst)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("heartbeat_timeout_ms", &self.heartbeat_timeout_ms)
            .field("handshake_timeout_ms", &self.handshake_timeout_ms)
            .field("max_outbound_bytes", &self.max_outbound_bytes)
            .field("max_conns_per_ip", &self.max_conns_per_ip)
            .field(
                "max_upgrades_per_ip_per_sec",
                &self.max_upgrades_per_ip_per_sec,
            )
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .field("log_level", &self.log_level)
            .field("backlog", &self.backlog)
            .field("history_ring", &self.history_ring)
            .field("max_parse_errors", &self.max_parse_errors)
            .field("batch_max", &self.batch_max)
            .field("batch_delay_us", &self.batch_delay_us)
            .field("retention_messages", &self.retention_messages)
            .field("retention_age", &self.retention_age)
            .field("retention_interval", &self.retention_interval)
            .field("random_secret", &self.random_secret)
            .finish()
    }
}

fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS))
}

fn random_node_id() -> String {
    format!("n-{:06x}", rand::rng().random::<u32>() & 0x00ff_ffff)
}

/// 32 random bytes as 64 hex characters.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `[A-Za-z0-9_.-]{1,64}`
fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Config {
    /// Merges flags/env (`args`), the `--config` file and the defaults, then
    /// validates. Generates a random secret (and enables guests) when no
    /// secret or public key is configured.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        // flag/env (clap) > file > default
        macro_rules! pick {
            ($field:ident) => {
                args.$field.clone().or(file.$field).unwrap_or(d.$field)
            };
            ($field:ident, optional) => {
                args.$field.clone().or(file.$field)
            };
        }
        let allowed_origins = if args.allowed_origins.is_empty() {
            file.allowed_origins.unwrap_or_default()
        } else {
            args.allowed_origins.clone()
        };
        let mut cfg = Config {
            listen: pick!(listen),
            shards: pick!(shards),
            pin: !args.no_pin.or(file.no_pin).unwrap_or(false),
            data_dir: pick!(data_dir),
            store: pick!(store),
            durability: pick!(durability),
            jwt_secret: pick!(jwt_secret, optional),
            jwt_public_key: pick!(jwt_public_key, optional),
            guest: pick!(guest),
            redis: pick!(redis, optional),
            node_id: pick!(node_id),
            // Env values like "https://a, https://b" carry spaces.
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            max_frame_bytes: pick!(max_frame_bytes),
            max_body_bytes: pick!(max_body_bytes),
            rate_per_sec: pick!(rate_per_sec),
            burst: pick!(burst),
            heartbeat_ms: pick!(heartbeat_ms),
            heartbeat_timeout_ms: pick!(heartbeat_timeout_ms),
            handshake_timeout_ms: pick!(handshake_timeout_ms),
            max_outbound_bytes: pick!(max_outbound_bytes),
            max_conns_per_ip: pick!(max_conns_per_ip),
            max_upgrades_per_ip_per_sec: pick!(max_upgrades_per_ip_per_sec),
            drain_timeout_ms: pick!(drain_timeout_ms),
            log_level: pick!(log_level),
            backlog: pick!(backlog),
            history_ring: pick!(history_ring),
            max_parse_errors: pick!(max_parse_errors),
            batch_max: pick!(batch_max),
            batch_delay_us: pick!(batch_delay_us),
            retention_messages: pick!(retention_messages, optional),
            retention_age: pick!(retention_age, optional),
            retention_interval: pick!(retention_interval),
            random_secret: false,
        };
        cfg.validate()?;
        if cfg.jwt_secret.is_none() && cfg.jwt_public_key.is_none() {
            // Nobody could log in otherwise: make a throwaway secret and let guests in.
            cfg.jwt_secret = Some(random_secret());
            cfg.random_secret = true;
            cfg.guest = true;
        }
        refuse_unlanded(&cfg)?;
        Ok(cfg)
    }

    /// Checks ranges and cross-field rules; one error per call, naming the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(invalid(
                "shards",
                format!("must be between 1 and {MAX_SHARDS}"),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data-dir", "must not be empty"));
        }
        if self.jwt_secret.as_deref() == Some("") {
            return Err(invalid("jwt-secret", "must not be empty"));
        }
        if let Some(path) = &self.jwt_public_key {
            fs::File::open(path).map_err(|e| {
                invalid(
                    "jwt-public-key",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        }
        if !valid_node_id(&self.node_id) {
            return Err(invalid(
                "node-id",
                "must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        for origin in &self.allowed_origins {
            // Browsers send `scheme://host[:port]`, never a path or trailing slash.
            if !origin.contains("://")
                || origin.ends_with('/')
                || origin.chars().any(char::is_whitespace)
            {
                return Err(invalid(
                    "allowed-origin",
                    format!("{origin:?} is not an origin like https://chat.example.com"),
                ));
            }
        }
        let positive: [(&'static str, u64); 14] = [
            ("max-frame-bytes", self.max_frame_bytes as u64),
            ("max-body-bytes", self.max_body_bytes as u64),
            ("rate-per-sec", self.rate_per_sec.into()),
            ("burst", self.burst.into()),
            ("heartbeat-ms", self.heartbeat_ms),
            ("heartbeat-timeout-ms", self.heartbeat_timeout_ms),
            ("handshake-timeout-ms", self.handshake_timeout_ms),
            ("max-outbound-bytes", self.max_outbound_bytes as u64),
            ("max-conns-per-ip", self.max_conns_per_ip.into()),
            (
                "max-upgrades-per-ip-per-sec",
                self.max_upgrades_per_ip_per_sec.into(),
            ),
            ("history-ring", self.history_ring as u64),
            ("batch-max", self.batch_max as u64),
            ("backlog", self.backlog.max(0) as u64),
            ("retention-messages", self.retention_messages.unwrap_or(1)),
        ];
        for (option, value) in positive {
            if value == 0 {
                return Err(invalid(option, "must be greater than zero"));
            }
        }
        if self.max_body_bytes > self.max_frame_bytes {
            return Err(invalid(
                "max-body-bytes",
                format!(
                    "must not exceed --max-frame-bytes ({})",
                    self.max_frame_bytes
                ),
            ));
        }
        if self.log_level.trim().is_empty() {
            return Err(invalid("log-level", "must not be empty"));
        }
        if self.retention_age == Some(Duration::ZERO) {
            return Err(invalid("retention-age", "must be greater than zero"));
        }
        if self.retention_interval.is_zero() {
            return Err(invalid("retention-interval", "must be greater than zero"));
        }
        Ok(())
    }
}

/// Options accepted by the CLI but whose feature has not landed yet.
/// Remove a check here once its feature ships.
fn refuse_unlanded(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.redis.is_some() {
        return Err(ConfigError::Unavailable(
            "cluster mode (--redis) is not available in this build yet",
        ));
    }
    Ok(())
}

// Flags of `echo`. No environment variables: the `CORECHAT_*` ones are
// meant for the chat server and must not leak into a test echo server.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Reactor threads [default: number of CPUs]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Do not pin reactor threads to CPU cores
    #[arg(long)]
    pub no_pin: bool,
    /// Largest WebSocket message (Autobahn sends up to 16 MiB)
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_frame_bytes: usize,
}

impl Default for EchoArgs {
    fn default() -> Self {
        EchoArgs {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9001)),
            shards: None,
            no_pin: false,
            max_frame_bytes: 16 * 1024 * 1024,
        }
    }
}

impl EchoArgs {
    /// Defaults for everything else; auth is not used by `echo`.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let cfg = Config {
            listen: self.listen,
            shards: self.shards.unwrap_or(d.shards),
            pin: !self.no_pin,
            max_frame_bytes: self.max_frame_bytes,
            // Keep the body limit consistent with a small frame limit.
            max_body_bytes: d.max_body_bytes.min(self.max_frame_bytes),
            // An echoed message must fit in the send buffer (with room for one more).
            max_outbound_bytes: d
                .max_outbound_bytes
                .max(self.max_frame_bytes.saturating_mul(2)),
            ..d
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

// Flags of `token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// User id (the `sub` claim)
    #[arg(long, value_name = "ID")]
    pub user: String,
    /// Display name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Lifetime in seconds; 0 = never expires
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    pub ttl: u64,
    /// Room patterns the user may join, comma-separated (`team-*` is a prefix) [default: all]
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// May use the HTTP server API
    #[arg(long)]
    pub admin: bool,
    /// HS256 secret (the server's --jwt-secret)
    #[arg(
        long,
        env = "CORECHAT_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Server config file to read jwt_secret from
    #[arg(long, env = "CORECHAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TokenArgs {
    /// The signing secret: `--jwt-secret`/env first, then the config file.
    pub fn secret(&self) -> Result<String, ConfigError> {
        let from_file = match (&self.jwt_secret, &self.config) {
            (None, Some(path)) => FileConfig::load(path)?.jwt_secret,
            _ => None,
        };
        match self.jwt_secret.clone().or(from_file) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ConfigError::MissingSecret),
        }
    }

    /// `--ttl` as the `exp` offset; `None` (no `exp`) for 0.
    pub fn ttl_secs(&self) -> Option<u64> {
        (self.ttl > 0).then_some(self.ttl)
    }

    /// `--rooms` with blanks trimmed and empty entries dropped.
    pub fn room_patterns(&self) -> Option<Vec<String>> {
        self.rooms.as_ref().map(|r| {
            r.iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
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
        assert_eq!((cfg.batch_max, cfg.batch_delay_us), (4096, 500));
        assert_eq!(cfg.retention_messages, None);
        assert_eq!(cfg.retention_age, None);
        assert!(valid_node_id(&cfg.node_id));
        // Everything but the generated parts matches Default.
        let same = Config {
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
            (
                &["--redis", "redis://localhost"],
                "cluster mode (--redis) is not available in this build yet",
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
        assert_eq!(
            err(&["--config", f.0.to_str().unwrap()]),
            "cluster mode (--redis) is not available in this build yet"
        );

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
        assert_eq!(cfg.listen, Config::default().listen);
        assert!(cfg.random_secret);
    }

    #[test]
    fn refuse_unlanded_only_refuses_redis() {
        assert!(refuse_unlanded(&Config::default()).is_ok());
        let cfg = Config {
            redis: Some("redis://localhost".into()),
            ..Config::default()
        };
        let e = refuse_unlanded(&cfg).unwrap_err();
        assert!(matches!(e, ConfigError::Unavailable(_)));
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
}
