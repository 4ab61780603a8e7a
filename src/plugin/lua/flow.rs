//! The `flow` object scripts see: userdata over the exchange's heads, materialised
//! lazily (reading `flow.request.method` builds no table of headers).
//!
//! The proxy lends the heads to the script for the length of one event: they are moved
//! into [`Exchange`] and moved back after the handlers ran. A flow kept past its event
//! reads what was saved of the request and nothing else.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use mlua::{AnyUserData, Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};

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
    }
}

fn gone() -> mlua::Error {
    mlua::Error::runtime("this flow's event is over")
}

fn read_only(what: &str) -> mlua::Error {
    mlua::Error::runtime(format!("{what} cannot be changed here"))
}

/// `flow`.
pub(crate) struct Flow(pub(crate) Shared);

impl UserData for Flow {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, this| {
            let mut ex = this.0.borrow_mut();
            if ex.id == 0 {
                ex.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ex.id)
        });
        fields.add_field_method_get("conn_id", |_, this| Ok(this.0.borrow().conn));
        fields.add_field_method_get("client_addr", |_, this| {
            Ok(this.0.borrow().client.to_string())
        });
        fields.add_field_method_get("request", |lua, this| {
            if this.0.borrow().req.is_none() {
                return Ok(Value::Nil);
            }
            lua.create_userdata(Request(Rc::clone(&this.0)))
                .map(Value::UserData)
        });
        fields.add_field_method_get("response", |lua, this| {
            let ex = this.0.borrow();
            if ex.res.is_none() && ex.status.is_none() {
                return Ok(Value::Nil);
            }
            lua.create_userdata(Response(Rc::clone(&this.0)))
                .map(Value::UserData)
        });
        fields.add_field_method_get("error", |lua, this| {
            let ex = this.0.borrow();
            let Some((code, message)) = &ex.error else {
                return Ok(Value::Nil);
            };
            let t = lua.create_table()?;
            t.set("code", *code)?;
            t.set("message", message.as_str())?;
            Ok(Value::Table(t))
        });
        fields.add_field_method_get("metadata", |lua, this| {
            let mut ex = this.0.borrow_mut();
            match &ex.metadata {
                Some(t) => Ok(t.clone()),
                None => {
                    let t = lua.create_table()?;
                    ex.metadata = Some(t.clone());
                    Ok(t)
                }
            }
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method(
            "reply",
            |_, this, (status, body, headers): (u16, Option<mlua::String>, Option<Table>)| {
                if !(200..=999).contains(&status) {
                    return Err(mlua::Error::runtime(format!(
                        "reply: status {status} is not 200..999"
                    )));
                }
                let body = body.map(|b| b.as_bytes().to_vec()).unwrap_or_default();
                let list = header_list(headers)?;
                this.0.borrow_mut().control = Some(Control::Reply {
                    status,
                    body,
                    headers: list,
                });
                Ok(())
            },
        );
        methods.add_method("replace", |_, this, response: Table| {
            if this.0.borrow().res.is_none() {
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
            this.0.borrow_mut().control = Some(Control::Replace {
                status,
                reason,
                body,
                headers,
            });
            Ok(())
        });
        methods.add_method("kill", |_, this, ()| {
            this.0.borrow_mut().control = Some(Control::Kill);
            Ok(())
        });
    }
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

/// `flow.request`.
struct Request(Shared);

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
            Target::Authority { host, port } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                string(format!("{host}:{port}").as_bytes())
            }
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

impl UserData for Request {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: mlua::String| {
            let key = key.to_str()?;
            if &*key == "headers" {
                return lua
                    .create_userdata(Headers(Rc::clone(&this.0), Side::Request))
                    .map(Value::UserData);
            }
            let ex = this.0.borrow();
            if &*key == "body" {
                let body = ex.new_req_body.as_ref().or(ex.req_body.as_ref());
                return match body {
                    Some(b) => lua.create_string(b).map(Value::String),
                    None => Ok(Value::Nil),
                };
            }
            let (Some(req), Some(target)) = (&ex.req, &ex.target) else {
                return Err(gone());
            };
            request_field(lua, req, target, &key)
        });
        methods.add_meta_method(
            MetaMethod::NewIndex,
            |_, this, (key, value): (mlua::String, Value)| {
                let key = key.to_str()?;
                let mut ex = this.0.borrow_mut();
                if !ex.req_live {
                    return Err(read_only(&format!("request.{}", &*key)));
                }
                let ex = &mut *ex;
                if &*key == "body" {
                    if ex.req_body.is_none() {
                        return Err(mlua::Error::runtime(
                            "request.body: set BODIES = { request = true } to read and change bodies",
                        ));
                    }
                    ex.new_req_body = Some(body_value(&value, "request.body")?);
                    return Ok(());
                }
                let (Some(req), Some(target)) = (&mut ex.req, &mut ex.target) else {
                    return Err(gone());
                };
                set_request_field(req, target, &key, &value)
            },
        );
    }
}

