//! Command line and configuration.
//!
//! Every `serve` option can come from a flag, a `CORECHAT_*` environment
//! variable or a TOML file (`--config`), in that order of precedence, then
//! the built-in default. `Config::resolve` merges and validates them once at
//! start, so the rest of the server only sees typed, checked values.
//!
//! Each option is declared once, in the `options!` table below: its
//! `Config` field, type, default, flag, help and check. From that one line
//! come the `--flag` and `CORECHAT_FLAG` (clap), the TOML key (the flag in
//! snake_case), the merge, the validation and the `Debug` output. How a type
//! is read from text or TOML (and the words of its errors) is in `value`.

mod args;
mod checks;
mod file;
pub mod secret;
mod value;

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Arg, ArgAction, Args, Parser, Subcommand, ValueEnum};
use rand::Rng;

pub use args::{clap_error_line, ServeArgs};
use checks::*;
use file::FileValues;
pub use secret::SecretFile;
pub use value::{OptValue, Shape};

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
    #[error("cannot keep the development JWT secret in {}: {source} (pass --jwt-secret, or make --data-dir writable)", dir.display())]
    DevSecret {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// fsync before acknowledging a batch
    Sync,
    /// let the OS decide when to flush (faster, may lose the last writes on a crash)
    Relaxed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// human-readable lines (coloured when stderr is a terminal)
    Text,
    /// one JSON object per line
    Json,
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

// ---------------------------------------------------------------------------
// The option table

/// Declares the `serve` options; see the invocation below for the syntax.
/// Generates `Config` (one field per option, plus the `derived` fields that
/// `resolve` computes), its `Default` and `Debug`, and `Opts`: the typed
/// table that clap, the file reader, the merge and `validate` walk.
macro_rules! options {
    (
        $(
            $(#[doc = $doc:literal])+
            $field:ident: $ty:ty = $default:expr, $flag:literal, $vname:literal
                $(, $m:ident($($arg:expr),*))* ;
        )+
        derived {
            $( $(#[doc = $xdoc:literal])+ $xfield:ident: $xty:ty = $xdefault:expr; )*
        }
    ) => {
        /// Fully resolved server configuration.
        #[derive(Clone, PartialEq, Eq)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
            $( $(#[doc = $xdoc])+ pub $xfield: $xty, )*
        }

        /// Every option, typed.
        struct Opts {
            $( $field: Opt<$ty>, )+
        }

        impl Opts {
            fn new() -> Opts {
                Opts {
                    $( $field: Opt::new(stringify!($field), $flag, $vname, &[$($doc),+], $default)
                        $( .$m($($arg),*) )*, )+
                }
            }

            fn infos(&self) -> Vec<OptionInfo> {
                vec![$( self.$field.info(), )+]
            }

            /// flag/env (clap) > file > default
            fn merge(self, args: &ServeArgs, file: &FileValues) -> Result<Config, ConfigError> {
                Ok(Config {
                    $( $field: self.$field.pick(args, file)?, )+
                    $( $xfield: $xdefault, )*
                })
            }

            /// Each option's own check, in table order.
            fn check(&self, cfg: &Config) -> Result<(), ConfigError> {
                $( self.$field.check_value(&cfg.$field)?; )+
                Ok(())
            }

            fn debug(&self, cfg: &Config, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Config")
                    $( .field(stringify!($field), &Shown(&cfg.$field, self.$field.secret)) )+
                    $( .field(stringify!($xfield), &cfg.$xfield) )*
                    .finish()
            }
        }

        impl Default for Config {
            /// The documented defaults. Note: no key at all; `resolve` is what
            /// generates a secret when none is configured.
            fn default() -> Self {
                let o = Opts::new();
                Config {
                    $( $field: o.$field.default, )+
                    $( $xfield: $xdefault, )*
                }
            }
        }
    };
}

// One option per entry:
//   /// help text (also the `Config` field's doc)
//   field: Type = default, "flag-name", "VALUE_NAME" [, modifier(args)]... ;
// The environment variable is CORECHAT_ + the flag in upper snake case, the
// TOML key the flag in snake case. Modifiers: `check(fn)` validates the final
// value, `default_doc("...")` replaces the default shown in --help,
// `secret()` hides the value in --help and Debug, `negate()` stores the
// opposite of a boolean flag, `file_key("...")` renames the TOML key.
// An `Option<T>` type means "no default".
options! {
    /// Address to listen on
    listen: SocketAddr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)), "listen", "ADDR",
        default_doc("0.0.0.0:8080, or 127.0.0.1:8080 without --jwt-secret/--jwt-public-key");
    /// TLS certificate chain (PEM); with --tls-key the listener serves https:// and wss://
    tls_cert: Option<PathBuf> = None, "tls-cert", "FILE", default_doc("none: plain http:// and ws://"),
        check(readable_file);
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert; SIGHUP reloads both
    tls_key: Option<PathBuf> = None, "tls-key", "FILE", check(readable_file);
    /// Reactor threads, one per core
    shards: usize = default_shards(), "shards", "N",
        default_doc("number of CPUs"), check(shard_count);
    /// Do not pin reactor threads to CPU cores
    pin: bool = true, "no-pin", "BOOL", negate();
    /// Directory for the message store and the development JWT secret
    data_dir: PathBuf = PathBuf::from("./data"), "data-dir", "DIR", check(non_empty_path);
    /// Message store: sqlite, or memory (history only in the per-room ring)
    store: StoreKind = StoreKind::Sqlite, "store", "STORE";
    /// Store durability: sync (fsync before acknowledging) or relaxed (faster, may lose the last writes on a crash)
    durability: Durability = Durability::Sync, "durability", "DURABILITY";
    /// HS256 secret for tokens
    jwt_secret: Option<String> = None, "jwt-secret", "SECRET", secret(),
        default_doc("one kept in DATA_DIR/jwt-secret, with guest login on"), check(non_empty_secret);
    /// PEM public key (RSA -> RS256, EC P-256 -> ES256) for tokens
    jwt_public_key: Option<PathBuf> = None, "jwt-public-key", "FILE", check(readable_file);
    /// Clock leeway for the exp and nbf claims of tokens, in seconds
    jwt_leeway_s: u64 = 30, "jwt-leeway-s", "SECS";
    /// Enable guest login (POST /api/guest)
    guest: bool = false, "guest", "BOOL", default_doc("on without a secret");
    /// Guest logins (POST /api/guest) per client IP per minute
    max_guests_per_ip_per_min: u32 = 30, "max-guests-per-ip-per-min", "N", check(positive);
    /// Redis URL for cluster mode (not available yet)
    redis: Option<String> = None, "redis", "URL", secret();
    /// Node id in a cluster
    node_id: String = random_node_id(), "node-id", "ID",
        default_doc("random, like n-3f9a1c"), check(node_id);
    /// Allowed Origin for upgrades (repeatable or comma-separated); empty: any Origin is accepted
    allowed_origins: Vec<String> = Vec::new(), "allowed-origin", "ORIGIN",
        file_key("allowed_origins"), default_doc("any"), check(origins);
    /// Largest WebSocket message accepted
    max_frame_bytes: usize = 65_536, "max-frame-bytes", "BYTES", check(positive);
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it
    compression: bool = true, "compression", "BOOL", default_doc("on");
    /// Smallest server message sent compressed; shorter ones go plain
    compression_min_bytes: usize = 256, "compression-min-bytes", "BYTES";
    /// Let clients keep their compression window between messages (costs an inflate window of ~20-40 KiB per such connection, held while it lives); off: every client is told `client_no_context_takeover`
    compression_client_context: bool = false, "compression-client-context", "BOOL", default_doc("off");
    /// Largest chat message body
    max_body_bytes: usize = 16_384, "max-body-bytes", "BYTES", check(positive);
    /// Messages per second per connection
    rate_per_sec: u32 = 20, "rate-per-sec", "N", check(positive);
    /// Rate limiter burst
    burst: u32 = 40, "burst", "N", check(positive);
    /// Rooms one connection may be joined to at once
    max_rooms_per_conn: usize = 200, "max-rooms-per-conn", "N", check(positive);
    /// Ping interval
    heartbeat_ms: u64 = 30_000, "heartbeat-ms", "MS", check(positive);
    /// Close when no pong arrives within this time
    heartbeat_timeout_ms: u64 = 10_000, "heartbeat-timeout-ms", "MS", check(positive);
    /// Time allowed for the HTTP upgrade
    handshake_timeout_ms: u64 = 5_000, "handshake-timeout-ms", "MS", check(positive);
    /// Longest a presence frame (user_joined, user_left, typing) waits for the connection's next write before it is flushed alone; 0 = flush at once
    presence_flush_ms: u64 = 250, "presence-flush-ms", "MS";
    /// Longest that wait grows to while thousands of connections hold presence frames (a connect storm); never below presence-flush-ms
    presence_flush_max_ms: u64 = 1000, "presence-flush-max-ms", "MS";
    /// Window of a presence_diff for members that joined with "presence":"batched"
    presence_batch_ms: u64 = 250, "presence-batch-ms", "MS", check(positive);
    /// Per-connection send buffer before it is closed as too slow
    max_outbound_bytes: usize = 4 * 1024 * 1024, "max-outbound-bytes", "BYTES", check(positive);
    /// Open connections per client IP
    max_conns_per_ip: u32 = 1000, "max-conns-per-ip", "N", check(positive);
    /// Upgrades per client IP per second
    max_upgrades_per_ip_per_sec: u32 = 200, "max-upgrades-per-ip-per-sec", "N", check(positive);
    /// Time given to connections to close on shutdown
    drain_timeout_ms: u64 = 10_000, "drain-timeout-ms", "MS";
    /// Log filter, e.g. info or corechat=debug (RUST_LOG wins when set)
    log_level: String = "info".to_owned(), "log-level", "FILTER", check(non_blank);
    /// Log line format: text, or json (one object per line)
    log_format: LogFormat = LogFormat::Text, "log-format", "FORMAT";
    /// listen(2) backlog
    backlog: i32 = 4096, "backlog", "N", check(positive);
    /// Recent messages per room kept in memory
    history_ring: usize = 1000, "history-ring", "N", check(positive);
    /// Unparsable frames tolerated before close 1008
    max_parse_errors: u32 = 10, "max-parse-errors", "N";
    /// Largest store group commit
    batch_max: usize = 4096, "batch-max", "N", check(positive);
    /// Longest wait to fill a group commit, in microseconds
    batch_delay_us: u64 = 500, "batch-delay-us", "US";
    /// Keep at most this many messages per room in the store
    retention_messages: Option<u64> = None, "retention-messages", "N",
        default_doc("unlimited"), check(positive);
    /// Drop stored messages older than this, e.g. 90s, 30m, 12h, 7d
    retention_age: Option<Duration> = None, "retention-age", "DURATION",
        default_doc("never"), check(positive);
    /// How often the retention pass runs, e.g. 10s, 5m
    retention_interval: Duration = Duration::from_secs(60), "retention-interval", "DURATION",
        check(positive);
    derived {
        /// No secret or public key was configured: `jwt_secret` is the
        /// development secret (per process from `resolve`, then the one in
        /// `<data_dir>/jwt-secret` after `keep_dev_secret`) and guest login is on.
        random_secret: bool = false;
        /// `listen` was set by a flag, the environment or the file; when it
        /// was not and no secret is configured, `resolve` binds loopback only.
        listen_explicit: bool = false;
    }
}

/// What clap, `--help` and the file reader need to know about one option.
#[derive(Debug, Clone)]
pub struct OptionInfo {
    /// The `Config` field.
    pub field: &'static str,
    /// The long flag, without `--`.
    pub flag: &'static str,
    /// `CORECHAT_` + the flag in upper snake case.
    pub env: String,
    /// The key in the `--config` file.
    pub file_key: String,
    pub value_name: &'static str,
    /// The help line, with the default.
    pub help: String,
    pub shape: Shape,
    /// Hidden in `--help` (env value) and in `Debug`.
    pub secret: bool,
    /// Whether a flag/env text is a valid value of the option's type.
    parse_check: fn(&str) -> Result<(), String>,
}

impl OptionInfo {
    fn arg(&'static self) -> Arg {
        let check = self.parse_check;
        let arg = Arg::new(self.field)
            .long(self.flag)
            .env(self.env.as_str())
            .value_name(self.value_name)
            .help(self.help.as_str())
            .hide_env_values(self.secret)
            .value_parser(move |s: &str| check(s).map(|()| s.to_owned()));
        match self.shape {
            Shape::Single => arg.action(ArgAction::Set),
            // `--guest`, `--guest=false`: the command line and environment
            // can also turn off what the file turns on.
            Shape::Bool => arg
                .action(ArgAction::Set)
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true"),
            Shape::List => arg.action(ArgAction::Append).value_delimiter(','),
        }
    }
}

/// Every `serve` option, in table order.
pub fn options() -> &'static [OptionInfo] {
    static INFOS: OnceLock<Vec<OptionInfo>> = OnceLock::new();
    INFOS.get_or_init(|| Opts::new().infos())
}

/// One option, typed: see `options!`.
struct Opt<T> {
    field: &'static str,
    flag: &'static str,
    value_name: &'static str,
    doc: &'static [&'static str],
    default: T,
    default_doc: Option<&'static str>,
    file_key: Option<&'static str>,
    secret: bool,
    map: fn(T) -> T,
    check: Option<Check<T>>,
}

/// Validates an option's final value; the error is the reason, without the option.
type Check<T> = fn(&T) -> Result<(), String>;

fn same<T>(v: T) -> T {
    v
}

fn parse_check<T: OptValue>(s: &str) -> Result<(), String> {
    T::parse_text(s).map(|_| ())
}

impl<T: OptValue> Opt<T> {
    fn new(
        field: &'static str,
        flag: &'static str,
        value_name: &'static str,
        doc: &'static [&'static str],
        default: T,
    ) -> Self {
        Opt {
            field,
            flag,
            value_name,
            doc,
            default,
            default_doc: None,
            file_key: None,
            secret: false,
            map: same::<T>,
            check: None,
        }
    }

    fn default_doc(mut self, text: &'static str) -> Self {
        self.default_doc = Some(text);
        self
    }

    fn file_key(mut self, key: &'static str) -> Self {
        self.file_key = Some(key);
        self
    }

    fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    fn check(mut self, f: Check<T>) -> Self {
        self.check = Some(f);
        self
    }

    fn key(&self) -> String {
        match self.file_key {
            Some(k) => k.to_owned(),
            None => self.flag.replace('-', "_"),
        }
    }

    fn info(&self) -> OptionInfo {
        let mut help = self
            .doc
            .iter()
            .map(|d| d.trim())
            .collect::<Vec<_>>()
            .join(" ");
        let default = self
            .default_doc
            .map(str::to_owned)
            .or_else(|| self.default.show());
        if let Some(d) = default {
            help.push_str(&format!(" [default: {d}]"));
        }
        OptionInfo {
            field: self.field,
            flag: self.flag,
            env: format!("CORECHAT_{}", self.flag.replace('-', "_").to_uppercase()),
            file_key: self.key(),
            value_name: self.value_name,
            help,
            shape: T::SHAPE,
            secret: self.secret,
            parse_check: parse_check::<T>,
        }
    }

    fn pick(self, args: &ServeArgs, file: &FileValues) -> Result<T, ConfigError> {
        let given = if let Some(texts) = args.texts(self.field) {
            T::from_texts(texts).map_err(|reason| invalid(self.flag, reason))?
        } else if let Some((line, value)) = file.get(&self.key()) {
            T::from_toml(value).map_err(|e| file.error(line, format!("{}: {e}", self.key())))?
        } else {
            return Ok(self.default);
        };
        Ok((self.map)(given))
    }

    fn check_value(&self, value: &T) -> Result<(), ConfigError> {
        match self.check {
            Some(f) => f(value).map_err(|reason| invalid(self.flag, reason)),
            None => Ok(()),
        }
    }
}

