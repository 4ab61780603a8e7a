//! Burro-style script directories over real sockets (issue 9 item 5): loading from
//! `--plugins DIR` and `--script DIR`, each hook's event and order, the `ctx` fields,
//! every `mut` call reaching the origin or the client, `set_finish` before the upstream
//! and in a response hook, `error.lua`, `_shared.lua`, `flush.lua` at shutdown and on
//! `--script-flush-interval`, load errors, and the two examples.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]

mod support;

use std::path::PathBuf;

use support::*;

/// A directory under `plugin_examples/lua/burro/`.
fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugin_examples/lua/burro")
        .join(name)
        .display()
        .to_string()
}

/// A fresh directory holding `files` (`name` without `.lua`, source); its path with a
/// trailing `/`.
fn hooks(name: &str, files: &[(&str, &str)]) -> String {
    let dir = temp_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, source) in files {
        std::fs::write(dir.join(format!("{file}.lua")), source).unwrap();
    }
    format!("{}/", dir.display())
}

/// A `before_request.lua` that answers requests for `log.test` with the `log` kv key.
const LOG_READER: &str = r#"
if ctx.req.host == "log.test" then
  mut.resp.set_body(kv.get("log") or "")
  mut.ctx.set_finish()
  return
end
"#;

/// Lua that appends `what` to the `log` kv key.
fn append(what: &str) -> String {
    format!(r#"kv.set("log", (kv.get("log") or "") .. {what} .. ",")"#)
}

/// The `log` kv key, read through `log.test` (a connection of its own).
fn read_log(proxy: &TestProxy) -> String {
    request(proxy.addr, &get("http://log.test/", "")).text()
}

#[test]
fn each_hook_fires_in_order_on_a_keep_alive_connection() {
    let origin = Origin::fixed("hello");
    // Every entry names its client connection: the log reader's own connections
    // interleave with the first one's close.
    let entry = |name: &str| append(&format!("\"{name}:\" .. ctx.session_id"));
    let not_log = |name: &str| format!("if ctx.req.host ~= \"log.test\" then {} end", entry(name));
    let before_request = format!("{LOG_READER}\n{}", entry("before_request"));
    let (after_request, before_response, after_response) = (
        not_log("after_request"),
        not_log("before_response"),
        not_log("after_response"),
    );
    let (connect, close) = (entry("connect"), entry("close"));
    let dir = hooks(
        "order",
        &[
            ("connect", &connect),
            ("before_request", &before_request),
            ("after_request", &after_request),
            ("before_response", &before_response),
            ("after_response", &after_response),
            ("close", &close),
        ],
    );
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    {
        let mut client = proxy.connect();
        for _ in 0..2 {
            client.send(&get("http://alpha.test/", ""));
            assert_eq!(client.read_response().text(), "hello");
        }
    }
    let first = |log: &str| -> Vec<String> {
        let entries: Vec<&str> = log.split(',').filter(|e| !e.is_empty()).collect();
        let session = entries[0].rsplit(':').next().unwrap().to_owned();
        entries
            .iter()
            .filter(|e| e.rsplit(':').next() == Some(session.as_str()))
            .map(|e| e.rsplit_once(':').unwrap().0.to_owned())
            .collect()
    };
    // `close` runs once the proxy notices the client went away: poll for it.
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = first(&read_log(&proxy));
    while seen.last().map(String::as_str) != Some("close") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = first(&read_log(&proxy));
    }
    let exchange = [
        "before_request",
        "after_request",
        "before_response",
        "after_response",
    ];
    let mut want = vec!["connect"];
    want.extend(exchange);
    want.extend(exchange);
    want.push("close");
    assert_eq!(seen, want);
}

