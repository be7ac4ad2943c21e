//! bgtasks is a background task manager in one small binary: an HTTP/1.1
//! server that accepts a task, answers `202 Accepted` with a unique id at
//! once, and runs the task later on a fixed pool of workers.
//!
//! ```text
//! cargo run --release -- --addr 127.0.0.1:8000 --workers 10 --buffer 100
//! curl -i -X POST localhost:8000/tasks -d '{"task_id": "hello", "work_duration": "5s"}'
//! curl localhost:8000/tasks/<id>?wait=10s
//! ```
//!
//! This file is the core: the seed design the project grew from — a
//! bounded channel, a pool of workers and a hand-written HTTP/1.1 listener
//! on one smol executor — told in the order a request flows. Every feature
//! around it (flags, the store, the journal, the HTTP codec, the routes,
//! events, cron, handlers, the client) is a module of its own, listed in
//! [the map](#map); this file calls into them, and none of them reaches
//! back into it.
//!
//! # How the parts fit
//!
//! ```text
//!               one async_executor::Executor on --threads threads
//!  ┌────────────────────────────────────────────────────────────────────────────┐
//!  │ listener ── accept ──▶ connection task (one per socket)                    │
//!  │   (Async<TcpListener>)     │ HTTP/1.1 codec ─▶ routes ─▶ Store (Mutex) ─┐  │
//!  │                            │                     │  try_send(id)        │  │
//!  │                            ▼                     ▼                      │  │
//!  │                   202 + Location   one bounded channel per queue        │  │
//!  │                                    (default: --buffer; --queue …)       │  │
//!  │                                                  │ recv()               │  │
//!  │                                                  ▼                      │  │
//!  │                                   each queue's workers race their work  │  │
//!  │                                   against grace_over · cancel · timeout │  │
//!  │ due-time loop: one heap, one timer ── delayed tasks, retries, cron ───▶ │  │
//!  │ /events streams ◀── one event log, appended at the store's changes ◀────┘  │
//!  └────────────────────────────────────────────────────────────────────────────┘
//!   journal thread (--data-dir): appends, group-commits fsyncs, compacts
//!   signal pipes: SIGINT/SIGTERM ─▶ draining ─(--grace)─▶ grace_over ─▶ exit
//! ```
//!
//! A client POSTs a task; its connection task parses it, and under the
//! store lock puts the task's id into its queue's bounded channel with
//! `try_send` and records the task, both or neither — so a full queue means
//! `503` with `Retry-After` and leaves no trace. A worker receives the id,
//! marks the task running and does the work; the client polls
//! `GET /tasks/{id}` (or long-polls with `?wait=`) until the task is
//! `succeeded`, `failed` or `cancelled`. Every wait that something else may
//! have to cut short — a sleeping task, a child process, a long poll —
//! races a [`Trigger`]: a channel that is never sent on
//! and is closed to fire, which wakes every waiter at once.
//!
//! # Reading path
//!
//! Read this file from the top; each step names the function to read.
//!
//! 1. **Start-up.** [`main`] parses the flags into a
//!    [`Config`] (or hands the command line to the
//!    [`client`]); [`launch`] replays the journal, [`bind`]s the listening
//!    socket and builds the state every task shares
//!    ([`Shared`]).
//! 2. **Executor threads.** [`run_executor`] runs one
//!    `async_executor::Executor` on `--threads` threads (the main thread
//!    and `--threads` − 1 started ones), each in
//!    `async_io::block_on(executor.run(..))`. The main thread's `run` is
//!    given [`supervise`], the future whose end is the process's end.
//! 3. **The listener.** [`start_serving`] spawns [`listen`] (a task), the
//!    workers and the due-time loop ([`later::run`]). [`listen`] takes a
//!    place among `--max-connections`, accepts, and spawns
//!    [`conn::serve`] for each socket: one task per connection, which reads
//!    requests without blocking a thread and answers them through
//!    [`routes`].
//! 4. **Bounded channels and workers.** [`work`] is one worker:
//!    [`next_work`] waits on its queue's channel (`recv`), the store begins
//!    the attempt, and [`attempt`] runs it — the built-in [`sleep`] here, a
//!    program in [`handlers`].
//! 5. **Stop and cancel racing every `Timer`.** [`sleep`] races an
//!    `async_io::Timer` against [`interruption`] with `future::or`: the
//!    stop signal a running task obeys (`grace_over`, which shutdown
//!    fires when `--grace` runs out; SIGTERM itself only stops new work),
//!    the task's cancel trigger and its timeout. The first ready ends the
//!    attempt (on a tie, the side `or` polls first); the other future is
//!    dropped, which removes its waker from the timer map or the trigger.
//! 6. **Signals and shutdown.** [`Signals`] are pipes the reactor watches
//!    like sockets; [`shut_down`] is the shutdown steps below, as code.
//! 7. **Watching it run.** [`trace::spawn`] is how each task above is
//!    spawned: with `RUST_LOG=bgtasks::trace=trace` it wraps the task in a
//!    future that logs each poll, `Pending` and wake, through a waker of
//!    its own; [one request, traced](#one-request-traced) shows a run.
//!
//! Then, for a submission's whole path: [`routes::choose_route`] picks
//! the route, [`routes::answer`] answers it, [`submit::parse_submission`] checks the body, and
//! [`Store::admit`](store::Store::admit) is the `try_send` under the lock.
//!
//! # How an executor runs this
//!
//! Three words first. A *future* is a value with a `poll` method that
//! either finishes or says "not yet" — and, before saying so, leaves the
//! *waker* from its context wherever its event will come from (a socket's
//! entry in the reactor, a timer, a channel's list of listeners). A *task*
//! is a future the executor owns; calling its waker puts it back on a run
//! queue. The *reactor* (async-io's) turns epoll's readiness and expired
//! timers into calls of those wakers. ("Poll" also names unrelated things
//! here: an HTTP long poll, `?wait=`; and [`handlers`]' loop that looks for
//! exited processes.) [`trace`] builds a waker by hand, and its trace shows
//! all of this happen (below).
//!
//! What the crates do underneath, each said beside the code it concerns
//! and checked against the crates' sources (the function is cited there):
//!
//! - **`executor.run(main)` polls `main` inline**, between batches of
//!   tasks: `run` is `future.or(run_forever)` ([`run_executor`],
//!   [`start_serving`]).
//! - **A wake queues the task globally and notifies one sleeping thread**,
//!   which notifies another once it finds work ([`listen`]'s `spawn`).
//! - **Tasks run in batches of 200**, then the thread yields; a task is
//!   never preempted, hence [`BURST`] ([`work`]).
//! - **`block_on` drives the reactor, then gives it up**: after 500 µs of
//!   waiting in epoll on others' behalf it unparks async-io's own thread
//!   to drive it and parks ([`run_executor`]).
//! - **Threads that poll futures outside the executor.** async-io's helper
//!   thread drives the reactor when no `block_on` does; async-process's
//!   driver thread runs `async_io::block_on` over the future that reaps
//!   children (async-process 2.5, `Reaper::start_driver_thread`), and on
//!   Linux each child's exit arrives as a pidfd in the ordinary reactor.
//!   The journal writer is a plain thread that runs no future.
//!
//! # One request, traced
//!
//! With the executor trace on ([`trace`]), one `POST` on a new connection:
//!
//! ```text
//! RUST_LOG=debug,bgtasks::trace=trace bgtasks --threads 2 --workers 2
//! curl -X POST localhost:8000/tasks -d '{"task_id": "hello", "work_duration": "50ms"}'
//! ```
//!
//! logged this (each line's `TRACE [bgtasks] ` cut). `#N` numbers tasks
//! in the order they were made: `main#1` is the future the main thread's
//! `run` polls inline (shown once, then left out), `listener#2`, the two
//! workers `#3` and `#4`, the due-time loop `later#5`, then connections:
//!
//! ```text
//! poll main#1 on main                                          }  1
//! pending main#1                                               }
//! wake listener#2 by the reactor on main                       }
//! poll listener#2 on executor-1                                }
//! listener#2: accepted 127.0.0.1:34542                         }
//! spawn conn#6 by listener#2 on executor-1                     }  2
//! pending listener#2
//! poll conn#6 on executor-1                                    }  3
//! conn#6: readable() on the socket                             }
//! pending conn#6                                               }
//! wake conn#6 by the reactor on main                           }  4
//! poll conn#6 on main                                          }
//! wake default-worker#3 by conn#6 on main                      }  5
//! poll default-worker#3 on executor-1                          }
//! DEBUG [bgtasks] task 5NWHMnXzu queued
//! wake default-worker#4 by default-worker#3 on executor-1      }  6
//! DEBUG [bgtasks] task 5NWHMnXzu attempt 1 started
//! default-worker#3: Timer::after(50ms), racing interruption    }  7
//! pending default-worker#3                                     }
//! poll default-worker#4 on executor-1
//! pending default-worker#4
//! conn#6: wrote HTTP/1.1 202 Accepted (238 bytes)              }  8
//! conn#6: readable() on the socket
//! pending conn#6
//! wake conn#6 by the reactor on main                           }  9
//! poll conn#6 on main                                          }
//! done conn#6                                                  }
//! wake default-worker#3 by the reactor on async-io             } 10
//! poll default-worker#3 on executor-1                          }
//! DEBUG [bgtasks] task 5NWHMnXzu attempt 1 ended: succeeded
//! default-worker#3: recv() on queue default
//! pending default-worker#3
//! ```
//!
//! 1. The main thread polls `main#1` each time it looks for tasks; none
//!    is ready, so it waits in epoll (`block_on`). The kernel queues the
//!    connection on the listening socket: [`listen`]'s `accept` had found
//!    nothing and left the listener's waker with the reactor, which calls
//!    it now — on `main`, the thread in epoll. `executor-1` takes the
//!    queued task first, and the accept succeeds.
//! 2. [`listen`] spawns [`conn::serve`] for the socket (a task; `detach`
//!    lets it run to its end with nobody holding its handle).
//! 3. `executor-1` polls it. Its first read found nothing — curl connects,
//!    then sends, and this time the connection won the race — so it waits
//!    for the socket to be readable: its waker is left with the socket's
//!    entry in the reactor, and the task says `pending`.
//! 4. The bytes arrive: the reactor, driven now by `main`, calls the waker,
//!    and `main` polls the task: a task runs on whichever thread takes it.
//!    It parses the head ([`http::parse_head`]), picks the route
//!    ([`routes::choose_route`]) and calls [`routes::submit`].
//! 5. [`Store::admit`](store::Store::admit) does `try_send(id)` on the
//!    queue's channel. A worker waited there in [`next_work`]'s `recv()`:
//!    the send calls its waker, *by `conn#6`* — this is the wake that hands
//!    the task to a worker — and `executor-1` polls the worker while `main`
//!    still runs the connection. (`queued` is logged once the store's lock
//!    is let go, so after.)
//! 6. A wake nobody needed. The send notified worker 3's place in the
//!    channel's list of waiting receivers; worker 3, polled, took the id
//!    with a plain `try_recv` before looking at that notice, and a notice
//!    left unused is handed on to the next waiter, worker 4, which finds
//!    the channel empty and waits again. (async-channel 2.5,
//!    `RecvInner::poll_with_strategy`; event-listener 5.4, `Event`'s docs.)
//! 7. [`sleep`] races an `async_io::Timer` against [`interruption`]: the
//!    timer goes into the reactor's timer map, which cuts epoll's wait
//!    short when it is due.
//! 8. The `202` is written; the connection waits for a next request.
//! 9. curl closes its end: the reactor wakes the connection, its read finds
//!    the end of the stream, and the task ends.
//! 10. The 50 ms pass. The thread driving the reactor then was async-io's
//!     own ([`run_executor`] says when), and it wakes the worker; the
//!     store records `succeeded` (journals it, fires the task's watchers'
//!     trigger, which wakes any long poll on it, and appends its event
//!     for `/events`), and the worker goes back to `recv()`.
//!
//! # Shutdown, in order
//!
//! 1. SIGINT or SIGTERM fires `draining`: the listener takes in what waits
//!    in its backlog and closes its socket; new tasks and `/healthz` get
//!    `503` (idle keep-alive connections stay open to say so); the job
//!    channels close, so workers take no new task; the due-time loop
//!    stops; event streams say `shutdown` and end.
//! 2. Requests in flight are answered and running tasks may finish, for up
//!    to `--grace`.
//! 3. Then `grace_over` fires: every running task is interrupted (sleeps
//!    end, programs get SIGTERM and 1 s later SIGKILL).
//! 4. The process exits 0 as soon as nothing is left to wait for. A second
//!    signal, until then, exits at once with status 1 (in the last moments,
//!    while the journal writes what is left, it is not listened for); a
//!    repeat of the first signal within 1 s is the same request.
//!
//! # Map
//!
//! The core is this file. Each module owns one concern:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the flag table, environment, validation, `--help` |
//! | [`time`] | Go durations, RFC 3339, HTTP dates, the civil calendar |
//! | [`json`] | JSON written by hand: strings, numbers, optional members |
//! | [`task`] | a task's record, its states and ids, the one status writer |
//! | [`store`] | every task behind one lock: admission and every change |
//! | [`table`] | the store's records in id order, lookups and tombstones |
//! | [`plan`] | a batch planned whole before any of its tasks is made |
//! | [`keys`] | idempotency keys: the task each names, a batch's tasks |
//! | [`retention`] | which finished tasks are kept, and which go |
//! | [`deps`] | which waiting tasks wait for which (`after`), and their fate |
//! | [`queue`] | a queue's channel and what changes about it under the lock |
//! | [`shared`] | what every task shares, and the rule of the store's lock |
//! | [`trigger`] | the one-shot broadcast every cut-short wait races |
//! | [`later`] | the one due-time heap: delays, retries, schedule firings, eviction by age |
//! | [`cron`] | `--schedule` specs and their next firings |
//! | [`handlers`] | programs in process groups, their output and progress |
//! | [`outbox`] | the store's records on their way to the journal, and what waits |
//! | [`record`] | the journal's line format: records and checksums |
//! | [`journal`] | the writer thread, group commit, replay, compaction |
//! | [`http`] | the HTTP/1.1 request codec: heads, chunked bodies |
//! | [`response`] | writing an answer: status line, headers, body |
//! | [`conn`] | a connection's life: read, answer, flush, long poll |
//! | [`idle`] | idle keep-alive connections, closed to make room |
//! | [`routes`] | which route a request takes, and each route's answer |
//! | [`submit`] | a submission body checked into a new task |
//! | [`events`] | `/events`: the shared event log, streams, the dashboard |
//! | [`metrics`] | `/metrics` in Prometheus' text format |
//! | [`systemd`] | `READY=1` and `STOPPING=1` for a service manager |
//! | [`logger`] | the log's lines on stderr |
//! | [`trace`] | the executor trace: each poll, `Pending` and wake |
//! | [`client`] | `bgtasks COMMAND`: the client for the shell |
//! | [`client_http`] | the client's one HTTP/1.1 exchange with the server |
//! | [`client_output`] | what the client prints: lines, tables, events |

