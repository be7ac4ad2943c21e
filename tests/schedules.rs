//! SPEC §9 and §10: periodic tasks from `--schedule` (firings, `/schedules`,
//! no pile-up, nothing made up after a restart, bad values) and progress
//! reported by handlers (in status and events, out of the result, bounded
//! memory, kept across restarts).

mod common;

use common::{Server, TempDir, command, epoch_millis, eventually};
use rustix::process::Signal;
use serde_json::{Value, json};
use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Returns the time now, in ms since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Returns the days since 1970-01-01 of a civil date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// Returns the year of a time in ms since the epoch (UTC).
fn year_of(ms: i64) -> i64 {
    let days = ms.div_euclid(86_400_000);
    let mut year = 1970 + days / 366;
    while days_from_civil(year + 1, 1, 1) <= days {
        year += 1;
    }
    year
}

/// Tells whether `year` has a February 29th.
fn leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Returns the first firing after `now` (ms) of the few cron specs this
/// file uses, computed the plain way.
fn next_cron(spec: &str, now: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    let next = |step: i64, offset: i64| (now - offset).div_euclid(step) * step + step + offset;
    match spec {
        "0 3 * * *" => next(DAY, 3 * 3_600_000),
        "@hourly" => next(3_600_000, 0),
        "*/15 * * * *" => next(900_000, 0),
        "0 0 1 1 *" => days_from_civil(year_of(now) + 1, 1, 1) * DAY,
        "0 0 29 2 *" => (year_of(now)..)
            .filter(|&y| leap(y))
            .map(|y| days_from_civil(y, 2, 29) * DAY)
            .find(|&at| at > now)
            .unwrap(),
        _ => unreachable!("{spec}"),
    }
}

/// Submits a JSON body to `POST /tasks`, expects a `202`, and returns the id.
fn submit(server: &Server, body: Value) -> String {
    let r = server.post("/tasks", &body.to_string());
    assert_eq!(r.status, 202, "{body}: {r:?}");
    r.json()["id"].as_str().unwrap().to_string()
}

/// Returns the tasks `GET /tasks?task_id=LABEL` lists, newest first.
fn labelled(server: &Server, label: &str) -> Vec<Value> {
    let r = server.get(&format!("/tasks?task_id={label}&limit=1000"));
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["tasks"].as_array().unwrap().clone()
}

/// Returns the object of schedule `name` from `GET /schedules`.
fn schedule(server: &Server, name: &str) -> Value {
    let r = server.get("/schedules");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no schedule {name:?} in {}", r.text()))
        .clone()
}

/// Returns schedule `name`'s firings with `outcome` from `/metrics`.
fn firings(server: &Server, name: &str, outcome: &str) -> f64 {
    server.metric(&format!(
        "bgtasks_schedule_firings_total{{schedule=\"{name}\", outcome=\"{outcome}\"}}"
    ))
}

/// Tells whether a state is one a task never leaves.
fn terminal(state: &Value) -> bool {
    matches!(state.as_str(), Some("succeeded" | "failed" | "cancelled"))
}

