#![allow(unused, clippy::all)]
use super::parse::ParseError;
use bytes::Bytes;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Origin,
    Absolute {
        scheme: Scheme,
        host: String,
        port: u16,
        path: Bytes,
    },
    Authority {
        host: String,
        port: u16,
    },
    Asterisk,
}
pub fn parse_target(raw: &Bytes, is_connect: bool) -> Result<Target, ParseError> {
    todo!()
}
pub fn host_header_value(scheme: Scheme, host: &str, port: u16) -> String {
    todo!()
}