/// `flow.response`.
struct Response(Shared);

impl UserData for Response {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: mlua::String| {
            let key = key.to_str()?;
            if &*key == "headers" {
                if this.0.borrow().res.is_none() {
                    return Ok(Value::Nil);
                }
                return lua
                    .create_userdata(Headers(Rc::clone(&this.0), Side::Response))
                    .map(Value::UserData);
            }
            let ex = this.0.borrow();
            if &*key == "body" {
                let body = ex.new_res_body.as_ref().or(ex.res_body.as_ref());
                return match body {
                    Some(b) if ex.res.is_some() => lua.create_string(b).map(Value::String),
                    _ => Ok(Value::Nil),
                };
            }
            let Some(res) = &ex.res else {
                // `access_log`: only the status the client got.
                return Ok(match (&*key, ex.status) {
                    ("status_code", Some(status)) => Value::Integer(i64::from(status)),
                    _ => Value::Nil,
                });
            };
            match &*key {
                "status_code" => Ok(Value::Integer(i64::from(res.status()))),
                "reason" => lua.create_string(res.reason()).map(Value::String),
                "version" => lua
                    .create_string(res.version().as_bytes())
                    .map(Value::String),
                _ => Ok(Value::Nil),
            }
        });
        methods.add_meta_method(
            MetaMethod::NewIndex,
            |_, this, (key, value): (mlua::String, Value)| {
                let key = key.to_str()?;
                let mut ex = this.0.borrow_mut();
                if &*key == "body" {
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
                match (&*key, value) {
                    ("status_code", Value::Integer(code)) => {
                        let code = u16::try_from(code)
                            .ok()
                            .filter(|c| (200..=999).contains(c))
                            .ok_or_else(|| {
                                mlua::Error::runtime("response.status_code must be 200..999")
                            })?;
                        let reason = Bytes::copy_from_slice(res.reason());
                        res.set_status(code, reason);
                    }
                    ("reason", Value::String(reason)) => {
                        let reason = reason.as_bytes();
                        if reason
                            .iter()
                            .any(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
                        {
                            return Err(mlua::Error::runtime(
                                "response.reason holds a control byte",
                            ));
                        }
                        let reason = Bytes::copy_from_slice(&reason);
                        res.set_status(res.status(), reason);
                    }
                    ("status_code" | "reason", _) => {
                        return Err(mlua::Error::runtime(format!(
                            "response.{}: wrong type",
                            &*key
                        )))
                    }
                    (other, _) => return Err(read_only(&format!("response.{other}"))),
                }
                Ok(())
            },
        );
    }
}

/// Which head a `headers` object edits.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// `flow.request.headers` / `flow.response.headers`: case-insensitive, over the head.
struct Headers(Shared, Side);

impl Headers {
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

impl UserData for Headers {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get_all", |lua, this, name: mlua::String| {
            let name = name.to_str()?;
            let list = lua.create_table()?;
            this.with(|head| {
                let values: Vec<&[u8]> = match head {
                    HeadRef::Req(h) => h.headers_named(&name).collect(),
                    HeadRef::Res(h) => h.headers_named(&name).collect(),
                };
                for v in values {
                    list.raw_push(lua.create_string(v)?)?;
                }
                Ok(())
            })?;
            Ok(list)
        });
        // `{{name, value}, ...}` in order, repeats kept (mitmproxy's `items(multi=True)`).
        methods.add_method("items", |lua, this, ()| {
            let list = lua.create_table()?;
            this.with(|head| {
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
        });
        methods.add_method("add", |_, this, (name, value): (mlua::String, Value)| {
            let name = name.to_str()?;
            check_name(&name)?;
            let value = header_value(&value)?;
            this.with_mut(|mut head| head.append(&name, &value))
        });
        methods.add_meta_method(MetaMethod::Index, |lua, this, name: mlua::String| {
            let name = name.to_str()?;
            this.with(|head| {
                let value = match head {
                    HeadRef::Req(h) => h.header(&name),
                    HeadRef::Res(h) => h.header(&name),
                };
                match value {
                    Some(v) => lua.create_string(v).map(Value::String),
                    None => Ok(Value::Nil),
                }
            })
        });
        methods.add_meta_method(
            MetaMethod::NewIndex,
            |_, this, (name, value): (mlua::String, Value)| {
                let name = name.to_str()?;
                check_name(&name)?;
                if value.is_nil() {
                    return this.with_mut(|mut head| head.remove(&name));
                }
                let value = header_value(&value)?;
                this.with_mut(|mut head| head.set(&name, &value))
            },
        );
    }
}

/// Makes the `flow` value for one event.
pub(crate) fn flow_value(lua: &Lua, shared: &Shared) -> mlua::Result<AnyUserData> {
    lua.create_userdata(Flow(Rc::clone(shared)))
}
