//! SPEC §7 and §8: named queues with their own workers and capacity,
//! pause and resume, delayed tasks (`run_at`, `delay`) and their limits,
//! and both across restarts.

mod common;

use common::{Response, Server, TempDir, command, eventually, read_response};
use rustix::process::Signal;
use serde_json::{Value, json};
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The body of a full queue's `503`, as the original server sent it.
const BUSY: &str = r#"{"error": "workers are busy, try again later"}"#;

/// Checks that a submission was accepted with `state`; returns the id.
fn accepted(r: &Response, state: &str) -> String {
    assert_eq!(r.status, 202, "{r:?}");
    let body = r.json();
    assert_eq!(body["state"], state, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// Submits a JSON body to `POST /tasks`, expects a `202` with `state`, and
/// returns the id.
fn submit(server: &Server, body: Value, state: &str) -> String {
    accepted(&server.post("/tasks", &body.to_string()), state)
}

/// Long-polls a task for `wait`; returns its status and how long the
/// answer took.
fn long_poll(server: &Server, id: &str, wait: &str) -> (Value, Duration) {
    let started = Instant::now();
    let r = server.get(&format!("/tasks/{id}?wait={wait}"));
    assert_eq!(r.status, 200, "{r:?}");
    (r.json(), started.elapsed())
}

/// Returns the ids listed by `GET path`, newest first.
fn listed(server: &Server, path: &str) -> Vec<String> {
    let r = server.get(path);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// Returns the time now, in ms since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Returns the days since 1970-01-01 of a civil date, counted the slow
/// way (year by year, month by month), independently of the server's
/// closed formula.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = |y: i64, m: i64| match m {
        2 if leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let years: i64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
    let months: i64 = (1..month).map(|m| month_days(year, m)).sum();
    years + months + day - 1
}

/// Reads a server timestamp (`2026-11-27T20:00:00.123Z`, the only form the
/// server writes) as ms since the epoch.
fn millis(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    let b = text.as_bytes();
    assert!(
        b.len() == 24 && b[10] == b'T' && b[19] == b'.' && b[23] == b'Z',
        "{text:?} is not in the server's timestamp form"
    );
    let n = |from: usize, to: usize| text[from..to].parse::<i64>().unwrap();
    let days = days_since_epoch(n(0, 4), n(5, 7), n(8, 10));
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

/// Writes `ms` since the epoch as RFC 3339 with three fractional digits,
/// in the given offset from UTC (in minutes; 0 writes `Z`).
fn rfc3339(ms: i64, offset_minutes: i64) -> String {
    let local = ms + offset_minutes * 60_000;
    let (mut days, rest) = (local.div_euclid(86_400_000), local.rem_euclid(86_400_000));
    let mut year = 1970;
    while days >= days_since_epoch(year + 1, 1, 1) - days_since_epoch(year, 1, 1) {
        days -= days_since_epoch(year + 1, 1, 1) - days_since_epoch(year, 1, 1);
        year += 1;
    }
    let mut month = 1;
    while month < 12
        && days >= days_since_epoch(year, month + 1, 1) - days_since_epoch(year, month, 1)
    {
        days -= days_since_epoch(year, month + 1, 1) - days_since_epoch(year, month, 1);
        month += 1;
    }
    let (h, m, s, f) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    let zone = match offset_minutes {
        0 => "Z".to_string(),
        o => format!(
            "{}{:02}:{:02}",
            if o < 0 { '-' } else { '+' },
            o.abs() / 60,
            o.abs() % 60
        ),
    };
    format!(
        "{year:04}-{month:02}-{:02}T{h:02}:{m:02}:{s:02}.{f:03}{zone}",
        days + 1
    )
}

#[test]
fn the_timestamp_helpers_agree_with_known_dates() {
    // Known instants, checked against `date -u -d @SECONDS`.
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400_000, 0), "2000-02-29T00:00:00.000Z");
    assert_eq!(rfc3339(1_796_083_200_123, 0), "2026-12-01T00:00:00.123Z");
    assert_eq!(
        rfc3339(1_796_083_200_123, 330),
        "2026-12-01T05:30:00.123+05:30"
    );
    assert_eq!(
        rfc3339(1_796_083_200_123, -60),
        "2026-11-30T23:00:00.123-01:00"
    );
    assert_eq!(
        millis(&json!("2026-12-01T00:00:00.123Z")),
        1_796_083_200_123
    );
    assert_eq!(millis(&json!("2000-02-29T00:00:00.000Z")), 951_782_400_000);
}

// ---- §7: queues ----

#[test]
fn a_full_queue_refuses_only_its_own_tasks_and_delays_no_other() {
    let server = Server::start(&["--workers", "2", "--buffer", "5", "--queue", "slow=1/3"]);
    let slow = json!({"task_id": "slow", "work_duration": "60s", "queue": "slow"}).to_string();
    let first = accepted(&server.post("/tasks", &slow), "queued");
    server.wait_state(&first, "running");
    // One running and three waiting fill `slow`; the next is refused.
    let mut taken = 1;
    let refusal = loop {
        let r = server.post("/tasks", &slow);
        if r.status != 202 {
            break r;
        }
        taken += 1;
        assert!(taken <= 4, "slow took more than 1 running + 3 queued");
    };
    assert_eq!(taken, 4);
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert_eq!(refusal.header("retry-after"), Some("60"));
    assert_eq!(refusal.text(), BUSY);
    let q = server.queue("slow");
    assert_eq!(
        (&q["busy"], &q["depth"], &q["capacity"]),
        (&json!(1), &json!(3), &json!(3))
    );
    assert_eq!(server.metric("bgtasks_tasks_rejected_total"), 1.0);

    // While a client floods `slow` (and is refused every time), tasks in
    // `default` are accepted and start at once.
    let stop = AtomicBool::new(false);
    let refused = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let mut stream = server.connect();
            let request = common::post_request("/tasks", &[], &slow);
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(request.as_bytes()).unwrap();
                let r = read_response(&mut stream).expect("an answer to the flood");
                assert_eq!((r.status, r.text()), (503, BUSY.to_string()));
                refused.fetch_add(1, Ordering::Relaxed);
            }
        });
        eventually("the flood to be refused", || {
            (refused.load(Ordering::Relaxed) > 0).then_some(())
        });
        let mut lags = Vec::new();
        for i in 0..5 {
            let id = submit(
                &server,
                json!({"task_id": format!("quick-{i}"), "work_duration": "0s"}),
                "queued",
            );
            let task = server.wait_done(&id);
            assert_eq!(
                (&task["state"], &task["queue"]),
                (&json!("succeeded"), &json!("default"))
            );
            lags.push(millis(&task["started_at"]) - millis(&task["created_at"]));
        }
        stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
        eprintln!(
            "default tasks started {lags:?} ms after their 202 while `slow` was full \
             and flooded ({} refusals)",
            refused.load(Ordering::Relaxed)
        );
        // Liveness only (the target is 100 ms): a queue behind another's
        // flood would wait 60 s.
        assert!(lags.iter().all(|&lag| (0..2000).contains(&lag)), "{lags:?}");
    });
    let q = server.queue("slow");
    assert_eq!((&q["busy"], &q["depth"]), (&json!(1), &json!(3)));
    assert_eq!(server.task(&first)["state"], "running");
}

