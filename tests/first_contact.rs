//! Issue 12, "First contact": what a new user trips over first — `HEAD`
//! (SPEC §2 "Other answers" and "Auth"), an `Idempotency-Key` reused with
//! a different request (§2 "Queue a task"), `RUST_LOG` values meant for
//! other programs (§1), a handler's stderr in the one-line log, and
//! `GET /tasks/`.

mod common;

use common::{Response, Server, TempDir, eventually, read_response};
use rustix::process::Signal;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// The token of the servers started with `--token`.
const TOKEN: &str = "s3cret-token";

/// Builds a request head for `method path`, with `Authorization` when
/// `token` is given.
fn request(method: &str, path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n")
}

/// Returns a response's headers without `Date`, which may differ between
/// two answers a second apart.
fn headers_but_date(r: &Response) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .cloned()
        .collect()
}

/// Sends `HEAD path` with `GET /healthz` pipelined behind it on the same
/// connection, reads the `HEAD` answer's head, then the next answer, which
/// must be the health check's: had the `HEAD` answer carried a body, the
/// next bytes would be that body, not a status line.
fn head_then_health(server: &Server, path: &str, token: Option<&str>) -> Response {
    let mut stream = server.connect();
    let both = request("HEAD", path, token) + &request("GET", "/healthz", None);
    stream.write_all(both.as_bytes()).unwrap();
    let head = common::read_head(&mut stream).expect("a response head");
    let next = read_response(&mut stream).expect("the pipelined answer");
    assert_eq!(
        (next.status, next.text()),
        (200, r#"{"status": "ok"}"#.to_string()),
        "HEAD {path}: the bytes after its head are not the next answer"
    );
    head
}

/// Checks that `HEAD path` answers exactly what `GET path` answers, minus
/// the body: same status, same headers but `Date`, `Content-Length` the
/// GET body's length. The `HEAD` is sandwiched between two `GET`s; when
/// the two differ in length (a `/metrics` counter gained a digit in
/// between), it is tried again. Returns the `HEAD` answer.
fn assert_head_like_get(server: &Server, path: &str, token: Option<&str>) -> Response {
    let get = |server: &Server| server.raw(request("GET", path, token).as_bytes());
    let (get, head) = eventually(&format!("two equal GET {path} around a HEAD"), || {
        let before = get(server);
        let head = head_then_health(server, path, token);
        let after = get(server);
        (before.status == after.status && before.body.len() == after.body.len())
            .then_some((after, head))
    });
    assert_eq!(head.status, get.status, "HEAD {path}");
    assert_eq!(
        headers_but_date(&head),
        headers_but_date(&get),
        "HEAD {path}"
    );
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "HEAD {path}"
    );
    head
}

