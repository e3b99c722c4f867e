//! Uploads (XEP-0363 HTTP File Upload): the record of each slot handed out and
//! of each file stored under it.
//!
//! A slot is created with the size, type and name the client announced and a
//! hash of its PUT token; it moves `Slot` → `Uploading` (exactly one PUT may
//! claim it) → `Stored`. The bytes themselves live in the server's blob store
//! under the same id; this table only knows ids, owners, sizes and times. The
//! owner's quota counts every row it has, whatever its state, so that slots
//! handed out but not yet used cannot be used to exceed it.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store};

/// Where an upload is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadState {
    /// Handed out, not used yet.
    Slot,
    /// A PUT is writing the file.
    Uploading,
    /// The file is complete and can be downloaded.
    Stored,
}

impl UploadState {
    fn code(self) -> i64 {
        match self {
            UploadState::Slot => 0,
            UploadState::Uploading => 1,
            UploadState::Stored => 2,
        }
    }

    fn from_code(code: i64) -> Result<Self> {
        match code {
            0 => Ok(UploadState::Slot),
            1 => Ok(UploadState::Uploading),
            2 => Ok(UploadState::Stored),
            other => Err(crate::StoreError::Corrupt(format!("upload state {other}"))),
        }
    }
}

/// A slot to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUpload {
    /// The random id (also the blob's key).
    pub id: String,
    /// The account that asked for the slot.
    pub owner: String,
    /// The file name, as cleaned by the server.
    pub filename: String,
    /// The MIME type the PUT must carry.
    pub content_type: String,
    /// The exact size the PUT must have, in bytes.
    pub size: i64,
    /// A hash of the PUT token (the token itself is never stored).
    pub token_hash: String,
    /// When the slot was handed out (unix microseconds).
    pub created_micros: i64,
    /// After this, an unused slot is refused and swept.
    pub slot_expires_micros: i64,
}

/// A stored upload record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The random id (also the blob's key).
    pub id: String,
    /// The account that asked for the slot.
    pub owner: String,
    /// The file name, as cleaned by the server.
    pub filename: String,
    /// The MIME type the PUT must carry.
    pub content_type: String,
    /// The exact size in bytes.
    pub size: i64,
    /// A hash of the PUT token.
    pub token_hash: String,
    /// Where the upload is in its life.
    pub state: UploadState,
    /// When the slot was handed out (unix microseconds).
    pub created_micros: i64,
    /// After this, an unused slot is refused and swept.
    pub slot_expires_micros: i64,
    /// When the stored file expires (set once it is stored).
    pub expires_micros: Option<i64>,
    /// Metadata the server derived from the file (JSON, opaque here).
    pub meta: Option<String>,
}

/// Outcome of [`Store::upload_create`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadCreated {
    /// The slot was recorded.
    Created,
    /// The owner's uploads plus this one would exceed the quota.
    OverQuota {
        /// Bytes the owner already holds (in all states).
        used: i64,
    },
}

const COLUMNS: &str = "id, owner, filename, content_type, size, token_hash, state, \
                       created_micros, slot_expires_micros, expires_micros, meta";

fn upload_from_row(row: &AnyRow) -> Result<Upload> {
    Ok(Upload {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        filename: row.try_get("filename")?,
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        token_hash: row.try_get("token_hash")?,
        state: UploadState::from_code(row.try_get("state")?)?,
        created_micros: row.try_get("created_micros")?,
        slot_expires_micros: row.try_get("slot_expires_micros")?,
        expires_micros: row.try_get("expires_micros")?,
        meta: row.try_get("meta")?,
    })
}

