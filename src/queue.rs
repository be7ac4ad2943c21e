//! A queue: its bounded channel of task ids ([`Queue`]), and what the store
//! keeps of it under its lock ([`QueueState`]).
//!
//! Each queue is the original Go design once more: a bounded channel of
//! its capacity and the workers that take the next job from it —
//! `default` from `--workers` and `--buffer`, the others from `--queue`,
//! all on the one executor. Only a task's id travels through a channel;
//! the record stays in the store, so a client can cancel a queued task by
//! changing its state, and the worker that later receives the id sees
//! that and skips it.
//!
//! A queue is two values because two kinds of code touch it. The channel
//! halves are made at start and used without the store lock — a worker
//! waits in `recv()`, which must never hold it. What changes — the depth
//! admission counts, the busy workers, the pause, the tasks waiting for
//! room — is a [`QueueState`] inside the store, changed only by the
//! store's methods under its lock. Both are indexed like
//! [`Config::queues`](crate::config::Config::queues); the workers
//! themselves are main.rs's ([`crate::work`]).

use crate::{
    config::QueueConfig,
    json::VecWriter,
    record::{Op, Record, cow},
    trigger::Trigger,
};
use async_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::fmt::Write as _;

use std::sync::Arc;

/// What the store keeps of a queue: what changes under its lock. The
/// channel itself is in [`Queue`].
#[derive(Debug)]
pub(crate) struct QueueState {
    /// The queue's name.
    pub(crate) name: Arc<str>,
    /// Workers of this queue running an attempt right now.
    pub(crate) busy: u64,
    /// Tasks in the queue: entered and not yet begun (or skipped) — in the
    /// channel, waiting for room, or taken by a worker that has not begun
    /// them. Admission compares this with the capacity, so a task a worker
    /// holds is counted as long as it holds it.
    pub(crate) depth: usize,
    /// Whether its workers start nothing.
    pub(crate) paused: bool,
    /// Fired when the queue is resumed (and then replaced): workers that
    /// found it paused wait for it.
    pub(crate) resumed: Trigger,
    /// Tasks waiting for room in the channel, oldest first: retries and
    /// delayed tasks that came due while it was full or paused. They enter
    /// before any new submission.
    pub(crate) waiting: VecDeque<u64>,
}

impl QueueState {
    /// Makes a queue's state at start: idle, running, nothing waiting.
    pub(crate) fn new(config: &QueueConfig) -> QueueState {
        QueueState {
            name: config.name.clone(),
            busy: 0,
            depth: 0,
            paused: false,
            resumed: Trigger::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Returns the record of whether the queue is paused.
    pub(crate) fn pause_record(&self) -> Record<'_> {
        Record {
            op: Some(Op::Pause),
            queue: cow(Some(&self.name)),
            paused: Some(self.paused),
            ..Record::default()
        }
    }
}

/// A queue: the original design once more, a bounded channel of task ids
/// and the workers that read it. What changes about a queue under the
/// store lock (paused, busy, waiting) is its [`QueueState`].
#[derive(Debug)]
pub(crate) struct Queue {
    /// Its name.
    pub(crate) name: Arc<str>,
    /// How many tasks may wait in it beyond the running ones.
    pub(crate) capacity: usize,
    /// The sending half: admission, and tasks that come due.
    pub(crate) jobs_tx: Sender<u64>,
    /// The receiving half: its workers.
    pub(crate) jobs_rx: Receiver<u64>,
}

impl Queue {
    /// Makes the channel of a configured queue.
    pub(crate) fn new(config: &QueueConfig) -> Queue {
        let (jobs_tx, jobs_rx) = async_channel::bounded(config.buffer);
        Queue {
            name: config.name.clone(),
            capacity: config.buffer,
            jobs_tx,
            jobs_rx,
        }
    }
}

/// A queue as `/queues`, `/metrics` and the event stream show it, read
/// under the store lock.
#[derive(Debug)]
pub(crate) struct QueueView<'a> {
    /// Its name.
    pub(crate) name: &'a str,
    /// Its workers.
    pub(crate) workers: usize,
    /// Its workers running an attempt.
    pub(crate) busy: u64,
    /// Tasks in it (cancelled ones count until a worker reaches them);
    /// not those due but waiting for room, though they enter before any
    /// new submission.
    pub(crate) depth: usize,
    /// Its capacity.
    pub(crate) capacity: usize,
    /// Whether it is paused.
    pub(crate) paused: bool,
}

impl QueueView<'_> {
    /// Appends the queue as the JSON object of `/queues`.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
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
