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
//! * `kv.get/get_base64/set/delete/list`: one [`Kv`] store per process (per `Config`),
//!   shared by every worker and script. With `--kv-file` it is loaded at start and
//!   written back (temporary file + rename) by a background thread at most every
//!   [`FLUSH_EVERY`] after a change, and once more when the store is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use mlua::{Function, Lua, Table, Value};

use super::vm::Script;

/// Log target of script log lines.
pub const TARGET: &str = "proxy::script";

/// Longest time a change to the store waits before it is written to `--kv-file`.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Deepest table nesting `json.encode` follows (also stops cycles).
const MAX_DEPTH: usize = 128;

/// Decodes standard base64 with or without padding.
const DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// === kv ===

/// The key-value store scripts share: cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct Kv {
    inner: Arc<KvInner>,
}

#[derive(Default)]
struct KvInner {
    map: RwLock<BTreeMap<String, Vec<u8>>>,
    /// `--kv-file`.
    file: Option<PathBuf>,
    /// Changed since the last write of `file`.
    dirty: AtomicBool,
    /// One writer of `file` at a time.
    writing: Mutex<()>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("file", &self.inner.file)
            .finish_non_exhaustive()
    }
}

impl Kv {
    /// An empty store in memory only.
    pub fn memory() -> Kv {
        Kv::default()
    }

    /// The store of `--kv-file PATH`: a JSON object of string values (or `{"base64": …}`
    /// for bytes that are not UTF-8), empty when the file does not exist yet.
    ///
    /// # Errors
    /// The file cannot be read or is not such an object: `PATH: why`.
    pub fn open(path: &Path) -> Result<Kv, String> {
        let map = match std::fs::read(path) {
            Ok(bytes) => parse_file(&bytes).map_err(|why| format!("{}: {why}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let kv = Kv {
            inner: Arc::new(KvInner {
                map: RwLock::new(map),
                file: Some(path.to_path_buf()),
                dirty: AtomicBool::new(false),
                writing: Mutex::new(()),
            }),
        };
        let weak = Arc::downgrade(&kv.inner);
        std::thread::Builder::new()
            .name("kv-flush".to_owned())
            .spawn(move || flusher(&weak))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(kv)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        read(&self.inner.map).get(key).cloned()
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: Vec<u8>) {
        write(&self.inner.map).insert(key.to_owned(), value);
        self.inner.dirty.store(true, Ordering::Release);
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&self, key: &str) -> bool {
        let had = write(&self.inner.map).remove(key).is_some();
        if had {
            self.inner.dirty.store(true, Ordering::Release);
        }
        had
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        read(&self.inner.map)
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes the store to its file now if it changed.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl KvInner {
    fn flush(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let _one = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let text = render_file(&read(&self.map));
        let result = write_atomically(path, text.as_bytes());
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

impl Drop for KvInner {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("--kv-file: {e}");
        }
    }
}

fn flusher(store: &Weak<KvInner>) {
    let mut failing = false;
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(inner) = store.upgrade() else { return };
        match inner.flush() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::error!("--kv-file: {e}");
            }
            Err(_) => {}
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn parse_file(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(object) = value else {
        return Err("not a JSON object".to_owned());
    };
    let mut map = BTreeMap::new();
    for (key, value) in object {
        let bytes = match &value {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            serde_json::Value::Object(o) if o.len() == 1 => match o.get("base64") {
                Some(serde_json::Value::String(b)) => DECODE
                    .decode(b)
                    .map_err(|e| format!("key {key:?}: bad base64: {e}"))?,
                _ => return Err(format!("key {key:?}: not a string")),
            },
            _ => return Err(format!("key {key:?}: not a string")),
        };
        map.insert(key, bytes);
    }
    Ok(map)
}

fn render_file(map: &BTreeMap<String, Vec<u8>>) -> String {
    let object: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| {
            let value = match std::str::from_utf8(v) {
                Ok(s) => serde_json::Value::String(s.to_owned()),
                Err(_) => serde_json::json!({ "base64": STANDARD.encode(v) }),
            };
            (k.clone(), value)
        })
        .collect();
    let mut text = serde_json::Value::Object(object).to_string();
    text.push('\n');
    text
}

/// Writes `path` as a whole or not at all: a temporary file beside it, synced, renamed.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map_or_else(|| "kv".to_owned(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// === installing the libraries ===

/// Adds `log`, `json`, `base64`, `time` and `kv` to `lua`'s globals for `script`.
///
/// # Errors
/// Lua could not allocate the tables.
pub(crate) fn install(lua: &Lua, script: &Script) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.set("log", log_table(lua, script.path.display().to_string())?)?;
    globals.set("json", json_table(lua)?)?;
    globals.set("base64", base64_table(lua)?)?;
    globals.set("time", time_table(lua)?)?;
    globals.set("kv", kv_table(lua, script.kv.clone())?)?;
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
        let f = lua.create_function(move |_, (msg, attrs): (Value, Option<Table>)| {
            let msg = display(&msg);
            let attrs = attrs.map(|t| attrs_json(&t)).unwrap_or_default();
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
        lua.create_function(|lua, data: mlua::String| {
            lua.create_string(STANDARD.encode(data.as_bytes()))
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

fn kv_table(lua: &Lua, kv: Kv) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let store = kv.clone();
    table.set(
        "get",
        lua.create_function(move |lua, key: Value| {
            let Value::String(key) = key else {
                return fail("kv.get: key must be a string");
            };
            match store.get(&key.to_string_lossy()) {
                Some(v) => Ok((Value::String(lua.create_string(v)?), None)),
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
            match store.get(&key.to_string_lossy()) {
                Some(v) => Ok((Value::String(lua.create_string(STANDARD.encode(v))?), None)),
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
            let value = match value {
                Value::String(s) => s.as_bytes().to_vec(),
                Value::Integer(_) | Value::Number(_) => display(&value).into_bytes(),
                _ => return fail("kv.set: value must be a string"),
            };
            store.set(&key.to_string_lossy(), value);
            Ok((Value::Boolean(true), None))
        })?,
    )?;
    let store = kv.clone();
    table.set(
        "delete",
        lua.create_function(move |_, key: Value| {
            let Value::String(key) = key else {
                return fail("kv.delete: key must be a string");
            };
            store.delete(&key.to_string_lossy());
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

    use super::*;

    fn lua_with(kv: &Kv) -> Lua {
        let lua = Lua::new();
        let script = Script {
            id: usize::MAX,
            path: PathBuf::from("t.lua"),
            source: String::new(),
            kv: kv.clone(),
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
    fn kv_file_is_loaded_and_written_atomically() {
        let dir = std::env::temp_dir().join(format!("kv-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kv.json");
        std::fs::write(&path, r#"{"a":"1","b":{"base64":"/w=="}}"#).unwrap();
        let kv = Kv::open(&path).unwrap();
        assert_eq!(kv.get("a"), Some(b"1".to_vec()));
        assert_eq!(kv.get("b"), Some(vec![0xff]));
        kv.set("c", b"3".to_vec());
        kv.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"a\":\"1\",\"b\":{\"base64\":\"/w==\"},\"c\":\"3\"}\n"
        );
        drop(kv);
        for bad in ["[1]", "{\"a\":1}", "not json"] {
            std::fs::write(&path, bad).unwrap();
            assert!(Kv::open(&path)
                .unwrap_err()
                .starts_with(&path.display().to_string()));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
