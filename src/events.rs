//! `GET /events` and the dashboard: the one event log every stream reads,
//! the streams' filters and bells, and the page at `/` that reads them.
//!
//! `GET /events` is a Server-Sent Events stream over chunked HTTP/1.1: a
//! `stats` event first and then at most once a second while anything
//! changed, a `task` event for every change of a task's state or progress,
//! in order, and a `: keep-alive` comment after a silence. `GET /` is the
//! dashboard, one page embedded in the binary, which reads the stream.
//! This module owns what a stream reads and when it is woken; the stream's
//! loop on its socket is the connection's
//! ([`Connection`](crate::conn::Connection), `stream_events`).
//!
//! # One ring for every stream
//!
//! Events are made where changes are made: under the store lock, by
//! [`Store::publish`], called from the store's one choke point of change.
//! Each is rendered once and appended to the [`EventLog`], one bounded
//! ring shared by every stream (the shape of a broadcast channel): each
//! stream reads it at a place of its own, filters what it reads, and
//! writes it. With no stream open, publishing is one load.
//!
//! Why a ring rather than a backlog per stream: pushing each event to
//! every stream's backlog cost every submission a lock and a copy per
//! stream, under the store lock, whether the stream read or not (with
//! 1,000 streams the 202 rate fell to a seventh). Now a publisher appends
//! once and rings only the streams that wait for an event they may want:
//! a stream waits under what its filters name first (its task, label,
//! kind or queue; see [`Waiting`]), so an event rings a filtered stream
//! only when it may pass, and a rung stream is not rung again until it has
//! read. An event that no stream will read (every stream waits and none
//! for it; those rung since have read it or lagged) is not even rendered.
//! So a stream that stopped reading, or whose filters match nothing,
//! costs publishing nothing, however many there are.
//!
//! Lag is per stream: the ring keeps the last [`LOG_EVENTS`] events and
//! at most [`LOG_BYTES`] of them, and a stream is told it lagged, and
//! ends, when the ring no longer has the first event it was rung for. A
//! stream that waits has read everything it may want, so what the ring
//! overwrites meanwhile is nothing it wants; once rung, it counts every
//! event, wanted or not (an unfiltered stream lags exactly 1,000 events or
//! 256 KiB behind, as a backlog of its own did).
//!
//! Waking: a stream is rung when an event it may want comes, then lets
//! more gather ([`GATHER_EVENTS`], [`GATHER_BYTES`], [`GATHER_WAIT`])
//! before it reads; the gatherers are rung together when enough has come.
//! The stats are a counter of changes: [`EventLog::changed`] bumps it and
//! rings only the streams that wait to hear of the next change, with no
//! lock at all when none does. An idle stream is a connection task asleep
//! on its bell, costing no CPU.
//!
//! A reader that keeps up is not lagged, but a burst of thousands of
//! changes in a few milliseconds (a client pipelining hundreds of
//! submissions) can outrun even one that reads at once: the socket lets
//! events out no faster than TCP's window grows. So can saturation: at the
//! bench's ~85,000 submissions a second on 2 cores (three events each,
//! ~40 MB/s) an unfiltered `curl -N` sharing the machine lagged a few
//! times a second. That is why `lagged` ends the stream and the reader
//! (the dashboard, the client's `events`) reconnects and reads `/tasks`:
//! the server never slows down for a reader. What streams cost the
//! writers, measured on that machine at saturation: one unfiltered stream
//! read by `curl -N`, about 3% of the 202 rate (5% more CPU per request);
//! 1,000 streams that never read, or 1,000 filtered to other tasks,
//! 0.91× and 0.88× the rate with none
//! (`cargo test --release --test events -- --ignored --nocapture
//! bench_submissions`, medians of 3 rounds).
//!
//! # Memory bounds
//!
//! The streams share one log of at most [`LOG_EVENTS`] events or
//! [`LOG_BYTES`] of them (its buffer stays under about twice that, so
//! under 1 MiB with its bookkeeping, whatever the number of streams). Each
//! stream keeps a buffer of up to [`KEPT_EVENT_BUFFER`] for the next
//! events, beside its connection's. A stream whose client stops reading
//! costs the kernel a small send buffer ([`STREAM_SEND_BUFFER`], which
//! Linux doubles) and its client's receive buffer; then its writes block,
//! costing nothing more, until the connection's write timeout closes it
//! ([`WRITE_TIMEOUT`](crate::http::WRITE_TIMEOUT)). So a slow reader
//! costs the server a bounded amount and never slows anyone else.
//! `cargo test --release --test events -- --ignored bench_memory` prints
//! what an idle stream and a stalled one cost: 7.8 KiB per idle stream,
//! 86 KiB per stream with 20 stalled and 600 events waiting, when last
//! measured.
//!
//! # The dashboard
//!
//! `GET /` answers [`DASHBOARD`], `src/dashboard.html` embedded whole
//! (about 35 KiB: its script and styles inline, its icon a `data:` URL),
//! so it makes no request but to the API, and [`DASHBOARD_HEADERS`] keep
//! it to its own origin. It reads the stream with `fetch` rather than
//! `EventSource`, so that it can send `Authorization`: with `--token`,
//! `GET /` is open and the page asks for the token once, keeping it in
//! `sessionStorage` for the browser session. It follows `stats` and
//! `task` events, reads `/tasks` and `/schedules`, and reconnects after
//! `lagged` or a dropped stream. It works on a 360-pixel screen, by
//! keyboard, in light and dark; `tests/browser/` drives it in headless
//! Chromium in CI.

use crate::{
    config::Config,
    json::{VecWriter, quoted, write_decimal, write_json_opt, write_json_str, write_raw_opt},
    response::{Delivery, Response},
    routes::{query_param, write_counts},
    shared::Shared,
    store::Store,
    submit::task_queue,
    table::Lookup,
    task::{IdRef, Names, State, Task, Text},
    time::{with_http_date, write_timestamp},
};
use async_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a stream may stay silent before it says `: keep-alive`, so
/// that proxies and clients do not take it for dead.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often at most a stream gets `stats`: the contract's once a second
/// (SPEC §11), often enough for a person watching the dashboard.
pub(crate) const STATS_EVERY: Duration = Duration::from_secs(1);

