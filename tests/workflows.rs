//! SPEC §13 (tasks that wait for others: `after`, `waiting`, release and
//! cascade) and §14 (`POST /tasks/{id}/retry`, `--keep-finished-for`).

mod common;

use common::{Server, TempDir, eventually, journal_line, read_response};
use rustix::process::Signal;
use serde_json::{Value, json};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Submits `body` (a JSON object) with `"after": after` added.
fn submit_after(server: &Server, body: Value, after: &[&str]) -> common::Response {
    let mut body = body;
    body["after"] = json!(after);
    server.post("/tasks", &body.to_string())
}

/// Submits a `sleep` task labelled `label` of `duration` after `after`;
/// returns its id, having checked the `202` and its `state`.
fn chained(server: &Server, label: &str, duration: &str, after: &[&str], state: &str) -> String {
    let body = json!({"task_id": label, "work_duration": duration});
    let r = submit_after(server, body, after);
    assert_eq!(r.status, 202, "{r:?}");
    let answer = r.json();
    assert_eq!(answer["state"], state, "{answer}");
    answer["id"].as_str().unwrap().to_string()
}

/// Pauses or resumes the `default` queue.
fn set_paused(server: &Server, paused: bool) {
    let action = if paused { "pause" } else { "resume" };
    let r = server.post(&format!("/queues/default/{action}"), "");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Returns the ids `GET /tasks{query}` lists, and its `counts`.
fn listed(server: &Server, query: &str) -> (Vec<String>, Value) {
    let list = server.get(&format!("/tasks{query}")).json();
    let ids = list["tasks"].as_array().unwrap().iter();
    let ids = ids.map(|t| t["id"].as_str().unwrap().to_string()).collect();
    (ids, list["counts"].clone())
}

/// Reads a time member of a status as ms since the epoch.
fn millis(task: &Value, member: &str) -> i64 {
    common::epoch_millis(&task[member])
}

/// `POST /tasks/{id}/retry` with extra header lines.
fn retry(server: &Server, id: &str, headers: &[&str]) -> common::Response {
    server.post_with(&format!("/tasks/{id}/retry"), headers, "")
}

#[test]
fn a_chain_of_three_is_released_in_order() {
    let server = Server::start(&["--workers", "2"]);
    set_paused(&server, true);
    let a = server.submit_labelled("a", "50ms");
    let b = chained(&server, "b", "50ms", &[&a], "waiting");
    let c = chained(&server, "c", "50ms", &[&b], "waiting");
    // A task after one that waits, and one after two.
    let d = chained(&server, "d", "0s", &[&a, &c], "waiting");
    assert_eq!(server.task(&b)["after"], json!([a]));
    assert_eq!(server.task(&d)["after"], json!([a, c]));
    assert_eq!(server.task(&a)["after"], Value::Null);
    assert_eq!(server.task(&a)["retry_of"], Value::Null);
    let (waiting, counts) = listed(&server, "?state=waiting");
    assert_eq!(waiting, [d.clone(), c.clone(), b.clone()]);
    assert_eq!(counts["waiting"], 3, "{counts}");
    assert_eq!(counts["queued"], 1, "{counts}");
    assert_eq!(server.metric("bgtasks_tasks_waiting"), 3.0);
    // A waiting task takes no place in its queue.
    let queues = server.get("/queues").json();
    assert_eq!(queues["queues"][0]["depth"], 1, "{queues}");
    set_paused(&server, false);
    let done: Vec<Value> = [&a, &b, &c, &d]
        .iter()
        .map(|id| server.wait_done(id))
        .collect();
    for task in &done {
        assert_eq!(task["state"], "succeeded", "{task}");
    }
    // Each started only once the one before it had finished.
    for pair in done.windows(2) {
        assert!(
            millis(&pair[1], "started_at") >= millis(&pair[0], "finished_at"),
            "{} started before {} finished",
            pair[1],
            pair[0]
        );
    }
    server.wait_metric("bgtasks_tasks_waiting", 0.0);
}

#[test]
fn a_failure_cancels_the_chain_below_it_with_the_exact_sentences() {
    let server = Server::start(&["--workers", "2", "--handler", "fail=/bin/false"]);
    set_paused(&server, true);
    let r = server.post("/tasks", r#"{"task_id": "a", "kind": "fail"}"#);
    let a = r.json()["id"].as_str().unwrap().to_string();
    let b = chained(&server, "b", "0s", &[&a], "waiting");
    let c = chained(&server, "c", "0s", &[&b], "waiting");
    let other = server.submit_labelled("other", "0s");
    let d = chained(&server, "d", "0s", &[&other, &c], "waiting");
    set_paused(&server, false);
    assert_eq!(server.wait_done(&a)["state"], "failed");
    let b_status = server.wait_done(&b);
    assert_eq!(b_status["state"], "cancelled");
    assert_eq!(b_status["error"], format!("dependency {a} failed"));
    assert_eq!(b_status["attempt"], 0);
    let c_status = server.wait_done(&c);
    assert_eq!(c_status["error"], format!("dependency {b} was cancelled"));
    let d_status = server.wait_done(&d);
    assert_eq!(d_status["state"], "cancelled");
    assert_eq!(d_status["error"], format!("dependency {c} was cancelled"));
    assert_eq!(server.wait_done(&other)["state"], "succeeded");
    // Submitted after its dependency has failed: the same outcome.
    let late = chained(&server, "late", "0s", &[&other, &a], "cancelled");
    let late = server.task(&late);
    assert_eq!(late["error"], format!("dependency {a} failed"));
    assert_eq!(late["after"], json!([other, a]));
    let later = chained(&server, "later", "0s", &[&c], "cancelled");
    assert_eq!(
        server.task(&later)["error"],
        format!("dependency {c} was cancelled")
    );
    // After one that succeeded: queued at once, never waiting.
    let fine = chained(&server, "fine", "0s", &[&other], "queued");
    assert_eq!(server.wait_done(&fine)["state"], "succeeded");
    assert_eq!(server.metric("bgtasks_tasks_waiting"), 0.0);
    let finished = |state: &str| {
        server.metric(&format!(
            "bgtasks_tasks_finished_total{{state=\"{state}\"}}"
        ))
    };
    assert_eq!((finished("failed"), finished("cancelled")), (1.0, 5.0));
}

#[test]
fn cancelling_a_waiting_task_cancels_those_after_it() {
    let server = Server::start(&[]);
    set_paused(&server, true);
    let a = server.submit_labelled("a", "0s");
    let b = chained(&server, "b", "0s", &[&a], "waiting");
    let c = chained(&server, "c", "0s", &[&b], "waiting");
    let r = server.cancel(&b);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["state"], "cancelled");
    let c_status = server.task(&c);
    assert_eq!(c_status["state"], "cancelled");
    assert_eq!(c_status["error"], format!("dependency {b} was cancelled"));
    assert_eq!(server.task(&a)["state"], "queued");
    set_paused(&server, false);
    assert_eq!(server.wait_done(&a)["state"], "succeeded");
    assert_eq!(server.task(&b)["state"], "cancelled");
}

#[test]
fn a_cancel_answers_with_its_task_even_when_its_cascade_evicts_it() {
    let server = Server::start(&["--keep-finished", "2"]);
    let ids = chain(&server, 4);
    let r = server.cancel(&ids[0]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["id"], ids[0]);
    // Kept until the next task finishes; the last two of the cascade stay.
    assert_eq!(server.task(&ids[3])["state"], "cancelled");
    assert_eq!(server.get(&format!("/tasks/{}", ids[1])).status, 410);
}

#[test]
fn every_malformed_after_is_a_400_naming_the_id_and_creates_nothing() {
    let server = Server::start(&["--keep-finished", "1"]);
    let gone = server.submit("0s");
    server.wait_done(&gone);
    let kept = server.submit("0s");
    server.wait_done(&kept);
    assert_eq!(server.get(&format!("/tasks/{gone}")).status, 410);
    // An id of this server's shape that it never issued: the last
    // character of a real one, changed.
    let mut unknown = kept.clone();
    let last = if unknown.ends_with('A') { "B" } else { "A" };
    unknown.replace_range(unknown.len() - 1.., last);
    let too_many: Vec<String> = (0..33).map(|_| kept.clone()).collect();
    let cases: Vec<(Value, String)> = vec![
        (json!([unknown]), unknown.clone()),
        (json!([gone]), gone.clone()),
        (json!([format!("other_{kept}")]), format!("other_{kept}")),
        (json!([kept, kept]), kept.clone()),
        (json!([kept, 7]), "7".into()),
        (json!(["not an id"]), "not an id".into()),
        (json!([]), "after".into()),
        (json!(too_many), "after".into()),
        (json!(kept), "after".into()),
    ];
    let accepted = server.metric("bgtasks_tasks_accepted_total");
    for (after, named) in cases {
        let body = json!({"work_duration": "0s", "after": after});
        let r = server.post("/tasks", &body.to_string());
        assert_eq!(r.status, 400, "{after}: {r:?}");
        let sentence = r.json()["error"].as_str().unwrap().to_string();
        assert!(sentence.contains(&named), "{after}: {sentence}");
    }
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), accepted);
    assert_eq!(listed(&server, "").0, std::slice::from_ref(&kept));
    // `null` is as if absent.
    let r = server.post("/tasks", r#"{"work_duration": "0s", "after": null}"#);
    assert_eq!(r.status, 202, "{r:?}");
}

