//! Routing (RFC 6121 §8): where a stanza goes once its `from` is stamped. Messages
//! worth keeping are appended to the recipient's inbox log (and the sender's, for
//! their archive) before they are handed to online devices; devices that are
//! offline read them from the log at their next login (`read_backlog`).
//!
//! Only local delivery exists today: stanzas for other domains bounce with
//! `<remote-server-not-found/>` (no server-to-server yet). Blocking (XEP-0191) is
//! enforced here, in the one place every stanza between two users passes.

use std::sync::Arc;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::xml::amend_serialized;
use kith_proto::{Element, FullJid, Jid, StanzaError, bare_str, ns};
use kith_store::NewInboxEntry;

use crate::Server;
use crate::cluster::Select;
use crate::features::{carbons, mam, retract};
use crate::session::{Reply, Session};

/// Resolves once a message queued for the inbox log is committed (and handed to
/// the recipient's online devices).
pub(crate) type Committed = tokio::sync::oneshot::Receiver<()>;

/// A message from the session's own client. Returns `Some` when the message went
/// to the inbox log and is not committed yet: the session counts it as handled
/// for XEP-0198 only once that resolves.
///
/// Not `async` itself (the routing's future is what it returns): each level of
/// `async` carries its own copy of the message in every message's handling.
pub(crate) fn message_from_client(
    session: &Session,
    mut message: Element,
    to: Option<Jid>,
) -> impl Future<Output = Option<Committed>> + use<'_> {
    // RFC 6120 §10.3.1: no `to` means the account's own bare JID.
    let to = match to {
        Some(to) => to,
        None => {
            message.set_attr("to", session.bare.as_str());
            Jid::from(session.bare.clone())
        }
    };
    let server = &session.server;
    // XEP-0280: the user's other devices see what this one sends. A message that
    // goes into the log gets its copy once logged (`log_message`), carrying the
    // sender's archive id; the rest (chat states) is copied here.
    if !storable(&message) {
        carbons::copy_to_other_devices(
            server,
            session.bare.as_str(),
            &session.jid,
            "sent",
            &message,
        );
    }
    // Both addresses as parsed already (`from` is the session's, stamped).
    route_parsed(server, message, to, Some(&session.jid))
}

/// Routes a stanza whose `from` is final to its recipient on this server, or
/// bounces it. A message that goes to the inbox log is delivered once committed;
/// the returned [`Committed`] tells when.
pub(crate) async fn route(server: &Arc<Server>, stanza: Element) -> Option<Committed> {
    let to = stanza.get_attr("to").and_then(|to| Jid::new(to).ok())?;
    let from = stanza.get_attr("from").and_then(|from| Jid::new(from).ok());
    route_parsed(server, stanza, to, from.as_ref()).await
}

/// [`route`] with the stanza's `to` and `from` parsed already.
///
/// Not an `async fn`, like the steps after it on a message's way: those store
/// their arguments twice in their future (as given, and moved into the body),
/// and a message's future, all steps nested, is allocated for every stanza
/// (`session::run`): at most 1 KiB keeps glibc's malloc on its fast path.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice"
)]
fn route_parsed(
    server: &Arc<Server>,
    stanza: Element,
    to: Jid,
    from: Option<&Jid>,
) -> impl Future<Output = Option<Committed>> + Send {
    async move {
        if server.muc.serves(server, to.domain().as_str()) {
            Box::pin(crate::features::muc::route(server, stanza, &to)).await;
            return None;
        }
        if to.domain().as_str() != server.domain {
            // RFC 6120 §10.4.3: no route to other domains (yet).
            bounce(
                server,
                &stanza,
                StanzaError::new(StanzaErrorCondition::RemoteServerNotFound),
            )
            .await;
            return None;
        }
        if to.node().is_none() {
            // Addressed to the server: nothing here takes messages or presence.
            if stanza.name == "message" {
                bounce(server, &stanza, StanzaError::service_unavailable()).await;
            }
            return None;
        }
        // XEP-0191 applies between users, not to errors the server generates, nor
        // within one account (compared by parts: no bare JIDs built per message).
        if let Some(from) = from
            && (from.node() != to.node() || from.domain() != to.domain())
        {
            // XEP-0191 §3.4: the sender blocked the recipient, matched as addressed
            // (XEP-0016 §2.1: a blocked full JID covers that resource only).
            if server.is_local_user(from) && server.blocks(node(from), &to).await {
                let blocked = Element::new(ns::BLOCKING_ERRORS, "blocked");
                let error = StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_type(kith_proto::StanzaErrorType::Cancel)
                    .with_application(blocked);
                bounce(server, &stanza, error).await;
                return None;
            }
            // XEP-0191 §3.5: the recipient blocked the sender; answer as if absent.
            if server.blocks(node(&to), from).await {
                bounce(server, &stanza, StanzaError::service_unavailable()).await;
                return None;
            }
        }
        route_checked(server, stanza, &to, from).await
    }
}

