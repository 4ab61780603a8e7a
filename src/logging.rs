//! Log lines: proxy.py's `%(key)s` templates or JSON, written by a `tracing` subscriber.
//!
//! `main` calls [`init`] once; the library only emits `tracing` events. A template is
//! parsed once into parts, and each event is first collected into a [`Record`] (plain
//! data, so the renderers are unit-tested without a subscriber), then rendered into the
//! fmt layer's per-event buffer, which reaches the writer in one `write_all`.
//!
//! Template keys (Python `logging` names): `asctime` (`2026-11-22 01:54:30,229`, UTC),
//! `created`, `msecs`, `relativeCreated`, `process`, `processName`, `levelname`,
//! `levelno`, `name` (the target), `module` (source file stem), `funcName` (last
//! segment of the module path: Rust has no function names at run time), `filename`,
//! `pathname`, `lineno`, `thread`/`threadName` (thread name) and `message` (the message,
//! then ` key=value` for each other field). Python's flags, width and precision work
//! (`%(levelname)-.1s` → `I`). `%%` is `%`; unknown keys are printed as written.
//! Control characters in messages are escaped, so one event is always one line.
//! Access-log events (target [`ACCESS_TARGET`]) print their preformatted message
//! alone in template mode; their fields show in JSON mode.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::CliError;
use crate::config::{LogConfig, LogFormat};

/// Target of the per-exchange access log; its message is already a proxy.py line.
pub const ACCESS_TARGET: &str = "proxy::access";

/// Installs the process-wide subscriber: level filter, line format, and writer
/// (`--log-file` opened for appending, created if missing; otherwise standard output).
///
/// # Errors
/// The log file cannot be opened (exit 64), or a subscriber is already installed (exit 1).
pub fn init(log: &LogConfig) -> Result<LogGuard, CliError> {
    let sink: Box<dyn io::Write + Send> = match &log.file {
        Some(path) => Box::new(
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| {
                    CliError::usage(format_args!("--log-file: {}: {e}", path.display()))
                })?,
        ),
        None => Box::new(io::stdout()),
    };
    // Workers hand each formatted line to a channel; one writer thread batches the
    // writes. No lock is shared between workers and no worker waits on a `write(2)`
    // per access-log line. Lossless: when the channel is full, the worker waits.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_CHANNEL_LINES)
        .thread_name("proxy-log-writer")
        .finish(sink);
    tracing::subscriber::set_global_default(subscriber(log, writer))
        .map_err(|e| CliError::runtime(format_args!("cannot install the logger: {e}")))?;
    Ok(LogGuard { _writer: guard })
}

/// Lines that may wait for the writer thread before a worker blocks.
const LOG_CHANNEL_LINES: usize = 4096;

/// Keeps the log writer thread alive; dropping it writes out every queued line.
/// Hold it until the process exits.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// The subscriber `init` installs, writing to `writer` (tests pass an in-memory buffer).
pub fn subscriber<W>(log: &LogConfig, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(LineFormat::new(&log.format))
        .with_writer(writer)
        // A failed write (disk full, closed stdout) drops the line; it must not turn
        // into an `eprintln!`, which panics when stderr is broken too.
        .log_internal_errors(false);
    tracing_subscriber::registry()
        .with(LevelFilter::from_level(log.level))
        .with(lines)
}

// === Record: one event as plain data ===

/// A field value, keeping numbers as numbers for JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string recorded as such (`field = "x"`): quoted in `key=value` only when needed.
    Str(String),
    /// Anything recorded with `?`/`%`, already formatted.
    Text(String),
    /// Signed integer.
    I64(i64),
    /// Unsigned integer.
    U64(u64),
    /// Float.
    F64(f64),
    /// Boolean.
    Bool(bool),
}

