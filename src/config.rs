//! `Config`: the validated, resolved settings every worker shares read-only.
//!
//! Built from `cli::Cli` by `Config::from_cli` (files read, values checked); any
//! error here is printed once and the process exits 64 before a socket is bound.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

// The values of two flags are defined with the flags (this module is built from `cli`,
// never the other way round).
pub use crate::cli::{ClientIpMode, DEFAULT_LOG_FORMAT};
use crate::destination::{DenyList, PortRanges};
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
    /// Plugin names from `--plugins` (comma-split, in order, empty items dropped).
    pub plugins: Vec<String>,
    /// Lua scripts from `--script`, in order (after the `--plugins` ones).
    pub scripts: Vec<PathBuf>,
    /// Lua instructions one script event may run (`--script-instruction-limit`).
    pub script_instruction_limit: u64,
    /// Bytes each script VM may allocate (`--script-memory-limit`).
    pub script_memory_limit: usize,
    /// How often scripts' `flush` handlers run besides shutdown (`--script-flush-interval`).
    pub script_flush_interval: Option<Duration>,
    /// `--set script.name=value`: (script, option, value), checked when scripts load.
    pub script_settings: Vec<(String, String, String)>,
    /// `--list-commands`: print the scripts' commands and exit.
    pub list_commands: bool,
    /// Where the scripts' `kv` store is kept (`--kv-file`; `None`: memory only).
    pub kv_file: Option<PathBuf>,
    /// The directory scripts' `artifacts` may use (`--artifacts-dir`; `None`: none).
    pub artifacts_dir: Option<PathBuf>,
    /// The directory scripts' `data_store` may read (`--data-dir`; `None`: none).
    pub data_dir: Option<PathBuf>,
    /// `user:pass` credentials from `--basic-auth`; non-empty turns proxy authentication on.
    pub basic_auth: Vec<String>,
    /// The PAC file to serve (`--pac-file`): the file's bytes, or the literal text when no
    /// such file exists (as proxy.py).
    pub pac_file: Option<Vec<u8>>,
    /// The path the PAC file is served at (`--pac-file-url-path`).
    pub pac_file_url_path: String,
    /// Lower-cased hosts `FilterByUpstreamHostPlugin` refuses (`--filtered-upstream-hosts`).
    pub filtered_upstream_hosts: Vec<String>,
    /// Blacklist or whitelist for `FilterByClientIpPlugin`.
    pub filtered_client_ips_mode: ClientIpMode,
    /// Client addresses for `FilterByClientIpPlugin` (`--filtered-client-ips`).
    pub filtered_client_ips: Vec<IpAddr>,
    /// The rules of `FilterByURLRegexPlugin`, in file order (`--filtered-url-regex-config`):
    /// regular expressions searched for in each request's `host` + `path`.
    pub filtered_url_regexes: Vec<String>,
    /// CacheResponsesPlugin's directory (`--cache-dir`, `~` expanded).
    pub cache_dir: PathBuf,
    /// CacheResponsesPlugin: record requests too (`--cache-requests`).
    pub cache_requests: bool,
    /// CacheResponsesPlugin: extract decoded bodies by content type (`--cache-by-content-type`).
    pub cache_by_content_type: bool,
    /// Answer origin-form requests with the built-in web server's routes
    /// (`--enable-web-server`; also set by `--enable-static-server`).
    pub enable_web_server: bool,
    /// Serve files under `static_server_dir` to origin-form requests (`--enable-static-server`).
    pub enable_static_server: bool,
    /// The static server's root (`--static-server-dir`); canonical (absolute, no symlinks)
    /// when `enable_static_server` is set.
    pub static_server_dir: PathBuf,
    /// Refuse absolute-form and CONNECT requests: web server only (`--disable-http-proxy`).
    pub disable_http_proxy: bool,
    /// Ports a CONNECT may reach (`--connect-ports`); `None`: any.
    pub connect_ports: Option<PortRanges>,
    /// Addresses no request may be connected to (`--deny-destinations`); empty: none.
    pub deny_destinations: DenyList,
    /// TLS: the listener's certificate, interception, origin verification.
    pub tls: TlsConfig,
    /// `--ca-generate DIR`: write a CA there and exit (handled by the binary).
    pub ca_generate: Option<PathBuf>,
    /// `--num-acceptors`, accepted for proxy.py compatibility and otherwise ignored.
    pub num_acceptors: Option<u64>,
    /// proxy.py's execution-mode flags given (`--threadless`, `--threaded`,
    /// `--local-executor N`), accepted and ignored: named in a start-up note.
    pub ignored_modes: Vec<String>,
    /// `--pac-file` named no existing file and is served as literal PAC text.
    pub pac_file_is_literal: bool,
    /// Head size limits.
    pub limits: Limits,
    /// Logging (applied by the binary).
    pub log: LogConfig,
    /// Name resolution for origins.
    pub resolver: Arc<dyn Resolve>,
    /// Join ports other processes already listen on (`--reuse-port`), instead of
    /// refusing to start: the new process of a zero-downtime upgrade.
    pub reuse_port: bool,
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

