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
use tokio::sync::watch;
use tokio::time::timeout_at;

use crate::config::Config;
use crate::conn::io::client_io_error;
use crate::conn::{access, io, Client};
use crate::error::{ErrorKind, ProxyError};
use crate::http::{self, parse_request, parse_target, Parsed, RequestHead, Target};
use crate::plugin::{Chain, Flow, PluginFactory, Reply, RequestCx};
use access::Exchange;
use io::IoFail;
use pool::Pool;

/// How long a resolved name is reused (the system resolver reports no TTL).
const DNS_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most names one worker remembers.
const DNS_CAPACITY: usize = 4096;

/// Per-worker state shared by all of the worker's connections (never across threads).
pub struct Shared {
    /// Read-only settings.
    pub config: Arc<Config>,
    /// Every address the proxy listens on (all workers), for loop detection.
    pub listen_addrs: Arc<[SocketAddr]>,
    /// Idle upstream connections of this worker.
    pub pool: Pool,
    /// Resolved origin names of this worker.
    pub dns: dns_cache::DnsCache,
    /// Worker index, for connection ids.
    pub worker: usize,
    /// Builds each connection's plugin chain, in `--plugins` order.
    pub factories: Arc<[Arc<dyn PluginFactory>]>,
    next_conn: Cell<u64>,
}

impl Shared {
    /// Builds the state of worker `worker`.
    pub fn new(
        config: Arc<Config>,
        listen_addrs: Arc<[SocketAddr]>,
        factories: Arc<[Arc<dyn PluginFactory>]>,
        worker: usize,
    ) -> Self {
        let pool = Pool::new(
            config.upstream_max_idle_per_host,
            config.upstream_idle_timeout,
        );
        let dns = dns_cache::DnsCache::new(DNS_TTL, DNS_CAPACITY);
        Shared {
            config,
            listen_addrs,
            pool,
            dns,
            worker,
            factories,
            next_conn: Cell::new(0),
        }
    }

    /// What plugin hooks see of this worker for a request from `client`.
    pub fn plugin_cx(&self, client: SocketAddr) -> RequestCx<'_> {
        RequestCx {
            client,
            config: &self.config,
            listen_addrs: &self.listen_addrs,
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
        self.listen_addrs.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip() || (own.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }

    /// True when a connection from `local` to `peer` ends at one of our listeners:
    /// same port, and either a listener on that IP or a wildcard listener on this host.
    pub fn is_self_connection(&self, peer: SocketAddr, local: SocketAddr) -> bool {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.listen_addrs.iter().any(|own| {
            own.port() == peer.port()
                && (own.ip() == peer.ip() || (own.ip().is_unspecified() && peer.ip() == local.ip()))
        })
    }
}

/// Per-connection state besides the socket: plugins and a scratch list for heads.
pub struct ConnState {
    /// Reused for every head sent upstream.
    pub parts: Vec<Bytes>,
    /// This connection's plugins.
    pub chain: Chain,
}

/// What ended an attempt to read a request head.
enum HeadRead {
    Head(RequestHead),
    /// Clean end: EOF or idle timeout between requests, or shutdown while idle.
    Done,
}

const HEAD_READ_CHUNK: usize = 8 * 1024;

/// On shutdown, how long a connection that has not sent its first request yet may take
/// to start it: ample for a client that connected to send a request, short enough that
/// a client that connected and stays silent does not hold the stop up.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves one client connection until it closes, fails, or shutdown is signalled.
pub async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let conn_id = shared.next_conn_id();
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
        addr,
    };
    let mut conn = ConnState {
        parts: Vec::new(),
        chain: Chain::build(&shared.factories),
    };
    let mut fresh = true;
    loop {
        let head = match read_head(&mut client, &shared.config, &mut shutdown, fresh).await {
            Ok(HeadRead::Head(head)) => head,
            Ok(HeadRead::Done) => break,
            Err(err) => {
                let mut exchange = Exchange::new(&client, Instant::now());
                boxed_reply_error(&mut client, &mut exchange, &err, &shared.config).await;
                exchange.log(&err, conn_id, shared.worker);
                break;
            }
        };
        fresh = false;
        let mut exchange = Exchange::new(&client, Instant::now());
        exchange.set_request(&head);
        // The exchange's state machine is large and a task's future is allocated at its
        // largest size for the connection's whole life: boxing it per exchange keeps an
        // idle keep-alive connection down to the head reader's state.
        let result = boxed_route(
            &mut client,
            shared,
            head,
            &mut exchange,
            &mut conn,
            &shutdown,
        )
        .await;
        if !conn.chain.is_empty() {
            let cx = shared.plugin_cx(client.addr);
            conn.chain.on_complete(&cx, exchange.status());
            if Exchange::enabled() {
                exchange.set_client_label(conn.chain.client_label(&cx));
            }
        }
        match result {
            Ok(keep_alive) => {
                exchange.log_ok(conn_id, shared.worker);
                if !keep_alive || *shutdown.borrow() {
                    break;
                }
            }
            Err(err) => {
                if !exchange.response_started() {
                    boxed_reply_error(&mut client, &mut exchange, &err, &shared.config).await;
                }
                exchange.log(&err, conn_id, shared.worker);
                break;
            }
        }
    }
    if !conn.chain.is_empty() {
        conn.chain.on_close(&shared.plugin_cx(client.addr));
    }
}

