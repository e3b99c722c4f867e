//! Group commit for the inbox log.
//!
//! Every message is appended to a log and committed before its sender is told it
//! is safe (DESIGN.md). One transaction per write would make the commit the
//! bottleneck, so appends — and device cursor updates, which are as frequent —
//! are queued to one writer task that takes whatever has queued up (up to
//! [`MAX_BATCH`] jobs) and commits it in a single transaction. Under light load a
//! batch is one job and costs what it did before; under heavy load hundreds of
//! writes share one commit, and cursor updates for the same device coalesce.

use std::collections::HashMap;

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::{Backend, NewInboxEntry, Result, StoreError, begin_write};

/// Most jobs committed together.
const MAX_BATCH: usize = 512;

/// A write waiting for the writer.
enum Job {
    /// Entries appended together (e.g. a message to the recipient's log and the
    /// copy to the sender's), answered with one sequence number each.
    Append {
        entries: Vec<(String, OwnedEntry)>,
        reply: oneshot::Sender<Vec<Result<i64>>>,
    },
    /// A device has everything through `seq`.
    Ack {
        owner: String,
        resource: String,
        seq: i64,
        now_micros: i64,
        reply: oneshot::Sender<Result<()>>,
    },
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

impl OwnedEntry {
    fn from(entry: &NewInboxEntry<'_>) -> Self {
        OwnedEntry {
            stanza_id: entry.stanza_id.to_owned(),
            sender: entry.sender.to_owned(),
            kind: entry.kind.to_owned(),
            xml: entry.xml.to_owned(),
            at_micros: entry.at_micros,
            peer: entry.peer.to_owned(),
            direction: entry.direction.to_owned(),
            body: entry.body.map(str::to_owned),
        }
    }
}

/// Handle to the writer task.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn start(pool: AnyPool, backend: Backend) -> Writer {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(pool, backend, rx));
        Writer { tx }
    }

    /// Appends entries in one transaction and waits until they are committed.
    pub(crate) async fn append(
        &self,
        entries: &[(&str, NewInboxEntry<'_>)],
    ) -> Result<Vec<Result<i64>>> {
        let (reply, answer) = oneshot::channel();
        let entries = entries
            .iter()
            .map(|(owner, entry)| ((*owner).to_owned(), OwnedEntry::from(entry)))
            .collect();
        self.tx
            .send(Job::Append { entries, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Moves a device cursor forward and waits until it is committed.
    pub(crate) async fn ack(
        &self,
        owner: &str,
        resource: &str,
        seq: i64,
        now_micros: i64,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Ack {
            owner: owner.to_owned(),
            resource: resource.to_owned(),
            seq,
            now_micros,
            reply,
        };
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(pool: AnyPool, backend: Backend, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        match write(&pool, backend, &batch).await {
            Ok(results) => answer(batch.drain(..), results),
            Err(error) => {
                // One transaction per job, so one bad job can't fail the others.
                tracing::warn!(%error, size = batch.len(), "group commit failed; retrying one by one");
                for job in batch.drain(..) {
                    let job = vec![job];
                    match write(&pool, backend, &job).await {
                        Ok(results) => answer(job.into_iter(), results),
                        Err(error) => fail(job.into_iter(), &error),
                    }
                }
            }
        }
    }
}

/// What one committed transaction produced, job by job.
enum Done {
    Appended(Vec<Result<i64>>),
    Acked,
}

fn answer(jobs: impl Iterator<Item = Job>, results: Vec<Done>) {
    for (job, done) in jobs.zip(results) {
        match (job, done) {
            (Job::Append { reply, .. }, Done::Appended(seqs)) => {
                let _ = reply.send(seqs);
            }
            (Job::Ack { reply, .. }, _) => {
                let _ = reply.send(Ok(()));
            }
            (Job::Append { reply, entries }, Done::Acked) => {
                let _ = reply.send(entries.iter().map(|_| Err(StoreError::Closed)).collect());
            }
        }
    }
}

fn fail(jobs: impl Iterator<Item = Job>, error: &StoreError) {
    for job in jobs {
        let failed = || StoreError::Corrupt(format!("write failed: {error}"));
        match job {
            Job::Append { entries, reply } => {
                let _ = reply.send(entries.iter().map(|_| Err(failed())).collect());
            }
            Job::Ack { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
        }
    }
}

/// Runs every job of the batch in one transaction. The error is a database
/// failure (nothing committed); an unknown owner only fails its own entry.
async fn write(pool: &AnyPool, backend: Backend, batch: &[Job]) -> Result<Vec<Done>> {
    let mut tx = begin_write(pool, backend).await?;
    let mut results = Vec::with_capacity(batch.len());
    // Several acks of one device in a batch collapse into the furthest one.
    let mut acks: HashMap<(&str, &str), (i64, i64)> = HashMap::new();
    for job in batch {
        match job {
            Job::Append { entries, .. } => {
                let seqs = if entries.len() >= BULK_MIN && distinct_owners(entries) {
                    append_bulk(&mut tx, entries).await?
                } else {
                    let mut seqs = Vec::with_capacity(entries.len());
                    for (owner, entry) in entries {
                        seqs.push(append_one(&mut tx, owner, entry).await?);
                    }
                    seqs
                };
                results.push(Done::Appended(seqs));
            }
            Job::Ack {
                owner,
                resource,
                seq,
                now_micros,
                ..
            } => {
                let slot = acks.entry((owner, resource)).or_insert((*seq, *now_micros));
                *slot = (slot.0.max(*seq), slot.1.max(*now_micros));
                results.push(Done::Acked);
            }
        }
    }
    for ((owner, resource), (seq, now_micros)) in acks {
        sqlx::query(
            "UPDATE devices SET cursor = $3, last_seen_micros = $4
             WHERE owner = $1 AND resource = $2 AND cursor < $3",
        )
        .bind(owner)
        .bind(resource)
        .bind(seq)
        .bind(now_micros)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE users SET delivered_seq = $2 WHERE username = $1 AND delivered_seq < $2",
        )
        .bind(owner)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(results)
}

/// From how many entries (to distinct owners) one append takes the bulk path:
/// a group message to many members.
const BULK_MIN: usize = 16;
/// Owners per multi-row statement (10 bind parameters per inbox row keep an
/// INSERT far below SQLite's 32,766 and PostgreSQL's 65,535 parameters).
const BULK_CHUNK: usize = 256;

fn distinct_owners(entries: &[(String, OwnedEntry)]) -> bool {
    let mut owners: Vec<&str> = entries.iter().map(|(owner, _)| owner.as_str()).collect();
    owners.sort_unstable();
    owners.windows(2).all(|pair| pair[0] != pair[1])
}

/// Appends entries for distinct owners with a few multi-row statements per
/// chunk instead of two round trips per entry: one `UPDATE … RETURNING` bumps
/// every owner's sequence, one `INSERT` writes all rows. Same results as
/// [`append_one`] per entry.
async fn append_bulk(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    entries: &[(String, OwnedEntry)],
) -> Result<Vec<Result<i64>>> {
    let mut results = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(BULK_CHUNK) {
        // Only placeholders are formatted into the SQL.
        let owners = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut update = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET inbox_seq = inbox_seq + 1 WHERE username IN ({owners})
             RETURNING username, inbox_seq"
        )));
        for (owner, _) in chunk {
            update = update.bind(owner.as_str());
        }
        let mut seqs: HashMap<String, i64> = HashMap::with_capacity(chunk.len());
        for row in update.fetch_all(&mut **tx).await? {
            seqs.insert(row.try_get("username")?, row.try_get("inbox_seq")?);
        }
        let present: Vec<(&String, &OwnedEntry, i64)> = chunk
            .iter()
            .filter_map(|(owner, entry)| seqs.get(owner).map(|seq| (owner, entry, *seq)))
            .collect();
        if !present.is_empty() {
            let rows = (0..present.len())
                .map(|row| {
                    let params = (1..=10)
                        .map(|column| format!("${}", row * 10 + column))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("({params})")
                })
                .collect::<Vec<_>>()
                .join(", ");
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body)
                 VALUES {rows}"
            )));
            for (owner, entry, seq) in &present {
                insert = insert
                    .bind(owner.as_str())
                    .bind(*seq)
                    .bind(&entry.stanza_id)
                    .bind(&entry.sender)
                    .bind(&entry.kind)
                    .bind(&entry.xml)
                    .bind(entry.at_micros)
                    .bind(&entry.peer)
                    .bind(&entry.direction)
                    .bind(&entry.body);
            }
            insert.execute(&mut **tx).await?;
        }
        for (owner, _) in chunk {
            results.push(match seqs.get(owner) {
                Some(seq) => Ok(*seq),
                None => Err(StoreError::NoSuchUser(owner.clone())),
            });
        }
    }
    Ok(results)
}

/// Appends one entry inside the batch's transaction; `Ok(Err(NoSuchUser))` for an
/// unknown owner.
async fn append_one(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    owner: &str,
    entry: &OwnedEntry,
) -> Result<Result<i64>> {
    let row = sqlx::query(
        "UPDATE users SET inbox_seq = inbox_seq + 1 WHERE username = $1 RETURNING inbox_seq",
    )
    .bind(owner)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(Err(StoreError::NoSuchUser(owner.to_owned())));
    };
    let seq: i64 = row.try_get("inbox_seq")?;
    sqlx::query(
        "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(owner)
    .bind(seq)
    .bind(&entry.stanza_id)
    .bind(&entry.sender)
    .bind(&entry.kind)
    .bind(&entry.xml)
    .bind(entry.at_micros)
    .bind(&entry.peer)
    .bind(&entry.direction)
    .bind(&entry.body)
    .execute(&mut **tx)
    .await?;
    Ok(Ok(seq))
}