/// The TLS flags, checked for consistency; the files are read and parsed at start
/// (`tls::TlsContext::new`), so that a bad file stops start-up with exit code 64.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// `--cert-file` and `--key-file`: the listener speaks TLS.
    pub listener: Option<(PathBuf, PathBuf)>,
    /// The three `--ca-*-file` flags: interception is on.
    pub ca: Option<CaPaths>,
    /// `--ca-cert-dir`, `~` expanded.
    pub ca_cert_dir: PathBuf,
    /// `--ca-file`: the bundle origins are verified against (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// `--insecure-tls-interception`: origins are not verified.
    pub insecure: bool,
    /// `--ignore-hosts`: never intercept these `host:port`s.
    pub ignore_hosts: Vec<regex::Regex>,
    /// `--allow-hosts`: intercept only these `host:port`s (empty: all).
    pub allow_hosts: Vec<regex::Regex>,
}

/// The interception CA's three files (proxy.py's flags).
#[derive(Debug, Clone)]
pub struct CaPaths {
    /// `--ca-key-file`.
    pub key: PathBuf,
    /// `--ca-cert-file`.
    pub cert: PathBuf,
    /// `--ca-signing-key-file`.
    pub signing_key: PathBuf,
}

impl TlsConfig {
    /// True when CONNECTs may be intercepted.
    pub fn intercepts(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether a CONNECT to `host:port` is intercepted, by --ignore-hosts/--allow-hosts.
    pub fn should_intercept(&self, host: &str, port: u16) -> bool {
        if self.ignore_hosts.is_empty() && self.allow_hosts.is_empty() {
            return true;
        }
        let authority = format!("{host}:{port}");
        if self.ignore_hosts.iter().any(|re| re.is_match(&authority)) {
            return false;
        }
        self.allow_hosts.is_empty() || self.allow_hosts.iter().any(|re| re.is_match(&authority))
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
            upstream_max_idle_per_host: 1024,
            client_recvbuf_size: 128 * 1024,
            server_recvbuf_size: 128 * 1024,
            disable_headers: Vec::new(),
            plugins: Vec::new(),
            scripts: Vec::new(),
            script_instruction_limit: 10_000_000,
            script_memory_limit: 64 * 1024 * 1024,
            script_flush_interval: None,
            script_settings: Vec::new(),
            list_commands: false,
            kv_file: None,
            artifacts_dir: None,
            data_dir: None,
            basic_auth: Vec::new(),
            pac_file: None,
            pac_file_url_path: "/".to_owned(),
            filtered_upstream_hosts: vec!["facebook.com".to_owned(), "www.facebook.com".to_owned()],
            filtered_client_ips_mode: ClientIpMode::Blacklist,
            filtered_client_ips: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            enable_web_server: false,
            enable_static_server: false,
            filtered_url_regexes: Vec::new(),
            cache_dir: expand_home("~/.proxy/cache"),
            cache_requests: false,
            cache_by_content_type: false,
            static_server_dir: PathBuf::from("./public"),
            disable_http_proxy: false,
            connect_ports: None,
            deny_destinations: DenyList::default(),
            num_acceptors: None,
            ignored_modes: Vec::new(),
            tls: TlsConfig::default(),
            ca_generate: None,
            pac_file_is_literal: false,
            limits: Limits::default(),
            log: LogConfig {
                level: tracing::Level::INFO,
                file: None,
                format: LogFormat::Template(DEFAULT_LOG_FORMAT.to_owned()),
            },
            resolver: Arc::new(SystemResolver::default()),
            reuse_port: false,
        }
    }
}

