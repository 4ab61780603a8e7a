//! `--enable-static-server`: GET and HEAD of files under `--static-server-dir`.
//!
//! The request path (query dropped) is percent-decoded and split on `/`; empty and `.`
//! segments are skipped, a `..` segment is a 404, and a decoded NUL or backslash (or a
//! malformed `%` escape) is a 400. The segments are joined onto the root, the result is
//! canonicalized (`tokio::fs::canonicalize`: every symlink resolved) and must still lie
//! under the canonical root, so a symlink that leaves the root is a 404 while one that
//! stays inside works. A directory serves its `index.html` (checked the same way), or 404;
//! asked for without its trailing slash, it is redirected (301) to it.
//!
//! The file is opened with `O_NOFOLLOW` (the canonical path has no symlink left, so a
//! swap after the check fails instead of escaping) and `O_NONBLOCK` (a FIFO cannot hang
//! the open), and streamed in 64 KiB chunks: memory per download is one chunk, whatever
//! the file's size. All file-system calls go through `tokio::fs` (the runtime's blocking
//! pool), never `std::fs` on the worker thread.
//!
//! Differences from proxy.py (`HttpWebServerPlugin.read_and_build_static_file_response`):
//! - no path traversal (proxy.py serves `GET /../../etc/hostname`);
//! - the connection is kept alive as the request asks (proxy.py always sends
//!   `Connection: close`), and a 404 is kept alive too (proxy.py closes);
//! - HEAD sends the head only (proxy.py sends the file); other methods get 405 with
//!   `Allow: GET, HEAD` (proxy.py serves the file to any method);
//! - no gzip (proxy.py compresses files over `--min-compression-length`), no ranges, no
//!   conditional requests;
//! - content types come from the `mime_guess` table, by the requested name's extension,
//!   with text declared UTF-8 (proxy.py asks Python's `mimetypes` about the file), and an
//!   unknown extension is `application/octet-stream` (proxy.py: `text/plain`);
//! - a directory serves its `index.html` (proxy.py: 404 for `/`, unless the dashboard).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::conn::Stream;
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::conn::io::{write_all, IoFail};
use crate::error::{ErrorKind, ProxyError};
use crate::http::{response::simple_response, RequestHead};

/// Bytes read from a file and written to the client at a time.
pub const CHUNK: usize = 64 * 1024;

/// What proxy.py sends with every static file.
pub const CACHE_CONTROL: &str = "max-age=86400";

/// The methods served (the `Allow` header of a 405).
pub const ALLOW: &str = "GET, HEAD";

/// A request answered completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticOutcome {
    /// The status sent.
    pub status: u16,
    /// Bytes written to the client (head and body).
    pub bytes: u64,
    /// Whether the client connection may carry another request (the request asked for it:
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
}

/// A request that could not be answered completely.
#[derive(Debug)]
pub struct StaticError {
    /// The status whose head was (or was being) written; `None` when nothing was sent, so
    /// an error reply is still possible.
    pub status: Option<u16>,
    /// Bytes written to the client before the failure.
    pub bytes: u64,
    /// What failed.
    pub fail: StaticFail,
}

/// What failed while serving a file.
#[derive(Debug)]
pub enum StaticFail {
    /// Writing to the client (gone, reset, or no progress for `--timeout`).
    Client(IoFail),
    /// Reading the file.
    File(io::Error),
    /// The file ended before the length it had when it was opened.
    Truncated,
}

impl StaticError {
    /// The error for the access log and, when nothing was sent yet, the error reply.
    pub fn into_proxy_error(self) -> ProxyError {
        match self.fail {
            StaticFail::Client(fail) => {
                crate::conn::io::client_io_error(fail, "writing a static file")
            }
            StaticFail::File(e) => {
                ProxyError::new(ErrorKind::ProxyInternalError, "reading a static file")
                    .with_source(e)
            }
            StaticFail::Truncated => ProxyError::new(
                ErrorKind::ProxyInternalError,
                "a static file shrank while it was being sent",
            ),
        }
    }
}

