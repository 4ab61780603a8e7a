//! Plugins that rewrite response bodies through the body hooks
//! (`wants_response_body`, `on_response_chunk`, `on_response_end`).

use bytes::Bytes;

use super::{Flow, Plugin, PluginError, PluginFactory, RequestCx};
use crate::http::ResponseHead;

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
