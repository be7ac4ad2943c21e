//! SPEC §2, §7, §8 and §11 together: a submission refused by the check
//! made under the store lock is answered while an `/events` stream is open
//! (issue 24: the refusal used to take the lock a second time to tell the
//! stream, and the server hung). Each path to that check has its test:
//! a paused queue, an `Idempotency-Key`, a `run_at` already past, tasks
//! waiting for room (delayed tasks and retries that came due), and, with
//! `--data-dir`, a worker waiting for its task's record to reach the disk.
//! After each, the server still answers `/healthz` and stops on SIGTERM.

mod common;

use common::{EventStream, Server, TempDir, post_request, read_response};
use rustix::process::Signal;
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest an answer may take: a liveness bound, thousands of times
/// what a refusal takes (well under a millisecond), so that a server that
/// hangs fails the test instead of hanging it.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The original server's answer to a full queue.
const BUSY: &str = r#"{"error": "workers are busy, try again later"}"#;

/// Sends `request` on a new connection and reads its answer, failing the
/// test if none comes within [`ANSWER_WITHIN`].
fn ask(server: &Server, request: &str) -> common::Response {
    let mut stream = server.connect();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream)
        .unwrap_or_else(|| panic!("no answer within {ANSWER_WITHIN:?}: the server hangs"))
}

/// Opens an `/events` stream and reads its first `stats` event, so that
/// the stream is subscribed before the test goes on.
fn subscribe(server: &Server) -> EventStream {
    let mut stream = server.events("");
    stream.until("stats");
    stream
}

/// Submits `body` with `headers` until a submission is refused; returns
/// the refusal, which must be the full queue's `503`.
fn refused(server: &Server, headers: &[&str], body: &Value) -> common::Response {
    for _ in 0..20 {
        let r = ask(server, &post_request("/tasks", headers, &body.to_string()));
        match r.status {
            202 => continue,
            503 => {
                assert_eq!(r.text(), BUSY);
                assert_eq!(r.header("retry-after"), Some("60"));
                return r;
            }
            _ => panic!("{body}: {r:?}"),
        }
    }
    panic!("{body}: twenty submissions and no refusal");
}

/// Checks that the server still answers `/healthz`, then stops it with
/// SIGTERM and checks that it exits 0.
fn answers_and_stops(mut server: Server, stream: EventStream) {
    let r = ask(&server, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let (code, _) = server.stop(Signal::TERM);
    assert_eq!(code, Some(0), "{}", server.log());
    drop(stream);
}

/// Returns the time, ms since the epoch.
fn now_millis() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since.as_millis() as i64
}

#[test]
fn a_paused_full_queue_refuses_while_a_stream_is_open() {
    // The issue's reproduction: the worker holds the first task, the
    // second waits in the channel, and the third finds the queue full by
    // its count, under the lock (the channel has room).
    let server = Server::start(&["--workers", "1", "--buffer", "2", "--threads", "2"]);
    let stream = subscribe(&server);
    assert_eq!(server.post("/queues/default/pause", "").status, 200);
    refused(&server, &[], &json!({"work_duration": "1s"}));
    answers_and_stops(server, stream);
}

#[test]
fn a_keyed_submission_to_a_full_queue_refuses_while_a_stream_is_open() {
    // A keyed request skips the refusal made without the lock: it may
    // repeat a retained task.
    let server = Server::start(&[
        "--workers",
        "1",
        "--buffer",
        "1",
        "--threads",
        "2",
        "--grace",
        "1s",
    ]);
    let stream = subscribe(&server);
    server.fill(1);
    let body = json!({"work_duration": "1s"});
    refused(&server, &["Idempotency-Key: k-1"], &body);
    // The key was not used up: the same request is refused again, not
    // answered as a repeat.
    refused(&server, &["Idempotency-Key: k-1"], &body);
    answers_and_stops(server, stream);
}

