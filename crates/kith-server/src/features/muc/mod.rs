//! Multi-User Chat (XEP-0045) at `<subdomain>.<domain>`, with WhatsApp group
//! semantics on top: a room any client creates is a persistent, members-only
//! group unless configured otherwise, and every message to a group is appended
//! to each member's inbox log (DESIGN.md, "the inbox log") in one transaction,
//! then handed to their online devices. Members who are offline, or online but
//! not in the room, get it at their next login like any message.
//!
//! * `room.rs` — room state and the privilege rules (§5), no I/O.
//! * `form.rs` — the `muc#roomconfig` form (§10.2) and `muc#roominfo` (§15.5.4).
//! * `admin.rs` — affiliations and roles (§8, §9, §10.3–10.9), the owner's
//!   configuration and room destruction (§10).
//! * `history.rs` — the fan-out into the inbox logs, the room archive (XEP-0313
//!   §6 over the room's own log), history on join (§7.2.15), moderation
//!   (XEP-0425).
//! * `invite.rs` — mediated invitations (§7.8.2) and invite links
//!   (`urn:kith:group-invite:0`).
//!
//! Every stanza for the service's domain arrives through [`route`] with its
//! `from` already stamped by the sender's session; what the room says goes out
//! through [`send_to`] (occupants' sessions) or the inbox log (members).

mod admin;
mod form;
mod history;
pub(crate) mod invite;
mod room;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::{Element, Jid, StanzaError, ns};

use crate::Server;
use crate::cluster::{Answer, Call, Handled, Invite};
use room::{Affiliation, Occupant, Role, Room, RoomConfig};

pub(crate) use admin::account_deleted;
#[allow(unused_imports)]
pub(crate) use invite::create_group;

/// XEP-0045 namespaces.
pub(crate) const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub(crate) const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub(crate) const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub(crate) const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0421 occupant identifiers.
const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0425 (v0.3) moderated retraction.
pub(crate) const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
/// kith's invite links (documented in `invite.rs`).
pub(crate) const NS_INVITE: &str = "urn:kith:group-invite:0";

/// The service: its domain and the rooms loaded in memory.
pub(crate) struct Muc {
    domain: String,
    rooms: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Room>>>>,
}

impl Muc {
    pub(crate) fn new(config: &crate::Config) -> Muc {
        Muc {
            domain: config.muc.service_domain(&config.server.domain),
            rooms: std::sync::Mutex::default(),
        }
    }

