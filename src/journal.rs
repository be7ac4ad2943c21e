//! The journal of `--data-dir`: the writer thread, group commit, replay at
//! start and compaction — and the durability protocol, stated here once.
//!
//! With `--data-dir`, every task and every change of its state is a line
//! appended to `DIR/journal` (the line format is [`crate::record`]'s), and
//! replaying the lines at start rebuilds the store. A line is
//! `<crc32 in hex> <json>`: the checksum tells a record cut short by a
//! crash (the last line only, which is dropped with a warning) from damage
//! anywhere else, which stops start-up before anything on disk changes.
//! The directory is locked (`DIR/lock`) against a second server.
//!
//! The writer is a thread of its own, not a task: a write and an `fsync`
//! block, and would hold an executor thread for milliseconds. It owns the
//! file; everyone else reaches it through a channel (the store's
//! [`JournalSender`]) and learns how far it got from [`JournalProgress`],
//! without the store lock.
//!
//! # The durability protocol
//!
//! Its invariant: no answer shows a state that is not on disk. No `202`
//! is sent and no task starts before the task's record is on disk; a
//! request whose record a failed write held answers `503` and changes
//! nothing. Its steps, and who keeps each:
//!
//! 1. Every change is made under the store lock, and its record is sent to
//!    the writer thread from there
//!    ([`Outbox::send`](crate::outbox::Outbox::send)), numbered in order; so
//!    records are written in the order the changes happened. The last
//!    number given out is published as [`JournalProgress::appended`]. A
//!    cancel, a pause and a resume go the other way round, record first:
//!    under the lock only their record is sent
//!    ([`Outbox::send_cancel`](crate::outbox::Outbox::send_cancel),
//!    [`Outbox::send_pause`](crate::outbox::Outbox::send_pause)), and the
//!    change waits for step 2. So no client sees one before it is on disk,
//!    and a failed write leaves nothing to undo — a running task's work,
//!    above all, is interrupted only once its cancel is saved. A second
//!    cancel of the task joins the first.
//! 2. The writer thread ([`write_journal`], [`JournalWriter::commit`])
//!    appends whatever has gathered (up to [`MAX_BATCH`] records) and
//!    syncs once: concurrent submissions share one fsync (group commit).
//!    Then, under the lock
//!    ([`Store::settle`](crate::store::Store::settle)), if the write
//!    failed, it takes the batch's new tasks back from every index they
//!    entered, whatever their state, as if they had never been accepted,
//!    and drops its changes; if it was written, it makes its changes, in
//!    the order of their records. A cancel whose task changed since its
//!    record was made (it started, ended or came due) is written again
//!    first, so that the task's last record is the cancel's; one whose
//!    task ended meanwhile is not made (that end's record, later, has the
//!    last word). It tells each request whether its record made it, then
//!    publishes how far it got (`durable`: the last record;
//!    `durable_task`: the last new task) and fires `progress`.
//! 3. A worker starts a task only once `durable_task` has reached it
//!    ([`JournalProgress::wait_task`], which the worker awaits), so a
//!    taken-back task never ran.
//! 4. A connection writes its answers only once `durable` has reached the
//!    `appended` it saw when it made the last of them
//!    ([`Connection::settle`](crate::conn::Connection::settle)): one wait
//!    for all of a pipelining client's answers. It puts a `503` in place
//!    of a `202` whose task was taken back. A cancel, pause or resume is
//!    answered once step 2 has dealt with it
//!    ([`answer_change`](crate::routes::answer_change)): as if made at
//!    once, or `503` if it was not saved.
//! 5. Every wait of steps 3 and 4 races `grace_over`, so a writer that
//!    stops making progress cannot hold shutdown up; the answers then go
//!    unsent and the connection closes.
//!
//! The server's own changes — a start, an end, a retry, a delayed task
//! coming due — are made first and journaled after, and a failed record of
//! one is not undone: it is as if the server had crashed before writing it.
//! The task runs again after a restart (at-least-once, as after a crash),
//! and the next compaction writes what memory holds.
//!
//! Starts are not recorded. A task that was running when the process died
//! is, in the journal, still queued with its previous attempt number,
//! which is exactly what the contract asks for: queued again, the attempt
//! not counted. A handler's progress is written with the task's next
//! change of state, not on its own.
//!
//! # Compaction and failures
//!
//! The writer also compacts: once the file passes [`COMPACT_FACTOR`] times
//! what the retained tasks need, plus [`COMPACT_MIN`], it writes them
//! afresh to `journal.tmp`
//! ([`write_snapshot`]), syncs it,
//! renames it over the journal and syncs the directory. A crash
//! before the rename leaves the old journal (and a `journal.tmp` the next
//! start removes); after it, the new one is complete. A failed append is
//! cut back off the file so that later appends follow whole records; a
//! failed `fsync` makes the file untrusted, and every later batch fails
//! (`503` to what waits for it) until a restart, since nobody knows what
//! reached the disk.
//!
//! A task's `new` record is about 100 bytes and a change of state about
//! 130 (more with long labels and payloads); a retained task costs a
//! fresh journal about [`RECORD_ESTIMATE`]. So at the default
//! `--keep-finished 10000` the journal stays under about 20 MiB: four
//! times 3 MiB, plus 8 MiB.
//!
//! # Replay, copies and formats
//!
//! Replay ([`open_data_dir`], [`replay_lines`]) rebuilds the tasks in id
//! order ([`Replayed`]): finished ones keep their status; queued ones and
//! those that were running go back into their queues in id order; a
//! retry keeps its `retry_at` and a delayed task its `run_at` (what came
//! due meanwhile, [`crate::later`] runs at start). Ids keep the `--node` prefix they were made with. A line is believed
//! only once its checksum holds and [`Record::check`] finds its values
//! within the contract.
//!
//! Because the journal is only ever appended to, or replaced whole by a
//! rename, a copy of the directory taken while the server runs (`cp -a`,
//! `tar`) is a journal replay accepts, and holds every task whose `202`
//! was sent before the copy began (the `202` waited for the fsync): a
//! record the copy cuts in half is a torn last line, dropped with a
//! warning; a compaction during the copy renames a whole new journal over
//! the old one, and the copy has one or the other; the copied `lock` is a
//! plain file (the lock belongs to the running server's open file, not
//! the name), and a copied `journal.tmp` is removed at start.
//! `tests/backup.rs` holds the server to this under load. Changes to the
//! writer must keep it so: never rewrite the journal in place.
//!
//! The first line names the format ([`JOURNAL_VERSION`]); a journal
//! without it is version 0 and is read as it is. A newer version is
//! refused before anything on disk changes, with a line saying which
//! bgtasks to run, so that an older binary never misreads a newer journal
//! nor appends to it; a damaged line stops start-up the same way, naming
//! `file:line`. A bgtasks that changes the format must keep reading the
//! older versions. `bench_replay_of_a_million_records` in
//! `tests/journal.rs` prints how long a start takes to replay a large
//! journal.

