//! Socket I/O on `&Stream` (TCP or TLS) with an inactivity bound on every wait.
//!
//! Everything here takes the stream by shared reference (its `readable`/`try_read` and
//! `writable`/`try_write` need only `&self`), so one connection can be read by the
//! upload half and written by the download half of an exchange at the same time
//! without splitting it. A write returns once every byte has left the process: for TLS
//! that includes the records the session still held.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::time::Sleep;

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
    /// The client watched during the wait ([`read_some_watching`]) closed or reset.
    ClientGone,
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
    read_with(stream, buf, chunk, idle, false, None).await
}

/// Like [`read_some`], for a message head: after a short read the next one waits for
/// epoll at once instead of first trying a read that can only fail (see
/// `try_read_draining`). Not for bodies: there, bytes that arrive while the last piece
/// is being written are better read at once.
pub async fn read_head_bytes(
    stream: &Stream,
    buf: &mut BytesMut,
    chunk: usize,
    idle: Duration,
) -> Result<usize, IoFail> {
    read_with(stream, buf, chunk, idle, true, None).await
}

async fn read_with(
    stream: &Stream,
    buf: &mut BytesMut,
    chunk: usize,
    idle: Duration,
    drain: bool,
    client: Option<&Stream>,
) -> Result<usize, IoFail> {
    let mut watch = client.map(|client| (client, true));
    loop {
        make_room(buf, chunk);
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
            readable_within(stream, idle, watch.as_mut()).await?;
        }
    }
}

/// Like [`read_some`] on `stream` (an origin), watching `client` meanwhile: a client
/// that closes or resets while the origin is silent (it gave up on a stalled response)
/// ends the read with [`IoFail::ClientGone`] at once, instead of after `idle`. Bytes
/// from the client (a pipelined request, the rest of an upload) end the watch, not the
/// read. Like nginx, a half-close counts as gone: HTTP/1.1 gives it no other meaning.
pub async fn read_some_watching(
    stream: &Stream,
    buf: &mut BytesMut,
    chunk: usize,
    idle: Duration,
    client: &Stream,
) -> Result<usize, IoFail> {
    read_with(stream, buf, chunk, idle, false, Some(client)).await
}

/// Whether the watched `client` closed or reset ([`read_some_watching`]); bytes from it
/// end the watch (`watching` becomes false).
fn poll_client_gone(client: &Stream, watching: &mut bool, cx: &mut Context<'_>) -> Poll<()> {
    let watched = client.tcp();
    while *watching {
        match watched.poll_read_ready(cx) {
            Poll::Pending => break,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                // Through `try_io`: a `WouldBlock` clears the readiness, so the next
                // poll registers for the next event instead of spinning.
                match watched.try_io(Interest::READABLE, || {
                    socket2::SockRef::from(watched).peek(&mut probe)
                }) {
                    Ok(0) => return Poll::Ready(()),
                    Ok(_) => *watching = false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(()),
                }
            }
        }
    }
    Poll::Pending
}

/// Waits until `stream` is readable, for at most `idle` (`IoFail::Timeout`), and while
/// watching a client, until it is gone (`IoFail::ClientGone`).
///
/// On a worker the bound is one of its recycled timers (see [`IdleTimers`]), pushed
/// forward for this wait: arming and dropping a new `tokio` timer for each wait costs
/// two insertions into the timer wheel, under its lock, per read.
async fn readable_within(
    stream: &Stream,
    idle: Duration,
    mut watch: Option<&mut (&Stream, bool)>,
) -> Result<(), IoFail> {
    let mut timer = IdleTimer::start(idle);
    // The socket's own read waker slot, as in `stream::socket_readable`.
    let tcp = stream.tcp();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = tcp.poll_read_ready(cx) {
            return Poll::Ready(done.map_err(IoFail::Io));
        }
        if let Some((client, watching)) = watch.as_deref_mut() {
            if poll_client_gone(client, watching, cx).is_ready() {
                return Poll::Ready(Err(IoFail::ClientGone));
            }
        }
        timer.poll_elapsed(cx).map(|()| Err(IoFail::Timeout))
    })
    .await
}

