//! CONNECT tunnels: a real TLS handshake through the proxy, half-close, bad targets,
//! refused origins, and curl as an independent client.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use support::*;

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// A TLS origin for "localhost" and 127.0.0.1, signed by a throwaway CA made here.
struct TlsOrigin {
    addr: SocketAddr,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves `body` to every request over TLS, on its own thread and runtime.
fn spawn_tls_origin(body: &'static str) -> TlsOrigin {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "proxy tests throwaway CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    TlsOrigin {
        addr,
        ca_der: ca.der().clone(),
        ca_pem: ca.pem(),
    }
}

#[tokio::test]
async fn connect_tunnel_carries_a_tls_session_to_the_origin() {
    let origin = spawn_tls_origin("secure hello");
    let proxy = spawn_proxy(&[]);

    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let target = format!("127.0.0.1:{}", origin.addr.port());
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Exactly this reply and nothing more: the next byte must be the server's TLS record.
    let mut established = vec![0u8; ESTABLISHED.len()];
    timeout(WAIT, tcp.read_exact(&mut established))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&established),
        String::from_utf8_lossy(ESTABLISHED)
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(origin.ca_der.clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let server_name = ServerName::try_from("localhost").unwrap();
    let mut tls = timeout(WAIT, connector.connect(server_name, tcp))
        .await
        .unwrap()
        .unwrap();

    tls.write_all(b"GET /secret HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    timeout(WAIT, tls.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let (resp, rest) = parse_response(bytes);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "secure hello");
    assert!(rest.is_empty());
}

#[test]
fn connect_half_close_still_delivers_the_origins_remaining_bytes() {
    // The origin reads until the client's FIN has come through the tunnel, then answers.
    let origin = Origin::raw(|mut conn| {
        let got = conn.wire.read_to_end().unwrap();
        conn.send(format!("after your FIN I got {:?}", String::from_utf8_lossy(&got)).as_bytes());
    });
    let proxy = spawn_proxy(&[]);

    let mut client = proxy.connect();
    let target = origin.addr.to_string();
    client.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
    assert_eq!(
        client.read_exact_vec(ESTABLISHED.len()).unwrap(),
        ESTABLISHED
    );
    client.send(b"hello through the tunnel");
    client.shutdown_write();

    let rest = client.read_to_end().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "after your FIN I got \"hello through the tunnel\""
    );
}

#[test]
fn connect_to_malformed_targets_is_400() {
    let proxy = spawn_proxy(&[]);
    for target in ["nohost", "host:99999", ":80", "host:", "host:-1"] {
        let resp = request(
            proxy.addr,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 400, "CONNECT {target}");
    }
}

#[test]
fn connect_to_a_refused_port_is_502_connection_refused() {
    let proxy = spawn_proxy(&[]);
    let target = refused_addr().to_string();
    let resp = request(
        proxy.addr,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
    );
    resp.assert_error(502, "connection_refused");
}

#[test]
fn curl_gets_a_page_through_the_proxy() {
    let origin = Origin::fixed("hello curl");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let Some(out) = curl(&[
        "-x",
        &format!("http://{}", proxy.addr),
        "http://alpha.test/page",
    ]) else {
        return;
    };
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello curl");
    assert_eq!(origin.next_request().target, "/page");
}

#[test]
fn curl_gets_https_through_a_connect_tunnel() {
    let origin = spawn_tls_origin("hello tls curl");
    let proxy = spawn_proxy(&[]);
    proxy.names.insert("localhost", origin.addr);
    let ca_file = temp_path("ca.pem");
    std::fs::write(&ca_file, &origin.ca_pem).unwrap();

    let out = curl(&[
        "-x",
        &format!("http://{}", proxy.addr),
        "--proxytunnel",
        "--cacert",
        ca_file.to_str().unwrap(),
        &format!("https://localhost:{}/", origin.addr.port()),
    ]);
    let _ = std::fs::remove_file(&ca_file);
    let Some(out) = out else { return };
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello tls curl");
}