#[test]
fn a_run_at_already_past_into_a_full_queue_refuses_while_a_stream_is_open() {
    // A task with a `run_at` skips the refusal made without the lock: it
    // may need no room; one whose time has passed does.
    let server = Server::start(&[
        "--workers",
        "1",
        "--buffer",
        "1",
        "--threads",
        "2",
        "--grace",
        "1s",
    ]);
    let stream = subscribe(&server);
    server.fill(1);
    let body = json!({"work_duration": "1s", "run_at": "2020-01-01T00:00:00Z"});
    refused(&server, &[], &body);
    answers_and_stops(server, stream);
}

#[test]
fn a_delayed_task_waiting_for_room_fills_the_queue_and_refuses_while_a_stream_is_open() {
    // A delayed task that comes due in a paused queue waits for room,
    // counted in the queue but not in its channel: the channel has room,
    // so only the check under the lock finds the queue full.
    let server = Server::start(&["--workers", "1", "--buffer", "1", "--threads", "2"]);
    let stream = subscribe(&server);
    assert_eq!(server.post("/queues/default/pause", "").status, 200);
    let r = server.post("/tasks", r#"{"work_duration": "1s", "delay": "50ms"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    let delayed = r.json()["id"].as_str().unwrap().to_string();
    server.wait_state(&delayed, "queued");
    let r = ask(
        &server,
        &post_request("/tasks", &[], r#"{"work_duration": "1s"}"#),
    );
    assert_eq!((r.status, r.text()), (503, BUSY.to_string()));
    answers_and_stops(server, stream);
}

#[test]
fn a_retry_waiting_for_room_fills_the_queue_and_refuses_while_a_stream_is_open() {
    // A failed attempt's retry comes due in a paused queue and waits for
    // room there. When it has come due is not something a client can see
    // (the task is `queued` before and after), so the submissions go on
    // until one is refused: by then the retry, or a task the paused
    // worker holds, fills the queue while its channel has room.
    let server = Server::start(&["--workers", "1", "--buffer", "1", "--threads", "2"]);
    let stream = subscribe(&server);
    let r = server.post(
        "/tasks",
        r#"{"work_duration": "1h", "timeout": "10ms", "max_attempts": 2}"#,
    );
    assert_eq!(r.status, 202, "{r:?}");
    let failing = r.json()["id"].as_str().unwrap().to_string();
    let task = common::eventually("the first attempt to fail", || {
        let task = server.task(&failing);
        (task["retry_at"] != Value::Null).then_some(task)
    });
    assert_eq!(server.post("/queues/default/pause", "").status, 200);
    let retry_at = common::epoch_millis(&task["retry_at"]);
    common::eventually("the retry to come due", || {
        (now_millis() > retry_at).then_some(())
    });
    refused(&server, &[], &json!({"work_duration": "1s"}));
    answers_and_stops(server, stream);
}

#[test]
fn a_worker_waiting_for_the_disk_fills_the_queue_and_refuses_while_a_stream_is_open() {
    // With a journal, a worker that took a task waits for its record to be
    // on disk before it begins it: meanwhile the task still counts in the
    // queue while the channel has room. Four clients submitting tasks that
    // take no time find the queue in that state again and again.
    let dir = TempDir::new("refusals-disk");
    let data = dir.arg("data");
    let server = Server::start(&[
        "--workers",
        "1",
        "--buffer",
        "1",
        "--threads",
        "2",
        "--data-dir",
        &data,
    ]);
    let stream = subscribe(&server);
    let refusals: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut refusals = 0;
                    for _ in 0..100 {
                        let request = post_request("/tasks", &[], r#"{"work_duration": "0s"}"#);
                        let r = ask(&server, &request);
                        match r.status {
                            202 => {}
                            503 => {
                                assert_eq!(r.text(), BUSY);
                                refusals += 1;
                            }
                            _ => panic!("{r:?}"),
                        }
                    }
                    refusals
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    assert!(refusals > 0, "400 submissions and no refusal");
    answers_and_stops(server, stream);
}
