//! TLS over real loopback sockets: interception of CONNECT (the minted leaf, HTTP/1.1
//! inside the tunnel, verification of origins, --ignore-hosts/--allow-hosts, the leaf
//! cache directory), non-TLS tunnels relayed untouched, absolute-form https:// with
//! pooled upstream TLS, the CA download, the --cert-file listener, plugins and basic
//! auth on intercepted traffic, curl and Python requests as independent clients, and the
//! binary's --ca-generate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a panic is how a test fails"
)]

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use support::tls::*;
use support::*;

const MIB: usize = 1024 * 1024;

/// An origin PKI, a TLS echo origin, a proxy CA, and an intercepting proxy that trusts
/// the origin's CA (`--ca-file`) and resolves `localhost` to the origin.
struct Setup {
    pki: OriginPki,
    origin: Origin,
    ca: ProxyCa,
    proxy: TestProxy,
}

impl Setup {
    /// Interception on, `--ca-file` the origin CA, plus `extra`.
    fn new(extra: &[&str]) -> Setup {
        Setup::with(extra, true)
    }

    /// Interception on, plus `extra`; `--ca-file` only when `trust_origin`.
    fn with(extra: &[&str], trust_origin: bool) -> Setup {
        let pki = OriginPki::new();
        let origin = Origin::tls_echo(&pki);
        Setup::around(pki, origin, extra, trust_origin)
    }

    fn around(pki: OriginPki, origin: Origin, extra: &[&str], trust_origin: bool) -> Setup {
        let ca = ProxyCa::new();
        let mut args = ca.args();
        if trust_origin {
            args.extend(pki.ca_file_args());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let proxy = spawn_proxy(&strs(&args));
        proxy.route("localhost", &origin);
        Setup {
            pki,
            origin,
            ca,
            proxy,
        }
    }

    /// `localhost:<origin port>`.
    fn authority(&self) -> String {
        format!("localhost:{}", self.origin.addr.port())
    }

    /// `127.0.0.1:<origin port>`.
    fn ip_authority(&self) -> String {
        format!("127.0.0.1:{}", self.origin.addr.port())
    }

    /// An intercepted tunnel to `localhost`, trusting the proxy CA.
    fn tunnel(&self) -> Handshaken<std::net::TcpStream> {
        tunnel(
            self.proxy.addr,
            &self.authority(),
            "localhost",
            &[&self.ca.cert_der],
        )
    }

    /// What the echo origin answers to `GET path` with `Host: localhost:<port>` and SNI
    /// `localhost`.
    fn echo(&self, path: &str) -> String {
        format!("path={path} host={} sni=localhost", self.authority())
    }
}

/// An origin-form GET with `Host: host`.
fn get_in(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    X509Certificate::from_der(der.as_ref()).unwrap().1
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// === interception: clients ===

#[test]
fn curl_trusting_the_proxy_ca_gets_an_intercepted_page() {
    let s = Setup::new(&[]);
    let Some(out) = curl(&[
        "-x",
        &format!("http://{}", s.proxy.addr),
        "--cacert",
        s.ca.cert.to_str().unwrap(),
        &s.origin.https_url("/via-curl?q=1"),
    ]) else {
        return;
    };
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        s.echo("/via-curl?q=1")
    );
    let seen = s.origin.next_request();
    assert_eq!(seen.target, "/via-curl?q=1");
    assert!(!seen.headers.has("proxy-connection"), "{seen:?}");
}

#[test]
fn python_requests_verifying_the_proxy_ca_gets_an_intercepted_page() {
    if !have("python3", "the Python requests test") {
        return;
    }
    let importable = Command::new("python3")
        .args(["-c", "import requests"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        eprintln!("note: Python requests is not installed; skipping the requests test");
        return;
    }
    let s = Setup::new(&[]);
    const SCRIPT: &str = "\
import sys, requests
url, proxy, ca = sys.argv[1:4]
r = requests.get(url, proxies={'http': proxy, 'https': proxy}, verify=ca, timeout=10)
sys.stdout.write('%d %s' % (r.status_code, r.text))
";
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(s.origin.https_url("/py"))
        .arg(format!("http://{}", s.proxy.addr))
        .arg(&s.ca.cert)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("200 {}", s.echo("/py"))
    );
}

#[test]
fn a_client_without_the_proxy_ca_fails_its_handshake() {
    let s = Setup::new(&[]);
    // Trusts only the origin's CA: the minted leaf is unknown to it.
    let err = try_tunnel(s.proxy.addr, &s.authority(), "localhost", &[&s.pki.ca_der])
        .err()
        .expect("the handshake must fail");
    let rustls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    assert!(
        matches!(
            rustls_err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{rustls_err:?}"
    );
    // The proxy is unharmed: a client that trusts the CA goes through.
    let mut wire = s.tunnel().into_wire();
    wire.send(&get_in("/after", &s.authority()));
    assert_eq!(wire.read_response().text(), s.echo("/after"));
}

// === interception: the minted leaf ===

#[test]
fn minted_leaves_name_the_host_copy_the_subject_and_chain_to_the_ca() {
    let s = Setup::new(&[]);
    let by_name = s.tunnel();
    let by_ip = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    );
    let ca = parse(&s.ca.cert_der);
    let now = now_secs();
    let mut serials = Vec::new();
    for (handshaken, want) in [(&by_name, "localhost"), (&by_ip, "127.0.0.1")] {
        let chain = &handshaken.chain;
        assert_eq!(chain.len(), 2, "{want}: chain is [leaf, CA]");
        assert_eq!(chain[1], s.ca.cert_der, "{want}: the CA follows the leaf");
        let leaf = parse(&chain[0]);
        assert_eq!(
            leaf.issuer().as_raw(),
            ca.subject().as_raw(),
            "{want}: issuer"
        );
        let san = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap_or_else(|| panic!("{want}: no SAN"))
            .value;
        let names: Vec<String> = san
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        let expected = if want == "localhost" {
            "dns:localhost".to_owned()
        } else {
            format!("ip:{:?}", [127u8, 0, 0, 1])
        };
        assert_eq!(names, [expected], "{want}: SAN");
        let org: Vec<&str> = leaf
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert_eq!(
            org,
            [ORIGIN_ORG],
            "{want}: subject {} copies the origin's O",
            leaf.subject()
        );
        assert_eq!(leaf.raw_serial().len(), 16, "{want}: serial bytes");
        serials.push(leaf.raw_serial().to_vec());
        let validity = leaf.validity();
        let (from, to) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        assert!(from <= now, "{want}: not_before {from} is after now {now}");
        assert!(to > now, "{want}: already expired");
        assert!(
            to - from <= 397 * 86_400,
            "{want}: lives {} days",
            (to - from) / 86_400
        );
    }
    assert_ne!(serials[0], serials[1], "serials differ across hosts");
}

#[test]
fn the_clients_sni_names_the_leaf_and_the_origin_handshake() {
    let s = Setup::new(&[]);
    // CONNECT by IP, TLS by name: the name wins, on both sides of the proxy.
    let handshaken = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "localhost",
        &[&s.ca.cert_der],
    );
    let leaf = parse(&handshaken.chain[0]);
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert!(
        matches!(
            san.general_names.as_slice(),
            [GeneralName::DNSName("localhost")]
        ),
        "{:?}",
        san.general_names
    );
    let mut wire = handshaken.into_wire();
    wire.send(&get_in("/sni", "localhost"));
    assert_eq!(
        wire.read_response().text(),
        "path=/sni host=localhost sni=localhost"
    );
}

