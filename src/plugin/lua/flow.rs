//! The `flow` object scripts see, over the exchange's heads, materialised lazily
//! (reading `flow.request.method` builds no table of headers).
//!
//! The proxy lends the heads to the script for the length of one event: they are moved
//! into [`Exchange`] and moved back after the handlers ran.
//!
//! `flow`, `flow.request`, `flow.response` and their `headers` are light userdata: a
//! value naming (exchange, part), with one metatable per VM for all of them. Making one
//! allocates nothing and leaves nothing for the collector: per-event full userdata (and
//! their finalizers) had been most of a script's cost per request. The exchange is found
//! through this thread's table of live exchanges, by index and generation: a flow kept
//! past its exchange names a generation that is gone, and every use of it is an error
//! ("this flow's event is over"); it never sees a later exchange.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use mlua::{Function, LightUserData, Lua, MetaMethod, Table, Value};

use crate::http::{host_header_value, RequestHead, ResponseHead, Scheme, Target};

/// What a handler asked the proxy to do instead of going on.
#[derive(Debug)]
pub(crate) enum Control {
    /// `flow:reply(status, body?, headers?)`.
    Reply {
        status: u16,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
    /// `flow:kill()`.
    Kill,
    /// `flow:replace(response)` (from `response`): the whole response head and body.
    Replace {
        status: u16,
        reason: Option<String>,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
}

/// One exchange as one script sees it (per client connection, reset per exchange).
pub(crate) struct Exchange {
    /// The client's address.
    pub(crate) client: SocketAddr,
    /// The request: lent during `request`, a saved copy afterwards (when the script
    /// has `response` handlers).
    pub(crate) req: Option<RequestHead>,
    /// The request's target, alongside `req`.
    pub(crate) target: Option<Target>,
    /// Whether `req`/`target` are the live ones (assignments change what is sent).
    pub(crate) req_live: bool,
    /// The response head, lent during `response`.
    pub(crate) res: Option<ResponseHead>,
    /// A handler's reply or kill.
    pub(crate) control: Option<Control>,
    /// `flow.metadata`, made on first use.
    pub(crate) metadata: Option<Table>,
    /// `flow.id`, drawn on first use (0: not yet).
    pub(crate) id: u64,
    /// A script error of this exchange was already logged.
    pub(crate) logged: bool,
    /// The status the client got (`access_log`), when the response head is gone.
    pub(crate) status: Option<u16>,
    /// `flow.conn_id`: the client connection's id (`conn.id`; kept across exchanges).
    pub(crate) conn: u64,
    /// `flow.request.body` (the script asked for request bodies): the whole body.
    pub(crate) req_body: Option<Bytes>,
    /// A body a `request` handler assigned.
    pub(crate) new_req_body: Option<Bytes>,
    /// `flow.response.body` (the script asked for response bodies; `None` also when
    /// the body was over the limit).
    pub(crate) res_body: Option<Bytes>,
    /// Response bodies may be assigned in this event.
    pub(crate) res_body_open: bool,
    /// A body a `response` handler assigned.
    pub(crate) new_res_body: Option<Bytes>,
    /// `flow.error`: the exchange's stable code and message, once it failed.
    pub(crate) error: Option<(&'static str, String)>,
    /// This exchange's entry in the thread's live table, once a flow value was made.
    token: Option<Token>,
    /// `flow:intercept()` paused the exchange; `flow:resume()` releases it.
    pub(crate) paused: Option<Rc<Pause>>,
}

/// A paused exchange's latch.
#[derive(Default)]
pub(crate) struct Pause {
    notify: tokio::sync::Notify,
}

impl Pause {
    /// Resolves once `flow:resume()` ran (at once if it already did).
    pub(crate) async fn resumed(self: Rc<Self>) {
        self.notify.notified().await;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            unregister(token);
        }
    }
}

/// The exchange shared by the flow objects of one plugin.
pub(crate) type Shared = Rc<RefCell<Exchange>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Exchange {
    pub(crate) fn new(client: SocketAddr) -> Self {
        Exchange {
            client,
            req: None,
            target: None,
            req_live: false,
            res: None,
            control: None,
            metadata: None,
            id: 0,
            logged: false,
            status: None,
            conn: 0,
            req_body: None,
            new_req_body: None,
            res_body: None,
            res_body_open: false,
            new_res_body: None,
            error: None,
            token: None,
            paused: None,
        }
    }

    /// Forgets the finished exchange.
    pub(crate) fn reset(&mut self) {
        self.req = None;
        self.target = None;
        self.req_live = false;
        self.res = None;
        self.control = None;
        self.metadata = None;
        self.id = 0;
        self.logged = false;
        self.status = None;
        self.req_body = None;
        self.new_req_body = None;
        self.res_body = None;
        self.res_body_open = false;
        self.new_res_body = None;
        self.error = None;
        self.paused = None;
        // Flows of the finished exchange stop resolving.
        if let Some(token) = self.token.take() {
            unregister(token);
        }
    }
}

// === handles: light userdata naming (exchange, part) ===

/// Which object of an exchange a handle names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Flow = 1,
    Request = 2,
    Response = 3,
    RequestHeaders = 4,
    ResponseHeaders = 5,
}

const PART_BITS: u32 = 3;
// A handle (generation, index, part: 63 bits) travels as a pointer-sized value.
const _: () = assert!(usize::BITS >= 64, "flow handles need 64-bit pointers");
/// Generations wrap within this mask (index in the low 32 bits, generation above).
const GEN_MASK: u64 = (1 << 28) - 1;

/// A live exchange's place in [`LIVE`]: slot index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token(u64);

/// This thread's live exchanges (weak: the plugin owns its exchange).
#[derive(Default)]
struct Live {
    slots: Vec<(u64, Weak<RefCell<Exchange>>)>,
    free: Vec<u32>,
}

thread_local! {
    static LIVE: RefCell<Live> = RefCell::new(Live::default());
}

fn register(shared: &Shared) -> Token {
    LIVE.with(|live| {
        let mut live = live.borrow_mut();
        let weak = Rc::downgrade(shared);
        let index = match live.free.pop() {
            Some(i) => i,
            None => {
                live.slots.push((0, Weak::new()));
                u32::try_from(live.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slot = &mut live.slots[index as usize];
        slot.0 = (slot.0 + 1) & GEN_MASK;
        slot.1 = weak;
        Token(slot.0 << 32 | u64::from(index))
    })
}

fn unregister(token: Token) {
    let index = (token.0 & u64::from(u32::MAX)) as u32;
    // During thread teardown the table may be gone already: nothing to free then.
    let _ = LIVE.try_with(|live| {
        let mut live = live.borrow_mut();
        if let Some(slot) = live.slots.get_mut(index as usize) {
            if slot.0 == token.0 >> 32 {
                slot.0 = (slot.0 + 1) & GEN_MASK;
                slot.1 = Weak::new();
                live.free.push(index);
            }
        }
    });
}

/// The value naming `part` of the exchange `token`.
fn handle(token: Token, part: Part) -> Value {
    let raw = token.0 << PART_BITS | part as u64;
    Value::LightUserData(LightUserData(raw as usize as *mut std::ffi::c_void))
}

/// The live exchange and part a handle names.
fn resolve(ud: LightUserData) -> mlua::Result<(Shared, Token, Part)> {
    let raw = ud.0 as usize as u64;
    let part = match raw & ((1 << PART_BITS) - 1) {
        1 => Part::Flow,
        2 => Part::Request,
        3 => Part::Response,
        4 => Part::RequestHeaders,
        5 => Part::ResponseHeaders,
        _ => return Err(mlua::Error::runtime("not a flow object")),
    };
    let token = Token(raw >> PART_BITS);
    let index = (token.0 & u64::from(u32::MAX)) as usize;
    let shared = LIVE.with(|live| {
        let live = live.borrow();
        live.slots
            .get(index)
            .filter(|slot| slot.0 == token.0 >> 32)
            .and_then(|slot| slot.1.upgrade())
    });
    match shared {
        Some(shared) => Ok((shared, token, part)),
        None => Err(gone()),
    }
}

/// The methods `__index` hands out, made once per VM.
struct Methods {
    reply: Function,
    kill: Function,
    replace: Function,
    get_all: Function,
    add: Function,
    items: Function,
    intercept: Function,
    resume: Function,
}

/// Installs the metatable of the flow handles in `lua` (once per VM).
///
/// # Errors
/// Lua could not allocate the functions.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    let methods = Rc::new(Methods {
        reply: lua.create_function(
            |_,
             (ud, status, body, headers): (
                LightUserData,
                u16,
                Option<mlua::String>,
                Option<Table>,
            )| {
                let (shared, _, _) = expect(ud, Part::Flow, "reply")?;
                reply(&shared, status, body, headers)
            },
        )?,
        kill: lua.create_function(|_, ud: LightUserData| {
            let (shared, _, _) = expect(ud, Part::Flow, "kill")?;
            shared.borrow_mut().control = Some(Control::Kill);
            Ok(())
        })?,
        replace: lua.create_function(|_, (ud, response): (LightUserData, Table)| {
            let (shared, _, _) = expect(ud, Part::Flow, "replace")?;
            replace(&shared, response)
        })?,
        intercept: lua.create_function(|_, ud: LightUserData| {
            let (shared, _, _) = expect(ud, Part::Flow, "intercept")?;
            let mut ex = shared.borrow_mut();
            if ex.paused.is_none() {
                ex.paused = Some(Rc::new(Pause::default()));
            }
            Ok(())
        })?,
        resume: lua.create_function(|_, ud: LightUserData| {
            let (shared, _, _) = expect(ud, Part::Flow, "resume")?;
            let paused = shared.borrow_mut().paused.take();
            if let Some(pause) = paused {
                // Stores a permit when the proxy is not waiting yet.
                pause.notify.notify_one();
            }
            Ok(())
        })?,
        get_all: lua.create_function(|lua, (ud, name): (LightUserData, mlua::String)| {
            let (shared, _, part) = resolve(ud)?;
            get_all(lua, &headers_of(&shared, part)?, &name.to_str()?)
        })?,
        add: lua.create_function(
            |_, (ud, name, value): (LightUserData, mlua::String, Value)| {
                let (shared, _, part) = resolve(ud)?;
                add(&headers_of(&shared, part)?, &name.to_str()?, &value)
            },
        )?,
        items: lua.create_function(|lua, ud: LightUserData| {
            let (shared, _, part) = resolve(ud)?;
            items(lua, &headers_of(&shared, part)?)
        })?,
    });
    let mt = lua.create_table()?;
    let m = Rc::clone(&methods);
    mt.set(
        MetaMethod::Index.name(),
        lua.create_function(move |lua, (ud, key): (LightUserData, mlua::String)| {
            let (shared, token, part) = resolve(ud)?;
            let key = key.to_str()?;
            match part {
                Part::Flow => flow_index(lua, &shared, token, &key, &m),
                Part::Request => request_index(lua, &shared, token, &key),
                Part::Response => response_index(lua, &shared, token, &key),
                Part::RequestHeaders | Part::ResponseHeaders => {
                    headers_index(lua, &headers_of(&shared, part)?, &key, &m)
                }
            }
        })?,
    )?;
    mt.set(
        MetaMethod::NewIndex.name(),
        lua.create_function(
            |_, (ud, key, value): (LightUserData, mlua::String, Value)| {
                let (shared, _, part) = resolve(ud)?;
                let key = key.to_str()?;
                match part {
                    Part::Flow => Err(read_only(&format!("flow.{}", &*key))),
                    Part::Request => request_newindex(&shared, &key, &value),
                    Part::Response => response_newindex(&shared, &key, value),
                    Part::RequestHeaders | Part::ResponseHeaders => {
                        headers_newindex(&headers_of(&shared, part)?, &key, &value)
                    }
                }
            },
        )?,
    )?;
    mt.set(
        MetaMethod::ToString.name(),
        lua.create_function(|_, ud: LightUserData| {
            Ok(match resolve(ud) {
                Ok((_, _, part)) => format!("{part:?}").to_lowercase(),
                Err(_) => "flow (over)".to_owned(),
            })
        })?,
    )?;
    // `getmetatable(flow)` gives this string, and the table cannot be changed or
    // replaced: every flow of the VM goes through it.
    mt.set("__metatable", "flow")?;
    lua.set_type_metatable::<LightUserData>(Some(mt));
    Ok(())
}

/// A method's `self`: the flow it was called on.
fn expect(ud: LightUserData, part: Part, what: &str) -> mlua::Result<(Shared, Token, Part)> {
    let found = resolve(ud)?;
    if found.2 != part {
        return Err(mlua::Error::runtime(format!(
            "{what}: call it on a flow (flow:{what}(...))"
        )));
    }
    Ok(found)
}

/// The headers object a handle names.
fn headers_of(shared: &Shared, part: Part) -> mlua::Result<Headers<'_>> {
    match part {
        Part::RequestHeaders => Ok(Headers(shared, Side::Request)),
        Part::ResponseHeaders => Ok(Headers(shared, Side::Response)),
        _ => Err(mlua::Error::runtime("not a headers object")),
    }
}