/// Everything a line can show about one event.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    /// When the event happened.
    pub time: SystemTime,
    /// Its level.
    pub level: Level,
    /// Its target (`%(name)s`).
    pub target: &'a str,
    /// Its Rust module path (`proxy::server::worker`).
    pub module_path: Option<&'a str>,
    /// Its source file (`src/server/worker.rs`).
    pub file: Option<&'a str>,
    /// Its source line.
    pub line: Option<u32>,
    /// Name of the emitting thread.
    pub thread: &'a str,
    /// The `message` field.
    pub message: String,
    /// All other fields, in order.
    pub fields: Vec<(&'static str, Value)>,
    /// Enclosing spans, outermost first, as `name{fields}` (JSON only).
    pub spans: Option<String>,
}

impl Visit for Record<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields
                .push((field.name(), Value::Text(format!("{value:?}"))));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .push((field.name(), Value::Str(value.to_owned())));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), Value::I64(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), Value::U64(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), Value::F64(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), Value::Bool(value)));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .push((field.name(), Value::Text(value.to_string())));
    }
}

/// proxy.py's level names; tracing's TRACE has no Python name and shows as DEBUG.
pub fn levelname(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

fn levelno(level: Level) -> i64 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        _ => 10,
    }
}

// === LineFormat: the FormatEvent ===

/// The event formatter installed by [`subscriber`].
#[derive(Debug)]
pub struct LineFormat {
    kind: LineKind,
    started: Instant,
}

#[derive(Debug)]
enum LineKind {
    Template(Template),
    Json,
}

