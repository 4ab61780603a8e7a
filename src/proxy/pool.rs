//! Per-worker pool of idle upstream connections, keyed by (host, port, TLS or not).
//!
//! Single-threaded by design (one per worker, behind `RefCell`): no locks. A connection
//! goes back only after a complete response with nothing unread; on take, it is
//! probed with a non-blocking peek so a connection the origin closed while idle is
//! dropped instead of failing a request. Most recently used first: it is the one most
//! likely to still be open.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::conn::Stream;

struct Idle {
    stream: Stream,
    since: Instant,
}

/// Idle connections per port (and scheme: plain or TLS) of one host (a host rarely has
/// more than one).
type PortQueues = Vec<((u16, bool), VecDeque<Idle>)>;

/// Idle upstream connections of one worker, by host. Looked up twice per request
/// (take, put): foldhash, randomly seeded, costs a fraction of SipHash on a host name.
pub struct Pool {
    hosts: RefCell<HashMap<Box<str>, PortQueues, foldhash::fast::RandomState>>,
    max_per_host: usize,
    /// Idle connections held in all (each is a file descriptor the clients may need).
    max_total: usize,
    total: Cell<usize>,
    idle_timeout: Duration,
}

impl Pool {
    /// An empty pool keeping at most `max_per_host` connections per (host, port),
    /// each for at most `idle_timeout`, and no more than `max_total` in all (past it,
    /// the connection idle longest is closed to make room).
    pub fn new(max_per_host: usize, max_total: usize, idle_timeout: Duration) -> Self {
        Pool {
            hosts: RefCell::new(HashMap::with_hasher(Default::default())),
            max_per_host,
            max_total,
            total: Cell::new(0),
            idle_timeout,
        }
    }

    /// Takes an idle connection to (host, port), TLS or plain, that a non-blocking peek finds open and
    /// quiet, if there is one. The peek (one syscall) is never skipped: stray bytes an
    /// origin sent after its response would otherwise be read as the next response
    /// (DESIGN §3 rule 10).
    pub fn take(&self, host: &str, port: u16, tls: bool) -> Option<Stream> {
        let mut hosts = self.hosts.borrow_mut();
        let ports = hosts.get_mut(host)?;
        let (_, queue) = ports.iter_mut().find(|(p, _)| *p == (port, tls))?;
        let now = Instant::now();
        let mut found = None;
        while let Some(idle) = queue.pop_back() {
            self.total.set(self.total.get().saturating_sub(1));
            let fresh = now.duration_since(idle.since) < self.idle_timeout;
            if fresh && idle.stream.is_idle_and_open() {
                found = Some(idle.stream);
                break;
            }
        }
        // An emptied queue stays until the next sweep: the connection taken usually
        // comes back within the request, and its host's entry is then still there.
        found
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, host: &str, port: u16, stream: Stream) {
        let key = (port, stream.is_tls());
        if self.max_per_host == 0 || self.max_total == 0 {
            return;
        }
        let mut hosts = self.hosts.borrow_mut();
        if self.total.get() >= self.max_total && evict_oldest(&mut hosts) {
            self.total.set(self.total.get() - 1);
        }
        let ports = match hosts.get_mut(host) {
            Some(ports) => ports,
            None => hosts.entry(host.into()).or_default(),
        };
        let queue = match ports.iter().position(|(p, _)| *p == key) {
            Some(i) => &mut ports[i].1,
            None => {
                ports.push((key, VecDeque::new()));
                let last = ports.len() - 1;
                &mut ports[last].1
            }
        };
        if queue.len() >= self.max_per_host && queue.pop_front().is_some() {
            self.total.set(self.total.get() - 1);
        }
        queue.push_back(Idle {
            stream,
            since: Instant::now(),
        });
        self.total.set(self.total.get() + 1);
    }

