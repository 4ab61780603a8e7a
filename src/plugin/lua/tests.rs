#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use super::*;
use crate::plugin::testing;

fn script(source: &str) -> Script {
    Script {
        id: usize::MAX,
        path: PathBuf::from("dir/test.lua"),
        source: source.to_owned(),
        name: "test".to_owned(),
        settings: Vec::new(),
        env: Env::with_kv(helpers::Kv::memory()),
        instruction_limit: 100_000,
        memory_limit: 8 * 1024 * 1024,
    }
}

fn plugin(source: &str) -> LuaPlugin {
    LuaPlugin {
        vm: Some(Rc::new(Vm::load(&script(source)).unwrap())),
        name: "test.lua",
        exchange: None,
        conn: 0,
        new_req_body: None,
        deferred: false,
    }
}

fn cx(config: &Config) -> RequestCx<'_> {
    RequestCx {
        client: "127.0.0.1:1".parse().unwrap(),
        config,
        listen_addrs: &[],
        intercepted: false,
    }
}

fn encoded(req: &RequestHead) -> String {
    let mut out = Vec::new();
    req.encode(req.version(), &mut out);
    String::from_utf8(out.concat()).unwrap()
}

#[test]
fn syntax_and_load_errors_name_file_and_line() {
    let err = Vm::load(&script("local a =\n\n+")).err().unwrap();
    assert!(err.starts_with("dir/test.lua:3:"), "{err}");
    let err = Vm::load(&script("\nerror('nope')")).err().unwrap();
    assert!(err.starts_with("dir/test.lua:2: nope"), "{err}");
    let err = Vm::load(&script("function start() error('in start') end"))
        .err()
        .unwrap();
    assert!(err.contains("dir/test.lua:1: in start"), "{err}");
}

#[test]
fn handlers_come_from_globals_returned_tables_and_extensions() {
    let vm = Vm::load(&script("function request(f) end")).unwrap();
    assert_eq!((vm.request.len(), vm.response.len()), (1, 0));
    let vm = Vm::load(&script("return { response = function(f) end }")).unwrap();
    assert_eq!((vm.request.len(), vm.response.len()), (0, 1));
    let vm = Vm::load(&script(
        "Extensions = { { request = function(self, f) end }, { response = function(self, f) end } }",
    ))
    .unwrap();
    assert_eq!((vm.request.len(), vm.response.len()), (1, 1));
    let vm = Vm::load(&script("FAIL_CLOSED = true")).unwrap();
    assert!(vm.fail_closed && vm.request.is_empty());
}

#[test]
fn sandbox_globals() {
    let vm = Vm::load(&script(
        r#"assert(io == nil and debug == nil and dofile == nil and loadfile == nil)
           assert(os.execute == nil and os.exit == nil and os.getenv == nil and os.time ~= nil)
           assert(package.loadlib == nil and package.cpath == "" and package.path == "dir/?.lua")
           assert(package.searchers[3] == nil and package.searchers[2] ~= nil)
           assert(load(string.dump(function() end)) == nil)
           assert(coroutine == nil, "coroutines would escape the instruction budget")"#,
    ));
    assert!(vm.is_ok(), "{:?}", vm.err());
}

#[test]
fn a_script_without_handlers_leaves_the_exchange_alone() {
    let config = Config::default();
    let mut p = plugin("x = 1");
    let (mut head, mut target) =
        testing::request("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let before = encoded(&head);
    assert!(matches!(
        p.on_request(&cx(&config), &mut head, &mut target),
        Ok(Flow::Continue)
    ));
    assert_eq!(encoded(&head), before);
    assert!(p.exchange.is_none(), "no state made");
}

#[test]
fn method_path_and_host_edits_are_sent() {
    let config = Config::default();
    let mut p = plugin(
        r#"function request(f)
             f.request.method = "PUT"
             f.request.host = "b.test"
             f.request.port = 8080
             f.request.path = "/x?y"
           end"#,
    );
    let (mut head, mut target) =
        testing::request("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(matches!(
        p.on_request(&cx(&config), &mut head, &mut target),
        Ok(Flow::Continue)
    ));
    assert!(head.is_method("PUT"));
    assert_eq!(
        target,
        Target::Absolute {
            scheme: http::Scheme::Http,
            host: "b.test".into(),
            port: 8080,
            path: bytes::Bytes::from_static(b"/x?y"),
        }
    );
    assert!(encoded(&head).starts_with("PUT http://a.test/ HTTP/1.1\r\n"));
}

