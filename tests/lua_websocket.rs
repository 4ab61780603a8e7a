//! WebSocket messages for scripts (issue 9 item 10), over real sockets: a client that
//! upgrades through the proxy (absolute-form, as a browser configured with a proxy
//! does for `ws://`), then speaks WebSocket with `tungstenite` or with hand-made frames;
//! origins that are `tungstenite` servers or read exact bytes.
//!
//! Event order is read back from the worker's VM (one worker) through a plain request
//! that a `request` handler answers with the events seen so far; it is asked only once
//! the proxy has closed the WebSocket client connection, which happens after
//! `websocket_end` and `access_log` ran.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]
#![allow(
    clippy::result_large_err,
    reason = "tungstenite's handshake callback returns its own error type"
)]

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use support::*;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// Writes `source` to a fresh `.lua` file and returns its path.
fn script(name: &str, source: &str) -> String {
    let path = temp_path(name).with_extension("lua");
    std::fs::write(&path, source).unwrap();
    path.display().to_string()
}

/// Records events in `EVENTS`; `GET http://events.test/` answers them (and clears).
const EVENT_LOG: &str = r#"
EVENTS = {}
local function note(s) EVENTS[#EVENTS + 1] = s end
local function answer(flow)
  if flow.request.host == "events.test" then
    flow:reply(200, table.concat(EVENTS, ","))
    EVENTS = {}
    return true
  end
end
"#;

/// What an origin saw of its WebSocket connections.
#[derive(Default)]
struct Seen {
    /// The upgrade requests' `Sec-WebSocket-Extensions`, one entry per connection.
    extensions: Vec<Option<String>>,
    /// Every data message, in order.
    messages: Vec<Message>,
}

/// A `tungstenite` origin that echoes every text and binary message.
fn echo_origin() -> (Origin, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    let origin = Origin::accepting(move |stream, _| {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let record = Arc::clone(&record);
        let callback = |req: &tungstenite::handshake::server::Request,
                        resp: tungstenite::handshake::server::Response| {
            let ext = req
                .headers()
                .get("sec-websocket-extensions")
                .map(|v| v.to_str().unwrap().to_owned());
            record.lock().unwrap().extensions.push(ext);
            Ok(resp)
        };
        let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
            return;
        };
        loop {
            match ws.read() {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    record.lock().unwrap().messages.push(msg.clone());
                    if ws.send(msg).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (origin, seen)
}

/// Sends an upgrade request for `http://ws.test<path>` with `extra` headers and reads
/// the 101; the wire then carries WebSocket frames.
fn upgrade(proxy: &TestProxy, path: &str, extra: &str) -> Wire {
    let mut client = proxy.connect();
    client.send(
        format!(
            "GET http://ws.test{path} HTTP/1.1\r\n\
             Host: ws.test\r\n\
             Connection: Upgrade\r\n\
             Upgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             {extra}\r\n"
        )
        .as_bytes(),
    );
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(head.start[1], "101", "{:?}", head.start);
    client
}

/// A `tungstenite` client over an upgraded wire.
fn ws_client(wire: &Wire) -> WebSocket<TcpStream> {
    let stream = wire.stream().try_clone().unwrap();
    WebSocket::from_partially_read(stream, wire.buffered().to_vec(), Role::Client, None)
}

/// Reads the next data message, answering nothing else.
fn next_message(ws: &mut WebSocket<TcpStream>) -> Message {
    loop {
        if let msg @ (Message::Text(_) | Message::Binary(_)) = ws.read().unwrap() {
            return msg;
        }
    }
}

/// Closes from the client, reads the server's Close back, then waits for the proxy
/// to close the connection (after the session's last events ran).
fn close(mut ws: WebSocket<TcpStream>) {
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
    let mut rest = Vec::new();
    ws.get_mut().read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

/// The events the script noted since the last call.
fn events(proxy: &TestProxy) -> String {
    request(proxy.addr, &get("http://events.test/", "")).text()
}

/// A frame as sent on the wire: `first` is FIN/RSV/opcode.
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
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
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    out
}

/// Reads one frame from `wire`: (first byte, unmasked payload, the frame's bytes).
fn read_frame(wire: &mut Wire) -> (u8, Vec<u8>, Vec<u8>) {
    let mut raw = wire.read_exact_vec(2).unwrap();
    let masked = raw[1] & 0x80 != 0;
    let len = match raw[1] & 0x7f {
        126 => {
            let ext = wire.read_exact_vec(2).unwrap();
            raw.extend_from_slice(&ext);
            u16::from_be_bytes([ext[0], ext[1]]) as usize
        }
        127 => {
            let ext = wire.read_exact_vec(8).unwrap();
            raw.extend_from_slice(&ext);
            u64::from_be_bytes(ext.try_into().unwrap()) as usize
        }
        n => n as usize,
    };
    let mask = if masked {
        let m = wire.read_exact_vec(4).unwrap();
        raw.extend_from_slice(&m);
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    let body = wire.read_exact_vec(len).unwrap();
    raw.extend_from_slice(&body);
    let mut payload = body;
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    (raw[0], payload, raw)
}

/// An origin that completes the handshake by hand, then hands its wire to `then`;
/// the receiver gets the upgrade head the origin read, then whatever `then` sends.
fn raw_origin<F>(then: F) -> (Origin, Receiver<Vec<u8>>)
where
    F: Fn(&mut Wire, &Sender<Vec<u8>>) + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel();
    let origin = Origin::raw(move |mut conn| {
        let Some(head) = conn.read_head() else { return };
        tx.send(head.raw.clone()).unwrap();
        conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              \r\n",
        );
        then(&mut conn.wire, &tx);
    });
    (origin, rx)
}

fn recv(rx: &Receiver<Vec<u8>>) -> Vec<u8> {
    rx.recv_timeout(WAIT).unwrap()
}

const CLOSE: u8 = 0x88;
const MASK: [u8; 4] = [1, 2, 3, 4];

#[test]
fn messages_are_changed_both_ways_dropped_and_events_run_in_order() {
    let (origin, seen) = echo_origin();
    let path = script(
        "ws_change",
        &format!(
            r#"{EVENT_LOG}
            function request(flow) answer(flow) end
            function websocket_start(flow)
              note("start " .. flow.request.path .. " " .. flow.response.status_code)
            end
            function websocket_message(flow, msg)
              local who = msg.from_client and "c" or "s"
              note(who .. ":" .. msg.type)
              if msg.content == "drop me" then msg:drop() return end
              if msg.type == "binary" then
                msg.content = string.reverse(msg.content)
              else
                msg.content = msg.content .. " [" .. who .. " " .. flow.request.path .. "]"
              end
            end
            function websocket_end(flow) note("end") end
            function access_log(flow)
              if flow.request.host == "ws.test" then note("log " .. flow.response.status_code) end
            end"#
        ),
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let wire = upgrade(
        &proxy,
        "/chat",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    let mut ws = ws_client(&wire);

    ws.send(Message::text("hello")).unwrap();
    assert_eq!(
        next_message(&mut ws),
        Message::text("hello [c /chat] [s /chat]")
    );
    ws.send(Message::binary(vec![1u8, 2, 3, 255])).unwrap();
    assert_eq!(
        next_message(&mut ws),
        Message::binary(vec![1u8, 2, 3, 255]),
        "reversed on the way up, and back on the way down"
    );
    // 16- and 64-bit lengths, both ways.
    for len in [300usize, 70_000] {
        let big: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        ws.send(Message::binary(big.clone())).unwrap();
        assert_eq!(next_message(&mut ws), Message::binary(big));
    }
    ws.send(Message::text("drop me")).unwrap();
    // A fragmented message with a ping between its fragments.
    ws.send(Message::Frame(Frame::message(
        "frag",
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.send(Message::Ping("p".into())).unwrap();
    ws.send(Message::Frame(Frame::message(
        "mented",
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    assert_eq!(
        next_message(&mut ws),
        Message::text("fragmented [c /chat] [s /chat]")
    );
    close(ws);

    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.extensions,
        [None],
        "the permessage-deflate offer is removed"
    );
    assert_eq!(
        seen.messages,
        [
            Message::text("hello [c /chat]"),
            Message::binary(vec![255u8, 3, 2, 1]),
            Message::binary((0..300).rev().map(|i| (i % 253) as u8).collect::<Vec<u8>>()),
            Message::binary(
                (0..70_000)
                    .rev()
                    .map(|i| (i % 253) as u8)
                    .collect::<Vec<u8>>()
            ),
            Message::text("fragmented [c /chat]"),
        ],
        "the dropped message never reached the origin"
    );
    assert_eq!(
        events(&proxy),
        "start /chat 101,c:text,s:text,c:binary,s:binary,c:binary,s:binary,c:binary,s:binary,\
         c:text,c:text,s:text,end,log 101"
    );
}

#[test]
fn no_message_handler_leaves_the_raw_relay_and_the_offer_alone() {
    // An unmasked client "frame" and plain bytes pass as they are: nothing parses them.
    let (origin, rx) = raw_origin(|wire, tx| {
        tx.send(wire.read_exact_vec(9).unwrap()).unwrap();
        wire.send(&frame(0x81, b"from origin", Some(MASK)));
    });
    let path = script(
        "ws_raw",
        &format!(
            r#"{EVENT_LOG}
            function request(flow) answer(flow) end
            function websocket_start(flow) note("start") end
            function websocket_end(flow) note("end") end"#
        ),
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let mut wire = upgrade(
        &proxy,
        "/raw",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    wire.send(b"\x81\x03abc!!!!");
    wire.shutdown_write();
    let (first, payload, _) = read_frame(&mut wire);
    assert_eq!((first, payload.as_slice()), (0x81, &b"from origin"[..]));
    wire.expect_eof();
    let head = String::from_utf8(recv(&rx)).unwrap().to_ascii_lowercase();
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate\r\n"),
        "{head}"
    );
    assert_eq!(recv(&rx), b"\x81\x03abc!!!!");
    assert_eq!(
        events(&proxy),
        "start,end",
        "start and end run on the raw relay too"
    );
}

#[test]
fn unchanged_messages_pass_as_sent_and_changed_ones_are_reframed() {
    let (origin, rx) = raw_origin(|wire, tx| {
        for _ in 0..4 {
            tx.send(read_frame(wire).2).unwrap();
        }
    });
    let path = script(
        "ws_same",
        r#"function websocket_message(flow, msg)
             if msg.content == "change" then msg.content = "changed!" end
           end"#,
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let mut wire = upgrade(&proxy, "/", "");
    let first = frame(0x01, b"Hel", Some([9, 8, 7, 6]));
    let ping = frame(0x89, b"ping", Some([5, 5, 5, 5]));
    let last = frame(0x80, b"lo", Some([1, 1, 1, 1]));
    let change = frame(0x81, b"change", Some(MASK));
    wire.send(&[&first[..], &ping, &last, &change].concat());
    wire.shutdown_write();
    wire.expect_eof();
    recv(&rx); // the upgrade head
    assert_eq!(recv(&rx), ping, "the ping first, untouched");
    assert_eq!(
        recv(&rx),
        first,
        "then the unchanged message's fragments as sent"
    );
    assert_eq!(recv(&rx), last);
    let mut changed = Wire::from_bytes(recv(&rx));
    let (first_byte, payload, raw) = read_frame(&mut changed);
    assert_eq!((first_byte, payload.as_slice()), (0x81, &b"changed!"[..]));
    assert_eq!(raw[1] & 0x80, 0x80, "masked towards the server");
    assert_ne!(raw[2..6], MASK, "with a fresh key");
}

#[test]
fn protocol_violation_closes_both_sides_with_1002_and_a_stable_code() {
    let (origin, rx) = raw_origin(|wire, tx| {
        tx.send(read_frame(wire).2).unwrap();
    });
    let path = script(
        "ws_violation",
        &format!(
            r#"{EVENT_LOG}
            function request(flow) answer(flow) end
            function websocket_message(flow, msg) note("message") end
            function error(flow, err) note(err.code) end
            function websocket_end(flow) note("end") end"#
        ),
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let mut wire = upgrade(&proxy, "/", "");
    // A client frame without a mask.
    wire.send(&frame(0x81, b"naked", None));
    let (first, payload, _) = read_frame(&mut wire);
    assert_eq!(first, CLOSE);
    assert_eq!(&payload[..2], 1002u16.to_be_bytes());
    // As an endpoint does after a Close; the proxy closes once it saw that (or after a
    // short while).
    wire.shutdown_write();
    wire.expect_eof();
    recv(&rx);
    let mut to_origin = Wire::from_bytes(recv(&rx));
    let (first, payload, raw) = read_frame(&mut to_origin);
    assert_eq!((first, raw[1] & 0x80), (CLOSE, 0x80));
    assert_eq!(&payload[..2], 1002u16.to_be_bytes());
    assert_eq!(events(&proxy), "end,websocket_protocol_error");
}

#[test]
fn a_message_over_8_mib_closes_both_sides_with_1009() {
    let (origin, rx) = raw_origin(|wire, tx| {
        tx.send(read_frame(wire).2).unwrap();
    });
    let path = script(
        "ws_big",
        &format!(
            r#"{EVENT_LOG}
            function request(flow) answer(flow) end
            function websocket_message(flow, msg) note("message") end
            function error(flow, err) note(err.code) end"#
        ),
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let mut wire = upgrade(&proxy, "/", "");
    // The header announcing 9 MiB is enough: the payload is never waited for. What
    // follows of it is read and discarded while the proxy closes, so that the Close is
    // not lost to a reset.
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(9u64 << 20).to_be_bytes());
    head.extend_from_slice(&MASK);
    head.extend_from_slice(&vec![b'x'; 100 * 1024]);
    wire.send(&head);
    let (first, payload, _) = read_frame(&mut wire);
    assert_eq!((first, &payload[..2]), (CLOSE, &1009u16.to_be_bytes()[..]));
    wire.shutdown_write();
    wire.expect_eof();
    recv(&rx);
    let (first, payload, _) = read_frame(&mut Wire::from_bytes(recv(&rx)));
    assert_eq!((first, &payload[..2]), (CLOSE, &1009u16.to_be_bytes()[..]));
    assert_eq!(events(&proxy), "websocket_message_too_large");
}

#[test]
fn a_failing_handler_forwards_unless_the_script_fails_closed() {
    for fail_closed in [false, true] {
        let (origin, seen) = echo_origin();
        let path = script(
            "ws_fail",
            &format!(
                r#"FAIL_CLOSED = {fail_closed}
                function websocket_message(flow, msg)
                  if msg.from_client then error("boom") end
                end"#
            ),
        );
        let proxy = spawn_proxy(&["--plugins", &path]);
        proxy.route("ws.test", &origin);
        let wire = upgrade(&proxy, "/", "");
        let mut ws = ws_client(&wire);
        ws.send(Message::text("hello")).unwrap();
        if fail_closed {
            match ws.read().unwrap() {
                Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011),
                other => panic!("expected a Close, got {other:?}"),
            }
            assert!(seen.lock().unwrap().messages.is_empty());
        } else {
            assert_eq!(next_message(&mut ws), Message::text("hello"));
            close(ws);
        }
    }
}

#[test]
fn a_fail_closed_start_handler_closes_the_session_with_1011() {
    let (origin, rx) = raw_origin(|wire, tx| {
        tx.send(read_frame(wire).2).unwrap();
    });
    let path = script(
        "ws_start_fails",
        r#"FAIL_CLOSED = true
           function websocket_start(flow) error("no") end
           function websocket_message(flow, msg) end"#,
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let mut wire = upgrade(&proxy, "/", "");
    let (first, payload, _) = read_frame(&mut wire);
    assert_eq!((first, &payload[..2]), (CLOSE, &1011u16.to_be_bytes()[..]));
    recv(&rx);
    let (first, payload, _) = read_frame(&mut Wire::from_bytes(recv(&rx)));
    assert_eq!((first, &payload[..2]), (CLOSE, &1011u16.to_be_bytes()[..]));
}

#[test]
fn an_idle_session_ends_after_the_timeout_as_a_raw_relay_does() {
    let (origin, _seen) = echo_origin();
    let path = script(
        "ws_idle",
        &format!(
            r#"{EVENT_LOG}
            function request(flow) answer(flow) end
            function websocket_message(flow, msg) note("message") end
            function websocket_end(flow) note("end") end
            function error(flow, err) note(err.code) end"#
        ),
    );
    let proxy = spawn_proxy(&["--plugins", &path, "--timeout", "0.3"]);
    proxy.route("ws.test", &origin);
    let wire = upgrade(&proxy, "/", "");
    let mut ws = ws_client(&wire);
    ws.send(Message::text("one")).unwrap();
    assert_eq!(next_message(&mut ws), Message::text("one"));
    // Then nothing moves: the proxy closes both connections.
    let mut rest = Vec::new();
    ws.get_mut().read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(events(&proxy), "message,message,end,client_timeout");
}

#[test]
fn a_masked_frame_from_the_origin_is_a_violation_too() {
    let (origin, rx) = raw_origin(|wire, tx| {
        wire.send(&frame(0x82, b"masked", Some(MASK)));
        tx.send(read_frame(wire).2).unwrap();
    });
    let path = script(
        "ws_origin_violation",
        &format!(
            r#"{EVENT_LOG}
            function request(flow) answer(flow) end
            function websocket_message(flow, msg) note("message") end
            function error(flow, err) note(err.code) end"#
        ),
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let mut wire = upgrade(&proxy, "/", "");
    let (first, payload, _) = read_frame(&mut wire);
    assert_eq!((first, &payload[..2]), (CLOSE, &1002u16.to_be_bytes()[..]));
    wire.shutdown_write();
    wire.expect_eof();
    recv(&rx);
    let (first, payload, raw) = read_frame(&mut Wire::from_bytes(recv(&rx)));
    assert_eq!((first, &payload[..2]), (CLOSE, &1002u16.to_be_bytes()[..]));
    assert_eq!(raw[1] & 0x80, 0x80, "masked towards the origin");
    assert_eq!(events(&proxy), "websocket_protocol_error");
}

#[test]
fn a_close_from_the_origin_ends_the_session_cleanly() {
    let origin = Origin::accepting(move |stream, _| {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        let first = ws.read().unwrap();
        ws.send(first).unwrap();
        ws.close(None).unwrap();
        // Until the client's Close comes back.
        while ws.read().is_ok() {}
    });
    let path = script(
        "ws_origin_close",
        &format!(
            r#"{EVENT_LOG}
            function request(flow) answer(flow) end
            function websocket_message(flow, msg) note("message") end
            function websocket_end(flow) note("end") end
            function error(flow, err) note(err.code) end"#
        ),
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("ws.test", &origin);
    let wire = upgrade(&proxy, "/", "");
    let mut ws = ws_client(&wire);
    ws.send(Message::text("bye")).unwrap();
    assert_eq!(next_message(&mut ws), Message::text("bye"));
    // The origin's Close arrives; tungstenite answers it, then the proxy closes.
    match ws.read() {
        Ok(Message::Close(_)) => {}
        other => panic!("expected the origin's Close, got {other:?}"),
    }
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let mut rest = Vec::new();
    ws.get_mut().read_to_end(&mut rest).unwrap();
    assert_eq!(events(&proxy), "message,message,end", "no error");
}