/// The most events the log keeps: a stream that falls further behind is
/// told it lagged (SPEC §11).
const LOG_EVENTS: usize = 1000;

/// The most bytes of events the log keeps: a stream that falls further
/// behind is told it lagged (SPEC §11). With the events' entries, the
/// most the events cost, whatever the number of streams.
const LOG_BYTES: usize = 256 << 10;

/// The largest buffer of events a stream keeps for the next ones. One that
/// keeps up takes a little more than `GATHER_EVENTS` or `GATHER_BYTES` at
/// a time at saturation (35 KiB in the bench); a buffer a burst made
/// larger is given back rather than held for the stream's life.
const KEPT_EVENT_BUFFER: usize = 64 << 10;

/// The kernel send buffer an event stream asks for (Linux doubles it for
/// its bookkeeping): what a client that stopped reading can make the
/// kernel hold for it, beside its own receive buffer, before its stream
/// blocks and costs nothing more. Left to grow, it reached 4 MiB, and a
/// thousand such clients kept the server busy filling them; this holds
/// a few gathers, so a reader that keeps up does not wait for it.
pub(crate) const STREAM_SEND_BUFFER: usize = 128 << 10;

/// How many events, or bytes of them, a stream lets gather before it
/// writes them, and how long it waits for that many. A write is a wake-up
/// and a read for the reader too: on a busy server, one write per few
/// events costs both sides more than the events themselves. The log rings
/// the gatherers each time this much more has come, so a stream under
/// load never waits out the timer (which, with every core busy, fires
/// late) and stays far from the log's limits. The wait is long enough
/// that one arming serves the gathers of the next few milliseconds (an
/// alarm only moves earlier): arming a timer wakes the reactor's thread,
/// and at 1 ms each gather did.
pub(crate) const GATHER_EVENTS: usize = 128;
/// How many bytes of events a stream lets gather before it writes them:
/// see [`GATHER_EVENTS`].
pub(crate) const GATHER_BYTES: usize = 32 << 10;
/// How long a stream waits for a gather's worth of events before it
/// writes what came: see [`GATHER_EVENTS`].
pub(crate) const GATHER_WAIT: Duration = Duration::from_millis(5);

/// Which `task` events a stream wants: all of the filters it gives.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct EventFilter {
    /// `?id=`: one task (its number; the prefix is checked when the
    /// stream starts).
    pub(crate) id: Option<u64>,
    /// `?task_id=`: tasks with this label.
    pub(crate) label: Option<Box<[u8]>>,
    /// `?kind=`: tasks of this kind.
    pub(crate) kind: Option<Box<str>>,
    /// `?queue=`: tasks of this queue.
    pub(crate) queue: Option<u8>,
}

impl EventFilter {
    /// Reads the filters of a `/events` request; the error is its `400`.
    pub(crate) fn parse(
        query: Option<&[u8]>,
        config: &Config,
        store: &Store,
    ) -> Result<EventFilter, Response> {
        let bad = |sentence: &str| Response::error(400, sentence);
        let text = |name| -> Result<Option<String>, Response> {
            Ok(query_param(query, name)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
        };
        let id = match query_param(query, "id")? {
            None => None,
            Some(id) => {
                let id =
                    IdRef::parse(&id).filter(|id| store.tasks().lookup_ref(id) != Lookup::Unknown);
                Some(
                    id.ok_or_else(|| bad("id must be the id of a task this server made"))?
                        .num,
                )
            }
        };
        let kind = text("kind")?;
        if let Some(kind) = &kind
            && kind != "sleep"
            && !config.handlers.iter().any(|h| *h.kind == **kind)
        {
            return Err(bad(&format!("unknown task kind {}", quoted(kind))));
        }
        let queue = match text("queue")? {
            None => None,
            Some(name) => Some(task_queue(config, Some(&name), None).map_err(|e| bad(&e))?),
        };
        Ok(EventFilter {
            id,
            label: query_param(query, "task_id")?.map(|l| l.into_owned().into()),
            kind: kind.map(Box::from),
            queue,
        })
    }
}

/// The event log: one bounded ring of rendered `task` events that every
/// stream reads at a place of its own, and the bells that wake streams.
///
/// Publishing an event is one append whatever the number of streams, and
/// a bell for each stream waiting for an event it may want. A stream is
/// rung once and then no more until it has read, so one that stopped
/// reading costs publishing nothing after its first bell.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    /// The ring and the streams' places in it, locked by a publisher
    /// (which holds the store's lock: that one is always taken first) and
    /// by a stream (which holds no other).
    pub(crate) ring: Mutex<Ring>,
    /// How many streams are open: with none, publishing is this one load.
    pub(crate) streams: AtomicUsize,
    /// How many changes there have been (task events, pauses, refusals): a
    /// stream owes `stats` while this differs from what its last `stats`
    /// showed.
    pub(crate) changes: AtomicU64,
    /// Whether a stream may wait to hear of the next change: without one,
    /// a change that makes no event ([`EventLog::changed`]) takes no lock.
    pub(crate) awaited: AtomicBool,
}

/// The events the log keeps, and which streams wait for what.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// The kept events' bytes, one after another, behind those evicted
    /// and not yet dropped from the front (see [`Ring::compact`]).
    pub(crate) bytes: Vec<u8>,
    /// Where `bytes` starts, counted in all the bytes ever appended.
    base: u64,
    /// The kept events, oldest first.
    events: VecDeque<Entry>,
    /// The sequence number of the oldest kept event: events are numbered
    /// in the order they happened, and the next one gets `first +
    /// events.len()`.
    pub(crate) first: u64,
    /// The open streams, by slot; a closed stream's slot is used again.
    pub(crate) slots: Vec<Option<Slot>>,
    /// The slots not in use.
    pub(crate) free: Vec<usize>,
    /// The streams that have read all they wanted and wait for an event
    /// they may want.
    pub(crate) waiting: Waiting,
    /// The streams that wait to hear of the next change.
    change_waiters: Vec<usize>,
    /// The streams letting events gather: they are rung together each
    /// time `GATHER_EVENTS` or `GATHER_BYTES` more have come.
    gatherers: Vec<usize>,
    /// The events, and their bytes, appended since the gatherers were last
    /// rung.
    since_gather: (usize, usize),
    /// The slots an event rings, kept to spare an allocation each.
    pub(crate) woken: Vec<usize>,
    /// The sequence numbers at which streams were rung and have not read
    /// since, oldest first, each with how many such streams: those that
    /// may still read what the log keeps. One whose number the log no
    /// longer has has lagged and will read nothing more. With none, an
    /// event that rings no stream is one no stream will read, and is not
    /// even written.
    readers: VecDeque<(u64, usize)>,
}

