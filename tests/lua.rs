//! Lua scripts over real sockets (issue 9, the foundation): loading from `--plugins` and
//! `--script`, the three ways to write handlers, `request`/`response` edits reaching
//! the origin and the client, reply and kill, the sandbox, the limits, fail-open and
//! fail-closed, and a script that does not load stopping start-up.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]

mod support;

use std::path::PathBuf;

use support::*;

/// A file under `plugin_examples/lua/`.
fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugin_examples/lua")
        .join(name)
        .display()
        .to_string()
}

/// Writes `source` to a fresh `.lua` file and returns its path.
fn script(name: &str, source: &str) -> String {
    let path = temp_path(name).with_extension("lua");
    std::fs::write(&path, source).unwrap();
    path.display().to_string()
}

/// Lua for scripts that keep a log: a `log` table, and `serve_log(flow)`, which answers
/// a request for `http://log.test/` with the entries joined by commas (and says so).
const LOG_PRELUDE: &str = r#"local log = {}
local function serve_log(flow)
  if flow.request.host == "log.test" then
    flow:reply(200, table.concat(log, ","))
    return true
  end
end
"#;

/// What a script written with [`LOG_PRELUDE`] has logged so far.
fn read_log(proxy: &TestProxy) -> String {
    request(proxy.addr, &get("http://log.test/", "")).text()
}

#[test]
fn add_header_example_reaches_the_origin_from_plugins_and_script() {
    let path = example("add_header.lua");
    for flag in ["--plugins", "--script"] {
        let origin = Origin::fixed("hello");
        let proxy = spawn_proxy(&[flag, &path]);
        proxy.route("alpha.test", &origin);
        let mut client = proxy.connect();
        for _ in 0..2 {
            client.send(&get("http://alpha.test/a", ""));
            let resp = client.read_response();
            assert_eq!((resp.status, resp.text().as_str()), (200, "hello"));
        }
        let seen = origin.requests();
        assert_eq!(seen.len(), 2);
        for req in seen {
            assert_eq!(req.headers.get_all("x-roxy-example"), ["true"], "{flag}");
        }
    }
}

#[test]
fn reply_answers_without_contacting_the_origin() {
    let origin = Origin::fixed("allowed");
    let proxy = spawn_proxy(&["--script", &example("block.lua")]);
    proxy.route("blocked.example", &origin);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://blocked.example/x", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 403);
    assert_eq!(resp.text(), "blocked\n");
    assert_eq!(resp.headers.get("content-type"), Some("text/plain"));
    assert_eq!(origin.accepted(), 0, "the origin was never contacted");
    // The connection is kept, and other hosts pass.
    client.send(&get("http://alpha.test/", ""));
    assert_eq!(client.read_response().text(), "allowed");
    assert_eq!(origin.accepted(), 1);
}

#[test]
fn kill_closes_the_client_connection_without_a_response() {
    let origin = Origin::fixed("hello");
    let path = script(
        "kill",
        r#"function request(flow)
             if flow.request.path == "/kill" then flow:kill() end
           end"#,
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/ok", ""));
    assert_eq!(client.read_response().text(), "hello");
    client.send(&get("http://alpha.test/kill", ""));
    client.expect_eof();
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn response_status_reason_and_headers_reach_the_client() {
    let origin = Origin::spawn(|req| {
        let status = if req.target.starts_with("/missing") {
            "404 Not Found"
        } else {
            "200 OK"
        };
        Reply::keep(format!(
            "HTTP/1.1 {status}\r\nServer: origin\r\nContent-Length: 2\r\n\r\nhi"
        ))
    });
    let proxy = spawn_proxy(&["--plugins", &example("response_status.lua")]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/missing?q=1", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 410);
    assert!(
        String::from_utf8_lossy(&resp.raw_head).starts_with("HTTP/1.1 410 Gone\r\n"),
        "{}",
        String::from_utf8_lossy(&resp.raw_head)
    );
    assert_eq!(resp.text(), "hi");
    assert_eq!(resp.headers.get("x-served-by"), Some("lua"));
    assert!(!resp.headers.has("server"));
    assert_eq!(resp.headers.get("x-request-path"), Some("/missing?q=1"));
    // Same connection: a 200 passes with its status, the headers still edited.
    client.send(&get("http://alpha.test/found", ""));
    let resp = client.read_response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "hi"));
    assert_eq!(resp.headers.get("x-request-path"), Some("/found"));
}

#[test]
fn extensions_objects_keep_state_in_self() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&["--script", &example("counter.lua")]);
    proxy.route("alpha.test", &origin);
    for _ in 0..3 {
        // A new connection each time: the count lives in the worker's VM.
        let mut client = proxy.connect();
        client.send(&get("http://alpha.test/", ""));
        assert_eq!(client.read_response().status, 200);
    }
    let counts: Vec<String> = origin
        .requests()
        .iter()
        .map(|r| r.headers.get("x-request-count").unwrap().to_owned())
        .collect();
    assert_eq!(counts, ["1", "2", "3"]);
}

