//! Connecting to origins: resolution, connect timeout, error classification, loop check.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

use super::Shared;
use crate::error::{ErrorKind, ProxyError, Result};
use crate::http::target::Authority;
use crate::plugin::plugin_failed;
use crate::plugin::{Chain, RequestCx, ResolveFuture};

/// A new upstream connection.
pub struct Connected {
    /// The socket.
    pub stream: TcpStream,
    /// Whether it may go back to the shared pool afterwards (not when a plugin chose
    /// the local address it connects from: that choice belongs to one client).
    pub poolable: bool,
}

/// Opens a new TCP connection to `host:port` within the connect timeout
/// (resolution included), trying each resolved address in order. `plugin` is a resolve
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
        (None, None, None) => match timeout_at(deadline, config.resolver.resolve(host, port)).await
        {
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::DnsTimeout,
                    format!("resolving {host}"),
                ))
            }
            Ok(Err(e)) => {
                return Err(
                    ProxyError::new(ErrorKind::DnsError, format!("resolving {host}"))
                        .with_source(e),
                )
            }
            Ok(Ok(addrs)) if addrs.is_empty() => {
                return Err(ProxyError::new(
                    ErrorKind::DnsError,
                    format!("{host} has no address"),
                ))
            }
            Ok(Ok(addrs)) => {
                shared.dns.insert(host, port, &addrs);
                addrs
            }
        },
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
    let mut last_err: Option<io::Error> = None;
    for addr in &addrs {
        match timeout_at(deadline, open(*addr, bind)).await {
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::ConnectionTimeout,
                    format!("connecting to {} ({addr})", Authority(host, port)),
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
                return Ok(Connected {
                    stream,
                    poolable: bind.is_none(),
                });
            }
            Ok(Err(e)) => last_err = Some(e),
        }
    }
    // Every address failed: the next attempt resolves again.
    shared.dns.forget(host);
    let err = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable));
    Err(ProxyError::new(
        ErrorKind::from_connect_error(&err),
        format!("connecting to {}", Authority(host, port)),
    )
    .with_source(err))
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
