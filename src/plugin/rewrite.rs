//! Plugins that answer or reshape a request: short links, redirect to this server, add a header.

use bytes::Bytes;

use crate::http::{RequestHead, Target};

use super::{Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};

/// proxy.py's name for [`ShortLink`].
pub const SHORT_LINK_NAME: &str = "proxy.plugin.ShortLinkPlugin";
/// proxy.py's name for [`RedirectToCustomServer`].
pub const REDIRECT_NAME: &str = "proxy.plugin.RedirectToCustomServerPlugin";
/// proxy.py's name for [`ModifyRequestHeader`].
pub const MODIFY_REQUEST_HEADER_NAME: &str = "proxy.plugin.ModifyRequestHeaderPlugin";

/// proxy.py's default port, used when the listen addresses are unknown.
const DEFAULT_PORT: u16 = 8899;

/// The port this proxy listens on (the first listen address), as the plugins link to it.
fn our_port(cx: &RequestCx<'_>) -> u16 {
    cx.listen_addrs.first().map_or(DEFAULT_PORT, |a| a.port())
}

// === ShortLinkPlugin ===

/// proxy.py's `ShortLinkPlugin.SHORT_LINKS` (`proxy` is handled apart: it names us).
pub const SHORT_LINKS: &[(&str, &str)] = &[
    ("a", "amazon.com"),
    ("i", "instagram.com"),
    ("l", "linkedin.com"),
    ("f", "facebook.com"),
    ("g", "google.com"),
    ("t", "twitter.com"),
    ("w", "web.whatsapp.com"),
    ("y", "youtube.com"),
];

/// Builds [`ShortLink`].
#[derive(Debug, Default)]
pub struct ShortLinkFactory;

impl PluginFactory for ShortLinkFactory {
    fn name(&self) -> &'static str {
        SHORT_LINK_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(ShortLink)
    }
}

/// `proxy.plugin.ShortLinkPlugin`: a target host without a dot (and not `localhost`) is
/// a short link, answered without contacting any upstream: a known key gets
/// `303 See Other` to `http://<site><path>` (`http://t/imoracle` →
/// `http://twitter.com/imoracle`; query kept; `/` for CONNECT), an unknown one
/// `404 NOT FOUND`. Both are proxy.py's packets, with `Content-Length: 0` and
/// `Connection: close`; CONNECT (`CONNECT g:443`) too.
///
/// Differences from proxy.py: the `proxy` key points at `localhost:<the port we listen
/// on>` (proxy.py hard-codes `localhost:8899`); IPv6 literals (no dot either) are not
/// short links; the connection is closed after the reply, as its `Connection: close`
/// says (proxy.py left it open).
#[derive(Debug, Default)]
pub struct ShortLink;

/// proxy.py's 404 for an unknown short link (no `Server` header, unlike its web server's).
const SHORT_LINK_NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 NOT FOUND\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

impl Plugin for ShortLink {
    fn name(&self) -> &'static str {
        SHORT_LINK_NAME
    }

    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        _req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let (host, path): (&str, &[u8]) = match target {
            Target::Absolute { host, path, .. } => (host, path),
            Target::Authority { host, .. } => (host, b"/"),
            Target::Origin | Target::Asterisk => return Ok(Flow::Continue),
        };
        if host.is_empty() || host == "localhost" || host.contains(['.', ':']) {
            return Ok(Flow::Continue);
        }
        let site = if host == "proxy" {
            format!("localhost:{}", our_port(cx))
        } else {
            match SHORT_LINKS.iter().find(|&&(key, _)| key == host) {
                Some(&(_, site)) => site.to_owned(),
                None => {
                    let reply = Reply::raw(404, Bytes::from_static(SHORT_LINK_NOT_FOUND), true);
                    return Ok(Flow::Respond(reply));
                }
            }
        };
        let mut out = Vec::with_capacity(96 + site.len() + path.len());
        out.extend_from_slice(b"HTTP/1.1 303 See Other\r\nLocation: http://");
        out.extend_from_slice(site.as_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        Ok(Flow::Respond(Reply::raw(303, Bytes::from(out), true)))
    }
}

// === RedirectToCustomServerPlugin ===

/// Builds [`RedirectToCustomServer`].
#[derive(Debug, Default)]
pub struct RedirectToCustomServerFactory;

impl PluginFactory for RedirectToCustomServerFactory {
    fn name(&self) -> &'static str {
        REDIRECT_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(RedirectToCustomServer)
    }
}

