//! Plugins that answer in the origin's place: `ProposedRestApiPlugin` (a mock REST API)
//! and `ManInTheMiddlePlugin` (every response replaced).
//!
//! Both answer as proxy.py's `okResponse` does: bodies over 20 bytes are gzip-encoded
//! with `Content-Encoding: gzip`. The gzip bytes differ from Python's (another
//! compressor, no timestamp); what a client decodes is the same.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};
use crate::http::{RequestHead, ResponseHead, Target};

/// proxy.py's dotted name for the mock REST API.
pub const REST_API_NAME: &str = "proxy.plugin.ProposedRestApiPlugin";
/// proxy.py's dotted name for the response replacer.
pub const MITM_NAME: &str = "proxy.plugin.ManInTheMiddlePlugin";

/// The host the mock API answers for.
pub const API_SERVER: &str = "api.example.com";

/// `/v1/users/` as proxy.py's `json.dumps` prints it.
const USERS_JSON: &str = concat!(
    r#"{"count": 2, "next": null, "previous": null, "results": ["#,
    r#"{"email": "you@example.com", "groups": [], "url": "api.example.com/v1/users/1/", "username": "admin"}, "#,
    r#"{"email": "someone@example.com", "groups": [], "url": "api.example.com/v1/users/2/", "username": "someone"}]}"#
);

/// The body ManInTheMiddlePlugin sends instead of the origin's.
pub const MITM_BODY: &[u8] = b"Hello from man in the middle";

/// proxy.py's `NOT_FOUND_RESPONSE_PKT`, with our product token.
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 NOT FOUND\r\nServer: proxy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// proxy.py's `okResponse`: 200, the given headers, gzip when the body is over 20 bytes.
pub fn ok_response(headers: &[(&str, &str)], body: &[u8]) -> Result<Reply, PluginError> {
    const MIN_COMPRESSION_LENGTH: usize = 20;
    if body.len() <= MIN_COMPRESSION_LENGTH {
        return Ok(Reply::new(200, headers, body, false));
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len()), Compression::default());
    encoder
        .write_all(body)
        .map_err(|e| PluginError(format!("gzip: {e}")))?;
    let gz = encoder
        .finish()
        .map_err(|e| PluginError(format!("gzip: {e}")))?;
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("Content-Encoding", "gzip"));
    Ok(Reply::new(200, &all, &gz, false))
}

// === ProposedRestApiPlugin ===

/// Answers `http://api.example.com/v1/users/` with a canned JSON list and other
/// `api.example.com` paths with 404, without contacting any upstream.
///
/// Differs from proxy.py: requests to other hosts are forwarded as usual (proxy.py's
/// plugin refuses every upstream connection, so they hang until the timeout), and an
/// `https://` or CONNECT request to the API host is not mocked (the same as proxy.py).
pub struct ProposedRestApi {
    users: Reply,
}

impl Plugin for ProposedRestApi {
    fn name(&self) -> &'static str {
        REST_API_NAME
    }

    fn on_request(
        &mut self,
        _cx: &RequestCx<'_>,
        _req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let Target::Absolute { host, path, .. } = target else {
            return Ok(Flow::Continue);
        };
        if host != API_SERVER {
            return Ok(Flow::Continue);
        }
        if &path[..] == b"/v1/users/" {
            return Ok(Flow::Respond(self.users.clone()));
        }
        Ok(Flow::Respond(Reply::raw(
            404,
            Bytes::from_static(NOT_FOUND),
            true,
        )))
    }
}

/// Builds [`ProposedRestApi`]; the canned reply is encoded once.
pub struct ProposedRestApiFactory {
    users: Reply,
}

impl ProposedRestApiFactory {
    /// Encodes the canned responses.
    ///
    /// # Errors
    /// Only if gzip encoding into memory fails.
    pub fn new() -> Result<Self, PluginError> {
        let users = ok_response(
            &[("Content-Type", "application/json")],
            USERS_JSON.as_bytes(),
        )?;
        Ok(ProposedRestApiFactory { users })
    }
}

impl PluginFactory for ProposedRestApiFactory {
    fn name(&self) -> &'static str {
        REST_API_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(ProposedRestApi {
            users: self.users.clone(),
        })
    }
}

// === ManInTheMiddlePlugin ===

/// Replaces every origin response with `200 OK` and "Hello from man in the middle"
/// (gzip-encoded, as proxy.py's `okResponse` does). The origin's body is never read,
/// so its connection is not reused.
pub struct ManInTheMiddle {
    reply: Reply,
}

impl Plugin for ManInTheMiddle {
    fn name(&self) -> &'static str {
        MITM_NAME
    }

    fn on_response(
        &mut self,
        _cx: &RequestCx<'_>,
        _res: &mut ResponseHead,
    ) -> Result<Flow, PluginError> {
        Ok(Flow::Respond(self.reply.clone()))
    }
}

