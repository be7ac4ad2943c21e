//! SPEC §4: graceful shutdown on SIGINT and SIGTERM.

mod common;

use common::{Server, closes, command, read_response};
use rustix::process::Signal;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts an idle server with a long grace and an idle keep-alive
/// connection open on it; returns both.
fn idle_with_a_keep_alive_connection() -> (Server, TcpStream) {
    let server = Server::start(&["--grace", "30s"]);
    let mut idle = server.connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    (server, idle)
}

#[test]
fn an_idle_server_exits_0_without_waiting_for_the_grace() {
    for signal in [Signal::TERM, Signal::INT] {
        // An idle keep-alive connection does not hold shutdown up.
        let (mut server, _idle) = idle_with_a_keep_alive_connection();
        let (code, took) = server.stop(signal);
        assert_eq!(code, Some(0));
        // Liveness: it takes milliseconds; waiting would take 30 s.
        assert!(took < Duration::from_secs(10), "{:?}", took);
        server.wait_log("dropped 0 queued and 0 running tasks");
    }
}

#[test]
fn running_tasks_get_the_grace_period_then_are_interrupted() {
    let mut server = Server::start(&["--workers", "1", "--grace", "1s"]);
    let running = server.submit("60s");
    server.wait_state(&running, "running");
    server.submit("60s");
    server.submit("60s");
    let (code, took) = server.stop(Signal::TERM);
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_millis(950),
        "exited before the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "grace + 2 s at worst: {took:?}"
    );
    server.wait_log("dropped 2 queued and 1 running tasks");
}

#[test]
fn a_task_that_ends_within_the_grace_period_lets_the_server_exit_early() {
    let mut server = Server::start(&["--workers", "1", "--grace", "30s"]);
    let id = server.submit("700ms");
    server.wait_state(&id, "running");
    let (code, took) = server.stop(Signal::TERM);
    assert_eq!(code, Some(0));
    // Liveness: it exits when the task ends, not after the 30 s grace.
    assert!(took < Duration::from_secs(10), "{:?}", took);
    server.wait_log("dropped 0 queued and 0 running tasks");
}

#[test]
fn while_draining_open_connections_get_503_and_new_ones_are_refused() {
    let mut server = Server::start(&["--workers", "1", "--grace", "30s"]);
    let id = server.submit("60s");
    server.wait_state(&id, "running");
    let mut open = server.connect();
    let mut other = server.connect();
    open.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut open).unwrap().status, 200);
    server.signal(Signal::TERM);
    server.wait_log("shutting down");

    let body = r#"{"task_id": "late", "work_duration": "1s"}"#;
    open.write_all(common::post_request("/queue-task", &[], body).as_bytes())
        .unwrap();
    let r = read_response(&mut open).unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, r#"{"error": "server is shutting down"}"#)
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closes(&mut open, Duration::from_secs(5)));

    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut other).unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, r#"{"status": "shutting down"}"#)
    );

    common::eventually("the listener to close", || {
        std::net::TcpStream::connect(server.addr)
            .is_err()
            .then_some(())
    });
    // The running task holds the server until it is cancelled... by a
    // second signal, which exits at once with status 1 (liveness: it
    // takes milliseconds; the task and the grace would take 30 s). It is
    // SIGINT: SIGTERM again within a second would be the same request.
    assert!(server.wait_exit(Duration::from_millis(300)).is_none());
    let (code, took) = server.stop(Signal::INT);
    assert_eq!(code, Some(1));
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// Sends `signal` and returns how long the server takes to exit, measured
/// by a blocking wait rather than a poll (a benchmark's clock).
fn time_to_exit(server: &mut Server, signal: Signal) -> Duration {
    let started = Instant::now();
    server.signal(signal);
    server.child.wait().unwrap();
    started.elapsed()
}

