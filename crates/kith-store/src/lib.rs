//! # kith-store — the storage layer of kith
//!
//! One storage interface, [`Store`], with two real backends selected by URL:
//!
//! * **SQLite** (the default, embedded): `sqlite://path/to/kith.db` (or
//!   `sqlite:path`). The file and its parent directory are created if missing;
//!   the database runs in WAL mode with `synchronous=NORMAL`,
//!   `foreign_keys=ON` and a 5 s busy timeout. `sqlite::memory:` gives a
//!   private throwaway database (a temporary file, removed when the last clone
//!   of the store is dropped; for tests).
//! * **PostgreSQL**: `postgres://…` or `postgresql://…` (any URL sqlx accepts,
//!   e.g. with `?options=-c search_path%3Dkith` to pick a schema).
//!
//! ## Design
//!
//! Every query is written **once** and run through sqlx's runtime-selected
//! [`sqlx::Any`] driver (but the group commit's, which each engine runs its own
//! way: `batch`), with `$1, $2, …` placeholders (sqlx's SQLite driver
//! binds `$N` to argument N, like PostgreSQL does). To keep one query text
//! valid on both engines the SQL sticks to the common subset: `INSERT … ON
//! CONFLICT … DO UPDATE/NOTHING`, `RETURNING`, no engine-specific functions.
//! Only the DDL differs, so each migration carries SQL for both dialects (see
//! the `migrate` module); migrations run at [`Store::open`] and are idempotent.
//!
//! Column types are restricted to what `Any` maps cleanly: integers are
//! `INTEGER`/`BIGINT` and read as `i64`, booleans are stored as `0`/`1`
//! integers (the `Any` driver cannot decode a SQLite integer as `bool`),
//! timestamps are `i64` (unix microseconds, or seconds where the API says so),
//! byte strings are `BLOB`/`BYTEA`. Sorting of returned lists happens in Rust
//! so the order is the same byte-wise order on both engines, whatever the
//! PostgreSQL collation.
//!
//! Per-user counters live on the `users` row: `roster_version` (XEP-0237, bumped
//! by every roster change) and `inbox_seq` (the last inbox sequence number
//! handed out). Writes bump the counter with `UPDATE … RETURNING` in the same
//! transaction as the data change, so the row lock serialises writers per user
//! on PostgreSQL, and numbers are strictly increasing and never reused even
//! after entries are removed. (SQLite's inbox writer, the only appender there,
//! keeps each owner's head in memory instead and `inbox_seq` is brought up to
//! date before entries are deleted: `batch::sqlite`, `devices::keep_seq_marks`.) On SQLite every write transaction starts with
//! `BEGIN IMMEDIATE`, so writers queue on the busy timeout instead of failing
//! when upgrading a read lock.
//!
//! ## Owners must exist
//!
//! All per-user data (roster, inbox, vCard, private XML, blocklist, last
//! activity) references `users(username)` with `ON DELETE CASCADE`. Writing
//! data for an owner that has no account fails with
//! [`StoreError::NoSuchUser`]; reading it returns the empty answer (no items,
//! `None`, version `0`). [`Store::delete_user`] removes the account and all of
//! its data in one transaction (explicitly, not only via the cascade).
//! Roster items *naming* a contact are free-form: contacts may be remote JIDs
//! or users that do not exist.
//!
//! Usernames are expected already normalised (lowercase localparts) and JIDs
//! as bare-JID strings; the store compares them byte for byte.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The columns of an inbox log entry, as a literal for `concat!`.
macro_rules! inbox_columns {
    () => {
        "seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body"
    };
}

mod archive;
mod batch;
mod devices;
mod edit;
mod error;
mod fast;
mod lease;
mod migrate;
mod muc;
mod pep;
mod phone;
mod privacy;
mod push;
mod read;
mod types;
mod uploads;

