//! `artifacts` (read-write, inside `--artifacts-dir`) and `data_store` (read-only, inside
//! `--data-dir`): files a script may reach, and only those.
//!
//! A name is a relative path with `/` between its parts. Refused: an empty name, NUL, an
//! absolute path, a `..` part, and any name whose directory, once its symbolic links are
//! resolved, lies outside the root. The last part is opened with `O_NOFOLLOW`: a symbolic
//! link there is never followed (reading one fails; writing or renaming onto one replaces
//! the link itself, never its target). Directories that a write needs are created one at a
//! time, each checked before the next (never `create_dir_all` through a link).
//!
//! Writes go to a temporary file beside the target, then `rename` over it: a reader sees
//! the old file or the new one, never a part (no `fsync`: atomic, not durable across a
//! power loss). Reads and writes are capped at [`MAX_FILE`]; a listing at [`MAX_LIST`]
//! entries.
//!
//! These calls do ordinary blocking file I/O on the worker thread that runs the script:
//! that worker serves nothing else for the duration of the file operation.
//!
//! The checks run before each operation; a process outside the proxy that swaps a checked
//! directory for a symbolic link at that very moment is not guarded against (scripts
//! themselves cannot make links).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mlua::{Lua, Table, Value};

use super::{fail, Returns};

/// The most bytes one `read` returns or one `write` stores (64 MiB).
pub const MAX_FILE: u64 = 64 * 1024 * 1024;

/// The most entries one `list` walks (files and directories).
pub const MAX_LIST: usize = 100_000;

/// The longest name accepted, in bytes.
const MAX_NAME: usize = 4096;

