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
pub mod helpers;
mod vm;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use crate::config::{Config, Limits};
use crate::error::ErrorKind;
use crate::http::{self, RequestHead, ResponseHead, Target};

use self::flow::{Control, Exchange, Shared};
use self::vm::{Handlers, Script, Vm};
use super::{Flow, Plugin, PluginError, PluginFactory, Reply, RequestCx};

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
    pub fn load(path: &Path, config: &Config) -> Result<Self, String> {
        let source =
            std::fs::read_to_string(path).map_err(|e| format!("script {}: {e}", path.display()))?;
        let script = Arc::new(Script {
            id: NEXT_SCRIPT.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            source,
            kv: config.kv.clone(),
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
}

impl LuaPlugin {
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
        let keep = !vm.response.is_empty();
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
        Ok(match control {
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
                Flow::Respond(Reply::answering(req, status, &headers, &body))
            }
        })
    }

    fn on_response(
        &mut self,
        cx: &RequestCx<'_>,
        res: &mut ResponseHead,
    ) -> Result<Flow, PluginError> {
        let Some(vm) = self.vm.clone() else {
            return Ok(Flow::Continue);
        };
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
        Ok(match control {
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
                Flow::Respond(Reply::new(status, &headers, &body, false))
            }
        })
    }

    fn on_complete(&mut self, _: &RequestCx<'_>, _: Option<u16>) {
        // A flow a script kept past its exchange sees nothing of the next one.
        if let Some(shared) = self.exchange.take() {
            shared.borrow_mut().reset();
        }
    }
}

#[cfg(test)]
mod tests;
