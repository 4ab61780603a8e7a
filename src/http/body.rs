#![allow(unused, clippy::all)]
use super::head::*;
use crate::config::Limits;
use crate::error::ErrorKind;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    Malformed(&'static str),
    TooLarge,
}
impl FramingError {
    pub fn request_kind(&self) -> ErrorKind {
        todo!()
    }
    pub fn response_kind(&self) -> ErrorKind {
        todo!()
    }
}
pub fn request_body_kind(head: &RequestHead) -> Result<BodyKind, FramingError> {
    todo!()
}
pub fn response_body_kind(
    head: &ResponseHead,
    request_was_head: bool,
) -> Result<BodyKind, FramingError> {
    todo!()
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub consumed: usize,
    pub done: bool,
}
pub struct ChunkedDecoder;
impl ChunkedDecoder {
    pub fn new(limits: &Limits) -> Self {
        todo!()
    }
    pub fn advance(
        &mut self,
        buf: &[u8],
        data: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> Result<Progress, FramingError> {
        todo!()
    }
    pub fn is_done(&self) -> bool {
        todo!()
    }
}