#[test]
fn ctx_fields_describe_the_request_and_the_response() {
    let origin = Origin::spawn(|_| {
        Reply::keep(response(
            200,
            &[
                ("Content-Type", "text/plain"),
                ("X-Multi", "a"),
                ("X-Multi", "b"),
            ],
            "hello",
        ))
    });
    let before_request = r#"
local r = ctx.req
mut.req.set_header("x-ctx", table.concat({
  r.proto, r.host, r.scheme, r.method, r.path, "[" .. r.query .. "]", r.url,
  tostring(r.cookies.a), tostring(r.cookies.b), tostring(r.cookies.none),
  tostring(r.content_length), tostring(r.headers["X-In"]), tostring(r.headers["x-in"]),
  tostring(r.headers["x-none"]),
  tostring(ctx.resp), tostring(ctx.is_finished),
}, " "))
mut.req.set_header("x-remote", r.remote_addr)
mut.req.set_header("x-ids", type(ctx.id) .. ":" .. ctx.id .. ":" .. ctx.session_id)
"#;
    let before_response = r#"
local s = ctx.resp
mut.resp.set_header("x-resp", table.concat({
  s.status, tostring(s.status_code), s.proto, s.headers["content-type"], s.headers["X-MULTI"],
  tostring(s.content_length), ctx.req.path, ctx.req.method,
}, " "))
"#;
    let dir = hooks(
        "fields",
        &[
            ("before_request", before_request),
            ("before_response", before_response),
        ],
    );
    let proxy = spawn_proxy(&["--script", &dir]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test:8080/p/q?x=1&y=2 HTTP/1.1\r\nHost: alpha.test:8080\r\n\
          Cookie: a=1; b=\"two\"\r\nX-In: in\r\nContent-Length: 5\r\n\r\nhello",
    );
    let resp = client.read_response();
    assert_eq!(resp.text(), "hello");
    assert_eq!(
        resp.headers.get("x-resp"),
        Some("200 OK 200 HTTP/1.1 text/plain a, b 5 /p/q POST")
    );
    client.send(&get("http://alpha.test/", ""));
    assert_eq!(client.read_response().text(), "hello");
    let seen = origin.requests();
    assert_eq!(
        seen[0].headers.get("x-ctx"),
        Some(
            "HTTP/1.1 alpha.test http POST /p/q [x=1&y=2] http://alpha.test:8080/p/q?x=1&y=2 \
             1 two nil 5 in in nil nil false"
        )
    );
    assert!(seen[0]
        .headers
        .get("x-remote")
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(seen[0].body.data, b"hello");
    // The same session, a new exchange id.
    let ids: Vec<Vec<&str>> = seen
        .iter()
        .map(|r| r.headers.get("x-ids").unwrap().split(':').collect())
        .collect();
    assert_eq!(ids[0][0], "number");
    assert_ne!(ids[0][1], ids[1][1]);
    assert_eq!(ids[0][2], ids[1][2]);
    assert!(seen[1].headers.get("x-ctx").unwrap().contains(" [] "));
}

#[test]
fn mut_req_calls_reach_the_origin() {
    let origin = Origin::echo_target();
    let other = Origin::echo_target();
    let before_request = r#"
local path = ctx.req.path
if path == "/edit" then
  mut.req.set_method("PUT")
  mut.req.set_path("/edited")
  mut.req.set_header("x-set", "1")
  mut.req.set_header("x-replaced", "new")
  mut.req.add_header("x-add", "a")
  mut.req.add_header("x-add", "b")
  mut.req.del_header("x-del")
  mut.req.set_cookie("c=3")
  mut.req.set_cookie({ name = "a", value = "9" })
  mut.req.del_cookie("b")
elseif path == "/host" then
  mut.req.set_host("beta.test")
elseif path == "/url" then
  mut.req.set_url("http://beta.test/u?x=1")
elseif path == "/scheme" then
  mut.req.set_scheme("https")
  local url = ctx.req.url
  mut.req.set_scheme("http")
  mut.req.set_header("x-https-url", url)
elseif path == "/nocookie" then
  mut.req.del_cookie("a")
end
"#;
    let dir = hooks("mut_req", &[("before_request", before_request)]);
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    proxy.route("beta.test", &other);
    let mut client = proxy.connect();
    client.send(&get(
        "http://alpha.test/edit?q=1",
        "X-Replaced: old\r\nX-Del: gone\r\nCookie: a=1; b=2\r\n",
    ));
    assert_eq!(client.read_response().text(), "/edited?q=1");
    client.send(&get("http://alpha.test/host", ""));
    assert_eq!(client.read_response().text(), "/host");
    client.send(&get("http://alpha.test/url", ""));
    assert_eq!(client.read_response().text(), "/u?x=1");
    client.send(&get("http://alpha.test/scheme", ""));
    assert_eq!(client.read_response().text(), "/scheme");
    client.send(&get("http://alpha.test/nocookie", "Cookie: a=1\r\n"));
    assert_eq!(client.read_response().text(), "/nocookie");

    let seen = origin.requests();
    let edit = &seen[0];
    assert_eq!(edit.method, "PUT");
    assert_eq!(edit.headers.get("x-set"), Some("1"));
    assert_eq!(edit.headers.get_all("x-replaced"), ["new"]);
    assert_eq!(edit.headers.get_all("x-add"), ["a", "b"]);
    assert!(!edit.headers.has("x-del"));
    assert_eq!(edit.headers.get_all("cookie"), ["a=9; c=3"]);
    assert_eq!(
        seen[1].headers.get("x-https-url"),
        Some("https://alpha.test:80/scheme")
    );
    assert!(!seen[2].headers.has("cookie"), "the last cookie removed");
    let beta = other.requests();
    assert_eq!(beta.len(), 2);
    assert_eq!(beta[0].headers.get("host"), Some("beta.test"));
    assert_eq!(beta[1].target, "/u?x=1");
}

#[test]
fn mut_resp_calls_reach_the_client_and_hooks_see_each_others_edits() {
    let origin = Origin::spawn(|_| {
        Reply::keep(response(
            200,
            &[("Server", "origin"), ("X-Keep", "k")],
            "body",
        ))
    });
    let after_request = r#"mut.resp.set_header("x-after-request", ctx.resp.status)"#;
    let before_response = r#"
mut.resp.set_status(201)
mut.resp.set_header("x-seen", ctx.resp.headers["x-after-request"] .. "/" .. ctx.resp.status)
mut.resp.add_header("x-add", "1")
mut.resp.add_header("x-add", "2")
mut.resp.del_header("server")
"#;
    let dir = hooks(
        "mut_resp",
        &[
            ("after_request", after_request),
            ("before_response", before_response),
        ],
    );
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert!(
        String::from_utf8_lossy(&resp.raw_head).starts_with("HTTP/1.1 201 Created\r\n"),
        "{}",
        String::from_utf8_lossy(&resp.raw_head)
    );
    assert_eq!(resp.text(), "body");
    assert_eq!(resp.headers.get("x-seen"), Some("200 OK/201 Created"));
    assert_eq!(resp.headers.get_all("x-add"), ["1", "2"]);
    assert_eq!(resp.headers.get("x-keep"), Some("k"));
    assert!(!resp.headers.has("server"));
}

#[test]
fn block_example_answers_403_without_contacting_the_origin() {
    let origin = Origin::fixed("allowed");
    // With and without the trailing slash, from --plugins and --script.
    let dir = example("block");
    let slash = format!("{dir}/");
    for (i, (flag, path)) in [
        ("--plugins", &dir),
        ("--plugins", &slash),
        ("--script", &dir),
    ]
    .into_iter()
    .enumerate()
    {
        let proxy = spawn_proxy(&[flag, path]);
        proxy.route("alpha.test", &origin);
        let mut client = proxy.connect();
        client.send(&get("http://alpha.test/block", ""));
        let resp = client.read_response();
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (403, "Blocked by Lua plugin"),
            "{flag} {path}"
        );
        assert_eq!(origin.requests().len(), i, "the origin was never contacted");
        client.send(&get("http://alpha.test/open", ""));
        assert_eq!(client.read_response().text(), "allowed");
    }
}

