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
//! query's timeout). A role that must never be held twice needs fencing in
//! the store on top of this; the group host avoids handling one stanza twice
//! by other means (a NATS queue group).
//!
//! On SQLite (one process, no cluster) a lease is always granted.

use sqlx::{Connection, Executor};

use crate::{Result, Store};

/// A role held (see the module documentation). Dropping it lets go.
pub struct Lease {
    /// `None` on SQLite, or once failed.
    conn: Option<sqlx::PgConnection>,
    failed: bool,
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

    /// Lets go at once (rather than when dropped).
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

impl Store {
    /// Takes the lease `key` if no other process holds it.
    pub async fn try_lease(&self, key: i64) -> Result<Option<Lease>> {
        let Some(options) = self.writer.pg_options() else {
            return Ok(Some(Lease {
                conn: None,
                failed: false,
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
            Ok(Some(Lease {
                conn: Some(conn),
                failed: false,
            }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
