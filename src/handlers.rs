//! Program handlers: a task of a `--handler` kind runs as a child process
//! in a process group of its own, its payload on stdin, its output's tails
//! kept as its result or its error, its `::progress::` lines reported as
//! they come.
//!
//! The built-in `sleep` is the seed design's work and stays in main.rs
//! beside the worker ([`crate::sleep`]); a program is the real thing, and
//! this module is all of it. The child gets a process group of its own so
//! that cancel, timeout and shutdown reach everything it started: the group
//! gets SIGTERM, then SIGKILL after [`KILL_AFTER_CANCEL`] (or the shorter
//! [`KILL_AFTER_STOP`] at shutdown, when the whole server waits), and
//! whatever is left of it when the attempt ends is killed and reaped
//! ([`reap_group`]; bgtasks is its handlers' subreaper,
//! [`become_subreaper`]), so no process outlives its attempt — but for one
//! that leaves the group with `setsid`, which nothing but a cgroup could
//! follow.
//!
//! Read [`run_program`] first; [`program_outcome`] is how an ending
//! becomes `succeeded` or `failed` and the words of `error`. A request
//! only picks a kind registered with `--handler` and gives data for the
//! program's stdin: nothing in it becomes a program name, an argument, a
//! variable or shell text (no shell is involved; `tests/handlers.rs`,
//! `shell_metacharacters_in_a_request_are_inert`). Keep it so.
//!
//! What an attempt may be interrupted by is not this module's to know:
//! [`run_program`] is handed the worker's race of cancel, timeout and
//! shutdown as one future, and hands back the attempt's [`Outcome`], which
//! the worker records. The only change it makes itself is a running
//! task's progress, through
//! [`Store::set_progress`](crate::store::Store::set_progress), the lock
//! taken for that one statement.
//!
//! What one attempt can make the server hold is bounded whatever the
//! program writes: the last [`OUTPUT_TAIL`] bytes of stdout and of
//! stderr, a progress value of at most [`MAX_PROGRESS`] bytes (a longer
//! line is ignored, never held whole), and reads of [`PIPE_READ`] bytes.

use crate::{
    config::Handler,
    json::write_json_str,
    shared::Shared,
    task::{Outcome, Text, Work},
};
use async_io::Timer;
use log::warn;
use smol::future;

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

/// Displays text from a handler, or a start-up error quoting what a user
/// typed, in one line, escaping what would break it: control characters,
/// newlines among them, and Unicode's line and paragraph separators,
/// written as Rust escapes them.
pub(crate) struct OneLine<'a>(pub(crate) &'a str);

impl std::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Why running work was interrupted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Interrupt {
    /// Shutdown's grace is over.
    Shutdown,
    /// A client cancelled the task.
    Cancel,
    /// The attempt's timeout passed.
    Timeout,
}

/// Turns an interruption into the attempt's outcome.
pub(crate) fn interrupted(why: Interrupt, work: &Work) -> Outcome {
    match why {
        Interrupt::Shutdown => Outcome::Interrupted,
        Interrupt::Cancel => Outcome::Cancelled,
        Interrupt::Timeout => Outcome::Failed(timeout_sentence(work)),
    }
}

/// Says that an attempt timed out, with the timeout as the client wrote it.
fn timeout_sentence(work: &Work) -> String {
    let text = work.timeout.as_ref().map_or("", Text::as_str);
    format!("timed out after {text}")
}

/// How many bytes one read of a program's output asks for: a quarter of
/// the tail, so a chatty program is read in few calls from a small buffer.
const PIPE_READ: usize = OUTPUT_TAIL / 4;

/// How much of a program's stdout and stderr is kept: the end of each,
/// since that is where a result or the reason for a failure usually is.
const OUTPUT_TAIL: usize = 4096;

/// How long a cancelled or timed-out program has between SIGTERM and SIGKILL.
const KILL_AFTER_CANCEL: Duration = Duration::from_secs(5);

/// How long a program interrupted by shutdown has between SIGTERM and
/// SIGKILL: shorter, because the whole server is waiting for it.
const KILL_AFTER_STOP: Duration = Duration::from_secs(1);

