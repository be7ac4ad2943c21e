//! The store's records in id order: the ids issued and their prefixes,
//! lookups by id, the count of tasks in each state, and tombstones.
//!
//! Records are kept in a `VecDeque` ordered by id. Ids grow with time, so
//! a new task always goes at the back, and a lookup is a search by id
//! ([`Table::position`]). Evicted tasks (`--keep-finished`,
//! `--keep-finished-for`) leave a tombstone ([`Table::bury`]), dropped
//! from the front or swept once tombstones pile up ([`Table::sweep`]), so the deque stays within
//! about twice the retained tasks. Compared with a hash map this costs no
//! per-entry overhead, which matters: a queued `sleep` task is its 96-byte
//! record and nothing more.
//!
//! A tombstone keeps eviction cheap: an evicted task in the middle of the
//! deque is marked, not removed, so no record moves and the order stays.
//! A lookup tells an id this server issued and evicted (`410`: between the
//! first and the last it issued, across restarts with a journal) from one
//! it never issued (`404`) by the range alone, without keeping the
//! evicted ids.
//!
//! The table is a field of [`Store`](crate::store::Store) and changes only
//! through the store's methods, under its lock; it keeps its own
//! invariants (the counts, the tombstones, the id order), and the store
//! keeps everything a change means beyond them.

use crate::{
    task::{IdRef, IdempotencyKey, STATES, State, Task, TaskId, task_id_in},
    time::now_micros,
};
use std::collections::VecDeque;
use std::ops::{Index, IndexMut};

/// Tombstones are swept from the middle of the table only past this many:
/// a sweep moves every record, so it waits until it frees a fair amount.
const TOMBSTONE_SWEEP: usize = 64;

/// What a lookup of an id finds.
#[derive(Debug, PartialEq)]
pub(crate) enum Lookup {
    /// The task is retained; its index in the table.
    Found(usize),
    /// The id was issued, but its record has been evicted: `410`.
    Gone,
    /// The server never issued the id: `404`.
    Unknown,
}

/// Every task's record, in id order, with the ids issued.
#[derive(Debug)]
pub(crate) struct Table {
    /// Records in id order, tombstones included.
    records: VecDeque<Task>,
    /// How many entries of `records` are tombstones.
    tombstones: usize,
    /// Retained tasks in each state, indexed like [`STATES`].
    counts: [usize; STATES.len()],
    /// The first id this server issued (or replayed); 0 until then.
    first_id: u64,
    /// The most recently issued id: the next one is larger.
    last_id: u64,
    /// The id prefix in force from each id on, in id order: those of
    /// tasks replayed from the journal, then `--node`'s from this run's
    /// first id. A prefix changes only across restarts, so ranges do.
    nodes: Vec<(u64, &'static str)>,
}

impl Table {
    /// Makes an empty table whose ids carry `node`'s prefix.
    pub(crate) fn new(node: &'static str) -> Table {
        Table {
            records: VecDeque::new(),
            tombstones: 0,
            counts: [0; STATES.len()],
            first_id: 0,
            last_id: 0,
            nodes: vec![(0, node)],
        }
    }

    /// Returns the next id without taking it: the current time in
    /// microseconds, or one more than the last id if the clock has not moved
    /// on (or went back). Ids therefore increase, sort in creation order,
    /// carry their creation time, and differ from a previous run's as long
    /// as the clock does not go back across a restart.
    pub(crate) fn issue_id(&self) -> u64 {
        now_micros().max(self.last_id + 1)
    }