/// What the log keeps of an event beside its bytes: where they are, and
/// what filters look at.
#[derive(Debug)]
struct Entry {
    /// Where its bytes start, counted in all the bytes ever appended.
    pub(crate) at: u64,
    /// How many bytes it has.
    pub(crate) len: usize,
    /// Its task's number, for `?id=`.
    pub(crate) id: u64,
    /// Its task's queue, for `?queue=`.
    pub(crate) queue: u8,
    /// Where in its bytes it says its task's `task_id` and `kind`.
    pub(crate) said: Said,
}

/// Where a `task` event says its task's `task_id` and `kind`, as JSON:
/// offsets into the event. `?task_id=` and `?kind=` compare those bytes
/// with their own value written the same way, so the log keeps no copy
/// of a label.
#[derive(Debug)]
struct Said {
    /// The `task_id` member's value: `"…"` or `null`.
    pub(crate) label: Range<usize>,
    /// The `kind` member's value.
    pub(crate) kind: Range<usize>,
}

/// A stream, as the log keeps it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Rings the stream's bell; a ring while one is pending is dropped.
    pub(crate) bell: Sender<()>,
    /// Where it waits in [`Ring::waiting`].
    pub(crate) key: WaitKey,
    /// The first event since it last read that it may want, once one has
    /// come. Until then it waits in [`Ring::waiting`], which is how it
    /// knows that every event since it last read is one it does not want,
    /// and need not read them.
    pub(crate) woke: Option<u64>,
    /// Whether it is in [`Ring::change_waiters`].
    awaits_change: bool,
    /// Whether it is in [`Ring::gatherers`].
    gathers: bool,
}

/// Where a stream waits for events: under the first thing its filters
/// name of the task, id, label, kind or queue, or with those that want
/// every event.
#[derive(Debug)]
pub(crate) enum WaitKey {
    /// No filter.
    All,
    /// `?id=`.
    Id(u64),
    /// `?task_id=` (and no `?id=`).
    Label(Box<[u8]>),
    /// `?kind=` (and neither of those).
    Kind(Box<str>),
    /// `?queue=` alone.
    Queue(u8),
}

/// The streams waiting for an event they may want, by [`WaitKey`]: an
/// event looks up its task's id, label, kind and queue, so it rings only
/// the streams that may want it, however many others wait. One it rings
/// may still not want it (`?task_id=a&queue=b`, a task `a` in another
/// queue): that stream reads, finds nothing, and waits again.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// Streams without filters.
    pub(crate) all: Vec<usize>,
    /// By `?id=`.
    pub(crate) id: HashMap<u64, Vec<usize>>,
    /// By `?task_id=`.
    pub(crate) label: HashMap<Box<[u8]>, Vec<usize>>,
    /// By `?kind=`.
    pub(crate) kind: HashMap<Box<str>, Vec<usize>>,
    /// By `?queue=`.
    pub(crate) queue: HashMap<u8, Vec<usize>>,
}

/// What a stream's [`Subscription::take`] did.
#[derive(Debug, PartialEq)]
pub(crate) enum Taken {
    /// Read what came, perhaps nothing.
    Read,
    /// Took nothing: too little has come, and the stream waits for more
    /// among the gatherers.
    Gathering,
    /// Took nothing: the log no longer has all the stream had not read.
    Lagged,
}

/// A stream's place in the log, given up when it is dropped, however the
/// stream ends.
#[derive(Debug)]
pub(crate) struct Subscription<'a> {
    /// The log.
    pub(crate) log: &'a EventLog,
    /// Its slot there.
    pub(crate) slot: usize,
    /// Where it waits for its bell.
    pub(crate) rung: Receiver<()>,
    /// Its filters, as it applies them to the events it reads.
    pub(crate) wants: Wants,
}

/// A stream's filters as it applies them to the log's events.
#[derive(Debug)]
pub(crate) struct Wants {
    /// `?id=`.
    pub(crate) id: Option<u64>,
    /// `?queue=`.
    pub(crate) queue: Option<u8>,
    /// `?kind=`, written as an event writes a kind.
    pub(crate) kind: Option<Vec<u8>>,
    /// `?task_id=`, written as an event writes a label; empty if it is not
    /// UTF-8, which no label is: an event writes none empty (`"…"` or
    /// `null`), so it matches none.
    pub(crate) label: Option<Vec<u8>>,
}

impl EventLog {
    /// Locks the ring; a poisoned lock is used as it is, as the store's is.
    pub(crate) fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells whether any stream is open: publishing need not render.
    pub(crate) fn open(&self) -> bool {
        self.streams.load(Ordering::Relaxed) > 0
    }

    /// Returns how many changes there have been.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Appends a task's event for its change at `at` and rings the streams
    /// that may want it, those waiting to hear of a change, and the
    /// gatherers when enough has come. Called under the store's lock, in
    /// the order the changes happen; with no stream open, it is not.
    pub(crate) fn publish(&self, task: &Task, names: Names, at: u64) {
        let mut ring = self.ring();
        self.changes.fetch_add(1, Ordering::SeqCst);
        ring.publish(task, names, at);
        self.awaited.store(false, Ordering::SeqCst);
    }

