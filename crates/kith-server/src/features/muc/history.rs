//! What a room says and remembers: the fan-out of a group message into every
//! member's inbox log, the room's archive (XEP-0313 §6 on the room's own log),
//! history on join (XEP-0045 §7.2.15), receipts and markers back to the sender,
//! and moderation (XEP-0425).
//!
//! The fan-out serialises the reflected message once; the same text is the
//! log entry of the room (with its archive id) and the copy in the log of
//! every member with a session, appended in one transaction by the
//! group-commit writer; members without one are owed it and get it when they
//! next connect (`Store::room_append_then`: a message costs a row per member
//! online, not per member). Only then is it handed to members' online devices
//! (each addressed in place, no copy of the tree), from the store's commit
//! callback (so log order is delivery order), and to occupants who are not
//! members. The work per message is bounded by `[muc] max_members`.

use std::sync::Arc;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{BareJid, Element, StanzaError, ns};
use kith_store::{ArchiveQuery, NewInboxEntry, Paging};

use super::room::{Affiliation, RecentIds, Room};
use super::{NS_MODERATE, NS_OCCUPANT_ID, internal, send_to};
use crate::Server;
use crate::features::{mam, privacy, retract};

const NS_RECEIPTS: &str = "urn:xmpp:receipts";
const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";

/// A groupchat message from an occupant with voice.
///
/// A message for the log is only queued here; the returned [`Queued`] resolves
/// once it is committed and handed out. Await it after releasing the room, so
/// the room's next message joins the same group commit instead of waiting for
/// this one (the commit callbacks keep the room's order).
pub(super) async fn from_occupant(
    server: &Arc<Server>,
    room: &mut Room,
    message: &Element,
    from: &str,
    nick: &str,
) -> Result<Option<Queued>, StanzaError> {
    let occupant_jid = format!("{}/{nick}", room.jid);
    let occupant_id = room
        .occupants
        .get(nick)
        .map(|o| o.occupant_id.clone())
        .unwrap_or_default();
    // Decided on what the client sent (the occupant id added below would count).
    let storable = crate::deliver::storable(message);
    let mut reflected = message.clone();
    reflected.set_attr("from", occupant_jid.clone());
    reflected.remove_attr("to");
    // XEP-0421 §4 / XEP-0359 §5: ids claiming to be the room's are replaced.
    reflected.children.retain(|node| {
        !matches!(node, kith_proto::Node::Element(e)
            if e.is("occupant-id", NS_OCCUPANT_ID)
                || (e.is("stanza-id", ns::SID) && e.get_attr("by") == Some(room.jid.as_str())))
    });
    reflected.push_child(Element::new(NS_OCCUPANT_ID, "occupant-id").attr("id", occupant_id));
    if !storable {
        // Chat states go to the occupants in the room, never stored (XEP-0085 §5.5).
        for occupant in room.occupants.values() {
            for session in &occupant.sessions {
                send_to(server, session, reflected.clone());
            }
        }
        return Ok(None);
    }
    if let Some(id) = marker_target(&reflected) {
        // Receipts and markers reach the original sender, stored like messages so
        // an offline sender still gets them.
        to_original_sender(server, room, reflected, &id, &super::bare_of(from)).await?;
        return Ok(None);
    }
    let sender_bare = super::bare_of(from);
    // XEP-0424 in a group: a sender retracting their own message.
    if let Some(id) = retract::retracted_id(&reflected) {
        tombstone(server, room, &id, Some(&sender_bare), None).await;
    }
    // XEP-0359 §4: a resend of a message the room has stored (the client
    // wasn't sure it got through) is not stored again; the sending device
    // gets the original's reflection, which is what it was waiting for.
    let origin =
        crate::deliver::origin_id(message).map(|id| crate::deliver::origin_key(&sender_bare, id));
    if let Some(key) = &origin
        && let Some(archive_id) = stored_before(server, room, key).await
    {
        if let Ok(Some(entry)) = find(server, room, &archive_id).await
            && let Ok(original) = parse_fragment(entry.xml.as_bytes(), Limits::default())
        {
            send_to(server, from, original);
        }
        // (Unreadable now, the original still reaches the sender's devices
        // from their logs.)
        tracing::debug!(room = room.jid, "a resent group message stored once");
        return Ok(None);
    }
    fan_out(server, room, reflected, &sender_bare, origin)
        .await
        .map(Some)
}

