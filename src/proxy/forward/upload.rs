//! The upload half: relaying the request body from the client to the origin.

use std::cell::Cell;
use std::time::{Duration, Instant};

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
    /// What the upstream had not acknowledged when the upload ended, then at each check.
    pub(super) unacknowledged: Cell<Option<usize>>,
}

impl UploadProgress {
    /// Records that the body's upload ended (well or not) now, and what of it the origin
    /// has not acknowledged yet.
    pub(super) fn end(&self, upstream: &Stream) {
        self.ended.set(Some(Instant::now()));
        self.unacknowledged
            .set(crate::conn::io::unacknowledged(upstream));
    }

    /// How much longer to wait for the response head after a wait of `idle` ran out:
    /// `idle` while the upload runs, the rest of `idle` after it ended, then `idle` again
    /// only while its last bytes still drain from our send buffer to the origin (less is
    /// unacknowledged than at the previous check). `None`: wait no more. Bodiless
    /// requests never wait longer. So an origin that stops reading a body costs the
    /// upload's own stall bound plus one `idle`, not more.
    pub(super) fn wait_more(&self, upstream: &Stream, idle: Duration) -> Option<Duration> {
        let Some(ended) = self.ended.get() else {
            // Not ended: running, unless there was no body to send.
            return (!self.done.get()).then_some(idle);
        };
        let since = ended.elapsed();
        if since < idle {
            return Some(idle - since);
        }
        let now = crate::conn::io::unacknowledged(upstream);
        let before = self.unacknowledged.replace(now);
        matches!((before, now), (Some(b), Some(n)) if n < b).then_some(idle)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(done: bool) -> UploadProgress {
        UploadProgress {
            done: Cell::new(done),
            ended: Cell::new(None),
            unacknowledged: Cell::new(None),
        }
    }

    /// The wait for a response after an upload: the upload's run, the rest of one
    /// `idle` once it ended, then more only while its bytes drain.
    #[tokio::test]
    async fn the_wait_after_an_upload_is_bounded_by_what_drains() {
        let (stream, _peer) = crate::conn::tcp_pair().await;
        let upstream = Stream::Tcp(stream);
        let idle = Duration::from_secs(10);

        assert_eq!(
            progress(false).wait_more(&upstream, idle),
            Some(idle),
            "running"
        );
        assert_eq!(progress(true).wait_more(&upstream, idle), None, "no body");

        let ended = progress(false);
        ended.end(&upstream);
        let rest = ended.wait_more(&upstream, idle).unwrap();
        assert!(
            rest <= idle && rest > idle / 2,
            "the rest of one idle: {rest:?}"
        );

        // Ended one idle ago with nothing left in flight: an origin that stopped
        // reading gets no further wait (the first sample is taken at the end).
        let stalled = progress(false);
        stalled.end(&upstream);
        stalled.ended.set(Instant::now().checked_sub(idle));
        assert_eq!(stalled.wait_more(&upstream, idle), None);

        // Ended one idle ago with bytes in flight then, fewer now: still draining.
        let draining = progress(false);
        draining.ended.set(Instant::now().checked_sub(idle));
        draining.unacknowledged.set(Some(1 << 20));
        assert_eq!(draining.wait_more(&upstream, idle), Some(idle));
        // Nothing moved since: the wait ends.
        assert_eq!(draining.wait_more(&upstream, idle), None);
    }
}
