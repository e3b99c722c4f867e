//! The SQLite engine of the group commit: one thread owns one connection and
//! runs each batch as one transaction of cached prepared statements (taking
//! the write lock first, [`Immediate`]). Through sqlx every statement was a round trip to its worker
//! thread (a context switch each way, and the conversions of the `Any` driver);
//! here a whole batch costs one hand-over.
//!
//! The same thread keeps the full-text index (`inbox_fts`, migrations 6, 47) off the
//! commit path: entries are indexed in passes of up to [`INDEX_CHUNK`] rows when
//! the queue has been empty for [`INDEX_IDLE`], when [`INDEX_BEHIND_ROWS`]
//! entries wait, or when the oldest waiting entry is [`INDEX_BEHIND`] old; a
//! search first asks for a pass
//! ([`super::Writer::index_now`]), so it sees everything committed before it.
//! `fts_state.next_rowid` (durable) is the lowest `inbox` rowid that may not be
//! indexed yet; a pass indexes the rows from there and moves it on. SQLite can
//! hand a deleted row's rowid to a new row, so a commit that inserts below it
//! lowers it in the same transaction.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flume::{RecvTimeoutError, TryRecvError};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, Statement, params};
use tokio::sync::oneshot;

use super::rooms::{self, Fill, RoomReads, RoomRows, RoomState, RoomWrite};
use super::tail::{self, Added, Moved, Tail, TailShared};
use super::{
    Callbacks, Done, HashMap, HashSet, Job, MAX_BATCH, OwnedEntry, answer, fail, fill, plan,
};
use crate::read::Arg;
use crate::{Result, SQLITE_BUSY_TIMEOUT, StoreError};

/// Page cache of the writer's connection, KiB (SQLite's default is 2,000 KiB).
/// Not much more: SQLite walks the whole cache's hash table when it trims the
/// cache at the end of a write transaction, and at 32 MiB that walk was 6 % of
/// the server's CPU in the chat benchmark.
const CACHE_KIB: i64 = 8 * 1024;
/// Most owners whose log head the writer keeps (about 60 bytes each); past
/// it the map starts again empty.
const MAX_HEADS: usize = 1_000_000;
/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL pages (4 KiB each) from which the log is started over. Each start
/// over holds the writer for its last checkpoint (a few ms, after
/// [`flush_ahead`]); at 8,192 pages, with an archive at 24,000 msg/s, that
/// came every 1.2 s, and chat held 24,000 msg/s at p99 29–40 ms where this
/// holds 28,000 at 42–52 (BENCHMARKS.md, session 21).
const WAL_RESTART_PAGES: i64 = 32_768;
/// Passive passes at most before the writer finishes the checkpoint, while
/// more than [`RESTART_APPROACH_PAGES`] are left after one.
const RESTART_APPROACH_PASSES: usize = 4;
const RESTART_APPROACH_PAGES: i64 = 256;
/// Size the WAL file is cut back to once the log starts over, bytes: above
/// the 128 MiB of [`WAL_RESTART_PAGES`], so that a log starting over writes
/// over blocks the file has rather than growing it again.
const WAL_SIZE_LIMIT: i64 = 256 << 20;
/// Commits between two looks at the WAL file's size (a `stat`).
const WAL_LOOK_EVERY: u32 = 32;
/// Under load, how long the writer lets jobs gather after the first wakes it
/// (PostgreSQL's `commit_delay`). While it sleeps, appending costs no wake-up:
/// without it, at 10,000–20,000 1:1 messages/s the writer woke for every
/// three jobs, each wake a `futex` call and two context switches on the
/// server's core (at 20,000 msg/s 6,100 → 1,100 writer wake-ups a second;
/// CPU per message 2–10 % lower in three of five A/B pairs, BENCHMARKS.md).
/// 1.5 ms rather than 0.5 since the log's tail ([`tail`]): a commit's cost is
/// now mostly per commit (the last pages, page 1, the locks, the wake-up); at
/// 12,000 msg/s the writer's CPU per message went 16.9 → 13.0 µs (four runs
/// each, interleaved), for at most 1 ms more per message.
const COMMIT_DELAY: Duration = Duration::from_micros(1500);
/// The writer counts as under load when its previous commit ended less than
/// this long before the job that woke it: an idle server commits at once.
const BUSY_WITHIN: Duration = Duration::from_millis(5);
/// Prepared statements the writer's connection keeps.
const STATEMENT_CACHE: usize = 64;
/// Most rows one full-text pass indexes (one transaction).
const INDEX_CHUNK: i64 = 4096;
/// How long the queue must have been empty before an idle pass.
const INDEX_IDLE: Duration = Duration::from_millis(50);
/// A pass runs even while busy once this many entries wait.
const INDEX_BEHIND_ROWS: usize = 2048;
/// … or once the oldest waiting entry is this old.
const INDEX_BEHIND: Duration = Duration::from_millis(500);

/// Opens the writer's connection and starts its thread, which ends (closing
/// the connection) once every sender of `rx` is gone.
pub(super) fn start(
    path: &Path,
    rx: flume::Receiver<Job>,
    tail: Arc<TailShared>,
    stats: Arc<super::WriterStats>,
) -> Result<std::thread::JoinHandle<()>> {
    let conn = open_connection(path)?;
    let next_rowid: i64 =
        conn.query_row("SELECT next_rowid FROM fts_state", [], |row| row.get(0))?;
    let checkpointer = Checkpointer::start(path)?;
    // Callbacks run on a task of the runtime that opened the store; the writer
    // enters it too, for whatever it runs itself (e.g. a callback when the
    // runtime is going away).
    let runtime = tokio::runtime::Handle::try_current().ok();
    let tail = Tail::new(tail, path.to_path_buf());
    let wal_path = {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        PathBuf::from(wal)
    };
    let callbacks = Callbacks::on(runtime.as_ref());
    let thread = std::thread::Builder::new()
        .name("kith-sqlite-writer".to_owned())
        .spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            // The writer borrows the connection (its statements do): the
            // connection closes after it.
            let writer = SqliteWriter {
                conn: &conn,
                hot: Hot::prepare(&conn),
                heads: HashMap::default(),
                rooms: HashMap::default(),
                tail,
                checkpointer,
                wal_path,
                commits_since_look: 0,
                callbacks,
                stats,
                index_turn: false,
                fts: Fts {
                    next_rowid,
                    // Unknown after a restart: check once.
                    waiting: 1,
                    oldest: Some(Instant::now()),
                },
            };
            writer.run(rx);
        })
        .map_err(|source| StoreError::Io {
            path: PathBuf::from(path),
            source,
        })?;
    Ok(thread)
}

