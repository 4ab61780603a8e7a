//! Plugins: an ordered chain of hooks around every exchange (DESIGN §4).
//!
//! A plugin is built per client connection from its [`PluginFactory`] (as in proxy.py,
//! "plugins are stateless per request", but may keep per-connection state). Hooks are
//! synchronous, run on the worker thread, and return one [`Flow`]: the first hook that
//! does not say `Continue` wins and the rest of the chain is skipped. Built-in
//! plugins carry proxy.py's names (see [`registry`]); basic auth and PAC serving are
//! ordinary members of the chain, placed first.

pub mod basic_auth;
pub mod body_rewrite;
pub mod cache;
pub mod dns_resolver;
pub mod filters;
pub mod lua;
pub mod mock;
pub mod pac;
pub mod program_name;
pub mod registry;
pub mod rewrite;
pub mod web_route;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::config::Config;
use crate::error::{ErrorKind, ProxyError};
pub use crate::http::websocket::WsKind;
use crate::http::{self, RequestHead, ResponseHead, Target};

/// Largest request body read whole for a plugin that asked for it (larger → 413).
pub const MAX_BUFFERED_REQUEST_BODY: usize = 8 * 1024 * 1024;

/// Largest response body read whole for a plugin (see `Plugin::wants_whole_response`).
pub const MAX_BUFFERED_RESPONSE_BODY: usize = 8 * 1024 * 1024;

/// What the proxy does after a hook returns.
#[must_use]
#[derive(Debug)]
pub enum Flow {
    /// Run the next plugin; after the last one, keep proxying.
    Continue,
    /// Stop and send this reply; the upstream is never contacted (or, from
    /// `on_response`, its response is discarded).
    Respond(Reply),
    /// Stop and close the client connection without replying.
    Close,
}

/// A whole WebSocket message, reassembled from its fragments (see
/// [`Plugin::on_websocket_message`]).
#[derive(Clone, Debug)]
pub struct WsMessage {
    /// Text or binary. A plugin may change it (the message is then re-framed).
    pub kind: WsKind,
    /// The payload, unmasked. A plugin may replace it: the message is then sent as one
    /// new frame (masked with a fresh key towards the server).
    pub data: Bytes,
    /// True when the client sent it; false when the server did.
    pub from_client: bool,
}

/// What becomes of a WebSocket message after the hooks.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsVerdict {
    /// Pass it on (as it came if no plugin changed it).
    Forward,
    /// Do not pass it on; the plugins after this one do not see it.
    Drop,
}

/// A complete synthetic response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code, for the access log.
    pub status: u16,
    /// The exact bytes to send (head and body; to a HEAD request, the proxy sends only
    /// the head).
    pub bytes: Bytes,
    /// Whether the proxy closes the client connection after sending it.
    pub close: bool,
}

impl Reply {
    /// A response with the given headers, a `Content-Length` and, when `close`,
    /// `Connection: close`.
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8], close: bool) -> Self {
        Reply {
            status,
            bytes: http::response::simple_response(status, headers, body, close),
            close,
        }
    }

    /// A reply to a request addressed to the proxy itself: the connection is kept as
    /// the request asks (and only if it carried no body), and a HEAD gets the same
    /// head with no body.
    pub fn answering(
        req: &RequestHead,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Self {
        let no_body = matches!(http::request_body_kind(req), Ok(http::BodyKind::Empty));
        let close = !(no_body && req.wants_keep_alive());
        let bytes = http::response::simple_response(status, headers, body, close);
        let bytes = if req.is_method("HEAD") {
            http::response::head_only(&bytes)
        } else {
            bytes
        };
        Reply {
            status,
            bytes,
            close,
        }
    }

    /// The bytes to send: only the head to a HEAD request (RFC 9110 §9.3.2: a plugin
    /// builds its reply without regard to the method, and a body would be read as the
    /// next response), and saying `Connection: close` when the connection ends after it
    /// although the plugin built it to stay open.
    pub fn bytes_for(&self, is_head: bool, closing: bool) -> Bytes {
        let bytes = if is_head {
            http::response::head_only(&self.bytes)
        } else {
            self.bytes.clone()
        };
        if closing && !self.close {
            http::response::with_close(&bytes)
        } else {
            bytes
        }
    }

    /// A response given byte for byte (to match proxy.py's packets exactly).
    pub fn raw(status: u16, bytes: Bytes, close: bool) -> Self {
        Reply {
            status,
            bytes,
            close,
        }
    }
}

/// The path (query excluded) of a GET or HEAD request addressed to the proxy itself
/// (origin-form, or made so by a plugin such as RedirectToCustomServerPlugin), the
/// requests the local responders (PAC, web routes) answer.
pub fn local_get_path<'a>(req: &'a RequestHead, target: &Target) -> Option<&'a [u8]> {
    if !matches!(target, Target::Origin) || !(req.is_method("GET") || req.is_method("HEAD")) {
        return None;
    }
    let raw = req.effective_target();
    raw.split(|&b| b == b'?').next()
}

/// What a hook may know about the exchange it runs in.
#[derive(Debug)]
pub struct RequestCx<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// Read-only settings (plugins read their flags here).
    pub config: &'a Config,
    /// The addresses this proxy listens on.
    pub listen_addrs: &'a [SocketAddr],
    /// True for a request read inside an intercepted CONNECT tunnel (decrypted HTTPS):
    /// the tunnel's CONNECT already passed the chain, e.g. its proxy authentication.
    pub intercepted: bool,
}

