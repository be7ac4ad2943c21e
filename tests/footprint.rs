//! Figures to size a small box by (README, "On a small box"): what the
//! server itself weighs, and what each thing it holds adds to its resident
//! memory (`VmRSS`). They are printed, never asserted:
//!
//! ```text
//! cargo test --release --test footprint -- --ignored --nocapture --test-threads 1
//! BGTASKS_BIN=$PWD/target/static/x86_64-unknown-linux-gnu/release/bgtasks \
//!     cargo test --release --test footprint -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each cost is the growth of one server's RSS while it takes on many of
//! one thing, divided by how many: the server's start-up, and whatever
//! else the flags reserve, is in the figure before.

mod common;

use common::{EventStream, PATIENCE, Server, binary, raise_fd_limit};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Tasks per measurement: enough that the allocator's granularity and
/// the start-up's noise are a small part of the growth.
const TASKS: usize = 100_000;

/// Connections and event streams per measurement: well within the
/// default --max-connections and a raised open-file limit.
const CONNECTIONS: usize = 1_000;

/// Event streams per measurement.
const STREAMS: usize = 200;

/// How long apart RSS samples are taken while waiting for it to hold
/// still.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How many samples in a row must agree before RSS counts as settled.
const SETTLED: usize = 5;

/// Returns the server's RSS in KiB once it holds still: the same in
/// [`SETTLED`] samples in a row, or the last sample after [`PATIENCE`].
fn settled_rss(server: &Server) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut last = server.rss_kib();
    let mut same = 1;
    while same < SETTLED && Instant::now() < deadline {
        std::thread::sleep(SAMPLE_EVERY);
        let now = server.rss_kib();
        same = if now == last { same + 1 } else { 1 };
        last = now;
    }
    last
}

/// Prints one figure in the form the README's table quotes.
fn report(what: &str, before: u64, after: u64, count: usize) {
    let each = (after as f64 - before as f64) * 1024.0 / count as f64;
    println!(
        "footprint: {what}: {each:.0} bytes each (RSS {before} KiB -> {after} KiB for {count})"
    );
}

/// Starts a server with `args`, submits [`TASKS`] tasks of `body`, waits
/// until `state` counts them all, and prints what each added.
fn per_task(what: &str, args: &[&str], body: &str, state: &str) {
    per_task_on(&Server::start(args), what, body, state);
}

/// Submits [`TASKS`] tasks of `body` to `server`, waits until `state`
/// counts them all, and prints what each added.
fn per_task_on(server: &Server, what: &str, body: &str, state: &str) {
    let before = settled_rss(server);
    let statuses = server.pipeline("/tasks", TASKS, 4, |_| body.to_string());
    assert_eq!(statuses.get(&202), Some(&TASKS), "{statuses:?}");
    common::eventually(&format!("{TASKS} tasks {state}"), || {
        let counts = server.get("/tasks?limit=1").json()["counts"].clone();
        (counts[state].as_u64() >= Some(TASKS as u64 - 1)).then_some(())
    });
    report(what, before, settled_rss(server), TASKS);
}

#[test]
#[ignore = "benchmark: prints the binary's size and the idle server's RSS"]
fn footprint_of_the_binary_and_the_idle_server() {
    let path = binary();
    let size = std::fs::metadata(&path).unwrap().len();
    println!("footprint: binary {}: {size} bytes", path.display());
    for args in [&[][..], &["--threads", "1"][..]] {
        let server = Server::start(args);
        let rss = settled_rss(&server);
        println!("footprint: idle RSS with {args:?}: {rss} KiB");
    }
}

