//! The proxy's own resolver (`SystemResolver`) over real sockets: names go to the
//! servers `resolv.conf` names (a DNS server of the test's own on loopback), answers
//! are kept for their records' TTL, a name in the hosts file wins over a search
//! domain's, and failures get their codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use proxy::dns::SystemResolver;
use support::*;

/// Queries seen, by (lower-case name, type).
type Seen = Arc<Mutex<HashMap<(String, u16), usize>>>;

/// A DNS server on 127.0.0.1:0, answering from `zone`: (name, A address, TTL). A name
/// whose address is `None` gets no reply at all; a name not in the zone gets NXDOMAIN;
/// AAAA queries for a zone name get an empty answer.
fn dns_server(zone: &'static [(&'static str, Option<[u8; 4]>, u8)]) -> (SocketAddr, Seen) {
    dns_server_at("127.0.0.1:0".parse().unwrap(), zone, Duration::ZERO)
}

/// [`dns_server`] on `bind`, answering each query after `delay`.
fn dns_server_at(
    bind: SocketAddr,
    zone: &'static [(&'static str, Option<[u8; 4]>, u8)],
    delay: Duration,
) -> (SocketAddr, Seen) {
    let socket = UdpSocket::bind(bind).unwrap();
    let addr = socket.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let counts = seen.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let query = &buf[..n];
            let mut end = 12;
            let mut labels = Vec::new();
            while query[end] != 0 {
                let len = usize::from(query[end]);
                labels.push(String::from_utf8_lossy(&query[end + 1..end + 1 + len]).into_owned());
                end += 1 + len;
            }
            let question = &query[12..end + 5];
            let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
            let name = labels.join(".").to_ascii_lowercase();
            *counts
                .lock()
                .unwrap()
                .entry((name.clone(), qtype))
                .or_insert(0) += 1;
            thread::sleep(delay);
            let entry = zone.iter().find(|(zone_name, _, _)| *zone_name == name);
            // A negative answer carries the zone's SOA, as real servers send it (a
            // resolver trusts a negative answer by it).
            let (rcode, record) = match entry {
                Some((_, None, _)) => continue,
                None => (3, None),
                Some((_, Some(ip), ttl)) => (0, (qtype == 1).then_some((ip, ttl))),
            };
            let mut out = query[..2].to_vec();
            out.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1, 0, u8::from(record.is_some())]);
            out.extend_from_slice(&[0, u8::from(record.is_none()), 0, 0]);
            out.extend_from_slice(question);
            match record {
                Some((ip, ttl)) => {
                    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, *ttl, 0, 4]);
                    out.extend_from_slice(ip);
                }
                None => {
                    // SOA for the root: empty names, five 32-bit numbers.
                    out.extend_from_slice(&[0, 0, 6, 0, 1, 0, 0, 0, 60, 0, 22, 0, 0]);
                    out.extend_from_slice(&[0; 19]);
                    out.push(60);
                }
            }
            let _ = socket.send_to(&out, from);
        }
    });
    (addr, seen)
}

fn queries(seen: &Seen, name: &str) -> usize {
    seen.lock()
        .unwrap()
        .get(&(name.to_string(), 1))
        .copied()
        .unwrap_or(0)
}

/// `resolv.conf`, `hosts` and `nsswitch.conf` in a directory of the test's own.
struct Etc(PathBuf);

impl Etc {
    fn new(test: &str, hosts: &str) -> Etc {
        Etc::with_resolv_conf(
            test,
            "nameserver 127.0.0.1\nsearch corp.test\noptions timeout:1 attempts:1\n",
            hosts,
        )
    }

