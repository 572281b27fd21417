//! Settings: every knob as a flag, an environment variable and a TOML key, each written once
//! in the settings table ([`layer`]), merged once at start (flag > env > file > default) and
//! checked by [`Settings::validate`]. After that, settings are plain data passed explicitly;
//! nothing reads the environment again.
//!
//! Why this file is longer than the rest: it is one job, the typed settings (the structs every
//! module reads, their mapping from the table's layer, and the one validation at start).

mod key_spec;
mod layer;
mod secret;
mod token_spec;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

pub use key_spec::{KeySpec, KeySpecError, KeysFileError};
pub use layer::{Cli, CommaList, Layer};
pub use secret::Secret;
pub use token_spec::{glob_matches, TokenMatch, TokenSpec, TokenSpecError, TokensFileError};

/// Why the settings cannot be used. Every message is a sentence a user can act on, and none
/// quotes a key or a token.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}{}: {message}", path.display(), line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    ConfigFile {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("keys file {}: {source}", path.display())]
    KeysFile {
        path: PathBuf,
        source: KeysFileError,
    },
    #[error("auth tokens file {}: {source}", path.display())]
    TokensFile {
        path: PathBuf,
        source: TokensFileError,
    },
    #[error("GATEWAY_AUTH_TOKENS: {0}")]
    TokenList(TokenSpecError),
    #[error("{origin}: {source}")]
    KeyList {
        origin: &'static str,
        source: KeySpecError,
    },
}

impl From<String> for SettingsError {
    fn from(message: String) -> Self {
        SettingsError::Invalid(message)
    }
}

impl From<&str> for SettingsError {
    fn from(message: &str) -> Self {
        SettingsError::Invalid(message.to_owned())
    }
}

/// How the scheduler picks among usable keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    Weighted,
    LeastInFlight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The four named upstream timeouts. Errors carry the same names.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// TCP + TLS connect to the upstream.
    pub connect: Duration,
    /// From sending the request to the response head, and on streams to the first event.
    pub first_byte: Duration,
    /// Longest silence between two stream events before the stream is declared broken.
    pub idle: Duration,
    /// Whole request, all attempts and the full stream included.
    pub total: Duration,
}

/// What the key scheduler needs to know.
#[derive(Clone, Debug)]
pub struct SchedulerSettings {
    pub strategy: Strategy,
    /// First backoff after a 429 that names no reset time; doubles per 429 in a row.
    pub backoff_base: Duration,
    /// Cap for that backoff.
    pub backoff_max: Duration,
    /// Bench for a key whose quota or billing is exhausted.
    pub quota_bench: Duration,
    /// How often a key disabled for a bad credential is probed with `GET /models`.
    pub probe_interval: Duration,
    /// Transient failures in a row that open the key's circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker keeps the key out before a half-open trial.
    pub breaker_cooldown: Duration,
    /// How long a request may wait for a key to become usable instead of failing at once.
    pub queue_timeout: Duration,
    /// When the upstream's daily quotas reset: a key whose quota is spent is benched until
    /// then (when the answer names no reset of its own) rather than for `quota_bench`.
    pub quota_reset_utc: Option<UtcTime>,
}

