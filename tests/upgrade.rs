//! Zero-downtime upgrade: a second binary joins the first one's port with
//! `--reuse-port`, the first gets SIGTERM, and a steady load of keep-alive and
//! new-connection clients loses no request across the hand-over (README,
//! "Zero-downtime upgrade").
//!
//! The kernel's `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+) is part of the procedure:
//! without it, a connection that completes its handshake on the old process's listener
//! between the last `accept` of its drain and its close is reset (observed here, a few
//! times in a hundred runs with 12 new-connection clients). The setting is per network
//! namespace, so when it is off on the host the test runs itself again inside a private
//! one (`unshare --user --map-root-user --net`, which needs no real root where user
//! namespaces are allowed) with loopback up and the setting on, leaving the host alone;
//! when that is not possible it is skipped, saying why.
//!
//! A client retries only where HTTP allows it without knowing whether the request was
//! processed (RFC 9112 §9.3.1): a reused keep-alive connection that the server closed
//! while it was idle is re-opened and the request sent again. Every other failure is a
//! loss: a new connection refused or reset, a request sent on a new connection that got
//! no answer, a partial or wrong answer. And the origin must have seen every request
//! exactly once, so a "retry" cannot hide a request the first proxy had forwarded.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use support::*;

/// Client threads: even ones keep connections alive, odd ones open one per request.
const CLIENTS: usize = 8;
/// Requests completed (by all clients together) in each phase of the hand-over.
const PER_PHASE: usize = 400;
/// Hard bound on one client's requests, whatever happens to the phases.
const MAX_PER_CLIENT: usize = 20_000;
/// Requests on one keep-alive connection before the client opens another one.
const KEEP_ALIVE_RUN: usize = 50;

/// Requests completed so far, with a way to wait for a number of them.
#[derive(Default)]
struct Progress {
    done: Mutex<usize>,
    changed: Condvar,
}

impl Progress {
    fn add(&self) {
        *self.done.lock().unwrap() += 1;
        self.changed.notify_all();
    }

    fn get(&self) -> usize {
        *self.done.lock().unwrap()
    }

    /// Waits until `target` requests are done; panics after [`WAIT`].
    #[track_caller]
    fn wait_for(&self, target: usize, what: &str) {
        let deadline = Instant::now() + WAIT;
        let mut done = self.done.lock().unwrap();
        while *done < target {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: only {done} of {target} requests done"
            );
            done = self.changed.wait_timeout(done, left).unwrap().0;
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    /// Keep-alive connections found closed by the server while idle (request re-sent).
    reopened: usize,
    losses: Vec<String>,
}

/// How one attempt at an exchange failed.
enum Failure {
    /// Nothing at all came back (EOF or reset before the first byte, or the write failed).
    NoAnswer(String),
    /// Something came back, but not the whole right answer: always a loss.
    Broken(String),
}

/// Sends `GET http://<origin><path>` on `stream` and reads the answer, which must be
/// `200` with `path` as its body. Returns whether the server keeps the connection open.
fn exchange(stream: &mut TcpStream, origin: SocketAddr, path: &str) -> Result<bool, Failure> {
    let request = get(&format!("http://{origin}{path}"), "");
    stream
        .write_all(&request)
        .map_err(|e| Failure::NoAnswer(format!("write: {e}")))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(Failure::NoAnswer("EOF".into())),
            Ok(0) => return Err(Failure::Broken("EOF inside the head".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() && e.kind() != io::ErrorKind::WouldBlock => {
                return Err(Failure::NoAnswer(format!("read: {e}")))
            }
            Err(e) => return Err(Failure::Broken(format!("read: {e}"))),
        }
    };
    let head = parse_head(&buf[..head_end]);
    let length: usize = head
        .headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Failure::Broken(format!("no Content-Length: {:?}", head.start)))?;
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(Failure::Broken("EOF inside the body".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Failure::Broken(format!("reading the body: {e}"))),
        }
    }
    let body = &buf[head_end..];
    if head.start.get(1).map(String::as_str) != Some("200") || body != path.as_bytes() {
        return Err(Failure::Broken(format!(
            "{:?} with body {:?}",
            head.start,
            String::from_utf8_lossy(body)
        )));
    }
    Ok(!head.headers.has_token("connection", "close"))
}

