//! TODO later

use crate::{
    shared::Shared,
    task::State,
    time::{instant_at, now_millis},
};
use async_channel::Receiver;
use async_io::Timer;
use smol::future;
use std::sync::Arc;

/// What comes due in the scheduler's heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// A task waiting for its time: a delayed task, or a retry.
    Task(u64),
    /// A schedule's next firing: its index.
    Schedule(usize),
}

/// The scheduler: one task, one heap and one timer for everything that
/// must happen at a time — a delayed task's `run_at`, a retry's backoff, a
/// schedule's next firing. A task that comes due goes to
/// [`Store::make_due`], which puts it into its queue, or among those
/// waiting for room: the scheduler itself never waits for a queue, so one
/// full queue cannot hold up another, nor a schedule.
pub(crate) async fn schedule(shared: Arc<Shared>, due_rx: Receiver<(u64, u64)>) {
    use std::cmp::Reverse;
    let mut due = std::collections::BinaryHeap::new();
    for (i, state) in shared.store().schedules().iter().enumerate() {
        if state.next_at != 0 {
            due.push(Reverse((state.next_at, Due::Schedule(i))));
        }
    }
    loop {
        let next = due.peek().map(|&Reverse((at, _))| at);
        let timer = async {
            match next {
                Some(at) => Timer::at(instant_at(at)).await,
                None => Timer::never().await,
            };
            None
        };
        let arrival = async { Some(due_rx.recv().await.ok()) };
        let stopped = async {
            shared.draining.wait().await;
            Some(None)
        };
        // The drain wins a tie: nothing is queued, and no schedule fires,
        // once shutdown has begun.
        match future::or(stopped, future::or(arrival, timer)).await {
            Some(Some((at, id))) => {
                due.push(Reverse((at, Due::Task(id))));
                if due.len() > SCHEDULER_SLACK {
                    prune(&shared, &mut due);
                }
            }
            Some(None) => return,
            None => {
                let now = now_millis();
                while let Some(&Reverse((at, what))) = due.peek()
                    && at <= now
                {
                    due.pop();
                    let next = match what {
                        Due::Task(id) => {
                            shared.store().make_due(id, &shared.queues);
                            continue;
                        }
                        Due::Schedule(i) => {
                            shared.store().fire(i, at, &shared.config, &shared.queues)
                        }
                    };
                    if let Some(next) = next {
                        due.push(Reverse((next, what)));
                    }
                }
            }
        }
    }
}

/// The scheduler's heap is pruned of cancelled tasks once it holds this
/// many more entries than there are tasks waiting for a time: a client
/// that schedules and cancels far-off tasks must not grow it for ever.
const SCHEDULER_SLACK: usize = 4096;

/// Drops the entries of tasks no longer waiting for a time, if they are
/// many, so the heap stays within the live tasks plus a slack.
fn prune(shared: &Shared, due: &mut std::collections::BinaryHeap<std::cmp::Reverse<(u64, Due)>>) {
    let store = shared.store();
    let live = store.count(State::Scheduled) + store.count(State::Queued);
    if due.len() <= live + shared.config.schedules.len() + SCHEDULER_SLACK {
        return;
    }
    due.retain(|std::cmp::Reverse((_, what))| match what {
        Due::Task(id) => store
            .get(*id)
            .is_some_and(|t| matches!(t.state, State::Scheduled | State::Queued)),
        Due::Schedule(_) => true,
    });
}
