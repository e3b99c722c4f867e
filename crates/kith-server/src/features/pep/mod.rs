//! XEP-0163 Personal Eventing Protocol: every account's bare JID is a pubsub
//! service (the XEP-0060 subset PEP needs), stored in the database.
//!
//! - Publish with auto-create (XEP-0163 §3, XEP-0060 §7.1), item ids generated
//!   when absent, XEP-0223 publish-options as preconditions (`config.rs`).
//! - Retrieve all items, by id or `max_items` (XEP-0060 §6.5), retract (§7.2),
//!   create (§8.1), configure (§8.2), default config (§8.3), delete (§8.4),
//!   purge (§8.5), affiliations for the whitelist model (§8.9).
//! - Access models `presence` (default), `open`, `roster`, `whitelist`
//!   (XEP-0060 §4.5), enforced on retrieval and on every notification.
//! - Notifications (XEP-0163 §4): `headline` messages with `<event/>` to the
//!   owner's resources, to contacts with a presence subscription, and to
//!   *visitors* (resources that sent the owner directed presence: §4 rule 1's
//!   implicit subscription, e.g. to an open OMEMO device list), each only if the
//!   node's access model admits it, its priority is not negative (§4.3.2) and its
//!   XEP-0115 caps include `NODE+notify` (§4.2, `caps.rs`); the last published
//!   item to a resource coming online (§4.3.3), to a visitor, and to a new
//!   subscriber (§4.3.4); nothing to blocked users (§4.3.3 rule 3).
//!
//! - Explicit subscriptions (XEP-0060 §6.1 subscribe, §6.2 unsubscribe, §5.6
//!   retrieve subscriptions) by bare JID, for whoever the access model admits:
//!   a whitelisted non-contact (a live location's chosen viewer) subscribes and
//!   gets notifications without a presence subscription or `+notify` caps.
//! - Item expiry (`pubsub#item_expire`, §16.4.4): an item's end time is fixed at
//!   publication; reads never return an expired item, and [`expiry_loop`]
//!   retracts it, notifying `<retract/>` per `notify_retract` (a live location's
//!   viewers stop showing it).
//!
//! Notifications are transient: they never go through the inbox log. The items
//! themselves are in the store, so a later fetch always works.
//! Not implemented: subscription options (§6.3), subscription management by
//! the owner (§8.8), collection nodes.

pub(crate) mod caps;
pub(crate) mod config;

use std::collections::HashMap;
use std::sync::Arc;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{BareJid, Element, FullJid, Jid, StanzaError, StanzaErrorType, ns};
use kith_store::{PepItem, PepNode, PepNodeConfig, PepWrite, RosterItem, Subscription};

use super::roster::internal;
use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

pub(crate) const NS: &str = "http://jabber.org/protocol/pubsub";
pub(crate) const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub(crate) const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub(crate) const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

/// XEP-0084 avatar data node: its items have their own size limit.
pub(crate) const NODE_AVATAR_DATA: &str = "urn:xmpp:avatar:data";

/// Longest node name and item id accepted, in bytes.
const MAX_NAME_BYTES: usize = 1024;

/// What the account's bare JID advertises (XEP-0060 §10, XEP-0163 §5): only
/// what works.
pub(crate) const ACCOUNT_FEATURES: &[&str] = &[
    NS,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
];

/// XEP-0060 §7 error conditions with their `pubsub#errors` application element.
pub(crate) mod errors {
    use kith_proto::error::StanzaErrorCondition;
    use kith_proto::{Element, StanzaError, StanzaErrorType};

    pub(crate) fn app(name: &str) -> Element {
        Element::new(super::NS_ERRORS, name)
    }

    fn with(condition: StanzaErrorCondition, kind: StanzaErrorType, name: &str) -> StanzaError {
        StanzaError::new(condition)
            .with_type(kind)
            .with_application(app(name))
    }

    /// §7.1.5: publish-options do not match the node's configuration.
    pub(crate) fn precondition_not_met() -> StanzaError {
        with(
            StanzaErrorCondition::Conflict,
            StanzaErrorType::Cancel,
            "precondition-not-met",
        )
    }

    /// §7.1.3.4.
    pub(crate) fn payload_too_big(limit: usize) -> StanzaError {
        with(
            StanzaErrorCondition::NotAcceptable,
            StanzaErrorType::Modify,
            "payload-too-big",
        )
        .with_text(format!("the item is larger than {limit} bytes"))
    }

    /// The account's node limit (`pep.max_nodes_per_user`): `<not-allowed/>` with
    /// the pubsub#errors `max-nodes-exceeded` condition (not RFC 6120's
    /// `policy-violation`, which common client libraries cannot parse).
    pub(crate) fn max_nodes_exceeded(limit: usize) -> StanzaError {
        with(
            StanzaErrorCondition::NotAllowed,
            StanzaErrorType::Cancel,
            "max-nodes-exceeded",
        )
        .with_text(format!("an account may have at most {limit} PEP nodes"))
    }

    pub(crate) fn bad_request(name: &str) -> StanzaError {
        with(
            StanzaErrorCondition::BadRequest,
            StanzaErrorType::Modify,
            name,
        )
    }

    /// §8.1.3 / §8.2.5: an access model this service does not offer.
    pub(crate) fn unsupported_access_model() -> StanzaError {
        with(
            StanzaErrorCondition::NotAcceptable,
            StanzaErrorType::Modify,
            "unsupported-access-model",
        )
    }

    /// A request kith does not implement (§… `<unsupported feature/>`).
    pub(crate) fn unsupported(feature: &str) -> StanzaError {
        StanzaError::new(StanzaErrorCondition::FeatureNotImplemented)
            .with_type(StanzaErrorType::Cancel)
            .with_application(app("unsupported").attr("feature", feature))
    }
}

/// Why a requester may not read a node (XEP-0060 §6.5.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    Presence,
    Roster,
    Whitelist,
    /// The owner's privacy settings (or a block) hide this node from the requester.
    Privacy,
}