/// Faults injected into the store, for its own tests (feature
/// `fault-injection`, which only kith-store's tests turn on; a build that
/// has it, e.g. a workspace-wide `cargo test`, behaves the same until a test
/// arms a fault).
#[cfg(feature = "fault-injection")]
pub mod fault {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Which commit of the log's tail fails.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Kind {
        /// One that appends rows to the tail.
        Append,
        /// One that settles an owner (moves its waiting rows into `inbox`).
        Settle,
    }

    static ARMED: Mutex<Vec<(PathBuf, Kind)>> = Mutex::new(Vec::new());
    /// Whether a fault was ever armed: until then a commit looks no further.
    static EVER: AtomicBool = AtomicBool::new(false);

    fn canonical(path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }

    fn arm(database: &Path, kind: Kind) {
        let mut armed = ARMED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        armed.push((canonical(database), kind));
        EVER.store(true, Ordering::Release);
    }

    /// The next commit of the inbox-log writer of the SQLite database at
    /// `database` that appends rows to the log's tail fails as one does when
    /// the tail's file fails after the main file committed (a full disk): the
    /// main file's part stands, the tail's rows are gone.
    pub fn fail_next_tail_commit(database: &Path) {
        arm(database, Kind::Append);
    }

    /// The next commit of that writer that settles an owner with entries
    /// waiting in the tail fails the same way: the entries it moved into
    /// `inbox` are there, and the tail's file still holds them (its deletions
    /// did not commit).
    pub fn fail_next_tail_settle(database: &Path) {
        arm(database, Kind::Settle);
    }

    /// Whether a fault of `kind` is armed for `database`, disarming it.
    pub(crate) fn take(database: &str, kind: Kind) -> bool {
        if !EVER.load(Ordering::Acquire) {
            return false;
        }
        let database = canonical(Path::new(database));
        let mut armed = ARMED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match armed
            .iter()
            .position(|(path, k)| *path == database && *k == kind)
        {
            Some(at) => {
                armed.swap_remove(at);
                true
            }
            None => false,
        }
    }
}

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Row, Transaction};

pub use archive::{
    ARCHIVE_ID_RANDOM, ArchiveBounds, ArchiveDefault, ArchiveError, ArchiveMark, ArchivePage,
    ArchiveQuery, MamPrefs, Paging, archive_id,
};
/// Fixtures for the store's benchmarks (`benches/`); not an interface.
#[doc(hidden)]
pub use batch::tail_bench as bench;
pub use batch::{Delivered, WriterMetrics};
pub use error::{Result, StoreError};
pub use fast::{FastTokens, NewFastToken};
pub use lease::{Fence, Lease};
pub use muc::{Live, RoomAffiliation, RoomInvite, RoomMember, StoredRoom};
pub use pep::{PepExpired, PepItem, PepNode, PepNodeConfig, PepWrite};
pub use phone::{DeviceCredential, LinkRequest, PhoneClaim, VerificationCode};
pub use privacy::PrivacySettings;
pub use push::{PushEnabled, PushKind, PushRegistration};
pub use types::{
    DeviceStart, InboxEntry, NewInboxEntry, ParseSubscriptionError, RosterCap, RosterItem,
    ScramSecret, StoredCredentials, Subscription,
};
pub use uploads::{NewUpload, Upload, UploadCreated, UploadState};

use read::{Arg, Columns};
use types::{decode_groups, encode_groups};

/// Default pool size for SQLite: one writer at a time anyway, a few readers.
pub const DEFAULT_SQLITE_MAX_CONNECTIONS: u32 = 4;
/// Default pool size for PostgreSQL.
pub const DEFAULT_POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// SQLite busy timeout: how long a writer waits for the write lock.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Records when an owner's last session ended; writes nothing (and changes no
/// row) for an owner without an account, so a batch never fails on it.
pub(crate) const SET_LAST_ACTIVITY: &str = "INSERT INTO last_activity (owner, at_secs, status)
     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE username = $1)
     ON CONFLICT (owner) DO UPDATE SET at_secs = excluded.at_secs, status = excluded.status";

/// Which engine a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Picks the backend from a database URL's scheme.
    pub fn from_url(url: &str) -> Result<Backend> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(Backend::Sqlite),
            Some("postgres") | Some("postgresql") => Ok(Backend::Postgres),
            _ => Err(StoreError::UnsupportedUrl(redact(url))),
        }
    }
}

/// The storage handle. Cheap to clone (the pool is reference-counted).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    writer: batch::Writer,
    /// SQLite only: connections for short reads on the caller's thread (`read`).
    readers: Option<Arc<read::Readers>>,
    /// The temporary file behind `sqlite::memory:`, removed with the last clone.
    _temp: Option<Arc<TempDb>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("connections", &self.pool.size())
            .finish()
    }
}

impl Store {
    /// Connects to `url` with the default pool size and applies migrations.
    pub async fn open(url: &str) -> Result<Store> {
        let max = match Backend::from_url(url)? {
            Backend::Sqlite => DEFAULT_SQLITE_MAX_CONNECTIONS,
            Backend::Postgres => DEFAULT_POSTGRES_MAX_CONNECTIONS,
        };
        Store::open_with(url, max).await
    }