#[test]
fn leaves_are_cached_in_ca_cert_dir_as_host_pem_mode_0600() {
    let s = Setup::new(&[]);
    let by_name = s.tunnel();
    let by_ip = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    );
    for (handshaken, host) in [(&by_name, "localhost"), (&by_ip, "127.0.0.1")] {
        let path = s.ca.cert_dir.join(format!("{host}.pem"));
        let pem =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        assert_eq!(
            pem_der(&pem),
            handshaken.chain[0],
            "{host}.pem holds the leaf served"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&s.ca.cert_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["127.0.0.1.pem", "localhost.pem"]);
}

// === interception: HTTP/1.1 inside ===

#[test]
fn keep_alive_carries_three_requests_over_one_origin_connection() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    for path in ["/one", "/two", "/three"] {
        wire.send(&get_in(path, &s.authority()));
        let resp = wire.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), s.echo(path));
    }
    let seen = s.origin.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.conn == 0), "{seen:?}");
    assert_eq!(
        s.origin.accepted(),
        1,
        "the verified connection serves the tunnel"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    let host = s.authority();
    let all = [
        get_in("/p1", &host),
        get_in("/p2", &host),
        get_in("/p3", &host),
    ]
    .concat();
    wire.send(&all);
    for path in ["/p1", "/p2", "/p3"] {
        assert_eq!(wire.read_response().text(), s.echo(path));
    }
}

#[test]
fn five_mib_up_and_down_inside_one_tunnel() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    let upload = pattern(5 * MIB);
    let mut post = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.authority(),
        upload.len()
    )
    .into_bytes();
    post.extend_from_slice(&upload);
    wire.send(&post);
    let echoed = wire.read_response_to("POST");
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.body.data.len(), upload.len());
    assert_eq!(checksum(&echoed.body.data), checksum(&upload));

    wire.send(&get_in(&format!("/bytes/{}", 5 * MIB), &s.authority()));
    let download = wire.read_response();
    assert_eq!(download.body.data.len(), 5 * MIB);
    assert_eq!(checksum(&download.body.data), checksum(&upload));
    let seen = s.origin.requests();
    assert_eq!(seen[0].body.data.len(), 5 * MIB);
    assert_eq!(s.origin.accepted(), 1);
}

#[test]
fn an_ip_literal_connect_goes_to_that_address_and_keeps_the_clients_host() {
    let s = Setup::new(&[]);
    let handshaken = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    );
    let mut wire = handshaken.into_wire();
    wire.send(&get_in("/ip", "www.example.test"));
    let resp = wire.read_response();
    assert_eq!(resp.status, 200);
    // No SNI for an IP literal, on either side; the client's Host goes to the origin.
    assert_eq!(resp.text(), "path=/ip host=www.example.test sni=-");
}

#[test]
fn origin_connection_close_ends_the_upstream_not_the_tunnel() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    let host = s.authority();
    wire.send(format!("GET /closing HTTP/1.1\r\nHost: {host}\r\nX-Close: 1\r\n\r\n").as_bytes());
    assert_eq!(wire.read_response().text(), s.echo("/closing"));
    wire.send(&get_in("/next", &host));
    assert_eq!(wire.read_response().text(), s.echo("/next"));
    assert_eq!(
        s.origin.accepted(),
        2,
        "a new origin connection after a close"
    );
}

#[test]
fn a_chunked_upload_inside_the_tunnel_is_echoed() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    wire.send(
        format!(
            "POST /chunked HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            s.authority()
        )
        .as_bytes(),
    );
    let resp = wire.read_response_to("POST");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello world");
    assert_eq!(s.origin.next_request().body.data, b"hello world");
}

#[test]
fn connection_close_from_the_client_ends_the_tunnel_after_the_response() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    wire.send(
        format!(
            "GET /last HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.authority()
        )
        .as_bytes(),
    );
    assert_eq!(wire.read_response().text(), s.echo("/last"));
    wire.expect_eof();
}