/// The archive id of the message the room stored under this origin key
/// (`deliver::origin_key`), if it is among the room's latest; the first ask
/// after the room was loaded reads those from the room's log.
async fn stored_before(server: &Server, room: &Room, key: &str) -> Option<String> {
    let seeded = room.recent.lock().seeded;
    if !seeded {
        let query = ArchiveQuery {
            paging: Paging::Before(None),
            max: RecentIds::MAX as i64,
            ..ArchiveQuery::default()
        };
        match server.store.archive_query(&room.jid, &query).await {
            Ok(page) => {
                let mut recent = room.recent.lock();
                for entry in page.items {
                    if let Ok(stored) = parse_fragment(entry.xml.as_bytes(), Limits::default())
                        && let Some(id) = crate::deliver::origin_id(&stored)
                    {
                        recent.insert(crate::deliver::origin_key(&entry.peer, id), entry.stanza_id);
                    }
                }
                recent.seeded = true;
            }
            // Asked again at the room's next message; meanwhile a resend may be stored twice.
            Err(error) => {
                tracing::warn!(room = room.jid, %error, "reading a room's latest origin-ids")
            }
        }
    }
    room.recent.lock().get(key).map(str::to_owned)
}

/// A group message queued for the group commit: resolves once it is committed
/// and handed to members' devices (and non-member occupants).
pub(super) struct Queued(tokio::sync::oneshot::Receiver<Result<(), String>>);

impl Queued {
    /// Waits for the commit; a failed one is the sender's `internal-server-error`.
    pub(super) async fn committed(self) -> Result<(), StanzaError> {
        self.0
            .await
            .map_err(|_| StanzaError::internal())?
            .map_err(internal)
    }
}

/// The message a receipt or marker refers to, if it is one and nothing else.
fn marker_target(message: &Element) -> Option<String> {
    if message.has_child("body", ns::CLIENT) {
        return None;
    }
    message
        .elements()
        .find(|e| {
            (e.ns == NS_MARKERS
                && matches!(e.name.as_str(), "received" | "displayed" | "acknowledged"))
                || e.is("received", NS_RECEIPTS)
        })
        .and_then(|e| e.get_attr("id"))
        .map(str::to_owned)
}