fn gone() -> mlua::Error {
    mlua::Error::runtime("this flow's event is over")
}

fn read_only(what: &str) -> mlua::Error {
    mlua::Error::runtime(format!("{what} cannot be changed here"))
}

/// `flow.<key>`: fields, then methods (`reply`, `kill`, `replace`).
fn flow_index(
    lua: &Lua,
    shared: &Shared,
    token: Token,
    key: &str,
    m: &Methods,
) -> mlua::Result<Value> {
    match key {
        "id" => {
            let mut ex = shared.borrow_mut();
            if ex.id == 0 {
                ex.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Value::Integer(ex.id as i64))
        }
        "conn_id" => Ok(Value::Integer(
            i64::try_from(shared.borrow().conn).unwrap_or(i64::MAX),
        )),
        "client_addr" => lua
            .create_string(shared.borrow().client.to_string())
            .map(Value::String),
        "request" => Ok(if shared.borrow().req.is_none() {
            Value::Nil
        } else {
            handle(token, Part::Request)
        }),
        "response" => {
            let ex = shared.borrow();
            Ok(if ex.res.is_none() && ex.status.is_none() {
                Value::Nil
            } else {
                handle(token, Part::Response)
            })
        }
        "error" => {
            let ex = shared.borrow();
            let Some((code, message)) = &ex.error else {
                return Ok(Value::Nil);
            };
            let t = lua.create_table()?;
            t.set("code", *code)?;
            t.set("message", message.as_str())?;
            Ok(Value::Table(t))
        }
        "metadata" => {
            let mut ex = shared.borrow_mut();
            match &ex.metadata {
                Some(t) => Ok(Value::Table(t.clone())),
                None => {
                    let t = lua.create_table()?;
                    ex.metadata = Some(t.clone());
                    Ok(Value::Table(t))
                }
            }
        }
        "server_conn" => {
            // Roxy's transport metadata: where the request goes.
            let ex = shared.borrow();
            let (Some(req), Some(target)) = (&ex.req, &ex.target) else {
                return Ok(Value::Nil);
            };
            let host = request_field(lua, req, target, "host")?;
            let port = request_field(lua, req, target, "port")?;
            let t = lua.create_table()?;
            if let (Value::String(h), Value::Integer(p)) = (&host, &port) {
                let h = h.to_str()?;
                let address = if h.contains(':') {
                    format!("[{}]:{p}", &*h)
                } else {
                    format!("{}:{p}", &*h)
                };
                t.set("address", address)?;
            }
            t.set("host", host)?;
            t.set("port", port)?;
            t.set(
                "tls",
                matches!(
                    target,
                    Target::Absolute {
                        scheme: Scheme::Https,
                        ..
                    }
                ),
            )?;
            Ok(Value::Table(t))
        }
        "reply" => Ok(Value::Function(m.reply.clone())),
        "kill" => Ok(Value::Function(m.kill.clone())),
        "replace" => Ok(Value::Function(m.replace.clone())),
        "intercept" => Ok(Value::Function(m.intercept.clone())),
        "resume" => Ok(Value::Function(m.resume.clone())),
        "intercepted" => Ok(Value::Boolean(shared.borrow().paused.is_some())),
        _ => Ok(Value::Nil),
    }
}

