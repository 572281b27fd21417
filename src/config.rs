//! Settings: every knob as a flag, an environment variable and a TOML key, merged once at start
//! (flag > env > file > default) and checked by [`Settings::validate`]. After that, settings are
//! plain data passed explicitly; nothing reads the environment again.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A secret (upstream key or client token). `Debug` and `Display` print `***` so that a stray
/// `{:?}` of the settings can never leak one into a log.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself: call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short fingerprint (`fp-` + 8 hex digits of SHA-256), stable across restarts and not a
    /// prefix of the secret, so operators can match keys without seeing them.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut out = String::with_capacity(11);
        out.push_str("fp-");
        for byte in &digest[..4] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// Constant-time comparison, for tokens a client presents.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == presented.len() && bool::from(self.0.as_bytes().ct_eq(presented))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One upstream key and its scheduling attributes, parsed from a line such as
/// `sk-abc weight=3 max_concurrent=8 rpm=600`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub secret: Secret,
    /// Relative share of traffic under the `weighted` strategy (≥ 1).
    pub weight: u32,
    /// At most this many requests in flight on the key; a key at its limit is skipped.
    pub max_concurrent: Option<u32>,
    /// At most this many requests started per minute on the key (token bucket).
    pub rpm: Option<u32>,
}

impl KeySpec {
    pub fn new(secret: &str) -> Self {
        KeySpec {
            secret: Secret::new(secret.to_owned()),
            weight: 1,
            max_concurrent: None,
            rpm: None,
        }
    }

    /// Parses `KEY [weight=N] [max_concurrent=N] [rpm=N]`. Errors never quote the key.
    pub fn parse(line: &str) -> Result<KeySpec, String> {
        let mut parts = line.split_whitespace();
        let key = parts.next().ok_or("empty key line")?;
        if key.contains('=') && key.len() < 24 && key.split('=').next().is_some_and(is_attr) {
            return Err("the line starts with an attribute; the key must come first".into());
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a key may hold only visible ASCII characters".into());
        }
        let mut spec = KeySpec::new(key);
        // Errors name the attribute's position, never its text: a missing comma between two
        // keys would otherwise print the second key.
        for (i, attr) in parts.enumerate() {
            let position = i + 2;
            let (name, value) = attr.split_once('=').ok_or_else(|| {
                format!(
                    "word {position} after the key is not an attribute like weight=2 \
                     (keys in MEGALLM_API_KEYS are separated by commas)"
                )
            })?;
            if !is_attr(name) {
                return Err(format!(
                    "word {position} is not a known key attribute (known: weight, max_concurrent, rpm)"
                ));
            }
            let n: u32 = value
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("{name} must be a whole number of at least 1"))?;
            match name {
                "weight" => spec.weight = n,
                "max_concurrent" => spec.max_concurrent = Some(n),
                _ => spec.rpm = Some(n),
            }
        }
        Ok(spec)
    }

    /// Parses a keys file's text: one spec a line, `#` comments, blank lines ignored.
    pub fn parse_file(text: &str) -> Result<Vec<KeySpec>, String> {
        let mut specs = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            specs.push(KeySpec::parse(line).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
        Ok(specs)
    }
}

fn is_attr(name: &str) -> bool {
    matches!(name, "weight" | "max_concurrent" | "rpm")
}

/// How the scheduler picks among usable keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
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
}

/// Everything the gateway runs on; see CONTRACT.md for the outside names.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
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
    /// When set, `/metrics` asks for it as a bearer token.
    pub metrics_token: Option<Secret>,
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

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
pub const DEFAULT_UPSTREAM: &str = "https://ai.megallm.io/v1";
pub const DEFAULT_MODEL: &str = "openai-gpt-oss-120b";

