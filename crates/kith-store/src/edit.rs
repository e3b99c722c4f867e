//! Rewriting log entries in place: what XEP-0424 retraction ("delete for
//! everyone") needs, so the archive keeps a tombstone instead of the message.

use crate::{InboxEntry, Result, Store};

impl Store {
    /// The owner's newest `limit` archived entries exchanged with `peer` in
    /// `direction`, newest first (entries kept for delivery only have no
    /// archive id and are not indexed by conversation).
    pub async fn inbox_recent_with(
        &self,
        owner: &str,
        peer: &str,
        direction: &str,
        limit: i64,
    ) -> Result<Vec<InboxEntry>> {
        self.writer.settle(owner).await?;
        // Up to `limit` whole stanzas, from the conversation index
        // (`archive::BUCKET`): not a short read (`read.rs`), so through the pool.
        let mut conn = self.pool.acquire().await?;
        crate::archive::newest_in_conversation(
            &mut conn,
            self.backend,
            owner,
            peer,
            direction,
            limit,
        )
        .await
    }

    /// Replaces an entry's stanza and body (the full-text index follows).
    pub async fn inbox_rewrite(
        &self,
        owner: &str,
        seq: i64,
        xml: &str,
        body: Option<&str>,
    ) -> Result<bool> {
        self.writer.settle(owner).await?;
        let res = sqlx::query("UPDATE inbox SET xml = $3, body = $4 WHERE owner = $1 AND seq = $2")
            .bind(owner)
            .bind(seq)
            .bind(xml)
            .bind(body)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }
}
