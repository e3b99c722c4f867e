//! The PostgreSQL engine of the group commit: a tokio task runs each batch on
//! a connection of its own as one call of `kith_append` (migration 50), each
//! column of the batch one array parameter, which sqlx's `Any` driver can't
//! bind (hence a `PgPool` here). Every statement is a network round trip, and
//! on a busy machine a round trip waits for the scheduler; the users' rows a
//! batch locks stay locked until it commits, and other writers (a cluster's
//! other nodes) wait for them, so the call does the whole batch in one. The
//! full-text index is an expression index (`inbox_body_fts`) kept by
//! PostgreSQL itself.

use sqlx::{PgPool, Postgres, Row};

use std::sync::Arc;

use super::rooms::{self, Fill, RoomOp, RoomReads, RoomRows, RoomState, RoomWrite};
use super::{
    Callbacks, Done, Fencing, HashMap, HashSet, Job, MAX_BATCH, OwnedEntry, WriterStats, answer,
    fail, fill, plan,
};
use crate::lease::Fence;
use crate::{Result, StoreError};

pub(super) async fn run(
    pool: PgPool,
    rx: flume::Receiver<Job>,
    stats: Arc<WriterStats>,
    fencing: Fencing,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv_async().await {
        fill(&mut batch, first, &rx, &stats);
        let started = std::time::Instant::now();
        let fence = *fencing.lock().unwrap_or_else(|e| e.into_inner());
        match write(&pool, &batch, fence).await {
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
                    match write(&pool, &job, fence).await {
                        Ok(results) => answer(job.into_iter(), results, &Callbacks::Inline),
                        Err(error) => fail(job.into_iter(), &error, &Callbacks::Inline),
                    }
                }
            }
        }
    }
}

/// Whether the lease `fence` names is still held by its backend.
async fn holds(tx: &mut sqlx::Transaction<'_, Postgres>, fence: Fence) -> Result<bool> {
    // `pg_advisory_lock(bigint)` shows as classid = the key's high 32 bits,
    // objid = its low 32 bits, objsubid = 1 (PostgreSQL's `pg_locks` docs).
    let (held,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND pid = $1 AND classid::bigint = $2 AND objid::bigint = $3 AND objsubid = 1)",
    )
    .bind(fence.pid)
    .bind((fence.key >> 32) & 0xffff_ffff)
    .bind(fence.key & 0xffff_ffff)
    .fetch_one(&mut **tx)
    .await?;
    Ok(held)
}

/// Runs every job of the batch atomically. The error is a database failure
/// (nothing committed); an unknown owner only fails its own entry.
///
/// A batch without group messages or room changes is one statement, a call of
/// `kith_append` (migration 50) in its own transaction: two round trips (the
/// pool checks its connection first), and the users' rows it locks are held
/// only while PostgreSQL runs the call. One with rooms reads their state first,
/// so it runs in an explicit transaction, its rows locked from the call to the
/// commit (in a cluster only the group host's writer appends to rooms).
async fn write(pool: &PgPool, batch: &[Job], fence: Option<Fence>) -> Result<Vec<Done>> {
    // What the batch's group messages and room changes need to know.
    let needs = rooms::needs(batch);
    let mut tx = match needs {
        Some(_) => Some(pool.begin().await?),
        None => None,
    };
    // Group messages and membership changes commit only while the rooms'
    // lease holds (`Store::fence_rooms`), checked inside their transaction;
    // a member's catch-up, which any process makes, is not fenced.
    if let (Some(tx), Some(fence)) = (&mut tx, fence)
        && batch.iter().any(|job| {
            matches!(
                job,
                Job::Fan { .. }
                    | Job::Rooms {
                        op: RoomOp::Join { .. } | RoomOp::Leave { .. },
                        ..
                    }
            )
        })
        && !holds(tx, fence).await?
    {
        return Err(StoreError::Fenced);
    }
    let state = match (&needs, &mut tx) {
        (Some(needs), Some(tx)) => rooms::read(needs, &mut PgReads { tx }).await?,
        _ => RoomState::default(),
    };
    let no_one = HashSet::default();
    let plan = plan(batch, &state, needs.as_ref().map_or(&no_one, |n| &n.live));
    if !plan.attaches.is_empty() || !plan.seen.is_empty() {
        // `Store::device_attach` and `Store::set_last_activity` write through
        // the pool here (logins and logouts in parallel); such a job is a
        // mistake, refused loudly (the batch's other jobs are retried one by
        // one and go through).
        return Err(StoreError::Corrupt(
            "device registrations and last activities go through the pool on PostgreSQL".to_owned(),
        ));
    }
    if tx.is_none() && !plan.room_writes.is_empty() {
        tx = Some(pool.begin().await?);
    }

    let call = Append::new(&plan);
    let returned = match &mut tx {
        Some(tx) => call.query().fetch_all(&mut **tx).await?,
        None => call.query().fetch_all(pool).await?,
    };
    // Per owner, the first number reserved for it (absent: no such user); and
    // the rows written (the insert skips an origin key already in the log).
    let counts: HashMap<&str, i64> = plan.counts.iter().copied().collect();
    let mut bases: HashMap<&str, i64> =
        HashMap::with_capacity_and_hasher(counts.len(), Default::default());
    let mut written_rows: HashSet<(String, i64)> =
        HashSet::with_capacity_and_hasher(returned.len(), Default::default());
    for row in returned {
        let owner: String = row.try_get("owner")?;
        let seq: i64 = row.try_get("seq")?;
        if row.try_get("written")? {
            written_rows.insert((owner, seq));
        } else if let Some((name, count)) = counts.get_key_value(owner.as_str()) {
            bases.insert(name, seq - count + 1);
        }
    }
    let written_rows: HashSet<(&str, i64)> = written_rows
        .iter()
        .map(|(owner, seq)| (owner.as_str(), *seq))
        .collect();
    let numbered = plan.number(&bases);
    let written: Vec<bool> = numbered
        .rows
        .iter()
        .map(|row| row.is_some_and(|(owner, seq, _)| written_rows.contains(&(owner, seq))))
        .collect();

    if let Some(mut tx) = tx {
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
        tx.commit().await?;
    }
    Ok(plan.answers(&numbered, &written, &[], &[]))
}

