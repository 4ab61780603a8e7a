//! `Config`: the validated, resolved settings every worker shares read-only.
//!
//! Built from `cli::Cli` by `Config::from_cli` (files read, values checked); any
//! error here is printed once and the process exits 64 before a socket is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::dns::{Resolve, SystemResolver};

/// Size limits on HTTP heads (RFC 9112 leaves them to us; these match common servers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, bytes, CRLF excluded (→ 414).
    pub max_request_line: usize,
    /// Longest single header line, bytes (→ 431).
    pub max_header_line: usize,
    /// Most header fields in one head (→ 431).
    pub max_headers: usize,
    /// Longest whole head, bytes (→ 431 for requests, 502 for responses).
    pub max_head: usize,
    /// Longest chunk-size line including extensions, bytes.
    pub max_chunk_line: usize,
    /// Longest trailer section, bytes.
    pub max_trailers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_header_line: 8 * 1024,
            max_headers: 100,
            max_head: 64 * 1024,
            max_chunk_line: 4 * 1024,
            max_trailers: 16 * 1024,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// A proxy.py-style `%(name)s` template.
    Template(String),
    /// One JSON object per line.
    Json,
}

/// Logging settings (applied by `main`, never by the library).
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Minimum level.
    pub level: tracing::Level,
    /// `None` = standard output.
    pub file: Option<PathBuf>,
    /// Line format.
    pub format: LogFormat,
}

/// Everything a worker needs, validated. Shared as `Arc<Config>`.
#[derive(Clone)]
pub struct Config {
    /// Every (address, port) to listen on; port 0 = one ephemeral port shared by all workers.
    pub listen: Vec<SocketAddr>,
    /// Worker threads (each with its own listeners and runtime).
    pub num_workers: usize,
    /// `listen(2)` backlog.
    pub backlog: u32,
    /// Where to write the bound ports, one per line; removed on exit.
    pub port_file: Option<PathBuf>,
    /// Where to write our PID; removed on exit.
    pub pid_file: Option<PathBuf>,
    /// Raise the soft `RLIMIT_NOFILE` to this if the hard limit allows.
    pub open_file_limit: u64,
    /// Inactivity timeout for any wait on a client or an origin (`--timeout`).
    pub timeout: Duration,
    /// Bound on the time from the first byte of a request head to its end.
    pub header_timeout: Duration,
    /// Bound on DNS + TCP connect to an origin.
    pub connect_timeout: Duration,
    /// How long in-flight exchanges may run after SIGINT/SIGTERM.
    pub grace_period: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// Most idle pooled connections per (host, port) per worker.
    pub upstream_max_idle_per_host: usize,
    /// Bytes read from a client per `read` while relaying bodies (`--client-recvbuf-size`).
    pub client_recvbuf_size: usize,
    /// Bytes read from an origin per `read` while relaying bodies (`--server-recvbuf-size`).
    pub server_recvbuf_size: usize,
    /// Request header names (lower-case) removed before forwarding (`--disable-headers`).
    pub disable_headers: Vec<String>,
    /// Head size limits.
    pub limits: Limits,
    /// Logging (applied by the binary).
    pub log: LogConfig,
    /// Name resolution for origins.
    pub resolver: Arc<dyn Resolve>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("num_workers", &self.num_workers)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    /// proxy.py's defaults: 127.0.0.1:8899, one worker per core, 10 s timeouts.
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8899))],
            num_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            backlog: 100,
            port_file: None,
            pid_file: None,
            open_file_limit: 1024,
            timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(10),
            upstream_idle_timeout: Duration::from_secs(30),
            upstream_max_idle_per_host: 32,
            client_recvbuf_size: 128 * 1024,
            server_recvbuf_size: 128 * 1024,
            disable_headers: Vec::new(),
            limits: Limits::default(),
            log: LogConfig {
                level: tracing::Level::INFO,
                file: None,
                format: LogFormat::Template(DEFAULT_LOG_FORMAT.to_owned()),
            },
            resolver: Arc::new(SystemResolver),
        }
    }
}

/// proxy.py's default `--log-format`.
pub const DEFAULT_LOG_FORMAT: &str =
    "%(asctime)s - pid:%(process)d [%(levelname)-.1s] %(module)s.%(funcName)s:%(lineno)d - %(message)s";
