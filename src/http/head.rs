//! `RequestHead` / `ResponseHead`: one received head kept as `Bytes` plus `u32` spans, with recorded edits.
//!
//! Nothing is copied at parse time. Edits are recorded per header (`Slot`), and `encode` writes the head back as
//! slices of the untouched regions of `raw` (adjacent untouched lines coalesced into one slice) interleaved with
//! the few lines that were re-rendered.

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::{is_field_byte, is_tchar, trim_ows};

/// The HTTP version of a message (only 1.0 and 1.1 are accepted on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

impl Version {
    /// The version as it appears on the wire, e.g. `b"HTTP/1.1"`.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }
}

// === Span / Field / Fields (shared by both heads) ===

/// A byte range into `raw` (or into an owned line), as `u32` to keep `Field` small.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn new(start: u32, end: u32) -> Self {
        Span { start, end }
    }

    /// How many bytes the span covers.
    fn len(self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The bytes of this span in `base`; empty if out of range (spans are built checked, so that never happens).
    pub(crate) fn of(self, base: &[u8]) -> &[u8] {
        base.get(self.range()).unwrap_or_default()
    }
}

/// Where a header's bytes live now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Untouched: name and value are spans of `raw`, and the line is re-sent as a slice of `raw`.
    Raw,
    /// Replaced or appended: spans index into `owned[index]`, which holds the whole rendered line.
    Owned { index: u32 },
    /// Removed: not visible, not encoded.
    Removed,
}

/// One header line of a head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Field {
    /// Where the original line starts in `raw` (= `headers_end` for appended fields); ends a coalesced run.
    line_start: u32,
    name: Span,
    value: Span,
    /// The received value had OWS before CRLF (httparse trims it; body framing wants to know, see body.rs).
    trailing_ws: bool,
    slot: Slot,
}

impl Field {
    /// A header as received: `name`/`value` are spans of `raw` (value already OWS-trimmed).
    pub(crate) fn received(name: Span, value: Span) -> Self {
        Field {
            line_start: name.start,
            name,
            value,
            trailing_ws: false,
            slot: Slot::Raw,
        }
    }

    /// Where this line starts in `raw`.
    pub(crate) fn line_start(&self) -> u32 {
        self.line_start
    }

    fn is_live(&self) -> bool {
        self.slot != Slot::Removed
    }
}

/// What a head's framing headers are (see [`Fields::framing`]).
#[derive(Default)]
pub(crate) struct FramingHeaders<'a> {
    /// How many `Transfer-Encoding` lines.
    pub(crate) transfer_encodings: usize,
    /// The first one's value.
    pub(crate) transfer_encoding: Option<&'a [u8]>,
    /// Whether any of them was received with trailing whitespace.
    pub(crate) transfer_encoding_ws: bool,
    /// How many `Content-Length` lines.
    pub(crate) content_lengths: usize,
    /// The first one's value.
    pub(crate) content_length: Option<&'a [u8]>,
}

/// The header section of a head: the raw bytes, one `Field` per line, and any rendered replacement lines.
#[derive(Clone)]
pub(crate) struct Fields {
    raw: Bytes,
    list: Vec<Field>,
    owned: Vec<Bytes>,
    /// Offset in `raw` of the CRLF that ends the head.
    headers_end: u32,
    /// The [`name_bit`]s of every name the list has held: a name whose bit is clear is
    /// not there, and looking it up costs no pass over the lines. (Removal leaves the
    /// bit: it only ever says "maybe".)
    names: u64,
    /// A line sent after every header (see [`Fields::set_last_line`]).
    last_line: Option<&'static [u8]>,
}

/// A name's bit in [`Fields::names`], from its length and its first and last bytes,
/// ASCII case folded (names that are equal ignoring case get the same bit). A head
/// asks mostly for names it does not have (`Upgrade`, `Transfer-Encoding`, `TE`,
/// `Keep-Alive`, `Proxy-Connection`…); the usual ones (`Host`, `User-Agent`, `Accept`,
/// `Date`, `Server`…) land on other bits.
const fn name_bit(name: &[u8]) -> u64 {
    let (first, last) = match name {
        [] => return 1,
        [first, .., last] => (*first, *last),
        [only] => (*only, *only),
    };
    let h = name.len().wrapping_mul(31) ^ ((first | 0x20) as usize * 7) ^ (last | 0x20) as usize;
    1 << (h & 63)
}

