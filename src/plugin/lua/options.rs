//! A script's options and commands (Roxy's extension API).
//!
//! Options are declared in a global `options` table, each entry a declaration
//! `{ default = ..., help = "..." }` (or a bare default value). `--set script.name=value`
//! sets one: the text is checked against the default's type (a boolean, an integer, a
//! number, a string, or a comma-separated list for a table default). After loading, the
//! global `options` holds the values, so handlers read `options.name`; `configure(changed)`
//! then runs with every option name in `changed` (at start, all of them count as
//! changed, as in mitmproxy).
//!
//! Commands are the functions of a global `commands` table (or `{ run = f, help = "..." }`
//! entries). `--list-commands` prints them; the flows issue's admin API will invoke them.

use mlua::{Lua, Table, Value};

/// A command a script defines.
#[derive(Clone, Debug)]
pub(crate) struct Command {
    pub(crate) name: String,
    pub(crate) help: String,
}

/// What the default of an option says its values are.
#[derive(Clone, Copy)]
enum Kind {
    Boolean,
    Integer,
    Number,
    Text,
    List,
}

impl Kind {
    fn of(default: &Value) -> Kind {
        match default {
            Value::Boolean(_) => Kind::Boolean,
            Value::Integer(_) => Kind::Integer,
            Value::Number(_) => Kind::Number,
            Value::Table(_) => Kind::List,
            _ => Kind::Text,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Boolean => "a boolean (true/false)",
            Kind::Integer => "an integer",
            Kind::Number => "a number",
            Kind::Text => "a string",
            Kind::List => "a comma-separated list",
        }
    }

    /// `text` as a value of this kind.
    fn parse(self, lua: &Lua, text: &str) -> Option<Value> {
        match self {
            Kind::Boolean => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(Value::Boolean(true)),
                "false" | "no" | "off" | "0" => Some(Value::Boolean(false)),
                _ => None,
            },
            Kind::Integer => text.trim().parse().ok().map(Value::Integer),
            Kind::Number => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(Value::Number),
            Kind::Text => lua.create_string(text).ok().map(Value::String),
            Kind::List => {
                let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
                lua.create_sequence_from(items).ok().map(Value::Table)
            }
        }
    }
}

/// Reads the `options` declarations of the script `script`, applies `settings`
/// (name, value) and replaces the global `options` with the values. Returns every
/// option's name, sorted.
///
/// # Errors
/// A setting names no declared option or does not parse as the default's type.
pub(crate) fn apply(
    lua: &Lua,
    script: &str,
    settings: &[(String, String)],
) -> Result<Vec<String>, String> {
    let lua_err = |e: mlua::Error| super::vm::describe(&e);
    let globals = lua.globals();
    let declared: Option<Table> = globals.get("options").map_err(lua_err)?;
    let values = lua.create_table().map_err(lua_err)?;
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    if let Some(declared) = declared {
        for pair in declared.pairs::<String, Value>() {
            let (name, entry) = pair.map_err(lua_err)?;
            let default = match &entry {
                Value::Table(t) if is_declaration(t).map_err(lua_err)? => {
                    t.get::<Value>("default").map_err(lua_err)?
                }
                other => other.clone(),
            };
            kinds.push((name.clone(), Kind::of(&default)));
            values.raw_set(name.as_str(), default).map_err(lua_err)?;
            names.push(name);
        }
    }
    for (name, text) in settings {
        let Some((_, kind)) = kinds.iter().find(|(n, _)| n == name) else {
            let mut known = names.clone();
            known.sort();
            return Err(format!(
                "--set {script}.{name}: the script declares no option {name:?} (options: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        };
        let value = kind.parse(lua, text).ok_or_else(|| {
            format!(
                "--set {script}.{name}={text}: expected {} (the type of its default)",
                kind.name()
            )
        })?;
        values.raw_set(name.as_str(), value).map_err(lua_err)?;
    }
    globals.set("options", values).map_err(lua_err)?;
    names.sort();
    Ok(names)
}

/// `{ default = ..., help = ... }` rather than a table default.
fn is_declaration(t: &Table) -> mlua::Result<bool> {
    Ok(t.contains_key("default")? || t.contains_key("help")?)
}

/// The commands of the global `commands` table, sorted by name.
pub(crate) fn commands(lua: &Lua) -> mlua::Result<Vec<Command>> {
    let mut out = Vec::new();
    if let Some(table) = lua.globals().get::<Option<Table>>("commands")? {
        for pair in table.pairs::<String, Value>() {
            let (name, entry) = pair?;
            let help = match &entry {
                Value::Function(_) => String::new(),
                Value::Table(t) if t.get::<Option<mlua::Function>>("run")?.is_some() => {
                    t.get::<Option<String>>("help")?.unwrap_or_default()
                }
                _ => {
                    return Err(mlua::Error::runtime(format!(
                        "commands.{name} must be a function or {{ run = function, help = \"...\" }}"
                    )))
                }
            };
            out.push(Command { name, help });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The name `--set` knows a script by: its file name without `.lua`, or its
/// directory's name.
pub fn script_name(path: &std::path::Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
