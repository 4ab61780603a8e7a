//! Log lines: proxy.py's `%(key)s` templates or JSON, written by a `tracing` subscriber,
//! and the access log's fast path around it.
//!
//! `main` calls [`init`] once; the library only emits `tracing` events. A template is
//! parsed once into parts, and each event is first collected into a [`Record`] (plain
//! data, so the renderers are unit-tested without a subscriber), then rendered into the
//! fmt layer's per-event buffer, which reaches the writer in one `write_all`.
//!
//! Access-log lines (one per exchange, the hot path) skip `tracing` when [`init`] installed
//! the logger: the proxy hands an [`AccessEvent`] to [`AccessLog::write`], which renders
//! the same line into a reused per-thread buffer (no allocation per line) and appends it
//! to the [`LogWriter`]'s queue. Embedders with their own subscriber get `tracing` events.
//!
//! Template keys (Python `logging` names): `asctime` (`2026-11-22 01:54:30,229`, UTC),
//! `created`, `msecs`, `relativeCreated`, `process`, `processName`, `levelname`,
//! `levelno`, `name` (the target), `module` (source file stem), `funcName` (last
//! segment of the module path: Rust has no function names at run time), `filename`,
//! `pathname`, `lineno`, `thread`/`threadName` (thread name) and `message` (the message,
//! then ` key=value` for each other field). Python's flags, width and precision work
//! (`%(levelname)-.1s` → `I`). `%%` is `%`; an unknown key is refused at start-up
//! ([`check_template`]).
//! Control characters in messages are escaped, so one event is always one line.
//! Access-log events (target [`ACCESS_TARGET`]) print their preformatted message
//! alone in template mode; their fields show in JSON mode.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::CliError;
use crate::config::{LogConfig, LogFormat};

/// Target of the per-exchange access log; its message is already a proxy.py line.
pub const ACCESS_TARGET: &str = "proxy::access";

/// Installs the process-wide subscriber: level filter, line format, and writer
/// (`--log-file` opened for appending, created if missing; otherwise standard output),
/// and the access log's fast path ([`access_log`]).
///
/// # Errors
/// The template names an unknown key or the log file cannot be opened (exit 64), or a
/// subscriber is already installed, or the writer thread cannot start (exit 1).
pub fn init(log: &LogConfig) -> Result<LogGuard, CliError> {
    if let LogFormat::Template(template) = &log.format {
        check_template(template).map_err(CliError::usage)?;
    }
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
    let (writer, guard) = LogWriter::spawn(sink)
        .map_err(|e| CliError::runtime(format_args!("cannot start the log writer: {e}")))?;
    let format = LineFormat::new(&log.format);
    let access = AccessLog::new(format.clone(), writer.clone());
    tracing::subscriber::set_global_default(layered(log.level, format, writer))
        .map_err(|e| CliError::runtime(format_args!("cannot install the logger: {e}")))?;
    // Only the first `init` gets this far: the subscriber above can be set once.
    let _ = ACCESS_LOG.set(access);
    Ok(guard)
}

/// The access log [`init`] installed, if it did; `None` means access lines go out as
/// `tracing` events (an embedder's own subscriber, tests).
pub fn access_log() -> Option<&'static AccessLog> {
    ACCESS_LOG.get()
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Keeps the log writer thread alive; dropping it writes out every queued line and
/// stops the thread (lines logged after that are written directly). Hold it until
/// the process exits.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    shared: Arc<WriterShared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.has_lines.notify_one();
        self.shared.has_room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The subscriber `init` installs, writing to `writer` (tests pass an in-memory buffer).
pub fn subscriber<W>(log: &LogConfig, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    layered(log.level, LineFormat::new(&log.format), writer)
}

fn layered<W>(
    level: Level,
    format: LineFormat,
    writer: W,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(format)
        .with_writer(writer)
        // A failed write (disk full, closed stdout) drops the line; it must not turn
        // into an `eprintln!`, which panics when stderr is broken too.
        .log_internal_errors(false);
    // Other crates (hickory's per-query debug lines) log at INFO at most: `--log-level
    // DEBUG` is for the proxy's own decisions.
    let others = if level > Level::INFO {
        Level::INFO
    } else {
        level
    };
    let filter = Targets::new()
        .with_target("proxy", level)
        .with_default(others);
    tracing_subscriber::registry().with(filter).with(lines)
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
#[derive(Clone, Debug)]
pub struct LineFormat {
    kind: LineKind,
    started: Instant,
}

#[derive(Clone, Debug)]
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

    /// `%(relativeCreated)d`: milliseconds since the logger started (0 when unused).
    fn relative_ms(&self, template: &Template) -> f64 {
        if template.uses(Key::RelativeCreated) {
            self.started.elapsed().as_secs_f64() * 1e3
        } else {
            0.0
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
        let mut unnamed = String::new();
        let thread_name = thread_name(&thread, &mut unnamed);
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
            LineKind::Template(template) => {
                template.render(&record, self.relative_ms(template), &mut line)
            }
            LineKind::Json => {
                record.spans = span_context(ctx);
                render_json(&record, &mut line);
            }
        }
        line.push('\n');
        writer.write_str(&line)
    }
}

