//! The archive (XEP-0313 Message Archive Management) as a view of the inbox log
//! (DESIGN.md, "the inbox log"): queries over one owner's log entries with
//! filters, result-set paging (XEP-0059) and full-text search (XEP-0431), plus
//! the owner's archiving preferences (XEP-0441).
//!
//! An entry's archive id is its `stanza_id` (the XEP-0359 id the server stamped
//! for the owner); entries without one are not part of the archive. Results are
//! always in log order (`seq` ascending), whichever way the caller pages.
//!
//! Full-text search uses each engine's own index (see migration 3): SQLite FTS5
//! and PostgreSQL `tsvector` with the `simple` configuration (no stemming, no stop
//! words, so every language is treated alike). User input never reaches either
//! query language as syntax: it is split on whitespace, words without a letter or
//! digit are dropped, and each remaining word becomes a phrase — a quoted FTS5
//! string, or PostgreSQL's `phraseto_tsquery`, which has no operators. A body
//! matches when it holds every phrase (a word such as `o'clock` is the phrase
//! "o clock"); case is ignored, accents are not.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, Row};

use crate::types::{decode_groups, encode_groups};
use crate::{Backend, InboxEntry, Result, Store, StoreError};

/// What to look for in an owner's archive. `Default` is "everything, first
/// page" with `max` 0, which only counts; set `max` to get items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Only entries with this party: a bare JID matches the entry's `peer`; a
    /// JID with a resource (containing `/`) matches the entry's `sender` exactly.
    pub with: Option<String>,
    /// Only entries at or after this time (unix microseconds).
    pub start_micros: Option<i64>,
    /// Only entries at or before this time (unix microseconds).
    pub end_micros: Option<i64>,
    /// Only entries after the one with this archive id (MAM `after-id`): a
    /// filter, not a page position.
    pub after_id: Option<String>,
    /// Only entries before the one with this archive id (MAM `before-id`).
    pub before_id: Option<String>,
    /// Only entries with one of these archive ids (MAM `ids`); empty = no filter.
    pub ids: Vec<String>,
    /// Only entries whose body holds every word of this text. Text without any
    /// searchable word matches nothing.
    pub fulltext: Option<String>,
    /// Which page of the matching entries (RSM `<after/>` / `<before/>`).
    pub paging: Paging,
    /// Page size: at most this many items (`0` only counts; negative counts as 0).
    pub max: i64,
}

/// A page position in the result set (XEP-0059 §2.2–2.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Paging {
    /// Forwards: the first page (`None`) or the page right after the entry with
    /// this archive id.
    After(Option<String>),
    /// Backwards: the last page (`None`, an empty RSM `<before/>`) or the page
    /// right before the entry with this archive id. Items still come oldest first.
    Before(Option<String>),
}

impl Default for Paging {
    fn default() -> Self {
        Paging::After(None)
    }
}

/// One page of archive results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePage {
    /// The entries, oldest first.
    pub items: Vec<InboxEntry>,
    /// Whether this is the last page in the paging direction: no further
    /// matching entries after it (forwards) or before it (backwards).
    pub complete: bool,
    /// Archive id of the first item.
    pub first: Option<String>,
    /// Archive id of the last item.
    pub last: Option<String>,
    /// How many entries match the filters in all (ignoring the page position).
    pub count: Option<i64>,
}

/// The oldest and newest entry of an archive (XEP-0313 §5 metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveBounds {
    /// The oldest entry.
    pub first: ArchiveMark,
    /// The newest entry.
    pub last: ArchiveMark,
}

/// An archive entry's id and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveMark {
    /// The archive id (`stanza_id`).
    pub id: String,
    /// When it was archived, unix microseconds.
    pub at_micros: i64,
}

