//! A connection's life: reading requests off the socket, answering them in
//! order, long polls and event streams, its deadlines, and its close.
//!
//! One task per connection ([`serve`]) reads a request, answers it, and
//! loops; [`Connection::serve_request`] is one request's whole path, read
//! it first. It owns the socket and every wait on it: reading without
//! blocking a thread (what has arrived is read at once; otherwise the task
//! waits for readiness), writing, and the deadlines. What the bytes mean
//! is [`crate::http`]'s, which route a request takes and what it answers
//! is [`crate::routes`]'s, and how the answer is written is
//! [`crate::response`]'s; the store is reached only through them, or
//! locked for one statement, never across an `.await`.
//!
//! A connection's errors end that connection and nothing else ([`Close`]):
//! the listener never sees them. Its buffers exist only while a request is
//! being handled: an idle keep-alive connection holds no buffer at all
//! (`footprint_per_connection_and_event_stream` in `tests/footprint.rs`
//! prints what one costs).
//!
//! # Deadlines and limits
//!
//! - A head must arrive whole within [`HEAD_TIMEOUT`] of its first byte
//!   (of the accept, for a connection's first request), a body within
//!   [`BODY_TIMEOUT`] of its head, else `408` and close: one deadline
//!   (`Timer::at`) for each, not a timer per read, so a client trickling
//!   bytes cannot stretch it.
//! - A keep-alive connection idle for [`IDLE_TIMEOUT`] is closed without
//!   a word. While it waits between requests it is listed in
//!   [`IdleConnections`], and at `--max-connections` the listener may
//!   close it sooner to make room ([`crate::idle`]). Only a connection
//!   between requests is closed so: never one reading a request or
//!   writing an answer, a long poll, an event stream, or a new connection
//!   that has not sent its first request. Shutdown does not close idle
//!   connections: a request sent on one gets its `503`.
//! - Answers the socket refuses are given [`WRITE_TIMEOUT`] from the first
//!   refusal, one deadline for all that wait; then the client is deemed
//!   gone and the connection closes.
//! - A client may pipeline: answers gather in the output and go out in
//!   one write; past [`MAX_UNSENT`] bytes of them, the next request is not
//!   read until they are written. After every [`BURST`] requests the task
//!   yields, so a pipelining client cannot keep a thread.
//! - A client that trickles heads cannot hold others up: each waits on its
//!   own deadline, costing a task and no thread (`bench_slow_loris_p90`
//!   in `tests/hostile.rs` prints what others' requests take meanwhile).
//! - `Expect: 100-continue` gets `100 Continue` before the body is read —
//!   or, when the request will be refused anyway (`413`, `401`), the final
//!   answer instead, and the connection closes.
//! - With a journal, answers go out only once what they show is on disk
//!   ([`Connection::settle`]; step 4 of [the durability
//!   protocol](crate::journal#the-durability-protocol)).
//! - Closing writes what is pending, shuts the sending side, and reads and
//!   drops what the client still sends for [`LINGER`] (at most
//!   [`LINGER_BYTES`]), so the kernel does not answer it with a reset that
//!   could destroy the last answer before the client reads it.
//!
//! # Memory bounds
//!
//! The most one connection can make the server hold is its request plus
//! its answers. The request: a head of at most
//! [`MAX_HEAD`](crate::http::MAX_HEAD) plus one
//! [`READ_CHUNK`] read, and a body of at most `--max-body`, held once (a
//! chunked body as its decoded copy, the framing dropped as it is read).
//! The answers: under [`MAX_UNSENT`] unsent plus the answer being made,
//! which exists twice while it is copied out. The largest answer is a
//! list page, at most 256 KiB of tasks (more only when one task alone is
//! larger); one task's status is at most its request body plus the 4 KiB
//! tails of its `result` and `error` (up to 6× once JSON-escaped: about
//! 50 KiB). A long poll holds only its request; an idle connection holds
//! no buffer. At the defaults: 16 + 8 + 64 KiB of request, 32 KiB unsent,
//! 2 × (256 + 64 + 50) KiB of answer — at most about 860 KiB per
//! connection, 860 MiB for 1,024 connections, approached only by a client
//! that stores 64 KiB labels and never reads (a typical task's status is
//! 300 bytes). A client that stops reading keeps about half that until
//! [`WRITE_TIMEOUT`] closes it. Growing buffers may reserve up to twice
//! their contents in address space, never written and so not resident;
//! kernel socket buffers are extra. A test holds a server to this and
//! prints what it cost (`tests/bounds.rs`,
//! `fifty_readers_that_never_read_a_list_of_large_tasks_cost_under_32_mb`):
//! 1,000 tasks with 60 KB labels, then 50 connections that ask for the
//! whole list and never read, then 10 that pipeline 50 such lists each,
//! must each add under 32 MiB (they added about 0.75 MiB and 3.4 MiB of
//! RSS when last measured, on a 2-core VM). An event stream's share is in
//! [`crate::events`].

