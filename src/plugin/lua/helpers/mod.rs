//! The helper libraries of Burro's Lua plugin API (issue 9 item 6), installed in every
//! script VM: `log`, `json`, `base64`, `time` and `kv`.
//!
//! Functions that can fail return `value, err` as in the seed: `nil, "message"` on a
//! failure, the value (and no error) otherwise.
//!
//! * `log.trace/debug/info/warn/error/audit(msg, attrs?)`: `tracing` events with target
//!   `proxy::script`, a `script` field (the file) and, when `attrs` has string, number or
//!   boolean fields, one `attrs` field holding them as a JSON object string (`tracing`
//!   field names are static, so a table's keys cannot become fields of their own).
//!   `audit` is INFO with `audit=true`.
//! * `json.encode/decode`: tables whose keys are exactly `1..n` are arrays, others objects
//!   (number keys become strings); an empty table is `{}`; `null` decodes to `nil`.
//! * `base64.encode/decode`: standard alphabet; decoding accepts missing padding.
//! * `time.unix()` (float seconds), `time.rfc3339()` (UTC), `time.date(fmt?)` (`os.date`
//!   conversions, UTC, default `%Y-%m-%d`).
//! * `kv.get/get_base64/set/incr/delete/list`: the process's [`Kv`] store (see [`kv`]);
//!   `incr(key, by?)` adds atomically (ours: Burro's API has no atomic add).
//! * `bus.emit(name, data?) -> err` (nil on success, as in the seed): see [`bus`] for the
//!   delivery to `bus_event(name, data)` handlers.
//! * `artifacts.write/read/exists/delete/rename/list` (`--artifacts-dir`) and
//!   `data_store.exists/read/list(path, exts?)` (`--data-dir`, read-only): see [`files`]
//!   for the path rules; without the flag every call returns `nil, "… no --…-dir"`.

pub(crate) mod bus;
pub(crate) mod files;
pub(crate) mod kv;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use mlua::{Function, Lua, Table, Value};

pub(crate) use self::bus::Bus;
pub(crate) use self::files::Root;
pub(crate) use self::kv::Kv;
use super::vm::Script;

/// Log target of script log lines.
pub const TARGET: &str = "proxy::script";

/// Deepest table nesting `json.encode` follows (also stops cycles).
const MAX_DEPTH: usize = 128;

/// Decodes standard base64 with or without padding.
pub(crate) const DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// === installing the libraries ===

/// Adds `log`, `json`, `base64`, `time`, `kv`, `bus`, `artifacts` and `data_store` to
/// `lua`'s globals for `script`.
///
/// # Errors
/// Lua could not allocate the tables.
pub(crate) fn install(lua: &Lua, script: &Script) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.set("log", log_table(lua, script.path.display().to_string())?)?;
    globals.set("json", json_table(lua)?)?;
    globals.set("base64", base64_table(lua)?)?;
    globals.set("time", time_table(lua)?)?;
    globals.set("kv", kv_table(lua, script.env.kv.clone())?)?;
    let name: Arc<str> = script.path.display().to_string().into();
    globals.set("bus", bus::bus_table(lua, Arc::clone(&script.env), name)?)?;
    let artifacts = script.env.artifacts.clone();
    globals.set("artifacts", files::artifacts_table(lua, artifacts)?)?;
    let data = script.env.data.clone();
    globals.set("data_store", files::data_store_table(lua, data)?)?;
    Ok(())
}

/// `value, err`: the value, or `nil` and a message.
type Returns = (Value, Option<String>);

fn fail(why: impl Into<String>) -> mlua::Result<Returns> {
    Ok((Value::Nil, Some(why.into())))
}

// --- log ---

#[derive(Clone, Copy)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Audit,
}

fn log_table(lua: &Lua, script: String) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let script: Arc<str> = script.into();
    for (name, level) in [
        ("trace", Level::Trace),
        ("debug", Level::Debug),
        ("info", Level::Info),
        ("warn", Level::Warn),
        ("error", Level::Error),
        ("audit", Level::Audit),
    ] {
        let script = Arc::clone(&script);
        let f = lua.create_function(move |_, (msg, attrs): (Value, Value)| {
            let msg = display(&msg);
            // Attributes that are not a table are left out (helpers never raise).
            let attrs = match &attrs {
                Value::Table(t) => attrs_json(t),
                _ => String::new(),
            };
            emit(level, &script, &msg, &attrs);
            Ok(())
        })?;
        table.set(name, f)?;
    }
    Ok(table)
}