#[test]
fn a_queue_named_like_a_kind_caps_how_many_of_it_run_at_once() {
    let dir = TempDir::new("kind");
    std::fs::write(dir.arg("count"), "0\n").unwrap();
    // Counts the copies running at once under a lock, logging each count.
    let backup = dir.script(
        "backup.sh",
        &format!(
            r#"cd {}
exec 9>>lock
flock 9; n=$(( $(cat count) + 1 )); echo $n > count; echo $n >> log; flock -u 9
sleep 0.3
flock 9; n=$(( $(cat count) - 1 )); echo $n > count; flock -u 9"#,
            dir.arg("")
        ),
    );
    let handler = format!("backup={backup}");
    let server = Server::start(&[
        "--workers",
        "4",
        "--handler",
        &handler,
        "--queue",
        "backup=2",
    ]);
    // N + 5 tasks of the kind, none naming a queue.
    let ids: Vec<String> = (0..7)
        .map(|i| {
            submit(
                &server,
                json!({"kind": "backup", "task_id": format!("b{i}")}),
                "queued",
            )
        })
        .collect();
    let mut most_busy = 0;
    eventually("every backup to finish", || {
        let q = server.queue("backup");
        let (busy, depth) = (q["busy"].as_u64().unwrap(), q["depth"].as_u64().unwrap());
        assert!(busy <= 2, "more than 2 backups running: {q}");
        assert!(busy + depth <= 7, "{q}");
        assert_eq!(
            server.queue("default")["busy"],
            0,
            "a backup ran in default"
        );
        most_busy = most_busy.max(busy);
        let done = listed(&server, "/tasks?queue=backup&state=succeeded");
        (done.len() == 7).then_some(())
    });
    let log = dir.read("log");
    let counts: Vec<u32> = log.lines().map(|l| l.trim().parse().unwrap()).collect();
    eprintln!(
        "running at once, as the handlers counted: {counts:?}; /queues saw busy {most_busy} at most"
    );
    assert_eq!(counts.len(), 7, "{log}");
    assert_eq!(counts.iter().max(), Some(&2), "{log}");
    assert_eq!(dir.read("count").trim(), "0");
    for id in &ids {
        let task = server.task(id);
        assert_eq!(
            (&task["state"], &task["queue"]),
            (&json!("succeeded"), &json!("backup")),
            "{task}"
        );
    }

    // The `queue` member beats the kind's queue.
    let chosen = submit(
        &server,
        json!({"kind": "backup", "queue": "default"}),
        "queued",
    );
    let task = server.wait_done(&chosen);
    assert_eq!(
        (&task["state"], &task["queue"]),
        (&json!("succeeded"), &json!("default")),
        "{task}"
    );
    assert_eq!(listed(&server, "/tasks?queue=default"), vec![chosen]);
    assert_eq!(listed(&server, "/tasks?queue=backup").len(), 7);
}