/// Queues `reflected` for the room's log and its members' (see the module's
/// documentation), in one commit; once
/// committed (from the store's commit callback, in commit order) it is handed to members'
/// devices and to non-member occupants.
///
/// `origin`, the message's origin key, is remembered once it is stored (see
/// [`stored_before`]).
pub(super) async fn fan_out(
    server: &Arc<Server>,
    room: &Room,
    mut reflected: Element,
    sender_bare: &str,
    origin: Option<String>,
) -> Result<Queued, StanzaError> {
    let now = crate::now_micros();
    let archive_id = crate::archive_id(now);
    reflected.push_child(
        Element::new(ns::SID, "stanza-id")
            .attr("id", archive_id.clone())
            .attr("by", room.jid.clone()),
    );
    // Serialised once: the log entries and every member's devices share the text.
    let xml: Arc<str> = Arc::from(reflected.to_xml(""));
    let body = reflected.child_text("body", ns::CLIENT);
    let sender = reflected.get_attr("from").unwrap_or_default().to_owned();
    // Local members: the room's log gets the message, and each member's log a
    // copy now if it has a session, later if not (`Store::room_append_then`).
    let members = super::local_members(server, room);
    let entry = NewInboxEntry {
        stanza_id: &archive_id,
        sender: &sender,
        kind: "groupchat",
        xml: &xml[..],
        at_micros: now,
        peer: sender_bare,
        direction: "in",
        body: body.as_deref(),
        origin: None,
    };
    // Handed to members' devices right after the commit, from the store's commit
    // callback: in log order with every other append (see `Store::inbox_append_then`).
    let owned: Vec<(Arc<str>, String)> = members
        .iter()
        .map(|member| (Arc::from(member.bare.as_str()), member.owner.clone()))
        .collect();
    // Occupants who are not members (open rooms) see it in the room only.
    let visitors: Vec<String> = room
        .occupants
        .values()
        .filter(|occupant| !room.affiliation(&occupant.bare).is_member())
        .flat_map(|occupant| occupant.sessions.iter().cloned())
        .collect();
    let room_jid = room.jid.clone();
    let members_count = members.len();
    let (done, committed) = tokio::sync::oneshot::channel();
    let after = {
        let server = server.clone();
        let reflected = Arc::new(reflected);
        let xml = xml.clone();
        let sender_bare = sender_bare.to_owned();
        let recent = room.recent.clone();
        let archive_id = archive_id.clone();
        move |results: Vec<kith_store::Result<i64>>| {
            let mut results = results.into_iter();
            match results.next() {
                Some(Ok(_)) => {
                    if let Some(origin) = origin {
                        recent.lock().insert(origin, archive_id);
                    }
                }
                Some(Err(error)) => {
                    let _ = done.send(Err(error.to_string()));
                    return;
                }
                None => {
                    let _ = done.send(Err("no result for the room's log".to_owned()));
                    return;
                }
            }
            let mut delivered = 0usize;
            let mut wake = Vec::with_capacity(owned.len());
            for ((bare, node), result) in owned.iter().zip(results) {
                match result {
                    Ok(seq) => {
                        delivered += server.router.with_sessions(bare, |sessions| {
                            sessions
                                .iter()
                                .filter(|s| s.available() && s.priority >= 0)
                                .filter(|s| s.send_logged_shared(&xml, bare, seq))
                                .count()
                        });
                        // The member's sessions on other nodes, with the copy.
                        if let Some(cluster) = &server.cluster {
                            cluster.wake(bare, seq, Some(&xml), true);
                        }
                    }
                    // No session: copied into the member's log when one comes;
                    // its phone may be woken meanwhile.
                    Err(kith_store::StoreError::Owed(_)) => {}
                    // A member whose account is gone: nothing to deliver.
                    Err(_) => continue,
                }
                if **bare != *sender_bare {
                    wake.push(node.as_str());
                }
            }
            // Members' phones, whether their copy was made now or is owed.
            crate::features::push::on_logged_for(&server, wake, &reflected);
            for session in &visitors {
                send_to(&server, session, Element::clone(&reflected));
            }
            tracing::debug!(
                room = room_jid,
                members = members_count,
                delivered,
                "group message fanned out"
            );
            let _ = done.send(Ok(()));
        }
    };
    // A member with a session gets their copy now; without one it is owed,
    // made at their next login. In a cluster their sessions may be on any
    // node: every member gets their copy now.
    let live: kith_store::Live = {
        let server = server.clone();
        Arc::new(move |bare: &str| {
            server.cluster.is_some() || server.router.with_sessions(bare, |s| !s.is_empty())
        })
    };
    server
        .store
        .room_append_then(&room.jid, &entry, members, live, after)
        .await
        .map_err(internal)?;
    Ok(Queued(committed))
}

/// A receipt or marker for the message with archive id `id`: to its sender.
/// A `<displayed/>` marker (read) flows only when the reader and the sender both
/// have read receipts on, as in 1:1 chats (`features::privacy`).
async fn to_original_sender(
    server: &Arc<Server>,
    room: &Room,
    mut marker: Element,
    id: &str,
    reader: &str,
) -> Result<(), StanzaError> {
    let Some(entry) = find(server, room, id).await? else {
        // Nothing to tell anyone; markers are best effort.
        return Ok(());
    };
    let original_sender = entry.peer;
    if !room.affiliation(&original_sender).is_member() {
        return Ok(());
    }
    if marker.has_child("displayed", NS_MARKERS) {
        let allowed = match (BareJid::new(reader), BareJid::new(&original_sender)) {
            (Ok(reader), Ok(sender)) => {
                privacy::read_marker_allowed(server, &reader, &sender).await
            }
            _ => false,
        };
        if !allowed {
            tracing::debug!(
                room = room.jid,
                "group read marker held back by privacy settings"
            );
            return Ok(());
        }
    }
    marker.set_attr("to", original_sender.clone());
    marker.set_attr("type", "groupchat");
    log_for(server, &original_sender, marker).await
}