type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// `route`, boxed in a plain function: rustc keeps the temporary of an inline
/// `Box::pin(fut).await` in the caller's state machine, which would make every idle
/// connection carry the exchange's (large) state.
fn boxed_route<'a>(
    client: &'a mut Client,
    shared: &'a Shared,
    head: RequestHead,
    exchange: &'a mut Exchange,
    conn: &'a mut ConnState,
    shutdown: &'a watch::Receiver<bool>,
) -> LocalBoxFuture<'a, Result<bool, ProxyError>> {
    Box::pin(route(client, shared, head, exchange, conn, shutdown))
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
    shutdown: &watch::Receiver<bool>,
) -> Result<bool, ProxyError> {
    let is_connect = head.is_method("CONNECT");
    let mut target = parse_target(&head.target_bytes(), is_connect)
        .map_err(|e| ProxyError::new(e.request_kind(), "invalid request target"))?;
    if !conn.chain.is_empty() {
        let cx = shared.plugin_cx(client.addr);
        let flow = conn
            .chain
            .on_request(&cx, &mut head, &mut target)
            .map_err(|(name, e)| {
                ProxyError::new(ErrorKind::ProxyInternalError, format!("plugin {name}: {e}"))
            })?;
        match flow {
            Flow::Continue => {}
            Flow::Close => return Ok(false),
            Flow::Respond(reply) => {
                let request_target = head.effective_target_bytes();
                exchange.set_target("", 0, &request_target);
                return send_reply(client, &head, reply, exchange, &shared.config, shutdown).await;
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
            tunnel::run(
                client,
                shared,
                &head,
                &host,
                port,
                exchange,
                &mut conn.chain,
            )
            .await?;
            Ok(false)
        }
        Target::Absolute {
            scheme: http::Scheme::Http,
            host,
            port,
            path,
        } => {
            exchange.set_target(&host, port, &path);
            forward::run(
                client, shared, head, &host, port, path, exchange, conn, shutdown,
            )
            .await
        }
        Target::Absolute {
            scheme: http::Scheme::Https,
            ..
        } => Err(ProxyError::new(
            ErrorKind::UnsupportedRequest,
            "https:// absolute-form needs CONNECT (TLS to origins is not supported yet)",
        )),
        Target::Origin | Target::Asterisk => {
            exchange.set_target("", 0, &head.effective_target_bytes());
            // [web server, spot A] --enable-static-server: files under --static-server-dir
            // (status, bytes and errors recorded in `exchange` by `web::serve_static`).
            if shared.config.enable_static_server {
                let keep_alive =
                    crate::web::serve_static(client, &head, exchange, &shared.config).await?;
                return Ok(keep_alive && !*shutdown.borrow());
            }
            // Addressed to the proxy itself: the built-in web server will live here.
            // A body we are not going to read means the connection cannot be reused.
            let has_body = !matches!(http::request_body_kind(&head), Ok(http::BodyKind::Empty));
            let keep_alive = head.wants_keep_alive() && !has_body && !*shutdown.borrow();
            let reply = http::response::simple_response(
                404,
                &[("Content-Type", "text/plain; charset=utf-8")],
                b"404 Not Found: this is a forward proxy; send absolute-form requests\n",
                !keep_alive,
            );
            exchange.set_status(404);
            exchange.add_bytes(reply.len() as u64);
            io::write_all(&client.stream, &reply, shared.config.timeout)
                .await
                .map_err(|e| client_io_error(e, "writing a reply"))?;
            Ok(keep_alive)
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
    shutdown: &watch::Receiver<bool>,
) -> Result<bool, ProxyError> {
    // DESIGN §3 rule 7: a body we did not read must not be taken for the next
    // request; we close rather than drain it.
    let has_body = !matches!(http::request_body_kind(head), Ok(http::BodyKind::Empty));
    let keep_alive = !reply.close && !has_body && head.wants_keep_alive() && !*shutdown.borrow();
    exchange.set_status(reply.status);
    exchange.add_bytes(reply.bytes.len() as u64);
    io::write_all(&client.stream, &reply.bytes, config.timeout)
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
    shutdown: &mut watch::Receiver<bool>,
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
                        format!("request head: {e:?}"),
                    ))
                }
            }
        }
        if client.buf.is_empty() {
            // Idle between requests: hold no buffer, and leave at once on shutdown. The
            // wait lasts until a byte arrives: a readiness report alone (tokio gives one for
            // a fresh socket, and a stale one after an exchange) is not a request yet, so
            // the header timeout only starts with the first byte.
            client.buf = BytesMut::new();
            let stopping = *shutdown.borrow();
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
                    read = first => read,
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            return Ok(HeadRead::Done);
                        }
                        // Decide again, now as a stopping connection.
                        continue;
                    }
                }
            };
            match read {
                Ok(0) | Err(IoFail::Timeout | IoFail::Closed) => return Ok(HeadRead::Done),
                Ok(_) => {}
                Err(IoFail::Io(e)) => {
                    tracing::debug!(error = %e, "client read failed between requests");
                    return Ok(HeadRead::Done);
                }
            }
            head_deadline = Some(tokio::time::Instant::now() + config.header_timeout);
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
            Ok(Ok(0)) | Ok(Err(IoFail::Closed)) => {
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
    let details = err.context();
    let reply = http::response::error_response(status, err.code(), Some(details), true);
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

/// After a final reply on a connection we are closing, reads and discards what the
/// client still sends for a short, bounded while, so that closing with unread input
/// does not reset the connection before the reply is read (RFC 9112 §9.6).
async fn linger_drain(client: &mut Client, config: &Config) {
    const LINGER_BYTES: usize = 256 * 1024;
    let deadline =
        tokio::time::Instant::now() + config.timeout.min(std::time::Duration::from_secs(2));
    let mut drained = 0;
    let mut scratch = BytesMut::new();
    while drained < LINGER_BYTES {
        scratch.clear();
        match timeout_at(
            deadline,
            io::read_some(&client.stream, &mut scratch, 16 * 1024, config.timeout),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
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
            0,
        );
        let (_tx, rx) = watch::channel(false);
        let future = serve_connection(stream.unwrap(), addr, &shared, rx);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1536, "serve_connection future is {size} bytes");
    }

    #[test]
    fn own_addresses_are_recognised() {
        let listen: Arc<[SocketAddr]> = Arc::from(vec![
            "127.0.0.1:8899".parse().unwrap(),
            "0.0.0.0:9000".parse().unwrap(),
        ]);
        let shared = Shared::new(Arc::new(Config::default()), listen, Arc::from(vec![]), 0);
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
}
