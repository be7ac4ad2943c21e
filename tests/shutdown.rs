//! SPEC §4: graceful shutdown on SIGINT and SIGTERM.

mod common;

use common::{Server, closes, read_response};
use rustix::process::Signal;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn an_idle_server_exits_0_at_once() {
    for signal in [Signal::TERM, Signal::INT] {
        let mut server = Server::start(&["--grace", "30s"]);
        // An idle keep-alive connection does not hold shutdown up.
        let mut idle = server.connect();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut idle).unwrap().status, 200);
        let (code, took) = server.stop(signal);
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(2), "{:?}", took);
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
    assert!(took < Duration::from_secs(5), "{:?}", took);
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
    // second signal, which exits at once with status 1.
    assert!(server.wait_exit(Duration::from_millis(300)).is_none());
    let (code, took) = server.stop(Signal::TERM);
    assert_eq!(code, Some(1));
    assert!(took < Duration::from_secs(1));
}

#[test]
fn a_request_in_flight_is_answered() {
    let mut server = Server::start(&["--workers", "1", "--grace", "1s"]);
    let id = server.submit("60s");
    server.wait_state(&id, "running");
    // A long poll that would wait 30 s is in flight when the signal comes.
    let mut poll = server.connect();
    poll.write_all(format!("GET /tasks/{id}?wait=30s HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let started = Instant::now();
    server.signal(Signal::TERM);
    let r = read_response(&mut poll).expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "running");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );
}
