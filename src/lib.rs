//! proxy: a fast, strict, programmable HTTP/1.x forward proxy with proxy.py's command line.
//!
//! Module map (imports run one way: server → proxy → web → plugin, tls → conn → http →
//! config → cli; `error`, `dns`, `destination` and `logging` sit below whatever uses them):
//! - [`cli`]: clap flags under proxy.py's names and defaults; argv → `Cli`.
//! - [`config`]: validated `Config` built from `Cli`, shared read-only by workers.
//! - [`conn`]: the transport (`Stream`: TCP, or TLS over it), one client connection's
//!   stream and buffer (`Client`), I/O with
//!   inactivity bounds (`io`) and the access-log record (`access`), shared by `proxy` and `web`.
//! - [`error`]: `ProxyError` and `ErrorKind` (stable codes, status, side).
//! - [`destination`]: the destination policy (`--connect-ports`, `--deny-destinations`).
//! - [`dns`]: the `Resolve` trait and the system resolver.
//! - [`http`]: HTTP/1.x heads as spans of one buffer, framing, synthetic replies. No I/O.
//! - [`plugin`]: the ordered plugin chain (`Plugin`, `Flow`) and proxy.py's built-in plugins.
//! - [`proxy`]: one client connection's lifecycle: forwarding, CONNECT tunnels, upstream pool.
//! - [`web`]: the built-in web server for origin-form requests: static files
//!   (`--enable-static-server`, no traversal); called by `proxy`'s routing, writes with `conn::io`.
//! - [`tls`]: the interception CA and leaf minting, TLS to origins (verification), the
//!   server side (the `--cert-file` listener, intercepted tunnels).
//! - [`server`]: worker threads, `SO_REUSEPORT` listeners, graceful shutdown, the embedding handle.
//! - [`logging`]: tracing subscriber with proxy.py's line format or JSON (used by the binary).

pub mod cli;
pub mod config;
pub mod conn;
pub mod destination;
pub mod dns;
pub mod error;
pub mod http;
pub mod logging;
pub mod plugin;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod web;

pub use config::Config;
pub use error::{ErrorKind, ProxyError};
pub use server::{start, start_with, ProxyHandle};