use crate::{
    events::{
        EventFilter, Events, GATHER_WAIT, KEEP_ALIVE, STATS_EVERY, STREAM_SEND_BUFFER, Taken, Wake,
        write_stats_event, write_stream_head,
    },
    http::{
        BODY_TIMEOUT, ChunkState, Chunked, Framing, HEAD_TIMEOUT, Head, HttpError, IDLE_TIMEOUT,
        Method, WRITE_TIMEOUT, parse_head, take_head,
    },
    idle::{IdleConnections, IdleEntry, Waited},
    response::{Delivery, Response},
    routes::{
        LongPoll, Reply, Route, Submitted, answer, answer_change, choose_route, lookup_failure,
        not_saved, retry, submit, task_response,
    },
    shared::{BURST, Shared},
    table::Lookup,
    trace::{self, FirstLine},
};
use async_channel::{Receiver, Sender};
use async_io::{Async, Timer};
use smol::future;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How many bytes one read asks for: a whole typical request in one read,
/// and the most a connection reads beyond a head or a body it is waiting
/// for the end of.
const READ_CHUNK: usize = 8192;

/// How many bytes the first read of a request asks for: most requests fit.
// Tuning: the plain version reads a `READ_CHUNK`; a 1 KiB buffer comes from
// the allocator's per-thread cache instead of being zeroed 8 KiB at a time.
const FIRST_READ: usize = 1024;

/// The most bytes of answers a connection holds for a client that pipelines
/// requests: past it, the next request is read only once they are written.
/// Pipelined 202s are about 250 bytes each, so a hundred still share one
/// write (and, with a journal, one wait for the disk).
const MAX_UNSENT: usize = 32 << 10;

/// How long a closing connection keeps reading what the client still
/// sends, so that the kernel does not answer it with a reset that could
/// destroy the last response before the client has read it: long enough
/// for bytes already in flight to arrive, short enough that a closing
/// connection soon gives its place back.
const LINGER: Duration = Duration::from_secs(2);

/// The most bytes read and thrown away while lingering: a client that
/// keeps sending gets no more of the server's time than this.
const LINGER_BYTES: usize = 1 << 20;

/// Why a connection closes.
#[derive(Debug)]
pub(crate) enum Close {
    /// A request was malformed: answer with this error, then close.
    Error(HttpError),
    /// The client closed the connection or it failed: just close.
    Gone,
    /// It was idle and its place was given to a new connection: close at
    /// once. Every answer was written before it went idle and nothing has
    /// arrived since, so closing sends a plain FIN, and lingering would
    /// only keep the new client waiting for the place.
    Evicted,
}

impl From<io::Error> for Close {
    fn from(_: io::Error) -> Close {
        Close::Gone
    }
}

impl From<HttpError> for Close {
    fn from(e: HttpError) -> Close {
        Close::Error(e)
    }
}

/// Serves one connection, accepted just now, until it closes.
///
/// Each request holds a sender upgraded from `in_flight` until its answer
/// is written, so shutdown can wait for it; `first_request` is one already
/// taken for the first request. `_permit` holds one of `--max-connections`
/// places and is only dropped; between requests the connection waits in
/// `idle`, where the listener may take the place back.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: Async<TcpStream>,
    in_flight: async_channel::WeakSender<()>,
    first_request: Option<Sender<()>>,
    _permit: smol::lock::SemaphoreGuardArc,
    idle: Arc<IdleConnections>,
) {
    let accepted = Instant::now();
    let mut conn = Connection {
        stream,
        buf: Vec::new(),
        out: Vec::new(),
        unsaved: Vec::new(),
        barrier: 0,
        busy: first_request,
        idle: Alarm::new(accepted + HEAD_TIMEOUT),
    };
    match conn
        .serve_requests(&shared, accepted, &in_flight, &idle)
        .await
    {
        Err(Close::Error(e)) => {
            let response = Response::error(e.status(), e.message());
            shared.responses.add(response.status);
            response.write(&mut conn.out, Delivery::CLOSING);
        }
        // Dropping the socket closes it; its place goes back at once.
        Err(Close::Evicted) => return,
        Ok(()) | Err(Close::Gone) => {}
    }
    conn.close(&shared).await;
}

/// What a connection does once a request is answered.
#[derive(Debug, PartialEq)]
enum Then {
    /// Reads the next request: the connection is kept alive.
    NextRequest,
    /// Writes what is left and closes.
    Close,
}