#[test]
fn a_paused_queue_accepts_up_to_its_capacity_starts_nothing_and_lets_running_tasks_finish() {
    let dir = TempDir::new("pause");
    // Runs until the test creates the file `go`.
    let hold = dir.script(
        "hold.sh",
        &format!("while [ ! -e {} ]; do sleep 0.02; done", dir.arg("go")),
    );
    let handler = format!("hold={hold}");
    let server = Server::start(&["--workers", "2", "--buffer", "3", "--handler", &handler]);
    let running = submit(&server, json!({"kind": "hold"}), "queued");
    server.wait_state(&running, "running");

    let r = server.post("/queues/default/pause", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"name": "default", "workers": 2, "busy": 1, "depth": 0, "capacity": 3, "paused": true, "rate": null})
    );
    assert_eq!(server.queue("default")["paused"], true);
    assert_eq!(
        server.metric("bgtasks_queue_paused{queue=\"default\"}"),
        1.0
    );
    // Pausing again changes nothing.
    assert_eq!(
        server.post("/queues/default/pause", "").json()["paused"],
        true
    );

    // One worker is idle, yet a task stays queued for the whole long poll.
    let first = submit(
        &server,
        json!({"task_id": "A", "work_duration": "0s"}),
        "queued",
    );
    let (task, took) = long_poll(&server, &first, "1s");
    assert_eq!(task["state"], "queued", "{task}");
    assert!(
        took >= Duration::from_millis(900),
        "the long poll ended after {took:?}: {task}"
    );
    assert_eq!(task["started_at"], Value::Null);

    // It still takes tasks up to its capacity, then refuses.
    let others: Vec<String> = ["B", "C"]
        .iter()
        .map(|l| {
            submit(
                &server,
                json!({"task_id": l, "work_duration": "0s"}),
                "queued",
            )
        })
        .collect();
    let refusal = server.post("/tasks", r#"{"task_id": "D", "work_duration": "0s"}"#);
    assert_eq!((refusal.status, refusal.text()), (503, BUSY.to_string()));
    assert_eq!(refusal.header("retry-after"), Some("60"));
    let q = server.queue("default");
    assert_eq!((&q["depth"], &q["busy"]), (&json!(3), &json!(1)), "{q}");

    // The task running when the pause came goes on to succeed.
    std::fs::write(dir.arg("go"), "").unwrap();
    assert_eq!(server.wait_done(&running)["state"], "succeeded");
    let (task, _) = long_poll(&server, &first, "300ms");
    assert_eq!(
        task["state"], "queued",
        "a task started in a paused queue: {task}"
    );
    assert_eq!(server.queue("default")["busy"], 0);

    let r = server.post("/queues/default/resume", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["paused"], false);
    assert_eq!(
        server.metric("bgtasks_queue_paused{queue=\"default\"}"),
        0.0
    );
    for id in std::iter::once(&first).chain(&others) {
        assert_eq!(server.wait_done(id)["state"], "succeeded");
    }
    assert_eq!(server.queue("default")["depth"], 0);

    // Unknown queues and wrong methods.
    for path in [
        "/queues/nope/pause",
        "/queues/nope/resume",
        "/queues/Default/pause",
    ] {
        let r = server.post(path, "");
        assert_eq!(
            (r.status, r.text()),
            (404, r#"{"error": "no such queue"}"#.to_string()),
            "{path}"
        );
    }
    for path in ["/queues/default/pause", "/queues/default/resume"] {
        let r = server.get(path);
        assert_eq!(r.status, 405, "{path}: {r:?}");
        assert_eq!(r.header("allow"), Some("POST"));
    }
    let r = server.post("/queues", "");
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn a_resumed_queue_runs_its_tasks_in_the_order_they_came() {
    let dir = TempDir::new("fifo");
    let note = dir.script(
        "note.sh",
        &format!("echo \"$BGTASKS_TASK_ID\" >> {}", dir.arg("log")),
    );
    let handler = format!("note={note}");
    let server = Server::start(&["--workers", "1", "--buffer", "3", "--handler", &handler]);
    assert_eq!(server.post("/queues/default/pause", "").status, 200);
    let ids: Vec<String> = ["A", "B", "C"]
        .iter()
        .map(|l| submit(&server, json!({"kind": "note", "task_id": l}), "queued"))
        .collect();
    assert_eq!(server.post("/queues/default/resume", "").status, 200);
    for id in &ids {
        assert_eq!(server.wait_done(id)["state"], "succeeded");
    }
    let order: Vec<String> = dir.read("log").lines().map(str::to_string).collect();
    assert_eq!(order, ids, "tasks ran out of order (A, B, C = {ids:?})");
}

#[test]
fn a_paused_queue_never_holds_more_than_its_capacity() {
    let server = Server::start(&["--workers", "8", "--buffer", "1", "--threads", "4"]);
    for round in 0..2000 {
        assert_eq!(server.post("/queues/default/pause", "").status, 200);
        let statuses = server.pipeline("/tasks", 64, 8, |_| {
            r#"{"work_duration": "0s"}"#.to_string()
        });
        let q = server.queue("default");
        assert_eq!(
            statuses.get(&202),
            Some(&1),
            "round {round}: {statuses:?}, {q}"
        );
        assert_eq!(q["depth"], 1, "round {round}: {q}");
        assert_eq!(server.post("/queues/default/resume", "").status, 200);
        eventually("the queue to drain", || {
            let q = server.queue("default");
            (q["depth"] == 0 && q["busy"] == 0).then_some(())
        });
    }
}

// ---- §8: delayed tasks ----

/// Checks a delayed task that has run: it started no earlier than its
/// `run_at`, and not much later; returns how much later, in ms.
fn check_ran_on_time(task: &Value) -> i64 {
    assert_eq!(task["state"], "succeeded", "{task}");
    let late = millis(&task["started_at"]) - millis(&task["run_at"]);
    assert!(late >= 0, "started before its run_at: {task}");
    // Liveness only: it should start within milliseconds.
    assert!(late < 3000, "started {late} ms after its run_at: {task}");
    late
}

#[test]
fn a_delayed_task_waits_scheduled_and_runs_at_its_time() {
    let server = Server::start(&[]);
    let id = submit(
        &server,
        json!({"task_id": "later", "work_duration": "0s", "delay": "1s"}),
        "scheduled",
    );
    let task = server.task(&id);
    assert_eq!(
        (&task["state"], &task["queue"]),
        (&json!("scheduled"), &json!("default")),
        "{task}"
    );
    let ahead = millis(&task["run_at"]) - millis(&task["created_at"]);
    assert!(
        (1..=1000).contains(&ahead),
        "run_at is {ahead} ms after created_at: {task}"
    );
    let list = server.get("/tasks?state=scheduled").json();
    assert_eq!(list["counts"]["scheduled"], 1, "{list}");
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["tasks"][0]["id"], id.as_str());
    assert!(listed(&server, "/tasks?state=queued").is_empty());
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 1.0);
    assert_eq!(server.metric("bgtasks_queue_depth{queue=\"default\"}"), 0.0);

    let late = check_ran_on_time(&server.wait_done(&id));
    eprintln!("a task delayed by 1s started {late} ms after its run_at");
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 0.0);
    assert_eq!(server.get("/tasks").json()["counts"]["scheduled"], 0);

    // A `run_at` in another offset works the same, and is shown in UTC.
    // Two seconds ahead, so that it is still ahead when it arrives.
    let at = now_ms() + 2000;
    let id = submit(
        &server,
        json!({"work_duration": "0s", "run_at": rfc3339(at, 330)}),
        "scheduled",
    );
    let task = server.task(&id);
    assert_eq!(task["run_at"], rfc3339(at, 0), "{task}");
    let late = check_ran_on_time(&server.wait_done(&id));
    eprintln!("a task with run_at in +05:30 started {late} ms after it");

    // A time in the past, or no delay at all, means at once.
    for when in [
        json!({"run_at": "2024-02-29T12:00:00.5-08:00"}),
        json!({"run_at": rfc3339(now_ms() - 10, -90)}),
        json!({"delay": "0s"}),
        json!({"delay": "0"}),
    ] {
        let mut body = when.clone();
        body["work_duration"] = json!("0s");
        let id = submit(&server, body, "queued");
        let task = server.wait_done(&id);
        assert_eq!(task["state"], "succeeded", "{when}: {task}");
        if when["run_at"] == "2024-02-29T12:00:00.5-08:00" {
            assert_eq!(task["run_at"], "2024-02-29T20:00:00.500Z");
        }
    }
    assert_eq!(
        server.get("/tasks").json()["counts"],
        json!({"waiting": 0, "scheduled": 0, "queued": 0, "running": 0, "succeeded": 6, "failed": 0, "cancelled": 0})
    );
    // A task sent without either has no run_at.
    let id = server.submit("0s");
    assert_eq!(server.task(&id)["run_at"], Value::Null);
}

