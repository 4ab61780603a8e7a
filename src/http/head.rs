#![allow(unused, clippy::all)]
use bytes::Bytes;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}
impl Version {
    pub fn as_bytes(self) -> &'static [u8] {
        b""
    }
}
pub struct RequestHead;
impl RequestHead {
    pub fn method(&self) -> &[u8] {
        todo!()
    }
    pub fn is_method(&self, m: &str) -> bool {
        todo!()
    }
    pub fn target(&self) -> &[u8] {
        todo!()
    }
    pub fn target_bytes(&self) -> Bytes {
        todo!()
    }
    pub fn version(&self) -> Version {
        todo!()
    }
    pub fn raw(&self) -> &Bytes {
        todo!()
    }
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        todo!()
    }
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        std::iter::empty()
    }
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        std::iter::empty()
    }
    pub fn count(&self, name: &str) -> usize {
        todo!()
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        todo!()
    }
    pub fn remove(&mut self, name: &str) -> usize {
        todo!()
    }
    pub fn set(&mut self, name: &str, value: &[u8]) {
        todo!()
    }
    pub fn append(&mut self, name: &str, value: &[u8]) {
        todo!()
    }
    pub fn set_target(&mut self, target: Bytes) {
        todo!()
    }
    pub fn encode(&self, version: Version, out: &mut Vec<Bytes>) {
        todo!()
    }
}
pub struct ResponseHead;
impl ResponseHead {
    pub fn status(&self) -> u16 {
        todo!()
    }
    pub fn reason(&self) -> &[u8] {
        todo!()
    }
    pub fn version(&self) -> Version {
        todo!()
    }
    pub fn raw(&self) -> &Bytes {
        todo!()
    }
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        todo!()
    }
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        std::iter::empty()
    }
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        std::iter::empty()
    }
    pub fn count(&self, name: &str) -> usize {
        todo!()
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        todo!()
    }
    pub fn remove(&mut self, name: &str) -> usize {
        todo!()
    }
    pub fn set(&mut self, name: &str, value: &[u8]) {
        todo!()
    }
    pub fn append(&mut self, name: &str, value: &[u8]) {
        todo!()
    }
    pub fn encode(&self, out: &mut Vec<Bytes>) {
        todo!()
    }
    pub fn is_informational(&self) -> bool {
        todo!()
    }
}
