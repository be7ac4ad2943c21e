//! SPEC §6: durable tasks in `--data-dir`.

mod common;

use common::{Rng, Server, TempDir, command, eventually, journal_line, read_response};
use rustix::process::Signal;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A data directory for one test, removed when it ends.
struct DataDir(TempDir);

impl DataDir {
    /// Makes an empty data directory for `test`.
    fn new(test: &str) -> DataDir {
        DataDir(TempDir::new(&format!("data-{test}")))
    }

    /// Returns the directory as a command-line argument.
    fn arg(&self) -> &str {
        self.0.0.to_str().unwrap()
    }

    /// Returns the path of the journal file.
    fn journal(&self) -> PathBuf {
        self.0.path("journal")
    }

    /// Returns the path of `name` in the directory.
    fn path(&self, name: &str) -> PathBuf {
        self.0.path(name)
    }
}

/// The first record of every journal this server creates or compacts.
const VERSION_2: &str = r#"{"op":"version","version":2}"#;

/// Starts a server on `dir` with more flags.
fn start(dir: &DataDir, args: &[&str]) -> Server {
    let mut all = vec!["--data-dir", dir.arg()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// Runs the binary on a data directory that must be refused: returns what
/// it printed, having checked that it exited with status 1.
fn refused(dir: &str) -> String {
    let out = command(&["--addr", "127.0.0.1:0", "--data-dir", dir], &[], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn the_data_dir_is_created_locked_and_checked() {
    let dir = DataDir::new("created");
    let nested = DataDir(TempDir(dir.path("a/b")));
    let server = start(&nested, &[]);
    server.submit_labelled("x", "0s");
    assert!(nested.journal().exists());
    // A second server on the same directory is refused.
    let err = refused(nested.arg());
    assert!(err.contains("is in use by another bgtasks"), "{err}");
    drop(server);
    // A path that cannot be a directory.
    let file = dir.path("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("data");
    let err = refused(bad.to_str().unwrap());
    assert!(err.contains("cannot use --data-dir"), "{err}");
    // The environment variable works too.
    let server = Server::start_with_env(&[], &[("BGTASKS_DATA_DIR", nested.arg())]);
    assert_eq!(server.get("/tasks").json()["counts"]["succeeded"], 1);
}

#[test]
fn tasks_come_back_after_kill_9_as_they_were() {
    let dir = DataDir::new("kill");
    let mut server = start(&dir, &["--workers", "1"]);
    let done = server.submit_labelled("done", "0s");
    let done_status = server.wait_state(&done, "succeeded");
    let running = server.submit_labelled("running", "60s");
    server.wait_state(&running, "running");
    let cancelled = server.submit_labelled("cancelled", "60s");
    assert_eq!(server.cancel(&cancelled).status, 200);
    let queued: Vec<String> = (0..3)
        .map(|i| server.submit_labelled(&format!("q{i}"), "60s"))
        .collect();
    let keyed = server.post_with(
        "/tasks",
        &["Idempotency-Key: once"],
        r#"{"work_duration": "60s"}"#,
    );
    let keyed = keyed.json()["id"].as_str().unwrap().to_string();
    server.kill();

    let server = start(&dir, &["--workers", "1"]);
    assert_eq!(
        server.task(&done),
        done_status,
        "a finished task keeps its status"
    );
    assert_eq!(server.task(&cancelled)["state"], "cancelled");
    // The task running at the crash runs again, its attempt not counted.
    let again = server.wait_state(&running, "running");
    assert_eq!(again["attempt"], 1);
    for id in &queued {
        let task = server.task(id);
        assert_eq!(
            (task["state"].as_str(), task["attempt"].as_u64()),
            (Some("queued"), Some(0))
        );
    }
    // Original order: cancelling the running one starts q0, then q1.
    assert_eq!(server.cancel(&running).status, 200);
    server.wait_state(&queued[0], "running");
    assert_eq!(server.task(&queued[1])["state"], "queued");
    let repeat = server.post_with(
        "/tasks",
        &["Idempotency-Key: once"],
        r#"{"work_duration": "60s"}"#,
    );
    assert_eq!(
        (repeat.status, repeat.json()["id"].as_str()),
        (200, Some(keyed.as_str()))
    );
    assert_eq!(
        server.metric("bgtasks_tasks_accepted_total"),
        0.0,
        "replayed tasks are not counted"
    );
    let newer = server.submit_labelled("new", "0s");
    assert!(newer > keyed, "ids keep increasing across restarts");
}

#[test]
fn a_task_interrupted_by_shutdown_is_queued_again() {
    let dir = DataDir::new("graceful");
    let mut server = start(&dir, &["--workers", "1", "--grace", "200ms"]);
    let id = server.submit_labelled("long", "60s");
    server.wait_state(&id, "running");
    server.submit_labelled("waiting", "60s");
    assert_eq!(server.stop(Signal::TERM).0, Some(0));
    assert!(
        server
            .log()
            .contains("1 queued, 0 scheduled and 1 interrupted tasks stay in the journal"),
        "{}",
        server.log()
    );
    let server = start(&dir, &["--workers", "1"]);
    let task = server.wait_state(&id, "running");
    assert_eq!(task["attempt"], 1, "the interrupted attempt is not counted");
    assert!(task["error"].is_null());
}

#[test]
fn a_torn_last_record_is_dropped_with_a_warning() {
    let dir = DataDir::new("torn");
    let mut server = start(&dir, &[]);
    let ids: Vec<String> = (0..3)
        .map(|i| server.submit_labelled(&format!("t{i}"), "0s"))
        .collect();
    server.wait_state(&ids[2], "succeeded");
    server.stop(Signal::TERM);
    let whole = std::fs::read(dir.journal()).unwrap();
    for tail in [
        &b"1c0ffee5 {\"op\":\"new\",\"id\":17958"[..],
        b"00000000 {\"op\":\"new\",\"id\":1}\n",
        b"\0\0\0\0\0\0",
    ] {
        let mut torn = whole.clone();
        torn.extend_from_slice(tail);
        std::fs::write(dir.journal(), &torn).unwrap();
        let mut server = start(&dir, &[]);
        server.wait_log("dropped a torn last record");
        for id in &ids {
            assert_eq!(server.task(id)["state"], "succeeded");
        }
        server.stop(Signal::TERM);
        assert_eq!(
            std::fs::read(dir.journal()).unwrap(),
            whole,
            "cut back to the last whole record"
        );
    }
}

#[test]
fn damage_stops_start_up_and_changes_nothing() {
    let dir = DataDir::new("damage");
    let records = [
        r#"{"op":"new","id":1795818360837963,"task_id":"a","work_duration":"0s","max_attempts":1}"#,
        r#"{"op":"new","id":1795818360837964,"task_id":"b","work_duration":"0s","max_attempts":1}"#,
        r#"{"op":"state","id":1795818360837963,"state":"succeeded","attempt":1,"started_at":1795818360838,"finished_at":1795818360838}"#,
        r#"{"op":"new","id":1795818360837965,"task_id":"c","work_duration":"0s","max_attempts":1}"#,
    ];
    let good: String = records.iter().map(|r| journal_line(r)).collect();
    let damaged = [
        good.replacen("\"task_id\":\"b\"", "\"task_id\":\"B\"", 1),
        good.replacen("\"b\"", "\"b\"\n", 1),
        good.replacen(&journal_line(records[1]), "garbage\n", 1),
    ];
    for journal in damaged {
        std::fs::write(dir.journal(), &journal).unwrap();
        std::fs::write(dir.path("journal.tmp"), b"half a compaction").unwrap();
        let err = refused(dir.arg());
        let at = format!("{}:2: the journal is damaged", dir.journal().display());
        assert!(err.contains(&at), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.journal()).unwrap(),
            journal,
            "the journal was changed"
        );
        assert!(
            dir.path("journal.tmp").exists(),
            "the directory was changed"
        );
    }
    // The undamaged journal starts, and shows what it holds.
    std::fs::write(dir.journal(), &good).unwrap();
    let server = start(&dir, &[]);
    let list = server.get("/tasks").json();
    assert_eq!(list["tasks"].as_array().unwrap().len(), 3);
    let a = server.task(list["tasks"][2]["id"].as_str().unwrap());
    assert_eq!(
        (a["task_id"].as_str(), a["state"].as_str()),
        (Some("a"), Some("succeeded"))
    );
}

#[test]
fn an_unfinished_compaction_is_thrown_away() {
    let dir = DataDir::new("unfinished");
    let mut server = start(&dir, &[]);
    let id = server.submit_labelled("kept", "60s");
    server.kill();
    // A crash while compacting leaves journal.tmp beside a whole journal,
    // however far the new file got.
    let journal = std::fs::read_to_string(dir.journal()).unwrap();
    for tmp in [
        String::new(),
        journal.clone(),
        journal[..journal.len() / 2].to_string(),
    ] {
        std::fs::write(dir.path("journal.tmp"), tmp).unwrap();
        let mut server = start(&dir, &[]);
        server.wait_log("removed journal.tmp");
        assert!(!dir.path("journal.tmp").exists());
        assert!(matches!(
            server.task(&id)["state"].as_str(),
            Some("queued" | "running")
        ));
        server.kill();
    }
}

#[test]
fn the_journal_is_compacted_and_stays_small() {
    let dir = DataDir::new("compact");
    let mut server = start(
        &dir,
        &[
            "--workers",
            "8",
            "--buffer",
            "100000",
            "--keep-finished",
            "100",
        ],
    );
    let first = server.submit_labelled("first", "0s");
    server.wait_state(&first, "succeeded");
    // Waves of 1,000 that drain before the next: however slow the workers
    // are beside the clients, at most about 1,100 tasks are retained, so
    // the threshold stays near 4 x what they need + 8 MiB.
    let mut largest = 0;
    for _ in 0..200 {
        let statuses = server.pipeline("/tasks", 1_000, 4, |i| {
            format!(r#"{{"task_id": "c{i}", "work_duration": "0s"}}"#)
        });
        assert_eq!(
            statuses.get(&202),
            Some(&1_000),
            "{statuses:?}\n{}",
            server.log()
        );
        server.wait_metric("bgtasks_queue_depth{queue=\"default\"}", 0.0);
        largest = largest.max(std::fs::metadata(dir.journal()).unwrap().len());
    }
    server.wait_log("journal compacted");
    let journal = std::fs::read_to_string(dir.journal()).unwrap();
    assert_eq!(
        journal.lines().next(),
        Some(journal_line(VERSION_2).trim_end())
    );
    // 200,000 tasks of about 230 bytes of records each went through; the
    // file stays near its threshold, passing it by one write at most.
    assert!(largest < 12 << 20, "the journal grew to {largest} bytes");
    server.stop(Signal::TERM);
    let server = start(&dir, &["--keep-finished", "100"]);
    let list = server.get("/tasks?limit=1000").json();
    assert_eq!(list["counts"]["succeeded"], 100);
    assert_eq!(
        server.get(&format!("/tasks/{first}")).status,
        410,
        "evicted before the restart, and known to be"
    );
}

/// What the crash loop's clients saw.
#[derive(Default)]
struct Seen {
    /// Every id that was answered 202.
    accepted: Vec<String>,
    /// Terminal states clients saw, by id.
    finished: HashMap<String, Value>,
}

/// How far the clients of one run of the crash loop have got.
#[derive(Default)]
struct Progress {
    /// Tasks answered 202.
    accepted: AtomicUsize,
    /// Terminal states seen.
    finished: AtomicUsize,
}

/// Submits tasks and reads some back until the server dies, counting in
/// `progress`; returns what it saw.
fn hammer(addr: std::net::SocketAddr, client: usize, progress: &Progress) -> Seen {
    let mut seen = Seen::default();
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return seen;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for i in 0.. {
        let duration = if i % 50 == 0 { "5ms" } else { "0s" };
        let body = format!(r#"{{"task_id": "c{client}-{i}", "work_duration": "{duration}"}}"#);
        if stream
            .write_all(common::post_request("/tasks", &[], &body).as_bytes())
            .is_err()
        {
            break;
        }
        let Some(r) = read_response_or_none(&mut stream) else {
            break;
        };
        if r.status == 202 {
            seen.accepted
                .push(r.json()["id"].as_str().unwrap().to_string());
            progress.accepted.fetch_add(1, Ordering::Relaxed);
        }
        if i % 7 == 3 {
            let id = seen.accepted[seen.accepted.len() / 2].clone();
            let get = format!("GET /tasks/{id} HTTP/1.1\r\nHost: t\r\n\r\n");
            if stream.write_all(get.as_bytes()).is_err() {
                break;
            }
            let Some(r) = read_response_or_none(&mut stream) else {
                break;
            };
            let task = r.json();
            if matches!(
                task["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                seen.finished.insert(id, task);
                progress.finished.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    seen
}

/// Reads the status of every task in `ids`, pipelined on one connection.
fn statuses(server: &Server, ids: &[String]) -> Vec<(u16, Value)> {
    let mut stream = server.connect();
    let mut all = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(200) {
        let batch: String = chunk
            .iter()
            .map(|id| format!("GET /tasks/{id} HTTP/1.1\r\nHost: t\r\n\r\n"))
            .collect();
        stream.write_all(batch.as_bytes()).unwrap();
        for _ in chunk {
            let r = read_response(&mut stream).unwrap();
            all.push((r.status, r.json()));
        }
    }
    all
}

/// Reads a response, or `None` if the connection died mid-way.
fn read_response_or_none(stream: &mut std::net::TcpStream) -> Option<common::Response> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_response(stream)))
        .ok()
        .flatten()
}

#[test]
fn kill_9_at_random_moments_loses_no_accepted_task() {
    let dir = DataDir::new("crashloop");
    let args = [
        "--workers",
        "4",
        "--buffer",
        "100000",
        "--keep-finished",
        "10000000",
    ];
    let mut accepted: Vec<String> = Vec::new();
    let mut finished: HashMap<String, Value> = HashMap::new();
    let mut rng = Rng(0x00c0_ffee);
    for cycle in 0..20 {
        let mut server = start(&dir, &args);
        // Everything accepted so far is here; everything seen finished
        // is still finished, the same way.
        for (id, (status, task)) in accepted.iter().zip(statuses(&server, &accepted)) {
            assert_eq!(status, 200, "cycle {cycle}: accepted task {id} is lost");
            let state = task["state"].as_str().unwrap();
            assert!(
                ["queued", "running", "succeeded"].contains(&state),
                "{state}"
            );
            if let Some(seen) = finished.get(id) {
                assert_eq!(seen, &task, "cycle {cycle}: a finished task changed");
            }
        }
        let addr = server.addr;
        let progress = Arc::new(Progress::default());
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let progress = progress.clone();
                std::thread::spawn(move || hammer(addr, c, &progress))
            })
            .collect();
        // Killed at a random moment, once this run has done enough for the
        // checks to mean something, however slow the machine is.
        eventually("tasks accepted and one seen finished", || {
            let accepted = progress.accepted.load(Ordering::Relaxed);
            (accepted >= 60 && progress.finished.load(Ordering::Relaxed) >= 1).then_some(())
        });
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        server.kill();
        for client in clients {
            let seen = client.join().unwrap();
            accepted.extend(seen.accepted);
            finished.extend(seen.finished);
        }
    }
    // And once more after the last kill.
    let server = start(&dir, &args);
    for (id, (status, _)) in accepted.iter().zip(statuses(&server, &accepted)) {
        assert_eq!(status, 200, "accepted task {id} is lost");
    }
    let counts = server.get("/tasks?limit=1").json()["counts"].clone();
    let total: u64 = ["queued", "running", "succeeded"]
        .iter()
        .map(|s| counts[*s].as_u64().unwrap())
        .sum();
    // On disk may be a little more than what got a 202: a task saved just
    // before a kill, whose answer never left. At most one per client per kill.
    let extra = total
        .checked_sub(accepted.len() as u64)
        .expect("fewer tasks on disk than accepted");
    assert!(
        extra <= 4 * 20,
        "{extra} more tasks than were accepted: {counts}"
    );
}

#[test]
fn kill_9_during_compaction_loses_nothing() {
    let dir = DataDir::new("compactloop");
    let args = [
        "--workers",
        "64",
        "--buffer",
        "200000",
        "--keep-finished",
        "50",
    ];
    let mut long: Vec<String> = Vec::new();
    let mut rng = Rng(0xdead_beef);
    let mut compactions = 0;
    for cycle in 0..12 {
        let mut server = start(&dir, &args);
        for id in &long {
            let state = server.task(id)["state"].clone();
            assert!(
                state == "queued" || state == "running",
                "cycle {cycle}: {id} is {state}"
            );
        }
        long.push(server.submit_labelled(&format!("long{cycle}"), "600s"));
        // A flood of zero-length tasks: they finish and are evicted at
        // once, so the journal is compacted again and again.
        let addr = server.addr;
        let flood = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            // Answers are read and thrown away, or the server would stop
            // reading once they fill the socket.
            let mut answers = stream.try_clone().unwrap();
            std::thread::spawn(move || std::io::copy(&mut answers, &mut std::io::sink()));
            let batch: String = (0..500)
                .map(|i| {
                    common::post_request(
                        "/tasks",
                        &[],
                        &format!(r#"{{"task_id": "f{i}", "work_duration": "0s"}}"#),
                    )
                })
                .collect();
            while stream.write_all(batch.as_bytes()).is_ok() {}
        });
        // Kill only once this run has compacted at least once, at a random
        // moment of the flood that goes on compacting.
        eventually("a compaction", || {
            server.log().contains("journal compacted").then_some(())
        });
        std::thread::sleep(Duration::from_millis(rng.next() % 300));
        server.kill();
        let _ = flood.join();
        compactions += server.log().matches("journal compacted").count();
    }
    // Each run was killed after one compaction, at least: this guards the
    // test, not the server.
    assert!(compactions >= 12, "{compactions} compactions in 12 runs");
    let server = start(&dir, &args);
    for id in &long {
        assert!(matches!(
            server.task(id)["state"].as_str(),
            Some("queued" | "running")
        ));
    }
}

#[test]
fn a_full_disk_gets_503_and_never_a_202_for_a_task_not_on_disk() {
    let dir = DataDir::new("full");
    // The journal may not grow past 16 KiB (32 blocks of 512 bytes); the
    // signal for that is ignored, so a write just fails, as on a full disk.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' XFSZ; ulimit -f 32; exec \"$0\" \"$@\"")
        .arg(common::binary())
        .args([
            "--addr",
            "127.0.0.1:0",
            "--data-dir",
            dir.arg(),
            "--workers",
            "1",
            "--buffer",
            "10000",
        ]);
    let mut server = Server::spawn_command(cmd);
    let (mut saved, mut refused) = (Vec::new(), Vec::new());
    for i in 0..400 {
        let label = format!("disk-{i}");
        let r = server.post(
            "/tasks",
            &format!(r#"{{"task_id": "{label}", "work_duration": "600s"}}"#),
        );
        match r.status {
            202 => saved.push(label),
            503 => {
                assert_eq!(
                    r.json()["error"],
                    "the task could not be saved to disk; try again later"
                );
                assert!(r.header("retry-after").is_some());
                refused.push(label);
            }
            other => panic!("{other}: {r:?}"),
        }
    }
    assert!(
        !saved.is_empty() && refused.len() > 100,
        "{} saved, {} refused",
        saved.len(),
        refused.len()
    );
    server.wait_log("journal: cannot write");
    // Refused tasks left no trace, even in memory.
    let listed = server.get("/tasks?limit=1000").json();
    assert_eq!(
        listed["counts"]["queued"].as_u64().unwrap()
            + listed["counts"]["running"].as_u64().unwrap(),
        saved.len() as u64
    );
    assert_eq!(
        server.metric("bgtasks_tasks_accepted_total"),
        saved.len() as f64
    );
    server.kill();

    let server = start(&dir, &[]);
    let listed = server.get("/tasks?limit=1000").json();
    let labels: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    for label in &saved {
        assert!(
            labels.contains(&label.as_str()),
            "{label} got a 202 but is not on disk"
        );
    }
    for label in &refused {
        assert!(
            !labels.contains(&label.as_str()),
            "{label} got a 503 but is on disk"
        );
    }
}

/// Starts a server on `dir` whose journal can be made to fail the way a
/// full disk fails it ([`disk_full`]): SIGXFSZ is ignored, as the test
/// above does, so a write past the file-size limit just fails.
fn start_on_small_disk(dir: &DataDir, args: &[&str]) -> Server {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_bgtasks"))
        .args(["--addr", "127.0.0.1:0", "--data-dir", dir.arg()])
        .args(args);
    Server::spawn_command(cmd)
}

/// Makes the disk of `server`'s journal full (no byte more may be
/// written to it), or gives it room again: the server's soft file-size
/// limit, set to the journal's size or lifted. Deterministic, unlike a
/// limit set before it starts: the test says when writes begin to fail
/// and when they work again.
fn disk_full(server: &Server, dir: &DataDir, full: bool) {
    use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};
    let size = std::fs::metadata(dir.journal()).unwrap().len();
    let limit = Rlimit {
        current: full.then_some(size),
        // The hard limit stays as the server inherited it.
        maximum: getrlimit(Resource::Fsize).maximum,
    };
    let pid = Pid::from_raw(server.child.id() as i32).unwrap();
    prlimit(Some(pid), Resource::Fsize, limit).unwrap();
}

/// The answer to a submission whose record could not be written.
const NOT_SAVED: &str = "the task could not be saved to disk; try again later";

/// Checks that `r` is the `503` of a request whose record could not be
/// written, with `Retry-After` and `sentence`.
fn not_saved(r: &common::Response, sentence: &str) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], sentence);
    assert_eq!(r.header("retry-after"), Some("60"));
}

/// Returns the labels of every retained task, newest first.
fn labels(server: &Server) -> Vec<String> {
    let listed = server.get("/tasks?limit=1000").json();
    listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_refused_delayed_task_leaves_no_trace_and_never_runs() {
    let dir = DataDir::new("full-delayed");
    let files = TempDir::new("full-delayed-files");
    let ran = files.arg("ran");
    let note = files.script("note.sh", &format!("echo \"$BGTASKS_TASK_ID\" >> {ran}"));
    let handler = format!("note={note}");
    let mut server = start_on_small_disk(&dir, &["--workers", "1", "--handler", &handler]);
    let saved = server.post("/tasks", r#"{"task_id": "saved", "work_duration": "60s"}"#);
    assert_eq!(saved.status, 202, "{saved:?}");

    disk_full(&server, &dir, true);
    let soon = r#"{"task_id": "refused", "kind": "note", "delay": "200ms"}"#;
    not_saved(&server.post("/tasks", soon), NOT_SAVED);
    let keyed = server.post_with(
        "/tasks",
        &["Idempotency-Key: delayed"],
        r#"{"task_id": "refused-keyed", "kind": "note", "delay": "1h"}"#,
    );
    not_saved(&keyed, NOT_SAVED);
    let past = r#"{"task_id": "refused-past", "kind": "note", "run_at": "2020-01-01T00:00:00Z"}"#;
    not_saved(&server.post("/tasks", past), NOT_SAVED);
    server.wait_log("journal: cannot write");
    // Not listed, not counted, not in the queue.
    assert_eq!(labels(&server), ["saved"]);
    let counts = server.get("/tasks").json()["counts"].clone();
    assert_eq!(counts["scheduled"], 0, "{counts}");
    assert_eq!(
        counts["queued"].as_u64().unwrap() + counts["running"].as_u64().unwrap(),
        1
    );
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 1.0);
    assert_eq!(server.metric("bgtasks_tasks_scheduled"), 0.0);
    assert_eq!(server.metric("bgtasks_queue_depth{queue=\"default\"}"), 0.0);

    // Never run: a task due after the refused one, in the same queue, runs
    // alone once the running one is cancelled.
    disk_full(&server, &dir, false);
    let later = server.post(
        "/tasks",
        r#"{"task_id": "later", "kind": "note", "delay": "400ms"}"#,
    );
    assert_eq!(later.status, 202, "{later:?}");
    let saved_id = saved.json()["id"].as_str().unwrap().to_string();
    assert_eq!(server.cancel(&saved_id).status, 200);
    let later_id = later.json()["id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_done(&later_id)["state"], "succeeded");
    assert_eq!(files.read("ran"), format!("{later_id}\n"));
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 2.0);
    server.kill();

    let server = start(&dir, &[]);
    assert_eq!(labels(&server), ["later", "saved"]);
}

#[test]
fn a_refused_keyed_request_can_be_repeated_and_is_then_accepted() {
    let dir = DataDir::new("full-keyed");
    let mut server = start_on_small_disk(&dir, &["--workers", "1"]);
    let body = r#"{"task_id": "keyed", "work_duration": "60s", "delay": "1h"}"#;
    let now = r#"{"task_id": "keyed-now", "work_duration": "60s"}"#;
    disk_full(&server, &dir, true);
    for _ in 0..2 {
        not_saved(
            &server.post_with("/tasks", &["Idempotency-Key: a"], body),
            NOT_SAVED,
        );
        not_saved(
            &server.post_with("/tasks", &["Idempotency-Key: b"], now),
            NOT_SAVED,
        );
    }
    assert!(labels(&server).is_empty());
    disk_full(&server, &dir, false);
    // The keys were not used up: the same requests are accepted now, then
    // repeated.
    let first = server.post_with("/tasks", &["Idempotency-Key: a"], body);
    assert_eq!(
        (first.status, &first.json()["state"]),
        (202, &json!("scheduled"))
    );
    let repeat = server.post_with("/tasks", &["Idempotency-Key: a"], body);
    assert_eq!(
        (repeat.status, &repeat.json()["id"]),
        (200, &first.json()["id"])
    );
    let first_now = server.post_with("/tasks", &["Idempotency-Key: b"], now);
    assert_eq!(first_now.status, 202, "{first_now:?}");
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 2.0);
    server.kill();

    let server = start(&dir, &[]);
    assert_eq!(labels(&server), ["keyed-now", "keyed"]);
    let repeat = server.post_with("/tasks", &["Idempotency-Key: a"], body);
    assert_eq!(
        (repeat.status, &repeat.json()["id"]),
        (200, &first.json()["id"])
    );
}

/// The answer to a cancel whose record could not be written.
const CANCEL_NOT_SAVED: &str = "the cancel could not be saved to disk; try again later";

/// The answer to a pause whose record could not be written.
const PAUSE_NOT_SAVED: &str = "the pause could not be saved to disk; try again later";

/// The answer to a resume whose record could not be written.
const RESUME_NOT_SAVED: &str = "the resume could not be saved to disk; try again later";

#[test]
fn a_refused_cancel_has_not_happened() {
    let dir = DataDir::new("full-cancel");
    let mut server = start_on_small_disk(&dir, &["--workers", "1"]);
    let running = server.submit_labelled("running", "60s");
    server.wait_state(&running, "running");
    let queued = server.submit_labelled("queued", "60s");
    let r = server.post(
        "/tasks",
        r#"{"task_id": "scheduled", "work_duration": "60s", "delay": "1h"}"#,
    );
    let scheduled = r.json()["id"].as_str().unwrap().to_string();

    disk_full(&server, &dir, true);
    for id in [&running, &queued, &scheduled] {
        not_saved(&server.cancel(id), CANCEL_NOT_SAVED);
    }
    // Nothing changed: the running task runs on, the others wait.
    assert_eq!(server.task(&running)["state"], "running");
    assert_eq!(server.task(&queued)["state"], "queued");
    assert_eq!(server.task(&scheduled)["state"], "scheduled");
    let counts = server.get("/tasks").json()["counts"].clone();
    assert_eq!(counts["cancelled"], 0, "{counts}");
    assert_eq!(
        server.metric("bgtasks_tasks_finished_total{state=\"cancelled\"}"),
        0.0
    );

    // With room again, a cancel is saved before it is made.
    disk_full(&server, &dir, false);
    let r = server.cancel(&queued);
    assert_eq!((r.status, &r.json()["state"]), (200, &json!("cancelled")));
    server.kill();

    let server = start(&dir, &["--workers", "1"]);
    assert_eq!(server.wait_state(&running, "running")["attempt"], 1);
    assert_eq!(server.task(&scheduled)["state"], "scheduled");
    assert_eq!(server.task(&queued)["state"], "cancelled");
}

#[test]
fn a_refused_pause_or_resume_has_not_happened() {
    let dir = DataDir::new("full-pause");
    let mut server = start_on_small_disk(&dir, &[]);
    let paused = |server: &Server| {
        let queues = server.get("/queues").json();
        queues["queues"][0]["paused"].as_bool().unwrap()
    };
    disk_full(&server, &dir, true);
    not_saved(&server.post("/queues/default/pause", ""), PAUSE_NOT_SAVED);
    assert!(!paused(&server));
    disk_full(&server, &dir, false);
    let r = server.post("/queues/default/pause", "");
    assert_eq!((r.status, &r.json()["paused"]), (200, &json!(true)));
    disk_full(&server, &dir, true);
    not_saved(&server.post("/queues/default/resume", ""), RESUME_NOT_SAVED);
    assert!(paused(&server));
    assert_eq!(
        server.metric("bgtasks_queue_paused{queue=\"default\"}"),
        1.0
    );
    server.kill();

    let mut server = start(&dir, &[]);
    assert!(
        paused(&server),
        "the refused resume came back after a restart"
    );
    let r = server.post("/queues/default/resume", "");
    assert_eq!((r.status, &r.json()["paused"]), (200, &json!(false)));
    server.kill();

    // And a refused pause does not come back either.
    let server = start_on_small_disk(&dir, &[]);
    disk_full(&server, &dir, true);
    not_saved(&server.post("/queues/default/pause", ""), PAUSE_NOT_SAVED);
    drop(server);
    let server = start(&dir, &[]);
    assert!(
        !paused(&server),
        "the refused pause came back after a restart"
    );
}

/// Writes a journal of 500,000 finished tasks (a million records) to a
/// new data directory.
fn a_million_records(test: &str) -> DataDir {
    let dir = DataDir::new(test);
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.journal()).unwrap());
    let base: u64 = 1_795_818_360_837_963;
    for i in 0..500_000u64 {
        let id = base + i;
        let new = format!(
            r#"{{"op":"new","id":{id},"task_id":"t{i}","work_duration":"0s","max_attempts":1}}"#
        );
        out.write_all(journal_line(&new).as_bytes()).unwrap();
        let state = format!(
            r#"{{"op":"state","id":{id},"state":"succeeded","attempt":1,"started_at":1795818360838,"finished_at":{}}}"#,
            1_795_818_360_838 + i
        );
        out.write_all(journal_line(&state).as_bytes()).unwrap();
    }
    out.flush().unwrap();
    dir
}

