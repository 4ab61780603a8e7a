//! The access log as the real binary writes it: `--log-format json` lines with every
//! field, and proxy.py's default template. The binary uses the system resolver, so
//! every URL names an IP literal.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::net::SocketAddr;

use support::*;

/// One GET through the proxy; returns the response, its size on the wire and the
/// client's own address.
fn get_through(proxy: SocketAddr, url: &str) -> (Response, u64, SocketAddr) {
    let mut client = Wire::connect(proxy);
    let local = client.stream().local_addr().unwrap();
    client.send(&get(url, "Connection: close\r\n"));
    let resp = client.read_response();
    let size = (resp.raw_head.len() + resp.body.raw.len()) as u64;
    (resp, size, local)
}

#[test]
fn json_access_lines_carry_every_field() {
    let origin = Origin::fixed("logged body");
    let refused = refused_addr();
    let log_file = temp_path("access-json.log");
    let proxy = ProxyBinary::spawn(&[
        "--log-file",
        log_file.to_str().unwrap(),
        "--log-format",
        "json",
    ]);

    let (ok_resp, ok_size, ok_client) = get_through(proxy.addr, &origin.url("/logged?q=1"));
    assert_eq!(ok_resp.status, 200);
    let (bad_resp, bad_size, bad_client) =
        get_through(proxy.addr, &format!("http://{refused}/nowhere"));
    bad_resp.assert_error(502, "connection_refused");
    assert_eq!(proxy.terminate().code(), Some(0));

    let text = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for line in &lines {
        for key in ["ts", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no {key:?} in {line}");
        }
    }
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "proxy::access")
        .collect();
    assert_eq!(access.len(), 2, "access lines: {access:#?}");

    let ok_line = access[0];
    assert_eq!(ok_line["level"], "INFO");
    assert_eq!(ok_line["client"], ok_client.to_string());
    assert_eq!(ok_line["method"], "GET");
    assert_eq!(ok_line["host"], "127.0.0.1");
    assert_eq!(ok_line["port"], origin.addr.port());
    assert_eq!(ok_line["path"], "/logged?q=1");
    assert_eq!(ok_line["status"], 200);
    assert_eq!(ok_line["bytes"], ok_size);
    assert!(ok_line["ms"].as_f64().unwrap() >= 0.0, "{ok_line}");
    assert_eq!(ok_line["error.code"], "", "{ok_line}");

    let bad_line = access[1];
    assert_eq!(bad_line["client"], bad_client.to_string());
    assert_eq!(bad_line["method"], "GET");
    assert_eq!(bad_line["host"], "127.0.0.1");
    assert_eq!(bad_line["port"], refused.port());
    assert_eq!(bad_line["path"], "/nowhere");
    assert_eq!(bad_line["status"], 502);
    assert_eq!(bad_line["bytes"], bad_size);
    assert_eq!(bad_line["error.code"], "connection_refused", "{bad_line}");
}

#[test]
fn default_template_access_line_has_proxy_py_shape() {
    let origin = Origin::fixed("template body");
    let log_file = temp_path("access-template.log");
    let proxy = ProxyBinary::spawn(&["--log-file", log_file.to_str().unwrap()]);

    let pid = proxy.child.id();
    let (resp, size, client) = get_through(proxy.addr, &origin.url("/index.html"));
    assert_eq!(resp.status, 200);
    assert_eq!(proxy.terminate().code(), Some(0));

    let text = std::fs::read_to_string(&log_file).unwrap();
    let wanted = format!("{client} - GET ");
    let line = text
        .lines()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("no access line for {client} in:\n{text}"));
    // `<asctime> - pid:<pid> [I] <module>.<funcName>:<lineno> - <message>`
    let (prefix, message) = line.split_at(line.find(&wanted).unwrap());
    assert!(
        prefix.contains(&format!(" - pid:{pid} [I] ")) && prefix.ends_with(" - "),
        "prefix {prefix:?}"
    );
    let fields: Vec<&str> = message.split(" - ").collect();
    assert_eq!(fields.len(), 5, "{message:?}");
    assert_eq!(fields[0], client.to_string());
    assert_eq!(
        fields[1],
        format!("GET 127.0.0.1:{}/index.html", origin.addr.port())
    );
    assert_eq!(fields[2], "200 OK");
    assert_eq!(fields[3], format!("{size} bytes"));
    let ms = fields[4]
        .strip_suffix("ms")
        .unwrap_or_else(|| panic!("{:?}", fields[4]));
    let (whole, decimals) = ms.split_once('.').unwrap_or_else(|| panic!("{ms:?}"));
    assert!(
        !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()),
        "{ms:?}"
    );
    assert!(
        decimals.len() == 2 && decimals.bytes().all(|b| b.is_ascii_digit()),
        "{ms:?}"
    );
}

/// A request the proxy answers itself (here basic auth's 407) involved no upstream:
/// proxy.py's `None:None` then the request's path, not its whole URL.
#[test]
fn a_request_answered_without_an_upstream_logs_none_none_and_its_path() {
    let log_file = temp_path("access-none.log");
    let proxy = ProxyBinary::spawn(&[
        "--log-file",
        log_file.to_str().unwrap(),
        "--basic-auth",
        "user:pass",
    ]);
    let (resp, _, client) = get_through(proxy.addr, "http://127.0.0.1:9/a?b=1");
    assert_eq!(resp.status, 407);
    assert_eq!(proxy.terminate().code(), Some(0));
    let text = std::fs::read_to_string(&log_file).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("{client} - ")))
        .unwrap_or_else(|| panic!("no access line for {client} in:\n{text}"));
    assert!(
        line.contains(" - GET None:None/a?b=1 - 407 Proxy Authentication Required - "),
        "{line}"
    );
}
