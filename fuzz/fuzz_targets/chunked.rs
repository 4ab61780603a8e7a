//! `ChunkedDecoder` the way the proxy drives it (src/proxy/forward/): `advance` on each read with a ranges
//! Vec for the payload, the consumed count used to split the buffer, the next message starting after `done`.
//!
//! Checks: consumed never exceeds the input and is all of it until `done`; payload ranges lie inside the
//! consumed bytes, in order; feeding the body whole, byte by byte, or in random pieces gives the same payload,
//! the same end and the same decision; a finished decoder consumes nothing more and a failed one stays failed;
//! and all of it agrees with a plain, non-incremental reading of RFC 9112 §7.1 (below) including the error
//! position, so the state machine is checked against the grammar and not only against itself.

#![no_main]

use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use proxy::config::Limits;
use proxy::http::{ChunkedDecoder, FramingError, Progress};
use proxy_fuzz::*;

/// How reading a chunked body from the start of a byte string ends (the reference's answer).
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The body (final CRLF included) is the first `len` bytes.
    Done { len: usize },
    /// Valid so far, not finished.
    Incomplete,
    /// The byte at `at` cannot continue a valid body (or makes a line longer than its limit).
    Error { at: usize },
}

/// How feeding the decoder ended.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    Done {
        len: usize,
    },
    Incomplete,
    /// `advance` failed on the read holding these bytes of the input.
    Failed {
        read: Range<usize>,
    },
}

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::new(data);
    let limits = if rng.below(4) == 0 {
        Limits {
            max_chunk_line: 1 + rng.below(24) as usize,
            max_trailers: rng.below(80) as usize,
            ..Limits::default()
        }
    } else {
        proxy::Config::default().limits
    };

    let mut want_payload = Vec::new();
    let want = read_body(data, &limits, &mut want_payload);

    let bytewise: Vec<usize> = (1..data.len()).collect();
    let random = cuts(&mut rng, data.len());
    for (how, cuts) in [
        ("whole", &[][..]),
        ("byte by byte", &bytewise[..]),
        ("split", &random[..]),
    ] {
        let (fed, payload) = feed(data, cuts, &limits);
        if matches!(fed, Fed::Failed { .. }) {
            // The failing read's ranges are not handed out; what came before must match.
            assert!(
                want_payload.starts_with(&payload),
                "payload before the error, {how} {cuts:?}"
            );
        } else {
            assert_eq!(payload, want_payload, "payload, {how} {cuts:?}");
        }
        match (&fed, &want) {
            (Fed::Done { len }, End::Done { len: want }) => {
                assert_eq!(len, want, "end, {how} {cuts:?}")
            }
            (Fed::Incomplete, End::Incomplete) => {}
            // Byte by byte this pins the error to the very byte that makes the body invalid.
            (Fed::Failed { read }, End::Error { at }) => {
                assert!(
                    read.contains(at),
                    "error at byte {at} reported by the read {read:?}, {how} {cuts:?}"
                )
            }
            _ => panic!("{how} {cuts:?}: decoder {fed:?}, reference {want:?}"),
        }
    }
});

/// Feeds `data` in pieces as the proxy does, checking each `advance`; returns how it ended and the payload.
fn feed(data: &[u8], cuts: &[usize], limits: &Limits) -> (Fed, Vec<u8>) {
    let mut decoder = ChunkedDecoder::new(limits);
    let mut payload = Vec::new();
    let mut ranges = Vec::new();
    let mut offset = 0;
    for piece in pieces(data, cuts) {
        ranges.clear();
        match decoder.advance(piece, Some(&mut ranges)) {
            Ok(Progress { consumed, done }) => {
                assert!(
                    consumed <= piece.len(),
                    "consumed {consumed} of {}",
                    piece.len()
                );
                let mut last = 0;
                for r in &ranges {
                    assert!(
                        last <= r.start && r.start <= r.end && r.end <= consumed,
                        "ranges {ranges:?} of {consumed} consumed"
                    );
                    last = r.end;
                    payload.extend_from_slice(&piece[r.clone()]);
                }
                assert_eq!(done, decoder.is_done());
                if done {
                    // Finished: nothing more is taken, whatever follows.
                    let after = decoder.advance(&data[offset + consumed..], None);
                    assert_eq!(
                        after,
                        Ok(Progress {
                            consumed: 0,
                            done: true
                        })
                    );
                    return (
                        Fed::Done {
                            len: offset + consumed,
                        },
                        payload,
                    );
                }
                assert_eq!(
                    consumed,
                    piece.len(),
                    "not done, yet did not consume everything"
                );
            }
            Err(e) => {
                assert!(matches!(
                    e,
                    FramingError::Malformed(_) | FramingError::TooLarge
                ));
                assert!(!decoder.is_done());
                assert!(
                    decoder.advance(b"0\r\n\r\n", None).is_err(),
                    "a failed decoder must stay failed"
                );
                return (
                    Fed::Failed {
                        read: offset..offset + piece.len(),
                    },
                    payload,
                );
            }
        }
        offset += piece.len();
    }
    (Fed::Incomplete, payload)
}