    /// Drops connections idle for longer than the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut hosts = self.hosts.borrow_mut();
        hosts.retain(|_, ports| {
            for (_, queue) in ports.iter_mut() {
                queue.retain(|idle| now.duration_since(idle.since) < self.idle_timeout);
            }
            ports.retain(|(_, q)| !q.is_empty());
            !ports.is_empty()
        });
        let total = hosts
            .values()
            .flat_map(|ports| ports.iter().map(|(_, q)| q.len()))
            .sum();
        self.total.set(total);
    }

    /// Drops every idle connection (shutdown, or descriptors running out).
    pub fn clear(&self) {
        self.hosts.borrow_mut().clear();
        self.total.set(0);
    }

    /// Number of idle connections held.
    pub fn len(&self) -> usize {
        self.total.get()
    }

    /// True when no idle connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How often [`Pool::sweep`] should run.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle_timeout / 2).max(Duration::from_millis(100))
    }
}

/// Closes the connection idle longest, whatever its host (a scan: only when the pool
/// is full). Returns whether there was one.
fn evict_oldest(hosts: &mut HashMap<Box<str>, PortQueues, foldhash::fast::RandomState>) -> bool {
    let oldest = hosts
        .iter()
        .flat_map(|(host, ports)| {
            ports
                .iter()
                .enumerate()
                .filter_map(move |(i, (_, q))| Some((q.front()?.since, host, i)))
        })
        .min_by_key(|(since, _, _)| *since)
        .map(|(_, host, i)| (host.clone(), i));
    let Some((host, i)) = oldest else {
        return false;
    };
    hosts
        .get_mut(&host)
        .and_then(|ports| ports.get_mut(i))
        .and_then(|(_, q)| q.pop_front())
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    async fn connected() -> (Stream, TcpStream) {
        let (ours, theirs) = crate::conn::tcp_pair().await;
        (Stream::Tcp(ours), theirs)
    }

    #[tokio::test]
    async fn returns_live_connection_for_same_key_only() {
        let pool = Pool::new(4, 100, Duration::from_secs(30));
        let (a, _peer) = connected().await;
        let local = a.tcp().local_addr().unwrap();
        pool.put("origin.test", 80, a);
        assert!(pool.take("origin.test", 81, false).is_none());
        assert!(
            pool.take("origin.test", 80, true).is_none(),
            "TLS is another key"
        );
        assert!(pool.take("other.test", 80, false).is_none());
        let got = pool.take("origin.test", 80, false).expect("pooled");
        assert_eq!(got.tcp().local_addr().unwrap(), local);
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn drops_connections_the_origin_closed() {
        let pool = Pool::new(4, 100, Duration::from_secs(30));
        let (a, peer) = connected().await;
        drop(peer);
        a.tcp().readable().await.unwrap();
        pool.put("h", 80, a);
        assert!(pool.take("h", 80, false).is_none());
    }

    #[tokio::test]
    async fn caps_per_host_and_expires() {
        let pool = Pool::new(2, 100, Duration::from_millis(0));
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (a, p) = connected().await;
            peers.push(p);
            pool.put("h", 80, a);
        }
        assert_eq!(pool.len(), 2);
        assert!(
            pool.take("h", 80, false).is_none(),
            "zero idle timeout expires everything"
        );
        pool.sweep();
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn a_full_pool_closes_the_connection_idle_longest() {
        let pool = Pool::new(4, 2, Duration::from_secs(30));
        let mut peers = Vec::new();
        let mut locals = Vec::new();
        for host in ["a", "b", "c"] {
            let (s, p) = connected().await;
            locals.push(s.tcp().local_addr().unwrap());
            peers.push(p);
            pool.put(host, 80, s);
        }
        assert_eq!(pool.len(), 2);
        assert!(pool.take("a", 80, false).is_none(), "the oldest went");
        let b = pool.take("b", 80, false).expect("b kept");
        assert_eq!(b.tcp().local_addr().unwrap(), locals[1]);
        assert_eq!(pool.len(), 1);
        let none = Pool::new(4, 0, Duration::from_secs(30));
        let (s, _p) = connected().await;
        none.put("a", 80, s);
        assert!(none.is_empty());
    }
}
