//! Connection and process lifecycle: idle and header timeouts, graceful drain,
//! the port file, several workers, and the binary under SIGTERM.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::io::{self, Read};

use std::sync::mpsc;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn idle_client_connection_is_closed_after_the_timeout() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy_with(&[], |config| config.timeout = Duration::from_millis(500));
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    assert_eq!(client.read_response().status, 200);
    // Nothing more from us: the proxy must close the idle keep-alive connection.
    let rest = client
        .read_to_end()
        .unwrap_or_else(|e| panic!("idle connection not closed: {e}"));
    if !rest.is_empty() {
        // RFC 9112 §9.5 allows a 408 before closing an idle connection.
        let (resp, _) = parse_response(rest);
        assert_eq!(resp.status, 408);
    }
}

#[test]
fn never_used_client_connection_is_closed_after_the_timeout() {
    let proxy = spawn_proxy_with(&[], |config| config.timeout = Duration::from_millis(500));
    let mut client = proxy.connect();
    let rest = client
        .read_to_end()
        .unwrap_or_else(|e| panic!("idle connection not closed: {e}"));
    if !rest.is_empty() {
        let (resp, _) = parse_response(rest);
        assert_eq!(resp.status, 408);
    }
}

#[test]
fn slowloris_head_is_408_then_closed() {
    let proxy = spawn_proxy_with(&[], |config| {
        config.header_timeout = Duration::from_millis(300)
    });
    let mut client = proxy.connect();
    // The read timeout paces the trickle: one header byte per 100 ms, so the
    // inactivity timeout never fires, only the whole-head deadline can.
    client
        .stream()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let trickle = b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nX-Slow: "
        .iter()
        .chain([b'a'; 200].iter());
    let mut received = Vec::new();
    let mut stream = client.stream().try_clone().unwrap();
    let mut closed = false;
    for &byte in trickle {
        let _ = client.try_send(&[byte]);
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
    if !closed {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .unwrap_or_else(|e| panic!("waiting for close: {e}"));
        received.extend(rest);
    }
    assert!(!received.is_empty(), "closed without a 408");
    let (resp, _) = parse_response(received);
    resp.assert_error(408, "http_request_header_timeout");
}

#[test]
fn shutdown_lets_the_in_flight_request_finish_and_refuses_new_ones() {
    let (arrived_tx, arrived_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let hooks = Mutex::new((arrived_tx, release_rx));
    let origin = Origin::raw(move |mut conn| {
        while let Some(req) = conn.read_request() {
            if req.target == "/slow" {
                let hooks = hooks.lock().unwrap();
                hooks.0.send(()).unwrap();
                hooks.1.recv_timeout(WAIT).unwrap();
                conn.send(&ok("finished while draining"));
            } else {
                conn.send(&ok("served"));
            }
        }
    });
    let mut proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut in_flight = proxy.connect();
    in_flight.send(&get("http://alpha.test/slow", ""));
    arrived_rx.recv_timeout(WAIT).unwrap();

    proxy.handle().shutdown();

    // New connections stop being accepted. shutdown() only begins the stop, so poll
    // (bounded) until the listener is gone; a connect that still lands in the old
    // backlog is either served (taken in the listener's final drain) or, when it came
    // after that drain, closed without an answer.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "new connections still served after shutdown()"
        );
        let Ok(stream) = std::net::TcpStream::connect(proxy.addr) else {
            break;
        };
        let mut late = Wire::new(stream);
        let _ = late.try_send(&get("http://alpha.test/late", ""));
        match late.read_to_end() {
            Ok(answer) if answer.is_empty() => break,
            Ok(_served) => {}
            Err(e) => panic!("a connection after shutdown() was neither refused nor closed: {e}"),
        }
        thread::sleep(Duration::from_millis(10));
    }

    release_tx.send(()).unwrap();
    let resp = in_flight.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "finished while draining");

    let handle = proxy.take_handle();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        handle.wait();
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("wait() returned after the drain");
    in_flight.expect_eof();
}

#[test]
fn shutdown_answers_the_first_request_of_a_connection_that_sent_none_yet() {
    // A client that has connected but not sent its request yet (accepted, or still in
    // the accept queue and taken by the drain) is not an idle keep-alive connection: it
    // is answered, with `Connection: close`, instead of being closed under its request.
    let origin = Origin::fixed("answered while stopping");
    // Waits longer than the test's: closing the idle connection must not wait for them.
    let mut proxy = spawn_proxy(&["--timeout", "60", "--grace-period", "60"]);
    proxy.route("alpha.test", &origin);
    let mut used = proxy.connect();
    used.send(&get("http://alpha.test/", ""));
    assert_eq!(used.read_response().status, 200);
    let mut fresh = proxy.connect();

    proxy.handle().shutdown();
    // The used, idle keep-alive connection closes at once (not after --timeout, even
    // though tokio still reports its socket readable from the last request's read).
    used.expect_eof();
    fresh.send(&get("http://alpha.test/late", ""));
    let resp = fresh.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "answered while stopping");
    assert!(resp.headers.has_token("connection", "close"), "{resp:?}");
    fresh.expect_eof();
    proxy.take_handle().wait();
}