    /// The service's domain, if it runs.
    pub(crate) fn domain<'a>(&'a self, server: &Server) -> Option<&'a str> {
        server.config.muc.enabled.then_some(self.domain.as_str())
    }

    /// Whether stanzas to `domain` are for this service.
    pub(crate) fn serves(&self, server: &Server, domain: &str) -> bool {
        self.domain(server) == Some(domain)
    }

    fn loaded(&self, jid: &str) -> Option<Arc<tokio::sync::Mutex<Room>>> {
        self.lock().get(jid).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Room>>>> {
        // A panic while holding this lock leaves the map itself consistent.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The room, loaded from the store if needed; `None` if it doesn't exist.
    async fn room(
        &self,
        server: &Server,
        jid: &str,
    ) -> Result<Option<Arc<tokio::sync::Mutex<Room>>>, StanzaError> {
        if let Some(room) = self.loaded(jid) {
            return Ok(Some(room));
        }
        let Some(stored) = server.store.muc_room(jid).await.map_err(internal)? else {
            return Ok(None);
        };
        let affiliations = server.store.muc_affiliations(jid).await.map_err(internal)?;
        let config = serde_json::from_str::<RoomConfig>(&stored.config).unwrap_or_else(|error| {
            tracing::warn!(room = jid, %error, "unreadable room configuration; using defaults");
            RoomConfig::group_defaults(server.config.muc.history_from_join)
        });
        let room = Room {
            jid: jid.to_owned(),
            config,
            subject: stored.subject,
            subject_by: stored.subject_by,
            affiliations: affiliations
                .into_iter()
                .filter_map(|a| {
                    Affiliation::parse(&a.affiliation).map(|aff| (a.jid, (aff, a.since_micros)))
                })
                .collect(),
            occupants: BTreeMap::new(),
            recent: Arc::default(),
        };
        // Members from before rooms kept where each member's log stands start
        // at the room's head (their copies are in their logs already); for the
        // rest this changes nothing.
        server
            .store
            .room_join(jid, local_owners(server, &room))
            .await
            .map_err(internal)?;
        // Another task may have loaded it meanwhile: keep the first.
        let mut rooms = self.lock();
        Ok(Some(
            rooms
                .entry(jid.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(room)))
                .clone(),
        ))
    }

    /// The room, which must exist (`item-not-found` otherwise).
    async fn existing(
        &self,
        server: &Server,
        jid: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Room>>, StanzaError> {
        self.room(server, jid)
            .await?
            .ok_or_else(StanzaError::item_not_found)
    }

    fn forget(&self, jid: &str) {
        self.lock().remove(jid);
    }

    /// Forgets every loaded room (this node stopped hosting them).
    pub(crate) fn forget_all(&self) {
        self.lock().clear();
    }

    /// Every occupant session of every loaded room: (room, nick, full JID).
    pub(crate) async fn occupant_sessions(&self) -> Vec<(String, String, String)> {
        let rooms: Vec<_> = self.lock().values().cloned().collect();
        let mut sessions = Vec::new();
        for room in rooms {
            let room = room.lock().await;
            for (nick, occupant) in &room.occupants {
                for full in &occupant.sessions {
                    sessions.push((room.jid.clone(), nick.clone(), full.clone()));
                }
            }
        }
        sessions
    }
}

fn internal(error: impl std::fmt::Display) -> StanzaError {
    tracing::error!(%error, "group chat storage failed");
    StanzaError::internal()
}

/// A stanza for the service's domain, from a local user's session. In a
/// cluster it is handled where the groups are hosted (`cluster::groups`),
/// and this returns once it has been.
pub(crate) async fn route(server: &Arc<Server>, stanza: Element, to: &Jid) {
    let Some(from) = sender(server, &stanza) else {
        return;
    };
    if let Some(cluster) = &server.cluster {
        match cluster.hand_to_groups(server, &stanza).await {
            Ok(Handled::There(())) => return,
            Ok(Handled::Here) => {}
            Err(error) => {
                crate::deliver::bounce(server, &stanza, error).await;
                return;
            }
        }
    }
    dispatch(server, stanza, &from, to).await;
}

/// A stanza another node handed to this one, the groups' host.
pub(crate) async fn handle(server: &Arc<Server>, stanza: Element) {
    let Some(to) = stanza.get_attr("to").and_then(|t| Jid::new(t).ok()) else {
        return;
    };
    if !server.muc.serves(server, to.domain().as_str()) {
        return;
    }
    let Some(from) = sender(server, &stanza) else {
        return;
    };
    dispatch(server, stanza, &from, &to).await;
}

/// An occupant session that no node holds any more (its node stopped without
/// a word): it leaves the room as if it had sent unavailable presence.
pub(crate) async fn ghost_left(server: &Arc<Server>, room: &str, nick: &str, full: &str) {
    let Ok(to) = Jid::new(&format!("{room}/{nick}")) else {
        return;
    };
    let presence = Element::new(ns::CLIENT, "presence")
        .attr("type", "unavailable")
        .attr("from", full)
        .attr("to", to.to_string());
    tracing::info!(room, full, "an occupant whose session no node holds leaves");
    dispatch(server, presence, full, &to).await;
}

/// The sending session's full JID; only local users' sessions reach the
/// service (no server-to-server yet).
fn sender(server: &Server, stanza: &Element) -> Option<String> {
    let from = stanza.get_attr("from").and_then(|f| Jid::new(f).ok())?;
    (server.is_local_user(&from) && from.resource().is_some()).then(|| from.to_string())
}

async fn dispatch(server: &Arc<Server>, stanza: Element, from: &str, to: &Jid) {
    match stanza.name.as_str() {
        "presence" => presence(server, stanza, from, to).await,
        "message" => message(server, stanza, from, to).await,
        _ => iq(server, stanza, from, to).await,
    }
}

/// Queues `stanza` for the session with this full JID, if it is online (in a
/// cluster, on whichever node holds it).
pub(crate) fn send_to(server: &Server, full: &str, mut stanza: Element) {
    let Ok(jid) = Jid::new(full) else { return };
    let Some(resource) = jid.resource() else {
        return;
    };
    stanza.set_attr("to", full);
    let bare = jid.to_bare();
    let session = server.router.with_sessions(bare.as_str(), |sessions| {
        sessions
            .iter()
            .find(|s| s.jid.resource().as_str() == resource.as_str())
            .cloned()
    });
    match (session, &server.cluster) {
        (Some(session), _) => {
            session.send(Arc::new(stanza));
        }
        (None, Some(cluster)) => cluster.hand(
            bare.as_str(),
            crate::cluster::Select::Resource(resource.as_str().to_owned()),
            &stanza,
        ),
        (None, None) => {}
    }
}

/// In a cluster, runs `call` where the groups are hosted unless that is
/// here: `None` means run it here.
async fn elsewhere(
    server: &Arc<Server>,
    call: impl FnOnce() -> Call,
) -> Result<Option<Answer>, StanzaError> {
    let Some(cluster) = &server.cluster else {
        return Ok(None);
    };
    if cluster.hosts_groups() {
        return Ok(None);
    }
    match cluster.call_groups(server, call()).await? {
        Handled::Here => Ok(None),
        Handled::There(answer) => Ok(Some(answer)),
    }
}

/// Runs a call another node handed to this one, the groups' host.
pub(crate) async fn run_call(server: &Arc<Server>, call: Call) -> Answer {
    let outcome = match call {
        Call::CreateGroup {
            owner,
            name,
            members,
            announcement,
        } => invite::create_group(server, &owner, &name, &members, announcement)
            .await
            .map(|jid| Answer::Room { jid }),
        Call::CreateLink { room, requester } => invite::create_link(server, &room, &requester)
            .await
            .map(|(invite, url)| Answer::Link {
                invite: Invite::from(&invite),
                url,
            }),
        Call::RevokeLink {
            room,
            token,
            requester,
        } => invite::revoke_link(server, &room, &token, &requester)
            .await
            .map(|()| Answer::Done),
        Call::LinkPreview { token } => {
            invite::link_preview(server, &token)
                .await
                .map(|link| Answer::Preview {
                    link: link.map(|(invite, name)| (Invite::from(&invite), name)),
                })
        }
        Call::RedeemLink { token, requester } => invite::redeem_link(server, &token, &requester)
            .await
            .map(|jid| Answer::Room { jid }),
        Call::AccountDeleted { bare } => {
            account_deleted(server, &bare).await.map(|()| Answer::Done)
        }
    };
    outcome.unwrap_or_else(|error| Answer::refused(&error))
}

fn bare_of(full: &str) -> String {
    Jid::new(full).map_or_else(|_| full.to_owned(), |j| j.to_bare().to_string())
}

/// Members whose owed messages one commit copies when a room is destroyed.
const LEAVE_CHUNK: usize = 8;

/// The username of a user of this server (`None` for another server's users):
/// the owner of their inbox log.
fn local_user<'a>(server: &Server, bare: &'a str) -> Option<&'a str> {
    let (node, domain) = bare.split_once('@')?;
    (domain == server.domain).then_some(node)
}

