#![allow(unused, clippy::all)]
use bytes::Bytes;
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
pub fn reason_phrase(status: u16) -> &'static str {
    todo!()
}
pub fn error_response(status: u16, code: &str, details: Option<&str>, close: bool) -> Bytes {
    todo!()
}
pub fn simple_response(status: u16, headers: &[(&str, &str)], body: &[u8], close: bool) -> Bytes {
    todo!()
}
