//! TEMPORARY STUB (replaced by the real http module).
#![allow(unused, clippy::all)]
pub mod body;
pub mod head;
pub mod parse;
pub mod response;
pub mod target;
pub use body::{
    request_body_kind, response_body_kind, BodyKind, ChunkedDecoder, FramingError, Progress,
};
pub use head::{RequestHead, ResponseHead, Version};
pub use parse::{parse_request, parse_response, ParseError, Parsed};
pub use target::{parse_target, Scheme, Target};