impl Fields {
    /// Wraps a parsed head; computes each line's `trailing_ws` from where the next line starts.
    pub(crate) fn new(raw: Bytes, mut list: Vec<Field>) -> Self {
        let headers_end = u32::try_from(raw.len().saturating_sub(2)).unwrap_or(u32::MAX);
        let mut next_start = headers_end;
        for field in list.iter_mut().rev() {
            // The line is `name ":" OWS value OWS CRLF`; anything between value end and CRLF is OWS.
            field.trailing_ws = next_start.saturating_sub(2) > field.value.end;
            next_start = field.line_start;
        }
        let names = list
            .iter()
            .fold(0, |names, field| names | name_bit(field.name.of(&raw)));
        Fields {
            raw,
            list,
            owned: Vec::new(),
            headers_end,
            names,
            last_line: None,
        }
    }

    /// Whether a header named `name` may be there (if not, it is not).
    fn may_have(&self, name: &[u8]) -> bool {
        self.names & name_bit(name) != 0
    }

    /// Adds the name of the line at `index` to [`Fields::names`].
    fn note_name(&mut self, index: usize) {
        if let Some(field) = self.list.get(index) {
            self.names |= name_bit(self.name_of(field));
        }
    }

    pub(crate) fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Keeps `bytes` (an edited method or reason) with the rendered lines; returns its
    /// index for [`Fields::owned_line`]. Never encoded as a header line.
    fn push_owned(&mut self, bytes: Bytes) -> u32 {
        let index = u32::try_from(self.owned.len()).unwrap_or(NOT_EDITED - 1);
        self.owned.push(bytes);
        index
    }

    /// The bytes [`Fields::push_owned`] kept at `index`.
    fn owned_line(&self, index: u32) -> &[u8] {
        self.owned.get(index as usize).map_or(&[], |b| b)
    }

    /// [`Fields::owned_line`] as a `Bytes` (shared, not copied).
    fn owned_bytes(&self, index: u32) -> Bytes {
        self.owned.get(index as usize).cloned().unwrap_or_default()
    }

    fn base(&self, field: &Field) -> &[u8] {
        match field.slot {
            Slot::Raw => &self.raw,
            Slot::Owned { index } => self.owned.get(index as usize).map_or(&[], |b| b),
            Slot::Removed => &[],
        }
    }

    fn name_of(&self, field: &Field) -> &[u8] {
        field.name.of(self.base(field))
    }

    fn value_of(&self, field: &Field) -> &[u8] {
        field.value.of(self.base(field))
    }

