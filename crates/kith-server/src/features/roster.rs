//! Roster management (RFC 6121 §2) with versioning (§2.6, XEP-0237) and the
//! subscription state machine (RFC 6121 §3 and Appendix A) as pure functions.

use std::sync::Arc;

use kith_proto::{BareJid, Element, Jid, StanzaError, ns};
use kith_store::{RosterCap, RosterItem, Subscription};

use super::{Request, Response};
use crate::Server;
use crate::session::Session;

/// Longest roster item name or group name accepted, in bytes.
const MAX_NAME: usize = 1023;
/// Most groups one item may be in.
const MAX_GROUPS: usize = 64;

pub(crate) async fn handle_iq(session: &mut Session, request: &Request<'_>) -> Response {
    // RFC 6121 §2.1.5: only the user may see or change their roster.
    request.own_account_only()?;
    if request.set {
        set(session, request.payload).await
    } else {
        get(session, request.payload).await
    }
}

async fn get(session: &mut Session, query: &Element) -> Response {
    let server = session.server.clone();
    server
        .router
        .update(&session.jid, session.id, |entry| entry.interested = true);
    let (version, items) = server
        .store
        .roster(&session.username)
        .await
        .map_err(internal)?;
    let version = version.to_string();
    // RFC 6121 §2.6.3: an unchanged roster is answered with an empty result.
    if query.get_attr("ver") == Some(version.as_str()) {
        return Ok(None);
    }
    let mut result = Element::new(ns::ROSTER, "query").attr("ver", version);
    for item in items.iter().filter(|item| visible(item)) {
        result.push_child(item_element(item));
    }
    Ok(Some(result))
}

/// A roster row that only records an unanswered inbound request is not shown as a
/// roster item (RFC 6121 §3.1.3: the request is not a roster entry).
pub(crate) fn visible(item: &RosterItem) -> bool {
    !item.is_request_only()
}

async fn set(session: &mut Session, query: &Element) -> Response {
    let mut items = query.elements().filter(|e| e.is("item", ns::ROSTER));
    // RFC 6121 §2.3.3: exactly one item per roster set.
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaError::bad_request().with_text("a roster set carries exactly one item"));
    };
    let contact = item
        .get_attr("jid")
        .and_then(|jid| Jid::new(jid).ok())
        .ok_or_else(StanzaError::jid_malformed)?;
    if contact.resource().is_some() {
        return Err(StanzaError::jid_malformed().with_text("roster items are bare JIDs"));
    }
    let contact = contact.to_bare();
    if contact == session.bare {
        return Err(StanzaError::not_allowed().with_text("you can't add yourself"));
    }
    let server = session.server.clone();
    let existing = server
        .store
        .roster_item(&session.username, contact.as_str())
        .await
        .map_err(internal)?;
    if item.get_attr("subscription") == Some("remove") {
        let Some(existing) = existing else {
            return Err(StanzaError::item_not_found());
        };
        remove(&server, &session.bare, &session.username, existing).await?;
        return Ok(None);
    }
    let name = item
        .get_attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
        return Err(
            StanzaError::new(kith_proto::error::StanzaErrorCondition::NotAcceptable)
                .with_text("name too long"),
        );
    }
    let mut groups: Vec<String> = Vec::new();
    for group in item.elements().filter(|e| e.is("group", ns::ROSTER)) {
        let group = group.text_content();
        // RFC 6121 §2.3.3: empty and duplicate groups are refused.
        if group.is_empty() || group.len() > MAX_NAME {
            return Err(
                StanzaError::new(kith_proto::error::StanzaErrorCondition::NotAcceptable)
                    .with_text("empty or over-long group name"),
            );
        }
        if groups.contains(&group) {
            return Err(StanzaError::bad_request().with_text("duplicate group"));
        }
        groups.push(group);
    }
    if groups.len() > MAX_GROUPS {
        return Err(
            StanzaError::new(kith_proto::error::StanzaErrorCondition::NotAcceptable)
                .with_text("too many groups"),
        );
    }
    // The client sets name and groups only; subscription state is the server's
    // (RFC 6121 §2.1.2.5: a client-supplied subscription other than remove is ignored).
    let mut updated = existing.unwrap_or_else(|| RosterItem {
        contact: contact.to_string(),
        ..RosterItem::default()
    });
    updated.name = name;
    updated.groups = groups;
    save_and_push(&server, &session.bare, &session.username, &updated).await?;
    Ok(None)
}

