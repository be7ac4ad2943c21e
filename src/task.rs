//! A task as the store keeps it: its [`State`]s, its record ([`Task`]),
//! its id as clients see it ([`TaskId`]), and the one writer of its status
//! JSON.
//!
//! Everything here is plain data and pure functions on it. A task is
//! changed only by the store ([`crate::store::Store`]), under its lock,
//! which is why nothing here locks, journals, counts or wakes anyone: the
//! methods below build a task, describe it ([`Task::write_json`], the
//! status object of `GET /tasks/{id}`, of each item of `GET /tasks` and of
//! a `409`; its journal records, [`Task::new_record`] and
//! [`Task::state_record`]) or rebuild it from its records at replay
//! ([`Task::from_record`], [`Task::apply`]); the line format those records
//! take on disk is [`crate::record`]'s.
//!
//! Its shape is set by memory. A server may hold a million queued tasks,
//! so a plain `sleep` task's record is 96 bytes: the members every task
//! has are inline (short strings in a [`Text`], with no allocation), and
//! the rest — kind, payload, timeout, error, result, retry time,
//! idempotency key, schedule, progress — is one boxed [`Extra`], made only
//! for the tasks that use it. A task keeps its queue and schedule as
//! indexes into the configuration, and its creation time as its id:
//! microseconds since the epoch, unique and increasing
//! ([`Table::issue_id`](crate::table::Table::issue_id)), shown as 9
//! characters of an alphabet in ASCII order, so that ids sort as strings
//! the way tasks were made.

use crate::{
    config::{Config, is_node_name},
    json::{write_decimal, write_json_opt, write_json_str, write_raw_opt},
    record::{Op, Record, cow, nonzero},
    time::{parse_duration, write_timestamp},
};
use async_channel::Receiver;

use std::sync::Arc;
use std::time::Duration;

/// The lifecycle of a task. The order is the order of `counts` in `/tasks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// A task whose dependencies (`after`) have not all succeeded yet, in
    /// no queue yet.
    Waiting,
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
    /// Cancelled by a client, or because a dependency failed or was
    /// cancelled. Terminal.
    Cancelled,
    /// Evicted by `--keep-finished`; only the id is left, until the
    /// tombstone is swept.
    Evicted,
}

/// The states a client sees, in the order `counts` lists them.
pub(crate) const STATES: [State; 7] = [
    State::Waiting,
    State::Scheduled,
    State::Queued,
    State::Running,
    State::Succeeded,
    State::Failed,
    State::Cancelled,
];

impl State {
    /// Returns the name clients see.
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
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
    pub(crate) fn from_name(name: &str) -> Option<State> {
        STATES.into_iter().find(|s| s.name() == name)
    }

