use super::*;

#[test]
fn a_daily_reset_time_is_the_next_one() {
    let t: UtcTime = "01:30".parse().unwrap();
    let midnight = 1_700_006_400; // a multiple of 86 400: 00:00 UTC
    assert_eq!(t.next_after(midnight), Duration::from_secs(5400));
    assert_eq!(
        t.next_after(midnight + 5400),
        Duration::from_secs(86_400),
        "the same minute waits a day"
    );
    assert_eq!(
        t.next_after(midnight + 7200),
        Duration::from_secs(86_400 - 1800)
    );
    for bad in ["24:00", "7", "12:60", "ab:cd"] {
        assert!(bad.parse::<UtcTime>().is_err(), "{bad}");
    }
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
        layer: Layer {
            default_model: Some("from-flag".into()),
            ..Layer::default()
        },
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
    let err = Settings::from_cli(cli).unwrap_err().to_string();
    assert!(err.contains("colour") && err.contains("line 1"), "{err}");
}

#[test]
fn every_table_row_is_a_toml_key() {
    let dir = std::env::temp_dir().join(format!("gwcfg-all-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.toml");
    std::fs::write(
        &path,
        "client_idle_timeout = \"3s\"\nmax_connections = 7\nmetrics_token = \"m\"\n\
         redis = \"redis://127.0.0.1:1/0\"\nredis_prefix = \"gw-a\"\n",
    )
    .unwrap();
    let s = Settings::from_cli(Cli {
        config: Some(path),
        ..Cli::default()
    })
    .unwrap();
    assert_eq!(s.client.idle_timeout, Duration::from_secs(3));
    assert_eq!(s.client.max_connections, Some(7));
    assert!(s.metrics_token.is_some_and(|t| t.matches(b"m")));
    assert_eq!(
        s.redis.as_ref().map(Secret::expose),
        Some("redis://127.0.0.1:1/0")
    );
    assert_eq!(s.redis_prefix, "gw-a");
    assert_eq!(Settings::default().redis_prefix, "megallm-gateway");
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    let cli = Cli {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml").into()),
        ..Cli::default()
    };
    let from_example = Settings::from_cli(cli).unwrap();
    assert_eq!(
        format!("{from_example:?}"),
        format!("{:?}", Settings::default())
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = Settings::default();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(s.upstream, "https://ai.megallm.io/v1");
    assert_eq!(s.default_model, "openai-gpt-oss-120b");
    assert_eq!(s.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(s.timeouts.total, Duration::from_secs(600));
    assert_eq!(s.scheduler.probe_interval, Duration::from_secs(600));
    assert_eq!(s.client.header_timeout, Duration::from_secs(10));
    assert!(!s.demo);
}

#[test]
fn no_keys_says_how_to_give_them() {
    let err = Settings::default().validate().unwrap_err().to_string();
    assert!(err.contains("MEGALLM_API_KEYS") && err.contains("--demo"));
}

#[test]
fn cors_origins_must_be_origins() {
    let with = |origins: &[&str]| Settings {
        demo: true,
        cors_origins: origins.iter().map(|o| o.to_string()).collect(),
        ..Settings::default()
    };
    for good in [
        &["https://app.example.com"][..],
        &["http://localhost:3000", "http://[::1]:8080"],
        &["*"],
        &[],
    ] {
        assert!(with(good).validate().is_ok(), "{good:?}");
    }
    for bad in [
        "https://app.example.com/",
        "app.example.com",
        "https://",
        "ftp://x",
    ] {
        let err = with(&[bad]).validate().unwrap_err().to_string();
        assert!(err.contains("--cors-origin") && err.contains(bad), "{err}");
    }
}