/// The `--schedule` value of a schedule `NAME=@every 1s` of zero-length
/// sleeps, with more template members.
fn every_second(name: &str, more: &str) -> String {
    format!(r#"{name}=@every 1s {{"work_duration": "0s"{more}}}"#)
}

#[test]
fn an_every_schedule_makes_tasks_named_after_it_or_labelled_by_its_template() {
    let tick = every_second("tick", "");
    let tock = every_second(
        "tock",
        r#", "task_id": "mine", "queue": "q", "max_attempts": 2"#,
    );
    let server = Server::start(&["--queue", "q=1", "--schedule", &tick, "--schedule", &tock]);
    let posted = submit(&server, json!({"task_id": "tick", "work_duration": "0s"}));
    let made = eventually("three firings of each schedule", || {
        let ticks: Vec<Value> = labelled(&server, "tick")
            .into_iter()
            .filter(|t| t["id"] != *posted)
            .collect();
        let tocks = labelled(&server, "mine");
        (ticks.len() >= 3 && tocks.len() >= 3).then_some((ticks, tocks))
    });
    for task in &made.0 {
        assert_eq!(task["schedule"], "tick", "{task}");
        assert_eq!(task["task_id"], "tick", "{task}");
        assert_eq!(task["kind"], "sleep", "{task}");
        assert_eq!(task["queue"], "default", "{task}");
        assert_eq!(task["work_duration"], "0s", "{task}");
        assert_eq!(task["max_attempts"], 1, "{task}");
    }
    for task in &made.1 {
        assert_eq!(task["schedule"], "tock", "{task}");
        assert_eq!(task["task_id"], "mine", "{task}");
        assert_eq!(task["queue"], "q", "{task}");
        assert_eq!(task["max_attempts"], 2, "{task}");
    }
    for task in made.0.iter().chain(&made.1) {
        let id = task["id"].as_str().unwrap();
        assert_eq!(server.wait_done(id)["state"], "succeeded");
    }
    let posted = server.task(&posted);
    assert_eq!(posted["schedule"], Value::Null, "{posted}");
    assert!(firings(&server, "tick", "created") >= 3.0);
    assert_eq!(firings(&server, "tick", "skipped"), 0.0);
}

#[test]
fn schedules_lists_every_schedule_with_its_next_firing() {
    let crons = [
        "0 3 * * *",
        "@hourly",
        "*/15 * * * *",
        "0 0 1 1 *",
        "0 0 29 2 *",
    ];
    let mut args: Vec<String> = vec!["--schedule".into(), every_second("tick", "")];
    for (i, spec) in crons.iter().enumerate() {
        args.push("--schedule".into());
        args.push(format!(r#"c{i}={spec} {{"work_duration": "0s"}}"#));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = now_ms();
    let server = Server::start(&args);
    // The scheduler sets `next_at` as it starts, a moment after the
    // listener; until then it is null.
    let (list, after) = eventually("every schedule's next firing", || {
        let r = server.get("/schedules");
        let after = now_ms();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let list = r.json()["schedules"].as_array().unwrap().clone();
        list.iter()
            .all(|s| !s["next_at"].is_null())
            .then_some((list, after))
    });
    let names: Vec<&str> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tick", "c0", "c1", "c2", "c3", "c4"]);
    for s in &list {
        let mut members: Vec<&String> = s.as_object().unwrap().keys().collect();
        members.sort();
        assert_eq!(
            members,
            ["last_at", "last_task", "name", "next_at", "skipped", "spec"],
            "{s}"
        );
    }
    assert_eq!(list[0]["spec"], "@every 1s");
    for (s, spec) in list[1..].iter().zip(crons) {
        assert_eq!(s["spec"], spec);
        assert_eq!(s["last_at"], Value::Null, "{s}");
        assert_eq!(s["last_task"], Value::Null, "{s}");
        assert_eq!(s["skipped"], 0, "{s}");
        // The server computed it as it started, between `before` and `after`.
        let next = epoch_millis(&s["next_at"]);
        assert!(
            next == next_cron(spec, before) || next == next_cron(spec, after),
            "{spec}: {s}, expected {}",
            next_cron(spec, before)
        );
    }
    assert!(
        list[1]["next_at"]
            .as_str()
            .unwrap()
            .ends_with("T03:00:00.000Z")
    );
    // `@every 1s`: a second after the start, then a second after each firing.
    let first = schedule(&server, "tick");
    let next = epoch_millis(&first["next_at"]);
    if first["last_at"].is_null() {
        assert!(next >= before + 1000 && next <= after + 1000, "{first}");
    }
    let fired = eventually("the schedule to fire", || {
        let s = schedule(&server, "tick");
        (!s["last_task"].is_null()).then_some(s)
    });
    let again = eventually("the schedule to fire again", || {
        let s = schedule(&server, "tick");
        (s["last_at"] != fired["last_at"]).then_some(s)
    });
    assert_eq!(again["last_at"], fired["next_at"], "{fired} then {again}");
    assert!(epoch_millis(&again["next_at"]) >= epoch_millis(&again["last_at"]) + 1000);
    let task = server.task(again["last_task"].as_str().unwrap());
    assert_eq!(task["schedule"], "tick", "{task}");
    assert_eq!(again["skipped"], 0);
}

#[test]
fn an_every_schedule_keeps_to_the_times_its_first_firing_set() {
    // Each firing is due a whole number of seconds after the first, however
    // late it ran: counted from when each ran, `@every 1s` drifted about a
    // millisecond a firing. A firing the server fell more than a second
    // behind on is skipped, onto the same grid, so a busy machine passes too.
    let server = Server::start(&["--schedule", &every_second("grid", "")]);
    let mut seen: Vec<(i64, i64)> = Vec::new();
    while seen.len() < 6 {
        let (last, next) = eventually("the schedule to fire again", || {
            let s = schedule(&server, "grid");
            let last = (!s["last_at"].is_null()).then(|| epoch_millis(&s["last_at"]))?;
            let next = epoch_millis(&s["next_at"]);
            (seen.last().is_none_or(|&(l, _)| l != last)).then_some((last, next))
        });
        seen.push((last, next));
    }
    let first = seen[0].0;
    for &(last, next) in &seen {
        assert_eq!((last - first) % 1000, 0, "{seen:?}");
        assert!(next > last && (next - last) % 1000 == 0, "{seen:?}");
    }
}

#[test]
fn a_schedule_whose_task_outlasts_its_interval_skips_firings() {
    let slow = r#"slow=@every 1s {"work_duration": "3s"}"#;
    let mut server = Server::start(&["--schedule", slow]);
    eventually("three skipped firings", || {
        // Never more than one of its tasks pending at once.
        let pending = labelled(&server, "slow")
            .iter()
            .filter(|t| !terminal(&t["state"]))
            .count();
        assert!(
            pending <= 1,
            "{pending} pending: {:?}",
            labelled(&server, "slow")
        );
        (schedule(&server, "slow")["skipped"].as_u64().unwrap() >= 3).then_some(())
    });
    // `/schedules`, `/metrics` and the tasks agree, once they hold still
    // between two reads.
    eventually("the counts to agree", || {
        let skipped = firings(&server, "slow", "skipped");
        let created = firings(&server, "slow", "created");
        let listed = schedule(&server, "slow")["skipped"].as_u64().unwrap() as f64;
        let tasks = labelled(&server, "slow").len() as f64;
        let still = firings(&server, "slow", "skipped") == skipped
            && firings(&server, "slow", "created") == created;
        (still && listed == skipped && tasks == created).then_some(())
    });
    server.wait_log(
        "INFO  [bgtasks] schedule slow: firing skipped: its previous task is still running",
    );
    server.kill();
}

#[test]
fn a_full_queue_skips_a_firing() {
    let dir = TempDir::new("schedules-full");
    let data = dir.path("data");
    let data = data.to_str().unwrap();
    // A paused queue with its one place taken, from before the schedule
    // starts: full from its first firing on.
    let mut first = Server::start(&["--data-dir", data, "--queue", "q=1/1"]);
    assert_eq!(first.post("/queues/q/pause", "").status, 200);
    let waiting = submit(&first, json!({"queue": "q", "work_duration": "0s"}));
    let refused = first.post("/tasks", r#"{"queue": "q", "work_duration": "0s"}"#);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(first.stop(Signal::TERM).0, Some(0));
    let full = every_second("full", r#", "queue": "q""#);
    let mut server = Server::start(&["--data-dir", data, "--queue", "q=1/1", "--schedule", &full]);
    eventually("two skipped firings", || {
        (schedule(&server, "full")["skipped"].as_u64().unwrap() >= 2).then_some(())
    });
    server.wait_log("INFO  [bgtasks] schedule full: firing skipped: its queue is full");
    assert_eq!(firings(&server, "full", "created"), 0.0);
    assert!(labelled(&server, "full").is_empty());
    assert_eq!(schedule(&server, "full")["last_task"], Value::Null);
    // With room again, the next firing makes its task.
    assert_eq!(server.post("/queues/q/resume", "").status, 200);
    assert_eq!(server.wait_done(&waiting)["state"], "succeeded");
    let made = eventually("a firing with room", || {
        labelled(&server, "full").first().cloned()
    });
    assert_eq!(made["schedule"], "full");
    server.kill();
}

#[test]
fn firings_missed_while_down_are_not_made_up() {
    let dir = TempDir::new("schedules-restart");
    let data = dir.path("data");
    let beat = every_second("beat", "");
    let args = ["--data-dir", data.to_str().unwrap(), "--schedule", &beat];
    let mut first = Server::start(&args);
    eventually("two firings", || {
        (labelled(&first, "beat").len() >= 2).then_some(())
    });
    assert_eq!(first.stop(Signal::TERM).0, Some(0));
    // Four firings' worth of time with the server down.
    std::thread::sleep(Duration::from_secs(4));
    let restarted = now_ms();
    let server = Server::start(&args);
    let s = eventually("the schedule's next firing", || {
        let s = schedule(&server, "beat");
        (!s["next_at"].is_null()).then_some(s)
    });
    let before = labelled(&server, "beat");
    // The last task it made is remembered; its next firing is a whole
    // interval after the start, not at once.
    assert_eq!(s["last_task"], before[0]["id"], "{s}");
    assert!(epoch_millis(&s["last_at"]) < restarted, "{s}");
    assert!(epoch_millis(&s["next_at"]) >= restarted + 1000, "{s}");
    eventually("a firing after the restart", || {
        (labelled(&server, "beat").len() > before.len()).then_some(())
    });
    let tasks = labelled(&server, "beat");
    let now = now_ms();
    let new: Vec<i64> = tasks
        .iter()
        .map(|t| epoch_millis(&t["created_at"]))
        .filter(|&at| at >= restarted)
        .collect();
    assert_eq!(new.len(), tasks.len() - before.len());
    // The k-th firing after the restart is due k seconds after it, at the
    // earliest: no burst of made-up firings at the start.
    for at in &new {
        assert!(*at >= restarted + 1000, "{new:?} after {restarted}");
    }
    assert!(
        new.len() as i64 <= (now - restarted) / 1000,
        "{} firings in {} ms",
        new.len(),
        now - restarted
    );
}

#[test]
fn bad_schedules_exit_2_with_one_line_naming_them_before_binding() {
    // The address is taken, so a server that bound before checking its
    // flags would exit 1 instead of 2.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let job = r#"{"work_duration": "1s"}"#;
    let cases: Vec<(String, &str, &str)> = vec![
        ("nightly".into(), "nightly", "expected NAME=SPEC TEMPLATE"),
        (
            format!("Bad.Name=@every 1s {job}"),
            "Bad.Name",
            "NAME must be",
        ),
        (
            format!("m=60 * * * * {job}"),
            "m",
            "minute 60 is out of range 0-59",
        ),
        (
            format!("r=5-2 * * * * {job}"),
            "r",
            "range 5-2 is backwards",
        ),
        (
            format!("z=*/0 * * * * {job}"),
            "z",
            "step 0 is out of range",
        ),
        (
            format!("six=0 0 * * * * {job}"),
            "six",
            "expected 5 fields, found 6",
        ),
        (
            format!("seven=0 0 * * 8 {job}"),
            "seven",
            "day of week 8 is out of range",
        ),
        (
            format!("month=0 0 * foo * {job}"),
            "month",
            r#"unknown name "foo""#,
        ),
        (format!("fast=@every 500ms {job}"), "fast", "at least 1s"),
        (format!("zero=@every 0s {job}"), "zero", "at least 1s"),
        (format!("feb=0 0 31 2 * {job}"), "feb", "never fire"),
        (
            "list=@every 1s [1]".into(),
            "list",
            "the template a JSON object",
        ),
        (
            "text=@every 1s \"x\"".into(),
            "text",
            "the template a JSON object",
        ),
        (
            r#"kind=@every 1s {"kind": "nope"}"#.into(),
            "kind",
            r#"unknown task kind "nope""#,
        ),
        (
            "dur=@every 1s {}".into(),
            "dur",
            "failed to parse work duration",
        ),
        (
            r#"q=@every 1s {"work_duration": "1s", "queue": "nope"}"#.into(),
            "q",
            r#"unknown queue "nope""#,
        ),
        (
            format!("after=@every 1s {job} x"),
            "after",
            "failed to read POST body",
        ),
    ];
    for (value, name, why) in &cases {
        let out = command(&["--addr", &addr, "--schedule", value], &[], &[])
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{value:?}: {err}");
        assert!(
            err.starts_with(&format!("bgtasks: --schedule {name:?}: ")) && err.contains(why),
            "{value:?}: {err:?}"
        );
        assert_eq!(err.lines().count(), 1, "{value:?}: {err:?}");
        assert!(err.ends_with('\n'), "{err:?}");
    }
    let twice = every_second("twice", "");
    let out = command(
        &["--addr", &addr, "--schedule", &twice, "--schedule", &twice],
        &[],
        &[],
    )
    .output()
    .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("twice") && err.contains("given twice"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err:?}");
}

/// Starts a server with one handler, kind `report`, running a script
/// with `body` (after it has read its payload); returns the server.
fn with_handler(dir: &TempDir, body: &str, more: &[&str]) -> Server {
    let program = dir.script("report.sh", &format!("cat >/dev/null\n{body}"));
    let handler = format!("report={program}");
    let mut args = vec!["--handler", handler.as_str()];
    args.extend(more);
    Server::start(&args)
}

/// A shell line that waits until the file `name` of `dir` exists.
fn wait_for(dir: &TempDir, name: &str) -> String {
    let path = dir.path(name);
    format!(
        "while [ ! -e {} ]; do sleep 0.02; done",
        path.to_str().unwrap()
    )
}

#[test]
fn progress_shows_in_status_and_events_while_it_runs_and_stays_out_of_the_result() {
    let dir = TempDir::new("schedules-progress");
    let script = format!(
        "echo '::progress::{{\"done\": 1, \"of\": 3}}'\n{}\n\
         echo '::progress::{{\"done\": 2, \"of\": 3}}'\n{}\n\
         echo '::progress::{{\"done\": 3, \"of\": 3}}'\n{}\n\
         echo '{{\"ok\": true}}'",
        wait_for(&dir, "2"),
        wait_for(&dir, "3"),
        wait_for(&dir, "end"),
    );
    let server = with_handler(&dir, &script, &[]);
    let mut stream = server.events("?kind=report");
    let id = submit(&server, json!({"kind": "report"}));
    for (done, next) in [(1, "2"), (2, "3"), (3, "end")] {
        let progress = json!({"done": done, "of": 3});
        let task = eventually("the next progress", || {
            let task = server.task(&id);
            (task["progress"] == progress).then_some(task)
        });
        assert_eq!(task["state"], "running", "{task}");
        std::fs::write(dir.path(next), "").unwrap();
    }
    let task = server.wait_done(&id);
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["result"], json!({"ok": true}), "{task}");
    assert_eq!(task["progress"], json!({"done": 3, "of": 3}), "{task}");
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(state, _)| state != "succeeded") {
        let event = stream.event();
        if event.name == "task" {
            assert_eq!(event.data["id"], *id, "{event:?}");
            let state = event.data["state"].as_str().unwrap().to_string();
            seen.push((state, event.data["progress"].clone()));
        }
    }
    let p = |done: i32| json!({"done": done, "of": 3});
    assert_eq!(
        seen,
        [
            ("queued".to_string(), Value::Null),
            ("running".to_string(), Value::Null),
            ("running".to_string(), p(1)),
            ("running".to_string(), p(2)),
            ("running".to_string(), p(3)),
            ("succeeded".to_string(), p(3)),
        ]
    );
    // Tasks without progress say null.
    let plain = submit(&server, json!({"work_duration": "0s"}));
    assert_eq!(server.wait_done(&plain)["progress"], Value::Null);
}

#[test]
fn a_progress_that_is_not_json_is_a_string_and_a_split_line_is_one_line() {
    let dir = TempDir::new("schedules-split");
    let script = "echo '::progress::half way'\n\
                  printf '::prog'; sleep 0.2; printf 'ress::7\\n'\n\
                  printf ':'; sleep 0.1; printf ':progress::{\"a\"'; sleep 0.1; printf ': 1}'; \
                  sleep 0.1; printf '\\n'\n\
                  echo done";
    let server = with_handler(&dir, script, &[]);
    let mut stream = server.events("?kind=report");
    let id = submit(&server, json!({"kind": "report"}));
    let task = server.wait_done(&id);
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["result"], "done\n", "{task}");
    assert_eq!(task["progress"], json!({"a": 1}), "{task}");
    let mut progress = Vec::new();
    loop {
        let event = stream.event();
        if event.name != "task" {
            continue;
        }
        if event.data["state"] != "running" {
            if event.data["state"] == "succeeded" {
                break;
            }
            continue;
        }
        if !event.data["progress"].is_null() {
            progress.push(event.data["progress"].clone());
        }
    }
    assert_eq!(progress, [json!("half way"), json!(7), json!({"a": 1})]);
}

#[test]
fn a_10_mib_line_without_a_newline_costs_no_memory() {
    let dir = TempDir::new("schedules-long-line");
    // A 10 MiB line, a 10 MiB progress line (too long: ignored), a
    // progress, and a last 10 MiB line without a newline.
    let mib10 = |c: char| format!("head -c 10485760 /dev/zero | tr '\\0' {c}");
    let script = format!(
        "{}\nprintf '\\n::progress::'\n{}\nprintf '\\n::progress::\"ok\"\\n'\n{}",
        mib10('x'),
        mib10('y'),
        mib10('z')
    );
    let server = with_handler(&dir, &script, &[]);
    // Once, so that what a first program costs the server is paid.
    server.wait_done(&submit(&server, json!({"kind": "report"})));
    let before = server.rss_kib();
    let id = submit(&server, json!({"kind": "report"}));
    let task = server.wait_done(&id);
    let peak = peak_rss_kib(&server);
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["progress"], "ok", "{task}");
    assert_eq!(task["result"], "z".repeat(4096), "the last 4 KiB");
    assert!(
        peak < before + 4096,
        "RSS rose from {before} KiB to a peak of {peak} KiB"
    );
}

/// Returns the server's peak resident memory in KiB (`VmHWM`).
fn peak_rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_progress_value_past_1_kib_is_ignored() {
    let dir = TempDir::new("schedules-long-progress");
    // Values of 1,024 bytes (the most) and 1,025 and 2,000 bytes.
    let fits = format!("\"{}\"", "a".repeat(1022));
    let script = format!(
        "echo '::progress::{fits}'\necho '::progress::\"{}\"'\necho '::progress::{}'\necho done",
        "b".repeat(1023),
        "7".repeat(2000)
    );
    let server = with_handler(&dir, &script, &[]);
    let id = submit(&server, json!({"kind": "report"}));
    let task = server.wait_done(&id);
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["progress"], json!("a".repeat(1022)));
    assert_eq!(task["result"], "done\n");
}

#[test]
fn progress_survives_a_restart_once_the_task_has_finished() {
    let dir = TempDir::new("schedules-progress-restart");
    let data = dir.path("data");
    let data = data.to_str().unwrap();
    let script = "echo '::progress::{\"done\": 2, \"of\": 2}'\necho '{\"ok\": true}'";
    let mut first = with_handler(&dir, script, &["--data-dir", data]);
    let id = submit(&first, json!({"kind": "report"}));
    let task = first.wait_done(&id);
    assert_eq!(task["progress"], json!({"done": 2, "of": 2}), "{task}");
    assert_eq!(first.stop(Signal::TERM).0, Some(0));
    let server = with_handler(&dir, script, &["--data-dir", data]);
    let again = server.task(&id);
    assert_eq!(again, task);
}