/// Starts a server with a finished task and a running one; returns the
/// server and the two ids.
fn server_with_tasks(args: &[&str], token: Option<&str>) -> (Server, String, String) {
    let server = Server::start(args);
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    let submit = |duration: &str| {
        let body = format!(r#"{{"task_id": "probe", "work_duration": "{duration}"}}"#);
        let r = server.post_with("/tasks", &headers, &body);
        assert_eq!(r.status, 202, "{r:?}");
        r.json()["id"].as_str().unwrap().to_string()
    };
    let (done, running) = (submit("0s"), submit("60s"));
    let state = |id: &str| {
        let r = server.raw(request("GET", &format!("/tasks/{id}"), token).as_bytes());
        r.json()["state"].as_str().unwrap().to_string()
    };
    eventually("the tasks to settle", || {
        (state(&done) == "succeeded" && state(&running) == "running").then_some(())
    });
    (server, done, running)
}

/// The paths of every route that answers `GET`.
fn get_routes(done: &str, running: &str) -> Vec<String> {
    vec![
        "/tasks".to_string(),
        "/tasks/".to_string(),
        "/tasks?state=running&limit=5".to_string(),
        format!("/tasks/{done}"),
        format!("/tasks/{running}"),
        format!("/tasks/{done}?wait=30s"),
        "/healthz".to_string(),
        "/metrics".to_string(),
    ]
}

#[test]
fn head_answers_every_get_route_with_the_get_head_and_no_body() {
    let (server, done, running) = server_with_tasks(&[], None);
    for path in get_routes(&done, &running) {
        let head = assert_head_like_get(&server, &path, None);
        assert_eq!(head.status, 200, "HEAD {path}");
    }
    // A path that names no task still answers like its GET: 404 from both.
    let head = assert_head_like_get(&server, "/tasks/nosuchtask", None);
    assert_eq!(head.status, 404);
}

#[test]
fn head_with_a_token_needs_it_except_on_healthz() {
    let (server, done, running) = server_with_tasks(&["--token", TOKEN], Some(TOKEN));
    for path in get_routes(&done, &running) {
        let without = assert_head_like_get(&server, &path, None);
        if path == "/healthz" {
            assert_eq!(without.status, 200, "HEAD {path} needs no token");
        } else {
            assert_eq!(without.status, 401, "HEAD {path} without the token");
            assert_eq!(without.header("www-authenticate"), Some("Bearer"));
        }
        let wrong = assert_head_like_get(&server, &path, Some("not-the-token"));
        assert_eq!(wrong.status, without.status, "HEAD {path}, wrong token");
        let with = assert_head_like_get(&server, &path, Some(TOKEN));
        assert_eq!(with.status, 200, "HEAD {path} with the token");
        assert_eq!(with.header("www-authenticate"), None);
    }
}

#[test]
fn head_with_wait_on_a_running_task_answers_at_once() {
    for token in [None, Some(TOKEN)] {
        let args: &[&str] = if token.is_some() {
            &["--token", TOKEN]
        } else {
            &[]
        };
        let (server, _, running) = server_with_tasks(args, token);
        let path = format!("/tasks/{running}");
        let get = server.raw(request("GET", &path, token).as_bytes());
        let started = Instant::now();
        let head = head_then_health(&server, &format!("{path}?wait=30s"), token);
        let took = started.elapsed();
        // Liveness only: a GET would wait the whole 30 s on a running task.
        assert!(
            took < Duration::from_secs(10),
            "HEAD ?wait=30s took {took:?}"
        );
        assert_eq!(head.status, 200);
        assert_eq!(headers_but_date(&head), headers_but_date(&get));
        let now = server.raw(request("GET", &path, token).as_bytes());
        assert_eq!(now.json()["state"], "running");
    }
}

#[test]
fn head_on_a_post_only_route_is_405_with_allow_post() {
    let (server, done, _) = server_with_tasks(&[], None);
    for path in ["/queue-task".to_string(), format!("/tasks/{done}/cancel")] {
        let head = assert_head_like_get(&server, &path, None);
        assert_eq!(head.status, 405, "HEAD {path}");
        assert_eq!(head.header("allow"), Some("POST"), "HEAD {path}");
    }
}

/// The idempotency key every request of the idempotency tests carries.
const KEY: &str = "Idempotency-Key: order-17";

/// The body of the first request with [`KEY`].
const FIRST: &str = r#"{"task_id": "a", "work_duration": "0s"}"#;

/// The exact answer to a key reused with a different request.
const REUSED: &str = r#"{"error": "this Idempotency-Key was used with a different request"}"#;

/// Checks what a server that accepted [`FIRST`] as task `id` answers to
/// the same key: the identical request (also to `/tasks/`, which is
/// `/tasks`) is the `200` replay, a different body or the other route a
/// `422` that creates nothing.
fn assert_key_answers(server: &Server, id: &str) {
    for path in ["/tasks", "/tasks/"] {
        let again = server.post_with(path, &[KEY], FIRST);
        assert_eq!(again.status, 200, "identical repeat to {path}: {again:?}");
        assert_eq!(again.json()["id"], id);
        assert_eq!(again.json()["task_id"], "a");
        assert_eq!(again.header("location"), Some(&*format!("/tasks/{id}")));
    }
    let different = [
        ("/tasks", r#"{"task_id": "b", "work_duration": "0s"}"#),
        // The same JSON value in other bytes is a different body.
        ("/tasks", r#"{"task_id":"a","work_duration":"0s"}"#),
        ("/queue-task", FIRST),
    ];
    for (path, body) in different {
        let r = server.post_with(path, &[KEY], body);
        assert_eq!(r.status, 422, "{path} {body}: {r:?}");
        assert_eq!(r.text(), REUSED, "{path} {body}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("location"), None);
    }
    let list = server.get("/tasks").json();
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id], "nothing but the first task exists");
    let total: u64 = list["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 1, "{}", list["counts"]);
}

#[test]
fn a_key_reused_with_a_different_request_is_422_and_an_identical_one_200() {
    let server = Server::start(&[]);
    let first = server.post_with("/tasks", &[KEY], FIRST);
    assert_eq!(first.status, 202, "{first:?}");
    let id = first.json()["id"].as_str().unwrap().to_string();
    assert_eq!(first.header("location"), Some(&*format!("/tasks/{id}")));
    assert_key_answers(&server, &id);
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 1.0);
    // A key first used on /queue-task is bound to that route as well.
    let other = "Idempotency-Key: original-route";
    let r = server.post_with("/queue-task", &[other], FIRST);
    assert_eq!(r.status, 202, "{r:?}");
    let r2 = server.post_with("/queue-task", &[other], FIRST);
    assert_eq!(
        (r2.status, r2.json()["id"].clone()),
        (200, r.json()["id"].clone())
    );
    let r3 = server.post_with("/tasks", &[other], FIRST);
    assert_eq!((r3.status, r3.text()), (422, REUSED.to_string()));
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 2.0);
}

#[test]
fn a_reused_key_is_still_told_apart_after_a_restart() {
    let dir = TempDir::new("restart");
    let data = dir.arg("data");
    let mut server = Server::start(&["--data-dir", &data]);
    let first = server.post_with("/tasks", &[KEY], FIRST);
    assert_eq!(first.status, 202, "{first:?}");
    let id = first.json()["id"].as_str().unwrap().to_string();
    server.wait_state(&id, "succeeded");
    assert_key_answers(&server, &id);
    assert_eq!(server.stop(Signal::TERM).0, Some(0));
    let server = Server::start(&["--data-dir", &data]);
    assert_key_answers(&server, &id);
    // Replayed tasks and answers to a known key are not new tasks.
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 0.0);
}