    /// Tells the streams that the stats changed without a task event (a
    /// pause, a refusal). Takes no lock unless a stream waits to hear of
    /// it, and then only the log's: it may be called under the store's
    /// lock or without it.
    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        // With `SeqCst` on both sides, either this sees a stream's flag or
        // that stream sees this change (see [`Subscription::await_change`]).
        if self.awaited.load(Ordering::SeqCst) {
            let mut ring = self.ring();
            ring.ring_change_waiters();
            self.awaited.store(false, Ordering::SeqCst);
        }
    }

    /// Opens a stream's place in the log, at its end: the stream is told
    /// of events from now on, those `filter` lets through.
    pub(crate) fn subscribe(&self, filter: &EventFilter) -> Subscription<'_> {
        let (bell, rung) = async_channel::bounded(1);
        let key = WaitKey::of(filter);
        let mut ring = self.ring();
        let slot = ring.free.pop().unwrap_or(ring.slots.len());
        ring.waiting.add(&key, slot);
        let kept = Some(Slot {
            bell,
            key,
            woke: None,
            awaits_change: false,
            gathers: false,
        });
        match ring.slots.get_mut(slot) {
            Some(free) => *free = kept,
            None => ring.slots.push(kept),
        }
        self.streams.fetch_add(1, Ordering::SeqCst);
        Subscription {
            log: self,
            slot,
            rung,
            wants: Wants::new(filter),
        }
    }

    /// Closes the stream in `slot`: it is taken out of every list it waits
    /// in. The last stream to close empties the log: with none open,
    /// nothing is appended, and what it kept would never be read.
    fn unsubscribe(&self, slot: usize) {
        let mut ring = self.ring();
        let Some(kept) = ring.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        match kept.woke {
            None => ring.waiting.remove(&kept.key, slot),
            Some(from) => ring.read_from(from),
        }
        if kept.awaits_change {
            ring.change_waiters.retain(|&s| s != slot);
        }
        if kept.gathers {
            ring.gatherers.retain(|&s| s != slot);
        }
        ring.free.push(slot);
        if self.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            ring.clear();
        }
    }
}

impl Ring {
    /// Returns the sequence number the next event gets.
    pub(crate) fn head(&self) -> u64 {
        self.first + self.events.len() as u64
    }

    /// Appends a task's event and rings whom it concerns (see
    /// [`EventLog::publish`]). When every stream waits and none may want
    /// it, and none rung before is still reading, no stream will ever read
    /// it: it is not even written.
    pub(crate) fn publish(&mut self, task: &Task, names: Names, at: u64) {
        self.ring_change_waiters();
        let mut woken = std::mem::take(&mut self.woken);
        self.waiting.take_for(task, &mut woken);
        if woken.is_empty() && self.readers.is_empty() {
            self.woken = woken;
            return;
        }
        let (seq, len) = self.append(task, names, at);
        if !woken.is_empty() && seq >= self.first {
            self.readers.push_back((seq, woken.len()));
        }
        for k in woken.drain(..) {
            if let Some(Some(slot)) = self.slots.get_mut(k) {
                slot.woke = Some(seq);
                slot.ring();
            }
        }
        self.woken = woken;
        self.since_gather.0 += 1;
        self.since_gather.1 += len;
        if self.since_gather.0 >= GATHER_EVENTS || self.since_gather.1 >= GATHER_BYTES {
            self.since_gather = (0, 0);
            for k in self.gatherers.drain(..) {
                if let Some(Some(slot)) = self.slots.get_mut(k) {
                    slot.gathers = false;
                    slot.ring();
                }
            }
        }
    }

    /// Appends a task's event, evicting the oldest past `LOG_EVENTS` or
    /// `LOG_BYTES`; returns its sequence number and length. An event
    /// larger than `LOG_BYTES` alone evicts every other and is not kept
    /// either: a stream that wants it lags.
    pub(crate) fn append(&mut self, task: &Task, names: Names, at: u64) -> (u64, usize) {
        let seq = self.head();
        let start = self.bytes.len();
        let said = write_task_event(&mut self.bytes, task, names, at);
        let len = self.bytes.len() - start;
        let entry = Entry {
            at: self.base + start as u64,
            len,
            id: task.id,
            queue: task.queue,
            said,
        };
        let end = entry.at + len as u64;
        while self.events.len() >= LOG_EVENTS
            || self
                .events
                .front()
                .is_some_and(|oldest| end - oldest.at > LOG_BYTES as u64)
        {
            self.events.pop_front();
            self.first += 1;
        }
        if len > LOG_BYTES {
            self.bytes.truncate(start);
            self.first += 1;
        } else {
            self.events.push_back(entry);
        }
        while self
            .readers
            .front()
            .is_some_and(|&(from, _)| from < self.first)
        {
            self.readers.pop_front();
        }
        self.compact();
        (seq, len)
    }

    /// Counts out a stream rung at `from` that has read (or closed): it no
    /// longer holds the events from `from` on. One that lagged was counted
    /// out when its event was evicted.
    fn read_from(&mut self, from: u64) {
        if let Ok(at) = self.readers.binary_search_by_key(&from, |&(seq, _)| seq)
            && let Some((_, count)) = self.readers.get_mut(at)
        {
            *count -= 1;
            if *count == 0 {
                self.readers.remove(at);
            }
        }
    }

    /// Drops the evicted bytes from the front once there are `LOG_BYTES`
    /// of them: each byte is moved at most about once, and the buffer
    /// stays under about twice `LOG_BYTES` and one event.
    fn compact(&mut self) {
        let end = self.base + self.bytes.len() as u64;
        let kept = self.events.front().map_or(end, |oldest| oldest.at);
        let dead = (kept - self.base) as usize;
        if dead >= LOG_BYTES || kept == end {
            self.bytes.drain(..dead);
            self.base = kept;
        }
    }

    /// Forgets every event, keeping the numbering, and gives back the
    /// buffers: the last stream has closed.
    pub(crate) fn clear(&mut self) {
        self.first = self.head();
        self.base += self.bytes.len() as u64;
        *self = Ring {
            first: self.first,
            base: self.base,
            ..Ring::default()
        };
    }

    /// Tells whether what came from sequence number `from` on is enough to
    /// be written at once, `GATHER_EVENTS` or `GATHER_BYTES`, or is no
    /// longer all kept.
    fn gathered(&self, from: u64) -> bool {
        let Some(skip) = from.checked_sub(self.first) else {
            return true;
        };
        let end = self.base + self.bytes.len() as u64;
        let skip = skip as usize;
        self.events.len().saturating_sub(skip) >= GATHER_EVENTS
            || self
                .events
                .get(skip)
                .is_some_and(|e| end - e.at >= GATHER_BYTES as u64)
    }