/// Everything the gateway runs on. The outside names (flags, env, TOML keys) are in README's
/// settings table and in `gateway.example.toml`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The first address to serve on (`--listen`; the one `Gateway::local_addr` reports).
    pub listen: SocketAddr,
    /// Further addresses served like `listen` (`--listen` given more than once), so that
    /// `localhost` works whether it resolves to 127.0.0.1 or ::1.
    pub extra_listen: Vec<SocketAddr>,
    /// Base URL of the OpenAI-compatible upstream, without a trailing slash.
    pub upstream: String,
    pub keys_file: Option<PathBuf>,
    /// Keys given directly (`MEGALLM_API_KEYS`, the TOML `api_keys`), joined with the file's.
    pub keys: Vec<KeySpec>,
    pub default_model: String,
    pub max_attempts: u32,
    pub auth_tokens_file: Option<PathBuf>,
    /// Gateway tokens clients must present; empty means the gateway is open.
    pub auth_tokens: Vec<Secret>,
    pub admin_token: Option<Secret>,
    pub demo: bool,
    pub log_format: LogFormat,
    /// Request bodies over this are refused with 413 before they are read whole.
    pub max_body_bytes: usize,
    /// After SIGINT/SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// How long an upstream `/models` answer is reused.
    pub models_cache_ttl: Duration,
    pub timeouts: Timeouts,
    pub scheduler: SchedulerSettings,
    /// What a client connection may cost the gateway before it is closed.
    pub client: ClientLimits,
    /// The upstream client's keep-alive pool.
    pub upstream_pool: UpstreamPool,
    /// When set, `/metrics` asks for it as a bearer token.
    pub metrics_token: Option<Secret>,
    /// Redis URL shared by the replicas (key state and limits); `None`: in-process state only.
    /// A `Secret`, since the URL may carry a password.
    pub redis: Option<Secret>,
    /// Prefix of every Redis key and channel, so that several gateways (or other programs) can
    /// share one Redis; also keys the fingerprint that names a key there.
    pub redis_prefix: String,
    /// JSON-lines file of one usage record per request (appended; reopened on SIGHUP so it
    /// can be rotated); `None`: records are only totalled in memory.
    pub usage_log: Option<PathBuf>,
    /// The OTLP/gRPC collector spans are exported to (`telemetry::init`); no spans are made
    /// without one, so tracing costs nothing unless asked for.
    pub otlp_endpoint: Option<String>,
    /// The model catalogue file (`--models-file`); `None`: the built-in catalogue.
    pub models_file: Option<PathBuf>,
    /// Extra paths forwarded through the pool to the same path upstream (`--passthrough-path`).
    pub passthrough_paths: Vec<String>,
    /// Browser origins allowed by CORS (`--cors-origin`; `*`: any). Empty: no CORS headers at
    /// all, so a gateway nobody asked to open to browsers answers exactly as before.
    pub cors_origins: Vec<String>,
}

/// The upstream keep-alive pool: how many idle connections it keeps, and for how long. Every
/// open stream holds a connection; when a burst of them ends, what the pool does not keep is
/// closed, so its sockets and buffers are given back.
#[derive(Clone, Debug)]
pub struct UpstreamPool {
    /// Idle connections kept per upstream host.
    pub max_idle: usize,
    /// An idle connection is closed after this.
    pub idle_timeout: Duration,
}

/// Limits on client connections, so that no peer can hold the gateway's sockets for ever.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// The whole request head must arrive within this.
    pub header_timeout: Duration,
    /// The whole request body must arrive within this.
    pub body_timeout: Duration,
    /// A keep-alive or HTTP/2 connection with no request open is closed after this.
    pub idle_timeout: Duration,
    /// Client connections held at once; `None`: derived from the open-files limit at start.
    pub max_connections: Option<usize>,
}

/// The same names as on the command line and in the TOML file.
fn value_enum<T: clap::ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s, true).map_err(|_| format!("`{s}` is not one of the allowed values"))
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        value_enum(s)
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        value_enum(s)
    }
}

/// Paths the gateway serves itself: `--passthrough-path` may not name them (a test in `http`
/// checks every route it serves against [`is_reserved_path`]).
const RESERVED_PATHS: &[&str] = &[
    "/",
    "/health",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/models",
];

/// Path families the gateway serves itself: model lookups, admin, and the gRPC door's
/// services (`/megallm.v1.ChatService/…`, `/grpc.health.v1.Health/…`, reflection).
const RESERVED_PREFIXES: &[&str] = &["/v1/models/", "/admin/", "/megallm.", "/grpc."];

