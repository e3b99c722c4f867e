//! Affiliations and roles (XEP-0045 §8 moderator, §9 admin, §10.3–10.8 owner
//! use cases, all through `muc#admin`), and the owner's configuration and
//! destruction of the room (§10.1–10.2, §10.9, `muc#owner`).

use std::sync::Arc;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::{Element, Jid, StanzaError};
use kith_store::RoomAffiliation;

use super::room::{Affiliation, Role, Room};
use super::{NS_ADMIN, NS_OWNER, NS_USER, internal};
use crate::Server;
use crate::cluster::{Answer, Call};

/// An account is being deleted: it leaves every group it belongs to, as if it
/// had left on WhatsApp. A group whose last owner it was gets a new owner, the
/// longest-standing admin, else the longest-standing member (WhatsApp hands a
/// departed creator's group on the same way); with nobody left it is destroyed.
pub(crate) async fn account_deleted(server: &Arc<Server>, bare: &str) -> Result<(), StanzaError> {
    let call = || Call::AccountDeleted {
        bare: bare.to_owned(),
    };
    match super::elsewhere(server, call).await? {
        None => {}
        Some(Answer::Done) => return Ok(()),
        Some(other) => return Err(other.into_error()),
    }
    let rooms = server
        .store
        .muc_rooms_of_member(bare)
        .await
        .map_err(internal)?;
    for jid in rooms {
        let Some(room) = server.muc.room(server, &jid).await? else {
            continue;
        };
        let mut room = room.lock().await;
        let mut changes = vec![(bare.to_owned(), Affiliation::None)];
        let owners_left = room
            .affiliations
            .iter()
            .any(|(j, (a, _))| j != bare && *a == Affiliation::Owner);
        if room.affiliation(bare) == Affiliation::Owner && !owners_left {
            let successor = room
                .affiliations
                .iter()
                .filter(|(j, (a, _))| {
                    *j != bare && matches!(a, Affiliation::Admin | Affiliation::Member)
                })
                .min_by_key(|(j, (a, since))| (*a != Affiliation::Admin, *since, (*j).clone()))
                .map(|(j, _)| j.clone());
            match successor {
                Some(successor) => changes.push((successor, Affiliation::Owner)),
                None => {
                    super::destroy(server, &mut room, None).await;
                    continue;
                }
            }
        }
        apply_affiliations(server, &mut room, &changes, bare).await?;
    }
    Ok(())
}

/// `muc#admin` get (§9.5, §8.5 lists) and set (changes, all or nothing).
pub(super) async fn admin(
    server: &Arc<Server>,
    room: &mut Room,
    payload: &Element,
    set: bool,
    from: &str,
) -> super::super::Response {
    let requester = super::bare_of(from);
    let actor = room.affiliation(&requester);
    let actor_role = room.role_of(from);
    let items: Vec<&Element> = payload
        .elements()
        .filter(|e| e.is("item", NS_ADMIN))
        .collect();
    if items.is_empty() {
        return Err(StanzaError::bad_request().with_text("no item"));
    }
    if !set {
        return list(room, items[0], actor);
    }
    let mut changes: Vec<(String, Affiliation)> = Vec::new();
    let mut roles: Vec<(String, Role)> = Vec::new();
    for item in &items {
        match (item.get_attr("affiliation"), item.get_attr("role")) {
            (Some(affiliation), _) => {
                let new = Affiliation::parse(affiliation)
                    .ok_or_else(|| StanzaError::bad_request().with_text("unknown affiliation"))?;
                let jid = match (item.get_attr("jid"), item.get_attr("nick")) {
                    (Some(jid), _) => Jid::new(jid)
                        .map_err(|_| StanzaError::jid_malformed())?
                        .to_bare()
                        .to_string(),
                    (None, Some(nick)) => room
                        .occupants
                        .get(nick)
                        .map(|o| o.bare.clone())
                        .ok_or_else(StanzaError::item_not_found)?,
                    (None, None) => return Err(StanzaError::bad_request().with_text("no jid")),
                };
                changes.push((jid, new));
            }
            (None, Some(role)) => {
                let new = Role::parse(role)
                    .ok_or_else(|| StanzaError::bad_request().with_text("unknown role"))?;
                let nick = item
                    .get_attr("nick")
                    .ok_or_else(|| StanzaError::bad_request().with_text("no nick"))?;
                roles.push((nick.to_owned(), new));
            }
            (None, None) => return Err(StanzaError::bad_request()),
        }
    }
    // Check every change before applying any.
    let mut members = room.member_count();
    let mut owners = room
        .affiliations
        .values()
        .filter(|(a, _)| *a == Affiliation::Owner)
        .count();
    for (jid, new) in &changes {
        let current = room.affiliation(jid);
        // Leaving the group: anyone may drop their own affiliation (the last
        // owner excepted, below).
        let leaving = *jid == requester && *new == Affiliation::None && current.is_member();
        if !leaving && !room.may_set_affiliation(actor, current, *new) {
            // §9.1.4 / §10.3: not privileged enough.
            return Err(if actor >= Affiliation::Admin {
                StanzaError::not_allowed()
            } else {
                StanzaError::forbidden()
            });
        }
        if current == Affiliation::Owner && *new != Affiliation::Owner {
            owners -= 1;
            // §10.9: a room never loses its last owner.
            if owners == 0 {
                return Err(StanzaError::new(StanzaErrorCondition::Conflict)
                    .with_text("the group needs an owner"));
            }
        }
        if *new == Affiliation::Owner && current != Affiliation::Owner {
            owners += 1;
        }
        match (current.is_member(), new.is_member()) {
            (false, true) => members += 1,
            (true, false) => members -= 1,
            _ => {}
        }
        if members > server.config.muc.max_members {
            return Err(super::history::group_full());
        }
    }
    for (nick, new) in &roles {
        let Some(target) = room.occupants.get(nick) else {
            return Err(StanzaError::item_not_found());
        };
        let target_affiliation = room.affiliation(&target.bare);
        if !Room::may_set_role((actor_role, actor), target_affiliation) {
            // §8.2.3: kicking an admin or owner is not allowed.
            return Err(if actor_role == Role::Moderator {
                StanzaError::not_allowed()
            } else {
                StanzaError::forbidden()
            });
        }
        if *new == Role::Moderator && actor < Affiliation::Admin {
            return Err(StanzaError::forbidden());
        }
    }
    apply_affiliations(server, room, &changes, &requester).await?;
    for (nick, new) in roles {
        set_role(server, room, &nick, new);
    }
    Ok(None)
}

