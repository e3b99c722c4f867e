//! The PostgreSQL engine of the group commit: a tokio task runs each batch
//! through the sqlx pool. Every statement is a network round trip, so the batch
//! uses few whatever its size: one multi-row `UPDATE` per chunk of owners
//! reserves a range of sequence numbers per owner, one multi-row `INSERT` per
//! chunk of entries writes them. The full-text index is an expression index
//! (`inbox_body_fts`) kept by PostgreSQL itself.

use std::collections::{HashMap, HashSet};

use sqlx::{AnyPool, Row};

use std::sync::Arc;

use super::rooms::{self, Fill, RoomReads, RoomRows, RoomState, RoomWrite};
use super::{Callbacks, Done, Job, MAX_BATCH, OwnedEntry, answer, fail, fill, plan};
use crate::{Backend, Result, StoreError, begin_write};

pub(super) async fn run(pool: AnyPool, rx: flume::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv_async().await {
        fill(&mut batch, first, &rx);
        let started = std::time::Instant::now();
        match write(&pool, &batch).await {
            Ok(results) => {
                tracing::debug!(
                    jobs = batch.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "group commit"
                );
                answer(batch.drain(..), results, &Callbacks::Inline)
            }
            Err(error) => {
                // One transaction per job, so one bad job can't fail the others.
                tracing::warn!(%error, size = batch.len(), "group commit failed; retrying one by one");
                for job in batch.drain(..) {
                    let job = vec![job];
                    match write(&pool, &job).await {
                        Ok(results) => answer(job.into_iter(), results, &Callbacks::Inline),
                        Err(error) => fail(job.into_iter(), &error, &Callbacks::Inline),
                    }
                }
            }
        }
    }
}

/// Runs every job of the batch in one transaction. The error is a database
/// failure (nothing committed); an unknown owner only fails its own entry.
async fn write(pool: &AnyPool, batch: &[Job]) -> Result<Vec<Done>> {
    let mut tx = begin_write(pool, Backend::Postgres).await?;

    // What the batch's group messages and room changes need to know.
    let needs = rooms::needs(batch);
    let state = match &needs {
        Some(needs) => rooms::read(needs, &mut PgReads { tx: &mut tx }).await?,
        None => RoomState::default(),
    };
    let no_one = HashSet::new();
    let plan = plan(batch, &state, needs.as_ref().map_or(&no_one, |n| &n.live));

    // Reserve sequence numbers: per owner, as many as it has rows here.
    // First free number per owner; absent = no such user.
    let mut bases: HashMap<&str, i64> = HashMap::with_capacity(plan.counts.len());
    // Several writers (a cluster's nodes) update the same users' rows at once
    // (numbering entries, moving `delivered_seq`): each batch locks every row
    // it will update first, in one order (by name), or two batches could each
    // hold a row the other waits for, which PostgreSQL breaks only after
    // `deadlock_timeout` (a second) by failing one.
    let mut owners: Vec<&str> = plan
        .counts
        .iter()
        .map(|(owner, _)| *owner)
        .chain(plan.acks.keys().map(|(owner, _)| *owner))
        .collect();
    owners.sort_unstable();
    owners.dedup();
    if owners.len() > 1 {
        for chunk in chunks(&owners) {
            // Built from numbers only: placeholders, no input.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(lock_sql(chunk.len())));
            for owner in chunk {
                query = query.bind(*owner);
            }
            query.fetch_all(&mut *tx).await?;
        }
    }
    for chunk in chunks(&plan.counts) {
        // Built from numbers only: placeholders, no input.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(reserve_sql(chunk.len())));
        for (owner, count) in chunk {
            query = query.bind(*owner).bind(*count);
        }
        for row in query.fetch_all(&mut *tx).await? {
            let owner: String = row.try_get("username")?;
            let last: i64 = row.try_get("inbox_seq")?;
            if let Some((name, count)) = chunk.iter().find(|(name, _)| *name == owner) {
                bases.insert(name, last - count + 1);
            }
        }
    }
    let numbered = plan.number(&bases);

    // Entries whose origin key is already in the log are skipped by the insert
    // (`ON CONFLICT DO NOTHING`); what it returns is what was written.
    let rows: Vec<(usize, (&str, i64, &OwnedEntry))> = numbered
        .rows
        .iter()
        .enumerate()
        .filter_map(|(i, row)| row.map(|row| (i, row)))
        .collect();
    let mut written_rows: HashSet<(String, i64)> = HashSet::with_capacity(rows.len());
    for chunk in chunks(&rows) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert_sql(chunk.len())));
        for (_, (owner, seq, entry)) in chunk {
            query = query
                .bind(*owner)
                .bind(*seq)
                .bind(entry.stanza_id())
                .bind(entry.sender())
                .bind(entry.kind())
                .bind(entry.xml())
                .bind(entry.at_micros)
                .bind(entry.peer())
                .bind(entry.direction())
                .bind(entry.body())
                .bind(entry.origin());
        }
        for row in query.fetch_all(&mut *tx).await? {
            written_rows.insert((row.try_get("owner")?, row.try_get("seq")?));
        }
    }
    let written_rows: HashSet<(&str, i64)> = written_rows
        .iter()
        .map(|(owner, seq)| (owner.as_str(), *seq))
        .collect();
    let mut written = vec![false; numbered.rows.len()];
    for (i, (owner, seq, _)) in &rows {
        written[*i] = written_rows.contains(&(*owner, *seq));
    }

    for write in &plan.room_writes {
        let query = match write {
            RoomWrite::Fill { room, owner, fill } => sqlx::query(rooms::sql::SET_FILL)
                .bind(room.as_str())
                .bind(owner.as_str())
                .bind(rooms::fill_seq(*fill)),
            RoomWrite::Gone { room, owner } => sqlx::query(rooms::sql::DROP_FILL)
                .bind(room.as_str())
                .bind(owner.as_str()),
            RoomWrite::Mark { room, seq } => sqlx::query(rooms::sql::SET_MARK)
                .bind(room.as_str())
                .bind(*seq),
        };
        query.execute(&mut *tx).await?;
    }

    for ((owner, resource), (seq, now_micros)) in &plan.acks {
        sqlx::query(
            "UPDATE devices SET cursor = $3, last_seen_micros = $4
             WHERE owner = $1 AND resource = $2 AND cursor < $3",
        )
        .bind(*owner)
        .bind(*resource)
        .bind(*seq)
        .bind(*now_micros)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE users SET delivered_seq = $2 WHERE username = $1 AND delivered_seq < $2",
        )
        .bind(*owner)
        .bind(*seq)
        .execute(&mut *tx)
        .await?;
    }
    if !plan.attaches.is_empty() || !plan.seen.is_empty() {
        // `Store::device_attach` and `Store::set_last_activity` write through
        // the pool here (logins and logouts in parallel); such a job is a
        // mistake, refused loudly (the batch's other jobs are retried one by
        // one and go through).
        return Err(StoreError::Corrupt(
            "device registrations and last activities go through the pool on PostgreSQL".to_owned(),
        ));
    }
    tx.commit().await?;
    Ok(plan.answers(&numbered, &written, &[], &[]))
}