/// Whether the gateway serves `path` itself, so that it cannot be forwarded as well.
pub fn is_reserved_path(path: &str) -> bool {
    RESERVED_PATHS.contains(&path) || RESERVED_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Longest duration any setting takes: far past any sane value, far short of overflowing
/// the clock arithmetic it feeds.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

impl Default for Settings {
    fn default() -> Self {
        Settings::from_layer(Layer::defaults(), Vec::new())
    }
}

impl Settings {
    /// Defaults pointed at `upstream` with the given keys, listening on an ephemeral port:
    /// the starting point for tests and embedding.
    pub fn for_upstream(upstream: &str, keys: &[&str]) -> Settings {
        Settings {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            upstream: upstream.trim_end_matches('/').to_owned(),
            keys: keys.iter().map(|k| KeySpec::new(k)).collect(),
            ..Settings::default()
        }
    }

    /// Reads flags, environment and the optional TOML file, in that precedence.
    pub fn load() -> Result<Settings, SettingsError> {
        Settings::from_cli(Cli::parse())
    }

    pub fn from_cli(cli: Cli) -> Result<Settings, SettingsError> {
        let file = match &cli.config {
            Some(path) => read_config_file(path)?,
            None => Layer::default(),
        };
        // Keys given directly are joined, not overridden: the environment's and the file's.
        let mut keys = Vec::new();
        for (origin, list) in [
            ("MEGALLM_API_KEYS", &cli.layer.api_keys),
            ("config api_keys", &file.api_keys),
        ] {
            for item in list.iter().flat_map(|l| &l.0) {
                let spec = KeySpec::parse(item)
                    .map_err(|source| SettingsError::KeyList { origin, source })?;
                keys.push(spec);
            }
        }
        Ok(Settings::from_layer(
            cli.layer.over(file).over(Layer::defaults()),
            keys,
        ))
    }

    /// The typed settings from a layer merged over the defaults. The layer is taken apart
    /// whole, so a setting added to the table and forgotten here does not compile.
    fn from_layer(layer: Layer, keys: Vec<KeySpec>) -> Settings {
        let Layer {
            upstream,
            default_model,
            max_attempts,
            demo,
            log_format,
            max_body_bytes,
            shutdown_grace,
            models_cache_ttl,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            total_timeout,
            strategy,
            backoff_base,
            backoff_max,
            quota_bench,
            probe_interval,
            breaker_threshold,
            breaker_cooldown,
            queue_timeout,
            client_header_timeout,
            client_body_timeout,
            client_idle_timeout,
            upstream_max_idle,
            upstream_idle_timeout,
            redis_prefix,
            keys_file,
            auth_tokens_file,
            admin_token,
            metrics_token,
            max_connections,
            redis,
            models_file,
            quota_reset_utc,
            usage_log,
            otlp_endpoint,
            api_keys: _,
            auth_tokens,
            listen,
            passthrough_path,
            cors_origin,
        } = layer;
        let mut listen = listen.unwrap_or_default().into_iter();
        let default_listen = || "127.0.0.1:8000".parse().expect("a valid address");
        Settings {
            listen: listen.next().unwrap_or_else(default_listen),
            extra_listen: listen.collect(),
            upstream: set(upstream).trim_end_matches('/').to_owned(),
            keys_file,
            keys,
            default_model: set(default_model),
            max_attempts: set(max_attempts),
            auth_tokens_file,
            auth_tokens: auth_tokens
                .map(|l| l.0.into_iter().map(Secret::new).collect())
                .unwrap_or_default(),
            admin_token,
            demo: set(demo),
            log_format: set(log_format),
            max_body_bytes: set(max_body_bytes),
            shutdown_grace: set(shutdown_grace).0,
            models_cache_ttl: set(models_cache_ttl).0,
            timeouts: Timeouts {
                connect: set(connect_timeout).0,
                first_byte: set(first_byte_timeout).0,
                idle: set(idle_timeout).0,
                total: set(total_timeout).0,
            },
            scheduler: SchedulerSettings {
                strategy: set(strategy),
                backoff_base: set(backoff_base).0,
                backoff_max: set(backoff_max).0,
                quota_bench: set(quota_bench).0,
                probe_interval: set(probe_interval).0,
                breaker_threshold: set(breaker_threshold),
                breaker_cooldown: set(breaker_cooldown).0,
                queue_timeout: set(queue_timeout).0,
                quota_reset_utc,
            },
            client: ClientLimits {
                header_timeout: set(client_header_timeout).0,
                body_timeout: set(client_body_timeout).0,
                idle_timeout: set(client_idle_timeout).0,
                max_connections,
            },
            upstream_pool: UpstreamPool {
                max_idle: set(upstream_max_idle),
                idle_timeout: set(upstream_idle_timeout).0,
            },
            metrics_token,
            redis,
            redis_prefix: set(redis_prefix),
            usage_log,
            otlp_endpoint,
            models_file,
            passthrough_paths: passthrough_path.unwrap_or_default(),
            cors_origins: cors_origin.unwrap_or_default(),
        }
    }

    /// Checks the settings once, at start, failing with a sentence a user can act on.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !self.demo && self.keys.is_empty() && self.keys_file.is_none() {
            return Err(
                "no upstream API key is configured. Give keys with MEGALLM_API_KEYS=key1,key2 \
                 or --keys-file FILE (one key a line), or run with --demo to try the gateway \
                 against its built-in simulated upstream"
                    .into(),
            );
        }
        if !(self.upstream.starts_with("http://") || self.upstream.starts_with("https://")) {
            return Err(format!(
                "--upstream must be an http:// or https:// URL, got `{}`",
                self.upstream
            )
            .into());
        }
        if self.max_attempts == 0 {
            return Err("--max-attempts must be at least 1".into());
        }
        if self.default_model.trim().is_empty() {
            return Err("--default-model must not be empty".into());
        }
        if self.scheduler.breaker_threshold == 0 {
            return Err("--breaker-threshold must be at least 1".into());
        }
        if self.max_body_bytes == 0 {
            return Err("--max-body-bytes must be at least 1".into());
        }
        if self.client.max_connections == Some(0) {
            return Err("--max-connections must be at least 1".into());
        }
        for (name, d) in [
            ("--connect-timeout", self.timeouts.connect),
            ("--first-byte-timeout", self.timeouts.first_byte),
            ("--idle-timeout", self.timeouts.idle),
            ("--total-timeout", self.timeouts.total),
            ("--client-header-timeout", self.client.header_timeout),
            ("--client-body-timeout", self.client.body_timeout),
            ("--client-idle-timeout", self.client.idle_timeout),
            ("--upstream-idle-timeout", self.upstream_pool.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero").into());
            }
        }
        if let Some(url) = &self.redis {
            let url = url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err("--redis must be a redis:// or rediss:// URL".into());
            }
        }
        for path in &self.passthrough_paths {
            if !path.starts_with('/')
                || path.contains(['{', '}', '*', '?', '#'])
                || is_reserved_path(path)
            {
                return Err(format!(
                    "--passthrough-path `{path}` must be a plain path starting with `/` (no `{{}}`, `*`, `?`), \
                     and not one the gateway serves itself"
                )
                .into());
            }
        }
        if self.redis_prefix.trim().is_empty() {
            return Err("--redis-prefix must not be empty".into());
        }
        for origin in &self.cors_origins {
            check_origin(origin)?;
        }
        let sch = &self.scheduler;
        for (name, d) in [
            ("--connect-timeout", self.timeouts.connect),
            ("--first-byte-timeout", self.timeouts.first_byte),
            ("--idle-timeout", self.timeouts.idle),
            ("--total-timeout", self.timeouts.total),
            ("--shutdown-grace", self.shutdown_grace),
            ("--models-cache-ttl", self.models_cache_ttl),
            ("--backoff-base", sch.backoff_base),
            ("--backoff-max", sch.backoff_max),
            ("--quota-bench", sch.quota_bench),
            ("--probe-interval", sch.probe_interval),
            ("--breaker-cooldown", sch.breaker_cooldown),
            ("--queue-timeout", sch.queue_timeout),
            ("--client-header-timeout", self.client.header_timeout),
            ("--client-body-timeout", self.client.body_timeout),
            ("--client-idle-timeout", self.client.idle_timeout),
        ] {
            if d > MAX_DURATION {
                return Err(format!("{name} must be at most 366 days").into());
            }
        }
        Ok(())
    }

    /// All configured keys: the direct ones, then the keys file's.
    pub fn read_keys(&self) -> Result<Vec<KeySpec>, SettingsError> {
        let mut keys = self.keys.clone();
        if let Some(path) = &self.keys_file {
            keys.extend(read_keys_file(path)?);
        }
        Ok(keys)
    }

    /// All gateway tokens: the direct ones, then the tokens file's. Each may carry a name and
    /// limits (`tok name=billing rpm=600`); a bare token is a client with neither.
    pub fn read_auth_tokens(&self) -> Result<Vec<TokenSpec>, SettingsError> {
        let mut tokens = Vec::new();
        for token in &self.auth_tokens {
            tokens.push(TokenSpec::parse(token.expose()).map_err(SettingsError::TokenList)?);
        }
        if let Some(path) = &self.auth_tokens_file {
            let text = read("auth tokens file", path)?;
            tokens.extend(TokenSpec::parse_file(&text).map_err(|source| {
                SettingsError::TokensFile {
                    path: path.to_owned(),
                    source,
                }
            })?);
        }
        Ok(tokens)
    }
}

