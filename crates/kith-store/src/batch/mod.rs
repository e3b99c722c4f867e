//! Group commit for the inbox log.
//!
//! Every message is appended to a log and committed before its sender is told it
//! is safe (DESIGN.md). One transaction per write would make the commit the
//! bottleneck, so appends — and device cursor updates, which are as frequent —
//! are queued to one writer that takes whatever has queued up (up to
//! [`MAX_BATCH`] jobs) and commits it in a single transaction. Under light load a
//! batch is one job and costs what it did before; under heavy load hundreds of
//! writes share one commit, and cursor updates for the same device coalesce.
//!
//! Two engines run the batches, one per backend:
//! * **SQLite** ([`sqlite`]): a thread of its own drives a connection of its own
//!   (rusqlite, cached prepared statements), so a batch costs no round trips to
//!   sqlx's worker thread; it also keeps the full-text index off the commit path.
//! * **PostgreSQL** ([`postgres`]): a tokio task runs the batch through the sqlx
//!   pool with a few multi-row statements (each statement is a network round trip).
//!
//! What a batch means — which entries get which sequence numbers, what each job
//! is answered — is decided here, once, for both ([`plan`], [`answer`]).

mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use sqlx::AnyPool;
use tokio::sync::oneshot;

use crate::{NewInboxEntry, Result, StoreError};

/// Most jobs committed together.
const MAX_BATCH: usize = 512;

/// What to do once an append is committed (or failed): called in commit order,
/// with one result per entry (see [`Callbacks`] for where).
pub(crate) type Then = Box<dyn FnOnce(Vec<Result<i64>>) + Send + Sync>;

/// A write waiting for the writer.
enum Job {
    /// Entries appended together (e.g. a message to the recipient's log and the
    /// copy to the sender's), answered with one sequence number each.
    Append {
        entries: Vec<(String, OwnedEntry)>,
        then: Then,
    },
    /// A device has everything through `seq`.
    Ack {
        owner: String,
        resource: String,
        seq: i64,
        now_micros: i64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Bring the full-text index up to date with everything committed so far
    /// (answered once it is; a no-op where the index is kept by the database).
    Index { reply: oneshot::Sender<Result<()>> },
    /// The owner's account is gone: forget what the writer knows of its log
    /// (an account created later under the name starts a log of its own).
    Forget {
        owner: String,
        reply: oneshot::Sender<Result<()>>,
    },
}

struct OwnedEntry {
    stanza_id: String,
    sender: String,
    kind: String,
    xml: String,
    at_micros: i64,
    peer: String,
    direction: String,
    body: Option<String>,
    origin: Option<String>,
}

impl OwnedEntry {
    fn from(entry: &NewInboxEntry<'_>) -> Self {
        OwnedEntry {
            stanza_id: entry.stanza_id.to_owned(),
            sender: entry.sender.to_owned(),
            kind: entry.kind.to_owned(),
            xml: entry.xml.to_owned(),
            at_micros: entry.at_micros,
            peer: entry.peer.to_owned(),
            direction: entry.direction.to_owned(),
            body: entry.body.map(str::to_owned),
            origin: entry.origin.map(str::to_owned),
        }
    }
}

/// Handle to the writer.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: flume::Sender<Job>,
    /// The SQLite writer's thread, joined when the last handle goes (after
    /// `tx`, the last sender, so the thread has ended its loop).
    _thread: Option<Arc<Joiner>>,
}