#[test]
fn a_second_tunnel_to_the_same_host_gets_the_same_leaf() {
    let s = Setup::new(&[]);
    let first = s.tunnel();
    let second = s.tunnel();
    assert_eq!(first.chain[0], second.chain[0]);
}

#[test]
fn a_later_tunnel_reuses_the_verified_origin_connection() {
    let s = Setup::new(&[]);
    for path in ["/first-tunnel", "/second-tunnel"] {
        let mut wire = s.tunnel().into_wire();
        wire.send(&get_in(path, &s.authority()));
        assert_eq!(wire.read_response().text(), s.echo(path));
    }
    assert_eq!(
        s.origin.accepted(),
        1,
        "the second CONNECT takes the pooled, verified connection"
    );
}

#[test]
fn an_opaque_tunnel_after_a_pooled_one_gets_its_own_connection() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    wire.send(&get_in("/pooled", &s.authority()));
    assert_eq!(wire.read_response().text(), s.echo("/pooled"));
    drop(wire);
    // A verified connection to the origin now idles in the pool; a tunnel whose client
    // does not speak TLS cannot use it and must get a TCP connection of its own.
    let mut raw = s.proxy.connect();
    raw.open_tunnel(&s.authority());
    raw.send(b"not TLS\r\n");
    // The TLS origin reads garbage and closes; what matters is a new connection.
    let _ = raw.read_to_end();
    assert_eq!(s.origin.accepted(), 2, "the opaque tunnel opened its own");
}

#[test]
fn a_client_hello_sent_with_the_connect_is_intercepted() {
    use std::io::Write;
    let s = Setup::new(&[]);
    let config = client_config(&[&s.ca.cert_der]);
    let mut conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut sock = tcp(s.proxy.addr);
    let authority = s.authority();
    let mut eager =
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes();
    eager.extend_from_slice(&hello);
    sock.write_all(&eager).unwrap();
    let mut reply = vec![0u8; ESTABLISHED.len()];
    sock.read_exact(&mut reply).unwrap();
    assert_eq!(reply, ESTABLISHED);
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    assert_eq!(
        stream.conn.peer_certificates().unwrap()[1],
        s.ca.cert_der,
        "intercepted"
    );
    let mut wire = Wire::from_duplex(ClientIo(stream));
    wire.send(&get_in("/eager", &authority));
    assert_eq!(wire.read_response().text(), s.echo("/eager"));
}

#[test]
fn head_inside_the_tunnel_has_no_body_and_keeps_the_connection() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    wire.send(format!("HEAD /h HTTP/1.1\r\nHost: {}\r\n\r\n", s.authority()).as_bytes());
    let head = wire.read_response_to("HEAD");
    assert_eq!(head.status, 200);
    assert!(head.body.data.is_empty());
    let len = s.echo("/h").len().to_string();
    assert_eq!(head.headers.get("content-length"), Some(len.as_str()));
    wire.send(&get_in("/after-head", &s.authority()));
    assert_eq!(wire.read_response().text(), s.echo("/after-head"));
    assert_eq!(s.origin.accepted(), 1);
}

// === interception: verification of origins ===

#[test]
fn an_untrusted_origin_gets_a_502_tls_certificate_error_inside_the_tunnel() {
    // No --ca-file: the origin's private CA is not in the system's roots.
    let s = Setup::with(&[], false);
    let mut wire = s.tunnel().into_wire();
    wire.send(&get_in("/secret", &s.authority()));
    let resp = wire.read_response();
    resp.assert_error(502, "tls_certificate_error");
    let status = resp.headers.get("proxy-status").unwrap();
    assert!(status.contains("details=\""), "{status}");
    wire.expect_eof();
    assert!(
        s.origin.requests().is_empty(),
        "nothing reaches an unverified origin"
    );
}

#[test]
fn insecure_tls_interception_accepts_an_untrusted_origin() {
    let s = Setup::with(&["--insecure-tls-interception"], false);
    let mut wire = s.tunnel().into_wire();
    wire.send(&get_in("/insecure", &s.authority()));
    let resp = wire.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), s.echo("/insecure"));
}

// === interception: which tunnels ===

#[test]
fn ignore_hosts_leaves_a_matching_tunnel_opaque() {
    let s = Setup::new(&["--ignore-hosts", "^localhost:"]);
    // A client that trusts the origin's own CA sees the origin's own certificate.
    let handshaken = tunnel(s.proxy.addr, &s.authority(), "localhost", &[&s.pki.ca_der]);
    assert_eq!(handshaken.chain[0], s.pki.leaf_der);
    let mut wire = handshaken.into_wire();
    wire.send(&get_in("/opaque", &s.authority()));
    assert_eq!(wire.read_response().text(), s.echo("/opaque"));
    assert!(
        !s.ca.cert_dir.join("localhost.pem").exists(),
        "nothing minted"
    );
    // Another host is still intercepted.
    let intercepted = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    );
    assert_eq!(intercepted.chain[1], s.ca.cert_der);
}

#[test]
fn ignore_hosts_also_matches_the_clients_sni() {
    let s = Setup::new(&["--ignore-hosts", "^localhost:"]);
    // CONNECT by IP (not ignored), SNI localhost (ignored): the tunnel stays opaque.
    let handshaken = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "localhost",
        &[&s.pki.ca_der],
    );
    assert_eq!(handshaken.chain[0], s.pki.leaf_der);
}