#![forbid(unsafe_code)]

mod client;
mod client_http;
mod client_output;
mod config;
mod conn;
mod cron;
mod deps;
mod events;
mod handlers;
mod http;
mod idle;
mod journal;
mod json;
mod keys;
mod later;
mod logger;
mod metrics;
mod outbox;
mod plan;
mod queue;
mod record;
mod response;
mod retention;
mod routes;
mod shared;
mod store;
mod submit;
mod systemd;
mod table;
mod task;
mod time;
mod trace;
mod trigger;

use crate::{
    config::{Command, Config, QueueList, parse_command, usage},
    handlers::{Interrupt, OneLine, become_subreaper, interrupted, run_program},
    idle::{IdleConnections, take_place},
    journal::{open_data_dir, spawn_journal_writer},
    later::Due,
    shared::{BURST, Shared, build_shared},
    store::Begin,
    systemd::notify_service_manager,
    task::{Outcome, State, Work},
    time::now_millis,
    trigger::Trigger,
};
use async_channel::{Receiver, Sender};
use async_executor::Executor;
use async_io::{Async, Timer};
use log::{debug, error, info, warn};
use smol::future;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

// Start-up: flags, the journal, the listening socket, the executor threads.

/// Runs the client when the first argument is a command; otherwise reads
/// the flags, sets up the log and runs the server until it has shut down,
/// exiting with its status (2 for a bad flag, 1 for a failed start).
fn main() {
    // A first argument that is a word, not a flag, is a client command.
    if let Some(code) = client::dispatch() {
        std::process::exit(code);
    }
    let args = std::env::args_os().skip(1);
    let config = match parse_command(args, |name| std::env::var(name).ok()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", usage());
            return;
        }
        Ok(Command::Version) => {
            println!("bgtasks {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        // Every start-up error is one line, whatever text it quotes.
        Err(message) => {
            eprintln!("bgtasks: {}", OneLine(&message));
            std::process::exit(2);
        }
    };
    logger::init(
        config.log_level,
        config.trace_executor,
        config.log_timestamps,
    );
    std::process::exit(match launch(*config) {
        Ok(code) => code,
        Err(message) => {
            error!("{}", OneLine(&message));
            1
        }
    });
}

/// Opens the data directory, binds, builds the shared state and runs the
/// executor threads until shutdown; returns the exit status.
fn launch(config: Config) -> Result<i32, String> {
    // The data directory comes first: a server should know its tasks
    // before it listens.
    let data = match &config.data_dir {
        Some(dir) => Some(open_data_dir(dir, &config)?),
        None => None,
    };
    // Listening comes next, before the rest of the start-up: a client that
    // connects meanwhile waits in the backlog, so starting the reactor (a
    // thread, an epoll set) overlaps with its connecting.
    let listener =
        bind(config.addr).map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    // Underneath: `Async::new` makes the socket non-blocking and registers
    // it with async-io's reactor (an epoll set, and a helper thread that
    // drives it when no thread in `block_on` does).
    let listener = Async::new(listener).map_err(|e| format!("cannot watch the listener: {e}"))?;
    let signals = Signals::new().map_err(|e| format!("cannot watch signals: {e}"))?;
    if !config.handlers.is_empty() {
        become_subreaper();
    }
    let (shared, due_rx, writer) = build_shared(config, data);
    // The writer must run before anything is served: a submission waits
    // for it, and without it would wait forever.
    let writer = match writer {
        Some(writer) => Some(spawn_journal_writer(&shared, writer)?),
        None => None,
    };
    let code = run_executor(&shared, listener, signals, due_rx);
    if let Some((thread, _lock)) = writer {
        // What the last moments changed is written before the process ends.
        shared.store().close_journal();
        // The writer only ends by returning; a panic would abort.
        let _ = thread.join();
    }
    Ok(code)
}

/// How many connections the kernel keeps for the listener before it is
/// ready to accept them (SPEC §3: at least 1024). `std`'s `bind` asks for
/// 128: a burst of 200 clients left 70 waiting for the kernel's 1 s SYN
/// retry. 1024 as tokio (Go asks for `net.core.somaxconn`, nginx 511): as
/// many as the default `--max-connections`, so a burst that large waits
/// for places instead of being dropped, and the same on every host, where
/// following `somaxconn` would queue 4096 (its default since Linux 5.4)
/// clients behind a full server. The kernel lowers it to `somaxconn` when
/// that is smaller.
const LISTEN_BACKLOG: i32 = 1024;

/// Opens the listening socket on `addr`: `std`'s `TcpListener::bind`
/// (close-on-exec, `SO_REUSEADDR` so that a restart need not wait for the
/// last run's connections to time out), with a backlog of
/// [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)?;
    Ok(TcpListener::from(socket))
}

