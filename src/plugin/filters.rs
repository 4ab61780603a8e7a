//! Refuse requests by destination host, by client address (both with proxy.py's 418
//! packet) or by URL pattern (proxy.py's `404 Blocked`).
//!
//! The first two answer `HTTP/1.1 418 I'm a tea pot\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`
//! (byte for byte proxy.py's `HttpRequestRejected(418, b"I'm a tea pot")`) and close.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{ClientIpMode, Config};
use crate::http::target::comparable_host;
use crate::http::{RequestHead, Target};

use super::{Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};

/// proxy.py's name for [`FilterByUpstreamHost`].
pub const UPSTREAM_HOST_NAME: &str = "proxy.plugin.FilterByUpstreamHostPlugin";
/// proxy.py's name for [`FilterByClientIp`].
pub const CLIENT_IP_NAME: &str = "proxy.plugin.FilterByClientIpPlugin";
/// proxy.py's name for [`FilterByUrlRegex`].
pub const URL_REGEX_NAME: &str = "proxy.plugin.FilterByURLRegexPlugin";

/// The exact bytes proxy.py sends when a filter refuses a request.
pub const TEAPOT: &[u8] =
    b"HTTP/1.1 418 I'm a tea pot\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn teapot() -> Flow {
    Flow::Respond(Reply::raw(418, Bytes::from_static(TEAPOT), true))
}

// === FilterByUpstreamHostPlugin ===

/// Builds [`FilterByUpstreamHost`]; holds `--filtered-upstream-hosts`.
#[derive(Debug)]
pub struct FilterByUpstreamHostFactory {
    hosts: Arc<[String]>,
}

impl FilterByUpstreamHostFactory {
    /// Reads `--filtered-upstream-hosts` (already lower-cased by `Config`).
    pub fn new(config: &Config) -> Self {
        Self::with_hosts(config.filtered_upstream_hosts.iter().cloned())
    }

    /// Refuses exactly these hosts (compared lower-cased; IPv6 literals with or without brackets).
    pub fn with_hosts(hosts: impl IntoIterator<Item = String>) -> Self {
        let hosts: Vec<String> = hosts
            .into_iter()
            .map(|h| {
                let h = h
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(&h);
                let h = comparable_host(h).to_ascii_lowercase();
                // Targets carry IP literals in canonical form.
                match h.parse::<IpAddr>() {
                    Ok(ip) => ip.to_string(),
                    Err(_) => h,
                }
            })
            .collect();
        FilterByUpstreamHostFactory {
            hosts: hosts.into(),
        }
    }
}

impl PluginFactory for FilterByUpstreamHostFactory {
    fn name(&self) -> &'static str {
        UPSTREAM_HOST_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(FilterByUpstreamHost {
            hosts: Arc::clone(&self.hosts),
        })
    }
}

/// `proxy.plugin.FilterByUpstreamHostPlugin`: refuses (418) a request whose target host,
/// port aside, is exactly one of `--filtered-upstream-hosts`; CONNECT included.
///
/// As proxy.py: no suffix matching (`m.facebook.com` passes the default list).
/// Differences: host names are compared case-insensitively and without a trailing dot
/// (`facebook.com.` is refused too), and an IPv6 literal may be listed with or without
/// brackets; requests addressed to the proxy itself (origin-form)
/// are not filtered (proxy.py's proxy plugins never see them either).
#[derive(Debug)]
pub struct FilterByUpstreamHost {
    hosts: Arc<[String]>,
}

impl Plugin for FilterByUpstreamHost {
    fn name(&self) -> &'static str {
        UPSTREAM_HOST_NAME
    }

    fn on_request(
        &mut self,
        _cx: &RequestCx<'_>,
        _req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let Some(host) = target.upstream_host() else {
            return Ok(Flow::Continue);
        };
        let host = comparable_host(host);
        if self.hosts.iter().any(|h| h == host) {
            return Ok(teapot());
        }
        Ok(Flow::Continue)
    }
}

// === FilterByClientIpPlugin ===

/// Builds [`FilterByClientIp`]; holds `--filtered-client-ips(-mode)`.
#[derive(Debug)]
pub struct FilterByClientIpFactory {
    mode: ClientIpMode,
    ips: Arc<[IpAddr]>,
}

impl FilterByClientIpFactory {
    /// Reads `--filtered-client-ips-mode` and `--filtered-client-ips`.
    pub fn new(config: &Config) -> Self {
        Self::with(
            config.filtered_client_ips_mode,
            config.filtered_client_ips.iter().copied(),
        )
    }

    /// Filters these addresses in `mode`.
    pub fn with(mode: ClientIpMode, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let ips: Vec<IpAddr> = ips.into_iter().map(|ip| ip.to_canonical()).collect();
        FilterByClientIpFactory {
            mode,
            ips: ips.into(),
        }
    }
}