/// The writer's connection to the database at `path`, set up as the writer
/// uses it (also what `tail::bench` measures the log's tail with).
pub(super) fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // Room for every statement the writer runs (rusqlite keeps 16 by default).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_handler(Some(writer_busy))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    // Statement journals in memory: moving a chunk of the log's tail into
    // `inbox` is one multi-row statement, whose pages SQLite copies aside
    // first (it may abort on a foreign key), and past 64 KiB it spilled them
    // to a temporary file, opened, written and deleted per statement: 4.5 %
    // of the server's CPU with archived chat at 20,000 msg/s.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints are the checkpointer's ([`Checkpointer`]): none in the commit path.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Nor when a file closes: the log's tail detaches its generations' files
    // to delete them, WAL and all (`tail`).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    // The commit that starts the log over cuts the file back to this.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(conn)
}

struct SqliteWriter<'c> {
    /// Owned by the writer's thread, which drops it after the writer.
    conn: &'c Connection,
    /// The statements of every commit, held prepared; `None` if preparing
    /// them failed (rusqlite's cache serves then).
    hot: Option<Hot<'c>>,
    /// Batches and jobs taken, for metrics.
    stats: Arc<super::WriterStats>,
    /// The last sequence number handed out per owner (the head of its log).
    /// Loaded on first use from the greater of `users.inbox_seq` and the
    /// newest entry; `users.inbox_seq` is brought up to date before anything
    /// deletes an owner's newest entries (`devices::keep_seq_marks`), so a
    /// number is never handed out twice, even across restarts.
    heads: HashMap<String, i64>,
    /// Rooms' fill rows and marks as committed (this thread is their only
    /// writer), loaded on first use.
    rooms: HashMap<String, Arc<RoomRows>>,
    /// 1:1 entries and members' copies waiting to be delivered or moved into
    /// `inbox` ([`tail`]).
    tail: Tail,
    fts: Fts,
    /// Whether a full-text pass may follow the tail's step between the next
    /// two commits (one did not between the last two).
    index_turn: bool,
    /// Stopped (and waited for) when the writer ends.
    checkpointer: Checkpointer,
    /// The WAL file, and commits since its size was last looked at.
    wal_path: PathBuf,
    commits_since_look: u32,
    callbacks: Callbacks,
}

/// A thread with a connection of its own that checkpoints the WAL every
/// [`CHECKPOINT_EVERY`] (`PASSIVE`: it never blocks the writer or readers).
/// With SQLite's automatic checkpoints the commit that crosses 1,000 WAL pages
/// copies them back and `fsync`s the database, and every message queued behind
/// that commit waits for the disk; every connection of the store has them off.
///
/// Under a steady stream of commits a passive checkpoint never reaches the
/// log's end, and SQLite starts the log over only once it has: the file grew
/// without bound (2.8 GB in one 25 s chat benchmark step at 10,000 msg/s, the
/// writer waiting on ext4 block allocation as it grew). So once the log
/// holds [`WAL_RESTART_PAGES`], the checkpointer writes the database's dirty
/// pages out ([`flush_ahead`]), copies all but the last few pages and raises
/// `restart_due`; the writer, between two commits, copies
/// those (its own checkpoint reaches the end: nothing else appends) and its next
/// commit starts the log from the beginning of the file, which
/// `journal_size_limit` keeps at most [`WAL_SIZE_LIMIT`]. (Should this thread
/// fall behind, the writer checkpoints on its own once the file reaches twice
/// that: `SqliteWriter::wal_overgrown`.) The writer does that
/// part, not a `RESTART` checkpoint here, so that it never sleeps in SQLite's
/// busy handler (1, 2, 5 … ms) behind a checkpoint holding commits back.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set when the log is long and almost all copied: the writer finishes.
    restart_due: Arc<AtomicBool>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        let database = path.to_path_buf();
        conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let restart_due = Arc::new(AtomicBool::new(false));
        let due = restart_due.clone();
        let thread = std::thread::Builder::new()
            .name("kith-sqlite-checkpoint".to_owned())
            .spawn(move || {
                let checkpoint = || {
                    if passive_checkpoint(&conn).is_none_or(|(pages, _)| pages < WAL_RESTART_PAGES)
                    {
                        return;
                    }
                    flush_ahead(&database);
                    // Each pass leaves only what was committed while it ran,
                    // so the writer has little left to copy.
                    for _ in 0..RESTART_APPROACH_PASSES {
                        match passive_checkpoint(&conn) {
                            Some((pages, copied)) if pages - copied > RESTART_APPROACH_PAGES => {}
                            _ => break,
                        }
                    }
                    due.store(true, Ordering::Relaxed);
                };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    checkpoint();
                    // As durable as the main file's commits (synced by the
                    // checkpoint): the entries waiting in the tail.
                    super::tail::sync(&database);
                }
                checkpoint();
            })
            .map_err(|source| StoreError::Io {
                path: PathBuf::from(path),
                source,
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
            restart_due,
        })
    }
}

/// The writer was waiting and `job` woke it: under load (the previous commit
/// ended within [`BUSY_WITHIN`]), let more gather for [`COMMIT_DELAY`] first,
/// so that one commit and one wake-up carry them.
fn let_more_gather(job: Job, last_commit: Instant) -> Job {
    if last_commit.elapsed() < BUSY_WITHIN {
        std::thread::sleep(COMMIT_DELAY);
    }
    job
}

/// How long the writer waits between two tries of a lock another connection
/// holds (e.g. a retention chunk on the pool), and for how many tries in all.
const BUSY_STEP: Duration = Duration::from_micros(100);
const BUSY_TRIES: i32 = (SQLITE_BUSY_TIMEOUT.as_micros() / BUSY_STEP.as_micros()) as i32;

/// The writer's busy handler: SQLite's own sleeps 1, 2, 5, 10 … 100 ms between
/// tries, so a lock held for 3 ms cost the writer, and every message queued
/// behind it, 8 ms; this one tries again every [`BUSY_STEP`], for as long in all
/// as the other connections' busy timeout.
fn writer_busy(tries: i32) -> bool {
    if tries >= BUSY_TRIES {
        return false;
    }
    std::thread::sleep(BUSY_STEP);
    true
}