/// Runs the executor on `--threads` threads until [`supervise`] returns its
/// exit status.
fn run_executor(
    shared: &Arc<Shared>,
    listener: Async<TcpListener>,
    signals: Signals,
    due_rx: Receiver<(u64, Due)>,
) -> i32 {
    let executor = Arc::new(Executor::new());
    let exited = Trigger::new();
    std::thread::scope(|scope| {
        // Tuning: the obvious order starts the threads first. Counting the
        // cores (std reads the cgroup quota too) and starting threads take a
        // few hundred microseconds: `supervise` does it once a client
        // already waiting has been answered.
        let start_threads = || {
            let threads = shared.config.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            for n in 1..threads {
                let (executor, exited) = (executor.clone(), exited.clone());
                // Named for the executor trace, `top -H` and debuggers.
                let thread = std::thread::Builder::new().name(format!("executor-{n}"));
                let started = thread.spawn_scoped(scope, move || {
                    async_io::block_on(executor.run(exited.wait()))
                });
                if let Err(e) = started {
                    // The threads that did start share its work.
                    warn!("cannot start executor thread {n}: {e}");
                }
            }
        };
        let main = supervise(
            shared.clone(),
            executor.clone(),
            listener,
            signals,
            due_rx,
            start_threads,
        );
        // Underneath: `executor.run(main)` is `main.or(run_forever)`
        // (async-executor 1.14.1, src/lib.rs, `State::run`): `main` is not a
        // task but polled inline, first, each time `block_on` polls `run`;
        // `run_forever` then runs ready tasks, 200 at a time. When none is
        // ready, `run` returns "not yet" and `block_on` (async-io 2.6.0,
        // src/driver.rs, `block_on`) takes the reactor if no thread has it
        // and waits in epoll until an event, a timer or a wake-up; a thread
        // that has waited there 500 µs on others' behalf gives the reactor
        // up — it unparks async-io's own thread to drive it — and parks
        // until woken, and a thread that finds the reactor taken parks at
        // once. What wakes it is a task being queued: the executor calls
        // the waker of one sleeping thread's `block_on`, which unparks that
        // thread, or interrupts its epoll wait if it is the one in epoll.
        let code = if trace::is_on() {
            async_io::block_on(executor.run(trace::Traced::new("main", main)))
        } else {
            async_io::block_on(executor.run(main))
        };
        exited.fire();
        code
    })
}

