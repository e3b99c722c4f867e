//! Short reads without a thread hand-over on SQLite.
//!
//! sqlx runs each SQLite connection on a thread of its own: every statement is
//! sent there and its rows sent back, two thread hand-overs (a futex wake and a
//! context switch each). For the small indexed reads a login makes (credentials,
//! roster, vCard photo hash, whether the log holds anything past a cursor) the
//! hand-overs cost several times the statement: they were half of a login's
//! CPU. [`Store::rows`] runs such a statement on the calling thread instead, on
//! a connection from a small pool of `query_only` connections (in WAL mode a
//! reader never waits for the writer). On PostgreSQL the same statement goes
//! through the sqlx pool.
//!
//! Only short reads belong here — an indexed lookup of one owner's rows, never a
//! page of stanzas: the caller's runtime thread runs the statement to the end.
//! Decoders are written once against [`Columns`], which both engines' rows
//! implement.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError};

/// A statement argument (bound to `$1`, `$2`, … in order).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// Text.
    Text(&'a str),
    /// An integer.
    Int(i64),
}

/// One result row, from either engine, read by column name.
pub(crate) trait Columns {
    /// An integer column (an error if NULL).
    fn int(&self, name: &str) -> Result<i64>;
    /// A text column (an error if NULL).
    fn text(&self, name: &str) -> Result<String>;
    /// A text column that may be NULL.
    fn opt_text(&self, name: &str) -> Result<Option<String>>;
    /// A byte-string column; NULL reads as empty (an empty SQLite blob may come
    /// back as NULL through sqlx's `Any` driver).
    fn blob(&self, name: &str) -> Result<Vec<u8>>;
}

impl Columns for AnyRow {
    fn int(&self, name: &str) -> Result<i64> {
        Ok(self.try_get(name)?)
    }
    fn text(&self, name: &str) -> Result<String> {
        Ok(self.try_get(name)?)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.try_get(name)?)
    }
    fn blob(&self, name: &str) -> Result<Vec<u8>> {
        Ok(self
            .try_get::<Option<Vec<u8>>, _>(name)?
            .unwrap_or_default())
    }
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, name: &str) -> Result<i64> {
        Ok(self.get(name)?)
    }
    fn text(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.get(name)?)
    }
    fn blob(&self, name: &str) -> Result<Vec<u8>> {
        Ok(self.get::<_, Option<Vec<u8>>>(name)?.unwrap_or_default())
    }
}

/// Names of the positional parameters, as SQLite sees `$1`, `$2`, …
const PARAMETERS: [&str; 8] = ["$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8"];

/// Fewest idle reader connections kept; a machine with more cores keeps one per
/// core (each runtime thread reads on one at a time; each connection holds its
/// own page cache). More are opened when more threads read at once, and closed
/// when handed back.
const MIN_IDLE: usize = 8;

/// Prepared statements each reader connection keeps.
const STATEMENT_CACHE: usize = 32;

/// How long a read waits on a lock before it fails. A WAL reader meets one only
/// in rare moments (recovery after a crash, another process holding the file
/// exclusively), and it waits on a runtime thread: one read failing beats every
/// session on that thread standing still for the store's 5 s busy timeout.
const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// The SQLite read connections, opened on first use.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    /// Set by [`Store::close`]: reads fail from then on, like the pool's.
    closed: AtomicBool,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Readers {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle: cores.max(MIN_IDLE),
            closed: AtomicBool::new(false),
        }
    }

    /// Closes the idle connections and fails every later read.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle().clear();
    }

    /// The idle connections (a panic elsewhere while they were locked leaves
    /// them as they were: a pop or a push, nothing half done).
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(READ_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// Runs `sql` with `args` on an idle connection, decoding every row.
    fn rows<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        decode: fn(&dyn Columns) -> Result<T>,
    ) -> Result<Vec<T>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let idle = self.idle().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let out = run(&conn, sql, args, decode);
        let mut idle = self.idle();
        if idle.len() < self.max_idle && !self.closed.load(Ordering::Acquire) {
            idle.push(conn);
        }
        out
    }
}