/// `proxy.plugin.RedirectToCustomServerPlugin`: every absolute-form request (`http://`
/// or `https://`) is answered by this proxy's built-in web server instead of its
/// origin, as if sent to `http://localhost:<port><path>`: the request line becomes
/// origin-form (`GET <path>`), `Host` becomes `localhost:<port>` (`<port>` is the port
/// this proxy listens on), and the request then meets the PAC file, the web routes
/// (`--enable-web-server`), the static server (`--enable-static-server`) or the web
/// server's 404, in that order (see [`Chain::on_request`](super::Chain::on_request) for
/// which plugins see it). CONNECT is untouched.
///
/// Differences from proxy.py: proxy.py hard-codes `http://localhost:8899/` and opens a
/// connection to it, which reaches itself only on the default port (elsewhere it is a
/// 502, or whatever listens there); here the request never leaves the process. proxy.py
/// also replaces the whole URL with `/`, while the original path and query are kept.
#[derive(Debug, Default)]
pub struct RedirectToCustomServer;

impl Plugin for RedirectToCustomServer {
    fn name(&self) -> &'static str {
        REDIRECT_NAME
    }

    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        if let Target::Absolute { path, .. } = target {
            req.set_target(path.clone());
            req.set("Host", format!("localhost:{}", our_port(cx)).as_bytes());
            *target = Target::Origin;
        }
        Ok(Flow::Continue)
    }
}

// === ModifyRequestHeaderPlugin ===

/// Builds [`ModifyRequestHeader`].
#[derive(Debug, Default)]
pub struct ModifyRequestHeaderFactory;

impl PluginFactory for ModifyRequestHeaderFactory {
    fn name(&self) -> &'static str {
        MODIFY_REQUEST_HEADER_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(ModifyRequestHeader)
    }
}

/// The header [`ModifyRequestHeader`] adds.
pub const VERSION_HEADER: &str = "x-proxy-py-version";

/// `proxy.plugin.ModifyRequestHeaderPlugin`: appends `x-proxy-py-version: <version>` to
/// every request head sent upstream (requests addressed to this server are left alone). The version is this crate's (proxy.py sends its own, 2.4.10).
/// A CONNECT head is never forwarded, so there the header goes nowhere (as in proxy.py
/// without TLS interception).
#[derive(Debug, Default)]
pub struct ModifyRequestHeader;