/// Keeps tunnels opaque when the client's SNI is `localhost` (proxy.py's
/// `do_intercept`), and records what it was asked.
struct NoInterceptFor(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl proxy::plugin::PluginFactory for NoInterceptFor {
    fn name(&self) -> &'static str {
        "test.NoInterceptFor"
    }

    fn build(&self) -> Box<dyn proxy::plugin::Plugin> {
        Box::new(NoInterceptFor(std::sync::Arc::clone(&self.0)))
    }
}

impl proxy::plugin::Plugin for NoInterceptFor {
    fn name(&self) -> &'static str {
        "test.NoInterceptFor"
    }

    fn do_intercept(
        &mut self,
        _cx: &proxy::plugin::RequestCx<'_>,
        host: &str,
        port: u16,
        sni: Option<&str>,
    ) -> bool {
        let mut asked = self.0.lock().unwrap();
        asked.push(format!("{host}:{port} sni={}", sni.unwrap_or("-")));
        sni != Some("localhost")
    }
}

#[test]
fn a_plugin_keeps_a_tunnel_opaque_with_do_intercept() {
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let ca = ProxyCa::new();
    let mut args = ca.args();
    args.extend(pki.ca_file_args());
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let plugin: std::sync::Arc<dyn proxy::plugin::PluginFactory> =
        std::sync::Arc::new(NoInterceptFor(std::sync::Arc::clone(&asked)));
    let proxy = spawn_proxy_plugins(&strs(&args), |_| {}, vec![plugin]);
    proxy.route("localhost", &origin);
    let port = origin.addr.port();
    // SNI localhost: the plugin says no, the client sees the origin's own certificate.
    let opaque = tunnel(
        proxy.addr,
        &format!("localhost:{port}"),
        "localhost",
        &[&pki.ca_der],
    );
    assert_eq!(opaque.chain[0], pki.leaf_der);
    // An IP literal sends no SNI: intercepted.
    let intercepted = tunnel(
        proxy.addr,
        &format!("127.0.0.1:{port}"),
        "127.0.0.1",
        &[&ca.cert_der],
    );
    assert_eq!(intercepted.chain[1], ca.cert_der);
    assert_eq!(
        *asked.lock().unwrap(),
        vec![
            format!("localhost:{port} sni=localhost"),
            format!("127.0.0.1:{port} sni=-"),
        ]
    );
}

#[test]
fn lua_should_intercept_keeps_a_tunnel_opaque_tls_handshake_fires_and_requests_inside_read_https() {
    let script = temp_path("should_intercept").with_extension("lua");
    std::fs::write(
        &script,
        r#"local handshakes = {}
           function should_intercept(flow)
             return flow.sni ~= "localhost"
           end
           function tls_handshake(flow)
             handshakes[#handshakes + 1] = flow.request.host .. "/" .. flow.sni
           end
           function request(flow)
             local r = flow.request
             flow:reply(200, r.scheme .. " " .. r.host .. " " .. r.port .. " " .. r.url
                             .. " " .. table.concat(handshakes, ","))
           end"#,
    )
    .unwrap();
    let script = path_text(&script);
    let s = Setup::new(&["--script", &script]);
    // SNI localhost: the script says no, the client sees the origin's own certificate.
    let opaque = tunnel(s.proxy.addr, &s.authority(), "localhost", &[&s.pki.ca_der]);
    assert_eq!(opaque.chain[0], s.pki.leaf_der);
    let mut wire = opaque.into_wire();
    wire.send(&get_in("/opaque", &s.authority()));
    assert_eq!(wire.read_response().text(), s.echo("/opaque"));
    // No SNI: intercepted, and the request inside is https to the tunnel's origin.
    let intercepted = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    );
    assert_eq!(intercepted.chain[1], s.ca.cert_der);
    let mut wire = intercepted.into_wire();
    wire.send(&get_in("/in?x=1", "127.0.0.1"));
    let port = s.origin.addr.port();
    assert_eq!(
        wire.read_response().text(),
        format!("https 127.0.0.1 {port} https://127.0.0.1:{port}/in?x=1 127.0.0.1/127.0.0.1")
    );
}

#[test]
fn allow_hosts_intercepts_only_matching_tunnels() {
    let s = Setup::new(&["--allow-hosts", r"^127\.0\.0\.1:"]);
    let opaque = tunnel(s.proxy.addr, &s.authority(), "localhost", &[&s.pki.ca_der]);
    assert_eq!(opaque.chain[0], s.pki.leaf_der);
    let intercepted = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    );
    assert_eq!(intercepted.chain[1], s.ca.cert_der);
    let mut wire = intercepted.into_wire();
    wire.send(&get_in("/allowed", "127.0.0.1"));
    assert_eq!(
        wire.read_response().text(),
        "path=/allowed host=127.0.0.1 sni=-"
    );
}

#[test]
fn plain_http_inside_connect_is_relayed_untouched_with_interception_on() {
    let origin = Origin::echo_target();
    let ca = ProxyCa::new();
    let proxy = spawn_proxy(&strs(&ca.args()));
    proxy.route("alpha.test", &origin);
    let mut wire = proxy.connect();
    wire.open_tunnel("alpha.test:80");
    // Deliberately odd: origin-form, lower-case header, no Host first.
    let request = b"GET /plain?x=1 HTTP/1.1\r\nx-odd:  spaced \r\nHost: alpha.test\r\n\r\n";
    wire.send(request);
    let resp = wire.read_response();
    assert_eq!(resp.text(), "/plain?x=1");
    assert_eq!(origin.next_request().raw_head, request);
    // A second request on the same tunnel: the same origin connection.
    wire.send(request);
    assert_eq!(wire.read_response().text(), "/plain?x=1");
    assert_eq!(origin.accepted(), 1);
}

