//! SPEC §11: the `GET /events` stream (framing, order, stats, keep-alive,
//! filters, lag, shutdown, auth, `HEAD`, `405`) and the dashboard at `/`.

mod common;

use common::{
    Event, EventStream, Next, PATIENCE, Server, closes, eventually, read_head, read_response,
};
use rustix::process::Signal;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The members of a `task` event's data, in the order SPEC §11 lists them.
const TASK_MEMBERS: [&str; 8] = [
    "id", "task_id", "kind", "queue", "state", "attempt", "progress", "at",
];

/// Submits a JSON body to `POST /tasks`, expects a `202`, and returns the id.
fn submit(server: &Server, body: Value) -> String {
    let r = server.post("/tasks", &body.to_string());
    assert_eq!(r.status, 202, "{body}: {r:?}");
    r.json()["id"].as_str().unwrap().to_string()
}

/// Waits until every task in `ids` is terminal.
fn wait_terminal(server: &Server, ids: &[String]) {
    for id in ids {
        eventually("the task to end", || {
            let state = server.task(id)["state"].clone();
            matches!(state.as_str(), Some("succeeded" | "failed" | "cancelled")).then_some(())
        });
    }
}

/// Reads `task` events (skipping `stats`) until `done` holds for those
/// read so far; returns them. Any other event fails the test.
fn task_events(stream: &mut EventStream, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    while !done(&events) {
        let event = stream.event();
        match event.name.as_str() {
            "stats" => {}
            "task" => events.push(event),
            _ => panic!("unexpected {event:?} after {events:?}"),
        }
    }
    events
}

/// Tells whether `events` hold a `task` event of `id` in `state`.
fn saw(events: &[Event], id: &str, state: &str) -> bool {
    events
        .iter()
        .any(|e| e.data["id"] == id && e.data["state"] == state)
}

/// Returns the states of `id`'s events, in the order they came.
fn states(events: &[Event], id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.data["id"] == id)
        .map(|e| e.data["state"].as_str().unwrap().to_string())
        .collect()
}

/// Returns the position of `id`'s event in `state`.
fn position(events: &[Event], id: &str, state: &str) -> usize {
    events
        .iter()
        .position(|e| e.data["id"] == id && e.data["state"] == state)
        .unwrap_or_else(|| panic!("no {state} event of {id} in {events:?}"))
}

/// Reads a number from `/proc/sys`.
fn sysctl(path: &str, field: usize) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_whitespace().nth(field).unwrap().parse().unwrap()
}

/// Returns how many bytes of a stream the kernel can hold between a
/// server that writes and a client that never reads, at most: the
/// largest send buffer the sender's side may grow to, and the receive
/// buffer a socket starts with (it grows only as its owner reads).
fn socket_capacity() -> usize {
    sysctl("/proc/sys/net/ipv4/tcp_wmem", 2) + sysctl("/proc/sys/net/ipv4/tcp_rmem", 1)
}

#[test]
fn the_stream_is_chunked_with_whole_events_in_each_chunk_and_exact_headers() {
    let server = Server::start(&[]);
    let mut stream = server.events("");
    let head = &stream.head;
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-store"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-length"), None, "{head:?}");
    for (name, value) in &head.headers {
        let known = ["date", "content-type", "cache-control", "transfer-encoding"];
        assert!(
            known.contains(&name.to_ascii_lowercase().as_str())
                || (name.eq_ignore_ascii_case("connection") && value == "close"),
            "unexpected header {name}: {value}"
        );
    }
    // Labels of many bytes per character: a chunk's size counts bytes.
    let labels = ["naïve \"quoted\" ✓", "日本語のラベル", "x\\y\u{1F600}"];
    let first = stream.event();
    assert_eq!(first.name, "stats", "{first:?}");
    let ids: Vec<String> = labels
        .iter()
        .map(|l| submit(&server, json!({"task_id": l, "work_duration": "0s"})))
        .collect();
    // Every chunk read is checked to hold whole events: none is split.
    let events = task_events(&mut stream, |events| {
        ids.iter().all(|id| saw(events, id, "succeeded"))
    });
    for (id, label) in ids.iter().zip(labels) {
        let event = events.iter().find(|e| e.data["id"] == **id).unwrap();
        assert_eq!(event.data["task_id"], label, "{event:?}");
        assert!(event.text.starts_with("event: task\ndata: {"), "{event:?}");
    }
}

#[test]
fn an_http10_client_gets_the_stream_unchunked_until_the_server_closes_it() {
    let mut server = Server::start(&["--grace", "60s"]);
    let mut stream = EventStream::open(server.connect(), b"GET /events HTTP/1.0\r\n\r\n");
    let head = &stream.head;
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-store"));
    assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
    assert_eq!(head.header("content-length"), None, "{head:?}");
    assert_eq!(stream.event().name, "stats");
    let id = submit(&server, json!({"work_duration": "0s"}));
    let events = task_events(&mut stream, |events| saw(events, &id, "succeeded"));
    assert_eq!(states(&events, &id), ["queued", "running", "succeeded"]);
    server.signal(Signal::TERM);
    let last = stream.until("shutdown");
    assert_eq!(last.data, json!({}));
    assert!(matches!(stream.next(PATIENCE), Next::Closed));
    assert_eq!(server.wait_exit(PATIENCE).unwrap().code(), Some(0));
}

