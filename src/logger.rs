//! The log: one line per event on stderr,
//! `2026-12-07T20:33:01.123Z INFO  [bgtasks] listening on …`, the time
//! left out when `--log-timestamps off` (the default under journald, which
//! stores the time itself).
//!
//! It owns only the shape of a line ([`format_line`]) and how it reaches
//! stderr ([`init`]); what is logged is the rest of the crate's, at the
//! levels the table below gives. It is this small `log::Log` rather than a
//! logging crate because a line needs three things no logger we may depend
//! on gives together: the time in the same RFC 3339 form as every timestamp
//! the API shows (written by [`crate::time::write_timestamp`]), a whole
//! line in one `write`, so that lines from several threads never
//! interleave, and no panic when stderr is gone — `eprintln!` panics when
//! its write fails (a log pipe whose reader died), and with
//! `panic = "abort"` that would end the server.
//!
//! The levels are a promise to operators, kept by whoever adds a line:
//! `info` is quiet for a healthy server (nothing per successful task),
//! so that a failure stands out.
//!
//! | level | what |
//! |---|---|
//! | `error` | a failed start, journal writes failing (once, until they work again), a second signal |
//! | `warn` | accept errors, an executor thread that cannot start, a torn journal record dropped, a leftover `journal.tmp`, a failed compaction, a failed notification |
//! | `info` | listening, replay, shutdown's steps and what they left, compactions, a queue paused or resumed, a schedule's skipped firing, **every failed attempt** |
//! | `debug` | each task's steps: queued, started, ended, cancelled, skipped; each firing |
//! | `trace` | nothing of its own; [`crate::trace`]'s lines, on only when `RUST_LOG` names `bgtasks::trace` |
//!
//! What a handler wrote reaches a line escaped
//! ([`OneLine`](crate::handlers::OneLine)), so a program cannot forge a
//! line. Which level is written is `--log-level` or `RUST_LOG`, read by
//! [`crate::config`]; the executor trace's target has a switch of its own,
//! written whatever the level of the rest.

use std::io::Write;

/// Writes each event at or above its level as one line on stderr.
struct Logger {
    /// The most verbose level written.
    level: log::LevelFilter,
    /// Whether the executor trace's lines (its target, at `trace`) are
    /// written.
    trace_executor: bool,
    /// Whether each line starts with the time.
    timestamps: bool,
}

/// Installs the logger for the rest of the process, and with it whether
/// the executor is traced. Only the first call counts: a second has no
/// logger to replace and is ignored.
pub(crate) fn init(level: log::LevelFilter, trace_executor: bool, timestamps: bool) {
    // Leaked once: the logger lives as long as the process.
    let logger = Box::leak(Box::new(Logger {
        level,
        trace_executor,
        timestamps,
    }));
    if log::set_logger(logger).is_ok() {
        // The `log` macros skip, before calling the logger, any line more
        // verbose than this: with the trace off, its lines cost one compare.
        log::set_max_level(if trace_executor {
            log::LevelFilter::Trace
        } else {
            level
        });
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        if metadata.target() == crate::trace::TARGET {
            self.trace_executor
        } else {
            metadata.level() <= self.level
        }
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let time = self.timestamps.then(crate::now_millis);
        let line = format_line(time, record.level(), record.target(), record.args());
        // Nothing is left to tell that stderr is gone; the server goes on.
        let _ = std::io::stderr().lock().write_all(&line);
    }

    fn flush(&self) {
        // Stderr is unbuffered: every line is out once `log` returns.
    }
}

/// Builds one log line, newline included: the time (milliseconds since
/// the epoch) if given, the level padded to five, the crate's name in
/// brackets, the message. The crate's name, not the module the line came
/// from: SPEC §1 fixes the line as `[bgtasks]`, and operators grep for it
/// whichever module now holds the code that logs.
fn format_line(
    time: Option<u64>,
    level: log::Level,
    target: &str,
    message: &std::fmt::Arguments,
) -> Vec<u8> {
    let mut line = Vec::with_capacity(128);
    if let Some(millis) = time {
        // The status writer's own timestamp, without its JSON quotes; it
        // writes 0 as `null` ("not yet"), so a clock set before 1970
        // shows as the epoch's first millisecond instead.
        crate::time::write_timestamp(&mut line, millis.max(1));
        line.retain(|&b| b != b'"');
        line.push(b' ');
    }
    // Writing into a Vec cannot fail.
    let krate = target.split("::").next().unwrap_or(target);
    let _ = writeln!(line, "{level:<5} [{krate}] {message}");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the logger writes them, with and without the time.
    #[test]
    fn lines_start_with_the_time_unless_it_is_off() {
        let cases: &[(Option<u64>, log::Level, &str, &str)] = &[
            (
                Some(1_796_675_581_123),
                log::Level::Info,
                "listening on http://127.0.0.1:8000",
                "2026-12-07T20:33:01.123Z INFO  [bgtasks] listening on http://127.0.0.1:8000\n",
            ),
            (
                None,
                log::Level::Info,
                "listening on http://127.0.0.1:8000",
                "INFO  [bgtasks] listening on http://127.0.0.1:8000\n",
            ),
            (
                Some(1_796_675_581_007),
                log::Level::Debug,
                "task x queued",
                "2026-12-07T20:33:01.007Z DEBUG [bgtasks] task x queued\n",
            ),
            (
                Some(0),
                log::Level::Error,
                "x",
                "1970-01-01T00:00:00.001Z ERROR [bgtasks] x\n",
            ),
        ];
        // A line logged from a module still names the crate alone.
        for target in ["bgtasks", "bgtasks::store"] {
            for &(time, level, message, expected) in cases {
                let line = format_line(time, level, target, &format_args!("{message}"));
                assert_eq!(String::from_utf8(line).unwrap(), expected);
            }
        }
    }
}