/// `flow:reply(status, body?, headers?)`.
fn reply(
    shared: &Shared,
    status: u16,
    body: Option<mlua::String>,
    headers: Option<Table>,
) -> mlua::Result<()> {
    if !(200..=999).contains(&status) {
        return Err(mlua::Error::runtime(format!(
            "reply: status {status} is not 200..999"
        )));
    }
    let body = body.map(|b| b.as_bytes().to_vec()).unwrap_or_default();
    let list = header_list(headers)?;
    shared.borrow_mut().control = Some(Control::Reply {
        status,
        body,
        headers: list,
    });
    Ok(())
}

/// `flow:replace(response)`.
fn replace(shared: &Shared, response: Table) -> mlua::Result<()> {
    if shared.borrow().res.is_none() {
        return Err(mlua::Error::runtime(
            "replace: only from response (use flow:reply in request)",
        ));
    }
    let status = response.get::<Option<u16>>("status_code")?.unwrap_or(200);
    if !(200..=999).contains(&status) || status == 204 || status == 304 {
        return Err(mlua::Error::runtime(format!(
            "replace: status {status} is not 200..999 (204 and 304 carry no body)"
        )));
    }
    let reason = match response.get::<Option<mlua::String>>("reason")? {
        Some(r) => {
            let r = r.to_str()?.to_owned();
            if r.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                return Err(mlua::Error::runtime("replace: reason holds a control byte"));
            }
            Some(r)
        }
        None => None,
    };
    let body = response
        .get::<Option<mlua::String>>("body")?
        .map(|b| b.as_bytes().to_vec())
        .unwrap_or_default();
    let headers = header_list(response.get::<Option<Table>>("headers")?)?;
    shared.borrow_mut().control = Some(Control::Replace {
        status,
        reason,
        body,
        headers,
    });
    Ok(())
}

