//! The access log: one line per exchange, in proxy.py's format, as a `tracing` event
//! with target `proxy::access` (so `--log-format json` gets every field).
//!
//! proxy.py logs once per client connection and only the first request; we log every
//! exchange, including refused and failed ones (with the error code as a field).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::Client;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::{response::reason_phrase, RequestHead};

/// What the access log needs to know about one exchange.
pub struct Exchange {
    client: SocketAddr,
    started: Instant,
    method: Bytes,
    host: String,
    port: u16,
    path: Bytes,
    status: Option<u16>,
    bytes: u64,
    response_started: bool,
    client_label: Option<String>,
}

impl Exchange {
    /// Starts the record for an exchange on `client`'s connection.
    pub fn new(client: &Client, started: Instant) -> Self {
        Exchange {
            client: client.addr,
            started,
            method: Bytes::new(),
            host: String::new(),
            port: 0,
            path: Bytes::new(),
            status: None,
            bytes: 0,
            response_started: false,
            client_label: None,
        }
    }

    /// Records the request method.
    pub fn set_request(&mut self, head: &RequestHead) {
        self.method = head.raw().slice_ref(head.method());
    }

    /// Records where the request goes.
    pub fn set_target(&mut self, host: &str, port: u16, path: &Bytes) {
        host.clone_into(&mut self.host);
        self.port = port;
        self.path = path.clone();
    }

    /// Records the status sent to the client; from now on no error reply may be sent.
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
        self.response_started = true;
    }

    /// Marks that bytes were sent to the client (an interim response, a tunnel's 200).
    pub fn mark_response_started(&mut self) {
        self.response_started = true;
    }

    /// Whether access-log lines are written at all (so costly labels can be skipped).
    pub fn enabled() -> bool {
        tracing::enabled!(target: "proxy::access", tracing::Level::INFO)
    }

    /// Names the client in the log line instead of its IP address (a plugin's label).
    pub fn set_client_label(&mut self, label: Option<String>) {
        self.client_label = label;
    }

    /// Counts bytes sent to the client.
    pub fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    /// The status sent to the client, if any.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// True once anything was written to the client for this exchange.
    pub fn response_started(&self) -> bool {
        self.response_started
    }

    /// Logs a successful exchange.
    pub fn log_ok(&self, conn: u64, worker: usize) {
        self.emit(None, conn, worker);
    }

    /// Logs an exchange that ended with `err` (client-side noise at debug level).
    pub fn log(&self, err: &ProxyError, conn: u64, worker: usize) {
        let quiet = matches!(
            err.kind(),
            ErrorKind::ClientClosed | ErrorKind::ClientTimeout
        );
        if quiet && self.method.is_empty() {
            tracing::debug!(error.code = err.code(), error = %err, "client connection ended");
            return;
        }
        if err.kind().side() == Side::Upstream || err.kind().side() == Side::Internal {
            tracing::debug!(error.code = err.code(), error = %err, "exchange failed");
        }
        self.emit(Some(err), conn, worker);
    }

    fn emit(&self, err: Option<&ProxyError>, conn: u64, worker: usize) {
        if !tracing::enabled!(target: "proxy::access", tracing::Level::INFO) {
            return;
        }
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let method = String::from_utf8_lossy(&self.method);
        let path = String::from_utf8_lossy(&self.path);
        let code = err.map(|e| e.code()).unwrap_or("");
        let status = self.status.unwrap_or(0);
        let reason = self.status.map(reason_phrase).unwrap_or("-");
        let cport = self.client.port();
        let client_ip = self.client.ip();
        let ip: &dyn std::fmt::Display = match &self.client_label {
            Some(label) => label,
            None => &client_ip,
        };
        // proxy.py writes `None:None` where no upstream was involved (its README FAQ).
        let (host, port): (&str, &dyn std::fmt::Display) = if self.host.is_empty() {
            ("None", &"None")
        } else {
            (&self.host, &self.port)
        };
        if method == "CONNECT" {
            tracing::info!(
                target: "proxy::access",
                client = %self.client, method = %method, host = %self.host, port = self.port,
                bytes = self.bytes, ms, status, error.code = code, conn, worker,
                "{ip}:{cport} - CONNECT {host}:{port} - {} bytes - {ms:.2}ms{}{code}",
                self.bytes, if code.is_empty() { "" } else { " - " },
            );
        } else {
            tracing::info!(
                target: "proxy::access",
                client = %self.client, method = %method, host = %self.host, port = self.port,
                path = %path, status, bytes = self.bytes, ms, error.code = code, conn, worker,
                "{ip}:{cport} - {method} {host}:{port}{path} - {} {reason} - {} bytes - {ms:.2}ms{}{code}",
                self.status.map_or("-".to_string(), |s| s.to_string()),
                self.bytes, if code.is_empty() { "" } else { " - " },
            );
        }
    }
}
