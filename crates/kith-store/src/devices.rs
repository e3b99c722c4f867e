//! Devices and their cursors into the inbox log (DESIGN.md, "the inbox log").
//!
//! A device is a resource that has logged in before. Each keeps a cursor: every
//! log entry with a greater sequence number is still owed to it. A device seen for
//! the first time starts at the owner's *delivered mark* — the highest entry any
//! device has acknowledged — so it gets what nobody has received yet (classic
//! offline messages) but not history others already have (that is MAM's job).

use sqlx::Row;

use crate::{DeviceStart, Result, Store, StoreError};

impl Store {
    /// Registers a login of `resource`, returning where its delivery starts.
    pub async fn device_attach(
        &self,
        owner: &str,
        resource: &str,
        now_micros: i64,
    ) -> Result<DeviceStart> {
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query("SELECT cursor FROM devices WHERE owner = $1 AND resource = $2")
            .bind(owner)
            .bind(resource)
            .fetch_optional(&mut *tx)
            .await?;
        let start = match existing {
            Some(row) => {
                sqlx::query(
                    "UPDATE devices SET last_seen_micros = $3 WHERE owner = $1 AND resource = $2",
                )
                .bind(owner)
                .bind(resource)
                .bind(now_micros)
                .execute(&mut *tx)
                .await?;
                DeviceStart {
                    cursor: row.try_get("cursor")?,
                    new: false,
                }
            }
            None => {
                let mark = sqlx::query("SELECT delivered_seq FROM users WHERE username = $1")
                    .bind(owner)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::NoSuchUser(owner.to_owned()))?;
                let cursor: i64 = mark.try_get("delivered_seq")?;
                sqlx::query(
                    "INSERT INTO devices (owner, resource, cursor, last_seen_micros) VALUES ($1, $2, $3, $4)",
                )
                .bind(owner)
                .bind(resource)
                .bind(cursor)
                .bind(now_micros)
                .execute(&mut *tx)
                .await?;
                DeviceStart { cursor, new: true }
            }
        };
        tx.commit().await?;
        Ok(start)
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
        let row = sqlx::query("SELECT inbox_seq FROM users WHERE username = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(row.try_get("inbox_seq")?),
            None => Ok(0),
        }
    }
}

impl Store {
    /// Deletes log entries older than `before_micros` (time-based retention).
    pub async fn inbox_delete_before(&self, before_micros: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM inbox WHERE at_micros < $1")
            .bind(before_micros)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }

    /// Deletes every log entry that all of its owner's devices have received (the
    /// "until delivered" privacy mode). Owners without devices keep everything.
    pub async fn inbox_delete_delivered(&self) -> Result<u64> {
        let res = sqlx::query(
            "DELETE FROM inbox WHERE seq <= (SELECT MIN(d.cursor) FROM devices d WHERE d.owner = inbox.owner)",
        )
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }
}