#[test]
fn bad_assignments_fail_open_and_framing_headers_are_refused() {
    let config = Config::default();
    for body in [
        r#"f.request.method = "G ET""#,
        r#"f.request.path = "no-slash""#,
        r#"f.request.headers["content-length"] = "5""#,
        r#"f.request.headers["transfer-encoding"] = "chunked""#,
        r#"f.request.port = 70000"#,
        r#"f.request.url = "http://x/""#,
    ] {
        let mut p = plugin(&format!("function request(f) {body} end"));
        let (mut head, mut target) =
            testing::request("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let before = encoded(&head);
        assert!(
            matches!(
                p.on_request(&cx(&config), &mut head, &mut target),
                Ok(Flow::Continue)
            ),
            "{body}"
        );
        assert_eq!(encoded(&head), before, "{body}");
    }
}

#[test]
fn response_status_edit_renders_a_new_status_line() {
    let config = Config::default();
    let mut p = plugin(
        r#"function response(f)
             f.response.status_code = 299
             f.response.reason = "Fine"
           end"#,
    );
    let mut buf = bytes::BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n"[..]);
    let Ok(http::Parsed::Complete(mut res)) = http::parse_response(&mut buf, &Limits::default())
    else {
        panic!()
    };
    assert!(matches!(
        p.on_response(&cx(&config), &mut res),
        Ok(Flow::Continue)
    ));
    let mut out = Vec::new();
    res.encode(&mut out);
    assert_eq!(out.concat(), b"HTTP/1.1 299 Fine\r\nA: 1\r\n\r\n");
    res.encode_with_version(http::Version::Http10, &mut out);
    assert_eq!(out.concat(), b"HTTP/1.0 299 Fine\r\nA: 1\r\n\r\n");
}

#[test]
fn a_flow_kept_past_its_event_cannot_edit() {
    let config = Config::default();
    let mut p = plugin(
        r#"local kept
           function request(f)
             if kept then
               local ok = pcall(function() kept.request.headers["x"] = "1" end)
               f.request.headers["x-kept-edit"] = tostring(ok)
             end
             kept = f
           end"#,
    );
    for _ in 0..2 {
        let (mut head, mut target) =
            testing::request("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let _ = p.on_request(&cx(&config), &mut head, &mut target);
        p.on_complete(&cx(&config), Some(200));
        if head.header("x-kept-edit").is_some() {
            assert_eq!(head.header("x-kept-edit"), Some(&b"false"[..]));
            return;
        }
    }
    panic!("second request not edited");
}

#[test]
fn a_runaway_handler_cannot_catch_the_end_of_its_budget() {
    for body in [
        "while true do end",
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
    ] {
        let vm = Vm::load(&script(&format!("function request(f) {body} end"))).unwrap();
        vm.refill();
        let err = vm.request[0].call(&mlua::Value::Nil).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| vm::describe(e).contains("instruction budget exceeded")),
            "{body}: {err:?}"
        );
    }
}

#[test]
fn a_long_script_path_is_named_whole_in_runtime_errors() {
    let long = "/srv/proxy/scripts/a-directory-name-long-enough-that-lua-shortens/filter.lua";
    let mut s = script("function request(f)\n  error('no route')\nend");
    s.path = PathBuf::from(long);
    let vm = Vm::load(&s).unwrap();
    vm.refill();
    let err = vm.request[0].call(&mlua::Value::Nil).unwrap_err();
    // Lua itself keeps only the tail; the VM's description has the whole name.
    assert!(vm::describe(&err).starts_with("..."), "{err}");
    assert_eq!(vm.describe(&err), format!("{long}:2: no route"));
}

#[test]
fn an_idle_vm_stays_under_one_mebibyte() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/plugin_examples/lua/counter.lua"
    ))
    .unwrap();
    let vm = Vm::load(&script(&source)).unwrap();
    let used = vm.lua.used_memory();
    assert!(used < 1024 * 1024, "{used} bytes");
    eprintln!("idle VM: {used} bytes");
}

