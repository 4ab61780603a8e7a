//! `bus.emit(name, data?) -> err`: an event for every loaded script's
//! `bus_event(name, data)` handler.
//!
//! Delivery:
//! * **This worker**: every script VM of the emitting worker thread (the emitting script's
//!   own VM included) gets the event synchronously, right after the outermost handler
//!   that emitted returns, never re-entrantly inside it; in script order, in emit order.
//!   An emit made outside any handler (a script's top-level code) waits for the next
//!   handler to return, or for the next script hook on this worker.
//! * **Other workers**: each worker whose scripts have a `bus_event` handler owns an inbox
//!   (joined when its VMs load, at its first client connection); an emit copies the event
//!   into every other inbox, and that worker delivers it at its next script hook (a
//!   request, a response, a connection's end…). A request on a worker with no mail pays
//!   one thread-local read and one relaxed atomic load, no lock. An idle worker delivers
//!   late; an inbox holds at most [`MAX_PENDING`] events (the oldest go first, with a
//!   warning); a worker that has not loaded its VMs yet gets nothing sent before.
//! * **Cascades**: an emit from a `bus_event` handler is one generation deeper than the
//!   event that handler is receiving; past [`MAX_DEPTH`] generations `bus.emit` refuses
//!   (returns an error), and this worker holds at most [`MAX_PENDING`] undelivered events.
//! * **Data** is copied between VMs as `json.encode` would copy it: nil, booleans,
//!   numbers, UTF-8 strings and tables of them, at most [`MAX_DATA`] bytes as JSON; a
//!   function, userdata or thread is refused with an error, and so are cycles. (With
//!   [`MAX_PENDING`], a worker holds at most 64 MiB of undelivered data per queue.)
//! * **`start` and `done`**: an emit from `start` reaches the VMs already loaded on that
//!   thread (scripts earlier in the chain; none during the start-up check) and the other
//!   workers' inboxes; an emit from `done` (at shutdown) is logged and reaches no script.
//!
//! Each emit is logged at INFO (target `proxy::script`) with the `script` and `name`.
//! A `bus_event` handler that fails is logged with `script_error`, like any handler.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use mlua::{Lua, Table, Value};

use crate::error::ErrorKind;

/// Generations of emit-from-`bus_event` followed before `bus.emit` refuses.
pub const MAX_DEPTH: u32 = 8;

/// Events one worker holds undelivered (its own queue, and its inbox).
pub const MAX_PENDING: usize = 1024;

/// The most bytes an event's data may take, as JSON (64 KiB).
pub const MAX_DATA: usize = 64 * 1024;

/// The longest event name, in bytes.
const MAX_NAME: usize = 256;

/// The workers' inboxes: one per process, in the scripts' shared `Env`.
#[derive(Debug, Default)]
pub struct Bus {
    inboxes: Mutex<Vec<Weak<Inbox>>>,
}

#[derive(Debug, Default)]
struct Inbox {
    /// Set by a sender, cleared by the owner when it takes the mail.
    has_mail: AtomicBool,
    mail: Mutex<VecDeque<Message>>,
    /// Whether dropping events was already logged.
    overflowed: AtomicBool,
}

#[derive(Debug, Clone)]
struct Message {
    name: String,
    data: serde_json::Value,
    /// 1 for an emit from a flow handler; one more for each `bus_event` in between.
    depth: u32,
}

thread_local! {
    /// Script handlers running on this thread (nested calls count each).
    static CALLS: Cell<u32> = const { Cell::new(0) };
    /// Whether this thread is delivering (handlers called from the delivery loop).
    static DELIVERING: Cell<bool> = const { Cell::new(false) };
    /// The depth of the event being delivered (0: none).
    static CURRENT: Cell<u32> = const { Cell::new(0) };
    /// Events for this thread's VMs.
    static PENDING: RefCell<VecDeque<Message>> = const { RefCell::new(VecDeque::new()) };
    /// This worker's inbox, once one of its VMs has a `bus_event` handler.
    static INBOX: OnceCell<Arc<Inbox>> = const { OnceCell::new() };
}

/// A script handler starts (see [`leave`]).
pub(crate) fn enter() {
    CALLS.with(|c| c.set(c.get().saturating_add(1)));
}

/// A script handler returned: when it was the outermost one, the events emitted
/// meanwhile are delivered.
pub(crate) fn leave() {
    let outermost = CALLS.with(|c| {
        let n = c.get().saturating_sub(1);
        c.set(n);
        n == 0
    });
    if outermost && PENDING.with(|p| p.try_borrow().is_ok_and(|p| !p.is_empty())) {
        deliver();
    }
}