    /// Finds where the record for `id` is, or would be.
    ///
    /// Tuning: the plain version is `binary_search_by_key` (the unit test
    /// `positions_agree_with_a_binary_search` checks the two agree). Ids
    /// are creation times, so a record's place is roughly proportional to
    /// its id: this guesses it by interpolation, gallops from the guess to
    /// bracket it, and only then bisects — a handful of probes instead of a
    /// cache-missing binary search. Lookups were 8.5% of the 202 path's
    /// time in a profile of the bench's accept phase.
    pub(crate) fn position(&self, id: u64) -> Result<usize, usize> {
        let tasks = &self.records;
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
    pub(crate) fn lookup(&self, id: u64) -> Lookup {
        match self.position(id) {
            Ok(i) if self.records[i].state != State::Evicted => Lookup::Found(i),
            _ if self.first_id != 0 && (self.first_id..=self.last_id).contains(&id) => Lookup::Gone,
            _ => Lookup::Unknown,
        }
    }

    /// Finds the record an id names: the number must be a task's, and the
    /// prefix the one that task was made with.
    pub(crate) fn lookup_ref(&self, id: &IdRef) -> Lookup {
        if self.task_id(id.num).node != id.node.as_str() {
            return Lookup::Unknown;
        }
        self.lookup(id.num)
    }

    /// Returns the retained task with this id.
    pub(crate) fn get(&self, id: u64) -> Option<&Task> {
        self.index(id).map(|i| &self.records[i])
    }

    /// Returns the index of the retained task with this id.
    pub(crate) fn index(&self, id: u64) -> Option<usize> {
        match self.lookup(id) {
            Lookup::Found(i) => Some(i),
            _ => None,
        }
    }

    /// Returns a task's id, with the prefix it was made with.
    pub(crate) fn task_id(&self, num: u64) -> TaskId {
        task_id_in(&self.nodes, num)
    }

    /// Returns the first id this server issued (or replayed); 0 until then.
    pub(crate) fn first_id(&self) -> u64 {
        self.first_id
    }

    /// Returns the prefix in force from each id on, in id order.
    pub(crate) fn nodes(&self) -> &[(u64, &'static str)] {
        &self.nodes
    }

    /// Appends a record; its id must be larger than every other, and it
    /// is the last issued.
    pub(crate) fn push(&mut self, task: Task) {
        if self.first_id == 0 {
            self.first_id = task.id;
        }
        self.last_id = task.id;
        self.counts[task.state as usize] += 1;
        self.records.push_back(task);
    }

    /// Moves the task at index `i` to `state`, counting it there; returns
    /// the state it was in.
    pub(crate) fn move_to(&mut self, i: usize, state: State) -> State {
        let old = std::mem::replace(&mut self.records[i].state, state);
        self.counts[old as usize] -= 1;
        self.counts[state as usize] += 1;
        old
    }

    /// Evicts the task at index `i`: only a tombstone of its id is left.
    /// Returns its idempotency key, which goes with it.
    pub(crate) fn bury(&mut self, i: usize) -> Option<IdempotencyKey> {
        let task = &mut self.records[i];
        let state = std::mem::replace(&mut task.state, State::Evicted);
        let key = task.extra.take().and_then(|e| e.key);
        task.label = None;
        task.work_duration = None;
        self.counts[state as usize] -= 1;
        self.tombstones += 1;
        key
    }

    /// Takes the record of task `id` out, leaving no tombstone: a task
    /// taken back was never accepted. Its tombstone, if it was evicted
    /// already, goes too, and comes back as the record (`evicted`).
    pub(crate) fn remove(&mut self, id: u64) -> Option<Task> {
        let task = self.records.remove(self.position(id).ok()?)?;
        match task.state {
            State::Evicted => self.tombstones -= 1,
            state => self.counts[state as usize] -= 1,
        }
        Some(task)
    }

    /// Drops tombstones: from the front at once, and everywhere once they
    /// are half the records, so the deque stays within twice the retained
    /// tasks even when an old task runs for days.
    pub(crate) fn sweep(&mut self) {
        while self
            .records
            .front()
            .is_some_and(|t| t.state == State::Evicted)
        {
            self.records.pop_front();
            self.tombstones -= 1;
        }
        if self.tombstones > TOMBSTONE_SWEEP && self.tombstones * 2 > self.records.len() {
            self.records.retain(|t| t.state != State::Evicted);
            self.tombstones = 0;
        }
    }

    /// Takes over what a replayed journal says of ids: the prefixes its
    /// tasks were made with (this run's applies from the next id on) and
    /// the first id ever issued, if the journal was compacted past it.
    /// Called once the replayed tasks are pushed.
    pub(crate) fn restore_ids(&mut self, nodes: Vec<(u64, &'static str)>, first_id: u64) {
        let node = self.nodes[0].1;
        self.nodes = nodes;
        let next = self.records.back().map_or(0, |t| t.id + 1);
        self.nodes.push((next, node));
        if first_id != 0 {
            self.first_id = first_id;
        }
        self.last_id = self.last_id.max(self.first_id);
    }

    /// Counts the retained tasks in a state.
    pub(crate) fn count(&self, state: State) -> usize {
        self.counts[state as usize]
    }

    /// Returns the retained tasks in each state, indexed like [`STATES`].
    pub(crate) fn counts(&self) -> &[usize; STATES.len()] {
        &self.counts
    }

    /// Counts the retained tasks (tombstones excluded).
    pub(crate) fn retained(&self) -> usize {
        self.records.len() - self.tombstones
    }

    /// Returns the oldest record, tombstone or not.
    #[cfg(test)]
    pub(crate) fn oldest_record(&self) -> Option<&Task> {
        self.records.front()
    }

    /// Returns the newest record.
    pub(crate) fn last(&self) -> Option<&Task> {
        self.records.back()
    }

    /// Returns the retained tasks, oldest first.
    pub(crate) fn oldest_first(&self) -> impl Iterator<Item = &Task> {
        self.records.iter().filter(|t| t.state != State::Evicted)
    }

    /// Returns the retained tasks older than `before` (every one, without
    /// it), newest first: a list's page starts here.
    pub(crate) fn newest_first(&self, before: Option<u64>) -> impl Iterator<Item = &Task> {
        let end = match before.map(|id| self.position(id)) {
            Some(Ok(at) | Err(at)) => at,
            None => self.records.len(),
        };
        self.records
            .range(..end)
            .rev()
            .filter(|t| t.state != State::Evicted)
    }
}

/// The task at an index a lookup found.
impl Index<usize> for Table {
    type Output = Task;

    fn index(&self, i: usize) -> &Task {
        &self.records[i]
    }
}

/// The task at an index a lookup found, to change what is not counted:
/// a change of state goes through [`Table::move_to`] or [`Table::bury`].
impl IndexMut<usize> for Table {
    fn index_mut(&mut self, i: usize) -> &mut Task {
        &mut self.records[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::Rng;
    use crate::task::tests::new_task;

    /// A table of `n` queued tasks with ids one apart from `first`.
    fn table_of(first: u64, n: u64) -> Table {
        let mut table = Table::new("");
        for id in first..first + n {
            table.push(Task::from_new(id, new_task("t", 0), State::Queued));
        }
        table
    }

    #[test]
    fn positions_agree_with_a_binary_search() {
        let mut rng = Rng(0x1234_5678);
        for round in 0..300 {
            let mut table = Table::new("");
            let mut id = 1_796_000_000_000_000u64;
            for _ in 0..rng.below(300) {
                // Gaps of every size: bursts, pauses, and one huge jump.
                id += match rng.below(10) {
                    0 => 1_000_000_000 * (1 + rng.below(1000) as u64),
                    1..=3 => 1,
                    _ => 1 + rng.below(5000) as u64,
                };
                table.push(Task::from_new(id, new_task("t", 0), State::Queued));
            }
            let ids: Vec<u64> = table.records.iter().map(|t| t.id).collect();
            let mut probes: Vec<u64> = ids.clone();
            probes.extend([0, 1, u64::MAX, ids.first().map_or(5, |i| i - 1), id + 1]);
            probes.extend(ids.iter().map(|i| i + 1));
            for probe in probes {
                assert_eq!(
                    table.position(probe),
                    ids.binary_search(&probe),
                    "round {round}, {probe}"
                );
            }
        }
    }

    #[test]
    fn an_evicted_id_is_gone_and_one_never_issued_unknown() {
        let mut table = table_of(100, 3);
        table.bury(1);
        assert_eq!(table.lookup(100), Lookup::Found(0));
        assert_eq!(table.lookup(101), Lookup::Gone);
        assert_eq!(table.lookup(99), Lookup::Unknown);
        assert_eq!(table.lookup(103), Lookup::Unknown);
        assert_eq!((table.retained(), table.count(State::Queued)), (2, 2));
        // A task taken back leaves no tombstone, and is counted nowhere.
        assert_eq!(table.remove(102).map(|t| t.id), Some(102));
        assert_eq!((table.retained(), table.count(State::Queued)), (1, 1));
    }

    #[test]
    fn tombstones_are_swept_once_they_are_half_the_records() {
        // The oldest task is never evicted, so tombstones cannot leave
        // from the front; those behind it are evicted one by one.
        let mut table = table_of(1, 501);
        for id in 2..=501 {
            let i = table.index(id).unwrap();
            table.bury(i);
            table.sweep();
            assert!(table.records.len() <= 2 * table.retained() + TOMBSTONE_SWEEP);
        }
        assert_eq!(table.retained(), 1);
        assert!(table.tombstones <= TOMBSTONE_SWEEP, "{}", table.tombstones);
        // Once the oldest goes, tombstones leave from the front at once.
        table.bury(0);
        table.sweep();
        assert_eq!((table.records.len(), table.tombstones), (0, 0));
    }
}
