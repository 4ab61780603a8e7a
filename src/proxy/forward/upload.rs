//! The upload half: relaying the request body from the client to the origin.

use std::cell::Cell;
use std::time::Instant;

use crate::conn::Stream;
use bytes::BytesMut;

use super::Recorders;
use crate::config::Config;
use crate::conn::io::{client_io_error, read_some, write_all};
use crate::error::{ErrorKind, ProxyError};
use crate::http::{BodyKind, ChunkedDecoder};

/// What the download half knows of the upload half.
pub(super) struct UploadProgress {
    /// Set once the whole body has been sent (true from the start for bodiless requests).
    pub(super) done: Cell<bool>,
    /// When the body's upload ended (well or not); never set for bodiless requests.
    pub(super) ended: Cell<Option<Instant>>,
    /// What the upstream had not acknowledged at the last check, once the upload ended.
    pub(super) unacknowledged: Cell<Option<usize>>,
}

impl UploadProgress {
    /// True while the upload runs, ended less than `idle` ago, or its last bytes are
    /// still draining from our send buffer to the origin (less is unacknowledged than
    /// at the previous check, one `idle` ago). Bodiless requests never wait longer.
    pub(super) fn still_moving(&self, upstream: &Stream, idle: std::time::Duration) -> bool {
        let Some(ended) = self.ended.get() else {
            // Not ended: running, unless there was no body to send.
            return !self.done.get();
        };
        if ended.elapsed() < idle {
            return true;
        }
        let now = crate::conn::io::unacknowledged(upstream);
        let before = self.unacknowledged.replace(now);
        matches!((before, now), (None, Some(n)) if n > 0)
            || matches!((before, now), (Some(b), Some(n)) if n < b)
    }
}

pub(super) enum UploadFail {
    /// Client-side failure: closed, timed out, or broken framing.
    Client(ProxyError),
    /// The origin stopped accepting the body.
    Upstream,
}

/// Relays the request body from the client to the origin, exactly as framed.
pub(super) async fn upload(
    src: &Stream,
    buf: &mut BytesMut,
    dst: &Stream,
    kind: BodyKind,
    config: &Config,
    done: &Cell<bool>,
    sent: &mut Recorders,
) -> std::result::Result<(), UploadFail> {
    let chunk = config.client_recvbuf_size;
    match kind {
        BodyKind::Empty | BodyKind::UntilClose => {}
        BodyKind::Length(mut remaining) => loop {
            if !buf.is_empty() {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let piece = buf.split_to(take);
                sent.record(&piece);
                write_all(dst, &piece, config.timeout)
                    .await
                    .map_err(|_| UploadFail::Upstream)?;
                remaining -= take as u64;
            }
            if remaining == 0 {
                break;
            }
            match read_some(src, buf, chunk, config.timeout).await {
                Ok(0) => return Err(UploadFail::Client(closed_in_body())),
                Ok(_) => {}
                Err(e) => {
                    return Err(UploadFail::Client(client_io_error(
                        e,
                        "reading a request body",
                    )))
                }
            }
        },
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new(&config.limits);
            loop {
                if !buf.is_empty() {
                    let progress = decoder.advance(buf, None).map_err(|e| {
                        UploadFail::Client(ProxyError::new(
                            e.request_kind(),
                            format!("request chunked body: {e}"),
                        ))
                    })?;
                    let piece = buf.split_to(progress.consumed);
                    sent.record(&piece);
                    write_all(dst, &piece, config.timeout)
                        .await
                        .map_err(|_| UploadFail::Upstream)?;
                    if progress.done {
                        break;
                    }
                }
                match read_some(src, buf, chunk, config.timeout).await {
                    Ok(0) => return Err(UploadFail::Client(closed_in_body())),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(UploadFail::Client(client_io_error(
                            e,
                            "reading a request body",
                        )))
                    }
                }
            }
        }
    }
    done.set(true);
    Ok(())
}

pub(super) fn closed_in_body() -> ProxyError {
    ProxyError::new(
        ErrorKind::ClientClosed,
        "client closed inside a request body",
    )
}