impl LineFormat {
    /// A formatter for `format`.
    pub fn new(format: &LogFormat) -> LineFormat {
        let kind = match format {
            LogFormat::Template(t) => LineKind::Template(Template::parse(t)),
            LogFormat::Json => LineKind::Json,
        };
        LineFormat {
            kind,
            started: Instant::now(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let thread = std::thread::current();
        let unnamed;
        let thread_name = match thread.name() {
            Some(name) => name,
            None => {
                unnamed = format!("{:?}", thread.id());
                &unnamed
            }
        };
        let mut record = Record {
            time: SystemTime::now(),
            level: *meta.level(),
            target: meta.target(),
            module_path: meta.module_path(),
            file: meta.file(),
            line: meta.line(),
            thread: thread_name,
            message: String::new(),
            fields: Vec::new(),
            spans: None,
        };
        event.record(&mut record);

        let mut line = String::with_capacity(256);
        match &self.kind {
            LineKind::Template(template) => template.render(
                &record,
                self.started.elapsed().as_secs_f64() * 1e3,
                &mut line,
            ),
            LineKind::Json => {
                record.spans = span_context(ctx);
                render_json(&record, &mut line);
            }
        }
        line.push('\n');
        writer.write_str(&line)
    }
}

/// `conn{id=w0-1}:req{method=GET}` for the spans around the event, if any.
fn span_context<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    let mut out = String::new();
    for span in scope.from_root() {
        if !out.is_empty() {
            out.push(':');
        }
        out.push_str(span.name());
        let ext = span.extensions();
        if let Some(fields) = ext.get::<FormattedFields<N>>() {
            if !fields.is_empty() {
                let _ = write!(out, "{{{fields}}}");
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

// === Template: proxy.py's %-format ===

/// A parsed `%(key)s` template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Field { key: Key, spec: Spec },
}

/// Python %-conversion flags, width, precision and type.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Spec {
    left: bool,
    zero: bool,
    plus: bool,
    space: bool,
    width: usize,
    precision: Option<usize>,
    conv: char,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Key {
    Asctime,
    Created,
    Msecs,
    RelativeCreated,
    Process,
    ProcessName,
    LevelName,
    LevelNo,
    Name,
    Module,
    FuncName,
    Filename,
    Pathname,
    Lineno,
    Thread,
    Message,
}

impl Key {
    fn from_name(name: &str) -> Option<Key> {
        Some(match name {
            "asctime" => Key::Asctime,
            "created" => Key::Created,
            "msecs" => Key::Msecs,
            "relativeCreated" => Key::RelativeCreated,
            "process" => Key::Process,
            "processName" => Key::ProcessName,
            "levelname" => Key::LevelName,
            "levelno" => Key::LevelNo,
            "name" => Key::Name,
            "module" => Key::Module,
            "funcName" => Key::FuncName,
            "filename" => Key::Filename,
            "pathname" => Key::Pathname,
            "lineno" => Key::Lineno,
            "thread" | "threadName" => Key::Thread,
            "message" => Key::Message,
            _ => return None,
        })
    }
}

/// What a key evaluates to before the spec is applied.
enum Rendered<'r> {
    Str(std::borrow::Cow<'r, str>),
    Int(i64),
    Float(f64),
}

impl Template {
    /// Parses `template`; anything that is not a well-formed `%(known)spec` stays literal.
    pub fn parse(template: &str) -> Template {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(pos) = rest.find('%') {
            literal.push_str(&rest[..pos]);
            rest = &rest[pos..];
            if let Some(after) = rest.strip_prefix("%%") {
                literal.push('%');
                rest = after;
                continue;
            }
            match parse_field(rest) {
                Some((key, spec, len)) => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field { key, spec });
                    rest = &rest[len..];
                }
                None => {
                    literal.push('%');
                    rest = &rest[1..];
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Template { parts }
    }

    /// Appends the line for `record` (without a newline) to `out`.
    /// `relative_ms` is the time since the logger started (`%(relativeCreated)d`).
    pub fn render(&self, record: &Record<'_>, relative_ms: f64, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field { key, spec } => {
                    apply_spec(spec, evaluate(*key, record, relative_ms), out)
                }
            }
        }
    }
}

/// Parses `%(key)[flags][width][.precision]conv` at the start of `s`;
/// returns the key, the spec and the length consumed.
fn parse_field(s: &str) -> Option<(Key, Spec, usize)> {
    let body = s.strip_prefix("%(")?;
    let close = body.find(')')?;
    let key = Key::from_name(&body[..close])?;
    let bytes = body.as_bytes();
    let mut i = close + 1;
    let mut spec = Spec::default();
    while let Some(&b) = bytes.get(i) {
        match b {
            b'-' => spec.left = true,
            b'0' => spec.zero = true,
            b'+' => spec.plus = true,
            b' ' => spec.space = true,
            b'#' => {}
            _ => break,
        }
        i += 1;
    }
    let (width, used) = digits(&bytes[i..]);
    spec.width = width?;
    i += used;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        let (precision, used) = digits(&bytes[i..]);
        spec.precision = Some(precision.unwrap_or(0).min(1 << 16));
        i += used;
    }
    let conv = *bytes.get(i)?;
    if !b"sdiurafFeEgGxXoc".contains(&conv) {
        return None;
    }
    spec.conv = char::from(conv);
    spec.width = spec.width.min(1 << 16);
    Some((key, spec, 2 + i + 1))
}

/// Leading ASCII digits as a number (`Some(0)` when there are none; `None` on overflow).
fn digits(bytes: &[u8]) -> (Option<usize>, usize) {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut n: usize = 0;
    for &b in &bytes[..len] {
        match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(b - b'0')))
        {
            Some(v) => n = v,
            None => return (None, len),
        }
    }
    (Some(n), len)
}

