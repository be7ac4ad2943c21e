//! SPEC §15, batches: `POST /tasks` with a JSON array of 1–1000
//! submissions creates them all or none, answers with every task in
//! order, and with `--data-dir` is durable before its `202`.

mod common;

use common::{Response, Server, TempDir, eventually};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};

/// Returns the tasks of a batch's `202` as (id, task_id, state).
fn created(r: &Response) -> Vec<(String, Value, String)> {
    assert_eq!(r.status, 202, "{r:?}");
    let body = r.json();
    assert_eq!(body.as_object().unwrap().len(), 1, "only tasks: {body}");
    body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t.as_object().unwrap().len(), 3, "{t}");
            let id = t["id"].as_str().unwrap().to_string();
            (
                id,
                t["task_id"].clone(),
                t["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// Returns how many tasks the server retains.
fn retained(server: &Server) -> u64 {
    let counts = server.get("/tasks?limit=1").json()["counts"].clone();
    counts
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// A batch of `n` sleep tasks of `duration`, labelled `prefix-i`.
fn batch(prefix: &str, n: usize, duration: &str) -> String {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"task_id": format!("{prefix}-{i}"), "work_duration": duration}))
        .collect();
    Value::from(items).to_string()
}

#[test]
fn a_batch_creates_every_task_and_answers_them_in_order() {
    let server = Server::start(&["--queue", "other=1"]);
    let body = json!([
        {"task_id": "first", "work_duration": "0s"},
        {"work_duration": "0s", "delay": "1h"},
        {"task_id": "third", "work_duration": "0s", "queue": "other"},
    ]);
    let r = server.post("/tasks", &body.to_string());
    assert_eq!(r.header("Location"), None, "a batch has no one location");
    let tasks = created(&r);
    let labels: Vec<&Value> = tasks.iter().map(|t| &t.1).collect();
    assert_eq!(labels, [&json!("first"), &Value::Null, &json!("third")]);
    assert_eq!(tasks[1].2, "scheduled");
    // Ids sort in creation order, which is the batch's.
    let ids: Vec<&String> = tasks.iter().map(|t| &t.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(server.wait_done(&tasks[0].0)["state"], "succeeded");
    assert_eq!(server.wait_done(&tasks[2].0)["queue"], "other");
    assert_eq!(server.task(&tasks[1].0)["state"], "scheduled");
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 3.0);
    // One item is a batch too; the original route takes one object only.
    assert_eq!(
        created(&server.post("/tasks", &batch("one", 1, "0s"))).len(),
        1
    );
    let r = server.post("/queue-task", &batch("old", 1, "0s"));
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json(), json!({"error": "failed to read POST body"}));
    assert_eq!(retained(&server), 4);
}

#[test]
fn a_bad_item_is_a_400_with_its_index_and_nothing_is_created() {
    let server = Server::start(&["--max-body", "1000000", "--buffer", "1000"]);
    let ok = json!({"work_duration": "0s"});
    let cases: &[(Value, Value)] = &[
        (
            json!([ok, ok, {"work_duration": "soon"}]),
            json!({"error": "failed to parse work duration in request", "index": 2}),
        ),
        (
            json!([{"work_duration": "0s", "queue": "nope"}, ok]),
            json!({"error": "unknown queue \"nope\"", "index": 0}),
        ),
        (
            json!([ok, 7]),
            json!({"error": "failed to read POST body", "index": 1}),
        ),
        (
            json!([ok, {"work_duration": "0s", "delay": "1h", "run_at": "2030-01-01T00:00:00Z"}]),
            json!({"error": "run_at and delay cannot be used together", "index": 1}),
        ),
        (
            json!([]),
            json!({"error": "a batch holds 1 to 1000 submissions"}),
        ),
        (
            Value::from(vec![ok.clone(); 1001]),
            json!({"error": "a batch holds 1 to 1000 submissions"}),
        ),
    ];
    for (body, expected) in cases {
        let r = server.post("/tasks", &body.to_string());
        assert_eq!((r.status, r.json()), (400, expected.clone()), "{body}");
    }
    for broken in ["[", "[{\"work_duration\": \"0s\"},", "[1] 2"] {
        let r = server.post("/tasks", broken);
        assert_eq!(r.status, 400, "{broken}: {r:?}");
        assert_eq!(r.json(), json!({"error": "failed to read POST body"}));
    }
    assert_eq!(retained(&server), 0);
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 0.0);
    // A thousand is not too many.
    assert_eq!(
        created(&server.post("/tasks", &batch("k", 1000, "0s"))).len(),
        1000
    );
}

