//! Clients nobody here wrote, run as users run them against a real gateway in demo mode: the
//! official OpenAI Python SDK on the HTTP door, and Python grpcio (stubs generated from
//! `proto/megallm/v1/chat.proto` at test time) on the gRPC door. CI installs them in `.venv`
//! and sets `MEGALLM_TEST_PYTHON`; where neither is there, the tests say so and pass only
//! outside CI.

use std::path::PathBuf;
use std::process::Command;

use megallm_gateway::{Gateway, Settings};

/// The Python that has the clients, or `None` (then the test is skipped outside CI only).
fn python() -> Option<PathBuf> {
    let explicit = std::env::var_os("MEGALLM_TEST_PYTHON").map(PathBuf::from);
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let found = explicit.or_else(|| venv.exists().then_some(venv));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide the Python clients (MEGALLM_TEST_PYTHON)"
        );
        eprintln!("skipping: no Python with the client SDKs (run .ci/run once to create .venv)");
    }
    found
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
async fn openai_python_sdk_talks_to_the_gateway() {
    let Some(python) = python() else { return };
    let gateway = demo_gateway().await;
    let base = format!("http://{}/v1", gateway.local_addr());
    tokio::task::spawn_blocking(move || run_script(&python, "openai_check.py", &base))
        .await
        .unwrap();
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_talks_to_the_gateway() {
    let Some(python) = python() else { return };
    let gateway = demo_gateway().await;
    let addr = gateway.local_addr().to_string();
    tokio::task::spawn_blocking(move || run_script(&python, "grpc_client_check.py", &addr))
        .await
        .unwrap();
    gateway.shutdown().await;
}