/// Appends a message from the room to one member's log and hands it to their
/// online devices (a groupchat message to a bare JID, which the 1:1 router
/// would refuse, RFC 6121 §8.5.2.1.2).
async fn log_for(server: &Arc<Server>, bare: &str, message: Element) -> Result<(), StanzaError> {
    let Some((node, _)) = bare.split_once('@') else {
        return Ok(());
    };
    let xml = message.to_xml("");
    let sender = message.get_attr("from").unwrap_or_default().to_owned();
    let peer = super::bare_of(&sender);
    let entry = NewInboxEntry {
        stanza_id: "",
        sender: &sender,
        kind: "groupchat",
        xml: &xml,
        at_micros: crate::now_micros(),
        peer: &peer,
        direction: "in",
        body: None,
        origin: None,
    };
    let (done, committed) = tokio::sync::oneshot::channel();
    let after = {
        let server = server.clone();
        let bare = bare.to_owned();
        move |mut results: Vec<kith_store::Result<i64>>| {
            if let Some(Ok(seq)) = results.pop() {
                let shared = Arc::new(message);
                server.router.with_sessions(&bare, |sessions| {
                    for session in sessions.iter().filter(|s| s.available() && s.priority >= 0) {
                        session.send_logged(shared.clone(), seq);
                    }
                });
                if let Some(cluster) = &server.cluster {
                    cluster.wake(&bare, seq, None, false);
                }
            }
            let _ = done.send(());
        }
    };
    server
        .store
        .inbox_append_then(&[(node, entry)], after)
        .await
        .map_err(internal)?;
    // Logged once committed; the caller's next step sees it stored.
    let _ = committed.await;
    Ok(())
}

/// The room archive entry with this archive id, or (for clients that quote
/// the message id) the newest one whose `id` or origin-id it is.
async fn find(
    server: &Server,
    room: &Room,
    id: &str,
) -> Result<Option<kith_store::InboxEntry>, StanzaError> {
    let query = ArchiveQuery {
        ids: vec![id.to_owned()],
        max: 1,
        ..ArchiveQuery::default()
    };
    match server.store.archive_query(&room.jid, &query).await {
        Ok(page) => Ok(page.items.into_iter().next()),
        Err(kith_store::ArchiveError::UnknownId(_)) => Ok(None),
        Err(error) => Err(internal(error)),
    }
}

/// Replaces an archived message with a tombstone: when `only_sender` is set,
/// only if that user sent it (XEP-0424 §6 / XEP-0425 §5).
async fn tombstone(
    server: &Server,
    room: &Room,
    id: &str,
    only_sender: Option<&str>,
    moderated_by: Option<&str>,
) -> bool {
    let Ok(Some(entry)) = find(server, room, id).await else {
        return false;
    };
    if only_sender.is_some_and(|sender| sender != entry.peer) {
        return false;
    }
    let Ok(original) = parse_fragment(entry.xml.as_bytes(), Limits::default()) else {
        return false;
    };
    let mut stone = retract::tombstone(&original);
    if let Some(by) = moderated_by
        && let Some(retracted) = stone.get_child_mut("retracted", retract::RETRACT)
    {
        retracted.push_child(Element::new(NS_MODERATE, "moderated").attr("by", by));
    }
    match server
        .store
        .inbox_rewrite(&room.jid, entry.seq, &stone.to_xml(""), None)
        .await
    {
        Ok(done) => done,
        Err(error) => {
            tracing::warn!(%error, "writing a moderation tombstone");
            false
        }
    }
}

