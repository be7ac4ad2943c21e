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
//! and usage errors), one HTTP/1.1 exchange per connection, the output —
//! for people by default, the server's JSON as it came with `--json` — and
//! the exit statuses of §16, which scripts branch on. It touches none of
//! the server's state. From the server it borrows only pure pieces, so both
//! ends of the wire read bytes the same way: the codec's head scanner
//! ([`find_head_end`]), [`parse_content_length`], its chunked decoder
//! ([`Chunked`]), [`percent_encode`], [`parse_duration`], [`parse_token`]
//! and the JSON string writer. The status line and the header lines are
//! read by its own small scan: the server parses requests, and its strict
//! field checks, inlined a second time, would cost the client more than
//! they guard against a server it chose to talk to.
//!
//! # Why a blocking socket
//!
//! A command makes one request at a time and waits for its answer, so a
//! blocking `std::net::TcpStream` says it in straight-line code; `async-io`
//! would start its reactor (a thread and an epoll set) with nothing to run
//! beside the one request, and std's socket is in the binary already (the
//! listener is one), which keeps the client small. Every wait is bounded
//! all the same: connecting by [`CONNECT_TIMEOUT`], each answer by one
//! deadline (set as the socket's read timeout before every read, so a
//! server that trickles bytes cannot stretch it), an event stream by
//! [`EVENTS_SILENCE`] between reads. A server that stops answering, or a
//! peer that does not speak HTTP, ends the command with status 3; it never
//! hangs it.
//!
//! # No host names
//!
//! `--server` takes an IP address, as the server's `--addr` does, and
//! `localhost`, which is 127.0.0.1. Resolving names would need the C
//! library's resolver (`getaddrinfo`): 3 KiB of this binary, and one that
//! a binary linked statically against glibc can load only from the glibc
//! it was built with. Any other name is a usage error (exit 2) that says
//! so.
//!
//! # Size
//!
//! The client adds 57 KiB to the stripped release binary (58,432 bytes;
//! its issue allows 60). Each of these was measured, by building with and
//! without it, and is worth keeping in mind when changing this file:
//! writing to a held `StdoutLock` inlines its line buffering at every
//! write (1.6 KiB more than writing to `Stdout`); a `str` pattern pulls in
//! the two-way searcher the server does not use; each pointer in a table
//! of structs is a relocation, so tables here are text; serde's visitor
//! for an ordered map cost more than [`items`]; and `#[inline(never)]` on
//! the small helpers called from many places saves more than it costs
//! (taking every one away adds 3.8 KiB).

use std::ffi::OsString;
use std::fmt::{Arguments, Write as _};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::config::{MAX_MAX_BODY, parse_token};
use crate::http::{ChunkState, Chunked, HttpError, MAX_HEAD, find_head_end, parse_content_length};
use crate::json::write_json_str;
use crate::routes::{MAX_WAIT, percent_encode};
use crate::time::parse_duration;

/// The server a command talks to when neither `--server` nor
/// `BGTASKS_SERVER` names one: where a server listens by default.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

/// How long connecting may take: a server that is up accepts in
/// milliseconds, and 10 s outlasts two lost SYNs (resent after 1 s, then
/// 3 s more), so past it the server is taken for unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an answer may take beyond what was asked of it (a long poll's
/// wait), and each write of a request: the server answers at once, or
/// after its journal's fsync, and 30 s is a disk far slower than any it
/// will meet.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an event stream may stay silent before the server is taken
/// for gone: three of the server's 15 s keep-alive comments.
const EVENTS_SILENCE: Duration = Duration::from_secs(45);

/// The largest answer, or event, the client reads. A task's status and
/// events echo its label, which a request body of up to 64 MiB (the
/// largest `--max-body`) can make that large; twice that leaves room for
/// the rest, and still bounds what a peer that is not bgtasks can make the
/// client hold.
const MAX_ANSWER: usize = 2 * MAX_MAX_BODY;

/// The first pause before asking again, after a `502`, `503` or `504` (a
/// server or its proxy between lives) or an answer that came early with
/// nothing changed (a server shutting down answers long polls at once):
/// short, so that a server back up is seen at once.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause between such tries: a `wait` asks a server that is
/// not ready at most every 2 s, which costs it nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Exit statuses of SPEC §16, which scripts branch on.
mod exit {
    /// Done; for `wait` and `submit --wait`, the task succeeded.
    pub const DONE: i32 = 0;
    /// The task ended `failed` or `cancelled`.
    pub const TASK_ENDED: i32 = 1;
    /// Bad usage.
    pub const USAGE: i32 = 2;
    /// The server cannot be reached: refused, timed out, not HTTP.
    pub const UNREACHABLE: i32 = 3;
    /// The server refused the request: any 4xx or 5xx.
    pub const REFUSED: i32 = 4;
    /// `--wait` or `--timeout` ran out before the task ended.
    pub const OUT_OF_TIME: i32 = 5;
}

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

