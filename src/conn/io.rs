//! Socket I/O on `&Stream` (TCP or TLS) with an inactivity bound on every wait.
//!
//! Everything here takes the stream by shared reference (its `readable`/`try_read` and
//! `writable`/`try_write` need only `&self`), so one connection can be read by the
//! upload half and written by the download half of an exchange at the same time
//! without splitting it. A write returns once every byte has left the process: for TLS
//! that includes the records the session still held.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::time::timeout;

use super::stream::Stream;

use crate::error::{ErrorKind, ProxyError};

/// Why a socket operation did not complete.
#[derive(Debug)]
pub enum IoFail {
    /// No progress for the inactivity timeout.
    Timeout,
    /// The peer closed (EOF on read where more was needed).
    Closed,
    /// Any other I/O error (reset, broken pipe…).
    Io(io::Error),
}

impl From<io::Error> for IoFail {
    fn from(err: io::Error) -> Self {
        IoFail::Io(err)
    }
}

/// Reads whatever is available into `buf`, reserving up to `chunk` bytes of room
/// (for bodies and tunnels: bytes that arrive while the last piece is being written
/// are read at once, without a trip through epoll).
/// Returns the number of bytes read; `Ok(0)` means EOF.
///
/// The read is tried first and the inactivity timer is armed only when there is
/// something to wait for: under load most operations complete at once, and a
/// `timeout` costs a clock read even when it never fires.
pub async fn read_some(
    stream: &Stream,
    buf: &mut BytesMut,
    chunk: usize,
    idle: Duration,
) -> Result<usize, IoFail> {
    read_with(stream, buf, chunk, idle, false).await
}

/// Like [`read_some`], for a message head: after a short read the next one waits for
/// epoll at once instead of first trying a read that can only fail (see
/// [`try_read_draining`]). Not for bodies: there, bytes that arrive while the last piece
/// is being written are better read at once.
pub async fn read_head_bytes(
    stream: &Stream,
    buf: &mut BytesMut,
    chunk: usize,
    idle: Duration,
) -> Result<usize, IoFail> {
    read_with(stream, buf, chunk, idle, true).await
}

async fn read_with(
    stream: &Stream,
    buf: &mut BytesMut,
    chunk: usize,
    idle: Duration,
    drain: bool,
) -> Result<usize, IoFail> {
    loop {
        if buf.capacity() - buf.len() < chunk / 4 {
            buf.reserve(chunk);
        }
        let read = if drain {
            try_read_draining(stream, buf)
        } else {
            stream.try_read_buf(buf)
        };
        match read {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IoFail::Io(e)),
        }
        if !stream.ready_now() {
            timeout(idle, stream.tcp().readable())
                .await
                .map_err(|_| IoFail::Timeout)??;
        }
    }
}

/// One non-blocking read into the spare room of `buf`.
///
/// A read that leaves room unfilled shows that the socket's receive queue was drained,
/// so the readiness tokio cached for it is cleared at once, as tokio's own `poll_read`
/// does: the next read waits for epoll instead of first trying a read that can only
/// return `EAGAIN` (one system call per exchange and direction). Bytes that arrive
/// after the read raise a new readiness event, which the clearing does not touch.
fn try_read_draining(stream: &Stream, buf: &mut BytesMut) -> io::Result<usize> {
    let Stream::Tcp(stream) = stream else {
        return stream.try_read_buf(buf);
    };
    let room = buf.capacity() - buf.len();
    let mut short = 0;
    let read = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        if n > 0 && n < room {
            short = n;
            // Reported as "would block" so that tokio clears the readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        other => other,
    }
}

/// Like [`read_some`], for a wait that may be long (a keep-alive connection between
/// requests): a buffer that is still empty when the socket turns out not to be readable
/// after all is released before waiting again, so idle connections hold no buffer.
/// (tokio reports a freshly accepted socket readable once, before any byte arrived.)
pub async fn read_some_idle(
    stream: &Stream,
    buf: &mut BytesMut,
    chunk: usize,
    idle: Duration,
) -> Result<usize, IoFail> {
    loop {
        if !stream.ready_now() {
            timeout(idle, stream.tcp().readable())
                .await
                .map_err(|_| IoFail::Timeout)??;
        }
        if buf.capacity() - buf.len() < chunk / 4 {
            buf.reserve(chunk);
        }
        match try_read_draining(stream, buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
}

/// Writes all of `data` (tried first; the timer is armed only to wait).
///
/// `idle` bounds the time without progress, not the whole write: a slow but steady
/// reader is never cut (see [`wait_for_room`]).
pub async fn write_all(stream: &Stream, mut data: &[u8], idle: Duration) -> Result<(), IoFail> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(IoFail::Closed),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let n = wait_for_room(stream, &[IoSlice::new(data)], idle).await?;
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
    flush(stream, idle).await
}

/// Writes all `parts` with vectored writes (a head made of untouched spans and edits).
/// `parts` is consumed: on return it is empty. `idle` bounds the time without progress.
pub async fn write_parts(
    stream: &Stream,
    parts: &mut Vec<Bytes>,
    idle: Duration,
) -> Result<(), IoFail> {
    const MAX_IOV: usize = 64;
    let mut first = 0;
    while first < parts.len() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        for (slot, part) in slices.iter_mut().zip(&parts[first..]) {
            *slot = IoSlice::new(part);
            count += 1;
        }
        let written = match stream.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(IoFail::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_for_room(stream, &slices[..count], idle).await?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IoFail::Io(e)),
        };
        let mut n = written;
        while n > 0 && first < parts.len() {
            let len = parts[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                parts[first].advance(n);
                n = 0;
            }
        }
        while first < parts.len() && parts[first].is_empty() {
            first += 1;
        }
    }
    parts.clear();
    flush(stream, idle).await
}