#[test]
fn a_tasks_events_arrive_in_the_order_they_happened() {
    let server = Server::start(&["--workers", "1"]);
    let mut stream = server.events("");
    assert_eq!(stream.event().name, "stats");
    let later = submit(
        &server,
        json!({"task_id": "later", "work_duration": "0s", "delay": "1h"}),
    );
    let a = submit(&server, json!({"task_id": "a", "work_duration": "200ms"}));
    let b = submit(&server, json!({"task_id": "b", "work_duration": "0s"}));
    let c = submit(&server, json!({"task_id": "c", "work_duration": "0s"}));
    wait_terminal(&server, &[a.clone(), b.clone(), c.clone()]);
    assert_eq!(server.cancel(&later).status, 200);
    let events = task_events(&mut stream, |events| saw(events, &later, "cancelled"));
    assert_eq!(states(&events, &later), ["scheduled", "cancelled"]);
    for id in [&a, &b, &c] {
        assert_eq!(states(&events, id), ["queued", "running", "succeeded"]);
        let attempts: Vec<&Value> = events
            .iter()
            .filter(|e| e.data["id"] == **id)
            .map(|e| &e.data["attempt"])
            .collect();
        assert_eq!(attempts, [&json!(0), &json!(1), &json!(1)]);
        // Each event's time is the one the status keeps for that change.
        let status = server.task(id);
        for (state, member) in [
            ("queued", "created_at"),
            ("running", "started_at"),
            ("succeeded", "finished_at"),
        ] {
            let event = &events[position(&events, id, state)];
            assert_eq!(event.data["at"], status[member], "{state}: {status}");
        }
    }
    // One worker runs them one after another, in the order they came.
    assert!(position(&events, &a, "succeeded") < position(&events, &b, "running"));
    assert!(position(&events, &b, "succeeded") < position(&events, &c, "running"));
    let mut last = 0;
    for event in &events {
        let members: Vec<&str> = event
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = TASK_MEMBERS.to_vec();
        expected.sort();
        let mut got = members.clone();
        got.sort();
        assert_eq!(got, expected, "{event:?}");
        assert_eq!(event.data["kind"], "sleep");
        assert_eq!(event.data["queue"], "default");
        assert_eq!(event.data["progress"], Value::Null);
        let at = common::epoch_millis(&event.data["at"]);
        assert!(at >= last, "`at` went back: {events:#?}");
        last = at;
    }
}

#[test]
fn stats_come_first_then_at_most_once_a_second_while_things_change() {
    /// Tasks submitted, one every [`PACE`]: about 3 s of changes.
    const TASKS: usize = 150;
    /// The time between two submissions.
    const PACE: Duration = Duration::from_millis(20);
    let server = Server::start(&[]);
    let mut stream = server.events("");
    let first = stream.event();
    assert_eq!(first.name, "stats", "{first:?}");
    assert_eq!(
        first.data,
        json!({
            "counts": {"waiting": 0, "scheduled": 0, "queued": 0, "running": 0, "succeeded": 0,
                       "failed": 0, "cancelled": 0},
            "queues": [{"name": "default", "workers": 10, "busy": 0, "depth": 0,
                        "capacity": 100, "paused": false, "rate": null}],
            "accepted_total": 0,
            "rejected_total": 0,
            "finished_total": {"succeeded": 0, "failed": 0, "cancelled": 0},
        })
    );
    let started = Instant::now();
    let (stats, took) = std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..TASKS {
                submit(&server, json!({"work_duration": "0s"}));
                std::thread::sleep(PACE);
            }
        });
        let mut stats = Vec::new();
        loop {
            let event = stream.event();
            if event.name != "stats" {
                continue;
            }
            let done = event.data["finished_total"]["succeeded"] == TASKS;
            stats.push(event);
            if done {
                return (stats, started.elapsed());
            }
        }
    });
    // Each stats event was sent after `started` (nothing changed before),
    // and they are at least a second apart.
    let most = took.as_secs() as usize + 1;
    assert!(
        stats.len() <= most,
        "{} stats events in {took:?}: {stats:#?}",
        stats.len()
    );
    assert!(
        stats.len() >= 2,
        "no stats while tasks came for {took:?}: {stats:#?}"
    );
    let accepted: Vec<u64> = stats
        .iter()
        .map(|s| s.data["accepted_total"].as_u64().unwrap())
        .collect();
    assert!(accepted.is_sorted(), "{accepted:?}");
    let last = stats.last().unwrap();
    assert_eq!(last.data["accepted_total"], TASKS);
    assert_eq!(last.data["counts"]["succeeded"], TASKS);
    // Once nothing changes, nothing more is said: at most the one stats
    // event of a change that came between the last one's taking and its
    // writing (it says the same), then silence.
    let mut after = 0;
    loop {
        match stream.next(Duration::from_secs(3)) {
            Next::Silent => break,
            Next::Event(e) if e.name == "stats" && e.data == last.data && after == 0 => after += 1,
            other => panic!("after the last change: {other:?}"),
        }
    }
}

