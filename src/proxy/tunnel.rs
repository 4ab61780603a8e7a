//! CONNECT: open a TCP connection to the authority, then either relay bytes both ways
//! (an opaque tunnel) or, with TLS interception on and a ClientHello from the client,
//! prepare the interception: TLS to the origin first (verified, with the client's SNI),
//! then the leaf for the client's handshake, which the connection loop runs.
//!
//! Half-close is kept: when one side finishes sending, the other side's write half is
//! shut down and the opposite direction goes on until it finishes too. The tunnel
//! ends when both directions are done, either fails, or neither moves for `--timeout`.
//! Read buffers exist only while data is flowing, so an idle tunnel holds none.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use std::sync::Arc;

use bytes::BytesMut;
use rustls::server::Accepted;
use tokio::time::Instant;

use crate::conn::Stream;
use crate::tls::server::{read_client_hello, Hello};

use super::access::Exchange;
use super::io::{shutdown_write, write_all, IoFail};
use super::{client_io_error, upstream, Client, Shared};
use crate::error::{ErrorKind, ProxyError, Result};
use crate::http::{self, response::CONNECT_ESTABLISHED, BodyKind, RequestHead};
use crate::plugin::plugin_failed;
use crate::plugin::Chain;

/// A CONNECT to intercept: everything the connection loop needs for the client's
/// handshake and the requests inside.
pub struct Intercept {
    /// The client's ClientHello, read.
    pub accepted: Box<Accepted>,
    /// The server side with the leaf for `tls_name`.
    pub config: Arc<rustls::ServerConfig>,
    /// The CONNECT host.
    pub host: String,
    /// The CONNECT port.
    pub port: u16,
    /// The client's SNI, else the CONNECT host.
    pub tls_name: String,
    /// TLS to the origin, verified; or why it failed (answered to the first request).
    pub upstream: Result<Stream>,
}

