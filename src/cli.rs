//! `Cli`: the command line, with proxy.py's flag names, defaults and abbreviations.
//!
//! Only this module knows about clap. Values are checked one by one here (an IP is
//! an IP, a timeout is a non-negative number of seconds); rules that involve several
//! flags or the file system live in `Config::from_cli`.
//!
//! Exit codes follow argparse where proxy.py defines them: an unknown flag or a
//! missing value prints the usage and exits 2. A value that parses but is not
//! acceptable prints one `proxy: error: …` line and exits 64 (`EX_USAGE`).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind as ClapKind};
use clap::{ArgAction, Parser};

use crate::destination::{DenyList, PortRanges};

/// How `FilterByClientIpPlugin` reads `--filtered-client-ips` (`--filtered-client-ips-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientIpMode {
    /// Refuse the listed clients (proxy.py's default).
    #[default]
    Blacklist,
    /// Refuse every client not listed.
    Whitelist,
}

/// proxy.py's default `--log-format`.
pub const DEFAULT_LOG_FORMAT: &str =
    "%(asctime)s - pid:%(process)d [%(levelname)-.1s] %(module)s.%(funcName)s:%(lineno)d - %(message)s";

/// Exit status for a bad flag value (`EX_USAGE` from sysexits.h).
pub const EX_USAGE: i32 = 64;
/// Exit status for a malformed command line (unknown flag, missing value), as argparse.
pub const EX_ARGPARSE: i32 = 2;

/// Longest timeout accepted, in seconds (about 31 years): keeps `Instant + timeout` far from overflow.
const MAX_TIMEOUT_SECS: f64 = 1e9;

const ABOUT: &str = concat!(
    "proxy v",
    env!("CARGO_PKG_VERSION"),
    ": a fast HTTP/1.x forward proxy that takes proxy.py's command line"
);

const AFTER_HELP: &str = "\
Flags may be abbreviated to any unambiguous prefix (--num-w 2), as in proxy.py.
Differences from proxy.py: log timestamps are UTC; --timeout accepts fractions of a
second; --header-timeout, --connect-timeout and --grace-period are our own; flags
proxy.py has but this release does not implement are rejected, not ignored;
--basic-auth may be repeated and answers 407 with realm=\"proxy\"; --pac-file-url-path
is an exact path, not a regular expression; --static-server-dir defaults to ./public
(proxy.py: its package's public directory) and refuses path traversal.
Built-in plugins (--plugins, dotted or short name): proxy.plugin.FilterByUpstreamHostPlugin,
FilterByClientIpPlugin, FilterByURLRegexPlugin, ShortLinkPlugin, RedirectToCustomServerPlugin,
ModifyRequestHeaderPlugin, ProgramNamePlugin, ModifyPostDataPlugin, ModifyChunkResponsePlugin,
ProposedRestApiPlugin, ManInTheMiddlePlugin, CustomDnsResolverPlugin, CacheResponsesPlugin,
WebServerPlugin (needs --enable-web-server), HttpWebServerPacFilePlugin. With TLS interception
(the --ca-* flags) they act on decrypted HTTPS too.
See README.md for the flag table, the log format keys and the architecture.";

/// Raw command-line flags, named as in proxy.py. Turned into a `Config` by `Config::from_cli`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy",
    version,
    about = ABOUT,
    after_help = AFTER_HELP,
    infer_long_args = true,
    disable_version_flag = true,
    max_term_width = 100
)]
pub struct Cli {
    /// IP address to listen on (IPv4 or IPv6 literal).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1", value_parser = parse_ip)]
    pub hostname: IpAddr,

    /// Extra IP addresses to listen on; may be repeated [default: none]
    #[arg(long, value_name = "IP", num_args = 1.., action = ArgAction::Append, value_parser = parse_ip)]
    pub hostnames: Vec<IpAddr>,

    /// Port to listen on; 0 picks a free port, shared by all workers (see --port-file).
    #[arg(long, value_name = "PORT", default_value = "8899", value_parser = parse_port, allow_negative_numbers = true)]
    pub port: u16,

    /// Extra ports to listen on; may be repeated. Every hostname listens on every port [default: none]
    #[arg(long, value_name = "PORT", num_args = 1.., action = ArgAction::Append, value_parser = parse_port, allow_negative_numbers = true)]
    pub ports: Vec<u16>,

    /// Write the bound port(s) to this file, one per line (written once listening) [default: none]
    #[arg(long, value_name = "FILE")]
    pub port_file: Option<PathBuf>,

    /// Write the process id to this file; removed on exit [default: none]
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Maximum number of pending connections on each listening socket.
    #[arg(long, value_name = "N", default_value = "100", value_parser = parse_backlog, allow_negative_numbers = true)]
    pub backlog: u32,

