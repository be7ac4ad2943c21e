//! Every task, behind one lock: admission, every change of state,
//! eviction, idempotency keys and cancels — the one place tasks change.
//!
//! A task is a small record in one [`Store`] behind one mutex
//! ([`Shared::store`](crate::shared::Shared::store)). Every change happens
//! under that lock, which is what makes admission atomic — in
//! [`Store::admit`] the task's id goes into its queue's channel with
//! `try_send` and the record is stored, both or neither (the Go original
//! checked the length, then sent, which races), so no worker can receive
//! an id whose record does not exist yet — and lets the `/tasks` counts
//! and `/metrics` agree at every moment.
//!
//! # The choke point
//!
//! The store's fields are private: other modules read through its
//! accessors and change tasks only through its methods. Every change of a
//! task's state goes through [`Store::set_state`], where the journal
//! record, the counters `/metrics` reads, the long-poll wake-up and the
//! event for `/events` are made, in that order, from the same values. So
//! that the lock is held for microseconds, nothing here waits: a queue is
//! tried with `try_send`, records go to the journal's writer thread and
//! tasks to the due-time loop on channels that never block, long polls
//! and running work are woken by firing a [`Trigger`]. And nothing here
//! can take the lock again: the store holds no path back to its own
//! mutex, and its methods are given `&Config` and `&[Queue]`, never the
//! `Shared` that could lock.
//! What a change brings about — tasks waiting for it released, or
//! cancelled down a chain ([`crate::deps`] says which) — goes through the
//! same choke point, each once, in a worklist rather than by recursion.
//!
//! With `--data-dir`, the store is where the journal's durability
//! protocol begins (records are sent in the order the changes happen,
//! through the [`Outbox`]) and where a batch's outcome is settled
//! ([`Store::settle`]); the protocol is stated once, in [`crate::journal`].
//! How a change reaches the event streams is [`crate::events`]'s; the
//! store only calls [`Store::publish`].
//!
//! Read [`Store::admit`] first, then [`Store::set_state`]; a worker's
//! side is [`Store::begin_attempt`]: a cancelled task is skipped there
//! (its id was still in the channel), and a paused queue, or one whose
//! `--rate` has no token, makes the worker keep its task and wait. A batch
//! is admitted whole by [`Store::admit_batch`]. `tests/lifecycle.rs`
//! prints what these cost under the lock (`bench_cancel_latency`,
//! `bench_waking_a_thousand_waiters`, `bench_listing_10000_retained_tasks`).
//!
//! # Its parts
//!
//! The store is one value with one lock, but most of what it keeps is a
//! part with rules of its own, in a module of its own, whose fields only
//! that module sees; the store calls them and keeps what a change means
//! across them:
//!
//! - [`Table`]: the records in id order, the ids issued, the counts per
//!   state, tombstones. Other modules read tasks through it
//!   ([`Store::tasks`]); only the store changes them.
//! - [`QueueState`]: each queue's depth, busy workers, pause, the tasks
//!   waiting for room, the ids taken back while in its channel, and the
//!   `--rate` bucket, in step with the channel.
//! - [`Deps`]: which waiting tasks wait for which (`after`).
//! - [`Keys`]: the task each `Idempotency-Key` names. A repeat of the
//!   request that made it gets that task ([`Admission::Repeat`], with a
//!   batch's every task: [`Store::batch`]), another request
//!   [`Admission::KeyReused`]; decided under the lock, so racing repeats
//!   make one task.
//! - [`Retention`]: the finished tasks in the order they finished, and
//!   which go by `--keep-finished` and `--keep-finished-for`.
//! - [`Outbox`]: with `--data-dir`, the records on their way to the
//!   journal and the cancels that wait for theirs.
//! - [`BatchPlan`]: a batch worked out whole before any task is made.
//!
//! What the tasks can make the server hold is bounded by the flags:
//! `503` once a queue holds its capacity or `--max-scheduled` tasks wait,
//! finished tasks beyond `--keep-finished` evicted, a task's strings at
//! most `--max-body`, a program's result and error 4 KiB tails
//! ([`crate::handlers`]). A retry waiting for its backoff is not counted
//! against its queue (it was admitted within it once); when due, it
//! enters ahead of new submissions.

use crate::{
    config::Config,
    cron::{ScheduleState, Spec},
    deps::{Deps, Fate, blocked_error, check_after, fate},
    events::EventLog,
    journal::{Awaiting, Change, JournalEntry, JournalSender, Replayed},
    keys::Keys,
    later::Due,
    outbox::{Outbox, Settled},
    plan::BatchPlan,
    queue::{Queue, QueueState, QueueView, Refused},
    record::write_record,
    retention::Retention,
    table::{Lookup, Table},
    task::{
        Cancel, IdRef, IdempotencyKey, Names, NewTask, Outcome, STATES, State, Task, TaskId, Text,
        Work, backoff,
    },
    time::{now_micros, now_millis},
    trigger::Trigger,
};
use async_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What the store answers to a submission: everything the answer shows,
/// so that it is made after the lock is released.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The task was created with this id, in this state (`waiting`,
    /// `scheduled`, `queued`, or `cancelled` when a dependency had ended
    /// badly already); with a journal, the receiver tells whether its
    /// record reached the disk.
    Created(TaskId, State, Option<Receiver<bool>>),
    /// The idempotency key names a retained task, made by the same
    /// request: its id, label and state.
    Repeat(TaskId, Option<Text>, State),
    /// The idempotency key names a retained task made by another request.
    KeyReused,
    /// The task's queue is full.
    Full,
    /// `--max-scheduled` delayed and waiting tasks are waiting already.
    TooManyScheduled,
    /// An id of its `after` names no retained task: the `400`'s sentence.
    BadAfter(String),
    /// An item of a batch: the `400`'s sentence for the item at this index.
    BadItem(usize, String),
    /// Shutdown has begun.
    ShuttingDown,
}

/// A batch the store admitted: each task's id and state, in order, and
/// with a journal the receiver told whether their records reached the
/// disk.
pub(crate) type Batch = (Vec<(TaskId, State)>, Option<Receiver<bool>>);

/// What a worker finds when it takes a task from its queue.
#[derive(Debug)]
pub(crate) enum Begin {
    /// The attempt has begun: its work.
    Work(Work),
    /// The task is no longer queued (a client cancelled it): skip it.
    Skip,
    /// The queue is paused: the worker keeps the task, still counted in
    /// the queue, and begins it when this trigger fires on the resume.
    Paused(Trigger),
    /// The queue's `--rate` has no token left: the worker keeps the task,
    /// still `queued` and counted in the queue, and tries again when this
    /// trigger fires, as the next token comes.
    Limited(Trigger),
}

/// The store's counters that `/metrics` reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Tasks created by requests.
    pub(crate) accepted: u64,
    /// Tasks that reached each terminal state, indexed like [`STATES`].
    pub(crate) finished: [u64; STATES.len()],
}

