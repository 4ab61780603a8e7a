//! One transport for every connection the proxy handles: plain TCP, or TLS over another
//! transport (a client of the `--cert-file` listener, an intercepted tunnel, an HTTPS
//! origin, and TLS inside TLS for interception behind a TLS listener).
//!
//! The exchange loop is written once, over [`Stream`], whose operations are the
//! non-blocking ones the loop already used on `&TcpStream`: `try_read`, `try_write`,
//! `readable`, `writable`, all through `&self`, so the upload half can read a client
//! while the download half writes to it. TLS is driven with rustls's buffered
//! `Connection` inside a `RefCell` that is borrowed only between awaits (workers are
//! single-threaded). Plain TCP pays one predictable branch per operation.
//!
//! Written bytes may stay in a TLS session's buffer when the socket is full: a write is
//! complete only after [`Stream::flush_out`] reports nothing pending (`io::write_all`
//! and friends do this).

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// A connection's byte stream: TCP, or TLS over another stream.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over `inner` (boxed: rare, and large).
    Tls(Box<TlsStream>),
}

/// A TLS session over an inner stream.
pub struct TlsStream {
    inner: Stream,
    session: RefCell<rustls::Connection>,
}

/// Largest plaintext read handed out at once (one TLS record).
const TLS_READ: usize = 16 * 1024;

impl Stream {
    /// TLS over `inner`, driven by `session` (the handshake is still to run: see
    /// [`Stream::handshake`]).
    pub fn tls(inner: Stream, session: impl Into<rustls::Connection>) -> Stream {
        Stream::Tls(Box::new(TlsStream {
            inner,
            session: RefCell::new(session.into()),
        }))
    }

