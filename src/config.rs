//! The command line and the environment, checked into a [`Config`] before
//! anything is bound.
//!
//! Every flag lives in one table, [`FLAGS`]: its name, its environment
//! variable (a flag beats its variable), its default and, for a number, its
//! range. `--help` ([`usage`]), the checks and the defaults are all read
//! from that table, so they cannot disagree (a unit test below holds
//! `--help` to the table, `tests/cli.rs` the README's flag table to
//! `--help`). Every value is checked before the listener is bound: a bad
//! one is one line of error, which [`main`](crate::main) prints before
//! exiting with status 2, so a typo in a unit file fails loudly instead of
//! half-starting. Each `MAX_*` bound refuses a typo's worth
//! (`--workers 10000000`) rather than obeying it.
//!
//! The module is pure but for one look at the disk: a `--handler`'s program
//! is resolved on `PATH` and checked to be executable, so a wrong path
//! fails at start rather than at the first task. It reads the environment
//! through a closure, which tests replace, and it touches no server state:
//! what it returns, [`crate::launch`] hands on. Read [`parse_command`]
//! first. A `--schedule`'s template is checked here too, as a submission
//! would be ([`crate::cron::parse_schedule`]), against the kinds and queues
//! just read. A client command among the server's flags is refused with a
//! word on where it goes, never taken for a server run.

use crate::client;
use crate::{
    cron::{ScheduleConfig, parse_schedule},
    time::parse_duration,
};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
pub(crate) const MAX_MAX_BODY: usize = 64 << 20;

/// The most connections a server may hold: each costs a file descriptor
/// and a few kilobytes, and a million is past any one process's budget.
const MAX_CONNECTIONS: usize = 1_000_000;

/// The longest task kind: kinds are names in flags and logs, not data.
const MAX_KIND_LEN: usize = 64;

/// The most queues, `default` included: a task keeps its queue's index in
/// one byte, and a box that needs more wants a broker.
pub(crate) const MAX_QUEUES: usize = 256;

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
    Flag::new(
        "--keep-finished-for",
        "DURATION",
        "finished tasks older than this are evicted too",
    )
    .env("BGTASKS_KEEP_FINISHED_FOR"),
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
        "--rate",
        "QUEUE=N/UNIT",
        "at most N task starts per s, m or h in QUEUE (repeatable)",
    ),
    Flag::new(
        "--schedule",
        "NAME=SPEC TEMPLATE",
        "a periodic task: cron SPEC, submission TEMPLATE (repeatable)",
    ),
    Flag::new("--max-scheduled", "N", "delayed and waiting tasks, at most")
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
    Flag::new(
        "--log-timestamps",
        "on|off",
        "start each log line with the time (off under journald)",
    )
    .env("BGTASKS_LOG_TIMESTAMPS")
    .default("on"),
];

/// A flag the command line knows; see [`FLAGS`].
struct Flag {
    /// The long name, with its dashes.
    pub(crate) name: &'static str,
    /// What its value is called in `--help`.
    pub(crate) value: &'static str,
    /// What it is for, in `--help`.
    pub(crate) help: &'static str,
    /// The environment variable read when the flag is absent.
    pub(crate) env: Option<&'static str>,
    /// The value used when neither the flag nor its variable gives one,
    /// checked like a given one.
    pub(crate) default: Option<&'static str>,
    /// For a number, the smallest and largest allowed.
    pub(crate) range: Option<(usize, usize)>,
}

impl Flag {
    /// Describes a flag with no variable, no default and no range.
    pub(crate) const fn new(name: &'static str, value: &'static str, help: &'static str) -> Flag {
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
    pub(crate) const fn env(self, env: &'static str) -> Flag {
        Flag {
            env: Some(env),
            ..self
        }
    }

    /// Gives the flag a default.
    pub(crate) const fn default(self, default: &'static str) -> Flag {
        Flag {
            default: Some(default),
            ..self
        }
    }

    /// Makes the flag a whole number from `low` to `high`.
    pub(crate) const fn range(self, low: usize, high: usize) -> Flag {
        Flag {
            range: Some((low, high)),
            ..self
        }
    }

    /// Tells whether the flag may be given more than once, each time adding
    /// one.
    fn repeatable(&self) -> bool {
        self.help.ends_with("(repeatable)")
    }
}

/// Returns the usage text printed by `--help`, made from [`FLAGS`].
pub(crate) fn usage() -> String {
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
         RUST_LOG is read as env_logger reads it (debug, bgtasks=debug, warn,hyper=off);\n\
         RUST_LOG=bgtasks::trace=trace also logs every poll and wake of the executor.\n",
    );
    text
}

