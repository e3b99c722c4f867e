//! Client State Indication (XEP-0352): while a client says it is inactive, hold
//! back what it doesn't need at once — presence updates and chat states — keeping
//! only the latest per contact, and let everything else through immediately
//! (flushing what was held first, so the order per contact is kept).

use std::sync::Arc;

use kith_proto::{Element, ns};

pub(crate) const CSI: &str = "urn:xmpp:csi:0";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// Past this many held stanzas, they are sent anyway.
const MAX_HELD: usize = 2_000;

/// Stanzas held back while the client is inactive.
#[derive(Debug, Default)]
pub(crate) struct Held {
    items: Vec<(Kind, String, Arc<Element>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Presence,
    ChatState,
}

/// What can wait: presence other than subscription requests, and messages that
/// carry nothing but a chat state (XEP-0352 §5 leaves the policy to the server).
fn kind(stanza: &Element) -> Option<Kind> {
    match stanza.name.as_str() {
        "presence" => match stanza.get_attr("type") {
            None | Some("unavailable") => Some(Kind::Presence),
            _ => None,
        },
        "message" => {
            let only_chat_state = stanza.elements().next().is_some()
                && stanza
                    .elements()
                    .all(|e| e.ns == CHATSTATES || e.is("thread", ns::CLIENT));
            only_chat_state.then_some(Kind::ChatState)
        }
        _ => None,
    }
}

impl Held {
    /// Holds `stanza` if it can wait, replacing an older one of the same kind from
    /// the same sender. Returns `false` if it must be sent now.
    pub fn hold(&mut self, stanza: &Arc<Element>) -> bool {
        let Some(kind) = kind(stanza) else {
            return false;
        };
        if self.items.len() >= MAX_HELD {
            return false;
        }
        let from = stanza.get_attr("from").unwrap_or_default().to_owned();
        self.items.retain(|(k, f, _)| !(*k == kind && *f == from));
        self.items.push((kind, from, stanza.clone()));
        true
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Everything held, oldest first.
    pub fn drain(&mut self) -> Vec<Arc<Element>> {
        self.items.drain(..).map(|(_, _, stanza)| stanza).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(from: &str, show: &str) -> Arc<Element> {
        Arc::new(
            Element::new(ns::CLIENT, "presence")
                .attr("from", from)
                .child(Element::new(ns::CLIENT, "show").text(show)),
        )
    }

    #[test]
    fn keeps_only_the_latest_presence_per_contact() {
        let mut held = Held::default();
        assert!(held.hold(&presence("a@x/1", "away")));
        assert!(held.hold(&presence("b@x/1", "dnd")));
        assert!(held.hold(&presence("a@x/1", "xa")));
        let out = held.drain();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].child_text("show", ns::CLIENT).as_deref(), Some("xa"));
        assert!(held.is_empty());
    }

    #[test]
    fn messages_with_a_body_and_subscriptions_are_not_held() {
        let mut held = Held::default();
        let body = Arc::new(
            Element::new(ns::CLIENT, "message")
                .child(Element::new(ns::CLIENT, "body").text("hi"))
                .child(Element::new(CHATSTATES, "active")),
        );
        assert!(!held.hold(&body));
        let typing = Arc::new(
            Element::new(ns::CLIENT, "message").child(Element::new(CHATSTATES, "composing")),
        );
        assert!(held.hold(&typing));
        let subscribe = Arc::new(Element::new(ns::CLIENT, "presence").attr("type", "subscribe"));
        assert!(!held.hold(&subscribe));
    }
}