fn evaluate<'r>(key: Key, record: &'r Record<'_>, relative_ms: f64) -> Rendered<'r> {
    use std::borrow::Cow::{Borrowed, Owned};
    let file = record.file.unwrap_or("");
    match key {
        Key::Asctime => {
            let mut s = String::with_capacity(23);
            push_asctime(record.time, &mut s);
            Rendered::Str(Owned(s))
        }
        Key::Created => Rendered::Float(
            record
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        ),
        Key::Msecs => Rendered::Int(i64::from(
            record
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_millis())
                .unwrap_or(0),
        )),
        Key::RelativeCreated => Rendered::Float(relative_ms),
        Key::Process => Rendered::Int(i64::from(std::process::id())),
        Key::ProcessName => Rendered::Str(Borrowed("MainProcess")),
        Key::LevelName => Rendered::Str(Borrowed(levelname(record.level))),
        Key::LevelNo => Rendered::Int(levelno(record.level)),
        Key::Name => Rendered::Str(Borrowed(record.target)),
        Key::Module => Rendered::Str(Borrowed(module_of(file))),
        Key::FuncName => {
            let path = record.module_path.unwrap_or(record.target);
            Rendered::Str(Borrowed(path.rsplit("::").next().unwrap_or(path)))
        }
        Key::Filename => Rendered::Str(Borrowed(file.rsplit(['/', '\\']).next().unwrap_or(file))),
        Key::Pathname => Rendered::Str(Borrowed(file)),
        Key::Lineno => Rendered::Int(i64::from(record.line.unwrap_or(0))),
        Key::Thread => Rendered::Str(Borrowed(record.thread)),
        Key::Message => {
            // The access log line is complete as it is; its fields are for JSON.
            let message = escape_controls(&record.message);
            if record.fields.is_empty() || record.target == ACCESS_TARGET {
                return Rendered::Str(message);
            }
            let mut s = message.into_owned();
            for (name, value) in &record.fields {
                let _ = write!(s, " {name}=");
                push_logfmt_value(value, &mut s);
            }
            Rendered::Str(Owned(s))
        }
    }
}

/// One event, one line: control characters (CR, LF, ESC…) in a message, which may
/// quote client input, are shown escaped (`\n`, `\u{1b}`) so they cannot forge lines
/// or drive a terminal.
fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Source file stem: `src/proxy/forward.rs` → `forward`; `src/plugin/mod.rs` → `plugin`.
fn module_of(file: &str) -> &str {
    let mut components = file.rsplit(['/', '\\']);
    let name = components.next().unwrap_or(file);
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    if stem == "mod" {
        components.next().unwrap_or(stem)
    } else {
        stem
    }
}

fn push_logfmt_value(value: &Value, out: &mut String) {
    match value {
        Value::Str(s) | Value::Text(s) => {
            let plain = !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
            if plain {
                out.push_str(s);
            } else {
                let _ = write!(out, "{s:?}");
            }
        }
        Value::I64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
    }
}

/// Python's `%` formatting for one value: precision truncates strings or sets float
/// digits, width pads (right-aligned unless `-`), `0` pads numbers with zeros.
fn apply_spec(spec: &Spec, value: Rendered<'_>, out: &mut String) {
    let body: String = match (value, spec.conv) {
        (Rendered::Str(s), _) => match spec.precision {
            Some(p) => s.chars().take(p).collect(),
            None => s.into_owned(),
        },
        (Rendered::Int(n), 'f' | 'F' | 'e' | 'E' | 'g' | 'G') => format_float(spec, n as f64),
        (Rendered::Float(x), 'f' | 'F' | 'e' | 'E' | 'g' | 'G') => format_float(spec, x),
        (Rendered::Int(n), conv) => format_int(spec, n, conv),
        (Rendered::Float(x), 's' | 'r' | 'a') => format!("{x}"),
        (Rendered::Float(x), conv) => format_int(spec, x.trunc() as i64, conv),
    };
    let len = body.chars().count();
    let pad = spec.width.saturating_sub(len);
    let numeric = !matches!(spec.conv, 's' | 'r' | 'a' | 'c');
    if pad == 0 {
        out.push_str(&body);
    } else if spec.left {
        out.push_str(&body);
        push_n(out, ' ', pad);
    } else if spec.zero && numeric {
        // Zeros go after the sign.
        let (sign, digits) = match body.strip_prefix(['-', '+', ' ']) {
            Some(rest) => body.split_at(body.len() - rest.len()),
            None => ("", body.as_str()),
        };
        out.push_str(sign);
        push_n(out, '0', pad);
        out.push_str(digits);
    } else {
        push_n(out, ' ', pad);
        out.push_str(&body);
    }
}

fn push_n(out: &mut String, c: char, n: usize) {
    out.extend(std::iter::repeat(c).take(n));
}

fn sign_prefix(spec: &Spec, negative: bool) -> &'static str {
    match (negative, spec.plus, spec.space) {
        (true, _, _) => "",
        (false, true, _) => "+",
        (false, false, true) => " ",
        _ => "",
    }
}

