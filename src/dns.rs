//! Name resolution behind a trait, so tests (and later plugins) can inject their own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// A boxed resolution future; runs on the worker's own thread, so it need not be `Send`.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + 'a>>;

/// Resolves a host name to socket addresses. IP literals never reach a resolver.
///
/// Errors: `io::ErrorKind::NotFound` means the name does not exist (reported as
/// `dns_error`); any other error is also a `dns_error`. A resolver that takes longer
/// than the connect timeout is reported as `dns_timeout`.
pub trait Resolve: Send + Sync + 'static {
    /// Looks up `host` and returns addresses with `port` filled in, in preference order.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
            if addrs.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
            }
            Ok(addrs)
        })
    }
}