/// Writes the database file's dirty pages out before the writer's last
/// checkpoint of a log that is about to start over. A passive checkpoint
/// syncs the database file only when it reaches the log's end, which under
/// load only the writer's does (nothing commits while it runs): it then
/// waited in `fsync` for all that the checkpointer had copied since the log
/// last started over (30–85 ms at 20,000–24,000 archived msg/s, every message
/// queued behind it; 2–5 ms once flushed here). `syncfs` on the database's
/// file system, not `fsync` on a descriptor of the database file opened
/// here: closing that would drop the POSIX locks that SQLite's connections in
/// this process hold on the file. Linux only; elsewhere the writer waits.
#[cfg(target_os = "linux")]
fn flush_ahead(database: &Path) {
    let started = Instant::now();
    let dir = match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let flushed = std::fs::File::open(dir)
        .and_then(|dir| rustix::fs::syncfs(&dir).map_err(std::io::Error::from));
    match flushed {
        Ok(()) => tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            "file system synced before the log starts over"
        ),
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "syncing the database's file system failed")
        }
    }
}

/// Elsewhere the writer's last checkpoint before the log starts over waits
/// for the disk.
#[cfg(not(target_os = "linux"))]
fn flush_ahead(_database: &Path) {}

/// `PRAGMA wal_checkpoint(PASSIVE)`: the pages in the log and how many of them
/// are copied into the database; `None` (logged) if it failed.
fn passive_checkpoint(conn: &Connection) -> Option<(i64, i64)> {
    // `main.`: unqualified, it would checkpoint the log's tail's files too.
    let done = conn.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match done {
        Ok((wal_pages, copied)) => {
            tracing::trace!(wal_pages, copied, "checkpoint");
            Some((wal_pages, copied))
        }
        Err(error) => {
            tracing::warn!(%error, "WAL checkpoint failed");
            None
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where the full-text index stands.
struct Fts {
    /// `fts_state.next_rowid` as committed.
    next_rowid: i64,
    /// Entries with a body committed but maybe not indexed (an estimate that is
    /// never 0 while some are).
    waiting: usize,
    /// When the oldest of them was committed.
    oldest: Option<Instant>,
}

impl Fts {
    fn due(&self) -> bool {
        self.waiting >= INDEX_BEHIND_ROWS
            || self.oldest.is_some_and(|t| t.elapsed() >= INDEX_BEHIND)
    }
}

impl SqliteWriter<'_> {
    fn run(mut self, rx: flume::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut last_commit = Instant::now();
        loop {
            let first = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                // Idle: once nothing has come for INDEX_IDLE, catch the index up
                // a chunk at a time, then look again. Not at once: background
                // work must not take the core from deliveries in a short lull
                // (an offline device catching up acknowledges every few ms).
                // The tail is compacted when due, busy or not, and a closed
                // generation drained a chunk at a time (a job that comes
                // waits for one chunk at most).
                Err(TryRecvError::Empty)
                    if self.fts.waiting > 0 || self.tail.due_in().is_some() =>
                {
                    let tail_due = self.tail.due_in();
                    let wait = match tail_due {
                        Some(due) if self.fts.waiting == 0 || due < INDEX_IDLE => due,
                        _ => INDEX_IDLE,
                    };
                    match rx.recv_timeout(wait) {
                        Ok(job) => let_more_gather(job, last_commit),
                        Err(RecvTimeoutError::Timeout) => {
                            if tail_due.is_some_and(|due| due <= wait) {
                                self.compact();
                            } else {
                                self.index_pass();
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Empty) => match rx.recv() {
                    Ok(job) => let_more_gather(job, last_commit),
                    Err(_) => break,
                },
            };
            fill(&mut batch, first, &rx, &self.stats);
            self.commit(&mut batch);
            last_commit = Instant::now();
            if self.checkpointer.restart_due.swap(false, Ordering::Relaxed) || self.wal_overgrown()
            {
                // See `Checkpointer`: the next commit starts the log over.
                let started = Instant::now();
                passive_checkpoint(self.conn);
                tracing::debug!(
                    micros = started.elapsed().as_micros() as u64,
                    "writer's checkpoint before the log starts over"
                );
            }
            // Background work between two commits: the tail's step each
            // time (a closed generation must be moved before it is used
            // again), a full-text pass at most every other time while the
            // tail has work (back to back they held the next commit back for
            // tens of ms).
            let tail_worked = self.compact();
            if self.fts.due() && (!tail_worked || self.index_turn) {
                self.index_pass();
                self.index_turn = false;
            } else {
                self.index_turn = true;
            }
        }
        // Closing: what is not indexed yet is indexed after the next start
        // (`fts_state` says from where).
    }

    /// The backstop when the checkpointer falls behind (a busy core): whether
    /// the WAL file, cut back to [`WAL_SIZE_LIMIT`] whenever the log starts
    /// over, has grown to twice that. Looked at every [`WAL_LOOK_EVERY`] commits.
    fn wal_overgrown(&mut self) -> bool {
        self.commits_since_look += 1;
        if self.commits_since_look < WAL_LOOK_EVERY {
            return false;
        }
        self.commits_since_look = 0;
        std::fs::metadata(&self.wal_path).is_ok_and(|m| m.len() > 2 * WAL_SIZE_LIMIT as u64)
    }

    /// Commits one batch and answers its jobs.
    fn commit(&mut self, batch: &mut Vec<Job>) {
        // Index requests are answered after the commit and a full pass.
        let mut index_requests: Vec<oneshot::Sender<Result<()>>> = Vec::new();
        let jobs = std::mem::take(batch);
        for job in jobs {
            match job {
                Job::Index { reply } => index_requests.push(reply),
                // Whole-tail work runs in transactions of its own, first.
                Job::Recover { reply } => {
                    let _ = reply.send(self.recover());
                }
                Job::Compact { reply } => {
                    let compacted =
                        self.tail
                            .compact_all(self.conn, &self.heads, self.fts.next_rowid);
                    let _ = reply.send(compacted.map(|(moved, dropped)| {
                        self.note_moved(moved);
                        dropped
                    }));
                }
                job => batch.push(job),
            }
        }
        for job in batch.iter() {
            if let Job::Forget { owner, .. } = job {
                self.heads.remove(owner);
                if let Err(error) = self.tail.forget(self.conn, owner) {
                    tracing::warn!(%error, "deleting an account's entries from the log's tail failed");
                }
                // A room that is gone, or a member whose account is: its rows
                // went with it (`ON DELETE CASCADE`).
                self.rooms.remove(owner);
                for rows in self.rooms.values_mut() {
                    if rows.members.contains_key(owner) {
                        Arc::make_mut(rows).members.remove(owner);
                    }
                }
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            match self.write(batch) {
                Ok(results) => {
                    tracing::debug!(
                        jobs = batch.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "group commit"
                    );
                    answer(batch.drain(..), results, &self.callbacks);
                }
                Err(error @ StoreError::PartialCommit(_)) => {
                    // Numbers, rooms' rows and the tail as committed are
                    // unknown here: reloaded.
                    self.heads.clear();
                    self.rooms.clear();
                    tracing::error!(%error, size = batch.len(), "group commit failed part-way");
                    fail(batch.drain(..), &error, &self.callbacks);
                }
                Err(error) => {
                    // One transaction per job, so one bad job can't fail the others.
                    // An owner deleted since it was cached fails on its foreign
                    // key: reloading finds it gone (`NoSuchUser`); but an entry
                    // for the tail, whose files have no foreign key, is
                    // answered and deleted when the writer forgets the owner.
                    self.heads.clear();
                    self.rooms.clear();
                    tracing::warn!(%error, size = batch.len(), "group commit failed; retrying one by one");
                    for job in batch.drain(..) {
                        let job = vec![job];
                        match self.write(&job) {
                            Ok(results) => answer(job.into_iter(), results, &self.callbacks),
                            Err(error) => fail(job.into_iter(), &error, &self.callbacks),
                        }
                    }
                }
            }
        }
        if !index_requests.is_empty() {
            // Not trusting `waiting`: rows written by other connections (a
            // restore, a test) are indexed too.
            let mut outcome = Ok(());
            loop {
                match self.try_index_pass() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            for reply in index_requests {
                let _ = reply.send(match &outcome {
                    Ok(()) => Ok(()),
                    Err(error) => Err(StoreError::Corrupt(format!("indexing failed: {error}"))),
                });
            }
        }
    }

    /// Runs every job of the batch in one transaction. The error is a database
    /// failure (nothing committed); an unknown owner only fails its own entry.
    fn write(&mut self, batch: &[Job]) -> Result<Vec<Done>> {
        let tx = Immediate::begin_with(self.conn, self.hot.as_ref())?;

        // What the batch's group messages and room changes need to know.
        let needs = rooms::needs(batch);
        let state = match &needs {
            Some(needs) => {
                let mut reads = SqliteReads {
                    tx: &tx,
                    heads: &self.heads,
                    rooms: &self.rooms,
                };
                rooms::at_once(rooms::read(needs, &mut reads))
                    .ok_or_else(|| StoreError::Corrupt("a room read waited".to_owned()))??
            }
            None => RoomState::default(),
        };
        let no_one = HashSet::default();
        let mut plan = plan(batch, &state, needs.as_ref().map_or(&no_one, |n| &n.live));

        // Reserve sequence numbers: per owner, as many as it has rows here.
        // From `heads` (this thread is the only appender), loading an owner
        // not seen since start: no `users` row to update per owner and commit.
        let mut bases: HashMap<&str, i64> =
            HashMap::with_capacity_and_hasher(plan.counts.len(), Default::default());
        for (owner, _) in &plan.counts {
            if let Some(last) = last_seq(&tx, &self.heads, owner)? {
                // Entries waiting in the tail count too (`heads` may have
                // been cleared since they were numbered).
                let last = last.max(self.tail.newest(owner).unwrap_or(0));
                bases.insert(owner, last + 1);
            }
        }
        let numbered = plan.number(&bases);

        // Readers waiting on a settle see the owner's entries in `inbox`.
        let mut moved = Moved::none();
        let settles: &[&str] = &plan.settles;
        // A settle of an owner with waiting entries deletes them from the
        // tail's files (even when none of them is new to `inbox`).
        let settles_tail = settles.iter().any(|owner| self.tail.waits(owner));
        // An injected failure of the tail's part of this commit leaves the
        // rows a settle deletes there.
        #[cfg(feature = "fault-injection")]
        let settle_fault = settles_tail
            && crate::fault::take(
                self.conn.path().unwrap_or_default(),
                crate::fault::Kind::Settle,
            );
        #[cfg(not(feature = "fault-injection"))]
        let settle_fault = false;
        for owner in settles {
            moved.add(self.tail.settle(&tx, owner, !settle_fault)?);
        }

        // Entries whose origin key is already in the log are skipped
        // (`ON CONFLICT DO NOTHING`): no row changes.
        let mut written = vec![false; numbered.rows.len()];
        let mut with_body = moved.entries;
        let mut lowest_rowid = moved.lowest_rowid;
        let mut added: Vec<Added> = Vec::with_capacity(numbered.rows.len());
        // Which rows wait in the tail: those that may (1:1 entries, live
        // members' copies) of owners with a session.
        let mut to_tail = vec![false; numbered.rows.len()];
        if let Some(online) = self.tail.online().filter(|_| self.tail.ready()) {
            let mut asked: HashMap<&str, bool> =
                HashMap::with_capacity_and_hasher(plan.counts.len(), Default::default());
            let mut left = self.tail.room_left();
            for (i, row) in numbered.rows.iter().enumerate() {
                if let Some((owner, _, _)) = row
                    && plan.may_wait[i]
                    && left > 0
                {
                    to_tail[i] = *asked
                        .entry(owner)
                        .or_insert_with(|| online(owner) && !self.tail.lagging(owner));
                    left -= usize::from(to_tail[i]);
                }
            }
        }
        // The batch's rows (and their index) going to the tail, or not.
        let to_tail = &to_tail;
        let rows = |tail: bool| {
            numbered
                .rows
                .iter()
                .enumerate()
                .filter(move |(i, _)| to_tail[*i] == tail)
                .filter_map(|(i, row)| row.map(|row| (i, row)))
        };
        if to_tail.contains(&true) {
            // Origin keys appended to the tail by this batch.
            let mut origins: HashSet<String> = HashSet::default();
            let mut append = tx.prepare_cached(&format!(
                "INSERT INTO {} ({}, id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                self.tail.current_table(),
                tail::COLUMNS
            ))?;
            for (i, (owner, seq, entry)) in rows(true) {
                let origin_key = match entry.origin() {
                    Some(origin) => {
                        let key = tail::origin_key(owner, origin);
                        if origins.contains(&key) || self.tail.has_origin(&tx, owner, origin)? {
                            continue;
                        }
                        origins.insert(key.clone());
                        Some(key)
                    }
                    None => None,
                };
                let id = self.tail.take_id();
                let row = entry_params(owner, seq, entry);
                append.execute(rusqlite::params_from_iter(
                    row.iter().chain([&ToSqlOutput::from(id)]),
                ))?;
                written[i] = true;
                added.push(Added {
                    owner,
                    id,
                    seq,
                    origin_key,
                });
            }
        }
        // An entry this batch wrote to `inbox`: found there after a commit
        // that failed part-way, it says the main file committed.
        let mut witness: Option<(&str, i64)> = None;
        {
            let mut insert = insert_entry(&tx)?;
            for (i, (owner, seq, entry)) in rows(false) {
                // A key the tail has (or had) is a duplicate too.
                if let Some(origin) = entry.origin()
                    && self.tail.remembers(owner, origin)
                {
                    continue;
                }
                let changed =
                    insert.execute(rusqlite::params_from_iter(entry_params(owner, seq, entry)))?;
                if changed == 1 {
                    written[i] = true;
                    witness.get_or_insert((owner, seq));
                    if entry.has_body {
                        with_body += 1;
                        lowest_rowid = lowest_rowid.min(tx.last_insert_rowid());
                    }
                }
            }
        }
        // A reused rowid below the index's mark must not be skipped by it.
        let lowered = lowest_rowid < self.fts.next_rowid;
        if lowered {
            tx.prepare_cached("UPDATE fts_state SET next_rowid = MIN(next_rowid, ?1)")?
                .execute(params![lowest_rowid])?;
        }

        for write in &plan.room_writes {
            match write {
                RoomWrite::Fill { room, owner, fill } => {
                    tx.prepare_cached(rooms::sql::SET_FILL)?.execute(params![
                        room,
                        owner,
                        rooms::fill_seq(*fill)
                    ])?
                }
                RoomWrite::Gone { room, owner } => tx
                    .prepare_cached(rooms::sql::DROP_FILL)?
                    .execute(params![room, owner])?,
                RoomWrite::Mark { room, seq } => tx
                    .prepare_cached(rooms::sql::SET_MARK)?
                    .execute(params![room, seq])?,
            };
        }

        for ((owner, resource), (seq, now_micros)) in &plan.acks {
            tx.ack(owner, resource, *seq, *now_micros)?;
        }
        let mut attached = Vec::with_capacity(plan.attaches.len());
        for (owner, resource, now_micros) in &plan.attaches {
            let mut attach = tx.prepare_cached(crate::devices::ATTACH)?;
            crate::read::bind(
                &mut attach,
                &[Arg::Text(owner), Arg::Text(resource), Arg::Int(*now_micros)],
            )?;
            let mut rows = attach.raw_query();
            attached.push(match rows.next()? {
                Some(row) => Some(crate::devices::start_from_row(row)?),
                None => None,
            });
        }
        let mut seen = Vec::with_capacity(plan.seen.len());
        for (owner, at_secs, status) in &plan.seen {
            let mut upsert = tx.prepare_cached(crate::SET_LAST_ACTIVITY)?;
            crate::read::bind(
                &mut upsert,
                &[Arg::Text(owner), Arg::Int(*at_secs), Arg::Text(status)],
            )?;
            seen.push(upsert.raw_execute()? == 1);
        }
        let committed = tx.commit();
        #[cfg(feature = "fault-injection")]
        let committed = committed.and_then(|()| self.injected_tail_failure(&added, settle_fault));
        match committed {
            Ok(()) => {
                self.tail.settled(settles);
                self.tail.committed(added);
            }
            // Nothing written to a tail file: the main file's commit failed
            // alone, and nothing is stored.
            Err(error) if added.is_empty() && !settles_tail => return Err(error.into()),
            Err(error) => {
                // With a tail file written, SQLite commits the main file's WAL
                // first, then the tail's: the main file's part may stand
                // without the rows appended to the tail (a full disk). If it
                // does, those rows go into `inbox` now and the batch stands:
                // otherwise a group message would be in its room's log and past
                // its live members' fill marks without their copies.
                let rows = rows(true).filter(|(i, _)| written[*i]).map(|(_, row)| row);
                // An entry this batch wrote to `inbox`; else the first one a
                // settle moved there (a rowid new to `inbox`).
                let witness = match witness {
                    Some((owner, seq)) => Some(Witness::Entry(owner, seq)),
                    None if moved.entries > 0 => Some(Witness::Rowid(moved.lowest_rowid)),
                    None => None,
                };
                // The current generation's file may hold some of the rows
                // all the same (whatever comes of the repair): replaced
                // before it is used again.
                self.tail.committed_unknown();
                let (repaired, lowest) = self.repair_partial(witness, rows, &error)?;
                with_body += repaired;
                lowest_rowid = lowest_rowid.min(lowest);
                // The tail is left as it is, and counted as still holding what
                // it held: a settle moves it (again) before the next read.
                tracing::warn!(%error, "a commit failed after the main file: the log's tail rows went into inbox instead");
            }
        }
        if self.heads.len() + numbered.reserved.len() > MAX_HEADS {
            self.heads.clear();
        }
        for (owner, last) in &numbered.reserved {
            // An owner already known keeps its key: no name copied per batch.
            match self.heads.get_mut(*owner) {
                Some(head) => *head = *last,
                None => {
                    self.heads.insert((*owner).to_owned(), *last);
                }
            }
        }
        self.fts.next_rowid = self.fts.next_rowid.min(lowest_rowid);
        if with_body > 0 {
            self.fts.waiting += with_body;
            self.fts.oldest.get_or_insert_with(Instant::now);
        }
        let room_writes = std::mem::take(&mut plan.room_writes);
        let answers = plan.answers(&numbered, &written, &attached, &seen);
        rooms::keep(&mut self.rooms, state.rows, &room_writes);
        Ok(answers)
    }

    /// [`crate::fault::fail_next_tail_commit`] and
    /// [`crate::fault::fail_next_tail_settle`]: if one is armed for this
    /// database (the second one's `settle_fault` taken in `write`, whose
    /// settles then kept their rows), takes the rows the commit just appended
    /// to the tail back out and fails — the state a tail file failing after
    /// the main file committed leaves.
    #[cfg(feature = "fault-injection")]
    fn injected_tail_failure(
        &self,
        added: &[Added<'_>],
        settle_fault: bool,
    ) -> rusqlite::Result<()> {
        let append_fault = || {
            !added.is_empty()
                && crate::fault::take(
                    self.conn.path().unwrap_or_default(),
                    crate::fault::Kind::Append,
                )
        };
        if !settle_fault && !append_fault() {
            return Ok(());
        }
        let mut delete = self.conn.prepare(&format!(
            "DELETE FROM {} WHERE id = ?1",
            self.tail.current_table()
        ))?;
        for row in added {
            delete.execute(params![row.id])?;
        }
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("injected: the log's tail file failed to commit".to_owned()),
        ))
    }

    /// After a commit that failed with rows appended to the log's tail: did
    /// the main file commit? SQLite commits the files of a transaction one by
    /// one, the main file first, so if it did not, nothing did — a plain error,
    /// which the caller retries job by job. If it did (the `witness`, a row
    /// the batch wrote to `inbox`, is there), the tail's part may be lost:
    /// `rows` go into `inbox` (`ON CONFLICT DO NOTHING`: a tail file that did
    /// commit moves its copies later and skips them). Without a witness (the
    /// main file had only acks, attaches, or settles that moved nothing new)
    /// nothing tells; the batch fails as [`StoreError::PartialCommit`] (a
    /// retry could store twice).
    /// Returns how many rows with a body went in and the lowest rowid among
    /// them.
    fn repair_partial<'r>(
        &self,
        witness: Option<Witness<'_>>,
        rows: impl Iterator<Item = (&'r str, i64, &'r OwnedEntry)>,
        error: &rusqlite::Error,
    ) -> Result<(usize, i64)> {
        let partial = || StoreError::PartialCommit(error.to_string());
        let Some(witness) = witness else {
            return Err(partial());
        };
        let main_committed = match witness {
            Witness::Entry(owner, seq) => self
                .conn
                .prepare_cached("SELECT 1 FROM inbox WHERE owner = ?1 AND seq = ?2")
                .and_then(|mut found| found.exists(params![owner, seq])),
            Witness::Rowid(rowid) => self
                .conn
                .prepare_cached("SELECT 1 FROM inbox WHERE rowid = ?1")
                .and_then(|mut found| found.exists(params![rowid])),
        }
        .map_err(|_| partial())?;
        if !main_committed {
            return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some(format!("the commit failed: {error}")),
            )));
        }
        let repaired = (|| -> rusqlite::Result<(usize, i64)> {
            let tx = Immediate::begin(self.conn)?;
            let mut with_body = 0;
            let mut lowest_rowid = i64::MAX;
            {
                let mut insert = insert_entry(&tx)?;
                for (owner, seq, entry) in rows {
                    let changed = insert
                        .execute(rusqlite::params_from_iter(entry_params(owner, seq, entry)))?;
                    if changed == 1 && entry.has_body {
                        with_body += 1;
                        lowest_rowid = lowest_rowid.min(tx.last_insert_rowid());
                    }
                }
            }
            // The mark as committed (the failed commit may have lowered it
            // already), never raised.
            if with_body > 0 {
                tx.prepare_cached("UPDATE fts_state SET next_rowid = MIN(next_rowid, ?1)")?
                    .execute(params![lowest_rowid])?;
            }
            tx.commit()?;
            Ok((with_body, lowest_rowid))
        })();
        repaired.map_err(|repair| {
            tracing::error!(%repair, "writing the log's tail rows into inbox failed");
            partial()
        })
    }

    /// Moves the log's tail on to its next generation if due, and drains a
    /// chunk of a closed one if the log keeps delivered entries ([`tail`]),
    /// logging a failure (the entries keep waiting; the next try retries).
    /// Returns whether it did any (a rotation, or entries moved).
    fn compact(&mut self) -> bool {
        let started = Instant::now();
        let generation = self.tail.current_table();
        let rotated = self
            .tail
            .rotate_if_due(self.conn, &self.heads, self.fts.next_rowid);
        let moved = self.tail_worked("compacting", started, rotated);
        let rotated = moved > 0 || self.tail.current_table() != generation;
        let started = Instant::now();
        let drained = self.tail.drain_step(self.conn, self.fts.next_rowid);
        rotated || self.tail_worked("draining", started, drained) > 0
    }

    /// Notes what the tail's `work` (since `started`) moved into `inbox`, and
    /// logs it when it took 1 ms or more (or failed).
    /// Returns the entries moved.
    fn tail_worked(&mut self, work: &str, started: Instant, outcome: Result<Moved>) -> usize {
        match outcome {
            Ok(moved) => {
                let micros = started.elapsed().as_micros() as u64;
                if micros >= 1_000 {
                    tracing::debug!(work, micros, moved = moved.entries, "log's tail moved on");
                }
                let entries = moved.entries;
                self.note_moved(moved);
                entries
            }
            Err(error) => {
                tracing::warn!(%error, work, "the log's tail failed; will retry");
                0
            }
        }
    }

    /// Moves what a previous run left in the log's tail into `inbox` (once:
    /// later, what is there is this run's).
    fn recover(&mut self) -> Result<()> {
        let moved = self.tail.recover(self.conn)?;
        if moved.entries > 0 {
            tracing::info!(
                entries = moved.entries,
                "moved entries left in the log's tail into the log"
            );
        }
        self.note_moved(moved);
        Ok(())
    }

    /// The full-text index's bookkeeping after entries moved into `inbox`
    /// (its durable mark was lowered in the moving transaction).
    fn note_moved(&mut self, moved: Moved) {
        self.fts.next_rowid = self.fts.next_rowid.min(moved.lowest_rowid);
        if moved.entries > 0 {
            self.fts.waiting += moved.entries;
            self.fts.oldest.get_or_insert_with(Instant::now);
        }
    }

    /// One full-text pass, logging a failure (the entries stay waiting and the
    /// next pass retries them). Returns whether more may be waiting.
    fn index_pass(&mut self) -> bool {
        let started = Instant::now();
        match self.try_index_pass() {
            Ok(more) => {
                tracing::debug!(
                    micros = started.elapsed().as_micros() as u64,
                    more,
                    "full-text pass"
                );
                more
            }
            Err(error) => {
                tracing::warn!(%error, "full-text indexing failed; will retry");
                // Don't spin on a failing database (the idle loop indexes while
                // anything waits): the next pass comes once commits make it due
                // again, or with a search. The rows stay behind `fts_state`'s
                // mark, so that pass finds them.
                self.fts.waiting = 0;
                self.fts.oldest = None;
                false
            }
        }
    }

    /// One [`full_text_pass`]. Returns whether more may be waiting.
    fn try_index_pass(&mut self) -> Result<bool> {
        let pass = full_text_pass(self.conn)?;
        self.fts.next_rowid = pass.next_rowid;
        if pass.more {
            self.fts.waiting = self.fts.waiting.saturating_sub(pass.indexed).max(1);
        } else {
            self.fts.waiting = 0;
            self.fts.oldest = None;
        }
        Ok(pass.more)
    }
}

/// What a [`full_text_pass`] did.
pub(super) struct FullTextPass {
    /// Rows indexed.
    pub indexed: usize,
    /// The index's mark after it (`fts_state.next_rowid`).
    pub next_rowid: i64,
    /// Whether rows beyond it wait.
    pub more: bool,
}

/// Indexes up to [`INDEX_CHUNK`] rows of `inbox` from `fts_state.next_rowid`
/// on in one transaction, moving the mark past them.
pub(super) fn full_text_pass(conn: &Connection) -> Result<FullTextPass> {
    let tx = Immediate::begin(conn)?;
    let from: i64 = tx.query_row("SELECT next_rowid FROM fts_state", [], |row| row.get(0))?;
    let last: i64 = tx.query_row("SELECT COALESCE(MAX(rowid), 0) FROM inbox", [], |row| {
        row.get(0)
    })?;
    if last < from {
        tx.commit()?;
        return Ok(FullTextPass {
            indexed: 0,
            next_rowid: from,
            more: false,
        });
    }
    let to = last.min(from + INDEX_CHUNK - 1);
    // The rows from the mark on are in no index yet (the triggers that
    // follow edits and deletions leave them alone: migration 47).
    let indexed = tx
        .prepare_cached(
            "INSERT INTO inbox_fts (rowid, body)
             SELECT id, body FROM inbox WHERE id BETWEEN ?1 AND ?2 AND body IS NOT NULL",
        )?
        .execute(params![from, to])?;
    tx.prepare_cached("UPDATE fts_state SET next_rowid = ?1")?
        .execute(params![to + 1])?;
    tx.commit()?;
    Ok(FullTextPass {
        indexed,
        next_rowid: to + 1,
        more: to < last,
    })
}

/// The writer's transactions (commits and full-text passes), from cached
/// statements, rolled back when dropped uncommitted. rusqlite's `Transaction`
/// prepares `BEGIN` and `COMMIT` anew each time (`execute_batch`): with a
/// commit per message at low rates that was 6–8 % of the server's
/// instructions (callgrind).
pub(super) struct Immediate<'c, 'h> {
    conn: &'c Connection,
    /// The writer's own `BEGIN`, `COMMIT` and `ROLLBACK`, when it has them.
    hot: Option<&'h Hot<'c>>,
}

/// The statements every commit of the writer runs, prepared once and held:
/// through rusqlite's cache each costs a hash of its SQL, a key allocated
/// and the cache's list relinked on the way out and back (with a commit per
/// message at low rates, some 6,000 instructions a commit: callgrind).
pub(super) struct Hot<'c> {
    begin: RefCell<Statement<'c>>,
    touch: RefCell<Statement<'c>>,
    commit: RefCell<Statement<'c>>,
    rollback: RefCell<Statement<'c>>,
    ack_device: RefCell<Statement<'c>>,
    ack_user: RefCell<Statement<'c>>,
}

