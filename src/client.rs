//! The client of SPEC §16: `bgtasks COMMAND …` talks to a running server,
//! for scripts and people at a terminal who have no curl or jq.
//!
//! ```text
//! bgtasks submit --wait --task-id nightly --duration 5s && next-step
//! bgtasks list --state running
//! bgtasks events --queue backup
//! ```
//!
//! It owns the client's command line (the commands, their options, `--help`
//! and usage errors) and what each command does: the requests it makes,
//! the long polls of a wait, the following of an event stream, and which
//! exit status of §16 the outcome is. It touches none of the server's
//! state. Two modules serve it: [`crate::client_http`] owns the exchange
//! with the server (one HTTP/1.1 request per connection, every wait
//! bounded), [`crate::client_output`] what a command shows (answers for
//! people by default, the server's JSON as it came with `--json`, a line
//! on stderr when it ends early, its exit status). From the server it
//! borrows only pure pieces: [`percent_encode`], [`parse_duration`],
//! [`parse_token`] and the JSON string writer.
//!
//! # Size
//!
//! The client adds 57 KiB to the stripped release binary (58,432 bytes;
//! its issue allows 60). Each of these was measured, by building with and
//! without it, and is worth keeping in mind when changing its three
//! modules: writing to a held `StdoutLock` inlines its line buffering at
//! every write (1.6 KiB more than writing to `Stdout`); a `str` pattern
//! pulls in the two-way searcher the server does not use; each pointer in
//! a table of structs is a relocation, so tables here are text; serde's
//! visitor for an ordered map cost more than the client's own scan of a
//! JSON object; and `#[inline(never)]` on the small helpers called from
//! many places saves more than it costs (taking every one away adds
//! 3.8 KiB).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::client_http::{ANSWER_TIMEOUT, Server};
use crate::client_output::{
    Exit, Members, event_line, exit, fail, members, say, unexpected, write_json, write_members,
    write_table,
};
use crate::config::{MAX_MAX_BODY, parse_token};
use crate::json::write_json_str;
use crate::routes::{MAX_WAIT, percent_encode};
use crate::time::parse_duration;

/// The server a command talks to when neither `--server` nor
/// `BGTASKS_SERVER` names one: where a server listens by default.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

/// The first pause before asking again, after a `502`, `503` or `504` (a
/// server or its proxy between lives) or an answer that came early with
/// nothing changed (a server shutting down answers long polls at once):
/// short, so that a server back up is seen at once.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause between such tries: a `wait` asks a server that is
/// not ready at most every 2 s, which costs it nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The usage of the client as a whole (after `usage: `), also shown by the
/// server's `--help`.
pub(crate) const USAGE: &str = "bgtasks COMMAND [OPTIONS]  a client of a running server; \
     COMMAND is submit, status, wait, list, cancel, retry, queues, pause, resume or \
     events (bgtasks COMMAND --help)";

/// A client command: its name, its help, its options, and how it is built.
struct Spec {
    /// The word after `bgtasks`.
    name: &'static str,
    /// Its usage (what follows `usage: `), then a blank line and what it
    /// does, for `--help`.
    help: &'static str,
    /// Its own options, space-separated. Each takes a value, as the next
    /// argument or after `=`, but `--json`, which takes none, and
    /// `--wait`, which takes one only after `=` (`--wait=5m`).
    options: &'static str,
    /// Makes the command from what the command line gave.
    build: fn(&Given) -> Result<Command, String>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Spec {
    /// Returns its usage: the first line of its help.
    fn usage(&self) -> &'static str {
        self.help
            .split_once('\n')
            .map_or(self.help, |(usage, _)| usage)
    }
}

/// The options every command takes, as in [`Spec::options`].
const COMMON_OPTIONS: &str = "--server --token --json";