use crate::{
    config::{Config, parse_node},
    record::{BadLine, Op, Record, checked_json, read_record, write_record},
    shared::Shared,
    store::Store,
    task::{State, Task},
    trigger::Trigger,
};
use async_channel::{Receiver, Sender};
use log::{error, info, warn};
use serde::Deserialize;
use smol::future;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The journal's file name inside `--data-dir`.
const JOURNAL: &str = "journal";

/// Where compaction writes the next journal before renaming it.
const JOURNAL_TMP: &str = "journal.tmp";

/// The file locked while a server uses the directory.
const LOCK: &str = "lock";

/// The journal format this server writes, named by the first record of
/// every journal it creates or compacts. A journal without that record is
/// version 0, the format before the record existed: the same records but
/// for it, so it is read as it is and gets the record at its next
/// compaction. A newer version is refused before anything changes, so
/// that a binary never misreads a format it does not know, nor appends
/// its own records to one. Version 2 added `after` and `retry_of` and the
/// state `waiting` in `new` records, and `scheduled` in `state` records
/// (a released task's): version 1 would drop the first two and call the
/// others damage.
const JOURNAL_VERSION: u64 = 2;

/// The most records written in one batch: enough to share an fsync among
/// thousands of submissions, small enough to bound one write.
const MAX_BATCH: usize = 4096;

/// The read buffer for replaying a journal: large reads, few system calls.
const REPLAY_BUFFER: usize = 1 << 20;

/// Compaction waits until the journal is this many times the size of a
/// fresh one, so that the work of rewriting it is spread over many writes.
const COMPACT_FACTOR: u64 = 4;

/// About how many bytes a retained task takes in a fresh journal (its
/// `new` and `state` records), to tell how large a compacted one would be.
const RECORD_ESTIMATE: u64 = 320;

/// What compaction adds to its threshold, so that it waits until the
/// journal is at least this large: rewriting a small file is not worth
/// pausing the writer for.
const COMPACT_MIN: u64 = 8 << 20;

/// The first record of a journal: the format of the rest.
#[derive(Debug, serde::Serialize, Deserialize)]
struct VersionRecord {
    /// Always [`Op::Version`].
    pub(crate) op: Op,
    /// The format's version: [`JOURNAL_VERSION`] when this server wrote it.
    pub(crate) version: u64,
}

/// Appends the record naming this server's journal format.
pub(crate) fn write_version(out: &mut Vec<u8>) {
    let version = VersionRecord {
        op: Op::Version,
        version: JOURNAL_VERSION,
    };
    write_record(out, &version);
}

/// Writes every retained task of `store` as `new` and `state` records,
/// after the version, the first id and the paused queues: the content of a
/// compacted journal. A task waiting with no attempt yet needs no `state`
/// record: its `new` record says it all.
pub(crate) fn write_snapshot(out: &mut Vec<u8>, store: &Store) {
    write_version(out);
    let first = Record {
        op: Some(Op::First),
        id: store.tasks().first_id(),
        ..Record::default()
    };
    write_record(out, &first);
    for queue in store.queues().iter().filter(|q| q.paused()) {
        write_record(out, &queue.pause_record());
    }
    for task in store.tasks().oldest_first() {
        write_record(out, &task.new_record(store.names(task)));
        let waits = matches!(
            task.state,
            State::Queued | State::Scheduled | State::Waiting
        );
        if !waits || task.attempt > 0 {
            write_record(out, &task.state_record());
        }
    }
}

/// Returns the version a journal line names, if it is a version record
/// whose checksum holds; its other members, in a future format, are not
/// this server's to judge.
fn read_version(line: &[u8]) -> Option<u64> {
    let record: VersionRecord = serde_json::from_slice(checked_json(line)?).ok()?;
    (record.op == Op::Version).then_some(record.version)
}

/// One record on its way to the writer thread.
#[derive(Debug)]
pub(crate) struct JournalEntry {
    /// Its place in the journal: one more than the record before it.
    pub(crate) seq: u64,
    /// The line to append.
    pub(crate) line: Vec<u8>,
    /// What waits for the line to be written, or to fail.
    pub(crate) awaiting: Awaiting,
}

/// What waits for a record to be written, or to fail (step 2 of the
/// protocol).
#[derive(Debug)]
pub(crate) enum Awaiting {
    /// Nothing: a change of a task made by the server itself (a start, an
    /// end, a retry, a delayed task coming due).
    Nothing,
    /// A new task, taken back if the write fails, and its submission,
    /// told whether it was saved.
    New {
        /// The task.
        id: u64,
        /// Told whether the record reached the disk.
        done: Sender<bool>,
    },
    /// A batch's new tasks (SPEC §15), in one entry of all their
    /// records: taken back together if the write fails, and their
    /// submission told whether they were saved.
    Batch {
        /// The tasks, in order.
        ids: Box<[u64]>,
        /// Told whether the records reached the disk.
        done: Sender<bool>,
    },
    /// A change a request asked for, made only once its record is on disk.
    Change(Change),
}

impl JournalEntry {
    /// Returns the id of the task the entry creates, if it is a `new` one,
    /// or of a batch's last (ids grow in journal order).
    pub(crate) fn created(&self) -> Option<u64> {
        match self.awaiting {
            Awaiting::New { id, .. } => Some(id),
            Awaiting::Batch { ref ids, .. } => ids.last().copied(),
            _ => None,
        }
    }
}