/// At a script hook, outside any handler: takes mail from other workers and delivers
/// what is pending. Costs a thread-local read and an atomic load when there is none.
pub(crate) fn poll() {
    INBOX.with(|inbox| {
        let Some(inbox) = inbox.get() else { return };
        if !inbox.has_mail.load(Ordering::Relaxed) {
            return;
        }
        inbox.has_mail.store(false, Ordering::Relaxed);
        let mail = std::mem::take(&mut *lock(&inbox.mail));
        PENDING.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.extend(mail);
                let excess = p.len().saturating_sub(MAX_PENDING);
                p.drain(..excess);
            }
        });
    });
    if CALLS.with(Cell::get) == 0 && PENDING.with(|p| p.try_borrow().is_ok_and(|p| !p.is_empty())) {
        deliver();
    }
}

/// This worker receives other workers' events from now on (idempotent).
pub(crate) fn join(bus: &Bus) {
    INBOX.with(|cell| {
        if cell.get().is_none() {
            let inbox = Arc::new(Inbox::default());
            let mut inboxes = lock(&bus.inboxes);
            inboxes.retain(|w| w.strong_count() > 0);
            inboxes.push(Arc::downgrade(&inbox));
            let _ = cell.set(inbox);
        }
    });
}

/// Delivers every pending event to this thread's VMs, events emitted meanwhile included.
fn deliver() {
    if DELIVERING.with(|d| d.replace(true)) {
        return;
    }
    let vms = super::super::vms_on_this_thread();
    while let Some(message) =
        PENDING.with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop_front()))
    {
        CURRENT.with(|c| c.set(message.depth));
        for vm in vms.iter().filter(|vm| !vm.bus_event.is_empty()) {
            let run = || -> mlua::Result<()> {
                vm.refill();
                let name = Value::String(vm.lua.create_string(&message.name)?);
                let data = super::from_json(&vm.lua, &message.data)?;
                let args = [name, data];
                for handler in &vm.bus_event {
                    handler.call_with(&args)?;
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
    }
    CURRENT.with(|c| c.set(0));
    DELIVERING.with(|d| d.set(false));
}

/// The `bus` table of one script.
pub(crate) fn bus_table(
    lua: &Lua,
    env: Arc<super::super::Env>,
    script: Arc<str>,
) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.set(
        "emit",
        lua.create_function(move |_, (name, data): (Value, Value)| {
            Ok(emit(&env.bus, &script, &name, &data).err())
        })?,
    )?;
    Ok(table)
}

/// `bus.emit`: checks, logs, queues here and posts to the other workers.
fn emit(bus: &Bus, script: &str, name: &Value, data: &Value) -> Result<(), String> {
    let name = match name {
        Value::String(s) => match s.to_str() {
            Ok(s) if !s.is_empty() && s.len() <= MAX_NAME => s.to_owned(),
            _ => {
                return Err(format!(
                    "bus.emit: name must be 1 to {MAX_NAME} bytes of UTF-8"
                ))
            }
        },
        _ => return Err("bus.emit: name must be a string".to_owned()),
    };
    let data = super::to_json(data, 0).map_err(|why| {
        format!(
            "bus.emit: data: {}",
            why.strip_prefix("json.encode: ").unwrap_or(&why)
        )
    })?;
    let mut size = Counter(0);
    if serde_json::to_writer(&mut size, &data).is_err() || size.0 > MAX_DATA {
        return Err(format!(
            "bus.emit: data larger than {MAX_DATA} bytes as JSON"
        ));
    }
    let depth = CURRENT.with(Cell::get) + 1;
    if depth > MAX_DEPTH {
        return Err(format!(
            "bus.emit: more than {MAX_DEPTH} generations of bus_event emitting again"
        ));
    }
    let message = Message { name, data, depth };
    let queued = PENDING.with(|p| match p.try_borrow_mut() {
        Ok(mut p) if p.len() < MAX_PENDING => {
            p.push_back(message.clone());
            Ok(())
        }
        _ => Err(format!(
            "bus.emit: {MAX_PENDING} events already wait for delivery"
        )),
    });
    queued?;
    tracing::info!(target: super::TARGET, script = %script, name = %message.name, "bus.emit");
    post(bus, &message);
    Ok(())
}

/// Copies `message` into every other worker's inbox.
fn post(bus: &Bus, message: &Message) {
    let mine = INBOX.with(|cell| cell.get().map(Arc::as_ptr));
    let inboxes: Vec<Arc<Inbox>> = lock(&bus.inboxes)
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|inbox| Some(Arc::as_ptr(inbox)) != mine)
        .collect();
    for inbox in inboxes {
        let mut mail = lock(&inbox.mail);
        if mail.len() >= MAX_PENDING {
            mail.pop_front();
            if !inbox.overflowed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: super::TARGET,
                    "bus: a worker's inbox is full ({MAX_PENDING} events): the oldest are dropped"
                );
            }
        }
        mail.push_back(message.clone());
        inbox.has_mail.store(true, Ordering::Relaxed);
    }
}

