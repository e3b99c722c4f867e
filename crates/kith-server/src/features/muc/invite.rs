//! Joining a group without being in the room first: mediated invitations
//! (XEP-0045 §7.8.2), invite links, and group creation for the HTTP API.
//!
//! ## Invite links (`urn:kith:group-invite:0`)
//! IQs to the room (or, for `redeem`, to the service):
//! * `<create xmlns='urn:kith:group-invite:0'/>` (set) → `<invite token='…'
//!   url='https://<host>/join/<token>'/>`. Admins and owners; members too when
//!   the group lets members add members.
//! * `<list/>` (get) → `<invites>` with one `<invite token url revoked/>` each.
//!   Admins and owners.
//! * `<revoke token='…'/>` (set). Admins and owners. A revoked link admits nobody.
//! * `<redeem token='…'/>` (set, to the service or the room) makes the signed-in
//!   requester a member and answers `<joined room='…'/>`. Unknown tokens get
//!   `item-not-found`, revoked ones `forbidden`, banned users `forbidden`, a full
//!   group `not-allowed`.

use std::sync::Arc;

use kith_proto::{Element, Jid, StanzaError, ns};
use kith_store::RoomInvite;

use super::room::{Affiliation, Room};
use super::{NS_INVITE, NS_USER, internal};
use crate::Server;
use crate::cluster::{Answer, Call};

/// The most invitations one message may carry.
const MAX_INVITES_PER_MESSAGE: usize = 20;

/// §7.8.2: an occupant asks the room to invite someone. In a members-only
/// room the invitee becomes a member, which only admins (or members, when the
/// room allows invites) may cause; otherwise the inviter gets `<forbidden/>`.
pub(super) async fn mediated(
    server: &Arc<Server>,
    message: &Element,
    from: &str,
    room_jid: &str,
) -> Result<(), StanzaError> {
    let room = server.muc.existing(server, room_jid).await?;
    let mut room = room.lock().await;
    let inviter = super::bare_of(from);
    let affiliation = room.affiliation(&inviter);
    let may_invite = affiliation >= Affiliation::Admin
        || (room.config.allow_invites && affiliation.is_member())
        || (!room.config.members_only && room.nick_of(from).is_some());
    if !may_invite {
        return Err(StanzaError::forbidden().with_text("only admins can add members"));
    }
    let invites: Vec<&Element> = message
        .get_child("x", NS_USER)
        .map(|x| x.elements().filter(|e| e.is("invite", NS_USER)).collect())
        .unwrap_or_default();
    if invites.len() > MAX_INVITES_PER_MESSAGE {
        return Err(
            StanzaError::new(kith_proto::error::StanzaErrorCondition::PolicyViolation)
                .with_text("too many invitations at once"),
        );
    }
    let mut invitees = Vec::new();
    for invite in invites {
        let invitee = invite
            .get_attr("to")
            .and_then(|to| Jid::new(to).ok())
            .ok_or_else(StanzaError::jid_malformed)?
            .to_bare()
            .to_string();
        let current = room.affiliation(&invitee);
        if current == Affiliation::Outcast && affiliation < Affiliation::Admin {
            return Err(StanzaError::forbidden());
        }
        invitees.push((invitee, current, invite.child_text("reason", NS_USER)));
    }
    let to_add: Vec<(String, Affiliation)> = invitees
        .iter()
        .filter(|(_, current, _)| room.config.members_only && !current.is_member())
        .map(|(jid, _, _)| (jid.clone(), Affiliation::Member))
        .collect();
    if room.member_count() + to_add.len() > server.config.muc.max_members {
        return Err(super::history::group_full());
    }
    // Becoming a member sends the invitation (notify_added); others get it here.
    super::admin::apply_affiliations(server, &mut room, &to_add, &inviter).await?;
    for (invitee, _, reason) in invitees {
        if !to_add.iter().any(|(jid, _)| *jid == invitee) {
            send_invitation(server, &room, &invitee, &inviter, reason.as_deref()).await;
        }
    }
    Ok(())
}

