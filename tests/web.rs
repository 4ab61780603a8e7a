//! The built-in web server over real sockets: WebServerPlugin's route, the static file
//! server (types, HEAD, 404, 405, directory index, a large streamed file, keep-alive),
//! path traversal and symlink escapes, `--disable-http-proxy`, and PAC next to static.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]

mod support;

use std::path::PathBuf;

use support::*;

/// Text of a file OUTSIDE the served root that every attack tries to read.
const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";
const HELLO: &str = "hello, static world\n";
const BIG: usize = 5 * 1024 * 1024;

/// A temporary site: `base/secret` (outside) and `base/root/` (served).
struct Site {
    root: PathBuf,
}

fn site() -> Site {
    let base = temp_path("web-site");
    let root = base.join("root");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(base.join("secret"), SECRET).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(root.join("hello.txt"), HELLO).unwrap();
    std::fs::write(root.join("style.css"), "body { color: red }").unwrap();
    std::fs::write(root.join("app.js"), "console.log(1)").unwrap();
    std::fs::write(root.join("data.bin"), [0u8, 1, 2, 3]).unwrap();
    std::fs::write(root.join("proxy.pac"), "// the file on disk").unwrap();
    std::fs::write(root.join("docs/index.html"), "<p>docs</p>").unwrap();
    std::fs::write(root.join("big.bin"), pattern(BIG)).unwrap();
    // Symlinks that leave the root (must be refused) and one that stays inside (fine).
    std::os::unix::fs::symlink(&base, root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    std::os::unix::fs::symlink("../secret", root.join("secret-link")).unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("inner-link")).unwrap();
    Site { root }
}

fn static_proxy(site: &Site, extra: &[&str]) -> TestProxy {
    let root = site.root.to_str().unwrap().to_owned();
    let mut args = vec!["--enable-static-server", "--static-server-dir", &root];
    args.extend_from_slice(extra);
    spawn_proxy(&args)
}

fn origin_get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
}

#[test]
fn web_server_plugin_route_is_proxy_py_bytes_and_keeps_the_connection() {
    let proxy = spawn_proxy(&["--enable-web-server", "--plugins", "WebServerPlugin"]);
    let expected = b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nHTTP route response";
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&origin_get("/http-route-example", ""));
        assert_eq!(
            client.read_exact_vec(expected.len()).unwrap(),
            expected.to_vec()
        );
    }
    // Still the same connection: another route falls through to the core's 404.
    client.send(&origin_get("/https-route-example", "Connection: close\r\n"));
    assert_eq!(client.read_response().status, 404);
    client.expect_eof();

    // Without --enable-web-server the plugin answers nothing (as proxy.py).
    let proxy = spawn_proxy(&["--plugins", "proxy.plugin.WebServerPlugin"]);
    let resp = request(proxy.addr, &origin_get("/http-route-example", ""));
    assert_eq!(resp.status, 404);
}