    /// Worker threads, each with its own listener and event loop; 0 = one per CPU core.
    #[arg(long, value_name = "N", default_value = "0", value_parser = parse_workers, allow_negative_numbers = true)]
    pub num_workers: usize,

    /// Accepted for proxy.py compatibility and ignored: here every worker accepts on its
    /// own SO_REUSEPORT listener, so there are no separate acceptors (see --num-workers).
    #[arg(long, value_name = "N", value_parser = parse_u64, allow_negative_numbers = true)]
    pub num_acceptors: Option<u64>,

    /// Accepted for proxy.py compatibility and ignored: every worker here is an event
    /// loop of its own (proxy.py's threadless mode, always).
    #[arg(long)]
    pub threadless: bool,

    /// Accepted for proxy.py compatibility and ignored (a thread per connection in
    /// proxy.py; here every worker is an event loop).
    #[arg(long)]
    pub threaded: bool,

    /// Accepted for proxy.py compatibility and ignored: workers accept for themselves.
    #[arg(long, value_name = "N", value_parser = parse_u64, allow_negative_numbers = true)]
    pub local_executor: Option<u64>,

    /// Raise the soft limit on open files (RLIMIT_NOFILE) to N, if the hard limit allows.
    #[arg(long, value_name = "N", default_value = "1024", value_parser = parse_u64, allow_negative_numbers = true)]
    pub open_file_limit: u64,

    /// Close a connection after this many seconds without traffic (fractions allowed).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Duration,

    /// Seconds a client may take to send a whole request head (slowloris guard; not in proxy.py).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub header_timeout: Duration,

    /// Seconds allowed for DNS plus TCP connect to an origin (fixed at 10 in proxy.py).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub connect_timeout: Duration,

    /// On SIGINT/SIGTERM/SIGHUP, seconds in-flight requests may take to finish (not in proxy.py).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_grace, allow_negative_numbers = true)]
    pub grace_period: Duration,

    /// Maximum bytes read from a client at a time (128 KiB).
    #[arg(long, value_name = "BYTES", default_value = "131072", value_parser = parse_bufsize, allow_negative_numbers = true)]
    pub client_recvbuf_size: usize,

    /// Maximum bytes read from an origin at a time (128 KiB).
    #[arg(long, value_name = "BYTES", default_value = "131072", value_parser = parse_bufsize, allow_negative_numbers = true)]
    pub server_recvbuf_size: usize,

    /// Comma-separated request headers to remove before forwarding (not Content-Length or
    /// Transfer-Encoding, which frame the body) [default: none]
    #[arg(long, value_name = "NAMES")]
    pub disable_headers: Option<String>,

    /// DEBUG, INFO, WARNING, ERROR or CRITICAL, in any case, or the first letter (d, i, w, e, c).
    #[arg(long, value_name = "LEVEL", default_value = "INFO", value_parser = parse_log_level)]
    pub log_level: tracing::Level,

    /// Append logs to this file instead of standard output [default: stdout]
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// proxy.py-style %(key)s template for log lines (timestamps in UTC), or `json` for one JSON object per line.
    #[arg(long, value_name = "FORMAT", default_value = DEFAULT_LOG_FORMAT)]
    pub log_format: String,

    /// Plugins to load, in order: proxy.py dotted names (proxy.plugin.FilterByUpstreamHostPlugin),
    /// short class names, paths of Lua scripts (ending in .lua) or of Burro-style script
    /// directories; comma-separated, several per flag, repeatable [default: none]
    #[arg(long, value_name = "PLUGIN", num_args = 1.., action = ArgAction::Append)]
    pub plugins: Vec<String>,

    /// Lua scripts (or Burro-style directories of hook files) to load after the --plugins ones,
    /// in order (repeatable). A `.lua` path or a directory in --plugins is a script too, placed
    /// among the built-ins [default: none]
    #[arg(long, value_name = "FILE", action = ArgAction::Append, help_heading = "Scripting")]
    pub script: Vec<PathBuf>,

    /// Lua instructions one script event may run before it is ended with `script_error`
    #[arg(long, value_name = "N", default_value = "10000000", value_parser = parse_u64, help_heading = "Scripting")]
    pub script_instruction_limit: u64,

    /// Bytes of memory each script's Lua VM (one per worker) may use; an allocation past it
    /// ends the event with `script_error`
    #[arg(long, value_name = "BYTES", default_value = "67108864", value_parser = parse_u64, help_heading = "Scripting")]
    pub script_memory_limit: u64,

