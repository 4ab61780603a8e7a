//! Framing and reassembly, with frames built by hand (not by the codec under test).

use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame's bytes: `first` is FIN/RSV/opcode, then the length in its shortest form
/// (or the given one), the mask and the masked payload.
fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len < 65536 {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        for (i, b) in out[body..].iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    out
}

const FIN: u8 = 0x80;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn client() -> Reader {
    Reader::new(true, MAX_MESSAGE)
}

fn server() -> Reader {
    Reader::new(false, MAX_MESSAGE)
}

/// Every event `reader` takes out of `bytes`, fed whole.
fn events(reader: &mut Reader, bytes: &[u8]) -> Result<Vec<Event>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(event) = reader.next(&mut buf)? {
        out.push(event);
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(out)
}

fn message(event: &Event) -> (WsKind, &[u8], &[u8]) {
    match event {
        Event::Message { kind, raw, payload } => (*kind, &raw[..], &payload[..]),
        other => panic!("not a message: {other:?}"),
    }
}

fn control(event: &Event) -> (ControlKind, &[u8]) {
    match event {
        Event::Control { kind, raw } => (*kind, &raw[..]),
        other => panic!("not a control frame: {other:?}"),
    }
}

#[test]
fn a_masked_client_text_frame_is_unmasked_and_kept_as_received() {
    let wire = raw_frame(FIN | TEXT, b"hello", Some(MASK));
    let got = events(&mut client(), &wire).unwrap();
    assert_eq!(got.len(), 1);
    let (kind, raw, payload) = message(&got[0]);
    assert_eq!((kind, payload), (WsKind::Text, &b"hello"[..]));
    assert_eq!(raw, &wire[..], "the frame as it came, to forward unchanged");
}

#[test]
fn an_unmasked_server_binary_frame_is_not_copied() {
    let wire = raw_frame(FIN | BINARY, &[0, 1, 2, 255], None);
    let mut buf = BytesMut::from(&wire[..]);
    let Some(Event::Message { kind, raw, payload }) = server().next(&mut buf).unwrap() else {
        panic!("expected a message")
    };
    assert_eq!(kind, WsKind::Binary);
    assert_eq!(&payload[..], &[0, 1, 2, 255]);
    // The payload is a view of the raw frame.
    assert_eq!(payload.as_ptr(), raw[2..].as_ptr());
}

#[test]
fn sixteen_and_sixty_four_bit_lengths() {
    for len in [125usize, 126, 65535, 65536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        for (mut reader, mask) in [(client(), Some(MASK)), (server(), None)] {
            let wire = raw_frame(FIN | BINARY, &payload, mask);
            let got = events(&mut reader, &wire).unwrap();
            let (_, raw, got_payload) = message(&got[0]);
            assert_eq!(got_payload, &payload[..], "length {len}");
            assert_eq!(raw.len(), wire.len());
        }
    }
}

