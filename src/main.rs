//! The `megallm-gateway` binary: settings, logging, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use megallm_gateway::{telemetry, Gateway, Settings};

/// mimalloc instead of glibc's malloc: the gateway allocates many small, short-lived buffers
/// across worker threads, where glibc's arena locks showed up as a fifth of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("megallm-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(settings.log_format, settings.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("megallm-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let gateway = match Gateway::start(settings).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("megallm-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    gateway.shutdown().await;
    // The exporter's last batch goes out on a blocking thread (its shutdown waits for it).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
