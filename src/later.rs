//! Everything that must happen at a time: one heap, one timer, one task.
//!
//! A delayed task's `run_at`, a retry's backoff, a `--schedule`'s next
//! A delayed task's `run_at`, a retry's backoff, a `--schedule`'s next
//! firing, the next eviction by age (`--keep-finished-for`) and a
//! `--rate`'s next token are each one entry in one binary heap of due
//! times, served by one task, [`run`], with one `async_io::Timer` armed for
//! the earliest. A thousand delayed tasks cost a thousand heap entries,
//! not a thousand timers; ten thousand finished tasks to evict by age cost
//! one entry, for the earliest of them, armed again after each eviction;
//! the heap is pruned of cancelled ones past [`SLACK`], so a client that
//! delays and cancels far-off tasks cannot grow it for ever.
//!
//! This module owns only the clock. What coming due means is decided under
//! the store lock ([`Store::make_due`](crate::store::Store::make_due) puts
//! a task into its queue, or among those waiting for room; [`cron::fire`]
//! makes a schedule's task through the store's methods;
//! [`Store::expire`](crate::store::Store::expire) evicts what is too old;
//! [`Store::refill_bucket`](crate::store::Store::refill_bucket) wakes the
//! workers that wait for a token):
//! the loop never waits for a queue, so one full queue holds up neither
//! another queue nor a schedule. Entries arrive on a channel the store
//! sends to under its lock (`due_tx`), and the loop ends when shutdown
//! begins: nothing comes due once the server is draining.
//!
//! A delayed task costs its record and one heap entry: about 120 bytes
//! in all (`bench_bytes_per_scheduled_task` in `tests/queues.rs` prints
//! it). Those that came due while the server was down run at start,
//! oldest first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use async_channel::Receiver;
use async_io::Timer;
use smol::future;

use crate::{
    cron,
    shared::Shared,
    task::State,
    time::{instant_at, now_millis},
};

/// What comes due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// A task waiting for its time: a delayed task, or a retry.
    Task(u64),
    /// A schedule's next firing: its index.
    Schedule(usize),
    /// The earliest finished task's eviction by age: the heap holds one
    /// such entry at most.
    Expiry,
    /// The next token of a queue's `--rate`: the queue's index.
    Token(usize),
}

/// What ended the loop's wait.
enum Woken {
    /// Shutdown began: the loop ends.
    Stopped,
    /// Something must happen at this time (ms since the epoch).
    Arrived(u64, Due),
    /// The timer rang: the earliest entries are due.
    Rang,
}

/// The heap is pruned of cancelled tasks once it holds this many more
/// entries than there are tasks waiting for a time: a client that delays
/// and cancels far-off tasks must not grow it for ever.
const SLACK: usize = 4096;

/// Serves every due time until shutdown begins: waits for the earliest,
/// or for a new one to arrive, and acts on what has come due.
pub(crate) async fn run(shared: Arc<Shared>, due_rx: Receiver<(u64, Due)>) {
    let mut due = BinaryHeap::new();
    for (i, state) in shared.store().schedules().iter().enumerate() {
        if state.next_at() != 0 {
            due.push(Reverse((state.next_at(), Due::Schedule(i))));
        }
    }
    loop {
        let next = due.peek().map(|&Reverse((at, _))| at);
        let timer = async {
            match next {
                Some(at) => Timer::at(instant_at(at)).await,
                None => Timer::never().await,
            };
            Woken::Rang
        };
        let arrival = async {
            match due_rx.recv().await {
                Ok((at, what)) => Woken::Arrived(at, what),
                // The store, which holds the sender, outlives this loop.
                Err(_) => Woken::Stopped,
            }
        };
        let stopped = async {
            shared.draining.wait().await;
            Woken::Stopped
        };
        // The drain wins a tie: nothing is queued, and no schedule fires,
        // once shutdown has begun.
        match future::or(stopped, future::or(arrival, timer)).await {
            Woken::Stopped => return,
            Woken::Arrived(at, what) => {
                due.push(Reverse((at, what)));
                if due.len() > SLACK {
                    prune(&shared, &mut due);
                }
            }
            Woken::Rang => act_on_due(&shared, &mut due),
        }
    }
}

/// Takes every entry due by now off the heap and acts on it; a schedule
/// goes back in at its next firing, an eviction by age at the next.
fn act_on_due(shared: &Shared, due: &mut BinaryHeap<Reverse<(u64, Due)>>) {
    let now = now_millis();
    while let Some(&Reverse((at, what))) = due.peek()
        && at <= now
    {
        due.pop();
        match what {
            Due::Task(id) => shared.store().make_due(id, &shared.queues),
            Due::Token(q) => shared.store().refill_bucket(q),
            Due::Schedule(i) => {
                let (config, queues) = (&shared.config, &shared.queues);
                let next = cron::fire(&mut shared.store(), i, at, config, queues);
                if let Some(next) = next {
                    due.push(Reverse((next, what)));
                }
            }
            Due::Expiry => {
                if let Some(next) = shared.store().expire(now) {
                    due.push(Reverse((next, what)));
                }
            }
        }
    }
}

/// Drops the entries of tasks no longer waiting for a time, if they are
/// many, so the heap stays within the live tasks plus [`SLACK`].
fn prune(shared: &Shared, due: &mut BinaryHeap<Reverse<(u64, Due)>>) {
    let store = shared.store();
    let live = store.tasks().count(State::Scheduled) + store.tasks().count(State::Queued);
    if due.len() <= live + shared.config.schedules.len() + 1 + SLACK {
        return;
    }
    due.retain(|Reverse((_, what))| match what {
        Due::Task(id) => store
            .tasks()
            .get(*id)
            .is_some_and(|t| matches!(t.state, State::Scheduled | State::Queued)),
        Due::Schedule(_) | Due::Expiry | Due::Token(_) => true,
    });
}
