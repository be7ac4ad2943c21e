//! The store's outbox: the records it sends the journal's writer, under its
//! lock, and the cancels that wait for theirs.
//!
//! With `--data-dir` every change is journaled in the order it happens,
//! so the records leave from here while the store lock is held. Most
//! changes are made first and their record follows; a client's cancel, a
//! pause and a resume are record first (step 1 of [the durability
//! protocol](crate::journal#the-durability-protocol)): only the record
//! goes out, and the store makes the change once the writer says it is on
//! disk ([`Store::settle`](crate::store::Store::settle)). A cancel on its
//! way is kept here, with every request waiting for it, so that a second
//! cancel joins the first and a task that changes meanwhile gets its
//! record written again. Without a journal the outbox sends nothing, and
//! changes are made at once.

use crate::{
    journal::{Awaiting, Change, JournalSender},
    record::{Record, write_record},
    task::{State, Task},
    time::now_millis,
};
use async_channel::{Receiver, Sender};
use std::collections::HashMap;

/// A cancel whose record is on its way to disk.
#[derive(Debug)]
struct Cancelling {
    /// Set when the task changes meanwhile (it starts, ends, comes due):
    /// the record no longer says what the cancel leaves, so it is written
    /// again, and the cancel waits for that one.
    stale: bool,
    /// The requests waiting for it (a second cancel joins the first),
    /// told whether it was saved.
    waiters: Vec<Sender<bool>>,
}

/// What a cancel's record, written or failed, leaves the store to do.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Make the cancel, then tell these requests it was saved.
    Make(Vec<Sender<bool>>),
    /// Make nothing, and tell these requests whether it was saved.
    Leave(Vec<Sender<bool>>),
    /// Nothing yet: the record is written again, and the cancel waits.
    Rewritten,
}

/// The records on their way to the journal, and what waits for them.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Where changes are journaled, with `--data-dir`.
    journal: Option<JournalSender>,
    /// The cancels whose record is on its way to disk, by task id: they
    /// are made once it is there.
    cancelling: HashMap<u64, Cancelling>,
}

impl Outbox {
    /// Starts journaling changes to `journal` (once, at start-up, after
    /// the replayed tasks are restored).
    pub(crate) fn attach(&mut self, journal: JournalSender) {
        self.journal = Some(journal);
    }

