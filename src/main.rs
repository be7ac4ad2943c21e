//! bgtasks is a background task manager in one small binary: an HTTP/1.1
//! server that accepts a task, answers `202 Accepted` with a unique id at
//! once, and runs the task later on a fixed pool of workers.
//!
//! ```text
//! cargo run --release -- --addr 127.0.0.1:8000 --workers 10 --buffer 100
//! curl -i -X POST localhost:8000/tasks -d '{"task_id": "hello", "work_duration": "5s"}'
//! curl localhost:8000/tasks/<id>?wait=10s
//! ```
//!
//! # How the parts fit
//!
//! ```text
//!               one async_executor::Executor on --threads threads
//!  ┌──────────────────────────────────────────────────────────────────────────┐
//!  │ listener ── accept ──▶ connection task (one per socket)                   │
//!  │   (Async<TcpListener>)     │ HTTP/1.1 codec ─▶ routes ─▶ Store (Mutex) ─┐  │
//!  │                            │                     │  try_send(id)        │  │
//!  │                            ▼                     ▼                      │  │
//!  │                   202 + Location   one bounded channel per queue        │  │
//!  │                                    (default: --buffer; --queue …)      │  │
//!  │                                                  │ recv()               │  │
//!  │                                                  ▼                      │  │
//!  │                                   each queue's workers race their work  │  │
//!  │                                   against grace_over · cancel · timeout │  │
//!  │ scheduler: one heap, one timer ── delayed tasks, retries, schedules ──▶ │  │
//!  │ /events streams ◀── a feed per stream, filled at the store's changes ◀─┘  │
//!  └──────────────────────────────────────────────────────────────────────────┘
//!   journal thread (--data-dir): appends, group-commits fsyncs, compacts
//!   signal pipe: SIGINT/SIGTERM ─▶ draining ─(--grace)─▶ grace_over ─▶ exit
//! ```
//!
//! A client POSTs a task; its connection task parses it, and under the
//! store lock puts the task's id into its queue's bounded channel with
//! `try_send` and records the task. A full queue (its channel, and the
//! tasks waiting to enter it) means `503` with `Retry-After`, and nothing
//! is recorded, so admission is atomic. A worker
//! receives the id, marks the task running and does the work; the client
//! polls `GET /tasks/{id}` (or long-polls with `?wait=`) until the task is
//! `succeeded`, `failed` or `cancelled`.
//!
//! Every wait that something else may have to cut short — a sleeping task,
//! a child process, a long poll, a delayed task — races a [`Trigger`]: a
//! channel that is never sent on and is closed to fire, which wakes every
//! waiter at once. Shutdown closes the job channels themselves the same
//! way, which wakes every idle worker.
//!
//! # Reading it to learn how an executor works
//!
//! Three words first. A *future* is a value with a `poll` method
//! ([`Future::poll`]) that either finishes or says "not yet" — and, before
//! saying so, keeps a *waker* from its context somewhere that will be
//! called when it is worth polling again. A *task* is a future the
//! executor owns: an executor keeps queues of tasks ready to run (one
//! shared, one per thread, which idle threads steal from) and polls them,
//! one at a time on each of its threads; a waker's `wake` puts its task
//! back on a queue and wakes a sleeping thread to run it. The future given
//! to `executor.run` itself is not a task: that thread polls it inline,
//! between tasks. The *reactor* (async-io's) is what turns the operating
//! system's readiness — epoll, here — and timers into wake-ups. ("Poll"
//! also names unrelated things below: an HTTP long poll, `?wait=`; the
//! polling loops of the tests; and [`reap_group`]'s loop, which looks for
//! exited processes every 2 ms because they have no readiness to wait on.
//! The text says which.)
//!
//! Every race in this file is `future::or(a, b)`, and what it does when
//! polled shows the whole mechanism in four lines:
//!
//! ```text
//! fn poll(a, b, cx) -> Poll<T> {
//!     if let Ready(v) = a.poll(cx) { return Ready(v) }  // left side first
//!     b.poll(cx)  // a said "not yet": it has left cx's waker where its event will be
//! }               // (a timer, a socket, a channel); b does the same, or is ready
//! ```
//!
//! Whichever event comes first calls that waker, the task is polled
//! again, one side is ready, and the race ends; the other side is dropped,
//! and dropping it takes its waker back (a timer leaves the reactor).
//!
//! Read these, in this order, and skip the rest on a first pass:
//!
//! 1. [`main`], [`launch`] and [`run_executor`]: the executor runs on
//!    `--threads` threads, each in `async_io::block_on(executor.run(..))`;
//!    the main thread's `run` is given [`supervise`], the future whose end
//!    is the process's end, and polls it inline. Threads that run no
//!    futures: the journal writer, async-io's reactor helper, and
//!    async-process's, which learns of handlers' exits.
//! 2. [`start_serving`] and [`listen`]: the listener is a task; each
//!    accepted connection becomes a task of its own ([`serve`]).
//! 3. [`Connection::serve_requests`], [`Connection::serve_request`] and
//!    [`Connection::fill`]: reading without blocking a thread, one deadline
//!    per request head.
//! 4. [`submit`] and [`Store::admit`]: the bounded channel, and why
//!    `try_send` under a lock makes admission atomic.
//! 5. [`Trigger`], then [`work`], [`next_work`], [`attempt`], [`sleep`] and
//!    [`interruption`]: a worker sleeping in a timer, and how cancel and
//!    shutdown reach it at once.
//! 6. [`shut_down`]: the shutdown steps below, as code.
//!
//! Sections 4 (periodic tasks), 6 (the journal), 7 (the HTTP codec: pure
//! functions on bytes) and 9 (events) can wait. Lines marked `// Tuning:`
//! make the server faster but the lesson harder to see: each says what the
//! plain version would be and what the tuned one buys.
//!
//! # One request, traced
//!
//! `POST /tasks` on a connection that is new, then `GET /tasks/{id}?wait=10s`
//! on another, without `--data-dir` (with it, steps 4 and 5 also wait for
//! the disk: see section 6):
//!
//! 1. The kernel queues the connection on the listening socket. [`listen`]
//!    had awaited `listener.accept()`, which found nothing to accept at the
//!    time and so left its task's waker with the reactor; epoll now reports
//!    the socket readable, whichever thread is driving the reactor (one in
//!    `block_on`, or async-io's helper thread) calls that waker, and the
//!    executor queues the listener task again. Polled, `accept` succeeds.
//! 2. [`listen`] spawns [`serve`] for the new socket: `executor.spawn`
//!    wraps the future in a task and queues it; `detach` lets it run to its
//!    end with nobody holding its handle.
//! 3. [`Connection::serve_requests`] reads the request at once (it has
//!    usually arrived by the time the connection is accepted), and
//!    [`Connection::serve_request`] finds the head ([`take_head`],
//!    [`parse_head`]), picks the route ([`choose_route`]), reads the body
//!    ([`Connection::read_body`]) and calls [`submit`].
//! 4. [`submit`] checks the body ([`parse_submission`]), takes the store
//!    lock, and [`Store::admit`] does `try_send(id)` on the queue's channel
//!    and records the task, both or neither. The `202` goes into the
//!    connection's output and [`Connection::flush`] writes it.
//! 5. A worker of that queue was waiting in [`next_work`] on `recv()`: the
//!    channel kept its waker, and `try_send` woke it, queueing the worker
//!    task. [`Store::begin_attempt`] marks the task running and wakes the
//!    long polls that watch it ([`Store::wake_watchers`]).
//! 6. [`sleep`] races an `async_io::Timer` against [`interruption`] (the
//!    cancel and `grace_over` triggers and a timeout) with `future::or`:
//!    the timer registers with the reactor, which shortens its epoll wait
//!    to the earliest timer and wakes the worker when it passes.
//! 7. [`Store::end_attempt`] records `succeeded`; [`Store::set_state`],
//!    the one place every change goes through, writes the journal record,
//!    counts it, fires the task's watchers [`Trigger`] and feeds the event
//!    streams.
//! 8. The second connection's [`Connection::long_poll`] was waiting on that
//!    trigger (and on its deadline, and on the client going away); the fire
//!    wakes it, it reads the task again and answers `200`. (A long poll
//!    answers on any change: one made while the task was queued is answered
//!    `running` at step 5, and the client asks again.) Then
//!    [`Connection::flush`] writes it with `write_with` — which, when the
//!    socket's buffer is full, leaves its waker with the reactor until
//!    epoll says the socket is writable again.
//!
//! # Shutdown, in order
//!
//! 1. SIGINT or SIGTERM fires `draining`: the listener takes in what waits
//!    in its backlog and closes its socket; new tasks and `/healthz` get
//!    `503` (idle keep-alive connections stay open to say so); the job
//!    channels close, so workers take no new task; the scheduler stops;
//!    event streams say `shutdown` and end.
//! 2. Requests in flight are answered and running tasks may finish, for up to
//!    `--grace`.
//! 3. Then `grace_over` fires: every running task is interrupted (sleeps
//!    end, programs get SIGTERM and 1 s later SIGKILL).
//! 4. The process exits 0 as soon as nothing is left to wait for. A second
//!    signal, until then, exits at once with status 1 (in the last moments,
//!    while the journal writes what is left, it is not listened for).
//!
//! # Map of this file
//!
//! 1. Configuration and flags
//! 2. Task model and store
//! 3. Worker pool: triggers, queues, workers, the scheduler
//! 4. Periodic tasks: cron specs and firings
//! 5. Handlers: the built-in sleep and external programs (and progress)
//! 6. Journal (`--data-dir`)
//! 7. HTTP/1.1 codec
//! 8. Routes
//! 9. Events and the dashboard
//! 10. Connections and the listener
//! 11. Signals, shutdown and `main`
//! 12. Tests of the pure pieces
//!
//! The client of SPEC §16 (`bgtasks COMMAND …`) is the module [`client`].

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender, TrySendError};
use async_executor::Executor;
use async_io::{Async, Timer};
use log::{debug, error, info, warn};
use serde::Deserialize;
use smol::future;

mod client;

// ---- 1. Configuration and flags ----
//
// Every flag has an environment variable (a flag beats its variable), and
// every value is checked before anything is bound: a bad one prints one line
// and exits 2, so a typo in a unit file fails loudly instead of half-starting.

/// The most workers a server may run: each is a small task, but a typo such
/// as `--workers 10000000` should be refused rather than obeyed.
const MAX_WORKERS: usize = 100_000;

/// The largest queue: the channel allocates its slots up front (16 bytes
/// each), so ten million slots already cost 160 MB before any task arrives.
const MAX_BUFFER: usize = 10_000_000;

/// The most executor threads: far past any core count that pays, low
/// enough that a typo does not start a million threads.
const MAX_THREADS: usize = 1024;

/// The largest `Retry-After`: about 31 years, past any sensible value but
/// well within what clients parse.
const MAX_RETRY_AFTER: usize = 1_000_000_000;

/// The most finished tasks kept: each costs about 100 bytes, so this is
/// ten gigabytes, a typo's worth rather than a plan.
const MAX_KEEP_FINISHED: usize = 100_000_000;

/// The largest request body a server will accept: bodies are held in memory
/// whole, one per connection.
const MAX_MAX_BODY: usize = 64 << 20;

/// The most connections a server may hold: each costs a file descriptor
/// and a few kilobytes, and a million is past any one process's budget.
const MAX_CONNECTIONS: usize = 1_000_000;

/// The longest task kind: kinds are names in flags and logs, not data.
const MAX_KIND_LEN: usize = 64;

/// The most queues, `default` included: a task keeps its queue's index in
/// one byte, and a box that needs more wants a broker.
const MAX_QUEUES: usize = 256;

/// The longest queue or schedule name: a short word in URLs, labels and
/// logs.
const MAX_NAME_LEN: usize = 32;

/// The most `--schedule`s: a task keeps the index of its schedule in two
/// bytes, and a box with more periodic work than this wants cron itself.
const MAX_SCHEDULES: usize = 1024;

/// The most delayed tasks a server may be told to hold at once: each costs
/// about 120 bytes, so this is past a gigabyte.
const MAX_SCHEDULED: usize = 10_000_000;

/// Every flag the command line knows: the one place where its name, its
/// environment variable, its default, its range and its help live, so that
/// `--help`, the checks and the defaults cannot disagree.
const FLAGS: &[Flag] = &[
    Flag::new("--addr", "ADDR", "listen address, an IP and a port")
        .env("BGTASKS_ADDR")
        .default("127.0.0.1:8000"),
    Flag::new("--workers", "N", "workers running tasks")
        .env("BGTASKS_WORKERS")
        .default("10")
        .range(1, MAX_WORKERS),
    Flag::new(
        "--buffer",
        "N",
        "queue capacity: tasks waiting beyond the running ones",
    )
    .env("BGTASKS_BUFFER")
    .default("100")
    .range(1, MAX_BUFFER),
    Flag::new(
        "--threads",
        "N",
        "executor threads (default: the available cores)",
    )
    .env("BGTASKS_THREADS")
    .range(1, MAX_THREADS),
    Flag::new(
        "--grace",
        "DURATION",
        "how long shutdown waits for requests and tasks",
    )
    .env("BGTASKS_GRACE")
    .default("5s"),
    Flag::new(
        "--retry-after",
        "SECONDS",
        "Retry-After of a queue-full 503",
    )
    .env("BGTASKS_RETRY_AFTER")
    .default("60")
    .range(0, MAX_RETRY_AFTER),
    Flag::new("--keep-finished", "N", "finished tasks kept queryable")
        .env("BGTASKS_KEEP_FINISHED")
        .default("10000")
        .range(1, MAX_KEEP_FINISHED),
    Flag::new("--max-body", "BYTES", "largest request body")
        .env("BGTASKS_MAX_BODY")
        .default("65536")
        .range(1, MAX_MAX_BODY),
    Flag::new("--max-connections", "N", "open connections at once")
        .env("BGTASKS_MAX_CONNECTIONS")
        .default("1024")
        .range(1, MAX_CONNECTIONS),
    Flag::new("--data-dir", "DIR", "keep tasks in a journal in DIR").env("BGTASKS_DATA_DIR"),
    Flag::new(
        "--handler",
        "KIND=PROGRAM",
        "run PROGRAM for tasks of KIND (repeatable)",
    ),
    Flag::new(
        "--queue",
        "NAME=WORKERS[/BUFFER]",
        "a queue with its own workers and capacity (repeatable)",
    ),
    Flag::new(
        "--schedule",
        "NAME=SPEC TEMPLATE",
        "a periodic task: cron SPEC, submission TEMPLATE (repeatable)",
    ),
    Flag::new(
        "--max-scheduled",
        "N",
        "delayed tasks waiting for their time, at most",
    )
    .env("BGTASKS_MAX_SCHEDULED")
    .default("100000")
    .range(1, MAX_SCHEDULED),
    Flag::new(
        "--node",
        "NAME",
        "prefix new ids with NAME_, for several servers behind a proxy",
    )
    .env("BGTASKS_NODE"),
    Flag::new("--token", "TOKEN", "require Authorization: Bearer TOKEN").env("BGTASKS_TOKEN"),
    Flag::new("--log-level", "LEVEL", "error, warn, info, debug or trace")
        .env("RUST_LOG")
        .default("info"),
];

/// A flag the command line knows; see [`FLAGS`].
struct Flag {
    /// The long name, with its dashes.
    name: &'static str,
    /// What its value is called in `--help`.
    value: &'static str,
    /// What it is for, in `--help`.
    help: &'static str,
    /// The environment variable read when the flag is absent.
    env: Option<&'static str>,
    /// The value used when neither the flag nor its variable gives one,
    /// checked like a given one.
    default: Option<&'static str>,
    /// For a number, the smallest and largest allowed.
    range: Option<(usize, usize)>,
}

impl Flag {
    /// Describes a flag with no variable, no default and no range.
    const fn new(name: &'static str, value: &'static str, help: &'static str) -> Flag {
        Flag {
            name,
            value,
            help,
            env: None,
            default: None,
            range: None,
        }
    }

    /// Names the environment variable behind the flag.
    const fn env(self, env: &'static str) -> Flag {
        Flag {
            env: Some(env),
            ..self
        }
    }

    /// Gives the flag a default.
    const fn default(self, default: &'static str) -> Flag {
        Flag {
            default: Some(default),
            ..self
        }
    }

    /// Makes the flag a whole number from `low` to `high`.
    const fn range(self, low: usize, high: usize) -> Flag {
        Flag {
            range: Some((low, high)),
            ..self
        }
    }

    /// Whether the flag may be given more than once, each time adding one.
    fn repeatable(&self) -> bool {
        self.help.ends_with("(repeatable)")
    }
}

/// Returns the usage text printed by `--help`, made from [`FLAGS`].
fn usage() -> String {
    let mut text = format!(
        "bgtasks: a background task manager over HTTP/1.1\n\n\
         Usage: bgtasks [OPTIONS]\n       {}\n\n\
         Options (a flag beats its environment variable):\n",
        client::USAGE
    );
    for flag in FLAGS {
        let name = format!("{} {}", flag.name, flag.value);
        // A name too long for its column has its help on the next line.
        match name.len() {
            0..24 => {
                let _ = write!(text, "  {name:<24} {}", flag.help);
            }
            _ => {
                let _ = write!(text, "  {name}\n  {:<24} {}", "", flag.help);
            }
        }
        if let Some((low, high)) = flag.range {
            let _ = write!(text, ", {low} to {high}");
        }
        let env = flag.env.map(|var| format!("env {var}"));
        let default = flag.default.map(|value| format!("default {value}"));
        let second: Vec<String> = env.into_iter().chain(default).collect();
        if !second.is_empty() {
            let _ = write!(text, "\n  {:<24} {}", "", second.join(", "));
        }
        text.push('\n');
    }
    text.push_str(
        "  -h, --help               print this help\n  \
         -V, --version            print the version\n\n\
         Durations use Go syntax: 300ms, 1.5h, 1m30s; units ns us µs μs ms s m h.\n\
         RUST_LOG is read as env_logger reads it (debug, bgtasks=debug, warn,hyper=off).\n",
    );
    text
}

/// Everything the command line and environment decide, checked.
#[derive(Debug)]
struct Config {
    /// Where the listener binds.
    addr: SocketAddr,
    /// The queues, `default` (from `--workers` and `--buffer`) first, then
    /// the `--queue`s in the order given.
    queues: Vec<QueueConfig>,
    /// How many delayed tasks may wait for their time at once.
    max_scheduled: usize,
    /// The periodic tasks, in the order given.
    schedules: Vec<ScheduleConfig>,
    /// Threads that run the executor; `None` is one per available core,
    /// found only once the listener is up (reading the cgroup limits takes
    /// a while, and a client can connect meanwhile).
    threads: Option<usize>,
    /// How long shutdown waits for requests and running tasks.
    grace: Duration,
    /// Seconds sent in `Retry-After` with a queue-full `503`.
    retry_after: u64,
    /// How many finished tasks stay queryable before the earliest go.
    keep_finished: usize,
    /// The largest request body accepted, in bytes.
    max_body: usize,
    /// How many connections may be open at once.
    max_connections: usize,
    /// Where the journal lives; `None` keeps tasks in memory only.
    data_dir: Option<PathBuf>,
    /// Registered task kinds and the programs that run them.
    handlers: Vec<Handler>,
    /// The bearer token every route but `/healthz` requires, if any.
    token: Option<String>,
    /// The prefix of new ids: `--node` and `_`, or empty.
    node: &'static str,
    /// The most verbose log level printed.
    log_level: log::LevelFilter,
}

/// A queue as the command line describes it.
#[derive(Debug)]
struct QueueConfig {
    /// Its name, in task status, `/queues` and metric labels.
    name: Arc<str>,
    /// How many worker tasks it runs.
    workers: usize,
    /// The capacity of its channel: tasks waiting beyond the running ones.
    buffer: usize,
}

/// A task kind registered with `--handler KIND=PROGRAM`.
#[derive(Debug)]
struct Handler {
    /// The `kind` a task names to be run by this handler.
    kind: Arc<str>,
    /// The resolved program path: checked to exist and be executable at start.
    program: PathBuf,
    /// Arguments given after the program, split on runs of spaces.
    args: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    /// Run the server (boxed: a configuration is large, the others empty).
    Run(Box<Config>),
    /// Print the usage text and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// Parses the command line and environment into a [`Command`].
///
/// `env` looks a variable up; tests pass a closure instead of the real
/// environment. The error is the one line printed before exiting with 2.
fn parse_command(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, String> {
    let mut given: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument {a:?} is not valid UTF-8"))?;
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (arg.as_str(), None),
        };
        let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
            // A client command among server flags must not start a
            // server: say where it goes.
            return Err(client::misplaced(&arg)
                .unwrap_or_else(|| format!("unknown argument {arg:?} (try --help)")));
        };
        let value = match inline {
            Some(v) => v.to_string(),
            None => args
                .next()
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        let values = given.entry(flag.name).or_default();
        if !flag.repeatable() {
            values.clear();
        }
        values.push(value);
    }
    Flags { given, env: &env }
        .config()
        .map(|config| Command::Run(Box::new(config)))
}

/// The flags as given on the command line, and the environment behind
/// them, read through [`FLAGS`].
struct Flags<'a, E> {
    /// Every value given for each flag, in order.
    given: HashMap<&'static str, Vec<String>>,
    /// Looks an environment variable up.
    env: &'a E,
}

impl<E: Fn(&str) -> Option<String>> Flags<'_, E> {
    /// Checks every flag and builds the configuration.
    fn config(&self) -> Result<Config, String> {
        let mut config = Config {
            addr: self.required("--addr", parse_addr)?,
            queues: self.queues()?,
            max_scheduled: self.number("--max-scheduled")?,
            threads: self.optional("--threads", |v| parse_in("--threads", v))?,
            grace: self.required("--grace", parse_duration)?,
            retry_after: self.number("--retry-after")? as u64,
            keep_finished: self.number("--keep-finished")?,
            max_body: self.number("--max-body")?,
            max_connections: self.number("--max-connections")?,
            data_dir: self.optional("--data-dir", |v| match v {
                "" => Err("the path is empty".to_string()),
                v => Ok(PathBuf::from(v)),
            })?,
            handlers: self.handlers()?,
            token: self.optional("--token", parse_token)?,
            node: self.optional("--node", parse_node)?.unwrap_or(""),
            log_level: self.log_level()?,
            schedules: Vec::new(),
        };
        // Templates are checked like submissions: against the kinds and
        // queues just read.
        for spec in self.all("--schedule") {
            let schedule = parse_schedule(spec, &config)?;
            if config.schedules.iter().any(|s| s.name == schedule.name) {
                return Err(format!("--schedule {spec:?}: the name is given twice"));
            }
            config.schedules.push(schedule);
        }
        if config.schedules.len() > MAX_SCHEDULES {
            return Err(format!("--schedule: at most {MAX_SCHEDULES} schedules"));
        }
        Ok(config)
    }

    /// Returns every value given for a repeatable flag.
    fn all(&self, name: &str) -> &[String] {
        self.given.get(name).map_or(&[], Vec::as_slice)
    }

    /// Returns a flag's value and where it came from: the flag, else its
    /// environment variable, else its default.
    fn lookup(&self, name: &'static str) -> Option<(String, String)> {
        let flag = FLAGS.iter().find(|f| f.name == name)?;
        if let Some(value) = self.all(name).last() {
            return Some((name.to_string(), value.clone()));
        }
        if let Some(var) = flag.env
            && let Some(value) = (self.env)(var)
        {
            return Some((var.to_string(), value));
        }
        flag.default
            .map(|value| (format!("the default of {name}"), value.to_string()))
    }

    /// Parses a flag's value with `parse`, naming its source in the error;
    /// `None` when it has no value and no default.
    fn optional<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.lookup(name) {
            None => Ok(None),
            Some((source, value)) => parse(&value)
                .map(Some)
                .map_err(|e| format!("{source}: {e}")),
        }
    }

    /// Parses a flag that always has a value (its default, if nothing else).
    fn required<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        self.optional(name, parse)?
            .ok_or_else(|| format!("{name} needs a value"))
    }

    /// Parses a whole number within the flag's range.
    fn number(&self, name: &'static str) -> Result<usize, String> {
        self.required(name, |v| parse_in(name, v))
    }

    /// Builds the queues: `default` from `--workers` and `--buffer`, then
    /// every `--queue`, none named twice.
    fn queues(&self) -> Result<Vec<QueueConfig>, String> {
        let mut queues = vec![QueueConfig {
            name: Arc::from("default"),
            workers: self.number("--workers")?,
            buffer: self.number("--buffer")?,
        }];
        for spec in self.all("--queue") {
            let queue = parse_queue(spec)?;
            if queues.iter().any(|q| q.name == queue.name) {
                return Err(format!("--queue {spec:?}: the queue is given twice"));
            }
            queues.push(queue);
        }
        if queues.len() > MAX_QUEUES {
            return Err(format!("--queue: at most {} queues", MAX_QUEUES - 1));
        }
        Ok(queues)
    }

    /// Checks every `--handler`, and that no kind is registered twice.
    fn handlers(&self) -> Result<Vec<Handler>, String> {
        let mut handlers: Vec<Handler> = Vec::new();
        for spec in self.all("--handler") {
            let handler = parse_handler(spec, self.env)?;
            if handlers.iter().any(|h| h.kind == handler.kind) {
                return Err(format!(
                    "--handler: kind {:?} is registered twice",
                    handler.kind
                ));
            }
            handlers.push(handler);
        }
        Ok(handlers)
    }

    /// Reads the log level: `--log-level` strictly (one of the five
    /// levels), else `RUST_LOG` the way env_logger reads it, which is never
    /// an error: a variable meant for another program must not stop this
    /// one from starting.
    fn log_level(&self) -> Result<log::LevelFilter, String> {
        if self.all("--log-level").is_empty()
            && let Some(spec) = (self.env)("RUST_LOG")
        {
            return Ok(level_from_rust_log(&spec).unwrap_or(log::LevelFilter::Info));
        }
        self.required("--log-level", |v| {
            parse_level(v)
                .filter(|&level| level != log::LevelFilter::Off)
                .ok_or_else(|| format!("{v:?} is not one of error, warn, info, debug, trace"))
        })
    }
}

/// Parses a whole decimal number within the range [`FLAGS`] gives `name`.
fn parse_in(name: &str, value: &str) -> Result<usize, String> {
    let (low, high) = FLAGS
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.range)
        .unwrap_or((0, usize::MAX));
    match value.parse::<usize>() {
        Ok(n) if (low..=high).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from {low} to {high}, got {value:?}"
        )),
    }
}

/// Parses a listen address: an IP and a port (no host names, which would
/// need a resolver and could name several addresses).
fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not an address such as 127.0.0.1:8000 or [::1]:8000"))
}

/// The longest `--node` name: ids stay within 32 characters.
const MAX_NODE_LEN: usize = 16;

/// Checks a `--node` name, 1 to 16 of `a-z 0-9`, and returns the prefix of
/// new ids, `NAME_`. It lives as long as the process: it is leaked once,
/// so that every id can point at it.
fn parse_node(value: &str) -> Result<&'static str, String> {
    if !is_node_name(value) {
        return Err(format!(
            "the node name must be 1 to {MAX_NODE_LEN} characters of a-z 0-9"
        ));
    }
    Ok(Box::leak(format!("{value}_").into_boxed_str()))
}

/// Tells whether `name` may be a `--node`: 1 to 16 of `a-z 0-9`.
fn is_node_name(name: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=MAX_NODE_LEN).contains(&name.len()) && name.bytes().all(ok)
}

/// Checks a bearer token: one or more visible ASCII characters, so that it
/// fits in a header unchanged.
fn parse_token(value: &str) -> Result<String, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be one or more visible ASCII characters".to_string());
    }
    Ok(value.to_string())
}

/// Parses a log level name (the five, or `off`) in any case.
fn parse_level(name: &str) -> Option<log::LevelFilter> {
    match name.to_ascii_lowercase().as_str() {
        "off" => Some(log::LevelFilter::Off),
        "error" => Some(log::LevelFilter::Error),
        "warn" => Some(log::LevelFilter::Warn),
        "info" => Some(log::LevelFilter::Info),
        "debug" => Some(log::LevelFilter::Debug),
        "trace" => Some(log::LevelFilter::Trace),
        _ => None,
    }
}

/// Reads `RUST_LOG` as env_logger does — a comma list of `LEVEL`,
/// `TARGET=LEVEL` and `TARGET` (every level) directives, then optionally
/// `/regex`, which is ignored here — and returns the level it gives
/// bgtasks: that of the last `bgtasks` directive, else of the last bare
/// level; `None` if neither is there. Directives for other targets, and
/// ones that do not parse, are ignored, as env_logger ignores them.
fn level_from_rust_log(spec: &str) -> Option<log::LevelFilter> {
    let directives = spec.split('/').next().unwrap_or_default();
    let (mut ours, mut bare) = (None, None);
    for directive in directives.split(',').map(str::trim) {
        match directive.split_once('=') {
            Some((target, level)) if target.trim().eq_ignore_ascii_case("bgtasks") => {
                ours = parse_level(level.trim()).or(ours);
            }
            Some(_) => {}
            None if directive.eq_ignore_ascii_case("bgtasks") => {
                ours = Some(log::LevelFilter::Trace);
            }
            None => bare = parse_level(directive).or(bare),
        }
    }
    ours.or(bare)
}

/// Parses `NAME=WORKERS[/BUFFER]`: a queue other than `default`, with its
/// workers and, unless given, the default capacity of `--buffer`.
fn parse_queue(spec: &str) -> Result<QueueConfig, String> {
    let bad = |why: String| format!("--queue {spec:?}: {why}");
    let (name, sizes) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=WORKERS[/BUFFER]".to_string()))?;
    check_name(name).map_err(bad)?;
    if name == "default" {
        return Err(bad(
            "the queue \"default\" is made by --workers and --buffer".to_string(),
        ));
    }
    let (workers, buffer) = match sizes.split_once('/') {
        Some((workers, buffer)) => (workers, buffer),
        None => (sizes, default_of("--buffer")),
    };
    Ok(QueueConfig {
        name: Arc::from(name),
        workers: parse_in("--workers", workers).map_err(|e| bad(format!("WORKERS: {e}")))?,
        buffer: parse_in("--buffer", buffer).map_err(|e| bad(format!("BUFFER: {e}")))?,
    })
}

/// Returns a flag's default from [`FLAGS`].
fn default_of(name: &str) -> &'static str {
    FLAGS
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.default)
        .unwrap_or_default()
}

/// Checks a queue or schedule name: 1 to [`MAX_NAME_LEN`] of `a-z 0-9 _ -`,
/// so it can stand in a URL path and a metric label as it is.
fn check_name(name: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(ok) {
        return Err(format!(
            "NAME must be 1 to {MAX_NAME_LEN} characters of a-z 0-9 _ -"
        ));
    }
    Ok(())
}

/// Parses `KIND=PROGRAM [ARGS…]`, resolving PROGRAM like `execvp` would and
/// checking that it is an executable file, so a typo fails at start rather
/// than at the first task.
fn parse_handler(spec: &str, env: &impl Fn(&str) -> Option<String>) -> Result<Handler, String> {
    let bad = |why: &str| format!("--handler {spec:?}: {why}");
    let (kind, command) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected KIND=PROGRAM"))?;
    if kind.is_empty() || kind.len() > MAX_KIND_LEN || !kind.bytes().all(is_kind_byte) {
        return Err(bad(&format!(
            "KIND must be 1 to {MAX_KIND_LEN} characters of A-Z a-z 0-9 _ . -"
        )));
    }
    if kind == "sleep" {
        return Err(bad("the kind \"sleep\" is built in"));
    }
    let mut words = command.split(' ').filter(|w| !w.is_empty());
    let program = words.next().ok_or_else(|| bad("PROGRAM is missing"))?;
    let resolved = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        env("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|p| is_executable(p))
    };
    match resolved {
        Some(path) if is_executable(&path) => Ok(Handler {
            kind: Arc::from(kind),
            program: path,
            args: words.map(String::from).collect(),
        }),
        _ => Err(bad(&format!(
            "{program:?} does not exist or is not an executable file"
        ))),
    }
}

/// Tells whether a byte may appear in a task kind.
fn is_kind_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Tells whether `path` is a regular file with an execute bit set.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Parses a duration exactly as Go's `time.ParseDuration` does — units `ns`,
/// `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h`, fractions, a lone
/// `0` — and refuses negative values, which no wait in bgtasks can use.
///
/// Like Go it counts in unsigned 64-bit nanoseconds, refuses anything past
/// `2562047h47m16.854775807s` (`i64::MAX` ns), and truncates fractions below
/// one nanosecond. The error is a sentence for the flag parser's message.
fn parse_duration(text: &str) -> Result<Duration, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("invalid duration {text:?}");
    let (negative, mut s) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    if s == b"0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // The whole part: refuse it as soon as it passes 2^63.
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut whole: u64 = 0;
        for &d in &s[..digits] {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u64::from(d - b'0')))
                .filter(|&w| w <= LIMIT)
                .ok_or_else(invalid)?;
        }
        s = &s[digits..];
        // The fraction: digits past what fits are read and ignored, as Go does.
        let (mut fraction, mut scale, mut fraction_digits) = (0u64, 1f64, 0);
        if let [b'.', rest @ ..] = s {
            fraction_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let mut overflow = false;
            for &d in &rest[..fraction_digits] {
                match fraction
                    .checked_mul(10)
                    .and_then(|f| f.checked_add(u64::from(d - b'0')))
                {
                    Some(f) if !overflow && fraction <= (LIMIT - 1) / 10 && f <= LIMIT => {
                        fraction = f;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            s = &rest[fraction_digits..];
        } else if digits == 0 {
            return Err(invalid());
        }
        if digits == 0 && fraction_digits == 0 {
            return Err(invalid());
        }
        let unit_len = s
            .iter()
            .take_while(|&&b| b != b'.' && !b.is_ascii_digit())
            .count();
        let unit: u64 = match &s[..unit_len] {
            b"ns" => 1,
            // "µs" (micro sign) and "μs" (Greek mu) in UTF-8.
            b"us" | b"\xC2\xB5s" | b"\xCE\xBCs" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            [] => return Err(format!("missing unit in duration {text:?}")),
            _ => return Err(format!("unknown unit in duration {text:?}")),
        };
        s = &s[unit_len..];
        if whole > LIMIT / unit {
            return Err(invalid());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // Go's own rounding: float64(f) * (float64(unit) / scale).
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|&t| t <= LIMIT)
            .ok_or_else(invalid)?;
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    if negative && total > 0 {
        return Err(format!("negative duration {text:?}"));
    }
    Ok(Duration::from_nanos(total))
}

// ---- 2. Task model and store ----
//
// A task is a small record in one `Store` behind one mutex. Every change of
// state happens under that lock, which is what makes admission atomic (the
// channel slot and the record appear together or not at all) and lets
// `/tasks` counts and `/metrics` agree at every moment.
//
// Records are kept in a `VecDeque` ordered by id. Ids grow with time, so a
// new task always goes at the back and a lookup is a search by id (see
// `Store::position`); finished
// tasks that `--keep-finished` evicts leave a tombstone that is dropped from
// the front, or swept when tombstones pile up. Compared with a hash map this
// costs no per-entry overhead, which matters: a queued task with its status
// record fits in about 100 bytes.

/// Tombstones are swept from the middle of the store only past this many:
/// a sweep moves every record, so it waits until it frees a fair amount.
const TOMBSTONE_SWEEP: usize = 64;

/// The lifecycle of a task. The order is the order of `counts` in `/tasks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A delayed task waiting for its `run_at`, in no queue yet.
    Scheduled,
    /// Waiting in the queue, or waiting for its retry.
    Queued,
    /// A worker is running an attempt.
    Running,
    /// An attempt succeeded. Terminal.
    Succeeded,
    /// The last attempt failed. Terminal.
    Failed,
    /// Cancelled by a client. Terminal.
    Cancelled,
    /// Evicted by `--keep-finished`; only the id is left, until the
    /// tombstone is swept.
    Evicted,
}

/// The states a client sees, in the order `counts` lists them.
const STATES: [State; 6] = [
    State::Scheduled,
    State::Queued,
    State::Running,
    State::Succeeded,
    State::Failed,
    State::Cancelled,
];

impl State {
    /// Returns the name clients see.
    fn name(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Evicted => "evicted",
        }
    }

    /// Parses a state name from a `?state=` filter.
    fn from_name(name: &str) -> Option<State> {
        STATES.into_iter().find(|s| s.name() == name)
    }

    /// Tells whether a client should stop polling.
    fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// How many bytes a [`Text`] keeps inline: enough for nearly every label
/// and duration, and it keeps `Text` at 24 bytes, the size of a `String`.
const INLINE_TEXT: usize = 22;

/// A short string kept inside the record, or a longer one on the heap.
///
/// Tuning: the plain version is a `String`. Labels such as `"job-1234"`
/// and durations such as `"60s"` fit inline, so a queued task costs no
/// allocation beyond its slot in the store (about 90 bytes a task).
#[derive(Clone, Debug)]
enum Text {
    /// Up to [`INLINE_TEXT`] bytes of UTF-8 and their length.
    Inline(u8, [u8; INLINE_TEXT]),
    /// Anything longer.
    Heap(Box<str>),
}

impl Text {
    /// Stores `s`, inline when it fits.
    fn new(s: &str) -> Text {
        if s.len() <= INLINE_TEXT {
            let mut bytes = [0; INLINE_TEXT];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Text::Inline(s.len() as u8, bytes)
        } else {
            Text::Heap(s.into())
        }
    }

    /// Returns the string.
    fn as_str(&self) -> &str {
        match self {
            // Inline bytes were copied from a `&str`, so they are UTF-8.
            Text::Inline(len, bytes) => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or(""),
            Text::Heap(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One task's status record.
///
/// Tuning: the plain version has every member inline. What most tasks need
/// is; the rest (kind, payload, timeout, error, result, retry time,
/// idempotency key, schedule, progress) lives in [`Extra`], allocated only
/// for the tasks that use it: a plain sleep task's record is 96 bytes
/// instead of 232.
#[derive(Debug)]
struct Task {
    /// The server's id: microseconds since the epoch at creation, made
    /// unique and increasing (see [`Store::issue_id`]).
    id: u64,
    /// When the current or last attempt started, ms since the epoch; 0 if none.
    started_at: u64,
    /// When the task reached a terminal state, ms since the epoch; 0 if not.
    finished_at: u64,
    /// When a delayed task asked to run, ms since the epoch; 0 if it did not.
    run_at: u64,
    /// The client's `task_id` label.
    label: Option<Text>,
    /// `work_duration` exactly as the client sent it.
    work_duration: Option<Text>,
    /// Everything a plain `sleep` task does not need.
    extra: Option<Box<Extra>>,
    /// Where the task is in its lifecycle.
    state: State,
    /// The current or last attempt's number; 0 before the first.
    attempt: u8,
    /// Attempts allowed before the task fails.
    max_attempts: u8,
    /// The index of its queue in [`Config::queues`].
    queue: u8,
}

/// The rarely used parts of a task.
#[derive(Debug, Default)]
struct Extra {
    /// The handler kind; `None` is the built-in `sleep`.
    kind: Option<Arc<str>>,
    /// The payload as JSON text, handed to the handler on stdin.
    payload: Option<Box<str>>,
    /// The per-attempt timeout as the client sent it.
    timeout: Option<Text>,
    /// When a failed attempt's retry is due, ms since the epoch; 0 if none.
    retry_at: u64,
    /// Why the last attempt failed.
    error: Option<Box<str>>,
    /// The handler's output, as JSON text.
    result: Option<Box<str>>,
    /// The `Idempotency-Key` the task was created with.
    key: Option<IdempotencyKey>,
    /// The index of the `--schedule` that made it.
    schedule: Option<u16>,
    /// The last progress its handler reported, as JSON text.
    progress: Option<Box<str>>,
}

/// An `Idempotency-Key` and what it was first used for.
#[derive(Clone, Debug)]
struct IdempotencyKey {
    /// The key as the client sent it.
    text: Box<str>,
    /// A fingerprint of the route and body of the request that first used
    /// it ([`fingerprint`]), so that a different request with the same key
    /// is told apart without keeping the body; 0 if unknown (a journal
    /// written before fingerprints were kept).
    fingerprint: u64,
}

/// Fingerprints a submission by its route and the bytes of its body, with
/// 64-bit FNV-1a: collisions between two requests one client mixes up are
/// out of the question, and the value is the same in every build, so it
/// can be journaled.
fn fingerprint(route: &str, body: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let bytes = route.bytes().chain([0]).chain(body.iter().copied());
    bytes.fold(OFFSET, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

// How a task reads and writes journal records is in section 6.
impl Task {
    /// Builds the record of a newly admitted task.
    fn from_new(id: u64, new: NewTask, state: State) -> Task {
        let needs_extra = new.kind.is_some()
            || new.payload.is_some()
            || new.timeout.is_some()
            || new.key.is_some()
            || new.schedule.is_some();
        Task {
            id,
            started_at: 0,
            finished_at: 0,
            run_at: new.run_at,
            label: new.label,
            work_duration: new.work_duration,
            extra: needs_extra.then(|| {
                Box::new(Extra {
                    kind: new.kind,
                    payload: new.payload,
                    timeout: new.timeout,
                    key: new.key,
                    schedule: new.schedule,
                    ..Extra::default()
                })
            }),
            state,
            attempt: 0,
            max_attempts: new.max_attempts,
            queue: new.queue,
        }
    }

    /// Returns when the task was created (ms since the epoch): ids are
    /// creation times in microseconds.
    fn created_at(&self) -> u64 {
        self.id / 1000
    }

    /// Returns the task's kind name.
    fn kind(&self) -> &str {
        self.extra
            .as_ref()
            .and_then(|e| e.kind.as_deref())
            .unwrap_or("sleep")
    }

    /// Returns the extra part, creating it on first use.
    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Writes the members of the status object of `GET /tasks/{id}`;
    /// `names` are those of its queue and schedule. `error` replaces the
    /// task's own `error` member, for answers whose `error` is a sentence
    /// about the request (a `409`).
    fn write_members(&self, out: &mut Vec<u8>, names: Names, error: Option<&str>) {
        let extra = self.extra.as_deref();
        out.extend_from_slice(b"\"id\": ");
        names.id.write_json(out);
        out.extend_from_slice(b", \"task_id\": ");
        write_json_opt(out, self.label.as_ref().map(Text::as_str));
        out.extend_from_slice(b", \"kind\": ");
        write_json_str(out, self.kind());
        out.extend_from_slice(b", \"queue\": ");
        write_json_str(out, names.queue);
        out.extend_from_slice(b", \"state\": \"");
        out.extend_from_slice(self.state.name().as_bytes());
        out.extend_from_slice(b"\", \"work_duration\": ");
        write_json_opt(out, self.work_duration.as_ref().map(Text::as_str));
        out.extend_from_slice(b", \"attempt\": ");
        write_decimal(out, u64::from(self.attempt));
        out.extend_from_slice(b", \"max_attempts\": ");
        write_decimal(out, u64::from(self.max_attempts));
        out.extend_from_slice(b", \"created_at\": ");
        write_timestamp(out, self.created_at());
        out.extend_from_slice(b", \"run_at\": ");
        write_timestamp(out, self.run_at);
        out.extend_from_slice(b", \"started_at\": ");
        write_timestamp(out, self.started_at);
        out.extend_from_slice(b", \"finished_at\": ");
        write_timestamp(out, self.finished_at);
        out.extend_from_slice(b", \"retry_at\": ");
        write_timestamp(out, extra.map_or(0, |e| e.retry_at));
        out.extend_from_slice(b", \"schedule\": ");
        write_json_opt(out, names.schedule);
        out.extend_from_slice(b", \"progress\": ");
        write_raw_opt(out, extra.and_then(|e| e.progress.as_deref()));
        out.extend_from_slice(b", \"error\": ");
        write_json_opt(out, error.or(extra.and_then(|e| e.error.as_deref())));
        out.extend_from_slice(b", \"result\": ");
        write_raw_opt(out, extra.and_then(|e| e.result.as_deref()));
    }

    /// Writes the whole status object.
    fn write_json(&self, out: &mut Vec<u8>, names: Names) {
        out.push(b'{');
        self.write_members(out, names, None);
        out.push(b'}');
    }
}

/// The names of a task's queue and schedule, for its status: the task keeps
/// only their indexes.
#[derive(Clone, Copy, Debug)]
struct Names<'a> {
    /// Its id, prefix included.
    id: TaskId,
    /// Its queue's name.
    queue: &'a str,
    /// Its schedule's name, if a schedule made it.
    schedule: Option<&'a str>,
}

/// Appends JSON text as it is, or `null`.
fn write_raw_opt(out: &mut Vec<u8>, json: Option<&str>) {
    out.extend_from_slice(json.unwrap_or("null").as_bytes());
}

/// Lets `write!` append to a `Vec<u8>` through `fmt::Write`, which cannot
/// fail, so callers may ignore its `Result`.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `s` as a JSON string literal.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Tuning: names and kinds are written into every status and event and
    // almost never need escaping, so they are copied when they do not.
    if s.bytes().all(|b| b >= b' ' && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Serializing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `s` as a JSON string, or `null`.
fn write_json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// The id alphabet, in ASCII order so that ids sort as strings the way
/// their numbers do; every character is URL-safe.
const ID_ALPHABET: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// Characters in an id: 9 × 6 = 54 bits, microseconds until the year 2540.
const ID_LEN: usize = 9;

/// A task's id as clients see it: the prefix of the node that made it
/// (`NAME_`, or empty) and the 9 characters of its number. The number alone
/// is unique; the prefix tells a proxy which server owns the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TaskId {
    /// `NAME_` of `--node`, or empty.
    node: &'static str,
    /// The number: when the task was made, in microseconds.
    num: u64,
}

impl TaskId {
    /// Appends the id.
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.node.as_bytes());
        write_id(out, self.num);
    }

    /// Appends the id as a JSON string.
    fn write_json(self, out: &mut Vec<u8>) {
        out.push(b'"');
        self.write(out);
        out.push(b'"');
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = Vec::with_capacity(ID_LEN);
        write_id(&mut out, self.num);
        f.write_str(self.node)?;
        f.write_str(std::str::from_utf8(&out).unwrap_or("?"))
    }
}

/// An id as a client wrote it: its number and the prefix it had, to be
/// checked against the prefix of the task with that number.
#[derive(Clone, Debug, PartialEq)]
struct IdRef {
    /// The number.
    num: u64,
    /// The prefix as written (`NAME_`, or empty).
    node: Text,
}

impl IdRef {
    /// Reads an id: 9 id characters, after an optional `NAME_` prefix.
    fn parse(text: &[u8]) -> Option<IdRef> {
        let (node, digits) = text.split_at(text.len().checked_sub(ID_LEN)?);
        let prefix_ok = match node {
            [] => true,
            [name @ .., b'_'] => std::str::from_utf8(name).is_ok_and(is_node_name),
            _ => false,
        };
        Some(IdRef {
            num: parse_id(digits).filter(|_| prefix_ok)?,
            node: Text::new(std::str::from_utf8(node).ok()?),
        })
    }
}

/// Appends an id's number as its 9 characters.
fn write_id(out: &mut Vec<u8>, id: u64) {
    let mut text = [0; ID_LEN];
    for (i, c) in text.iter_mut().rev().enumerate() {
        *c = ID_ALPHABET[(id >> (6 * i)) as usize & 63];
    }
    out.extend_from_slice(&text);
}

/// Reads an id's number back; `None` for anything that is not 9 id
/// characters.
fn parse_id(text: &[u8]) -> Option<u64> {
    if text.len() != ID_LEN {
        return None;
    }
    text.iter().try_fold(0u64, |id, &c| {
        let digit = ID_ALPHABET.iter().position(|&a| a == c)?;
        Some(id << 6 | digit as u64)
    })
}

/// Returns the wall-clock time in microseconds since the epoch.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Returns the wall-clock time in milliseconds since the epoch.
fn now_millis() -> u64 {
    now_micros() / 1000
}

/// Converts days since 1970-01-01 to a (year, month, day) civil date, by
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends an RFC 3339 UTC timestamp with milliseconds, quoted, such as
/// `"2026-11-27T20:00:00.123Z"`; 0 means "not yet" and is written `null`.
fn write_timestamp(out: &mut Vec<u8>, millis: u64) {
    if millis == 0 {
        out.extend_from_slice(b"null");
        return;
    }
    // Tuning: the events of a busy moment carry the same time, so each
    // thread keeps the last text it made and copies it while it holds.
    thread_local! {
        static LAST: Cell<(u64, [u8; 26])> = const { Cell::new((0, [0; 26])) };
    }
    let (last, text) = LAST.get();
    if last == millis {
        out.extend_from_slice(&text);
        return;
    }
    let secs = millis / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    // Tuning: every status answer and event has a few of these, and
    // placing digits in a template costs a fraction of `write!`'s
    // formatting.
    let mut text = *b"\"0000-00-00T00:00:00.000Z\"";
    let fields = [
        (1..5, year.rem_euclid(10_000) as u64),
        (6..8, u64::from(month)),
        (9..11, u64::from(day)),
        (12..14, t / 3600),
        (15..17, t / 60 % 60),
        (18..20, t % 60),
        (21..24, millis % 1000),
    ];
    for (place, mut n) in fields {
        for digit in text[place].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    if year < 10_000 {
        LAST.set((millis, text));
        out.extend_from_slice(&text);
    } else {
        // Past the year 9999 (a clock set wrong) the year is wider.
        let _ = write!(VecWriter(out), "\"{year}");
        out.extend_from_slice(&text[5..]);
    }
}

/// Parses an RFC 3339 timestamp with any offset, such as
/// `2026-12-01T03:00:00+01:00`, into milliseconds since the epoch (UTC).
///
/// This is RFC 3339 §5.6 `date-time` exactly: a four-digit year 0000–9999,
/// a date that exists (February 29th only in leap years), a fraction of one
/// or more digits truncated to milliseconds however many there are, and a
/// required `Z` or `±HH:MM` offset. `T` and `Z` may be lowercase, and `T` may
/// be a single space, as §5.6's notes allow, because `date --rfc-3339` and
/// SQL write a space. A leap second (`:60`) is refused, as Go's `time.Parse`
/// refuses it: the epoch count has no place for one. Anything else (missing
/// parts, extra bytes, signs, non-ASCII digits) is `None`.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    // Reads the fixed-width ASCII number in `range`.
    let number = |range: std::ops::Range<usize>| {
        b.get(range)?.iter().try_fold(0, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    // The shortest timestamp, `YYYY-MM-DDTHH:MM:SSZ`, has 20 bytes.
    if b.len() < 20
        || (b[4], b[7], b[13], b[16]) != (b'-', b'-', b':', b':')
        || !matches!(b[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let year = i64::from(year);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', fraction @ ..] = rest {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Pad to three digits and drop the rest: .5 is 500 ms, .1239 is 123.
        millis = fraction[..digits]
            .iter()
            .chain(b"00")
            .take(3)
            .fold(0, |ms, &d| ms * 10 + i64::from(d - b'0'));
        rest = &fraction[digits..];
    }
    let at = b.len() - rest.len();
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(at + 1..at + 3)?, number(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let minutes = i64::from(hours * 60 + minutes);
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let minutes = (days * 24 + i64::from(hour)) * 60 + i64::from(minute) - offset;
    Some((minutes * 60 + i64::from(second)) * 1000 + millis)
}

/// Converts a (year, month, day) civil date to days since 1970-01-01, by
/// Howard Hinnant's `days_from_civil` (the inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Years start in March here, so that February's leap day ends them.
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * ((i64::from(month) + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Returns the number of days in `month` (1–12) of `year`, by the
/// Gregorian rule: a leap year divides by 4, and by 400 if it divides by 100.
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The allowed `max_attempts`: at least one attempt, and few enough that
/// the last retry's backoff (capped at five minutes) ends within hours.
const MAX_ATTEMPTS: std::ops::RangeInclusive<u8> = 1..=100;

/// What a new task needs, checked and ready to store.
#[derive(Debug)]
struct NewTask {
    /// The client's label.
    label: Option<Text>,
    /// The duration text for `sleep` tasks.
    work_duration: Option<Text>,
    /// The handler kind, `None` for `sleep`.
    kind: Option<Arc<str>>,
    /// The payload as JSON text.
    payload: Option<Box<str>>,
    /// The per-attempt timeout text.
    timeout: Option<Text>,
    /// Attempts allowed.
    max_attempts: u8,
    /// The idempotency key, if the request carried one.
    key: Option<IdempotencyKey>,
    /// The index of its queue.
    queue: u8,
    /// When it may start, ms since the epoch; 0 for at once.
    run_at: u64,
    /// The index of the `--schedule` that made it, if one did.
    schedule: Option<u16>,
}

/// What the store answers to a submission.
#[derive(Debug)]
enum Admission {
    /// The task was created with this id, queued or scheduled; with a
    /// journal, the receiver tells whether its record reached the disk.
    Created(u64, State, Option<Receiver<bool>>),
    /// The idempotency key names a retained task, made by the same
    /// request: its id.
    Repeat(u64),
    /// The idempotency key names a retained task made by another request.
    KeyReused,
    /// The task's queue is full.
    Full,
    /// `--max-scheduled` delayed tasks are waiting already.
    TooManyScheduled,
    /// Shutdown has begun.
    ShuttingDown,
}

/// What a worker finds when it takes a task from its queue.
#[derive(Debug)]
enum Begin {
    /// The attempt has begun: its work.
    Work(Work),
    /// The task is no longer queued (a client cancelled it): skip it.
    Skip,
    /// The queue is paused: the worker keeps the task, still counted in
    /// the queue, and begins it when this trigger fires on the resume.
    Paused(Trigger),
}

/// What a lookup of an id finds.
#[derive(Debug, PartialEq)]
enum Lookup {
    /// The task is retained; the store's slot index.
    Found(usize),
    /// The id was issued, but its record has been evicted: `410`.
    Gone,
    /// The server never issued the id: `404`.
    Unknown,
}

/// The work a worker takes from the store when an attempt starts.
#[derive(Debug)]
struct Work {
    /// The task's id.
    id: TaskId,
    /// This attempt's number, from 1.
    attempt: u8,
    /// The handler kind; `None` is `sleep`.
    kind: Option<Arc<str>>,
    /// How long a `sleep` lasts, as the client wrote it.
    work_duration: Option<Text>,
    /// The payload handed to a program.
    payload: Option<Box<str>>,
    /// The per-attempt timeout, as the client wrote it.
    timeout: Option<Text>,
}

impl Work {
    /// Returns how long a `sleep` lasts. The texts were checked when the
    /// task was accepted; they are parsed here, outside the store lock.
    fn sleep(&self) -> Duration {
        let text = self.work_duration.as_ref().map_or("0", Text::as_str);
        parse_duration(text).unwrap_or_default()
    }

    /// Returns the per-attempt timeout, if any.
    fn timeout(&self) -> Option<Duration> {
        self.timeout
            .as_ref()
            .and_then(|t| parse_duration(t.as_str()).ok())
    }
}

/// How an attempt ended.
#[derive(Debug)]
enum Outcome {
    /// Success, with the result as JSON text.
    Succeeded(Option<Box<str>>),
    /// Failure, with the reason.
    Failed(String),
    /// A client cancelled the task (its state is already `cancelled`).
    Cancelled,
    /// Shutdown interrupted the attempt: not a failure, and not counted.
    Interrupted,
}

/// The store's counters that `/metrics` reports.
#[derive(Debug, Default)]
struct Counters {
    /// Tasks created by requests.
    accepted: u64,
    /// Tasks that reached each terminal state, indexed like [`STATES`].
    finished: [u64; STATES.len()],
}

/// What the store keeps of a queue: what changes under its lock. The
/// channel itself is in [`Queue`].
#[derive(Debug)]
struct QueueState {
    /// The queue's name.
    name: Arc<str>,
    /// Workers of this queue running an attempt right now.
    busy: u64,
    /// Tasks in the queue: entered and not yet begun (or skipped) — in the
    /// channel, waiting for room, or taken by a worker that has not begun
    /// them. Admission compares this with the capacity, so a task a worker
    /// holds is counted as long as it holds it.
    depth: usize,
    /// Whether its workers start nothing.
    paused: bool,
    /// Fired when the queue is resumed (and then replaced): workers that
    /// found it paused wait for it.
    resumed: Trigger,
    /// Tasks waiting for room in the channel, oldest first: retries and
    /// delayed tasks that came due while it was full or paused. They enter
    /// before any new submission.
    waiting: VecDeque<u64>,
}

impl QueueState {
    /// A queue's state at start: idle, running, nothing waiting.
    fn new(config: &QueueConfig) -> QueueState {
        QueueState {
            name: config.name.clone(),
            busy: 0,
            depth: 0,
            paused: false,
            resumed: Trigger::new(),
            waiting: VecDeque::new(),
        }
    }
}

/// Every task and the indexes over them.
#[derive(Debug)]
struct Store {
    /// Records in id order, tombstones included.
    tasks: VecDeque<Task>,
    /// How many entries of `tasks` are tombstones.
    tombstones: usize,
    /// Ids of terminal tasks in the order they finished: eviction order.
    finished: VecDeque<u64>,
    /// Retained tasks in each state, indexed like [`STATES`].
    counts: [usize; STATES.len()],
    /// Each queue's state, indexed like [`Config::queues`].
    queues: Vec<QueueState>,
    /// Each schedule's firings, indexed like [`Config::schedules`].
    schedules: Vec<ScheduleState>,
    /// Where tasks go that must wait for a time (delayed tasks, retries):
    /// the scheduler, as (due ms, id).
    due_tx: Sender<(u64, u64)>,
    /// How many delayed tasks may wait at once.
    max_scheduled: usize,
    /// Idempotency keys of retained tasks.
    keys: HashMap<Box<str>, u64>,
    /// Long polls waiting for a task to change, by id.
    watchers: HashMap<u64, Trigger>,
    /// Cancel signals of running tasks, by id.
    cancels: HashMap<u64, Trigger>,
    /// The first id this store issued (or replayed); 0 until then.
    first_id: u64,
    /// The most recently issued id: the next one is larger.
    last_id: u64,
    /// How many finished tasks to keep.
    keep_finished: usize,
    /// What `/metrics` reports.
    counters: Counters,
    /// Set once shutdown begins: submissions get `503`.
    draining: bool,
    /// Where changes are journaled, with `--data-dir`.
    journal: Option<JournalSender>,
    /// The `/events` streams: each is told of every change.
    subscribers: Vec<Subscriber>,
    /// Where their events are rendered, kept to spare an allocation each.
    event_buf: Vec<u8>,
    /// The id prefix in force from each id on, in id order: those of
    /// tasks replayed from the journal, then `--node`'s from this run's
    /// first id. A prefix changes only across restarts, so ranges do.
    nodes: Vec<(u64, &'static str)>,
}

// How the store journals, takes back and restores tasks is in section 6;
// how it feeds event streams, in section 9.
impl Store {
    /// Creates an empty store for `config`'s queues and limits, sending
    /// what must wait for a time to `due_tx`.
    fn new(config: &Config, due_tx: Sender<(u64, u64)>) -> Store {
        Store {
            tasks: VecDeque::new(),
            tombstones: 0,
            finished: VecDeque::new(),
            counts: [0; STATES.len()],
            queues: config.queues.iter().map(QueueState::new).collect(),
            schedules: config.schedules.iter().map(ScheduleState::new).collect(),
            due_tx,
            max_scheduled: config.max_scheduled,
            keys: HashMap::new(),
            watchers: HashMap::new(),
            cancels: HashMap::new(),
            first_id: 0,
            last_id: 0,
            keep_finished: config.keep_finished,
            counters: Counters::default(),
            draining: false,
            journal: None,
            subscribers: Vec::new(),
            event_buf: Vec::new(),
            nodes: vec![(0, config.node)],
        }
    }

    /// Returns the next id without taking it: the current time in
    /// microseconds, or one more than the last id if the clock has not moved
    /// on (or went back). Ids therefore increase, sort in creation order,
    /// carry their creation time, and differ from a previous run's as long
    /// as the clock does not go back across a restart.
    fn issue_id(&self) -> u64 {
        now_micros().max(self.last_id + 1)
    }

    /// Finds where the record for `id` is, or would be, in `tasks`.
    ///
    /// Tuning: the plain version is `binary_search_by_key` (the unit test
    /// `positions_agree_with_a_binary_search` checks the two agree). Ids
    /// are creation times, so a record's place is roughly proportional to
    /// its id: this guesses it by interpolation, gallops from the guess to
    /// bracket it, and only then bisects — a handful of probes instead of a
    /// cache-missing binary search. Lookups were 8.5% of the 202 path's
    /// time in a profile of the bench's accept phase.
    fn position(&self, id: u64) -> Result<usize, usize> {
        let tasks = &self.tasks;
        let (Some(first), Some(last)) = (tasks.front(), tasks.back()) else {
            return Err(0);
        };
        let n = tasks.len();
        if id <= first.id || id >= last.id {
            return match (id == first.id, id == last.id, id < first.id) {
                (true, _, _) => Ok(0),
                (_, true, _) => Ok(n - 1),
                (_, _, true) => Err(0),
                _ => Err(n),
            };
        }
        // From here on tasks[lo].id < id <= tasks[hi].id.
        let (mut lo, mut hi) = (0, n - 1);
        let span = u128::from(last.id - first.id);
        let guess = (u128::from(id - first.id) * (n as u128 - 1) / span) as usize;
        let mut step = 1;
        if tasks[guess].id < id {
            lo = guess;
            while lo + step < hi && tasks[lo + step].id < id {
                lo += step;
                step *= 2;
            }
            hi = hi.min(lo + step);
        } else {
            hi = guess;
            while hi > lo + step && tasks[hi - step].id >= id {
                hi -= step;
                step *= 2;
            }
            lo = lo.max(hi.saturating_sub(step));
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if tasks[mid].id < id {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if tasks[hi].id == id { Ok(hi) } else { Err(hi) }
    }

    /// Finds the record for `id`.
    fn lookup(&self, id: u64) -> Lookup {
        match self.position(id) {
            Ok(i) if self.tasks[i].state != State::Evicted => Lookup::Found(i),
            _ if self.first_id != 0 && (self.first_id..=self.last_id).contains(&id) => Lookup::Gone,
            _ => Lookup::Unknown,
        }
    }

    /// Returns the retained task with this id.
    fn get(&self, id: u64) -> Option<&Task> {
        match self.lookup(id) {
            Lookup::Found(i) => Some(&self.tasks[i]),
            _ => None,
        }
    }

    /// Returns the index of the retained task with this id.
    fn index(&self, id: u64) -> Option<usize> {
        match self.lookup(id) {
            Lookup::Found(i) => Some(i),
            _ => None,
        }
    }

    /// Admits a new task: puts its id into its queue's channel (or, for a
    /// delayed task, hands it to the scheduler) and records it, both or
    /// neither. The caller holds the store lock, so no worker can receive
    /// the id before the record exists.
    fn admit(&mut self, new: NewTask, queues: &[Queue]) -> Admission {
        if self.draining {
            return Admission::ShuttingDown;
        }
        if let Some(key) = &new.key
            && let Some(&id) = self.keys.get(&key.text)
        {
            let first = self.get(id).and_then(|t| t.extra.as_ref()?.key.as_ref());
            return match first.map_or(0, |k| k.fingerprint) {
                0 => Admission::Repeat(id),
                f if f == key.fingerprint => Admission::Repeat(id),
                _ => Admission::KeyReused,
            };
        }
        let id = self.issue_id();
        let (q, run_at) = (usize::from(new.queue), new.run_at);
        let delayed = run_at > now_millis();
        if delayed {
            if self.counts[State::Scheduled as usize] >= self.max_scheduled {
                return Admission::TooManyScheduled;
            }
        } else if self.queues[q].depth >= queues[q].capacity {
            return Admission::Full;
        } else {
            match queues[q].jobs_tx.try_send(id) {
                Ok(()) => self.queues[q].depth += 1,
                Err(TrySendError::Full(_)) => return Admission::Full,
                Err(TrySendError::Closed(_)) => return Admission::ShuttingDown,
            }
        }
        if self.first_id == 0 {
            self.first_id = id;
        }
        self.last_id = id;
        self.counters.accepted += 1;
        if let Some(key) = &new.key {
            self.keys.insert(key.text.clone(), id);
        }
        let state = if delayed {
            // The scheduler ends only at shutdown, when it no longer matters.
            let _ = self.due_tx.try_send((run_at, id));
            State::Scheduled
        } else {
            State::Queued
        };
        self.insert(Task::from_new(id, new, state));
        let i = self.tasks.len() - 1;
        let saved = self.journal.is_some().then(|| {
            let (done, saved) = async_channel::bounded(1);
            let mut line = Vec::with_capacity(160);
            if let Some(task) = self.tasks.back() {
                write_record(&mut line, &task.new_record(self.names(task)));
            }
            self.log(line, Some(id), Some(done));
            saved
        });
        self.publish(i, self.tasks[i].created_at());
        Admission::Created(id, state, saved)
    }

    /// Puts a task whose time has come (a delayed task, or a retry) into
    /// its queue, behind those already waiting for room.
    fn enqueue(&mut self, id: u64, queues: &[Queue]) {
        let Some(task) = self.get(id) else { return };
        let q = usize::from(task.queue);
        self.queues[q].depth += 1;
        self.queues[q].waiting.push_back(id);
        self.refill(q, &queues[q]);
    }

    /// Moves tasks waiting for room into queue `q`'s channel, oldest first,
    /// while it has room and is not paused.
    fn refill(&mut self, q: usize, queue: &Queue) {
        let state = &mut self.queues[q];
        while !state.paused
            && let Some(&id) = state.waiting.front()
            && queue.jobs_tx.try_send(id).is_ok()
        {
            state.waiting.pop_front();
        }
    }

    /// Acts on a task the scheduler says is due: a delayed task becomes
    /// queued, and it or a retry enters its queue. A task cancelled since
    /// is left alone.
    fn make_due(&mut self, id: u64, queues: &[Queue]) {
        let Some(i) = self.index(id) else { return };
        let task = &self.tasks[i];
        let retry = task.extra.as_ref().is_some_and(|e| e.retry_at != 0);
        match task.state {
            State::Scheduled => self.set_state(i, State::Queued),
            State::Queued if retry => {}
            _ => return,
        }
        self.enqueue(id, queues);
    }

    /// Pauses or resumes queue `q`. A paused queue's workers start
    /// nothing; resuming wakes those that wait, and lets tasks waiting for
    /// room in.
    fn set_paused(&mut self, q: usize, paused: bool, queues: &[Queue]) {
        if self.queues[q].paused == paused {
            return;
        }
        self.queues[q].paused = paused;
        self.log_pause(q);
        self.changed();
        if !paused {
            std::mem::replace(&mut self.queues[q].resumed, Trigger::new()).fire();
            self.refill(q, &queues[q]);
        }
    }

    /// Returns a task's id, with the prefix it was made with.
    fn task_id(&self, num: u64) -> TaskId {
        let at = self.nodes.partition_point(|&(from, _)| from <= num);
        let node = self
            .nodes
            .get(at.wrapping_sub(1))
            .map_or("", |&(_, node)| node);
        TaskId { node, num }
    }

    /// Finds the record an id names: the number must be a task's, and the
    /// prefix the one that task was made with.
    fn lookup_ref(&self, id: &IdRef) -> Lookup {
        if self.task_id(id.num).node != id.node.as_str() {
            return Lookup::Unknown;
        }
        self.lookup(id.num)
    }

    /// Returns the names of a task's queue and schedule.
    fn names(&self, task: &Task) -> Names<'_> {
        let schedule = task.extra.as_ref().and_then(|e| e.schedule);
        Names {
            id: self.task_id(task.id),
            queue: &self.queues[usize::from(task.queue)].name,
            schedule: schedule.map(|s| &*self.schedules[usize::from(s)].name),
        }
    }

    /// Counts the workers running an attempt, in every queue.
    fn busy(&self) -> u64 {
        self.queues.iter().map(|q| q.busy).sum()
    }

    /// Appends a record; its id must be larger than every other.
    fn insert(&mut self, task: Task) {
        self.counts[task.state as usize] += 1;
        self.tasks.push_back(task);
    }

    /// Moves the task at index `i` to `state`, keeping counts, waking long
    /// polls, and queueing terminal tasks for eviction — which may move
    /// records, so `i` is not to be used afterwards.
    ///
    /// This is the one choke point of change: the journal record, the
    /// counters `/metrics` reads, the long-poll wake-up and the event for
    /// `/events` are all made here, in that order, from the same values.
    fn set_state(&mut self, i: usize, state: State) {
        let now = now_millis();
        let task = &mut self.tasks[i];
        let (id, old) = (task.id, task.state);
        task.state = state;
        if state == State::Running {
            task.started_at = now;
        } else if state.is_terminal() {
            task.finished_at = now;
        }
        // Starts are not journaled (see the journal's section).
        if state != State::Running {
            self.log_state(i);
        }
        self.counts[old as usize] -= 1;
        self.counts[state as usize] += 1;
        if state.is_terminal() {
            self.counters.finished[state as usize] += 1;
        }
        self.wake_watchers(id);
        self.publish(i, now);
        if state.is_terminal() {
            self.finished.push_back(id);
            self.evict();
        }
    }

    /// Evicts the earliest finished tasks beyond `--keep-finished`.
    fn evict(&mut self) {
        while self.finished.len() > self.keep_finished {
            let Some(id) = self.finished.pop_front() else {
                break;
            };
            let Some(i) = self.index(id) else { continue };
            let task = &mut self.tasks[i];
            let state = std::mem::replace(&mut task.state, State::Evicted);
            let key = task.extra.take().and_then(|e| e.key);
            task.label = None;
            task.work_duration = None;
            self.counts[state as usize] -= 1;
            self.tombstones += 1;
            if let Some(key) = key {
                self.keys.remove(&key.text);
            }
            self.wake_watchers(id);
        }
        self.sweep();
    }

    /// Wakes the long polls waiting for task `id` to change.
    fn wake_watchers(&mut self, id: u64) {
        // Tuning: the plain version looks the id up. Most changes have no
        // watcher, and a lookup would hash the id for nothing.
        if !self.watchers.is_empty()
            && let Some(watch) = self.watchers.remove(&id)
        {
            watch.fire();
        }
    }

    /// Drops tombstones: from the front at once, and everywhere once they
    /// are half the records, so the deque stays within twice the retained
    /// tasks even when an old task runs for days.
    fn sweep(&mut self) {
        while self
            .tasks
            .front()
            .is_some_and(|t| t.state == State::Evicted)
        {
            self.tasks.pop_front();
            self.tombstones -= 1;
        }
        if self.tombstones > TOMBSTONE_SWEEP && self.tombstones * 2 > self.tasks.len() {
            self.tasks.retain(|t| t.state != State::Evicted);
            self.tombstones = 0;
        }
    }

    /// Starts an attempt of a task a worker of queue `q` took from its
    /// channel, unless the queue is paused (the worker keeps the task and
    /// tries again on the resume) or the task is no longer queued (a client
    /// cancelled it). The task leaves the queue, and a waiting one enters.
    fn begin_attempt(&mut self, id: u64, q: usize, queues: &[Queue]) -> Begin {
        let state = &mut self.queues[q];
        if state.paused {
            return Begin::Paused(state.resumed.clone());
        }
        state.depth -= 1;
        self.refill(q, &queues[q]);
        let Some(i) = self
            .index(id)
            .filter(|&i| self.tasks[i].state == State::Queued)
        else {
            return Begin::Skip;
        };
        let task_id = self.task_id(id);
        let task = &mut self.tasks[i];
        task.attempt += 1;
        let extra = task.extra.as_deref();
        let work = Work {
            id: task_id,
            attempt: task.attempt,
            kind: extra.and_then(|e| e.kind.clone()),
            work_duration: task.work_duration.clone(),
            payload: extra.and_then(|e| e.payload.clone()),
            timeout: extra.and_then(|e| e.timeout.clone()),
        };
        if let Some(e) = task.extra.as_deref_mut() {
            e.retry_at = 0;
        }
        self.queues[q].busy += 1;
        self.set_state(i, State::Running);
        Begin::Work(work)
    }

    /// Records how an attempt in queue `q` ended. A failed attempt with
    /// attempts left goes to the scheduler for its retry; returns when it
    /// is due (ms since the epoch).
    fn end_attempt(&mut self, id: u64, q: usize, outcome: Outcome) -> Option<u64> {
        // Tuning, as in `wake_watchers`: most attempts made no trigger.
        if !self.cancels.is_empty() {
            self.cancels.remove(&id);
        }
        self.queues[q].busy -= 1;
        let i = self
            .index(id)
            .filter(|&i| self.tasks[i].state == State::Running)?;
        let task = &mut self.tasks[i];
        match outcome {
            Outcome::Succeeded(result) => {
                if task.extra.is_some() || result.is_some() {
                    let extra = task.extra_mut();
                    extra.error = None;
                    extra.result = result;
                }
                self.set_state(i, State::Succeeded);
                None
            }
            Outcome::Failed(error) if task.attempt < task.max_attempts => {
                let retry_at = now_millis() + backoff(task.attempt).as_millis() as u64;
                let extra = task.extra_mut();
                extra.error = Some(error.into());
                extra.retry_at = retry_at;
                self.set_state(i, State::Queued);
                // The scheduler ends only at shutdown, when a lost retry is
                // what shutdown means anyway.
                let _ = self.due_tx.try_send((retry_at, id));
                Some(retry_at)
            }
            Outcome::Failed(error) => {
                task.extra_mut().error = Some(error.into());
                self.set_state(i, State::Failed);
                None
            }
            // Cancelled tasks changed state when the client asked; an
            // interrupted attempt stays running until the process exits.
            Outcome::Cancelled | Outcome::Interrupted => None,
        }
    }

    /// Sets the progress a running task's handler reported. It is journaled
    /// with the task's next change of state, not on its own.
    fn set_progress(&mut self, id: u64, progress: Box<str>) {
        let Some(i) = self.index(id) else { return };
        let task = &mut self.tasks[i];
        if task.state == State::Running {
            task.extra_mut().progress = Some(progress);
            self.publish(i, now_millis());
        }
    }

    /// Cancels a queued or running task. Returns the slot of the task, or
    /// why not: `Err(Found(i))` when it is already terminal.
    fn cancel(&mut self, id: u64) -> Result<usize, Lookup> {
        let i = match self.lookup(id) {
            Lookup::Found(i) => i,
            other => return Err(other),
        };
        if self.tasks[i].state.is_terminal() {
            return Err(Lookup::Found(i));
        }
        if let Some(cancel) = self.cancels.get(&id) {
            cancel.fire();
        }
        self.set_state(i, State::Cancelled);
        // Cancelling may have evicted older tasks, moving this one.
        match self.lookup(id) {
            Lookup::Found(i) => Ok(i),
            other => Err(other),
        }
    }

    /// Returns the trigger that `cancel` fires for a running task, made when
    /// its work first waits (work that never waits needs none); `None` if
    /// the task is no longer running — it was cancelled already.
    fn cancel_trigger(&mut self, id: u64) -> Option<Trigger> {
        let running = self.get(id).is_some_and(|t| t.state == State::Running);
        running.then(|| self.cancels.entry(id).or_insert_with(Trigger::new).clone())
    }

    /// Returns the trigger a long poll waits on for `id` to change.
    fn watch(&mut self, id: u64) -> Trigger {
        self.watchers.entry(id).or_insert_with(Trigger::new).clone()
    }

    /// Counts the tasks in a state.
    fn count(&self, state: State) -> usize {
        self.counts[state as usize]
    }
}

/// The wait before retry number `attempt + 1`: 1 s, 2 s, 4 s … capped at
/// five minutes.
fn backoff(attempt: u8) -> Duration {
    let secs = 1u64 << u32::from(attempt.saturating_sub(1)).min(9);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// The longest wait before a retry: a failing dependency gets time to come
/// back, and a task still retries a dozen times an hour.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

// ---- 3. Worker pool: triggers, queues, workers, the scheduler ----
//
// Each queue is the original Go design: a bounded channel of its capacity
// and its workers, tasks that each take the next job from it — `default`
// from `--workers` and `--buffer`, the others from `--queue`, all on the
// one executor. What travels through a channel is only the task's id; the
// record stays in the store, so a client can cancel a queued task by
// changing its state, and the worker that later receives the id sees that
// and skips it.
//
// Everything that must happen at a time — a delayed task's start, a
// retry's backoff, a schedule's firing — is one entry in one heap, served
// by one scheduler task with one timer.
//
// Stopping uses one mechanism everywhere, the [`Trigger`]. Shutdown has two
// of them: `draining` tells workers to take no new job and connections to
// wind down; `grace_over`, fired when `--grace` is over, interrupts running
// work. (OS signals, SIGINT and SIGTERM, are section 11's business.)

/// A one-shot broadcast: once fired, every waiter — present or future —
/// wakes, and stays woken.
///
/// It is a channel that is never sent on: closing it makes every `recv()`
/// return at once. This is the stop signal of async-executor's own docs;
/// it is called a trigger here so that "signal" means only OS signals.
///
/// Underneath: a task awaiting `wait` is polled, finds the channel open
/// and empty, and leaves its waker in the channel's list of listeners;
/// `fire` closes the channel, which calls every waker in the list, so each
/// waiting task goes back on the executor's queue — a sleeping worker
/// included, whose timer future is then dropped by the `future::or` that
/// raced it. A task that waits after the fire finds the channel closed and
/// does not wait at all.
#[derive(Clone, Debug)]
struct Trigger {
    /// Closed to fire.
    tx: Sender<Infallible>,
    /// Each waiter's `recv()` returns when the channel closes.
    rx: Receiver<Infallible>,
}

impl Trigger {
    /// Creates a trigger that has not fired.
    fn new() -> Trigger {
        let (tx, rx) = async_channel::bounded(1);
        Trigger { tx, rx }
    }

    /// Fires the trigger, waking every waiter.
    fn fire(&self) {
        self.tx.close();
    }

    /// Tells whether the trigger has fired.
    fn is_fired(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the trigger fires.
    async fn wait(&self) {
        // `recv` can only end with an error: nothing is ever sent.
        let _ = self.rx.recv().await;
    }
}

/// Everything the listener, connections and workers share.
struct Shared {
    /// The checked configuration.
    config: Config,
    /// Every task, behind the one lock.
    store: Mutex<Store>,
    /// The queues' channels, indexed like [`Config::queues`].
    queues: Vec<Queue>,
    /// Fired when shutdown begins.
    draining: Trigger,
    /// Fired when `--grace` is over: running work is interrupted.
    grace_over: Trigger,
    /// Answers written, by status code, for `/metrics`.
    responses: StatusCounts,
    /// Submissions refused because their queue was full, for `/metrics`.
    rejected: AtomicU64,
    /// Whether any `/events` stream is open. Tuning: the plain version
    /// takes the lock on every refusal; this is read without it, so that a
    /// refusal takes the lock only when a subscriber must hear of it.
    subscribed: std::sync::atomic::AtomicBool,
    /// How far the journal is on disk, with `--data-dir`.
    journal: Option<Arc<JournalProgress>>,
}

impl Shared {
    /// Locks the store. A panic elsewhere while holding the lock cannot
    /// leave a half-made change (every change is a few assignments), so a
    /// poisoned lock is used as it is.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A queue: the original design once more, a bounded channel of task ids
/// and the workers that read it. What changes about a queue under the
/// store lock (paused, busy, waiting) is its [`QueueState`].
#[derive(Debug)]
struct Queue {
    /// Its name.
    name: Arc<str>,
    /// How many tasks may wait in it beyond the running ones.
    capacity: usize,
    /// The sending half: admission, and tasks that come due.
    jobs_tx: Sender<u64>,
    /// The receiving half: its workers.
    jobs_rx: Receiver<u64>,
}

impl Queue {
    /// Makes the channel of a configured queue.
    fn new(config: &QueueConfig) -> Queue {
        let (jobs_tx, jobs_rx) = async_channel::bounded(config.buffer);
        Queue {
            name: config.name.clone(),
            capacity: config.buffer,
            jobs_tx,
            jobs_rx,
        }
    }
}

/// Takes jobs from queue `q`'s channel and runs them until shutdown
/// begins.
///
/// `_done` is dropped when the worker ends: `main` learns that every worker
/// has ended when its receiver reports that all senders are gone.
async fn work(shared: Arc<Shared>, q: usize, _done: Sender<()>) {
    let mut run = 0;
    while let Some(work) = next_work(&shared, q).await {
        run += 1;
        if run % BURST == 0 {
            // A worker whose channel is never empty never waits: see BURST.
            future::yield_now().await;
        }
        let id = work.id;
        debug!("task {id} attempt {} started", work.attempt);
        let outcome = attempt(&shared, &work).await;
        debug!("task {id} attempt {} ended: {outcome:?}", work.attempt);
        if let Outcome::Failed(why) = &outcome {
            info!(
                "task {id} attempt {} failed: {}",
                work.attempt,
                OneLine(why)
            );
        }
        shared.store().end_attempt(id.num, q, outcome);
    }
}

/// How many tasks a worker runs, or requests a connection serves, in a row
/// before it lets the executor run its other tasks.
///
/// An executor cannot preempt a task: a task keeps its thread until it
/// returns "not yet", which it does only when it waits for something. A
/// worker whose channel always has a job ready, or a connection whose
/// pipelined requests have all arrived, never waits, and would keep its
/// thread for the whole burst — while an event stream fell behind and the
/// listener left new connections unaccepted. Every `BURST` items they
/// yield (`future::yield_now` returns "not yet" once, its task queued
/// again at the back), so others get their turn at a small cost.
const BURST: usize = 4;

/// Takes the next task from queue `q`'s channel and begins its attempt;
/// `None` once shutdown has begun. A task taken while the queue is paused
/// is kept, still counted in the queue, and begun first on the resume.
async fn next_work(shared: &Shared, q: usize) -> Option<Work> {
    loop {
        // Shutdown closes the channel, which wakes every waiting worker;
        // a job taken after that is left for the next start (it is still
        // queued in the store, and in the journal).
        let id = shared.queues[q].jobs_rx.recv().await.ok()?;
        if shared.draining.is_fired() {
            return None;
        }
        if let Some(journal) = &shared.journal {
            // A task starts only once its record is on disk, so that a
            // failed write can still take it back (see the journal). The
            // drain may have begun meanwhile: then the task is left queued.
            if !journal.wait_task(id, &shared.grace_over).await || shared.draining.is_fired() {
                return None;
            }
        }
        loop {
            let begun = shared.store().begin_attempt(id, q, &shared.queues);
            match begun {
                Begin::Work(work) => return Some(work),
                Begin::Skip => {
                    let id = shared.store().task_id(id);
                    debug!("task {id} skipped: cancelled while queued");
                    break;
                }
                Begin::Paused(resumed) => {
                    let draining = async {
                        shared.draining.wait().await;
                        false
                    };
                    let resumed = async {
                        resumed.wait().await;
                        true
                    };
                    if !future::or(draining, resumed).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// Displays text from a handler in a log line, escaping what would break
/// the record's one line: control characters, newlines among them, and
/// Unicode's line and paragraph separators, written as Rust escapes them.
struct OneLine<'a>(&'a str);

impl std::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// What comes due in the scheduler's heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// A task waiting for its time: a delayed task, or a retry.
    Task(u64),
    /// A schedule's next firing: its index.
    Schedule(usize),
}

/// The scheduler: one task, one heap and one timer for everything that
/// must happen at a time — a delayed task's `run_at`, a retry's backoff, a
/// schedule's next firing. A task that comes due goes to
/// [`Store::make_due`], which puts it into its queue, or among those
/// waiting for room: the scheduler itself never waits for a queue, so one
/// full queue cannot hold up another, nor a schedule.
async fn schedule(shared: Arc<Shared>, due_rx: Receiver<(u64, u64)>) {
    use std::cmp::Reverse;
    let mut due = std::collections::BinaryHeap::new();
    for (i, state) in shared.store().schedules.iter().enumerate() {
        if state.next_at != 0 {
            due.push(Reverse((state.next_at, Due::Schedule(i))));
        }
    }
    loop {
        let next = due.peek().map(|&Reverse((at, _))| at);
        let timer = async {
            match next {
                Some(at) => Timer::at(instant_at(at)).await,
                None => Timer::never().await,
            };
            None
        };
        let arrival = async { Some(due_rx.recv().await.ok()) };
        let stopped = async {
            shared.draining.wait().await;
            Some(None)
        };
        // The drain wins a tie: nothing is queued, and no schedule fires,
        // once shutdown has begun.
        match future::or(stopped, future::or(arrival, timer)).await {
            Some(Some((at, id))) => {
                due.push(Reverse((at, Due::Task(id))));
                if due.len() > SCHEDULER_SLACK {
                    prune(&shared, &mut due);
                }
            }
            Some(None) => return,
            None => {
                let now = now_millis();
                while let Some(&Reverse((at, what))) = due.peek()
                    && at <= now
                {
                    due.pop();
                    let next = match what {
                        Due::Task(id) => {
                            shared.store().make_due(id, &shared.queues);
                            continue;
                        }
                        Due::Schedule(i) => shared.fire(i, at),
                    };
                    if let Some(next) = next {
                        due.push(Reverse((next, what)));
                    }
                }
            }
        }
    }
}

/// The scheduler's heap is pruned of cancelled tasks once it holds this
/// many more entries than there are tasks waiting for a time: a client
/// that schedules and cancels far-off tasks must not grow it for ever.
const SCHEDULER_SLACK: usize = 4096;

/// Drops the entries of tasks no longer waiting for a time, if they are
/// many, so the heap stays within the live tasks plus a slack.
fn prune(shared: &Shared, due: &mut std::collections::BinaryHeap<std::cmp::Reverse<(u64, Due)>>) {
    let store = shared.store();
    let live = store.count(State::Scheduled) + store.count(State::Queued);
    if due.len() <= live + shared.config.schedules.len() + SCHEDULER_SLACK {
        return;
    }
    due.retain(|std::cmp::Reverse((_, what))| match what {
        Due::Task(id) => store
            .get(*id)
            .is_some_and(|t| matches!(t.state, State::Scheduled | State::Queued)),
        Due::Schedule(_) => true,
    });
}

/// Converts a wall-clock time in ms since the epoch to an `Instant`.
fn instant_at(millis: u64) -> Instant {
    Instant::now() + Duration::from_millis(millis.saturating_sub(now_millis()))
}

/// Why running work was interrupted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Interrupt {
    /// Shutdown's grace is over.
    Shutdown,
    /// A client cancelled the task.
    Cancel,
    /// The attempt's timeout passed.
    Timeout,
}

/// Waits until the attempt must end early, and says why.
async fn interruption(shared: &Shared, work: &Work) -> Interrupt {
    let timeout = async {
        match work.timeout() {
            Some(after) => Timer::after(after).await,
            None => Timer::never().await,
        };
        Interrupt::Timeout
    };
    let cancel = async {
        let cancelled = shared.store().cancel_trigger(work.id.num);
        if let Some(cancelled) = cancelled {
            cancelled.wait().await;
        }
        Interrupt::Cancel
    };
    let shutdown = async {
        shared.grace_over.wait().await;
        Interrupt::Shutdown
    };
    // `future::or` polls its left side first and ends with the first
    // ready, dropping the other: shutdown is polled first, so an attempt cut
    // short by it is never counted as failed or timed out, even if both
    // happen at once.
    future::or(shutdown, future::or(cancel, timeout)).await
}

/// Turns an interruption into the attempt's outcome.
fn interrupted(why: Interrupt, work: &Work) -> Outcome {
    match why {
        Interrupt::Shutdown => Outcome::Interrupted,
        Interrupt::Cancel => Outcome::Cancelled,
        Interrupt::Timeout => Outcome::Failed(timeout_sentence(work)),
    }
}

/// Says that an attempt timed out, with the timeout as the client wrote it.
fn timeout_sentence(work: &Work) -> String {
    let text = work.timeout.as_ref().map_or("", Text::as_str);
    format!("timed out after {text}")
}

/// Runs one attempt of a task.
async fn attempt(shared: &Shared, work: &Work) -> Outcome {
    match &work.kind {
        None => sleep(shared, work).await,
        Some(kind) => match shared.config.handlers.iter().find(|h| h.kind == *kind) {
            Some(handler) => run_program(shared, work, handler).await,
            None => Outcome::Failed(format!("no handler is registered for kind {kind:?}")),
        },
    }
}

// ---- 4. Periodic tasks: cron specs and firings ----
//
// `--schedule NAME=SPEC TEMPLATE` makes a task from TEMPLATE (a submission
// body, checked at start-up exactly as a POST's) each time SPEC fires. SPEC
// is cron's five fields in UTC, or a shortcut, or `@every DURATION`. The
// next firing is computed directly, field by field — a day, then a time in
// it — so a spec that fires once in years costs no more than one that fires
// every minute, and one that never fires is refused at start.
//
// Firing is the scheduler's (section 3): a schedule is one more entry in
// its heap. A firing creates its task through `Store::admit`, as a POST
// would, unless the schedule's previous task is still pending or its queue
// is full: then it is skipped, counted and logged — periodic work must not
// pile up behind itself. Firings missed while the server was down are not
// made up.

/// A periodic task from `--schedule NAME=SPEC TEMPLATE`.
#[derive(Debug)]
struct ScheduleConfig {
    /// Its name, in task status, `/schedules` and metric labels.
    name: Arc<str>,
    /// SPEC as given, for `/schedules`.
    spec_text: Box<str>,
    /// SPEC, parsed.
    spec: Spec,
    /// TEMPLATE, a submission body; parsed again at each firing, by the
    /// same function a POST goes through.
    template: Box<str>,
}

/// Parses `NAME=SPEC TEMPLATE`: the template is the JSON object from the
/// first `{` on, SPEC what stands between. The template is checked like a
/// submission body against `config`; it may not say when to run (`run_at`,
/// `delay`): the schedule does.
fn parse_schedule(text: &str, config: &Config) -> Result<ScheduleConfig, String> {
    let (name, rest) = text.split_once('=').unwrap_or((text, ""));
    let bad = |why: String| format!("--schedule {name:?}: {why}");
    let Some(brace) = rest.find('{').filter(|_| text.contains('=')) else {
        return Err(bad(
            "expected NAME=SPEC TEMPLATE, the template a JSON object".into(),
        ));
    };
    check_name(name).map_err(bad)?;
    let (spec_text, template) = (rest[..brace].trim(), &rest[brace..]);
    let spec = parse_spec(spec_text).map_err(|e| bad(format!("SPEC {spec_text:?}: {e}")))?;
    let new =
        parse_submission(config, template.as_bytes()).map_err(|e| bad(format!("TEMPLATE: {e}")))?;
    // Any `delay`, even 0s, sets a start time as `run_at` does.
    if new.run_at != 0 {
        return Err(bad(
            "TEMPLATE: run_at and delay are for the schedule to say".into(),
        ));
    }
    Ok(ScheduleConfig {
        name: Arc::from(name),
        spec_text: spec_text.into(),
        spec,
        template: template.into(),
    })
}

/// How many years past the current one a firing is searched for. The
/// Gregorian calendar repeats every 400 years (146,097 days, exactly 20,871
/// weeks), so the 400 years after the current one hold every date with
/// every weekday it ever has, and a spec that fires in none of them never
/// fires. Eight years (leap day to leap day) would not do: in `0 0 29 2 */7`
/// the weekday field starts with `*`, so the day must be both February 29th
/// and a Sunday, which happens in 2088 and next in 2128.
const CALENDAR_CYCLE_YEARS: i64 = 400;

/// A parsed `--schedule` SPEC; `next_firing` says when it fires.
#[derive(Debug, Clone, PartialEq)]
enum Spec {
    /// Five cron fields, matched in UTC.
    Cron(Cron),
    /// `@every DURATION`: a fixed interval, counted from whenever the caller
    /// says (the previous firing, or the start).
    Every(Duration),
}

/// The five cron fields as bitsets: bit `n` is set when the value `n` matches.
#[derive(Debug, Clone, PartialEq)]
struct Cron {
    /// Minutes, 0–59.
    minutes: u64,
    /// Hours, 0–23.
    hours: u64,
    /// Days of the month, 1–31.
    days: u64,
    /// Months, 1–12.
    months: u64,
    /// Days of the week, 0–6 from Sunday; a 7 in the spec is folded into 0.
    weekdays: u64,
    /// Whether a day matches when either day field does rather than both:
    /// cron's rule when both are restricted, that is neither starts with `*`.
    either_day: bool,
}

/// One cron field: its name for error messages, its range and its names.
struct CronField {
    /// What one value of the field is called: "minute", "month", ….
    name: &'static str,
    /// The smallest value.
    low: u32,
    /// The largest value.
    high: u32,
    /// The names of `low`, `low + 1`, …, matched in any case.
    names: &'static [&'static str],
}

impl CronField {
    /// Describes a field of values `low..=high` with these names.
    const fn new(name: &'static str, low: u32, high: u32, names: &'static [&'static str]) -> Self {
        CronField {
            name,
            low,
            high,
            names,
        }
    }
}

/// The five fields in the order a spec writes them. Day of week runs to 7
/// because cron lets 7 mean Sunday, as 0 does.
const CRON_FIELDS: [CronField; 5] = [
    CronField::new("minute", 0, 59, &[]),
    CronField::new("hour", 0, 23, &[]),
    CronField::new("day of month", 1, 31, &[]),
    CronField::new("month", 1, 12, &MONTH_NAMES),
    CronField::new("day of week", 0, 7, &WEEKDAY_NAMES),
];

/// The weekday names cron knows, `sun` for 0.
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The month names cron knows, `jan` for 1.
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses a `--schedule` SPEC: five cron fields, `@yearly` (`@annually`),
/// `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`, or `@every
/// DURATION` of at least 1s; the error is a sentence saying what is wrong.
///
/// Fields are separated by runs of spaces or tabs. Each is a comma-separated
/// list of `*`, `N`, `A-B`, `*/S` and `A-B/S`, where months and weekdays may
/// be names in any case, also in ranges (`mon-fri`). As in cronie, a weekday
/// range ending at Sunday (`fri-sun`, `5-0`) ends at 7, and `N/S` is refused
/// rather than read as `N-MAX/S` (Vixie cron and cronie refuse it too; some
/// libraries accept it). A step may not exceed the field's largest value. A
/// spec that can never fire (`0 0 31 2 *`) is refused: cron would accept it
/// and silently never run it.
fn parse_spec(text: &str) -> Result<Spec, String> {
    let text = text.trim_matches([' ', '\t']);
    if let Some(rest) = text.strip_prefix("@every") {
        let duration = rest.trim_start_matches([' ', '\t']);
        if duration.is_empty() {
            return Err("@every needs a duration, such as @every 30s".into());
        }
        // `@everyday` is not `@every` and falls through to "unknown".
        if duration.len() < rest.len() {
            let every = parse_duration(duration)?;
            if every < Duration::from_secs(1) {
                return Err(format!("@every needs at least 1s, not {duration}"));
            }
            return Ok(Spec::Every(every));
        }
    }
    let fields = match text {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ if text.starts_with('@') => {
            let known = "@yearly, @monthly, @weekly, @daily, @hourly or @every";
            return Err(format!("unknown schedule {text:?}: use {known}"));
        }
        _ => text,
    };
    let fields: Vec<&str> = fields
        .split([' ', '\t'])
        .filter(|f| !f.is_empty())
        .collect();
    let [minutes, hours, days, months, weekdays] = fields[..] else {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    };
    let cron = Cron {
        minutes: parse_cron_field(minutes, &CRON_FIELDS[0])?,
        hours: parse_cron_field(hours, &CRON_FIELDS[1])?,
        days: parse_cron_field(days, &CRON_FIELDS[2])?,
        months: parse_cron_field(months, &CRON_FIELDS[3])?,
        weekdays: parse_cron_field(weekdays, &CRON_FIELDS[4]).map(|w| (w | w >> 7) & 0x7f)?,
        // Vixie cron's test, kept by cronie: `*/2` counts as unrestricted too.
        either_day: !days.starts_with('*') && !weekdays.starts_with('*'),
    };
    // Any date that can ever match appears in the first calendar cycle.
    if cron.first_from(0).is_none() {
        return Err("it can never fire: no date matches its day and month fields".into());
    }
    Ok(Spec::Cron(cron))
}

/// Parses one cron field into the bitset of the values it matches.
fn parse_cron_field(text: &str, field: &CronField) -> Result<u64, String> {
    let mut bits = 0;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let (first, last) = match (range.split_once('-'), step) {
            _ if range == "*" => (field.low, field.high),
            (Some((first, last)), _) => {
                let first = parse_cron_value(first, field, text)?;
                let last = match parse_cron_value(last, field, text)? {
                    0 if field.high == 7 && first > 0 => 7,
                    last => last,
                };
                if first > last {
                    return Err(format!("range {range} is backwards"));
                }
                (first, last)
            }
            (None, Some(step)) => {
                let high = field.high;
                return Err(format!(
                    "{item:?} has a step but no range: write {range}-{high}/{step}"
                ));
            }
            (None, None) => {
                let value = parse_cron_value(range, field, text)?;
                (value, value)
            }
        };
        let steps = CronField::new("step", 1, field.high, &[]);
        let step = match step {
            Some(step) => parse_cron_value(step, &steps, text)?,
            None => 1,
        };
        for value in (first..=last).step_by(step as usize) {
            bits |= 1 << value;
        }
    }
    Ok(bits)
}

/// Parses one value of a field (a number, or a name for months and
/// weekdays) from `text`, a part of the field `whole`.
fn parse_cron_value(text: &str, field: &CronField, whole: &str) -> Result<u32, String> {
    let name = field.name;
    let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // A number too long for a u32 is out of range like any other.
        text.parse().unwrap_or(u32::MAX)
    } else if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        field.low + i as u32
    } else if text.is_empty() {
        return Err(format!("missing {name} in {whole:?}"));
    } else if field.names.is_empty() {
        return Err(format!("{name} {text:?} is not a number"));
    } else {
        return Err(format!("unknown name {text:?} for a {name}"));
    };
    if !(field.low..=field.high).contains(&value) {
        let (low, high) = (field.low, field.high);
        return Err(format!("{name} {text} is out of range {low}-{high}"));
    }
    Ok(value)
}

/// Returns the first firing of `spec` strictly after `after_ms`, both in
/// milliseconds since the epoch; `None` if there is none before the end of
/// time as a u64 counts it. `@every` fires `after_ms` plus its interval: the
/// caller passes the previous firing, or the start.
fn next_firing(spec: &Spec, after_ms: u64) -> Option<u64> {
    match spec {
        Spec::Every(every) => after_ms.checked_add(u64::try_from(every.as_millis()).ok()?),
        // Cron fires on whole minutes, so the first candidate is the next one.
        Spec::Cron(cron) => cron.first_from(after_ms / 60_000 + 1)?.checked_mul(60_000),
    }
}

impl Cron {
    /// Finds the first firing at or after `start`, both in minutes since
    /// the epoch, field by field: the day first, then the time in that day.
    fn first_from(&self, start: u64) -> Option<u64> {
        let today = start / 1440;
        let mut day = self.next_day(today)?;
        if day == today {
            match self.time_from(start % 1440) {
                Some(minute) => return Some(today * 1440 + minute),
                None => day = self.next_day(today + 1)?,
            }
        }
        Some(day * 1440 + self.time_from(0)?)
    }

    /// Finds the first minute of a day at or after `from` (minutes since
    /// midnight) whose hour and minute match.
    fn time_from(&self, from: u64) -> Option<u64> {
        let (hour, minute) = (from / 60, from % 60);
        if self.hours >> hour & 1 == 1
            && let Some(minute) = next_bit(self.minutes, minute)
        {
            return Some(hour * 60 + minute);
        }
        Some(next_bit(self.hours, hour + 1)? * 60 + next_bit(self.minutes, 0)?)
    }

    /// Finds the first day at or after `from` (days since the epoch) whose
    /// month and day match, within one calendar cycle.
    fn next_day(&self, from: u64) -> Option<u64> {
        let (start_year, start_month, start_day) = civil_from_days(i64::try_from(from).ok()?);
        for year in start_year..=start_year + CALENDAR_CYCLE_YEARS {
            let first_month = if year == start_year { start_month } else { 1 };
            for month in first_month..=12 {
                if self.months >> month & 1 == 0 {
                    continue;
                }
                let first_day = if (year, month) == (start_year, start_month) {
                    start_day
                } else {
                    1
                };
                if let Some(day) = next_bit(self.matching_days(year, month), u64::from(first_day)) {
                    return u64::try_from(days_from_civil(year, month, day as u32)).ok();
                }
            }
        }
        None
    }

    /// Returns the days of `month` in `year` that match, as a bitset: by
    /// cron's rule, the days either day field matches if both are
    /// restricted, else the days both match.
    fn matching_days(&self, year: i64, month: u32) -> u64 {
        // The weekday of the 1st, 0 for Sunday: 1970-01-01 was a Thursday.
        let first = (days_from_civil(year, month, 1) + 4).rem_euclid(7) as u32;
        // Bit i of `week` says whether day i + 1 has a matching weekday;
        // five weeks of it cover the longest month.
        let week = (self.weekdays >> first | self.weekdays << (7 - first)) & 0x7f;
        let by_weekday = (0..5).fold(0, |days, n| days | week << (1 + 7 * n));
        let days = if self.either_day {
            self.days | by_weekday
        } else {
            self.days & by_weekday
        };
        days & ((2 << days_in_month(year, month)) - 2)
    }
}

/// Returns the position of the lowest set bit of `bits` at or above `from`.
fn next_bit(bits: u64, from: u64) -> Option<u64> {
    let above = if from < 64 { bits >> from << from } else { 0 };
    (above != 0).then(|| u64::from(above.trailing_zeros()))
}

/// What the store keeps of a schedule: its firings so far.
#[derive(Debug)]
struct ScheduleState {
    /// Its name.
    name: Arc<str>,
    /// When it fires next, ms since the epoch (0: never, past the end of
    /// time as a u64 counts it).
    next_at: u64,
    /// When it last fired, ms since the epoch; 0 if it has not.
    last_at: u64,
    /// The task its last created firing made; 0 if none.
    last_task: u64,
    /// Firings that created a task.
    created: u64,
    /// Firings skipped: the previous task was still pending, or the queue
    /// was full.
    skipped: u64,
}

impl ScheduleState {
    /// A schedule's state at start: nothing fired yet, the first firing the
    /// next one due from now (missed ones are not made up).
    fn new(config: &ScheduleConfig) -> ScheduleState {
        ScheduleState {
            name: config.name.clone(),
            next_at: next_firing(&config.spec, now_millis()).unwrap_or(0),
            last_at: 0,
            last_task: 0,
            created: 0,
            skipped: 0,
        }
    }
}

impl Shared {
    /// Fires schedule `i`, due at `at`: creates its task as a POST would,
    /// or skips the firing. Returns when it fires next.
    fn fire(&self, i: usize, at: u64) -> Option<u64> {
        let config = &self.config.schedules[i];
        let mut store = self.store();
        let skipped = match store.fire(i, config, self) {
            Ok(id) => {
                debug!("schedule {} fired: task {}", config.name, store.task_id(id));
                None
            }
            Err(why) => Some(why),
        };
        let state = &mut store.schedules[i];
        state.last_at = at;
        if let Some(why) = skipped {
            state.skipped += 1;
            info!("schedule {}: firing skipped: {why}", config.name);
        }
        // Missed firings are not made up: the next is the next from now.
        state.next_at = next_firing(&config.spec, at.max(now_millis()))?;
        Some(state.next_at)
    }
}

impl Store {
    /// Creates the task of schedule `i`'s firing, unless its previous task
    /// is still pending or its queue is full; returns the new task's id, or
    /// why there is none.
    fn fire(&mut self, i: usize, config: &ScheduleConfig, shared: &Shared) -> Result<u64, String> {
        if let Some(task) = self.get(self.schedules[i].last_task)
            && matches!(
                task.state,
                State::Scheduled | State::Queued | State::Running
            )
        {
            return Err(format!("its previous task is still {}", task.state.name()));
        }
        // Checked at start-up, and nothing in it depends on the time.
        let mut new = parse_submission(&shared.config, config.template.as_bytes())?;
        new.label = new.label.or_else(|| Some(Text::new(&config.name)));
        new.schedule = Some(i as u16);
        match self.admit(new, &shared.queues) {
            Admission::Created(id, ..) => {
                let state = &mut self.schedules[i];
                (state.last_task, state.created) = (id, state.created + 1);
                Ok(id)
            }
            Admission::Full => Err("its queue is full".into()),
            Admission::ShuttingDown => Err("the server is shutting down".into()),
            other => Err(format!("{other:?}")),
        }
    }
}

// ---- 5. Handlers: the built-in sleep and external programs ----
//
// `sleep` is the original design's work: wait `work_duration`, unless
// something interrupts. A program handler is the real thing: a child
// process in its own process group, so that cancel, timeout and shutdown
// reach everything it started.

/// Runs the built-in `sleep` work.
async fn sleep(shared: &Shared, work: &Work) -> Outcome {
    let duration = work.sleep();
    if duration.is_zero() {
        return Outcome::Succeeded(None);
    }
    let slept = async {
        Timer::after(duration).await;
        Outcome::Succeeded(None)
    };
    let cut = async { interrupted(interruption(shared, work).await, work) };
    future::or(cut, slept).await
}

/// How many bytes one read of a program's output asks for: a quarter of
/// the tail, so a chatty program is read in few calls from a small buffer.
const PIPE_READ: usize = OUTPUT_TAIL / 4;

/// How much of a program's stdout and stderr is kept: the end of each,
/// since that is where a result or the reason for a failure usually is.
const OUTPUT_TAIL: usize = 4096;

/// How long a cancelled or timed-out program has between SIGTERM and SIGKILL.
const KILL_AFTER_CANCEL: Duration = Duration::from_secs(5);

/// How long a program interrupted by shutdown has between SIGTERM and
/// SIGKILL: shorter, because the whole server is waiting for it.
const KILL_AFTER_STOP: Duration = Duration::from_secs(1);

/// How long to keep reading a finished program's output after its process
/// group is gone: only a process that left the group can hold it open.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Runs one attempt of a program handler: starts it in a process group of
/// its own with the payload on stdin, reads the tails of its output as it
/// comes, and ends the whole group when the program exits or the attempt is
/// interrupted, so no process outlives its attempt.
async fn run_program(shared: &Shared, work: &Work, handler: &Handler) -> Outcome {
    use std::os::unix::process::CommandExt;
    use std::pin::pin;
    use std::process::Stdio;
    let mut command = std::process::Command::new(&handler.program);
    command
        .args(&handler.args)
        .env("BGTASKS_TASK_ID", work.id.to_string())
        .env("BGTASKS_TASK_KIND", work.kind.as_deref().unwrap_or("sleep"))
        .env("BGTASKS_ATTEMPT", work.attempt.to_string())
        .process_group(0);
    // The conversion keeps the program, arguments, environment and process
    // group, but not the standard streams: they are set after it.
    let mut command = smol::process::Command::from(command);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Failed(format!("cannot start {}: {e}", handler.program.display()));
        }
    };
    let group = rustix::process::Pid::from_raw(child.id() as i32);
    let stdin = child.stdin.take();
    let mut pipes = pin!(future::zip(
        read_stdout(child.stdout.take(), shared, work.id.num),
        read_tail(child.stderr.take())
    ));
    let mut tails = None;
    let feed = async {
        if let Some(mut stdin) = stdin {
            let payload = work.payload.as_deref().unwrap_or("null");
            // A program may exit without reading its input: EPIPE is fine.
            let _ = smol::io::AsyncWriteExt::write_all(&mut stdin, payload.as_bytes()).await;
        }
    };
    let exited = async { future::zip(feed, child.status()).await.1 };
    let ended = future::or(async { Err(interruption(shared, work).await) }, async {
        Ok(exited.await)
    });
    let ended = with_output(ended, pipes.as_mut(), &mut tails).await;
    let ending = match ended {
        Ok(status) => Ending::Exited(status),
        Err(why) => {
            signal_group(group, rustix::process::Signal::TERM);
            let grace = if why == Interrupt::Shutdown {
                KILL_AFTER_STOP
            } else {
                KILL_AFTER_CANCEL
            };
            let killed = async {
                Timer::after(grace).await;
                signal_group(group, rustix::process::Signal::KILL);
                future::pending().await
            };
            let exited = future::or(child.status(), killed);
            let _ = with_output(exited, pipes.as_mut(), &mut tails).await;
            Ending::Interrupted(why)
        }
    };
    // However the attempt ended, nothing it started may outlive it: what is
    // left of the group is killed and, since bgtasks is its subreaper,
    // reaped. That also closes the pipes a leftover process held.
    signal_group(group, rustix::process::Signal::KILL);
    reap_group(group).await;
    let (out, err) = match tails {
        Some(tails) => tails,
        None => {
            let late = async {
                Timer::after(OUTPUT_DRAIN).await;
                (Vec::new(), Vec::new())
            };
            future::or(pipes, late).await
        }
    };
    program_outcome(ending, work, &out, &err)
}

/// How a program's attempt ended.
#[derive(Debug)]
enum Ending {
    /// The program exited by itself (or waiting for it failed).
    Exited(io::Result<std::process::ExitStatus>),
    /// The attempt was interrupted and the program stopped.
    Interrupted(Interrupt),
}

/// How long to wait for a killed group's last processes to be reaped.
const REAP_WITHIN: Duration = Duration::from_secs(1);

/// How often to look for them meanwhile: SIGKILL lands within a
/// tick or two of the operating system's scheduler, and there is no
/// readiness to wait on.
const REAP_POLL: Duration = Duration::from_millis(2);

/// Reaps the processes of a killed group that were orphaned to bgtasks (its
/// subreaper), so none is left a zombie. It waits only on that group, so it
/// never takes an exit status async-process is waiting for.
async fn reap_group(group: Option<rustix::process::Pid>) {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let Some(group) = group else { return };
    let deadline = Instant::now() + REAP_WITHIN;
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    loop {
        match waitid(WaitId::Pgid(Some(group)), options) {
            // One reaped: there may be more.
            Ok(Some(_)) => {}
            // Killed but not yet dead: SIGKILL takes a moment to land, and
            // there is no readiness to wait for, so this looks again.
            Ok(None) if Instant::now() < deadline => {
                Timer::after(REAP_POLL).await;
            }
            // ECHILD: no process of the group is our child any more.
            _ => return,
        }
    }
}

/// Polls `fut` to completion while also reading the program's output into
/// `tails`, so a chatty program never blocks on a full pipe.
async fn with_output<T>(
    fut: impl Future<Output = T>,
    mut pipes: std::pin::Pin<&mut impl Future<Output = (Vec<u8>, Vec<u8>)>>,
    tails: &mut Option<(Vec<u8>, Vec<u8>)>,
) -> T {
    let drive = async {
        if tails.is_none() {
            *tails = Some(pipes.as_mut().await);
        }
        future::pending().await
    };
    future::or(fut, drive).await
}

/// Sends `signal` to a process group; a group that is already gone is fine.
fn signal_group(group: Option<rustix::process::Pid>, signal: rustix::process::Signal) {
    if let Some(group) = group {
        // ESRCH just means every process of the group has exited.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// Reads a pipe to its end and keeps the last [`OUTPUT_TAIL`] bytes.
async fn read_tail(pipe: Option<impl smol::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut tail = Vec::new();
    let Some(mut pipe) = pipe else { return tail };
    let mut chunk = [0u8; PIPE_READ];
    loop {
        match smol::io::AsyncReadExt::read(&mut pipe, &mut chunk).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => keep_tail(&mut tail, &chunk[..n]),
        }
    }
}

/// A line of a program's stdout that starts with this reports progress
/// (the convention of GitHub Actions' workflow commands).
const PROGRESS_PREFIX: &[u8] = b"::progress::";

/// The longest progress value: a status member, not a log; a longer line
/// is ignored.
const MAX_PROGRESS: usize = 1024;

/// Reads a program's stdout to its end, as it comes: reports each progress
/// line to the store, and keeps the last [`OUTPUT_TAIL`] bytes of the rest
/// for the result.
async fn read_stdout(
    pipe: Option<impl smol::io::AsyncRead + Unpin>,
    shared: &Shared,
    id: u64,
) -> Vec<u8> {
    let mut lines = Stdout::default();
    let Some(mut pipe) = pipe else {
        return lines.tail;
    };
    let mut chunk = [0u8; PIPE_READ];
    let mut report = |value: &[u8]| shared.store().set_progress(id, progress_json(value));
    loop {
        match smol::io::AsyncReadExt::read(&mut pipe, &mut chunk).await {
            Ok(0) | Err(_) => return lines.finish(&mut report),
            Ok(n) => lines.feed(&chunk[..n], &mut report),
        }
    }
}

/// Makes a progress value's JSON text: the value itself when it is JSON,
/// else a JSON string of it.
fn progress_json(value: &[u8]) -> Box<str> {
    result_json(value.trim_ascii())
}

/// Where the reader of a program's stdout is: it splits the output into
/// lines as it streams, whatever the reads' sizes, holding at most a
/// progress value of a line, never a whole line.
#[derive(Debug, Default)]
struct Stdout {
    /// The last bytes of the output that are not progress lines.
    tail: Vec<u8>,
    /// The line being read.
    line: Line,
}

/// What the line being read is known to be.
#[derive(Debug)]
enum Line {
    /// It may be a progress line: this many bytes of it match the prefix.
    Start(usize),
    /// A progress line: its value so far, `None` once it is too long.
    Progress(Option<Vec<u8>>),
    /// Any other line: its bytes go to the tail as they come.
    Other,
}

impl Default for Line {
    fn default() -> Line {
        Line::Start(0)
    }
}

impl Stdout {
    /// Takes in a chunk of output, reporting each progress line it ends.
    fn feed(&mut self, mut chunk: &[u8], report: &mut impl FnMut(&[u8])) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            match &mut self.line {
                Line::Start(matched) => {
                    let want = &PROGRESS_PREFIX[*matched..];
                    let n = want.len().min(chunk.len());
                    if chunk[..n] != want[..n] {
                        // Not progress: what looked like it is output.
                        keep_tail(&mut self.tail, &PROGRESS_PREFIX[..*matched]);
                        self.line = Line::Other;
                        continue;
                    }
                    *matched += n;
                    chunk = &chunk[n..];
                    if *matched == PROGRESS_PREFIX.len() {
                        self.line = Line::Progress(Some(Vec::new()));
                    }
                }
                Line::Other => {
                    let end = newline.map_or(chunk.len(), |at| at + 1);
                    keep_tail(&mut self.tail, &chunk[..end]);
                    chunk = &chunk[end..];
                    if newline.is_some() {
                        self.line = Line::Start(0);
                    }
                }
                Line::Progress(value) => {
                    let part = &chunk[..newline.unwrap_or(chunk.len())];
                    if value
                        .as_ref()
                        .is_some_and(|v| v.len() + part.len() > MAX_PROGRESS)
                    {
                        *value = None;
                    }
                    if let Some(value) = value {
                        value.extend_from_slice(part);
                    }
                    chunk = &chunk[part.len()..];
                    if newline.is_some() {
                        if let Some(value) = value.take() {
                            report(&value);
                        }
                        chunk = &chunk[1..];
                        self.line = Line::Start(0);
                    }
                }
            }
        }
    }

    /// Ends the output: a last line without its newline counts as a line.
    fn finish(mut self, report: &mut impl FnMut(&[u8])) -> Vec<u8> {
        match self.line {
            Line::Start(matched) => keep_tail(&mut self.tail, &PROGRESS_PREFIX[..matched]),
            Line::Progress(Some(value)) => report(&value),
            Line::Progress(None) | Line::Other => {}
        }
        self.tail
    }
}

/// Appends `chunk` to `tail`, dropping from the front beyond [`OUTPUT_TAIL`].
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > OUTPUT_TAIL {
        tail.drain(..tail.len() - OUTPUT_TAIL);
    }
}

/// Turns how a program ended, and its output, into the attempt's outcome.
/// A failure's `error` is the end of stderr, or a sentence if it is empty.
fn program_outcome(ending: Ending, work: &Work, out: &[u8], err: &[u8]) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let failed = |sentence: String| {
        Outcome::Failed(if err.is_empty() {
            sentence
        } else {
            String::from_utf8_lossy(err).into_owned()
        })
    };
    match ending {
        Ending::Interrupted(Interrupt::Timeout) => failed(timeout_sentence(work)),
        Ending::Interrupted(why) => interrupted(why, work),
        Ending::Exited(Ok(status)) if status.success() => {
            Outcome::Succeeded(Some(result_json(out)))
        }
        Ending::Exited(Ok(status)) => failed(match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (_, Some(signal)) => format!("killed by signal {signal}"),
            _ => format!("{status}"),
        }),
        Ending::Exited(Err(e)) => Outcome::Failed(format!("cannot wait for the program: {e}")),
    }
}

/// Makes a task's `result` from a program's stdout: the JSON itself when
/// all of it is JSON, else a JSON string of the text.
fn result_json(out: &[u8]) -> Box<str> {
    match serde_json::from_slice::<&serde_json::value::RawValue>(out) {
        Ok(raw) => raw.get().into(),
        Err(_) => {
            let mut json = Vec::with_capacity(out.len() + 2);
            write_json_str(&mut json, &String::from_utf8_lossy(out));
            String::from_utf8_lossy(&json).into()
        }
    }
}

// ---- 6. Journal (`--data-dir`) ----
//
// With `--data-dir`, every task and every change of its state is a line
// appended to `DIR/journal`, and replaying the lines at start rebuilds the
// store. A line is `<crc32 in hex> <json>`: the checksum tells a record cut
// short by a crash (the last line only) from damage anywhere else.
//
// The durability protocol. Its invariant: no `202` is sent and no task
// starts before the task's record is on disk, and no answer shows a state
// that is not on disk. Its steps, and who keeps each:
//
// 1. Every change is made under the store lock, and its record is sent to
//    the writer thread from there (`Store::log`), numbered in order; so
//    records are written in the order the changes happened. The last
//    number given out is published as `JournalProgress::appended`.
// 2. The writer thread (`write_journal`, `JournalWriter::commit`) appends
//    whatever has gathered and syncs once: concurrent submissions share one
//    fsync (group commit). If the write fails, it takes the batch's new
//    tasks back (`Store::take_back`) as if they had never been accepted.
//    It tells each submission whether its record made it, then publishes
//    how far it got (`durable`: the last record; `durable_task`: the last
//    new task) and fires `progress`.
// 3. A worker starts a task only once `durable_task` has reached it
//    (`JournalProgress::wait_task`), so a taken-back task never ran.
// 4. A connection writes its answers only once `durable` has reached the
//    `appended` it saw when it made the last of them (`Connection::settle`),
//    and puts a `503` in place of a `202` whose task was taken back.
// 5. Every wait of steps 3 and 4 races `grace_over`, so a writer that
//    stops making progress cannot hold shutdown up; the answers then go
//    unsent and the connection closes.
//
// Starts are not recorded. A task that was running when the process died
// is, in the journal, still queued with its previous attempt number, which
// is exactly what the contract asks for: queued again, the attempt not
// counted.
//
// The writer also compacts: once the file is several times what the
// retained tasks need, it writes them afresh to `journal.tmp`, syncs it,
// renames it over the journal and syncs the directory. A crash before the
// rename leaves the old journal; after it, the new one is complete.
//
// `Task`'s and `Store`'s journal methods are here rather than in section 2,
// so that everything the journal does is in one place.

/// The journal's file name inside `--data-dir`.
const JOURNAL: &str = "journal";

/// Where compaction writes the next journal before renaming it.
const JOURNAL_TMP: &str = "journal.tmp";

/// The file locked while a server uses the directory.
const LOCK: &str = "lock";

/// The most records written in one batch: enough to share an fsync among
/// thousands of submissions, small enough to bound one write.
const MAX_BATCH: usize = 4096;

/// The read buffer for replaying a journal: large reads, few system calls.
const REPLAY_BUFFER: usize = 1 << 20;

/// Compaction waits until the journal is this many times the size of a
/// fresh one, so that the work of rewriting it is spread over many writes.
const COMPACT_FACTOR: u64 = 4;

/// About how many bytes a retained task takes in a fresh journal (its
/// `new` and `state` records), to tell how large a compacted one would be.
const RECORD_ESTIMATE: u64 = 320;

/// And until it is at least this large: rewriting a small file is not worth
/// pausing the writer for.
const COMPACT_MIN: u64 = 8 << 20;

/// The CRC-32 (IEEE) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Computes the CRC-32 (IEEE) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// What a journal line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    /// A task was accepted: its fixed members.
    New,
    /// A task's state changed: all of its changing members.
    State,
    /// The first id this journal's tasks started from (for `410`).
    First,
    /// A queue was paused or resumed.
    Pause,
}

/// One journal line. The same shape serves every [`Op`]; members an op
/// does not use are left out.
#[derive(Debug, Default, serde::Serialize, Deserialize)]
struct Record<'a> {
    /// What the line records; `None` never appears in a file.
    op: Option<Op>,
    /// The task's id.
    id: u64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    task_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    work_duration: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    kind: Option<std::borrow::Cow<'a, str>>,
    /// The payload's JSON text.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    payload: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    timeout: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u8>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    key: Option<std::borrow::Cow<'a, str>>,
    /// The key's fingerprint of its first request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<u64>,
    /// The task's queue (left out for `default`), or the queue paused or
    /// resumed.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    queue: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_at: Option<u64>,
    /// Whether the queue is paused now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
    /// The schedule that made the task.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    schedule: Option<std::borrow::Cow<'a, str>>,
    /// The `--node` of the server that made the task.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    node: Option<std::borrow::Cow<'a, str>>,
    /// The last progress, as JSON text.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    progress: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    state: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_at: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    error: Option<std::borrow::Cow<'a, str>>,
    /// The result's JSON text.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    result: Option<std::borrow::Cow<'a, str>>,
}

/// Borrows an optional string for a record.
fn cow(s: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    s.map(std::borrow::Cow::Borrowed)
}

/// Turns 0 ("not yet") into `None` for a record.
fn nonzero(millis: u64) -> Option<u64> {
    (millis != 0).then_some(millis)
}

// The journal's side of `Task`; the rest of its impl is in section 2.
impl Task {
    /// The record of the task's fixed members, with the names of its queue
    /// and schedule. A delayed task still waiting says so: it is still
    /// `scheduled`.
    fn new_record<'a>(&'a self, names: Names<'a>) -> Record<'a> {
        let extra = self.extra.as_deref();
        let scheduled = self.state == State::Scheduled;
        Record {
            op: Some(Op::New),
            id: self.id,
            queue: cow(Some(names.queue).filter(|_| self.queue != 0)),
            schedule: cow(names.schedule),
            node: cow(names.id.node.strip_suffix('_')),
            run_at: nonzero(self.run_at),
            state: cow(scheduled.then_some(State::Scheduled.name())),
            task_id: cow(self.label.as_ref().map(Text::as_str)),
            work_duration: cow(self.work_duration.as_ref().map(Text::as_str)),
            kind: cow(extra.and_then(|e| e.kind.as_deref())),
            payload: cow(extra.and_then(|e| e.payload.as_deref())),
            timeout: cow(extra.and_then(|e| e.timeout.as_ref()).map(Text::as_str)),
            max_attempts: Some(self.max_attempts),
            key: cow(extra.and_then(|e| e.key.as_ref()).map(|k| &*k.text)),
            fingerprint: extra.and_then(|e| e.key.as_ref()).map(|k| k.fingerprint),
            ..Record::default()
        }
    }

    /// The record of the task's changing members. A running task is
    /// written as the journal sees it: queued, its attempt not counted.
    fn state_record(&self) -> Record<'_> {
        let extra = self.extra.as_deref();
        let (state, attempt) = match self.state {
            State::Running => (State::Queued, self.attempt - 1),
            state => (state, self.attempt),
        };
        Record {
            op: Some(Op::State),
            id: self.id,
            state: Some(std::borrow::Cow::Borrowed(state.name())),
            attempt: Some(attempt),
            started_at: nonzero(self.started_at),
            finished_at: nonzero(self.finished_at),
            retry_at: nonzero(extra.map_or(0, |e| e.retry_at)),
            error: cow(extra.and_then(|e| e.error.as_deref())),
            result: cow(extra.and_then(|e| e.result.as_deref())),
            progress: cow(extra.and_then(|e| e.progress.as_deref())),
            ..Record::default()
        }
    }

    /// Rebuilds a task from its `new` record. A queue that is no longer
    /// configured is `default`'s.
    fn from_record(record: &Record, config: &Config) -> Task {
        let kind = record.kind.as_deref().map(|name| {
            config
                .handlers
                .iter()
                .find(|h| &*h.kind == name)
                .map_or_else(|| Arc::from(name), |h| h.kind.clone())
        });
        let queue = record
            .queue
            .as_deref()
            .and_then(|name| config.queues.iter().position(|q| &*q.name == name))
            .unwrap_or(0);
        let state = match record.state.as_deref() {
            Some("scheduled") => State::Scheduled,
            _ => State::Queued,
        };
        let schedule = record
            .schedule
            .as_deref()
            .and_then(|name| config.schedules.iter().position(|s| &*s.name == name));
        Task::from_new(
            record.id,
            NewTask {
                label: record.task_id.as_deref().map(Text::new),
                work_duration: record.work_duration.as_deref().map(Text::new),
                kind,
                payload: record.payload.as_deref().map(Box::from),
                timeout: record.timeout.as_deref().map(Text::new),
                max_attempts: record.max_attempts.unwrap_or(1),
                key: record.key.as_deref().map(|text| IdempotencyKey {
                    text: text.into(),
                    fingerprint: record.fingerprint.unwrap_or(0),
                }),
                queue: queue as u8,
                run_at: record.run_at.unwrap_or(0),
                schedule: schedule.map(|s| s as u16),
            },
            state,
        )
    }

    /// Applies a `state` record (already checked by [`Record::check`]).
    fn apply(&mut self, record: &Record) -> Result<(), &'static str> {
        let state = record.state.as_deref().and_then(State::from_name);
        let attempt = record.attempt.unwrap_or(0);
        // A queued task has an attempt left; a finished one used at most all.
        let most = match state {
            Some(State::Queued) => self.max_attempts - 1,
            _ => self.max_attempts,
        };
        if attempt > most {
            return Err("attempt is past max_attempts");
        }
        self.state = state.unwrap_or(State::Queued);
        self.attempt = attempt;
        self.started_at = record.started_at.unwrap_or(0);
        self.finished_at = record.finished_at.unwrap_or(0);
        let changing = record.retry_at.is_some()
            || record.error.is_some()
            || record.result.is_some()
            || record.progress.is_some();
        if changing || self.extra.is_some() {
            let extra = self.extra_mut();
            extra.retry_at = record.retry_at.unwrap_or(0);
            extra.error = record.error.as_deref().map(Box::from);
            extra.result = record.result.as_deref().map(Box::from);
            extra.progress = record.progress.as_deref().map(Box::from);
        }
        Ok(())
    }
}

/// Appends `record` as one journal line: checksum, space, JSON, newline.
fn write_record(out: &mut Vec<u8>, record: &Record) {
    let start = out.len();
    out.extend_from_slice(b"00000000 ");
    // Serializing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, record);
    let crc = crc32(&out[start + 9..]);
    out[start..start + 8].copy_from_slice(format!("{crc:08x}").as_bytes());
    out.push(b'\n');
}

/// Why a journal line cannot be used.
#[derive(Debug, PartialEq, Eq)]
enum BadLine {
    /// It fails its checksum: a write cut short, if it is the last line.
    Checksum,
    /// Its checksum holds, but what it says the contract forbids.
    Invalid(&'static str),
}

/// Checks a journal line (without its newline) and parses its record.
fn read_record(line: &[u8]) -> Result<Record<'_>, BadLine> {
    let json = checked_json(line).ok_or(BadLine::Checksum)?;
    let record: Record = serde_json::from_slice(json)
        .map_err(|_| BadLine::Invalid("the record is not one the server writes"))?;
    record.check().map_err(BadLine::Invalid)?;
    Ok(record)
}

/// Returns the JSON of a journal line whose checksum holds.
fn checked_json(line: &[u8]) -> Option<&[u8]> {
    let crc = std::str::from_utf8(line.get(..8)?).ok()?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    let json = line.get(9..).filter(|_| line[8] == b' ')?;
    (crc32(json) == crc).then_some(json)
}

impl Record<'_> {
    /// Checks what a record says on its own against the contract's ranges.
    fn check(&self) -> Result<(), &'static str> {
        let is_json = |text: &Option<std::borrow::Cow<str>>| {
            text.as_deref()
                .is_none_or(|t| serde_json::from_str::<&serde_json::value::RawValue>(t).is_ok())
        };
        match self.op {
            None => Err("the record has no op"),
            Some(Op::New) if !self.max_attempts.is_some_and(|n| MAX_ATTEMPTS.contains(&n)) => {
                Err("max_attempts is out of range")
            }
            Some(Op::New) if !is_json(&self.payload) => Err("the payload is not JSON"),
            Some(Op::New) if self.state.as_deref().is_some_and(|s| s != "scheduled") => {
                Err("a new task is queued or scheduled")
            }
            Some(Op::New | Op::Pause)
                if self
                    .queue
                    .as_deref()
                    .is_some_and(|q| check_name(q).is_err()) =>
            {
                Err("the queue name is malformed")
            }
            Some(Op::New) if self.node.as_deref().is_some_and(|n| !is_node_name(n)) => {
                Err("the node name is malformed")
            }
            Some(Op::Pause) if self.queue.is_none() || self.paused.is_none() => {
                Err("a pause record names a queue and whether it is paused")
            }
            Some(Op::State) if self.state.as_deref().and_then(State::from_name).is_none() => {
                Err("the state is unknown")
            }
            Some(Op::State) if matches!(self.state.as_deref(), Some("running" | "scheduled")) => {
                Err("a running or scheduled state is never written")
            }
            Some(Op::State) if !is_json(&self.result) => Err("the result is not JSON"),
            Some(Op::State) if !is_json(&self.progress) => Err("the progress is not JSON"),
            _ => Ok(()),
        }
    }
}

/// One record on its way to the writer thread.
#[derive(Debug)]
struct JournalEntry {
    /// Its place in the journal: one more than the record before it.
    seq: u64,
    /// The line to append.
    line: Vec<u8>,
    /// For a `new` record: the task to take back if the write fails.
    created: Option<u64>,
    /// For a `new` record: told whether the record reached the disk.
    done: Option<Sender<bool>>,
}

/// The store's end of the journal: records go out from here, under the
/// store lock, so that their order is the order of the changes.
#[derive(Debug)]
struct JournalSender {
    /// To the writer thread.
    tx: Sender<JournalEntry>,
    /// The last sequence number given out.
    seq: u64,
    /// Where waiters learn how far the writer has got.
    progress: Arc<JournalProgress>,
}

/// What the connections and workers share of the journal: how far it is
/// on disk, and a way to wait for more.
#[derive(Debug)]
struct JournalProgress {
    /// The highest sequence number whose batch has been written (or has
    /// failed and been taken back).
    durable: AtomicU64,
    /// The highest task id whose `new` record has been written (or taken
    /// back): ids grow in journal order, so every task up to it is settled.
    durable_task: AtomicU64,
    /// The highest sequence number given out: what a connection's answers
    /// wait for (step 4; workers wait for `durable_task`).
    appended: AtomicU64,
    /// Fired, and replaced, after every batch.
    progress: Mutex<Trigger>,
}

impl JournalProgress {
    /// Starts the progress of a journal whose tasks up to `last_task` are
    /// on disk already (replayed).
    fn new(last_task: u64) -> JournalProgress {
        JournalProgress {
            durable: AtomicU64::new(0),
            durable_task: AtomicU64::new(last_task),
            appended: AtomicU64::new(0),
            progress: Mutex::new(Trigger::new()),
        }
    }

    /// Waits until the batch holding record `seq` has been dealt with;
    /// `false` if `cut` fired first.
    async fn wait_durable(&self, seq: u64, cut: &Trigger) -> bool {
        self.wait(|j| j.durable.load(Ordering::Acquire) >= seq, cut)
            .await
    }

    /// Waits until the `new` record of task `id` has been dealt with;
    /// `false` if `cut` fired first.
    async fn wait_task(&self, id: u64, cut: &Trigger) -> bool {
        self.wait(|j| j.durable_task.load(Ordering::Acquire) >= id, cut)
            .await
    }

    /// Waits until `ready` holds, checked after every batch; `false` if
    /// `cut` fired first. Every wait for the disk is cut short by the end
    /// of shutdown's grace, so a writer that stopped making progress
    /// cannot hold the process up.
    async fn wait(&self, ready: impl Fn(&JournalProgress) -> bool, cut: &Trigger) -> bool {
        loop {
            if ready(self) {
                return true;
            }
            let progress = self
                .progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            // Checked again: the batch may have ended before the clone.
            if ready(self) {
                return true;
            }
            let cut = async {
                cut.wait().await;
                false
            };
            let batch = async {
                progress.wait().await;
                true
            };
            if !future::or(cut, batch).await {
                return false;
            }
        }
    }

    /// Records that every record up to `seq`, and every task up to `task`,
    /// has been dealt with.
    fn advance(&self, seq: u64, task: Option<u64>) {
        if let Some(task) = task {
            self.durable_task.store(task, Ordering::Release);
        }
        self.durable.store(seq, Ordering::Release);
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *progress, Trigger::new()).fire();
    }
}

// The journal's side of `Store`; the rest of its impl is in section 2.
impl Store {
    /// Sends a record to the journal, if there is one. `created` and
    /// `done` are for `new` records.
    fn log(&mut self, line: Vec<u8>, created: Option<u64>, done: Option<Sender<bool>>) {
        let Some(log) = &mut self.journal else { return };
        log.seq += 1;
        let entry = JournalEntry {
            seq: log.seq,
            line,
            created,
            done,
        };
        // Closed only at the very end of shutdown, when nothing more counts.
        let _ = log.tx.try_send(entry);
        log.progress.appended.store(log.seq, Ordering::Release);
    }

    /// Journals the current state of the task at index `i`.
    fn log_state(&mut self, i: usize) {
        if self.journal.is_none() {
            return;
        }
        let mut line = Vec::with_capacity(160);
        write_record(&mut line, &self.tasks[i].state_record());
        self.log(line, None, None);
    }

    /// Journals that queue `q` was paused or resumed.
    fn log_pause(&mut self, q: usize) {
        if self.journal.is_none() {
            return;
        }
        let mut line = Vec::with_capacity(64);
        write_record(&mut line, &self.queues[q].pause_record());
        self.log(line, None, None);
    }

    /// Takes back a task whose `new` record could not be written: it was
    /// never started (workers wait for the record), and it leaves no trace.
    fn take_back(&mut self, id: u64) {
        let Ok(i) = self.position(id) else { return };
        if self.tasks[i].state != State::Queued || self.tasks[i].attempt != 0 {
            return;
        }
        let Some(task) = self.tasks.remove(i) else {
            return;
        };
        self.counts[State::Queued as usize] -= 1;
        self.counters.accepted -= 1;
        if let Some(key) = task.extra.and_then(|e| e.key) {
            self.keys.remove(&key.text);
        }
        if let Some(watch) = self.watchers.remove(&id) {
            watch.fire();
        }
    }

    /// Writes every retained task as `new` and `state` records: the
    /// content of a compacted journal.
    fn snapshot(&self, out: &mut Vec<u8>) {
        let first = Record {
            op: Some(Op::First),
            id: self.first_id,
            ..Record::default()
        };
        write_record(out, &first);
        for queue in self.queues.iter().filter(|q| q.paused) {
            write_record(out, &queue.pause_record());
        }
        for task in self.tasks.iter().filter(|t| t.state != State::Evicted) {
            write_record(out, &task.new_record(self.names(task)));
            if !matches!(task.state, State::Queued | State::Scheduled) || task.attempt > 0 {
                write_record(out, &task.state_record());
            }
        }
    }

    /// How many tasks are retained.
    fn retained(&self) -> usize {
        self.tasks.len() - self.tombstones
    }

    /// Fills an empty store from a replayed journal, applying
    /// `--keep-finished` and the queues' paused states, and puts back what
    /// was waiting: queued tasks into their queues in their original order
    /// (what does not fit waits for room), delayed tasks and retries not
    /// yet due into the scheduler — those due while the server was down
    /// come due at once.
    fn restore(&mut self, replayed: Replayed, queues: &[Queue]) {
        // This run's prefix applies from its first id on.
        let node = self.nodes[0].1;
        self.nodes = replayed.nodes.clone();
        self.nodes
            .push((replayed.tasks.last().map_or(0, |t| t.id + 1), node));
        for (name, paused) in &replayed.paused {
            if let Some(q) = queues.iter().position(|q| *q.name == **name) {
                self.queues[q].paused = *paused;
            }
        }
        let now = now_millis();
        let mut ready = Vec::new();
        let mut finished = Vec::new();
        for task in replayed.tasks {
            self.counts[task.state as usize] += 1;
            if let Some(key) = task.extra.as_ref().and_then(|e| e.key.as_ref()) {
                self.keys.insert(key.text.clone(), task.id);
            }
            let retry_at = task.extra.as_ref().map_or(0, |e| e.retry_at);
            if let Some(s) = task.extra.as_ref().and_then(|e| e.schedule) {
                // The last task a schedule made, so that its next firing
                // knows whether that one is still pending.
                let state = &mut self.schedules[usize::from(s)];
                (state.last_task, state.last_at) = (task.id, task.created_at());
            }
            // The scheduler's receiver is alive: it is returned with the store.
            match task.state {
                State::Scheduled => drop(self.due_tx.try_send((task.run_at, task.id))),
                State::Queued if retry_at > now => drop(self.due_tx.try_send((retry_at, task.id))),
                State::Queued => ready.push(task.id),
                _ => finished.push((task.finished_at, task.id)),
            }
            self.last_id = task.id;
            self.tasks.push_back(task);
        }
        self.first_id = match (replayed.first_id, self.tasks.front()) {
            (0, Some(task)) => task.id,
            (first, _) => first,
        };
        self.last_id = self.last_id.max(self.first_id);
        finished.sort_unstable();
        self.finished = finished.into_iter().map(|(_, id)| id).collect();
        self.evict();
        for id in ready {
            self.enqueue(id, queues);
        }
    }
}

impl QueueState {
    /// The record of whether the queue is paused.
    fn pause_record(&self) -> Record<'_> {
        Record {
            op: Some(Op::Pause),
            queue: cow(Some(&self.name)),
            paused: Some(self.paused),
            ..Record::default()
        }
    }
}

/// The journal file, as the writer thread keeps it.
struct JournalWriter {
    /// The data directory.
    dir: PathBuf,
    /// The journal, opened for appending.
    file: std::fs::File,
    /// Its length up to the last record known to be whole.
    len: u64,
    /// The length at which compaction is considered next.
    next_check: u64,
    /// Set when the file can no longer be trusted to take appends (a
    /// failed sync, or a failed write that could not be cut back).
    broken: bool,
    /// Set while writes fail, so that the log says so once, not per batch.
    failing: bool,
}

impl JournalWriter {
    /// Appends a batch and syncs it. A failed write is cut back off the
    /// file, so later appends follow whole records.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the journal stopped taking writes after an earlier failure",
            ));
        }
        if let Err(e) = self.file.write_all(bytes) {
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        // After a failed fsync nobody knows what reached the disk (the
        // kernel may have dropped the dirty pages): stop trusting the file.
        if let Err(e) = self.file.sync_data() {
            self.broken = true;
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Compacts the journal when it has grown past its threshold.
    fn maybe_compact(&mut self, shared: &Shared) {
        if self.len < self.next_check || self.broken {
            return;
        }
        let mut snapshot = Vec::new();
        {
            let store = shared.store();
            let estimate = store.retained() as u64 * RECORD_ESTIMATE;
            let threshold = COMPACT_FACTOR * estimate + COMPACT_MIN;
            if self.len < threshold {
                self.next_check = threshold;
                return;
            }
            store.snapshot(&mut snapshot);
        }
        let before = self.len;
        match self.replace_with(&snapshot) {
            Ok(()) => {
                self.len = snapshot.len() as u64;
                self.next_check = COMPACT_FACTOR * self.len + COMPACT_MIN;
                info!("journal compacted: {before} bytes -> {} bytes", self.len);
            }
            Err(e) => {
                warn!("journal compaction failed, will retry later: {e}");
                let _ = std::fs::remove_file(self.dir.join(JOURNAL_TMP));
                self.next_check = self.len + COMPACT_MIN;
            }
        }
    }

    /// Replaces the journal with `content`: write a new file, sync it,
    /// rename it over the old one, sync the directory, reopen.
    fn replace_with(&mut self, content: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(JOURNAL_TMP);
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(JOURNAL))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.file = open_journal(&self.dir)?;
        Ok(())
    }

    /// Step 2 of the durability protocol: appends a batch and syncs it
    /// once; if that fails, takes back the batch's new tasks; tells each
    /// submission whether its record made it; then publishes how far the
    /// journal is. Empties `batch`.
    fn commit(
        &mut self,
        batch: &mut Vec<JournalEntry>,
        shared: &Shared,
        progress: &JournalProgress,
    ) {
        let mut bytes = Vec::with_capacity(batch.iter().map(|e| e.line.len()).sum());
        for entry in batch.iter() {
            bytes.extend_from_slice(&entry.line);
        }
        let written = self.append(&bytes);
        self.report(&written);
        if written.is_err() {
            let mut store = shared.store();
            for id in batch.iter().filter_map(|e| e.created) {
                store.take_back(id);
            }
        }
        let last = batch.last().map_or(0, |e| e.seq);
        let last_task = batch.iter().filter_map(|e| e.created).max();
        // The outcomes go out before the progress: whoever wakes on it
        // finds its outcome waiting.
        for entry in batch.drain(..) {
            if let Some(done) = entry.done {
                // The submitter may have gone; then nobody needs to know.
                let _ = done.try_send(written.is_ok());
            }
        }
        progress.advance(last, last_task);
    }

    /// Logs when writes start failing and when they work again, once each.
    fn report(&mut self, written: &io::Result<()>) {
        let path = self.dir.join(JOURNAL);
        match written {
            Ok(()) if self.failing => {
                info!("journal: writing to {} again", path.display());
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                error!(
                    "journal: cannot write {}: {e}; new tasks get 503 until it can",
                    path.display()
                );
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Opens the journal for appending, creating it if need be.
fn open_journal(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(JOURNAL))
}

/// The writer thread: writes batches until the channel closes at shutdown.
fn write_journal(shared: Arc<Shared>, rx: Receiver<JournalEntry>, mut writer: JournalWriter) {
    let Some(progress) = &shared.journal else {
        return;
    };
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv_blocking() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        writer.commit(&mut batch, &shared, progress);
        writer.maybe_compact(&shared);
    }
}

/// What replaying a journal rebuilt.
#[derive(Debug, Default)]
struct Replayed {
    /// Every task, in id order.
    tasks: Vec<Task>,
    /// Queues paused or resumed, in the order it happened.
    paused: Vec<(Box<str>, bool)>,
    /// The id prefix from each id on, as the tasks were made: the store's
    /// table of [`Store::task_id`].
    nodes: Vec<(u64, &'static str)>,
    /// The first id of the journal's history.
    first_id: u64,
    /// How many bytes of the file are whole records.
    good_len: u64,
    /// Whether a torn last record was dropped.
    torn: bool,
}

/// Why a journal could not be replayed.
#[derive(Debug)]
enum ReplayError {
    /// Reading the file failed.
    Read(io::Error),
    /// A line other than the last one is bad: its number and why.
    Damage(usize, &'static str),
}

/// Reads the journal at `path`; the error names the file (and the line).
fn replay(path: &Path, config: &Config) -> Result<Replayed, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let reader = io::BufReader::with_capacity(REPLAY_BUFFER, file);
    replay_lines(reader, config).map_err(|e| match e {
        ReplayError::Read(e) => format!("cannot read {}: {e}", path.display()),
        ReplayError::Damage(line, why) => {
            format!("{}:{line}: the journal is damaged: {why}", path.display())
        }
    })
}

/// Replays journal lines. A last line that is cut short or fails its
/// checksum is a write the crash interrupted: it is dropped. A bad line
/// anywhere else, or a line whose checksum holds but whose values the
/// contract forbids, is damage.
fn replay_lines(mut reader: impl io::BufRead, config: &Config) -> Result<Replayed, ReplayError> {
    let mut replayed = Replayed::default();
    let mut line = Vec::new();
    let mut torn_line = None;
    for number in 1.. {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(ReplayError::Read)?
            == 0
        {
            break;
        }
        if let Some(torn) = torn_line {
            return Err(ReplayError::Damage(torn, "a record fails its checksum"));
        }
        let Some(text) = line.strip_suffix(b"\n") else {
            // The last line, cut short before its newline.
            torn_line = Some(number);
            continue;
        };
        match read_record(text) {
            Ok(record) => {
                replayed
                    .apply(&record, config)
                    .map_err(|why| ReplayError::Damage(number, why))?;
                replayed.good_len += line.len() as u64;
            }
            Err(BadLine::Checksum) => torn_line = Some(number),
            Err(BadLine::Invalid(why)) => return Err(ReplayError::Damage(number, why)),
        }
    }
    replayed.torn = torn_line.is_some();
    Ok(replayed)
}

impl Replayed {
    /// Applies one record; the error says why the record is impossible.
    fn apply(&mut self, record: &Record, config: &Config) -> Result<(), &'static str> {
        let at = self.tasks.binary_search_by_key(&record.id, |t| t.id);
        match (record.op, at) {
            (Some(Op::First), _) => self.first_id = record.id,
            (Some(Op::Pause), _) => {
                let queue = record.queue.as_deref().unwrap_or_default();
                self.paused
                    .push((queue.into(), record.paused == Some(true)));
            }
            // A record written again after compaction: already here.
            (Some(Op::New), Ok(_)) => {}
            (Some(Op::New), Err(i)) => {
                // A prefix changes only across restarts: it is leaked
                // once per change, not once per task.
                let node = record.node.as_deref().unwrap_or_default();
                let last = self.nodes.last().map_or("", |&(_, last)| last);
                if last.strip_suffix('_').unwrap_or(last) != node {
                    let node = match node {
                        "" => "",
                        node => parse_node(node).map_err(|_| "the node name is malformed")?,
                    };
                    self.nodes.push((record.id, node));
                }
                self.tasks.insert(i, Task::from_record(record, config));
            }
            (Some(Op::State), Ok(i)) => self.tasks[i].apply(record)?,
            // The state of a task compacted away after it was evicted.
            (Some(Op::State), Err(_)) | (None, _) => {}
        }
        Ok(())
    }
}

// ---- 7. HTTP/1.1 codec ----
//
// The codec is pure: it looks at bytes and says what they are, and never
// reads or writes a socket, so every rule below is tested on byte strings.
// Partial input is a normal state, not an error: the head parser is only
// called once `find_head_end` has seen the blank line, and `find_head_end`
// looks only at the newly read bytes, so a client trickling a head in
// one byte at a time costs linear work. Every limit has a name and a reason.
//
// An error names the status it becomes. After any of them the connection
// closes: once framing is in doubt, nobody knows where the next request
// would start.

/// The most bytes of a request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;

/// The most header lines in one request head (or chunked trailer).
const MAX_HEADERS: usize = 100;

/// The most bytes of a chunk-size line with its extensions.
const MAX_CHUNK_LINE: usize = 4096;

/// How long a whole request head may take to arrive, from its first byte
/// (from the accept, for a connection's first request). One deadline for
/// the whole head, so trickling bytes cannot stretch it.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may take to arrive, from the end of its head.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle keep-alive connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long writing one batch of responses may take before the client is
/// deemed gone: a client that never reads must not hold a connection open.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The request methods routes tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `HEAD`: answered without a body.
    Head,
    /// Any other well-formed method: always `404` or `405`.
    Other,
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` bytes (0 when the request has neither header).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What a request head says, with byte ranges into the head for the parts
/// routes read later.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Head {
    /// The method.
    method: Method,
    /// The path of the request target (absolute form already stripped).
    path: Range<usize>,
    /// The query string, without its `?`.
    query: Option<Range<usize>>,
    /// Whether the request is HTTP/1.0.
    http10: bool,
    /// Whether the connection stays open after the answer.
    keep_alive: bool,
    /// How the body is delimited.
    framing: Framing,
    /// Whether the client waits for `100 Continue` before sending the body.
    expect_continue: bool,
    /// The `Authorization` value.
    authorization: Option<Range<usize>>,
    /// The `Idempotency-Key` value.
    idempotency_key: Option<Range<usize>>,
}

/// Why a request cannot be served; each becomes one status code, and the
/// connection closes after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HttpError {
    /// `400`: malformed, with the reason.
    BadRequest(&'static str),
    /// `408`: the head or body did not arrive in time.
    Timeout,
    /// `413`: the body is larger than `--max-body`.
    BodyTooLarge,
    /// `417`: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// `431`: the head is larger than [`MAX_HEAD`] or has too many headers.
    HeadTooLarge,
    /// `501`: a transfer coding other than `chunked`.
    NotImplemented,
    /// `505`: an HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
}

impl HttpError {
    /// Returns the status code.
    fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::Timeout => 408,
            HttpError::BodyTooLarge => 413,
            HttpError::ExpectationFailed => 417,
            HttpError::HeadTooLarge => 431,
            HttpError::NotImplemented => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// Returns the sentence sent in the error body.
    fn message(self) -> &'static str {
        match self {
            HttpError::BadRequest(why) => why,
            HttpError::Timeout => "the request did not arrive in time",
            HttpError::BodyTooLarge => "the request body is larger than the server accepts",
            HttpError::ExpectationFailed => "only the expectation 100-continue is supported",
            HttpError::HeadTooLarge => "the request head is larger than the server accepts",
            HttpError::NotImplemented => "only the chunked transfer coding is supported",
            HttpError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

/// Counts the empty lines (CRLF or bare LF) at the start of `buf`, which
/// RFC 9112 §2.2 asks a server to ignore before a request line.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match &buf[i..] {
            [b'\n', ..] => i += 1,
            [b'\r', b'\n', ..] => i += 2,
            _ => return i,
        }
    }
}

/// Finds the end of a request head — the blank line, CRLF or bare LF —
/// and returns the length of the head including it. Only bytes from
/// `from` on are new, so the scan starts just before them.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let mut i = start + buf[start..].iter().position(|&b| b == b'\n')?;
    loop {
        match &buf[i + 1..] {
            [b'\n', ..] => return Some(i + 2),
            [b'\r', b'\n', ..] => return Some(i + 3),
            _ => i += 1 + buf[i + 1..].iter().position(|&b| b == b'\n')?,
        }
    }
}

/// Looks for a whole request head at the start of `buf`, dropping the
/// empty lines before it; returns the head's length once it is all there.
/// `scanned` remembers how far earlier calls looked, so each byte is
/// scanned about once however the head arrives.
fn take_head(buf: &mut Vec<u8>, scanned: &mut usize) -> Result<Option<usize>, HttpError> {
    let empty_lines = leading_empty_lines(buf);
    if empty_lines > 0 {
        buf.drain(..empty_lines);
        *scanned = 0;
    }
    match find_head_end(buf, *scanned) {
        Some(end) if end > MAX_HEAD => Err(HttpError::HeadTooLarge),
        Some(end) => Ok(Some(end)),
        None if buf.len() >= MAX_HEAD => Err(HttpError::HeadTooLarge),
        None => {
            *scanned = buf.len();
            Ok(None)
        }
    }
}

/// Tells whether `b` may appear in a token (RFC 9110 §5.6.2): methods and
/// header names.
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Which bytes are token characters, looked up once per byte of every
/// method and header name.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    table
};

/// Tells whether `b` separates the parts of a request line. RFC 9112 §3
/// lets a server split on any run of these instead of exactly one SP.
fn is_line_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c)
}

/// Trims spaces and tabs (optional whitespace) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Returns the range of `part` inside `whole`; `part` must be a subslice.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Splits a head (as found by [`find_head_end`]) into lines without their
/// line ends. A CR anywhere but just before a LF is an error.
fn head_lines(head: &[u8]) -> impl Iterator<Item = Result<&[u8], HttpError>> {
    head.split(|&b| b == b'\n').map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            Err(HttpError::BadRequest(
                "a bare CR is not allowed in a request head",
            ))
        } else {
            Ok(line)
        }
    })
}

/// Parses a complete request head: request line, then header lines, then
/// the blank line. The head must start at its request line.
fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let mut lines = head_lines(head);
    let request_line = lines.next().unwrap_or(Ok(b""))?;
    let mut words = request_line
        .split(|&b| is_line_space(b))
        .filter(|w| !w.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(HttpError::BadRequest("the request line is malformed"));
    };
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadRequest("the request method is malformed"));
    }
    let http10 = parse_version(version)?;
    let (path, query) = split_target(target)?;
    let mut parsed = Head {
        method: match method {
            b"GET" => Method::Get,
            b"POST" => Method::Post,
            b"HEAD" => Method::Head,
            _ => Method::Other,
        },
        path: range_in(head, path),
        query: query.map(|q| range_in(head, q)),
        http10,
        keep_alive: !http10,
        framing: Framing::Length(0),
        expect_continue: false,
        authorization: None,
        idempotency_key: None,
    };
    let mut fields = HeaderFields::default();
    for (count, line) in lines.enumerate() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if count >= MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        fields.add(head, line, &mut parsed)?;
    }
    fields.finish(&mut parsed)?;
    Ok(parsed)
}

/// Parses `HTTP/1.1` or `HTTP/1.0`; returns whether it is 1.0.
fn parse_version(version: &[u8]) -> Result<bool, HttpError> {
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        [b'H', b'T', b'T', b'P', b'/', rest @ ..]
            if !rest.is_empty() && rest.iter().all(|&b| b.is_ascii_digit() || b == b'.') =>
        {
            Err(HttpError::VersionNotSupported)
        }
        _ => Err(HttpError::BadRequest("the HTTP version is malformed")),
    }
}

/// Splits a request target into path and query. Accepts the origin form
/// (`/tasks?x`), the absolute form (`http://host/tasks?x`, whose authority
/// is ignored) and `*`, which matches no route.
fn split_target(target: &[u8]) -> Result<(&[u8], Option<&[u8]>), HttpError> {
    if !target.iter().all(|&b| b.is_ascii_graphic() && b != b'#') {
        return Err(HttpError::BadRequest("the request target is malformed"));
    }
    let path_and_query = match target {
        [b'/', ..] | b"*" => target,
        _ => {
            let scheme_end = target
                .windows(3)
                .position(|w| w == b"://")
                .filter(|&i| {
                    let scheme = &target[..i];
                    scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")
                })
                .ok_or(HttpError::BadRequest("the request target is malformed"))?;
            let rest = &target[scheme_end + 3..];
            let authority = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            if authority == 0 {
                return Err(HttpError::BadRequest("the request target has no host"));
            }
            &rest[authority..]
        }
    };
    Ok(match path_and_query.iter().position(|&b| b == b'?') {
        Some(q) => (&path_and_query[..q], Some(&path_and_query[q + 1..])),
        None => (path_and_query, None),
    })
}

/// What the header lines have said so far; checked as a whole at the end.
#[derive(Default)]
struct HeaderFields {
    /// How many `Host` lines.
    hosts: usize,
    /// The `Content-Length`, if any.
    content_length: Option<u64>,
    /// Whether any `Transfer-Encoding` line appeared.
    transfer_encoding: bool,
    /// How many `chunked` codings were listed.
    chunked: usize,
    /// Whether a coding other than `chunked` was listed.
    other_coding: bool,
    /// `Connection: close` was sent.
    close: bool,
    /// `Connection: keep-alive` was sent.
    keep_alive: bool,
}

impl HeaderFields {
    /// Takes one header line into account.
    fn add(&mut self, head: &[u8], line: &[u8], parsed: &mut Head) -> Result<(), HttpError> {
        let (name, value) = split_field(line)?;
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        if is("host") {
            self.hosts += 1;
        } else if is("content-length") {
            if self.content_length.is_some() {
                return Err(HttpError::BadRequest("Content-Length is repeated"));
            }
            self.content_length = Some(parse_content_length(value)?);
        } else if is("transfer-encoding") {
            self.transfer_encoding = true;
            for coding in value.split(|&b| b == b',').map(trim_ows) {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    self.chunked += 1;
                } else if !coding.is_empty() {
                    self.other_coding = true;
                }
            }
        } else if is("connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            parsed.expect_continue = true;
        } else if is("authorization") {
            if parsed.authorization.is_some() {
                return Err(HttpError::BadRequest("Authorization is repeated"));
            }
            parsed.authorization = Some(range_in(head, value));
        } else if is("idempotency-key") {
            if parsed.idempotency_key.is_some() {
                return Err(HttpError::BadRequest("Idempotency-Key is repeated"));
            }
            parsed.idempotency_key = Some(range_in(head, value));
        }
        Ok(())
    }

    /// Checks the headers as a whole and decides framing and keep-alive.
    fn finish(self, parsed: &mut Head) -> Result<(), HttpError> {
        if self.hosts > 1 || (self.hosts == 0 && !parsed.http10) {
            return Err(HttpError::BadRequest(
                "an HTTP/1.1 request needs exactly one Host header",
            ));
        }
        if self.transfer_encoding {
            // Both framings at once is how requests are smuggled past proxies.
            if self.content_length.is_some() {
                return Err(HttpError::BadRequest(
                    "Content-Length and Transfer-Encoding together are not allowed",
                ));
            }
            if parsed.http10 {
                return Err(HttpError::BadRequest("HTTP/1.0 has no Transfer-Encoding"));
            }
            if self.other_coding {
                return Err(HttpError::NotImplemented);
            }
            if self.chunked != 1 {
                return Err(HttpError::BadRequest("Transfer-Encoding is malformed"));
            }
            parsed.framing = Framing::Chunked;
        } else if let Some(length) = self.content_length {
            parsed.framing = Framing::Length(length);
        }
        parsed.keep_alive = if parsed.http10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        };
        // RFC 9110 §10.1.1: an HTTP/1.0 client cannot mean 100-continue.
        parsed.expect_continue &= !parsed.http10;
        Ok(())
    }
}

/// Splits a header or trailer field line into its name and its value
/// (without surrounding whitespace), refusing what RFC 9112 §5 lets a
/// server refuse: obsolete line folding, whitespace before the colon, no
/// colon, an empty or malformed name, control characters in the value.
fn split_field(line: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        // RFC 9112 §5.2: obsolete line folding may be rejected.
        return Err(HttpError::BadRequest(
            "obsolete line folding (a header line starting with whitespace) is not accepted",
        ));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::BadRequest("a header line has no colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        // This includes whitespace before the colon (RFC 9112 §5.1).
        return Err(HttpError::BadRequest("a header name is malformed"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(HttpError::BadRequest(
            "a header value has a control character",
        ));
    }
    Ok((name, value))
}

/// Parses a `Content-Length` value: digits only, no sign, no list, and no
/// value past `u64::MAX`.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let bad = HttpError::BadRequest("Content-Length is malformed");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(bad)
    })
}

/// Where a chunked body decoder is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex digits of a chunk size.
    #[default]
    Size,
    /// Reading whitespace after the size, before `;` or the line end.
    SizeSpace,
    /// Reading chunk extensions up to the line end (they are ignored).
    Extension,
    /// Reading this many bytes of chunk data.
    Data(u64),
    /// Expecting the CRLF (or LF) after chunk data.
    DataEnd,
    /// Reading trailer lines (the current one is in `Chunked::trailer`).
    Trailer,
    /// The body is complete.
    Done,
}

/// A resumable decoder of a chunked body (RFC 9112 §7.1): fed whatever
/// bytes have arrived, it keeps its place, so a body split anywhere decodes
/// the same, and each byte is looked at once.
#[derive(Debug, Default)]
struct Chunked {
    /// Where the decoder is.
    state: ChunkState,
    /// The chunk size read so far.
    size: u64,
    /// Whether the size line has any hex digit.
    digits: bool,
    /// Bytes of the current size line, for its limit.
    line: usize,
    /// Whether a CR was just seen (a CR must be followed by LF).
    cr: bool,
    /// The trailer line being read, checked like a header line at its end.
    trailer: Vec<u8>,
    /// Trailer bytes so far, for the head's size limit.
    trailer_bytes: usize,
    /// Trailer lines so far, for the head's line limit.
    trailer_lines: usize,
    /// The decoded body.
    body: Vec<u8>,
}

impl Chunked {
    /// Decodes what it can of `input` and returns how many bytes it used.
    /// When the body is complete, `state` is `Done` and the rest of
    /// `input` belongs to the next request.
    fn feed(&mut self, input: &[u8], max_body: usize) -> Result<usize, HttpError> {
        let bad = |why| Err(HttpError::BadRequest(why));
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            if self.cr && b != b'\n' {
                return bad("a bare CR in the chunked framing");
            }
            match self.state {
                ChunkState::Data(left) => {
                    let take = left.min((input.len() - i) as u64) as usize;
                    self.body.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.state = match left - take as u64 {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                    continue;
                }
                _ if b == b'\r' => self.cr = true,
                ChunkState::Size if b.is_ascii_hexdigit() => {
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| {
                            s.checked_add(u64::from((b as char).to_digit(16).unwrap_or(0)))
                        })
                        .ok_or(HttpError::BadRequest("a chunk size overflows"))?;
                    self.digits = true;
                }
                ChunkState::Size | ChunkState::SizeSpace | ChunkState::Extension if b == b'\n' => {
                    if !self.digits {
                        return bad("a chunk size is missing");
                    }
                    self.end_size_line(max_body)?;
                }
                ChunkState::Size | ChunkState::SizeSpace if b == b';' => {
                    self.state = ChunkState::Extension
                }
                ChunkState::Size | ChunkState::SizeSpace if b == b' ' || b == b'\t' => {
                    self.state = ChunkState::SizeSpace
                }
                ChunkState::Size | ChunkState::SizeSpace => {
                    return bad("a chunk size is malformed");
                }
                ChunkState::Extension if b < 0x20 && b != b'\t' || b == 0x7f => {
                    return bad("a chunk extension has a control character");
                }
                ChunkState::Extension => {}
                ChunkState::DataEnd if b == b'\n' => self.state = ChunkState::Size,
                ChunkState::DataEnd => return bad("chunk data is longer than its size"),
                ChunkState::Trailer if b == b'\n' && self.trailer.is_empty() => {
                    self.state = ChunkState::Done;
                }
                ChunkState::Trailer if b == b'\n' => {
                    self.trailer_lines += 1;
                    if self.trailer_lines > MAX_HEADERS {
                        return Err(HttpError::HeadTooLarge);
                    }
                    // Trailers are read and ignored, but only if they are
                    // what a header line may be: a request head after the
                    // last chunk must not pass as a trailer.
                    split_field(&self.trailer)?;
                    self.trailer.clear();
                }
                ChunkState::Trailer => self.trailer.push(b),
                ChunkState::Done => {}
            }
            if b != b'\r' {
                self.cr = false;
            }
            if matches!(
                self.state,
                ChunkState::Size | ChunkState::SizeSpace | ChunkState::Extension
            ) {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return bad("a chunk size line is too long");
                }
            }
            if self.state == ChunkState::Trailer {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    /// Acts on a complete size line: the last chunk leads to the trailers,
    /// any other to its data, if the body stays within `max_body`.
    fn end_size_line(&mut self, max_body: usize) -> Result<(), HttpError> {
        if self.size > (max_body - self.body.len()) as u64 {
            return Err(HttpError::BodyTooLarge);
        }
        self.state = match self.size {
            0 => ChunkState::Trailer,
            size => ChunkState::Data(size),
        };
        self.size = 0;
        self.digits = false;
        self.line = 0;
        Ok(())
    }
}

/// Decodes the `%XX` escapes of a path segment or query part; with `plus`
/// a `+` is a space (form encoding). `None` for a broken escape.
fn percent_decode(s: &[u8], plus: bool) -> Option<std::borrow::Cow<'_, [u8]>> {
    if !s.iter().any(|&b| b == b'%' || plus && b == b'+') {
        return Some(std::borrow::Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                // Exactly two hex digits: `from_str_radix` alone would also
                // take a sign, as in `%+1`.
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                out.push(digit(hex[0]) << 4 | digit(hex[1]));
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(std::borrow::Cow::Owned(out))
}

/// Returns the reason phrase of a status code.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Room reserved for a response's head, so that writing one rarely grows
/// the buffer: the longest head bgtasks writes is under this.
const RESPONSE_HEAD: usize = 192;

/// An answer, ready to be written.
#[derive(Debug)]
struct Response {
    /// The status code.
    status: u16,
    /// The body; JSON unless `content_type` says otherwise. Fixed answers
    /// borrow theirs.
    body: std::borrow::Cow<'static, [u8]>,
    /// The `Content-Type`.
    content_type: &'static str,
    /// A task id for `Location: /tasks/<id>`.
    location: Option<TaskId>,
    /// Seconds for `Retry-After`.
    retry_after: Option<u64>,
    /// Methods for `Allow`, with a `405`.
    allow: Option<&'static str>,
    /// Whether to send `WWW-Authenticate: Bearer`, with a `401`.
    authenticate: bool,
    /// More header lines, each ending in CRLF, written as they are.
    headers: &'static str,
}

impl Response {
    /// Makes a JSON response.
    fn json(status: u16, body: impl Into<std::borrow::Cow<'static, [u8]>>) -> Response {
        Response {
            status,
            body: body.into(),
            content_type: "application/json",
            location: None,
            retry_after: None,
            allow: None,
            authenticate: false,
            headers: "",
        }
    }

    /// Makes an error response: `{"error": "<sentence>"}`.
    fn error(status: u16, sentence: &str) -> Response {
        let mut body = Vec::with_capacity(sentence.len() + 16);
        body.extend_from_slice(b"{\"error\": ");
        write_json_str(&mut body, sentence);
        body.push(b'}');
        Response::json(status, body)
    }

    /// Appends the response to `out`, delivered as `delivery` says.
    fn write(&self, out: &mut Vec<u8>, delivery: Delivery) {
        // Tuning: the plain version is one `write!` per line. Every answer
        // goes through here, so it appends bytes with no formatting
        // machinery, into room reserved once: 319M -> 258M instructions
        // for 20,000 submissions under callgrind.
        out.reserve(RESPONSE_HEAD + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        write_decimal(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\nDate: ");
        with_http_date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        write_decimal(out, self.body.len() as u64);
        out.extend_from_slice(b"\r\n");
        if let Some(id) = self.location {
            out.extend_from_slice(b"Location: /tasks/");
            id.write(out);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(secs) = self.retry_after {
            out.extend_from_slice(b"Retry-After: ");
            write_decimal(out, secs);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(allow) = self.allow {
            out.extend_from_slice(b"Allow: ");
            out.extend_from_slice(allow.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.authenticate {
            out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n");
        }
        out.extend_from_slice(self.headers.as_bytes());
        delivery.write_connection(out);
        out.extend_from_slice(b"\r\n");
        if !delivery.head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// How an answer goes on the wire: shaped by the request it answers, and
/// by whether the connection stays open after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Delivery {
    /// Whether the connection stays open after this answer.
    keep_alive: bool,
    /// Whether the request was HTTP/1.0, whose keep-alive must be stated.
    http10: bool,
    /// Whether the request was `HEAD`: the head is sent without the body.
    head_only: bool,
}

impl Delivery {
    /// The answer to a request that could not be read: the connection
    /// closes after it.
    const CLOSING: Delivery = Delivery {
        keep_alive: false,
        http10: false,
        head_only: false,
    };

    /// Appends the `Connection` header, when one is needed: an HTTP/1.0
    /// client is told that the connection stays open, an HTTP/1.1 client
    /// that it does not, each protocol's exception to its default.
    fn write_connection(self, out: &mut Vec<u8>) {
        match (self.keep_alive, self.http10) {
            (false, false) => out.extend_from_slice(b"Connection: close\r\n"),
            (true, true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            _ => {}
        }
    }

    /// Returns how to deliver the answer to `head`.
    fn of(head: &Head, keep_alive: bool) -> Delivery {
        Delivery {
            keep_alive,
            http10: head.http10,
            head_only: head.method == Method::Head,
        }
    }
}

/// Appends `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Calls `f` with the current time as an HTTP date (RFC 9110 §5.6.7),
/// such as `Sun, 06 Nov 1994 08:49:37 GMT`.
///
// Tuning: the plain version formats the date for each answer; each thread
// here formats it once a second and keeps it, which spares a `core::fmt`
// call and a division by 86,400 on every answer.
fn with_http_date(f: impl FnOnce(&[u8])) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let secs = now_micros() / 1_000_000;
    DATE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            cache.1.clear();
            write_http_date(&mut cache.1, secs);
            cache.0 = secs;
        }
        f(&cache.1);
    });
}

/// Appends an HTTP date for `secs` since the epoch.
fn write_http_date(out: &mut Vec<u8>, secs: u64) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let t = secs % 86_400;
    let _ = write!(
        VecWriter(out),
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[month as usize - 1],
        t / 3600,
        t / 60 % 60,
        t % 60
    );
}

// ---- 8. Routes ----
//
// A route is chosen from the head alone, before the body is read, so that a
// request that will be refused anyway (no token, with `Expect:
// 100-continue`) is refused without waiting for its body. The answers are
// built under the store lock straight into the response body: nothing is
// copied out of a record to render it.

/// The routes, as chosen from a request head.
#[derive(Debug, PartialEq)]
enum Route {
    /// `POST /queue-task`, `POST /tasks`: the route's path, which an
    /// idempotency key's fingerprint includes.
    Submit(&'static str),
    /// `GET /tasks`.
    List,
    /// `GET /tasks/{id}`; `None` for a malformed id.
    Status(Option<IdRef>),
    /// `POST /tasks/{id}/cancel`.
    Cancel(Option<IdRef>),
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /queues`.
    Queues,
    /// `GET /schedules`.
    Schedules,
    /// `GET /events`.
    Events,
    /// `GET /`: the dashboard.
    Dashboard,
    /// `GET /openapi.json`: this API described.
    OpenApi,
    /// `POST /queues/{name}/pause` (`true`) and `/resume` (`false`); the
    /// name as given, `None` if it is not UTF-8.
    Pause(Option<Box<str>>, bool),
    /// A path no route has.
    NotFound,
    /// A known path with another method; the methods it allows.
    NotAllowed(&'static str),
    /// A token is required and the request lacks it.
    Unauthorized,
}

/// Chooses the route for a request head. `head` is the head's bytes.
///
/// `HEAD` takes the route `GET` would (RFC 9110 §9.1: load balancers and
/// health checkers probe with it); the answer is sent without its body.
fn choose_route(head: &Head, bytes: &[u8], token: Option<&str>) -> Result<Route, HttpError> {
    let route = match (resource(&bytes[head.path.clone()])?, head.method) {
        (None, _) => Route::NotFound,
        (Some(r), Method::Get | Method::Head) => r.get.unwrap_or(Route::NotAllowed(r.allow)),
        (Some(r), Method::Post) => r.post.unwrap_or(Route::NotAllowed(r.allow)),
        (Some(r), Method::Other) => Route::NotAllowed(r.allow),
    };
    if let Some(token) = token {
        // The page loads without the token: it asks for it.
        let open = matches!(route, Route::Health | Route::Dashboard);
        let given = head.authorization.clone().map(|r| &bytes[r]);
        if !open && !bearer_matches(given, token) {
            return Ok(Route::Unauthorized);
        }
    }
    Ok(route)
}

/// What a path names: the route of each method it answers, and the
/// methods for `Allow`.
struct Resource {
    /// The route for `GET` (and `HEAD`).
    get: Option<Route>,
    /// The route for `POST`.
    post: Option<Route>,
    /// The `Allow` header of a `405`.
    allow: &'static str,
}

impl Resource {
    /// A resource that answers `GET` and `HEAD`.
    fn get(route: Route) -> Resource {
        Resource {
            get: Some(route),
            post: None,
            allow: "GET, HEAD",
        }
    }

    /// A resource that answers `POST`.
    fn post(route: Route) -> Resource {
        Resource {
            get: None,
            post: Some(route),
            allow: "POST",
        }
    }
}

/// The most path segments a route has (`/tasks/{id}/cancel`); a longer
/// path names nothing, and its segments are not decoded.
const MAX_SEGMENTS: usize = 3;

/// Finds what a path names; `None` for a path no route has. Segments are
/// percent-decoded one by one, so `%2F` does not split one.
fn resource(path: &[u8]) -> Result<Option<Resource>, HttpError> {
    let mut segments: [std::borrow::Cow<[u8]>; MAX_SEGMENTS] = Default::default();
    let mut count = 0;
    if let Some(rest) = path.strip_prefix(b"/") {
        for segment in rest.split(|&b| b == b'/') {
            if count == MAX_SEGMENTS {
                return Ok(None);
            }
            segments[count] = percent_decode(segment, false).ok_or(HttpError::BadRequest(
                "the request path has a broken percent escape",
            ))?;
            count += 1;
        }
    }
    let [first, second, third] = &segments;
    let id = || IdRef::parse(second);
    Ok(Some(match (count, &first[..], &second[..], &third[..]) {
        (1, b"queue-task", _, _) => Resource::post(Route::Submit("/queue-task")),
        // `/tasks/`, as people type it, is the list too.
        (1, b"tasks", _, _) | (2, b"tasks", b"", _) => Resource {
            get: Some(Route::List),
            post: Some(Route::Submit("/tasks")),
            allow: "GET, HEAD, POST",
        },
        (2, b"tasks", _, _) => Resource::get(Route::Status(id())),
        (3, b"tasks", _, b"cancel") => Resource::post(Route::Cancel(id())),
        (1, b"healthz", _, _) => Resource::get(Route::Health),
        (1, b"metrics", _, _) => Resource::get(Route::Metrics),
        (1, b"queues", _, _) => Resource::get(Route::Queues),
        (1, b"schedules", _, _) => Resource::get(Route::Schedules),
        (1, b"events", _, _) => Resource::get(Route::Events),
        (1, b"", _, _) => Resource::get(Route::Dashboard),
        (1, b"openapi.json", _, _) => Resource::get(Route::OpenApi),
        (3, b"queues", name, b"pause" | b"resume") => {
            let name = std::str::from_utf8(name).ok().map(Box::from);
            Resource::post(Route::Pause(name, &third[..] == b"pause"))
        }
        _ => return Ok(None),
    }))
}

/// Tells whether an `Authorization` value is `Bearer <token>` (the scheme
/// in any case), comparing the token in constant time.
fn bearer_matches(given: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = given else { return false };
    let split = given.iter().position(|&b| b == b' ').unwrap_or(given.len());
    let (scheme, credentials) = given.split_at(split);
    scheme.eq_ignore_ascii_case(b"bearer")
        && constant_time_eq(trim_ows(credentials), token.as_bytes())
}

/// Compares two byte strings in time that depends only on their lengths,
/// so a client cannot find the token one byte at a time by timing answers.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

/// What a route answers: at once, or once a long poll ends.
#[derive(Debug)]
enum Reply {
    /// The answer is ready.
    Now(Response),
    /// `GET /tasks/{id}?wait=`: wait for the task to change.
    Poll(LongPoll),
    /// A submission to the route with this path: admit it and, with a
    /// journal, wait for the disk.
    Submit(&'static str),
    /// `GET /events` with these filters: stream.
    Events(EventFilter),
}

/// A long poll in progress.
#[derive(Debug)]
struct LongPoll {
    /// The task waited on.
    id: u64,
    /// Its state when the request arrived.
    seen: State,
    /// When the wait ends regardless.
    until: Instant,
}

/// The OpenAPI 3.1 document of every route, embedded like the dashboard.
/// It needs the token like any route but the two the contract opens: it
/// tells nothing secret, but nothing in the contract exempts it either.
const OPENAPI: &str = include_str!("openapi.json");

/// The longest `?wait=`: longer waits are cut to this.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Answers a request from its route and head. A submission needs its body
/// and, with a journal, a wait for the disk: it is handed back to the
/// connection as [`Reply::Submit`].
fn answer(shared: &Shared, route: Route, head: &Head, bytes: &[u8]) -> Reply {
    let query = head.query.clone().map(|q| &bytes[q]);
    Reply::Now(match route {
        Route::Submit(route) => return Reply::Submit(route),
        Route::List => list(shared, query),
        Route::Status(id) => return status(shared, id, query, head.method == Method::Head),
        Route::Cancel(id) => cancel(shared, id),
        Route::Health if shared.draining.is_fired() => {
            Response::json(503, &b"{\"status\": \"shutting down\"}"[..])
        }
        Route::Health => Response::json(200, &b"{\"status\": \"ok\"}"[..]),
        Route::Metrics => metrics(shared),
        Route::Queues => queues(shared),
        Route::Schedules => schedules(shared),
        Route::Events => {
            return match EventFilter::parse(query, &shared.config, &shared.store()) {
                Ok(filter) => Reply::Events(filter),
                Err(response) => Reply::Now(response),
            };
        }
        Route::Dashboard => dashboard(),
        Route::OpenApi => Response::json(200, OPENAPI.as_bytes()),
        Route::Pause(name, paused) => pause(shared, name.as_deref(), paused),
        Route::NotFound => Response::error(404, "no such path"),
        Route::NotAllowed(allow) => Response {
            allow: Some(allow),
            ..Response::error(405, "method not allowed")
        },
        Route::Unauthorized => Response {
            authenticate: true,
            ..Response::error(401, "a valid bearer token is required")
        },
    })
}

/// The members a submission body may have. Strings borrow from the body
/// when they have no escapes; `null` counts as absent.
#[derive(Deserialize)]
struct Submission<'a> {
    /// The client's label.
    #[serde(borrow, default)]
    task_id: Option<std::borrow::Cow<'a, str>>,
    /// How long a `sleep` task lasts.
    #[serde(borrow, default)]
    work_duration: Option<std::borrow::Cow<'a, str>>,
    /// The task kind.
    #[serde(borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    /// Anything, handed to the handler.
    #[serde(borrow, default)]
    payload: Option<&'a serde_json::value::RawValue>,
    /// The per-attempt timeout.
    #[serde(borrow, default)]
    timeout: Option<std::borrow::Cow<'a, str>>,
    /// Attempts allowed.
    #[serde(default)]
    max_attempts: Option<serde_json::Number>,
    /// The queue to run in.
    #[serde(borrow, default)]
    queue: Option<std::borrow::Cow<'a, str>>,
    /// When to start, as an RFC 3339 time.
    #[serde(borrow, default)]
    run_at: Option<std::borrow::Cow<'a, str>>,
    /// How long from now to start.
    #[serde(borrow, default)]
    delay: Option<std::borrow::Cow<'a, str>>,
}

/// The furthest ahead a task may be delayed: a year and a leap day, so
/// that "this time next year" always fits.
const MAX_DELAY: Duration = Duration::from_secs(366 * 86_400);

/// The longest `Idempotency-Key`: the IETF draft sets no limit, and keys
/// are kept in memory with their task, so they are kept to a short line.
const MAX_KEY_LEN: usize = 255;

/// The original server's answer to a body it cannot read.
const BAD_BODY: &str = "failed to read POST body";

/// The original server's answer when the queue is full, made once.
const BUSY: &[u8] = br#"{"error": "workers are busy, try again later"}"#;

/// The original server's answer to a bad `work_duration`.
const BAD_DURATION: &str = "failed to parse work duration in request";

/// Checks a submission body and turns it into a [`NewTask`], or the
/// sentence of the `400` that explains what is wrong. `--schedule`
/// templates are checked by the same function, so a template that starts
/// is one a POST would accept.
fn parse_submission(config: &Config, body: &[u8]) -> Result<NewTask, String> {
    // serde would read a JSON array as a struct's fields in order: only an
    // object is a task.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BAD_BODY.into());
    }
    // Checked as UTF-8 once, so that serde need not check each string again.
    let body = std::str::from_utf8(body).map_err(|_| BAD_BODY)?;
    let s: Submission = serde_json::from_str(body).map_err(|_| BAD_BODY)?;
    let kind = match s.kind.as_deref() {
        None | Some("sleep") => None,
        Some(name) => match config.handlers.iter().find(|h| &*h.kind == name) {
            Some(h) => Some(h.kind.clone()),
            None => return Err(format!("unknown task kind {}", quoted(name))),
        },
    };
    match (&s.work_duration, &kind) {
        (Some(d), _) if parse_duration(d).is_err() => return Err(BAD_DURATION.into()),
        (None, None) => return Err(BAD_DURATION.into()),
        _ => {}
    }
    if let Some(t) = &s.timeout
        && parse_duration(t).ok().is_none_or(|d| d.is_zero())
    {
        return Err("timeout must be a duration greater than zero, such as \"30s\"".into());
    }
    let max_attempts = match s.max_attempts.as_ref().map(serde_json::Number::as_u64) {
        None => 1,
        Some(Some(n)) if n >= 1 && n <= u64::from(*MAX_ATTEMPTS.end()) => n as u8,
        Some(_) => {
            return Err(format!(
                "max_attempts must be an integer from {} to {}",
                MAX_ATTEMPTS.start(),
                MAX_ATTEMPTS.end()
            ));
        }
    };
    let queue = task_queue(config, s.queue.as_deref(), kind.as_deref())?;
    let run_at = start_time(s.run_at.as_deref(), s.delay.as_deref())?;
    Ok(NewTask {
        label: s.task_id.as_deref().map(Text::new),
        work_duration: s.work_duration.as_deref().map(Text::new),
        kind,
        payload: s.payload.map(|p| p.get().into()),
        timeout: s.timeout.as_deref().map(Text::new),
        max_attempts,
        key: None,
        queue,
        run_at,
        schedule: None,
    })
}

/// Returns `name` as a JSON string literal, for a sentence that names it.
fn quoted(name: &str) -> String {
    let mut out = Vec::with_capacity(name.len() + 2);
    write_json_str(&mut out, name);
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the index of a task's queue: the one it names, else the one named
/// like its kind, else `default`. An unknown name is an error.
fn task_queue(config: &Config, named: Option<&str>, kind: Option<&str>) -> Result<u8, String> {
    let find = |name: &str| config.queues.iter().position(|q| &*q.name == name);
    let q = match named {
        Some(name) => find(name).ok_or_else(|| format!("unknown queue {}", quoted(name)))?,
        None => kind.and_then(find).unwrap_or(0),
    };
    // There are at most MAX_QUEUES, so the index fits.
    Ok(q as u8)
}

/// Finds when a task may start, ms since the epoch, from `run_at` or
/// `delay`; 0 for at once. A time in the past means at once too.
fn start_time(run_at: Option<&str>, delay: Option<&str>) -> Result<u64, String> {
    let now = now_millis();
    let latest = now + MAX_DELAY.as_millis() as u64;
    let at = match (run_at, delay) {
        (None, None) => return Ok(0),
        (Some(_), Some(_)) => return Err("run_at and delay cannot be used together".into()),
        (Some(text), None) => match parse_rfc3339(text) {
            Some(ms) if ms > 0 => ms as u64,
            // In the past, so at once; the store counts time from 1970, so
            // such a run_at is not kept.
            Some(_) => return Ok(0),
            None => {
                return Err(
                    "run_at must be an RFC 3339 time such as \"2026-12-01T03:00:00Z\"".into(),
                );
            }
        },
        (None, Some(text)) => match parse_duration(text) {
            Ok(delay) if delay <= MAX_DELAY => now + delay.as_millis() as u64,
            Ok(_) => return Err("delay must be at most 366 days".into()),
            Err(_) => return Err("delay must be a duration such as \"10m\"".into()),
        },
    };
    if at > latest {
        return Err("run_at must be at most 366 days ahead".into());
    }
    Ok(at)
}

/// Checks an `Idempotency-Key` header and fingerprints the request it
/// came with: its route and body.
fn parse_key(key: &[u8], route: &str, body: &[u8]) -> Result<IdempotencyKey, Response> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(u8::is_ascii_graphic) {
        return Err(Response::error(
            400,
            &format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(IdempotencyKey {
        // Visible ASCII is UTF-8.
        text: std::str::from_utf8(key).unwrap_or_default().into(),
        fingerprint: fingerprint(route, body),
    })
}

/// What a submission came to.
#[derive(Debug)]
enum Submitted {
    /// The answer, final.
    Answer(Response),
    /// A `202` to send once the task's record is on disk.
    Saving(Response, Receiver<bool>),
    /// A `200` for a repeated idempotency key, naming the first task.
    Repeat(Response, u64),
}

/// `POST /queue-task`, `POST /tasks`: checks and admits a task.
fn submit(shared: &Shared, route: &str, key: Option<&[u8]>, body: &[u8]) -> Submitted {
    let key = match key.map(|key| parse_key(key, route, body)).transpose() {
        Ok(key) => key,
        Err(response) => return Submitted::Answer(response),
    };
    let new = match parse_submission(&shared.config, body) {
        Ok(new) => NewTask { key, ..new },
        Err(sentence) => return Submitted::Answer(Response::error(400, &sentence)),
    };
    // Tuning: a full queue is answered without taking the store lock (the
    // plain version would ask `Store::admit`): full at this instant is
    // reason enough, and the lock stays free for the work — the 503 path
    // then costs less than the 202 path. A repeated key must still find
    // its task, a delayed task needs no room, and shutdown has its own
    // answer.
    let queue = &shared.queues[usize::from(new.queue)];
    if new.key.is_none()
        && new.run_at == 0
        && queue.jobs_tx.is_full()
        && !shared.draining.is_fired()
    {
        return Submitted::Answer(queue_full(shared));
    }
    let label = new.label.clone();
    let mut store = shared.store();
    let (id, state, saved) = match store.admit(new, &shared.queues) {
        Admission::Created(id, state, saved) => (id, state, saved),
        Admission::Repeat(id) => {
            let task = store.get(id);
            let label = task.and_then(|t| t.label.as_ref()).map(Text::as_str);
            let state = task.map_or(State::Queued, |t| t.state);
            let response = submitted(200, store.task_id(id), label, state);
            return Submitted::Repeat(response, id);
        }
        Admission::KeyReused => {
            return Submitted::Answer(Response::error(
                422,
                "this Idempotency-Key was used with a different request",
            ));
        }
        Admission::Full => return Submitted::Answer(queue_full(shared)),
        Admission::TooManyScheduled => {
            return Submitted::Answer(Response {
                retry_after: Some(shared.config.retry_after),
                ..Response::error(503, "too many scheduled tasks, try again later")
            });
        }
        Admission::ShuttingDown => {
            return Submitted::Answer(Response::error(503, "server is shutting down"));
        }
    };
    let task_id = store.task_id(id);
    drop(store);
    // Made outside the lock: everything it shows is known already.
    let response = submitted(202, task_id, label.as_ref().map(Text::as_str), state);
    debug!("task {task_id} queued");
    match saved {
        Some(saved) => Submitted::Saving(response, saved),
        None => Submitted::Answer(response),
    }
}

/// Counts a refusal for a full queue and makes its `503`.
fn queue_full(shared: &Shared) -> Response {
    shared.rejected.fetch_add(1, Ordering::Relaxed);
    if shared.subscribed.load(Ordering::Relaxed) {
        // Only with an `/events` subscriber does a refusal take the lock:
        // its stats have changed.
        shared.store().changed();
    }
    Response {
        retry_after: Some(shared.config.retry_after),
        ..Response::json(503, BUSY)
    }
}

/// Makes the answer to a submission: `{"status": …, "id": …, "task_id": …,
/// "state": …}` with `Location`.
fn submitted(status: u16, id: TaskId, label: Option<&str>, state: State) -> Response {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"status\": \"task queued successfully\", \"id\": ");
    id.write_json(&mut body);
    body.extend_from_slice(b", \"task_id\": ");
    write_json_opt(&mut body, label);
    body.extend_from_slice(b", \"state\": \"");
    body.extend_from_slice(state.name().as_bytes());
    body.extend_from_slice(b"\"}");
    Response {
        location: Some(id),
        ..Response::json(status, body)
    }
}

/// Returns the value of the last `name=` in a form-encoded query, decoded;
/// `Err` for a broken percent escape.
fn query_param<'a>(
    query: Option<&'a [u8]>,
    name: &str,
) -> Result<Option<std::borrow::Cow<'a, [u8]>>, Response> {
    let mut found = None;
    for pair in query.unwrap_or_default().split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        let broken = || Response::error(400, "the query string has a broken percent escape");
        if *percent_decode(k, true).ok_or_else(broken)? == *name.as_bytes() {
            found = Some(percent_decode(v, true).ok_or_else(broken)?);
        }
    }
    Ok(found)
}

/// How many tasks a list shows when `limit` does not say.
const DEFAULT_LIMIT: usize = 100;

/// The most tasks one list shows: larger `limit`s are cut to this.
const MAX_LIMIT: usize = 1000;

/// The most bytes of tasks one list answer holds (one task always fits),
/// so that no request makes the server hold much more than this for its
/// answer, however large the retained tasks are.
const MAX_PAGE_BYTES: usize = 256 << 10;

/// What a `GET /tasks` asks for: its filters, its page size, and where
/// the page starts.
#[derive(Debug, Default, PartialEq)]
struct ListQuery<'a> {
    /// Only tasks in this state.
    state: Option<State>,
    /// Only tasks with this `task_id`.
    label: Option<std::borrow::Cow<'a, [u8]>>,
    /// Only tasks of this queue.
    queue: Option<u8>,
    /// The most tasks on the page.
    limit: usize,
    /// Only tasks older than this id (a previous page's last).
    before: Option<IdRef>,
}

impl<'a> ListQuery<'a> {
    /// Reads the query string of a list request; `Err` is its `400`.
    fn parse(query: Option<&'a [u8]>, config: &Config) -> Result<ListQuery<'a>, Response> {
        let bad = |sentence: &str| Response::error(400, sentence);
        let state = match query_param(query, "state")? {
            None => None,
            Some(s) => Some(
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(State::from_name)
                    .ok_or_else(|| bad(BAD_STATE))?,
            ),
        };
        let queue = match query_param(query, "queue")? {
            None => None,
            Some(name) => {
                let name = String::from_utf8_lossy(&name);
                Some(task_queue(config, Some(&name), None).map_err(|e| bad(&e))?)
            }
        };
        let limit = match query_param(query, "limit")? {
            None => DEFAULT_LIMIT,
            Some(n) => match std::str::from_utf8(&n)
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if n > 0 => n.min(MAX_LIMIT as u64) as usize,
                _ => return Err(bad("limit must be a positive integer")),
            },
        };
        let before = match query_param(query, "before")? {
            None => None,
            Some(id) => Some(IdRef::parse(&id).ok_or_else(|| bad(BAD_BEFORE))?),
        };
        Ok(ListQuery {
            state,
            label: query_param(query, "task_id")?,
            queue,
            limit,
            before,
        })
    }

    /// Tells whether a task passes the filters.
    fn matches(&self, task: &Task) -> bool {
        task.state != State::Evicted
            && self.state.is_none_or(|s| task.state == s)
            && self.queue.is_none_or(|q| task.queue == q)
            && self.label.as_deref().is_none_or(|l| {
                task.label
                    .as_ref()
                    .is_some_and(|t| t.as_str().as_bytes() == l)
            })
    }

    /// Appends the link to the page after one ending with task `last`:
    /// the same filters and limit, continuing before `last`.
    fn write_next(&self, out: &mut Vec<u8>, last: TaskId, config: &Config) {
        out.extend_from_slice(b"\"/tasks?");
        if let Some(state) = self.state {
            let _ = write!(VecWriter(out), "state={}&", state.name());
        }
        if let Some(q) = self.queue {
            let _ = write!(
                VecWriter(out),
                "queue={}&",
                config.queues[usize::from(q)].name
            );
        }
        if let Some(label) = &self.label {
            out.extend_from_slice(b"task_id=");
            percent_encode(out, label);
            out.push(b'&');
        }
        let _ = write!(VecWriter(out), "limit={}&before=", self.limit);
        last.write(out);
        out.push(b'"');
    }
}

/// The answer to an unknown `state` filter.
const BAD_STATE: &str =
    "state must be one of scheduled, queued, running, succeeded, failed, cancelled";

/// The answer to a `before` that is not an id this server issued.
const BAD_BEFORE: &str = "before must be the id of a task this server made";

/// `GET /tasks`: a page of the newest retained tasks that pass the
/// filters, the link to the next page, and the counts of all.
fn list(shared: &Shared, query: Option<&[u8]>) -> Response {
    let query = match ListQuery::parse(query, &shared.config) {
        Ok(query) => query,
        Err(response) => return response,
    };
    let store = shared.store();
    if let Some(before) = &query.before
        && store.lookup_ref(before) == Lookup::Unknown
    {
        return Response::error(400, BAD_BEFORE);
    }
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"tasks\": [");
    let end = match query.before.as_ref().map(|id| store.position(id.num)) {
        Some(Ok(at) | Err(at)) => at,
        None => store.tasks.len(),
    };
    let mut matching = store
        .tasks
        .range(..end)
        .rev()
        .filter(|t| query.matches(t))
        .peekable();
    let (mut listed, mut last) = (0, None);
    let start = body.len();
    while listed < query.limit
        && let Some(task) = matching.peek()
    {
        let mark = body.len();
        if listed > 0 {
            body.extend_from_slice(b", ");
        }
        task.write_json(&mut body, store.names(task));
        if listed > 0 && body.len() - start > MAX_PAGE_BYTES {
            // It does not fit: it begins the next page.
            body.truncate(mark);
            break;
        }
        (listed, last) = (listed + 1, Some(task.id));
        matching.next();
    }
    body.extend_from_slice(b"], \"counts\": ");
    write_counts(&mut body, &store.counts);
    body.extend_from_slice(b", \"next\": ");
    match last.filter(|_| matching.peek().is_some()) {
        Some(last) => query.write_next(&mut body, store.task_id(last), &shared.config),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    Response::json(200, body)
}

/// Appends the counts of tasks by state, as a JSON object.
fn write_counts(out: &mut Vec<u8>, counts: &[usize; STATES.len()]) {
    out.push(b'{');
    for (i, s) in STATES.iter().enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        let _ = write!(VecWriter(out), "{sep}\"{}\": {}", s.name(), counts[i]);
    }
    out.push(b'}');
}

/// Appends `bytes` percent-encoded for a query string: everything but the
/// unreserved characters of RFC 3986 is escaped.
fn percent_encode(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// `GET /tasks/{id}`: the task's status, at once or after a long poll. A
/// `HEAD` (`head_only`) is answered at once: it asks what a `GET` would
/// get, and a health checker must not be held for a minute.
fn status(shared: &Shared, id: Option<IdRef>, query: Option<&[u8]>, head_only: bool) -> Reply {
    let wait = match query_param(query, "wait") {
        Err(response) => return Reply::Now(response),
        Ok(None) => Duration::ZERO,
        Ok(Some(text)) => match std::str::from_utf8(&text).ok().map(parse_duration) {
            Some(Ok(wait)) => wait.min(MAX_WAIT),
            _ => {
                return Reply::Now(Response::error(
                    400,
                    "wait must be a duration such as \"30s\"",
                ));
            }
        },
    };
    let store = shared.store();
    let Some(id) = id else {
        return Reply::Now(lookup_failure(Lookup::Unknown));
    };
    match store.lookup_ref(&id) {
        Lookup::Found(i) => {
            let task = &store.tasks[i];
            if wait.is_zero() || head_only || task.state.is_terminal() {
                Reply::Now(task_response(200, &store, i))
            } else {
                Reply::Poll(LongPoll {
                    id: id.num,
                    seen: task.state,
                    until: Instant::now() + wait,
                })
            }
        }
        other => Reply::Now(lookup_failure(other)),
    }
}

/// Makes a response whose body is the status of the task at index `i`.
fn task_response(status: u16, store: &Store, i: usize) -> Response {
    let task = &store.tasks[i];
    let mut body = Vec::with_capacity(384);
    task.write_json(&mut body, store.names(task));
    Response::json(status, body)
}

/// Makes the `404` or `410` for an id that has no record.
fn lookup_failure(lookup: Lookup) -> Response {
    match lookup {
        Lookup::Gone => Response::error(410, "the task has been evicted (see --keep-finished)"),
        _ => Response::error(404, "task not found"),
    }
}

/// `POST /tasks/{id}/cancel`.
fn cancel(shared: &Shared, id: Option<IdRef>) -> Response {
    let mut store = shared.store();
    let id = match id.map(|id| (store.lookup_ref(&id), id.num)) {
        Some((Lookup::Found(_), id)) => id,
        Some((other, _)) => return lookup_failure(other),
        None => return lookup_failure(Lookup::Unknown),
    };
    match store.cancel(id) {
        Ok(i) => {
            debug!("task {} cancelled", store.task_id(id));
            task_response(200, &store, i)
        }
        Err(Lookup::Found(i)) => {
            let task = &store.tasks[i];
            let sentence = format!("the task is already {}", task.state.name());
            let mut body = Vec::with_capacity(384);
            body.push(b'{');
            task.write_members(&mut body, store.names(task), Some(&sentence));
            body.push(b'}');
            Response::json(409, body)
        }
        Err(other) => lookup_failure(other),
    }
}

/// Status codes are three digits from 100 to 599: one counter each.
const STATUS_CODES: usize = 600;

/// `GET /queues`: every queue, `default` first.
fn queues(shared: &Shared) -> Response {
    let mut body = Vec::with_capacity(128 * shared.queues.len());
    body.extend_from_slice(b"{\"queues\": [");
    for (i, view) in shared.store().queue_views(shared).iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b", ");
        }
        view.write_json(&mut body);
    }
    body.extend_from_slice(b"]}");
    Response::json(200, body)
}

/// `GET /schedules`: every schedule, with its next and last firing.
fn schedules(shared: &Shared) -> Response {
    let mut body = Vec::with_capacity(160 * shared.config.schedules.len() + 16);
    body.extend_from_slice(b"{\"schedules\": [");
    let store = shared.store();
    for (i, (config, state)) in shared
        .config
        .schedules
        .iter()
        .zip(&store.schedules)
        .enumerate()
    {
        if i > 0 {
            body.extend_from_slice(b", ");
        }
        body.extend_from_slice(b"{\"name\": ");
        write_json_str(&mut body, &config.name);
        body.extend_from_slice(b", \"spec\": ");
        write_json_str(&mut body, &config.spec_text);
        body.extend_from_slice(b", \"next_at\": ");
        write_timestamp(&mut body, state.next_at);
        body.extend_from_slice(b", \"last_at\": ");
        write_timestamp(&mut body, state.last_at);
        body.extend_from_slice(b", \"last_task\": ");
        match state.last_task {
            0 => body.extend_from_slice(b"null"),
            id => store.task_id(id).write_json(&mut body),
        }
        let _ = write!(VecWriter(&mut body), ", \"skipped\": {}}}", state.skipped);
    }
    body.extend_from_slice(b"]}");
    Response::json(200, body)
}

/// `POST /queues/{name}/pause` and `/resume`: the queue afterwards.
fn pause(shared: &Shared, name: Option<&str>, paused: bool) -> Response {
    let Some(q) = name.and_then(|name| shared.queues.iter().position(|q| *q.name == *name)) else {
        return Response::error(404, "no such queue");
    };
    let mut store = shared.store();
    store.set_paused(q, paused, &shared.queues);
    info!(
        "queue {} {}",
        shared.queues[q].name,
        if paused { "paused" } else { "resumed" }
    );
    let mut body = Vec::with_capacity(128);
    store.queue_views(shared)[q].write_json(&mut body);
    Response::json(200, body)
}

/// Answers written by status code, for `/metrics`.
struct StatusCounts([AtomicU64; STATUS_CODES]);

impl StatusCounts {
    /// Creates all-zero counts.
    fn new() -> StatusCounts {
        StatusCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Counts one answer.
    fn add(&self, status: u16) {
        if let Some(count) = self.0.get(usize::from(status)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns the `code` label and count of every status answered.
    fn samples(&self) -> Vec<(String, u64)> {
        (0..STATUS_CODES)
            .filter_map(|code| {
                let n = self.0[code].load(Ordering::Relaxed);
                (n > 0).then(|| (format!("{{code=\"{code}\"}}"), n))
            })
            .collect()
    }

    /// Moves one answer from one status to another: a `202` that became a
    /// `503` before it was written.
    fn replace(&self, from: u16, to: u16) {
        if let Some(count) = self.0.get(usize::from(from)) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        self.add(to);
    }
}

/// A queue as `/queues`, `/metrics` and the event stream show it, read
/// under the store lock.
#[derive(Debug)]
struct QueueView<'a> {
    /// Its name.
    name: &'a str,
    /// Its workers.
    workers: usize,
    /// Its workers running an attempt.
    busy: u64,
    /// Tasks in it (cancelled ones count until a worker reaches them);
    /// not those due but waiting for room, though they enter before any
    /// new submission.
    depth: usize,
    /// Its capacity.
    capacity: usize,
    /// Whether it is paused.
    paused: bool,
}

impl QueueView<'_> {
    /// Appends the queue as the JSON object of `/queues`.
    fn write_json(&self, out: &mut Vec<u8>) {
        let _ = write!(
            VecWriter(out),
            "{{\"name\": \"{}\", \"workers\": {}, \"busy\": {}, \"depth\": {}, \
             \"capacity\": {}, \"paused\": {}}}",
            self.name,
            self.workers,
            self.busy,
            self.depth,
            self.capacity,
            self.paused
        );
    }
}

impl Store {
    /// Shows every queue, `default` first.
    fn queue_views<'a>(&self, shared: &'a Shared) -> Vec<QueueView<'a>> {
        let configs = shared.config.queues.iter();
        let runtime = shared.queues.iter().zip(&self.queues);
        configs
            .zip(runtime)
            .map(|(config, (queue, state))| QueueView {
                name: &config.name,
                workers: config.workers,
                busy: state.busy,
                // Those waiting for room are not in the queue yet.
                depth: state.depth - state.waiting.len(),
                capacity: queue.capacity,
                paused: state.paused,
            })
            .collect()
    }
}

/// One metric family of `/metrics`: its name, type, help and samples,
/// each sample with its labels (`{state="failed"}`, or empty).
struct Family {
    /// The metric's name.
    name: &'static str,
    /// `gauge` or `counter`.
    kind: &'static str,
    /// What it measures, for `# HELP`.
    help: &'static str,
    /// Each sample's labels and value.
    samples: Vec<(String, u64)>,
}

impl Family {
    /// A family with one sample and no labels.
    fn one(name: &'static str, kind: &'static str, help: &'static str, value: u64) -> Family {
        Family {
            name,
            kind,
            help,
            samples: vec![(String::new(), value)],
        }
    }

    /// Appends the family in the text format: `# HELP`, `# TYPE`, samples.
    fn write(&self, out: &mut Vec<u8>) {
        let name = self.name;
        let _ = write!(
            VecWriter(out),
            "# HELP {name} {}\n# TYPE {name} {}\n",
            self.help,
            self.kind
        );
        for (labels, value) in &self.samples {
            let _ = writeln!(VecWriter(out), "{name}{labels} {value}");
        }
    }
}

/// `GET /metrics`: the Prometheus text format, version 0.0.4. The task
/// numbers are read under the store lock, so they agree with `/tasks`.
fn metrics(shared: &Shared) -> Response {
    let mut families = {
        let store = shared.store();
        let c = &store.counters;
        let finished = [State::Succeeded, State::Failed, State::Cancelled].map(|s| {
            (
                format!("{{state=\"{}\"}}", s.name()),
                c.finished[s as usize],
            )
        });
        let views = store.queue_views(shared);
        let per_queue = |name, help, value: fn(&QueueView) -> u64| Family {
            name,
            kind: "gauge",
            help,
            samples: views
                .iter()
                .map(|v| (format!("{{queue=\"{}\"}}", v.name), value(v)))
                .collect(),
        };
        vec![
            per_queue(
                "bgtasks_queue_depth",
                "Tasks waiting in the queue, or waiting for room in it.",
                |v| v.depth as u64,
            ),
            per_queue(
                "bgtasks_queue_capacity",
                "Capacity of the queue (--buffer, or --queue's BUFFER).",
                |v| v.capacity as u64,
            ),
            per_queue(
                "bgtasks_workers",
                "Workers of the queue (--workers, or --queue's WORKERS).",
                |v| v.workers as u64,
            ),
            per_queue("bgtasks_workers_busy", "Workers running a task.", |v| {
                v.busy
            }),
            per_queue("bgtasks_queue_paused", "1 if the queue is paused.", |v| {
                u64::from(v.paused)
            }),
            Family {
                name: "bgtasks_schedule_firings_total",
                kind: "counter",
                help: "Firings of each schedule, by whether they created a task.",
                samples: store
                    .schedules
                    .iter()
                    .flat_map(|s| {
                        let label =
                            |outcome| format!("{{schedule=\"{}\", outcome=\"{outcome}\"}}", s.name);
                        [(label("created"), s.created), (label("skipped"), s.skipped)]
                    })
                    .collect(),
            },
            Family::one(
                "bgtasks_tasks_scheduled",
                "gauge",
                "Delayed tasks waiting for their time.",
                store.count(State::Scheduled) as u64,
            ),
            Family::one(
                "bgtasks_tasks_accepted_total",
                "counter",
                "Tasks created by requests.",
                c.accepted,
            ),
            Family {
                name: "bgtasks_tasks_finished_total",
                kind: "counter",
                help: "Tasks that reached a terminal state.",
                samples: finished.into(),
            },
        ]
    };
    families.push(Family::one(
        "bgtasks_tasks_rejected_total",
        "counter",
        "Tasks refused because the queue was full.",
        shared.rejected.load(Ordering::Relaxed),
    ));
    families.push(Family {
        name: "bgtasks_http_requests_total",
        kind: "counter",
        help: "HTTP requests answered, by status code.",
        samples: shared.responses.samples(),
    });
    let mut out = Vec::with_capacity(METRICS_SIZE);
    for family in &families {
        family.write(&mut out);
    }
    Response {
        content_type: "text/plain; version=0.0.4",
        ..Response::json(200, out)
    }
}

/// Room reserved for a `/metrics` answer: the usual one fits.
const METRICS_SIZE: usize = 2048;

// ---- 9. Events and the dashboard ----
//
// `GET /events` is a Server-Sent Events stream over chunked HTTP/1.1: a
// `stats` event first and then at most once a second while anything
// changed, a `task` event for every change of a task's state or progress,
// in order, and a `: keep-alive` comment after a silence. `GET /` is the
// dashboard, one page embedded in the binary, which reads the stream.
//
// Events are made where changes are made: under the store lock, by
// `Store::publish`, called from the store's one choke point of change. Each
// stream has a `Feed` there: a bounded backlog of rendered events and a
// bell, a channel of one place that is rung when something waits. With no
// stream open, publishing is one `is_empty` check; an idle stream is a
// connection task asleep on its bell, costing no CPU. A stream that falls
// behind its backlog's limits is told it lagged and ended, so a slow
// reader costs the server a bounded amount and never slows anyone else.

/// How long a stream may stay silent before it says `: keep-alive`, so
/// that proxies and clients do not take it for dead.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often at most a stream gets `stats`.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The most events a stream's backlog holds before it is told it lagged.
const MAX_BACKLOG_EVENTS: usize = 1000;

/// The most bytes of events a stream's backlog holds before it is told it
/// lagged: with the events, the most one subscriber can cost.
const MAX_BACKLOG_BYTES: usize = 256 << 10;

/// The largest buffer of events a stream keeps for the next ones. One that
/// keeps up takes a little more than `GATHER_EVENTS` or `GATHER_BYTES` at
/// a time at saturation (35 KiB in the bench); a buffer a burst made
/// larger is given back rather than held for the stream's life.
const KEPT_EVENT_BUFFER: usize = 64 << 10;

/// How many events, or bytes of them, a stream lets gather before it
/// writes them, and how long it waits for that many. A write is a wake-up
/// and a read for the reader too: on a busy server, one write per few
/// events costs both sides more than the events themselves. The bell rings
/// again when this much waits, so a stream under load never waits out the
/// timer (which, with every core busy, fires late) and stays far from the
/// backlog's limits. The wait is long enough that one arming serves the
/// gathers of the next few milliseconds (an alarm only moves earlier):
/// arming a timer wakes the reactor's thread, and at 1 ms each gather did.
const GATHER_EVENTS: usize = 128;
const GATHER_BYTES: usize = 32 << 10;
const GATHER_WAIT: Duration = Duration::from_millis(5);

/// Which `task` events a stream wants: all of the filters it gives.
#[derive(Debug, Default, PartialEq)]
struct EventFilter {
    /// `?id=`: one task (its number; the prefix is checked when the
    /// stream starts).
    id: Option<u64>,
    /// `?task_id=`: tasks with this label.
    label: Option<Box<[u8]>>,
    /// `?kind=`: tasks of this kind.
    kind: Option<Box<str>>,
    /// `?queue=`: tasks of this queue.
    queue: Option<u8>,
}

impl EventFilter {
    /// Reads the filters of a `/events` request; the error is its `400`.
    fn parse(
        query: Option<&[u8]>,
        config: &Config,
        store: &Store,
    ) -> Result<EventFilter, Response> {
        let bad = |sentence: &str| Response::error(400, sentence);
        let text = |name| -> Result<Option<String>, Response> {
            Ok(query_param(query, name)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
        };
        let id = match query_param(query, "id")? {
            None => None,
            Some(id) => {
                let id = IdRef::parse(&id).filter(|id| store.lookup_ref(id) != Lookup::Unknown);
                Some(
                    id.ok_or_else(|| bad("id must be the id of a task this server made"))?
                        .num,
                )
            }
        };
        let kind = text("kind")?;
        if let Some(kind) = &kind
            && kind != "sleep"
            && !config.handlers.iter().any(|h| *h.kind == **kind)
        {
            return Err(bad(&format!("unknown task kind {}", quoted(kind))));
        }
        let queue = match text("queue")? {
            None => None,
            Some(name) => Some(task_queue(config, Some(&name), None).map_err(|e| bad(&e))?),
        };
        Ok(EventFilter {
            id,
            label: query_param(query, "task_id")?.map(|l| l.into_owned().into()),
            kind: kind.map(Box::from),
            queue,
        })
    }

    /// Tells whether a task's events pass the filters.
    fn matches(&self, task: &Task) -> bool {
        self.id.is_none_or(|id| task.id == id)
            && self.queue.is_none_or(|q| task.queue == q)
            && self.kind.as_deref().is_none_or(|k| task.kind() == k)
            && self.label.as_deref().is_none_or(|l| {
                task.label
                    .as_ref()
                    .is_some_and(|t| t.as_str().as_bytes() == l)
            })
    }
}

/// What a stream and the store share: the events made for the stream that
/// it has not yet taken, and a bell to wake it.
#[derive(Debug)]
struct Feed {
    /// The backlog, locked by the store (under its own lock) and the stream.
    backlog: Mutex<Backlog>,
    /// Rung when something comes to wait, and again when enough has
    /// gathered; a ring while one is pending is dropped.
    bell: Sender<()>,
    /// Where the stream waits for the bell.
    rung: Receiver<()>,
}

/// A stream's backlog.
#[derive(Debug, Default)]
struct Backlog {
    /// Rendered `task` events, oldest first, one after another.
    events: Vec<u8>,
    /// How many.
    count: usize,
    /// Whether the stats have changed since the stream last took.
    changed: bool,
    /// Whether the backlog outgrew its limits: the stream must end.
    lagged: bool,
}

impl Backlog {
    /// Whether enough has gathered to be written at once: `GATHER_EVENTS`
    /// or `GATHER_BYTES`, or a lag.
    fn gathered(&self) -> bool {
        self.count >= GATHER_EVENTS || self.events.len() >= GATHER_BYTES || self.lagged
    }
}

/// A stream, as the store keeps it.
#[derive(Debug)]
struct Subscriber {
    /// The events it wants.
    filter: EventFilter,
    /// Where they go.
    feed: Arc<Feed>,
}

impl Feed {
    /// Makes an empty feed.
    fn new() -> Feed {
        let (bell, rung) = async_channel::bounded(1);
        Feed {
            backlog: Mutex::new(Backlog::default()),
            bell,
            rung,
        }
    }

    /// Locks the backlog; a poisoned lock is used as it is, as the
    /// store's is.
    fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an event (`None`: only the stats changed), ringing when
    /// nothing waited before and when enough has gathered: the stream
    /// takes all that waits at once. Past the backlog's limits the backlog
    /// is dropped and the stream marked as lagged: it is told so, and ends.
    fn push(&self, event: Option<&[u8]>) {
        let mut backlog = self.backlog();
        let (gathered, mut ring) = (backlog.gathered(), !backlog.changed);
        backlog.changed = true;
        if let Some(event) = event
            && !backlog.lagged
        {
            if backlog.count == MAX_BACKLOG_EVENTS
                || backlog.events.len() + event.len() > MAX_BACKLOG_BYTES
            {
                *backlog = Backlog {
                    changed: true,
                    lagged: true,
                    ..Backlog::default()
                };
            } else {
                backlog.events.extend_from_slice(event);
                backlog.count += 1;
            }
        }
        ring |= !gathered && backlog.gathered();
        drop(backlog);
        if ring {
            // Closed cannot happen while the feed is shared.
            let _ = self.bell.try_send(());
        }
    }

    /// Whether a stream should write what waits now rather than let more
    /// gather.
    fn gathered(&self) -> bool {
        self.backlog().gathered()
    }

    /// Takes what waits into `taken`, whose emptied buffer the backlog
    /// keeps for the next events: a stream that keeps up allocates nothing
    /// for them. A buffer a burst made large is given back instead.
    fn take(&self, taken: &mut Backlog) {
        taken.events.clear();
        if taken.events.capacity() > KEPT_EVENT_BUFFER {
            taken.events = Vec::new();
        }
        let mut backlog = self.backlog();
        std::mem::swap(&mut backlog.events, &mut taken.events);
        taken.count = std::mem::take(&mut backlog.count);
        taken.changed = std::mem::take(&mut backlog.changed);
        taken.lagged = std::mem::take(&mut backlog.lagged);
    }
}

// The events' side of `Store`; the rest of its impl is in section 2.
impl Store {
    /// Tells every stream that the task at index `i` changed: its `task`
    /// event is rendered once and copied to the streams whose filters it
    /// passes, and the others learn that the stats changed. `at` is when
    /// the change happened (ms since the epoch), read once by the change.
    fn publish(&mut self, i: usize, at: u64) {
        if self.subscribers.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.event_buf);
        buf.clear();
        let task = &self.tasks[i];
        for subscriber in &self.subscribers {
            let wanted = subscriber.filter.matches(task);
            if wanted && buf.is_empty() {
                write_task_event(&mut buf, task, self.names(task), at);
            }
            subscriber.feed.push(wanted.then_some(&buf[..]));
        }
        self.event_buf = buf;
    }

    /// Tells every stream that the stats changed.
    fn changed(&mut self) {
        for subscriber in &self.subscribers {
            subscriber.feed.push(None);
        }
    }
}

/// Appends a task's `task` event for its change at `at`: `event:` and
/// `data:` lines, and the blank line that ends it.
fn write_task_event(out: &mut Vec<u8>, task: &Task, names: Names, at: u64) {
    out.extend_from_slice(b"event: task\ndata: {\"id\": ");
    names.id.write_json(out);
    out.extend_from_slice(b", \"task_id\": ");
    write_json_opt(out, task.label.as_ref().map(Text::as_str));
    out.extend_from_slice(b", \"kind\": ");
    write_json_str(out, task.kind());
    out.extend_from_slice(b", \"queue\": ");
    write_json_str(out, names.queue);
    out.extend_from_slice(b", \"state\": \"");
    out.extend_from_slice(task.state.name().as_bytes());
    out.extend_from_slice(b"\", \"attempt\": ");
    write_decimal(out, u64::from(task.attempt));
    out.extend_from_slice(b", \"progress\": ");
    write_raw_opt(out, task.extra.as_ref().and_then(|e| e.progress.as_deref()));
    out.extend_from_slice(b", \"at\": ");
    write_timestamp(out, at);
    out.extend_from_slice(b"}\n\n");
}

/// Appends the `stats` event: counts, queues and the counters.
fn write_stats_event(out: &mut Vec<u8>, shared: &Shared) {
    let store = shared.store();
    out.extend_from_slice(b"event: stats\ndata: {\"counts\": ");
    write_counts(out, &store.counts);
    out.extend_from_slice(b", \"queues\": [");
    for (i, view) in store.queue_views(shared).iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        view.write_json(out);
    }
    let c = &store.counters;
    let _ = write!(
        VecWriter(out),
        "], \"accepted_total\": {}, \"rejected_total\": {}, \"finished_total\": \
         {{\"succeeded\": {}, \"failed\": {}, \"cancelled\": {}}}}}\n\n",
        c.accepted,
        shared.rejected.load(Ordering::Relaxed),
        c.finished[State::Succeeded as usize],
        c.finished[State::Failed as usize],
        c.finished[State::Cancelled as usize],
    );
}

/// The dashboard: one self-contained page, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The headers that keep the dashboard to itself: scripts, styles and
/// requests only from this origin (inline ones allowed: the page is one
/// file), no sniffing of types, no framing by other pages.
const DASHBOARD_HEADERS: &str = "Content-Security-Policy: default-src 'self'; \
    script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self'; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'\r\n\
    X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n";

/// `GET /`: the dashboard.
fn dashboard() -> Response {
    Response {
        content_type: "text/html; charset=utf-8",
        headers: DASHBOARD_HEADERS,
        ..Response::json(200, DASHBOARD.as_bytes())
    }
}

// ---- 10. Connections and the listener ----
//
// One task per connection reads a request, answers it, and loops. Its
// buffers exist only while a request is being handled: an idle keep-alive
// connection holds no buffer at all, which is how ten thousand of them fit
// in a few megabytes (given a `--max-connections` that high).
//
// A connection's errors end that connection and nothing else: the listener
// never sees them. The listener's own errors (out of file descriptors, say)
// back off and retry instead of ending it.

/// How many bytes one read asks for.
const READ_CHUNK: usize = 8192;

/// How many bytes the first read of a request asks for: most requests fit.
// Tuning: the plain version reads a `READ_CHUNK`; a 1 KiB buffer comes from
// the allocator's per-thread cache instead of being zeroed 8 KiB at a time.
const FIRST_READ: usize = 1024;

/// The most bytes of answers a connection holds for a client that pipelines
/// requests: past it, the next request is read only once they are written.
/// Pipelined 202s are about 250 bytes each, so a hundred still share one
/// write (and, with a journal, one wait for the disk).
const MAX_UNSENT: usize = 32 << 10;

/// How long a closing connection keeps reading what the client still
/// sends, so that the kernel does not answer it with a reset that could
/// destroy the last response before the client has read it.
const LINGER: Duration = Duration::from_secs(2);

/// The most bytes read and thrown away while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// The first wait after an accept error: long enough for a connection to
/// close and free a file descriptor, short enough to go unnoticed.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The longest the listener waits after an accept error before trying again.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Why a connection closes.
#[derive(Debug)]
enum Close {
    /// A request was malformed: answer with this error, then close.
    Error(HttpError),
    /// The client closed the connection or it failed: just close.
    Gone,
}

impl From<io::Error> for Close {
    fn from(_: io::Error) -> Close {
        Close::Gone
    }
}

impl From<HttpError> for Close {
    fn from(e: HttpError) -> Close {
        Close::Error(e)
    }
}

/// One client connection.
struct Connection {
    /// The socket.
    stream: Async<TcpStream>,
    /// Bytes read and not yet used; a request starts at index 0.
    buf: Vec<u8>,
    /// Answers not yet written.
    out: Vec<u8>,
    /// With a journal: the answers in `out` to submissions whose tasks are
    /// not yet known to be on disk (see [`Connection::settle`]).
    unsaved: Vec<Unsaved>,
    /// With a journal: the last journal record the answers in `out` may
    /// show; they are written only once it is on disk.
    barrier: u64,
    /// Held from the first byte of a request until its answer is written,
    /// so that shutdown waits for it.
    busy: Option<Sender<()>>,
    /// The idle deadline's timer (an event stream's too), kept for the
    /// connection's whole life.
    idle: Alarm,
}

/// A timer kept for a connection's whole life and moved only when it must
/// ring sooner or has rung.
///
/// Tuning: the plain version makes a `Timer::at(deadline)` for each wait.
/// Registering an async-io timer wakes the reactor thread (an eventfd
/// write, then a read and a new epoll timeout), so one is not made per
/// request: this one stays armed, and when it rings before the current
/// deadline (the connection was busy meanwhile) it is armed again. With the
/// interpolated lookups it took the 202 path from about 18 to 10.4 µs of
/// CPU per request; an event stream, whose keep-alive moves with every
/// write, would otherwise move it on every write.
struct Alarm {
    /// The timer.
    timer: Timer,
    /// When it is armed to ring; `None` once it has rung.
    at: Option<Instant>,
}

impl Alarm {
    /// Makes an alarm that rings at `at`.
    fn new(at: Instant) -> Alarm {
        Alarm {
            timer: Timer::at(at),
            at: Some(at),
        }
    }

    /// Makes it ring by `until`: it moves only if it would ring later, or
    /// has rung. Ringing early is harmless: the waiter looks at the time.
    fn arm(&mut self, until: Instant) {
        if self.at.is_none_or(|at| at > until) {
            self.timer.set_at(until);
            self.at = Some(until);
        }
    }

    /// Waits for it to ring.
    async fn rung(&mut self) {
        (&mut self.timer).await;
        self.at = None;
    }
}

/// An answer to a submission, waiting to learn whether its task was saved.
struct Unsaved {
    /// Where the answer is in `out`.
    range: Range<usize>,
    /// What tells whether the task was saved.
    saving: Saving,
    /// How the answer is delivered, for a `503` in its place.
    delivery: Delivery,
}

/// How a submission's answer learns whether its task was saved.
#[derive(Debug)]
enum Saving {
    /// A new task: the journal writer says whether its record was written.
    New(Receiver<bool>),
    /// A repeated idempotency key: the first task, which a failed write
    /// would have taken back.
    Repeat(u64),
}

impl Saving {
    /// Tells, once the journal has dealt with the record, whether the task
    /// is on disk.
    fn saved(&self, shared: &Shared) -> bool {
        match self {
            Saving::New(saved) => saved.try_recv() == Ok(true),
            Saving::Repeat(id) => shared.store().get(*id).is_some(),
        }
    }
}

/// Serves one connection, accepted just now, until it closes.
///
/// Each request holds a sender upgraded from `in_flight` until its answer
/// is written, so shutdown can wait for it; `first_request` is one already
/// taken for the first request. `_permit` holds one of `--max-connections`
/// places and is only dropped.
async fn serve(
    shared: Arc<Shared>,
    stream: Async<TcpStream>,
    in_flight: async_channel::WeakSender<()>,
    first_request: Option<Sender<()>>,
    _permit: smol::lock::SemaphoreGuardArc,
) {
    let accepted = Instant::now();
    let mut conn = Connection {
        stream,
        buf: Vec::new(),
        out: Vec::new(),
        unsaved: Vec::new(),
        barrier: 0,
        busy: first_request,
        idle: Alarm::new(accepted + HEAD_TIMEOUT),
    };
    if let Err(Close::Error(e)) = conn.serve_requests(&shared, accepted, &in_flight).await {
        let response = Response::error(e.status(), e.message());
        shared.responses.add(response.status);
        response.write(&mut conn.out, Delivery::CLOSING);
    }
    conn.close(&shared).await;
}

impl Connection {
    /// Serves requests until the connection should close.
    async fn serve_requests(
        &mut self,
        shared: &Shared,
        accepted: Instant,
        in_flight: &async_channel::WeakSender<()>,
    ) -> Result<(), Close> {
        let mut deadline = accepted + HEAD_TIMEOUT;
        let (mut first, mut served) = (true, 0);
        loop {
            if self.buf.is_empty() {
                self.flush(shared).await?;
                // Idle: every answer is out. Give the buffers back, and let
                // shutdown stop waiting for this connection.
                if !first {
                    self.busy = None;
                }
                self.buf = Vec::new();
                self.out = Vec::new();
                self.unsaved = Vec::new();
                let until = if first {
                    deadline
                } else {
                    Instant::now() + IDLE_TIMEOUT
                };
                // Tuning: the plain version waits for readiness first. A new
                // connection's request has usually arrived by the time it is
                // accepted (a client connects and sends at once): reading it
                // now saves a round through the reactor — 36 instead of
                // 41 µs of CPU per request for clients that open a
                // connection per request.
                let arrived = first && self.read_arrived(FIRST_READ)?;
                if !arrived && !self.wait_readable(until).await {
                    return if first {
                        Err(HttpError::Timeout.into())
                    } else {
                        Ok(())
                    };
                }
            }
            if !first {
                deadline = Instant::now() + HEAD_TIMEOUT;
            }
            first = false;
            if self.busy.is_none() {
                self.busy = in_flight.upgrade();
            }
            if !self.serve_request(shared, deadline).await? {
                return self.flush(shared).await;
            }
            if self.out.len() >= MAX_UNSENT {
                // A client that pipelines requests without reading the
                // answers: its next request waits until these are out.
                self.flush(shared).await?;
            }
            served += 1;
            if served % BURST == 0 {
                // Pipelined requests read already never wait: see BURST.
                future::yield_now().await;
            }
        }
    }

    /// Waits until the client sends something (or closes); `false` if
    /// `until` comes first.
    ///
    /// Shutdown does not end this wait: an idle connection stays open while
    /// the server drains, so a request sent on it gets its `503`, but
    /// nothing waits for it, and it closes when the process exits.
    async fn wait_readable(&mut self, until: Instant) -> bool {
        loop {
            // Armed for an earlier deadline, it rings early when the
            // connection was busy since, and is armed again.
            self.idle.arm(until);
            let (stream, idle) = (&self.stream, &mut self.idle);
            // Underneath: `readable` asks the reactor to watch the socket.
            // Polled, it finds no readiness yet, so it leaves this task's
            // waker with the socket's entry in the reactor and arms epoll
            // for it; when data arrives, the thread driving the reactor
            // calls the waker and the executor queues this task again.
            let readable = async {
                // An error shows up again on the read that follows.
                let _ = stream.readable().await;
                true
            };
            let fired = async {
                idle.rung().await;
                false
            };
            if future::or(readable, fired).await {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }

    /// Reads, answers and consumes one request. Returns whether the
    /// connection stays open. The answer goes to `out`, to be written
    /// with those of any pipelined requests after it.
    async fn serve_request(&mut self, shared: &Shared, deadline: Instant) -> Result<bool, Close> {
        let head_len = self.read_head(shared, deadline).await?;
        let head = parse_head(&self.buf[..head_len])?;
        let route = choose_route(&head, &self.buf[..head_len], shared.config.token.as_deref())?;
        if !self.answer_expectation(shared, &head, &route).await? {
            return Ok(false);
        }
        let (consumed, chunked_body) = self.read_body(shared, &head, head_len).await?;
        let bytes = &self.buf[..head_len];
        let (response, saving) = match answer(shared, route, &head, bytes) {
            Reply::Now(response) => (response, None),
            Reply::Submit(route) => {
                let body = chunked_body
                    .as_deref()
                    .unwrap_or(&self.buf[head_len..consumed]);
                let key = head.idempotency_key.clone().map(|k| &bytes[k]);
                match submit(shared, route, key, body) {
                    Submitted::Answer(response) => (response, None),
                    Submitted::Saving(response, saved) => (response, Some(Saving::New(saved))),
                    Submitted::Repeat(response, id) => {
                        let saving = shared.journal.is_some().then_some(Saving::Repeat(id));
                        (response, saving)
                    }
                }
            }
            // Boxed like the long poll below, for the same reason.
            Reply::Events(filter) => {
                return Box::pin(self.serve_events(shared, &head, filter, consumed)).await;
            }
            // Tuning: the plain version awaits it in place. An async fn's
            // future holds everything it awaits inline, and a connection's
            // task holds this one for the connection's life: the long poll's
            // state (its trigger, timer and watch on the client) is boxed,
            // allocated only when a long poll happens, so every other
            // connection's task stays small.
            Reply::Poll(poll) => (Box::pin(self.long_poll(shared, poll)).await?, None),
        };
        let keep_alive = self.queue_answer(shared, &head, response, saving);
        self.buf.drain(..consumed);
        Ok(keep_alive)
    }

    /// Answers `GET /events` (or its `HEAD`): the stream's head, then, for
    /// a `GET`, the stream until it ends, after which the connection
    /// closes. Returns whether the connection stays open.
    async fn serve_events(
        &mut self,
        shared: &Shared,
        head: &Head,
        filter: EventFilter,
        consumed: usize,
    ) -> Result<bool, Close> {
        self.buf.drain(..consumed);
        let head_only = head.method == Method::Head;
        let keep_alive = head_only && head.keep_alive && !shared.draining.is_fired();
        let delivery = Delivery::of(head, keep_alive);
        shared.responses.add(200);
        write_stream_head(&mut self.out, delivery);
        if head_only {
            return Ok(keep_alive);
        }
        // A stream is not a request in flight: shutdown ends it rather
        // than waits for it.
        self.busy = None;
        let feed = Arc::new(Feed::new());
        {
            let mut store = shared.store();
            store.subscribers.push(Subscriber {
                filter,
                feed: feed.clone(),
            });
            shared.subscribed.store(true, Ordering::Relaxed);
        }
        let _unsubscribe = Unsubscribe(shared, &feed);
        let events = Events {
            chunked: !head.http10,
            feed: &feed,
        };
        self.stream_events(shared, events).await.map(|()| false)
    }

    /// Streams events until shutdown, a lag or the client ends it.
    async fn stream_events(&mut self, shared: &Shared, events: Events<'_>) -> Result<(), Close> {
        let mut frame = Vec::with_capacity(1024);
        write_stats_event(&mut frame, shared);
        events.write(&mut self.out, &frame);
        self.flush(shared).await?;
        let (mut last_stats, mut last_write) = (Instant::now(), Instant::now());
        let mut changed = false;
        // Whether events wait for more to gather (`GATHER_EVENTS`,
        // `GATHER_BYTES`, `GATHER_WAIT`).
        let mut gathering = false;
        let mut backlog = Backlog::default();
        loop {
            let keep_alive = last_write + KEEP_ALIVE;
            let until = match (gathering, changed) {
                (true, _) => Instant::now() + GATHER_WAIT,
                (false, true) => keep_alive.min(last_stats + STATS_EVERY),
                (false, false) => keep_alive,
            };
            self.idle.arm(until);
            let (stream, idle) = (&self.stream, &mut self.idle);
            let wake = {
                let rung = async {
                    let _ = events.feed.rung.recv().await;
                    Wake::Rung
                };
                let timer = async {
                    idle.rung().await;
                    Wake::Timer
                };
                let shutdown = async {
                    shared.draining.wait().await;
                    Wake::Shutdown
                };
                let gone = async {
                    Self::client_gone(stream).await;
                    Wake::Gone
                };
                // Shutdown wins a tie: the stream says so and ends.
                future::or(shutdown, future::or(rung, future::or(timer, gone))).await
            };
            let mut lagged = false;
            match wake {
                Wake::Shutdown => return self.end_events(shared, &events, "shutdown").await,
                Wake::Gone => return Err(Close::Gone),
                Wake::Rung if !gathering && !events.feed.gathered() => {
                    gathering = true;
                    continue;
                }
                Wake::Timer if !gathering => {}
                Wake::Rung | Wake::Timer => {
                    gathering = false;
                    events.feed.take(&mut backlog);
                    events.write(&mut self.out, &backlog.events);
                    changed |= backlog.changed;
                    lagged = backlog.lagged;
                }
            }
            let now = Instant::now();
            if changed && now >= last_stats + STATS_EVERY {
                frame.clear();
                write_stats_event(&mut frame, shared);
                events.write(&mut self.out, &frame);
                (changed, last_stats) = (false, now);
            }
            if lagged {
                return self.end_events(shared, &events, "lagged").await;
            }
            if self.out.is_empty() && now >= keep_alive {
                events.write(&mut self.out, b": keep-alive\n\n");
            }
            if !self.out.is_empty() {
                self.flush(shared).await?;
                last_write = Instant::now();
            }
        }
    }

    /// Ends a stream with a last event (`shutdown`, `lagged`).
    async fn end_events(
        &mut self,
        shared: &Shared,
        events: &Events<'_>,
        name: &str,
    ) -> Result<(), Close> {
        let event = format!("event: {name}\ndata: {{}}\n\n");
        events.write(&mut self.out, event.as_bytes());
        if events.chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush(shared).await
    }

    /// Answers `Expect: 100-continue` before the body is read: `100
    /// Continue`, or, when the request will be refused anyway, the final
    /// answer at once. Returns whether to go on to the body.
    async fn answer_expectation(
        &mut self,
        shared: &Shared,
        head: &Head,
        route: &Route,
    ) -> Result<bool, Close> {
        if !head.expect_continue || head.framing == Framing::Length(0) {
            return Ok(true);
        }
        // Refuse before the client sends a body it need not send.
        if let Framing::Length(n) = head.framing
            && n > shared.config.max_body as u64
        {
            return Err(HttpError::BodyTooLarge.into());
        }
        if *route == Route::Unauthorized {
            if let Reply::Now(response) = answer(shared, Route::Unauthorized, head, &[]) {
                self.write_answer(shared, Delivery::of(head, false), response);
            }
            return Ok(false);
        }
        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.flush(shared).await?;
        Ok(true)
    }

    /// Reads the body of the request whose head is the first `head_len`
    /// bytes of the buffer. Returns how many bytes of the buffer the
    /// request takes and, for a chunked body, the decoded body (a body by
    /// length stays in the buffer after the head).
    async fn read_body(
        &mut self,
        shared: &Shared,
        head: &Head,
        head_len: usize,
    ) -> Result<(usize, Option<Vec<u8>>), Close> {
        let deadline = Instant::now() + BODY_TIMEOUT;
        let max = shared.config.max_body;
        match head.framing {
            Framing::Chunked => {
                // Tuning: the plain version awaits it in place. Boxed like
                // the long poll: a chunked body is rare, and its decoder's
                // state would otherwise be part of every connection's task
                // (about 200 bytes of each idle connection).
                let chunked = Box::pin(self.read_chunked(shared, head_len, max, deadline));
                Ok((head_len, Some(chunked.await?)))
            }
            Framing::Length(n) if n > max as u64 => Err(HttpError::BodyTooLarge.into()),
            Framing::Length(n) => {
                let end = head_len + n as usize;
                while self.buf.len() < end {
                    let want = end - self.buf.len();
                    self.fill(shared, deadline, want).await?;
                }
                Ok((end, None))
            }
        }
    }

    /// Appends a request's answer to the output; returns whether the
    /// connection stays open after it. With a journal, it notes what the
    /// answer may show (step 4 of the durability protocol): it goes out
    /// only once that is on disk.
    fn queue_answer(
        &mut self,
        shared: &Shared,
        head: &Head,
        response: Response,
        saving: Option<Saving>,
    ) -> bool {
        if let Some(journal) = &shared.journal {
            self.barrier = journal.appended.load(Ordering::Acquire);
        }
        let keep_alive = head.keep_alive && !shared.draining.is_fired();
        let delivery = Delivery::of(head, keep_alive);
        let start = self.out.len();
        self.write_answer(shared, delivery, response);
        if let Some(saving) = saving {
            let range = start..self.out.len();
            self.unsaved.push(Unsaved {
                range,
                saving,
                delivery,
            });
        }
        keep_alive
    }

    /// Appends an answer to the output, counting it for `/metrics`.
    fn write_answer(&mut self, shared: &Shared, delivery: Delivery, response: Response) {
        shared.responses.add(response.status);
        response.write(&mut self.out, delivery);
    }

    /// Reads until the buffer holds a whole request head; returns its length.
    async fn read_head(&mut self, shared: &Shared, deadline: Instant) -> Result<usize, Close> {
        let mut scanned = 0;
        loop {
            if let Some(end) = take_head(&mut self.buf, &mut scanned)? {
                return Ok(end);
            }
            self.fill(shared, deadline, READ_CHUNK).await?;
        }
    }

    /// Reads and decodes a chunked body that starts at `start`, removing
    /// its framing from the buffer as it goes, so the buffer never holds
    /// more than one read beyond the head.
    async fn read_chunked(
        &mut self,
        shared: &Shared,
        start: usize,
        max_body: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, Close> {
        let mut decoder = Chunked::default();
        loop {
            let used = decoder.feed(&self.buf[start..], max_body)?;
            self.buf.drain(start..start + used);
            if decoder.state == ChunkState::Done {
                return Ok(decoder.body);
            }
            self.fill(shared, deadline, READ_CHUNK).await?;
        }
    }

    /// Reads at least one more byte, up to `want` (at most one chunk),
    /// before `deadline`. The end of the stream is [`Close::Gone`].
    async fn fill(&mut self, shared: &Shared, deadline: Instant, want: usize) -> Result<(), Close> {
        // Bytes already here are read at once, so a pipelining client's
        // requests are all taken in before their answers are written.
        if self.read_arrived(want)? {
            return Ok(());
        }
        // About to wait: whatever waits to be written goes first, as the
        // client may be waiting for it (answers to its earlier requests, or
        // a 100 Continue).
        self.flush(shared).await?;
        let len = self.grow(want);
        let (stream, buf) = (&self.stream, &mut self.buf);
        // Underneath: `read_with` tries the read; on `WouldBlock` it waits
        // for readiness as `readable` does, then tries again. `Timer::at`
        // puts the deadline in the reactor's timer map, so epoll's wait is
        // cut short when it passes. `future::or` polls `read` first and
        // ends with whichever is ready; the other is dropped, and dropping
        // a timer takes it out of the reactor.
        let read = async {
            stream
                .read_with(|s| (&*s).read(&mut buf[len..]))
                .await
                .map_err(Close::from)
        };
        let timeout = async {
            Timer::at(deadline).await;
            Err(Close::Error(HttpError::Timeout))
        };
        let result = future::or(read, timeout).await;
        self.keep_read(len, result)
    }

    /// Reads what has arrived already, without waiting; `false` if nothing
    /// has.
    fn read_arrived(&mut self, want: usize) -> Result<bool, Close> {
        let len = self.grow(want);
        match self.stream.get_ref().read(&mut self.buf[len..]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.buf.truncate(len);
                if len == 0 {
                    // A connection that has sent nothing holds no buffer
                    // while it waits.
                    self.buf = Vec::new();
                }
                Ok(false)
            }
            result => self
                .keep_read(len, result.map_err(Close::from))
                .map(|()| true),
        }
    }

    /// Makes room for up to `want` more bytes (at most one chunk, and a
    /// smaller first read); returns where they go.
    fn grow(&mut self, want: usize) -> usize {
        let len = self.buf.len();
        let most = if len == 0 { FIRST_READ } else { READ_CHUNK };
        self.buf.resize(len + want.clamp(1, most), 0);
        len
    }

    /// Keeps the bytes a read into `buf[len..]` returned.
    fn keep_read(&mut self, len: usize, result: Result<usize, Close>) -> Result<(), Close> {
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        match result {
            Ok(0) => Err(Close::Gone),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes every pending answer, giving up after [`WRITE_TIMEOUT`].
    async fn flush(&mut self, shared: &Shared) -> Result<(), Close> {
        if self.out.is_empty() {
            return Ok(());
        }
        if !self.settle(shared).await {
            // Whether the answers' state reached the disk is unknown: none
            // of them may be sent.
            return Err(Close::Gone);
        }
        let (stream, out) = (&self.stream, &self.out);
        let write = async {
            let mut written = 0;
            while written < out.len() {
                match stream.write_with(|s| (&*s).write(&out[written..])).await? {
                    0 => return Err(Close::Gone),
                    n => written += n,
                }
            }
            Ok(())
        };
        let timeout = async {
            Timer::after(WRITE_TIMEOUT).await;
            Err(Close::Gone)
        };
        let result = future::or(write, timeout).await;
        self.out.clear();
        result
    }

    /// With a journal, waits until everything the pending answers show is
    /// on disk — one wait for all of them, however many were pipelined —
    /// and puts a `503` in place of any answer whose task could not be
    /// saved (the journal writer took it back). `false` if shutdown's grace
    /// ended the wait first.
    async fn settle(&mut self, shared: &Shared) -> bool {
        let Some(journal) = &shared.journal else {
            return true;
        };
        if !journal.wait_durable(self.barrier, &shared.grace_over).await {
            return false;
        }
        if self.unsaved.iter().all(|u| u.saving.saved(shared)) {
            self.unsaved.clear();
            return true;
        }
        let mut out = Vec::with_capacity(self.out.len());
        let mut at = 0;
        for unsaved in self.unsaved.drain(..) {
            out.extend_from_slice(&self.out[at..unsaved.range.start]);
            at = unsaved.range.end;
            if unsaved.saving.saved(shared) {
                out.extend_from_slice(&self.out[unsaved.range]);
                continue;
            }
            let lost = Response {
                retry_after: Some(shared.config.retry_after),
                ..Response::error(503, "the task could not be saved to disk; try again later")
            };
            let status = match unsaved.saving {
                Saving::New(_) => 202,
                Saving::Repeat(_) => 200,
            };
            shared.responses.replace(status, lost.status);
            lost.write(&mut out, unsaved.delivery);
        }
        out.extend_from_slice(&self.out[at..]);
        self.out = out;
        true
    }

    /// Waits for the task of an HTTP long poll (`?wait=`) to change, then
    /// answers: the wait is on the task's watchers [`Trigger`], its
    /// deadline, the drain, and the client closing the connection.
    async fn long_poll(&mut self, shared: &Shared, poll: LongPoll) -> Result<Response, Close> {
        loop {
            let changed = {
                let mut store = shared.store();
                match store.lookup(poll.id) {
                    Lookup::Found(i) if store.tasks[i].state != poll.seen => {
                        return Ok(task_response(200, &store, i));
                    }
                    Lookup::Found(_) => store.watch(poll.id),
                    other => return Ok(lookup_failure(other)),
                }
            };
            self.flush(shared).await?;
            let woke = async {
                changed.wait().await;
                true
            };
            let ended = async {
                let timeout = async {
                    Timer::at(poll.until).await;
                };
                future::or(shared.draining.wait(), timeout).await;
                false
            };
            let gone = async {
                Self::client_gone(&self.stream).await;
                None
            };
            match future::or(async { Some(future::or(woke, ended).await) }, gone).await {
                Some(true) => continue,
                Some(false) => {
                    let store = shared.store();
                    return Ok(match store.lookup(poll.id) {
                        Lookup::Found(i) => task_response(200, &store, i),
                        other => lookup_failure(other),
                    });
                }
                None => return Err(Close::Gone),
            }
        }
    }

    /// Returns when the client has closed its end of `stream`; never, if
    /// it sends more bytes instead (a pipelined request, read after this
    /// answer).
    async fn client_gone(stream: &Async<TcpStream>) {
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.get_ref().peek(&mut [0u8; 1]) {
                Ok(0) => return,
                Ok(_) => future::pending::<()>().await,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Closes the connection gracefully: writes what is pending, shuts the
    /// sending side, and reads what the client still sends for a moment.
    async fn close(mut self, shared: &Shared) {
        if self.flush(shared).await.is_err() {
            return;
        }
        // The answers are out: shutdown need not wait for the lingering.
        self.busy = None;
        // Shutting down a socket the peer already reset can fail; the
        // connection is over either way.
        let _ = self.stream.get_ref().shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let mut thrown = 0;
        while thrown < LINGER_BYTES {
            self.buf.clear();
            if self.fill(shared, deadline, READ_CHUNK).await.is_err() {
                return;
            }
            thrown += self.buf.len();
        }
    }
}

/// A stream of events being written.
struct Events<'a> {
    /// Whether the body is chunked (HTTP/1.1); an HTTP/1.0 stream ends when
    /// the connection closes.
    chunked: bool,
    /// Where the store leaves the stream's events.
    feed: &'a Feed,
}

impl Events<'_> {
    /// Appends events to the output, as one chunk (SSE readers see only
    /// the events; one chunk for all that waited spares a chunk's framing
    /// each).
    fn write(&self, out: &mut Vec<u8>, events: &[u8]) {
        // An empty chunk would end the body.
        if events.is_empty() {
            return;
        }
        if self.chunked {
            let _ = write!(VecWriter(out), "{:x}\r\n", events.len());
        }
        out.extend_from_slice(events);
        if self.chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// What woke a stream.
enum Wake {
    /// Its bell: events or changed stats wait.
    Rung,
    /// Its stats or keep-alive timer.
    Timer,
    /// Shutdown began.
    Shutdown,
    /// The client closed the connection.
    Gone,
}

/// Removes a stream's feed from the store when the stream ends, however
/// it ends.
struct Unsubscribe<'a>(&'a Shared, &'a Arc<Feed>);

impl Drop for Unsubscribe<'_> {
    fn drop(&mut self) {
        let mut store = self.0.store();
        store.subscribers.retain(|s| !Arc::ptr_eq(&s.feed, self.1));
        let any = !store.subscribers.is_empty();
        self.0.subscribed.store(any, Ordering::Relaxed);
    }
}

/// Appends the head of an event stream: no `Content-Length`, chunked for
/// HTTP/1.1 (an HTTP/1.0 stream ends with the connection).
fn write_stream_head(out: &mut Vec<u8>, delivery: Delivery) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nDate: ");
    with_http_date(|date| out.extend_from_slice(date));
    out.extend_from_slice(b"\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n");
    if !delivery.http10 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    delivery.write_connection(out);
    out.extend_from_slice(b"\r\n");
}

/// Accepts, once shutdown has begun, the connections already waiting in the
/// kernel's backlog: closing the listener would reset them, and their
/// clients may have sent a request already. Each one's first request counts
/// as in flight, so shutdown waits for its answer (a `503`, most likely).
fn accept_backlog(
    shared: &Arc<Shared>,
    executor: &Executor<'static>,
    listener: &Async<TcpListener>,
    in_flight: &async_channel::WeakSender<()>,
    places: &Arc<smol::lock::Semaphore>,
) {
    while let Some(place) = places.try_acquire_arc() {
        // The listener is non-blocking: this ends at WouldBlock.
        let Ok((stream, _)) = listener.get_ref().accept() else {
            return;
        };
        let Ok(stream) = Async::new(stream) else {
            continue;
        };
        let _ = stream.get_ref().set_nodelay(true);
        let first_request = in_flight.upgrade();
        let task = serve(
            shared.clone(),
            stream,
            in_flight.clone(),
            first_request,
            place,
        );
        executor.spawn(task).detach();
    }
}

/// Accepts connections until shutdown begins, each in a task of its own.
///
/// A place among `--max-connections` is taken before `accept`, so past the
/// limit new connections wait in the kernel's backlog rather than in memory.
async fn listen(
    shared: Arc<Shared>,
    executor: Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    in_flight: async_channel::WeakSender<()>,
) {
    let places = Arc::new(smol::lock::Semaphore::new(shared.config.max_connections));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        // Underneath: `accept` tries `accept(2)`; when nothing waits in the
        // backlog it leaves this task's waker with the reactor, which calls
        // it when epoll says the listening socket is readable.
        let next = async {
            let place = places.acquire_arc().await;
            (place, listener.accept().await)
        };
        let stopped = async {
            shared.draining.wait().await;
            None
        };
        let Some((place, accepted)) = future::or(stopped, async { Some(next.await) }).await else {
            accept_backlog(&shared, &executor, &listener, &in_flight, &places);
            // Dropping the listener closes its socket: new connections are refused.
            return;
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                // Answers go out as soon as they are written, not after
                // Nagle's delay; failing to set it only costs latency.
                let _ = stream.get_ref().set_nodelay(true);
                // Underneath: `spawn` wraps the future in a task and puts it
                // on the executor's queue, waking an idle executor thread;
                // `detach` lets it run to its end with no one holding its
                // handle (dropping a handle would cancel the task).
                let task = serve(shared.clone(), stream, in_flight.clone(), None, place);
                executor.spawn(task).detach();
            }
            Err(e) => {
                warn!("accept failed: {e}; retrying in {backoff:?}");
                drop(place);
                let pause = async {
                    Timer::after(backoff).await;
                };
                future::or(shared.draining.wait(), pause).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

// ---- 11. Signals, shutdown and `main` ----
//
// Signals arrive through a pipe (signal-hook writes a byte per signal from
// its handler), which the executor reads like any socket: no thread sits
// waiting for signals, and no work happens inside a signal handler.

/// Starts the server and runs it until shutdown has finished; returns the
/// exit status.
async fn supervise(
    shared: Arc<Shared>,
    executor: Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    signals: Async<std::os::unix::net::UnixStream>,
    due_rx: Receiver<(u64, u64)>,
    start_threads: impl FnOnce(),
) -> i32 {
    let running = start_serving(&shared, &executor, listener, due_rx).await;
    notify_service_manager("READY=1");
    start_threads();
    let received = read_signals(&signals).await;
    notify_service_manager("STOPPING=1");
    shut_down(&shared, &executor, running, signals, received).await
}

/// What shutdown needs of a running server: what to wait for.
struct Running {
    /// The listener's task; it ends once it has taken in its backlog.
    listening: async_executor::Task<()>,
    /// Each request holds an upgraded clone of this while it is served.
    in_flight_tx: Sender<()>,
    /// Reports, once `in_flight_tx` is dropped, when the last request in
    /// flight has been answered: its receive fails when no sender is left.
    requests_done: Receiver<()>,
    /// Reports in the same way when every worker has ended.
    workers_done: Receiver<()>,
}

/// Spawns the listener, then the workers and the retry scheduler.
async fn start_serving(
    shared: &Arc<Shared>,
    executor: &Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    due_rx: Receiver<(u64, u64)>,
) -> Running {
    let (in_flight_tx, requests_done) = async_channel::bounded::<()>(1);
    // The bound address, not the flag: with port 0 the kernel picks one.
    let bound = listener
        .get_ref()
        .local_addr()
        .map_or(shared.config.addr, |a| a);
    // The listener first: a client may be waiting in the backlog already.
    let listening = executor.spawn(listen(
        shared.clone(),
        executor.clone(),
        listener,
        in_flight_tx.downgrade(),
    ));
    info!(
        "listening on http://{bound} with {}",
        QueueList(&shared.config.queues)
    );
    // Tuning: the plain version spawns everything and goes on. `yield_now`
    // returns "not yet" once and wakes itself, so the executor runs the
    // tasks queued before it — the listener — first: a client that connected
    // while the process was starting is answered now (its task waits in the
    // queue for the workers), and counting cores and starting threads come
    // after. The first 202 went out ~285 µs into `main` instead of ~530.
    future::yield_now().await;
    let (workers_tx, workers_done) = async_channel::bounded::<()>(1);
    for (q, queue) in shared.config.queues.iter().enumerate() {
        for _ in 0..queue.workers {
            executor
                .spawn(work(shared.clone(), q, workers_tx.clone()))
                .detach();
        }
    }
    executor.spawn(schedule(shared.clone(), due_rx)).detach();
    Running {
        listening,
        in_flight_tx,
        requests_done,
        workers_done,
    }
}

/// Shuts down in the order of the crate docs, after the first of
/// `received` signals; returns the exit status.
async fn shut_down(
    shared: &Shared,
    executor: &Executor<'static>,
    running: Running,
    signals: Async<std::os::unix::net::UnixStream>,
    received: usize,
) -> i32 {
    // Step 1: the drain begins.
    info!(
        "shutting down: no new tasks; waiting up to {:?} for requests and running tasks",
        shared.config.grace
    );
    shared.store().draining = true;
    shared.draining.fire();
    for queue in &shared.queues {
        queue.jobs_tx.close();
    }
    // The listener ends once it has taken in its backlog; only then can no
    // new request start, and this sender go.
    running.listening.await;
    drop(running.in_flight_tx);
    // A second signal, from now on, ends the process at once.
    executor
        .spawn(async move {
            if received < 2 {
                read_signals(&signals).await;
            }
            error!("second signal: exiting at once");
            std::process::exit(1);
        })
        .detach();

    // Step 2: wait for requests in flight and running tasks, up to --grace.
    let everything_done = async {
        // Both receives end in an error, once the last sender is gone.
        let _ = running.requests_done.recv().await;
        let _ = running.workers_done.recv().await;
        true
    };
    let grace_over = async {
        Timer::after(shared.config.grace).await;
        false
    };
    let finished = future::or(everything_done, grace_over).await;

    // Step 3: interrupt what is still running, and wait for it to stop.
    let interrupted = shared.store().busy();
    if !finished {
        shared.grace_over.fire();
        let _ = running.workers_done.recv().await;
    }
    let store = shared.store();
    let (queued, scheduled) = (store.count(State::Queued), store.count(State::Scheduled));
    if shared.journal.is_some() {
        info!(
            "shutdown complete: {queued} queued, {scheduled} scheduled and {interrupted} interrupted tasks stay in the journal"
        );
    } else {
        info!(
            "shutdown complete: dropped {queued} queued and {interrupted} running tasks, and {scheduled} scheduled"
        );
    }
    0
}

/// Displays the queues for the start-up line: `10 workers, queue 100`,
/// then each named queue's workers and capacity.
struct QueueList<'a>(&'a [QueueConfig]);

impl std::fmt::Display for QueueList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, q) in self.0.iter().enumerate() {
            match i {
                0 => write!(f, "{} workers, queue {}", q.workers, q.buffer)?,
                _ => write!(f, "; queue {}: {} workers, {}", q.name, q.workers, q.buffer)?,
            }
        }
        Ok(())
    }
}

/// Tells the service manager how the server is doing (`READY=1` once it
/// listens and its workers run, `STOPPING=1` when shutdown begins), if it
/// asked with `NOTIFY_SOCKET` (systemd's `Type=notify`): one datagram to
/// that socket, a path or an abstract name written `@name`. Best effort: a
/// server started by hand has no such socket, and one that cannot be
/// reached is only logged.
fn notify_service_manager(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(Path::new(&path))?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        warn!("cannot tell the service manager {state}: {e}");
    }
}

/// Waits for signals to arrive on the pipe; returns how many did.
async fn read_signals(signals: &Async<std::os::unix::net::UnixStream>) -> usize {
    let mut bytes = [0u8; 8];
    match signals.read_with(|s| (&*s).read(&mut bytes)).await {
        Ok(n) => n.max(1),
        // The pipe cannot fail in practice; treating a failure as a
        // signal errs on the side of stopping.
        Err(_) => 1,
    }
}

/// Sets up a pipe that receives a byte for each SIGINT and SIGTERM.
fn signal_pipe() -> io::Result<Async<std::os::unix::net::UnixStream>> {
    let (read, write) = std::os::unix::net::UnixStream::pair()?;
    write.set_nonblocking(true)?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
    }
    Async::new(read)
}

fn main() {
    // A first argument that is a word, not a flag, is a client command.
    if let Some(code) = client::dispatch() {
        std::process::exit(code);
    }
    let args = std::env::args_os().skip(1);
    let config = match parse_command(args, |name| std::env::var(name).ok()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", usage());
            return;
        }
        Ok(Command::Version) => {
            println!("bgtasks {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(message) => {
            eprintln!("bgtasks: {message}");
            std::process::exit(2);
        }
    };
    // Only fails if a logger is already set, which nothing else does.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .init();
    std::process::exit(match launch(*config) {
        Ok(code) => code,
        Err(message) => {
            error!("{message}");
            1
        }
    });
}

/// Opens the data directory, binds, builds the shared state and runs the
/// executor threads until shutdown; returns the exit status.
fn launch(config: Config) -> Result<i32, String> {
    // The data directory comes first: a server should know its tasks
    // before it listens.
    let data = match &config.data_dir {
        Some(dir) => Some(open_data_dir(dir, &config)?),
        None => None,
    };
    // Listening comes next, before the rest of the start-up: a client that
    // connects meanwhile waits in the backlog, so starting the reactor (a
    // thread, an epoll set) overlaps with its connecting.
    let listener = TcpListener::bind(config.addr)
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    // Underneath: `Async::new` makes the socket non-blocking and registers
    // it with async-io's reactor (an epoll set, and a helper thread that
    // drives it when no thread in `block_on` does).
    let listener = Async::new(listener).map_err(|e| format!("cannot watch the listener: {e}"))?;
    let signals = signal_pipe().map_err(|e| format!("cannot watch signals: {e}"))?;
    if !config.handlers.is_empty() {
        become_subreaper();
    }
    let (shared, due_rx, writer) = build_shared(config, data);
    // The writer must run before anything is served: a submission waits
    // for it, and without it would wait forever.
    let writer = match writer {
        Some(writer) => Some(spawn_journal_writer(&shared, writer)?),
        None => None,
    };
    let code = run_executor(&shared, listener, signals, due_rx);
    if let Some((thread, _lock)) = writer {
        // What the last moments changed is written before the process ends.
        if let Some(sender) = &shared.store().journal {
            sender.tx.close();
        }
        // The writer only ends by returning; a panic would abort.
        let _ = thread.join();
    }
    Ok(code)
}

/// Makes bgtasks the child subreaper of its handlers: processes a handler
/// leaves behind are orphaned to bgtasks instead of to init, so that they
/// can be reaped rather than left zombies.
fn become_subreaper() {
    let this = rustix::process::Pid::from_raw(std::process::id() as i32);
    if let Err(e) = rustix::process::set_child_subreaper(this) {
        warn!("cannot become a child subreaper ({e}): a handler's orphans go to init");
    }
}

/// What the journal writer thread needs: the records' channel, the file,
/// and the directory lock it keeps held.
type WriterParts = (Receiver<JournalEntry>, JournalWriter, std::fs::File);

/// Builds the state every task shares, restoring the replayed tasks into
/// the store and the queue. Returns it with the retry scheduler's receiver
/// and, with a journal, what its writer thread needs.
fn build_shared(
    config: Config,
    data: Option<DataDir>,
) -> (Arc<Shared>, Receiver<(u64, u64)>, Option<WriterParts>) {
    let queues: Vec<Queue> = config.queues.iter().map(Queue::new).collect();
    let (due_tx, due_rx) = async_channel::unbounded();
    let mut store = Store::new(&config, due_tx);
    let mut writer = None;
    let journal = data.map(|data| {
        store.restore(data.replayed, &queues);
        // Replayed tasks are on disk already.
        let progress = Arc::new(JournalProgress::new(store.last_id));
        let (tx, rx) = async_channel::unbounded();
        store.journal = Some(JournalSender {
            tx,
            seq: 0,
            progress: progress.clone(),
        });
        writer = Some((rx, data.writer, data.lock));
        progress
    });
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        config,
        queues,
        draining: Trigger::new(),
        grace_over: Trigger::new(),
        responses: StatusCounts::new(),
        rejected: AtomicU64::new(0),
        subscribed: std::sync::atomic::AtomicBool::new(false),
        journal,
    });
    (shared, due_rx, writer)
}

/// Starts the journal writer thread; an error fails start-up.
fn spawn_journal_writer(
    shared: &Arc<Shared>,
    (rx, writer, lock): WriterParts,
) -> Result<(std::thread::JoinHandle<()>, std::fs::File), String> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || write_journal(shared, rx, writer))
        .map(|thread| (thread, lock))
        .map_err(|e| format!("cannot start the journal writer: {e}"))
}

/// Runs the executor on `--threads` threads until [`supervise`] returns its
/// exit status.
fn run_executor(
    shared: &Arc<Shared>,
    listener: Async<TcpListener>,
    signals: Async<std::os::unix::net::UnixStream>,
    due_rx: Receiver<(u64, u64)>,
) -> i32 {
    let executor = Arc::new(Executor::new());
    let exited = Trigger::new();
    std::thread::scope(|scope| {
        // Tuning: the plain version starts the threads first. Counting the
        // cores (std reads the cgroup quota too) and starting threads take a
        // few hundred microseconds: `supervise` does it once a client
        // already waiting has been answered.
        let start_threads = || {
            let threads = shared.config.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            for _ in 1..threads {
                let (executor, exited) = (executor.clone(), exited.clone());
                scope.spawn(move || async_io::block_on(executor.run(exited.wait())));
            }
        };
        let main = supervise(
            shared.clone(),
            executor.clone(),
            listener,
            signals,
            due_rx,
            start_threads,
        );
        // Underneath: `executor.run` polls the executor's ready tasks on
        // this thread until `main` ends; when none is ready it returns
        // "not yet", and `block_on` then drives the reactor itself — an
        // epoll wait, until an event, a timer or a wake-up — unless another
        // thread is driving it, in which case it sleeps until woken. What
        // wakes it is a task being queued: the executor calls the waker of
        // one sleeping thread's `block_on`, which unparks that thread, or
        // interrupts its epoll wait if it is the one in the reactor.
        let code = async_io::block_on(executor.run(main));
        exited.fire();
        code
    })
}

/// An opened data directory: locked, its journal replayed and ready.
struct DataDir {
    /// Held, locked, for as long as the server runs.
    lock: std::fs::File,
    /// The journal, ready for the writer thread.
    writer: JournalWriter,
    /// What the journal held.
    replayed: Replayed,
}

/// Opens `--data-dir`: creates it if need be, locks it against a second
/// server, and replays its journal. Damage stops start-up before anything
/// on disk is changed; a torn last record is cut off with a warning.
fn open_data_dir(dir: &Path, config: &Config) -> Result<DataDir, String> {
    let fail = |e: io::Error| format!("cannot use --data-dir {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .map_err(fail)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!(
                "--data-dir {} is in use by another bgtasks",
                dir.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
    }
    let path = dir.join(JOURNAL);
    let started = Instant::now();
    let replayed = replay(&path, config)?;
    // From here on the directory may change.
    if std::fs::remove_file(dir.join(JOURNAL_TMP)).is_ok() {
        warn!("removed {JOURNAL_TMP}: a compaction the last run did not finish");
    }
    let file = open_journal(dir).map_err(fail)?;
    if replayed.torn {
        warn!(
            "{}: dropped a torn last record (a write cut short by a crash)",
            path.display()
        );
        file.set_len(replayed.good_len)
            .and_then(|()| file.sync_all())
            .map_err(fail)?;
    }
    // A journal just created must have its directory entry on disk too.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    info!(
        "replayed {} tasks from {} ({} bytes) in {} ms",
        replayed.tasks.len(),
        path.display(),
        replayed.good_len,
        started.elapsed().as_millis()
    );
    let len = replayed.good_len;
    Ok(DataDir {
        lock,
        writer: JournalWriter {
            dir: dir.to_path_buf(),
            file,
            len,
            // Checked after the first batch, against the retained tasks:
            // a journal replayed after a crash may be due for it already.
            next_check: 0,
            broken: false,
            failing: false,
        },
        replayed,
    })
}

// ---- 12. Tests of the pure pieces ----
//
// The end-to-end tests in `tests/` drive the real binary over sockets; these
// check the pieces that need no socket, table by table.

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations Go accepts, with their values in nanoseconds (most from
    /// Go's own `time` tests).
    const GOOD_DURATIONS: &[(&str, u64)] = &[
        ("0", 0),
        ("+0", 0),
        ("-0", 0),
        ("0s", 0),
        ("-0s", 0),
        ("5s", 5_000_000_000),
        ("30s", 30_000_000_000),
        ("1478s", 1_478_000_000_000),
        ("+5s", 5_000_000_000),
        ("5.0s", 5_000_000_000),
        ("5.6s", 5_600_000_000),
        ("5.s", 5_000_000_000),
        (".5s", 500_000_000),
        ("1.0s", 1_000_000_000),
        ("1.00s", 1_000_000_000),
        ("1.004s", 1_004_000_000),
        ("1.0040s", 1_004_000_000),
        ("100.00100s", 100_001_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12µs", 12_000),
        ("12μs", 12_000),
        ("13ms", 13_000_000),
        ("14s", 14_000_000_000),
        ("15m", 900_000_000_000),
        ("16h", 57_600_000_000_000),
        ("3h30m", 12_600_000_000_000),
        ("10.5s4m", 250_500_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("39h9m14.425s", 140_954_425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 1_200_000_000_000),
        ("9007199254740993ns", 9_007_199_254_740_993),
        ("9223372036854775807ns", 9_223_372_036_854_775_807),
        ("9223372036854775.807us", 9_223_372_036_854_775_807),
        ("9223372036s854ms775us807ns", 9_223_372_036_854_775_807),
        ("0.100000000000000000000h", 360_000_000_000),
        ("0.830103483285477580700h", 2_988_372_539_827),
        ("2562047h47m16.854775807s", 9_223_372_036_854_775_807),
        ("1.5h", 5_400_000_000_000),
        ("300ms", 300_000_000),
        ("1m30s", 90_000_000_000),
        ("2h45m", 9_900_000_000_000),
    ];

    /// Strings Go refuses, and negative values, which bgtasks refuses too.
    const BAD_DURATIONS: &[&str] = &[
        "",
        "3",
        "-",
        "+",
        "s",
        ".",
        "-.",
        ".s",
        "+.s",
        "1d",
        "1.5",
        "1 s",
        " 1s",
        "1s ",
        "1S",
        "1sec",
        "1e3s",
        "0x10s",
        "\u{85}\u{85}",
        "\u{ff}ff",
        "hello \u{ff}ff world",
        "-5s",
        "-1ns",
        "-2m3.4s",
        "-9223372036854775808ns",
        "9223372036854775808ns",
        "9223372036854775.808us",
        "9223372036854ms775us808ns",
        "9223372036s854ms775us808ns",
        "2562047h47m16.854775808s",
        "2562048h",
        "3000000h",
        "9223372036854775807ns1ns",
        "18446744073709551616ns",
        "18446744073709551615ns",
        "99999999999999999999s",
        "1844674407370955161.6s",
        "1.5µ",
        "1us1",
    ];

    #[test]
    fn durations_parse_exactly_as_go_does() {
        for &(text, nanos) in GOOD_DURATIONS {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_nanos(nanos)),
                "{text:?}"
            );
        }
        for &text in BAD_DURATIONS {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_with_milliseconds() {
        let cases: &[(u64, &str)] = &[
            (0, "null"),
            (1, "\"1970-01-01T00:00:00.001Z\""),
            (951_782_400_000, "\"2000-02-29T00:00:00.000Z\""),
            (951_868_799_999, "\"2000-02-29T23:59:59.999Z\""),
            (1_798_401_600_123, "\"2026-12-27T20:00:00.123Z\""),
            (1_796_000_000_000, "\"2026-11-30T00:53:20.000Z\""),
            (4_102_444_800_000, "\"2100-01-01T00:00:00.000Z\""),
            (253_402_300_799_999, "\"9999-12-31T23:59:59.999Z\""),
            (253_402_300_800_000, "\"10000-01-01T00:00:00.000Z\""),
        ];
        // Twice each, and then in the other order: the text a thread keeps
        // for the last time it wrote is the right one.
        let twice = cases.iter().flat_map(|case| [case, case]);
        for &(millis, expected) in twice.clone().chain(twice.rev()) {
            let mut out = Vec::new();
            write_timestamp(&mut out, millis);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{millis}");
        }
    }

    #[test]
    fn json_strings_are_escaped_as_serde_json_escapes_them() {
        let cases = [
            "",
            "sleep",
            "default",
            "a b",
            "é✓",
            "\"",
            "\\",
            "a\"b",
            "\n",
            "\u{1f}",
            "\u{7f}",
            "x\ty",
            "</script>",
        ];
        for case in cases {
            let mut out = Vec::new();
            write_json_str(&mut out, case);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(case).unwrap()
            );
        }
    }

    /// Timestamps RFC 3339 allows, with their milliseconds since the epoch,
    /// computed independently with Python's `datetime`
    /// (`tools/rfc3339_values.py`).
    const GOOD_TIMESTAMPS: &[(&str, i64)] = &[
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.001Z", 1),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T23:59:59Z", -1_000),
        ("1969-12-31T23:59:59.999Z", -1),
        ("1969-07-20T20:17:40Z", -14_182_940_000),
        ("1900-01-01T00:00:00Z", -2_208_988_800_000),
        ("1600-02-29T00:00:00Z", -11_670_998_400_000),
        ("0001-01-01T00:00:00Z", -62_135_596_800_000),
        ("0000-01-01T00:00:00Z", -62_167_219_200_000),
        ("0000-02-29T00:00:00Z", -62_162_121_600_000),
        ("2026-12-01T03:00:00Z", 1_796_094_000_000),
        ("2026-12-01T03:00:00+00:00", 1_796_094_000_000),
        ("2026-12-01T03:00:00-00:00", 1_796_094_000_000),
        ("2026-12-01T03:00:00+01:00", 1_796_090_400_000),
        ("2026-12-01T03:00:00-05:00", 1_796_112_000_000),
        ("2026-12-01T03:00:00+05:30", 1_796_074_200_000),
        ("2026-12-01T03:00:00+05:45", 1_796_073_300_000),
        ("2026-12-01T03:00:00+14:00", 1_796_043_600_000),
        ("2026-12-01T03:00:00-12:00", 1_796_137_200_000),
        ("2026-12-01T03:00:00+23:59", 1_796_007_660_000),
        ("2026-12-01T03:00:00-23:59", 1_796_180_340_000),
        ("2026-01-01T00:30:00+01:00", 1_767_223_800_000),
        ("2026-12-31T23:59:59-01:00", 1_798_765_199_000),
        ("2000-02-29T12:00:00Z", 951_825_600_000),
        ("2024-02-29T23:59:59Z", 1_709_251_199_000),
        ("2100-03-01T00:00:00Z", 4_107_542_400_000),
        ("2026-12-01T03:00:00.1Z", 1_796_094_000_100),
        ("2026-12-01T03:00:00.12Z", 1_796_094_000_120),
        ("2026-12-01T03:00:00.123Z", 1_796_094_000_123),
        ("2026-12-01T03:00:00.000Z", 1_796_094_000_000),
        ("2026-12-01T03:00:00.1239Z", 1_796_094_000_123),
        ("2026-12-01T03:00:00.123456789Z", 1_796_094_000_123),
        (
            "2026-12-01T03:00:00.99999999999999999999Z",
            1_796_094_000_999,
        ),
        ("2026-12-01T03:00:00.5-05:00", 1_796_112_000_500),
        ("2026-12-01t03:00:00z", 1_796_094_000_000),
        ("2026-12-01 03:00:00Z", 1_796_094_000_000),
        ("2026-12-01 03:00:00.25+02:00", 1_796_086_800_250),
        ("1985-04-12T23:20:50.52Z", 482_196_050_520),
        ("1996-12-19T16:39:57-08:00", 851_042_397_000),
        ("1937-01-01T12:00:27.87+00:20", -1_041_337_172_130),
        ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
    ];

    /// Strings that are not RFC 3339 `date-time`s, or name no real time.
    const BAD_TIMESTAMPS: &[&str] = &[
        "",
        "now",
        "2026-12-01",
        "2026-12-01T03:00:00",
        "2026-12-01T03:00:00.123",
        "2026-12-01T03:00Z",
        "2026-12-01T03:00:00+0100",
        "2026-12-01T03:00:00+01",
        "2026-12-01T03:00:00+2400",
        "2026-12-01T03:00:00+24:00",
        "2026-12-01T03:00:00+01:60",
        "2026-12-01T03:00:00+1:00",
        "2026-12-01T03:00:00+01:00:00",
        "2026-12-01T03:00:00-",
        "2026-12-01T03:00:00UTC",
        "2026-12-01T03:00:00 Z",
        "2026-12-01T03:00:00ZZ",
        "2026-12-01T03:00:00Z ",
        " 2026-12-01T03:00:00Z",
        "2026-12-01T03:00:00Z\n",
        "2026-12-01T3:00:00Z",
        "2026-12-1T03:00:00Z",
        "26-12-01T03:00:00Z",
        "+2026-12-01T03:00:00Z",
        "-2026-12-01T03:00:00Z",
        "12026-12-01T03:00:00Z",
        "2026-12-01T03:00:00.Z",
        "2026-12-01T03:00:00.+01:00",
        "2026-12-01T03:00:00,5Z",
        "2026-12-01T03:00:00.5.5Z",
        "2026/12/01T03:00:00Z",
        "2026-12-01X03:00:00Z",
        "2026-12-01  03:00:00Z",
        "2026-12-01T-3:00:00Z",
        "2026-12-01T03:+0:00Z",
        "1900-02-29T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2100-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-06-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-12-00T00:00:00Z",
        "2026-12-32T00:00:00Z",
        "2026-12-01T24:00:00Z",
        "2026-12-01T23:60:00Z",
        "2016-12-31T23:59:60Z",
        "\u{ff12}\u{ff10}\u{ff12}\u{ff16}-12-01T03:00:00Z",
        "2026-12-01T03:00:00\u{e9}",
    ];

    #[test]
    fn timestamps_parse_as_rfc_3339_says() {
        for &(text, millis) in GOOD_TIMESTAMPS {
            assert_eq!(parse_rfc3339(text), Some(millis), "{text:?}");
        }
        for &text in BAD_TIMESTAMPS {
            assert_eq!(parse_rfc3339(text), None, "{text:?} should be refused");
        }
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        // Every day from 0000-01-01 to 9999-12-31, each the day after the last.
        let mut previous = (-1, 12, 31);
        for days in -719_528..=2_932_896 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(
                days_from_civil(year, month, day),
                days,
                "{year}-{month}-{day}"
            );
            let next = if previous.2 < days_in_month(previous.0, previous.1) {
                (previous.0, previous.1, previous.2 + 1)
            } else if previous.1 < 12 {
                (previous.0, previous.1 + 1, 1)
            } else {
                (previous.0 + 1, 1, 1)
            };
            assert_eq!((year, month, day), next, "{days}");
            previous = next;
        }
    }

    /// Specs, a time, and their first firing strictly after it. 2026-03-01
    /// is a Sunday. Checked independently by brute force, day by day with
    /// Python's `datetime` (`tools/cron_values.py`).
    #[rustfmt::skip]
    const NEXT_FIRINGS: &[(&str, &str, &str)] = &[
        ("* * * * *",             "2026-03-04T05:06:07Z",     "2026-03-04T05:07:00Z"),
        ("* * * * *",             "2026-03-04T05:06:00Z",     "2026-03-04T05:07:00Z"),
        ("* * * * *",             "2026-12-31T23:59:30Z",     "2027-01-01T00:00:00Z"),
        ("*\t*  * *   *",         "2026-03-04T05:06:07Z",     "2026-03-04T05:07:00Z"),
        ("  0 0 * * *  ",         "2026-03-04T00:00:00Z",     "2026-03-05T00:00:00Z"),
        ("*/7 * * * *",           "2026-03-04T05:56:00Z",     "2026-03-04T06:00:00Z"),
        ("*/7 * * * *",           "2026-03-04T05:49:59.999Z", "2026-03-04T05:56:00Z"),
        ("*/7 * * * *",           "2026-03-04T23:56:00Z",     "2026-03-05T00:00:00Z"),
        ("1-5,10-15/2 * * * *",   "2026-03-04T05:05:00Z",     "2026-03-04T05:10:00Z"),
        ("1-5,10-15/2 * * * *",   "2026-03-04T05:12:00Z",     "2026-03-04T05:14:00Z"),
        ("1-5,10-15/2 * * * *",   "2026-03-04T05:14:00Z",     "2026-03-04T06:01:00Z"),
        ("0,30 * * * *",          "2026-03-04T05:00:00Z",     "2026-03-04T05:30:00Z"),
        ("23 0-20/2 * * *",       "2026-03-04T20:23:00Z",     "2026-03-05T00:23:00Z"),
        ("0 9-17 * * mon-fri",    "2026-03-06T17:00:00Z",     "2026-03-09T09:00:00Z"),
        ("0 9-17 * * MON-FRI",    "2026-03-06T12:30:00Z",     "2026-03-06T13:00:00Z"),
        ("15 10 * * Mon,Wed,Fri", "2026-03-04T10:15:00Z",     "2026-03-06T10:15:00Z"),
        ("0 0 * * 7",             "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * 0",             "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * sun",           "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * sun-sun",       "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * 1",             "2026-03-09T00:00:00Z",     "2026-03-16T00:00:00Z"),
        ("5 4 * * sat-sun",       "2026-03-04T00:00:00Z",     "2026-03-07T04:05:00Z"),
        ("5 4 * * sat-sun",       "2026-03-07T04:05:00Z",     "2026-03-08T04:05:00Z"),
        ("0 0 * * fri-sun",       "2026-03-08T00:00:00Z",     "2026-03-13T00:00:00Z"),
        ("0 0 * * 5-7",           "2026-03-08T00:00:00Z",     "2026-03-13T00:00:00Z"),
        ("0 12 * jan,jul *",      "2026-02-01T00:00:00Z",     "2026-07-01T12:00:00Z"),
        ("30 4 1 JAN *",          "2026-01-01T04:30:00Z",     "2027-01-01T04:30:00Z"),
        ("0 0 1 */3 *",           "2026-10-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        // Friday or the 13th; both, and each alone.
        ("0 0 13 * 5",            "2026-03-01T00:00:00Z",     "2026-03-06T00:00:00Z"),
        ("0 0 13 * 5",            "2026-04-10T00:00:00Z",     "2026-04-13T00:00:00Z"),
        ("0 0 13 * fri",          "2026-03-06T00:00:00Z",     "2026-03-13T00:00:00Z"),
        ("0 0 1-7 * 1",           "2026-03-10T00:00:00Z",     "2026-03-16T00:00:00Z"),
        // A day field starting with `*` makes both fields count.
        ("0 0 */2 * 1",           "2026-03-01T00:00:00Z",     "2026-03-09T00:00:00Z"),
        ("0 0 31 * *",            "2026-04-01T00:00:00Z",     "2026-05-31T00:00:00Z"),
        ("0 0 31 * *",            "2026-05-31T00:00:00Z",     "2026-07-31T00:00:00Z"),
        ("0 0 31 1-12/2 *",       "2026-07-31T00:00:00Z",     "2027-01-31T00:00:00Z"),
        ("0 0 30 2,4 *",          "2026-03-01T00:00:00Z",     "2026-04-30T00:00:00Z"),
        ("0 0 28-31 2 *",         "2027-02-28T00:00:00Z",     "2028-02-28T00:00:00Z"),
        ("0 0 29 2 *",            "2025-01-01T00:00:00Z",     "2028-02-29T00:00:00Z"),
        ("0 0 29 2 *",            "2096-03-01T00:00:00Z",     "2104-02-29T00:00:00Z"),
        ("0 0 29 2 *",            "2000-02-29T00:00:00Z",     "2004-02-29T00:00:00Z"),
        ("0 0 29 2 1",            "2026-02-24T00:00:00Z",     "2027-02-01T00:00:00Z"),
        ("0 0 29 2 1",            "2028-02-28T00:00:00Z",     "2028-02-29T00:00:00Z"),
        ("0 0 29 2 mon",          "1970-01-01T00:00:00Z",     "1970-02-02T00:00:00Z"),
        ("0 0 29 2 */7",          "2088-03-01T00:00:00Z",     "2128-02-29T00:00:00Z"),
        ("0 0 1 1 *",             "2026-06-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("59 23 31 12 *",         "2026-12-31T23:59:00Z",     "2027-12-31T23:59:00Z"),
        ("0 0 31 12 *",           "2026-12-31T00:00:00.001Z", "2027-12-31T00:00:00Z"),
        ("0 0 1 1 *",             "9998-06-01T00:00:00Z",     "9999-01-01T00:00:00Z"),
        ("@hourly",               "2026-03-04T05:00:00Z",     "2026-03-04T06:00:00Z"),
        ("@daily",                "2026-03-04T00:00:00Z",     "2026-03-05T00:00:00Z"),
        ("@midnight",             "2026-03-04T23:59:59.999Z", "2026-03-05T00:00:00Z"),
        ("@weekly",               "2026-03-08T00:00:00Z",     "2026-03-15T00:00:00Z"),
        ("@monthly",              "2026-12-15T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("@yearly",               "2026-01-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("@annually",             "2026-06-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("@every 90s",            "2026-03-04T12:00:00.250Z", "2026-03-04T12:01:30.250Z"),
        ("@every 1h30m",          "2026-03-04T23:00:00Z",     "2026-03-05T00:30:00Z"),
    ];

    /// Specs that must be refused, with the start of their error sentence.
    const BAD_SPECS: &[(&str, &str)] = &[
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("99999999999 * * * *", "minute 99999999999 is out of"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day of month 0 is out of range 1-31"),
        ("* * 32 * *", "day of month 32 is out of range 1-31"),
        ("* * * 0 *", "month 0 is out of range 1-12"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day of week 8 is out of range 0-7"),
        ("5-2 * * * *", "range 5-2 is backwards"),
        ("* * * * sat-mon", "range sat-mon is backwards"),
        ("*/0 * * * *", "step 0 is out of range 1-59"),
        ("1-5/0 * * * *", "step 0 is out of range 1-59"),
        ("* */24 * * *", "step 24 is out of range 1-23"),
        ("*/x * * * *", "step \"x\" is not a number"),
        ("*/ * * * *", "missing step in \"*/\""),
        ("5/15 * * * *", "\"5/15\" has a step but no range"),
        ("* * * foo *", "unknown name \"foo\" for a month"),
        ("* * * january *", "unknown name \"january\" for a month"),
        ("* * * * funday", "unknown name \"funday\" for a day"),
        ("* * * * mon-foo", "unknown name \"foo\" for a day of week"),
        ("jan * * * *", "minute \"jan\" is not a number"),
        ("1.5 * * * *", "minute \"1.5\" is not a number"),
        ("+1 * * * *", "minute \"+1\" is not a number"),
        ("\u{ff11} * * * *", "minute \"\u{ff11}\" is not a number"),
        ("1, * * * *", "missing minute in \"1,\""),
        (",1 * * * *", "missing minute in \",1\""),
        ("--1 * * * *", "missing minute in \"--1\""),
        ("-1 * * * *", "missing minute in \"-1\""),
        ("* * * * * *", "expected 5 fields, found 6"),
        ("* * * *", "expected 5 fields, found 4"),
        ("", "expected 5 fields, found 0"),
        (" \t ", "expected 5 fields, found 0"),
        ("@every 0s", "@every needs at least 1s"),
        ("@every 500ms", "@every needs at least 1s"),
        ("@every", "@every needs a duration"),
        ("@every -5s", "negative duration"),
        ("@every 1x", "unknown unit in duration"),
        ("@reboot", "unknown schedule \"@reboot\""),
        ("@foo", "unknown schedule \"@foo\""),
        ("@everyday", "unknown schedule \"@everyday\""),
        ("@daily 5", "unknown schedule \"@daily 5\""),
        ("0 0 31 2 *", "it can never fire"),
        ("0 0 30 2 *", "it can never fire"),
        ("0 0 30-31 feb *", "it can never fire"),
        ("0 0 31 4,6,9,11 *", "it can never fire"),
        ("0 0 31 2 */7", "it can never fire"),
    ];

    /// Reads a time from the table, which writes them all in RFC 3339.
    fn millis(text: &str) -> u64 {
        parse_rfc3339(text)
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or_else(|| panic!("bad time {text:?} in the table"))
    }

    #[test]
    fn next_firings_match_the_table() {
        for &(text, after, expected) in NEXT_FIRINGS {
            let spec = parse_spec(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let next = next_firing(&spec, millis(after));
            assert_eq!(
                next,
                Some(millis(expected)),
                "{text:?} after {after}: {expected}"
            );
        }
    }

    #[test]
    fn bad_specs_are_refused_with_a_sentence() {
        for &(text, start) in BAD_SPECS {
            match parse_spec(text) {
                Ok(spec) => panic!("{text:?} should be refused, got {spec:?}"),
                Err(error) => assert!(error.starts_with(start), "{text:?}: {error:?}"),
            }
        }
    }

    #[test]
    fn shortcuts_are_their_cron_fields() {
        let cases = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ];
        for (shortcut, fields) in cases {
            assert_eq!(parse_spec(shortcut), parse_spec(fields), "{shortcut}");
        }
        assert_eq!(
            parse_spec("@every 1m30s"),
            Ok(Spec::Every(Duration::from_secs(90)))
        );
        assert_eq!(
            parse_spec("@every\t1s "),
            Ok(Spec::Every(Duration::from_secs(1)))
        );
    }

    #[test]
    fn firings_past_the_end_of_time_are_none() {
        for text in ["* * * * *", "@every 1s"] {
            let spec = parse_spec(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(next_firing(&spec, u64::MAX), None, "{text:?}");
            assert_eq!(next_firing(&spec, u64::MAX - 999), None, "{text:?}");
        }
    }

    /// Tells whether `cron` fires in `minute` (minutes since the epoch),
    /// straight from cron's definition, minute by minute: the reference.
    fn fires_in(cron: &Cron, minute: u64) -> bool {
        let has = |bits: u64, value: u64| bits >> value & 1 == 1;
        let days = minute / 1440;
        let (_, month, day) = civil_from_days(days as i64);
        let (by_day, by_weekday) = (
            has(cron.days, day.into()),
            has(cron.weekdays, (days + 4) % 7),
        );
        has(cron.minutes, minute % 60)
            && has(cron.hours, minute / 60 % 24)
            && has(cron.months, month.into())
            && if cron.either_day {
                by_day || by_weekday
            } else {
                by_day && by_weekday
            }
    }

    #[test]
    fn next_firings_agree_with_a_minute_by_minute_search() {
        // Each spec is asked after 10,000 consecutive times `stride` minutes
        // apart from `from`, each at 0, 1 and 59,999 ms past the minute.
        let cases = [
            ("*/7 * * * *", "2026-12-31T23:00:00Z", 1),
            ("1-5,10-15/2 9-17 * * *", "2026-03-01T08:00:00Z", 1),
            ("0 0 13 * 5", "2026-02-01T00:00:00Z", 60),
            ("0 0 */2 * 1", "2026-02-01T00:00:00Z", 60),
            ("30 23 31 * *", "2026-01-01T00:00:00Z", 60),
            ("0 0 29 2 *", "2096-01-01T00:00:00Z", 1440),
            ("0 0 29 2 1", "2027-12-01T00:00:00Z", 60),
            ("59 23 * * sat-sun", "2026-03-01T00:00:00Z", 7),
            ("@weekly", "2026-12-20T00:00:00Z", 30),
            ("0 0 1 1 *", "2026-12-31T22:00:00Z", 1),
            ("* 0 1 1 *", "2026-12-31T23:00:00Z", 1),
        ];
        for (text, from, stride) in cases {
            let Ok(Spec::Cron(cron)) = parse_spec(text) else {
                panic!("{text:?} should parse as cron fields");
            };
            let spec = Spec::Cron(cron.clone());
            let mut expected = 0; // a minute since the epoch
            for i in 0..10_000 {
                for offset in [0, 1, 59_999] {
                    let after = millis(from) + i * stride * 60_000 + offset;
                    if expected * 60_000 <= after {
                        expected = after / 60_000 + 1;
                        while !fires_in(&cron, expected) {
                            expected += 1;
                        }
                    }
                    let next = next_firing(&spec, after);
                    assert_eq!(next, Some(expected * 60_000), "{text:?} after {after} ms");
                }
            }
        }
    }

    #[test]
    fn http_dates_follow_rfc_9110() {
        let cases: &[(u64, &str)] = &[
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_795_636_800, "Wed, 25 Nov 2026 20:00:00 GMT"),
        ];
        for &(secs, expected) in cases {
            let mut out = Vec::new();
            write_http_date(&mut out, secs);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn ids_round_trip_and_sort_like_their_numbers() {
        let ids = [
            1u64,
            63,
            64,
            1_000_000,
            1_796_000_000_000_000,
            (1 << 54) - 1,
        ];
        let texts: Vec<String> = ids
            .iter()
            .map(|&id| {
                let mut out = Vec::new();
                write_id(&mut out, id);
                String::from_utf8(out).unwrap()
            })
            .collect();
        for (id, text) in ids.iter().zip(&texts) {
            assert_eq!(text.len(), ID_LEN);
            assert_eq!(parse_id(text.as_bytes()), Some(*id), "{text}");
        }
        assert!(texts.windows(2).all(|w| w[0] < w[1]), "{texts:?}");
        for bad in [
            "",
            "abc",
            "123456789a",
            "12345678!",
            "12345678.",
            "%2e%2e%2e",
        ] {
            assert_eq!(parse_id(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn text_keeps_short_strings_inline() {
        for s in [
            "",
            "t",
            "60s",
            "exactly-twenty-two-ch",
            "twenty-three characters",
            "ünïcödé",
        ] {
            let text = Text::new(s);
            assert_eq!(text.as_str(), s);
            assert_eq!(
                matches!(text, Text::Inline(..)),
                s.len() <= INLINE_TEXT,
                "{s}"
            );
        }
        assert_eq!(std::mem::size_of::<Text>(), 24);
        assert_eq!(std::mem::size_of::<Option<Text>>(), 24);
    }

    #[test]
    fn handler_text_stays_on_one_log_line() {
        let cases = [
            ("exit status 3", "exit status 3"),
            (
                "tar: x: Cannot open\n\ntar: Error\n",
                "tar: x: Cannot open\\n\\ntar: Error\\n",
            ),
            (
                "a\r\nb\tc\u{1b}[31md\u{7f}",
                "a\\r\\nb\\tc\\u{1b}[31md\\u{7f}",
            ),
            ("x\u{2028}y\u{85}z", "x\\u{2028}y\\u{85}z"),
            ("ünïcödé \"quoted\" \\", "ünïcödé \"quoted\" \\"),
        ];
        for (text, line) in cases {
            assert_eq!(OneLine(text).to_string(), line, "{text:?}");
        }
    }

    /// Program output, what its `result` keeps, and the progress reported.
    const STDOUTS: &[(&str, &str, &[&str])] = &[
        ("", "", &[]),
        ("done\n", "done\n", &[]),
        ("::progress::1\n", "", &["1"]),
        (
            "a\n::progress::{\"done\": 1, \"of\": 3}\nb\n::progress::{\"done\": 2, \"of\": 3}\n{\"ok\": true}\n",
            "a\nb\n{\"ok\": true}\n",
            &["{\"done\": 1, \"of\": 3}", "{\"done\": 2, \"of\": 3}"],
        ),
        // Not JSON: a string. Surrounding whitespace and a CR are dropped.
        ("::progress:: half way \r\n", "", &["\"half way\""]),
        // Only a line that starts with the prefix is progress.
        (
            "x ::progress::1\n::progress:1\n:::progress::2\n",
            "x ::progress::1\n::progress:1\n:::progress::2\n",
            &[],
        ),
        ("::progress", "::progress", &[]),
        // A last line without its newline is a line.
        ("::progress::7", "", &["7"]),
        ("::progress::\n", "", &["\"\""]),
    ];

    #[test]
    fn stdout_is_split_into_progress_and_result_however_it_is_read() {
        for &(output, tail, progress) in STDOUTS {
            for size in 1..=output.len().max(1) {
                let mut lines = Stdout::default();
                let mut reported = Vec::new();
                let mut report = |v: &[u8]| reported.push(progress_json(v).into_string());
                for chunk in output.as_bytes().chunks(size) {
                    lines.feed(chunk, &mut report);
                }
                let got = lines.finish(&mut report);
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    tail,
                    "{output:?} in reads of {size}"
                );
                assert_eq!(reported, progress, "{output:?} in reads of {size}");
            }
        }
        // A progress line past 1 KiB is ignored, and holds no more than
        // that while it lasts; any other line holds nothing.
        let mut lines = Stdout::default();
        let mut reported = 0;
        lines.feed(b"::progress::", &mut |_| reported += 1);
        for _ in 0..10 * 1024 {
            lines.feed(&[b'x'; 1024], &mut |_| reported += 1);
            let held = match &lines.line {
                Line::Progress(value) => value.as_ref().map_or(0, Vec::len),
                other => panic!("{other:?}"),
            };
            assert!(held <= MAX_PROGRESS);
        }
        lines.feed(b"\n", &mut |_| reported += 1);
        let mut other = Stdout::default();
        for _ in 0..10 * 1024 {
            other.feed(&[b'y'; 1024], &mut |_| reported += 1);
            assert!(other.tail.len() <= OUTPUT_TAIL);
        }
        assert_eq!(reported, 0);
        assert!(lines.finish(&mut |_| {}).is_empty());
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn positions_agree_with_a_binary_search() {
        let mut rng = Rng(0x1234_5678);
        for round in 0..300 {
            let (mut store, _queues, _due) = store_for(&[]);
            let mut id = 1_796_000_000_000_000u64;
            for _ in 0..rng.below(300) {
                // Gaps of every size: bursts, pauses, and one huge jump.
                id += match rng.below(10) {
                    0 => 1_000_000_000 * (1 + rng.below(1000) as u64),
                    1..=3 => 1,
                    _ => 1 + rng.below(5000) as u64,
                };
                store.insert(Task::from_new(id, new_task("t", 0), State::Queued));
            }
            let ids: Vec<u64> = store.tasks.iter().map(|t| t.id).collect();
            let mut probes: Vec<u64> = ids.clone();
            probes.extend([0, 1, u64::MAX, ids.first().map_or(5, |i| i - 1), id + 1]);
            probes.extend(ids.iter().map(|i| i + 1));
            for probe in probes {
                assert_eq!(
                    store.position(probe),
                    ids.binary_search(&probe),
                    "round {round}, {probe}"
                );
            }
        }
    }

    /// A configuration from command-line arguments, as the server gets it.
    fn config(args: &[&str]) -> Config {
        match parse_command(args.iter().map(OsString::from), |_| None) {
            Ok(Command::Run(config)) => *config,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// A store for `args` with its queues, and the scheduler's receiver.
    fn store_for(args: &[&str]) -> (Store, Vec<Queue>, Receiver<(u64, u64)>) {
        let config = config(args);
        let (due_tx, due_rx) = async_channel::unbounded();
        let queues = config.queues.iter().map(Queue::new).collect();
        (Store::new(&config, due_tx), queues, due_rx)
    }

    /// A new `sleep` task of no time in `default`, to start at `run_at`.
    fn new_task(label: &str, run_at: u64) -> NewTask {
        NewTask {
            label: Some(Text::new(label)),
            work_duration: Some(Text::new("0s")),
            kind: None,
            payload: None,
            timeout: None,
            max_attempts: 2,
            key: None,
            queue: 0,
            run_at,
            schedule: None,
        }
    }

    /// The store table: each step says what happens to a task (or to the
    /// store), what the store answers, and the counts afterwards in the
    /// order of [`STATES`]: scheduled, queued, running, succeeded, failed,
    /// cancelled. The queue has two places, two finished tasks are kept,
    /// one delayed task may wait, and every task may have two attempts.
    /// "take" is a worker receiving from the channel; "due" is the
    /// scheduler finding the task's time has come.
    const STORE_STEPS: &[(&str, &str, [usize; 6])] = &[
        ("admit a", "created queued", [0, 1, 0, 0, 0, 0]),
        ("admit b key=k", "created queued", [0, 2, 0, 0, 0, 0]),
        ("admit c", "full", [0, 2, 0, 0, 0, 0]),
        ("admit d key=k", "repeat b", [0, 2, 0, 0, 0, 0]),
        ("admit d key=k other-body", "key reused", [0, 2, 0, 0, 0, 0]),
        ("take a", "ok", [0, 2, 0, 0, 0, 0]),
        ("begin a", "attempt 1", [0, 1, 1, 0, 0, 0]),
        ("admit c", "created queued", [0, 2, 1, 0, 0, 0]),
        // A failed attempt with one left: queued again, its retry due.
        ("fail a", "retry", [0, 3, 0, 0, 0, 0]),
        ("take b", "ok", [0, 3, 0, 0, 0, 0]),
        ("cancel b", "cancelled", [0, 2, 0, 0, 0, 1]),
        // The worker that took a cancelled task skips it.
        ("begin b", "skipped", [0, 2, 0, 0, 0, 1]),
        ("due a", "ok", [0, 2, 0, 0, 0, 1]),
        ("depth 2", "ok", [0, 2, 0, 0, 0, 1]),
        ("take c", "ok", [0, 2, 0, 0, 0, 1]),
        ("take a", "ok", [0, 2, 0, 0, 0, 1]),
        ("begin a", "attempt 2", [0, 1, 1, 0, 0, 1]),
        ("cancel a", "cancelled", [0, 1, 0, 0, 0, 2]),
        // The worker learns of the cancel when its work ends.
        ("succeed a", "ignored", [0, 1, 0, 0, 0, 2]),
        ("cancel a", "already cancelled", [0, 1, 0, 0, 0, 2]),
        ("begin c", "attempt 1", [0, 0, 1, 0, 0, 2]),
        // A third finished task evicts the first to finish, b, and frees
        // its key; b's id now answers 410.
        ("succeed c", "done", [0, 0, 0, 1, 0, 1]),
        ("lookup b", "gone", [0, 0, 0, 1, 0, 1]),
        ("admit e key=k", "created queued", [0, 1, 0, 1, 0, 1]),
        ("take e", "ok", [0, 1, 0, 1, 0, 1]),
        ("begin e", "attempt 1", [0, 0, 1, 1, 0, 1]),
        ("fail e", "retry", [0, 1, 0, 1, 0, 1]),
        ("due e", "ok", [0, 1, 0, 1, 0, 1]),
        ("take e", "ok", [0, 1, 0, 1, 0, 1]),
        ("begin e", "attempt 2", [0, 0, 1, 1, 0, 1]),
        ("fail e", "failed", [0, 0, 0, 1, 1, 0]),
        ("lookup a", "gone", [0, 0, 0, 1, 1, 0]),
        ("lookup e", "found", [0, 0, 0, 1, 1, 0]),
        ("lookup z", "unknown", [0, 0, 0, 1, 1, 0]),
        // Delayed tasks take no place in the queue, but only one may wait.
        ("admit s later", "created scheduled", [1, 0, 0, 1, 1, 0]),
        ("admit t later", "too many scheduled", [1, 0, 0, 1, 1, 0]),
        ("cancel s", "cancelled", [0, 0, 0, 0, 1, 1]),
        ("due s", "ok", [0, 0, 0, 0, 1, 1]),
        ("admit u later", "created scheduled", [1, 0, 0, 0, 1, 1]),
        ("admit v", "created queued", [1, 1, 0, 0, 1, 1]),
        ("admit w", "created queued", [1, 2, 0, 0, 1, 1]),
        // Due while the queue is full, u waits for room, and before any
        // new submission.
        ("due u", "ok", [0, 3, 0, 0, 1, 1]),
        ("depth 3", "ok", [0, 3, 0, 0, 1, 1]),
        ("admit x", "full", [0, 3, 0, 0, 1, 1]),
        // A paused queue starts nothing: a worker that took a task keeps
        // it, still counted, so no new task fits.
        ("pause", "ok", [0, 3, 0, 0, 1, 1]),
        ("take v", "ok", [0, 3, 0, 0, 1, 1]),
        ("begin v", "paused", [0, 3, 0, 0, 1, 1]),
        ("depth 3", "ok", [0, 3, 0, 0, 1, 1]),
        ("admit x", "full", [0, 3, 0, 0, 1, 1]),
        // On the resume v, first in line, begins first; u, waiting for
        // room, enters behind w.
        ("resume", "ok", [0, 3, 0, 0, 1, 1]),
        ("begin v", "attempt 1", [0, 2, 1, 0, 1, 1]),
        ("take w", "ok", [0, 2, 1, 0, 1, 1]),
        ("take u", "ok", [0, 2, 1, 0, 1, 1]),
        ("depth 2", "ok", [0, 2, 1, 0, 1, 1]),
        ("drain", "ok", [0, 2, 1, 0, 1, 1]),
        ("admit f", "shutting down", [0, 2, 1, 0, 1, 1]),
    ];

    #[test]
    fn the_store_moves_tasks_through_their_states() {
        let args = [
            "--buffer",
            "2",
            "--keep-finished",
            "2",
            "--max-scheduled",
            "1",
        ];
        let (mut store, queues, due_rx) = store_for(&args);
        let mut ids: HashMap<String, u64> = HashMap::new();
        for &(step, expected, counts) in STORE_STEPS {
            let words: Vec<&str> = step.split(' ').collect();
            let label = words.get(1).copied().unwrap_or_default();
            let id = ids.get(label).copied().unwrap_or(1);
            let answer = match words[0] {
                "admit" => {
                    let later = words.get(2) == Some(&"later");
                    let mut new = new_task(label, if later { now_millis() + 3_600_000 } else { 0 });
                    // The fourth word, if any, stands for the body.
                    new.key = words.get(2).and_then(|k| k.strip_prefix("key=")).map(|k| {
                        let body = words.get(3).copied().unwrap_or("body");
                        parse_key(k.as_bytes(), "/tasks", body.as_bytes()).unwrap()
                    });
                    match store.admit(new, &queues) {
                        Admission::Created(id, state, _) => {
                            ids.insert(label.to_string(), id);
                            format!("created {}", state.name())
                        }
                        Admission::Repeat(id) => {
                            let first = ids.iter().find(|(_, v)| **v == id).unwrap();
                            format!("repeat {}", first.0)
                        }
                        Admission::KeyReused => "key reused".to_string(),
                        Admission::Full => "full".to_string(),
                        Admission::TooManyScheduled => "too many scheduled".to_string(),
                        Admission::ShuttingDown => "shutting down".to_string(),
                    }
                }
                "take" => {
                    assert_eq!(queues[0].jobs_rx.try_recv(), Ok(id), "{step}");
                    "ok".to_string()
                }
                "due" => {
                    let (_, due) = due_rx.try_recv().unwrap();
                    assert_eq!(due, id, "{step}");
                    store.make_due(id, &queues);
                    "ok".to_string()
                }
                "depth" => {
                    let depth = store.queues[0].depth;
                    assert_eq!(depth.to_string(), label, "{step}");
                    "ok".to_string()
                }
                "begin" => match store.begin_attempt(id, 0, &queues) {
                    Begin::Work(work) => format!("attempt {}", work.attempt),
                    Begin::Skip => "skipped".to_string(),
                    Begin::Paused(_) => "paused".to_string(),
                },
                "fail" | "succeed" => {
                    let outcome = match words[0] {
                        "fail" => Outcome::Failed("exit status 1".to_string()),
                        _ => Outcome::Succeeded(Some("{}".into())),
                    };
                    let retry = store.end_attempt(id, 0, outcome);
                    match (retry, store.get(id).map(|t| t.state)) {
                        (Some(_), Some(State::Queued)) => "retry",
                        (None, Some(State::Failed)) => "failed",
                        (None, Some(State::Cancelled)) => "ignored",
                        (None, _) => "done",
                        other => panic!("{step}: {other:?}"),
                    }
                    .to_string()
                }
                "cancel" => match store.cancel(id) {
                    Ok(_) => "cancelled".to_string(),
                    Err(Lookup::Found(i)) => format!("already {}", store.tasks[i].state.name()),
                    Err(other) => format!("{other:?}"),
                },
                "lookup" => match store.lookup(id) {
                    Lookup::Found(_) => "found",
                    Lookup::Gone => "gone",
                    Lookup::Unknown => "unknown",
                }
                .to_string(),
                "pause" | "resume" => {
                    store.set_paused(0, words[0] == "pause", &queues);
                    "ok".to_string()
                }
                "drain" => {
                    store.draining = true;
                    "ok".to_string()
                }
                other => panic!("unknown step {other}"),
            };
            assert_eq!(answer, expected, "{step}");
            assert_eq!(store.counts, counts, "counts after {step}");
            // Tombstones are swept from the front at once.
            assert!(
                store
                    .tasks
                    .front()
                    .is_none_or(|t| t.state != State::Evicted)
            );
            assert_eq!(
                store.retained(),
                counts.iter().sum::<usize>(),
                "after {step}"
            );
        }
        assert_eq!(store.counters.accepted, 8);
        assert_eq!(store.counters.finished, [0, 0, 0, 1, 1, 3]);
        assert_eq!(store.busy(), 1);
        // The keys of evicted tasks are gone with them; e keeps its own.
        assert_eq!(store.keys.len(), 1);
    }

    #[test]
    fn tombstones_are_swept_once_they_are_half_the_records() {
        let (mut store, queues, _due) = store_for(&["--buffer", "1000", "--keep-finished", "1"]);
        let admit = |store: &mut Store| {
            let Admission::Created(id, _, _) = store.admit(new_task("t", 0), &queues) else {
                panic!("admitted")
            };
            let _ = queues[0].jobs_rx.try_recv();
            store.begin_attempt(id, 0, &queues);
            id
        };
        // The oldest task runs for ever, so tombstones cannot leave from
        // the front; finished tasks behind it are evicted one by one.
        admit(&mut store);
        for _ in 0..500 {
            let id = admit(&mut store);
            store.end_attempt(id, 0, Outcome::Succeeded(None));
            assert!(store.tasks.len() <= 2 * store.retained() + TOMBSTONE_SWEEP);
        }
        assert_eq!(store.retained(), 2);
        assert!(store.tombstones <= TOMBSTONE_SWEEP, "{}", store.tombstones);
    }

    #[test]
    fn percent_decoding() {
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("abc", false, Some("abc")),
            ("a%20b", false, Some("a b")),
            ("a+b", false, Some("a+b")),
            ("a+b", true, Some("a b")),
            ("%41%42", true, Some("AB")),
            ("%2F", false, Some("/")),
            ("%", false, None),
            ("%4", false, None),
            ("%zz", false, None),
            ("%+1", true, None),
        ];
        for &(input, plus, expected) in cases {
            let got = percent_decode(input.as_bytes(), plus)
                .map(|c| String::from_utf8(c.into_owned()).unwrap());
            assert_eq!(got.as_deref(), expected, "{input:?}");
        }
    }

    #[test]
    fn next_links_keep_the_filters_and_parse_back() {
        let id = 1_796_000_000_000_000u64;
        let config = config(&["--queue", "slow=1"]);
        let cases: &[(&str, &str)] = &[
            ("", "/tasks?limit=100&before="),
            ("limit=5000", "/tasks?limit=1000&before="),
            (
                "state=queued&task_id=a+b%2Fc%26d%3D%C3%A9&limit=5",
                "/tasks?state=queued&task_id=a%20b%2Fc%26d%3D%C3%A9&limit=5&before=",
            ),
            (
                "queue=slow&state=scheduled",
                "/tasks?state=scheduled&queue=slow&limit=100&before=",
            ),
        ];
        for &(query, link) in cases {
            let parsed = ListQuery::parse(Some(query.as_bytes()), &config).unwrap();
            let mut out = Vec::new();
            parsed.write_next(&mut out, TaskId { node: "", num: id }, &config);
            let mut id_text = Vec::new();
            write_id(&mut id_text, id);
            let expected = format!("\"{link}{}\"", String::from_utf8(id_text).unwrap());
            assert_eq!(String::from_utf8(out.clone()).unwrap(), expected, "{query}");
            // The link's query string reads back as the same filters.
            let text = String::from_utf8(out).unwrap();
            let again = text.trim_matches('"').strip_prefix("/tasks?").unwrap();
            let reparsed = ListQuery::parse(Some(again.as_bytes()), &config).unwrap();
            assert_eq!(reparsed.before.map(|b| b.num), Some(id), "{query}");
            assert_eq!(
                ListQuery {
                    before: None,
                    ..reparsed
                },
                parsed,
                "{query}"
            );
        }
        for bad in [
            "before=abc",
            "before=",
            "before=%zz",
            "limit=0",
            "state=nope",
            "queue=fast",
        ] {
            let parsed = ListQuery::parse(Some(bad.as_bytes()), &config);
            assert!(parsed.is_err(), "{bad}");
        }
    }

    #[test]
    fn a_feed_rings_for_what_waits_and_lags_past_its_limits() {
        let feed = Feed::new();
        let mut taken = Backlog::default();
        // Changes ring the bell, and one take has all that waited.
        feed.push(Some(b"one\n\n"));
        feed.push(None);
        feed.push(Some(b"two\n\n"));
        assert_eq!(feed.rung.len(), 1);
        let _ = feed.rung.try_recv();
        feed.take(&mut taken);
        assert_eq!(
            (&taken.events[..], taken.count, taken.changed, taken.lagged),
            (&b"one\n\ntwo\n\n"[..], 2, true, false)
        );
        feed.take(&mut taken);
        assert_eq!((taken.count, taken.changed), (0, false));
        // After a take, the next change rings again.
        feed.push(None);
        assert_eq!(feed.rung.len(), 1);
        let _ = feed.rung.try_recv();
        feed.take(&mut taken);
        // It rings again when enough wait to be written together.
        feed.push(Some(b"e\n\n"));
        let _ = feed.rung.try_recv();
        for _ in 1..GATHER_EVENTS {
            assert!(!feed.gathered() && feed.rung.is_empty());
            feed.push(Some(b"e\n\n"));
        }
        assert!(feed.gathered() && feed.rung.len() == 1);
        let _ = feed.rung.try_recv();
        feed.take(&mut taken);
        assert_eq!(taken.count, GATHER_EVENTS);
        // Or when enough bytes do.
        let half = vec![b'x'; GATHER_BYTES / 2];
        feed.push(Some(&half));
        let _ = feed.rung.try_recv();
        assert!(!feed.gathered());
        feed.push(Some(&half));
        assert!(feed.gathered() && feed.rung.len() == 1);
        let _ = feed.rung.try_recv();
        feed.take(&mut taken);
        assert_eq!(taken.count, 2);

        // One event more than the backlog holds, by count and by bytes. The
        // bell rang when enough had gathered; the take finds the lag.
        let small = [b'x'; 10];
        let large = vec![b'x'; MAX_BACKLOG_BYTES / 4 + 1];
        for (event, fit) in [(&small[..], MAX_BACKLOG_EVENTS), (&large[..], 3)] {
            for _ in 0..fit {
                feed.push(Some(event));
            }
            feed.take(&mut taken);
            assert_eq!((taken.count, taken.lagged), (fit, false));
            for _ in 0..=fit {
                feed.push(Some(event));
            }
            assert!(feed.gathered() && feed.rung.len() == 1);
            let _ = feed.rung.try_recv();
            feed.take(&mut taken);
            assert_eq!(
                (taken.count, taken.events.len(), taken.lagged),
                (0, 0, true)
            );
        }
        // A buffer a burst made large is not kept for the next events.
        for _ in 0..3 {
            feed.push(Some(&large));
        }
        feed.take(&mut taken);
        feed.take(&mut taken);
        assert!(feed.backlog().events.capacity() <= KEPT_EVENT_BUFFER);
    }

    #[test]
    fn bearer_tokens_compare_whole() {
        let cases: &[(Option<&str>, bool)] = &[
            (Some("Bearer s3cret"), true),
            (Some("bearer s3cret"), true),
            (Some("BEARER   s3cret"), true),
            (Some("Bearer s3cre"), false),
            (Some("Bearer s3cret2"), false),
            (Some("Bearer "), false),
            (Some("Basic s3cret"), false),
            (Some("s3cret"), false),
            (None, false),
        ];
        for &(given, ok) in cases {
            assert_eq!(
                bearer_matches(given.map(str::as_bytes), "s3cret"),
                ok,
                "{given:?}"
            );
        }
    }

    /// What a parsed request says, owned, so results can be compared.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        method: Method,
        path: Vec<u8>,
        query: Option<Vec<u8>>,
        http10: bool,
        keep_alive: bool,
        expect_continue: bool,
        authorization: Option<Vec<u8>>,
        body: Vec<u8>,
    }

    /// How a stream of bytes parses.
    #[derive(Debug, PartialEq)]
    struct Verdict {
        /// Each request read, or the error that ended the stream.
        requests: Vec<Result<Parsed, HttpError>>,
        /// Bytes left over when the input ended inside a request.
        incomplete: bool,
    }

    /// Feeds `input` to the codec in pieces, as a connection reads it:
    /// `take_head`, `parse_head`, then a body by length or by the chunked
    /// decoder. `pieces` gives the size of each read (repeating the last).
    fn parse_stream(input: &[u8], pieces: &[usize], max_body: usize) -> Verdict {
        let mut buf = Vec::new();
        let (mut at, mut reads) = (0, 0);
        // Appends the next piece of input; `false` once it is all read.
        let mut read = |buf: &mut Vec<u8>, at: &mut usize| {
            if *at == input.len() {
                return false;
            }
            let n = pieces[reads.min(pieces.len() - 1)]
                .max(1)
                .min(input.len() - *at);
            reads += 1;
            buf.extend_from_slice(&input[*at..*at + n]);
            *at += n;
            true
        };
        let mut requests = Vec::new();
        let end = |requests, incomplete| Verdict {
            requests,
            incomplete,
        };
        loop {
            let mut scanned = 0;
            let head_len = loop {
                match take_head(&mut buf, &mut scanned) {
                    Err(e) => return end(push(requests, Err(e)), false),
                    Ok(Some(n)) => break n,
                    Ok(None) if read(&mut buf, &mut at) => {}
                    Ok(None) => return end(requests, !buf.is_empty()),
                }
            };
            let head = match parse_head(&buf[..head_len]) {
                Ok(head) => head,
                Err(e) => return end(push(requests, Err(e)), false),
            };
            let (body, consumed) = match head.framing {
                Framing::Length(n) if n > max_body as u64 => {
                    return end(push(requests, Err(HttpError::BodyTooLarge)), false);
                }
                Framing::Length(n) => {
                    let n = n as usize;
                    while buf.len() < head_len + n {
                        if !read(&mut buf, &mut at) {
                            return end(requests, true);
                        }
                    }
                    (buf[head_len..head_len + n].to_vec(), head_len + n)
                }
                Framing::Chunked => {
                    let mut decoder = Chunked::default();
                    loop {
                        match decoder.feed(&buf[head_len..], max_body) {
                            Err(e) => return end(push(requests, Err(e)), false),
                            Ok(used) => drop(buf.drain(head_len..head_len + used)),
                        }
                        if decoder.state == ChunkState::Done {
                            break (decoder.body, head_len);
                        }
                        if !read(&mut buf, &mut at) {
                            return end(requests, true);
                        }
                    }
                }
            };
            let bytes = &buf[..head_len];
            requests.push(Ok(Parsed {
                method: head.method,
                path: bytes[head.path.clone()].to_vec(),
                query: head.query.clone().map(|q| bytes[q].to_vec()),
                http10: head.http10,
                keep_alive: head.keep_alive,
                expect_continue: head.expect_continue,
                authorization: head.authorization.clone().map(|a| bytes[a].to_vec()),
                body,
            }));
            buf.drain(..consumed);
            if buf.is_empty() && at == input.len() {
                return end(requests, false);
            }
        }
    }

    /// Appends to a vector and returns it.
    fn push<T>(mut v: Vec<T>, item: T) -> Vec<T> {
        v.push(item);
        v
    }

    /// Well-formed request streams, several requests each.
    const GOOD_STREAMS: &[&str] = &[
        "GET /tasks?state=queued&limit=5 HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nhost: y\r\n\r\n",
        "POST /tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1;q=\"a;b\"\r\nhello\r\n6 ; e\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\nZ: 1\r\n\r\n\
         GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.1\nHost: x\n\nPOST /queue-task HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
        "\r\n\r\nGET / HTTP/1.0\r\n\r\n\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "POST /tasks HTTP/1.1\nHost: x\ntransfer-encoding: Chunked\n\n3\nabc\n0\n\n",
        "GET http://example.com:8000/tasks/abc?wait=1s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n",
        "GET   /tasks \t HTTP/1.1\r\nHost:x\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
    ];

    #[test]
    fn good_streams_parse_as_expected() {
        let v = parse_stream(GOOD_STREAMS[2].as_bytes(), &[usize::MAX], 1 << 20);
        assert!(!v.incomplete);
        let bodies: Vec<_> = v
            .requests
            .iter()
            .map(|r| r.as_ref().unwrap().body.clone())
            .collect();
        assert_eq!(bodies, [b"hello world0123456789".to_vec(), Vec::new()]);
        assert!(!v.requests[1].as_ref().unwrap().keep_alive);

        let v = parse_stream(GOOD_STREAMS[4].as_bytes(), &[usize::MAX], 1 << 20);
        let flags: Vec<_> = v
            .requests
            .iter()
            .map(|r| r.as_ref().map(|p| (p.http10, p.keep_alive)).unwrap())
            .collect();
        assert_eq!(flags, [(true, false), (true, true)]);

        let v = parse_stream(GOOD_STREAMS[6].as_bytes(), &[usize::MAX], 1 << 20);
        let p = v.requests[0].as_ref().unwrap();
        assert_eq!(
            (p.path.as_slice(), p.query.as_deref()),
            (&b"/tasks/abc"[..], Some(&b"wait=1s"[..]))
        );
        assert_eq!(p.authorization.as_deref(), Some(&b"Bearer t"[..]));

        for stream in GOOD_STREAMS {
            let v = parse_stream(stream.as_bytes(), &[usize::MAX], 1 << 20);
            assert!(
                !v.incomplete && v.requests.iter().all(Result::is_ok),
                "{stream:?}: {v:?}"
            );
        }
    }

    #[test]
    fn a_stream_split_anywhere_parses_the_same() {
        for stream in GOOD_STREAMS {
            let bytes = stream.as_bytes();
            let whole = parse_stream(bytes, &[usize::MAX], 1 << 20);
            for split in 1..bytes.len() {
                let pieces = parse_stream(bytes, &[split, usize::MAX], 1 << 20);
                assert_eq!(pieces, whole, "{stream:?} split at {split}");
            }
            assert_eq!(
                parse_stream(bytes, &[1], 1 << 20),
                whole,
                "{stream:?} byte by byte"
            );
            // Cut short anywhere, a stream is never an error: it is
            // incomplete, or it ends exactly after one of its requests, and
            // then the rest of it parses as the requests that follow.
            for cut in 1..bytes.len() {
                let v = parse_stream(&bytes[..cut], &[7], 1 << 20);
                let n = v.requests.len();
                assert_eq!(v.requests, whole.requests[..n], "{stream:?} cut at {cut}");
                if !v.incomplete {
                    let rest = parse_stream(&bytes[cut..], &[7], 1 << 20);
                    assert_eq!(
                        rest.requests,
                        whole.requests[n..],
                        "{stream:?} cut at {cut}"
                    );
                }
            }
        }
    }

    /// Heads that must be refused, and how.
    const BAD_HEADS: &[(&str, u16)] = &[
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        ("GET / HTTP/3\r\nHost: a\r\n\r\n", 505),
        ("GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400),
        ("GET /\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
        ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET ftp://x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET http:///tasks HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400),
        ("GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n\r\n",
            400,
        ),
    ];

    #[test]
    fn bad_heads_are_refused_with_the_right_status() {
        for &(head, status) in BAD_HEADS {
            let v = parse_stream(head.as_bytes(), &[usize::MAX], 1 << 20);
            let error = v.requests.last().and_then(|r| r.as_ref().err());
            assert_eq!(error.map(|e| e.status()), Some(status), "{head:?}: {v:?}");
        }
    }

    #[test]
    fn limits_on_the_head_and_headers() {
        let many = "X: y\r\n".repeat(MAX_HEADERS);
        let ok = format!("GET / HTTP/1.1\r\n{many}\r\n").replacen("X: y", "Host: a", 1);
        assert!(parse_head(ok.as_bytes()).is_ok());
        let too_many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse_head(too_many.as_bytes()),
            Err(HttpError::HeadTooLarge)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let v = parse_stream(big.as_bytes(), &[1000], 1 << 20);
        assert_eq!(v.requests, [Err(HttpError::HeadTooLarge)]);
        // A head that never ends stops at the limit, not at the end of input.
        let endless = "GET / HTTP/1.1\r\n".to_string() + &"X: y\r\n".repeat(5000);
        let v = parse_stream(endless.as_bytes(), &[100], 1 << 20);
        assert_eq!(v.requests, [Err(HttpError::HeadTooLarge)]);
    }

    #[test]
    fn header_semantics() {
        let parse = |head: &str| parse_head(head.as_bytes()).unwrap();
        let h = parse("GET / HTTP/1.1\r\nHOST: a\r\nconnection: Keep-Alive, CLOSE\r\n\r\n");
        assert!(!h.keep_alive);
        let h = parse(
            "POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 0042\r\nEXPECT: 100-Continue\r\n\r\n",
        );
        assert_eq!((h.framing, h.expect_continue), (Framing::Length(42), true));
        let h = parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.expect_continue, "HTTP/1.0 cannot expect 100-continue");
        let h = parse("GET * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.path, 4..5);
        let h = parse("GET HTTP://Example.COM HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(h.path.is_empty() && h.query.is_none());
    }

    /// Chunked bodies and how they decode (as `Ok(body)`) or fail.
    const CHUNKED: &[(&str, Result<&str, u16>)] = &[
        ("0\r\n\r\n", Ok("")),
        ("3\r\nabc\r\n0\r\n\r\n", Ok("abc")),
        ("3\nabc\n0\n\n", Ok("abc")),
        ("3;a=b\r\nabc\r\n0;last\r\nT: 1\r\n\r\n", Ok("abc")),
        ("3 ;a\r\nabc\r\n0\r\n\r\n", Ok("abc")),
        ("00003\r\nabc\r\n0\r\n\r\n", Ok("abc")),
        ("a\r\n0123456789\r\n0\r\n\r\n", Ok("0123456789")),
        ("\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("zz\r\n", Err(400)),
        (" 3\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("3 4\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("-3\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("3\r\nabcd\r\n0\r\n\r\n", Err(400)),
        ("3\rabc\r\n0\r\n\r\n", Err(400)),
        ("3\r\nabc\r\r\n0\r\n\r\n", Err(400)),
        ("10000000000000000\r\n", Err(400)),
        ("ffffffffffffffff\r\n", Err(413)),
        ("41\r\n", Err(413)),
        ("3;\x01\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("0\r\nT: \x01\r\n\r\n", Err(400)),
        // Trailer lines follow the header-line rules exactly.
        ("0\r\nno-colon\r\n\r\n", Err(400)),
        ("0\r\nBad Name: x\r\n\r\n", Err(400)),
        ("0\r\nName : y\r\n\r\n", Err(400)),
        ("0\r\n: empty-name\r\n\r\n", Err(400)),
        ("0\r\n folded: x\r\n\r\n", Err(400)),
        ("0\r\nPOST /tasks HTTP/1.1\r\n\r\n", Err(400)),
        ("0\r\nA: 1\r\n\tcontinued\r\n\r\n", Err(400)),
        ("0\r\nX-Ok: a, b\r\nY:\r\n\r\n", Ok("")),
    ];

    #[test]
    fn chunked_bodies_decode_or_fail_as_rfc_9112_says() {
        for &(body, expected) in CHUNKED {
            let stream =
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
            for pieces in [&[usize::MAX][..], &[1], &[3]] {
                let v = parse_stream(stream.as_bytes(), pieces, 64);
                let got = match &v.requests[..] {
                    [Ok(p)] => Ok(String::from_utf8(p.body.clone()).unwrap()),
                    [Err(e)] => Err(e.status()),
                    other => panic!("{body:?}: {other:?}"),
                };
                assert_eq!(
                    got.as_deref().map_err(|e| *e),
                    expected,
                    "{body:?} in pieces {pieces:?}"
                );
            }
        }
        // Trailers count against the head's limits.
        for (trailers, status) in [
            ("T: 1\r\n".repeat(MAX_HEADERS), None),
            ("T: 1\r\n".repeat(MAX_HEADERS + 1), Some(431)),
            (format!("T: {}\r\n", "x".repeat(MAX_HEAD)), Some(431)),
        ] {
            let body = format!("0\r\n{trailers}\r\n");
            let result = Chunked::default().feed(body.as_bytes(), 64);
            assert_eq!(
                result.err().map(HttpError::status),
                status,
                "{}",
                &body[..20]
            );
        }
        let line = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
        let mut decoder = Chunked::default();
        assert!(matches!(
            decoder.feed(line.as_bytes(), 64),
            Err(HttpError::BadRequest(_))
        ));
    }

    /// Makes journal lines, each record with its checksum.
    fn journal_lines(records: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            out.extend_from_slice(
                format!("{:08x} {record}\n", crc32(record.as_bytes())).as_bytes(),
            );
        }
        out
    }

    /// A task with every member set, as a worker leaves it after a failed
    /// attempt with a retry due.
    fn task_with_everything() -> Task {
        let mut task = Task::from_new(
            1_796_000_000_000_000,
            NewTask {
                label: Some(Text::new("a label longer than twenty-two bytes")),
                work_duration: Some(Text::new("1m30s")),
                kind: Some(Arc::from("thumb")),
                payload: Some(r#"{"dir": "/srv", "n": [1, 2]}"#.into()),
                timeout: Some(Text::new("10s")),
                max_attempts: 3,
                key: Some(IdempotencyKey {
                    text: "key-1".into(),
                    fingerprint: 42,
                }),
                queue: 1,
                run_at: 1_796_000_000_050,
                schedule: Some(0),
            },
            State::Queued,
        );
        task.attempt = 2;
        task.started_at = 1_796_000_000_100;
        let extra = task.extra_mut();
        extra.retry_at = 1_796_000_004_100;
        extra.error = Some("exit status 3\n\"quoted\"".into());
        extra.progress = Some(r#"{"done": 2, "of": 3}"#.into());
        task
    }

    #[test]
    fn records_round_trip_through_journal_lines() {
        let config = config(&[
            "--queue",
            "thumbs=1",
            "--schedule",
            "nightly=@daily {\"work_duration\": \"1s\"}",
        ]);
        let names = |task: &Task| Names {
            id: TaskId {
                node: "b_",
                num: task.id,
            },
            queue: "thumbs",
            schedule: Some("nightly"),
        };
        let task = task_with_everything();
        let mut scheduled = task_with_everything();
        (scheduled.id, scheduled.state, scheduled.attempt) =
            (scheduled.id + 1, State::Scheduled, 0);
        let paused = QueueState {
            paused: true,
            ..QueueState::new(&config.queues[1])
        };
        let mut lines = Vec::new();
        write_record(&mut lines, &task.new_record(names(&task)));
        write_record(&mut lines, &task.state_record());
        write_record(&mut lines, &scheduled.new_record(names(&scheduled)));
        write_record(&mut lines, &paused.pause_record());
        let replayed = replay_lines(&lines[..], &config).unwrap();
        let [back, back_scheduled] = &replayed.tasks[..] else {
            panic!("{:?}", replayed.tasks)
        };
        assert_eq!(
            (back_scheduled.state, back_scheduled.queue),
            (State::Scheduled, 1)
        );
        assert_eq!(replayed.paused, [("thumbs".into(), true)]);
        assert_eq!(replayed.nodes, [(task.id, "b_")]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        task.write_json(&mut a, names(&task));
        back.write_json(&mut b, names(back));
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        assert_eq!(
            back.extra
                .as_ref()
                .and_then(|e| e.key.as_ref())
                .map(|k| (&*k.text, k.fingerprint)),
            Some(("key-1", 42))
        );
        assert_eq!(replayed.good_len, lines.len() as u64);
        // A running task is written as the journal sees it: queued, its
        // attempt not counted.
        let mut running = task_with_everything();
        running.state = State::Running;
        let record = running.state_record();
        assert_eq!(
            (record.state.as_deref(), record.attempt),
            (Some("queued"), Some(1))
        );
    }

    /// A server's shared state with a journal in a fresh directory, as
    /// `launch` builds it, and what its writer thread would get.
    fn journaled(test: &str) -> (Arc<Shared>, WriterParts, PathBuf) {
        let dir = std::env::temp_dir().join(format!("bgtasks-unit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = config(&[]);
        let data = open_data_dir(&dir, &config).unwrap();
        let (shared, _retries, writer) = build_shared(config, Some(data));
        (shared, writer.unwrap(), dir)
    }

    #[test]
    fn durability_steps_1_to_3_hold() {
        let (shared, (rx, mut writer, _lock), dir) = journaled("steps");
        let progress = shared.journal.clone().unwrap();
        // Step 1: records leave the store in the order of the changes,
        // numbered, and `appended` says how far the numbering got.
        let Admission::Created(id, _, Some(saved)) =
            shared.store().admit(new_task("p", 0), &shared.queues)
        else {
            panic!("admitted")
        };
        assert_eq!(shared.store().cancel(id).ok(), Some(0));
        let mut batch: Vec<JournalEntry> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((batch[0].created, batch[1].created), (Some(id), None));
        assert_eq!(progress.appended.load(Ordering::Acquire), 2);
        // Step 3, before step 2: a worker may not start the task yet.
        let never = Trigger::new();
        never.fire();
        assert!(!async_io::block_on(progress.wait_task(id, &never)));
        // Step 2: one write, one sync, the submission told, progress out.
        writer.commit(&mut batch, &shared, &progress);
        assert!(batch.is_empty());
        assert_eq!(saved.try_recv(), Ok(true));
        assert_eq!(progress.durable.load(Ordering::Acquire), 2);
        let replayed = replay(&dir.join(JOURNAL), &shared.config).unwrap();
        assert_eq!(replayed.tasks.len(), 1);
        assert_eq!(replayed.tasks[0].state, State::Cancelled);
        // Step 3: now it may, and no cut is needed for it.
        assert!(async_io::block_on(progress.wait_task(id, &Trigger::new())));
        assert!(async_io::block_on(
            progress.wait_durable(2, &Trigger::new())
        ));
        // Step 2 when the disk fails: the new task is taken back as if it
        // had never been accepted, the submission learns it, and waiters
        // are released all the same.
        writer.broken = true;
        let Admission::Created(lost, _, Some(saved)) =
            shared.store().admit(new_task("p", 0), &shared.queues)
        else {
            panic!("admitted")
        };
        let mut batch: Vec<JournalEntry> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        writer.commit(&mut batch, &shared, &progress);
        assert_eq!(saved.try_recv(), Ok(false));
        assert!(shared.store().get(lost).is_none());
        assert_eq!(shared.store().counters.accepted, 1);
        assert!(async_io::block_on(
            progress.wait_task(lost, &Trigger::new())
        ));
        // Step 5: a wait the disk will never end is cut by the trigger.
        let cut = Trigger::new();
        cut.fire();
        assert!(!async_io::block_on(progress.wait_durable(99, &cut)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Journal records for the replay table.
    const NEW_A: &str =
        r#"{"op":"new","id":10,"task_id":"a","work_duration":"0s","max_attempts":2}"#;
    const NEW_B: &str = r#"{"op":"new","id":11,"work_duration":"0s","max_attempts":1}"#;
    const DONE_A: &str =
        r#"{"op":"state","id":10,"state":"succeeded","attempt":2,"finished_at":5}"#;

    #[test]
    fn replay_drops_a_torn_tail_and_refuses_damage() {
        type Case<'a> = (
            &'a [&'a str],
            &'a [u8],
            Result<(usize, bool), (usize, &'a str)>,
        );
        let cases: &[Case] = &[
            (&[], b"", Ok((0, false))),
            (&[NEW_A, NEW_B, DONE_A], b"", Ok((2, false))),
            // A write cut short: no newline, or a failing checksum, last.
            (&[NEW_A], b"0badc0de {\"op\":\"new\"", Ok((1, false))),
            (&[NEW_A], b"00000000 {}\n", Ok((1, false))),
            (&[NEW_A], b"garbage", Ok((1, false))),
            // Compaction leftovers: the first record and a task written
            // again, and the state of a task compacted away.
            (
                &[
                    NEW_A,
                    r#"{"op":"first","id":3}"#,
                    NEW_A,
                    r#"{"op":"state","id":7,"state":"failed","attempt":1}"#,
                ],
                b"",
                Ok((1, false)),
            ),
            // Values the contract forbids, though the checksum holds.
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"failed","attempt":3}"#,
                ],
                b"",
                Err((2, "attempt is past max_attempts")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"queued","attempt":2}"#,
                ],
                b"",
                Err((2, "attempt is past max_attempts")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"failed","attempt":255}"#,
                ],
                b"",
                Err((2, "attempt is past max_attempts")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"done","attempt":1}"#,
                ],
                b"",
                Err((2, "the state is unknown")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"running","attempt":1}"#,
                ],
                b"",
                Err((2, "a running or scheduled state is never written")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"succeeded","result":"{"}"#,
                ],
                b"",
                Err((2, "the result is not JSON")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"scheduled","attempt":0}"#,
                ],
                b"",
                Err((2, "a running or scheduled state is never written")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"state":"queued"}"#],
                b"",
                Err((1, "a new task is queued or scheduled")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"queue":"Bad Name"}"#],
                b"",
                Err((1, "the queue name is malformed")),
            ),
            (
                &[r#"{"op":"pause","id":0,"queue":"slow"}"#],
                b"",
                Err((1, "a pause record names a queue and whether it is paused")),
            ),
            (
                &[r#"{"op":"pause","id":0,"paused":true}"#],
                b"",
                Err((1, "a pause record names a queue and whether it is paused")),
            ),
            // A scheduled task, a task of a queue no longer configured, and
            // a pause record are all fine.
            (
                &[
                    r#"{"op":"new","id":12,"max_attempts":1,"state":"scheduled","run_at":9}"#,
                    r#"{"op":"new","id":13,"max_attempts":1,"queue":"gone"}"#,
                    r#"{"op":"pause","id":0,"queue":"gone","paused":true}"#,
                ],
                b"",
                Ok((2, false)),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":0}"#],
                b"",
                Err((1, "max_attempts is out of range")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":101}"#],
                b"",
                Err((1, "max_attempts is out of range")),
            ),
            (
                &[r#"{"op":"new","id":10}"#],
                b"",
                Err((1, "max_attempts is out of range")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"payload":"x y"}"#],
                b"",
                Err((1, "the payload is not JSON")),
            ),
            (
                &[r#"{"op":"delete","id":10}"#],
                b"",
                Err((1, "the record is not one the server writes")),
            ),
            (&[r#"{"id":10}"#], b"", Err((1, "the record has no op"))),
            (
                &[r#"{"op":"new","id":-1,"max_attempts":1}"#],
                b"",
                Err((1, "the record is not one the server writes")),
            ),
        ];
        for &(records, tail, expected) in cases {
            let mut lines = journal_lines(records);
            lines.extend_from_slice(tail);
            let got = match replay_lines(&lines[..], &config(&[])) {
                Ok(r) => Ok((r.tasks.len(), r.good_len == lines.len() as u64)),
                Err(ReplayError::Damage(line, why)) => Err((line, why)),
                Err(ReplayError::Read(e)) => panic!("{e}"),
            };
            // A torn tail is dropped, so the good length stops before it.
            let expected = expected.map(|(n, _)| (n, tail.is_empty()));
            assert_eq!(
                got,
                expected,
                "{records:?} + {:?}",
                String::from_utf8_lossy(tail)
            );
        }
        // Damage is damage anywhere but last: a checksum failing mid-file.
        let mut lines = journal_lines(&[NEW_A]);
        lines.extend_from_slice(b"00000000 {}\n");
        lines.extend_from_slice(&journal_lines(&[NEW_B]));
        assert!(matches!(
            replay_lines(&lines[..], &config(&[])),
            Err(ReplayError::Damage(2, "a record fails its checksum"))
        ));
    }

    /// A small, seeded random number generator (xorshift64*), so the
    /// property tests need no crate and every failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Bytes that make random input look like HTTP often enough to reach
    /// deep into the parser.
    const FRAGMENTS: &[&str] = &[
        "GET ",
        "POST ",
        "/tasks",
        " HTTP/1.1",
        " HTTP/1.0",
        "\r\n",
        "\n",
        "\r",
        "Host: a",
        ":",
        " ",
        "Content-Length: ",
        "Transfer-Encoding: chunked",
        "Expect: 100-continue",
        "0",
        "5",
        "a",
        "ff",
        ";x",
        "Connection: close",
        "%",
        "?",
        "\t",
        "\x00",
        "\u{ff}",
        "\r\n\r\n",
    ];

    #[test]
    fn random_input_never_panics_and_more_input_never_changes_a_verdict() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                (0..rng.below(40))
                    .flat_map(|_| FRAGMENTS[rng.below(FRAGMENTS.len())].bytes())
                    .collect()
            } else {
                let mut bytes = GOOD_STREAMS[rng.below(GOOD_STREAMS.len())]
                    .as_bytes()
                    .to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    match rng.below(3) {
                        0 => bytes[at] = rng.next() as u8,
                        1 => drop(bytes.remove(at)),
                        _ => bytes.insert(at, rng.next() as u8),
                    }
                }
                bytes
            };
            let whole = parse_stream(&input, &[usize::MAX], 256);
            let split = parse_stream(&input, &[1 + rng.below(16)], 256);
            assert_eq!(
                whole,
                split,
                "round {round}: {:?}",
                String::from_utf8_lossy(&input)
            );
            // What the codec said of the first bytes stands when more
            // arrive: each request read (or the error) is read the same.
            let cut = rng.below(input.len() + 1);
            let early = parse_stream(&input[..cut], &[usize::MAX], 256);
            let n = early.requests.len();
            assert_eq!(
                early.requests,
                whole.requests[..n],
                "round {round}, cut at {cut}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn routes_are_chosen_from_path_and_method() {
        let route = |request: &str, token: Option<&str>| {
            let bytes = request.as_bytes();
            let head = parse_head(bytes).unwrap();
            choose_route(&head, bytes, token)
        };
        let id = 1_796_000_000_000_000u64;
        let mut text = Vec::new();
        write_id(&mut text, id);
        let id_text = String::from_utf8(text).unwrap();
        let cases: Vec<(String, Option<&str>, Result<Route, HttpError>)> = vec![
            (
                "POST /queue-task".into(),
                None,
                Ok(Route::Submit("/queue-task")),
            ),
            (
                "GET /queue-task".into(),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            (
                "HEAD /queue-task".into(),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            ("POST /tasks".into(), None, Ok(Route::Submit("/tasks"))),
            ("GET /tasks".into(), None, Ok(Route::List)),
            (
                "PUT /tasks".into(),
                None,
                Ok(Route::NotAllowed("GET, HEAD, POST")),
            ),
            ("HEAD /tasks".into(), None, Ok(Route::List)),
            ("GET /tasks/".into(), None, Ok(Route::List)),
            ("POST /tasks/".into(), None, Ok(Route::Submit("/tasks"))),
            ("GET /tasks//".into(), None, Ok(Route::NotFound)),
            (
                format!("GET /tasks/{id_text}"),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            (
                format!("GET /tasks/%{:X}{}", id_text.as_bytes()[0], &id_text[1..]),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            ("GET /tasks/nope".into(), None, Ok(Route::Status(None))),
            (
                format!("GET /tasks/node7_{id_text}"),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new("node7_"),
                }))),
            ),
            (
                format!("GET /tasks/Node_{id_text}"),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("GET /tasks/_{id_text}"),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("GET /tasks/a{id_text}"),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("GET /tasks/{}_{id_text}", "n".repeat(17)),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("HEAD /tasks/{id_text}"),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            (
                format!("POST /tasks/{id_text}/cancel"),
                None,
                Ok(Route::Cancel(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            (
                format!("GET /tasks/{id_text}/cancel"),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            (
                format!("POST /tasks/{id_text}/cancel/x"),
                None,
                Ok(Route::NotFound),
            ),
            ("GET /tasks%2Fx".into(), None, Ok(Route::NotFound)),
            ("GET /healthz".into(), None, Ok(Route::Health)),
            ("GET /metrics".into(), None, Ok(Route::Metrics)),
            ("GET /".into(), None, Ok(Route::Dashboard)),
            ("GET /".into(), Some("t"), Ok(Route::Dashboard)),
            ("POST /".into(), None, Ok(Route::NotAllowed("GET, HEAD"))),
            ("GET /events".into(), None, Ok(Route::Events)),
            ("GET /events".into(), Some("t"), Ok(Route::Unauthorized)),
            (
                "POST /events".into(),
                None,
                Ok(Route::NotAllowed("GET, HEAD")),
            ),
            ("GET /queues".into(), None, Ok(Route::Queues)),
            (
                "POST /queues/slow/pause".into(),
                None,
                Ok(Route::Pause(Some("slow".into()), true)),
            ),
            (
                "POST /queues/slow/resume".into(),
                None,
                Ok(Route::Pause(Some("slow".into()), false)),
            ),
            (
                "GET /queues/slow/pause".into(),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            ("POST /queues/slow/stop".into(), None, Ok(Route::NotFound)),
            ("GET /schedules".into(), None, Ok(Route::Schedules)),
            ("GET *".into(), None, Ok(Route::NotFound)),
            ("GET /a/b/c/d/e".into(), None, Ok(Route::NotFound)),
            (
                "GET /tasks/%zz".into(),
                None,
                Err(HttpError::BadRequest(
                    "the request path has a broken percent escape",
                )),
            ),
            ("GET /healthz".into(), Some("t"), Ok(Route::Health)),
            ("HEAD /healthz".into(), Some("t"), Ok(Route::Health)),
            ("HEAD /metrics".into(), Some("t"), Ok(Route::Unauthorized)),
            ("HEAD /metrics".into(), None, Ok(Route::Metrics)),
            (
                "DELETE /metrics".into(),
                None,
                Ok(Route::NotAllowed("GET, HEAD")),
            ),
            ("POST /healthz".into(), Some("t"), Ok(Route::Unauthorized)),
            ("GET /tasks".into(), Some("t"), Ok(Route::Unauthorized)),
            ("GET /nowhere".into(), Some("t"), Ok(Route::Unauthorized)),
        ];
        for (line, token, expected) in cases {
            let request = format!("{line} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(route(&request, token), expected, "{line}");
        }
        let authorized = "GET /tasks HTTP/1.1\r\nHost: a\r\nAuthorization: bearer t\r\n\r\n";
        assert_eq!(route(authorized, Some("t")), Ok(Route::List));
    }

    #[test]
    fn rust_log_is_read_as_env_logger_reads_it() {
        use log::LevelFilter::*;
        let cases: &[(&str, Option<log::LevelFilter>)] = &[
            ("", None),
            ("debug", Some(Debug)),
            ("DEBUG", Some(Debug)),
            ("bgtasks=debug", Some(Debug)),
            ("warn,bgtasks=debug", Some(Debug)),
            ("bgtasks=debug,warn", Some(Debug)),
            ("hyper=off", None),
            ("info,hyper=off,tokio=trace", Some(Info)),
            ("bgtasks", Some(Trace)),
            ("bgtasks=warn,bgtasks=error", Some(Error)),
            ("error,warn", Some(Warn)),
            ("off", Some(Off)),
            ("verbose", None),
            ("bgtasks=loud", None),
            ("bgtasks=loud,info", Some(Info)),
            ("my_app=debug,actix_web=info", None),
            (" debug , hyper = off ", Some(Debug)),
            ("info/foo.*bar", Some(Info)),
            ("bgtasks::journal=debug", None),
            ("=debug", None),
        ];
        for &(spec, level) in cases {
            assert_eq!(level_from_rust_log(spec), level, "{spec:?}");
        }
    }

    #[test]
    fn help_comes_from_the_flag_table() {
        let help = usage();
        for flag in FLAGS {
            let at = help
                .find(&format!("  {} {}", flag.name, flag.value))
                .unwrap_or_else(|| panic!("{} is not in --help", flag.name));
            let entry = &help[at..];
            let entry = &entry[..entry[2..].find("\n  --").map_or(entry.len(), |e| e + 2)];
            for fact in [flag.env, flag.default].into_iter().flatten() {
                assert!(entry.contains(fact), "{}: {fact} in {entry:?}", flag.name);
            }
            if let Some(default) = flag.default {
                // Every default passes the flag's own check.
                let config = parse_command([OsString::from(flag.name), default.into()], |_| None);
                assert!(config.is_ok(), "{}: {config:?}", flag.name);
            }
        }
    }

    #[test]
    fn schedules_are_checked_at_start_and_bad_ones_named() {
        let parse = |schedule: &str| {
            let args = ["--queue", "slow=1", "--schedule", schedule].map(OsString::from);
            parse_command(args, |_| None).map(|c| match c {
                Command::Run(config) => config.schedules.len(),
                _ => 0,
            })
        };
        let good = [
            r#"nightly-backup=0 3 * * * {"work_duration": "1s", "queue": "slow"}"#,
            r#"heartbeat=@every 30s {"work_duration": "1s"}"#,
            r#"x=*/7 1-5,10-15/2 * jan-mar MON-FRI {"work_duration": "0s", "payload": {"delay": 1}}"#,
        ];
        for schedule in good {
            assert_eq!(parse(schedule), Ok(1), "{schedule}");
        }
        let bad: &[(&str, &str)] = &[
            (
                "nightly 0 3 * * * {}",
                "--schedule \"nightly 0 3 * * * {}\": expected NAME=SPEC TEMPLATE",
            ),
            (
                r#"n=0 3 * * *"#,
                "--schedule \"n\": expected NAME=SPEC TEMPLATE",
            ),
            (
                r#"Bad=0 3 * * * {"work_duration": "1s"}"#,
                "--schedule \"Bad\": NAME must be",
            ),
            (
                r#"=0 3 * * * {"work_duration": "1s"}"#,
                "--schedule \"\": NAME must be",
            ),
            (
                r#"n=60 3 * * * {"work_duration": "1s"}"#,
                "--schedule \"n\": SPEC \"60 3 * * *\": minute 60 is out of range",
            ),
            (
                r#"n=5-2 3 * * * {"work_duration": "1s"}"#,
                "range 5-2 is backwards",
            ),
            (
                r#"n=*/0 3 * * * {"work_duration": "1s"}"#,
                "step 0 is out of range",
            ),
            (
                r#"n=0 3 * foo * {"work_duration": "1s"}"#,
                "unknown name \"foo\"",
            ),
            (
                r#"n=0 3 * * * * {"work_duration": "1s"}"#,
                "expected 5 fields, found 6",
            ),
            (
                r#"n=0 0 31 2 * {"work_duration": "1s"}"#,
                "it can never fire",
            ),
            (
                r#"n=@every 0s {"work_duration": "1s"}"#,
                "@every needs at least 1s",
            ),
            (
                r#"n=@every 500ms {"work_duration": "1s"}"#,
                "@every needs at least 1s",
            ),
            (
                r#"n=@reboot {"work_duration": "1s"}"#,
                "unknown schedule \"@reboot\"",
            ),
            (
                r#"n=@daily {"work_duration": 5}"#,
                "--schedule \"n\": TEMPLATE: failed to read POST body",
            ),
            (
                r#"n=@daily {"work_duration": "1s"} trailing"#,
                "TEMPLATE: failed to read POST body",
            ),
            (
                r#"n=@daily {}"#,
                "TEMPLATE: failed to parse work duration in request",
            ),
            (
                r#"n=@daily {"kind": "nope"}"#,
                "TEMPLATE: unknown task kind \"nope\"",
            ),
            (
                r#"n=@daily {"work_duration": "1s", "queue": "fast"}"#,
                "TEMPLATE: unknown queue \"fast\"",
            ),
            (
                r#"n=@daily {"work_duration": "1s", "delay": "0s"}"#,
                "TEMPLATE: run_at and delay are for the schedule to say",
            ),
            (
                r#"n=@daily {"work_duration": "1s", "run_at": "2020-01-01T00:00:00Z"}"#,
                "TEMPLATE: run_at and delay",
            ),
        ];
        for &(schedule, error) in bad {
            let got = parse(schedule);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(error)),
                "{schedule}: {got:?}"
            );
            assert!(got.is_err_and(|e| !e.contains('\n')));
        }
        let twice = ["--schedule", good[1], "--schedule", good[1]].map(OsString::from);
        assert!(parse_command(twice, |_| None).is_err_and(|e| e.contains("given twice")));
    }

    #[test]
    fn flags_and_environment() {
        let parse = |args: &[&str], env: &[(&str, &str)]| {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            parse_command(args.iter().map(OsString::from), |k| env.get(k).cloned())
        };
        let Ok(Command::Run(c)) = parse(&[], &[]) else {
            panic!()
        };
        assert_eq!(
            (
                c.addr.to_string().as_str(),
                c.queues[0].workers,
                c.queues[0].buffer
            ),
            ("127.0.0.1:8000", 10, 100)
        );
        assert_eq!(
            (c.grace, c.retry_after, c.keep_finished),
            (Duration::from_secs(5), 60, 10_000)
        );
        assert_eq!(
            (c.max_body, c.max_connections, c.token),
            (65_536, 1024, None)
        );
        let Ok(Command::Run(c)) = parse(
            &["--workers=3", "--grace", "1m30s"],
            &[("BGTASKS_WORKERS", "9")],
        ) else {
            panic!()
        };
        assert_eq!((c.queues[0].workers, c.grace), (3, Duration::from_secs(90)));
        let Ok(Command::Run(c)) = parse(&[], &[("BGTASKS_WORKERS", "9"), ("RUST_LOG", "DEBUG")])
        else {
            panic!()
        };
        assert_eq!(
            (c.queues[0].workers, c.log_level),
            (9, log::LevelFilter::Debug)
        );
        assert!(matches!(
            parse(&["--workers", "1", "-h"], &[]),
            Ok(Command::Help)
        ));
        assert!(parse(&["--handler", "x"], &[]).is_err());
        assert!(parse(&["--handler", "sleep=/bin/true"], &[]).is_err());
        assert!(parse(&["--handler", "a b=/bin/true"], &[]).is_err());
        assert!(parse(&["--handler", "k=/nonexistent/program"], &[]).is_err());
        assert!(parse(&["--handler", "k=/etc/passwd"], &[]).is_err());
        assert!(
            parse(
                &["--handler", "k=/bin/true", "--handler", "k=/bin/false"],
                &[]
            )
            .is_err()
        );
        let Ok(Command::Run(c)) = parse(
            &["--handler", "k=sh  -c  'exit 0'"],
            &[("PATH", "/usr/bin:/bin")],
        ) else {
            panic!()
        };
        assert!(c.handlers[0].program.ends_with("sh"));
        assert_eq!(c.handlers[0].args, ["-c", "'exit", "0'"]);
    }

    #[test]
    fn the_openapi_document_describes_every_route_and_only_routes() {
        // Where the document has each route; `None` for the refusals,
        // which are answers, not routes. No wildcard: a new route must
        // say where the document describes it.
        fn documented_at(route: &Route) -> Option<(&'static str, &'static str)> {
            Some(match route {
                Route::Submit(path) => (*path, "post"),
                Route::List => ("/tasks", "get"),
                Route::Status(_) => ("/tasks/{id}", "get"),
                Route::Cancel(_) => ("/tasks/{id}/cancel", "post"),
                Route::Health => ("/healthz", "get"),
                Route::Metrics => ("/metrics", "get"),
                Route::Queues => ("/queues", "get"),
                Route::Schedules => ("/schedules", "get"),
                Route::Events => ("/events", "get"),
                Route::Dashboard => ("/", "get"),
                Route::OpenApi => ("/openapi.json", "get"),
                Route::Pause(_, true) => ("/queues/{name}/pause", "post"),
                Route::Pause(_, false) => ("/queues/{name}/resume", "post"),
                Route::NotFound | Route::NotAllowed(_) | Route::Unauthorized => return None,
            })
        }
        let route = |method: &str, path: &str| {
            let request = format!(
                "{} {path} HTTP/1.1\r\nHost: t\r\n\r\n",
                method.to_ascii_uppercase()
            );
            let head = parse_head(request.as_bytes()).unwrap();
            choose_route(&head, request.as_bytes(), None).unwrap()
        };
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let sample = path
                .replace("{id}", "node7_AAAAAAAAA")
                .replace("{name}", "default");
            let methods: Vec<&str> = item.as_object().unwrap().keys().map(|m| &**m).collect();
            for method in ["get", "head", "post", "put", "delete", "patch", "options"] {
                let routed = route(method, &sample);
                // HEAD is documented as its own operation; it is GET's route.
                let as_get = if method == "head" { "get" } else { method };
                if methods.contains(&method) {
                    assert_eq!(
                        documented_at(&routed),
                        Some((&**path, as_get)),
                        "{method} {path} is documented but routed to {routed:?}"
                    );
                    operations.push((path.clone(), method));
                } else {
                    assert!(
                        matches!(routed, Route::NotAllowed(_)),
                        "{method} {path} is routed to {routed:?} but not documented"
                    );
                }
            }
        }
        // Every route the router knows, by a request that reaches it.
        let requests = [
            ("post", "/queue-task"),
            ("get", "/tasks"),
            ("post", "/tasks"),
            ("get", "/tasks/"),
            ("get", "/tasks/AAAAAAAAA"),
            ("post", "/tasks/AAAAAAAAA/cancel"),
            ("get", "/healthz"),
            ("get", "/metrics"),
            ("get", "/queues"),
            ("post", "/queues/batch/pause"),
            ("post", "/queues/batch/resume"),
            ("get", "/schedules"),
            ("get", "/events"),
            ("get", "/"),
            ("get", "/openapi.json"),
        ];
        for (method, path) in requests {
            let routed = route(method, path);
            let (at, as_method) = documented_at(&routed).unwrap();
            assert_eq!(as_method, method, "{method} {path}");
            let twins: &[&str] = if method == "get" {
                &["get", "head"]
            } else {
                &[method]
            };
            for twin in twins {
                assert!(
                    operations.contains(&(at.to_string(), twin)),
                    "{twin} {path} ({routed:?}) is not in the document at {at}"
                );
            }
        }
    }
}