/// The room's local members: their logs' owners and bare JIDs.
fn local_members(server: &Server, room: &Room) -> Vec<kith_store::RoomMember> {
    room.members()
        .into_iter()
        .filter_map(|bare| {
            let owner = local_user(server, bare)?;
            Some(kith_store::RoomMember {
                owner: owner.to_owned(),
                bare: bare.to_owned(),
            })
        })
        .collect()
}

/// The usernames of the room's local members.
fn local_owners(server: &Server, room: &Room) -> Vec<String> {
    local_members(server, room)
        .into_iter()
        .map(|member| member.owner)
        .collect()
}

// ----------------------------------------------------------------------
// presence: entering, changing status, leaving (§7.2, §7.7, §7.14)
// ----------------------------------------------------------------------

async fn presence(server: &Arc<Server>, presence: Element, from: &str, to: &Jid) {
    let Some(room_node) = to.node() else {
        return;
    };
    let room_jid = format!("{}@{}", room_node.as_str(), to.domain().as_str());
    match presence.get_attr("type").unwrap_or("") {
        "" => {
            let Some(nick) = to.resource().map(|r| r.as_str().to_owned()) else {
                // §7.2.1: entering needs a nickname.
                let error = StanzaError::jid_malformed().with_text("a nickname is required");
                send_to(server, from, error.reply_to(&presence));
                return;
            };
            if let Err(error) = enter(server, &presence, from, &room_jid, &nick).await {
                let mut reply = error.reply_to(&presence);
                reply.push_child(Element::new(NS_MUC, "x"));
                send_to(server, from, reply);
            }
        }
        "unavailable" => leave(server, &room_jid, from, &presence).await,
        // Subscriptions and errors to a room mean nothing here.
        _ => {}
    }
}

