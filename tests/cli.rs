//! The `proxy` binary's command line: exit codes, help, version, and a start/stop cycle.
//! Parsing details are unit-tested in `src/cli.rs` and `src/config.rs`.

// Helpers outside `#[test]` fns: a failure should panic the test.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Help text with line wrapping undone, so checks do not depend on the terminal width.
fn unwrapped(bytes: &[u8]) -> String {
    text(bytes).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("proxy-cli-test-{}-{name}", std::process::id()))
}

#[test]
fn version_prints_to_stdout_and_exits_0() {
    for flag in ["-v", "--version"] {
        let out = proxy(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            text(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
            "{}",
            text(&out.stdout)
        );
        assert!(out.stderr.is_empty());
    }
}

#[test]
fn help_lists_flags_with_their_defaults() {
    let out = proxy(&["-h"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty());
    let help = unwrapped(&out.stdout);
    assert!(help.starts_with("proxy v"), "{help}");
    for needle in [
        "--hostname",
        "[default: 127.0.0.1]",
        "[default: 8899]",
        "--num-workers",
        "--timeout",
        "--log-level",
        "[default: INFO]",
        "README",
        "UTC",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
    assert_eq!(proxy(&["--help"]).status.code(), Some(0));
}

#[test]
fn unknown_flag_prints_usage_and_exits_2() {
    let out = proxy(&["--enable-devtools"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("--enable-devtools") && err.contains("Usage"),
        "{err}"
    );
}

#[test]
fn bad_values_print_one_line_and_exit_64() {
    for args in [
        &["--hostname", "localhost"][..],
        &["--port", "65536"],
        &["--timeout", "-1"],
        &["--num-workers", "5000"],
        &["--log-level", "loud"],
        &["--log-file", "/nonexistent-proxy-test-dir/proxy.log"],
        &["--log-format", "%(asctime)s %(mesage)s"],
    ] {
        let out = proxy(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("proxy: error: "), "{args:?}: {err}");
    }
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("proxy did not exit within {limit:?}");
}

/// SIGTERM stops the proxy cleanly, and so does SIGHUP (a closed terminal): exit 0,
/// pid file removed.
#[test]
fn abbreviated_flags_start_the_proxy_and_sigterm_or_sighup_stops_it() {
    for signal in ["-TERM", "-HUP"] {
        let port_file = temp_path("port");
        let pid_file = temp_path("pid");
        let _ = std::fs::remove_file(&port_file);
        let _ = std::fs::remove_file(&pid_file);
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args([
                "--num-w",
                "1",
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                "--log-level",
                "e",
            ])
            .arg("--port-f")
            .arg(&port_file)
            .arg("--pid-file")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();

        // The port file appears once the listeners are up, the pid file right after.
        let deadline = Instant::now() + Duration::from_secs(20);
        let port: u16 = loop {
            let written = std::fs::read_to_string(&port_file).unwrap_or_default();
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if let (Some(Ok(port)), false) =
                (written.lines().next().map(str::parse), pid.is_empty())
            {
                break port;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("proxy exited early: {status}");
            }
            assert!(Instant::now() < deadline, "no port file");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_ne!(port, 0);
        TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            child.id().to_string()
        );

        let killed = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        assert_eq!(wait_for_exit(&mut child, Duration::from_secs(20)), Some(0));
        assert!(!pid_file.exists(), "{signal}: pid file left behind");
        let _ = std::fs::remove_file(&port_file);
    }
}

/// A newcomer sees at once that the proxy started and where: the version, every bound
/// address and the worker count at INFO; a warning when `--pac-file` is served as literal
/// text; `--num-acceptors` and the execution modes (proxy.py's) are accepted and said to
/// be ignored; a route
/// plugin loaded without `--enable-web-server` is pointed out.
#[test]
fn start_is_announced_on_stdout() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["--port", "0", "--ports", "0", "--num-workers", "2"])
        .args(["--num-acceptors", "4", "--pac-file", "not/a/file.pac"])
        .args(["--threadless", "--local-executor", "0"])
        .args(["--plugins", "WebServerPlugin"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("listening on");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    let listening = lines.last().unwrap();
    assert!(
        listening.contains(&format!("proxy v{}", env!("CARGO_PKG_VERSION")))
            && listening.contains("[I]")
            && listening.contains("with 2 workers")
            && listening.contains("127.0.0.1:"),
        "{all}"
    );
    assert!(
        all.contains("[W]") && all.contains("literal PAC text"),
        "{all}"
    );
    assert!(all.contains("--num-acceptors 4 ignored"), "{all}");
    assert!(
        all.contains("--threadless, --local-executor 0 ignored"),
        "{all}"
    );
    // A route plugin without the web server would answer nothing: said at start.
    assert!(
        all.contains("WebServerPlugin is loaded but answers nothing without --enable-web-server"),
        "{all}"
    );
}

#[test]
fn destination_policy_flags_are_checked() {
    for args in [
        &["--connect-ports", "https"][..],
        &["--connect-ports", "0"],
        &["--connect-ports", "90-80"],
        &["--deny-destinations", "10.0.0.0/33"],
        &["--deny-destinations", "intranet"],
    ] {
        let out = proxy(args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).starts_with("proxy: error:"), "{args:?}");
    }
}
