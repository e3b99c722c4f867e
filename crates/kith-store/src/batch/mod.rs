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
//! * **PostgreSQL** ([`postgres`]): a tokio task runs each batch on a connection
//!   of its own as one call of the `kith_append` function (each statement is a
//!   network round trip; the batch's columns go as array parameters).
//!
//! What a batch means — which entries get which sequence numbers, what each job
//! is answered — is decided here, once, for both ([`plan`], [`answer`]).

mod postgres;
pub(crate) mod rooms;
mod sqlite;
mod tail;

use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use crate::{DeviceStart, NewInboxEntry, Result, StoreError};
use rooms::{Fill, Live, RoomMember, RoomOp, RoomState, RoomWrite};
pub use tail::Delivered;
pub(crate) use tail::TailShared;
pub use tail::bench as tail_bench;

/// The writer's maps and sets, keyed by user and room names: hashed with
/// foldhash, seeded at random per process (as the server's router is), not
/// std's SipHash, which was about a tenth of the writer's instructions per
/// message (a batch asks about each entry's owner several times).
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Most jobs committed together.
const MAX_BATCH: usize = 512;

/// What to do once an append is committed (or failed): called in commit order,
/// with one result per entry (see [`Callbacks`] for where).
pub(crate) type Then = Box<dyn FnOnce(Vec<Result<i64>>) + Send + Sync>;

