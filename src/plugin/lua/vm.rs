//! One script's Lua VM: the sandbox, the limits, and the handlers found at load.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use mlua::{ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

/// How often (in VM instructions) the budget hook runs.
const HOOK_EVERY: u32 = 1000;

/// The events a script may handle in this version.
const EVENTS: &[&str] = &[
    "start",
    "request",
    "response",
    "client_connect",
    "client_disconnect",
    "access_log",
    "error",
    "should_intercept",
    "websocket_start",
    "websocket_message",
    "websocket_end",
    "done",
    "flush",
    "configure",
    "bus_event",
    "tls_handshake",
    // mitmproxy's and Roxy's names for the connection events.
    "clientconnect",
    "connect",
    "clientdisconnect",
];

/// A script as loaded at start-up: shared by every worker thread.
#[derive(Debug)]
pub(crate) struct Script {
    /// Index of this script's VM in each worker's table.
    pub(crate) id: usize,
    /// The file, as given on the command line.
    pub(crate) path: PathBuf,
    /// The source, read once at start-up.
    pub(crate) source: String,
    /// The name `--set` knows it by.
    pub(crate) name: String,
    /// Its `--set` options: (name, value).
    pub(crate) settings: Vec<(String, String)>,
    /// What every script of the process shares.
    pub(crate) env: Arc<super::Env>,
    /// Instructions one event may run.
    pub(crate) instruction_limit: u64,
    /// Bytes the VM may allocate.
    pub(crate) memory_limit: usize,
}

/// A function to call for an event: a plain function, or a method of an `Extensions`
/// object (called with the object as `self`).
pub(crate) struct Handler {
    func: Function,
    this: Option<Table>,
}

/// The handlers of one event, in call order.
pub(crate) type Handlers = Vec<Handler>;

/// A loaded script on one thread.
pub(crate) struct Vm {
    // Lua handles first: they drop before the state that owns them.
    /// `request(flow)` handlers.
    pub(crate) request: Handlers,
    /// `response(flow)` handlers.
    pub(crate) response: Handlers,
    /// `client_connect(conn)` handlers.
    pub(crate) client_connect: Handlers,
    /// `client_disconnect(conn)` handlers.
    pub(crate) client_disconnect: Handlers,
    /// `access_log(flow)` handlers.
    pub(crate) access_log: Handlers,
    /// `error(flow, err)` handlers.
    pub(crate) error: Handlers,
    /// `should_intercept(flow)` handlers.
    pub(crate) should_intercept: Handlers,
    /// `websocket_start(flow)` handlers.
    pub(crate) websocket_start: Handlers,
    /// `websocket_message(flow, msg)` handlers.
    pub(crate) websocket_message: Handlers,
    /// `websocket_end(flow)` handlers.
    pub(crate) websocket_end: Handlers,
    /// `done()` handlers.
    pub(crate) done: Handlers,
    /// `flush(opts)` handlers (shutdown and `--script-flush-interval`).
    pub(crate) flush: Handlers,
    /// `bus_event(name, data)` handlers (see `helpers::bus`).
    pub(crate) bus_event: Handlers,
    /// `tls_handshake(flow)` handlers.
    pub(crate) tls_handshake: Handlers,
    /// `FAIL_CLOSED = true`: a failing handler answers 500 instead of letting the
    /// exchange go on.
    pub(crate) fail_closed: bool,
    /// The script's `commands`.
    pub(crate) commands: Vec<super::options::Command>,
    /// `BODIES = { request = true }`: `request` handlers see whole request bodies.
    pub(crate) request_bodies: bool,
    /// `BODIES = { response = true }`: `response` handlers see whole response bodies.
    pub(crate) response_bodies: bool,
    /// Instructions left for the running event.
    budget: Rc<Cell<u64>>,
    limit: u64,
    /// Where the budget hook last found the script in the running event.
    place: Rc<RefCell<Place>>,
    /// The script's file or hooks directory, to name its files whole in errors.
    root: PathBuf,
    pub(crate) lua: Lua,
}