/// The end of every command's `--help`.
const COMMON_HELP: &str = "
Every command takes --server URL (env BGTASKS_SERVER, default
http://127.0.0.1:8000), --token TOKEN (env BGTASKS_TOKEN), --json (print
the server's JSON as it came) and -h, --help.
Exit status: 0 done; 1 the task failed or was cancelled; 2 bad usage;
3 the server cannot be reached; 4 it refused; 5 the wait ran out.
";

/// Every command, in the order the usage names them.
const COMMANDS: &[Spec] = &[
    Spec {
        name: "submit",
        help: "bgtasks submit [--wait[=DURATION]] [--json] (BODY | - | --task-id L --duration D \
[--kind K] [--payload JSON] [--queue Q] [--delay D] [--after ID]…)

Queues a task and prints its id. BODY is a JSON object, or an array of them
(one id a line, in order); - reads it from stdin; or the options build one:
task_id, work_duration, kind, payload, queue, delay, after (repeatable).
--wait then waits for the task to end, at most DURATION, and prints its status.
",
        options: "--task-id --duration --kind --payload --queue --delay --after --wait",
        build: build_submit,
    },
    Spec {
        name: "status",
        help: "bgtasks status ID\n\nPrints the status of the task ID, one member a line.\n",
        options: "",
        build: |given| ask(given, "GET", "/tasks/ID", Shape::Members),
    },
    Spec {
        name: "wait",
        help: "bgtasks wait ID [--timeout DURATION]

Waits for the task ID to end, at most DURATION, and prints its final status.
",
        options: "--timeout",
        build: |given| {
            let limit = given.duration("--timeout")?;
            Ok(Command::Wait(given.one_word("ID")?.to_string(), limit))
        },
    },
    Spec {
        name: "list",
        help: "bgtasks list [--state S] [--queue Q] [--limit N]

Lists tasks, newest first (at most N; the server's default is 100).
",
        options: "--state --queue --limit",
        build: build_list,
    },
    Spec {
        name: "cancel",
        help: "bgtasks cancel ID\n\nCancels the task ID and prints its status.\n",
        options: "",
        build: |given| ask(given, "POST", "/tasks/ID/cancel", Shape::Members),
    },
    Spec {
        name: "retry",
        help: "bgtasks retry ID\n\nSubmits the failed or cancelled task ID again, and \
               prints the new task's id.\n",
        options: "",
        build: |given| ask(given, "POST", "/tasks/ID/retry", Shape::Ids),
    },
    Spec {
        name: "queues",
        help: "bgtasks queues\n\nLists the queues as a table with one header line.\n",
        options: "",
        build: |given| ask(given, "GET", "/queues", Shape::Table("queues", &[])),
    },
    Spec {
        name: "pause",
        help: "bgtasks pause QUEUE\n\nPauses QUEUE: it still accepts tasks but starts none. \
               Prints the queue.\n",
        options: "",
        build: |given| ask(given, "POST", "/queues/QUEUE/pause", Shape::Members),
    },
    Spec {
        name: "resume",
        help: "bgtasks resume QUEUE\n\nResumes a paused QUEUE. Prints the queue.\n",
        options: "",
        build: |given| ask(given, "POST", "/queues/QUEUE/resume", Shape::Members),
    },
    Spec {
        name: "events",
        help: "bgtasks events [--id ID] [--task-id L] [--kind K] [--queue Q]

Prints the server's events (task events of this id, label, kind or queue),
one a line as it arrives, until the server shuts down.
",
        options: "--id --task-id --kind --queue",
        build: |given| {
            given.no_words()?;
            Ok(Command::Events(given.query()))
        },
    },
];

/// The columns of `list`: the members that tell tasks apart at a glance,
/// the label last because it may hold spaces.
const LIST_COLUMNS: &[&str] = &[
    "id",
    "state",
    "queue",
    "kind",
    "attempt",
    "created_at",
    "task_id",
];

/// Runs the client when the first argument is a word rather than a flag,
/// and returns its exit status; `None` leaves the command line to the
/// server, which takes flags only.
pub(crate) fn dispatch() -> Option<i32> {
    let first = std::env::args_os().nth(1)?;
    if first.as_encoded_bytes().starts_with(b"-") {
        return None;
    }
    Some(run(std::env::args_os().skip(1), &|name| {
        std::env::var(name).ok()
    }))
}

/// Explains an argument the server does not know but the client does: a
/// command among the server's flags (`bgtasks --workers 4 submit …`),
/// which must never start a server silently.
pub(crate) fn misplaced(arg: &str) -> Option<String> {
    COMMANDS.iter().any(|c| c.name == arg).then(|| {
        format!(
            "{arg:?} is a client command: it comes first (bgtasks {arg} …), and the \
             server's flags do not go with it"
        )
    })
}

/// Finds `word` in a table written as text, words separated by spaces.
#[inline(never)]
fn listed(table: &'static str, word: &str) -> Option<&'static str> {
    table.split(' ').find(|w| *w == word)
}

/// Returns the member of a submission, or the query parameter, that an
/// option of the command line gives.
fn member(option: &'static str) -> &'static str {
    match option {
        "--duration" => "work_duration",
        "--task-id" => "task_id",
        _ => option.get(2..).unwrap_or(option),
    }
}

/// Runs a client command line (`args` start with the command) and returns
/// the exit status; `env` looks a variable up.
fn run(args: impl Iterator<Item = OsString>, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let mut out = io::stdout();
    let done = match parse(args, env) {
        Err((message, spec)) => {
            let usage = spec.map_or(USAGE, Spec::usage);
            Err(fail(exit::USAGE, format_args!("{message}\nusage: {usage}")))
        }
        Ok(Invocation::Help(spec)) => {
            let (usage, rest) = spec.help.split_at(spec.usage().len());
            write!(out, "usage: {usage}{rest}{COMMON_HELP}").map_err(Exit::from)
        }
        Ok(Invocation::Run(job)) => execute(&job.command, &job.server, job.json, &mut out),
    };
    match done.and_then(|()| Ok(out.flush()?)) {
        Ok(()) => exit::DONE,
        Err(Exit(status)) => status,
    }
}

/// A usage error: the message, and the command whose usage line follows
/// it (`None`: the client's own).
type Usage = (String, Option<&'static Spec>);

/// What a command line asks of the client.
#[derive(Debug)]
enum Invocation {
    /// Print a command's help.
    Help(&'static Spec),
    /// Run a command.
    Run(Job),
}

/// A command to run, and where.
#[derive(Debug)]
struct Job {
    /// What to do.
    command: Command,
    /// The server to ask.
    server: Server,
    /// Whether to print the server's JSON as it came.
    json: bool,
}

/// What a command does, checked and ready to send.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// `submit`: the body (`None`: read it from stdin), and how long
    /// `--wait` waits (`Some(None)`: no limit).
    Submit(Option<Vec<u8>>, Option<Option<Duration>>),
    /// `wait`: the task and the limit.
    Wait(String, Option<Duration>),
    /// `events`: the query string of its filters.
    Events(String),
    /// Every other command: one request, its answer printed in a shape.
    Ask(&'static str, String, Shape),
}

/// How an answer is shown to people.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    /// An object, one member a line.
    Members,
    /// The ids of new tasks, one a line.
    Ids,
    /// The array in this member, as a table of these columns (none: the
    /// members of the first row).
    Table(&'static str, &'static [&'static str]),
}

/// What a command line gave after its command.
#[derive(Debug, Default)]
struct Given {
    /// The words that are not options, in order.
    words: Vec<String>,
    /// Each option given, by its name, and its value (`None` for a switch),
    /// in order.
    options: Vec<(&'static str, Option<String>)>,
    /// Whether `-h` or `--help` was given.
    help: bool,
}

impl Given {
    /// Returns how an option was given last: `Some(None)` without a value.
    #[inline(never)]
    fn last(&self, name: &str) -> Option<Option<&str>> {
        let (_, value) = self.options.iter().rev().find(|(n, _)| *n == name)?;
        Some(value.as_deref())
    }

    /// Returns the last value given to an option.
    fn value(&self, name: &str) -> Option<&str> {
        self.last(name).flatten()
    }

    /// Parses an option's duration, if given.
    fn duration(&self, name: &str) -> Result<Option<Duration>, String> {
        match self.value(name) {
            Some(text) => Ok(Some(
                parse_duration(text).map_err(|e| format!("{name}: {e}"))?,
            )),
            None => Ok(None),
        }
    }

    /// Returns the one word the command takes (`ID`, `QUEUE`).
    fn one_word(&self, what: &str) -> Result<&str, String> {
        match self.words.as_slice() {
            [word] => Ok(word),
            [] => Err(format!("{what} is missing")),
            [_, extra, ..] => Err(format!("unexpected argument {extra:?}")),
        }
    }

    /// Checks that the command was given no words.
    fn no_words(&self) -> Result<(), String> {
        match self.words.first() {
            Some(word) => Err(format!("unexpected argument {word:?}")),
            None => Ok(()),
        }
    }

    /// Returns the options given that say something to the server — not
    /// where it is, nor how to print or wait — each with its last value.
    #[inline(never)]
    fn settings(&self) -> Vec<(&'static str, &str)> {
        let mut settings = Vec::new();
        for (i, (name, value)) in self.options.iter().enumerate() {
            let later = self.options[i + 1..].iter().any(|(n, _)| n == name);
            let local = matches!(*name, "--server" | "--token" | "--json" | "--wait");
            if !later && !local {
                settings.push((*name, value.as_deref().unwrap_or_default()));
            }
        }
        settings
    }

    /// Makes a query string (`?a=1&b=2`, or empty) of the settings given.
    fn query(&self) -> String {
        let mut text = String::new();
        for (option, value) in self.settings() {
            let sep = if text.is_empty() { '?' } else { '&' };
            let _ = write!(text, "{sep}{}={}", member(option), encoded(value));
        }
        text
    }
}

/// Parses a client command line: the command, then its options and words
/// in any order; then the server and the token.
fn parse(
    args: impl Iterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Invocation, Usage> {
    let mut words = Vec::new();
    for arg in args {
        let arg = arg
            .into_string()
            .map_err(|_| ("an argument is not valid UTF-8".to_string(), None))?;
        words.push(arg);
    }
    let mut words = words.into_iter();
    let name = words.next().unwrap_or_default();
    let Some(spec) = COMMANDS.iter().find(|c| c.name == name) else {
        return Err((format!("unknown command {name:?}"), None));
    };
    let usage = |message: String| (message, Some(spec));
    let given = split(spec, words).map_err(usage)?;
    if given.help {
        return Ok(Invocation::Help(spec));
    }
    let command = (spec.build)(&given).map_err(usage)?;
    let token = match setting(&given, env, "--token", "BGTASKS_TOKEN") {
        Some(token) => Some(parse_token(&token).map_err(|e| usage(format!("--token: {e}")))?),
        None => None,
    };
    let url = setting(&given, env, "--server", "BGTASKS_SERVER");
    let server = Server::parse(url.as_deref().unwrap_or(DEFAULT_SERVER), token).map_err(usage)?;
    let json = given.last("--json").is_some();
    Ok(Invocation::Run(Job {
        command,
        server,
        json,
    }))
}

/// Returns a setting: its flag's value, else its environment variable's
/// (a flag beats its variable).
#[inline(never)]
fn setting(
    given: &Given,
    env: &dyn Fn(&str) -> Option<String>,
    flag: &str,
    var: &str,
) -> Option<String> {
    given.value(flag).map(str::to_string).or_else(|| env(var))
}

/// Sorts a command's arguments into options and words: options may come
/// anywhere, and `-` alone is a word (stdin).
fn split(spec: &Spec, mut args: impl Iterator<Item = String>) -> Result<Given, String> {
    let mut given = Given::default();
    while let Some(arg) = args.next() {
        if arg == "-" || !arg.starts_with('-') {
            given.words.push(arg);
            continue;
        }
        if arg == "-h" || arg == "--help" {
            given.help = true;
            return Ok(given);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let Some(name) = listed(spec.options, name).or_else(|| listed(COMMON_OPTIONS, name)) else {
            return Err(format!("unknown option {name:?} for {}", spec.name));
        };
        let value = match (name, inline) {
            ("--json", Some(_)) => return Err(format!("{name} takes no value")),
            ("--json" | "--wait", inline) => inline,
            (_, None) => Some(args.next().ok_or_else(|| format!("{name} needs a value"))?),
            (_, inline) => inline,
        };
        given.options.push((name, value));
    }
    Ok(given)
}

/// Makes a command of one request to `path`, in which the word the
/// command takes (`ID` or `QUEUE`, as its usage calls it) stands for that
/// word; a path without one takes no word.
#[inline(never)]
fn ask(given: &Given, method: &'static str, path: &str, shape: Shape) -> Result<Command, String> {
    let slot = path.find(|c: char| c.is_ascii_uppercase());
    let path = match slot {
        None => given.no_words().map(|()| path.to_string())?,
        Some(at) => {
            let (prefix, rest) = path.split_at(at);
            let (what, suffix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!("{prefix}{}{suffix}", encoded(given.one_word(what)?))
        }
    };
    Ok(Command::Ask(method, path, shape))
}

/// Returns `text` percent-encoded for a path segment or a query value.
fn encoded(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    percent_encode(&mut out, text.as_bytes());
    // Percent-encoding leaves only ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Builds `list`: its filters, and a limit that is a positive number.
fn build_list(given: &Given) -> Result<Command, String> {
    given.no_words()?;
    if let Some(limit) = given.value("--limit")
        && (limit.len() > 9
            || !limit.bytes().all(|b| b.is_ascii_digit())
            || limit.trim_start_matches('0').is_empty())
    {
        return Err(format!(
            "--limit: expected a positive whole number, got {limit:?}"
        ));
    }
    let path = "/tasks".to_string() + &given.query();
    Ok(Command::Ask(
        "GET",
        path,
        Shape::Table("tasks", LIST_COLUMNS),
    ))
}

/// Builds `submit`: its body — given, from stdin, or built from options —
/// and its `--wait`.
fn build_submit(given: &Given) -> Result<Command, String> {
    let wait = match given.last("--wait") {
        Some(_) => Some(given.duration("--wait")?),
        None => None,
    };
    let built = !given.settings().is_empty();
    let body = match (given.words.as_slice(), built) {
        ([], true) => Some(build_body(given)?),
        ([word], false) if word == "-" => None,
        ([word], false) => {
            check_body(word.as_bytes())?;
            Some(word.clone().into_bytes())
        }
        ([], false) => return Err("submit needs a BODY, - (stdin) or --duration".into()),
        ([_], true) => return Err("give a BODY or the options that build one, not both".into()),
        ([_, extra, ..], _) => return Err(format!("unexpected argument {extra:?}")),
    };
    Ok(Command::Submit(body, wait))
}

/// Checks that a body is a JSON object or array — the server checks the
/// rest — so that a stray word (`--wait 5s` for `--wait=5s`) is a usage
/// error, not a request.
fn check_body(body: &[u8]) -> Result<(), String> {
    match body.trim_ascii_start().first() {
        Some(b'{' | b'[') => Ok(()),
        _ => Err(
            "BODY must be a JSON object or an array of them (a limit for --wait \
                  is written --wait=DURATION)"
                .into(),
        ),
    }
}

/// Builds a submission from `submit`'s options: their values as JSON
/// strings, the payload as the JSON it is, the ids of `--after` as an array.
fn build_body(given: &Given) -> Result<Vec<u8>, String> {
    if given.value("--duration").is_none() && given.value("--kind").is_none() {
        return Err("--duration is needed for the built-in sleep kind (or give a --kind)".into());
    }
    given.duration("--duration")?;
    given.duration("--delay")?;
    let mut out = Vec::new();
    for (option, value) in given.settings() {
        out.push(if out.is_empty() { b'{' } else { b',' });
        write_json_str(&mut out, member(option));
        out.push(b':');
        match option {
            "--payload" if serde_json::from_str::<&RawValue>(value).is_err() => {
                return Err(format!("--payload: {value:?} is not JSON"));
            }
            "--payload" => out.extend_from_slice(value.as_bytes()),
            "--after" => {
                // Every --after, in order.
                let ids = given.options.iter().filter(|(n, _)| *n == option);
                for (i, (_, id)) in ids.enumerate() {
                    out.push(if i == 0 { b'[' } else { b',' });
                    write_json_str(&mut out, id.as_deref().unwrap_or_default());
                }
                out.push(b']');
            }
            _ => write_json_str(&mut out, value),
        }
    }
    out.push(b'}');
    Ok(out)
}

// ---- Running a command ----

/// Runs a command against the server, writing what it prints to `out`.
fn execute(
    command: &Command,
    server: &Server,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Exit> {
    match command {
        Command::Ask(method, path, shape) => {
            let answer = server.ask(method, path, b"", ANSWER_TIMEOUT)?;
            let body = answer.accepted()?;
            match json {
                true => write_json(out, body),
                false => show(out, shape, body),
            }
        }
        Command::Submit(body, wait) => submit(server, body.as_deref(), *wait, json, out),
        Command::Wait(id, limit) => {
            let deadline = limit.map(|l| Instant::now() + l);
            let state = wait_for(server, id, deadline, json, out)?;
            ended_well(id, &state)
        }
        Command::Events(query) => loop {
            let path = format!("/events{query}");
            match follow(server, &path, json, out)? {
                "shutdown" => {
                    say(format_args!(
                        "the server is shutting down; the event stream has ended"
                    ));
                    return Ok(());
                }
                _ => say(format_args!(
                    "fell behind the server's event stream (lagged), and missed events; \
                     reconnecting"
                )),
            }
        },
    }
}

/// Prints an answer for people, in its shape.
fn show(out: &mut impl Write, shape: &Shape, body: &[u8]) -> Result<(), Exit> {
    let object = members(body)?;
    match shape {
        Shape::Members => write_members(out, &object)?,
        Shape::Ids => drop(write_ids(out, body)?),
        Shape::Table(member, columns) => {
            let rows = object
                .get(member)
                .and_then(Members::list)
                .ok_or_else(|| unexpected("no list in the answer"))?;
            let first: Vec<&str>;
            let columns = match (columns, rows.first()) {
                ([], Some(row)) => {
                    first = row.names();
                    &first[..]
                }
                _ => columns,
            };
            write_table(out, &rows, columns)?;
        }
    }
    Ok(())
}

/// Prints the ids of an answer to a submission, one a line; returns them.
fn write_ids(out: &mut impl Write, body: &[u8]) -> Result<Vec<String>, Exit> {
    let ids = accepted_ids(body).ok_or_else(|| unexpected("no id in the answer"))?;
    for id in &ids {
        writeln!(out, "{id}")?;
    }
    Ok(ids)
}

/// Returns the ids an answer to a submission gives, in order: the `id`
/// of one task, or that of each task of a batch (SPEC §15).
fn accepted_ids(body: &[u8]) -> Option<Vec<String>> {
    let object = members(body).ok()?;
    if let Some(id) = object.string("id") {
        return Some(vec![id]);
    }
    let tasks = Members::list(object.get("tasks")?)?;
    let mut ids = Vec::new();
    for task in &tasks {
        ids.push(task.string("id")?);
    }
    Some(ids)
}

/// Submits a body, prints the new ids and, with `--wait`, waits for each
/// task in turn and prints its final status.
fn submit(
    server: &Server,
    body: Option<&[u8]>,
    wait: Option<Option<Duration>>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Exit> {
    let stdin;
    let body = match body {
        Some(body) => body,
        None => {
            stdin = read_stdin()?;
            &stdin
        }
    };
    let answer = server.ask("POST", "/tasks", body, ANSWER_TIMEOUT)?;
    let body = answer.accepted()?;
    let ids = match json {
        true => accepted_ids(body).ok_or_else(|| unexpected("no id in the answer")),
        false => write_ids(out, body),
    }?;
    if json {
        write_json(out, body)?;
    }
    out.flush()?;
    let Some(limit) = wait else {
        return Ok(());
    };
    let deadline = limit.map(|l| Instant::now() + l);
    let mut outcome = Ok(());
    for (i, id) in ids.iter().enumerate() {
        if i > 0 && !json {
            writeln!(out)?;
        }
        let state = wait_for(server, id, deadline, json, out)?;
        outcome = outcome.and(ended_well(id, &state));
    }
    outcome
}

/// Reads a body from stdin: at most what any server accepts.
fn read_stdin() -> Result<Vec<u8>, Exit> {
    // A File of its own on fd 0: std's Stdin would bring its buffer and
    // lock for one read to the end.
    use std::os::fd::AsFd;
    let mut stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from);
    let mut body = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let why = loop {
        match stdin.as_mut().map(|s| s.read(&mut chunk)) {
            Ok(Ok(0)) if check_body(&body).is_ok() => return Ok(body),
            Ok(Ok(0)) => break "is not a JSON object or array",
            Ok(Ok(n)) if body.len() + n <= MAX_MAX_BODY => body.extend_from_slice(&chunk[..n]),
            Ok(Ok(_)) => break "is larger than any server accepts",
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => break "cannot be read",
        }
    };
    Err(fail(exit::USAGE, format_args!("the body on stdin {why}")))
}

/// Turns a task's final state into the command's outcome.
#[inline(never)]
fn ended_well(id: &str, state: &str) -> Result<(), Exit> {
    let how = match state {
        "succeeded" => return Ok(()),
        "cancelled" => "was cancelled",
        _ => state,
    };
    Err(fail(exit::TASK_ENDED, format_args!("the task {id} {how}")))
}

/// What `wait` does after an answer.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The task has ended: print its status.
    Ended,
    /// Ask again at once.
    Ask,
    /// Ask again after a pause: the server (or a proxy before it) is
    /// between lives, or answered early with nothing changed, as a server
    /// that is shutting down does.
    Pause,
    /// Stop: the server refused.
    Refuse,
}

/// Decides what `wait` does after an answer: its status, the task's state
/// in it, the state the last answer had, and whether it came before the
/// long poll's time was up.
fn next_step(status: u16, state: Option<&str>, seen: Option<&str>, early: bool) -> Next {
    match (status, state) {
        (200, Some("succeeded" | "failed" | "cancelled")) => Next::Ended,
        (200, Some(state)) if early && seen == Some(state) => Next::Pause,
        (200, Some(_)) => Next::Ask,
        (502..=504, _) => Next::Pause,
        _ => Next::Refuse,
    }
}

/// Waits with long polls until the task `id` ends, or until `deadline`;
/// prints its final status and returns its final state.
fn wait_for(
    server: &Server,
    id: &str,
    deadline: Option<Instant>,
    json: bool,
    out: &mut impl Write,
) -> Result<String, Exit> {
    let path = format!("/tasks/{}?wait=", encoded(id));
    let mut seen: Option<String> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = deadline.map_or(MAX_WAIT, |d| d.saturating_duration_since(Instant::now()));
        let wait = left.min(MAX_WAIT);
        let asked = Instant::now();
        let poll = format!("{path}{}ms", wait.as_micros().div_ceil(1000));
        let answer = server.ask("GET", &poll, b"", ANSWER_TIMEOUT + wait)?;
        let status = match answer.status {
            200 => Some(members(&answer.body)?),
            _ => None,
        };
        let state = status.as_ref().and_then(|s| s.string("state"));
        let early = asked.elapsed() < wait;
        match next_step(answer.status, state.as_deref(), seen.as_deref(), early) {
            Next::Ended => {
                match (json, &status) {
                    (false, Some(status)) => write_members(out, status)?,
                    _ => write_json(out, &answer.body)?,
                }
                return Ok(state.unwrap_or_default());
            }
            Next::Refuse if answer.status == 200 => return Err(unexpected("no state")),
            Next::Refuse => return Err(answer.refused()),
            Next::Ask => backoff = FIRST_BACKOFF,
            Next::Pause => {
                if answer.status != 200 && backoff == FIRST_BACKOFF {
                    say(format_args!(
                        "the server answered HTTP {}; asking again",
                        answer.status
                    ));
                }
                std::thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if state.is_some() {
            seen = state;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let state = seen.unwrap_or_default();
            return Err(fail(
                exit::OUT_OF_TIME,
                format_args!("the task {id} is still {state}: the wait ran out"),
            ));
        }
    }
}

/// Reads the event stream at `path` and prints each event as it arrives,
/// Reads the event stream at `path` and prints each event as it arrives,
/// until the server ends the stream with `shutdown` or `lagged`; returns
/// which.
fn follow(
    server: &Server,
    path: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<&'static str, Exit> {
    let mut events = server.events(path)?;
    loop {
        let (name, data) = events.read_event()?;
        match name.as_str() {
            "shutdown" => return Ok("shutdown"),
            "lagged" => return Ok("lagged"),
            _ if json => writeln!(out, "{data}")?,
            _ => writeln!(out, "{}", event_line(&name, &data))?,
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a command line as the client would, with no environment.
    fn parse_args(args: &[&str]) -> Result<Invocation, Usage> {
        parse_env(args, &[])
    }

    /// Parses a command line with these environment variables.
    fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, Usage> {
        let lookup = |name: &str| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        parse(args.iter().map(OsString::from), &lookup)
    }

    /// Parses a command line that must run, and returns its command.
    fn command_of(args: &[&str]) -> Command {
        match parse_args(args) {
            Ok(Invocation::Run(job)) => job.command,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// Parses a command line that must be a usage error; returns its message.
    fn usage_error(args: &[&str]) -> String {
        match parse_args(args) {
            Err((message, _)) => message,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn commands_become_requests_with_options_anywhere() {
        let get = |path: &str, shape| Command::Ask("GET", path.to_string(), shape);
        let post = |path: &str, shape| Command::Ask("POST", path.to_string(), shape);
        let cases: &[(&[&str], Command)] = &[
            (&["status", "abc"], get("/tasks/abc", Shape::Members)),
            (
                &["status", "--json", "abc"],
                get("/tasks/abc", Shape::Members),
            ),
            (
                &["status", "a/b?c"],
                get("/tasks/a%2Fb%3Fc", Shape::Members),
            ),
            (
                &["cancel", "abc"],
                post("/tasks/abc/cancel", Shape::Members),
            ),
            (&["retry", "abc"], post("/tasks/abc/retry", Shape::Ids)),
            (&["pause", "q"], post("/queues/q/pause", Shape::Members)),
            (&["resume", "q"], post("/queues/q/resume", Shape::Members)),
            (&["queues"], get("/queues", Shape::Table("queues", &[]))),
            (
                &["list", "--limit", "5", "--state=failed", "--queue", "a b"],
                get(
                    "/tasks?limit=5&state=failed&queue=a%20b",
                    Shape::Table("tasks", LIST_COLUMNS),
                ),
            ),
            (
                &["wait", "abc", "--timeout", "1m30s"],
                Command::Wait("abc".into(), Some(Duration::from_secs(90))),
            ),
            (&["wait", "abc"], Command::Wait("abc".into(), None)),
            (
                &["events", "--queue", "q", "--id=x", "--task-id", "a&b"],
                Command::Events("?queue=q&id=x&task_id=a%26b".into()),
            ),
            (&["events"], Command::Events(String::new())),
            (
                &["submit", "{\"work_duration\": \"1s\"}"],
                Command::Submit(Some(b"{\"work_duration\": \"1s\"}".to_vec()), None),
            ),
            (
                &["submit", "-", "--wait"],
                Command::Submit(None, Some(None)),
            ),
            (
                &["submit", "--wait=2s", " [{}]"],
                Command::Submit(Some(b" [{}]".to_vec()), Some(Some(Duration::from_secs(2)))),
            ),
        ];
        for (args, command) in cases {
            assert_eq!(&command_of(args), command, "{args:?}");
        }
    }

    #[test]
    fn options_build_a_submission() {
        let args = [
            "submit",
            "--task-id",
            "say \"hi\"",
            "--after",
            "a1",
            "--duration",
            "5s",
            "--payload",
            " {\"n\": [1, 2]} ",
            "--queue=q",
            "--delay",
            "1m",
            "--after",
            "b2",
        ];
        let expected = r#"{"task_id":"say \"hi\"","work_duration":"5s","payload": {"n": [1, 2]} ,"queue":"q","delay":"1m","after":["a1","b2"]}"#;
        match command_of(&args) {
            Command::Submit(Some(body), None) => {
                assert_eq!(String::from_utf8(body).unwrap(), expected);
                serde_json::from_str::<serde_json::Value>(expected).unwrap();
            }
            other => panic!("{other:?}"),
        }
        let kind_only = command_of(&["submit", "--kind", "thumb"]);
        assert_eq!(
            kind_only,
            Command::Submit(Some(br#"{"kind":"thumb"}"#.to_vec()), None)
        );
    }

    #[test]
    fn bad_command_lines_are_usage_errors_that_say_why() {
        let cases: &[(&[&str], &str)] = &[
            (&["frobnicate"], "unknown command \"frobnicate\""),
            (&["status"], "ID is missing"),
            (&["status", "a", "b"], "unexpected argument \"b\""),
            (
                &["status", "--bogus", "a"],
                "unknown option \"--bogus\" for status",
            ),
            (
                &["submit", "--workers", "4", "{}"],
                "unknown option \"--workers\" for submit",
            ),
            (&["status", "--json=yes", "a"], "--json takes no value"),
            (&["wait", "a", "--timeout"], "--timeout needs a value"),
            (
                &["wait", "a", "--timeout", "soon"],
                "--timeout: invalid duration",
            ),
            (
                &["wait", "a", "--timeout", "-1s"],
                "--timeout: negative duration",
            ),
            (
                &["list", "--limit", "0"],
                "--limit: expected a positive whole number",
            ),
            (&["queues", "extra"], "unexpected argument \"extra\""),
            (&["submit"], "submit needs a BODY"),
            (&["submit", "--wait", "5s"], "--wait=DURATION"),
            (
                &["submit", "hello"],
                "BODY must be a JSON object or an array",
            ),
            (&["submit", "{}", "--duration", "1s"], "not both"),
            (&["submit", "--task-id", "x"], "--duration is needed"),
            (
                &["submit", "--duration", "soon"],
                "--duration: invalid duration",
            ),
            (
                &["submit", "--duration", "1s", "--payload", "{"],
                "--payload",
            ),
            (
                &["submit", "--wait=never", "{}"],
                "--wait: invalid duration",
            ),
            (
                &["status", "a", "--server", "https://h"],
                "TLS-terminating proxy",
            ),
            (
                &["status", "a", "--token", ""],
                "--token: the token must be",
            ),
        ];
        for (args, expected) in cases {
            let message = usage_error(args);
            assert!(message.contains(expected), "{args:?}: {message}");
        }
    }

    #[test]
    fn help_is_per_command_and_wins_over_bad_arguments() {
        for spec in COMMANDS {
            assert!(
                spec.usage().starts_with(&format!("bgtasks {} ", spec.name))
                    || spec.name == "queues"
            );
            for flag in ["-h", "--help"] {
                match parse_args(&[spec.name, "--bogus=1", flag]) {
                    Err(_) => {}
                    other => panic!("{other:?}"),
                }
                match parse_args(&[spec.name, flag, "--bogus"]) {
                    Ok(Invocation::Help(s)) => assert_eq!(s.name, spec.name),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn the_server_and_token_come_from_flags_then_the_environment() {
        let server = |args: &[&str], env: &[(&str, &str)]| match parse_env(args, env) {
            Ok(Invocation::Run(job)) => job.server,
            other => panic!("{other:?}"),
        };
        let expected = |url, token: Option<&str>| Server::parse(url, token.map(str::to_string));
        let env = [
            ("BGTASKS_SERVER", "http://10.0.0.1:1"),
            ("BGTASKS_TOKEN", "t-env"),
        ];
        assert_eq!(
            Ok(server(&["queues"], &[])),
            expected("http://127.0.0.1:8000", None)
        );
        assert_eq!(
            Ok(server(&["queues"], &env)),
            expected("http://10.0.0.1:1", Some("t-env"))
        );
        assert_eq!(
            Ok(server(
                &["queues", "--server", "10.0.0.2:2", "--token=t-flag"],
                &env
            )),
            expected("10.0.0.2:2", Some("t-flag"))
        );
    }

    #[test]
    fn a_batch_answer_gives_every_id_in_order() {
        let batch = br#"{"tasks": [{"id": "5NMN1", "task_id": "a", "state": "queued"},
            {"id": "5NMN2", "task_id": null, "state": "waiting"},
            {"id": "5NMN3", "task_id": "c", "state": "cancelled"}]}"#;
        assert_eq!(
            accepted_ids(batch),
            Some(vec!["5NMN1".into(), "5NMN2".into(), "5NMN3".into()])
        );
        let one = br#"{"status": "task queued successfully", "id": "5NMNx", "task_id": "t", "state": "queued"}"#;
        assert_eq!(accepted_ids(one), Some(vec!["5NMNx".into()]));
        assert_eq!(accepted_ids(br#"{"tasks": []}"#), Some(vec![]));
        assert_eq!(accepted_ids(br#"{"error": "no"}"#), None);
        assert_eq!(accepted_ids(b"[1]"), None);
    }

    #[test]
    fn wait_asks_again_pauses_or_stops_as_the_answer_says() {
        /// An answer's status, its state, the state seen before, whether
        /// it came early, and what `wait` does next.
        type Case<'a> = (u16, Option<&'a str>, Option<&'a str>, bool, Next);
        let cases: &[Case] = &[
            (200, Some("succeeded"), None, true, Next::Ended),
            (200, Some("failed"), Some("running"), false, Next::Ended),
            (200, Some("cancelled"), Some("queued"), true, Next::Ended),
            (200, Some("running"), Some("queued"), true, Next::Ask),
            (200, Some("running"), None, true, Next::Ask),
            (200, Some("running"), Some("running"), false, Next::Ask),
            // A server shutting down answers long polls at once, unchanged.
            (200, Some("running"), Some("running"), true, Next::Pause),
            (503, None, Some("running"), true, Next::Pause),
            (502, None, None, false, Next::Pause),
            (504, None, None, false, Next::Pause),
            (404, None, None, true, Next::Refuse),
            (401, None, None, true, Next::Refuse),
            (500, None, None, true, Next::Refuse),
            (200, None, None, true, Next::Refuse),
        ];
        for &(status, state, seen, early, ref next) in cases {
            assert_eq!(
                &next_step(status, state, seen, early),
                next,
                "{status} {state:?} {seen:?} {early}"
            );
        }
    }

    #[test]
    fn a_command_among_server_flags_is_named() {
        let command = misplaced("submit").unwrap();
        assert!(command.contains("client command") && command.contains("comes first"));
        assert_eq!(misplaced("--json"), None);
        assert_eq!(misplaced("hello"), None);
    }
}