/// Temporary files of writes in progress start with this (and `list` skips them).
const TMP_PREFIX: &str = ".artifact-tmp-";

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// A directory scripts may use, by its canonical path.
#[derive(Debug)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// The directory `dir` (created first when `create`).
    ///
    /// # Errors
    /// `DIR: why` when it does not exist (or cannot be made) or is not a directory.
    pub fn open(dir: &Path, create: bool) -> Result<Root, String> {
        let fail = |e: std::io::Error| format!("{}: {e}", dir.display());
        if create {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let dir_real = dir.canonicalize().map_err(fail)?;
        if !dir_real.is_dir() {
            return Err(format!("{}: not a directory", dir.display()));
        }
        Ok(Root { dir: dir_real })
    }

    /// The file's bytes.
    pub fn read(&self, name: &[u8]) -> Result<Vec<u8>, String> {
        let rel = relative(name, false)?;
        let path = self.existing_parent(&rel)?.join(last(&rel)?);
        let mut file = open_nofollow(&path)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err("not a regular file".to_owned());
        }
        if meta.len() > MAX_FILE {
            return Err(format!("larger than {MAX_FILE} bytes"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        (&mut file)
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(format!("larger than {MAX_FILE} bytes"));
        }
        Ok(bytes)
    }

    /// Whether a regular file or a directory (not a symbolic link) has this name.
    pub fn exists(&self, name: &[u8]) -> Result<bool, String> {
        let rel = relative(name, false)?;
        let parent = match self.existing_parent(&rel) {
            Ok(parent) => parent,
            Err(why) if why == NOT_FOUND || why == NOT_DIR => return Ok(false),
            Err(why) => return Err(why),
        };
        match std::fs::symlink_metadata(parent.join(last(&rel)?)) {
            Ok(meta) => Ok(meta.is_file() || meta.is_dir()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    /// Stores `bytes` under `name` (temporary file + rename), making its directories.
    pub fn write(&self, name: &[u8], bytes: &[u8]) -> Result<(), String> {
        if bytes.len() as u64 > MAX_FILE {
            return Err(format!("content larger than {MAX_FILE} bytes"));
        }
        let rel = relative(name, false)?;
        let target = self.make_parent(&rel)?.join(last(&rel)?);
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err("is a directory".to_owned());
        }
        let tmp = target.with_file_name(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            // `create_new` (O_CREAT|O_EXCL) never follows a link either.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            file.write_all(bytes)?;
            drop(file);
            std::fs::rename(&tmp, &target)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// Removes the file (or symbolic link, or empty directory) `name`.
    pub fn delete(&self, name: &[u8]) -> Result<(), String> {
        let rel = relative(name, false)?;
        let path = self.existing_parent(&rel)?.join(last(&rel)?);
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        if meta.is_dir() {
            std::fs::remove_dir(&path).map_err(io)
        } else {
            std::fs::remove_file(&path).map_err(io)
        }
    }

    /// Renames `from` to `to` (both inside), making `to`'s directories.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Result<(), String> {
        let from_rel = relative(from, false)?;
        let to_rel = relative(to, false)?;
        let source = self.existing_parent(&from_rel)?.join(last(&from_rel)?);
        std::fs::symlink_metadata(&source).map_err(io)?;
        let target = self.make_parent(&to_rel)?.join(last(&to_rel)?);
        std::fs::rename(&source, &target).map_err(io)
    }

    /// The regular files under `dir` (the root when empty), recursively, as paths relative
    /// to the root, sorted; only those whose extension is in `exts` when it is not empty
    /// (without the dot, ASCII case ignored). Symbolic links are not listed nor followed.
    pub fn list(&self, dir: &[u8], exts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
        let rel = relative(dir, true)?;
        let start = self.dir.join(&rel);
        let real = start.canonicalize().map_err(io)?;
        if !real.starts_with(&self.dir) {
            return Err(ESCAPES.to_owned());
        }
        if !real.is_dir() {
            return Err("not a directory".to_owned());
        }
        let mut out = Vec::new();
        let mut seen = 0usize;
        let mut stack = vec![(real, rel)];
        while let Some((abs, rel)) = stack.pop() {
            for entry in std::fs::read_dir(&abs).map_err(io)? {
                let entry = entry.map_err(io)?;
                seen += 1;
                if seen > MAX_LIST {
                    return Err(format!("more than {MAX_LIST} entries"));
                }
                let name = entry.file_name();
                let kind = entry.file_type().map_err(io)?;
                let child = rel.join(&name);
                if kind.is_dir() {
                    stack.push((entry.path(), child));
                } else if kind.is_file()
                    && !name.as_bytes().starts_with(TMP_PREFIX.as_bytes())
                    && wanted(Path::new(&name), exts)
                {
                    out.push(child.into_os_string().into_vec());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The canonical directory of `rel`, which must exist and lie inside the root.
    fn existing_parent(&self, rel: &Path) -> Result<PathBuf, String> {
        let parent = self.dir.join(rel.parent().unwrap_or(Path::new("")));
        let real = match parent.canonicalize() {
            Ok(real) => real,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(NOT_FOUND.to_owned()),
            Err(e) => return Err(io(e)),
        };
        if !real.starts_with(&self.dir) {
            return Err(ESCAPES.to_owned());
        }
        if !real.is_dir() {
            return Err(NOT_DIR.to_owned());
        }
        Ok(real)
    }

    /// Like [`Root::existing_parent`], creating missing directories one at a time, each
    /// checked to lie inside the root before the next is made.
    fn make_parent(&self, rel: &Path) -> Result<PathBuf, String> {
        let mut dir = self.dir.clone();
        for part in rel.parent().unwrap_or(Path::new("")).components() {
            let next = dir.join(part);
            match std::fs::symlink_metadata(&next) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let real = next.canonicalize().map_err(io)?;
                    if !real.starts_with(&self.dir) {
                        return Err(ESCAPES.to_owned());
                    }
                    dir = real;
                }
                Ok(meta) if meta.is_dir() => dir = next,
                Ok(_) => return Err("a part of the path is not a directory".to_owned()),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    match std::fs::create_dir(&next) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io(e)),
                    }
                    dir = next;
                }
                Err(e) => return Err(io(e)),
            }
        }
        // Once more as a whole: whatever happened meanwhile, the directory is inside.
        self.existing_parent(rel)
    }
}

// === the Lua tables ===

/// The `artifacts` table over `root` (`None`: every call fails, "no --artifacts-dir").
pub(crate) fn artifacts_table(lua: &Lua, root: Option<Arc<Root>>) -> mlua::Result<Table> {
    let lib = Lib {
        prefix: "artifacts",
        flag: "--artifacts-dir",
        root,
    };
    let table = reading_table(lua, &lib)?;
    let l = lib.clone();
    table.set(
        "write",
        lua.create_function(move |_, (name, content): (Value, Value)| {
            let op = "write";
            let (root, name) = match l.one(op, &name) {
                Ok(found) => found,
                Err(why) => return fail(why),
            };
            let Value::String(content) = content else {
                return fail(format!("{}.{op}: content must be a string", l.prefix));
            };
            match root.write(&name, &content.as_bytes()) {
                Ok(()) => Ok((Value::Boolean(true), None)),
                Err(why) => fail(l.why(op, &name, &why)),
            }
        })?,
    )?;
    let l = lib.clone();
    table.set(
        "delete",
        lua.create_function(move |_, name: Value| {
            let op = "delete";
            let (root, name) = match l.one(op, &name) {
                Ok(found) => found,
                Err(why) => return fail(why),
            };
            match root.delete(&name) {
                Ok(()) => Ok((Value::Boolean(true), None)),
                Err(why) => fail(l.why(op, &name, &why)),
            }
        })?,
    )?;
    let l = lib.clone();
    table.set(
        "rename",
        lua.create_function(move |_, (from, to): (Value, Value)| {
            let op = "rename";
            let (root, from) = match l.one(op, &from) {
                Ok(found) => found,
                Err(why) => return fail(why),
            };
            let Value::String(to) = to else {
                return fail(format!("{}.{op}: new name must be a string", l.prefix));
            };
            let to = to.as_bytes().to_vec();
            match root.rename(&from, &to) {
                Ok(()) => Ok((Value::Boolean(true), None)),
                Err(why) => fail(format!(
                    "{}.{op}: {} -> {}: {why}",
                    l.prefix,
                    String::from_utf8_lossy(&from),
                    String::from_utf8_lossy(&to)
                )),
            }
        })?,
    )?;
    let l = lib;
    table.set(
        "list",
        lua.create_function(move |lua, dir: Value| l.list(lua, &dir, &Value::Nil))?,
    )?;
    Ok(table)
}

/// The read-only `data_store` table over `root` (`None`: "no --data-dir").
pub(crate) fn data_store_table(lua: &Lua, root: Option<Arc<Root>>) -> mlua::Result<Table> {
    let lib = Lib {
        prefix: "data_store",
        flag: "--data-dir",
        root,
    };
    let table = reading_table(lua, &lib)?;
    let l = lib;
    table.set(
        "list",
        lua.create_function(move |lua, (dir, exts): (Value, Value)| l.list(lua, &dir, &exts))?,
    )?;
    Ok(table)
}

/// A table with the calls both libraries have: `read` and `exists`.
fn reading_table(lua: &Lua, lib: &Lib) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let l = lib.clone();
    table.set(
        "read",
        lua.create_function(move |lua, name: Value| l.read(lua, &name))?,
    )?;
    let l = lib.clone();
    table.set(
        "exists",
        lua.create_function(move |_, name: Value| l.exists(&name))?,
    )?;
    Ok(table)
}

/// What the functions of one table share.
#[derive(Clone)]
struct Lib {
    /// `artifacts` or `data_store`.
    prefix: &'static str,
    /// The flag that gives the root.
    flag: &'static str,
    root: Option<Arc<Root>>,
}

impl Lib {
    /// The root and the name's bytes, or the message.
    fn one<'a>(&'a self, op: &str, name: &Value) -> Result<(&'a Root, Vec<u8>), String> {
        let Some(root) = &self.root else {
            return Err(format!("{}.{op}: no {}", self.prefix, self.flag));
        };
        match name {
            Value::String(s) => Ok((root, s.as_bytes().to_vec())),
            _ => Err(format!("{}.{op}: name must be a string", self.prefix)),
        }
    }

    fn why(&self, op: &str, name: &[u8], why: &str) -> String {
        format!(
            "{}.{op}: {}: {why}",
            self.prefix,
            String::from_utf8_lossy(name)
        )
    }

    fn read(&self, lua: &Lua, name: &Value) -> mlua::Result<Returns> {
        let (root, name) = match self.one("read", name) {
            Ok(found) => found,
            Err(why) => return fail(why),
        };
        match root.read(&name) {
            // Past the VM's memory cap: a failure like the others, not a raise.
            Ok(bytes) => match lua.create_string(bytes) {
                Ok(s) => Ok((Value::String(s), None)),
                Err(e) => fail(self.why("read", &name, &e.to_string())),
            },
            Err(why) => fail(self.why("read", &name, &why)),
        }
    }

    fn exists(&self, name: &Value) -> mlua::Result<Returns> {
        let (root, name) = match self.one("exists", name) {
            Ok(found) => found,
            Err(why) => return fail(why),
        };
        match root.exists(&name) {
            Ok(there) => Ok((Value::Boolean(there), None)),
            Err(why) => fail(self.why("exists", &name, &why)),
        }
    }

    fn list(&self, lua: &Lua, dir: &Value, exts: &Value) -> mlua::Result<Returns> {
        let op = "list";
        let Some(root) = &self.root else {
            return fail(format!("{}.{op}: no {}", self.prefix, self.flag));
        };
        let dir = match dir {
            Value::Nil => Vec::new(),
            Value::String(s) => s.as_bytes().to_vec(),
            _ => return fail(format!("{}.{op}: path must be a string", self.prefix)),
        };
        let exts: Vec<Vec<u8>> = match exts {
            Value::Nil => Vec::new(),
            Value::String(s) => vec![s.as_bytes().to_vec()],
            Value::Table(t) => {
                let mut out = Vec::new();
                for ext in t.sequence_values::<Value>() {
                    match ext? {
                        Value::String(s) => out.push(s.as_bytes().to_vec()),
                        _ => {
                            return fail(format!(
                                "{}.{op}: extensions must be strings",
                                self.prefix
                            ))
                        }
                    }
                }
                out
            }
            _ => {
                return fail(format!(
                    "{}.{op}: extensions must be a table of strings",
                    self.prefix
                ))
            }
        };
        match root.list(&dir, &exts) {
            Ok(names) => {
                let out = lua.create_table_with_capacity(names.len(), 0)?;
                for (i, name) in names.iter().enumerate() {
                    out.raw_set(i + 1, lua.create_string(name)?)?;
                }
                Ok((Value::Table(out), None))
            }
            Err(why) => fail(self.why(op, &dir, &why)),
        }
    }
}

const NOT_FOUND: &str = "no such file or directory";
const NOT_DIR: &str = "not a directory";
const ESCAPES: &str = "leads outside the directory (symbolic link)";

/// `name` as a relative path of plain parts (`.` and empty parts dropped).
///
/// # Errors
/// Empty (unless `empty_ok`), too long, NUL, absolute, or a `..` part.
fn relative(name: &[u8], empty_ok: bool) -> Result<PathBuf, String> {
    if name.len() > MAX_NAME {
        return Err(format!("name longer than {MAX_NAME} bytes"));
    }
    if name.contains(&0) {
        return Err("NUL in name".to_owned());
    }
    if name.starts_with(b"/") {
        return Err("absolute paths are not allowed".to_owned());
    }
    let mut rel = PathBuf::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("'..' is not allowed".to_owned()),
            part => rel.push(OsStr::from_bytes(part)),
        }
    }
    // Belt and braces: nothing but plain parts.
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("not a plain relative path".to_owned());
    }
    if rel.as_os_str().is_empty() && !empty_ok {
        return Err("empty name".to_owned());
    }
    Ok(rel)
}