/// Counts the bytes written to it, and refuses past [`MAX_DATA`].
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > MAX_DATA {
            return Err(std::io::Error::other("too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::rc::Rc;

    use super::super::super::vm::{Script, Vm};
    use super::super::super::{vm_for, Env};
    use super::*;

    fn load(env: &Arc<Env>, id: usize, source: &str) -> Rc<Vm> {
        let script = Script {
            id,
            path: PathBuf::from(format!("bus{id}.lua")),
            source: source.to_owned(),
            name: format!("bus{id}"),
            settings: Vec::new(),
            env: Arc::clone(env),
            instruction_limit: 100_000,
            memory_limit: 8 * 1024 * 1024,
        };
        vm_for(&script).unwrap()
    }

    fn global(vm: &Vm, name: &str) -> String {
        vm.lua
            .load(format!("return tostring({name})"))
            .eval()
            .unwrap()
    }

    const LISTENER: &str = r#"
        got = {}
        function bus_event(name, data)
          got[#got + 1] = name .. "=" .. json.encode(data)
          kv.set("got", table.concat(got, ","))
        end
        function listing() return table.concat(got, ",") end"#;

    #[test]
    fn events_reach_every_vm_of_the_thread_after_the_handler_returns() {
        let env = Env::with_kv(super::super::Kv::memory());
        let listener = load(&env, 1_000_001, LISTENER);
        let emitter = load(
            &env,
            1_000_002,
            r#"
            function request()
              emitted = bus.emit("hello", {x = 1, list = {"a", "b"}})
              during = kv.get("got")
              refused = bus.emit("bad", {f = print})
              too_big = bus.emit("big", string.rep("x", 65 * 1024))
              bad_name = bus.emit(42)
            end
            got = 0
            function bus_event(name) got = got + 1 end"#,
        );
        emitter.request[0].call(&Value::Nil).unwrap();
        assert_eq!(global(&emitter, "emitted"), "nil");
        assert_eq!(global(&emitter, "during"), "nil", "not inside the handler");
        assert!(global(&emitter, "refused").contains("cannot encode a function"));
        assert!(global(&emitter, "bad_name").contains("must be a string"));
        assert!(global(&emitter, "too_big").contains("larger than"));
        assert_eq!(
            global(&listener, "listing()"),
            r#"hello={"list":["a","b"],"x":1}"#
        );
        assert_eq!(global(&emitter, "got"), "1", "the emitter's own VM too");
    }

    #[test]
    fn cascades_stop_after_max_depth_generations() {
        let env = Env::with_kv(super::super::Kv::memory());
        let echo = load(
            &env,
            1_000_011,
            r#"
            seen = 0
            function request() bus.emit("again") end
            function bus_event(name)
              seen = seen + 1
              last = bus.emit("again")
            end"#,
        );
        echo.request[0].call(&Value::Nil).unwrap();
        assert_eq!(global(&echo, "seen"), MAX_DEPTH.to_string());
        assert!(global(&echo, "last").contains("generations"));
        // A new emit starts again at depth one.
        echo.request[0].call(&Value::Nil).unwrap();
        assert_eq!(global(&echo, "seen"), (2 * MAX_DEPTH).to_string());
    }

    #[test]
    fn other_workers_get_events_at_their_next_hook() {
        let env = Env::with_kv(super::super::Kv::memory());
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let (emitted_tx, emitted_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let env2 = Arc::clone(&env);
            s.spawn(move || {
                let listener = load(&env2, 1_000_021, LISTENER);
                loaded_tx.send(()).unwrap();
                emitted_rx.recv().unwrap();
                assert_eq!(global(&listener, "listing()"), "");
                poll();
                assert_eq!(global(&listener, "listing()"), "ping=[1,2]");
            });
            loaded_rx.recv().unwrap();
            let emitter = load(
                &env,
                1_000_022,
                r#"function request() bus.emit("ping", {1, 2}) end"#,
            );
            emitter.request[0].call(&Value::Nil).unwrap();
            emitted_tx.send(()).unwrap();
        });
    }
}