impl Denied {
    fn error(self) -> StanzaError {
        let (condition, kind, name) = match self {
            Denied::Presence => (
                StanzaErrorCondition::NotAuthorized,
                StanzaErrorType::Auth,
                "presence-subscription-required",
            ),
            Denied::Roster => (
                StanzaErrorCondition::NotAuthorized,
                StanzaErrorType::Auth,
                "not-in-roster-group",
            ),
            Denied::Whitelist => (
                StanzaErrorCondition::NotAllowed,
                StanzaErrorType::Cancel,
                "closed-node",
            ),
            // Not a XEP-0060 case: a plain <forbidden/>, naming no subscription
            // that would help.
            Denied::Privacy => {
                return StanzaError::new(StanzaErrorCondition::Forbidden)
                    .with_type(StanzaErrorType::Auth);
            }
        };
        StanzaError::new(condition)
            .with_type(kind)
            .with_application(errors::app(name))
    }
}

/// Resources that sent an account directed presence (XEP-0163 §4: they share
/// presence with the owner without a subscription), with the caps they
/// announced, by owner. In memory only; a directed `unavailable` (or the
/// visitor's session ending) removes them.
#[derive(Default)]
pub(crate) struct Visitors {
    by_owner: std::sync::Mutex<HashMap<String, HashMap<String, caps::Announced>>>,
}

/// Visitors remembered per owner at most (older ones are not evicted; new ones
/// are ignored past this).
const MAX_VISITORS_PER_OWNER: usize = 1000;

impl Visitors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, caps::Announced>>> {
        self.by_owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, owner: &BareJid, visitor: &FullJid, announced: caps::Announced) {
        let mut map = self.lock();
        let visitors = map.entry(owner.to_string()).or_default();
        if visitors.len() < MAX_VISITORS_PER_OWNER || visitors.contains_key(&visitor.to_string()) {
            visitors.insert(visitor.to_string(), announced);
        }
    }

    fn remove(&self, owner: &BareJid, visitor: &FullJid) {
        let mut map = self.lock();
        if let Some(visitors) = map.get_mut(owner.as_str()) {
            visitors.remove(&visitor.to_string());
            if visitors.is_empty() {
                map.remove(owner.as_str());
            }
        }
    }

    fn of(&self, owner: &BareJid) -> Vec<(String, caps::Announced)> {
        self.lock()
            .get(owner.as_str())
            .map(|v| v.iter().map(|(k, a)| (k.clone(), a.clone())).collect())
            .unwrap_or_default()
    }
}

/// XEP-0060 §4.5 access models, for someone other than the owner. `contact` is
/// the owner's roster item for the requester, `affiliation` the requester's
/// affiliation with the node.
pub(crate) fn access(
    config: &PepNodeConfig,
    contact: Option<&RosterItem>,
    affiliation: Option<&str>,
) -> Result<(), Denied> {
    match config.access_model.as_str() {
        "open" => Ok(()),
        "roster" => {
            let in_group = contact.is_some_and(|item| {
                item.groups
                    .iter()
                    .any(|group| config.roster_groups.contains(group))
            });
            if in_group {
                Ok(())
            } else {
                Err(Denied::Roster)
            }
        }
        "whitelist" => match affiliation {
            Some("owner" | "publisher" | "member") => Ok(()),
            _ => Err(Denied::Whitelist),
        },
        // `presence` and anything unknown: a subscription to the owner's presence.
        _ => {
            let subscribed = contact.is_some_and(|item| {
                matches!(item.subscription, Subscription::From | Subscription::Both)
            });
            if subscribed {
                Ok(())
            } else {
                Err(Denied::Presence)
            }
        }
    }
}

fn username(jid: &BareJid) -> &str {
    jid.node().map_or("", |n| n.as_str())
}

/// Whether `requester` may read `owner`'s node.
async fn may_read(
    server: &Server,
    owner: &BareJid,
    node: &str,
    config: &PepNodeConfig,
    requester: &BareJid,
) -> Result<Result<(), Denied>, StanzaError> {
    if owner == requester {
        return Ok(Ok(()));
    }
    if let Some(field) = super::privacy::node_field(node)
        && !super::privacy::may_see(server, owner, requester, field).await?
    {
        return Ok(Err(Denied::Privacy));
    }
    if config.access_model == "open" {
        return Ok(Ok(()));
    }
    let contact = server
        .store
        .roster_item(username(owner), requester.as_str())
        .await
        .map_err(internal)?;
    let affiliation = if config.access_model == "whitelist" {
        server
            .store
            .pep_affiliation(username(owner), node, requester.as_str())
            .await
            .map_err(internal)?
    } else {
        None
    };
    Ok(access(config, contact.as_ref(), affiliation.as_deref()))
}

