//! Connecting to origins: resolution, connect timeout, error classification, loop check.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::Shared;
use crate::error::{ErrorKind, ProxyError, Result};

/// Opens a new TCP connection to `host:port` within the connect timeout
/// (resolution included), trying each resolved address in order.
///
/// # Errors
/// `dns_error`, `dns_timeout`, `connection_refused`, `destination_unavailable`,
/// `connection_timeout`, or `proxy_loop_detected` when the address is this proxy.
pub async fn connect(shared: &Shared, host: &str, port: u16) -> Result<TcpStream> {
    let config = &shared.config;
    let deadline = Instant::now() + config.connect_timeout;
    let literal = host.parse::<IpAddr>().ok();
    let cached = if literal.is_none() {
        shared.dns.get(host, port)
    } else {
        None
    };
    let addrs: Vec<SocketAddr> = match (literal, cached) {
        (Some(ip), _) => vec![SocketAddr::new(ip, port)],
        (None, Some(addrs)) => addrs,
        (None, None) => match timeout_at(deadline, config.resolver.resolve(host, port)).await {
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
    let mut last_err: Option<io::Error> = None;
    for addr in &addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::ConnectionTimeout,
                    format!("connecting to {host}:{port} ({addr})"),
                ))
            }
            Ok(Ok(stream)) => {
                // A name can still lead back to us (e.g. a wildcard listener reached
                // through another local address): compare the socket's two ends.
                if let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) {
                    if shared.is_self_connection(peer, local) {
                        return Err(loop_error(host, port));
                    }
                }
                // Small heads and responses must not wait on Nagle.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last_err = Some(e),
        }
    }
    // Every address failed: the next attempt resolves again.
    shared.dns.forget(host);
    let err = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable));
    Err(ProxyError::new(
        ErrorKind::from_connect_error(&err),
        format!("connecting to {host}:{port}"),
    )
    .with_source(err))
}

fn loop_error(host: &str, port: u16) -> ProxyError {
    ProxyError::new(
        ErrorKind::ProxyLoopDetected,
        format!("{host}:{port} is this proxy"),
    )
}