    /// Also run the scripts' `flush` handlers (Burro's flush.lua) every this many seconds on
    /// each worker's VM (fractions allowed) [default: only at shutdown]
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_negative_numbers = true, help_heading = "Scripting")]
    pub script_flush_interval: Option<Duration>,
    /// Set a script option declared in its `options` table: SCRIPT is the script's file
    /// name without `.lua` (or its directory's name); the value is checked against the
    /// option's default (a boolean, a number, a string, or a comma-separated list for a
    /// table default); repeatable [default: none]
    #[arg(long = "set", value_name = "SCRIPT.NAME=VALUE", action = ArgAction::Append, value_parser = parse_set, help_heading = "Scripting")]
    pub set: Vec<(String, String, String)>,

    /// Print the commands the loaded scripts define (their `commands` tables), then exit
    #[arg(long, help_heading = "Scripting")]
    pub list_commands: bool,

    /// Keep the scripts' `kv` store in this JSON file: loaded at start, written back
    /// (temporary file + rename) shortly after each change and at exit [default: memory only]
    #[arg(long, value_name = "FILE", help_heading = "Scripting")]
    pub kv_file: Option<PathBuf>,

    /// Directory the scripts' `artifacts` helper reads and writes (created if missing); names
    /// stay inside it (no `..`, absolute paths or symbolic links leading out); 64 MiB per
    /// file [default: none: artifacts calls fail]
    #[arg(long, value_name = "DIR", help_heading = "Scripting")]
    pub artifacts_dir: Option<PathBuf>,

    /// Directory the scripts' `data_store` helper reads (read-only, same rules as
    /// --artifacts-dir) [default: none: data_store calls fail]
    #[arg(long, value_name = "DIR", help_heading = "Scripting")]
    pub data_dir: Option<PathBuf>,

    /// Require proxy authentication with this user:pass (Basic); repeat for several users
    /// [default: none]
    #[arg(long, value_name = "USER:PASS", action = ArgAction::Append, value_parser = parse_basic_auth)]
    pub basic_auth: Vec<String>,

    /// Ports a CONNECT may reach: a list of ports and low-high ranges (443,563,8000-8100);
    /// others get 403. Not in proxy.py. At the edge, 443 is the usual choice [default: any]
    #[arg(long, value_name = "PORTS", value_parser = parse_port_ranges)]
    pub connect_ports: Option<PortRanges>,

    /// Refuse requests and CONNECTs to these addresses with 403: CIDRs, addresses, and
    /// `private` (loopback, RFC 1918, link-local with the cloud metadata address, CGNAT,
    /// IPv6 ULA and link-local, ::1, and their IPv4-mapped forms). Checked on the address
    /// connected to, after DNS. Not in proxy.py [default: none]
    #[arg(long, value_name = "LIST", value_parser = parse_deny_list)]
    pub deny_destinations: Option<DenyList>,

    /// With --key-file: every listening port speaks TLS (ALPN http/1.1); clients use
    /// `https://` proxy URLs. A PEM certificate chain [default: none]
    #[arg(long, value_name = "FILE", requires = "key_file", help_heading = "TLS")]
    pub cert_file: Option<PathBuf>,

    /// The private key (PEM) of --cert-file [default: none]
    #[arg(
        long,
        value_name = "FILE",
        requires = "cert_file",
        help_heading = "TLS"
    )]
    pub key_file: Option<PathBuf>,

    /// Interception CA private key (PEM). Interception is on when --ca-key-file,
    /// --ca-cert-file and --ca-signing-key-file are all given [default: none]
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub ca_key_file: Option<PathBuf>,

    /// Interception CA certificate (PEM): clients must trust it [default: none]
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub ca_cert_file: Option<PathBuf>,

    /// The key of every minted leaf certificate (PEM; one key for all hosts, as in
    /// proxy.py) [default: none]
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub ca_signing_key_file: Option<PathBuf>,

    /// Where minted leaf certificates are kept, as `<host>.pem` (mode 0600). `~` is the
    /// home directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "~/.proxy/certificates",
        help_heading = "TLS"
    )]
    pub ca_cert_dir: String,

    /// CA bundle (PEM) used to verify origins, instead of the system's roots [default:
    /// system roots]
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub ca_file: Option<PathBuf>,

    /// Do not verify origin certificates at all. Dangerous: anyone on the path to an
    /// origin can read and change its traffic.
    #[arg(long, help_heading = "TLS")]
    pub insecure_tls_interception: bool,

    /// Do not intercept CONNECTs whose host (TLS SNI, else the CONNECT host) matches this
    /// regular expression, matched against `host:port`; they stay opaque tunnels. May be
    /// repeated (mitmproxy's flag) [default: none]
    #[arg(long, value_name = "REGEX", action = ArgAction::Append, conflicts_with = "allow_hosts", help_heading = "TLS")]
    pub ignore_hosts: Vec<String>,

    /// Intercept only CONNECTs whose host matches this regular expression (see
    /// --ignore-hosts); may be repeated [default: intercept all]
    #[arg(long, value_name = "REGEX", action = ArgAction::Append, help_heading = "TLS")]
    pub allow_hosts: Vec<String>,

    /// Write a new interception CA (ca-key.pem, ca-cert.pem, signing-key.pem) to DIR,
    /// print the flags that use it and how to trust it, and exit. Not in proxy.py.
    #[arg(long, value_name = "DIR", help_heading = "TLS")]
    pub ca_generate: Option<PathBuf>,

    /// Serve this PAC file (or, if no such file exists, this literal PAC text) to
    /// origin-form GET/HEAD requests for --pac-file-url-path [default: none]
    #[arg(long, value_name = "FILE")]
    pub pac_file: Option<String>,

    /// Path the PAC file is served at (exact match, query excluded).
    #[arg(long, value_name = "PATH", default_value = "/", value_parser = parse_url_path)]
    pub pac_file_url_path: String,

    /// Serve origin-form requests (requests addressed to the proxy itself) with the
    /// built-in web server, whose routes come from web-server plugins such as
    /// proxy.plugin.WebServerPlugin (load it with --plugins too, as in proxy.py).
    #[arg(long)]
    pub enable_web_server: bool,

    /// Serve files from --static-server-dir to origin-form GET/HEAD requests (implies
    /// --enable-web-server). No path traversal: `..`, and symlinks leaving the directory,
    /// are refused.
    #[arg(long)]
    pub enable_static_server: bool,

    /// Directory served by --enable-static-server; must exist when it is enabled.
    /// Relative to the working directory (proxy.py's default is the `public` directory
    /// inside its installed package).
    #[arg(long, value_name = "DIR", default_value = "./public")]
    pub static_server_dir: PathBuf,

    /// Do not proxy: absolute-form and CONNECT requests get 400; only the built-in web
    /// server (PAC file, routes, static files) answers.
    #[arg(long)]
    pub disable_http_proxy: bool,

    /// FilterByUpstreamHostPlugin: comma-separated host names to refuse (exact match).
    #[arg(
        long,
        value_name = "HOSTS",
        default_value = "facebook.com,www.facebook.com"
    )]
    pub filtered_upstream_hosts: String,

    /// FilterByClientIpPlugin: `blacklist` refuses the listed clients, `whitelist` all others.
    #[arg(long, value_name = "MODE", default_value = "blacklist", value_parser = parse_client_ip_mode)]
    pub filtered_client_ips_mode: ClientIpMode,

    /// FilterByClientIpPlugin: comma-separated client IP addresses.
    #[arg(long, value_name = "IPS", default_value = "127.0.0.1,::1", value_parser = parse_ip_list)]
    pub filtered_client_ips: IpList,

    /// FilterByURLRegexPlugin: a JSON file of rules, `[{"regex": "...", "notes": "..."}]`;
    /// a request whose `host` + `path` (no scheme, no port) matches one gets `404 Blocked`.
    #[arg(long, value_name = "FILE", default_value = "")]
    pub filtered_url_regex_config: String,

    /// CacheResponsesPlugin: where the recordings go (`responses/`, `requests/`,
    /// `content/` below it; created at start-up when the plugin is enabled). `~` is the
    /// home directory.
    #[arg(long, value_name = "DIR", default_value = "~/.proxy/cache")]
    pub cache_dir: String,

    /// CacheResponsesPlugin: also record each request as sent upstream, in `requests/`.
    #[arg(long)]
    pub cache_requests: bool,

    /// CacheResponsesPlugin: also write each response's decoded body to
    /// `content/<name>.<ext>`, the extension from its Content-Type (e.g. `video.mp4`).
    #[arg(long)]
    pub cache_by_content_type: bool,

    /// Join a port another proxy process already listens on (SO_REUSEPORT), for
    /// zero-downtime upgrades: start the new process with this flag, wait for its
    /// --port-file, then SIGTERM the old one (see README). Without it, a port in use is
    /// an error (not in proxy.py).
    #[arg(long)]
    pub reuse_port: bool,

    /// Print the version and exit.
    #[arg(short = 'v', long, action = ArgAction::Version)]
    pub version: Option<bool>,
}

