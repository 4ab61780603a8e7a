//! TLS helpers: a throwaway origin PKI (rcgen), TLS origins built on [`Origin`] (std
//! threads, rustls's blocking `StreamOwned`), the proxy's interception CA (made with
//! `proxy::tls::ca::generate`), and clients that CONNECT through the proxy and then
//! handshake, keeping the certificate chain they were shown.
//!
//! Like the rest of `support`, nothing sleeps: listeners are bound before they are
//! returned, and every read is bounded by [`WAIT`].

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test fails"
)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::{temp_path, Origin, OriginConn, RecordedRequest, Reply, Wire, WAIT};

/// The organization in the origin leaf's subject (a minted leaf copies it).
pub const ORIGIN_ORG: &str = "Origin Test Org";

/// The ring provider, for every configuration made here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === origin PKI ===

/// A throwaway CA and a leaf for `localhost` and `127.0.0.1` (subject CN=localhost,
/// O=[`ORIGIN_ORG`]), also written as PEM files under `dir`.
pub struct OriginPki {
    /// Where the files are.
    pub dir: PathBuf,
    /// `ca.pem`: the origin CA certificate (for `--ca-file`, `--proxy-cacert`).
    pub ca_file: PathBuf,
    /// `leaf.pem`: the leaf then the CA (for `--cert-file`).
    pub chain_file: PathBuf,
    /// `leaf-key.pem`: the leaf's key, PKCS#8 (for `--key-file`).
    pub key_file: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
}

impl OriginPki {
    /// Makes a new CA and leaf.
    pub fn new() -> OriginPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "proxy tests origin CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params
            .distinguished_name
            .push(DnType::OrganizationName, ORIGIN_ORG);
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

        let dir = temp_path("origin-pki");
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        let chain_file = dir.join("leaf.pem");
        let key_file = dir.join("leaf-key.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&chain_file, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
        OriginPki {
            dir,
            ca_file,
            chain_file,
            key_file,
            ca_der: ca.der().clone(),
            leaf_der: leaf.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
        }
    }

    /// A server configuration presenting [leaf, CA], ALPN `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.leaf_der.clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The `--ca-file` flag pair for this CA.
    pub fn ca_file_args(&self) -> Vec<String> {
        vec!["--ca-file".into(), path_text(&self.ca_file)]
    }
}

impl Default for OriginPki {
    fn default() -> Self {
        OriginPki::new()
    }
}

/// A path as a flag value.
pub fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

// === the proxy's interception CA ===

/// An interception CA written by `proxy::tls::ca::generate`, plus a leaf cache directory.
pub struct ProxyCa {
    pub dir: PathBuf,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub signing_key: PathBuf,
    /// For `--ca-cert-dir` (not created: the proxy makes it).
    pub cert_dir: PathBuf,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl ProxyCa {
    /// Generates a new CA in a fresh directory.
    pub fn new() -> ProxyCa {
        let dir = temp_path("proxy-ca");
        let generated = proxy::tls::ca::generate(&dir).unwrap();
        let cert_pem = std::fs::read_to_string(&generated.cert).unwrap();
        let cert_der = pem_der(&cert_pem);
        ProxyCa {
            cert_dir: dir.join("leaves"),
            dir,
            key: generated.key,
            cert: generated.cert,
            signing_key: generated.signing_key,
            cert_pem,
            cert_der,
        }
    }

    /// The four flags that turn interception on (with the leaves kept in `cert_dir`,
    /// never in the user's home).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--ca-key-file".into(),
            path_text(&self.key),
            "--ca-cert-file".into(),
            path_text(&self.cert),
            "--ca-signing-key-file".into(),
            path_text(&self.signing_key),
            "--ca-cert-dir".into(),
            path_text(&self.cert_dir),
        ]
    }
}

impl Default for ProxyCa {
    fn default() -> Self {
        ProxyCa::new()
    }
}

/// The first certificate in PEM text.
pub fn pem_der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .into_owned()
}

/// Borrows owned flags as `&str`s for `spawn_proxy`.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

// === TLS over blocking sockets ===

/// Reads from a rustls stream, taking a close without close_notify for EOF (the framing
/// of what came before decides whether anything was cut).
fn tls_read(result: io::Result<usize>) -> io::Result<usize> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

/// The server side of a session over TCP; dropping it sends close_notify.
pub struct ServerIo(pub rustls::StreamOwned<ServerConnection, TcpStream>);

impl Read for ServerIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        tls_read(self.0.read(buf))
    }
}

impl Write for ServerIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ServerIo {
    fn drop(&mut self) {
        self.0.conn.send_close_notify();
        let _ = self.0.flush();
    }
}

/// The client side of a session over any blocking stream (TCP, or TLS for TLS inside
/// TLS); dropping it sends close_notify.
pub struct ClientIo<S: Read + Write>(pub rustls::StreamOwned<ClientConnection, S>);

impl<S: Read + Write> Read for ClientIo<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        tls_read(self.0.read(buf))
    }
}

impl<S: Read + Write> Write for ClientIo<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<S: Read + Write> Drop for ClientIo<S> {
    fn drop(&mut self) {
        self.0.conn.send_close_notify();
        let _ = self.0.flush();
    }
}