impl Opt<bool> {
    /// `--no-x` sets `x` to false.
    fn negate(mut self) -> Self {
        self.map = |b| !b;
        self
    }
}

/// A value in `Debug`, or `<redacted>` for a secret.
struct Shown<'a, T>(&'a T, bool);

impl<T: OptValue> fmt::Debug for Shown<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.1, self.0.is_set()) {
            (true, true) => f.write_str("Some(\"<redacted>\")"),
            _ => self.0.fmt(f),
        }
    }
}

// Hand-written so that logging the config never prints the secret.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Opts::new().debug(self, f)
    }
}

// ---------------------------------------------------------------------------
// Resolution

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

/// Where the development secret came from (`Config::keep_dev_secret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevSecret {
    /// A secret or public key is configured: nothing to do.
    NotNeeded,
    /// The secret is the one in the data directory.
    Kept(SecretFile),
    /// The data directory could not hold it (`--store memory` only): the
    /// secret is random and guest tokens end with this process.
    Random { dir: PathBuf, reason: String },
}

impl Config {
    /// Merges flags/env (`args`), the `--config` file and the defaults, then
    /// validates. With no secret and no public key (development mode) it
    /// makes a per-process random secret, turns guest login on and, unless
    /// `listen` was given, listens on loopback only; `keep_dev_secret` then
    /// swaps in the secret kept in the data directory.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileValues::load(path)?,
            None => FileValues::default(),
        };
        file.check_keys(options().iter().map(|o| o.file_key.as_str()))?;
        let mut cfg = Opts::new().merge(args, &file)?;
        cfg.listen_explicit = args.is_given("listen") || file.contains("listen");
        cfg.validate()?;
        if cfg.jwt_secret.is_none() && cfg.jwt_public_key.is_none() {
            // Nobody could log in otherwise: make a secret and let guests in.
            cfg.jwt_secret = Some(random_secret());
            cfg.random_secret = true;
            cfg.guest = true;
            if !cfg.listen_explicit {
                // Guests could sign in from anywhere: serve this host only.
                cfg.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.listen.port()));
            }
        }
        refuse_unlanded(&cfg)?;
        Ok(cfg)
    }

    /// In development mode (`random_secret`), replaces the per-process
    /// secret with the one kept in `<data_dir>/jwt-secret` (created on the
    /// first start), so that guest tokens survive a restart. With
    /// `--store memory` an unusable data directory only costs that: the
    /// random secret stays. With `--store sqlite` it is an error, as the
    /// store would fail on the same directory.
    pub fn keep_dev_secret(&mut self) -> Result<DevSecret, ConfigError> {
        if !self.random_secret {
            return Ok(DevSecret::NotNeeded);
        }
        match secret::load_or_create(&self.data_dir) {
            Ok((secret, file)) => {
                self.jwt_secret = Some(secret);
                Ok(DevSecret::Kept(file))
            }
            Err(e) if self.store == StoreKind::Memory => Ok(DevSecret::Random {
                dir: self.data_dir.clone(),
                reason: e.to_string(),
            }),
            Err(source) => Err(ConfigError::DevSecret {
                dir: self.data_dir.clone(),
                source,
            }),
        }
    }

    /// Checks each option, then the rules between options; one error per
    /// call, naming the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Opts::new().check(self)?;
        tls_pair(&self.tls_cert, &self.tls_key)?;
        if self.max_body_bytes > self.max_frame_bytes {
            return Err(invalid(
                "max-body-bytes",
                format!(
                    "must not exceed --max-frame-bytes ({})",
                    self.max_frame_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// `jwt_secret` from a config file (for `token`); other keys are not read,
/// but unknown keys are refused as by `serve`.
fn file_secret(path: &Path) -> Result<Option<String>, ConfigError> {
    let file = FileValues::load(path)?;
    file.check_keys(options().iter().map(|o| o.file_key.as_str()))?;
    match file.get("jwt_secret") {
        Some((line, v)) => String::from_toml(v)
            .map(Some)
            .map_err(|e| file.error(line, format!("jwt_secret: {e}"))),
        None => Ok(None),
    }
}

/// Options accepted by the CLI but whose feature has not landed yet.
/// Remove a check here once its feature ships.
fn refuse_unlanded(cfg: &Config) -> Result<(), ConfigError> {
    let _ = cfg;
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
            // Autobahn 12/13: every echoed message goes compressed.
            compression_min_bytes: 0,
            // Autobahn 13 then also runs the inflate path with the
            // client's window kept between messages.
            compression_client_context: true,
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
            (None, Some(path)) => file_secret(path)?,
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
mod tests;