/// How long to keep reading a finished program's output after its process
/// group is gone: only a process that left the group can hold it open.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Runs one attempt of a program handler: starts it in a process group of
/// its own with the payload on stdin, reads the tails of its output as it
/// comes, and ends the whole group when the program exits or `interruption`
/// (the worker's race of cancel, timeout and shutdown) ends first, so no
/// process outlives its attempt.
pub(crate) async fn run_program(
    shared: &Shared,
    work: &Work,
    handler: &Handler,
    interruption: impl Future<Output = Interrupt>,
) -> Outcome {
    use std::os::unix::process::CommandExt;
    use std::pin::pin;
    use std::process::Stdio;
    let mut command = std::process::Command::new(&handler.program);
    command
        .args(&handler.args)
        .env("BGTASKS_TASK_ID", work.id.to_string())
        .env("BGTASKS_TASK_KIND", work.kind.as_deref().unwrap_or("sleep"))
        .env("BGTASKS_ATTEMPT", work.attempt.to_string())
        .env("BGTASKS_AFTER", work.after_env())
        .process_group(0);
    // The conversion keeps the program, arguments, environment and process
    // group, but not the standard streams: they are set after it.
    let mut command = smol::process::Command::from(command);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Failed(format!("cannot start {}: {e}", handler.program.display()));
        }
    };
    let group = rustix::process::Pid::from_raw(child.id() as i32);
    let stdin = child.stdin.take();
    let mut pipes = pin!(future::zip(
        read_stdout(child.stdout.take(), shared, work.id.num),
        read_tail(child.stderr.take())
    ));
    let mut tails = None;
    let feed = async {
        if let Some(mut stdin) = stdin {
            let payload = work.payload.as_deref().unwrap_or("null");
            // A program may exit without reading its input: EPIPE is fine.
            let _ = smol::io::AsyncWriteExt::write_all(&mut stdin, payload.as_bytes()).await;
        }
    };
    let exited = async { future::zip(feed, child.status()).await.1 };
    let ended = future::or(async { Err(interruption.await) }, async {
        Ok(exited.await)
    });
    let ended = with_output(ended, pipes.as_mut(), &mut tails).await;
    let ending = match ended {
        Ok(status) => Ending::Exited(status),
        Err(why) => {
            signal_group(group, rustix::process::Signal::TERM);
            let grace = if why == Interrupt::Shutdown {
                KILL_AFTER_STOP
            } else {
                KILL_AFTER_CANCEL
            };
            let killed = async {
                Timer::after(grace).await;
                signal_group(group, rustix::process::Signal::KILL);
                future::pending().await
            };
            let exited = future::or(child.status(), killed);
            let _ = with_output(exited, pipes.as_mut(), &mut tails).await;
            Ending::Interrupted(why)
        }
    };
    // However the attempt ended, nothing it started may outlive it: what is
    // left of the group is killed and, since bgtasks is its subreaper,
    // reaped. That also closes the pipes a leftover process held.
    signal_group(group, rustix::process::Signal::KILL);
    reap_group(group).await;
    let (out, err) = match tails {
        Some(tails) => tails,
        None => {
            let late = async {
                Timer::after(OUTPUT_DRAIN).await;
                (Vec::new(), Vec::new())
            };
            future::or(pipes, late).await
        }
    };
    program_outcome(ending, work, &out, &err)
}

/// How a program's attempt ended.
#[derive(Debug)]
enum Ending {
    /// The program exited by itself (or waiting for it failed).
    Exited(io::Result<std::process::ExitStatus>),
    /// The attempt was interrupted and the program stopped.
    Interrupted(Interrupt),
}

/// How long to wait for a killed group's last processes to be reaped.
const REAP_WITHIN: Duration = Duration::from_secs(1);

/// How often to look for them meanwhile: SIGKILL lands within a
/// tick or two of the operating system's scheduler, and there is no
/// readiness to wait on.
const REAP_POLL: Duration = Duration::from_millis(2);

