//! XEP-0484 FAST tokens: per account and client (the XEP-0388 user-agent id),
//! two slots as §5.1 suggests — `current`, the token last used, and `new`, the
//! one last issued, which becomes `current` when the client first uses it. A
//! new token never invalidates the one in use before the client has it (§3.5).
//!
//! Tokens are kept as issued: the HT mechanisms prove possession with an HMAC
//! keyed by the token, so checking one needs the token itself. They expire
//! (the server's policy), and a password change or the revocation of the device
//! credential a client signed in with deletes them.

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// One client's FAST tokens. An empty token is an empty slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastTokens {
    /// The device credential the client signed in with when the token was
    /// issued, if any: a FAST login is that device.
    pub device: Option<String>,
    /// The mechanism the tokens are bound to (XEP-0484 §3.4).
    pub mechanism: String,
    /// The server's tag of the account's password at the login that got the
    /// tokens: they are void once it differs.
    pub account_key: String,
    /// The token in use ('' when none) and when it expires.
    pub current: String,
    /// When `current` expires (microseconds since the epoch).
    pub current_expires_micros: i64,
    /// The token last issued and not used yet ('' when none).
    pub new: String,
    /// When `new` expires.
    pub new_expires_micros: i64,
    /// When the newest token was issued (rotation is due some time after).
    pub issued_micros: i64,
    /// When the client last signed in with its password or device credential,
    /// rather than a token (the start of its chain of FAST logins).
    pub signed_in_micros: i64,
}

/// A token to store in the `new` slot of `owner`'s client `agent`.
#[derive(Clone, Copy, Debug)]
pub struct NewFastToken<'a> {
    /// The account.
    pub owner: &'a str,
    /// The client's XEP-0388 user-agent id.
    pub agent: &'a str,
    /// The device credential the client signed in with, if any.
    pub device: Option<&'a str>,
    /// The mechanism the token is for.
    pub mechanism: &'a str,
    /// The tag of the account's password at the login it is issued to.
    pub account_key: &'a str,
    /// The token.
    pub token: &'a str,
    /// When it expires (microseconds since the epoch).
    pub expires_micros: i64,
    /// Now.
    pub issued_micros: i64,
    /// When the client last signed in with its password or device credential:
    /// now, or, for a token issued to a FAST login, that of the token used.
    pub signed_in_micros: i64,
}

impl Store {
    /// The FAST tokens of `owner`'s client `agent`, if any.
    pub async fn fast_tokens(&self, owner: &str, agent: &str) -> Result<Option<FastTokens>> {
        let row = sqlx::query(
            "SELECT device, mechanism, account_key, token, expires_micros, new_token,
                new_expires_micros, issued_micros, signed_in_micros
             FROM fast_tokens WHERE owner = $1 AND agent = $2",
        )
        .bind(owner)
        .bind(agent)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let device: String = row.try_get("device")?;
            Ok(FastTokens {
                device: (!device.is_empty()).then_some(device),
                mechanism: row.try_get("mechanism")?,
                account_key: row.try_get("account_key")?,
                current: row.try_get("token")?,
                current_expires_micros: row.try_get("expires_micros")?,
                new: row.try_get("new_token")?,
                new_expires_micros: row.try_get("new_expires_micros")?,
                issued_micros: row.try_get("issued_micros")?,
                signed_in_micros: row.try_get("signed_in_micros")?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| e.into())
    }

    /// Stores a newly issued token in the client's `new` slot. The `current`
    /// one stays usable unless the client now signs in as another device,
    /// under another password or for another mechanism, which makes it stale.
    /// An account keeps the tokens of its 32 most recently served clients.
    /// [`StoreError::NoSuchUser`] if the owner has no account.
    pub async fn issue_fast_token(&self, token: &NewFastToken<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO fast_tokens (owner, agent, device, mechanism, account_key, token,
                expires_micros, new_token, new_expires_micros, issued_micros, signed_in_micros)
             VALUES ($1, $2, $3, $4, $8, '', 0, $5, $6, $7, $9)
             ON CONFLICT (owner, agent) DO UPDATE SET
                token = CASE WHEN fast_tokens.device = excluded.device
                    AND fast_tokens.mechanism = excluded.mechanism
                    AND fast_tokens.account_key = excluded.account_key
                    THEN fast_tokens.token ELSE '' END,
                expires_micros = CASE WHEN fast_tokens.device = excluded.device
                    AND fast_tokens.mechanism = excluded.mechanism
                    AND fast_tokens.account_key = excluded.account_key
                    THEN fast_tokens.expires_micros ELSE 0 END,
                device = excluded.device, mechanism = excluded.mechanism,
                account_key = excluded.account_key,
                new_token = excluded.new_token, new_expires_micros = excluded.new_expires_micros,
                issued_micros = excluded.issued_micros,
                signed_in_micros = excluded.signed_in_micros",
        )
        .bind(token.owner)
        .bind(token.agent)
        .bind(token.device.unwrap_or(""))
        .bind(token.mechanism)
        .bind(token.token)
        .bind(token.expires_micros)
        .bind(token.issued_micros)
        .bind(token.account_key)
        .bind(token.signed_in_micros)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::owner_fk(e, token.owner))?;
        // Bounded per account: a client that keeps coming with new user-agent
        // ids pushes out the longest-unused ones.
        sqlx::query(
            "DELETE FROM fast_tokens WHERE owner = $1 AND agent NOT IN (
                SELECT agent FROM fast_tokens WHERE owner = $1
                ORDER BY issued_micros DESC LIMIT 32)",
        )
        .bind(token.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The client used its `new` token: it becomes `current`, and the token
    /// before it is no longer valid (XEP-0484 §3.5: every token with an
    /// earlier expiry is invalidated once a newer one is used).
    pub async fn promote_fast_token(&self, owner: &str, agent: &str, token: &str) -> Result<()> {
        sqlx::query(
            "UPDATE fast_tokens SET token = new_token, expires_micros = new_expires_micros,
                new_token = '', new_expires_micros = 0
             WHERE owner = $1 AND agent = $2 AND new_token = $3 AND new_token <> ''",
        )
        .bind(owner)
        .bind(agent)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes every client's tokens whose slots have both expired by
    /// `micros` (an empty slot has expiry 0): nothing can sign in with them.
    /// Returns how many clients' rows went.
    pub async fn delete_expired_fast_tokens(&self, micros: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM fast_tokens WHERE expires_micros <= $1 AND new_expires_micros <= $1",
        )
        .bind(micros)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Forgets the FAST tokens of `owner`'s client `agent` (§3.6); `false` if
    /// it had none.
    pub async fn revoke_fast_tokens(&self, owner: &str, agent: &str) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM fast_tokens WHERE owner = $1 AND agent = $2")
            .bind(owner)
            .bind(agent)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }
}
