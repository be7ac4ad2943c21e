//! Dependencies between tasks (SPEC §13): which waiting tasks wait for
//! which, and what a task's `after` makes of it.
//!
//! A task submitted with `"after": [ids]` is `waiting` until every task it
//! names has succeeded; when one of them fails or is cancelled, it is
//! cancelled too, and so on down the chain. The store makes those changes
//! (under its lock, at its one choke point); this module owns the index
//! that tells it whom a finished task concerns, without a scan of every
//! task on every finish: a map from each unfinished task to the waiting
//! tasks that name it, and each waiting task's count of dependencies not
//! yet succeeded. A finished task that no task waits for costs a look at
//! an empty map, or one hash lookup.
//!
//! The index holds waiting tasks only: a task enters it when it is made
//! (or replayed) waiting, and leaves it when it is released, cancelled or
//! taken back. A task that leaves by another way than its dependencies
//! ending (a client's cancel, a cascade through one dependency) stays
//! listed under its other dependencies until they end, and is skipped
//! then: removing it from every list at once would cost a scan of each.

use crate::{
    json::quoted,
    table::{Lookup, Table},
    task::{IdRef, State},
};
use std::collections::HashMap;

/// Which waiting tasks wait for which tasks.
#[derive(Debug, Default)]
pub(crate) struct Deps {
    /// The waiting tasks that name each unfinished task, in the order they
    /// were made (the order they are released in). May list tasks no
    /// longer waiting: `unfinished` says which still are.
    dependents: HashMap<u64, Vec<u64>>,
    /// Each waiting task's count of dependencies not yet succeeded.
    unfinished: HashMap<u64, usize>,
}

impl Deps {
    /// Makes task `id` wait for `on`: distinct tasks, none of them ended.
    pub(crate) fn wait(&mut self, id: u64, on: &[u64]) {
        for &dep in on {
            self.dependents.entry(dep).or_default().push(id);
        }
        self.unfinished.insert(id, on.len());
    }

    /// Tells whether any task waits, or waited, for task `dep`.
    pub(crate) fn has_dependents(&self, dep: u64) -> bool {
        // Tuning, as in `Store::wake_watchers`: most tasks have none, and
        // a lookup would hash the id for nothing.
        !self.dependents.is_empty() && self.dependents.contains_key(&dep)
    }

    /// Tells whether task `id` waits for its dependencies.
    #[cfg(test)]
    pub(crate) fn is_waiting(&self, id: u64) -> bool {
        self.unfinished.contains_key(&id)
    }

    /// Records that task `dep` succeeded; returns the tasks it released
    /// (their last dependency), in the order they were made. They no
    /// longer wait.
    pub(crate) fn succeeded(&mut self, dep: u64) -> Vec<u64> {
        let mut released = Vec::new();
        for id in self.dependents.remove(&dep).unwrap_or_default() {
            if let Some(left) = self.unfinished.get_mut(&id) {
                *left -= 1;
                if *left == 0 {
                    self.unfinished.remove(&id);
                    released.push(id);
                }
            }
        }
        self.trim();
        released
    }

    /// Records that task `dep` failed or was cancelled; returns the tasks
    /// that waited for it, in the order they were made: they are to be
    /// cancelled, and no longer wait.
    pub(crate) fn ended_badly(&mut self, dep: u64) -> Vec<u64> {
        let mut doomed = self.dependents.remove(&dep).unwrap_or_default();
        doomed.retain(|id| self.unfinished.remove(id).is_some());
        self.trim();
        doomed
    }

    /// Forgets task `id`, which no longer waits (a client cancelled it, or
    /// it was taken back).
    pub(crate) fn forget(&mut self, id: u64) {
        if !self.unfinished.is_empty() {
            self.unfinished.remove(&id);
            self.trim();
        }
    }