impl Cli {
    /// Parses `args` (the first item is the program name, as in `std::env::args_os`).
    ///
    /// # Errors
    /// `--help`/`--version` come back as a `CliError` with exit code 0 and the text to
    /// print on standard output; every other failure carries its message and exit code.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args).map_err(CliError::from_clap)
    }
}

/// A command line that cannot run: what to print, where, and the exit status.
///
/// `--help` and `--version` also come back as a `CliError` (exit 0, standard output),
/// so that the caller prints everything in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    message: String,
    code: i32,
}

impl CliError {
    /// A bad value or setting: printed as one `proxy: error: <what>` line, exit 64.
    pub fn usage(what: impl fmt::Display) -> CliError {
        CliError {
            message: format!("proxy: error: {what}"),
            code: EX_USAGE,
        }
    }

    /// A failure after the command line was accepted (exit 1).
    pub fn runtime(what: impl fmt::Display) -> CliError {
        CliError {
            message: format!("proxy: error: {what}"),
            code: 1,
        }
    }

    /// Translates a clap error: help/version (0), bad values (64), anything else (2).
    fn from_clap(err: clap::Error) -> CliError {
        match err.kind() {
            ClapKind::DisplayHelp
            | ClapKind::DisplayVersion
            | ClapKind::DisplayHelpOnMissingArgumentOrSubcommand => CliError {
                message: err.render().to_string(),
                code: 0,
            },
            // Our value parsers rejected a value: one line, as the other 64s.
            ClapKind::ValueValidation => {
                let flag = match err.get(ContextKind::InvalidArg) {
                    Some(ContextValue::String(arg)) => {
                        arg.split_whitespace().next().unwrap_or(arg).to_owned()
                    }
                    _ => "argument".to_owned(),
                };
                let value = match err.get(ContextKind::InvalidValue) {
                    Some(ContextValue::String(v)) => v.clone(),
                    _ => String::new(),
                };
                let why = std::error::Error::source(&err)
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "invalid value".to_owned());
                CliError::usage(format_args!("{flag}: invalid value '{value}': {why}"))
            }
            _ => CliError {
                message: err.render().to_string(),
                code: EX_ARGPARSE,
            },
        }
    }

    /// The exit status: 0 for help/version, 2 for a malformed command line, 64 for a bad value.
    pub fn exit_code(&self) -> i32 {
        self.code
    }

    /// The text to print (help, version, or the error line(s)).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Help and version text go to standard output; errors go to standard error.
    pub fn is_error(&self) -> bool {
        self.code != 0
    }

    /// Prints the message once, on standard output (help, version) or standard error.
    pub fn print(&self) {
        use std::io::Write;
        let text = self.message.trim_end_matches('\n');
        // A closed stdout/stderr (`proxy -h | head -1`) is not worth a panic.
        let _ = if self.is_error() {
            writeln!(std::io::stderr(), "{text}")
        } else {
            writeln!(std::io::stdout(), "{text}")
        };
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message.trim_end_matches('\n'))
    }
}