#[test]
fn nothing_is_sent_while_nothing_changes_and_a_pause_is_a_change() {
    let server = Server::start(&[]);
    let mut stream = server.events("");
    assert_eq!(stream.event().name, "stats");
    assert!(matches!(stream.next(Duration::from_secs(3)), Next::Silent));
    assert_eq!(server.post("/queues/default/pause", "").status, 200);
    let stats = stream.event();
    assert_eq!(stats.name, "stats", "{stats:?}");
    assert_eq!(stats.data["queues"][0]["paused"], true, "{stats:?}");
}

#[test]
fn a_silent_stream_says_keep_alive_after_15_seconds() {
    let server = Server::start(&[]);
    let mut stream = server.events("");
    assert_eq!(stream.event().name, "stats");
    let quiet = Instant::now();
    let event = match stream.next(Duration::from_secs(30)) {
        Next::Event(event) => event,
        other => panic!("no keep-alive within 30 s: {other:?}"),
    };
    let took = quiet.elapsed();
    assert_eq!(event.text, ": keep-alive\n\n");
    // 15 s after the last write; a generous bound above, for liveness.
    assert!(
        took >= Duration::from_secs(14) && took < Duration::from_secs(30),
        "{took:?}"
    );
}

/// One stream's filters, as the test checks them on each event.
#[derive(Default)]
struct Filter {
    id: Option<String>,
    label: Option<&'static str>,
    kind: Option<&'static str>,
    queue: Option<&'static str>,
}

impl Filter {
    /// Tells whether a task with these members passes.
    fn passes(&self, id: &str, label: &str, kind: &str, queue: &str) -> bool {
        self.id.as_deref().is_none_or(|f| f == id)
            && self.label.is_none_or(|f| f == label)
            && self.kind.is_none_or(|f| f == kind)
            && self.queue.is_none_or(|f| f == queue)
    }

    /// Returns a body for a task that passes, waiting an hour to start:
    /// the stream's sentinel, cancelled once everything else happened.
    fn sentinel(&self) -> Value {
        let mut body = json!({"task_id": self.label.unwrap_or("s"), "delay": "1h"});
        if let Some(kind) = self.kind {
            body["kind"] = json!(kind);
        }
        if let Some(queue) = self.queue {
            body["queue"] = json!(queue);
        }
        if body["kind"].is_null() || body["kind"] == "sleep" {
            body["work_duration"] = json!("0s");
        }
        body
    }
}

#[test]
fn filters_pass_only_the_tasks_they_name_alone_and_combined() {
    let dir = common::TempDir::new("events-filters");
    let program = dir.script("k.sh", "cat >/dev/null");
    let handler = format!("k={program}");
    let server = Server::start(&["--queue", "q1=2", "--queue", "q2=2", "--handler", &handler]);
    // The task the `id` filters name, also their sentinel.
    let x = submit(
        &server,
        json!({"task_id": "x", "kind": "k", "queue": "q2", "delay": "1h"}),
    );
    let filters: Vec<(String, Filter)> = vec![
        (
            "queue=q1".into(),
            Filter {
                queue: Some("q1"),
                ..Filter::default()
            },
        ),
        (
            "kind=k".into(),
            Filter {
                kind: Some("k"),
                ..Filter::default()
            },
        ),
        (
            "kind=sleep".into(),
            Filter {
                kind: Some("sleep"),
                ..Filter::default()
            },
        ),
        (
            "task_id=a+b".into(),
            Filter {
                label: Some("a b"),
                ..Filter::default()
            },
        ),
        (
            "kind=k&queue=q1".into(),
            Filter {
                kind: Some("k"),
                queue: Some("q1"),
                ..Filter::default()
            },
        ),
        (
            "task_id=a%20b&queue=q2".into(),
            Filter {
                label: Some("a b"),
                queue: Some("q2"),
                ..Filter::default()
            },
        ),
        (
            "task_id=b&kind=sleep&queue=q1".into(),
            Filter {
                label: Some("b"),
                kind: Some("sleep"),
                queue: Some("q1"),
                ..Filter::default()
            },
        ),
        (
            // Matches none of the tasks below, only its sentinel.
            "task_id=a+b&queue=q1".into(),
            Filter {
                label: Some("a b"),
                queue: Some("q1"),
                ..Filter::default()
            },
        ),
        (
            format!("id={x}"),
            Filter {
                id: Some(x.clone()),
                ..Filter::default()
            },
        ),
        (
            format!("kind=k&id={x}&task_id=x"),
            Filter {
                id: Some(x.clone()),
                kind: Some("k"),
                label: Some("x"),
                ..Filter::default()
            },
        ),
    ];
    let sentinels: Vec<String> = filters
        .iter()
        .map(|(_, f)| match &f.id {
            Some(id) => id.clone(),
            None => submit(&server, f.sentinel()),
        })
        .collect();
    let mut streams: Vec<EventStream> = filters
        .iter()
        .map(|(query, _)| server.events(&format!("?{query}")))
        .collect();
    // (label, kind, queue) of the tasks that run while the streams watch.
    let tasks = [
        ("a b", "sleep", "default"),
        ("b", "sleep", "q1"),
        ("a b", "k", "q2"),
        ("b", "k", "q1"),
        ("c", "sleep", "q2"),
    ];
    let ids: Vec<String> = tasks
        .iter()
        .map(|&(label, kind, queue)| {
            let mut body = json!({"task_id": label, "kind": kind, "queue": queue});
            if kind == "sleep" {
                body["work_duration"] = json!("0s");
            }
            submit(&server, body)
        })
        .collect();
    wait_terminal(&server, &ids);
    // Every event of those tasks was made before the sentinels end, so a
    // stream that has seen its sentinel end has seen all it was sent.
    let mut cancelled = sentinels.clone();
    cancelled.sort();
    cancelled.dedup();
    for id in &cancelled {
        assert_eq!(server.cancel(id).status, 200);
    }
    for (((query, filter), stream), sentinel) in filters.iter().zip(&mut streams).zip(&sentinels) {
        let events = task_events(stream, |events| saw(events, sentinel, "cancelled"));
        for event in &events {
            let d = &event.data;
            let s = |name: &str| d[name].as_str().unwrap().to_string();
            assert!(
                filter.passes(&s("id"), &s("task_id"), &s("kind"), &s("queue")),
                "?{query} passed {event:?}"
            );
            assert!(
                ids.contains(&s("id")) || sentinels.contains(&s("id")),
                "?{query}: an event of a task made before the stream: {event:?}"
            );
        }
        for (id, &(label, kind, queue)) in ids.iter().zip(&tasks) {
            let expected: &[&str] = match filter.passes(id, label, kind, queue) {
                true => &["queued", "running", "succeeded"],
                false => &[],
            };
            assert_eq!(
                states(&events, id),
                expected,
                "?{query}, task {label} {kind} {queue}"
            );
        }
    }
}