fn emit(level: Level, script: &str, msg: &str, attrs: &str) {
    macro_rules! event {
        ($lvl:expr $(, $extra:ident = $val:expr)?) => {
            if attrs.is_empty() {
                tracing::event!(target: TARGET, $lvl, script = %script, $($extra = $val,)? "{msg}")
            } else {
                tracing::event!(target: TARGET, $lvl, script = %script, attrs = %attrs, $($extra = $val,)? "{msg}")
            }
        };
    }
    use tracing::Level as L;
    match level {
        Level::Trace => event!(L::TRACE),
        Level::Debug => event!(L::DEBUG),
        Level::Info => event!(L::INFO),
        Level::Warn => event!(L::WARN),
        Level::Error => event!(L::ERROR),
        Level::Audit => event!(L::INFO, audit = true),
    }
}

/// The string, number and boolean fields of `attrs` as a JSON object ("" when none).
fn attrs_json(attrs: &Table) -> String {
    let mut object = serde_json::Map::new();
    for (key, value) in attrs.pairs::<Value, Value>().flatten() {
        let key = match &key {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(_) | Value::Number(_) => display(&key),
            _ => continue,
        };
        let value = match value {
            Value::String(s) => serde_json::Value::String(s.to_string_lossy()),
            Value::Integer(n) => n.into(),
            Value::Number(x) => serde_json::Number::from_f64(x)
                .map_or_else(|| serde_json::Value::String(x.to_string()), Into::into),
            Value::Boolean(b) => b.into(),
            _ => continue,
        };
        object.insert(key, value);
    }
    if object.is_empty() {
        String::new()
    } else {
        serde_json::Value::Object(object).to_string()
    }
}

/// A value as `tostring` would show the simple ones.
fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.to_string_lossy(),
        Value::Nil => "nil".to_owned(),
        other => other.to_string().unwrap_or_else(|_| format!("{other:?}")),
    }
}

// --- json ---

fn json_table(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.set(
        "encode",
        lua.create_function(|lua, value: Value| match to_json(&value, 0) {
            Ok(json) => Ok((Value::String(lua.create_string(json.to_string())?), None)),
            Err(why) => fail(why),
        })?,
    )?;
    table.set(
        "decode",
        lua.create_function(|lua, text: Value| {
            let Value::String(text) = text else {
                return fail("json.decode: expected a string");
            };
            match serde_json::from_slice::<serde_json::Value>(&text.as_bytes()) {
                Ok(json) => Ok((from_json(lua, &json)?, None)),
                Err(e) => fail(format!("json.decode: {e}")),
            }
        })?,
    )?;
    Ok(table)
}

/// A Lua value as JSON.
///
/// # Errors
/// A function, userdata, thread, NaN or infinity, a string that is not UTF-8, a key that
/// is not a string or number, or nesting deeper than [`MAX_DEPTH`].
pub(crate) fn to_json(value: &Value, depth: usize) -> Result<serde_json::Value, String> {
    Ok(match value {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(n) => (*n).into(),
        Value::Number(x) => serde_json::Number::from_f64(*x)
            .ok_or_else(|| format!("json.encode: cannot encode {x}"))?
            .into(),
        Value::String(s) => s
            .to_str()
            .map_err(|_| "json.encode: string is not valid UTF-8".to_owned())?
            .to_owned()
            .into(),
        Value::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err("json.encode: tables nested too deep (or a cycle)".to_owned());
            }
            table_to_json(t, depth + 1)?
        }
        other => {
            return Err(format!(
                "json.encode: cannot encode a {}",
                other.type_name()
            ))
        }
    })
}

fn table_to_json(t: &Table, depth: usize) -> Result<serde_json::Value, String> {
    let err = |e: mlua::Error| format!("json.encode: {e}");
    let mut entries = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        entries.push(pair.map_err(err)?);
    }
    let n = t.raw_len();
    let is_array = n > 0
        && entries.len() == n
        && entries
            .iter()
            .all(|(k, _)| matches!(k, Value::Integer(i) if *i >= 1 && usize::try_from(*i).is_ok_and(|i| i <= n)));
    if is_array {
        let mut items = vec![serde_json::Value::Null; n];
        for (k, v) in &entries {
            if let Value::Integer(i) = k {
                let i = usize::try_from(*i - 1).map_err(|e| format!("json.encode: {e}"))?;
                items[i] = to_json(v, depth)?;
            }
        }
        return Ok(serde_json::Value::Array(items));
    }
    let mut object = serde_json::Map::new();
    for (k, v) in &entries {
        let key = match k {
            Value::String(s) => s
                .to_str()
                .map_err(|_| "json.encode: key is not valid UTF-8".to_owned())?
                .to_owned(),
            Value::Integer(_) | Value::Number(_) => display(k),
            other => {
                return Err(format!(
                    "json.encode: cannot use a {} as a key",
                    other.type_name()
                ))
            }
        };
        object.insert(key, to_json(v, depth)?);
    }
    Ok(serde_json::Value::Object(object))
}

