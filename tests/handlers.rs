//! SPEC §5 and the auth part of §2: program handlers, timeouts, retries,
//! process groups, and the bearer token.

mod common;

use common::{Server, TempDir, epoch_millis, eventually};
use rustix::process::Signal;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A directory of scripts for one test, removed when it ends.
struct Scripts(TempDir);

impl Scripts {
    /// Makes an empty directory of scripts for `test`.
    fn new(test: &str) -> Scripts {
        Scripts(TempDir::new(test))
    }

    /// Writes an executable `sh` script and returns its path.
    fn write(&self, name: &str, body: &str) -> String {
        self.0.script(name, body)
    }

    /// Returns a path inside the directory.
    fn path(&self, name: &str) -> String {
        self.0.arg(name)
    }

    /// Reads the process ids a script wrote to `name`, one per line.
    fn pids(&self, name: &str) -> Vec<u32> {
        let path = self.path(name);
        let text = eventually("the script to write its pids", || {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|t| t.ends_with('\n'))
        });
        text.lines().map(|l| l.trim().parse().unwrap()).collect()
    }

    /// Writes `NAME.sh`, which starts a background `sleep 300`, writes its
    /// own pid and the sleep's to the file NAME (all at once), and waits;
    /// when `stubborn`, both ignore SIGTERM. Returns the script's path.
    fn sleeper(&self, name: &str, stubborn: bool) -> String {
        let trap = if stubborn { "trap '' TERM\n" } else { "" };
        let pids = self.path(name);
        self.write(
            &format!("{name}.sh"),
            &format!(
                "{trap}sleep 300 &\necho $$ > {pids}.tmp; echo $! >> {pids}.tmp; mv {pids}.tmp {pids}\nwait"
            ),
        )
    }
}

/// Starts a server with a handler for each `(kind, program)`, after the
/// flags in `args`.
fn start(handlers: &[(&str, &str)], args: &[&str]) -> Server {
    start_with_env(handlers, args, &[])
}

/// Starts a server with handlers, flags and extra environment variables.
fn start_with_env(handlers: &[(&str, &str)], args: &[&str], env: &[(&str, &str)]) -> Server {
    let flags: Vec<String> = handlers.iter().map(|(k, p)| format!("{k}={p}")).collect();
    let mut all = args.to_vec();
    for flag in &flags {
        all.extend(["--handler", flag]);
    }
    Server::start_with_env(&all, env)
}

/// Tells whether a process exists at all (a zombie still does).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Returns the children of `parent` that are zombies.
fn zombie_children(parent: u32) -> Vec<u32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields[0] == "Z" && fields[1] == parent.to_string() {
            zombies.push(entry.file_name().to_str().unwrap().parse().unwrap());
        }
    }
    zombies
}