#[test]
fn request_fields_read_and_assigned_change_what_is_sent() {
    let origin = Origin::echo_target();
    let path = script(
        "fields",
        r#"
        return {
          request = function(flow)
            local r = flow.request
            r.headers["x-seen"] = table.concat({
              r.method, r.scheme, r.host, tostring(r.port), r.path, r.query or "-",
              r.version, r.url, tostring(r.headers["X-In"]), tostring(r.headers["x-none"]),
              table.concat(r.headers:get_all("x-multi"), "+"),
            }, " ")
            r.headers["x-in"] = nil
            r.headers:add("x-added", "1")
            r.headers:add("x-added", "2")
            if flow.request.path == "/old" then
              r.path = "/new?z=9"
              r.method = "POST"
            end
            flow.metadata.n = (flow.metadata.n or 0) + 1
            r.headers["x-meta"] = flow.metadata.n
            r.headers["x-id"] = type(flow.id)
            r.headers["x-client"] = flow.client_addr
            local sc = flow.server_conn
            r.headers["x-server"] = sc.address .. " " .. sc.host .. " " .. sc.port .. " " .. tostring(sc.tls)
          end,
        }"#,
    );
    let proxy = spawn_proxy(&["--plugins", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get(
        "http://alpha.test:8080/p?a=b",
        "X-In: 1\r\nX-Multi: a\r\nX-Multi: b\r\n",
    ));
    assert_eq!(client.read_response().text(), "/p?a=b");
    client.send(&get("http://alpha.test/old", ""));
    assert_eq!(client.read_response().text(), "/new?z=9");
    let seen = origin.requests();
    assert_eq!(
        seen[0].headers.get("x-seen"),
        Some("GET http alpha.test 8080 /p?a=b a=b HTTP/1.1 http://alpha.test:8080/p?a=b 1 nil a+b")
    );
    assert!(!seen[0].headers.has("x-in"));
    assert_eq!(seen[0].headers.get_all("x-added"), ["1", "2"]);
    assert_eq!(
        seen[0].headers.get("x-meta"),
        Some("1"),
        "metadata is per exchange"
    );
    assert_eq!(seen[1].headers.get("x-meta"), Some("1"));
    assert_eq!(seen[0].headers.get("x-id"), Some("number"));
    assert!(seen[0]
        .headers
        .get("x-client")
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        seen[0].headers.get("x-server"),
        Some("alpha.test:8080 alpha.test 8080 false")
    );
    assert_eq!(seen[1].method, "POST");
}

#[test]
fn plugins_scripts_run_in_command_line_order_then_script_ones() {
    let origin = Origin::fixed("ok");
    let a = script(
        "order-a",
        r#"function request(f) f.request.headers:add("x-order", "a") end"#,
    );
    let b = script(
        "order-b",
        r#"function request(f) f.request.headers:add("x-order", "b") end"#,
    );
    let c = script(
        "order-c",
        r#"function request(f) f.request.headers:add("x-order", "c") end"#,
    );
    // --script c comes first on the command line, but --script files follow --plugins.
    let proxy = spawn_proxy(&["--script", &c, "--plugins", &a, "--plugins", &b]);
    proxy.route("alpha.test", &origin);
    request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!(
        origin.requests()[0].headers.get_all("x-order"),
        ["a", "b", "c"]
    );
}

#[test]
fn a_script_that_does_not_load_stops_start_up_with_file_and_line() {
    // Lua shortens chunk names over 59 bytes to `...` and their tail: the error still
    // names the whole file.
    let bad = script(
        "syntax-in-a-file-whose-name-alone-is-longer-than-lua-would-keep",
        "function request(flow)\n  if then\nend\n",
    );
    let raises = script("raises", "local x = 1\nerror(\"no config\")\n");
    for (path, line) in [(&bad, 2), (&raises, 2)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--port", "0", "--script", path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(&format!("{path}:{line}:")), "{stderr}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["--port", "0", "--plugins", "/no/such/script.lua"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/script.lua"));
    // Lua gives a memory error no place: it is named at the line the script was running.
    let hungry = script(
        "hungry-at-load",
        "local t = {}\n\nwhile true do t[#t + 1] = string.rep(\"x\", 4096) .. #t end\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["--port", "0", "--script", &hungry])
        .args(["--script-memory-limit", "4000000"])
        .args(["--script-instruction-limit", "1000000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("{hungry}:3: memory limit: not enough memory")),
        "{stderr}"
    );
}

#[test]
fn sandbox_refuses_each_forbidden_call_and_the_exchange_goes_on() {
    let origin = Origin::fixed("ok");
    let path = script(
        "sandbox",
        r#"
        local checks = {
          os_execute = function() return os.execute("true") end,
          os_exit = function() os.exit(1) end,
          os_remove = function() return os.remove("/tmp/none") end,
          os_rename = function() return os.rename("/tmp/none", "/tmp/none2") end,
          os_getenv = function() return os.getenv("HOME") end,
          io_open = function() return io.open("/etc/hostname") end,
          io_popen = function() return io.popen("true") end,
          loadlib = function() return package.loadlib("libc.so.6", "puts") end,
          c_require = function() assert(package.searchers[3] or package.cpath ~= "") end,
          debug = function() return debug.getinfo(1) end,
          dofile = function() return dofile("/etc/hostname") end,
          loadfile = function() return loadfile("/etc/hostname") end,
          binary_chunk = function()
            return assert(load(string.dump(function() return 1 end)))()
          end,
        }
        function request(flow)
          local allowed = {}
          for name, check in pairs(checks) do
            if pcall(check) then allowed[#allowed + 1] = name end
          end
          table.sort(allowed)
          flow.request.headers["x-allowed"] = #allowed == 0 and "none" or table.concat(allowed, ",")
          assert(load("return 1 + 1")() == 2, "text chunks still load")
          flow.request.headers["x-text-load"] = "ok"
          os.execute("true") -- raises: logged, and the exchange goes on (fail-open)
        end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&get("http://alpha.test/", ""));
        assert_eq!(client.read_response().text(), "ok");
    }
    let seen = origin.requests();
    assert_eq!(seen[0].headers.get("x-allowed"), Some("none"));
    assert_eq!(seen[0].headers.get("x-text-load"), Some("ok"));
    assert_eq!(seen.len(), 2);
}

#[test]
fn the_instruction_budget_ends_a_runaway_handler_and_the_request_is_answered() {
    let origin = Origin::fixed("ok");
    let path = script(
        "loop",
        r#"function request(flow)
             if flow.request.path == "/pcall" then
               while true do pcall(function() while true do end end) end

             end
             while true do end
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path, "--script-instruction-limit", "200000"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for path in ["/", "/pcall", "/"] {
        client.send(&get(&format!("http://alpha.test{path}"), ""));
        assert_eq!(client.read_response().text(), "ok", "{path}");
    }
    assert_eq!(origin.requests().len(), 3);
}

#[test]
fn the_memory_cap_ends_a_hungry_handler_and_the_request_is_answered() {
    let origin = Origin::fixed("ok");
    let path = script(
        "hungry",
        r#"function request(flow)
             local t = {}
             while true do t[#t + 1] = string.rep("x", 4096) .. #t end
           end"#,
    );
    // The binary, for its log: the error names the script's file and the line it was
    // running. (An IP literal: the binary uses the system resolver.)
    let log_file = temp_path("lua-memory.log");
    let proxy = ProxyBinary::spawn(&[
        "--script",
        &path,
        "--script-memory-limit",
        "4000000",
        "--script-instruction-limit",
        "1000000000",
        "--log-file",
        &log_file.display().to_string(),
    ]);
    let mut client = Wire::connect(proxy.addr);
    for _ in 0..2 {
        client.send(&get(&origin.url("/"), ""));
        assert_eq!(client.read_response().text(), "ok");
    }
    drop(client);
    assert_eq!(proxy.terminate().code(), Some(0));
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains(&format!("script {path}:3: memory limit: not enough memory")),
        "{log}"
    );
}

#[test]
fn fail_closed_answers_500_and_fail_open_goes_on() {
    let origin = Origin::fixed("ok");
    let closed = script(
        "closed",
        "FAIL_CLOSED = true\nfunction request(flow) error(\"boom\") end\n",
    );
    let proxy = spawn_proxy(&["--script", &closed]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    resp.assert_error(500, "script_error");
    // The script's path and error text are for the log, not for the client.
    let status = resp.headers.get("proxy-status").unwrap();
    assert!(
        !status.contains("details") && !status.contains("boom"),
        "{status}"
    );
    assert_eq!(origin.accepted(), 0);

    let open = script("open", "function response(flow) error(\"boom\") end\n");
    let proxy = spawn_proxy(&["--script", &open]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
}

#[test]
fn flow_reply_from_response_replaces_the_origin_response() {
    let origin = Origin::fixed("secret");
    let path = script(
        "replace",
        r#"function response(flow)
             if flow.request.host == "alpha.test" then
               flow:reply(451, "unavailable\n")
             end
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!((resp.status, resp.text().as_str()), (451, "unavailable\n"));
}

#[test]
fn events_fire_in_order_on_a_keep_alive_connection() {
    let origin = Origin::fixed("hello");
    let path = script(
        "events",
        r#"local log = {}
           local function add(s) log[#log + 1] = s end
           function client_connect(conn)
             add("connect:" .. (conn.id > 0 and "id" or "?") .. ":" .. (conn.client_addr and "addr" or "?"))
           end
           function request(flow)
             if flow.request.host == "log.test" then
               flow:reply(200, table.concat(log, ","))
               return
             end
             add("request")
           end
           function response(flow) add("response") end
           function access_log(flow)
             if flow.request.host ~= "log.test" then
               add("log:" .. tostring(flow.response.status_code))
             end
           end
           function client_disconnect(conn) add("disconnect") end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    {
        let mut client = proxy.connect();
        for _ in 0..2 {
            client.send(&get("http://alpha.test/", ""));
            assert_eq!(client.read_response().text(), "hello");
        }
    }
    // The disconnect is seen once the proxy notices the close.
    let mut text = String::new();
    for _ in 0..50 {
        text = request(proxy.addr, &get("http://log.test/", "")).text();
        if text.contains("disconnect") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        text.starts_with(
            "connect:id:addr,request,response,log:200,request,response,log:200,disconnect"
        ),
        "{text}"
    );
}

#[test]
fn replace_swaps_the_whole_response_and_url_assignment_redirects() {
    let origin = Origin::fixed("secret");
    let other = Origin::fixed("other");
    let path = script(
        "replace_url",
        r#"function request(flow)
             if flow.request.path == "/moved" then
               flow.request.url = "http://beta.test/new?x=1"
             end
           end
           function response(flow)
             if flow.request.path == "/swap" then
               flow:replace({status_code = 418, reason = "Teapot", headers = {["x-swapped"] = "yes"}, body = "tea\n"})
             end
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    proxy.route("beta.test", &other);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/swap", ""));
    let resp = client.read_response();
    assert_eq!((resp.status, resp.text().as_str()), (418, "tea\n"));
    assert!(String::from_utf8_lossy(&resp.raw_head).starts_with("HTTP/1.1 418 Teapot\r\n"));
    assert_eq!(resp.headers.get("x-swapped"), Some("yes"));
    client.send(&get("http://alpha.test/moved", ""));
    assert_eq!(client.read_response().text(), "other");
    let seen = other.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/new?x=1");
}

#[test]
fn error_gets_the_stable_code_and_access_log_the_status_the_client_got() {
    let path = script(
        "errors",
        &[
            LOG_PRELUDE,
            r#"function request(flow) serve_log(flow) end
           function access_log(flow)
             if flow.request.host ~= "log.test" then
               log[#log + 1] = "log:" .. tostring(flow.response and flow.response.status_code)
             end
           end
           -- In a returned table: a global `error` would hide Lua's own.
           return { error = function(flow, err)
             log[#log + 1] = table.concat({ err.code, err.target_host, err.method, err.phase,
               tostring(err.target_port), err.url, err.client_ip, err.clientIP,
               type(err.timestamp), flow.error.code }, ":")
           end }"#,
        ]
        .concat(),
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.names.insert("down.test", refused_addr());
    let resp = request(proxy.addr, &get("http://down.test/", ""));
    assert_eq!(resp.status, 502);
    let text = read_log(&proxy);
    assert!(
        text.starts_with(
            "connection_refused:down.test:GET:connect:80:http://down.test/:127.0.0.1:127.0.0.1:number:connection_refused,log:502"
        ),
        "{text}"
    );
}

#[test]
fn access_log_and_error_see_the_request_an_earlier_plugin_answered() {
    let origin = Origin::fixed("fine");
    // Answers or fails some requests itself: the script after it never sees `request`.
    let first = script(
        "answers_first",
        r#"FAIL_CLOSED = true
           function request(flow)
             if flow.request.path == "/mine" then flow:reply(403, "mine\n") end
             if flow.request.path == "/broken" then error("boom") end
           end"#,
    );
    let later = script(
        "logs_later",
        &[
            LOG_PRELUDE,
            r#"function request(flow) serve_log(flow) end
           function access_log(flow)
             local r = flow.request
             if r.host ~= "log.test" then
               log[#log + 1] = table.concat({ r.method, r.host, r.path,
                 r.headers["x-probe"] or "-", tostring(flow.response.status_code) }, " ")
             end
           end
           return { error = function(flow, err)
             log[#log + 1] = table.concat({ "error", err.code, err.target_host, flow.request.path }, " ")
           end }"#,
        ]
        .concat(),
    );
    let plugins = format!("FilterByUpstreamHostPlugin,{first},{later}");
    let proxy = spawn_proxy(&[
        "--plugins",
        &plugins,
        "--filtered-upstream-hosts",
        "blocked.test",
    ]);
    proxy.route("alpha.test", &origin);
    let status = |url: &str, extra: &str| request(proxy.addr, &get(url, extra)).status;
    assert_eq!(status("http://blocked.test/x?q=1", "X-Probe: p1\r\n"), 418);
    assert_eq!(status("http://alpha.test/mine", "X-Probe: p2\r\n"), 403);
    assert_eq!(status("http://alpha.test/broken", ""), 500);
    assert_eq!(status("http://alpha.test/fine", ""), 200);
    assert_eq!(
        read_log(&proxy),
        "GET blocked.test /x?q=1 p1 418,\
         GET alpha.test /mine p2 403,\
         error script_error alpha.test /broken,\
         GET alpha.test /broken - 500,\
         GET alpha.test /fine - 200"
    );
    assert_eq!(origin.requests().len(), 1);
}

// === bodies (BODIES opt-in) ===

/// `POST url` with a Content-Length body.
fn post(url: &str, body: &[u8]) -> Vec<u8> {
    let host = url
        .split("//")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let mut out = format!(
        "POST {url} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[test]
fn request_bodies_are_read_and_replaced_with_an_exact_length() {
    // The origin echoes the body it got.
    let origin = Origin::spawn(|req| Reply::keep(ok(&req.body.data)));
    let path = script(
        "request_bodies",
        r#"BODIES = { request = true }
           function request(flow)
             local body = flow.request.body
             flow.request.headers["x-seen-length"] = tostring(#body)
             if flow.request.path == "/upper" then
               flow.request.body = string.upper(body)
             elseif flow.request.path == "/add" then
               flow.request.body = "added"
             end
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    // Content-Length body, changed.
    client.send(&post("http://alpha.test/upper", b"hello body"));
    assert_eq!(client.read_response().text(), "HELLO BODY");
    // Chunked body, changed: sent on with an exact length.
    client.send(
        b"POST http://alpha.test/upper HTTP/1.1\r\nHost: alpha.test\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n3\r\ned!\r\n0\r\n\r\n",
    );
    assert_eq!(client.read_response().text(), "CHUNKED!");
    // A GET gets a body; one left alone passes unchanged.
    client.send(&get("http://alpha.test/add", ""));
    assert_eq!(client.read_response().text(), "added");
    client.send(&post("http://alpha.test/same", b"as is"));
    assert_eq!(client.read_response().text(), "as is");
    let seen = origin.requests();
    assert_eq!(seen.len(), 4, "one keep-alive connection carried all four");
    let lengths: Vec<&str> = seen
        .iter()
        .map(|r| r.headers.get("x-seen-length").unwrap())
        .collect();
    assert_eq!(lengths, ["10", "8", "0", "5"]);
    assert_eq!(seen[1].headers.get("content-length"), Some("8"));
    assert!(!seen[1].headers.has("transfer-encoding"));
    assert_eq!(seen[2].headers.get("content-length"), Some("5"));
    assert!(seen.iter().all(|r| r.conn == 0));
}

#[test]
fn response_bodies_are_read_whole_and_replaced() {
    // A chunked response from the origin.
    let origin = Origin::spawn(|req| {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: yes\r\n\r\n";
        if req.method == "HEAD" {
            return Reply::keep(head);
        }
        let body = format!("body of {}", req.target);
        Reply::keep(format!("{head}{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes())
    });
    let path = script(
        "response_bodies",
        r#"BODIES = { response = true }
           function response(flow)
             local r = flow.response
             r.headers["x-original-length"] = tostring(#r.body)
             if flow.request.path == "/swap" then
               r.body = "swapped: " .. r.body
               r.status_code = 201
             elseif flow.request.path == "/reply" then
               flow:reply(202, "replied")
             end
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/swap", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.text(), "swapped: body of /swap");
    assert_eq!(resp.headers.get("content-length"), Some("22"));
    assert!(!resp.headers.has("transfer-encoding"));
    assert_eq!(resp.headers.get("x-original-length"), Some("13"));
    assert_eq!(resp.headers.get("x-origin"), Some("yes"));
    // Unchanged bodies are sent whole too, and the connections are kept.
    client.send(&get("http://alpha.test/keep", ""));
    let resp = client.read_response();
    assert_eq!(resp.text(), "body of /keep");
    assert_eq!(resp.headers.get("content-length"), Some("13"));
    client.send(&get("http://alpha.test/reply", ""));
    assert_eq!(client.read_response().text(), "replied");
    // HEAD: the handler runs, no body is sent.
    client.send(b"HEAD http://alpha.test/head HTTP/1.1\r\nHost: alpha.test\r\n\r\n");
    let resp = client.read_response_to("HEAD");
    assert_eq!(resp.status, 200);
    client.send(&get("http://alpha.test/last", ""));
    assert_eq!(client.read_response().text(), "body of /last");
    let conns: Vec<usize> = origin.requests().iter().map(|r| r.conn).collect();
    assert_eq!(
        conns,
        [0, 0, 0, 0, 0],
        "the upstream connection was reused throughout"
    );
}

#[test]
fn bodies_over_the_limit_are_refused_or_passed_untouched() {
    let big = pattern(8 * 1024 * 1024 + 1);
    let sum = checksum(&big);
    let served = big.clone();
    let origin = Origin::spawn(move |req| {
        if req.target == "/big" {
            Reply::keep(ok(&served))
        } else {
            Reply::keep(ok(format!("got {}", req.body.data.len())))
        }
    });
    let path = script(
        "big_bodies",
        r#"BODIES = { request = true, response = true }
           function request(flow) end
           function response(flow)
             flow.response.headers["x-body"] = flow.response.body == nil and "nil" or "string"
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    // A request body over 8 MiB: 413, the origin never sees it.
    let resp = request(proxy.addr, &post("http://alpha.test/up", &big));
    resp.assert_error(413, "http_request_body_too_large");
    // A response body over 8 MiB passes whole, unseen by the handler.
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/big", ""));
    let resp = client.read_response();
    assert_eq!(resp.headers.get("x-body"), Some("nil"));
    assert_eq!(resp.body.data.len(), big.len());
    assert_eq!(checksum(&resp.body.data), sum);
    client.send(&get("http://alpha.test/small", ""));
    let resp = client.read_response();
    assert_eq!(resp.text(), "got 0");
    assert_eq!(resp.headers.get("x-body"), Some("string"));
}

/// A request the proxy refuses before any plugin runs (here a body over the 8 MiB a
/// body-reading script may get: 413) still reaches the scripts' `access_log`.
#[test]
fn access_log_sees_a_request_refused_before_the_scripts_ran() {
    let origin = Origin::fixed("fine");
    let path = script(
        "refused_seen",
        &[
            LOG_PRELUDE,
            r#"BODIES = { request = true }
           function request(flow) serve_log(flow) end
           function access_log(flow)
             if flow.request.host ~= "log.test" then
               log[#log + 1] = flow.request.method .. " " .. flow.request.host .. flow.request.path
             end
           end"#,
        ]
        .concat(),
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let big = vec![b'x'; 9 << 20];
    let resp = request(proxy.addr, &post("http://alpha.test/up", &big));
    resp.assert_error(413, "http_request_body_too_large");
    assert_eq!(read_log(&proxy), "POST alpha.test/up");
}

#[test]
fn without_bodies_a_script_sees_nil_and_cannot_assign() {
    let origin = Origin::spawn(|req| Reply::keep(ok(&req.body.data)));
    let path = script(
        "no_bodies",
        r#"function request(flow)
             flow.request.headers["x-body"] = tostring(flow.request.body)
             flow.request.body = "changed"
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &post("http://alpha.test/", b"original"));
    // Fail-open: the assignment raised; the body went through untouched.
    assert_eq!(resp.text(), "original");
    assert_eq!(origin.requests()[0].headers.get("x-body"), Some("nil"));
}

// === options and commands ===

#[test]
fn set_changes_an_option_and_configure_sees_it() {
    let origin = Origin::fixed("allowed");
    let proxy = spawn_proxy(&[
        "--plugins",
        &format!(
            "{},proxy.plugin.FilterByClientIpPlugin",
            example("block.lua")
        ),
        "--set",
        "block.hosts=ads.example,track.example",
    ]);
    for host in ["ads.example", "track.example", "blocked.example"] {
        proxy.route(host, &origin);
    }
    let mut client = proxy.connect();
    // The script answers first; a host it lets through meets the next plugin, which
    // refuses loopback clients by default (proxy.py's 418).
    for (host, status) in [
        ("ads.example", 403),
        ("track.example", 403),
        ("blocked.example", 418),
    ] {
        client.send(&get(&format!("http://{host}/"), ""));
        assert_eq!(client.read_response().status, status, "{host}");
    }
}

#[test]
fn set_errors_stop_start_up_and_commands_are_listed() {
    let block = example("block.lua");
    let dir = temp_path("set-options");
    std::fs::create_dir_all(&dir).unwrap();
    let typed = dir.join("typed.lua").display().to_string();
    std::fs::write(
        &typed,
        r#"options = { n = { default = 3 }, on = { default = false }, ratio = 0.5, name = "x" }
           function request(flow)
             flow:reply(200, string.format("%d %s %.2f %s", options.n, tostring(options.on),
                                           options.ratio, options.name))
           end"#,
    )
    .unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "typed.n=three"], "expected an integer"),
        (&["--set", "typed.on=maybe"], "expected a boolean"),
        (&["--set", "typed.ratio=x"], "expected a number"),
        (
            &["--set", "typed.missing=1"],
            "declares no option \"missing\"",
        ),
        (
            &["--set", "other.n=1"],
            "no loaded script is named \"other\"",
        ),
        (&["--set", "nodot"], "expected SCRIPT.NAME=VALUE"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["--script", typed.as_str()];
        args.extend_from_slice(extra);
        let out = ProxyBinary::run_to_end(&args);
        assert_eq!(out.status.code(), Some(64), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
    }
    // Good values reach the handler.
    let origin = Origin::fixed("unused");
    let proxy = spawn_proxy(&[
        "--script",
        &typed,
        "--set",
        "typed.n=7",
        "--set",
        "typed.on=yes",
        "--set",
        "typed.ratio=1.25",
        "--set",
        "typed.name=a=b",
    ]);
    proxy.route("alpha.test", &origin);
    assert_eq!(
        request(proxy.addr, &get("http://alpha.test/", "")).text(),
        "7 true 1.25 a=b"
    );
    // --list-commands prints script.command and its help, then exits.
    let out = ProxyBinary::run_to_end(&["--script", &block, "--list-commands"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "block.blocked\tthe hosts being blocked\n"
    );
}

#[test]
fn a_flow_kept_past_its_exchange_sees_nothing_of_the_next() {
    let origin = Origin::fixed("hello");
    let path = script(
        "kept_flow",
        r#"local kept, kept_headers
           function request(flow)
             if kept then
               local ok, err = pcall(function() return kept.request.method end)
               local hok, herr = pcall(function() return kept_headers["host"] end)
               local sok, serr = pcall(function() kept.request.path = "/stolen" end)
               flow.request.headers["x-stale"] = table.concat({
                 tostring(ok), tostring(err):match("event is over") or tostring(err),
                 tostring(hok), tostring(herr):match("event is over") or tostring(herr),
                 tostring(sok), tostring(serr):match("event is over") or tostring(serr),
                 tostring(kept) }, ",")
             end
             kept, kept_headers = flow, flow.request.headers
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for _ in 0..2 {
        client.send(&get("http://alpha.test/a", ""));
        assert_eq!(client.read_response().text(), "hello");
    }
    let seen = origin.requests();
    assert_eq!(seen[0].headers.get("x-stale"), None);
    assert_eq!(
        seen[1].headers.get("x-stale"),
        Some("false,event is over,false,event is over,false,event is over,flow (over)")
    );
    assert_eq!(seen[1].target, "/a");
}

#[test]
fn tiri_interceptors_example_changes_both_heads() {
    let origin =
        Origin::spawn(|_| Reply::keep(response(200, &[("Cache-Control", "max-age=60")], "ok")));
    let proxy = spawn_proxy(&["--script", &example("tiri_interceptors.lua")]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", "User-Agent: curl/8\r\n"));
    let resp = client.read_response();
    assert_eq!(resp.text(), "ok");
    assert_eq!(resp.headers.get_all("cache-control"), ["no-cache"]);
    let seen = origin.requests();
    assert_eq!(seen[0].headers.get_all("user-agent"), ["Kotuku-Proxy/1.0"]);
    // The same flow id on both sides.
    let id = seen[0].headers.get("x-flow-id").unwrap();
    assert!(id.parse::<u64>().unwrap() > 0);
    assert_eq!(resp.headers.get("x-proxy-flow"), Some(id));
}

#[test]
fn mitmproxy_add_header_example_reaches_the_client() {
    let origin = Origin::fixed("hello");
    let proxy = spawn_proxy(&["--script", &example("mitmproxy_add_header.lua")]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!(resp.text(), "hello");
    assert_eq!(resp.headers.get("newheader"), Some("foo"));
}

#[test]
fn mitmproxy_event_names_run_as_written() {
    let origin = Origin::fixed("hello");
    let path = script(
        "mitm_events",
        r#"local log = {}
           function start() log[#log + 1] = "start" end
           function clientconnect(conn) log[#log + 1] = "clientconnect" end
           function request(flow)
             if flow.request.host == "log.test" then
               flow:reply(200, table.concat(log, ","))
             else
               log[#log + 1] = "request"
             end
           end
           function response(flow) log[#log + 1] = "response" end
           function clientdisconnect(conn) log[#log + 1] = "clientdisconnect" end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    {
        let mut client = proxy.connect();
        client.send(&get("http://alpha.test/", ""));
        assert_eq!(client.read_response().text(), "hello");
    }
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    assert_eq!(client.read_response().text(), "hello");
    client.send(&get("http://log.test/", ""));
    let text = client.read_response().text();
    // Each worker VM runs `start` once; the first connection's disconnect may still be
    // on its way, so only its prefix is fixed.
    assert!(
        text.starts_with("start,clientconnect,request,response,"),
        "{text}"
    );
    assert!(text.ends_with("clientconnect,request,response"), "{text}");
}

// === intercept / resume ===

const PAUSING: &str = r#"local waiting = {}
   function request(flow)
     local path = flow.request.path
     if path == "/pause" then
       flow:intercept()
       waiting[#waiting + 1] = flow
     elseif path == "/resume" then
       local n = #waiting
       for _, f in ipairs(waiting) do f:resume() end
       waiting = {}
       flow:reply(200, tostring(n))
     end
   end"#;

#[test]
fn a_paused_flow_waits_until_another_handler_resumes_it() {
    let origin = Origin::fixed("went on");
    let path = script("pausing", PAUSING);
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut paused = proxy.connect();
    paused.send(&get("http://alpha.test/pause", ""));
    // Another connection resumes it once it is waiting (each try answers how many it
    // resumed; the first request may not have reached its handler yet).
    let mut resumed = 0;
    for _ in 0..1000 {
        resumed = request(proxy.addr, &get("http://alpha.test/resume", ""))
            .text()
            .parse()
            .unwrap();
        if resumed > 0 {
            break;
        }
    }
    assert_eq!(resumed, 1);
    assert_eq!(paused.read_response().text(), "went on");
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn a_paused_flow_nobody_resumes_times_out_with_a_stable_code() {
    let origin = Origin::fixed("never");
    let path = script("pausing_alone", PAUSING);
    let proxy = spawn_proxy(&["--script", &path, "--timeout", "1"]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/pause", ""));
    resp.assert_error(504, "flow_paused_timeout");
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn done_runs_once_per_worker_at_shutdown() {
    let kv_file = temp_path("done-kv").with_extension("json");
    let path = script(
        "done",
        r#"local seen = 0
           function request(flow) seen = seen + 1 end
           function done()
             local n = tonumber((kv.get("done"))) or 0
             kv.set("done", tostring(n + 1))
             kv.set("seen", tostring(seen))
           end"#,
    );
    let origin = Origin::fixed("hello");
    let proxy = ProxyBinary::spawn(&[
        "--script",
        &path,
        "--kv-file",
        &kv_file.display().to_string(),
    ]);
    let resp = request(proxy.addr, &get(&origin.url("/"), ""));
    assert_eq!(resp.text(), "hello");
    assert!(proxy.terminate().success());
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kv_file).unwrap()).unwrap();
    assert_eq!(stored["done"], "1", "{stored}");
    assert_eq!(stored["seen"], "1", "{stored}");
}

#[test]
fn the_flow_metatable_is_locked() {
    let origin = Origin::fixed("hello");
    let path = script(
        "locked",
        r#"function request(flow)
             local ok = pcall(setmetatable, flow, {})
             flow.request.headers["x-mt"] = tostring(getmetatable(flow)) .. " " .. tostring(ok)
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    assert_eq!(
        request(proxy.addr, &get("http://alpha.test/", "")).text(),
        "hello"
    );
    assert_eq!(origin.requests()[0].headers.get("x-mt"), Some("flow false"));
}

// === review: framing and fail-open edges ===

#[test]
fn replies_and_statuses_without_content_carry_no_body() {
    // The origin answers every request with a body; a script turns some answers into
    // 204/304 (its own reply, or the origin's status changed).
    let origin = Origin::spawn(|req| {
        let body = format!("origin body for {}", req.target);
        Reply::keep(if req.target.contains("chunked") {
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
            .into_bytes()
        } else {
            ok(body)
        })
    });
    let path = script(
        "no_content",
        r#"function request(flow)
             if flow.request.path == "/r204" then flow:reply(204, "must not be sent") end
             if flow.request.path == "/r304" then flow:reply(304, "nope") end
           end
           function response(flow)
             if flow.request.path:find("^/s204") then flow.response.status_code = 204 end
             if flow.request.path:find("^/s304") then flow.response.status_code = 304 end
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    // Each request pipelined with a plain one: the 204/304 must not poison it.
    for (path, status) in [
        ("/r204", 204),
        ("/r304", 304),
        ("/s204", 204),
        ("/s304", 304),
        ("/s204-chunked", 204),
    ] {
        client.send(
            &[
                get(&format!("http://alpha.test{path}"), ""),
                get("http://alpha.test/next", ""),
            ]
            .concat(),
        );
        let resp = client.read_response();
        assert_eq!(resp.status, status, "{path}");
        assert!(resp.body.data.is_empty(), "{path}");
        assert!(!resp.headers.has("transfer-encoding"), "{path}");
        let next = client.read_response();
        assert_eq!(
            (next.status, next.text().as_str()),
            (200, "origin body for /next"),
            "after {path}"
        );
    }
}

#[test]
fn a_chunked_body_read_by_a_script_leaves_the_pipelined_request_alone() {
    let origin =
        Origin::spawn(|req| Reply::keep(ok(format!("{} {}", req.target, req.body.data.len()))));
    let path = script(
        "bodies_pipelined",
        r#"BODIES = { request = true }
           function request(flow) local _ = flow.request.body end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/first HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET http://alpha.test/second HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    );
    assert_eq!(client.read_response().text(), "/first 3");
    assert_eq!(client.read_response().text(), "/second 0");
}

#[test]
fn a_reply_made_before_an_error_stands() {
    let origin = Origin::fixed("origin");
    let path = script(
        "reply_then_error",
        r#"function request(flow)
             flow:reply(403, "no")
             error("after the reply")
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!((resp.status, resp.text().as_str()), (403, "no"));
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn a_handler_both_global_and_returned_runs_once() {
    let origin = Origin::fixed("origin");
    let path = script(
        "global_and_returned",
        r#"local n = 0
           function request(flow)
             n = n + 1
             flow.request.headers:add("x-seen", tostring(n))
           end
           return { request = request }"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!(origin.next_request().headers.get_all("x-seen"), ["1"]);
}

#[test]
fn a_304_made_a_200_says_it_has_no_content() {
    // The origin answers 304 with the length of the representation it did not send.
    let origin = Origin::spawn(|req| {
        Reply::keep(if req.target == "/cached" {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n".to_vec()
        } else {
            ok("next")
        })
    });
    let path = script(
        "unmodified",
        r#"function response(flow)
             if flow.response.status_code == 304 then flow.response.status_code = 200 end
           end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        &[
            get("http://alpha.test/cached", ""),
            get("http://alpha.test/next", ""),
        ]
        .concat(),
    );
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers.get("content-length"), Some("0"));
    assert_eq!(client.read_response().text(), "next");
}