/// §7.2: enters a room (creating it, §10.1, if it doesn't exist), or updates the
/// presence of an occupant already in it.
async fn enter(
    server: &Arc<Server>,
    presence: &Element,
    from: &str,
    room_jid: &str,
    nick: &str,
) -> Result<(), StanzaError> {
    let bare = bare_of(from);
    let (room, created) = match server.muc.room(server, room_jid).await? {
        Some(room) => (room, false),
        None => (create_room(server, room_jid, &bare).await?, true),
    };
    let mut room = room.lock().await;
    let payload = presence_payload(presence);
    if let Some(current) = room.nick_of(from).map(str::to_owned) {
        if current == nick {
            // §7.7: a status change, broadcast to everyone.
            if let Some(occupant) = room.occupants.get_mut(nick) {
                occupant.presence = payload;
            }
            broadcast_presence(server, &room, nick, &[]);
            return Ok(());
        }
        // §7.6: a nick change is leaving under the old nick, entering under the new.
        if room.occupants.get(nick).is_some_and(|o| o.bare != bare) {
            return Err(StanzaError::new(StanzaErrorCondition::Conflict)
                .with_text("that nickname is in use"));
        }
        remove_session(server, &mut room, from, &["303"], Some(nick));
    }
    room.check_entry(&bare, nick, server.config.muc.max_occupants)?;
    let affiliation = room.affiliation(&bare);
    let role = room.default_role(affiliation);
    let occupant_id = occupant_id(server, room_jid, &bare).await;
    let existing: Vec<String> = room
        .occupants
        .keys()
        .filter(|n| n.as_str() != nick)
        .cloned()
        .collect();
    let occupant = room
        .occupants
        .entry(nick.to_owned())
        .or_insert_with(|| Occupant {
            bare: bare.clone(),
            sessions: Vec::new(),
            role,
            occupant_id,
            presence: payload.clone(),
        });
    occupant.presence = payload;
    if !occupant.sessions.iter().any(|s| s == from) {
        occupant.sessions.push(from.to_owned());
    }
    // §7.2.3: the others' presence first, then our own (with status 110 last).
    let receiver_role = role;
    for other in &existing {
        if let Some(presence) = occupant_presence(&room, other, receiver_role, &[]) {
            send_to(server, from, presence);
        }
    }
    let mut codes = Vec::new();
    if room.config.whois == room::Whois::Anyone {
        // §7.2.5: the room is non-anonymous.
        codes.push("100");
    }
    if created {
        // §10.1.1: a new room (kith creates it unlocked, with group defaults).
        codes.push("201");
    }
    broadcast_presence(server, &room, nick, &codes);
    history::on_join(server, &room, presence, from, &bare).await;
    // §7.2.16: the subject comes last, even when empty.
    let subject_from = if room.subject_by.is_empty() {
        room.jid.clone()
    } else {
        format!("{}/{}", room.jid, room.subject_by)
    };
    let subject = Element::new(ns::CLIENT, "message")
        .attr("type", "groupchat")
        .attr("from", subject_from)
        .attr("id", crate::random_id(16))
        .child(Element::new(ns::CLIENT, "subject").text(room.subject.clone()));
    send_to(server, from, subject);
    Ok(())
}

/// §10.1: the first entrant creates the room and owns it. kith creates it
/// unlocked with the group defaults, which the owner may then change (§10.1.3).
async fn create_room(
    server: &Arc<Server>,
    room_jid: &str,
    owner: &str,
) -> Result<Arc<tokio::sync::Mutex<Room>>, StanzaError> {
    let owned = server
        .store
        .muc_rooms_owned_by(owner)
        .await
        .map_err(internal)?;
    if owned >= server.config.muc.max_rooms_per_user as i64 {
        return Err(
            StanzaError::new(StanzaErrorCondition::NotAllowed).with_text("you own too many rooms")
        );
    }
    let config = RoomConfig::group_defaults(server.config.muc.history_from_join);
    let text = serde_json::to_string(&config).map_err(internal)?;
    let created = server
        .store
        .muc_create_room(room_jid, &text, owner, crate::now_micros())
        .await
        .map_err(internal)?;
    if !created {
        // Lost a race with another creator: it exists now.
        tracing::debug!(room = room_jid, "room created concurrently");
    } else {
        tracing::info!(room = room_jid, "room created");
    }
    server
        .muc
        .room(server, room_jid)
        .await?
        .ok_or_else(StanzaError::internal)
}

/// The presence children an occupant shares (minus any MUC protocol elements).
fn presence_payload(presence: &Element) -> Element {
    let mut payload = Element::new(ns::CLIENT, "presence");
    for child in presence.elements() {
        if child.ns != NS_MUC && child.ns != NS_USER && child.ns != NS_OCCUPANT_ID {
            payload.push_child(child.clone());
        }
    }
    payload
}