/// Why a request path cannot name a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Malformed: a bad `%` escape, a NUL or a backslash (400).
    BadRequest,
    /// Names nothing we serve: a `..` segment, or not a path at all (`*`) (404).
    NotFound,
}

/// The relative path a request-target names under the root: the path before `?`,
/// percent-decoded, split on `/`, with empty and `.` segments dropped.
///
/// # Errors
/// [`PathError::NotFound`] for a `..` segment (before or after decoding) or a target that
/// does not start with `/`; [`PathError::BadRequest`] for a malformed escape, a NUL or a
/// backslash.
pub fn relative_path(target: &[u8]) -> Result<PathBuf, PathError> {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path.first() != Some(&b'/') {
        return Err(PathError::NotFound);
    }
    if !escapes_are_well_formed(path) {
        return Err(PathError::BadRequest);
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode(path).collect();
    if decoded.iter().any(|&b| b == 0 || b == b'\\') {
        return Err(PathError::BadRequest);
    }
    let mut rel = PathBuf::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => return Err(PathError::NotFound),
            _ => rel.push(OsStr::from_bytes(segment)),
        }
    }
    Ok(rel)
}

/// Whether every `%` is followed by two hex digits (a path with a stray `%` is refused,
/// where the decoder would pass it through).
fn escapes_are_well_formed(input: &[u8]) -> bool {
    memchr::memchr_iter(b'%', input).all(|at| {
        input
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// The media type of a file, from its extension (case-insensitive), by the
/// `mime_guess` crate's table: JavaScript as `text/javascript` (RFC 9239), a PAC file
/// as browsers expect it, and an unknown extension as `application/octet-stream`.
/// `push_content_type` adds the charset of text types.
pub fn content_type(path: &Path) -> &'static str {
    let is_pac = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("pac"));
    if is_pac {
        return crate::plugin::pac::CONTENT_TYPE;
    }
    match mime_guess::from_path(path).first_raw() {
        Some("application/javascript") => "text/javascript",
        Some(known) => known,
        None => "application/octet-stream",
    }
}

/// The `Content-Type` value for `media_type`: text is declared UTF-8, as the files a
/// proxy's built-in server holds are (without a charset, `text/*` means US-ASCII).
fn push_content_type(media_type: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(media_type.as_bytes());
    if media_type.starts_with("text/") && !media_type.contains("charset") {
        out.extend_from_slice(b"; charset=utf-8");
    }
}

/// Answers one origin-form GET or HEAD from the files under `root`, which must be
/// canonical (as `Config::static_server_dir` is when the static server is enabled).
/// The caller has checked that the request has no body.
///
/// # Errors
/// See [`StaticError`]: the client went away, or the file failed while being sent.
pub async fn serve(
    stream: &Stream,
    head: &RequestHead,
    root: &Path,
    config: &Config,
) -> Result<StaticOutcome, StaticError> {
    let keep_alive = head.wants_keep_alive();
    let is_head = head.is_method("HEAD");
    if !is_head && !head.is_method("GET") {
        return reply(
            stream,
            405,
            &[("Allow", ALLOW)],
            is_head,
            keep_alive,
            config,
        )
        .await;
    }
    let rel = match relative_path(head.effective_target()) {
        Ok(rel) => rel,
        Err(PathError::BadRequest) => {
            return reply(stream, 400, &[], is_head, keep_alive, config).await
        }
        Err(PathError::NotFound) => {
            return reply(stream, 404, &[], is_head, keep_alive, config).await
        }
    };
    let (is_index, file, len) = match open(root, &rel).await {
        Ok(found) => found,
        Err(status) => return reply(stream, status, &[], is_head, keep_alive, config).await,
    };
    // A directory is addressed with its slash, a file without: `/sub` is redirected to
    // `/sub/` (so that the index's relative links resolve inside it, as web servers do),
    // and `/file.html/` is not that file.
    let target = head.effective_target();
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(at) => target.split_at(at),
        None => (target, &b""[..]),
    };
    let dir_form = path.ends_with(b"/") || path.ends_with(b"/.");
    if is_index && !dir_form {
        let location = format!(
            "{}/{}",
            String::from_utf8_lossy(path),
            String::from_utf8_lossy(query)
        );
        return reply(
            stream,
            301,
            &[("Location", &location)],
            is_head,
            keep_alive,
            config,
        )
        .await;
    }
    if !is_index && dir_form {
        return reply(stream, 404, &[], is_head, keep_alive, config).await;
    }

    let mut out = Vec::with_capacity(256 + if is_head { 0 } else { CHUNK });
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: ");
    // The type of the name asked for (as nginx), not of a symlink's target.
    let named = if is_index {
        Path::new("index.html")
    } else {
        &rel
    };
    push_content_type(content_type(named), &mut out);
    out.extend_from_slice(b"\r\nCache-Control: ");
    out.extend_from_slice(CACHE_CONTROL.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let remaining = if is_head { 0 } else { len };
    send_file(stream, file, out, remaining, config)
        .await
        .map(|bytes| StaticOutcome {
            status: 200,
            bytes,
            keep_alive,
        })
}

/// Writes `out` (the head) followed by `remaining` bytes of `file`: the first chunk goes
/// out with the head in one write, then one chunk at a time.
async fn send_file(
    stream: &Stream,
    mut file: tokio::fs::File,
    mut out: Vec<u8>,
    mut remaining: u64,
    config: &Config,
) -> Result<u64, StaticError> {
    let mut sent: u64 = 0;
    let fail = |sent: u64, fail: StaticFail| StaticError {
        // Nothing sent yet: the core may still answer with an error reply.
        status: (sent > 0).then_some(200),
        bytes: sent,
        fail,
    };
    loop {
        if remaining > 0 {
            let start = out.len();
            let want = usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK);
            out.resize(start + want, 0);
            let n = match file.read(&mut out[start..]).await {
                Ok(0) => return Err(fail(sent, StaticFail::Truncated)),
                Ok(n) => n,
                Err(e) => return Err(fail(sent, StaticFail::File(e))),
            };
            out.truncate(start + n);
            remaining -= n as u64;
        }
        if let Err(e) = write_all(stream, &out, config.timeout).await {
            return Err(StaticError {
                status: Some(200),
                bytes: sent,
                fail: StaticFail::Client(e),
            });
        }
        sent += out.len() as u64;
        out.clear();
        if remaining == 0 {
            return Ok(sent);
        }
    }
}