/// Builds [`ManInTheMiddle`]; the reply is encoded once.
pub struct ManInTheMiddleFactory {
    reply: Reply,
}

impl ManInTheMiddleFactory {
    /// Encodes the reply.
    ///
    /// # Errors
    /// Only if gzip encoding into memory fails.
    pub fn new() -> Result<Self, PluginError> {
        Ok(ManInTheMiddleFactory {
            reply: ok_response(&[], MITM_BODY)?,
        })
    }
}

impl PluginFactory for ManInTheMiddleFactory {
    fn name(&self) -> &'static str {
        MITM_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(ManInTheMiddle {
            reply: self.reply.clone(),
        })
    }
}

/// Both factories, for the registry.
pub fn factory(name: &str) -> Option<Result<Arc<dyn PluginFactory>, PluginError>> {
    match name {
        REST_API_NAME => Some(ProposedRestApiFactory::new().map(|f| Arc::new(f) as _)),
        MITM_NAME => Some(ManInTheMiddleFactory::new().map(|f| Arc::new(f) as _)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Limits};
    use crate::http::{parse_request, parse_target, Parsed};
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Splits a reply into its head (as text) and body.
    fn split(reply: &Reply) -> (String, Vec<u8>) {
        let at = reply
            .bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        (
            String::from_utf8_lossy(&reply.bytes[..at]).into_owned(),
            reply.bytes[at..].to_vec(),
        )
    }

    fn ask(plugin: &mut dyn Plugin, raw: &str) -> Flow {
        let mut buf = bytes::BytesMut::from(raw.as_bytes());
        let Ok(Parsed::Complete(mut head)) = parse_request(&mut buf, &Limits::default()) else {
            panic!("bad request in test")
        };
        let mut target = parse_target(&head.target_bytes(), head.is_method("CONNECT")).unwrap();
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:1".parse().unwrap(),
            config: &config,
            listen_addrs: &[],
            intercepted: false,
        };
        plugin.on_request(&cx, &mut head, &mut target).unwrap()
    }

    #[test]
    fn users_endpoint_answers_gzip_json() {
        let mut plugin = ProposedRestApiFactory::new().unwrap().build();
        let flow = ask(
            plugin.as_mut(),
            "GET http://api.example.com/v1/users/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        );
        let Flow::Respond(reply) = flow else {
            panic!("expected a reply")
        };
        let (head, body) = split(&reply);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: application/json\r\n"));
        assert!(head.contains("Content-Encoding: gzip\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        let json: serde_json::Value = serde_json::from_slice(&gunzip(&body)).unwrap();
        assert_eq!(json["count"], 2);
        assert_eq!(json["results"][0]["username"], "admin");
        assert_eq!(json["results"][1]["username"], "someone");
    }

    #[test]
    fn other_api_paths_are_404_and_other_hosts_pass() {
        let mut plugin = ProposedRestApiFactory::new().unwrap().build();
        let flow = ask(
            plugin.as_mut(),
            "GET http://api.example.com/v1/groups/ HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let Flow::Respond(reply) = flow else {
            panic!("expected a reply")
        };
        assert_eq!(&reply.bytes[..], NOT_FOUND);
        let flow = ask(
            plugin.as_mut(),
            "GET http://example.com/v1/users/ HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(matches!(flow, Flow::Continue));
        let flow = ask(
            plugin.as_mut(),
            "CONNECT api.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(matches!(flow, Flow::Continue));
    }

    #[test]
    fn man_in_the_middle_replaces_the_response() {
        let mut plugin = ManInTheMiddleFactory::new().unwrap().build();
        let mut buf = bytes::BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..]);
        let Ok(Parsed::Complete(mut res)) =
            crate::http::parse_response(&mut buf, &Limits::default())
        else {
            panic!("bad response in test")
        };
        let config = Config::default();
        let cx = RequestCx {
            client: "127.0.0.1:1".parse().unwrap(),
            config: &config,
            listen_addrs: &[],
            intercepted: false,
        };
        let Flow::Respond(reply) = plugin.on_response(&cx, &mut res).unwrap() else {
            panic!("expected a reply")
        };
        let (head, body) = split(&reply);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Content-Encoding: gzip\r\n"));
        assert_eq!(gunzip(&body), MITM_BODY);
        assert!(!reply.close);
    }

    #[test]
    fn short_bodies_are_not_compressed() {
        let reply = ok_response(&[], b"tiny").unwrap();
        let (head, body) = split(&reply);
        assert!(!head.contains("Content-Encoding"));
        assert_eq!(body, b"tiny");
    }
}
