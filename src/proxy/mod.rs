//! One client connection's lifecycle: read a head, route it, forward or tunnel, repeat.
//!
//! `serve_connection` is the loop; each phase lives in its own file:
//! [`forward`] (absolute-form HTTP through the upstream pool; a folder, one file per phase:
//! request head, upload, download, body relay), [`tunnel`] (CONNECT),
//! [`upstream`] (resolve + connect), [`pool`] (idle upstream connections),
//! Socket waits and the access-log record live below, in [`crate::conn`].

pub mod dns_cache;
pub mod forward;
pub mod pool;
pub mod tunnel;
pub mod upstream;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::config::Config;
use crate::conn::io::client_io_error;
use crate::conn::stop::Stop;
use crate::conn::{access, io, Client, Stream};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::{self, parse_request, parse_target, Parsed, RequestHead, Target};
use crate::plugin::plugin_failed;
use crate::plugin::{Chain, Flow, PluginFactory, Reply, RequestCx};
use crate::tls;
use access::Exchange;
use io::IoFail;
use pool::Pool;

/// How long a resolved name is reused when its resolver gives no TTL (an injected
/// resolver, a plugin, getaddrinfo where the DNS configuration cannot be read).
const DNS_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most names one worker remembers.
const DNS_CAPACITY: usize = 4096;
/// Most intercepted hosts one worker keeps a TLS server configuration for.
const LEAF_CONFIGS: usize = 1024;

/// Per-worker state shared by all of the worker's connections (never across threads).
pub struct Shared {
    /// Read-only settings.
    pub config: Arc<Config>,
    /// Every address the proxy listens on (all workers), for loop detection.
    pub listen_addrs: Arc<[SocketAddr]>,
    /// Idle upstream connections of this worker.
    pub pool: Pool,
    /// This worker's view of the shutdown signal.
    pub stop: Stop,
    /// Resolved origin names of this worker.
    pub dns: dns_cache::DnsCache,
    /// Worker index, for connection ids.
    pub worker: usize,
    /// Builds each connection's plugin chain, in `--plugins` order.
    pub factories: Arc<[Arc<dyn PluginFactory>]>,
    /// TLS settings shared by all workers (origins' verification, listener, CA).
    pub tls: Arc<tls::TlsContext>,
    /// This worker's server configurations for intercepted hosts.
    pub leaves: tls::server::LeafConfigs,
    next_conn: Cell<u64>,
}

/// Idle upstream connections one worker may hold in all: a quarter of the open-file
/// limit, shared among the workers (at least 16), so that idle connections never take
/// the descriptors clients need (with the common soft limit of 1024 and one worker, 256).
fn pool_budget(workers: usize) -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let share = soft / 4 / u64::try_from(workers.max(1)).unwrap_or(1);
    usize::try_from(share).unwrap_or(usize::MAX).max(16)
}

impl Shared {
    /// Builds the state of worker `worker`.
    pub fn new(
        config: Arc<Config>,
        listen_addrs: Arc<[SocketAddr]>,
        factories: Arc<[Arc<dyn PluginFactory>]>,
        tls: Arc<tls::TlsContext>,
        worker: usize,
    ) -> Self {
        let pool = Pool::new(
            config.upstream_max_idle_per_host,
            pool_budget(config.num_workers),
            config.upstream_idle_timeout,
        );
        let dns = dns_cache::DnsCache::new(DNS_TTL, DNS_CAPACITY);
        Shared {
            config,
            listen_addrs,
            pool,
            dns,
            stop: Stop::default(),
            worker,
            factories,
            tls,
            leaves: tls::server::LeafConfigs::new(LEAF_CONFIGS),
            next_conn: Cell::new(0),
        }
    }

