//! `parse_response` the way the proxy calls it (src/proxy/forward/download.rs `read_response_head`): the origin's bytes
//! appended to one buffer as they arrive, the parser called after each read.
//!
//! Checks: the outcome does not depend on how the bytes were split; a complete head is exactly the bytes it was
//! cut from, within the limits, with consistent accessors; `response_body_kind` agrees with the framing headers
//! and with the status (bodiless statuses and HEAD are still validated the same way); `encode` and
//! `encode_with_version` give back the received bytes; and a head rewritten as the proxy rewrites it encodes to
//! bytes our own parser reads back as the same head.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proxy::config::Limits;
use proxy::http::{
    parse_response, response_body_kind, BodyKind, ChunkedDecoder, ParseError, Parsed, ResponseHead,
    Version,
};
use proxy_fuzz::*;

/// What feeding a stream to the parser came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Partial,
    Complete {
        raw: Bytes,
        rest: Vec<u8>,
    },
    /// Rejected (the kind may depend on which bytes had arrived, so it is not compared).
    Error(ParseError),
}

fn feed(data: &[u8], cuts: &[usize], limits: &Limits) -> Outcome {
    let pieces = pieces(data, cuts);
    let mut buf = BytesMut::new();
    for (i, piece) in pieces.iter().enumerate() {
        buf.extend_from_slice(piece);
        if buf.is_empty() {
            continue;
        }
        let before = buf.clone();
        match parse_response(&mut buf, limits) {
            Ok(Parsed::Partial) => {
                assert_eq!(buf, before, "Partial must leave the buffer untouched")
            }
            Ok(Parsed::Complete(head)) => {
                let mut rest = buf.to_vec();
                for later in &pieces[i + 1..] {
                    rest.extend_from_slice(later);
                }
                return Outcome::Complete {
                    raw: head.raw().clone(),
                    rest,
                };
            }
            Err(e) => return Outcome::Error(e),
        }
    }
    Outcome::Partial
}

fn same_outcome(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Outcome::Error(_), Outcome::Error(_)) => true,
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::new(data);
    let limits = head_limits(&mut rng);

    let whole = feed(data, &[], &limits);
    let cuts = cuts(&mut rng, data.len());
    let split = feed(data, &cuts, &limits);
    assert!(
        same_outcome(&whole, &split),
        "whole: {whole:?}\nsplit at {cuts:?}: {split:?}"
    );
    if data.len() <= 512 {
        let bytewise: Vec<usize> = (1..data.len()).collect();
        let one_by_one = feed(data, &bytewise, &limits);
        assert!(
            same_outcome(&whole, &one_by_one),
            "whole: {whole:?}\nbyte by byte: {one_by_one:?}"
        );
    }

    let mut buf = BytesMut::from(data);
    if let Ok(Parsed::Complete(head)) = parse_response(&mut buf, &limits) {
        check_head(&head, data, &buf, &limits);
        check_framing(&head, &buf);
        check_encode(&head);
        check_rewrite(&head, &buf, &mut rng);
    }
});

fn check_head(head: &ResponseHead, data: &[u8], rest: &[u8], limits: &Limits) {
    let raw = head.raw();
    assert_eq!(
        &data[..raw.len()],
        &raw[..],
        "a response head starts at the first byte"
    );
    assert_eq!(data.len(), raw.len() + rest.len());
    assert!(raw.len() <= limits.max_head, "head over max_head");
    assert!(raw.ends_with(b"\r\n\r\n"));
    for (i, &b) in raw.iter().enumerate() {
        assert_ne!(b, 0, "NUL in head");
        if b == b'\r' {
            assert_eq!(raw.get(i + 1), Some(&b'\n'), "bare CR");
        }
        if b == b'\n' {
            assert!(i > 0 && raw[i - 1] == b'\r', "bare LF");
            assert!(!matches!(raw.get(i + 1), Some(b' ' | b'\t')), "obs-fold");
        }
    }
    let lines = lines_of(raw);
    assert!(
        lines[0].len() <= limits.max_request_line,
        "status line over limit"
    );
    for line in &lines[1..] {
        assert!(
            line.len() <= limits.max_header_line,
            "header line over limit"
        );
    }

    // "HTTP/1.x NNN[ reason]"
    let status = head.status();
    assert!((100..=999).contains(&status), "status {status}");
    let status_line = lines[0];
    assert!(status_line.starts_with(head.version().as_bytes()));
    assert_eq!(status_line.get(8), Some(&b' '));
    assert_eq!(status_line.get(9..12), Some(status.to_string().as_bytes()));
    let reason = head.reason();
    match status_line.get(12) {
        None => assert!(reason.is_empty()),
        Some(b' ') => assert_eq!(reason, &status_line[13..]),
        Some(other) => panic!("byte {other:#x} after the status code"),
    }
    assert!(
        reason.iter().all(|&b| is_field_byte(b)),
        "reason {reason:?}"
    );
    assert_eq!(head.is_informational(), (100..200).contains(&status));

    let headers = head.headers().count();
    assert_eq!(headers, lines.len() - 1, "one header per line");
    assert!(
        headers <= limits.max_headers,
        "more headers than max_headers"
    );
    check_headers(&head.headers().collect::<Vec<_>>(), head);
}

