//! The one error type of the storage layer.

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL names no backend this crate supports.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),

    /// A per-user write named an owner that has no account.
    #[error("no such user {0:?}")]
    NoSuchUser(String),

    /// A new roster row was refused: the owner's roster already holds `max`
    /// of its kind (contacts, or unanswered requests). Nothing was written.
    #[error("{owner:?}'s roster is full ({max} of this kind)")]
    RosterFull {
        /// Whose roster.
        owner: String,
        /// The limit it is at.
        max: usize,
    },

    /// The owner's log already holds an entry with this entry's origin key
    /// (a resent message): nothing was appended.
    #[error("duplicate of an entry already in {0:?}'s log")]
    Duplicate(String),

    /// A row held a value this code cannot interpret (e.g. an unknown
    /// subscription state or an out-of-range iteration count).
    #[error("corrupt data in store: {0}")]
    Corrupt(String),

    /// The database was migrated by a newer kith than this one.
    #[error(
        "database schema version {found} is newer than this kith supports ({supported}); \
         upgrade kith or restore a backup"
    )]
    SchemaTooNew {
        /// Highest version recorded in `schema_migrations`.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },

    /// Applying a migration failed; the migration's transaction was rolled back.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's version number.
        version: i64,
        /// The migration's short name.
        name: &'static str,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },

    /// A file-system operation on the SQLite database's files failed
    /// (creating its directory, replacing a file of the log's tail).
    #[error("database file {path}: {source}")]
    Io {
        /// The directory or file.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Any other database error (connection, constraint, I/O, …).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// An error from the SQLite connection the inbox-log writer drives itself
    /// (see `batch::sqlite`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The store's background writer is gone (the runtime is shutting down).
    #[error("the store is closed")]
    Closed,

    /// A commit spanning the inbox log's files failed after some of them had
    /// committed (SQLite commits WAL files one by one): what it wrote may be
    /// stored, in part, and is not retried.
    #[error("the commit failed part-way: {0}")]
    PartialCommit(String),

    /// A group message was not copied into this member's log now: the member
    /// had no session, and is owed it (copied when it next reads its log,
    /// `Store::room_catch_up`). Not a failure.
    #[error("owed to {0:?}, not copied yet")]
    Owed(String),

    /// A group message or membership change from a process that no longer
    /// holds the lease fencing room writes (`Store::fence_rooms`): another
    /// process may host the rooms now.
    #[error("room writes are fenced: this process no longer holds the rooms' lease")]
    Fenced,
}

impl StoreError {
    /// Turns a foreign-key violation on `owner` into [`StoreError::NoSuchUser`];
    /// passes every other error through.
    pub(crate) fn owner_fk(err: sqlx::Error, owner: &str) -> StoreError {
        let is_fk = err
            .as_database_error()
            .is_some_and(|db| db.is_foreign_key_violation());
        if is_fk {
            StoreError::NoSuchUser(owner.to_owned())
        } else {
            StoreError::Database(err)
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
