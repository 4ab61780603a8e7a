//! Lua scripts as plugins (DESIGN §7; issue 9, its foundation).
//!
//! A script is a [`PluginFactory`]: `--plugins ./x.lua` places it among the built-ins,
//! `--script x.lua` after them. It is read and loaded once at start-up on the main
//! thread (a script that does not load stops start-up with its file and line), then
//! each worker thread loads its own VM on first use, kept in a thread-local table
//! indexed by script; every plugin built on that thread holds an `Rc` to it.
//!
//! Handlers are global functions named for events, functions of a returned table, or
//! methods of the objects in `Extensions` (called with `self`). `start` runs once per
//! VM at load; `request(flow)` and `response(flow)` run from `on_request` and
//! `on_response`. A script without a handler for an event costs one branch per event.
//!
//! A handler that raises, runs past `--script-instruction-limit` or past the VM's
//! `--script-memory-limit` ends that event with a logged `script_error`, and the exchange
//! goes on (fail-open; edits made before the failure stay), unless the script sets
//! `FAIL_CLOSED = true`: then the client gets 500 `proxy_internal_error`.

mod flow;
mod helpers;
mod vm;
mod ws;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use crate::config::{Config, Limits};
use crate::error::ErrorKind;
use crate::http::{self, RequestHead, ResponseHead, Target};

use self::flow::{Control, Exchange, Shared};
use self::vm::{Handlers, Script, Vm};
use super::{Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx, WsMessage, WsVerdict};

/// Whether a `--plugins` name is a script.
pub fn is_script(name: &str) -> bool {
    name.ends_with(".lua")
}

static NEXT_SCRIPT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's VM of each script (`None`: it failed to load here; logged once).
    static VMS: RefCell<HashMap<usize, Option<Rc<Vm>>>> = RefCell::new(HashMap::new());
    /// Heads lent to the proxy while a script holds the real ones.
    static PLACEHOLDERS: (RequestHead, ResponseHead) = placeholders();
}

fn placeholders() -> (RequestHead, ResponseHead) {
    let limits = Limits::default();
    let mut req = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    let mut res = BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\n"[..]);
    match (
        http::parse_request(&mut req, &limits),
        http::parse_response(&mut res, &limits),
    ) {
        (Ok(http::Parsed::Complete(req)), Ok(http::Parsed::Complete(res))) => (req, res),
        _ => unreachable!("the placeholder heads are valid"),
    }
}

/// What every script of the process shares: built once, before the first script loads.
#[derive(Debug)]
pub struct Env {
    /// The `kv` store.
    kv: helpers::Kv,
}

impl Env {
    /// Opens `--kv-file` (or an in-memory store).
    ///
    /// # Errors
    /// `--kv-file PATH: why` when the file exists but cannot be read or parsed.
    pub fn new(config: &Config) -> Result<Arc<Env>, String> {
        let kv = match &config.kv_file {
            Some(path) => helpers::Kv::open(path).map_err(|why| format!("--kv-file {why}"))?,
            None => helpers::Kv::memory(),
        };
        Ok(Arc::new(Env { kv }))
    }

    /// An environment around `kv`, for unit tests.
    #[cfg(test)]
    pub(crate) fn with_kv(kv: helpers::Kv) -> Arc<Env> {
        Arc::new(Env { kv })
    }
}

/// A script, loaded at start-up; builds a [`LuaPlugin`] per client connection.
pub struct LuaFactory {
    script: Arc<Script>,
    name: &'static str,
}

impl LuaFactory {
    /// Reads `path` and loads it once (here, on the calling thread) to check it.
    ///
    /// # Errors
    /// `script FILE: …` when the file cannot be read; `script FILE:LINE: message` when
    /// it does not compile or fails while loading or in `start`.
    pub fn load(path: &Path, config: &Config, env: &Arc<Env>) -> Result<Self, String> {
        let source =
            std::fs::read_to_string(path).map_err(|e| format!("script {}: {e}", path.display()))?;
        let script = Arc::new(Script {
            id: NEXT_SCRIPT.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            source,
            env: Arc::clone(env),
            instruction_limit: config.script_instruction_limit,
            memory_limit: config.script_memory_limit,
        });
        Vm::load(&script).map_err(|e| format!("script {e}"))?;
        // The name lives as long as the process (factories are built once).
        let name: &'static str = Box::leak(path.display().to_string().into_boxed_str());
        Ok(LuaFactory { script, name })
    }
}