#[test]
fn a_delayed_task_takes_no_place_in_a_full_queue() {
    let server = Server::start(&["--workers", "1", "--buffer", "1"]);
    server.fill(1);
    let r = server.post("/tasks", r#"{"work_duration": "0s"}"#);
    assert_eq!(r.status, 503, "{r:?}");
    let r = server.post(
        "/tasks",
        r#"{"work_duration": "0s", "run_at": "2020-01-01T00:00:00Z"}"#,
    );
    assert_eq!(r.status, 503, "a task due at once needs room: {r:?}");
    let id = accepted(
        &server.post("/tasks", r#"{"work_duration": "0s", "delay": "1h"}"#),
        "scheduled",
    );
    assert_eq!(server.task(&id)["state"], "scheduled");
    let q = server.queue("default");
    assert_eq!((&q["busy"], &q["depth"]), (&json!(1), &json!(1)), "{q}");
}

#[test]
fn a_cancelled_scheduled_task_never_runs() {
    let server = Server::start(&[]);
    let doomed = submit(
        &server,
        json!({"task_id": "doomed", "work_duration": "0s", "delay": "1s"}),
        "scheduled",
    );
    let r = server.post(&format!("/tasks/{doomed}/cancel"), "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["state"], "cancelled");
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 0.0);
    let r = server.post(&format!("/tasks/{doomed}/cancel"), "");
    assert_eq!(r.status, 409, "{r:?}");
    // A task due after it has run: the cancelled one's time has passed.
    let witness = submit(
        &server,
        json!({"task_id": "witness", "work_duration": "0s", "delay": "1s"}),
        "scheduled",
    );
    let witness = server.wait_done(&witness);
    check_ran_on_time(&witness);
    let task = server.task(&doomed);
    assert!(
        millis(&task["run_at"]) <= millis(&witness["started_at"]),
        "{task}"
    );
    assert_eq!(task["state"], "cancelled", "{task}");
    assert_eq!(task["attempt"], 0, "{task}");
    assert_eq!(task["started_at"], Value::Null, "{task}");
    let counts = server.get("/tasks").json()["counts"].clone();
    assert_eq!(
        (&counts["cancelled"], &counts["succeeded"]),
        (&json!(1), &json!(1))
    );
}

#[test]
fn bad_queues_and_times_are_refused_with_a_sentence_and_store_nothing() {
    let server = Server::start(&["--queue", "q1=1"]);
    let not_rfc3339 = r#"run_at must be an RFC 3339 time such as "2026-12-01T03:00:00Z""#;
    let delay = r#"delay must be a duration such as "10m""#;
    let far = rfc3339(now_ms() + 367 * 86_400_000, 0);
    let far_offset = rfc3339(now_ms() + 367 * 86_400_000, -600);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"queue": 5}), "failed to read POST body"),
        (json!({"queue": ["q1"]}), "failed to read POST body"),
        (json!({"queue": {"name": "q1"}}), "failed to read POST body"),
        (json!({"queue": "nope"}), r#"unknown queue "nope""#),
        (json!({"queue": "Q1"}), r#"unknown queue "Q1""#),
        (json!({"queue": ""}), r#"unknown queue """#),
        (json!({"queue": "q\"1"}), r#"unknown queue "q\"1""#),
        (json!({"run_at": 1_796_083_200}), "failed to read POST body"),
        (json!({"run_at": "tomorrow"}), not_rfc3339),
        (json!({"run_at": ""}), not_rfc3339),
        (json!({"run_at": "2026-12-01"}), not_rfc3339),
        (json!({"run_at": "2026-12-01T03:00:00"}), not_rfc3339),
        (json!({"run_at": "2026-12-01T03:00:00+0530"}), not_rfc3339),
        (json!({"run_at": "2026-12-01T03:00:00.Z"}), not_rfc3339),
        (json!({"run_at": "2026-12-01T24:00:00Z"}), not_rfc3339),
        (json!({"run_at": "2026-12-01T03:00:60Z"}), not_rfc3339),
        (json!({"run_at": "2027-02-29T03:00:00Z"}), not_rfc3339),
        (json!({"run_at": "2026-13-01T03:00:00Z"}), not_rfc3339),
        (json!({"run_at": "2026-12-01T03:00:00Z "}), not_rfc3339),
        (json!({"run_at": "1796083200"}), not_rfc3339),
        (
            json!({"run_at": "2026-12-01T03:00:00Z", "delay": "1s"}),
            "run_at and delay cannot be used together",
        ),
        (
            json!({"run_at": far}),
            "run_at must be at most 366 days ahead",
        ),
        (
            json!({"run_at": far_offset}),
            "run_at must be at most 366 days ahead",
        ),
        (
            json!({"run_at": "9999-12-31T23:59:59Z"}),
            "run_at must be at most 366 days ahead",
        ),
        (json!({"delay": "8808h"}), "delay must be at most 366 days"),
        (json!({"delay": "8785h"}), "delay must be at most 366 days"),
        (
            json!({"delay": "1000000h"}),
            "delay must be at most 366 days",
        ),
        (json!({"delay": "-1s"}), delay),
        (json!({"delay": "soon"}), delay),
        (json!({"delay": "10"}), delay),
        (json!({"delay": 10}), "failed to read POST body"),
    ];
    for (mut body, sentence) in cases {
        body["work_duration"] = json!("0s");
        let r = server.post("/tasks", &body.to_string());
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.json(), json!({"error": sentence}), "{body}");
    }
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 0.0);
    let list = server.get("/tasks").json();
    assert_eq!(list["tasks"], json!([]), "{list}");
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 0.0);

    // The limits themselves are allowed.
    for when in [
        json!({"delay": "8784h"}),
        json!({"run_at": rfc3339(now_ms() + 365 * 86_400_000, 0)}),
    ] {
        let mut body = when.clone();
        body["work_duration"] = json!("0s");
        accepted(&server.post("/tasks", &body.to_string()), "scheduled");
    }

    for (path, sentence) in [
        ("/tasks?queue=nope", r#"unknown queue "nope""#),
        ("/tasks?queue=", r#"unknown queue """#),
        (
            "/tasks?state=later",
            "state must be one of waiting, scheduled, queued, running, succeeded, failed, cancelled",
        ),
    ] {
        let r = server.get(path);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(r.json(), json!({"error": sentence}), "{path}");
    }
    for path in [
        "/tasks?queue=q1",
        "/tasks?queue=default",
        "/tasks?state=scheduled",
    ] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
}

#[test]
fn max_scheduled_refuses_more_delayed_tasks_atomically() {
    let server = Server::start(&["--max-scheduled", "2", "--retry-after", "7"]);
    let later = r#"{"work_duration": "0s", "delay": "1h"}"#;
    let first = accepted(&server.post("/tasks", later), "scheduled");
    accepted(&server.post("/tasks", later), "scheduled");
    let r = server.post("/tasks", later);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(
        r.text(),
        r#"{"error": "too many scheduled tasks, try again later"}"#
    );
    assert_eq!(server.get("/tasks").json()["counts"]["scheduled"], 2);
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 2.0);
    // Tasks due at once do not count against it.
    let now = server.submit("0s");
    assert_eq!(server.wait_done(&now)["state"], "succeeded");
    // Cancelling one makes room for another.
    assert_eq!(
        server.post(&format!("/tasks/{first}/cancel"), "").status,
        200
    );
    accepted(&server.post("/tasks", later), "scheduled");
    assert_eq!(server.post("/tasks", later).status, 503);

    // Under concurrency, exactly the limit is taken.
    let server = Server::start(&["--max-scheduled", "10"]);
    let statuses = server.pipeline("/tasks", 400, 8, |i| {
        format!(r#"{{"task_id": "c{i}", "work_duration": "0s", "delay": "1h"}}"#)
    });
    assert_eq!(statuses.get(&202), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&503), Some(&390), "{statuses:?}");
    assert_eq!(server.get("/tasks").json()["counts"]["scheduled"], 10);
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 10.0);
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 10.0);
}

