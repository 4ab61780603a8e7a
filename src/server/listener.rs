//! Listening sockets: one per worker per address, bound with `SO_REUSEPORT` so the
//! kernel spreads connections over workers (by 4-tuple hash; nothing is rebalanced).
//!
//! A port someone already listens on is refused, unless `--reuse-port` asks to join it:
//! then the new process's listeners enter the same `SO_REUSEPORT` group as the old
//! one's (same user only; the kernel enforces it), which is how a zero-downtime
//! upgrade hands a port over (README, "Zero-downtime upgrade").

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking listener on `addr` with `SO_REUSEPORT` and `backlog`.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Fails if something already listens on `addr`: `SO_REUSEPORT` alone would let us
/// silently share a port with a stale instance of ourselves.
fn check_free(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// Binds `workers` listeners on each address. A port of 0 is bound once to pick an
/// ephemeral port that every worker then shares. A port already in use is an error
/// unless `join_existing` (`--reuse-port`). Returns the listeners per worker and the
/// bound addresses.
pub fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
    backlog: u32,
    join_existing: bool,
) -> io::Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>)> {
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        if addr.port() != 0 && !join_existing {
            check_free(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        }
        let first = bind_reuseport(addr, backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let actual = first.local_addr()?;
        bound.push(actual);
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(bind_reuseport(actual, backlog).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {actual}: {e}"))
            })?);
        }
        for (worker, listener) in per_worker.iter_mut().zip(listeners) {
            worker.push(listener);
        }
    }
    Ok((per_worker, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_all_workers() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (per_worker, bound) = bind_all(&[addr], 3, 16, false).unwrap();
        assert_eq!(per_worker.len(), 3);
        let port = bound[0].port();
        assert_ne!(port, 0);
        for listeners in &per_worker {
            assert_eq!(listeners[0].local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn refuses_a_port_already_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        assert!(bind_all(&[addr], 1, 16, false).is_err());
    }

    #[test]
    fn joins_a_port_in_use_only_when_asked() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (_old, bound) = bind_all(&[addr], 2, 16, false).unwrap();
        assert!(bind_all(&bound, 1, 16, false).is_err());
        let (new, joined) = bind_all(&bound, 2, 16, true).unwrap();
        assert_eq!(joined, bound);
        assert_eq!(new.len(), 2);
    }

    #[test]
    fn cannot_join_a_listener_without_reuseport() {
        // The other side of the check: a listener that did not opt into SO_REUSEPORT
        // (another program) cannot be joined even with --reuse-port.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        assert!(bind_all(&[addr], 1, 16, true).is_err());
    }
}