    /// What plugin hooks see of this worker for a request from `client`.
    pub fn plugin_cx(&self, client: &Client) -> RequestCx<'_> {
        RequestCx {
            client: client.addr,
            config: &self.config,
            listen_addrs: &self.listen_addrs,
            intercepted: client.intercepted,
        }
    }

    fn next_conn_id(&self) -> u64 {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        id
    }

    /// True when `addr` is one of our listening sockets (or a wildcard one's port on loopback).
    /// Addresses are compared in canonical form: `::ffff:127.0.0.1` is `127.0.0.1`.
    pub fn is_own_address(&self, addr: SocketAddr) -> bool {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        // A wildcard listener covers loopback of its own family only: `::` is v6-only.
        self.listen_addrs.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip()
                    || (own.ip().is_unspecified()
                        && own.is_ipv4() == addr.is_ipv4()
                        && addr.ip().is_loopback()))
        })
    }

    /// True when a connection from `local` to `peer` ends at one of our listeners:
    /// same port, and either a listener on that IP or a wildcard listener on this host.
    pub fn is_self_connection(&self, peer: SocketAddr, local: SocketAddr) -> bool {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.listen_addrs.iter().any(|own| {
            own.port() == peer.port()
                && (own.ip() == peer.ip()
                    || (own.ip().is_unspecified()
                        && own.is_ipv4() == peer.is_ipv4()
                        && peer.ip() == local.ip()))
        })
    }
}

/// Per-connection state besides the socket: plugins and a scratch list for heads.
pub struct ConnState {
    /// Reused for every head sent upstream.
    pub parts: Vec<Bytes>,
    /// This connection's plugins.
    pub chain: Chain,
    /// Inside an intercepted tunnel: where its requests go.
    pub origin: Option<Box<Origin>>,
}

/// The origin of an intercepted tunnel: origin-form requests inside it go there, over
/// TLS.
pub struct Origin {
    /// The CONNECT host (connected to).
    pub host: String,
    /// The CONNECT port.
    pub port: u16,
    /// The name the origin's certificate is verified for: the client's SNI, else `host`.
    pub tls_name: String,
    /// Why the origin could not be reached over verified TLS: the first request is
    /// answered with it (a readable 502 instead of a silent close), then the
    /// connection closes.
    pub error: Option<ProxyError>,
}

/// What ended an attempt to read a request head.
enum HeadRead {
    Head(RequestHead),
    /// Clean end: EOF or idle timeout between requests, or shutdown while idle.
    Done,
}

const HEAD_READ_CHUNK: usize = 8 * 1024;

/// Where the built-in web server offers the interception CA's certificate for download
/// (when interception is on), for clients to install it.
pub const CA_CERT_PATH: &[u8] = b"/_proxy/ca.pem";

/// On shutdown, how long a connection that has not sent its first request yet may take
/// to start it: ample for a client that connected to send a request, short enough that
/// a client that connected and stays silent does not hold the stop up.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves one client connection until it closes, fails, or shutdown is signalled.
pub async fn serve_connection(stream: TcpStream, addr: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let conn_id = shared.next_conn_id();
    let mut client = Client::new(Stream::Tcp(stream), addr, false);
    let mut conn = ConnState {
        parts: Vec::new(),
        chain: Chain::build(&shared.factories),
        origin: None,
    };
    if let Some(config) = &shared.tls.listener {
        match boxed_accept_listener(client, Arc::clone(config), shared).await {
            Some(accepted) => client = accepted,
            None => return,
        }
    }
    let mut next = serve_requests(&mut client, shared, &mut conn, conn_id).await;
    // An intercepted CONNECT: the same loop again, inside the tunnel's TLS.
    while let Some(plan) = next {
        match boxed_intercept(client, *plan, shared, &mut conn).await {
            Some(inside) => client = inside,
            None => return,
        }
        next = serve_requests(&mut client, shared, &mut conn, conn_id).await;
    }
    close_chain(&mut conn, shared, client.addr);
}

fn close_chain(conn: &mut ConnState, shared: &Shared, addr: SocketAddr) {
    if !conn.chain.is_empty() {
        let client_cx = RequestCx {
            client: addr,
            config: &shared.config,
            listen_addrs: &shared.listen_addrs,
            intercepted: false,
        };
        conn.chain.on_close(&client_cx);
    }
}