/// XEP-0425 §4: an admin (or a moderator) retracts somebody's message for
/// everyone: the archive keeps a tombstone, and every member is told.
pub(super) async fn moderate(
    server: &Arc<Server>,
    room: &mut Room,
    payload: &Element,
    from: &str,
) -> super::super::Response {
    let requester = super::bare_of(from);
    let nick = room.nick_of(from).map(str::to_owned);
    let is_moderator = nick
        .as_ref()
        .and_then(|n| room.occupants.get(n))
        .is_some_and(|o| o.role == super::room::Role::Moderator);
    if !is_moderator && room.affiliation(&requester) < Affiliation::Admin {
        return Err(StanzaError::forbidden());
    }
    let Some(id) = payload.get_attr("id").filter(|id| !id.is_empty()) else {
        return Err(StanzaError::bad_request().with_text("which message?"));
    };
    if !payload.has_child("retract", retract::RETRACT) {
        return Err(StanzaError::feature_not_implemented());
    }
    let by = format!("{}/{}", room.jid, nick.as_deref().unwrap_or("admin"));
    if !tombstone(server, room, id, None, Some(&by)).await {
        return Err(StanzaError::item_not_found());
    }
    // §4: the room announces the retraction to everyone (and to members' logs).
    let mut retract = Element::new(retract::RETRACT, "retract")
        .attr("id", id)
        .child(Element::new(NS_MODERATE, "moderated").attr("by", by));
    if let Some(reason) = payload.get_child("reason", NS_MODERATE) {
        retract.push_child(Element::new(retract::RETRACT, "reason").text(reason.text_content()));
    }
    let announcement = Element::new(ns::CLIENT, "message")
        .attr("type", "groupchat")
        .attr("from", room.jid.clone())
        .attr("id", crate::random_id(16))
        .child(retract)
        .child(Element::new("urn:xmpp:hints", "store"));
    fan_out(server, room, announcement, &requester, None)
        .await?
        .committed()
        .await?;
    Ok(None)
}

/// Where a member's view of the archive starts (None: everything).
fn visible_from(room: &Room, bare: &str) -> Option<i64> {
    if room.config.history_from_join {
        room.member_since(bare)
    } else {
        None
    }
}

/// XEP-0313 §6: a query on the room's archive. Members of a members-only room
/// only (§6.1.1 `forbidden`), from their joining when the room says so.
pub(super) async fn mam(
    server: &Arc<Server>,
    room: &Room,
    payload: &Element,
    from: &str,
) -> super::super::Response {
    let requester = super::bare_of(from);
    let affiliation = room.affiliation(&requester);
    if affiliation == Affiliation::Outcast || (room.config.members_only && !affiliation.is_member())
    {
        return Err(
            StanzaError::forbidden().with_text("only members can read this group's history")
        );
    }
    let mut parsed = mam::parse_query(payload)?;
    if let Some(since) = visible_from(room, &requester) {
        parsed.query.start_micros = Some(parsed.query.start_micros.map_or(since, |s| s.max(since)));
    }
    let (results, fin) = mam::run_query(server, &room.jid, &parsed, from, &room.jid).await?;
    for result in results {
        send_to(server, from, result);
    }
    Ok(Some(fin))
}

/// §7.2.15: the recent history for a client entering the room, as it asked
/// (`<history maxstanzas/>`) within the server's limit, from the member's
/// joining when the room says so.
pub(super) async fn on_join(
    server: &Arc<Server>,
    room: &Room,
    presence: &Element,
    from: &str,
    bare: &str,
) {
    let requested = presence
        .get_child("x", super::NS_MUC)
        .and_then(|x| x.get_child("history", super::NS_MUC))
        .and_then(|h| h.get_attr("maxstanzas"))
        .and_then(|m| m.parse::<usize>().ok());
    let limit = requested
        .unwrap_or(usize::MAX)
        .min(server.config.muc.history_on_join);
    if limit == 0 {
        return;
    }
    let query = ArchiveQuery {
        start_micros: visible_from(room, bare),
        paging: Paging::Before(None),
        max: limit as i64,
        ..ArchiveQuery::default()
    };
    let page = match server.store.archive_query(&room.jid, &query).await {
        Ok(page) => page,
        Err(error) => {
            tracing::warn!(room = room.jid, %error, "reading room history failed");
            return;
        }
    };
    for entry in page.items {
        let Ok(mut message) = parse_fragment(entry.xml.as_bytes(), Limits::default()) else {
            continue;
        };
        message.push_child(
            Element::new(ns::DELAY, "delay")
                .attr("from", room.jid.clone())
                .attr("stamp", crate::datetime::format_datetime(entry.at_micros)),
        );
        send_to(server, from, message);
    }
}

/// The error for a room that is full of members.
pub(super) fn group_full() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAllowed).with_text("the group is full")
}