#[test]
fn scheduled_tasks_and_paused_queues_survive_restarts_and_kill_9() {
    let dir = TempDir::new("restart");
    let data = dir.arg("data");
    let args = ["--data-dir", data.as_str(), "--queue", "q=1"];
    let mut server = Server::start(&args);
    assert_eq!(server.post("/queues/q/pause", "").status, 200);
    let later = submit(
        &server,
        json!({"task_id": "later", "work_duration": "0s", "delay": "1h", "queue": "q"}),
        "scheduled",
    );
    let held = submit(
        &server,
        json!({"task_id": "held", "work_duration": "0s", "queue": "q"}),
        "queued",
    );
    let run_at = server.task(&later)["run_at"].clone();
    assert!(run_at.is_string());

    // Checks what must have survived a restart.
    let check = |server: &Server, how: &str| {
        let task = server.task(&later);
        assert_eq!(
            (&task["state"], &task["run_at"], &task["queue"]),
            (&json!("scheduled"), &run_at, &json!("q")),
            "after {how}: {task}"
        );
        let q = server.queue("q");
        assert_eq!(q["paused"], true, "after {how}: {q}");
        assert_eq!(server.queue("default")["paused"], false);
        assert_eq!(server.metric("bgtasks_queue_paused{queue=\"q\"}"), 1.0);
        assert_eq!(server.metric("bgtasks_tasks_scheduled"), 1.0);
        let (task, _) = long_poll(server, &held, "500ms");
        assert_eq!(
            task["state"], "queued",
            "a paused queue ran a task after {how}: {task}"
        );
    };
    check(&server, "nothing");
    let (code, _) = server.stop(Signal::TERM);
    assert_eq!(code, Some(0));
    let mut server = Server::start(&args);
    check(&server, "SIGTERM and a restart");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = Server::start(&args);
    check(&server, "kill -9 and a restart");

    // Resuming is remembered too.
    assert_eq!(server.post("/queues/q/resume", "").json()["paused"], false);
    assert_eq!(server.wait_done(&held)["state"], "succeeded");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = Server::start(&args);
    assert_eq!(server.queue("q")["paused"], false);
    assert_eq!(server.task(&held)["state"], "succeeded");
    assert_eq!(server.task(&later)["state"], "scheduled");

    // A task that comes due while the server is down is queued at start.
    let due = submit(
        &server,
        json!({"task_id": "due", "work_duration": "0s", "delay": "3s"}),
        "scheduled",
    );
    let due_at = millis(&server.task(&due)["run_at"]);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let down = (due_at + 200 - now_ms()).max(0) as u64;
    std::thread::sleep(Duration::from_millis(down));
    let restarted = now_ms();
    let server = Server::start(&args);
    let task = server.wait_done(&due);
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(millis(&task["started_at"]) >= due_at, "{task}");
    assert!(
        millis(&task["started_at"]) >= restarted,
        "it ran before the restart: {task}"
    );
    assert_eq!(task["attempt"], 1, "{task}");
    assert_eq!(server.task(&later)["state"], "scheduled");
}

