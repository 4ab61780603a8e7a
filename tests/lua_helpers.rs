//! The scripts' helper libraries over real sockets (issue 9 item 6): `log` into the
//! proxy's log file (text and JSON), `json`, `base64` and `time` from a handler, `kv`
//! shared by every worker and kept in `--kv-file` across a restart, `bus` between scripts
//! and between workers, `artifacts` inside `--artifacts-dir` (escapes refused), and the
//! read-only `data_store` inside `--data-dir`. Each helper's success and error returns.
//!
//! Tests that run the real binary (for its log file, or its shutdown) use the system
//! resolver, so their URLs name the origin's IP literal.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test"
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use support::*;

/// Writes `source` to a fresh `.lua` file and returns its path.
fn script(name: &str, source: &str) -> String {
    let path = temp_path(name).with_extension("lua");
    std::fs::write(&path, source).unwrap();
    path.display().to_string()
}

/// A fresh empty directory.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = temp_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// One GET on a new connection; the response body as text.
fn get_text(proxy: std::net::SocketAddr, url: &str) -> (u16, String) {
    let mut client = Wire::connect(proxy);
    client.send(&get(url, "Connection: close\r\n"));
    let resp = client.read_response();
    (resp.status, resp.text())
}

/// A JSON body as a map of string to JSON value.
fn json_body(body: &str) -> BTreeMap<String, serde_json::Value> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON object ({e}): {body}"))
}

// === log ===

const LOGGING: &str = r#"
function request(flow)
  log.trace("a trace line", {hidden = true})
  log.debug("a debug line")
  log.info("hello from lua", {path = flow.request.path, n = 3, ok = true, skipped = {}})
  log.warn("careful")
  log.error("it broke", {code = "e1"})
  log.audit("audited", {who = "tester"})
  print("printed", 42, nil)
  flow:reply(200, "logged\n")
end"#;