/// Everything the command line and environment decide, checked.
#[derive(Debug)]
pub(crate) struct Config {
    /// Where the listener binds.
    pub(crate) addr: SocketAddr,
    /// The queues, `default` (from `--workers` and `--buffer`) first, then
    /// the `--queue`s in the order given.
    pub(crate) queues: Vec<QueueConfig>,
    /// How many delayed and waiting tasks may wait at once.
    pub(crate) max_scheduled: usize,
    /// The periodic tasks, in the order given.
    pub(crate) schedules: Vec<ScheduleConfig>,
    /// Threads that run the executor; `None` is one per available core,
    /// found only once the listener is up (reading the cgroup limits takes
    /// a while, and a client can connect meanwhile).
    pub(crate) threads: Option<usize>,
    /// How long shutdown waits for requests and running tasks.
    pub(crate) grace: Duration,
    /// Seconds sent in `Retry-After` with a queue-full `503`.
    pub(crate) retry_after: u64,
    /// How many finished tasks stay queryable before the earliest go.
    pub(crate) keep_finished: usize,
    /// How long a finished task stays queryable, if not for ever.
    pub(crate) keep_finished_for: Option<Duration>,
    /// The largest request body accepted, in bytes.
    pub(crate) max_body: usize,
    /// How many connections may be open at once.
    pub(crate) max_connections: usize,
    /// Where the journal lives; `None` keeps tasks in memory only.
    pub(crate) data_dir: Option<PathBuf>,
    /// Registered task kinds and the programs that run them.
    pub(crate) handlers: Vec<Handler>,
    /// The bearer token every route but `/healthz` and the dashboard (`/`)
    /// requires, if any.
    pub(crate) token: Option<String>,
    /// The prefix of new ids: `--node` and `_`, or empty.
    pub(crate) node: &'static str,
    /// The most verbose log level printed.
    pub(crate) log_level: log::LevelFilter,
    /// Whether each log line starts with the time.
    pub(crate) log_timestamps: bool,
    /// Whether the executor is traced: every poll, `Pending` and wake of
    /// the server's tasks logged at `trace` under `bgtasks::trace`.
    pub(crate) trace_executor: bool,
}

/// A queue as the command line describes it.
#[derive(Debug)]
pub(crate) struct QueueConfig {
    /// Its name, in task status, `/queues` and metric labels.
    pub(crate) name: Arc<str>,
    /// How many worker tasks it runs.
    pub(crate) workers: usize,
    /// The capacity of its channel: tasks waiting beyond the running ones.
    pub(crate) buffer: usize,
    /// How many tasks may start per unit of time, from `--rate`; `None`
    /// lets them start as fast as workers free up.
    pub(crate) rate: Option<Rate>,
}

/// A limit on task starts from `--rate QUEUE=N/UNIT`: at most `per` starts
/// in each `unit`, as a token bucket that holds `per` and refills evenly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rate {
    /// N: the starts allowed per unit, and the bucket's size.
    pub(crate) per: u64,
    /// UNIT: `s`, `m` or `h`.
    pub(crate) unit: char,
}

impl Rate {
    /// Returns the length of the unit in microseconds.
    pub(crate) fn unit_micros(self) -> u64 {
        match self.unit {
            's' => 1_000_000,
            'm' => 60_000_000,
            _ => 3_600_000_000,
        }
    }
}

impl std::fmt::Display for Rate {
    /// Shows the rate as it was given: `5/s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.per, self.unit)
    }
}