/// Waits until bytes a TLS session still holds have all been sent (nothing to do for
/// TCP). `idle` bounds the time without progress.
pub async fn flush(stream: &Stream, idle: Duration) -> Result<(), IoFail> {
    loop {
        match stream.flush_out(false) {
            Ok((_, true)) => return Ok(()),
            Ok((_, false)) => {
                wait_for_room(stream, &[], idle).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
}

/// Waits until `stream` takes more bytes, for as long as its peer keeps taking them.
/// Returns how many bytes of `data` were sent while waiting (0: writable again, the
/// caller retries). Fails with `Timeout` only after `idle` without any progress.
///
/// The kernel reports a TCP socket writable only once a large share of its send buffer
/// is free again, which for a slow reader (tens of KB/s against a send buffer of a few
/// MB) can take far longer than `--timeout` although bytes move all the time. So the wait
/// is cut in ticks, and each tick ends with a direct send attempt (which succeeds as soon
/// as any room is free): a byte taken is progress and restarts the inactivity bound.
async fn wait_for_room(
    stream: &Stream,
    data: &[IoSlice<'_>],
    idle: Duration,
) -> Result<usize, IoFail> {
    let tick = (idle / 8).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(IoFail::Timeout);
        }
        let wake = (now + tick).min(deadline);
        if let Ok(ready) = tokio::time::timeout_at(wake, stream.writable()).await {
            ready?;
            return Ok(0);
        }
        // Bypasses tokio's readiness cache, which says "not writable" until the kernel's
        // wake-up threshold: this is a real non-blocking send.
        if let Some(n) = stream.send_raw(data)? {
            return Ok(n);
        }
    }
}

/// Bytes written to `stream` that its peer has not acknowledged yet (Linux `SIOCOUTQ`),
/// or `None` where that cannot be asked. A count that goes down shows a transfer still
/// moving after the last write returned.
#[allow(unsafe_code)]
pub fn unacknowledged(stream: &Stream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for sockets) writes one `int` through the pointer, which
    // points at a live local `c_int`; the descriptor is borrowed from a live socket.
    let rc = unsafe { libc::ioctl(stream.tcp().as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc == 0 {
        usize::try_from(queued).ok()
    } else {
        None
    }
}

/// Shuts down the write side (sends FIN) without closing the read side.
pub fn shutdown_write(stream: &Stream) {
    stream.shutdown_write();
}

/// True when an idle connection is still open and has nothing unread
/// (a non-blocking one-byte peek would block). Anything else (EOF, data, error) means
/// the connection must not be reused.
pub fn is_idle_and_open(stream: &Stream) -> bool {
    stream.is_idle_and_open()
}

/// Maps a failure on the client socket to an error (no reply is possible after it).
pub fn client_io_error(err: IoFail, context: &'static str) -> ProxyError {
    match err {
        IoFail::Timeout => ProxyError::new(ErrorKind::ClientTimeout, context),
        IoFail::Closed => ProxyError::new(ErrorKind::ClientClosed, context),
        IoFail::Io(e) => ProxyError::new(ErrorKind::ClientClosed, context).with_source(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Stream, Stream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Stream::Tcp(a.unwrap()), Stream::Tcp(b.unwrap().0))
    }

    #[tokio::test]
    async fn write_parts_sends_every_part_in_order() {
        let (a, b) = pair().await;
        let Stream::Tcp(mut b) = b else {
            unreachable!()
        };
        let mut parts: Vec<Bytes> = (0..200).map(|i| Bytes::from(format!("part{i};"))).collect();
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
        write_parts(&a, &mut parts, Duration::from_secs(5))
            .await
            .unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert!(parts.is_empty());
    }

    #[tokio::test]
    async fn idle_probe_sees_close_and_unread_data() {
        let (a, b) = pair().await;
        assert!(is_idle_and_open(&a));
        write_all(&b, b"x", Duration::from_secs(5)).await.unwrap();
        a.tcp().readable().await.unwrap();
        assert!(!is_idle_and_open(&a), "unread data means not reusable");
        let (c, d) = pair().await;
        drop(d);
        c.tcp().readable().await.unwrap();
        assert!(!is_idle_and_open(&c), "EOF means not reusable");
    }

    #[tokio::test]
    async fn idle_read_returns_data_after_a_pending_poll() {
        let (a, b) = pair().await;
        let mut buf = BytesMut::new();
        let n = {
            let read = read_some_idle(&a, &mut buf, 8192, Duration::from_secs(5));
            tokio::pin!(read);
            // Poll once: a fresh socket may look readable; nothing is there yet.
            assert!(futures_poll_once(read.as_mut()).await.is_none());
            write_all(&b, b"GET", Duration::from_secs(5)).await.unwrap();
            read.await.unwrap()
        };
        assert_eq!(n, 3);
        assert_eq!(&buf[..], b"GET");
    }

    /// Polls a future once; `None` if it is pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut fut: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }

    #[tokio::test]
    async fn read_some_times_out_when_peer_is_silent() {
        let (a, _b) = pair().await;
        let mut buf = BytesMut::new();
        let res = read_some(&a, &mut buf, 1024, Duration::from_millis(20)).await;
        assert!(matches!(res, Err(IoFail::Timeout)));
    }
}
