//! What the proxy's exchange loop and the built-in web server share about one client
//! connection: the client side ([`Client`]), socket I/O with inactivity bounds ([`io`])
//! and the access-log record of each exchange ([`access`]). Below both `proxy` and
//! `web`, so that neither imports the other.

pub mod access;
pub mod io;
pub mod stop;
pub mod stream;

use std::net::SocketAddr;

use bytes::BytesMut;

pub use stream::Stream;

/// Two connected loopback sockets, the connecting side first (for unit tests).
#[cfg(test)]
pub(crate) async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, theirs) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (ours.unwrap(), theirs.unwrap().0)
}

/// The client side of a connection: the socket and its read buffer.
///
/// The buffer is released whenever it is empty and the connection waits for a new
/// request, so an idle keep-alive connection holds no read buffer.
pub struct Client {
    /// The client's connection (TCP, or TLS over it).
    pub stream: Stream,
    /// Bytes read but not yet consumed (the rest of a body, pipelined requests).
    pub buf: BytesMut,
    /// The client's address.
    pub addr: SocketAddr,
    /// The stream is an intercepted CONNECT tunnel's inside (decrypted HTTPS).
    pub intercepted: bool,
    /// The client may still be sending a request body nobody will read (the origin
    /// answered before it was complete): before the connection closes, its input is
    /// drained for a bounded while, so that the close does not become a reset that
    /// discards the end of the response (RFC 9112 §9.6).
    pub unread_input: bool,
    /// An exchange is in flight (not a tunnel's bytes): if the connection is dropped
    /// now, which happens only when a stopping worker's grace period runs out, it ends
    /// in a reset, so that the client cannot take a response cut short for the whole.
    pub reset_on_drop: bool,
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.reset_on_drop {
            self.stream.abort();
        }
    }
}

impl Client {
    /// The stream and the peer's address, for a TLS handshake that wraps the stream
    /// (the buffer is dropped: nothing is read before a handshake).
    #[allow(unsafe_code)]
    pub fn into_stream(self) -> (Stream, SocketAddr) {
        // Only between exchanges: a reset the flag asks for would be lost here.
        debug_assert!(!self.reset_on_drop, "into_stream during an exchange");
        let mut this = std::mem::ManuallyDrop::new(self);
        drop(std::mem::take(&mut this.buf));
        // SAFETY: `this` is never dropped (ManuallyDrop) nor used after this read, so
        // the stream is moved out exactly once; the other fields own nothing (the
        // buffer was taken above) or are `Copy`.
        let stream = unsafe { std::ptr::read(&this.stream) };
        (stream, this.addr)
    }

    /// A client connection with an empty read buffer.
    pub fn new(stream: Stream, addr: SocketAddr, intercepted: bool) -> Client {
        Client {
            stream,
            buf: BytesMut::new(),
            addr,
            intercepted,
            unread_input: false,
            reset_on_drop: false,
        }
    }
}