/// Where a resolve hook says an upstream host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses to try, in order, ports included.
    pub addrs: Vec<SocketAddr>,
    /// The local address to connect from (the outgoing interface), if it matters; the
    /// port is chosen by the system. Only addresses of the same family are tried.
    pub bind: Option<IpAddr>,
}

/// A resolve hook's pending answer. `Ok(None)` leaves the name to the proxy's own
/// resolver; an error is answered `502 dns_error`. It runs on the worker's thread
/// (it need not be `Send`) and is bounded by `--connect-timeout` (else `dns_timeout`).
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Option<Resolved>>>>>;

/// Receives a copy of the bytes exchanged with an origin, exactly as they crossed the
/// wire (see [`Plugin::tap`]). Called on the worker thread, in order; a sink that does
/// slow work (disk, network) hands the bytes to another thread.
pub trait WireSink {
    /// The next bytes.
    fn bytes(&mut self, bytes: &[u8]);

    /// The exchange is over: `complete` when the message was relayed whole.
    fn end(&mut self, complete: bool) {
        let _ = complete;
    }
}

/// What a plugin records of one exchange with an origin.
#[derive(Default)]
pub struct WireTap {
    /// The request as sent upstream: the head as the proxy rewrote it, then the body as
    /// framed on the wire.
    pub sent: Option<Box<dyn WireSink>>,
    /// The response as received: interim and final heads as the origin sent them, then
    /// the body with its framing (chunk sizes and trailers included), up to its end.
    pub received: Option<Box<dyn WireSink>>,
}

/// The wire sinks of one direction of an exchange, from every plugin that taps it.
pub type Sinks = Vec<Box<dyn WireSink>>;

/// Why a plugin could not do its job. Logged once with the plugin's name and answered
/// with a 500 `proxy_internal_error`; the worker carries on.
#[derive(Debug)]
pub struct PluginError(pub String);

impl PluginError {
    /// A script's failure when it fails closed (`FAIL_CLOSED`): answered with a 500
    /// `script_error`.
    pub fn script(message: &str) -> PluginError {
        PluginError(format!("{SCRIPT_ERROR}{message}"))
    }
}

const SCRIPT_ERROR: &str = "script_error: ";

