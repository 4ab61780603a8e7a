//! `ProxyError` and `ErrorKind`: every failure has a stable code, a side and a status.
//!
//! Codes are RFC 9209 `Proxy-Status` error types where one fits, and our own
//! snake_case names otherwise. They are an API: tests, plugins, logs and metrics
//! match on [`ErrorKind::code`], never on message text. Never rename a code; only add.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// Which party an error is attributed to (pingora's `ErrorSource`, derived from the kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong, went quiet, or went away.
    Client,
    /// The origin (or name resolution on its behalf) failed.
    Upstream,
    /// The proxy itself: configuration, a plugin, a bug.
    Internal,
}

/// What went wrong, as a closed set of stable codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    // --- client side ---
    /// The request violates HTTP/1.1 syntax or framing (RFC 9112).
    HttpRequestError,
    /// The request line is longer than the limit.
    UriTooLong,
    /// A header line, the header count or the whole head is over its limit.
    RequestHeaderTooLarge,
    /// The request head did not arrive within the header deadline (slowloris).
    RequestHeaderTimeout,
    /// A request body a plugin must read whole is over the limit.
    RequestBodyTooLarge,
    /// The client sent nothing for `--timeout` while we waited on it.
    ClientTimeout,
    /// The client closed or reset the connection mid-exchange.
    ClientClosed,
    /// The request asks for something this proxy does not do (a scheme, a version).
    UnsupportedRequest,
    /// The request is in an HTTP version other than 1.0 and 1.1 (505).
    HttpVersionNotSupported,
    /// The request's target is this proxy itself.
    ProxyLoopDetected,
    /// A plugin or policy refused the request.
    HttpRequestDenied,
    /// The request's destination address is one `--deny-destinations` lists.
    DestinationIpProhibited,
    /// The client refused the certificate the proxy presented (usually: the
    /// interception CA is not installed on the client). No reply is possible.
    TlsClientRejectedCertificate,
    /// The client's TLS handshake with the proxy failed otherwise (plaintext sent to a
    /// TLS port, no common version or cipher…). No reply is possible.
    TlsClientHandshakeError,

    // --- upstream side ---
    /// Name resolution failed (NXDOMAIN, SERVFAIL, no addresses).
    DnsError,
    /// Name resolution took longer than the connect timeout.
    DnsTimeout,
    /// The origin refused the TCP connection.
    ConnectionRefused,
    /// The origin's address is unreachable (no route, network down).
    DestinationUnavailable,
    /// The TCP connect did not complete within the connect timeout.
    ConnectionTimeout,
    /// The origin went quiet for `--timeout` while we waited on it.
    ConnectionReadTimeout,
    /// The origin closed the connection before sending a response.
    ConnectionTerminated,
    /// The origin closed or broke the connection mid-response.
    HttpResponseIncomplete,
    /// The origin's response violates HTTP/1.1 syntax or framing.
    HttpProtocolError,
    /// The origin's response head is over the head limit.
    HttpResponseHeaderSectionSize,
    /// The origin answered an `Upgrade` request with something unusable.
    HttpUpgradeFailed,
    /// A response body is larger than a plugin that wanted it whole may read (it then
    /// passes as received).
    HttpResponseBodySize,
    /// The upstream TLS handshake failed.
    TlsProtocolError,
    /// A peer of a WebSocket session whose frames the proxy parses (a plugin wants its
    /// messages) broke RFC 6455: an unmasked client frame, a masked server frame, reserved
    /// bits or opcodes, a long or fragmented control frame, broken fragmentation, or an
    /// extension the origin accepted although it was not offered. Counted on the upstream
    /// side whichever peer it was: the log line names the peer. Both sides get a Close
    /// with status 1002.
    WebsocketProtocolError,
    /// A WebSocket message whose frames exceed the 8 MiB a relay reassembles for the
    /// plugins; both sides get a Close with status 1009.
    WebsocketMessageTooLarge,
    /// The origin's certificate failed verification (untrusted issuer, wrong name,
    /// expired…).
    TlsCertificateError,

    // --- internal ---
    /// A bug or resource failure inside the proxy.
    ProxyInternalError,
    /// The configuration is invalid.
    ProxyConfigurationError,
    /// A script paused the exchange (`flow:intercept()`) and nothing resumed it within
    /// `--timeout`.
    FlowPausedTimeout,
    /// A Lua script's event handler failed (raised, ran past its instruction budget or
    /// its VM's memory cap). Logged; the exchange goes on unless the script fails closed.
    ScriptError,
}

