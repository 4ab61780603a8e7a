//! The writer thread behind CacheResponsesPlugin: recordings are opened, fed and ended
//! from the workers through a channel; this thread alone touches the disk.
//!
//! Memory is bounded by [`MAX_IN_FLIGHT`]: bytes handed over but not yet written. A
//! recording whose bytes would go past it is abandoned (its files removed) rather than
//! slowing the relay or buffering without bound.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::BytesMut;

use crate::config::Limits;
use crate::http::{parse_response, response_body_kind, BodyKind, ChunkedDecoder, Parsed};
use crate::plugin::WireSink;

/// Most bytes handed to the writer and not yet written, for all recordings together.
pub const MAX_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Where a response's decoded body goes (`--cache-by-content-type`).
#[derive(Debug, Clone)]
pub struct ContentSpec {
    /// The `content` directory.
    pub dir: PathBuf,
    /// The file name without its extension.
    pub name: String,
    /// A response to HEAD has no body, whatever its headers say.
    pub request_was_head: bool,
}

enum Command {
    Open {
        id: u64,
        path: PathBuf,
        content: Option<ContentSpec>,
    },
    Data {
        id: u64,
        bytes: Vec<u8>,
    },
    End {
        id: u64,
        complete: bool,
    },
    /// Too far behind: drop the recording and its files.
    Abort {
        id: u64,
    },
}

/// The writer thread and the way to it. Dropping the last handle lets the thread write
/// what is queued, then waits for it.
pub struct Store {
    tx: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    in_flight: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

impl Store {
    /// Starts the writer thread.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(limits: Limits) -> io::Result<Store> {
        let (tx, rx) = mpsc::channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&in_flight);
        let thread = std::thread::Builder::new()
            .name("proxy-cache-writer".into())
            .spawn(move || Writer::new(limits, counter).run(rx))?;
        Ok(Store {
            tx: Some(tx),
            thread: Some(thread),
            in_flight,
            next_id: AtomicU64::new(0),
        })
    }

    /// Starts a recording into `path` (created at its first byte), with its decoded
    /// body extracted per `content` if given.
    pub fn open(self: &Arc<Self>, path: PathBuf, content: Option<ContentSpec>) -> Recording {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut recording = Recording {
            store: Arc::clone(self),
            id,
            dead: false,
            ended: false,
        };
        if !self.send(Command::Open { id, path, content }) {
            recording.dead = true;
        }
        recording
    }

    fn send(&self, command: Command) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(command).is_ok())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One file being recorded: a [`WireSink`] handing copies to the writer thread.
pub struct Recording {
    store: Arc<Store>,
    id: u64,
    /// Abandoned (over the memory bound, or the writer is gone): bytes are ignored.
    dead: bool,
    ended: bool,
}

impl WireSink for Recording {
    fn bytes(&mut self, bytes: &[u8]) {
        if self.dead || self.ended {
            return;
        }
        let len = bytes.len();
        let before = self.store.in_flight.fetch_add(len, Ordering::Relaxed);
        if before + len > MAX_IN_FLIGHT {
            self.store.in_flight.fetch_sub(len, Ordering::Relaxed);
            tracing::warn!(
                "CacheResponsesPlugin: the disk is {} MiB behind; this recording is abandoned",
                MAX_IN_FLIGHT >> 20
            );
            self.dead = true;
            self.store.send(Command::Abort { id: self.id });
            return;
        }
        let sent = self.store.send(Command::Data {
            id: self.id,
            bytes: bytes.to_vec(),
        });
        if !sent {
            self.store.in_flight.fetch_sub(len, Ordering::Relaxed);
            self.dead = true;
        }
    }