impl PluginFactory for FilterByClientIpFactory {
    fn name(&self) -> &'static str {
        CLIENT_IP_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(FilterByClientIp {
            mode: self.mode,
            ips: Arc::clone(&self.ips),
        })
    }
}

/// `proxy.plugin.FilterByClientIpPlugin`: in `blacklist` mode refuses (418) the listed
/// client addresses, in `whitelist` mode every other one.
///
/// Differences from proxy.py: addresses are compared as addresses, not strings, and an
/// IPv4-mapped IPv6 client (`::ffff:127.0.0.1`, a dual-stack listener) counts as its IPv4
/// address; every request is checked, including those addressed to the proxy itself.
#[derive(Debug)]
pub struct FilterByClientIp {
    mode: ClientIpMode,
    ips: Arc<[IpAddr]>,
}

impl Plugin for FilterByClientIp {
    fn name(&self) -> &'static str {
        CLIENT_IP_NAME
    }

    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        _req: &mut RequestHead,
        _target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let ip = cx.client.ip().to_canonical();
        let listed = self.ips.contains(&ip);
        let refuse = match self.mode {
            ClientIpMode::Blacklist => listed,
            ClientIpMode::Whitelist => !listed,
        };
        Ok(if refuse { teapot() } else { Flow::Continue })
    }
}

// === FilterByURLRegexPlugin ===

/// The exact bytes proxy.py sends when a URL rule matches.
pub const BLOCKED: &[u8] =
    b"HTTP/1.1 404 Blocked\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Builds [`FilterByUrlRegex`]; holds the compiled `--filtered-url-regex-config` rules.
#[derive(Debug)]
pub struct FilterByUrlRegexFactory {
    rules: Arc<regex::RegexSet>,
}

impl FilterByUrlRegexFactory {
    /// Compiles `config.filtered_url_regexes`.
    ///
    /// # Errors
    /// The first rule that is not a valid regular expression, by number (from 1).
    pub fn new(config: &Config) -> Result<Self, String> {
        for (i, rule) in config.filtered_url_regexes.iter().enumerate() {
            if let Err(e) = regex::Regex::new(rule) {
                return Err(format!("--filtered-url-regex-config rule {}: {e}", i + 1));
            }
        }
        let rules = regex::RegexSet::new(&config.filtered_url_regexes)
            .map_err(|e| format!("--filtered-url-regex-config: {e}"))?;
        Ok(FilterByUrlRegexFactory {
            rules: Arc::new(rules),
        })
    }
}

impl PluginFactory for FilterByUrlRegexFactory {
    fn name(&self) -> &'static str {
        URL_REGEX_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(FilterByUrlRegex {
            rules: Arc::clone(&self.rules),
            url: String::new(),
        })
    }
}

/// `proxy.plugin.FilterByURLRegexPlugin`: a request whose URL, written as proxy.py does
/// (`host` + `path`, no scheme and no port: `www.facebook.com/tr/?id=1`), contains a
/// match for one of the `--filtered-url-regex-config` rules gets proxy.py's
/// `HTTP/1.1 404 Blocked` (`Content-Length: 0`, `Connection: close`) and an INFO log
/// line naming the URL and the rule's number (from 1). All rules are matched in one
/// pass (a `RegexSet`); the lowest-numbered match is reported, as proxy.py's first match.
///
/// Differences from proxy.py: rules are Rust `regex` syntax, which is Python's `re` for
/// the usual patterns but has no look-around or back-references (such a rule is refused
/// at start-up, naming its number, rather than failing per request); a CONNECT request
/// is matched by its host alone (proxy.py fails on it, having no path); the rules are
/// read once at start-up, not on every connection; requests addressed to the proxy
/// itself (origin-form) are not filtered.
#[derive(Debug)]
pub struct FilterByUrlRegex {
    rules: Arc<regex::RegexSet>,
    /// Reused for every request's URL.
    url: String,
}

impl Plugin for FilterByUrlRegex {
    fn name(&self) -> &'static str {
        URL_REGEX_NAME
    }

    fn on_request(
        &mut self,
        _cx: &RequestCx<'_>,
        _req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let (host, path): (&str, &[u8]) = match target {
            Target::Absolute { host, path, .. } => (host, path),
            Target::Authority { host, .. } => (host, b""),
            Target::Origin | Target::Asterisk => return Ok(Flow::Continue),
        };
        if self.rules.is_empty() {
            return Ok(Flow::Continue);
        }
        let host = comparable_host(host);
        self.url.clear();
        self.url.push_str(host);
        self.url.push_str(&String::from_utf8_lossy(path));
        let mut rule = self.rules.matches(&self.url).iter().next();
        // The same URL spelled otherwise (`/%62locked`, `/a/../blocked`, `//blocked`)
        // names the same resource at most origins: matched in its normal form too.
        if rule.is_none() && needs_normalising(path) {
            let normal = format!("{host}{}", normal_path(path));
            rule = self.rules.matches(&normal).iter().next();
            if rule.is_some() {
                self.url = normal;
            }
        }
        let Some(rule) = rule else {
            return Ok(Flow::Continue);
        };
        tracing::info!(
            "Blocked: {:?} with status_code '404' by rule number '{}'",
            self.url,
            rule + 1
        );
        Ok(Flow::Respond(Reply::raw(
            404,
            Bytes::from_static(BLOCKED),
            true,
        )))
    }
}

