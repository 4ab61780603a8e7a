//! Plugins that rewrite response bodies through the body hooks
//! (`wants_response_body`, `on_response_chunk`, `on_response_end`).

use bytes::Bytes;

use super::{Flow, Plugin, PluginError, PluginFactory, RequestCx};
use crate::http::{RequestHead, ResponseHead, Target};

/// proxy.py's dotted name.
pub const MODIFY_CHUNK_RESPONSE_NAME: &str = "proxy.plugin.ModifyChunkResponsePlugin";

/// What a chunked response's body becomes.
pub const MODIFIED_BODY: &[u8] = b"modify\nchunk\nresponse\nplugin\n";

/// Replaces the body of every chunked response with [`MODIFIED_BODY`], sent as one
/// chunk (`1d\r\n…\r\n0\r\n\r\n`, as proxy.py does). Other responses pass unchanged.
///
/// Differs from proxy.py: the origin's body is consumed as it streams (proxy.py
/// buffers all of it), the access log counts the bytes actually sent (proxy.py logs
/// 0), and an HTTP/1.0 client gets the new body close-delimited.
#[derive(Default)]
pub struct ModifyChunkResponse {
    /// Whether the current response is chunked (decided in `on_response`).
    active: bool,
}

impl Plugin for ModifyChunkResponse {
    fn name(&self) -> &'static str {
        MODIFY_CHUNK_RESPONSE_NAME
    }

    fn on_response(
        &mut self,
        _cx: &RequestCx<'_>,
        res: &mut ResponseHead,
    ) -> Result<Flow, PluginError> {
        self.active = res.has_token("transfer-encoding", "chunked");
        Ok(Flow::Continue)
    }

    fn wants_response_body(&self) -> bool {
        self.active
    }

    fn on_response_chunk(
        &mut self,
        _cx: &RequestCx<'_>,
        _chunk: Bytes,
    ) -> Result<Bytes, PluginError> {
        Ok(Bytes::new())
    }

    fn on_response_end(&mut self, _cx: &RequestCx<'_>) -> Result<Bytes, PluginError> {
        Ok(Bytes::from_static(MODIFIED_BODY))
    }
}

/// Builds a [`ModifyChunkResponse`] per connection.
pub struct ModifyChunkResponseFactory;

impl PluginFactory for ModifyChunkResponseFactory {
    fn name(&self) -> &'static str {
        MODIFY_CHUNK_RESPONSE_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(ModifyChunkResponse::default())
    }
}

// === ModifyPostDataPlugin ===

/// proxy.py's dotted name.
pub const MODIFY_POST_DATA_NAME: &str = "proxy.plugin.ModifyPostDataPlugin";

/// What a request body becomes.
pub const MODIFIED_POST_DATA: &[u8] = br#"{"key": "modified"}"#;

/// Replaces the body of every request that has one with [`MODIFIED_POST_DATA`] and
/// `Content-Type: application/json`; the proxy sends it with `Content-Length: 19`.
///
/// Differs from proxy.py: a chunked request body is sent on with a Content-Length
/// (proxy.py re-chunks it), and bodies over 8 MiB are refused with 413 (proxy.py
/// buffers any size).
#[derive(Default)]
pub struct ModifyPostData {
    /// Whether the current request has a body (decided in `on_request`).
    active: bool,
}

impl Plugin for ModifyPostData {
    fn name(&self) -> &'static str {
        MODIFY_POST_DATA_NAME
    }

    fn on_request(
        &mut self,
        _cx: &RequestCx<'_>,
        req: &mut RequestHead,
        _target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let has_length = req
            .header("content-length")
            .is_some_and(|v| v.iter().any(|&b| b != b'0'));
        self.active = has_length || req.count("transfer-encoding") > 0;
        if self.active {
            req.set("Content-Type", b"application/json");
        }
        Ok(Flow::Continue)
    }

    fn wants_request_body(&self) -> bool {
        self.active
    }

    fn on_request_body(&mut self, _cx: &RequestCx<'_>, body: Bytes) -> Result<Bytes, PluginError> {
        // An empty chunked body (`0\r\n\r\n`) is no body, as `Content-Length: 0` is.
        if body.is_empty() {
            return Ok(body);
        }
        Ok(Bytes::from_static(MODIFIED_POST_DATA))
    }
}

/// Builds a [`ModifyPostData`] per connection.
pub struct ModifyPostDataFactory;

impl PluginFactory for ModifyPostDataFactory {
    fn name(&self) -> &'static str {
        MODIFY_POST_DATA_NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(ModifyPostData::default())
    }
}