/// Finds and opens the file `rel` names under `root` (see the module documentation).
/// Returns whether it is a directory's `index.html`, the open file and its length, or
/// the status to answer.
async fn open(root: &Path, rel: &Path) -> Result<(bool, tokio::fs::File, u64), u16> {
    let mut path = inside(root, &root.join(rel)).await?;
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| status_of(&e))?;
    let is_index = meta.is_dir();
    if is_index {
        path = inside(root, &path.join("index.html")).await?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let mut file = options.open(&path).await.map_err(|e| status_of(&e))?;
    let meta = file.metadata().await.map_err(|e| status_of(&e))?;
    if !meta.is_file() {
        return Err(404);
    }
    file.set_max_buf_size(CHUNK);
    Ok((is_index, file, meta.len()))
}

/// `path` with every symlink resolved, if it exists and lies under `root`; else 404
/// (or 403 when the file system refuses).
async fn inside(root: &Path, path: &Path) -> Result<PathBuf, u16> {
    let canonical = tokio::fs::canonicalize(path)
        .await
        .map_err(|e| status_of(&e))?;
    if canonical.starts_with(root) {
        Ok(canonical)
    } else {
        Err(404)
    }
}

fn status_of(err: &io::Error) -> u16 {
    match err.kind() {
        io::ErrorKind::PermissionDenied => 403,
        _ => 404,
    }
}