impl Store {
    /// Creates a slot unless the owner's uploads (stored, being uploaded, and
    /// slots still valid at `created_micros`) plus `size` would exceed `quota` bytes. The check and the insert are one transaction under
    /// the owner's user-row lock, so concurrent requests count each other.
    pub async fn upload_create(&self, upload: &NewUpload, quota: i64) -> Result<UploadCreated> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE users SET inbox_seq = inbox_seq WHERE username = $1")
            .bind(upload.owner.as_str())
            .execute(&mut *tx)
            .await?;
        // Unused slots past their expiry no longer count, even before the sweep.
        let used: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM uploads
             WHERE owner = $1 AND NOT (state = $2 AND slot_expires_micros <= $3)",
        )
        .bind(upload.owner.as_str())
        .bind(UploadState::Slot.code())
        .bind(upload.created_micros)
        .fetch_one(&mut *tx)
        .await?
        .try_get("used")?;
        if used.saturating_add(upload.size) > quota {
            return Ok(UploadCreated::OverQuota { used });
        }
        sqlx::query(
            "INSERT INTO uploads (id, owner, filename, content_type, size, token_hash, state,
                                  created_micros, slot_expires_micros)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(upload.id.as_str())
        .bind(upload.owner.as_str())
        .bind(upload.filename.as_str())
        .bind(upload.content_type.as_str())
        .bind(upload.size)
        .bind(upload.token_hash.as_str())
        .bind(UploadState::Slot.code())
        .bind(upload.created_micros)
        .bind(upload.slot_expires_micros)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(UploadCreated::Created)
    }

    /// The upload with this id, in any state.
    pub async fn upload_get(&self, id: &str) -> Result<Option<Upload>> {
        // COLUMNS is a constant: no input reaches the SQL text.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM uploads WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(upload_from_row).transpose()
    }

    /// Claims an unused, unexpired slot for its one PUT (`Slot` → `Uploading`).
    /// `false` if it was already claimed, is expired or does not exist.
    pub async fn upload_begin(&self, id: &str, now_micros: i64) -> Result<bool> {
        let claimed = sqlx::query(
            "UPDATE uploads SET state = $1
             WHERE id = $2 AND state = $3 AND slot_expires_micros > $4",
        )
        .bind(UploadState::Uploading.code())
        .bind(id)
        .bind(UploadState::Slot.code())
        .bind(now_micros)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed > 0)
    }

    /// Marks a claimed upload complete; it expires at `expires_micros`.
    /// `false` if it is no longer being uploaded (deleted meanwhile).
    pub async fn upload_finish(&self, id: &str, expires_micros: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET state = $1, expires_micros = $2 WHERE id = $3 AND state = $4",
        )
        .bind(UploadState::Stored.code())
        .bind(expires_micros)
        .bind(id)
        .bind(UploadState::Uploading.code())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    /// Records the metadata derived from a stored file.
    pub async fn upload_set_meta(&self, id: &str, meta: &str) -> Result<()> {
        sqlx::query("UPDATE uploads SET meta = $1 WHERE id = $2")
            .bind(meta)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets an upload. `false` if there was none.
    pub async fn upload_delete(&self, id: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    /// The ids of every upload of `owner`.
    pub async fn uploads_of(&self, owner: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM uploads WHERE owner = $1 ORDER BY id")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
    }

    /// Up to `limit` uploads to remove: unused slots past their expiry, stored
    /// files past theirs, PUTs begun before `stale_before_micros` that never
    /// finished (a crash mid-upload), and uploads whose owner no longer exists.
    pub async fn uploads_to_sweep(
        &self,
        now_micros: i64,
        stale_before_micros: i64,
        limit: i64,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM uploads
             WHERE (state = $1 AND slot_expires_micros <= $2)
                OR (state = $3 AND expires_micros <= $2)
                OR (state = $4 AND created_micros < $5)
                OR NOT EXISTS (SELECT 1 FROM users WHERE users.username = uploads.owner)
             ORDER BY id
             LIMIT $6",
        )
        .bind(UploadState::Slot.code())
        .bind(now_micros)
        .bind(UploadState::Stored.code())
        .bind(UploadState::Uploading.code())
        .bind(stale_before_micros)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
    }
}