#[test]
fn bytes_arriving_one_at_a_time_make_the_same_events() {
    let mut wire = raw_frame(TEXT, b"frag", Some(MASK));
    wire.extend(raw_frame(FIN | PING, b"p", Some(MASK)));
    wire.extend(raw_frame(FIN | CONT, b"mented", Some(MASK)));
    let mut reader = client();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in &wire {
        buf.extend_from_slice(&[*byte]);
        while let Some(event) = reader.next(&mut buf).unwrap() {
            got.push(event);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(control(&got[0]).0, ControlKind::Ping);
    assert_eq!(message(&got[1]).2, b"fragmented");
}

#[test]
fn fragments_are_reassembled_with_an_interleaved_ping_passed_first() {
    let first = raw_frame(TEXT, b"Hel", Some(MASK));
    let ping = raw_frame(FIN | PING, b"are you there", Some([1, 2, 3, 4]));
    let middle = raw_frame(CONT, b"lo, ", Some([9, 9, 9, 9]));
    let last = raw_frame(FIN | CONT, b"world", Some([0, 0, 0, 1]));
    let wire = [&first[..], &ping, &middle, &last].concat();
    let got = events(&mut client(), &wire).unwrap();
    assert_eq!(got.len(), 2);
    let (kind, raw) = control(&got[0]);
    assert_eq!((kind, raw), (ControlKind::Ping, &ping[..]), "untouched");
    let (kind, raw, payload) = message(&got[1]);
    assert_eq!((kind, payload), (WsKind::Text, &b"Hello, world"[..]));
    assert_eq!(
        raw,
        [&first[..], &middle, &last].concat(),
        "the data frames as received"
    );
}

#[test]
fn server_fragments_with_pong_and_close_between_messages() {
    let wire = [
        raw_frame(BINARY, b"ab", None),
        raw_frame(FIN | PONG, b"", None),
        raw_frame(FIN | CONT, b"cd", None),
        raw_frame(FIN | CLOSE, &1000u16.to_be_bytes(), None),
    ]
    .concat();
    let got = events(&mut server(), &wire).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(control(&got[0]).0, ControlKind::Pong);
    assert_eq!(message(&got[1]).2, b"abcd");
    assert_eq!(control(&got[2]).0, ControlKind::Close);
}

#[test]
fn violations_are_named() {
    let cases: &[(&str, bool, Vec<u8>, Violation)] = &[
        (
            "unmasked client frame",
            true,
            raw_frame(FIN | TEXT, b"x", None),
            Violation::UnmaskedClientFrame,
        ),
        (
            "masked server frame",
            false,
            raw_frame(FIN | TEXT, b"x", Some(MASK)),
            Violation::MaskedServerFrame,
        ),
        (
            "rsv1 (permessage-deflate) without the extension",
            false,
            raw_frame(FIN | 0x40 | TEXT, b"x", None),
            Violation::ReservedBits,
        ),
        (
            "rsv3",
            true,
            raw_frame(FIN | 0x10 | BINARY, b"x", Some(MASK)),
            Violation::ReservedBits,
        ),
        (
            "reserved data opcode",
            false,
            raw_frame(FIN | 0x3, b"x", None),
            Violation::BadOpcode,
        ),
        (
            "reserved control opcode",
            false,
            raw_frame(FIN | 0xB, b"x", None),
            Violation::BadOpcode,
        ),
        (
            "control frame over 125 bytes",
            false,
            raw_frame(FIN | PING, &[0; 126], None),
            Violation::ControlTooLong,
        ),
        (
            "fragmented control frame",
            true,
            raw_frame(PING, b"x", Some(MASK)),
            Violation::ControlFragmented,
        ),
        (
            "continuation with nothing to continue",
            false,
            raw_frame(FIN | CONT, b"x", None),
            Violation::UnexpectedContinuation,
        ),
        (
            "a new message inside a fragmented one",
            false,
            [
                raw_frame(TEXT, b"a", None),
                raw_frame(FIN | TEXT, b"b", None),
            ]
            .concat(),
            Violation::UnfinishedMessage,
        ),
    ];
    for (what, from_client, wire, violation) in cases {
        let mut reader = Reader::new(*from_client, MAX_MESSAGE);
        let mut buf = BytesMut::from(&wire[..]);
        let result = loop {
            match reader.next(&mut buf) {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert_eq!(
            result.unwrap_err(),
            FrameError::Protocol(*violation),
            "{what}"
        );
    }
}

#[test]
fn a_violation_is_seen_from_the_header_before_the_payload_arrives() {
    // A 64-bit length on a control frame: refused without waiting for 2^40 bytes.
    let mut head = vec![FIN | PING, 127];
    head.extend_from_slice(&(1u64 << 40).to_be_bytes());
    let mut buf = BytesMut::from(&head[..]);
    assert_eq!(
        server().next(&mut buf).unwrap_err(),
        FrameError::Protocol(Violation::ControlTooLong)
    );
}

#[test]
fn too_big_is_known_from_a_header_and_counts_every_fragment() {
    // One frame announcing more than the bound: refused at once.
    let mut head = vec![FIN | BINARY, 127];
    head.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
    let mut buf = BytesMut::from(&head[..]);
    assert_eq!(server().next(&mut buf).unwrap_err(), FrameError::TooBig);
    // A length with the top bit set (not a valid length at all) is too big too.
    let mut head = vec![FIN | BINARY, 127];
    head.extend_from_slice(&u64::MAX.to_be_bytes());
    let mut buf = BytesMut::from(&head[..]);
    assert_eq!(server().next(&mut buf).unwrap_err(), FrameError::TooBig);
    // Fragments within a small bound one by one, but not together.
    let mut reader = Reader::new(false, 100);
    let wire = [
        raw_frame(TEXT, &[b'a'; 40], None),
        raw_frame(CONT, &[b'b'; 40], None),
        raw_frame(FIN | CONT, &[b'c'; 40], None),
    ]
    .concat();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(reader.next(&mut buf).unwrap_err(), FrameError::TooBig);
    // Empty fragments cost their headers: a flood of them cannot grow without bound.
    let mut reader = Reader::new(false, 100);
    let mut wire = raw_frame(TEXT, b"", None);
    for _ in 0..100 {
        wire.extend(raw_frame(CONT, b"", None));
    }
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(reader.next(&mut buf).unwrap_err(), FrameError::TooBig);
    // Control frames in between are not part of the message.
    let mut reader = Reader::new(false, 100);
    let mut wire = raw_frame(TEXT, &[b'a'; 40], None);
    for _ in 0..10 {
        wire.extend(raw_frame(FIN | PING, &[0; 100], None));
    }
    wire.extend(raw_frame(FIN | CONT, &[b'b'; 40], None));
    let got = events(&mut reader, &wire).unwrap();
    assert_eq!(got.len(), 11);
    assert_eq!(message(&got[10]).2.len(), 80);
}

#[test]
fn frames_the_proxy_writes_parse_back() {
    for len in [0usize, 5, 125, 126, 65535, 65536] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let masked = message_frame(WsKind::Binary, &payload, Some(MASK));
        let got = events(&mut client(), &masked).unwrap();
        assert_eq!(message(&got[0]).2, &payload[..]);
        assert_eq!(
            &masked[..],
            &raw_frame(FIN | BINARY, &payload, Some(MASK))[..]
        );
        let plain = message_frame(WsKind::Text, &payload, None);
        let got = events(&mut server(), &plain).unwrap();
        assert_eq!(message(&got[0]).0, WsKind::Text);
        assert_eq!(message(&got[0]).2, &payload[..]);
    }
    let close = close_frame(CLOSE_TOO_BIG, "message too big", None);
    let got = events(&mut server(), &close).unwrap();
    let (kind, raw) = control(&got[0]);
    assert_eq!(kind, ControlKind::Close);
    assert_eq!(&raw[2..4], &1009u16.to_be_bytes());
    assert_eq!(&raw[4..], b"message too big");
    // The reason is cut to fit a control frame.
    let long = "é".repeat(100);
    let close = close_frame(CLOSE_NORMAL, &long, Some(MASK));
    assert!(events(&mut client(), &close).is_ok());
}

#[test]
fn masking_matches_the_bytewise_definition_at_every_length() {
    for len in 0..40 {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
        let mut fast = data.clone();
        apply_mask(&mut fast, MASK);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(fast, slow, "length {len}");
    }
    let a = fresh_mask().unwrap();
    let b = fresh_mask().unwrap();
    let c = fresh_mask().unwrap();
    assert!(a != b || b != c, "three equal random masks");
}

/// A small deterministic xorshift stream.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// What a reader made of a byte stream, comparable across ways of feeding it.
fn outcome(
    from_client: bool,
    max: usize,
    wire: &[u8],
    cuts: &[usize],
) -> (Vec<String>, Option<FrameError>) {
    let mut reader = Reader::new(from_client, max);
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([wire.len()]) {
        buf.extend_from_slice(&wire[start..end]);
        start = end;
        loop {
            match reader.next(&mut buf) {
                Ok(Some(Event::Control { kind, raw })) => seen.push(format!("{kind:?} {raw:?}")),
                Ok(Some(Event::Message { kind, raw, payload })) => {
                    assert!(raw.len() >= payload.len() + 2);
                    seen.push(format!("{kind:?} {raw:?} {payload:?}"));
                }
                Ok(None) => break,
                Err(e) => return (seen, Some(e)),
            }
        }
    }
    (seen, None)
}

#[test]
fn random_streams_give_the_same_events_however_they_are_cut() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let from_client = rng.below(2) == 0;
        let mut wire = Vec::new();
        for _ in 0..1 + rng.below(6) {
            // Mostly plausible frames (any FIN, opcode, RSV, mask), sometimes raw noise.
            if rng.below(8) == 0 {
                for _ in 0..rng.below(20) {
                    wire.push(rng.below(256) as u8);
                }
                continue;
            }
            let opcode = [0u8, 1, 2, 8, 9, 10, 3, 11][rng.below(8) as usize];
            let fin = if rng.below(3) == 0 { 0 } else { 0x80 };
            let rsv = if rng.below(20) == 0 { 0x40 } else { 0 };
            let masked = if rng.below(10) == 0 {
                !from_client
            } else {
                from_client
            };
            let len = [0usize, 1, 5, 125, 126, 300][rng.below(6) as usize];
            let payload: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            let mask = [rng.below(256) as u8, 7, 1, rng.below(256) as u8];
            wire.extend(raw_frame(
                fin | rsv | opcode,
                &payload,
                masked.then_some(mask),
            ));
        }
        let max = [64usize, 400, MAX_MESSAGE][rng.below(3) as usize];
        let whole = outcome(from_client, max, &wire, &[]);
        let bytewise: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(
            outcome(from_client, max, &wire, &bytewise),
            whole,
            "round {round}"
        );
        let mut cuts: Vec<usize> = (0..rng.below(5))
            .map(|_| rng.below(wire.len() as u64 + 1) as usize)
            .collect();
        cuts.sort_unstable();
        assert_eq!(
            outcome(from_client, max, &wire, &cuts),
            whole,
            "round {round}"
        );
    }
}