    /// Tells whether changes are journaled (`--data-dir`).
    pub(crate) fn is_journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Closes the journal's channel: the writer thread writes what it has
    /// and ends.
    pub(crate) fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.close();
        }
    }

    /// Sends a record to the journal, if there is one, with what waits for
    /// it.
    pub(crate) fn send(&mut self, line: Vec<u8>, awaiting: Awaiting) {
        if let Some(journal) = &mut self.journal {
            journal.send(line, awaiting);
        }
    }

    /// Journals `task`'s current state.
    pub(crate) fn send_state(&mut self, task: &Task) {
        if self.journal.is_none() {
            return;
        }
        let mut line = Vec::with_capacity(160);
        write_record(&mut line, &task.state_record());
        self.send(line, Awaiting::Nothing);
    }

    /// Journals that queue `q`, whose record is `record`, is to be paused
    /// or resumed; the change is made once the record is on disk, and the
    /// receiver tells whether it was.
    pub(crate) fn send_pause(
        &mut self,
        mut record: Record<'_>,
        q: usize,
        paused: bool,
    ) -> Receiver<bool> {
        record.paused = Some(paused);
        let mut line = Vec::with_capacity(64);
        write_record(&mut line, &record);
        let (done, saved) = async_channel::bounded(1);
        self.send(line, Awaiting::Change(Change::Pause { q, paused, done }));
        saved
    }

    /// Journals that `task` is to be cancelled; the cancel is made once
    /// the record is on disk, and the receiver tells whether it was. A
    /// cancel already on its way is joined, not written twice.
    pub(crate) fn send_cancel(&mut self, task: &Task) -> Receiver<bool> {
        let (done, saved) = async_channel::bounded(1);
        if let Some(cancelling) = self.cancelling.get_mut(&task.id) {
            cancelling.waiters.push(done);
            return saved;
        }
        self.write_cancel(task, vec![done]);
        saved
    }

    /// Writes `task`'s record as a cancel made now would leave it, for the
    /// requests `waiters`.
    fn write_cancel(&mut self, task: &Task, waiters: Vec<Sender<bool>>) {
        let at = now_millis();
        let mut record = task.state_record();
        // A running task's record would say `queued`, its attempt not
        // counted: a cancelled one counts it.
        record.state = Some(std::borrow::Cow::Borrowed(State::Cancelled.name()));
        record.attempt = Some(task.attempt);
        record.finished_at = Some(at);
        let mut line = Vec::with_capacity(160);
        write_record(&mut line, &record);
        let id = task.id;
        let stale = false;
        self.cancelling.insert(id, Cancelling { stale, waiters });
        self.send(line, Awaiting::Change(Change::Cancel { id, at }));
    }

    /// Notes that task `id` changed: a cancel's record on its way no
    /// longer says what the cancel leaves.
    pub(crate) fn task_changed(&mut self, id: u64) {
        // Tuning: nearly always no cancel is on its way, and a lookup
        // would hash the id for nothing.
        if !self.cancelling.is_empty()
            && let Some(cancelling) = self.cancelling.get_mut(&id)
        {
            cancelling.stale = true;
        }
    }

    /// Settles the cancel of task `id` once its record is `written` or has
    /// failed; `pending` is the task if it has not ended. A task that
    /// changed since its record was made gets it written again, and the
    /// cancel waits for that one. A task that ended meanwhile (its own
    /// record, later, has the last word) or was taken back is left as it
    /// is.
    pub(crate) fn settle_cancel(
        &mut self,
        id: u64,
        pending: Option<&Task>,
        written: bool,
    ) -> Settled {
        let Some(cancelling) = self.cancelling.remove(&id) else {
            return Settled::Leave(Vec::new());
        };
        match pending {
            Some(task) if written && cancelling.stale => {
                self.write_cancel(task, cancelling.waiters);
                Settled::Rewritten
            }
            Some(_) if written => Settled::Make(cancelling.waiters),
            _ => Settled::Leave(cancelling.waiters),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalProgress;
    use crate::task::tests::new_task;
    use std::sync::Arc;

    #[test]
    fn a_cancel_on_its_way_is_joined_and_written_again_if_its_task_changed() {
        let (tx, records) = async_channel::unbounded();
        let mut outbox = Outbox::default();
        outbox.attach(JournalSender::new(tx, Arc::new(JournalProgress::new(0))));
        let task = Task::from_new(7, new_task("t", 0), State::Queued);
        let first = outbox.send_cancel(&task);
        let second = outbox.send_cancel(&task);
        assert_eq!(records.len(), 1);
        // Written, but the task changed meanwhile: written again, and
        // nobody is told yet.
        outbox.task_changed(7);
        let settle =
            |outbox: &mut Outbox, task, written| match outbox.settle_cancel(7, task, written) {
                Settled::Make(waiters) => ("make", waiters.len()),
                Settled::Leave(waiters) => ("leave", waiters.len()),
                Settled::Rewritten => ("rewritten", 0),
            };
        assert_eq!(settle(&mut outbox, Some(&task), true), ("rewritten", 0));
        assert_eq!(records.len(), 2);
        assert_eq!(settle(&mut outbox, Some(&task), true), ("make", 2));
        // A failed write: nothing is made.
        drop((first, second, outbox.send_cancel(&task)));
        assert_eq!(settle(&mut outbox, Some(&task), false), ("leave", 1));
        // A task that ended meanwhile keeps its own end.
        outbox.send_cancel(&task);
        assert_eq!(settle(&mut outbox, None, true), ("leave", 1));
        assert_eq!(settle(&mut outbox, None, true), ("leave", 0));
    }
}