    /// The TCP socket at the bottom.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.inner.tcp(),
        }
    }

    /// True when the outermost layer is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Runs `f` on the outermost TLS session, if this is TLS.
    pub fn with_session<R>(&self, f: impl FnOnce(&rustls::Connection) -> R) -> Option<R> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Tls(tls) => Some(f(&tls.session.borrow())),
        }
    }

    /// Reads what is available without waiting: `Ok(0)` is EOF, `WouldBlock` means wait
    /// with [`Stream::readable`].
    pub fn try_read(&self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.try_read(out),
            Stream::Tls(tls) => tls.read(out, false),
        }
    }

    /// Like [`Stream::try_read`], into the spare room of `buf` (growing it if it has none).
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.try_read_buf(buf),
            Stream::Tls(tls) => tls.read_buf(buf),
        }
    }

    /// Waits until a read may make progress (it may still find only part of a record
    /// and report `WouldBlock`: then wait again).
    pub async fn readable(&self) -> io::Result<()> {
        if self.ready_now() {
            return Ok(());
        }
        socket_readable(self.tcp()).await
    }

    /// Waits until the socket at the bottom takes bytes.
    ///
    /// Like `socket_readable`, through the socket's own waker slot for writes.
    pub async fn writable(&self) -> io::Result<()> {
        let tcp = self.tcp();
        std::future::poll_fn(|cx| tcp.poll_write_ready(cx)).await
    }

    /// True when some layer holds bytes (or an EOF) that a read can return without the
    /// socket: then there is no need to wait for the socket's readiness.
    pub fn ready_now(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(tls) => tls.has_buffered_input() || tls.inner.ready_now(),
        }
    }

    /// Writes what fits without waiting; `WouldBlock` means wait with
    /// [`Stream::writable`]. For TLS, accepted bytes may still sit in the session: see
    /// [`Stream::flush_out`].
    pub fn try_write_vectored(&self, data: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.try_write_vectored(data),
            Stream::Tls(tls) => tls.write(data, false),
        }
    }

    /// [`Stream::try_write_vectored`] for one slice.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.try_write(data),
            Stream::Tls(tls) => tls.write(&[IoSlice::new(data)], false),
        }
    }

    /// Moves bytes a TLS session holds towards the socket without waiting. Returns how
    /// many bytes moved and whether nothing is left pending (always `(0, true)` for TCP).
    /// `raw` bypasses tokio's readiness cache (a real send even when tokio believes the
    /// socket is full).
    pub fn flush_out(&self, raw: bool) -> io::Result<(usize, bool)> {
        match self {
            Stream::Tcp(_) => Ok((0, true)),
            Stream::Tls(tls) => {
                let mut session = tls.session.borrow_mut();
                flush_session(&mut session, &tls.inner, raw)
            }
        }
    }

    /// One real, non-blocking send of `data` that bypasses tokio's readiness cache
    /// (pending TLS bytes go first). `Ok(None)`: nothing moved at all; `Ok(Some(n))`:
    /// progress, `n` bytes of `data` taken (possibly 0 when only pending bytes moved).
    pub fn send_raw(&self, data: &[IoSlice<'_>]) -> io::Result<Option<usize>> {
        match self {
            Stream::Tcp(tcp) => match socket2::SockRef::from(tcp).send_vectored(data) {
                Ok(0) if data.iter().any(|d| !d.is_empty()) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(Some(n)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            Stream::Tls(tls) => {
                let mut session = tls.session.borrow_mut();
                let (moved, done) = flush_session(&mut session, &tls.inner, true)?;
                if !done || data.iter().all(|d| d.is_empty()) {
                    return Ok((moved > 0 || done).then_some(0));
                }
                let taken = session.writer().write_vectored(data)?;
                flush_session(&mut session, &tls.inner, true)?;
                Ok(Some(taken))
            }
        }
    }

    /// Sends TLS `close_notify` (best effort, without waiting) and shuts down the TCP
    /// write side.
    pub fn shutdown_write(&self) {
        if let Stream::Tls(tls) = self {
            let mut session = tls.session.borrow_mut();
            session.send_close_notify();
            let _ = flush_session(&mut session, &tls.inner, true);
        }
        // Errors only mean the peer is already gone; nothing to do then.
        let _ = socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write);
    }

    /// Makes the coming close a reset (`SO_LINGER` 0): a peer reading until close must
    /// not take what it got for the whole message.
    pub fn abort(&self) {
        let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(std::time::Duration::ZERO));
    }

    /// True when an idle connection is still open and has nothing unread. Anything else
    /// (EOF, data, an error) means it must not be reused. For TCP one non-blocking peek;
    /// for TLS, records waiting in the socket are read and processed first, since a TLS
    /// 1.3 server sends session tickets after its handshake (they are not data).
    pub fn is_idle_and_open(&self) -> bool {
        match self {
            Stream::Tcp(tcp) => {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                match socket2::SockRef::from(tcp).peek(&mut probe) {
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                    Ok(_) => false,
                }
            }
            Stream::Tls(tls) => {
                let mut scratch = [0u8; 1];
                // A raw read: tokio's readiness cache may not know of the waiting records.
                match tls.read(&mut scratch, true) {
                    // The raw read reached the socket and found it empty and open.
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock && !tls.inner.ready_now(),
                    Ok(_) => false,
                }
            }
        }
    }

    /// Runs the TLS handshake of the outermost session to its end, each wait bounded by
    /// `idle`. A rustls error comes back as an `InvalidData` error wrapping it (see
    /// [`rustls_error`]). Nothing to do for TCP.
    pub async fn handshake(&self, idle: std::time::Duration) -> io::Result<()> {
        let Stream::Tls(tls) = self else {
            return Ok(());
        };
        loop {
            let (handshaking, wants_write) = {
                let session = tls.session.borrow();
                (session.is_handshaking(), session.wants_write())
            };
            if wants_write || !tls.inner.flush_out(false)?.1 {
                super::io::flush(self, idle).await.map_err(|e| match e {
                    super::io::IoFail::Timeout => io::ErrorKind::TimedOut.into(),
                    super::io::IoFail::Closed => io::ErrorKind::WriteZero.into(),
                    super::io::IoFail::Io(e) => e,
                    super::io::IoFail::ClientGone => io::ErrorKind::ConnectionAborted.into(),
                })?;
            }
            if !handshaking {
                return Ok(());
            }
            let read = {
                let mut session = tls.session.borrow_mut();
                match session.read_tls(&mut ReadFrom {
                    inner: &tls.inner,
                    raw: false,
                }) {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    )),
                    Ok(_) => match session.process_new_packets() {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            // The alert explaining the failure goes out first.
                            let _ = flush_session(&mut session, &tls.inner, true);
                            Err(io::Error::new(io::ErrorKind::InvalidData, e))
                        }
                    },
                    Err(e) => Err(e),
                }
            };
            match read {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::timeout(idle, self.inner_readable(tls))
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn inner_readable(&self, tls: &TlsStream) -> io::Result<()> {
        if tls.inner.ready_now() {
            return Ok(());
        }
        socket_readable(self.tcp()).await
    }
}

