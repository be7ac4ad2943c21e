//! Which finished tasks are kept: `--keep-finished` and
//! `--keep-finished-for` (SPEC §14), as the order tasks finished in.
//!
//! A finished task stays retained, with its result, until more than
//! `--keep-finished` tasks have finished after it, or it has been finished
//! for `--keep-finished-for`; then it is evicted, earliest finished first,
//! and its id answers `410`. This module keeps the ids of finished tasks in
//! the order they finished and says which go; the store evicts them
//! ([`Store::set_state`](crate::store::Store::set_state) asks after each
//! change, [`Store::expire`](crate::store::Store::expire) when the time
//! comes).
//!
//! Eviction by age needs no timer per task, nor a scan: tasks finish in
//! about the order of their `finished_at` (a journaled cancel's time is
//! fixed when its record is made, a disk write earlier), so the earliest
//! finished is the next to expire, and the due-time loop
//! ([`crate::later`]) holds one entry for it at any time. When it comes
//! due, the tasks old enough go and the entry is armed again for the next
//! one; with no finished task left, the next to finish arms it.

use crate::config::Config;
use std::collections::VecDeque;

/// The finished tasks in the order they finished, and how long they stay.
#[derive(Debug)]
pub(crate) struct Retention {
    /// Ids of finished tasks in the order they finished: eviction order.
    finished: VecDeque<u64>,
    /// How many finished tasks to keep (`--keep-finished`).
    keep: usize,
    /// How long finished tasks are kept (`--keep-finished-for`), in ms.
    keep_for: Option<u64>,
    /// Whether the due-time loop holds the entry of the next eviction by
    /// age: one entry, for the earliest finished task, at any time.
    armed: bool,
}

impl Retention {
    /// Keeps what `config`'s flags say.
    pub(crate) fn new(config: &Config) -> Retention {
        Retention {
            finished: VecDeque::new(),
            keep: config.keep_finished,
            keep_for: config.keep_finished_for.map(|d| d.as_millis() as u64),
            armed: false,
        }
    }

    /// Notes that task `id` finished at `at` (ms since the epoch). Returns
    /// when it is to be evicted by age if the due-time loop is to be told
    /// (it holds no such entry yet; now it holds this one).
    pub(crate) fn finished(&mut self, id: u64, at: u64) -> Option<u64> {
        self.finished.push_back(id);
        let keep_for = self.keep_for.filter(|_| !self.armed)?;
        self.armed = true;
        Some(at + keep_for)
    }

    /// Takes the earliest finished task beyond `--keep-finished`, to be
    /// evicted; `None` once none is. Task `spare`, whose change made them
    /// too many, is not taken but stays as the next to go: a cancel whose
    /// cascade finished more tasks than are kept still answers with its
    /// task's status.
    pub(crate) fn beyond(&mut self, spare: u64) -> Option<u64> {
        if self.finished.len() <= self.keep {
            return None;
        }
        let id = self.finished.pop_front()?;
        if id != spare {
            return Some(id);
        }
        // `spare` stays, counted among those kept: the next goes instead.
        let next = self.finished.pop_front();
        self.finished.push_front(spare);
        next
    }

    /// Takes the earliest finished task if it has been finished for
    /// `--keep-finished-for` as of `now`, or is no longer retained;
    /// `finished_at` tells when a retained task finished.
    pub(crate) fn expired(
        &mut self,
        now: u64,
        finished_at: impl Fn(u64) -> Option<u64>,
    ) -> Option<u64> {
        let keep_for = self.keep_for?;
        let &id = self.finished.front()?;
        if finished_at(id).is_some_and(|at| at + keep_for > now) {
            return None;
        }
        self.finished.pop_front()
    }

    /// Returns when the next eviction by age is due, for the due-time
    /// loop's one entry of it; `None` when no finished task is left (the
    /// next to finish arms it again).
    pub(crate) fn rearm(&mut self, finished_at: impl Fn(u64) -> Option<u64>) -> Option<u64> {
        let oldest = self.finished.front().and_then(|&id| finished_at(id));
        let next = oldest
            .zip(self.keep_for)
            .map(|(at, keep_for)| at + keep_for);
        self.armed = next.is_some();
        next
    }

    /// Forgets task `id`, taken back: it finished last, or nearly.
    pub(crate) fn take_back(&mut self, id: u64) {
        if let Some(at) = self.finished.iter().rposition(|&f| f == id) {
            self.finished.remove(at);
        }
    }

    /// Takes over the finished tasks of a replayed journal, as (when each
    /// finished, id). Tasks that finish from now until
    /// [`Retention::rearm`] arm no eviction by age of their own: the one
    /// entry, armed then, is for the oldest finished task.
    pub(crate) fn restore(&mut self, mut finished: Vec<(u64, u64)>) {
        finished.sort_unstable();
        self.finished = finished.into_iter().map(|(_, id)| id).collect();
        self.armed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    /// Takes every id [`Retention::beyond`] gives, sparing `spare`.
    fn beyond(retention: &mut Retention, spare: u64) -> Vec<u64> {
        std::iter::from_fn(|| retention.beyond(spare)).collect()
    }

    #[test]
    fn the_earliest_finished_go_first_but_the_one_that_made_them_too_many() {
        let mut retention = Retention::new(&config(&["--keep-finished", "2"]));
        for id in 1..=5 {
            assert_eq!(retention.finished(id, 0), None);
        }
        assert_eq!(beyond(&mut retention, 0), [1, 2, 3]);
        // 6 to 9 finished in one cascade that 6 began: 6 stays, first to go.
        for id in 6..=9 {
            retention.finished(id, 0);
        }
        assert_eq!(beyond(&mut retention, 6), [4, 5, 7, 8]);
        assert_eq!(Vec::from(retention.finished.clone()), [6, 9]);
        assert!(beyond(&mut retention, 0).is_empty());
    }

    #[test]
    fn one_entry_at_a_time_arms_the_eviction_of_the_oldest_by_age() {
        let mut retention = Retention::new(&config(&["--keep-finished-for", "10s"]));
        let finished_at = |id: u64| Some(id * 1000);
        assert_eq!(retention.finished(1, 1000), Some(11_000));
        assert_eq!(retention.finished(2, 2000), None);
        assert_eq!(retention.finished(3, 3000), None);
        assert_eq!(retention.expired(10_999, finished_at), None);
        assert_eq!(retention.expired(12_000, finished_at), Some(1));
        assert_eq!(retention.expired(12_000, finished_at), Some(2));
        assert_eq!(retention.expired(12_000, finished_at), None);
        assert_eq!(retention.rearm(finished_at), Some(13_000));
        // One no longer retained goes whatever its time.
        assert_eq!(retention.expired(0, |_| None), Some(3));
        assert_eq!(retention.rearm(finished_at), None);
        assert_eq!(retention.finished(4, 4000), Some(14_000));
    }
}