    /// Tells whether a client should stop polling.
    pub(crate) fn is_terminal(self) -> bool {
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
/// allocation beyond its slot in the store (96 bytes a task).
#[derive(Clone, Debug)]
pub(crate) enum Text {
    /// Up to [`INLINE_TEXT`] bytes of UTF-8 and their length.
    Inline(u8, [u8; INLINE_TEXT]),
    /// Anything longer.
    Heap(Box<str>),
}

impl Text {
    /// Stores `s`, inline when it fits.
    pub(crate) fn new(s: &str) -> Text {
        if s.len() <= INLINE_TEXT {
            let mut bytes = [0; INLINE_TEXT];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Text::Inline(s.len() as u8, bytes)
        } else {
            Text::Heap(s.into())
        }
    }

    /// Returns the string.
    pub(crate) fn as_str(&self) -> &str {
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
/// idempotency key, schedule, progress, dependencies, the task retried)
/// lives in [`Extra`], allocated only for the tasks that use it: a plain
/// sleep task's record is 96 bytes instead of 264.
#[derive(Debug)]
pub(crate) struct Task {
    /// The server's id: microseconds since the epoch at creation, made
    /// unique and increasing (see
    /// [`Table::issue_id`](crate::table::Table::issue_id)).
    pub(crate) id: u64,
    /// When the current or last attempt started, ms since the epoch; 0 if none.
    pub(crate) started_at: u64,
    /// When the task reached a terminal state, ms since the epoch; 0 if not.
    pub(crate) finished_at: u64,
    /// When a delayed task asked to run, ms since the epoch; 0 if it did not.
    pub(crate) run_at: u64,
    /// The client's `task_id` label.
    pub(crate) label: Option<Text>,
    /// `work_duration` exactly as the client sent it.
    pub(crate) work_duration: Option<Text>,
    /// Everything a plain `sleep` task does not need.
    pub(crate) extra: Option<Box<Extra>>,
    /// Where the task is in its lifecycle.
    pub(crate) state: State,
    /// The current or last attempt's number; 0 before the first.
    pub(crate) attempt: u8,
    /// Attempts allowed before the task fails.
    pub(crate) max_attempts: u8,
    /// The index of its queue in [`Config::queues`].
    pub(crate) queue: u8,
}

/// The rarely used parts of a task.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    /// The handler kind; `None` is the built-in `sleep`.
    pub(crate) kind: Option<Arc<str>>,
    /// The payload as JSON text, handed to the handler on stdin.
    pub(crate) payload: Option<Box<str>>,
    /// The per-attempt timeout as the client sent it.
    pub(crate) timeout: Option<Text>,
    /// When a failed attempt's retry is due, ms since the epoch; 0 if none.
    pub(crate) retry_at: u64,
    /// Why the last attempt failed.
    pub(crate) error: Option<Box<str>>,
    /// The handler's output, as JSON text.
    pub(crate) result: Option<Box<str>>,
    /// The `Idempotency-Key` the task was created with.
    pub(crate) key: Option<IdempotencyKey>,
    /// The index of the `--schedule` that made it.
    pub(crate) schedule: Option<u16>,
    /// The last progress its handler reported, as JSON text.
    pub(crate) progress: Option<Box<str>>,
    /// The tasks it runs after (`after`), in the order given.
    pub(crate) after: Option<Box<[u64]>>,
    /// The task it was made from by `POST /tasks/{id}/retry`.
    pub(crate) retry_of: Option<u64>,
}

/// An `Idempotency-Key` and what it was first used for.
#[derive(Clone, Debug)]
pub(crate) struct IdempotencyKey {
    /// The key as the client sent it.
    pub(crate) text: Box<str>,
    /// A fingerprint of the route and body of the request that first used
    /// it ([`fingerprint`]), so that a different request with the same key
    /// is told apart without keeping the body; 0 if unknown (a journal
    /// written before fingerprints were kept).
    pub(crate) fingerprint: u64,
}

/// Fingerprints a submission by its route and the bytes of its body, with
/// 64-bit FNV-1a: collisions between two requests one client mixes up are
/// out of the question, and the value is the same in every build, so it
/// can be journaled.
pub(crate) fn fingerprint(route: &str, body: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let bytes = route.bytes().chain([0]).chain(body.iter().copied());
    bytes.fold(OFFSET, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

impl Task {
    /// Builds the record of a newly admitted task.
    pub(crate) fn from_new(id: u64, new: NewTask, state: State) -> Task {
        let needs_extra = new.kind.is_some()
            || new.payload.is_some()
            || new.timeout.is_some()
            || new.key.is_some()
            || new.schedule.is_some()
            || new.after.is_some()
            || new.retry_of.is_some();
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
                    after: new
                        .after
                        .map(|after| after.iter().map(|id| id.num).collect()),
                    retry_of: new.retry_of,
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
    pub(crate) fn created_at(&self) -> u64 {
        self.id / 1000
    }

    /// Returns the task's kind name.
    pub(crate) fn kind(&self) -> &str {
        self.extra
            .as_ref()
            .and_then(|e| e.kind.as_deref())
            .unwrap_or("sleep")
    }

    /// Returns the extra part, creating it on first use.
    pub(crate) fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Returns the ids of the tasks it runs after, in the order given;
    /// empty when it has none.
    pub(crate) fn after(&self) -> &[u64] {
        self.extra
            .as_ref()
            .and_then(|e| e.after.as_deref())
            .unwrap_or_default()
    }

    /// Describes the task `POST /tasks/{id}/retry` makes of this one: the
    /// same members, queued now (no `run_at`, no `after`), made from it.
    pub(crate) fn retry(&self) -> NewTask {
        let extra = self.extra.as_deref();
        NewTask {
            label: self.label.clone(),
            work_duration: self.work_duration.clone(),
            kind: extra.and_then(|e| e.kind.clone()),
            payload: extra.and_then(|e| e.payload.clone()),
            timeout: extra.and_then(|e| e.timeout.clone()),
            max_attempts: self.max_attempts,
            key: None,
            queue: self.queue,
            run_at: 0,
            schedule: None,
            after: None,
            retry_of: Some(self.id),
        }
    }

    /// Writes the members of the status object of `GET /tasks/{id}`;
    /// `names` are those of its queue and schedule. `error` replaces the
    /// task's own `error` member, for answers whose `error` is a sentence
    /// about the request (a `409`).
    pub(crate) fn write_members(&self, out: &mut Vec<u8>, names: Names, error: Option<&str>) {
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
        out.extend_from_slice(b", \"after\": ");
        match extra.and_then(|e| e.after.as_deref()) {
            Some(after) => {
                out.push(b'[');
                for (i, &dep) in after.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    task_id_in(names.nodes, dep).write_json(out);
                }
                out.push(b']');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b", \"retry_of\": ");
        match extra.and_then(|e| e.retry_of) {
            Some(old) => task_id_in(names.nodes, old).write_json(out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b", \"progress\": ");
        write_raw_opt(out, extra.and_then(|e| e.progress.as_deref()));
        out.extend_from_slice(b", \"error\": ");
        write_json_opt(out, error.or(extra.and_then(|e| e.error.as_deref())));
        out.extend_from_slice(b", \"result\": ");
        write_raw_opt(out, extra.and_then(|e| e.result.as_deref()));
    }

    /// Writes the whole status object.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>, names: Names) {
        out.push(b'{');
        self.write_members(out, names, None);
        out.push(b'}');
    }

    /// Returns the record of the task's fixed members, with the names of
    /// its queue and schedule. A task still waiting for its time or its
    /// dependencies says so: it is still `scheduled` or `waiting`.
    pub(crate) fn new_record<'a>(&'a self, names: Names<'a>) -> Record<'a> {
        let extra = self.extra.as_deref();
        let waiting = matches!(self.state, State::Scheduled | State::Waiting);
        Record {
            op: Some(Op::New),
            id: self.id,
            queue: cow(Some(names.queue).filter(|_| self.queue != 0)),
            schedule: cow(names.schedule),
            node: cow(names.id.node.strip_suffix('_')),
            run_at: nonzero(self.run_at),
            state: cow(waiting.then_some(self.state.name())),
            task_id: cow(self.label.as_ref().map(Text::as_str)),
            work_duration: cow(self.work_duration.as_ref().map(Text::as_str)),
            kind: cow(extra.and_then(|e| e.kind.as_deref())),
            payload: cow(extra.and_then(|e| e.payload.as_deref())),
            timeout: cow(extra.and_then(|e| e.timeout.as_ref()).map(Text::as_str)),
            max_attempts: Some(self.max_attempts),
            key: cow(extra.and_then(|e| e.key.as_ref()).map(|k| &*k.text)),
            fingerprint: extra.and_then(|e| e.key.as_ref()).map(|k| k.fingerprint),
            after: extra
                .and_then(|e| e.after.as_deref())
                .map(std::borrow::Cow::Borrowed),
            retry_of: extra.and_then(|e| e.retry_of),
            ..Record::default()
        }
    }

    /// Returns the record of the task's changing members. A running task is
    /// written as the journal sees it: queued, its attempt not counted.
    pub(crate) fn state_record(&self) -> Record<'_> {
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
    pub(crate) fn from_record(record: &Record, config: &Config) -> Task {
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
            Some("waiting") => State::Waiting,
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
                after: record.after.as_deref().map(|after| {
                    let id = |&num| IdRef {
                        num,
                        node: Text::new(""),
                    };
                    after.iter().map(id).collect()
                }),
                retry_of: record.retry_of,
            },
            state,
        )
    }

    /// Applies a `state` record (already checked by [`Record::check`]).
    pub(crate) fn apply(&mut self, record: &Record) -> Result<(), &'static str> {
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

/// The names of a task's queue and schedule, for its status: the task keeps
/// only their indexes; and the id prefixes, for the ids it names.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Names<'a> {
    /// Its id, prefix included.
    pub(crate) id: TaskId,
    /// The id prefix in force from each id on, for the ids of its
    /// dependencies and of the task it retries (see [`task_id_in`]).
    pub(crate) nodes: &'a [(u64, &'static str)],
    /// Its queue's name.
    pub(crate) queue: &'a str,
    /// Its schedule's name, if a schedule made it.
    pub(crate) schedule: Option<&'a str>,
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
pub(crate) struct TaskId {
    /// `NAME_` of `--node`, or empty.
    pub(crate) node: &'static str,
    /// The number: when the task was made, in microseconds.
    pub(crate) num: u64,
}

impl TaskId {
    /// Appends the id.
    pub(crate) fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.node.as_bytes());
        write_id(out, self.num);
    }

    /// Appends the id as a JSON string.
    pub(crate) fn write_json(self, out: &mut Vec<u8>) {
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

/// Returns the id of task `num` with the prefix it was made with, from
/// `nodes`: the prefix in force from each id on, in id order.
pub(crate) fn task_id_in(nodes: &[(u64, &'static str)], num: u64) -> TaskId {
    let at = nodes.partition_point(|&(from, _)| from <= num);
    let node = nodes.get(at.wrapping_sub(1)).map_or("", |&(_, node)| node);
    TaskId { node, num }
}

/// An id as a client wrote it: its number and the prefix it had, to be
/// checked against the prefix of the task with that number.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IdRef {
    /// The number.
    pub(crate) num: u64,
    /// The prefix as written (`NAME_`, or empty).
    pub(crate) node: Text,
}

impl IdRef {
    /// Names item `n` of the same batch (`"#N"` in an `after`, SPEC §15)
    /// until the store gives it its id: the prefix `#`, which no node's
    /// prefix is, marks it.
    pub(crate) fn batch_item_ref(n: usize) -> IdRef {
        IdRef {
            num: n as u64,
            node: Text::new("#"),
        }
    }

    /// Returns the index of the batch's item this names, if it names one.
    pub(crate) fn batch_item(&self) -> Option<usize> {
        (self.node.as_str() == "#").then_some(self.num as usize)
    }

    /// Reads an id: 9 id characters, after an optional `NAME_` prefix.
    pub(crate) fn parse(text: &[u8]) -> Option<IdRef> {
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

impl std::fmt::Display for IdRef {
    /// Writes the id as the client wrote it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = Vec::with_capacity(ID_LEN);
        write_id(&mut out, self.num);
        f.write_str(self.node.as_str())?;
        f.write_str(std::str::from_utf8(&out).unwrap_or("?"))
    }
}

/// Appends an id's number as its 9 characters.
pub(crate) fn write_id(out: &mut Vec<u8>, id: u64) {
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

/// The allowed `max_attempts`: at least one attempt, and few enough that
/// the last retry's backoff (capped at five minutes) ends within hours.
pub(crate) const MAX_ATTEMPTS: std::ops::RangeInclusive<u8> = 1..=100;

/// The most tasks one task may run after: a pipeline names its previous
/// step or a fan-in of a few; 32 keeps a task's record, and the work of
/// checking it under the store lock, small.
pub(crate) const MAX_AFTER: usize = 32;

/// What a new task needs, checked and ready to store.
#[derive(Debug)]
pub(crate) struct NewTask {
    /// The client's label.
    pub(crate) label: Option<Text>,
    /// The duration text for `sleep` tasks.
    pub(crate) work_duration: Option<Text>,
    /// The handler kind, `None` for `sleep`.
    pub(crate) kind: Option<Arc<str>>,
    /// The payload as JSON text.
    pub(crate) payload: Option<Box<str>>,
    /// The per-attempt timeout text.
    pub(crate) timeout: Option<Text>,
    /// Attempts allowed.
    pub(crate) max_attempts: u8,
    /// The idempotency key, if the request carried one.
    pub(crate) key: Option<IdempotencyKey>,
    /// The index of its queue.
    pub(crate) queue: u8,
    /// When it may start, ms since the epoch; 0 for at once.
    pub(crate) run_at: u64,
    /// The index of the `--schedule` that made it, if one did.
    pub(crate) schedule: Option<u16>,
    /// The ids of the tasks it runs after, as written, until the store
    /// checks them (a journal's ids have no prefix: they are checked).
    pub(crate) after: Option<Box<[IdRef]>>,
    /// The task it retries (`POST /tasks/{id}/retry`).
    pub(crate) retry_of: Option<u64>,
}

/// What a cancel came to, when it was not refused.
#[derive(Debug)]
pub(crate) enum Cancel {
    /// Made at once: the task's slot.
    Made(usize),
    /// With a journal: its record is on its way to disk, and the cancel is
    /// made once it is there; the receiver tells whether it got there.
    Saving(Receiver<bool>),
}

/// The work a worker takes from the store when an attempt starts.
#[derive(Debug)]
pub(crate) struct Work {
    /// The task's id.
    pub(crate) id: TaskId,
    /// This attempt's number, from 1.
    pub(crate) attempt: u8,
    /// The handler kind; `None` is `sleep`.
    pub(crate) kind: Option<Arc<str>>,
    /// How long a `sleep` lasts, as the client wrote it.
    pub(crate) work_duration: Option<Text>,
    /// The payload handed to a program.
    pub(crate) payload: Option<Box<str>>,
    /// The per-attempt timeout, as the client wrote it.
    pub(crate) timeout: Option<Text>,
    /// The ids of the tasks it ran after, in the order given, for the
    /// handler's `BGTASKS_AFTER`.
    pub(crate) after: Vec<TaskId>,
}

impl Work {
    /// Returns how long a `sleep` lasts. The texts were checked when the
    /// task was accepted; they are parsed here, outside the store lock.
    pub(crate) fn sleep_for(&self) -> Duration {
        let text = self.work_duration.as_ref().map_or("0", Text::as_str);
        parse_duration(text).unwrap_or_default()
    }

    /// Returns the per-attempt timeout, if any.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
            .as_ref()
            .and_then(|t| parse_duration(t.as_str()).ok())
    }

    /// Returns `BGTASKS_AFTER`: the ids of the tasks it ran after, in the
    /// order given, comma-separated; empty when none.
    pub(crate) fn after_env(&self) -> String {
        let ids: Vec<String> = self.after.iter().map(TaskId::to_string).collect();
        ids.join(",")
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Success, with the result as JSON text.
    Succeeded(Option<Box<str>>),
    /// Failure, with the reason.
    Failed(String),
    /// A client cancelled the task (its state is already `cancelled`).
    Cancelled,
    /// Shutdown interrupted the attempt: not a failure, and not counted.
    Interrupted,
}

impl Outcome {
    /// Names the outcome for the log in the API's words for states
    /// (`succeeded`, not `Succeeded(None)`). A failure with attempts left
    /// leads to `queued` again, and the log line says so; an interrupted
    /// attempt leads to no state of its own.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => State::Succeeded.name(),
            Outcome::Failed(_) => State::Failed.name(),
            Outcome::Cancelled => State::Cancelled.name(),
            Outcome::Interrupted => "interrupted by shutdown",
        }
    }
}

/// Returns the wait before retry number `attempt + 1`: 1 s, 2 s, 4 s …
/// capped at five minutes.
pub(crate) fn backoff(attempt: u8) -> Duration {
    let secs = 1u64 << u32::from(attempt.saturating_sub(1)).min(9);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// The longest wait before a retry: a failing dependency gets time to come
/// back, and a task still retries a dozen times an hour.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A new `sleep` task of no time in `default`, to start at `run_at`.
    pub(crate) fn new_task(label: &str, run_at: u64) -> NewTask {
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
            after: None,
            retry_of: None,
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
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