// === impl Config (from the command line) ===

/// The longest duration any setting may have (as on the command line): a deadline
/// computed from a longer one could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

impl Config {
    /// Checks the durations an embedder may have set on the struct directly (the
    /// command line already bounds them): each at most [`MAX_DURATION`], the
    /// timeouts and the script flush interval above zero.
    ///
    /// # Errors
    /// Names the first setting out of range.
    pub fn check_durations(&self) -> Result<(), String> {
        let positive = [
            ("timeout", Some(self.timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
            ("header_timeout", Some(self.header_timeout)),
            ("script_flush_interval", self.script_flush_interval),
        ];
        let any = [
            ("grace_period", self.grace_period),
            ("upstream_idle_timeout", self.upstream_idle_timeout),
        ];
        for (name, d) in positive
            .into_iter()
            .filter_map(|(name, d)| Some((name, d?)))
        {
            if d.is_zero() {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        for (name, d) in positive
            .into_iter()
            .filter_map(|(name, d)| Some((name, d?)))
            .chain(any)
        {
            if d > MAX_DURATION {
                return Err(format!("{name} is over {} s", MAX_DURATION.as_secs()));
            }
        }
        Ok(())
    }

    /// Builds a validated `Config` from parsed flags: listen addresses, worker count,
    /// header names, and that the directories of `--log-file`, `--pid-file` and
    /// `--port-file` exist. Reads nothing else and binds nothing.
    ///
    /// # Errors
    /// A `CliError` with exit code 64 and a one-line message.
    pub fn from_cli(cli: crate::cli::Cli) -> Result<Config, crate::cli::CliError> {
        use crate::cli::CliError;

        let mut listen = Vec::new();
        for ip in std::iter::once(cli.hostname).chain(cli.hostnames.iter().copied()) {
            for port in std::iter::once(cli.port).chain(cli.ports.iter().copied()) {
                let addr = SocketAddr::new(ip, port);
                if !listen.contains(&addr) {
                    listen.push(addr);
                }
            }
        }

        let tls = tls_config(&cli).map_err(CliError::usage)?;

        let num_workers = match cli.num_workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };

        let disable_headers = match &cli.disable_headers {
            Some(list) => parse_header_list(list).map_err(CliError::usage)?,
            None => Vec::new(),
        };

        for (flag, path) in [
            ("--log-file", &cli.log_file),
            ("--pid-file", &cli.pid_file),
            ("--port-file", &cli.port_file),
        ] {
            if let Some(path) = path {
                check_parent_dir(path).map_err(|why| {
                    CliError::usage(format_args!("{flag}: {}: {why}", path.display()))
                })?;
            }
        }

        let (pac_file, pac_file_is_literal) = match &cli.pac_file {
            Some(value) => {
                let (text, literal) = read_pac_file(value).map_err(CliError::usage)?;
                (Some(text), literal)
            }
            None => (None, false),
        };

        let plugins: Vec<String> = cli
            .plugins
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();

        let mut filtered_upstream_hosts: Vec<String> = Vec::new();
        for host in cli
            .filtered_upstream_hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            // Targets carry IPv6 literals without brackets.
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
                .to_ascii_lowercase();
            if !filtered_upstream_hosts.contains(&host) {
                filtered_upstream_hosts.push(host);
            }
        }

        let filtered_url_regexes = if cli.filtered_url_regex_config.is_empty() {
            Vec::new()
        } else {
            read_url_regex_config(Path::new(&cli.filtered_url_regex_config)).map_err(|why| {
                CliError::usage(format_args!(
                    "--filtered-url-regex-config: {}: {why}",
                    cli.filtered_url_regex_config
                ))
            })?
        };

        // The static root is resolved once, so that every request is checked against
        // the same canonical directory (and a typo fails now, not on the first request).
        let static_server_dir = if cli.enable_static_server {
            canonical_dir(&cli.static_server_dir).map_err(|why| {
                CliError::usage(format_args!(
                    "--static-server-dir: {}: {why}",
                    cli.static_server_dir.display()
                ))
            })?
        } else {
            cli.static_server_dir
        };

        let format = if cli.log_format.eq_ignore_ascii_case("json") {
            LogFormat::Json
        } else {
            LogFormat::Template(cli.log_format)
        };

        Ok(Config {
            listen,
            num_workers,
            backlog: cli.backlog,
            port_file: cli.port_file,
            pid_file: cli.pid_file,
            open_file_limit: cli.open_file_limit,
            timeout: cli.timeout,
            header_timeout: cli.header_timeout,
            connect_timeout: cli.connect_timeout,
            grace_period: cli.grace_period,
            client_recvbuf_size: cli.client_recvbuf_size,
            server_recvbuf_size: cli.server_recvbuf_size,
            disable_headers,
            plugins,
            scripts: cli.script,
            script_instruction_limit: cli.script_instruction_limit,
            script_memory_limit: usize::try_from(cli.script_memory_limit).unwrap_or(usize::MAX),
            script_flush_interval: cli.script_flush_interval,
            script_settings: cli.set,
            list_commands: cli.list_commands,
            kv_file: cli.kv_file,
            artifacts_dir: cli.artifacts_dir,
            data_dir: cli.data_dir,
            basic_auth: cli.basic_auth,
            pac_file,
            pac_file_url_path: cli.pac_file_url_path,
            filtered_upstream_hosts,
            filtered_client_ips_mode: cli.filtered_client_ips_mode,
            filtered_client_ips: cli.filtered_client_ips.0,
            filtered_url_regexes,
            cache_dir: expand_home(&cli.cache_dir),
            cache_requests: cli.cache_requests,
            cache_by_content_type: cli.cache_by_content_type,
            enable_web_server: cli.enable_web_server || cli.enable_static_server,
            enable_static_server: cli.enable_static_server,
            static_server_dir,
            disable_http_proxy: cli.disable_http_proxy,
            connect_ports: cli.connect_ports,
            deny_destinations: cli.deny_destinations.unwrap_or_default(),
            num_acceptors: cli.num_acceptors,
            ignored_modes: [
                cli.threadless.then(|| "--threadless".to_owned()),
                cli.threaded.then(|| "--threaded".to_owned()),
                cli.local_executor.map(|n| format!("--local-executor {n}")),
            ]
            .into_iter()
            .flatten()
            .collect(),
            tls,
            ca_generate: cli.ca_generate,
            pac_file_is_literal,
            log: LogConfig {
                level: cli.log_level,
                file: cli.log_file,
                format,
            },
            reuse_port: cli.reuse_port,
            ..Config::default()
        })
    }

    /// Parses a command line (first item = program name, like `std::env::args_os`)
    /// and builds the `Config`, exactly as the binary does.
    ///
    /// # Errors
    /// See [`crate::cli::CliError`]: exit code 0 for `--help`/`--version` (the text is
    /// the message), 2 for a malformed command line, 64 for a bad value.
    pub fn from_args<I, T>(args: I) -> Result<Config, crate::cli::CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::from_cli(crate::cli::Cli::try_parse_args(args)?)
    }
}

/// The TLS flags: all three CA files or none (proxy.py silently leaves interception off
/// when one is missing; a typo there would pass plaintext-looking HTTPS untouched), and
/// valid host patterns.
fn tls_config(cli: &crate::cli::Cli) -> Result<TlsConfig, String> {
    let ca = match (
        &cli.ca_key_file,
        &cli.ca_cert_file,
        &cli.ca_signing_key_file,
    ) {
        (Some(key), Some(cert), Some(signing_key)) => Some(CaPaths {
            key: key.clone(),
            cert: cert.clone(),
            signing_key: signing_key.clone(),
        }),
        (None, None, None) => None,
        _ => {
            return Err(
                "TLS interception needs all three of --ca-key-file, --ca-cert-file and \
                 --ca-signing-key-file (proxy --ca-generate DIR makes them)"
                    .into(),
            )
        }
    };
    let patterns = |flag: &str, list: &[String]| {
        list.iter()
            .map(|p| regex::Regex::new(p).map_err(|e| format!("{flag} {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    let ignore_hosts = patterns("--ignore-hosts", &cli.ignore_hosts)?;
    let allow_hosts = patterns("--allow-hosts", &cli.allow_hosts)?;
    if ca.is_none() && !(ignore_hosts.is_empty() && allow_hosts.is_empty()) {
        return Err("--ignore-hosts/--allow-hosts need TLS interception (the --ca-* flags)".into());
    }
    Ok(TlsConfig {
        listener: cli.cert_file.clone().zip(cli.key_file.clone()),
        ca,
        ca_cert_dir: expand_home(&cli.ca_cert_dir),
        ca_file: cli.ca_file.clone(),
        insecure: cli.insecure_tls_interception,
        ignore_hosts,
        allow_hosts,
    })
}

/// `--disable-headers a,B, c` → `["a", "b", "c"]`: trimmed, lower-cased, de-duplicated.
fn parse_header_list(list: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        // RFC 9110 §5.1: a field name is a token.
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !name.bytes().all(is_tchar) {
            return Err(format!("--disable-headers: '{name}' is not a header name"));
        }
        let name = name.to_ascii_lowercase();
        // The body is framed by these: removing one would forward the body bytes as the
        // start of another request (request smuggling), so they are refused here.
        if name == "content-length" || name == "transfer-encoding" {
            return Err(format!(
                "--disable-headers: '{name}' frames the request body and cannot be removed"
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `--pac-file`: a readable file's bytes; a value naming nothing on disk is the PAC text
/// itself (proxy.py). A path that exists but cannot be read is an error, not PAC text.
/// `~` or `~/rest` → the home directory (`$HOME`), as a shell would; other paths as given.
fn expand_home(path: &str) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    match (path, path.strip_prefix("~/")) {
        ("~", _) => home().unwrap_or_else(|| PathBuf::from(path)),
        (_, Some(rest)) => home().map_or_else(|| PathBuf::from(path), |h| h.join(rest)),
        _ => PathBuf::from(path),
    }
}

/// Reads FilterByURLRegexPlugin's rules: a JSON array of objects, each with a string
/// `regex` (other keys, such as proxy.py's `notes`, are ignored).
fn read_url_regex_config(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("not JSON: {e}"))?;
    let rules = value
        .as_array()
        .ok_or("expected a JSON array of {\"regex\": ...} objects")?;
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            rule.get("regex")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("rule {} has no string \"regex\"", i + 1))
        })
        .collect()
}

/// The PAC file's bytes, or (when no such file exists) the value itself as PAC text;
/// the flag says which.
fn read_pac_file(value: &str) -> Result<(Vec<u8>, bool), String> {
    if value.is_empty() {
        return Err("--pac-file: empty value".to_owned());
    }
    match std::fs::metadata(value) {
        Ok(meta) if meta.is_dir() => Err(format!("--pac-file: {value}: is a directory")),
        Ok(_) => std::fs::read(value)
            .map(|text| (text, false))
            .map_err(|e| format!("--pac-file: {value}: {e}")),
        Err(_) => Ok((value.as_bytes().to_vec(), true)),
    }
}

/// `--static-server-dir`: an existing directory, made absolute with every symlink resolved.
fn canonical_dir(path: &std::path::Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".to_owned(),
        _ => e.to_string(),
    })?;
    if !canonical.is_dir() {
        return Err("not a directory".to_owned());
    }
    Ok(canonical)
}

/// The file need not exist, but the directory it goes in must.
fn check_parent_dir(path: &std::path::Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("empty path".to_owned());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", parent.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("directory {} does not exist", parent.display()))
        }
        Err(e) => return Err(format!("directory {}: {e}", parent.display())),
    }
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err("is a directory".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn durations_set_on_the_struct_are_checked() {
        assert_eq!(Config::default().check_durations(), Ok(()));
        let over = Config {
            timeout: Duration::MAX,
            ..Config::default()
        };
        assert_eq!(
            over.check_durations(),
            Err("timeout is over 1000000000 s".to_owned())
        );
        let zero = Config {
            script_flush_interval: Some(Duration::ZERO),
            ..Config::default()
        };
        assert_eq!(
            zero.check_durations(),
            Err("script_flush_interval must be greater than 0".to_owned())
        );
        let long_grace = Config {
            grace_period: MAX_DURATION,
            upstream_idle_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(long_grace.check_durations(), Ok(()));
    }

    fn config(args: &[&str]) -> Config {
        Config::from_args(std::iter::once("proxy").chain(args.iter().copied())).unwrap()
    }

    fn exit_code(args: &[&str]) -> i32 {
        Config::from_args(std::iter::once("proxy").chain(args.iter().copied()))
            .unwrap_err()
            .exit_code()
    }

    #[test]
    fn defaults_match_proxy_py_and_config_default() {
        let c = config(&[]);
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.listen, vec![SocketAddr::from(([127, 0, 0, 1], 8899))]);
        assert_eq!(c.num_workers, d.num_workers, "0 = one worker per core");
        assert!(c.num_workers >= 1);
        assert_eq!(c.backlog, 100);
        assert_eq!(c.open_file_limit, 1024);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.header_timeout, d.header_timeout);
        assert_eq!(c.connect_timeout, d.connect_timeout);
        assert_eq!(c.grace_period, d.grace_period);
        assert_eq!(c.client_recvbuf_size, 131072);
        assert_eq!(c.server_recvbuf_size, 131072);
        assert!(c.disable_headers.is_empty());
        assert_eq!(c.log.level, tracing::Level::INFO);
        assert_eq!(
            c.log.format,
            LogFormat::Template(DEFAULT_LOG_FORMAT.to_owned())
        );
        assert!(c.log.file.is_none() && c.pid_file.is_none() && c.port_file.is_none());
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn listen_is_hostnames_times_ports_deduplicated_in_order() {
        let c = config(&[
            "--hostname",
            "127.0.0.1",
            "--hostnames",
            "::1",
            "127.0.0.1",
            "--port",
            "0",
            "--ports",
            "8080",
            "0",
        ]);
        let v6: IpAddr = "::1".parse().unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            c.listen,
            vec![
                SocketAddr::new(v4, 0),
                SocketAddr::new(v4, 8080),
                SocketAddr::new(v6, 0),
                SocketAddr::new(v6, 8080),
            ]
        );
    }