/// Tells a new member they were added: the §7.8.2 invitation from the room,
/// through their inbox log so it reaches them whenever they next log in.
pub(super) async fn notify_added(server: &Arc<Server>, room: &Room, jid: &str, actor: &str) {
    send_invitation(server, room, jid, actor, None).await;
}

async fn send_invitation(
    server: &Arc<Server>,
    room: &Room,
    invitee: &str,
    inviter: &str,
    reason: Option<&str>,
) {
    let mut invite = Element::new(NS_USER, "invite").attr("from", inviter);
    if let Some(reason) = reason {
        invite.push_child(Element::new(NS_USER, "reason").text(reason));
    }
    let name = if room.config.name.is_empty() {
        room.jid.clone()
    } else {
        room.config.name.clone()
    };
    let message = Element::new(ns::CLIENT, "message")
        .attr("from", room.jid.clone())
        .attr("to", invitee)
        .attr("id", crate::random_id(16))
        .child(Element::new(NS_USER, "x").child(invite))
        // XEP-0249 for clients that only understand direct invitations.
        .child(Element::new("jabber:x:conference", "x").attr("jid", room.jid.clone()))
        .child(Element::new(ns::CLIENT, "body").text(format!("{inviter} added you to {name}")));
    crate::deliver::route(server, message).await;
}

/// Invite link requests addressed to a room.
pub(super) async fn links(
    server: &Arc<Server>,
    room: &mut Room,
    payload: &Element,
    set: bool,
    requester: &str,
) -> super::super::Response {
    let affiliation = room.affiliation(requester);
    let is_admin = affiliation >= Affiliation::Admin;
    match (payload.name.as_str(), set) {
        ("create", true) => {
            let invite = create_invite(server, room, requester).await?;
            Ok(Some(invite_element(server, &invite)))
        }
        ("list", false) => {
            if !is_admin {
                return Err(StanzaError::forbidden());
            }
            let mut list = Element::new(NS_INVITE, "invites");
            for invite in server
                .store
                .muc_invites(&room.jid)
                .await
                .map_err(internal)?
            {
                list.push_child(invite_element(server, &invite));
            }
            Ok(Some(list))
        }
        ("revoke", true) => {
            let token = payload
                .get_attr("token")
                .ok_or_else(StanzaError::bad_request)?;
            revoke_invite(server, room, token, requester).await?;
            Ok(None)
        }
        ("redeem", true) => {
            let invite = find_invite(server, payload, Some(&room.jid)).await?;
            join_by_invite(server, room, &invite, requester).await
        }
        _ => Err(StanzaError::bad_request()),
    }
}

/// Creates an invite link to `room` for `requester`: admins and owners, and
/// members when the group lets members add members. Shared by the IQ and
/// `POST /api/v1/groups/{jid}/invite-links`.
async fn create_invite(
    server: &Server,
    room: &Room,
    requester: &str,
) -> Result<RoomInvite, StanzaError> {
    let affiliation = room.affiliation(requester);
    if !(affiliation >= Affiliation::Admin
        || (room.config.allow_invites && affiliation.is_member()))
    {
        return Err(StanzaError::forbidden().with_text("only admins can create invite links"));
    }
    let existing = server
        .store
        .muc_invites(&room.jid)
        .await
        .map_err(internal)?;
    if existing.len() >= server.config.muc.max_invites_per_room {
        return Err(StanzaError::not_allowed().with_text("this group has too many invite links"));
    }
    let invite = RoomInvite {
        token: crate::random_id(24),
        room: room.jid.clone(),
        created_by: requester.to_owned(),
        created_micros: crate::now_micros(),
        revoked: false,
    };
    server
        .store
        .muc_create_invite(&invite)
        .await
        .map_err(internal)?;
    Ok(invite)
}