/// Delivers to a local user, past the blocking checks. `from` is the stanza's
/// `from`, parsed.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice (see `route_parsed`)"
)]
fn route_checked(
    server: &Arc<Server>,
    stanza: Element,
    to: &Jid,
    from: Option<&Jid>,
) -> impl Future<Output = Option<Committed>> + Send {
    async move {
        match stanza.name.as_str() {
            "message" => {
                let stanza = without_held_back_marker(server, stanza, to, from).await?;
                return route_message(server, stanza, to, from).await;
            }
            // Boxed: only a message's route is carried by every message's handling.
            "presence" => Box::pin(crate::features::presence::inbound(server, stanza, to)).await,
            _ => Box::pin(route_iq(server, stanza, to)).await,
        }
        None
    }
}

/// XEP-0333 `<displayed/>` (the blue ticks) flows only when sender and recipient
/// both have read receipts on (`features::privacy`). A held-back marker is removed;
/// a message that carried nothing else (no body) is dropped silently, as if the
/// message had not been read yet.
async fn without_held_back_marker(
    server: &Arc<Server>,
    mut message: Element,
    to: &Jid,
    from: Option<&Jid>,
) -> Option<Element> {
    const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";
    if !message.has_child("displayed", NS_MARKERS) {
        return Some(message);
    }
    let from = from?.to_bare();
    if Box::pin(crate::features::privacy::read_marker_allowed(
        server,
        &from,
        &to.to_bare(),
    ))
    .await
    {
        return Some(message);
    }
    if !message.has_child("body", ns::CLIENT) {
        tracing::debug!("read marker held back by privacy settings");
        return None;
    }
    message.remove_children("displayed", NS_MARKERS);
    Some(message)
}

fn node(jid: &Jid) -> &str {
    jid.node().map_or("", |n| n.as_str())
}

/// Sends `error` back to the sender of `stanza`, unless it was an error itself
/// (RFC 6120 §8.3.1: never answer an error with an error).
pub(crate) async fn bounce(server: &Arc<Server>, stanza: &Element, error: StanzaError) {
    if stanza.get_attr("type") == Some("error") || stanza.get_attr("from").is_none() {
        return;
    }
    let reply = error.reply_to(stanza);
    // The error goes back to the original sender, a local session. It is the
    // server speaking, so the blocking rules between the two users don't apply.
    let Some(to) = reply.get_attr("to").and_then(|to| Jid::new(to).ok()) else {
        return;
    };
    if server.is_local_user(&to) {
        let from = reply.get_attr("from").and_then(|from| Jid::new(from).ok());
        let _ = Box::pin(route_checked(server, reply, &to, from.as_ref())).await;
    }
}

async fn route_iq(server: &Arc<Server>, iq: Element, to: &Jid) {
    let kind = iq.get_attr("type").unwrap_or("");
    if let Some(session) = addressed_session(server, to) {
        session.send(Arc::new(iq));
        return;
    }
    if server.cluster.is_some()
        && let Some(resource) = to.resource()
    {
        // Another node may hold it: asked off the sender's session, which
        // would otherwise wait for the answer (up to two seconds).
        let (server, bare, resource) = (
            server.clone(),
            bare_str(to).to_owned(),
            resource.as_str().to_owned(),
        );
        tokio::spawn(async move {
            if let Some(cluster) = &server.cluster
                && cluster.hand_iq(&bare, &resource, &iq).await
            {
                return;
            }
            if matches!(iq.get_attr("type"), Some("get" | "set")) {
                bounce(&server, &iq, StanzaError::service_unavailable()).await;
            }
        });
        return;
    }
    // RFC 6121 §8.5.3.1 / §8.5.2.1.3: no such resource, or a bare JID the server
    // did not answer itself.
    if matches!(kind, "get" | "set") {
        bounce(server, &iq, StanzaError::service_unavailable()).await;
    }
}