/// `response_body_kind` agrees with the framing headers, the version and the status.
fn check_framing(head: &ResponseHead, rest: &[u8]) {
    let te = head.count("transfer-encoding");
    let cl = head.count("content-length");
    let get = response_body_kind(head, false);
    let after_head = response_body_kind(head, true);
    // A response to HEAD has no body, but its framing is validated all the same.
    match (&get, &after_head) {
        (Ok(_), Ok(BodyKind::Empty)) | (Err(_), Err(_)) => {}
        other => panic!("GET vs HEAD: {other:?}"),
    }
    let status = head.status();
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    match get {
        Ok(BodyKind::Empty) => assert!(bodiless, "Empty for status {status}"),
        Ok(kind) => {
            assert!(!bodiless, "{kind:?} for status {status}");
            match kind {
                BodyKind::Length(n) => {
                    assert!(te == 0 && cl == 1, "Length with TE {te} CL {cl}");
                    let value = head.header("content-length").unwrap_or_default();
                    let parsed = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    assert!(value.iter().all(u8::is_ascii_digit), "{value:?}");
                    assert_eq!(parsed, Some(n));
                }
                BodyKind::Chunked => {
                    assert!(te == 1 && cl == 0, "Chunked with TE {te} CL {cl}");
                    assert_eq!(head.version(), Version::Http11, "chunked on HTTP/1.0");
                    let value = head.header("transfer-encoding").unwrap_or_default();
                    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                    assert!(trim(last).eq_ignore_ascii_case(b"chunked"), "{value:?}");
                    let mut decoder = ChunkedDecoder::new(&Limits::default());
                    if let Ok(progress) = decoder.advance(rest, None) {
                        assert!(progress.consumed <= rest.len());
                    }
                }
                BodyKind::UntilClose => assert_eq!(cl, 0, "UntilClose with a Content-Length"),
                BodyKind::Empty => {}
            }
        }
        Err(e) => assert!(te + cl > 0, "framing error without framing headers: {e:?}"),
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn check_encode(head: &ResponseHead) {
    let raw = head.raw();
    let mut out = Vec::new();
    head.encode(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].as_ptr(),
        raw.as_ptr(),
        "untouched head must be a slice, not a copy"
    );
    assert_eq!(out[0], raw);
    head.encode_with_version(head.version(), &mut out);
    assert_eq!(out, [raw.clone()]);
    let other = match head.version() {
        Version::Http10 => Version::Http11,
        Version::Http11 => Version::Http10,
    };
    head.encode_with_version(other, &mut out);
    assert_eq!(joined(&out), [other.as_bytes(), &raw[8..]].concat());
}

/// Rewrites the head as forward.rs does for the client (hop-by-hop removed, framing and Connection appended),
/// plus one edit with arbitrary bytes, and parses the encoding back.
fn check_rewrite(head: &ResponseHead, rest: &[u8], rng: &mut Rng) {
    let mut edited = head.clone();
    for name in HOP_BY_HOP {
        edited.remove(name);
        assert_eq!(edited.count(name), 0);
    }
    if rng.below(2) == 0 {
        edited.remove("content-length");
        edited.remove("transfer-encoding");
        edited.append("Transfer-Encoding", b"chunked");
    }
    edited.append(
        "Connection",
        if rng.below(2) == 0 {
            b"close"
        } else {
            b"keep-alive"
        },
    );
    if let Some((name, value)) = edit_from(rest) {
        match rng.below(3) {
            0 => edited.set(&name, &value),
            1 => edited.append(&name, &value),
            _ => {
                edited.remove(&name);
            }
        }
    }
    check_headers(&edited.headers().collect::<Vec<_>>(), &edited);

    let mut out = Vec::new();
    edited.encode_with_version(Version::Http11, &mut out);
    let wire = joined(&out);
    let mut buf = BytesMut::from(&wire[..]);
    let again = match parse_response(&mut buf, &reparse_limits()) {
        Ok(Parsed::Complete(again)) => again,
        other => panic!(
            "the rewritten head does not parse back: {other:?}\n{:?}",
            String::from_utf8_lossy(&wire)
        ),
    };
    assert!(buf.is_empty(), "bytes left after the rewritten head");
    assert_eq!(again.status(), edited.status());
    assert_eq!(again.reason(), edited.reason());
    assert_eq!(again.version(), Version::Http11);
    assert_eq!(
        header_list(again.headers()),
        header_list(edited.headers()),
        "what is sent differs from what the edited head reports\n{:?}",
        String::from_utf8_lossy(&wire)
    );
}