/// The room reads of a batch, in its transaction.
struct PgReads<'t, 'c> {
    tx: &'t mut sqlx::Transaction<'c, sqlx::Any>,
}

impl RoomReads for PgReads<'_, '_> {
    async fn rooms_of(&mut self, owner: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(rooms::sql::ROOMS_OF)
            .bind(owner)
            .fetch_all(&mut **self.tx)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("room")?)).collect()
    }

    async fn rows(&mut self, room: &str) -> Result<Arc<RoomRows>> {
        let mark = sqlx::query(rooms::sql::MARK)
            .bind(room)
            .fetch_optional(&mut **self.tx)
            .await?
            .map(|row| row.try_get::<i64, _>("seq"))
            .transpose()?;
        let rows = sqlx::query(rooms::sql::MEMBERS)
            .bind(room)
            .fetch_all(&mut **self.tx)
            .await?;
        let members = rows
            .iter()
            .map(|row| {
                let seq: Option<i64> = row.try_get("seq")?;
                Ok((
                    row.try_get("owner")?,
                    seq.map_or(Fill::AtMark, Fill::Through),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Arc::new(RoomRows {
            mark: mark.unwrap_or(0),
            members,
        }))
    }

    async fn head(&mut self, room: &str) -> Result<Option<i64>> {
        // Locked until the batch commits: no other writer numbers this room's
        // entries meanwhile, so the plan's numbering is the reservation's.
        let row = sqlx::query("SELECT inbox_seq FROM users WHERE username = $1 FOR UPDATE")
            .bind(room)
            .fetch_optional(&mut **self.tx)
            .await?;
        Ok(row.map(|row| row.try_get("inbox_seq")).transpose()?)
    }

    async fn entries(
        &mut self,
        room: &str,
        after: i64,
        through: i64,
    ) -> Result<Vec<(i64, OwnedEntry)>> {
        let rows = sqlx::query(rooms::sql::ENTRIES)
            .bind(room)
            .bind(after)
            .bind(through)
            .fetch_all(&mut **self.tx)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("seq")?,
                    rooms::owed_copy(
                        room,
                        row.try_get::<&str, _>("sender")?,
                        row.try_get::<&str, _>("kind")?,
                        row.try_get::<&str, _>("xml")?,
                        row.try_get("at_micros")?,
                    ),
                ))
            })
            .collect()
    }
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

/// Locks `rows` owners' rows in the order of their names' bytes (rows are
/// locked as the sorted result is read; `COLLATE "C"` is the order Rust's
/// sort gave the chunks, whatever the database's collation).
fn lock_sql(rows: usize) -> String {
    let names = (1..=rows)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT username FROM users WHERE username IN ({names}) \
         ORDER BY username COLLATE \"C\" FOR NO KEY UPDATE"
    )
}

/// `UPDATE … FROM (VALUES …)` reserving `count` sequence numbers for each of `rows`
/// owners; returns each existing owner's last reserved number.
fn reserve_sql(rows: usize) -> String {
    let values = placeholders(rows, 2);
    format!(
        "UPDATE users SET inbox_seq = users.inbox_seq + v.column2 FROM (VALUES {values}) AS v \
         WHERE users.username = v.column1 RETURNING users.username AS username, users.inbox_seq AS inbox_seq"
    )
}

/// Multi-row `INSERT INTO inbox` of `rows` entries, skipping duplicates of an
/// origin key already in the log; returns the rows written.
fn insert_sql(rows: usize) -> String {
    let values = placeholders(rows, 11);
    format!(
        "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin) \
         VALUES {values} ON CONFLICT DO NOTHING RETURNING owner, seq"
    )
}

/// `($1, $2), ($3, $4), …`: `rows` tuples of `columns` numbered placeholders.
fn placeholders(rows: usize, columns: usize) -> String {
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
            out.push('$');
            out.push_str(&(row * columns + column + 1).to_string());
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
        assert_eq!(placeholders(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(placeholders(1, 3), "($1, $2, $3)");
    }
}