/// Every task and the indexes over them.
#[derive(Debug)]
pub(crate) struct Store {
    /// Every task's record, in id order, with the ids issued.
    tasks: Table,
    /// The finished tasks in the order they finished, and how long they
    /// stay.
    retention: Retention,
    /// Each queue's state, indexed like [`Config::queues`].
    queues: Vec<QueueState>,
    /// Each schedule's firings, indexed like [`Config::schedules`].
    schedules: Vec<ScheduleState>,
    /// Where what must wait for a time goes (delayed tasks, retries, the
    /// next eviction by age, a `--rate`'s next token): the due-time loop,
    /// as (due ms, what).
    due_tx: Sender<(u64, Due)>,
    /// How many delayed and waiting tasks may wait at once.
    max_scheduled: usize,
    /// Which waiting tasks wait for which tasks.
    deps: Deps,
    /// Idempotency keys of retained tasks, and their batches.
    keys: Keys,
    /// Long polls waiting for a task to change, by id.
    watchers: HashMap<u64, Trigger>,
    /// Cancel signals of running tasks, by id.
    cancels: HashMap<u64, Trigger>,
    /// What `/metrics` reports.
    counters: Counters,
    /// Set once shutdown begins: submissions get `503`.
    closed: bool,
    /// The records on their way to the journal, with `--data-dir`, and
    /// what waits for them.
    outbox: Outbox,
    /// Where the `/events` streams are told of every change (shared with
    /// them, and with [`Shared`](crate::shared::Shared)).
    events: Arc<EventLog>,
}

impl Store {
    /// Creates an empty store for `config`'s queues and limits, sending
    /// what must wait for a time to `due_tx`.
    pub(crate) fn new(config: &Config, due_tx: Sender<(u64, Due)>, events: Arc<EventLog>) -> Store {
        Store {
            tasks: Table::new(config.node),
            retention: Retention::new(config),
            queues: config.queues.iter().map(QueueState::new).collect(),
            schedules: config.schedules.iter().map(ScheduleState::new).collect(),
            due_tx,
            max_scheduled: config.max_scheduled,
            deps: Deps::default(),
            keys: Keys::default(),
            watchers: HashMap::new(),
            cancels: HashMap::new(),
            counters: Counters::default(),
            closed: false,
            outbox: Outbox::default(),
            events,
        }
    }

    /// Admits a new task: puts its id into its queue's channel (or, for a
    /// delayed task, hands it to the due-time loop; a task with
    /// dependencies not yet succeeded waits for them) and records it, both
    /// or neither. The caller holds the store lock, so no worker can
    /// receive the id before the record exists. A task whose dependency
    /// has ended badly already is created and cancelled at once: the same
    /// outcome as if it had ended a moment later.
    pub(crate) fn admit(&mut self, new: NewTask, queues: &[Queue]) -> Admission {
        if self.closed {
            return Admission::ShuttingDown;
        }
        if let Some(repeat) = new.key.as_ref().and_then(|key| self.repeat(key)) {
            return repeat;
        }
        let fate = match new.after.as_deref() {
            None => Fate::Ready,
            Some(after) => match check_after(&self.tasks, after) {
                Ok(after) => fate(&after, |dep| self.tasks.get(dep).map(|t| t.state)),
                Err(sentence) => return Admission::BadAfter(sentence),
            },
        };
        let id = self.tasks.issue_id();
        let q = usize::from(new.queue);
        let delayed = new.run_at > now_millis();
        let state = match fate {
            Fate::Ready if !delayed => {
                match self.queues[q].admit(id, &queues[q]) {
                    Ok(()) => {}
                    Err(Refused::Full) => return Admission::Full,
                    Err(Refused::Closed) => return Admission::ShuttingDown,
                }
                State::Queued
            }
            // Cancelled at once, below: it never waits.
            Fate::Blocked(..) => State::Waiting,
            _ if self.tasks.count(State::Scheduled) + self.tasks.count(State::Waiting)
                >= self.max_scheduled =>
            {
                return Admission::TooManyScheduled;
            }
            Fate::Ready => State::Scheduled,
            Fate::Waiting(_) => State::Waiting,
        };
        self.record_new(id, new, state);
        let saved = self.outbox.is_journaled().then(|| {
            let (done, saved) = async_channel::bounded(1);
            let mut line = Vec::with_capacity(160);
            self.write_new(&mut line);
            self.outbox.send(line, Awaiting::New { id, done });
            saved
        });
        let state = self.meet_fate(id, fate, state, queues);
        Admission::Created(self.tasks.task_id(id), state, saved)
    }

    /// Admits a batch (SPEC §15): every task or none. Everything is
    /// checked first — each item's `after`, each queue's room for all of
    /// the batch's tasks in it, and `--max-scheduled` for all of its
    /// delayed and waiting ones — and only then is each task made as
    /// [`Store::admit`] makes one; all under the one lock, so no other
    /// submission can take the room meanwhile. An item's `after` may name
    /// an earlier item (`"#N"`), which gets its real id. With a journal the
    /// batch is one entry: one write, one fsync; its tasks meet their fate
    /// (wait, or are cancelled for a dependency that ended badly) once its
    /// `new` records are on their way, so that no record of theirs comes
    /// before those. An idempotency key names the first task, and the
    /// batch's ids are kept.
    pub(crate) fn admit_batch(
        &mut self,
        news: Vec<NewTask>,
        key: Option<IdempotencyKey>,
        queues: &[Queue],
    ) -> Result<Batch, Admission> {
        if self.closed {
            return Err(Admission::ShuttingDown);
        }
        if let Some(repeat) = key.as_ref().and_then(|key| self.repeat(key)) {
            return Err(repeat);
        }
        let plan = BatchPlan::new(&self.tasks, &news, self.queues.len(), now_millis())?;
        let waiting = self.tasks.count(State::Scheduled) + self.tasks.count(State::Waiting);
        if plan.waits() > 0 && waiting + plan.waits() > self.max_scheduled {
            return Err(Admission::TooManyScheduled);
        }
        let full = |(q, &n): (usize, &usize)| n > 0 && !self.queues[q].has_room(n, &queues[q]);
        if plan.entering().iter().enumerate().any(full) {
            return Err(Admission::Full);
        }
        let mut line = (self.outbox.is_journaled()).then(|| Vec::with_capacity(news.len() * 160));
        let mut ids: Vec<u64> = Vec::with_capacity(news.len());
        for (mut new, state) in news.into_iter().zip(plan.states()) {
            let id = self.tasks.issue_id();
            new.key = key.clone();
            // "#N" becomes the id item N was given.
            for dep in new.after.iter_mut().flat_map(|a| a.iter_mut()) {
                if let Some(n) = dep.batch_item() {
                    let num = ids[n];
                    let node = Text::new(self.tasks.task_id(num).node);
                    *dep = IdRef { num, node };
                }
            }
            if state == State::Queued {
                let q = usize::from(new.queue);
                self.queues[q].admit_checked(id, &queues[q]);
            }
            self.record_new(id, new, state);
            if let Some(line) = &mut line {
                self.write_new(line);
            }
            ids.push(id);
        }
        if key.is_some() {
            self.keys.add_batch(&ids);
        }
        let saved = line.map(|line| {
            let (done, saved) = async_channel::bounded(1);
            let ids = ids.clone().into_boxed_slice();
            self.outbox.send(line, Awaiting::Batch { ids, done });
            saved
        });
        let mut made = Vec::with_capacity(ids.len());
        for (&id, (fate, state)) in ids.iter().zip(plan.fates(&ids)) {
            let state = self.meet_fate(id, fate, state, queues);
            made.push((self.tasks.task_id(id), state));
        }
        Ok((made, saved))
    }

    /// Records a new task whose place in its queue (or the due-time loop's
    /// word, if it is scheduled) is taken: the store's record, its key and
    /// the counters.
    fn record_new(&mut self, id: u64, new: NewTask, state: State) {
        self.counters.accepted += 1;
        if let Some(key) = &new.key {
            self.keys.add(key, id);
        }
        if state == State::Scheduled {
            // The due-time loop ends only at shutdown, when it no longer matters.
            let _ = self.due_tx.try_send((new.run_at, Due::Task(id)));
        }
        self.tasks.push(Task::from_new(id, new, state));
    }

