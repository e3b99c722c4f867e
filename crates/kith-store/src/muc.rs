//! Group chat rooms (XEP-0045) as the store sees them: the room's configuration
//! and subject (opaque text the server writes), its affiliations (who is owner,
//! admin, member or outcast, and since when), and its invite links.
//!
//! A room's archive is an inbox log owned by the room's bare JID: creating a room
//! also creates a `users` row for it with no usable credentials (a name holding
//! '@' is never a valid localpart, so nobody signs in as a room). The archive
//! queries, tombstones and the group-commit writer then work on rooms unchanged.
//! [`Store::list_users`] leaves rooms out.
//!
//! A group message is appended once, to the room's log, with a copy in the
//! logs of the members that have a session; the others are owed it until they
//! next read their log (the room cursor, `batch::rooms`):
//! [`Store::room_append_then`], [`Store::room_join`], [`Store::room_leave`],
//! [`Store::room_catch_up`].

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::batch::rooms::RoomOp;
pub use crate::batch::rooms::{Live, RoomMember};
use crate::{NewInboxEntry, Result, Store};

/// A room's stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoom {
    /// The room's bare JID.
    pub jid: String,
    /// The configuration, in the server's own text encoding.
    pub config: String,
    /// The subject (empty if none).
    pub subject: String,
    /// Who set the subject (a nickname; empty if nobody).
    pub subject_by: String,
    /// When the room was created, unix microseconds.
    pub created_micros: i64,
}

/// One affiliation of a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomAffiliation {
    /// The affiliated bare JID.
    pub jid: String,
    /// `owner`, `admin`, `member` or `outcast`.
    pub affiliation: String,
    /// Since when (unix microseconds): a member's history starts here.
    pub since_micros: i64,
}

/// An invite link of a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomInvite {
    /// The secret token in the link.
    pub token: String,
    /// The room's bare JID.
    pub room: String,
    /// Who created it (bare JID).
    pub created_by: String,
    /// When, unix microseconds.
    pub created_micros: i64,
    /// Whether it was revoked (revoked links admit nobody).
    pub revoked: bool,
}

impl Store {
    /// Queues a group message for the next group commit: appended to `room`'s
    /// log, and copied into the log of each of `members` that `live` says has
    /// a session (asked by the writer in queue order, so a member whose session
    /// comes later and then calls [`Store::room_catch_up`] misses nothing).
    /// `then` runs after the commit (as for [`Store::inbox_append_then`]) with
    /// the room's sequence number, then per member its copy's or
    /// [`StoreError::Owed`](crate::StoreError::Owed). Queued before this
    /// returns, as [`Store::inbox_append_then`].
    pub fn room_append_then<F>(
        &self,
        room: &str,
        entry: &NewInboxEntry<'_>,
        members: Vec<RoomMember>,
        live: Live,
        then: F,
    ) -> impl Future<Output = Result<()>> + Send + use<'_, F>
    where
        F: FnOnce(Vec<Result<i64>>) + Send + Sync + 'static,
    {
        self.writer
            .fan_then(room, entry, members, live, Box::new(then))
    }

    /// `owners` (local members of `room`, by username) are owed the room's
    /// messages from now on; no change for those that already are. In queue
    /// order with the room's messages: what was queued before is not owed.
    pub async fn room_join(&self, room: &str, owners: Vec<String>) -> Result<()> {
        if owners.is_empty() {
            return Ok(());
        }
        let room = room.to_owned();
        self.writer.rooms(RoomOp::Join { room, owners }).await
    }

    /// `owners` stop being members of `room`: what they are owed is copied
    /// into their logs, and nothing more will be.
    pub async fn room_leave(&self, room: &str, owners: Vec<String>) -> Result<()> {
        if owners.is_empty() {
            return Ok(());
        }
        let room = room.to_owned();
        self.writer.rooms(RoomOp::Leave { room, owners }).await
    }

    /// Copies what `owner` is owed by its rooms into its log. A session calls
    /// it once it is in the router and before it first reads the log.
    pub async fn room_catch_up(&self, owner: &str) -> Result<()> {
        self.writer
            .rooms(RoomOp::CatchUp {
                owner: owner.to_owned(),
            })
            .await
    }