/// A client configuration trusting exactly `roots`, ALPN `http/1.1`.
pub fn client_config(roots: &[&CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A finished client handshake: the session, and the chain the server presented.
pub struct Handshaken<S: Read + Write> {
    pub io: ClientIo<S>,
    pub chain: Vec<CertificateDer<'static>>,
}

impl<S: Read + Write + Send + 'static> Handshaken<S> {
    /// The session as a [`Wire`] (the chain is dropped).
    pub fn into_wire(self) -> Wire {
        Wire::from_duplex(self.io)
    }
}

/// Runs a client handshake over `sock` for `name` (a DNS name sends it as SNI; an IP
/// address sends none), trusting `config`'s roots. Handshake errors are returned.
pub fn handshake<S: Read + Write>(
    sock: S,
    name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<Handshaken<S>> {
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let conn = ClientConnection::new(config, server_name).map_err(io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    let chain = stream
        .conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    Ok(Handshaken {
        io: ClientIo(stream),
        chain,
    })
}

/// A TCP connection to `addr` with [`WAIT`] timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream =
        TcpStream::connect_timeout(&addr, WAIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The proxy's exact CONNECT reply.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Sends `CONNECT authority` (plus `extra` header lines) over `sock` and asserts the
/// proxy's exact 200, reading nothing beyond it.
pub fn connect_over<S: Read + Write>(sock: &mut S, authority: &str, extra: &str) {
    sock.write_all(
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n").as_bytes(),
    )
    .unwrap();
    let mut reply = vec![0u8; ESTABLISHED.len()];
    sock.read_exact(&mut reply)
        .unwrap_or_else(|e| panic!("CONNECT {authority}: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(ESTABLISHED),
        "CONNECT {authority}"
    );
}

/// CONNECTs to `authority` through the proxy at `proxy`, then handshakes for `name`
/// trusting `roots`. The CONNECT must succeed; the handshake's result is returned.
pub fn try_tunnel(
    proxy: SocketAddr,
    authority: &str,
    name: &str,
    roots: &[&CertificateDer<'static>],
) -> io::Result<Handshaken<TcpStream>> {
    let mut sock = tcp(proxy);
    connect_over(&mut sock, authority, "");
    handshake(sock, name, client_config(roots))
}

/// Like [`try_tunnel`], panicking when the handshake fails.
pub fn tunnel(
    proxy: SocketAddr,
    authority: &str,
    name: &str,
    roots: &[&CertificateDer<'static>],
) -> Handshaken<TcpStream> {
    try_tunnel(proxy, authority, name, roots)
        .unwrap_or_else(|e| panic!("TLS through CONNECT {authority} as {name}: {e}"))
}

// === TLS origins ===

/// What [`Origin::tls_echo`] answers: `GET /bytes/<n>` → n bytes of [`super::pattern`];
/// any other GET → `path=<target> host=<Host> sni=<SNI or ->` (HEAD: its head only); a request with
/// a body → the body, echoed. `X-Close: 1` on a request makes the reply close.
pub fn echo_reply(request: &RecordedRequest, sni: &str) -> Reply {
    let body = if let Some(n) = request.target.strip_prefix("/bytes/") {
        super::pattern(n.parse().unwrap())
    } else if request.method == "GET" || request.method == "HEAD" {
        format!(
            "path={} host={} sni={sni}",
            request.target,
            request.headers.get("host").unwrap_or("-")
        )
        .into_bytes()
    } else {
        request.body.data.clone()
    };
    let close = request.headers.get("x-close") == Some("1");
    let headers: &[(&str, &str)] = if close {
        &[("Connection", "close")]
    } else {
        &[]
    };
    let mut bytes = super::response(200, headers, &body);
    if request.method == "HEAD" {
        // The Content-Length a GET would get, and no body.
        bytes.truncate(bytes.len() - body.len());
    }
    if close {
        Reply::close(bytes)
    } else {
        Reply::keep(bytes)
    }
}

impl Origin {
    /// A TLS origin on 127.0.0.1:0 presenting `pki`'s leaf; each connection's handshake
    /// then `script` run on its own thread. The accept count includes connections whose
    /// handshake failed.
    pub fn raw_tls<F>(pki: &OriginPki, script: F) -> Origin
    where
        F: Fn(OriginConn, String) + Send + Sync + 'static,
    {
        let config = pki.server_config();
        Origin::accepting(move |stream, accepted| {
            let index = accepted.index;
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream.set_write_timeout(Some(WAIT)).unwrap();
            let _ = stream.set_nodelay(true);
            let conn = ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            while tls.conn.is_handshaking() {
                if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                    eprintln!("TLS origin: handshake {index}: {e}");
                    return;
                }
            }
            let sni = tls.conn.server_name().unwrap_or("-").to_owned();
            script(accepted.conn(Wire::from_duplex(ServerIo(tls))), sni);
        })
    }

    /// A TLS origin answering each request with `handler(request, sni)` (keep-alive loop).
    pub fn spawn_tls<F>(pki: &OriginPki, handler: F) -> Origin
    where
        F: Fn(&RecordedRequest, &str) -> Reply + Send + Sync + 'static,
    {
        Origin::raw_tls(pki, move |mut conn, sni| {
            while let Some(request) = conn.read_request() {
                let reply = handler(&request, &sni);
                if !conn.send(&reply.bytes) || reply.close {
                    return;
                }
            }
        })
    }

    /// A TLS origin answering with [`echo_reply`].
    pub fn tls_echo(pki: &OriginPki) -> Origin {
        Origin::spawn_tls(pki, echo_reply)
    }

    /// `https://localhost:<port>` + `path`.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}
