//! SPEC §1: flags, environment variables, bad values, help and version.

mod common;

use common::{Server, TempDir, command};
use rustix::process::Signal;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;

/// Runs the binary to completion and returns (status, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = command(&[], args, env).output().expect("the binary runs");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[test]
fn help_and_version_print_to_stdout_and_exit_0() {
    for flag in ["-h", "--help"] {
        let (code, out, err) = run(&[flag], &[]);
        assert_eq!(code, Some(0));
        assert!(
            out.contains("Usage: bgtasks") && out.contains("--keep-finished"),
            "{out}"
        );
        assert!(err.is_empty(), "{err}");
    }
    for flag in ["-V", "--version"] {
        let (code, out, _) = run(&[flag], &[]);
        assert_eq!(code, Some(0));
        assert_eq!(out, format!("bgtasks {}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn bad_values_exit_2_with_one_clear_line_before_binding() {
    // A handler program that exists but may not be run (mode 644).
    let dir = TempDir::new("cli");
    let script = dir.path("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let not_executable = format!("thumb={}", script.display());
    // The address is taken, so a server that bound before checking its
    // flags would exit 1 instead of 2.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    /// Arguments, environment, and what the one line of stderr says.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--bogus"], &[], "unknown argument \"--bogus\""),
        (&["--workers"], &[], "--workers needs a value"),
        (
            &["--workers", "0"],
            &[],
            "--workers: expected a whole number from 1",
        ),
        (
            &["--workers", "ten"],
            &[],
            "--workers: expected a whole number",
        ),
        (&["--workers=-3"], &[], "--workers: expected a whole number"),
        (
            &["--buffer", "0"],
            &[],
            "--buffer: expected a whole number from 1",
        ),
        (
            &["--threads", "0"],
            &[],
            "--threads: expected a whole number from 1",
        ),
        (&["--keep-finished", "0"], &[], "--keep-finished: expected"),
        (&["--max-body", "0"], &[], "--max-body: expected"),
        (
            &["--max-connections", "0"],
            &[],
            "--max-connections: expected",
        ),
        (&["--retry-after", "-1"], &[], "--retry-after: expected"),
        (&["--grace", "-1s"], &[], "--grace: negative duration"),
        (&["--grace", "5"], &[], "--grace: missing unit"),
        (&["--grace", "5 s"], &[], "--grace: "),
        (
            &["--addr", "nonsense"],
            &[],
            "--addr: \"nonsense\" is not an address",
        ),
        (
            &["--log-level", "loud"],
            &[],
            "--log-level: \"loud\" is not one of",
        ),
        (&["--token", ""], &[], "--token: the token must be"),
        (
            &["--handler", "thumb=/nonexistent/thumbnail"],
            &[],
            "does not exist or is not an executable file",
        ),
        (
            &["--handler", not_executable.as_str()],
            &[],
            "does not exist or is not an executable file",
        ),
        (&["--handler", "thumb"], &[], "expected KIND=PROGRAM"),
        (
            &["--handler", "sleep=/bin/true"],
            &[],
            "the kind \"sleep\" is built in",
        ),
        (
            &["--handler", "a=/bin/true", "--handler", "a=/bin/false"],
            &[],
            "registered twice",
        ),
        (
            &["--rate", "api=10/s"],
            &[],
            "--rate \"api=10/s\": there is no queue \"api\"",
        ),
        (
            &["--rate", "default=0/s"],
            &[],
            "N must be a whole number from 1",
        ),
        (
            &["--rate", "default=1000001/h"],
            &[],
            "N must be a whole number from 1 to 1000000",
        ),
        (&["--rate", "default=5/d"], &[], "UNIT must be s, m or h"),
        (&["--rate", "default=5"], &[], "expected QUEUE=N/UNIT"),
        (
            &["--rate", "default=1/s", "--rate", "default=2/s"],
            &[],
            "the queue's rate is given twice",
        ),
        (
            &[],
            &[("BGTASKS_WORKERS", "0")],
            "BGTASKS_WORKERS: expected a whole number",
        ),
        (
            &[],
            &[("BGTASKS_BUFFER", "many")],
            "BGTASKS_BUFFER: expected a whole number",
        ),
        (
            &[],
            &[("BGTASKS_GRACE", "-2m")],
            "BGTASKS_GRACE: negative duration",
        ),
        (
            &[],
            &[("BGTASKS_ADDR", "localhost")],
            "BGTASKS_ADDR: \"localhost\" is not an address",
        ),
        (
            &[],
            &[("BGTASKS_TOKEN", "")],
            "BGTASKS_TOKEN: the token must be",
        ),
    ];
    for (args, env, expected) in cases {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend_from_slice(args);
        // A bad address is tested without the taken one, which would win.
        if args.first() == Some(&"--addr") || env.iter().any(|(n, _)| *n == "BGTASKS_ADDR") {
            all.drain(..2);
        }
        let (code, out, err) = run(&all, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(out.is_empty(), "{args:?}: stdout {out:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.starts_with("bgtasks: ") && err.contains(expected),
            "{args:?} {env:?}: {err:?}"
        );
    }
}

#[test]
fn start_up_errors_stay_on_one_line_whatever_they_quote() {
    // A regular file where the data directory should be, its name with a
    // newline in it: the server cannot use it and exits 1.
    let dir = TempDir::new("one-line");
    let file = dir.arg("data\ndir");
    std::fs::write(&file, "").unwrap();
    /// Arguments, the exit status, and what the one line of stderr says.
    type Case<'a> = (&'a [&'a str], i32, &'a str);
    let cases: &[Case] = &[
        (
            &["--schedule", "n=5/\n2 * * * * {}"],
            2,
            "has a step but no range: write \"5-59/\\n2\"",
        ),
        (
            &["--schedule", "n=9-1\n * * * * {}"],
            2,
            "minute \"1\\n\" is not a number",
        ),
        (&["--schedule", "n=@every 1\ns {}"], 2, "duration \"1\\ns\""),
        (
            &["--schedule", "a\nb=@every 1s {}"],
            2,
            "--schedule \"a\\nb\"",
        ),
        (
            &["--handler", "a\nb=/bin/true"],
            2,
            "--handler \"a\\nb=/bin/true\"",
        ),
        (
            &["--handler", "a=/no\nwhere"],
            2,
            "\"/no\\nwhere\" does not exist",
        ),
        (&["--queue", "a\nb=1"], 2, "--queue \"a\\nb=1\""),
        (&["--data-dir", &file], 1, "cannot use --data-dir"),
    ];
    for (args, status, expected) in cases {
        let mut all = vec!["--addr", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (code, _, err) = run(&all, &[]);
        assert_eq!(code, Some(*status), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.contains(expected), "{args:?}: {err:?}");
    }
}

#[test]
fn a_port_in_use_exits_1_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["--addr", &addr], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn environment_variables_are_read_and_flags_beat_them() {
    // BGTASKS_BUFFER=1 with one worker: one running, one queued, then 503
    // with the Retry-After of BGTASKS_RETRY_AFTER.
    let env = [
        ("BGTASKS_BUFFER", "1"),
        ("BGTASKS_WORKERS", "1"),
        ("BGTASKS_RETRY_AFTER", "7"),
    ];
    let server = Server::start_with_env(&[], &env);
    server.fill(1);
    let refused = server.post("/queue-task", r#"{"task_id": "x", "work_duration": "60s"}"#);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("7"));
    drop(server);

    // The same environment with --buffer 2: the flag wins.
    let server = Server::start_with_env(&["--buffer", "2", "--retry-after", "9"], &env);
    server.fill(2);
    let refused = server.post("/queue-task", r#"{"task_id": "x", "work_duration": "60s"}"#);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("9"));
    assert_eq!(
        server.metric("bgtasks_queue_capacity{queue=\"default\"}"),
        2.0
    );
    assert_eq!(server.metric("bgtasks_workers{queue=\"default\"}"), 1.0);
}

#[test]
fn log_level_warn_hides_info_lines() {
    let mut server = Server::start_with_env(&[], &[("RUST_LOG", "debug")]);
    server.submit("0s");
    server.wait_log("queued");
    drop(server);
    // With warn, even the listening line is gone: start on a port that
    // was free a moment ago, and wait until the server answers there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = Server::start_at(addr, &["--log-level", "warn"]);
    // Shutdown logs at info too: it must say nothing either.
    assert_eq!(server.stop(Signal::TERM).0, Some(0));
    assert_eq!(server.log(), "");
}

/// The flags `--help` lists, each with its environment variable and
/// default, read from its entry: a line `  --flag VALUE`, then lines
/// indented further.
fn help_flags(help: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let mut flags: Vec<(String, Vec<&str>)> = Vec::new();
    for line in help.lines() {
        if let Some(entry) = line.strip_prefix("  --") {
            let name = entry.split("  ").next().unwrap_or_default();
            flags.push((format!("--{}", name.trim()), vec![entry]));
        } else if line.starts_with("   ")
            && let Some((_, lines)) = flags.last_mut()
        {
            lines.push(line.trim());
        }
    }
    flags
        .into_iter()
        .filter(|(name, _)| name != "--help" && name != "--version")
        .map(|(name, lines)| {
            let fact = |key: &str| {
                lines
                    .iter()
                    .flat_map(|l| l.split(", "))
                    .find_map(|part| part.strip_prefix(key))
                    .map(str::to_string)
            };
            (name, fact("env "), fact("default "))
        })
        .collect()
}

/// The rows of the README's flag table: flag and value, variable, default.
fn readme_flags(readme: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let section = readme
        .split("\n## Flags\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a Flags section");
    // A `|` inside a cell is escaped, as in `on\|off`.
    let cell = |text: &str| {
        let text = text.trim();
        (text != "—").then(|| text.trim_matches('`').replace("\\|", "|"))
    };
    section
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
            let flag = cell(cells[0]).unwrap_or_default();
            (flag, cell(cells[1]), cell(cells[2]))
        })
        .collect()
}

#[test]
fn the_readme_flag_table_agrees_with_help() {
    let (code, help, _) = run(&["--help"], &[]);
    assert_eq!(code, Some(0));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let help = help_flags(&help);
    let table = readme_flags(&readme);
    assert!(help.len() >= 17, "{help:?}");
    assert_eq!(table, help, "the README's flag table and --help differ");
}

/// Reads the README.
fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable")
}

#[test]
fn the_readme_names_every_route_open_without_the_token() {
    let server = Server::start(&["--token", "s3cret"]);
    let paths = [
        "/",
        "/healthz",
        "/tasks",
        "/tasks/x",
        "/metrics",
        "/queues",
        "/schedules",
        "/openapi.json",
        "/nowhere",
    ];
    let open: BTreeSet<&str> = paths
        .into_iter()
        .filter(|path| server.get(path).status != 401)
        .collect();
    let readme = readme();
    let bullet = readme
        .split("- With `--token`, everything but ")
        .nth(1)
        .and_then(|rest| rest.split(" needs").next())
        .expect("the README says what needs the token");
    // The paths it names in backquotes.
    let named: BTreeSet<&str> = bullet
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.starts_with('/'))
        .collect();
    assert_eq!(named, open, "README: {bullet:?}");
}

#[test]
fn what_the_readme_examples_make_in_the_clone_is_ignored_by_git() {
    let readme = readme();
    let ignored = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore"))
        .expect(".gitignore is readable");
    // Directories the examples create in the current one: `--data-dir
    // ./DIR` and `mkdir -p DIR`.
    let made: Vec<&str> = readme
        .lines()
        .flat_map(|line| {
            let data = line.split("--data-dir ./").nth(1);
            let mkdir = line.strip_prefix("mkdir -p ");
            [data, mkdir].into_iter().flatten()
        })
        .filter_map(|rest| rest.split([' ', '/']).next())
        .collect();
    assert!(
        made.contains(&"bgtasks-data") && made.contains(&"handlers"),
        "{made:?}"
    );
    for dir in made {
        let entry = format!("/{dir}/");
        assert!(
            ignored.lines().any(|l| l == entry),
            "{entry} is not in .gitignore"
        );
    }
}
/// Whether `text` starts with an RFC 3339 UTC time with milliseconds and
/// a space, `2026-12-07T20:33:01.123Z `.
fn starts_with_time(text: &str) -> bool {
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ ";
    text.len() >= shape.len()
        && text.bytes().zip(shape).all(|(b, &s)| match s {
            b'd' => b.is_ascii_digit(),
            s => b == s,
        })
}

#[test]
fn log_lines_start_with_the_time_unless_journald_stores_it_and_the_flag_beats_both() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let journald = ("JOURNAL_STREAM", "8:1234");
    /// Arguments, environment, and whether the lines carry the time.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        (&[], &[], true),
        (&[], &[journald], false),
        (&["--log-timestamps", "on"], &[journald], true),
        (&[], &[journald, ("BGTASKS_LOG_TIMESTAMPS", "on")], true),
        (&[], &[("BGTASKS_LOG_TIMESTAMPS", "off")], false),
        (
            &["--log-timestamps=off"],
            &[("BGTASKS_LOG_TIMESTAMPS", "on")],
            false,
        ),
    ];
    for &(args, env, timed) in cases {
        let before = now();
        let mut server = Server::start_with_env(args, env);
        let line = server.wait_log("listening on http://");
        let after = now();
        assert_eq!(server.stop(Signal::TERM).0, Some(0));
        let log = server.log();
        for line in log.lines() {
            assert_eq!(starts_with_time(line), timed, "{args:?} {env:?}: {log}");
        }
        let rest = match timed {
            true => {
                let time = serde_json::Value::from(&line[..24]);
                let at = common::epoch_millis(&time);
                assert!(
                    before - 1 <= at && at <= after,
                    "{line} not within the start"
                );
                &line[25..]
            }
            false => &line[..],
        };
        assert!(
            rest.starts_with("INFO  [bgtasks] listening on http://127.0.0.1:"),
            "{line:?}"
        );
    }
}

#[test]
fn debug_lines_name_states_as_the_api_does() {
    let dir = TempDir::new("debug-names");
    let flaky = dir.script("flaky", "exit 3");
    let mut server = Server::start(&[
        "--log-level",
        "debug",
        "--handler",
        &format!("flaky={flaky}"),
    ]);
    let ok = server.submit("0s");
    server.wait_state(&ok, "succeeded");
    let body = r#"{"kind": "flaky", "max_attempts": 2}"#;
    let failing = server.post("/tasks", body).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_log(&format!("task {ok} attempt 1 ended: succeeded"));
    server.wait_log(&format!(
        "task {failing} attempt 1 ended: failed, to be retried"
    ));
    server.wait_state(&failing, "failed");
    server.wait_log(&format!("task {failing} attempt 2 ended: failed"));
    let running = server.submit("60s");
    server.wait_state(&running, "running");
    assert_eq!(server.cancel(&running).status, 200);
    server.wait_log(&format!("task {running} attempt 1 ended: cancelled"));
    let log = server.log();
    for debug in ["Succeeded(", "Failed(", "Cancelled", "Interrupted"] {
        assert!(!log.contains(debug), "{debug} in {log}");
    }
}

#[test]
fn a_log_pipe_whose_reader_is_gone_does_not_stop_the_server() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = command(
        &["--addr", &addr.to_string()],
        &["--log-level", "debug"],
        &[],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Nobody reads the server's stderr any more: every log line it writes
    // from now on fails with EPIPE.
    drop(child.stderr.take());
    let ask = |request: &str| {
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
        stream.write_all(request.as_bytes()).ok()?;
        common::read_response(&mut stream)
    };
    let health = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    common::eventually("the server to answer", || ask(health));
    // Each task logs "queued", "started" and "ended" at debug.
    let submit = common::post_request("/tasks", &[], r#"{"work_duration": "0s"}"#);
    for _ in 0..3 {
        assert_eq!(ask(&submit).map(|r| r.status), Some(202));
    }
    assert_eq!(ask(health).map(|r| r.status), Some(200));
    assert!(child.try_wait().unwrap().is_none(), "the server ended");
    let _ = child.kill();
    let _ = child.wait();
}
