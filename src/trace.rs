//! The executor trace: with `RUST_LOG=bgtasks::trace=trace`, every poll of
//! the server's tasks, every `Pending` they return and every wake, as log
//! lines, so that a reader can watch the executor, the reactor and the
//! wakers work on one request (the crate docs show such a trace).
//!
//! ```text
//! spawn conn#14 by listener#2 on main              a task is made and queued
//! poll conn#14 on executor-1                       a thread runs it
//! pending conn#14                                  it waits: its waker is left somewhere
//! wake conn#14 by the reactor on main              that somewhere calls the waker
//! wake default-worker#3 by conn#14 on executor-1   a task's own code woke another
//! done conn#14                                     the future is finished
//! conn#14: wrote HTTP/1.1 202 Accepted (238 bytes) a note from the code itself
//! ```
//!
//! It owns only the wrapper that watches a task and the lines it writes;
//! what a task does is the rest of the crate's. A traced task is the
//! task's future inside a [`Traced`], which names it and, at each poll,
//! hands it a waker of its own making ([`TaskWaker`]: `std::task::Wake` on
//! an `Arc`, so no `unsafe`) that logs the wake and passes it on to the
//! executor's waker. Whether a task is traced is decided once, at
//! [`spawn`]: with the trace off the future is spawned as it is, and no
//! poll pays for the trace.
//!
//! Who woke a task is known in two cases, and said: another traced task
//! (or the task itself) when the wake happens while that one is being
//! polled on the same thread — a channel send, a trigger fired — and the
//! reactor when it happens outside any task on a thread that drives it:
//! an executor thread in `async_io::block_on`, or async-io's own. (One
//! exception: at exit the executor drops the tasks still waiting, outside
//! any poll, and what their drop wakes is put down to the reactor.) Which
//! event the reactor saw, a socket's readiness or a timer, it does not tell
//! its wakers; the notes before a `pending` say what the task waits for.

use async_executor::{Executor, Task};
use std::cell::RefCell;
use std::fmt::{self, Display};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// The log target of the trace's lines, which `RUST_LOG` names to turn
/// the trace on: this module's path, as env_logger users name a module.
pub(crate) const TARGET: &str = "bgtasks::trace";

/// The number the next traced task gets, so that two tasks of one name
/// (every connection is a `conn`) are told apart.
static NEXT_NUMBER: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The traced task this thread is polling, if any: a wake made
    /// meanwhile came from its code.
    static POLLING: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Tells whether the trace is on: the logger writes its lines.
pub(crate) fn is_on() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Trace)
}

/// Spawns `future` on `executor` as a task named `name` (and numbered),
/// traced if the trace is on; otherwise spawns it as it is.
pub(crate) fn spawn<F>(
    executor: &Executor<'static>,
    name: impl Display,
    future: F,
) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if !is_on() {
        return executor.spawn(future);
    }
    let traced = Traced::new(name, future);
    log::trace!(target: TARGET, "spawn {} by {} on {}", traced.name, polling(), Thread);
    executor.spawn(traced)
}

/// Logs what the code of the task being polled does, `task: what`.
/// With the trace off this costs one compare.
pub(crate) fn note(what: fmt::Arguments) {
    log::trace!(target: TARGET, "{}: {what}", polling());
}

/// The first line of some bytes, shown as text without its line end, and
/// how many bytes there are: `HTTP/1.1 202 Accepted (253 bytes)`. Shown
/// only when written, so a note that is not written costs nothing more.
pub(crate) struct FirstLine<'a>(pub(crate) &'a [u8]);

impl Display for FirstLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.0.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        write!(
            f,
            "{} ({} bytes)",
            String::from_utf8_lossy(line),
            self.0.len()
        )
    }
}

/// Returns the name of the traced task being polled on this thread, or
/// `-` outside any.
fn polling() -> Arc<str> {
    POLLING.with_borrow(|task| task.clone().unwrap_or_else(|| Arc::from("-")))
}

/// A future traced as a named task: each poll, each `Pending` and its end
/// are logged, and the future is given a [`TaskWaker`] that logs each
/// wake.
pub(crate) struct Traced<F> {
    /// The task's name and number, `conn#14`.
    name: Arc<str>,
    /// The future, boxed so that this wrapper can be moved after it is
    /// pinned without any `unsafe` pin projection.
    future: Pin<Box<F>>,
    /// The executor's waker of the last poll and the waker made around
    /// it, kept while the executor's stays the same (it does for a task's
    /// whole life), so a poll makes none.
    wakers: Option<(Waker, Waker)>,
}

impl<F: Future> Traced<F> {
    /// Wraps `future` as the task `name`, numbered.
    pub(crate) fn new(name: impl Display, future: F) -> Traced<F> {
        let number = NEXT_NUMBER.fetch_add(1, Ordering::Relaxed);
        Traced {
            name: Arc::from(format!("{name}#{number}")),
            future: Box::pin(future),
            wakers: None,
        }
    }