impl std::error::Error for CliError {}

// === value parsers (each error becomes `proxy: error: --flag: invalid value 'x': <why>`) ===

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| "expected an IPv4 or IPv6 address such as 127.0.0.1 or ::1".to_owned())
}

fn parse_u64(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| "expected a non-negative integer".to_owned())
}

fn parse_port_ranges(s: &str) -> Result<PortRanges, String> {
    PortRanges::parse(s)
}

fn parse_deny_list(s: &str) -> Result<DenyList, String> {
    DenyList::parse(s)
}

fn parse_port(s: &str) -> Result<u16, String> {
    let n = parse_u64(s)?;
    u16::try_from(n).map_err(|_| "a port must be between 0 and 65535".to_owned())
}

fn parse_backlog(s: &str) -> Result<u32, String> {
    let n = parse_u64(s)?;
    // listen(2) takes an int.
    match u32::try_from(n) {
        Ok(n) if n <= i32::MAX as u32 => Ok(n),
        _ => Err(format!("must be at most {}", i32::MAX)),
    }
}

/// More workers than this is a typo, not a plan (each one is a thread with its own sockets).
pub const MAX_WORKERS: usize = 1024;

fn parse_workers(s: &str) -> Result<usize, String> {
    let n = parse_u64(s)?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_WORKERS => Ok(n),
        _ => Err(format!(
            "must be between 0 (one per core) and {MAX_WORKERS}"
        )),
    }
}

fn parse_bufsize(s: &str) -> Result<usize, String> {
    const MAX: u64 = 1 << 30;
    let n = parse_u64(s)?;
    if n == 0 || n > MAX {
        return Err(format!("must be between 1 and {MAX} bytes"));
    }
    usize::try_from(n).map_err(|_| "too large".to_owned())
}