/// The `{name = value}` headers of a reply, framing headers dropped.
fn header_list(headers: Option<Table>) -> mlua::Result<Vec<(String, String)>> {
    let mut list = Vec::new();
    if let Some(headers) = headers {
        for pair in headers.pairs::<mlua::String, mlua::String>() {
            let (name, value) = pair?;
            let name = name.to_str()?.to_owned();
            if is_framing(&name) {
                continue;
            }
            list.push((name, value.to_str()?.to_owned()));
        }
    }
    Ok(list)
}

/// Headers the proxy frames messages with: scripts cannot set them (the proxy frames
/// bodies itself; a wrong length would desynchronise the connection).
fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// A body a script assigns: a string (bytes), or `nil` for none.
fn body_value(value: &Value, what: &str) -> mlua::Result<Bytes> {
    match value {
        Value::String(s) => Ok(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Nil => Ok(Bytes::new()),
        _ => Err(mlua::Error::runtime(format!("{what} must be a string"))),
    }
}

/// `host:port` split, brackets dropped from an IPv6 literal.
fn split_host(authority: &[u8]) -> (String, Option<u16>) {
    let text = String::from_utf8_lossy(authority);
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host.to_ascii_lowercase(), port);
        }
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_ascii_lowercase(), port.parse().ok()),
        _ => (text.to_ascii_lowercase(), None),
    }
}