/// Why an archive query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// An id named in the query (paging position, `after-id`, `before-id` or
    /// `ids`) is not in the owner's archive (XEP-0313: `item-not-found`).
    #[error("no archived entry with id {0:?}")]
    UnknownId(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ArchiveError {
    fn from(error: sqlx::Error) -> Self {
        ArchiveError::Store(StoreError::Database(error))
    }
}

/// The default archiving behaviour of XEP-0441 §2.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchiveDefault {
    /// Archive everything not listed under "never".
    Always,
    /// Archive nothing not listed under "always".
    Never,
    /// Archive messages with contacts in the owner's roster.
    Roster,
}

impl ArchiveDefault {
    /// The protocol spelling: `"always"`, `"never"` or `"roster"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveDefault::Always => "always",
            ArchiveDefault::Never => "never",
            ArchiveDefault::Roster => "roster",
        }
    }

    /// Parses the protocol spelling; `None` for anything else.
    pub fn parse(text: &str) -> Option<ArchiveDefault> {
        match text {
            "always" => Some(ArchiveDefault::Always),
            "never" => Some(ArchiveDefault::Never),
            "roster" => Some(ArchiveDefault::Roster),
            _ => None,
        }
    }
}

/// A user's archiving preferences (XEP-0441 §2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MamPrefs {
    /// What happens with JIDs on neither list.
    pub default: ArchiveDefault,
    /// JIDs (bare or full) whose messages are always archived, in the order given.
    pub always: Vec<String>,
    /// JIDs (bare or full) whose messages are never archived, in the order given.
    pub never: Vec<String>,
}

