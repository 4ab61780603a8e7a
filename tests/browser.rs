//! A real browser through the proxy: headless Chromium, told only the PAC URL the proxy
//! serves, loads a page from a name that exists nowhere but in the proxy's resolver.
//!
//! The chain of proof: the PAC text (generated here) sends `pac-origin.test` to this
//! proxy's port and everything else DIRECT; `pac-origin.test` does not resolve on the
//! machine (`.test` is reserved) and only the proxy's test resolver maps it to an
//! in-process origin. So the page's unique marker in Chromium's DOM, the origin's record
//! of `GET /page` with `Host: pac-origin.test`, and the proxy's resolver having been
//! asked for `pac-origin.test` together show that Chromium fetched and ran the PAC file
//! and sent the request (absolute-form, by name) to the proxy, which forwarded it.
//!
//! Skips (with a note) when no Chromium is installed; `.ci/run` installs Debian's.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::io::Read;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use proxy::dns::{Resolve, ResolveFuture};
use support::*;

/// The most Chromium may take before it is killed and the test fails.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

/// The name only the proxy can resolve.
const HOST: &str = "pac-origin.test";

/// `/usr/bin/chromium`, else `chromium` on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    let usual = PathBuf::from("/usr/bin/chromium");
    if usual.is_file() {
        return Some(usual);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// Wraps the test resolver and notes every name the proxy asked it for.
struct Recording {
    inner: Arc<dyn Resolve>,
    asked: Mutex<Vec<(String, u16)>>,
}

impl Resolve for Recording {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        self.asked.lock().unwrap().push((host.to_owned(), port));
        self.inner.resolve(host, port)
    }
}

/// A proxy serving `pac` (literal text, built by `make_pac` from its own port) at
/// `/proxy.pac`. The port must be in the PAC text before the proxy starts, so a free
/// one is picked first; a lost race for it is retried.
fn spawn_pac_proxy(make_pac: impl Fn(u16) -> String) -> (TestProxy, Arc<Recording>) {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pac = make_pac(port);
        let port_arg = port.to_string();
        let args = [
            "--port",
            port_arg.as_str(),
            "--pac-file",
            pac.as_str(),
            "--pac-file-url-path",
            "/proxy.pac",
        ];
        let recorder = Arc::new(Mutex::new(None));
        let started = std::panic::catch_unwind(|| {
            spawn_proxy_with(&args, |config| {
                let recording = Arc::new(Recording {
                    inner: config.resolver.clone(),
                    asked: Mutex::new(Vec::new()),
                });
                *recorder.lock().unwrap() = Some(recording.clone());
                config.resolver = recording;
            })
        });
        match started {
            Ok(proxy) => {
                assert_eq!(proxy.addr.port(), port);
                let recording = recorder.lock().unwrap().take().unwrap();
                return (proxy, recording);
            }
            Err(panic) => {
                last_error = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "proxy did not start".to_owned());
            }
        }
    }
    panic!("could not start the proxy on a free port: {last_error}");
}

/// What a finished Chromium run left.
struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `program args` in its own process group; kills the whole group after
/// [`BROWSER_LIMIT`] (and after it exits, so no helper process outlives the test).
fn run_limited(program: &Path, args: &[String]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let pid = child.id();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            let _ = tx.send(String::from_utf8_lossy(&out).into_owned());
        });
        rx
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_LIMIT {
            kill_group();
            let _ = child.wait();
            let err = stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!(
                "chromium still running after {BROWSER_LIMIT:?}: killed. stderr:\n{}",
                tail(&err)
            );
        }
        // Polling the exit, not waiting for readiness.
        thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    kill_group();
    let collect = |rx: mpsc::Receiver<String>| {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|_| "<pipe still open>".to_owned())
    };
    Run {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
        took,
    }
}

/// The last lines of Chromium's chatter, for failure messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn headless_chromium_loads_a_page_through_the_pac_file_the_proxy_serves() {
    let Some(chromium) = find_chromium() else {
        eprintln!(
            "SKIPPED headless_chromium_loads_a_page_through_the_pac_file_the_proxy_serves: \
             no chromium (/usr/bin/chromium or on PATH); .ci/run installs Debian's `chromium`"
        );
        return;
    };
    // Expected to fail: only the proxy's resolver knows the name.
    if let Ok(addrs) = (HOST, 80).to_socket_addrs() {
        eprintln!(
            "note: {HOST} resolves on this machine ({:?}); the origin's record still proves the proxy path",
            addrs.collect::<Vec<_>>()
        );
    }

    let marker = format!(
        "pac-marker-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let page = format!(
        "<!DOCTYPE html><html><head><title>pac origin</title></head>\
         <body><p id=\"marker\">{marker}</p></body></html>"
    );
    let origin = Origin::spawn(move |req| {
        if req.target == "/page" {
            Reply::keep(response(
                200,
                &[("Content-Type", "text/html; charset=utf-8")],
                &page,
            ))
        } else {
            Reply::keep(response(404, &[], "not here"))
        }
    });
    let (proxy, resolver) = spawn_pac_proxy(|port| {
        format!(
            "function FindProxyForURL(url, host) {{ if (host == \"{HOST}\") return \"PROXY 127.0.0.1:{port}\"; return \"DIRECT\"; }}"
        )
    });
    proxy.route(HOST, &origin);

    // The proxy really serves that PAC file at the URL Chromium is given.
    let pac_url = format!("http://{}/proxy.pac", proxy.addr);
    let pac = request(
        proxy.addr,
        format!(
            "GET /proxy.pac HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    );
    assert_eq!(
        pac.status,
        200,
        "PAC: {}",
        String::from_utf8_lossy(&pac.raw_head)
    );
    assert!(
        pac.text()
            .contains(&format!("PROXY 127.0.0.1:{}", proxy.addr.port())),
        "PAC text: {}",
        pac.text()
    );

    let profile = temp_path("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        // No https:// attempt first: the page must come over plain HTTP via the proxy.
        "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--user-data-dir={}", profile.display()),
        format!("--proxy-pac-url={pac_url}"),
        "--dump-dom".to_owned(),
        format!("http://{HOST}/page"),
    ])
    .collect();
    let run = run_limited(&chromium, &args);
    let _ = std::fs::remove_dir_all(&profile);
    eprintln!("chromium ran {:?} ({})", run.took, run.status);

    let context = || {
        format!(
            "chromium {}; DOM:\n{}\nstderr (tail):\n{}",
            run.status,
            run.stdout,
            tail(&run.stderr)
        )
    };
    assert!(run.status.success(), "{}", context());
    assert!(
        run.stdout.contains(&marker),
        "the DOM lacks the origin's marker {marker}: {}",
        context()
    );

    // The origin got the page request, from the proxy, by name.
    let requests = origin.requests();
    let page_request = requests
        .iter()
        .find(|r| r.target == "/page")
        .unwrap_or_else(|| panic!("origin never got GET /page: {requests:?}\n{}", context()));
    assert_eq!(page_request.method, "GET");
    assert_eq!(page_request.headers.get("host"), Some(HOST));
    // The proxy, not Chromium, looked the name up: Chromium sent it the name.
    let asked = resolver.asked.lock().unwrap().clone();
    assert!(
        asked.contains(&(HOST.to_owned(), 80)),
        "proxy resolver was asked {asked:?}"
    );
}
