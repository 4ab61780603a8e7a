#![allow(unused, clippy::all)]
use super::head::*;
use crate::config::Limits;
use crate::error::ErrorKind;
use bytes::BytesMut;
pub enum Parsed<T> {
    Complete(T),
    Partial,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Malformed(&'static str),
    UriTooLong,
    HeadTooLarge,
}
impl ParseError {
    pub fn request_kind(&self) -> ErrorKind {
        todo!()
    }
    pub fn response_kind(&self) -> ErrorKind {
        todo!()
    }
}
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Parsed<RequestHead>, ParseError> {
    todo!()
}
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Parsed<ResponseHead>, ParseError> {
    todo!()
}