/// How many idle timers a worker keeps for reuse.
const MAX_IDLE_TIMERS: usize = 256;

thread_local! {
    /// This worker's unused timers, while its runtime runs (`None` elsewhere: a timer
    /// belongs to the runtime it was made in). See [`IdleTimers`].
    static IDLE_TIMERS: RefCell<Option<Vec<Pin<Box<Sleep>>>>> = const { RefCell::new(None) };
}

/// Recycled timers for `readable_within`, for the life of one worker's runtime:
/// created inside it, dropped inside it (dropping empties the list, whose timers
/// belong to it).
///
/// A timer is reused by pushing its deadline forward, which `tokio` does without
/// touching the wheel (the entry moves on when its old deadline comes up), and it is
/// not deregistered when a wait ends. A recycled timer keeps the waker of the last task
/// that waited on it until it is reused or its deadline passes: at most
/// `MAX_IDLE_TIMERS` of them, for at most one timeout.
pub struct IdleTimers(());

impl IdleTimers {
    /// Starts recycling timers on this thread, whose runtime is running.
    pub fn begin() -> IdleTimers {
        IDLE_TIMERS.with_borrow_mut(|timers| *timers = Some(Vec::new()));
        IdleTimers(())
    }
}

impl Drop for IdleTimers {
    fn drop(&mut self) {
        let timers = IDLE_TIMERS.with_borrow_mut(Option::take);
        drop(timers);
    }
}

/// One wait's timer, back to the worker's list when the wait ends.
struct IdleTimer(Option<Pin<Box<Sleep>>>);

impl IdleTimer {
    /// A timer for `idle` from now: a recycled one on a worker, else a new one.
    fn start(idle: Duration) -> IdleTimer {
        let recycled = IDLE_TIMERS.with(|timers| {
            let mut timers = timers.try_borrow_mut().ok()?;
            timers.as_mut()?.pop()
        });
        let deadline = tokio::time::Instant::now() + idle;
        let timer = match recycled {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        IdleTimer(Some(timer))
    }

    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for IdleTimer {
    fn drop(&mut self) {
        let Some(timer) = self.0.take() else { return };
        let _ = IDLE_TIMERS.try_with(|timers| {
            if let Ok(mut timers) = timers.try_borrow_mut() {
                if let Some(timers) = timers.as_mut().filter(|t| t.len() < MAX_IDLE_TIMERS) {
                    timers.push(timer);
                }
            }
        });
    }
}

/// Size of the read buffers a worker recycles (see [`recycle`]): heads are read into
/// one, and small bodies follow in the same buffer.
const RECYCLED: usize = 16 * 1024;

/// How many empty read buffers a worker keeps for reuse (at most 1 MiB per worker).
const MAX_RECYCLED: usize = 64;

thread_local! {
    /// This worker's empty read buffers, for the next connection that has bytes to read.
    /// Thread-local: one list per worker thread, never shared, never locked.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Makes room in `buf` for a read of up to `chunk` bytes. An empty buffer with no
/// allocation takes one of the worker's recycled buffers when `chunk` fits in one.
fn make_room(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() >= chunk / 4 {
        return;
    }
    if buf.capacity() == 0 && chunk <= RECYCLED {
        *buf = SPARE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| BytesMut::with_capacity(RECYCLED));
        return;
    }
    buf.reserve(chunk);
}

/// Gives an empty read buffer back to the worker (leaving `buf` with no allocation), so
/// that a connection waiting for its next bytes holds no buffer and the next read does
/// not allocate one. Kept only if no `Bytes` still points into it (a head split off
/// it and not yet dropped) and it is of the recycled size; otherwise freed.
pub fn recycle(buf: &mut BytesMut) {
    let mut buf = std::mem::take(buf);
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    // Unique (nothing else points into it): its whole allocation is room again.
    if !buf.try_reclaim(RECYCLED) || buf.capacity() > 4 * RECYCLED {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < MAX_RECYCLED {
            spare.push(buf);
        }
    });
}

/// A read buffer that goes back to the worker's spare list when dropped (see
/// [`recycle`]).
#[derive(Default)]
pub struct RecycledBuf(BytesMut);

impl std::ops::Deref for RecycledBuf {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.0
    }
}

