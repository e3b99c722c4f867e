//! Leases: a role that one process of a cluster holds at a time (the node that
//! hosts the group chats, `kith-server`'s `cluster::groups`).
//!
//! On PostgreSQL a lease is a session-level advisory lock
//! (`pg_try_advisory_lock`) held on a connection of its own: it is the
//! holder's for as long as that connection lives, and PostgreSQL lets it go
//! as soon as the connection ends — a clean stop, a crash (the socket
//! closes), or a host gone silent (the connection's TCP keepalives, set
//! short here, give up after about 15 s). The holder asks [`Lease::alive`]
//! every second or so and gives the role up when it fails: the next holder
//! can only take it once PostgreSQL has let go, so two holders may overlap
//! for as long as the old one takes to notice (its polling interval plus a
//! query's timeout). Writes that must never come from two holders check the
//! lease in their own transaction ([`Store::fence_rooms`]: the lock still
//! granted to the lease's backend in `pg_locks`), which leaves only the
//! moment between that check and their commit.
//!
//! On SQLite (one process, no cluster) a lease is always granted.

use sqlx::{Connection, Executor};

use crate::{Result, Store};

/// A role held (see the module documentation). Dropping it lets go.
pub struct Lease {
    /// `None` on SQLite, or once failed.
    conn: Option<sqlx::PgConnection>,
    failed: bool,
    /// The advisory lock: its key and the backend holding it.
    fence: Option<Fence>,
}

/// What a transaction checks to know a lease still holds: the advisory lock
/// `key` held by backend `pid` (`pg_locks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub(crate) key: i64,
    pub(crate) pid: i32,
}

impl Lease {
    /// Whether the lease still holds: its connection answers. A lease that
    /// failed once stays failed (its lock may be someone else's by now).
    pub async fn alive(&mut self) -> bool {
        let Some(conn) = &mut self.conn else {
            return !self.failed;
        };
        match conn.execute("SELECT 1").await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "a lease's connection failed");
                // Never alive again: a fresh `try_lease` is needed.
                self.conn = None;
                self.failed = true;
                false
            }
        }
    }

    /// What a write that must only happen while this lease holds checks
    /// (`Store::fence_rooms`); `None` on SQLite.
    pub fn fence(&self) -> Option<Fence> {
        self.fence
    }

    /// Lets go at once (rather than when dropped).
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

impl Store {
    /// From now on, group messages and room membership changes commit only
    /// while `fence`'s lease holds (checked in their transaction, PostgreSQL),
    /// and fail with [`crate::StoreError::Fenced`] once it does not: a
    /// process that lost the rooms' lease and has not noticed yet writes
    /// nothing more to them. Set by the rooms' host when it takes the lease,
    /// and left in place when it gives the lease up.
    pub fn fence_rooms(&self, fence: Option<Fence>) {
        self.writer.set_fence(fence);
    }

    /// Takes the lease `key` if no other process holds it.
    pub async fn try_lease(&self, key: i64) -> Result<Option<Lease>> {
        let Some(options) = self.writer.pg_options() else {
            return Ok(Some(Lease {
                conn: None,
                failed: false,
                fence: None,
            }));
        };
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        // PostgreSQL notices a peer gone without a word after 5 + 3 × 3 s.
        conn.execute(
            "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 3; \
             SET tcp_keepalives_count = 3",
        )
        .await?;
        let (held,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if held {
            let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await?;
            Ok(Some(Lease {
                conn: Some(conn),
                failed: false,
                fence: Some(Fence { key, pid }),
            }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
