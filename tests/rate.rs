//! SPEC §15, rate limits: `--rate QUEUE=N/UNIT` lets at most N tasks
//! start per UNIT in a queue, as a token bucket of N refilled evenly.
//! Starts are checked by their order and count, never by how fast the
//! server is: the bucket sets a floor on the time between starts, which
//! a busy machine can only lengthen.

mod common;

use common::{PATIENCE, Server, TempDir, epoch_millis, eventually};
use rustix::process::Signal;
use serde_json::Value;

/// The counter of starts that had to wait for a token in `default`.
const LIMITED: &str = "bgtasks_queue_rate_limited_total{queue=\"default\"}";

/// Returns the states of `ids`, in order.
fn states(server: &Server, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| server.task(id)["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn with_one_start_an_hour_only_the_burst_starts_and_the_rest_stay_queued() {
    let server = Server::start(&[
        "--workers",
        "4",
        "--rate",
        "default=1/h",
        "--queue",
        "free=1",
    ]);
    let ids: Vec<String> = (0..5).map(|_| server.submit("0s")).collect();
    // One worker took the only token, ran its task and took the fifth:
    // now each of the four holds a task and waits for a token.
    server.wait_metric(LIMITED, 4.0);
    let mut seen = states(&server, &ids);
    seen.sort();
    assert_eq!(seen, ["queued", "queued", "queued", "queued", "succeeded"]);
    let default = server.queue("default");
    assert_eq!(
        (&default["rate"], &default["depth"], &default["busy"]),
        (&Value::from("1/h"), &Value::from(4), &Value::from(0)),
        "{default}"
    );
    assert!(
        server.get("/queues").text().contains("\"rate\": \"1/h\""),
        "the rate as given"
    );
    // Another queue has no rate, and its tasks start as before.
    assert_eq!(server.queue("free")["rate"], Value::Null);
    let free = server.post("/tasks", r#"{"work_duration": "0s", "queue": "free"}"#);
    assert_eq!(free.status, 202, "{free:?}");
    server.wait_done(free.json()["id"].as_str().unwrap());
    assert_eq!(
        server.metric("bgtasks_queue_rate_limited_total{queue=\"free\"}"),
        0.0
    );
    // Nothing more started meanwhile.
    assert_eq!(server.metric(LIMITED), 4.0);
    assert_eq!(server.queue("default")["depth"], 4);
}

#[test]
fn five_a_second_start_five_at_once_then_one_every_fifth_of_a_second() {
    let server = Server::start(&["--workers", "5", "--rate", "default=5/s"]);
    let ids: Vec<String> = (0..20).map(|_| server.submit("0s")).collect();
    let mut started: Vec<i64> = ids
        .iter()
        .map(|id| epoch_millis(&server.wait_done(id)["started_at"]))
        .collect();
    started.sort_unstable();
    // In any stretch of time the bucket lets through at most its 5 plus
    // one for every 200 ms of the stretch; 20 ms of slack cover the
    // timestamps' rounding to the millisecond.
    for i in 0..started.len() {
        for j in i..started.len() {
            let allowed = 5 + (started[j] - started[i] + 20) / 200;
            assert!(
                (j - i + 1) as i64 <= allowed,
                "starts {i}..={j} within {} ms: {started:?}",
                started[j] - started[i]
            );
        }
    }
    // So the last 15 took at least 15 × 200 ms: measured over ≥ 2 s.
    let spread = started[19] - started[0];
    assert!(spread >= 2980, "{spread} ms: {started:?}");
    assert!(server.metric(LIMITED) >= 1.0);
    eprintln!(
        "20 starts at 5/s: the last 15 over {} ms",
        started[19] - started[4]
    );
}

#[test]
fn a_paused_queue_takes_no_token() {
    let mut server = Server::start(&[
        "--workers",
        "1",
        "--rate",
        "default=1/h",
        "--log-level",
        "debug",
    ]);
    let r = server.post("/queues/default/pause", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["rate"], "1/h", "{r:?}");
    let first = server.submit("0s");
    // The worker has taken it, and holds it: the queue is paused.
    server.wait_log("held: its queue is paused");
    assert_eq!(server.task(&first)["state"], "queued");
    assert_eq!(server.post("/queues/default/resume", "").status, 200);
    // The bucket's only token was still there for it.
    server.wait_done(&first);
    assert_eq!(server.task(&first)["state"], "succeeded");
    assert_eq!(server.metric(LIMITED), 0.0);
    // The next must wait for the next token, an hour away, queued.
    let second = server.submit("0s");
    server.wait_metric(LIMITED, 1.0);
    server.wait_log("held: it waits for a token of its queue's --rate");
    assert_eq!(server.task(&second)["state"], "queued");
}

#[test]
fn shutdown_ends_a_wait_for_a_token_at_once_and_the_task_stays_queued() {
    let dir = TempDir::new("rate-shutdown");
    let data = dir.arg("data");
    let args = [
        "--workers",
        "1",
        "--rate",
        "default=1/h",
        "--grace",
        "1h",
        "--data-dir",
        data.as_str(),
    ];
    let mut server = Server::start(&args);
    let first = server.submit("0s");
    let second = server.submit("0s");
    server.wait_done(&first);
    server.wait_metric(LIMITED, 1.0);
    // The worker waits for a token an hour away, with an hour of grace:
    // only the stop signal racing its wait ends it.
    let (code, took) = server.stop(Signal::TERM);
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(took < PATIENCE / 2, "{took:?}");
    assert!(
        server.log().contains("1 queued"),
        "the held task stays queued: {}",
        server.log()
    );
    // It is still queued on disk; a new run starts with a full bucket.
    let server = Server::start(&args);
    assert_eq!(server.wait_done(&second)["state"], "succeeded");
    eventually("the first to be kept", || {
        (server.task(&first)["state"] == "succeeded").then_some(())
    });
}