/// Submits a task of `kind` with extra members; returns its id.
fn submit_kind(server: &Server, kind: &str, members: Value) -> String {
    let mut body = json!({"kind": kind, "task_id": kind});
    body.as_object_mut()
        .unwrap()
        .extend(members.as_object().unwrap().clone());
    let r = server.post("/tasks", &body.to_string());
    assert_eq!(r.status, 202, "{r:?}");
    r.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn a_program_gets_its_payload_environment_and_arguments() {
    let scripts = Scripts::new("payload");
    let echo = scripts.write(
        "echo.sh",
        r#"printf '{"id": "%s", "kind": "%s", "attempt": %s, "args": "%s", "inherited": "%s", "input": ' \
    "$BGTASKS_TASK_ID" "$BGTASKS_TASK_KIND" "$BGTASKS_ATTEMPT" "$*" "$FROM_THE_SERVER"
cat
printf '}\n'"#,
    );
    let text = scripts.write("text.sh", r#"printf 'line one\n\tline two\n'"#);
    let echo = format!("{echo}  first   second");
    let server = start_with_env(
        &[("echo", &echo), ("text", &text)],
        &[],
        &[("FROM_THE_SERVER", "yes")],
    );

    let payload =
        json!({"file": "a b.png", "sizes": [1, 2.5, null], "nested": {"q": "\"quoted\" \\ back"}});
    let id = submit_kind(&server, "echo", json!({"payload": payload}));
    let task = server.wait_done(&id);
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["kind"], "echo");
    assert!(task["error"].is_null());
    let result = &task["result"];
    assert_eq!(result["id"], id.as_str());
    assert_eq!(
        (result["kind"].as_str(), result["attempt"].as_u64()),
        (Some("echo"), Some(1))
    );
    assert_eq!(result["args"], "first second");
    assert_eq!(result["inherited"], "yes");
    assert_eq!(result["input"], payload);

    // No payload: the program reads `null`.
    let id = submit_kind(&server, "echo", json!({}));
    assert_eq!(server.wait_done(&id)["result"]["input"], Value::Null);
    // Output that is not JSON is kept as a string, bytes as they are.
    let id = submit_kind(&server, "text", json!({"work_duration": "1s"}));
    assert_eq!(server.wait_done(&id)["result"], "line one\n\tline two\n");
}

#[test]
fn unregistered_kinds_and_bad_members_are_refused() {
    let scripts = Scripts::new("kinds");
    let ok = scripts.write("ok.sh", "exit 0");
    let server = start(&[("known", &ok)], &[]);
    let cases = [
        (json!({"kind": "unknown"}), "unknown task kind \"unknown\""),
        (json!({"kind": "; touch /tmp/x"}), "unknown task kind"),
        (json!({"kind": "known", "timeout": "0s"}), "timeout must be"),
        (
            json!({"kind": "known", "timeout": "soon"}),
            "timeout must be",
        ),
        (
            json!({"kind": "known", "timeout": "-1s"}),
            "timeout must be",
        ),
        (
            json!({"kind": "known", "max_attempts": 0}),
            "max_attempts must be an integer from 1 to 100",
        ),
        (
            json!({"kind": "known", "max_attempts": 101}),
            "max_attempts must be",
        ),
        (
            json!({"kind": "known", "max_attempts": 2.5}),
            "max_attempts must be",
        ),
        (
            json!({"kind": "known", "max_attempts": -1}),
            "max_attempts must be",
        ),
        (
            json!({"kind": "known", "work_duration": "nope"}),
            "failed to parse work duration in request",
        ),
    ];
    for (body, sentence) in cases {
        let r = server.post("/tasks", &body.to_string());
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(sentence),
            "{body}: {}",
            r.text()
        );
    }
    assert_eq!(
        server
            .post("/tasks", &json!({"kind": 5}).to_string())
            .json()["error"],
        "failed to read POST body"
    );
    // A kind ignores work_duration, but a sleep needs one.
    assert_eq!(
        server
            .post("/tasks", &json!({"kind": "known"}).to_string())
            .status,
        202
    );
    assert_eq!(
        server
            .post("/tasks", &json!({"kind": "sleep"}).to_string())
            .status,
        400
    );
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 1.0);
}

#[test]
fn failures_report_stderr_or_how_the_program_ended() {
    let scripts = Scripts::new("failures");
    let noisy = scripts.write(
        "noisy.sh",
        "echo 'some output'; echo 'disk full' >&2; exit 3",
    );
    let quiet = scripts.write("quiet.sh", "exit 3");
    let killed = scripts.write("killed.sh", "kill -9 $$");
    let server = start(
        &[("noisy", &noisy), ("quiet", &quiet), ("killed", &killed)],
        &[],
    );
    for (kind, error) in [
        ("noisy", "disk full\n"),
        ("quiet", "exit status 3"),
        ("killed", "killed by signal 9"),
    ] {
        let task = server.wait_done(&submit_kind(&server, kind, json!({})));
        assert_eq!(
            (task["state"].as_str(), task["error"].as_str()),
            (Some("failed"), Some(error)),
            "{kind}"
        );
        assert!(task["result"].is_null());
    }
}

#[test]
fn a_program_that_cannot_start_fails_its_attempt_not_the_server() {
    let scripts = Scripts::new("vanish");
    let gone = scripts.write("gone.sh", "exit 0");
    let locked = scripts.write("locked.sh", "exit 0");
    let server = start(&[("gone", &gone), ("locked", &locked)], &[]);
    std::fs::remove_file(&gone).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o644)).unwrap();
    for kind in ["gone", "locked"] {
        let task = server.wait_done(&submit_kind(&server, kind, json!({})));
        assert_eq!(task["state"], "failed");
        let error = task["error"].as_str().unwrap();
        assert!(
            error.starts_with("cannot start ") && error.contains(&format!("{kind}.sh")),
            "{error}"
        );
    }
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn gigabytes_of_output_cost_only_their_tails() {
    let scripts = Scripts::new("chatty");
    let chatty = scripts.write(
        "chatty.sh",
        "head -c 300000000 /dev/zero | tr '\\0' 'x'; head -c 50000000 /dev/zero | tr '\\0' 'e' >&2; printf 'THE END'",
    );
    let server = start(&[("chatty", &chatty)], &[]);
    let before = server.rss_kib();
    let task = server.wait_done(&submit_kind(&server, "chatty", json!({})));
    let after = server.rss_kib();
    assert_eq!(task["state"], "succeeded");
    let result = task["result"].as_str().unwrap();
    assert_eq!(result.len(), 4096);
    assert!(result.ends_with("xxxTHE END"));
    assert!(
        after < before + 2048,
        "350 MB of output grew the server from {before} KiB to {after} KiB"
    );
}

