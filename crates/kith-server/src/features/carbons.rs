//! Message Carbons (XEP-0280): a user's other online devices get a copy of the
//! messages the user sends and of those addressed to another of their resources.
//!
//! Messages to the bare JID already reach every available device (see
//! `deliver.rs`), so only the copies XEP-0280 §6 adds beyond that are made here.

use std::sync::Arc;

use kith_proto::{Element, FullJid, StanzaError, ns};

use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

pub(crate) const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";

/// `<enable/>` and `<disable/>` (XEP-0280 §4, §5).
pub(crate) fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    if !request.set || !matches!(request.target, Target::OwnAccount | Target::Server) {
        return Err(StanzaError::bad_request());
    }
    let enable = request.payload.name == "enable";
    let server = session.server.clone();
    server
        .router
        .update(&session.jid, session.id, |entry| entry.carbons = enable);
    Ok(None)
}

/// XEP-0280 §6.1: which messages are copied — chat messages, and normal messages
/// with a body — unless the sender opted out (§7: `<private/>`, or a no-copy hint).
pub(crate) fn eligible(message: &Element) -> bool {
    let kind = message.get_attr("type").unwrap_or("normal");
    if kind != "chat" && kind != "normal" {
        return false;
    }
    // One pass over the children (this runs for every message).
    let mut body = false;
    for child in message.elements() {
        let opted_out = if child.ns == CARBONS {
            matches!(child.name.as_str(), "private" | "received" | "sent")
        } else {
            child.is("no-copy", HINTS)
        };
        if opted_out {
            return false;
        }
        body |= child.is("body", ns::CLIENT);
    }
    kind == "chat" || body
}

/// Whether `owner` has a resource other than `except` that would get copies
/// (in a cluster, one may be on another node: always).
pub(crate) fn wanted(server: &Server, owner: &str, except: &str) -> bool {
    server.cluster.is_some()
        || server.router.with_sessions(owner, |sessions| {
            sessions.iter().any(|s| wants_copies(s, except))
        })
}

fn wants_copies(session: &crate::router::SessionEntry, except: &str) -> bool {
    session.carbons && session.available() && session.jid.as_str() != except
}

/// Sends `<sent/>` or `<received/>` copies of `message` to every carbons-enabled,
/// available resource of `owner` except `except`, on every node.
pub(crate) fn copy_to_other_devices(
    server: &Server,
    owner: &str,
    except: &FullJid,
    direction: &str,
    message: &Element,
) {
    if !eligible(message) {
        return;
    }
    if let Some(cluster) = &server.cluster {
        cluster.carbons(owner, except.as_str(), direction, message);
    }
    copy_locally(server, owner, except, direction, message, None);
}

/// `<received/>` copies of entry `seq` of `owner`'s log, addressed to `except`,
/// for the user's other devices: each copy counts as that device's delivery of
/// the entry (it moves the device past it, so a later read of the log does not
/// hand it over again). On other nodes the entry's wake-up brings it.
pub(crate) fn copy_received(
    server: &Server,
    owner: &str,
    except: &FullJid,
    message: &Element,
    seq: i64,
) {
    copy_locally(server, owner, except, "received", message, Some(seq));
}

/// [`copy_to_other_devices`] for this node's sessions only; `seq`: the copy is
/// of that entry of `owner`'s log.
pub(crate) fn copy_locally(
    server: &Server,
    owner: &str,
    except: &FullJid,
    direction: &str,
    message: &Element,
    seq: Option<i64>,
) {
    if !eligible(message) {
        return;
    }
    // Most messages have nobody to copy them to: the copy is made for the first.
    let mut original: Option<Element> = None;
    server.router.with_sessions(owner, |sessions| {
        for session in sessions.iter().filter(|s| wants_copies(s, except.as_str())) {
            let original = original.get_or_insert_with(|| {
                let mut original = message.clone();
                // §7: the copy must not carry the opt-out marker around again.
                original.remove_children("private", CARBONS);
                original
            });
            let copy = Element::new(ns::CLIENT, "message")
                .attr("from", owner)
                .attr("to", session.jid.to_string())
                .attr("type", message.get_attr("type").unwrap_or("normal"))
                .child(
                    Element::new(CARBONS, direction)
                        .child(Element::new(FORWARD, "forwarded").child(original.clone())),
                );
            let copy = Arc::new(copy);
            match seq {
                Some(seq) => session.send_logged(copy, seq),
                None => session.send(copy),
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chat_and_normal_with_body_are_copied() {
        let body = Element::new(ns::CLIENT, "body").text("hi");
        let chat = Element::new(ns::CLIENT, "message").attr("type", "chat");
        assert!(eligible(&chat));
        assert!(!eligible(&Element::new(ns::CLIENT, "message")));
        assert!(eligible(
            &Element::new(ns::CLIENT, "message").child(body.clone())
        ));
        assert!(!eligible(
            &Element::new(ns::CLIENT, "message")
                .attr("type", "headline")
                .child(body)
        ));
        assert!(!eligible(
            &chat.clone().child(Element::new(CARBONS, "private"))
        ));
        assert!(!eligible(
            &chat.clone().child(Element::new(HINTS, "no-copy"))
        ));
        for opt_out in [
            Element::new(CARBONS, "received"),
            Element::new(CARBONS, "sent"),
            Element::new(CARBONS, "private"),
            Element::new(HINTS, "no-copy"),
        ] {
            let normal = Element::new(ns::CLIENT, "message")
                .child(Element::new(ns::CLIENT, "body").text("hi"))
                .child(opt_out.clone());
            assert!(!eligible(&normal), "{opt_out:?}");
            assert!(
                !eligible(&chat.clone().child(opt_out.clone())),
                "{opt_out:?}"
            );
        }
        // Other hints and extensions change nothing.
        assert!(eligible(&chat.clone().child(Element::new(HINTS, "store"))));
        assert!(eligible(
            &chat.child(Element::new("urn:xmpp:receipts", "request"))
        ));
    }
}
