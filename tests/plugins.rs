//! proxy.py's built-in plugins over real sockets, with their flags: basic auth, PAC,
//! the filters (and their order against RedirectToCustomServer), short links, the mock
//! REST API, the man in the middle, the request header one, and `--plugins` errors.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]

mod support;

use support::*;

const ALICE: &str = "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"; // alice:secret
const BOB: &str = "Proxy-Authorization: bAsIc Ym9iOmh1bnRlcjI=\r\n"; // bob:hunter2, odd case

#[test]
fn basic_auth_is_checked_on_every_request_of_a_keep_alive_connection() {
    let origin = Origin::echo_target();
    let proxy = spawn_proxy(&[
        "--basic-auth",
        "alice:secret",
        "--basic-auth",
        "bob:hunter2",
    ]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/one", ALICE));
    assert_eq!(client.read_response().text(), "/one");
    client.send(&get("http://alpha.test/two", BOB));
    assert_eq!(client.read_response().text(), "/two");
    // The third request on the same connection forgets its credentials: refused.
    client.send(&get("http://alpha.test/three", ""));
    let refused = client.read_response();
    assert_eq!(refused.status, 407);
    assert_eq!(
        refused.headers.get("proxy-authenticate"),
        Some("Basic realm=\"proxy\"")
    );
    client.expect_eof();
    let seen: Vec<String> = origin.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(seen, ["/one", "/two"]);
    assert!(
        origin
            .requests()
            .iter()
            .all(|r| !r.headers.has("proxy-authorization")),
        "credentials never reach the origin"
    );
}

#[test]
fn basic_auth_guards_connect_including_headerless_http10() {
    let proxy = spawn_proxy(&["--basic-auth", "alice:secret"]);
    let wrong = "Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"; // alice:wrong
    for req in [
        "CONNECT 127.0.0.1:9 HTTP/1.0\r\n\r\n".to_string(),
        "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n".to_string(),
        format!("CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n{wrong}\r\n"),
    ] {
        assert_eq!(request(proxy.addr, req.as_bytes()).status, 407, "{req:?}");
    }
    // With credentials the CONNECT gets past auth (the port is closed: 502, not 407).
    let ok = format!(
        "CONNECT {} HTTP/1.1\r\nHost: x\r\n{ALICE}\r\n",
        refused_addr()
    );
    request(proxy.addr, ok.as_bytes()).assert_error(502, "connection_refused");
}

#[test]
fn pac_file_is_served_with_its_content_type_and_the_connection_kept() {
    let pac = "function FindProxyForURL(url, host) { return \"PROXY 127.0.0.1:8899\"; }";
    let proxy = spawn_proxy(&[
        "--pac-file",
        pac,
        "--pac-file-url-path",
        "/proxy.pac",
        "--basic-auth",
        "a:b",
    ]);
    let mut client = proxy.connect();
    client.send(b"GET /proxy.pac HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(
        resp.status, 200,
        "the PAC file is fetched without proxy credentials"
    );
    assert_eq!(
        resp.headers.get("content-type"),
        Some("application/x-ns-proxy-autoconfig")
    );
    assert_eq!(resp.text(), pac);
    client.send(b"GET /other HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(client.read_response().status, 404);
}

#[test]
fn filter_by_upstream_host_answers_418_for_http_and_connect() {
    let origin = Origin::fixed("fine");
    let proxy = spawn_proxy(&[
        "--plugins",
        "proxy.plugin.FilterByUpstreamHostPlugin",
        "--filtered-upstream-hosts",
        "blocked.test",
    ]);
    proxy.route("alpha.test", &origin);
    let teapot = b"HTTP/1.1 418 I'm a tea pot\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_exchange(proxy.addr, &get("http://blocked.test/x", "")),
        teapot
    );
    assert_eq!(
        raw_exchange(
            proxy.addr,
            b"CONNECT blocked.test:443 HTTP/1.1\r\nHost: blocked.test:443\r\n\r\n"
        ),
        teapot
    );
    // The fully qualified spelling names the same host.
    assert_eq!(
        raw_exchange(proxy.addr, &get("http://Blocked.Test./x", "")),
        teapot
    );
    assert_eq!(
        request(proxy.addr, &get("http://alpha.test/", "")).text(),
        "fine"
    );
}

#[test]
fn plugin_order_decides_between_filter_and_redirect() {
    let filtered = ["--filtered-upstream-hosts", "facebook.com"];
    // Filter first: it sees facebook.com and refuses it.
    let proxy = spawn_proxy(&[
        "--plugins",
        "FilterByUpstreamHostPlugin,RedirectToCustomServerPlugin",
        filtered[0],
        filtered[1],
    ]);
    assert_eq!(
        request(proxy.addr, &get("http://facebook.com/", "")).status,
        418
    );
    // Redirect first: the request is handed to this proxy's own web server before the
    // filter runs, so the filter never matches; the web server answers (here its 404).
    let proxy = spawn_proxy(&[
        "--plugins",
        "RedirectToCustomServerPlugin",
        "--plugins",
        "FilterByUpstreamHostPlugin",
        filtered[0],
        filtered[1],
    ]);
    let resp = request(proxy.addr, &get("http://facebook.com/", ""));
    assert_eq!(resp.status, 404, "{}", resp.text());
}

#[test]
fn redirect_to_custom_server_is_answered_by_the_built_in_web_server() {
    let origin = Origin::fixed("origin");
    let proxy = spawn_proxy(&[
        "--enable-web-server",
        "--plugins",
        "RedirectToCustomServerPlugin,WebServerPlugin",
        "--pac-file",
        "function FindProxyForURL(url, host) { return 'DIRECT'; }",
        "--pac-file-url-path",
        "/proxy.pac",
    ]);
    proxy.route("origin.test", &origin);
    // The web route and the PAC file (placed before the redirect in the chain) answer
    // by path, whatever the host was; the origin is never contacted.
    let route = request(
        proxy.addr,
        &get("http://origin.test/http-route-example", ""),
    );
    assert_eq!(
        (route.status, route.text().as_str()),
        (200, "HTTP route response")
    );
    let pac = request(proxy.addr, &get("http://origin.test/proxy.pac", ""));
    assert_eq!(pac.status, 200);
    assert!(pac.text().contains("FindProxyForURL"));
    assert_eq!(
        request(proxy.addr, &get("http://origin.test/elsewhere", "")).status,
        404
    );
    assert_eq!(origin.accepted(), 0);
    // CONNECT is not redirected.
    let mut client = proxy.connect();
    client.open_tunnel("origin.test:80");
    client.send(&get("/", ""));
    assert_eq!(client.read_response().text(), "origin");
}

#[test]
fn filter_by_client_ip_refuses_listed_clients() {
    let origin = Origin::fixed("fine");
    let blocked = spawn_proxy(&[
        "--plugins",
        "FilterByClientIpPlugin",
        "--filtered-client-ips",
        "127.0.0.1",
    ]);
    blocked.route("alpha.test", &origin);
    assert_eq!(
        request(blocked.addr, &get("http://alpha.test/", "")).status,
        418
    );
    let allowed = spawn_proxy(&[
        "--plugins",
        "FilterByClientIpPlugin",
        "--filtered-client-ips-mode",
        "whitelist",
        "--filtered-client-ips",
        "127.0.0.1",
    ]);
    allowed.route("alpha.test", &origin);
    assert_eq!(
        request(allowed.addr, &get("http://alpha.test/", "")).text(),
        "fine"
    );
}

#[test]
fn short_links_redirect_without_an_upstream() {
    let proxy = spawn_proxy(&["--plugin", "ShortLinkPlugin"]);
    let resp = request(proxy.addr, &get("http://t/imoracle", ""));
    assert_eq!(resp.status, 303);
    assert_eq!(
        resp.headers.get("location"),
        Some("http://twitter.com/imoracle")
    );
    assert_eq!(
        request(proxy.addr, &get("http://nosuchkey/", "")).status,
        404
    );
}

#[test]
fn proposed_rest_api_mocks_its_host_and_forwards_others() {
    let origin = Origin::fixed("real");
    let proxy = spawn_proxy(&["--plugins", "proxy.plugin.ProposedRestApiPlugin"]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://api.example.com/v1/users/", ""));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers.get("content-encoding"), Some("gzip"));
    let json: serde_json::Value = serde_json::from_slice(&gunzip(&resp.body.data)).unwrap();
    assert_eq!(json["results"][1]["username"], "someone");
    assert_eq!(
        request(proxy.addr, &get("http://api.example.com/v1/nope/", "")).status,
        404
    );
    assert_eq!(
        request(proxy.addr, &get("http://alpha.test/", "")).text(),
        "real"
    );
}

#[test]
fn man_in_the_middle_replaces_every_response_and_keeps_the_client() {
    let origin = Origin::fixed("the origin's own words");
    let proxy = spawn_proxy(&["--plugins", "ManInTheMiddlePlugin"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&get("http://alpha.test/", ""));
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(gunzip(&resp.body.data), b"Hello from man in the middle");
    }
    // The origin's unread bodies mean its connections were not reused.
    assert_eq!(origin.accepted(), 2);
}

#[test]
fn modify_request_header_adds_its_header_upstream() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&["--plugins", "ModifyRequestHeaderPlugin"]);
    proxy.route("alpha.test", &origin);
    request(proxy.addr, &get("http://alpha.test/", ""));
    let reqs = origin.requests();
    assert_eq!(reqs[0].headers.get_all("x-proxy-py-version").len(), 1);
}

