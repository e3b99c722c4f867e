//! Group commit for the inbox log.
//!
//! Every message is appended to a log and committed before its sender is told it
//! is safe (DESIGN.md). One transaction per message would make the commit the
//! bottleneck, so appends are queued to one writer task that takes whatever has
//! queued up — up to [`MAX_BATCH`] — and commits it in a single transaction. Under
//! light load a batch is one append and costs what it did before; under heavy load
//! hundreds of messages share one commit.

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::{Backend, NewInboxEntry, Result, StoreError, begin_write};

/// Most appends committed together.
const MAX_BATCH: usize = 512;

/// An append waiting for the writer.
struct Request {
    owner: String,
    entry: OwnedEntry,
    reply: oneshot::Sender<Result<i64>>,
}

struct OwnedEntry {
    stanza_id: String,
    sender: String,
    kind: String,
    xml: String,
    at_micros: i64,
    peer: String,
    direction: String,
    body: Option<String>,
}

/// Handle to the writer task.
#[derive(Clone)]
pub(crate) struct Appender {
    tx: mpsc::Sender<Request>,
}

impl Appender {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn start(pool: AnyPool, backend: Backend) -> Appender {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(writer(pool, backend, rx));
        Appender { tx }
    }

    /// Appends and waits until the entry is committed; returns its sequence number.
    pub(crate) async fn append(&self, owner: &str, entry: &NewInboxEntry<'_>) -> Result<i64> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            owner: owner.to_owned(),
            entry: OwnedEntry {
                stanza_id: entry.stanza_id.to_owned(),
                sender: entry.sender.to_owned(),
                kind: entry.kind.to_owned(),
                xml: entry.xml.to_owned(),
                at_micros: entry.at_micros,
                peer: entry.peer.to_owned(),
                direction: entry.direction.to_owned(),
                body: entry.body.map(str::to_owned),
            },
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn writer(pool: AnyPool, backend: Backend, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        write_batch(&pool, backend, &mut batch).await;
    }
}

/// Commits a batch in one transaction; if that fails, each append gets its own
/// transaction so one bad request can't fail the others.
async fn write_batch(pool: &AnyPool, backend: Backend, batch: &mut Vec<Request>) {
    match append_all(pool, backend, batch).await {
        Ok(seqs) => {
            for (request, seq) in batch.drain(..).zip(seqs) {
                let _ = request.reply.send(seq);
            }
        }
        Err(error) => {
            tracing::warn!(%error, size = batch.len(), "group commit failed; retrying one by one");
            for request in batch.drain(..) {
                let result = append_all(pool, backend, std::slice::from_ref(&request))
                    .await
                    .and_then(|mut seqs| seqs.pop().unwrap_or(Err(StoreError::Closed)));
                let _ = request.reply.send(result);
            }
        }
    }
}

/// Appends every request in one transaction. The outer error is a database
/// failure (nothing committed); an unknown owner only fails its own request.
async fn append_all(
    pool: &AnyPool,
    backend: Backend,
    batch: &[Request],
) -> Result<Vec<Result<i64>>> {
    let mut tx = begin_write(pool, backend).await?;
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        let row = sqlx::query(
            "UPDATE users SET inbox_seq = inbox_seq + 1 WHERE username = $1 RETURNING inbox_seq",
        )
        .bind(&request.owner)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            results.push(Err(StoreError::NoSuchUser(request.owner.clone())));
            continue;
        };
        let seq: i64 = row.try_get("inbox_seq")?;
        let entry = &request.entry;
        sqlx::query(
            "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&request.owner)
        .bind(seq)
        .bind(&entry.stanza_id)
        .bind(&entry.sender)
        .bind(&entry.kind)
        .bind(&entry.xml)
        .bind(entry.at_micros)
        .bind(&entry.peer)
        .bind(&entry.direction)
        .bind(&entry.body)
        .execute(&mut *tx)
        .await?;
        results.push(Ok(seq));
    }
    tx.commit().await?;
    Ok(results)
}
