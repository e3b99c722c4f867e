//! Push registrations (XEP-0357) and the server's own long-lived secrets.
//!
//! A registration says "wake this device of this user through this service":
//! it belongs to an account and to the device (resource) that enabled it, and is
//! identified, as in XEP-0357, by the app server's JID and a node. What kind of
//! service it is (an XMPP app server, a Web Push subscription, the operator's
//! webhook) is recorded with it; the store does not interpret any of it.
//!
//! Server secrets are small named values created once and shared by every node
//! that uses the same database (the VAPID key pair must be the same on all of
//! them, or browser subscriptions made through one node fail on another).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, now_micros};

/// One push registration of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRegistration {
    /// The device (resource) that enabled it.
    pub resource: String,
    /// The XEP-0357 `jid`: the app server (or the server's own domain for the
    /// built-in senders).
    pub jid: String,
    /// The XEP-0357 `node`, opaque.
    pub node: String,
    /// Which service delivers it.
    pub kind: PushKind,
    /// The publish-options form the client gave, serialised (opaque here).
    pub options: Option<String>,
    /// When it was enabled (unix microseconds).
    pub created_micros: i64,
}

/// The service behind a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushKind {
    /// A XEP-0357 publish to the app server at `jid`.
    AppServer,
    /// A POST to the operator's webhook (a relay to FCM/APNs).
    Webhook,
    /// A Web Push subscription (RFC 8030 endpoint, RFC 8291 keys).
    WebPush {
        /// The push resource URL.
        endpoint: String,
        /// The user agent's P-256 public key, base64url.
        p256dh: String,
        /// The 16-byte authentication secret, base64url.
        auth: String,
    },
}

impl PushKind {
    fn as_str(&self) -> &'static str {
        match self {
            PushKind::AppServer => "app-server",
            PushKind::Webhook => "webhook",
            PushKind::WebPush { .. } => "webpush",
        }
    }
}

/// Outcome of [`Store::push_enable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushEnabled {
    /// Stored (new, or replacing the registration with the same jid and node).
    Stored,
    /// Not stored: the account already has the maximum number of registrations.
    LimitReached,
}

