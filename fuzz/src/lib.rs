//! Helpers shared by the fuzz targets: how an input is split into reads, which limits it runs under, and the
//! checks every parsed head must pass whatever its kind.
//!
//! Inputs are the raw bytes a peer would send (so seeds are readable HTTP). Everything else a target needs (cut
//! points, small or default limits) is derived from a hash of the input: deterministic per input, and the fuzzer
//! still reaches every variant by mutating.

use bytes::Bytes;
use proxy::config::Limits;

/// FNV-1a over the input: the source of every per-input choice.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A small xorshift stream seeded from the input's hash.
pub struct Rng(u64);

impl Rng {
    pub fn new(data: &[u8]) -> Self {
        Rng(hash(data) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Up to 8 sorted cut points in 0..=len: the input arriving as that many reads.
pub fn cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let count = rng.below(8) as usize;
    let mut cuts: Vec<usize> = (0..count)
        .map(|_| rng.below(len as u64 + 1) as usize)
        .collect();
    cuts.sort_unstable();
    cuts
}

/// The input split at `cuts` (pieces may be empty, as a zero-length read would be).
pub fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &end in cuts {
        out.push(&data[start..end]);
        start = end;
    }
    out.push(&data[start..]);
    out
}

/// Mostly the proxy's defaults (`Config::default().limits`); one input in four gets small limits so the
/// over-limit paths are reached with short inputs.
pub fn head_limits(rng: &mut Rng) -> Limits {
    let defaults = proxy::Config::default().limits;
    if rng.below(4) != 0 {
        return defaults;
    }
    Limits {
        max_request_line: 8 + rng.below(120) as usize,
        max_header_line: 4 + rng.below(120) as usize,
        max_headers: rng.below(12) as usize,
        max_head: 16 + rng.below(600) as usize,
        ..defaults
    }
}

/// Limits for re-parsing what `encode` wrote: generous, so only a wrong encoding can fail.
pub fn reparse_limits() -> Limits {
    Limits {
        max_request_line: 1 << 20,
        max_header_line: 1 << 20,
        max_headers: 128,
        max_head: 1 << 22,
        ..Limits::default()
    }
}

/// RFC 9110 §5.6.2 tchar.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.5 field-vchar / SP / HTAB / obs-text.
pub fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

/// Checks that hold for every header a parsed head reports, received or edited: a token name, a value with no
/// line-breaking byte and no surrounding whitespace, and lookups that agree with the full list.
pub fn check_headers(headers: &[(&[u8], &[u8])], lookup: &dyn Lookup) {
    for &(name, value) in headers {
        assert!(!name.is_empty(), "empty header name");
        assert!(
            name.iter().all(|&b| is_tchar(b)),
            "non-token header name {name:?}"
        );
        assert!(
            value.iter().all(|&b| is_field_byte(b)),
            "bad byte in value {value:?}"
        );
        assert!(
            !matches!(value.first(), Some(b' ' | b'\t'))
                && !matches!(value.last(), Some(b' ' | b'\t')),
            "value not trimmed: {value:?}"
        );
        let Ok(name) = std::str::from_utf8(name) else {
            panic!("tchar name is ASCII")
        };
        let same: Vec<&[u8]> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|&(_, v)| v)
            .collect();
        assert_eq!(lookup.count(name), same.len(), "count({name})");
        assert_eq!(lookup.all(name), same, "headers_named({name})");
        assert_eq!(lookup.first(name), same.first().copied(), "header({name})");
    }
}

/// The header lookups `RequestHead` and `ResponseHead` share.
pub trait Lookup {
    fn count(&self, name: &str) -> usize;
    fn all<'a>(&'a self, name: &'a str) -> Vec<&'a [u8]>;
    fn first(&self, name: &str) -> Option<&[u8]>;
}

impl Lookup for proxy::http::RequestHead {
    fn count(&self, name: &str) -> usize {
        self.count(name)
    }
    fn all<'a>(&'a self, name: &'a str) -> Vec<&'a [u8]> {
        self.headers_named(name).collect()
    }
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.header(name)
    }
}

impl Lookup for proxy::http::ResponseHead {
    fn count(&self, name: &str) -> usize {
        self.count(name)
    }
    fn all<'a>(&'a self, name: &'a str) -> Vec<&'a [u8]> {
        self.headers_named(name).collect()
    }
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.header(name)
    }
}

/// Owned `(name, value)` pairs, for comparing a head before encoding with the same head parsed back.
pub fn header_list<'a>(
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers.map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
}

/// The lines of a complete head (start line, then one per header), CRLFs and the final empty line left out.
///
/// Only for heads the parser accepted: they end in CRLF CRLF and have no bare CR or LF.
pub fn lines_of(raw: &[u8]) -> Vec<&[u8]> {
    let body = raw.get(..raw.len().saturating_sub(4)).unwrap_or_default();
    body.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect()
}

/// Concatenates what `encode` pushed.
pub fn joined(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|b| b.iter().copied()).collect()
}

/// The hop-by-hop headers the proxy strips before forwarding.
pub use proxy::proxy::forward::HOP_BY_HOP;

/// A header name and an arbitrary value to edit a head with, taken from the bytes after the head (which are
/// attacker-chosen and unvalidated, like a plugin's input could be). `None` when there are too few bytes.
pub fn edit_from(rest: &[u8]) -> Option<(String, Vec<u8>)> {
    let (&len, rest) = rest.split_first()?;
    let name_len = usize::from(len % 16);
    let name = rest.get(..name_len)?;
    let value = rest.get(name_len..)?;
    let value = value.get(..value.len().min(64))?;
    Some((String::from_utf8_lossy(name).into_owned(), value.to_vec()))
}
