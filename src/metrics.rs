//! `GET /metrics`: the counters and gauges in Prometheus's text format,
//! and the count of answers by status code.
//!
//! The task numbers are read from the store under its lock, in one block,
//! so they agree with each other and with `/tasks` at that moment; the
//! store keeps them as it changes tasks (its counters are made at its one
//! choke point of change), so this module only reads and renders. What
//! the store does not see is counted beside it, in atomics that need no
//! lock: the answers by status code ([`StatusCounts`], counted by the
//! connection as it writes each answer) and the submissions refused for a
//! full queue ([`Shared::rejected`](crate::shared::Shared::rejected),
//! refused without the lock).
//!
//! [`render`] is the whole answer. Every series has a `# HELP` line that
//! says what it counts, and CI checks the output with Prometheus' own
//! linter (`tests/ecosystem/promtool.sh`) after tasks of every outcome,
//! several queues and a schedule.

use crate::{json::VecWriter, queue::QueueView, response::Response, shared::Shared, task::State};
use std::fmt::Write as _;

use std::sync::atomic::{AtomicU64, Ordering};

/// Status codes are three digits from 100 to 599: one counter each.
const STATUS_CODES: usize = 600;

/// Answers written by status code, for `/metrics`.
pub(crate) struct StatusCounts(pub(crate) [AtomicU64; STATUS_CODES]);

impl StatusCounts {
    /// Creates all-zero counts.
    pub(crate) fn new() -> StatusCounts {
        StatusCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Counts one answer.
    pub(crate) fn add(&self, status: u16) {
        if let Some(count) = self.0.get(usize::from(status)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns the `code` label and count of every status answered.
    fn samples(&self) -> Vec<(String, u64)> {
        (0..STATUS_CODES)
            .filter_map(|code| {
                let n = self.0[code].load(Ordering::Relaxed);
                (n > 0).then(|| (format!("{{code=\"{code}\"}}"), n))
            })
            .collect()
    }

    /// Moves one answer from one status to another: a `202` that became a
    /// `503` before it was written.
    pub(crate) fn replace(&self, from: u16, to: u16) {
        if let Some(count) = self.0.get(usize::from(from)) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        self.add(to);
    }
}

/// One metric family of `/metrics`: its name, type, help and samples,
/// each sample with its labels (`{state="failed"}`, or empty).
struct Family {
    /// The metric's name.
    pub(crate) name: &'static str,
    /// `gauge` or `counter`.
    pub(crate) kind: &'static str,
    /// What it measures, for `# HELP`.
    pub(crate) help: &'static str,
    /// Each sample's labels and value.
    samples: Vec<(String, u64)>,
}

impl Family {
    /// Makes a family with one sample and no labels.
    pub(crate) fn one(
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        value: u64,
    ) -> Family {
        Family {
            name,
            kind,
            help,
            samples: vec![(String::new(), value)],
        }
    }

    /// Appends the family in the text format: `# HELP`, `# TYPE`, samples.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let name = self.name;
        let _ = write!(
            VecWriter(out),
            "# HELP {name} {}\n# TYPE {name} {}\n",
            self.help,
            self.kind
        );
        for (labels, value) in &self.samples {
            let _ = writeln!(VecWriter(out), "{name}{labels} {value}");
        }
    }
}

/// Answers `GET /metrics` in the Prometheus text format, version 0.0.4.
/// The task numbers are read under the store lock, so they agree with
/// `/tasks`.
pub(crate) fn render(shared: &Shared) -> Response {
    let mut families = {
        let store = shared.store();
        let c = &store.counters();
        let finished = [State::Succeeded, State::Failed, State::Cancelled].map(|s| {
            (
                format!("{{state=\"{}\"}}", s.name()),
                c.finished[s as usize],
            )
        });
        let views = store.queue_views(&shared.config, &shared.queues);
        let per_queue = |name, help, value: fn(&QueueView) -> u64| Family {
            name,
            kind: "gauge",
            help,
            samples: views
                .iter()
                .map(|v| (format!("{{queue=\"{}\"}}", v.name), value(v)))
                .collect(),
        };
        vec![
            per_queue(
                "bgtasks_queue_depth",
                "Tasks in the queue, cancelled ones until a worker reaches them; \
                 not those due but waiting for room in it.",
                |v| v.depth as u64,
            ),
            per_queue(
                "bgtasks_queue_capacity",
                "Capacity of the queue (--buffer, or --queue's BUFFER).",
                |v| v.capacity as u64,
            ),
            per_queue(
                "bgtasks_workers",
                "Workers of the queue (--workers, or --queue's WORKERS).",
                |v| v.workers as u64,
            ),
            per_queue("bgtasks_workers_busy", "Workers running a task.", |v| {
                v.busy
            }),
            per_queue("bgtasks_queue_paused", "1 if the queue is paused.", |v| {
                u64::from(v.paused)
            }),
            Family {
                kind: "counter",
                ..per_queue(
                    "bgtasks_queue_rate_limited_total",
                    "Task starts that had to wait for a token of the queue's --rate.",
                    |v| v.rate_limited,
                )
            },
            Family {
                name: "bgtasks_schedule_firings_total",
                kind: "counter",
                help: "Firings of each schedule, by whether they created a task.",
                samples: store
                    .schedules()
                    .iter()
                    .flat_map(|s| {
                        let name = s.name();
                        let label =
                            |outcome| format!("{{schedule=\"{name}\", outcome=\"{outcome}\"}}");
                        let (created, skipped) = s.firings();
                        [(label("created"), created), (label("skipped"), skipped)]
                    })
                    .collect(),
            },
            Family::one(
                "bgtasks_tasks_scheduled",
                "gauge",
                "Delayed tasks waiting for their time.",
                store.tasks().count(State::Scheduled) as u64,
            ),
            Family::one(
                "bgtasks_tasks_waiting",
                "gauge",
                "Tasks waiting for their dependencies (after) to succeed.",
                store.tasks().count(State::Waiting) as u64,
            ),
            Family::one(
                "bgtasks_tasks_accepted_total",
                "counter",
                "Tasks created by requests and by schedules' firings; \
                 not idempotent repeats, nor tasks replayed from disk.",
                c.accepted,
            ),
            Family {
                name: "bgtasks_tasks_finished_total",
                kind: "counter",
                help: "Tasks that reached a terminal state.",
                samples: finished.into(),
            },
        ]
    };
    families.push(Family::one(
        "bgtasks_tasks_rejected_total",
        "counter",
        "Tasks refused because the queue was full.",
        shared.rejected.load(Ordering::Relaxed),
    ));
    families.push(Family {
        name: "bgtasks_http_requests_total",
        kind: "counter",
        help: "HTTP requests answered, by status code.",
        samples: shared.responses.samples(),
    });
    let mut out = Vec::with_capacity(METRICS_SIZE);
    for family in &families {
        family.write(&mut out);
    }
    Response {
        content_type: "text/plain; version=0.0.4",
        ..Response::json(200, out)
    }
}

/// Room reserved for a `/metrics` answer: the usual one fits.
const METRICS_SIZE: usize = 2048;
