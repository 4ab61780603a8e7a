//! Destination policy at the edge: `--connect-ports` for CONNECT, `--deny-destinations`
//! on the address actually connected to (after DNS), for forwarding and CONNECT alike.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use support::*;

fn connect_request(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes()
}

#[test]
fn connect_to_a_port_not_listed_is_403_and_never_connected() {
    let origin = Origin::fixed("tunnelled");
    let proxy = spawn_proxy(&["--connect-ports", "443,563"]);
    let resp = request(
        proxy.handle().local_addr(),
        &connect_request(&origin.addr.to_string()),
    );
    resp.assert_error(403, "http_request_denied");
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn connect_to_a_listed_port_or_range_is_tunnelled() {
    let origin = Origin::fixed("tunnelled");
    let port = origin.addr.port();
    let list = format!("443,{}-{}", port - 1, port.saturating_add(1));
    let proxy = spawn_proxy(&["--connect-ports", &list]);
    let mut client = proxy.connect();
    client.open_tunnel(&origin.addr.to_string());
    client.send(&get("/", ""));
    assert_eq!(client.read_response().text(), "tunnelled");
}

#[test]
fn denied_literal_addresses_are_403_for_forwarding_and_connect() {
    let origin = Origin::fixed("must not be reached");
    let proxy = spawn_proxy(&["--deny-destinations", "private"]);
    let port = origin.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let resp = request(proxy.handle().local_addr(), &get(&url, ""));
        resp.assert_error(403, "destination_ip_prohibited");
    }
    let resp = request(
        proxy.handle().local_addr(),
        &connect_request(&format!("127.0.0.1:{port}")),
    );
    resp.assert_error(403, "destination_ip_prohibited");
    assert_eq!(origin.accepted(), 0);
}

/// A public-looking name that resolves to a denied address (DNS rebinding) is refused:
/// the check is on the resolved address, not on the name.
#[test]
fn names_resolving_to_denied_addresses_are_403() {
    let origin = Origin::fixed("must not be reached");
    let proxy = spawn_proxy(&["--deny-destinations", "10.0.0.0/8, private"]);
    proxy.route("public.example", &origin);
    let resp = request(
        proxy.handle().local_addr(),
        &get("http://public.example/", ""),
    );
    resp.assert_error(403, "destination_ip_prohibited");
    let port = origin.addr.port();
    let resp = request(
        proxy.handle().local_addr(),
        &connect_request(&format!("public.example:{port}")),
    );
    resp.assert_error(403, "destination_ip_prohibited");
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn addresses_outside_the_deny_list_are_forwarded() {
    let origin = Origin::fixed("allowed");
    let proxy = spawn_proxy(&["--deny-destinations", "10.0.0.0/8,169.254.169.254,fd00::/8"]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.handle().local_addr(), &get("http://alpha.test/", ""));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "allowed");
}

/// Connecting to the unspecified address reaches this host's loopback (Linux): a deny
/// list naming loopback, without `private`'s 0.0.0.0/8 and ::/128, refuses it too.
#[test]
fn the_unspecified_address_is_refused_with_loopback() {
    let origin = Origin::fixed("must not be reached");
    let proxy = spawn_proxy(&["--deny-destinations", "127.0.0.0/8,::1/128"]);
    let port = origin.addr.port();
    for url in [
        format!("http://0.0.0.0:{port}/"),
        format!("http://[::ffff:0.0.0.0]:{port}/"),
        format!("http://[::]:{port}/"),
    ] {
        let resp = request(proxy.handle().local_addr(), &get(&url, ""));
        resp.assert_error(403, "destination_ip_prohibited");
        let details = resp.headers.get("proxy-status").unwrap();
        assert!(
            !details.contains("127.0.0"),
            "the deny list leaked: {details}"
        );
    }
    let resp = request(
        proxy.handle().local_addr(),
        &connect_request(&format!("0.0.0.0:{port}")),
    );
    resp.assert_error(403, "destination_ip_prohibited");
    assert_eq!(origin.accepted(), 0);
}