/// Revokes one of `room`'s invite links (admins and owners).
async fn revoke_invite(
    server: &Server,
    room: &Room,
    token: &str,
    requester: &str,
) -> Result<(), StanzaError> {
    if room.affiliation(requester) < Affiliation::Admin {
        return Err(StanzaError::forbidden().with_text("only admins can revoke invite links"));
    }
    if !server
        .store
        .muc_revoke_invite(&room.jid, token)
        .await
        .map_err(internal)?
    {
        return Err(StanzaError::item_not_found());
    }
    Ok(())
}

/// For the HTTP API: a new invite link to the group `room_jid` by `requester`
/// (a local bare JID); returns it with its URL.
pub(crate) async fn create_link(
    server: &Arc<Server>,
    room_jid: &str,
    requester: &str,
) -> Result<(RoomInvite, String), StanzaError> {
    let call = || Call::CreateLink {
        room: room_jid.to_owned(),
        requester: requester.to_owned(),
    };
    match super::elsewhere(server, call).await? {
        None => {}
        Some(Answer::Link { invite, url }) => return Ok((invite.into(), url)),
        Some(other) => return Err(other.into_error()),
    }
    let room = server.muc.existing(server, room_jid).await?;
    let room = room.lock().await;
    let invite = create_invite(server, &room, requester).await?;
    let url = server.config.muc.invite_url(&server.domain, &invite.token);
    Ok((invite, url))
}

/// For the HTTP API: revokes an invite link of the group `room_jid`.
pub(crate) async fn revoke_link(
    server: &Arc<Server>,
    room_jid: &str,
    token: &str,
    requester: &str,
) -> Result<(), StanzaError> {
    let call = || Call::RevokeLink {
        room: room_jid.to_owned(),
        token: token.to_owned(),
        requester: requester.to_owned(),
    };
    match super::elsewhere(server, call).await? {
        None => {}
        Some(Answer::Done) => return Ok(()),
        Some(other) => return Err(other.into_error()),
    }
    let room = server.muc.existing(server, room_jid).await?;
    let room = room.lock().await;
    revoke_invite(server, &room, token, requester).await
}

/// For the HTTP API: what an invite link shows before joining — the invite and
/// the group's name. `None` for unknown tokens.
pub(crate) async fn link_preview(
    server: &Arc<Server>,
    token: &str,
) -> Result<Option<(RoomInvite, String)>, StanzaError> {
    let call = || Call::LinkPreview {
        token: token.to_owned(),
    };
    match super::elsewhere(server, call).await? {
        None => {}
        Some(Answer::Preview { link }) => {
            return Ok(link.map(|(invite, name)| (invite.into(), name)));
        }
        Some(other) => return Err(other.into_error()),
    }
    let Some(invite) = server.store.muc_invite(token).await.map_err(internal)? else {
        return Ok(None);
    };
    let room = server.muc.existing(server, &invite.room).await?;
    let name = room.lock().await.config.name.clone();
    Ok(Some((invite, name)))
}

/// For the HTTP API: `requester` joins through the link `token`, exactly as the
/// `<redeem/>` IQ does. Returns the room's JID.
pub(crate) async fn redeem_link(
    server: &Arc<Server>,
    token: &str,
    requester: &str,
) -> Result<String, StanzaError> {
    let call = || Call::RedeemLink {
        token: token.to_owned(),
        requester: requester.to_owned(),
    };
    match super::elsewhere(server, call).await? {
        None => {}
        Some(Answer::Room { jid }) => return Ok(jid),
        Some(other) => return Err(other.into_error()),
    }
    let invite = server
        .store
        .muc_invite(token)
        .await
        .map_err(internal)?
        .ok_or_else(StanzaError::item_not_found)?;
    if invite.revoked {
        // Over HTTP a revoked link is gone (410), like a deleted page.
        return Err(
            StanzaError::new(kith_proto::error::StanzaErrorCondition::Gone)
                .with_text("this invite link was revoked"),
        );
    }
    let room = server.muc.existing(server, &invite.room).await?;
    let mut room = room.lock().await;
    join_by_invite(server, &mut room, &invite, requester).await?;
    Ok(room.jid.clone())
}