/// A CORS origin as a browser sends it: `*`, or `scheme://host[:port]` with no path, nothing
/// else (a trailing `/` would never match).
fn check_origin(origin: &str) -> Result<(), SettingsError> {
    if origin == "*" {
        return Ok(());
    }
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let ok = rest.is_some_and(|host| {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--cors-origin `{origin}` is not an origin: write it as a browser sends it, \
             scheme://host[:port] with no path (https://app.example.com), or * for any"
        )
        .into())
    }
}

/// A required setting of a layer merged over [`Layer::defaults`], which holds every one.
fn set<T>(value: Option<T>) -> T {
    value.expect("the defaults layer holds every required setting")
}

fn read(what: &'static str, path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

pub fn read_keys_file(path: &Path) -> Result<Vec<KeySpec>, SettingsError> {
    KeySpec::parse_file(&read("keys file", path)?).map_err(|source| SettingsError::KeysFile {
        path: path.to_owned(),
        source,
    })
}

fn read_config_file(path: &Path) -> Result<Layer, SettingsError> {
    let text = read("config file", path)?;
    // toml's own Display quotes the offending line, which may hold a key or a token.
    toml::from_str(&text).map_err(|e: toml::de::Error| SettingsError::ConfigFile {
        path: path.to_owned(),
        line: e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1)),
        message: e.message().to_owned(),
    })
}