/// Reads and answers requests on `client` until it closes, fails, or shutdown; or
/// until a CONNECT is to be intercepted, whose plan is returned.
async fn serve_requests(
    client: &mut Client,
    shared: &Shared,
    conn: &mut ConnState,
    conn_id: u64,
) -> Option<Box<tunnel::Intercept>> {
    let shutdown = &shared.stop;
    let mut fresh = true;
    // One record per connection, restarted for each exchange.
    let mut exchange = Exchange::new(client, Instant::now());
    loop {
        let head = match read_head(client, &shared.config, shutdown, fresh).await {
            Ok(HeadRead::Head(head)) => head,
            Ok(HeadRead::Done) => return None,
            Err(err) => {
                let mut exchange = Exchange::new(client, Instant::now());
                boxed_reply_error(client, &mut exchange, &err, &shared.config).await;
                exchange.log(&err, conn_id, shared.worker);
                return None;
            }
        };
        fresh = false;
        exchange.restart(Instant::now());
        exchange.set_request(&head);
        // The exchange's state machine is large and a task's future is allocated at its
        // largest size for the connection's whole life: boxing it per exchange keeps an
        // idle keep-alive connection down to the head reader's state.
        client.reset_on_drop = true;
        let result = boxed_route(client, shared, head, &mut exchange, conn).await;
        client.reset_on_drop = false;
        if !conn.chain.is_empty() {
            let cx = shared.plugin_cx(client);
            if let Err(err) = &result {
                conn.chain.on_error(&cx, err);
            }
            // An error not yet answered is answered after this, with its own status.
            let status = match &result {
                Err(err) if !exchange.response_started() => err.kind().status(),
                _ => exchange.status(),
            };
            conn.chain.on_complete(&cx, status);
            if Exchange::enabled() {
                exchange.set_client_label(conn.chain.client_label(&cx));
            }
        }
        match result {
            Ok(Next::KeepAlive) => {
                exchange.log_ok(conn_id, shared.worker);
                // Holds nothing of this request while the connection waits for the next.
                exchange.release();
                if shutdown.is_set() {
                    return None;
                }
            }
            Ok(Next::Close) => {
                exchange.log_ok(conn_id, shared.worker);
                if client.unread_input {
                    io::shutdown_write(&client.stream);
                    linger_drain(client, &shared.config).await;
                }
                return None;
            }
            Ok(Next::Intercept(plan)) => {
                exchange.log_ok(conn_id, shared.worker);
                return Some(plan);
            }
            Err(err) => {
                if !exchange.response_started() {
                    boxed_reply_error(client, &mut exchange, &err, &shared.config).await;
                } else if !exchange.is_tunnel() && err.kind().side() != Side::Client {
                    // Part of a response went out and the rest never will: a reset, not
                    // a clean close, so that a client reading until close (no length,
                    // or de-chunked for HTTP/1.0) sees it incomplete (RFC 9112 §8).
                    // (A tunnel's bytes are not a message: its end keeps its close.)
                    client.stream.abort();
                }
                exchange.log(&err, conn_id, shared.worker);
                return None;
            }
        }
    }
}

/// What the connection does after an exchange.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
    /// Intercept the CONNECT just answered: TLS with the client, then requests inside.
    Intercept(Box<tunnel::Intercept>),
}

impl From<bool> for Next {
    fn from(keep_alive: bool) -> Next {
        if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

/// The TLS handshake of a client of the `--cert-file` listener. A client that sends
/// plaintext is closed (logged as a warning the first time, then at debug level: a
/// port scanner or a misconfigured client would otherwise flood the log).
async fn accept_listener(
    client: Client,
    config: Arc<rustls::ServerConfig>,
    shared: &Shared,
) -> Option<Client> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let (stream, addr) = client.into_stream();
    let mut first = [0u8; 1];
    let peeked =
        tokio::time::timeout(shared.config.header_timeout, stream.tcp().peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return None;
    }
    let failure = if tls::server::is_not_tls(&first) {
        ProxyError::new(
            ErrorKind::TlsClientHandshakeError,
            "plaintext sent to a TLS port (use an https:// proxy URL, or drop --cert-file)",
        )
    } else {
        let session = match rustls::ServerConnection::new(config) {
            Ok(session) => session,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a TLS session");
                return None;
            }
        };
        match tls::server::accept(Stream::tls(stream, session), shared.config.timeout).await {
            Ok(stream) => return Some(Client::new(stream, addr, false)),
            Err(err) => err,
        }
    };
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(client = %addr, error.code = failure.code(), "{failure}");
    } else {
        tracing::warn!(client = %addr, error.code = failure.code(), "{failure} (logged once; later ones at debug level)");
    }
    None
}

