//! The access log: one line per exchange, in proxy.py's format, as a `tracing` event
//! with target `proxy::access` (so `--log-format json` gets every field).
//!
//! proxy.py logs once per client connection and only the first request; we log every
//! exchange, including refused and failed ones (with the error code as a field).
//!
//! When the binary's own logger is installed ([`logging::access_log`]), the line skips
//! `tracing` and is rendered straight into a reused buffer: the same text, without the
//! dispatch, the field visiting and the allocations (about a quarter of a small GET's
//! cost otherwise).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Client;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::{response::reason_phrase, RequestHead};
use crate::logging::{self, AccessEvent, Callsite, JsonFields};

/// What the access log needs to know about one exchange.
pub struct Exchange {
    client: SocketAddr,
    started: Instant,
    method: Bytes,
    host: String,
    port: u16,
    path: Bytes,
    /// The request went over TLS to the origin.
    https: bool,
    status: Option<u16>,
    bytes: u64,
    response_started: bool,
    client_label: Option<String>,
}

impl Exchange {
    /// Starts the record for an exchange on `client`'s connection.
    pub fn new(client: &Client, started: Instant) -> Self {
        Exchange::empty(client.addr, started)
    }

    /// Drops what points into the request's buffers (its method and path), once the
    /// exchange is logged: a connection waiting for its next request holds no part of
    /// the last one.
    pub fn release(&mut self) {
        self.method = Bytes::new();
        self.path = Bytes::new();
        self.client_label = None;
    }

    /// Starts the record of the next exchange on the same connection, keeping what can
    /// be reused (the host's buffer: most connections talk to one host).
    pub fn restart(&mut self, started: Instant) {
        let mut host = std::mem::take(&mut self.host);
        host.clear();
        *self = Exchange {
            host,
            ..Exchange::empty(self.client, started)
        };
    }

    fn empty(client: SocketAddr, started: Instant) -> Self {
        Exchange {
            client,
            started,
            method: Bytes::new(),
            host: String::new(),
            port: 0,
            path: Bytes::new(),
            https: false,
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

    /// Whether the recorded request is a HEAD (its reply carries no body).
    pub fn is_head(&self) -> bool {
        self.method[..] == *b"HEAD"
    }

    /// Records where the request goes.
    pub fn set_target(&mut self, host: &str, port: u16, path: &Bytes) {
        host.clone_into(&mut self.host);
        self.port = port;
        self.path = path.clone();
    }

    /// Records that the request travels over TLS (an intercepted tunnel, an `https://`
    /// target): the line shows `https://host:port/path`.
    pub fn set_https(&mut self, https: bool) {
        self.https = https;
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

    /// Whether the connection became a tunnel (CONNECT, or a 101 upgrade): what
    /// follows the response is a byte stream, not a message of known end.
    pub fn is_tunnel(&self) -> bool {
        self.method[..] == *b"CONNECT" || self.status == Some(101)
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
        let line = Line {
            exchange: self,
            elapsed: self.started.elapsed(),
            code: err.map(|e| e.code()).unwrap_or(""),
            conn,
            worker,
        };
        match logging::access_log() {
            Some(log) => log.write(&CALLSITE, &line),
            None => line.emit_event(),
        }
    }
}

/// What `%(module)s.%(funcName)s:%(lineno)d` shows for an access line.
const CALLSITE: Callsite = Callsite {
    file: file!(),
    line: line!(),
    module_path: module_path!(),
};

// === Line: one exchange's access-log line ===

/// An exchange as its access-log line shows it.
struct Line<'a> {
    exchange: &'a Exchange,
    elapsed: Duration,
    /// The error code, or empty.
    code: &'static str,
    conn: u64,
    worker: usize,
}

impl Line<'_> {
    fn is_connect(&self) -> bool {
        self.exchange.method[..] == *b"CONNECT"
    }

    /// The same line as a `tracing` event, for a subscriber that is not ours.
    fn emit_event(&self) {
        let x = self.exchange;
        let mut message = String::new();
        self.message(&mut message);
        let method = String::from_utf8_lossy(&x.method);
        let ms = self.ms();
        let (code, conn, worker) = (self.code, self.conn, self.worker);
        if self.is_connect() {
            tracing::info!(
                target: "proxy::access",
                client = %x.client, method = %method, host = %x.host, port = x.port,
                bytes = x.bytes, ms, status = x.status.unwrap_or(0), error.code = code, conn, worker,
                "{message}",
            );
        } else {
            let path = String::from_utf8_lossy(&x.path);
            tracing::info!(
                target: "proxy::access",
                client = %x.client, method = %method, scheme = if x.https { "https" } else { "http" },
                host = %x.host, port = x.port, path = %path, status = x.status.unwrap_or(0), bytes = x.bytes, ms, error.code = code,
                conn, worker,
                "{message}",
            );
        }
    }

    /// Milliseconds the exchange took, for the `ms` field.
    fn ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0
    }
}