/// Longest duration any setting takes: far past any sane value, far short of overflowing
/// the clock arithmetic it feeds.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            upstream: DEFAULT_UPSTREAM.into(),
            keys_file: None,
            keys: Vec::new(),
            default_model: DEFAULT_MODEL.into(),
            max_attempts: 3,
            auth_tokens_file: None,
            auth_tokens: Vec::new(),
            admin_token: None,
            demo: false,
            log_format: LogFormat::Text,
            max_body_bytes: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            models_cache_ttl: Duration::from_secs(60),
            timeouts: Timeouts {
                connect: Duration::from_secs(10),
                first_byte: Duration::from_secs(120),
                idle: Duration::from_secs(120),
                total: Duration::from_secs(600),
            },
            scheduler: SchedulerSettings {
                strategy: Strategy::RoundRobin,
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(60),
                quota_bench: Duration::from_secs(3600),
                probe_interval: Duration::from_secs(600),
                breaker_threshold: 3,
                breaker_cooldown: Duration::from_secs(30),
                queue_timeout: Duration::ZERO,
            },
            client: ClientLimits {
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(60),
                idle_timeout: Duration::from_secs(75),
                max_connections: None,
            },
            metrics_token: None,
        }
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
    pub fn load() -> Result<Settings, String> {
        Settings::from_cli(Cli::parse())
    }

    pub fn from_cli(cli: Cli) -> Result<Settings, String> {
        let file = match &cli.config {
            Some(path) => FileSettings::read(path)?,
            None => FileSettings::default(),
        };
        let d = Settings::default();
        let dur = |flag: Option<HumanDuration>, file: Option<HumanDuration>, default: Duration| {
            flag.or(file).map(|h| h.0).unwrap_or(default)
        };
        let mut keys = Vec::new();
        for item in cli
            .api_keys
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            keys.push(KeySpec::parse(item).map_err(|e| format!("MEGALLM_API_KEYS: {e}"))?);
        }
        for item in file.api_keys.unwrap_or_default() {
            keys.push(KeySpec::parse(&item).map_err(|e| format!("config api_keys: {e}"))?);
        }
        let mut auth_tokens: Vec<Secret> = cli
            .auth_tokens
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Secret::new(s.to_owned()))
            .collect();
        if auth_tokens.is_empty() {
            auth_tokens = file.auth_tokens.unwrap_or_default();
        }
        let settings = Settings {
            listen: cli.listen.or(file.listen).unwrap_or(d.listen),
            upstream: cli
                .upstream
                .or(file.upstream)
                .unwrap_or(d.upstream)
                .trim_end_matches('/')
                .to_owned(),
            keys_file: cli.keys_file.or(file.keys_file),
            keys,
            default_model: cli
                .default_model
                .or(file.default_model)
                .unwrap_or(d.default_model),
            max_attempts: cli
                .max_attempts
                .or(file.max_attempts)
                .unwrap_or(d.max_attempts),
            auth_tokens_file: cli.auth_tokens_file.or(file.auth_tokens_file),
            auth_tokens,
            admin_token: cli.admin_token.map(Secret::new).or(file.admin_token),
            demo: cli.demo || file.demo.unwrap_or(false),
            log_format: cli.log_format.or(file.log_format).unwrap_or(d.log_format),
            max_body_bytes: cli
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            shutdown_grace: dur(cli.shutdown_grace, file.shutdown_grace, d.shutdown_grace),
            models_cache_ttl: dur(
                cli.models_cache_ttl,
                file.models_cache_ttl,
                d.models_cache_ttl,
            ),
            timeouts: Timeouts {
                connect: dur(
                    cli.connect_timeout,
                    file.connect_timeout,
                    d.timeouts.connect,
                ),
                first_byte: dur(
                    cli.first_byte_timeout,
                    file.first_byte_timeout,
                    d.timeouts.first_byte,
                ),
                idle: dur(cli.idle_timeout, file.idle_timeout, d.timeouts.idle),
                total: dur(cli.total_timeout, file.total_timeout, d.timeouts.total),
            },
            scheduler: SchedulerSettings {
                strategy: cli
                    .strategy
                    .or(file.strategy)
                    .unwrap_or(d.scheduler.strategy),
                backoff_base: dur(
                    cli.backoff_base,
                    file.backoff_base,
                    d.scheduler.backoff_base,
                ),
                backoff_max: dur(cli.backoff_max, file.backoff_max, d.scheduler.backoff_max),
                quota_bench: dur(cli.quota_bench, file.quota_bench, d.scheduler.quota_bench),
                probe_interval: dur(
                    cli.probe_interval,
                    file.probe_interval,
                    d.scheduler.probe_interval,
                ),
                breaker_threshold: cli
                    .breaker_threshold
                    .or(file.breaker_threshold)
                    .unwrap_or(d.scheduler.breaker_threshold),
                breaker_cooldown: dur(
                    cli.breaker_cooldown,
                    file.breaker_cooldown,
                    d.scheduler.breaker_cooldown,
                ),
                queue_timeout: dur(
                    cli.queue_timeout,
                    file.queue_timeout,
                    d.scheduler.queue_timeout,
                ),
            },
            client: ClientLimits {
                header_timeout: dur(
                    cli.client_header_timeout,
                    file.client_header_timeout,
                    d.client.header_timeout,
                ),
                body_timeout: dur(
                    cli.client_body_timeout,
                    file.client_body_timeout,
                    d.client.body_timeout,
                ),
                idle_timeout: dur(
                    cli.client_idle_timeout,
                    file.client_idle_timeout,
                    d.client.idle_timeout,
                ),
                max_connections: cli.max_connections.or(file.max_connections),
            },
            metrics_token: cli.metrics_token.map(Secret::new).or(file.metrics_token),
        };
        Ok(settings)
    }

    /// Checks the settings once, at start, failing with a sentence a user can act on.
    pub fn validate(&self) -> Result<(), String> {
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
            ));
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
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
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
                return Err(format!("{name} must be at most 366 days"));
            }
        }
        Ok(())
    }

    /// All configured keys: the direct ones, then the keys file's.
    pub fn read_keys(&self) -> Result<Vec<KeySpec>, String> {
        let mut keys = self.keys.clone();
        if let Some(path) = &self.keys_file {
            keys.extend(read_keys_file(path)?);
        }
        Ok(keys)
    }

    /// All gateway tokens: the direct ones, then the tokens file's.
    pub fn read_auth_tokens(&self) -> Result<Vec<Secret>, String> {
        let mut tokens = self.auth_tokens.clone();
        if let Some(path) = &self.auth_tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read auth tokens file {}: {e}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                    .map(|l| Secret::new(l.to_owned())),
            );
        }
        Ok(tokens)
    }
}

