//! Listening: several hostnames, several ports, several workers on one port. The
//! embedding API (`proxy::start`, `local_addrs`) tells which ports were bound.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

use proxy::Config;
use support::*;

/// Sends a GET for `http://alpha.test<path>` through the proxy listening at `addr`.
#[track_caller]
fn assert_served_at(addr: SocketAddr, path: &str) {
    let resp = request(addr, &get(&format!("http://alpha.test{path}"), ""));
    assert_eq!(resp.status, 200, "through {addr}");
    assert_eq!(resp.text(), path, "through {addr}");
}

#[test]
fn hostnames_listen_on_ipv4_and_ipv6() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: [::1] cannot be bound on this machine; IPv6 listening not tested");
        return;
    }
    let origin = Origin::echo_target();
    let proxy = spawn_proxy(&["--hostname", "127.0.0.1", "--hostnames", "::1"]);
    proxy.route("alpha.test", &origin);

    let addrs = proxy.handle().local_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0].ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(addrs[1].ip(), "::1".parse::<IpAddr>().unwrap());
    for addr in &addrs {
        assert_ne!(addr.port(), 0, "{addrs:?}");
    }
    assert_served_at(addrs[0], "/via-v4");
    assert_served_at(addrs[1], "/via-v6");
}

#[test]
fn port_zero_twice_is_one_listener() {
    // `--port 0 --ports 0` names the same (address, port) twice: it is listed once.
    let proxy = spawn_proxy(&["--ports", "0"]);
    assert_eq!(proxy.handle().local_addrs().len(), 1);
}

#[test]
fn ports_adds_a_second_port_on_the_same_hostname() {
    let origin = Origin::echo_target();
    let names = Arc::new(MapResolver::default());
    names.insert("alpha.test", origin.addr);

    // A fixed extra port must be free: take one the kernel just handed out, and try
    // again in the unlikely case another process grabbed it in between.
    let mut attempts = 0;
    let (handle, extra) = loop {
        attempts += 1;
        let extra = refused_addr().port();
        let argv = [
            "proxy",
            "--port",
            "0",
            "--ports",
            &extra.to_string(),
            "--num-workers",
            "1",
        ];
        let mut config = Config::from_args(argv).unwrap();
        config.resolver = names.clone();
        match proxy::start(config) {
            Ok(handle) => break (handle, extra),
            Err(e) if attempts < 5 => eprintln!("port {extra} taken meanwhile ({e}); again"),
            Err(e) => panic!("proxy::start: {e}"),
        }
    };

    let addrs = handle.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_ne!(addrs[0].port(), 0);
    assert_ne!(addrs[0].port(), extra);
    assert_eq!(addrs[1], SocketAddr::from(([127, 0, 0, 1], extra)));
    assert_served_at(addrs[0], "/first-port");
    assert_served_at(addrs[1], "/second-port");
    handle.stop();
}

#[test]
fn two_workers_share_one_ephemeral_port_and_both_accept() {
    let origin = Origin::echo_target();
    let proxy = spawn_proxy(&["--num-workers", "2"]);
    proxy.route("alpha.test", &origin);
    assert_eq!(proxy.handle().local_addrs(), [proxy.addr]);

    // Sequential requests, each on a fresh client connection. Each worker opens one
    // upstream connection and then reuses it from its own pool, so the origin sees
    // one connection per worker that accepted something. The kernel hashes each new
    // connection to a worker: all 20 on one worker has a chance of 2^-19.
    for i in 0..20 {
        assert_served_at(proxy.addr, &format!("/sequential/{i}"));
    }
    assert_eq!(
        origin.accepted(),
        2,
        "upstream connections (one per worker that accepted)"
    );

    // And 20 connections open at once are all served.
    let mut clients: Vec<Wire> = (0..20).map(|_| proxy.connect()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&get(&format!("http://alpha.test/client/{i}"), ""));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let resp = client.read_response();
        assert_eq!(resp.status, 200, "client {i}");
        assert_eq!(resp.text(), format!("/client/{i}"));
    }
    assert_eq!(origin.requests().len(), 40);
}

/// A port another socket holds (without --reuse-port) stops the start with one
/// `proxy: error:` line on stderr, even when the log goes to a file, and exit 1.
#[test]
fn a_port_in_use_is_reported_on_stderr_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let log = temp_path("port-in-use.log");
    // `run_to_end` listens on port 0; the taken port comes as an extra one.
    let out = ProxyBinary::run_to_end(&["--ports", &port, "--log-file", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("proxy: error: ") && stderr.contains(&port),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