/// §9.5 / §10.5 / §10.8: the list of JIDs with one affiliation. Admins see
/// every list; members see the member, admin and owner lists (a group shows
/// its members to its members).
fn list(room: &Room, item: &Element, actor: Affiliation) -> super::super::Response {
    let mut query = Element::new(NS_ADMIN, "query");
    if let Some(wanted) = item.get_attr("affiliation") {
        let wanted = Affiliation::parse(wanted).ok_or_else(StanzaError::bad_request)?;
        let allowed = actor >= Affiliation::Admin || (actor.is_member() && wanted.is_member());
        if !allowed {
            return Err(StanzaError::forbidden());
        }
        let mut jids: Vec<&String> = room
            .affiliations
            .iter()
            .filter(|(_, (a, _))| *a == wanted)
            .map(|(jid, _)| jid)
            .collect();
        jids.sort();
        for jid in jids {
            query.push_child(
                Element::new(NS_ADMIN, "item")
                    .attr("affiliation", wanted.as_str())
                    .attr("jid", jid.clone()),
            );
        }
        return Ok(Some(query));
    }
    let wanted = item
        .get_attr("role")
        .and_then(Role::parse)
        .ok_or_else(StanzaError::bad_request)?;
    if actor < Affiliation::Admin {
        return Err(StanzaError::forbidden());
    }
    for (nick, occupant) in room.occupants.iter().filter(|(_, o)| o.role == wanted) {
        query.push_child(
            Element::new(NS_ADMIN, "item")
                .attr("role", wanted.as_str())
                .attr("nick", nick.clone())
                .attr("affiliation", room.affiliation(&occupant.bare).as_str())
                .attr("jid", occupant.bare.clone()),
        );
    }
    Ok(Some(query))
}