fn run<T>(
    conn: &Connection,
    sql: &str,
    args: &[Arg<'_>],
    decode: fn(&dyn Columns) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    bind(&mut stmt, args)?;
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// Binds `args` to a rusqlite statement's `$1`, `$2`, … by name: SQLite numbers
/// `$N` parameters in order of first appearance, not by `N`. The statement must
/// use every argument and no other parameter (PostgreSQL refuses a mismatch too).
pub(crate) fn bind(stmt: &mut rusqlite::Statement<'_>, args: &[Arg<'_>]) -> Result<()> {
    if args.len() > PARAMETERS.len() {
        return Err(StoreError::Corrupt(format!(
            "a statement with {} arguments (at most {})",
            args.len(),
            PARAMETERS.len()
        )));
    }
    if stmt.parameter_count() != args.len() {
        return Err(StoreError::Corrupt(format!(
            "a statement with {} parameters given {} arguments",
            stmt.parameter_count(),
            args.len()
        )));
    }
    for (arg, name) in args.iter().zip(PARAMETERS) {
        let Some(index) = stmt.parameter_index(name)? else {
            return Err(StoreError::Corrupt(format!("a statement without {name}")));
        };
        match *arg {
            Arg::Text(text) => stmt.raw_bind_parameter(index, text)?,
            Arg::Int(n) => stmt.raw_bind_parameter(index, n)?,
        }
    }
    Ok(())
}

impl Store {
    /// Every row of a short read (see the module documentation), decoded.
    pub(crate) async fn rows<T>(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
        decode: fn(&dyn Columns) -> Result<T>,
    ) -> Result<Vec<T>> {
        if let Some(readers) = &self.readers {
            return readers.rows(sql, args, decode);
        }
        let mut query = sqlx::query(sql);
        for arg in args {
            query = match *arg {
                Arg::Text(text) => query.bind(text),
                Arg::Int(n) => query.bind(n),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|row| decode(row)).collect()
    }

    /// The first row of a short read, if any.
    pub(crate) async fn row<T>(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
        decode: fn(&dyn Columns) -> Result<T>,
    ) -> Result<Option<T>> {
        Ok(self.rows(sql, args, decode).await?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(row: &dyn Columns) -> Result<String> {
        row.text("t")
    }

    #[test]
    fn parameters_bind_by_number_whatever_their_order_in_the_text() {
        let conn = Connection::open_in_memory().unwrap();
        // SQLite numbers `$N` parameters by first appearance: `$2` here is its
        // parameter 1. Bound by name, `$2` still gets the second argument.
        let rows = run(
            &conn,
            "SELECT $2 || '-' || $1 || '-' || $2 AS t",
            &[Arg::Text("one"), Arg::Text("two")],
            text,
        )
        .unwrap();
        assert_eq!(rows, ["two-one-two"]);
        // An argument the statement doesn't use is a mistake, as on PostgreSQL.
        assert!(
            run(
                &conn,
                "SELECT $1 AS t",
                &[Arg::Text("x"), Arg::Int(7)],
                text
            )
            .is_err()
        );
        assert!(
            run(
                &conn,
                "SELECT $1 || $3 AS t",
                &[Arg::Text("x"), Arg::Int(7)],
                text
            )
            .is_err()
        );
    }

    #[test]
    fn too_many_arguments_are_refused() {
        let conn = Connection::open_in_memory().unwrap();
        let args = [Arg::Int(1); 9];
        assert!(matches!(
            run(&conn, "SELECT $1 AS t", &args, text),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn null_blobs_read_as_empty_and_null_text_as_none() {
        let conn = Connection::open_in_memory().unwrap();
        let rows = run(&conn, "SELECT NULL AS b, NULL AS t, 5 AS n", &[], |row| {
            Ok((row.blob("b")?, row.opt_text("t")?, row.int("n")?))
        })
        .unwrap();
        assert_eq!(rows, [(Vec::new(), None, 5)]);
        // A NULL where a value is required is an error, not a default.
        assert!(run(&conn, "SELECT NULL AS t", &[], text).is_err());
    }
}
