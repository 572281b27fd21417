//! The running gateway: [`Gateway`] (start it, find its address, stop it). Start builds the
//! [`Core`] both doors share and hands it to the server; key reloads by file watch and SIGHUP
//! (and the admin API's) all funnel into [`Core::reload_keys`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalogue::Catalogue;
use crate::config::{Settings, SettingsError};
use crate::core::Core;
use crate::keys::KeyPool;
use crate::upstream::{probe, ClientSetupError, Dispatcher, Models, UpstreamClient};

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("the keys file lists no key: add one key a line, or set MEGALLM_API_KEYS")]
    NoKeys,
    #[error(transparent)]
    Client(#[from] ClientSetupError),
    /// The listener, the upstream client or the keys-file watcher could not be set up.
    #[error("{0}")]
    Setup(String),
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError::Setup(message)
    }
}

/// After the shutdown grace, open streams are told to end (an error event, a gRPC status);
/// this is how long their last words get to reach the clients before connections are closed.
const FLUSH_AFTER_GRACE: Duration = Duration::from_secs(2);

/// A started gateway.
pub struct Gateway {
    addr: SocketAddr,
    /// Every address served, `addr` first.
    addrs: Vec<SocketAddr>,
    /// Cancelled on shutdown: background tasks end, the server stops accepting.
    stop: CancellationToken,
    /// Cancelled once the grace is over: open streams end with `ShuttingDown`.
    drain: CancellationToken,
    /// Cancelled last: the server closes the connections still open.
    kill: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    grace: Duration,
    /// Flushed last, once no request is left to record.
    usage: Arc<crate::usage::Recorder>,
    _watchers: Vec<notify::RecommendedWatcher>,
}

