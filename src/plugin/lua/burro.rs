//! Burro-style script directories (issue 9 item 5): a directory of hook files run with
//! Burro's `ctx`/`mut` globals, over the same engine as every other script.
//!
//! At start-up the directory's files are read once and turned into one Lua chunk (the
//! script's source): it hands the files' text to the prelude (`burro.lua`), which
//! runs `_shared.lua`, compiles each hook file under its own name (errors name the file
//! and line) and returns a table of event handlers. Hooks map to events:
//!
//! | hook file | event | when |
//! |---|---|---|
//! | `connect.lua` | `client_connect` | a client connection's first request |
//! | `before_request.lua` | `request` | the request head arrived, nothing contacted yet |
//! | `after_request.lua` | `response` | the request was sent: the response head arrived |
//! | `before_response.lua` | `response` | after `after_request.lua`, before the head is sent |
//! | `after_response.lua` | `access_log` | the response was sent |
//! | `error.lua` | `error` | the exchange failed (`err.msg`, `err.code`) |
//! | `close.lua` | `client_disconnect` | the client connection ended |
//! | `flush.lua` | `flush` | at shutdown and every `--script-flush-interval` |
//! | `ws_open.lua` | `websocket_start` | the origin answered an upgrade with 101 |
//! | `ws_msg.lua` | `websocket_message` | a whole message, either way (`msg`) |
//! | `ws_close.lua` | `websocket_end` | the WebSocket session is over |
//!
//! `msg` in `ws_msg.lua` is the engine's: `type`, `content` (assignable), `from_client`,
//! `msg:drop()`.
//!
//! Bodies are read whole only for a directory whose files mention them (unless
//! `_shared.lua` sets `BODIES` itself): `req.body` or `req.set_body` opts in to request
//! bodies; `resp.body`, or `resp.set_body` outside `before_request.lua` (where it builds
//! the `set_finish` reply), to response bodies; any other mention of `body` to both.

use std::path::Path;

/// The hook files a directory may hold, in the order they are compiled.
pub(crate) const HOOKS: &[&str] = &[
    "connect",
    "before_request",
    "after_request",
    "before_response",
    "after_response",
    "error",
    "close",
    "ws_open",
    "ws_msg",
    "ws_close",
    "flush",
];

/// The prelude: builds `ctx`/`mut` around the flow and binds the hooks to events.
const PRELUDE: &str = include_str!("burro.lua");

/// Whether a `--plugins` name is a script directory: an existing directory, or a path
/// ending in `/` (which then fails to load with a clear message if it is not one).
pub(crate) fn is_dir(name: &str) -> bool {
    name.ends_with('/') || Path::new(name).is_dir()
}

/// The Lua source of the directory `dir`: its files' text handed to the prelude.
///
/// # Errors
/// `script DIR: …` when the directory or a file cannot be read, or when it holds no
/// hook file.
pub(crate) fn source(dir: &Path) -> Result<String, String> {
    let read = |path: &Path| -> Result<Option<String>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("script {}: {e}", path.display())),
        }
    };
    let meta = std::fs::metadata(dir).map_err(|e| format!("script {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("script {}: not a directory", dir.display()));
    }
    let shared_path = dir.join("_shared.lua");
    let shared = read(&shared_path)?;
    let mut hooks = Vec::new();
    let mut bodies = Bodies::default();
    if let Some(text) = &shared {
        bodies.scan("_shared", text);
    }
    for &hook in HOOKS {
        let path = dir.join(format!("{hook}.lua"));
        if let Some(text) = read(&path)? {
            bodies.scan(hook, &text);
            hooks.push((hook, path, text));
        }
    }
    if hooks.is_empty() {
        return Err(format!(
            "script {}: no hook file ({}.lua)",
            dir.display(),
            HOOKS.join(".lua, ")
        ));
    }
    let mut out = String::with_capacity(
        PRELUDE.len() + hooks.iter().map(|h| h.2.len() + 64).sum::<usize>() + 256,
    );
    out.push_str("local hooks = {}\n");
    for (hook, path, text) in &hooks {
        out.push_str(&format!(
            "hooks[#hooks + 1] = {{ {}, {}, {} }}\n",
            long_string(hook),
            long_string(&path.display().to_string()),
            long_string(text)
        ));
    }
    let shared = match &shared {
        Some(text) => format!(
            "{{ {}, {} }}",
            long_string(&shared_path.display().to_string()),
            long_string(text)
        ),
        None => "nil".to_owned(),
    };
    out.push_str(&format!(
        "return assert(load({}, \"=burro\", \"t\", _ENV))({}, {shared}, hooks, \
         {{ request = {}, response = {} }})\n",
        long_string(PRELUDE),
        long_string(&dir.display().to_string()),
        bodies.request,
        bodies.response,
    ));
    Ok(out)
}

/// Which bodies a directory's files mention.
#[derive(Default, Debug, PartialEq)]
struct Bodies {
    request: bool,
    response: bool,
}

impl Bodies {
    fn scan(&mut self, hook: &str, text: &str) {
        let count = |pat: &str| text.matches(pat).count();
        let req = count("req.body") + count("req.set_body");
        let resp_read = count("resp.body");
        let resp_set = count("resp.set_body");
        self.request |= req > 0;
        self.response |= resp_read > 0 || (resp_set > 0 && hook != "before_request");
        if count("body") > req + resp_read + resp_set {
            self.request = true;
            self.response = true;
        }
    }
}

/// `text` as a Lua long string literal, whatever it holds.
fn long_string(text: &str) -> String {
    let mut level = 0;
    loop {
        let close = format!("]{}]", "=".repeat(level));
        if !text.contains(&close) && !text.ends_with(&close[..close.len() - 1]) {
            let eq = "=".repeat(level);
            // A newline right after the opening bracket is skipped by Lua: add one so a
            // text starting with a newline keeps it (and its line numbers).
            return format!("[{eq}[\n{text}]{eq}]");
        }
        level += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bodies_are_wanted_only_where_mentioned() {
        let scan = |hook: &str, text: &str| {
            let mut b = Bodies::default();
            b.scan(hook, text);
            (b.request, b.response)
        };
        let block = "mut.resp.set_status(403) mut.resp.set_body('x') mut.ctx.set_finish()";
        assert_eq!(scan("before_request", block), (false, false));
        assert_eq!(scan("before_response", block), (false, true));
        assert_eq!(
            scan("after_response", "log.info(ctx.req.body)"),
            (true, false)
        );
        assert_eq!(scan("after_request", "x = #ctx.resp.body"), (false, true));
        assert_eq!(
            scan("after_request", "local r = ctx.req; x = r.body"),
            (true, true)
        );
        assert_eq!(
            scan("after_response", "kv.set(ctx.req.host, 1)"),
            (false, false)
        );
    }

    #[test]
    fn long_strings_round_trip_any_text() {
        let lua = mlua::Lua::new();
        for text in ["", "\nx", "a]]b", "]=]", "a]", "x]=", "[[\r\n]]"] {
            let back: String = lua
                .load(format!("return {}", long_string(text)))
                .eval()
                .unwrap();
            assert_eq!(back, text.replace("\r\n", "\n"), "{text:?}");
        }
    }
}