/// RFC 6121 §2.5.2: removing an item cancels subscriptions both ways first.
async fn remove(
    server: &Arc<Server>,
    owner: &BareJid,
    username: &str,
    item: RosterItem,
) -> Result<(), StanzaError> {
    let from = owner.to_string();
    let subscription_out =
        matches!(item.subscription, Subscription::To | Subscription::Both) || item.ask;
    let subscription_in =
        matches!(item.subscription, Subscription::From | Subscription::Both) || item.pending_in;
    let version = server
        .store
        .remove_roster_item(username, &item.contact)
        .await
        .map_err(internal)?;
    if subscription_out {
        let unsubscribe = subscription_presence(&from, &item.contact, "unsubscribe");
        crate::deliver::route(server, unsubscribe).await;
    }
    if subscription_in {
        let unsubscribed = subscription_presence(&from, &item.contact, "unsubscribed");
        super::presence::hide_from(server, owner, &item.contact).await;
        crate::deliver::route(server, unsubscribed).await;
    }
    if let Some(version) = version {
        let removed = Element::new(ns::ROSTER, "item")
            .attr("jid", item.contact.clone())
            .attr("subscription", "remove");
        push(server, owner, removed, version);
    }
    Ok(())
}

pub(crate) fn subscription_presence(from: &str, to: &str, kind: &str) -> Element {
    Element::new(ns::CLIENT, "presence")
        .attr("from", from)
        .attr("to", to)
        .attr("type", kind)
}

/// Stores an item and pushes it to the owner's interested resources. A new
/// contact past `[limits] max_roster_items`, or a new unanswered request past
/// `max_roster_requests`, is refused with `<not-allowed/>`
/// (RFC 6120 §8.3.3.10: no entity may; RFC 3920's condition, so older clients
/// know it too, where §8.3.3.12 `<policy-violation/>` is RFC 6120's only).
pub(crate) async fn save_and_push(
    server: &Arc<Server>,
    owner: &BareJid,
    username: &str,
    item: &RosterItem,
) -> Result<(), StanzaError> {
    let cap = RosterCap {
        items: server.config.limits.max_roster_items,
        requests: server.config.limits.max_roster_requests,
    };
    let version = match server.store.put_roster_item(username, item, cap).await {
        Ok(version) => version,
        Err(kith_store::StoreError::RosterFull { max, .. }) => {
            return Err(roster_full(item, max));
        }
        Err(error) => return Err(internal(error)),
    };
    if visible(item) {
        push(server, owner, item_element(item), version);
    }
    Ok(())
}

/// A roster push (RFC 6121 §2.1.6) to every resource that asked for the roster.
pub(crate) fn push(server: &Server, owner: &BareJid, item: Element, version: i64) {
    let query = Element::new(ns::ROSTER, "query")
        .attr("ver", version.to_string())
        .child(item);
    super::push_iq(server, owner, crate::cluster::Select::Interested, query);
}

pub(crate) fn item_element(item: &RosterItem) -> Element {
    let mut element = Element::new(ns::ROSTER, "item")
        .attr("jid", item.contact.clone())
        .attr_opt("name", item.name.clone())
        .attr("subscription", item.subscription.as_str());
    if item.ask {
        element.set_attr("ask", "subscribe");
    }
    if item.approved {
        // RFC 6121 §3.4.1: pre-approved subscriptions are marked in the roster.
        element.set_attr("approved", "true");
    }
    for group in &item.groups {
        element.push_child(Element::new(ns::ROSTER, "group").text(group.clone()));
    }
    element
}

/// The error for a new row of `item`'s kind on a roster that holds `max` already.
fn roster_full(item: &RosterItem, max: usize) -> StanzaError {
    StanzaError::not_allowed().with_text(if item.is_request_only() {
        format!("no more subscription requests are kept for this account ({max} waiting)")
    } else {
        format!("the roster is full ({max} contacts)")
    })
}

pub(crate) fn internal(error: kith_store::StoreError) -> StanzaError {
    tracing::error!(%error, "storage failure");
    StanzaError::internal()
}