pub fn read_keys_file(path: &Path) -> Result<Vec<KeySpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    KeySpec::parse_file(&text).map_err(|e| format!("keys file {}: {e}", path.display()))
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

/// The optional TOML file: the same names as the flags, with underscores.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    upstream: Option<String>,
    keys_file: Option<PathBuf>,
    api_keys: Option<Vec<String>>,
    default_model: Option<String>,
    max_attempts: Option<u32>,
    auth_tokens_file: Option<PathBuf>,
    auth_tokens: Option<Vec<Secret>>,
    admin_token: Option<Secret>,
    demo: Option<bool>,
    log_format: Option<LogFormat>,
    max_body_bytes: Option<usize>,
    shutdown_grace: Option<HumanDuration>,
    models_cache_ttl: Option<HumanDuration>,
    connect_timeout: Option<HumanDuration>,
    first_byte_timeout: Option<HumanDuration>,
    idle_timeout: Option<HumanDuration>,
    total_timeout: Option<HumanDuration>,
    strategy: Option<Strategy>,
    backoff_base: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
    quota_bench: Option<HumanDuration>,
    probe_interval: Option<HumanDuration>,
    breaker_threshold: Option<u32>,
    breaker_cooldown: Option<HumanDuration>,
    queue_timeout: Option<HumanDuration>,
    client_header_timeout: Option<HumanDuration>,
    client_body_timeout: Option<HumanDuration>,
    client_idle_timeout: Option<HumanDuration>,
    max_connections: Option<usize>,
    metrics_token: Option<Secret>,
}

