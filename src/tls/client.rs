//! TLS towards origins: which certificates are trusted (the system's roots, or
//! `--ca-file`, or nothing with `--insecure-tls-interception`), and the handshake over a
//! new upstream connection, with failures turned into stable error codes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::conn::stream::rustls_error;
use crate::conn::Stream;
use crate::error::{ErrorKind, ProxyError};

/// The client configuration for origins.
///
/// # Errors
/// `--ca-file` cannot be read or holds no certificate, or the system has no roots.
pub fn origin_config(ca_file: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        tracing::warn!(
            "--insecure-tls-interception: origin certificates are NOT verified; anyone on \
             the path to an origin can read and change its traffic"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The trusted roots: `--ca-file`'s certificates, else the system's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "--ca-file {}: no usable certificate in it",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                // Not fatal: plain HTTP still works, and HTTPS origins fail with a clear
                // tls_certificate_error naming the cause.
                tracing::warn!(
                    "no system root certificates found (install ca-certificates, or pass \
                     --ca-file): HTTPS origins cannot be verified"
                );
            }
        }
    }
    Ok(roots)
}

/// The name an origin's certificate must carry: a DNS name, or an IP address for IP
/// literals (sent without SNI, as RFC 6066 requires).
///
/// # Errors
/// `tls_protocol_error` for a host that is neither.
pub fn server_name(host: &str) -> Result<ServerName<'static>, ProxyError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| {
        ProxyError::new(
            ErrorKind::TlsProtocolError,
            format!("{host} is not a name TLS can verify"),
        )
    })
}

/// Runs the TLS handshake with an origin over `stream`, verifying it as `name`.
/// `deadline` bounds the whole handshake, `idle` each wait within it.
///
/// # Errors
/// `tls_certificate_error` when the origin's certificate fails verification (the
/// details say why), `tls_protocol_error` for other handshake failures,
/// `connection_timeout` when the handshake does not finish in time.
pub async fn handshake(
    stream: Stream,
    name: &str,
    config: &Arc<ClientConfig>,
    deadline: tokio::time::Instant,
    idle: Duration,
) -> Result<Stream, ProxyError> {
    let server_name = server_name(name)?;
    let session = rustls::ClientConnection::new(Arc::clone(config), server_name).map_err(|e| {
        ProxyError::new(ErrorKind::TlsProtocolError, format!("TLS to {name}")).with_source(e)
    })?;
    let stream = Stream::tls(stream, session);
    match tokio::time::timeout_at(deadline, stream.handshake(idle)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(handshake_error(name, &e).with_source(e)),
        Err(_) => Err(ProxyError::new(
            ErrorKind::ConnectionTimeout,
            format!("TLS handshake with {name} did not finish in time"),
        )),
    }
}

/// Classifies a failed origin handshake.
fn handshake_error(name: &str, err: &std::io::Error) -> ProxyError {
    match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(why)) => ProxyError::new(
            ErrorKind::TlsCertificateError,
            format!("certificate of {name}: {}", certificate_problem(why)),
        ),
        Some(other) => ProxyError::new(
            ErrorKind::TlsProtocolError,
            format!("TLS handshake with {name}: {other}"),
        ),
        None if err.kind() == std::io::ErrorKind::TimedOut => ProxyError::new(
            ErrorKind::ConnectionReadTimeout,
            format!("TLS handshake with {name}: the origin went quiet"),
        ),
        None => ProxyError::new(
            ErrorKind::TlsProtocolError,
            format!("TLS handshake with {name}: {err}"),
        ),
    }
}

/// A certificate error in words a user can act on.
fn certificate_problem(err: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match err {
        E::UnknownIssuer => "issued by an untrusted CA (see --ca-file)".into(),
        E::Expired | E::ExpiredContext { .. } => "expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "not valid yet".into(),
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "not valid for this host name".into()
        }
        E::Revoked => "revoked".into(),
        E::BadSignature => "bad signature".into(),
        E::BadEncoding => "malformed (not valid DER)".into(),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            "not meant for TLS servers (its extended key usage)".into()
        }
        E::UnhandledCriticalExtension => "has a critical extension we do not know".into(),
        E::UnsupportedSignatureAlgorithmContext { .. }
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "signed with an unsupported algorithm".into()
        }
        // The checks rustls leaves to webpki's own error (its variant's name).
        E::Other(other) => webpki_problem(&other.to_string()),
        other => format!("rejected ({other:?})"),
    }
}

/// Plain words for the webpki errors rustls passes on as they are (named by their
/// variant, e.g. `CaUsedAsEndEntity`).
fn webpki_problem(name: &str) -> String {
    let words = match name {
        "CaUsedAsEndEntity" => {
            "a CA certificate presented as the server's own (self-signed with CA:TRUE, as \
             `openssl req -x509` makes by default)"
        }
        "EndEntityUsedAsCa" => "issued by a certificate that is not a CA",
        "PathLenConstraintViolated" | "MaximumPathDepthExceeded" => "its chain is too long",
        "NameConstraintViolation" => "outside its issuer's name constraints",
        "RequiredEkuNotFound" | "RequiredEkuNotFoundContext" => {
            "not meant for TLS servers (its extended key usage)"
        }
        "UnsupportedCertVersion" => "not an X.509 v3 certificate",
        "UnsupportedCriticalExtension" => "has a critical extension we do not know",
        "SignatureAlgorithmMismatch" => "its signature algorithms disagree",
        _ => return format!("rejected ({name})"),
    };
    words.to_owned()
}

/// Accepts any origin certificate (`--insecure-tls-interception`), while still checking
/// that the handshake is signed by the key in the certificate presented.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_read_as_words_not_debug_dumps() {
        use rustls::{CertificateError as E, OtherError};
        // What webpki reports for a self-signed CA:TRUE certificate, as rustls passes it.
        let ca_as_leaf = E::Other(OtherError(Arc::new(std::io::Error::other(
            "CaUsedAsEndEntity",
        ))));
        let words = certificate_problem(&ca_as_leaf);
        assert!(
            words.starts_with("a CA certificate presented as"),
            "{words}"
        );
        assert_eq!(
            certificate_problem(&E::InvalidPurpose),
            "not meant for TLS servers (its extended key usage)"
        );
        assert_eq!(
            certificate_problem(&E::BadEncoding),
            "malformed (not valid DER)"
        );
        // An error without words is still named, never a nested debug dump.
        let odd = E::Other(OtherError(Arc::new(std::io::Error::other("SomethingNew"))));
        assert_eq!(certificate_problem(&odd), "rejected (SomethingNew)");
    }

    #[test]
    fn names_for_dns_and_ip_hosts() {
        assert!(matches!(
            server_name("example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name!").is_err());
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let path = std::env::temp_dir().join(format!("proxy-empty-ca-{}", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = origin_config(Some(&path), false).unwrap_err();
        assert!(err.contains("--ca-file"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