#[test]
fn a_timeout_fails_the_attempt() {
    let scripts = Scripts::new("timeout");
    let slow = scripts.write("slow.sh", "sleep 30");
    let whiny = scripts.write("whiny.sh", "echo 'still working' >&2; sleep 30");
    let server = start(&[("slow", &slow), ("whiny", &whiny)], &[]);
    let started = Instant::now();
    let task = server.wait_done(&submit_kind(&server, "slow", json!({"timeout": "300ms"})));
    assert_eq!(
        (task["state"].as_str(), task["error"].as_str()),
        (Some("failed"), Some("timed out after 300ms"))
    );
    // Liveness: ended by its timeout, far below the 30 s it would sleep.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let task = server.wait_done(&submit_kind(&server, "whiny", json!({"timeout": "300ms"})));
    assert_eq!(task["error"], "still working\n");
    // The built-in sleep has timeouts too.
    let r = server.post("/tasks", r#"{"work_duration": "10s", "timeout": "200ms"}"#);
    let task = server.wait_done(r.json()["id"].as_str().unwrap());
    assert_eq!(
        (task["state"].as_str(), task["error"].as_str()),
        (Some("failed"), Some("timed out after 200ms"))
    );
}

/// Reads the times (ms since the epoch, by `date`) a handler wrote to a
/// file as lines `start|end ATTEMPT MS`; keyed by (word, attempt).
fn times(path: &str) -> HashMap<(String, u64), i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                (f[0].to_string(), f[1].parse().unwrap()),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn failed_attempts_are_retried_with_backoff() {
    let scripts = Scripts::new("retry");
    let (go, log) = (scripts.path("go"), scripts.path("times"));
    // Attempts 1 and 2 fail, the first only once `go` exists; the third
    // succeeds. Each writes when it started and when it failed.
    let flaky = scripts.write(
        "flaky.sh",
        &format!(
            r#"echo "start $BGTASKS_ATTEMPT $(date +%s%3N)" >> {log}
if [ "$BGTASKS_ATTEMPT" -eq 1 ]; then while [ ! -e {go} ]; do sleep 0.01; done; fi
if [ "$BGTASKS_ATTEMPT" -lt 3 ]; then
  echo "attempt $BGTASKS_ATTEMPT failed" >&2
  echo "end $BGTASKS_ATTEMPT $(date +%s%3N)" >> {log}
  exit 1
fi
echo '"fine"'"#
        ),
    );
    let server = start(&[("flaky", &flaky)], &["--workers", "1"]);
    let id = submit_kind(&server, "flaky", json!({"max_attempts": 3}));
    server.wait_state(&id, "running");
    // The one worker goes to this task when the first attempt fails, so
    // the retry, once due, waits in the queue where it can be looked at.
    let blocker = server.submit("60s");
    std::fs::write(&go, b"").unwrap();
    let waiting = eventually("the first failure", || {
        let task = server.task(&id);
        (task["error"].is_string()).then_some(task)
    });
    assert_eq!(server.task(&blocker)["state"], "running");
    assert_eq!(
        (waiting["state"].as_str(), waiting["attempt"].as_u64()),
        (Some("queued"), Some(1))
    );
    assert_eq!(waiting["error"], "attempt 1 failed\n");
    assert_eq!(waiting["max_attempts"], 3);
    assert!(waiting["finished_at"].is_null());
    // The first retry is due 1 s after the failure: no sooner, and later
    // only by the moment it took the server to see the program end.
    let failed = times(&log)[&("end".to_string(), 1)];
    let backoff = epoch_millis(&waiting["retry_at"]) - failed;
    assert!(
        (1000..2000).contains(&backoff),
        "first backoff {backoff} ms"
    );

    assert_eq!(server.cancel(&blocker).status, 200);
    let done = server.wait_done(&id);
    assert_eq!(
        (done["state"].as_str(), done["attempt"].as_u64()),
        (Some("succeeded"), Some(3))
    );
    assert_eq!(done["result"], "fine");
    assert!(
        done["error"].is_null() && done["retry_at"].is_null(),
        "a success clears them: {done}"
    );
    // The second waits 2 s: no sooner, and later only by what it takes
    // to notice the end, start the program and run `date` (milliseconds;
    // the slack of 1 s still tells 2 s from 1 s or 4 s).
    let times = times(&log);
    let backoff = times[&("start".to_string(), 3)] - times[&("end".to_string(), 2)];
    assert!(
        (2000..3000).contains(&backoff),
        "second backoff {backoff} ms"
    );

    let id = submit_kind(&server, "flaky", json!({"max_attempts": 2}));
    let done = server.wait_done(&id);
    assert_eq!(
        (done["state"].as_str(), done["attempt"].as_u64()),
        (Some("failed"), Some(2))
    );
    assert_eq!(done["error"], "attempt 2 failed\n");
}

#[test]
fn a_task_waiting_for_its_retry_takes_no_queue_slot() {
    let scripts = Scripts::new("slot");
    let fail = scripts.write("fail.sh", "exit 1");
    let server = start(&[("fail", &fail)], &["--workers", "1", "--buffer", "1"]);
    let id = submit_kind(&server, "fail", json!({"max_attempts": 3}));
    // Observed in the 2 s its second retry waits (a poll every 5 ms).
    let waiting = eventually("the second failure", || {
        let task = server.task(&id);
        (task["attempt"] == 2 && task["state"] == "queued").then_some(task)
    });
    assert_eq!(server.metric("bgtasks_queue_depth{queue=\"default\"}"), 0.0);
    // The slot is free for new work while the retry waits.
    let busy = server.submit("60s");
    server.wait_state(&busy, "running");
    let queued = server.submit("0s");
    // All that happened before the retry was due, by the server's clock.
    let retry_at = epoch_millis(&waiting["retry_at"]);
    assert!(
        epoch_millis(&server.task(&queued)["created_at"]) < retry_at,
        "the machine was too slow for this test to mean anything"
    );
    // Once due, the retry waits for room rather than overflow the queue.
    eventually("the retry to be due", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        (now.as_millis() as i64 > retry_at + 200).then_some(())
    });
    assert_eq!(server.metric("bgtasks_queue_depth{queue=\"default\"}"), 1.0);
    let still = server.task(&id);
    assert_eq!(
        (still["state"].as_str(), still["attempt"].as_u64()),
        (Some("queued"), Some(2))
    );
    // Room comes when the worker takes the queued task: the retry runs
    // after it.
    assert_eq!(server.cancel(&busy).status, 200);
    let done = server.wait_done(&id);
    assert_eq!(
        (done["state"].as_str(), done["attempt"].as_u64()),
        (Some("failed"), Some(3))
    );
    let queued = server.task(&queued);
    assert_eq!(queued["state"], "succeeded");
    assert!(epoch_millis(&queued["finished_at"]) <= epoch_millis(&done["started_at"]));
}