fn scheme_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    }
}

/// A request field as Lua sees it.
pub(crate) fn request_field(
    lua: &Lua,
    req: &RequestHead,
    target: &Target,
    key: &str,
) -> mlua::Result<Value> {
    let string = |b: &[u8]| lua.create_string(b).map(Value::String);
    let origin_path = |req: &RequestHead| req.effective_target().to_vec();
    match key {
        "method" => string(req.method()),
        "version" => string(req.version().as_bytes()),
        "scheme" => match target {
            Target::Absolute { scheme, .. } => string(scheme_name(*scheme).as_bytes()),
            Target::Authority { .. } => Ok(Value::Nil),
            Target::Origin | Target::Asterisk => string(b"http"),
        },
        "host" => match target {
            Target::Absolute { host, .. } | Target::Authority { host, .. } => {
                string(host.as_bytes())
            }
            Target::Origin | Target::Asterisk => match req.header("host") {
                Some(h) => string(split_host(h).0.as_bytes()),
                None => Ok(Value::Nil),
            },
        },
        "port" => match target {
            Target::Absolute { port, .. } | Target::Authority { port, .. } => {
                Ok(Value::Integer(i64::from(*port)))
            }
            Target::Origin | Target::Asterisk => Ok(Value::Integer(i64::from(
                req.header("host")
                    .and_then(|h| split_host(h).1)
                    .unwrap_or(80),
            ))),
        },
        "path" => match target {
            Target::Absolute { path, .. } => string(path),
            Target::Authority { .. } => string(b""),
            Target::Origin | Target::Asterisk => string(&origin_path(req)),
        },
        "query" => {
            let path = match target {
                Target::Absolute { path, .. } => path.to_vec(),
                Target::Authority { .. } => Vec::new(),
                Target::Origin | Target::Asterisk => origin_path(req),
            };
            match path.iter().position(|&b| b == b'?') {
                Some(i) => string(path.get(i + 1..).unwrap_or_default()),
                None => Ok(Value::Nil),
            }
        }
        "url" => match target {
            Target::Absolute {
                scheme,
                host,
                port,
                path,
            } => {
                let mut url = format!(
                    "{}://{}",
                    scheme_name(*scheme),
                    host_header_value(*scheme, host, *port)
                )
                .into_bytes();
                url.extend_from_slice(path);
                string(&url)
            }
            Target::Authority { host, port } => string(
                crate::http::target::Authority(host, *port)
                    .to_string()
                    .as_bytes(),
            ),
            Target::Origin | Target::Asterisk => string(&origin_path(req)),
        },
        _ => Ok(Value::Nil),
    }
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| crate::http::is_tchar(b))
}

/// A path to send: starts with `/`, no whitespace or control bytes.
fn valid_path(s: &[u8]) -> bool {
    s.first() == Some(&b'/') && s.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// A host name or address: letters, digits, `-`, `.`, `_`, and `:` for IPv6.
fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
}