    /// Appends the `new` record of the task just recorded.
    fn write_new(&self, line: &mut Vec<u8>) {
        if let Some(task) = self.tasks.last() {
            write_record(line, &task.new_record(self.names(task)));
        }
    }

    /// Tells the event streams of new task `id`, then makes what its
    /// dependencies say of it: it waits for those not yet ended, or is
    /// cancelled for one that ended badly. Returns its state.
    fn meet_fate(&mut self, id: u64, fate: Fate, state: State, queues: &[Queue]) -> State {
        let Some(i) = self.tasks.index(id) else {
            return state;
        };
        self.publish(i, self.tasks[i].created_at());
        match fate {
            Fate::Waiting(pending) => {
                self.deps.wait(id, &pending);
                state
            }
            Fate::Blocked(dep, ended) => {
                let why = blocked_error(self.tasks.task_id(dep), ended);
                self.tasks[i].extra_mut().error = Some(why.into());
                self.set_state(i, State::Cancelled, queues);
                State::Cancelled
            }
            Fate::Ready => state,
        }
    }

    /// Returns the tasks of the batch whose first task is `first` (or that
    /// one task, if it was no batch), as an idempotent repeat shows them:
    /// id, label and state of each still retained, in order.
    pub(crate) fn batch(&self, first: u64) -> Vec<(TaskId, Option<Text>, State)> {
        let one = [first];
        let ids = self.keys.batch(first).unwrap_or(&one);
        ids.iter()
            .filter_map(|&id| self.tasks.get(id))
            .map(|t| (self.tasks.task_id(t.id), t.label.clone(), t.state))
            .collect()
    }

    /// Answers a request whose idempotency key names a retained task: the
    /// repeat of the request that made it, or the key's misuse by another.
    /// `None` when no retained task has the key.
    fn repeat(&self, key: &IdempotencyKey) -> Option<Admission> {
        let id = self.keys.task(key)?;
        let task = self.tasks.get(id);
        let first = task.and_then(|t| t.extra.as_ref()?.key.as_ref());
        Some(match first.map_or(0, |k| k.fingerprint) {
            f if f == 0 || f == key.fingerprint => Admission::Repeat(
                self.tasks.task_id(id),
                task.and_then(|t| t.label.clone()),
                task.map_or(State::Queued, |t| t.state),
            ),
            _ => Admission::KeyReused,
        })
    }

    /// Submits again the task `old` names, which ended `failed` or
    /// `cancelled` (`POST /tasks/{id}/retry`): a new task with its members,
    /// queued now, made from it; the old one is unchanged. `Err` is what
    /// the lookup found instead: `Found(i)` for a task not ended so (a
    /// `409`). A repeated idempotency key finds its task even once the
    /// old one is gone, as on `POST /tasks`.
    pub(crate) fn retry(
        &mut self,
        old: &IdRef,
        key: Option<IdempotencyKey>,
        queues: &[Queue],
    ) -> Result<Admission, Lookup> {
        if self.closed {
            return Ok(Admission::ShuttingDown);
        }
        if let Some(repeat) = key.as_ref().and_then(|key| self.repeat(key)) {
            return Ok(repeat);
        }
        let i = match self.tasks.lookup_ref(old) {
            Lookup::Found(i) => i,
            other => return Err(other),
        };
        let task = &self.tasks[i];
        if !matches!(task.state, State::Failed | State::Cancelled) {
            return Err(Lookup::Found(i));
        }
        let new = NewTask {
            key,
            ..task.retry()
        };
        Ok(self.admit(new, queues))
    }

    /// Puts a task whose time has come (a delayed task, or a retry) into
    /// its queue, behind those already waiting for room.
    fn enqueue(&mut self, id: u64, queues: &[Queue]) {
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let q = usize::from(task.queue);
        self.queues[q].enqueue(id, &queues[q]);
    }

    /// Acts on a task the due-time loop says is due: a delayed task becomes
    /// queued, and it or a retry enters its queue. A task cancelled since
    /// is left alone.
    pub(crate) fn make_due(&mut self, id: u64, queues: &[Queue]) {
        let Some(i) = self.tasks.index(id) else {
            return;
        };
        let task = &self.tasks[i];
        let retry = task.extra.as_ref().is_some_and(|e| e.retry_at != 0);
        match task.state {
            State::Scheduled => self.set_state(i, State::Queued, queues),
            State::Queued if retry => {}
            _ => return,
        }
        self.enqueue(id, queues);
    }

    /// Pauses or resumes queue `q`. A paused queue's workers start
    /// nothing; resuming wakes those that wait, and lets tasks waiting for
    /// room in. With a journal, the record is on disk already: the writer
    /// makes the change ([`Store::settle`]).
    pub(crate) fn set_paused(&mut self, q: usize, paused: bool, queues: &[Queue]) {
        if self.queues[q].set_paused(paused, &queues[q]) {
            self.events.changed();
        }
    }