#[test]
fn cancel_stops_the_whole_process_group() {
    let scripts = Scripts::new("cancel");
    // The script and its background child both ignore SIGTERM, or not.
    let stubborn = scripts.sleeper("stubborn", true);
    let polite = scripts.sleeper("polite", false);
    let server = start(
        &[("stubborn", &stubborn), ("polite", &polite)],
        &["--workers", "1"],
    );

    let id = submit_kind(&server, "polite", json!({}));
    let pids = scripts.pids("polite");
    let started = Instant::now();
    let r = server.cancel(&id);
    assert_eq!(r.json()["state"], "cancelled");
    eventually("the polite group to be gone", || {
        pids.iter().all(|&p| !exists(p)).then_some(())
    });
    // Liveness: SIGTERM ends them in milliseconds; the SIGKILL that would
    // end them otherwise comes 5 s after it.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let id = submit_kind(&server, "stubborn", json!({}));
    let pids = scripts.pids("stubborn");
    let started = Instant::now();
    let r = server.cancel(&id);
    assert_eq!(r.json()["state"], "cancelled", "cancelled at once");
    assert!(
        pids.iter().all(|&p| exists(p)),
        "SIGTERM is ignored, so they live on for now"
    );
    server.wait_metric("bgtasks_workers_busy{queue=\"default\"}", 0.0);
    // SIGKILL 5 s after SIGTERM: not sooner; the upper bound is liveness.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(4_800) && took < Duration::from_secs(15),
        "SIGKILL after 5 s: {took:?}"
    );
    assert!(
        pids.iter().all(|&p| !exists(p)),
        "no process of the group, not even a zombie"
    );
    assert!(zombie_children(server.child.id()).is_empty());
    assert_eq!(server.task(&id)["state"], "cancelled");
}

