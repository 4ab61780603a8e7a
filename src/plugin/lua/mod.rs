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
//! `flush(opts)` runs at a worker's end (before `done`) and every
//! `--script-flush-interval`. A directory is a Burro-style script (see `burro`).
//!
//! A handler that raises, runs past `--script-instruction-limit` or past the VM's
//! `--script-memory-limit` ends that event with a logged `script_error`, and the exchange
//! goes on (fail-open; edits made before the failure stay), unless the script sets
//! `FAIL_CLOSED = true`: then the client gets 500 `proxy_internal_error`.

mod burro;
mod flow;
mod helpers;
mod options;
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

pub use self::options::script_name;

/// Whether a `--plugins` name is a script: a `.lua` file or a Burro-style directory of
/// hook files (an existing directory, or a path ending in `/`).
pub fn is_script(name: &str) -> bool {
    name.ends_with(".lua") || burro::is_dir(name)
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
    /// The workers' inboxes for `bus.emit`.
    bus: helpers::Bus,
    /// `--artifacts-dir` (created when missing).
    artifacts: Option<Arc<helpers::Root>>,
    /// `--data-dir`.
    data: Option<Arc<helpers::Root>>,
}

impl Env {
    /// Opens `--kv-file` (or an in-memory store), `--artifacts-dir` and `--data-dir`.
    ///
    /// # Errors
    /// `--kv-file PATH: why` when the file exists but cannot be read or parsed;
    /// `--artifacts-dir DIR: why` / `--data-dir DIR: why` when the directory cannot be
    /// made (artifacts) or does not exist (data).
    pub fn new(config: &Config) -> Result<Arc<Env>, String> {
        let kv = match &config.kv_file {
            Some(path) => helpers::Kv::open(path).map_err(|why| format!("--kv-file {why}"))?,
            None => helpers::Kv::memory(),
        };
        let root = |dir: &Option<std::path::PathBuf>, create: bool, flag: &str| {
            dir.as_deref()
                .map(|dir| helpers::Root::open(dir, create).map(Arc::new))
                .transpose()
                .map_err(|why| format!("{flag} {why}"))
        };
        Ok(Arc::new(Env {
            kv,
            bus: helpers::Bus::default(),
            artifacts: root(&config.artifacts_dir, true, "--artifacts-dir")?,
            data: root(&config.data_dir, false, "--data-dir")?,
        }))
    }

    /// An environment around `kv`, for unit tests.
    #[cfg(test)]
    pub(crate) fn with_kv(kv: helpers::Kv) -> Arc<Env> {
        Arc::new(Env {
            kv,
            bus: helpers::Bus::default(),
            artifacts: None,
            data: None,
        })
    }
}

/// A script, loaded at start-up; builds a [`LuaPlugin`] per client connection.
pub struct LuaFactory {
    script: Arc<Script>,
    name: &'static str,
    /// `script.command` and its help, for `--list-commands`.
    commands: Vec<(String, String)>,
}

impl LuaFactory {
    /// Reads `path` and loads it once (here, on the calling thread) to check it.
    ///
    /// # Errors
    /// `script FILE: …` when the file cannot be read; `script FILE:LINE: message` when
    /// it does not compile or fails while loading or in `start`.
    pub fn load(path: &Path, config: &Config, env: &Arc<Env>) -> Result<Self, String> {
        let source = if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
            burro::source(path)?
        } else {
            std::fs::read_to_string(path).map_err(|e| format!("script {}: {e}", path.display()))?
        };
        let name = script_name(path);
        let settings = config
            .script_settings
            .iter()
            .filter(|(script, _, _)| *script == name)
            .map(|(_, option, value)| (option.clone(), value.clone()))
            .collect();
        let script = Arc::new(Script {
            id: NEXT_SCRIPT.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            source,
            name,
            settings,
            env: Arc::clone(env),
            instruction_limit: config.script_instruction_limit,
            memory_limit: config.script_memory_limit,
        });
        let probe = Vm::load(&script).map_err(|e| format!("script {e}"))?;
        let commands = probe
            .commands
            .iter()
            .map(|c| (format!("{}.{}", script.name, c.name), c.help.clone()))
            .collect();
        // The name lives as long as the process (factories are built once).
        let name: &'static str = Box::leak(path.display().to_string().into_boxed_str());
        Ok(LuaFactory {
            script,
            name,
            commands,
        })
    }
}

impl PluginFactory for LuaFactory {
    fn name(&self) -> &'static str {
        self.name
    }

    fn commands(&self) -> Vec<(String, String)> {
        self.commands.clone()
    }

    fn build(&self) -> Box<dyn Plugin> {
        Box::new(LuaPlugin {
            vm: vm_for(&self.script),
            name: self.name,
            exchange: None,
            conn: 0,
            new_req_body: None,
            deferred: false,
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
        if vm.as_ref().is_some_and(|vm| !vm.bus_event.is_empty()) {
            helpers::bus::join(&script.env.bus);
        }
        vms.borrow_mut().insert(script.id, vm.clone());
        vm
    })
}

