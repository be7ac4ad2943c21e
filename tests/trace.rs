//! The executor trace (`RUST_LOG=bgtasks::trace=trace`): one request's
//! polls, `Pending`s and wakes, checked by the order of the log's lines,
//! never by timing.

mod common;

use common::{Server, eventually, post_request, read_response};
use std::io::Write;

/// The environment that turns the trace on.
const TRACE_ON: (&str, &str) = ("RUST_LOG", "bgtasks::trace=trace");

/// Finds `needles` in the log's lines in this order, each on a line after
/// the one before; returns each found line, or `None` if one is missing.
fn in_order(log: &str, needles: &[&str]) -> Option<Vec<String>> {
    let mut lines = log.lines();
    needles
        .iter()
        .map(|needle| lines.find(|l| l.contains(needle)).map(str::to_string))
        .collect()
}

/// Returns the word of `line` that follows `after`: a task's name.
fn word_after(line: &str, after: &str) -> String {
    let rest = line.split(after).nth(1).unwrap_or_default();
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_request_shows_its_connection_waiting_woken_and_waking_a_worker() {
    let mut server = Server::start_with_env(&["--workers", "1", "--threads", "2"], &[TRACE_ON]);
    // The worker waits on its channel before the request comes, so that
    // the submission's send is what wakes it.
    let worker = word_after(&server.wait_log("pending default-worker#"), "pending ");
    let mut stream = server.connect();
    let conn = word_after(&server.wait_log("spawn conn#"), "spawn ");
    // The request is sent only once the connection has found nothing to
    // read and returned `Pending`: its wake can then only be the bytes'.
    server.wait_log(&format!("pending {conn}"));
    let request = post_request("/tasks", &[], r#"{"work_duration": "10ms"}"#);
    stream.write_all(request.as_bytes()).unwrap();
    let response = read_response(&mut stream).expect("an answer");
    assert_eq!(response.status, 202);
    let needles = [
        format!("spawn {conn} by listener#"),
        format!("poll {conn} on "),
        format!("{conn}: readable() on the socket"),
        format!("pending {conn}"),
        format!("wake {conn} by the reactor on "),
        format!("poll {conn} on "),
        format!("wake {worker} by {conn} on "),
        format!("poll {worker} on "),
        format!("{worker}: Timer::after(10ms)"),
        format!("pending {worker}"),
        format!("wake {worker} by the reactor on "),
        format!("poll {worker} on "),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    eventually("the traced request's lines, in order", || {
        in_order(&server.log(), &needles)
    });
    let written = format!("{conn}: wrote HTTP/1.1 202 Accepted");
    let after_wake = [needles[4], needles[5], &written];
    eventually("the 202 written after the wake", || {
        in_order(&server.log(), &after_wake)
    });
}

#[test]
fn only_naming_the_trace_turns_it_on() {
    for value in ["trace", "bgtasks=trace", "debug,bgtasks::trace=off"] {
        let mut server = Server::start_with_env(&[], &[("RUST_LOG", value)]);
        let id = server.submit("0s");
        server.wait_done(&id);
        // Logged (at debug, which each value turns on) by the worker
        // itself: the trace, were it on, would have shown its polls by then.
        server.wait_log("attempt 1 ended");
        let log = server.log();
        assert!(
            !log.contains("poll default-worker#"),
            "RUST_LOG={value} traced the executor:\n{log}"
        );
    }
}
