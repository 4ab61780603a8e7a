//! Starting and stopping the proxy: listeners, worker threads, the embedding handle.
//!
//! `start` binds every listener before any worker runs, so configuration and bind errors
//! surface before the proxy accepts anything. Shutdown is a `watch` flag: workers stop
//! accepting, idle connections close, in-flight exchanges finish (each answered with
//! `Connection: close`), bounded by the grace period.

pub mod listener;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::config::Config;
use crate::error::{ErrorKind, ProxyError, Result};
use crate::plugin::PluginFactory;

/// A running proxy. Dropping it signals shutdown without waiting.
pub struct ProxyHandle {
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    port_file: Option<PathBuf>,
}

/// Binds the listeners, starts the workers and returns once they run.
///
/// # Errors
/// `proxy_configuration_error` when a listener cannot be bound, the port file cannot be
/// written, or a worker cannot start.
pub fn start(config: Config) -> Result<ProxyHandle> {
    start_with(config, Vec::new())
}

/// Like [`start`], with extra plugins (e.g. your own Rust plugins) placed after the
/// built-in ones that the configuration selects.
///
/// # Errors
/// As [`start`]; also `proxy_configuration_error` for an unknown `--plugins` name.
pub fn start_with(config: Config, extra: Vec<Arc<dyn PluginFactory>>) -> Result<ProxyHandle> {
    let config_err = |context: String| ProxyError::new(ErrorKind::ProxyConfigurationError, context);
    let mut factories = crate::plugin::registry::factories(&config).map_err(config_err)?;
    factories.extend(extra);
    start_with_factories(config, factories)
}

/// Like [`start`], with exactly these plugin factories, in chain order (the ones the
/// configuration selects are not added): for a caller that has built them already,
/// e.g. with `plugin::registry::factories`, so that they are built once.
///
/// # Errors
/// As [`start`].
pub fn start_with_factories(
    config: Config,
    factories: Vec<Arc<dyn PluginFactory>>,
) -> Result<ProxyHandle> {
    let tls = crate::tls::TlsContext::new(&config.tls)
        .map_err(|e| ProxyError::new(ErrorKind::ProxyConfigurationError, e))?;
    start_prepared(config, factories, tls)
}

/// Like [`start_with_factories`], with the TLS context already built from
/// `config.tls` (the binary builds it first, to report a bad file as a usage error).
///
/// # Errors
/// As [`start`].
pub fn start_prepared(
    config: Config,
    factories: Vec<Arc<dyn PluginFactory>>,
    tls: crate::tls::TlsContext,
) -> Result<ProxyHandle> {
    let config_err = |context: String| ProxyError::new(ErrorKind::ProxyConfigurationError, context);
    let tls = Arc::new(tls);
    let factories: Arc<[Arc<dyn PluginFactory>]> = factories.into();
    if config.listen.is_empty() {
        return Err(config_err("no address to listen on".into()));
    }
    config.check_durations().map_err(config_err)?;
    let workers = config.num_workers.max(1);
    let (per_worker, bound) =
        listener::bind_all(&config.listen, workers, config.backlog, config.reuse_port)
            .map_err(|e| config_err(e.to_string()))?;
    if let Some(path) = &config.port_file {
        let mut ports: Vec<u16> = Vec::new();
        for addr in &bound {
            if !ports.contains(&addr.port()) {
                ports.push(addr.port());
            }
        }
        let text: String = ports.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(path, text)
            .map_err(|e| config_err(format!("cannot write --port-file {}: {e}", path.display())))?;
    }
    let port_file = config.port_file.clone();
    let config = Arc::new(config);
    let listen_addrs: Arc<[SocketAddr]> = bound.clone().into();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handle = ProxyHandle {
        addrs: bound,
        shutdown,
        threads: Vec::new(),
        port_file,
    };
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let config = Arc::clone(&config);
        let listen_addrs = Arc::clone(&listen_addrs);
        let factories = Arc::clone(&factories);
        let tls = Arc::clone(&tls);
        let shutdown_rx = shutdown_rx.clone();
        let ready_tx = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-worker-{id}"))
            .spawn(move || {
                worker::run(
                    id,
                    config,
                    listen_addrs,
                    factories,
                    tls,
                    listeners,
                    shutdown_rx,
                    ready_tx,
                )
            })
            .map_err(|e| config_err(format!("cannot start worker thread: {e}")))?;
        handle.threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(config_err(format!("worker failed to start: {e}"))),
            Err(_) => return Err(config_err("worker exited during start-up".into())),
        }
    }
    tracing::debug!(addrs = ?handle.addrs, workers, "listening");
    Ok(handle)
}

impl ProxyHandle {
    /// The first bound address (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every bound address.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Begins a graceful stop: stop accepting, let in-flight exchanges finish.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Blocks until every worker has exited, then removes the port file.
    pub fn wait(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.remove_port_file();
    }

    /// `shutdown` then `wait`.
    pub fn stop(self) {
        self.shutdown();
        self.wait();
    }

    fn remove_port_file(&mut self) {
        if let Some(path) = self.port_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ProxyHandle {
    /// Signals the workers to stop (without waiting for them) and removes the port
    /// file: nobody holds the proxy any more, and a start that failed halfway leaves
    /// nothing behind.
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.remove_port_file();
    }
}