/// JSON as a Lua value: objects and arrays become tables, `null` becomes `nil`.
pub(crate) fn from_json(lua: &Lua, json: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, from_json(lua, item)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(object) => {
            let t = lua.create_table_with_capacity(0, object.len())?;
            for (k, v) in object {
                t.raw_set(k.as_str(), from_json(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

// --- base64 ---

fn base64_table(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.set(
        "encode",
        lua.create_function(|lua, data: Value| {
            let Value::String(data) = data else {
                return fail("base64.encode: expected a string");
            };
            let text = lua.create_string(STANDARD.encode(data.as_bytes()))?;
            Ok((Value::String(text), None))
        })?,
    )?;
    table.set(
        "decode",
        lua.create_function(|lua, data: Value| {
            let Value::String(data) = data else {
                return fail("base64.decode: expected a string");
            };
            match DECODE.decode(data.as_bytes()) {
                Ok(bytes) => Ok((Value::String(lua.create_string(bytes)?), None)),
                Err(e) => fail(format!("base64.decode: {e}")),
            }
        })?,
    )?;
    Ok(table)
}

// --- time ---

fn time_table(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.set(
        "unix",
        lua.create_function(|_, ()| {
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()))
        })?,
    )?;
    table.set(
        "rfc3339",
        lua.create_function(|_, ()| {
            time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(mlua::Error::external)
        })?,
    )?;
    // `os.date` as loaded (before the script could replace it), always in UTC.
    let os_date: Option<Function> = lua
        .globals()
        .get::<Option<Table>>("os")?
        .map(|os| os.get::<Option<Function>>("date"))
        .transpose()?
        .flatten();
    table.set(
        "date",
        lua.create_function(move |_, fmt: Option<String>| {
            let Some(date) = &os_date else {
                return fail("time.date: unavailable");
            };
            let fmt = fmt.unwrap_or_else(|| "%Y-%m-%d".to_owned());
            let fmt = if fmt.starts_with('!') {
                fmt
            } else {
                format!("!{fmt}")
            };
            match date.call::<Value>(fmt) {
                Ok(v) => Ok((v, None)),
                Err(e) => fail(format!("time.date: {}", super::vm::describe(&e))),
            }
        })?,
    )?;
    Ok(table)
}

// --- kv ---

/// `f` of a key as text: borrowed when it is UTF-8 (no copy), else made valid.
fn with_key<T>(key: &mlua::String, f: impl FnOnce(&str) -> T) -> T {
    match key.to_str() {
        Ok(k) => f(&k),
        Err(_) => f(&key.to_string_lossy()),
    }
}

fn kv_table(lua: &Lua, kv: Kv) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let store = kv.clone();
    table.set(
        "get",
        lua.create_function(move |lua, key: Value| {
            let Value::String(key) = key else {
                return fail("kv.get: key must be a string");
            };
            match with_key(&key, |k| store.get_with(k, |v| lua.create_string(v))) {
                Some(v) => Ok((Value::String(v?), None)),
                None => Ok((Value::Nil, None)),
            }
        })?,
    )?;
    let store = kv.clone();
    table.set(
        "get_base64",
        lua.create_function(move |lua, key: Value| {
            let Value::String(key) = key else {
                return fail("kv.get_base64: key must be a string");
            };
            match with_key(&key, |k| store.get_with(k, |v| STANDARD.encode(v))) {
                Some(v) => Ok((Value::String(lua.create_string(v)?), None)),
                None => Ok((Value::Nil, None)),
            }
        })?,
    )?;
    let store = kv.clone();
    table.set(
        "set",
        lua.create_function(move |_, (key, value): (Value, Value)| {
            let Value::String(key) = key else {
                return fail("kv.set: key must be a string");
            };
            match value {
                Value::String(s) => with_key(&key, |k| store.set(k, &s.as_bytes())),
                Value::Integer(_) | Value::Number(_) => {
                    with_key(&key, |k| store.set(k, display(&value).as_bytes()))
                }
                _ => return fail("kv.set: value must be a string"),
            }
            Ok((Value::Boolean(true), None))
        })?,
    )?;
    let store = kv.clone();
    table.set(
        "incr",
        lua.create_function(move |_, (key, by): (Value, Value)| {
            let Value::String(key) = key else {
                return fail("kv.incr: key must be a string");
            };
            let by = match by {
                Value::Nil => 1,
                Value::Integer(n) => n,
                Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => n as i64,
                _ => return fail("kv.incr: the amount must be an integer"),
            };
            match with_key(&key, |k| store.incr(k, by)) {
                Ok(n) => Ok((Value::Integer(n), None)),
                Err(why) => fail(why),
            }
        })?,
    )?;
    let store = kv.clone();
    table.set(
        "delete",
        lua.create_function(move |_, key: Value| {
            let Value::String(key) = key else {
                return fail("kv.delete: key must be a string");
            };
            with_key(&key, |k| store.delete(k));
            Ok((Value::Boolean(true), None))
        })?,
    )?;
    table.set(
        "list",
        lua.create_function(move |lua, prefix: Value| {
            let prefix = match prefix {
                Value::Nil => String::new(),
                Value::String(s) => s.to_string_lossy(),
                _ => return fail("kv.list: prefix must be a string"),
            };
            let out = lua.create_table()?;
            for (k, v) in kv.list(&prefix) {
                out.raw_set(k, lua.create_string(v)?)?;
            }
            Ok((Value::Table(out), None))
        })?,
    )?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use super::*;

    fn lua_with(kv: &Kv) -> Lua {
        let lua = Lua::new();
        let script = Script {
            id: usize::MAX,
            path: PathBuf::from("t.lua"),
            source: String::new(),
            name: "test".to_owned(),
            settings: Vec::new(),
            env: super::super::Env::with_kv(kv.clone()),
            instruction_limit: 100_000,
            memory_limit: 8 * 1024 * 1024,
        };
        install(&lua, &script).unwrap();
        lua
    }

    fn eval(lua: &Lua, code: &str) -> String {
        lua.load(code).eval::<String>().unwrap()
    }

    #[test]
    fn json_round_trips_arrays_objects_and_scalars() {
        let lua = lua_with(&Kv::memory());
        assert_eq!(
            eval(&lua, r#"return (json.encode({1, 2, "x", true}))"#),
            r#"[1,2,"x",true]"#
        );
        assert_eq!(
            eval(&lua, r#"return (json.encode({a = 1.5, b = {c = "d"}}))"#),
            r#"{"a":1.5,"b":{"c":"d"}}"#
        );
        assert_eq!(eval(&lua, "return (json.encode({}))"), "{}");
        assert_eq!(
            eval(&lua, "return (json.encode({[1] = 1, [3] = 3}))"),
            r#"{"1":1,"3":3}"#
        );
        assert_eq!(eval(&lua, r#"return (json.encode("a\"b"))"#), r#""a\"b""#);
        let back = r#"local v = json.decode('{"a":[1,2,{"b":null}],"n":-3,"f":0.5,"s":"\\u00e9"}')
            return json.encode(v)"#;
        assert_eq!(eval(&lua, back), r#"{"a":[1,2,{}],"f":0.5,"n":-3,"s":"é"}"#);
        assert_eq!(
            eval(
                &lua,
                r#"local v = json.decode("[10,20]") return tostring(#v + v[2])"#
            ),
            "22"
        );
    }

    #[test]
    fn json_errors_are_nil_and_a_message() {
        let lua = lua_with(&Kv::memory());
        for (code, want) in [
            ("return json.decode('{bad')", "json.decode:"),
            ("return json.decode(12)", "expected a string"),
            ("return json.encode(print)", "cannot encode a function"),
            ("return json.encode(0/0)", "cannot encode"),
            (
                "local t = {} t.t = t return json.encode(t)",
                "nested too deep",
            ),
            ("return json.encode({[true] = 1})", "as a key"),
            (r#"return json.encode("\xff")"#, "UTF-8"),
        ] {
            let (v, err): (Value, Option<String>) = lua.load(code).eval().unwrap();
            assert!(v.is_nil(), "{code}");
            assert!(
                err.as_deref().unwrap_or_default().contains(want),
                "{code}: {err:?}"
            );
        }
    }

    #[test]
    fn base64_encodes_bytes_and_refuses_bad_input() {
        let lua = lua_with(&Kv::memory());
        assert_eq!(
            eval(&lua, r#"return base64.encode("hi\0\255")"#),
            "aGkA/w=="
        );
        assert_eq!(
            eval(
                &lua,
                r#"return tostring(base64.decode("aGkA/w==") == "hi\0\255")"#
            ),
            "true"
        );
        assert_eq!(eval(&lua, r#"return (base64.decode("aGk"))"#), "hi");
        let (v, err): (Value, Option<String>) =
            lua.load(r#"return base64.decode("!!")"#).eval().unwrap();
        assert!(v.is_nil());
        assert!(err.unwrap().starts_with("base64.decode:"));
    }

    #[test]
    fn time_helpers() {
        let lua = lua_with(&Kv::memory());
        let unix: f64 = lua.load("return time.unix()").eval().unwrap();
        assert!(unix > 1.7e9);
        let rfc = eval(&lua, "return time.rfc3339()");
        assert!(rfc.ends_with('Z') && rfc.len() >= 20, "{rfc}");
        assert_eq!(eval(&lua, "return (time.date())").len(), 10);
        assert_eq!(eval(&lua, "return (time.date('%Y'))"), rfc[..4]);
        let (v, err): (Value, Option<String>) = lua.load("return time.date('%Q')").eval().unwrap();
        assert!(v.is_nil() && err.unwrap().contains("time.date"));
    }

    #[test]
    fn kv_get_set_delete_list_across_vms() {
        let kv = Kv::memory();
        let (a, b) = (lua_with(&kv), lua_with(&kv));
        assert_eq!(eval(&a, "return tostring(kv.get('x'))"), "nil");
        assert_eq!(eval(&a, "return tostring(kv.set('p:1', 'one'))"), "true");
        a.load("kv.set('p:2', 2) kv.set('q', 'bin\\0\\255')")
            .exec()
            .unwrap();
        assert_eq!(eval(&b, "return kv.get('p:1')"), "one");
        assert_eq!(eval(&b, "return kv.get('p:2')"), "2");
        assert_eq!(eval(&b, "return kv.get_base64('q')"), "YmluAP8=");
        assert_eq!(
            eval(&b, "local t = kv.list('p:') local n = 0 for k in pairs(t) do n = n + 1 end return n .. t['p:2']"),
            "22"
        );
        assert_eq!(eval(&b, "return tostring(kv.delete('p:1'))"), "true");
        assert_eq!(eval(&a, "return tostring(kv.get('p:1'))"), "nil");
        let (v, err): (Value, Option<String>) = a.load("return kv.set('k', {})").eval().unwrap();
        assert!(v.is_nil() && err.unwrap().contains("must be a string"));
        let (v, err): (Value, Option<String>) = a.load("return kv.get(1)").eval().unwrap();
        assert!(v.is_nil() && err.unwrap().contains("must be a string"));
    }

    #[test]
    fn kv_incr_adds_atomically_across_threads() {
        let kv = Kv::memory();
        let a = lua_with(&kv);
        assert_eq!(eval(&a, "return tostring(kv.incr('n'))"), "1");
        assert_eq!(eval(&a, "return tostring(kv.incr('n', 41))"), "42");
        assert_eq!(eval(&a, "return tostring(kv.incr('n', -2))"), "40");
        a.load("kv.set('s', 'text')").exec().unwrap();
        let (v, err): (Value, Option<String>) = a.load("return kv.incr('s')").eval().unwrap();
        assert!(v.is_nil() && err.unwrap().contains("not an integer"));
        let (v, err): (Value, Option<String>) = a.load("return kv.incr('n', 0.5)").eval().unwrap();
        assert!(v.is_nil() && err.unwrap().contains("must be an integer"));
        a.load("kv.set('big', '9223372036854775807')")
            .exec()
            .unwrap();
        let (v, err): (Value, Option<String>) = a.load("return kv.incr('big')").eval().unwrap();
        assert!(v.is_nil() && err.unwrap().contains("overflow"));
        // Four threads, each with its own VM, 2,000 increments each: none lost.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    let lua = lua_with(&kv);
                    lua.load("for _ = 1, 2000 do kv.incr('shared') end")
                        .exec()
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get("shared"), Some(b"8000".to_vec()));
    }
}