/// `%(thread)s`: the thread's name, or its id (`ThreadId(3)`) written into `unnamed`.
fn thread_name<'t>(thread: &'t std::thread::Thread, unnamed: &'t mut String) -> &'t str {
    match thread.name() {
        Some(name) => name,
        None => {
            let _ = write!(unnamed, "{:?}", thread.id());
            unnamed
        }
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

// === AccessLog: access lines without tracing ===

/// Where an access line is logged from (`%(module)s`, `%(funcName)s`, `%(lineno)d`…),
/// as `tracing` metadata would tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Callsite {
    /// `file!()`.
    pub file: &'static str,
    /// `line!()`.
    pub line: u32,
    /// `module_path!()`.
    pub module_path: &'static str,
}

impl Callsite {
    /// `==`, trying the pointers first (the same `const` each time, in practice).
    fn same(&self, other: &Callsite) -> bool {
        self.line == other.line
            && (std::ptr::eq(self.file, other.file) || self.file == other.file)
            && (std::ptr::eq(self.module_path, other.module_path)
                || self.module_path == other.module_path)
    }
}

/// One access-log line, as the proxy describes it; [`AccessLog`] renders it at INFO
/// level with target [`ACCESS_TARGET`], as the `tracing` event would be.
pub trait AccessEvent {
    /// Appends the message (proxy.py's access line) to `out`.
    fn message(&self, out: &mut String);
    /// Adds the event's fields, in order, for JSON lines.
    fn fields(&self, fields: &mut JsonFields<'_>);
}

/// The access log's fast path: the installed line format and writer.
#[derive(Debug)]
pub struct AccessLog {
    format: LineFormat,
    writer: LogWriter,
    /// The template with everything a callsite fixes (pid, level, module, line…)
    /// rendered once, for the first callsite seen (the proxy has one), and whether
    /// [`Template::render_direct`] can render it.
    fixed: OnceLock<(Callsite, Template, bool)>,
}

/// Per-thread buffers for access lines, reused so that a line allocates nothing.
struct Scratch {
    message: String,
    line: String,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { message: String::new(), line: String::new() })
    };
}

impl AccessLog {
    /// An access log writing lines in `format` to `writer`.
    pub fn new(format: LineFormat, writer: LogWriter) -> AccessLog {
        AccessLog {
            format,
            writer,
            fixed: OnceLock::new(),
        }
    }

    /// Renders `event`'s line and queues it for the writer thread.
    pub fn write<E: AccessEvent + ?Sized>(&self, callsite: &Callsite, event: &E) {
        let time = SystemTime::now();
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let Scratch { message, line } = &mut *scratch;
                line.clear();
                self.render(callsite, event, time, message, line);
                self.writer.append(line.as_bytes());
                if line.capacity() > KEEP_CAPACITY {
                    // One huge line (a plugin's label?) should not pin its memory.
                    line.shrink_to(KEEP_CAPACITY);
                    message.shrink_to(KEEP_CAPACITY);
                }
            }
            // Only if rendering logged an access line itself; never in practice.
            Err(_) => {
                let mut line = String::new();
                self.render(callsite, event, time, &mut String::new(), &mut line);
                self.writer.append(line.as_bytes());
            }
        });
    }

    /// Appends the line for `event` at `time` (with its newline) to `out`. `message` is
    /// a scratch buffer for the message.
    pub fn render<E: AccessEvent + ?Sized>(
        &self,
        callsite: &Callsite,
        event: &E,
        time: SystemTime,
        message: &mut String,
        out: &mut String,
    ) {
        if self.render_fixed(callsite, event, time, out) {
            out.push('\n');
            return;
        }
        match &self.format.kind {
            LineKind::Template(general) => {
                message.clear();
                event.message(message);
                let mut record = Record {
                    time,
                    level: Level::INFO,
                    target: ACCESS_TARGET,
                    module_path: Some(callsite.module_path),
                    file: Some(callsite.file),
                    line: Some(callsite.line),
                    thread: "",
                    // Lent to the record and taken back: the buffer keeps its capacity.
                    message: std::mem::take(message),
                    fields: Vec::new(),
                    spans: None,
                };
                let template = match self.fixed.get_or_init(|| {
                    let fixed = general.fix(&record);
                    let direct = fixed.is_direct();
                    (*callsite, fixed, direct)
                }) {
                    (site, fixed, _) if site.same(callsite) => fixed,
                    _ => general,
                };
                let thread = template.uses(Key::Thread).then(std::thread::current);
                let mut unnamed = String::new();
                if let Some(thread) = &thread {
                    record.thread = thread_name(thread, &mut unnamed);
                }
                template.render(&record, self.format.relative_ms(template), out);
                *message = std::mem::take(&mut record.message);
            }
            LineKind::Json => {
                message.clear();
                event.message(message);
                // No spans: the proxy opens none around its access events.
                push_json_head(time, Level::INFO, ACCESS_TARGET, message, out);
                event.fields(&mut JsonFields { out: &mut *out });
                out.push('}');
            }
        }
        out.push('\n');
    }

    /// Renders `event` with the fixed template (set only for a template format)
    /// straight into `out` when it can (see [`Template::render_direct`]); `false` when
    /// it cannot, with `out` untouched.
    fn render_fixed<E: AccessEvent + ?Sized>(
        &self,
        callsite: &Callsite,
        event: &E,
        time: SystemTime,
        out: &mut String,
    ) -> bool {
        match self.fixed.get() {
            Some((site, fixed, true)) if site.same(callsite) => {
                fixed.render_direct(event, time, out);
                true
            }
            _ => false,
        }
    }
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
    /// Whether the value depends only on the event's callsite and the process.
    fn is_fixed(self) -> bool {
        !matches!(
            self,
            Key::Asctime
                | Key::Created
                | Key::Msecs
                | Key::RelativeCreated
                | Key::Thread
                | Key::Message
        )
    }

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
    /// `asctime`, written straight into the line.
    Time(SystemTime),
    Int(i64),
    Float(f64),
}

/// Every key a template may name, for error messages.
const KEY_NAMES: &str = "asctime, created, msecs, relativeCreated, process, processName, \
levelname, levelno, name, module, funcName, filename, pathname, lineno, thread, threadName, message";