impl PluginFactory for LuaFactory {
    fn name(&self) -> &'static str {
        self.name
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(LuaPlugin {
            vm: vm_for(&self.script),
            name: self.name,
            exchange: None,
            conn: 0,
        })
    }
}

/// This thread's VM for `script`, loading it on first use.
fn vm_for(script: &Script) -> Option<Rc<Vm>> {
    VMS.with(|vms| {
        if let Some(vm) = vms.borrow().get(&script.id) {
            return vm.clone();
        }
        let vm = match Vm::load(script) {
            Ok(vm) => Some(Rc::new(vm)),
            Err(e) => {
                tracing::error!(
                    error.code = ErrorKind::ScriptError.code(),
                    "script {e}: not run on this worker"
                );
                None
            }
        };
        vms.borrow_mut().insert(script.id, vm.clone());
        vm
    })
}

/// A script in one client connection's chain.
pub struct LuaPlugin {
    vm: Option<Rc<Vm>>,
    name: &'static str,
    /// Made on the first event with a handler.
    exchange: Option<Shared>,
    /// `conn.id`, drawn on the connection's first hook call (0: not yet).
    conn: u64,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Runs every `done` handler of this thread's VMs, once (a worker's end).
pub fn done_on_this_thread() {
    let vms: Vec<Rc<Vm>> =
        VMS.with(|vms| vms.borrow_mut().drain().filter_map(|(_, vm)| vm).collect());
    for vm in vms {
        for handler in &vm.done {
            vm.refill();
            if let Err(e) = handler.call(&mlua::Value::Nil) {
                tracing::warn!(
                    error.code = ErrorKind::ScriptError.code(),
                    "script {}",
                    vm::describe(&e)
                );
            }
        }
    }
}

impl LuaPlugin {
    /// The connection's first hook call: `client_connect(conn)`.
    fn connect(&mut self, vm: &Vm, cx: &RequestCx<'_>) {
        if self.conn != 0 {
            return;
        }
        self.conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        if !vm.client_connect.is_empty() {
            self.run_conn(vm, &vm.client_connect, cx);
        }
    }

    /// Runs `client_connect` or `client_disconnect` handlers with a `conn` table.
    fn run_conn(&self, vm: &Vm, handlers: &Handlers, cx: &RequestCx<'_>) {
        let run = || -> mlua::Result<()> {
            let conn = vm.lua.create_table()?;
            conn.set("id", self.conn)?;
            conn.set("client_addr", cx.client.to_string())?;
            let conn = mlua::Value::Table(conn);
            for handler in handlers {
                vm.refill();
                handler.call(&conn)?;
            }
            Ok(())
        };
        if let Err(e) = run() {
            tracing::warn!(
                error.code = ErrorKind::ScriptError.code(),
                client = %cx.client,
                "script {}",
                vm::describe(&e)
            );
        }
    }

    /// Runs handlers that only observe (`access_log`, `error`): a failure is logged once
    /// per exchange, controls are ignored (the exchange is over).
    fn observe(&self, vm: &Vm, handlers: &Handlers, shared: &Shared, extra: Option<mlua::Value>) {
        vm.refill();
        let run = || -> mlua::Result<()> {
            let flow = mlua::Value::UserData(flow::flow_value(&vm.lua, shared)?);
            let args = match extra {
                Some(extra) => vec![flow, extra],
                None => vec![flow],
            };
            for handler in handlers {
                handler.call_with(&args)?;
            }
            Ok(())
        };
        let result = run();
        let mut ex = shared.borrow_mut();
        ex.control = None;
        if let Err(e) = result {
            if !ex.logged {
                ex.logged = true;
                tracing::warn!(
                    error.code = ErrorKind::ScriptError.code(),
                    client = %ex.client,
                    "script {}",
                    vm::describe(&e)
                );
            }
        }
    }

