//! Devices and their cursors into the inbox log (DESIGN.md, "the inbox log").
//!
//! A device is a resource that has logged in before. Each keeps a cursor: every
//! log entry with a greater sequence number is still owed to it. A device seen for
//! the first time starts at the owner's *delivered mark* — the highest entry any
//! device has acknowledged — so it gets what nobody has received yet (classic
//! offline messages) but not history others already have (that is MAM's job).

use std::time::{Duration, Instant};

use sqlx::Row;

use crate::read::Columns;
use crate::{Backend, DeviceStart, Result, Store, StoreError};

/// Registers a login (`$1` owner, `$2` resource, `$3` now): a device seen before
/// keeps its cursor; a new one starts at the owner's delivered mark. Two first
/// logins of one resource racing: the loser updates the winner's row and reads
/// its cursor. No row: the owner has no account. Decoded by [`start_from_row`].
pub(crate) const ATTACH: &str = "INSERT INTO devices (owner, resource, cursor, last_seen_micros)
     SELECT username, $2, delivered_seq, $3 FROM users WHERE username = $1
     ON CONFLICT (owner, resource) DO UPDATE SET last_seen_micros = $3
     RETURNING cursor, (SELECT COUNT(*) FROM room_fill WHERE owner = $1) AS rooms";

/// Where a device starts, from the row [`ATTACH`] returns.
pub(crate) fn start_from_row(row: &dyn Columns) -> Result<DeviceStart> {
    Ok(DeviceStart {
        cursor: row.int("cursor")?,
        in_rooms: row.int("rooms")? > 0,
    })
}

impl Store {
    /// Registers a login of `resource`, returning where its delivery starts.
    pub async fn device_attach(
        &self,
        owner: &str,
        resource: &str,
        now_micros: i64,
    ) -> Result<DeviceStart> {
        match self.backend {
            // Through the group-commit writer: the logins of a storm share commits.
            Backend::Sqlite => self.writer.attach(owner, resource, now_micros).await,
            // Through the pool: logins register in parallel (in the writer's
            // batch each upsert would be a network round trip in turn, with the
            // batch's appends waiting behind them).
            Backend::Postgres => {
                let row = sqlx::query(ATTACH)
                    .bind(owner)
                    .bind(resource)
                    .bind(now_micros)
                    .fetch_optional(&self.pool)
                    .await?;
                match &row {
                    Some(row) => start_from_row(row),
                    None => Err(StoreError::NoSuchUser(owner.to_owned())),
                }
            }
        }
    }

    /// Records that `resource` has received every entry through `seq`. Cursors
    /// only move forward; the owner's delivered mark follows the furthest device.
    pub async fn device_ack(
        &self,
        owner: &str,
        resource: &str,
        seq: i64,
        now_micros: i64,
    ) -> Result<()> {
        // Through the group-commit writer: acks of many devices share commits.
        self.writer.ack(owner, resource, seq, now_micros).await
    }

    /// The cursor of a known device.
    pub async fn device_cursor(&self, owner: &str, resource: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT cursor FROM devices WHERE owner = $1 AND resource = $2")
            .bind(owner)
            .bind(resource)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("cursor").map_err(StoreError::from))
            .transpose()
    }

    /// Forgets devices not seen since `before_micros` (WhatsApp drops unused linked
    /// devices), so one-off resources don't pin the log forever. Returns how many.
    pub async fn forget_idle_devices(&self, before_micros: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM devices WHERE last_seen_micros < $1")
            .bind(before_micros)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }

    /// The sequence number of the owner's newest log entry (0 when empty).
    pub async fn inbox_head(&self, owner: &str) -> Result<i64> {
        self.writer.settle(owner).await?;
        // On SQLite `users.inbox_seq` lags (the writer keeps heads in memory);
        // the newest entry is the head unless newer ones were deleted, and
        // then `keep_seq_marks` brought `inbox_seq` up to date.
        let row = sqlx::query(
            "SELECT inbox_seq, (SELECT MAX(seq) FROM inbox WHERE owner = $1) AS newest
             FROM users WHERE username = $1",
        )
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => {
                let mark: i64 = row.try_get("inbox_seq")?;
                let newest: Option<i64> = row.try_get("newest")?;
                Ok(mark.max(newest.unwrap_or(0)))
            }
            None => Ok(0),
        }
    }
}

/// Which entries a retention sweep deletes.
#[derive(Clone, Copy)]
enum Sweep {
    /// Those older than this (unix µs).
    Before(i64),
    /// Those every device of their owner has received.
    Delivered,
}

impl Sweep {
    /// The condition on an `inbox` row, with the time as `$3`.
    const fn condition(self) -> &'static str {
        match self {
            Sweep::Before(_) => "at_micros < $3",
            Sweep::Delivered => {
                "seq <= (SELECT MIN(d.cursor) FROM devices d WHERE d.owner = inbox.owner)"
            }
        }
    }

    fn before(self) -> i64 {
        match self {
            Sweep::Before(before) => before,
            Sweep::Delivered => i64::MAX,
        }
    }
}

/// How much of the log one retention transaction covers: SQLite rows by rowid
/// (the table's order, so a chunk empties whole pages), PostgreSQL sequence
/// numbers of one owner. As one `DELETE` over the whole log the sweep held the
/// write lock for 1.1 s with 200,000 entries (SQLite), and every message waited
/// behind it; chunked by owner on SQLite it dirtied a page per entry (an owner's
/// entries are spread over the table) and made the log start over every
/// 100–300 ms while it ran.
const SWEEP_ROWIDS: i64 = 1024;
const SWEEP_SEQS: i64 = 1024;
/// The pause after each chunk that deleted something, at least (and at least
/// four times as long as the chunk took): the sweep is background work.
const SWEEP_PAUSE: Duration = Duration::from_millis(50);