/// Seconds as a decimal number (`10`, `0.5`); not negative, not NaN, not absurd.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds".to_owned())?;
    if !secs.is_finite() || secs < 0.0 {
        return Err("expected a non-negative number of seconds".to_owned());
    }
    if secs > MAX_TIMEOUT_SECS {
        return Err(format!("at most {MAX_TIMEOUT_SECS:.0} seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// A timeout of zero would fail every wait at once, so it must be positive.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    if d.is_zero() {
        return Err("must be greater than 0".to_owned());
    }
    Ok(d)
}

/// A grace period of 0 means "stop at once", which is legitimate.
fn parse_grace(s: &str) -> Result<Duration, String> {
    parse_seconds(s)
}

/// `--set script.name=value`: (script, name, value).
fn parse_set(s: &str) -> Result<(String, String, String), String> {
    let expected = || "expected SCRIPT.NAME=VALUE".to_owned();
    let (key, value) = s.split_once('=').ok_or_else(expected)?;
    let (script, name) = key.rsplit_once('.').ok_or_else(expected)?;
    if script.is_empty() || name.is_empty() {
        return Err(expected());
    }
    Ok((script.to_owned(), name.to_owned(), value.to_owned()))
}

/// `--basic-auth user:pass`: the colon separates the user from the password (RFC 7617 §2).
fn parse_basic_auth(s: &str) -> Result<String, String> {
    if s.contains(':') {
        Ok(s.to_owned())
    } else {
        Err("expected user:pass".to_owned())
    }
}

/// A URL path to match origin-form requests against: starts with `/`, no query, no spaces.
fn parse_url_path(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected a path starting with / (no query, no spaces)".to_owned())
    }
}

fn parse_client_ip_mode(s: &str) -> Result<ClientIpMode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "blacklist" => Ok(ClientIpMode::Blacklist),
        "whitelist" => Ok(ClientIpMode::Whitelist),
        _ => Err("expected blacklist or whitelist".to_owned()),
    }
}

/// A comma-separated list of IP addresses (empty items ignored), as one flag value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpList(pub Vec<IpAddr>);

