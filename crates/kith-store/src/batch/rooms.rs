//! Group messages without a copy per member (the room cursor).
//!
//! A group message is appended once, to the room's log. A member with a session
//! (asked by the writer as it plans the batch, so in queue order with everything
//! else) gets a copy in its own log in the same transaction (on SQLite,
//! appended to the log's tail, `batch::tail`, like a 1:1 entry; a transaction
//! over the tail's file and the main one commits file by file, so a commit
//! that fails between them — a full disk — leaves the room's entry and the
//! members' fill rows committed without the copies: the writer then finds the
//! room's entry committed and writes the copies into `inbox` instead,
//! `SqliteWriter::repair_partial`); the others are *owed* it. `room_fill (room, owner, seq)` says how far each
//! member's log holds copies of the room's log; what lies between that and the
//! room's head is owed, and copied in one piece (one owner's log: a few B-tree
//! pages, not one page per member) when the member next reads its log
//! ([`RoomOp::CatchUp`], queued by a session before its first read, after it is
//! in the router) or stops being a member ([`RoomOp::Leave`]). So a 1,024-member
//! group that mostly lives offline costs one row per message, not 1,024.
//!
//! Why no copy is ever lost or made twice: a member's copies are always those
//! of one unbroken run of the room's log, `(joined, filled]`. Every copy is made
//! by [`Planner::fill_through`], which copies what is owed up to a point in
//! order and moves `filled` there; a live member owed older entries (it has
//! just connected, and its catch-up is still queued) gets them before the new
//! one. Liveness is asked once per member per batch, so within a batch a member
//! either gets every message of the batch or is owed every one.

use std::sync::Arc;

use super::{HashMap, HashSet, Job, OwnedEntry};
use crate::{NewInboxEntry, Result};

/// Whether a user (bare JID) has a session on this server now.
pub type Live = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A local member of a room: its log's owner and its bare JID (for [`Live`]).
#[derive(Clone, Debug)]
pub struct RoomMember {
    /// The member's username: its log's owner.
    pub owner: String,
    /// Its bare JID, as [`Live`] is asked.
    pub bare: String,
}

/// A change to what a member's log holds of a room's.
#[derive(Clone, Debug)]
pub enum RoomOp {
    /// `owners` are members of `room`: owed what the room says from now on
    /// (no change for those that already are).
    Join { room: String, owners: Vec<String> },
    /// `owners` are no longer members: copy what they are owed, then forget them.
    Leave { room: String, owners: Vec<String> },
    /// `owner`'s device is about to read its log: copy what it is owed by every room.
    CatchUp { owner: String },
}

/// Where one member's log stands against a room's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fill {
    /// Copies through this room entry.
    Through(i64),
    /// Copies through the room's mark (`room_fill.seq` NULL): the member has
    /// had every message since it was last written, and costs no write per
    /// batch while that stays so.
    AtMark,
}

/// A room's `room_fill` rows and mark, as committed (the SQLite writer keeps
/// them between batches: it is their only writer).
#[derive(Clone, Debug, Default)]
pub(super) struct RoomRows {
    /// `room_marks.seq`: through which entry the [`Fill::AtMark`] members have
    /// copies (any value when none has).
    pub mark: i64,
    pub members: HashMap<String, Fill>,
}

/// What the engine reads before a batch with group messages or room changes is
/// planned (see [`needs`]).
#[derive(Default)]
pub(super) struct RoomState {
    /// Each room's head before the batch (rooms that exist).
    pub heads: HashMap<String, i64>,
    /// Each room's rows.
    pub rows: HashMap<String, Arc<RoomRows>>,
    /// owner → its rooms, for the owners catching up.
    pub rooms_of: HashMap<String, Vec<String>>,
    /// Per room, its entries from before the batch that somebody here is owed,
    /// ascending, already in the form of a member's copy.
    pub owed: HashMap<String, Vec<(i64, OwnedEntry)>>,
}

impl RoomState {
    /// Through which entry of `room` `owner`'s log holds copies (`None`: no row).
    pub fn filled(&self, room: &str, owner: &str) -> Option<i64> {
        let rows = self.rows.get(room)?;
        Some(match rows.members.get(owner)? {
            Fill::Through(seq) => *seq,
            Fill::AtMark => rows.mark,
        })
    }
}

