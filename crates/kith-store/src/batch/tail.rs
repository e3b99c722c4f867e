//! The log's tail (SQLite).
//!
//! An entry appended to `inbox` costs a page of the `(owner, seq)` index — one
//! per entry, since consecutive entries belong to different owners — written to
//! the WAL at its commit and again by the checkpoint: at 12,000 1:1 messages a
//! second, 1.4 WAL pages per message and a third of the server's CPU; with an
//! archive, a page of each of its four indexes more (conversation, time, id,
//! full text). So a 1:1 entry of an owner with a session, or a live member's
//! copy of a group message (200 of them per message in a 200-member group), is
//! first appended to the tail instead: [`GENERATIONS`] tables in rowid order
//! only, so a commit dirties a table's last page or two, each in a file of its
//! own (`<database>-tail/<g>.<n>.db`), attached to the writer's connection
//! only.
//! Entries go to one generation for [`ROTATE_EVERY`] ([`KEPT_ROTATE_EVERY`]
//! with an archive), then to the next; before
//! a generation is used again it is compacted (its entries being at least
//! `(GENERATIONS - 1) × ROTATE_EVERY` old by then) if it was not already, and
//! the file is replaced by a new, empty one ([`Tail::reset`]). What the
//! compaction does depends on the log's retention ([`Delivered`]):
//! - "until delivered" (most entries leave the log within a second or two):
//!   what every device of the owner has received (the sweep's rule,
//!   `devices::Sweep::Delivered`) is dropped — after `users.inbox_seq` records
//!   the owner's newest number, as the sweep's `keep_seq_marks` does, so no
//!   number is handed out twice —, the rest moves into `inbox`;
//! - kept (an archive): everything moves into `inbox`, ordered by owner and
//!   number, so that an index page is written once per owner and generation
//!   rather than once per entry; a closed generation moves at once, in
//!   chunks of owners between group commits ([`Tail::drain_step`]), and its
//!   file is replaced once the last has moved.
//!
//! Emptying a table in the main file cost 1 µs per entry with per-row
//! deletes, and with a whole-table
//! `DELETE` (which reads every page back to free it) a 45 ms stall a second at
//! 28,000 msg/s; a file of its own also keeps the tail out of the main WAL and
//! its checkpoints.
//!
//! The files are only ever written by the writer's connection, which never
//! checkpoints them (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`, no autocheckpoint,
//! `main.` checkpoints only): a generation's rows are written once, to its
//! WAL, which the checkpointer syncs as often as it checkpoints the main file
//! ([`sync`]), so they are as durable as the main file's commits. A replaced
//! file is deleted only once the main WAL, holding the compaction that made
//! it unneeded, is synced ([`delete_later`]); whatever files a crash or power
//! loss leaves, the next start moves into `inbox` ([`Tail::recover`]). A
//! transaction spanning the tail's files and the main one is atomic per file,
//! not across them (SQLite commits WAL files one by one, the main file
//! first): nothing is answered before the whole commit returns; after a
//! commit that failed with a tail file written, the writer looks for a row
//! the batch wrote to `inbox`: there, the main file committed and the tail
//! rows are written into `inbox` (the batch stands); not there, nothing
//! committed (the jobs are retried one by one); no such entry to look for,
//! the batch fails ([`crate::StoreError::PartialCommit`], not retried: it
//! could store twice). Entries are moved into `inbox`
//! with `ON CONFLICT DO NOTHING`; so a crash leaves at worst an entry both in
//! `inbox` and the tail (skipped when recovered), or a delivered entry that
//! recovery puts back into `inbox` (below every device's cursor: never sent
//! again, and it keeps its number from being handed out again; the sweep
//! drops it). With an archive, a drained generation's rows stay in its file
//! until its last owner has moved (a few seconds); the transaction that moves
//! an owner's records in the file through which number they moved (its
//! `drained` table), and recovery leaves those out, so an entry deleted from
//! `inbox` in that window (a "delete for me") stays deleted after a crash —
//! but for a power loss before the checkpointer has synced both files' WALs
//! (≤ 0.5 s: the deletion may reach the disk before the mark does).
//! Entries of owners without a session, of owners none of whose entries of a
//! generation had reached every device at its compaction when delivered
//! entries are dropped (a device that lags: in the tail they would be written
//! twice; for [`LAGGING_FOR`]),
//! rooms' own entries (the room logic reads them in `inbox`, inside the
//! writer's transaction) and the copies a member gets on catching up or
//! leaving go to `inbox` directly. Before the "until delivered"
//! sweep every generation is compacted; before the time-based one, moved.
//!
//! Readers never look at the tail: before any read of an owner's log, the
//! store asks the writer to move that owner's waiting entries into `inbox`
//! ([`super::Writer::settle`]) if [`TailShared::holds`] says it has any, which
//! is true from before its first entry's append is answered until after the
//! commit that moved or dropped its last. The current files hold the entries
//! still waiting (and, until they are replaced, compacted ones); the server's
//! start moves them all into `inbox` ([`Tail::recover`], from
//! `Store::set_tail`, which only the server calls: the CLI
//! opening the same database leaves them alone).
//!
//! A duplicate origin key (XEP-0359) is refused as `inbox`'s unique index
//! refuses it: looked up in `inbox`, and among the [`ORIGINS_KEPT`] newest
//! keys of tail entries (those waiting, or dropped recently).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::rooms::Live;
use super::{HashMap, HashSet};
use crate::{Result, StoreError};

/// Generations of the tail (`tail0.entries` …), used in turn.
pub(super) const GENERATIONS: usize = 4;
/// How long entries go to one generation. Where delivered entries are
/// dropped, an entry waits at least `(GENERATIONS - 1) × ROTATE_EVERY` (3 s)
/// before it is dropped or moved: longer than sessions take to record what
/// their device has (`CURSOR_WRITE_INTERVAL` in the server, 1 s). With an
/// archive it moves once its generation is closed ([`KEPT_ROTATE_EVERY`]).
const ROTATE_EVERY: Duration = Duration::from_secs(1);
/// A generation is closed early once it holds this many entries (memory and
/// the reads' settle work stay bounded under any load; should closing it
/// fail, new entries go to `inbox` meanwhile: [`Tail::ready`]). Where
/// delivered entries are dropped, a generation closed early shortens the
/// wait above: at 25,000, 80,000 copies a second of a busy group's messages
/// waited under a second, whole generations were not yet recorded as
/// delivered, and their owners were taken for lagging ones.
const MAX_GENERATION: usize = 100_000;
/// [`ROTATE_EVERY`] when the log keeps delivered entries. Nothing is dropped
/// then, and the longer a generation, the more entries each owner has in it:
/// moved in one piece, ordered by owner, they dirty an index page per owner
/// rather than per entry (the conversation index takes an owner's entries at
/// as many places as it has peers). In a model of the drain (200 owners,
/// 20,000 entries a second), generations of 1 s cost 11.9 µs of CPU per
/// entry, 3 s 8.8, 10 s 6.9 (the table and its primary key alone: 4.7).
const KEPT_ROTATE_EVERY: Duration = Duration::from_secs(3);
/// Origin keys of tail entries remembered for duplicate detection: more than
/// can wait at once (`GENERATIONS × MAX_GENERATION`), so a waiting entry's
/// key is never forgotten.
const ORIGINS_KEPT: usize = GENERATIONS * MAX_GENERATION + 50_000;
/// Entries a [`Tail::drain_step`] moves, at most (whole owners while they
/// fit: a few ms). At least 1,000 a time made p99 latencies of 40–60 ms at
/// 4,000–10,000 msg/s, at least 250 made 15–41.
const DRAIN_CHUNK: usize = 500;
/// An owner none of whose entries of a generation had reached every device
/// when it was compacted (a device that lags, e.g. an idle phone beside an
/// open desktop client) has its entries go to `inbox` directly for this long:
/// in the tail they would be written twice.
const LAGGING_FOR: Duration = Duration::from_secs(60);