#[test]
fn filter_by_url_regex_blocks_matching_urls_with_proxy_py_bytes() {
    let origin = Origin::echo_target();
    let rules = temp_path("url-rules.json");
    std::fs::write(
        &rules,
        r#"[{"regex": "alpha.test/ads/.*", "notes": "ads"},
            {"regex": "^beta\\.test$", "notes": "the whole of beta, CONNECT included"}]"#,
    )
    .unwrap();
    let proxy = spawn_proxy(&[
        "--plugins",
        "FilterByURLRegexPlugin",
        "--filtered-url-regex-config",
        rules.to_str().unwrap(),
    ]);
    proxy.route("alpha.test", &origin);
    proxy.route("beta.test", &origin);
    let blocked = b"HTTP/1.1 404 Blocked\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    // The rule's path, and other spellings of it (escapes, dot and empty segments).
    for url in [
        "http://alpha.test/ads/banner.png",
        "http://alpha.test/%61ds/banner.png",
        "http://alpha.test/news/../ads/banner.png",
        "http://alpha.test//ads/banner.png",
    ] {
        assert_eq!(raw_exchange(proxy.addr, &get(url, "")), blocked, "{url}");
    }
    assert_eq!(
        raw_exchange(
            proxy.addr,
            b"CONNECT beta.test:443 HTTP/1.1\r\nHost: beta.test:443\r\n\r\n"
        ),
        blocked
    );
    // No rule matches these: the port is not part of the URL, and the second rule
    // wants the bare host.
    let resp = request(proxy.addr, &get("http://alpha.test:80/news/ads/", ""));
    assert_eq!(resp.text(), "/news/ads/");
    let resp = request(proxy.addr, &get("http://beta.test/", ""));
    assert_eq!(resp.text(), "/");
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn bad_url_regex_configs_exit_64_naming_the_problem() {
    let rules = temp_path("bad-url-rules.json");
    for (text, want) in [
        ("not json", "not JSON"),
        (r#"[{"notes": "no regex"}]"#, "rule 1"),
        (r#"[{"regex": "ok"}, {"regex": "(?<=x)y"}]"#, "rule 2"),
    ] {
        std::fs::write(&rules, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--port", "0", "--plugins", "FilterByURLRegexPlugin"])
            .arg("--filtered-url-regex-config")
            .arg(&rules)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{text}: {stderr}");
    }
}

#[test]
fn unknown_plugin_name_exits_64_listing_the_valid_ones() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["--port", "0", "--plugins", "proxy.plugin.NoSuchPlugin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NoSuchPlugin"), "{stderr}");
    assert!(
        stderr.contains("proxy.plugin.FilterByUpstreamHostPlugin"),
        "{stderr}"
    );
}

/// An origin answering `/chunked` with a chunked body and anything else with a
/// Content-Length one.
fn chunked_or_plain_origin() -> Origin {
    Origin::spawn(|req| {
        if req.target == "/chunked" {
            support::Reply::keep(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )
        } else {
            support::Reply::keep(ok("plain body"))
        }
    })
}

#[test]
fn modify_chunk_response_rewrites_chunked_bodies_as_one_chunk() {
    let origin = chunked_or_plain_origin();
    let proxy = spawn_proxy(&["--plugins", "proxy.plugin.ModifyChunkResponsePlugin"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/chunked", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert!(resp.body.chunked);
    assert_eq!(
        resp.body.raw,
        b"1d\r\nmodify\nchunk\nresponse\nplugin\n\r\n0\r\n\r\n"
    );
    // Same connection: a Content-Length response passes unchanged.
    client.send(&get("http://alpha.test/plain", ""));
    let resp = client.read_response();
    assert_eq!(resp.text(), "plain body");
    assert_eq!(resp.headers.get("content-length"), Some("10"));
    // The chunked body was read to its end, so the upstream connection was reused.
    assert_eq!(origin.accepted(), 1);
}

#[test]
fn modify_chunk_response_sends_http10_clients_a_close_delimited_body() {
    let origin = chunked_or_plain_origin();
    let proxy = spawn_proxy(&["--plugins", "ModifyChunkResponsePlugin"]);
    proxy.route("alpha.test", &origin);
    let raw = raw_exchange(
        proxy.addr,
        b"GET http://alpha.test/chunked HTTP/1.0\r\nHost: alpha.test\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\nmodify\nchunk\nresponse\nplugin\n"),
        "{text}"
    );
}

#[test]
fn modify_post_data_replaces_request_bodies_with_an_exact_length() {
    let origin = Origin::fixed("seen");
    let proxy = spawn_proxy(&["--plugins", "proxy.plugin.ModifyPostDataPlugin"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/a HTTP/1.1\r\nHost: alpha.test\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\n{\"key\": \"value\"}",
    );
    assert_eq!(client.read_response().text(), "seen");
    client.send(
        b"POST http://alpha.test/b HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    );
    assert_eq!(client.read_response().text(), "seen");
    client.send(&get("http://alpha.test/c", ""));
    assert_eq!(client.read_response().text(), "seen");
    // An empty chunked body is no body, as `Content-Length: 0` is: nothing is added.
    client.send(
        b"POST http://alpha.test/d HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(client.read_response().text(), "seen");
    let reqs = origin.requests();
    assert_eq!(reqs.len(), 4);
    assert!(reqs[3].body.data.is_empty(), "an empty body stays empty");
    for req in &reqs[..2] {
        assert_eq!(req.body.data, b"{\"key\": \"modified\"}", "{}", req.target);
        assert_eq!(req.headers.get("content-length"), Some("19"));
        assert_eq!(req.headers.get("content-type"), Some("application/json"));
        assert!(!req.headers.has("transfer-encoding"));
    }
    assert!(
        reqs[2].body.data.is_empty(),
        "a GET without a body is left alone"
    );
}

#[test]
fn modify_post_data_answers_expect_100_continue_itself() {
    let origin = Origin::fixed("seen");
    let proxy = spawn_proxy(&["--plugins", "ModifyPostDataPlugin"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"PUT http://alpha.test/x HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(client.read_response().status, 100);
    client.send(b"hello");
    assert_eq!(client.read_response().text(), "seen");
    let reqs = origin.requests();
    assert!(
        !reqs[0].headers.has("expect"),
        "the origin is not asked to continue"
    );
    assert_eq!(reqs[0].body.data, b"{\"key\": \"modified\"}");
}

#[test]
fn a_body_too_large_to_buffer_for_a_plugin_is_413() {
    let origin = Origin::fixed("seen");
    let proxy = spawn_proxy(&["--plugins", "ModifyPostDataPlugin"]);
    proxy.route("alpha.test", &origin);
    let resp = request(
        proxy.addr,
        b"POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 999999999\r\n\r\n",
    );
    resp.assert_error(413, "http_request_body_too_large");
    assert!(origin.requests().is_empty());
}

/// Panics on every request: the exchange must get a clean 500, the worker must live on.
struct Panicky;

impl proxy::plugin::Plugin for Panicky {
    fn name(&self) -> &'static str {
        "panicky"
    }
    fn on_request(
        &mut self,
        _cx: &proxy::plugin::RequestCx<'_>,
        req: &mut proxy::http::RequestHead,
        _target: &mut proxy::http::Target,
    ) -> Result<proxy::plugin::Flow, proxy::plugin::PluginError> {
        if req.header("x-boom").is_some() {
            panic!("boom");
        }
        Ok(proxy::plugin::Flow::Continue)
    }
}

struct PanickyFactory;

impl proxy::plugin::PluginFactory for PanickyFactory {
    fn name(&self) -> &'static str {
        "panicky"
    }
    fn build(&self) -> Box<dyn proxy::plugin::Plugin> {
        Box::new(Panicky)
    }
}

#[test]
fn a_panicking_plugin_costs_its_exchange_a_500_not_the_worker() {
    let origin = Origin::fixed("fine");
    let proxy = spawn_proxy_plugins(&[], |_| {}, vec![std::sync::Arc::new(PanickyFactory)]);
    proxy.route("alpha.test", &origin);
    request(proxy.addr, &get("http://alpha.test/", "X-Boom: 1\r\n"))
        .assert_error(500, "proxy_internal_error");
    // The one worker still serves new connections.
    for _ in 0..3 {
        assert_eq!(
            request(proxy.addr, &get("http://alpha.test/", "")).text(),
            "fine"
        );
    }
}

#[test]
fn program_name_labels_local_clients_in_the_access_log() {
    let origin = Origin::fixed("ok");
    let log_file = temp_path("program-name-log");
    let proxy = ProxyBinary::spawn(&[
        "--plugins",
        "ProgramNamePlugin",
        "--log-file",
        log_file.to_str().unwrap(),
    ]);
    let mut client = Wire::connect(proxy.addr);
    let client_port = client.stream().local_addr().unwrap().port();
    client.send(&get(&origin.url("/named"), ""));
    assert_eq!(client.read_response().text(), "ok");
    drop(client);
    assert_eq!(proxy.terminate().code(), Some(0));
    let log = std::fs::read_to_string(&log_file).unwrap();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let expected = format!("{}:{client_port} - GET ", me.trim_end());
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
}

/// Records the hooks it sees, in order.
struct Lifecycle(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

impl proxy::plugin::Plugin for Lifecycle {
    fn name(&self) -> &'static str {
        "test.Lifecycle"
    }
    fn on_request(
        &mut self,
        _: &proxy::plugin::RequestCx<'_>,
        _: &mut proxy::http::RequestHead,
        _: &mut proxy::http::Target,
    ) -> Result<proxy::plugin::Flow, proxy::plugin::PluginError> {
        self.0.lock().unwrap().push("request");
        Ok(proxy::plugin::Flow::Continue)
    }
    fn on_complete(&mut self, _: &proxy::plugin::RequestCx<'_>, _: Option<u16>) {
        self.0.lock().unwrap().push("complete");
    }
    fn on_close(&mut self, _: &proxy::plugin::RequestCx<'_>) {
        self.0.lock().unwrap().push("close");
    }
}

struct LifecycleFactory(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

impl proxy::plugin::PluginFactory for LifecycleFactory {
    fn name(&self) -> &'static str {
        "test.Lifecycle"
    }
    fn build(&self) -> Box<dyn proxy::plugin::Plugin> {
        Box::new(Lifecycle(std::sync::Arc::clone(&self.0)))
    }
}

#[test]
fn on_close_follows_the_last_exchange_of_a_connection_once() {
    let origin = Origin::fixed("fine");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut proxy = spawn_proxy_plugins(
        &[],
        |_| {},
        vec![std::sync::Arc::new(LifecycleFactory(
            std::sync::Arc::clone(&log),
        ))],
    );
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&get("http://alpha.test/", ""));
        assert_eq!(client.read_response().text(), "fine");
    }
    drop(client);
    // Stopping waits for every connection to end, so the close has been seen by then.
    proxy.take_handle().stop();
    assert_eq!(
        *log.lock().unwrap(),
        ["request", "complete", "request", "complete", "close"]
    );
}

/// `GET`'s request bytes for `url`, with `HEAD` as the method.
fn head_request(url: &str) -> Vec<u8> {
    let mut req = get(url, "");
    req.splice(..3, *b"HEAD");
    req
}

#[test]
fn head_requests_get_only_the_head_of_a_plugin_reply_and_the_connection_stays_in_step() {
    // A mock answering in place of the origin (on_request), and a plugin replacing the
    // origin's response (on_response): both build a body; a HEAD must not receive it, or
    // the pipelined GET's response would be read from the middle of it.
    let origin = Origin::fixed("the origin's own words");
    for (plugin, url) in [
        ("ProposedRestApiPlugin", "http://api.example.com/v1/users/"),
        ("ManInTheMiddlePlugin", "http://alpha.test/"),
    ] {
        let proxy = spawn_proxy(&["--plugins", plugin]);
        proxy.route("alpha.test", &origin);
        let mut client = proxy.connect();
        let mut both = head_request(url);
        both.extend_from_slice(&get(url, ""));
        client.send(&both);
        let head = client.read_response_to("HEAD");
        assert_eq!(head.status, 200, "{plugin}");
        let length: usize = head.headers.get("content-length").unwrap().parse().unwrap();
        let full = client.read_response();
        assert_eq!(full.status, 200, "{plugin}");
        // The HEAD announced the length of the body the GET then carries.
        assert_eq!(full.body.data.len(), length, "{plugin}");
        assert!(!gunzip(&full.body.data).is_empty(), "{plugin}");
    }
}

#[test]
fn head_requests_to_the_proxy_itself_and_head_errors_carry_no_body() {
    let proxy = spawn_proxy(&[]);
    // Origin-form: the proxy's own 404, kept alive, then the next request's answer.
    let mut client = proxy.connect();
    client.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(client.read_response_to("HEAD").status, 404);
    let next = client.read_response();
    assert_eq!(next.status, 404);
    assert!(next.text().contains("forward proxy"), "{}", next.text());
    // An error reply (502, then close): the head and nothing after it.
    let url = format!("http://{}/", refused_addr());
    let raw = raw_exchange(proxy.addr, &head_request(&url));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(text.contains("error=connection_refused"), "{text}");
    assert!(
        raw.ends_with(b"\r\n\r\n"),
        "a body followed the head: {text}"
    );
}
