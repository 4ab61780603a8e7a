//! `--pac-file`: serves a proxy auto-config file to requests addressed to the proxy itself.
//!
//! proxy.py's `proxy.http.server.HttpWebServerPacFilePlugin`, with these differences:
//! - `--pac-file-url-path` is an exact path compared with the request path without its
//!   query (proxy.py builds the regex `<path>$` and `re.match`es it against path and query,
//!   so `GET /?x` was a 404 there and is served here).
//! - Only GET and HEAD are served (HEAD: same head and `Content-Length`, no body); other
//!   methods and paths fall through to the core's 404.
//! - The connection is kept open: no `Connection: close` (proxy.py sent it and then left
//!   the socket open until `--timeout`, a bug), unless the client asked to close or sent a
//!   body we will not read.

use bytes::Bytes;

use crate::config::Config;
use crate::http::{RequestHead, Target};

use super::{local_get_path, Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};

/// The plugin's proxy.py name.
pub const NAME: &str = "proxy.http.server.HttpWebServerPacFilePlugin";

/// The PAC media type (Netscape's, as proxy.py and browsers use).
pub const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// Builds [`PacFile`] for each connection; holds the file's bytes and its path.
#[derive(Debug)]
pub struct PacFileFactory {
    body: Bytes,
    url_path: Bytes,
}

impl PacFileFactory {
    /// `None` when `--pac-file` is not given.
    pub fn new(config: &Config) -> Option<Self> {
        let body = config.pac_file.as_ref()?;
        Some(Self::with(
            Bytes::from(body.clone()),
            config.pac_file_url_path.as_str(),
        ))
    }

    /// Serves `body` at `url_path`.
    pub fn with(body: Bytes, url_path: &str) -> Self {
        PacFileFactory {
            body,
            url_path: Bytes::copy_from_slice(url_path.as_bytes()),
        }
    }
}

impl PluginFactory for PacFileFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(PacFile {
            body: self.body.clone(),
            url_path: self.url_path.clone(),
        })
    }
}

/// Answers `GET`/`HEAD <pac-file-url-path>` (origin-form) with the PAC file.
#[derive(Debug)]
pub struct PacFile {
    body: Bytes,
    url_path: Bytes,
}

impl Plugin for PacFile {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_request(
        &mut self,
        _cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        if local_get_path(req, target) != Some(self.url_path.as_ref()) {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Respond(Reply::answering(
            req,
            200,
            &[("Content-Type", CONTENT_TYPE)],
            &self.body,
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PAC: &[u8] = b"function FindProxyForURL(url, host) { return \"PROXY 127.0.0.1:8899\"; }";

    fn run(path: &str, raw: &str) -> Flow {
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:5000".parse().unwrap(),
            config: &config,
            listen_addrs: &config.listen,
            intercepted: false,
        };
        let (mut req, mut target) = crate::plugin::testing::request(raw);
        PacFileFactory::with(Bytes::from_static(PAC), path)
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

    fn expected_head(close: bool) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ns-proxy-autoconfig\r\n\
             Content-Length: {}\r\n{}\r\n",
            PAC.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
    }

    #[test]
    fn get_serves_the_file_and_keeps_the_connection() {
        let r = reply(run("/", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, 200);
        assert!(!r.close);
        let mut want = expected_head(false).into_bytes();
        want.extend_from_slice(PAC);
        assert_eq!(&r.bytes[..], &want[..]);
        // The query is ignored.
        let r = reply(run(
            "/proxy.pac",
            "GET /proxy.pac?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ));
        assert_eq!(&r.bytes[..], &want[..]);
    }

    #[test]
    fn head_has_the_same_head_and_no_body() {
        let r = reply(run("/", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(&r.bytes[..], expected_head(false).as_bytes());
        assert!(!r.close);
    }

    #[test]
    fn close_when_the_client_asks() {
        let r = reply(run(
            "/",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
        assert!(r.close);
        assert!(r.bytes.starts_with(expected_head(true).as_bytes()));
        let r = reply(run("/", "GET / HTTP/1.0\r\n\r\n"));
        assert!(r.close);
        let r = reply(run("/", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!r.close);
        let r = reply(run(
            "/",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
        ));
        assert!(r.close);
    }

    #[test]
    fn other_requests_continue() {
        for (path, raw) in [
            ("/", "GET /foo HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("/proxy.pac", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("/proxy.pac", "GET /proxy.pac/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            (
                "/",
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                "/",
                "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            ),
            (
                "/",
                "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            ),
            ("/", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
        ] {
            assert!(matches!(run(path, raw), Flow::Continue), "{raw}");
        }
    }
}
