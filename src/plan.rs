//! A batch's plan (SPEC §15): what each item of a batch will be, worked
//! out before any of its tasks is made, so that the store admits the whole
//! batch or none of it.
//!
//! [`Store::admit_batch`](crate::store::Store::admit_batch) plans the
//! batch under its lock ([`BatchPlan::new`]), checks the plan against the
//! queues' room and `--max-scheduled`, and only then makes each task in
//! the planned state; once their `new` records are on their way to the
//! journal, each meets its planned fate. An item's `after` may name an
//! earlier item of the same batch (`"#N"`), which has no id while the
//! batch is planned: in a planned fate it is [`BATCH_ITEM`] minus its
//! index, and it gets the id it was given when the fates are met
//! ([`BatchPlan::fates`]).

use crate::{
    deps::{Fate, check_after, fate},
    store::Admission,
    submit::MAX_BATCH,
    table::Table,
    task::{IdRef, NewTask, State},
};

/// Where a batch's items stand in for their ids, counting down, while
/// their fates are planned before any has an id: far above any id, which
/// is a time in microseconds.
const BATCH_ITEM: u64 = u64::MAX;

/// Returns the index of the batch's item that planned dependency `dep`
/// stands for, if it stands for one.
fn item_of(dep: u64) -> Option<usize> {
    dep.checked_sub(BATCH_ITEM - MAX_BATCH as u64)
        .map(|_| (BATCH_ITEM - dep) as usize)
}

/// What each item of a batch will be, and what the batch needs.
#[derive(Debug)]
pub(crate) struct BatchPlan {
    /// Each item's fate under its `after`, and the state it is made in.
    items: Vec<(Fate, State)>,
    /// How many of its tasks enter each queue at once, indexed like the
    /// queues.
    entering: Vec<usize>,
    /// How many of its tasks wait, delayed or for a dependency: they count
    /// against `--max-scheduled`.
    waits: usize,
}

impl BatchPlan {
    /// Plans the batch `news` against the tasks as they are, for `queue_count`
    /// queues, at `now` (ms since the epoch). An item whose `after` names
    /// no retained task is refused with its index: [`Admission::BadItem`].
    pub(crate) fn new(
        tasks: &Table,
        news: &[NewTask],
        queue_count: usize,
        now: u64,
    ) -> Result<BatchPlan, Admission> {
        let mut plan = BatchPlan {
            items: Vec::with_capacity(news.len()),
            entering: vec![0; queue_count],
            waits: 0,
        };
        for (i, new) in news.iter().enumerate() {
            let fate = match new.after.as_deref() {
                None => Fate::Ready,
                Some(after) => plan
                    .fate_of(tasks, after)
                    .map_err(|sentence| Admission::BadItem(i, sentence))?,
            };
            let state = match fate {
                Fate::Ready if new.run_at <= now => {
                    plan.entering[usize::from(new.queue)] += 1;
                    State::Queued
                }
                Fate::Blocked(..) => State::Waiting,
                Fate::Ready => State::Scheduled,
                Fate::Waiting(_) => State::Waiting,
            };
            plan.waits += usize::from(matches!(
                (&fate, state),
                (Fate::Waiting(_), _) | (Fate::Ready, State::Scheduled)
            ));
            plan.items.push((fate, state));
        }
        Ok(plan)
    }

    /// Finds what its `after` makes of the next item: its ids must name
    /// retained tasks, and its `"#N"`s earlier items (checked when the body
    /// was read). An earlier item stands for its dependents as a task not
    /// yet ended, or as a cancelled one if it is to be cancelled itself.
    fn fate_of(&self, tasks: &Table, after: &[IdRef]) -> Result<Fate, String> {
        let ids: Vec<IdRef> = after
            .iter()
            .filter(|d| d.batch_item().is_none())
            .cloned()
            .collect();
        check_after(tasks, &ids)?;
        let deps: Vec<u64> = after
            .iter()
            .map(|d| d.batch_item().map_or(d.num, |n| BATCH_ITEM - n as u64))
            .collect();
        Ok(fate(&deps, |dep| match item_of(dep) {
            Some(n) => match self.items.get(n) {
                Some((Fate::Blocked(..), _)) => Some(State::Cancelled),
                _ => Some(State::Waiting),
            },
            None => tasks.get(dep).map(|t| t.state),
        }))
    }

    /// Returns how many of its tasks enter each queue at once.
    pub(crate) fn entering(&self) -> &[usize] {
        &self.entering
    }

    /// Counts its tasks that wait, delayed or for a dependency.
    pub(crate) fn waits(&self) -> usize {
        self.waits
    }

    /// Returns the state each item is made in, in order.
    pub(crate) fn states(&self) -> impl Iterator<Item = State> + '_ {
        self.items.iter().map(|&(_, state)| state)
    }

    /// Returns each item's fate and state, in order, its dependencies on
    /// earlier items named by the ids `ids` they were given.
    pub(crate) fn fates(self, ids: &[u64]) -> impl Iterator<Item = (Fate, State)> + '_ {
        let id_of = |dep: u64| item_of(dep).map_or(dep, |n| ids[n]);
        self.items.into_iter().map(move |(fate, state)| {
            let fate = match fate {
                Fate::Waiting(on) => Fate::Waiting(on.into_iter().map(id_of).collect()),
                Fate::Blocked(dep, ended) => Fate::Blocked(id_of(dep), ended),
                Fate::Ready => Fate::Ready,
            };
            (fate, state)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{admit_after, store_for};
    use crate::task::Text;
    use crate::task::tests::new_task;

    /// An item of a batch with `after` as written.
    fn item(after: &[IdRef], run_at: u64) -> NewTask {
        NewTask {
            after: Some(after.into()),
            ..new_task("t", run_at)
        }
    }

    #[test]
    fn items_are_planned_in_order_and_name_earlier_items_until_they_have_ids() {
        let (mut store, queues, _due) = store_for(&[]);
        let running = admit_after(&mut store, &queues, new_task("r", 0), &[]);
        let running = IdRef {
            num: running,
            node: Text::new(""),
        };
        let news = [
            new_task("now", 0),
            new_task("later", u64::MAX),
            item(&[running.clone(), IdRef::batch_item_ref(0)], 0),
            item(&[IdRef::batch_item_ref(2)], 0),
        ];
        let plan = BatchPlan::new(store.tasks(), &news, 1, 1).unwrap();
        assert_eq!((plan.entering(), plan.waits()), (&[1][..], 3));
        let states: Vec<State> = plan.states().collect();
        use State::{Queued, Scheduled, Waiting};
        assert_eq!(states, [Queued, Scheduled, Waiting, Waiting]);
        let fates: Vec<Fate> = plan.fates(&[10, 11, 12, 13]).map(|(f, _)| f).collect();
        assert_eq!(fates[2], Fate::Waiting(vec![running.num, 10]));
        assert_eq!(fates[3], Fate::Waiting(vec![12]));
        // An id no retained task has: refused with the item's index.
        let unknown = IdRef {
            num: 7,
            node: Text::new(""),
        };
        let refused = BatchPlan::new(
            store.tasks(),
            &[new_task("a", 0), item(&[unknown], 0)],
            1,
            1,
        );
        assert!(
            matches!(refused, Err(Admission::BadItem(1, _))),
            "{refused:?}"
        );
    }
}
