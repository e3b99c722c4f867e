//! Group commit for the inbox log.
//!
//! Every message is appended to a log and committed before its sender is told it
//! is safe (DESIGN.md). One transaction per write would make the commit the
//! bottleneck, so appends — and device cursor updates, which are as frequent —
//! are queued to one writer task that takes whatever has queued up (up to
//! [`MAX_BATCH`] jobs) and commits it in a single transaction. Under light load a
//! batch is one job and costs what it did before; under heavy load hundreds of
//! writes share one commit, and cursor updates for the same device coalesce.

use std::collections::{HashMap, HashSet};

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::{Backend, NewInboxEntry, Result, StoreError, begin_write};

/// Most jobs committed together.
const MAX_BATCH: usize = 512;

/// What to do once an append is committed (or failed): called on the writer task,
/// in commit order, with one result per entry.
pub(crate) type Then = Box<dyn FnOnce(Vec<Result<i64>>) + Send + Sync>;

/// A write waiting for the writer.
enum Job {
    /// Entries appended together (e.g. a message to the recipient's log and the
    /// copy to the sender's), answered with one sequence number each.
    Append {
        entries: Vec<(String, OwnedEntry)>,
        then: Then,
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
    origin: Option<String>,
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
            origin: entry.origin.map(str::to_owned),
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
        self.append_then(
            entries,
            Box::new(move |results| {
                let _ = reply.send(results);
            }),
        )
        .await?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Queues entries for the next group commit and returns once they are queued;
    /// `then` runs on the writer task right after the commit, in commit order.
    pub(crate) async fn append_then(
        &self,
        entries: &[(&str, NewInboxEntry<'_>)],
        then: Then,
    ) -> Result<()> {
        let entries = entries
            .iter()
            .map(|(owner, entry)| ((*owner).to_owned(), OwnedEntry::from(entry)))
            .collect();
        self.tx
            .send(Job::Append { entries, then })
            .await
            .map_err(|_| StoreError::Closed)
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
        let started = std::time::Instant::now();
        match write(&pool, backend, &batch).await {
            Ok(results) => {
                tracing::debug!(
                    jobs = batch.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "group commit"
                );
                answer(batch.drain(..), results)
            }
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
            (Job::Append { then, .. }, Done::Appended(seqs)) => then(seqs),
            (Job::Ack { reply, .. }, _) => {
                let _ = reply.send(Ok(()));
            }
            (Job::Append { then, entries }, Done::Acked) => {
                then(entries.iter().map(|_| Err(StoreError::Closed)).collect());
            }
        }
    }
}

fn fail(jobs: impl Iterator<Item = Job>, error: &StoreError) {
    for job in jobs {
        let failed = || StoreError::Corrupt(format!("write failed: {error}"));
        match job {
            Job::Append { entries, then } => {
                then(entries.iter().map(|_| Err(failed())).collect());
            }
            Job::Ack { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
        }
    }
}

/// Runs every job of the batch in one transaction. The error is a database
/// failure (nothing committed); an unknown owner only fails its own entry.
///
/// The statements are few whatever the batch size: one multi-row `UPDATE` per
/// chunk of owners reserves a range of sequence numbers per owner, one multi-row
/// `INSERT` per chunk of entries writes them. Each statement costs a round trip
/// to the database (for SQLite, to its worker thread), which is what limited
/// throughput when every entry took two.
async fn write(pool: &AnyPool, backend: Backend, batch: &[Job]) -> Result<Vec<Done>> {
    let mut tx = begin_write(pool, backend).await?;

    // Reserve sequence numbers: per owner, as many as it has entries here.
    let mut wanted: Vec<(&str, i64)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for job in batch {
        if let Job::Append { entries, .. } = job {
            for (owner, _) in entries {
                let slot = *index.entry(owner.as_str()).or_insert_with(|| {
                    wanted.push((owner.as_str(), 0));
                    wanted.len() - 1
                });
                wanted[slot].1 += 1;
            }
        }
    }
    // Next free sequence number per owner; absent = no such user.
    let mut next: HashMap<&str, i64> = HashMap::with_capacity(wanted.len());
    for chunk in chunks(&wanted) {
        // Built from numbers only: placeholders, no input.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(reserve_sql(backend, chunk.len())));
        for (owner, count) in chunk {
            query = query.bind(*owner).bind(*count);
        }
        for row in query.fetch_all(&mut *tx).await? {
            let owner: String = row.try_get("username")?;
            let last: i64 = row.try_get("inbox_seq")?;
            if let Some((name, count)) = chunk.iter().find(|(name, _)| *name == owner) {
                next.insert(name, last - count + 1);
            }
        }
    }

    // Number the entries in batch order.
    let mut rows: Vec<(&str, i64, &OwnedEntry)> = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    // Several acks of one device in a batch collapse into the furthest one.
    let mut acks: HashMap<(&str, &str), (i64, i64)> = HashMap::new();
    for job in batch {
        match job {
            Job::Append { entries, .. } => {
                let mut seqs = Vec::with_capacity(entries.len());
                for (owner, entry) in entries {
                    match next.get_mut(owner.as_str()) {
                        Some(seq) => {
                            rows.push((owner, *seq, entry));
                            seqs.push(Ok(*seq));
                            *seq += 1;
                        }
                        None => seqs.push(Err(StoreError::NoSuchUser(owner.clone()))),
                    }
                }
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
    // Entries whose origin key is already in the log are skipped by the insert
    // (`ON CONFLICT DO NOTHING`); what it returns is what was written.
    let mut written: HashSet<(String, i64)> = HashSet::with_capacity(rows.len());
    for chunk in chunks(&rows) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert_sql(backend, chunk.len())));
        for (owner, seq, entry) in chunk {
            query = query
                .bind(*owner)
                .bind(*seq)
                .bind(&entry.stanza_id)
                .bind(&entry.sender)
                .bind(&entry.kind)
                .bind(&entry.xml)
                .bind(entry.at_micros)
                .bind(&entry.peer)
                .bind(&entry.direction)
                .bind(&entry.body)
                .bind(&entry.origin);
        }
        for row in query.fetch_all(&mut *tx).await? {
            written.insert((row.try_get("owner")?, row.try_get("seq")?));
        }
    }
    if written.len() < rows.len() {
        for (job, done) in batch.iter().zip(results.iter_mut()) {
            if let (Job::Append { entries, .. }, Done::Appended(seqs)) = (job, done) {
                for ((owner, _), seq) in entries.iter().zip(seqs.iter_mut()) {
                    if let Ok(n) = seq
                        && !written.contains(&(owner.clone(), *n))
                    {
                        *seq = Err(StoreError::Duplicate(owner.clone()));
                    }
                }
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

/// Chunk sizes for multi-row statements: few distinct statement texts (each is
/// prepared once and cached per connection), few round trips.
const CHUNK_SIZES: [usize; 4] = [64, 16, 4, 1];

/// Splits `items` into chunks of the sizes in [`CHUNK_SIZES`], largest first.
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let size = CHUNK_SIZES.into_iter().find(|size| *size <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// `UPDATE … FROM (VALUES …)` reserving `count` sequence numbers for each of `rows`
/// owners; returns each existing owner's last reserved number. `column1`/`column2`
/// name the VALUES columns on both SQLite and PostgreSQL.
fn reserve_sql(backend: Backend, rows: usize) -> String {
    let values = placeholders(backend, rows, 2);
    format!(
        "UPDATE users SET inbox_seq = users.inbox_seq + v.column2 FROM (VALUES {values}) AS v \
         WHERE users.username = v.column1 RETURNING users.username AS username, users.inbox_seq AS inbox_seq"
    )
}

/// Multi-row `INSERT INTO inbox` of `rows` entries, skipping duplicates of an
/// origin key already in the log; returns the rows written.
fn insert_sql(backend: Backend, rows: usize) -> String {
    let values = placeholders(backend, rows, 11);
    format!(
        "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin) \
         VALUES {values} ON CONFLICT DO NOTHING RETURNING owner, seq"
    )
}

/// `($1, $2), ($3, $4), …`: `rows` tuples of `columns` numbered placeholders; on
/// SQLite anonymous `?` ones, because binding numbered ones costs sqlx a
/// linear-time name lookup per parameter (quadratic in a long statement).
fn placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            match backend {
                Backend::Sqlite => out.push('?'),
                Backend::Postgres => {
                    out.push('$');
                    out.push_str(&(row * columns + column + 1).to_string());
                }
            }
        }
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_everything_in_order_with_few_sizes() {
        for len in 0..300 {
            let items: Vec<usize> = (0..len).collect();
            let pieces: Vec<&[usize]> = chunks(&items).collect();
            assert!(pieces.iter().all(|p| CHUNK_SIZES.contains(&p.len())));
            let joined: Vec<usize> = pieces.concat();
            assert_eq!(joined, items);
        }
    }

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(Backend::Postgres, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(placeholders(Backend::Postgres, 1, 3), "($1, $2, $3)");
        assert_eq!(placeholders(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }
}
