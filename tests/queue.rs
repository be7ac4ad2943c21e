//! SPEC §2: queueing tasks (the original route and its alias), atomic
//! admission, server-made ids, and status polling.

mod common;

use common::{Server, epoch_millis, eventually};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn the_original_route_answers_like_the_go_server() {
    let server = Server::start(&[]);
    let r = server.post(
        "/queue-task",
        r#"{"task_id": "hello world", "work_duration": "60s"}"#,
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let expected = format!(
        r#"{{"status": "task queued successfully", "id": "{id}", "task_id": "hello world", "state": "queued"}}"#
    );
    assert_eq!(r.text(), expected);
    assert_eq!(r.header("location"), Some(format!("/tasks/{id}").as_str()));
}

#[test]
fn bad_bodies_get_the_original_400_bodies() {
    let server = Server::start(&[]);
    let body_error = r#"{"error": "failed to read POST body"}"#;
    let duration_error = r#"{"error": "failed to parse work duration in request"}"#;
    let cases = [
        ("", body_error),
        ("nope", body_error),
        ("[\"t\", \"1s\"]", body_error),
        ("\"1s\"", body_error),
        (r#"{"task_id": 5, "work_duration": "1s"}"#, body_error),
        (r#"{"task_id": "t", "work_duration": 5}"#, body_error),
        (r#"{"task_id": "t", "work_duration": "1s"} {}"#, body_error),
        (r#"{"task_id": "t", "work_duration": "1s""#, body_error),
        (
            r#"{"task_id": "t", "task_id": "u", "work_duration": "1s"}"#,
            body_error,
        ),
        (
            r#"{"task_id": "t", "max_attempts": "3", "work_duration": "1s"}"#,
            body_error,
        ),
        (r#"{"task_id": "t"}"#, duration_error),
        (r#"{"task_id": "t", "work_duration": null}"#, duration_error),
        (r#"{"task_id": "t", "work_duration": ""}"#, duration_error),
        (
            r#"{"task_id": "t", "work_duration": "abc"}"#,
            duration_error,
        ),
        (r#"{"task_id": "t", "work_duration": "10"}"#, duration_error),
        (
            r#"{"task_id": "t", "work_duration": "-1s"}"#,
            duration_error,
        ),
        (r#"{"task_id": "t", "work_duration": "1d"}"#, duration_error),
        (
            r#"{"task_id": "t", "work_duration": "2562047h47m16.854775808s"}"#,
            duration_error,
        ),
    ];
    // On /tasks an array is a batch (SPEC §15): its first item is the
    // submission that is not one.
    let first_item_error = r#"{"error": "failed to read POST body", "index": 0}"#;
    for (body, expected) in cases {
        for path in ["/queue-task", "/tasks"] {
            let expected = match (path, body.starts_with('[')) {
                ("/tasks", true) => first_item_error,
                _ => expected,
            };
            let r = server.post(path, body);
            assert_eq!(
                (r.status, r.text().as_str()),
                (400, expected),
                "{path} {body:?}"
            );
        }
    }
    // A request with no length has an empty body (RFC 9112 §6.3).
    let r = server.raw(b"POST /queue-task HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (400, body_error));
    // Nothing was queued by any of them.
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 0.0);
}

#[test]
fn null_members_count_as_absent_and_unknown_members_are_ignored() {
    let server = Server::start(&[]);
    let r = server.post(
        "/tasks",
        r#"{"task_id": null, "work_duration": "0s", "colour": [1, 2], "kind": null}"#,
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["task_id"], serde_json::Value::Null);
    let task = server.wait_state(r.json()["id"].as_str().unwrap(), "succeeded");
    assert_eq!(task["kind"], "sleep");
    // The largest duration Go accepts is accepted (and echoed as sent).
    let r = server.post("/tasks", r#"{"work_duration": "2562047h47m16.854775807s"}"#);
    assert_eq!(r.status, 202);
    let task = server.task(r.json()["id"].as_str().unwrap());
    assert_eq!(task["work_duration"], "2562047h47m16.854775807s");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = Server::start(&["--workers", "1", "--buffer", "1"]);
    server.fill(1);
    let r = server.post("/queue-task", r#"{"task_id": "x", "work_duration": "60s"}"#);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(
        r.text(),
        r#"{"error": "workers are busy, try again later"}"#
    );
    assert_eq!(server.metric("bgtasks_tasks_rejected_total"), 1.0);
}

#[test]
fn admission_is_atomic_under_200_concurrent_clients() {
    let buffer = 10;
    let server = Server::start(&["--workers", "1", "--buffer", &buffer.to_string()]);
    let running = server.submit("60s");
    server.wait_state(&running, "running");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..200)
            .map(|i| {
                let (server, barrier) = (&server, barrier.clone());
                scope.spawn(move || {
                    let mut stream = server.connect();
                    let request = common::post_request(
                        "/queue-task",
                        &[],
                        &format!(r#"{{"task_id": "c{i}", "work_duration": "60s"}}"#),
                    );
                    barrier.wait();
                    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
                    let r = common::read_response(&mut stream).unwrap();
                    let id =
                        (r.status == 202).then(|| r.json()["id"].as_str().unwrap().to_string());
                    (r.status, id)
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let accepted: Vec<_> = results.iter().filter_map(|(_, id)| id.clone()).collect();
    let refused = results.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(accepted.len(), buffer, "{results:?}");
    assert_eq!(refused, 200 - buffer);
    // Nothing half-created: exactly the accepted tasks exist, all queued.
    let list = server.get("/tasks?limit=1000").json();
    assert_eq!(list["counts"]["queued"], buffer);
    assert_eq!(list["counts"]["running"], 1);
    let listed: HashSet<_> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), buffer + 1);
    assert!(accepted.iter().all(|id| listed.contains(id)));
    assert_eq!(
        server.metric("bgtasks_queue_depth{queue=\"default\"}"),
        buffer as f64
    );
    assert_eq!(
        server.metric("bgtasks_tasks_accepted_total"),
        (buffer + 1) as f64
    );
    assert_eq!(
        server.metric("bgtasks_tasks_rejected_total"),
        (200 - buffer) as f64
    );
}

/// Checks the form of a server-made id: nine characters of `[-0-9A-Za-z_]`.
fn assert_id_form(id: &str) {
    assert_eq!(id.len(), 9, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{id}"
    );
}

#[test]
fn ids_are_unique_url_safe_and_sort_in_creation_order_across_restarts() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let server = Server::start(&["--buffer", "1000"]);
        for _ in 0..100 {
            let r = server.post("/tasks", r#"{"work_duration": "0s"}"#);
            assert_eq!(r.status, 202);
            ids.push(r.json()["id"].as_str().unwrap().to_string());
        }
    }
    ids.iter().for_each(|id| assert_id_form(id));
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted, ids,
        "ids must be unique and increase in creation order"
    );
}

/// Tells whether a value is an RFC 3339 UTC timestamp with milliseconds.
fn is_timestamp(v: &serde_json::Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn a_task_moves_from_queued_to_running_to_succeeded() {
    let server = Server::start(&["--workers", "1"]);
    let blocker = server.submit("60s");
    server.wait_state(&blocker, "running");
    let r = server.post(
        "/tasks",
        r#"{"task_id": "hello world", "work_duration": "300ms"}"#,
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let queued = server.task(&id);
    assert_eq!(queued["state"], "queued");
    assert_eq!(queued["attempt"], 0);
    assert_eq!(queued["max_attempts"], 1);
    assert_eq!(queued["task_id"], "hello world");
    assert_eq!(queued["kind"], "sleep");
    assert_eq!(queued["work_duration"], "300ms");
    assert!(is_timestamp(&queued["created_at"]), "{queued}");
    for absent in ["started_at", "finished_at", "retry_at", "error", "result"] {
        assert!(queued[absent].is_null(), "{absent}: {queued}");
    }
    // Free the worker: cancel the blocker.
    assert_eq!(server.cancel(&blocker).status, 200);
    let running = server.wait_state(&id, "running");
    assert_eq!(running["attempt"], 1);
    assert!(
        is_timestamp(&running["started_at"]) && running["finished_at"].is_null(),
        "{running}"
    );
    let done = server.wait_state(&id, "succeeded");
    assert!(is_timestamp(&done["finished_at"]), "{done}");
    let ms = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    assert!(ms(&done["created_at"]) <= ms(&done["started_at"]));
    assert!(ms(&done["started_at"]) < ms(&done["finished_at"]));
}

#[test]
fn unknown_ids_are_404_and_health_is_200() {
    let server = Server::start(&[]);
    for id in ["nonexistent", "zzzzzzzzz", "---------", "%2e%2e"] {
        let r = server.get(&format!("/tasks/{id}"));
        assert_eq!(r.status, 404, "{id}");
        assert!(r.json()["error"].is_string());
    }
    let r = server.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status": "ok"}"#));
}

#[test]
fn polling_sees_a_task_finish_once_its_duration_has_passed() {
    let server = Server::start(&[]);
    let submitted = Instant::now();
    let id = server.submit("200ms");
    let done = eventually("the task to finish", || {
        let task = server.task(&id);
        (task["state"] == "succeeded").then_some(task)
    });
    let seen = submitted.elapsed();
    // By the server's own clock the sleep lasted its duration.
    let ran = epoch_millis(&done["finished_at"]) - epoch_millis(&done["started_at"]);
    assert!(ran >= 200, "{done}");
    // Polling saw it no sooner, and (liveness) long before a sleep of the
    // wrong unit would have ended.
    assert!(
        seen >= Duration::from_millis(200) && seen < Duration::from_secs(10),
        "{seen:?}"
    );
}
