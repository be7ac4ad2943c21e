//! Backups of `--data-dir` (README, "On a small box"): a copy taken with
//! `cp -a` while the server runs is a journal a second server can start
//! from, holding every task acknowledged before the copy began.

mod common;

use common::{Server, TempDir, eventually};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Clients submitting at once while the copies are made: enough to keep
/// the journal writer busy with group commits during each copy.
const CLIENTS: usize = 4;

/// Tasks acknowledged between one copy and the next, at least: enough
/// for the journal to grow by several pages, and proof that each copy
/// was taken under load.
const BETWEEN_COPIES: usize = 300;

/// Copies taken one after another, each checked: each is a new chance to
/// catch the writer in the middle of a record.
const COPIES: usize = 3;

#[test]
fn a_copy_taken_while_the_server_runs_holds_every_task_acknowledged_before_it() {
    let dir = TempDir::new("backup");
    let data = dir.arg("data");
    // Two workers and tasks of 0 s and of an hour: the journal gets new
    // tasks and their state changes, and the queue keeps some waiting.
    let server = Server::start(&[
        "--data-dir",
        &data,
        "--workers",
        "2",
        "--buffer",
        "100000",
        "--keep-finished",
        "100000",
    ]);
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let copies = std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            let (server, acknowledged, stop) = (&server, &acknowledged, &stop);
            scope.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let duration = if i % 2 == 0 { "0s" } else { "1h" };
                    let body =
                        format!(r#"{{"task_id": "c{c}-{i}", "work_duration": "{duration}"}}"#);
                    let answer = server.post("/tasks", &body);
                    assert_eq!(answer.status, 202, "{answer:?}");
                    let id = answer.json()["id"].as_str().unwrap().to_string();
                    acknowledged.lock().unwrap().push(id);
                    i += 1;
                }
            });
        }
        let count = || acknowledged.lock().unwrap().len();
        let mut copies = Vec::new();
        for n in 1..=COPIES + 1 {
            let enough = n * BETWEEN_COPIES;
            eventually("tasks between copies", || (count() >= enough).then_some(()));
            if n > COPIES {
                break;
            }
            // Every 202 received by now was sent after its task was on disk.
            let before: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
            let copy = dir.arg(&format!("copy{n}"));
            let status = std::process::Command::new("cp")
                .args(["-a", &data, &copy])
                .status()
                .expect("cp runs");
            assert!(status.success(), "cp -a: {status}");
            copies.push((copy, before));
        }
        stop.store(true, Ordering::Relaxed);
        copies
    });
    for (copy, before) in copies {
        // The copy's lock file is a plain file nobody has locked: a second
        // server starts on it while the first still runs on the original.
        let second = Server::start(&["--data-dir", &copy, "--keep-finished", "100000"]);
        for id in &before {
            let answer = second.get(&format!("/tasks/{id}"));
            assert_eq!(answer.status, 200, "{id} is missing from {copy}");
        }
        let counts = second.get("/tasks?limit=1").json()["counts"].clone();
        let total: u64 = ["queued", "running", "succeeded", "failed", "cancelled"]
            .iter()
            .map(|state| counts[state].as_u64().unwrap())
            .sum();
        assert!(total >= before.len() as u64, "{counts}");
        println!(
            "{copy}: {} tasks acknowledged before the copy began, {total} in it",
            before.len()
        );
    }
    drop(server);
}