    /// Appends to `out` the events from sequence number `from` on that
    /// `wants` lets through; returns false, having appended nothing, if
    /// some are no longer kept: the reader lagged.
    pub(crate) fn read(&self, from: u64, wants: &Wants, out: &mut Vec<u8>) -> bool {
        let Some(skip) = from.checked_sub(self.first) else {
            return false;
        };
        let skip = (skip as usize).min(self.events.len());
        let start = |e: &Entry| (e.at - self.base) as usize;
        if wants.everything() {
            // They are one after another, to the end of the bytes.
            if let Some(e) = self.events.get(skip) {
                out.extend_from_slice(self.bytes.get(start(e)..).unwrap_or_default());
            }
            return true;
        }
        for e in self.events.range(skip..) {
            let event = self
                .bytes
                .get(start(e)..start(e) + e.len)
                .unwrap_or_default();
            if wants.passes(e, event) {
                out.extend_from_slice(event);
            }
        }
        true
    }

    /// Rings the streams waiting to hear of the next change.
    fn ring_change_waiters(&mut self) {
        for k in self.change_waiters.drain(..) {
            if let Some(Some(slot)) = self.slots.get_mut(k) {
                slot.awaits_change = false;
                slot.ring();
            }
        }
    }
}

impl Slot {
    /// Rings the stream's bell.
    pub(crate) fn ring(&self) {
        // Full: a ring is pending, which is all the stream needs. Closed
        // cannot happen: the stream holds the other end until it closes
        // its slot.
        let _ = self.bell.try_send(());
    }
}

impl WaitKey {
    /// Returns where a stream with `filter` waits.
    pub(crate) fn of(filter: &EventFilter) -> WaitKey {
        match filter {
            EventFilter { id: Some(id), .. } => WaitKey::Id(*id),
            EventFilter { label: Some(l), .. } => WaitKey::Label(l.clone()),
            EventFilter { kind: Some(k), .. } => WaitKey::Kind(k.clone()),
            EventFilter { queue: Some(q), .. } => WaitKey::Queue(*q),
            _ => WaitKey::All,
        }
    }
}

impl Waiting {
    /// Adds the stream in `slot` where `key` says.
    pub(crate) fn add(&mut self, key: &WaitKey, slot: usize) {
        match key {
            WaitKey::All => self.all.push(slot),
            WaitKey::Id(id) => self.id.entry(*id).or_default().push(slot),
            WaitKey::Label(label) => match self.label.get_mut(label) {
                Some(list) => list.push(slot),
                None => drop(self.label.insert(label.clone(), vec![slot])),
            },
            WaitKey::Kind(kind) => match self.kind.get_mut(kind) {
                Some(list) => list.push(slot),
                None => drop(self.kind.insert(kind.clone(), vec![slot])),
            },
            WaitKey::Queue(q) => self.queue.entry(*q).or_default().push(slot),
        }
    }

    /// Takes the stream in `slot` out from where `key` says.
    pub(crate) fn remove(&mut self, key: &WaitKey, slot: usize) {
        /// Takes `slot` out of `map`'s list under `k`, and the list out of
        /// `map` if that empties it.
        fn remove_from<K, Q>(map: &mut HashMap<K, Vec<usize>>, k: &Q, slot: usize)
        where
            K: std::borrow::Borrow<Q> + Eq + std::hash::Hash,
            Q: Eq + std::hash::Hash + ?Sized,
        {
            if let Some(list) = map.get_mut(k) {
                list.retain(|&s| s != slot);
                if list.is_empty() {
                    map.remove(k);
                }
            }
        }
        match key {
            WaitKey::All => self.all.retain(|&s| s != slot),
            WaitKey::Id(id) => remove_from(&mut self.id, id, slot),
            WaitKey::Label(label) => remove_from(&mut self.label, &**label, slot),
            WaitKey::Kind(kind) => remove_from(&mut self.kind, &**kind, slot),
            WaitKey::Queue(q) => remove_from(&mut self.queue, q, slot),
        }
    }

    /// Moves into `woken` the streams that may want `task`'s event: a
    /// lookup for each kind of key some stream waits under.
    fn take_for(&mut self, task: &Task, woken: &mut Vec<usize>) {
        woken.append(&mut self.all);
        let mut take = |list: Option<Vec<usize>>| {
            if let Some(mut list) = list {
                woken.append(&mut list);
            }
        };
        if !self.id.is_empty() {
            take(self.id.remove(&task.id));
        }
        if !self.label.is_empty()
            && let Some(label) = &task.label
        {
            take(self.label.remove(label.as_str().as_bytes()));
        }
        if !self.kind.is_empty() {
            take(self.kind.remove(task.kind()));
        }
        if !self.queue.is_empty() {
            take(self.queue.remove(&task.queue));
        }
    }
}

impl Subscription<'_> {
    /// Takes into `taken` (emptied first) the events that came since the
    /// stream last took, those its filters let through. With `gather`, if
    /// less than a gather's worth has come it takes nothing and waits among
    /// the gatherers for more. Either way it starts waiting again for an
    /// event it may want once it has taken.
    pub(crate) fn take(&self, taken: &mut Vec<u8>, gather: bool) -> Taken {
        taken.clear();
        // A stream that keeps up allocates nothing for its events; a
        // buffer a burst made large is given back.
        if taken.capacity() > KEPT_EVENT_BUFFER {
            *taken = Vec::new();
        }
        let mut guard = self.log.ring();
        let ring = &mut *guard;
        // Still waiting: nothing it may want has come.
        let Some(Some(Slot {
            woke: Some(from), ..
        })) = ring.slots.get(self.slot)
        else {
            return Taken::Read;
        };
        let from = *from;
        if gather && !ring.gathered(from) {
            if let Some(Some(slot)) = ring.slots.get_mut(self.slot)
                && !slot.gathers
            {
                slot.gathers = true;
                ring.gatherers.push(self.slot);
            }
            return Taken::Gathering;
        }
        let read = ring.read(from, &self.wants, taken);
        if let Some(Some(slot)) = ring.slots.get_mut(self.slot) {
            slot.woke = None;
            ring.waiting.add(&slot.key, self.slot);
            ring.read_from(from);
        }
        if read { Taken::Read } else { Taken::Lagged }
    }

    /// Asks to be rung at the next change, unless there has been one since
    /// `seen`; returns whether there has.
    pub(crate) fn await_change(&self, seen: u64) -> bool {
        if self.log.changes() != seen {
            return true;
        }
        {
            let mut guard = self.log.ring();
            let ring = &mut *guard;
            if let Some(Some(slot)) = ring.slots.get_mut(self.slot)
                && !slot.awaits_change
            {
                slot.awaits_change = true;
                ring.change_waiters.push(self.slot);
            }
            self.log.awaited.store(true, Ordering::SeqCst);
        }
        // A change made between the first look and the flag did not see
        // the flag: look again.
        self.log.changes() != seen
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.log.unsubscribe(self.slot);
    }
}