/// The failure of the plugin `name` as the exchange's error: `script_error` for a
/// script that fails closed, `proxy_internal_error` for anything else. Its text goes to
/// the log; the client sees only the code.
pub fn plugin_failed((name, e): (&str, PluginError)) -> ProxyError {
    let kind = if e.0.starts_with(SCRIPT_ERROR) {
        ErrorKind::ScriptError
    } else {
        ErrorKind::ProxyInternalError
    };
    ProxyError::new(kind, format!("plugin {name}: {e}"))
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One extension, built per client connection. Every hook defaults to doing nothing.
pub trait Plugin {
    /// The plugin's name (its proxy.py dotted name for built-ins), for logs.
    fn name(&self) -> &'static str;

    /// A request head arrived; nothing has been contacted yet. `target` is the parsed
    /// request-target: a plugin may replace it (send the request elsewhere); the proxy
    /// then rewrites the request line and `Host` from the new target.
    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let _ = (cx, req, target);
        Ok(Flow::Continue)
    }

    /// A plugin before this one ended the request in `on_request` (answered it, closed
    /// the connection or failed), so this one's `on_request` is not called for it: the
    /// request as it was then, for a plugin that reports on the exchange in `on_error`
    /// and `on_complete` (a script's `access_log`). Observing only.
    fn on_request_skipped(&mut self, cx: &RequestCx<'_>, req: &RequestHead, target: &Target) {
        let _ = (cx, req, target);
    }

    /// The origin's final response head arrived and has not been sent yet. Headers may
    /// be edited in place; `Respond` replaces the whole response (the upstream
    /// connection is then closed, its body unread).
    fn on_response(
        &mut self,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
    ) -> Result<Flow, PluginError> {
        let _ = (cx, res);
        Ok(Flow::Continue)
    }

    /// After `on_request` or `on_response` let the exchange go on: a future the exchange
    /// must wait for before it goes further (a script's `flow:intercept()`, until
    /// `flow:resume()`), or `None`. The proxy waits at most `--timeout`, then answers
    /// 504 `flow_paused_timeout`.
    fn hold(&mut self) -> Option<Hold> {
        None
    }

    /// Whether this plugin's `on_request` needs the whole request body (a script with
    /// `BODIES.request`); asked before `on_request`, for requests to be forwarded. When
    /// one does, the body is read whole first (up to [`MAX_BUFFERED_REQUEST_BODY`],
    /// else 413) and lent to [`Plugin::on_request_body_first`]; a plugin that changes
    /// it returns the new body from `on_request_body` (saying so in
    /// `wants_request_body`).
    fn wants_request_body_first(&self) -> bool {
        false
    }

    /// The whole request body, read before `on_request` because a plugin asked for it
    /// (empty for a request without a body). Every plugin is told.
    fn on_request_body_first(&mut self, cx: &RequestCx<'_>, body: &Bytes) {
        let _ = (cx, body);
    }

    /// Whether this plugin wants the request body of the current exchange; asked after
    /// `on_request`. A body plugins want is read whole (up to
    /// [`MAX_BUFFERED_REQUEST_BODY`], else 413) before the origin is contacted.
    fn wants_request_body(&self) -> bool {
        false
    }

    /// The whole decoded request body; returns the body to send instead. The proxy
    /// sends it with an exact `Content-Length`.
    fn on_request_body(&mut self, cx: &RequestCx<'_>, body: Bytes) -> Result<Bytes, PluginError> {
        let _ = cx;
        Ok(body)
    }

    /// Whether this plugin wants the response body of the current exchange; asked
    /// after `on_response`. When no plugin does, the body is relayed as received,
    /// without being decoded or copied.
    fn wants_response_body(&self) -> bool {
        false
    }

    /// Whether this plugin wants the final response head and the whole decoded body
    /// at once (a script with `BODIES.response`); asked after `on_response`. When one
    /// does, the body is read whole (up to [`MAX_BUFFERED_RESPONSE_BODY`]) before
    /// anything is sent to the client, then [`Plugin::on_whole_response`] runs.
    fn wants_whole_response(&self) -> bool {
        false
    }

    /// The final response head (editable) and the whole decoded body: `None` when the
    /// body is over [`MAX_BUFFERED_RESPONSE_BODY`] (it then passes as received, logged
    /// as `http_response_body_size`). Returns how to go on and, to change the body,
    /// the new one (sent with an exact `Content-Length`).
    fn on_whole_response(
        &mut self,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
        body: Option<&Bytes>,
    ) -> Result<(Flow, Option<Bytes>), PluginError> {
        let _ = (cx, res, body);
        Ok((Flow::Continue, None))
    }

    /// A piece of the decoded response body (any chunked framing removed). Returns the
    /// bytes to pass on: the same, others, or none. The proxy re-frames what comes out
    /// (chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0 ones).
    fn on_response_chunk(
        &mut self,
        cx: &RequestCx<'_>,
        chunk: Bytes,
    ) -> Result<Bytes, PluginError> {
        let _ = cx;
        Ok(chunk)
    }

    /// The response body is complete; returns bytes to append (empty for none).
    fn on_response_end(&mut self, cx: &RequestCx<'_>) -> Result<Bytes, PluginError> {
        let _ = cx;
        Ok(Bytes::new())
    }

    /// A new upstream connection to `host:port` is about to be opened (a pooled one is
    /// reused without asking): return a future to decide where it goes (proxy.py's
    /// `resolve_dns`), or `None` to let the next plugin, then the proxy, resolve it.
    /// IP literals are asked too. The answer is not cached by the proxy. An upstream
    /// connection opened from a `bind` address is never pooled, so it serves only the
    /// client connection that asked.
    fn resolve_dns(&mut self, cx: &RequestCx<'_>, host: &str, port: u16) -> Option<ResolveFuture> {
        let _ = (cx, host, port);
        None
    }

    /// TLS interception is on and the client opened TLS inside its CONNECT to
    /// `host:port`; `sni` is the name it asked for, if any (proxy.py's `do_intercept`).
    /// Return `false` to keep this tunnel opaque (pinned apps, banks). Every plugin is
    /// asked; one `false` is enough. Asked after `--ignore-hosts`/`--allow-hosts` chose
    /// to intercept.
    fn do_intercept(
        &mut self,
        cx: &RequestCx<'_>,
        host: &str,
        port: u16,
        sni: Option<&str>,
    ) -> bool {
        let _ = (cx, host, port, sni);
        true
    }

    /// The client's TLS handshake inside an intercepted CONNECT to `host:port` completed;
    /// `sni` is the name the proxy's leaf was made for. Observing only.
    fn on_tls_handshake(&mut self, cx: &RequestCx<'_>, host: &str, port: u16, sni: &str) {
        let _ = (cx, host, port, sni);
    }

    /// A request is about to be forwarded to `host:port` (after `on_request` and the
    /// request-body hooks): return sinks to get a copy of the bytes sent and received
    /// (proxy.py's `handle_upstream_chunk`, observing only). Taps never change what is
    /// relayed, and bodies keep their copy-free path. CONNECT tunnels are not tapped.
    fn tap(
        &mut self,
        cx: &RequestCx<'_>,
        req: &RequestHead,
        host: &str,
        port: u16,
    ) -> Option<WireTap> {
        let _ = (cx, req, host, port);
        None
    }

    /// Whether this plugin wants the messages of a WebSocket session that this exchange
    /// may open; asked after the request hooks of an `Upgrade: websocket` request. When
    /// any plugin does, the `permessage-deflate` offer (any `Sec-WebSocket-Extensions`) is
    /// removed from the request and, after a `101`, the relay parses frames; otherwise it
    /// copies bytes as for any upgrade.
    fn wants_websocket_messages(&self) -> bool {
        false
    }

    /// The origin answered `101` to a WebSocket upgrade and the relay starts (asked of
    /// every plugin, whether the relay parses frames or not). An error closes the session
    /// (status 1011 to both sides when frames are parsed).
    fn on_websocket_start(&mut self, cx: &RequestCx<'_>) -> Result<(), PluginError> {
        let _ = cx;
        Ok(())
    }

    /// A whole text or binary message (never a control frame: pings, pongs and closes
    /// pass untouched), for plugins that want messages, in chain order. Edits to `msg`
    /// change what is sent. An error closes the session with status 1011 to both sides.
    fn on_websocket_message(
        &mut self,
        cx: &RequestCx<'_>,
        msg: &mut WsMessage,
    ) -> Result<WsVerdict, PluginError> {
        let _ = (cx, msg);
        Ok(WsVerdict::Forward)
    }

    /// The WebSocket session is over (closed, failed or timed out); called on every
    /// plugin once the session has started, before `on_complete`.
    fn on_websocket_end(&mut self, cx: &RequestCx<'_>) {
        let _ = cx;
    }

    /// The exchange ended with `err` (its stable code in `err.code()`); called just
    /// before `on_complete`. The error reply, if any, is sent after.
    fn on_error(&mut self, cx: &RequestCx<'_>, err: &crate::error::ProxyError) {
        let _ = (cx, err);
    }

    /// The exchange is over (whatever its outcome); `status` is what the client got.
    fn on_complete(&mut self, cx: &RequestCx<'_>, status: Option<u16>) {
        let _ = (cx, status);
    }

    /// The client connection has ended (after its last exchange's `on_complete`), however
    /// it ended: proxy.py's `on_client_connection_close`. Called once; dropping the
    /// plugin follows.
    fn on_close(&mut self, cx: &RequestCx<'_>) {
        let _ = cx;
    }

    /// How the access log names the client instead of its IP address (proxy.py's
    /// `on_access_log` rewriting `client_ip`); asked only when the access log is on.
    fn client_label(&mut self, cx: &RequestCx<'_>) -> Option<String> {
        let _ = cx;
        None
    }
}