#[test]
fn max_scheduled_bounds_scheduled_and_waiting_tasks_together() {
    let server = Server::start(&["--workers", "1", "--buffer", "1", "--max-scheduled", "2"]);
    let running = server.fill(1);
    // The queue is full, yet a waiting task is accepted: it takes no place.
    let waiting = chained(&server, "w", "0s", &[&running], "waiting");
    let r = server.post("/tasks", r#"{"work_duration": "0s", "delay": "1h"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    let refused = [
        json!({"work_duration": "0s", "delay": "1h"}),
        json!({"work_duration": "0s", "after": [running]}),
    ];
    for body in &refused {
        let r = server.post("/tasks", &body.to_string());
        assert_eq!(r.status, 503, "{body}: {r:?}");
        assert_eq!(
            r.json()["error"],
            "too many scheduled tasks, try again later"
        );
        assert!(r.header("retry-after").is_some(), "{r:?}");
    }
    // A waiting task cancelled makes room for another.
    assert_eq!(server.cancel(&waiting).status, 200);
    let r = server.post("/tasks", &refused[1].to_string());
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(server.metric("bgtasks_tasks_waiting"), 1.0);
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 1.0);
}

#[test]
fn a_released_task_waits_for_room_in_a_full_queue() {
    let server = Server::start(&["--workers", "1", "--buffer", "1"]);
    set_paused(&server, true);
    let a = server.submit_labelled("a", "0s");
    let b = chained(&server, "b", "0s", &[&a], "waiting");
    let c = chained(&server, "c", "0s", &[&a], "waiting");
    // The queue holds a; its one place is taken. Resuming runs a, which
    // releases b and c into a queue of one place: one waits for room.
    set_paused(&server, false);
    for id in [&a, &b, &c] {
        assert_eq!(server.wait_done(id)["state"], "succeeded");
    }
    let b_status = server.task(&b);
    let c_status = server.task(&c);
    assert!(millis(&c_status, "started_at") >= millis(&b_status, "started_at"));
}

