//! The places of `--max-connections`, and who gives one up: the list of
//! idle keep-alive connections, oldest first, and [`take_place`], which
//! closes the one idle longest when a client waits in the backlog.
//!
//! Past `--max-connections`, connections wait in the kernel's backlog
//! ([`LISTEN_BACKLOG`](crate::LISTEN_BACKLOG), 1024; the kernel lowers it
//! to `net.core.somaxconn`). A client waiting there gets the place of the
//! keep-alive connection idle longest, which is closed for it without a
//! word, as nginx does with its reusable connections: so a client that
//! holds every place with idle connections cannot keep everyone else out,
//! `/healthz` included, for the 60 s of the idle timeout. What counts as
//! idle, and why nothing else is ever closed to make room, is
//! [`IdleConnections`]'s doc.
//!
//! The listener calls [`take_place`] before each accept and moves the
//! place into the connection's task; a connection lists itself when it
//! waits between requests and takes itself out when it wakes
//! ([`crate::conn`]). The module knows nothing of sockets but the
//! listener's readiness, which says that a client waits.

use crate::trigger::Trigger;
use async_io::Async;
use smol::future;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

/// The keep-alive connections waiting for their next request, oldest
/// first: when every `--max-connections` place is taken and a client waits
/// in the backlog, the listener closes the one idle longest.
///
/// Only a connection between requests counts: one that has answered a
/// request and waits for the next with nothing left to write. A request in
/// progress — being read, a long poll, an event stream, answers being
/// written — is never cut short, and a connection that has not sent its
/// first request is not taken either: its 10 s head deadline bounds it,
/// and closing it could beat its client's first request in a burst of new
/// connections, each closing the one before it.
///
/// One lock, taken three times a keep-alive request (when its connection
/// starts to wait, when that wait is first polled, when it ends; never per
/// byte) and when the listener makes room.
#[derive(Default)]
pub(crate) struct IdleConnections {
    /// The list, behind its lock.
    pub(crate) list: Mutex<IdleList>,
    /// The number [`IdleConnections::stamp`] gives next.
    pub(crate) next: AtomicU64,
}

impl IdleConnections {
    /// Locks the list. Every change to it is a few index writes, made
    /// before anything can panic, so a poisoned lock is used as it is.
    pub(crate) fn list(&self) -> MutexGuard<'_, IdleList> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns a number greater than every one returned before: when a
    /// connection is done with its requests, for its place in the list.
    pub(crate) fn stamp(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Lists the connection stamped `since` as waiting for its next
    /// request; returns its entry.
    pub(crate) fn begin_wait(&self, since: u64) -> IdleEntry {
        let mut list = self.list();
        if let Some(wanted) = list.wanted.take() {
            wanted.fire();
        }
        list.insert(since)
    }

    /// Waits until the listener takes `entry` out of the list to close its
    /// connection.
    pub(crate) async fn evicted(&self, entry: IdleEntry) {
        future::poll_fn(|cx| {
            let mut list = self.list();
            let Some(slot) = list.slot_mut(entry) else {
                return Poll::Ready(());
            };
            match &mut slot.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Takes `entry` out of the list as its wait ends; `false` if the
    /// listener took it out first, to close it, which is then final.
    pub(crate) fn end_wait(&self, entry: IdleEntry) -> bool {
        self.list().remove(entry).is_some()
    }

    /// Tells the longest-idle connection to close, giving up its place;
    /// with none idle, returns a trigger the next one to go idle fires.
    fn close_oldest(&self) -> Option<Trigger> {
        let mut list = self.list();
        let Some(oldest) = list.oldest().and_then(|entry| list.remove(entry)) else {
            return Some(list.wanted.get_or_insert_with(Trigger::new).clone());
        };
        drop(list);
        // Not yet polled, its wait finds itself unlisted when it is.
        if let Some(waker) = oldest.waker {
            waker.wake();
        }
        None
    }
}

/// Where a waiting connection is in the [`IdleList`]: its slot, and its
/// stamp, which tells whether the slot is still its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdleEntry {
    /// The index of its slot.
    pub(crate) slot: usize,
    /// Its stamp.
    pub(crate) since: u64,
}

/// The waiting connections in the order of their stamps: a doubly linked
/// list threaded through a slab, so that listing one (after the newest,
/// nearly always), taking one out and finding the oldest each cost a few
/// index writes, where a `BTreeMap` by stamp cost about 100 ns a request.
#[derive(Default)]
pub(crate) struct IdleList {
    /// Every slot, listed or free; never more than were listed at once,
    /// which is at most `--max-connections`.
    pub(crate) slots: Vec<IdleSlot>,
    /// The slots not listed, reused before the slab grows.
    pub(crate) free: Vec<usize>,
    /// The oldest listed slot.
    pub(crate) head: Option<usize>,
    /// The newest listed slot.
    pub(crate) tail: Option<usize>,
    /// Fired by the next connection to begin waiting, for the listener
    /// when it found none to close.
    pub(crate) wanted: Option<Trigger>,
}

/// A slot of the [`IdleList`].
#[derive(Default)]
pub(crate) struct IdleSlot {
    /// Whether a waiting connection has it (else it is free).
    pub(crate) listed: bool,
    /// The connection's stamp.
    pub(crate) since: u64,
    /// The slot listed before it (stamped earlier).
    prev: Option<usize>,
    /// The slot listed after it.
    pub(crate) next: Option<usize>,
    /// What wakes the connection's wait, once it has been polled.
    pub(crate) waker: Option<Waker>,
}

impl IdleList {
    /// Lists a connection stamped `since`, in the order of the stamps;
    /// returns its entry.
    pub(crate) fn insert(&mut self, since: u64) -> IdleEntry {
        // Stamps are taken just before the last answers are written, so a
        // stamp greater than the newest's is the rule: the walk back from
        // the tail is nearly always empty.
        let mut prev = self.tail;
        while let Some(p) = prev
            && self.slots[p].since > since
        {
            prev = self.slots[p].prev;
        }
        let next = prev.map_or(self.head, |p| self.slots[p].next);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(IdleSlot::default());
            self.slots.len() - 1
        });
        self.slots[slot] = IdleSlot {
            listed: true,
            since,
            prev,
            next,
            waker: None,
        };
        self.link(prev, next, Some(slot));
        IdleEntry { slot, since }
    }

    /// Takes `entry` out of the list; returns what its slot held, or
    /// `None` if it is no longer listed.
    pub(crate) fn remove(&mut self, entry: IdleEntry) -> Option<IdleSlot> {
        self.slot_mut(entry)?;
        let taken = std::mem::take(&mut self.slots[entry.slot]);
        self.link(taken.prev, taken.next, None);
        self.free.push(entry.slot);
        Some(taken)
    }

    /// Makes `between` (a new slot, or `None` to unlink one) follow `prev`
    /// and precede `next`.
    pub(crate) fn link(
        &mut self,
        prev: Option<usize>,
        next: Option<usize>,
        between: Option<usize>,
    ) {
        let after = between.or(next);
        let before = between.or(prev);
        match prev {
            Some(p) => self.slots[p].next = after,
            None => self.head = after,
        }
        match next {
            Some(n) => self.slots[n].prev = before,
            None => self.tail = before,
        }
    }

    /// Returns the entry of the connection waiting longest.
    pub(crate) fn oldest(&self) -> Option<IdleEntry> {
        self.head.map(|slot| IdleEntry {
            slot,
            since: self.slots[slot].since,
        })
    }

    /// Returns `entry`'s slot while it is listed.
    fn slot_mut(&mut self, entry: IdleEntry) -> Option<&mut IdleSlot> {
        self.slots
            .get_mut(entry.slot)
            .filter(|slot| slot.listed && slot.since == entry.since)
    }
}

/// What ended a connection's wait for the client's next bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The client sent something, or closed.
    Readable,
    /// The deadline passed.
    Expired,
    /// The listener closed it to make room ([`IdleConnections`]).
    Evicted,
}