    fn live(&self) -> impl Iterator<Item = &Field> {
        self.list.iter().filter(|f| f.is_live())
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        // A name the head never had is not looked for at all; otherwise the length,
        // known from the span, rules most lines out before their bytes are looked at
        // (this runs many times per message).
        let lines = if self.may_have(name.as_bytes()) {
            &self.list[..]
        } else {
            &[]
        };
        lines.iter().filter(move |f| {
            f.is_live()
                && f.name.len() == name.len()
                && self.name_of(f).eq_ignore_ascii_case(name.as_bytes())
        })
    }

    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.named(name).next().map(|f| self.value_of(f))
    }

    pub(crate) fn headers_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.named(name).map(|f| self.value_of(f))
    }

    pub(crate) fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.live().map(|f| (self.name_of(f), self.value_of(f)))
    }

    pub(crate) fn count(&self, name: &str) -> usize {
        self.named(name).count()
    }

    /// The framing headers, found in one pass over the lines (body framing is decided
    /// for every message).
    pub(crate) fn framing(&self) -> FramingHeaders<'_> {
        let mut found = FramingHeaders::default();
        if !self.may_have(b"transfer-encoding") && !self.may_have(b"content-length") {
            return found;
        }
        for f in self.live() {
            let name = self.name_of(f);
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                found.transfer_encodings += 1;
                found.transfer_encoding_ws |= f.trailing_ws;
                found.transfer_encoding.get_or_insert(self.value_of(f));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                found.content_lengths += 1;
                found.content_length.get_or_insert(self.value_of(f));
            }
        }
        found
    }

    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|item| trim_ows(item).eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    pub(crate) fn remove(&mut self, name: &str) -> usize {
        self.remove_from(0, name)
    }

    /// Marks every live header whose name `drop` accepts as removed, in one pass;
    /// returns how many.
    pub(crate) fn remove_where(&mut self, drop: impl FnMut(&[u8]) -> bool) -> usize {
        self.remove_matching(0, drop)
    }

    /// Marks every live `name` header at index `from` or later as removed; returns how many.
    fn remove_from(&mut self, from: usize, name: &str) -> usize {
        self.remove_matching(from, |n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Marks every live header at index `from` or later whose name `drop` accepts as
    /// removed; returns how many.
    fn remove_matching(&mut self, from: usize, mut drop: impl FnMut(&[u8]) -> bool) -> usize {
        let mut removed = 0;
        for i in from..self.list.len() {
            let Some(field) = self.list.get(i).copied() else {
                break;
            };
            if field.is_live() && drop(self.name_of(&field)) {
                if let Some(f) = self.list.get_mut(i) {
                    f.slot = Slot::Removed;
                    removed += 1;
                }
            }
        }
        removed
    }

    pub(crate) fn set(&mut self, name: &str, value: &[u8]) {
        let first = self
            .list
            .iter()
            .position(|f| f.is_live() && self.name_of(f).eq_ignore_ascii_case(name.as_bytes()));
        let Some(first) = first else {
            self.append(name, value);
            return;
        };
        let (slot, name_span, value_span) = self.render(name, value);
        if let Some(f) = self.list.get_mut(first) {
            f.slot = slot;
            f.name = name_span;
            f.value = value_span;
            f.trailing_ws = false;
        }
        self.note_name(first);
        self.remove_from(first + 1, name);
    }

    pub(crate) fn append(&mut self, name: &str, value: &[u8]) {
        let (slot, name, value) = self.render(name, value);
        self.list.push(Field {
            line_start: self.headers_end,
            name,
            value,
            trailing_ws: false,
            slot,
        });
        self.note_name(self.list.len() - 1);
    }

    /// Appends `line`, a whole `Name: value\r\n` line known valid at compile time (our
    /// own `Via`): kept as it is, with no rendering and no allocation for its bytes.
    pub(crate) fn append_static(&mut self, line: &'static [u8]) {
        let name_end = memchr::memchr(b':', line).unwrap_or(0);
        let value_start = (name_end + 1..line.len())
            .find(|&i| !matches!(line.get(i), Some(b' ' | b'\t')))
            .unwrap_or(line.len());
        let value_end = line.len().saturating_sub(2).max(value_start);
        debug_assert!(
            line.ends_with(b"\r\n")
                && name_end > 0
                && line[..name_end].iter().all(|&b| is_tchar(b))
        );
        let index = u32::try_from(self.owned.len()).unwrap_or(u32::MAX);
        self.owned.push(Bytes::from_static(line));
        let span = |a: usize, b: usize| Span::new(a as u32, b as u32);
        self.list.push(Field {
            line_start: self.headers_end,
            name: span(0, name_end),
            value: span(value_start, value_end),
            trailing_ws: false,
            slot: Slot::Owned { index },
        });
        self.note_name(self.list.len() - 1);
    }

    /// Sends `line`, a whole `Name: value\r\n` line known valid at compile time, after
    /// every header when the head is encoded (replacing an earlier such line). Lookups do
    /// not see it: it is for our own `Via`, added once the plugins are done with a head.
    /// Unlike [`Fields::append_static`] it costs no allocation, and an untouched head
    /// stays one slice up to it.
    pub(crate) fn set_last_line(&mut self, line: &'static [u8]) {
        debug_assert!(line.ends_with(b"\r\n") && memchr::memchr(b':', line).is_some());
        self.last_line = Some(line);
    }

    /// Renders `Name: value\r\n` into an owned line and returns its slot and spans.
    ///
    /// Never emits a line our own parser would reject: non-token name bytes become `-`, CR/LF/NUL/CTL in the
    /// value become SP (so a plugin cannot split the head), and the value is OWS-trimmed after that replacement
    /// (a CTL at either end would otherwise leave whitespace that the next hop drops, and the value this head
    /// reports would not be the one sent).
    fn render(&mut self, name: &str, value: &[u8]) -> (Slot, Span, Span) {
        let kept = |b: &u8| is_field_byte(*b) && !matches!(b, b' ' | b'\t');
        let value = match (value.iter().position(kept), value.iter().rposition(kept)) {
            (Some(first), Some(last)) => value.get(first..=last).unwrap_or_default(),
            _ => &[],
        };
        let mut line = BytesMut::with_capacity(name.len() + value.len() + 4);
        line.extend(name.bytes().map(|b| if is_tchar(b) { b } else { b'-' }));
        if name.is_empty() {
            line.put_u8(b'-');
        }
        let name_end = line.len();
        line.put_slice(b": ");
        let value_start = line.len();
        line.extend(
            value
                .iter()
                .map(|&b| if is_field_byte(b) { b } else { b' ' }),
        );
        let value_end = line.len();
        line.put_slice(b"\r\n");
        let index = u32::try_from(self.owned.len()).unwrap_or(u32::MAX);
        self.owned.push(line.freeze());
        let span = |a: usize, b: usize| Span::new(a as u32, b as u32);
        (
            Slot::Owned { index },
            span(0, name_end),
            span(value_start, value_end),
        )
    }

    /// Pushes the header section (and, if `run` is `Some(0)`, the start line) onto `out`.
    ///
    /// `run` is the start of the current run of untouched bytes of `raw`; it grows over untouched lines and is
    /// flushed as one `Bytes::slice` when an edited line (or the end) is reached.
    pub(crate) fn encode_into(&self, mut run: Option<u32>, out: &mut Vec<Bytes>) {
        for field in &self.list {
            if field.slot == Slot::Raw {
                run.get_or_insert(field.line_start);
                continue;
            }
            if let Some(start) = run.take() {
                self.push_raw(start, field.line_start, out);
            }
            if let Slot::Owned { index } = field.slot {
                if let Some(line) = self.owned.get(index as usize) {
                    out.push(line.clone());
                }
            }
        }
        match (run, self.last_line) {
            // Untouched to the end: the final CRLF rides along in the same slice.
            (Some(start), None) => self.push_raw(
                start,
                u32::try_from(self.raw.len()).unwrap_or(u32::MAX),
                out,
            ),
            (run, Some(line)) => {
                if let Some(start) = run {
                    self.push_raw(start, self.headers_end, out);
                }
                out.push(Bytes::from_static(line));
                out.push(Bytes::from_static(b"\r\n"));
            }
            (None, None) => out.push(Bytes::from_static(b"\r\n")),
        }
    }

    fn push_raw(&self, start: u32, end: u32, out: &mut Vec<Bytes>) {
        let (start, end) = (start as usize, (end as usize).min(self.raw.len()));
        if start < end {
            out.push(self.raw.slice(start..end));
        }
    }
}

/// A head's method or reason phrase that was not edited.
const NOT_EDITED: u32 = u32::MAX;

/// Length of `HTTP/1.x`.
const VERSION_LEN: u32 = 8;

// === impl RequestHead ===

/// A parsed request head: the received bytes, spans into them, and the edits to apply when encoding.
#[derive(Clone)]
pub struct RequestHead {
    fields: Fields,
    method: Span,
    target: Span,
    version: Version,
    new_target: Option<Bytes>,
    /// [`NOT_EDITED`], or the index in `fields.owned` of the method `set_method` gave (a
    /// `u32` fits in padding: heads, and the futures holding them, keep their size).
    method_line: u32,
}

impl RequestHead {
    pub(crate) fn new(fields: Fields, method: Span, target: Span, version: Version) -> Self {
        RequestHead {
            fields,
            method,
            target,
            version,
            new_target: None,
            method_line: NOT_EDITED,
        }
    }

    /// The method, e.g. `b"GET"` (`set_method`'s, else the received one).
    pub fn method(&self) -> &[u8] {
        match self.method_line {
            NOT_EDITED => self.method.of(self.fields.raw()),
            line => self.fields.owned_line(line),
        }
    }

    /// Replaces the method `encode` sends. The caller checks it is a token (RFC 9110 §9.1).
    pub fn set_method(&mut self, method: Bytes) {
        self.method_line = self.fields.push_owned(method);
    }

    /// Whether the method is exactly `m` (methods are case-sensitive, RFC 9110 §9.1).
    pub fn is_method(&self, m: &str) -> bool {
        self.method() == m.as_bytes()
    }

    /// The request-target as received.
    pub fn target(&self) -> &[u8] {
        self.target.of(self.fields.raw())
    }

    /// Whether the client asks to keep the connection after this exchange
    /// (RFC 9112 §9.3: HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub fn wants_keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.has_token("connection", "close"),
            Version::Http10 => self.has_token("connection", "keep-alive"),
        }
    }

    /// The request-target as received, as a zero-copy slice of the head.
    pub fn target_bytes(&self) -> Bytes {
        self.fields.raw().slice_ref(self.target())
    }

    /// The target `encode` will send: `set_target`'s, else the received one.
    pub fn effective_target(&self) -> &[u8] {
        self.new_target.as_deref().unwrap_or_else(|| self.target())
    }

    /// `effective_target` as a `Bytes` (a slice of the head when it was not replaced).
    pub fn effective_target_bytes(&self) -> Bytes {
        match &self.new_target {
            Some(target) => target.clone(),
            None => self.target_bytes(),
        }
    }

    /// The request's HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The received head bytes (request line through the final CRLF; leading empty lines excluded).
    pub fn raw(&self) -> &Bytes {
        self.fields.raw()
    }

    /// The first live header named `name` (case-insensitive), value trimmed of OWS.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.header(name)
    }

    /// Every live value of header `name`, in wire order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.headers_named(name)
    }

    /// Every live `(name, value)`, in wire order, appended ones last.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.headers()
    }

    /// How many live headers are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.fields.count(name)
    }

    /// Whether any live `name` header's comma-separated list holds `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.fields.has_token(name, token)
    }

    /// Removes every live header named `name`; returns how many.
    pub fn remove(&mut self, name: &str) -> usize {
        self.fields.remove(name)
    }

    /// Removes, in one pass, every live header whose name `drop` accepts; returns how
    /// many.
    pub fn remove_where(&mut self, drop: impl FnMut(&[u8]) -> bool) -> usize {
        self.fields.remove_where(drop)
    }

    /// Replaces the first live `name` header in place and removes later ones; appends if there is none.
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.fields.set(name, value);
    }

    /// Adds a header after all others.
    pub fn append(&mut self, name: &str, value: &[u8]) {
        self.fields.append(name, value);
    }

    /// Adds a whole header line known valid at compile time (`b"Via: 1.1 proxy\r\n"`)
    /// after all others, without rendering or allocating it.
    pub fn append_static(&mut self, line: &'static [u8]) {
        self.fields.append_static(line);
    }

    /// Sends `line` after every header when encoding; lookups do not see it (our `Via`,
    /// once the plugins are done). No allocation.
    pub fn set_last_line(&mut self, line: &'static [u8]) {
        self.fields.set_last_line(line);
    }

    /// Replaces the request-target `encode` sends (e.g. absolute-form → origin-form).
    pub fn set_target(&mut self, target: Bytes) {
        self.new_target = Some(target);
    }

    /// The framing headers, in one pass.
    pub(crate) fn framing(&self) -> FramingHeaders<'_> {
        self.fields.framing()
    }

    /// Pushes the wire form (request line with `version`, live headers, final CRLF) onto `out` (cleared first).
    ///
    /// Untouched regions are `Bytes::slice`s of `raw`; an unedited head sent at its own version is one slice.
    pub fn encode(&self, version: Version, out: &mut Vec<Bytes>) {
        out.clear();
        let run = if self.new_target.is_none()
            && self.method_line == NOT_EDITED
            && version == self.version
        {
            Some(0)
        } else {
            // The line is sent as pieces (method, target, version) rather than
            // rendered: slices of `raw` or of the new target, no allocation.
            out.push(match self.method_line {
                NOT_EDITED => self.fields.raw().slice_ref(self.method()),
                line => self.fields.owned_bytes(line),
            });
            out.push(Bytes::from_static(b" "));
            out.push(self.effective_target_bytes());
            out.push(Bytes::from_static(match version {
                Version::Http10 => b" HTTP/1.0\r\n",
                Version::Http11 => b" HTTP/1.1\r\n",
            }));
            None
        };
        self.fields.encode_into(run, out);
    }
}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", &String::from_utf8_lossy(self.method()))
            .field("target", &String::from_utf8_lossy(self.target()))
            .field("version", &self.version)
            .field("headers", &self.fields.list.len())
            .finish_non_exhaustive()
    }
}

