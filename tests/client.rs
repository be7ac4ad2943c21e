//! SPEC §16: the same binary as a client of a running server
//! (`bgtasks COMMAND …`), run as a process against a real server over TCP.

mod common;

use common::{PATIENCE, Server, TempDir, command, eventually};
use rustix::process::Signal;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdout, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a finished client run gave.
#[derive(Debug)]
struct Ran {
    /// Its exit status (`None`: killed by a signal).
    code: Option<i32>,
    /// What it printed on stdout.
    out: String,
    /// What it printed on stderr.
    err: String,
}

/// Runs the client with `args` (after `--server` for `server`, when given),
/// extra environment variables and, if given, `stdin`; returns once it has
/// exited.
fn run(server: Option<&Server>, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Ran {
    let mut cmd = command(&[], args, env);
    if let Some(server) = server {
        cmd.args(["--server", &format!("http://{}", server.addr)]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the client starts");
    // Dropping stdin once written closes it: the client reads to its end.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let status = eventually("the client to exit", || child.try_wait().unwrap());
    Ran {
        code: status.code(),
        out: out.join().unwrap(),
        err: err.join().unwrap(),
    }
}

/// Runs the client with `args` against `server`.
fn client(server: &Server, args: &[&str]) -> Ran {
    run(Some(server), args, &[], "")
}

/// Runs the client with `args` against `server`; it must exit 0, and its
/// stdout is returned.
fn ok(server: &Server, args: &[&str]) -> String {
    let ran = client(server, args);
    assert_eq!(ran.code, Some(0), "{args:?}: {ran:?}");
    ran.out
}

/// Returns the value of `name` in the client's member-a-line output.
fn member<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

/// A client left running (`events`, `wait`), its stderr collected and its
/// stdout read line by line once [`Running::read_lines`] is called.
struct Running {
    /// The process.
    child: Child,
    /// Its stdout, until a thread reads it.
    stdout: Option<ChildStdout>,
    /// Lines of stdout, as the thread reads them.
    lines: Option<Receiver<String>>,
    /// Its stderr so far.
    err: Arc<Mutex<String>>,
    /// The thread that reads stderr; taken when it has read to the end.
    err_reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts the client with `args` against `server`.
    fn start(server: &Server, args: &[&str]) -> Running {
        let mut child = command(&[], args, &[])
            .args(["--server", &format!("http://{}", server.addr)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the client starts");
        let err = Arc::new(Mutex::new(String::new()));
        let sink = err.clone();
        let mut stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Running {
            stdout: child.stdout.take(),
            child,
            lines: None,
            err,
            err_reader: Some(err_reader),
        }
    }

    /// Reads one line of stdout directly, before any thread reads it.
    fn first_line(&mut self) -> String {
        let stdout = self.stdout.as_mut().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            assert_eq!(stdout.read(&mut byte).unwrap(), 1, "stdout ended");
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap()
    }

    /// Starts reading stdout, a line at a time, in a thread.
    fn read_lines(&mut self) {
        let stdout = self.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.lines = Some(rx);
    }

    /// Reads lines of stdout until one contains every one of `needles`;
    /// returns the lines read, that one last.
    fn until(&mut self, needles: &[&str]) -> Vec<String> {
        if self.lines.is_none() {
            self.read_lines();
        }
        let lines = self.lines.as_ref().unwrap();
        let deadline = Instant::now() + PATIENCE;
        let mut read = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {needles:?}; stderr: {}", self.stderr()));
            let found = needles.iter().all(|n| line.contains(n));
            read.push(line);
            if found {
                return read;
            }
        }
    }

    /// Tells whether the client has a socket open: its request is on its
    /// way or waiting for an answer.
    fn has_socket(&self) -> bool {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).unwrap();
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
    }

    /// Returns what the client printed on stderr so far.
    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits for the client to exit and its stderr to be read to the
    /// end; returns its exit status.
    fn exit(&mut self) -> Option<i32> {
        let status = eventually("the client to exit", || self.child.try_wait().unwrap());
        if let Some(reader) = self.err_reader.take() {
            eventually("the end of the client's stderr", || {
                reader.is_finished().then_some(())
            });
            reader.join().unwrap();
        }
        status.code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn submit_prints_the_id_and_status_prints_one_member_a_line() {
    let server = Server::start(&[]);
    let out = ok(
        &server,
        &["submit", "--task-id", "hello world", "--duration", "0s"],
    );
    let id = out.trim();
    assert_eq!(out, format!("{id}\n"));
    let task = server.wait_done(id);
    assert_eq!(task["task_id"], "hello world");

    let status = ok(&server, &["status", id]);
    assert_eq!(status.lines().count(), task.as_object().unwrap().len());
    assert_eq!(member(&status, "id"), Some(id));
    assert_eq!(member(&status, "task_id"), Some("hello world"));
    assert_eq!(member(&status, "state"), Some("succeeded"));
    assert_eq!(member(&status, "error"), Some("-"));
    // Options come anywhere after the command.
    let json = ok(&server, &["status", "--json", id]);
    let parsed: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, task);
    assert_eq!(json.lines().count(), 1);
}

#[test]
fn submit_reads_a_body_from_stdin_and_waits_for_the_task_to_succeed() {
    let server = Server::start(&[]);
    let body = r#"{"task_id": "from stdin", "work_duration": "10ms"}"#;
    let ran = run(Some(&server), &["submit", "-", "--wait"], &[], body);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let id = ran.out.lines().next().unwrap();
    assert_eq!(member(&ran.out, "id"), Some(id));
    assert_eq!(member(&ran.out, "task_id"), Some("from stdin"));
    assert_eq!(member(&ran.out, "state"), Some("succeeded"));
    assert!(ran.err.is_empty(), "{ran:?}");
    assert_eq!(server.task(id)["state"], "succeeded");

    // With --json: the 202's body, then the final status, each as it came.
    let ran = run(
        Some(&server),
        &["submit", "--json", "-", "--wait=1m"],
        &[],
        body,
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let lines: Vec<Value> = ran
        .out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{ran:?}");
    assert_eq!(lines[0]["status"], "task queued successfully");
    assert_eq!(lines[1]["id"], lines[0]["id"]);
    assert_eq!(lines[1]["state"], "succeeded");
}

#[test]
fn submit_wait_of_a_failing_handler_exits_1_with_its_final_status() {
    let dir = TempDir::new("client-failing");
    let script = dir.script("fail.sh", "echo broken >&2\nexit 1");
    let server = Server::start(&["--handler", &format!("fail={script}")]);
    let ran = client(&server, &["submit", "--kind", "fail", "--wait"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let id = ran.out.lines().next().unwrap();
    assert_eq!(member(&ran.out, "state"), Some("failed"));
    assert_eq!(member(&ran.out, "error"), Some("broken"));
    assert_eq!(ran.err, format!("bgtasks: the task {id} failed\n"));
    // `wait` on the ended task says the same at once.
    let ran = client(&server, &["wait", id]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert_eq!(member(&ran.out, "state"), Some("failed"));
}

#[test]
fn a_wait_that_runs_out_exits_5() {
    let server = Server::start(&[]);
    let id = server.submit("60s");
    let ran = client(&server, &["wait", &id, "--timeout", "1s"]);
    assert_eq!(ran.code, Some(5), "{ran:?}");
    assert!(ran.out.is_empty(), "{ran:?}");
    assert!(
        ran.err.contains(&id) && ran.err.contains("the wait ran out"),
        "{ran:?}"
    );
    // submit --wait=D prints the id first, then runs out the same way.
    let ran = client(
        &server,
        &["submit", "--wait=300ms", r#"{"work_duration": "60s"}"#],
    );
    assert_eq!(ran.code, Some(5), "{ran:?}");
    let id = ran.out.trim();
    assert_eq!(server.task(id)["state"], "running");
}

#[test]
fn a_refused_request_exits_4_with_the_servers_sentence() {
    let server = Server::start(&[]);
    let cases: &[(&[&str], &str)] = &[
        (&["status", "nosuchtask"], "task not found (HTTP 404)"),
        (&["pause", "nosuchqueue"], "(HTTP 404)"),
        (
            &["submit", r#"{"task_id": "no duration"}"#],
            "failed to parse work duration in request (HTTP 400)",
        ),
        (&["list", "--state", "sleepy"], "(HTTP 400)"),
    ];
    for (args, sentence) in cases {
        let ran = client(&server, args);
        assert_eq!(ran.code, Some(4), "{args:?}: {ran:?}");
        assert!(ran.out.is_empty(), "{args:?}: {ran:?}");
        assert_eq!(ran.err.lines().count(), 1, "{args:?}: {ran:?}");
        assert!(ran.err.contains(sentence), "{args:?}: {ran:?}");
    }
}

#[test]
fn cancel_prints_the_cancelled_status_and_a_second_cancel_is_refused() {
    let server = Server::start(&[]);
    let id = server.submit("60s");
    server.wait_state(&id, "running");
    let out = ok(&server, &["cancel", &id]);
    assert_eq!(member(&out, "state"), Some("cancelled"));
    assert_eq!(server.task(&id)["state"], "cancelled");
    let ran = client(&server, &["cancel", &id]);
    assert_eq!(ran.code, Some(4), "{ran:?}");
    assert!(ran.err.contains("(HTTP 409)"), "{ran:?}");
}

#[test]
fn a_token_comes_from_the_flag_or_the_environment() {
    let server = Server::start(&["--token", "s3cret"]);
    let ran = client(&server, &["queues"]);
    assert_eq!(ran.code, Some(4), "{ran:?}");
    assert_eq!(
        ran.err,
        "bgtasks: a valid bearer token is required (HTTP 401)\n"
    );
    let ran = client(&server, &["queues", "--token", "wrong"]);
    assert_eq!(ran.code, Some(4), "{ran:?}");
    ok(&server, &["queues", "--token", "s3cret"]);
    let ran = run(
        Some(&server),
        &["queues"],
        &[("BGTASKS_TOKEN", "s3cret")],
        "",
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    // The flag beats the variable.
    let env = [("BGTASKS_TOKEN", "wrong")];
    let ran = run(Some(&server), &["queues", "--token=s3cret"], &env, "");
    assert_eq!(ran.code, Some(0), "{ran:?}");
}

#[test]
fn list_and_queues_print_tables_with_one_header_line() {
    let server = Server::start(&["--queue", "slow=1/5"]);
    let first = server.submit_labelled("first one", "0s");
    server.wait_done(&first);
    let second = ok(&server, &["submit", "--queue", "slow", "--duration", "60s"]);
    let second = second.trim();
    server.wait_state(second, "running");

    let out = ok(&server, &["list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "id",
            "state",
            "queue",
            "kind",
            "attempt",
            "created_at",
            "task_id"
        ]
    );
    // Newest first, columns aligned under their header.
    let column = |name: &str| lines[0].find(name).unwrap();
    assert!(lines[1].starts_with(second), "{out}");
    assert_eq!(&lines[1][column("state")..][..7], "running");
    assert_eq!(&lines[1][column("queue")..][..4], "slow");
    assert!(lines[2].starts_with(&first), "{out}");
    assert!(lines[2].ends_with("  first one"), "{out}");

    let out = ok(&server, &["list", "--state", "succeeded", "--limit", "5"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with(&first), "{out}");
    let out = ok(&server, &["list", "--json", "--queue", "slow"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(listed["tasks"][0]["id"], second);
    assert_eq!(listed["counts"]["succeeded"], 1);

    let out = ok(&server, &["queues"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "name", "workers", "busy", "depth", "capacity", "paused", "rate"
            ],
            vec!["default", "10", "0", "0", "100", "false", "-"],
            vec!["slow", "1", "1", "0", "5", "false", "-"],
        ]
    );
}

#[test]
fn localhost_is_127_0_0_1() {
    let server = Server::start(&[]);
    let url = format!("http://localhost:{}/", server.addr.port());
    let ran = run(None, &["queues", "--server", &url], &[], "");
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.out.starts_with("name "), "{ran:?}");
}

#[test]
fn pause_and_resume_a_queue() {
    let server = Server::start(&["--queue", "slow=1/5"]);
    let out = ok(&server, &["pause", "slow"]);
    assert_eq!(member(&out, "name"), Some("slow"));
    assert_eq!(member(&out, "paused"), Some("true"));
    let queues = server.get("/queues").json();
    assert_eq!(queues["queues"][1]["paused"], true);
    let id = ok(&server, &["submit", "--queue", "slow", "--duration", "0s"]);
    assert_eq!(server.task(id.trim())["state"], "queued");
    let out = ok(&server, &["resume", "--json", "slow"]);
    let queue: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(queue["paused"], false);
    server.wait_done(id.trim());
}

#[test]
fn events_prints_a_task_submitted_meanwhile_and_ends_0_at_shutdown() {
    let mut server = Server::start(&[]);
    let mut people = Running::start(&server, &["events"]);
    let mut json = Running::start(&server, &["events", "--json", "--task-id", "watched"]);
    assert!(people.first_line().starts_with("stats "));
    let stats: Value = serde_json::from_str(&json.first_line()).unwrap();
    assert!(stats["counts"].is_object(), "{stats}");

    server.submit_labelled("ignored", "0s");
    let id = ok(
        &server,
        &["submit", "--task-id", "watched", "--duration", "0s"],
    );
    let id = id.trim();
    let lines = people.until(&[id, " state=succeeded "]);
    assert!(
        lines.iter().any(|l| l.contains("task_id=ignored")),
        "{lines:?}"
    );
    let line = lines.last().unwrap();
    assert!(line.contains(" task_id=watched "), "{line}");
    // The filter leaves the other task out; each line is the event's data.
    let lines = json.until(&[id, "succeeded"]);
    assert!(!lines.iter().any(|l| l.contains("ignored")), "{lines:?}");
    let event: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(
        (event["id"].as_str(), event["task_id"].as_str()),
        (Some(id), Some("watched"))
    );

    server.stop(Signal::TERM);
    for client in [&mut people, &mut json] {
        assert_eq!(client.exit(), Some(0), "{}", client.stderr());
        assert!(
            client.stderr().contains("shutting down"),
            "{}",
            client.stderr()
        );
    }
}

/// Reads a number from `/proc/sys`.
fn sysctl(path: &str, field: usize) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_whitespace().nth(field).unwrap().parse().unwrap()
}

#[test]
fn an_events_reader_that_falls_behind_reconnects_and_says_so() {
    // Events with 8 KiB labels, enough to fill the kernel's buffers
    // between the server and a client that does not read (as in
    // tests/events.rs), and then the server's 256 KiB for the stream.
    const LABEL: usize = 8 << 10;
    let capacity =
        sysctl("/proc/sys/net/ipv4/tcp_wmem", 2) + sysctl("/proc/sys/net/ipv4/tcp_rmem", 1);
    let tasks = capacity / (3 * LABEL) + 30;
    let server = Server::start(&[]);
    let mut events = Running::start(&server, &["events"]);
    assert!(events.first_line().starts_with("stats "));
    // Nobody reads the client's stdout: it blocks writing, and stops reading.
    let body = format!(
        r#"{{"task_id": "{}", "work_duration": "0s"}}"#,
        "l".repeat(LABEL)
    );
    for _ in 0..tasks {
        assert_eq!(server.post("/tasks", &body).status, 202);
    }
    events.read_lines();
    eventually("the client to say it lagged", || {
        events.stderr().contains("(lagged)").then_some(())
    });
    assert_eq!(
        events.stderr(),
        "bgtasks: fell behind the server's event stream (lagged), and missed events; reconnecting\n"
    );
    let id = server.submit_labelled("after", "0s");
    events.until(&[&id, " state=succeeded "]);
}

#[test]
fn a_server_that_is_not_there_or_not_http_exits_3() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let ran = run(None, &["status", "x", "--server", &url], &[], "");
    assert_eq!(ran.code, Some(3), "{ran:?}");
    assert!(
        ran.err
            .starts_with(&format!("bgtasks: the server at {url} cannot be reached: ")),
        "{ran:?}"
    );
    assert_eq!(ran.err.lines().count(), 1, "{ran:?}");

    // Something that answers, but not in HTTP.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // The request read first: closing on unread bytes would reset the
        // connection before the client reads the answer.
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            request.push(byte[0]);
        }
        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
    });
    let ran = run(None, &["queues"], &[("BGTASKS_SERVER", &url)], "");
    peer.join().unwrap();
    assert_eq!(ran.code, Some(3), "{ran:?}");
    assert!(ran.err.contains("did not answer in HTTP"), "{ran:?}");
}

#[test]
fn wait_exits_3_when_the_server_shuts_down_during_it() {
    // The task outlives the client: the server drains for up to a minute.
    let server = Server::start(&["--grace", "60s"]);
    let id = server.submit("60s");
    server.wait_state(&id, "running");
    let mut waiting = Running::start(&server, &["wait", &id, "--timeout", "10m"]);
    eventually("the client's long poll", || {
        waiting.has_socket().then_some(())
    });
    server.signal(Signal::TERM);
    // The long poll is answered at once, unchanged; the next one finds no
    // listener: the server is going, and the client says so.
    assert_eq!(waiting.exit(), Some(3), "{}", waiting.stderr());
    let err = waiting.stderr();
    assert!(err.contains("cannot be reached"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bad_usage_exits_2_with_the_usage_line() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["frobnicate"],
            "unknown command \"frobnicate\"",
            "usage: bgtasks COMMAND",
        ),
        (
            &["status", "--bogus", "x"],
            "unknown option \"--bogus\"",
            "usage: bgtasks status ID",
        ),
        (
            &["wait"],
            "ID is missing",
            "usage: bgtasks wait ID [--timeout DURATION]",
        ),
        (
            &["submit", "--workers", "4", "{}"],
            "unknown option \"--workers\" for submit",
            "usage: bgtasks submit ",
        ),
        (
            &["status", "x", "--server", "https://example.org"],
            "TLS-terminating proxy",
            "usage: bgtasks status ID",
        ),
        (
            &["submit", "--wait", "5s"],
            "--wait=DURATION",
            "usage: bgtasks submit ",
        ),
        (
            &["queues", "--server", "http://example.org:8000"],
            "host names are not resolved",
            "usage: bgtasks queues",
        ),
    ];
    for (args, message, usage) in cases {
        let ran = run(None, args, &[], "");
        assert_eq!(ran.code, Some(2), "{args:?}: {ran:?}");
        let lines: Vec<&str> = ran.err.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {ran:?}");
        assert!(
            lines[0].starts_with("bgtasks: ") && lines[0].contains(message),
            "{ran:?}"
        );
        assert!(lines[1].starts_with(usage), "{args:?}: {ran:?}");
        assert!(ran.out.is_empty(), "{args:?}: {ran:?}");
    }
}

#[test]
fn server_flags_before_a_command_never_start_a_server() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    drop(taken);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--workers", "4", "submit", "{}"],
            "\"submit\" is a client command",
        ),
        (
            &["--addr", &addr, "status", "x"],
            "\"status\" is a client command",
        ),
        (
            &["--token", "t", "queues"],
            "\"queues\" is a client command",
        ),
    ];
    for (args, message) in cases {
        let ran = run(None, args, &[], "");
        assert_eq!(ran.code, Some(2), "{args:?}: {ran:?}");
        assert_eq!(ran.err.lines().count(), 1, "{args:?}: {ran:?}");
        assert!(ran.err.contains(message), "{args:?}: {ran:?}");
        assert!(!ran.err.contains("listening"), "{args:?}: {ran:?}");
    }
}

#[test]
fn help_is_printed_for_each_command() {
    let commands = [
        "submit", "status", "wait", "list", "cancel", "retry", "queues", "pause", "resume",
        "events",
    ];
    for name in commands {
        for flag in ["--help", "-h"] {
            let ran = run(None, &[name, flag], &[], "");
            assert_eq!(ran.code, Some(0), "{ran:?}");
            assert!(
                ran.out.starts_with(&format!("usage: bgtasks {name}")),
                "{ran:?}"
            );
            assert!(ran.out.contains("--server URL") && ran.out.contains("Exit status"));
            assert!(ran.err.is_empty(), "{ran:?}");
        }
    }
    let ran = run(None, &["--help"], &[], "");
    assert!(ran.out.contains("bgtasks COMMAND [OPTIONS]"), "{ran:?}");
    for name in commands {
        assert!(ran.out.contains(name), "{name}: {ran:?}");
    }
}

#[test]
fn a_batch_prints_every_id_in_order() {
    let server = Server::start(&[]);
    let body = r#"[{"task_id": "one", "work_duration": "0s"},
                   {"task_id": "two", "work_duration": "0s"},
                   {"task_id": "three", "work_duration": "0s"}]"#;
    let ran = run(Some(&server), &["submit", "-"], &[], body);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let ids: Vec<&str> = ran.out.lines().collect();
    assert_eq!(ids.len(), 3, "{ran:?}");
    for (id, label) in ids.iter().zip(["one", "two", "three"]) {
        assert_eq!(server.task(id)["task_id"], label);
    }
    // With --wait: the ids, then each final status in the same order.
    let ran = run(Some(&server), &["submit", "--wait", "-"], &[], body);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let states: Vec<&str> = ran
        .out
        .lines()
        .filter_map(|l| l.strip_prefix("task_id:"))
        .map(str::trim)
        .collect();
    assert_eq!(states, ["one", "two", "three"], "{ran:?}");
}

#[test]
fn retry_prints_the_new_id() {
    let dir = TempDir::new("client-retry");
    let script = dir.script("fail.sh", "exit 1");
    let server = Server::start(&["--handler", &format!("fail={script}")]);
    let ran = client(
        &server,
        &["submit", "--kind", "fail", "--task-id", "again", "--wait"],
    );
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let old = ran.out.lines().next().unwrap();
    let out = ok(&server, &["retry", old]);
    let new = out.trim();
    assert_eq!(out, format!("{new}\n"));
    assert_ne!(new, old);
    let task = server.wait_done(new);
    assert_eq!(task["retry_of"], old);
    assert_eq!(task["task_id"], "again");
    // A task that succeeded is not retried.
    let done = ok(&server, &["submit", "--duration", "0s", "--wait"]);
    let ran = client(&server, &["retry", done.lines().next().unwrap()]);
    assert_eq!(ran.code, Some(4), "{ran:?}");
    assert!(ran.err.contains("(HTTP 409)"), "{ran:?}");
}