impl<'c> Hot<'c> {
    fn prepare(conn: &'c Connection) -> Option<Hot<'c>> {
        let prepare = |sql: &str| conn.prepare(sql).map(RefCell::new);
        let hot = (|| {
            Ok::<_, rusqlite::Error>(Hot {
                begin: prepare("BEGIN")?,
                touch: prepare(TOUCH)?,
                commit: prepare("COMMIT")?,
                rollback: prepare("ROLLBACK")?,
                ack_device: prepare(ACK_DEVICE)?,
                ack_user: prepare(ACK_USER)?,
            })
        })();
        match hot {
            Ok(hot) => Some(hot),
            Err(error) => {
                tracing::warn!(%error, "preparing the writer's statements; using the cache");
                None
            }
        }
    }
}

/// Runs one of the writer's own statements: `held` when [`Hot`] has it
/// prepared, else `sql` through rusqlite's cache.
fn execute(
    conn: &Connection,
    held: Option<&RefCell<Statement<'_>>>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    match held {
        Some(statement) => statement.borrow_mut().execute(params),
        None => conn.prepare_cached(sql)?.execute(params),
    }
}

/// A write that changes nothing, to take the main file's write lock
/// ([`Immediate::begin`]).
const TOUCH: &str = "UPDATE fts_state SET next_rowid = next_rowid WHERE 0";
/// A device's cursor moves to what it acknowledged, and its owner's delivered mark.
const ACK_DEVICE: &str = "UPDATE devices SET cursor = ?3, last_seen_micros = ?4
    WHERE owner = ?1 AND resource = ?2 AND cursor < ?3";
