//! Devices and their cursors into the inbox log (DESIGN.md, "the inbox log").
//!
//! A device is a resource that has logged in before. Each keeps a cursor: every
//! log entry with a greater sequence number is still owed to it. A device seen for
//! the first time starts at the owner's *delivered mark* — the highest entry any
//! device has acknowledged — so it gets what nobody has received yet (classic
//! offline messages) but not history others already have (that is MAM's job).

use sqlx::Row;

use crate::{Backend, DeviceStart, Result, Store, StoreError};

impl Store {
    /// Registers a login of `resource`, returning where its delivery starts.
    pub async fn device_attach(
        &self,
        owner: &str,
        resource: &str,
        now_micros: i64,
    ) -> Result<DeviceStart> {
        // One statement each (no transaction): a login costs one round trip
        // to the database, not five. The common case is a device seen before.
        let seen = sqlx::query(
            "UPDATE devices SET last_seen_micros = $3 WHERE owner = $1 AND resource = $2
             RETURNING cursor",
        )
        .bind(owner)
        .bind(resource)
        .bind(now_micros)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = seen {
            return Ok(DeviceStart {
                cursor: row.try_get("cursor")?,
                new: false,
            });
        }
        // A new device starts at the owner's delivered mark. Two first logins
        // of one resource racing: the loser updates the winner's row and reads
        // its cursor.
        let row = sqlx::query(
            "INSERT INTO devices (owner, resource, cursor, last_seen_micros)
             SELECT username, $2, delivered_seq, $3 FROM users WHERE username = $1
             ON CONFLICT (owner, resource) DO UPDATE SET last_seen_micros = $3
             RETURNING cursor",
        )
        .bind(owner)
        .bind(resource)
        .bind(now_micros)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NoSuchUser(owner.to_owned()))?;
        Ok(DeviceStart {
            cursor: row.try_get("cursor")?,
            new: true,
        })
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

impl Store {
    /// Deletes log entries older than `before_micros` (time-based retention).
    pub async fn inbox_delete_before(&self, before_micros: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        keep_seq_marks(&mut tx, self.backend, None).await?;
        let res = sqlx::query("DELETE FROM inbox WHERE at_micros < $1")
            .bind(before_micros)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(res.rows_affected())
    }

    /// Deletes every log entry that all of its owner's devices have received (the
    /// "until delivered" privacy mode). Owners without devices keep everything.
    pub async fn inbox_delete_delivered(&self) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        keep_seq_marks(&mut tx, self.backend, None).await?;
        let res = sqlx::query(
            "DELETE FROM inbox WHERE seq <= (SELECT MIN(d.cursor) FROM devices d WHERE d.owner = inbox.owner)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(res.rows_affected())
    }
}

/// Before entries are deleted: records each owner's newest sequence number in
/// `users.inbox_seq` (of `owner`, or of everyone), so that deleting the newest
/// entries can't make the SQLite writer hand a number out again after a
/// restart (it loads an owner's head as the greater of the two). PostgreSQL's
/// writer keeps `inbox_seq` current at every commit.
pub(crate) async fn keep_seq_marks(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    owner: Option<&str>,
) -> Result<()> {
    if backend != Backend::Sqlite {
        return Ok(());
    }
    let newest = "(SELECT MAX(seq) FROM inbox WHERE owner = users.username)";
    let sql = format!(
        "UPDATE users SET inbox_seq = {newest} WHERE inbox_seq < {newest}{}",
        if owner.is_some() {
            " AND username = $1"
        } else {
            ""
        }
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(sql));
    match owner {
        Some(owner) => query.bind(owner).execute(&mut *conn).await?,
        None => query.execute(&mut *conn).await?,
    };
    Ok(())
}