/// Turns a client whose CONNECT is to be intercepted into the tunnel's inside: the
/// proxy's TLS handshake with the client, with the leaf the plan chose. The verified
/// upstream connection goes to the pool for the first request. `None` when the
/// handshake failed (logged, with its code; the plugins' `on_close` has run).
async fn intercept(
    client: Client,
    plan: tunnel::Intercept,
    shared: &Shared,
    conn: &mut ConnState,
) -> Option<Client> {
    let tunnel::Intercept {
        accepted,
        config,
        host,
        port,
        tls_name,
        upstream,
    } = plan;
    let (stream, addr) = client.into_stream();
    let session = match accepted.into_connection(config) {
        Ok(session) => session,
        Err((e, mut alert)) => {
            // The client learns why (e.g. `no_application_protocol` for an h2-only
            // ALPN offer, RFC 7301 §3.2) instead of seeing a bare close.
            let mut bytes = Vec::new();
            if alert.write_all(&mut bytes).is_ok() && !bytes.is_empty() {
                let _ = io::write_all(&stream, &bytes, shared.config.timeout).await;
            }
            let err = ProxyError::new(ErrorKind::TlsClientHandshakeError, "client TLS handshake")
                .with_source(e);
            tracing::warn!(client = %addr, host, error.code = err.code(), "{err}");
            close_chain(conn, shared, addr);
            return None;
        }
    };
    let stream =
        match tls::server::accept(Stream::tls(stream, session), shared.config.timeout).await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(client = %addr, host, port, error.code = err.code(), "{err}");
                close_chain(conn, shared, addr);
                return None;
            }
        };
    let error = match upstream {
        Ok(upstream) => {
            // Pooled only under the name it was verified for (see `forward::run`).
            if tls_name == host {
                shared.pool.put(&host, port, upstream);
            }
            None
        }
        Err(err) => Some(err),
    };
    let client = Client::new(stream, addr, true);
    if !conn.chain.is_empty() {
        let cx = shared.plugin_cx(&client);
        conn.chain.on_tls_handshake(&cx, &host, port, &tls_name);
    }
    conn.origin = Some(Box::new(Origin {
        host,
        port,
        tls_name,
        error,
    }));
    Some(client)
}

type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

fn boxed_accept_listener<'a>(
    client: Client,
    config: Arc<rustls::ServerConfig>,
    shared: &'a Shared,
) -> LocalBoxFuture<'a, Option<Client>> {
    Box::pin(accept_listener(client, config, shared))
}

fn boxed_intercept<'a>(
    client: Client,
    plan: tunnel::Intercept,
    shared: &'a Shared,
    conn: &'a mut ConnState,
) -> LocalBoxFuture<'a, Option<Client>> {
    Box::pin(intercept(client, plan, shared, conn))
}

/// `route`, boxed in a plain function: rustc keeps the temporary of an inline
/// `Box::pin(fut).await` in the caller's state machine, which would make every idle
/// connection carry the exchange's (large) state.
fn boxed_route<'a>(
    client: &'a mut Client,
    shared: &'a Shared,
    head: RequestHead,
    exchange: &'a mut Exchange,
    conn: &'a mut ConnState,
) -> LocalBoxFuture<'a, Result<Next, ProxyError>> {
    Box::pin(route(client, shared, head, exchange, conn))
}

/// `reply_error`, boxed for the same reason as [`boxed_route`].
fn boxed_reply_error<'a>(
    client: &'a mut Client,
    exchange: &'a mut Exchange,
    err: &'a ProxyError,
    config: &'a Config,
) -> LocalBoxFuture<'a, ()> {
    Box::pin(reply_error(client, exchange, err, config))
}