/// Stores checked affiliation changes and tells the room: outcasts and removed
/// members of a members-only room leave it (§9.2 status 301, §9.5 321); others'
/// presence shows their new affiliation and role. New members are told they were
/// added (a mediated invitation from the room, §7.8.2, through their inbox log).
pub(super) async fn apply_affiliations(
    server: &Arc<Server>,
    room: &mut Room,
    changes: &[(String, Affiliation)],
    actor: &str,
) -> Result<(), StanzaError> {
    let now = crate::now_micros();
    let mut stored = Vec::new();
    let mut removals = Vec::new();
    for (jid, new) in changes {
        if *new == Affiliation::None {
            removals.push(jid.as_str());
            continue;
        }
        // A member's history starts when they became a member; promotions keep it.
        let since = match room.affiliations.get(jid) {
            Some((current, since)) if current.is_member() && new.is_member() => *since,
            _ => now,
        };
        stored.push(RoomAffiliation {
            jid: jid.clone(),
            affiliation: new.as_str().to_owned(),
            since_micros: since,
        });
    }
    server
        .store
        .muc_set_affiliations(&room.jid, &stored, &removals)
        .await
        .map_err(internal)?;
    for (jid, new) in changes {
        let was_member = room.affiliation(jid).is_member();
        // Where the member's log stands against the room's (`Store::room_join`).
        if let Some(owner) = super::local_user(server, jid) {
            let owners = vec![owner.to_owned()];
            let tracked = match (was_member, new.is_member()) {
                (false, true) => server.store.room_join(&room.jid, owners).await,
                (true, false) => server.store.room_leave(&room.jid, owners).await,
                _ => Ok(()),
            };
            tracked.map_err(internal)?;
        }
        match stored.iter().find(|s| &s.jid == jid) {
            Some(row) => {
                room.affiliations
                    .insert(jid.clone(), (*new, row.since_micros));
            }
            None => {
                room.affiliations.remove(jid);
            }
        }
        tracing::info!(
            room = room.jid,
            affiliation = new.as_str(),
            "affiliation changed"
        );
        match new {
            Affiliation::Outcast => super::remove_user(server, room, jid, &["301"]),
            Affiliation::None if room.config.members_only => {
                super::remove_user(server, room, jid, &["321"])
            }
            _ => {
                let role = room.default_role(*new);
                let nicks: Vec<String> = room
                    .occupants
                    .iter()
                    .filter(|(_, o)| &o.bare == jid)
                    .map(|(n, _)| n.clone())
                    .collect();
                for nick in nicks {
                    if let Some(occupant) = room.occupants.get_mut(&nick) {
                        occupant.role = role;
                    }
                    broadcast(server, room, &nick);
                }
            }
        }
        if new.is_member() && !was_member {
            super::invite::notify_added(server, room, jid, actor).await;
        }
    }
    Ok(())
}

/// §8.2 kick (role none, status 307) or a change of voice/moderation.
fn set_role(server: &Server, room: &mut Room, nick: &str, new: Role) {
    let Some(bare) = room.occupants.get(nick).map(|o| o.bare.clone()) else {
        return;
    };
    if new == Role::None {
        super::remove_user(server, room, &bare, &["307"]);
        return;
    }
    if let Some(occupant) = room.occupants.get_mut(nick) {
        occupant.role = new;
    }
    broadcast(server, room, nick);
}

/// An occupant's changed presence, to everyone.
fn broadcast(server: &Server, room: &Room, nick: &str) {
    super::broadcast_presence(server, room, nick, &[]);
}

/// `muc#owner`: the configuration form (§10.2) and destruction (§10.9).
pub(super) async fn owner(
    server: &Arc<Server>,
    room: &mut Room,
    payload: &Element,
    set: bool,
    requester: &str,
) -> super::super::Response {
    // §10.2: only owners configure (others get forbidden).
    if room.affiliation(requester) != Affiliation::Owner {
        return Err(StanzaError::forbidden().with_text("only owners can configure the group"));
    }
    if !set {
        return Ok(Some(
            Element::new(NS_OWNER, "query").child(super::form::config_form(&room.config)),
        ));
    }
    if let Some(destroy) = payload.get_child("destroy", NS_OWNER) {
        let reason = destroy
            .get_child("reason", NS_OWNER)
            .map(|r| Element::new(NS_USER, "reason").text(r.text_content()));
        super::destroy(server, room, reason).await;
        return Ok(None);
    }
    let Some(form) = payload.get_child("x", kith_proto::ns::DATA_FORMS) else {
        return Err(StanzaError::bad_request().with_text("no form"));
    };
    match form.get_attr("type") {
        // §10.1.3: cancelling keeps the room as it is.
        Some("cancel") => return Ok(None),
        Some("submit") => {}
        _ => return Err(StanzaError::bad_request().with_text("the form must be submitted")),
    }
    let next = super::form::apply_form(form, &room.config)?;
    let text = serde_json::to_string(&next).map_err(internal)?;
    server
        .store
        .muc_set_config(&room.jid, &text)
        .await
        .map_err(internal)?;
    let became_members_only = next.members_only && !room.config.members_only;
    let moderation_changed = next.moderated != room.config.moderated;
    room.config = next;
    if became_members_only {
        // §9.? / §10.2: non-members leave a room that became members-only (322).
        let outsiders: Vec<String> = room
            .occupants
            .values()
            .filter(|o| !room.affiliation(&o.bare).is_member())
            .map(|o| o.bare.clone())
            .collect();
        for bare in outsiders {
            super::remove_user(server, room, &bare, &["322"]);
        }
    }
    if moderation_changed {
        let nicks: Vec<String> = room.occupants.keys().cloned().collect();
        for nick in nicks {
            let Some(bare) = room.occupants.get(&nick).map(|o| o.bare.clone()) else {
                continue;
            };
            let role = room.default_role(room.affiliation(&bare));
            if let Some(occupant) = room.occupants.get_mut(&nick) {
                occupant.role = role;
            }
            broadcast(server, room, &nick);
        }
    }
    config_changed(server, room);
    Ok(None)
}

