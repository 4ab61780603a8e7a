//! Connecting to origins: resolution, connect timeout, error classification, loop check.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

use super::Shared;
use crate::error::{ErrorKind, ProxyError, Result};
use crate::http::target::Authority;
use crate::plugin::{plugin_failed, Chain, RequestCx, ResolveFuture};

/// A new upstream connection.
pub struct Connected {
    /// The socket.
    pub stream: TcpStream,
    /// Whether it may go back to the shared pool afterwards (not when a plugin chose
    /// the local address it connects from: that choice belongs to one client).
    pub poolable: bool,
}

/// Opens a new TCP connection to `host:port` within the connect timeout
/// (resolution included), racing the resolved addresses (RFC 8305). `plugin` is a resolve
/// hook's answer (see `Plugin::resolve_dns`), which takes precedence over the proxy's
/// resolver and its cache.
///
/// # Errors
/// `dns_error`, `dns_timeout`, `connection_refused`, `destination_unavailable`,
/// `connection_timeout`, `proxy_loop_detected` when the address is this proxy, or
/// `destination_ip_prohibited` when every address is in `--deny-destinations`.
pub async fn connect(
    shared: &Shared,
    host: &str,
    port: u16,
    plugin: Option<(&'static str, ResolveFuture)>,
) -> Result<Connected> {
    let config = &shared.config;
    let deadline = Instant::now() + config.connect_timeout;
    let mut bind = None;
    let mut from_plugin = None;
    if let Some((name, future)) = plugin {
        match timeout_at(deadline, future).await {
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::DnsTimeout,
                    format!("plugin {name} resolving {host}"),
                ))
            }
            Ok(Err(e)) => {
                return Err(ProxyError::new(
                    ErrorKind::DnsError,
                    format!("plugin {name} resolving {host}"),
                )
                .with_source(e))
            }
            Ok(Ok(None)) => {}
            Ok(Ok(Some(resolved))) => {
                bind = resolved.bind;
                let addrs: Vec<SocketAddr> = match bind {
                    Some(local) => resolved
                        .addrs
                        .into_iter()
                        .filter(|a| a.is_ipv4() == local.is_ipv4())
                        .collect(),
                    None => resolved.addrs,
                };
                if addrs.is_empty() {
                    return Err(ProxyError::new(
                        ErrorKind::DnsError,
                        format!("plugin {name} gave no usable address for {host}"),
                    ));
                }
                from_plugin = Some(addrs);
            }
        }
    }
    let literal = host.parse::<IpAddr>().ok();
    let cached = if literal.is_none() && from_plugin.is_none() {
        shared.dns.get(host, port)
    } else {
        None
    };
    let mut addrs: Vec<SocketAddr> = match (from_plugin, literal, cached) {
        (Some(addrs), _, _) => addrs,
        (None, Some(ip), _) => vec![SocketAddr::new(ip, port)],
        (None, None, Some(addrs)) => addrs,
        (None, None, None) => {
            match timeout_at(deadline, config.resolver.lookup(host, port)).await {
                Err(_) => {
                    return Err(ProxyError::new(
                        ErrorKind::DnsTimeout,
                        format!("resolving {host}"),
                    ))
                }
                // No server answered (the resolver's own timeouts ran out first).
                Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(
                        ProxyError::new(ErrorKind::DnsTimeout, format!("resolving {host}"))
                            .with_source(e),
                    )
                }
                Ok(Err(e)) => {
                    return Err(
                        ProxyError::new(ErrorKind::DnsError, format!("resolving {host}"))
                            .with_source(e),
                    )
                }
                Ok(Ok(answer)) if answer.addrs.is_empty() => {
                    return Err(ProxyError::new(
                        ErrorKind::DnsError,
                        format!("{host} has no address"),
                    ))
                }
                Ok(Ok(answer)) => {
                    shared.dns.insert(host, port, &answer.addrs, answer.ttl);
                    answer.addrs
                }
            }
        }
    };
    for addr in &addrs {
        if shared.is_own_address(*addr) {
            return Err(loop_error(host, port));
        }
    }
    // --deny-destinations, on the addresses about to be connected to (after DNS, so a
    // name that resolves to a denied address is refused as the address itself would be).
    let deny = &config.deny_destinations;
    if !deny.is_empty() {
        let before = addrs.len();
        let mut denied = None;
        addrs.retain(|addr| match deny.matching(addr.ip()) {
            Some(net) => {
                denied = Some((addr.ip(), *net));
                false
            }
            None => true,
        });
        if let (true, Some((ip, net))) = (addrs.is_empty(), denied) {
            // The client reads only that it was refused; the address and the range
            // (the operator's list) are in the debug log alone.
            tracing::debug!(
                host,
                port,
                "{} is {ip}, in denied range {net}",
                Authority(host, port)
            );
            return Err(denied_error(host, port));
        }
        if addrs.len() < before {
            tracing::debug!(host, port, "skipped denied addresses of {host}");
        }
    }
    let interleaved = interleave_families(addrs);
    let mut outcome = timeout_at(deadline, race(&interleaved, bind)).await;
    // Out of descriptors: the idle upstream connections can go at once; then once more.
    let out_of_fds = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if matches!(&outcome, Ok(Err(e)) if out_of_fds(e)) && !shared.pool.is_empty() {
        tracing::warn!(
            freed = shared.pool.len(),
            "out of file descriptors: closed the idle upstream connections"
        );
        shared.pool.clear();
        outcome = timeout_at(deadline, race(&interleaved, bind)).await;
    }
    match outcome {
        Err(_) => {
            // The next attempt resolves again: the addresses tried may all be dead.
            shared.dns.forget(host);
            Err(ProxyError::new(
                ErrorKind::ConnectionTimeout,
                format!("connecting to {}", Authority(host, port)),
            ))
        }
        Ok(Ok(stream)) => {
            // A name can still lead back to us (e.g. a wildcard listener reached
            // through another local address): compare the socket's two ends.
            if let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) {
                if shared.is_self_connection(peer, local) {
                    return Err(loop_error(host, port));
                }
                // The address actually reached (the kernel may have chosen it, as
                // for 0.0.0.0) is held to --deny-destinations too.
                if let Some(net) = deny.matching(peer.ip()) {
                    tracing::debug!(
                        host,
                        port,
                        "{} reached {peer}, in denied range {net}",
                        Authority(host, port)
                    );
                    return Err(denied_error(host, port));
                }
            }
            // Small heads and responses must not wait on Nagle.
            let _ = stream.set_nodelay(true);
            Ok(Connected {
                stream,
                poolable: bind.is_none(),
            })
        }
        Ok(Err(err)) => {
            // Every address failed: the next attempt resolves again.
            shared.dns.forget(host);
            Err(ProxyError::new(
                ErrorKind::from_connect_error(&err),
                format!("connecting to {}", Authority(host, port)),
            )
            .with_source(err))
        }
    }
}