#[test]
fn a_paused_queue_counts_the_tasks_a_restart_puts_back_and_runs_them_on_resume() {
    let dir = TempDir::new("paused-depth");
    let data = dir.arg("data");
    let args = ["--data-dir", data.as_str(), "--queue", "q=1/4"];
    let mut server = Server::start(&args);
    assert_eq!(server.post("/queues/q/pause", "").status, 200);
    let body = json!({"work_duration": "0s", "queue": "q"});
    let ids = [0, 1].map(|_| submit(&server, body.clone(), "queued"));
    assert_eq!(server.queue("q")["depth"], 2);
    server.kill();
    let server = Server::start(&args);
    let q = server.queue("q");
    assert_eq!(
        (&q["paused"], &q["depth"]),
        (&json!(true), &json!(2)),
        "{q}"
    );
    assert_eq!(server.metric("bgtasks_queue_depth{queue=\"q\"}"), 2.0);
    assert_eq!(server.post("/queues/q/resume", "").status, 200);
    for id in &ids {
        assert_eq!(server.wait_done(id)["state"], "succeeded");
    }
    assert_eq!(server.queue("q")["depth"], 0);
}

#[test]
fn bad_queue_flags_exit_2_with_one_line_before_binding() {
    // The address is taken, so a server that bound before checking its
    // flags would exit 1 instead of 2.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let long = format!("{}=1", "a".repeat(33));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["Bad=1"],
            "NAME must be 1 to 32 characters of a-z 0-9 _ -",
        ),
        (
            vec![&long],
            "NAME must be 1 to 32 characters of a-z 0-9 _ -",
        ),
        (
            vec!["a b=1"],
            "NAME must be 1 to 32 characters of a-z 0-9 _ -",
        ),
        (vec!["=1"], "NAME must be 1 to 32 characters of a-z 0-9 _ -"),
        (
            vec!["x/y=1"],
            "NAME must be 1 to 32 characters of a-z 0-9 _ -",
        ),
        (
            vec!["default=2"],
            "the queue \"default\" is made by --workers and --buffer",
        ),
        (vec!["x=1", "x=2"], "the queue is given twice"),
        (vec!["x=0"], "WORKERS: expected a whole number from 1"),
        (vec!["x=abc"], "WORKERS: expected a whole number"),
        (vec!["x=-1"], "WORKERS: expected a whole number"),
        (
            vec!["x=1/0"],
            "BUFFER: expected a whole number from 1 to 10000000",
        ),
        (
            vec!["x=1/10000001"],
            "BUFFER: expected a whole number from 1 to 10000000",
        ),
        (vec!["x=1/"], "BUFFER: expected a whole number"),
        (vec!["x=1/2/3"], "BUFFER: expected a whole number"),
        (vec!["x"], "expected NAME=WORKERS[/BUFFER]"),
    ];
    for (specs, why) in cases {
        let mut args = vec!["--addr", addr.as_str()];
        for spec in &specs {
            args.extend(["--queue", spec]);
        }
        let out = command(&args, &[], &[]).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{specs:?}: {err}");
        let bad = specs.last().unwrap();
        let start = format!("bgtasks: --queue {bad:?}: ");
        assert!(
            err.starts_with(&start) && err.contains(why),
            "{specs:?}: {err:?}"
        );
        assert_eq!(err.lines().count(), 1, "{specs:?}: {err:?}");
        assert!(err.ends_with('\n'), "{err:?}");
    }
    // The longest name, and every kind of character a name may have.
    let longest = "a".repeat(32);
    let spec = format!("{longest}=1/1");
    let server = Server::start(&["--queue", &spec, "--queue", "x-y_0=3"]);
    let names: Vec<Value> = server.get("/queues").json()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![json!("default"), json!(longest), json!("x-y_0")]
    );
}

