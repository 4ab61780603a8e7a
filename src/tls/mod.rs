//! TLS on both sides of the proxy, in process (rustls, rcgen): the interception CA and
//! the leaves it mints ([`ca`]), TLS to origins with their verification ([`client`]),
//! and the server side: the `--cert-file` listener and intercepted tunnels ([`server`]).
//!
//! The byte-level driving of a session lives below, in [`crate::conn::Stream`], so that
//! one exchange loop serves plain and TLS connections alike.

pub mod ca;
pub mod client;
pub mod server;

use std::sync::{Arc, OnceLock};

use crate::config::TlsConfig;

/// Installs ring as the process's rustls provider (as rcgen uses), once.
pub(crate) fn ensure_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first: that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Most leaves one process keeps in memory (each is a few KB).
const LEAF_CACHE: usize = 10_000;

/// What the workers share of TLS: read-only after start.
pub struct TlsContext {
    /// Client side towards origins: system roots or `--ca-file`, or no verification.
    /// Built on first use when it can only come from the system's roots (reading them
    /// takes milliseconds a proxy that never sees HTTPS need not spend).
    origins: OnceLock<Arc<rustls::ClientConfig>>,
    insecure: bool,
    /// Server side of the `--cert-file` listener.
    pub listener: Option<Arc<rustls::ServerConfig>>,
    /// The interception CA, when interception is on.
    pub ca: Option<Arc<ca::Ca>>,
}

impl TlsContext {
    /// Reads and checks every file the TLS flags name.
    ///
    /// # Errors
    /// A message naming the flag, the file and what is wrong with it.
    pub fn new(config: &TlsConfig) -> Result<TlsContext, String> {
        ensure_provider();
        let origins = OnceLock::new();
        if config.ca_file.is_some() || config.insecure || config.ca.is_some() {
            let _ = origins.set(client::origin_config(
                config.ca_file.as_deref(),
                config.insecure,
            )?);
        }
        let listener = match &config.listener {
            Some((cert, key)) => Some(server::listener_config(cert, key)?),
            None => None,
        };
        let ca = match &config.ca {
            Some(paths) => Some(Arc::new(ca::Ca::load(
                ca::CaFiles {
                    key: &paths.key,
                    cert: &paths.cert,
                    signing_key: &paths.signing_key,
                },
                Some(config.ca_cert_dir.clone()),
                LEAF_CACHE,
            )?)),
            None => None,
        };
        Ok(TlsContext {
            origins,
            insecure: config.insecure,
            listener,
            ca,
        })
    }

    /// Nothing configured: plain listener, no interception, origins verified against
    /// the system's roots (read when first needed).
    pub fn plain() -> TlsContext {
        TlsContext {
            origins: OnceLock::new(),
            insecure: false,
            listener: None,
            ca: None,
        }
    }

    /// The client configuration for origins.
    pub fn origins(&self) -> Arc<rustls::ClientConfig> {
        ensure_provider();
        let config = self.origins.get_or_init(|| {
            client::origin_config(None, self.insecure).unwrap_or_else(|e| {
                tracing::error!("TLS to origins: {e}");
                Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            })
        });
        Arc::clone(config)
    }
}
