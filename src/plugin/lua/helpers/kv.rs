//! The store behind the scripts' `kv` helper: one per process, shared by every worker
//! and script. With `--kv-file` it is loaded at start and written back (temporary file +
//! rename) by a background thread at most every [`FLUSH_EVERY`] after a change, and once
//! more when the store is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::DECODE;

/// Longest time a change to the store waits before it is written to `--kv-file`.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

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
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        read(&self.inner.map).get(key).cloned()
    }

    /// `f` of the value of `key`, read in place (no copy of the value).
    pub fn get_with<T>(&self, key: &str, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        read(&self.inner.map).get(key).map(|v| f(v))
    }

    /// Sets `key` to `value` (an existing entry is overwritten in place: a counter
    /// updated per request allocates nothing).
    pub fn set(&self, key: &str, value: &[u8]) {
        put(&mut write(&self.inner.map), key, value);
        self.inner.dirty.store(true, Ordering::Release);
    }

    /// Adds `by` to the integer stored at `key` (absent: 0) under the store's lock, so
    /// workers counting at once never lose a count; returns the new value.
    ///
    /// # Errors
    /// The value is not a decimal integer, or the sum overflows.
    pub fn incr(&self, key: &str, by: i64) -> Result<i64, String> {
        let mut map = write(&self.inner.map);
        let old = match map.get(key) {
            None => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .ok_or_else(|| format!("kv.incr: the value of {key:?} is not an integer"))?,
        };
        let new = old
            .checked_add(by)
            .ok_or_else(|| format!("kv.incr: {key:?} would overflow"))?;
        put(&mut map, key, new.to_string().as_bytes());
        drop(map);
        self.inner.dirty.store(true, Ordering::Release);
        Ok(new)
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

    /// Writes the store to its file now if it changed (the flusher and the drop do it
    /// otherwise).
    ///
    /// # Errors
    /// The file could not be written.
    #[cfg(test)]
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

/// Stores `value` at `key`, overwriting an existing entry in place (no allocation when
/// it fits).
fn put(map: &mut BTreeMap<String, Vec<u8>>, key: &str, value: &[u8]) {
    match map.get_mut(key) {
        Some(old) => {
            old.clear();
            old.extend_from_slice(value);
        }
        None => {
            map.insert(key.to_owned(), value.to_vec());
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn kv_file_is_loaded_and_written_atomically() {
        let dir = std::env::temp_dir().join(format!("kv-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kv.json");
        std::fs::write(&path, r#"{"a":"1","b":{"base64":"/w=="}}"#).unwrap();
        let kv = Kv::open(&path).unwrap();
        assert_eq!(kv.get("a"), Some(b"1".to_vec()));
        assert_eq!(kv.get("b"), Some(vec![0xff]));
        kv.set("c", b"3");
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