/// Waits for the SQLite writer thread to end when dropped, so its connection is
/// closed before the store's owner can remove the database files (SQLite keeps
/// per-file state for the process: a new file on a reused inode, opened while
/// the old one is still open, would share it).
struct Joiner(std::sync::Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        let handle = self.0.get_mut().ok().and_then(Option::take);
        if let Some(handle) = handle
            // The last handle may go on the writer thread itself (a callback run
            // inline). Elsewhere (the callbacks' task included) joining is brief:
            // the writer ends once the queue closes, `tx` having gone first.
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

impl Writer {
    /// Starts the SQLite writer thread on the database file at `path` (already
    /// migrated). Callbacks run on that thread inside the current tokio runtime.
    pub(crate) fn start_sqlite(path: &Path) -> Result<Writer> {
        let (tx, rx) = flume::bounded(MAX_BATCH * 4);
        let thread = sqlite::start(path, rx)?;
        Ok(Writer {
            tx,
            _thread: Some(Arc::new(Joiner(std::sync::Mutex::new(Some(thread))))),
        })
    }

    /// Starts the PostgreSQL writer task on the current tokio runtime.
    pub(crate) fn start_postgres(pool: AnyPool) -> Writer {
        let (tx, rx) = flume::bounded(MAX_BATCH * 4);
        tokio::spawn(postgres::run(pool, rx));
        Writer { tx, _thread: None }
    }

    /// Appends entries in one transaction and waits until they are committed.
    pub(crate) async fn append(
        &self,
        entries: &[(&str, NewInboxEntry<'_>)],
    ) -> Result<Vec<Result<i64>>> {
        let (reply, answer) = oneshot::channel();
        self.append_then(
            entries,
            Box::new(move |results| {
                let _ = reply.send(results);
            }),
        )
        .await?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Queues entries for the next group commit and returns once they are queued;
    /// `then` runs right after the commit, in commit order ([`Callbacks`]).
    pub(crate) async fn append_then(
        &self,
        entries: &[(&str, NewInboxEntry<'_>)],
        then: Then,
    ) -> Result<()> {
        let entries = entries
            .iter()
            .map(|(owner, entry)| ((*owner).to_owned(), OwnedEntry::from(entry)))
            .collect();
        self.tx
            .send_async(Job::Append { entries, then })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Moves a device cursor forward and waits until it is committed.
    pub(crate) async fn ack(
        &self,
        owner: &str,
        resource: &str,
        seq: i64,
        now_micros: i64,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Ack {
            owner: owner.to_owned(),
            resource: resource.to_owned(),
            seq,
            now_micros,
            reply,
        };
        self.tx
            .send_async(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Tells the writer that `owner`'s account was deleted (after the deleting
    /// transaction committed).
    pub(crate) async fn forget(&self, owner: &str) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Forget {
            owner: owner.to_owned(),
            reply,
        };
        self.tx
            .send_async(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until every entry committed before this call is in the full-text
    /// index, so a search sees what was just written.
    pub(crate) async fn index_now(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send_async(Job::Index { reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// What one committed transaction produced, job by job.
enum Done {
    Appended(Vec<Result<i64>>),
    Acked,
    /// Nothing to report (an index request, a forgotten owner).
    Nothing,
}

/// A batch numbered and ready to write: the rows to insert, the furthest cursor
/// per device, and (before the insert) what each job will be answered.
struct Plan<'a> {
    /// `(owner, seq, entry)` in batch order.
    rows: Vec<(&'a str, i64, &'a OwnedEntry)>,
    /// Per device `(owner, resource)`: the furthest acked `seq` and its time.
    /// Several acks of one device in a batch collapse into the furthest one.
    acks: HashMap<(&'a str, &'a str), (i64, i64)>,
    results: Vec<Done>,
}

/// Per owner, how many sequence numbers the batch needs, owners in first-seen
/// order.
fn wanted(batch: &[Job]) -> Vec<(&str, i64)> {
    let mut wanted: Vec<(&str, i64)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for job in batch {
        if let Job::Append { entries, .. } = job {
            for (owner, _) in entries {
                let slot = *index.entry(owner.as_str()).or_insert_with(|| {
                    wanted.push((owner.as_str(), 0));
                    wanted.len() - 1
                });
                wanted[slot].1 += 1;
            }
        }
    }
    wanted
}

/// Numbers the entries in batch order from `next` (per owner, the first of the
/// numbers reserved for it; an owner absent from `next` has no account).
fn plan<'a>(batch: &'a [Job], mut next: HashMap<&'a str, i64>) -> Plan<'a> {
    let mut rows = Vec::new();
    let mut acks: HashMap<(&str, &str), (i64, i64)> = HashMap::new();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        match job {
            Job::Append { entries, .. } => {
                let mut seqs = Vec::with_capacity(entries.len());
                for (owner, entry) in entries {
                    match next.get_mut(owner.as_str()) {
                        Some(seq) => {
                            rows.push((owner.as_str(), *seq, entry));
                            seqs.push(Ok(*seq));
                            *seq += 1;
                        }
                        None => seqs.push(Err(StoreError::NoSuchUser(owner.clone()))),
                    }
                }
                results.push(Done::Appended(seqs));
            }
            Job::Ack {
                owner,
                resource,
                seq,
                now_micros,
                ..
            } => {
                let slot = acks
                    .entry((owner.as_str(), resource.as_str()))
                    .or_insert((*seq, *now_micros));
                *slot = (slot.0.max(*seq), slot.1.max(*now_micros));
                results.push(Done::Acked);
            }
            Job::Index { .. } | Job::Forget { .. } => results.push(Done::Nothing),
        }
    }
    Plan {
        rows,
        acks,
        results,
    }
}

impl Plan<'_> {
    /// Entries the insert skipped (their origin key was already in the log,
    /// `ON CONFLICT DO NOTHING`) are answered [`StoreError::Duplicate`].
    fn mark_duplicates(&mut self, batch: &[Job], written: &HashSet<(&str, i64)>) {
        if written.len() == self.rows.len() {
            return;
        }
        for (job, done) in batch.iter().zip(self.results.iter_mut()) {
            if let (Job::Append { entries, .. }, Done::Appended(seqs)) = (job, done) {
                for ((owner, _), seq) in entries.iter().zip(seqs.iter_mut()) {
                    if let Ok(n) = seq
                        && !written.contains(&(owner.as_str(), *n))
                    {
                        *seq = Err(StoreError::Duplicate(owner.clone()));
                    }
                }
            }
        }
    }
}

/// Takes the first job and whatever else is already queued (up to [`MAX_BATCH`]).
fn fill(batch: &mut Vec<Job>, first: Job, rx: &flume::Receiver<Job>) {
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(more) => batch.push(more),
            Err(_) => break,
        }
    }
}

/// A batch's commit callbacks with their results, in commit order.
type Calls = Vec<(Then, Vec<Result<i64>>)>;

/// Where commit callbacks run.
///
/// On the SQLite writer's thread, running them there would make every wake-up
/// of a recipient's session a wake-up of the runtime from outside it (a
/// syscall, and the writer preempted by the woken worker, once per recipient
/// on a one-core server): instead each batch's callbacks go, in one piece, to
/// one task of the runtime that opened the store, which runs them in commit
/// order (one consumer of a FIFO channel) and wakes sessions from inside the
/// runtime. The PostgreSQL writer is such a task already and runs them itself.
pub(crate) enum Callbacks {
    Inline,
    Task(tokio::sync::mpsc::UnboundedSender<Calls>),
}

impl Callbacks {
    /// A task on `runtime` that runs the callbacks; without a runtime, inline.
    fn on(runtime: Option<&tokio::runtime::Handle>) -> Callbacks {
        let Some(runtime) = runtime else {
            return Callbacks::Inline;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Calls>();
        runtime.spawn(async move {
            while let Some(calls) = rx.recv().await {
                run_all(calls);
            }
        });
        Callbacks::Task(tx)
    }

    fn run(&self, calls: Calls) {
        if calls.is_empty() {
            return;
        }
        match self {
            Callbacks::Inline => run_all(calls),
            Callbacks::Task(tx) => {
                // The runtime is shutting down: answer here rather than never.
                if let Err(tokio::sync::mpsc::error::SendError(calls)) = tx.send(calls) {
                    run_all(calls);
                }
            }
        }
    }
}

fn run_all(calls: Calls) {
    for (then, results) in calls {
        run_then(then, results);
    }
}

/// Answers every job of a committed batch.
fn answer(jobs: impl Iterator<Item = Job>, results: Vec<Done>, callbacks: &Callbacks) {
    let mut calls = Vec::new();
    for (job, done) in jobs.zip(results) {
        match (job, done) {
            (Job::Append { then, .. }, Done::Appended(seqs)) => calls.push((then, seqs)),
            (Job::Ack { reply, .. } | Job::Index { reply } | Job::Forget { reply, .. }, _) => {
                let _ = reply.send(Ok(()));
            }
            (Job::Append { then, entries }, _) => {
                let closed = entries.iter().map(|_| Err(StoreError::Closed)).collect();
                calls.push((then, closed));
            }
        }
    }
    callbacks.run(calls);
}

/// Runs a commit callback. A panicking one (a bug) is logged and must not take
/// the writer, and with it every later append, down.
fn run_then(then: Then, results: Vec<Result<i64>>) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(results)));
    if outcome.is_err() {
        tracing::error!("an inbox-log commit callback panicked");
    }
}

/// Fails every job of a batch that could not be committed.
fn fail(jobs: impl Iterator<Item = Job>, error: &StoreError, callbacks: &Callbacks) {
    let mut calls = Vec::new();
    for job in jobs {
        let failed = || StoreError::Corrupt(format!("write failed: {error}"));
        match job {
            Job::Append { entries, then } => {
                calls.push((then, entries.iter().map(|_| Err(failed())).collect()));
            }
            Job::Ack { reply, .. } | Job::Index { reply } | Job::Forget { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
        }
    }
    callbacks.run(calls);
}