#[test]
fn after_response_sees_the_request_an_earlier_plugin_answered() {
    let origin = Origin::fixed("hello");
    let record = append(
        r#"table.concat({ ctx.req.method, ctx.req.host, ctx.req.path, ctx.req.query,
             ctx.req.headers["x-probe"] or "-", tostring(ctx.resp.status_code) }, " ")"#,
    );
    // Reads the log and the metric example's counts.
    let reader = r#"
if ctx.req.host == "log.test" then
  mut.resp.set_body((kv.get("log") or "") .. (kv.get("metric:requests:blocked.test") or "0")
    .. "/" .. (kv.get("metric:requests:alpha.test") or "0"))
  mut.ctx.set_finish()
end
"#;
    let after_response = format!("if ctx.req.host ~= \"log.test\" then {record} end");
    let dir = hooks(
        "after_answered",
        &[
            ("before_request", reader),
            ("after_response", &after_response),
        ],
    );
    // The filter answers 418, Burro's block example 403 for /block.
    let plugins = format!(
        "FilterByUpstreamHostPlugin,{},{},{dir}",
        example("block"),
        example("metric")
    );
    let proxy = spawn_proxy(&[
        "--plugins",
        &plugins,
        "--filtered-upstream-hosts",
        "blocked.test",
    ]);
    proxy.route("alpha.test", &origin);
    let status = |url: &str, extra: &str| request(proxy.addr, &get(url, extra)).status;
    assert_eq!(status("http://blocked.test/x?q=1", "X-Probe: p1\r\n"), 418);
    assert_eq!(status("http://alpha.test/block", "X-Probe: p2\r\n"), 403);
    assert_eq!(status("http://alpha.test/open", ""), 200);
    assert_eq!(
        read_log(&proxy),
        "GET blocked.test /x q=1 p1 418,GET alpha.test /block  p2 403,GET alpha.test /open  - 200,1/2"
    );
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn set_finish_alone_answers_200_with_what_was_built() {
    let origin = Origin::fixed("origin");
    let dir = hooks(
        "finish200",
        &[(
            "before_request",
            r#"
if ctx.req.path == "/empty" then mut.ctx.set_finish() return end
mut.resp.set_header("X-Built", "yes")
mut.resp.add_header("x-built", "again")
mut.resp.set_body("built here")
mut.ctx.set_finish()
mut.resp.set_header("x-after-finish", "still")
"#,
        )],
    );
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let resp = client.read_response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "built here"));
    assert_eq!(resp.headers.get("x-built"), Some("yes, again"));
    assert_eq!(resp.headers.get("x-after-finish"), Some("still"));
    client.send(&get("http://alpha.test/empty", ""));
    let resp = client.read_response();
    assert_eq!((resp.status, resp.text().as_str()), (200, ""));
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn set_finish_in_a_response_hook_skips_the_later_hooks() {
    let origin = Origin::fixed("origin body");
    let before_request = LOG_READER;
    let after_request = r#"
mut.resp.set_status(202)
if ctx.req.path == "/finish" then mut.ctx.set_finish() end
"#;
    let before_response = r#"mut.resp.set_header("x-before-response", "ran")"#;
    let after_response = format!(
        "if ctx.req.host ~= \"log.test\" then {} end",
        append(
            "ctx.req.path .. \"=\" .. tostring(ctx.is_finished) .. \":\" .. ctx.resp.status_code"
        )
    );
    let dir = hooks(
        "finish_resp",
        &[
            ("before_request", before_request),
            ("after_request", after_request),
            ("before_response", before_response),
            ("after_response", &after_response),
        ],
    );
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/finish", ""));
    let resp = client.read_response();
    assert_eq!((resp.status, resp.text().as_str()), (202, "origin body"));
    assert!(!resp.headers.has("x-before-response"));
    client.send(&get("http://alpha.test/go", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 202);
    assert_eq!(resp.headers.get("x-before-response"), Some("ran"));
    assert_eq!(read_log(&proxy), "/finish=true:202,/go=false:202,");
}

#[test]
fn error_hook_gets_err_msg_and_a_failing_hook_is_fail_open() {
    let before_request =
        format!("{LOG_READER}\nif ctx.req.path == \"/raise\" then error(\"hook failed\") end");
    let on_error = append(
        "err.code .. \"|\" .. (err.msg ~= \"\" and \"msg\" or \"?\") .. \"|\" .. ctx.req.host",
    );
    let dir = hooks(
        "errors",
        &[("before_request", &before_request), ("error", &on_error)],
    );
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.names.insert("down.test", refused_addr());
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://down.test/", ""));
    assert_eq!(resp.status, 502);
    assert_eq!(read_log(&proxy), "connection_refused|msg|down.test,");
    // A hook that raises is logged and the exchange goes on.
    let resp = request(proxy.addr, &get("http://alpha.test/raise", ""));
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
}

#[test]
fn shared_globals_are_seen_by_every_hook_and_fail_closed_applies() {
    let shared = r#"
GREETING = "hi"
function tag(where) return GREETING .. " from " .. where end
"#;
    let dir = hooks(
        "shared",
        &[
            ("_shared", shared),
            (
                "before_request",
                r#"mut.req.set_header("x-tag", tag("request"))"#,
            ),
            (
                "before_response",
                r#"mut.resp.set_header("x-tag", tag("response"))"#,
            ),
        ],
    );
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!(resp.headers.get("x-tag"), Some("hi from response"));
    assert_eq!(
        origin.requests()[0].headers.get("x-tag"),
        Some("hi from request")
    );

    let closed = hooks(
        "closed",
        &[
            ("_shared", "FAIL_CLOSED = true"),
            ("before_request", "error(\"no\")"),
        ],
    );
    let proxy = spawn_proxy(&["--plugins", &closed]);
    proxy.route("alpha.test", &origin);
    request(proxy.addr, &get("http://alpha.test/", "")).assert_error(500, "script_error");
    assert_eq!(origin.accepted(), 1);
}

#[test]
fn metric_example_counts_per_host_and_flushes_at_shutdown() {
    let origin = Origin::fixed("ok");
    let kv_file = temp_path("metric-kv").with_extension("json");
    let kv = kv_file.display().to_string();
    let proxy = ProxyBinary::spawn(&["--plugins", &example("metric"), "--kv-file", &kv]);
    let url = origin.url("/");
    let mut client = Wire::connect(proxy.addr);
    for _ in 0..3 {
        client.send(&get(&url, ""));
        assert_eq!(client.read_response().text(), "ok");
    }
    drop(client);
    let status = proxy.terminate();
    assert!(status.success(), "{status}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kv_file).unwrap()).unwrap();
    assert_eq!(saved["metric:requests:127.0.0.1"], "3", "{saved}");
    let session = saved["metric:last_flush"].as_str().unwrap();
    assert!(
        session.len() == 20 && session.ends_with('Z') && session.contains('T'),
        "{session}"
    );
}

#[test]
fn flush_runs_on_the_interval_with_a_session_name() {
    let flush = r#"
local n = tonumber((kv.get("flushes"))) or 0
kv.set("flushes", n + 1)
kv.set("log", "flushes=" .. (n + 1) .. " final=" .. tostring(opts.final) .. " session=" .. opts.session)
"#;
    let dir = hooks(
        "interval",
        &[("before_request", LOG_READER), ("flush", flush)],
    );
    let proxy = spawn_proxy(&["--plugins", &dir, "--script-flush-interval", "0.05"]);
    // The worker's VM exists from its first connection on.
    let flushes = |log: &str| -> u32 {
        log.strip_prefix("flushes=")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + WAIT;
    let mut log = read_log(&proxy);
    while flushes(&log) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        log = read_log(&proxy);
    }
    assert!(flushes(&log) >= 2, "{log}");
    assert!(log.contains(" final=false session=20"), "{log}");
}

#[test]
fn a_directory_that_does_not_load_stops_start_up_with_file_and_line() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--port", "0"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let empty = hooks("empty", &[("_shared", "x = 1"), ("notes", "-- not a hook")]);
    let (code, stderr) = run(&["--plugins", &empty]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("no hook file"), "{stderr}");

    // Lua shortens chunk names over 59 bytes to `...` and their tail: the error still
    // names the whole file.
    let syntax = hooks(
        "syntax-in-a-directory-whose-name-alone-is-longer-than-lua-keeps",
        &[
            ("before_request", "local x = 1\n"),
            ("after_request", "local a = 1\n\nif then\n"),
        ],
    );
    let raises = hooks(
        "raises",
        &[
            ("_shared", "local x = 1\nerror(\"no config\")\n"),
            ("close", ""),
        ],
    );
    for (dir, file, line) in [
        (&syntax, "after_request.lua", 3),
        (&raises, "_shared.lua", 2),
    ] {
        let trimmed = dir.trim_end_matches('/');
        for args in [["--plugins", dir.as_str()], ["--script", trimmed]] {
            let (code, stderr) = run(&args);
            assert_eq!(code, Some(64), "{stderr}");
            assert!(
                stderr.contains(&format!("{trimmed}/{file}:{line}:")),
                "{args:?}: {stderr}"
            );
        }
    }
    let (code, stderr) = run(&["--plugins", "/no/such/burro/"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("/no/such/burro"), "{stderr}");
}

#[test]
fn bodies_are_read_and_replaced_when_a_hook_mentions_them() {
    let origin = Origin::spawn(|req| {
        Reply::keep(ok(format!(
            "got {}",
            String::from_utf8_lossy(&req.body.data)
        )))
    });
    let before_request = r#"
if ctx.req.path == "/upper" then
  mut.req.set_header("x-length", ctx.req.content_length)
  mut.req.set_body(ctx.req.body:upper())
end
"#;
    let before_response = r#"
if ctx.req.path == "/upper" then
  mut.resp.set_body("[" .. ctx.resp.body .. "] " .. #ctx.req.body)
end
"#;
    let dir = hooks(
        "bodies",
        &[
            ("before_request", before_request),
            ("before_response", before_response),
        ],
    );
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/upper HTTP/1.1\r\nHost: alpha.test\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let resp = client.read_response();
    assert_eq!(resp.text(), "[got HELLO] 5");
    assert_eq!(resp.headers.get("content-length"), Some("13"));
    let seen = origin.requests();
    assert_eq!(seen[0].body.data, b"HELLO");
    assert_eq!(seen[0].headers.get("content-length"), Some("5"));
    assert_eq!(
        seen[0].headers.get("x-length"),
        Some("5"),
        "chunked, held: its length"
    );
    client.send(&get("http://alpha.test/other", ""));
    assert_eq!(client.read_response().text(), "got ");
}

#[test]
fn a_request_body_read_only_after_the_response_is_still_kept() {
    let origin = Origin::fixed("ok");
    let dir = hooks(
        "late_body",
        &[
            ("after_response", r#"kv.set("last", ctx.req.body or "nil")"#),
            (
                "before_response",
                r#"mut.resp.set_header("x-last", kv.get("last") or "none")"#,
            ),
        ],
    );
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 4\r\n\r\nfirst",
    );
    assert_eq!(client.read_response().headers.get("x-last"), Some("none"));
    client.send(&get("http://alpha.test/", ""));
    assert_eq!(client.read_response().headers.get("x-last"), Some("firs"));
}

#[test]
fn options_declared_in_shared_are_set_with_the_directory_name() {
    let dir = hooks(
        "opts",
        &[
            (
                "_shared",
                r#"options = { greeting = { default = "hi", help = "what to say" } }"#,
            ),
            (
                "before_request",
                r#"mut.req.set_header("x-greeting", options.greeting)"#,
            ),
        ],
    );
    let name = PathBuf::from(dir.trim_end_matches('/'))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let origin = Origin::fixed("ok");
    let set = format!("{name}.greeting=hello");
    let proxy = spawn_proxy(&["--plugins", &dir, "--set", &set]);
    proxy.route("alpha.test", &origin);
    request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!(
        origin.requests()[0].headers.get("x-greeting"),
        Some("hello")
    );
}

#[test]
fn set_finish_before_an_error_still_blocks() {
    let origin = Origin::fixed("origin");
    let dir = hooks(
        "finish_then_error",
        &[(
            "before_request",
            r#"
if ctx.req.path == "/admin" then
  mut.resp.set_status(403)
  mut.ctx.set_finish()
end
log.info("user " .. ctx.req.headers["x-user"])
"#,
        )],
    );
    let proxy = spawn_proxy(&["--plugins", &dir]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/admin", ""));
    assert_eq!(resp.status, 403);
    assert_eq!(origin.accepted(), 0);
    // Without the block the error is fail-open, as before.
    let resp = request(proxy.addr, &get("http://alpha.test/open", ""));
    assert_eq!((resp.status, resp.text().as_str()), (200, "origin"));
}