/// Reaps the processes of a killed group that were orphaned to bgtasks (its
/// subreaper), so none is left a zombie. It waits only on that group, so it
/// never takes an exit status async-process is waiting for.
pub(crate) async fn reap_group(group: Option<rustix::process::Pid>) {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let Some(group) = group else { return };
    let deadline = Instant::now() + REAP_WITHIN;
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    loop {
        match waitid(WaitId::Pgid(Some(group)), options) {
            // One reaped: there may be more.
            Ok(Some(_)) => {}
            // Killed but not yet dead: SIGKILL takes a moment to land, and
            // there is no readiness to wait for, so this looks again.
            Ok(None) if Instant::now() < deadline => {
                Timer::after(REAP_POLL).await;
            }
            // ECHILD: no process of the group is our child any more.
            _ => return,
        }
    }
}

/// Polls `fut` to completion while also reading the program's output into
/// `tails`, so a chatty program never blocks on a full pipe.
async fn with_output<T>(
    fut: impl Future<Output = T>,
    mut pipes: std::pin::Pin<&mut impl Future<Output = (Vec<u8>, Vec<u8>)>>,
    tails: &mut Option<(Vec<u8>, Vec<u8>)>,
) -> T {
    let drive = async {
        if tails.is_none() {
            *tails = Some(pipes.as_mut().await);
        }
        future::pending().await
    };
    future::or(fut, drive).await
}

/// Sends `signal` to a process group; a group that is already gone is fine.
fn signal_group(group: Option<rustix::process::Pid>, signal: rustix::process::Signal) {
    if let Some(group) = group {
        // ESRCH just means every process of the group has exited.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// Reads a pipe to its end and keeps the last [`OUTPUT_TAIL`] bytes.
async fn read_tail(pipe: Option<impl smol::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut tail = Vec::new();
    let Some(mut pipe) = pipe else { return tail };
    let mut chunk = [0u8; PIPE_READ];
    loop {
        match smol::io::AsyncReadExt::read(&mut pipe, &mut chunk).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => keep_tail(&mut tail, &chunk[..n]),
        }
    }
}

/// A line of a program's stdout that starts with this reports progress
/// (the convention of GitHub Actions' workflow commands).
const PROGRESS_PREFIX: &[u8] = b"::progress::";

/// The longest progress value: a status member, not a log; a longer line
/// is ignored.
const MAX_PROGRESS: usize = 1024;

/// Reads a program's stdout to its end, as it comes: reports each progress
/// line to the store, and keeps the last [`OUTPUT_TAIL`] bytes of the rest
/// for the result.
async fn read_stdout(
    pipe: Option<impl smol::io::AsyncRead + Unpin>,
    shared: &Shared,
    id: u64,
) -> Vec<u8> {
    let mut lines = Stdout::default();
    let Some(mut pipe) = pipe else {
        return lines.tail;
    };
    let mut chunk = [0u8; PIPE_READ];
    let mut report = |value: &[u8]| shared.store().set_progress(id, progress_json(value));
    loop {
        match smol::io::AsyncReadExt::read(&mut pipe, &mut chunk).await {
            Ok(0) | Err(_) => return lines.finish(&mut report),
            Ok(n) => lines.feed(&chunk[..n], &mut report),
        }
    }
}

/// Makes a progress value's JSON text: the value itself when it is JSON,
/// else a JSON string of it.
fn progress_json(value: &[u8]) -> Box<str> {
    result_json(value.trim_ascii())
}

/// Where the reader of a program's stdout is: it splits the output into
/// lines as it streams, whatever the reads' sizes, holding at most a
/// progress value of a line, never a whole line.
#[derive(Debug, Default)]
struct Stdout {
    /// The last bytes of the output that are not progress lines.
    pub(crate) tail: Vec<u8>,
    /// The line being read.
    pub(crate) line: Line,
}

/// What the line being read is known to be.
#[derive(Debug)]
enum Line {
    /// It may be a progress line: this many bytes of it match the prefix.
    Start(usize),
    /// A progress line: its value so far, `None` once it is too long.
    Progress(Option<Vec<u8>>),
    /// Any other line: its bytes go to the tail as they come.
    Other,
}

impl Default for Line {
    fn default() -> Line {
        Line::Start(0)
    }
}

impl Stdout {
    /// Takes in a chunk of output, reporting each progress line it ends.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], report: &mut impl FnMut(&[u8])) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            match &mut self.line {
                Line::Start(matched) => {
                    let want = &PROGRESS_PREFIX[*matched..];
                    let n = want.len().min(chunk.len());
                    if chunk[..n] != want[..n] {
                        // Not progress: what looked like it is output.
                        keep_tail(&mut self.tail, &PROGRESS_PREFIX[..*matched]);
                        self.line = Line::Other;
                        continue;
                    }
                    *matched += n;
                    chunk = &chunk[n..];
                    if *matched == PROGRESS_PREFIX.len() {
                        self.line = Line::Progress(Some(Vec::new()));
                    }
                }
                Line::Other => {
                    let end = newline.map_or(chunk.len(), |at| at + 1);
                    keep_tail(&mut self.tail, &chunk[..end]);
                    chunk = &chunk[end..];
                    if newline.is_some() {
                        self.line = Line::Start(0);
                    }
                }
                Line::Progress(value) => {
                    let part = &chunk[..newline.unwrap_or(chunk.len())];
                    if value
                        .as_ref()
                        .is_some_and(|v| v.len() + part.len() > MAX_PROGRESS)
                    {
                        *value = None;
                    }
                    if let Some(value) = value {
                        value.extend_from_slice(part);
                    }
                    chunk = &chunk[part.len()..];
                    if newline.is_some() {
                        if let Some(value) = value.take() {
                            report(&value);
                        }
                        chunk = &chunk[1..];
                        self.line = Line::Start(0);
                    }
                }
            }
        }
    }

    /// Ends the output: a last line without its newline counts as a line.
    pub(crate) fn finish(mut self, report: &mut impl FnMut(&[u8])) -> Vec<u8> {
        match self.line {
            Line::Start(matched) => keep_tail(&mut self.tail, &PROGRESS_PREFIX[..matched]),
            Line::Progress(Some(value)) => report(&value),
            Line::Progress(None) | Line::Other => {}
        }
        self.tail
    }
}