#[test]
#[ignore = "benchmark: prints how long shutdown takes when nothing holds it up"]
fn bench_shutdown_latency() {
    let mut idle = Vec::new();
    let mut second = Vec::new();
    for _ in 0..10 {
        let (mut server, _idle) = idle_with_a_keep_alive_connection();
        idle.push(time_to_exit(&mut server, Signal::TERM));
        let mut server = Server::start(&["--workers", "1", "--grace", "30s"]);
        let id = server.submit("60s");
        server.wait_state(&id, "running");
        server.signal(Signal::TERM);
        server.wait_log("shutting down");
        second.push(time_to_exit(&mut server, Signal::INT));
    }
    println!("idle server, signal to exit: {}", common::spread(&mut idle));
    println!(
        "draining server, second signal to exit: {}",
        common::spread(&mut second)
    );
}

/// Starts a server with a long grace and one task running that ends on
/// its own in `duration`.
fn one_task_running(duration: &str) -> Server {
    let server = Server::start(&["--workers", "1", "--grace", "30s"]);
    let id = server.submit(duration);
    server.wait_state(&id, "running");
    server
}

#[test]
fn the_same_signal_again_within_a_second_is_the_same_request() {
    for signal in [Signal::TERM, Signal::INT] {
        let mut server = one_task_running("2s");
        server.signal(signal);
        server.wait_log("shutting down");
        // Read as a second signal, this would exit 1 at once.
        server.signal(signal);
        let status = server.wait_exit(common::PATIENCE).expect("an exit");
        assert_eq!(status.code(), Some(0), "{signal:?}: {}", server.log());
        // The task was let finish, not dropped.
        server.wait_log("dropped 0 queued and 0 running tasks");
        assert!(!server.log().contains("second signal"), "{}", server.log());
    }
}

/// Kills a process group when the test fails while it is in scope.
struct KillGroupOnPanic(rustix::process::Pid);

impl Drop for KillGroupOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = rustix::process::kill_process_group(self.0, Signal::KILL);
        }
    }
}

#[test]
fn timeout_stops_the_server_gracefully() {
    // `timeout` sends SIGTERM to the server, then to its process group,
    // which the server is in: two SIGTERMs within microseconds.
    let server = command(
        &["--addr", "127.0.0.1:0"],
        &["--workers", "1", "--grace", "30s"],
        &[],
    );
    let mut timeout = Command::new("timeout");
    timeout
        .args(["--preserve-status", "2"])
        .arg(server.get_program())
        .args(server.get_args())
        .envs(server.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let mut server = Server::spawn_command(timeout);
    // `timeout` leads a process group of its own: a failing test kills it
    // all rather than leave the server running.
    let _group = KillGroupOnPanic(rustix::process::Pid::from_child(&server.child));
    let id = server.submit("3s");
    server.wait_state(&id, "running");
    let status = server.wait_exit(common::PATIENCE).expect("an exit");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    server.wait_log("dropped 0 queued and 0 running tasks");
}

#[test]
fn the_same_signal_after_a_second_or_another_signal_at_once_exits_1() {
    let cases = [
        (Signal::TERM, Duration::from_millis(1500), Signal::TERM),
        (Signal::TERM, Duration::ZERO, Signal::INT),
        (Signal::INT, Duration::ZERO, Signal::TERM),
    ];
    for (first, gap, then) in cases {
        let mut server = one_task_running("60s");
        server.signal(first);
        // A deliberate gap between the signals, not a wait for anything.
        std::thread::sleep(gap);
        let (code, took) = server.stop(then);
        assert_eq!(
            code,
            Some(1),
            "{first:?}, {gap:?}, {then:?}: {}",
            server.log()
        );
        // Liveness: it takes milliseconds; the task and the grace, 30 s.
        assert!(took < Duration::from_secs(10), "{took:?}");
        server.wait_log("second signal: exiting at once");
    }
}

#[test]
fn a_request_in_flight_is_answered() {
    let mut server = Server::start(&["--workers", "1", "--grace", "1s"]);
    let id = server.submit("60s");
    server.wait_state(&id, "running");
    // A long poll that would wait 30 s is in flight (the server has read
    // it) when the signal comes.
    let mut poll = server.long_polls(&id, "30s", 1).remove(0);
    let started = Instant::now();
    server.signal(Signal::TERM);
    let r = read_response(&mut poll).expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "running");
    // Answered before the exit, which comes within grace + 2 s.
    let within = Duration::from_secs(3).saturating_sub(started.elapsed());
    let exit = server.wait_exit(within);
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(0),
        "{:?}",
        started.elapsed()
    );
}
