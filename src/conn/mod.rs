//! What the proxy's exchange loop and the built-in web server share about one client
//! connection: the client side ([`Client`]), socket I/O with inactivity bounds ([`io`])
//! and the access-log record of each exchange ([`access`]). Below both `proxy` and
//! `web`, so that neither imports the other.

pub mod access;
pub mod io;

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// The client side of a connection: the socket and its read buffer.
///
/// The buffer is released whenever it is empty and the connection waits for a new
/// request, so an idle keep-alive connection holds no read buffer.
pub struct Client {
    /// The client's socket.
    pub stream: TcpStream,
    /// Bytes read but not yet consumed (the rest of a body, pipelined requests).
    pub buf: BytesMut,
    /// The client's address.
    pub addr: SocketAddr,
}