/// Runs a CONNECT exchange. For an opaque tunnel, to its end (the client connection is
/// finished afterwards); for an intercepted one, up to the plan the connection loop
/// carries out.
pub async fn run(
    client: &mut Client,
    shared: &Shared,
    head: &RequestHead,
    host: &str,
    port: u16,
    exchange: &mut Exchange,
    chain: &mut Chain,
) -> Result<Option<Box<Intercept>>> {
    let config = &shared.config;
    // A CONNECT request has no content (RFC 9110 §9.3.6); framing headers on it are
    // a smuggling attempt or a broken client.
    match http::request_body_kind(head) {
        Ok(BodyKind::Empty) => {}
        _ => {
            return Err(ProxyError::new(
                ErrorKind::HttpRequestError,
                "CONNECT with a body",
            ))
        }
    }
    if let Some(allowed) = &config.connect_ports {
        if !allowed.contains(port) {
            return Err(ProxyError::new(
                ErrorKind::HttpRequestDenied,
                format!("CONNECT to port {port} is not allowed (--connect-ports {allowed})"),
            ));
        }
    }
    let cx = shared.plugin_cx(client);
    let connect_deadline = Instant::now() + config.connect_timeout;
    let intercepting = shared.tls.ca.is_some() && config.tls.should_intercept(host, port);
    // With interception on, a verified TLS connection to this origin that sits idle in
    // the pool serves the tunnel: no new connection, no second handshake with the
    // origin. Otherwise (and for an opaque tunnel) a new TCP connection, made before
    // the 200 so that a failure is a readable 502.
    let mut pooled = if intercepting {
        shared.pool.take(host, port, true)
    } else {
        None
    };
    let mut fresh = match pooled {
        Some(_) => None,
        None => {
            let plugin = upstream::resolve_hook(chain, &cx, host, port)?;
            Some(Stream::Tcp(
                upstream::connect(shared, host, port, plugin).await?.stream,
            ))
        }
    };
    write_all(&client.stream, CONNECT_ESTABLISHED, config.timeout)
        .await
        .map_err(|e| client_io_error(e, "writing the CONNECT reply"))?;
    exchange.set_status(200);
    exchange.add_bytes(CONNECT_ESTABLISHED.len() as u64);
    // What follows is a byte stream, not a message: its cut keeps a normal close.
    client.reset_on_drop = false;
    if let (Some(ca), true) = (&shared.tls.ca, intercepting) {
        let origin = fresh.as_ref().or(pooled.as_ref());
        let mut hello = match origin {
            Some(origin) => {
                read_client_hello(&client.stream, &mut client.buf, origin, config.timeout).await?
            }
            None => Hello::NotTls,
        };
        if let Hello::Unreadable(why) = &hello {
            // Plugins would never see this client's requests: with plugins loaded, the
            // tunnel is refused rather than let through uninspected (fail closed).
            // Without any, interception only observes, and the client's own TLS to the
            // origin is relayed as it is (hey sends `host:port` as its server name).
            if !chain.is_empty() {
                return Err(ProxyError::new(
                    ErrorKind::TlsClientHandshakeError,
                    format!("a ClientHello that cannot be intercepted ({why}); refused, as plugins are loaded"),
                ));
            }
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            let message =
                "a ClientHello rustls refuses: relayed as an opaque tunnel, not intercepted";
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(error = %why, "{message}");
            } else {
                tracing::warn!(error = %why, "{message} (logged once; later ones at debug level)");
            }
            hello = Hello::NotTls;
        }
        if let Hello::Tls(accepted) = hello {
            let sni = accepted
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase);
            let tls_name = sni.clone().unwrap_or_else(|| host.to_owned());
            // The SNI is a host too: --ignore-hosts patterns may name it.
            let by_flags = tls_name == host || config.tls.should_intercept(&tls_name, port);
            let by_plugins = !by_flags
                || chain.is_empty()
                || chain
                    .do_intercept(&cx, host, port, sni.as_deref())
                    .map_err(plugin_failed)?;
            if by_flags && by_plugins {
                let upstream = match pooled.take() {
                    // Pooled connections were verified for their host (see `forward::run`).
                    Some(tls) if tls_name == host => Ok(tls),
                    other => {
                        if let Some(tls) = other {
                            shared.pool.put(host, port, tls);
                        }
                        let tcp = match fresh.take() {
                            Some(tcp) => Ok(tcp),
                            None => {
                                let plugin = upstream::resolve_hook(chain, &cx, host, port)?;
                                upstream::connect(shared, host, port, plugin)
                                    .await
                                    .map(|c| Stream::Tcp(c.stream))
                            }
                        };
                        match tcp {
                            Ok(tcp) => {
                                let deadline =
                                    connect_deadline.max(Instant::now() + config.timeout);
                                crate::tls::client::handshake(
                                    tcp,
                                    &tls_name,
                                    &shared.tls.origins(),
                                    deadline,
                                    config.timeout,
                                )
                                .await
                            }
                            Err(err) => Err(err),
                        }
                    }
                };
                let origin_cert = upstream.as_ref().ok().and_then(|s| {
                    s.with_session(|c| c.peer_certificates().and_then(|c| c.first().cloned()))
                        .flatten()
                });
                let leaf = shared.leaves.get(ca, &tls_name, origin_cert.as_ref())?;
                // The ClientHello now lives in `accepted`.
                client.buf = BytesMut::new();
                return Ok(Some(Box::new(Intercept {
                    accepted,
                    config: leaf,
                    host: host.to_owned(),
                    port,
                    tls_name,
                    upstream,
                })));
            }
        }
    }
    // An opaque tunnel after all: it needs its own TCP connection to the origin.
    if let Some(tls) = pooled.take() {
        shared.pool.put(host, port, tls);
    }
    let upstream = match fresh.take() {
        Some(tcp) => tcp,
        None => {
            let plugin = upstream::resolve_hook(chain, &cx, host, port)?;
            Stream::Tcp(upstream::connect(shared, host, port, plugin).await?.stream)
        }
    };
    // Bytes the client sent right behind its CONNECT (an eager TLS ClientHello) go first.
    if !client.buf.is_empty() {
        let early = std::mem::take(&mut client.buf);
        write_all(&upstream, &early, config.timeout)
            .await
            .map_err(upstream_io_error)?;
    }
    client.buf = BytesMut::new();
    let relayed = relay(
        &client.stream,
        &upstream,
        config.server_recvbuf_size,
        config.timeout,
    )
    .await;
    exchange.add_bytes(relayed.to_client);
    relayed.result.map(|()| None)
}

/// Totals of a finished relay.
pub struct Relayed {
    /// Bytes sent to the client.
    pub to_client: u64,
    /// Bytes sent to the upstream.
    pub to_upstream: u64,
    /// How it ended.
    pub result: Result<()>,
}

/// Relays bytes between `client` and `upstream` until both directions end, either
/// fails, or nothing moves for `idle`. A write in progress counts as moving: it has its
/// own bound on time without progress, so a slow but steady reader is never cut.
pub async fn relay(client: &Stream, upstream: &Stream, chunk: usize, idle: Duration) -> Relayed {
    let activity = Activity::new();
    let up_bytes = Cell::new(0u64);
    let down_bytes = Cell::new(0u64);
    let up = async {
        pump(client, upstream, chunk, idle, &activity, &up_bytes)
            .await
            .map_err(|e| classify(e, Direction::Upload))
    };
    let down = async {
        pump(upstream, client, chunk, idle, &activity, &down_bytes)
            .await
            .map_err(|e| classify(e, Direction::Download))
    };
    // The first failure ends the tunnel, with its own error (a stalled origin is an
    // upstream timeout, not an idle client); a direction that finished waits for the
    // other (half-close).
    let both = async { tokio::try_join!(up, down).map(|_| ()) };
    let result = tokio::select! {
        res = both => res,
        () = activity.idle_for(idle) => Err(ProxyError::new(ErrorKind::ClientTimeout, "tunnel idle")),
    };
    Relayed {
        to_client: down_bytes.get(),
        to_upstream: up_bytes.get(),
        result,
    }
}