    #[test]
    fn explicit_workers_prefixes_and_float_timeouts() {
        let c = config(&["--num-w", "3", "--time", "0.25", "--connect-t", "1.5"]);
        assert_eq!(c.num_workers, 3);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn disable_headers_are_lower_cased_and_split() {
        let c = config(&["--disable-headers", "X-Foo, Cookie,,x-foo,User-Agent"]);
        assert_eq!(c.disable_headers, vec!["x-foo", "cookie", "user-agent"]);
        assert_eq!(exit_code(&["--disable-headers", "bad header"]), 64);
        // The framing headers cannot be removed (their body would become a request).
        assert_eq!(exit_code(&["--disable-headers", "X-A,Content-Length"]), 64);
        assert_eq!(exit_code(&["--disable-headers", "transfer-encoding"]), 64);
    }

    #[test]
    fn log_settings() {
        let c = config(&["--log-level", "w", "--log-format", "JSON"]);
        assert_eq!(c.log.level, tracing::Level::WARN);
        assert_eq!(c.log.format, LogFormat::Json);
        let c = config(&["--log-format", "%(message)s"]);
        assert_eq!(c.log.format, LogFormat::Template("%(message)s".to_owned()));
        assert_eq!(
            config(&["--log-level", "CRITICAL"]).log.level,
            tracing::Level::ERROR
        );
    }

    #[test]
    fn file_flags_need_an_existing_directory() {
        let dir = std::env::temp_dir();
        let file = dir.join("proxy-config-test.log");
        let c = config(&["--log-file", file.to_str().unwrap()]);
        assert_eq!(c.log.file.as_deref(), Some(file.as_path()));
        assert_eq!(
            exit_code(&["--log-file", "/nonexistent-dir-for-proxy/x.log"]),
            64
        );
        assert_eq!(
            exit_code(&["--pid-file", "/nonexistent-dir-for-proxy/x.pid"]),
            64
        );
        assert_eq!(exit_code(&["--port-file", dir.to_str().unwrap()]), 64);
        // A bare file name lives in the current directory, which exists.
        assert!(Config::from_args(["proxy", "--pid-file", "proxy.pid"]).is_ok());
    }

    #[test]
    fn errors_keep_their_exit_codes() {
        assert_eq!(exit_code(&["--no-such-flag"]), 2);
        assert_eq!(exit_code(&["--hostname", "example.com"]), 64);
        assert_eq!(exit_code(&["--port", "70000"]), 64);
        assert_eq!(exit_code(&["--num-workers", "100000"]), 64);
        assert_eq!(exit_code(&["--help"]), 0);
    }

    #[test]
    fn plugin_settings_defaults() {
        let c = config(&[]);
        let d = Config::default();
        assert!(c.plugins.is_empty() && c.basic_auth.is_empty() && c.pac_file.is_none());
        assert_eq!(c.pac_file_url_path, "/");
        assert_eq!(c.pac_file_url_path, d.pac_file_url_path);
        assert_eq!(
            c.filtered_upstream_hosts,
            vec!["facebook.com", "www.facebook.com"]
        );
        assert_eq!(c.filtered_upstream_hosts, d.filtered_upstream_hosts);
        assert_eq!(c.filtered_client_ips_mode, ClientIpMode::Blacklist);
        assert_eq!(c.filtered_client_ips, d.filtered_client_ips);
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            c.filtered_client_ips,
            vec![IpAddr::from([127, 0, 0, 1]), v6]
        );
    }