/// Decides what a request is and runs it. Returns whether the client connection
/// may carry another request.
async fn route(
    client: &mut Client,
    shared: &Shared,
    mut head: RequestHead,
    exchange: &mut Exchange,
    conn: &mut ConnState,
) -> Result<Next, ProxyError> {
    let shutdown = &shared.stop;
    let is_connect = head.is_method("CONNECT");
    let mut target = parse_target(&head.target_bytes(), is_connect)
        .map_err(|e| ProxyError::new(e.request_kind(), "invalid request target"))?;
    // Inside an intercepted tunnel, origin-form requests are for the tunnel's origin.
    if let (Some(origin), Target::Origin) = (&mut conn.origin, &target) {
        if let Some(err) = origin.error.take() {
            // The access line names where the request was going, and the plugins still
            // learn the request, for their error and access reports.
            exchange.set_target(&origin.host, origin.port, &head.target_bytes());
            exchange.set_https(true);
            conn.chain
                .on_request_refused(&shared.plugin_cx(client), &head, &target);
            return Err(err);
        }
        target = Target::Absolute {
            scheme: http::Scheme::Https,
            host: origin.host.clone(),
            port: origin.port,
            path: head.target_bytes(),
        };
    }
    // A body a plugin needs in `on_request` (a script's `BODIES.request`) is read
    // first, for requests to be forwarded; it is sent on by `forward::run`.
    let mut early_body = None;
    if !conn.chain.is_empty()
        && matches!(target, Target::Absolute { .. })
        && conn.chain.wants_request_body_first()
    {
        let read = Box::pin(forward::read_body_first(client, &head, &shared.config));
        let body = match read.await {
            Ok(body) => body,
            Err(err) => {
                let cx = shared.plugin_cx(client);
                conn.chain.on_request_refused(&cx, &head, &target);
                return Err(err);
            }
        };
        let cx = shared.plugin_cx(client);
        conn.chain
            .on_request_body_first(&cx, &body)
            .map_err(plugin_failed)?;
        early_body = Some(body);
    }
    if !conn.chain.is_empty() {
        let cx = shared.plugin_cx(client);
        let flow = conn
            .chain
            .on_request(&cx, &mut head, &mut target)
            .map_err(plugin_failed)?;
        match flow {
            Flow::Continue => conn.chain.wait_holds(shared.config.timeout).await?,
            Flow::Close => return Ok(Next::Close),
            Flow::Respond(reply) => {
                // No upstream: proxy.py's `None:None` and the path (`GET None:None/a`).
                let path = match &target {
                    Target::Absolute { path, .. } => path.clone(),
                    Target::Authority { .. } => Bytes::new(),
                    Target::Origin | Target::Asterisk => head.effective_target_bytes(),
                };
                exchange.set_target("", 0, &path);
                return send_reply(client, &head, reply, exchange, &shared.config, shutdown)
                    .await
                    .map(Next::from);
            }
        }
    }
    // [web server, spot B] --disable-http-proxy: only the built-in web server answers;
    // requests to proxy (absolute-form, CONNECT) are refused with 400.
    if shared.config.disable_http_proxy
        && matches!(target, Target::Absolute { .. } | Target::Authority { .. })
    {
        return Err(ProxyError::new(
            ErrorKind::UnsupportedRequest,
            "this proxy runs as a web server only (--disable-http-proxy)",
        ));
    }
    match target {
        Target::Authority { host, port } => {
            exchange.set_target(&host, port, &Bytes::new());
            // Boxed: a tunnel's state is large and would otherwise be carried by every
            // forwarded request's future.
            let tunnel = Box::pin(tunnel::run(
                client,
                shared,
                &head,
                &host,
                port,
                exchange,
                &mut conn.chain,
            ));
            let plan = tunnel.await?;
            Ok(plan.map_or(Next::Close, Next::Intercept))
        }
        Target::Absolute {
            scheme,
            host,
            port,
            path,
        } => {
            exchange.set_target(&host, port, &path);
            let https = scheme == http::Scheme::Https;
            exchange.set_https(https);
            // The name an HTTPS origin is verified for: the tunnel's SNI inside an
            // intercepted tunnel (for its own origin), else the host itself.
            // (A copy only when the SNI differs: `conn` is lent to `forward::run` below.)
            let sni = match &conn.origin {
                Some(origin)
                    if https
                        && origin.host == host
                        && origin.port == port
                        && origin.tls_name != host =>
                {
                    Some(origin.tls_name.clone())
                }
                _ => None,
            };
            // OPTIONS or TRACE with `Max-Forwards: 0` is answered here.
            if let Some(reply) = forward::max_forwards(&mut head) {
                return send_reply(client, &head, reply, exchange, &shared.config, shutdown)
                    .await
                    .map(Next::from);
            }
            let upstream = forward::Upstream {
                host: &host,
                port,
                tls: https.then(|| sni.as_deref().unwrap_or(&host)),
            };
            forward::run(
                client, shared, head, upstream, path, early_body, exchange, conn,
            )
            .await
            .map(Next::from)
        }
        Target::Origin | Target::Asterisk => {
            exchange.set_target("", 0, &head.effective_target_bytes());
            if let Some(ca) = &shared.tls.ca {
                if head.target_bytes().split(|b| *b == b'?').next() == Some(CA_CERT_PATH)
                    && (head.is_method("GET") || head.is_method("HEAD"))
                {
                    let reply = Reply::new(
                        200,
                        &[
                            ("Content-Type", "application/x-pem-file"),
                            (
                                "Content-Disposition",
                                "attachment; filename=\"proxy-ca.pem\"",
                            ),
                        ],
                        ca.cert_pem().as_bytes(),
                        false,
                    );
                    return send_reply(client, &head, reply, exchange, &shared.config, shutdown)
                        .await
                        .map(Next::from);
                }
            }
            // [web server, spot A] --enable-static-server: files under --static-server-dir
            // (status, bytes and errors recorded in `exchange` by `web::serve_static`).
            if shared.config.enable_static_server {
                let keep_alive =
                    crate::web::serve_static(client, &head, exchange, &shared.config).await?;
                return Ok(Next::from(keep_alive && !shutdown.is_set()));
            }
            // Addressed to the proxy itself: the built-in web server will live here.
            // A body we are not going to read means the connection cannot be reused.
            let has_body = !matches!(http::request_body_kind(&head), Ok(http::BodyKind::Empty));
            let keep_alive = head.wants_keep_alive() && !has_body && !shutdown.is_set();
            // Under --disable-http-proxy, absolute-form requests are refused: no advice.
            let text: &[u8] = if shared.config.disable_http_proxy {
                b"404 Not Found\n"
            } else {
                b"404 Not Found: this is a forward proxy; send absolute-form requests\n"
            };
            let reply = http::response::simple_response(
                404,
                &[("Content-Type", "text/plain; charset=utf-8")],
                text,
                !keep_alive,
            );
            let reply = if head.is_method("HEAD") {
                http::response::head_only(&reply)
            } else {
                reply
            };
            exchange.set_status(404);
            exchange.add_bytes(reply.len() as u64);
            io::write_all(&client.stream, &reply, shared.config.timeout)
                .await
                .map_err(|e| client_io_error(e, "writing a reply"))?;
            Ok(Next::from(keep_alive))
        }
    }
}