/// A change a request asks for that is made only once its record is on
/// disk, by the writer (step 2 of the protocol): so that no answer, and no
/// other client, sees it before it is there, and a failed write has
/// nothing to undo.
#[derive(Debug)]
pub(crate) enum Change {
    /// Cancel task `id` as of `at` (ms since the epoch); those waiting for
    /// it are in the store's [`Outbox`](crate::outbox::Outbox), by task id.
    Cancel {
        /// The task.
        id: u64,
        /// When it is cancelled, as its record says.
        at: u64,
    },
    /// Pause or resume queue `q`.
    Pause {
        /// The queue's index.
        q: usize,
        /// Whether it is paused afterwards.
        paused: bool,
        /// Told whether the change was made.
        done: Sender<bool>,
    },
}

/// The store's end of the journal: records go out from here, under the
/// store lock, so that their order is the order of the changes.
#[derive(Debug)]
pub(crate) struct JournalSender {
    /// To the writer thread.
    tx: Sender<JournalEntry>,
    /// The last sequence number given out.
    seq: u64,
    /// Where waiters learn how far the writer has got.
    progress: Arc<JournalProgress>,
}

impl JournalSender {
    /// Makes the sending end of a journal whose records go to `tx`.
    pub(crate) fn new(tx: Sender<JournalEntry>, progress: Arc<JournalProgress>) -> JournalSender {
        JournalSender {
            tx,
            seq: 0,
            progress,
        }
    }

    /// Sends a record to the writer thread, numbered after the last, with
    /// what waits for it, and publishes the number as `appended`.
    pub(crate) fn send(&mut self, line: Vec<u8>, awaiting: Awaiting) {
        self.seq += 1;
        let entry = JournalEntry {
            seq: self.seq,
            line,
            awaiting,
        };
        // Closed only at the very end of shutdown, when nothing more counts.
        let _ = self.tx.try_send(entry);
        self.progress.appended.store(self.seq, Ordering::Release);
    }

    /// Closes the channel: the writer writes what it has, then ends.
    pub(crate) fn close(&self) {
        self.tx.close();
    }
}

/// What the connections and workers share of the journal: how far it is
/// on disk, and a way to wait for more.
#[derive(Debug)]
pub(crate) struct JournalProgress {
    /// The highest sequence number whose batch has been written (or has
    /// failed and been taken back).
    durable: AtomicU64,
    /// The highest task id whose `new` record has been written (or taken
    /// back): ids grow in journal order, so every task up to it is settled.
    durable_task: AtomicU64,
    /// The highest sequence number given out: what a connection's answers
    /// wait for (step 4; workers wait for `durable_task`).
    pub(crate) appended: AtomicU64,
    /// Fired, and replaced, after every batch.
    pub(crate) progress: Mutex<Trigger>,
}

impl JournalProgress {
    /// Starts the progress of a journal whose tasks up to `last_task` are
    /// on disk already (replayed).
    pub(crate) fn new(last_task: u64) -> JournalProgress {
        JournalProgress {
            durable: AtomicU64::new(0),
            durable_task: AtomicU64::new(last_task),
            appended: AtomicU64::new(0),
            progress: Mutex::new(Trigger::new()),
        }
    }

    /// Waits until the batch holding record `seq` has been dealt with;
    /// `false` if `cut` fired first.
    pub(crate) async fn wait_durable(&self, seq: u64, cut: &Trigger) -> bool {
        self.wait(|j| j.durable.load(Ordering::Acquire) >= seq, cut)
            .await
    }

    /// Waits until the `new` record of task `id` has been dealt with;
    /// `false` if `cut` fired first.
    pub(crate) async fn wait_task(&self, id: u64, cut: &Trigger) -> bool {
        self.wait(|j| j.durable_task.load(Ordering::Acquire) >= id, cut)
            .await
    }

    /// Waits until `ready` holds, checked after every batch; `false` if
    /// `cut` fired first. Every wait for the disk is cut short by the end
    /// of shutdown's grace, so a writer that stopped making progress
    /// cannot hold the process up.
    pub(crate) async fn wait(
        &self,
        ready: impl Fn(&JournalProgress) -> bool,
        cut: &Trigger,
    ) -> bool {
        loop {
            if ready(self) {
                return true;
            }
            let progress = self
                .progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            // Checked again: the batch may have ended before the clone.
            if ready(self) {
                return true;
            }
            let cut = async {
                cut.wait().await;
                false
            };
            let batch = async {
                progress.wait().await;
                true
            };
            if !future::or(cut, batch).await {
                return false;
            }
        }
    }

    /// Records that every record up to `seq`, and every task up to `task`,
    /// has been dealt with.
    fn advance(&self, seq: u64, task: Option<u64>) {
        if let Some(task) = task {
            self.durable_task.store(task, Ordering::Release);
        }
        self.durable.store(seq, Ordering::Release);
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *progress, Trigger::new()).fire();
    }
}

/// The journal file, as the writer thread keeps it.
pub(crate) struct JournalWriter {
    /// The data directory.
    pub(crate) dir: PathBuf,
    /// The journal, opened for appending.
    pub(crate) file: std::fs::File,
    /// Its length up to the last record known to be whole.
    pub(crate) len: u64,
    /// The length at which compaction is considered next.
    next_check: u64,
    /// Set when the file can no longer be trusted to take appends (a
    /// failed sync, or a failed write that could not be cut back).
    pub(crate) broken: bool,
    /// Set while writes fail, so that the log says so once, not per batch.
    pub(crate) failing: bool,
}

