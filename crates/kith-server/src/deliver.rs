//! Routing (RFC 6121 §8): where a stanza goes once its `from` is stamped, and
//! offline storage for messages nobody is online to receive.
//!
//! Only local delivery exists today: stanzas for other domains bounce with
//! `<remote-server-not-found/>` (no server-to-server yet). Blocking (XEP-0191) is
//! enforced here, in the one place every stanza between two users passes.

use std::sync::Arc;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{Element, Jid, StanzaError, ns};
use kith_store::NewInboxEntry;

use crate::Server;
use crate::session::Session;

/// A message from the session's own client.
pub(crate) async fn message_from_client(
    session: &mut Session,
    mut message: Element,
    to: Option<Jid>,
) {
    // RFC 6120 §10.3.1: no `to` means the account's own bare JID.
    if to.is_none() {
        message.set_attr("to", session.bare.to_string());
    }
    route(&session.server, message).await;
}

/// Routes a stanza whose `from` is final to its recipient on this server, or
/// bounces it.
pub(crate) async fn route(server: &Arc<Server>, stanza: Element) {
    let Some(to) = stanza.get_attr("to").and_then(|to| Jid::new(to).ok()) else {
        return;
    };
    let from = stanza.get_attr("from").and_then(|from| Jid::new(from).ok());
    if to.domain().as_str() != server.domain {
        // RFC 6120 §10.4.3: no route to other domains (yet).
        bounce(
            server,
            &stanza,
            StanzaError::new(StanzaErrorCondition::RemoteServerNotFound),
        )
        .await;
        return;
    }
    if to.node().is_none() {
        // Addressed to the server: nothing here takes messages or presence.
        if stanza.name == "message" {
            bounce(server, &stanza, StanzaError::service_unavailable()).await;
        }
        return;
    }
    let recipient = to.to_bare();
    if let Some(from) = &from {
        // XEP-0191 applies between users, not to errors the server generates.
        let sender = from.to_bare();
        if sender != recipient {
            // XEP-0191 §3.4: the sender blocked the recipient.
            if server.is_local_user(from)
                && server
                    .blocks(node(&sender), &Jid::from(recipient.clone()))
                    .await
            {
                let blocked = Element::new(ns::BLOCKING_ERRORS, "blocked");
                let error = StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_type(kith_proto::StanzaErrorType::Cancel)
                    .with_application(blocked);
                bounce(server, &stanza, error).await;
                return;
            }
            // XEP-0191 §3.5: the recipient blocked the sender; answer as if absent.
            if server.blocks(node(&recipient), from).await {
                bounce(server, &stanza, StanzaError::service_unavailable()).await;
                return;
            }
        }
    }
    route_checked(server, stanza, &to).await;
}

/// Delivers to a local user, past the blocking checks.
async fn route_checked(server: &Arc<Server>, stanza: Element, to: &Jid) {
    match stanza.name.as_str() {
        "message" => route_message(server, stanza, to).await,
        "presence" => crate::features::presence::inbound(server, stanza, to).await,
        _ => route_iq(server, stanza, to).await,
    }
}

fn node(jid: &kith_proto::BareJid) -> &str {
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
        Box::pin(route_checked(server, reply, &to)).await;
    }
}

async fn route_iq(server: &Arc<Server>, iq: Element, to: &Jid) {
    let kind = iq.get_attr("type").unwrap_or("");
    if let Some(resource) = to.resource()
        && let Some(session) = server
            .router
            .with_sessions(to.to_bare().as_str(), |sessions| {
                sessions
                    .iter()
                    .find(|s| s.jid.resource().as_str() == resource.as_str())
                    .cloned()
            })
    {
        session.send(Arc::new(iq));
        return;
    }
    // RFC 6121 §8.5.3.1 / §8.5.2.1.3: no such resource, or a bare JID the server
    // did not answer itself.
    if matches!(kind, "get" | "set") {
        bounce(server, &iq, StanzaError::service_unavailable()).await;
    }
}

/// RFC 6121 §8.5.2 / §8.5.3: message delivery by type and address.
async fn route_message(server: &Arc<Server>, mut message: Element, to: &Jid) {
    let kind = message.get_attr("type").unwrap_or("normal").to_owned();
    let recipient = to.to_bare();
    let bare = recipient.as_str();
    // A full JID whose resource is online gets the message, whatever its type.
    if let Some(resource) = to.resource() {
        let session = server.router.with_sessions(bare, |sessions| {
            sessions
                .iter()
                .find(|s| s.jid.resource().as_str() == resource.as_str())
                .cloned()
        });
        if let Some(session) = session {
            if matches!(kind.as_str(), "normal" | "chat") {
                stamp_stanza_id(&mut message, bare);
            }
            session.send(Arc::new(message));
            return;
        }
    }
    match kind.as_str() {
        "groupchat" => bounce(server, &message, StanzaError::service_unavailable()).await,
        "error" => {
            // RFC 6121 §8.5.2.1.1: errors to a bare JID (or a gone resource) are
            // dropped rather than guessed at.
        }
        "headline" => {
            let shared = Arc::new(message);
            server.router.with_sessions(bare, |sessions| {
                for session in sessions.iter().filter(|s| s.available() && s.priority >= 0) {
                    session.send(shared.clone());
                }
            });
        }
        _ => {
            stamp_stanza_id(&mut message, bare);
            let shared = Arc::new(message);
            // RFC 6121 §8.5.2.1.1: the available resource(s) with the highest
            // non-negative priority.
            let delivered = server.router.with_sessions(bare, |sessions| {
                let best = sessions
                    .iter()
                    .filter(|s| s.available() && s.priority >= 0)
                    .map(|s| s.priority)
                    .max();
                let Some(best) = best else {
                    return 0;
                };
                sessions
                    .iter()
                    .filter(|s| s.available() && s.priority == best)
                    .filter(|s| s.send(shared.clone()))
                    .count()
            });
            if delivered == 0 {
                store_offline(server, &shared, node(&recipient)).await;
            }
        }
    }
}