fn invite_element(server: &Server, invite: &RoomInvite) -> Element {
    Element::new(NS_INVITE, "invite")
        .attr("token", invite.token.clone())
        .attr("room", invite.room.clone())
        .attr(
            "url",
            server.config.muc.invite_url(&server.domain, &invite.token),
        )
        .attr("revoked", if invite.revoked { "true" } else { "false" })
}

/// `<redeem token/>` to the service: finds the room by the token.
pub(super) async fn redeem(
    server: &Arc<Server>,
    payload: &Element,
    from: &str,
) -> super::super::Response {
    let invite = find_invite(server, payload, None).await?;
    let room = server.muc.existing(server, &invite.room).await?;
    let mut room = room.lock().await;
    join_by_invite(server, &mut room, &invite, &super::bare_of(from)).await
}

/// The invite link a request's `token` names (for `room`, if given).
async fn find_invite(
    server: &Server,
    payload: &Element,
    room: Option<&str>,
) -> Result<RoomInvite, StanzaError> {
    let token = payload
        .get_attr("token")
        .ok_or_else(StanzaError::bad_request)?;
    server
        .store
        .muc_invite(token)
        .await
        .map_err(internal)?
        .filter(|invite| room.is_none_or(|room| invite.room == room))
        .ok_or_else(StanzaError::item_not_found)
}

async fn join_by_invite(
    server: &Arc<Server>,
    room: &mut Room,
    invite: &RoomInvite,
    requester: &str,
) -> super::super::Response {
    if invite.revoked {
        return Err(StanzaError::forbidden().with_text("this invite link was revoked"));
    }
    match room.affiliation(requester) {
        Affiliation::Outcast => return Err(StanzaError::forbidden()),
        current if current.is_member() => {}
        _ => {
            if room.member_count() >= server.config.muc.max_members {
                return Err(super::history::group_full());
            }
            let change = [(requester.to_owned(), Affiliation::Member)];
            super::admin::apply_affiliations(server, room, &change, &invite.created_by).await?;
        }
    }
    Ok(Some(
        Element::new(NS_INVITE, "joined").attr("room", room.jid.clone()),
    ))
}

/// Creates a group owned by `owner` (a local bare JID) with a name and members
/// (bare JIDs), for `POST /api/v1/groups`; an announcement group lets only
/// admins and owners speak (moderated, §7.4). Returns the room's JID.
pub(crate) async fn create_group(
    server: &Arc<Server>,
    owner: &str,
    name: &str,
    members: &[String],
    announcement: bool,
) -> Result<String, StanzaError> {
    let call = || Call::CreateGroup {
        owner: owner.to_owned(),
        name: name.to_owned(),
        members: members.to_vec(),
        announcement,
    };
    match super::elsewhere(server, call).await? {
        None => {}
        Some(Answer::Room { jid }) => return Ok(jid),
        Some(other) => return Err(other.into_error()),
    }
    if members.len() + 1 > server.config.muc.max_members {
        return Err(super::history::group_full());
    }
    let domain = server
        .muc
        .domain(server)
        .ok_or_else(StanzaError::service_unavailable)?
        .to_owned();
    let room_jid = format!("{}@{domain}", crate::random_id(12).to_lowercase());
    let room = super::create_room(server, &room_jid, owner).await?;
    let mut room = room.lock().await;
    let mut config = room.config.clone();
    config.name = name.chars().take(1024).collect();
    config.moderated = announcement;
    let text = serde_json::to_string(&config).map_err(internal)?;
    server
        .store
        .muc_set_config(&room_jid, &text)
        .await
        .map_err(internal)?;
    room.config = config;
    let mut changes = Vec::new();
    for member in members {
        let bare = Jid::new(member)
            .map_err(|_| StanzaError::jid_malformed())?
            .to_bare()
            .to_string();
        if bare != owner && !changes.iter().any(|(jid, _)| *jid == bare) {
            changes.push((bare, Affiliation::Member));
        }
    }
    super::admin::apply_affiliations(server, &mut room, &changes, owner).await?;
    Ok(room_jid)
}