/// Checks a `--log-format` template: every `%(` must open a known key with a
/// conversion (`%(message)s`), and the message must be one of them. A typo would
/// otherwise print itself in place of every log line, the access log's included.
///
/// # Errors
/// The first field that does not parse, and the known keys.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(pos) = rest.find('%') {
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("%%") {
            rest = after;
            continue;
        }
        if rest.starts_with("%(") && parse_field(rest).is_none() {
            let end = rest.find(')').map_or(rest.len(), |close| {
                rest[close + 1..]
                    .char_indices()
                    .nth(1)
                    .map_or(rest.len(), |(i, _)| close + 1 + i)
            });
            let field: String = rest[..end].chars().take(40).collect();
            return Err(format!(
                "--log-format: '{field}' is not a known key with a conversion such as `s` \
                 (keys: {KEY_NAMES})"
            ));
        }
        rest = &rest[1..];
    }
    // A template without the message (a typo such as `--log-format 'json '`) would
    // write the same text for every line, the access log's included.
    if !Template::parse(template).uses(Key::Message) {
        return Err(format!(
            "--log-format: '{template}' has no %(message)s: every line would lose what happened"
        ));
    }
    Ok(())
}

impl Template {
    /// Parses `template`; anything that is not a well-formed `%(known)spec` stays literal
    /// (`init` refuses such a template first: see [`check_template`]).
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

    /// This template with the keys that depend only on where an event comes from
    /// (`record`'s level, target, file, line…) rendered into literals.
    fn fix(&self, record: &Record<'_>) -> Template {
        let mut parts: Vec<Part> = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            let text = match part {
                Part::Field { key, spec } if key.is_fixed() => {
                    let mut text = String::new();
                    apply_spec(spec, evaluate(*key, record, 0.0), &mut text);
                    text
                }
                Part::Literal(text) => text.clone(),
                field => {
                    parts.push(field.clone());
                    continue;
                }
            };
            match parts.last_mut() {
                Some(Part::Literal(prev)) => prev.push_str(&text),
                _ => parts.push(Part::Literal(text)),
            }
        }
        Template { parts }
    }

    /// Whether [`Template::render_direct`] renders this template: its only fields are
    /// a plain `%(asctime)s` and `%(message)s` (proxy.py's format, once fixed).
    fn is_direct(&self) -> bool {
        self.parts.iter().all(|part| match part {
            Part::Literal(_) => true,
            Part::Field { key, spec } => {
                matches!(key, Key::Asctime | Key::Message)
                    && *spec
                        == (Spec {
                            conv: 's',
                            ..Spec::default()
                        })
            }
        })
    }

    /// An access line, its message written straight into `out` (no record, no copy),
    /// for a template that [`Template::is_direct`]. Control characters in the message
    /// are escaped as [`escape_controls`] does.
    fn render_direct<E: AccessEvent + ?Sized>(
        &self,
        event: &E,
        time: SystemTime,
        out: &mut String,
    ) {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field {
                    key: Key::Asctime, ..
                } => push_asctime(time, out),
                Part::Field { .. } => {
                    let start = out.len();
                    event.message(out);
                    if let std::borrow::Cow::Owned(escaped) = escape_controls(&out[start..]) {
                        out.truncate(start);
                        out.push_str(&escaped);
                    }
                }
            }
        }
    }

    /// Whether the template shows `key` (so costly values are computed only when used).
    fn uses(&self, key: Key) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::Field { key: k, .. } if *k == key))
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
        spec.precision = Some(precision?.min(1 << 16));
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
        Key::Asctime => Rendered::Time(record.time),
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
        Key::Process => Rendered::Int(i64::from(process_id())),
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
    if !may_have_controls(s.as_bytes()) || !s.chars().any(char::is_control) {
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

/// Whether `bytes` may hold a control character (`char::is_control`: C0 below 0x20, DEL,
/// and C1, U+0080..U+009F, encoded `C2 80`..`C2 9F`). Eight bytes at a time, since this
/// runs over every access line. Looking at each byte's low seven bits, C0 and DEL are
/// 0x00..0x1F and 0x7F, and a C1 character's second byte is 0x00..0x1F too: a byte whose
/// low seven bits plus one, wrapped to seven bits, is at most 0x20 is a suspect (a few
/// other non-ASCII bytes are too; the caller checks suspects exactly).
fn may_have_controls(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = ONES * 0x7f;
    const HIGH: u64 = ONES * 0x80;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // Per byte: (low7 + 1) & 0x7f, no carries between bytes.
        let z = ((x & LOW7) + ONES) & LOW7;
        // Some byte of z is below 0x21 (exact as a yes/no for bytes <= 0x80).
        if z.wrapping_sub(ONES * 0x21) & !z & HIGH != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| ((b & 0x7f) + 1) & 0x7f <= 0x20)
}

/// Source file stem: `src/proxy/tunnel.rs` → `tunnel`; `src/proxy/forward/mod.rs` →
/// `forward`; `src/plugin/mod.rs` → `plugin`.
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
/// The value is written straight into `out`, then trimmed and padded in place.
fn apply_spec(spec: &Spec, value: Rendered<'_>, out: &mut String) {
    let start = out.len();
    match (value, spec.conv) {
        (Rendered::Str(s), _) => {
            out.push_str(&s);
            truncate_chars(out, start, spec.precision);
        }
        (Rendered::Time(t), _) => {
            push_asctime(t, out);
            truncate_chars(out, start, spec.precision);
        }
        (Rendered::Int(n), 'f' | 'F' | 'e' | 'E' | 'g' | 'G') => format_float(spec, n as f64, out),
        (Rendered::Float(x), 'f' | 'F' | 'e' | 'E' | 'g' | 'G') => format_float(spec, x, out),
        (Rendered::Int(n), conv) => format_int(spec, n, conv, out),
        (Rendered::Float(x), 's' | 'r' | 'a') => {
            let _ = write!(out, "{x}");
        }
        (Rendered::Float(x), conv) => format_int(spec, x.trunc() as i64, conv, out),
    }
    if spec.width == 0 {
        return;
    }
    let len = out[start..].chars().count();
    let pad = spec.width.saturating_sub(len);
    let numeric = !matches!(spec.conv, 's' | 'r' | 'a' | 'c');
    if pad == 0 {
    } else if spec.left {
        push_n(out, ' ', pad);
    } else if spec.zero && numeric {
        // Zeros go after the sign.
        let at = start + usize::from(out[start..].starts_with(['-', '+', ' ']));
        insert_n(out, at, '0', pad);
    } else {
        insert_n(out, start, ' ', pad);
    }
}