#[test]
fn handlers_get_the_ids_they_run_after() {
    let dir = TempDir::new("workflows-after-env");
    let out = dir.arg("out");
    let handler = dir.script(
        "record",
        &format!(r#"echo "$BGTASKS_TASK_ID ${{BGTASKS_AFTER-unset}}|" >> {out}"#),
    );
    let spec = format!("rec={handler}");
    let server = Server::start(&["--handler", &spec]);
    let run = |after: Option<&[&str]>| {
        let mut body = json!({"kind": "rec"});
        if let Some(after) = after {
            body["after"] = json!(after);
        }
        let r = server.post("/tasks", &body.to_string());
        assert_eq!(r.status, 202, "{r:?}");
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(server.wait_done(&id)["state"], "succeeded");
        id
    };
    let a = run(None);
    let b = run(None);
    let c = run(Some(&[&b, &a]));
    let lines = dir.read("out");
    assert!(lines.contains(&format!("{a} |")), "{lines}");
    assert!(lines.contains(&format!("{c} {b},{a}|")), "{lines}");
}

#[test]
fn events_carry_every_release_and_cascade() {
    let server = Server::start(&[]);
    set_paused(&server, true);
    let a = server.submit_labelled("a", "0s");
    let mut events = server.events("");
    let b = chained(&server, "b", "0s", &[&a], "waiting");
    let c = chained(&server, "c", "0s", &[&b], "waiting");
    let d = chained(&server, "d", "0s", &[&c], "waiting");
    assert_eq!(server.cancel(&c).status, 200);
    set_paused(&server, false);
    server.wait_done(&b);
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let event = events.until("task");
        let id = event.data["id"].as_str().unwrap().to_string();
        seen.push((id, event.data["state"].as_str().unwrap().to_string()));
    }
    let expected = [
        (&b, "waiting"),
        (&c, "waiting"),
        (&d, "waiting"),
        (&c, "cancelled"),
        (&d, "cancelled"),
        (&a, "running"),
        (&a, "succeeded"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(id, state)| (id.to_string(), state.to_string()))
        .collect();
    assert_eq!(seen, expected);
    let next = events.until("task");
    assert_eq!(
        (next.data["id"].as_str(), next.data["state"].as_str()),
        (Some(&*b), Some("queued"))
    );
}

/// Starts a server on `dir` with more flags.
fn start_on(dir: &TempDir, args: &[&str]) -> Server {
    let data = dir.arg("data");
    let mut all = vec!["--data-dir", &data];
    all.extend_from_slice(args);
    Server::start(&all)
}

#[test]
fn waiting_tasks_survive_kill_9_and_run_in_order_after_it() {
    let dir = TempDir::new("workflows-kill");
    let mut server = start_on(&dir, &[]);
    set_paused(&server, true);
    let a = server.submit_labelled("a", "0s");
    let b = chained(&server, "b", "0s", &[&a], "waiting");
    let c = chained(&server, "c", "0s", &[&b, &a], "waiting");
    let x = chained(&server, "x", "0s", &[&c], "waiting");
    assert_eq!(server.cancel(&x).status, 200);
    server.kill();
    let server = start_on(&dir, &[]);
    assert_eq!(server.task(&b)["state"], "waiting");
    assert_eq!(server.task(&c)["after"], json!([b, a]));
    assert_eq!(server.metric("bgtasks_tasks_waiting"), 2.0);
    assert_eq!(server.task(&x)["state"], "cancelled");
    set_paused(&server, false);
    let done: Vec<Value> = [&a, &b, &c].iter().map(|id| server.wait_done(id)).collect();
    for pair in done.windows(2) {
        assert_eq!(pair[1]["state"], "succeeded", "{}", pair[1]);
        assert!(millis(&pair[1], "started_at") >= millis(&pair[0], "finished_at"));
    }
}

#[test]
fn a_dependency_that_ended_while_the_server_was_down_is_honoured_at_start() {
    let dir = TempDir::new("workflows-down");
    // What a journal holds when the server died after writing the end of
    // a task and before writing what that end did to the tasks after it:
    // a1 failed, a2 succeeded; b1 and b2 still wait; c1 waits for b1.
    // b3 waits for a task compacted away (evicted after it succeeded, as
    // the only way a waiting task's dependency leaves the journal).
    let (a1, a2, b1, b2, c1) = (
        1_795_818_360_837_963u64,
        1_795_818_360_837_964u64,
        1_795_818_360_837_965u64,
        1_795_818_360_837_966u64,
        1_795_818_360_837_967u64,
    );
    let (gone, b3) = (1_795_818_360_837_900u64, 1_795_818_360_837_968u64);
    let ended = 1_795_818_361_000u64;
    let records = [
        json!({"op": "new", "id": a1, "task_id": "a1", "work_duration": "0s", "max_attempts": 1}),
        json!({"op": "new", "id": a2, "task_id": "a2", "work_duration": "0s", "max_attempts": 1}),
        json!({"op": "new", "id": b1, "task_id": "b1", "work_duration": "0s", "max_attempts": 1, "state": "waiting", "after": [a2, a1]}),
        json!({"op": "new", "id": b2, "task_id": "b2", "work_duration": "0s", "max_attempts": 1, "state": "waiting", "after": [a2]}),
        json!({"op": "new", "id": c1, "task_id": "c1", "work_duration": "0s", "max_attempts": 1, "state": "waiting", "after": [b1]}),
        json!({"op": "new", "id": b3, "task_id": "b3", "work_duration": "0s", "max_attempts": 1, "state": "waiting", "after": [gone]}),
        json!({"op": "state", "id": a1, "state": "failed", "attempt": 1, "started_at": ended, "finished_at": ended, "error": "boom"}),
        json!({"op": "state", "id": a2, "state": "succeeded", "attempt": 1, "started_at": ended, "finished_at": ended}),
    ];
    std::fs::create_dir_all(dir.path("data")).unwrap();
    let journal: String = records
        .iter()
        .map(|r| journal_line(&r.to_string()))
        .collect();
    std::fs::write(dir.path("data").join("journal"), journal).unwrap();
    let mut server = start_on(&dir, &[]);
    let by_label = |label: &str| {
        let list = server.get(&format!("/tasks?task_id={label}")).json();
        list["tasks"][0]["id"].as_str().unwrap().to_string()
    };
    let (a1, b1, b2, c1) = (
        by_label("a1"),
        by_label("b1"),
        by_label("b2"),
        by_label("c1"),
    );
    let b1_status = server.task(&b1);
    assert_eq!(b1_status["state"], "cancelled");
    assert_eq!(b1_status["error"], format!("dependency {a1} failed"));
    let c1_status = server.task(&c1);
    assert_eq!(c1_status["error"], format!("dependency {b1} was cancelled"));
    assert_eq!(server.wait_done(&b2)["state"], "succeeded");
    assert_eq!(server.wait_done(&by_label("b3"))["state"], "succeeded");
    // What start-up made of them is on disk: the same after a restart.
    server.stop(Signal::TERM);
    let server = start_on(&dir, &[]);
    assert_eq!(server.task(&c1)["state"], "cancelled");
    assert_eq!(server.task(&b2)["state"], "succeeded");
}

/// Sends `POST /tasks` requests one after another on one connection.
struct Submitter(TcpStream);

impl Submitter {
    /// Submits `body`; returns the answer's status and JSON.
    fn submit(&mut self, body: &str) -> (u16, Value) {
        let request = common::post_request("/tasks", &[], body);
        self.0.write_all(request.as_bytes()).unwrap();
        let r = read_response(&mut self.0).expect("an answer");
        (r.status, r.json())
    }
}

/// Builds a chain of `n` tasks, each after the one before, on a paused
/// queue; returns their ids, head first.
fn chain(server: &Server, n: usize) -> Vec<String> {
    set_paused(server, true);
    let mut ids = vec![server.submit_labelled("head", "0s")];
    let mut submitter = Submitter(server.connect());
    while ids.len() < n {
        let body = json!({"work_duration": "0s", "after": [ids.last().unwrap()]});
        let (status, answer) = submitter.submit(&body.to_string());
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    ids
}

#[test]
fn a_chain_of_ten_thousand_is_cancelled_by_its_head() {
    let server = Server::start(&[]);
    let ids = chain(&server, 10_000);
    assert_eq!(server.metric("bgtasks_tasks_waiting"), 9_999.0);
    let r = server.cancel(&ids[0]);
    assert_eq!(r.status, 200, "{r:?}");
    // Every task followed, at once: no stack overflow, one answer.
    let last = server.task(&ids[9_999]);
    assert_eq!(last["state"], "cancelled");
    assert_eq!(
        last["error"],
        format!("dependency {} was cancelled", ids[9_998])
    );
    assert_eq!(server.metric("bgtasks_tasks_waiting"), 0.0);
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
#[ignore = "a benchmark: prints how long a cancel of the head of a 10,000-task chain takes"]
fn bench_cancel_of_the_head_of_a_chain_of_ten_thousand() {
    let server = Server::start(&[]);
    let ids = chain(&server, 10_000);
    let started = Instant::now();
    assert_eq!(server.cancel(&ids[0]).status, 200);
    println!(
        "cancel of the head of a 10,000-task chain answered in {:?} \
         (the store lock is held for the whole cascade)",
        started.elapsed()
    );
}

#[test]
fn a_failed_or_cancelled_task_is_retried_as_a_new_one() {
    let server = Server::start(&["--handler", "fail=/bin/false", "--queue", "side=1"]);
    let body = json!({"task_id": "x", "kind": "fail", "payload": {"n": 1}, "timeout": "5s", "max_attempts": 2, "queue": "side"});
    let r = server.post("/tasks", &body.to_string());
    let old = r.json()["id"].as_str().unwrap().to_string();
    let old_status = server.wait_done(&old);
    assert_eq!(old_status["state"], "failed");
    let r = retry(&server, &old, &[]);
    assert_eq!(r.status, 202, "{r:?}");
    let new = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), Some(&*format!("/tasks/{new}")));
    assert_eq!(r.json()["task_id"], "x");
    let new_status = server.wait_done(&new);
    for member in [
        "task_id",
        "kind",
        "queue",
        "max_attempts",
        "work_duration",
        "after",
    ] {
        assert_eq!(new_status[member], old_status[member], "{member}");
    }
    assert_eq!(new_status["retry_of"], old);
    assert_eq!(new_status["state"], "failed");
    assert_eq!(new_status["attempt"], 2);
    // The old one is unchanged.
    assert_eq!(server.task(&old), old_status);
    // A cancelled task, with those after it, and a run_at: the new task is
    // queued now, after nothing; the dependents stay cancelled.
    set_paused(&server, true);
    let body = json!({"task_id": "y", "work_duration": "0s", "delay": "1h"});
    let y = server.post("/tasks", &body.to_string()).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let z = chained(&server, "z", "0s", &[&y], "waiting");
    assert_eq!(server.cancel(&y).status, 200);
    let r = retry(&server, &y, &[]);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["state"], "queued");
    let y2 = r.json()["id"].as_str().unwrap().to_string();
    let y2_status = server.task(&y2);
    assert_eq!(
        (y2_status["run_at"].clone(), y2_status["after"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(server.task(&z)["state"], "cancelled");
    set_paused(&server, false);
    assert_eq!(server.wait_done(&y2)["state"], "succeeded");
}

#[test]
fn retry_answers_409_404_410_and_503_as_a_submission_would() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--buffer",
        "1",
        "--keep-finished",
        "2",
        "--handler",
        "fail=/bin/false",
    ]);
    let done = server.submit("0s");
    server.wait_done(&done);
    let r = retry(&server, &done, &[]);
    assert_eq!(r.status, 409, "{r:?}");
    let conflict = r.json();
    assert_eq!(conflict["state"], "succeeded");
    assert_eq!(conflict["id"], done);
    assert!(
        conflict["error"].as_str().unwrap().contains("succeeded"),
        "{conflict}"
    );
    // Unknown, and of a malformed id.
    let mut unknown = done.clone();
    let last = if unknown.ends_with('A') { "B" } else { "A" };
    unknown.replace_range(unknown.len() - 1.., last);
    assert_eq!(retry(&server, &unknown, &[]).status, 404);
    assert_eq!(retry(&server, "nope", &[]).status, 404);
    let r = server.post("/tasks", r#"{"kind": "fail"}"#);
    let failed = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_done(&failed)["state"], "failed");
    // Tasks not yet ended, and a full queue.
    let running = server.fill(1);
    assert_eq!(retry(&server, &running, &[]).status, 409);
    let queued = listed(&server, "?state=queued").0.remove(0);
    let r = retry(&server, &queued, &[]);
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.json()["state"], "queued");
    let r = retry(&server, &failed, &[]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "workers are busy, try again later");
    assert!(r.header("retry-after").is_some());
    // Evicted: two newer tasks finish.
    assert_eq!(server.cancel(&queued).status, 200);
    assert_eq!(server.cancel(&running).status, 200);
    assert_eq!(retry(&server, &failed, &[]).status, 410);
    assert_eq!(server.get(&format!("/tasks/{done}/retry")).status, 405);
}