#[test]
fn the_heap_stays_bounded_over_many_events() {
    // Each event makes short-lived userdata with finalizers; the incremental collector
    // fell behind them under load and the heap grew without bound.
    let config = Config::default();
    let mut p = plugin(
        r#"function request(f)
             f.request.headers["x-added"] = "1"
             local _ = f.request.method .. f.request.path
           end"#,
    );
    let mut peak = 0;
    for i in 0..60_000 {
        let (mut head, mut target) =
            testing::request("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let flow = p.on_request(&cx(&config), &mut head, &mut target).unwrap();
        assert!(matches!(flow, Flow::Continue));
        p.on_complete(&cx(&config), Some(200));
        if i % 1000 == 999 {
            peak = peak.max(p.vm.as_ref().unwrap().lua.used_memory());
        }
    }
    assert!(peak < 2 * 1024 * 1024, "Lua heap peaked at {peak} bytes");
}

#[test]
fn lua_builtin_error_is_not_an_error_handler() {
    let p = plugin("x = 1");
    assert!(p.vm.as_ref().unwrap().error.is_empty());
    let p = plugin("function error(flow, err) end");
    assert_eq!(p.vm.as_ref().unwrap().error.len(), 1);
}

#[test]
fn load_keeps_the_globals_unless_given_an_env() {
    let vm = Vm::load(&script(
        r#"X = 41
           RESULT = load("return X + 1")() .. ":" .. tostring(load("return X", "c", "t", {})())"#,
    ))
    .unwrap();
    let result: String = vm.lua.globals().get("RESULT").unwrap();
    assert_eq!(result, "42:nil");
}

#[test]
fn a_burro_directory_collects_only_its_hooks() {
    let vm = Vm::load(&script(
        "function request(f) end
         return { __burro = true, response = function(f) end, flush = function(o) end }",
    ))
    .unwrap();
    assert_eq!(
        (vm.request.len(), vm.response.len(), vm.flush.len()),
        (0, 1, 1)
    );
}

#[test]
fn a_burro_directory_vm_stays_small_when_idle() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugin_examples/lua/burro/metric");
    let mut s = script(&burro::source(&dir).unwrap());
    s.path = dir;
    let vm = Vm::load(&s).unwrap();
    vm.lua.gc_collect().unwrap();
    let used = vm.lua.used_memory();
    assert!(used < 1024 * 1024, "{used} bytes");
    assert_eq!((vm.access_log.len(), vm.flush.len()), (1, 1));
    assert!(vm.request.is_empty() && vm.response.is_empty());
}

#[test]
fn memory_errors_name_the_file_and_line() {
    // Lua gives a memory error no place: it is where the budget hook last saw the script.
    let hungry = "local t = {}\nwhile true do t[#t + 1] = string.rep('x', 4096) .. #t end";
    let mut s = script(&format!("function request(f)\n  {hungry}\nend"));
    s.instruction_limit = u64::MAX;
    let vm = Vm::load(&s).unwrap();
    vm.refill();
    let err = vm.request[0].call(&mlua::Value::Nil).unwrap_err();
    assert_eq!(
        vm.describe(&err),
        "dir/test.lua:3: memory limit: not enough memory"
    );
    // One allocation too many before the hook ran in this event: the file at least.
    let vm = Vm::load(&script(
        "function request(f) return string.rep('x', 64 * 1024 * 1024) end",
    ))
    .unwrap();
    vm.refill();
    let err = vm.request[0].call(&mlua::Value::Nil).unwrap_err();
    let msg = vm.describe(&err);
    assert!(
        msg.starts_with("dir/test.lua") && msg.ends_with(": memory limit: not enough memory"),
        "{msg}"
    );
    // While loading.
    let mut s = script(&format!("\n{hungry}"));
    s.instruction_limit = u64::MAX;
    let err = Vm::load(&s).err().unwrap();
    assert_eq!(err, "dir/test.lua:3: memory limit: not enough memory");
    // A Burro hook file, named whole.
    let dir = std::env::temp_dir().join(format!("proxy-lua-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("after_response.lua"), format!("\n\n{hungry}\n")).unwrap();
    let mut s = script(&burro::source(&dir).unwrap());
    s.path = dir.clone();
    s.instruction_limit = u64::MAX;
    let vm = Vm::load(&s).unwrap();
    vm.refill();
    let err = vm.access_log[0].call(&mlua::Value::Nil).unwrap_err();
    let file = dir.join("after_response.lua");
    assert_eq!(
        vm.describe(&err),
        format!("{}:4: memory limit: not enough memory", file.display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