/// Answers `<pubsub xmlns='http://jabber.org/protocol/pubsub[#owner]'/>`.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    let server = session.server.clone();
    let owner = match &request.target {
        Target::OwnAccount => session.bare.clone(),
        Target::Account(other) => other.clone(),
        // The server hosts no pubsub service of its own.
        Target::Server => return Err(StanzaError::service_unavailable()),
    };
    let is_owner = owner == session.bare;
    let payload = request.payload;
    let mut children = payload.elements();
    let Some(first) = children.next() else {
        return Err(StanzaError::bad_request());
    };
    if payload.ns == NS_OWNER {
        // §8: only the owner manages nodes.
        if !is_owner {
            return Err(StanzaError::forbidden());
        }
        return owner_request(&server, &owner, request.set, first).await;
    }
    let publisher = session.jid.to_string();
    match (first.name.as_str(), request.set) {
        ("items", false) => items(&server, &owner, &session.bare, first).await,
        ("publish", true) | ("retract", true) | ("create", true) if !is_owner => {
            // §7.1.3.1: only the owner publishes to their PEP nodes.
            Err(StanzaError::forbidden())
        }
        ("publish", true) => {
            let options = children
                .find(|e| e.is("publish-options", NS))
                .and_then(|o| o.get_child("x", ns::DATA_FORMS));
            let Some(node) = first.get_attr("node").filter(|n| !n.is_empty()) else {
                return Err(errors::bad_request("nodeid-required"));
            };
            let mut items = first.elements().filter(|e| e.is("item", NS));
            let item = match (items.next(), items.next()) {
                (Some(item), None) => item,
                // §7.1.3.6: PEP nodes persist items, so an item is required.
                (None, _) => return Err(errors::bad_request("item-required")),
                (Some(_), Some(_)) => return Err(errors::bad_request("invalid-payload")),
            };
            let mut payloads = item.elements();
            let payload = match (payloads.next(), payloads.next()) {
                (Some(payload), None) => payload,
                (None, _) => return Err(errors::bad_request("payload-required")),
                (Some(_), Some(_)) => return Err(errors::bad_request("invalid-payload")),
            };
            let id = publish(
                &server,
                &owner,
                &publisher,
                node,
                item.get_attr("id"),
                payload,
                options,
            )
            .await?;
            Ok(Some(
                Element::new(NS, "pubsub").child(
                    Element::new(NS, "publish")
                        .attr("node", node)
                        .child(Element::new(NS, "item").attr("id", id)),
                ),
            ))
        }
        ("retract", true) => retract(&server, &owner, first).await,
        ("create", true) => {
            let form = children
                .find(|e| e.is("configure", NS))
                .and_then(|c| c.get_child("x", ns::DATA_FORMS));
            create(&server, &owner, first, form).await
        }
        ("subscribe", true) => subscribe(&server, &owner, &session.jid, first).await,
        ("unsubscribe", true) => unsubscribe(&server, &owner, &session.jid, first).await,
        ("subscriptions", false) => subscriptions(&server, &owner, &session.bare, first).await,
        ("options", _) => Err(errors::unsupported("subscription-options")),
        ("affiliations", _) => Err(errors::unsupported("retrieve-affiliations")),
        _ => Err(StanzaError::bad_request()),
    }
}

/// The node name of a request, required.
fn node_of(element: &Element) -> Result<&str, StanzaError> {
    match element.get_attr("node") {
        Some(node) if !node.is_empty() && node.len() <= MAX_NAME_BYTES => Ok(node),
        Some(node) if !node.is_empty() => {
            Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("node name too long"))
        }
        _ => Err(errors::bad_request("nodeid-required")),
    }
}

/// Publishes one item to `owner`'s `node` and notifies (XEP-0163 §3, §4.3.3). The
/// same path serves the IQ and the server's own profile setters (`profile.rs`).
/// Returns the item id.
pub(crate) async fn publish(
    server: &Arc<Server>,
    owner: &BareJid,
    publisher: &str,
    node: &str,
    item_id: Option<&str>,
    payload: &Element,
    options: Option<&Element>,
) -> Result<String, StanzaError> {
    if node.is_empty() || node.len() > MAX_NAME_BYTES {
        return Err(errors::bad_request("nodeid-required"));
    }
    let limits = &server.config.pep;
    let xml = payload.to_xml("");
    let limit = if node == NODE_AVATAR_DATA {
        // Base64 of the largest avatar, plus the element around it.
        limits.max_avatar_bytes.div_ceil(3) * 4 + 256
    } else {
        limits.max_item_bytes
    };
    if xml.len() > limit {
        return Err(errors::payload_too_big(limit));
    }
    let existing = server
        .store
        .pep_node(username(owner), node)
        .await
        .map_err(internal)?;
    let default = config::default_config();
    let config = match options {
        Some(options) => config::check_preconditions(options, existing.as_ref(), &default)?,
        None => existing.unwrap_or(default),
    };
    let id = match item_id {
        Some(id) if id.is_empty() || id.len() > MAX_NAME_BYTES => {
            return Err(StanzaError::bad_request().with_text("bad item id"));
        }
        Some(id) => id.to_owned(),
        // XEP-0060 §7.1.2: the service generates an id when the publisher gives none.
        None => crate::random_id(20),
    };
    let now = crate::now_micros();
    let item = PepItem {
        id: id.clone(),
        payload: xml,
        publisher: publisher.to_owned(),
        published_micros: now,
    };
    let written = server
        .store
        .pep_publish(
            username(owner),
            node,
            &config,
            &item,
            limits.max_items_per_node,
            limits.max_nodes_per_user,
        )
        .await
        .map_err(internal)?;
    if written == PepWrite::NodeLimitReached {
        return Err(errors::max_nodes_exceeded(limits.max_nodes_per_user));
    }
    let event = Element::new(NS_EVENT, "items")
        .attr("node", node)
        .child(item_element(NS_EVENT, &item, Some(payload.clone())));
    notify(server, owner, node, &config, event).await;
    if node == super::profile::NODE_AVATAR_METADATA {
        super::profile::avatar_published(server, owner, payload).await;
    }
    Ok(id)
}

/// An `<item id publisher?>payload</item>` in namespace `ns`.
fn item_element(ns: &str, item: &PepItem, payload: Option<Element>) -> Element {
    let mut element = Element::new(ns, "item").attr("id", item.id.clone());
    if ns == NS_EVENT {
        // XEP-0060 §7.1.2.2: the publisher's bare JID may be included.
        if let Ok(jid) = Jid::new(&item.publisher) {
            element.set_attr("publisher", jid.to_bare().to_string());
        }
    }
    let payload = payload.or_else(|| parse_payload(&item.payload));
    if let Some(payload) = payload {
        element.push_child(payload);
    }
    element
}

fn parse_payload(xml: &str) -> Option<Element> {
    match parse_fragment(xml.as_bytes(), Limits::default()) {
        Ok(payload) => Some(payload),
        Err(error) => {
            tracing::error!(%error, "stored PEP item does not parse");
            None
        }
    }
}

/// The `jid` of a subscribe/unsubscribe request, which must be the requester's
/// bare JID (or its full JID: PEP subscriptions are by bare JID).
fn subscriber_of(request: &Element, requester: &FullJid) -> Option<BareJid> {
    let jid = Jid::new(request.get_attr("jid")?).ok()?.to_bare();
    (jid == requester.to_bare()).then_some(jid)
}