// === The reference: RFC 9112 §7.1 read straight through, whole input at once ===
//
//   chunked-body   = *chunk last-chunk trailer-section CRLF
//   chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//   chunk-size     = 1*HEXDIG            (here at most 16 digits: the size is a u64)
//   chunk-ext      = *( BWS ";" ... )    (here: optional SP/HTAB, then ";" and field bytes up to CR)
//   trailer-section = *( field-line CRLF ), field-line = token ":" *field-byte (no obs-fold)
//
// Limits as documented in Limits: a chunk-size line (CRLF excluded) of at most `max_chunk_line` bytes; a trailer
// section (its field lines and their CRLFs; not the final CRLF, which RFC 9112 puts outside it) of at most
// `max_trailers` bytes.

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// The byte at `i`, or return `Incomplete` from the caller.
macro_rules! byte {
    ($data:expr, $i:expr) => {
        match $data.get($i) {
            Some(&b) => b,
            None => return End::Incomplete,
        }
    };
}

fn read_body(data: &[u8], limits: &Limits, payload: &mut Vec<u8>) -> End {
    let mut i = 0;
    loop {
        // chunk-size [ chunk-ext ] CRLF
        let line_start = i;
        let mut size: u64 = 0;
        let mut digits = 0;
        #[derive(PartialEq)]
        enum In {
            Size,
            Ws,
            Ext,
        }
        let mut state = In::Size;
        loop {
            let b = byte!(data, i);
            if b == b'\r' && ((state == In::Size && digits > 0) || state == In::Ext) {
                break;
            }
            if i - line_start + 1 > limits.max_chunk_line {
                return End::Error { at: i };
            }
            match state {
                In::Size => match hex(b) {
                    Some(_) if digits == 16 => return End::Error { at: i },
                    Some(v) => {
                        size = size << 4 | v;
                        digits += 1;
                    }
                    None if digits == 0 => return End::Error { at: i },
                    None if b == b';' => state = In::Ext,
                    None if b == b' ' || b == b'\t' => state = In::Ws,
                    None => return End::Error { at: i },
                },
                In::Ws => match b {
                    b' ' | b'\t' => {}
                    b';' => state = In::Ext,
                    _ => return End::Error { at: i },
                },
                In::Ext if is_field_byte(b) => {}
                In::Ext => return End::Error { at: i },
            }
            i += 1;
        }
        i += 1; // CR
        if byte!(data, i) != b'\n' {
            return End::Error { at: i };
        }
        i += 1;
        if size == 0 {
            break;
        }
        // chunk-data CRLF
        let available = (data.len() - i) as u64;
        let take = size.min(available) as usize;
        payload.extend_from_slice(&data[i..i + take]);
        i += take;
        if (take as u64) < size {
            return End::Incomplete;
        }
        for want in [b'\r', b'\n'] {
            if byte!(data, i) != want {
                return End::Error { at: i };
            }
            i += 1;
        }
    }
    // trailer-section CRLF
    let trailers_start = i;
    loop {
        let b = byte!(data, i);
        if b == b'\r' {
            i += 1;
            return if byte!(data, i) == b'\n' {
                End::Done { len: i + 1 }
            } else {
                End::Error { at: i }
            };
        }
        // One field line: token ":" *field-byte CRLF, every byte counted against the limit.
        let over = |i: usize| i - trailers_start + 1 > limits.max_trailers;
        let mut name_len = 0;
        loop {
            let b = byte!(data, i);
            if over(i) {
                return End::Error { at: i };
            }
            if b == b':' && name_len > 0 {
                break;
            }
            if !is_tchar(b) {
                return End::Error { at: i };
            }
            name_len += 1;
            i += 1;
        }
        i += 1; // ':'
        loop {
            let b = byte!(data, i);
            if over(i) {
                return End::Error { at: i };
            }
            if b == b'\r' {
                break;
            }
            if !is_field_byte(b) {
                return End::Error { at: i };
            }
            i += 1;
        }
        i += 1; // CR
        let b = byte!(data, i);
        if over(i) || b != b'\n' {
            return End::Error { at: i };
        }
        i += 1;
    }
}