    /// The exchange of a WebSocket event: the upgrade request (read-only) and its 101.
    fn websocket_exchange(&mut self, cx: &RequestCx<'_>) -> Shared {
        let shared = self.exchange(cx);
        shared.borrow_mut().status = Some(101);
        shared
    }

    fn exchange(&mut self, cx: &RequestCx<'_>) -> Shared {
        Rc::clone(
            self.exchange
                .get_or_insert_with(|| Rc::new(RefCell::new(Exchange::new(cx.client)))),
        )
    }

    /// Runs `handlers` with the flow; `Ok(true)` when they all returned.
    fn run(vm: &Vm, handlers: &Handlers, shared: &Shared) -> Result<(), String> {
        vm.refill();
        let flow = flow::flow_value(&vm.lua, shared).map_err(|e| vm::describe(&e))?;
        let flow = mlua::Value::UserData(flow);
        for handler in handlers {
            handler.call(&flow).map_err(|e| vm::describe(&e))?;
            if shared.borrow().control.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// A handler failed: logged once per exchange; fail-open unless `FAIL_CLOSED`.
    fn failed(&self, vm: &Vm, shared: &Shared, message: String) -> Result<Flow, PluginError> {
        let mut ex = shared.borrow_mut();
        ex.control = None;
        if !ex.logged {
            ex.logged = true;
            tracing::warn!(
                error.code = ErrorKind::ScriptError.code(),
                client = %ex.client,
                "script {message}"
            );
        }
        if vm.fail_closed {
            return Err(PluginError(format!("script_error: {message}")));
        }
        Ok(Flow::Continue)
    }
}

/// What a handler's `reply`/`kill` (if any) means for the chain; `reply` builds the
/// response (an answer to the request, or a replacement of the origin's).
fn to_flow(
    control: Option<Control>,
    reply: impl FnOnce(u16, &[(&str, &str)], &[u8]) -> Reply,
) -> Flow {
    match control {
        None => Flow::Continue,
        Some(Control::Kill) => Flow::Close,
        Some(Control::Reply {
            status,
            body,
            headers,
        }) => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            Flow::Respond(reply(status, &headers, &body))
        }
        // Only `response` handlers can replace (the call refuses without a response head).
        Some(Control::Replace {
            status,
            reason,
            body,
            headers,
        }) => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let bytes = http::response::simple_response(status, &headers, &body, false);
            let bytes = match reason {
                Some(reason) => with_reason(&bytes, status, &reason),
                None => bytes,
            };
            Flow::Respond(Reply::raw(status, bytes, false))
        }
    }
}

