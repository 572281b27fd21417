//! gRPC door with a client nobody here wrote: Python grpcio, with stubs generated from
//! `proto/megallm/v1/chat.proto` at test time, against a real gateway in demo mode
//! (`tests/python/grpc_client_check.py`). CI installs grpcio in `.venv` and sets
//! `MEGALLM_TEST_PYTHON`; where neither is
//! there, the test says so and passes only outside CI.

use std::path::PathBuf;
use std::process::Command;

use megallm_gateway::{Gateway, Settings};

/// The Python that has grpcio, grpcio-tools and grpcio-health-checking, or `None`.
fn python() -> Option<PathBuf> {
    let explicit = std::env::var_os("MEGALLM_TEST_PYTHON").map(PathBuf::from);
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let found = explicit
        .or_else(|| venv.exists().then_some(venv))
        .filter(|python| {
            Command::new(python)
                .args(["-c", "import grpc, grpc_tools, grpc_health"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide Python with grpcio, grpcio-tools, grpcio-health-checking (MEGALLM_TEST_PYTHON)"
        );
        eprintln!("skipping: no Python with grpcio (run .ci/run once to create .venv)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_talks_to_the_gateway() {
    let Some(python) = python() else { return };
    let settings = Settings {
        demo: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
    let gateway = Gateway::start(settings).await.expect("demo gateway starts");
    let addr = gateway.local_addr().to_string();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_client_check.py");
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(&script).arg(&addr).output())
            .await
            .unwrap()
            .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "grpc_client_check.py failed:\n{stdout}\n{stderr}"
    );
    gateway.shutdown().await;
}