/// An occupant's presence as a receiver with `receiver_role` sees it.
fn occupant_presence(
    room: &Room,
    nick: &str,
    receiver_role: Role,
    codes: &[&str],
) -> Option<Element> {
    let occupant = room.occupants.get(nick)?;
    let mut presence = occupant.presence.clone();
    presence.set_attr("from", format!("{}/{nick}", room.jid));
    let mut item = Element::new(NS_USER, "item")
        .attr("affiliation", room.affiliation(&occupant.bare).as_str())
        .attr("role", occupant.role.as_str());
    if room.shows_jids_to(receiver_role)
        && let Some(first) = occupant.sessions.first()
    {
        item.set_attr("jid", first.clone());
    }
    let mut x = Element::new(NS_USER, "x").child(item);
    for code in codes {
        x.push_child(Element::new(NS_USER, "status").attr("code", *code));
    }
    presence.push_child(x);
    presence.push_child(
        Element::new(NS_OCCUPANT_ID, "occupant-id").attr("id", occupant.occupant_id.clone()),
    );
    Some(presence)
}

/// Sends `nick`'s presence to every occupant: the user's own sessions with
/// status 110 and `codes`, the others with `codes` minus the self-only ones.
fn broadcast_presence(server: &Server, room: &Room, nick: &str, codes: &[&str]) {
    for (other_nick, other) in &room.occupants {
        let same_user = other_nick == nick;
        let mut with = codes.to_vec();
        if same_user {
            with.push("110");
        } else {
            with.retain(|c| !matches!(*c, "201" | "100" | "110"));
        }
        let Some(presence) = occupant_presence(room, nick, other.role, &with) else {
            return;
        };
        for session in &other.sessions {
            send_to(server, session, presence.clone());
        }
    }
}

/// Removes one session from the room; the occupant goes when their last session
/// does, with `unavailable` (carrying `codes`) to everyone.
fn remove_session(
    server: &Server,
    room: &mut Room,
    session: &str,
    codes: &[&str],
    new_nick: Option<&str>,
) {
    let Some(nick) = room.nick_of(session).map(str::to_owned) else {
        return;
    };
    let Some(occupant) = room.occupants.get_mut(&nick) else {
        return;
    };
    occupant.sessions.retain(|s| s != session);
    let last = occupant.sessions.is_empty();
    let mut gone = occupant.clone();
    gone.role = Role::None;
    let affiliation = room.affiliation(&gone.bare).as_str();
    let occupant_jid = format!("{}/{nick}", room.jid);
    let whois_anyone = room.config.whois == room::Whois::Anyone;
    let unavailable = |receiver_role: Role, own: bool| {
        let mut presence = Element::new(ns::CLIENT, "presence")
            .attr("type", "unavailable")
            .attr("from", occupant_jid.clone());
        let mut item = Element::new(NS_USER, "item")
            .attr("affiliation", affiliation)
            .attr("role", "none");
        if let Some(new_nick) = new_nick {
            item.set_attr("nick", new_nick);
        }
        if whois_anyone || receiver_role == Role::Moderator {
            item.set_attr("jid", session);
        }
        let mut x = Element::new(NS_USER, "x").child(item);
        for code in codes {
            x.push_child(Element::new(NS_USER, "status").attr("code", *code));
        }
        if own {
            x.push_child(Element::new(NS_USER, "status").attr("code", "110"));
        }
        presence.push_child(x);
        presence.push_child(
            Element::new(NS_OCCUPANT_ID, "occupant-id").attr("id", gone.occupant_id.clone()),
        );
        presence
    };
    send_to(server, session, unavailable(gone.role, true));
    if !last {
        return;
    }
    room.occupants.remove(&nick);
    for other in room.occupants.values() {
        let presence = unavailable(other.role, false);
        for s in &other.sessions {
            send_to(server, s, presence.clone());
        }
    }
}

/// §7.14: an occupant leaves (or its session ended). A temporary room goes when
/// its last occupant does (§10.1.2).
async fn leave(server: &Arc<Server>, room_jid: &str, from: &str, _presence: &Element) {
    let Some(room) = server.muc.loaded(room_jid) else {
        return;
    };
    let mut room = room.lock().await;
    remove_session(server, &mut room, from, &[], None);
    if room.occupants.is_empty() && !room.config.persistent {
        destroy(server, &mut room, None).await;
    }
}

/// Removes every session of `bare` from the room with these status codes (a
/// kick, a ban, a removal from a members-only room, §9.2 / §9.5 / §9.8).
fn remove_user(server: &Server, room: &mut Room, bare: &str, codes: &[&str]) {
    let sessions: Vec<String> = room
        .occupants
        .values()
        .filter(|o| o.bare == bare)
        .flat_map(|o| o.sessions.clone())
        .collect();
    for session in sessions {
        remove_session(server, room, &session, codes, None);
    }
}