impl Then {
    /// Keeps the connection for the next request if `keep_alive`.
    fn after(keep_alive: bool) -> Then {
        if keep_alive {
            Then::NextRequest
        } else {
            Then::Close
        }
    }
}

/// One client connection.
pub(crate) struct Connection {
    /// The socket.
    pub(crate) stream: Async<TcpStream>,
    /// Bytes read and not yet used; a request starts at index 0.
    pub(crate) buf: Vec<u8>,
    /// Answers not yet written.
    pub(crate) out: Vec<u8>,
    /// With a journal: the answers in `out` to submissions whose tasks are
    /// not yet known to be on disk (see [`Connection::settle`]).
    unsaved: Vec<Unsaved>,
    /// With a journal: the last journal record the answers in `out` may
    /// show; they are written only once it is on disk.
    barrier: u64,
    /// Held from the first byte of a request until its answer is written,
    /// so that shutdown waits for it.
    pub(crate) busy: Option<Sender<()>>,
    /// The idle deadline's timer (an event stream's too), kept for the
    /// connection's whole life.
    pub(crate) idle: Alarm,
}

/// A timer kept for a connection's whole life and moved only when it must
/// ring sooner or has rung.
///
/// Tuning: the plain version makes a `Timer::at(deadline)` for each wait.
/// Registering an async-io timer wakes the reactor thread (an eventfd
/// write, then a read and a new epoll timeout), so one is not made per
/// request: this one stays armed, and when it rings before the current
/// deadline (the connection was busy meanwhile) it is armed again. With the
/// interpolated lookups it took the 202 path from about 18 to 10.4 µs of
/// CPU per request; an event stream, whose keep-alive moves with every
/// write, would otherwise move it on every write.
pub(crate) struct Alarm {
    /// The timer.
    pub(crate) timer: Timer,
    /// When it is armed to ring; `None` once it has rung.
    pub(crate) at: Option<Instant>,
}

impl Alarm {
    /// Makes an alarm that rings at `at`.
    pub(crate) fn new(at: Instant) -> Alarm {
        Alarm {
            timer: Timer::at(at),
            at: Some(at),
        }
    }

    /// Makes it ring by `until`: it moves only if it would ring later, or
    /// has rung. Ringing early is harmless: the waiter looks at the time.
    fn arm(&mut self, until: Instant) {
        if self.at.is_none_or(|at| at > until) {
            self.timer.set_at(until);
            self.at = Some(until);
        }
    }

    /// Waits for it to ring.
    pub(crate) async fn rung(&mut self) {
        (&mut self.timer).await;
        self.at = None;
    }
}

/// An answer to a submission, waiting to learn whether its task was saved.
struct Unsaved {
    /// Where the answer is in `out`.
    pub(crate) range: Range<usize>,
    /// What tells whether the task was saved.
    saving: Saving,
    /// How the answer is delivered, for a `503` in its place.
    pub(crate) delivery: Delivery,
}

/// How a submission's answer learns whether its task was saved.
#[derive(Debug)]
pub(crate) enum Saving {
    /// A new task: the journal writer says whether its record was written.
    New(Receiver<bool>),
    /// A repeated idempotency key: the first task, which a failed write
    /// would have taken back.
    Repeat(u64),
}

impl Saving {
    /// Splits what a submission came to into its answer and, with a
    /// journal, what the answer waits for.
    pub(crate) fn of(shared: &Shared, submitted: Submitted) -> (Response, Option<Saving>) {
        match submitted {
            Submitted::Answer(response) => (response, None),
            Submitted::Saving(response, saved) => (response, Some(Saving::New(saved))),
            Submitted::Repeat(response, id) => {
                let saving = shared
                    .journal_progress
                    .is_some()
                    .then_some(Saving::Repeat(id));
                (response, saving)
            }
        }
    }

    /// Tells, once the journal has dealt with the record, whether the task
    /// is on disk.
    pub(crate) fn saved(&self, shared: &Shared) -> bool {
        match self {
            Saving::New(saved) => saved.try_recv() == Ok(true),
            Saving::Repeat(id) => shared.store().tasks().get(*id).is_some(),
        }
    }
}