/// A command's end before it did all it was asked: its exit status, the
/// reason already said on stderr where it was found. Only the status
/// travels up: a message is said once, so none is carried.
#[derive(Debug, PartialEq, Eq)]
struct Exit(i32);

impl From<io::Error> for Exit {
    /// Stdout could not be written. A reader that has gone (`bgtasks events
    /// | head`) has had what it wanted; anything else is worth a line.
    fn from(e: io::Error) -> Exit {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Exit(exit::USAGE);
        }
        fail(exit::USAGE, format_args!("cannot write the output: {e}"))
    }
}

/// Says why a command ends, and returns its exit status.
#[cold]
#[inline(never)]
fn fail(status: i32, why: Arguments) -> Exit {
    say(why);
    Exit(status)
}

/// Says that the server answered, but not as bgtasks does.
fn unexpected(what: &str) -> Exit {
    fail(
        exit::UNREACHABLE,
        format_args!("the server did not answer as bgtasks does ({what})"),
    )
}

/// Writes one line to stderr, after `bgtasks: `.
#[inline(never)]
fn say(line: Arguments) {
    // Nothing is left to tell when stderr itself is gone.
    let _ = writeln!(io::stderr(), "bgtasks: {line}");
}

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

/// Tells whether two names are the same but for the case of ASCII
/// letters.
#[inline(never)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
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
                    first = row.0.iter().map(|&(name, _)| name).collect();
                    &first[..]
                }
                _ => columns,
            };
            write_table(out, &rows, columns)?;
        }
    }
    Ok(())
}