fn connect(proxy: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&proxy, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One client: requests `/c<id>/r<n>` until `stop` (or its bound), keeping connections
/// alive or not.
fn client(
    id: usize,
    keep_alive: bool,
    proxy: SocketAddr,
    origin: SocketAddr,
    stop: &AtomicBool,
    progress: &Progress,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<(TcpStream, usize)> = None;
    for n in 0..MAX_PER_CLIENT {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let path = format!("/c{id}/r{n}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut stream, used) = match conn.take() {
                Some(open) => open,
                None => match connect(proxy) {
                    Ok(stream) => (stream, 0),
                    Err(e) => {
                        tally.losses.push(format!("{path}: connect: {e}"));
                        break;
                    }
                },
            };
            match exchange(&mut stream, origin, &path) {
                Ok(open) => {
                    tally.ok += 1;
                    progress.add();
                    if keep_alive && open && used + 1 < KEEP_ALIVE_RUN {
                        conn = Some((stream, used + 1));
                    }
                    break;
                }
                // Closed by the server while idle: HTTP lets the client open a new
                // connection and send the request again (once: a new connection that
                // does not answer is a loss).
                Err(Failure::NoAnswer(_)) if used > 0 && attempt == 1 => tally.reopened += 1,
                Err(Failure::NoAnswer(why)) => {
                    tally.losses.push(format!(
                        "{path}: no answer on a new connection (attempt {attempt}): {why}"
                    ));
                    break;
                }
                Err(Failure::Broken(why)) => {
                    tally.losses.push(format!("{path}: {why}"));
                    break;
                }
            }
        }
    }
    tally
}

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
/// Set in the copy of this test that runs inside its own network namespace.
const IN_NETNS: &str = "PROXY_TEST_UPGRADE_IN_NETNS";
/// The namespace wrapper's exit status when it could not be set up (→ skip).
const SETUP_FAILED: i32 = 77;

#[test]
fn upgrade_under_load_loses_no_request() {
    let migrate = std::fs::read_to_string(MIGRATE_REQ).map(|v| v.trim().to_owned());
    if std::env::var_os(IN_NETNS).is_some() {
        assert_eq!(
            migrate.as_deref().ok(),
            Some("1"),
            "{MIGRATE_REQ} in the namespace"
        );
        return upgrade_under_load();
    }
    match migrate.as_deref() {
        Ok("1") => return upgrade_under_load(),
        Ok(_) => {}
        Err(e) => {
            eprintln!("skipped: cannot read {MIGRATE_REQ} ({e}): kernel older than 5.14?");
            return;
        }
    }
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|p| p.status.success()) {
        let why = match &probe {
            Ok(p) => String::from_utf8_lossy(&p.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        eprintln!(
            "skipped: {MIGRATE_REQ} is 0 and no network namespace can be made to set it in \
             ({why}); set it to 1 to run this test"
        );
        return;
    }
    // The same test binary, this test only, in a network namespace of its own.
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--", "sh", "-c"])
        .arg(format!(
            "ip link set lo up && echo 1 > {MIGRATE_REQ} || exit {SETUP_FAILED}; exec \"$0\" \"$@\""
        ))
        .arg(&exe)
        .args([
            "upgrade_under_load_loses_no_request",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(IN_NETNS, "1")
        .status();
    match status {
        Ok(status) if status.code() == Some(SETUP_FAILED) => eprintln!(
            "skipped: {MIGRATE_REQ} is 0 and could not be set in a network namespace (no `ip`?); \
             set it to 1 to run this test"
        ),
        Ok(status) => assert!(status.success(), "the test in its namespace: {status}"),
        Err(e) => panic!("unshare: {e}"),
    }
}

fn upgrade_under_load() {
    let origin = Origin::echo_target();
    let old = ProxyBinary::spawn_on(0, &["--num-workers", "2"]);
    let port = old.addr.port();
    let proxy = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (stop, progress, origin) = (stop.clone(), progress.clone(), origin.addr);
            thread::spawn(move || client(id, id % 2 == 0, proxy, origin, &stop, &progress))
        })
        .collect();

    // Phase 1: the old process alone.
    progress.wait_for(PER_PHASE, "before the upgrade");
    // Phase 2: both processes in one SO_REUSEPORT group; the new one is ready once its
    // port file names the port (its listeners are bound and listening).
    let new = ProxyBinary::spawn_on(port, &["--num-workers", "2", "--reuse-port"]);
    assert_eq!(new.addr, old.addr);
    progress.wait_for(progress.get() + PER_PHASE, "with both processes");
    // Phase 3: the old process drains and exits while the load goes on.
    let status = old.terminate();
    assert_eq!(status.code(), Some(0), "old process: {status}");
    progress.wait_for(progress.get() + PER_PHASE, "after the old process exited");

    stop.store(true, Ordering::SeqCst);
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let status = new.terminate();
    assert_eq!(status.code(), Some(0), "new process: {status}");

    let ok: usize = tallies.iter().map(|t| t.ok).sum();
    let reopened: usize = tallies.iter().map(|t| t.reopened).sum();
    let losses: Vec<&String> = tallies.iter().flat_map(|t| &t.losses).collect();
    eprintln!(
        "upgrade: {ok} requests answered, {reopened} idle keep-alive connections re-opened, {} lost",
        losses.len()
    );
    assert!(losses.is_empty(), "lost requests: {losses:#?}");

    // The origin saw each answered request once: no retry re-sent a request that the
    // old process had forwarded and then dropped.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for request in origin.requests() {
        *seen.entry(request.target).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        twice.is_empty(),
        "requests the origin saw more than once: {twice:?}"
    );
    assert_eq!(seen.len(), ok, "requests at the origin vs answered");
}