/// Sends a short error reply (`405`, `404`, …) with a plain-text body (no body for HEAD).
async fn reply(
    stream: &Stream,
    status: u16,
    headers: &[(&str, &str)],
    is_head: bool,
    keep_alive: bool,
    config: &Config,
) -> Result<StaticOutcome, StaticError> {
    let reason = crate::http::response::reason_phrase(status);
    let body = format!("{status} {reason}\n");
    let mut all = Vec::with_capacity(headers.len() + 1);
    all.extend_from_slice(headers);
    all.push(("Content-Type", "text/plain; charset=utf-8"));
    let bytes = simple_response(status, &all, body.as_bytes(), !keep_alive);
    let bytes = if is_head {
        bytes.slice(..bytes.len().saturating_sub(body.len()))
    } else {
        bytes
    };
    match write_all(stream, &bytes, config.timeout).await {
        Ok(()) => Ok(StaticOutcome {
            status,
            bytes: bytes.len() as u64,
            keep_alive,
        }),
        Err(e) => Err(StaticError {
            status: Some(status),
            bytes: 0,
            fail: StaticFail::Client(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rel(target: &str) -> Result<PathBuf, PathError> {
        relative_path(target.as_bytes())
    }

    #[test]
    fn paths_are_decoded_and_normalized() {
        assert_eq!(rel("/"), Ok(PathBuf::new()));
        assert_eq!(rel("/a/b.txt"), Ok(PathBuf::from("a/b.txt")));
        assert_eq!(rel("//a//./b.txt?x=../.."), Ok(PathBuf::from("a/b.txt")));
        assert_eq!(rel("/a%20b/%41.txt"), Ok(PathBuf::from("a b/A.txt")));
        assert_eq!(rel("/%2Fetc%2Fpasswd"), Ok(PathBuf::from("etc/passwd")));
        assert!(rel("/a/b").unwrap().is_relative());
    }

    #[test]
    fn traversal_and_bad_bytes_are_refused() {
        for target in [
            "/..",
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/..%2fetc/passwd",
            "/a/../../etc/passwd",
            "/a/%2e%2e/%2e%2e/etc/passwd",
            "*",
            "",
        ] {
            assert_eq!(rel(target), Err(PathError::NotFound), "{target}");
        }
        for target in ["/a%00.txt", "/%5c..%5cetc", "/a\\b", "/%", "/%2", "/%zz"] {
            assert_eq!(rel(target), Err(PathError::BadRequest), "{target}");
        }
    }

    #[test]
    fn content_types() {
        for (name, ct) in [
            ("a.html", "text/html; charset=utf-8"),
            ("A.HTM", "text/html; charset=utf-8"),
            ("x.js", "text/javascript; charset=utf-8"),
            ("x.mjs", "text/javascript; charset=utf-8"),
            ("x.css", "text/css; charset=utf-8"),
            ("notes.md", "text/markdown; charset=utf-8"),
            ("x.json", "application/json"),
            ("x.svg", "image/svg+xml"),
            ("x.jpeg", "image/jpeg"),
            ("x.woff2", "font/woff2"),
            ("x.wasm", "application/wasm"),
            ("x.avif", "image/avif"),
            ("proxy.pac", "application/x-ns-proxy-autoconfig"),
            ("PROXY.PAC", "application/x-ns-proxy-autoconfig"),
            ("noext", "application/octet-stream"),
            ("x.unknown-extension", "application/octet-stream"),
            ("x.tar.gz", "application/gzip"),
        ] {
            let mut out = Vec::new();
            push_content_type(content_type(Path::new(name)), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), ct, "{name}");
        }
    }
}