impl Connection {
    /// Serves requests until the connection should close.
    async fn serve_requests(
        &mut self,
        shared: &Shared,
        accepted: Instant,
        in_flight: &async_channel::WeakSender<()>,
        idle: &IdleConnections,
    ) -> Result<(), Close> {
        let mut deadline = accepted + HEAD_TIMEOUT;
        let (mut first, mut served) = (true, 0);
        loop {
            if self.buf.is_empty() {
                // Numbered before the last answers go out: a client that has
                // read them finds this connection idle longer than any it
                // opens after.
                let since = idle.stamp();
                self.flush(shared).await?;
                // Idle: every answer is out. Give the buffers back, and let
                // shutdown stop waiting for this connection.
                if !first {
                    self.busy = None;
                }
                self.buf = Vec::new();
                self.out = Vec::new();
                self.unsaved = Vec::new();
                let until = if first {
                    deadline
                } else {
                    Instant::now() + IDLE_TIMEOUT
                };
                // Tuning: the plain version waits for readiness first. A new
                // connection's request has usually arrived by the time it is
                // accepted (a client connects and sends at once): reading it
                // now saves a round through the reactor — 36 instead of
                // 41 µs of CPU per request for clients that open a
                // connection per request.
                let waited = if !first {
                    self.wait_between_requests(until, idle, since).await
                } else if self.read_arrived(FIRST_READ)? {
                    Waited::Readable
                } else {
                    self.wait_readable(until, None).await
                };
                match waited {
                    Waited::Readable => {}
                    Waited::Expired if first => return Err(HttpError::Timeout.into()),
                    Waited::Expired => return Ok(()),
                    Waited::Evicted => return Err(Close::Evicted),
                }
            }
            if !first {
                deadline = Instant::now() + HEAD_TIMEOUT;
            }
            first = false;
            if self.busy.is_none() {
                self.busy = in_flight.upgrade();
            }
            if let Then::Close = self.serve_request(shared, deadline).await? {
                return self.flush(shared).await;
            }
            if self.out.len() >= MAX_UNSENT {
                // A client that pipelines requests without reading the
                // answers: its next request waits until these are out.
                self.flush(shared).await?;
            }
            served += 1;
            if served % BURST == 0 {
                // Pipelined requests read already never wait: see BURST.
                future::yield_now().await;
            }
        }
    }

    /// Waits for the client's next request, listed in `idle` as waiting
    /// since `since`, so that the listener may close the connection to make
    /// room.
    async fn wait_between_requests(
        &mut self,
        until: Instant,
        idle: &IdleConnections,
        since: u64,
    ) -> Waited {
        let entry = idle.begin_wait(since);
        let waited = self.wait_readable(until, Some((idle, entry))).await;
        // Taken out by the listener, it closes, whatever woke it.
        if idle.end_wait(entry) {
            waited
        } else {
            Waited::Evicted
        }
    }

    /// Waits until the client sends something (or closes), `until` comes,
    /// or the listener takes `listed` out of its list.
    ///
    /// Shutdown does not end this wait: an idle connection stays open while
    /// the server drains, so a request sent on it gets its `503`, but
    /// nothing waits for it, and it closes when the process exits.
    async fn wait_readable(
        &mut self,
        until: Instant,
        listed: Option<(&IdleConnections, IdleEntry)>,
    ) -> Waited {
        loop {
            // Armed for an earlier deadline, it rings early when the
            // connection was busy since, and is armed again.
            self.idle.arm(until);
            let (stream, idle) = (&self.stream, &mut self.idle);
            // Underneath: `readable` asks the reactor to watch the socket.
            // Polled, it finds no readiness yet, so it leaves this task's
            // waker with the socket's entry in the reactor and arms epoll
            // for it; when data arrives, the thread driving the reactor
            // calls the waker and the executor queues this task again.
            trace::note(format_args!("readable() on the socket"));
            let readable = async {
                // An error shows up again on the read that follows.
                let _ = stream.readable().await;
                Waited::Readable
            };
            let fired = async {
                idle.rung().await;
                Waited::Expired
            };
            let evicted = async {
                match listed {
                    Some((idle, entry)) => idle.evicted(entry).await,
                    None => future::pending().await,
                }
                Waited::Evicted
            };
            match future::or(readable, future::or(fired, evicted)).await {
                Waited::Expired if Instant::now() < until => {}
                waited => return waited,
            }
        }
    }