    /// Creates a room (and the log that holds its archive) with `owner` as its
    /// first owner, in one transaction. `false` (and no change) if a room or an
    /// account with that name exists.
    pub async fn muc_create_room(
        &self,
        jid: &str,
        config: &str,
        owner: &str,
        now_micros: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let created = sqlx::query(
            "INSERT INTO users (username,
                sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key,
                roster_version, inbox_seq, created_at)
             VALUES ($1, $2, 0, $2, $2, $2, 0, $2, $2, 0, 0, $3)
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(jid)
        .bind(Vec::<u8>::new())
        .bind(now_micros)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !created {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("INSERT INTO muc_rooms (jid, config, created_micros) VALUES ($1, $2, $3)")
            .bind(jid)
            .bind(config)
            .bind(now_micros)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO muc_affiliations (room, jid, affiliation, since_micros)
             VALUES ($1, $2, 'owner', $3)",
        )
        .bind(jid)
        .bind(owner)
        .bind(now_micros)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// How many rooms `jid` owns.
    pub async fn muc_rooms_owned_by(&self, jid: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM muc_affiliations WHERE jid = $1 AND affiliation = 'owner'",
        )
        .bind(jid)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// One room, `None` if there is no such room.
    pub async fn muc_room(&self, jid: &str) -> Result<Option<StoredRoom>> {
        let row = sqlx::query(
            "SELECT jid, config, subject, subject_by, created_micros FROM muc_rooms WHERE jid = $1",
        )
        .bind(jid)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(room_from_row).transpose()
    }

    /// Every room, sorted by JID.
    pub async fn muc_rooms(&self) -> Result<Vec<StoredRoom>> {
        let rows =
            sqlx::query("SELECT jid, config, subject, subject_by, created_micros FROM muc_rooms")
                .fetch_all(&self.pool)
                .await?;
        let mut rooms = rows.iter().map(room_from_row).collect::<Result<Vec<_>>>()?;
        rooms.sort_unstable_by(|a, b| a.jid.cmp(&b.jid));
        Ok(rooms)
    }

    /// Replaces a room's configuration. `false` if there is no such room.
    pub async fn muc_set_config(&self, jid: &str, config: &str) -> Result<bool> {
        let res = sqlx::query("UPDATE muc_rooms SET config = $2 WHERE jid = $1")
            .bind(jid)
            .bind(config)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Sets a room's subject and who set it. `false` if there is no such room.
    pub async fn muc_set_subject(&self, jid: &str, subject: &str, by: &str) -> Result<bool> {
        let res = sqlx::query("UPDATE muc_rooms SET subject = $2, subject_by = $3 WHERE jid = $1")
            .bind(jid)
            .bind(subject)
            .bind(by)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Destroys a room: its configuration, affiliations, invite links and
    /// archive, in one transaction. `false` if there was no such room.
    pub async fn muc_destroy_room(&self, jid: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let mut found = false;
        for sql in [
            "DELETE FROM muc_invites WHERE room = $1",
            "DELETE FROM muc_affiliations WHERE room = $1",
            "DELETE FROM muc_rooms WHERE jid = $1",
            "DELETE FROM inbox WHERE owner = $1",
            "DELETE FROM users WHERE username = $1",
        ] {
            let res = sqlx::query(sql).bind(jid).execute(&mut *tx).await?;
            if sql.contains("muc_rooms") {
                found = res.rows_affected() == 1;
            }
        }
        tx.commit().await?;
        if found {
            self.writer.forget(jid).await?;
        }
        Ok(found)
    }

    /// A room's affiliations, sorted by JID.
    pub async fn muc_affiliations(&self, room: &str) -> Result<Vec<RoomAffiliation>> {
        let rows = sqlx::query(
            "SELECT jid, affiliation, since_micros FROM muc_affiliations WHERE room = $1",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        let mut list = rows
            .iter()
            .map(|row| {
                Ok(RoomAffiliation {
                    jid: row.try_get("jid")?,
                    affiliation: row.try_get("affiliation")?,
                    since_micros: row.try_get("since_micros")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        list.sort_unstable_by(|a, b| a.jid.cmp(&b.jid));
        Ok(list)
    }

    /// Applies affiliation changes to a room in one transaction: `Some` sets
    /// (inserting or replacing), `None` removes. The caller has checked the rules.
    pub async fn muc_set_affiliations(
        &self,
        room: &str,
        changes: &[RoomAffiliation],
        removals: &[&str],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for change in changes {
            sqlx::query(
                "INSERT INTO muc_affiliations (room, jid, affiliation, since_micros)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (room, jid) DO UPDATE SET
                    affiliation = excluded.affiliation, since_micros = excluded.since_micros",
            )
            .bind(room)
            .bind(change.jid.as_str())
            .bind(change.affiliation.as_str())
            .bind(change.since_micros)
            .execute(&mut *tx)
            .await?;
        }
        for jid in removals {
            sqlx::query("DELETE FROM muc_affiliations WHERE room = $1 AND jid = $2")
                .bind(room)
                .bind(*jid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a new invite link for a room.
    pub async fn muc_create_invite(&self, invite: &RoomInvite) -> Result<()> {
        sqlx::query(
            "INSERT INTO muc_invites (token, room, created_by, created_micros, revoked)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(invite.token.as_str())
        .bind(invite.room.as_str())
        .bind(invite.created_by.as_str())
        .bind(invite.created_micros)
        .bind(i64::from(invite.revoked))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The invite link with this token, revoked or not.
    pub async fn muc_invite(&self, token: &str) -> Result<Option<RoomInvite>> {
        let row = sqlx::query(
            "SELECT token, room, created_by, created_micros, revoked FROM muc_invites WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(invite_from_row).transpose()
    }

    /// A room's invite links, oldest first.
    pub async fn muc_invites(&self, room: &str) -> Result<Vec<RoomInvite>> {
        let rows = sqlx::query(
            "SELECT token, room, created_by, created_micros, revoked FROM muc_invites WHERE room = $1",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        let mut list = rows
            .iter()
            .map(invite_from_row)
            .collect::<Result<Vec<_>>>()?;
        list.sort_by(|a, b| (a.created_micros, &a.token).cmp(&(b.created_micros, &b.token)));
        Ok(list)
    }

    /// Revokes one of a room's invite links. `false` if the room has no such link.
    pub async fn muc_revoke_invite(&self, room: &str, token: &str) -> Result<bool> {
        let res = sqlx::query("UPDATE muc_invites SET revoked = 1 WHERE room = $1 AND token = $2")
            .bind(room)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }
}

fn room_from_row(row: &AnyRow) -> Result<StoredRoom> {
    Ok(StoredRoom {
        jid: row.try_get("jid")?,
        config: row.try_get("config")?,
        subject: row.try_get("subject")?,
        subject_by: row.try_get("subject_by")?,
        created_micros: row.try_get("created_micros")?,
    })
}

fn invite_from_row(row: &AnyRow) -> Result<RoomInvite> {
    Ok(RoomInvite {
        token: row.try_get("token")?,
        room: row.try_get("room")?,
        created_by: row.try_get("created_by")?,
        created_micros: row.try_get("created_micros")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
    })
}