#[test]
fn an_ssh_banner_inside_connect_is_relayed_untouched_with_interception_on() {
    const CLIENT: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n";
    const SERVER: &[u8] = b"SSH-2.0-OpenSSH_8.9\r\n";
    let origin = Origin::raw(|mut conn| {
        let line = conn.wire.read_line().unwrap();
        let mut got = line.clone();
        got.extend_from_slice(b"\r\n");
        conn.send(SERVER);
        // Echo back what arrived after the banner, then close.
        conn.send(&got);
        let rest = conn.wire.read_exact_vec(4).unwrap();
        conn.send(&rest);
    });
    let ca = ProxyCa::new();
    let proxy = spawn_proxy(&strs(&ca.args()));
    proxy.route("ssh.test", &origin);
    let mut wire = proxy.connect();
    wire.open_tunnel("ssh.test:22");
    wire.send(CLIENT);
    assert_eq!(wire.read_exact_vec(SERVER.len()).unwrap(), SERVER);
    assert_eq!(wire.read_exact_vec(CLIENT.len()).unwrap(), CLIENT);
    wire.send(&[0x00, 0x16, 0x03, 0x01]);
    assert_eq!(wire.read_exact_vec(4).unwrap(), [0x00, 0x16, 0x03, 0x01]);
}

#[test]
fn a_server_first_protocol_inside_connect_gets_its_greeting_with_interception_on() {
    const GREETING: &[u8] = b"220 smtp.test ESMTP ready\r\n";
    let origin = Origin::raw(|mut conn| {
        conn.send(GREETING);
        let _ = conn.wire.read_to_end();
    });
    let ca = ProxyCa::new();
    let mut args = ca.args();
    args.extend(["--timeout".into(), "3".into()]);
    let proxy = spawn_proxy(&strs(&args));
    proxy.route("smtp.test", &origin);
    let mut wire = proxy.connect();
    wire.open_tunnel("smtp.test:25");
    assert_eq!(
        wire.read_exact_vec(GREETING.len())
            .unwrap_or_else(|e| panic!("no greeting: {e}")),
        GREETING
    );
}

// === absolute-form https:// ===

#[test]
fn absolute_form_https_is_forwarded_over_verified_pooled_tls() {
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let proxy = spawn_proxy(&strs(&pki.ca_file_args()));
    proxy.route("localhost", &origin);
    let mut client = proxy.connect();
    for path in ["/first", "/second"] {
        client.send(&get(&origin.https_url(path), ""));
        let resp = client.read_response();
        assert_eq!(
            resp.status,
            200,
            "{}",
            String::from_utf8_lossy(&resp.raw_head)
        );
        assert_eq!(
            resp.text(),
            format!(
                "path={path} host=localhost:{} sni=localhost",
                origin.addr.port()
            )
        );
    }
    assert_eq!(
        origin.accepted(),
        1,
        "the second request reuses the upstream"
    );
    assert!(origin.requests().iter().all(|r| r.conn == 0));
}

#[test]
fn absolute_form_https_to_an_untrusted_origin_is_a_502_tls_certificate_error() {
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let other = OriginPki::new();
    // Trusts a different CA than the origin's.
    let proxy = spawn_proxy(&strs(&other.ca_file_args()));
    proxy.route("localhost", &origin);
    let resp = request(proxy.addr, &get(&origin.https_url("/x"), ""));
    resp.assert_error(502, "tls_certificate_error");
    assert!(origin.requests().is_empty());
}

// === the CA download ===