const ACK_USER: &str =
    "UPDATE users SET delivered_seq = ?2 WHERE username = ?1 AND delivered_seq < ?2";

impl<'c, 'h> Immediate<'c, 'h> {
    /// Takes the main file's write lock at once, as `BEGIN IMMEDIATE` would;
    /// but that takes every attached file's too, and the log's tail attaches
    /// four ([`tail`]): a commit per message then cost the writer 10,000 more
    /// instructions (callgrind). A deferred transaction whose first statement
    /// is a write that changes nothing locks only the main file (retried by
    /// the busy handler as `BEGIN IMMEDIATE` is); a tail file is locked when
    /// written, and only the writer writes them.
    pub(super) fn begin(conn: &'c Connection) -> rusqlite::Result<Immediate<'c, 'h>> {
        Immediate::begin_with(conn, None)
    }

    /// [`Immediate::begin`] with the writer's own statements, if it has them.
    fn begin_with(
        conn: &'c Connection,
        hot: Option<&'h Hot<'c>>,
    ) -> rusqlite::Result<Immediate<'c, 'h>> {
        execute(conn, hot.map(|hot| &hot.begin), "BEGIN", [])?;
        let tx = Immediate { conn, hot };
        execute(conn, hot.map(|hot| &hot.touch), TOUCH, [])?;
        Ok(tx)
    }

