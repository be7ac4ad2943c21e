//! Idempotency keys: which retained task each key names, and the tasks
//! of each batch that came with one.
//!
//! An `Idempotency-Key` maps to the retained task its first request made;
//! a repeat of that request (the route and body bytes, as a fingerprint)
//! gets that task, a different request `422`. The store decides which
//! under its lock ([`Store::admit`](crate::store::Store::admit)), so
//! racing repeats make one task. A key is added only with an admitted
//! task, so a refused request uses up none, and it goes when its task is
//! evicted or taken back ([`Keys::forget`]).
//!
//! A batch's key names its first task. Every task of the batch carries the
//! key (so that a restart finds them, one after another in the journal),
//! and the batch's ids are kept by its first task's, for the repeat's
//! answer; they go with the key.

use crate::task::IdempotencyKey;
use std::collections::HashMap;

/// The idempotency keys of retained tasks.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// The task each key names: the first its request made.
    named: HashMap<Box<str>, u64>,
    /// The ids of each batch that came with a key, by its first task's id.
    batches: HashMap<u64, Vec<u64>>,
}

impl Keys {
    /// Returns the task `key` names, if it names a retained one.
    pub(crate) fn task(&self, key: &IdempotencyKey) -> Option<u64> {
        self.named.get(&key.text).copied()
    }

    /// Adds `key` for task `id`, just made, unless it names a task
    /// already: a batch's later tasks carry its key too, but it names the
    /// first.
    pub(crate) fn add(&mut self, key: &IdempotencyKey, id: u64) {
        self.named.entry(key.text.clone()).or_insert(id);
    }

    /// Keeps the ids of a batch made with a key, by its first task's id.
    pub(crate) fn add_batch(&mut self, ids: &[u64]) {
        if let Some(&first) = ids.first() {
            self.batches.insert(first, ids.to_vec());
        }
    }

    /// Returns the ids of the batch whose first task is `first`; `None`
    /// for a task that came alone.
    pub(crate) fn batch(&self, first: u64) -> Option<&[u64]> {
        self.batches.get(&first).map(Vec::as_slice)
    }

    /// Drops `key`, and its batch's ids, if it names task `id`, which is
    /// going: a batch's key stays while its first task does.
    pub(crate) fn forget(&mut self, key: &IdempotencyKey, id: u64) {
        if self.named.get(&key.text) == Some(&id) {
            self.named.remove(&key.text);
            self.batches.remove(&id);
        }
    }

    /// Adds `key` for task `id`, replayed from the journal. A batch's
    /// tasks carry its key one after the other: when the task before this
    /// one (`follows`) carried it too, `id` joins that batch, whose first
    /// task keeps the key; otherwise the key names `id`.
    pub(crate) fn replay(&mut self, key: &IdempotencyKey, id: u64, follows: bool) {
        match self.named.get(&key.text) {
            Some(&first) if follows => {
                let batch = self.batches.entry(first).or_insert_with(|| vec![first]);
                batch.push(id);
            }
            _ => drop(self.named.insert(key.text.clone(), id)),
        }
    }

    /// Tells whether no key is kept.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.named.is_empty() && self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey {
            text: text.into(),
            fingerprint: 7,
        }
    }

    #[test]
    fn a_key_names_its_first_task_until_that_one_goes() {
        let mut keys = Keys::default();
        keys.add(&key("k"), 10);
        keys.add(&key("k"), 11);
        assert_eq!(keys.task(&key("k")), Some(10));
        // Another task's going leaves it.
        keys.forget(&key("k"), 11);
        assert_eq!(keys.task(&key("k")), Some(10));
        keys.forget(&key("k"), 10);
        assert_eq!(keys.task(&key("k")), None);
        assert!(keys.is_empty());
    }

    #[test]
    fn a_replayed_batch_is_the_run_of_tasks_carrying_its_key() {
        let mut keys = Keys::default();
        keys.add(&key("b"), 1);
        keys.add_batch(&[1, 2]);
        assert_eq!(keys.batch(1), Some(&[1, 2][..]));
        let mut replayed = Keys::default();
        for (id, follows) in [(1, false), (2, true), (3, true)] {
            replayed.replay(&key("b"), id, follows);
        }
        // The same key again, not right after: a later task's own, named
        // by it from now on.
        replayed.replay(&key("c"), 4, false);
        replayed.replay(&key("c"), 5, false);
        assert_eq!(replayed.batch(1), Some(&[1, 2, 3][..]));
        assert_eq!(
            (replayed.task(&key("b")), replayed.task(&key("c"))),
            (Some(1), Some(5))
        );
        assert_eq!(replayed.batch(5), None);
        replayed.forget(&key("b"), 1);
        assert_eq!(replayed.batch(1), None);
    }
}