/// A task kind registered with `--handler KIND=PROGRAM`.
#[derive(Debug)]
pub(crate) struct Handler {
    /// The `kind` a task names to be run by this handler.
    pub(crate) kind: Arc<str>,
    /// The resolved program path: checked to exist and be executable at start.
    pub(crate) program: PathBuf,
    /// Arguments given after the program, split on runs of spaces.
    pub(crate) args: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
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
pub(crate) fn parse_command(
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
            // A client command or option among server flags must not
            // start a server: say where it goes.
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
    pub(crate) given: HashMap<&'static str, Vec<String>>,
    /// Looks an environment variable up.
    pub(crate) env: &'a E,
}

impl<E: Fn(&str) -> Option<String>> Flags<'_, E> {
    /// Checks every flag and builds the configuration.
    pub(crate) fn config(&self) -> Result<Config, String> {
        let mut config = Config {
            addr: self.required("--addr", parse_addr)?,
            queues: self.queues()?,
            max_scheduled: self.number("--max-scheduled")?,
            threads: self.optional("--threads", |v| parse_in("--threads", v))?,
            grace: self.required("--grace", parse_duration)?,
            retry_after: self.number("--retry-after")? as u64,
            keep_finished: self.number("--keep-finished")?,
            keep_finished_for: self.optional("--keep-finished-for", parse_keep_for)?,
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
            log_timestamps: self.log_timestamps()?,
            trace_executor: self.trace_executor(),
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
    pub(crate) fn all(&self, name: &str) -> &[String] {
        self.given.get(name).map_or(&[], Vec::as_slice)
    }

    /// Returns a flag's value and where it came from: the flag, else its
    /// environment variable, else its default.
    pub(crate) fn lookup(&self, name: &'static str) -> Option<(String, String)> {
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
    pub(crate) fn optional<T>(
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
    pub(crate) fn required<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        self.optional(name, parse)?
            .ok_or_else(|| format!("{name} needs a value"))
    }

    /// Parses a whole number within the flag's range.
    pub(crate) fn number(&self, name: &'static str) -> Result<usize, String> {
        self.required(name, |v| parse_in(name, v))
    }

    /// Builds the queues: `default` from `--workers` and `--buffer`, then
    /// every `--queue`, none named twice.
    pub(crate) fn queues(&self) -> Result<Vec<QueueConfig>, String> {
        let mut queues = vec![QueueConfig {
            name: Arc::from("default"),
            workers: self.number("--workers")?,
            buffer: self.number("--buffer")?,
            rate: None,
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
        for spec in self.all("--rate") {
            let (name, rate) = parse_rate(spec)?;
            let queue = queues
                .iter_mut()
                .find(|q| *q.name == *name)
                .ok_or_else(|| format!("--rate {spec:?}: there is no queue {name:?}"))?;
            if queue.rate.replace(rate).is_some() {
                return Err(format!("--rate {spec:?}: the queue's rate is given twice"));
            }
        }
        Ok(queues)
    }

    /// Checks every `--handler`, and that no kind is registered twice.
    pub(crate) fn handlers(&self) -> Result<Vec<Handler>, String> {
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
    pub(crate) fn log_level(&self) -> Result<log::LevelFilter, String> {
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

    /// Reads whether to trace the executor: a `RUST_LOG` directive that
    /// names `bgtasks::trace` at `trace` (or alone), unless `--log-level`
    /// is given, which replaces `RUST_LOG` whole. Only the name turns it on,
    /// not a bare `trace` or `bgtasks=trace`: the trace is a lesson, many
    /// lines a request, that nobody asking for every detail of the server
    /// should get unasked.
    fn trace_executor(&self) -> bool {
        self.all("--log-level").is_empty()
            && (self.env)("RUST_LOG").is_some_and(|spec| traces_executor(&spec))
    }

    /// Reads whether log lines start with the time: `--log-timestamps` or
    /// its variable, else off under journald (`JOURNAL_STREAM` set), which
    /// stores each line's time itself, else on.
    pub(crate) fn log_timestamps(&self) -> Result<bool, String> {
        if self.all("--log-timestamps").is_empty()
            && (self.env)("BGTASKS_LOG_TIMESTAMPS").is_none()
            && (self.env)("JOURNAL_STREAM").is_some()
        {
            return Ok(false);
        }
        self.required("--log-timestamps", |v| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("{v:?} is neither on nor off")),
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
pub(crate) fn parse_node(value: &str) -> Result<&'static str, String> {
    if !is_node_name(value) {
        return Err(format!(
            "the node name must be 1 to {MAX_NODE_LEN} characters of a-z 0-9"
        ));
    }
    Ok(Box::leak(format!("{value}_").into_boxed_str()))
}

/// Tells whether `name` may be a `--node`: 1 to 16 of `a-z 0-9`.
pub(crate) fn is_node_name(name: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=MAX_NODE_LEN).contains(&name.len()) && name.bytes().all(ok)
}

/// Checks a bearer token: one or more visible ASCII characters, so that it
/// fits in a header unchanged.
pub(crate) fn parse_token(value: &str) -> Result<String, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be one or more visible ASCII characters".to_string());
    }
    Ok(value.to_string())
}

/// The longest `--keep-finished-for`: a century, past any retention
/// policy, and far from overflowing the milliseconds it is counted in.
const MAX_KEEP_FOR: Duration = Duration::from_secs(100 * 366 * 86_400);

/// Parses `--keep-finished-for`: a duration greater than zero (a task
/// evicted as it finishes could not be read at all), at most a century.
fn parse_keep_for(value: &str) -> Result<Duration, String> {
    match parse_duration(value) {
        Ok(d) if !d.is_zero() && d <= MAX_KEEP_FOR => Ok(d),
        Ok(_) => Err(format!(
            "expected a duration greater than 0 and at most 36600 days, got {value:?}"
        )),
        Err(e) => Err(e),
    }
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

/// Tells whether a `RUST_LOG` spec turns the executor trace on: its last
/// directive for `bgtasks::trace` says `trace`, or names no level (which
/// env_logger reads as every level).
fn traces_executor(spec: &str) -> bool {
    let directives = spec.split('/').next().unwrap_or_default();
    let mut on = false;
    for directive in directives.split(',').map(str::trim) {
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (target.trim(), parse_level(level.trim())),
            None => (directive, Some(log::LevelFilter::Trace)),
        };
        if target.eq_ignore_ascii_case(crate::trace::TARGET)
            && let Some(level) = level
        {
            on = level == log::LevelFilter::Trace;
        }
    }
    on
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
        rate: None,
    })
}

/// The most starts a `--rate` may allow per unit: a million a second is
/// past what any worker pool starts, so a larger N is a typo.
const MAX_RATE: u64 = 1_000_000;

/// Parses `QUEUE=N/UNIT` (UNIT `s`, `m` or `h`; N 1 to [`MAX_RATE`]) into
/// the queue's name and its rate.
fn parse_rate(spec: &str) -> Result<(&str, Rate), String> {
    let bad = |why: &str| format!("--rate {spec:?}: {why}");
    let (name, limit) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected QUEUE=N/UNIT"))?;
    let (per, unit) = limit
        .split_once('/')
        .ok_or_else(|| bad("expected QUEUE=N/UNIT"))?;
    let per = per
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_RATE).contains(n))
        .ok_or_else(|| bad(&format!("N must be a whole number from 1 to {MAX_RATE}")))?;
    let unit = match unit {
        "s" => 's',
        "m" => 'm',
        "h" => 'h',
        _ => return Err(bad("UNIT must be s, m or h")),
    };
    Ok((name, Rate { per, unit }))
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
pub(crate) fn check_name(name: &str) -> Result<(), String> {
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

/// Displays the queues for the start-up line: `10 workers, queue 100`,
/// then each named queue's workers and capacity.
pub(crate) struct QueueList<'a>(pub(crate) &'a [QueueConfig]);

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::time::Duration;

    /// A configuration from command-line arguments, as the server gets it.
    pub(crate) fn config(args: &[&str]) -> Config {
        match parse_command(args.iter().map(OsString::from), |_| None) {
            Ok(Command::Run(config)) => *config,
            other => panic!("{args:?}: {other:?}"),
        }
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
    fn only_a_directive_naming_it_traces_the_executor() {
        let cases = [
            ("bgtasks::trace=trace", true),
            ("debug,bgtasks::trace=trace", true),
            ("BGTASKS::TRACE=TRACE", true),
            ("bgtasks::trace", true),
            (" info , bgtasks::trace = trace /x", true),
            ("bgtasks::trace=trace,bgtasks::trace=off", false),
            ("bgtasks::trace=off,bgtasks::trace=trace", true),
            ("bgtasks::trace=trace,bgtasks::trace=loud", true),
            ("bgtasks::trace=debug", false),
            ("trace", false),
            ("bgtasks=trace", false),
            ("bgtasks", false),
            ("", false),
        ];
        for (spec, on) in cases {
            assert_eq!(traces_executor(spec), on, "{spec:?}");
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
        assert_eq!(c.keep_finished_for, None);
        let Ok(Command::Run(c)) = parse(&[], &[("BGTASKS_KEEP_FINISHED_FOR", "1h30m")]) else {
            panic!()
        };
        assert_eq!(c.keep_finished_for, Some(Duration::from_secs(5400)));
        for bad in ["0", "0s", "-1s", "soon", "900000h", "1e9h"] {
            assert!(parse(&["--keep-finished-for", bad], &[]).is_err(), "{bad}");
        }
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
    fn rates_name_a_queue_once_with_n_per_s_m_or_h() {
        let rates = |args: &[&str]| {
            parse_command(args.iter().map(OsString::from), |_| None).map(|c| match c {
                Command::Run(c) => c
                    .queues
                    .iter()
                    .map(|q| q.rate.map(|r| r.to_string()))
                    .collect(),
                _ => Vec::new(),
            })
        };
        let some = |r: &str| Some(r.to_string());
        assert_eq!(rates(&[]), Ok(vec![None]));
        assert_eq!(
            rates(&[
                "--rate",
                "api=10/s",
                "--queue",
                "api=2",
                "--rate=default=3/h"
            ]),
            Ok(vec![some("3/h"), some("10/s")])
        );
        assert_eq!(
            rates(&["--rate", "default=1000000/m"]),
            Ok(vec![some("1000000/m")])
        );
        let bad: &[(&str, &str)] = &[
            ("api=1/s", "there is no queue \"api\""),
            ("default", "expected QUEUE=N/UNIT"),
            ("default=5", "expected QUEUE=N/UNIT"),
            ("default=0/s", "N must be a whole number from 1 to 1000000"),
            (
                "default=1000001/s",
                "N must be a whole number from 1 to 1000000",
            ),
            ("default=-1/s", "N must be a whole number from 1 to 1000000"),
            (
                "default=1.5/s",
                "N must be a whole number from 1 to 1000000",
            ),
            ("default=5/d", "UNIT must be s, m or h"),
            ("default=5/", "UNIT must be s, m or h"),
            ("default=5/sec", "UNIT must be s, m or h"),
        ];
        for (spec, why) in bad {
            assert_eq!(
                rates(&["--rate", spec]),
                Err(format!("--rate {spec:?}: {why}"))
            );
        }
        assert_eq!(
            rates(&["--rate", "default=1/s", "--rate", "default=2/s"]),
            Err("--rate \"default=2/s\": the queue's rate is given twice".to_string())
        );
    }

    #[test]
    fn log_timestamps_are_on_but_off_under_journald_and_the_flag_beats_both() {
        let journald = ("JOURNAL_STREAM", "8:12345");
        /// Arguments, environment, and whether lines start with the time.
        type Case<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a str)],
            Result<bool, &'a str>,
        );
        let cases: &[Case] = &[
            (&[], &[], Ok(true)),
            (&[], &[journald], Ok(false)),
            (&["--log-timestamps", "on"], &[journald], Ok(true)),
            (&[], &[journald, ("BGTASKS_LOG_TIMESTAMPS", "on")], Ok(true)),
            (&[], &[("BGTASKS_LOG_TIMESTAMPS", "off")], Ok(false)),
            (
                &["--log-timestamps=on"],
                &[("BGTASKS_LOG_TIMESTAMPS", "off")],
                Ok(true),
            ),
            (&["--log-timestamps", "off"], &[], Ok(false)),
            (
                &["--log-timestamps", "yes"],
                &[],
                Err("--log-timestamps: \"yes\" is neither on nor off"),
            ),
            (
                &[],
                &[journald, ("BGTASKS_LOG_TIMESTAMPS", "")],
                Err("BGTASKS_LOG_TIMESTAMPS: \"\" is neither on nor off"),
            ),
        ];
        for (args, env, expected) in cases {
            let got = parse_command(args.iter().map(OsString::from), |k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
            .map(|c| match c {
                Command::Run(config) => config.log_timestamps,
                _ => panic!("{args:?} runs the server"),
            });
            assert_eq!(got, expected.map_err(str::to_string), "{args:?} {env:?}");
        }
    }
}