fn format_int(spec: &Spec, n: i64, conv: char) -> String {
    let sign = sign_prefix(spec, n < 0);
    match conv {
        'x' => format!("{sign}{n:x}"),
        'X' => format!("{sign}{n:X}"),
        'o' => format!("{sign}{n:o}"),
        _ => format!("{sign}{n}"),
    }
}

fn format_float(spec: &Spec, x: f64) -> String {
    let sign = sign_prefix(spec, x < 0.0);
    let precision = spec.precision.unwrap_or(6);
    match spec.conv {
        'e' => format!("{sign}{x:.precision$e}"),
        'E' => format!("{sign}{x:.precision$E}"),
        'g' | 'G' => format!("{sign}{x}"),
        _ => format!("{sign}{x:.precision$}"),
    }
}

// === JSON lines ===

/// Appends `record` as one JSON object: `ts`, `level`, `target`, `message`, `span` (when
/// inside spans), then every field (numbers and booleans as JSON numbers and booleans).
pub fn render_json(record: &Record<'_>, out: &mut String) {
    let mut ts = String::with_capacity(24);
    push_rfc3339(record.time, &mut ts);
    out.push_str("{\"ts\":");
    push_json_str(&ts, out);
    out.push_str(",\"level\":");
    push_json_str(levelname(record.level), out);
    out.push_str(",\"target\":");
    push_json_str(record.target, out);
    out.push_str(",\"message\":");
    push_json_str(&record.message, out);
    if let Some(spans) = &record.spans {
        out.push_str(",\"span\":");
        push_json_str(spans, out);
    }
    for (name, value) in &record.fields {
        out.push(',');
        // Never let a field shadow one of ours: `level` becomes `field.level`.
        if matches!(*name, "ts" | "level" | "target" | "message" | "span") {
            push_json_str(&format!("field.{name}"), out);
        } else {
            push_json_str(name, out);
        }
        out.push(':');
        match value {
            Value::Str(s) | Value::Text(s) => push_json_str(s, out),
            Value::I64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::U64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::F64(x) if x.is_finite() => {
                // serde_json prints the shortest form that reads back the same.
                out.push_str(&serde_json::Value::from(*x).to_string());
            }
            Value::F64(x) => push_json_str(&x.to_string(), out),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
    out.push('}');
}

fn push_json_str(s: &str, out: &mut String) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // Serialising a &str cannot fail; keep the line valid JSON regardless.
        Err(_) => out.push_str("\"\""),
    }
}

// === UTC time without a date crate ===

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian.
/// Howard Hinnant's `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    (y, m as u32, d as u32)
}

/// Broken-down UTC time: (year, month, day, hour, minute, second, millisecond).
fn utc_parts(time: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    // Times before 1970 do not happen on a running proxy; clamp rather than fail.
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    (
        y,
        mo,
        d,
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        since.subsec_millis(),
    )
}

/// Python logging's `asctime`: `2026-11-22 01:54:30,229` (here in UTC).
pub fn push_asctime(time: SystemTime, out: &mut String) {
    let (y, mo, d, h, mi, s, ms) = utc_parts(time);
    let _ = write!(out, "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02},{ms:03}");
}