impl ErrorKind {
    /// Stable identifier for logs (`error.code`), metrics, `Proxy-Status` and tests.
    pub const fn code(self) -> &'static str {
        use ErrorKind::*;
        match self {
            HttpRequestError => "http_request_error",
            UriTooLong => "http_request_uri_too_long",
            RequestHeaderTooLarge => "http_request_header_too_large",
            RequestHeaderTimeout => "http_request_header_timeout",
            RequestBodyTooLarge => "http_request_body_too_large",
            ClientTimeout => "client_timeout",
            ClientClosed => "client_closed",
            UnsupportedRequest => "http_request_unsupported",
            HttpVersionNotSupported => "http_version_not_supported",
            ProxyLoopDetected => "proxy_loop_detected",
            HttpRequestDenied => "http_request_denied",
            DestinationIpProhibited => "destination_ip_prohibited",
            DnsError => "dns_error",
            DnsTimeout => "dns_timeout",
            ConnectionRefused => "connection_refused",
            DestinationUnavailable => "destination_unavailable",
            ConnectionTimeout => "connection_timeout",
            ConnectionReadTimeout => "connection_read_timeout",
            ConnectionTerminated => "connection_terminated",
            HttpResponseIncomplete => "http_response_incomplete",
            HttpProtocolError => "http_protocol_error",
            HttpResponseHeaderSectionSize => "http_response_header_section_size",
            HttpUpgradeFailed => "http_upgrade_failed",
            HttpResponseBodySize => "http_response_body_size",
            TlsProtocolError => "tls_protocol_error",
            WebsocketProtocolError => "websocket_protocol_error",
            WebsocketMessageTooLarge => "websocket_message_too_large",
            TlsCertificateError => "tls_certificate_error",
            TlsClientRejectedCertificate => "tls_client_rejected_certificate",
            TlsClientHandshakeError => "tls_client_handshake_error",
            ProxyInternalError => "proxy_internal_error",
            ProxyConfigurationError => "proxy_configuration_error",
            ScriptError => "script_error",
            FlowPausedTimeout => "flow_paused_timeout",
        }
    }

    /// The status to answer with, or `None` when there is no one to answer
    /// (the client is gone or silent). A response already under way is never
    /// replaced: the caller closes instead.
    pub const fn status(self) -> Option<u16> {
        use ErrorKind::*;
        match self {
            HttpRequestError => Some(400),
            UriTooLong => Some(414),
            RequestHeaderTooLarge => Some(431),
            RequestHeaderTimeout => Some(408),
            RequestBodyTooLarge => Some(413),
            ClientTimeout
            | ClientClosed
            | TlsClientRejectedCertificate
            | TlsClientHandshakeError => None,
            // Found after the 101 went out, except for an extension nobody offered.
            WebsocketProtocolError => Some(502),
            WebsocketMessageTooLarge => None,
            UnsupportedRequest => Some(400),
            HttpVersionNotSupported => Some(505),
            ProxyLoopDetected => Some(508),
            HttpRequestDenied | DestinationIpProhibited => Some(403),
            DnsTimeout | ConnectionTimeout | ConnectionReadTimeout => Some(504),
            DnsError
            | ConnectionRefused
            | DestinationUnavailable
            | ConnectionTerminated
            | HttpResponseIncomplete
            | HttpProtocolError
            | HttpResponseHeaderSectionSize
            | HttpUpgradeFailed
            | HttpResponseBodySize
            | TlsProtocolError
            | TlsCertificateError => Some(502),
            ProxyInternalError | ProxyConfigurationError | ScriptError => Some(500),
            FlowPausedTimeout => Some(504),
        }
    }

    /// Who the error is attributed to.
    pub const fn side(self) -> Side {
        use ErrorKind::*;
        match self {
            HttpRequestError
            | UriTooLong
            | RequestHeaderTooLarge
            | RequestHeaderTimeout
            | RequestBodyTooLarge
            | ClientTimeout
            | ClientClosed
            | UnsupportedRequest
            | HttpVersionNotSupported
            | ProxyLoopDetected
            | HttpRequestDenied
            | DestinationIpProhibited
            | TlsClientRejectedCertificate
            | TlsClientHandshakeError => Side::Client,
            DnsError
            | DnsTimeout
            | ConnectionRefused
            | DestinationUnavailable
            | ConnectionTimeout
            | ConnectionReadTimeout
            | ConnectionTerminated
            | HttpResponseIncomplete
            | HttpProtocolError
            | HttpResponseHeaderSectionSize
            | HttpUpgradeFailed
            | HttpResponseBodySize
            | TlsProtocolError
            | TlsCertificateError
            | WebsocketProtocolError
            | WebsocketMessageTooLarge => Side::Upstream,
            ProxyInternalError | ProxyConfigurationError | ScriptError | FlowPausedTimeout => {
                Side::Internal
            }
        }
    }

    /// Classifies an I/O error from connecting to an origin.
    pub fn from_connect_error(err: &io::Error) -> ErrorKind {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::ConnectionRefused,
            io::ErrorKind::TimedOut => ErrorKind::ConnectionTimeout,
            _ => match err.raw_os_error() {
                Some(libc::ENETUNREACH)
                | Some(libc::EHOSTUNREACH)
                | Some(libc::ENETDOWN)
                | Some(libc::EHOSTDOWN)
                | Some(libc::EADDRNOTAVAIL) => ErrorKind::DestinationUnavailable,
                // The proxy's trouble, not the origin's.
                _ if is_out_of_resources(err) => ErrorKind::ProxyInternalError,
                _ => ErrorKind::DestinationUnavailable,
            },
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure with a stable, matchable kind. `context` is for humans and may change.
#[derive(Debug)]
pub struct ProxyError {
    kind: ErrorKind,
    context: Cow<'static, str>,
    source: Option<BoxError>,
}

impl ProxyError {
    /// A new error of `kind` with a human-readable context.
    pub fn new(kind: ErrorKind, context: impl Into<Cow<'static, str>>) -> Self {
        ProxyError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Shorthand for `self.kind().code()`.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The human-readable context (not an API).
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// `Result` with [`ProxyError`].
pub type Result<T, E = ProxyError> = std::result::Result<T, E>;

/// Adds a kind and context to any error, pingora style: `.or_err(ErrorKind::X, "while …")?`.
pub trait OrErr<T> {
    /// Wraps the error as `kind` with a static context.
    fn or_err(self, kind: ErrorKind, context: &'static str) -> Result<T>;
}

impl<T, E: Into<BoxError>> OrErr<T> for std::result::Result<T, E> {
    fn or_err(self, kind: ErrorKind, context: &'static str) -> Result<T> {
        self.map_err(|e| ProxyError::new(kind, context).with_source(e))
    }
}

/// The system is out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).
pub fn is_out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        use ErrorKind::*;
        let all = [
            HttpRequestError,
            UriTooLong,
            RequestHeaderTooLarge,
            RequestHeaderTimeout,
            RequestBodyTooLarge,
            ClientTimeout,
            ClientClosed,
            UnsupportedRequest,
            HttpVersionNotSupported,
            ProxyLoopDetected,
            HttpRequestDenied,
            DestinationIpProhibited,
            DnsError,
            DnsTimeout,
            ConnectionRefused,
            DestinationUnavailable,
            ConnectionTimeout,
            ConnectionReadTimeout,
            ConnectionTerminated,
            HttpResponseIncomplete,
            HttpProtocolError,
            HttpResponseHeaderSectionSize,
            HttpUpgradeFailed,
            HttpResponseBodySize,
            TlsProtocolError,
            TlsCertificateError,
            WebsocketProtocolError,
            WebsocketMessageTooLarge,
            TlsClientRejectedCertificate,
            TlsClientHandshakeError,
            ProxyInternalError,
            ProxyConfigurationError,
            ScriptError,
            FlowPausedTimeout,
        ];
        let mut seen = std::collections::HashSet::new();
        for kind in all {
            let code = kind.code();
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
    }

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        assert_eq!(ErrorKind::DnsError.status(), Some(502));
        assert_eq!(ErrorKind::ConnectionTimeout.status(), Some(504));
        assert_eq!(ErrorKind::ConnectionRefused.side(), Side::Upstream);
        assert_eq!(ErrorKind::ClientClosed.status(), None);
        assert_eq!(ErrorKind::ProxyLoopDetected.status(), Some(508));
    }

    #[test]
    fn connect_errors_are_classified() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ErrorKind::from_connect_error(&refused),
            ErrorKind::ConnectionRefused
        );
        let unreach = io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(
            ErrorKind::from_connect_error(&unreach),
            ErrorKind::DestinationUnavailable
        );
        let no_fds = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(
            ErrorKind::from_connect_error(&no_fds),
            ErrorKind::ProxyInternalError
        );
    }
}