/// Appends `chunk` to `tail`, dropping from the front beyond [`OUTPUT_TAIL`].
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > OUTPUT_TAIL {
        tail.drain(..tail.len() - OUTPUT_TAIL);
    }
}

/// Turns how a program ended, and its output, into the attempt's outcome.
/// A failure's `error` is the end of stderr, or a sentence if it is empty.
fn program_outcome(ending: Ending, work: &Work, out: &[u8], err: &[u8]) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let failed = |sentence: String| {
        Outcome::Failed(if err.is_empty() {
            sentence
        } else {
            String::from_utf8_lossy(err).into_owned()
        })
    };
    match ending {
        Ending::Interrupted(Interrupt::Timeout) => failed(timeout_sentence(work)),
        Ending::Interrupted(why) => interrupted(why, work),
        Ending::Exited(Ok(status)) if status.success() => {
            Outcome::Succeeded(Some(result_json(out)))
        }
        Ending::Exited(Ok(status)) => failed(match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (_, Some(signal)) => format!("killed by signal {signal}"),
            _ => format!("{status}"),
        }),
        Ending::Exited(Err(e)) => Outcome::Failed(format!("cannot wait for the program: {e}")),
    }
}

/// Makes a task's `result` from a program's stdout: the JSON itself when
/// all of it is JSON, else a JSON string of the text.
fn result_json(out: &[u8]) -> Box<str> {
    match serde_json::from_slice::<&serde_json::value::RawValue>(out) {
        Ok(raw) => raw.get().into(),
        Err(_) => {
            let mut json = Vec::with_capacity(out.len() + 2);
            write_json_str(&mut json, &String::from_utf8_lossy(out));
            String::from_utf8_lossy(&json).into()
        }
    }
}