impl Gateway {
    /// Validates the settings, builds the core, binds the listener and starts serving. Returns
    /// once the port accepts connections.
    pub async fn start(mut settings: Settings) -> Result<Gateway, StartError> {
        settings.validate()?;
        let stop = CancellationToken::new();
        let drain = CancellationToken::new();
        if settings.demo {
            let demo = crate::demo::start(stop.clone()).await?;
            settings.upstream = demo.upstream;
            settings.keys = demo.keys;
            settings.keys_file = None;
        }
        let specs = settings.read_keys()?;
        if specs.is_empty() {
            return Err(StartError::NoKeys);
        }
        let auth_tokens = settings.read_auth_tokens()?;
        let shared_limits = match &settings.redis {
            Some(url) => Some(crate::clients::shared::SharedLimits::new(
                url,
                &settings.redis_prefix,
            )?),
            None => None,
        };
        let store = crate::keys::store::build(&settings).await?;
        let pool = KeyPool::with_store(&specs, settings.scheduler.clone(), store);
        // A concurrency place in Redis outlives a replica that died holding it by this much.
        let lease_ttl = settings.timeouts.total + Duration::from_secs(60);
        // The key store counts the replicas alive; the client limits share by the same count.
        let replicas = {
            let pool = Arc::downgrade(&pool);
            Box::new(move || {
                pool.upgrade()
                    .and_then(|p| p.store_status())
                    .map_or(1, |s| s.replicas)
            })
        };
        let clients = Arc::new(crate::clients::Clients::new(
            auth_tokens,
            shared_limits.clone(),
            lease_ttl,
            replicas,
        ));
        let usage = Arc::new(crate::usage::Recorder::new(
            settings.usage_log.clone(),
            shared_limits,
        ));
        let usage_log = usage.clone();
        let client = UpstreamClient::new(&settings)?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let dispatcher = Dispatcher::new(
            pool.clone(),
            client.clone(),
            settings.max_attempts,
            settings.timeouts.clone(),
            &settings.scheduler,
        )
        .with_shutdown(drain.clone())
        .with_metrics(metrics.clone());
        let catalogue = Arc::new(
            Catalogue::load(settings.models_file.as_deref())
                .map_err(|e| StartError::Setup(e.to_string()))?,
        );
        let models = Models::new(
            client.clone(),
            pool.clone(),
            catalogue.clone(),
            settings.models_cache_ttl,
            settings.timeouts.first_byte,
        );
        probe::spawn(
            pool.clone(),
            client,
            settings.timeouts.first_byte,
            stop.clone(),
        );
        let grace = settings.shutdown_grace;
        let keys_file = settings.keys_file.clone();
        let tokens_file = settings.auth_tokens_file.clone();
        let core = Arc::new(Core::new(
            settings,
            crate::core::Parts {
                pool,
                dispatcher,
                models,
                catalogue,
                clients,
                usage,
                metrics,
            },
        ));
        let mut watchers = Vec::new();
        if let Some(path) = keys_file {
            let core = core.clone();
            watchers.push(watch_file(path, "keys file", stop.clone(), move || {
                let _ = core.reload_keys();
            })?);
        }
        if let Some(path) = tokens_file {
            let core = core.clone();
            watchers.push(watch_file(
                path,
                "auth tokens file",
                stop.clone(),
                move || {
                    let _ = core.reload_tokens();
                },
            )?);
        }
        reload_on_sighup(core.clone(), stop.clone());
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for at in std::iter::once(core.settings.listen).chain(core.settings.extra_listen.clone()) {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| format!("cannot listen on {at}: {e}"))?;
            addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
            listeners.push(listener);
        }
        let addr = addrs[0];
        let open_files = crate::server::raise_nofile_limit();
        let max_connections = core
            .settings
            .client
            .max_connections
            .unwrap_or_else(|| crate::server::default_max_connections(open_files));
        tracing::info!(
            open_files_limit = open_files,
            max_connections,
            "client connection cap"
        );
        let app = crate::server::app(core.clone());
        let shutdown = crate::server::Shutdown {
            stop: stop.clone(),
            drain: drain.clone(),
            kill: CancellationToken::new(),
        };
        let kill = shutdown.kill.clone();
        let server = tokio::spawn(crate::server::serve(
            listeners,
            app,
            core.settings.client.clone(),
            max_connections,
            shutdown,
        ));
        let all = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(%addr, listen = %all, upstream = %core.settings.upstream, keys = specs.len(), demo = core.settings.demo, "megallm-gateway listening");
        if core.client_tokens_required() && core.settings.metrics_token.is_none() {
            tracing::warn!("clients need a gateway token but /metrics is open to anyone who reaches this address; set --metrics-token to close it");
        }
        Ok(Gateway {
            addr,
            addrs,
            stop,
            drain,
            kill,
            server,
            grace,
            usage: usage_log,
            _watchers: watchers,
        })
    }

    /// The address the gateway listens on (the port chosen, if the settings said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every address the gateway listens on (`--listen` given more than once), the first one
    /// [`Gateway::local_addr`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, then ends the
    /// streams still open with an error of their door (HTTP error event, gRPC UNAVAILABLE
    /// "shutting down"), gives those a moment to reach the clients, and closes what is left.
    /// The usage log is flushed last, with every request's record in it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let mut server = self.server;
        if tokio::time::timeout(self.grace, &mut server).await.is_err() {
            tracing::warn!(grace = ?self.grace, "in-flight requests outlived the shutdown grace period; ending them");
            self.drain.cancel();
            if tokio::time::timeout(FLUSH_AFTER_GRACE, &mut server)
                .await
                .is_err()
            {
                self.kill.cancel();
                let _ = server.await;
            }
        }
        self.usage.flush().await;
    }
}

/// Watches a file (through its directory, so editors that replace the file are seen) and
/// calls `reload` shortly after it changes: the keys file and the auth tokens file.
fn watch_file(
    path: PathBuf,
    what: &'static str,
    stop: CancellationToken,
    reload: impl Fn() + Send + 'static,
) -> Result<notify::RecommendedWatcher, String> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Only what changes the file's content or replaces it. Opening or reading the file
        // (the reload itself does) must not schedule another reload.
        if changes_content(&event.kind)
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch the {what}: {e}"))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Editors write in steps; let the burst settle before reading.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            reload();
        }
    });
    Ok(watcher)
}

/// Writes, creations and renames (editors that save by replacing the file rename over it);
/// not opens, reads or metadata changes.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Create(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    }
}

fn reload_on_sighup(core: Arc<Core>, stop: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading keys and client tokens, reopening the usage log");
            let _ = core.reload_keys();
            if core.settings.auth_tokens_file.is_some() {
                let _ = core.reload_tokens();
            }
            core.reopen_usage_log();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_changes_reload() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RenameMode,
        };
        use notify::EventKind;
        let reloads = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ];
        let ignored = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ];
        assert!(reloads.iter().all(changes_content));
        assert!(!ignored.iter().any(changes_content));
    }
}