/// XEP-0359 §3: the recipient's server stamps a unique, stable id, and removes any
/// `<stanza-id/>` claiming to be by the recipient that came from elsewhere (§5).
fn stamp_stanza_id(message: &mut Element, recipient: &str) {
    message.children.retain(|node| {
        !matches!(node, kith_proto::Node::Element(e)
            if e.is("stanza-id", ns::SID) && e.get_attr("by") == Some(recipient))
    });
    message.push_child(
        Element::new(ns::SID, "stanza-id")
            .attr("id", crate::random_id(20))
            .attr("by", recipient),
    );
}

/// Whether a message is worth keeping for later (XEP-0160 §3, XEP-0334 hints):
/// chat states and no-store hints alone are not.
fn storable(message: &Element) -> bool {
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    const HINTS: &str = "urn:xmpp:hints";
    if message.has_child("no-store", HINTS) || message.has_child("no-permanent-store", HINTS) {
        return message.has_child("store", HINTS);
    }
    message.has_child("body", ns::CLIENT)
        || message.has_child("store", HINTS)
        || message
            .elements()
            .any(|e| e.ns != CHATSTATES && e.ns != ns::SID && e.ns != HINTS && e.ns != ns::CLIENT)
}

async fn store_offline(server: &Arc<Server>, message: &Element, username: &str) {
    if !storable(message) {
        return;
    }
    let stanza_id = message
        .get_child("stanza-id", ns::SID)
        .and_then(|e| e.get_attr("id"))
        .unwrap_or_default()
        .to_owned();
    let sender = message.get_attr("from").unwrap_or_default().to_owned();
    let xml = message.to_xml("");
    let entry = NewInboxEntry {
        stanza_id: &stanza_id,
        sender: &sender,
        kind: "message",
        xml: &xml,
        at_micros: crate::now_micros(),
    };
    match server.store.inbox_append(username, &entry).await {
        Ok(_) => tracing::debug!(recipient = username, "message stored for offline delivery"),
        Err(kith_store::StoreError::NoSuchUser(_)) => {
            // RFC 6121 §8.5.2.2.1: no such account.
            bounce(server, message, StanzaError::service_unavailable()).await;
        }
        Err(error) => {
            tracing::error!(%error, "storing an offline message failed");
            bounce(server, message, StanzaError::internal()).await;
        }
    }
}

/// Queues the messages stored while the user was offline for a session that just
/// became available, each with a XEP-0203 delay stamp. They are removed from the
/// store only after they have been written to the connection (see `session.rs`).
pub(crate) async fn deliver_offline(session: &mut Session) {
    let server = session.server.clone();
    let mut after = 0;
    loop {
        let batch = match server
            .store
            .inbox_after(&session.username, after, 500)
            .await
        {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "reading offline messages failed");
                return;
            }
        };
        if batch.is_empty() {
            return;
        }
        for stored in batch {
            after = stored.seq;
            session.written_through = Some(stored.seq);
            let Ok(mut message) = parse_fragment(stored.xml.as_bytes(), Limits::default()) else {
                tracing::warn!(seq = stored.seq, "skipping an unreadable stored message");
                continue;
            };
            message.set_attr("to", session.jid.to_string());
            message.push_child(
                Element::new(ns::DELAY, "delay")
                    .attr("from", server.domain.clone())
                    .attr("stamp", crate::datetime::format_datetime(stored.at_micros))
                    .text("Offline Storage"),
            );
            session.reply(message);
        }
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
    fn stanza_id_replaces_a_forged_one() {
        let mut message = Element::new(ns::CLIENT, "message").child(
            Element::new(ns::SID, "stanza-id")
                .attr("by", "juliet@localhost")
                .attr("id", "forged"),
        );
        stamp_stanza_id(&mut message, "juliet@localhost");
        let ids: Vec<_> = message
            .elements()
            .filter(|e| e.is("stanza-id", ns::SID))
            .collect();
        assert_eq!(ids.len(), 1);
        assert_ne!(ids[0].get_attr("id"), Some("forged"));
    }
}