/// RFC 6121 §8.5.2 / §8.5.3: message delivery by type and address.
///
/// Chat and normal messages worth keeping go into the recipient's inbox log first
/// (and a copy into the sender's, for their archive); only once committed are they
/// handed to the recipient's online devices. Devices that are offline read them
/// from the log when they next come online.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice (see `route_parsed`)"
)]
fn route_message(
    server: &Arc<Server>,
    message: Element,
    to: &Jid,
    from: Option<&Jid>,
) -> impl Future<Output = Option<Committed>> + Send {
    async move {
        /// RFC 6121 §5.2.2 message types, as far as delivery tells them apart.
        #[derive(Clone, Copy)]
        enum Kind {
            Error,
            Groupchat,
            Headline,
            ChatOrNormal,
        }
        let kind = match message.get_attr("type") {
            Some("error") => Kind::Error,
            Some("groupchat") => Kind::Groupchat,
            Some("headline") => Kind::Headline,
            _ => Kind::ChatOrNormal,
        };
        match kind {
            Kind::Error | Kind::Groupchat | Kind::Headline => {
                let bare = bare_str(to);
                let addressed = addressed_session(server, to);
                // Not here: the sessions other nodes hold take it by the same rules
                // (an error or groupchat to a bare JID goes nowhere, §8.5.2.1.1).
                if addressed.is_none()
                    && let Some(cluster) = &server.cluster
                {
                    match (to.resource(), kind) {
                        (Some(resource), _) => cluster.hand(
                            bare,
                            Select::Resource(resource.as_str().to_owned()),
                            &message,
                        ),
                        (None, Kind::Headline) => cluster.hand(bare, Select::Deliverable, &message),
                        (None, _) => {}
                    }
                }
                match kind {
                    // In a cluster, the resource may be on another node.
                    Kind::Groupchat if addressed.is_none() && server.cluster.is_some() => {}
                    Kind::Groupchat if addressed.is_none() => {
                        bounce(server, &message, StanzaError::service_unavailable()).await
                    }
                    // §8.5.2.1.1: errors to a bare JID or a gone resource are dropped.
                    Kind::Error | Kind::Groupchat => {
                        if let Some(session) = addressed {
                            session.send(Arc::new(message));
                        }
                    }
                    _ => {
                        let shared = Arc::new(message);
                        match addressed {
                            Some(session) => {
                                session.send(shared);
                            }
                            None => server.router.with_sessions(bare, |sessions| {
                                for session in
                                    sessions.iter().filter(|s| s.available() && s.priority >= 0)
                                {
                                    session.send(shared.clone());
                                }
                            }),
                        }
                    }
                }
                None
            }
            _ if storable(&message) => log_message(server, message, to, from).await,
            _ => {
                // Not archived, so no archive id (XEP-0359 §3 ties it to storage).
                let shared = Arc::new(message);
                let delivered = hand_to_devices(server, to, &shared, None);
                if delivered == 0
                    && !Box::pin(server.store.user_exists(node(to)))
                        .await
                        .unwrap_or(true)
                {
                    // §8.5.2.2.1: no such account.
                    bounce(server, &shared, StanzaError::service_unavailable()).await;
                }
                None
            }
        }
    }
}

/// The online session a full JID names, if any.
fn addressed_session(server: &Server, to: &Jid) -> Option<crate::router::SessionEntry> {
    let resource = to.resource()?;
    server.router.with_sessions(bare_str(to), |sessions| {
        sessions
            .iter()
            .find(|s| s.jid.resource().as_str() == resource.as_str())
            .cloned()
    })
}

