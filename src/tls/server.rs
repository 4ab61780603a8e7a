//! The server side of TLS: the `--cert-file` listener, and the proxy's end of an
//! intercepted tunnel (reading the client's ClientHello, a per-host configuration with
//! the minted leaf, the handshake, and what a failed one means).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    Accepted, Acceptor, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::conn::io::{read_some, IoFail};
use crate::conn::stream::rustls_error;
use crate::conn::Stream;
use crate::error::{ErrorKind, ProxyError};

use super::ca::Ca;

/// The first byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;
/// The most a ClientHello may take (with a post-quantum key share it is ~1.7 KB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The `--cert-file`/`--key-file` listener's configuration (ALPN `http/1.1`).
///
/// # Errors
/// A message naming the file and the problem.
pub fn listener_config(cert: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--cert-file {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--cert-file {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("--key-file {}: {e}", key_path.display()))?;
    super::ensure_provider();
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "--key-file {} is not the key of --cert-file {}",
                key_path.display(),
                cert.display()
            ),
            e => format!("--cert-file/--key-file: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A configuration that presents one leaf (an intercepted host's), resuming sessions
/// from `sessions` (rustls resumes a session only for the name it was made for).
fn leaf_config(
    leaf: Arc<CertifiedKey>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Arc<ServerConfig> {
    super::ensure_provider();
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneLeaf(leaf)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = Arc::clone(sessions);
    Arc::new(config)
}

#[derive(Debug)]
struct OneLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for OneLeaf {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// One worker's server configurations for intercepted hosts, each with its leaf, and
/// one session cache for all of them (so a client's next connection can resume; one
/// cache per configuration would cost tens of KB per host). Bounded; never shared
/// across threads. Leaves themselves come from the process-wide [`Ca`].
pub struct LeafConfigs {
    configs: RefCell<HashMap<Box<str>, Arc<ServerConfig>>>,
    sessions: Arc<dyn StoresServerSessions>,
    capacity: usize,
}

/// Sessions one worker keeps for resumption by intercepted clients.
const SESSIONS: usize = 4096;

impl LeafConfigs {
    /// An empty cache of at most `capacity` hosts.
    pub fn new(capacity: usize) -> Self {
        LeafConfigs {
            configs: RefCell::new(HashMap::new()),
            sessions: ServerSessionMemoryCache::new(SESSIONS),
            capacity,
        }
    }

    /// The configuration for `host`, minting its leaf if the CA has none yet.
    /// `origin` is the origin's certificate, whose subject a new leaf copies; without it
    /// (the origin failed) a new leaf is not written to `--ca-cert-dir`.
    ///
    /// # Errors
    /// `tls_client_handshake_error` for a name no certificate can carry, else
    /// `proxy_internal_error` when minting fails.
    pub fn get(
        &self,
        ca: &Ca,
        host: &str,
        origin: Option<&CertificateDer<'_>>,
    ) -> Result<Arc<ServerConfig>, ProxyError> {
        if let Some(config) = self.configs.borrow().get(host) {
            return Ok(Arc::clone(config));
        }
        let leaf = ca.leaf_kept(host, origin, origin.is_some()).map_err(|e| {
            // A name no certificate can carry (`127.1`) is the client's doing.
            let kind = if Ca::can_name(host) {
                ErrorKind::ProxyInternalError
            } else {
                ErrorKind::TlsClientHandshakeError
            };
            ProxyError::new(kind, format!("minting a certificate for {host}: {e}"))
        })?;
        let config = leaf_config(leaf, &self.sessions);
        let mut configs = self.configs.borrow_mut();
        if configs.len() >= self.capacity {
            // Crude but bounded: start over (the leaves stay cached in the CA).
            configs.clear();
        }
        configs.insert(host.into(), Arc::clone(&config));
        Ok(config)
    }
}

/// What came after a CONNECT's 200.
pub enum Hello {
    /// A TLS ClientHello (its bytes stay in the client's buffer).
    Tls(Box<Accepted>),
    /// Something else, or nothing before EOF: relay it as an opaque tunnel.
    NotTls,
    /// A TLS handshake rustls cannot accept (a server name such as `host:port`, only
    /// TLS 1.0/1.1, a malformed or oversized ClientHello): it cannot be intercepted.
    /// The bytes stay in the client's buffer; the caller relays them or refuses.
    Unreadable(String),
}

/// Reads the client's first bytes into `buf` and, if they start a TLS handshake, the
/// whole ClientHello. The bytes stay in `buf`, so that a tunnel that is not
/// intercepted after all relays them unchanged. If `upstream` speaks first (SMTP, FTP,
/// SSH servers greet before the client says anything), this is no TLS client: the
/// tunnel is opaque, and the greeting is left in `upstream` for the relay.
///
/// # Errors
/// The client's read failed or timed out.
pub async fn read_client_hello(
    stream: &Stream,
    buf: &mut BytesMut,
    upstream: &Stream,
    idle: Duration,
) -> Result<Hello, ProxyError> {
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    loop {
        if buf.len() > fed {
            if buf[0] != HANDSHAKE_RECORD {
                return Ok(Hello::NotTls);
            }
            while fed < buf.len() {
                let mut rest = &buf[fed..];
                match acceptor.read_tls(&mut rest) {
                    Ok(n) if n > 0 => fed += n,
                    // Its buffer is full (a ClientHello too large to be one) or it failed.
                    _ => return Ok(Hello::Unreadable("an oversized ClientHello".into())),
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => return Ok(Hello::Tls(Box::new(accepted))),
                Ok(None) => {}
                // Not a ClientHello rustls can read: the origin may still understand it.
                Err((e, _)) => return Ok(Hello::Unreadable(e.to_string())),
            }
            if buf.len() > MAX_CLIENT_HELLO {
                return Ok(Hello::Unreadable("an oversized ClientHello".into()));
            }
        }
        let read = if buf.is_empty() {
            let mut first = [0u8; 1];
            tokio::select! {
                biased;
                read = read_some(stream, buf, 16 * 1024, idle) => read,
                // A peek waits for real bytes (or EOF), not a stale readiness report.
                _ = upstream.tcp().peek(&mut first) => {
                    tracing::debug!("the origin spoke first: an opaque tunnel");
                    return Ok(Hello::NotTls);
                }
            }
        } else {
            read_some(stream, buf, 16 * 1024, idle).await
        };
        match read {
            Ok(0) | Err(IoFail::Closed | IoFail::ClientGone) => return Ok(Hello::NotTls),
            Ok(_) => {}
            Err(IoFail::Timeout) => {
                return Err(ProxyError::new(
                    ErrorKind::ClientTimeout,
                    "no bytes after CONNECT",
                ))
            }
            Err(IoFail::Io(e)) => {
                return Err(
                    ProxyError::new(ErrorKind::ClientClosed, "reading after CONNECT")
                        .with_source(e),
                )
            }
        }
    }
}

/// True when `buf` cannot be the start of a TLS connection (a plaintext client on a TLS
/// port).
pub fn is_not_tls(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| *b != HANDSHAKE_RECORD)
}

/// Runs the client's handshake over `stream` (whose session already holds the
/// ClientHello, or will read it), bounded by `idle` per wait.
///
/// # Errors
/// `tls_client_rejected_certificate` when the client refused our certificate (the
/// interception CA is not installed there), `tls_client_handshake_error` otherwise.
pub async fn accept(stream: Stream, idle: Duration) -> Result<Stream, ProxyError> {
    match stream.handshake(idle).await {
        Ok(()) => Ok(stream),
        Err(e) => Err(client_handshake_error(&e).with_source(e)),
    }
}

/// Classifies a failed client handshake.
fn client_handshake_error(err: &std::io::Error) -> ProxyError {
    use rustls::AlertDescription as A;
    match rustls_error(err) {
        Some(rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::AccessDenied),
        )) => ProxyError::new(
            ErrorKind::TlsClientRejectedCertificate,
            format!(
                "the client refused the proxy's certificate ({alert:?}): is the interception \
                 CA installed there?"
            ),
        ),
        Some(other) => ProxyError::new(
            ErrorKind::TlsClientHandshakeError,
            format!("client TLS handshake: {other}"),
        ),
        None => ProxyError::new(
            ErrorKind::TlsClientHandshakeError,
            format!("client TLS handshake: {err}"),
        ),
    }
}