/// Prints a body as the server sent it, on its own line.
fn write_json(out: &mut impl Write, body: &[u8]) -> Result<(), Exit> {
    out.write_all(body)?;
    if !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
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
/// until the server ends the stream with `shutdown` or `lagged`; returns
/// which.
fn follow(
    server: &Server,
    path: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<&'static str, Exit> {
    let mut stream = server.send("GET", path, b"")?;
    let mut input = Vec::new();
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let head = server.read_head(&mut stream, &mut input, deadline)?;
    if head.status != 200 {
        let body = server.read_body(&mut stream, head.delimiter, input, deadline)?;
        return Err(Answer::new(head.status, body).refused());
    }
    let mut decoder = Decoder::new(head.delimiter);
    let mut events = EventText::default();
    loop {
        let done = decoder
            .decode(&input, &mut events.text)
            .map_err(|e| server.gone(format_args!("did not answer in HTTP: {e}")))?;
        while let Some((name, data)) = events.next_event() {
            match name.as_str() {
                "shutdown" => return Ok("shutdown"),
                "lagged" => return Ok("lagged"),
                _ if json => writeln!(out, "{data}")?,
                _ => writeln!(out, "{}", event_line(&name, &data))?,
            }
            out.flush()?;
        }
        if done {
            return Err(server.gone(format_args!("ended the event stream unasked")));
        }
        input.clear();
        let silence = Instant::now() + EVENTS_SILENCE;
        if read_more(&mut stream, &mut input, silence).map_err(|e| server.lost(&e))? == 0 {
            return Err(server.gone(format_args!("closed the event stream")));
        }
    }
}

/// The text of an event stream as it arrives, cut into events
/// (Server-Sent Events: lines, and a blank line after each event).
#[derive(Default)]
struct EventText {
    /// Text read and not yet taken as events.
    text: Vec<u8>,
}

impl EventText {
    /// Takes the next whole event, as its name and data; comments
    /// (`: keep-alive`) are skipped. Lines end with LF, as the server
    /// writes them.
    fn next_event(&mut self) -> Option<(String, String)> {
        loop {
            let end = self.text.windows(2).position(|w| w == b"\n\n")?;
            let rest = self.text.split_off(end + 2);
            let event = std::mem::replace(&mut self.text, rest);
            let (mut name, mut data): (&[u8], Option<Vec<u8>>) = (b"", None);
            for line in event.split(|&b| b == b'\n') {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                let value = line.get(colon + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                match (&line[..colon], &mut data) {
                    (b"event", _) => name = value,
                    (b"data", Some(data)) => {
                        data.push(b'\n');
                        data.extend_from_slice(value);
                    }
                    (b"data", None) => data = Some(value.to_vec()),
                    _ => {}
                }
            }
            if !name.is_empty() || data.is_some() {
                let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                let name = if name.is_empty() { b"message" } else { name };
                return Some((text(name), text(&data.unwrap_or_default())));
            }
        }
    }
}

/// Returns an event as one line for people: its name, then its members
/// as `name=value` — a string bare unless it is empty or holds a space, a
/// quote or `=` (then it is its JSON, which quotes it), an object as its
/// JSON on one line; nulls and arrays (the queues of `stats`) left out.
fn event_line(name: &str, data: &str) -> String {
    let mut line = one_line(name);
    let Some(object) = Members::parse(data) else {
        return line + " " + &one_line(data);
    };
    for &(key, value) in &object.0 {
        let raw = value;
        if raw == "null" || raw.starts_with('[') {
            continue;
        }
        let mut text = plain(value);
        if raw.starts_with('"') && (text.is_empty() || text.contains([' ', '"', '='])) {
            text = one_line(raw);
        }
        let _ = write!(line, " {}={text}", one_line(key));
    }
    line
}

// ---- Showing JSON to people ----

/// A JSON object's members in the order the server wrote them, each value
/// still JSON text (serde_json's own map would sort them).
#[derive(Debug)]
struct Members<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Members<'a> {
    /// Parses a JSON object.
    fn parse(text: &'a str) -> Option<Members<'a>> {
        items(text, b'{').map(Members)
    }

    /// Parses a JSON array of objects.
    fn list(text: &'a str) -> Option<Vec<Members<'a>>> {
        let mut list = Vec::new();
        for (_, item) in items(text, b'[')? {
            list.push(Members::parse(item)?);
        }
        Some(list)
    }

    /// Returns a member's value.
    #[inline(never)]
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }

    /// Returns a member that is a string, decoded.
    fn string(&self, name: &str) -> Option<String> {
        serde_json::from_str(self.get(name)?).ok()
    }
}

/// Splits the JSON text of an object (`open` is `{`) or an array (`[`)
/// into its items, in order: each member's name (as written: bgtasks
/// writes none with an escape) and value, or `""` and each element; the
/// values are still JSON text. It finds where each value ends — strings,
/// escapes and nesting taken into account — and leaves the rest to
/// whoever reads the values (serde_json, for strings). A scan: serde's
/// visitor for an ordered map cost the binary 0.9 KiB more.
fn items(text: &str, open: u8) -> Option<Vec<(&str, &str)>> {
    let b = text.as_bytes();
    let skip = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let close = open + 2; // `}` follows `{` by two in ASCII, `]` `[` too.
    let mut i = skip(0);
    if b.get(i) != Some(&open) {
        return None;
    }
    let mut items = Vec::new();
    i = skip(i + 1);
    if b.get(i) == Some(&close) {
        return (skip(i + 1) == b.len()).then_some(items);
    }
    loop {
        let mut name = "";
        if open == b'{' {
            let end = value_end(b, i).filter(|_| b[i] == b'"')?;
            name = text.get(i + 1..end - 1)?;
            i = skip(end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip(i + 1);
        }
        let end = value_end(b, i)?;
        items.push((name, text.get(i..end)?));
        i = skip(end);
        match b.get(i)? {
            b',' => i = skip(i + 1),
            &c if c == close => return (skip(i + 1) == b.len()).then_some(items),
            _ => return None,
        }
    }
}

/// Returns where the JSON value that starts at `i` ends.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut i) = (0usize, false, start);
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            _ if in_string => {}
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => break,
            b'}' | b']' => depth -= 1,
            b',' | b':' if depth == 0 => break,
            c if c.is_ascii_whitespace() && depth == 0 => break,
            _ => {}
        }
        i += 1;
        if depth == 0 && !in_string && matches!(c, b'"' | b'}' | b']') {
            break;
        }
    }
    (i > start && depth == 0 && !in_string && i <= b.len()).then_some(i)
}

/// Parses an answer's body as a JSON object.
fn members(body: &[u8]) -> Result<Members<'_>, Exit> {
    std::str::from_utf8(body)
        .ok()
        .and_then(Members::parse)
        .ok_or_else(|| unexpected("the answer is not a JSON object"))
}

/// Prints an object one member a line: its name, a colon, and its value,
/// the values in one column.
fn write_members(out: &mut impl Write, object: &Members) -> io::Result<()> {
    let mut cells = Vec::new();
    for &(name, value) in &object.0 {
        cells.push(one_line(name) + ":");
        cells.push(plain(value));
    }
    write_columns(out, &cells, 2)
}

/// Prints rows as a table: a header line of the column names, then a line
/// per row.
fn write_table(out: &mut impl Write, rows: &[Members], columns: &[&str]) -> io::Result<()> {
    let mut cells: Vec<String> = columns.iter().map(|c| one_line(c)).collect();
    for row in rows {
        for column in columns {
            cells.push(row.get(column).map_or_else(|| "-".to_string(), plain));
        }
    }
    write_columns(out, &cells, columns.len())
}

/// Prints cells, `columns` a line, each column as wide as its widest cell
/// and two spaces from the next.
#[inline(never)]
fn write_columns(out: &mut dyn Write, cells: &[String], columns: usize) -> io::Result<()> {
    let mut widths = vec![0; columns];
    for (i, cell) in cells.iter().enumerate() {
        let width = &mut widths[i % columns];
        // Bytes, not characters: every column but the last (a label or a
        // value, never padded) holds ASCII names, ids, numbers and times.
        *width = (*width).max(cell.len());
    }
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let width = widths[i % columns];
        let _ = write!(line, "{cell:<width$}  ");
        if (i + 1) % columns == 0 {
            writeln!(out, "{}", line.trim_ascii_end())?;
            line.clear();
        }
    }
    Ok(())
}