impl Wants {
    /// Makes a stream's filters ready to apply.
    pub(crate) fn new(filter: &EventFilter) -> Wants {
        let json = |s: &str| {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            out
        };
        Wants {
            id: filter.id,
            queue: filter.queue,
            kind: filter.kind.as_deref().map(json),
            label: filter
                .label
                .as_deref()
                .map(|l| std::str::from_utf8(l).map_or_else(|_| Vec::new(), json)),
        }
    }

    /// Tells whether it lets every event through.
    pub(crate) fn everything(&self) -> bool {
        self.id.is_none() && self.queue.is_none() && self.kind.is_none() && self.label.is_none()
    }

    /// Tells whether it lets `event`, kept as `entry`, through.
    fn passes(&self, entry: &Entry, event: &[u8]) -> bool {
        let says = |at: &Range<usize>, value: &[u8]| event.get(at.clone()) == Some(value);
        self.id.is_none_or(|id| entry.id == id)
            && self.queue.is_none_or(|q| entry.queue == q)
            && self
                .kind
                .as_deref()
                .is_none_or(|k| says(&entry.said.kind, k))
            && self
                .label
                .as_deref()
                .is_none_or(|l| says(&entry.said.label, l))
    }
}

/// Appends a task's `task` event for its change at `at`: `event:` and
/// `data:` lines, and the blank line that ends it. Returns where in it it
/// says the task's label and kind.
fn write_task_event(out: &mut Vec<u8>, task: &Task, names: Names, at: u64) -> Said {
    let start = out.len();
    out.extend_from_slice(b"event: task\ndata: {\"id\": ");
    names.id.write_json(out);
    out.extend_from_slice(b", \"task_id\": ");
    let label = out.len() - start;
    write_json_opt(out, task.label.as_ref().map(Text::as_str));
    let label = label..out.len() - start;
    out.extend_from_slice(b", \"kind\": ");
    let kind = out.len() - start;
    write_json_str(out, task.kind());
    let kind = kind..out.len() - start;
    out.extend_from_slice(b", \"queue\": ");
    write_json_str(out, names.queue);
    out.extend_from_slice(b", \"state\": \"");
    out.extend_from_slice(task.state.name().as_bytes());
    out.extend_from_slice(b"\", \"attempt\": ");
    write_decimal(out, u64::from(task.attempt));
    out.extend_from_slice(b", \"progress\": ");
    write_raw_opt(out, task.extra.as_ref().and_then(|e| e.progress.as_deref()));
    out.extend_from_slice(b", \"at\": ");
    write_timestamp(out, at);
    out.extend_from_slice(b"}\n\n");
    Said { label, kind }
}

/// Appends the `stats` event: counts, queues and the counters.
pub(crate) fn write_stats_event(out: &mut Vec<u8>, shared: &Shared) {
    let store = shared.store();
    out.extend_from_slice(b"event: stats\ndata: {\"counts\": ");
    write_counts(out, store.tasks().counts());
    out.extend_from_slice(b", \"queues\": [");
    for (i, view) in store
        .queue_views(&shared.config, &shared.queues)
        .iter()
        .enumerate()
    {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        view.write_json(out);
    }
    let c = &store.counters();
    let _ = write!(
        VecWriter(out),
        "], \"accepted_total\": {}, \"rejected_total\": {}, \"finished_total\": \
         {{\"succeeded\": {}, \"failed\": {}, \"cancelled\": {}}}}}\n\n",
        c.accepted,
        shared.rejected.load(Ordering::Relaxed),
        c.finished[State::Succeeded as usize],
        c.finished[State::Failed as usize],
        c.finished[State::Cancelled as usize],
    );
}

/// The dashboard: one self-contained page, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The headers that keep the dashboard to itself: scripts, styles and
/// requests only from this origin (inline ones allowed: the page is one
/// file), no sniffing of types, no framing by other pages. Images may also
/// be `data:` URLs, which are no other origin: the page's icon is one, so
/// that the browser asks for no `/favicon.ico` (a 404 in its console).
const DASHBOARD_HEADERS: &str = "Content-Security-Policy: default-src 'self'; \
    script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'\r\n\
    X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n";

/// Answers `GET /` with the dashboard.
pub(crate) fn dashboard() -> Response {
    Response {
        content_type: "text/html; charset=utf-8",
        headers: DASHBOARD_HEADERS,
        ..Response::json(200, DASHBOARD.as_bytes())
    }
}

/// A stream of events being written.
pub(crate) struct Events<'a> {
    /// Whether the body is chunked (HTTP/1.1); an HTTP/1.0 stream ends when
    /// the connection closes.
    pub(crate) chunked: bool,
    /// The stream's place in the event log.
    pub(crate) subscription: Subscription<'a>,
}

