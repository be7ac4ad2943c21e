//! SPEC §2: managing tasks — list, cancel, long poll, idempotency, bounded
//! history, metrics, and the answers for unknown paths and wrong methods.

mod common;

use common::{Server, eventually, read_response};
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Returns the ids of a `/tasks` answer, in order.
fn ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_filters_newest_first_and_counts_everything() {
    let server = Server::start(&["--workers", "1", "--buffer", "1000"]);
    let blocker = server.submit_labelled("block", "60s");
    server.wait_state(&blocker, "running");
    let mut queued = Vec::new();
    for i in 0..120 {
        queued.push(server.submit_labelled(if i % 2 == 0 { "even one" } else { "odd" }, "60s"));
    }
    let cancelled = queued.remove(0);
    assert_eq!(server.cancel(&cancelled).status, 200);

    let all = server.get("/tasks").json();
    let expected_counts = serde_json::json!({"waiting": 0, "scheduled": 0, "queued": 119, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1});
    assert_eq!(all["counts"], expected_counts);
    // Default limit 100, newest first.
    let mut newest: Vec<String> = queued.iter().rev().take(100).cloned().collect();
    assert_eq!(ids(&all), newest);

    // 60 labelled "even one": 59 queued and the cancelled one.
    let evens = server.get("/tasks?task_id=even+one&limit=1000").json();
    assert_eq!(evens["tasks"].as_array().unwrap().len(), 60);
    assert!(
        evens["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["task_id"] == "even one")
    );
    assert_eq!(
        evens["counts"], expected_counts,
        "counts ignore the filters"
    );
    let encoded = server.get("/tasks?task_id=even%20one&limit=1000").json();
    assert_eq!(ids(&encoded), ids(&evens));

    let running = server.get("/tasks?state=running").json();
    assert_eq!(ids(&running), [blocker]);
    let cancelled_list = server.get("/tasks?state=cancelled").json();
    assert_eq!(ids(&cancelled_list), [cancelled]);
    let three = server.get("/tasks?state=queued&limit=3").json();
    newest.truncate(3);
    assert_eq!(ids(&three), newest);
    // Any positive integer is clamped, however many digits it has.
    for huge in ["5000", "99999999999999999999"] {
        let clamped = server.get(&format!("/tasks?limit={huge}"));
        assert_eq!(clamped.status, 200, "limit={huge}");
        assert_eq!(clamped.json()["tasks"].as_array().unwrap().len(), 121);
    }
    assert_eq!(
        server.get("/tasks?task_id=nobody").json()["tasks"],
        serde_json::json!([])
    );

    for bad in [
        "limit=0",
        "limit=-1",
        "limit=%2B5",
        "limit=abc",
        "limit=1.5",
        "limit=",
        "state=done",
        "state=",
        "task_id=%zz",
    ] {
        let r = server.get(&format!("/tasks?{bad}"));
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error"].is_string());
    }
}

/// Starts a server that retains 10,000 finished tasks, labelled `n0` to
/// `n9999`.
fn ten_thousand_finished() -> Server {
    let server = Server::start(&[
        "--workers",
        "4",
        "--buffer",
        "20000",
        "--keep-finished",
        "10000",
    ]);
    let statuses = server.pipeline("/tasks", 10_000, 4, |i| {
        format!(r#"{{"task_id": "n{i}", "work_duration": "0s"}}"#)
    });
    assert_eq!(statuses.get(&202), Some(&10_000));
    eventually("all to finish", || {
        (server.get("/tasks").json()["counts"]["succeeded"] == 10_000).then_some(())
    });
    server
}

/// A full page, and two filters that scan every record.
const BIG_LISTS: [&str; 3] = [
    "/tasks?limit=1000",
    "/tasks?task_id=n5000",
    "/tasks?state=failed",
];

#[test]
fn listing_10000_retained_tasks_costs_little_cpu() {
    let server = ten_thousand_finished();
    let before = server.cpu_ticks();
    let lists: Vec<Value> = BIG_LISTS.iter().map(|q| server.get(q).json()).collect();
    let spent = server.cpu_ticks() - before;
    // A page stops at 256 KiB of tasks: fewer than the limit, and a link
    // to the rest.
    let page = lists[0]["tasks"].as_array().unwrap().len();
    assert!((1..1000).contains(&page), "{page}");
    assert!(lists[0]["next"].is_string());
    assert_eq!(ids(&lists[1]).len(), 1);
    assert_eq!(lists[1]["tasks"][0]["task_id"], "n5000");
    assert_eq!(lists[2]["tasks"], serde_json::json!([]));
    // The server's own CPU time, which other load on the machine does not
    // change: the three take about 2 ms; a scan quadratic in the retained
    // tasks would take hundreds.
    assert!(spent <= 10, "three lists used {spent} ticks of CPU");
}

#[test]
#[ignore = "benchmark: prints how long each big list takes"]
fn bench_listing_10000_retained_tasks() {
    let server = ten_thousand_finished();
    for query in BIG_LISTS {
        let mut took: Vec<Duration> = (0..20)
            .map(|_| {
                let started = Instant::now();
                assert_eq!(server.get(query).status, 200);
                started.elapsed()
            })
            .collect();
        println!(
            "GET {query} with 10,000 retained tasks: {}",
            common::spread(&mut took)
        );
    }
}

#[test]
fn cancelling_a_queued_task_is_immediate_and_it_never_runs() {
    let server = Server::start(&["--workers", "1", "--buffer", "1"]);
    let blocker = server.submit("60s");
    server.wait_state(&blocker, "running");
    let queued = server.submit("0s");
    let r = server.cancel(&queued);
    assert_eq!(r.status, 200);
    let task = r.json();
    assert_eq!(task["state"], "cancelled");
    assert!(task["finished_at"].is_string() && task["started_at"].is_null());
    // Its slot is freed only when a worker reaches it.
    assert_eq!(
        server.post("/tasks", r#"{"work_duration": "0s"}"#).status,
        503
    );
    assert_eq!(server.cancel(&blocker).status, 200);
    let next = eventually("room in the queue", || {
        let r = server.post("/tasks", r#"{"work_duration": "0s"}"#);
        (r.status == 202).then(|| r.json()["id"].as_str().unwrap().to_string())
    });
    server.wait_state(&next, "succeeded");
    let never_ran = server.task(&queued);
    assert_eq!(
        (never_ran["state"].as_str(), never_ran["attempt"].as_u64()),
        (Some("cancelled"), Some(0))
    );
    assert!(never_ran["started_at"].is_null());
}

#[test]
fn cancelling_a_running_sleep_interrupts_it() {
    let server = Server::start(&["--workers", "1"]);
    let id = server.submit("60s");
    server.wait_state(&id, "running");
    assert_eq!(
        server.metric("bgtasks_workers_busy{queue=\"default\"}"),
        1.0
    );
    let started = Instant::now();
    let r = server.cancel(&id);
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("cancelled"))
    );
    server.wait_metric("bgtasks_workers_busy{queue=\"default\"}", 0.0);
    // Liveness, not speed: it takes milliseconds; a sleep that was not
    // interrupted would hold the worker for a minute.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let after = server.submit("0s");
    server.wait_state(&after, "succeeded");
    assert_eq!(server.task(&id)["state"], "cancelled");
}

#[test]
#[ignore = "benchmark: prints how long a cancelled sleep holds its worker"]
fn bench_cancel_latency() {
    let server = Server::start(&["--workers", "1"]);
    let mut took: Vec<Duration> = (0..20)
        .map(|_| {
            let id = server.submit("60s");
            server.wait_state(&id, "running");
            let started = Instant::now();
            assert_eq!(server.cancel(&id).status, 200);
            while server.metric("bgtasks_workers_busy{queue=\"default\"}") != 0.0 {}
            started.elapsed()
        })
        .collect();
    println!(
        "cancel of a running sleep until its worker is free: {}",
        common::spread(&mut took)
    );
}

#[test]
fn cancelling_a_finished_or_unknown_task_is_refused() {
    let server = Server::start(&["--keep-finished", "1"]);
    let done = server.submit("0s");
    server.wait_state(&done, "succeeded");
    let r = server.cancel(&done);
    assert_eq!(r.status, 409);
    let body = r.json();
    assert_eq!(body["error"], "the task is already succeeded");
    assert_eq!(
        (body["id"].as_str(), body["state"].as_str()),
        (Some(done.as_str()), Some("succeeded"))
    );
    assert!(body["finished_at"].is_string());
    assert_eq!(server.post("/tasks/nonexistent/cancel", "").status, 404);
    // Evict `done` by finishing another task: its id is now gone.
    let other = server.submit("0s");
    server.wait_state(&other, "succeeded");
    assert_eq!(server.cancel(&done).status, 410);
}

#[test]
fn cancel_races_against_start_consistently() {
    let server = Server::start(&["--workers", "4", "--buffer", "1000"]);
    let mut outcomes = (0, 0);
    for _ in 0..200 {
        let id = server.submit("0s");
        let r = server.cancel(&id);
        let final_state = server.task(&id)["state"].clone();
        match r.status {
            200 => {
                assert_eq!(r.json()["state"], "cancelled");
                assert_eq!(
                    final_state, "cancelled",
                    "a cancelled task must stay cancelled"
                );
                outcomes.0 += 1;
            }
            409 => {
                assert_eq!(r.json()["state"], "succeeded");
                assert_eq!(final_state, "succeeded");
                outcomes.1 += 1;
            }
            other => panic!("cancel answered {other}"),
        }
    }
    server.wait_metric("bgtasks_workers_busy{queue=\"default\"}", 0.0);
    let counts = server.get("/tasks?limit=1").json()["counts"].clone();
    assert_eq!(
        (counts["cancelled"].as_u64(), counts["succeeded"].as_u64()),
        (Some(outcomes.0), Some(outcomes.1))
    );
    assert_eq!(
        server.metric("bgtasks_tasks_finished_total{state=\"cancelled\"}"),
        outcomes.0 as f64
    );
}

#[test]
fn a_long_poll_answers_when_the_state_changes() {
    let server = Server::start(&["--workers", "1"]);
    let id = server.submit("400ms");
    server.wait_state(&id, "running");
    let started = Instant::now();
    let r = server.get(&format!("/tasks/{id}?wait=20s"));
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("succeeded"))
    );
    // Each bound below is liveness: far above what the answer takes, far
    // below the wait it would take if the change did not end it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A terminal task answers at once.
    let started = Instant::now();
    assert_eq!(
        server.get(&format!("/tasks/{id}?wait=20s")).json()["state"],
        "succeeded"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // With no change, the wait ends after its duration.
    let long = server.submit("60s");
    server.wait_state(&long, "running");
    let started = Instant::now();
    let r = server.get(&format!("/tasks/{long}?wait=300ms"));
    assert_eq!(r.json()["state"], "running");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // queued → running is a change too: the poll is read while the task
    // is queued, and answers when it starts, long before the 60 s wait.
    let next = server.submit("60s");
    let mut poll = server.long_polls(&next, "60s", 1).remove(0);
    let started = Instant::now();
    assert_eq!(server.cancel(&long).status, 200);
    let changed = read_response(&mut poll).unwrap().json();
    assert_eq!(changed["state"], "running");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Waits longer than 60 s are cut to 60 s, not refused; bad ones are 400.
    assert_eq!(server.cancel(&next).status, 200);
    assert_eq!(server.get(&format!("/tasks/{next}?wait=90s")).status, 200);
    for bad in ["wait=soon", "wait=-1s", "wait=", "wait=%zz"] {
        assert_eq!(
            server.get(&format!("/tasks/{next}?{bad}")).status,
            400,
            "{bad}"
        );
    }
    assert_eq!(server.get("/tasks/nonexistent?wait=1s").status, 404);
}

/// Starts a server whose one worker is busy, with a thousand connections
/// long-polling a queued task; returns the server, the task and the polls.
fn a_thousand_waiters() -> (Server, String, Vec<TcpStream>) {
    common::raise_fd_limit();
    let server = Server::start(&["--workers", "1", "--max-connections", "2000"]);
    let blocker = server.submit("60s");
    server.wait_state(&blocker, "running");
    let waited = server.submit("60s");
    let waiters = server.long_polls(&waited, "30s", 1000);
    (server, waited, waiters)
}

#[test]
fn a_thousand_waiters_cost_nothing_and_all_wake_on_the_change() {
    let (server, waited, mut waiters) = a_thousand_waiters();
    // Every waiter has been read, so all are waiting: the server's own CPU
    // time over a second of it, which other load does not change.
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let spent = server.cpu_ticks() - before;
    assert!(
        spent <= 5,
        "1000 idle waiters used {spent} ticks of CPU in a second"
    );
    assert_eq!(
        server.metric("bgtasks_workers_busy{queue=\"default\"}"),
        1.0
    );

    let started = Instant::now();
    assert_eq!(server.cancel(&waited).status, 200);
    for stream in &mut waiters {
        let r = read_response(stream).unwrap();
        assert_eq!(r.json()["state"], "cancelled");
    }
    // Liveness: woken by the change, not by their 30 s wait running out.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "benchmark: prints how long a change takes to answer 1000 waiters"]
fn bench_waking_a_thousand_waiters() {
    let (server, waited, mut waiters) = a_thousand_waiters();
    let started = Instant::now();
    assert_eq!(server.cancel(&waited).status, 200);
    for stream in &mut waiters {
        assert_eq!(read_response(stream).unwrap().status, 200);
    }
    println!(
        "cancel of a task until its 1000 long polls are answered: {:?}",
        started.elapsed()
    );
}

#[test]
fn waiters_that_disconnect_free_their_connections() {
    let server = Server::start(&["--workers", "1", "--max-connections", "20"]);
    let id = server.submit("60s");
    server.wait_state(&id, "running");
    for _ in 0..3 {
        // Twenty waiters take every place; closing them must give the places back.
        drop(server.long_polls(&id, "60s", 20));
        let started = Instant::now();
        assert_eq!(server.get("/healthz").status, 200);
        // Liveness: the places come back when the waiters close, not when
        // their 60 s wait would have ended.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn eviction_while_a_long_poll_waits_answers_promptly() {
    let server = Server::start(&["--workers", "1", "--keep-finished", "1", "--buffer", "100"]);
    let blocker = server.submit("60s");
    server.wait_state(&blocker, "running");
    let target = server.submit("60s");
    let mut waiters = server.long_polls(&target, "30s", 20);
    // Cancel the target, then finish more tasks than are kept: the target's
    // record goes while its waiters are waking.
    assert_eq!(server.cancel(&target).status, 200);
    assert_eq!(server.cancel(&blocker).status, 200);
    for _ in 0..5 {
        server.submit("0s");
    }
    let started = Instant::now();
    for stream in &mut waiters {
        let r = read_response(stream).unwrap();
        match r.status {
            200 => assert_eq!(r.json()["state"], "cancelled"),
            410 => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Liveness: answered at the change, not after the 30 s wait.
    assert!(started.elapsed() < Duration::from_secs(15));
    eventually("the target to be evicted", || {
        (server.get(&format!("/tasks/{target}")).status == 410).then_some(())
    });
}

#[test]
fn idempotency_keys_make_repeats_harmless() {
    let server = Server::start(&["--workers", "1", "--buffer", "1"]);
    let body = r#"{"task_id": "once", "work_duration": "60s"}"#;
    let first = server.post_with("/tasks", &["Idempotency-Key: abc-123"], body);
    assert_eq!(first.status, 202);
    let id = first.json()["id"].as_str().unwrap().to_string();
    server.wait_state(&id, "running");
    for path in ["/tasks", "/tasks/"] {
        let again = server.post_with(path, &["idempotency-key: abc-123"], body);
        assert_eq!(again.status, 200);
        assert_eq!(again.header("location"), first.header("location"));
        let json = again.json();
        assert_eq!(
            (json["id"].as_str(), json["task_id"].as_str()),
            (Some(id.as_str()), Some("once"))
        );
        assert_eq!(json["status"], "task queued successfully");
        assert!(json["state"] == "queued" || json["state"] == "running");
    }
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 1.0);
    // A different key is a different task.
    assert_eq!(
        server
            .post_with("/tasks", &["Idempotency-Key: other"], body)
            .status,
        202
    );
    // Bad keys are refused and use nothing up.
    let long = format!("Idempotency-Key: {}", "k".repeat(256));
    for header in [
        "Idempotency-Key:",
        long.as_str(),
        "Idempotency-Key: a b",
        "Idempotency-Key: caf\u{e9}",
    ] {
        let r = server.post_with("/tasks", &[header], body);
        assert_eq!(r.status, 400, "{header}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    // A 400 uses no key: the same key with a good body then creates a task.
    assert_eq!(
        server
            .post_with("/tasks", &["Idempotency-Key: fresh"], "{}")
            .status,
        400
    );
    // The queue is full now (one running, one queued): a 503 uses no key.
    assert_eq!(
        server
            .post_with("/tasks", &["Idempotency-Key: fresh"], body)
            .status,
        503
    );
    assert_eq!(server.cancel(&id).status, 200);
    let created = eventually("room", || {
        let r = server.post_with("/tasks", &["Idempotency-Key: fresh"], body);
        (r.status != 503).then_some(r)
    });
    assert_eq!(created.status, 202);
}

#[test]
fn racing_repeats_of_one_key_create_one_task() {
    let server = Server::start(&["--workers", "1"]);
    let barrier = std::sync::Barrier::new(50);
    let results: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let (server, barrier) = (&server, &barrier);
                scope.spawn(move || {
                    let mut stream = server.connect();
                    let request = common::post_request(
                        "/tasks",
                        &["Idempotency-Key: race"],
                        r#"{"work_duration": "60s"}"#,
                    );
                    barrier.wait();
                    stream.write_all(request.as_bytes()).unwrap();
                    let r = read_response(&mut stream).unwrap();
                    (r.status, r.json()["id"].as_str().unwrap().to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 202).count(),
        1,
        "{results:?}"
    );
    assert_eq!(results.iter().filter(|(s, _)| *s == 200).count(), 49);
    assert!(results.iter().all(|(_, id)| *id == results[0].1));
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 1.0);
    assert_eq!(
        server.get("/tasks").json()["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn finished_tasks_beyond_keep_finished_are_evicted_and_answer_410() {
    let server = Server::start(&["--keep-finished", "2"]);
    let body = r#"{"work_duration": "0s"}"#;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = server.post_with("/tasks", &[&format!("Idempotency-Key: k{i}")], body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        server.wait_state(&id, "succeeded");
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        let expected = if i < 3 { 410 } else { 200 };
        let r = server.get(&format!("/tasks/{id}"));
        assert_eq!(r.status, expected, "task {i}");
        if expected == 410 {
            assert!(r.json()["error"].as_str().unwrap().contains("evicted"));
        }
    }
    let list = server.get("/tasks").json();
    assert_eq!(list["counts"]["succeeded"], 2);
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(
        server.metric("bgtasks_tasks_finished_total{state=\"succeeded\"}"),
        5.0
    );
    // An evicted task's key is free again.
    assert_eq!(
        server
            .post_with("/tasks", &["Idempotency-Key: k0"], body)
            .status,
        202
    );
    assert_eq!(
        server
            .post_with("/tasks", &["Idempotency-Key: k4"], body)
            .status,
        200
    );
}

#[test]
fn memory_stays_flat_however_many_tasks_pass_through() {
    let server = Server::start(&[
        "--workers",
        "16",
        "--buffer",
        "100000",
        "--keep-finished",
        "1000",
    ]);
    let body = |i: usize| format!(r#"{{"task_id": "flat-{i}", "work_duration": "0s"}}"#);
    let wave = |n| {
        let statuses = server.pipeline("/tasks", n, 4, body);
        assert_eq!(statuses.get(&202), Some(&n), "{statuses:?}");
        server.wait_metric("bgtasks_queue_depth{queue=\"default\"}", 0.0);
    };
    wave(10_000);
    let after_ten_thousand = server.rss_kib();
    for _ in 0..10 {
        wave(99_000);
    }
    let after_a_million = server.rss_kib();
    eprintln!(
        "RSS after 10,000 tasks: {after_ten_thousand} KiB; after 1,000,000: {after_a_million} KiB"
    );
    assert!(
        after_a_million < after_ten_thousand + after_ten_thousand / 4 + 1024,
        "{after_ten_thousand} KiB → {after_a_million} KiB"
    );
    let list = server.get("/tasks?limit=1").json();
    assert_eq!(list["counts"]["succeeded"], 1000);
}

/// The lines of a Prometheus text exposition, without comments.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_help_says_what_each_count_holds() {
    let tick = r#"tick=@every 1s {"work_duration": "0s"}"#;
    let server = Server::start(&["--schedule", tick]);
    // No request made a task, and the firing is counted all the same.
    eventually("a firing", || {
        (server.metric("bgtasks_tasks_accepted_total") >= 1.0).then_some(())
    });
    let text = server.get("/metrics").text();
    let help = |name: &str| {
        let prefix = format!("# HELP {name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no HELP for {name}: {text}"))
            .to_string()
    };
    // Depth leaves out retries and delayed tasks waiting for room (README:
    // "a retry or delayed task waiting for room does not" count).
    assert_eq!(
        help("bgtasks_queue_depth"),
        "Tasks in the queue, cancelled ones until a worker reaches them; \
         not those due but waiting for room in it."
    );
    // A schedule's firing is counted: its task is made as if POSTed.
    assert_eq!(
        help("bgtasks_tasks_accepted_total"),
        "Tasks created by requests and by schedules' firings; \
         not idempotent repeats, nor tasks replayed from disk."
    );
}

#[test]
fn metrics_follow_the_prometheus_text_format_and_agree_with_tasks() {
    let server = Server::start(&["--workers", "2", "--buffer", "3"]);
    let fresh = server.get("/metrics");
    assert_eq!(fresh.status, 200);
    assert_eq!(
        fresh.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let text = fresh.text();
    let default = "{queue=\"default\"}";
    let expected = [
        ("bgtasks_queue_depth", default, "gauge", 0.0),
        ("bgtasks_queue_capacity", default, "gauge", 3.0),
        ("bgtasks_workers", default, "gauge", 2.0),
        ("bgtasks_workers_busy", default, "gauge", 0.0),
        ("bgtasks_queue_paused", default, "gauge", 0.0),
        ("bgtasks_tasks_scheduled", "", "gauge", 0.0),
        ("bgtasks_tasks_accepted_total", "", "counter", 0.0),
        ("bgtasks_tasks_rejected_total", "", "counter", 0.0),
    ];
    for (name, labels, kind, value) in expected {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        assert!(
            samples(&text).contains(&(format!("{name}{labels}"), value)),
            "{name} {value}: {text}"
        );
    }
    for state in ["succeeded", "failed", "cancelled"] {
        let name = format!("bgtasks_tasks_finished_total{{state=\"{state}\"}}");
        assert!(samples(&text).contains(&(name, 0.0)), "{text}");
    }
    assert!(text.contains("# TYPE bgtasks_tasks_finished_total counter\n"));
    assert!(text.contains("# TYPE bgtasks_http_requests_total counter\n"));
    assert!(text.ends_with('\n'));

    // Some of everything, then the numbers must agree with /tasks.
    let blockers: Vec<String> = (0..2).map(|_| server.submit("60s")).collect();
    for b in &blockers {
        server.wait_state(b, "running");
    }
    let queued: Vec<String> = (0..3).map(|_| server.submit("60s")).collect();
    assert_eq!(
        server.post("/tasks", r#"{"work_duration": "60s"}"#).status,
        503
    );
    assert_eq!(server.cancel(&blockers[0]).status, 200);
    let done = server.wait_state(&queued[0], "running");
    assert_eq!(done["attempt"], 1);
    assert_eq!(server.get("/nowhere").status, 404);

    let list = server.get("/tasks").json();
    let counts = &list["counts"];
    let metrics = server.get("/metrics").text();
    let value = |name: &str| {
        samples(&metrics)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap()
    };
    assert_eq!(
        value("bgtasks_queue_depth{queue=\"default\"}"),
        counts["queued"].as_f64().unwrap()
    );
    assert_eq!(
        value("bgtasks_workers_busy{queue=\"default\"}"),
        counts["running"].as_f64().unwrap()
    );
    assert_eq!(
        value("bgtasks_tasks_finished_total{state=\"cancelled\"}"),
        counts["cancelled"].as_f64().unwrap()
    );
    assert_eq!(value("bgtasks_tasks_accepted_total"), 5.0);
    assert_eq!(value("bgtasks_tasks_rejected_total"), 1.0);
    // Every answer so far, by code: not counting this /metrics request.
    assert_eq!(value("bgtasks_http_requests_total{code=\"202\"}"), 5.0);
    assert_eq!(value("bgtasks_http_requests_total{code=\"503\"}"), 1.0);
    assert_eq!(value("bgtasks_http_requests_total{code=\"404\"}"), 1.0);
    let polls = value("bgtasks_http_requests_total{code=\"200\"}");
    assert!(polls >= 5.0, "{metrics}");
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let server = Server::start(&[]);
    for path in [
        "/nowhere",
        "/tasks/x/y/z",
        "/queue-task/",
        "/healthz/x",
        "/TASKS",
    ] {
        for method in ["GET", "POST", "DELETE"] {
            let r = server.raw(
                format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            );
            assert_eq!(r.status, 404, "{method} {path}");
        }
    }
    let cases = [
        ("POST", "/", "GET, HEAD"),
        ("GET", "/queue-task", "POST"),
        ("PUT", "/tasks", "GET, HEAD, POST"),
        ("DELETE", "/tasks", "GET, HEAD, POST"),
        ("POST", "/tasks/abc", "GET, HEAD"),
        ("DELETE", "/tasks/abc", "GET, HEAD"),
        ("GET", "/tasks/abc/cancel", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("OPTIONS", "/metrics", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let r = server.raw(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            (r.status, r.header("allow")),
            (405, Some(allow)),
            "{method} {path}"
        );
        assert!(r.json()["error"].is_string());
    }
}