    /// Reads, answers and consumes one request, and says what the
    /// connection does next. The answer goes to `out`, to be written with
    /// those of any pipelined requests after it.
    async fn serve_request(&mut self, shared: &Shared, deadline: Instant) -> Result<Then, Close> {
        let head_len = self.read_head(shared, deadline).await?;
        let head = parse_head(&self.buf[..head_len])?;
        let route = choose_route(&head, &self.buf[..head_len], shared.config.token.as_deref())?;
        if !self.answer_expectation(shared, &head, &route).await? {
            return Ok(Then::Close);
        }
        let (consumed, chunked_body) = self.read_body(shared, &head, head_len).await?;
        let bytes = &self.buf[..head_len];
        let (response, saving) = match answer(shared, route, &head, bytes) {
            Reply::Now(response) => (response, None),
            Reply::Submit(route) => {
                let body = chunked_body
                    .as_deref()
                    .unwrap_or(&self.buf[head_len..consumed]);
                let key = head.idempotency_key.clone().map(|k| &bytes[k]);
                Saving::of(shared, submit(shared, route, key, body))
            }
            Reply::Retry(id) => {
                let key = head.idempotency_key.clone().map(|k| &bytes[k]);
                Saving::of(shared, retry(shared, id, key))
            }
            // Boxed like the long poll below, for the same reason.
            Reply::Events(filter) => {
                return Box::pin(self.serve_events(shared, &head, filter, consumed)).await;
            }
            // Tuning: the plain version awaits it in place. An async fn's
            // future holds everything it awaits inline, and a connection's
            // task holds this one for the connection's life: the long poll's
            // state (its trigger, timer and watch on the client) is boxed,
            // allocated only when a long poll happens, so every other
            // connection's task stays small.
            Reply::Poll(poll) => (Box::pin(self.long_poll(shared, poll)).await?, None),
            // Boxed too: the wait for the disk is rare.
            Reply::Change(pending) => match Box::pin(answer_change(shared, pending)).await {
                Some(response) => (response, None),
                None => return Err(Close::Gone),
            },
        };
        let keep_alive = self.queue_answer(shared, &head, response, saving);
        self.buf.drain(..consumed);
        Ok(Then::after(keep_alive))
    }