impl Events<'_> {
    /// Appends events to the output, as one chunk (SSE readers see only
    /// the events; one chunk for all that waited spares a chunk's framing
    /// each).
    pub(crate) fn write(&self, out: &mut Vec<u8>, events: &[u8]) {
        // An empty chunk would end the body.
        if events.is_empty() {
            return;
        }
        if self.chunked {
            let _ = write!(VecWriter(out), "{:x}\r\n", events.len());
        }
        out.extend_from_slice(events);
        if self.chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// What woke a stream.
pub(crate) enum Wake {
    /// Its bell: events or changed stats wait.
    Rung,
    /// Its stats or keep-alive timer.
    Timer,
    /// Shutdown began.
    Shutdown,
    /// The client closed the connection.
    Gone,
}

/// Appends the head of an event stream: no `Content-Length`, chunked for
/// HTTP/1.1 (an HTTP/1.0 stream ends with the connection).
pub(crate) fn write_stream_head(out: &mut Vec<u8>, delivery: Delivery) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nDate: ");
    with_http_date(|date| out.extend_from_slice(date));
    out.extend_from_slice(b"\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n");
    if !delivery.http10 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    delivery.write_connection(out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{queue::*, store::*, task::*};

    use crate::config::tests::config;
    use crate::journal::tests::task_with_everything;
    use crate::task::tests::new_task;

    /// Publishes to `log` the event of a new task numbered `id` with the
    /// label `label`.
    fn publish_task(log: &EventLog, id: u64, label: &str) {
        let task = Task::from_new(id, new_task(label, 0), State::Queued);
        let names = Names {
            id: TaskId { node: "", num: id },
            nodes: &[],
            queue: "default",
            schedule: None,
        };
        log.publish(&task, names, 0);
    }

    /// Tells whether a stream's bell rang, and silences it.
    fn rang(subscription: &Subscription) -> bool {
        subscription.rung.try_recv().is_ok()
    }

    /// Returns the labels of the `task` events in `bytes`, in order.
    fn labels(bytes: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(bytes).unwrap();
        text.split_terminator("\n\n")
            .map(|event| {
                let data = event.strip_prefix("event: task\ndata: ").unwrap();
                let v: serde_json::Value = serde_json::from_str(data).unwrap();
                v["task_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// A filter with only `?task_id=label`.
    fn label_filter(label: &[u8]) -> EventFilter {
        EventFilter {
            label: Some(label.into()),
            ..EventFilter::default()
        }
    }

    #[test]
    fn the_log_rings_a_stream_for_what_it_may_want_and_lets_events_gather() {
        let log = EventLog::default();
        let all = log.subscribe(&EventFilter::default());
        let only_b = log.subscribe(&label_filter(b"b"));
        let mut taken = Vec::new();
        publish_task(&log, 1, "a");
        assert!(rang(&all));
        assert!(!rang(&only_b), "an event it does not want rings it");
        // Too little to write yet: it gathers, and the gatherers are rung
        // once a gather's worth has come.
        assert_eq!(all.take(&mut taken, true), Taken::Gathering);
        for id in 2..=GATHER_EVENTS as u64 {
            assert!(!rang(&all), "{id}");
            publish_task(&log, id, "a");
        }
        assert!(rang(&all));
        assert_eq!(all.take(&mut taken, true), Taken::Read);
        assert_eq!(labels(&taken), vec!["a"; GATHER_EVENTS]);
        // Having read, each is rung by the next event it may want, once.
        publish_task(&log, 200, "b");
        publish_task(&log, 201, "a");
        publish_task(&log, 202, "b");
        assert!(rang(&all) && rang(&only_b));
        assert!(!rang(&all) && !rang(&only_b));
        assert_eq!(only_b.take(&mut taken, false), Taken::Read);
        assert_eq!(labels(&taken), ["b", "b"]);
        assert_eq!(all.take(&mut taken, false), Taken::Read);
        assert_eq!(labels(&taken), ["b", "a", "b"]);
        // Nothing since: a take reads nothing.
        assert_eq!(all.take(&mut taken, true), Taken::Read);
        assert!(taken.is_empty());
    }

    #[test]
    fn an_event_no_stream_may_read_is_not_written() {
        let log = EventLog::default();
        let only_b = log.subscribe(&label_filter(b"b"));
        let mut taken = Vec::new();
        publish_task(&log, 1, "a");
        assert_eq!(log.ring().head(), 0);
        // Once a stream has been rung, it may read what comes next.
        publish_task(&log, 2, "b");
        publish_task(&log, 3, "a");
        assert!(rang(&only_b));
        assert_eq!(log.ring().head(), 2);
        assert_eq!(only_b.take(&mut taken, false), Taken::Read);
        assert_eq!(labels(&taken), ["b"]);
        // Having read, it waits again.
        publish_task(&log, 4, "a");
        assert!(!rang(&only_b));
        assert_eq!(log.ring().head(), 2);
        // A stream that stopped reading holds the events from its bell on,
        // until the log no longer has that one: it lagged, and needs none.
        let stalled = log.subscribe(&EventFilter::default());
        for id in 5..5 + LOG_EVENTS as u64 {
            publish_task(&log, id, "a");
        }
        assert_eq!(log.ring().head(), 2 + LOG_EVENTS as u64);
        publish_task(&log, 5000, "a");
        publish_task(&log, 5001, "a");
        assert_eq!(log.ring().head(), 3 + LOG_EVENTS as u64);
        assert_eq!(stalled.take(&mut taken, false), Taken::Lagged);
        assert!(log.ring().readers.is_empty());
    }

    #[test]
    fn a_stream_lags_when_the_log_no_longer_has_what_it_had_not_read() {
        // Events small enough that the count is the limit, then events
        // large enough that the bytes are: three fit in `LOG_BYTES`.
        for (label, fit) in [(1, LOG_EVENTS), (LOG_BYTES / 4, 3)] {
            let label = "x".repeat(label);
            let log = EventLog::default();
            let reader = log.subscribe(&EventFilter::default());
            let stalled = log.subscribe(&EventFilter::default());
            let elsewhere = log.subscribe(&label_filter(b"y"));
            let mut taken = Vec::new();
            let mut id = 0;
            let mut publish = |reader_takes: bool, taken: &mut Vec<u8>| {
                id += 1;
                publish_task(&log, id, &label);
                if reader_takes {
                    assert_eq!(reader.take(taken, false), Taken::Read);
                    assert_eq!(labels(taken).len(), 1);
                }
            };
            // As many as the log holds since it last read: it has them all.
            for _ in 0..fit {
                publish(true, &mut taken);
            }
            assert_eq!(stalled.take(&mut taken, false), Taken::Read);
            assert_eq!(labels(&taken).len(), fit, "{}", label.len());
            // One more than the log holds: it lagged; a reader that keeps
            // up did not, nor did a stream that wants none of them.
            for _ in 0..=fit {
                publish(true, &mut taken);
            }
            assert_eq!(stalled.take(&mut taken, false), Taken::Lagged);
            assert!(taken.is_empty());
            assert_eq!(elsewhere.take(&mut taken, false), Taken::Read);
            assert!(taken.is_empty());
            // A buffer a burst made large is not kept for the next events.
            assert!(taken.capacity() <= KEPT_EVENT_BUFFER);
        }
    }

    #[test]
    fn an_event_larger_than_the_log_lags_the_streams_that_want_it_alone() {
        let log = EventLog::default();
        let large = "a".repeat(LOG_BYTES);
        let wants = log.subscribe(&label_filter(large.as_bytes()));
        let elsewhere = log.subscribe(&label_filter(b"b"));
        let mut taken = Vec::new();
        publish_task(&log, 1, &large);
        publish_task(&log, 2, "b");
        assert!(rang(&wants) && rang(&elsewhere));
        assert_eq!(wants.take(&mut taken, false), Taken::Lagged);
        assert_eq!(elsewhere.take(&mut taken, false), Taken::Read);
        assert_eq!(labels(&taken), ["b"]);
    }

    #[test]
    fn a_change_rings_only_the_streams_that_wait_to_hear_of_it() {
        let log = EventLog::default();
        let stream = log.subscribe(&label_filter(b"none"));
        let seen = log.changes();
        assert!(!stream.await_change(seen));
        log.changed();
        assert!(rang(&stream));
        assert!(stream.await_change(seen));
        // Rung once: it does not wait again until it asks.
        assert!(!log.awaited.load(Ordering::SeqCst));
        log.changed();
        assert!(!rang(&stream));
        // An event is a change too, even one the stream does not want.
        let seen = log.changes();
        assert!(!stream.await_change(seen));
        publish_task(&log, 1, "a");
        assert!(rang(&stream));
        assert!(stream.await_change(seen));
    }

    #[test]
    fn a_closed_stream_leaves_nothing_behind_and_its_slot_serves_the_next() {
        let log = EventLog::default();
        let mut taken = Vec::new();
        let filters = [
            EventFilter::default(),
            EventFilter {
                id: Some(7),
                ..EventFilter::default()
            },
            label_filter(b"a"),
            EventFilter {
                kind: Some("sleep".into()),
                ..EventFilter::default()
            },
            EventFilter {
                queue: Some(0),
                ..EventFilter::default()
            },
        ];
        {
            let streams: Vec<Subscription> = filters.iter().map(|f| log.subscribe(f)).collect();
            publish_task(&log, 1, "b");
            assert_eq!(streams[0].take(&mut taken, true), Taken::Gathering);
            assert!(!streams[2].await_change(log.changes()));
            let first = streams.into_iter().next();
            drop(first);
            let next = log.subscribe(&label_filter(b"b"));
            assert_eq!(next.slot, 0);
            publish_task(&log, 2, "b");
            assert!(rang(&next));
            assert_eq!(next.take(&mut taken, false), Taken::Read);
            assert_eq!(labels(&taken), ["b"]);
        }
        let ring = log.ring();
        let w = &ring.waiting;
        assert!(w.all.is_empty() && w.id.is_empty() && w.label.is_empty());
        assert!(w.kind.is_empty() && w.queue.is_empty());
        assert!(ring.change_waiters.is_empty() && ring.gatherers.is_empty());
        assert!(ring.slots.is_empty() && ring.events.is_empty());
        assert_eq!(ring.bytes.capacity(), 0);
        assert_eq!(log.streams.load(Ordering::SeqCst), 0);
        assert_eq!(ring.head(), 2);
    }

    #[test]
    fn filters_pass_the_events_they_name_by_what_the_event_says() {
        let config = config(&["--queue", "fast=1", "--handler", "thumb=/bin/true"]);
        let (store, _queues, _due) = {
            let (due_tx, due_rx) = async_channel::unbounded();
            let queues: Vec<Queue> = config.queues.iter().map(Queue::new).collect();
            (
                Store::new(&config, due_tx, Default::default()),
                queues,
                due_rx,
            )
        };
        let mut rich = task_with_everything();
        // Its schedule is not in this configuration.
        rich.extra_mut().schedule = None;
        let mut quoted = Task::from_new(5, new_task("a \"quoted\"\nlabel", 0), State::Queued);
        quoted.label = Some(Text::new("a \"quoted\"\nlabel"));
        let plain = Task::from_new(6, new_task("t", 0), State::Queued);
        let mut unlabelled = Task::from_new(7, new_task("t", 0), State::Queued);
        unlabelled.label = None;
        let cases = [
            ("", [true; 4]),
            ("task_id=t", [false, false, true, false]),
            (
                "task_id=a%20label%20longer%20than%20twenty-two%20bytes",
                [true, false, false, false],
            ),
            (
                "task_id=a%20%22quoted%22%0Alabel",
                [false, true, false, false],
            ),
            ("task_id=a", [false; 4]),
            ("task_id=%FF", [false; 4]),
            ("kind=thumb", [true, false, false, false]),
            ("kind=sleep", [false, true, true, true]),
            ("queue=fast", [true, false, false, false]),
            ("queue=default", [false, true, true, true]),
            ("kind=sleep&task_id=t", [false, false, true, false]),
            ("queue=fast&task_id=t", [false; 4]),
        ];
        let mut filters: Vec<(String, EventFilter, [bool; 4])> = cases
            .iter()
            .map(|&(query, expected)| {
                let parsed = EventFilter::parse(Some(query.as_bytes()), &config, &store);
                (query.to_owned(), parsed.unwrap(), expected)
            })
            .collect();
        // `?id=` is parsed against the tasks the store has: made here.
        let id = EventFilter {
            id: Some(rich.id),
            ..EventFilter::default()
        };
        filters.push(("id".to_owned(), id, [true, false, false, false]));
        for (query, filter, expected) in filters {
            let wants = Wants::new(&filter);
            for (task, expected) in [&rich, &quoted, &plain, &unlabelled].iter().zip(expected) {
                let mut event = Vec::new();
                let said = write_task_event(&mut event, task, store.names(task), 0);
                let entry = Entry {
                    at: 0,
                    len: event.len(),
                    id: task.id,
                    queue: task.queue,
                    said,
                };
                assert_eq!(
                    wants.passes(&entry, &event),
                    expected,
                    "{query} {:?}",
                    task.label
                );
            }
        }
    }
}