/// Whether `path` has a percent-escape, a dot segment or an empty segment: only then
/// does its normal form differ.
fn needs_normalising(path: &[u8]) -> bool {
    memchr::memchr(b'%', path).is_some()
        || memchr::memmem::find(path, b"/.").is_some()
        || memchr::memmem::find(path, b"//").is_some()
}

/// `path` percent-decoded, with its dot segments resolved (RFC 3986 §5.2.4) and empty
/// segments dropped; the query is decoded but otherwise kept.
fn normal_path(path: &[u8]) -> String {
    let (path, query) = match memchr::memchr(b'?', path) {
        Some(at) => (&path[..at], Some(&path[at..])),
        None => (path, None),
    };
    let decoded = percent_encoding::percent_decode(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    let mut last = "";
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
        last = segment;
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    // A directory stays one: `/a/`, `/a/.` and `/a/b/..` all name `/a/`.
    if out.is_empty() || matches!(last, "" | "." | "..") {
        out.push('/');
    }
    if let Some(query) = query {
        out.push_str(&percent_encoding::percent_decode(query).decode_utf8_lossy());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::net::SocketAddr;

    fn run(factory: &dyn PluginFactory, client: &str, raw: &str) -> Flow {
        let config = Config::default();
        let client: SocketAddr = client.parse().unwrap();
        let cx = RequestCx {
            client,
            config: &config,
            listen_addrs: &config.listen,
            intercepted: false,
        };
        let (mut req, mut target) = crate::plugin::testing::request(raw);
        factory
            .build()
            .on_request(&cx, &mut req, &mut target)
            .unwrap()
    }

    fn is_teapot(flow: Flow) -> bool {
        match flow {
            Flow::Respond(reply) => {
                assert_eq!(&reply.bytes[..], TEAPOT);
                assert_eq!(reply.status, 418);
                assert!(reply.close);
                true
            }
            Flow::Continue => false,
            Flow::Close => panic!("unexpected Close"),
        }
    }

    const CLIENT: &str = "10.1.2.3:4000";

    #[test]
    fn upstream_host_default_list() {
        let f = FilterByUpstreamHostFactory::new(&Config::default());
        for raw in [
            "GET http://facebook.com/ HTTP/1.1\r\nHost: facebook.com\r\n\r\n",
            "GET http://WWW.Facebook.COM:8080/x HTTP/1.1\r\nHost: www.facebook.com\r\n\r\n",
            "CONNECT www.facebook.com:443 HTTP/1.1\r\nHost: www.facebook.com:443\r\n\r\n",
            "GET https://facebook.com/ HTTP/1.1\r\nHost: facebook.com\r\n\r\n",
            // The same DNS names, fully qualified.
            "GET http://FaceBook.com./ HTTP/1.1\r\nHost: facebook.com.\r\n\r\n",
            "CONNECT www.facebook.com.:443 HTTP/1.1\r\nHost: www.facebook.com.:443\r\n\r\n",
        ] {
            assert!(is_teapot(run(&f, CLIENT, raw)), "{raw}");
        }
        for raw in [
            "GET http://m.facebook.com/ HTTP/1.1\r\nHost: m.facebook.com\r\n\r\n",
            "GET http://example.com/facebook.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: facebook.com\r\n\r\n",
        ] {
            assert!(!is_teapot(run(&f, CLIENT, raw)), "{raw}");
        }
    }

    #[test]
    fn upstream_host_ipv6_and_custom_list() {
        let f = FilterByUpstreamHostFactory::with_hosts([
            "[0:0:0:0:0:0:0:1]".to_owned(),
            "Blocked".to_owned(),
        ]);
        assert!(is_teapot(run(
            &f,
            CLIENT,
            "GET http://[::1]:8080/ HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"
        )));
        assert!(is_teapot(run(
            &f,
            CLIENT,
            "CONNECT blocked:443 HTTP/1.1\r\nHost: blocked:443\r\n\r\n"
        )));
        assert!(!is_teapot(run(
            &f,
            CLIENT,
            "GET http://facebook.com/ HTTP/1.1\r\nHost: facebook.com\r\n\r\n"
        )));
    }

    const GET: &str = "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n";

    #[test]
    fn client_ip_blacklist_default() {
        let f = FilterByClientIpFactory::new(&Config::default());
        assert!(is_teapot(run(&f, "127.0.0.1:5000", GET)));
        assert!(is_teapot(run(&f, "[::1]:5000", GET)));
        assert!(is_teapot(run(&f, "[::ffff:127.0.0.1]:5000", GET)));
        assert!(!is_teapot(run(&f, "127.0.0.2:5000", GET)));
        assert!(!is_teapot(run(&f, CLIENT, GET)));
        assert!(is_teapot(run(
            &f,
            "127.0.0.1:5000",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        )));
    }

    #[test]
    fn client_ip_whitelist() {
        let f = FilterByClientIpFactory::with(
            ClientIpMode::Whitelist,
            ["10.1.2.3".parse().unwrap(), "::1".parse().unwrap()],
        );
        assert!(!is_teapot(run(&f, CLIENT, GET)));
        assert!(!is_teapot(run(&f, "[::1]:1", GET)));
        assert!(!is_teapot(run(&f, "[::ffff:10.1.2.3]:1", GET)));
        assert!(is_teapot(run(&f, "127.0.0.1:5000", GET)));
        let empty = FilterByClientIpFactory::with(ClientIpMode::Whitelist, []);
        assert!(is_teapot(run(&empty, CLIENT, GET)));
    }

    fn url_filter(rules: &[&str]) -> Result<FilterByUrlRegexFactory, String> {
        let config = Config {
            filtered_url_regexes: rules.iter().map(|r| (*r).to_owned()).collect(),
            ..Config::default()
        };
        FilterByUrlRegexFactory::new(&config)
    }

    fn blocked(flow: Flow) -> bool {
        match flow {
            Flow::Respond(reply) => {
                assert_eq!(
                    (reply.status, &reply.bytes[..], reply.close),
                    (404, BLOCKED, true)
                );
                true
            }
            _ => false,
        }
    }

    #[test]
    fn url_regex_searches_host_and_path_without_scheme_or_port() {
        // Rules from proxy.py's adblock.json, plus one anchored on an address.
        let f = url_filter(&[
            "(www){0,1}.facebook.com/tr/.*",
            r"pagead\d+.googlesyndication.com/.*",
            r"^127\.0\.0\.1/blocked/",
            r"^evil\.test$",
        ])
        .unwrap();
        let get = |url: &str| format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
        for url in [
            "http://www.facebook.com/tr/?id=1",
            "http://pagead2.googlesyndication.com/pagead/js",
            "http://127.0.0.1:8080/blocked/x",
            // A fully qualified name is matched without its trailing dot.
            "http://www.facebook.com./tr/?id=1",
            // Other spellings of a blocked path.
            "http://127.0.0.1:8080/%62locked/x",
            "http://127.0.0.1:8080//blocked/x",
            "http://127.0.0.1:8080/./blocked/x",
            "http://127.0.0.1:8080/fine/../blocked/x",
            "http://127.0.0.1:8080/%2e/blocked/x",
            "http://www.facebook.com/%74r/?id=1",
        ] {
            assert!(blocked(run(&f, CLIENT, &get(url))), "{url}");
        }
        for url in [
            "http://www.facebook.com/",
            "http://pagead.googlesyndication.com/x",
            "http://127.0.0.1:8080/fine/blocked/",
        ] {
            assert!(!blocked(run(&f, CLIENT, &get(url))), "{url}");
        }
        // CONNECT is matched by its host alone.
        let connect = |a: &str| format!("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n");
        assert!(blocked(run(&f, CLIENT, &connect("evil.test:443"))));
        assert!(blocked(run(&f, CLIENT, &connect("evil.test.:443"))));
        assert!(!blocked(run(&f, CLIENT, &connect("www.facebook.com:443"))));
        // Requests to the proxy itself are not filtered.
        let local = "GET /blocked/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        assert!(!blocked(run(&f, CLIENT, local)));
        // No rules, nothing blocked.
        assert!(!blocked(run(
            &url_filter(&[]).unwrap(),
            CLIENT,
            &get("http://a/")
        )));
    }

    #[test]
    fn normal_paths() {
        for (path, normal) in [
            ("/", "/"),
            ("", "/"),
            ("/a/b", "/a/b"),
            ("/a/", "/a/"),
            ("//a///b", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/../../a", "/a"),
            ("/%61%2Fb?q=%41", "/a/b?q=A"),
            ("/%zz", "/%zz"),
        ] {
            assert_eq!(normal_path(path.as_bytes()), normal, "{path}");
        }
    }

    #[test]
    fn url_regex_refuses_rules_rust_regex_cannot_compile() {
        let err = url_filter(&["fine", "(?=look-ahead)"]).unwrap_err();
        assert!(err.contains("rule 2"), "{err}");
    }
}