#[test]
fn every_queue_has_its_own_gauges_in_metrics_and_queues() {
    let server = Server::start(&[
        "--workers",
        "3",
        "--buffer",
        "7",
        "--queue",
        "a=2/5",
        "--queue",
        "b=1",
        "--rate",
        "a=60/m",
    ]);
    // `a`: two running, one waiting. `b`: paused, two waiting. Two delayed.
    let a: Vec<String> = (0..3)
        .map(|_| {
            submit(
                &server,
                json!({"work_duration": "60s", "queue": "a"}),
                "queued",
            )
        })
        .collect();
    server.wait_state(&a[0], "running");
    server.wait_state(&a[1], "running");
    assert_eq!(server.post("/queues/b/pause", "").status, 200);
    for _ in 0..2 {
        submit(
            &server,
            json!({"work_duration": "0s", "queue": "b"}),
            "queued",
        );
    }
    // `b`'s worker has taken one task and put it back: wait until it has.
    eventually("b's worker to find it paused", || {
        (server.queue("b")["depth"] == 2).then_some(())
    });
    for delay in ["1h", "2h"] {
        submit(
            &server,
            json!({"work_duration": "0s", "delay": delay, "queue": "b"}),
            "scheduled",
        );
    }
    let expected = [
        // name, workers, busy, depth, capacity, paused, rate
        ("default", 3, 0, 0, 7, false, None),
        ("a", 2, 2, 1, 5, false, Some("60/m")),
        ("b", 1, 0, 2, 100, true, None),
    ];
    let queues = server.get("/queues").json();
    let want: Vec<Value> = expected
        .iter()
        .map(|&(name, workers, busy, depth, capacity, paused, rate)| {
            json!({"name": name, "workers": workers, "busy": busy, "depth": depth, "capacity": capacity, "paused": paused, "rate": rate})
        })
        .collect();
    assert_eq!(queues, json!({"queues": want}));

    let text = server.get("/metrics").text();
    for family in [
        "bgtasks_queue_depth",
        "bgtasks_queue_capacity",
        "bgtasks_workers",
        "bgtasks_workers_busy",
        "bgtasks_queue_paused",
        "bgtasks_tasks_scheduled",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} gauge\n")),
            "{family}:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}:\n{text}"
        );
        let series = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} "))
            })
            .count();
        let want = if family == "bgtasks_tasks_scheduled" {
            1
        } else {
            3
        };
        assert_eq!(series, want, "{family}:\n{text}");
    }
    for (name, workers, busy, depth, capacity, paused, _) in expected {
        let label = format!("{{queue=\"{name}\"}}");
        let gauge = |family: &str| server.metric(&format!("{family}{label}"));
        assert_eq!(gauge("bgtasks_workers"), workers as f64, "{name}");
        assert_eq!(gauge("bgtasks_workers_busy"), busy as f64, "{name}");
        assert_eq!(gauge("bgtasks_queue_depth"), depth as f64, "{name}");
        assert_eq!(gauge("bgtasks_queue_capacity"), capacity as f64, "{name}");
        assert_eq!(
            gauge("bgtasks_queue_paused"),
            f64::from(u8::from(paused)),
            "{name}"
        );
    }
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 2.0);
    // A counter, one series a queue, with or without a rate.
    assert!(text.contains("# TYPE bgtasks_queue_rate_limited_total counter\n"));
    for name in ["default", "a", "b"] {
        let series = format!("bgtasks_queue_rate_limited_total{{queue=\"{name}\"}}");
        assert_eq!(server.metric(&series), 0.0, "{name}");
    }
}