fn subscription_element(node: &str, jid: &BareJid, subid: Option<&str>, state: &str) -> Element {
    let mut element = Element::new(NS, "subscription")
        .attr("node", node)
        .attr("jid", jid.to_string())
        .attr("subscription", state);
    if let Some(subid) = subid {
        element.set_attr("subid", subid);
    }
    element
}

/// §6.1: subscribes the requester (by bare JID) to a node its access model
/// lets it read; the last item follows (§6.1.7, XEP-0163 §4.3.4).
async fn subscribe(
    server: &Arc<Server>,
    owner: &BareJid,
    requester: &FullJid,
    request: &Element,
) -> Response {
    let node = node_of(request)?;
    // §6.1.3.1: the JID must be the requester's own.
    let Some(subscriber) = subscriber_of(request, requester) else {
        return Err(errors::bad_request("invalid-jid"));
    };
    let Some(config) = server
        .store
        .pep_node(username(owner), node)
        .await
        .map_err(internal)?
    else {
        // §6.1.3.12.
        return Err(StanzaError::item_not_found());
    };
    if server.blocked_between(owner, &subscriber).await {
        return Err(StanzaError::item_not_found());
    }
    // §6.1.3.2-4: presence-subscription-required, not-in-roster-group, closed-node.
    may_read(server, owner, node, &config, &subscriber)
        .await?
        .map_err(Denied::error)?;
    let Some(subid) = server
        .store
        .pep_subscribe(
            username(owner),
            node,
            subscriber.as_str(),
            &crate::random_id(16),
        )
        .await
        .map_err(internal)?
    else {
        return Err(StanzaError::item_not_found());
    };
    if config.send_last != "never" {
        // After the IQ result (§6.1.7): the session writes the result when this
        // handler returns; the task reads the store first.
        let server = server.clone();
        let owner = owner.clone();
        let node = node.to_owned();
        let requester = requester.clone();
        tokio::spawn(async move { send_last_item(&server, &owner, &node, &requester).await });
    }
    Ok(Some(Element::new(NS, "pubsub").child(
        subscription_element(node, &subscriber, Some(&subid), "subscribed"),
    )))
}

/// The newest item of `owner`'s `node` to one resource, with its delay.
async fn send_last_item(server: &Arc<Server>, owner: &BareJid, node: &str, to: &FullJid) {
    let items = match server.store.pep_items(username(owner), node, Some(1)).await {
        Ok(items) => items,
        Err(error) => {
            tracing::error!(%error, "reading the last PEP item");
            return;
        }
    };
    let Some(item) = items.first() else { return };
    let bare = to.to_bare();
    let Some(session) = server
        .router
        .with_sessions(bare.as_str(), |s| s.iter().find(|s| s.jid == *to).cloned())
    else {
        return;
    };
    let event = Element::new(NS_EVENT, "items")
        .attr("node", node)
        .child(item_element(NS_EVENT, item, None));
    session.send(Arc::new(event_message(
        owner,
        &to.to_string(),
        event,
        Some(item.published_micros),
    )));
}

/// §6.2: ends the requester's subscription.
async fn unsubscribe(
    server: &Arc<Server>,
    owner: &BareJid,
    requester: &FullJid,
    request: &Element,
) -> Response {
    let node = node_of(request)?;
    let Some(subscriber) = subscriber_of(request, requester) else {
        // §6.2.3.3: only the subscriber may unsubscribe itself.
        return Err(StanzaError::forbidden());
    };
    if server
        .store
        .pep_node(username(owner), node)
        .await
        .map_err(internal)?
        .is_none()
    {
        // §6.2.3.4.
        return Err(StanzaError::item_not_found());
    }
    if !server
        .store
        .pep_unsubscribe(username(owner), node, subscriber.as_str())
        .await
        .map_err(internal)?
    {
        // §6.2.3.2.
        return Err(StanzaError::new(StanzaErrorCondition::UnexpectedRequest)
            .with_type(StanzaErrorType::Cancel)
            .with_application(errors::app("not-subscribed")));
    }
    Ok(None)
}

/// §5.6: the requester's subscriptions to `owner`'s nodes (optionally one).
async fn subscriptions(
    server: &Arc<Server>,
    owner: &BareJid,
    requester: &BareJid,
    request: &Element,
) -> Response {
    let only = request.get_attr("node").filter(|n| !n.is_empty());
    let mut list = Element::new(NS, "subscriptions");
    if let Some(node) = only {
        list.set_attr("node", node);
    }
    for (node, subid) in server
        .store
        .pep_subscriptions(username(owner), requester.as_str())
        .await
        .map_err(internal)?
    {
        if only.is_none_or(|n| n == node) {
            list.push_child(subscription_element(
                &node,
                requester,
                Some(&subid),
                "subscribed",
            ));
        }
    }
    Ok(Some(Element::new(NS, "pubsub").child(list)))
}

/// Items retracted by the expiry sweep per round.
const EXPIRED_PER_ROUND: usize = 500;