    /// Answers `GET /events` (or its `HEAD`): the stream's head, then, for
    /// a `GET`, the stream until it ends, after which the connection
    /// closes.
    async fn serve_events(
        &mut self,
        shared: &Shared,
        head: &Head,
        filter: EventFilter,
        consumed: usize,
    ) -> Result<Then, Close> {
        self.buf.drain(..consumed);
        let head_only = head.method == Method::Head;
        let keep_alive = head_only && head.keep_alive && !shared.draining.is_fired();
        let delivery = Delivery::of(head, keep_alive);
        shared.responses.add(200);
        write_stream_head(&mut self.out, delivery);
        if head_only {
            return Ok(Then::after(keep_alive));
        }
        // A stream is not a request in flight: shutdown ends it rather
        // than waits for it.
        self.busy = None;
        // Without it the stream works as well; it only costs more when its
        // client stops reading.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(
            self.stream.get_ref(),
            STREAM_SEND_BUFFER,
        );
        let events = Events {
            chunked: !head.http10,
            subscription: shared.events.subscribe(&filter),
        };
        self.stream_events(shared, events)
            .await
            .map(|()| Then::Close)
    }

    /// Streams events until shutdown, a lag or the client ends it.
    async fn stream_events(&mut self, shared: &Shared, events: Events<'_>) -> Result<(), Close> {
        let subscription = &events.subscription;
        let mut frame = Vec::with_capacity(1024);
        // The changes the first `stats` shows at least: counted before it
        // is made, so that one made meanwhile is owed.
        let mut seen = shared.events.changes();
        write_stats_event(&mut frame, shared);
        events.write(&mut self.out, &frame);
        self.flush(shared).await?;
        let (mut last_stats, mut last_write) = (Instant::now(), Instant::now());
        // Whether events wait for more to gather (`GATHER_EVENTS`,
        // `GATHER_BYTES`, `GATHER_WAIT`).
        let mut gathering = false;
        let mut taken = Vec::new();
        loop {
            // With no `stats` owed, it asks to hear of the next change.
            let changed = subscription.await_change(seen);
            let keep_alive = last_write + KEEP_ALIVE;
            let until = match (gathering, changed) {
                (true, _) => Instant::now() + GATHER_WAIT,
                (false, true) => keep_alive.min(last_stats + STATS_EVERY),
                (false, false) => keep_alive,
            };
            self.idle.arm(until);
            let (stream, idle) = (&self.stream, &mut self.idle);
            let wake = {
                let rung = async {
                    let _ = subscription.rung.recv().await;
                    Wake::Rung
                };
                let timer = async {
                    idle.rung().await;
                    Wake::Timer
                };
                let shutdown = async {
                    shared.draining.wait().await;
                    Wake::Shutdown
                };
                let gone = async {
                    Self::client_gone(stream).await;
                    Wake::Gone
                };
                // Shutdown wins a tie: the stream says so and ends.
                future::or(shutdown, future::or(rung, future::or(timer, gone))).await
            };
            let lagged = match wake {
                Wake::Shutdown => return self.end_events(shared, &events, "shutdown").await,
                Wake::Gone => return Err(Close::Gone),
                // A bell: events came, and let more gather unless enough
                // did; or the stats changed, and nothing is read. The
                // timer: a gather is over, or `stats` or a keep-alive may
                // be due (and what came meanwhile is read).
                Wake::Rung | Wake::Timer => {
                    match subscription.take(&mut taken, matches!(wake, Wake::Rung)) {
                        Taken::Gathering => {
                            gathering = true;
                            continue;
                        }
                        read => {
                            gathering = false;
                            events.write(&mut self.out, &taken);
                            read == Taken::Lagged
                        }
                    }
                }
            };
            let now = Instant::now();
            if now >= last_stats + STATS_EVERY && shared.events.changes() != seen {
                seen = shared.events.changes();
                frame.clear();
                write_stats_event(&mut frame, shared);
                events.write(&mut self.out, &frame);
                last_stats = now;
            }
            if lagged {
                return self.end_events(shared, &events, "lagged").await;
            }
            if self.out.is_empty() && now >= keep_alive {
                events.write(&mut self.out, b": keep-alive\n\n");
            }
            if !self.out.is_empty() {
                self.flush(shared).await?;
                last_write = Instant::now();
            }
        }
    }

    /// Ends a stream with a last event (`shutdown`, `lagged`).
    async fn end_events(
        &mut self,
        shared: &Shared,
        events: &Events<'_>,
        name: &str,
    ) -> Result<(), Close> {
        let event = format!("event: {name}\ndata: {{}}\n\n");
        events.write(&mut self.out, event.as_bytes());
        if events.chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush(shared).await
    }

    /// Answers `Expect: 100-continue` before the body is read: `100
    /// Continue`, or, when the request will be refused anyway, the final
    /// answer at once. Returns whether to go on to the body.
    async fn answer_expectation(
        &mut self,
        shared: &Shared,
        head: &Head,
        route: &Route,
    ) -> Result<bool, Close> {
        if !head.expect_continue || head.framing == Framing::Length(0) {
            return Ok(true);
        }
        // Refuse before the client sends a body it need not send.
        if let Framing::Length(n) = head.framing
            && n > shared.config.max_body as u64
        {
            return Err(HttpError::BodyTooLarge.into());
        }
        if *route == Route::Unauthorized {
            if let Reply::Now(response) = answer(shared, Route::Unauthorized, head, &[]) {
                self.write_answer(shared, Delivery::of(head, false), response);
            }
            return Ok(false);
        }
        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.flush(shared).await?;
        Ok(true)
    }

    /// Reads the body of the request whose head is the first `head_len`
    /// bytes of the buffer. Returns how many bytes of the buffer the
    /// request takes and, for a chunked body, the decoded body (a body by
    /// length stays in the buffer after the head).
    pub(crate) async fn read_body(
        &mut self,
        shared: &Shared,
        head: &Head,
        head_len: usize,
    ) -> Result<(usize, Option<Vec<u8>>), Close> {
        let deadline = Instant::now() + BODY_TIMEOUT;
        let max = shared.config.max_body;
        match head.framing {
            Framing::Chunked => {
                // Tuning: the plain version awaits it in place. Boxed like
                // the long poll: a chunked body is rare, and its decoder's
                // state would otherwise be part of every connection's task
                // (about 200 bytes of each idle connection).
                let chunked = Box::pin(self.read_chunked(shared, head_len, max, deadline));
                Ok((head_len, Some(chunked.await?)))
            }
            Framing::Length(n) if n > max as u64 => Err(HttpError::BodyTooLarge.into()),
            Framing::Length(n) => {
                let end = head_len + n as usize;
                while self.buf.len() < end {
                    let want = end - self.buf.len();
                    self.fill(shared, deadline, want).await?;
                }
                Ok((end, None))
            }
        }
    }

    /// Appends a request's answer to the output; returns whether the
    /// connection stays open after it. With a journal, it notes what the
    /// answer may show (step 4 of [the durability
    /// protocol](crate::journal#the-durability-protocol)): it goes out only
    /// once that is on disk.
    fn queue_answer(
        &mut self,
        shared: &Shared,
        head: &Head,
        response: Response,
        saving: Option<Saving>,
    ) -> bool {
        if let Some(journal) = &shared.journal_progress {
            self.barrier = journal.appended.load(Ordering::Acquire);
        }
        let keep_alive = head.keep_alive && !shared.draining.is_fired();
        let delivery = Delivery::of(head, keep_alive);
        let start = self.out.len();
        self.write_answer(shared, delivery, response);
        if let Some(saving) = saving {
            let range = start..self.out.len();
            self.unsaved.push(Unsaved {
                range,
                saving,
                delivery,
            });
        }
        keep_alive
    }

    /// Appends an answer to the output, counting it for `/metrics`.
    fn write_answer(&mut self, shared: &Shared, delivery: Delivery, response: Response) {
        shared.responses.add(response.status);
        response.write(&mut self.out, delivery);
    }

    /// Reads until the buffer holds a whole request head; returns its length.
    async fn read_head(&mut self, shared: &Shared, deadline: Instant) -> Result<usize, Close> {
        let mut scanned = 0;
        loop {
            if let Some(end) = take_head(&mut self.buf, &mut scanned)? {
                return Ok(end);
            }
            self.fill(shared, deadline, READ_CHUNK).await?;
        }
    }

    /// Reads and decodes a chunked body that starts at `start`, removing
    /// its framing from the buffer as it goes, so the buffer never holds
    /// more than one read beyond the head.
    async fn read_chunked(
        &mut self,
        shared: &Shared,
        start: usize,
        max_body: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, Close> {
        let mut decoder = Chunked::default();
        loop {
            let used = decoder.feed(&self.buf[start..], max_body)?;
            self.buf.drain(start..start + used);
            if decoder.state == ChunkState::Done {
                return Ok(decoder.body);
            }
            self.fill(shared, deadline, READ_CHUNK).await?;
        }
    }

    /// Reads at least one more byte, up to `want` (at most one chunk),
    /// before `deadline`. The end of the stream is [`Close::Gone`].
    pub(crate) async fn fill(
        &mut self,
        shared: &Shared,
        deadline: Instant,
        want: usize,
    ) -> Result<(), Close> {
        // Bytes already here are read at once, so a pipelining client's
        // requests are all taken in before their answers are written.
        if self.read_arrived(want)? {
            return Ok(());
        }
        // About to wait: whatever waits to be written goes first, as the
        // client may be waiting for it (answers to its earlier requests, or
        // a 100 Continue).
        self.flush(shared).await?;
        let len = self.grow(want);
        let (stream, buf) = (&self.stream, &mut self.buf);
        // Underneath: `read_with` tries the read; on `WouldBlock` it waits
        // for readiness as `readable` does, then tries again. `Timer::at`
        // puts the deadline in the reactor's timer map, so epoll's wait is
        // cut short when it passes. `future::or` polls `read` first and
        // ends with whichever is ready; the other is dropped, and dropping
        // a timer takes it out of the reactor.
        trace::note(format_args!("read() on the socket"));
        let read = async {
            stream
                .read_with(|s| (&*s).read(&mut buf[len..]))
                .await
                .map_err(Close::from)
        };
        let timeout = async {
            Timer::at(deadline).await;
            Err(Close::Error(HttpError::Timeout))
        };
        let result = future::or(read, timeout).await;
        self.keep_read(len, result)
    }

    /// Reads what has arrived already, without waiting; `false` if nothing
    /// has.
    fn read_arrived(&mut self, want: usize) -> Result<bool, Close> {
        let len = self.grow(want);
        match self.stream.get_ref().read(&mut self.buf[len..]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.buf.truncate(len);
                if len == 0 {
                    // A connection that has sent nothing holds no buffer
                    // while it waits.
                    self.buf = Vec::new();
                }
                Ok(false)
            }
            result => self
                .keep_read(len, result.map_err(Close::from))
                .map(|()| true),
        }
    }

    /// Makes room for up to `want` more bytes (at most one chunk, and a
    /// smaller first read); returns where they go.
    pub(crate) fn grow(&mut self, want: usize) -> usize {
        let len = self.buf.len();
        let most = if len == 0 { FIRST_READ } else { READ_CHUNK };
        self.buf.resize(len + want.clamp(1, most), 0);
        len
    }

    /// Keeps the bytes a read into `buf[len..]` returned.
    fn keep_read(&mut self, len: usize, result: Result<usize, Close>) -> Result<(), Close> {
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        match result {
            Ok(0) => Err(Close::Gone),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes every pending answer, giving up [`WRITE_TIMEOUT`] after the
    /// socket first refuses them.
    pub(crate) async fn flush(&mut self, shared: &Shared) -> Result<(), Close> {
        if self.out.is_empty() {
            return Ok(());
        }
        if !self.settle(shared).await {
            // Whether the answers' state reached the disk is unknown: none
            // of them may be sent.
            return Err(Close::Gone);
        }
        let result = write_out(&self.stream, &self.out).await;
        trace::note(format_args!("wrote {}", FirstLine(&self.out)));
        self.out.clear();
        result
    }

    /// With a journal, waits until everything the pending answers show is
    /// on disk — one wait for all of them, however many were pipelined —
    /// and puts a `503` in place of any answer whose task could not be
    /// saved (the journal writer took it back). `false` if shutdown's grace
    /// ended the wait first.
    pub(crate) async fn settle(&mut self, shared: &Shared) -> bool {
        let Some(journal) = &shared.journal_progress else {
            return true;
        };
        if !journal.wait_durable(self.barrier, &shared.grace_over).await {
            return false;
        }
        if self.unsaved.iter().all(|u| u.saving.saved(shared)) {
            self.unsaved.clear();
            return true;
        }
        let mut out = Vec::with_capacity(self.out.len());
        let mut at = 0;
        for unsaved in self.unsaved.drain(..) {
            out.extend_from_slice(&self.out[at..unsaved.range.start]);
            at = unsaved.range.end;
            if unsaved.saving.saved(shared) {
                out.extend_from_slice(&self.out[unsaved.range]);
                continue;
            }
            let lost = not_saved(shared, "the task");
            let status = match unsaved.saving {
                Saving::New(_) => 202,
                Saving::Repeat(_) => 200,
            };
            shared.responses.replace(status, lost.status);
            lost.write(&mut out, unsaved.delivery);
        }
        out.extend_from_slice(&self.out[at..]);
        self.out = out;
        true
    }

    /// Waits for the task of an HTTP long poll (`?wait=`) to change, then
    /// answers: the wait is on the task's watchers
    /// [`Trigger`](crate::trigger::Trigger), its
    /// deadline, the drain, and the client closing the connection.
    pub(crate) async fn long_poll(
        &mut self,
        shared: &Shared,
        poll: LongPoll,
    ) -> Result<Response, Close> {
        loop {
            let changed = {
                let mut store = shared.store();
                match store.tasks().lookup(poll.id) {
                    Lookup::Found(i) if store.tasks()[i].state != poll.seen => {
                        return Ok(task_response(200, &store, i));
                    }
                    Lookup::Found(_) => store.watch(poll.id),
                    other => return Ok(lookup_failure(other)),
                }
            };
            self.flush(shared).await?;
            let woke = async {
                changed.wait().await;
                true
            };
            let ended = async {
                let timeout = async {
                    Timer::at(poll.until).await;
                };
                future::or(shared.draining.wait(), timeout).await;
                false
            };
            let gone = async {
                Self::client_gone(&self.stream).await;
                None
            };
            match future::or(async { Some(future::or(woke, ended).await) }, gone).await {
                Some(true) => continue,
                Some(false) => {
                    let store = shared.store();
                    return Ok(match store.tasks().lookup(poll.id) {
                        Lookup::Found(i) => task_response(200, &store, i),
                        other => lookup_failure(other),
                    });
                }
                None => return Err(Close::Gone),
            }
        }
    }

    /// Returns when the client has closed its end of `stream`; never, if
    /// it sends more bytes instead (a pipelined request, read after this
    /// answer).
    async fn client_gone(stream: &Async<TcpStream>) {
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.get_ref().peek(&mut [0u8; 1]) {
                Ok(0) => return,
                Ok(_) => future::pending::<()>().await,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Closes the connection gracefully: writes what is pending, shuts the
    /// sending side, and reads what the client still sends for a moment.
    pub(crate) async fn close(mut self, shared: &Shared) {
        if self.flush(shared).await.is_err() {
            return;
        }
        // The answers are out: shutdown need not wait for the lingering.
        self.busy = None;
        // Shutting down a socket the peer already reset can fail; the
        // connection is over either way.
        let _ = self.stream.get_ref().shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let mut thrown = 0;
        while thrown < LINGER_BYTES {
            self.buf.clear();
            if self.fill(shared, deadline, READ_CHUNK).await.is_err() {
                return;
            }
            thrown += self.buf.len();
        }
    }
}

/// Writes all of `out` to `stream`, giving up once [`WRITE_TIMEOUT`] has
/// passed since the socket first refused a byte of it.
async fn write_out(stream: &Async<TcpStream>, out: &[u8]) -> Result<(), Close> {
    let mut written = 0;
    // Made at the first refusal and kept to the end: progress never makes
    // a new one. A write that is never refused costs no timer.
    let mut deadline: Option<Timer> = None;
    while written < out.len() {
        match stream.get_ref().write(&out[written..]) {
            Ok(0) => return Err(Close::Gone),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let timer = deadline.get_or_insert_with(|| Timer::after(WRITE_TIMEOUT));
                let passed = async {
                    timer.await;
                    Err(Close::Gone)
                };
                let room = async { stream.writable().await.map_err(Close::from) };
                // The deadline wins a tie: woken by it, the write is not
                // tried again, though the socket may have room by then.
                future::or(passed, room).await?;
            }
            Err(_) => return Err(Close::Gone),
        }
    }
    Ok(())
}