/// The four subscription presence types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubscriptionKind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubscriptionKind {
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "subscribe" => Some(Self::Subscribe),
            "subscribed" => Some(Self::Subscribed),
            "unsubscribe" => Some(Self::Unsubscribe),
            "unsubscribed" => Some(Self::Unsubscribed),
            _ => None,
        }
    }
}

/// What the user's server does with a subscription stanza the user sends
/// (RFC 6121 Appendix A.2 "outbound").
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OutboundOutcome {
    /// The user's item after the change, if it changed.
    pub item: Option<RosterItem>,
    /// Whether the stanza goes on to the contact.
    pub route: bool,
}

pub(crate) fn outbound(
    current: Option<&RosterItem>,
    contact: &str,
    kind: SubscriptionKind,
) -> OutboundOutcome {
    use Subscription::*;
    let before = current.cloned().unwrap_or_else(|| RosterItem {
        contact: contact.to_owned(),
        ..RosterItem::default()
    });
    let mut item = before.clone();
    let route = match kind {
        // §3.1.2: "Pending Out" unless already subscribed.
        SubscriptionKind::Subscribe => {
            if matches!(item.subscription, None | From) {
                item.ask = true;
            }
            true
        }
        // §3.1.5 approve a pending request, or §3.4 pre-approve.
        SubscriptionKind::Subscribed => {
            if item.pending_in {
                item.pending_in = false;
                item.subscription = match item.subscription {
                    None => From,
                    To => Both,
                    other => other,
                };
                true
            } else if matches!(item.subscription, None | To) {
                item.approved = true;
                false
            } else {
                false
            }
        }
        // §3.3.2 cancel our subscription to the contact.
        SubscriptionKind::Unsubscribe => {
            item.ask = false;
            item.subscription = match item.subscription {
                To => None,
                Both => From,
                other => other,
            };
            true
        }
        // §3.2.2 cancel (or deny) the contact's subscription to us.
        SubscriptionKind::Unsubscribed => {
            item.pending_in = false;
            item.approved = false;
            item.subscription = match item.subscription {
                From => None,
                Both => To,
                other => other,
            };
            true
        }
    };
    // Without an existing item, only a state worth recording creates one.
    let changed = match current {
        Some(current) => *current != item,
        Option::None => item != before,
    };
    OutboundOutcome {
        item: changed.then_some(item),
        route,
    }
}

/// What the contact's server does with a subscription stanza it receives
/// (RFC 6121 Appendix A.3 "inbound").
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InboundOutcome {
    /// The recipient's item after the change, if it changed.
    pub item: Option<RosterItem>,
    /// Whether the stanza is delivered to the recipient's resources.
    pub deliver: bool,
    /// An answer the server gives on the recipient's behalf.
    pub auto_reply: Option<SubscriptionKind>,
}