/// Retracts expired items (`pubsub#item_expire`) every
/// `pep.expiry_check_secs`, notifying per `notify_retract` (XEP-0060 §7.2.2.1).
pub(crate) async fn expiry_loop(server: Arc<Server>) {
    let interval = std::time::Duration::from_secs(server.config.pep.expiry_check_secs.max(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        while let Ok(n) = expire_once(&server).await {
            if n < EXPIRED_PER_ROUND {
                break;
            }
        }
    }
}

/// One round of the sweep: how many expired items it found.
pub(crate) async fn expire_once(server: &Arc<Server>) -> Result<usize, kith_store::StoreError> {
    let now = crate::now_micros();
    let expired = server
        .store
        .pep_expired(now, EXPIRED_PER_ROUND)
        .await
        .inspect_err(|error| tracing::warn!(%error, "finding expired PEP items"))?;
    for item in &expired {
        // Only what is still expired now (not re-published meanwhile) goes.
        if !server
            .store
            .pep_remove_expired(&item.owner, &item.node, &item.item_id, now)
            .await?
        {
            continue;
        }
        let Ok(owner) = BareJid::new(&format!("{}@{}", item.owner, server.domain)) else {
            continue;
        };
        let Ok(Some(config)) = server.store.pep_node(&item.owner, &item.node).await else {
            continue;
        };
        if config.notify_retract {
            let event = Element::new(NS_EVENT, "items")
                .attr("node", item.node.as_str())
                .child(Element::new(NS_EVENT, "retract").attr("id", item.item_id.as_str()));
            notify(server, &owner, &item.node, &config, event).await;
        }
    }
    Ok(expired.len())
}

/// §6.5: items of a node, all, the newest `max_items`, or by id.
async fn items(
    server: &Arc<Server>,
    owner: &BareJid,
    requester: &BareJid,
    request: &Element,
) -> Response {
    let node = node_of(request)?;
    let Some(config) = server
        .store
        .pep_node(username(owner), node)
        .await
        .map_err(internal)?
    else {
        return Err(StanzaError::item_not_found());
    };
    may_read(server, owner, node, &config, requester)
        .await?
        .map_err(Denied::error)?;
    let ids: Vec<String> = request
        .elements()
        .filter(|e| e.is("item", NS))
        .filter_map(|e| e.get_attr("id"))
        .map(str::to_owned)
        .collect();
    let found = if ids.is_empty() {
        let max = match request.get_attr("max_items") {
            None => None,
            Some(max) => Some(max.parse::<usize>().map_err(|_| {
                StanzaError::bad_request().with_text("max_items must be a positive number")
            })?),
        };
        server
            .store
            .pep_items(username(owner), node, max)
            .await
            .map_err(internal)?
    } else {
        let found = server
            .store
            .pep_items_by_id(username(owner), node, &ids)
            .await
            .map_err(internal)?;
        if found.is_empty() {
            return Err(StanzaError::item_not_found());
        }
        found
    };
    let mut items = Element::new(NS, "items").attr("node", node);
    for item in &found {
        items.push_child(item_element(NS, item, None));
    }
    Ok(Some(Element::new(NS, "pubsub").child(items)))
}

/// §7.2: deletes an item, notifying when asked to or configured to.
async fn retract(server: &Arc<Server>, owner: &BareJid, request: &Element) -> Response {
    let node = node_of(request)?;
    let ids: Vec<&str> = request
        .elements()
        .filter(|e| e.is("item", NS))
        .filter_map(|e| e.get_attr("id"))
        .collect();
    if ids.is_empty() {
        // §7.2.3.3.
        return Err(errors::bad_request("item-required"));
    }
    let Some(config) = server
        .store
        .pep_node(username(owner), node)
        .await
        .map_err(internal)?
    else {
        return Err(StanzaError::item_not_found());
    };
    let mut event = Element::new(NS_EVENT, "items").attr("node", node);
    for id in ids {
        if !server
            .store
            .pep_retract(username(owner), node, id)
            .await
            .map_err(internal)?
        {
            // §7.2.3.5.
            return Err(StanzaError::item_not_found());
        }
        event.push_child(Element::new(NS_EVENT, "retract").attr("id", id));
    }
    // §7.2.2.1: the request's `notify` wins over the node's `notify_retract`.
    let wanted = match request.get_attr("notify") {
        Some(value) => matches!(value, "1" | "true"),
        None => config.notify_retract,
    };
    if wanted {
        notify(server, owner, node, &config, event).await;
    }
    Ok(None)
}

/// §8.1: creates a node, with an optional configuration form.
async fn create(
    server: &Arc<Server>,
    owner: &BareJid,
    request: &Element,
    form: Option<&Element>,
) -> Response {
    let Some(node) = request.get_attr("node").filter(|n| !n.is_empty()) else {
        // §8.1.3: instant nodes are not supported.
        return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
            .with_application(errors::app("nodeid-required")));
    };
    let node = node_of(&Element::new(NS, "create").attr("node", node))?.to_owned();
    let config = match form {
        Some(form) => config::from_form(&config::default_config(), form)?,
        None => config::default_config(),
    };
    let limits = &server.config.pep;
    match server
        .store
        .pep_create_node(username(owner), &node, &config, limits.max_nodes_per_user)
        .await
        .map_err(internal)?
    {
        PepWrite::Done { .. } => Ok(None),
        // §8.1.3: the node exists.
        PepWrite::Exists => Err(StanzaError::new(StanzaErrorCondition::Conflict)),
        PepWrite::NodeLimitReached => Err(errors::max_nodes_exceeded(limits.max_nodes_per_user)),
    }
}