impl std::ops::DerefMut for RecycledBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.0
    }
}

impl Drop for RecycledBuf {
    fn drop(&mut self) {
        recycle(&mut self.0);
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
            readable_within(stream, idle, None).await?;
        }
        make_room(buf, chunk);
        match try_read_draining(stream, buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if buf.is_empty() {
                    recycle(buf);
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
/// reader is never cut (see `wait_for_room`).
pub async fn write_all(stream: &Stream, mut data: &[u8], idle: Duration) -> Result<(), IoFail> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(IoFail::Closed),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let n = wait_for_room(stream, Pending::Slice(data), idle).await?;
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
    flush(stream, idle).await
}

/// At most this many pieces go into one vectored write.
const MAX_IOV: usize = 64;

/// Fills `slices` with the first pieces of `parts`; returns how many.
fn io_slices<'a>(parts: &'a [Bytes], slices: &mut [IoSlice<'a>]) -> usize {
    let mut count = 0;
    for (slot, part) in slices.iter_mut().zip(parts) {
        *slot = IoSlice::new(part);
        count += 1;
    }
    count
}

/// One non-blocking vectored write of the first pieces of `parts`.
///
/// A plain function, so that the array of `IoSlice`s lives on the stack only for the
/// call: an `async fn` holding it across its waits would carry a kilobyte of slices in
/// every future that writes a head.
fn try_write_parts(stream: &Stream, parts: &[Bytes]) -> io::Result<usize> {
    if let (Stream::Tcp(tcp), [_, _, ..]) = (stream, parts) {
        if let Some(written) = try_write_gathered(tcp, parts) {
            return written;
        }
    }
    // A head is a handful of pieces: most writes fill (and so initialize) a short array.
    if parts.len() <= FEW_IOV {
        try_write_few::<FEW_IOV>(stream, parts)
    } else {
        try_write_few::<MAX_IOV>(stream, parts)
    }
}

/// Pieces that fit the short array of [`try_write_parts`].
const FEW_IOV: usize = 16;

/// Up to this many bytes in all, the pieces of a write over TCP are copied into one
/// buffer and sent with one plain write.
///
/// The kernel's cost grows with every piece of a vectored write. Measured on loopback, a
/// 95-byte request head in 7 pieces costs about 100 ns more to send than the same bytes
/// in one, and the copy costs a few instructions. Above this size, copying costs more
/// than the pieces do.
const GATHER_MAX: usize = 1024;

thread_local! {
    /// This worker's buffer for [`try_write_gathered`] (empty between calls).
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Copies `parts` into the worker's gather buffer and makes one non-blocking write of
/// it, when they are at most [`GATHER_MAX`] bytes in all; `None` otherwise. Like a
/// vectored write, it returns how many bytes from the front were sent.
fn try_write_gathered(tcp: &tokio::net::TcpStream, parts: &[Bytes]) -> Option<io::Result<usize>> {
    let total = parts.iter().try_fold(0, |total: usize, part| {
        Some(total + part.len()).filter(|&total| total <= GATHER_MAX)
    })?;
    GATHER.with(|gather| {
        let mut gather = gather.try_borrow_mut().ok()?;
        gather.reserve(total);
        for part in parts {
            gather.extend_from_slice(part);
        }
        let written = tcp.try_write(&gather);
        gather.clear();
        Some(written)
    })
}

fn try_write_few<const N: usize>(stream: &Stream, parts: &[Bytes]) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    let count = io_slices(parts, &mut slices);
    stream.try_write_vectored(slices.get(..count).unwrap_or_default())
}

/// Writes all `parts` with vectored writes (a head made of untouched spans and edits).
/// `parts` is consumed: on return it is empty. `idle` bounds the time without progress.
pub async fn write_parts(
    stream: &Stream,
    parts: &mut Vec<Bytes>,
    idle: Duration,
) -> Result<(), IoFail> {
    let mut first = 0;
    while first < parts.len() {
        let pending = parts.get(first..).unwrap_or_default();
        let written = match try_write_parts(stream, pending) {
            Ok(0) => return Err(IoFail::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_for_room(stream, Pending::Parts(pending), idle).await?
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
                wait_for_room(stream, Pending::Nothing, idle).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
}

/// What a write waiting for room still has to send.
#[derive(Clone, Copy)]
enum Pending<'a> {
    Slice(&'a [u8]),
    Parts(&'a [Bytes]),
    /// Only what a TLS session holds.
    Nothing,
}

impl Pending<'_> {
    /// One direct, non-blocking send of the first bytes (see [`Stream::send_raw`]).
    fn send_raw(self, stream: &Stream) -> io::Result<Option<usize>> {
        match self {
            Pending::Slice(data) => stream.send_raw(&[IoSlice::new(data)]),
            Pending::Parts(parts) => {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let count = io_slices(parts, &mut slices);
                stream.send_raw(slices.get(..count).unwrap_or_default())
            }
            Pending::Nothing => stream.send_raw(&[]),
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
    data: Pending<'_>,
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
        if let Some(n) = data.send_raw(stream)? {
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
        IoFail::ClientGone => ProxyError::new(ErrorKind::ClientClosed, context),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (Stream, Stream) {
        let (a, b) = crate::conn::tcp_pair().await;
        (Stream::Tcp(a), Stream::Tcp(b))
    }

    /// A worker's recycled timer bounds each later wait by that wait's own timeout:
    /// pushed forward, pulled back to an earlier deadline, and re-armed once it fired.
    #[tokio::test(start_paused = true)]
    async fn a_recycled_timer_bounds_each_wait_by_its_own_timeout() {
        let recycled = || IDLE_TIMERS.with_borrow(|t| t.as_ref().map(Vec::len));
        assert_eq!(recycled(), None);
        let timers = IdleTimers::begin();
        let (a, b) = pair().await;
        let mut buf = BytesMut::new();
        // A wait that data ends: its timer (due in a minute) goes back to the list.
        let (read, _) = tokio::join!(
            read_some(&a, &mut buf, 64, Duration::from_secs(60)),
            async {
                tokio::task::yield_now().await;
                write_all(&b, b"x", Duration::from_secs(5)).await.unwrap();
            }
        );
        assert_eq!(read.unwrap(), 1);
        assert_eq!(recycled(), Some(1));
        // The same timer, now due earlier, then after it fired.
        for secs in [2, 3, 90] {
            let start = tokio::time::Instant::now();
            let read = read_some(&a, &mut buf, 64, Duration::from_secs(secs)).await;
            assert!(matches!(read, Err(IoFail::Timeout)), "{read:?}");
            assert_eq!(start.elapsed().as_secs(), secs);
            assert_eq!(recycled(), Some(1));
        }
        drop(timers);
        assert_eq!(recycled(), None);
        // Without a worker's list, a wait has a timer of its own.
        let read = read_some(&a, &mut buf, 64, Duration::from_secs(4)).await;
        assert!(matches!(read, Err(IoFail::Timeout)), "{read:?}");
    }

    /// Every part arrives, in order: gathered into one write (small heads, with empty
    /// pieces among them), or sent as vectored writes (more than `GATHER_MAX` bytes,
    /// more pieces than one write takes).
    #[tokio::test]
    async fn write_parts_sends_every_part_in_order() {
        let piece = |i: usize| match i % 5 {
            0 => Bytes::new(),
            1 => Bytes::from_static(b"\r\n"),
            _ => Bytes::from(format!("piece-{i:05};")),
        };
        for count in [2, 7, 60, 200] {
            let (a, b) = pair().await;
            let Stream::Tcp(mut b) = b else {
                unreachable!()
            };
            let mut parts: Vec<Bytes> = (1..=count).map(piece).collect();
            let expected: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
            assert_eq!(expected.len() <= GATHER_MAX, count <= 60, "{count} pieces");
            write_parts(&a, &mut parts, Duration::from_secs(5))
                .await
                .unwrap();
            drop(a);
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, expected, "{count} pieces");
            assert!(parts.is_empty());
        }
        assert!(
            GATHER.with_borrow(Vec::is_empty),
            "the gather buffer is left empty"
        );
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