impl Vm {
    /// Creates a sandboxed VM, runs the script's chunk and its `start` handlers, and
    /// collects its handlers.
    ///
    /// # Errors
    /// The script does not compile, raises while loading or in `start`, or runs past a
    /// limit: `file:line: message`.
    pub(crate) fn load(script: &Script) -> Result<Vm, String> {
        let place = Rc::new(RefCell::new(Place::default()));
        let fail = |e: mlua::Error| describe_at(&e, &place.borrow(), &script.path);
        // No `coroutine`: mlua 0.10 hooks one Lua thread at a time, so a coroutine would
        // run outside the instruction budget.
        let libs = StdLib::TABLE
            | StdLib::STRING
            | StdLib::UTF8
            | StdLib::MATH
            | StdLib::OS
            | StdLib::PACKAGE;
        let lua = Lua::new_with(libs, LuaOptions::default()).map_err(fail)?;
        sandbox(&lua, script).map_err(fail)?;
        super::flow::install(&lua).map_err(fail)?;
        super::helpers::install(&lua, script).map_err(fail)?;
        lua.set_memory_limit(script.memory_limit).map_err(fail)?;
        // Every event makes a few short-lived userdata (the flow, its request, its headers),
        // each with a finalizer. Under the incremental collector they outpaced collection:
        // the heap grew without bound under load (40 MiB after 300,000 requests, all of it
        // garbage). The generational collector is built for such short-lived objects.
        lua.gc_gen(0, 0);
        let budget = Rc::new(Cell::new(script.instruction_limit));
        let left = Rc::clone(&budget);
        let seen = Rc::clone(&place);
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, debug| {
                if let Ok(mut place) = seen.try_borrow_mut() {
                    place.note(&debug);
                }
                let now = left.get();
                if now < u64::from(HOOK_EVERY) {
                    left.set(0);
                    return Err(mlua::Error::runtime("instruction budget exceeded"));
                }
                left.set(now - u64::from(HOOK_EVERY));
                Ok(VmState::Continue)
            },
        );
        // Past the budget, `pcall` and `xpcall` pass the error on:
        // a handler cannot catch its own end and loop on.
        let left = Rc::clone(&budget);
        let exhausted = vm_fn(&lua, move || left.get() == 0).map_err(fail)?;
        lua.load(RETHROW)
            .set_name("=sandbox")
            .call::<()>(exhausted)
            .map_err(fail)?;
        let mut vm = Vm {
            request: Vec::new(),
            response: Vec::new(),
            client_connect: Vec::new(),
            client_disconnect: Vec::new(),
            access_log: Vec::new(),
            error: Vec::new(),
            should_intercept: Vec::new(),
            websocket_start: Vec::new(),
            websocket_message: Vec::new(),
            websocket_end: Vec::new(),
            done: Vec::new(),
            flush: Vec::new(),
            bus_event: Vec::new(),
            tls_handshake: Vec::new(),
            fail_closed: false,
            commands: Vec::new(),
            request_bodies: false,
            response_bodies: false,
            budget,
            limit: script.instruction_limit,
            place: Rc::clone(&place),
            root: script.path.clone(),
            lua,
        };
        vm.refill();
        // Lua's own `error` is a global too: it is not an `error` handler.
        let builtin_error: Option<Function> = vm.lua.globals().get("error").map_err(fail)?;
        let returned: Value = vm
            .lua
            .load(script.source.as_str())
            .set_name(format!("@{}", script.path.display()))
            .set_mode(ChunkMode::Text)
            .eval()
            .map_err(fail)?;
        let mut start = Vec::new();
        let mut configure = Vec::new();
        vm.collect(&returned, &mut start, &mut configure)
            .map_err(fail)?;
        vm.error.retain(|h| Some(&h.func) != builtin_error.as_ref());
        let options = super::options::apply(&vm.lua, &script.name, &script.settings)
            .map_err(|e| format!("{}: {e}", script.path.display()))?;
        vm.commands = super::options::commands(&vm.lua).map_err(fail)?;
        if !configure.is_empty() {
            let changed = vm.lua.create_table().map_err(fail)?;
            for name in &options {
                changed.raw_set(name.as_str(), true).map_err(fail)?;
            }
            let changed = Value::Table(changed);
            for handler in &configure {
                vm.refill();
                handler.call(&changed).map_err(fail)?;
            }
        }
        for handler in &start {
            vm.refill();
            handler.call(&Value::Nil).map_err(fail)?;
        }
        vm.bodies().map_err(fail)?;
        vm.fail_closed = vm
            .lua
            .globals()
            .get::<Option<bool>>("FAIL_CLOSED")
            .ok()
            .flatten()
            == Some(true);
        Ok(vm)
    }

    /// Reads `BODIES` (a global, or a field of an `Extensions` object): which bodies
    /// the handlers see. Without it no body is ever buffered for this script.
    fn bodies(&mut self) -> mlua::Result<()> {
        let globals = self.lua.globals();
        let mut tables: Vec<Table> = Vec::new();
        tables.extend(globals.get::<Option<Table>>("BODIES")?);
        if let Some(list) = globals.get::<Option<Table>>("Extensions")? {
            for obj in list.sequence_values::<Table>() {
                tables.extend(obj?.get::<Option<Table>>("BODIES")?);
            }
        }
        for t in tables {
            self.request_bodies |= t.get::<Option<bool>>("request")? == Some(true);
            self.response_bodies |= t.get::<Option<bool>>("response")? == Some(true);
        }
        self.request_bodies &= !self.request.is_empty();
        self.response_bodies &= !self.response.is_empty();
        Ok(())
    }

    /// Whether the script handles any WebSocket event (its flow then keeps the upgrade
    /// request for them).
    pub(crate) fn has_websocket_handlers(&self) -> bool {
        !self.websocket_start.is_empty()
            || !self.websocket_message.is_empty()
            || !self.websocket_end.is_empty()
    }

    /// Gives the next event its whole instruction budget (and forgets where the last
    /// one was).
    pub(crate) fn refill(&self) {
        self.budget.set(self.limit);
        self.place.borrow_mut().line = 0;
    }

    /// Finds the handlers: global functions named for events, then those of a returned
    /// table, then the methods of each `Extensions` object. A Burro directory's table
    /// (marked `__burro`) is the only source: its hooks' globals are not handlers.
    fn collect(
        &mut self,
        returned: &Value,
        start: &mut Handlers,
        configure: &mut Handlers,
    ) -> mlua::Result<()> {
        let globals = self.lua.globals();
        let burro = match returned {
            Value::Table(t) => t.raw_get::<Option<bool>>("__burro")? == Some(true),
            _ => false,
        };
        let mut sources: Vec<(Table, bool)> = Vec::new();
        if !burro {
            sources.push((globals.clone(), false));
        }
        if let Value::Table(t) = returned {
            sources.push((t.clone(), false));
        }
        if let (false, Some(list)) = (burro, globals.get::<Option<Table>>("Extensions")?) {
            for obj in list.sequence_values::<Table>() {
                sources.push((obj?, true));
            }
        }
        for (table, method) in sources {
            for &event in EVENTS {
                if let Some(func) = table.get::<Option<Function>>(event)? {
                    let this = method.then(|| table.clone());
                    let handler = Handler { func, this };
                    let list = match event {
                        "start" => &mut *start,
                        "configure" => &mut *configure,
                        "request" => &mut self.request,
                        "response" => &mut self.response,
                        "client_connect" => &mut self.client_connect,
                        "client_disconnect" => &mut self.client_disconnect,
                        "access_log" => &mut self.access_log,
                        "error" => &mut self.error,
                        "should_intercept" => &mut self.should_intercept,
                        "flush" => &mut self.flush,
                        "bus_event" => &mut self.bus_event,
                        "tls_handshake" => &mut self.tls_handshake,
                        "clientconnect" | "connect" => &mut self.client_connect,
                        "clientdisconnect" => &mut self.client_disconnect,
                        "websocket_start" => &mut self.websocket_start,
                        "websocket_message" => &mut self.websocket_message,
                        "websocket_end" => &mut self.websocket_end,
                        _ => &mut self.done,
                    };
                    // A function both global and in the returned table (a module's
                    // `return { request = request }`) is one handler, called once.
                    if !list
                        .iter()
                        .any(|h| h.func == handler.func && h.this == handler.this)
                    {
                        list.push(handler);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Handler {
    /// Calls the handler with `arg` (after `self` for a method).
    /// Events it emits on the bus are delivered when the outermost handler returns.
    pub(crate) fn call(&self, arg: &Value) -> mlua::Result<()> {
        super::helpers::bus::enter();
        let result = match &self.this {
            Some(this) => self.func.call::<()>((this.clone(), arg.clone())),
            None => self.func.call::<()>(arg.clone()),
        };
        super::helpers::bus::leave();
        result
    }

    /// Calls the handler with two arguments (after `self` for a method).
    pub(crate) fn call2(&self, first: &Value, second: &Value) -> mlua::Result<()> {
        super::helpers::bus::enter();
        let result = match &self.this {
            Some(this) => self
                .func
                .call::<()>((this.clone(), first.clone(), second.clone())),
            None => self.func.call::<()>((first.clone(), second.clone())),
        };
        super::helpers::bus::leave();
        result
    }

    /// Calls the handler with `args` (after `self` for a method) and returns its
    /// first result.
    pub(crate) fn call_with(&self, args: &[Value]) -> mlua::Result<Value> {
        let args: mlua::MultiValue = args.iter().cloned().collect();
        super::helpers::bus::enter();
        let result = match &self.this {
            Some(this) => {
                let mut all = args;
                all.push_front(Value::Table(this.clone()));
                self.func.call::<Value>(all)
            }
            None => self.func.call::<Value>(args),
        };
        super::helpers::bus::leave();
        result
    }
}

/// Wraps the error-catching functions (see [`Vm::load`]); called with `exhausted()`.
const RETHROW: &str = r#"
local exhausted = ...
local raw_pcall, raw_xpcall = pcall, xpcall
local pack, unpack = table.pack, table.unpack
local function check(r)
  if not r[1] and exhausted() then error(r[2], 0) end
  return unpack(r, 1, r.n)
end
pcall = function(...) return check(pack(raw_pcall(...))) end
xpcall = function(...) return check(pack(raw_xpcall(...))) end
"#;

fn vm_fn(lua: &Lua, f: impl Fn() -> bool + 'static) -> mlua::Result<Function> {
    lua.create_function(move |_, ()| Ok(f()))
}

/// Removes what a script must not reach: processes, files, native code, the debug
/// library and binary chunks. `require` finds Lua modules next to the script only.
fn sandbox(lua: &Lua, script: &Script) -> mlua::Result<()> {
    let globals = lua.globals();
    if let Some(os) = globals.get::<Option<Table>>("os")? {
        for name in [
            "execute",
            "exit",
            "remove",
            "rename",
            "tmpname",
            "getenv",
            "setlocale",
        ] {
            os.set(name, Value::Nil)?;
        }
    }
    for name in ["io", "debug", "dofile", "loadfile"] {
        globals.set(name, Value::Nil)?;
    }
    if let Some(package) = globals.get::<Option<Table>>("package")? {
        package.set("loadlib", Value::Nil)?;
        package.set("cpath", "")?;
        let dir = script
            .path
            .parent()
            .map(|d| d.display().to_string())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| ".".to_owned());
        let path = format!("{dir}/?.lua");
        package.set("path", path.as_str())?;
        package.set("searchpath", Value::Nil)?;
        // Keep the preload and Lua-file searchers; drop the C ones.
        if let Some(searchers) = package.get::<Option<Table>>("searchers")? {
            searchers.set(3, Value::Nil)?;
            searchers.set(4, Value::Nil)?;
        }
        // The Lua-file searcher reads `package.path` when called: a script that sets
        // it could load any file. It searches next to the script whatever the script
        // did, for dotted names only (a `/` would climb out of the directory).
        lua.load(
            r#"
            local package, path, searcher = package, ...
            package.searchers[2] = function(name)
              if type(name) ~= "string" or name:find("[/\\]") then
                return "\n\tno module '" .. tostring(name) .. "' (names are dotted, next to the script)"
              end
              local saved = package.path
              package.path = path
              local ok, found, where = pcall(searcher, name)
              package.path = saved
              if not ok then error(found, 0) end
              return found, where
            end
            "#,
        )
        .set_name("=sandbox")
        .call::<()>((path, searchers_lua(&package)?))?;
    }
    // `load` takes text only.
    lua.load(
        r#"
        local raw_load, select = load, select
        load = function(chunk, name, _, ...)
          -- An `env` given (even nil) replaces the chunk's globals; none keeps them.
          if select('#', ...) == 0 then return raw_load(chunk, name, "t") end
          return raw_load(chunk, name, "t", (...))
        end
        "#,
    )
    .set_name("=sandbox")
    .exec()?;
    // `print` goes to the log, not to standard output.
    let name = script.path.display().to_string();
    let print = lua.create_function(move |_, args: mlua::Variadic<Value>| {
        let line: Vec<String> = args
            .iter()
            .map(|v| match v {
                Value::String(s) => s.to_string_lossy(),
                other => other.to_string().unwrap_or_else(|_| format!("{other:?}")),
            })
            .collect();
        tracing::info!(script = %name, "{}", line.join("\t"));
        Ok(())
    })?;
    globals.set("print", print)?;
    Ok(())
}

/// The standard Lua-file searcher (`package.searchers[2]`).
fn searchers_lua(package: &Table) -> mlua::Result<Function> {
    package.get::<Table>("searchers")?.get::<Function>(2)
}

/// One line for a Lua error: `file:line: message` where Lua knows the place.
pub(crate) fn describe(err: &mlua::Error) -> String {
    match err {
        mlua::Error::CallbackError { traceback, cause } => match traceback_place(traceback) {
            Some(place) => format!("{place}: {}", describe(cause)),
            None => describe(cause),
        },
        mlua::Error::SyntaxError { message, .. } => first_line(message),
        mlua::Error::RuntimeError(message) => first_line(message),
        mlua::Error::MemoryError(message) => format!("memory limit: {}", first_line(message)),
        other => first_line(&other.to_string()),
    }
}

impl Vm {
    /// [`describe`], with this script's file names whole; a memory error is placed (see
    /// [`describe_at`]).
    pub(crate) fn describe(&self, err: &mlua::Error) -> String {
        describe_at(err, &self.place.borrow(), &self.root)
    }
}

/// Where a script was when the budget hook last ran (every [`HOOK_EVERY`] instructions)
/// in the running event: a file of the script (`@` chunks: not the sandbox's or the
/// Burro prelude's code) and a line, 0 when not seen in this event.
#[derive(Default)]
struct Place {
    file: String,
    line: i32,
}

impl Place {
    /// Records where `debug`'s function is (in one of the script's files).
    fn note(&mut self, debug: &mlua::Debug) {
        let line = debug.curr_line();
        if line <= 0 {
            return;
        }
        let source = debug.source();
        let Some(file) = source.source.as_deref().and_then(|s| s.strip_prefix('@')) else {
            return;
        };
        if self.file != file {
            self.file.clear();
            self.file.push_str(file);
        }
        self.line = line;
    }
}

/// A script's error as one line, `file:line: message`, file names whole (`root`: the
/// script's file or directory). Lua gives a memory error no place (its message handler
/// does not run for one): it is put where the budget hook (every [`HOOK_EVERY`]
/// instructions) last saw one of the script's files in this event, else at the script.
fn describe_at(err: &mlua::Error, place: &Place, root: &Path) -> String {
    let mut msg = describe(err);
    if unplaced_memory_error(err) {
        msg = if place.line > 0 {
            format!("{}:{}: {msg}", place.file, place.line)
        } else {
            format!("{}: {msg}", root.display())
        };
    }
    whole_paths(msg, root)
}

/// Whether `err` is a memory error that [`describe`] finds no place for.
fn unplaced_memory_error(err: &mlua::Error) -> bool {
    match err {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { traceback, cause } => {
            traceback_place(traceback).is_none() && unplaced_memory_error(cause)
        }
        _ => false,
    }
}

/// How much of a long file name Lua keeps in its messages: `LUA_IDSIZE` (60) less
/// `...` and the terminating NUL.
const LUA_NAME_TAIL: usize = 56;

/// `msg` with the script's file names whole again. Lua shortens a file name longer
/// than 59 bytes to `...` and its last 56, which can hide the directory; `root` is
/// the script file, or the directory of a hooks script, and the tail is matched
/// against it up to the `:` before the line number.
fn whole_paths(msg: String, root: &Path) -> String {
    if !msg.contains("...") {
        return msg;
    }
    let root = root.display().to_string();
    let mut out = String::with_capacity(msg.len() + 64);
    let mut rest = msg.as_str();
    while let Some(at) = rest.find("...") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        match whole_name(after, &root) {
            Some((name, shortened)) => {
                out.push_str(&name);
                rest = &after[shortened..];
            }
            None => {
                out.push_str("...");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The file under `root` whose name ends with the shortened name at the start of
/// `after`, and the length of that shortened name.
fn whole_name(after: &str, root: &str) -> Option<(String, usize)> {
    let tail = after.get(..LUA_NAME_TAIL)?;
    if after.as_bytes().get(LUA_NAME_TAIL) != Some(&b':') {
        return None;
    }
    let file = tail.rsplit('/').next().filter(|f| !f.is_empty())?;
    let in_dir = format!("{}/{file}", root.trim_end_matches('/'));
    [root.to_owned(), in_dir]
        .into_iter()
        .find(|name| name.len() > tail.len() && name.ends_with(tail))
        .map(|name| (name, tail.len()))
}

/// The first `file.lua:line` of a traceback.
fn traceback_place(traceback: &str) -> Option<&str> {
    traceback
        .lines()
        .map(str::trim)
        .find(|l| l.contains(".lua:"))
        .and_then(|l| l.split(": in ").next())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortened_names_of_the_scripts_files_are_made_whole() {
        let dir = "/srv/proxy/a-directory-name-long-enough-for-lua-to-shorten/";
        let file = format!("{dir}after_request.lua");
        let short = format!("...{}", &file[file.len() - LUA_NAME_TAIL..]);
        let whole = |msg: &str| whole_paths(msg.to_owned(), Path::new(dir));
        // A file of a hooks directory, each time it appears.
        assert_eq!(
            whole(&format!("{short}:3: x near '...'")),
            format!("{file}:3: x near '...'")
        );
        assert_eq!(
            whole(&format!("{short}:2: {short}:9: boom")),
            format!("{file}:2: {file}:9: boom")
        );
        // Dots that are not a shortened name of this script's files stay.
        let other = format!("...{}", &short[4..]);
        for kept in [
            format!("{other}:1: x"),
            short.clone(),
            format!("{short}x:1: x"),
            "wait... what: x".to_owned(),
            "trailing ...".to_owned(),
        ] {
            assert_eq!(whole(&kept), kept);
        }
        // A single script file.
        let script = Path::new(&file);
        assert_eq!(
            whole_paths(format!("{short}:4: boom"), script),
            format!("{file}:4: boom")
        );
    }
}