/// Keeps at most `precision` characters of `out[start..]`.
fn truncate_chars(out: &mut String, start: usize, precision: Option<usize>) {
    if let Some(p) = precision {
        if let Some((at, _)) = out[start..].char_indices().nth(p) {
            out.truncate(start + at);
        }
    }
}

fn push_n(out: &mut String, c: char, n: usize) {
    out.extend(std::iter::repeat(c).take(n));
}

/// Inserts `n` copies of `fill` (`' '` or `'0'`) at byte offset `at`, in place.
fn insert_n(out: &mut String, at: usize, fill: char, n: usize) {
    const SPACES: &str = "                                ";
    const ZEROS: &str = "00000000000000000000000000000000";
    let chunk = if fill == '0' { ZEROS } else { SPACES };
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        out.insert_str(at, &chunk[..k]);
        left -= k;
    }
}

fn sign_prefix(spec: &Spec, negative: bool) -> &'static str {
    match (negative, spec.plus, spec.space) {
        (true, _, _) => "",
        (false, true, _) => "+",
        (false, false, true) => " ",
        _ => "",
    }
}

fn format_int(spec: &Spec, n: i64, conv: char, out: &mut String) {
    out.push_str(sign_prefix(spec, n < 0));
    let _ = match conv {
        'x' => write!(out, "{n:x}"),
        'X' => write!(out, "{n:X}"),
        'o' => write!(out, "{n:o}"),
        _ => {
            out.push_str(itoa::Buffer::new().format(n));
            Ok(())
        }
    };
}

fn format_float(spec: &Spec, x: f64, out: &mut String) {
    out.push_str(sign_prefix(spec, x < 0.0));
    let precision = spec.precision.unwrap_or(6);
    let _ = match spec.conv {
        'e' => write!(out, "{x:.precision$e}"),
        'E' => write!(out, "{x:.precision$E}"),
        'g' | 'G' => write!(out, "{x}"),
        _ => write!(out, "{x:.precision$}"),
    };
}

/// This process's id, read once (`getpid` is a system call).
fn process_id() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

// === JSON lines ===

/// Appends `record` as one JSON object: `ts`, `level`, `target`, `message`, `span` (when
/// inside spans), then every field (numbers and booleans as JSON numbers and booleans).
pub fn render_json(record: &Record<'_>, out: &mut String) {
    push_json_head(
        record.time,
        record.level,
        record.target,
        &record.message,
        out,
    );
    if let Some(spans) = &record.spans {
        out.push_str(",\"span\":");
        push_json_str(spans, out);
    }
    let mut fields = JsonFields { out };
    for (name, value) in &record.fields {
        match value {
            Value::Str(s) | Value::Text(s) => fields.str(name, s),
            Value::I64(n) => fields.i64(name, *n),
            Value::U64(n) => fields.u64(name, *n),
            Value::F64(x) => fields.f64(name, *x),
            Value::Bool(b) => fields.bool(name, *b),
        }
    }
    out.push('}');
}

/// `{"ts":…,"level":…,"target":…,"message":…` (the object is left open).
fn push_json_head(time: SystemTime, level: Level, target: &str, message: &str, out: &mut String) {
    out.push_str("{\"ts\":\"");
    push_rfc3339(time, out);
    out.push_str("\",\"level\":");
    push_json_str(levelname(level), out);
    out.push_str(",\"target\":");
    push_json_str(target, out);
    out.push_str(",\"message\":");
    push_json_str(message, out);
}

/// Appends `,"name":value` members to an open JSON object: an event's fields.
#[derive(Debug)]
pub struct JsonFields<'a> {
    out: &'a mut String,
}

impl JsonFields<'_> {
    fn name(&mut self, name: &str) {
        self.out.push(',');
        // Never let a field shadow one of ours: `level` becomes `field.level`.
        let reserved = matches!(name.as_bytes().first(), Some(b't' | b'l' | b'm' | b's'))
            && matches!(name, "ts" | "level" | "target" | "message" | "span");
        if reserved {
            self.out.push_str("\"field.");
            self.out.push_str(name);
            self.out.push('"');
        } else if name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            // Field names are identifiers (`error.code`): nothing to escape, usually.
            self.out.push('"');
            self.out.push_str(name);
            self.out.push('"');
        } else {
            push_json_str(name, self.out);
        }
        self.out.push(':');
    }

    /// A string field.
    pub fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        push_json_str(value, self.out);
    }

    /// A socket address as a string (`127.0.0.1:5000`, `[::1]:5000`).
    pub fn addr(&mut self, name: &str, value: SocketAddr) {
        self.name(name);
        self.out.push('"');
        push_socket_addr(value, self.out);
        self.out.push('"');
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    /// A signed integer field.
    pub fn i64(&mut self, name: &str, value: i64) {
        self.name(name);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    /// A float field: the shortest form that reads back the same; NaN and infinities,
    /// which JSON has no numbers for, as strings.
    pub fn f64(&mut self, name: &str, value: f64) {
        self.name(name);
        if value.is_finite() {
            // serde_json's own float printing, written in place.
            let _ = serde_json::to_writer(StrWriter(self.out), &value);
        } else {
            let _ = write!(self.out, "\"{value}\"");
        }
    }

    /// A boolean field.
    pub fn bool(&mut self, name: &str, value: bool) {
        self.name(name);
        self.out.push_str(if value { "true" } else { "false" });
    }
}

/// `io::Write` into a `String`, for serde_json's number printing (ASCII only).
struct StrWriter<'a>(&'a mut String);