/// Assigns a request field.
fn set_request_field(
    req: &mut RequestHead,
    target: &mut Target,
    key: &str,
    value: &Value,
) -> mlua::Result<()> {
    let text = || -> mlua::Result<Vec<u8>> {
        match value {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Integer(i) => Ok(i.to_string().into_bytes()),
            _ => Err(mlua::Error::runtime(format!(
                "request.{key} must be a string"
            ))),
        }
    };
    match key {
        "method" => {
            let method = text()?;
            if !is_token(&method) {
                return Err(mlua::Error::runtime("request.method must be a token"));
            }
            req.set_method(Bytes::from(method));
        }
        "path" => {
            let path = text()?;
            if !valid_path(&path) {
                return Err(mlua::Error::runtime(
                    "request.path must start with / and hold no spaces or control bytes",
                ));
            }
            match target {
                Target::Absolute { path: p, .. } => *p = Bytes::from(path),
                Target::Origin => req.set_target(Bytes::from(path)),
                Target::Authority { .. } | Target::Asterisk => {
                    return Err(read_only("request.path of this request"))
                }
            }
        }
        "host" => {
            let raw = String::from_utf8_lossy(&text()?).to_ascii_lowercase();
            let host = raw
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(&raw)
                .to_owned();
            if !valid_host(&host) {
                return Err(mlua::Error::runtime(format!(
                    "request.host: not a host name: {raw}"
                )));
            }
            match target {
                Target::Absolute { host: h, .. } | Target::Authority { host: h, .. } => *h = host,
                Target::Origin => {
                    let path = req.effective_target_bytes();
                    *target = Target::Absolute {
                        scheme: Scheme::Http,
                        host,
                        port: 80,
                        path,
                    };
                }
                Target::Asterisk => return Err(read_only("request.host of this request")),
            }
        }
        "port" => {
            let port = match value {
                Value::Integer(i) => u16::try_from(*i).ok().filter(|&p| p != 0),
                Value::Number(n) if n.fract() == 0.0 && (1.0..=65535.0).contains(n) => {
                    Some(*n as u16)
                }
                _ => None,
            }
            .ok_or_else(|| mlua::Error::runtime("request.port must be 1..65535"))?;
            match target {
                Target::Absolute { port: p, .. } | Target::Authority { port: p, .. } => *p = port,
                Target::Origin | Target::Asterisk => {
                    return Err(read_only("request.port of a request without a host"))
                }
            }
        }
        "url" => {
            let url = Bytes::from(text()?);
            match crate::http::parse_target(&url, false) {
                Ok(new @ Target::Absolute { .. }) => match target {
                    Target::Absolute { .. } | Target::Origin => *target = new,
                    Target::Authority { .. } | Target::Asterisk => {
                        return Err(read_only("request.url of this request"))
                    }
                },
                _ => {
                    return Err(mlua::Error::runtime(format!(
                        "request.url: not an absolute http(s) URL: {}",
                        String::from_utf8_lossy(&url)
                    )))
                }
            }
        }
        "scheme" => {
            let scheme = match text()?.to_ascii_lowercase().as_slice() {
                b"http" => Scheme::Http,
                b"https" => Scheme::Https,
                _ => return Err(mlua::Error::runtime("request.scheme must be http or https")),
            };
            match target {
                Target::Absolute { scheme: s, .. } => *s = scheme,
                Target::Origin => {
                    let path = req.effective_target_bytes();
                    let (host, port) = match req.header("host") {
                        Some(h) => split_host(h),
                        None => {
                            return Err(read_only("request.scheme of a request without a host"))
                        }
                    };
                    let port = port.unwrap_or(match scheme {
                        Scheme::Http => 80,
                        Scheme::Https => 443,
                    });
                    *target = Target::Absolute {
                        scheme,
                        host,
                        port,
                        path,
                    };
                }
                Target::Authority { .. } | Target::Asterisk => {
                    return Err(read_only("request.scheme of this request"))
                }
            }
        }
        _ => return Err(read_only(&format!("request.{key}"))),
    }
    Ok(())
}

/// `flow.request.<key>`.
fn request_index(lua: &Lua, shared: &Shared, token: Token, key: &str) -> mlua::Result<Value> {
    if key == "headers" {
        return Ok(handle(token, Part::RequestHeaders));
    }
    let ex = shared.borrow();
    if key == "body" {
        let body = ex.new_req_body.as_ref().or(ex.req_body.as_ref());
        return match body {
            Some(b) => lua.create_string(b).map(Value::String),
            None => Ok(Value::Nil),
        };
    }
    let (Some(req), Some(target)) = (&ex.req, &ex.target) else {
        return Err(gone());
    };
    request_field(lua, req, target, key)
}