/// What a batch needs read: members with a session now, owners catching up,
/// the `(room, owner)` pairs that may be copied to (owed entries are read for
/// them), and the rooms whose rows and head are needed.
pub(super) struct Needs<'a> {
    pub live: HashSet<&'a str>,
    pub owners: Vec<&'a str>,
    pub pairs: HashSet<(&'a str, &'a str)>,
    pub rooms: HashSet<&'a str>,
}

/// Asks [`Live`] once per member of every group message in the batch and
/// collects what must be read. `None`: the batch has no room work.
pub(super) fn needs(batch: &[Job]) -> Option<Needs<'_>> {
    let mut needs = Needs {
        live: HashSet::default(),
        owners: Vec::new(),
        pairs: HashSet::default(),
        rooms: HashSet::default(),
    };
    let mut asked: HashSet<&str> = HashSet::default();
    let mut any = false;
    for job in batch {
        match job {
            Job::Fan { fan, .. } => {
                let super::Fan {
                    room,
                    members,
                    live,
                    ..
                } = &**fan;
                any = true;
                needs.rooms.insert(room);
                for member in members {
                    if asked.insert(&member.owner) && live(&member.bare) {
                        needs.live.insert(&member.owner);
                    }
                    if needs.live.contains(member.owner.as_str()) {
                        needs.pairs.insert((room, &member.owner));
                    }
                }
            }
            Job::Rooms { op, .. } => {
                any = true;
                match op {
                    // A join copies nothing (the room's rows are read whole):
                    // its members are no reason to read owed entries.
                    RoomOp::Join { room, .. } => {
                        needs.rooms.insert(room);
                    }
                    RoomOp::Leave { room, owners } => {
                        needs.rooms.insert(room);
                        needs
                            .pairs
                            .extend(owners.iter().map(|owner| (room.as_str(), owner.as_str())));
                    }
                    RoomOp::CatchUp { owner } => needs.owners.push(owner),
                }
            }
            _ => {}
        }
    }
    any.then_some(needs)
}

/// The reads an engine provides (SQLite: on its writer's connection, never
/// pending; PostgreSQL: in the batch's transaction).
pub(super) trait RoomReads {
    /// The rooms `owner` has a fill row in.
    async fn rooms_of(&mut self, owner: &str) -> Result<Vec<String>>;
    /// The room log's head (`None`: no such room), which stays put until the
    /// batch commits (the engine makes sure).
    async fn head(&mut self, room: &str) -> Result<Option<i64>>;
    /// The room's fill rows and mark.
    async fn rows(&mut self, room: &str) -> Result<Arc<RoomRows>>;
    /// The room's entries with `after < seq <= through`, ascending, as members'
    /// copies.
    async fn entries(
        &mut self,
        room: &str,
        after: i64,
        through: i64,
    ) -> Result<Vec<(i64, OwnedEntry)>>;
}

/// The statements both engines run (`$n` placeholders: SQLite numbers them in
/// order of first appearance, as `?n`).
pub(super) mod sql {
    /// The rooms an owner has a fill row in.
    pub const ROOMS_OF: &str = "SELECT room FROM room_fill WHERE owner = $1";
    /// A room's mark.
    pub const MARK: &str = "SELECT seq FROM room_marks WHERE room = $1";
    /// A room's fill rows.
    pub const MEMBERS: &str = "SELECT owner, seq FROM room_fill WHERE room = $1";
    /// A room's entries in a range, as [`super::owed_copy`] takes them.
    pub const ENTRIES: &str = "SELECT seq, sender, kind, xml, at_micros FROM inbox
         WHERE owner = $1 AND seq > $2 AND seq <= $3 ORDER BY seq";
    /// Sets a member's row (not for an account that is gone: no `users` row).
    pub const SET_FILL: &str = "INSERT INTO room_fill (room, owner, seq)
         SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE username = $2)
         ON CONFLICT (room, owner) DO UPDATE SET seq = excluded.seq";
    /// Deletes a member's row.
    pub const DROP_FILL: &str = "DELETE FROM room_fill WHERE room = $1 AND owner = $2";
    /// Sets a room's mark.
    pub const SET_MARK: &str = "INSERT INTO room_marks (room, seq) VALUES ($1, $2)
         ON CONFLICT (room) DO UPDATE SET seq = excluded.seq";
}

/// `room_fill.seq` for a fill: NULL for "through the room's mark".
pub(super) fn fill_seq(fill: Fill) -> Option<i64> {
    match fill {
        Fill::Through(seq) => Some(seq),
        Fill::AtMark => None,
    }
}