impl FileSettings {
    fn read(path: &Path) -> Result<FileSettings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        // toml's own Display quotes the offending line, which may hold a key or a token.
        toml::from_str(&text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            format!("config file {}{at}: {}", path.display(), e.message())
        })
    }
}

/// Command-line flags; each falls back to its environment variable, then the TOML file.
#[derive(Parser, Debug, Default)]
#[command(name = "megallm-gateway", version, about)]
pub struct Cli {
    /// TOML file with any of the settings below (keys named like the flags, with underscores).
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// One address serving HTTP/1.1, h2c and gRPC [default: 127.0.0.1:8000]
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// OpenAI-compatible upstream base URL [default: https://ai.megallm.io/v1]
    #[arg(long, env = "MEGALLM_BASE_URL")]
    pub upstream: Option<String>,
    /// Keys file: one key a line, `#` comments; re-read on change and on SIGHUP.
    #[arg(long, env = "MEGALLM_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,
    /// Upstream keys separated by commas (environment only).
    #[arg(skip = std::env::var("MEGALLM_API_KEYS").ok())]
    pub api_keys: Option<String>,
    /// Model used when a request names none [default: openai-gpt-oss-120b]
    #[arg(long, env = "GATEWAY_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Upstream tries per request, each on a different key where possible [default: 3]
    #[arg(long, env = "GATEWAY_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// File of gateway tokens clients must present as `Authorization: Bearer <token>`.
    #[arg(long)]
    pub auth_tokens_file: Option<PathBuf>,
    /// Gateway tokens separated by commas (environment only).
    #[arg(skip = std::env::var("GATEWAY_AUTH_TOKENS").ok())]
    pub auth_tokens: Option<String>,
    /// Token for the admin API; the admin API answers 404 unless this is set.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Serve against an embedded simulated upstream with demo keys.
    #[arg(long, env = "GATEWAY_DEMO", value_parser = clap::builder::FalseyValueParser::new())]
    pub demo: bool,
    /// Log format; the level comes from RUST_LOG [default: text]
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest accepted request body in bytes [default: 33554432]
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Grace period for in-flight requests at shutdown [default: 30s]
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<HumanDuration>,
    /// How long the upstream's model list is cached [default: 60s]
    #[arg(long, env = "GATEWAY_MODELS_CACHE_TTL")]
    pub models_cache_ttl: Option<HumanDuration>,
    /// Upstream connect timeout [default: 10s]
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<HumanDuration>,
    /// Time to the response head, and on streams to the first event [default: 120s]
    #[arg(long, env = "GATEWAY_FIRST_BYTE_TIMEOUT")]
    pub first_byte_timeout: Option<HumanDuration>,
    /// Longest silence between stream events [default: 120s]
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<HumanDuration>,
    /// Whole request including all attempts and the full stream [default: 600s]
    #[arg(long, env = "GATEWAY_TOTAL_TIMEOUT")]
    pub total_timeout: Option<HumanDuration>,
    /// Key choice among usable keys [default: round-robin]
    #[arg(long, env = "GATEWAY_STRATEGY", value_enum)]
    pub strategy: Option<Strategy>,
    /// First backoff after a 429 without Retry-After [default: 1s]
    #[arg(long, env = "GATEWAY_BACKOFF_BASE")]
    pub backoff_base: Option<HumanDuration>,
    /// Cap of the 429 backoff [default: 60s]
    #[arg(long, env = "GATEWAY_BACKOFF_MAX")]
    pub backoff_max: Option<HumanDuration>,
    /// Bench for a key whose quota is exhausted [default: 1h]
    #[arg(long, env = "GATEWAY_QUOTA_BENCH")]
    pub quota_bench: Option<HumanDuration>,
    /// Probe interval for keys disabled as invalid [default: 10m]
    #[arg(long, env = "GATEWAY_PROBE_INTERVAL")]
    pub probe_interval: Option<HumanDuration>,
    /// Transient failures in a row that bench a key [default: 3]
    #[arg(long, env = "GATEWAY_BREAKER_THRESHOLD")]
    pub breaker_threshold: Option<u32>,
    /// Bench after the breaker opens, before a half-open trial [default: 30s]
    #[arg(long, env = "GATEWAY_BREAKER_COOLDOWN")]
    pub breaker_cooldown: Option<HumanDuration>,
    /// How long a request waits for a key to come back instead of failing [default: 0s]
    #[arg(long, env = "GATEWAY_QUEUE_TIMEOUT")]
    pub queue_timeout: Option<HumanDuration>,
    /// The whole request head must arrive in this time [default: 10s]
    #[arg(long, env = "GATEWAY_CLIENT_HEADER_TIMEOUT")]
    pub client_header_timeout: Option<HumanDuration>,
    /// The whole request body must arrive in this time [default: 60s]
    #[arg(long, env = "GATEWAY_CLIENT_BODY_TIMEOUT")]
    pub client_body_timeout: Option<HumanDuration>,
    /// A client connection with no request open is closed after this [default: 75s]
    #[arg(long, env = "GATEWAY_CLIENT_IDLE_TIMEOUT")]
    pub client_idle_timeout: Option<HumanDuration>,
    /// Client connections held at once [default: from the open-files limit]
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Bearer token `/metrics` asks for; open when unset.
    #[arg(long, env = "GATEWAY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_spec_parses_attributes() {
        let spec = KeySpec::parse("sk-abc weight=3 max_concurrent=2 rpm=60").unwrap();
        assert_eq!(spec.secret.expose(), "sk-abc");
        assert_eq!(spec.weight, 3);
        assert_eq!(spec.max_concurrent, Some(2));
        assert_eq!(spec.rpm, Some(60));
        assert!(KeySpec::parse("sk-abc weight=0").is_err());
        assert!(KeySpec::parse("sk-abc colour=red").is_err());
        for line in [
            "sk-secret weight=x",
            "sk-a sk-second",
            "sk-a sk-b=1",
            "sk-a weight=sk-b",
        ] {
            let err = KeySpec::parse(line).unwrap_err();
            assert!(!err.contains("sk-"), "{line} → {err}");
        }
    }

    #[test]
    fn keys_file_skips_comments_and_blanks() {
        let specs = KeySpec::parse_file("# pool\n\nk1\n  k2 weight=2 # second\n").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].weight, 2);
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret".into());
        assert_eq!(format!("{s:?}"), "***");
        assert!(!s.fingerprint().contains("sk-"));
        assert!(s.matches(b"sk-very-secret"));
        assert!(!s.matches(b"sk-very-secreT"));
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let dir = std::env::temp_dir().join(format!("gwcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.toml");
        std::fs::write(
            &path,
            "default_model = \"from-file\"\nmax_attempts = 5\nidle_timeout = \"2s\"\napi_keys = [\"k\"]\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            default_model: Some("from-flag".into()),
            ..Cli::default()
        };
        let s = Settings::from_cli(cli).unwrap();
        assert_eq!(s.default_model, "from-flag");
        assert_eq!(s.max_attempts, 5);
        assert_eq!(s.timeouts.idle, Duration::from_secs(2));
        assert_eq!(s.timeouts.total, Duration::from_secs(600));
        assert_eq!(s.keys.len(), 1);
        std::fs::write(&path, "colour = 1\n").unwrap();
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        assert!(Settings::from_cli(cli).unwrap_err().contains("colour"));
    }

    #[test]
    fn no_keys_says_how_to_give_them() {
        let err = Settings::default().validate().unwrap_err();
        assert!(err.contains("MEGALLM_API_KEYS") && err.contains("--demo"));
    }
}
