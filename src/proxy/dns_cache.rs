//! Per-worker cache of resolved names, so a new upstream connection to a known host
//! skips the resolver (for the system resolver, a DNS query).
//!
//! Positive answers only, kept for the records' TTL when the resolver tells it (at
//! most [`MAX_TTL`]), else for the cache's default time; at most `capacity` names;
//! when full, expired entries go first, then the whole cache is cleared (a worker
//! rarely talks to thousands of hosts, and a miss only costs a lookup).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The longest an answer is kept, whatever its TTL: a long-lived record that changes
/// anyway (a migration) is seen within the hour.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// Resolved addresses by (host name, port), exactly as the resolver returned them
/// (an injected resolver may map the port too).
pub struct DnsCache {
    entries: RefCell<HashMap<Box<str>, PortEntries>>,
    ttl: Duration,
    capacity: usize,
}

/// The entries of one host, per port (a host rarely has more than one).
type PortEntries = Vec<(u16, Entry)>;

struct Entry {
    addrs: Vec<SocketAddr>,
    expires: Instant,
}

impl DnsCache {
    /// An empty cache keeping answers for `ttl`, at most `capacity` names.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        DnsCache {
            entries: RefCell::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    /// Cached addresses for `host:port`, if fresh.
    pub fn get(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let entries = self.entries.borrow();
        let (_, entry) = entries.get(host)?.iter().find(|(p, _)| *p == port)?;
        (entry.expires > Instant::now()).then(|| entry.addrs.clone())
    }

    /// Remembers the addresses `host:port` resolved to, for `ttl` (the records' time
    /// to live, at most [`MAX_TTL`]) or, when the resolver did not say, the default.
    pub fn insert(&self, host: &str, port: u16, addrs: &[SocketAddr], ttl: Option<Duration>) {
        let ttl = ttl.map_or(self.ttl, |t| t.min(MAX_TTL));
        if self.capacity == 0 || addrs.is_empty() || ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= self.capacity && !entries.contains_key(host) {
            entries.retain(|_, ports| {
                ports.retain(|(_, e)| e.expires > now);
                !ports.is_empty()
            });
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        let entry = Entry {
            addrs: addrs.to_vec(),
            expires: now + ttl,
        };
        let ports = entries.entry(host.into()).or_default();
        match ports.iter_mut().find(|(p, _)| *p == port) {
            Some((_, old)) => *old = entry,
            None => ports.push((port, entry)),
        }
    }

    /// Forgets `host` (its addresses all failed to connect).
    pub fn forget(&self, host: &str) {
        self.entries.borrow_mut().remove(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_exactly_what_was_resolved_until_expiry() {
        let cache = DnsCache::new(Duration::from_secs(60), 8);
        // A resolver may map the port as well (service discovery, tests).
        cache.insert(
            "origin.test",
            80,
            &[addr("10.0.0.1:8080"), addr("[::1]:8080")],
            None,
        );
        assert_eq!(
            cache.get("origin.test", 80),
            Some(vec![addr("10.0.0.1:8080"), addr("[::1]:8080")])
        );
        assert_eq!(
            cache.get("origin.test", 443),
            None,
            "ports are cached apart"
        );
        assert_eq!(cache.get("other.test", 80), None);
        let expired = DnsCache::new(Duration::ZERO, 8);
        expired.insert("origin.test", 80, &[addr("10.0.0.1:80")], None);
        assert_eq!(expired.get("origin.test", 80), None);
    }

    #[test]
    fn a_known_ttl_wins_over_the_default() {
        let cache = DnsCache::new(Duration::from_secs(60), 8);
        cache.insert(
            "zero.test",
            80,
            &[addr("10.0.0.1:80")],
            Some(Duration::ZERO),
        );
        assert_eq!(cache.get("zero.test", 80), None, "TTL 0: not cached");
        cache.insert(
            "long.test",
            80,
            &[addr("10.0.0.2:80")],
            Some(Duration::from_secs(86_400)),
        );
        let expires = cache.entries.borrow()["long.test"][0].1.expires;
        assert!(expires <= Instant::now() + MAX_TTL);
        let default = DnsCache::new(Duration::ZERO, 8);
        default.insert(
            "ttl.test",
            80,
            &[addr("10.0.0.3:80")],
            Some(Duration::from_secs(5)),
        );
        assert!(
            default.get("ttl.test", 80).is_some(),
            "the record's TTL, not the default 0"
        );
    }

    #[test]
    fn stays_within_capacity_and_forgets() {
        let cache = DnsCache::new(Duration::from_secs(60), 2);
        cache.insert("a.test", 80, &[addr("10.0.0.1:80")], None);
        cache.insert("b.test", 80, &[addr("10.0.0.2:80")], None);
        cache.insert("c.test", 80, &[addr("10.0.0.3:80")], None);
        assert!(cache.entries.borrow().len() <= 2);
        assert!(cache.get("c.test", 80).is_some());
        cache.forget("c.test");
        assert!(cache.get("c.test", 80).is_none());
    }
}