/// This thread's VMs, in script order (for `bus` delivery).
pub(crate) fn vms_on_this_thread() -> Vec<Rc<Vm>> {
    VMS.with(|vms| {
        let Ok(vms) = vms.try_borrow() else {
            return Vec::new();
        };
        let mut loaded: Vec<(usize, Rc<Vm>)> = vms
            .iter()
            .filter_map(|(id, vm)| vm.as_ref().map(|vm| (*id, Rc::clone(vm))))
            .collect();
        loaded.sort_by_key(|(id, _)| *id);
        loaded.into_iter().map(|(_, vm)| vm).collect()
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
    /// The request body a `request` handler assigned, until `on_request_body` sends it.
    new_req_body: Option<bytes::Bytes>,
    /// `response` handlers wait for the whole body (`BODIES.response`).
    deferred: bool,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Runs every `flush` handler of this thread's VMs (`--script-flush-interval`).
pub fn flush_on_this_thread() {
    let vms: Vec<Rc<Vm>> = VMS.with(|vms| vms.borrow().values().flatten().cloned().collect());
    let session = flush_session();
    for vm in &vms {
        flush(vm, &session, false);
    }
}

/// Runs `flush_on_this_thread` every `every` (the first time after one period) until
/// dropped; a worker spawns it when `--script-flush-interval` is given.
pub async fn flush_every(every: std::time::Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        flush_on_this_thread();
    }
}

/// `opts.session` of a flush: its UTC start time to the millisecond,
/// `20261201T031502.123Z` (the same on every worker only by chance).
fn flush_session() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// Runs `vm`'s `flush(opts)` handlers; `opts.final` is true at shutdown.
fn flush(vm: &Vm, session: &str, last: bool) {
    if vm.flush.is_empty() {
        return;
    }
    let run = || -> mlua::Result<()> {
        let opts = vm.lua.create_table()?;
        opts.set("session", session)?;
        opts.set("final", last)?;
        let opts = mlua::Value::Table(opts);
        for handler in &vm.flush {
            vm.refill();
            handler.call(&opts)?;
        }
        Ok(())
    };
    if let Err(e) = run() {
        tracing::warn!(
            error.code = ErrorKind::ScriptError.code(),
            "script {}",
            vm.describe(&e)
        );
    }
}

/// Runs every `flush` (final) then `done` handler of this thread's VMs, once (a
/// worker's end).
pub fn done_on_this_thread() {
    let vms: Vec<Rc<Vm>> =
        VMS.with(|vms| vms.borrow_mut().drain().filter_map(|(_, vm)| vm).collect());
    let session = flush_session();
    for vm in vms {
        flush(&vm, &session, true);
        for handler in &vm.done {
            vm.refill();
            if let Err(e) = handler.call(&mlua::Value::Nil) {
                tracing::warn!(
                    error.code = ErrorKind::ScriptError.code(),
                    "script {}",
                    vm.describe(&e)
                );
            }
        }
    }
}

impl LuaPlugin {
    /// The connection's first hook call: `client_connect(conn)`.
    fn connect(&mut self, vm: &Vm, cx: &RequestCx<'_>) {
        // Every hook comes here first: bus events from other workers are delivered now.
        helpers::bus::poll();
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
            script_failed(vm, cx.client, &e);
        }
    }

    /// Runs handlers that only observe (`access_log`, `error`): a failure is logged once
    /// per exchange, controls are ignored (the exchange is over).
    fn observe(&self, vm: &Vm, handlers: &Handlers, shared: &Shared, extra: Option<mlua::Value>) {
        vm.refill();
        let run = || -> mlua::Result<()> {
            let flow = flow::flow_value(shared);
            for handler in handlers {
                match &extra {
                    Some(extra) => handler.call2(&flow, extra)?,
                    None => handler.call(&flow)?,
                }
            }
            Ok(())
        };
        let result = run();
        let mut ex = shared.borrow_mut();
        ex.control = None;
        if let Err(e) = result {
            if !ex.logged {
                ex.logged = true;
                script_failed(vm, ex.client, &e);
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
        let conn = self.conn;
        Rc::clone(self.exchange.get_or_insert_with(|| {
            let mut ex = Exchange::new(cx.client);
            ex.conn = conn;
            Rc::new(RefCell::new(ex))
        }))
    }

    /// Runs `handlers` with the flow; `Ok(true)` when they all returned.
    fn run(vm: &Vm, handlers: &Handlers, shared: &Shared) -> Result<(), String> {
        vm.refill();
        let flow = flow::flow_value(shared);
        for handler in handlers {
            handler.call(&flow).map_err(|e| vm.describe(&e))?;
            if shared.borrow().control.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Runs the `response` handlers over `res` (and the body, when it is in).
    fn respond(
        &mut self,
        vm: &Vm,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
    ) -> Result<Flow, PluginError> {
        let shared = self.exchange(cx);
        {
            let mut ex = shared.borrow_mut();
            let placeholder = PLACEHOLDERS.with(|p| p.1.clone());
            ex.res = Some(std::mem::replace(res, placeholder));
            ex.control = None;
        }
        let result = Self::run(vm, &vm.response, &shared);
        let control = {
            let mut ex = shared.borrow_mut();
            if let Some(r) = ex.res.take() {
                *res = r;
            }
            ex.control.take()
        };
        if let Err(message) = result {
            let flow = self.failed(vm, &shared, message)?;
            // A reply, kill or replacement made before the error stands.
            if control.is_none() {
                return Ok(flow);
            }
        }
        Ok(to_flow(control, |status, headers, body| {
            Reply::new(status, headers, body, false)
        }))
    }

    /// A handler failed: logged once per exchange; fail-open unless `FAIL_CLOSED`.
    fn failed(&self, vm: &Vm, shared: &Shared, message: String) -> Result<Flow, PluginError> {
        let mut ex = shared.borrow_mut();
        if !ex.logged {
            ex.logged = true;
            tracing::warn!(
                error.code = ErrorKind::ScriptError.code(),
                client = %ex.client,
                "script {message}"
            );
        }
        if vm.fail_closed {
            return Err(PluginError::script(&message));
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
            let headers = borrowed(&headers);
            Flow::Respond(reply(status, &headers, &body))
        }
        // Only `response` handlers can replace (the call refuses without a response head).
        Some(Control::Replace {
            status,
            reason,
            body,
            headers,
        }) => {
            let headers = borrowed(&headers);
            let reason = reason
                .as_deref()
                .unwrap_or_else(|| http::response::reason_phrase(status));
            let bytes =
                http::response::response_with_reason(status, reason, &headers, &body, false);
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
            self.new_req_body = ex.new_req_body.take();
            ex.control.take()
        };
        if let Err(message) = result {
            let flow = self.failed(&vm, &shared, message)?;
            // A reply or kill made before the error stands: a script that decided to
            // stop the request must not let it through by failing afterwards.
            if control.is_none() {
                return Ok(flow);
            }
        }
        Ok(to_flow(control, |status, headers, body| {
            Reply::answering(req, status, headers, body)
        }))
    }

    fn on_request_skipped(&mut self, cx: &RequestCx<'_>, req: &RequestHead, target: &Target) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        self.connect(&vm, cx);
        // An earlier plugin answered: `error` and `access_log` still read the request
        // (the response handlers do not run on its answer).
        if !vm.access_log.is_empty() || !vm.error.is_empty() {
            let shared = self.exchange(cx);
            let mut ex = shared.borrow_mut();
            ex.req = Some(req.clone());
            ex.target = Some(target.clone());
        }
    }

    fn hold(&mut self) -> Option<crate::plugin::Hold> {
        let pause = self.exchange.as_ref()?.borrow().paused.clone()?;
        Some(Box::pin(pause.resumed()))
    }

    fn wants_request_body_first(&self) -> bool {
        self.vm.as_ref().is_some_and(|vm| vm.request_bodies)
    }

    fn on_request_body_first(&mut self, cx: &RequestCx<'_>, body: &bytes::Bytes) {
        if self.wants_request_body_first() {
            self.exchange(cx).borrow_mut().req_body = Some(body.clone());
        }
    }

    fn wants_request_body(&self) -> bool {
        self.new_req_body.is_some()
    }

    fn on_request_body(
        &mut self,
        _cx: &RequestCx<'_>,
        body: bytes::Bytes,
    ) -> Result<bytes::Bytes, PluginError> {
        Ok(self.new_req_body.take().unwrap_or(body))
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
        if vm.response_bodies {
            // The handlers run once the body is in (`on_whole_response`).
            self.deferred = true;
            return Ok(Flow::Continue);
        }
        self.respond(&vm, cx, res)
    }

    fn wants_whole_response(&self) -> bool {
        self.deferred
    }

    fn on_whole_response(
        &mut self,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
        body: Option<&bytes::Bytes>,
    ) -> Result<(Flow, Option<bytes::Bytes>), PluginError> {
        self.deferred = false;
        let Some(vm) = self.vm.clone() else {
            return Ok((Flow::Continue, None));
        };
        let shared = self.exchange(cx);
        {
            let mut ex = shared.borrow_mut();
            ex.res_body = body.cloned();
            ex.res_body_open = true;
        }
        let flow = self.respond(&vm, cx, res);
        let new = {
            let mut ex = shared.borrow_mut();
            ex.res_body_open = false;
            ex.res_body = None;
            ex.new_res_body.take()
        };
        Ok((flow?, new))
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
            let flow = tunnel_flow(&vm, cx, self.conn, host, port, sni)?;
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
                script_failed(&vm, cx.client, &e);
                true
            }
        }
    }

    fn on_tls_handshake(&mut self, cx: &RequestCx<'_>, host: &str, port: u16, sni: &str) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        self.connect(&vm, cx);
        if vm.tls_handshake.is_empty() {
            return;
        }
        vm.refill();
        let run = || -> mlua::Result<()> {
            let flow = tunnel_flow(&vm, cx, self.conn, host, port, Some(sni))?;
            for handler in &vm.tls_handshake {
                handler.call(&flow)?;
            }
            Ok(())
        };
        if let Err(e) = run() {
            script_failed(&vm, cx.client, &e);
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
            let flow = flow::flow_value(&shared);
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
            let _fail_open = self.failed(&vm, &shared, vm.describe(&e))?;
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
        if vm.error.is_empty() && vm.access_log.is_empty() {
            return;
        }
        let shared = self.exchange(cx);
        shared.borrow_mut().error = Some((err.code(), err.to_string()));
        if vm.error.is_empty() {
            return;
        }
        let err = match error_table(&vm, &shared, cx, err) {
            Ok(t) => mlua::Value::Table(t),
            Err(_) => return,
        };
        self.observe(&vm, &vm.error, &shared, Some(err));
    }

    fn on_complete(&mut self, cx: &RequestCx<'_>, status: Option<u16>) {
        self.deferred = false;
        self.new_req_body = None;
        if let Some(vm) = self.vm.clone() {
            self.connect(&vm, cx);
            if !vm.access_log.is_empty() {
                let shared = self.exchange(cx);
                shared.borrow_mut().status = status;
                self.observe(&vm, &vm.access_log, &shared, None);
            }
        }
        // Kept for the next exchange; a flow a script kept past this one stops resolving
        // (see `flow`), so it sees nothing of the next.
        if let Some(shared) = &self.exchange {
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

/// `(name, value)` pairs as the reply builders take them.
fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// Logs a failed handler of an event outside an exchange's own failure handling.
fn script_failed(vm: &Vm, client: std::net::SocketAddr, err: &mlua::Error) {
    tracing::warn!(
        error.code = ErrorKind::ScriptError.code(),
        client = %client,
        "script {}",
        vm.describe(err)
    );
}

/// The flow of a CONNECT tunnel's events (`should_intercept`, `tls_handshake`): a plain
/// table, `request` holding the CONNECT's host, port and method.
fn tunnel_flow(
    vm: &Vm,
    cx: &RequestCx<'_>,
    conn: u64,
    host: &str,
    port: u16,
    sni: Option<&str>,
) -> mlua::Result<mlua::Value> {
    let flow = vm.lua.create_table()?;
    let request = vm.lua.create_table()?;
    request.set("host", host)?;
    request.set("port", port)?;
    request.set("method", "CONNECT")?;
    flow.set("request", request)?;
    flow.set("sni", sni)?;
    flow.set("client_addr", cx.client.to_string())?;
    flow.set("id", conn)?;
    Ok(mlua::Value::Table(flow))
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
    t.set("phase", phase(err.kind()))?;
    // Tiri spells these in camel case.
    t.set("clientIP", cx.client.ip().to_string())?;
    let ex = shared.borrow();
    if let (Some(req), Some(target)) = (&ex.req, &ex.target) {
        for (keys, field) in [
            (&["method"][..], "method"),
            (&["url"][..], "url"),
            (&["target_host", "targetHost"][..], "host"),
            (&["target_port", "targetPort"][..], "port"),
        ] {
            let value = flow::request_field(&vm.lua, req, target, field)?;
            for key in keys {
                t.set(*key, value.clone())?;
            }
        }
    }
    Ok(t)
}

/// Where in the exchange an error of this kind happens: `request` (the client's
/// request), `connect` (reaching the origin), `response` (the origin's response) or
/// `proxy` (the proxy itself, a plugin or a script).
fn phase(kind: ErrorKind) -> &'static str {
    use crate::error::Side;
    match kind {
        ErrorKind::DnsError
        | ErrorKind::DnsTimeout
        | ErrorKind::ConnectionRefused
        | ErrorKind::DestinationUnavailable
        | ErrorKind::ConnectionTimeout
        | ErrorKind::TlsProtocolError
        | ErrorKind::TlsCertificateError => "connect",
        kind => match kind.side() {
            Side::Client => "request",
            Side::Upstream => "response",
            Side::Internal => "proxy",
        },
    }
}

#[cfg(test)]
mod tests;