/// RFC 3339 in UTC with milliseconds: `2026-11-22T01:54:30.229Z`.
pub fn push_rfc3339(time: SystemTime, out: &mut String) {
    let (y, mo, d, h, mi, s, ms) = utc_parts(time);
    let _ = write!(out, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::time::Duration;

    /// 2026-11-22 01:54:30.229 UTC.
    fn sample_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_312_470_229)
    }

    fn record(message: &str) -> Record<'static> {
        Record {
            time: sample_time(),
            level: Level::INFO,
            target: "proxy::plugins",
            module_path: Some("proxy::plugin::registry"),
            file: Some("src/plugin/registry.rs"),
            line: Some(89),
            thread: "proxy-worker-0",
            message: message.to_owned(),
            fields: Vec::new(),
            spans: None,
        }
    }

    fn render(template: &str, record: &Record<'_>) -> String {
        let mut out = String::new();
        Template::parse(template).render(record, 1500.0, &mut out);
        out
    }

    #[test]
    fn civil_from_days_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1)); // 2100 is not a leap year
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
    }

    #[test]
    fn civil_from_days_is_consecutive() {
        // Walk 1970..2400 a day at a time and check the calendar never skips or repeats.
        let mut prev = civil_from_days(0);
        for day in 1..157_000 {
            let cur = civil_from_days(day);
            let next_month = (cur.1 == prev.1 % 12 + 1) && cur.2 == 1;
            let same_month = cur.0 == prev.0 && cur.1 == prev.1 && cur.2 == prev.2 + 1;
            assert!(same_month || next_month, "{prev:?} -> {cur:?}");
            if cur.1 == 1 && prev.1 == 12 {
                assert_eq!(cur.0, prev.0 + 1);
            }
            prev = cur;
        }
    }

    #[test]
    fn timestamps() {
        let mut s = String::new();
        push_asctime(sample_time(), &mut s);
        assert_eq!(s, "2026-11-22 01:54:30,229");
        s.clear();
        push_rfc3339(sample_time(), &mut s);
        assert_eq!(s, "2026-11-22T01:54:30.229Z");
        s.clear();
        push_asctime(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01 00:00:00,000");
    }

    #[test]
    fn default_template_matches_proxy_py() {
        let line = render(
            crate::config::DEFAULT_LOG_FORMAT,
            &record("Loaded plugin x"),
        );
        let pid = std::process::id();
        assert_eq!(
            line,
            format!(
                "2026-11-22 01:54:30,229 - pid:{pid} [I] registry.registry:89 - Loaded plugin x"
            )
        );
    }

    #[test]
    fn python_flags_width_and_precision() {
        let mut r = record("m");
        r.level = Level::WARN;
        assert_eq!(render("[%(levelname)-.1s]", &r), "[W]");
        assert_eq!(render("[%(levelname)-10s]", &r), "[WARNING   ]");
        assert_eq!(render("[%(levelname)10s]", &r), "[   WARNING]");
        assert_eq!(render("[%(levelname).3s]", &r), "[WAR]");
        assert_eq!(render("%(lineno)05d|%(lineno)-4d|", &r), "00089|89  |");
        assert_eq!(render("%(levelno)d %(levelno)s", &r), "30 30");
        assert_eq!(render("%(msecs)03d", &r), "229");
        assert_eq!(render("%(relativeCreated).1f", &r), "1500.0");
        assert_eq!(render("%(created).3f", &r), "1795312470.229");
        r.level = Level::TRACE;
        assert_eq!(render("%(levelname)s", &r), "DEBUG");
        r.level = Level::ERROR;
        assert_eq!(render("%(levelname)s", &r), "ERROR");
    }

    #[test]
    fn every_key() {
        let r = record("hello");
        assert_eq!(
            render(
                "%(name)s|%(module)s|%(funcName)s|%(filename)s|%(pathname)s|%(thread)s|%(threadName)s|%(processName)s",
                &r
            ),
            "proxy::plugins|registry|registry|registry.rs|src/plugin/registry.rs|proxy-worker-0|proxy-worker-0|MainProcess"
        );
        let mut r = record("x");
        r.file = Some("src/plugin/mod.rs");
        r.module_path = Some("proxy::plugin");
        assert_eq!(render("%(module)s.%(funcName)s", &r), "plugin.plugin");
        assert_eq!(render("%(process)d", &r), std::process::id().to_string());
    }

    #[test]
    fn literals_percent_and_unknown_keys() {
        let r = record("msg");
        assert_eq!(render("100%% %(message)s", &r), "100% msg");
        assert_eq!(render("%(bogus)s %(message)s", &r), "%(bogus)s msg");
        assert_eq!(render("50% done %", &r), "50% done %");
        assert_eq!(render("%(message)", &r), "%(message)");
        assert_eq!(render("%(message)q", &r), "%(message)q");
        assert_eq!(render("%(message", &r), "%(message");
        assert_eq!(render("ünï %(message)s ✓", &r), "ünï msg ✓");
        assert_eq!(render("", &r), "");
    }

    #[test]
    fn message_carries_other_fields_except_for_the_access_log() {
        let mut r = record("upstream failed");
        r.fields = vec![
            ("code", Value::Str("dns_error".into())),
            ("host", Value::Str("a b".into())),
            ("bytes", Value::U64(12)),
            ("ok", Value::Bool(false)),
            ("client", Value::Text("127.0.0.1:5000".into())),
        ];
        assert_eq!(
            render("%(message)s", &r),
            "upstream failed code=dns_error host=\"a b\" bytes=12 ok=false client=127.0.0.1:5000"
        );
        r.target = ACCESS_TARGET;
        assert_eq!(render("%(message)s", &r), "upstream failed");
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        let mut r = record("GET /a\r\n2026-01-01 fake line\x1b[31m");
        r.fields = vec![("path", Value::Str("x\ny".into()))];
        assert_eq!(
            render("%(message)s", &r),
            "GET /a\\r\\n2026-01-01 fake line\\u{1b}[31m path=\"x\\ny\""
        );
    }

    #[test]
    fn json_lines() {
        let mut r = record("say \"hi\"\n");
        r.target = ACCESS_TARGET;
        r.fields = vec![
            ("client", Value::Text("127.0.0.1:5000".into())),
            ("status", Value::U64(200)),
            ("delta", Value::I64(-3)),
            ("ms", Value::F64(1.5)),
            ("nan", Value::F64(f64::NAN)),
            ("cached", Value::Bool(true)),
            ("level", Value::Str("x".into())),
        ];
        r.spans = Some("conn{id=1}".into());
        let mut out = String::new();
        render_json(&r, &mut out);
        assert!(out.starts_with(
            r#"{"ts":"2026-11-22T01:54:30.229Z","level":"INFO","target":"proxy::access","message":"say \"hi\"\n""#
        ), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["ms"], 1.5);
        assert_eq!(v["nan"], "NaN");
        assert_eq!(v["cached"], true);
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["field.level"], "x");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["span"], "conn{id=1}");
    }

    /// An in-memory writer for end-to-end checks through tracing.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, level: Level, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let log = LogConfig {
            level,
            file: None,
            format,
        };
        tracing::subscriber::with_default(subscriber(&log, buffer.clone()), emit);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn through_tracing_with_template_and_level_filter() {
        let out = capture(
            LogFormat::Template("[%(levelname)-.1s] %(module)s.%(funcName)s - %(message)s".into()),
            Level::INFO,
            || {
                tracing::debug!("hidden");
                tracing::info!(port = 8899_u16, "Listening");
                tracing::info!(target: "proxy::access", client = %"127.0.0.1:1", "127.0.0.1:1 - GET x");
                tracing::warn!(error = "boom", "failed");
            },
        );
        assert_eq!(
            out,
            "[I] logging.tests - Listening port=8899\n\
             [I] logging.tests - 127.0.0.1:1 - GET x\n\
             [W] logging.tests - failed error=boom\n"
        );
    }

    #[test]
    fn through_tracing_as_json() {
        let out = capture(LogFormat::Json, Level::DEBUG, || {
            let span = tracing::info_span!("conn", id = 7_u64);
            let _guard = span.enter();
            tracing::info!(target: "proxy::access", status = 200_u64, method = "GET", "line");
        });
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["target"], "proxy::access");
        assert_eq!(v["message"], "line");
        assert_eq!(v["status"], 200);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["span"], "conn{id=7}");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn log_file_is_appended_and_created() {
        let path = std::env::temp_dir().join(format!("proxy-log-test-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "old\n").unwrap();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        let log = LogConfig {
            level: Level::INFO,
            file: Some(path.clone()),
            format: LogFormat::Template("%(message)s".into()),
        };
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(file);
        tracing::subscriber::with_default(subscriber(&log, writer), || {
            tracing::info!("new");
        });
        drop(guard); // writes out the queued lines
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\nnew\n");
        let _ = std::fs::remove_file(&path);
    }
}
