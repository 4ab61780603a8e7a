//! Burro's WebSocket hooks (`ws_open.lua`, `ws_msg.lua`, `ws_close.lua`) on the engine's
//! `websocket_*` events, over real sockets: a `tungstenite` client through the proxy and
//! a `tungstenite` echo origin.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use support::*;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// A directory holding `files`; its path.
fn hooks(name: &str, files: &[(&str, &str)]) -> String {
    let dir = temp_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, source) in files {
        std::fs::write(dir.join(format!("{file}.lua")), source).unwrap();
    }
    dir.display().to_string()
}

/// A `tungstenite` origin echoing every data message; records what it got.
fn echo_origin() -> (Origin, Arc<Mutex<Vec<Message>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let origin = Origin::accepting(move |stream, _| {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        loop {
            match ws.read() {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    record.lock().unwrap().push(msg.clone());
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

fn next_message(ws: &mut WebSocket<TcpStream>) -> Message {
    loop {
        if let msg @ (Message::Text(_) | Message::Binary(_)) = ws.read().unwrap() {
            return msg;
        }
    }
}

#[test]
fn ws_hooks_see_the_session_and_change_or_drop_messages() {
    let log = |what: &str| format!(r#"kv.set("log", (kv.get("log") or "") .. {what} .. ",")"#);
    let before_request = r#"
if ctx.req.host == "log.test" then
  mut.resp.set_body(kv.get("log") or "")
  mut.ctx.set_finish()
end
"#;
    let ws_open = log(r#""open:" .. ctx.req.path .. ":" .. ctx.resp.status_code"#);
    let ws_msg = format!(
        r#"if msg.content == "drop" then msg:drop() return end
           msg.content = msg.content:upper()
           {}"#,
        log(r#""msg:" .. msg.type .. ":" .. (msg.from_client and "client" or "origin")"#)
    );
    let ws_close = log(r#""close""#);
    let dir = hooks(
        "burro_ws",
        &[
            ("before_request", before_request),
            ("ws_open", &ws_open),
            ("ws_msg", &ws_msg),
            ("ws_close", &ws_close),
        ],
    );
    let (origin, seen) = echo_origin();
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("ws.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"GET http://ws.test/chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    );
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(head.start[1], "101");
    let stream = client.stream().try_clone().unwrap();
    let mut ws =
        WebSocket::from_partially_read(stream, client.buffered().to_vec(), Role::Client, None);
    ws.send(Message::text("drop")).unwrap();
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(next_message(&mut ws), Message::text("HELLO"));
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
    let mut rest = Vec::new();
    let _ = ws.get_mut().read_to_end(&mut rest);
    assert_eq!(
        *seen.lock().unwrap(),
        [Message::text("HELLO")],
        "drop never reached it"
    );
    let text = request(proxy.addr, &get("http://log.test/", "")).text();
    assert_eq!(
        text,
        "open:/chat:101,msg:text:client,msg:text:origin,close,"
    );
}