#[test]
fn an_idempotency_key_makes_one_retry_of_many_requests() {
    let server = Server::start(&[]);
    set_paused(&server, true);
    let a = server.submit("0s");
    let b = server.submit("0s");
    assert_eq!(server.cancel(&a).status, 200);
    assert_eq!(server.cancel(&b).status, 200);
    let key = ["Idempotency-Key: retry-a"];
    let first = retry(&server, &a, &key);
    assert_eq!(first.status, 202, "{first:?}");
    let again = retry(&server, &a, &key);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.header("location"), first.header("location"));
    // The same key for another task's retry, or a submission, is misused.
    assert_eq!(retry(&server, &b, &key).status, 422);
    let r = server.post_with("/tasks", &key, r#"{"work_duration": "0s"}"#);
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(listed(&server, "?state=queued").0.len(), 1);
}

#[test]
fn finished_tasks_are_evicted_by_age() {
    let server = Server::start(&["--keep-finished-for", "2s"]);
    let kept_for = Duration::from_secs(2);
    let a = server.submit("0s");
    let finished = Instant::now();
    let status = server.wait_done(&a);
    let running = server.submit("60s");
    // Still there while younger than 2 s (if this machine was quick
    // enough to look in time).
    let r = server.get(&format!("/tasks/{a}"));
    if finished.elapsed() < kept_for {
        assert_eq!(r.status, 200, "{r:?}");
    }
    eventually("the task to be evicted", || {
        (server.get(&format!("/tasks/{a}")).status == 410).then_some(())
    });
    // Not before its time: the eviction came at least 2 s after it ended.
    let evicted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(evicted_at >= millis(&status, "finished_at") + 2_000);
    // Unfinished tasks are never evicted by age.
    server.wait_state(&running, "running");
}