impl AccessEvent for Line<'_> {
    /// `ip:port - GET host:port/path - 200 OK - 146 bytes - 0.84ms[ - code]`, or
    /// `ip:port - CONNECT host:port - 146 bytes - 0.84ms[ - code]`.
    fn message(&self, out: &mut String) {
        let x = self.exchange;
        let mut num = itoa::Buffer::new();
        // An IPv6 address in brackets, so that its port can be told from it.
        match &x.client_label {
            Some(label) => out.push_str(label),
            None if x.client.is_ipv6() => {
                out.push('[');
                logging::push_ip(x.client.ip(), out);
                out.push(']');
            }
            None => logging::push_ip(x.client.ip(), out),
        }
        out.push(':');
        out.push_str(num.format(x.client.port()));
        out.push_str(" - ");
        match known_method(&x.method) {
            Some(method) => out.push_str(method),
            None => push_lossy(&x.method, out),
        }
        out.push(' ');
        // proxy.py writes `None:None` where no upstream was involved (its README FAQ).
        if x.host.is_empty() {
            out.push_str("None:None");
        } else {
            if x.https && !self.is_connect() {
                out.push_str("https://");
            }
            if x.host.contains(':') {
                out.push('[');
                out.push_str(&x.host);
                out.push(']');
            } else {
                out.push_str(&x.host);
            }
            out.push(':');
            out.push_str(num.format(x.port));
        }
        if !self.is_connect() {
            push_lossy(&x.path, out);
            out.push_str(" - ");
            match x.status {
                Some(status) => {
                    out.push_str(num.format(status));
                    out.push(' ');
                    out.push_str(reason_phrase(status));
                }
                None => out.push_str("- -"),
            }
        }
        out.push_str(" - ");
        out.push_str(num.format(x.bytes));
        out.push_str(" bytes - ");
        push_millis(self.elapsed, out);
        out.push_str("ms");
        if !self.code.is_empty() {
            out.push_str(" - ");
            out.push_str(self.code);
        }
    }

    /// The `tracing` event's fields, in its order.
    fn fields(&self, f: &mut JsonFields<'_>) {
        let x = self.exchange;
        f.addr("client", x.client);
        f.str("method", &String::from_utf8_lossy(&x.method));
        if !self.is_connect() {
            f.str("scheme", if x.https { "https" } else { "http" });
        }
        f.str("host", &x.host);
        f.u64("port", u64::from(x.port));
        let status = u64::from(x.status.unwrap_or(0));
        if self.is_connect() {
            f.u64("bytes", x.bytes);
            f.f64("ms", self.ms());
            f.u64("status", status);
        } else {
            f.str("path", &String::from_utf8_lossy(&x.path));
            f.u64("status", status);
            f.u64("bytes", x.bytes);
            f.f64("ms", self.ms());
        }
        f.str("error.code", self.code);
        f.u64("conn", self.conn);
        f.u64("worker", self.worker as u64);
    }
}

/// The common methods as `&'static str`, skipping the UTF-8 check.
fn known_method(method: &[u8]) -> Option<&'static str> {
    Some(match method {
        b"GET" => "GET",
        b"POST" => "POST",
        b"CONNECT" => "CONNECT",
        b"HEAD" => "HEAD",
        b"PUT" => "PUT",
        b"DELETE" => "DELETE",
        b"OPTIONS" => "OPTIONS",
        b"PATCH" => "PATCH",
        _ => return None,
    })
}