#[test]
fn bad_filters_are_a_400_before_any_stream() {
    let server = Server::start(&["--queue", "q=1"]);
    let made = submit(&server, json!({"work_duration": "0s"}));
    // An id of the server's form that it has not made yet: the next one
    // after `made`, or later.
    let alphabet = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
    let first = made.chars().next().unwrap();
    let later = alphabet.chars().skip_while(|&c| c != first).nth(1).unwrap();
    let unmade = format!("{later}{}", &made[1..]);
    let not_made = "id must be the id of a task this server made";
    let cases: Vec<(String, String)> = vec![
        ("id=nope".into(), not_made.into()),
        ("id=".into(), not_made.into()),
        (format!("id={unmade}"), not_made.into()),
        ("kind=x".into(), r#"unknown task kind "x""#.into()),
        ("queue=x".into(), r#"unknown queue "x""#.into()),
        ("queue=q&kind=x".into(), r#"unknown task kind "x""#.into()),
        (
            format!("id={made}&queue=nope"),
            r#"unknown queue "nope""#.into(),
        ),
        (
            "kind=%ZZ".into(),
            "the query string has a broken percent escape".into(),
        ),
    ];
    for (query, error) in cases {
        let r = server.get(&format!("/events?{query}"));
        assert_eq!(r.status, 400, "?{query}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), json!({"error": error}), "?{query}");
    }
    // The same filters, well made, start a stream.
    for query in [format!("id={made}"), "kind=sleep&queue=q".into()] {
        assert_eq!(server.events(&format!("?{query}")).event().name, "stats");
    }
}

/// Returns how many zero-length tasks make enough events to fill the
/// kernel's buffers for a stream that never reads, and then over 1,000
/// more: a task labelled `f` makes three events of about 180 bytes
/// (counted as 150, for a margin), so the count, not the 256 KiB, is the
/// limit they pass first. Few more: once blocked, the stream is closed if
/// its client has not read for 10 s.
fn tasks_to_lag() -> usize {
    (socket_capacity() / 150 + 1000) / 3
}

/// Submits `tasks` zero-length tasks labelled `label`, one request at a
/// time on each of `conns` connections, and waits until they have all
/// succeeded. Not pipelined: a burst of pipelined requests makes events
/// faster than a stream is given the CPU to take them, and lags even a
/// stream that reads.
fn flood(server: &Server, tasks: usize, label: &str, conns: usize) {
    let succeeded = "bgtasks_tasks_finished_total{state=\"succeeded\"}";
    let before = server.metric(succeeded);
    submit_many(server, tasks, label, conns);
    server.wait_metric(succeeded, before + tasks as f64);
}

/// Submits `tasks` zero-length tasks labelled `label`, one request at a
/// time on each of `conns` connections.
fn submit_many(server: &Server, tasks: usize, label: &str, conns: usize) {
    let body = json!({"task_id": label, "work_duration": "0s"}).to_string();
    let request = common::post_request("/tasks", &[], &body);
    std::thread::scope(|scope| {
        for first in 0..conns {
            let request = &request;
            scope.spawn(move || {
                let mut conn = server.connect();
                for _ in (first..tasks).step_by(conns) {
                    conn.write_all(request.as_bytes()).unwrap();
                    let r = read_response(&mut conn).unwrap();
                    assert_eq!(r.status, 202, "{r:?}");
                }
            });
        }
    });
}

/// Reads a stream until it has had `count` task events; fails if it lags.
fn read_all(stream: &mut EventStream, count: usize) {
    read_counting(stream, count, &AtomicUsize::new(0));
}

/// Reads a stream until it has had `count` task events, keeping `seen`
/// up to date as they come; fails if it lags.
fn read_counting(stream: &mut EventStream, count: usize, seen: &AtomicUsize) {
    while seen.load(Ordering::SeqCst) < count {
        let event = stream.event();
        match event.name.as_str() {
            "task" => {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            "stats" => {}
            _ => panic!("a stream that reads got {event:?} after {seen:?} events"),
        }
    }
}

/// Reads a stalled stream at last: what the kernel held for it, then
/// `lagged` and the end. Returns how many task events came first.
fn read_to_lagged(stalled: &mut EventStream) -> usize {
    let mut read = 0;
    let last = loop {
        let event = stalled.event();
        match event.name.as_str() {
            "task" => read += 1,
            "stats" => {}
            _ => break event,
        }
    };
    assert_eq!(last.name, "lagged", "{last:?}");
    assert_eq!(last.data, json!({}));
    assert!(matches!(stalled.next(PATIENCE), Next::End));
    assert!(closes(&mut stalled.stream, PATIENCE));
    read
}

#[test]
fn a_subscriber_that_never_reads_lags_while_one_that_reads_gets_everything() {
    let tasks = tasks_to_lag();
    let server = Server::start(&[]);
    let mut stalled = server.events("");
    let mut reader = server.events("");
    std::thread::scope(|scope| {
        let reading = scope.spawn(move || read_all(&mut reader, 3 * tasks));
        flood(&server, tasks, "f", 4);
        reading.join().unwrap();
    });
    assert_eq!(server.get("/healthz").status, 200);
    let read = read_to_lagged(&mut stalled);
    assert!(read < 3 * tasks, "it read all {read} events");
}

#[test]
fn subscribers_that_never_read_lag_while_several_that_read_keep_up() {
    let tasks = tasks_to_lag();
    let server = Server::start(&[]);
    // Two that never read: one wants every event, one every event of `f`.
    let mut stalled = [server.events(""), server.events("?task_id=f")];
    let readers: Vec<EventStream> = (0..3).map(|_| server.events("")).collect();
    std::thread::scope(|scope| {
        let reading: Vec<_> = readers
            .into_iter()
            .map(|mut reader| scope.spawn(move || read_all(&mut reader, 3 * tasks)))
            .collect();
        flood(&server, tasks, "f", 4);
        for reader in reading {
            reader.join().unwrap();
        }
    });
    for stream in &mut stalled {
        let read = read_to_lagged(stream);
        assert!(read < 3 * tasks, "it read all {read} events");
    }
}

#[test]
fn a_filtered_stream_gets_every_event_it_wants_in_order_among_many_it_does_not() {
    /// Tasks of the label the stream wants, each after a part of the
    /// flood that makes more events than the log keeps.
    const WANTED: usize = 20;
    let part = tasks_to_lag() / WANTED;
    assert!(3 * part > 1000, "{part}");
    let server = Server::start(&[]);
    let mut wanted = server.events("?task_id=w");
    // It never reads, and wants none of the flood: it does not lag.
    let mut elsewhere = server.events("?task_id=later");
    let (ids, events) = std::thread::scope(|scope| {
        let reading =
            scope.spawn(move || task_events(&mut wanted, |events| events.len() == 3 * WANTED));
        let ids: Vec<String> = (0..WANTED)
            .map(|_| {
                submit_many(&server, part, "f", 3);
                submit(&server, json!({"task_id": "w", "work_duration": "0s"}))
            })
            .collect();
        (ids, reading.join().unwrap())
    });
    assert!(events.iter().all(|e| e.data["task_id"] == "w"));
    for id in &ids {
        assert_eq!(states(&events, id), ["queued", "running", "succeeded"]);
    }
    // Created one after another: their `queued` events come in that order.
    let queued: Vec<&Value> = events
        .iter()
        .filter(|e| e.data["state"] == "queued")
        .map(|e| &e.data["id"])
        .collect();
    assert_eq!(queued, ids.iter().collect::<Vec<_>>());
    let later = submit(&server, json!({"task_id": "later", "work_duration": "0s"}));
    let events = task_events(&mut elsewhere, |events| saw(events, &later, "succeeded"));
    assert_eq!(states(&events, &later), ["queued", "running", "succeeded"]);
}

#[test]
fn the_kernel_holds_a_few_hundred_kib_at_most_for_a_subscriber_that_never_reads() {
    let server = Server::start(&[]);
    let stalled = server.events("");
    // Enough to fill what the kernel would hold if the server let it grow.
    flood(&server, tasks_to_lag(), "f", 4);
    // The server's send buffer (128 KiB asked, doubled by Linux) and the
    // client's receive buffer, with room for the kernel's rounding.
    let bound = 3 * (256 << 10) + sysctl("/proc/sys/net/ipv4/tcp_rmem", 1) as u64;
    let unread = unread_bytes(&server, &stalled);
    assert!(unread <= bound, "{unread} bytes unread, more than {bound}");
    assert!(unread > 0);
}

/// Label bytes of the tasks that make large events: 32 such events pass
/// 256 KiB, and the few a busy moment makes before a stream that reads
/// takes them stay well below.
const LARGE_LABEL: usize = 8 << 10;

/// Returns how many tasks with [`LARGE_LABEL`] make events enough to fill
/// the kernel's buffers for a stream that never reads, and more.
fn large_tasks_to_lag() -> usize {
    socket_capacity() / (3 * LARGE_LABEL) + 30
}

#[test]
fn a_subscriber_more_than_256_kib_behind_lags_while_one_that_reads_gets_everything() {
    let tasks = large_tasks_to_lag();
    // Far fewer than 1,000 events: the bytes are what tells it it lagged.
    assert!(3 * tasks < 1000, "{tasks}");
    let server = Server::start(&[]);
    let mut stalled = server.events("");
    let mut reader = server.events("");
    let seen = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| read_counting(&mut reader, 3 * tasks, &seen));
        // Each task is submitted once the reader has had every event of
        // the ones before it, so it is never more than one task's three
        // events (24 KiB) behind however busy the machine is; the stalled
        // stream falls behind by all of them.
        for task in 0..tasks {
            eventually("the reader to catch up", || {
                (seen.load(Ordering::SeqCst) >= 3 * task).then_some(())
            });
            submit_many(&server, 1, &"l".repeat(LARGE_LABEL), 1);
        }
        reading.join().unwrap();
    });
    read_to_lagged(&mut stalled);
}

#[test]
fn shutdown_ends_every_stream_and_waits_for_none() {
    let mut server = Server::start(&["--grace", "60s"]);
    // One stream blocked on a full socket, which would hold shutdown up
    // for its 10 s write timeout if shutdown waited for it.
    let _stalled = server.events("");
    flood(&server, large_tasks_to_lag(), &"l".repeat(LARGE_LABEL), 1);
    let mut streams: Vec<EventStream> = (0..3).map(|_| server.events("")).collect();
    for stream in &mut streams {
        assert_eq!(stream.event().name, "stats");
    }
    let (code, took) = server.stop(Signal::TERM);
    assert_eq!(code, Some(0));
    // Liveness: it takes milliseconds; waiting would take 10 s or 60 s.
    assert!(took < Duration::from_secs(5), "{took:?}");
    for stream in &mut streams {
        let last = stream.until("shutdown");
        assert_eq!(last.data, json!({}));
        assert!(matches!(stream.next(PATIENCE), Next::End));
        assert!(closes(&mut stream.stream, PATIENCE));
    }
}

#[test]
fn with_a_token_the_stream_needs_it() {
    let server = Server::start(&["--token", "s3cret"]);
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic s3cret\r\n",
    ] {
        let r = server.raw(format!("GET /events HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes());
        assert_eq!(r.status, 401, "{auth:?}: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let mut head = server.connect();
    head.write_all(b"HEAD /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_head(&mut head).expect("a response head").status, 401);
    for auth in ["Bearer s3cret", "bearer s3cret"] {
        let request = format!("GET /events HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\r\n");
        let mut stream = EventStream::open(server.connect(), request.as_bytes());
        assert_eq!(stream.event().name, "stats");
    }
}

#[test]
fn head_events_answers_at_once_with_the_streams_headers_and_no_body() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    // The `GET` behind it is answered only if the `HEAD` did not stream.
    conn.write_all(
        b"HEAD /events HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut conn).expect("a response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-store"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-length"), None);
    assert_ne!(head.header("connection"), Some("close"), "{head:?}");
    let next = read_response(&mut conn).unwrap();
    assert_eq!(next.status, 200);
    assert_eq!(next.json(), json!({"status": "ok"}));
}

#[test]
fn other_methods_on_events_are_405_with_allow() {
    let server = Server::start(&[]);
    for request in [
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        "DELETE /events HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let r = server.raw(request.as_bytes());
        assert_eq!(r.status, 405, "{request:?}: {r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        assert!(r.json()["error"].is_string());
    }
}

#[test]
fn the_dashboard_is_one_small_page_with_its_headers_and_needs_no_token() {
    let server = Server::start(&["--token", "s3cret"]);
    let r = server.get("/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.len() <= 48 << 10, "{} bytes", r.body.len());
    let csp = r.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("http") && !csp.contains('*'), "{csp}");
    // An inline icon, which the policy lets in (a `data:` URL is no other
    // origin), so the browser asks for no /favicon.ico, a 404.
    assert!(csp.contains("img-src 'self' data:;"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let page = r.text();
    assert!(page.to_ascii_lowercase().starts_with("<!doctype html"));
    assert!(page.contains("<link rel=\"icon\" href=\"data:"), "no icon");
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "src='http",
    ] {
        assert!(!page.contains(external), "{external}");
    }
    // `HEAD /` gives the same head, and no body: the request behind it is
    // answered next.
    let mut conn = server.connect();
    conn.write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = read_head(&mut conn).expect("a response head");
    assert_eq!(head.status, 200);
    for name in ["content-type", "content-security-policy", "x-frame-options"] {
        assert_eq!(head.header(name), r.header(name), "{name}");
    }
    assert_eq!(
        head.header("content-length"),
        Some(&*r.body.len().to_string())
    );
    assert_eq!(read_response(&mut conn).unwrap().status, 200);
}

#[test]
fn idle_subscribers_cost_the_server_no_cpu() {
    let server = Server::start(&[]);
    let mut streams: Vec<EventStream> = (0..10).map(|_| server.events("")).collect();
    for stream in &mut streams {
        assert_eq!(stream.event().name, "stats");
    }
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = server.cpu_ticks() - before;
    assert!(used <= 5, "{used} ticks in 2 s with idle streams");
}

/// Returns how many bytes the server has written to `stream` that its
/// client has not read: those in the client's receive queue and in the
/// server's send queue (`/proc/net/tcp`).
fn unread_bytes(server: &Server, stream: &EventStream) -> u64 {
    let client = stream.stream.local_addr().unwrap().port();
    let port = server.addr.port();
    let port_of = |address: &str| {
        let (_, port) = address.rsplit_once(':').unwrap();
        u16::from_str_radix(port, 16).unwrap()
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut bytes = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (tx, rx) = fields[4].split_once(':').unwrap();
        let ends = (port_of(fields[1]), port_of(fields[2]));
        if ends == (client, port) {
            bytes += u64::from_str_radix(rx, 16).unwrap();
        } else if ends == (port, client) {
            bytes += u64::from_str_radix(tx, 16).unwrap();
        }
    }
    bytes
}

/// Floods a server with `subscribers` streams that never read until the
/// kernel takes no more for them (their server side blocks), then makes
/// about `more` events, which wait in the server's event log; returns the
/// tasks made, the RSS (KiB), the server and the streams.
fn rss_with_stalled(subscribers: usize, more: usize) -> (usize, u64, Server, Vec<EventStream>) {
    /// Tasks a step of the flood makes.
    const STEP: usize = 100;
    let server = Server::start(&[]);
    let streams: Vec<EventStream> = (0..subscribers).map(|_| server.events("")).collect();
    let unread = |streams: &[EventStream]| -> Vec<u64> {
        streams.iter().map(|s| unread_bytes(&server, s)).collect()
    };
    let mut tasks = 0;
    let mut before = unread(&streams);
    loop {
        flood(&server, STEP, "f", 4);
        tasks += STEP;
        std::thread::sleep(Duration::from_millis(200));
        let now = unread(&streams);
        // Each of the step's events is over 150 bytes: a stream that took
        // in less has blocked during the step.
        let blocked = now
            .iter()
            .zip(&before)
            .all(|(n, b)| n - b < 3 * STEP as u64 * 150);
        if blocked {
            break;
        }
        before = now;
    }
    flood(&server, more / 3, "f", 4);
    tasks += more / 3;
    let rss = server.rss_kib();
    (tasks, rss, server, streams)
}

/// Returns the RSS (KiB) of a server without streams after `tasks` tasks.
fn rss_without_streams(tasks: usize) -> u64 {
    let server = Server::start(&[]);
    flood(&server, tasks, "f", 4);
    server.rss_kib()
}

/// Reads a stream that was stalled: whether it ends with `lagged` (rather
/// than falling silent, having read all there was).
fn ends_lagged(stream: &mut EventStream) -> bool {
    loop {
        match stream.next(Duration::from_secs(2)) {
            Next::Event(e) if e.name == "lagged" => return true,
            Next::Event(_) => {}
            _ => return false,
        }
    }
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_memory_per_subscriber() {
    common::raise_fd_limit();
    let server = Server::start(&[]);
    let alone = server.rss_kib();
    let mut idle: Vec<EventStream> = Vec::new();
    for _ in 0..100 {
        idle.push(server.events(""));
    }
    for stream in &mut idle {
        assert_eq!(stream.event().name, "stats");
    }
    let with = server.rss_kib();
    println!(
        "idle subscribers: RSS {alone} KiB alone, {with} KiB with 100: {:.1} KiB each",
        (with as f64 - alone as f64) / 100.0
    );
    // Blocked streams with about 600 to 900 events waiting each, then with
    // 1,500 (past the 1,000 the log keeps: the streams lagged), against a
    // server that made the same tasks. The log is one for all streams.
    for more in [600, 1500] {
        let (tasks, with, _server, mut stalled) = rss_with_stalled(20, more);
        // Read before the write timeout (10 s) closes the blocked streams.
        let lagged = stalled.iter_mut().map(ends_lagged).filter(|&l| l).count();
        let without = rss_without_streams(tasks);
        println!(
            "20 stalled subscribers, blocked, then {more} more events ({} in all): RSS \
             {without} KiB without them, {with} KiB with: {:.1} KiB each ({lagged} of 20 lagged)",
            3 * tasks,
            (with as f64 - without as f64) / 20.0
        );
    }
}

/// How many connections submit at once in the subscribers' bench, and
/// how many requests each pipelines at a time: enough to keep the
/// server's two cores busy while the client's threads stay light.
const BENCH_CONNS: usize = 8;
const BENCH_BATCH: usize = 32;

/// Submits zero-length tasks on [`BENCH_CONNS`] keep-alive connections,
/// [`BENCH_BATCH`] pipelined at a time, for `time`; returns the `202`s a
/// second, the server's CPU µs for each, and how many answers were
/// something else.
fn submission_rate(server: &Server, time: Duration) -> (f64, f64, usize) {
    let body = json!({"task_id": "t", "work_duration": "0s"}).to_string();
    let batch = common::post_request("/tasks", &[], &body).repeat(BENCH_BATCH);
    let cpu = server.cpu_ticks();
    let start = Instant::now();
    let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let conns: Vec<_> = (0..BENCH_CONNS)
            .map(|_| {
                let batch = &batch;
                scope.spawn(move || {
                    let mut conn = server.connect();
                    let mut reader =
                        std::io::BufReader::with_capacity(1 << 16, conn.try_clone().unwrap());
                    let (mut accepted, mut other) = (0, 0);
                    while start.elapsed() < time {
                        conn.write_all(batch.as_bytes()).unwrap();
                        for _ in 0..BENCH_BATCH {
                            match common::read_status(&mut reader) {
                                202 => accepted += 1,
                                _ => other += 1,
                            }
                        }
                    }
                    (accepted, other)
                })
            })
            .collect();
        conns.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let took = start.elapsed().as_secs_f64();
    let accepted: usize = counts.iter().map(|c| c.0).sum();
    // Clock ticks are 10 ms.
    let cpu_us = (server.cpu_ticks() - cpu) as f64 * 1e4 / accepted.max(1) as f64;
    (
        accepted as f64 / took,
        cpu_us,
        counts.iter().map(|c| c.1).sum(),
    )
}

/// Returns how many of `streams` the server still has open (its ends of
/// them that are established, in `/proc/net/tcp`), and how many of those
/// hold bytes the client has not taken (they block, or will).
fn open_streams(server: &Server, streams: &[EventStream]) -> (usize, usize) {
    let ports: std::collections::HashSet<u16> = streams
        .iter()
        .map(|s| s.stream.local_addr().unwrap().port())
        .collect();
    let port_of = |address: &str| {
        let (_, port) = address.rsplit_once(':').unwrap();
        u16::from_str_radix(port, 16).unwrap()
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // The table is read while it changes: a line may come twice.
    let mut open = std::collections::HashMap::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let client = port_of(f[2]);
        if f[3] == "01" && port_of(f[1]) == server.addr.port() && ports.contains(&client) {
            let (unsent, _) = f[4].split_once(':').unwrap();
            open.insert(client, u64::from_str_radix(unsent, 16).unwrap() > 0);
        }
    }
    (open.len(), open.values().filter(|&&b| b).count())
}

/// Measures the `202` rate of a fresh server beside `subscribers` streams
/// opened with `query` that are never read: first for `warm_up`, while
/// the kernel takes in what it can hold for them, then for `time`.
/// Prints both with how many streams were open, and returns the second.
fn rate_beside(subscribers: usize, query: &str, warm_up: Duration, time: Duration) -> f64 {
    let server = Server::start(&[
        "--workers",
        "128",
        "--buffer",
        "100000",
        "--max-connections",
        "4096",
    ]);
    let streams: Vec<EventStream> = (0..subscribers).map(|_| server.events(query)).collect();
    let name = format!("{subscribers} subscribers {query}");
    let measure = |phase: &str, time: Duration| {
        let (open, blocked) = open_streams(&server, &streams);
        let (rate, cpu_us, other) = submission_rate(&server, time);
        println!(
            "  {name:<34} {phase:<5} {:>4.1} s: {rate:>7.0} 202/s, {cpu_us:>5.1} µs of server \
             CPU each; at the start {open:>4} streams open, {blocked:>4} of them full \
             ({other} other answers)",
            time.as_secs_f64()
        );
        rate
    };
    measure("first", warm_up);
    measure("then", time)
}

/// Reads a number of the bench's from the environment variable `name`.
fn bench_knob(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_submissions_beside_a_thousand_subscribers() {
    common::raise_fd_limit();
    let warm_up = Duration::from_secs(bench_knob("BENCH_WARM_UP", 2));
    let time = Duration::from_secs(bench_knob("BENCH_SECONDS", 5));
    let rounds = bench_knob("BENCH_ROUNDS", 3);
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        println!("round {round}:");
        let none = rate_beside(0, "", warm_up, time);
        let unread = rate_beside(1000, "", warm_up, time);
        let filtered = rate_beside(1000, "?task_id=nomatch", warm_up, time);
        let (b, c) = (unread / none, filtered / none);
        println!("  ratios after the warm-up: b/a {b:.2}, c/a {c:.2}");
        ratios.push((b, c));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median ratios over {rounds} rounds: b/a {:.2}, c/a {:.2}",
        median(ratios.iter().map(|r| r.0).collect()),
        median(ratios.iter().map(|r| r.1).collect()),
    );
}