    /// Frees the maps' room once they are empty: a burst of ten thousand
    /// waiting tasks must not keep its tables once it has run.
    fn trim(&mut self) {
        if self.unfinished.is_empty() && self.unfinished.capacity() > 0 {
            self.unfinished = HashMap::new();
        }
        if self.dependents.is_empty() && self.dependents.capacity() > 0 {
            self.dependents = HashMap::new();
        }
    }
}

/// What its dependencies make of a new (or replayed) task.
#[derive(Debug, PartialEq)]
pub(crate) enum Fate {
    /// All have succeeded: it goes on as if it had no `after`.
    Ready,
    /// These have not ended yet: it waits for them.
    Waiting(Vec<u64>),
    /// This one ended so (`failed` or `cancelled`): it is cancelled.
    Blocked(u64, State),
}

/// Finds what dependencies `after` make of a task, from the state of each
/// (`None` for a task no longer retained). The first that ended badly, in
/// the order given, blocks it.
///
/// A dependency no longer retained counts as succeeded. A submission names
/// only retained tasks ([`check_after`]), so one is missing only when a
/// waiting task is replayed and its dependency was evicted, then compacted
/// away, while it waited: eviction takes finished tasks only, and had that
/// one failed or been cancelled, the task would have been cancelled with
/// it, in the same snapshot.
pub(crate) fn fate(after: &[u64], state_of: impl Fn(u64) -> Option<State>) -> Fate {
    let mut pending = Vec::new();
    for &dep in after {
        match state_of(dep) {
            Some(state @ (State::Failed | State::Cancelled)) => return Fate::Blocked(dep, state),
            None | Some(State::Succeeded | State::Evicted) => {}
            Some(_) => pending.push(dep),
        }
    }
    if pending.is_empty() {
        Fate::Ready
    } else {
        Fate::Waiting(pending)
    }
}

/// Checks the ids of a submission's `after` against the store: each must
/// name a task this server made and still retains. Returns their numbers,
/// or the sentence of the `400`, naming the first id that does not.
pub(crate) fn check_after(tasks: &Table, after: &[IdRef]) -> Result<Box<[u64]>, String> {
    after
        .iter()
        .map(|id| {
            let written = quoted(&id.to_string());
            match tasks.lookup_ref(id) {
                Lookup::Found(_) => Ok(id.num),
                Lookup::Gone => Err(format!("after: task {written} has been evicted")),
                Lookup::Unknown if tasks.task_id(id.num).node != id.node.as_str() => Err(format!(
                    "after: {written} is not a task of this server (another node's?)"
                )),
                Lookup::Unknown => Err(format!(
                    "after: {written} is not the id of a task this server made"
                )),
            }
        })
        .collect()
}