/// A time of day in UTC, written `HH:MM` (`--quota-reset-utc 00:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub hour: u8,
    pub minute: u8,
}

impl UtcTime {
    /// From `unix_secs` (now, wall clock) to the next time it is this time of day in UTC; a
    /// full day when it is that minute now.
    pub fn next_after(self, unix_secs: u64) -> Duration {
        const DAY: u64 = 86_400;
        let at = u64::from(self.hour) * 3600 + u64::from(self.minute) * 60;
        let today = unix_secs % DAY;
        let wait = (at + DAY - today) % DAY;
        Duration::from_secs(if wait == 0 { DAY } else { wait })
    }
}

impl std::str::FromStr for UtcTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a time of day like 00:00 or 17:30 (UTC)");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let hour: u8 = h.parse().ok().filter(|h| *h < 24).ok_or_else(bad)?;
        let minute: u8 = m.parse().ok().filter(|m| *m < 60).ok_or_else(bad)?;
        Ok(UtcTime { hour, minute })
    }
}

impl<'de> Deserialize<'de> for UtcTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A duration written as `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
#[derive(Clone, Copy, Debug)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                if let Ok(d) = Duration::try_from_secs_f64(secs) {
                    return Ok(HumanDuration(d));
                }
            }
        }
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration like 30s, 500ms or 2m ({e})"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s.is_finite() && s >= 0.0 => Duration::try_from_secs_f64(s)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!("invalid duration {s}"))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
