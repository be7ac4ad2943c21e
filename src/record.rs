//! The journal's line format: one [`Record`] a line, written
//! `<crc32 in hex> <json>`, and the checks a line passes before replay
//! believes it.
//!
//! The checksum tells a record cut short by a crash — only ever the last
//! line — from damage anywhere else, which replay refuses to start on
//! ([`crate::journal`] decides which is which). A line whose checksum
//! holds is still checked against the contract's ranges
//! ([`Record::check`]): a journal edited by hand is refused rather than
//! giving a task what the API never gives it (`max_attempts` out of
//! range, a payload that is not JSON, a state no record says).
//!
//! One flat shape serves every [`Op`]: the members an op does not use are
//! left out of the line, and strings are borrowed (`Cow`), so writing a
//! record copies nothing out of the task and reading one borrows from the
//! line. The module is pure: it turns records into bytes and back, and
//! never opens a file; what a task's records say is [`crate::task`]'s
//! ([`Task::new_record`](crate::task::Task::new_record),
//! [`Task::state_record`](crate::task::Task::state_record)).

use crate::{
    config::{check_name, is_node_name},
    task::{MAX_AFTER, MAX_ATTEMPTS, State},
};
use serde::Deserialize;

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
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// What a journal line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Op {
    /// A task was accepted: its fixed members.
    New,
    /// A task's state changed: all of its changing members.
    State,
    /// The first id this journal's tasks started from (for `410`).
    First,
    /// A queue was paused or resumed.
    Pause,
    /// The journal's format: only ever its first line.
    Version,
}

/// One journal line. The same shape serves every [`Op`]; members an op
/// does not use are left out.
#[derive(Debug, Default, serde::Serialize, Deserialize)]
pub(crate) struct Record<'a> {
    /// What the line records; `None` never appears in a file.
    pub(crate) op: Option<Op>,
    /// The task's id.
    pub(crate) id: u64,
    /// The client's `task_id` label.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) task_id: Option<std::borrow::Cow<'a, str>>,
    /// `work_duration` as the client sent it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) work_duration: Option<std::borrow::Cow<'a, str>>,
    /// The handler kind; left out for `sleep`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<std::borrow::Cow<'a, str>>,
    /// The payload's JSON text.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<std::borrow::Cow<'a, str>>,
    /// The per-attempt timeout as the client sent it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<std::borrow::Cow<'a, str>>,
    /// Attempts allowed; a `new` record always has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_attempts: Option<u8>,
    /// The `Idempotency-Key` the task was created with.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<std::borrow::Cow<'a, str>>,
    /// The key's fingerprint of its first request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fingerprint: Option<u64>,
    /// The task's queue (left out for `default`), or the queue paused or
    /// resumed.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<std::borrow::Cow<'a, str>>,
    /// When a delayed task may start, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run_at: Option<u64>,
    /// Whether the queue is paused now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) paused: Option<bool>,
    /// The schedule that made the task.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) schedule: Option<std::borrow::Cow<'a, str>>,
    /// The `--node` of the server that made the task.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<std::borrow::Cow<'a, str>>,
    /// The ids of the tasks it runs after, in the order given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) after: Option<std::borrow::Cow<'a, [u64]>>,
    /// The id of the task it retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_of: Option<u64>,
    /// The last progress, as JSON text.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) progress: Option<std::borrow::Cow<'a, str>>,
    /// The state's name: `scheduled` or `waiting` in a `new` record of a
    /// delayed task or of one with `after`; in a `state` record, any but
    /// `running` and `waiting`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) state: Option<std::borrow::Cow<'a, str>>,
    /// The attempt number as the journal counts it (a running attempt is
    /// not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) attempt: Option<u8>,
    /// When the last attempt started, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) started_at: Option<u64>,
    /// When the task finished, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at: Option<u64>,
    /// When a retry is due, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_at: Option<u64>,
    /// Why the last attempt failed.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<std::borrow::Cow<'a, str>>,
    /// The result's JSON text.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<std::borrow::Cow<'a, str>>,
}

/// Borrows an optional string for a record.
pub(crate) fn cow(s: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    s.map(std::borrow::Cow::Borrowed)
}

/// Turns 0 ("not yet") into `None` for a record.
pub(crate) fn nonzero(millis: u64) -> Option<u64> {
    (millis != 0).then_some(millis)
}

/// Appends `record` as one journal line: checksum, space, JSON, newline.
pub(crate) fn write_record(out: &mut Vec<u8>, record: &impl serde::Serialize) {
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
pub(crate) enum BadLine {
    /// It fails its checksum: a write cut short, if it is the last line.
    Checksum,
    /// Its checksum holds, but what it says the contract forbids.
    Invalid(&'static str),
}

/// Checks a journal line (without its newline) and parses its record.
pub(crate) fn read_record(line: &[u8]) -> Result<Record<'_>, BadLine> {
    let json = checked_json(line).ok_or(BadLine::Checksum)?;
    let record: Record = serde_json::from_slice(json)
        .map_err(|_| BadLine::Invalid("the record is not one the server writes"))?;
    record.check().map_err(BadLine::Invalid)?;
    Ok(record)
}

/// Returns the JSON of a journal line whose checksum holds.
pub(crate) fn checked_json(line: &[u8]) -> Option<&[u8]> {
    let crc = std::str::from_utf8(line.get(..8)?).ok()?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    let json = line.get(9..).filter(|_| line[8] == b' ')?;
    (crc32(json) == crc).then_some(json)
}

impl Record<'_> {
    /// Checks what a record says on its own against the contract's ranges.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
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
            Some(Op::New)
                if self
                    .state
                    .as_deref()
                    .is_some_and(|s| s != "scheduled" && s != "waiting") =>
            {
                Err("a new task is queued, scheduled or waiting")
            }
            Some(Op::New)
                if self
                    .after
                    .as_deref()
                    .is_some_and(|a| a.is_empty() || a.len() > MAX_AFTER) =>
            {
                Err("after names 1 to 32 tasks")
            }
            Some(Op::New) if self.state.as_deref() == Some("waiting") && self.after.is_none() => {
                Err("a waiting task has dependencies")
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
            Some(Op::State) if matches!(self.state.as_deref(), Some("running" | "waiting")) => {
                Err("a running or waiting state is never written")
            }
            Some(Op::State) if !is_json(&self.result) => Err("the result is not JSON"),
            Some(Op::State) if !is_json(&self.progress) => Err("the progress is not JSON"),
            _ => Ok(()),
        }
    }
}