impl io::Write for StrWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text =
            std::str::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.0.push_str(text);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `s` as a JSON string, escaped exactly as serde_json does: `"`, `\` and the C0
/// controls (short forms where JSON has them, else `\u00XX`); everything else as is.
fn push_json_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    // `bytes[plain..i]` needs no escaping and is not written yet.
    let (mut plain, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            if !needs_json_escape(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]))) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        // `b` is ASCII, so both `i` and `i + 1` are character boundaries.
        out.push_str(&s[plain..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        i += 1;
        plain = i;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// Whether one of the eight bytes in `x` is below 0x20, `"` or `\` (exact as a yes/no).
fn needs_json_escape(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    let has_below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH != 0;
    has_below(x, 0x20)
        || has_below(x ^ (ONES * u64::from(b'"')), 1)
        || has_below(x ^ (ONES * u64::from(b'\\')), 1)
}

/// `ip:port` as `SocketAddr`'s `Display` writes it (`[v6]:port`), without the formatter
/// for IPv4 (the usual case, and `Ipv4Addr`'s `Display` is slow).
pub fn push_socket_addr(addr: SocketAddr, out: &mut String) {
    match addr {
        SocketAddr::V4(v4) => {
            push_ip(IpAddr::V4(*v4.ip()), out);
            out.push(':');
            out.push_str(itoa::Buffer::new().format(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// An IP address as its `Display` writes it (IPv6 without brackets). Each thread keeps
/// the text of the last address it wrote: a keep-alive client's requests, or a busy
/// client's connections, reuse it.
pub fn push_ip(ip: IpAddr, out: &mut String) {
    thread_local! {
        static LAST: RefCell<(Option<IpAddr>, String)> = const { RefCell::new((None, String::new())) };
    }
    LAST.with(|last| match last.try_borrow_mut() {
        Ok(mut last) => {
            let (cached, text) = &mut *last;
            if *cached != Some(ip) {
                text.clear();
                write_ip(ip, text);
                *cached = Some(ip);
            }
            out.push_str(text);
        }
        Err(_) => write_ip(ip, out),
    });
}

fn write_ip(ip: IpAddr, out: &mut String) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(buf.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

// === LogWriter: one thread writes every line ===

/// Bytes of lines that may wait for the writer thread; past that, a logging thread waits
/// for room (backpressure: a slow disk slows the proxy down, no line is dropped).
const QUEUE_LIMIT: usize = 1 << 20;

/// A buffer that grew past this (a burst) is shrunk back once written. Under a steady
/// load the two batch buffers stay below it and are reused without reallocating.
const KEEP_CAPACITY: usize = 256 << 10;

/// After a write, the writer thread lets lines gather this long before the next one, so
/// a busy proxy costs one `write(2)` and one wake-up per batch instead of per line (with
/// 1 ms, the writer thread still used about 3 µs of CPU per line at 25k lines/s; with
/// 10 ms, under 0.5 µs); an idle proxy's line is written at once. A full queue or
/// shutdown cuts the wait short.
const GATHER: Duration = Duration::from_millis(10);

/// Where log lines go: a bounded in-memory queue, emptied by one writer thread.
///
/// Logging threads append whole lines under a mutex (a `memcpy`; no allocation once the
/// queue's buffer has grown) and wake the writer only when it sleeps. The writer swaps
/// the queue's buffer with its own and writes the batch with one `write_all`, then
/// flushes. Lines from all threads keep their order of arrival; each line reaches the
/// sink whole, in one piece.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<WriterShared>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

struct WriterShared {
    queue: Mutex<Queue>,
    /// The writer thread waits here for lines.
    has_lines: Condvar,
    /// Logging threads wait here for room when the queue is full.
    has_room: Condvar,
    /// The writer thread holds it while writing a batch; after shutdown, lines are
    /// written through it directly.
    sink: Mutex<Box<dyn io::Write + Send>>,
    /// [`QUEUE_LIMIT`] (smaller in tests).
    limit: usize,
}

struct Queue {
    lines: Vec<u8>,
    /// The writer thread sleeps on `has_lines` (a notification costs a syscall: only
    /// then is one sent).
    writer_asleep: bool,
    /// Threads sleeping on `has_room`.
    waiting_for_room: usize,
    /// The guard was dropped: the writer thread writes what is queued and ends.
    closed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bytes behind; keep logging.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogWriter {
    /// Starts the writer thread (`proxy-log-writer`) over `sink`.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn spawn(sink: Box<dyn io::Write + Send>) -> io::Result<(LogWriter, LogGuard)> {
        LogWriter::spawn_with_limit(sink, QUEUE_LIMIT)
    }

    fn spawn_with_limit(
        sink: Box<dyn io::Write + Send>,
        limit: usize,
    ) -> io::Result<(LogWriter, LogGuard)> {
        let shared = Arc::new(WriterShared {
            queue: Mutex::new(Queue {
                lines: Vec::new(),
                writer_asleep: false,
                waiting_for_room: 0,
                closed: false,
            }),
            has_lines: Condvar::new(),
            has_room: Condvar::new(),
            sink: Mutex::new(sink),
            limit,
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("proxy-log-writer".into())
                .spawn(move || {
                    yield_to_workers();
                    write_batches(&shared)
                })?
        };
        let guard = LogGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((LogWriter { shared }, guard))
    }

    /// Queues `line` (one or more whole lines). Waits while the queue is full; once the
    /// writer has stopped, writes it directly.
    pub fn append(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut queue = lock(&shared.queue);
        loop {
            if queue.closed {
                drop(queue);
                let mut sink = lock(&shared.sink);
                let _ = sink.write_all(line);
                let _ = sink.flush();
                return;
            }
            // A line longer than the limit still goes, alone.
            if queue.lines.is_empty() || queue.lines.len() + line.len() <= shared.limit {
                break;
            }
            queue.waiting_for_room += 1;
            // The writer may be letting lines gather: it is needed now.
            shared.has_lines.notify_one();
            queue = shared
                .has_room
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.waiting_for_room -= 1;
        }
        queue.lines.extend_from_slice(line);
        let wake = std::mem::take(&mut queue.writer_asleep);
        // Notified after unlocking, or the writer would wake only to wait for the lock.
        drop(queue);
        if wake {
            shared.has_lines.notify_one();
        }
    }
}

/// The writer thread's niceness: the lowest priority.
const WRITER_NICE: i32 = 19;

/// Lowers the calling thread (the writer) to [`WRITER_NICE`], so that its wake-ups do
/// not preempt a busy worker: at the default priority each batch write (about 30 µs,
/// a few hundred times a second under load) interrupts whichever worker runs on that
/// core, and a saturated worker needs long to work off a stall. The writer needs little
/// CPU (about 0.05 µs per line); if it ever fell behind, the full queue would make the
/// workers wait for it, so no line is dropped. A failure (a sandbox that forbids it)
/// leaves the priority as it was.
///
/// Measured with one pinned worker (wrk, c=50, access log to a file), over 16
/// interleaved rounds: median p99 0.86 ms at 19 against 1.05 ms at the default
/// priority (0.77–0.89 ms without the access log). A single round's p99 moves between
/// 0.7 and 2.2 ms on this machine, so that difference is suggestive, not established.
fn yield_to_workers() {
    // Not logged when refused: this thread is the log's writer.
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), WRITER_NICE);
}

/// The writer thread: swap the queue's buffer out, write it, repeat; ends once closed
/// and empty.
fn write_batches(shared: &WriterShared) {
    let mut batch: Vec<u8> = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let mut queue = lock(&shared.queue);
        while queue.lines.is_empty() && !queue.closed {
            queue.writer_asleep = true;
            queue = shared
                .has_lines
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(since) = last_write.map(|t| t.elapsed()).filter(|&d| d < GATHER) {
            // Lines keep arriving: let them gather (loggers wake nobody meanwhile).
            queue = shared
                .has_lines
                .wait_timeout_while(queue, GATHER - since, |q| {
                    !q.closed && q.waiting_for_room == 0
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if queue.lines.is_empty() {
            // Closed, and everything is written.
            return;
        }
        std::mem::swap(&mut queue.lines, &mut batch);
        let room_wanted = queue.waiting_for_room > 0;
        // Take the sink before letting go of the queue, so a line written directly after
        // shutdown cannot overtake this batch.
        let mut sink = lock(&shared.sink);
        drop(queue);
        if room_wanted {
            shared.has_room.notify_all();
        }
        // A failed write (disk full, closed stdout) loses this batch; there is nowhere
        // to report it that would not fail the same way.
        let _ = sink.write_all(&batch);
        let _ = sink.flush();
        drop(sink);
        last_write = Some(Instant::now());
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch.shrink_to(KEEP_CAPACITY);
        }
    }
}

/// The fmt layer writes each event's line with one `write_all`, so lines stay whole.
impl io::Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;
    fn make_writer(&'a self) -> &'a LogWriter {
        self
    }
}

// === UTC time ===

/// Python logging's `asctime`: `2026-11-22 01:54:30,229` (here in UTC).
pub fn push_asctime(time: SystemTime, out: &mut String) {
    push_utc(time, ' ', ',', out);
}

/// RFC 3339 in UTC with milliseconds: `2026-11-22T01:54:30.229Z`.
pub fn push_rfc3339(time: SystemTime, out: &mut String) {
    push_utc(time, 'T', '.', out);
    out.push('Z');
}

/// `YYYY-MM-DD<sep>hh:mm:ss<frac>mmm`. Lines come many to the second: each thread keeps
/// the text of the last second it formatted and only adds the milliseconds.
fn push_utc(time: SystemTime, sep: char, frac: char, out: &mut String) {
    thread_local! {
        /// (second since the epoch, separator, `YYYY-MM-DD<sep>hh:mm:ss`).
        static SECOND: RefCell<(u64, char, String)> = const { RefCell::new((u64::MAX, ' ', String::new())) };
    }
    // Times before 1970 do not happen on a running proxy; clamp rather than fail.
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cache| match cache.try_borrow_mut() {
        Ok(mut cache) => {
            let (cached, cached_sep, text) = &mut *cache;
            if *cached != secs || *cached_sep != sep {
                text.clear();
                push_second(secs, sep, text);
                (*cached, *cached_sep) = (secs, sep);
            }
            out.push_str(text);
        }
        Err(_) => push_second(secs, sep, out),
    });
    let ms = since.subsec_millis();
    out.push(frac);
    out.push(char::from(b'0' + (ms / 100) as u8));
    push_digits(ms % 100, out);
}

/// `YYYY-MM-DD<sep>hh:mm:ss` (UTC) for `secs` since the epoch, digit by digit; the
/// calendar is the `time` crate's. (Once a second per thread: see [`push_utc`].)
fn push_second(secs: u64, sep: char, out: &mut String) {
    let Some(at) = i64::try_from(secs)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
    else {
        // Past the year 9999: no calendar date to show.
        let _ = write!(out, "@{secs}");
        return;
    };
    // 1970 to 9999: the epoch is the earliest, and the crate's dates end there.
    let year = at.year().unsigned_abs();
    push_digits(year / 100, out);
    push_digits(year % 100, out);
    let fields = [
        ('-', u32::from(u8::from(at.month()))),
        ('-', u32::from(at.day())),
        (sep, u32::from(at.hour())),
        (':', u32::from(at.minute())),
        (':', u32::from(at.second())),
    ];
    for (lead, n) in fields {
        out.push(lead);
        push_digits(n, out);
    }
}

/// Two digits of `n` (< 100).
fn push_digits(n: u32, out: &mut String) {
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// Counts this thread's allocations, so tests can check a path allocates nothing.
#[cfg(test)]
pub(crate) mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    fn count() {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    #[expect(
        unsafe_code,
        reason = "a GlobalAlloc is unsafe by definition; this one only counts, in test builds"
    )]
    // SAFETY: every call is passed on to `System` with the caller's own arguments.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations (and reallocations) made by this thread so far.
    pub(crate) fn allocations() -> u64 {
        COUNT.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn templates_with_unknown_keys_are_refused() {
        for good in [
            crate::config::DEFAULT_LOG_FORMAT,
            "%(message)s",
            "100%% %(levelname)-8s %(lineno)05d %(message).20s",
            "50% done %(message)s", // a lone % is literal
        ] {
            assert_eq!(check_template(good), Ok(()), "{good}");
        }
        // No message: every line would be the same text.
        for bad in ["", "json ", "{message}", "%s %d", "%(levelname)s"] {
            let err = check_template(bad).unwrap_err();
            assert!(err.contains("has no %(message)s"), "{bad}: {err}");
        }
        for (bad, named) in [
            ("%(mesage)s", "'%(mesage)s'"),
            ("%(message)", "'%(message)'"),
            ("x %(message", "'%(message'"),
            ("%(levelname)q - %(message)s", "'%(levelname)q'"),
            // A precision too large to hold is refused, not taken for 0.
            ("%(message).99999999999999999999999s", "'%(message).'"),
        ] {
            let err = check_template(bad).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
            assert!(err.contains("funcName"), "lists the keys: {err}");
        }
    }

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

    /// Known dates (leap days, a century that is not a leap year) and the second
    /// cache: consecutive seconds across midnight, a new year and a leap day.
    #[test]
    fn utc_timestamps_know_the_calendar() {
        let utc = |secs: u64, ms: u64| {
            let mut out = String::new();
            push_rfc3339(
                UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms),
                &mut out,
            );
            out
        };
        let day = 86_400;
        assert_eq!(utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(11_016 * day, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(utc(11_017 * day - 1, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(utc(11_017 * day, 0), "2000-03-01T00:00:00.000Z");
        assert_eq!(utc(19_782 * day + 3_723, 40), "2024-02-29T01:02:03.040Z");
        assert_eq!(utc(20_819 * day - 1, 0), "2026-12-31T23:59:59.000Z");
        assert_eq!(utc(20_819 * day, 0), "2027-01-01T00:00:00.000Z");
        assert_eq!(utc(47_540 * day, 0), "2100-02-28T00:00:00.000Z");
        assert_eq!(utc(47_541 * day, 0), "2100-03-01T00:00:00.000Z"); // not a leap year
        let mut asctime = String::new();
        push_asctime(
            UNIX_EPOCH + Duration::from_millis(20_779 * day * 1000 + 229),
            &mut asctime,
        );
        assert_eq!(asctime, "2026-11-22 00:00:00,229");
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
        let (writer, guard) = LogWriter::spawn(Box::new(file)).unwrap();
        tracing::subscriber::with_default(subscriber(&log, writer), || {
            tracing::info!("new");
        });
        drop(guard); // writes out the queued lines
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\nnew\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn padding_is_done_in_place() {
        let r = record("m");
        assert_eq!(render("%(lineno)+05d|%(lineno)+d|% d", &r), "+0089|+89|% d");
        assert_eq!(
            render("[%(levelname)8.3s][%(levelname)-6.2s]", &r),
            "[     INF][IN    ]"
        );
        assert_eq!(
            render("%(asctime).10s|%(asctime)25s", &r),
            "2026-11-22|  2026-11-22 01:54:30,229"
        );
        assert_eq!(
            render("%(levelno)x %(levelno)#o %(levelno)4X", &r),
            "14 24   14"
        );
        assert_eq!(
            render("%(lineno)08.2f|%(created)d", &r),
            "00089.00|1795312470"
        );
        assert_eq!(render(&format!("%(message){}s", 70), &r).len(), 70);
        assert_eq!(render("ü%(message)-3sü", &r), "üm  ü");
    }

    #[test]
    fn a_fixed_template_renders_the_same() {
        let mut r = record("hello\nthere");
        r.target = ACCESS_TARGET;
        for template in [
            crate::config::DEFAULT_LOG_FORMAT,
            "%(message)s",
            "%(name)s %(levelname)s %(levelno)03d %(module)s.%(funcName)s %(filename)s %(pathname)s:%(lineno)d %(process)d %(processName)s",
            "%(asctime)s %(created)f %(msecs)d %(relativeCreated)d %(thread)s %(threadName)s %%",
            "",
        ] {
            let general = Template::parse(template);
            let fixed = general.fix(&r);
            let (mut a, mut b) = (String::new(), String::new());
            general.render(&r, 1500.0, &mut a);
            fixed.render(&r, 1500.0, &mut b);
            assert_eq!(a, b, "{template}");
        }
        // The default template keeps only the time and the message as fields.
        let fixed = Template::parse(crate::config::DEFAULT_LOG_FORMAT).fix(&r);
        let fields = fixed
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Field { .. }))
            .count();
        assert_eq!(fields, 2, "{fixed:?}");
        // ... so access lines with it skip the record (`render_direct`), as they do with
        // any template whose other fields the callsite fixes; not with a timing field.
        assert!(fixed.is_direct());
        for (template, direct) in [
            (
                "%(levelname)s %(module)s.%(funcName)s:%(lineno)d - %(message)s",
                true,
            ),
            ("%(asctime)s %(message)s", true),
            ("%(asctime)s %(msecs)d %(message)s", false),
            ("%(message)-9s", false),
            ("%(message).5s", false),
            ("%(thread)s %(message)s", false),
        ] {
            assert_eq!(
                Template::parse(template).fix(&r).is_direct(),
                direct,
                "{template}"
            );
        }
    }

    #[test]
    fn json_strings_are_escaped_as_serde_json_does() {
        let mut samples: Vec<String> = (0u32..0x100)
            .filter_map(char::from_u32)
            .map(String::from)
            .collect();
        samples.extend(
            [
                "",
                "plain",
                "a\"b\\c",
                "\u{85}\u{2028}\u{1F600}é",
                "tab\there\r\n\u{7f}\u{1b}[31m",
            ]
            .map(String::from),
        );
        // Every ASCII byte at every offset of a string long enough for the 8-byte scan.
        for b in 0u8..0x80 {
            for at in 0..17 {
                samples.push("a".repeat(at) + &char::from(b).to_string() + &"é".repeat(9 - at / 2));
            }
        }
        for sample in samples {
            let mut ours = String::new();
            push_json_str(&sample, &mut ours);
            assert_eq!(ours, serde_json::to_string(&sample).unwrap(), "{sample:?}");
        }
    }

    #[test]
    fn json_numbers_match_serde_json() {
        for x in [0.0, 1.5, 0.1, 1e-7, 123456.789, 1e300, -2.25] {
            let mut out = String::new();
            JsonFields { out: &mut out }.f64("ms", x);
            assert_eq!(out, format!(",\"ms\":{}", serde_json::Value::from(x)));
        }
        let mut out = String::new();
        let mut f = JsonFields { out: &mut out };
        f.u64("a", u64::MAX);
        f.i64("b", i64::MIN);
        f.f64("c", f64::INFINITY);
        f.bool("d", false);
        f.str("ts", "x");
        f.addr("e", "[::1]:80".parse().unwrap());
        f.addr("f", "10.0.0.255:8899".parse().unwrap());
        assert_eq!(
            out,
            r#","a":18446744073709551615,"b":-9223372036854775808,"c":"inf","d":false,"field.ts":"x","e":"[::1]:80","f":"10.0.0.255:8899""#
        );
    }

    #[test]
    fn the_control_scan_misses_no_control_character() {
        let controls = (0u32..0x800)
            .filter_map(char::from_u32)
            .filter(|c| c.is_control());
        for c in controls {
            for at in 0..17 {
                let text: String = "a".repeat(at) + &c.to_string() + &"b".repeat(17 - at);
                assert!(may_have_controls(text.as_bytes()), "{c:?} at {at}");
                assert!(escape_controls(&text).contains('\\'), "{c:?} at {at}");
            }
        }
        // The usual access line is not a suspect at all.
        let line =
            "127.0.0.1:35946 - GET 127.0.0.1:18080/index.html?q=~x - 200 OK - 197 bytes - 0.84ms";
        assert!(!may_have_controls(line.as_bytes()));
        assert!(matches!(
            escape_controls("ünï ✓ 中文"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn ip_addresses_print_as_display_does() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "fe80::1:2",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(ip, &mut out);
            push_ip(ip, &mut out); // the second one from the per-thread cache
            assert_eq!(out, format!("{ip}{ip}"));
        }
    }

    /// A sink that records writes and can be held shut.
    #[derive(Clone, Default)]
    struct Gate {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
        open: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Gate {
        fn opened() -> Gate {
            let gate = Gate::default();
            gate.release();
            gate
        }
        fn release(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    impl io::Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cvar.wait(open).unwrap();
            }
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_keeps_every_line_whole_and_in_order() {
        let gate = Gate::opened();
        let (writer, guard) = LogWriter::spawn(Box::new(gate.clone())).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        writer.append(
                            format!("t{t} line {i:04} {}\n", "x".repeat(i % 97)).as_bytes(),
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = gate.text();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (t, rest) = line[1..].split_once(" line ").unwrap();
            let t: usize = t.parse().unwrap();
            let i: usize = rest[..4].parse().unwrap();
            assert_eq!(i, next[t], "{line}");
            assert_eq!(rest.len(), 5 + i % 97, "{line}");
            next[t] += 1;
        }
        assert_eq!(next, [2000; 4]);
        // Batched: far fewer writes than lines.
        let writes = gate.writes.load(std::sync::atomic::Ordering::SeqCst);
        assert!(writes < 8000, "{writes} writes");
    }

    #[test]
    fn a_full_queue_makes_loggers_wait_and_loses_nothing() {
        let gate = Gate::default(); // shut: the first batch's write blocks
        let (writer, guard) = LogWriter::spawn_with_limit(Box::new(gate.clone()), 100).unwrap();
        let appended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let logger = {
            let (writer, appended) = (writer.clone(), Arc::clone(&appended));
            std::thread::spawn(move || {
                for i in 0..10 {
                    writer.append(format!("{i:039}\n").as_bytes()); // 40 bytes
                    appended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        // At most one batch in the (blocked) sink and 100 bytes (two lines) queued.
        std::thread::sleep(Duration::from_millis(200));
        let stuck_at = appended.load(std::sync::atomic::Ordering::SeqCst);
        assert!((2..=4).contains(&stuck_at), "{stuck_at}");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(appended.load(std::sync::atomic::Ordering::SeqCst), stuck_at);
        gate.release();
        logger.join().unwrap();
        drop(guard);
        let expected: String = (0..10).map(|i| format!("{i:039}\n")).collect();
        assert_eq!(gate.text(), expected);
    }

    #[test]
    fn lines_after_shutdown_are_written_directly() {
        let gate = Gate::opened();
        let (writer, guard) = LogWriter::spawn(Box::new(gate.clone())).unwrap();
        writer.append(b"before\n");
        drop(guard);
        writer.append(b"after\n");
        assert_eq!(gate.text(), "before\nafter\n");
    }

    #[test]
    fn the_writer_thread_runs_at_the_lowest_priority() {
        /// A sink that notes the niceness of the thread that writes to it.
        struct Niceness(Arc<Mutex<Option<i32>>>);
        impl io::Write for Niceness {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let me = rustix::thread::gettid();
                *self.0.lock().unwrap() = rustix::process::getpriority_process(Some(me)).ok();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mine = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok();
        let before = mine();
        let seen = Arc::new(Mutex::new(None));
        let (writer, guard) = LogWriter::spawn(Box::new(Niceness(Arc::clone(&seen)))).unwrap();
        writer.append(b"line\n");
        // The writer thread writes what is queued, then ends.
        drop(guard);
        assert_eq!(*seen.lock().unwrap(), Some(WRITER_NICE));
        assert_eq!(mine(), before, "the logging thread keeps its own priority");
    }
}
