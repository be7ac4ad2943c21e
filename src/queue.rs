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
//! room — is a [`QueueState`] inside the store: its fields are private,
//! and its methods, which keep the depth in step with the channel, are
//! called only by the store's, under its lock. Both are indexed like
//! [`Config::queues`](crate::config::Config::queues); the workers
//! themselves are main.rs's ([`crate::work`]).
//!
//! A queue with `--rate` also keeps a token bucket ([`Bucket`]) in its
//! state: a start takes a token, and a worker that finds none keeps its
//! task and waits for the next, whose time is one entry on the due-time
//! heap ([`crate::later`]), not a timer of its own.

use crate::{
    config::{QueueConfig, Rate},
    json::VecWriter,
    record::{Op, Record, cow},
    trigger::Trigger,
};
use async_channel::{Receiver, Sender, TrySendError};
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;

use std::sync::Arc;

/// Why a queue refused a submission.
#[derive(Debug, PartialEq)]
pub(crate) enum Refused {
    /// It holds its capacity.
    Full,
    /// Shutdown has closed its channel.
    Closed,
}

/// What the store keeps of a queue: what changes under its lock. The
/// channel itself is in [`Queue`]; the methods that move ids into it are
/// given it.
#[derive(Debug)]
pub(crate) struct QueueState {
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
    /// Its `--rate`'s token bucket; `None` without one, so that a queue
    /// with no rate pays nothing for the feature.
    bucket: Option<Box<Bucket>>,
    /// Ids still in the channel (or in the hands of a worker that waits
    /// for the disk) whose task was taken back: the worker that gets one
    /// skips it.
    withdrawn: HashSet<u64>,
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
            bucket: config.rate.map(|rate| Box::new(Bucket::new(rate))),
            withdrawn: HashSet::new(),
        }
    }

    /// Returns the queue's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Counts its workers running an attempt.
    pub(crate) fn busy(&self) -> u64 {
        self.busy
    }

    /// Counts the tasks in it, as admission does.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Tells whether it is paused.
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// Tells whether `n` more tasks fit in it.
    pub(crate) fn has_room(&self, n: usize, queue: &Queue) -> bool {
        self.depth + n <= queue.capacity
    }

    /// Puts task `id`, just submitted, into the channel, and counts it;
    /// refused when the queue holds its capacity (`Full`) or shutdown has
    /// closed the channel (`Closed`).
    pub(crate) fn admit(&mut self, id: u64, queue: &Queue) -> Result<(), Refused> {
        if !self.has_room(1, queue) {
            return Err(Refused::Full);
        }
        match queue.jobs_tx.try_send(id) {
            Ok(()) => self.depth += 1,
            Err(TrySendError::Full(_)) => return Err(Refused::Full),
            Err(TrySendError::Closed(_)) => return Err(Refused::Closed),
        }
        Ok(())
    }

    /// Puts task `id` of a batch, whose room was checked, into the channel
    /// and counts it. Were the channel full anyway (its depth counts at
    /// least what it holds), the task would wait for room like a retry,
    /// not be lost.
    pub(crate) fn admit_checked(&mut self, id: u64, queue: &Queue) {
        if queue.jobs_tx.try_send(id).is_err() {
            self.waiting.push_back(id);
        }
        self.depth += 1;
    }

    /// Puts task `id`, whose time has come (a delayed task, a retry, a
    /// released one), into the queue behind those waiting for room.
    pub(crate) fn enqueue(&mut self, id: u64, queue: &Queue) {
        self.depth += 1;
        self.waiting.push_back(id);
        self.refill(queue);
    }

    /// Moves tasks waiting for room into the channel, oldest first, while
    /// it has room. A paused queue takes them too, as it takes new
    /// submissions (its workers hold what they take until the resume): what
    /// a restart or the due-time loop puts into it is in it, and counted so.
    pub(crate) fn refill(&mut self, queue: &Queue) {
        while let Some(&id) = self.waiting.front()
            && queue.jobs_tx.try_send(id).is_ok()
        {
            self.waiting.pop_front();
        }
    }

    /// Pauses or resumes the queue; returns whether that changed it.
    /// Resuming wakes the workers that wait, and lets tasks waiting for
    /// room in.
    pub(crate) fn set_paused(&mut self, paused: bool, queue: &Queue) -> bool {
        if self.paused == paused {
            return false;
        }
        self.paused = paused;
        if !paused {
            std::mem::replace(&mut self.resumed, Trigger::new()).fire();
            self.refill(queue);
        }
        true
    }

    /// Takes over a replayed journal's word that the queue is paused.
    pub(crate) fn restore_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Returns the trigger its resume fires, if it is paused: a worker
    /// keeps its task and waits for it.
    pub(crate) fn wait_for_resume(&self) -> Option<Trigger> {
        self.paused.then(|| self.resumed.clone())
    }

    /// Takes a token of its `--rate` at `now` (µs since the epoch), if it
    /// has one: `Ok` with no rate. Otherwise returns the trigger the next
    /// token fires and, if the due-time loop is not yet to say when that
    /// is, the time to tell it (ms since the epoch): one entry serves
    /// every worker that waits. `limited` says the worker waited once
    /// already, so that each start that had to is counted once.
    pub(crate) fn take_token(
        &mut self,
        now: u64,
        limited: bool,
    ) -> Result<(), (Trigger, Option<u64>)> {
        let Some(bucket) = self.bucket.as_deref_mut() else {
            return Ok(());
        };
        let Err(next) = bucket.take(now) else {
            return Ok(());
        };
        bucket.limited += u64::from(!limited);
        let tell = (bucket.due_at == 0).then(|| {
            bucket.due_at = next;
            next
        });
        Err((bucket.refilled.clone(), tell))
    }

    /// Acts on the due-time loop's word that a token has come: wakes the
    /// workers that wait for one.
    pub(crate) fn token_came(&mut self) {
        if let Some(bucket) = self.bucket.as_deref_mut() {
            bucket.due_at = 0;
            std::mem::replace(&mut bucket.refilled, Trigger::new()).fire();
        }
    }

    /// Counts a task a worker took out of the queue, begun or skipped, as
    /// gone from it, and lets a task waiting for room in.
    pub(crate) fn leave(&mut self, queue: &Queue) {
        self.depth -= 1;
        self.refill(queue);
    }

    /// Counts a worker that begins an attempt.
    pub(crate) fn begin(&mut self) {
        self.busy += 1;
    }

    /// Counts a worker whose attempt ended.
    pub(crate) fn end(&mut self) {
        self.busy -= 1;
    }

    /// Takes back queued task `id`, whose record could not be written: it
    /// is no longer counted, and if it is in the channel (or a worker's
    /// hands) rather than waiting for room, whoever gets it skips it.
    pub(crate) fn take_back(&mut self, id: u64) {
        self.depth -= 1;
        match self.waiting.iter().position(|&w| w == id) {
            Some(at) => drop(self.waiting.remove(at)),
            None => drop(self.withdrawn.insert(id)),
        }
    }

    /// Tells whether a worker that got task `id` is to skip it, taken back
    /// (its place in the channel was freed when the worker took it; a task
    /// waiting for room enters it).
    pub(crate) fn skip(&mut self, id: u64, queue: &Queue) -> bool {
        // Tuning: nearly always none was withdrawn, and a lookup would
        // hash the id for nothing.
        if self.withdrawn.is_empty() || !self.withdrawn.remove(&id) {
            return false;
        }
        self.refill(queue);
        true
    }

    /// Shows the queue, configured by `config` with channel `queue`.
    pub(crate) fn view<'a>(&self, config: &'a QueueConfig, queue: &Queue) -> QueueView<'a> {
        QueueView {
            name: &config.name,
            workers: config.workers,
            busy: self.busy,
            // Those waiting for room are not in the queue yet.
            depth: self.depth - self.waiting.len(),
            capacity: queue.capacity,
            paused: self.paused,
            rate: config.rate,
            rate_limited: self.bucket.as_ref().map_or(0, |b| b.limited),
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

/// A `--rate`'s token bucket: it holds up to N tokens, refilled one every
/// UNIT/N, and each start of a task takes one.
///
/// It is kept as the time the bucket would be full again (the "theoretical
/// arrival time" of the GCRA, ITU-T I.371), not as a count of tokens and a
/// timer to refill them: a start takes a token if the bucket, refilled up to
/// now, has one, which is arithmetic on two numbers. Times are scaled by N
/// (microseconds × N) so that UNIT/N needs no rounding: 3/s is exactly three
/// starts a second, not one every 333,333 µs.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// The limit it keeps.
    rate: Rate,
    /// When the bucket is full again, in µs since the epoch × N: each start
    /// moves it UNIT (× N / N) later, from now at the earliest.
    full_at: u128,
    /// When the due-time loop is to say the next token has come (ms since
    /// the epoch); 0 when no such entry is on its heap. One entry serves
    /// every worker that waits.
    due_at: u64,
    /// Fired when the next token comes (and then replaced): the workers
    /// that found the bucket empty wait for it.
    refilled: Trigger,
    /// Starts that had to wait for a token, for `/metrics`.
    limited: u64,
}

