//! `proxy.plugin.CacheResponsesPlugin`: a dump of every forwarded exchange to disk.
//!
//! Despite its name (kept from proxy.py) it is not a cache: nothing is ever answered
//! from the files. Each forwarded exchange gets `<cache-dir>/responses/<host>-<uid>.txt`,
//! the origin's response exactly as it came off the wire (interim and final heads, then
//! the body with its framing). With `--cache-requests`, the request as sent upstream
//! goes to `<cache-dir>/requests/<host>-<uid>.txt`; with `--cache-by-content-type`,
//! the decoded body (framing removed, gzip or deflate undone) goes to
//! `<cache-dir>/content/<host>-<uid>.<ext>`, the extension taken from `Content-Type`
//! (`text/html; charset=utf-8` → `html`, `image/svg+xml` → `svg`, none → `plain`).
//!
//! The bytes are copied off the relay through a wire tap ([`Plugin::tap`]), so what the
//! client gets is untouched and keeps its copy-free path; the files are written by one
//! thread of their own ([`store`]), never by a worker. Files are complete once the
//! proxy has stopped (a stop waits for the writer).
//!
//! Differences from proxy.py:
//! - One set of files per exchange, not per client connection: a keep-alive connection
//!   may visit several hosts, and proxy.py's per-connection file mixed their responses
//!   (and broke its own content extraction).
//! - Requests go to a file of their own instead of the start of the response file, so
//!   `--cache-requests` and `--cache-by-content-type` work together (proxy.py skips the
//!   extraction when requests are recorded).
//! - CONNECT tunnels are not recorded (without TLS interception they carry only
//!   ciphertext, which proxy.py dumps).
//! - A recording whose exchange failed before any byte arrived leaves no empty file; a
//!   content file is kept only when the body arrived whole and decoded cleanly.
//! - Brotli (`br`) bodies are not decoded (proxy.py decodes them when the `brotli`
//!   module is installed); the response file still has them.
//! - The directories are created at start-up only when the plugin is enabled, and a
//!   directory that cannot be created stops the start (exit 64) instead of failing
//!   per request.
//! - Disk that cannot keep up does not slow the proxy or grow its memory without bound:
//!   past [`store::MAX_IN_FLIGHT`] bytes waiting to be written, the recordings that hit
//!   the limit are abandoned (their files removed, a warning logged); traffic is never
//!   affected.

pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::http::RequestHead;

use super::{Plugin, PluginFactory, RequestCx, WireSink, WireTap};
use store::{ContentSpec, Store};

/// proxy.py's name for [`CacheResponses`].
pub const NAME: &str = "proxy.plugin.CacheResponsesPlugin";
/// Its defining module's full path.
pub const MODULE_NAME: &str = "proxy.plugin.cache.cache_responses.CacheResponsesPlugin";

/// Builds [`CacheResponses`]; owns the writer thread (through [`Store`]).
pub struct CacheResponsesFactory {
    shared: Arc<Shared>,
}

/// What every connection's plugin shares: the store, the directories, the names.
struct Shared {
    store: Arc<Store>,
    responses: PathBuf,
    requests: Option<PathBuf>,
    content: Option<PathBuf>,
    /// Distinguishes this run's file names from an earlier run's.
    run: String,
    /// Numbers the recordings of this run.
    next: AtomicU64,
}

impl CacheResponsesFactory {
    /// Creates the directories under `--cache-dir` and starts the writer thread.
    ///
    /// # Errors
    /// A directory that cannot be created, or a thread that cannot start.
    pub fn new(config: &Config) -> Result<Self, String> {
        let root = &config.cache_dir;
        let dir = |name: &str| -> Result<PathBuf, String> {
            let path = root.join(name);
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("--cache-dir: cannot create {}: {e}", path.display()))?;
            Ok(path)
        };
        let responses = dir("responses")?;
        let requests = if config.cache_requests {
            Some(dir("requests")?)
        } else {
            None
        };
        let content = if config.cache_by_content_type {
            Some(dir("content")?)
        } else {
            None
        };
        let store = Store::start(config.limits)
            .map_err(|e| format!("cannot start the cache writer thread: {e}"))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Ok(CacheResponsesFactory {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                responses,
                requests,
                content,
                run: format!("{stamp:x}{:x}", std::process::id()),
                next: AtomicU64::new(0),
            }),
        })
    }
}

impl PluginFactory for CacheResponsesFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(CacheResponses {
            shared: Arc::clone(&self.shared),
        })
    }
}

/// `proxy.plugin.CacheResponsesPlugin` (see the module documentation).
pub struct CacheResponses {
    shared: Arc<Shared>,
}

impl Plugin for CacheResponses {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tap(
        &mut self,
        _cx: &RequestCx<'_>,
        req: &RequestHead,
        host: &str,
        _port: u16,
    ) -> Option<WireTap> {
        let shared = &self.shared;
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{seq}", file_safe(host), shared.run);
        let content = shared.content.as_ref().map(|dir| ContentSpec {
            dir: dir.clone(),
            name: name.clone(),
            request_was_head: req.is_method("HEAD"),
        });
        let received = shared
            .store
            .open(shared.responses.join(format!("{name}.txt")), content);
        let sent = shared
            .requests
            .as_ref()
            .map(|dir| shared.store.open(dir.join(format!("{name}.txt")), None));
        Some(WireTap {
            sent: sent.map(|s| Box::new(s) as Box<dyn WireSink>),
            received: Some(Box::new(received)),
        })
    }
}

/// `host` with anything but letters, digits, `.`, `-` and `_` replaced by `_`
/// (an IPv6 literal's colons included), for a file name.
fn file_safe(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_safe_file_names() {
        assert_eq!(file_safe("www.example.com"), "www.example.com");
        assert_eq!(file_safe("::1"), "__1");
        assert_eq!(file_safe("a/../b"), "a_.._b");
    }
}