#[test]
fn static_files_get_head_404_405_and_index_on_one_connection() {
    let site = site();
    let proxy = static_proxy(&site, &[]);
    let mut client = proxy.connect();

    client.send(&origin_get("/hello.txt", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), HELLO);
    assert_eq!(
        resp.headers.get("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.headers.get("cache-control"), Some("max-age=86400"));
    assert_eq!(
        resp.headers.get("content-length"),
        Some(HELLO.len().to_string().as_str())
    );
    assert!(!resp.headers.has("connection"));

    for (path, ctype, body) in [
        (
            "/style.css",
            "text/css; charset=utf-8",
            "body { color: red }",
        ),
        (
            "/app.js?v=3",
            "text/javascript; charset=utf-8",
            "console.log(1)",
        ),
        ("/data.bin", "application/octet-stream", "\0\x01\x02\x03"),
        ("/", "text/html; charset=utf-8", "<h1>home</h1>"),
        ("/docs/", "text/html; charset=utf-8", "<p>docs</p>"),
        // A symlink inside the root works; the type is the requested name's.
        ("/inner-link", "application/octet-stream", HELLO),
        ("/hello%2Etxt", "text/plain; charset=utf-8", HELLO),
    ] {
        client.send(&origin_get(path, ""));
        let resp = client.read_response();
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.headers.get("content-type"), Some(ctype), "{path}");
        assert_eq!(resp.text(), body, "{path}");
    }

    // A directory without its slash is redirected to it (its index's relative links
    // then resolve inside it); a file with a slash is not that file.
    client.send(&origin_get("/docs?x=1", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 301);
    assert_eq!(resp.headers.get("location"), Some("/docs/?x=1"));
    client.send(&origin_get("/hello.txt/", ""));
    assert_eq!(client.read_response().status, 404);

    client.send(b"HEAD /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let resp = client.read_response_to("HEAD");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers.get("content-length"),
        Some(HELLO.len().to_string().as_str())
    );
    assert!(resp.body.data.is_empty());

    for path in ["/nope.txt", "/empty/", "/docs/nope/"] {
        client.send(&origin_get(path, ""));
        let resp = client.read_response();
        assert_eq!(resp.status, 404, "{path}");
    }

    client.send(b"DELETE /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status, 405);
    assert_eq!(resp.headers.get("allow"), Some("GET, HEAD"));

    // HEAD of a missing file: the head only, and the connection goes on.
    client.send(b"HEAD /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(client.read_response_to("HEAD").status, 404);

    client.send(&origin_get("/hello.txt", "Connection: close\r\n"));
    let resp = client.read_response();
    assert_eq!((resp.status, resp.text().as_str()), (200, HELLO));
    assert_eq!(resp.headers.get("connection"), Some("close"));
    client.expect_eof();
}

#[test]
fn http_1_0_keep_alive_and_request_bodies() {
    let site = site();
    let proxy = static_proxy(&site, &[]);

    // HTTP/1.0 closes unless it asks for keep-alive.
    let bytes = raw_exchange(proxy.addr, b"GET /hello.txt HTTP/1.0\r\n\r\n");
    let (resp, rest) = parse_response(bytes);
    assert_eq!((resp.status, resp.text().as_str()), (200, HELLO));
    assert_eq!(resp.headers.get("connection"), Some("close"));
    assert!(rest.is_empty());
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(client.read_response().text(), HELLO);
    }

    // A body is refused (400) and the connection closed: it is never taken for a request.
    let bytes = raw_exchange(
        proxy.addr,
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nGET /hello.txt HTTP/1.1\r\n\r\n",
    );
    let (resp, rest) = parse_response(bytes);
    assert_eq!(resp.status, 400);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_5_mib_file_is_streamed_whole() {
    let site = site();
    let proxy = static_proxy(&site, &[]);
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&origin_get("/big.bin", ""));
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.data.len(), BIG);
        assert_eq!(checksum(&resp.body.data), checksum(&pattern(BIG)));
    }
}

#[test]
fn traversal_and_escaping_symlinks_never_reach_outside_the_root() {
    let site = site();
    let proxy = static_proxy(&site, &[]);
    for target in [
        "/../secret",
        "/../../secret",
        "/%2e%2e/secret",
        "/%2E%2E/secret",
        "/.%2e/secret",
        "/..%2fsecret",
        "/%2e%2e%2fsecret",
        "/a/../../secret",
        "/a/%2e%2e/%2e%2e/secret",
        "/..%5csecret",
        "/..%00/secret",
        "/escape/secret",
        "/escape/root/../secret",
        "/secret-link",
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/..%2fetc/passwd",
        "/a/../../etc/passwd",
        "/../../../../../../../../etc/passwd",
        "//etc/passwd",
        "/%2Fetc%2Fpasswd",
        "/etc/passwd",
        "/etc/hostname",
    ] {
        let bytes = raw_exchange(proxy.addr, &origin_get(target, "Connection: close\r\n"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SECRET), "{target}: {text}");
        assert!(!text.contains("root:"), "{target}: {text}");
        let (resp, _) = parse_response(bytes);
        assert!(
            resp.status == 404 || resp.status == 400,
            "{target}: {}",
            resp.status
        );
    }
}

#[test]
fn disable_http_proxy_refuses_proxying_but_serves_files() {
    let site = site();
    let origin = Origin::fixed("from the origin");
    let proxy = static_proxy(&site, &["--disable-http-proxy"]);
    proxy.route("alpha.test", &origin);

    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    resp.assert_error(400, "http_request_unsupported");
    let resp = request(
        proxy.addr,
        b"CONNECT alpha.test:443 HTTP/1.1\r\nHost: alpha.test:443\r\n\r\n",
    );
    resp.assert_error(400, "http_request_unsupported");
    assert_eq!(origin.accepted(), 0);

    let resp = request(proxy.addr, &origin_get("/hello.txt", ""));
    assert_eq!((resp.status, resp.text().as_str()), (200, HELLO));
}

/// With nothing to serve at a path, `--disable-http-proxy` answers a plain 404: it does
/// not send the client to absolute-form requests, which it refuses.
#[test]
fn disable_http_proxy_answers_a_plain_404() {
    let proxy = spawn_proxy(&["--disable-http-proxy"]);
    let resp = request(proxy.addr, &origin_get("/nothing", ""));
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (404, "404 Not Found\n")
    );
    let proxy = spawn_proxy(&[]);
    let resp = request(proxy.addr, &origin_get("/nothing", ""));
    assert!(resp.text().contains("absolute-form"), "{}", resp.text());
}

#[test]
fn the_pac_file_wins_for_its_path_and_static_serves_the_rest() {
    let site = site();
    let pac = "function FindProxyForURL(url, host) { return \"DIRECT\"; }";
    let proxy = static_proxy(
        &site,
        &["--pac-file", pac, "--pac-file-url-path", "/proxy.pac"],
    );
    let mut client = proxy.connect();
    client.send(&origin_get("/proxy.pac", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), pac);
    assert_eq!(
        resp.headers.get("content-type"),
        Some("application/x-ns-proxy-autoconfig")
    );
    client.send(&origin_get("/hello.txt", ""));
    assert_eq!(client.read_response().text(), HELLO);
    client.send(&origin_get("/", ""));
    assert_eq!(client.read_response().text(), "<h1>home</h1>");
}

#[test]
fn a_missing_static_dir_exits_64_with_one_line() {
    let missing = temp_path("no-such-static-dir");
    let err = proxy::Config::from_args([
        "proxy",
        "--enable-static-server",
        "--static-server-dir",
        missing.to_str().unwrap(),
    ])
    .unwrap_err();
    assert_eq!(err.exit_code(), 64);
    assert_eq!(err.to_string().lines().count(), 1, "{err}");
    assert!(err.to_string().contains("--static-server-dir"), "{err}");
}