// === impl ResponseHead ===

/// A parsed response head: the received bytes, spans into them, and the edits to apply when encoding.
#[derive(Clone)]
pub struct ResponseHead {
    fields: Fields,
    status: u16,
    reason: Span,
    version: Version,
    /// [`NOT_EDITED`], or the index in `fields.owned` of the reason phrase `set_status`
    /// gave (then the status line is rendered anew).
    reason_line: u32,
}

impl ResponseHead {
    pub(crate) fn new(fields: Fields, status: u16, reason: Span, version: Version) -> Self {
        ResponseHead {
            fields,
            status,
            reason,
            version,
            reason_line: NOT_EDITED,
        }
    }

    /// Replaces the status code and reason phrase `encode` sends. The caller checks the
    /// code is 100..=999 and the reason holds no CR, LF or other control byte.
    pub fn set_status(&mut self, status: u16, reason: Bytes) {
        self.status = status;
        self.reason_line = self.fields.push_owned(reason);
    }

    /// The status code (100..=999).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase (may be empty): `set_status`'s, else the received one.
    pub fn reason(&self) -> &[u8] {
        match self.reason_line {
            NOT_EDITED => self.reason.of(self.fields.raw()),
            line => self.fields.owned_line(line),
        }
    }

    /// The status line `set_status` asks for, rendered at `version`.
    fn edited_status_line(&self, version: Version) -> Option<Bytes> {
        if self.reason_line == NOT_EDITED {
            return None;
        }
        let reason = self.reason();
        let mut line = BytesMut::with_capacity(reason.len() + 16);
        line.put_slice(version.as_bytes());
        line.put_u8(b' ');
        line.put_slice(itoa::Buffer::new().format(self.status).as_bytes());
        line.put_u8(b' ');
        line.put_slice(reason);
        line.put_slice(b"\r\n");
        Some(line.freeze())
    }