/// `flow.request.<key> = value`.
fn request_newindex(shared: &Shared, key: &str, value: &Value) -> mlua::Result<()> {
    let mut ex = shared.borrow_mut();
    if !ex.req_live {
        return Err(read_only(&format!("request.{key}")));
    }
    let ex = &mut *ex;
    if key == "body" {
        if ex.req_body.is_none() {
            return Err(mlua::Error::runtime(
                "request.body: set BODIES = { request = true } to read and change bodies",
            ));
        }
        ex.new_req_body = Some(body_value(value, "request.body")?);
        return Ok(());
    }
    let (Some(req), Some(target)) = (&mut ex.req, &mut ex.target) else {
        return Err(gone());
    };
    set_request_field(req, target, key, value)
}

/// `flow.response.<key>`.
fn response_index(lua: &Lua, shared: &Shared, token: Token, key: &str) -> mlua::Result<Value> {
    let ex = shared.borrow();
    if key == "headers" {
        return Ok(if ex.res.is_none() {
            Value::Nil
        } else {
            handle(token, Part::ResponseHeaders)
        });
    }
    if key == "body" {
        let body = ex.new_res_body.as_ref().or(ex.res_body.as_ref());
        return match body {
            Some(b) if ex.res.is_some() => lua.create_string(b).map(Value::String),
            _ => Ok(Value::Nil),
        };
    }
    let Some(res) = &ex.res else {
        // `access_log`: only the status the client got.
        return Ok(match (key, ex.status) {
            ("status_code", Some(status)) => Value::Integer(i64::from(status)),
            _ => Value::Nil,
        });
    };
    match key {
        "status_code" => Ok(Value::Integer(i64::from(res.status()))),
        "reason" => lua.create_string(res.reason()).map(Value::String),
        "version" => lua
            .create_string(res.version().as_bytes())
            .map(Value::String),
        _ => Ok(Value::Nil),
    }
}

/// `flow.response.<key> = value`.
fn response_newindex(shared: &Shared, key: &str, value: Value) -> mlua::Result<()> {
    let mut ex = shared.borrow_mut();
    if key == "body" {
        if ex.res.is_none() {
            return Err(gone());
        }
        if !ex.res_body_open {
            return Err(mlua::Error::runtime(
                "response.body: set BODIES = { response = true } to read and change bodies",
            ));
        }
        ex.new_res_body = Some(body_value(&value, "response.body")?);
        return Ok(());
    }
    let Some(res) = &mut ex.res else {
        return Err(gone());
    };
    match (key, value) {
        ("status_code", Value::Integer(code)) => {
            let code = u16::try_from(code)
                .ok()
                .filter(|c| (200..=999).contains(c))
                .ok_or_else(|| mlua::Error::runtime("response.status_code must be 200..999"))?;
            let reason = Bytes::copy_from_slice(res.reason());
            res.set_status(code, reason);
        }
        ("reason", Value::String(reason)) => {
            let reason = reason.as_bytes();
            if reason
                .iter()
                .any(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
            {
                return Err(mlua::Error::runtime("response.reason holds a control byte"));
            }
            let reason = Bytes::copy_from_slice(&reason);
            res.set_status(res.status(), reason);
        }
        ("status_code" | "reason", _) => {
            return Err(mlua::Error::runtime(format!("response.{key}: wrong type")))
        }
        (other, _) => return Err(read_only(&format!("response.{other}"))),
    }
    Ok(())
}

/// Which head a `headers` object edits.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// `flow.request.headers` / `flow.response.headers`: case-insensitive, over the head.
struct Headers<'a>(&'a Shared, Side);