/// Sends a plugin's reply in place of an upstream exchange. Returns whether the client
/// connection may carry another request.
async fn send_reply(
    client: &mut Client,
    head: &RequestHead,
    reply: Reply,
    exchange: &mut Exchange,
    config: &Config,
    shutdown: &Stop,
) -> Result<bool, ProxyError> {
    // DESIGN §3 rule 7: a body we did not read must not be taken for the next
    // request; we close rather than drain it.
    let has_body = !matches!(http::request_body_kind(head), Ok(http::BodyKind::Empty));
    let keep_alive = !reply.close && !has_body && head.wants_keep_alive() && !shutdown.is_set();
    let bytes = reply.bytes_for(head.is_method("HEAD"), !keep_alive);
    exchange.set_status(reply.status);
    exchange.add_bytes(bytes.len() as u64);
    io::write_all(&client.stream, &bytes, config.timeout)
        .await
        .map_err(|e| client_io_error(e, "writing a plugin's reply"))?;
    if !keep_alive {
        io::shutdown_write(&client.stream);
        linger_drain(client, config).await;
    }
    Ok(keep_alive)
}

/// Reads one request head, bounded by the inactivity timeout while idle and by the
/// header timeout once its first byte has arrived (slowloris).
///
/// On shutdown an idle keep-alive connection is closed at once, unless its next request
/// is already waiting in the socket. A `fresh` connection (no request yet) may have just
/// connected, perhaps taken from the accept queue while the listener drained, and be
/// about to send a request it could not safely retry elsewhere: it gets
/// [`FIRST_REQUEST_GRACE`] to start it, and the answer closes the connection.
async fn read_head(
    client: &mut Client,
    config: &Config,
    shutdown: &Stop,
    fresh: bool,
) -> Result<HeadRead, ProxyError> {
    let mut head_deadline: Option<tokio::time::Instant> = None;
    loop {
        if !client.buf.is_empty() {
            match parse_request(&mut client.buf, &config.limits) {
                Ok(Parsed::Complete(head)) => return Ok(HeadRead::Head(head)),
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    return Err(ProxyError::new(
                        e.request_kind(),
                        format!("request head: {e}"),
                    ))
                }
            }
        }
        if client.buf.is_empty() {
            // Idle between requests: hold no buffer, and leave at once on shutdown. The
            // wait lasts until a byte arrives: a readiness report alone (tokio gives one for
            // a fresh socket, and a stale one after an exchange) is not a request yet, so
            // the header timeout only starts with the first byte.
            io::recycle(&mut client.buf);
            let stopping = shutdown.is_set();
            if stopping && !fresh && io::is_idle_and_open(&client.stream) {
                return Ok(HeadRead::Done);
            }
            // The wait is the first read itself: `readable()` alone may report a socket
            // readable that has nothing to read (tokio keeps readiness until a read would
            // block, and reports a fresh socket readable once), and a wait ended by such a
            // report would no longer watch shutdown.
            let first = io::read_some_idle(
                &client.stream,
                &mut client.buf,
                HEAD_READ_CHUNK,
                config.timeout,
            );
            let read = if stopping {
                // A connection that has not sent its first request yet (perhaps taken from
                // the accept queue while the listener drained) gets a moment to start it;
                // a silent one does not hold the stop up.
                match tokio::time::timeout(FIRST_REQUEST_GRACE, first).await {
                    Ok(read) => read,
                    Err(_) => return Ok(HeadRead::Done),
                }
            } else {
                tokio::select! {
                    biased;
                    read = first => read,
                    () = shutdown.wait() => {
                        // Decide again, now as a stopping connection.
                        continue;
                    }
                }
            };
            match read {
                Ok(0) | Err(IoFail::Timeout | IoFail::Closed | IoFail::ClientGone) => {
                    return Ok(HeadRead::Done)
                }
                Ok(_) => {}
                Err(IoFail::Io(e)) => {
                    tracing::debug!(error = %e, "client read failed between requests");
                    return Ok(HeadRead::Done);
                }
            }
            // The header timeout runs from this first byte; its deadline is taken only
            // if the head turns out incomplete (below), a moment later: most heads come
            // whole in one read, and the clock is not read for them.
            continue;
        }
        // Part of a head has arrived: the rest must come within the header timeout.
        let deadline = *head_deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + config.header_timeout);
        let read = timeout_at(
            deadline,
            io::read_head_bytes(
                &client.stream,
                &mut client.buf,
                HEAD_READ_CHUNK,
                config.timeout,
            ),
        )
        .await;
        match read {
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::RequestHeaderTimeout,
                    "request head not received in time",
                ))
            }
            Ok(Ok(0)) | Ok(Err(IoFail::Closed | IoFail::ClientGone)) => {
                return Err(ProxyError::new(
                    ErrorKind::ClientClosed,
                    "closed inside a request head",
                ))
            }
            Ok(Ok(_)) => {}
            Ok(Err(IoFail::Timeout)) => {
                return Err(ProxyError::new(
                    ErrorKind::RequestHeaderTimeout,
                    "client went quiet inside a request head",
                ))
            }
            Ok(Err(IoFail::Io(e))) => {
                return Err(
                    ProxyError::new(ErrorKind::ClientClosed, "reading a request head")
                        .with_source(e),
                )
            }
        }
    }
}