#[test]
fn no_orphan_or_zombie_outlives_an_attempt() {
    let scripts = Scripts::new("orphans");
    let leaver = scripts.write(
        "leaver.sh",
        &format!(
            "sleep 300 &\n(sleep 301 &)\necho $! > {0}.tmp; mv {0}.tmp {0}\necho done",
            scripts.path("pids")
        ),
    );
    let server = start(&[("leaver", &leaver)], &[]);
    for _ in 0..3 {
        let _ = std::fs::remove_file(scripts.path("pids"));
        let id = submit_kind(&server, "leaver", json!({"timeout": "10s"}));
        let pids = scripts.pids("pids");
        let task = server.wait_done(&id);
        assert_eq!(task["state"], "succeeded", "{task}");
        eventually("the background sleep to be gone", || {
            pids.iter().all(|&p| !exists(p)).then_some(())
        });
    }
    // Nothing of any attempt is left in the process table, not even the
    // double-forked `sleep 301` whose pid the script never saw.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|v| v == b"BGTASKS_TASK_KIND=leaver")
            })
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(zombie_children(server.child.id()).is_empty());
}

#[test]
fn shutdown_interrupts_programs_and_leaves_nothing() {
    let scripts = Scripts::new("shutdown");
    let stubborn = scripts.sleeper("stubborn", true);
    let mut server = start(&[("stubborn", &stubborn)], &["--grace", "300ms"]);
    submit_kind(&server, "stubborn", json!({}));
    let pids = scripts.pids("stubborn");
    let (code, took) = server.stop(Signal::TERM);
    assert_eq!(code, Some(0));
    // Grace, then SIGTERM, then SIGKILL 1 s later: within grace + 2 s.
    assert!(
        took >= Duration::from_millis(1_250) && took < Duration::from_millis(2_300),
        "{took:?}"
    );
    assert!(pids.iter().all(|&p| !exists(p)), "left behind: {pids:?}");
    assert!(
        server
            .log()
            .contains("dropped 0 queued and 1 running tasks"),
        "{}",
        server.log()
    );
}

#[test]
fn shell_metacharacters_in_a_request_are_inert() {
    let scripts = Scripts::new("inert");
    let marker = scripts.path("pwned");
    let echo = scripts.write("echo.sh", "cat");
    let server = start(&[("echo", &echo)], &[]);
    let evil = format!(
        "$(touch {marker}) `touch {marker}`; touch {marker} | touch {marker} && touch {marker} > {marker}"
    );
    let payload = json!({"cmd": evil, "arr": [format!("';touch {marker};'")]});
    let body = json!({"kind": "echo", "task_id": evil, "payload": payload, "timeout": "5s"});
    let r = server.post_with(
        "/tasks",
        &[&format!("Idempotency-Key: x;touch_{}", "y")],
        &body.to_string(),
    );
    assert_eq!(r.status, 202);
    let task = server.wait_done(r.json()["id"].as_str().unwrap());
    assert_eq!(
        task["result"], payload,
        "the payload reaches stdin byte for byte"
    );
    assert_eq!(task["task_id"], evil.as_str());
    assert!(
        !Path::new(&marker).exists(),
        "something ran a shell on request data"
    );
}

#[test]
fn a_token_guards_every_route_but_healthz() {
    let server = Server::start_with_env(
        &["--log-level", "trace"],
        &[("BGTASKS_TOKEN", "s3cret-T0ken")],
    );
    let requests = [
        "GET /tasks",
        "POST /tasks",
        "POST /queue-task",
        "GET /tasks/abc",
        "POST /tasks/abc/cancel",
        "GET /metrics",
        "GET /nowhere",
        "DELETE /tasks",
        "POST /healthz",
    ];
    let body = r#"{"work_duration": "0s"}"#;
    for line in requests {
        for auth in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: Basic s3cret-T0ken\r\n",
            "Authorization: Bearer s3cret-T0ke\r\n",
            "Authorization: Bearer s3cret-T0ken0\r\n",
            "Authorization: s3cret-T0ken\r\n",
        ] {
            let request = format!(
                "{line} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let r = server.raw(request.as_bytes());
            assert_eq!(r.status, 401, "{line} with {auth:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert!(r.json()["error"].is_string());
        }
        let request = format!(
            "{line} HTTP/1.1\r\nHost: t\r\nAuthorization: bEaReR s3cret-T0ken\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_ne!(server.raw(request.as_bytes()).status, 401, "{line}");
    }
    assert_eq!(server.get("/healthz").status, 200);
    assert!(
        !server.log().contains("s3cret-T0ken"),
        "the token is in the log"
    );
}