/// §10.9: destroys the room, telling occupants (with an alternate venue, if any).
async fn destroy(server: &Arc<Server>, room: &mut Room, reason: Option<Element>) {
    for (nick, occupant) in std::mem::take(&mut room.occupants) {
        let mut destroy = Element::new(NS_USER, "destroy");
        if let Some(reason) = &reason {
            destroy.push_child(reason.clone());
        }
        let presence = Element::new(ns::CLIENT, "presence")
            .attr("type", "unavailable")
            .attr("from", format!("{}/{nick}", room.jid))
            .child(
                Element::new(NS_USER, "x")
                    .child(
                        Element::new(NS_USER, "item")
                            .attr("affiliation", "none")
                            .attr("role", "none"),
                    )
                    .child(destroy),
            );
        for session in &occupant.sessions {
            send_to(server, session, presence.clone());
        }
    }
    // Members are owed nothing by a room that is gone: what they were owed
    // goes into their logs first, a few members per commit (all 1,023 of a
    // benchmark's group in one transaction, 740,000 copies, held the writer,
    // and every other message, for 2.8 s).
    for members in local_owners(server, room).chunks(LEAVE_CHUNK) {
        if let Err(error) = server.store.room_leave(&room.jid, members.to_vec()).await {
            tracing::error!(room = room.jid, %error, "copying what members are owed failed");
        }
    }
    if let Err(error) = server.store.muc_destroy_room(&room.jid).await {
        tracing::error!(room = room.jid, %error, "destroying a room failed");
    }
    room.affiliations.clear();
    server.muc.forget(&room.jid);
    tracing::info!(room = room.jid, "room destroyed");
}

/// XEP-0421 §4: an id stable for this user in this room that reveals nothing
/// about them: an HMAC of both under a server secret kept in the store.
async fn occupant_id(server: &Server, room: &str, bare: &str) -> String {
    use hmac::Mac;
    let Ok(mut mac) = server
        .secrets
        .mac(&server.store, crate::secrets::Secret::OccupantId)
        .await
    else {
        // Without the store's secret no stable id can be made; a random one
        // at least reveals nothing.
        return crate::random_id(16);
    };
    mac.update(room.as_bytes());
    mac.update(b"\0");
    mac.update(bare.as_bytes());
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
}

// ----------------------------------------------------------------------
// messages (§7.4, §7.5, §7.8, §8.1)
// ----------------------------------------------------------------------

async fn message(server: &Arc<Server>, message: Element, from: &str, to: &Jid) {
    let Some(room_node) = to.node() else {
        if message.get_attr("type") != Some("error") {
            send_to(
                server,
                from,
                StanzaError::service_unavailable().reply_to(&message),
            );
        }
        return;
    };
    let room_jid = format!("{}@{}", room_node.as_str(), to.domain().as_str());
    let kind = message.get_attr("type").unwrap_or("normal").to_owned();
    let result = match (kind.as_str(), to.resource()) {
        ("error", _) => Ok(()),
        ("groupchat", None) => groupchat(server, &message, from, &room_jid).await,
        // §7.5: private messages to an occupant.
        (_, Some(nick)) => private_message(server, &message, from, &room_jid, nick.as_str()).await,
        (_, None)
            if message
                .get_child("x", NS_USER)
                .is_some_and(|x| x.has_child("invite", NS_USER)) =>
        {
            invite::mediated(server, &message, from, &room_jid).await
        }
        (_, None) if admin::is_voice_form(&message) => {
            admin::voice_request(server, &message, from, &room_jid).await
        }
        // Declines and anything else addressed to the room itself.
        (_, None) => Ok(()),
    };
    if let Err(error) = result {
        send_to(server, from, error.reply_to(&message));
    }
}

async fn groupchat(
    server: &Arc<Server>,
    message: &Element,
    from: &str,
    room_jid: &str,
) -> Result<(), StanzaError> {
    let room = server.muc.existing(server, room_jid).await?;
    let mut room = room.lock().await;
    // §7.4: only occupants may send to the room.
    let nick = room.occupant_nick(from)?;
    let role = room.occupants.get(&nick).map_or(Role::None, |o| o.role);
    if message.has_child("subject", ns::CLIENT) && !message.has_child("body", ns::CLIENT) {
        // §8.1: changing the subject.
        if !room.may_change_subject(role) {
            return Err(StanzaError::forbidden().with_text("only admins can edit the group info"));
        }
        let subject = message
            .child_text("subject", ns::CLIENT)
            .unwrap_or_default();
        server
            .store
            .muc_set_subject(room_jid, &subject, &nick)
            .await
            .map_err(internal)?;
        room.subject = subject;
        room.subject_by = nick.clone();
        let mut reflected = message.clone();
        reflected.set_attr("from", format!("{room_jid}/{nick}"));
        for occupant in room.occupants.values() {
            for session in &occupant.sessions {
                send_to(server, session, reflected.clone());
            }
        }
        return Ok(());
    }
    // §7.4: a visitor (no voice in a moderated room, i.e. a member of an
    // announcement group) gets <forbidden/>.
    if role < Role::Participant {
        return Err(StanzaError::forbidden()
            .with_type(kith_proto::StanzaErrorType::Auth)
            .with_text("only admins can send messages to this group"));
    }
    let queued = history::from_occupant(server, &mut room, message, from, &nick).await?;
    // The room is free for its next message while this one is committed.
    drop(room);
    match queued {
        Some(queued) => queued.committed().await,
        None => Ok(()),
    }
}