impl Store {
    /// Deletes log entries older than `before_micros` (time-based retention).
    pub async fn inbox_delete_before(&self, before_micros: i64) -> Result<u64> {
        self.sweep(Sweep::Before(before_micros)).await
    }

    /// Deletes every log entry that all of its owner's devices have received (the
    /// "until delivered" privacy mode). Owners without devices keep everything.
    pub async fn inbox_delete_delivered(&self) -> Result<u64> {
        self.sweep(Sweep::Delivered).await
    }

    /// Deletes what `sweep` says, in short transactions with pauses between
    /// them ([`SWEEP_ROWIDS`], [`SWEEP_SEQS`], [`SWEEP_PAUSE`]). Returns how many.
    async fn sweep(&self, sweep: Sweep) -> Result<u64> {
        // What waits in the log's tail: the tail's compaction applies the
        // "delivered" rule to it (and moves the rest); for the time-based
        // sweep it moves into `inbox` and is swept like the rest.
        let mut deleted = match sweep {
            Sweep::Delivered => self.writer.compact_tail().await?,
            Sweep::Before(_) => {
                self.writer.settle_all().await?;
                0
            }
        };
        match self.backend {
            Backend::Sqlite => {
                let row = sqlx::query("SELECT MIN(rowid) AS lo, MAX(rowid) AS hi FROM inbox")
                    .fetch_one(&self.pool)
                    .await?;
                let (Some(lo), Some(hi)) = (
                    row.try_get::<Option<i64>, _>("lo")?,
                    row.try_get::<Option<i64>, _>("hi")?,
                ) else {
                    return Ok(0);
                };
                let delete = format!(
                    "DELETE FROM inbox WHERE rowid >= $1 AND rowid <= $2 AND {}",
                    sweep.condition()
                );
                let mut from = lo;
                while from <= hi {
                    let to = hi.min(from.saturating_add(SWEEP_ROWIDS - 1));
                    let started = Instant::now();
                    let mut tx = self.begin_write().await?;
                    // The newest entries of the owners in this chunk may go.
                    keep_seq_marks(&mut tx, self.backend, Owners::Rows(from, to)).await?;
                    let res = sqlx::query(sqlx::AssertSqlSafe(delete.as_str()))
                        .bind(from)
                        .bind(to)
                        .bind(sweep.before())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    deleted += res.rows_affected();
                    from = to.saturating_add(1);
                    pause_if(res.rows_affected() > 0, started).await;
                }
            }
            Backend::Postgres => {
                // Per owner, the range of numbers that may go.
                let owners = sqlx::query(
                    "SELECT owner, MIN(seq) AS lo, MAX(seq) AS hi FROM inbox GROUP BY owner",
                )
                .fetch_all(&self.pool)
                .await?;
                let delete = format!(
                    "DELETE FROM inbox WHERE owner = $4 AND seq >= $1 AND seq <= $2 AND {}",
                    sweep.condition()
                );
                for row in owners {
                    let owner: String = row.try_get("owner")?;
                    let (lo, hi): (i64, i64) = (row.try_get("lo")?, row.try_get("hi")?);
                    let mut from = lo;
                    while from <= hi {
                        let to = hi.min(from.saturating_add(SWEEP_SEQS - 1));
                        let started = Instant::now();
                        // PostgreSQL's writer keeps `users.inbox_seq` current.
                        let res = sqlx::query(sqlx::AssertSqlSafe(delete.as_str()))
                            .bind(from)
                            .bind(to)
                            .bind(sweep.before())
                            .bind(&owner)
                            .execute(&self.pool)
                            .await?;
                        deleted += res.rows_affected();
                        from = to.saturating_add(1);
                        pause_if(res.rows_affected() > 0, started).await;
                    }
                }
            }
        }
        Ok(deleted)
    }
}

/// After a chunk of the sweep that `deleted` something (begun at `started`):
/// [`SWEEP_PAUSE`], or four times as long as the chunk took if longer.
async fn pause_if(deleted: bool, started: Instant) {
    if deleted {
        tokio::time::sleep(SWEEP_PAUSE.max(started.elapsed() * 4)).await;
    }
}

/// Whose newest sequence numbers [`keep_seq_marks`] records.
pub(crate) enum Owners<'a> {
    /// One owner's.
    One(&'a str),
    /// Those of the owners of the rows with these rowids, inclusive (SQLite).
    Rows(i64, i64),
}

/// Before entries are deleted: records the newest sequence number of each of
/// `owners` in `users.inbox_seq`, so that deleting the newest entries can't
/// make the SQLite writer hand a number out again after a restart (it loads an
/// owner's head as the greater of the two). PostgreSQL's writer keeps
/// `inbox_seq` current at every commit.
pub(crate) async fn keep_seq_marks(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    owners: Owners<'_>,
) -> Result<()> {
    if backend != Backend::Sqlite {
        return Ok(());
    }
    let newest = "(SELECT MAX(seq) FROM inbox WHERE owner = users.username)";
    let which = match owners {
        Owners::One(_) => "username = $1",
        Owners::Rows(..) => {
            "username IN (SELECT owner FROM inbox WHERE rowid >= $1 AND rowid <= $2)"
        }
    };
    let sql =
        format!("UPDATE users SET inbox_seq = {newest} WHERE inbox_seq < {newest} AND {which}");
    let query = sqlx::query(sqlx::AssertSqlSafe(sql));
    match owners {
        Owners::One(owner) => query.bind(owner).execute(&mut *conn).await?,
        Owners::Rows(from, to) => query.bind(from).bind(to).execute(&mut *conn).await?,
    };
    Ok(())
}