/// §8: the owner's use cases.
async fn owner_request(
    server: &Arc<Server>,
    owner: &BareJid,
    set: bool,
    request: &Element,
) -> Response {
    let user = username(owner);
    let wrap = |child: Element| Some(Element::new(NS_OWNER, "pubsub").child(child));
    if request.name == "default" && !set {
        // §8.3.
        let form = config::to_form(&config::default_config());
        return Ok(wrap(Element::new(NS_OWNER, "default").child(form)));
    }
    let node = node_of(request)?;
    let Some(current) = server.store.pep_node(user, node).await.map_err(internal)? else {
        return Err(StanzaError::item_not_found());
    };
    match (request.name.as_str(), set) {
        ("configure", false) => Ok(wrap(
            Element::new(NS_OWNER, "configure")
                .attr("node", node)
                .child(config::to_form(&current)),
        )),
        ("configure", true) => {
            let Some(form) = request.get_child("x", ns::DATA_FORMS) else {
                return Err(
                    StanzaError::bad_request().with_text("a configuration form is required")
                );
            };
            let updated = config::from_form(&current, form)?;
            server
                .store
                .pep_configure(user, node, &updated, server.config.pep.max_items_per_node)
                .await
                .map_err(internal)?;
            Ok(None)
        }
        ("delete", true) => {
            // §8.4.2: subscribers learn the node is gone.
            let event = Element::new(NS_EVENT, "delete").attr("node", node);
            server
                .store
                .pep_delete_node(user, node)
                .await
                .map_err(internal)?;
            notify(server, owner, node, &current, event).await;
            Ok(None)
        }
        ("purge", true) => {
            server.store.pep_purge(user, node).await.map_err(internal)?;
            notify(
                server,
                owner,
                node,
                &current,
                Element::new(NS_EVENT, "purge").attr("node", node),
            )
            .await;
            Ok(None)
        }
        ("affiliations", false) => {
            let mut list = Element::new(NS_OWNER, "affiliations")
                .attr("node", node)
                .child(
                    Element::new(NS_OWNER, "affiliation")
                        .attr("jid", owner.to_string())
                        .attr("affiliation", "owner"),
                );
            for (jid, affiliation) in server
                .store
                .pep_affiliations(user, node)
                .await
                .map_err(internal)?
            {
                list.push_child(
                    Element::new(NS_OWNER, "affiliation")
                        .attr("jid", jid)
                        .attr("affiliation", affiliation),
                );
            }
            Ok(wrap(list))
        }
        ("affiliations", true) => {
            let mut changes = Vec::new();
            for entry in request.elements().filter(|e| e.is("affiliation", NS_OWNER)) {
                let jid = entry
                    .get_attr("jid")
                    .and_then(|j| Jid::new(j).ok())
                    .ok_or_else(StanzaError::jid_malformed)?
                    .to_bare();
                let affiliation = entry.get_attr("affiliation").unwrap_or("");
                if !matches!(affiliation, "member" | "publisher" | "none") || jid == *owner {
                    // §8.9.2.4: kith keeps the owner and offers member/publisher.
                    return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                        .with_text("affiliation must be member, publisher or none"));
                }
                changes.push((jid.to_string(), affiliation.to_owned()));
            }
            server
                .store
                .pep_set_affiliations(user, node, &changes)
                .await
                .map_err(internal)?;
            Ok(None)
        }
        ("subscriptions", _) => Err(errors::unsupported("manage-subscriptions")),
        _ => Err(StanzaError::bad_request()),
    }
}

/// A `headline` event notification (XEP-0060 §7.1.2.1, XEP-0163 §4.3).
fn event_message(owner: &BareJid, to: &str, event: Element, delay_micros: Option<i64>) -> Element {
    let mut message = Element::new(ns::CLIENT, "message")
        .attr("from", owner.to_string())
        .attr("to", to)
        .attr("type", "headline")
        .attr("id", crate::random_id(16))
        .child(Element::new(NS_EVENT, "event").child(event));
    if let Some(at) = delay_micros {
        // The last published item comes later than its publication.
        message.push_child(
            Element::new(ns::DELAY, "delay")
                .attr("from", owner.to_string())
                .attr("stamp", crate::datetime::format_datetime(at)),
        );
    }
    message
}

/// Whether a resource (by its presence) wants notifications for `node`.
pub(crate) fn wants(server: &Server, jid: &FullJid, presence: &Element, node: &str) -> bool {
    let Some(announced) = caps::Announced::of(presence) else {
        return false;
    };
    server
        .caps
        .features(&jid.to_string(), &announced)
        .is_some_and(|features| features.contains(&format!("{node}+notify")))
}

/// Sends `event` about `owner`'s `node` to every resource entitled to it: the
/// owner's own and those of contacts with a presence subscription to the owner
/// who may read the node, each only if its caps ask for `NODE+notify`.
async fn notify(
    server: &Arc<Server>,
    owner: &BareJid,
    node: &str,
    config: &PepNodeConfig,
    event: Element,
) {
    let mut recipients: Vec<(BareJid, bool)> = vec![(owner.clone(), true)];
    // Contacts below are all subscribed to the owner's presence; the privacy
    // setting governing this node (if any) may still exclude them.
    let privacy = match super::privacy::node_field(node) {
        Some(field) => match super::privacy::Settings::load(server, username(owner)).await {
            Ok(settings) => Some((field, settings)),
            Err(_) => return,
        },
        None => None,
    };
    let roster = match server.store.roster(username(owner)).await {
        Ok((_, items)) => items,
        Err(error) => {
            tracing::error!(%error, "reading the roster for PEP notifications");
            Vec::new()
        }
    };
    for item in roster
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
    {
        let Ok(contact) = Jid::new(&item.contact) else {
            continue;
        };
        if !server.is_local_user(&contact) {
            continue;
        }
        let contact = contact.to_bare();
        if server.blocked_between(owner, &contact).await {
            continue;
        }
        let affiliation = if config.access_model == "whitelist" {
            server
                .store
                .pep_affiliation(username(owner), node, contact.as_str())
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let allowed = access(config, Some(item), affiliation.as_deref()).is_ok()
            && privacy.is_none_or(|(field, settings)| settings.admits(field, true));
        recipients.push((contact, allowed));
    }
    // Explicit subscribers (§6.1) get notifications without +notify caps, as
    // far as the access model admits them now (a removed whitelist entry ends it).
    let subscribers = match server.store.pep_subscribers(username(owner), node).await {
        Ok(subscribers) => subscribers,
        Err(error) => {
            tracing::error!(%error, "reading PEP subscribers");
            Vec::new()
        }
    };
    let mut explicit = Vec::new();
    for subscriber in &subscribers {
        let Ok(jid) = BareJid::new(subscriber) else {
            continue;
        };
        if let Some((_, allowed)) = recipients.iter().find(|(r, _)| *r == jid) {
            if *allowed {
                explicit.push(jid);
            }
            continue;
        }
        if server.blocked_between(owner, &jid).await
            || !matches!(
                may_read(server, owner, node, config, &jid).await,
                Ok(Ok(()))
            )
        {
            continue;
        }
        explicit.push(jid.clone());
        recipients.push((jid, true));
    }
    for (recipient, allowed) in &recipients {
        if !allowed {
            continue;
        }
        let subscribed = explicit.contains(recipient);
        if let Some(cluster) = &server.cluster {
            let message = event_message(owner, recipient.as_str(), event.clone(), None);
            let select = crate::cluster::Select::Pep {
                node: node.to_owned(),
                subscribed,
            };
            cluster.hand_each(recipient.as_str(), select, &message);
        }
        for session in server.router.sessions(recipient.as_str()) {
            let Some(presence) = &session.presence else {
                continue;
            };
            // §4.3.2 rule 3: available resources with non-negative priority.
            if session.priority >= 0 && (subscribed || wants(server, &session.jid, presence, node))
            {
                let message = event_message(owner, &session.jid.to_string(), event.clone(), None);
                session.send(Arc::new(message));
            }
        }
    }
    // Visitors who are not contacts: as far as the access model admits strangers.
    for (visitor, announced) in server.pep_visitors.of(owner) {
        let Ok(full) = FullJid::new(&visitor) else {
            continue;
        };
        let bare = full.to_bare();
        if recipients.iter().any(|(r, _)| *r == bare) || server.blocked_between(owner, &bare).await
        {
            continue;
        }
        if !matches!(
            may_read(server, owner, node, config, &bare).await,
            Ok(Ok(()))
        ) {
            continue;
        }
        let interested = server
            .caps
            .features(&visitor, &announced)
            .is_some_and(|f| f.contains(&format!("{node}+notify")));
        if !interested {
            continue;
        }
        if let Some(session) = server
            .router
            .with_sessions(bare.as_str(), |s| s.iter().find(|s| s.jid == full).cloned())
        {
            session.send(Arc::new(event_message(
                owner,
                &visitor,
                event.clone(),
                None,
            )));
        }
    }
}

/// The session sent directed presence to `to` (RFC 6121 §4.6): a local account
/// other than its own remembers it as a visitor (XEP-0163 §4) and sends it the
/// last items it may read and wants; `unavailable` forgets it.
pub(crate) async fn directed_presence(
    server: &Arc<Server>,
    from: &FullJid,
    to: &Jid,
    presence: &Element,
    unavailable: bool,
) {
    let owner = to.to_bare();
    if !server.is_local_user(to) || owner == from.to_bare() {
        return;
    }
    if unavailable {
        server.pep_visitors.remove(&owner, from);
        return;
    }
    let Some(announced) = caps::Announced::of(presence) else {
        return;
    };
    server.pep_visitors.insert(&owner, from, announced.clone());
    if let Some(features) = server.caps.features(&from.to_string(), &announced) {
        send_last_items(
            server,
            from,
            &features,
            std::slice::from_ref(&owner),
            Trigger::Presence,
        )
        .await;
    }
}

/// When the last published item is sent (XEP-0060 `send_last_published_item`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A resource came online (XEP-0163 §4.3.3).
    Presence,
    /// A presence subscription was approved.
    Subscription,
}