/// Hands a chat/normal message to the recipient's online devices: the addressed
/// resource if it is online (with carbons to the others, XEP-0280 §6), otherwise
/// every available device with a non-negative priority (RFC 6121 §8.5.2.1.1 allows
/// it, and it is what "every device gets every message" means while they are
/// online). `logged`: the entry as stored and its place in the log, written to
/// the devices as it is. Returns how many got it.
fn hand_to_devices(
    server: &Server,
    to: &Jid,
    shared: &Arc<Element>,
    logged: Option<(&Arc<str>, i64)>,
) -> usize {
    let bare = bare_str(to);
    let send = |session: &crate::router::SessionEntry| match logged {
        Some((xml, seq)) => session.send_logged_xml(xml.clone(), seq),
        None => session.send(shared.clone()),
    };
    match addressed_session(server, to) {
        Some(session) => {
            match logged {
                Some((_, seq)) => carbons::copy_received(server, bare, &session.jid, shared, seq),
                None => {
                    carbons::copy_to_other_devices(server, bare, &session.jid, "received", shared)
                }
            }
            usize::from(send(&session))
        }
        None => {
            // A logged entry reaches other nodes as a wake-up (`AfterCommit`).
            if logged.is_none()
                && let Some(cluster) = &server.cluster
            {
                cluster.hand(bare, Select::Deliverable, shared);
            }
            server.router.with_sessions(bare, |sessions| {
                sessions
                    .iter()
                    .filter(|s| s.available() && s.priority >= 0)
                    .filter(|s| send(s))
                    .count()
            })
        }
    }
}

/// Queues a message for the recipient's inbox log (stamping the XEP-0359 id that
/// becomes its archive id) with a copy for a local sender's archive, and returns
/// without waiting for the commit. Once committed, from the store's commit
/// callback and so in log order, the message is handed to the recipient's online
/// devices and carbon-copied to the sender's other devices; the returned [`Committed`] then
/// resolves. A resend with the same XEP-0359 origin-id is stored and delivered
/// once.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice (see `route_parsed`)"
)]
fn log_message(
    server: &Arc<Server>,
    mut message: Element,
    to: &Jid,
    from: Option<&Jid>,
) -> impl Future<Output = Option<Committed>> + Send {
    // This future is part of every message's handling, which `session::run`
    // allocates per stanza (at most 1 KiB keeps glibc's malloc on its fast
    // path): little is held across its awaits. The archiving checks come
    // first, what builds the entries lives in a block that ends before the
    // queueing's await, and the bounce when queueing failed is boxed.
    async move {
        let recipient = bare_str(to);
        // The stanza's `from` as parsed (a client's message: its session's JID,
        // stamped), borrowed: the message itself moves on below.
        let sender = from.map_or("", |j| j.as_str());
        // XEP-0441: an entry the owner doesn't want archived is still logged for
        // delivery, without an archive id (MAM skips entries without one) and
        // without its text for search. Without an archive nothing is archived.
        let archiving = server.config.archive.enabled;
        // Boxed (here and below): what archiving reads is not carried by every
        // message's handling when it is off.
        let archived = archiving && Box::pin(mam::should_archive(server, node(to), sender)).await;
        // The sender's copy, for their archive, goes into the same commit.
        let sender_owner = from
            .filter(|j| archiving && server.is_local_user(j) && bare_str(j) != recipient)
            .and_then(|j| j.node().map(|n| n.as_str().to_owned()));
        let sender_owner = match sender_owner {
            Some(owner) if Box::pin(mam::should_archive(server, &owner, recipient)).await => {
                Some(owner)
            }
            _ => None,
        };
        let (done, committed) = tokio::sync::oneshot::channel();
        let (queued, xml) = {
            // XEP-0424: what a retraction retracts, applied once committed.
            let retraction =
                retract::retracted_id(&message).and_then(|id| Some((from?.clone(), id)));
            let sender_bare = from.map(bare_str).unwrap_or_default();
            let now = crate::now_micros();
            // Both are the message as sent (before the recipient's id is stamped), and
            // made only when needed: most messages have neither.
            let outgoing_xml = sender_owner.as_ref().map(|_| message.to_xml(""));
            let outgoing = from
                .filter(|j| server.is_local_user(j) && carbons::eligible(&message))
                // Asked before the JID is copied: most senders have no other device.
                .filter(|j| carbons::wanted(server, sender_bare, j.as_str()))
                .and_then(|j| j.clone().try_into_full().ok())
                .map(|full| (full, message.clone()));
            let stanza_id = if archived {
                stamp_stanza_id(&mut message, recipient, now)
            } else {
                String::new()
            };
            // XEP-0359 §4: the sender's origin-id identifies a resend of the same message.
            let origin = origin_id(&message).map(|id| origin_key(sender_bare, id));
            // Only indexed for search, so only read when archived.
            let body = (archived || sender_owner.is_some())
                .then(|| message.child_text("body", ns::CLIENT))
                .flatten();
            // Stored, and written to the recipient's devices as it is.
            let xml: Arc<str> = message.to_shared_xml("");
            let entry = NewInboxEntry {
                stanza_id: &stanza_id,
                sender,
                kind: "message",
                xml: &xml,
                at_micros: now,
                peer: sender_bare,
                direction: "in",
                body: body.as_deref().filter(|_| archived),
                origin: origin.as_deref(),
            };
            let own_id = sender_owner.as_ref().map(|_| crate::archive_id(now));
            // The sender's copy, if any, after the recipient's (no list allocated for one).
            let mut pair = [(node(to), entry), (node(to), entry)];
            let mut count = 1;
            if let (Some(owner), Some(own_id), Some(outgoing_xml)) =
                (&sender_owner, &own_id, &outgoing_xml)
            {
                count = 2;
                pair[1] = (
                    owner.as_str(),
                    NewInboxEntry {
                        stanza_id: own_id,
                        sender,
                        kind: "message",
                        xml: outgoing_xml,
                        at_micros: now,
                        peer: recipient,
                        direction: "out",
                        body: body.as_deref(),
                        origin: origin.as_deref(),
                    },
                );
            }
            let entries = &pair[..count];
            let after = AfterCommit {
                server: server.clone(),
                message,
                outgoing,
                to: to.clone(),
                xml: xml.clone(),
                retraction,
                own_id: own_id.clone(),
                done,
            };
            let queued = server
                .store
                .inbox_append_then(entries, move |results| after.run(results));
            (queued, xml)
        };
        match queued.await {
            Ok(()) => return Some(committed),
            // The writer is gone (shutting down): nothing was queued.
            Err(error) => tracing::error!(%error, "appending to the inbox log failed"),
        }
        let message = outgoing_bounce(&xml, sender);
        Box::pin(async move { bounce(server, &message, StanzaError::internal()).await }).await;
        None
    }
}