/// What an exchange waits for when a plugin holds it (see [`Plugin::hold`]).
pub type Hold = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Builds a plugin for each new client connection. Built once from `Config`.
pub trait PluginFactory: Send + Sync {
    /// The name `--plugins` knows it by (proxy.py's dotted name for built-ins).
    fn name(&self) -> &'static str;
    /// A fresh plugin for one client connection.
    fn build(&self) -> Box<dyn Plugin>;
    /// The commands it offers (a script's `commands`): (name, help), for
    /// `--list-commands`.
    fn commands(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The plugins of one client connection, in `--plugins` order.
#[derive(Default)]
pub struct Chain {
    plugins: Vec<Box<dyn Plugin>>,
}

impl Chain {
    /// Builds the chain for a new connection (no allocation when there are no plugins).
    pub fn build(factories: &[std::sync::Arc<dyn PluginFactory>]) -> Self {
        Chain {
            plugins: factories.iter().map(|f| f.build()).collect(),
        }
    }

    /// True when no plugin is configured (the hooks are then skipped entirely).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The request ended before the chain ran (the proxy refused it, or the origin of
    /// an intercepted tunnel failed): every plugin gets `on_request_skipped`.
    pub fn on_request_refused(&mut self, cx: &RequestCx<'_>, req: &RequestHead, target: &Target) {
        self.skipped_from(0, cx, req, target);
    }

    fn skipped_from(
        &mut self,
        first: usize,
        cx: &RequestCx<'_>,
        req: &RequestHead,
        target: &Target,
    ) {
        for plugin in self.plugins.iter_mut().skip(first) {
            let _ = guard(plugin.name(), || {
                plugin.on_request_skipped(cx, req, target);
                Ok(())
            });
        }
    }

    /// Runs `on_request` in order; the first non-`Continue` (or error) wins, and the
    /// plugins after it get `on_request_skipped`.
    ///
    /// A plugin that turns a proxied request into one addressed to this server
    /// (`Target::Origin`, as RedirectToCustomServerPlugin does) hands it to the built-in
    /// web server. proxy.py does that over a connection to itself, where the request
    /// meets its web-server plugins afresh; here the plugins placed before the one that
    /// redirected run once more on the redirected request, so that every plugin sees it
    /// once as addressed to this server (the PAC file and the web routes can answer it).
    pub fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, (&'static str, PluginError)> {
        let mut redirected_at = None;
        for i in 0..self.plugins.len() {
            let plugin = &mut self.plugins[i];
            let was_local = matches!(target, Target::Origin);
            let ended = guard(plugin.name(), || plugin.on_request(cx, req, target));
            if !matches!(ended, Ok(Flow::Continue)) {
                // The plugins after it still see the request (for `on_complete`).
                self.skipped_from(i + 1, cx, req, target);
                return ended;
            }
            if !was_local && matches!(target, Target::Origin) && redirected_at.is_none() {
                redirected_at = Some(i);
            }
        }
        if let Some(end) = redirected_at {
            for plugin in &mut self.plugins[..end] {
                match guard(plugin.name(), || plugin.on_request(cx, req, target))? {
                    Flow::Continue => {}
                    flow => return Ok(flow),
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Runs `on_response` in order; the first non-`Continue` wins.
    pub fn on_response(
        &mut self,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
    ) -> Result<Flow, (&'static str, PluginError)> {
        for plugin in &mut self.plugins {
            match guard(plugin.name(), || plugin.on_response(cx, res))? {
                Flow::Continue => {}
                flow => return Ok(flow),
            }
        }
        Ok(Flow::Continue)
    }

    /// Every plugin's hold on the exchange (see [`Plugin::hold`]), awaited in order.
    pub fn hold(&mut self) -> Option<Hold> {
        let holds: Vec<Hold> = self.plugins.iter_mut().filter_map(|p| p.hold()).collect();
        if holds.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            for hold in holds {
                hold.await;
            }
        }))
    }

    /// Waits out the plugins' holds, for at most `limit`.
    ///
    /// # Errors
    /// `flow_paused_timeout` when a hold outlasts `limit`.
    pub async fn wait_holds(&mut self, limit: std::time::Duration) -> crate::error::Result<()> {
        let Some(hold) = self.hold() else {
            return Ok(());
        };
        tokio::time::timeout(limit, hold).await.map_err(|_| {
            crate::error::ProxyError::new(
                crate::error::ErrorKind::FlowPausedTimeout,
                "a script paused this exchange (flow:intercept) and nothing resumed it",
            )
        })
    }

    /// Whether any plugin wants the request body before `on_request`.
    pub fn wants_request_body_first(&self) -> bool {
        self.plugins.iter().any(|p| p.wants_request_body_first())
    }

    /// Lends the body read before `on_request` to every plugin.
    pub fn on_request_body_first(
        &mut self,
        cx: &RequestCx<'_>,
        body: &Bytes,
    ) -> Result<(), (&'static str, PluginError)> {
        for plugin in &mut self.plugins {
            guard(plugin.name(), || {
                plugin.on_request_body_first(cx, body);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Whether any plugin wants the whole response at once.
    pub fn wants_whole_response(&self) -> bool {
        self.plugins.iter().any(|p| p.wants_whole_response())
    }

    /// Runs `on_whole_response` on every plugin that wants it, in order: the first
    /// non-`Continue` wins; a changed body is what the next plugin sees. Returns the
    /// new body, if any plugin changed it.
    pub fn on_whole_response(
        &mut self,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
        body: Option<Bytes>,
    ) -> Result<(Flow, Option<Bytes>), (&'static str, PluginError)> {
        let mut current = body;
        let mut changed = None;
        for plugin in self.plugins.iter_mut().filter(|p| p.wants_whole_response()) {
            let (flow, new) = guard(plugin.name(), || {
                plugin.on_whole_response(cx, res, current.as_ref())
            })?;
            if let Some(new) = new {
                current = Some(new.clone());
                changed = Some(new);
            }
            if !matches!(flow, Flow::Continue) {
                return Ok((flow, changed));
            }
        }
        Ok((Flow::Continue, changed))
    }

    /// Whether any plugin wants this exchange's request body.
    pub fn wants_request_body(&self) -> bool {
        self.plugins.iter().any(|p| p.wants_request_body())
    }

    /// Passes the whole request body through every plugin that wants it, in order.
    pub fn on_request_body(
        &mut self,
        cx: &RequestCx<'_>,
        body: Bytes,
    ) -> Result<Bytes, (&'static str, PluginError)> {
        let mut data = body;
        for plugin in self.plugins.iter_mut().filter(|p| p.wants_request_body()) {
            data = guard(plugin.name(), || plugin.on_request_body(cx, data))?;
        }
        Ok(data)
    }

    /// Whether any plugin wants this exchange's response body.
    pub fn wants_response_body(&self) -> bool {
        self.plugins.iter().any(|p| p.wants_response_body())
    }

    /// Passes a piece of the response body through every plugin that wants it, in order.
    pub fn on_response_chunk(
        &mut self,
        cx: &RequestCx<'_>,
        chunk: Bytes,
    ) -> Result<Bytes, (&'static str, PluginError)> {
        let mut data = chunk;
        for plugin in self.plugins.iter_mut().filter(|p| p.wants_response_body()) {
            if data.is_empty() {
                break;
            }
            data = guard(plugin.name(), || plugin.on_response_chunk(cx, data))?;
        }
        Ok(data)
    }

    /// Ends the response body: each plugin's tail flows through the plugins after it
    /// (as a chunk) before their own end, so the order of the chain holds to the end.
    pub fn on_response_end(
        &mut self,
        cx: &RequestCx<'_>,
    ) -> Result<Bytes, (&'static str, PluginError)> {
        let mut carry = Bytes::new();
        for plugin in self.plugins.iter_mut().filter(|p| p.wants_response_body()) {
            let name = plugin.name();
            let passed = if carry.is_empty() {
                Bytes::new()
            } else {
                guard(name, || plugin.on_response_chunk(cx, carry))?
            };
            let tail = guard(name, || plugin.on_response_end(cx))?;
            carry = match (passed.is_empty(), tail.is_empty()) {
                (_, true) => passed,
                (true, false) => tail,
                (false, false) => [passed, tail].concat().into(),
            };
        }
        Ok(carry)
    }

    /// The first plugin's answer to where `host:port` is, if any plugin gives one. The
    /// returned future turns a panic into an error naming the plugin.
    pub fn resolve_dns(
        &mut self,
        cx: &RequestCx<'_>,
        host: &str,
        port: u16,
    ) -> Result<Option<(&'static str, ResolveFuture)>, (&'static str, PluginError)> {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            if let Some(future) = guard(name, || Ok(plugin.resolve_dns(cx, host, port)))? {
                let guarded: ResolveFuture = Box::pin(CatchPanic(future));
                return Ok(Some((name, guarded)));
            }
        }
        Ok(None)
    }

    /// Whether every plugin lets this CONNECT be intercepted (see `Plugin::do_intercept`).
    ///
    /// # Errors
    /// The name of a plugin that panicked, and why.
    pub fn do_intercept(
        &mut self,
        cx: &RequestCx<'_>,
        host: &str,
        port: u16,
        sni: Option<&str>,
    ) -> Result<bool, (&'static str, PluginError)> {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            if !guard(name, || Ok(plugin.do_intercept(cx, host, port, sni)))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs `on_tls_handshake` on every plugin.
    pub fn on_tls_handshake(&mut self, cx: &RequestCx<'_>, host: &str, port: u16, sni: &str) {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            let _ = guard(name, || {
                plugin.on_tls_handshake(cx, host, port, sni);
                Ok(())
            });
        }
    }

    /// Every plugin's wire taps for an exchange about to be forwarded: (sent, received).
    pub fn taps(
        &mut self,
        cx: &RequestCx<'_>,
        req: &RequestHead,
        host: &str,
        port: u16,
    ) -> Result<(Sinks, Sinks), (&'static str, PluginError)> {
        let (mut sent, mut received) = (Vec::new(), Vec::new());
        for plugin in &mut self.plugins {
            let name = plugin.name();
            if let Some(tap) = guard(name, || Ok(plugin.tap(cx, req, host, port)))? {
                sent.extend(tap.sent);
                received.extend(tap.received);
            }
        }
        Ok((sent, received))
    }

    /// Whether any plugin wants WebSocket messages (see `Plugin::wants_websocket_messages`).
    pub fn wants_websocket_messages(&self) -> bool {
        self.plugins.iter().any(|p| p.wants_websocket_messages())
    }

    /// Runs `on_websocket_start` on every plugin; the first error stops.
    ///
    /// # Errors
    /// The name of the plugin that failed, and why.
    pub fn on_websocket_start(
        &mut self,
        cx: &RequestCx<'_>,
    ) -> Result<(), (&'static str, PluginError)> {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            guard(name, || plugin.on_websocket_start(cx))?;
        }
        Ok(())
    }

    /// Passes a message through every plugin that wants messages, in order; the first
    /// `Drop` wins.
    ///
    /// # Errors
    /// The name of the plugin that failed, and why.
    pub fn on_websocket_message(
        &mut self,
        cx: &RequestCx<'_>,
        msg: &mut WsMessage,
    ) -> Result<WsVerdict, (&'static str, PluginError)> {
        for plugin in self
            .plugins
            .iter_mut()
            .filter(|p| p.wants_websocket_messages())
        {
            let name = plugin.name();
            if guard(name, || plugin.on_websocket_message(cx, msg))? == WsVerdict::Drop {
                return Ok(WsVerdict::Drop);
            }
        }
        Ok(WsVerdict::Forward)
    }

    /// Runs `on_websocket_end` on every plugin.
    pub fn on_websocket_end(&mut self, cx: &RequestCx<'_>) {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            let _ = guard(name, || {
                plugin.on_websocket_end(cx);
                Ok(())
            });
        }
    }

