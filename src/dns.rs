//! Name resolution behind a trait, so tests (and plugins) can inject their own.
//!
//! The proxy's own resolver is hickory-resolver with the system's configuration
//! (`/etc/resolv.conf`, `/etc/hosts`), one per worker thread: its answers carry the
//! records' TTL, which the worker's cache then honours.

use std::cell::OnceCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;

/// A boxed resolution future; runs on the worker's own thread, so it need not be `Send`.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + 'a>>;

/// A boxed [`Resolve::lookup`] future.
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Answer>> + 'a>>;

/// Addresses, and for how long they may be used again when the resolver knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// In preference order, with the port filled in.
    pub addrs: Vec<SocketAddr>,
    /// The records' remaining time to live; `None` when the resolver does not say
    /// (the cache then keeps the answer for its default time).
    pub ttl: Option<Duration>,
}

/// Resolves a host name to socket addresses. IP literals never reach a resolver.
///
/// Errors: `io::ErrorKind::NotFound` means the name does not exist (reported as
/// `dns_error`), `io::ErrorKind::TimedOut` that no server answered (`dns_timeout`);
/// any other error is a `dns_error`. A resolver that takes longer than the connect
/// timeout is reported as `dns_timeout`.
pub trait Resolve: Send + Sync + 'static {
    /// Looks up `host` and returns addresses with `port` filled in, in preference order.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;

    /// [`Resolve::resolve`] with the answer's time to live, when the resolver knows
    /// it (the default does not).
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> LookupFuture<'a> {
        Box::pin(async move {
            Ok(Answer {
                addrs: self.resolve(host, port).await?,
                ttl: None,
            })
        })
    }
}

/// The system's DNS configuration through hickory-resolver (one resolver per worker
/// thread, built on first use); where that configuration cannot be read, `getaddrinfo`
/// on tokio's blocking pool, without TTLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

thread_local! {
    /// This thread's resolver: `None` when the system configuration could not be read.
    static RESOLVER: OnceCell<Option<TokioResolver>> = const { OnceCell::new() };
}

fn thread_resolver() -> Option<TokioResolver> {
    RESOLVER.with(|cell| {
        cell.get_or_init(|| match TokioResolver::builder_tokio() {
            Ok(builder) => Some(builder.build()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system's DNS configuration; using getaddrinfo (no TTLs)");
                None
            }
        })
        .clone()
    })
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(self.lookup(host, port).await?.addrs) })
    }

    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> LookupFuture<'a> {
        Box::pin(async move {
            let Some(resolver) = thread_resolver() else {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
                }
                return Ok(Answer { addrs, ttl: None });
            };
            lookup_with(&resolver, host, port).await
        })
    }
}

/// One lookup through `resolver`: its addresses and their remaining TTL.
async fn lookup_with(resolver: &TokioResolver, host: &str, port: u16) -> io::Result<Answer> {
    let found = resolver.lookup_ip(host).await.map_err(lookup_error)?;
    let ttl = found
        .valid_until()
        .saturating_duration_since(Instant::now());
    let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(Answer {
        addrs,
        ttl: Some(ttl),
    })
}

/// A hickory error as the [`Resolve`] contract spells it.
fn lookup_error(e: hickory_resolver::ResolveError) -> io::Error {
    let kind = if e.is_nx_domain() || e.is_no_records_found() {
        io::ErrorKind::NotFound
    } else if e
        .proto()
        .is_some_and(|p| matches!(p.kind(), hickory_resolver::proto::ProtoErrorKind::Timeout))
    {
        io::ErrorKind::TimedOut
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
    use hickory_resolver::name_server::TokioConnectionProvider;

    /// A DNS server on loopback answering A queries for `found.test` with 10.1.2.3
    /// (TTL 7), AAAA queries for it with no records, other names with NXDOMAIN, and
    /// nothing at all for `silent.test`.
    async fn dns_server() -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let query = &buf[..n];
                // The question: labels from byte 12 to the root, then type and class.
                let mut end = 12;
                let mut labels = Vec::new();
                while query[end] != 0 {
                    let len = usize::from(query[end]);
                    labels
                        .push(String::from_utf8_lossy(&query[end + 1..end + 1 + len]).into_owned());
                    end += 1 + len;
                }
                let question = &query[12..end + 5];
                let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
                let name = labels.join(".");
                if name == "silent.test" {
                    continue;
                }
                let (rcode, answer) = match (name.as_str(), qtype) {
                    ("found.test", 1) => (0u8, true),
                    ("found.test", _) => (0, false),
                    _ => (3, false),
                };
                let mut out = Vec::new();
                out.extend_from_slice(&query[..2]);
                out.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
                out.extend_from_slice(question);
                if answer {
                    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 7, 0, 4, 10, 1, 2, 3]);
                }
                let _ = socket.send_to(&out, from).await;
            }
        });
        addr
    }

    fn resolver_for(server: SocketAddr) -> TokioResolver {
        let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioConnectionProvider::default(),
        );
        builder.options_mut().timeout = Duration::from_millis(200);
        builder.options_mut().attempts = 1;
        builder.build()
    }

    #[tokio::test]
    async fn answers_carry_the_records_ttl_and_errors_their_kind() {
        let resolver = resolver_for(dns_server().await);
        let answer = lookup_with(&resolver, "found.test.", 443).await.unwrap();
        assert_eq!(
            answer.addrs,
            vec!["10.1.2.3:443".parse::<SocketAddr>().unwrap()]
        );
        let ttl = answer.ttl.unwrap();
        assert!(
            ttl <= Duration::from_secs(7) && ttl > Duration::from_secs(5),
            "{ttl:?}"
        );
        let missing = lookup_with(&resolver, "missing.test.", 80)
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
        let silent = lookup_with(&resolver, "silent.test.", 80)
            .await
            .unwrap_err();
        assert_eq!(silent.kind(), io::ErrorKind::TimedOut, "{silent}");
    }
}
