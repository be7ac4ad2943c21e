//! [`Trigger`], the one way a wait is cut short: a channel that is never
//! sent on and is closed to fire, waking every waiter at once.
//!
//! Every wait that something else may have to end early races a trigger
//! with `future::or`: shutdown's `draining` and `grace_over`
//! ([`crate::shared::Shared`]), a running task's cancel
//! ([`Store::cancel_trigger`](crate::store::Store::cancel_trigger)), a long
//! poll's watch of its task ([`Store::watch`](crate::store::Store::watch)),
//! a paused queue's resume, the journal's progress after each batch, and
//! the idle connection asked to make room ([`crate::idle`]). A trigger
//! fires once and stays fired, so a waiter that comes late does not wait
//! at all; what must fire again (a watch, a resume, the journal's
//! progress) is replaced by a fresh trigger as the old one fires.
//!
//! It knows nothing of what it stops: the waiter decides what a fire
//! means. Shutdown wakes idle workers the same way, by closing the job
//! channels themselves.

use async_channel::{Receiver, Sender};
use std::convert::Infallible;

/// A one-shot broadcast: once fired, every waiter — present or future —
/// wakes, and stays woken.
///
/// It is a channel that is never sent on: closing it makes every `recv()`
/// return at once. This is the stop signal of async-executor's own docs;
/// it is called a trigger here so that "signal" means only OS signals.
///
/// Underneath: a task awaiting `wait` is polled, finds the channel open
/// and empty, and leaves its waker in the channel's list of listeners;
/// `fire` closes the channel, which calls every waker in the list, so each
/// waiting task goes back on the executor's queue — a sleeping worker
/// included, whose timer future is then dropped by the `future::or` that
/// raced it. A task that waits after the fire finds the channel closed and
/// does not wait at all.
#[derive(Clone, Debug)]
pub(crate) struct Trigger {
    /// Closed to fire.
    pub(crate) tx: Sender<Infallible>,
    /// Each waiter's `recv()` returns when the channel closes.
    pub(crate) rx: Receiver<Infallible>,
}

impl Trigger {
    /// Creates a trigger that has not fired.
    pub(crate) fn new() -> Trigger {
        let (tx, rx) = async_channel::bounded(1);
        Trigger { tx, rx }
    }

    /// Fires the trigger, waking every waiter.
    pub(crate) fn fire(&self) {
        self.tx.close();
    }

    /// Tells whether the trigger has fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the trigger fires.
    pub(crate) async fn wait(&self) {
        // `recv` can only end with an error: nothing is ever sent.
        let _ = self.rx.recv().await;
    }
}