#[test]
fn a_batch_that_does_not_fit_is_a_503_and_nothing_is_created() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--buffer",
        "3",
        "--queue",
        "small=1/1",
        "--max-scheduled",
        "2",
    ]);
    let running = server.submit("60s");
    server.wait_state(&running, "running");
    // Three places in default: four do not fit, counting the batch's own.
    let r = server.post("/tasks", &batch("four", 4, "60s"));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("Retry-After"), Some("60"));
    assert_eq!(r.json()["error"], "workers are busy, try again later");
    // Room in default, none in `small` for two: the whole batch waits.
    let mixed = json!([
        {"work_duration": "60s"},
        {"work_duration": "60s", "queue": "small"},
        {"work_duration": "60s", "queue": "small"},
    ]);
    let r = server.post("/tasks", &mixed.to_string());
    assert_eq!(r.status, 503, "{r:?}");
    // Three delayed tasks where two may wait.
    let delayed = json!([
        {"work_duration": "0s", "delay": "1h"},
        {"work_duration": "0s", "delay": "1h"},
        {"work_duration": "0s", "delay": "1h"},
    ]);
    let r = server.post("/tasks", &delayed.to_string());
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.json()["error"],
        "too many scheduled tasks, try again later"
    );
    assert_eq!(retained(&server), 1);
    // What fits is taken whole.
    assert_eq!(
        created(&server.post("/tasks", &batch("three", 3, "60s"))).len(),
        3
    );
    assert_eq!(server.metric("bgtasks_queue_depth{queue=\"default\"}"), 3.0);
}