    /// Returns the waker to give the future, for the executor's `outer`.
    fn waker(&mut self, outer: &Waker) -> Waker {
        match &self.wakers {
            Some((kept, ours)) if kept.will_wake(outer) => ours.clone(),
            _ => {
                // Underneath: `Waker::from` turns the `Arc` into a waker
                // whose wake calls `TaskWaker::wake`, a waker built by hand.
                let ours = Waker::from(Arc::new(TaskWaker {
                    task: self.name.clone(),
                    outer: outer.clone(),
                }));
                self.wakers = Some((outer.clone(), ours.clone()));
                ours
            }
        }
    }
}

impl<F: Future> Future for Traced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Traced` is `Unpin` (its future is boxed): no projection needed.
        let this = self.get_mut();
        log::trace!(target: TARGET, "poll {} on {}", this.name, Thread);
        let waker = this.waker(cx.waker());
        let outer = POLLING.replace(Some(this.name.clone()));
        let polled = this.future.as_mut().poll(&mut Context::from_waker(&waker));
        POLLING.set(outer);
        match polled {
            Poll::Pending => log::trace!(target: TARGET, "pending {}", this.name),
            Poll::Ready(_) => log::trace!(target: TARGET, "done {}", this.name),
        }
        polled
    }
}

/// The waker a traced task's future is given: a wake is logged, then
/// passed on to the executor's waker, which queues the task again.
struct TaskWaker {
    /// The task it wakes.
    task: Arc<str>,
    /// The executor's waker for the task.
    outer: Waker,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let by = POLLING.with_borrow(|polling| match polling {
            Some(task) if *task == self.task => "itself".to_string(),
            Some(task) => task.to_string(),
            None if Thread::drives_reactor() => "the reactor".to_string(),
            None => format!("thread {}", Thread),
        });
        log::trace!(target: TARGET, "wake {} by {by} on {}", self.task, Thread);
        // Underneath: the executor's waker schedules the task, which
        // pushes it on the executor's shared queue and notifies one
        // sleeping thread (async-executor 1.14.1, src/lib.rs,
        // `Executor::schedule` calling `State::notify`).
        self.outer.wake_by_ref();
    }
}

/// The current thread, shown by its name: `main` and `executor-N` run the
/// executor, `async-io` drives the reactor when none of them does,
/// `journal` writes the journal.
struct Thread;

impl Thread {
    /// Tells whether this thread drives async-io's reactor, so that a wake
    /// made on it outside any task came from the reactor: the executor's
    /// threads (in `block_on`), async-io's own, and async-process's, which
    /// runs a `block_on` of its own.
    fn drives_reactor() -> bool {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        ["main", "async-io", "async-process"].contains(&name) || name.starts_with("executor-")
    }
}

impl Display for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let thread = std::thread::current();
        match thread.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{:?}", thread.id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A waker that counts its wakes.
    struct Count(Mutex<usize>);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[test]
    fn a_wake_from_the_inner_future_reaches_the_executors_waker() {
        let count = Arc::new(Count(Mutex::new(0)));
        let outer = Waker::from(count.clone());
        let mut cx = Context::from_waker(&outer);
        let mut woken_once = false;
        let mut traced = Traced::new(
            "test",
            std::future::poll_fn(move |cx| {
                if woken_once {
                    return Poll::Ready(7);
                }
                woken_once = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }),
        );
        assert_eq!(Pin::new(&mut traced).poll(&mut cx), Poll::Pending);
        assert_eq!(*count.0.lock().unwrap(), 1);
        assert_eq!(Pin::new(&mut traced).poll(&mut cx), Poll::Ready(7));
    }

    #[test]
    fn a_first_line_is_shown_without_its_end_with_the_length() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"HTTP/1.1 202 Accepted\r\nA: b\r\n\r\n",
                "HTTP/1.1 202 Accepted (31 bytes)",
            ),
            (b"one line", "one line (8 bytes)"),
            (b"", " (0 bytes)"),
        ];
        for &(bytes, shown) in cases {
            assert_eq!(FirstLine(bytes).to_string(), shown);
        }
    }

    #[test]
    fn the_waker_is_made_once_while_the_executors_stays_the_same() {
        let outer = Waker::from(Arc::new(Count(Mutex::new(0))));
        let mut traced = Traced::new("test", std::future::pending::<()>());
        let first = traced.waker(&outer);
        assert!(traced.waker(&outer).will_wake(&first));
        let other = Waker::from(Arc::new(Count(Mutex::new(0))));
        assert!(!traced.waker(&other).will_wake(&first));
    }
}