impl Plugin for LuaPlugin {
    fn name(&self) -> &'static str {
        self.name
    }

    fn on_request(
        &mut self,
        cx: &RequestCx<'_>,
        req: &mut RequestHead,
        target: &mut Target,
    ) -> Result<Flow, PluginError> {
        let Some(vm) = self.vm.clone() else {
            return Ok(Flow::Continue);
        };
        self.connect(&vm, cx);
        let keep = !vm.response.is_empty()
            || !vm.access_log.is_empty()
            || !vm.error.is_empty()
            || (vm.has_websocket_handlers() && req.has_token("upgrade", "websocket"));
        if vm.request.is_empty() {
            if keep {
                // The response handlers read the request.
                let shared = self.exchange(cx);
                let mut ex = shared.borrow_mut();
                ex.req = Some(req.clone());
                ex.target = Some(target.clone());
            }
            return Ok(Flow::Continue);
        }
        let shared = self.exchange(cx);
        {
            let mut ex = shared.borrow_mut();
            let placeholder = PLACEHOLDERS.with(|p| p.0.clone());
            ex.req = Some(std::mem::replace(req, placeholder));
            ex.target = Some(std::mem::replace(target, Target::Asterisk));
            ex.req_live = true;
            ex.control = None;
        }
        let result = Self::run(&vm, &vm.request, &shared);
        let control = {
            let mut ex = shared.borrow_mut();
            if let Some(r) = ex.req.take() {
                *req = r;
            }
            if let Some(t) = ex.target.take() {
                *target = t;
            }
            ex.req_live = false;
            if keep {
                ex.req = Some(req.clone());
                ex.target = Some(target.clone());
            }
            ex.control.take()
        };
        if let Err(message) = result {
            return self.failed(&vm, &shared, message);
        }
        Ok(to_flow(control, |status, headers, body| {
            Reply::answering(req, status, headers, body)
        }))
    }

    fn on_response(
        &mut self,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
    ) -> Result<Flow, PluginError> {
        let Some(vm) = self.vm.clone() else {
            return Ok(Flow::Continue);
        };
        self.connect(&vm, cx);
        if vm.response.is_empty() {
            return Ok(Flow::Continue);
        }
        let shared = self.exchange(cx);
        {
            let mut ex = shared.borrow_mut();
            let placeholder = PLACEHOLDERS.with(|p| p.1.clone());
            ex.res = Some(std::mem::replace(res, placeholder));
            ex.control = None;
        }
        let result = Self::run(&vm, &vm.response, &shared);
        let control = {
            let mut ex = shared.borrow_mut();
            if let Some(r) = ex.res.take() {
                *res = r;
            }
            ex.control.take()
        };
        if let Err(message) = result {
            return self.failed(&vm, &shared, message);
        }
        Ok(to_flow(control, |status, headers, body| {
            Reply::new(status, headers, body, false)
        }))
    }

    fn do_intercept(
        &mut self,
        cx: &RequestCx<'_>,
        host: &str,
        port: u16,
        sni: Option<&str>,
    ) -> bool {
        let Some(vm) = self.vm.clone() else {
            return true;
        };
        self.connect(&vm, cx);
        if vm.should_intercept.is_empty() {
            return true;
        }
        vm.refill();
        let run = || -> mlua::Result<bool> {
            let flow = vm.lua.create_table()?;
            let request = vm.lua.create_table()?;
            request.set("host", host)?;
            request.set("port", port)?;
            request.set("method", "CONNECT")?;
            flow.set("request", request)?;
            flow.set("sni", sni)?;
            flow.set("client_addr", cx.client.to_string())?;
            flow.set("id", self.conn)?;
            let flow = mlua::Value::Table(flow);
            for handler in &vm.should_intercept {
                if let mlua::Value::Boolean(false) =
                    handler.call_with(std::slice::from_ref(&flow))?
                {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        match run() {
            Ok(intercept) => intercept,
            Err(e) => {
                // Fail-open: the flags' choice stands.
                tracing::warn!(
                    error.code = ErrorKind::ScriptError.code(),
                    client = %cx.client,
                    "script {}",
                    vm::describe(&e)
                );
                true
            }
        }
    }

    fn wants_websocket_messages(&self) -> bool {
        self.vm
            .as_ref()
            .is_some_and(|vm| !vm.websocket_message.is_empty())
    }

    fn on_websocket_start(&mut self, cx: &RequestCx<'_>) -> Result<(), PluginError> {
        let Some(vm) = self.vm.clone() else {
            return Ok(());
        };
        self.connect(&vm, cx);
        if vm.websocket_start.is_empty() {
            return Ok(());
        }
        let shared = self.websocket_exchange(cx);
        let result = Self::run(&vm, &vm.websocket_start, &shared);
        // `reply`, `kill` and `replace` mean nothing once the protocol switched.
        shared.borrow_mut().control = None;
        match result {
            Ok(()) => Ok(()),
            Err(message) => self.failed(&vm, &shared, message).map(|_| ()),
        }
    }

    fn on_websocket_message(
        &mut self,
        cx: &RequestCx<'_>,
        msg: &mut WsMessage,
    ) -> Result<WsVerdict, PluginError> {
        let Some(vm) = self.vm.clone() else {
            return Ok(WsVerdict::Forward);
        };
        if vm.websocket_message.is_empty() {
            return Ok(WsVerdict::Forward);
        }
        let shared = self.websocket_exchange(cx);
        let state = Rc::new(RefCell::new(ws::MsgState {
            kind: msg.kind,
            content: msg.data.clone(),
            from_client: msg.from_client,
            dropped: false,
        }));
        vm.refill();
        let run = || -> mlua::Result<()> {
            let flow = mlua::Value::UserData(flow::flow_value(&vm.lua, &shared)?);
            let msg = vm.lua.create_userdata(ws::Msg(Rc::clone(&state)))?;
            let args = [flow, mlua::Value::UserData(msg)];
            for handler in &vm.websocket_message {
                handler.call_with(&args)?;
                if state.borrow().dropped {
                    break;
                }
            }
            Ok(())
        };
        let result = run();
        shared.borrow_mut().control = None;
        // Edits made before a failure stay (as for the other events).
        let state = state.borrow();
        msg.data = state.content.clone();
        if let Err(e) = result {
            let _fail_open = self.failed(&vm, &shared, vm::describe(&e))?;
        }
        Ok(if state.dropped {
            WsVerdict::Drop
        } else {
            WsVerdict::Forward
        })
    }

    fn on_websocket_end(&mut self, cx: &RequestCx<'_>) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        if vm.websocket_end.is_empty() {
            return;
        }
        let shared = self.websocket_exchange(cx);
        self.observe(&vm, &vm.websocket_end, &shared, None);
    }

    fn on_error(&mut self, cx: &RequestCx<'_>, err: &crate::error::ProxyError) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        self.connect(&vm, cx);
        if vm.error.is_empty() {
            return;
        }
        let shared = self.exchange(cx);
        let err = match error_table(&vm, &shared, cx, err) {
            Ok(t) => mlua::Value::Table(t),
            Err(_) => return,
        };
        self.observe(&vm, &vm.error, &shared, Some(err));
    }

    fn on_complete(&mut self, cx: &RequestCx<'_>, status: Option<u16>) {
        if let Some(vm) = self.vm.clone() {
            self.connect(&vm, cx);
            if !vm.access_log.is_empty() {
                let shared = self.exchange(cx);
                shared.borrow_mut().status = status;
                self.observe(&vm, &vm.access_log, &shared, None);
            }
        }
        // A flow a script kept past its exchange sees nothing of the next one.
        if let Some(shared) = self.exchange.take() {
            shared.borrow_mut().reset();
        }
    }

    fn on_close(&mut self, cx: &RequestCx<'_>) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        self.connect(&vm, cx);
        if !vm.client_disconnect.is_empty() {
            self.run_conn(&vm, &vm.client_disconnect, cx);
        }
    }
}

/// `bytes` (a response from `simple_response`) with its status line's reason replaced.
fn with_reason(bytes: &bytes::Bytes, status: u16, reason: &str) -> bytes::Bytes {
    let end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(bytes.len());
    let mut out = format!("HTTP/1.1 {status} {reason}").into_bytes();
    out.extend_from_slice(bytes.get(end..).unwrap_or_default());
    bytes::Bytes::from(out)
}

/// The `err` table of `error(flow, err)` (Tiri's fields).
fn error_table(
    vm: &Vm,
    shared: &Shared,
    cx: &RequestCx<'_>,
    err: &crate::error::ProxyError,
) -> mlua::Result<mlua::Table> {
    let t = vm.lua.create_table()?;
    t.set("code", err.code())?;
    t.set("message", err.to_string())?;
    t.set("client_ip", cx.client.ip().to_string())?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    t.set("timestamp", timestamp)?;
    let ex = shared.borrow();
    if let (Some(req), Some(target)) = (&ex.req, &ex.target) {
        t.set(
            "phase",
            if ex.res.is_some() {
                "response"
            } else {
                "request"
            },
        )?;
        for (key, field) in [
            ("method", "method"),
            ("url", "url"),
            ("target_host", "host"),
            ("target_port", "port"),
        ] {
            t.set(key, flow::request_field(&vm.lua, req, target, field)?)?;
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests;