    /// Connects to `url` with at most `max_connections` pooled connections
    /// (at least 1) and applies migrations.
    pub async fn open_with(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let max_connections = max_connections.max(1);
        let (pool, file, temp) = match backend {
            Backend::Sqlite => {
                let (pool, file, temp) = open_sqlite(url, max_connections).await?;
                (pool, Some(file), temp)
            }
            Backend::Postgres => {
                let opts = AnyConnectOptions::from_str(url)?;
                // One direct connection first: the pool retries failed
                // connects until its acquire timeout and then reports only
                // "pool timed out"; this surfaces the real error at once.
                sqlx::AnyConnection::connect_with(&opts)
                    .await?
                    .close()
                    .await?;
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await?;
                (pool, None, None)
            }
        };
        migrate::run(&pool, backend).await?;
        tracing::debug!(?backend, max_connections, "store opened");
        let writer = match &file {
            Some(file) => batch::Writer::start_sqlite(file)?,
            None => {
                // The group commit's own connection (array parameters, which
                // the `Any` driver can't bind; see `batch::postgres`).
                let writer_pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(sqlx::postgres::PgConnectOptions::from_str(url)?)
                    .await?;
                batch::Writer::start_postgres(writer_pool)
            }
        };
        let readers = file.map(|file| Arc::new(read::Readers::new(file)));
        Ok(Store {
            pool,
            backend,
            writer,
            readers,
            _temp: temp,
        })
    }