pub(crate) fn inbound(
    current: Option<&RosterItem>,
    sender: &str,
    kind: SubscriptionKind,
) -> InboundOutcome {
    use Subscription::*;
    let mut item = current.cloned().unwrap_or_else(|| RosterItem {
        contact: sender.to_owned(),
        ..RosterItem::default()
    });
    let mut deliver = false;
    let mut auto_reply = Option::None;
    match kind {
        SubscriptionKind::Subscribe => {
            if matches!(item.subscription, From | Both) {
                // §3.1.3: already subscribed: confirm without bothering the user.
                auto_reply = Some(SubscriptionKind::Subscribed);
            } else if item.approved {
                // §3.4: pre-approved.
                item.approved = false;
                item.subscription = if item.subscription == To { Both } else { From };
                auto_reply = Some(SubscriptionKind::Subscribed);
            } else {
                item.pending_in = true;
                deliver = true;
            }
        }
        SubscriptionKind::Subscribed => {
            // §3.1.6: only an outstanding request can be approved.
            if item.ask {
                item.ask = false;
                item.subscription = if item.subscription == From { Both } else { To };
                deliver = true;
            }
        }
        SubscriptionKind::Unsubscribe => {
            // §3.3.3
            if matches!(item.subscription, From | Both) || item.pending_in {
                item.pending_in = false;
                item.approved = false;
                item.subscription = match item.subscription {
                    From => None,
                    Both => To,
                    other => other,
                };
                deliver = true;
            }
        }
        SubscriptionKind::Unsubscribed => {
            // §3.2.3
            if matches!(item.subscription, To | Both) || item.ask {
                item.ask = false;
                item.subscription = match item.subscription {
                    To => None,
                    Both => From,
                    other => other,
                };
                deliver = true;
            }
        }
    }
    let changed = match current {
        Some(current) => *current != item,
        Option::None => item.pending_in || item.subscription != None,
    };
    InboundOutcome {
        item: changed.then_some(item),
        deliver,
        auto_reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Subscription::{Both, From, To};

    fn item(subscription: Subscription, ask: bool, pending_in: bool) -> RosterItem {
        RosterItem {
            contact: "c@x".to_owned(),
            subscription,
            ask,
            pending_in,
            ..RosterItem::default()
        }
    }

    #[test]
    fn full_handshake_reaches_both() {
        // User subscribes: Pending Out.
        let user = outbound(None, "c@x", SubscriptionKind::Subscribe);
        assert!(user.route);
        let user_item = user.item.expect("item created");
        assert!(user_item.ask && user_item.subscription == Subscription::None);
        // Contact receives it: Pending In, delivered.
        let contact = inbound(None, "u@x", SubscriptionKind::Subscribe);
        assert!(contact.deliver);
        let contact_item = contact.item.expect("pending in recorded");
        assert!(contact_item.pending_in);
        assert!(!visible(&contact_item));
        // Contact approves: From.
        let approved = outbound(Some(&contact_item), "u@x", SubscriptionKind::Subscribed);
        assert!(approved.route);
        assert_eq!(approved.item.expect("changed").subscription, From);
        // User receives subscribed: To.
        let user_after = inbound(Some(&user_item), "c@x", SubscriptionKind::Subscribed);
        assert!(user_after.deliver);
        let user_after = user_after.item.expect("changed");
        assert_eq!(user_after.subscription, To);
        assert!(!user_after.ask);
    }

    #[test]
    fn unsolicited_subscribed_is_ignored() {
        let outcome = inbound(
            Some(&item(Subscription::None, false, false)),
            "c@x",
            SubscriptionKind::Subscribed,
        );
        assert_eq!(
            outcome,
            InboundOutcome {
                item: Option::None,
                deliver: false,
                auto_reply: Option::None
            }
        );
    }

    #[test]
    fn pre_approval_auto_accepts() {
        let pre = outbound(None, "c@x", SubscriptionKind::Subscribed);
        assert!(!pre.route);
        let pre = pre.item.expect("pre-approved item");
        assert!(pre.approved);
        let incoming = inbound(Some(&pre), "c@x", SubscriptionKind::Subscribe);
        assert_eq!(incoming.auto_reply, Some(SubscriptionKind::Subscribed));
        assert!(!incoming.deliver);
        assert_eq!(incoming.item.expect("changed").subscription, From);
    }

    #[test]
    fn already_subscribed_gets_auto_reply() {
        let outcome = inbound(
            Some(&item(Both, false, false)),
            "c@x",
            SubscriptionKind::Subscribe,
        );
        assert_eq!(outcome.auto_reply, Some(SubscriptionKind::Subscribed));
        assert!(outcome.item.is_none());
    }

    #[test]
    fn cancellations_follow_appendix_a() {
        let unsubscribe = outbound(
            Some(&item(Both, false, false)),
            "c@x",
            SubscriptionKind::Unsubscribe,
        );
        assert_eq!(unsubscribe.item.expect("changed").subscription, From);
        let unsubscribed = outbound(
            Some(&item(Both, false, false)),
            "c@x",
            SubscriptionKind::Unsubscribed,
        );
        assert_eq!(unsubscribed.item.expect("changed").subscription, To);
        let inbound_unsub = inbound(
            Some(&item(From, false, false)),
            "c@x",
            SubscriptionKind::Unsubscribe,
        );
        assert!(inbound_unsub.deliver);
        assert_eq!(
            inbound_unsub.item.expect("changed").subscription,
            Subscription::None
        );
        let ignored = inbound(
            Some(&item(Subscription::None, false, false)),
            "c@x",
            SubscriptionKind::Unsubscribed,
        );
        assert!(!ignored.deliver);
    }
}