/// The columns an entry has in `inbox` and the tail alike.
pub(super) const COLUMNS: &str =
    "owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin";

/// The name of generation `g`'s table.
pub(super) fn table(g: usize) -> &'static str {
    [
        "tail0.entries",
        "tail1.entries",
        "tail2.entries",
        "tail3.entries",
    ][g % GENERATIONS]
}

/// The schema name generation `g`'s file is attached as.
fn schema(g: usize) -> &'static str {
    ["tail0", "tail1", "tail2", "tail3"][g % GENERATIONS]
}

/// The directory of the tail's files: `<database>-tail` (`kith.db-tail`).
fn dir(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-tail");
    PathBuf::from(name)
}

/// SQLite's files for database `file`: itself, its WAL, shared-memory index
/// and rollback journal.
fn with_companions(file: &Path) -> [PathBuf; 4] {
    ["", "-wal", "-shm", "-journal"].map(|suffix| {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// The database files in the tail's directory (generations of this run or
/// left by an earlier one).
fn databases(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "db") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Makes what was written to the tail's files so far durable (`fdatasync`
/// of each WAL): the checkpointer calls it as often as it checkpoints the
/// main file, whose commits are durable from then on too (`synchronous =
/// NORMAL`). Errors are logged.
pub(super) fn sync(database: &Path) {
    let Ok(entries) = std::fs::read_dir(dir(database)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with("-wal")
            && let Err(error) = sync_file(&path)
        {
            tracing::warn!(%error, path = %path.display(), "syncing the log's tail failed");
        }
    }
}

/// `fdatasync` of `path`, if it exists.
fn sync_file(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(file) => file.sync_data(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Removes `path`, if it exists.
fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// A generation's table. Not a foreign key to `users` (that can't cross
/// files): an account's entries are deleted with it ([`Tail::forget`]), and
/// entries are only moved for accounts that exist.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS {schema}.entries (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stanza_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    kind TEXT NOT NULL,
    xml TEXT NOT NULL,
    at_micros INTEGER NOT NULL,
    peer TEXT NOT NULL,
    direction TEXT NOT NULL,
    body TEXT,
    origin TEXT
)";

/// A new file's marks: per owner, through which number its entries of the
/// file are already in `inbox` ([`Tail::drain`] writes it in the transaction
/// that moves them). [`Tail::recover`] leaves those out, so what was deleted
/// from `inbox` since does not come back. Files left by builds before it have
/// none (and are not written to when recovered).
const CREATE_DRAINED: &str = "CREATE TABLE IF NOT EXISTS {schema}.drained (
    owner TEXT PRIMARY KEY,
    through INTEGER NOT NULL
) WITHOUT ROWID";

/// Attaches database `file` to the writer's connection as `schema`, created
/// empty (in WAL mode, with the table) if missing, with the table of marks
/// if `fresh` (a new file); detached again if setting it up fails.
fn attach(conn: &Connection, file: &Path, schema: &str, fresh: bool) -> Result<()> {
    let Some(name) = file.to_str() else {
        return Err(StoreError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::other("the database path is not UTF-8"),
        });
    };
    conn.execute(&format!("ATTACH DATABASE ?1 AS {schema}"), [name])?;
    // No `fsync` while a new file is set up (turning WAL on, creating the
    // table): its name is new, and nothing in it matters before it is.
    let set_up = conn
        .execute_batch(&format!("PRAGMA {schema}.synchronous = OFF"))
        .and_then(|()| {
            conn.query_row(&format!("PRAGMA {schema}.journal_mode = WAL"), [], |row| {
                row.get::<_, String>(0)
            })
        })
        .and_then(|_| {
            conn.execute_batch(&format!(
                "{}; {}; PRAGMA {schema}.synchronous = NORMAL",
                CREATE.replace("{schema}", schema),
                if fresh {
                    CREATE_DRAINED.replace("{schema}", schema)
                } else {
                    String::new()
                }
            ))
        });
    if let Err(error) = set_up {
        let _ = conn.execute_batch(&format!("DETACH DATABASE {schema}"));
        return Err(error.into());
    }
    Ok(())
}

/// Deletes `files` on a thread of its own (freeing a second's worth of pages
/// took the writer 4–5 ms at 28,000 msg/s), once the main file's WAL is
/// durable: the compaction that made them unneeded is committed there, and
/// until it is on disk (`synchronous = NORMAL` syncs it at checkpoints only)
/// a power loss could undo it — the files must then still be there for
/// [`Tail::recover`].
fn delete_later(main_wal: PathBuf, files: Vec<PathBuf>) {
    let delete = move || {
        if let Err(error) = sync_file(&main_wal) {
            // Kept for the next start to recover from.
            tracing::warn!(%error, "syncing the log before deleting a tail file failed");
            return;
        }
        for file in &files {
            if let Err(error) = remove_file(file) {
                tracing::warn!(%error, path = %file.display(), "deleting a tail file failed");
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("kith-tail-delete".to_owned())
        .spawn(delete.clone());
    if spawned.is_err() {
        delete();
    }
}

/// What becomes of a log entry once every device of its owner has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// It leaves the log (retention "until delivered"): the tail's
    /// compaction drops it, and moves only what is still owed.
    Dropped,
    /// The log keeps it (an archive, kept forever or for some days): every
    /// entry of a closed generation moves into `inbox`, in short transactions
    /// between group commits.
    Kept,
}

/// What readers and the writer share.
#[derive(Default)]
pub(crate) struct TailShared {
    /// Set when entries may wait in the tail: whether an owner has a session
    /// now (its new 1:1 entries and members' copies then go to the tail; the
    /// others go to `inbox`: they won't be read or delivered soon).
    online: Mutex<Option<Live>>,
    /// Whether the compaction keeps delivered entries ([`Delivered::Kept`];
    /// read by the writer after every commit, without a lock).
    keeps: AtomicBool,
    /// Owners with entries in the tail.
    owners: Mutex<HashSet<String>>,
}

impl TailShared {
    /// Entries of owners `online` says have a session wait in the tail from
    /// now on (none: `None`); what waits there already is compacted by
    /// `delivered`'s rule either way.
    pub(crate) fn set_mode(&self, online: Option<Live>, delivered: Delivered) {
        *self.online.lock().unwrap_or_else(PoisonError::into_inner) = online;
        self.keeps
            .store(delivered == Delivered::Kept, Ordering::Relaxed);
    }

    fn online(&self) -> Option<Live> {
        self.online
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `owner` has entries waiting in the tail.
    pub(crate) fn holds(&self, owner: &str) -> bool {
        self.owners().contains(owner)
    }

    /// Whether anything waits in the tail.
    pub(crate) fn holds_any(&self) -> bool {
        !self.owners().is_empty()
    }

    /// The owners with entries waiting in the tail now.
    pub(crate) fn owners_now(&self) -> Vec<String> {
        self.owners().iter().cloned().collect()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.owners.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An entry waiting in the tail.
struct Waiting {
    id: i64,
    seq: i64,
    generation: usize,
}

/// An entry appended to the tail by a transaction not yet committed.
pub(super) struct Added<'a> {
    /// Borrowed from the batch: a name is copied only when the tail first
    /// holds something of its owner.
    pub owner: &'a str,
    pub id: i64,
    pub seq: i64,
    pub origin_key: Option<String>,
}

/// What moving entries into `inbox` did, for the full-text index's mark.
pub(super) struct Moved {
    /// Entries moved (the full-text index counts them all as waiting: an
    /// estimate, as its count is).
    pub entries: usize,
    /// No moved entry's `inbox` rowid is below this (`i64::MAX`: none moved).
    pub lowest_rowid: i64,
}

impl Moved {
    pub(super) fn none() -> Moved {
        Moved {
            entries: 0,
            lowest_rowid: i64::MAX,
        }
    }

    pub(super) fn add(&mut self, other: Moved) {
        self.entries += other.entries;
        self.lowest_rowid = self.lowest_rowid.min(other.lowest_rowid);
    }
}

/// The writer's side of the tail.
pub(super) struct Tail {
    shared: Arc<TailShared>,
    /// Per owner, its waiting entries, oldest first.
    waiting: HashMap<String, VecDeque<Waiting>>,
    /// Entries per generation.
    counts: [usize; GENERATIONS],
    /// The generation new entries go to, and since when.
    current: usize,
    since: Instant,
    /// After a failed compaction, no new try before this.
    retry_at: Instant,
    /// Owners whose entries go to `inbox` directly until then ([`LAGGING_FOR`]).
    lagging: HashMap<String, Instant>,
    /// The id the next entry gets (the tables are empty at start: [`Tail::recover`]).
    next_id: i64,
    /// The database file, beside which the generations' files are.
    database: PathBuf,
    /// The file each generation has attached ([`Tail::recover`] attaches
    /// them), and how many were created: each gets a name of its own.
    files: [Option<PathBuf>; GENERATIONS],
    created: u64,
    /// The main file's WAL (synced before a replaced file is deleted).
    main_wal: PathBuf,
    /// Generations whose file may hold rows (or freed pages): replaced by an
    /// empty one before the generation is used again.
    dirty: [bool; GENERATIONS],
    origins: HashSet<String>,
    origins_order: VecDeque<String>,
    /// Per generation, the owners with entries in it (some may have been
    /// settled since, or be listed twice): what [`Tail::drain`] moves, last
    /// listed first, when the log keeps delivered entries.
    owners_of: [Vec<String>; GENERATIONS],
}

impl Tail {
    pub(super) fn new(shared: Arc<TailShared>, database: PathBuf) -> Tail {
        let main_wal = with_companions(&database)[1].clone();
        Tail {
            shared,
            waiting: HashMap::default(),
            counts: [0; GENERATIONS],
            current: 0,
            since: Instant::now(),
            retry_at: Instant::now(),
            lagging: HashMap::default(),
            next_id: 1,
            database,
            files: [None, None, None, None],
            // Names no earlier writer used (files it left are recovered and
            // deleted, and one still running — a test's — deletes its own).
            created: crate::now_micros().unsigned_abs(),
            main_wal,
            dirty: [false; GENERATIONS],
            origins: HashSet::default(),
            origins_order: VecDeque::new(),
            owners_of: Default::default(),
        }
    }

    /// Set when entries may wait here: whether an owner has a session.
    pub(super) fn online(&self) -> Option<Live> {
        self.shared.online()
    }

    /// Whether the log keeps delivered entries ([`Delivered::Kept`]): the
    /// compaction then moves every entry into `inbox`.
    fn keeps_delivered(&self) -> bool {
        self.shared.keeps.load(Ordering::Relaxed)
    }

    /// Whether `owner`'s entries skip the tail for now ([`LAGGING_FOR`]).
    pub(super) fn lagging(&self, owner: &str) -> bool {
        !self.lagging.is_empty()
            && self
                .lagging
                .get(owner)
                .is_some_and(|until| *until > Instant::now())
    }

    /// Whether [`Tail::recover`] ran: files are attached from then on (but
    /// for a failed reset, retried).
    fn recovered(&self) -> bool {
        self.files.iter().any(Option::is_some)
    }

    /// Whether entries can go to the tail now: its current generation has a
    /// file (always, but after a failed reset) with room left (full but for
    /// a failing rotation, new entries go to `inbox`).
    pub(super) fn ready(&self) -> bool {
        self.files[self.current].is_some() && self.room_left() > 0
    }

    /// How many more entries the current generation takes: a batch sends the
    /// rest to `inbox` (one with fans to large groups could hold hundreds of
    /// thousands of members' copies).
    pub(super) fn room_left(&self) -> usize {
        MAX_GENERATION.saturating_sub(self.counts[self.current])
    }

    /// How long entries go to one generation ([`KEPT_ROTATE_EVERY`]).
    fn rotate_every(&self) -> Duration {
        if self.keeps_delivered() {
            KEPT_ROTATE_EVERY
        } else {
            ROTATE_EVERY
        }
    }

    /// The table new entries go to.
    pub(super) fn current_table(&self) -> &'static str {
        table(self.current)
    }

    /// The newest number among `owner`'s waiting entries.
    pub(super) fn newest(&self, owner: &str) -> Option<i64> {
        self.waiting
            .get(owner)
            .and_then(|q| q.back())
            .map(|w| w.seq)
    }

    /// Whether an entry of `owner` with origin key `origin` is in the tail or
    /// was dropped from it recently.
    pub(super) fn remembers(&self, owner: &str, origin: &str) -> bool {
        !self.origins.is_empty() && self.origins.contains(&origin_key(owner, origin))
    }

    /// [`Tail::remembers`], or the entry is in `inbox`.
    pub(super) fn has_origin(&self, conn: &Connection, owner: &str, origin: &str) -> Result<bool> {
        if self.remembers(owner, origin) {
            return Ok(true);
        }
        Ok(conn
            .prepare_cached("SELECT 1 FROM inbox WHERE owner = ?1 AND origin = ?2")?
            .query_row(params![owner, origin], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Takes an id for an entry about to be appended.
    pub(super) fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// After a commit that failed part-way with rows for the current
    /// generation: its file may hold some of them, unknown here; it is
    /// replaced, not reused as it is, before it takes entries again.
    pub(super) fn committed_unknown(&mut self) {
        self.dirty[self.current] = true;
    }

    /// After the commit that appended `added` to the current generation.
    pub(super) fn committed(&mut self, added: Vec<Added<'_>>) {
        if added.is_empty() {
            return;
        }
        {
            let mut owners = self.shared.owners();
            for a in &added {
                if !owners.contains(a.owner) {
                    owners.insert(a.owner.to_owned());
                }
            }
        }
        if self.counts[self.current] == 0 {
            // A generation's time runs from its first entry: after a quiet
            // spell the first message does not close it at once.
            self.since = Instant::now();
        }
        self.counts[self.current] += added.len();
        self.dirty[self.current] = true;
        for a in added {
            if let Some(key) = a.origin_key {
                self.remember_origin(key);
            }
            let waiting = Waiting {
                id: a.id,
                seq: a.seq,
                generation: self.current,
            };
            // Noted among the generation's owners with its first entry there.
            let owners = &mut self.owners_of[self.current];
            match self.waiting.get_mut(a.owner) {
                Some(q) => {
                    if q.back().is_none_or(|w| w.generation != self.current) {
                        owners.push(a.owner.to_owned());
                    }
                    q.push_back(waiting);
                }
                None => {
                    owners.push(a.owner.to_owned());
                    self.waiting
                        .insert(a.owner.to_owned(), VecDeque::from([waiting]));
                }
            }
        }
    }

    fn remember_origin(&mut self, key: String) {
        if self.origins.insert(key.clone()) {
            self.origins_order.push_back(key);
            if self.origins_order.len() > ORIGINS_KEPT
                && let Some(old) = self.origins_order.pop_front()
            {
                self.origins.remove(&old);
            }
        }
    }

    /// Whether `owner` has entries waiting (a [`Tail::settle`] of it writes
    /// to the tail's files).
    pub(super) fn waits(&self, owner: &str) -> bool {
        self.waiting.get(owner).is_some_and(|q| !q.is_empty())
    }

    /// Moves all of `owner`'s waiting entries into `inbox` (in the caller's
    /// transaction); [`Tail::settled`] after it commits.
    /// `delete` is false only when a test injects the failure of the tail's
    /// part of the commit (`crate::fault`): the rows then stay.
    pub(super) fn settle(&self, conn: &Connection, owner: &str, delete: bool) -> Result<Moved> {
        let mut moved = Moved::none();
        let Some(q) = self.waiting.get(owner) else {
            return Ok(moved);
        };
        // Oldest generation first: `inbox` gets them in log order.
        for g in (1..=GENERATIONS).map(|k| (self.current + k) % GENERATIONS) {
            // One statement each way, the ids as a JSON array (a login after
            // 5,000 messages: 12 ms, where a statement per entry took 60).
            if let Some(ids) = ids_in(q, g) {
                moved.add(move_entries(conn, g, &ids)?);
                if delete {
                    delete_entries(conn, g, &ids)?;
                }
            }
        }
        Ok(moved)
    }

    /// After the commit of [`Tail::settle`]s of `owners`.
    pub(super) fn settled(&mut self, owners: &[&str]) {
        let mut shared = self.shared.owners();
        for owner in owners {
            if let Some(q) = self.waiting.remove(*owner) {
                for w in q {
                    self.counts[w.generation] -= 1;
                }
            }
            shared.remove(*owner);
        }
    }

    /// The account of `owner` is gone, and with it its entries in the tail
    /// and what the tail remembers of it: a new account under the name starts
    /// afresh.
    pub(super) fn forget(&mut self, conn: &Connection, owner: &str) -> Result<()> {
        // What the tail remembers goes either way.
        let deleted = self.delete_all(conn, owner);
        self.settled(&[owner]);
        self.lagging.remove(owner);
        let prefix = origin_key(owner, "");
        if self.origins.iter().any(|key| key.starts_with(&prefix)) {
            self.origins.retain(|key| !key.starts_with(&prefix));
            self.origins_order.retain(|key| !key.starts_with(&prefix));
        }
        deleted
    }

    /// Deletes `owner`'s waiting entries from the tail's files.
    fn delete_all(&self, conn: &Connection, owner: &str) -> Result<()> {
        let Some(q) = self.waiting.get(owner) else {
            return Ok(());
        };
        let tx = super::sqlite::Immediate::begin(conn)?;
        for g in 0..GENERATIONS {
            if let Some(ids) = ids_in(q, g) {
                delete_entries(&tx, g, &ids)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// How long until the tail has work: the current generation due to be
    /// closed, or a closed one to drain ([`Tail::drain_step`]). `None`:
    /// nothing waits anywhere.
    pub(super) fn due_in(&self) -> Option<Duration> {
        if self.drainable().is_some() {
            return Some(self.retry_at.saturating_duration_since(Instant::now()));
        }
        self.rotation_due_in()
    }

    /// How long until the current generation is due to be closed (`None`:
    /// nothing waits anywhere).
    fn rotation_due_in(&self) -> Option<Duration> {
        if self.counts.iter().all(|n| *n == 0) {
            return None;
        }
        let now = Instant::now();
        let retry = self.retry_at.saturating_duration_since(now);
        if self.counts[self.current] >= MAX_GENERATION {
            return Some(retry);
        }
        Some(retry.max((self.since + self.rotate_every()).saturating_duration_since(now)))
    }

    /// The oldest closed generation whose entries the log keeps and some of
    /// whose owners are still to be looked at ([`Tail::drain`]; their entries
    /// may have been settled since).
    fn drainable(&self) -> Option<usize> {
        if !self.keeps_delivered() {
            return None;
        }
        (1..GENERATIONS)
            .map(|k| (self.current + k) % GENERATIONS)
            .find(|g| !self.owners_of[*g].is_empty())
    }

    /// When the log keeps delivered entries: moves the next owners' entries
    /// of the oldest closed generation into `inbox`, [`DRAIN_CHUNK`] at most
    /// (see [`Tail::drain`]). The writer calls this after each group commit,
    /// so a generation moves in short transactions between them (in one,
    /// 8,000 entries held every message up for 130 ms).
    pub(super) fn drain_step(&mut self, conn: &Connection, fts_next_rowid: i64) -> Result<Moved> {
        let Some(g) = self.drainable() else {
            return Ok(Moved::none());
        };
        if Instant::now() < self.retry_at {
            return Ok(Moved::none());
        }
        self.drain(conn, g, DRAIN_CHUNK, fts_next_rowid)
            .inspect_err(|_| self.retry_at = Instant::now() + ROTATE_EVERY)
    }

    /// If due, closes the current generation: the next one, compacted first
    /// (see the module's documentation), takes new entries from now on.
    /// Returns what moved into `inbox`; the full-text index's mark
    /// (`fts_next_rowid`) is lowered in the same transaction should a moved
    /// entry's rowid be below it.
    pub(super) fn rotate_if_due(
        &mut self,
        conn: &Connection,
        heads: &HashMap<String, i64>,
        fts_next_rowid: i64,
    ) -> Result<Moved> {
        if self.recovered() && self.files[self.current].is_none() && Instant::now() >= self.retry_at
        {
            // A reset of the current generation failed (the sweep's): try
            // again; its entries go to `inbox` meanwhile.
            if let Err(error) = self.reset(conn, self.current) {
                self.retry_at = Instant::now() + ROTATE_EVERY;
                return Err(error);
            }
        }
        if self.rotation_due_in() != Some(Duration::ZERO) {
            return Ok(Moved::none());
        }
        let next = (self.current + 1) % GENERATIONS;
        let moved = if self.counts[next] > 0 {
            // Within `ROTATE_EVERY` of each other: no clock reads per owner.
            let now = Instant::now();
            self.lagging.retain(|_, until| *until > now);
            self.compact(conn, next, heads, fts_next_rowid)
        } else {
            Ok(Moved::none())
        };
        let moved = match moved.and_then(|moved| self.reset(conn, next).map(|()| moved)) {
            Ok(moved) => moved,
            Err(error) => {
                // Entries keep going to the current generation meanwhile.
                self.retry_at = Instant::now() + ROTATE_EVERY;
                return Err(error);
            }
        };
        // Names left of owners settled meanwhile.
        self.owners_of[next].clear();
        self.current = next;
        self.since = Instant::now();
        Ok(moved)
    }

    /// Compacts every generation, oldest first (before the "until delivered"
    /// sweep of the whole log: what every device has goes, the rest moves into
    /// `inbox`; with an archive, everything moves). Returns what moved, and
    /// how many entries were dropped.
    pub(super) fn compact_all(
        &mut self,
        conn: &Connection,
        heads: &HashMap<String, i64>,
        fts_next_rowid: i64,
    ) -> Result<(Moved, u64)> {
        let mut moved = Moved::none();
        let mut dropped = 0;
        if !self.recovered() {
            // A process other than the server: no tail here.
            return Ok((moved, dropped));
        }
        let current = self.current;
        for g in (1..=GENERATIONS).map(|k| (current + k) % GENERATIONS) {
            if self.counts[g] > 0 {
                let before = self.counts[g];
                let fts_next_rowid = fts_next_rowid.min(moved.lowest_rowid);
                let this = self.compact(conn, g, heads, fts_next_rowid)?;
                if !self.keeps_delivered() {
                    dropped += before.saturating_sub(this.entries) as u64;
                }
                moved.add(this);
            }
            // A failed reset is retried (before the generation is used
            // again; the current one's after `ROTATE_EVERY`): the compaction
            // stands.
            if let Err(error) = self.reset(conn, g) {
                tracing::warn!(%error, "replacing a file of the log's tail failed; will retry");
                self.retry_at = Instant::now() + ROTATE_EVERY;
            }
        }
        Ok((moved, dropped))
    }

    /// Drops or moves every entry of generation `g` (its file is
    /// [reset](Tail::reset) next).
    fn compact(
        &mut self,
        conn: &Connection,
        g: usize,
        heads: &HashMap<String, i64>,
        fts_next_rowid: i64,
    ) -> Result<Moved> {
        if self.keeps_delivered() {
            return self.drain(conn, g, usize::MAX, fts_next_rowid);
        }
        let tx = super::sqlite::Immediate::begin(conn)?;
        let mut owed = Vec::new();
        let mut lagging = Vec::new();
        for (owner, q) in &self.waiting {
            // A generation's entries are the oldest waiting: a prefix.
            let due = q.iter().take_while(|w| w.generation == g);
            let Some(newest) = due.clone().last().map(|w| w.seq) else {
                continue;
            };
            // What every device has (NULL without devices: everything stays).
            let delivered: Option<i64> = tx
                .prepare_cached("SELECT MIN(cursor) FROM devices WHERE owner = ?1")?
                .query_row(params![owner], |row| row.get(0))?;
            let mut dropped = false;
            let mut kept = false;
            for w in due {
                if delivered.is_some_and(|through| w.seq <= through) {
                    dropped = true;
                } else {
                    owed.push(w.id);
                    kept = true;
                }
            }
            // A device that had none of the generation (an idle phone beside
            // an open desktop client) lags; one that missed only the newest
            // few (its cursor is recorded once a second) does not: under load
            // that was every member of a busy group, whose copies then all
            // went to `inbox` for a minute.
            if kept && !dropped {
                lagging.push(owner.clone());
            }
            if dropped {
                let head = heads.get(owner).map_or(newest, |h| (*h).max(newest));
                tx.prepare_cached(
                    "UPDATE users SET inbox_seq = ?2 WHERE username = ?1 AND inbox_seq < ?2",
                )?
                .execute(params![owner, head])?;
            }
        }
        let moved = if owed.is_empty() {
            Moved::none()
        } else {
            move_entries(&tx, g, &json_ids(&owed))?
        };
        lower_fts_mark(&tx, &moved, fts_next_rowid)?;
        tx.commit()?;
        let until = Instant::now() + LAGGING_FOR;
        for owner in lagging {
            self.lagging.insert(owner, until);
        }
        self.forget_generation(g);
        Ok(moved)
    }

    /// [`Tail::compact`] when the log keeps delivered entries, a chunk at a
    /// time: the generation-`g` entries of its next owners, as many whole
    /// owners as fit in `chunk` entries (an owner alone above it, `chunk` of
    /// them), move into `inbox` in one statement, in order of owner and
    /// number. So each of `inbox`'s indexes (all led by the owner) is walked
    /// in order, and each page it dirties is written once for an owner's
    /// whole generation, where appending entries one group commit at a time
    /// wrote a page per index and entry (consecutive entries belong to
    /// different owners). No owner is lagging here: every entry is written
    /// twice either way. Once every owner's entries of `g` moved, its file is
    /// [reset](Tail::reset) at once.
    fn drain(
        &mut self,
        conn: &Connection,
        g: usize,
        chunk: usize,
        fts_next_rowid: i64,
    ) -> Result<Moved> {
        let owners = &mut self.owners_of[g];
        // Owners taken, with how many of their entries.
        let mut taken: Vec<(String, usize)> = Vec::new();
        let mut ids = Vec::new();
        while let Some(owner) = owners.pop() {
            let Some(q) = self.waiting.get(&owner) else {
                continue;
            };
            // Older generations are drained first: `g`'s are a prefix.
            let due = q.iter().take_while(|w| w.generation == g).count();
            let room = chunk - ids.len();
            if due > room && !ids.is_empty() {
                // The next chunk's.
                owners.push(owner);
                break;
            }
            // An owner alone above `chunk` is drained `chunk` at a time.
            let take = due.min(room);
            ids.extend(q.iter().take(take).map(|w| w.id));
            if take < due {
                owners.push(owner.clone());
            }
            if take > 0 {
                taken.push((owner, take));
            }
            if ids.len() >= chunk {
                break;
            }
        }
        // Per owner taken, the number of its last entry moved.
        let marks: Vec<(&str, i64)> = taken
            .iter()
            .filter_map(|(owner, take)| {
                let last = self.waiting.get(owner)?.get(take - 1)?;
                Some((owner.as_str(), last.seq))
            })
            .collect();
        let moved = if ids.is_empty() {
            Ok(Moved::none())
        } else {
            (|| -> Result<Moved> {
                let tx = super::sqlite::Immediate::begin(conn)?;
                let moved = move_entries(&tx, g, &json_ids(&ids))?;
                lower_fts_mark(&tx, &moved, fts_next_rowid)?;
                // The rows stay in the file until its last owner has moved:
                // recorded as moved, a restart leaves them out.
                let mut mark = tx.prepare_cached(&format!(
                    "INSERT INTO {}.drained (owner, through) VALUES (?1, ?2)
                     ON CONFLICT (owner) DO UPDATE SET through = MAX(through, excluded.through)",
                    schema(g)
                ))?;
                for (owner, through) in &marks {
                    mark.execute(params![owner, through])?;
                }
                drop(mark);
                tx.commit()?;
                Ok(moved)
            })()
        };
        if moved.is_err() {
            // Still waiting: tried again (an owner listed twice is harmless).
            self.owners_of[g].extend(taken.into_iter().map(|(owner, _)| owner));
            return moved;
        }
        let mut shared = self.shared.owners();
        for (owner, take) in taken {
            if let Some(q) = self.waiting.get_mut(&owner) {
                q.drain(..take);
                self.counts[g] -= take;
                if q.is_empty() {
                    self.waiting.remove(&owner);
                    shared.remove(&owner);
                }
            }
        }
        if self.owners_of[g].is_empty() {
            // Whatever is left was settled meanwhile.
            debug_assert_eq!(self.counts[g], 0, "every owner of the generation drained");
            self.counts[g] = 0;
            // Its rows and pages go now (the file's marks keep a restart from
            // moving them again meanwhile).
            drop(shared);
            if let Err(error) = self.reset(conn, g) {
                // Retried before the generation is used again.
                tracing::warn!(%error, "replacing a file of the log's tail failed; will retry");
            }
        }
        moved
    }

    /// After the commit that dropped or moved every entry of generation `g`.
    fn forget_generation(&mut self, g: usize) {
        let mut emptied = Vec::new();
        for (owner, q) in &mut self.waiting {
            while q.front().is_some_and(|w| w.generation == g) {
                q.pop_front();
            }
            if q.is_empty() {
                emptied.push(owner.clone());
            }
        }
        self.counts[g] = 0;
        self.owners_of[g].clear();
        let mut shared = self.shared.owners();
        for owner in emptied {
            self.waiting.remove(&owner);
            shared.remove(&owner);
        }
    }
}

/// Lowers the full-text index's mark (`fts_next_rowid`) in the moving
/// transaction, should a moved entry's rowid be below it.
fn lower_fts_mark(conn: &Connection, moved: &Moved, fts_next_rowid: i64) -> Result<()> {
    if moved.lowest_rowid < fts_next_rowid {
        // Against the durable mark too: after a commit that failed part-way
        // the one in memory may be above it.
        conn.prepare_cached("UPDATE fts_state SET next_rowid = MIN(next_rowid, ?1)")?
            .execute(params![moved.lowest_rowid])?;
    }
    Ok(())
}

impl Tail {
    /// Replaces generation `g`'s file by a new, empty one if it may hold
    /// anything (or attaches one if none is). No transaction may be open; the
    /// cached statements are finalized first (the attached databases change
    /// under them). Each file has a name of its own (`<g>.<n>.db`), so the
    /// old one is deleted later ([`delete_later`]) and a crash or power loss
    /// meanwhile leaves it to [`Tail::recover`].
    fn reset(&mut self, conn: &Connection, g: usize) -> Result<()> {
        if !self.dirty[g] && self.files[g].is_some() {
            return Ok(());
        }
        if let Some(old) = self.files[g].take() {
            conn.flush_prepared_statement_cache();
            if let Err(error) = conn.execute_batch(&format!("DETACH DATABASE {}", schema(g))) {
                self.files[g] = Some(old);
                return Err(error.into());
            }
            delete_later(self.main_wal.clone(), with_companions(&old).to_vec());
        }
        let file = dir(&self.database).join(format!("{g}.{}.db", self.created));
        self.created += 1;
        if let Err(error) = attach(conn, &file, schema(g), true) {
            for path in with_companions(&file) {
                let _ = remove_file(&path);
            }
            return Err(error);
        }
        self.files[g] = Some(file);
        self.dirty[g] = false;
        Ok(())
    }

    /// At the server's start (not of every process that opens the database):
    /// moves every entry a previous run left in the tail's files into `inbox`
    /// (the full-text index's mark lowered to cover them; entries already
    /// there, and those of deleted accounts, skipped), deletes the files, and
    /// attaches a new file per generation. Once per writer: later, what is
    /// there is this run's. Must run before entries go to the tail.
    pub(super) fn recover(&mut self, conn: &Connection) -> Result<Moved> {
        if self.recovered() {
            return Ok(Moved::none());
        }
        let dir = dir(&self.database);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let left = databases(&dir)?;
        let mut moved = Moved::none();
        // Up to 8 at a time (SQLite attaches 10 databases at most).
        for chunk in left.chunks(8) {
            match recover_files(conn, chunk) {
                Ok(this) => moved.add(this),
                // One at a time, to set aside only what can't be read.
                Err(_) if chunk.len() > 1 => {
                    for file in chunk {
                        moved.add(recover_or_set_aside(conn, file)?);
                    }
                }
                Err(_) => moved.add(recover_or_set_aside(conn, &chunk[0])?),
            }
        }
        if !left.is_empty() {
            // What moved is on disk before the files go (`delete_later`).
            sync_file(&self.main_wal).map_err(|source| StoreError::Io {
                path: self.main_wal.clone(),
                source,
            })?;
        }
        for path in left.iter().flat_map(|file| with_companions(file)) {
            remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
        }
        for g in 0..GENERATIONS {
            self.dirty[g] = true;
            self.reset(conn, g)?;
        }
        Ok(moved)
    }
}

/// Moves the entries of the tail's database `files` (left by an earlier run)
/// into `inbox`, in log order, in one transaction.
fn recover_files(conn: &Connection, files: &[PathBuf]) -> Result<Moved> {
    let schemas: Vec<String> = (0..files.len()).map(|i| format!("recovered{i}")).collect();
    let mut attached = 0;
    let moved = (|| {
        for (file, schema) in files.iter().zip(&schemas) {
            attach(conn, file, schema, false)?;
            attached += 1;
        }
        let tx = super::sqlite::Immediate::begin(conn)?;
        let before: i64 = tx.query_row("SELECT COALESCE(MAX(rowid), 0) FROM inbox", [], |row| {
            row.get(0)
        })?;
        let mut selects = Vec::with_capacity(schemas.len());
        for schema in &schemas {
            let marked: bool = tx.query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {schema}.sqlite_master \
                     WHERE type = 'table' AND name = 'drained')"
                ),
                [],
                |row| row.get(0),
            )?;
            // What a drain already moved is left out (an earlier build's
            // file has no marks).
            selects.push(if marked {
                format!(
                    "SELECT id, {COLUMNS} FROM {schema}.entries AS e WHERE NOT EXISTS \
                     (SELECT 1 FROM {schema}.drained AS d \
                      WHERE d.owner = e.owner AND e.seq <= d.through)"
                )
            } else {
                format!("SELECT id, {COLUMNS} FROM {schema}.entries")
            });
        }
        let all = selects.join(" UNION ALL ");
        let waiting = tx.execute(
            &format!(
                "INSERT INTO inbox ({COLUMNS}) SELECT {COLUMNS} FROM ({all}) \
                 WHERE owner IN (SELECT username FROM users) ORDER BY id \
                 ON CONFLICT DO NOTHING"
            ),
            [],
        )?;
        if waiting > 0 {
            tx.execute(
                "UPDATE fts_state SET next_rowid = MIN(next_rowid, ?1)",
                params![before + 1],
            )?;
        }
        tx.commit()?;
        Ok(if waiting > 0 {
            Moved {
                entries: waiting,
                lowest_rowid: before + 1,
            }
        } else {
            Moved::none()
        })
    })();
    for schema in &schemas[..attached] {
        let _ = conn.execute_batch(&format!("DETACH DATABASE {schema}"));
    }
    moved
}

/// [`recover_files`] for one file. One that can't be read on its own (say,
/// torn by a power loss) is renamed `….db.unreadable` and reported, so that
/// the server still starts; any other failure (the main file's) is returned.
fn recover_or_set_aside(conn: &Connection, file: &Path) -> Result<Moved> {
    let error = match recover_files(conn, std::slice::from_ref(&file.to_path_buf())) {
        Ok(moved) => return Ok(moved),
        Err(error) => error,
    };
    if readable(conn, file) {
        return Err(error);
    }
    tracing::error!(%error, path = %file.display(),
        "a file of the log's tail can't be read; its entries were not recovered (set aside)");
    for path in with_companions(file) {
        let mut aside = path.clone().into_os_string();
        aside.push(".unreadable");
        let _ = std::fs::rename(&path, aside);
    }
    Ok(Moved::none())
}

/// Whether the tail's database `file` can be attached and its entries read.
fn readable(conn: &Connection, file: &Path) -> bool {
    if attach(conn, file, "probe", false).is_err() {
        return false;
    }
    let read = conn
        .query_row("SELECT COUNT(*) FROM probe.entries", [], |row| {
            row.get::<_, i64>(0)
        })
        .is_ok();
    let _ = conn.execute_batch("DETACH DATABASE probe");
    read
}

/// `[1,2,3]`: ids for `json_each`.
fn json_ids(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", list.join(","))
}

/// Entries whose id is in the JSON array `?1` ([`json_ids`]).
const BY_IDS: &str = "id IN (SELECT value FROM json_each(?1))";

/// The ids of `q`'s entries in generation `g` ([`json_ids`]), if any.
fn ids_in(q: &VecDeque<Waiting>, g: usize) -> Option<String> {
    let ids: Vec<i64> = q
        .iter()
        .filter(|w| w.generation == g)
        .map(|w| w.id)
        .collect();
    (!ids.is_empty()).then(|| json_ids(&ids))
}

/// Deletes generation `g`'s entries whose ids are `ids` ([`json_ids`]).
fn delete_entries(conn: &Connection, g: usize, ids: &str) -> Result<()> {
    conn.prepare_cached(&format!("DELETE FROM {} WHERE {BY_IDS}", table(g)))?
        .execute(params![ids])?;
    Ok(())
}

/// Copies generation `g`'s entries whose ids are `ids` ([`json_ids`]) into
/// `inbox`, in order of owner and number (those of accounts that still
/// exist): each of `inbox`'s indexes, all led by the owner, is walked in
/// order. New rows are numbered above every existing one, so the full-text
/// index's mark need go no lower than that.
fn move_entries(conn: &Connection, g: usize, ids: &str) -> Result<Moved> {
    let before: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(rowid), 0) FROM inbox")?
        .query_row([], |row| row.get(0))?;
    let changed = conn
        .prepare_cached(&format!(
            "INSERT INTO inbox ({COLUMNS}) SELECT {COLUMNS} FROM {} WHERE {BY_IDS} \
             AND owner IN (SELECT username FROM users) ORDER BY owner, seq \
             ON CONFLICT DO NOTHING",
            table(g)
        ))?
        .execute([ids])?;
    Ok(if changed > 0 {
        Moved {
            entries: changed,
            lowest_rowid: before + 1,
        }
    } else {
        Moved::none()
    })
}

/// The key of an origin in [`Tail`]'s memory.
pub(super) fn origin_key(owner: &str, origin: &str) -> String {
    format!("{owner}\n{origin}")
}

/// A generation of the log's tail moving into `inbox`, as the writer moves
/// it with an archive (`benches/tail_move.rs`): the move's CPU alone, without
/// sockets, sessions or a load generator's noise.
pub mod bench {
    use std::path::Path;
    use std::sync::Arc;

    use rusqlite::{Connection, params};

    use super::{Added, COLUMNS, DRAIN_CHUNK, Delivered, Tail, TailShared, table};
    use crate::{Result, ScramSecret, Store, StoredCredentials};

    /// A segment's four keys and its full-text index, built in bulk over
    /// `schema`'s `entries` (in the caller's transaction); how many entries
    /// the full-text index took.
    fn index_segment(conn: &Connection, schema: &str) -> Result<usize> {
        conn.execute_batch(&format!(
            "CREATE INDEX {schema}.seg_owner_seq ON entries (owner, seq);
             CREATE INDEX {schema}.seg_conversation ON entries (owner, (seq >> 12), peer, seq)
                 WHERE stanza_id <> '';
             CREATE INDEX {schema}.seg_time ON entries (owner, at_micros) WHERE stanza_id <> '';
             CREATE INDEX {schema}.seg_stanza_id ON entries (owner, stanza_id)
                 WHERE stanza_id <> '';
             CREATE VIRTUAL TABLE {schema}.seg_fts USING fts5(
                 body, content='', columnsize=0, tokenize='unicode61 remove_diacritics 0'
             );"
        ))?;
        Ok(conn.execute(
            &format!(
                "INSERT INTO {schema}.seg_fts (rowid, body) \
                 SELECT id, body FROM {schema}.entries WHERE body IS NOT NULL"
            ),
            [],
        )?)
    }

    /// Credentials for the benchmarks' accounts (never used to log in).
    pub fn credentials() -> StoredCredentials {
        let secret = ScramSecret {
            salt: vec![1; 16],
            iterations: 4096,
            stored_key: vec![2; 20],
            server_key: vec![3; 32],
        };
        StoredCredentials {
            sha1: secret.clone(),
            sha256: ScramSecret {
                stored_key: vec![4; 32],
                ..secret
            },
        }
    }

    /// `owners` accounts in a new database at `dir`, and one generation of
    /// the tail holding `per_owner` chat messages of each, interleaved as
    /// they arrive (each owner's next entry after every other owner's); the
    /// database as built, changed by `prepare` (SQL) first.
    pub struct TailMove {
        conn: Connection,
        tail: Tail,
        generation: usize,
    }

    impl TailMove {
        /// Sets it up (the database, its accounts, the generation's entries).
        pub async fn new(
            dir: &Path,
            owners: usize,
            per_owner: usize,
            prepare: &str,
        ) -> Result<TailMove> {
            let database = dir.join("kith.db");
            let names: Vec<String> = (0..owners).map(|i| format!("user{i}")).collect();
            {
                let store = Store::open(&format!("sqlite://{}", database.display())).await?;
                for name in &names {
                    store.create_user(name, &credentials()).await?;
                }
                store.close().await;
            }
            let conn = super::super::sqlite::open_connection(&database)?;
            conn.execute_batch(prepare)?;
            let shared = Arc::new(TailShared::default());
            shared.set_mode(Some(Arc::new(|_: &str| true)), Delivered::Kept);
            let mut tail = Tail::new(shared, database);
            tail.recover(&conn)?;
            let generation = tail.current;
            let mut added = Vec::with_capacity(owners * per_owner);
            {
                let tx = conn.unchecked_transaction()?;
                let mut append = tx.prepare(&format!(
                    "INSERT INTO {} (id, {COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'chat', ?6, ?7, ?8, 'in', ?9, NULL)",
                    table(generation)
                ))?;
                for seq in 1..=per_owner as i64 {
                    for (i, owner) in names.iter().enumerate() {
                        let peer = format!("{}@localhost", names[(i * 7 + 3) % owners]);
                        let body = format!(
                            "kb 1045834044 0 {} {}",
                            seq * 1000 + i as i64,
                            "x".repeat(64)
                        );
                        let at_micros = 1_796_047_998_593_377 + seq * 1000;
                        let stanza_id =
                            crate::archive::archive_id(at_micros, &format!("{seq:012}"));
                        let xml = format!(
                            "<message xmlns='jabber:client' to='{owner}@localhost' type='chat' \
                             id='m{seq}' from='{peer}/bench'><body>{body}</body><stanza-id \
                             xmlns='urn:xmpp:sid:0' id='{stanza_id}' by='{owner}@localhost'/></message>"
                        );
                        let id = tail.take_id();
                        append.execute(params![
                            id,
                            owner,
                            seq,
                            stanza_id,
                            format!("{peer}/bench"),
                            xml,
                            at_micros,
                            peer,
                            body
                        ])?;
                        added.push(Added {
                            owner,
                            id,
                            seq,
                            origin_key: None,
                        });
                    }
                }
                drop(append);
                tx.commit()?;
            }
            tail.committed(added);
            Ok(TailMove {
                conn,
                tail,
                generation,
            })
        }

        /// Moves the whole generation into `inbox` as the writer does (a
        /// chunk of owners per transaction); returns how many entries moved.
        pub fn run(&mut self) -> Result<usize> {
            let mut moved = 0;
            while !self.tail.owners_of[self.generation].is_empty() {
                moved += self
                    .tail
                    .drain(&self.conn, self.generation, DRAIN_CHUNK, i64::MAX)?
                    .entries;
            }
            Ok(moved)
        }

        /// What making the generation an archive *segment* in place would
        /// cost (ARCHITECTURE.md, "An archive laid out for appends"): the
        /// archive's four keys and a full-text index built over its file,
        /// each in one pass over rows in arrival order, sorted in bulk,
        /// rather than moved into `inbox` entry by entry. Returns how many
        /// entries the full-text index took. Measurement only: nothing reads
        /// such a segment yet.
        pub fn build_segment(&mut self) -> Result<usize> {
            let tx = self.conn.unchecked_transaction()?;
            let indexed = index_segment(&tx, super::schema(self.generation))?;
            tx.commit()?;
            Ok(indexed)
        }

        /// What a merge of segments would cost per entry, estimated on the
        /// generation: its rows written again, in order of owner and number,
        /// to a new file (`merged.db` beside the database), and that file's
        /// keys and full text built as [`TailMove::build_segment`] builds
        /// them. A merge of several segments reads each in key order where
        /// this reads one in arrival order and sorts it: the same writes.
        /// Returns how many entries the full-text index took.
        pub fn merge_segment(&mut self) -> Result<usize> {
            // Beside the database, not among the tail's files (`recover`
            // would take any `.db` there for a generation left by a crash).
            let file = self.tail.database.with_file_name("merged.db");
            super::attach(&self.conn, &file, "merged", false)?;
            let merged = (|| {
                let tx = self.conn.unchecked_transaction()?;
                tx.execute(
                    &format!(
                        "INSERT INTO merged.entries ({COLUMNS}) SELECT {COLUMNS} FROM {} \
                         ORDER BY owner, seq",
                        table(self.generation)
                    ),
                    [],
                )?;
                let indexed = index_segment(&tx, "merged")?;
                tx.commit()?;
                Ok(indexed)
            })();
            self.conn.execute_batch("DETACH DATABASE merged")?;
            merged
        }

        /// Indexes what moved for full-text search as the writer does (its
        /// passes, [`super::super::sqlite::full_text_pass`]); returns how
        /// many rows were indexed.
        pub fn index(&mut self) -> Result<usize> {
            let mut indexed = 0;
            loop {
                let pass = super::super::sqlite::full_text_pass(&self.conn)?;
                indexed += pass.indexed;
                if !pass.more {
                    return Ok(indexed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's connection to a database with the part of the schema the
    /// tail touches (the store's migrations are async, on sqlx).
    fn open(database: &Path) -> Connection {
        let conn = Connection::open(database).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS users (username TEXT PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS inbox (
                 owner TEXT NOT NULL, seq INTEGER NOT NULL, stanza_id TEXT NOT NULL,
                 sender TEXT NOT NULL, kind TEXT NOT NULL, xml TEXT NOT NULL,
                 at_micros INTEGER NOT NULL, peer TEXT NOT NULL, direction TEXT NOT NULL,
                 body TEXT, origin TEXT, PRIMARY KEY (owner, seq));
             CREATE TABLE IF NOT EXISTS fts_state (id INTEGER PRIMARY KEY, next_rowid INTEGER);
             INSERT OR IGNORE INTO fts_state VALUES (1, 1);
             INSERT OR IGNORE INTO users VALUES ('alice'), ('bob');
             SELECT {COLUMNS} FROM inbox"
        ))
        .expect("schema");
        conn
    }

    fn seqs(conn: &Connection, owner: &str) -> Vec<i64> {
        let mut select = conn
            .prepare("SELECT seq FROM inbox WHERE owner = ?1 ORDER BY seq")
            .expect("select");
        select
            .query_map([owner], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// With an archive, a generation's rows stay in its file while its owners
    /// move one chunk at a time: a crash then must not bring back what was
    /// deleted from `inbox` since it moved.
    #[test]
    fn a_crash_mid_drain_brings_back_nothing_deleted_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = dir.path().join("kith.db");
        let conn = open(&database);
        let shared = Arc::new(TailShared::default());
        shared.set_mode(Some(Arc::new(|_: &str| true)), Delivered::Kept);
        let mut tail = Tail::new(shared, database.clone());
        tail.recover(&conn).expect("files attached");
        let g = tail.current;
        let mut added = Vec::new();
        for owner in ["alice", "bob"] {
            for seq in 1..=2 {
                let id = tail.take_id();
                conn.execute(
                    &format!(
                        "INSERT INTO {} ({COLUMNS}, id) VALUES (?1, ?2, 'x', 'carol@localhost',
                         'chat', '<message/>', 1, 'carol@localhost', 'in', NULL, NULL, ?3)",
                        table(g)
                    ),
                    params![owner, seq, id],
                )
                .expect("append");
                added.push(Added {
                    owner,
                    id,
                    seq,
                    origin_key: None,
                });
            }
        }
        tail.committed(added);
        // One owner moves, in two chunks of one (its mark goes up); the
        // other still waits. (The writer drains closed generations only;
        // the file is the same either way.)
        for _ in 0..2 {
            let moved = tail.drain(&conn, g, 1, i64::MAX).expect("drain");
            assert_eq!(moved.entries, 1);
        }
        let (drained, waiting) = if seqs(&conn, "alice").is_empty() {
            ("bob", "alice")
        } else {
            ("alice", "bob")
        };
        assert_eq!(seqs(&conn, drained), [1, 2]);
        // "Delete for me" of both moved entries, then the server dies.
        conn.execute("DELETE FROM inbox WHERE owner = ?1", [drained])
            .expect("delete");
        drop(tail);
        drop(conn);

        let conn = open(&database);
        let mut tail = Tail::new(Arc::new(TailShared::default()), database);
        tail.recover(&conn).expect("recovered");
        assert!(
            seqs(&conn, drained).is_empty(),
            "deleted entries stay deleted"
        );
        assert_eq!(seqs(&conn, waiting), [1, 2], "the waiting entries moved");
    }
}