/// Sends `subscriber` the last item of each node of `owners` it may read and
/// has `+notify` for.
async fn send_last_items(
    server: &Arc<Server>,
    subscriber: &FullJid,
    features: &caps::Features,
    owners: &[BareJid],
    trigger: Trigger,
) {
    let subscriber_bare = subscriber.to_bare();
    let Some(session) = server
        .router
        .with_sessions(subscriber_bare.as_str(), |sessions| {
            sessions.iter().find(|s| s.jid == *subscriber).cloned()
        })
    else {
        return;
    };
    // §4.3.3 rule 2: only resources with non-negative priority.
    if session.priority < 0 {
        return;
    }
    // Most clients want a few nodes; none at all means nothing to read.
    if !features.iter().any(|f| f.ends_with("+notify")) {
        return;
    }
    let by_name: std::collections::HashMap<&str, &BareJid> =
        owners.iter().map(|o| (username(o), o)).collect();
    let usernames: Vec<String> = by_name.keys().map(|&name| name.to_owned()).collect();
    let nodes = match server.store.pep_last_items(&usernames).await {
        Ok(nodes) => nodes,
        Err(error) => {
            tracing::error!(%error, "reading last PEP items");
            return;
        }
    };
    for (owner_name, PepNode { node, config }, item) in nodes {
        let Some(&owner) = by_name.get(owner_name.as_str()) else {
            continue;
        };
        let Some(item) = item else { continue };
        let when = match config.send_last.as_str() {
            "on_sub_and_presence" => true,
            "on_sub" => trigger == Trigger::Subscription,
            _ => false,
        };
        if !when || !features.contains(&format!("{node}+notify")) {
            continue;
        }
        match may_read(server, owner, &node, &config, &subscriber_bare).await {
            Ok(Ok(())) => {}
            _ => continue,
        }
        let event = Element::new(NS_EVENT, "items")
            .attr("node", node.as_str())
            .child(item_element(NS_EVENT, &item, None));
        let message = event_message(
            owner,
            &subscriber.to_string(),
            event,
            Some(item.published_micros),
        );
        session.send(Arc::new(message));
    }
}

/// The accounts whose nodes `subscriber` receives: its own and those of the
/// local contacts it has a presence subscription to, minus blocked ones.
async fn publishers_for(server: &Arc<Server>, subscriber: &BareJid) -> Vec<BareJid> {
    let mut owners = vec![subscriber.clone()];
    let Ok((_, roster)) = server.store.roster(username(subscriber)).await else {
        return owners;
    };
    for item in roster
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::To | Subscription::Both))
    {
        let Ok(contact) = Jid::new(&item.contact) else {
            continue;
        };
        if server.is_local_user(&contact)
            && !server.blocked_between(subscriber, &contact.to_bare()).await
        {
            owners.push(contact.to_bare());
        }
    }
    owners
}

/// A resource sent available presence. With `announce` (its first, or new caps)
/// it gets the last published items it wants (XEP-0163 §4.3.3), once its caps
/// are known; unknown caps are asked for first (XEP-0115 §6.2).
pub(crate) async fn on_available(
    server: &Arc<Server>,
    jid: &FullJid,
    presence: &Element,
    announce: bool,
) {
    if !announce {
        return;
    }
    let Some(announced) = caps::Announced::of(presence) else {
        return;
    };
    match server.caps.lookup(jid, &announced, &server.domain) {
        caps::Lookup::Known(features) => {
            let owners = publishers_for(server, &jid.to_bare()).await;
            send_last_items(server, jid, &features, &owners, Trigger::Presence).await;
        }
        caps::Lookup::Ask(iq) => {
            let bare = jid.to_bare();
            if let Some(session) = server.router.with_sessions(bare.as_str(), |sessions| {
                sessions.iter().find(|s| s.jid == *jid).cloned()
            }) {
                session.send(Arc::new(iq));
            }
        }
        caps::Lookup::Waiting => {}
    }
}