#[test]
fn a_million_records_replay_in_full() {
    let dir = a_million_records("million");
    let mut server = start(&dir, &["--keep-finished", "1000000"]);
    server.wait_log("replayed 500000 tasks");
    let list = server.get("/tasks?limit=1").json();
    assert_eq!(list["counts"]["succeeded"], 500_000);
    assert_eq!(list["tasks"][0]["task_id"], "t499999");
}

#[test]
#[ignore = "benchmark: prints how long a million records take to replay"]
fn bench_replay_of_a_million_records() {
    let dir = a_million_records("bench-million");
    let started = Instant::now();
    let mut server = start(&dir, &["--keep-finished", "1000000"]);
    let listening = started.elapsed();
    let replayed = server.wait_log("replayed 500000 tasks");
    let (_, said) = replayed.split_once("replayed").unwrap();
    println!("replayed{said}; listening {listening:?} after the start");
}

#[test]
fn a_journal_names_its_format_first_and_a_journal_without_it_still_replays() {
    let dir = DataDir::new("version");
    let mut server = start(&dir, &["--workers", "1", "--grace", "0s"]);
    let done = server.submit_labelled("done", "0s");
    server.wait_state(&done, "succeeded");
    let queued: Vec<String> = (0..3)
        .map(|i| server.submit_labelled(&format!("q{i}"), "60s"))
        .collect();
    assert_eq!(server.stop(Signal::TERM).0, Some(0));
    let journal = std::fs::read_to_string(dir.journal()).unwrap();
    let (first, rest) = journal.split_once('\n').unwrap();
    assert_eq!(format!("{first}\n"), journal_line(VERSION_2));
    assert!(!rest.contains(r#""op":"version""#), "{journal}");
    // The journal as bgtasks wrote it before the version record existed
    // (version 0): the same records, without the first line. It is read
    // as it is, and appended to, not rewritten.
    std::fs::write(dir.journal(), rest).unwrap();
    let mut server = start(&dir, &["--workers", "1", "--grace", "0s"]);
    assert_eq!(server.task(&done)["state"], "succeeded");
    server.wait_state(&queued[0], "running");
    for id in &queued[1..] {
        assert_eq!(server.task(id)["state"], "queued", "{id}");
    }
    let later = server.submit_labelled("later", "60s");
    assert_eq!(server.stop(Signal::TERM).0, Some(0));
    let journal = std::fs::read_to_string(dir.journal()).unwrap();
    assert!(journal.starts_with(rest), "appended to, not rewritten");
    let server = start(&dir, &[]);
    assert_eq!(server.task(&later)["task_id"], "later");
}

#[test]
fn a_journal_of_a_newer_format_is_refused_in_one_line_changing_nothing() {
    let dir = DataDir::new("newer");
    std::fs::create_dir_all(dir.path("")).unwrap();
    // A later format may say anything after its version record.
    let journal = [
        journal_line(r#"{"op":"version","version":3}"#),
        journal_line(r#"{"op":"merge","into":7}"#),
        "not a record of version 2\n".to_string(),
    ]
    .concat();
    std::fs::write(dir.journal(), &journal).unwrap();
    // A compaction of the later server's, cut short: not ours to remove.
    std::fs::write(dir.path("journal.tmp"), "half").unwrap();
    let err = refused(dir.arg());
    assert_eq!(err.lines().count(), 1, "{err}");
    let expected = format!(
        "{}: the journal is format version 3, and this bgtasks reads versions up to 2",
        dir.journal().display()
    );
    assert!(err.contains(&expected), "{err}");
    assert_eq!(std::fs::read(dir.journal()).unwrap(), journal.as_bytes());
    assert_eq!(std::fs::read(dir.path("journal.tmp")).unwrap(), b"half");
}
