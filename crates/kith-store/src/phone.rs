//! Phone-number accounts (issue 4): which account a number belongs to, device
//! credentials, pending SMS codes, link-a-device requests and contact discovery.
//!
//! The store keeps only hashes of secrets (credential, SMS code, link code, poll
//! token) and the SCRAM keys derived from a credential; the server makes and
//! checks them. Numbers are E.164 strings (`+15551234567`), already normalised.

use sqlx::Row;

use crate::read::{Arg, Columns};
use crate::{Result, Store, StoreError, now_micros};

/// One device credential: what a linked device signs in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCredential {
    /// Public, random id (part of the credential string).
    pub id: String,
    /// The account's username.
    pub owner: String,
    /// The name the user gave the device.
    pub name: String,
    /// A hash of the whole credential string (bearer use over HTTP).
    pub token_hash: Vec<u8>,
    /// SCRAM-SHA-1 `StoredKey`/`ServerKey` under the account's SHA-1 salt.
    pub sha1_stored_key: Vec<u8>,
    /// SCRAM-SHA-1 `ServerKey`.
    pub sha1_server_key: Vec<u8>,
    /// SCRAM-SHA-256 `StoredKey` under the account's SHA-256 salt.
    pub sha256_stored_key: Vec<u8>,
    /// SCRAM-SHA-256 `ServerKey`.
    pub sha256_server_key: Vec<u8>,
    /// When it was issued (unix µs).
    pub created_micros: i64,
    /// When it last authenticated (unix µs).
    pub last_used_micros: i64,
}

/// A pending SMS verification code for one number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationCode {
    /// Hash of the code.
    pub code_hash: Vec<u8>,
    /// When the code stops being valid (unix µs).
    pub expires_micros: i64,
    /// Wrong tries so far.
    pub failures: i64,
    /// No code may be tried or sent before this (unix µs; 0 = not locked).
    pub locked_until_micros: i64,
}

/// A request of a new device to be linked to an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRequest {
    /// Random id the new device polls with.
    pub id: String,
    /// Hash of the short code a signed-in device approves.
    pub code_hash: Vec<u8>,
    /// Hash of the secret only the new device knows.
    pub poll_hash: Vec<u8>,
    /// The name the new device gave itself.
    pub device_name: String,
    /// When the request lapses (unix µs).
    pub expires_micros: i64,
    /// The account that approved it, once approved.
    pub approved_owner: Option<String>,
}

/// Outcome of [`Store::claim_phone_account`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhoneClaim {
    /// A new account was created for the number.
    Created,
    /// The number already had this account.
    Existing,
    /// The username is taken by an account that is not this number's.
    UsernameTaken,
}