impl Plugin for ModifyRequestHeader {
    fn name(&self) -> &'static str {
        MODIFY_REQUEST_HEADER_NAME
    }

    fn on_request(
        &mut self,
        _cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        if matches!(target, Target::Origin | Target::Asterisk) {
            return Ok(Flow::Continue);
        }
        req.append(VERSION_HEADER, env!("CARGO_PKG_VERSION").as_bytes());
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::Config;
    use crate::http::{parse_request, parse_target, Parsed, Version};
    use bytes::BytesMut;
    use std::net::SocketAddr;

    fn parse(raw: &str) -> (RequestHead, Target) {
        let mut buf = BytesMut::from(raw.as_bytes());
        let Parsed::Complete(req) = parse_request(&mut buf, &Default::default()).unwrap() else {
            panic!("partial head");
        };
        let target = parse_target(&req.target_bytes(), req.is_method("CONNECT")).unwrap();
        (req, target)
    }

    fn run_on(
        factory: &dyn PluginFactory,
        listen: &[SocketAddr],
        raw: &str,
    ) -> (Flow, RequestHead, Target) {
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:5000".parse().unwrap(),
            config: &config,
            listen_addrs: listen,
            intercepted: false,
        };
        let (mut req, mut target) = parse(raw);
        let flow = factory
            .build()
            .on_request(&cx, &mut req, &mut target)
            .unwrap();
        (flow, req, target)
    }

    fn run(factory: &dyn PluginFactory, raw: &str) -> (Flow, RequestHead, Target) {
        run_on(factory, &Config::default().listen, raw)
    }

    fn reply_bytes(flow: Flow) -> (u16, Vec<u8>) {
        match flow {
            Flow::Respond(r) => {
                assert!(r.close);
                (r.status, r.bytes.to_vec())
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn short_links_redirect_with_path() {
        let (flow, ..) = run(
            &ShortLinkFactory,
            "GET http://t/imoracle HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        assert_eq!(
            reply_bytes(flow),
            (
                303,
                b"HTTP/1.1 303 See Other\r\nLocation: http://twitter.com/imoracle\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec()
            )
        );
        let (flow, ..) = run(
            &ShortLinkFactory,
            "GET http://g HTTP/1.1\r\nHost: g\r\n\r\n",
        );
        let (_, bytes) = reply_bytes(flow);
        assert!(bytes.starts_with(b"HTTP/1.1 303 See Other\r\nLocation: http://google.com/\r\n"));
        let (flow, ..) = run(
            &ShortLinkFactory,
            "GET http://y/watch?v=1 HTTP/1.1\r\nHost: y\r\n\r\n",
        );
        let (_, bytes) = reply_bytes(flow);
        assert!(bytes
            .starts_with(b"HTTP/1.1 303 See Other\r\nLocation: http://youtube.com/watch?v=1\r\n"));
        let (flow, ..) = run(
            &ShortLinkFactory,
            "CONNECT g:443 HTTP/1.1\r\nHost: g:443\r\n\r\n",
        );
        let (_, bytes) = reply_bytes(flow);
        assert!(bytes.starts_with(b"HTTP/1.1 303 See Other\r\nLocation: http://google.com/\r\n"));
    }

    #[test]
    fn every_known_key() {
        for (key, site) in SHORT_LINKS {
            let (flow, ..) = run(
                &ShortLinkFactory,
                &format!("GET http://{key}/x HTTP/1.1\r\nHost: {key}\r\n\r\n"),
            );
            let (status, bytes) = reply_bytes(flow);
            assert_eq!(status, 303);
            let want = format!("Location: http://{site}/x\r\n");
            assert!(String::from_utf8(bytes).unwrap().contains(&want), "{key}");
        }
    }

    #[test]
    fn proxy_key_points_at_our_port() {
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:3128".parse().unwrap()];
        let (flow, ..) = run_on(
            &ShortLinkFactory,
            &listen,
            "GET http://proxy/dashboard HTTP/1.1\r\nHost: proxy\r\n\r\n",
        );
        let (_, bytes) = reply_bytes(flow);
        assert!(bytes.starts_with(
            b"HTTP/1.1 303 See Other\r\nLocation: http://localhost:3128/dashboard\r\n"
        ));
    }

    #[test]
    fn unknown_short_link_is_404() {
        let (flow, ..) = run(
            &ShortLinkFactory,
            "GET http://zz/ HTTP/1.1\r\nHost: zz\r\n\r\n",
        );
        assert_eq!(reply_bytes(flow), (404, SHORT_LINK_NOT_FOUND.to_vec()));
    }

    #[test]
    fn real_hosts_pass() {
        for raw in [
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "GET http://localhost:8080/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "GET http://[::1]:8080/ HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "GET /t HTTP/1.1\r\nHost: t\r\n\r\n",
        ] {
            assert!(
                matches!(run(&ShortLinkFactory, raw).0, Flow::Continue),
                "{raw}"
            );
        }
    }

    #[test]
    fn redirect_rewrites_absolute_targets_to_our_port() {
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:3128".parse().unwrap()];
        let (flow, req, target) = run_on(
            &RedirectToCustomServerFactory,
            &listen,
            "GET https://example.com:8443/a/b?c=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        );
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(target, Target::Origin);
        let mut out = Vec::new();
        req.encode(Version::Http11, &mut out);
        assert_eq!(
            out.concat(),
            b"GET /a/b?c=1 HTTP/1.1\r\nHost: localhost:3128\r\n\r\n".to_vec()
        );
        let (_, req, _) = run(
            &RedirectToCustomServerFactory,
            "GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
        );
        assert_eq!(req.effective_target(), b"/", "an empty path becomes /");
    }

    #[test]
    fn redirect_leaves_connect_and_origin_form_alone() {
        for raw in [
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (flow, _, target) = run(&RedirectToCustomServerFactory, raw);
            assert!(matches!(flow, Flow::Continue));
            assert_eq!(target, parse(raw).1);
        }
    }

    #[test]
    fn modify_request_header_leaves_requests_to_us_alone() {
        let (flow, req, _) = run(
            &ModifyRequestHeaderFactory,
            "GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(req.header(VERSION_HEADER), None);
    }

    #[test]
    fn modify_request_header_appends_the_version() {
        let (flow, req, _) = run(
            &ModifyRequestHeaderFactory,
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n",
        );
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(
            req.header("X-Proxy-Py-Version"),
            Some(env!("CARGO_PKG_VERSION").as_bytes())
        );
        let mut out = Vec::new();
        req.encode(Version::Http11, &mut out);
        let wire: Vec<u8> = out.concat();
        let want = format!(
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\
             x-proxy-py-version: {}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(wire).unwrap(), want);
    }
}