// ---- Benchmark ----

#[test]
#[ignore = "a benchmark: cargo test --release --test queues -- --ignored --nocapture"]
fn bench_bytes_per_scheduled_task() {
    const TASKS: usize = 100_000;
    /// Measures the RSS a server gains holding `TASKS` tasks of `body`.
    fn bytes_per_task(args: &[&str], body: &str, state: &str) -> f64 {
        let server = Server::start(args);
        std::thread::sleep(Duration::from_millis(300));
        let before = server.rss_kib();
        let statuses = server.pipeline("/tasks", TASKS, 4, |_| body.to_string());
        assert_eq!(statuses.get(&202), Some(&TASKS), "{statuses:?}");
        let counts = server.get("/tasks?limit=1").json()["counts"].clone();
        let held = ["scheduled", "queued", "running"].map(|s| counts[s].as_u64().unwrap());
        assert_eq!(held.iter().sum::<u64>(), TASKS as u64, "{counts}");
        assert!(
            counts[state].as_u64().unwrap() >= TASKS as u64 - 1,
            "{counts}"
        );
        std::thread::sleep(Duration::from_secs(1));
        let after = server.rss_kib();
        let per_task = (after - before) as f64 * 1024.0 / TASKS as f64;
        eprintln!(
            "{state}: RSS {before} KiB → {after} KiB for {TASKS} tasks: {per_task:.0} B per task"
        );
        per_task
    }
    let scheduled = bytes_per_task(
        &["--max-scheduled", "200000"],
        r#"{"task_id":"t","work_duration":"0s","delay":"1h"}"#,
        "scheduled",
    );
    // For comparison, the bench's own measure: queued tasks.
    let queued = bytes_per_task(
        &["--workers", "1", "--buffer", "200000"],
        r#"{"task_id":"t","work_duration":"60s"}"#,
        "queued",
    );
    eprintln!(
        "bytes per scheduled task: {scheduled:.0} (target ≤ 150); per queued task: {queued:.0}"
    );
}