impl Store {
    /// The account of a phone number.
    pub async fn phone_owner(&self, phone: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT username FROM phone_numbers WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("username").map_err(StoreError::from))
            .transpose()
    }

    /// The phone number of an account, if it is a phone account.
    pub async fn phone_of(&self, username: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT phone FROM phone_numbers WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("phone").map_err(StoreError::from))
            .transpose()
    }

    /// Makes sure `phone` has the account `username`, creating it with `creds`
    /// (SCRAM secrets whose salts the device credentials share) if it is new.
    pub async fn claim_phone_account(
        &self,
        phone: &str,
        username: &str,
        creds: &crate::StoredCredentials,
    ) -> Result<PhoneClaim> {
        if let Some(owner) = self.phone_owner(phone).await? {
            return Ok(if owner == username {
                PhoneClaim::Existing
            } else {
                PhoneClaim::UsernameTaken
            });
        }
        if !self.create_user(username, creds).await? {
            return Ok(PhoneClaim::UsernameTaken);
        }
        let inserted = sqlx::query(
            "INSERT INTO phone_numbers (phone, username, created_micros) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(phone)
        .bind(username)
        .bind(now_micros())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            Ok(PhoneClaim::Created)
        } else {
            // A concurrent verify of the same number won the race.
            Ok(PhoneClaim::Existing)
        }
    }

    /// Which of `phones` have accounts: `(phone, username)` pairs, sorted by phone.
    pub async fn phone_accounts(&self, phones: &[String]) -> Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        // One indexed lookup per number: the list is capped by the caller, and
        // this stays one query text on both backends.
        for phone in phones {
            if let Some(username) = self.phone_owner(phone).await? {
                found.push((phone.clone(), username));
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    // ------------------------------------------------------------------
    // device credentials
    // ------------------------------------------------------------------

    /// Stores a new device credential. [`StoreError::NoSuchUser`] if the owner
    /// has no account.
    pub async fn add_device_credential(&self, credential: &DeviceCredential) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_credentials (id, owner, name, token_hash,
                sha1_stored_key, sha1_server_key, sha256_stored_key, sha256_server_key,
                created_micros, last_used_micros)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(credential.id.as_str())
        .bind(credential.owner.as_str())
        .bind(credential.name.as_str())
        .bind(credential.token_hash.as_slice())
        .bind(credential.sha1_stored_key.as_slice())
        .bind(credential.sha1_server_key.as_slice())
        .bind(credential.sha256_stored_key.as_slice())
        .bind(credential.sha256_server_key.as_slice())
        .bind(credential.created_micros)
        .bind(credential.last_used_micros)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::owner_fk(e, &credential.owner))?;
        Ok(())
    }

    /// One device credential by id.
    pub async fn device_credential(&self, id: &str) -> Result<Option<DeviceCredential>> {
        self.row(
            "SELECT id, owner, name, token_hash, sha1_stored_key, sha1_server_key, sha256_stored_key, sha256_server_key, created_micros, last_used_micros
             FROM device_credentials WHERE id = $1",
            &[Arg::Text(id)],
            credential_from_row,
        )
        .await
    }

    /// An account's device credentials, oldest first.
    pub async fn device_credentials(&self, owner: &str) -> Result<Vec<DeviceCredential>> {
        let mut credentials = self
            .rows(
                "SELECT id, owner, name, token_hash, sha1_stored_key, sha1_server_key, sha256_stored_key, sha256_server_key, created_micros, last_used_micros
                 FROM device_credentials WHERE owner = $1",
                &[Arg::Text(owner)],
                credential_from_row,
            )
            .await?;
        credentials.sort_by(|a, b| (a.created_micros, &a.id).cmp(&(b.created_micros, &b.id)));
        Ok(credentials)
    }

    /// Records that a credential was used.
    pub async fn touch_device_credential(&self, id: &str, now_micros: i64) -> Result<()> {
        sqlx::query("UPDATE device_credentials SET last_used_micros = $2 WHERE id = $1")
            .bind(id)
            .bind(now_micros)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes `owner`'s credential `id` and the inbox-log device it signed in as
    /// (`device_resource`, so its cursor no longer holds the log). `false` if the
    /// owner has no such credential.
    pub async fn revoke_device_credential(
        &self,
        owner: &str,
        id: &str,
        device_resource: &str,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let removed = sqlx::query("DELETE FROM device_credentials WHERE owner = $1 AND id = $2")
            .bind(owner)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM devices WHERE owner = $1 AND resource = $2")
            .bind(owner)
            .bind(device_resource)
            .execute(&mut *tx)
            .await?;
        // FAST tokens the device got are that device too.
        sqlx::query("DELETE FROM fast_tokens WHERE owner = $1 AND device = $2")
            .bind(owner)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    // ------------------------------------------------------------------
    // SMS verification codes
    // ------------------------------------------------------------------

    /// The pending code of a number.
    pub async fn verification_code(&self, phone: &str) -> Result<Option<VerificationCode>> {
        let row = sqlx::query(
            "SELECT code_hash, expires_micros, failures, locked_until_micros
             FROM verification_codes WHERE phone = $1",
        )
        .bind(phone)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(VerificationCode {
                code_hash: row.try_get("code_hash")?,
                expires_micros: row.try_get("expires_micros")?,
                failures: row.try_get("failures")?,
                locked_until_micros: row.try_get("locked_until_micros")?,
            })
        })
        .transpose()
    }

    /// Sets (replaces) the pending code of a number.
    pub async fn put_verification_code(&self, phone: &str, code: &VerificationCode) -> Result<()> {
        sqlx::query(
            "INSERT INTO verification_codes (phone, code_hash, expires_micros, failures, locked_until_micros)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (phone) DO UPDATE SET
                code_hash = excluded.code_hash,
                expires_micros = excluded.expires_micros,
                failures = excluded.failures,
                locked_until_micros = excluded.locked_until_micros",
        )
        .bind(phone)
        .bind(code.code_hash.as_slice())
        .bind(code.expires_micros)
        .bind(code.failures)
        .bind(code.locked_until_micros)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Counts one wrong try atomically; returns the failures so far (0 if the
    /// number has no pending code). At `lock_at` failures the code is voided and
    /// the number locked until `locked_until_micros`.
    pub async fn verification_failed(
        &self,
        phone: &str,
        lock_at: i64,
        locked_until_micros: i64,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE verification_codes SET failures = failures + 1 WHERE phone = $1 RETURNING failures",
        )
        .bind(phone)
        .fetch_optional(&mut *tx)
        .await?;
        let failures: i64 = match row {
            Some(row) => row.try_get("failures")?,
            None => 0,
        };
        if failures >= lock_at {
            // The code can't be used any more; a new one only after the cool-down.
            sqlx::query(
                "UPDATE verification_codes SET code_hash = $2, locked_until_micros = $3 WHERE phone = $1",
            )
            .bind(phone)
            .bind(&[][..])
            .bind(locked_until_micros)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(failures)
    }

    /// Consumes the code of `phone` if its hash is `code_hash` and it is still
    /// valid: `true` exactly once per code, even under concurrent tries.
    pub async fn consume_verification_code(
        &self,
        phone: &str,
        code_hash: &[u8],
        now_micros: i64,
    ) -> Result<bool> {
        let removed = sqlx::query(
            "DELETE FROM verification_codes
             WHERE phone = $1 AND code_hash = $2 AND expires_micros > $3 AND locked_until_micros <= $3",
        )
        .bind(phone)
        .bind(code_hash)
        .bind(now_micros)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(removed == 1)
    }

    // ------------------------------------------------------------------
    // linking devices
    // ------------------------------------------------------------------

    /// Stores a new link request (expired ones are swept at the same time).
    pub async fn create_link_request(&self, request: &LinkRequest, now_micros: i64) -> Result<()> {
        sqlx::query("DELETE FROM link_requests WHERE expires_micros <= $1")
            .bind(now_micros)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO link_requests (id, code_hash, poll_hash, device_name, expires_micros, approved_owner)
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(request.id.as_str())
        .bind(request.code_hash.as_slice())
        .bind(request.poll_hash.as_slice())
        .bind(request.device_name.as_str())
        .bind(request.expires_micros)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Approves the unexpired, not yet approved request with this code for
    /// `owner`; returns its device name, `None` if there is no such request.
    pub async fn approve_link_request(
        &self,
        code_hash: &[u8],
        owner: &str,
        now_micros: i64,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE link_requests SET approved_owner = $2
             WHERE code_hash = $1 AND expires_micros > $3 AND approved_owner IS NULL
             RETURNING device_name",
        )
        .bind(code_hash)
        .bind(owner)
        .bind(now_micros)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        row.map(|r| r.try_get("device_name").map_err(StoreError::from))
            .transpose()
    }

    /// A link request by id.
    pub async fn link_request(&self, id: &str) -> Result<Option<LinkRequest>> {
        let row = sqlx::query(
            "SELECT id, code_hash, poll_hash, device_name, expires_micros, approved_owner
             FROM link_requests WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(LinkRequest {
                id: row.try_get("id")?,
                code_hash: row.try_get("code_hash")?,
                poll_hash: row.try_get("poll_hash")?,
                device_name: row.try_get("device_name")?,
                expires_micros: row.try_get("expires_micros")?,
                approved_owner: row.try_get("approved_owner")?,
            })
        })
        .transpose()
    }

    /// Deletes a link request; `true` for exactly one caller (one-time use).
    pub async fn delete_link_request(&self, id: &str) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM link_requests WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed == 1)
    }

    // ------------------------------------------------------------------
    // contact discovery
    // ------------------------------------------------------------------

    /// Takes `count` lookups from `owner`'s quota for `day`; `false` (and
    /// nothing taken) if that would exceed `cap`.
    pub async fn take_discovery_quota(
        &self,
        owner: &str,
        day: i64,
        count: i64,
        cap: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM discovery_quota WHERE owner = $1 AND day < $2")
            .bind(owner)
            .bind(day)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "INSERT INTO discovery_quota (owner, day, used) VALUES ($1, $2, $3)
             ON CONFLICT (owner, day) DO UPDATE SET used = discovery_quota.used + excluded.used
             RETURNING used",
        )
        .bind(owner)
        .bind(day)
        .bind(count)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        let used: i64 = row.try_get("used")?;
        if used > cap {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records that `owner` has `phones` in their address book (found accounts).
    pub async fn record_discovered(&self, owner: &str, phones: &[String]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for phone in phones {
            sqlx::query(
                "INSERT INTO discovered_contacts (owner, phone) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(owner)
            .bind(phone.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::owner_fk(e, owner))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `owner` has looked up `phone` before.
    pub async fn has_discovered(&self, owner: &str, phone: &str) -> Result<bool> {
        let row =
            sqlx::query("SELECT 1 AS one FROM discovered_contacts WHERE owner = $1 AND phone = $2")
                .bind(owner)
                .bind(phone)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }
}

fn credential_from_row(row: &dyn Columns) -> Result<DeviceCredential> {
    Ok(DeviceCredential {
        id: row.text("id")?,
        owner: row.text("owner")?,
        name: row.text("name")?,
        token_hash: row.blob("token_hash")?,
        sha1_stored_key: row.blob("sha1_stored_key")?,
        sha1_server_key: row.blob("sha1_server_key")?,
        sha256_stored_key: row.blob("sha256_stored_key")?,
        sha256_server_key: row.blob("sha256_server_key")?,
        created_micros: row.int("created_micros")?,
        last_used_micros: row.int("last_used_micros")?,
    })
}