fn parse_ip_list(s: &str) -> Result<IpList, String> {
    let mut ips = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let ip = item
            .parse::<IpAddr>()
            .map_err(|_| format!("'{item}' is not an IPv4 or IPv6 address"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(IpList(ips))
}

/// proxy.py's levels by name (any case) or first letter; CRITICAL maps to ERROR.
/// `TRACE` (full name only) is an extension below DEBUG.
pub fn parse_log_level(s: &str) -> Result<tracing::Level, String> {
    use tracing::Level;
    let upper = s.trim().to_ascii_uppercase();
    match upper.as_str() {
        "D" | "DEBUG" => Ok(Level::DEBUG),
        "I" | "INFO" => Ok(Level::INFO),
        "W" | "WARN" | "WARNING" => Ok(Level::WARN),
        "E" | "ERROR" | "C" | "CRITICAL" => Ok(Level::ERROR),
        "TRACE" => Ok(Level::TRACE),
        _ => Err("expected DEBUG, INFO, WARNING, ERROR or CRITICAL (or d, i, w, e, c)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn parse(args: &[&str]) -> Result<Cli, CliError> {
        Cli::try_parse_args(std::iter::once("proxy").chain(args.iter().copied()))
    }

    #[test]
    fn a_repeated_single_value_flag_is_refused_and_lists_accumulate() {
        // Taking the last value (argparse's way) would let `--deny-destinations A
        // --deny-destinations B` drop A silently: a repeat is refused instead.
        for flag in [
            "--deny-destinations",
            "--connect-ports",
            "--disable-headers",
            "--port",
        ] {
            assert!(parse(&[flag, "1", flag, "2"]).is_err(), "{flag}");
        }
        let cli = parse(&["--plugins", "a,b", "--plugins", "c"]).unwrap();
        assert_eq!(cli.plugins.join(","), "a,b,c");
    }

    #[test]
    fn proxy_py_execution_modes_are_accepted() {
        let cli = parse(&["--threadless", "--threaded", "--local-executor", "0"]).unwrap();
        assert!(cli.threadless && cli.threaded);
        assert_eq!(cli.local_executor, Some(0));
    }

    #[test]
    fn defaults_are_proxy_py_defaults() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.hostname, IpAddr::from([127, 0, 0, 1]));
        assert!(cli.hostnames.is_empty());
        assert_eq!(cli.port, 8899);
        assert!(cli.ports.is_empty());
        assert_eq!(cli.backlog, 100);
        assert_eq!(cli.num_workers, 0);
        assert_eq!(cli.open_file_limit, 1024);
        assert_eq!(cli.timeout, Duration::from_secs(10));
        assert_eq!(cli.header_timeout, Duration::from_secs(10));
        assert_eq!(cli.connect_timeout, Duration::from_secs(10));
        assert_eq!(cli.grace_period, Duration::from_secs(10));
        assert_eq!(cli.client_recvbuf_size, 128 * 1024);
        assert_eq!(cli.server_recvbuf_size, 128 * 1024);
        assert_eq!(cli.log_level, Level::INFO);
        assert_eq!(cli.log_format, DEFAULT_LOG_FORMAT);
        assert!(cli.log_file.is_none() && cli.pid_file.is_none() && cli.port_file.is_none());
        assert!(cli.disable_headers.is_none());
    }

    #[test]
    fn unambiguous_prefixes_work_like_argparse() {
        let cli = parse(&["--num-w", "2", "--time", "5", "--back", "7", "--log-l", "d"]).unwrap();
        assert_eq!(cli.num_workers, 2);
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert_eq!(cli.backlog, 7);
        assert_eq!(cli.log_level, Level::DEBUG);
        // Exact names win over longer flags they prefix.
        let cli = parse(&["--port", "1", "--hostname", "::1"]).unwrap();
        assert_eq!(cli.port, 1);
        assert_eq!(cli.hostname, "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ambiguous_prefix_is_a_usage_error() {
        let err = parse(&["--host", "::1"]).unwrap_err();
        assert_eq!(err.exit_code(), EX_ARGPARSE, "{err}");
        let err = parse(&["--log", "x"]).unwrap_err();
        assert_eq!(err.exit_code(), EX_ARGPARSE, "{err}");
    }

    #[test]
    fn unknown_flag_and_missing_value_exit_2() {
        assert_eq!(parse(&["--no-such-flag", "x"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["--plugins"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["--basic-auth"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["--port"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["stray"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn bad_values_exit_64_with_one_line() {
        for args in [
            &["--hostname", "localhost"][..],
            &["--port", "65536"],
            &["--port", "-1"],
            &["--timeout", "-1"],
            &["--timeout", "0"],
            &["--timeout", "nan"],
            &["--num-workers", "1025"],
            &["--log-level", "verbose"],
            &["--client-recvbuf-size", "0"],
            &["--basic-auth", "nocolon"],
            &["--pac-file-url-path", "proxy.pac"],
            &["--pac-file-url-path", "/a?b"],
            &["--filtered-client-ips-mode", "greylist"],
            &["--filtered-client-ips", "127.0.0.1,localhost"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), EX_USAGE, "{args:?}: {err}");
            let text = err.to_string();
            assert!(text.starts_with("proxy: error: --"), "{text}");
            assert_eq!(text.lines().count(), 1, "{text}");
        }
    }

    #[test]
    fn help_and_version_exit_0() {
        let help = parse(&["-h"]).unwrap_err();
        assert_eq!(help.exit_code(), 0);
        assert!(help.message().contains("--hostname"));
        // Clap wraps long lines; compare with whitespace collapsed.
        let words = help
            .message()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(words.contains("[default: 8899]"), "{words}");
        let version = parse(&["-v"]).unwrap_err();
        assert_eq!(version.exit_code(), 0);
        assert!(version.message().contains(env!("CARGO_PKG_VERSION")));
        assert_eq!(parse(&["--version"]).unwrap_err().exit_code(), 0);
    }

    #[test]
    fn float_timeouts() {
        let cli = parse(&[
            "--timeout",
            "0.5",
            "--header-timeout",
            "2.25",
            "--grace-period",
            "0",
        ])
        .unwrap();
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert_eq!(cli.header_timeout, Duration::from_millis(2250));
        assert_eq!(cli.grace_period, Duration::ZERO);
    }

    #[test]
    fn script_flush_interval_is_off_by_default_and_positive() {
        assert_eq!(parse(&[]).unwrap().script_flush_interval, None);
        let cli = parse(&["--script-flush-interval", "2.5"]).unwrap();
        assert_eq!(cli.script_flush_interval, Some(Duration::from_millis(2500)));
        for bad in ["0", "-1", "x"] {
            let err = parse(&["--script-flush-interval", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 64, "{bad}");
        }
    }

    #[test]
    fn log_levels_by_name_or_letter() {
        for (s, level) in [
            ("d", Level::DEBUG),
            ("DEBUG", Level::DEBUG),
            ("i", Level::INFO),
            ("Info", Level::INFO),
            ("W", Level::WARN),
            ("warning", Level::WARN),
            ("e", Level::ERROR),
            ("c", Level::ERROR),
            ("CRITICAL", Level::ERROR),
            ("trace", Level::TRACE),
        ] {
            assert_eq!(parse_log_level(s), Ok(level), "{s}");
        }
        assert!(parse_log_level("x").is_err());
        assert!(parse_log_level("").is_err());
    }

    #[test]
    fn hostnames_and_ports_take_several_values_and_repeat() {
        let cli = parse(&[
            "--hostnames",
            "::1",
            "127.0.0.2",
            "--ports",
            "1",
            "2",
            "--hostnames",
            "10.0.0.1",
            "--ports",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.hostnames.len(), 3);
        assert_eq!(cli.ports, vec![1, 2, 3]);
    }

    #[test]
    fn plugin_flags_defaults() {
        let cli = parse(&[]).unwrap();
        assert!(cli.plugins.is_empty());
        assert!(cli.basic_auth.is_empty());
        assert!(cli.pac_file.is_none());
        assert_eq!(cli.pac_file_url_path, "/");
        assert_eq!(cli.filtered_upstream_hosts, "facebook.com,www.facebook.com");
        assert_eq!(cli.filtered_client_ips_mode, ClientIpMode::Blacklist);
        assert_eq!(
            cli.filtered_client_ips,
            IpList(vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()])
        );
    }

    #[test]
    fn plugins_take_several_values_repeat_and_abbreviate() {
        // proxy.py: append + nargs='+'; `--plugin` is the README's abbreviation.
        let cli = parse(&[
            "--plugin",
            "a,b",
            "c",
            "--plugins",
            "d",
            "--port",
            "1",
            "--plug",
            "e",
        ])
        .unwrap();
        assert_eq!(cli.plugins, vec!["a,b", "c", "d", "e"]);
        assert_eq!(cli.port, 1);
    }

    #[test]
    fn basic_auth_repeats_and_other_plugin_flags_parse() {
        let cli = parse(&[
            "--basic-auth",
            "user:pass",
            "--basic-auth",
            "admin:a:b",
            "--pac-file",
            "function FindProxyForURL(u, h) { return 'DIRECT'; }",
            "--pac-file-url-path",
            "/proxy.pac",
            "--filtered-upstream-hosts",
            "a.com,B.com",
            "--filtered-client-ips-mode",
            "Whitelist",
            "--filtered-client-ips",
            "10.0.0.1, ::1,,10.0.0.1",
        ])
        .unwrap();
        assert_eq!(cli.basic_auth, vec!["user:pass", "admin:a:b"]);
        assert_eq!(cli.pac_file_url_path, "/proxy.pac");
        assert_eq!(cli.filtered_upstream_hosts, "a.com,B.com");
        assert_eq!(cli.filtered_client_ips_mode, ClientIpMode::Whitelist);
        assert_eq!(
            cli.filtered_client_ips,
            IpList(vec![IpAddr::from([10, 0, 0, 1]), "::1".parse().unwrap()])
        );
        // An empty user is allowed (RFC 7617 does not forbid it); the colon is not.
        assert!(parse(&["--basic-auth", ":pass"]).is_ok());
    }

    #[test]
    fn web_server_flags() {
        let cli = parse(&[]).unwrap();
        assert!(!cli.enable_web_server && !cli.enable_static_server && !cli.disable_http_proxy);
        assert_eq!(cli.static_server_dir, PathBuf::from("./public"));
        let cli = parse(&[
            "--enable-web-server",
            "--enable-static-server",
            "--static-server-dir",
            "/srv/www",
            "--disable-http-proxy",
        ])
        .unwrap();
        assert!(cli.enable_web_server && cli.enable_static_server && cli.disable_http_proxy);
        assert_eq!(cli.static_server_dir, PathBuf::from("/srv/www"));
        let help = parse(&["-h"]).unwrap_err();
        for flag in [
            "--enable-web-server",
            "--enable-static-server",
            "--static-server-dir",
            "--disable-http-proxy",
        ] {
            assert!(help.message().contains(flag), "{flag}");
        }
    }

    #[test]
    fn reuse_port_is_off_unless_asked() {
        assert!(!parse(&[]).unwrap().reuse_port);
        assert!(parse(&["--reuse-port"]).unwrap().reuse_port);
        let help = parse(&["-h"]).unwrap_err();
        assert!(help.message().contains("--reuse-port"));
    }

    #[test]
    fn help_lists_the_plugin_flags() {
        let help = parse(&["-h"]).unwrap_err();
        for flag in [
            "--plugins",
            "--basic-auth",
            "--pac-file",
            "--pac-file-url-path",
            "--filtered-upstream-hosts",
            "--filtered-client-ips-mode",
            "--filtered-client-ips",
            "proxy.plugin.FilterByUpstreamHostPlugin",
        ] {
            assert!(help.message().contains(flag), "{flag}");
        }
    }
}
