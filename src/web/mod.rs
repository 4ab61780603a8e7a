//! The built-in web server: what answers origin-form requests (`GET /path`, addressed to
//! the proxy itself rather than through it).
//!
//! In proxy.py this is `HttpWebServerPlugin` (`proxy/http/server/web.py`), which owns the
//! whole connection once the first request is origin-form. Here origin-form requests go
//! through the ordinary per-request loop (`proxy::route`), so a keep-alive connection may
//! mix proxied and local requests, and every request is logged with the proxy's
//! access-log line. What answers, in order:
//! 1. the plugin chain: the PAC file (`--pac-file`), `proxy.plugin.WebServerPlugin`'s
//!    routes (`--enable-web-server`), any other plugin;
//! 2. [`static_files`] when `--enable-static-server` is given;
//! 3. the core's 404.
//!
//! `--disable-http-proxy` makes `route` refuse absolute-form and CONNECT requests (400), so
//! only the above answers.
//!
//! Differences from proxy.py: no gzip (there is no `--min-compression-length`), no
//! TLS listener routes, no websocket routes, no reverse proxy; replies keep the connection
//! open when the client asked for it (proxy.py closes after every static file and 404);
//! path traversal is refused (proxy.py serves `/../../etc/hostname`).

pub mod static_files;

use crate::config::Config;
use crate::conn::access::Exchange;
use crate::conn::{io, Client};
use crate::error::{ErrorKind, ProxyError};
use crate::http::{request_body_kind, BodyKind, RequestHead};

/// Answers one origin-form request from `--static-server-dir` and records it in
/// `exchange`. Returns whether the client connection may carry another request.
///
/// A request with a body is refused with 400 (the static server reads none, and a body
/// left unread would be taken for the next request); the connection then closes.
///
/// # Errors
/// A `ProxyError` for the core to answer (when nothing was sent yet) and log: a request
/// body, a client that went away, a file that failed while it was being sent.
pub async fn serve_static(
    client: &Client,
    head: &RequestHead,
    exchange: &mut Exchange,
    config: &Config,
) -> Result<bool, ProxyError> {
    match request_body_kind(head) {
        Ok(BodyKind::Empty) => {}
        Ok(_) => {
            return Err(ProxyError::new(
                ErrorKind::UnsupportedRequest,
                "the static file server takes no request body",
            ))
        }
        Err(e) => {
            return Err(ProxyError::new(
                e.request_kind(),
                format!("request framing: {e}"),
            ))
        }
    }
    match static_files::serve(&client.stream, head, &config.static_server_dir, config).await {
        Ok(outcome) => {
            exchange.set_status(outcome.status);
            exchange.add_bytes(outcome.bytes);
            if !outcome.keep_alive {
                io::shutdown_write(&client.stream);
            }
            Ok(outcome.keep_alive)
        }
        Err(err) => {
            if let Some(status) = err.status {
                exchange.set_status(status);
            }
            exchange.add_bytes(err.bytes);
            Err(err.into_proxy_error())
        }
    }
}