/// How many base-62 digits of its entry's time begin an archive id.
const ID_TIME_DIGITS: usize = 9;
/// How many random characters end an archive id ([`archive_id`]).
pub const ARCHIVE_ID_RANDOM: usize = 12;
/// An archive id's length in characters. An id of any other length is of an
/// earlier form (20 random or time-prefixed characters): only those are in
/// the `(owner, stanza_id)` index (migration 49), which spells this number.
const ARCHIVE_ID_LEN: usize = ID_TIME_DIGITS + ARCHIVE_ID_RANDOM;
/// The base-62 digits, in byte order (so ids sort by time byte for byte).
const ID_DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The archive id (XEP-0359 stanza-id) of an entry made at `at_micros` (the
/// entry's own `at_micros`, exactly): the time as [`ID_TIME_DIGITS`] base-62
/// digits, fixed width, then `random` — [`ARCHIVE_ID_RANDOM`] random
/// alphanumerics, so that ids stay unguessable and unique. The store finds an
/// entry by such an id through its time (`inbox_owner_time`), so archived
/// entries need no index by id: one b-tree insert fewer per archived entry.
/// Ids sort by time byte for byte.
pub fn archive_id(at_micros: i64, random: &str) -> String {
    debug_assert!(
        (0..62i64.pow(ID_TIME_DIGITS as u32)).contains(&at_micros),
        "a time an id can name"
    );
    let mut time = u64::try_from(at_micros).unwrap_or(0);
    let mut prefix = [b'0'; ID_TIME_DIGITS];
    for digit in prefix.iter_mut().rev() {
        *digit = ID_DIGITS[(time % 62) as usize];
        time /= 62;
    }
    let mut id = String::with_capacity(ID_TIME_DIGITS + random.len());
    id.extend(prefix.iter().map(|&b| char::from(b)));
    id.push_str(random);
    id
}

/// The time an archive id of [`archive_id`]'s form names; `None` for an id
/// of any other form (found through the `(owner, stanza_id)` index).
fn archive_id_time(id: &str) -> Option<i64> {
    if id.chars().count() != ARCHIVE_ID_LEN {
        return None;
    }
    id.bytes().take(ID_TIME_DIGITS).try_fold(0i64, |time, b| {
        let digit = ID_DIGITS.iter().position(|&d| d == b)?;
        Some(time * 62 + digit as i64)
    })
}

/// The owner's entries with an id of today's form ($3), through its time
/// ($2): `inbox_owner_time`, whose `stanza_id <> ''` the query repeats.
pub(crate) const SEQS_BY_ID_AND_TIME: &str = "SELECT seq FROM inbox
    WHERE owner = $1 AND at_micros = $2 AND stanza_id = $3 AND stanza_id <> ''";
/// The owner's entries with an id of an earlier form ($2): the index by id,
/// whose two terms the query repeats word for word (migration 49; the length
/// is [`ARCHIVE_ID_LEN`], checked by a test).
pub(crate) const SEQS_BY_EARLIER_ID: &str = "SELECT seq FROM inbox
    WHERE owner = $1 AND stanza_id = $2 AND stanza_id <> '' AND length(stanza_id) <> 21";

/// The columns of an [`InboxEntry`], for `SELECT`s over `inbox i` (qualified: the
/// full-text tables joined in have columns of the same names).
pub(crate) const ENTRY_COLUMNS: &str =
    "i.seq, i.stanza_id, i.sender, i.kind, i.xml, i.at_micros, i.peer, i.direction, i.body";

/// An entry's bucket in the conversation index `(owner, bucket, peer, seq)`
/// (migration 48), for `inbox i`: its number in the owner's log, in runs of
/// 4,096, spelled exactly as the index spells it (or no engine uses it).
/// New entries land in the newest bucket only, so the pages they dirty stay
/// few however long the history; a query by conversation asks each bucket
/// in turn ([`buckets`], [`bucket_of`]).
pub(crate) const BUCKET: &str = "(i.seq >> 12)";
/// The shift in [`BUCKET`].
const BUCKET_BITS: u32 = 12;
/// Buckets a page by conversation asks one by one before it takes the rest
/// in one statement ([`walk_buckets`]).
const ONE_BY_ONE: i64 = 4;

/// The bucket of entry number `seq` ([`BUCKET`]).
pub(crate) fn bucket_of(seq: i64) -> i64 {
    seq >> BUCKET_BITS
}

/// The buckets the owner's log spans, first and last ([`BUCKET`]); `None`
/// for an empty log. Two look-ups in the `(owner, seq)` key.
pub(crate) async fn buckets(
    conn: &mut sqlx::AnyConnection,
    owner: &str,
) -> Result<Option<(i64, i64)>> {
    let row = sqlx::query(
        "SELECT (SELECT MIN(seq) FROM inbox WHERE owner = $1) AS lo,
                (SELECT MAX(seq) FROM inbox WHERE owner = $1) AS hi",
    )
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    let lo: Option<i64> = row.try_get("lo")?;
    let hi: Option<i64> = row.try_get("hi")?;
    Ok(lo.zip(hi).map(|(lo, hi)| (bucket_of(lo), bucket_of(hi))))
}

/// Up to `wanted` entries matching `filter` (over `inbox i`, a query by
/// conversation), from buckets `lo..=hi` in the paging direction (newest
/// first when `backwards`), stopping once `wanted` are found: a look-up each
/// in the conversation index. The first [`ONE_BY_ONE`] buckets (where an
/// active conversation's page lies) are a statement each, all the rest one
/// statement ([`conversation_page`]): a rare conversation of a long log spans
/// hundreds of buckets, and each statement is a round trip through sqlx (on
/// SQLite, the last page of one with 10 entries over 245 buckets: 7.4 ms
/// bucket by bucket, 0.58 ms so; an active conversation's 0.55 ms either way:
/// `cargo bench -p kith-store --bench archive_page`). That one statement
/// lists every bucket left, hence the few asked one by one first.
async fn walk_buckets(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    filter: &Sql,
    (lo, hi): (i64, i64),
    backwards: bool,
    wanted: i64,
) -> Result<Vec<sqlx::any::AnyRow>> {
    let order = if backwards { "DESC" } else { "ASC" };
    let step = if backwards { -1 } else { 1 };
    let first = if backwards { hi } else { lo };
    let mut rows = Vec::new();
    let mut next = first;
    while (lo..=hi).contains(&next) && (rows.len() as i64) < wanted {
        let mut one = filter.clone();
        let limit = one.int(wanted - rows.len() as i64);
        let sql = if (next - first).abs() < ONE_BY_ONE {
            let b = one.int(next);
            next += step;
            format!(
                "SELECT {ENTRY_COLUMNS} FROM inbox i WHERE {} AND {BUCKET} = {b}
                 ORDER BY i.seq {order} LIMIT {limit}",
                one.sql
            )
        } else {
            // Every bucket left, in one statement.
            let (from, to) = if backwards { (lo, next) } else { (next, hi) };
            let (from, to) = (one.int(from), one.int(to));
            next = if backwards { lo - 1 } else { hi + 1 };
            conversation_page(backend, &one.sql, (&from, &to), backwards, &limit)
        };
        rows.extend(one.bind(&sql).fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// A page of a conversation over buckets `from..=to` (placeholders) in one
/// statement, a look-up each in the conversation index in the paging
/// direction, stopping once `limit` rows are found. SQLite: the buckets are
/// an `IN` list, which it walks in the `ORDER BY`'s direction with no sort
/// (the index's order is the page's, since an entry's bucket grows with its
/// number). PostgreSQL (before 17, an `= ANY` list would read every match and
/// sort them): a `LATERAL` look-up of at most `limit` per bucket, then a sort
/// of those few.
pub(crate) fn conversation_page(
    backend: Backend,
    filter: &str,
    (from, to): (&str, &str),
    backwards: bool,
    limit: &str,
) -> String {
    let order = if backwards { "DESC" } else { "ASC" };
    match backend {
        Backend::Sqlite => format!(
            "WITH RECURSIVE b (v) AS (SELECT {from} UNION ALL SELECT v + 1 FROM b WHERE v < {to})
             SELECT {ENTRY_COLUMNS} FROM inbox i WHERE {filter} AND {BUCKET} IN (SELECT v FROM b)
             ORDER BY {BUCKET} {order}, i.seq {order} LIMIT {limit}"
        ),
        Backend::Postgres => {
            let (start, end, step) = if backwards {
                (to, from, -1)
            } else {
                (from, to, 1)
            };
            format!(
                "SELECT x.* FROM generate_series(CAST({start} AS BIGINT), CAST({end} AS BIGINT),
                    CAST({step} AS BIGINT)) AS b (v)
                 CROSS JOIN LATERAL (SELECT {ENTRY_COLUMNS} FROM inbox i
                    WHERE {filter} AND {BUCKET} = b.v ORDER BY i.seq {order} LIMIT {limit}) AS x
                 ORDER BY b.v {order}, x.seq {order} LIMIT {limit}"
            )
        }
    }
}

/// The owner's newest `limit` archived entries exchanged with `peer` in
/// `direction`, newest first (`Store::inbox_recent_with`).
pub(crate) async fn newest_in_conversation(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    owner: &str,
    peer: &str,
    direction: &str,
    limit: i64,
) -> Result<Vec<InboxEntry>> {
    let Some(range) = buckets(conn, owner).await? else {
        return Ok(Vec::new());
    };
    let mut filter = Sql::new(owner);
    let (peer, direction) = (filter.text(peer), filter.text(direction));
    filter.push(&format!(
        "i.owner = $1 AND i.stanza_id <> '' AND i.peer = {peer} AND i.direction = {direction}"
    ));
    let rows = walk_buckets(conn, backend, &filter, range, true, limit).await?;
    rows.iter().map(|row| crate::entry_from_row(row)).collect()
}

impl Store {
    /// Runs an archive query over the owner's log. An unknown owner has an
    /// empty archive, so every id named in the query is unknown to it.
    pub async fn archive_query(
        &self,
        owner: &str,
        query: &ArchiveQuery,
    ) -> std::result::Result<ArchivePage, ArchiveError> {
        self.writer.settle(owner).await?;
        if query.fulltext.is_some() {
            // The SQLite writer indexes off the commit path: catch up first so
            // the search sees everything committed before it.
            self.writer.index_now().await?;
        }
        // One snapshot for id look-ups, count and page, so they agree
        // (PostgreSQL's default READ COMMITTED is per statement).
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        };

        let mut filter = Sql::new(owner);
        filter.push("i.owner = $1 AND i.stanza_id <> ''");
        if let Some(with) = &query.with {
            let column = if with.contains('/') {
                "i.sender"
            } else {
                "i.peer"
            };
            let p = filter.text(with);
            filter.push(&format!(" AND {column} = {p}"));
        }
        if let Some(start) = query.start_micros {
            let p = filter.int(start);
            filter.push(&format!(" AND i.at_micros >= {p}"));
        }
        if let Some(end) = query.end_micros {
            let p = filter.int(end);
            filter.push(&format!(" AND i.at_micros <= {p}"));
        }
        // The entries' numbers lie strictly between these.
        let (mut above, mut below) = (i64::MIN, i64::MAX);
        if let Some(id) = &query.after_id {
            let seq = seq_of(&mut tx, owner, id).await?;
            let p = filter.int(seq);
            filter.push(&format!(" AND i.seq > {p}"));
            above = above.max(seq);
        }
        if let Some(id) = &query.before_id {
            let seq = seq_of(&mut tx, owner, id).await?;
            let p = filter.int(seq);
            filter.push(&format!(" AND i.seq < {p}"));
            below = below.min(seq);
        }
        if !query.ids.is_empty() {
            let wanted: Vec<&str> = {
                let mut seen = HashSet::new();
                query
                    .ids
                    .iter()
                    .map(String::as_str)
                    .filter(|id| seen.insert(*id))
                    .collect()
            };
            let seqs = seqs_of_all(&mut tx, owner, &wanted).await?;
            let list = seqs
                .iter()
                .map(|&seq| filter.int(seq))
                .collect::<Vec<_>>()
                .join(", ");
            filter.push(&format!(" AND i.seq IN ({list})"));
        }
        if let Some(text) = &query.fulltext {
            let terms = search_terms(text);
            if terms.is_empty() {
                filter.push(" AND 1 = 0");
            } else {
                match self.backend {
                    Backend::Sqlite => {
                        let p = filter.text(&fts5_query(&terms));
                        filter.push(&format!(
                            " AND i.id IN (SELECT rowid FROM inbox_fts WHERE inbox_fts MATCH {p})"
                        ));
                    }
                    Backend::Postgres => {
                        let phrases = terms
                            .iter()
                            .map(|term| {
                                format!("phraseto_tsquery('simple', {})", filter.text(term))
                            })
                            .collect::<Vec<_>>()
                            .join(" && ");
                        filter.push(&format!(
                            " AND i.body IS NOT NULL
                              AND to_tsvector('simple', coalesce(i.body, '')) @@ ({phrases})"
                        ));
                    }
                }
            }
        }

        // With a conversation (a bare JID), the count and the page go
        // through the conversation index bucket by bucket ([`BUCKET`]): the
        // buckets of the owner's log between the bounds, or none at all.
        // Not with words to find or ids to take: those narrow the query
        // further on their own, and each bucket's statement would look them
        // up again.
        let conversation = match &query.with {
            Some(with)
                if !with.contains('/') && query.fulltext.is_none() && query.ids.is_empty() =>
            {
                Some(
                    buckets(&mut tx, owner)
                        .await?
                        .map(|(lo, hi)| (lo.max(bucket_of(above)), hi.min(bucket_of(below))))
                        .filter(|(lo, hi)| lo <= hi),
                )
            }
            _ => None,
        };

        let count = match conversation {
            None => {
                let sql = format!("SELECT COUNT(*) AS n FROM inbox i WHERE {}", filter.sql);
                let row = filter.bind(&sql).fetch_one(&mut *tx).await?;
                row.try_get::<i64, _>("n")?
            }
            Some(None) => 0,
            Some(Some((lo, hi))) => {
                // One statement: a look-up per bucket.
                let mut count = filter.clone();
                let (lo, hi) = (count.int(lo), count.int(hi));
                let sql = format!(
                    "WITH RECURSIVE b (v) AS (SELECT {lo} UNION ALL SELECT v + 1 FROM b WHERE v < {hi})
                     SELECT CAST(COALESCE(SUM((SELECT COUNT(*) FROM inbox i
                        WHERE {} AND {BUCKET} = b.v)), 0) AS BIGINT) AS n FROM b",
                    count.sql
                );
                let row = count.bind(&sql).fetch_one(&mut *tx).await?;
                row.try_get::<i64, _>("n")?
            }
        };

        let max = query.max.max(0);
        let mut page = filter.clone();
        let (cursor, backwards) = match &query.paging {
            Paging::After(cursor) => (cursor, false),
            Paging::Before(cursor) => (cursor, true),
        };
        if let Some(id) = cursor {
            let seq = seq_of(&mut tx, owner, id).await?;
            let p = page.int(seq);
            let op = if backwards { "<" } else { ">" };
            page.push(&format!(" AND i.seq {op} {p}"));
            if backwards {
                below = below.min(seq);
            } else {
                above = above.max(seq);
            }
        }
        // One extra row tells whether more entries lie beyond the page.
        let wanted = max.saturating_add(1);
        let rows = match conversation {
            None => {
                let order = if backwards { "DESC" } else { "ASC" };
                let limit = page.int(wanted);
                let sql = format!(
                    "SELECT {ENTRY_COLUMNS} FROM inbox i WHERE {} ORDER BY i.seq {order} LIMIT {limit}",
                    page.sql
                );
                page.bind(&sql).fetch_all(&mut *tx).await?
            }
            Some(None) => Vec::new(),
            Some(Some((lo, hi))) => {
                let range = (lo.max(bucket_of(above)), hi.min(bucket_of(below)));
                walk_buckets(&mut tx, self.backend, &page, range, backwards, wanted).await?
            }
        };
        tx.commit().await?;

        let complete = usize::try_from(max).is_ok_and(|max| rows.len() <= max);
        let mut items = rows
            .iter()
            .take(usize::try_from(max).unwrap_or(usize::MAX))
            .map(|row| crate::entry_from_row(row))
            .collect::<Result<Vec<_>>>()?;
        if backwards {
            items.reverse();
        }
        Ok(ArchivePage {
            first: items.first().map(|e| e.stanza_id.clone()),
            last: items.last().map(|e| e.stanza_id.clone()),
            items,
            complete,
            count: Some(count),
        })
    }

    /// The oldest and newest entry of the owner's archive; `None` when empty.
    pub async fn archive_bounds(&self, owner: &str) -> Result<Option<ArchiveBounds>> {
        self.writer.settle(owner).await?;
        let mut marks = Vec::with_capacity(2);
        for sql in [
            "SELECT stanza_id, at_micros FROM inbox
             WHERE owner = $1 AND stanza_id <> '' ORDER BY seq ASC LIMIT 1",
            "SELECT stanza_id, at_micros FROM inbox
             WHERE owner = $1 AND stanza_id <> '' ORDER BY seq DESC LIMIT 1",
        ] {
            let row = sqlx::query(sql)
                .bind(owner)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else { return Ok(None) };
            marks.push(ArchiveMark {
                id: row.try_get("stanza_id")?,
                at_micros: row.try_get("at_micros")?,
            });
        }
        let mut marks = marks.into_iter();
        match (marks.next(), marks.next()) {
            (Some(first), Some(last)) => Ok(Some(ArchiveBounds { first, last })),
            _ => Ok(None),
        }
    }

    /// The owner's archiving preferences; `None` if never set (or no such user).
    pub async fn mam_prefs(&self, owner: &str) -> Result<Option<MamPrefs>> {
        let row = sqlx::query(
            "SELECT default_mode, always_jids, never_jids FROM mam_prefs WHERE owner = $1",
        )
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mode: String = row.try_get("default_mode")?;
        let default = ArchiveDefault::parse(&mode)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown archive default {mode:?}")))?;
        let always: String = row.try_get("always_jids")?;
        let never: String = row.try_get("never_jids")?;
        Ok(Some(MamPrefs {
            default,
            always: decode_groups(&always)?,
            never: decode_groups(&never)?,
        }))
    }

    /// Stores (replaces) the owner's archiving preferences.
    /// [`StoreError::NoSuchUser`] if the owner has no account.
    pub async fn set_mam_prefs(&self, owner: &str, prefs: &MamPrefs) -> Result<()> {
        sqlx::query(
            "INSERT INTO mam_prefs (owner, default_mode, always_jids, never_jids)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner) DO UPDATE SET
                default_mode = excluded.default_mode,
                always_jids = excluded.always_jids,
                never_jids = excluded.never_jids",
        )
        .bind(owner)
        .bind(prefs.default.as_str())
        .bind(encode_groups(&prefs.always))
        .bind(encode_groups(&prefs.never))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::owner_fk(e, owner))?;
        Ok(())
    }
}

/// The sequence numbers of the owner's entries with this archive id (one in
/// practice; ids are unique).
async fn seqs_of(
    conn: &mut sqlx::AnyConnection,
    owner: &str,
    id: &str,
) -> std::result::Result<Vec<i64>, ArchiveError> {
    // An id of today's form is looked up by its time (`inbox_owner_time`),
    // one of an earlier form in the index that holds only those; each
    // statement says what its partial index covers, or SQLite scans.
    let rows = match archive_id_time(id) {
        Some(at_micros) => {
            sqlx::query(SEQS_BY_ID_AND_TIME)
                .bind(owner)
                .bind(at_micros)
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        }
        None => {
            sqlx::query(SEQS_BY_EARLIER_ID)
                .bind(owner)
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        }
    };
    rows.iter()
        .map(|row| row.try_get::<i64, _>("seq"))
        .collect::<std::result::Result<_, _>>()
        .map_err(ArchiveError::from)
}

/// The sequence number of the owner's entry with this archive id (the lowest,
/// were two to share it). Not `ORDER BY seq LIMIT 1`: SQLite would then walk
/// the owner's log in `seq` order instead of looking the id up.
async fn seq_of(
    conn: &mut sqlx::AnyConnection,
    owner: &str,
    id: &str,
) -> std::result::Result<i64, ArchiveError> {
    let seqs = seqs_of(conn, owner, id).await?;
    seqs.into_iter()
        .min()
        .ok_or_else(|| ArchiveError::UnknownId(id.to_owned()))
}

/// The sequence numbers of the owner's entries with these archive ids;
/// fails with the first id (of `ids`, distinct) not in the owner's archive.
async fn seqs_of_all(
    conn: &mut sqlx::AnyConnection,
    owner: &str,
    ids: &[&str],
) -> std::result::Result<Vec<i64>, ArchiveError> {
    let mut all = Vec::with_capacity(ids.len());
    for id in ids {
        let seqs = seqs_of(conn, owner, id).await?;
        if seqs.is_empty() {
            return Err(ArchiveError::UnknownId((*id).to_owned()));
        }
        all.extend(seqs);
    }
    Ok(all)
}

/// The searchable words of user text: whitespace-separated, each holding at
/// least one letter or digit (a word of punctuation alone would be an empty
/// FTS5 phrase, which matches nothing).
fn search_terms(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .filter(|word| word.chars().any(char::is_alphanumeric))
        .collect()
}

/// An FTS5 query requiring every term as a phrase: each is a string literal
/// (inside double quotes nothing is syntax; a quote is written twice), joined
/// with `AND`.
fn fts5_query(terms: &[&str]) -> String {
    terms
        .iter()
        .map(|term| format!("\"{}\"", term.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A query under construction: SQL text made only of this module's fixed
/// fragments and `$N` placeholders, and the values bound to them. Values never
/// enter the text, which is what makes the `AssertSqlSafe` in [`Sql::bind`] true.
#[derive(Clone)]
struct Sql {
    sql: String,
    args: Vec<Arg>,
}

#[derive(Clone)]
enum Arg {
    Text(String),
    Int(i64),
}

impl Sql {
    /// Starts with the owner bound as `$1`.
    fn new(owner: &str) -> Sql {
        Sql {
            sql: String::new(),
            args: vec![Arg::Text(owner.to_owned())],
        }
    }

    fn push(&mut self, fragment: &str) {
        self.sql.push_str(fragment);
    }

    /// Adds a text value; returns its placeholder.
    fn text(&mut self, value: &str) -> String {
        self.args.push(Arg::Text(value.to_owned()));
        format!("${}", self.args.len())
    }

    /// Adds an integer value; returns its placeholder.
    fn int(&mut self, value: i64) -> String {
        self.args.push(Arg::Int(value));
        format!("${}", self.args.len())
    }

    /// `sql` (built from this query's text) with every value bound.
    fn bind(&self, sql: &str) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let mut query = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for arg in &self.args {
            query = match arg {
                Arg::Text(text) => query.bind(text.clone()),
                Arg::Int(int) => query.bind(*int),
            };
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_id_names_its_time() {
        for at in [0, 1, 61, 62, 1_796_000_000_123_456, 62i64.pow(9) - 1] {
            let id = archive_id(at, "abcdefghijkl");
            assert_eq!(id.len(), ARCHIVE_ID_LEN);
            assert_eq!(archive_id_time(&id), Some(at), "{id}");
        }
        let (early, late) = (
            archive_id(1_796_000_000_000_000, "zzzzzzzzzzzz"),
            archive_id(1_796_000_000_000_001, "000000000000"),
        );
        assert!(early < late, "ids sort by time");
        // Earlier forms and what no server made: found through the index by id.
        for other in [
            "0A1b2C3d4e5F6g7H8i9J",
            "short",
            "",
            "0A1b2C3-45F6g7H8i9Jkl",
            "é0A1b2C3d4e5F6g7H8i9J",
        ] {
            assert_eq!(archive_id_time(other), None, "{other}");
        }
    }

    #[test]
    fn the_index_by_id_holds_the_ids_of_earlier_forms_only() {
        let legacy = format!("length(stanza_id) <> {ARCHIVE_ID_LEN}");
        assert!(SEQS_BY_EARLIER_ID.contains(&legacy), "{SEQS_BY_EARLIER_ID}");
        let index = crate::migrate::MIGRATIONS
            .iter()
            .rev()
            .flat_map(|m| m.sqlite.iter().chain(m.postgres.iter()))
            .filter(|sql| sql.contains("INDEX inbox_owner_stanza_id ON"))
            .take(2)
            .collect::<Vec<_>>();
        assert_eq!(index.len(), 2);
        for sql in index {
            assert!(sql.contains(&legacy), "{sql}");
        }
    }

    #[test]
    fn terms_drop_words_without_letters_or_digits() {
        assert_eq!(
            search_terms("  hello\t\"*\" NEAR ' wörld 日本 -- x "),
            vec!["hello", "NEAR", "wörld", "日本", "x"]
        );
        assert!(search_terms("\" * ' ( ) ^").is_empty());
    }

    #[test]
    fn fts5_terms_are_quoted_strings() {
        assert_eq!(fts5_query(&["hello"]), "\"hello\"");
        assert_eq!(
            fts5_query(&["a\"b", "NEAR(x", "col:y*"]),
            "\"a\"\"b\" AND \"NEAR(x\" AND \"col:y*\""
        );
    }

    #[test]
    fn buckets_in_rust_and_sql_agree() {
        assert_eq!(BUCKET, format!("(i.seq >> {BUCKET_BITS})"));
        assert_eq!((bucket_of(4095), bucket_of(4096)), (0, 1));
    }

    #[test]
    fn archive_default_strings() {
        for mode in [
            ArchiveDefault::Always,
            ArchiveDefault::Never,
            ArchiveDefault::Roster,
        ] {
            assert_eq!(ArchiveDefault::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(ArchiveDefault::parse("Always"), None);
    }
}