/// When a relay last moved, and how many writes are under way (shared with the
/// WebSocket relay, which keeps the same `--timeout` semantics).
pub(crate) struct Activity {
    last: Cell<Instant>,
    writing: Cell<u8>,
}

impl Activity {
    /// Nothing under way; moved now.
    pub(crate) fn new() -> Self {
        Activity {
            last: Cell::new(Instant::now()),
            writing: Cell::new(0),
        }
    }

    /// Bytes moved now.
    pub(crate) fn moved(&self) {
        self.last.set(Instant::now());
    }

    /// A write starts (it counts as moving until [`Activity::write_ended`]).
    pub(crate) fn write_started(&self) {
        self.writing.set(self.writing.get().saturating_add(1));
    }

    /// A write ended (well or not).
    pub(crate) fn write_ended(&self) {
        self.writing.set(self.writing.get().saturating_sub(1));
    }

    /// Returns once nothing moved for `idle` and no write is under way.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last.get() + idle;
            tokio::time::sleep_until(deadline).await;
            if self.writing.get() == 0 && self.last.get() + idle <= Instant::now() {
                return;
            }
            if self.writing.get() > 0 {
                self.last.set(Instant::now());
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Upload,
    Download,
}

enum PumpFail {
    Read(io::Error),
    Write(IoFail),
}

fn classify(fail: PumpFail, dir: Direction) -> ProxyError {
    match (fail, dir) {
        (PumpFail::Read(e), Direction::Upload) => {
            ProxyError::new(ErrorKind::ClientClosed, "tunnel: reading the client").with_source(e)
        }
        (PumpFail::Read(e), Direction::Download) => ProxyError::new(
            ErrorKind::HttpResponseIncomplete,
            "tunnel: reading the upstream",
        )
        .with_source(e),
        (PumpFail::Write(e), Direction::Upload) => upstream_io_error(e),
        (PumpFail::Write(e), Direction::Download) => {
            client_io_error(e, "tunnel: writing the client")
        }
    }
}

fn upstream_io_error(err: IoFail) -> ProxyError {
    match err {
        IoFail::Timeout => ProxyError::new(ErrorKind::ConnectionReadTimeout, "upstream stalled"),
        IoFail::Closed => ProxyError::new(ErrorKind::HttpResponseIncomplete, "upstream closed"),
        IoFail::Io(e) => ProxyError::new(ErrorKind::HttpResponseIncomplete, "writing the upstream")
            .with_source(e),
        IoFail::ClientGone => ProxyError::new(ErrorKind::ClientClosed, "the client went away"),
    }
}

/// Copies `src` to `dst` until EOF (then half-closes `dst`).
async fn pump(
    src: &Stream,
    dst: &Stream,
    chunk: usize,
    idle: Duration,
    activity: &Activity,
    total: &Cell<u64>,
) -> std::result::Result<(), PumpFail> {
    loop {
        src.readable().await.map_err(PumpFail::Read)?;
        // Allocated only while data flows; dropped when the source runs dry.
        let mut buf = BytesMut::with_capacity(chunk);
        loop {
            match src.try_read_buf(&mut buf) {
                Ok(0) => {
                    shutdown_write(dst);
                    return Ok(());
                }
                Ok(n) => {
                    activity.write_started();
                    let written = write_all(dst, &buf, idle).await;
                    activity.write_ended();
                    written.map_err(PumpFail::Write)?;
                    activity.moved();
                    total.set(total.get() + n as u64);
                    buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpFail::Read(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// Two connected sockets: ours (wrapped) and the peer's.
    async fn pair() -> (Stream, TcpStream) {
        let (ours, theirs) = crate::conn::tcp_pair().await;
        (Stream::Tcp(ours), theirs)
    }

    /// An origin that stops reading ends the tunnel through the upload's own stall
    /// bound, with the upstream's error: the download side, idle meanwhile, does not
    /// keep the tunnel open for another period, nor is it blamed on the client.
    #[tokio::test]
    async fn a_stalled_origin_ends_the_tunnel_with_an_upstream_timeout() {
        let (client, mut client_peer) = pair().await;
        let (upstream, _upstream_peer_never_reads) = pair().await;
        let writer = tokio::spawn(async move {
            let block = vec![0u8; 64 * 1024];
            // Until the buffers on the way are full and the write stalls for good.
            while client_peer.write_all(&block).await.is_ok() {}
        });
        let relayed = relay(&client, &upstream, 16 * 1024, Duration::from_millis(200)).await;
        writer.abort();
        let err = relayed.result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReadTimeout, "{err}");
        assert!(relayed.to_upstream > 0);
    }
}