/// A minimal copy of a message to bounce when it could not even be queued.
fn outgoing_bounce(xml: &str, sender: &str) -> Element {
    parse_fragment(xml.as_bytes(), Limits::default())
        .unwrap_or_else(|_| Element::new(ns::CLIENT, "message").attr("from", sender))
}

/// What happens to a logged message once its append is committed. Runs on the
/// store's writer: quick, non-blocking work only (queueing to sessions);
/// anything that waits is spawned.
struct AfterCommit {
    server: Arc<Server>,
    /// As stored for the recipient (with its stanza id).
    message: Element,
    /// The same, serialised as stored.
    xml: Arc<str>,
    /// The sending device and the message as it sent it, if one of the sender's
    /// other devices wants a sent carbon.
    outgoing: Option<(FullJid, Element)>,
    to: Jid,
    /// The sender and the id of the message a retraction retracts.
    retraction: Option<(Jid, String)>,
    /// The sender's archive id for their copy, if they have one.
    own_id: Option<String>,
    done: tokio::sync::oneshot::Sender<()>,
}

impl AfterCommit {
    fn run(self, results: Vec<kith_store::Result<i64>>) {
        let AfterCommit {
            server,
            message,
            outgoing,
            to,
            xml,
            retraction,
            own_id,
            done,
        } = self;
        let mut results = results.into_iter();
        match results.next() {
            Some(Ok(seq)) => {
                let shared = Arc::new(message);
                hand_to_devices(&server, &to, &shared, Some((&xml, seq)));
                if let Some(cluster) = &server.cluster {
                    cluster.wake(bare_str(&to), seq, Some(&xml), false);
                }
                crate::features::push::on_logged(&server, node(&to), &shared);
                let own_id = own_id.filter(|_| matches!(results.next(), Some(Ok(_))));
                if let Some((sender_full, mut copy)) = outgoing {
                    // XEP-0280 sent carbon; with the sender's archive id, so the other
                    // devices can match it with what MAM returns later (XEP-0313 §3.5).
                    if let Some(own_id) = own_id {
                        copy.push_child(
                            Element::new(ns::SID, "stanza-id")
                                .attr("id", own_id)
                                .attr("by", sender_full.to_bare().to_string()),
                        );
                    }
                    carbons::copy_to_other_devices(
                        &server,
                        sender_full.to_bare().as_str(),
                        &sender_full,
                        "sent",
                        &copy,
                    );
                }
                // XEP-0424: delete for everyone leaves tombstones in both archives.
                if let Some((sender_jid, id)) = retraction {
                    let recipient = to.to_bare();
                    tokio::spawn(async move {
                        retract::apply(&server, &sender_jid, &recipient, &id).await;
                    });
                }
            }
            // A resend of a message already in the log: it was delivered then.
            Some(Err(kith_store::StoreError::Duplicate(_))) => {}
            failure => {
                let error = match failure {
                    // RFC 6121 §8.5.2.2.1: no such account.
                    Some(Err(kith_store::StoreError::NoSuchUser(_))) => {
                        StanzaError::service_unavailable()
                    }
                    other => {
                        tracing::error!(error = ?other.map(|r| r.err()), "appending to the inbox log failed");
                        StanzaError::internal()
                    }
                };
                // The message as sent, without the id stamped for the recipient.
                let mut sent = outgoing.map_or(message, |(_, sent)| sent);
                remove_stanza_ids_by(&mut sent, to.to_bare().as_str());
                tokio::spawn(async move { bounce(&server, &sent, error).await });
            }
        }
        let _ = done.send(());
    }
}