/// Makes the error of a task cancelled because its dependency `dep`
/// ended in `state`.
pub(crate) fn blocked_error(dep: impl std::fmt::Display, state: State) -> String {
    match state {
        State::Failed => format!("dependency {dep} failed"),
        _ => format!("dependency {dep} was cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        store::tests::{admit_after, store_for},
        task::{Outcome, tests::new_task},
    };

    #[test]
    fn tasks_are_released_once_their_last_dependency_succeeds() {
        let mut deps = Deps::default();
        // 3 waits for 1 and 2; 4 for 2; 5 for 3.
        deps.wait(3, &[1, 2]);
        deps.wait(4, &[2]);
        deps.wait(5, &[3]);
        assert!(deps.has_dependents(1) && !deps.has_dependents(9));
        assert_eq!(deps.succeeded(2), [4]);
        assert!(deps.is_waiting(3) && !deps.is_waiting(4));
        assert_eq!(deps.succeeded(1), [3]);
        assert_eq!(deps.succeeded(3), [5]);
        assert!(!deps.has_dependents(3));
        assert_eq!(
            (deps.dependents.capacity(), deps.unfinished.capacity()),
            (0, 0)
        );
    }

    #[test]
    fn a_dependency_that_ends_badly_dooms_only_those_still_waiting() {
        let mut deps = Deps::default();
        deps.wait(3, &[1, 2]);
        deps.wait(4, &[1]);
        deps.wait(5, &[2]);
        // A client cancels 5: it is skipped when 2 ends.
        deps.forget(5);
        assert_eq!(deps.ended_badly(1), [3, 4]);
        // 3 is listed under 2 still, but no longer waits.
        assert_eq!(deps.ended_badly(2), Vec::<u64>::new());
        assert!(!deps.is_waiting(3));
        assert_eq!((deps.dependents.len(), deps.unfinished.len()), (0, 0));
    }

    #[test]
    fn the_fate_of_a_task_is_its_first_bad_dependency_or_its_pending_ones() {
        let states = |id: u64| match id {
            1 => Some(State::Succeeded),
            2 => Some(State::Running),
            3 => Some(State::Failed),
            4 => Some(State::Cancelled),
            5 => Some(State::Waiting),
            _ => None,
        };
        let cases: &[(&[u64], Fate)] = &[
            (&[1], Fate::Ready),
            (&[1, 2, 5], Fate::Waiting(vec![2, 5])),
            (&[2, 3, 4], Fate::Blocked(3, State::Failed)),
            (&[4, 3], Fate::Blocked(4, State::Cancelled)),
            (&[1, 9], Fate::Ready),
            (&[9, 2], Fate::Waiting(vec![2])),
        ];
        for (after, fate_expected) in cases {
            assert_eq!(fate(after, states), *fate_expected, "{after:?}");
        }
        assert_eq!(blocked_error("AB", State::Failed), "dependency AB failed");
        assert_eq!(
            blocked_error("AB", State::Cancelled),
            "dependency AB was cancelled"
        );
    }

    /// Admits a task after `after` (none when empty); returns its id.
    #[test]
    #[ignore = "a benchmark: prints the store-lock time of a release and of a cascade"]
    fn bench_ten_thousand_waiting_tasks_released_or_cancelled_at_once() {
        const N: usize = 10_000;
        // Room for all of them in the queue: the release puts each in the
        // channel, as it would with a large --buffer.
        let (mut store, queues, _due) = store_for(&["--buffer", "20000"]);
        let head = admit_after(&mut store, &queues, new_task("t", 0), &[]);
        for _ in 0..N {
            admit_after(&mut store, &queues, new_task("t", 0), &[head]);
        }
        let _ = queues[0].jobs_rx.try_recv();
        store.begin_attempt(head, 0, &queues, false);
        let started = std::time::Instant::now();
        store.end_attempt(head, 0, Outcome::Succeeded(None), &queues);
        let released = started.elapsed();
        assert_eq!(
            (
                store.tasks().count(State::Waiting),
                store.tasks().count(State::Queued)
            ),
            (0, N)
        );
        // A chain of N below a queued head, cancelled by it.
        let (mut store, queues, _due) = store_for(&["--buffer", "20000"]);
        let mut last = admit_after(&mut store, &queues, new_task("t", 0), &[]);
        let head = last;
        for _ in 0..N {
            last = admit_after(&mut store, &queues, new_task("t", 0), &[last]);
        }
        let started = std::time::Instant::now();
        assert!(store.cancel(head, &queues).is_ok());
        let cancelled = started.elapsed();
        assert_eq!(store.tasks().count(State::Waiting), 0);
        // One more end, of a task no one waits for, for comparison.
        let (mut store, queues, _due) = store_for(&[]);
        let plain = admit_after(&mut store, &queues, new_task("t", 0), &[]);
        let _ = queues[0].jobs_rx.try_recv();
        store.begin_attempt(plain, 0, &queues, false);
        let started = std::time::Instant::now();
        store.end_attempt(plain, 0, Outcome::Succeeded(None), &queues);
        let alone = started.elapsed();
        println!(
            "under the store lock: one success releasing {N} waiting tasks {released:?} \
             ({:?} a task); cancelling the head of a chain of {N} {cancelled:?} ({:?} a task); \
             the end of a task with no dependents {alone:?}",
            released / N as u32,
            cancelled / N as u32,
        );
    }
}