    #[test]
    fn plugins_are_comma_split_in_order() {
        let c = config(&["--plugin", "a,b,", "c", "--plugins", " d ,,e"]);
        assert_eq!(c.plugins, vec!["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn basic_auth_and_filters() {
        let c = config(&[
            "--basic-auth",
            "u:p",
            "--basic",
            "v:q",
            "--filtered-upstream-hosts",
            "Example.COM, [::1],,example.com",
            "--filtered-client-ips-mode",
            "whitelist",
            "--filtered-client-ips",
            "10.0.0.1",
        ]);
        assert_eq!(c.basic_auth, vec!["u:p", "v:q"]);
        assert_eq!(c.filtered_upstream_hosts, vec!["example.com", "::1"]);
        assert_eq!(c.filtered_client_ips_mode, ClientIpMode::Whitelist);
        assert_eq!(c.filtered_client_ips, vec![IpAddr::from([10, 0, 0, 1])]);
        assert_eq!(exit_code(&["--basic-auth", "nocolon"]), 64);
    }

    #[test]
    fn web_server_settings() {
        let c = config(&[]);
        assert!(!c.enable_web_server && !c.enable_static_server && !c.disable_http_proxy);
        assert_eq!(c.static_server_dir, Config::default().static_server_dir);
        assert!(config(&["--enable-web-server"]).enable_web_server);
        assert!(config(&["--disable-http-proxy"]).disable_http_proxy);
        // The directory is only checked when the static server is on.
        let c = config(&["--static-server-dir", "/nonexistent-dir-for-proxy"]);
        assert!(!c.enable_static_server);
        // --enable-static-server implies the web server and canonicalizes the root.
        let dir = std::env::temp_dir();
        let c = config(&[
            "--enable-static-server",
            "--static-server-dir",
            dir.to_str().unwrap(),
        ]);
        assert!(c.enable_web_server && c.enable_static_server);
        assert_eq!(c.static_server_dir, std::fs::canonicalize(&dir).unwrap());
        let err = Config::from_args([
            "proxy",
            "--enable-static-server",
            "--static-server-dir",
            "/nonexistent-dir-for-proxy",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 64);
        assert_eq!(
            err.to_string(),
            "proxy: error: --static-server-dir: /nonexistent-dir-for-proxy: no such directory"
        );
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert_eq!(
            exit_code(&["--enable-static", "--static-server-dir", file]),
            64
        );
    }

    #[test]
    fn pac_file_is_a_file_or_literal_text() {
        let path =
            std::env::temp_dir().join(format!("proxy-config-test-{}.pac", std::process::id()));
        std::fs::write(
            &path,
            b"function FindProxyForURL(u, h) { return \"DIRECT\"; }",
        )
        .unwrap();
        let c = config(&[
            "--pac-file",
            path.to_str().unwrap(),
            "--pac-file-url-path",
            "/p.pac",
        ]);
        assert_eq!(
            c.pac_file.as_deref(),
            Some(&b"function FindProxyForURL(u, h) { return \"DIRECT\"; }"[..])
        );
        assert_eq!(c.pac_file_url_path, "/p.pac");
        let _ = std::fs::remove_file(&path);
        // No such file: the value is the PAC text itself (proxy.py).
        let text = "function FindProxyForURL(url, host) { return 'PROXY 127.0.0.1:8899'; }";
        assert_eq!(
            config(&["--pac-file", text]).pac_file.as_deref(),
            Some(text.as_bytes())
        );
        // A directory is a mistake, not PAC text.
        let dir = std::env::temp_dir();
        assert_eq!(exit_code(&["--pac-file", dir.to_str().unwrap()]), 64);
        assert_eq!(exit_code(&["--pac-file", ""]), 64);
    }
}