    /// The first client label a plugin gives, if any.
    pub fn client_label(&mut self, cx: &RequestCx<'_>) -> Option<String> {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            if let Ok(Some(label)) = guard(name, || Ok(plugin.client_label(cx))) {
                return Some(label);
            }
        }
        None
    }

    /// Runs `on_close` on every plugin.
    pub fn on_close(&mut self, cx: &RequestCx<'_>) {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            let _ = guard(name, || {
                plugin.on_close(cx);
                Ok(())
            });
        }
    }

    /// Runs `on_error` on every plugin.
    pub fn on_error(&mut self, cx: &RequestCx<'_>, err: &crate::error::ProxyError) {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            let _ = guard(name, || {
                plugin.on_error(cx, err);
                Ok(())
            });
        }
    }

    /// Runs `on_complete` on every plugin.
    pub fn on_complete(&mut self, cx: &RequestCx<'_>, status: Option<u16>) {
        for plugin in &mut self.plugins {
            let name = plugin.name();
            let _ = guard(name, || {
                plugin.on_complete(cx, status);
                Ok(())
            });
        }
    }
}

/// Runs one hook; a panic in it becomes an error naming the plugin, so a buggy plugin
/// costs its exchange a 500, never the worker or a silent close. (The plugin may be
/// left half-updated: the connection ends after the error anyway.)
fn guard<T>(
    name: &'static str,
    hook: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, (&'static str, PluginError)> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err((name, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err((name, PluginError(format!("panicked: {what}"))))
        }
    }
}