/// Makes bgtasks the child subreaper of its handlers: processes a handler
/// leaves behind are orphaned to bgtasks instead of to init, so that they
/// can be reaped rather than left zombies.
pub(crate) fn become_subreaper() {
    let this = rustix::process::Pid::from_raw(std::process::id() as i32);
    if let Err(e) = rustix::process::set_child_subreaper(this) {
        warn!("cannot become a child subreaper ({e}): a handler's orphans go to init");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_text_stays_on_one_log_line() {
        let cases = [
            ("exit status 3", "exit status 3"),
            (
                "tar: x: Cannot open\n\ntar: Error\n",
                "tar: x: Cannot open\\n\\ntar: Error\\n",
            ),
            (
                "a\r\nb\tc\u{1b}[31md\u{7f}",
                "a\\r\\nb\\tc\\u{1b}[31md\\u{7f}",
            ),
            ("x\u{2028}y\u{85}z", "x\\u{2028}y\\u{85}z"),
            ("ünïcödé \"quoted\" \\", "ünïcödé \"quoted\" \\"),
        ];
        for (text, line) in cases {
            assert_eq!(OneLine(text).to_string(), line, "{text:?}");
        }
    }

    /// Program output, what its `result` keeps, and the progress reported.
    const STDOUTS: &[(&str, &str, &[&str])] = &[
        ("", "", &[]),
        ("done\n", "done\n", &[]),
        ("::progress::1\n", "", &["1"]),
        (
            "a\n::progress::{\"done\": 1, \"of\": 3}\nb\n::progress::{\"done\": 2, \"of\": 3}\n{\"ok\": true}\n",
            "a\nb\n{\"ok\": true}\n",
            &["{\"done\": 1, \"of\": 3}", "{\"done\": 2, \"of\": 3}"],
        ),
        // Not JSON: a string. Surrounding whitespace and a CR are dropped.
        ("::progress:: half way \r\n", "", &["\"half way\""]),
        // Only a line that starts with the prefix is progress.
        (
            "x ::progress::1\n::progress:1\n:::progress::2\n",
            "x ::progress::1\n::progress:1\n:::progress::2\n",
            &[],
        ),
        ("::progress", "::progress", &[]),
        // A last line without its newline is a line.
        ("::progress::7", "", &["7"]),
        ("::progress::\n", "", &["\"\""]),
    ];

    #[test]
    fn stdout_is_split_into_progress_and_result_however_it_is_read() {
        for &(output, tail, progress) in STDOUTS {
            for size in 1..=output.len().max(1) {
                let mut lines = Stdout::default();
                let mut reported = Vec::new();
                let mut report = |v: &[u8]| reported.push(progress_json(v).into_string());
                for chunk in output.as_bytes().chunks(size) {
                    lines.feed(chunk, &mut report);
                }
                let got = lines.finish(&mut report);
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    tail,
                    "{output:?} in reads of {size}"
                );
                assert_eq!(reported, progress, "{output:?} in reads of {size}");
            }
        }
        // A progress line past 1 KiB is ignored, and holds no more than
        // that while it lasts; any other line holds nothing.
        let mut lines = Stdout::default();
        let mut reported = 0;
        lines.feed(b"::progress::", &mut |_| reported += 1);
        for _ in 0..10 * 1024 {
            lines.feed(&[b'x'; 1024], &mut |_| reported += 1);
            let held = match &lines.line {
                Line::Progress(value) => value.as_ref().map_or(0, Vec::len),
                other => panic!("{other:?}"),
            };
            assert!(held <= MAX_PROGRESS);
        }
        lines.feed(b"\n", &mut |_| reported += 1);
        let mut other = Stdout::default();
        for _ in 0..10 * 1024 {
            other.feed(&[b'y'; 1024], &mut |_| reported += 1);
            assert!(other.tail.len() <= OUTPUT_TAIL);
        }
        assert_eq!(reported, 0);
        assert!(lines.finish(&mut |_| {}).is_empty());
    }
}