/// Waits until `tcp` is readable, through the socket's own waker slot for reads
/// (`poll_read_ready`) rather than `TcpStream::readable`, whose future queues a waiter
/// under the socket's lock and takes it out again on every wait: about 300
/// instructions per wait, two waits per exchange. The slot keeps one waker, the last
/// one to wait, which is enough here: a socket is only ever waited on by the one task
/// that serves its connection. A pooled origin connection keeps the waker of the last
/// task that read it until the next one does or the connection closes, and with it
/// that (finished) task's allocation: at most one per pooled connection.
pub(crate) async fn socket_readable(tcp: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await
}

/// The rustls error inside an error from [`Stream::handshake`] or a read, if any.
pub fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

impl TlsStream {
    /// True when the session holds plaintext, an EOF or an error to report.
    fn has_buffered_input(&self) -> bool {
        match self.session.borrow_mut().process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }

    /// Reads plaintext; TLS records are taken from the inner stream only when the
    /// session has none buffered.
    fn read(&self, out: &mut [u8], raw: bool) -> io::Result<usize> {
        let mut session = self.session.borrow_mut();
        loop {
            match session.reader().read(out) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: EOF (message framing catches truncation).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            session.read_tls(&mut ReadFrom {
                inner: &self.inner,
                raw,
            })?;
            let processed = session.process_new_packets();
            // Alerts and post-handshake replies (a key update) go out at once, best effort.
            let _ = flush_session(&mut session, &self.inner, raw);
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Like [`TlsStream::read`], into `buf`'s spare room. rustls reads into initialised
    /// memory, so only as many bytes as it holds decrypted are zeroed first (zeroing a whole
    /// record's room per read was the largest single cost of small exchanges).
    fn read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut session = self.session.borrow_mut();
        let mut transport_eof = false;
        loop {
            let state = match session.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // The alert explaining the failure goes out first, best effort.
                    let _ = flush_session(&mut session, &self.inner, false);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let len = buf.len();
                let take = available.min((buf.capacity() - len).clamp(1024, TLS_READ));
                buf.resize(len + take, 0);
                let read = session.reader().read(&mut buf[len..]);
                buf.truncate(len + *read.as_ref().unwrap_or(&0));
                return read;
            }
            // close_notify, or the transport's EOF without one (message framing catches a
            // truncation): EOF either way.
            if state.peer_has_closed() || transport_eof {
                return Ok(0);
            }
            transport_eof = session.read_tls(&mut ReadFrom {
                inner: &self.inner,
                raw: false,
            })? == 0;
            if session.wants_write() {
                // Alerts and post-handshake replies (a key update) go out at once, best effort.
                let _ = flush_session(&mut session, &self.inner, false);
            }
        }
    }

