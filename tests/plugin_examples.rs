//! Runs each Rust plugin in `plugin_examples/` through a real proxy (the examples are
//! compiled as modules here, so the code a user copies is the code under test).
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]

mod support;

#[path = "../plugin_examples/add_header.rs"]
mod add_header;
#[path = "../plugin_examples/block_hosts.rs"]
mod block_hosts;

use std::sync::Arc;

use support::*;

#[test]
fn add_header_example_adds_its_header_to_relayed_responses() {
    let origin = Origin::fixed("hello");
    let proxy = spawn_proxy_plugins(&[], |_| {}, vec![Arc::new(add_header::AddHeaderFactory)]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&get("http://alpha.test/", ""));
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hello");
        assert_eq!(
            resp.headers.get_all("x-proxied-by"),
            ["proxy (add_header example)"]
        );
    }
}

#[test]
fn block_hosts_example_refuses_listed_hosts_and_passes_others() {
    let origin = Origin::fixed("allowed");
    let proxy = spawn_proxy_plugins(&[], |_| {}, vec![Arc::new(block_hosts::BlockHostsFactory)]);
    proxy.route("alpha.test", &origin);
    proxy.route("ads.example", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://ads.example/banner", ""));
    let blocked = client.read_response();
    assert_eq!(blocked.status, 403);
    assert!(blocked.text().contains("ads.example is blocked"));
    // Same connection, another host: the refusal did not end the connection.
    client.send(&get("http://alpha.test/", ""));
    let allowed = client.read_response();
    assert_eq!((allowed.status, allowed.text().as_str()), (200, "allowed"));
    assert!(origin
        .requests()
        .iter()
        .all(|r| !r.target.contains("banner")));

    let connect = request(
        proxy.addr,
        b"CONNECT tracker.example:443 HTTP/1.1\r\nHost: tracker.example:443\r\n\r\n",
    );
    assert_eq!(connect.status, 403);
}
