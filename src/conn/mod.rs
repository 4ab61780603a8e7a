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
}

impl Client {
    /// A client connection with an empty read buffer.
    pub fn new(stream: Stream, addr: SocketAddr, intercepted: bool) -> Client {
        Client {
            stream,
            buf: BytesMut::new(),
            addr,
            intercepted,
            unread_input: false,
        }
    }
}
