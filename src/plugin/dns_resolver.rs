//! `proxy.plugin.CustomDnsResolverPlugin`: upstream names resolved by a plugin.

use std::io;
use std::net::{IpAddr, SocketAddr};

use super::{Plugin, PluginFactory, RequestCx, ResolveFuture, Resolved};

/// proxy.py's name for [`CustomDnsResolver`].
pub const NAME: &str = "proxy.plugin.CustomDnsResolverPlugin";
/// Its defining module's full path.
pub const MODULE_NAME: &str = "proxy.plugin.custom_dns_resolver.CustomDnsResolverPlugin";

/// Builds [`CustomDnsResolver`].
#[derive(Debug, Default)]
pub struct CustomDnsResolverFactory;

impl PluginFactory for CustomDnsResolverFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(CustomDnsResolver)
    }
}

/// `proxy.plugin.CustomDnsResolverPlugin`: the example of the resolve hook
/// ([`Plugin::resolve_dns`]). Every new upstream connection resolves its host with the
/// system resolver (`getaddrinfo`, on tokio's blocking pool, so the worker never
/// waits on it) and connects to the answer, bypassing the proxy's own resolver and its
/// per-worker cache: a changed DNS record takes effect on the next new connection. It is
/// the place to start for a resolver of your own (a private DNS server, DoH, a static
/// map, or an outgoing interface through [`Resolved::bind`]).
///
/// Differences from proxy.py: proxy.py calls `socket.getaddrinfo` inside its event loop
/// (one slow lookup stalls every connection of that worker) and keeps only the first
/// address; here the lookup runs off the worker and every address is tried in order. A
/// failed lookup is answered `502 dns_error` directly (proxy.py falls back to its core
/// resolver, which then fails the same way).
#[derive(Debug, Default)]
pub struct CustomDnsResolver;

impl Plugin for CustomDnsResolver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn resolve_dns(&mut self, _cx: &RequestCx<'_>, host: &str, port: u16) -> Option<ResolveFuture> {
        // An address literal has nothing to resolve: the proxy connects to it.
        if host.parse::<IpAddr>().is_ok() {
            return None;
        }
        let host = host.to_owned();
        Some(Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} has no address"),
                ));
            }
            Ok(Some(Resolved { addrs, bind: None }))
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::Config;

    fn cx(config: &Config) -> RequestCx<'_> {
        RequestCx {
            client: "127.0.0.1:5000".parse().unwrap(),
            config,
            listen_addrs: &[],
            intercepted: false,
        }
    }

    #[tokio::test]
    async fn resolves_names_with_the_system_resolver_and_leaves_literals() {
        let config = Config::default();
        let mut plugin = CustomDnsResolver;
        assert!(plugin.resolve_dns(&cx(&config), "127.0.0.1", 80).is_none());
        assert!(plugin.resolve_dns(&cx(&config), "::1", 80).is_none());
        let answer = plugin
            .resolve_dns(&cx(&config), "localhost", 8080)
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(!answer.addrs.is_empty());
        assert!(answer
            .addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
        assert_eq!(answer.bind, None);
    }
}