/// The last part of a checked non-empty relative path.
fn last(rel: &Path) -> Result<&OsStr, String> {
    rel.file_name().ok_or_else(|| "empty name".to_owned())
}

/// Opens `path` to read, never following a link at its last part, never blocking on a
/// FIFO.
fn open_nofollow(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                "is a symbolic link (not followed)".to_owned()
            } else {
                io(e)
            }
        })
}

/// Whether `name`'s extension is one of `exts` (all names when `exts` is empty).
fn wanted(name: &Path, exts: &[Vec<u8>]) -> bool {
    if exts.is_empty() {
        return true;
    }
    let Some(ext) = name.extension() else {
        return false;
    };
    exts.iter().any(|want| {
        let want = want.strip_prefix(b".").unwrap_or(want);
        want.eq_ignore_ascii_case(ext.as_bytes())
    })
}

fn io(e: std::io::Error) -> String {
    if e.kind() == ErrorKind::NotFound {
        return NOT_FOUND.to_owned();
    }
    // The OS message without Rust's " (os error N)".
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fresh(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "files-unit-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_are_plain_relative_paths() {
        assert_eq!(relative(b"a/./b//c", false).unwrap(), Path::new("a/b/c"));
        for (bad, why) in [
            (&b"../x"[..], "'..'"),
            (b"a/../../x", "'..'"),
            (b"/etc/passwd", "absolute"),
            (b"a\0b", "NUL"),
            (b"", "empty"),
            (b"./", "empty"),
        ] {
            assert!(relative(bad, false).unwrap_err().contains(why), "{bad:?}");
        }
        assert_eq!(relative(b"", true).unwrap(), Path::new(""));
    }

    #[test]
    fn write_read_rename_list_delete_inside_the_root() {
        let dir = fresh("use");
        let root = Root::open(&dir, true).unwrap();
        root.write(b"a/b/c.txt", b"one").unwrap();
        root.write(b"a/b/c.txt", b"two").unwrap();
        root.write(b"top.json", b"{}").unwrap();
        assert_eq!(root.read(b"a/b/c.txt").unwrap(), b"two");
        assert!(root.exists(b"a/b/c.txt").unwrap());
        assert!(root.exists(b"a/b").unwrap());
        assert!(!root.exists(b"a/x/y").unwrap());
        assert!(!root.exists(b"top.json/y").unwrap());
        root.rename(b"a/b/c.txt", b"d/e.txt").unwrap();
        assert!(!root.exists(b"a/b/c.txt").unwrap());
        assert_eq!(
            root.list(b"", &[]).unwrap(),
            vec![b"d/e.txt".to_vec(), b"top.json".to_vec()]
        );
        assert_eq!(
            root.list(b"", &[b".JSON".to_vec()]).unwrap(),
            vec![b"top.json".to_vec()]
        );
        assert_eq!(root.list(b"d", &[]).unwrap(), vec![b"d/e.txt".to_vec()]);
        root.delete(b"d/e.txt").unwrap();
        root.delete(b"d").unwrap();
        assert_eq!(root.read(b"d/e.txt").unwrap_err(), NOT_FOUND);
        assert!(root.delete(b"a").is_err(), "a non-empty directory stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symbolic_links_out_of_the_root_are_refused() {
        let dir = fresh("links");
        let outside = fresh("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        let root = Root::open(&dir, true).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("leak")).unwrap();
        assert_eq!(root.read(b"out/secret").unwrap_err(), ESCAPES);
        assert!(root.read(b"leak").unwrap_err().contains("symbolic link"));
        assert_eq!(root.write(b"out/new", b"x").unwrap_err(), ESCAPES);
        assert_eq!(root.write(b"out/deeper/new", b"x").unwrap_err(), ESCAPES);
        assert!(!outside.join("new").exists() && !outside.join("deeper").exists());
        // Writing onto the link replaces the link, not its target.
        root.write(b"leak", b"mine").unwrap();
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
        assert_eq!(root.read(b"leak").unwrap(), b"mine");
        assert_eq!(root.rename(b"leak", b"out/x").unwrap_err(), ESCAPES);
        assert!(root.list(b"out", &[]).unwrap_err().contains("outside"));
        assert_eq!(root.list(b"", &[]).unwrap(), vec![b"leak".to_vec()]);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