/// Removes every XEP-0359 `<stanza-id/>` that says it is by `by`.
fn remove_stanza_ids_by(message: &mut Element, by: &str) {
    message.children.retain(|node| {
        !matches!(node, kith_proto::Node::Element(e)
            if e.is("stanza-id", ns::SID) && e.get_attr("by") == Some(by))
    });
}

/// XEP-0359 §3: the recipient's server stamps a unique, stable id, and removes any
/// `<stanza-id/>` claiming to be by the recipient that came from elsewhere (§5).
/// Returns the id, which names `at_micros`, the entry's time.
fn stamp_stanza_id(message: &mut Element, recipient: &str, at_micros: i64) -> String {
    remove_stanza_ids_by(message, recipient);
    let id = crate::archive_id(at_micros);
    message.push_child(
        Element::new(ns::SID, "stanza-id")
            .attr("id", id.clone())
            .attr("by", recipient),
    );
    id
}

/// The XEP-0359 origin-id its sender gave a message, if any (an empty one is none).
pub(crate) fn origin_id(message: &Element) -> Option<&str> {
    message
        .get_child("origin-id", ns::SID)
        .and_then(|origin| origin.get_attr("id"))
        .filter(|id| !id.is_empty())
}

/// What identifies a message across its sender's resends: the sender's bare
/// JID and the origin-id (XEP-0359 §4: unique only per sender).
pub(crate) fn origin_key(sender_bare: &str, origin_id: &str) -> String {
    format!("{sender_bare}\n{origin_id}")
}

/// Whether a message is worth keeping for later (XEP-0160 §3, XEP-0334 hints):
/// chat states and no-store hints alone are not.
pub(crate) fn storable(message: &Element) -> bool {
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    const HINTS: &str = "urn:xmpp:hints";
    // One pass over the children (this runs for every message).
    let (mut no_store, mut store, mut content) = (false, false, false);
    for child in message.elements() {
        if child.ns == HINTS {
            match child.name.as_str() {
                "no-store" | "no-permanent-store" => no_store = true,
                "store" => store = true,
                _ => {}
            }
        } else if child.ns == ns::CLIENT {
            content |= child.name == "body";
        } else if child.ns != CHATSTATES && child.ns != ns::SID {
            content = true;
        }
    }
    // A no-store hint (XEP-0334 §4) wins unless the message also asks to be stored.
    store || (content && !no_store)
}

/// How many log entries one catch-up read takes.
const BACKLOG_BATCH: i64 = 500;

/// A stanza serialised by [`Element::to_xml`] (a log entry, or one serialised once
/// for many recipients) addressed `to` one of them, with `child` appended: the
/// serialiser's text is amended in place instead of parsed (most of a catch-up's
/// CPU, and of a group fan-out's); text in another form is parsed. `None`: the
/// text is not XML.
pub(crate) fn addressed(xml: &str, to: &str, child: Option<&Element>) -> Option<Reply> {
    if let Some(text) = amend_serialized(xml, "to", to, child) {
        return Some(Reply::Serialized(text));
    }
    let mut stanza = parse_fragment(xml.as_bytes(), Limits::default()).ok()?;
    stanza.set_attr("to", to);
    if let Some(child) = child {
        stanza.push_child(child.clone());
    }
    Some(Reply::Stanza(stanza))
}