/// Takes a place among `--max-connections` for the next connection. At
/// the limit, once a client waits in the backlog, it makes room: it closes
/// the longest-idle keep-alive connection and takes its place; with none
/// idle, it waits for a place to free or a connection to go idle.
pub(crate) async fn take_place(
    places: &Arc<smol::lock::Semaphore>,
    listener: &Async<TcpListener>,
    idle: &IdleConnections,
) -> smol::lock::SemaphoreGuardArc {
    loop {
        if let Some(place) = places.try_acquire_arc() {
            return place;
        }
        // A place freed wins a tie in both races: nothing is closed then.
        let freed = async { Some(places.acquire_arc().await) };
        let knocked = async {
            // An error shows up again on the accept that follows.
            let _ = listener.readable().await;
            None
        };
        if let Some(place) = future::or(freed, knocked).await {
            return place;
        }
        let Some(went_idle) = idle.close_oldest() else {
            // Its place comes back as soon as it has closed.
            return places.acquire_arc().await;
        };
        let freed = async { Some(places.acquire_arc().await) };
        let idled = async {
            went_idle.wait().await;
            None
        };
        if let Some(place) = future::or(freed, idled).await {
            return place;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the stamps of an idle list from oldest to newest, checking
    /// that its links agree both ways.
    fn idle_order(list: &IdleList) -> Vec<u64> {
        let (mut order, mut prev, mut at) = (Vec::new(), None, list.head);
        while let Some(slot) = at {
            assert_eq!(list.slots[slot].prev, prev, "{order:?}");
            order.push(list.slots[slot].since);
            (prev, at) = (Some(slot), list.slots[slot].next);
        }
        assert_eq!(list.tail, prev, "{order:?}");
        order
    }

    #[test]
    fn the_idle_list_keeps_stamp_order_and_forgets_what_it_gave_up() {
        let mut list = IdleList::default();
        let oldest = list.insert(1);
        let middle = list.insert(3);
        let newest = list.insert(4);
        // Listed late (its answers took a while to write), in stamp order.
        let late = list.insert(2);
        assert_eq!(idle_order(&list), [1, 2, 3, 4]);
        // Taken out from the middle, the front and the back.
        assert!(list.remove(middle).is_some());
        assert_eq!(idle_order(&list), [1, 2, 4]);
        assert_eq!(list.oldest(), Some(oldest));
        assert!(list.remove(oldest).is_some());
        assert!(list.remove(newest).is_some());
        assert_eq!(idle_order(&list), [2]);
        // Removed once only: a stale entry is not listed, even once its
        // slot is reused by another connection.
        assert!(list.remove(middle).is_none());
        let reused = list.insert(5);
        assert_eq!(reused.slot, newest.slot);
        assert!(list.remove(newest).is_none());
        assert!(list.slot_mut(newest).is_none());
        assert_eq!(idle_order(&list), [2, 5]);
        // Emptied, it starts over; the slab kept only the slots it needed.
        assert!(list.remove(late).is_some());
        assert!(list.remove(reused).is_some());
        assert_eq!(idle_order(&list), Vec::<u64>::new());
        assert_eq!(list.oldest(), None);
        assert_eq!(list.slots.len(), 4);
        let again = list.insert(6);
        assert_eq!(idle_order(&list), [6]);
        assert_eq!(list.oldest(), Some(again));
    }
}