impl JournalWriter {
    /// Appends a batch and syncs it. A failed write is cut back off the
    /// file, so later appends follow whole records.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the journal stopped taking writes after an earlier failure",
            ));
        }
        if let Err(e) = self.file.write_all(bytes) {
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        // After a failed fsync nobody knows what reached the disk (the
        // kernel may have dropped the dirty pages): stop trusting the file.
        if let Err(e) = self.file.sync_data() {
            self.broken = true;
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Compacts the journal when it has grown past its threshold.
    fn maybe_compact(&mut self, shared: &Shared) {
        if self.len < self.next_check || self.broken {
            return;
        }
        let mut snapshot = Vec::new();
        {
            let store = shared.store();
            let estimate = store.tasks().retained() as u64 * RECORD_ESTIMATE;
            let threshold = COMPACT_FACTOR * estimate + COMPACT_MIN;
            if self.len < threshold {
                self.next_check = threshold;
                return;
            }
            write_snapshot(&mut snapshot, &store);
        }
        let before = self.len;
        match self.replace_with(&snapshot) {
            Ok(()) => {
                self.len = snapshot.len() as u64;
                self.next_check = COMPACT_FACTOR * self.len + COMPACT_MIN;
                info!("journal compacted: {before} bytes -> {} bytes", self.len);
            }
            Err(e) => {
                warn!("journal compaction failed, will retry later: {e}");
                let _ = std::fs::remove_file(self.dir.join(JOURNAL_TMP));
                self.next_check = self.len + COMPACT_MIN;
            }
        }
    }

    /// Replaces the journal with `content`: write a new file, sync it,
    /// rename it over the old one, sync the directory, reopen.
    fn replace_with(&mut self, content: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(JOURNAL_TMP);
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(JOURNAL))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.file = open_journal(&self.dir)?;
        Ok(())
    }

    /// Step 2 of the durability protocol: appends a batch and syncs it
    /// once; if that fails, takes back the batch's new tasks; tells each
    /// submission whether its record made it; then publishes how far the
    /// journal is. Empties `batch`.
    fn commit(
        &mut self,
        batch: &mut Vec<JournalEntry>,
        shared: &Shared,
        progress: &JournalProgress,
    ) {
        let mut bytes = Vec::with_capacity(batch.iter().map(|e| e.line.len()).sum());
        for entry in batch.iter() {
            bytes.extend_from_slice(&entry.line);
        }
        let written = self.append(&bytes);
        self.report(&written);
        let written = written.is_ok();
        // The store is locked only for what a record's outcome changes: a
        // task to take back, a change to make.
        let settles = |e: &JournalEntry| match e.awaiting {
            Awaiting::New { .. } | Awaiting::Batch { .. } => !written,
            Awaiting::Change(_) => true,
            Awaiting::Nothing => false,
        };
        if batch.iter().any(settles) {
            shared.store().settle(batch, written, &shared.queues);
        }
        let last = batch.last().map_or(0, |e| e.seq);
        let last_task = batch.iter().filter_map(JournalEntry::created).max();
        // The outcomes go out before the progress: whoever wakes on it
        // finds its outcome waiting.
        for entry in batch.drain(..) {
            if let Awaiting::New { done, .. } | Awaiting::Batch { done, .. } = entry.awaiting {
                // The submitter may have gone; then nobody needs to know.
                let _ = done.try_send(written);
            }
        }
        progress.advance(last, last_task);
    }

    /// Logs when writes start failing and when they work again, once each.
    pub(crate) fn report(&mut self, written: &io::Result<()>) {
        let path = self.dir.join(JOURNAL);
        match written {
            Ok(()) if self.failing => {
                info!("journal: writing to {} again", path.display());
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                error!(
                    "journal: cannot write {}: {e}; requests that change something get 503 until it can",
                    path.display()
                );
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Opens the journal for appending, creating it if need be.
fn open_journal(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(JOURNAL))
}

/// Runs the writer thread: writes batches until the channel closes at
/// shutdown.
fn write_journal(shared: Arc<Shared>, rx: Receiver<JournalEntry>, mut writer: JournalWriter) {
    let Some(progress) = &shared.journal_progress else {
        return;
    };
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv_blocking() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        writer.commit(&mut batch, &shared, progress);
        writer.maybe_compact(&shared);
    }
}

/// What replaying a journal rebuilt.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Every task, in id order.
    pub(crate) tasks: Vec<Task>,
    /// Queues paused or resumed, in the order it happened.
    pub(crate) paused: Vec<(Box<str>, bool)>,
    /// The id prefix from each id on, as the tasks were made: the store's
    /// table of [`Table::task_id`](crate::table::Table::task_id).
    pub(crate) nodes: Vec<(u64, &'static str)>,
    /// The first id of the journal's history.
    pub(crate) first_id: u64,
    /// How many bytes of the file are whole records.
    good_len: u64,
    /// Whether a torn last record was dropped.
    torn: bool,
}

/// Why a journal could not be replayed.
#[derive(Debug)]
enum ReplayError {
    /// Reading the file failed.
    Read(io::Error),
    /// A line other than the last one is bad: its number and why.
    Damage(usize, &'static str),
    /// The first line names a format newer than [`JOURNAL_VERSION`].
    Newer(u64),
}

/// Reads the journal at `path`; the error names the file (and the line).
fn replay(path: &Path, config: &Config) -> Result<Replayed, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let reader = io::BufReader::with_capacity(REPLAY_BUFFER, file);
    replay_lines(reader, config).map_err(|e| match e {
        ReplayError::Read(e) => format!("cannot read {}: {e}", path.display()),
        ReplayError::Damage(line, why) => {
            format!("{}:{line}: the journal is damaged: {why}", path.display())
        }
        ReplayError::Newer(version) => format!(
            "{}: the journal is format version {version}, and this bgtasks reads \
             versions up to {JOURNAL_VERSION}: run the bgtasks that wrote it",
            path.display()
        ),
    })
}

/// Replays journal lines. A first line naming the format is checked, a
/// newer one refused; without it the journal is version 0. A last line
/// that is cut short or fails its checksum is a write the crash
/// interrupted: it is dropped. A bad line anywhere else, or a line whose
/// checksum holds but whose values the contract forbids, is damage.
fn replay_lines(mut reader: impl io::BufRead, config: &Config) -> Result<Replayed, ReplayError> {
    let mut replayed = Replayed::default();
    let mut line = Vec::new();
    let mut torn_line = None;
    for number in 1.. {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(ReplayError::Read)?
            == 0
        {
            break;
        }
        if let Some(torn) = torn_line {
            return Err(ReplayError::Damage(torn, "a record fails its checksum"));
        }
        let Some(text) = line.strip_suffix(b"\n") else {
            // The last line, cut short before its newline.
            torn_line = Some(number);
            continue;
        };
        if number == 1
            && let Some(version) = read_version(text)
        {
            if version > JOURNAL_VERSION {
                return Err(ReplayError::Newer(version));
            }
            replayed.good_len += line.len() as u64;
            continue;
        }
        match read_record(text) {
            Ok(record) => {
                replayed
                    .apply(&record, config)
                    .map_err(|why| ReplayError::Damage(number, why))?;
                replayed.good_len += line.len() as u64;
            }
            Err(BadLine::Checksum) => torn_line = Some(number),
            Err(BadLine::Invalid(why)) => return Err(ReplayError::Damage(number, why)),
        }
    }
    replayed.torn = torn_line.is_some();
    Ok(replayed)
}

impl Replayed {
    /// Returns the last id of the journal's history: every task up to it
    /// is on disk.
    pub(crate) fn last_id(&self) -> u64 {
        let last = self.tasks.last().map_or(0, |t| t.id);
        last.max(self.first_id)
    }

    /// Applies one record; the error says why the record is impossible.
    pub(crate) fn apply(&mut self, record: &Record, config: &Config) -> Result<(), &'static str> {
        let at = self.tasks.binary_search_by_key(&record.id, |t| t.id);
        match (record.op, at) {
            (Some(Op::First), _) => self.first_id = record.id,
            (Some(Op::Version), _) => return Err("a version record is not the first line"),
            (Some(Op::Pause), _) => {
                let queue = record.queue.as_deref().unwrap_or_default();
                self.paused
                    .push((queue.into(), record.paused == Some(true)));
            }
            // A record written again after compaction: already here.
            (Some(Op::New), Ok(_)) => {}
            (Some(Op::New), Err(i)) => {
                // A prefix changes only across restarts: it is leaked
                // once per change, not once per task.
                let node = record.node.as_deref().unwrap_or_default();
                let last = self.nodes.last().map_or("", |&(_, last)| last);
                if last.strip_suffix('_').unwrap_or(last) != node {
                    let node = match node {
                        "" => "",
                        node => parse_node(node).map_err(|_| "the node name is malformed")?,
                    };
                    self.nodes.push((record.id, node));
                }
                self.tasks.insert(i, Task::from_record(record, config));
            }
            (Some(Op::State), Ok(i)) => self.tasks[i].apply(record)?,
            // The state of a task compacted away after it was evicted.
            (Some(Op::State), Err(_)) | (None, _) => {}
        }
        Ok(())
    }
}

/// What the journal writer thread needs: the records' channel, the file,
/// and the directory lock it keeps held.
pub(crate) type WriterParts = (Receiver<JournalEntry>, JournalWriter, std::fs::File);

/// Starts the journal writer thread; an error fails start-up.
pub(crate) fn spawn_journal_writer(
    shared: &Arc<Shared>,
    (rx, writer, lock): WriterParts,
) -> Result<(std::thread::JoinHandle<()>, std::fs::File), String> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || write_journal(shared, rx, writer))
        .map(|thread| (thread, lock))
        .map_err(|e| format!("cannot start the journal writer: {e}"))
}