    /// The response's HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The received head bytes (status line through the final CRLF).
    pub fn raw(&self) -> &Bytes {
        self.fields.raw()
    }

    /// The first live header named `name` (case-insensitive), value trimmed of OWS.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.header(name)
    }

    /// Every live value of header `name`, in wire order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.headers_named(name)
    }

    /// Every live `(name, value)`, in wire order, appended ones last.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.headers()
    }

    /// How many live headers are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.fields.count(name)
    }

    /// Whether any live `name` header's comma-separated list holds `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.fields.has_token(name, token)
    }

    /// Removes every live header named `name`; returns how many.
    pub fn remove(&mut self, name: &str) -> usize {
        self.fields.remove(name)
    }

    /// Removes, in one pass, every live header whose name `drop` accepts; returns how
    /// many.
    pub fn remove_where(&mut self, drop: impl FnMut(&[u8]) -> bool) -> usize {
        self.fields.remove_where(drop)
    }

    /// Replaces the first live `name` header in place and removes later ones; appends if there is none.
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.fields.set(name, value);
    }

    /// Adds a header after all others.
    pub fn append(&mut self, name: &str, value: &[u8]) {
        self.fields.append(name, value);
    }

    /// Sends `line` after every header when encoding; lookups do not see it (our `Via`,
    /// once the plugins are done). No allocation.
    pub fn set_last_line(&mut self, line: &'static [u8]) {
        self.fields.set_last_line(line);
    }

    /// The framing headers, in one pass.
    pub(crate) fn framing(&self) -> FramingHeaders<'_> {
        self.fields.framing()
    }

    /// Pushes the wire form (status line as received, live headers, final CRLF) onto `out` (cleared first).
    ///
    /// An untouched head is exactly one `Bytes`: `raw` itself.
    pub fn encode(&self, out: &mut Vec<Bytes>) {
        self.encode_with_version(self.version, out);
    }

    /// Like [`ResponseHead::encode`], but with `version` in the status line: an
    /// intermediary sends its own HTTP version (RFC 9110 §6.2), so an HTTP/1.0 origin's
    /// response reaches the client as HTTP/1.1 with its framing made explicit.
    pub fn encode_with_version(&self, version: Version, out: &mut Vec<Bytes>) {
        out.clear();
        if let Some(line) = self.edited_status_line(version) {
            out.push(line);
            self.fields.encode_into(None, out);
        } else if version == self.version {
            self.fields.encode_into(Some(0), out);
        } else {
            // The parser checked that the status line starts with exactly `HTTP/1.x`.
            out.push(Bytes::from_static(version.as_bytes()));
            self.fields.encode_into(Some(VERSION_LEN), out);
        }
    }

    /// Whether this is an interim (1xx) response.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

impl fmt::Debug for ResponseHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseHead")
            .field("status", &self.status)
            .field("version", &self.version)
            .field("headers", &self.fields.list.len())
            .finish_non_exhaustive()
    }
}
