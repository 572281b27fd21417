//! The binary as a user runs it: exit status and message without keys, settings from flags,
//! environment and TOML, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_megallm-gateway");

fn clean_command() -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "MEGALLM_API_KEYS",
        "MEGALLM_KEYS_FILE",
        "MEGALLM_BASE_URL",
        "GATEWAY_DEMO",
        "GATEWAY_CONFIG",
        "GATEWAY_LISTEN",
        "GATEWAY_DEFAULT_MODEL",
        "GATEWAY_MAX_ATTEMPTS",
        "GATEWAY_AUTH_TOKENS",
        "GATEWAY_ADMIN_TOKEN",
        "GATEWAY_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn no_keys_exits_at_once_saying_how_to_give_them() {
    let start = Instant::now();
    let out = clean_command().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MEGALLM_API_KEYS") && stderr.contains("--keys-file"),
        "{stderr}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_settings_are_refused_with_a_sentence() {
    let out = clean_command()
        .args(["--max-attempts", "0"])
        .env("MEGALLM_API_KEYS", "k1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-attempts"));

    let dir = std::env::temp_dir().join(format!("gw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nnot_a_setting = 1\n").unwrap();
    let out = clean_command()
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_a_setting"));
}

/// A `--passthrough-path` naming a path the gateway serves itself (once, `/health` and the
/// gRPC methods slipped through, half shadowing the route) is refused before it listens.
#[test]
fn a_passthrough_path_the_gateway_serves_is_refused() {
    for path in [
        "/health",
        "/docs",
        "/v1/models/x",
        "/megallm.v1.ChatService/ListModels",
    ] {
        let out = clean_command()
            .args(["--passthrough-path", path])
            .env("MEGALLM_API_KEYS", "k1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{path}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(path) && stderr.contains("serves itself"),
            "{stderr}"
        );
    }
}

/// Starts the binary, waits for its "listening" line, returns the child and its address.
fn spawn(cmd: &mut Command) -> (std::process::Child, String) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .env("GATEWAY_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("gateway printed its address").unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        if json["message"] == "megallm-gateway listening" {
            break json["addr"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[test]
fn file_settings_apply_and_flags_win_then_sigterm_stops() {
    let dir = std::env::temp_dir().join(format!("gw-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\ndemo = true\ndefault_model = \"from-file\"\n",
    )
    .unwrap();
    let (mut child, addr) = spawn(
        clean_command()
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"]),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["model"], "from-file", "{json}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM: {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