    fn with_resolv_conf(test: &str, resolv_conf: &str, hosts: &str) -> Etc {
        let dir = temp_path(&format!("system-dns-{test}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), resolv_conf).unwrap();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        std::fs::write(dir.join("nsswitch.conf"), "hosts: files dns\n").unwrap();
        Etc(dir)
    }

    /// A proxy resolving with these files and `server`.
    fn proxy(&self, server: SocketAddr) -> TestProxy {
        let resolver = SystemResolver::with_files(
            self.0.join("resolv.conf"),
            self.0.join("hosts"),
            self.0.join("nsswitch.conf"),
        )
        .with_port(server.port());
        spawn_proxy_with(&[], |config| config.resolver = Arc::new(resolver))
    }
}

impl Drop for Etc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An origin that closes after each response, so that every request needs a new
/// upstream connection (and so a resolved name).
fn closing_origin() -> Origin {
    Origin::spawn(|_| Reply::close(ok("from the origin")))
}

#[test]
fn names_are_asked_of_resolv_confs_servers_and_kept_for_their_ttl() {
    static ZONE: &[(&str, Option<[u8; 4]>, u8)] = &[
        ("origin.test", Some([127, 0, 0, 1]), 120),
        ("fleeting.test", Some([127, 0, 0, 1]), 0),
    ];
    let (server, seen) = dns_server(ZONE);
    let etc = Etc::new("ttl", "");
    let proxy = etc.proxy(server);
    let origin = closing_origin();
    let port = origin.addr.port();
    for _ in 0..3 {
        let resp = request(proxy.addr, &get(&format!("http://origin.test:{port}/"), ""));
        assert_eq!(resp.text(), "from the origin");
    }
    assert_eq!(queries(&seen, "origin.test"), 1, "a 120 s answer is reused");
    for _ in 0..2 {
        let resp = request(
            proxy.addr,
            &get(&format!("http://fleeting.test:{port}/"), ""),
        );
        assert_eq!(resp.text(), "from the origin");
    }
    assert_eq!(
        queries(&seen, "fleeting.test"),
        2,
        "a TTL of 0 is not cached"
    );
    assert_eq!(origin.accepted(), 5);
}

#[test]
fn a_name_in_the_hosts_file_wins_over_a_search_domains_answer() {
    // DNS would find `myhost.corp.test`, an address where nothing listens.
    static ZONE: &[(&str, Option<[u8; 4]>, u8)] = &[("myhost.corp.test", Some([127, 0, 0, 2]), 60)];
    let (server, seen) = dns_server(ZONE);
    let etc = Etc::new("hosts", "127.0.0.1 localhost\n127.0.0.1 myhost\n");
    let proxy = etc.proxy(server);
    let origin = closing_origin();
    let resp = request(
        proxy.addr,
        &get(&format!("http://myhost:{}/", origin.addr.port()), ""),
    );
    assert_eq!(resp.text(), "from the origin");
    assert_eq!(queries(&seen, "myhost.corp.test"), 0, "no DNS query at all");
    assert_eq!(queries(&seen, "myhost"), 0);
}

#[test]
fn unknown_names_are_dns_error_and_silent_servers_dns_timeout() {
    // Silent for the name and for its search-domain form alike.
    static ZONE: &[(&str, Option<[u8; 4]>, u8)] =
        &[("silent.test", None, 0), ("silent.test.corp.test", None, 0)];
    let (server, seen) = dns_server(ZONE);
    let etc = Etc::new("errors", "");
    let proxy = etc.proxy(server);
    request(proxy.addr, &get("http://missing.test/", "")).assert_error(502, "dns_error");
    assert!(queries(&seen, "missing.test") >= 1);
    // The server never answers: hickory gives up after `timeout:1 attempts:1`, well
    // before the proxy's own connect timeout.
    request(proxy.addr, &get("http://silent.test/", "")).assert_error(504, "dns_timeout");
    // `attempts:1` is one try per server, as in glibc (hickory counts retries).
    assert_eq!(queries(&seen, "silent.test"), 1);
}

#[test]
fn the_first_nameserver_answers_even_when_a_later_one_is_faster() {
    // Split-horizon DNS: the first server knows the internal name (and is slow), the
    // second would say NXDOMAIN at once. glibc asks the second only if the first fails.
    static INTERNAL: &[(&str, Option<[u8; 4]>, u8)] =
        &[("internal.test", Some([127, 0, 0, 1]), 60)];
    static PUBLIC: &[(&str, Option<[u8; 4]>, u8)] = &[];
    let (first, _) = dns_server_at(
        "127.0.0.1:0".parse().unwrap(),
        INTERNAL,
        Duration::from_millis(50),
    );
    let second_addr = SocketAddr::new([127, 0, 0, 2].into(), first.port());
    let (_, second_seen) = dns_server_at(second_addr, PUBLIC, Duration::ZERO);
    let etc = Etc::with_resolv_conf(
        "split",
        "nameserver 127.0.0.1\nnameserver 127.0.0.2\noptions timeout:5 attempts:1\n",
        "",
    );
    let proxy = etc.proxy(first);
    let origin = closing_origin();
    for i in 0..3 {
        let resp = request(
            proxy.addr,
            &get(
                &format!("http://internal.test:{}/{i}", origin.addr.port()),
                "",
            ),
        );
        assert_eq!(resp.text(), "from the origin");
    }
    let leaked = second_seen.lock().unwrap().clone();
    assert!(leaked.is_empty(), "asked of the second server: {leaked:?}");
}