/// §7.5: a private message to one occupant, from an occupant.
async fn private_message(
    server: &Arc<Server>,
    message: &Element,
    from: &str,
    room_jid: &str,
    to_nick: &str,
) -> Result<(), StanzaError> {
    let room = server.muc.existing(server, room_jid).await?;
    let room = room.lock().await;
    let nick = room.occupant_nick(from)?;
    let Some(target) = room.occupants.get(to_nick) else {
        return Err(StanzaError::item_not_found());
    };
    let mut forwarded = message.clone();
    forwarded.set_attr("from", format!("{room_jid}/{nick}"));
    forwarded.push_child(Element::new(NS_USER, "x"));
    for session in &target.sessions {
        send_to(server, session, forwarded.clone());
    }
    Ok(())
}

// ----------------------------------------------------------------------
// IQ requests to the service, a room or an occupant
// ----------------------------------------------------------------------

async fn iq(server: &Arc<Server>, iq: Element, from: &str, to: &Jid) {
    let kind = iq.get_attr("type").unwrap_or("");
    if !matches!(kind, "get" | "set") {
        // Answers to nothing the service asked: dropped.
        return;
    }
    let mut payloads = iq.elements();
    let (Some(payload), None) = (payloads.next(), payloads.next()) else {
        send_to(server, from, StanzaError::bad_request().reply_to(&iq));
        return;
    };
    let set = kind == "set";
    let response = match (to.node(), to.resource()) {
        (None, _) => service_iq(server, payload, set, from).await,
        (Some(node), resource) => {
            let room_jid = format!("{}@{}", node.as_str(), to.domain().as_str());
            match resource {
                Some(nick) => occupant_iq(server, payload, from, &room_jid, nick.as_str()).await,
                None => room_iq(server, payload, set, from, &room_jid).await,
            }
        }
    };
    let reply = match response {
        Ok(payload) => {
            let mut reply = super::result_for(&iq, payload);
            reply.remove_attr("to");
            reply
        }
        Err(error) => error.reply_to(&iq),
    };
    send_to(server, from, reply);
}

async fn service_iq(
    server: &Arc<Server>,
    payload: &Element,
    set: bool,
    from: &str,
) -> super::Response {
    match (payload.name.as_str(), payload.ns.as_str(), set) {
        ("query", ns::DISCO_INFO, false) => {
            if payload.get_attr("node").is_some() {
                return Err(StanzaError::item_not_found());
            }
            Ok(Some(
                Element::new(ns::DISCO_INFO, "query")
                    .child(
                        Element::new(ns::DISCO_INFO, "identity")
                            .attr("category", "conference")
                            .attr("type", "text")
                            .attr("name", "Groups"),
                    )
                    .child(feature(ns::DISCO_INFO))
                    .child(feature(ns::DISCO_ITEMS))
                    .child(feature(NS_MUC))
                    .child(feature(NS_INVITE))
                    .child(feature(NS_OCCUPANT_ID)),
            ))
        }
        ("query", ns::DISCO_ITEMS, false) => {
            // §6.3: public rooms only; hidden ones (every group by default) are not listed.
            let rooms = server.store.muc_rooms().await.map_err(internal)?;
            let mut query = Element::new(ns::DISCO_ITEMS, "query");
            for stored in rooms {
                let Ok(config) = serde_json::from_str::<RoomConfig>(&stored.config) else {
                    continue;
                };
                if config.public {
                    query.push_child(
                        Element::new(ns::DISCO_ITEMS, "item")
                            .attr("jid", stored.jid.clone())
                            .attr("name", config.name.clone()),
                    );
                }
            }
            Ok(Some(query))
        }
        ("redeem", NS_INVITE, true) => invite::redeem(server, payload, from).await,
        ("ping", ns::PING, false) => Ok(None),
        (_, _, _) => Err(StanzaError::service_unavailable()),
    }
}

