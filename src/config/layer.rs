//! The settings table: each setting is written once here (its name, flag and environment
//! variable, default and help), and the three layers come from that one row: the command line
//! (clap, which also reads the environment), the TOML file (serde) and the defaults. The help
//! text's `[default: …]` is the same literal the default is parsed from, so they cannot drift.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;
use serde::Deserialize;

use super::{HumanDuration, LogFormat, Secret, Strategy, UtcTime};

/// Defines [`Layer`]: `required` rows have a default (every merged layer holds them),
/// `optional` rows may stay unset, `lists` are comma lists read from the environment only (a
/// key on the command line would show in `ps`) or as TOML arrays.
macro_rules! settings_table {
    (
        required { $( $(#[$ra:meta])* $rf:ident : $rt:ty = $rd:literal, $rh:literal; )* }
        optional { $( $(#[$oa:meta])* $of:ident : $ot:ty, $oh:literal; )* }
        lists { $( $lf:ident, $lenv:literal, $lh:literal; )* }
        repeated { $( $(#[$pa:meta])* $pf:ident : $pt:ty = $pd:literal, $ph:literal; )* }
    ) => {
        /// One layer of settings: the command line with the environment, or the TOML file.
        #[derive(clap::Args, Deserialize, Default, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[$ra])* #[arg(help = concat!($rh, " [default: ", $rd, "]"))] pub $rf: Option<$rt>, )*
            $( $(#[$oa])* #[arg(help = $oh)] pub $of: Option<$ot>, )*
            $(
                #[doc = $lh]
                #[arg(skip = CommaList::from_env($lenv))]
                pub $lf: Option<CommaList>,
            )*
            $(
                $(#[$pa])* #[arg(help = $ph)]
                #[serde(default, deserialize_with = "one_or_many")]
                pub $pf: Option<Vec<$pt>>,
            )*
        }

        impl Layer {
            /// Every default, parsed from the same literal the help text shows.
            pub fn defaults() -> Layer {
                Layer {
                    $( $rf: Some(parse_default::<$rt>(stringify!($rf), $rd)), )*
                    $( $pf: (!$pd.is_empty())
                        .then(|| vec![parse_default::<$pt>(stringify!($pf), $pd)]), )*
                    ..Layer::default()
                }
            }

            /// This layer over `lower`: a setting given here wins. Lists are the exception
            /// the caller decides on, so they are kept apart in [`Layer::lists`].
            pub fn over(self, lower: Layer) -> Layer {
                Layer {
                    $( $rf: self.$rf.or(lower.$rf), )*
                    $( $of: self.$of.or(lower.$of), )*
                    $( $lf: self.$lf.or(lower.$lf), )*
                    $( $pf: self.$pf.filter(|v| !v.is_empty()).or(lower.$pf), )*
                }
            }

            /// The names of every setting, as the TOML file spells them.
            pub fn names() -> &'static [&'static str] {
                &[$( stringify!($rf), )* $( stringify!($of), )* $( stringify!($lf), )* $( stringify!($pf), )*]
            }
        }

        /// Every setting as `gateway.example.toml` documents it.
        #[cfg(test)]
        pub const ROWS: &[Row] = &[
            $( Row { name: stringify!($rf), default: Some($rd), help: $rh, list: false }, )*
            $( Row { name: stringify!($of), default: None, help: $oh, list: false }, )*
            $( Row { name: stringify!($lf), default: None, help: $lh, list: true }, )*
            $( Row {
                name: stringify!($pf),
                default: if $pd.is_empty() { None } else { Some($pd) },
                help: $ph,
                list: true,
            }, )*
        ];

        /// What `--help` says after the flags: the settings the command line does not take.
        pub const ENV_ONLY_HELP: &str = concat!(
            "Environment only (also TOML arrays in --config):\n",
            $( "  ", $lenv, "\n          ", $lh, "\n", )*
        );
    };
}

settings_table! {
    required {
        #[arg(long, env = "MEGALLM_BASE_URL")]
        upstream: String = "https://ai.megallm.io/v1", "OpenAI-compatible upstream base URL";
        #[arg(long, env = "GATEWAY_DEFAULT_MODEL")]
        default_model: String = "openai-gpt-oss-120b", "Model used when a request names none";
        #[arg(long, env = "GATEWAY_MAX_ATTEMPTS")]
        max_attempts: u32 = "3", "Upstream tries per request, each on a different key where possible";
        #[arg(long, env = "GATEWAY_DEMO", num_args = 0..=1, default_missing_value = "true",
              value_parser = clap::builder::FalseyValueParser::new())]
        demo: bool = "false", "Serve against an embedded simulated upstream with demo keys";
        #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum)]
        log_format: LogFormat = "text", "Log format; the level comes from RUST_LOG";
        #[arg(long, env = "GATEWAY_MAX_BODY_BYTES")]
        max_body_bytes: usize = "33554432", "Largest accepted request body in bytes";
        #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE")]
        shutdown_grace: HumanDuration = "30s", "Grace period for in-flight requests at shutdown";
        #[arg(long, env = "GATEWAY_MODELS_CACHE_TTL")]
        models_cache_ttl: HumanDuration = "60s", "How long the upstream's model list is cached";
        #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT")]
        connect_timeout: HumanDuration = "10s", "Upstream connect timeout";
        #[arg(long, env = "GATEWAY_FIRST_BYTE_TIMEOUT")]
        first_byte_timeout: HumanDuration = "120s", "Time to the response head, and on streams to the first event";
        #[arg(long, env = "GATEWAY_IDLE_TIMEOUT")]
        idle_timeout: HumanDuration = "120s", "Longest silence between stream events";
        #[arg(long, env = "GATEWAY_TOTAL_TIMEOUT")]
        total_timeout: HumanDuration = "600s", "Whole request including all attempts and the full stream";
        #[arg(long, env = "GATEWAY_STRATEGY", value_enum)]
        strategy: Strategy = "round-robin", "Key choice among usable keys";
        #[arg(long, env = "GATEWAY_BACKOFF_BASE")]
        backoff_base: HumanDuration = "1s", "First backoff after a 429 without Retry-After";
        #[arg(long, env = "GATEWAY_BACKOFF_MAX")]
        backoff_max: HumanDuration = "60s", "Cap of the 429 backoff";
        #[arg(long, env = "GATEWAY_QUOTA_BENCH")]
        quota_bench: HumanDuration = "1h", "Bench for a key whose quota is exhausted";
        #[arg(long, env = "GATEWAY_PROBE_INTERVAL")]
        probe_interval: HumanDuration = "10m", "Probe interval for keys disabled as invalid";
        #[arg(long, env = "GATEWAY_BREAKER_THRESHOLD")]
        breaker_threshold: u32 = "3", "Transient failures in a row that bench a key";
        #[arg(long, env = "GATEWAY_BREAKER_COOLDOWN")]
        breaker_cooldown: HumanDuration = "30s", "Bench after the breaker opens, before a half-open trial";
        #[arg(long, env = "GATEWAY_QUEUE_TIMEOUT")]
        queue_timeout: HumanDuration = "0s", "How long a request waits for a key to come back instead of failing";
        #[arg(long, env = "GATEWAY_CLIENT_HEADER_TIMEOUT")]
        client_header_timeout: HumanDuration = "10s", "The whole request head must arrive in this time";
        #[arg(long, env = "GATEWAY_CLIENT_BODY_TIMEOUT")]
        client_body_timeout: HumanDuration = "60s", "The whole request body must arrive in this time";
        #[arg(long, env = "GATEWAY_CLIENT_IDLE_TIMEOUT")]
        client_idle_timeout: HumanDuration = "75s", "A client connection with no request open is closed after this";
        #[arg(long, env = "GATEWAY_UPSTREAM_MAX_IDLE")]
        upstream_max_idle: usize = "64", "Idle keep-alive connections kept open to the upstream (more are closed once idle)";
        #[arg(long, env = "GATEWAY_UPSTREAM_IDLE_TIMEOUT")]
        upstream_idle_timeout: HumanDuration = "15s", "An idle upstream connection is closed after this";
        #[arg(long, env = "GATEWAY_REDIS_PREFIX")]
        redis_prefix: String = "megallm-gateway", "Prefix of every Redis key and channel the gateway uses (with --redis)";
    }
    optional {
        #[arg(long, env = "MEGALLM_KEYS_FILE")]
        keys_file: PathBuf, "Keys file: one key a line, `#` comments; re-read on change and on SIGHUP";
        #[arg(long, env = "GATEWAY_AUTH_TOKENS_FILE")]
        auth_tokens_file: PathBuf, "File of gateway tokens clients must present as `Authorization: Bearer <token>`";
        #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Secret, "Token for the admin API; the admin API answers 404 unless this is set";
        #[arg(long, env = "GATEWAY_METRICS_TOKEN", hide_env_values = true)]
        metrics_token: Secret, "Bearer token /metrics asks for; open when unset";
        #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
        max_connections: usize, "Client connections held at once [default: from the open-files limit]";
        #[arg(long = "redis", env = "GATEWAY_REDIS_URL", hide_env_values = true)]
        redis: Secret, "Redis URL (redis://[:password@]host:port/db, rediss:// for TLS): replicas share key state and limits";
        #[arg(long, env = "GATEWAY_USAGE_LOG")]
        usage_log: PathBuf, "JSON-lines file of one usage record per request (appended, flushed in batches, reopened on SIGHUP)";
        #[arg(long, env = "GATEWAY_MODELS_FILE")]
        models_file: PathBuf, "TOML model catalogue (context length, output limit, capabilities) over the built-in one";
        #[arg(long, env = "GATEWAY_QUOTA_RESET_UTC")]
        quota_reset_utc: UtcTime, "Daily time (HH:MM, UTC) the upstream's quotas reset: a key out of quota is benched until then, not for --quota-bench";
        #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
        otlp_endpoint: String, "OTLP/gRPC collector (http://host:4317) to export request and upstream-attempt spans to; off when unset";
    }
    lists {
        api_keys, "MEGALLM_API_KEYS", "Upstream keys separated by commas; joined with the keys file's";
        auth_tokens, "GATEWAY_AUTH_TOKENS", "Gateway tokens clients must present, separated by commas";
    }
    repeated {
        #[arg(long, env = "GATEWAY_LISTEN", value_delimiter = ',')]
        listen: SocketAddr = "127.0.0.1:8000", "Address serving HTTP/1.1, h2c and gRPC; repeat (or comma-separate) for several, e.g. [::1]:8000 [default: 127.0.0.1:8000]";
        #[arg(long = "passthrough-path", env = "GATEWAY_PASSTHROUGH_PATHS", value_delimiter = ',')]
        passthrough_path: String = "", "Extra path forwarded through the key pool to the same path upstream (e.g. /v1/audio/speech); repeatable";
        #[arg(long = "cors-origin", env = "GATEWAY_CORS_ORIGINS", value_delimiter = ',')]
        cors_origin: String = "", "Browser origin allowed to call the gateway (HTTP API, gRPC-Web, Connect), like https://app.example.com, or * for any; repeatable. None: no CORS headers at all";
    }
}

/// One row of the settings table, for the example file.
#[cfg(test)]
pub struct Row {
    pub name: &'static str,
    /// The default as written on the command line; `None` for a setting that may stay unset.
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// A comma list in the environment, an array in TOML.
    pub list: bool,
}

/// `gateway.example.toml`: every setting with its help line and its default (settings with
/// none are commented out). A test keeps the committed file equal to this.
#[cfg(test)]
pub fn example_toml() -> String {
    let mut out = String::from(
        "# megallm-gateway settings: every one, with its default. Pass this file with\n\
         # --config FILE (or GATEWAY_CONFIG); flags and environment variables win over it.\n\
         # Durations take 30s, 500ms, 2m or a number of seconds.\n",
    );
    for row in ROWS {
        out.push_str(&format!("\n# {}\n", row.help));
        match row.default {
            Some(default) => out.push_str(&format!("{} = {}\n", row.name, toml_value(default))),
            None if row.list => out.push_str(&format!("# {} = [\"…\", \"…\"]\n", row.name)),
            None => out.push_str(&format!("# {} = …\n", row.name)),
        }
    }
    out
}

/// A default as TOML: numbers and booleans bare, everything else a string.
#[cfg(test)]
fn toml_value(default: &str) -> String {
    if default.parse::<f64>().is_ok() || default == "true" || default == "false" {
        default.to_owned()
    } else {
        format!("\"{default}\"")
    }
}

/// The command line: the settings layer and where to find the TOML file.
#[derive(Parser, Debug, Default)]
#[command(name = "megallm-gateway", version, about, after_help = ENV_ONLY_HELP)]
pub struct Cli {
    /// TOML file with any of the settings below (keys named like the flags, with underscores).
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub layer: Layer,
}

/// A list given as `a,b,c` in the environment or as an array in the TOML file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    fn from_env(name: &str) -> Option<CommaList> {
        std::env::var(name).ok().map(|v| CommaList::split(&v))
    }

    fn split(text: &str) -> CommaList {
        CommaList(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

impl<'de> Deserialize<'de> for CommaList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Text(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::List(items) => CommaList(items),
            Raw::Text(text) => CommaList::split(&text),
        })
    }
}

/// A TOML value that is one item or an array of them.
fn one_or_many<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(Some(match Raw::<T>::deserialize(d)? {
        Raw::One(item) => vec![item],
        Raw::Many(items) => items,
    }))
}

fn parse_default<T: FromStr>(name: &str, literal: &str) -> T {
    match literal.parse() {
        Ok(v) => v,
        // The literals are compiled in and checked by a unit test: a bug, not input.
        Err(_) => panic!("the default of {name} ({literal}) does not parse"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_default_parses_and_the_command_line_is_well_formed() {
        let d = Layer::defaults();
        assert_eq!(d.listen, Some(vec!["127.0.0.1:8000".parse().unwrap()]));
        assert_eq!(d.passthrough_path, None);
        assert!(d.keys_file.is_none());
        Cli::command().debug_assert();
        assert!(Layer::names().contains(&"client_idle_timeout"));
    }

    #[test]
    fn help_shows_the_real_defaults() {
        let help = Cli::command().render_help().to_string();
        for needle in [
            "[default: 127.0.0.1:8000]",
            "[default: 3]",
            "[default: round-robin]",
        ] {
            assert!(
                help.contains(needle),
                "{needle} missing from --help:\n{help}"
            );
        }
    }

    #[test]
    fn help_names_the_environment_only_settings() {
        let help = Cli::command().render_help().to_string();
        for needle in [
            "MEGALLM_API_KEYS",
            "GATEWAY_AUTH_TOKENS",
            "GATEWAY_AUTH_TOKENS_FILE",
        ] {
            assert!(
                help.contains(needle),
                "{needle} missing from --help:\n{help}"
            );
        }
    }

    #[test]
    fn the_example_file_is_the_table() {
        let expected = example_toml();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml");
        if std::env::var_os("UPDATE_EXAMPLE").is_some() {
            std::fs::write(path, &expected).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert!(
            committed == expected,
            "gateway.example.toml is out of date with the settings table: run UPDATE_EXAMPLE=1 cargo test --lib the_example_file"
        );
        for name in Layer::names() {
            assert!(
                committed.contains(&format!("\n{name} = "))
                    || committed.contains(&format!("\n# {name} = ")),
                "{name} is not in gateway.example.toml"
            );
        }
    }

    #[test]
    fn cors_origins_repeat_and_split_on_commas() {
        let cli = Cli::try_parse_from([
            "megallm-gateway",
            "--cors-origin",
            "https://a.example",
            "--cors-origin",
            "https://b.example,https://c.example",
        ])
        .unwrap();
        assert_eq!(
            cli.layer.cors_origin.unwrap(),
            [
                "https://a.example",
                "https://b.example",
                "https://c.example"
            ]
        );
        let file: Layer = toml::from_str(r#"cors_origin = ["https://d.example"]"#).unwrap();
        assert_eq!(file.cors_origin.unwrap(), ["https://d.example"]);
    }

    #[test]
    fn listen_and_passthrough_paths_repeat() {
        let cli = Cli::try_parse_from([
            "megallm-gateway",
            "--listen",
            "127.0.0.1:8000",
            "--listen",
            "[::]:8001",
            "--passthrough-path",
            "/v1/audio/speech",
            "--passthrough-path",
            "/v1/rerank",
        ])
        .unwrap();
        let listen = cli.layer.listen.unwrap();
        assert_eq!(listen.len(), 2);
        assert_eq!(listen[1].to_string(), "[::]:8001");
        assert_eq!(
            cli.layer.passthrough_path.unwrap(),
            ["/v1/audio/speech", "/v1/rerank"]
        );
        let file: Layer =
            toml::from_str("listen = \"127.0.0.1:1\"\npassthrough_path = [\"/v1/a\"]").unwrap();
        assert_eq!(file.listen.unwrap().len(), 1);
        assert_eq!(file.passthrough_path.unwrap(), ["/v1/a"]);
    }

    #[test]
    fn a_bare_demo_flag_is_true() {
        let cli = Cli::try_parse_from(["megallm-gateway", "--demo"]).unwrap();
        assert_eq!(cli.layer.demo, Some(true));
        let cli = Cli::try_parse_from(["megallm-gateway", "--demo", "false"]).unwrap();
        assert_eq!(cli.layer.demo, Some(false));
    }
}