#[test]
fn log_lines_reach_the_log_file_as_text() {
    let origin = Origin::fixed("unused");
    let log_file = temp_path("lua-log-text.log");
    let path = script("log-text", LOGGING);
    let proxy = ProxyBinary::spawn(&["--script", &path, "--log-file", &text(&log_file)]);
    assert_eq!(
        get_text(proxy.addr, &origin.url("/p")),
        (200, "logged\n".into())
    );
    assert_eq!(proxy.terminate().code(), Some(0));

    let log = std::fs::read_to_string(&log_file).unwrap();
    let line = |needle: &str| -> &str {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
    };
    let hello = line("hello from lua");
    assert!(hello.contains(" [I] "), "{hello}");
    assert!(hello.contains(&format!("script={path}")), "{hello}");
    // A field's value is quoted when it holds quotes or spaces.
    assert!(
        hello.contains(r#"attrs="{\"n\":3,\"ok\":true,\"path\":\"/p\"}""#),
        "{hello}"
    );
    assert!(line("careful").contains(" [W] "));
    let broke = line("it broke");
    assert!(broke.contains(" [E] ") && broke.contains(r#"attrs="{\"code\":\"e1\"}""#));
    let audit = line("audited");
    assert!(
        audit.contains(" [I] ") && audit.contains("audit=true"),
        "{audit}"
    );
    // `print` joins with tabs, shown escaped in a template line.
    assert!(line(r"printed\t42\tnil").contains(" [I] "));
    // The default level is INFO.
    assert!(!log.contains("a debug line") && !log.contains("a trace line"));
}

#[test]
fn log_lines_carry_their_attrs_as_json_fields() {
    let origin = Origin::fixed("unused");
    let log_file = temp_path("lua-log-json.log");
    let path = script("log-json", LOGGING);
    let proxy = ProxyBinary::spawn(&[
        "--script",
        &path,
        "--log-file",
        &text(&log_file),
        "--log-format",
        "json",
        "--log-level",
        "DEBUG",
    ]);
    assert_eq!(get_text(proxy.addr, &origin.url("/j")).0, 200);
    assert_eq!(proxy.terminate().code(), Some(0));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| -> &serde_json::Value {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
    };
    let hello = find("hello from lua");
    assert_eq!(hello["level"], "INFO");
    assert_eq!(hello["target"], "proxy::script");
    assert_eq!(hello["script"], path.as_str());
    let attrs: serde_json::Value = serde_json::from_str(hello["attrs"].as_str().unwrap()).unwrap();
    assert_eq!(
        attrs,
        serde_json::json!({"path": "/j", "n": 3, "ok": true}),
        "tables among the attrs are left out"
    );
    assert_eq!(find("a debug line")["level"], "DEBUG");
    assert_eq!(find("careful")["level"], "WARNING");
    assert_eq!(find("it broke")["level"], "ERROR");
    let audit = find("audited");
    assert_eq!(
        (audit["level"].as_str(), &audit["audit"]),
        (Some("INFO"), &true.into())
    );
    assert_eq!(find("printed\t42\tnil")["script"], path.as_str());
}

// === json, base64, time ===

#[test]
fn json_base64_and_time_return_values_and_errors_from_a_handler() {
    let origin = Origin::fixed("unused");
    let path = script(
        "codecs",
        r#"
        function request(flow)
          local out = {}
          local decoded, err = json.decode('{"a":[1,2,{"b":"c"}],"n":null}')
          out.decoded_b = decoded.a[3].b
          out.decoded_len = #decoded.a
          out.decode_err_is_nil = err == nil
          local v, e = json.decode("{bad")
          out.bad_json = {v == nil, e}
          v, e = json.encode({f = print})
          out.bad_encode = {v == nil, e}
          out.encoded = (json.encode({1, "two", true}))
          out.b64 = base64.encode("hi\0\255")
          local raw = base64.decode("aGkA/w==")
          out.b64_round_trip = raw == "hi\0\255"
          v, e = base64.decode("!!")
          out.bad_b64 = {v == nil, e}
          v, e = base64.encode(nil)
          out.b64_of_nil = {v == nil, e}
          v, e = base64.encode({})
          out.b64_of_table = {v == nil, e}
          log.info("attributes that are not a table", "are left out")
          out.unix = time.unix()
          out.rfc3339 = time.rfc3339()
          out.date = (time.date())
          out.year = (time.date("%Y"))
          v, e = time.date("%Q")
          out.bad_date = {v == nil, e}
          flow:reply(200, json.encode(out), {["content-type"] = "application/json"})
        end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let (status, body) = get_text(proxy.addr, "http://alpha.test/");
    assert_eq!(status, 200, "{body}");
    let out = json_body(&body);
    assert_eq!(out["decoded_b"], "c");
    assert_eq!(out["decoded_len"], 3);
    assert_eq!(out["decode_err_is_nil"], true);
    assert_eq!(out["encoded"], r#"[1,"two",true]"#);
    assert_eq!(out["b64"], "aGkA/w==");
    assert_eq!(out["b64_round_trip"], true);
    for (key, want) in [
        ("bad_json", "json.decode:"),
        ("bad_encode", "cannot encode a function"),
        ("bad_b64", "base64.decode:"),
        ("b64_of_nil", "base64.encode: expected a string"),
        ("b64_of_table", "base64.encode: expected a string"),
        ("bad_date", "time.date"),
    ] {
        let pair = out[key].as_array().unwrap();
        assert_eq!(pair[0], true, "{key}: the value is nil");
        assert!(pair[1].as_str().unwrap().contains(want), "{key}: {pair:?}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((out["unix"].as_f64().unwrap() - now).abs() < 3600.0);
    let rfc = out["rfc3339"].as_str().unwrap();
    assert!(rfc.ends_with('Z') && rfc.contains('T'), "{rfc}");
    assert_eq!(out["date"].as_str().unwrap().len(), 10);
    assert_eq!(out["year"].as_str().unwrap(), &rfc[..4]);
}

// === kv ===

/// Counts requests per VM in `kv` (`/count`), sums every VM's count (`/sum`).
const KV_COUNTER: &str = r#"
local ID = tostring(math.random(1, 1 << 40)) .. tostring({}):sub(8)
local mine = 0
function request(flow)
  local path = flow.request.path
  if path == "/count" then
    mine = mine + 1
    assert(kv.set("count:" .. ID, mine))
    flow:reply(200, ID)
  elseif path == "/sum" then
    local sum, vms = 0, 0
    for _, n in pairs(assert(kv.list("count:"))) do
      sum, vms = sum + tonumber(n), vms + 1
    end
    flow:reply(200, sum .. " " .. vms)
  elseif path == "/errors" then
    local v1, e1 = kv.set("k", {})
    local v2, e2 = kv.get(1)
    local v3, e3 = kv.list(true)
    local missing, e4 = kv.get("no such key")
    kv.set("bin", "\0\255")
    local b64 = kv.get_base64("bin")
    local deleted = kv.delete("bin")
    flow:reply(200, json.encode({
      set = {v1 == nil, e1}, get = {v2 == nil, e2}, list = {v3 == nil, e3},
      missing = {missing == nil, e4 == nil}, b64 = b64, deleted = deleted,
      after = kv.get("bin") == nil,
    }))
  end
end"#;

#[test]
fn kv_is_one_store_shared_by_every_worker() {
    let origin = Origin::fixed("unused");
    let path = script("kv-shared", KV_COUNTER);
    let proxy = spawn_proxy(&["--script", &path, "--num-workers", "2"]);
    proxy.route("alpha.test", &origin);
    // New connections until both workers have served some (SO_REUSEPORT spreads them).
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    while total < 400 && (served.len() < 2 || total < 20) {
        let (status, id) = get_text(proxy.addr, "http://alpha.test/count");
        assert_eq!(status, 200);
        *served.entry(id).or_default() += 1;
        total += 1;
    }
    assert_eq!(served.len(), 2, "both workers served: {served:?}");
    let (_, sum) = get_text(proxy.addr, "http://alpha.test/sum");
    assert_eq!(
        sum,
        format!("{total} 2"),
        "every worker's count, seen from one"
    );

    let (_, body) = get_text(proxy.addr, "http://alpha.test/errors");
    let out = json_body(&body);
    for key in ["set", "get", "list"] {
        let pair = out[key].as_array().unwrap();
        assert_eq!(pair[0], true, "{key}");
        assert!(
            pair[1].as_str().unwrap().contains("must be a string"),
            "{key}: {pair:?}"
        );
    }
    assert_eq!(
        out["missing"],
        serde_json::json!([true, true]),
        "a missing key is nil, no error"
    );
    assert_eq!(out["b64"], "AP8=");
    assert_eq!(out["deleted"], true);
    assert_eq!(out["after"], true);
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn kv_file_is_loaded_at_start_and_written_at_shutdown() {
    let origin = Origin::fixed("unused");
    let kv_file = temp_path("lua-kv.json");
    std::fs::write(&kv_file, r#"{"greeting":"hello from the file"}"#).unwrap();
    let path = script(
        "kv-file",
        r#"
        function request(flow)
          if flow.request.path == "/write" then
            kv.set("written", "by the first run")
            kv.set("bytes", "\0\255")
            flow:reply(200, kv.get("greeting"))
          else
            flow:reply(200, kv.get("written") .. "|" .. kv.get_base64("bytes"))
          end
        end"#,
    );
    let args = ["--script", &path, "--kv-file", &text(&kv_file)];
    let proxy = ProxyBinary::spawn(&args);
    assert_eq!(
        get_text(proxy.addr, &origin.url("/write")),
        (200, "hello from the file".into())
    );
    assert_eq!(proxy.terminate().code(), Some(0));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kv_file).unwrap()).unwrap();
    assert_eq!(
        saved,
        serde_json::json!({
            "greeting": "hello from the file",
            "written": "by the first run",
            "bytes": {"base64": "AP8="},
        })
    );
    // No temporary file left beside it.
    let dir = kv_file.parent().unwrap();
    let stem = kv_file.file_name().unwrap().to_string_lossy().into_owned();
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{stem}")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let again = ProxyBinary::spawn(&args);
    assert_eq!(
        get_text(again.addr, &origin.url("/read")),
        (200, "by the first run|AP8=".into())
    );
    assert_eq!(again.terminate().code(), Some(0));
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn a_kv_file_that_is_not_a_json_object_stops_start_up() {
    let kv_file = temp_path("lua-kv-bad.json");
    std::fs::write(&kv_file, "[1, 2]").unwrap();
    let path = script("kv-bad", "function request(flow) end");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args([
            "--port",
            "0",
            "--script",
            &path,
            "--kv-file",
            &text(&kv_file),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--kv-file") && stderr.contains("not a JSON object"),
        "{stderr}"
    );
}

// === bus ===

#[test]
fn bus_events_reach_every_script_after_the_emitting_handler_returns() {
    let origin = Origin::fixed("ok");
    let log_file = temp_path("lua-bus.log");
    let emitter = script(
        "bus-emitter",
        r#"
        function request(flow)
          local err = bus.emit("seen", {path = flow.request.path, n = 2, tags = {"a", "b"}})
          flow.request.headers["x-emit-err"] = tostring(err)
          flow.request.headers["x-during"] = tostring(kv.get("listener-got"))
          flow.request.headers["x-bad-data"] = bus.emit("bad", {f = function() end})
          flow.request.headers["x-bad-name"] = bus.emit({})
        end
        function bus_event(name, data)
          kv.set("emitter-got", name)
        end"#,
    );
    let listener = script(
        "bus-listener",
        r#"
        local last = "none"
        function bus_event(name, data)
          last = name .. ":" .. data.path .. ":" .. data.n .. ":" .. table.concat(data.tags, "+")
          kv.set("listener-got", last)
        end
        function request(flow)
          flow.request.headers["x-bus-last"] = last
          flow.request.headers["x-emitter-got"] = tostring(kv.get("emitter-got"))
        end"#,
    );
    let proxy = ProxyBinary::spawn(&[
        "--script",
        &emitter,
        "--script",
        &listener,
        "--log-file",
        &text(&log_file),
        "--log-format",
        "json",
    ]);
    let (status, _) = get_text(proxy.addr, &origin.url("/first"));
    assert_eq!(status, 200);
    assert_eq!(proxy.terminate().code(), Some(0));

    let seen = origin.requests();
    let h = &seen[0].headers;
    assert_eq!(h.get("x-emit-err"), Some("nil"));
    assert_eq!(
        h.get("x-during"),
        Some("nil"),
        "delivered after the handler, not inside"
    );
    assert_eq!(
        h.get("x-bus-last"),
        Some("seen:/first:2:a+b"),
        "before the next script's request"
    );
    assert_eq!(
        h.get("x-emitter-got"),
        Some("seen"),
        "the emitting script gets it too"
    );
    assert!(
        h.get("x-bad-data")
            .unwrap()
            .contains("cannot encode a function"),
        "{h:?}"
    );
    assert!(
        h.get("x-bad-name").unwrap().contains("must be a string"),
        "{h:?}"
    );

    let log = std::fs::read_to_string(&log_file).unwrap();
    let emits: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["message"] == "bus.emit")
        .collect();
    assert_eq!(emits.len(), 1, "refused emits are not logged: {emits:?}");
    assert_eq!(emits[0]["level"], "INFO");
    assert_eq!(emits[0]["script"], emitter.as_str());
    assert_eq!(emits[0]["name"], "seen");
}

#[test]
fn bus_cascades_are_bounded() {
    let origin = Origin::fixed("ok");
    let path = script(
        "bus-cascade",
        r#"
        local seen, last = 0, nil
        function request(flow)
          if flow.request.path == "/start" then
            bus.emit("again")
          else
            flow.request.headers["x-seen"] = tostring(seen)
            flow.request.headers["x-last"] = tostring(last)
          end
        end
        function bus_event(name)
          seen = seen + 1
          last = bus.emit("again")
        end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for path in ["/start", "/report"] {
        client.send(&get(&format!("http://alpha.test{path}"), ""));
        assert_eq!(client.read_response().text(), "ok");
    }
    let seen = origin.requests();
    assert_eq!(seen[1].headers.get("x-seen"), Some("8"));
    assert!(
        seen[1]
            .headers
            .get("x-last")
            .unwrap()
            .contains("generations"),
        "{:?}",
        seen[1].headers
    );
}

#[test]
fn bus_events_reach_the_other_workers_at_their_next_request() {
    let origin = Origin::fixed("unused");
    let path = script(
        "bus-workers",
        r#"
        local ID = tostring(math.random(1, 1 << 40)) .. tostring({}):sub(8)
        local got = "none"
        function bus_event(name, data) got = name .. " from " .. data.from end
        function request(flow)
          if flow.request.path == "/emit" then bus.emit("ping", {from = ID}) end
          flow:reply(200, ID .. " " .. got)
        end"#,
    );
    let proxy = spawn_proxy(&["--script", &path, "--num-workers", "2"]);
    proxy.route("alpha.test", &origin);
    // Both workers load their VM (and join the bus) on their first connection.
    let mut ids = BTreeSet::new();
    let mut tries = 0;
    while ids.len() < 2 {
        tries += 1;
        assert!(tries < 400, "one worker served every connection");
        let (_, body) = get_text(proxy.addr, "http://alpha.test/hello");
        ids.insert(body.split(' ').next().unwrap().to_owned());
    }
    let (_, body) = get_text(proxy.addr, "http://alpha.test/emit");
    let emitter = body.split(' ').next().unwrap().to_owned();
    assert_eq!(
        body,
        format!("{emitter} none"),
        "delivered after the handler"
    );
    // Each worker, at its next request, has had the event.
    let mut reports = BTreeMap::new();
    let mut tries = 0;
    while reports.len() < 2 {
        tries += 1;
        assert!(
            tries < 400,
            "one worker served every connection: {reports:?}"
        );
        let (_, body) = get_text(proxy.addr, "http://alpha.test/report");
        let (id, got) = body.split_once(' ').unwrap();
        reports.insert(id.to_owned(), got.to_owned());
    }
    for (id, got) in &reports {
        assert_eq!(got, &format!("ping from {emitter}"), "worker {id}");
    }
}

// === artifacts ===

#[test]
fn artifacts_are_written_read_renamed_listed_and_deleted_inside_the_dir() {
    let origin = Origin::fixed("unused");
    let dir = temp_path("lua-artifacts");
    let path = script(
        "artifacts",
        r#"
        local function pair(v, e) return {v == nil and "nil" or v, e == nil and "nil" or e} end
        function request(flow)
          local out = {}
          out.write = pair(artifacts.write("reports/day/a.txt", "hello\0bytes"))
          out.overwrite = pair(artifacts.write("reports/day/a.txt", "hello again"))
          out.top = pair(artifacts.write("top.json", "{}"))
          out.read = pair(artifacts.read("reports/day/a.txt"))
          out.exists = pair(artifacts.exists("reports/day/a.txt"))
          out.exists_dir = pair(artifacts.exists("reports"))
          out.missing = pair(artifacts.exists("nope.txt"))
          out.read_missing = pair(artifacts.read("nope.txt"))
          out.rename = pair(artifacts.rename("reports/day/a.txt", "archive/a.txt"))
          out.after_rename = pair(artifacts.exists("reports/day/a.txt"))
          out.list = artifacts.list()
          out.delete = pair(artifacts.delete("top.json"))
          out.delete_missing = pair(artifacts.delete("top.json"))
          out.list_after = artifacts.list()
          out.bad_content = pair(artifacts.write("x.txt", {}))
          out.bad_name = pair(artifacts.read(7))
          flow:reply(200, json.encode(out))
        end"#,
    );
    let arg = text(&dir);
    let proxy = spawn_proxy(&["--script", &path, "--artifacts-dir", &arg]);
    proxy.route("alpha.test", &origin);
    let (status, body) = get_text(proxy.addr, "http://alpha.test/");
    assert_eq!(status, 200, "{body}");
    let out = json_body(&body);
    let ok = serde_json::json!([true, "nil"]);
    for key in [
        "write",
        "overwrite",
        "top",
        "exists",
        "exists_dir",
        "rename",
        "delete",
    ] {
        assert_eq!(out[key], ok, "{key}");
    }
    assert_eq!(out["read"], serde_json::json!(["hello again", "nil"]));
    assert_eq!(out["missing"], serde_json::json!([false, "nil"]));
    assert_eq!(out["after_rename"], serde_json::json!([false, "nil"]));
    for (key, want) in [
        ("read_missing", "artifacts.read: nope.txt: no such file"),
        ("delete_missing", "artifacts.delete: top.json: no such file"),
        ("bad_content", "content must be a string"),
        ("bad_name", "name must be a string"),
    ] {
        let pair = out[key].as_array().unwrap();
        assert_eq!(pair[0], "nil", "{key}");
        assert!(pair[1].as_str().unwrap().contains(want), "{key}: {pair:?}");
    }
    assert_eq!(
        out["list"],
        serde_json::json!(["archive/a.txt", "top.json"])
    );
    assert_eq!(out["list_after"], serde_json::json!(["archive/a.txt"]));
    // On disk, where the script said; the emptied directories stay.
    assert_eq!(
        std::fs::read(dir.join("archive/a.txt")).unwrap(),
        b"hello again"
    );
    assert!(dir.join("reports/day").is_dir());
}

#[test]
fn artifacts_refuse_dot_dot_absolute_nul_and_symbolic_links_out() {
    let origin = Origin::fixed("unused");
    let dir = fresh_dir("lua-artifacts-escape");
    let outside = fresh_dir("lua-artifacts-outside");
    std::fs::write(outside.join("secret"), "outside secret").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), dir.join("leak")).unwrap();
    let path = script(
        "artifacts-escape",
        r#"
        local function pair(v, e) return {v == nil and "nil" or v, e == nil and "nil" or e} end
        function request(flow)
          local secret = flow.request.headers["x-secret"]
          local out = {}
          out.dotdot_write = pair(artifacts.write("../escaped.txt", "x"))
          out.dotdot_read = pair(artifacts.read("a/../../" .. secret))
          out.absolute_read = pair(artifacts.read(secret))
          out.absolute_write = pair(artifacts.write("/tmp/escaped.txt", "x"))
          out.nul = pair(artifacts.write("a\0b", "x"))
          out.empty = pair(artifacts.write("", "x"))
          out.link_dir_read = pair(artifacts.read("out/secret"))
          out.link_dir_write = pair(artifacts.write("out/new.txt", "x"))
          out.link_dir_deep = pair(artifacts.write("out/deeper/new.txt", "x"))
          out.link_file_read = pair(artifacts.read("leak"))
          out.link_dir_exists = pair(artifacts.exists("out/secret"))
          out.link_dir_delete = pair(artifacts.delete("out/secret"))
          out.rename_out = pair(artifacts.rename("leak", "out/moved"))
          out.rename_in = pair(artifacts.rename("../x", "y"))
          out.list = table.concat(artifacts.list(), ",")
          flow:reply(200, json.encode(out))
        end"#,
    );
    let arg = text(&dir);
    let proxy = spawn_proxy(&["--script", &path, "--artifacts-dir", &arg]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    let secret = text(&outside.join("secret"));
    client.send(&get(
        "http://alpha.test/",
        &format!("x-secret: {secret}\r\n"),
    ));
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    let out = json_body(&resp.text());
    for (key, want) in [
        ("dotdot_write", "'..' is not allowed"),
        ("dotdot_read", "'..' is not allowed"),
        ("absolute_read", "absolute paths are not allowed"),
        ("absolute_write", "absolute paths are not allowed"),
        ("nul", "NUL in name"),
        ("empty", "empty name"),
        ("link_dir_read", "outside the directory"),
        ("link_dir_write", "outside the directory"),
        ("link_dir_deep", "outside the directory"),
        ("link_file_read", "symbolic link (not followed)"),
        ("link_dir_exists", "outside the directory"),
        ("link_dir_delete", "outside the directory"),
        ("rename_out", "outside the directory"),
        ("rename_in", "'..' is not allowed"),
    ] {
        let pair = out[key].as_array().unwrap();
        assert_eq!(pair[0], "nil", "{key}: {pair:?}");
        assert!(pair[1].as_str().unwrap().contains(want), "{key}: {pair:?}");
    }
    assert_eq!(out["list"], "", "links are not listed: {out:?}");
    // Nothing changed outside.
    let names: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["secret"]);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "outside secret"
    );
    assert!(!dir.parent().unwrap().join("escaped.txt").exists());
}

#[test]
fn without_the_flags_every_file_call_fails() {
    let origin = Origin::fixed("unused");
    let path = script(
        "no-dirs",
        r#"
        function request(flow)
          local out = {}
          for _, call in ipairs({
            {"a_read", artifacts.read, "x"}, {"a_write", artifacts.write, "x", "y"},
            {"a_exists", artifacts.exists, "x"}, {"a_delete", artifacts.delete, "x"},
            {"a_rename", artifacts.rename, "x", "y"}, {"a_list", artifacts.list},
            {"d_read", data_store.read, "x"}, {"d_exists", data_store.exists, "x"},
            {"d_list", data_store.list, ""},
          }) do
            local v, e = call[2](call[3], call[4])
            out[call[1]] = {v == nil, e}
          end
          out.d_write = data_store.write == nil and data_store.delete == nil
          flow:reply(200, json.encode(out))
        end"#,
    );
    let proxy = spawn_proxy(&["--script", &path]);
    proxy.route("alpha.test", &origin);
    let (_, body) = get_text(proxy.addr, "http://alpha.test/");
    let out = json_body(&body);
    assert_eq!(out.len(), 10, "{out:?}");
    for (key, value) in &out {
        if key == "d_write" {
            assert_eq!(value, &true, "data_store is read-only");
            continue;
        }
        let want = if key.starts_with('a') {
            "no --artifacts-dir"
        } else {
            "no --data-dir"
        };
        assert_eq!(value[0], true, "{key}");
        assert!(value[1].as_str().unwrap().ends_with(want), "{key}: {value}");
    }
}

// === data_store ===

#[test]
fn data_store_reads_and_lists_with_extension_filters() {
    let origin = Origin::fixed("unused");
    let dir = fresh_dir("lua-data");
    let outside = fresh_dir("lua-data-outside");
    std::fs::write(outside.join("secret.json"), "{}").unwrap();
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("a.json"), r#"{"k":"v"}"#).unwrap();
    std::fs::write(dir.join("b.txt"), "bee").unwrap();
    std::fs::write(dir.join("c.bin"), [0u8, 255]).unwrap();
    std::fs::write(dir.join("noext"), "").unwrap();
    std::fs::write(dir.join("sub/d.JSON"), "[]").unwrap();
    std::fs::write(dir.join("sub/deeper/e.txt"), "e").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.json"), dir.join("leak.json")).unwrap();
    let path = script(
        "data-store",
        r#"
        local function pair(v, e) return {v == nil and "nil" or v, e == nil and "nil" or e} end
        function request(flow)
          local out = {}
          local text = data_store.read("a.json")
          out.read = json.decode(text).k
          out.bin = data_store.read("c.bin") == "\0\255"
          out.exists = pair(data_store.exists("sub/d.JSON"))
          out.missing = pair(data_store.exists("sub/none"))
          out.all = data_store.list()
          out.json = data_store.list("", {"json"})
          out.json_txt = data_store.list(".", {".json", "TXT"})
          out.one_ext = data_store.list("sub", "txt")
          out.sub = data_store.list("sub")
          out.list_missing = pair(data_store.list("nowhere"))
          out.list_out = pair(data_store.list("out"))
          out.list_dotdot = pair(data_store.list(".."))
          out.bad_exts = pair(data_store.list("", {1}))
          out.read_missing = pair(data_store.read("none.json"))
          out.read_dir = pair(data_store.read("sub"))
          out.read_dotdot = pair(data_store.read("../x"))
          out.read_out = pair(data_store.read("out/secret.json"))
          out.read_leak = pair(data_store.read("leak.json"))
          out.read_abs = pair(data_store.read("/etc/hostname"))
          flow:reply(200, json.encode(out))
        end"#,
    );
    let arg = text(&dir);
    let proxy = spawn_proxy(&["--script", &path, "--data-dir", &arg]);
    proxy.route("alpha.test", &origin);
    let (status, body) = get_text(proxy.addr, "http://alpha.test/");
    assert_eq!(status, 200, "{body}");
    let out = json_body(&body);
    assert_eq!(out["read"], "v");
    assert_eq!(out["bin"], true);
    assert_eq!(out["exists"], serde_json::json!([true, "nil"]));
    assert_eq!(out["missing"], serde_json::json!([false, "nil"]));
    assert_eq!(
        out["all"],
        serde_json::json!([
            "a.json",
            "b.txt",
            "c.bin",
            "noext",
            "sub/d.JSON",
            "sub/deeper/e.txt"
        ]),
        "recursive, sorted, no links"
    );
    assert_eq!(out["json"], serde_json::json!(["a.json", "sub/d.JSON"]));
    assert_eq!(
        out["json_txt"],
        serde_json::json!(["a.json", "b.txt", "sub/d.JSON", "sub/deeper/e.txt"])
    );
    assert_eq!(out["one_ext"], serde_json::json!(["sub/deeper/e.txt"]));
    assert_eq!(
        out["sub"],
        serde_json::json!(["sub/d.JSON", "sub/deeper/e.txt"])
    );
    for (key, want) in [
        ("list_missing", "data_store.list: nowhere: no such file"),
        ("list_out", "outside the directory"),
        ("list_dotdot", "'..' is not allowed"),
        ("bad_exts", "extensions must be strings"),
        ("read_missing", "data_store.read: none.json: no such file"),
        ("read_dir", "not a regular file"),
        ("read_dotdot", "'..' is not allowed"),
        ("read_out", "outside the directory"),
        ("read_leak", "symbolic link (not followed)"),
        ("read_abs", "absolute paths are not allowed"),
    ] {
        let pair = out[key].as_array().unwrap();
        assert_eq!(pair[0], "nil", "{key}: {pair:?}");
        assert!(pair[1].as_str().unwrap().contains(want), "{key}: {pair:?}");
    }
}

#[test]
fn a_missing_data_dir_stops_start_up() {
    let path = script("data-missing", "function request(flow) end");
    let missing = temp_path("lua-data-missing");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args([
            "--port",
            "0",
            "--script",
            &path,
            "--data-dir",
            &text(&missing),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--data-dir"), "{stderr}");
}

// === the sandbox: what tests/lua.rs does not already show ===

#[test]
fn require_finds_lua_modules_beside_the_script_and_never_loads_c_ones() {
    let origin = Origin::fixed("ok");
    let dir = fresh_dir("lua-require");
    std::fs::write(
        dir.join("helper.lua"),
        "return { twice = function(x) return 2 * x end }",
    )
    .unwrap();
    // Not a real library: with a C searcher, `require` would try to load it and say so.
    std::fs::write(dir.join("native.so"), "not an ELF file").unwrap();
    let main = dir.join("main.lua");
    std::fs::write(
        &main,
        r#"
        local helper = require("helper")
        function request(flow)
          flow.request.headers["x-twice"] = tostring(helper.twice(21))
          package.cpath = package.path:gsub("%?%.lua", "?.so")
          local ok, err = pcall(require, "native")
          flow.request.headers["x-native-ok"] = tostring(ok)
          flow.request.headers["x-native-err"] = tostring(err):gsub("%s+", " ")
          flow.request.headers["x-loadlib"] = tostring(package.loadlib)
        end"#,
    )
    .unwrap();
    let proxy = spawn_proxy(&["--script", &text(&main)]);
    proxy.route("alpha.test", &origin);
    assert_eq!(get_text(proxy.addr, "http://alpha.test/").1, "ok");
    let seen = origin.requests();
    let h = &seen[0].headers;
    assert_eq!(h.get("x-twice"), Some("42"));
    assert_eq!(h.get("x-native-ok"), Some("false"));
    let err = h.get("x-native-err").unwrap();
    assert!(err.contains("module 'native' not found"), "{err}");
    assert!(
        !err.contains("native.so"),
        "the C searcher was consulted: {err}"
    );
    assert_eq!(h.get("x-loadlib"), Some("nil"));
}

#[test]
fn require_stays_beside_the_script_whatever_package_path_says() {
    let origin = Origin::fixed("ok");
    let outside = fresh_dir("lua-require-outside");
    std::fs::write(
        outside.join("elsewhere.lua"),
        "return 'loaded from elsewhere'",
    )
    .unwrap();
    let dir = fresh_dir("lua-require-inside");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub").join("inner.lua"), "return 'inner'").unwrap();
    std::fs::write(dir.join("broken.lua"), "return {").unwrap();
    let main = dir.join("main.lua");
    std::fs::write(
        &main,
        format!(
            r#"
        function request(flow)
          package.path = "{}/?.lua"
          local ok = pcall(require, "elsewhere")
          flow.request.headers["x-elsewhere"] = tostring(ok)
          ok = pcall(require, "../{}/elsewhere")
          flow.request.headers["x-climb"] = tostring(ok)
          flow.request.headers["x-dotted"] = require("sub.inner")
          flow.request.headers["x-searchpath"] = tostring(package.searchpath)
          local mine = package.path
          pcall(require, "broken")
          flow.request.headers["x-path-kept"] = tostring(package.path == mine)
        end"#,
            text(&outside),
            outside.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let proxy = spawn_proxy(&["--script", &text(&main)]);
    proxy.route("alpha.test", &origin);
    assert_eq!(get_text(proxy.addr, "http://alpha.test/").1, "ok");
    let seen = origin.requests();
    let h = &seen[0].headers;
    assert_eq!(h.get("x-elsewhere"), Some("false"));
    assert_eq!(h.get("x-climb"), Some("false"));
    assert_eq!(h.get("x-dotted"), Some("inner"));
    assert_eq!(h.get("x-searchpath"), Some("nil"));
    // A module that fails to load leaves the script's own package.path as it was.
    assert_eq!(h.get("x-path-kept"), Some("true"));
}