/// Takes a client's answer to one of our caps queries; `true` if it was one.
pub(crate) async fn caps_answer(server: &Arc<Server>, from: &FullJid, iq: &Element) -> bool {
    let Some(answer) = server.caps.answer(from, iq) else {
        return false;
    };
    if let Some(resolved) = answer {
        for jid in resolved.jids {
            let Ok(full) = FullJid::new(&jid) else {
                continue;
            };
            let owners = publishers_for(server, &full.to_bare()).await;
            send_last_items(
                server,
                &full,
                &resolved.features,
                &owners,
                Trigger::Presence,
            )
            .await;
        }
    }
    true
}

/// `subscriber` now has a presence subscription to `owner` (RFC 6121 §3.1.5):
/// its online resources get `owner`'s last items.
pub(crate) async fn subscription_approved(
    server: &Arc<Server>,
    owner: &BareJid,
    subscriber: &BareJid,
) {
    let owner_jid = Jid::from(owner.clone());
    if !server.is_local_user(&owner_jid) {
        return;
    }
    if let Some(cluster) = &server.cluster {
        cluster.pep_approved(subscriber.as_str(), owner.as_str());
    }
    send_approved_items(server, owner, subscriber).await;
}

/// [`subscription_approved`]'s part for this node's sessions of `subscriber`.
pub(crate) async fn send_approved_items(
    server: &Arc<Server>,
    owner: &BareJid,
    subscriber: &BareJid,
) {
    for session in server.router.sessions(subscriber.as_str()) {
        let Some(presence) = &session.presence else {
            continue;
        };
        let Some(announced) = caps::Announced::of(presence) else {
            continue;
        };
        let Some(features) = server.caps.features(&session.jid.to_string(), &announced) else {
            continue;
        };
        send_last_items(
            server,
            &session.jid,
            &features,
            std::slice::from_ref(owner),
            Trigger::Subscription,
        )
        .await;
    }
}

/// The nodes of `owner` that `requester` may see (XEP-0163 §… disco#items).
pub(crate) async fn visible_nodes(
    server: &Server,
    owner: &BareJid,
    requester: &BareJid,
) -> Result<Vec<PepNode>, StanzaError> {
    let nodes = server
        .store
        .pep_nodes(username(owner))
        .await
        .map_err(internal)?;
    let mut visible = Vec::with_capacity(nodes.len());
    for node in nodes {
        if may_read(server, owner, &node.node, &node.config, requester)
            .await?
            .is_ok()
        {
            visible.push(node);
        }
    }
    Ok(visible)
}

/// XEP-0060 §5.3: disco#info on one node, for whoever may read it.
pub(crate) async fn node_info(
    server: &Server,
    owner: &BareJid,
    requester: &BareJid,
    node: &str,
) -> Response {
    let Some(config) = server
        .store
        .pep_node(username(owner), node)
        .await
        .map_err(internal)?
    else {
        return Err(StanzaError::item_not_found());
    };
    if may_read(server, owner, node, &config, requester)
        .await?
        .is_err()
    {
        return Err(StanzaError::item_not_found());
    }
    Ok(Some(
        Element::new(ns::DISCO_INFO, "query")
            .attr("node", node)
            .child(
                Element::new(ns::DISCO_INFO, "identity")
                    .attr("category", "pubsub")
                    .attr("type", "leaf"),
            )
            .child(Element::new(ns::DISCO_INFO, "feature").attr("var", NS)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(subscription: Subscription, groups: &[&str]) -> RosterItem {
        RosterItem {
            contact: "bob@localhost".into(),
            name: None,
            subscription,
            ask: false,
            pending_in: false,
            approved: false,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn with_model(model: &str) -> PepNodeConfig {
        PepNodeConfig {
            access_model: model.into(),
            roster_groups: vec!["Friends".into()],
            ..config::default_config()
        }
    }

    #[test]
    fn access_models() {
        let presence = with_model("presence");
        assert_eq!(access(&presence, None, None), Err(Denied::Presence));
        assert_eq!(
            access(&presence, Some(&contact(Subscription::To, &[])), None),
            Err(Denied::Presence)
        );
        assert!(access(&presence, Some(&contact(Subscription::From, &[])), None).is_ok());
        assert!(access(&presence, Some(&contact(Subscription::Both, &[])), None).is_ok());

        assert!(access(&with_model("open"), None, None).is_ok());

        let roster = with_model("roster");
        assert!(
            access(
                &roster,
                Some(&contact(Subscription::None, &["Friends"])),
                None
            )
            .is_ok()
        );
        assert_eq!(
            access(&roster, Some(&contact(Subscription::Both, &["Work"])), None),
            Err(Denied::Roster)
        );

        let whitelist = with_model("whitelist");
        let both = contact(Subscription::Both, &["Friends"]);
        assert_eq!(
            access(&whitelist, Some(&both), None),
            Err(Denied::Whitelist)
        );
        assert!(access(&whitelist, None, Some("member")).is_ok());
        assert_eq!(
            access(&whitelist, None, Some("outcast")),
            Err(Denied::Whitelist)
        );
    }

    #[test]
    fn denials_carry_the_pubsub_conditions() {
        let xml = Denied::Presence.error().to_element().to_xml(ns::CLIENT);
        assert!(xml.contains("not-authorized"), "{xml}");
        assert!(xml.contains("presence-subscription-required"), "{xml}");
        let xml = Denied::Whitelist.error().to_element().to_xml(ns::CLIENT);
        assert!(
            xml.contains("not-allowed") && xml.contains("closed-node"),
            "{xml}"
        );
        let xml = errors::precondition_not_met()
            .to_element()
            .to_xml(ns::CLIENT);
        assert!(
            xml.contains("<conflict") && xml.contains("precondition-not-met"),
            "{xml}"
        );
    }
}