/// An opened data directory: locked, its journal replayed and ready.
pub(crate) struct DataDir {
    /// Held, locked, for as long as the server runs.
    pub(crate) lock: std::fs::File,
    /// The journal, ready for the writer thread.
    pub(crate) writer: JournalWriter,
    /// What the journal held.
    pub(crate) replayed: Replayed,
}

/// Opens `--data-dir`: creates it if need be, locks it against a second
/// server, and replays its journal. Damage stops start-up before anything
/// on disk is changed; a torn last record is cut off with a warning.
pub(crate) fn open_data_dir(dir: &Path, config: &Config) -> Result<DataDir, String> {
    let fail = |e: io::Error| format!("cannot use --data-dir {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .map_err(fail)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!(
                "--data-dir {} is in use by another bgtasks",
                dir.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
    }
    let path = dir.join(JOURNAL);
    let started = Instant::now();
    let replayed = replay(&path, config)?;
    // From here on the directory may change.
    if std::fs::remove_file(dir.join(JOURNAL_TMP)).is_ok() {
        warn!("removed {JOURNAL_TMP}: a compaction the last run did not finish");
    }
    let mut file = open_journal(dir).map_err(fail)?;
    if replayed.torn {
        warn!(
            "{}: dropped a torn last record (a write cut short by a crash)",
            path.display()
        );
        file.set_len(replayed.good_len)
            .and_then(|()| file.sync_all())
            .map_err(fail)?;
    }
    let mut len = replayed.good_len;
    if len == 0 {
        // A new journal (or one whose only record was torn) starts by
        // naming its format.
        let mut line = Vec::new();
        write_version(&mut line);
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(fail)?;
        len = line.len() as u64;
    }
    // A journal just created must have its directory entry on disk too.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    info!(
        "replayed {} tasks from {} ({} bytes) in {} ms",
        replayed.tasks.len(),
        path.display(),
        replayed.good_len,
        started.elapsed().as_millis()
    );
    Ok(DataDir {
        lock,
        writer: JournalWriter {
            dir: dir.to_path_buf(),
            file,
            len,
            // Checked after the first batch, against the retained tasks:
            // a journal replayed after a crash may be due for it already.
            next_check: 0,
            broken: false,
            failing: false,
        },
        replayed,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::config;
    use crate::task::tests::new_task;
    use crate::{queue::*, record::*, shared::*, store::*, task::*, time::*, trigger::*};
    use std::path::PathBuf;
    use std::sync::Arc;

    /// Makes journal lines, each record with its checksum.
    fn journal_lines(records: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            out.extend_from_slice(
                format!("{:08x} {record}\n", crc32(record.as_bytes())).as_bytes(),
            );
        }
        out
    }

    /// A task with every member set, as a worker leaves it after a failed
    /// attempt with a retry due.
    pub(crate) fn task_with_everything() -> Task {
        let mut task = Task::from_new(
            1_796_000_000_000_000,
            NewTask {
                label: Some(Text::new("a label longer than twenty-two bytes")),
                work_duration: Some(Text::new("1m30s")),
                kind: Some(Arc::from("thumb")),
                payload: Some(r#"{"dir": "/srv", "n": [1, 2]}"#.into()),
                timeout: Some(Text::new("10s")),
                max_attempts: 3,
                key: Some(IdempotencyKey {
                    text: "key-1".into(),
                    fingerprint: 42,
                }),
                queue: 1,
                run_at: 1_796_000_000_050,
                schedule: Some(0),
                after: Some(Box::new([IdRef {
                    num: 1_795_000_000_000_000,
                    node: Text::new(""),
                }])),
                retry_of: Some(1_794_000_000_000_000),
            },
            State::Queued,
        );
        task.attempt = 2;
        task.started_at = 1_796_000_000_100;
        let extra = task.extra_mut();
        extra.retry_at = 1_796_000_004_100;
        extra.error = Some("exit status 3\n\"quoted\"".into());
        extra.progress = Some(r#"{"done": 2, "of": 3}"#.into());
        task
    }

    #[test]
    fn records_round_trip_through_journal_lines() {
        let config = config(&[
            "--queue",
            "thumbs=1",
            "--schedule",
            "nightly=@daily {\"work_duration\": \"1s\"}",
        ]);
        let names = |task: &Task| Names {
            id: TaskId {
                node: "b_",
                num: task.id,
            },
            nodes: &[(0, "b_")],
            queue: "thumbs",
            schedule: Some("nightly"),
        };
        let task = task_with_everything();
        let mut scheduled = task_with_everything();
        (scheduled.id, scheduled.state, scheduled.attempt) =
            (scheduled.id + 1, State::Scheduled, 0);
        let mut paused = QueueState::new(&config.queues[1]);
        paused.restore_paused(true);
        let mut lines = Vec::new();
        write_record(&mut lines, &task.new_record(names(&task)));
        write_record(&mut lines, &task.state_record());
        write_record(&mut lines, &scheduled.new_record(names(&scheduled)));
        write_record(&mut lines, &paused.pause_record());
        let replayed = replay_lines(&lines[..], &config).unwrap();
        let [back, back_scheduled] = &replayed.tasks[..] else {
            panic!("{:?}", replayed.tasks)
        };
        assert_eq!(
            (back_scheduled.state, back_scheduled.queue),
            (State::Scheduled, 1)
        );
        assert_eq!(replayed.paused, [("thumbs".into(), true)]);
        assert_eq!(replayed.nodes, [(task.id, "b_")]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        task.write_json(&mut a, names(&task));
        back.write_json(&mut b, names(back));
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        assert_eq!(
            back.extra
                .as_ref()
                .and_then(|e| e.key.as_ref())
                .map(|k| (&*k.text, k.fingerprint)),
            Some(("key-1", 42))
        );
        assert_eq!(replayed.good_len, lines.len() as u64);
        // A running task is written as the journal sees it: queued, its
        // attempt not counted.
        let mut running = task_with_everything();
        running.state = State::Running;
        let record = running.state_record();
        assert_eq!(
            (record.state.as_deref(), record.attempt),
            (Some("queued"), Some(1))
        );
    }

    /// A server's shared state with a journal in a fresh directory, as
    /// `launch` builds it, and what its writer thread would get.
    fn journaled(test: &str) -> (Arc<Shared>, WriterParts, PathBuf) {
        let dir = std::env::temp_dir().join(format!("bgtasks-unit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = config(&[]);
        let data = open_data_dir(&dir, &config).unwrap();
        let (shared, _retries, writer) = build_shared(config, Some(data));
        (shared, writer.unwrap(), dir)
    }

    /// Takes the records waiting for the writer.
    fn waiting_records(rx: &Receiver<JournalEntry>) -> Vec<JournalEntry> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_cancel_whose_task_changed_meanwhile_is_written_again_before_it_is_made() {
        let (shared, (rx, mut writer, _lock), dir) = journaled("stale-cancel");
        let progress = shared.journal_progress.clone().unwrap();
        let Admission::Created(TaskId { num: id, .. }, ..) =
            shared.store().admit(new_task("c", 0), &shared.queues)
        else {
            panic!("admitted")
        };
        writer.commit(&mut waiting_records(&rx), &shared, &progress);
        // Two cancels: the second joins the first, which writes one record.
        let Ok(Cancel::Saving(first)) = shared.store().cancel(id, &shared.queues) else {
            panic!("a cancel waits for its record")
        };
        let Ok(Cancel::Saving(second)) = shared.store().cancel(id, &shared.queues) else {
            panic!("a cancel waits for its record")
        };
        // The task starts before the record is written: the record says
        // attempt 0, no longer what the cancel would leave.
        assert_eq!(shared.queues[0].jobs_rx.try_recv(), Ok(id));
        let begun = shared.store().begin_attempt(id, 0, &shared.queues, false);
        assert!(matches!(begun, Begin::Work(_)), "{begun:?}");
        let mut batch = waiting_records(&rx);
        assert_eq!(batch.len(), 1);
        writer.commit(&mut batch, &shared, &progress);
        assert_eq!(first.try_recv(), Err(async_channel::TryRecvError::Empty));
        assert_eq!(
            shared.store().tasks().get(id).unwrap().state,
            State::Running
        );
        // Written again, it is made, and both requests are told.
        let mut batch = waiting_records(&rx);
        assert_eq!(batch.len(), 1);
        writer.commit(&mut batch, &shared, &progress);
        assert_eq!((first.try_recv(), second.try_recv()), (Ok(true), Ok(true)));
        let store = shared.store();
        let task = store.tasks().get(id).unwrap();
        assert_eq!((task.state, task.attempt), (State::Cancelled, 1));
        let replayed = replay(&dir.join(JOURNAL), &shared.config).unwrap();
        let on_disk = &replayed.tasks[0];
        assert_eq!(
            (on_disk.state, on_disk.attempt, on_disk.finished_at),
            (State::Cancelled, 1, task.finished_at)
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durability_steps_1_to_3_hold() {
        let (shared, (rx, mut writer, _lock), dir) = journaled("steps");
        let progress = shared.journal_progress.clone().unwrap();
        // Step 1: records leave the store in the order of the changes,
        // numbered, and `appended` says how far the numbering got.
        let Admission::Created(TaskId { num: id, .. }, _, Some(saved)) =
            shared.store().admit(new_task("p", 0), &shared.queues)
        else {
            panic!("admitted")
        };
        // A cancel is journaled first, and made once its record is on disk.
        let Ok(Cancel::Saving(cancel_saved)) = shared.store().cancel(id, &shared.queues) else {
            panic!("a cancel waits for its record")
        };
        assert_eq!(shared.store().tasks().get(id).unwrap().state, State::Queued);
        let mut batch: Vec<JournalEntry> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((batch[0].created(), batch[1].created()), (Some(id), None));
        assert_eq!(progress.appended.load(Ordering::Acquire), 2);
        // Step 3, before step 2: a worker may not start the task yet.
        let never = Trigger::new();
        never.fire();
        assert!(!async_io::block_on(progress.wait_task(id, &never)));
        // Step 2: one write, one sync, the submission told, progress out.
        writer.commit(&mut batch, &shared, &progress);
        assert!(batch.is_empty());
        assert_eq!(saved.try_recv(), Ok(true));
        assert_eq!(cancel_saved.try_recv(), Ok(true));
        assert_eq!(
            shared.store().tasks().get(id).unwrap().state,
            State::Cancelled
        );
        assert_eq!(progress.durable.load(Ordering::Acquire), 2);
        let replayed = replay(&dir.join(JOURNAL), &shared.config).unwrap();
        assert_eq!(replayed.tasks.len(), 1);
        assert_eq!(replayed.tasks[0].state, State::Cancelled);
        // Step 3: now it may, and no cut is needed for it.
        assert!(async_io::block_on(progress.wait_task(id, &Trigger::new())));
        assert!(async_io::block_on(
            progress.wait_durable(2, &Trigger::new())
        ));
        // Step 2 when the disk fails: new tasks are taken back as if they
        // had never been accepted, whatever their state, changes are not
        // made, the requests learn it, and waiters are released all the
        // same.
        writer.broken = true;
        let Admission::Created(TaskId { num: lost, .. }, _, Some(saved)) =
            shared.store().admit(new_task("p", 0), &shared.queues)
        else {
            panic!("admitted")
        };
        let later = new_task("later", now_millis() + 3_600_000);
        let Admission::Created(TaskId { num: late, .. }, State::Scheduled, Some(late_saved)) =
            shared.store().admit(later, &shared.queues)
        else {
            panic!("admitted")
        };
        let pause_saved = shared.store().journal_pause(0, true);
        let mut batch: Vec<JournalEntry> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        writer.commit(&mut batch, &shared, &progress);
        assert_eq!(saved.try_recv(), Ok(false));
        assert_eq!(late_saved.try_recv(), Ok(false));
        assert_eq!(pause_saved.try_recv(), Ok(false));
        let store = shared.store();
        assert!(store.tasks().get(lost).is_none() && store.tasks().get(late).is_none());
        assert_eq!(store.counters().accepted, 1);
        assert_eq!(
            (
                store.tasks().count(State::Queued),
                store.tasks().count(State::Scheduled)
            ),
            (0, 0)
        );
        // The cancelled task counts in its queue until a worker reaches
        // it; the one taken back no longer does, and the worker that takes
        // its id from the channel skips it too.
        assert_eq!(store.queues()[0].depth(), 1);
        assert!(!store.queues()[0].paused());
        drop(store);
        for skipped in [id, lost] {
            assert_eq!(shared.queues[0].jobs_rx.try_recv(), Ok(skipped));
            let begun = shared
                .store()
                .begin_attempt(skipped, 0, &shared.queues, false);
            assert!(matches!(begun, Begin::Skip), "{begun:?}");
        }
        assert_eq!(shared.store().queues()[0].depth(), 0);
        assert!(async_io::block_on(
            progress.wait_task(lost, &Trigger::new())
        ));
        // Step 5: a wait the disk will never end is cut by the trigger.
        let cut = Trigger::new();
        cut.fire();
        assert!(!async_io::block_on(progress.wait_durable(99, &cut)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Journal records for the replay table.
    const NEW_A: &str =
        r#"{"op":"new","id":10,"task_id":"a","work_duration":"0s","max_attempts":2}"#;
    const NEW_B: &str = r#"{"op":"new","id":11,"work_duration":"0s","max_attempts":1}"#;
    const DONE_A: &str =
        r#"{"op":"state","id":10,"state":"succeeded","attempt":2,"finished_at":5}"#;

    #[test]
    fn replay_drops_a_torn_tail_and_refuses_damage() {
        type Case<'a> = (
            &'a [&'a str],
            &'a [u8],
            Result<(usize, bool), (usize, &'a str)>,
        );
        let cases: &[Case] = &[
            (&[], b"", Ok((0, false))),
            (&[NEW_A, NEW_B, DONE_A], b"", Ok((2, false))),
            // A write cut short: no newline, or a failing checksum, last.
            (&[NEW_A], b"0badc0de {\"op\":\"new\"", Ok((1, false))),
            (&[NEW_A], b"00000000 {}\n", Ok((1, false))),
            (&[NEW_A], b"garbage", Ok((1, false))),
            // Compaction leftovers: the first record and a task written
            // again, and the state of a task compacted away.
            (
                &[
                    NEW_A,
                    r#"{"op":"first","id":3}"#,
                    NEW_A,
                    r#"{"op":"state","id":7,"state":"failed","attempt":1}"#,
                ],
                b"",
                Ok((1, false)),
            ),
            // Values the contract forbids, though the checksum holds.
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"failed","attempt":3}"#,
                ],
                b"",
                Err((2, "attempt is past max_attempts")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"queued","attempt":2}"#,
                ],
                b"",
                Err((2, "attempt is past max_attempts")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"failed","attempt":255}"#,
                ],
                b"",
                Err((2, "attempt is past max_attempts")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"done","attempt":1}"#,
                ],
                b"",
                Err((2, "the state is unknown")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"running","attempt":1}"#,
                ],
                b"",
                Err((2, "a running or waiting state is never written")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"succeeded","result":"{"}"#,
                ],
                b"",
                Err((2, "the result is not JSON")),
            ),
            (
                &[
                    NEW_A,
                    r#"{"op":"state","id":10,"state":"waiting","attempt":0}"#,
                ],
                b"",
                Err((2, "a running or waiting state is never written")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"state":"queued"}"#],
                b"",
                Err((1, "a new task is queued, scheduled or waiting")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"state":"waiting"}"#],
                b"",
                Err((1, "a waiting task has dependencies")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"after":[]}"#],
                b"",
                Err((1, "after names 1 to 32 tasks")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"queue":"Bad Name"}"#],
                b"",
                Err((1, "the queue name is malformed")),
            ),
            (
                &[r#"{"op":"pause","id":0,"queue":"slow"}"#],
                b"",
                Err((1, "a pause record names a queue and whether it is paused")),
            ),
            (
                &[r#"{"op":"pause","id":0,"paused":true}"#],
                b"",
                Err((1, "a pause record names a queue and whether it is paused")),
            ),
            // A scheduled task, a task of a queue no longer configured, and
            // a pause record are all fine.
            (
                &[
                    r#"{"op":"new","id":12,"max_attempts":1,"state":"scheduled","run_at":9}"#,
                    r#"{"op":"new","id":13,"max_attempts":1,"queue":"gone"}"#,
                    r#"{"op":"pause","id":0,"queue":"gone","paused":true}"#,
                ],
                b"",
                Ok((2, false)),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":0}"#],
                b"",
                Err((1, "max_attempts is out of range")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":101}"#],
                b"",
                Err((1, "max_attempts is out of range")),
            ),
            (
                &[r#"{"op":"new","id":10}"#],
                b"",
                Err((1, "max_attempts is out of range")),
            ),
            (
                &[r#"{"op":"new","id":10,"max_attempts":1,"payload":"x y"}"#],
                b"",
                Err((1, "the payload is not JSON")),
            ),
            (
                &[r#"{"op":"delete","id":10}"#],
                b"",
                Err((1, "the record is not one the server writes")),
            ),
            (&[r#"{"id":10}"#], b"", Err((1, "the record has no op"))),
            // The format's version, first; without it the journal is
            // version 0, the same records.
            (
                &[
                    r#"{"op":"version","version":1}"#,
                    r#"{"op":"new","id":12,"max_attempts":1}"#,
                ],
                b"",
                Ok((1, false)),
            ),
            (
                &[
                    r#"{"op":"version","version":2}"#,
                    r#"{"op":"new","id":12,"max_attempts":1,"state":"waiting","after":[9]}"#,
                ],
                b"",
                Ok((1, false)),
            ),
            (
                &[
                    r#"{"op":"version","version":0}"#,
                    r#"{"op":"new","id":12,"max_attempts":1}"#,
                ],
                b"",
                Ok((1, false)),
            ),
            (
                &[
                    r#"{"op":"new","id":12,"max_attempts":1}"#,
                    r#"{"op":"version","version":1}"#,
                ],
                b"",
                Err((2, "the record is not one the server writes")),
            ),
            (
                &[
                    r#"{"op":"new","id":12,"max_attempts":1}"#,
                    r#"{"op":"version","id":0,"version":1}"#,
                ],
                b"",
                Err((2, "a version record is not the first line")),
            ),
            (
                &[r#"{"op":"new","id":-1,"max_attempts":1}"#],
                b"",
                Err((1, "the record is not one the server writes")),
            ),
        ];
        for &(records, tail, expected) in cases {
            let mut lines = journal_lines(records);
            lines.extend_from_slice(tail);
            let got = match replay_lines(&lines[..], &config(&[])) {
                Ok(r) => Ok((r.tasks.len(), r.good_len == lines.len() as u64)),
                Err(ReplayError::Damage(line, why)) => Err((line, why)),
                Err(ReplayError::Read(e)) => panic!("{e}"),
                Err(ReplayError::Newer(v)) => panic!("{records:?}: version {v}"),
            };
            // A torn tail is dropped, so the good length stops before it.
            let expected = expected.map(|(n, _)| (n, tail.is_empty()));
            assert_eq!(
                got,
                expected,
                "{records:?} + {:?}",
                String::from_utf8_lossy(tail)
            );
        }
        // Damage is damage anywhere but last: a checksum failing mid-file.
        let mut lines = journal_lines(&[NEW_A]);
        lines.extend_from_slice(b"00000000 {}\n");
        lines.extend_from_slice(&journal_lines(&[NEW_B]));
        assert!(matches!(
            replay_lines(&lines[..], &config(&[])),
            Err(ReplayError::Damage(2, "a record fails its checksum"))
        ));
    }

    #[test]
    fn a_journal_of_a_newer_format_is_refused_whatever_follows() {
        let newer = r#"{"op":"version","version":3,"written_by":"a later bgtasks"}"#;
        for rest in [&[][..], &[r#"{"op":"merge","into":7}"#, "not json"][..]] {
            let lines = journal_lines(&[&[newer][..], rest].concat());
            assert!(matches!(
                replay_lines(&lines[..], &config(&[])),
                Err(ReplayError::Newer(3))
            ));
        }
        // What this server writes, it reads: a compacted journal starts
        // with the version, and a journal of only that is empty.
        let mut line = Vec::new();
        write_version(&mut line);
        assert_eq!(read_version(line.trim_ascii_end()), Some(JOURNAL_VERSION));
        let replayed = replay_lines(&line[..], &config(&[])).unwrap();
        assert_eq!(
            (replayed.tasks.len(), replayed.good_len),
            (0, line.len() as u64)
        );
    }
}