/// Reads what [`needs`] says, through `reads`.
pub(super) async fn read(needs: &Needs<'_>, reads: &mut impl RoomReads) -> Result<RoomState> {
    let mut state = RoomState::default();
    let mut rooms: HashSet<String> = needs.rooms.iter().map(|room| (*room).to_owned()).collect();
    // Who may be copied to: the pairs, and the catching-up owners in each of
    // their rooms.
    let mut pairs: Vec<(String, &str)> = needs
        .pairs
        .iter()
        .map(|(room, owner)| ((*room).to_owned(), *owner))
        .collect();
    for owner in &needs.owners {
        let of = reads.rooms_of(owner).await?;
        for room in &of {
            rooms.insert(room.clone());
            pairs.push((room.clone(), owner));
        }
        state.rooms_of.insert((*owner).to_owned(), of);
    }
    for room in rooms {
        if let Some(head) = reads.head(&room).await? {
            let rows = reads.rows(&room).await?;
            state.heads.insert(room.clone(), head);
            state.rows.insert(room, rows);
        }
    }
    // Per room, from the least filled of those that may be copied to and are
    // behind.
    let mut from: HashMap<&str, i64> = HashMap::default();
    for (room, owner) in &pairs {
        let (Some(&head), Some(filled)) = (state.heads.get(room), state.filled(room, owner)) else {
            continue;
        };
        if filled < head {
            let slot = from.entry(room.as_str()).or_insert(filled);
            *slot = (*slot).min(filled);
        }
    }
    let mut owed = HashMap::with_capacity_and_hasher(from.len(), Default::default());
    for (room, after) in from {
        let through = state.heads[room];
        owed.insert(room.to_owned(), reads.entries(room, after, through).await?);
    }
    state.owed = owed;
    Ok(state)
}

/// A change to `room_fill` / `room_marks` a batch makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RoomWrite {
    /// Set a member's row.
    Fill {
        room: String,
        owner: String,
        fill: Fill,
    },
    /// Delete a member's row.
    Gone { room: String, owner: String },
    /// Set the room's mark.
    Mark { room: String, seq: i64 },
}

/// Most member rows the SQLite writer keeps between batches (about 80 bytes
/// each); past it it starts again empty.
pub(super) const MAX_KEPT_ROWS: usize = 1_000_000;

/// Keeps the rows a committed batch read, with its writes applied.
pub(super) fn keep(
    kept: &mut HashMap<String, Arc<RoomRows>>,
    read: HashMap<String, Arc<RoomRows>>,
    writes: &[RoomWrite],
) {
    // Counted only when a room is new to `kept` (not on every batch).
    if read.keys().any(|room| !kept.contains_key(room)) {
        let held: usize = kept.values().map(|rows| rows.members.len()).sum();
        if held > MAX_KEPT_ROWS {
            kept.clear();
        }
    }
    kept.extend(read);
    for write in writes {
        let room = match write {
            RoomWrite::Fill { room, .. }
            | RoomWrite::Gone { room, .. }
            | RoomWrite::Mark { room, .. } => room,
        };
        let Some(rows) = kept.get_mut(room) else {
            continue;
        };
        let rows = Arc::make_mut(rows);
        match write {
            RoomWrite::Fill { owner, fill, .. } => {
                rows.members.insert(owner.clone(), *fill);
            }
            RoomWrite::Gone { owner, .. } => {
                rows.members.remove(owner);
            }
            RoomWrite::Mark { seq, .. } => rows.mark = *seq,
        }
    }
}

/// Runs a future that never waits (the SQLite engine's reads) to its end.
pub(super) fn at_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// A member's copy of a room's entry: no archive id, no indexed body (the
/// archive is the room's), the room as the peer.
pub(super) fn member_copy(room: &str, entry: &OwnedEntry) -> OwnedEntry {
    owed_copy(
        room,
        entry.sender(),
        entry.kind(),
        entry.xml(),
        entry.at_micros,
    )
}

/// [`member_copy`] of an entry read back from the room's log.
pub(super) fn owed_copy(
    room: &str,
    sender: &str,
    kind: &str,
    xml: &str,
    at_micros: i64,
) -> OwnedEntry {
    OwnedEntry::from(&NewInboxEntry {
        stanza_id: "",
        sender,
        kind,
        xml,
        at_micros,
        peer: room,
        direction: "in",
        body: None,
        origin: None,
    })
}