    pub(super) fn commit(self) -> rusqlite::Result<()> {
        execute(self.conn, self.hot.map(|hot| &hot.commit), "COMMIT", [])?;
        Ok(())
    }

    /// Moves a device's cursor (and its owner's delivered mark) to `seq`.
    fn ack(&self, owner: &str, resource: &str, seq: i64, now_micros: i64) -> rusqlite::Result<()> {
        execute(
            self.conn,
            self.hot.map(|hot| &hot.ack_device),
            ACK_DEVICE,
            params![owner, resource, seq, now_micros],
        )?;
        execute(
            self.conn,
            self.hot.map(|hot| &hot.ack_user),
            ACK_USER,
            params![owner, seq],
        )?;
        Ok(())
    }
}

impl std::ops::Deref for Immediate<'_, '_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Immediate<'_, '_> {
    fn drop(&mut self) {
        // Committed, or never begun (or SQLite rolled back on its own).
        if self.conn.is_autocommit() {
            return;
        }
        let rolled_back = execute(self.conn, self.hot.map(|hot| &hot.rollback), "ROLLBACK", []);
        if let Err(error) = rolled_back {
            tracing::warn!(%error, "rolling back the writer's transaction failed");
        }
    }
}

/// A row a batch wrote to `inbox`, looked for after its commit failed
/// part-way: there, the main file committed.
enum Witness<'w> {
    /// An entry appended (owner, number).
    Entry(&'w str, i64),
    /// The lowest rowid of the entries a settle moved (new rowids: none
    /// existed before the batch, and only the writer inserts).
    Rowid(i64),
}