/// Reads the next batch of log entries this device hasn't had and queues them for
/// its client, each with a XEP-0203 delay stamp. Called repeatedly (interleaved with
/// the session's other work) until the backlog is empty.
pub(crate) async fn read_backlog(session: &mut Session) {
    let server = session.server.clone();
    let batch = match server
        .store
        .inbox_after(&session.username, session.written_seq, BACKLOG_BATCH)
        .await
    {
        Ok(batch) => batch,
        Err(error) => {
            tracing::error!(%error, "reading the inbox log failed");
            session.backlog_pending = false;
            return;
        }
    };
    let complete = (batch.len() as i64) < BACKLOG_BATCH;
    let to = session.jid.to_string();
    // Read at a wake-up from another node (`Outbound::Wake`), an entry is live:
    // no delay stamp; so is one logged after the session was bound, which the
    // catch-up reached before its wake-up did.
    let caught_up = session.caught_up;
    for stored in batch {
        let late = !caught_up && stored.at_micros < session.bound_at;
        // The user's own sent messages are for their archive (and carbons), not
        // for redelivery to themselves. Passed over in order: the entries read
        // before it are queued, not written yet, and moving `written_seq` now
        // would make them look written.
        if stored.direction != "in" {
            session.reply_logged(Reply::Skip, stored.seq);
            continue;
        }
        // XEP-0203: a stanza delivered late says when the server received it.
        let delay = late.then(|| {
            Element::new(ns::DELAY, "delay")
                .attr("from", server.domain.clone())
                .attr("stamp", crate::datetime::format_datetime(stored.at_micros))
                .text("Offline Storage")
        });
        match addressed(&stored.xml, &to, delay.as_ref()) {
            Some(reply) => session.reply_logged(reply, stored.seq),
            None => {
                tracing::warn!(seq = stored.seq, "skipping an unreadable log entry");
                session.reply_logged(Reply::Skip, stored.seq);
            }
        }
    }
    if complete {
        session.backlog_pending = false;
        session.caught_up = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_states_alone_are_not_stored() {
        let composing = Element::new(ns::CLIENT, "message").child(Element::new(
            "http://jabber.org/protocol/chatstates",
            "composing",
        ));
        assert!(!storable(&composing));
        let body =
            Element::new(ns::CLIENT, "message").child(Element::new(ns::CLIENT, "body").text("hi"));
        assert!(storable(&body));
        let no_store = body
            .clone()
            .child(Element::new("urn:xmpp:hints", "no-store"));
        assert!(!storable(&no_store));
    }

    #[test]
    fn what_is_stored_follows_the_hints_and_the_content() {
        const HINTS: &str = "urn:xmpp:hints";
        let message = |children: &[(&str, &str)]| {
            children
                .iter()
                .fold(Element::new(ns::CLIENT, "message"), |m, (ns, name)| {
                    m.child(Element::new(ns, name))
                })
        };
        let body = (ns::CLIENT, "body");
        let receipt = ("urn:xmpp:receipts", "received");
        let state = ("http://jabber.org/protocol/chatstates", "active");
        let sid = (ns::SID, "origin-id");
        for (children, stored) in [
            (vec![], false),
            (vec![state, sid], false),
            (vec![(ns::CLIENT, "thread")], false),
            (vec![body], true),
            (vec![receipt], true),
            (vec![state, receipt], true),
            (vec![(HINTS, "store")], true),
            (vec![state, (HINTS, "store")], true),
            (vec![body, (HINTS, "no-permanent-store")], false),
            (vec![receipt, (HINTS, "no-store")], false),
            (vec![body, (HINTS, "no-store"), (HINTS, "store")], true),
            (vec![(HINTS, "store"), (HINTS, "no-store")], true),
            (vec![body, (HINTS, "no-copy")], true),
            (vec![(HINTS, "no-copy")], false),
        ] {
            assert_eq!(storable(&message(&children)), stored, "{children:?}");
        }
    }

    #[test]
    fn stanza_id_replaces_a_forged_one() {
        let mut message = Element::new(ns::CLIENT, "message").child(
            Element::new(ns::SID, "stanza-id")
                .attr("by", "juliet@localhost")
                .attr("id", "forged"),
        );
        let id = stamp_stanza_id(&mut message, "juliet@localhost", crate::now_micros());
        let ids: Vec<_> = message
            .elements()
            .filter(|e| e.is("stanza-id", ns::SID))
            .collect();
        assert_eq!(ids.len(), 1);
        assert_ne!(ids[0].get_attr("id"), Some("forged"));
        assert_eq!(ids[0].get_attr("id"), Some(id.as_str()));
    }
}