    /// Returns the names of a task's queue and schedule.
    pub(crate) fn names(&self, task: &Task) -> Names<'_> {
        let schedule = task.extra.as_ref().and_then(|e| e.schedule);
        Names {
            id: self.tasks.task_id(task.id),
            nodes: self.tasks.nodes(),
            queue: self.queues[usize::from(task.queue)].name(),
            schedule: schedule.map(|s| self.schedules[usize::from(s)].name()),
        }
    }

    /// Counts the workers running an attempt, in every queue.
    pub(crate) fn busy(&self) -> u64 {
        self.queues.iter().map(QueueState::busy).sum()
    }

    /// Moves the task at index `i` to `state`, keeping counts, waking long
    /// polls, letting the tasks that wait for it follow, and queueing
    /// terminal tasks for eviction — which may move records, so `i` is not
    /// to be used afterwards.
    ///
    /// This is the one choke point of change: the journal record, the
    /// counters `/metrics` reads, the long-poll wake-up and the event for
    /// `/events` are all made here, in that order, from the same values —
    /// for the change itself and for each one it brings about (a waiting
    /// task released, or cancelled down a chain). Starts are not journaled
    /// (the durability protocol, in [`crate::journal`]).
    fn set_state(&mut self, i: usize, state: State, queues: &[Queue]) {
        self.transition(i, state, now_millis(), state != State::Running, queues);
    }

    /// Makes a change as [`Store::set_state`] does, as of `now` (ms since
    /// the epoch: a client's cancel is made as of when its record was);
    /// `journaled` tells whether its record is written now (a client's
    /// cancel's was written before it is made).
    fn transition(&mut self, i: usize, state: State, now: u64, journaled: bool, queues: &[Queue]) {
        let id = self.tasks[i].id;
        self.change(i, state, now, journaled);
        if state.is_terminal() {
            if self.deps.has_dependents(id) {
                self.follow(id, state, now, queues);
            }
            self.evict_sparing(id);
        }
    }

    /// Changes the state of the task at index `i`, and nothing else: its
    /// record, counts, wake-up and event. Moves no record.
    fn change(&mut self, i: usize, state: State, now: u64, journaled: bool) {
        let id = self.tasks[i].id;
        let old = self.tasks.move_to(i, state);
        let task = &mut self.tasks[i];
        if state == State::Running {
            task.started_at = now;
        } else if state.is_terminal() {
            task.finished_at = now;
        }
        if journaled {
            self.outbox.send_state(&self.tasks[i]);
        }
        self.outbox.task_changed(id);
        if old == State::Waiting {
            self.deps.forget(id);
        }
        if state.is_terminal() {
            self.counters.finished[state as usize] += 1;
        }
        self.wake_watchers(id);
        self.publish(i, now);
        if state.is_terminal()
            && let Some(due) = self.retention.finished(id, now)
        {
            // The due-time loop ends only at shutdown, when it no longer matters.
            let _ = self.due_tx.try_send((due, Due::Expiry));
        }
    }

    /// Lets the tasks that wait for task `id`, which has just ended in
    /// `state`, follow it: released when it was their last dependency to
    /// succeed; cancelled when it failed or was cancelled, and so on down
    /// the chain. Each is a change of its own, journaled and published.
    ///
    /// A worklist, not recursion: a chain of ten thousand tasks cancelled
    /// by its head is ten thousand turns of one loop, not ten thousand
    /// nested calls, and each turn costs what one change costs.
    fn follow(&mut self, id: u64, state: State, now: u64, queues: &[Queue]) {
        let mut ended = VecDeque::from([(id, state)]);
        while let Some((dep, state)) = ended.pop_front() {
            if state == State::Succeeded {
                for waiting in self.deps.succeeded(dep) {
                    self.release(waiting, now, queues);
                }
                continue;
            }
            let dep_id = self.tasks.task_id(dep);
            for waiting in self.deps.ended_badly(dep) {
                let Some(i) = self.tasks.index(waiting) else {
                    continue;
                };
                self.tasks[i].extra_mut().error = Some(blocked_error(dep_id, state).into());
                self.change(i, State::Cancelled, now, true);
                if self.deps.has_dependents(waiting) {
                    ended.push_back((waiting, State::Cancelled));
                }
            }
        }
    }

    /// Releases waiting task `id`, whose dependencies have all succeeded:
    /// it goes on as if just submitted without them — `scheduled` if its
    /// `run_at` is still ahead, else `queued`, entering its queue behind
    /// those waiting for room.
    fn release(&mut self, id: u64, now: u64, queues: &[Queue]) {
        let Some(i) = self.tasks.index(id) else {
            return;
        };
        let run_at = self.tasks[i].run_at;
        if run_at > now {
            self.change(i, State::Scheduled, now, true);
            // The due-time loop ends only at shutdown, when it no longer matters.
            let _ = self.due_tx.try_send((run_at, Due::Task(id)));
        } else {
            self.change(i, State::Queued, now, true);
            self.enqueue(id, queues);
        }
    }

    /// Evicts the earliest finished tasks beyond `--keep-finished`.
    fn evict(&mut self) {
        self.evict_sparing(0);
    }

    /// Evicts the earliest finished tasks beyond `--keep-finished`, but
    /// task `spare`, whose change made them too many
    /// ([`Retention::beyond`]).
    fn evict_sparing(&mut self, spare: u64) {
        while let Some(id) = self.retention.beyond(spare) {
            self.evict_task(id);
        }
        self.tasks.sweep();
    }

    /// Evicts finished task `id`, which retention let go, if it is still
    /// retained: only a tombstone of its id is left.
    fn evict_task(&mut self, id: u64) {
        let Some(i) = self.tasks.index(id) else {
            return;
        };
        let key = self.tasks.bury(i);
        if let Some(key) = key {
            self.keys.forget(&key, id);
        }
        self.wake_watchers(id);
    }

    /// Evicts the finished tasks older than `--keep-finished-for` as of
    /// `now`: the due-time loop's entry for it came due. Returns when the
    /// next one is due, for the loop's one entry of it; `None` when no
    /// finished task is left (the next to finish arms it again).
    pub(crate) fn expire(&mut self, now: u64) -> Option<u64> {
        loop {
            let tasks = &self.tasks;
            let finished_at = |id| tasks.get(id).map(|t| t.finished_at);
            let Some(id) = self.retention.expired(now, finished_at) else {
                break;
            };
            self.evict_task(id);
        }
        self.tasks.sweep();
        let tasks = &self.tasks;
        self.retention
            .rearm(|id| tasks.get(id).map(|t| t.finished_at))
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

    /// Starts an attempt of a task a worker of queue `q` took from its
    /// channel, unless the queue is paused (the worker keeps the task and
    /// tries again on the resume), its `--rate` has no token now (the
    /// worker keeps it and tries again when the next one comes; `limited`
    /// says it has waited for one already, so that the start is counted
    /// once among those that had to), or the task is no longer queued (a
    /// client cancelled it). The task leaves the queue, and a waiting one
    /// enters.
    pub(crate) fn begin_attempt(
        &mut self,
        id: u64,
        q: usize,
        queues: &[Queue],
        limited: bool,
    ) -> Begin {
        if self.queues[q].skip(id, &queues[q]) {
            return Begin::Skip;
        }
        if let Some(resumed) = self.queues[q].wait_for_resume() {
            return Begin::Paused(resumed);
        }
        let i = self
            .tasks
            .index(id)
            .filter(|&i| self.tasks[i].state == State::Queued);
        // A token is taken only by a task that starts: a paused queue, or
        // a task cancelled while it waited, takes none.
        if i.is_some()
            && let Err((refilled, tell)) = self.queues[q].take_token(now_micros(), limited)
        {
            if let Some(next) = tell {
                // The due-time loop ends only at shutdown, when workers
                // stop waiting anyway.
                let _ = self.due_tx.try_send((next, Due::Token(q)));
            }
            return Begin::Limited(refilled);
        }
        self.queues[q].leave(&queues[q]);
        let Some(i) = i else {
            return Begin::Skip;
        };
        let task_id = self.tasks.task_id(id);
        let after = self.tasks[i].after().iter();
        let after = after.map(|&dep| self.tasks.task_id(dep)).collect();
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
            after,
        };
        if let Some(e) = task.extra.as_deref_mut() {
            e.retry_at = 0;
        }
        self.queues[q].begin();
        self.set_state(i, State::Running, queues);
        Begin::Work(work)
    }

    /// Acts on the due-time loop's word that queue `q`'s `--rate` has a
    /// token again: wakes the workers that wait for one. Each tries to take
    /// it; those that find none again put the next token on the heap.
    pub(crate) fn refill_bucket(&mut self, q: usize) {
        self.queues[q].token_came();
    }

    /// Records how an attempt in queue `q` ended. A failed attempt with
    /// attempts left goes to the due-time loop for its retry; returns when it
    /// is due (ms since the epoch). Tasks that wait for this one follow its
    /// end.
    pub(crate) fn end_attempt(
        &mut self,
        id: u64,
        q: usize,
        outcome: Outcome,
        queues: &[Queue],
    ) -> Option<u64> {
        // Tuning, as in `wake_watchers`: most attempts made no trigger.
        if !self.cancels.is_empty() {
            self.cancels.remove(&id);
        }
        self.queues[q].end();
        let i = self
            .tasks
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
                self.set_state(i, State::Succeeded, queues);
                None
            }
            Outcome::Failed(error) if task.attempt < task.max_attempts => {
                let retry_at = now_millis() + backoff(task.attempt).as_millis() as u64;
                let extra = task.extra_mut();
                extra.error = Some(error.into());
                extra.retry_at = retry_at;
                self.set_state(i, State::Queued, queues);
                // The due-time loop ends only at shutdown, when a lost retry is
                // what shutdown means anyway.
                let _ = self.due_tx.try_send((retry_at, Due::Task(id)));
                Some(retry_at)
            }
            Outcome::Failed(error) => {
                task.extra_mut().error = Some(error.into());
                self.set_state(i, State::Failed, queues);
                None
            }
            // Cancelled tasks changed state when the client asked; an
            // interrupted attempt stays running until the process exits.
            Outcome::Cancelled | Outcome::Interrupted => None,
        }
    }

    /// Sets the progress a running task's handler reported. It is journaled
    /// with the task's next change of state, not on its own.
    pub(crate) fn set_progress(&mut self, id: u64, progress: Box<str>) {
        let Some(i) = self.tasks.index(id) else {
            return;
        };
        let task = &mut self.tasks[i];
        if task.state == State::Running {
            task.extra_mut().progress = Some(progress);
            self.publish(i, now_millis());
        }
    }

    /// Cancels a waiting, scheduled, queued or running task (and the tasks
    /// that wait for it): at once without a journal; with one, once its
    /// record is on disk (the durability protocol of [`crate::journal`]),
    /// and the receiver tells whether it got there.
    /// `Err(Found(i))` when it is already terminal.
    pub(crate) fn cancel(&mut self, id: u64, queues: &[Queue]) -> Result<Cancel, Lookup> {
        let i = match self.tasks.lookup(id) {
            Lookup::Found(i) => i,
            other => return Err(other),
        };
        if self.tasks[i].state.is_terminal() {
            return Err(Lookup::Found(i));
        }
        if self.outbox.is_journaled() {
            return Ok(Cancel::Saving(self.outbox.send_cancel(&self.tasks[i])));
        }
        self.make_cancel(i, now_millis(), queues);
        // Cancelling may have evicted older tasks, moving this one.
        match self.tasks.lookup(id) {
            Lookup::Found(i) => Ok(Cancel::Made(i)),
            other => Err(other),
        }
    }

    /// Makes the cancel of the task at index `i`, as of `at`: its work, if
    /// it runs, is interrupted, and it is `cancelled`. Its record was
    /// written before (with a journal).
    fn make_cancel(&mut self, i: usize, at: u64, queues: &[Queue]) {
        if let Some(cancel) = self.cancels.get(&self.tasks[i].id) {
            cancel.fire();
        }
        self.transition(i, State::Cancelled, at, false, queues);
    }

    /// Returns the trigger that `cancel` fires for a running task, made when
    /// its work first waits (work that never waits needs none); `None` if
    /// the task is no longer running — it was cancelled already.
    pub(crate) fn cancel_trigger(&mut self, id: u64) -> Option<Trigger> {
        let running = self
            .tasks
            .get(id)
            .is_some_and(|t| t.state == State::Running);
        running.then(|| self.cancels.entry(id).or_insert_with(Trigger::new).clone())
    }

    /// Returns the trigger a long poll waits on for `id` to change.
    pub(crate) fn watch(&mut self, id: u64) -> Trigger {
        self.watchers.entry(id).or_insert_with(Trigger::new).clone()
    }

    /// Returns what `/metrics` and the `stats` event count.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Returns each schedule's firings, indexed like [`Config::schedules`].
    pub(crate) fn schedules(&self) -> &[ScheduleState] {
        &self.schedules
    }

    /// Returns what changes about each queue under the lock, indexed like
    /// [`Config::queues`].
    pub(crate) fn queues(&self) -> &[QueueState] {
        &self.queues
    }

    /// Returns every task's record: the table other modules look tasks up
    /// in, and read them from.
    pub(crate) fn tasks(&self) -> &Table {
        &self.tasks
    }

    /// Tells whether changes are journaled (`--data-dir`).
    pub(crate) fn is_journaled(&self) -> bool {
        self.outbox.is_journaled()
    }

    /// Starts journaling changes to `journal` (once, at start-up, after
    /// the replayed tasks are restored).
    pub(crate) fn attach_journal(&mut self, journal: JournalSender) {
        self.outbox.attach(journal);
    }

    /// Closes the journal's channel: the writer thread writes what it has
    /// and ends. Called once the executor has stopped, so that what the
    /// last moments changed is written before the process ends.
    pub(crate) fn close_journal(&self) {
        self.outbox.close();
    }

    /// Refuses every submission from now on: shutdown has begun.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Counts a firing of schedule `i` of `spec` due at `at`, which `made`
    /// a task or was skipped; returns when it fires next
    /// ([`ScheduleState::fired`]).
    pub(crate) fn schedule_fired(
        &mut self,
        i: usize,
        spec: &Spec,
        at: u64,
        made: Result<u64, String>,
    ) -> Option<u64> {
        self.schedules[i].fired(spec, at, made)
    }

    /// Journals that queue `q` is to be paused or resumed; the writer
    /// makes the change once the record is on disk, and the receiver tells
    /// whether it did.
    pub(crate) fn journal_pause(&mut self, q: usize, paused: bool) -> Receiver<bool> {
        let record = self.queues[q].pause_record();
        self.outbox.send_pause(record, q, paused)
    }

    /// Settles a batch once it is written or has failed (step 2 of [the
    /// durability protocol](crate::journal#the-durability-protocol), under
    /// the store lock): if it failed, its new tasks are taken back and its
    /// changes are not made; if it was written, its changes are made, in
    /// the order of their records. Those waiting for the changes are told.
    /// Tasks that wait for a task taken back never see it succeed: they
    /// are cancelled as if it had been — once every task of the batch is
    /// taken back, so that none of those is cancelled first.
    pub(crate) fn settle(&mut self, batch: &[JournalEntry], written: bool, queues: &[Queue]) {
        let mut lost = Vec::new();
        for entry in batch {
            match &entry.awaiting {
                Awaiting::New { id, .. } if !written => {
                    self.take_back(*id);
                    lost.push(*id);
                }
                Awaiting::Batch { ids, .. } if !written => {
                    for &id in ids {
                        self.take_back(id);
                    }
                    lost.extend_from_slice(ids);
                }
                Awaiting::Change(Change::Pause { q, paused, done }) => {
                    if written {
                        self.set_paused(*q, *paused, queues);
                    }
                    // The request may have gone; then nobody needs to know.
                    let _ = done.try_send(written);
                }
                &Awaiting::Change(Change::Cancel { id, at }) => {
                    self.settle_cancel(id, at, written, queues);
                }
                _ => {}
            }
        }
        let now = now_millis();
        for id in lost {
            if self.deps.has_dependents(id) {
                self.follow(id, State::Cancelled, now, queues);
            }
        }
        self.evict();
    }

    /// Makes a cancel whose record was written, unless the outbox says
    /// otherwise ([`Outbox::settle_cancel`]), and then tells the requests
    /// waiting for it.
    fn settle_cancel(&mut self, id: u64, at: u64, written: bool, queues: &[Queue]) {
        let pending = self
            .tasks
            .index(id)
            .filter(|&i| !self.tasks[i].state.is_terminal());
        let task = pending.map(|i| &self.tasks[i]);
        let waiters = match self.outbox.settle_cancel(id, task, written) {
            Settled::Make(waiters) => {
                if let Some(i) = pending {
                    self.make_cancel(i, at, queues);
                }
                waiters
            }
            Settled::Leave(waiters) => waiters,
            Settled::Rewritten => return,
        };
        for waiter in waiters {
            // The request may have gone; then nobody needs to know.
            let _ = waiter.try_send(written);
        }
    }

    /// Takes back a task whose `new` record could not be written, from
    /// every index it entered, as if it had never been accepted: it was
    /// never started (workers wait for the record: step 3 of [the
    /// protocol](crate::journal#the-durability-protocol)), and whatever
    /// its state — waiting, scheduled, queued, queued since it came due or
    /// was released, or cancelled with a dependency — it leaves no trace.
    /// A client's cancel of it cannot have been made (it waits for its own
    /// record, which comes later).
    ///
    /// One cancelled with a dependency may have been evicted meanwhile,
    /// by more finished tasks than `--keep-finished`: its tombstone goes
    /// (or was swept), and its cancel is uncounted like the rest. Nothing
    /// else ends a task before its record is on disk.
    fn take_back(&mut self, id: u64) {
        self.counters.accepted -= 1;
        let task = self.tasks.remove(id).filter(|t| t.state != State::Evicted);
        let Some(task) = task else {
            self.counters.finished[State::Cancelled as usize] -= 1;
            return;
        };
        match task.state {
            State::Queued => self.queues[usize::from(task.queue)].take_back(id),
            State::Waiting => self.deps.forget(id),
            State::Cancelled => {
                self.counters.finished[State::Cancelled as usize] -= 1;
                self.retention.take_back(id);
            }
            _ => {}
        }
        // The due-time loop finds no task when it comes due, and drops it.
        let extra = task.extra.unwrap_or_default();
        if let Some(key) = extra.key {
            self.keys.forget(&key, id);
        }
        if let Some(s) = extra.schedule {
            self.unfire(usize::from(s), id);
        }
        self.wake_watchers(id);
        self.events.changed();
    }

    /// Counts the firing of schedule `s` that made task `id`, taken back,
    /// as skipped, and points the schedule at the task it made before.
    fn unfire(&mut self, s: usize, id: u64) {
        // Rare (a full disk) and under the lock: the earlier task is
        // looked for among the retained ones, newest first.
        let earlier = self
            .tasks
            .newest_first(None)
            .find(|t| t.extra.as_ref().and_then(|e| e.schedule) == Some(s as u16))
            .map_or(0, |t| t.id);
        self.schedules[s].unfired(id, earlier);
    }

    /// Fills an empty store from a replayed journal, applying
    /// `--keep-finished`, `--keep-finished-for` and the queues' paused
    /// states, and puts back what was waiting: queued tasks into their
    /// queues in their original order (what does not fit waits for room),
    /// delayed tasks and retries not yet due into the due-time loop — those
    /// due while the server was down come due at once — and waiting tasks
    /// into the dependency index ([`Store::resume_waiting`]). The journal
    /// is attached already: what restoring changes is journaled.
    pub(crate) fn restore(&mut self, replayed: Replayed, queues: &[Queue]) {
        for (name, paused) in &replayed.paused {
            if let Some(q) = queues.iter().position(|q| *q.name == **name) {
                self.queues[q].restore_paused(*paused);
            }
        }
        let now = now_millis();
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        let mut finished = Vec::new();
        for task in replayed.tasks {
            if let Some(key) = task.extra.as_ref().and_then(|e| e.key.as_ref()) {
                let prev = self
                    .tasks
                    .last()
                    .and_then(|t| t.extra.as_ref()?.key.as_ref());
                let follows = prev.is_some_and(|p| p.text == key.text);
                self.keys.replay(key, task.id, follows);
            }
            let retry_at = task.extra.as_ref().map_or(0, |e| e.retry_at);
            if let Some(s) = task.extra.as_ref().and_then(|e| e.schedule) {
                self.schedules[usize::from(s)].replayed(task.id, task.created_at());
            }
            // The due-time loop's receiver is alive: it is returned with the store.
            let due = |at| {
                let _ = self.due_tx.try_send((at, Due::Task(task.id)));
            };
            match task.state {
                State::Scheduled => due(task.run_at),
                State::Queued if retry_at > now => due(retry_at),
                State::Queued => ready.push(task.id),
                State::Waiting => waiting.push(task.id),
                _ => finished.push((task.finished_at, task.id)),
            }
            self.tasks.push(task);
        }
        // This run's prefix applies from its first id on.
        self.tasks.restore_ids(replayed.nodes, replayed.first_id);
        self.retention.restore(finished);
        for id in ready {
            self.enqueue(id, queues);
        }
        // Before any eviction: a dependency must be found to be judged.
        self.resume_waiting(waiting, now, queues);
        self.evict();
        if let Some(next) = self.expire(now) {
            let _ = self.due_tx.try_send((next, Due::Expiry));
        }
    }

    /// Puts the replayed waiting tasks back, in id order, so that each
    /// dependency's fate is settled before its dependents' (a task names
    /// only older ones): those whose dependencies are all pending or
    /// partly succeeded wait again; a dependency that ended while the
    /// server was down is honoured now, journaled — released when all
    /// succeeded, cancelled when one failed or was cancelled (or is no
    /// longer in the journal).
    fn resume_waiting(&mut self, waiting: Vec<u64>, now: u64, queues: &[Queue]) {
        for id in waiting {
            let Some(i) = self.tasks.index(id) else {
                continue;
            };
            let after = self.tasks[i].after();
            match fate(after, |dep| self.tasks.get(dep).map(|t| t.state)) {
                Fate::Waiting(pending) => self.deps.wait(id, &pending),
                Fate::Ready => self.release(id, now, queues),
                Fate::Blocked(dep, ended) => {
                    let why = blocked_error(self.tasks.task_id(dep), ended);
                    self.tasks[i].extra_mut().error = Some(why.into());
                    // No task waits for it yet: its dependents come later.
                    self.change(i, State::Cancelled, now, true);
                }
            }
        }
    }

    /// Shows every queue, `default` first.
    pub(crate) fn queue_views<'a>(
        &self,
        config: &'a Config,
        queues: &[Queue],
    ) -> Vec<QueueView<'a>> {
        let states = config.queues.iter().zip(queues).zip(&self.queues);
        states
            .map(|((config, queue), state)| state.view(config, queue))
            .collect()
    }

    /// Tells the event streams that the task at index `i` changed: its
    /// `task` event is rendered once, into the log. `at` is when the change
    /// happened (ms since the epoch), read once by the change.
    fn publish(&mut self, i: usize, at: u64) {
        if !self.events.open() {
            return;
        }
        let task = &self.tasks[i];
        self.events.publish(task, self.names(task), at);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::config;
    use crate::journal::JournalProgress;
    use crate::task::tests::new_task;
    use crate::{queue::*, submit::*, task::*};
    use std::collections::HashMap;

    /// Admits `new`, which must be created, to wait for `after` (none: it
    /// waits for nothing); returns its id.
    pub(crate) fn admit_after(
        store: &mut Store,
        queues: &[Queue],
        mut new: NewTask,
        after: &[u64],
    ) -> u64 {
        let node = || Text::new("");
        let ids = after.iter().map(|&num| IdRef { num, node: node() });
        new.after = (!after.is_empty()).then(|| ids.collect());
        match store.admit(new, queues) {
            Admission::Created(TaskId { num, .. }, ..) => num,
            other => panic!("{other:?}"),
        }
    }

    /// A store for `args` with its queues, and the due-time loop's receiver.
    pub(crate) fn store_for(args: &[&str]) -> (Store, Vec<Queue>, Receiver<(u64, Due)>) {
        let config = config(args);
        let (due_tx, due_rx) = async_channel::unbounded();
        let queues = config.queues.iter().map(Queue::new).collect();
        (Store::new(&config, due_tx, Arc::default()), queues, due_rx)
    }

    /// The store table: each step says what happens to a task (or to the
    /// store), what the store answers, and the counts afterwards in the
    /// order of [`STATES`]: waiting, scheduled, queued, running, succeeded,
    /// failed, cancelled. The queue has two places, two finished tasks are kept,
    /// one delayed task may wait, and every task may have two attempts.
    /// "take" is a worker receiving from the channel; "due" is the
    /// scheduler finding the task's time has come.
    const STORE_STEPS: &[(&str, &str, [usize; 7])] = &[
        ("admit a", "created queued", [0, 0, 1, 0, 0, 0, 0]),
        ("admit b key=k", "created queued", [0, 0, 2, 0, 0, 0, 0]),
        ("admit c", "full", [0, 0, 2, 0, 0, 0, 0]),
        ("admit d key=k", "repeat b", [0, 0, 2, 0, 0, 0, 0]),
        (
            "admit d key=k other-body",
            "key reused",
            [0, 0, 2, 0, 0, 0, 0],
        ),
        ("take a", "ok", [0, 0, 2, 0, 0, 0, 0]),
        ("begin a", "attempt 1", [0, 0, 1, 1, 0, 0, 0]),
        ("admit c", "created queued", [0, 0, 2, 1, 0, 0, 0]),
        // A failed attempt with one left: queued again, its retry due.
        ("fail a", "retry", [0, 0, 3, 0, 0, 0, 0]),
        ("take b", "ok", [0, 0, 3, 0, 0, 0, 0]),
        ("cancel b", "cancelled", [0, 0, 2, 0, 0, 0, 1]),
        // The worker that took a cancelled task skips it.
        ("begin b", "skipped", [0, 0, 2, 0, 0, 0, 1]),
        ("due a", "ok", [0, 0, 2, 0, 0, 0, 1]),
        ("depth 2", "ok", [0, 0, 2, 0, 0, 0, 1]),
        ("take c", "ok", [0, 0, 2, 0, 0, 0, 1]),
        ("take a", "ok", [0, 0, 2, 0, 0, 0, 1]),
        ("begin a", "attempt 2", [0, 0, 1, 1, 0, 0, 1]),
        ("cancel a", "cancelled", [0, 0, 1, 0, 0, 0, 2]),
        // The worker learns of the cancel when its work ends.
        ("succeed a", "ignored", [0, 0, 1, 0, 0, 0, 2]),
        ("cancel a", "already cancelled", [0, 0, 1, 0, 0, 0, 2]),
        ("begin c", "attempt 1", [0, 0, 0, 1, 0, 0, 2]),
        // A third finished task evicts the first to finish, b, and frees
        // its key; b's id now answers 410.
        ("succeed c", "done", [0, 0, 0, 0, 1, 0, 1]),
        ("lookup b", "gone", [0, 0, 0, 0, 1, 0, 1]),
        ("admit e key=k", "created queued", [0, 0, 1, 0, 1, 0, 1]),
        ("take e", "ok", [0, 0, 1, 0, 1, 0, 1]),
        ("begin e", "attempt 1", [0, 0, 0, 1, 1, 0, 1]),
        ("fail e", "retry", [0, 0, 1, 0, 1, 0, 1]),
        ("due e", "ok", [0, 0, 1, 0, 1, 0, 1]),
        ("take e", "ok", [0, 0, 1, 0, 1, 0, 1]),
        ("begin e", "attempt 2", [0, 0, 0, 1, 1, 0, 1]),
        ("fail e", "failed", [0, 0, 0, 0, 1, 1, 0]),
        ("lookup a", "gone", [0, 0, 0, 0, 1, 1, 0]),
        ("lookup e", "found", [0, 0, 0, 0, 1, 1, 0]),
        ("lookup z", "unknown", [0, 0, 0, 0, 1, 1, 0]),
        // Delayed tasks take no place in the queue, but only one may wait.
        ("admit s later", "created scheduled", [0, 1, 0, 0, 1, 1, 0]),
        ("admit t later", "too many scheduled", [0, 1, 0, 0, 1, 1, 0]),
        ("cancel s", "cancelled", [0, 0, 0, 0, 0, 1, 1]),
        ("due s", "ok", [0, 0, 0, 0, 0, 1, 1]),
        ("admit u later", "created scheduled", [0, 1, 0, 0, 0, 1, 1]),
        ("admit v", "created queued", [0, 1, 1, 0, 0, 1, 1]),
        ("admit w", "created queued", [0, 1, 2, 0, 0, 1, 1]),
        // Due while the queue is full, u waits for room, and before any
        // new submission.
        ("due u", "ok", [0, 0, 3, 0, 0, 1, 1]),
        ("depth 3", "ok", [0, 0, 3, 0, 0, 1, 1]),
        ("admit x", "full", [0, 0, 3, 0, 0, 1, 1]),
        // A paused queue starts nothing: a worker that took a task keeps
        // it, still counted, so no new task fits.
        ("pause", "ok", [0, 0, 3, 0, 0, 1, 1]),
        ("take v", "ok", [0, 0, 3, 0, 0, 1, 1]),
        ("begin v", "paused", [0, 0, 3, 0, 0, 1, 1]),
        ("depth 3", "ok", [0, 0, 3, 0, 0, 1, 1]),
        ("admit x", "full", [0, 0, 3, 0, 0, 1, 1]),
        // On the resume v, first in line, begins first; u, waiting for
        // room, enters behind w.
        ("resume", "ok", [0, 0, 3, 0, 0, 1, 1]),
        ("begin v", "attempt 1", [0, 0, 2, 1, 0, 1, 1]),
        ("take w", "ok", [0, 0, 2, 1, 0, 1, 1]),
        ("take u", "ok", [0, 0, 2, 1, 0, 1, 1]),
        ("depth 2", "ok", [0, 0, 2, 1, 0, 1, 1]),
        // A waiting task takes no place in the queue, but counts against
        // --max-scheduled with the delayed ones.
        ("admit g after=v", "created waiting", [1, 0, 2, 1, 0, 1, 1]),
        ("admit h later", "too many scheduled", [1, 0, 2, 1, 0, 1, 1]),
        ("admit h after=z", "bad after", [1, 0, 2, 1, 0, 1, 1]),
        // After a task that failed already: cancelled at once, evicting e.
        (
            "admit i after=e",
            "created cancelled",
            [1, 0, 2, 1, 0, 0, 2],
        ),
        // v succeeds: g is released, and waits for room like a retry.
        ("succeed v", "done", [0, 0, 3, 0, 1, 0, 1]),
        ("depth 3", "ok", [0, 0, 3, 0, 1, 0, 1]),
        // Cancelling w cancels j, which waits for it.
        ("admit j after=w", "created waiting", [1, 0, 3, 0, 1, 0, 1]),
        ("cancel w", "cancelled", [0, 0, 2, 0, 0, 0, 2]),
        ("drain", "ok", [0, 0, 2, 0, 0, 0, 2]),
        ("admit f", "shutting down", [0, 0, 2, 0, 0, 0, 2]),
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
                    new.after = words
                        .get(2)
                        .and_then(|w| w.strip_prefix("after="))
                        .map(|dep| {
                            let num = ids.get(dep).copied().unwrap_or(1);
                            let node = Text::new("");
                            Box::from([IdRef { num, node }])
                        });
                    // The fourth word, if any, stands for the body.
                    new.key = words.get(2).and_then(|k| k.strip_prefix("key=")).map(|k| {
                        let body = words.get(3).copied().unwrap_or("body");
                        parse_key(k.as_bytes(), "/tasks", body.as_bytes()).unwrap()
                    });
                    match store.admit(new, &queues) {
                        Admission::Created(TaskId { num: id, .. }, state, _) => {
                            ids.insert(label.to_string(), id);
                            format!("created {}", state.name())
                        }
                        Admission::Repeat(TaskId { num: id, .. }, ..) => {
                            let first = ids.iter().find(|(_, v)| **v == id).unwrap();
                            format!("repeat {}", first.0)
                        }
                        Admission::KeyReused => "key reused".to_string(),
                        Admission::Full => "full".to_string(),
                        Admission::TooManyScheduled => "too many scheduled".to_string(),
                        Admission::BadAfter(_) | Admission::BadItem(..) => "bad after".to_string(),
                        Admission::ShuttingDown => "shutting down".to_string(),
                    }
                }
                "take" => {
                    assert_eq!(queues[0].jobs_rx.try_recv(), Ok(id), "{step}");
                    "ok".to_string()
                }
                "due" => {
                    let (_, due) = due_rx.try_recv().unwrap();
                    assert_eq!(due, Due::Task(id), "{step}");
                    store.make_due(id, &queues);
                    "ok".to_string()
                }
                "depth" => {
                    let depth = store.queues[0].depth();
                    assert_eq!(depth.to_string(), label, "{step}");
                    "ok".to_string()
                }
                "begin" => match store.begin_attempt(id, 0, &queues, false) {
                    Begin::Work(work) => format!("attempt {}", work.attempt),
                    Begin::Skip => "skipped".to_string(),
                    Begin::Paused(_) => "paused".to_string(),
                    Begin::Limited(_) => "limited".to_string(),
                },
                "fail" | "succeed" => {
                    let outcome = match words[0] {
                        "fail" => Outcome::Failed("exit status 1".to_string()),
                        _ => Outcome::Succeeded(Some("{}".into())),
                    };
                    let retry = store.end_attempt(id, 0, outcome, &queues);
                    match (retry, store.tasks.get(id).map(|t| t.state)) {
                        (Some(_), Some(State::Queued)) => "retry",
                        (None, Some(State::Failed)) => "failed",
                        (None, Some(State::Cancelled)) => "ignored",
                        (None, _) => "done",
                        other => panic!("{step}: {other:?}"),
                    }
                    .to_string()
                }
                "cancel" => match store.cancel(id, &queues) {
                    Ok(_) => "cancelled".to_string(),
                    Err(Lookup::Found(i)) => format!("already {}", store.tasks[i].state.name()),
                    Err(other) => format!("{other:?}"),
                },
                "lookup" => match store.tasks.lookup(id) {
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
                    store.closed = true;
                    "ok".to_string()
                }
                other => panic!("unknown step {other}"),
            };
            assert_eq!(answer, expected, "{step}");
            assert_eq!(store.tasks.counts(), &counts, "counts after {step}");
            // Tombstones are swept from the front at once.
            let oldest = store.tasks.oldest_record();
            assert!(oldest.is_none_or(|t| t.state != State::Evicted), "{step}");
            assert_eq!(
                store.tasks.retained(),
                counts.iter().sum::<usize>(),
                "after {step}"
            );
        }
        assert_eq!(store.counters.accepted, 11);
        assert_eq!(store.counters.finished, [0, 0, 0, 0, 2, 1, 6]);
        assert_eq!(store.busy(), 0);
        // The keys of evicted tasks are gone with them, e's last.
        assert!(store.keys.is_empty());
    }

    #[test]
    fn a_rate_limited_queue_holds_its_tasks_queued_and_a_paused_one_takes_no_token() {
        let (mut store, queues, due_rx) = store_for(&["--workers", "4", "--rate", "default=1/h"]);
        let [a, b, c] =
            ["a", "b", "c"].map(|t| admit_after(&mut store, &queues, new_task(t, 0), &[]));
        let begin =
            |store: &mut Store, id, limited| match store.begin_attempt(id, 0, &queues, limited) {
                Begin::Work(_) => "work",
                Begin::Skip => "skip",
                Begin::Paused(_) => "paused",
                Begin::Limited(_) => "limited",
            };
        // Paused, a worker takes no token: once resumed, the bucket's
        // only one is still there for the first task.
        store.set_paused(0, true, &queues);
        assert_eq!(begin(&mut store, a, false), "paused");
        store.set_paused(0, false, &queues);
        assert_eq!(begin(&mut store, a, false), "work");
        // The next must wait an hour, queued and counted in the queue;
        // one entry on the due-time heap serves every waiting worker.
        assert_eq!(begin(&mut store, b, false), "limited");
        assert_eq!(begin(&mut store, c, false), "limited");
        assert_eq!(begin(&mut store, b, true), "limited");
        let (at, due) = due_rx.try_recv().unwrap();
        assert_eq!(due, Due::Token(0));
        assert!(at >= now_millis() + 3_599_000, "{at}");
        assert!(due_rx.try_recv().is_err());
        assert_eq!(store.tasks.count(State::Queued), 2);
        assert_eq!(store.queue_views(&config(&[]), &queues)[0].depth, 2);
        // Each start that had to wait counts once.
        assert_eq!(store.queue_views(&config(&[]), &queues)[0].rate_limited, 2);
        // A task cancelled while it waited is skipped and takes no token.
        assert!(store.cancel(c, &queues).is_ok());
        assert_eq!(begin(&mut store, c, true), "skip");
        // The loop's word wakes the waiting workers; the next to find the
        // bucket empty puts the next token on the heap again.
        store.refill_bucket(0);
        assert_eq!(begin(&mut store, b, true), "limited");
        assert_eq!(due_rx.try_recv().map(|(_, due)| due), Ok(Due::Token(0)));
    }

    #[test]
    fn a_task_evicted_before_its_record_failed_is_taken_back_all_the_same() {
        // With an older task retained, b's tombstone waits in the middle;
        // without, it is swept at once.
        for older in [true, false] {
            let (mut store, queues, _due) = store_for(&["--keep-finished", "1"]);
            let (tx, journal) = async_channel::unbounded();
            store.attach_journal(JournalSender::new(tx, Arc::new(JournalProgress::new(0))));
            let written = || -> Vec<JournalEntry> {
                std::iter::from_fn(|| journal.try_recv().ok()).collect()
            };
            if older {
                admit_after(&mut store, &queues, new_task("r", 0), &[]);
            }
            // a fails, and its records are written.
            let once = NewTask {
                max_attempts: 1,
                ..new_task("a", 0)
            };
            let a = admit_after(&mut store, &queues, once, &[]);
            store.begin_attempt(a, 0, &queues, false);
            store.end_attempt(a, 0, Outcome::Failed("exit 1".into()), &queues);
            store.settle(&written(), true, &queues);
            // b, after a, is cancelled at once, evicting a; c, after b, too,
            // evicting b while its `new` record is still on its way.
            let b = admit_after(&mut store, &queues, new_task("b", 0), &[a]);
            let c = admit_after(&mut store, &queues, new_task("c", 0), &[b]);
            assert_eq!(store.tasks.lookup(b), Lookup::Gone);
            // The disk fails their records: b and c were never accepted.
            store.settle(&written(), false, &queues);
            assert_eq!(store.tasks.get(c).map(|t| t.state), None);
            let r = usize::from(older);
            assert_eq!(store.tasks.counts(), &[0, 0, r, 0, 0, 0, 0]);
            assert_eq!(store.counters.accepted, 1 + r as u64);
            assert_eq!(store.counters.finished, [0, 0, 0, 0, 0, 1, 0]);
        }
    }
}
