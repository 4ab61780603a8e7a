//! `proxy.plugin.WebServerPlugin`: proxy.py's example web-server route plugin
//! (`proxy/plugin/web_server_route.py`).
//!
//! With `--enable-web-server` (or `--enable-static-server`, which implies it), an
//! origin-form `GET /http-route-example` is answered with
//! `HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nHTTP route response`, and the connection
//! stays open. Without the flag the plugin answers nothing, as in proxy.py (where web
//! plugins only run inside the web server).
//!
//! Differences from proxy.py:
//! - `/https-route-example` (served only on a TLS listener, `--cert-file`/`--key-file`)
//!   and `/ws-route-example` (a websocket echo) are left out: this proxy has neither TLS
//!   listeners nor websocket routes;
//! - the path is compared without its query (proxy.py's `re.match` of
//!   `/http-route-example$` against path and query refused `?x`);
//! - only GET and HEAD are answered (HEAD: same head, no body); proxy.py answered any
//!   method. Other requests fall through to the static server or the core's 404;
//! - `Connection: close` is added when the client asked to close (or sent a body).

use crate::http::{RequestHead, Target};

use super::{local_get_path, Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};

/// The plugin's proxy.py name.
pub const NAME: &str = "proxy.plugin.WebServerPlugin";

/// proxy.py's module path for it.
pub const MODULE_NAME: &str = "proxy.plugin.web_server_route.WebServerPlugin";

/// The route it serves.
pub const HTTP_ROUTE: &[u8] = b"/http-route-example";

/// The route's body.
pub const HTTP_ROUTE_BODY: &[u8] = b"HTTP route response";

/// Builds [`WebServerPlugin`] for each connection.
#[derive(Debug, Default)]
pub struct WebServerFactory;

impl PluginFactory for WebServerFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(WebServerPlugin)
    }
}

/// Answers `GET /http-route-example` when the web server is enabled.
#[derive(Debug, Default)]
pub struct WebServerPlugin;

impl Plugin for WebServerPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        if !cx.config.enable_web_server {
            return Ok(Flow::Continue);
        }
        if local_get_path(req, target) != Some(HTTP_ROUTE) {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Respond(Reply::answering(
            req,
            200,
            &[],
            HTTP_ROUTE_BODY,
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::Config;

    fn run(enabled: bool, raw: &str) -> Flow {
        let config = Config {
            enable_web_server: enabled,
            ..Config::default()
        };
        let cx = RequestCx {
            client: "127.0.0.1:5000".parse().unwrap(),
            config: &config,
            listen_addrs: &config.listen,
            intercepted: false,
        };
        let (mut req, mut target) = crate::plugin::testing::request(raw);
        WebServerFactory
            .build()
            .on_request(&cx, &mut req, &mut target)
            .unwrap()
    }

    fn reply(flow: Flow) -> Reply {
        match flow {
            Flow::Respond(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn the_route_answers_proxy_py_bytes() {
        let r = reply(run(
            true,
            "GET /http-route-example HTTP/1.1\r\nHost: x\r\n\r\n",
        ));
        assert_eq!(
            &r.bytes[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nHTTP route response"
        );
        assert!(!r.close);
        let r = reply(run(true, "HEAD /http-route-example?a=1 HTTP/1.1\r\n\r\n"));
        assert_eq!(
            &r.bytes[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n"
        );
        let r = reply(run(
            true,
            "GET /http-route-example HTTP/1.1\r\nConnection: close\r\n\r\n",
        ));
        assert!(r.close);
        assert!(r
            .bytes
            .ends_with(b"Connection: close\r\n\r\nHTTP route response"));
    }

    #[test]
    fn nothing_without_the_web_server_or_off_route() {
        for (enabled, raw) in [
            (false, "GET /http-route-example HTTP/1.1\r\n\r\n"),
            (true, "GET /https-route-example HTTP/1.1\r\n\r\n"),
            (true, "GET /http-route-example/ HTTP/1.1\r\n\r\n"),
            (
                true,
                "POST /http-route-example HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                true,
                "GET http://a.test/http-route-example HTTP/1.1\r\nHost: a.test\r\n\r\n",
            ),
        ] {
            assert!(matches!(run(enabled, raw), Flow::Continue), "{raw}");
        }
    }
}