impl Headers<'_> {
    /// Reads the head.
    fn with<T>(&self, f: impl FnOnce(HeadRef<'_>) -> mlua::Result<T>) -> mlua::Result<T> {
        let ex = self.0.borrow();
        match self.1 {
            Side::Request => f(HeadRef::Req(ex.req.as_ref().ok_or_else(gone)?)),
            Side::Response => f(HeadRef::Res(ex.res.as_ref().ok_or_else(gone)?)),
        }
    }

    /// Edits the head (the request's only while its event runs).
    fn with_mut(&self, f: impl FnOnce(HeadMut<'_>)) -> mlua::Result<()> {
        let mut ex = self.0.borrow_mut();
        match self.1 {
            Side::Request => {
                if !ex.req_live {
                    return Err(read_only("request.headers"));
                }
                f(HeadMut::Req(ex.req.as_mut().ok_or_else(gone)?));
            }
            Side::Response => f(HeadMut::Res(ex.res.as_mut().ok_or_else(gone)?)),
        }
        Ok(())
    }
}

enum HeadRef<'a> {
    Req(&'a RequestHead),
    Res(&'a ResponseHead),
}

enum HeadMut<'a> {
    Req(&'a mut RequestHead),
    Res(&'a mut ResponseHead),
}

impl HeadMut<'_> {
    fn remove(&mut self, name: &str) {
        match self {
            HeadMut::Req(h) => {
                h.remove(name);
            }
            HeadMut::Res(h) => {
                h.remove(name);
            }
        }
    }
    fn set(&mut self, name: &str, value: &[u8]) {
        match self {
            HeadMut::Req(h) => h.set(name, value),
            HeadMut::Res(h) => h.set(name, value),
        }
    }
    fn append(&mut self, name: &str, value: &[u8]) {
        match self {
            HeadMut::Req(h) => h.append(name, value),
            HeadMut::Res(h) => h.append(name, value),
        }
    }
}

/// A header value a script gives: a string or a number.
fn header_value(value: &Value) -> mlua::Result<Vec<u8>> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(i) => Ok(i.to_string().into_bytes()),
        Value::Number(n) => Ok(n.to_string().into_bytes()),
        _ => Err(mlua::Error::runtime("a header value must be a string")),
    }
}

fn check_name(name: &str) -> mlua::Result<()> {
    if !is_token(name.as_bytes()) {
        return Err(mlua::Error::runtime(format!("not a header name: {name:?}")));
    }
    if is_framing(name) {
        return Err(mlua::Error::runtime(format!(
            "{name} is managed by the proxy"
        )));
    }
    Ok(())
}

/// `headers:get_all(name)`.
fn get_all(lua: &Lua, headers: &Headers<'_>, name: &str) -> mlua::Result<Table> {
    let list = lua.create_table()?;
    headers.with(|head| {
        let values: Vec<&[u8]> = match head {
            HeadRef::Req(h) => h.headers_named(name).collect(),
            HeadRef::Res(h) => h.headers_named(name).collect(),
        };
        for v in values {
            list.raw_push(lua.create_string(v)?)?;
        }
        Ok(())
    })?;
    Ok(list)
}

/// `headers:items()`: `{{name, value}, ...}` in order, repeats kept (mitmproxy's
/// `items(multi=True)`).
fn items(lua: &Lua, headers: &Headers<'_>) -> mlua::Result<Table> {
    let list = lua.create_table()?;
    headers.with(|head| {
        let pairs: Vec<(&[u8], &[u8])> = match head {
            HeadRef::Req(h) => h.headers().collect(),
            HeadRef::Res(h) => h.headers().collect(),
        };
        for (name, value) in pairs {
            let pair = lua.create_table_with_capacity(2, 0)?;
            pair.raw_push(lua.create_string(name)?)?;
            pair.raw_push(lua.create_string(value)?)?;
            list.raw_push(pair)?;
        }
        Ok(())
    })?;
    Ok(list)
}

/// `headers:add(name, value)`.
fn add(headers: &Headers<'_>, name: &str, value: &Value) -> mlua::Result<()> {
    check_name(name)?;
    let value = header_value(value)?;
    headers.with_mut(|mut head| head.append(name, &value))
}

/// `headers[name]`: the first value, or the methods `get_all` and `add`.
fn headers_index(lua: &Lua, headers: &Headers<'_>, name: &str, m: &Methods) -> mlua::Result<Value> {
    match name {
        "get_all" => return Ok(Value::Function(m.get_all.clone())),
        "add" => return Ok(Value::Function(m.add.clone())),
        "items" => return Ok(Value::Function(m.items.clone())),
        _ => {}
    }
    headers.with(|head| {
        let value = match head {
            HeadRef::Req(h) => h.header(name),
            HeadRef::Res(h) => h.header(name),
        };
        match value {
            Some(v) => lua.create_string(v).map(Value::String),
            None => Ok(Value::Nil),
        }
    })
}

/// `headers[name] = value` (`nil` removes every value).
fn headers_newindex(headers: &Headers<'_>, name: &str, value: &Value) -> mlua::Result<()> {
    check_name(name)?;
    if value.is_nil() {
        return headers.with_mut(|mut head| head.remove(name));
    }
    let value = header_value(value)?;
    headers.with_mut(|mut head| head.set(name, &value))
}

/// The `flow` value for one event (registers the exchange on first use).
pub(crate) fn flow_value(shared: &Shared) -> Value {
    let token = {
        let mut ex = shared.borrow_mut();
        match ex.token {
            Some(token) => token,
            None => {
                let token = register(shared);
                ex.token = Some(token);
                token
            }
        }
    };
    handle(token, Part::Flow)
}