/// Appends an entry to `inbox` (values from [`entry_params`]), skipping one
/// whose origin key the owner's log already has.
fn insert_entry(conn: &Connection) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
    conn.prepare_cached(&format!(
        "INSERT INTO inbox ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT DO NOTHING",
        tail::COLUMNS
    ))
}

/// An entry's values in the order of `tail::COLUMNS`.
fn entry_params<'e>(owner: &'e str, seq: i64, entry: &'e OwnedEntry) -> [ToSqlOutput<'e>; 11] {
    let text = |value: &'e str| ToSqlOutput::Borrowed(ValueRef::Text(value.as_bytes()));
    let optional =
        |value: Option<&'e str>| value.map_or(ToSqlOutput::Borrowed(ValueRef::Null), text);
    [
        text(owner),
        ToSqlOutput::from(seq),
        text(entry.stanza_id()),
        text(entry.sender()),
        text(entry.kind()),
        text(entry.xml()),
        ToSqlOutput::from(entry.at_micros),
        text(entry.peer()),
        text(entry.direction()),
        optional(entry.body()),
        optional(entry.origin()),
    ]
}

/// The last sequence number handed out in `owner`'s log: from `heads`, or
/// loaded (the greater of `users.inbox_seq` and the newest entry); `None`: no
/// such user.
fn last_seq(
    conn: &Connection,
    heads: &HashMap<String, i64>,
    owner: &str,
) -> rusqlite::Result<Option<i64>> {
    if let Some(&last) = heads.get(owner) {
        return Ok(Some(last));
    }
    conn.prepare_cached(
        "SELECT MAX(inbox_seq, COALESCE((SELECT MAX(seq) FROM inbox WHERE owner = ?1), 0))
         FROM users WHERE username = ?1",
    )?
    .query_row(params![owner], |row| row.get(0))
    .optional()
}