/// Returns a value as people read it: a string without its quotes and
/// its last line breaks (kept quoted and escaped when it holds other
/// control characters — more lines, or codes that could drive a
/// terminal), `-` for null, anything else as its JSON on one line.
fn plain(text: &str) -> String {
    if text == "null" {
        return "-".to_string();
    }
    match serde_json::from_str::<String>(text) {
        Ok(s) if !s.trim_ascii_end().contains(char::is_control) => s.trim_ascii_end().to_string(),
        _ => one_line(text),
    }
}

/// Returns JSON text on one line, safe for a terminal: each run of
/// whitespace between tokens (where JSON has its line breaks) becomes one
/// space, and a control character (which can only be inside a string) its
/// `\u` escape, which means the same in JSON.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut space) = (false, false, false);
    for c in text.chars() {
        if !in_string && c.is_ascii_whitespace() {
            space = true;
            continue;
        }
        if std::mem::take(&mut space) && !out.is_empty() {
            out.push(' ');
        }
        if c.is_control() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
        if escaped {
            escaped = false;
        } else if in_string && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        }
    }
    out
}

// ---- HTTP/1.1, the client's side ----

/// Where the server is, and what every request to it carries.
#[derive(Debug, PartialEq, Eq)]
struct Server {
    /// The URL as given, for messages.
    url: String,
    /// The address to connect to.
    address: SocketAddr,
    /// A path every request's path follows (a proxy's location), without
    /// its last `/`.
    base: String,
    /// The header lines every request carries: `Host` (the URL's host and
    /// port as given), `User-Agent` and, with a token, `Authorization`.
    headers: String,
}

/// An answer of the server.
#[derive(Debug)]
struct Answer {
    /// Its status code.
    status: u16,
    /// Its body.
    body: Vec<u8>,
}

impl Answer {
    /// Makes an answer.
    fn new(status: u16, body: Vec<u8>) -> Answer {
        Answer { status, body }
    }

    /// Returns the body if the status is a success, else the refusal.
    fn accepted(&self) -> Result<&[u8], Exit> {
        match self.status {
            200..=299 => Ok(&self.body),
            _ => Err(self.refused()),
        }
    }

    /// Says that the server refused the request, in its own sentence if
    /// it sent one.
    fn refused(&self) -> Exit {
        let object = std::str::from_utf8(&self.body)
            .ok()
            .and_then(Members::parse);
        let status = self.status;
        match object.as_ref().and_then(|m| m.get("error")) {
            Some(sentence) => fail(
                exit::REFUSED,
                format_args!("{} (HTTP {status})", plain(sentence)),
            ),
            None => fail(
                exit::REFUSED,
                format_args!("the server answered HTTP {status}"),
            ),
        }
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delimiter {
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the connection closes.
    Close,
}

/// A response's head: what the client needs of it.
#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    /// The status code.
    status: u16,
    /// How the body is delimited.
    delimiter: Delimiter,
}

impl Server {
    /// Parses `--server`: `http://HOST[:PORT][/PATH]`, or the same without
    /// `http://`; HOST is a name, an IPv4 address or a bracketed IPv6 one.
    fn parse(url: &str, token: Option<String>) -> Result<Server, String> {
        let (scheme, rest) = match url.split_once(':') {
            Some((scheme, rest)) if rest.starts_with("//") => (scheme, &rest[2..]),
            _ => ("http", url),
        };
        if same(scheme.as_bytes(), b"https") {
            return Err(format!(
                "--server {url:?}: bgtasks speaks plain HTTP; to reach a server over TLS, \
                 put a TLS-terminating proxy (nginx, Caddy, stunnel) on this side and give \
                 its http:// address"
            ));
        }
        let (authority, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let plain = rest
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'@' | b'?' | b'#'));
        match split_host_port(authority) {
            Some(address) if plain && same(scheme.as_bytes(), b"http") => {
                let version = env!("CARGO_PKG_VERSION");
                let mut headers = format!("Host: {authority}\r\nUser-Agent: bgtasks/{version}\r\n");
                if let Some(token) = token {
                    let _ = write!(headers, "Authorization: Bearer {token}\r\n");
                }
                Ok(Server {
                    url: url.to_string(),
                    address,
                    base: base.trim_end_matches('/').to_string(),
                    headers,
                })
            }
            _ => Err(format!(
                "--server {url:?} is not http://IP[:PORT] such as http://127.0.0.1:8000 \
                 (localhost is 127.0.0.1; host names are not resolved)"
            )),
        }
    }