#[test]
fn port_file_holds_the_bound_port_and_is_removed_on_stop() {
    let path = temp_path("port-file");
    let mut proxy = spawn_proxy(&["--port-file", path.to_str().unwrap()]);
    let text = std::fs::read_to_string(&path).unwrap();
    let first: u16 = text.lines().next().unwrap().trim().parse().unwrap();
    assert_eq!(first, proxy.addr.port());

    proxy.take_handle().stop();
    assert!(!path.exists(), "port file left behind");
    // A handle dropped without stop() removes it too.
    let mut proxy = spawn_proxy(&["--port-file", path.to_str().unwrap()]);
    assert!(path.exists());
    drop(proxy.take_handle());
    assert!(!path.exists(), "port file left behind by a dropped handle");
}

#[test]
fn two_workers_serve_50_concurrent_connections() {
    let origin = Origin::echo_target();
    let proxy = spawn_proxy(&["--num-workers", "2"]);
    proxy.route("alpha.test", &origin);

    let barrier = std::sync::Arc::new(Barrier::new(50));
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let mut client = proxy.connect();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                client.send(&get(&format!("http://alpha.test/client/{i}"), ""));
                let resp = client.read_response();
                assert_eq!(resp.status, 200);
                assert_eq!(resp.text(), format!("/client/{i}"));
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(origin.requests().len(), 50);
}

#[test]
fn binary_serves_then_exits_zero_on_sigterm() {
    let origin = Origin::fixed("via the binary");
    let proxy = ProxyBinary::spawn(&[]);
    // An IP literal: the binary uses the system resolver, and tests look up no real names.
    let resp = request(proxy.addr, &get(&origin.url("/bin"), ""));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "via the binary");
    let port_file = proxy.port_file.clone();
    let status = proxy.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!port_file.exists(), "port file left behind");
}

/// SIGTERM closes connections with no exchange in flight at once: one that never sent a
/// byte and one idle after a complete exchange. The timeouts are far longer than the
/// test's wait for the exit, so waiting for either of them fails the test.
#[test]
fn sigterm_closes_silent_and_idle_connections_at_once() {
    let origin = Origin::fixed("done");
    let proxy = ProxyBinary::spawn(&["--timeout", "60", "--header-timeout", "60"]);
    let mut silent = Wire::connect(proxy.addr);
    let mut idle = Wire::connect(proxy.addr);
    idle.send(&get(&origin.url("/once"), ""));
    assert_eq!(idle.read_response().status, 200);
    // The silent connection has been accepted once the idle one's exchange is done
    // (one worker, accepting in order).
    let status = proxy.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
    silent.expect_eof();
    idle.expect_eof();
}

/// A worker stuck in one long call (a script's pathological `string.find`: the
/// instruction limit counts Lua instructions, not time inside a library function)
/// cannot drain; SIGTERM still ends the process once the grace period is over.
#[test]
fn sigterm_ends_the_process_even_with_a_stuck_worker() {
    let script = temp_path("stuck").with_extension("lua");
    std::fs::write(
        &script,
        r#"function request(flow)
             if flow.request.path == "/stuck" then
               print("entering the long call")
               string.rep("a", 60000):find(".-.-x")
             end
           end"#,
    )
    .unwrap();
    let log = temp_path("stuck-log");
    let proxy = ProxyBinary::spawn(&[
        "--script",
        script.to_str().unwrap(),
        "--grace-period",
        "1",
        "--log-file",
        log.to_str().unwrap(),
    ]);
    let mut client = Wire::connect(proxy.addr);
    client.send(&get("http://127.0.0.1:9/stuck", ""));
    // The worker is in the call once the script has said so.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("entering the long call")
    {
        assert!(Instant::now() < deadline, "the script never ran");
        thread::sleep(Duration::from_millis(10));
    }
    let port_file = proxy.port_file.clone();
    let status = proxy.terminate();
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(!port_file.exists(), "port file left behind");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("did not stop within the grace period"),
        "{text}"
    );
}

/// A second instance that cannot listen (the port is taken) leaves the running one's
/// pid and port files alone: it writes its pid only once listening, and removes only
/// what it wrote.
#[test]
fn a_failed_second_start_leaves_the_first_ones_files() {
    let pid_file = temp_path("first.pid");
    let first = ProxyBinary::spawn(&["--pid-file", pid_file.to_str().unwrap()]);
    // The pid file follows the port file (written once listening).
    let deadline = Instant::now() + WAIT;
    let pid = loop {
        match std::fs::read_to_string(&pid_file) {
            Ok(pid) if !pid.is_empty() => break pid,
            _ => assert!(Instant::now() < deadline, "no pid file"),
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(pid.trim(), first.child.id().to_string());
    let port = first.addr.port().to_string();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["--port", &port, "--pid-file", pid_file.to_str().unwrap()])
        .args(["--port-file", first.port_file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second instance did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1), "{status}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid);
    assert!(
        first.port_file.exists(),
        "the first instance's port file is gone"
    );
    let port_file = first.port_file.clone();
    assert_eq!(first.terminate().code(), Some(0));
    assert!(!pid_file.exists() && !port_file.exists());
}