#[test]
#[ignore = "benchmark: prints the RSS of each queued, scheduled, waiting and finished task"]
fn footprint_per_task() {
    let tasks = TASKS.to_string();
    let room = (2 * TASKS).to_string();
    // One worker runs one task of an hour; the rest wait in the queue.
    per_task(
        "queued task (sleep, a 1-byte label)",
        &["--workers", "1", "--buffer", &room],
        r#"{"task_id": "t", "work_duration": "1h"}"#,
        "queued",
    );
    per_task(
        "scheduled task (delay 1h)",
        &["--max-scheduled", &room],
        r#"{"task_id": "t", "work_duration": "0s", "delay": "1h"}"#,
        "scheduled",
    );
    // Each waits for one task that runs for an hour (SPEC §13).
    let server = Server::start(&["--max-scheduled", &room]);
    let parent = server.submit("1h");
    server.wait_state(&parent, "running");
    per_task_on(
        &server,
        "waiting task (after one running task)",
        &format!(r#"{{"task_id": "t", "work_duration": "0s", "after": ["{parent}"]}}"#),
        "waiting",
    );
    per_task(
        "retained finished task (succeeded)",
        &["--buffer", &room, "--keep-finished", &tasks],
        r#"{"task_id": "t", "work_duration": "0s"}"#,
        "succeeded",
    );
}

#[test]
#[ignore = "benchmark: prints the RSS of each --buffer slot, before any task"]
fn footprint_per_buffer_slot() {
    let slots = 1_000_000;
    let small = Server::start(&["--buffer", "1"]);
    let before = settled_rss(&small);
    let large = Server::start(&["--buffer", &slots.to_string()]);
    report(
        "--buffer slot reserved at start",
        before,
        settled_rss(&large),
        slots - 1,
    );
}

#[test]
#[ignore = "benchmark: prints the RSS of each idle connection and event stream"]
fn footprint_per_connection_and_event_stream() {
    raise_fd_limit();
    let server = Server::start(&[]);
    let before = settled_rss(&server);
    let silent = server.connect_many(CONNECTIONS);
    let after = settled_rss(&server);
    report("connection that sent nothing", before, after, CONNECTIONS);
    drop(silent);

    // Keep-alive connections idle after one answered request.
    let server = Server::start(&[]);
    let before = settled_rss(&server);
    let idle: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut stream = server.connect();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            common::read_response(&mut stream).expect("an answer");
            stream
        })
        .collect();
    report(
        "keep-alive connection idle after a request",
        before,
        settled_rss(&server),
        idle.len(),
    );

    let server = Server::start(&[]);
    let before = settled_rss(&server);
    let mut streams: Vec<EventStream> = (0..STREAMS).map(|_| server.events("")).collect();
    for stream in &mut streams {
        assert_eq!(stream.event().name, "stats");
    }
    report(
        "idle /events subscriber",
        before,
        settled_rss(&server),
        STREAMS,
    );
}

#[test]
#[ignore = "benchmark: prints the RSS of the README's worked example"]
fn footprint_of_half_a_million_queued_tasks() {
    // The README's example: the default flags but --buffer, with as many
    // finished tasks as --keep-finished keeps and every worker busy.
    let queued = 500_000;
    let server = Server::start(&["--buffer", &queued.to_string()]);
    let idle = settled_rss(&server);
    let finished = 10_000;
    let statuses = server.pipeline("/tasks", finished, 4, |_| {
        r#"{"task_id": "t", "work_duration": "0s"}"#.to_string()
    });
    assert_eq!(statuses.get(&202), Some(&finished), "{statuses:?}");
    common::eventually("the finished tasks", || {
        let counts = server.get("/tasks?limit=1").json()["counts"].clone();
        (counts["succeeded"].as_u64() == Some(finished as u64)).then_some(())
    });
    let waiting = queued + 10;
    let statuses = server.pipeline("/tasks", waiting, 4, |_| {
        r#"{"task_id": "t", "work_duration": "1h"}"#.to_string()
    });
    assert_eq!(statuses.get(&202), Some(&waiting), "{statuses:?}");
    let counts = server.get("/tasks?limit=1").json()["counts"].clone();
    println!(
        "footprint: --buffer {queued}: RSS {idle} KiB idle, {} KiB holding {counts}",
        settled_rss(&server)
    );
}