/// Sends the synthetic reply for `err` (when it has a status), then the caller closes.
async fn reply_error(
    client: &mut Client,
    exchange: &mut Exchange,
    err: &ProxyError,
    config: &Config,
) {
    let Some(status) = err.kind().status() else {
        return;
    };
    // The proxy's own failures (a plugin's, a script's) are told in the log: their text
    // names files and internals that are none of the client's business.
    let details = (err.kind().side() != Side::Internal).then(|| err.context());
    let mut reply = http::response::error_response(status, err.code(), details, true);
    if exchange.is_head() {
        reply = http::response::head_only(&reply);
    }
    exchange.set_status(status);
    exchange.add_bytes(reply.len() as u64);
    if io::write_all(&client.stream, &reply, config.timeout)
        .await
        .is_ok()
    {
        // Let the reply reach the client before the socket closes: a close with
        // unread request bytes would otherwise turn into a reset that can discard it.
        io::shutdown_write(&client.stream);
        linger_drain(client, config).await;
    }
}

/// After a final reply on a connection we are closing (its write side already shut),
/// reads and discards what the client still sends until the client closes, for a
/// short, bounded while: closing with unread input would reset the connection, and a
/// reset can discard the reply before the client reads it (RFC 9112 §9.6). Bounded
/// by time, not bytes: a client still uploading stops once it reads the reply and
/// its end, which may take longer than any number of bytes it sends meanwhile.
async fn linger_drain(client: &mut Client, config: &Config) {
    let deadline =
        tokio::time::Instant::now() + config.timeout.min(std::time::Duration::from_secs(2));
    let mut scratch = BytesMut::new();
    loop {
        scratch.clear();
        match timeout_at(
            deadline,
            io::read_some(&client.stream, &mut scratch, 16 * 1024, config.timeout),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle keep-alive connection costs its task's future (allocated at its largest
    /// state) plus the socket: the per-exchange state is boxed so that the future stays
    /// small. The budget is 2 KiB per idle connection in all.
    #[tokio::test]
    async fn idle_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stream, _peer) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let shared = Shared::new(
            Arc::new(Config::default()),
            Arc::from(vec![]),
            Arc::from(vec![]),
            Arc::new(tls::TlsContext::plain()),
            0,
        );
        let future = serve_connection(stream.unwrap(), addr, &shared);
        let size = std::mem::size_of_val(&future);
        // 1,536 before TLS; the transport enum and the interception hand-over added 24.
        assert!(size <= 1568, "serve_connection future is {size} bytes");
    }

    #[test]
    fn own_addresses_are_recognised() {
        let listen: Arc<[SocketAddr]> = Arc::from(vec![
            "127.0.0.1:8899".parse().unwrap(),
            "0.0.0.0:9000".parse().unwrap(),
        ]);
        let shared = Shared::new(
            Arc::new(Config::default()),
            listen,
            Arc::from(vec![]),
            Arc::new(tls::TlsContext::plain()),
            0,
        );
        assert!(shared.is_own_address("127.0.0.1:8899".parse().unwrap()));
        assert!(
            shared.is_own_address("[::ffff:127.0.0.1]:8899".parse().unwrap()),
            "v4-mapped"
        );
        assert!(!shared.is_own_address("127.0.0.2:8899".parse().unwrap()));
        assert!(
            shared.is_own_address("127.0.0.5:9000".parse().unwrap()),
            "wildcard on loopback"
        );
        let (peer, local) = (
            "10.1.2.3:9000".parse().unwrap(),
            "10.1.2.3:40000".parse().unwrap(),
        );
        assert!(
            shared.is_self_connection(peer, local),
            "wildcard reached via a local address"
        );
        let other: SocketAddr = "10.9.9.9:40000".parse().unwrap();
        assert!(!shared.is_self_connection(peer, other));
    }

    /// `::` listens on IPv6 only (v6-only sockets): IPv4 loopback on its port is some
    /// other service, not this proxy.
    #[test]
    fn a_v6_wildcard_covers_v6_loopback_only() {
        let listen: Arc<[SocketAddr]> = Arc::from(vec!["[::]:9000".parse().unwrap()]);
        let shared = Shared::new(
            Arc::new(Config::default()),
            listen,
            Arc::from(vec![]),
            Arc::new(tls::TlsContext::plain()),
            0,
        );
        assert!(shared.is_own_address("[::1]:9000".parse().unwrap()));
        assert!(!shared.is_own_address("127.0.0.1:9000".parse().unwrap()));
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(!shared.is_self_connection(at("127.0.0.1:9000"), at("127.0.0.1:40000")));
        assert!(shared.is_self_connection(at("[fd00::2]:9000"), at("[fd00::2]:40000")));
    }
}