/// Starts a server with `RUST_LOG` set to `value` and has it run a task
/// whose attempt fails: a task queued and started makes `debug` lines, its
/// failure an `info` line. Returns the server once that `info` line is in
/// its log, and the task's id.
fn failing_task_under(value: &str) -> (Server, String) {
    let mut server = Server::start_with_env(&[], &[("RUST_LOG", value)]);
    let body = r#"{"task_id": "log", "work_duration": "10s", "timeout": "1ms"}"#;
    let r = server.post("/tasks", body);
    assert_eq!(r.status, 202, "RUST_LOG={value}: {r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    server.wait_log(&format!("task {id} attempt 1 failed"));
    (server, id)
}

#[test]
fn rust_log_values_of_other_programs_start_the_server_at_the_level_they_give_bgtasks() {
    // (RUST_LOG, whether bgtasks logs at debug). Every server must start
    // (the harness waits for its `info` "listening on" line, so none of
    // them is at warn or below).
    let cases = [
        ("bgtasks=debug", true),
        ("warn,bgtasks=debug", true),
        ("BGTASKS=Debug", true),
        ("debug/some.*regex", true),
        ("hyper=off", false),
        ("actix_web=info,my_app=debug", false),
        ("info,tokio::net=trace", false),
        ("info/foo", false),
        ("tower_http=debug,axum::rejection=trace", false),
    ];
    for (value, debug) in cases {
        let (mut server, id) = failing_task_under(value);
        if debug {
            server.wait_log(&format!("task {id} queued"));
            server.wait_log(&format!("task {id} attempt 1 started"));
        } else {
            // The worker logs "started" at debug before "failed" at info,
            // so by now a debug level would have shown.
            let log = server.log();
            assert!(
                !log.lines()
                    .any(|l| l.contains("DEBUG [") || l.contains("TRACE [")),
                "RUST_LOG={value} should give info:\n{log}"
            );
        }
    }
}

#[test]
fn a_handler_writing_three_lines_to_stderr_fails_in_one_log_line() {
    let dir = TempDir::new("stderr");
    let script = dir.arg("three-lines.sh");
    std::fs::write(&script, "#!/bin/sh\nprintf 'one\\n\\ntwo\\n' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = Server::start(&["--handler", &format!("lines={script}")]);
    let r = server.post("/tasks", r#"{"kind": "lines"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let task = server.wait_state(&id, "failed");
    assert_eq!(
        task["error"], "one\n\ntwo\n",
        "the status keeps the real newlines"
    );
    let line = server.wait_log(&format!("task {id} attempt 1 failed"));
    assert!(
        line.ends_with(r"failed: one\n\ntwo\n"),
        "escaped in the log line: {line:?}"
    );
    let log = server.log();
    let about: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    assert_eq!(about, [line.as_str()], "one line for the attempt:\n{log}");
    assert!(
        !log.lines().any(|l| l.is_empty() || l == "two"),
        "the handler's lines leaked into the log:\n{log}"
    );
}

#[test]
fn get_tasks_with_a_trailing_slash_is_the_list() {
    let server = Server::start(&[]);
    let ids: Vec<String> = (0..3).map(|_| server.submit("0s")).collect();
    for id in &ids {
        server.wait_state(id, "succeeded");
    }
    let plain = server.get("/tasks");
    let slash = server.get("/tasks/");
    assert_eq!(slash.status, 200, "{slash:?}");
    let body = slash.json();
    for member in ["tasks", "counts", "next"] {
        assert!(body.get(member).is_some(), "no {member} in {body}");
    }
    assert_eq!(body["tasks"].as_array().unwrap().len(), 3);
    assert_eq!(body["next"], Value::Null);
    assert_eq!(slash.text(), plain.text());
    let filtered = server.get("/tasks/?state=succeeded&limit=2");
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.json()["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(filtered.json()["tasks"][0]["id"], ids[2].as_str());
}