#[test]
fn eviction_by_age_goes_on_after_a_restart() {
    let dir = TempDir::new("workflows-keep-for");
    let mut server = start_on(&dir, &["--keep-finished-for", "3s"]);
    let a = server.submit("0s");
    server.wait_done(&a);
    let b = server.submit("60s");
    server.kill();
    // A run without the flag keeps it; a run with it evicts what the last
    // one finished, in its time.
    let server = start_on(&dir, &[]);
    assert_eq!(server.task(&a)["state"], "succeeded");
    drop(server);
    let server = start_on(&dir, &["--keep-finished-for", "3s"]);
    eventually("the task to be evicted", || {
        (server.get(&format!("/tasks/{a}")).status == 410).then_some(())
    });
    server.wait_state(&b, "running");
}

#[test]
fn keep_finished_for_is_checked_at_start() {
    let server = Server::start(&["--keep-finished-for", "1h30m"]);
    assert_eq!(server.get("/healthz").status, 200);
    let help = common::command(&["--help"], &[], &[]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--keep-finished-for DURATION"), "{help}");
    for bad in ["0s", "soon", "-1s"] {
        let out = common::command(&["--keep-finished-for", bad], &[], &[])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--keep-finished-for"), "{err}");
    }
}

#[test]
#[ignore = "a benchmark: prints how late eviction by age comes"]
fn bench_lateness_of_eviction_by_age() {
    const TASKS: usize = 50;
    let server = Server::start(&["--keep-finished-for", "1s"]);
    let ids: Vec<String> = (0..TASKS).map(|_| server.submit("0s")).collect();
    let ends: Vec<i64> = ids
        .iter()
        .map(|id| millis(&server.wait_done(id), "finished_at") + 1_000)
        .collect();
    let now = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.unwrap().as_millis() as i64
    };
    let mut late = Vec::new();
    for (id, due) in ids.iter().zip(ends) {
        let seen = eventually("the eviction", || {
            (server.get(&format!("/tasks/{id}")).status == 410).then(now)
        });
        late.push(Duration::from_millis((seen - due).max(0) as u64));
    }
    println!(
        "eviction by age, {TASKS} tasks, --keep-finished-for 1s: lateness as seen by a \
         client polling every 5 ms (poll included): {}",
        common::spread(&mut late)
    );
}