/// §10.2.1: status 104 tells occupants the configuration changed (also sent
/// when the room's avatar changes, as XEP-0486 asks, so clients fetch it again).
pub(super) fn config_changed(server: &Server, room: &Room) {
    let notice = Element::new(kith_proto::ns::CLIENT, "message")
        .attr("type", "groupchat")
        .attr("from", room.jid.clone())
        .attr("id", crate::random_id(16))
        .child(
            Element::new(NS_USER, "x").child(Element::new(NS_USER, "status").attr("code", "104")),
        );
    for occupant in room.occupants.values() {
        for session in &occupant.sessions {
            super::send_to(server, session, notice.clone());
        }
    }
}

const REQUEST: &str = "http://jabber.org/protocol/muc#request";

/// Whether a message to the room is a §7.13 voice request (or its approval).
pub(super) fn is_voice_form(message: &Element) -> bool {
    message
        .get_child("x", kith_proto::ns::DATA_FORMS)
        .is_some_and(|form| form_value(form, "FORM_TYPE").as_deref() == Some(REQUEST))
}

fn form_value(form: &Element, var: &str) -> Option<String> {
    form.elements()
        .find(|f| f.is("field", kith_proto::ns::DATA_FORMS) && f.get_attr("var") == Some(var))
        .and_then(|f| f.child_text("value", kith_proto::ns::DATA_FORMS))
}

/// §7.13: a visitor asks for voice; the room forwards the request to its
/// moderators as a form (§8.6), and a moderator's submitted form with
/// `muc#request_allow` true makes the requester a participant.
pub(super) async fn voice_request(
    server: &Arc<Server>,
    message: &Element,
    from: &str,
    room_jid: &str,
) -> Result<(), StanzaError> {
    let room = server.muc.existing(server, room_jid).await?;
    let mut room = room.lock().await;
    let nick = room.occupant_nick(from)?;
    let Some(form) = message.get_child("x", kith_proto::ns::DATA_FORMS) else {
        return Err(StanzaError::bad_request());
    };
    if let Some(allow) = form_value(form, "muc#request_allow") {
        // §8.6: a moderator's answer.
        if room.role_of(from) != Role::Moderator {
            return Err(StanzaError::forbidden());
        }
        let target = form_value(form, "muc#roomnick").unwrap_or_default();
        if matches!(allow.as_str(), "1" | "true")
            && room
                .occupants
                .get(&target)
                .is_some_and(|o| o.role == Role::Visitor)
        {
            set_role(server, &mut room, &target, Role::Participant);
        }
        return Ok(());
    }
    let field = |kind: &str, var: &str, value: &str| {
        Element::new(kith_proto::ns::DATA_FORMS, "field")
            .attr("type", kind)
            .attr("var", var)
            .child(Element::new(kith_proto::ns::DATA_FORMS, "value").text(value))
    };
    let jid = room
        .occupants
        .get(&nick)
        .map(|o| o.bare.clone())
        .unwrap_or_default();
    let approval = Element::new(kith_proto::ns::CLIENT, "message")
        .attr("from", room.jid.clone())
        .attr("id", crate::random_id(16))
        .child(
            Element::new(kith_proto::ns::DATA_FORMS, "x")
                .attr("type", "form")
                .child(Element::new(kith_proto::ns::DATA_FORMS, "title").text("Voice request"))
                .child(field("hidden", "FORM_TYPE", REQUEST))
                .child(field("list-single", "muc#role", "participant"))
                .child(field("jid-single", "muc#jid", &jid))
                .child(field("text-single", "muc#roomnick", &nick))
                .child(field("boolean", "muc#request_allow", "false")),
        );
    for occupant in room
        .occupants
        .values()
        .filter(|o| o.role == Role::Moderator)
    {
        for session in &occupant.sessions {
            super::send_to(server, session, approval.clone());
        }
    }
    Ok(())
}