/// The room reads of a batch, in its transaction.
struct PgReads<'t, 'c> {
    tx: &'t mut sqlx::Transaction<'c, Postgres>,
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

/// The call of `kith_append`: the batch's columns, each bound as one array.
const APPEND: &str = "SELECT owner, seq, written FROM kith_append(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)";

/// A batch as `kith_append`'s arguments: the users whose rows it locks (sorted,
/// once each), how many numbers to reserve for whom, the entries (`n`: the
/// entry's place among its owner's, numbered from the first reserved), the
/// devices' acks and the users' delivered marks.
struct Append<'a> {
    lock: Vec<&'a str>,
    names: Vec<&'a str>,
    counts: Vec<i64>,
    owner: Vec<&'a str>,
    n: Vec<i64>,
    stanza_id: Vec<&'a str>,
    sender: Vec<&'a str>,
    kind: Vec<&'a str>,
    xml: Vec<&'a str>,
    at_micros: Vec<i64>,
    peer: Vec<&'a str>,
    direction: Vec<&'a str>,
    body: Vec<Option<&'a str>>,
    origin: Vec<Option<&'a str>>,
    ack_owner: Vec<&'a str>,
    ack_resource: Vec<&'a str>,
    ack_seq: Vec<i64>,
    ack_at: Vec<i64>,
    delivered_names: Vec<&'a str>,
    delivered_seqs: Vec<i64>,
}

impl<'a> Append<'a> {
    fn new(plan: &super::Plan<'a>) -> Self {
        // Several writers (a cluster's nodes) update the same users' rows at
        // once (numbering entries, moving `delivered_seq`): each batch locks
        // every row it will update first, in one order (by name's bytes), or
        // two batches could each hold a row the other waits for, which
        // PostgreSQL breaks only after `deadlock_timeout` (a second) by
        // failing one.
        let mut lock: Vec<&str> = plan
            .counts
            .iter()
            .map(|(owner, _)| *owner)
            .chain(plan.acks.keys().map(|(owner, _)| *owner))
            .collect();
        lock.sort_unstable();
        lock.dedup();
        let (names, counts) = plan.counts.iter().copied().unzip();
        let rows = plan.rows.len();
        let mut call = Append {
            lock,
            names,
            counts,
            owner: Vec::with_capacity(rows),
            n: Vec::with_capacity(rows),
            stanza_id: Vec::with_capacity(rows),
            sender: Vec::with_capacity(rows),
            kind: Vec::with_capacity(rows),
            xml: Vec::with_capacity(rows),
            at_micros: Vec::with_capacity(rows),
            peer: Vec::with_capacity(rows),
            direction: Vec::with_capacity(rows),
            body: Vec::with_capacity(rows),
            origin: Vec::with_capacity(rows),
            ack_owner: Vec::with_capacity(plan.acks.len()),
            ack_resource: Vec::with_capacity(plan.acks.len()),
            ack_seq: Vec::with_capacity(plan.acks.len()),
            ack_at: Vec::with_capacity(plan.acks.len()),
            delivered_names: Vec::new(),
            delivered_seqs: Vec::new(),
        };
        for (owner, n, entry) in &plan.rows {
            call.owner.push(owner);
            call.n.push(*n);
            call.stanza_id.push(entry.stanza_id());
            call.sender.push(entry.sender());
            call.kind.push(entry.kind());
            call.xml.push(entry.xml());
            call.at_micros.push(entry.at_micros);
            call.peer.push(entry.peer());
            call.direction.push(entry.direction());
            call.body.push(entry.body());
            call.origin.push(entry.origin());
        }
        // A user's delivered mark is its devices' furthest ack.
        let mut delivered: HashMap<&str, i64> = HashMap::default();
        for ((owner, resource), (seq, now_micros)) in &plan.acks {
            call.ack_owner.push(owner);
            call.ack_resource.push(resource);
            call.ack_seq.push(*seq);
            call.ack_at.push(*now_micros);
            let mark = delivered.entry(owner).or_default();
            *mark = (*mark).max(*seq);
        }
        (call.delivered_names, call.delivered_seqs) = delivered.into_iter().unzip();
        call
    }

    fn query(&self) -> sqlx::query::Query<'_, Postgres, <Postgres as sqlx::Database>::Arguments> {
        sqlx::query(APPEND)
            .bind(&self.lock)
            .bind(&self.names)
            .bind(&self.counts)
            .bind(&self.owner)
            .bind(&self.n)
            .bind(&self.stanza_id)
            .bind(&self.sender)
            .bind(&self.kind)
            .bind(&self.xml)
            .bind(&self.at_micros)
            .bind(&self.peer)
            .bind(&self.direction)
            .bind(&self.body)
            .bind(&self.origin)
            .bind(&self.ack_owner)
            .bind(&self.ack_resource)
            .bind(&self.ack_seq)
            .bind(&self.ack_at)
            .bind(&self.delivered_names)
            .bind(&self.delivered_seqs)
    }
}