/// Starts the server and runs it until shutdown has finished; returns the
/// exit status.
async fn supervise(
    shared: Arc<Shared>,
    executor: Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    signals: Signals,
    due_rx: Receiver<(u64, Due)>,
    start_threads: impl FnOnce(),
) -> i32 {
    let running = start_serving(&shared, &executor, listener, due_rx).await;
    notify_service_manager("READY=1");
    start_threads();
    let first = (signals.next().await, Instant::now());
    notify_service_manager("STOPPING=1");
    shut_down(&shared, &executor, running, signals, first).await
}

/// What shutdown needs of a running server: what to wait for.
struct Running {
    /// The listener's task; it ends once it has taken in its backlog.
    listening: async_executor::Task<()>,
    /// Each request holds an upgraded clone of this while it is served.
    in_flight_tx: Sender<()>,
    /// Reports, once `in_flight_tx` is dropped, when the last request in
    /// flight has been answered: its receive fails when no sender is left.
    requests_done: Receiver<()>,
    /// Reports in the same way when every worker has ended.
    workers_done: Receiver<()>,
}

/// Spawns the listener, then the workers and the due-time loop.
async fn start_serving(
    shared: &Arc<Shared>,
    executor: &Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    due_rx: Receiver<(u64, Due)>,
) -> Running {
    let (in_flight_tx, requests_done) = async_channel::bounded::<()>(1);
    // The bound address, not the flag: with port 0 the kernel picks one.
    let bound = listener
        .get_ref()
        .local_addr()
        .map_or(shared.config.addr, |a| a);
    // The listener first: a client may be waiting in the backlog already.
    let listen = listen(
        shared.clone(),
        executor.clone(),
        listener,
        in_flight_tx.downgrade(),
    );
    let listening = trace::spawn(executor, "listener", listen);
    info!(
        "listening on http://{bound} with {}",
        QueueList(&shared.config.queues)
    );
    // Tuning: the obvious order spawns everything and goes on. This
    // function is not a task: it runs inside `supervise`, the future the
    // main thread's `executor.run` polls inline, and `run` is
    // `future.or(run_forever)` (see `run_executor`). So `yield_now`, which
    // returns "not yet" once and wakes itself, hands the thread to
    // `run_forever`, which runs the tasks queued meanwhile — the listener,
    // as the trace shows — before this goes on: a client that connected
    // while the process was starting is answered now (its task waits in
    // the queue for the workers), and counting cores and starting threads
    // come after. The first 202 went out ~285 µs into `main` instead of
    // ~530.
    future::yield_now().await;
    let (workers_tx, workers_done) = async_channel::bounded::<()>(1);
    for (q, queue) in shared.config.queues.iter().enumerate() {
        for _ in 0..queue.workers {
            let worker = work(shared.clone(), q, workers_tx.clone());
            trace::spawn(executor, format_args!("{}-worker", queue.name), worker).detach();
        }
    }
    trace::spawn(executor, "later", later::run(shared.clone(), due_rx)).detach();
    Running {
        listening,
        in_flight_tx,
        requests_done,
        workers_done,
    }
}