#[test]
fn a_batch_is_all_or_nothing_under_concurrent_single_submissions() {
    /// Tasks in a batch.
    const SIZE: usize = 10;
    let server = Server::start(&["--workers", "1", "--buffer", "50"]);
    let running = server.submit("60s");
    server.wait_state(&running, "running");
    let done = AtomicBool::new(false);
    let (batches, singles) = std::thread::scope(|scope| {
        let singles = scope.spawn(|| {
            let mut made = 0;
            while !done.load(Ordering::Relaxed) {
                let r = server.post("/tasks", r#"{"task_id": "single", "work_duration": "60s"}"#);
                assert!(matches!(r.status, 202 | 503), "{r:?}");
                made += usize::from(r.status == 202);
            }
            made
        });
        let mut made = Vec::new();
        for b in 0..40 {
            let r = server.post("/tasks", &batch(&format!("b{b}"), SIZE, "60s"));
            match r.status {
                202 => made.push((b, created(&r).len())),
                503 => {}
                _ => panic!("{r:?}"),
            }
        }
        done.store(true, Ordering::Relaxed);
        (made, singles.join().unwrap())
    });
    // Every batch answered 202 made all its tasks, and no other made any.
    let listed = server.get("/tasks?limit=1000").json()["tasks"].clone();
    let mut per_batch = vec![0; 40];
    for task in listed.as_array().unwrap() {
        let label = task["task_id"].as_str().unwrap_or_default();
        if let Some((b, _)) = label.strip_prefix('b').and_then(|l| l.split_once('-')) {
            per_batch[b.parse::<usize>().unwrap()] += 1;
        }
    }
    for (b, n) in per_batch.iter().enumerate() {
        let made = batches.iter().find(|m| m.0 == b).map_or(0, |m| m.1);
        assert_eq!(*n, made, "batch {b}: {per_batch:?}");
        assert!(*n == 0 || *n == SIZE, "batch {b}: {per_batch:?}");
    }
    // And the queue never held more than its capacity.
    let queued = batches.len() * SIZE + singles;
    assert!(queued <= 50, "{queued}");
    assert_eq!(
        server.metric("bgtasks_queue_depth{queue=\"default\"}"),
        queued as f64
    );
    eprintln!("{} batches and {singles} singles fit", batches.len());
}

#[test]
fn a_batch_survives_kill_9_right_after_its_202() {
    let dir = TempDir::new("batch-kill");
    let data = dir.arg("data");
    let args = [
        "--workers",
        "1",
        "--buffer",
        "1000",
        "--data-dir",
        data.as_str(),
    ];
    let mut server = Server::start(&args);
    let body = batch("crash", 500, "60s");
    let tasks = created(&server.post("/tasks", &body));
    server.kill();
    let server = Server::start(&args);
    for (id, label, _) in &tasks {
        let task = server.task(id);
        assert_eq!(&task["task_id"], label);
        assert!(
            matches!(task["state"].as_str(), Some("queued" | "running")),
            "{task}"
        );
    }
    assert_eq!(retained(&server), 500);
}

#[test]
fn an_idempotency_key_covers_the_whole_batch_across_a_restart() {
    let dir = TempDir::new("batch-key");
    let data = dir.arg("data");
    let args = ["--data-dir", data.as_str()];
    let mut server = Server::start(&args);
    let body = batch("keyed", 3, "0s");
    let key = ["Idempotency-Key: batch-1"];
    let first = created(&server.post_with("/tasks", &key, &body));
    for (id, ..) in &first {
        server.wait_done(id);
    }
    let again = |server: &Server| {
        let r = server.post_with("/tasks", &key, &body);
        assert_eq!(r.status, 200, "{r:?}");
        let tasks = r.json()["tasks"].clone();
        let tasks = tasks.as_array().unwrap();
        let ids: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
        let states: Vec<&str> = tasks.iter().map(|t| t["state"].as_str().unwrap()).collect();
        assert_eq!(ids, first.iter().map(|t| t.0.as_str()).collect::<Vec<_>>());
        assert_eq!(states, ["succeeded"; 3]);
    };
    again(&server);
    // A different body with the key is a mistake; one batch's key is not
    // another's.
    let r = server.post_with("/tasks", &key, &batch("keyed", 2, "0s"));
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(retained(&server), 3);
    server.stop(rustix::process::Signal::TERM);
    let server = Server::start(&args);
    again(&server);
    eventually("nothing more made", || {
        (retained(&server) == 3).then_some(())
    });
}

#[test]
fn a_batch_is_a_pipeline_when_its_items_name_earlier_ones_as_hash_n() {
    let dir = TempDir::new("batch-pipeline");
    let script = dir.script("fail.sh", "exit 1");
    let server = Server::start(&["--handler", &format!("fail={script}")]);
    let failed = server.post("/tasks", r#"{"kind": "fail"}"#).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.wait_done(&failed)["state"], "failed");
    let body = json!([
        {"task_id": "fetch", "work_duration": "50ms"},
        {"task_id": "transform", "work_duration": "0s", "after": ["#0"]},
        {"task_id": "upload", "work_duration": "0s", "after": ["#1", "#0"]},
        {"task_id": "doomed", "work_duration": "0s", "after": [failed]},
        {"task_id": "behind", "work_duration": "0s", "after": ["#2", "#3"]},
    ]);
    let tasks = created(&server.post("/tasks", &body.to_string()));
    let states: Vec<&str> = tasks.iter().map(|t| t.2.as_str()).collect();
    assert_eq!(
        states,
        ["queued", "waiting", "waiting", "cancelled", "cancelled"]
    );
    let id = |i: usize| tasks[i].0.clone();
    // The status shows the real ids, in the order given.
    assert_eq!(server.task(&id(2))["after"], json!([id(1), id(0)]));
    assert_eq!(
        server.task(&id(3))["error"],
        format!("dependency {failed} failed")
    );
    assert_eq!(
        server.task(&id(4))["error"],
        format!("dependency {} was cancelled", id(3))
    );
    // The chain runs in order.
    let finished: Vec<i64> = (0..3)
        .map(|i| {
            let task = server.wait_done(&id(i));
            assert_eq!(task["state"], "succeeded", "{task}");
            common::epoch_millis(&task["started_at"])
        })
        .collect();
    assert!(finished.windows(2).all(|w| w[0] <= w[1]), "{finished:?}");
}

#[test]
fn hash_n_names_only_an_earlier_item_of_the_same_batch() {
    let server = Server::start(&[]);
    let ok = json!({"work_duration": "0s"});
    let cases: &[(Value, usize, &str)] = &[
        (
            json!([ok, {"work_duration": "0s", "after": ["#1"]}]),
            1,
            "after: \"#1\" names no earlier item of this batch",
        ),
        (
            json!([{"work_duration": "0s", "after": ["#0"]}]),
            0,
            "after: \"#0\" names no earlier item of this batch",
        ),
        (
            json!([ok, ok, {"work_duration": "0s", "after": ["#7"]}]),
            2,
            "after: \"#7\" names no earlier item of this batch",
        ),
        (
            json!([ok, {"work_duration": "0s", "after": ["#0", "#0"]}]),
            1,
            "after: \"#0\" is named twice",
        ),
        (
            json!([ok, {"work_duration": "0s", "after": ["AAAAAAAAA"]}]),
            1,
            "after: \"AAAAAAAAA\" is not the id of a task this server made",
        ),
    ];
    for (body, index, error) in cases {
        let r = server.post("/tasks", &body.to_string());
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"error": error, "index": index})),
            "{body}"
        );
    }
    // Outside a batch, "#0" is no id.
    let r = server.post("/tasks", r##"{"work_duration": "0s", "after": ["#0"]}"##);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        r.json()["error"],
        "after: \"#0\" is not the id of a task this server made"
    );
    assert_eq!(retained(&server), 0);
}

#[test]
fn a_pipeline_batch_survives_kill_9_and_runs_after_the_restart() {
    let dir = TempDir::new("batch-pipeline-kill");
    let data = dir.arg("data");
    let args = ["--workers", "1", "--data-dir", data.as_str()];
    let mut server = Server::start(&args);
    let blocker = server.submit("60s");
    server.wait_state(&blocker, "running");
    let body = json!([
        {"task_id": "a", "work_duration": "0s"},
        {"task_id": "b", "work_duration": "0s", "after": ["#0"]},
    ]);
    let tasks = created(&server.post("/tasks", &body.to_string()));
    server.kill();
    let server = Server::start(&args);
    assert_eq!(server.task(&tasks[1].0)["after"], json!([tasks[0].0]));
    assert_eq!(server.task(&tasks[1].0)["state"], "waiting");
    assert!(server.cancel(&blocker).status == 200);
    assert_eq!(server.wait_done(&tasks[1].0)["state"], "succeeded");
}