    /// Says that the server cannot be reached, or did not answer in HTTP.
    #[inline(never)]
    fn gone(&self, what: Arguments) -> Exit {
        fail(
            exit::UNREACHABLE,
            format_args!("the server at {} {what}", self.url),
        )
    }

    /// Says that the connection failed while reading or writing.
    fn lost(&self, e: &io::Error) -> Exit {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                self.gone(format_args!("did not answer in time"))
            }
            _ => self.gone(format_args!("broke the connection: {e}")),
        }
    }

    /// Connects to the server and sends one request; returns the
    /// connection, its answer to come.
    fn send(&self, method: &str, path: &str, body: &[u8]) -> Result<TcpStream, Exit> {
        TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT)
            .and_then(|mut stream| {
                stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
                stream.write_all(&self.request(method, path, body))?;
                Ok(stream)
            })
            .map_err(|e| self.gone(format_args!("cannot be reached: {e}")))
    }

    /// Writes a request. Each request has its own connection
    /// (`Connection: close`), so an answer ends where its connection does
    /// if nothing else says so.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let (base, headers) = (&self.base, &self.headers);
        let mut head = format!("{method} {base}{path} HTTP/1.1\r\n{headers}");
        if method == "POST" {
            let length = body.len();
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {length}\r\n"
            );
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Makes one request and reads its whole answer, which must come
    /// within `patience`.
    fn ask(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        patience: Duration,
    ) -> Result<Answer, Exit> {
        let deadline = Instant::now() + patience;
        let mut stream = self.send(method, path, body)?;
        let mut input = Vec::new();
        let head = self.read_head(&mut stream, &mut input, deadline)?;
        let body = self.read_body(&mut stream, head.delimiter, input, deadline)?;
        Ok(Answer::new(head.status, body))
    }

    /// Reads an answer's head, leaving in `input` what came after it.
    fn read_head(
        &self,
        stream: &mut TcpStream,
        input: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<ResponseHead, Exit> {
        let mut scanned = 0;
        loop {
            if let Some(end) = find_head_end(input, scanned) {
                let head = parse_response_head(&input[..end])
                    .map_err(|e| self.gone(format_args!("did not answer in HTTP: {e}")))?;
                input.drain(..end);
                return Ok(head);
            }
            if input.len() > MAX_HEAD {
                return Err(self.gone(format_args!("sent an answer head over 16 KiB")));
            }
            scanned = input.len();
            if read_more(stream, input, deadline).map_err(|e| self.lost(&e))? == 0 {
                let what = match input.is_empty() {
                    true => "closed the connection without an answer",
                    false => "did not answer in HTTP: its answer ends inside its head",
                };
                return Err(self.gone(format_args!("{what}")));
            }
        }
    }

    /// Reads an answer's body, given what came with its head.
    fn read_body(
        &self,
        stream: &mut TcpStream,
        delimiter: Delimiter,
        mut input: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, Exit> {
        let mut decoder = Decoder::new(delimiter);
        let mut body = Vec::new();
        loop {
            let done = decoder
                .decode(&input, &mut body)
                .map_err(|e| self.gone(format_args!("did not answer in HTTP: {e}")))?;
            if done {
                return Ok(body);
            }
            input.clear();
            if read_more(stream, &mut input, deadline).map_err(|e| self.lost(&e))? == 0 {
                return match delimiter {
                    Delimiter::Close => Ok(body),
                    _ => Err(self.gone(format_args!("closed the connection inside an answer"))),
                };
            }
        }
    }
}

/// Reads `IP[:PORT]` (an IPv6 address in brackets; `localhost` is
/// 127.0.0.1); the port is 80 if none is given, and may not be 0.
fn split_host_port(authority: &str) -> Option<SocketAddr> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
        _ => (authority, 80u16),
    };
    let host = if same(host.as_bytes(), b"localhost") {
        "127.0.0.1"
    } else {
        host
    };
    let address: SocketAddr = format!("{host}:{port}").parse().ok()?;
    (port > 0).then_some(address)
}

/// Reads what has arrived into `input`, waiting until `deadline` at most;
/// returns how many bytes came (0: the server closed the connection).
fn read_more(stream: &mut TcpStream, input: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    let mut chunk = [0u8; 16 << 10];
    loop {
        match stream.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            read => {
                let n = read?;
                input.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
        }
    }
}

/// Parses a response head (status line, header lines, blank line): its
/// status and how its body is delimited. Only `Content-Length` and
/// `Transfer-Encoding` are read; a line without a colon is skipped. The
/// error says what is wrong.
fn parse_response_head(head: &[u8]) -> Result<ResponseHead, &'static str> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = lines.next().and_then(parse_status_line);
    let status = status.ok_or("its status line is malformed")?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if same(name, b"content-length") {
            let n = parse_content_length(value).map_err(HttpError::message)?;
            if length.is_some_and(|l| l != n) {
                return Err("its answer has two different Content-Lengths");
            }
            length = Some(n);
        } else if same(name, b"transfer-encoding") {
            // RFC 9112 §6.3: chunked, when it is the last coding.
            let last = value.len().saturating_sub(7);
            chunked = same(&value[last..], b"chunked");
        }
    }
    let delimiter = match (chunked, length) {
        (true, _) => Delimiter::Chunked,
        (false, Some(n)) => Delimiter::Length(n),
        (false, None) => Delimiter::Close,
    };
    Ok(ResponseHead { status, delimiter })
}