// The listener: one task that accepts, and a task per connection.

/// The first wait after an accept error: long enough for a connection to
/// close and free a file descriptor, short enough to go unnoticed.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The longest the listener waits after an accept error before trying again.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown begins, each in a task of its own.
///
/// A place among `--max-connections` is taken before `accept`, so past the
/// limit new connections wait in the kernel's backlog rather than in memory
/// (until [`take_place`] makes room for them).
async fn listen(
    shared: Arc<Shared>,
    executor: Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    in_flight: async_channel::WeakSender<()>,
) {
    let places = Arc::new(smol::lock::Semaphore::new(shared.config.max_connections));
    let idle = Arc::new(IdleConnections::default());
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        // Underneath: `accept` tries `accept(2)`; when nothing waits in the
        // backlog it leaves this task's waker with the reactor, which calls
        // it when epoll says the listening socket is readable.
        let next = async {
            let place = take_place(&places, &listener, &idle).await;
            (place, listener.accept().await)
        };
        let stopped = async {
            shared.draining.wait().await;
            None
        };
        let Some((place, accepted)) = future::or(stopped, async { Some(next.await) }).await else {
            accept_backlog(&shared, &executor, &listener, &in_flight, &places, &idle);
            // Dropping the listener closes its socket: new connections are refused.
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                trace::note(format_args!("accepted {peer}"));
                backoff = MIN_ACCEPT_BACKOFF;
                // Answers go out as soon as they are written, not after
                // Nagle's delay; failing to set it only costs latency.
                let _ = stream.get_ref().set_nodelay(true);
                // Underneath: `spawn` wraps the future in a task and
                // schedules it, as every wake of it will: push it on the
                // executor's one shared queue and notify one sleeping
                // thread, not all (async-executor 1.14.1, src/lib.rs,
                // `Executor::schedule`, `State::notify`); a thread that
                // finds a task notifies the next sleeper before running it
                // (`Ticker::runnable_with`), so threads wake as work comes.
                // `detach` lets it run to its end with no one holding its
                // handle (dropping a handle would cancel the task).
                let task = conn::serve(
                    shared.clone(),
                    stream,
                    in_flight.clone(),
                    None,
                    place,
                    idle.clone(),
                );
                trace::spawn(&executor, "conn", task).detach();
            }
            Err(e) => {
                warn!("accept failed: {e}; retrying in {backoff:?}");
                drop(place);
                let pause = async {
                    Timer::after(backoff).await;
                };
                future::or(shared.draining.wait(), pause).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

/// Accepts, once shutdown has begun, the connections already waiting in the
/// kernel's backlog: closing the listener would reset them, and their
/// clients may have sent a request already. Each one's first request counts
/// as in flight, so shutdown waits for its answer (a `503`, most likely).
fn accept_backlog(
    shared: &Arc<Shared>,
    executor: &Executor<'static>,
    listener: &Async<TcpListener>,
    in_flight: &async_channel::WeakSender<()>,
    places: &Arc<smol::lock::Semaphore>,
    idle: &Arc<IdleConnections>,
) {
    while let Some(place) = places.try_acquire_arc() {
        // The listener is non-blocking: this ends at WouldBlock.
        let Ok((stream, _)) = listener.get_ref().accept() else {
            return;
        };
        let Ok(stream) = Async::new(stream) else {
            continue;
        };
        let _ = stream.get_ref().set_nodelay(true);
        let first_request = in_flight.upgrade();
        let task = conn::serve(
            shared.clone(),
            stream,
            in_flight.clone(),
            first_request,
            place,
            idle.clone(),
        );
        trace::spawn(executor, "conn", task).detach();
    }
}

// Workers: each takes ids from its queue's bounded channel and runs them,
// racing the stop signal.

/// Takes jobs from queue `q`'s channel and runs them until shutdown
/// begins.
///
/// `_done` is dropped when the worker ends: `main` learns that every worker
/// has ended when its receiver reports that all senders are gone.
async fn work(shared: Arc<Shared>, q: usize, _done: Sender<()>) {
    let mut run = 0;
    while let Some(work) = next_work(&shared, q).await {
        run += 1;
        if run % BURST == 0 {
            // A worker whose channel is never empty never waits, and a task
            // is never preempted: the executor runs tasks in batches of 200
            // between its own yields (async-executor 1.14.1, src/lib.rs,
            // `State::run`), but cannot stop one midway. See BURST.
            future::yield_now().await;
        }
        let id = work.id;
        debug!("task {id} attempt {} started", work.attempt);
        let outcome = attempt(&shared, &work).await;
        if let Outcome::Failed(why) = &outcome {
            info!(
                "task {id} attempt {} failed: {}",
                work.attempt,
                OneLine(why)
            );
        }
        let ended = outcome.name();
        let retry = shared
            .store()
            .end_attempt(id.num, q, outcome, &shared.queues);
        let retry = if retry.is_some() {
            ", to be retried"
        } else {
            ""
        };
        debug!("task {id} attempt {} ended: {ended}{retry}", work.attempt);
    }
}

/// Takes the next task from queue `q`'s channel and begins its attempt;
/// `None` once shutdown has begun. A task taken while the queue is paused
/// is kept, still counted in the queue, and begun first on the resume; one
/// taken while its `--rate` has no token left is kept in the same way
/// until the due-time loop says the next token has come.
async fn next_work(shared: &Shared, q: usize) -> Option<Work> {
    loop {
        // Shutdown closes the channel, which wakes every waiting worker;
        // a job taken after that is left queued: with `--data-dir` the
        // journal has it for the next start, without it is dropped (and
        // counted in shutdown's log line).
        trace::note(format_args!("recv() on queue {}", shared.queues[q].name));
        let id = shared.queues[q].jobs_rx.recv().await.ok()?;
        if shared.draining.is_fired() {
            return None;
        }
        if let Some(journal) = &shared.journal_progress {
            // A task starts only once its record is on disk, so that a
            // failed write can still take it back (see the journal). The
            // drain may have begun meanwhile: then the task is left queued.
            if !journal.wait_task(id, &shared.grace_over).await || shared.draining.is_fired() {
                return None;
            }
        }
        // Whether this task has waited for a token already: it counts once
        // among the starts that had to.
        let mut limited = false;
        loop {
            let begun = shared.store().begin_attempt(id, q, &shared.queues, limited);
            let until = match begun {
                Begin::Work(work) => return Some(work),
                Begin::Skip => {
                    let id = shared.store().tasks().task_id(id);
                    debug!("task {id} skipped: cancelled while queued, or not saved");
                    break;
                }
                Begin::Paused(resumed) => {
                    held(shared, id, "its queue is paused");
                    resumed
                }
                Begin::Limited(refilled) => {
                    if !limited {
                        held(shared, id, "it waits for a token of its queue's --rate");
                    }
                    limited = true;
                    refilled
                }
            };
            let draining = async {
                shared.draining.wait().await;
                false
            };
            let woken = async {
                until.wait().await;
                true
            };
            // The drain wins a tie: a task not yet begun stays queued.
            if !future::or(draining, woken).await {
                return None;
            }
        }
    }
}

/// Logs, at debug level, why a worker holds task `id` without starting it.
fn held(shared: &Shared, id: u64, why: &str) {
    if log::log_enabled!(log::Level::Debug) {
        let id = shared.store().tasks().task_id(id);
        debug!("task {id} held: {why}");
    }
}

/// Runs one attempt of a task.
async fn attempt(shared: &Shared, work: &Work) -> Outcome {
    match &work.kind {
        None => sleep(shared, work).await,
        Some(kind) => match shared.config.handlers.iter().find(|h| h.kind == *kind) {
            Some(handler) => run_program(shared, work, handler, interruption(shared, work)).await,
            None => Outcome::Failed(format!("no handler is registered for kind {kind:?}")),
        },
    }
}

/// Runs the built-in `sleep` work.
async fn sleep(shared: &Shared, work: &Work) -> Outcome {
    let duration = work.sleep_for();
    if duration.is_zero() {
        return Outcome::Succeeded(None);
    }
    trace::note(format_args!(
        "Timer::after({duration:?}), racing interruption"
    ));
    let slept = async {
        Timer::after(duration).await;
        Outcome::Succeeded(None)
    };
    let cut = async { interrupted(interruption(shared, work).await, work) };
    future::or(cut, slept).await
}

/// Waits until the attempt must end early, and says why.
async fn interruption(shared: &Shared, work: &Work) -> Interrupt {
    let timeout = async {
        match work.timeout() {
            Some(after) => Timer::after(after).await,
            None => Timer::never().await,
        };
        Interrupt::Timeout
    };
    let cancel = async {
        // `None`: a cancel got in between the start and this first wait,
        // so the attempt is over as cancelled at once.
        let cancelled = shared.store().cancel_trigger(work.id.num);
        if let Some(cancelled) = cancelled {
            cancelled.wait().await;
        }
        Interrupt::Cancel
    };
    let shutdown = async {
        shared.grace_over.wait().await;
        Interrupt::Shutdown
    };
    // `future::or` polls its left side first and ends with the first
    // ready, dropping the other: shutdown is polled first, so an attempt cut
    // short by it is never counted as failed or timed out, even if both
    // happen at once.
    future::or(shutdown, future::or(cancel, timeout)).await
}

// Signals and shutdown, in order.

/// Shuts down in the order of the crate docs, after the `first` signal
/// (which, and when it was read); returns the exit status.
async fn shut_down(
    shared: &Shared,
    executor: &Executor<'static>,
    running: Running,
    signals: Signals,
    first: (StopSignal, Instant),
) -> i32 {
    // Step 1: the drain begins.
    info!(
        "shutting down: no new tasks; waiting up to {:?} for requests and running tasks",
        shared.config.grace
    );
    // A second signal, from now on, ends the process at once; a repeat of
    // the first is the same request.
    let second = async move {
        while !is_second_signal(first.0, signals.next().await, first.1.elapsed()) {}
        error!("second signal: exiting at once");
        std::process::exit(1);
    };
    trace::spawn(executor, "signals", second).detach();
    shared.store().close();
    shared.draining.fire();
    for queue in &shared.queues {
        queue.jobs_tx.close();
    }
    // The listener ends once it has taken in its backlog; only then can no
    // new request start, and this sender go.
    running.listening.await;
    drop(running.in_flight_tx);

    // Step 2: wait for requests in flight and running tasks, up to --grace.
    let everything_done = async {
        // Both receives end in an error, once the last sender is gone.
        let _ = running.requests_done.recv().await;
        let _ = running.workers_done.recv().await;
        true
    };
    let grace_over = async {
        Timer::after(shared.config.grace).await;
        false
    };
    let finished = future::or(everything_done, grace_over).await;

    // Step 3: interrupt what is still running, and wait for it to stop.
    let interrupted = shared.store().busy();
    if !finished {
        shared.grace_over.fire();
        let _ = running.workers_done.recv().await;
    }
    let store = shared.store();
    let (queued, scheduled) = (
        store.tasks().count(State::Queued),
        store.tasks().count(State::Scheduled),
    );
    if shared.journal_progress.is_some() {
        info!(
            "shutdown complete: {queued} queued, {scheduled} scheduled and {interrupted} interrupted tasks stay in the journal"
        );
    } else {
        info!(
            "shutdown complete: dropped {queued} queued and {interrupted} running tasks, and {scheduled} scheduled"
        );
    }
    0
}

/// A signal that stops the server.
#[derive(Clone, Copy, Debug, PartialEq)]
enum StopSignal {
    /// SIGINT: Ctrl-C.
    Int,
    /// SIGTERM: `kill`, `timeout`, a service manager.
    Term,
}

/// How long after the first signal a repeat of the same signal is the same
/// request, not a second one: `timeout` signals the process and then its
/// group, and a kill of a process group can reach it twice, so one signal
/// comes twice within microseconds; a person pressing Ctrl-C again takes
/// longer than this.
const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// Tells whether signal `this`, read `after` the `first`, asks to exit at
/// once: a different signal does, and so does the same one once
/// [`REPEAT_WINDOW`] has passed.
fn is_second_signal(first: StopSignal, this: StopSignal, after: Duration) -> bool {
    this != first || after >= REPEAT_WINDOW
}

/// The read ends of the pipes signal-hook writes a byte to for each SIGINT
/// and each SIGTERM. Its byte is the same whatever the signal: the pipe it
/// comes through is what says which it was.
struct Signals {
    /// SIGINT's pipe.
    int: Async<std::os::unix::net::UnixStream>,
    /// SIGTERM's pipe.
    term: Async<std::os::unix::net::UnixStream>,
}

impl Signals {
    /// Sets up a pipe for SIGINT and one for SIGTERM.
    fn new() -> io::Result<Signals> {
        let pipe = |signal| {
            let (read, write) = std::os::unix::net::UnixStream::pair()?;
            write.set_nonblocking(true)?;
            signal_hook::low_level::pipe::register(signal, write)?;
            Async::new(read)
        };
        Ok(Signals {
            int: pipe(signal_hook::consts::SIGINT)?,
            term: pipe(signal_hook::consts::SIGTERM)?,
        })
    }

    /// Waits for a signal to arrive; returns which. Several bytes waiting
    /// in one pipe are read as one: the same signal, come again at once.
    async fn next(&self) -> StopSignal {
        // SIGINT wins a tie; either way the other is read next.
        future::or(
            Signals::read(&self.int, StopSignal::Int),
            Signals::read(&self.term, StopSignal::Term),
        )
        .await
    }

    /// Waits for `signal`'s bytes on its pipe and takes them; returns it.
    async fn read(pipe: &Async<std::os::unix::net::UnixStream>, signal: StopSignal) -> StopSignal {
        let mut bytes = [0u8; 8];
        // The pipe cannot fail in practice; treating a failure as a signal
        // errs on the side of stopping.
        let _ = pipe.read_with(|s| (&*s).read(&mut bytes)).await;
        signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn only_a_different_signal_or_a_late_repeat_is_a_second_signal() {
        use StopSignal::{Int, Term};
        let ms = Duration::from_millis;
        let cases = [
            (Term, Term, ms(0), false),
            (Term, Term, ms(999), false),
            (Term, Term, ms(1000), true),
            (Term, Term, ms(1500), true),
            (Int, Int, ms(10), false),
            (Term, Int, ms(0), true),
            (Int, Term, ms(0), true),
        ];
        for (first, this, after, second) in cases {
            assert_eq!(
                is_second_signal(first, this, after),
                second,
                "{first:?} then {this:?} {after:?} later"
            );
        }
    }
}
