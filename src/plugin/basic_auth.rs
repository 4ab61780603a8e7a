//! `--basic-auth`: proxy authentication with `Proxy-Authorization: Basic` (RFC 7617, RFC 9110 §11.7.1).
//!
//! proxy.py's `proxy.http.proxy.auth.AuthPlugin`, with these differences:
//! - `--basic-auth` may be repeated; any configured `user:pass` is accepted.
//! - Tokens are compared in constant time (proxy.py uses `!=`), against every credential.
//! - A request with no headers at all is refused too (proxy.py skips the check when the
//!   header list is empty, so a bare `CONNECT host:443 HTTP/1.0` got through).
//! - More than one `Proxy-Authorization` header is refused.
//! - The 407 carries `Proxy-Authenticate: Basic realm="proxy"` (proxy.py sends no realm,
//!   which RFC 7617 §2 requires), a `Content-Length` and `Connection: close`, and no
//!   `Proxy-agent` header; the body is proxy.py's `Proxy Authentication Required`.
//!
//! As in proxy.py, requests addressed to the proxy itself (origin-form and `*`; proxy.py
//! hands those to its web server, which has no auth) are not checked, so a browser can
//! fetch the PAC file directly. The core strips `Proxy-Authorization` (hop-by-hop) before
//! forwarding.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::config::Config;
use crate::http::{RequestHead, Target};

use super::{Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};

/// The plugin's proxy.py name.
pub const NAME: &str = "proxy.http.proxy.auth.AuthPlugin";

/// Builds [`BasicAuth`] for each connection; holds the expected tokens.
#[derive(Debug)]
pub struct BasicAuthFactory {
    tokens: Arc<[Vec<u8>]>,
}

impl BasicAuthFactory {
    /// Precomputes `base64(user:pass)` for every `--basic-auth` value.
    pub fn new(config: &Config) -> Self {
        Self::from_credentials(&config.basic_auth)
    }

    /// Precomputes `base64(user:pass)` for each credential.
    pub fn from_credentials(credentials: &[String]) -> Self {
        let tokens: Vec<Vec<u8>> = credentials
            .iter()
            .map(|c| base64_encode(c.as_bytes()))
            .collect();
        BasicAuthFactory {
            tokens: tokens.into(),
        }
    }
}

impl PluginFactory for BasicAuthFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(BasicAuth {
            tokens: Arc::clone(&self.tokens),
        })
    }
}

/// Refuses, with 407, every proxied request (CONNECT included) that lacks a valid
/// `Proxy-Authorization: Basic <token>`. See the module documentation.
#[derive(Debug)]
pub struct BasicAuth {
    tokens: Arc<[Vec<u8>]>,
}

impl BasicAuth {
    /// Whether the request carries exactly one `Proxy-Authorization` naming a configured user.
    fn authorized(&self, req: &RequestHead) -> bool {
        if req.count("Proxy-Authorization") != 1 {
            return false;
        }
        let Some(value) = req.header("Proxy-Authorization") else {
            return false;
        };
        // proxy.py: `value.split()` must give exactly [scheme, token].
        let mut parts = value
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|p| !p.is_empty());
        let (Some(scheme), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return false;
        }
        // No early exit: every credential is compared.
        let mut ok = false;
        for expected in self.tokens.iter() {
            ok |= ct_eq(token, expected);
        }
        ok
    }
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        // Inside an intercepted tunnel, its CONNECT was the request that authenticated.
        if cx.intercepted
            || matches!(target, Target::Origin | Target::Asterisk)
            || self.authorized(req)
        {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Respond(proxy_auth_required()))
    }
}

/// The 407 reply: `Proxy-Authenticate: Basic realm="proxy"`, then close.
pub fn proxy_auth_required() -> Reply {
    Reply::new(
        407,
        &[("Proxy-Authenticate", "Basic realm=\"proxy\"")],
        b"Proxy Authentication Required",
        true,
    )
}

/// Compares `given` with `expected` in time that depends only on `expected.len()`.
fn ct_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, &e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= usize::from(std::hint::black_box(g ^ e));
    }
    std::hint::black_box(diff) == 0
}

/// Standard base64 with padding (RFC 4648 §4), as `Proxy-Authorization: Basic` carries it.
fn base64_encode(input: &[u8]) -> Vec<u8> {
    STANDARD.encode(input).into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn head(raw: &str) -> (RequestHead, Target) {
        crate::plugin::testing::request(raw)
    }

    fn run(factory: &BasicAuthFactory, raw: &str) -> Flow {
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:5000".parse().unwrap(),
            config: &config,
            listen_addrs: &config.listen,
            intercepted: false,
        };
        let (mut req, mut target) = head(raw);
        factory
            .build()
            .on_request(&cx, &mut req, &mut target)
            .unwrap()
    }

    fn factory() -> BasicAuthFactory {
        BasicAuthFactory::from_credentials(&["user:pass".to_owned(), "admin:s3cr:et".to_owned()])
    }

    fn assert_407(flow: Flow) {
        let Flow::Respond(reply) = flow else {
            panic!("expected a 407, got {flow:?}");
        };
        assert_eq!(reply.status, 407);
        assert!(reply.close);
        assert_eq!(
            &reply.bytes[..],
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
              Proxy-Authenticate: Basic realm=\"proxy\"\r\n\
              Content-Length: 29\r\n\
              Connection: close\r\n\r\n\
              Proxy Authentication Required"
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(
                base64_encode(plain.as_bytes()),
                encoded.as_bytes(),
                "{plain}"
            );
        }
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abd", b"abc"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"abcd", b"abc"));
        assert!(!ct_eq(b"", b"abc"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn valid_credentials_continue() {
        let f = factory();
        let ok = "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\
                  Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n";
        assert!(matches!(run(&f, ok), Flow::Continue));
        // The second user; the password itself contains a colon.
        let second = format!(
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
            String::from_utf8(base64_encode(b"admin:s3cr:et")).unwrap()
        );
        assert!(matches!(run(&f, &second), Flow::Continue));
        // The scheme is case-insensitive; extra whitespace is fine (proxy.py splits on it).
        let mixed = "CONNECT example.com:443 HTTP/1.1\r\n\
                     Proxy-Authorization:   bAsIc    dXNlcjpwYXNz  \r\n\r\n";
        assert!(matches!(run(&f, mixed), Flow::Continue));
    }

    #[test]
    fn missing_or_wrong_credentials_get_407() {
        let f = factory();
        for raw in [
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.0\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNx\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXN\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Bearer dXNlcjpwYXNz\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: dXNlcjpwYXNz\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNz x\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        ] {
            assert_407(run(&f, raw));
        }
    }

    #[test]
    fn requests_to_the_proxy_itself_are_not_checked() {
        let f = factory();
        assert!(matches!(
            run(&f, "GET /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n"),
            Flow::Continue
        ));
        assert!(matches!(
            run(&f, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
            Flow::Continue
        ));
    }

    #[test]
    fn every_request_on_a_connection_is_checked() {
        let f = factory();
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:5000".parse().unwrap(),
            config: &config,
            listen_addrs: &config.listen,
            intercepted: false,
        };
        let mut plugin = f.build();
        let (mut req, mut target) =
            head("GET http://a/ HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n");
        assert!(matches!(
            plugin.on_request(&cx, &mut req, &mut target).unwrap(),
            Flow::Continue
        ));
        let (mut req, mut target) = head("GET http://a/ HTTP/1.1\r\n\r\n");
        assert_407(plugin.on_request(&cx, &mut req, &mut target).unwrap());
    }
}