impl Store {
    /// Stores a registration for `owner`, replacing one with the same `jid` and
    /// `node` (whichever device had it: it moves to `registration.resource`).
    /// New registrations beyond `max_per_owner` are refused.
    /// [`StoreError::NoSuchUser`] if the owner has no account.
    pub async fn push_enable(
        &self,
        owner: &str,
        registration: &PushRegistration,
        max_per_owner: usize,
    ) -> Result<PushEnabled> {
        let mut tx = self.begin_write().await?;
        // Lock the owner's row first, like every per-user write, so concurrent
        // enables of one account count each other.
        let exists = sqlx::query("UPDATE users SET inbox_seq = inbox_seq WHERE username = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if !exists {
            return Err(StoreError::NoSuchUser(owner.to_owned()));
        }
        let others: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM push_registrations
             WHERE owner = $1 AND NOT (jid = $2 AND node = $3)",
        )
        .bind(owner)
        .bind(registration.jid.as_str())
        .bind(registration.node.as_str())
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if usize::try_from(others).unwrap_or(usize::MAX) >= max_per_owner {
            return Ok(PushEnabled::LimitReached);
        }
        let (endpoint, p256dh, auth) = match &registration.kind {
            PushKind::WebPush {
                endpoint,
                p256dh,
                auth,
            } => (
                Some(endpoint.as_str()),
                Some(p256dh.as_str()),
                Some(auth.as_str()),
            ),
            PushKind::AppServer | PushKind::Webhook => (None, None, None),
        };
        sqlx::query(
            "INSERT INTO push_registrations
                (owner, jid, node, resource, kind, endpoint, p256dh, auth, options, created_micros)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (owner, jid, node) DO UPDATE SET
                resource = excluded.resource,
                kind = excluded.kind,
                endpoint = excluded.endpoint,
                p256dh = excluded.p256dh,
                auth = excluded.auth,
                options = excluded.options,
                created_micros = excluded.created_micros",
        )
        .bind(owner)
        .bind(registration.jid.as_str())
        .bind(registration.node.as_str())
        .bind(registration.resource.as_str())
        .bind(registration.kind.as_str())
        .bind(endpoint)
        .bind(p256dh)
        .bind(auth)
        .bind(registration.options.as_deref())
        .bind(registration.created_micros)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        tx.commit().await?;
        Ok(PushEnabled::Stored)
    }

    /// Removes the owner's registrations with app server `jid`: the one with
    /// `node`, or all of them when `node` is `None` (XEP-0357 §6). Returns how
    /// many were removed.
    pub async fn push_disable(&self, owner: &str, jid: &str, node: Option<&str>) -> Result<u64> {
        let result =
            match node {
                Some(node) => sqlx::query(
                    "DELETE FROM push_registrations WHERE owner = $1 AND jid = $2 AND node = $3",
                )
                .bind(owner)
                .bind(jid)
                .bind(node)
                .execute(&self.pool)
                .await?,
                None => {
                    sqlx::query("DELETE FROM push_registrations WHERE owner = $1 AND jid = $2")
                        .bind(owner)
                        .bind(jid)
                        .execute(&self.pool)
                        .await?
                }
            };
        Ok(result.rows_affected())
    }

    /// Removes the Web Push registration `jid`/`node` of `owner` if it still
    /// points at `endpoint` (the push service said the subscription is gone; a
    /// newer subscription under the same node stays). Returns whether it was removed.
    pub async fn push_remove_webpush(
        &self,
        owner: &str,
        jid: &str,
        node: &str,
        endpoint: &str,
    ) -> Result<bool> {
        let result = sqlx::query(
            "DELETE FROM push_registrations
             WHERE owner = $1 AND jid = $2 AND node = $3 AND endpoint = $4",
        )
        .bind(owner)
        .bind(jid)
        .bind(node)
        .bind(endpoint)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Every registration of `owner`, sorted by jid then node.
    pub async fn push_registrations(&self, owner: &str) -> Result<Vec<PushRegistration>> {
        let rows = sqlx::query(
            "SELECT jid, node, resource, kind, endpoint, p256dh, auth, options, created_micros
             FROM push_registrations WHERE owner = $1",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        let mut registrations = rows
            .iter()
            .map(registration_from_row)
            .collect::<Result<Vec<_>>>()?;
        registrations.sort_unstable_by(|a, b| (&a.jid, &a.node).cmp(&(&b.jid, &b.node)));
        Ok(registrations)
    }

    /// How many log entries with a body (messages worth telling a person about)
    /// arrived for `owner` past the cursor of device `resource`, counting at most
    /// `cap`. A device the store doesn't know starts at the owner's delivered mark,
    /// as it would at its next login.
    pub async fn push_pending_count(&self, owner: &str, resource: &str, cap: i64) -> Result<i64> {
        self.writer.settle(owner).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM (
                SELECT 1 AS one FROM inbox
                WHERE owner = $1 AND direction = 'in' AND body IS NOT NULL
                  AND seq > COALESCE(
                      (SELECT cursor FROM devices WHERE owner = $1 AND resource = $2),
                      (SELECT delivered_seq FROM users WHERE username = $1),
                      0)
                LIMIT $3
             ) AS pending",
        )
        .bind(owner)
        .bind(resource)
        .bind(cap.max(0))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// The secret called `name`: the stored one, or `candidate`, stored now if
    /// there was none. Concurrent callers (on several nodes) all get the value of
    /// the first one to store.
    pub async fn secret_get_or_insert(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_micros) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }
}

fn registration_from_row(row: &AnyRow) -> Result<PushRegistration> {
    let kind: String = row.try_get("kind")?;
    let kind = match kind.as_str() {
        "app-server" => PushKind::AppServer,
        "webhook" => PushKind::Webhook,
        "webpush" => {
            let field = |name: &str| -> Result<String> {
                row.try_get::<Option<String>, _>(name)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("web push registration without {name}"))
                })
            };
            PushKind::WebPush {
                endpoint: field("endpoint")?,
                p256dh: field("p256dh")?,
                auth: field("auth")?,
            }
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown push registration kind {other:?}"
            )));
        }
    };
    Ok(PushRegistration {
        resource: row.try_get("resource")?,
        jid: row.try_get("jid")?,
        node: row.try_get("node")?,
        kind,
        options: row.try_get("options")?,
        created_micros: row.try_get("created_micros")?,
    })
}
