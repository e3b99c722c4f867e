//! Message Retraction (XEP-0424), "delete for everyone": the retraction travels to
//! the other party like any message (so offline devices learn of it from the inbox
//! log), and both archives keep only a tombstone of the original (§6).

use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{BareJid, Element, Jid, ns};

use crate::Server;

pub(crate) const RETRACT: &str = "urn:xmpp:message-retract:1";
/// How far back a retraction looks for its message, per conversation.
const LOOKBACK: i64 = 1000;

/// The id a message retracts, if it is a retraction.
pub(crate) fn retracted_id(message: &Element) -> Option<String> {
    message
        .get_child("retract", RETRACT)
        .and_then(|retract| retract.get_attr("id"))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// Replaces the retracted message with a tombstone in the recipient's archive and,
/// for a local sender, in the sender's. Only the original sender's messages match:
/// entries are looked up in the conversation between these two users only.
pub(crate) async fn apply(server: &Server, sender: &Jid, recipient: &BareJid, id: &str) {
    let sender_bare = sender.to_bare();
    let mut archives = vec![(recipient.clone(), sender_bare.clone(), "in")];
    if server.is_local_user(sender) {
        archives.push((sender_bare, recipient.clone(), "out"));
    }
    for (owner, peer, direction) in archives {
        let Some(username) = owner.node().map(|n| n.as_str().to_owned()) else {
            continue;
        };
        let entries = match server
            .store
            .inbox_recent_with(&username, peer.as_str(), direction, LOOKBACK)
            .await
        {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "looking up a retracted message");
                continue;
            }
        };
        for entry in entries {
            let Ok(original) = parse_fragment(entry.xml.as_bytes(), Limits::default()) else {
                continue;
            };
            if !refers_to(&original, id) || retracted_id(&original).is_some() {
                continue;
            }
            let xml = tombstone(&original).to_xml("");
            if let Err(error) = server
                .store
                .inbox_rewrite(&username, entry.seq, &xml, None)
                .await
            {
                tracing::warn!(%error, "writing a retraction tombstone");
            }
            break;
        }
    }
}

/// Whether `message` is the one `id` names: its origin-id (XEP-0359), which
/// XEP-0424 uses for 1:1 chats, or its `id` attribute for clients without one.
fn refers_to(message: &Element, id: &str) -> bool {
    crate::deliver::origin_id(message)
        .map_or(message.get_attr("id") == Some(id), |origin| origin == id)
}

/// §6: what the archive keeps — the envelope and ids, no content.
pub(crate) fn tombstone(original: &Element) -> Element {
    let mut kept = Element::new(&original.ns, &original.name);
    kept.attrs = original.attrs.clone();
    for child in original.elements() {
        if child.is("origin-id", ns::SID) || child.is("stanza-id", ns::SID) {
            kept.push_child(child.clone());
        }
    }
    kept.child(Element::new(RETRACT, "retracted").attr(
        "stamp",
        crate::datetime::format_datetime(crate::now_micros()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_keep_ids_and_drop_content() {
        let original = Element::new(ns::CLIENT, "message")
            .attr("id", "m1")
            .attr("to", "b@x")
            .child(Element::new(ns::CLIENT, "body").text("oops"))
            .child(Element::new(ns::SID, "origin-id").attr("id", "o1"));
        assert!(refers_to(&original, "o1"));
        assert!(
            !refers_to(&original, "m1"),
            "with an origin-id, only it counts"
        );
        let stone = tombstone(&original);
        assert!(stone.get_child("body", ns::CLIENT).is_none());
        assert!(stone.has_child("retracted", RETRACT));
        assert_eq!(stone.get_attr("id"), Some("m1"));
        let without_origin = Element::new(ns::CLIENT, "message").attr("id", "m2");
        assert!(refers_to(&without_origin, "m2"));
    }
}