    fn end(&mut self, complete: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        if !self.dead {
            self.store.send(Command::End {
                id: self.id,
                complete,
            });
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.end(false);
    }
}

// === the writer thread ===

struct Writer {
    limits: Limits,
    in_flight: Arc<AtomicUsize>,
    open: HashMap<u64, Entry>,
}

/// A recording on the writer's side.
struct Entry {
    path: PathBuf,
    /// Created at the first byte; `None` after a write error too.
    file: Option<BufWriter<File>>,
    /// A write failed: the file was removed and the rest is ignored.
    failed: bool,
    content: Option<Extract>,
}

impl Writer {
    fn new(limits: Limits, in_flight: Arc<AtomicUsize>) -> Self {
        Writer {
            limits,
            in_flight,
            open: HashMap::new(),
        }
    }

    fn run(mut self, rx: Receiver<Command>) {
        while let Ok(command) = rx.recv() {
            match command {
                Command::Open { id, path, content } => {
                    let content = content.map(|spec| Extract::new(spec, &self.limits));
                    self.open.insert(
                        id,
                        Entry {
                            path,
                            file: None,
                            failed: false,
                            content,
                        },
                    );
                }
                Command::Data { id, bytes } => {
                    if let Some(entry) = self.open.get_mut(&id) {
                        entry.write(&bytes);
                    }
                    self.in_flight.fetch_sub(bytes.len(), Ordering::Relaxed);
                }
                Command::End { id, complete } => {
                    if let Some(entry) = self.open.remove(&id) {
                        entry.finish(complete);
                    }
                }
                Command::Abort { id } => {
                    if let Some(entry) = self.open.remove(&id) {
                        entry.discard();
                    }
                }
            }
        }
        // Every sender is gone: end what is still open as incomplete.
        for (_, entry) in self.open.drain() {
            entry.finish(false);
        }
    }
}

impl Entry {
    fn write(&mut self, bytes: &[u8]) {
        if let Some(content) = &mut self.content {
            content.feed(bytes);
        }
        if self.failed {
            return;
        }
        let result = match &mut self.file {
            Some(file) => file.write_all(bytes),
            None => File::create(&self.path).and_then(|file| {
                let mut file = BufWriter::with_capacity(64 * 1024, file);
                file.write_all(bytes)?;
                self.file = Some(file);
                Ok(())
            }),
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "CacheResponsesPlugin: cannot write");
            self.failed = true;
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn finish(mut self, complete: bool) {
        if let Some(mut file) = self.file.take() {
            match file.flush() {
                // proxy.py's line, at INFO, for the response files (its README reads
                // the path from it); the request files at DEBUG.
                Ok(())
                    if complete && self.path.parent().is_some_and(|d| d.ends_with("responses")) =>
                {
                    tracing::info!("Cached response at {}", self.path.display());
                }
                Ok(()) => tracing::debug!(path = %self.path.display(), complete, "cached"),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "CacheResponsesPlugin: cannot write");
                    let _ = std::fs::remove_file(&self.path);
                }
            }
        }
        if let Some(content) = self.content.take() {
            content.finish(complete);
        }
    }

    fn discard(mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Some(content) = self.content.take() {
            content.finish(false);
        }
    }
}

// === --cache-by-content-type ===

/// Streams a recorded response's body, framing removed and content coding undone,
/// into `content/<name>.<ext>`.
struct Extract {
    spec: ContentSpec,
    limits: Limits,
    state: ExtractState,
}

enum ExtractState {
    /// Reading heads (interim ones are skipped).
    Head(BytesMut),
    Body(Body),
    /// Nothing (more) to extract: no body, an unsupported coding, an error.
    Off,
}

struct Body {
    path: PathBuf,
    out: Box<dyn Finish>,
    framing: Framing,
    /// Body bytes fed to `out` (before any decoding); shared with a decoder's
    /// [`Capped`] output.
    fed: Arc<AtomicU64>,
    written: u64,
    /// The body's own framing says it is complete.
    done: bool,
}

enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder, Vec<Range<usize>>),
    UntilClose,
}

/// A content file writer that may need finishing (a decoder's trailing bytes).
trait Finish: Write {
    fn finish_box(self: Box<Self>) -> io::Result<()>;
}

impl Finish for BufWriter<File> {
    fn finish_box(mut self: Box<Self>) -> io::Result<()> {
        self.flush()
    }
}