#[test]
fn the_ca_certificate_is_served_at_proxy_ca_pem_only_with_interception() {
    let ca = ProxyCa::new();
    let proxy = spawn_proxy(&strs(&ca.args()));
    let resp = request(
        proxy.addr,
        b"GET /_proxy/ca.pem HTTP/1.1\r\nHost: proxy\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), ca.cert_pem);
    assert_eq!(pem_der(&resp.text()), ca.cert_der);

    let plain = spawn_proxy(&[]);
    let resp = request(
        plain.addr,
        b"GET /_proxy/ca.pem HTTP/1.1\r\nHost: proxy\r\n\r\n",
    );
    assert_eq!(resp.status, 404);
}

// === the --cert-file listener ===

/// A proxy listening with TLS (the origin PKI's leaf, valid for 127.0.0.1), plus `extra`.
fn tls_listener(pki: &OriginPki, extra: &[String]) -> TestProxy {
    let mut args = vec![
        "--cert-file".to_owned(),
        path_text(&pki.chain_file),
        "--key-file".to_owned(),
        path_text(&pki.key_file),
    ];
    args.extend_from_slice(extra);
    spawn_proxy(&strs(&args))
}

#[test]
fn the_tls_listener_carries_absolute_form_and_connect() {
    let pki = OriginPki::new();
    let origin = Origin::echo_target();
    let proxy = tls_listener(&pki, &[]);
    proxy.route("alpha.test", &origin);

    let session = handshake(tcp(proxy.addr), "127.0.0.1", client_config(&[&pki.ca_der])).unwrap();
    assert_eq!(session.chain[0], pki.leaf_der);
    let mut wire = session.into_wire();
    wire.send(&get("http://alpha.test/abs-1", ""));
    assert_eq!(wire.read_response().text(), "/abs-1");
    wire.send(&get("http://alpha.test/abs-2", ""));
    assert_eq!(wire.read_response().text(), "/abs-2");

    let mut session = handshake(tcp(proxy.addr), "127.0.0.1", client_config(&[&pki.ca_der]))
        .unwrap()
        .io;
    connect_over(&mut session, "alpha.test:80", "");
    let mut wire = Wire::from_duplex(session);
    wire.send(&get_in("/in-tunnel", "alpha.test"));
    assert_eq!(wire.read_response().text(), "/in-tunnel");
}

#[test]
fn the_tls_listener_carries_an_intercepted_tunnel_tls_in_tls() {
    let listener_pki = OriginPki::new();
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let ca = ProxyCa::new();
    let mut extra = ca.args();
    extra.extend(pki.ca_file_args());
    let proxy = tls_listener(&listener_pki, &extra);
    proxy.route("localhost", &origin);

    let mut outer = handshake(
        tcp(proxy.addr),
        "127.0.0.1",
        client_config(&[&listener_pki.ca_der]),
    )
    .unwrap()
    .io;
    let authority = format!("localhost:{}", origin.addr.port());
    connect_over(&mut outer, &authority, "");
    let inner = handshake(outer, "localhost", client_config(&[&ca.cert_der])).unwrap();
    assert_eq!(inner.chain[1], ca.cert_der);
    let mut wire = inner.into_wire();
    wire.send(&get_in("/nested", &authority));
    assert_eq!(
        wire.read_response().text(),
        format!("path=/nested host={authority} sni=localhost")
    );
}

#[test]
fn curl_reaches_the_tls_listener_with_proxy_cacert() {
    let pki = OriginPki::new();
    let origin = Origin::echo_target();
    let proxy = tls_listener(&pki, &[]);
    proxy.route("alpha.test", &origin);
    let Some(out) = curl(&[
        "--proxy",
        &format!("https://127.0.0.1:{}", proxy.addr.port()),
        "--proxy-cacert",
        pki.ca_file.to_str().unwrap(),
        "http://alpha.test/through-https-proxy",
    ]) else {
        return;
    };
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/through-https-proxy");
}

#[test]
fn a_plaintext_client_of_the_tls_listener_is_closed_without_a_response() {
    let pki = OriginPki::new();
    let origin = Origin::echo_target();
    let proxy = tls_listener(&pki, &[]);
    proxy.route("alpha.test", &origin);
    let got = raw_exchange(proxy.addr, &get("http://alpha.test/plain", ""));
    assert!(
        got.is_empty(),
        "expected a bare close, got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(origin.requests().is_empty());
}

// === plugins and auth on intercepted requests ===

#[test]
fn modify_post_data_rewrites_an_intercepted_post() {
    let s = Setup::new(&["--plugins", "proxy.plugin.ModifyPostDataPlugin"]);
    let mut wire = s.tunnel().into_wire();
    wire.send(
        format!(
            "POST /form HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nsecret=42",
            s.authority()
        )
        .as_bytes(),
    );
    let resp = wire.read_response_to("POST");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), r#"{"key": "modified"}"#);
    let seen = s.origin.next_request();
    assert_eq!(seen.body.data, br#"{"key": "modified"}"#);
    assert_eq!(seen.headers.get("content-type"), Some("application/json"));
    assert_eq!(seen.headers.get("content-length"), Some("19"));
}

#[test]
fn filter_by_upstream_host_blocks_by_host_inside_and_at_connect() {
    let s = Setup::new(&[
        "--plugins",
        "proxy.plugin.FilterByUpstreamHostPlugin",
        "--filtered-upstream-hosts",
        "localhost",
    ]);
    // The CONNECT itself names the filtered host.
    let refused = request(
        s.proxy.addr,
        format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", s.authority()).as_bytes(),
    );
    assert_eq!(refused.status, 418);
    // Inside a tunnel to 127.0.0.1: its own requests pass, one naming localhost does not.
    let mut wire = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    )
    .into_wire();
    wire.send(&get_in("/fine", "127.0.0.1"));
    assert_eq!(wire.read_response().status, 200);
    wire.send(&get(&s.origin.https_url("/blocked"), ""));
    assert_eq!(wire.read_response().status, 418);
    let seen: Vec<String> = s
        .origin
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(seen, ["/fine"]);
}

#[test]
fn man_in_the_middle_replaces_an_intercepted_response() {
    let s = Setup::new(&["--plugins", "proxy.plugin.ManInTheMiddlePlugin"]);
    let mut wire = s.tunnel().into_wire();
    wire.send(&get_in("/original", &s.authority()));
    let resp = wire.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(gunzip(&resp.body.data), b"Hello from man in the middle");
    assert_eq!(s.origin.next_request().target, "/original");
}

#[test]
fn cache_responses_records_an_intercepted_response() {
    let dir = temp_path("tls-cache");
    let mut s = Setup::new(&[
        "--plugins",
        "proxy.plugin.CacheResponsesPlugin",
        "--cache-dir",
        dir.to_str().unwrap(),
    ]);
    let mut wire = s.tunnel().into_wire();
    wire.send(&get_in("/cached", &s.authority()));
    let resp = wire.read_response();
    assert_eq!(resp.text(), s.echo("/cached"));
    drop(wire);
    s.proxy.take_handle().stop();

    let recorded: Vec<_> = std::fs::read_dir(dir.join("responses"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let name = recorded[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("localhost-") && name.ends_with(".txt"),
        "{name}"
    );
    // The plaintext from inside TLS, byte for byte as the origin sent it.
    assert_eq!(std::fs::read(&recorded[0]).unwrap(), ok(s.echo("/cached")));
}

#[test]
fn basic_auth_guards_the_connect_not_the_requests_inside() {
    const AUTH: &str = "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"; // user:pass
    let s = Setup::new(&["--basic-auth", "user:pass"]);
    let refused = request(
        s.proxy.addr,
        format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", s.authority()).as_bytes(),
    );
    assert_eq!(refused.status, 407);

    let mut sock = tcp(s.proxy.addr);
    connect_over(&mut sock, &s.authority(), AUTH);
    let mut wire = handshake(sock, "localhost", client_config(&[&s.ca.cert_der]))
        .unwrap()
        .into_wire();
    for path in ["/in-1", "/in-2"] {
        wire.send(&get_in(path, &s.authority()));
        let resp = wire.read_response();
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.text(), s.echo(path));
    }
    assert!(s
        .origin
        .requests()
        .iter()
        .all(|r| !r.headers.has("proxy-authorization")));
}

// === the binary ===

#[test]
fn the_binary_logs_one_access_line_per_intercepted_request() {
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let ca = ProxyCa::new();
    let log_file = temp_path("tls-access.log");
    let mut args = ca.args();
    args.extend(pki.ca_file_args());
    args.extend(["--log-file".into(), path_text(&log_file)]);
    let proxy = ProxyBinary::spawn(&strs(&args));
    let authority = format!("127.0.0.1:{}", origin.addr.port());
    let mut wire = tunnel(proxy.addr, &authority, "127.0.0.1", &[&ca.cert_der]).into_wire();
    for path in ["/log-1", "/log-2"] {
        wire.send(&get_in(path, &authority));
        assert_eq!(wire.read_response().status, 200);
    }
    drop(wire);
    assert_eq!(proxy.terminate().code(), Some(0));

    let text = std::fs::read_to_string(&log_file).unwrap();
    for path in ["/log-1", "/log-2"] {
        let wanted = format!(" - GET https://{authority}{path} - 200 OK - ");
        let count = text.lines().filter(|l| l.contains(&wanted)).count();
        assert_eq!(count, 1, "{wanted:?} in:\n{text}");
    }
}

#[test]
fn ca_generate_writes_three_files_once_and_refuses_to_overwrite() {
    let dir = temp_path("ca-generate");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_proxy"))
            .arg("--ca-generate")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let first = run();
    assert_eq!(
        first.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    for flag in ["--ca-key-file", "--ca-cert-file", "--ca-signing-key-file"] {
        assert!(stdout.contains(flag), "{flag} in instructions:\n{stdout}");
    }
    let key = dir.join("ca-key.pem");
    let cert = dir.join("ca-cert.pem");
    let signing = dir.join("signing-key.pem");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&signing), 0o600);
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let der = pem_der(&cert_pem);
    let parsed = parse(&der);
    assert!(parsed.is_ca(), "{}", parsed.subject());
    let before: Vec<Vec<u8>> = [&key, &cert, &signing]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    let second = run();
    assert!(!second.status.success(), "a second run must fail");
    assert_ne!(second.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    let after: Vec<Vec<u8>> = [&key, &cert, &signing]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after, "nothing overwritten");

    // The files it wrote run an intercepting proxy.
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let cert_dir = dir.join("leaves");
    let mut args = vec![
        "--ca-key-file".to_owned(),
        path_text(&key),
        "--ca-cert-file".to_owned(),
        path_text(&cert),
        "--ca-signing-key-file".to_owned(),
        path_text(&signing),
        "--ca-cert-dir".to_owned(),
        path_text(&cert_dir),
    ];
    args.extend(pki.ca_file_args());
    let proxy = spawn_proxy(&strs(&args));
    let authority = format!("127.0.0.1:{}", origin.addr.port());
    let mut wire = tunnel(proxy.addr, &authority, "127.0.0.1", &[&der]).into_wire();
    wire.send(&get_in("/generated", "127.0.0.1"));
    assert_eq!(wire.read_response().status, 200);
}

#[test]
fn a_key_that_is_not_the_certificates_is_named_at_start() {
    let (a, b) = (OriginPki::new(), OriginPki::new());
    let out = ProxyBinary::run_to_end(&[
        "--cert-file",
        &path_text(&a.chain_file),
        "--key-file",
        &path_text(&b.key_file),
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not the key of --cert-file"), "{stderr}");
}

/// Inside an intercepted tunnel an origin-form request keeps the client's Host, but an
/// absolute-form one is sent with the Host of its own target (RFC 9112 §3.2.2), as
/// outside a tunnel: a Host naming some other site does not reach the origin.
#[test]
fn absolute_form_inside_the_tunnel_gets_the_host_of_its_target() {
    let s = Setup::new(&[]);
    let mut wire = s.tunnel().into_wire();
    let authority = s.authority();
    wire.send(
        format!("GET https://{authority}/abs HTTP/1.1\r\nHost: other.test\r\n\r\n").as_bytes(),
    );
    assert_eq!(wire.read_response().text(), s.echo("/abs"));
    wire.send(&get_in("/origin-form", &authority));
    assert_eq!(wire.read_response().text(), s.echo("/origin-form"));
}

/// A request inside a tunnel whose origin failed verification is logged with where it
/// was going (`https://host:port/path`), not `None:None`; the leaf shown to the client
/// stays in memory.
#[test]
fn a_request_to_an_unverified_origin_is_logged_with_its_target() {
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let ca = ProxyCa::new();
    let log_file = temp_path("tls-untrusted.log");
    let mut args = ca.args();
    args.extend(["--log-file".to_owned(), path_text(&log_file)]);
    let proxy = ProxyBinary::spawn(&strs(&args));
    let authority = format!("127.0.0.1:{}", origin.addr.port());
    let mut wire = tunnel(proxy.addr, &authority, "127.0.0.1", &[&ca.cert_der]).into_wire();
    wire.send(&get_in("/secret?q=1", "127.0.0.1"));
    wire.read_response()
        .assert_error(502, "tls_certificate_error");
    drop(wire);
    assert_eq!(proxy.terminate().code(), Some(0));
    // The leaf minted to show that error was not written to --ca-cert-dir: made-up
    // names cannot fill the disk.
    assert!(!ca.cert_dir.join("127.0.0.1.pem").exists());
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains(&format!(
            " - GET https://{authority}/secret?q=1 - 502 Bad Gateway - "
        )),
        "{log}"
    );
}

/// A ClientHello rustls refuses (here a server name with a port in it, as hey sends)
/// cannot be intercepted. With plugins loaded it is refused, so that no request escapes
/// them; without any, it goes through as an opaque tunnel.
#[test]
fn a_client_hello_that_cannot_be_intercepted_is_refused_when_plugins_are_loaded() {
    use std::io::Write;
    // A real ClientHello for "localhost", its name then made "local:443" (same length).
    let mut session = rustls::ClientConnection::new(
        client_config(&[]),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    session.write_tls(&mut hello).unwrap();
    let at = hello.windows(9).position(|w| w == b"localhost").unwrap();
    hello[at..at + 9].copy_from_slice(b"local:443");

    // An origin that answers whatever reaches it.
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = origin.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        while let Ok((mut conn, _)) = origin.accept() {
            let mut first = [0u8; 1];
            if conn.read(&mut first).is_ok_and(|n| n > 0) {
                let _ = conn.write_all(b"RELAYED");
            }
        }
    });
    let ca = ProxyCa::new();
    for (plugins, relayed) in [
        (&["--plugins", "FilterByUpstreamHostPlugin"][..], false),
        (&[][..], true),
    ] {
        let mut args = ca.args();
        args.extend(plugins.iter().map(|s| s.to_string()));
        let proxy = spawn_proxy(&strs(&args));
        let mut sock = tcp(proxy.addr);
        connect_over(&mut sock, &authority, "");
        sock.write_all(&hello).unwrap();
        let mut got = Vec::new();
        let _ = sock.read_to_end(&mut got);
        assert_eq!(
            got == b"RELAYED",
            relayed,
            "plugins {plugins:?}: got {got:?}"
        );
    }
}

/// A pooled connection verified for the CONNECT host never carries a request of a
/// tunnel whose client named another host in its SNI: that request goes on a
/// connection made (and verified) for the SNI.
#[test]
fn a_tunnel_with_another_sni_does_not_reuse_the_hosts_pooled_connection() {
    let s = Setup::new(&[]);
    // First a tunnel by IP with no SNI: its origin connection (no SNI) is pooled.
    let mut by_ip = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "127.0.0.1",
        &[&s.ca.cert_der],
    )
    .into_wire();
    by_ip.send(&get_in("/first", "127.0.0.1"));
    assert_eq!(
        by_ip.read_response().text(),
        "path=/first host=127.0.0.1 sni=-"
    );
    // Then the same CONNECT host, TLS by name: the request must travel with SNI localhost.
    let mut by_name = tunnel(
        s.proxy.addr,
        &s.ip_authority(),
        "localhost",
        &[&s.ca.cert_der],
    )
    .into_wire();
    by_name.send(&get_in("/second", "localhost"));
    assert_eq!(
        by_name.read_response().text(),
        "path=/second host=localhost sni=localhost"
    );
}