/// A resolve future whose panic becomes an `io::Error` (the connection's task would
/// otherwise end without a reply).
struct CatchPanic(ResolveFuture);

impl Future for CatchPanic {
    type Output = io::Result<Option<Resolved>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Err(io::Error::other("the resolve hook panicked"))),
        }
    }
}

/// Helpers for the plugins' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Parses `raw` into a request head and its target, as the proxy does.
    pub fn request(raw: &str) -> (RequestHead, Target) {
        let mut buf = bytes::BytesMut::from(raw.as_bytes());
        let Ok(http::Parsed::Complete(head)) =
            http::parse_request(&mut buf, &crate::config::Limits::default())
        else {
            panic!("not a complete request head: {raw:?}")
        };
        let Ok(target) = http::parse_target(&head.target_bytes(), head.is_method("CONNECT")) else {
            panic!("bad request target: {raw:?}")
        };
        (head, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A probe's fixed answer.
    type Answer = fn() -> Result<Flow, PluginError>;

    /// Records its calls in a shared log and answers with a fixed flow.
    struct Probe {
        name: &'static str,
        answer: Answer,
        log: Rc<RefCell<Vec<String>>>,
    }

    impl Plugin for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn on_request(
            &mut self,
            _: &RequestCx<'_>,
            _: &mut RequestHead,
            _: &mut Target,
        ) -> Result<Flow, PluginError> {
            self.log.borrow_mut().push(format!("request:{}", self.name));
            (self.answer)()
        }
        fn on_complete(&mut self, _: &RequestCx<'_>, status: Option<u16>) {
            self.log
                .borrow_mut()
                .push(format!("complete:{}:{status:?}", self.name));
        }
    }

    fn chain(probes: &[(&'static str, Answer)]) -> (Chain, Rc<RefCell<Vec<String>>>) {
        let log = Rc::new(RefCell::new(Vec::new()));
        let plugins = probes
            .iter()
            .map(|&(name, answer)| {
                Box::new(Probe {
                    name,
                    answer,
                    log: Rc::clone(&log),
                }) as Box<dyn Plugin>
            })
            .collect();
        (Chain { plugins }, log)
    }

    fn request() -> (RequestHead, Target) {
        testing::request("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
    }

    fn cx(config: &Config) -> RequestCx<'_> {
        RequestCx {
            client: "127.0.0.1:5000".parse().unwrap(),
            config,
            listen_addrs: &[],
            intercepted: false,
        }
    }

    fn go() -> Result<Flow, PluginError> {
        Ok(Flow::Continue)
    }
    fn stop() -> Result<Flow, PluginError> {
        Ok(Flow::Respond(Reply::new(403, &[], b"no", true)))
    }
    fn fail() -> Result<Flow, PluginError> {
        Err(PluginError("broken".into()))
    }

    #[test]
    fn runs_in_order_and_the_first_answer_wins() {
        let config = Config::default();
        let (mut chain, log) = chain(&[("a", go), ("b", stop), ("c", go)]);
        let (mut head, mut target) = request();
        let flow = chain
            .on_request(&cx(&config), &mut head, &mut target)
            .unwrap();
        assert!(matches!(
            flow,
            Flow::Respond(Reply {
                status: 403,
                close: true,
                ..
            })
        ));
        assert_eq!(*log.borrow(), ["request:a", "request:b"], "c never runs");
    }

    #[test]
    fn all_continue_means_continue() {
        let config = Config::default();
        let (mut chain, log) = chain(&[("a", go), ("b", go)]);
        let (mut head, mut target) = request();
        let flow = chain
            .on_request(&cx(&config), &mut head, &mut target)
            .unwrap();
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(log.borrow().len(), 2);
    }

    #[test]
    fn a_failing_plugin_is_named_and_stops_the_chain() {
        let config = Config::default();
        let (mut chain, log) = chain(&[("a", go), ("broken", fail), ("c", stop)]);
        let (mut head, mut target) = request();
        let Err((name, err)) = chain.on_request(&cx(&config), &mut head, &mut target) else {
            panic!("expected an error")
        };
        assert_eq!((name, err.0.as_str()), ("broken", "broken"));
        assert_eq!(log.borrow().len(), 2);
    }

    #[test]
    fn every_plugin_sees_the_end_of_the_exchange() {
        let config = Config::default();
        let (mut chain, log) = chain(&[("a", stop), ("b", go)]);
        chain.on_complete(&cx(&config), Some(403));
        assert_eq!(
            *log.borrow(),
            ["complete:a:Some(403)", "complete:b:Some(403)"]
        );
    }

    /// Turns any proxied request into one addressed to this server, as
    /// RedirectToCustomServerPlugin does, and logs what it saw.
    struct Redirect(Rc<RefCell<Vec<String>>>);

    impl Plugin for Redirect {
        fn name(&self) -> &'static str {
            "redirect"
        }
        fn on_request(
            &mut self,
            _: &RequestCx<'_>,
            _: &mut RequestHead,
            target: &mut Target,
        ) -> Result<Flow, PluginError> {
            self.0.borrow_mut().push("request:redirect".into());
            *target = Target::Origin;
            Ok(Flow::Continue)
        }
    }

    #[test]
    fn plugins_before_a_redirect_to_this_server_see_the_redirected_request_again() {
        let config = Config::default();
        let (mut chain, log) = chain(&[("a", go), ("b", go)]);
        chain.plugins.insert(1, Box::new(Redirect(Rc::clone(&log))));
        let (mut head, mut target) = request();
        let flow = chain
            .on_request(&cx(&config), &mut head, &mut target)
            .unwrap();
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(target, Target::Origin);
        assert_eq!(
            *log.borrow(),
            ["request:a", "request:redirect", "request:b", "request:a"],
            "a saw it proxied, then addressed to us; b only addressed to us"
        );
        // A request that was addressed to us from the start runs the chain once.
        log.borrow_mut().clear();
        let (mut head, mut target) = testing::request("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = chain.on_request(&cx(&config), &mut head, &mut target);
        assert_eq!(log.borrow().len(), 3);
    }

    #[test]
    fn an_empty_chain_costs_no_allocation() {
        let chain = Chain::build(&[]);
        assert!(chain.is_empty());
        assert_eq!(chain.plugins.capacity(), 0);
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    /// Upper-cases what passes through it and appends its own name at the end.
    struct Shout(&'static str);

    impl Plugin for Shout {
        fn name(&self) -> &'static str {
            self.0
        }
        fn wants_response_body(&self) -> bool {
            true
        }
        fn on_response_chunk(
            &mut self,
            _: &RequestCx<'_>,
            chunk: Bytes,
        ) -> Result<Bytes, PluginError> {
            Ok(chunk.to_ascii_uppercase().into())
        }
        fn on_response_end(&mut self, _: &RequestCx<'_>) -> Result<Bytes, PluginError> {
            Ok(Bytes::from(format!("[{} end]", self.0)))
        }
    }

    /// Wants nothing: must never see a body.
    struct Quiet;

    impl Plugin for Quiet {
        fn name(&self) -> &'static str {
            "quiet"
        }
        fn on_response_chunk(&mut self, _: &RequestCx<'_>, _: Bytes) -> Result<Bytes, PluginError> {
            Err(PluginError("quiet was handed a body".into()))
        }
    }

    #[test]
    fn body_flows_through_opted_in_plugins_and_tails_through_the_later_ones() {
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:1".parse().unwrap(),
            config: &config,
            listen_addrs: &[],
            intercepted: false,
        };
        let mut chain = Chain {
            plugins: vec![Box::new(Shout("a")), Box::new(Quiet), Box::new(Shout("b"))],
        };
        assert!(chain.wants_response_body());
        let out = chain
            .on_response_chunk(&cx, Bytes::from_static(b"hi"))
            .unwrap();
        assert_eq!(&out[..], b"HI");
        // a's tail passes through b's chunk hook (upper-cased), then b's own tail.
        let end = chain.on_response_end(&cx).unwrap();
        assert_eq!(&end[..], b"[A END][b end]");
    }

    #[test]
    fn no_plugin_wants_a_body_by_default() {
        let chain = Chain {
            plugins: vec![Box::new(Quiet)],
        };
        assert!(!chain.wants_response_body());
    }
}

#[cfg(test)]
mod websocket_tests {
    use super::*;

    /// Upper-cases text messages; drops the ones that read "DROP".
    struct Upper;

    impl Plugin for Upper {
        fn name(&self) -> &'static str {
            "upper"
        }
        fn wants_websocket_messages(&self) -> bool {
            true
        }
        fn on_websocket_message(
            &mut self,
            _: &RequestCx<'_>,
            msg: &mut WsMessage,
        ) -> Result<WsVerdict, PluginError> {
            if &msg.data[..] == b"drop" {
                return Ok(WsVerdict::Drop);
            }
            msg.data = msg.data.to_ascii_uppercase().into();
            Ok(WsVerdict::Forward)
        }
    }

    /// Wants no messages: must never see one.
    struct Quiet;

    impl Plugin for Quiet {
        fn name(&self) -> &'static str {
            "quiet"
        }
        fn on_websocket_message(
            &mut self,
            _: &RequestCx<'_>,
            _: &mut WsMessage,
        ) -> Result<WsVerdict, PluginError> {
            Err(PluginError("quiet was handed a message".into()))
        }
    }

    /// Appends `!` and fails on an empty message.
    struct Bang;

    impl Plugin for Bang {
        fn name(&self) -> &'static str {
            "bang"
        }
        fn wants_websocket_messages(&self) -> bool {
            true
        }
        fn on_websocket_message(
            &mut self,
            _: &RequestCx<'_>,
            msg: &mut WsMessage,
        ) -> Result<WsVerdict, PluginError> {
            if msg.data.is_empty() {
                return Err(PluginError("empty".into()));
            }
            msg.data = [&msg.data[..], b"!"].concat().into();
            Ok(WsVerdict::Forward)
        }
    }

    fn text(s: &'static str) -> WsMessage {
        WsMessage {
            kind: WsKind::Text,
            data: Bytes::from_static(s.as_bytes()),
            from_client: true,
        }
    }

    #[test]
    fn messages_flow_through_the_plugins_that_want_them_and_a_drop_stops() {
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:1".parse().unwrap(),
            config: &config,
            listen_addrs: &[],
            intercepted: false,
        };
        let mut chain = Chain {
            plugins: vec![Box::new(Upper), Box::new(Quiet), Box::new(Bang)],
        };
        assert!(chain.wants_websocket_messages());
        let mut msg = text("hi");
        assert_eq!(
            chain.on_websocket_message(&cx, &mut msg).unwrap(),
            WsVerdict::Forward
        );
        assert_eq!(&msg.data[..], b"HI!");
        let mut msg = text("drop");
        assert_eq!(
            chain.on_websocket_message(&cx, &mut msg).unwrap(),
            WsVerdict::Drop
        );
        let mut msg = text("");
        let Err((name, _)) = chain.on_websocket_message(&cx, &mut msg) else {
            panic!("bang fails on an empty message")
        };
        assert_eq!(name, "bang");
        assert!(chain.on_websocket_start(&cx).is_ok(), "defaults do nothing");
        chain.on_websocket_end(&cx);
        let quiet = Chain {
            plugins: vec![Box::new(Quiet)],
        };
        assert!(!quiet.wants_websocket_messages());
    }
}