impl Finish for flate2::write::GzDecoder<Capped> {
    fn finish_box(self: Box<Self>) -> io::Result<()> {
        self.finish()?.file.flush()
    }
}

impl Finish for flate2::write::ZlibDecoder<Capped> {
    fn finish_box(self: Box<Self>) -> io::Result<()> {
        self.finish()?.file.flush()
    }
}

/// Decoded content may be at most this many times the bytes it came from, plus
/// [`EXPANSION_FLOOR`]: a small compressed response cannot fill the disk (a "gzip
/// bomb" of 200 KB decodes to 200 MB). Real text compresses well below this.
const MAX_EXPANSION: u64 = 100;
const EXPANSION_FLOOR: u64 = 1 << 20;

/// A decoder's output file, refusing to grow past [`MAX_EXPANSION`] times what was fed.
struct Capped {
    file: BufWriter<File>,
    fed: Arc<AtomicU64>,
    written: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fed = self.fed.load(Ordering::Relaxed);
        let cap = fed
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(EXPANSION_FLOOR);
        if self.written.saturating_add(buf.len() as u64) > cap {
            return Err(io::Error::other(format!(
                "decoded content over {MAX_EXPANSION} times its encoded size"
            )));
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Extract {
    fn new(spec: ContentSpec, limits: &Limits) -> Self {
        Extract {
            spec,
            limits: *limits,
            state: ExtractState::Head(BytesMut::new()),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let rest = match &mut self.state {
            ExtractState::Off => return,
            ExtractState::Body(body) => {
                if let Err(e) = body.feed(bytes) {
                    self.fail(&e);
                }
                return;
            }
            ExtractState::Head(buf) => {
                buf.extend_from_slice(bytes);
                match self.parse_head() {
                    Some(rest) => rest,
                    None => return,
                }
            }
        };
        if let ExtractState::Body(body) = &mut self.state {
            if let Err(e) = body.feed(&rest) {
                self.fail(&e);
            }
        }
    }

    /// Parses what the head buffer holds; on a final head, opens the body and returns
    /// the bytes after the head.
    fn parse_head(&mut self) -> Option<BytesMut> {
        loop {
            let ExtractState::Head(buf) = &mut self.state else {
                return None;
            };
            let head = match parse_response(buf, &self.limits) {
                Ok(Parsed::Partial) => return None,
                Ok(Parsed::Complete(head)) => head,
                Err(_) => {
                    self.state = ExtractState::Off;
                    return None;
                }
            };
            if head.status() == 101 {
                tracing::warn!(
                    "CacheResponsesPlugin: no content to extract after 101 Switching Protocols"
                );
                self.state = ExtractState::Off;
                return None;
            }
            if head.is_informational() {
                continue;
            }
            let rest = std::mem::take(buf);
            let framing = match response_body_kind(&head, self.spec.request_was_head) {
                Ok(BodyKind::Empty) | Ok(BodyKind::Length(0)) | Err(_) => {
                    self.state = ExtractState::Off;
                    return None;
                }
                Ok(BodyKind::Length(n)) => Framing::Length(n),
                Ok(BodyKind::Chunked) => {
                    Framing::Chunked(ChunkedDecoder::new(&self.limits), Vec::new())
                }
                Ok(BodyKind::UntilClose) => Framing::UntilClose,
            };
            let encoding = head
                .header("content-encoding")
                .map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase());
            let content_type = head.header("content-type").unwrap_or(b"text/plain");
            let path =
                self.spec
                    .dir
                    .join(format!("{}.{}", self.spec.name, extension(content_type)));
            let fed = Arc::new(AtomicU64::new(0));
            match open_content(&path, encoding.as_deref(), &fed) {
                Ok(Some(out)) => {
                    self.state = ExtractState::Body(Body {
                        path,
                        out,
                        framing,
                        fed,
                        written: 0,
                        done: false,
                    });
                    return Some(rest);
                }
                Ok(None) => {
                    tracing::warn!(
                        encoding = encoding.as_deref().unwrap_or_default(),
                        "CacheResponsesPlugin: unsupported content encoding; no content file"
                    );
                    self.state = ExtractState::Off;
                    return None;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "CacheResponsesPlugin: cannot write");
                    self.state = ExtractState::Off;
                    return None;
                }
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        if let ExtractState::Body(body) = std::mem::replace(&mut self.state, ExtractState::Off) {
            tracing::warn!(path = %body.path.display(), error = %e, "CacheResponsesPlugin: content not extracted");
            drop(body.out);
            let _ = std::fs::remove_file(&body.path);
        }
    }

    fn finish(self, complete: bool) {
        let ExtractState::Body(body) = self.state else {
            return;
        };
        let whole = match body.framing {
            Framing::UntilClose => complete,
            _ => body.done,
        };
        let path = body.path;
        if !whole || body.written == 0 {
            drop(body.out);
            let _ = std::fs::remove_file(&path);
            return;
        }
        match body.out.finish_box() {
            Ok(()) => tracing::info!("Cached content file at {}", path.display()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "CacheResponsesPlugin: content not extracted");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Body {
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(remaining) => {
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let data = bytes.get(..take).unwrap_or_default();
                self.fed.fetch_add(data.len() as u64, Ordering::Relaxed);
                self.out.write_all(data)?;
                self.written += take as u64;
                *remaining -= take as u64;
                self.done = *remaining == 0;
            }
            Framing::Chunked(decoder, ranges) => {
                ranges.clear();
                let progress = decoder
                    .advance(bytes, Some(ranges))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                for range in ranges.iter() {
                    let data = bytes.get(range.clone()).unwrap_or_default();
                    self.fed.fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.out.write_all(data)?;
                    self.written += data.len() as u64;
                }
                self.done = progress.done;
            }
            Framing::UntilClose => {
                self.fed.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.out.write_all(bytes)?;
                self.written += bytes.len() as u64;
            }
        }
        Ok(())
    }
}

/// The content file for `encoding`, or `None` for a coding we cannot undo.
fn open_content(
    path: &Path,
    encoding: Option<&str>,
    fed: &Arc<AtomicU64>,
) -> io::Result<Option<Box<dyn Finish>>> {
    let open = || File::create(path).map(|f| BufWriter::with_capacity(64 * 1024, f));
    let capped = || {
        open().map(|file| Capped {
            file,
            fed: Arc::clone(fed),
            written: 0,
        })
    };
    Ok(match encoding {
        None | Some("" | "identity") => Some(Box::new(open()?)),
        Some("gzip" | "x-gzip") => Some(Box::new(flate2::write::GzDecoder::new(capped()?))),
        Some("deflate") => Some(Box::new(flate2::write::ZlibDecoder::new(capped()?))),
        Some(_) => None,
    })
}

/// The file extension for a `Content-Type` value, as proxy.py derives it: the subtype,
/// without parameters or a `+suffix` (`image/svg+xml` → `svg`), kept to file-name-safe
/// characters.
fn extension(content_type: &[u8]) -> String {
    let text = String::from_utf8_lossy(content_type);
    let subtype = text.split('/').nth(1).unwrap_or(&text);
    let subtype = subtype.split(';').next().unwrap_or_default();
    let subtype = subtype.split('+').next().unwrap_or_default().trim();
    let ext: String = subtype
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if ext.is_empty() {
        "bin".to_owned()
    } else {
        ext.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn extensions_follow_the_content_type() {
        assert_eq!(extension(b"text/html; charset=utf-8"), "html");
        assert_eq!(extension(b"application/json"), "json");
        assert_eq!(extension(b"image/svg+xml"), "svg");
        assert_eq!(extension(b"video/MP4"), "mp4");
        assert_eq!(extension(b"text/plain"), "plain");
        assert_eq!(extension(b"weird"), "weird");
        assert_eq!(extension(b"a/../../x"), "bin");
        assert_eq!(extension(b"a/"), "bin");
    }
}