/// A client that offers only protocols the proxy does not speak (ALPN `h2` alone) gets
/// a `no_application_protocol` alert (RFC 7301 §3.2), not a bare close.
#[test]
fn an_h2_only_client_gets_the_no_application_protocol_alert() {
    let s = Setup::new(&[]);
    let mut sock = tcp(s.proxy.addr);
    connect_over(&mut sock, &s.authority(), "");
    let mut config = (*client_config(&[&s.ca.cert_der])).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let err = handshake(sock, "localhost", std::sync::Arc::new(config))
        .err()
        .expect("the handshake must fail");
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
}

/// A CONNECT host the resolver takes but no certificate can name (`127.1`), with no
/// SNI to name it otherwise: the tunnel fails as the client's doing
/// (`tls_client_handshake_error`), not as an internal error of the proxy.
#[test]
fn a_connect_host_no_certificate_can_name_is_the_clients_error() {
    let pki = OriginPki::new();
    let origin = Origin::tls_echo(&pki);
    let ca = ProxyCa::new();
    let log_file = temp_path("tls-unnameable.log");
    let mut args = ca.args();
    args.extend(pki.ca_file_args());
    args.extend(["--log-file".to_owned(), path_text(&log_file)]);
    let proxy = ProxyBinary::spawn(&strs(&args));
    let authority = format!("127.1:{}", origin.addr.port());
    // An IP literal as the TLS name: the client sends no SNI.
    assert!(try_tunnel(proxy.addr, &authority, "127.0.0.1", &[&ca.cert_der]).is_err());
    assert_eq!(proxy.terminate().code(), Some(0));
    let log = std::fs::read_to_string(&log_file).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("CONNECT {authority}")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.ends_with(" - tls_client_handshake_error"), "{line}");
}

/// An origin that requires a client certificate (TLS 1.3 asks for it after the
/// handshake): a 502 that says so, as a TLS error, rather than "upstream reset".
#[test]
fn an_origin_requiring_a_client_certificate_is_a_tls_error_that_says_so() {
    let pki = OriginPki::new();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider(),
    )
    .build()
    .unwrap();
    let base = pki.server_config();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(base.cert_resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        while let Ok((tcp, _)) = listener.accept() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 1024];
            // Fails for a client without a certificate, sending the alert.
            let _ = tls.read(&mut buf);
        }
    });
    let proxy = spawn_proxy(&strs(&pki.ca_file_args()));
    proxy.names.insert(
        "localhost",
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let resp = request(
        proxy.addr,
        &get(&format!("https://localhost:{port}/mtls"), ""),
    );
    resp.assert_error(502, "tls_protocol_error");
    let status = resp.headers.get("proxy-status").unwrap();
    assert!(status.contains("requires a client certificate"), "{status}");
}