/// Bytes as text, invalid UTF-8 replaced (as `String::from_utf8_lossy`).
fn push_lossy(bytes: &[u8], out: &mut String) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// `d` in milliseconds with two decimals (`0.84`), rounded half up.
fn push_millis(d: Duration, out: &mut String) {
    // In u64 (584 years of nanoseconds): u128 division is a library call.
    let nanos = d
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()));
    let hundredths = nanos.saturating_add(5_000) / 10_000;
    out.push_str(itoa::Buffer::new().format(hundredths / 100));
    out.push('.');
    let frac = (hundredths % 100) as u8;
    out.push(char::from(b'0' + frac / 10));
    out.push(char::from(b'0' + frac % 10));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    use crate::config::{LogConfig, LogFormat, DEFAULT_LOG_FORMAT};
    use crate::logging::{alloc_count::allocations, AccessLog, LineFormat, LogWriter};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn exchange(
        client: &str,
        method: &[u8],
        host: &str,
        path: &[u8],
        status: Option<u16>,
    ) -> Exchange {
        Exchange {
            client: client.parse().unwrap(),
            started: Instant::now(),
            method: Bytes::copy_from_slice(method),
            host: host.to_owned(),
            port: if host.is_empty() { 0 } else { 8080 },
            path: Bytes::copy_from_slice(path),
            https: false,
            status,
            bytes: 146,
            response_started: status.is_some(),
            client_label: None,
        }
    }

    fn line<'a>(exchange: &'a Exchange, code: &'static str) -> Line<'a> {
        Line {
            exchange,
            elapsed: Duration::from_micros(843),
            code,
            conn: 7,
            worker: 1,
        }
    }

    fn samples() -> Vec<(Exchange, &'static str)> {
        let mut labelled = exchange("[::1]:5000", b"POST", "example.com", b"/form", Some(201));
        labelled.client_label = Some("curl".into());
        let mut odd = exchange(
            "10.1.2.3:4",
            b"PURGE",
            "h\u{85}st",
            b"/a\xff\x1b[31m\xc2\x85",
            Some(502),
        );
        odd.client_label = Some("evil\nlabel".into());
        vec![
            (
                exchange(
                    "127.0.0.1:5000",
                    b"GET",
                    "example.com",
                    b"/x?y=1",
                    Some(200),
                ),
                "",
            ),
            (
                exchange("127.0.0.1:5001", b"CONNECT", "example.com", b"", Some(200)),
                "",
            ),
            (
                exchange("127.0.0.1:5002", b"CONNECT", "example.com", b"", None),
                "connection_refused",
            ),
            (
                exchange("127.0.0.1:5003", b"GET", "", b"", None),
                "http_request_error",
            ),
            (labelled, ""),
            (odd, "http_protocol_error"),
            (exchange("[::1]:5004", b"GET", "::1", b"/v6", Some(200)), ""),
        ]
    }

    /// Every sample's line through `tracing` and through the fast path, in `format`.
    fn both_ways(format: LogFormat) -> (String, String) {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::spawn(Box::new(sink.clone())).unwrap();
        let log = LogConfig {
            level: tracing::Level::INFO,
            file: None,
            format: format.clone(),
        };
        let samples = samples();
        tracing::subscriber::with_default(crate::logging::subscriber(&log, writer.clone()), || {
            for (x, code) in &samples {
                line(x, code).emit_event();
            }
        });
        let access = AccessLog::new(LineFormat::new(&format), writer);
        for (x, code) in &samples {
            access.write(&CALLSITE, &line(x, code));
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * samples.len(), "{text}");
        let (slow, fast) = lines.split_at(samples.len());
        (slow.join("\n"), fast.join("\n"))
    }

    #[test]
    fn the_fast_path_writes_what_tracing_would() {
        // Its fields other than the message are fixed by the callsite: the message is
        // rendered straight into the line. With a width, it goes through a record.
        let direct = "%(levelname)s %(name)s %(module)s.%(funcName)s %(filename)s %(processName)s - %(message)s";
        let (slow, fast) = both_ways(LogFormat::Template(format!("{direct}|%(message)-9s")));
        assert_eq!(fast, slow);
        let (slow, fast) = both_ways(LogFormat::Template(direct.into()));
        assert_eq!(fast, slow);
        assert_eq!(
            fast.lines().collect::<Vec<_>>(),
            [
                "INFO proxy::access access.access access.rs MainProcess - 127.0.0.1:5000 - GET example.com:8080/x?y=1 - 200 OK - 146 bytes - 0.84ms",
                "INFO proxy::access access.access access.rs MainProcess - 127.0.0.1:5001 - CONNECT example.com:8080 - 146 bytes - 0.84ms",
                "INFO proxy::access access.access access.rs MainProcess - 127.0.0.1:5002 - CONNECT example.com:8080 - 146 bytes - 0.84ms - connection_refused",
                "INFO proxy::access access.access access.rs MainProcess - 127.0.0.1:5003 - GET None:None - - - - 146 bytes - 0.84ms - http_request_error",
                "INFO proxy::access access.access access.rs MainProcess - curl:5000 - POST example.com:8080/form - 201 Created - 146 bytes - 0.84ms",
                "INFO proxy::access access.access access.rs MainProcess - evil\\nlabel:4 - PURGE h\\u{85}st:8080/a\u{fffd}\\u{1b}[31m\\u{85} - 502 Bad Gateway - 146 bytes - 0.84ms - http_protocol_error",
                "INFO proxy::access access.access access.rs MainProcess - [::1]:5004 - GET [::1]:8080/v6 - 200 OK - 146 bytes - 0.84ms",
            ]
        );
    }

    #[test]
    fn the_fast_path_writes_the_json_tracing_would() {
        let (slow, fast) = both_ways(LogFormat::Json);
        let parse = |text: &str| -> Vec<serde_json::Value> {
            text.lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    assert!(v.as_object_mut().unwrap().remove("ts").is_some());
                    v
                })
                .collect()
        };
        assert_eq!(parse(&fast), parse(&slow));
        // Key order too (serde_json's map sorts keys, so compare the text past `ts`).
        let strip_ts = |l: &str| l[l.find(",\"level\"").unwrap()..].to_owned();
        for (f, s) in fast.lines().zip(slow.lines()) {
            assert_eq!(strip_ts(f), strip_ts(s));
        }
        assert!(fast.lines().next().unwrap().ends_with(
            r#""target":"proxy::access","message":"127.0.0.1:5000 - GET example.com:8080/x?y=1 - 200 OK - 146 bytes - 0.84ms","client":"127.0.0.1:5000","method":"GET","scheme":"http","host":"example.com","port":8080,"path":"/x?y=1","status":200,"bytes":146,"ms":0.843,"error.code":"","conn":7,"worker":1}"#
        ), "{fast}");
    }

    #[test]
    fn an_access_line_allocates_nothing() {
        let samples = samples();
        for format in [
            LogFormat::Template(DEFAULT_LOG_FORMAT.into()),
            LogFormat::Json,
        ] {
            let (writer, guard) = LogWriter::spawn(Box::new(io::sink())).unwrap();
            let access = AccessLog::new(LineFormat::new(&format), writer);
            let (mut message, mut out) = (String::new(), String::new());
            let (x, code) = &samples[0];
            let now = std::time::SystemTime::now();
            access.render(&CALLSITE, &line(x, code), now, &mut message, &mut out);
            let before = allocations();
            for _ in 0..1000 {
                out.clear();
                access.render(&CALLSITE, &line(x, code), now, &mut message, &mut out);
            }
            assert_eq!(allocations() - before, 0, "{format:?}: {out}");
            // Queued lines only grow the queue's buffer, now and then.
            let before = allocations();
            for _ in 0..10_000 {
                access.write(&CALLSITE, &line(x, code));
            }
            let grown = allocations() - before;
            assert!(
                grown < 100,
                "{format:?}: {grown} allocations for 10,000 lines"
            );
            drop(guard);
        }
    }

    #[test]
    fn milliseconds_have_two_rounded_decimals() {
        let ms = |micros| {
            let mut out = String::new();
            push_millis(Duration::from_micros(micros), &mut out);
            out
        };
        assert_eq!(ms(0), "0.00");
        assert_eq!(ms(4), "0.00");
        assert_eq!(ms(5), "0.01");
        assert_eq!(ms(843), "0.84");
        assert_eq!(ms(999_995), "1000.00");
        assert_eq!(ms(12_345_678), "12345.68");
    }
}
