//! The resolve hook (`Plugin::resolve_dns`, proxy.py's `resolve_dns`) and
//! CustomDnsResolverPlugin, over real sockets: a plugin's answer wins over the proxy's
//! resolver, `None` falls back to it, errors and loops get their codes, a `bind`
//! address is the source the origin sees and such connections are not pooled.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use proxy::plugin::{Plugin, PluginFactory, RequestCx, ResolveFuture, Resolved};
use support::*;

/// What the test plugin answers for `host`.
#[derive(Clone, Copy)]
enum Answer {
    /// These addresses, connected from `bind`.
    To(SocketAddr, Option<IpAddr>),
    /// Leave it to the proxy's resolver.
    Fallback,
    /// A failed lookup.
    Fail,
}

/// Resolves `name` as told; other names are left to the next plugin.
struct Fixed {
    name: &'static str,
    answer: Answer,
}

impl Plugin for Fixed {
    fn name(&self) -> &'static str {
        "test.Fixed"
    }

    fn resolve_dns(&mut self, _: &RequestCx<'_>, host: &str, port: u16) -> Option<ResolveFuture> {
        if host != self.name {
            return None;
        }
        assert_eq!(port, 80, "the port of the request reaches the hook");
        let answer = self.answer;
        Some(Box::pin(async move {
            match answer {
                Answer::To(addr, bind) => Ok(Some(Resolved {
                    addrs: vec![addr],
                    bind,
                })),
                Answer::Fallback => Ok(None),
                Answer::Fail => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            }
        }))
    }
}

struct FixedFactory {
    name: &'static str,
    answer: Answer,
}

impl PluginFactory for FixedFactory {
    fn name(&self) -> &'static str {
        "test.Fixed"
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(Fixed {
            name: self.name,
            answer: self.answer,
        })
    }
}

fn with_plugin(name: &'static str, answer: Answer) -> TestProxy {
    spawn_proxy_plugins(&[], |_| {}, vec![Arc::new(FixedFactory { name, answer })])
}

/// An origin that answers every request with the IP address it was connected from,
/// keeping connections open, and counts its connections.
struct PeerEcho {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl PeerEcho {
    fn spawn() -> PeerEcho {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let peer = stream.peer_addr().unwrap().ip().to_string();
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    loop {
                        // Requests here are GETs without bodies: a head ends at an empty line.
                        let mut line = String::new();
                        loop {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {}
                            }
                        }
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{peer}",
                            peer.len()
                        );
                        if writer.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        PeerEcho { addr, accepted }
    }
}

#[test]
fn a_plugins_answer_wins_and_its_bind_address_is_the_source() {
    let origin = PeerEcho::spawn();
    let bind: IpAddr = "127.0.0.2".parse().unwrap();
    let proxy = with_plugin("anywhere.test", Answer::To(origin.addr, Some(bind)));
    // The proxy's own resolver does not know the name: only the plugin does.
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&get("http://anywhere.test/", ""));
        assert_eq!(client.read_response().text(), "127.0.0.2");
    }
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        2,
        "a connection from a plugin's bind address serves one exchange and is not pooled"
    );
}

#[test]
fn without_a_bind_address_upstream_connections_are_pooled() {
    let origin = PeerEcho::spawn();
    let proxy = with_plugin("anywhere.test", Answer::To(origin.addr, None));
    let mut client = proxy.connect();
    for _ in 0..3 {
        client.send(&get("http://anywhere.test/", ""));
        assert_eq!(client.read_response().text(), "127.0.0.1");
    }
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn connect_tunnels_ask_the_hook_too() {
    let origin = PeerEcho::spawn();
    let proxy = with_plugin("anywhere.test", Answer::To(origin.addr, None));
    let mut client = proxy.connect();
    client.open_tunnel("anywhere.test:80");
    client.send(&get("/", ""));
    assert_eq!(client.read_response().text(), "127.0.0.1");
}

#[test]
fn none_leaves_the_name_to_the_proxys_resolver() {
    let origin = Origin::fixed("from the proxy's resolver");
    let proxy = with_plugin("alpha.test", Answer::Fallback);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!(resp.text(), "from the proxy's resolver");
}

#[test]
fn a_failed_lookup_is_502_dns_error() {
    let origin = Origin::fixed("never reached");
    let proxy = with_plugin("alpha.test", Answer::Fail);
    // The proxy's resolver knows the name, but the plugin's answer comes first.
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    resp.assert_error(502, "dns_error");
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn a_plugin_cannot_route_a_request_back_into_the_proxy() {
    // The proxy's address is known only once it listens, so the plugin reads it from
    // a cell filled in after the start.
    let target = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    struct ToCell(Arc<std::sync::Mutex<Option<SocketAddr>>>);
    impl Plugin for ToCell {
        fn name(&self) -> &'static str {
            "test.ToCell"
        }
        fn resolve_dns(&mut self, _: &RequestCx<'_>, _: &str, _: u16) -> Option<ResolveFuture> {
            let addr = (*self.0.lock().unwrap())?;
            Some(Box::pin(async move {
                Ok(Some(Resolved {
                    addrs: vec![addr],
                    bind: None,
                }))
            }))
        }
    }
    struct ToCellFactory(Arc<std::sync::Mutex<Option<SocketAddr>>>);
    impl PluginFactory for ToCellFactory {
        fn name(&self) -> &'static str {
            "test.ToCell"
        }
        fn build(&self) -> Box<dyn Plugin> {
            Box::new(ToCell(Arc::clone(&self.0)))
        }
    }
    let proxy = spawn_proxy_plugins(
        &[],
        |_| {},
        vec![Arc::new(ToCellFactory(Arc::clone(&target)))],
    );
    *target.lock().unwrap() = Some(proxy.addr);
    let resp = request(proxy.addr, &get("http://elsewhere.test/", ""));
    resp.assert_error(508, "proxy_loop_detected");
}

#[test]
fn custom_dns_resolver_plugin_resolves_with_the_system_resolver() {
    let origin = Origin::fixed("found through getaddrinfo");
    let proxy = spawn_proxy(&["--plugins", "proxy.plugin.CustomDnsResolverPlugin"]);
    let url = format!("http://localhost:{}/", origin.addr.port());
    let resp = request(proxy.addr, &get(&url, ""));
    assert_eq!(resp.text(), "found through getaddrinfo");
    // Address literals are connected to as they are.
    let resp = request(proxy.addr, &get(&origin.url("/"), ""));
    assert_eq!(resp.text(), "found through getaddrinfo");
}