    /// Encrypts what the session takes of `data` and moves it on as far as it goes.
    fn write(&self, data: &[IoSlice<'_>], raw: bool) -> io::Result<usize> {
        let mut session = self.session.borrow_mut();
        if !flush_session(&mut session, &self.inner, raw)?.1 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = session.writer().write_vectored(data)?;
        flush_session(&mut session, &self.inner, raw)?;
        if taken == 0 && data.iter().any(|d| !d.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }
}

/// Moves `session`'s pending records into `inner`, then `inner`'s own pending bytes on.
/// Returns the bytes moved and whether nothing is left anywhere.
fn flush_session(
    session: &mut rustls::Connection,
    inner: &Stream,
    raw: bool,
) -> io::Result<(usize, bool)> {
    let mut moved = 0;
    while session.wants_write() {
        match session.write_tls(&mut WriteTo { inner, raw }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => moved += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((moved, false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (more, done) = inner.flush_out(raw)?;
    Ok((moved + more, done))
}

/// `io::Read` over an inner stream, for rustls's `read_tls`.
struct ReadFrom<'a> {
    inner: &'a Stream,
    raw: bool,
}

impl Read for ReadFrom<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match (self.inner, self.raw) {
            (Stream::Tcp(tcp), false) => tcp.try_read(out),
            (Stream::Tcp(tcp), true) => (&*socket2::SockRef::from(tcp)).read(out),
            (Stream::Tls(tls), raw) => tls.read(out, raw),
        }
    }
}

/// `io::Write` into an inner stream, for rustls's `write_tls`.
struct WriteTo<'a> {
    inner: &'a Stream,
    raw: bool,
}

impl Write for WriteTo<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, data: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.raw {
            return self.inner.try_write_vectored(data);
        }
        match self.inner.send_raw(data)? {
            Some(n) if n > 0 => Ok(n),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::io::{read_some, write_all, write_parts};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Duration;

    const IDLE: Duration = Duration::from_secs(5);

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        crate::tls::ensure_provider();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    async fn tcp_pair() -> (Stream, Stream) {
        let (a, b) = crate::conn::tcp_pair().await;
        (Stream::Tcp(a), Stream::Tcp(b))
    }

    /// TLS over the given pair: (client side, server side), handshakes done.
    async fn tls_over(client: Stream, server: Stream) -> (Stream, Stream) {
        let (server_config, client_config) = configs();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let client = Stream::tls(
            client,
            rustls::ClientConnection::new(client_config, name).unwrap(),
        );
        let server = Stream::tls(
            server,
            rustls::ServerConnection::new(server_config).unwrap(),
        );
        let (a, b) = tokio::join!(client.handshake(IDLE), server.handshake(IDLE));
        a.unwrap();
        b.unwrap();
        (client, server)
    }

    async fn read_exactly(stream: &Stream, n: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        while buf.len() < n {
            let got = read_some(stream, &mut buf, 64 * 1024, IDLE).await.unwrap();
            assert!(got > 0, "EOF after {} of {n} bytes", buf.len());
        }
        buf.to_vec()
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn large_transfers_both_ways_at_once() {
        let (a, b) = tcp_pair().await;
        let (client, server) = tls_over(a, b).await;
        let (up, down) = (pattern(4 << 20, 1), pattern(4 << 20, 2));
        // Each side writes and reads at the same time through `&Stream`.
        let ((), got_down, (), got_up) = tokio::join!(
            async { write_all(&client, &up, IDLE).await.unwrap() },
            read_exactly(&client, down.len()),
            async { write_all(&server, &down, IDLE).await.unwrap() },
            read_exactly(&server, up.len()),
        );
        assert!(got_up == up && got_down == down);
    }

    #[tokio::test]
    async fn vectored_heads_arrive_whole_and_in_order() {
        let (a, b) = tcp_pair().await;
        let (client, server) = tls_over(a, b).await;
        let mut parts: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("p{i};"))).collect();
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
        write_parts(&client, &mut parts, IDLE).await.unwrap();
        assert_eq!(read_exactly(&server, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn idle_probe_ignores_tickets_and_sees_data_and_close() {
        let (a, b) = tcp_pair().await;
        let (client, server) = tls_over(a, b).await;
        // A TLS 1.3 server sends session tickets after the handshake: not data.
        client.tcp().peek(&mut [0u8; 1]).await.unwrap();
        assert!(client.is_idle_and_open(), "tickets alone are no data");
        write_all(&server, b"x", IDLE).await.unwrap();
        client.tcp().peek(&mut [0u8; 1]).await.unwrap();
        assert!(!client.is_idle_and_open(), "unread data");
        let (a, b) = tcp_pair().await;
        let (client, server) = tls_over(a, b).await;
        server.shutdown_write();
        client.tcp().peek(&mut [0u8; 1]).await.unwrap();
        assert!(!client.is_idle_and_open(), "close_notify");
    }

    #[tokio::test]
    async fn tls_inside_tls() {
        let (a, b) = tcp_pair().await;
        let (outer_client, outer_server) = tls_over(a, b).await;
        let (client, server) = tls_over(outer_client, outer_server).await;
        let data = pattern(1 << 20, 3);
        let ((), got) = tokio::join!(
            async { write_all(&client, &data, IDLE).await.unwrap() },
            read_exactly(&server, data.len()),
        );
        assert!(got == data);
        client.shutdown_write();
        let mut rest = BytesMut::new();
        assert_eq!(read_some(&server, &mut rest, 1024, IDLE).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_handshake_names_the_rustls_error() {
        let (a, b) = tcp_pair().await;
        let (server_config, _) = configs();
        // A client that trusts nothing.
        let client_config = Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let client = Stream::tls(
            a,
            rustls::ClientConnection::new(client_config, name).unwrap(),
        );
        let server = Stream::tls(b, rustls::ServerConnection::new(server_config).unwrap());
        let (c, s) = tokio::join!(client.handshake(IDLE), server.handshake(IDLE));
        let c = c.unwrap_err();
        assert!(matches!(
            rustls_error(&c),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        assert!(matches!(
            rustls_error(&s.unwrap_err()),
            Some(rustls::Error::AlertReceived(_))
        ));
    }
}
