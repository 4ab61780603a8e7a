//! CacheResponsesPlugin over real sockets: responses recorded byte for byte (framing
//! included) while the client gets them untouched, requests as sent upstream, decoded
//! bodies by content type, and no files for what never happened. The proxy is stopped
//! before the files are read: a stop waits for the writer thread.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};

use support::*;

const PLAIN: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Origin: yes\r\nContent-Length: 5\r\n\r\nhello";
const CHUNKED: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";

/// A proxy with CacheResponsesPlugin writing under a fresh directory, plus `extra` flags.
fn cache_proxy(extra: &[&str]) -> (TestProxy, PathBuf) {
    let dir = temp_path("cache");
    let mut args = vec!["--plugins", "CacheResponsesPlugin", "--cache-dir"];
    let dir_text = dir.to_str().unwrap().to_owned();
    args.push(&dir_text);
    args.extend_from_slice(extra);
    (spawn_proxy(&args), dir)
}

/// The files in `dir`, sorted by name (empty when `dir` does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    // Names end in the recording's number: sort on it, not lexically.
    out.sort_by_key(|p| {
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        stem.rsplit('-').next().unwrap().parse::<u64>().unwrap()
    });
    out
}

fn read(path: &Path) -> String {
    String::from_utf8(std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn responses_are_recorded_byte_for_byte_and_relayed_untouched() {
    let origin = Origin::spawn(|req| {
        Reply::keep(if req.target == "/chunked" {
            CHUNKED
        } else {
            PLAIN
        })
    });
    let (mut proxy, dir) = cache_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/plain", ""));
    let plain = client.read_response();
    assert_eq!(plain.text(), "hello");
    client.send(&get("http://alpha.test/chunked", ""));
    let chunked = client.read_response();
    assert_eq!(chunked.text(), "hello world");
    assert!(
        chunked.body.chunked,
        "the client still gets the origin's framing"
    );
    assert_eq!(
        String::from_utf8_lossy(&chunked.body.raw),
        "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    );
    drop(client);
    proxy.take_handle().stop();

    let recorded = files(&dir.join("responses"));
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let names: Vec<String> = recorded
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("alpha.test-") && n.ends_with(".txt")),
        "{names:?}"
    );
    assert_eq!(read(&recorded[0]), PLAIN);
    assert_eq!(read(&recorded[1]), CHUNKED);
    assert!(!dir.join("requests").exists() && !dir.join("content").exists());
}

#[test]
fn cache_requests_records_each_request_as_sent_upstream() {
    let origin = Origin::fixed("stored");
    let (mut proxy, dir) = cache_proxy(&["--cache-requests"]);
    proxy.route("alpha.test", &origin);
    let resp = request(
        proxy.addr,
        b"POST http://alpha.test/form HTTP/1.1\r\nHost: alpha.test\r\nProxy-Connection: keep-alive\r\nContent-Length: 3\r\n\r\na=1",
    );
    assert_eq!(resp.text(), "stored");
    let seen = origin.next_request();
    proxy.take_handle().stop();

    let requests = files(&dir.join("requests"));
    assert_eq!(requests.len(), 1, "{requests:?}");
    let text = read(&requests[0]);
    // Exactly what the origin was sent: origin-form, hop-by-hop headers gone, the body.
    assert!(text.starts_with("POST /form HTTP/1.1\r\n"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("proxy-connection"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\na=1"), "{text}");
    assert_eq!(text.as_bytes(), [seen.raw_head.as_slice(), b"a=1"].concat());
    let responses = files(&dir.join("responses"));
    assert_eq!(responses.len(), 1);
    assert!(read(&responses[0]).ends_with("stored"));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn content_by_type_writes_decoded_bodies() {
    const JSON: &str = r#"{"users": ["admin", "someone"]}"#;
    let origin = Origin::spawn(|req| {
        let bytes = match req.target.as_str() {
            // gzip inside chunked framing, split across two chunks.
            "/users" => {
                let body = gzip(JSON.as_bytes());
                let (a, b) = body.split_at(body.len() / 2);
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for part in [a, b] {
                    out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
            "/page" => CHUNKED.as_bytes().to_vec(),
            "/brotli" => b"HTTP/1.1 200 OK\r\nContent-Type: text/css\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n\x0b\x01\x80\x03".to_vec(),
            _ => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        };
        Reply::keep(bytes)
    });
    let (mut proxy, dir) = cache_proxy(&["--cache-by-content-type"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for path in ["/users", "/page", "/brotli", "/empty"] {
        client.send(&get(&format!("http://alpha.test{path}"), ""));
        let resp = client.read_response();
        assert!(resp.status == 200 || resp.status == 204, "{path}");
    }
    drop(client);
    proxy.take_handle().stop();

    assert_eq!(files(&dir.join("responses")).len(), 4);
    let content = files(&dir.join("content"));
    let names: Vec<String> = content
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(content.len(), 2, "only decodable bodies: {names:?}");
    assert!(names[0].ends_with("-0.json"), "{names:?}");
    assert_eq!(read(&content[0]), JSON);
    assert!(names[1].ends_with("-1.html"), "{names:?}");
    assert_eq!(read(&content[1]), "hello world");
}

#[test]
fn a_gzip_bomb_is_not_extracted() {
    // 64 MiB of zeros compress to about 64 KB: over the 100-fold cap on decoded
    // content, so no content file is kept; the response itself passes untouched.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    let sent = bomb.clone();
    let origin = Origin::spawn(move |_| {
        Reply::keep(response(
            200,
            &[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
            &sent,
        ))
    });
    let (mut proxy, dir) = cache_proxy(&["--cache-by-content-type"]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/bomb", ""));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.data, bomb);
    proxy.take_handle().stop();
    assert_eq!(files(&dir.join("responses")).len(), 1);
    assert_eq!(files(&dir.join("content")), Vec::<PathBuf>::new());
}

#[test]
fn failed_exchanges_leave_no_files() {
    let (mut proxy, dir) = cache_proxy(&["--cache-requests", "--cache-by-content-type"]);
    proxy.names.insert("dead.test", refused_addr());
    let resp = request(proxy.addr, &get("http://dead.test/", ""));
    resp.assert_error(502, "connection_refused");
    proxy.take_handle().stop();
    assert!(files(&dir.join("responses")).is_empty());
    assert!(files(&dir.join("content")).is_empty());
    assert!(files(&dir.join("requests")).is_empty(), "nothing was sent");
}

#[test]
fn cache_flags_without_the_plugin_touch_nothing() {
    let dir = temp_path("cache-unused");
    let _proxy = spawn_proxy(&["--cache-dir", dir.to_str().unwrap(), "--cache-requests"]);
    assert!(!dir.exists());
}

#[test]
fn an_uncreatable_cache_dir_exits_64() {
    let file = temp_path("cache-is-a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args([
            "--port",
            "0",
            "--plugins",
            "CacheResponsesPlugin",
            "--cache-dir",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cache-dir"), "{stderr}");
}