/// RFC 8305 §5 (Happy Eyeballs): an attempt that has neither connected nor failed
/// within this gets company: the next address is tried alongside it.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to the first of `addrs` that answers: each address in turn, starting the
/// next one when the attempts under way have failed or [`ATTEMPT_DELAY`] has passed
/// without an answer, so a silent address (a black-holed IPv6 route, a dead A record)
/// costs a quarter second instead of the whole connect timeout. The first connection
/// wins; the other attempts are dropped. The caller bounds the whole with its deadline.
async fn race(addrs: &[SocketAddr], bind: Option<IpAddr>) -> io::Result<TcpStream> {
    type Attempt<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + 'a>>;
    enum Event {
        Done(usize, io::Result<TcpStream>),
        NextDue,
    }
    let mut attempts: Vec<Attempt<'_>> = Vec::new();
    let mut pending = addrs.iter();
    let mut last_err: Option<io::Error> = None;
    let mut next_due = pin!(tokio::time::sleep(Duration::ZERO));
    loop {
        let more = pending.len() > 0;
        if attempts.is_empty() && !more {
            let err = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable));
            return Err(err);
        }
        let event = std::future::poll_fn(|cx| {
            for (i, attempt) in attempts.iter_mut().enumerate() {
                if let Poll::Ready(result) = attempt.as_mut().poll(cx) {
                    return Poll::Ready(Event::Done(i, result));
                }
            }
            if more && next_due.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::NextDue);
            }
            Poll::Pending
        })
        .await;
        let now = tokio::time::Instant::now();
        match event {
            Event::Done(_, Ok(stream)) => return Ok(stream),
            Event::Done(i, Err(e)) => {
                drop(attempts.swap_remove(i));
                last_err = Some(e);
                // A failure starts the next address at once.
                next_due.as_mut().reset(now);
            }
            Event::NextDue => {
                if let Some(&addr) = pending.next() {
                    attempts.push(Box::pin(open(addr, bind)));
                }
                next_due.as_mut().reset(now + ATTEMPT_DELAY);
            }
        }
    }
}

/// RFC 8305 §4: the resolver's order, with the address families alternating from the
/// first one's (`v6, v4, v6, v4, …`), so that a broken family costs one attempt delay,
/// not one per address of it.
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first().copied() else {
        return addrs;
    };
    let (mut same, mut other): (VecDeque<SocketAddr>, VecDeque<SocketAddr>) = addrs
        .into_iter()
        .partition(|a| a.is_ipv4() == first.is_ipv4());
    let mut out = Vec::with_capacity(same.len() + other.len());
    loop {
        match (same.pop_front(), other.pop_front()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

fn denied_error(host: &str, port: u16) -> ProxyError {
    ProxyError::new(
        ErrorKind::DestinationIpProhibited,
        format!(
            "{} is a denied destination (--deny-destinations)",
            Authority(host, port)
        ),
    )
}

/// The first plugin's resolve hook for a new upstream connection to `host:port`.
pub fn resolve_hook(
    chain: &mut Chain,
    cx: &RequestCx<'_>,
    host: &str,
    port: u16,
) -> Result<Option<(&'static str, ResolveFuture)>> {
    if chain.is_empty() {
        return Ok(None);
    }
    chain.resolve_dns(cx, host, port).map_err(plugin_failed)
}

/// Connects to `addr`, from `bind` when given.
async fn open(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

fn loop_error(host: &str, port: u16) -> ProxyError {
    ProxyError::new(
        ErrorKind::ProxyLoopDetected,
        format!("{} is this proxy", Authority(host, port)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().filter_map(|a| a.parse().ok()).collect()
    }

    #[test]
    fn families_alternate_from_the_first_ones() {
        let mixed = addrs(&["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]);
        assert_eq!(
            interleave_families(mixed),
            addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"])
        );
        let v4_first = addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1"]);
        assert_eq!(
            interleave_families(v4_first),
            addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1"])
        );
        let one_family = addrs(&["10.0.0.1:1", "10.0.0.2:1"]);
        assert_eq!(interleave_families(one_family.clone()), one_family);
        assert_eq!(interleave_families(Vec::new()), Vec::new());
    }

    #[tokio::test]
    async fn every_address_refused_gives_the_last_error() {
        // Two ports nobody listens on (bound, then closed).
        let closed = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = race(&[closed(), closed()], None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let err = race(&[], None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable);
    }
}