/// The room reads of a batch, on the writer's transaction (nothing waits).
struct SqliteReads<'t> {
    tx: &'t Connection,
    heads: &'t HashMap<String, i64>,
    rooms: &'t HashMap<String, Arc<RoomRows>>,
}

impl RoomReads for SqliteReads<'_> {
    async fn rooms_of(&mut self, owner: &str) -> Result<Vec<String>> {
        let mut select = self.tx.prepare_cached(rooms::sql::ROOMS_OF)?;
        let rows = select.query_map(params![owner], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    async fn head(&mut self, room: &str) -> Result<Option<i64>> {
        Ok(last_seq(self.tx, self.heads, room)?)
    }

    async fn rows(&mut self, room: &str) -> Result<Arc<RoomRows>> {
        if let Some(rows) = self.rooms.get(room) {
            return Ok(rows.clone());
        }
        let mark: Option<i64> = self
            .tx
            .prepare_cached(rooms::sql::MARK)?
            .query_row(params![room], |row| row.get(0))
            .optional()?;
        let mut select = self.tx.prepare_cached(rooms::sql::MEMBERS)?;
        let members = select.query_map(params![room], |row| {
            let seq: Option<i64> = row.get(1)?;
            Ok((row.get(0)?, seq.map_or(Fill::AtMark, Fill::Through)))
        })?;
        Ok(Arc::new(RoomRows {
            mark: mark.unwrap_or(0),
            members: members.collect::<rusqlite::Result<_>>()?,
        }))
    }

    async fn entries(
        &mut self,
        room: &str,
        after: i64,
        through: i64,
    ) -> Result<Vec<(i64, OwnedEntry)>> {
        let mut select = self.tx.prepare_cached(rooms::sql::ENTRIES)?;
        let rows = select.query_map(params![room, after, through], |row| {
            Ok((
                row.get(0)?,
                rooms::owed_copy(
                    room,
                    row.get_ref(1)?.as_str()?,
                    row.get_ref(2)?.as_str()?,
                    row.get_ref(3)?.as_str()?,
                    row.get(4)?,
                ),
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
