//! Per-account privacy settings (WhatsApp's): one row per account that changed
//! them. The store keeps the audiences as text; what they mean and their
//! defaults belong to the server.

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// One account's stored privacy settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivacySettings {
    /// Who sees when the owner was last online.
    pub last_seen: String,
    /// Who sees the owner's avatar.
    pub profile_photo: String,
    /// Who sees the owner's about text.
    pub about: String,
    /// Whether the owner's read markers are forwarded (and others' reach them).
    pub read_receipts: bool,
}

impl Store {
    /// The owner's settings, `None` when never set (the caller's defaults apply).
    pub async fn privacy_settings(&self, owner: &str) -> Result<Option<PrivacySettings>> {
        let row = sqlx::query(
            "SELECT last_seen, profile_photo, about, read_receipts
             FROM privacy_settings WHERE owner = $1",
        )
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(PrivacySettings {
            last_seen: row.try_get("last_seen")?,
            profile_photo: row.try_get("profile_photo")?,
            about: row.try_get("about")?,
            read_receipts: row.try_get::<i64, _>("read_receipts")? != 0,
        }))
    }

    /// Replaces the owner's settings. [`StoreError::NoSuchUser`] without an account.
    pub async fn set_privacy_settings(
        &self,
        owner: &str,
        settings: &PrivacySettings,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO privacy_settings (owner, last_seen, profile_photo, about, read_receipts)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (owner) DO UPDATE SET last_seen = excluded.last_seen,
                profile_photo = excluded.profile_photo, about = excluded.about,
                read_receipts = excluded.read_receipts",
        )
        .bind(owner)
        .bind(&settings.last_seen)
        .bind(&settings.profile_photo)
        .bind(&settings.about)
        .bind(i64::from(settings.read_receipts))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        Ok(())
    }

    /// The rooms `member` (a bare JID) has an affiliation with, sorted.
    pub async fn muc_rooms_of_member(&self, member: &str) -> Result<Vec<String>> {
        sqlx::query("SELECT room FROM muc_affiliations WHERE jid = $1 ORDER BY room")
            .bind(member)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|row| row.try_get("room").map_err(StoreError::from))
            .collect()
    }
}