/// A write waiting for the writer.
enum Job {
    /// Entries appended together (e.g. a message to the recipient's log and the
    /// copy to the sender's), answered with one sequence number each.
    Append { entries: Entries, then: Then },
    /// A group message: the room's entry, and copies for the members with a
    /// session now (the others are owed it: [`rooms`]). Answered with the
    /// room's sequence number, then per member its copy's or
    /// [`StoreError::Owed`].
    Fan { fan: Box<Fan>, then: Then },
    /// A change to what members' logs hold of a room's ([`rooms`]).
    Rooms {
        op: RoomOp,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A device has everything through `seq`.
    Ack {
        owner: String,
        resource: String,
        seq: i64,
        now_micros: i64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A login of `resource`: registers the device (a new one starts at the
    /// owner's delivered mark) and answers where its delivery starts
    /// (`Store::device_attach`). Logins in a storm share commits. SQLite only:
    /// PostgreSQL registers through the pool, in parallel (its engine refuses
    /// the job).
    Attach {
        owner: String,
        resource: String,
        now_micros: i64,
        reply: oneshot::Sender<Result<DeviceStart>>,
    },
    /// `owner`'s last session ended at `at_secs` with this status text
    /// (XEP-0012, `Store::set_last_activity`). SQLite only, like
    /// [`Job::Attach`]: a logout storm's writes share commits instead of each
    /// taking the write lock from a pool connection.
    Seen {
        owner: String,
        at_secs: i64,
        status: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Move whatever a previous run left in the log's tail into `inbox`
    /// (SQLite; answered once committed).
    Recover { reply: oneshot::Sender<Result<()>> },
    /// Compact the whole tail before the "until delivered" sweep: answered
    /// with how many entries it dropped as delivered.
    Compact { reply: oneshot::Sender<Result<u64>> },
    /// Bring the full-text index up to date with everything committed so far
    /// (answered once it is; a no-op where the index is kept by the database).
    Index { reply: oneshot::Sender<Result<()>> },
    /// Move `owner`'s entries waiting in the log's tail into `inbox` before a
    /// read of its log ([`tail`]; answered once committed).
    Settle {
        owner: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The owner's account is gone: forget what the writer knows of its log
    /// (an account created later under the name starts a log of its own).
    Forget {
        owner: String,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A group message (see [`Job::Fan`]).
struct Fan {
    room: String,
    entry: OwnedEntry,
    /// The entry as a member's copy.
    copy: OwnedEntry,
    members: Vec<RoomMember>,
    live: Live,
}

/// The entries of a [`Job::Append`], each with its owner: one (a message whose
/// sender archives nothing) without a list.
enum Entries {
    One(OwnedEntry),
    Many(Vec<OwnedEntry>),
}

impl Entries {
    fn new(entries: &[(&str, NewInboxEntry<'_>)]) -> Self {
        match entries {
            [(owner, entry)] => Entries::One(OwnedEntry::new(owner, entry)),
            _ => Entries::Many(
                entries
                    .iter()
                    .map(|(owner, entry)| OwnedEntry::new(owner, entry))
                    .collect(),
            ),
        }
    }

    fn as_slice(&self) -> &[OwnedEntry] {
        match self {
            Entries::One(entry) => std::slice::from_ref(entry),
            Entries::Many(entries) => entries,
        }
    }
}

/// An entry as the writer holds it. Its text fields, and the owner's name,
/// share one allocation: an entry is made on a runtime worker and freed on the
/// writer's thread, and each allocation that crosses threads takes glibc's slow
/// paths on both sides (BENCHMARKS.md, sessions 17 and 18).
struct OwnedEntry {
    /// The fields in [`Field`] order, back to back.
    text: Box<str>,
    /// Where each field ends in `text`.
    ends: [usize; FIELDS],
    at_micros: i64,
    has_body: bool,
    has_origin: bool,
}

/// The text fields of an [`OwnedEntry`], in their order in its buffer.
#[derive(Clone, Copy)]
enum Field {
    StanzaId,
    Sender,
    Kind,
    Xml,
    Peer,
    Direction,
    Body,
    Origin,
    /// Whose log it goes to, for an entry of a [`Job::Append`]; empty for a
    /// group message's entries (a member's copy is one entry for many owners).
    Owner,
}

const FIELDS: usize = 9;

impl OwnedEntry {
    fn from(entry: &NewInboxEntry<'_>) -> Self {
        Self::new("", entry)
    }

    fn new(owner: &str, entry: &NewInboxEntry<'_>) -> Self {
        let fields = [
            entry.stanza_id,
            entry.sender,
            entry.kind,
            entry.xml,
            entry.peer,
            entry.direction,
            entry.body.unwrap_or(""),
            entry.origin.unwrap_or(""),
            owner,
        ];
        // Exactly the size needed, so the boxing below doesn't reallocate.
        let mut text = String::with_capacity(fields.iter().map(|field| field.len()).sum());
        let mut ends = [0; FIELDS];
        for (end, field) in ends.iter_mut().zip(fields) {
            text.push_str(field);
            *end = text.len();
        }
        OwnedEntry {
            text: text.into_boxed_str(),
            ends,
            at_micros: entry.at_micros,
            has_body: entry.body.is_some(),
            has_origin: entry.origin.is_some(),
        }
    }

    fn field(&self, field: Field) -> &str {
        let index = field as usize;
        let start = index.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.text[start..self.ends[index]]
    }

    fn stanza_id(&self) -> &str {
        self.field(Field::StanzaId)
    }

    fn sender(&self) -> &str {
        self.field(Field::Sender)
    }

    fn kind(&self) -> &str {
        self.field(Field::Kind)
    }

    fn xml(&self) -> &str {
        self.field(Field::Xml)
    }

    fn peer(&self) -> &str {
        self.field(Field::Peer)
    }

    fn direction(&self) -> &str {
        self.field(Field::Direction)
    }

    fn body(&self) -> Option<&str> {
        self.has_body.then(|| self.field(Field::Body))
    }

    fn origin(&self) -> Option<&str> {
        self.has_origin.then(|| self.field(Field::Origin))
    }

    fn owner(&self) -> &str {
        self.field(Field::Owner)
    }
}

/// Handle to the writer.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: flume::Sender<Job>,
    /// SQLite: which owners have entries in the log's tail ([`tail`]).
    tail: Option<Arc<TailShared>>,
    /// The SQLite writer's thread, joined when the last handle goes (after
    /// `tx`, the last sender, so the thread has ended its loop).
    _thread: Option<Arc<Joiner>>,
    /// The PostgreSQL writer's connection.
    pg: Option<sqlx::PgPool>,
    stats: Arc<WriterStats>,
    /// PostgreSQL: the lease room writes are fenced by (`Store::fence_rooms`).
    fence: Fencing,
}

/// The lease room writes are fenced by, shared with the PostgreSQL writer.
pub(crate) type Fencing = Arc<std::sync::Mutex<Option<crate::lease::Fence>>>;

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
        let tail = Arc::new(TailShared::default());
        let stats = Arc::new(WriterStats::default());
        let thread = sqlite::start(path, rx, tail.clone(), stats.clone())?;
        Ok(Writer {
            tx,
            tail: Some(tail),
            _thread: Some(Arc::new(Joiner(std::sync::Mutex::new(Some(thread))))),
            pg: None,
            stats,
            // One process on SQLite: nothing to fence.
            fence: Fencing::default(),
        })
    }

    /// Starts the PostgreSQL writer task on the current tokio runtime.
    pub(crate) fn start_postgres(pool: sqlx::PgPool) -> Writer {
        let (tx, rx) = flume::bounded(MAX_BATCH * 4);
        let stats = Arc::new(WriterStats::default());
        let fence = Fencing::default();
        tokio::spawn(postgres::run(
            pool.clone(),
            rx,
            stats.clone(),
            fence.clone(),
        ));
        Writer {
            tx,
            tail: None,
            _thread: None,
            pg: Some(pool),
            stats,
            fence,
        }
    }

    pub(crate) fn set_fence(&self, fence: Option<crate::lease::Fence>) {
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = fence;
    }

    /// PostgreSQL: how the writer connects (for a connection of one's own).
    pub(crate) fn pg_options(&self) -> Option<sqlx::postgres::PgConnectOptions> {
        self.pg
            .as_ref()
            .map(|pool| (*pool.connect_options()).clone())
    }

    pub(crate) fn metrics(&self) -> WriterMetrics {
        WriterMetrics {
            queued: self.tx.len(),
            batches: self.stats.batches.load(Ordering::Relaxed),
            jobs: self.stats.jobs.load(Ordering::Relaxed),
        }
    }

    /// Closes the PostgreSQL writer's connection (waiting for a batch under
    /// way); later batches fail.
    pub(crate) async fn close(&self) {
        if let Some(pool) = &self.pg {
            pool.close().await;
        }
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

    /// Queues entries for the next group commit ([`Writer::queue`]); `then` runs
    /// right after the commit, in commit order ([`Callbacks`]).
    pub(crate) fn append_then(
        &self,
        entries: &[(&str, NewInboxEntry<'_>)],
        then: Then,
    ) -> impl Future<Output = Result<()>> + Send + use<'_> {
        self.queue(Job::Append {
            entries: Entries::new(entries),
            then,
        })
    }

    /// Hands `job` to the writer: at once when its queue has room, the common
    /// case, so that what a caller awaits (and its own future carries, in every
    /// message's handling) is small; the future waits for room otherwise.
    fn queue(&self, job: Job) -> impl Future<Output = Result<()>> + Send + use<'_> {
        // Boxed (the job, then the wait): rare, the writer is saturated (or
        // gone: then the wait fails at once).
        let waiting = self
            .tx
            .try_send(job)
            .err()
            .map(|error| Box::new(error.into_inner()));
        async move {
            if let Some(job) = waiting {
                Box::pin(self.tx.send_async(*job))
                    .await
                    .map_err(|_| StoreError::Closed)?;
            }
            Ok(())
        }
    }

    /// Queues a group message for the next group commit (see [`Job::Fan`],
    /// [`Writer::queue`]).
    pub(crate) fn fan_then(
        &self,
        room: &str,
        entry: &NewInboxEntry<'_>,
        members: Vec<RoomMember>,
        live: Live,
        then: Then,
    ) -> impl Future<Output = Result<()>> + Send + use<'_> {
        let entry = OwnedEntry::from(entry);
        let copy = rooms::member_copy(room, &entry);
        let fan = Box::new(Fan {
            room: room.to_owned(),
            entry,
            copy,
            members,
            live,
        });
        self.queue(Job::Fan { fan, then })
    }

    /// Applies a room change and waits until it is committed.
    pub(crate) async fn rooms(&self, op: RoomOp) -> Result<()> {
        self.ask(|reply| Job::Rooms { op, reply }).await
    }

    /// Moves a device cursor forward and waits until it is committed.
    pub(crate) async fn ack(
        &self,
        owner: &str,
        resource: &str,
        seq: i64,
        now_micros: i64,
    ) -> Result<()> {
        self.ask(|reply| Job::Ack {
            owner: owner.to_owned(),
            resource: resource.to_owned(),
            seq,
            now_micros,
            reply,
        })
        .await
    }

    /// Registers a login of `resource` and waits until it is committed.
    pub(crate) async fn attach(
        &self,
        owner: &str,
        resource: &str,
        now_micros: i64,
    ) -> Result<DeviceStart> {
        self.ask(|reply| Job::Attach {
            owner: owner.to_owned(),
            resource: resource.to_owned(),
            now_micros,
            reply,
        })
        .await
    }

    /// Records when `owner`'s last session ended and waits until it is committed.
    pub(crate) async fn seen(&self, owner: &str, at_secs: i64, status: &str) -> Result<()> {
        self.ask(|reply| Job::Seen {
            owner: owner.to_owned(),
            at_secs,
            status: status.to_owned(),
            reply,
        })
        .await
    }

    /// Tells the writer that `owner`'s account was deleted (after the deleting
    /// transaction committed).
    pub(crate) async fn forget(&self, owner: &str) -> Result<()> {
        self.ask(|reply| Job::Forget {
            owner: owner.to_owned(),
            reply,
        })
        .await
    }

    /// Turns the log's tail on (SQLite; `online` says whether an owner has a
    /// session: its 1:1 entries and members' copies then wait in the tail
    /// first, [`tail`]) or
    /// off (`None`), saying what its compaction does with delivered entries.
    /// Moves what a previous run left in the tail into `inbox` first.
    pub(crate) async fn set_tail(&self, online: Option<Live>, delivered: Delivered) -> Result<()> {
        if let Some(tail) = &self.tail {
            self.ask(|reply| Job::Recover { reply }).await?;
            tail.set_mode(online, delivered);
        }
        Ok(())
    }

    /// Before a read of `owner`'s log: moves its entries waiting in the tail,
    /// if it has any, into `inbox` (committed when this returns).
    pub(crate) async fn settle(&self, owner: &str) -> Result<()> {
        match &self.tail {
            Some(tail) if tail.holds(owner) => {
                self.ask(|reply| Job::Settle {
                    owner: owner.to_owned(),
                    reply,
                })
                .await
            }
            _ => Ok(()),
        }
    }

    /// Before a sweep of the whole log: moves every entry waiting in the tail
    /// into `inbox`, owner by owner (in one transaction, up to 100,000
    /// entries would hold every message up for a second).
    pub(crate) async fn settle_all(&self) -> Result<()> {
        let Some(tail) = &self.tail else {
            return Ok(());
        };
        for owner in tail.owners_now() {
            self.settle(&owner).await?;
        }
        Ok(())
    }

    /// Before the "until delivered" sweep: compacts the whole tail (what every
    /// device has goes, the rest moves into `inbox`); returns how many entries
    /// went.
    pub(crate) async fn compact_tail(&self) -> Result<u64> {
        match &self.tail {
            Some(tail) if tail.holds_any() => self.ask(|reply| Job::Compact { reply }).await,
            _ => Ok(0),
        }
    }

    /// Waits until every entry committed before this call is in the full-text
    /// index, so a search sees what was just written.
    pub(crate) async fn index_now(&self) -> Result<()> {
        self.ask(|reply| Job::Index { reply }).await
    }

    /// Queues the job `job` makes with its reply channel and waits for the answer.
    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send_async(job(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// What one committed transaction produced, job by job.
enum Done {
    Appended(Vec<Result<i64>>),
    Acked,
    /// Where the device starts; `None`: the owner has no account.
    Attached(Option<DeviceStart>),
    /// Whether the last-activity row was written (`false`: no such account).
    Seen(bool),
    /// Nothing to report (an index request, a forgotten owner, a room change).
    Nothing,
}

/// Where one answer of an append comes from.
enum Slot {
    /// The plan's row with this index.
    Row(usize),
    /// Not written now: the member is owed it ([`rooms`]).
    Owed(String),
}

enum Answer {
    /// A 1:1 append's entries: as many rows from this one on (an `Append`
    /// job's entries are numbered in a row; no list per message).
    Rows(usize, usize),
    Appended(Vec<Slot>),
    Acked,
    /// The attach with this index in [`Plan::attaches`].
    Attached(usize),
    /// The write with this index in [`Plan::seen`].
    Seen(usize),
    Nothing,
}

/// A batch planned: the rows to insert (numbered per owner from 0: the engine
/// reserves the numbers, [`Plan::number`]), the furthest cursor per device,
/// where members' copies of rooms stand afterwards, and what each job is answered.
struct Plan<'a> {
    /// `(owner, n, entry)` in batch order: the owner's `n`th row of the batch.
    rows: Vec<(&'a str, i64, &'a OwnedEntry)>,
    /// Per row: whether it may wait in the log's tail — a 1:1 entry (an
    /// `Append` job's) or a live member's copy of a group message; not a
    /// room's entry (the room logic reads those in `inbox`, in the batch's
    /// transaction) nor a copy made on catching up or leaving.
    may_wait: Vec<bool>,
    /// Owners whose entries waiting in the tail move into `inbox` first.
    settles: Vec<&'a str>,
    /// Rows per owner, owners in first-seen order: the numbers to reserve.
    counts: Vec<(&'a str, i64)>,
    /// Per device `(owner, resource)`: the furthest acked `seq` and its time.
    /// Several acks of one device in a batch collapse into the furthest one.
    acks: HashMap<(&'a str, &'a str), (i64, i64)>,
    /// Logins `(owner, resource, now_micros)` in batch order, run after the
    /// acks and room changes (so a device's start reflects them).
    attaches: Vec<(&'a str, &'a str, i64)>,
    /// Last activities `(owner, at_secs, status)` in batch order.
    seen: Vec<(&'a str, i64, &'a str)>,
    /// What changes in `room_fill` and `room_marks`.
    room_writes: Vec<RoomWrite>,
    answers: Vec<Answer>,
}

/// Plans a batch, given what the engine read about its rooms (nothing when it
/// has no room work) and which members have a session.
fn plan<'a>(batch: &'a [Job], state: &'a RoomState, live: &HashSet<&str>) -> Plan<'a> {
    let mut planner = Planner {
        state,
        rows: Vec::with_capacity(batch.len()),
        // As many owners as jobs, about (a 1:1 message is one entry).
        counts: HashMap::with_capacity_and_hasher(batch.len(), Default::default()),
        order: Vec::with_capacity(batch.len()),
        fills: HashMap::default(),
        fresh: HashMap::default(),
        may_wait: Vec::with_capacity(batch.len()),
    };
    let mut acks: HashMap<(&str, &str), (i64, i64)> = HashMap::default();
    let mut attaches = Vec::new();
    let mut seen = Vec::new();
    let mut settles = Vec::new();
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        match job {
            Job::Append { entries, .. } => {
                let entries = entries.as_slice();
                let first = planner.rows.len();
                for entry in entries {
                    let row = planner.push(entry.owner(), entry);
                    planner.may_wait.push(row);
                }
                answers.push(Answer::Rows(first, entries.len()));
            }
            Job::Fan { fan, .. } => {
                let Fan {
                    room,
                    entry,
                    copy,
                    members,
                    ..
                } = &**fan;
                let mut slots = Vec::with_capacity(members.len() + 1);
                let seq = planner.head(room).map(|head| head + 1);
                slots.push(Slot::Row(planner.push(room, entry)));
                if let Some(seq) = seq {
                    planner.fresh.entry(room).or_default().push((seq, copy));
                }
                for member in members {
                    let first = planner.rows.len();
                    let copied = match seq {
                        Some(seq) if live.contains(member.owner.as_str()) => {
                            planner.fill_through(room, &member.owner, seq, true)
                        }
                        _ => None,
                    };
                    planner.may_wait.extend(first..planner.rows.len());
                    slots.push(match copied {
                        Some(row) => Slot::Row(row),
                        None => Slot::Owed(member.owner.clone()),
                    });
                }
                answers.push(Answer::Appended(slots));
            }
            Job::Rooms { op, .. } => {
                match op {
                    RoomOp::Join { room, owners } => {
                        for owner in owners {
                            if planner.filled(room, owner).is_none()
                                && let Some(head) = planner.head(room)
                            {
                                planner.fills.insert((room, owner), Some(head));
                            }
                        }
                    }
                    RoomOp::Leave { room, owners } => {
                        for owner in owners {
                            if let Some(head) = planner.head(room) {
                                planner.fill_through(room, owner, head, false);
                            }
                            planner.fills.insert((room, owner), None);
                        }
                    }
                    RoomOp::CatchUp { owner } => {
                        let mut rooms: Vec<&'a str> = state
                            .rooms_of
                            .get(owner.as_str())
                            .map(|rooms| rooms.iter().map(String::as_str).collect())
                            .unwrap_or_default();
                        // Joined earlier in this batch.
                        rooms.extend(planner.fills.iter().filter_map(|((room, member), fill)| {
                            (*member == owner.as_str() && fill.is_some()).then_some(*room)
                        }));
                        rooms.sort_unstable();
                        rooms.dedup();
                        for room in rooms {
                            if let Some(head) = planner.head(room) {
                                planner.fill_through(room, owner, head, false);
                            }
                        }
                    }
                }
                answers.push(Answer::Nothing);
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
                answers.push(Answer::Acked);
            }
            Job::Attach {
                owner,
                resource,
                now_micros,
                ..
            } => {
                answers.push(Answer::Attached(attaches.len()));
                attaches.push((owner.as_str(), resource.as_str(), *now_micros));
            }
            Job::Seen {
                owner,
                at_secs,
                status,
                ..
            } => {
                answers.push(Answer::Seen(seen.len()));
                seen.push((owner.as_str(), *at_secs, status.as_str()));
            }
            Job::Settle { owner, .. } => {
                settles.push(owner.as_str());
                answers.push(Answer::Nothing);
            }
            Job::Index { .. } | Job::Recover { .. } | Job::Compact { .. } | Job::Forget { .. } => {
                answers.push(Answer::Nothing)
            }
        }
    }
    let counts = planner
        .order
        .iter()
        .map(|owner| (*owner, planner.counts[owner]))
        .collect();
    let room_writes = planner.room_writes();
    let mut may_wait = vec![false; planner.rows.len()];
    for row in planner.may_wait {
        may_wait[row] = true;
    }
    Plan {
        rows: planner.rows,
        may_wait,
        settles,
        counts,
        acks,
        attaches,
        seen,
        room_writes,
        answers,
    }
}

/// The state of [`plan`] while it walks a batch.
struct Planner<'a> {
    state: &'a RoomState,
    rows: Vec<(&'a str, i64, &'a OwnedEntry)>,
    counts: HashMap<&'a str, i64>,
    order: Vec<&'a str>,
    fills: HashMap<(&'a str, &'a str), Option<i64>>,
    /// Per room, this batch's entries so far: `(seq, member's copy)`.
    fresh: HashMap<&'a str, Vec<(i64, &'a OwnedEntry)>>,
    /// The rows that may wait in the log's tail ([`Plan::may_wait`]).
    may_wait: Vec<usize>,
}

impl<'a> Planner<'a> {
    /// Adds a row for `owner`; returns its index.
    fn push(&mut self, owner: &'a str, entry: &'a OwnedEntry) -> usize {
        let count = match self.counts.entry(owner) {
            Entry::Occupied(count) => count.into_mut(),
            Entry::Vacant(vacant) => {
                self.order.push(owner);
                vacant.insert(0)
            }
        };
        self.rows.push((owner, *count, entry));
        *count += 1;
        self.rows.len() - 1
    }

    /// A room's head at this point of the batch (`None`: no such room).
    fn head(&self, room: &str) -> Option<i64> {
        let before = *self.state.heads.get(room)?;
        Some(before + self.counts.get(room).copied().unwrap_or(0))
    }

    /// Through which room entry `owner`'s log holds copies at this point.
    fn filled(&self, room: &str, owner: &str) -> Option<i64> {
        match self.fills.get(&(room, owner)) {
            Some(fill) => *fill,
            None => self.state.filled(room, owner),
        }
    }

    /// What the batch changes in the rooms' rows. Each room's mark moves to
    /// its head; a member whose copies reach it is [`Fill::AtMark`] (no write
    /// while it stays so, however many messages it gets), any other gets its
    /// own number, written only when that changes.
    fn room_writes(&self) -> Vec<RoomWrite> {
        let mut writes = Vec::new();
        let state: &'a RoomState = self.state;
        for (room, rows) in &state.rows {
            let room = room.as_str();
            let Some(head) = self.head(room) else {
                continue;
            };
            if head != rows.mark {
                writes.push(RoomWrite::Mark {
                    room: room.to_owned(),
                    seq: head,
                });
            }
            let members = rows
                .members
                .iter()
                .map(|(owner, fill)| (owner.as_str(), Some(*fill)));
            let joined = self.fills.keys().filter_map(|(r, owner)| {
                (*r == room && !rows.members.contains_key(*owner)).then_some((*owner, None))
            });
            for (owner, before) in members.chain(joined) {
                let fill = match self.filled(room, owner) {
                    None => {
                        if before.is_some() {
                            writes.push(RoomWrite::Gone {
                                room: room.to_owned(),
                                owner: owner.to_owned(),
                            });
                        }
                        continue;
                    }
                    Some(seq) if seq == head => Fill::AtMark,
                    Some(seq) => Fill::Through(seq),
                };
                if before != Some(fill) {
                    writes.push(RoomWrite::Fill {
                        room: room.to_owned(),
                        owner: owner.to_owned(),
                        fill,
                    });
                }
            }
        }
        writes
    }

    /// Copies what `owner` is owed of `room` through entry `through`, in order,
    /// and records it; returns the last copy's row. A live member without a
    /// fill row (`fresh_member`: one added before rows were kept) starts at
    /// this entry.
    fn fill_through(
        &mut self,
        room: &'a str,
        owner: &'a str,
        through: i64,
        fresh_member: bool,
    ) -> Option<usize> {
        let from = match self.filled(room, owner) {
            Some(from) => from,
            None if fresh_member => through - 1,
            None => return None,
        };
        if through <= from {
            return None;
        }
        let before = self.state.heads.get(room).copied().unwrap_or(0);
        let owed: Vec<&'a OwnedEntry> = self
            .state
            .owed
            .get(room)
            .into_iter()
            .flatten()
            .filter(|(seq, _)| from < *seq && *seq <= through.min(before))
            .map(|(_, entry)| entry)
            .chain(
                self.fresh
                    .get(room)
                    .into_iter()
                    .flatten()
                    .filter(|(seq, _)| from.max(before) < *seq && *seq <= through)
                    .map(|(_, entry)| *entry),
            )
            .collect();
        let mut last = None;
        for entry in owed {
            last = Some(self.push(owner, entry));
        }
        self.fills.insert((room, owner), Some(through));
        last
    }
}

/// A plan with sequence numbers: `rows[i]` is `None` when its owner has no
/// account (nothing to insert).
struct Numbered<'a> {
    rows: Vec<Option<(&'a str, i64, &'a OwnedEntry)>>,
    /// The last number handed out per owner (for the SQLite writer's heads).
    reserved: Vec<(&'a str, i64)>,
}

impl<'a> Plan<'a> {
    /// Numbers the rows from `bases` (per owner, the first number reserved
    /// for it; an owner absent has no account).
    fn number(&self, bases: &HashMap<&str, i64>) -> Numbered<'a> {
        let rows = self
            .rows
            .iter()
            .map(|(owner, n, entry)| bases.get(owner).map(|base| (*owner, base + n, *entry)))
            .collect();
        let reserved = self
            .counts
            .iter()
            .filter_map(|(owner, count)| bases.get(owner).map(|base| (*owner, base + count - 1)))
            .collect();
        Numbered { rows, reserved }
    }

    /// What each job is answered, given which rows were written (`false`: the
    /// owner has no account, or the insert skipped a duplicate origin key) and
    /// where each attached device starts, and which last activities were written.
    fn answers(
        self,
        numbered: &Numbered<'_>,
        written: &[bool],
        attached: &[Option<DeviceStart>],
        seen: &[bool],
    ) -> Vec<Done> {
        let row = |i: usize| match numbered.rows[i] {
            None => Err(StoreError::NoSuchUser(self.rows[i].0.to_owned())),
            Some((owner, _, _)) if !written[i] => Err(StoreError::Duplicate(owner.to_owned())),
            Some((_, seq, _)) => Ok(seq),
        };
        self.answers
            .into_iter()
            .map(|answer| match answer {
                Answer::Rows(first, len) => Done::Appended((first..first + len).map(row).collect()),
                Answer::Appended(slots) => Done::Appended(
                    slots
                        .into_iter()
                        .map(|slot| match slot {
                            Slot::Owed(owner) => Err(StoreError::Owed(owner)),
                            Slot::Row(i) => row(i),
                        })
                        .collect(),
                ),
                Answer::Acked => Done::Acked,
                Answer::Attached(i) => Done::Attached(attached.get(i).copied().flatten()),
                Answer::Seen(i) => Done::Seen(seen.get(i).copied().unwrap_or(false)),
                Answer::Nothing => Done::Nothing,
            })
            .collect()
    }
}

/// Takes the first job and whatever else is already queued (up to [`MAX_BATCH`]).
fn fill(batch: &mut Vec<Job>, first: Job, rx: &flume::Receiver<Job>, stats: &WriterStats) {
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(more) => batch.push(more),
            Err(_) => break,
        }
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
}

/// What the writer has taken on, counted by its own thread or task (so never
/// contended), for metrics.
#[derive(Default)]
pub(crate) struct WriterStats {
    batches: AtomicU64,
    jobs: AtomicU64,
}

/// The inbox-log writer's figures (`Store::writer_metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterMetrics {
    /// Jobs waiting for the writer (appends, acknowledgements, …).
    pub queued: usize,
    /// Batches taken, a commit each (a failed batch's jobs, retried one by
    /// one, are not counted again).
    pub batches: u64,
    /// Jobs taken.
    pub jobs: u64,
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
    let mut calls = Vec::with_capacity(results.len());
    for (job, done) in jobs.zip(results) {
        match (job, done) {
            (Job::Append { then, .. } | Job::Fan { then, .. }, Done::Appended(seqs)) => {
                calls.push((then, seqs));
            }
            (
                Job::Ack { reply, .. }
                | Job::Index { reply }
                | Job::Settle { reply, .. }
                | Job::Recover { reply }
                | Job::Forget { reply, .. }
                | Job::Rooms { reply, .. },
                _,
            ) => {
                let _ = reply.send(Ok(()));
            }
            (Job::Compact { reply }, _) => {
                let _ = reply.send(Ok(0));
            }
            (Job::Attach { owner, reply, .. }, done) => {
                let _ = reply.send(match done {
                    Done::Attached(Some(start)) => Ok(start),
                    Done::Attached(None) => Err(StoreError::NoSuchUser(owner)),
                    _ => Err(StoreError::Closed),
                });
            }
            (Job::Seen { owner, reply, .. }, done) => {
                let _ = reply.send(match done {
                    Done::Seen(true) => Ok(()),
                    Done::Seen(false) => Err(StoreError::NoSuchUser(owner)),
                    _ => Err(StoreError::Closed),
                });
            }
            (Job::Append { then, entries }, _) => {
                let closed = entries
                    .as_slice()
                    .iter()
                    .map(|_| Err(StoreError::Closed))
                    .collect();
                calls.push((then, closed));
            }
            (Job::Fan { then, fan }, _) => {
                let closed = (0..=fan.members.len())
                    .map(|_| Err(StoreError::Closed))
                    .collect();
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
                let failed = entries.as_slice().iter().map(|_| Err(failed())).collect();
                calls.push((then, failed));
            }
            Job::Fan { fan, then } => {
                calls.push((
                    then,
                    (0..=fan.members.len()).map(|_| Err(failed())).collect(),
                ));
            }
            Job::Ack { reply, .. }
            | Job::Index { reply }
            | Job::Settle { reply, .. }
            | Job::Recover { reply }
            | Job::Forget { reply, .. }
            | Job::Rooms { reply, .. }
            | Job::Seen { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Attach { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Compact { reply } => {
                let _ = reply.send(Err(failed()));
            }
        }
    }
    callbacks.run(calls);
}