/// IQs to `room/nick`: XEP-0410 self-ping; everything else is refused.
async fn occupant_iq(
    server: &Arc<Server>,
    payload: &Element,
    from: &str,
    room_jid: &str,
    nick: &str,
) -> super::Response {
    let Some(room) = server.muc.loaded(room_jid) else {
        return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable));
    };
    let room = room.lock().await;
    // XEP-0410 §3: a client not (or no longer) in the room gets not-acceptable.
    if room.nick_of(from) != Some(nick) {
        return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable));
    }
    if payload.is("ping", ns::PING) {
        Ok(None)
    } else {
        Err(StanzaError::feature_not_implemented())
    }
}

async fn room_iq(
    server: &Arc<Server>,
    payload: &Element,
    set: bool,
    from: &str,
    room_jid: &str,
) -> super::Response {
    let room = server.muc.existing(server, room_jid).await?;
    let mut room = room.lock().await;
    let requester = bare_of(from);
    match (payload.name.as_str(), payload.ns.as_str(), set) {
        ("query", ns::DISCO_INFO, false) => Ok(Some(room_info(&room))),
        ("query", ns::DISCO_ITEMS, false) => Ok(Some(Element::new(ns::DISCO_ITEMS, "query"))),
        ("query", NS_ADMIN, _) => admin::admin(server, &mut room, payload, set, from).await,
        ("query", NS_OWNER, _) => admin::owner(server, &mut room, payload, set, &requester).await,
        ("query", super::mam::NS, true) => history::mam(server, &room, payload, from).await,
        ("query", super::mam::NS, false) => Ok(Some(super::mam::query_form())),
        ("moderate", NS_MODERATE, true) => {
            history::moderate(server, &mut room, payload, from).await
        }
        (_, NS_INVITE, _) => invite::links(server, &mut room, payload, set, &requester).await,
        ("vCard", ns::VCARD, false) => {
            let xml = server.store.vcard(room_jid).await.map_err(internal)?;
            match xml.and_then(|x| {
                kith_proto::stream::parse_fragment(x.as_bytes(), Default::default()).ok()
            }) {
                Some(vcard) => Ok(Some(vcard)),
                None => Ok(Some(Element::new(ns::VCARD, "vCard"))),
            }
        }
        ("vCard", ns::VCARD, true) => {
            // Room avatars: whoever may edit the group info may set them.
            let role = room.role_of(from);
            let affiliation = room.affiliation(&requester);
            if affiliation < Affiliation::Admin && !room.may_change_subject(role) {
                return Err(StanzaError::forbidden());
            }
            if payload.to_xml("").len() > 128 * 1024 {
                return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_text("the vCard is too large"));
            }
            server
                .store
                .set_vcard(room_jid, &payload.to_xml(""))
                .await
                .map_err(internal)?;
            admin::config_changed(server, &room);
            Ok(None)
        }
        ("ping", ns::PING, false) => Ok(None),
        _ => Err(StanzaError::service_unavailable()),
    }
}

fn feature(var: &str) -> Element {
    Element::new(ns::DISCO_INFO, "feature").attr("var", var)
}

/// §6.4: the room's identity, features and information form.
fn room_info(room: &Room) -> Element {
    let config = &room.config;
    let name = if config.name.is_empty() {
        room.jid.split('@').next().unwrap_or_default().to_owned()
    } else {
        config.name.clone()
    };
    let pick = |on: bool, yes: &'static str, no: &'static str| if on { yes } else { no };
    let features = [
        ns::DISCO_INFO,
        NS_MUC,
        pick(config.persistent, "muc_persistent", "muc_temporary"),
        pick(config.members_only, "muc_membersonly", "muc_open"),
        pick(config.public, "muc_public", "muc_hidden"),
        pick(
            config.whois == room::Whois::Anyone,
            "muc_nonanonymous",
            "muc_semianonymous",
        ),
        pick(config.moderated, "muc_moderated", "muc_unmoderated"),
        "muc_unsecured",
        super::mam::NS,
        ns::SID,
        NS_OCCUPANT_ID,
        NS_MODERATE,
        super::retract::RETRACT,
        ns::VCARD,
        NS_INVITE,
    ];
    let mut query = Element::new(ns::DISCO_INFO, "query").child(
        Element::new(ns::DISCO_INFO, "identity")
            .attr("category", "conference")
            .attr("type", "text")
            .attr("name", name),
    );
    for var in features {
        query.push_child(feature(var));
    }
    query.child(form::info_form(config, &room.subject, room.occupants.len()))
}
