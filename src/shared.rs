//! The state every part of the server shares ([`Shared`]), made once at
//! start ([`build_shared`]), and the one lock around the store.
//!
//! One `Arc<Shared>` reaches the listener, every connection, every worker
//! and the due-time loop. Only the store is behind a lock; what is read
//! without it sits beside the store, not in it: the configuration, the
//! queues' channels, shutdown's two triggers, the journal's progress, the
//! event log's read side, and counters kept in atomics. The lock's rule —
//! nothing that runs under it takes it again — is stated at
//! [`Shared::store`], which checks it in debug builds; it is why the
//! store's methods are given `&Config` and `&[Queue]`, never `&Shared`.
//! [`BURST`] lives here because workers and connections both keep to it.

use crate::{
    config::Config,
    events::EventLog,
    journal::{DataDir, JournalProgress, JournalSender, WriterParts},
    later::Due,
    metrics::StatusCounts,
    queue::Queue,
    store::Store,
    trigger::Trigger,
};
use async_channel::Receiver;
use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Everything the listener, connections and workers share.
pub(crate) struct Shared {
    /// The checked configuration.
    pub(crate) config: Config,
    /// Every task, behind the one lock.
    pub(crate) store: Mutex<Store>,
    /// The queues' channels, indexed like [`Config::queues`].
    pub(crate) queues: Vec<Queue>,
    /// Fired when shutdown begins.
    pub(crate) draining: Trigger,
    /// Fired when `--grace` is over: running work is interrupted.
    pub(crate) grace_over: Trigger,
    /// Answers written, by status code, for `/metrics`.
    pub(crate) responses: StatusCounts,
    /// Submissions refused because their queue was full, for `/metrics`.
    pub(crate) rejected: AtomicU64,
    /// Where the `/events` streams read (the store's, shared): a stream
    /// reads without the store's lock, and a refusal tells it without
    /// that lock.
    pub(crate) events: Arc<EventLog>,
    /// How far the journal is on disk, with `--data-dir`.
    pub(crate) journal_progress: Option<Arc<JournalProgress>>,
}

impl Shared {
    /// Locks the store. A panic elsewhere while holding the lock cannot
    /// leave a half-made change (every change is a few assignments), so a
    /// poisoned lock is used as it is.
    ///
    /// The rule: nothing that runs while the guard is held takes the lock
    /// again. `std`'s mutex is not re-entrant, so a second `store()` on the
    /// thread that holds the guard would wait for itself for ever, and the
    /// whole server with it (issue 24: a refusal told the event streams by
    /// locking again). It is kept by construction:
    ///
    /// - Code that runs under the lock is given the store — a [`Store`]
    ///   method's `self`, a `&Store` — and the fixed parts it needs
    ///   (`&Config`, `&[Queue]`), never `&Shared`. The store holds no path
    ///   back to its own mutex, so such code has no way to name the lock:
    ///   a function could take it only if its signature had a `Shared` in
    ///   it, and none that runs under the lock has.
    /// - A function that has a `&Shared` locks for one statement
    ///   (`shared.store().method(..)`, the guard dropped at the `;`) or one
    ///   block in which it calls only store methods and functions that
    ///   take no `Shared`. What needs the lock again afterwards runs after
    ///   the guard is dropped.
    /// - The guard is not `Send`, so a spawned task cannot hold it across
    ///   an `.await` (its future would not be `Send`): a guard is always
    ///   taken and dropped by one thread within one poll. Debug builds
    ///   therefore check the rule exactly with a per-thread flag, and a
    ///   second lock is a panic naming this rule instead of a hang.
    pub(crate) fn store(&self) -> StoreGuard<'_> {
        debug_assert!(
            !HOLDS_STORE.replace(true),
            "the store lock was taken again by the thread holding it (see Shared::store)"
        );
        StoreGuard(self.store.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

thread_local! {
    /// Whether this thread holds the store's guard; kept in debug builds
    /// only, for the check in [`Shared::store`].
    static HOLDS_STORE: Cell<bool> = const { Cell::new(false) };
}

/// The store, locked: it exists only while the lock is held, and what runs
/// under the lock is given it (or the `&mut Store` it derefs to), never the
/// [`Shared`] that could lock again.
pub(crate) struct StoreGuard<'a>(pub(crate) MutexGuard<'a, Store>);

impl std::ops::Deref for StoreGuard<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.0
    }
}

impl std::ops::DerefMut for StoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.0
    }
}

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        if cfg!(debug_assertions) {
            HOLDS_STORE.set(false);
        }
    }
}

/// How many tasks a worker runs, or requests a connection serves, in a row
/// before it lets the executor run its other tasks.
///
/// An executor cannot preempt a task: a task keeps its thread until it
/// returns "not yet", which it does only when it waits for something. A
/// worker whose channel always has a job ready, or a connection whose
/// pipelined requests have all arrived, never waits, and would keep its
/// thread for the whole burst — while an event stream fell behind and the
/// listener left new connections unaccepted. Every `BURST` items they
/// yield (`future::yield_now` returns "not yet" once, its task queued
/// again at the back), so others get their turn at a small cost.
pub(crate) const BURST: usize = 4;

/// Builds the state every task shares, restoring the replayed tasks into
/// the store and the queue. Returns it with the due-time loop's receiver
/// and, with a journal, what its writer thread needs.
pub(crate) fn build_shared(
    config: Config,
    data: Option<DataDir>,
) -> (Arc<Shared>, Receiver<(u64, Due)>, Option<WriterParts>) {
    let queues: Vec<Queue> = config.queues.iter().map(Queue::new).collect();
    let (due_tx, due_rx) = async_channel::unbounded();
    let events = Arc::new(EventLog::default());
    let mut store = Store::new(&config, due_tx, events.clone());
    let mut writer = None;
    let journal = data.map(|data| {
        // Replayed tasks are on disk already; what restoring them changes
        // (a dependency that ended while the server was down) is journaled.
        let progress = Arc::new(JournalProgress::new(data.replayed.last_id()));
        let (tx, rx) = async_channel::unbounded();
        store.attach_journal(JournalSender::new(tx, progress.clone()));
        store.restore(data.replayed, &queues);
        writer = Some((rx, data.writer, data.lock));
        progress
    });
    let shared = Arc::new(Shared {
        events,
        store: Mutex::new(store),
        config,
        queues,
        draining: Trigger::new(),
        grace_over: Trigger::new(),
        responses: StatusCounts::new(),
        rejected: AtomicU64::new(0),
        journal_progress: journal,
    });
    (shared, due_rx, writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::config;

    /// The check that keeps `Shared::store`'s rule in debug builds: a
    /// second lock on the thread that holds the guard is a panic, not a
    /// wait for itself (in a release build it would hang this test).
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the store lock was taken again")]
    fn locking_the_store_twice_on_one_thread_is_caught() {
        let (shared, _due, _) = build_shared(config(&[]), None);
        let _held = shared.store();
        let _again = shared.store();
    }

    /// The guard's check forgets a lock once it is dropped: locking again
    /// afterwards, on the same thread, is what every statement-long lock
    /// does.
    #[test]
    fn the_store_may_be_locked_again_once_the_guard_is_dropped() {
        let (shared, _due, _) = build_shared(config(&[]), None);
        drop(shared.store());
        let guard = shared.store();
        assert_eq!(guard.tasks().retained(), 0);
    }
}