impl Bucket {
    /// A full bucket for `rate`.
    fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            full_at: 0,
            due_at: 0,
            refilled: Trigger::new(),
            limited: 0,
        }
    }

    /// Takes a token at `now` (µs since the epoch), or returns when the next
    /// one comes (ms since the epoch, rounded up so that it has come by
    /// then).
    fn take(&mut self, now: u64) -> Result<(), u64> {
        let (per, unit) = (
            u128::from(self.rate.per),
            u128::from(self.rate.unit_micros()),
        );
        let now = u128::from(now) * per;
        // The bucket lacks (full_at - now) / (UNIT / N) tokens, scaled: one
        // can be taken while it lacks fewer than N, i.e. at most N - 1.
        let from = self.full_at.max(now);
        if from - now > unit * (per - 1) {
            let next = (from - unit * (per - 1)).div_ceil(per);
            return Err(next.div_ceil(1000) as u64);
        }
        self.full_at = from + unit;
        Ok(())
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
    /// Its `--rate`, if any.
    pub(crate) rate: Option<Rate>,
    /// Starts that had to wait for a token of its `--rate`.
    pub(crate) rate_limited: u64,
}

impl QueueView<'_> {
    /// Appends the queue as the JSON object of `/queues`.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let _ = write!(
            VecWriter(out),
            "{{\"name\": \"{}\", \"workers\": {}, \"busy\": {}, \"depth\": {}, \
             \"capacity\": {}, \"paused\": {}, \"rate\": ",
            self.name,
            self.workers,
            self.busy,
            self.depth,
            self.capacity,
            self.paused
        );
        let _ = match self.rate {
            Some(rate) => write!(VecWriter(out), "\"{rate}\"}}"),
            None => write!(VecWriter(out), "null}}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes tokens from a bucket for `rate` at each of `at` (ms after a
    /// start), and returns what each take answered: `ok`, or how many ms
    /// after the start the next token comes.
    fn takes(per: u64, unit: char, at: &[u64]) -> Vec<String> {
        let start = 1_796_000_000_000u64;
        let mut bucket = Bucket::new(Rate { per, unit });
        at.iter()
            .map(|ms| match bucket.take((start + ms) * 1000) {
                Ok(()) => "ok".to_string(),
                Err(next) => (next - start).to_string(),
            })
            .collect()
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_one_token_every_unit_over_n() {
        /// Rate, times of the takes (ms), and what each answers.
        type Case<'a> = (u64, char, &'a [u64], &'a [&'a str]);
        let cases: &[Case] = &[
            // A full bucket of 5 lets 5 through at once; the next token
            // comes a fifth of a second after the first was taken.
            (
                5,
                's',
                &[0, 0, 0, 0, 0, 0],
                &["ok", "ok", "ok", "ok", "ok", "200"],
            ),
            (
                5,
                's',
                &[0, 0, 0, 0, 0, 199, 200, 200],
                &["ok", "ok", "ok", "ok", "ok", "200", "ok", "400"],
            ),
            // Refilled evenly: after a quiet spell the bucket is full
            // again, and never fuller than N.
            (
                2,
                's',
                &[0, 0, 5000, 5000, 5000],
                &["ok", "ok", "ok", "ok", "5500"],
            ),
            // One an hour: only the first, then an hour later.
            (
                1,
                'h',
                &[0, 1, 3_599_999, 3_600_000],
                &["ok", "3600000", "3600000", "ok"],
            ),
            (2, 'm', &[0, 0, 0, 30_000], &["ok", "ok", "30000", "ok"]),
            // UNIT/N need not be a whole number of µs: three a second are
            // three a second, the next token rounded up to the ms.
            (3, 's', &[0, 0, 0, 0], &["ok", "ok", "ok", "334"]),
            (
                3,
                's',
                &[0, 0, 0, 1000, 1000, 1000, 1000],
                &["ok", "ok", "ok", "ok", "ok", "ok", "1334"],
            ),
            // Faster than one a millisecond: tokens come within the ms.
            (1_000_000, 's', &[0, 1], &["ok", "ok"]),
        ];
        for &(per, unit, at, expected) in cases {
            assert_eq!(takes(per, unit, at), expected, "{per}/{unit} at {at:?}");
        }
    }

    #[test]
    fn a_million_a_second_lets_a_million_through_at_once_and_no_more() {
        let mut bucket = Bucket::new(Rate {
            per: 1_000_000,
            unit: 's',
        });
        let now = 1_796_000_000_000_000;
        assert!((0..1_000_000).all(|_| bucket.take(now).is_ok()));
        assert_eq!(bucket.take(now), Err(now / 1000 + 1));
        assert_eq!(bucket.take(now + 1), Ok(()));
    }

    #[test]
    fn a_queue_shows_its_rate_or_null() {
        let mut view = QueueView {
            name: "api",
            workers: 2,
            busy: 1,
            depth: 3,
            capacity: 10,
            paused: false,
            rate: Some(Rate { per: 10, unit: 's' }),
            rate_limited: 0,
        };
        let mut out = Vec::new();
        view.write_json(&mut out);
        view.rate = None;
        out.push(b'\n');
        view.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"name\": \"api\", \"workers\": 2, \"busy\": 1, \"depth\": 3, \"capacity\": 10, \
             \"paused\": false, \"rate\": \"10/s\"}\n\
             {\"name\": \"api\", \"workers\": 2, \"busy\": 1, \"depth\": 3, \"capacity\": 10, \
             \"paused\": false, \"rate\": null}"
        );
    }
}