    /// Turns the log's tail on, at the server's start: `online` tells whether
    /// an owner (a username) has a session now, and on SQLite that owner's
    /// 1:1 entries and copies of group messages then wait in the tail,
    /// appended in order to a small file instead of into the indexed log
    /// (`batch::tail`). What the tail's compaction does with an entry every
    /// device of its owner has is `delivered`'s to say: dropped (retention
    /// "until delivered": most entries never cost an index entry) or kept (an
    /// archive: every entry moves into the log once its generation, 3 s, is
    /// over, a few owners' entries per transaction, ordered by owner and
    /// number). `online` `None`
    /// (the default): every entry goes to the log at once.
    ///
    /// The server calls this once at start, either way: what a previous run
    /// left waiting in the tail moves into the log first (other processes
    /// opening the database, such as the CLI, leave the tail alone).
    pub async fn set_tail(&self, online: Option<Live>, delivered: Delivered) -> Result<()> {
        self.writer.set_tail(online, delivered).await
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The inbox-log writer's queue and what it has taken on (for metrics).
    pub fn writer_metrics(&self) -> WriterMetrics {
        self.writer.metrics()
    }

    /// Closes every pooled connection (waiting for ones in use). Other clones
    /// of this store become unusable. Optional: dropping all clones also works.
    pub async fn close(&self) {
        if let Some(readers) = &self.readers {
            readers.close();
        }
        self.writer.close().await;
        self.pool.close().await;
    }

    /// The schema version currently applied.
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) AS v FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0))
    }

    // ------------------------------------------------------------------
    // accounts
    // ------------------------------------------------------------------

    /// Creates an account. `false` (and no change) if it already existed.
    pub async fn create_user(&self, username: &str, creds: &StoredCredentials) -> Result<bool> {
        let c = CredCols::new(creds);
        let res = sqlx::query(
            "INSERT INTO users (username,
                sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key,
                roster_version, inbox_seq, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, $10)
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(username)
        .bind(c.sha1_salt)
        .bind(c.sha1_iterations)
        .bind(c.sha1_stored_key)
        .bind(c.sha1_server_key)
        .bind(c.sha256_salt)
        .bind(c.sha256_iterations)
        .bind(c.sha256_stored_key)
        .bind(c.sha256_server_key)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Replaces an account's SCRAM secrets. `false` if there is no such user.
    /// A password change: the account's FAST tokens (`fast.rs`) go with the old
    /// password.
    pub async fn set_credentials(&self, username: &str, creds: &StoredCredentials) -> Result<bool> {
        let c = CredCols::new(creds);
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE users SET
                sha1_salt = $2, sha1_iterations = $3, sha1_stored_key = $4, sha1_server_key = $5,
                sha256_salt = $6, sha256_iterations = $7, sha256_stored_key = $8,
                sha256_server_key = $9
             WHERE username = $1",
        )
        .bind(username)
        .bind(c.sha1_salt)
        .bind(c.sha1_iterations)
        .bind(c.sha1_stored_key)
        .bind(c.sha1_server_key)
        .bind(c.sha256_salt)
        .bind(c.sha256_iterations)
        .bind(c.sha256_stored_key)
        .bind(c.sha256_server_key)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM fast_tokens WHERE owner = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(res.rows_affected() > 0)
    }

    /// An account's SCRAM secrets, `None` if there is no such user.
    pub async fn credentials(&self, username: &str) -> Result<Option<StoredCredentials>> {
        self.row(
            "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                    sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key
             FROM users WHERE username = $1",
            &[Arg::Text(username)],
            |row| {
                Ok(StoredCredentials {
                    sha1: scram_from_row(row, "sha1")?,
                    sha256: scram_from_row(row, "sha256")?,
                })
            },
        )
        .await
    }

    /// Whether the account exists.
    pub async fn user_exists(&self, username: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// All usernames (accounts, not rooms), sorted byte-wise.
    pub async fn list_users(&self) -> Result<Vec<String>> {
        // Rooms own logs (their archives) but are not accounts.
        let rows = sqlx::query(
            "SELECT username FROM users WHERE username NOT IN (SELECT jid FROM muc_rooms)",
        )
        .fetch_all(&self.pool)
        .await?;
        sorted_strings(&rows, "username")
    }

    /// Deletes the account and all its data (roster, inbox, vCard, private
    /// XML, blocklist, last activity) in one transaction. `false` if there was
    /// no such user. Other users' roster items naming this user are left alone
    /// (see [`Store::roster_owners_of`]).
    pub async fn delete_user(&self, username: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // Lock the user row first (serialises against concurrent writers).
        let existed =
            sqlx::query("UPDATE users SET roster_version = roster_version WHERE username = $1")
                .bind(username)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        for sql in [
            "DELETE FROM roster_items WHERE owner = $1",
            "DELETE FROM inbox WHERE owner = $1",
            "DELETE FROM devices WHERE owner = $1",
            "DELETE FROM fast_tokens WHERE owner = $1",
            "DELETE FROM device_credentials WHERE owner = $1",
            "DELETE FROM phone_numbers WHERE username = $1",
            "DELETE FROM discovered_contacts WHERE owner = $1",
            "DELETE FROM discovery_quota WHERE owner = $1",
            "DELETE FROM link_requests WHERE approved_owner = $1",
            "DELETE FROM vcards WHERE owner = $1",
            "DELETE FROM private_xml WHERE owner = $1",
            "DELETE FROM pep_items WHERE owner = $1",
            "DELETE FROM pep_affiliations WHERE owner = $1",
            "DELETE FROM pep_subscriptions WHERE owner = $1",
            "DELETE FROM pep_nodes WHERE owner = $1",
            "DELETE FROM blocklist WHERE owner = $1",
            "DELETE FROM last_activity WHERE owner = $1",
            "DELETE FROM privacy_settings WHERE owner = $1",
            "DELETE FROM users WHERE username = $1",
        ] {
            sqlx::query(sql).bind(username).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if existed {
            self.writer.forget(username).await?;
        }
        Ok(existed)
    }

    // ------------------------------------------------------------------
    // roster
    // ------------------------------------------------------------------

    /// The owner's roster version and items, sorted by contact.
    /// `(0, [])` for an unknown owner.
    pub async fn roster(&self, owner: &str) -> Result<(i64, Vec<RosterItem>)> {
        // Version and items in one statement, so they come from one snapshot
        // on both engines (and a login pays one round trip, not four). An
        // owner without items yields one row with NULL item columns.
        let rows = self
            .rows(
                "SELECT u.roster_version, r.contact, r.name, r.subscription, r.ask,
                        r.pending_in, r.approved, r.group_names
                 FROM users u LEFT JOIN roster_items r ON r.owner = u.username
                 WHERE u.username = $1",
                &[Arg::Text(owner)],
                |row| {
                    let version = row.int("roster_version")?;
                    let item = match row.opt_text("contact")? {
                        Some(_) => Some(roster_item_from_row(row)?),
                        None => None,
                    };
                    Ok((version, item))
                },
            )
            .await?;
        let Some(&(version, _)) = rows.first() else {
            return Ok((0, Vec::new()));
        };
        let mut items: Vec<RosterItem> = rows.into_iter().filter_map(|(_, item)| item).collect();
        items.sort_unstable_by(|a, b| a.contact.cmp(&b.contact));
        Ok((version, items))
    }

    /// The owner's current roster version (`0` for an unknown owner or a
    /// roster never changed).
    pub async fn roster_version(&self, owner: &str) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        roster_version_in(&mut conn, owner).await
    }

    /// One roster item.
    pub async fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>> {
        self.row(
            "SELECT contact, name, subscription, ask, pending_in, approved, group_names
             FROM roster_items WHERE owner = $1 AND contact = $2",
            &[Arg::Text(owner), Arg::Text(contact)],
            roster_item_from_row,
        )
        .await
    }

    /// Inserts or replaces the item for `item.contact`; returns the new roster
    /// version. [`StoreError::NoSuchUser`] if the owner has no account,
    /// [`StoreError::RosterFull`] (nothing written) if the item is new and its
    /// kind of row is at `cap` ([`RosterCap`]: unanswered requests and contacts
    /// are counted apart).
    pub async fn put_roster_item(
        &self,
        owner: &str,
        item: &RosterItem,
        cap: RosterCap,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        // The bump locks the owner's row first (PostgreSQL; SQLite's write
        // transaction holds the lock already), so two writers cannot both
        // count the roster one short of full and both add.
        let version = bump_roster_version(&mut tx, owner).await?;
        // `requests`: the rows `RosterItem::is_request_only` says are requests.
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM roster_items WHERE owner = $1) AS held,
                    (SELECT COUNT(*) FROM roster_items WHERE owner = $1
                        AND subscription = 'none' AND ask = 0 AND pending_in = 1
                        AND name IS NULL AND group_names = '') AS requests,
                    (SELECT COUNT(*) FROM roster_items WHERE owner = $1 AND contact = $2)
                        AS present",
        )
        .bind(owner)
        .bind(item.contact.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let count = |column: &str| -> Result<usize> {
            Ok(usize::try_from(row.try_get::<i64, _>(column)?).unwrap_or(usize::MAX))
        };
        let (held, requests, present) = (count("held")?, count("requests")?, count("present")?);
        let full = if item.is_request_only() {
            (requests >= cap.requests).then_some(cap.requests)
        } else {
            (held.saturating_sub(requests) >= cap.items).then_some(cap.items)
        };
        if let (0, Some(max)) = (present, full) {
            tx.rollback().await?;
            return Err(StoreError::RosterFull {
                owner: owner.to_owned(),
                max,
            });
        }
        sqlx::query(
            "INSERT INTO roster_items
                (owner, contact, name, subscription, ask, pending_in, approved, group_names)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (owner, contact) DO UPDATE SET
                name = excluded.name,
                subscription = excluded.subscription,
                ask = excluded.ask,
                pending_in = excluded.pending_in,
                approved = excluded.approved,
                group_names = excluded.group_names",
        )
        .bind(owner)
        .bind(item.contact.as_str())
        .bind(item.name.as_deref())
        .bind(item.subscription.as_str())
        .bind(i64::from(item.ask))
        .bind(i64::from(item.pending_in))
        .bind(i64::from(item.approved))
        .bind(encode_groups(&item.groups))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        tx.commit().await?;
        Ok(version)
    }

    /// Removes the item for `contact`; returns the new roster version, or
    /// `None` (and no version change) if there was no such item.
    pub async fn remove_roster_item(&self, owner: &str, contact: &str) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        // Bump first, like every roster write: the user row is always locked
        // before roster rows, so concurrent writers cannot deadlock on
        // PostgreSQL. The bump is rolled back if nothing was removed.
        let version = match bump_roster_version(&mut tx, owner).await {
            Ok(v) => v,
            Err(StoreError::NoSuchUser(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let removed = sqlx::query("DELETE FROM roster_items WHERE owner = $1 AND contact = $2")
            .bind(owner)
            .bind(contact)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(version))
    }

    /// Users whose roster holds `contact`, sorted.
    pub async fn roster_owners_of(&self, contact: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT owner FROM roster_items WHERE contact = $1")
            .bind(contact)
            .fetch_all(&self.pool)
            .await?;
        sorted_strings(&rows, "owner")
    }

    // ------------------------------------------------------------------
    // inbox log
    // ------------------------------------------------------------------

    /// Appends to the owner's inbox log; returns the entry's sequence number
    /// (per owner, strictly increasing from 1, never reused).
    /// [`StoreError::NoSuchUser`] if the owner has no account.
    pub async fn inbox_append(&self, owner: &str, entry: &NewInboxEntry<'_>) -> Result<i64> {
        // Through the group-commit writer (see `batch/`): durable on return.
        let mut results = self.writer.append(&[(owner, *entry)]).await?;
        results.pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Appends several entries (to one or more owners' logs) in one transaction;
    /// one result per entry, in order. Durable on return.
    pub async fn inbox_append_all(
        &self,
        entries: &[(&str, NewInboxEntry<'_>)],
    ) -> Result<Vec<Result<i64>>> {
        self.writer.append(entries).await
    }

    /// Queues entries for the next group commit and returns as soon as they are
    /// queued (waiting only when the writer is saturated); `then` runs right after
    /// the commit with one result per entry (as [`Store::inbox_append_all`]).
    ///
    /// `then` runs in commit order (on one task of the runtime that opened the
    /// store: `batch::Callbacks`): callbacks of appends
    /// queued one after the other run in that order, and their sequence numbers
    /// increase in that order, so handing entries to readers from `then` keeps
    /// log order without a lock. It must be quick and must not block or panic.
    ///
    /// The entries are copied before this returns: the future (small, for
    /// callers that carry it in every message's handling) only waits for room
    /// in the writer's queue when it is full.
    pub fn inbox_append_then<F>(
        &self,
        entries: &[(&str, NewInboxEntry<'_>)],
        then: F,
    ) -> impl Future<Output = Result<()>> + Send + use<'_, F>
    where
        F: FnOnce(Vec<Result<i64>>) + Send + Sync + 'static,
    {
        self.writer.append_then(entries, Box::new(then))
    }

    /// Up to `limit` entries with `seq > after_seq`, in sequence order.
    pub async fn inbox_after(
        &self,
        owner: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<InboxEntry>> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        self.writer.settle(owner).await?;
        // A page can hold hundreds of stanzas of up to the stanza size limit:
        // not a short read (`read.rs`). On SQLite, whether there is anything
        // at all is one: the common case at a login, nothing owed, costs no
        // hand-over to the pool's thread.
        if self.readers.is_some() {
            let owed = self
                .row(
                    "SELECT seq FROM inbox WHERE owner = $1 AND seq > $2 ORDER BY seq LIMIT 1",
                    &[Arg::Text(owner), Arg::Int(after_seq)],
                    |row| row.int("seq"),
                )
                .await?;
            if owed.is_none() {
                return Ok(Vec::new());
            }
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            inbox_columns!(),
            " FROM inbox WHERE owner = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(owner)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| entry_from_row(row)).collect()
    }

    /// Deletes the owner's entries with `seq <= seq`; returns how many.
    pub async fn inbox_remove_through(&self, owner: &str, seq: i64) -> Result<u64> {
        self.writer.settle(owner).await?;
        let mut tx = self.begin_write().await?;
        devices::keep_seq_marks(&mut tx, self.backend, devices::Owners::One(owner)).await?;
        let res = sqlx::query("DELETE FROM inbox WHERE owner = $1 AND seq <= $2")
            .bind(owner)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(res.rows_affected())
    }

    /// How many entries the owner's inbox holds.
    pub async fn inbox_count(&self, owner: &str) -> Result<i64> {
        self.writer.settle(owner).await?;
        let row = sqlx::query("SELECT COUNT(*) AS n FROM inbox WHERE owner = $1")
            .bind(owner)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    // ------------------------------------------------------------------
    // vcard-temp and private XML storage
    // ------------------------------------------------------------------

    /// The owner's vCard XML.
    pub async fn vcard(&self, owner: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT xml FROM vcards WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("xml").map_err(StoreError::from))
            .transpose()
    }

    /// Stores (replaces) the owner's vCard XML.
    pub async fn set_vcard(&self, owner: &str, xml: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO vcards (owner, xml) VALUES ($1, $2)
             ON CONFLICT (owner) DO UPDATE SET xml = excluded.xml",
        )
        .bind(owner)
        .bind(xml)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        Ok(())
    }

    /// The owner's private XML for `namespace`.
    pub async fn private_xml(&self, owner: &str, namespace: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT xml FROM private_xml WHERE owner = $1 AND namespace = $2")
            .bind(owner)
            .bind(namespace)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("xml").map_err(StoreError::from))
            .transpose()
    }

    /// Stores (replaces) the owner's private XML for `namespace`.
    pub async fn set_private_xml(&self, owner: &str, namespace: &str, xml: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO private_xml (owner, namespace, xml) VALUES ($1, $2, $3)
             ON CONFLICT (owner, namespace) DO UPDATE SET xml = excluded.xml",
        )
        .bind(owner)
        .bind(namespace)
        .bind(xml)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        Ok(())
    }

    // ------------------------------------------------------------------
    // blocking
    // ------------------------------------------------------------------

    /// The owner's blocked JIDs, sorted.
    pub async fn blocklist(&self, owner: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT jid FROM blocklist WHERE owner = $1")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        sorted_strings(&rows, "jid")
    }

    /// Adds JIDs to the blocklist (already-blocked ones are fine), atomically.
    pub async fn block(&self, owner: &str, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for jid in jids {
            sqlx::query(
                "INSERT INTO blocklist (owner, jid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(owner)
            .bind(jid.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::owner_fk(e, owner))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes JIDs from the blocklist; an empty slice unblocks everyone.
    pub async fn unblock(&self, owner: &str, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            sqlx::query("DELETE FROM blocklist WHERE owner = $1")
                .bind(owner)
                .execute(&self.pool)
                .await?;
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for jid in jids {
            sqlx::query("DELETE FROM blocklist WHERE owner = $1 AND jid = $2")
                .bind(owner)
                .bind(jid.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `jid` is on the owner's blocklist (exact match).
    pub async fn is_blocked(&self, owner: &str, jid: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM blocklist WHERE owner = $1 AND jid = $2")
            .bind(owner)
            .bind(jid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    // ------------------------------------------------------------------
    // last activity
    // ------------------------------------------------------------------

    /// Records when the owner's last session ended (unix seconds) and its status
    /// text. [`StoreError::NoSuchUser`] if the owner has no account.
    pub async fn set_last_activity(
        &self,
        owner: &str,
        at_unix_secs: i64,
        status: &str,
    ) -> Result<()> {
        match self.backend {
            // Through the group-commit writer: a logout storm's writes share
            // commits rather than each take the write lock from the pool.
            Backend::Sqlite => self.writer.seen(owner, at_unix_secs, status).await,
            Backend::Postgres => {
                let written = sqlx::query(SET_LAST_ACTIVITY)
                    .bind(owner)
                    .bind(at_unix_secs)
                    .bind(status)
                    .execute(&self.pool)
                    .await
                    // Deleted between the check and the write.
                    .map_err(|e| StoreError::owner_fk(e, owner))?
                    .rows_affected();
                if written == 0 {
                    return Err(StoreError::NoSuchUser(owner.to_owned()));
                }
                Ok(())
            }
        }
    }

    /// When the owner's last session ended (unix seconds) and its status text.
    pub async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT at_secs, status FROM last_activity WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((row.try_get("at_secs")?, row.try_get("status")?)))
    }

    // ------------------------------------------------------------------

    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        begin_write(&self.pool, self.backend).await
    }
}

/// One inbox log entry from a row selected with `inbox_columns!()`.
pub(crate) fn entry_from_row(row: &dyn Columns) -> Result<InboxEntry> {
    Ok(InboxEntry {
        seq: row.int("seq")?,
        stanza_id: row.text("stanza_id")?,
        sender: row.text("sender")?,
        kind: row.text("kind")?,
        xml: row.text("xml")?,
        at_micros: row.int("at_micros")?,
        peer: row.text("peer")?,
        direction: row.text("direction")?,
        body: row.opt_text("body")?,
    })
}

/// Starts a transaction that will write. On SQLite it takes the write lock up
/// front (`BEGIN IMMEDIATE`), so waiting for it honours the busy timeout rather
/// than failing with `SQLITE_BUSY` on a read-to-write lock upgrade.
pub(crate) async fn begin_write(
    pool: &AnyPool,
    backend: Backend,
) -> Result<Transaction<'static, Any>> {
    Ok(match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => pool.begin().await?,
    })
}

/// Current time in unix microseconds (0 if the clock is before 1970).
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Builds the SQLite pool: prepares the file (directory, WAL) once, then
/// sets the per-connection pragmas on every pooled connection. Returns the
/// pool, the database file's absolute path and, for `sqlite::memory:`, the
/// temporary file standing in for it.
async fn open_sqlite(
    url: &str,
    max_connections: u32,
) -> Result<(AnyPool, PathBuf, Option<Arc<TempDb>>)> {
    let mut opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    // The inbox-log writer has a connection of its own (`batch::sqlite`), and
    // a private in-memory database cannot be shared between connections: a
    // throwaway file stands in for it.
    let temp = if url.contains(":memory:") || url.contains("mode=memory") {
        let temp = TempDb::create()?;
        opts = SqliteConnectOptions::new()
            .filename(temp.0.join("kith.db"))
            .create_if_missing(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        Some(Arc::new(temp))
    } else {
        None
    };
    // Make the path absolute and free of `..`: the Any driver only takes a
    // URL, and URL parsing would normalise `a/../b` differently.
    let filename = opts.get_filename().to_path_buf();
    let dir = match filename.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    create_dir(&dir)?;
    let dir = std::fs::canonicalize(&dir).map_err(|source| StoreError::Io {
        path: dir.clone(),
        source,
    })?;
    let Some(name) = filename.file_name() else {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    };
    let file = dir.join(name);
    let opts = opts.filename(&file);
    // journal_mode=WAL is persistent in the file; set it once, on a
    // connection of its own, before the pool exists (changing it needs an
    // exclusive lock that busy_timeout does not wait for).
    let conn = opts
        .clone()
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .connect()
        .await?;
    conn.close().await?;
    // The Any driver only takes a URL, which cannot carry pragmas: build
    // the URL from the parsed options and set pragmas in `after_connect`.
    let any_opts = AnyConnectOptions::from_url(&opts.to_url_lossy())?;
    let pool_opts = AnyPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                for pragma in [
                    "PRAGMA foreign_keys = ON",
                    "PRAGMA busy_timeout = 5000",
                    "PRAGMA synchronous = NORMAL",
                    // The inbox-log writer's checkpointer does them (batch::sqlite).
                    "PRAGMA wal_autocheckpoint = 0",
                ] {
                    sqlx::query(pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        });
    Ok((pool_opts.connect_with(any_opts).await?, file, temp))
}

/// A directory of its own under the system's temporary directory, removed
/// (with the database files in it) when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn create() -> Result<TempDb> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "kith-memory-{}-{n}-{}",
            std::process::id(),
            now_micros()
        ));
        std::fs::create_dir(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(TempDb(path))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***{}", &url[..s], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Credentials flattened into bindable columns.
struct CredCols<'a> {
    sha1_salt: &'a [u8],
    sha1_iterations: i64,
    sha1_stored_key: &'a [u8],
    sha1_server_key: &'a [u8],
    sha256_salt: &'a [u8],
    sha256_iterations: i64,
    sha256_stored_key: &'a [u8],
    sha256_server_key: &'a [u8],
}

impl<'a> CredCols<'a> {
    fn new(c: &'a StoredCredentials) -> Self {
        CredCols {
            sha1_salt: &c.sha1.salt,
            sha1_iterations: i64::from(c.sha1.iterations),
            sha1_stored_key: &c.sha1.stored_key,
            sha1_server_key: &c.sha1.server_key,
            sha256_salt: &c.sha256.salt,
            sha256_iterations: i64::from(c.sha256.iterations),
            sha256_stored_key: &c.sha256.stored_key,
            sha256_server_key: &c.sha256.server_key,
        }
    }
}

fn scram_from_row(row: &dyn Columns, prefix: &str) -> Result<ScramSecret> {
    let col = |name: &str| format!("{prefix}_{name}");
    let iterations = row.int(&col("iterations"))?;
    Ok(ScramSecret {
        salt: row.blob(&col("salt"))?,
        iterations: u32::try_from(iterations).map_err(|_| {
            StoreError::Corrupt(format!(
                "{prefix} iteration count {iterations} out of range"
            ))
        })?,
        stored_key: row.blob(&col("stored_key"))?,
        server_key: row.blob(&col("server_key"))?,
    })
}

fn roster_item_from_row(row: &dyn Columns) -> Result<RosterItem> {
    let sub = row.text("subscription")?;
    let subscription = Subscription::parse(&sub)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown subscription state {sub:?}")))?;
    Ok(RosterItem {
        contact: row.text("contact")?,
        name: row.opt_text("name")?,
        subscription,
        ask: row.int("ask")? != 0,
        pending_in: row.int("pending_in")? != 0,
        approved: row.int("approved")? != 0,
        groups: decode_groups(&row.text("group_names")?)?,
    })
}

fn sorted_strings(rows: &[AnyRow], col: &str) -> Result<Vec<String>> {
    let mut out = rows
        .iter()
        .map(|r| r.try_get::<String, _>(col))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    Ok(out)
}

async fn roster_version_in(conn: &mut sqlx::AnyConnection, owner: &str) -> Result<i64> {
    let row = sqlx::query("SELECT roster_version FROM users WHERE username = $1")
        .bind(owner)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Ok(r.try_get("roster_version")?),
        None => Ok(0),
    }
}

async fn bump_roster_version(conn: &mut sqlx::AnyConnection, owner: &str) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE users SET roster_version = roster_version + 1 WHERE username = $1
         RETURNING roster_version",
    )
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(r) => Ok(r.try_get("roster_version")?),
        None => Err(StoreError::NoSuchUser(owner.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::from_url("sqlite://a.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::from_url("sqlite:a.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::from_url("mysql://u:secret@h/db"),
            Err(StoreError::UnsupportedUrl(u)) if !u.contains("secret")
        ));
        assert!(Backend::from_url("kith.db").is_err());
    }

    #[test]
    fn redacts_password() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }

    /// The whole crate relies on sqlx's SQLite driver binding `$N` to the
    /// N-th argument (not to the N-th placeholder occurrence).
    #[tokio::test]
    async fn sqlite_dollar_placeholders_are_positional() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = Store::open(&url).await.unwrap();
        let row = sqlx::query("SELECT $2 AS a, $1 AS b, $2 AS c, $1 || $3 AS d")
            .bind("one")
            .bind("two")
            .bind("three")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>("a").unwrap(), "two");
        assert_eq!(row.try_get::<String, _>("b").unwrap(), "one");
        assert_eq!(row.try_get::<String, _>("c").unwrap(), "two");
        assert_eq!(row.try_get::<String, _>("d").unwrap(), "onethree");
    }

    #[tokio::test]
    async fn sqlite_pragmas_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/k.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert!(path.exists());
        let mut conn = store.pool.acquire().await.unwrap();
        let q = |sql: &'static str| sqlx::query(sql);
        let jm: String = q("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(jm, "wal");
        let sync: i64 = q("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let fk: i64 = q("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(fk, 1);
        let bt: i64 = q("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(bt, 5000);
    }

    #[tokio::test]
    async fn sqlite_in_memory_works() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        assert!(store.list_users().await.unwrap().is_empty());
        assert_eq!(
            store.schema_version().await.unwrap(),
            migrate::latest_version()
        );
    }
}