/// Reads a status line (RFC 9112 §4): `HTTP/1.1` or `HTTP/1.0`, a space,
/// three digits, then a space and a reason phrase, or nothing. Returns the
/// status code.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let (code, reason) = rest.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(reason.first(), None | Some(b' ')) {
        return None;
    }
    let code = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&code).then_some(code)
}

/// Where reading an answer's body is: by its length, by the server's
/// chunked decoder, or to the connection's end.
enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked; the decoder keeps its place between reads.
    Chunked(Box<Chunked>),
    /// Everything until the connection closes.
    Close,
}

impl Decoder {
    /// Starts reading a body delimited so.
    fn new(delimiter: Delimiter) -> Decoder {
        match delimiter {
            Delimiter::Length(n) => Decoder::Length(n),
            Delimiter::Chunked => Decoder::Chunked(Box::default()),
            Delimiter::Close => Decoder::Close,
        }
    }

    /// Appends to `out` the body in `input`, all of which has arrived;
    /// returns whether the body is complete. What follows a complete body
    /// is dropped: every request says `Connection: close`.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, &'static str> {
        let done = match self {
            Decoder::Length(left) => {
                let take = (*left).min(input.len() as u64);
                out.extend_from_slice(&input[..take as usize]);
                *left -= take;
                *left == 0
            }
            Decoder::Chunked(chunked) => {
                chunked
                    .feed(input, MAX_ANSWER)
                    .map_err(|_| "its chunked body is malformed or too large")?;
                out.append(&mut chunked.body);
                chunked.state == ChunkState::Done
            }
            Decoder::Close => {
                out.extend_from_slice(input);
                false
            }
        };
        match out.len() > MAX_ANSWER {
            true => Err("its answer is larger than any bgtasks sends"),
            false => Ok(done),
        }
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
            Ok(Invocation::Run(job)) => {
                let token = job.server.headers.split_once("Bearer ");
                let token = token.map(|(_, t)| t.trim_end().to_string());
                (job.server.url, token)
            }
            other => panic!("{other:?}"),
        };
        let env = [
            ("BGTASKS_SERVER", "http://10.0.0.1:1"),
            ("BGTASKS_TOKEN", "t-env"),
        ];
        assert_eq!(
            server(&["queues"], &[]),
            ("http://127.0.0.1:8000".to_string(), None)
        );
        assert_eq!(
            server(&["queues"], &env),
            ("http://10.0.0.1:1".to_string(), Some("t-env".to_string()))
        );
        assert_eq!(
            server(
                &["queues", "--server", "10.0.0.2:2", "--token=t-flag"],
                &env
            ),
            ("10.0.0.2:2".to_string(), Some("t-flag".to_string()))
        );
    }

    #[test]
    fn server_urls_name_an_address_and_a_path() {
        /// A URL, and the address to connect to, the `Host` header and the
        /// path prefix.
        type Case<'a> = (&'a str, Option<(&'a str, &'a str, &'a str)>);
        let cases: &[Case] = &[
            (
                "http://127.0.0.1:8000",
                Some(("127.0.0.1:8000", "127.0.0.1:8000", "")),
            ),
            ("HTTP://10.0.0.1", Some(("10.0.0.1:80", "10.0.0.1", ""))),
            ("localhost:9", Some(("127.0.0.1:9", "localhost:9", ""))),
            ("http://LocalHost", Some(("127.0.0.1:80", "LocalHost", ""))),
            ("http://[::1]:8000/", Some(("[::1]:8000", "[::1]:8000", ""))),
            ("http://[::1]/x", Some(("[::1]:80", "[::1]", "/x"))),
            (
                "http://10.1.2.3:1/bg/tasks/",
                Some(("10.1.2.3:1", "10.1.2.3:1", "/bg/tasks")),
            ),
            ("http://example.org", None),
            ("http://", None),
            ("http://:80", None),
            ("http://127.0.0.1:0", None),
            ("http://127.0.0.1:65536", None),
            ("http://127.0.0.1:x", None),
            ("http://[::1", None),
            ("http://::1:80", None),
            ("http://user@127.0.0.1", None),
            ("http://127.0.0.1/a b", None),
            ("http://127.0.0.1/?q", None),
            ("ftp://127.0.0.1", None),
            ("https://127.0.0.1", None),
        ];
        for (url, expected) in cases {
            let parsed = Server::parse(url, None).ok();
            let got = parsed.as_ref().map(|s| {
                let host = &s.headers[6..s.headers.find('\r').unwrap()];
                (s.address.to_string(), host, s.base.as_str())
            });
            let expected = expected.map(|(a, h, b)| (a.to_string(), h, b));
            assert_eq!(got, expected, "{url}");
        }
    }

    #[test]
    fn requests_carry_host_token_and_length() {
        let mut server = Server::parse("http://127.0.0.1:1/p/", Some("tok".into())).unwrap();
        let request = server.request("POST", "/tasks", b"{}");
        let expected = "POST /p/tasks HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: bgtasks/VERSION\r\n\
            Authorization: Bearer tok\r\nContent-Type: application/json\r\n\
            Content-Length: 2\r\nConnection: close\r\n\r\n{}";
        let expected = expected.replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert_eq!(String::from_utf8(request).unwrap(), expected);
        server = Server::parse("http://127.0.0.1:1/p/", None).unwrap();
        let request = String::from_utf8(server.request("POST", "/tasks/a/cancel", b"")).unwrap();
        assert!(request.ends_with("\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
        assert!(!request.contains("Authorization"), "{request}");
        let request = String::from_utf8(server.request("GET", "/queues", b"")).unwrap();
        assert!(!request.contains("Content-Length"), "{request}");
    }

    #[test]
    fn status_lines_are_read_strictly() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.1 200 OK", Some(200)),
            (b"HTTP/1.0 503 Service Unavailable", Some(503)),
            (b"HTTP/1.1 404", Some(404)),
            (b"HTTP/1.1 204 ", Some(204)),
            (b"HTTP/1.1 99 Low", None),
            (b"HTTP/1.1 600 High", None),
            (b"HTTP/1.1 2000 OK", None),
            (b"HTTP/1.1 20x OK", None),
            (b"HTTP/2 200 OK", None),
            (b"HTTP/1.1  200 OK", None),
            (b"SSH-2.0-OpenSSH_9.6", None),
            (b"", None),
        ];
        for (line, status) in cases {
            assert_eq!(
                parse_status_line(line),
                *status,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn response_heads_say_how_the_body_is_delimited() {
        let head = |text: &str| parse_response_head(text.as_bytes());
        let ok = |status, delimiter| Ok(ResponseHead { status, delimiter });
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: x\r\n\r\n"),
            ok(200, Delimiter::Length(12))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\nTransfer-Encoding: gzip, Chunked\n\n"),
            ok(200, Delimiter::Chunked)
        );
        assert_eq!(head("HTTP/1.0 200 OK\r\n\r\n"), ok(200, Delimiter::Close));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n"),
            ok(200, Delimiter::Length(3))
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
            "hello\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_decode_however_they_are_split() {
        let cases: &[(Delimiter, &[u8], &[u8])] = &[
            (Delimiter::Length(5), b"hello and more", b"hello"),
            (Delimiter::Length(0), b"", b""),
            (
                Delimiter::Chunked,
                b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nTrailer: x\r\n\r\n",
                b"hello!",
            ),
        ];
        for (delimiter, wire, body) in cases {
            for cut in 0..=wire.len() {
                let mut decoder = Decoder::new(*delimiter);
                let mut out = Vec::new();
                let first = decoder.decode(&wire[..cut], &mut out).unwrap();
                let done = first || decoder.decode(&wire[cut..], &mut out).unwrap();
                assert!(done, "{delimiter:?} cut at {cut}");
                assert_eq!(out, *body, "{delimiter:?} cut at {cut}");
            }
        }
        let mut decoder = Decoder::new(Delimiter::Chunked);
        assert!(decoder.decode(b"zz\r\n", &mut Vec::new()).is_err());
        let mut decoder = Decoder::new(Delimiter::Close);
        assert_eq!(decoder.decode(b"abc", &mut Vec::new()), Ok(false));
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
    fn members_keep_the_servers_order_and_print_safely() {
        let body = br#"{"id": "x1", "task_id": "two words", "state": "running", "attempt": 1,
            "error": null, "result": {"a":
            [1, 2]}, "label": "\u001b[31mred", "del": "a\u007fb",
            "stderr": "one line\n", "lines": "one\ntwo\n"}"#;
        let object = members(body).unwrap();
        let mut out = Vec::new();
        write_members(&mut out, &object).unwrap();
        let expected = "id:       x1\n\
                        task_id:  two words\n\
                        state:    running\n\
                        attempt:  1\n\
                        error:    -\n\
                        result:   {\"a\": [1, 2]}\n\
                        label:    \"\\u001b[31mred\"\n\
                        del:      \"a\\u007fb\"\n\
                        stderr:   one line\n\
                        lines:    \"one\\ntwo\\n\"\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert!(members(b"[1, 2]").is_err());
        assert!(members(b"\xff").is_err());
    }

    #[test]
    fn tables_have_one_header_line_and_aligned_columns() {
        let rows = r#"[{"name": "default", "workers": 10, "paused": false},
                       {"name": "backup", "workers": 1, "paused": true, "extra": 0}]"#;
        let rows = Members::list(rows).unwrap();
        let mut out = Vec::new();
        write_table(&mut out, &rows, &["name", "workers", "paused", "rate"]).unwrap();
        let expected = "name     workers  paused  rate\n\
                        default  10       false   -\n\
                        backup   1        true    -\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let mut out = Vec::new();
        write_table(&mut out, &[], LIST_COLUMNS).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id  state  queue  kind  attempt  created_at  task_id\n"
        );
    }

    #[test]
    fn event_streams_are_cut_into_events_however_they_arrive() {
        let wire = ": keep-alive\n\nevent: stats\ndata: {\"counts\": {}}\n\n\
                    event: task\ndata: {\"id\": \"a\"}\n\ndata: x\ndata: y\n\n";
        let expected = [
            ("stats", "{\"counts\": {}}"),
            ("task", "{\"id\": \"a\"}"),
            ("message", "x\ny"),
        ];
        for cut in 0..=wire.len() {
            let mut text = EventText::default();
            let mut events = Vec::new();
            for part in [&wire.as_bytes()[..cut], &wire.as_bytes()[cut..]] {
                text.text.extend_from_slice(part);
                while let Some(event) = text.next_event() {
                    events.push(event);
                }
            }
            let events: Vec<(&str, &str)> = events
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_str()))
                .collect();
            assert_eq!(events, expected, "cut at {cut}");
        }
    }

    #[test]
    fn json_items_are_split_where_their_values_end() {
        /// JSON text, what it opens with, and its items.
        type Case<'a> = (&'a str, u8, Option<&'a [(&'a str, &'a str)]>);
        let cases: &[Case] = &[
            ("{}", b'{', Some(&[])),
            (" [ ] ", b'[', Some(&[])),
            (
                r#"{"a": 1, "b":"x,y}", "c" : {"d": [1, "]"]}, "e": null}"#,
                b'{',
                Some(&[
                    ("a", "1"),
                    ("b", r#""x,y}""#),
                    ("c", r#"{"d": [1, "]"]}"#),
                    ("e", "null"),
                ]),
            ),
            (
                r#"{"q": "say \"hi\" \\", "n": -1.5e3}"#,
                b'{',
                Some(&[("q", r#""say \"hi\" \\""#), ("n", "-1.5e3")]),
            ),
            (
                "[{\"id\": \"a\"},\n {\"id\": \"b\"}]",
                b'[',
                Some(&[("", r#"{"id": "a"}"#), ("", r#"{"id": "b"}"#)]),
            ),
            ("[1, 2]", b'{', None),
            (r#"{"a" 1}"#, b'{', None),
            (r#"{"a": 1"#, b'{', None),
            (r#"{"a": 1,}"#, b'{', None),
            (r#"{"a": "open}"#, b'{', None),
            (r#"{"a": 1} x"#, b'{', None),
            (r#"{a: 1}"#, b'{', None),
            ("", b'{', None),
        ];
        for (text, open, expected) in cases {
            assert_eq!(items(text, *open).as_deref(), *expected, "{text}");
        }
    }

    #[test]
    fn events_print_as_one_line_each() {
        let task = r#"{"id": "a1", "task_id": "two words", "kind": "sleep", "queue": "default",
            "state": "running", "attempt": 1, "progress": null, "at": "2026-12-07T20:00:00.000Z"}"#;
        assert_eq!(
            event_line("task", task),
            "task id=a1 task_id=\"two words\" kind=sleep queue=default state=running \
             attempt=1 at=2026-12-07T20:00:00.000Z"
        );
        let progress = r#"{"id": "a1", "task_id": "x=y", "progress": {"done":
            3}, "label": "", "tab": "a\tb"}"#;
        assert_eq!(
            event_line("task", progress),
            "task id=a1 task_id=\"x=y\" progress={\"done\": 3} label=\"\" tab=\"a\\tb\""
        );
        let stats = r#"{"counts": {"queued": 1, "running": 2}, "queues": [{"name": "default"}],
            "accepted_total": 3}"#;
        assert_eq!(
            event_line("stats", stats),
            "stats counts={\"queued\": 1, \"running\": 2} accepted_total=3"
        );
        assert_eq!(event_line("odd", "not json\n"), "odd not json");
        assert_eq!(
            one_line("{\"a b\\\"\\t\" :\n\t[ 1 ] }"),
            "{\"a b\\\"\\t\" : [ 1 ] }"
        );
    }

    #[test]
    fn a_command_among_server_flags_is_named() {
        let command = misplaced("submit").unwrap();
        assert!(command.contains("client command") && command.contains("comes first"));
        assert_eq!(misplaced("--json"), None);
        assert_eq!(misplaced("hello"), None);
    }
}
